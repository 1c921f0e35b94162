/**
 * A plain TCP link's socket, VNET's own (src/io/tcp_socket.ts dialled or accepted it), read and
 * written on the thread that woke for it (issue 12).
 *
 * Why: through a Deno.Conn each read and each write is an operation of the runtime's event loop,
 * with its promise, its turn of the loop and, after a pause, its own wake-up. A C loop reads the
 * socket the moment its one poll says so. Here, as there, the socket is in the data path's one
 * wait (src/io/poller.ts) with the captures, and `recv`/`send` are plain system calls:
 *
 *   1. `read()` calls recv(2); only when it would block does it wait for the poller.
 *   2. `write()` calls send(2); only when the kernel's buffer is full does it wait.
 *   `tryRead()` / `tryWrite()` are the one system call each without the wait, for an owner the
 *   poller calls back itself (owned_socket.ts, on the data-path worker).
 *   3. `close()` closes the fd, once no poll on a helper thread watches it.
 *
 * TLS links stay Deno.TlsConn: the record layer is the runtime's (rustls), and so is the socket.
 */
import { lastErrno, libc } from "../../ffi/libc.ts";
import { poller } from "../io/poller.ts";
import { closeSocket } from "../io/tcp_socket.ts";
import type { Stream } from "./stream.ts";

const EAGAIN = 11;
const EINTR = 4;
const MSG_NOSIGNAL = 0x4000;

/**
 * Reads and writes a socket with recv/send, waiting for the poller only when they would block.
 * The stream owns `fd` (a connected, nonblocking TCP socket): closing it closes the fd.
 */
export class SocketStream implements Stream {
  #open = true;
  /** The wait for room in the kernel's send buffer, while one is pending. */
  #full: Promise<boolean> | null = null;

  constructor(readonly fd: number) {}

  /**
   * One recv(2), for an owner that waits in the poller's callbacks (owned_socket.ts): the bytes
   * read, 0 when none are ready, null at end of stream. Throws on an error.
   */
  tryRead(p: Uint8Array): number | null {
    for (;;) {
      if (!this.#open) throw new Deno.errors.BadResource("the link's socket is closed");
      const n = Number(libc().recv(this.fd, p, BigInt(p.length), 0));
      if (n > 0) return n;
      if (n === 0) return p.length === 0 ? 0 : null;
      const { errno, text } = lastErrno();
      if (errno === EINTR) continue;
      if (errno === EAGAIN) return 0;
      throw new Error(`recv: ${text}`);
    }
  }

  /** One send(2): the bytes the kernel took, 0 when its buffer is full. Throws on an error. */
  tryWrite(p: Uint8Array): number {
    for (;;) {
      if (!this.#open) throw new Deno.errors.BadResource("the link's socket is closed");
      const n = Number(libc().send(this.fd, p, BigInt(p.length), MSG_NOSIGNAL));
      if (n >= 0) return n;
      const { errno, text } = lastErrno();
      if (errno === EINTR) continue;
      if (errno === EAGAIN) return 0;
      throw new Error(`send: ${text}`);
    }
  }

  async read(p: Uint8Array): Promise<number | null> {
    for (;;) {
      const n = this.tryRead(p);
      if (n !== 0 || p.length === 0) return n;
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
      const n = this.tryWrite(p);
      if (n > 0 || p.length === 0) return n;
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
    closeSocket(this.fd);
  }
}
