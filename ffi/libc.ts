/**
 * The few libc calls VNET needs (UN*X). The data path's wait (src/io/poller.ts): `poll` — an
 * asynchronous FFI call, run on Deno's blocking thread pool — or `poll_sync`, the same call
 * blocking the data-path worker's own thread, or `epoll_*` for a set of its own; a self-pipe
 * (`pipe`/`write`/`read`/`close`) that wakes a pending wait. The sockets of plain links, our own
 * (src/io/tcp_socket.ts, src/link/socket_stream.ts): `socket`/`setsockopt`/`bind`/`listen`/
 * `accept4`, a nonblocking `connect` and `getsockopt` (its outcome), `recv`/`send`,
 * `getsockname`/`getpeername`. The Linux packet injector (GSO): `socket`/`bind`, `send`, or
 * `sendmsg` to write a large frame from where it lies, and `setsockopt` so that it receives
 * nothing. The server's accept path: a netlink socket's
 * `send`/`recv`, to end a TLS handshake the runtime still waits on (src/io/sock_diag.ts), and
 * `getrlimit`/`setrlimit` to raise the fd limit at start. The UDP transport's socket
 * (src/io/udp_socket.ts): `socket`/`bind`/`setsockopt`/`getsockopt`, and
 * `sendmmsg`/`recvmmsg`/`sendto` for its datagrams, and `clock_gettime` to read how long one
 * waited in the socket (its kernel receive time, SO_TIMESTAMPNS).
 */
import { lazyLibrary, LIBC } from "./load.ts";
import { acceptNothing } from "./bpf.ts";
import { structs } from "./layout.ts";

