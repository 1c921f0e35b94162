/**
 * Ends connections whose fd the runtime keeps after `close()`: a Deno.TlsConn whose TLS
 * handshake is still pending. Deno's close drops the connection's resource, but the pending
 * handshake holds the socket until the peer speaks or leaves, so a silent peer would keep its
 * fd for ever (issue 19: 1500 silent TLS connections held 1024 fds and locked every client out).
 *
 * The kernel ends the socket by its two endpoints (src/io/sock_diag.ts, SOCK_DESTROY): the
 * handshake's read fails, and the runtime closes the fd. No fd of the runtime's is looked up.
 */
import { messageOf } from "../errors.ts";
import { SocketDiag } from "../io/sock_diag.ts";

const EOPNOTSUPP = 95;

/** The sock_diag socket, opened on first use; null if it could not be (`unable` says why). */
let diag: SocketDiag | null | undefined;
let unable = "";

/**
 * Ends the connection from `local` to `remote` now (call it after `conn.close()`, with the
 * endpoints read before). Returns null, or why it could not (the caller says so once: the
 * reason is the same every time). Linux only; elsewhere it does nothing.
 */
export function abortSocket(local: Deno.NetAddr, remote: Deno.NetAddr): string | null {
  if (Deno.build.os !== "linux") return null;
  if (diag === undefined) {
    try {
      diag = new SocketDiag();
    } catch (e) {
      diag = null;
      unable = messageOf(e);
    }
  }
  if (diag === null) return unable;
  const outcome = diag.destroyTcp(local, remote);
  if (outcome === "destroyed" || outcome === "gone") return null;
  return `SOCK_DESTROY: ${outcome.text}` +
    (outcome.errno === EOPNOTSUPP ? " (the kernel lacks CONFIG_INET_DIAG_DESTROY)" : "");
}
