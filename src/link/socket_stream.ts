/**
 * A plain TCP link's socket, taken over from the runtime after the handshake, so that the data
 * path reads and writes it on the thread that woke for it (issue 12).
 *
 * Why: through a Deno.Conn each read and each write is an operation of the runtime's event loop,
 * with its promise, its turn of the loop and, after a pause, its own wake-up. A C loop reads the
 * socket the moment its one poll says so. Here, as there, the socket joins the data path's one
 * wait (src/io/poller.ts) with the captures, and `recv`/`send` are plain system calls:
 *
 *   1. `takeOver(conn)` finds the connection's fd (the one socket of the process with its two
 *      addresses) and takes it out of the runtime's epoll. The Deno.Conn stays open, unused,
 *      until the link closes: closing it would shut the socket down (Deno's close does).
 *   2. `read()` calls recv(2); only when it would block does it wait for the poller.
 *   3. `write()` calls send(2); only when the kernel's buffer is full does it wait.
 *
 * TLS links stay Deno.TlsConn: the record layer is the runtime's (rustls), and so is the socket.
 */
import { lastErrno, libc } from "../../ffi/libc.ts";
import { connectionKey, findSockets } from "../io/socket_lookup.ts";
import { poller } from "../io/poller.ts";
import type { Stream } from "./stream.ts";

const EAGAIN = 11;
const EINTR = 4;
const MSG_NOSIGNAL = 0x4000;

/**
 * Takes a plain TCP connection over from the runtime (step 1): a Stream that reads and writes
 * its fd directly, the Deno.Conn left open (unused) until the stream closes. Null where it does
 * not apply (not Linux; not a TCP Deno.Conn: the pipes of ssh, a test's fake); a string saying
 * why where it should have and failed, which the caller reports.
 */
export function takeOver(stream: Stream): Stream | string | null {
  if (Deno.build.os !== "linux" || !("localAddr" in stream) || !("remoteAddr" in stream)) {
    return null;
  }
  const conn = stream as Deno.Conn;
  const local = conn.localAddr;
  const remote = conn.remoteAddr;
  if (local.transport !== "tcp" || remote.transport !== "tcp") return null;
  const key = connectionKey(local, remote);
  const fd = key ? findSockets(new Set([key])).get(key) : undefined;
  if (fd === undefined) return "its socket was not found among the process's fds";
  if (!poller.adopt(fd)) return "the runtime's wait would not let go of its socket";
  return new SocketStream(fd, conn);
}

/** Reads and writes a socket with recv/send, waiting for the poller only when they would block. */
class SocketStream implements Stream {
  #open = true;
  /** The wait for room in the kernel's send buffer, while one is pending. */
  #full: Promise<boolean> | null = null;

  constructor(readonly fd: number, private readonly conn: Deno.Conn) {}

  async read(p: Uint8Array): Promise<number | null> {
    for (;;) {
      if (!this.#open) throw new Deno.errors.BadResource("the link's socket is closed");
      const n = Number(libc().recv(this.fd, p, BigInt(p.length), 0));
      if (n > 0) return n;
      if (n === 0) return p.length === 0 ? 0 : null;
      const { errno, text } = lastErrno();
      if (errno === EINTR) continue;
      if (errno !== EAGAIN) throw new Error(`recv: ${text}`);
      await poller.readable(this.fd);
    }
  }

  async write(p: Uint8Array): Promise<number> {
    for (;;) {
      if (!this.#open) throw new Deno.errors.BadResource("the link's socket is closed");
      // Another write waits for room (the queue's writer, and a last message as the link
      // closes): wait with it, not instead of it (a second wait would end the first one).
      if (this.#full) {
        await this.#full;
        continue;
      }
      const n = Number(libc().send(this.fd, p, BigInt(p.length), MSG_NOSIGNAL));
      if (n >= 0) return n;
      const { errno, text } = lastErrno();
      if (errno === EINTR) continue;
      if (errno !== EAGAIN) throw new Error(`send: ${text}`);
      this.#full = poller.writable(this.fd);
      try {
        await this.#full;
      } finally {
        this.#full = null;
      }
    }
  }

  /** Ends pending reads and writes and closes the socket (once no helper poll watches it). */
  close(): void {
    if (!this.#open) return;
    this.#open = false;
    poller.cancel(this.fd);
    poller.whenIdle(this.fd, () => {
      try {
        this.conn.close();
      } catch { /* closed already */ }
    });
  }
}