const symbols = {
  // int poll(struct pollfd *fds, nfds_t nfds, int timeout);
  poll: {
    parameters: [
      "buffer", // struct pollfd *fds  (ffi/layout.ts)
      "u64", // nfds_t nfds (unsigned long on Linux, unsigned int on macOS: passed in a register)
      "i32", // int timeout (ms, -1 = forever)
    ],
    result: "i32",
    nonblocking: true,
  },
  // The same poll, blocking the calling thread: the data-path worker's (src/io/poller.ts).
  poll_sync: {
    name: "poll",
    parameters: ["buffer", "u64", "i32"],
    result: "i32",
  },
  // int pipe(int pipefd[2]);
  pipe: {
    parameters: [
      "buffer", // int pipefd[2] (out)
    ],
    result: "i32",
  },
  // int pipe2(int pipefd[2], int flags);
  pipe2: {
    parameters: [
      "buffer", // int pipefd[2] (out)
      "i32", // int flags
    ],
    result: "i32",
  },
  // ssize_t write(int fd, const void *buf, size_t count);
  write: {
    parameters: [
      "i32", // int fd
      "buffer", // const void *buf
      "usize", // size_t count
    ],
    result: "isize",
  },
  // ssize_t read(int fd, void *buf, size_t count);
  read: {
    parameters: [
      "i32", // int fd
      "buffer", // void *buf
      "usize", // size_t count
    ],
    result: "isize",
  },
  // int close(int fd);
  close: {
    parameters: [
      "i32", // int fd
    ],
    result: "i32",
  },
  // int setsockopt(int sockfd, int level, int optname, const void *optval, socklen_t optlen);
  setsockopt: {
    parameters: [
      "i32", // int sockfd
      "i32", // int level
      "i32", // int optname
      "buffer", // const void *optval
      "u32", // socklen_t optlen
    ],
    result: "i32",
  },
  // int socket(int domain, int type, int protocol);
  socket: {
    parameters: [
      "i32", // int domain (AF_PACKET, AF_UNIX)
      "i32", // int type (SOCK_RAW, SOCK_STREAM)
      "i32", // int protocol (0: this socket receives nothing)
    ],
    result: "i32",
  },
  // int bind(int sockfd, const struct sockaddr *addr, socklen_t addrlen);
  bind: {
    parameters: [
      "i32", // int sockfd
      "buffer", // const struct sockaddr *addr (struct sockaddr_ll, 20 bytes)
      "u32", // socklen_t addrlen
    ],
    result: "i32",
  },
  // int connect(int sockfd, const struct sockaddr *addr, socklen_t addrlen);
  connect: {
    parameters: [
      "i32", // int sockfd
      "buffer", // const struct sockaddr *addr (here struct sockaddr_un, 110 bytes)
      "u32", // socklen_t addrlen
    ],
    result: "i32",
  },
  // ssize_t recv(int sockfd, void *buf, size_t len, int flags);
  recv: {
    parameters: [
      "i32", // int sockfd
      "buffer", // void *buf
      "usize", // size_t len
      "i32", // int flags
    ],
    result: "isize",
  },
  // int getsockname(int sockfd, struct sockaddr *addr, socklen_t *addrlen);
  getsockname: {
    parameters: [
      "i32", // int sockfd
      "buffer", // struct sockaddr *addr (out; struct sockaddr_in6 is 28 bytes)
      "buffer", // socklen_t *addrlen (in/out)
    ],
    result: "i32",
  },
  // int getpeername(int sockfd, struct sockaddr *addr, socklen_t *addrlen);
  getpeername: {
    parameters: [
      "i32", // int sockfd
      "buffer", // struct sockaddr *addr (out)
      "buffer", // socklen_t *addrlen (in/out)
    ],
    result: "i32",
  },
  // int getrlimit(int resource, struct rlimit *rlim);
  getrlimit: {
    parameters: [
      "i32", // int resource (RLIMIT_NOFILE = 7 on Linux)
      "buffer", // struct rlimit *rlim (out: { rlim_t cur; rlim_t max; }, two 64-bit words)
    ],
    result: "i32",
  },
  // int clock_gettime(clockid_t clockid, struct timespec *tp);
  clock_gettime: {
    parameters: [
      "i32", // clockid_t clockid (CLOCK_REALTIME = 0)
      "buffer", // struct timespec *tp (out; ffi/layout.ts)
    ],
    result: "i32",
  },
  // int setrlimit(int resource, const struct rlimit *rlim);
  setrlimit: {
    parameters: [
      "i32", // int resource
      "buffer", // const struct rlimit *rlim
    ],
    result: "i32",
  },
  // ssize_t send(int sockfd, const void *buf, size_t len, int flags);
  send: {
    parameters: [
      "i32", // int sockfd
      "buffer", // const void *buf
      "usize", // size_t len
      "i32", // int flags
    ],
    result: "isize",
  },
  // ssize_t sendmsg(int sockfd, const struct msghdr *msg, int flags);
  sendmsg: {
    parameters: [
      "i32", // int sockfd
      "buffer", // const struct msghdr *msg (ffi/layout.ts; its iovecs hold addresses)
      "i32", // int flags
    ],
    result: "isize",
  },
  // unsigned int if_nametoindex(const char *ifname);
  if_nametoindex: {
    parameters: [
      "buffer", // const char *ifname (NUL-terminated)
    ],
    result: "u32",
  },
  // int *__errno_location(void);  (glibc/musl: where errno lives for this thread)
  __errno_location: {
    parameters: [],
    result: "pointer",
    optional: true,
  },
  // char *strerror(int errnum);
  strerror: {
    parameters: [
      "i32", // int errnum
    ],
    result: "pointer",
  },
  // int listen(int sockfd, int backlog);
  listen: {
    parameters: [
      "i32", // int sockfd
      "i32", // int backlog
    ],
    result: "i32",
  },
  // int accept4(int sockfd, struct sockaddr *addr, socklen_t *addrlen, int flags);
  accept4: {
    parameters: [
      "i32", // int sockfd
      "buffer", // struct sockaddr *addr (out; struct sockaddr_in6 is 28 bytes)
      "buffer", // socklen_t *addrlen (in/out)
      "i32", // int flags (SOCK_NONBLOCK | SOCK_CLOEXEC)
    ],
    result: "i32",
  },
  // int getsockopt(int sockfd, int level, int optname, void *optval, socklen_t *optlen);
  getsockopt: {
    parameters: [
      "i32", // int sockfd
      "i32", // int level
      "i32", // int optname
      "buffer", // void *optval (out)
      "buffer", // socklen_t *optlen (in/out)
    ],
    result: "i32",
  },
  // ssize_t sendto(int sockfd, const void *buf, size_t len, int flags,
  //                const struct sockaddr *dest_addr, socklen_t addrlen);
  sendto: {
    parameters: [
      "i32", // int sockfd
      "buffer", // const void *buf
      "usize", // size_t len
      "i32", // int flags
      "buffer", // const struct sockaddr *dest_addr (struct sockaddr_in or sockaddr_in6)
      "u32", // socklen_t addrlen
    ],
    result: "isize",
  },
  // int sendmmsg(int sockfd, struct mmsghdr *msgvec, unsigned int vlen, int flags);
  // (Linux and FreeBSD only: optional, so that libc still loads elsewhere.)
  sendmmsg: {
    parameters: [
      "i32", // int sockfd
      "buffer", // struct mmsghdr *msgvec (ffi/layout.ts; msg_len out)
      "u32", // unsigned int vlen
      "i32", // int flags
    ],
    result: "i32",
    optional: true,
  },
  // int recvmmsg(int sockfd, struct mmsghdr *msgvec, unsigned int vlen, int flags,
  //              struct timespec *timeout);
  recvmmsg: {
    parameters: [
      "i32", // int sockfd
      "buffer", // struct mmsghdr *msgvec (in/out)
      "u32", // unsigned int vlen
      "i32", // int flags
      "pointer", // struct timespec *timeout (NULL: none; the socket is nonblocking)
    ],
    result: "i32",
    optional: true,
  },
  // int epoll_create1(int flags);
  epoll_create1: {
    parameters: ["i32"], // int flags (EPOLL_CLOEXEC)
    result: "i32",
  },
  // int epoll_ctl(int epfd, int op, int fd, struct epoll_event *event);
  epoll_ctl: {
    parameters: [
      "i32", // int epfd
      "i32", // int op
      "i32", // int fd
      "buffer", // struct epoll_event *event (ffi/layout.ts)
    ],
    result: "i32",
  },
  // int epoll_wait(int epfd, struct epoll_event *events, int maxevents, int timeout);
  // Nonblocking: it runs on a helper thread of Deno's blocking pool (src/io/poller.ts).
  epoll_wait: {
    parameters: [
      "i32", // int epfd
      "buffer", // struct epoll_event *events (out)
      "i32", // int maxevents
      "i32", // int timeout (ms; -1: none)
    ],
    result: "i32",
    nonblocking: true,
  },
} as const satisfies Deno.ForeignLibraryInterface;

