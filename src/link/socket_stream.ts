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
import { structs } from "../../ffi/layout.ts";
import { openFds } from "../io/proc_fds.ts";
import { poller } from "../io/poller.ts";
import type { Stream } from "./stream.ts";

const EAGAIN = 11;
const EINTR = 4;
const MSG_NOSIGNAL = 0x4000;
const AF_INET = 2;
const AF_INET6 = 10;

/** The 4 or 16 bytes of an IP address as Deno writes it (`10.0.0.1`, `::1`, `::ffff:10.0.0.1`). */
export function ipBytes(text: string): Uint8Array | null {
  if (!text.includes(":")) {
    const parts = text.split(".");
    if (parts.length !== 4 || parts.some((p) => !/^\d{1,3}$/.test(p) || Number(p) > 255)) {
      return null;
    }
    return new Uint8Array(parts.map(Number));
  }
  let head = text;
  let tail4: Uint8Array | null = null;
  const lastColon = text.lastIndexOf(":");
  if (text.slice(lastColon + 1).includes(".")) {
    tail4 = ipBytes(text.slice(lastColon + 1));
    if (!tail4) return null;
    head = `${text.slice(0, lastColon + 1)}0:0`;
  }
  const halves = head.split("::");
  if (halves.length > 2) return null;
  const groups = (s: string) => (s === "" ? [] : s.split(":"));
  const left = groups(halves[0]);
  const right = halves.length === 2 ? groups(halves[1]) : [];
  const missing = 8 - left.length - right.length;
  // "::" stands for at least one group of zeros; without it there are exactly eight groups.
  if (halves.length === 2 ? missing < 1 : missing !== 0) return null;
  const words = [...left, ...Array(missing).fill("0"), ...right];
  const out = new Uint8Array(16);
  for (const [i, w] of words.entries()) {
    if (!/^[0-9a-fA-F]{1,4}$/.test(w)) return null;
    const v = parseInt(w, 16);
    out[2 * i] = v >> 8;
    out[2 * i + 1] = v & 0xff;
  }
  if (tail4) out.set(tail4, 12);
  return out;
}

/** A `struct sockaddr_in`/`sockaddr_in6` as the bytes of its address and its port. */
function sockaddrOf(buf: Uint8Array): { ip: Uint8Array; port: number } | null {
  const view = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  const v4 = structs.sockaddr_in.offsets;
  const v6 = structs.sockaddr_in6.offsets;
  const family = view.getUint16(v4.sin_family, true); // the same place in both
  if (family === AF_INET) {
    return { ip: buf.slice(v4.sin_addr, v4.sin_addr + 4), port: view.getUint16(v4.sin_port) };
  }
  if (family === AF_INET6) {
    return { ip: buf.slice(v6.sin6_addr, v6.sin6_addr + 16), port: view.getUint16(v6.sin6_port) };
  }
  return null;
}

function sameEndpoint(
  name: (fd: number, addr: Uint8Array, len: Uint8Array) => number,
  fd: number,
  want: Deno.NetAddr,
  wantIp: Uint8Array,
): boolean {
  const addr = new Uint8Array(structs.sockaddr_in6.size); // room for either
  const len = new Uint8Array(4);
  new DataView(len.buffer).setUint32(0, addr.length, true);
  if (name(fd, addr, len) !== 0) return false;
  const got = sockaddrOf(addr);
  return got !== null && got.port === want.port && got.ip.length === wantIp.length &&
    got.ip.every((b, i) => b === wantIp[i]);
}

/** The fd of the process's socket with these two endpoints, or -1. */
function findSocket(local: Deno.NetAddr, remote: Deno.NetAddr): number {
  const localIp = ipBytes(local.hostname);
  const remoteIp = ipBytes(remote.hostname);
  if (!localIp || !remoteIp) return -1;
  const lib = libc();
  for (const fd of openFds((target) => target.startsWith("socket:"))) {
    if (
      sameEndpoint(lib.getpeername, fd, remote, remoteIp) &&
      sameEndpoint(lib.getsockname, fd, local, localIp)
    ) {
      return fd;
    }
  }
  return -1;
}

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
  const fd = findSocket(local, remote);
  if (fd < 0) return "its socket was not found among the process's fds";
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
