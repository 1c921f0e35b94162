/**
 * Plain TCP through libc: listening, accepting and connecting sockets that are VNET's own, not
 * the runtime's (issue 17). A plain link reads and writes its socket with recv/send in the data
 * path's one wait (src/link/socket_stream.ts); since the runtime never had the socket, nothing
 * of the runtime's is looked up or changed to serve it there, and the fd can be handed on as it
 * is (to a thread of the data path's own).
 *
 * Every socket is nonblocking and close-on-exec; every connection has TCP_NODELAY (the latency
 * of small frames, and of the tail of each batch) and a small TCP_NOTSENT_LOWAT (the queue stays
 * VNET's, where it is fair). What would block waits for the poller
 * (src/io/poller.ts): a connection to accept, a connect to complete.
 *
 * Failures are Deno's own error classes with Deno's words (`Connection refused (os error
 * 111)`), so callers explain them as they explained Deno.connect's and Deno.listen's
 * (src/link/dial.ts, src/control/acceptor.ts); `code` names the errno (`EMFILE`) and `syscall`
 * the call that failed (`connect`), so an error nobody expects says where it came from.
 */
import { lookup } from "node:dns/promises";
import { errnoNow, errnoText, lastErrno, libc } from "../../ffi/libc.ts";
import { structs } from "../../ffi/layout.ts";
import type { HostPort } from "../addr.ts";
import { poller } from "./poller.ts";

// Linux, the same on x86_64 and aarch64 (asm-generic).
const AF_INET = 2;
const AF_INET6 = 10;
const SOCK_STREAM = 1;
const SOCK_NONBLOCK = 0o4000;
const SOCK_CLOEXEC = 0o2000000;
const SOL_SOCKET = 1;
const SO_REUSEADDR = 2;
const SO_ERROR = 4;
const IPPROTO_TCP = 6;
const TCP_NODELAY = 1;
const TCP_NOTSENT_LOWAT = 25;
/**
 * Bytes a connection may hold in the kernel not yet sent (TCP_NOTSENT_LOWAT): beyond it, `send`
 * says EAGAIN and the frames wait in the link's fair queue (src/link/flow_queue.ts), where CoDel
 * and the per-flow round robin keep them short and fair, instead of in the socket's buffer,
 * which autotuning grows to megabytes: 75 ms at 450 Mbit/s ahead of every ping (issue 18).
 * 128 KiB is 0.35 ms at 3 Gbit/s, more than one wake-up of the writer, so a fast link stays full.
 */
const NOTSENT_LOWAT_BYTES = 128 << 10;
const EINTR = 4;
const EAGAIN = 11;
const EALREADY = 114;
const EINPROGRESS = 115;
const EISCONN = 106;
/** What Deno.listen asks for (`ss -ltn` shows it); the kernel caps it at net.core.somaxconn. */
const BACKLOG = 511;
/**
 * Connections `accept()` hands out in a row before it lets the thread's other work run (one
 * timer's turn of the event loop). A connection waiting in the kernel makes accept return
 * without one, so under a flood the acceptor ran in promise continuations only, and the
 * handshakes in progress, a real client's among them, never got the loop's turn.
 */
const ACCEPTS_PER_TURN = 32;

/** errno → its name and the Deno error class Deno gives it (Error where Deno has none). */
const ERRNOS: Record<number, [string, new (message: string) => Error]> = {
  1: ["EPERM", Deno.errors.PermissionDenied],
  12: ["ENOMEM", Error],
  13: ["EACCES", Deno.errors.PermissionDenied],
  23: ["ENFILE", Error],
  24: ["EMFILE", Error],
  71: ["EPROTO", Error],
  98: ["EADDRINUSE", Deno.errors.AddrInUse],
  99: ["EADDRNOTAVAIL", Deno.errors.AddrNotAvailable],
  101: ["ENETUNREACH", Deno.errors.NetworkUnreachable],
  103: ["ECONNABORTED", Deno.errors.ConnectionAborted],
  104: ["ECONNRESET", Deno.errors.ConnectionReset],
  105: ["ENOBUFS", Error],
  107: ["ENOTCONN", Deno.errors.NotConnected],
  110: ["ETIMEDOUT", Deno.errors.TimedOut],
  111: ["ECONNREFUSED", Deno.errors.ConnectionRefused],
  113: ["EHOSTUNREACH", Error],
};

/**
 * The error for `errno`, as Deno words it: `Address already in use (os error 98)`; `syscall`
 * names the call that failed (as node:net's errors do), for an error no caller expects.
 */