const library = lazyLibrary(LIBC, symbols);

/** The calling thread's errno and its text, right after a failed call. */
export function lastErrno(): { errno: number; text: string } {
  const errno = errnoNow();
  return { errno, text: errnoText(errno) };
}

let errnoCell: Deno.UnsafePointerView | null | undefined;

/**
 * The calling thread's errno right after a failed call, read without allocating: the data path
 * reads it after every drained socket (EAGAIN). The cell is found once per module instance, when
 * libc opens (`libc()`), and each Worker has its own instance on its own thread, so the cached
 * cell is always this thread's.
 *
 * Found then, and not at the first read: finding it is an FFI call of its own, and whatever the
 * runtime does on this thread between a failed call and the read of errno may change errno. A
 * short-lived `vnet client`'s first read is its connect's EINPROGRESS, and twice in CI it read
 * ENOENT there instead.
 */
export function errnoNow(): number {
  return errnoCell ? errnoCell.getInt32() : 0;
}

/** strerror(errno), e.g. "Message too long". */
export function errnoText(errno: number): string {
  const text = libc().strerror(errno);
  return text ? Deno.UnsafePointerView.getCString(text) : `errno ${errno}`;
}

/** The libc symbols; opened on first call. */
export function libc(): Deno.DynamicLibrary<typeof symbols>["symbols"] {
  const lib = library.get();
  if (errnoCell === undefined) {
    const where = lib.__errno_location?.();
    errnoCell = where ? new Deno.UnsafePointerView(where) : null;
  }
  return lib;
}

