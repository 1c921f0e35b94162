/**
 * Ends connections whose fd the runtime keeps after `close()`: a Deno.TlsConn whose TLS
 * handshake is still pending. Deno's close drops the connection's resource, but the pending
 * handshake holds the socket until the peer speaks or leaves, so a silent peer would keep its
 * fd for ever (issue 19: 1500 silent TLS connections held 1024 fds and locked every client out).
 *
 * `shutdown(2)` on the socket ends that wait: the handshake reads end-of-file, fails, and the
 * runtime closes the fd. The socket is found by its two endpoints (src/io/socket_lookup.ts).
 * Aborts are gathered and done in one pass over the process's fds, at most every BATCH_MS, so a
 * flood costs one pass per batch.
 */
import { libc } from "../../ffi/libc.ts";
import { connectionKey, findSockets } from "../io/socket_lookup.ts";

const SHUT_RDWR = 2;
const BATCH_MS = 20;

/** Connections to shut down, by `local remote` endpoint keys. */
const queued = new Set<string>();
let timer: ReturnType<typeof setTimeout> | undefined;

/**
 * Shuts the socket of a connection down soon (within BATCH_MS), so that a handshake the runtime
 * still waits on ends and its fd is closed. Call it after `conn.close()`, with the endpoints
 * read before. Linux only; elsewhere (and if the socket is gone already) it does nothing.
 */
export function abortSocket(local: Deno.NetAddr, remote: Deno.NetAddr): void {
  if (Deno.build.os !== "linux") return;
  const key = connectionKey(local, remote);
  if (!key) return;
  queued.add(key);
  timer ??= setTimeout(flush, BATCH_MS);
}

function flush(): void {
  timer = undefined;
  // What is not found has closed already.
  for (const fd of findSockets(queued).values()) libc().shutdown(fd, SHUT_RDWR);
  queued.clear();
}