function osError(errno: number, text: string, syscall: string): Error {
  const [code, Class] = ERRNOS[errno] ?? [`errno ${errno}`, Error];
  return Object.assign(new Class(`${text} (os error ${errno})`), { code, errno, syscall });
}

/** The calling thread's errno as an error, right after `syscall` failed. */
function lastError(syscall: string): Error {
  const { errno, text } = lastErrno();
  return osError(errno, text, syscall);
}

/** One TCP connection of ours: its fd (nonblocking, close-on-exec) and its two ends. */
export interface TcpConnection {
  fd: number;
  local: HostPort;
  remote: HostPort;
}

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

/**
 * An IP address's text as Deno writes it (Rust's): dotted IPv4; IPv6 in lower case with the
 * longest run of two or more zero groups as `::`, and an IPv4-mapped one as `::ffff:a.b.c.d`
 * (so a dual-stack listener's IPv4 clients read as they did through Deno.listen).
 */
export function ipText(ip: Uint8Array): string {
  if (ip.length === 4) return ip.join(".");
  if (ip.subarray(0, 10).every((b) => b === 0) && ip[10] === 0xff && ip[11] === 0xff) {
    return `::ffff:${ip.subarray(12).join(".")}`;
  }
  const words = Array.from({ length: 8 }, (_, i) => (ip[2 * i] << 8) | ip[2 * i + 1]);
  let bestAt = -1, bestLength = 1; // a single zero group is not shortened
  for (let i = 0; i < 8;) {
    let j = i;
    while (j < 8 && words[j] === 0) j++;
    if (j - i > bestLength) [bestAt, bestLength] = [i, j - i];
    i = j > i ? j : i + 1;
  }
  const hex = (ws: number[]) => ws.map((w) => w.toString(16)).join(":");
  if (bestAt < 0) return hex(words);
  return `${hex(words.slice(0, bestAt))}::${hex(words.slice(bestAt + bestLength))}`;
}

const SOCKADDR_SIZE = structs.sockaddr_in6.size; // room for either family

/** A `struct sockaddr_in` or `sockaddr_in6` for `ip` (4 or 16 bytes) and `port`. */
function sockaddrOf(ip: Uint8Array, port: number): Uint8Array {
  const v4 = ip.length === 4;
  const layout = v4 ? structs.sockaddr_in : structs.sockaddr_in6;
  const bytes = new Uint8Array(layout.size);
  const view = new DataView(bytes.buffer);
  if (v4) {
    const { sin_family, sin_port, sin_addr } = structs.sockaddr_in.offsets;
    view.setUint16(sin_family, AF_INET, true);
    view.setUint16(sin_port, port); // network order
    bytes.set(ip, sin_addr);
  } else {
    const { sin6_family, sin6_port, sin6_addr } = structs.sockaddr_in6.offsets;
    view.setUint16(sin6_family, AF_INET6, true);
    view.setUint16(sin6_port, port);
    bytes.set(ip, sin6_addr);
  }
  return bytes;
}

/** The address in a `struct sockaddr_in`/`sockaddr_in6`; null for another family. */
function hostPortOf(sockaddr: Uint8Array): HostPort | null {
  const view = new DataView(sockaddr.buffer, sockaddr.byteOffset, sockaddr.byteLength);
  const v4 = structs.sockaddr_in.offsets;
  const v6 = structs.sockaddr_in6.offsets;
  const family = view.getUint16(v4.sin_family, true); // the same place in both
  if (family === AF_INET) {
    const ip = sockaddr.subarray(v4.sin_addr, v4.sin_addr + 4);
    return { hostname: ipText(ip), port: view.getUint16(v4.sin_port) };
  }
  if (family === AF_INET6) {
    const ip = sockaddr.subarray(v6.sin6_addr, v6.sin6_addr + 16);
    return { hostname: ipText(ip), port: view.getUint16(v6.sin6_port) };
  }
  return null;
}

/** A `socklen_t` set to `size`, for a call that reads and rewrites it. */
function socklen(size: number): Uint8Array {
  const len = new Uint8Array(4);
  new DataView(len.buffer).setUint32(0, size, true);
  return len;
}

/** One end of a socket, by `getsockname` or `getpeername`. */
function endOf(fd: number, call: "getsockname" | "getpeername"): HostPort {
  const sockaddr = new Uint8Array(SOCKADDR_SIZE);
  if (libc()[call](fd, sockaddr, socklen(SOCKADDR_SIZE)) !== 0) throw lastError(call);
  const end = hostPortOf(sockaddr);
  if (!end) throw new Error(`socket ${fd} is not an IP socket`);
  return end;
}