export const POLLIN = 0x001;
export const POLLOUT = 0x004;

/**
 * A self-pipe that ends a pending poll early: `wake()` makes the read end readable, so a poll
 * that watches `readFd` returns at once; `drain()` empties it again once a poll has said so. The
 * data path's poller wakes it whenever the set of fds to watch changes (a new waiter, a cancelled
 * one, an fd to close) and drains it after every poll that found it readable; the main thread
 * rings the data-path worker's (its doorbell) when a command or a frame waits for it.
 *
 * Both ends are nonblocking: a wake never blocks the waker, whatever the reader does (a full
 * pipe is as readable as one byte), and a drain of an empty pipe returns at once.
 */
export class WakePipe {
  readonly readFd: number;
  readonly #writeFd: number;
  #open = true;
  readonly #byte = new Uint8Array(1);

  constructor() {
    const fds = new Int32Array(2);
    if (libc().pipe2(fds, O_NONBLOCK | O_CLOEXEC) !== 0) {
      throw new Error(`pipe2() failed: ${lastErrno().text}`);
    }
    this.readFd = fds[0];
    this.#writeFd = fds[1];
  }

  wake(): void {
    if (this.#open) libc().write(this.#writeFd, this.#byte, 1n);
  }

  drain(): void {
    if (this.#open) drainPipe(this.readFd);
  }

  /** Closes both ends; safe twice. Never call while a poll on `readFd` may be in flight. */
  close(): void {
    if (!this.#open) return;
    this.#open = false;
    libc().close(this.readFd);
    libc().close(this.#writeFd);
  }
}

const O_NONBLOCK = 0o4000; // Linux (x86_64, aarch64)
const O_CLOEXEC = 0o2000000; // Linux (x86_64, aarch64)
const sink = new Uint8Array(256);

/** Empties the nonblocking pipe `readFd` (the read end of another thread's WakePipe). */
export function drainPipe(readFd: number): void {
  while (Number(libc().read(readFd, sink, BigInt(sink.length))) === sink.length);
}

const SOL_SOCKET = 1; // Linux
const SO_ATTACH_FILTER = 26; // Linux

/**
 * Linux: attaches the classic BPF program `ret #0` to a socket so that it receives nothing.
 * Used on injection-only packet sockets, which otherwise get a copy of every frame.
 * Returns false if it could not (non-Linux, or the call failed); harmless either way.
 */
export function dropAllReceived(fd: number): boolean {
  if (Deno.build.os !== "linux" || fd < 0) return false;
  const { program, insns } = acceptNothing("sock_fprog");
  const rc = libc().setsockopt(fd, SOL_SOCKET, SO_ATTACH_FILTER, program, program.length);
  return rc === 0 && insns.byteLength > 0; // (keeps `insns` alive across the call)
}

const RLIMIT_NOFILE = 7; // Linux (x86_64, aarch64)

/**
 * Linux: raises the soft limit on open files to the hard limit, as a server that holds one fd
 * per connection should (systemd's default soft limit is 1024, its hard limit 524288). Returns
 * the limits before and after, or null where it cannot (not Linux, or the calls failed).
 */
export function raiseOpenFileLimit(): { soft: bigint; hard: bigint; raisedTo: bigint } | null {
  if (Deno.build.os !== "linux") return null;
  const { size, offsets } = structs.rlimit;
  const bytes = new Uint8Array(size);
  const limits = new DataView(bytes.buffer);
  if (libc().getrlimit(RLIMIT_NOFILE, bytes) !== 0) return null;
  const soft = limits.getBigUint64(offsets.rlim_cur, true);
  const hard = limits.getBigUint64(offsets.rlim_max, true);
  if (soft >= hard) return { soft, hard, raisedTo: soft };
  limits.setBigUint64(offsets.rlim_cur, hard, true);
  if (libc().setrlimit(RLIMIT_NOFILE, bytes) !== 0) return null;
  return { soft, hard, raisedTo: hard };
}
