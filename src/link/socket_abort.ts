/**
 * Ends connections whose fd the runtime keeps after `close()`: a Deno.TlsConn whose TLS
 * handshake is still pending. Deno's close drops the connection's resource, but the pending
 * handshake holds the socket until the peer speaks or leaves, so a silent peer would keep its
 * fd for ever (issue 19: 1500 silent TLS connections held 1024 fds and locked every client out).
 *
 * `shutdown(2)` on the socket ends that wait: the handshake reads end-of-file, fails, and the
 * runtime closes the fd. The socket is found as socket_stream.ts finds a link's: the one fd of
 * the process with the connection's two endpoints. Aborts are gathered and done in one pass
 * over the process's fds, at most every BATCH_MS, so a flood costs one pass per batch.
 */
import { libc } from "../../ffi/libc.ts";
import { openFds } from "../io/proc_fds.ts";
import { ipBytes } from "./socket_stream.ts";

const SHUT_RDWR = 2;
const AF_INET = 2;
const AF_INET6 = 10;
const BATCH_MS = 20;

/** `ip|port` of an address as Deno gives it, or of a `struct sockaddr` buffer; "" if neither. */
function endpointKey(addr: Deno.NetAddr | Uint8Array): string {
  if (!(addr instanceof Uint8Array)) {
    const ip = ipBytes(addr.hostname);
    return ip ? `${ip.join(".")}|${addr.port}` : "";
  }
  const view = new DataView(addr.buffer, addr.byteOffset, addr.byteLength);
  const family = view.getUint16(0, true);
  const port = view.getUint16(2, false);
  if (family === AF_INET) return `${addr.subarray(4, 8).join(".")}|${port}`;
  if (family === AF_INET6) return `${addr.subarray(8, 24).join(".")}|${port}`;
  return "";
}

function socketEndpoint(
  name: (fd: number, addr: Uint8Array, len: Uint8Array) => number,
  fd: number,
): string {
  const addr = new Uint8Array(28);
  const len = new Uint8Array(4);
  new DataView(len.buffer).setUint32(0, addr.length, true);
  return name(fd, addr, len) === 0 ? endpointKey(addr) : "";
}

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
  const l = endpointKey(local), r = endpointKey(remote);
  if (!l || !r) return;
  queued.add(`${l} ${r}`);
  timer ??= setTimeout(flush, BATCH_MS);
}

function flush(): void {
  timer = undefined;
  if (queued.size === 0) return;
  const lib = libc();
  for (const fd of openFds((target) => target.startsWith("socket:"))) {
    const remote = socketEndpoint(lib.getpeername, fd);
    if (!remote) continue;
    const key = `${socketEndpoint(lib.getsockname, fd)} ${remote}`;
    if (queued.delete(key)) lib.shutdown(fd, SHUT_RDWR);
    if (queued.size === 0) break;
  }
  // What was not found has closed already.
  queued.clear();
}