function setIntOption(fd: number, level: number, option: number, value: number): void {
  const int = new Int32Array([value]);
  if (libc().setsockopt(fd, level, option, new Uint8Array(int.buffer), 4) !== 0) {
    throw lastError("setsockopt");
  }
}

/** A new nonblocking, close-on-exec TCP socket for addresses of `ip`'s family. */
function tcpSocket(ip: Uint8Array): number {
  const family = ip.length === 4 ? AF_INET : AF_INET6;
  const fd = libc().socket(family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) throw lastError("socket");
  return fd;
}

/**
 * Ends the poller's waits on `fd` and closes it, once no poll on a helper thread watches it (a
 * closed fd's number may be reused at once, by a socket that poll must not report).
 */
export function closeSocket(fd: number): void {
  poller.cancel(fd);
  poller.whenIdle(fd, () => libc().close(fd));
}

/**
 * The addresses of `host`: an IP literal is itself; a name is looked up with getaddrinfo
 * (node:dns's `lookup`, as Deno.connect does), so /etc/hosts counts.
 */
async function resolve(host: string): Promise<Uint8Array[]> {
  const literal = ipBytes(host);
  if (literal) return [literal];
  let found: { address: string }[];
  try {
    found = await lookup(host, { all: true });
  } catch (e) {
    // Deno.connect's words for a name that does not resolve.
    const code = (e as { code?: string }).code;
    const why = code === "ENOTFOUND"
      ? "Name or service not known"
      : code === "EAI_AGAIN"
      ? "Temporary failure in name resolution"
      : String((e as Error)?.message ?? e);
    throw new Error(`failed to lookup address information: ${why}`, { cause: e });
  }
  const ips = found.map((a) => ipBytes(a.address)).filter((ip) => ip !== null);
  if (ips.length === 0) throw new Error(`failed to lookup address information: no address`);
  return ips;
}

/** A listening socket of ours; `accept()` hands out the connections that come in. */
export class TcpListener {
  #open = true;
  /** The wait for a connection, while one is pending. */
  #waiting: Promise<boolean> | null = null;
  /** Connections accepted since the event loop last had a turn. */
  #inARow = 0;
  readonly #sockaddr = new Uint8Array(SOCKADDR_SIZE);
  readonly #socklen = new Uint8Array(4);

  constructor(readonly fd: number, readonly addr: HostPort) {}

  /**
   * The next connection: accept4 while one waits, else a wait for the poller to say one came.
   * A failed accept throws (`code`: `ECONNABORTED`, `EMFILE`...), and the listener goes on; a
   * closed listener throws Deno.errors.BadResource.
   */
  async accept(): Promise<TcpConnection> {
    const lib = libc();
    for (;;) {
      if (!this.#open) throw new Deno.errors.BadResource("the listener is closed");
      // Another accept waits already: wait with it, not instead of it (a second wait on the
      // fd would end the first, which would then end the second, and so on).
      if (this.#waiting) {
        await this.#waiting;
        continue;
      }
      if (this.#inARow >= ACCEPTS_PER_TURN) {
        this.#inARow = 0;
        await new Promise((resolve) => setTimeout(resolve, 0));
        continue;
      }
      new DataView(this.#socklen.buffer).setUint32(0, SOCKADDR_SIZE, true);
      const fd = lib.accept4(this.fd, this.#sockaddr, this.#socklen, SOCK_NONBLOCK | SOCK_CLOEXEC);
      if (fd >= 0) {
        this.#inARow++;
        return connection(fd, hostPortOf(this.#sockaddr));
      }
      const { errno, text } = lastErrno();
      if (errno === EINTR) continue;
      if (errno !== EAGAIN) throw osError(errno, text, "accept4");
      this.#inARow = 0;
      this.#waiting = poller.readable(this.fd);
      try {
        await this.#waiting;
      } finally {
        this.#waiting = null;
      }
    }
  }

  /** Stops listening (a pending `accept()` throws BadResource); safe twice. */
  close(): void {
    if (!this.#open) return;
    this.#open = false;
    closeSocket(this.fd);
  }
}

/**
 * A connection of ours from `fd`, with Nagle off and little unsent data kept in the kernel;
 * `remote` if known already (accept's). On a failure `fd` is closed and the error thrown: a peer
 * that reset at once has no address left.
 */
function connection(fd: number, remote: HostPort | null): TcpConnection {
  try {
    setIntOption(fd, IPPROTO_TCP, TCP_NODELAY, 1);
    // Best effort: a kernel without it (before 3.12) only keeps the longer queue.
    try {
      setIntOption(fd, IPPROTO_TCP, TCP_NOTSENT_LOWAT, NOTSENT_LOWAT_BYTES);
    } catch { /* ENOPROTOOPT */ }
    return { fd, local: endOf(fd, "getsockname"), remote: remote ?? endOf(fd, "getpeername") };
  } catch (e) {
    closeSocket(fd);
    throw e;
  }
}

/**
 * Listens on `host` (an IP literal, or a name: its first address) and `port` (0: any free one),
 * with SO_REUSEADDR as Deno.listen has it, so a restarted server binds while its old
 * connections linger in TIME_WAIT.
 */
export async function listenTcp(host: string, port: number): Promise<TcpListener> {
  const [ip] = await resolve(host);
  const fd = tcpSocket(ip);
  try {
    setIntOption(fd, SOL_SOCKET, SO_REUSEADDR, 1);
    const sockaddr = sockaddrOf(ip, port);
    const lib = libc();
    if (lib.bind(fd, sockaddr, sockaddr.length) !== 0) throw lastError("bind");
    if (lib.listen(fd, BACKLOG) !== 0) throw lastError("listen");
    return new TcpListener(fd, endOf(fd, "getsockname"));
  } catch (e) {
    libc().close(fd);
    throw e;
  }
}

/**
 * Connects to `host` (each of its addresses in turn, as Deno.connect does) and `port`. Past
 * `timeoutMs` in all it throws Deno.errors.TimedOut `timed out after N ms`; a refused connect
 * throws Deno.errors.ConnectionRefused, and so on (see the top).
 */
export async function connectTcp(
  host: string,
  port: number,
  timeoutMs: number,
): Promise<TcpConnection> {
  const deadline = performance.now() + timeoutMs;
  const timedOut = () => new Deno.errors.TimedOut(`timed out after ${timeoutMs} ms`);
  let timer: ReturnType<typeof setTimeout> | undefined;
  const ips = await Promise.race([
    resolve(host),
    new Promise<never>((_, reject) => timer = setTimeout(() => reject(timedOut()), timeoutMs)),
  ]).finally(() => clearTimeout(timer));
  let failure: unknown;
  for (const ip of ips) {
    try {
      return await connectTo(ip, port, deadline, timedOut);
    } catch (e) {
      if (performance.now() >= deadline) throw e;
      failure = e;
    }
  }
  throw failure;
}

/**
 * Whether a nonblocking connect that returned -1 with `errno` goes on: started (EINPROGRESS),
 * interrupted (EINTR: it goes on in the background), or, asked a second time, under way
 * (EALREADY) or done (EISCONN).
 */
function connectGoesOn(errno: number): boolean {
  return errno === EINPROGRESS || errno === EINTR || errno === EALREADY || errno === EISCONN;
}

/** One nonblocking connect: started, waited for until `deadline`, its outcome read. */
async function connectTo(
  ip: Uint8Array,
  port: number,
  deadline: number,
  timedOut: () => Error,
): Promise<TcpConnection> {
  const fd = tcpSocket(ip);
  let connected = false;
  try {
    const sockaddr = sockaddrOf(ip, port);
    if (libc().connect(fd, sockaddr, sockaddr.length) !== 0) {
      if (!connectGoesOn(errnoNow()) && libc().connect(fd, sockaddr, sockaddr.length) !== 0) {
        // Not what a nonblocking connect says, and asked again (errno is read by a call of its
        // own, and twice in CI it held ENOENT, which no connect gives), it says it again.
        const { errno, text } = lastErrno();
        if (!connectGoesOn(errno)) throw osError(errno, text, "connect");
      }
      const timer = setTimeout(() => poller.cancel(fd), Math.max(0, deadline - performance.now()));
      const done = await poller.writable(fd).finally(() => clearTimeout(timer));
      if (!done) throw timedOut();
      const error = new Int32Array(1);
      const status = new Uint8Array(error.buffer);
      if (libc().getsockopt(fd, SOL_SOCKET, SO_ERROR, status, socklen(4)) !== 0) {
        throw lastError("getsockopt");
      }
      if (error[0] !== 0) throw osError(error[0], errnoText(error[0]), "connect");
    }
    connected = true;
  } finally {
    if (!connected) closeSocket(fd);
  }
  return connection(fd, null);
}
