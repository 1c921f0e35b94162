/**
 * Lets the JS thread itself wait for the data path's fds AND the runtime's sockets in one
 * `poll`, so that a frame costs one thread wake-up per hop instead of two (issue 12).
 *
 * Why: on these machines an idle thread takes ~100–150 µs to wake. A wait on a blocking-pool
 * thread wakes that thread, which then wakes the JS thread: two wake-ups in a row for every frame
 * that arrives after a pause. A C loop (or OpenVPN) blocks once, in one `poll` over everything it
 * serves, and does the work on the thread that woke.
 *
 * How: Deno's runtime (tokio) waits in `epoll_wait` on one epoll fd, in which every socket the
 * runtime serves is registered, and its cross-thread waker, an eventfd, too. An epoll fd is
 * itself pollable: it is readable while one of its registered files is ready. So the JS thread
 * may block in a synchronous `poll([runtime epoll, data path fds…])` (src/io/poller.ts):
 *   1. A data path fd ready (a capture, a plain link's socket): the work is done right there.
 *   2. The runtime's epoll ready (a TLS link, a listener, a signal): `turn(true)` hands the
 *      thread back to the runtime for one round: it rings a doorbell (a unix socket the runtime
 *      watches) and awaits it, so the runtime must call `epoll_wait` and deliver whatever is
 *      ready; then one macrotask lets every continuation run.
 *   3. Before each poll the runtime's waker eventfd is emptied. The runtime writes it to itself
 *      when an I/O completion wakes its event loop during our turn; the registration is
 *      edge-triggered, so that write stays on the epoll's ready list, and the epoll readable,
 *      until the runtime's next `epoll_wait`, which may come after our poll. Empty, the eventfd
 *      has nothing to report (epoll re-checks a file before it reports it). It is harmless to
 *      tokio: mio only writes it.
 *   4. The runtime's timers are not files, and work finished on other threads (WebCrypto, file
 *      reads, nonblocking FFI calls) does not wake the epoll while the JS thread is inside a
 *      task: the caller caps its poll (5 ms), so such work is seen at most about that late.
 *
 * This reads the runtime's private layout from /proc: its epoll is the one in which the
 * doorbell's listener was just registered, its waker the registration with token 0 (mio's
 * WAKE token), an eventfd. `open()` checks all of it and returns null when it does not match;
 * the poller then waits on a helper thread only, as before.
 */
import { lastErrno, libc } from "../../ffi/libc.ts";
import { structs } from "../../ffi/layout.ts";
import { openFds } from "./proc_fds.ts";
import { log } from "../log.ts";
import { messageOf } from "../errors.ts";

/** One registration in an epoll fd, from /proc/self/fdinfo. */
interface EpollEntry {
  fd: number;
  token: bigint;
  inode: number;
}

function epollEntries(epfd: number): EpollEntry[] {
  const text = Deno.readTextFileSync(`/proc/self/fdinfo/${epfd}`);
  const entry =
    /^tfd:\s+(\d+)\s+events:\s+[0-9a-f]+\s+data:\s+([0-9a-f]+)\s+pos:\d+\s+ino:([0-9a-f]+)/gm;
  return [...text.matchAll(entry)].map((m) => ({
    fd: Number(m[1]),
    token: BigInt(`0x${m[2]}`),
    inode: parseInt(m[3], 16),
  }));
}

/** The inode of the unix socket bound to `path` (/proc/net/unix), or -1. */
function unixSocketInode(path: string): number {
  for (const line of Deno.readTextFileSync("/proc/self/net/unix").split("\n")) {
    const fields = line.trim().split(/\s+/);
    if (fields[7] === path) return Number(fields[6]);
  }
  return -1;
}

const O_NONBLOCK = 0o4000;
const AF_UNIX = 1;
const SOCK_STREAM = 1;
const SOCK_CLOEXEC = 0o2000000;

/** A unix stream socket connected to `path` with plain libc calls: an fd Deno does not watch. */
function connectUnix(path: string): number {
  const fd = libc().socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) throw new Error(`socket(AF_UNIX): ${lastErrno().text}`);
  const { size, offsets } = structs.sockaddr_un;
  const addr = new Uint8Array(size);
  new DataView(addr.buffer).setUint16(offsets.sun_family, AF_UNIX, true);
  const name = new TextEncoder().encode(path);
  if (name.length >= size - offsets.sun_path) throw new Error(`socket path too long: ${path}`);
  addr.set(name, offsets.sun_path);
  if (libc().connect(fd, addr, addr.length) < 0) {
    const { text } = lastErrno();
    libc().close(fd);
    throw new Error(`connect(${path}): ${text}`);
  }
  return fd;
}

export class RuntimeWait {
  readonly #waker: number;
  readonly #counter = new Uint8Array(8);
  readonly #bell = new Uint8Array(1);
  readonly #sink = new Uint8Array(64);
  #bellConn: Deno.Conn | null = null;

  private constructor(
    /** The runtime's epoll fd. */
    readonly epfd: number,
    waker: number,
    /** Our end of the doorbell: a plain fd, unknown to the runtime (see `turn`). */
    private readonly ringer: number,
    /** The runtime's end, once accepted. */
    private readonly bell: Promise<Deno.Conn>,
  ) {
    this.#waker = waker;
  }

  /**
   * The epoll and waker of the runtime this code runs in, or null where they cannot be found
   * (then the data path waits on a helper thread only): logged, and said by `vnet doctor`.
   */
  static open(): RuntimeWait | null {
    try {
      return RuntimeWait.find();
    } catch (e) {
      log.warn("the data path cannot wait inline; it waits on a helper thread", {
        error: messageOf(e),
      });
      return null;
    }
  }

  /**
   * Finds the runtime's epoll and waker, or throws saying why not. The runtime is told apart
   * from others in the process (`deno test` runs one per test module) by a socket it just
   * registered: the doorbell's listener.
   */
  static find(): RuntimeWait {
    if (Deno.build.os !== "linux") throw new Error(`not on ${Deno.build.os} (Linux only)`);
    const dir = Deno.makeTempDirSync({ prefix: "vnet-wait-" });
    let listener: Deno.Listener | undefined;
    try {
      const path = `${dir}/bell`;
      listener = Deno.listen({ transport: "unix", path });
      const inode = unixSocketInode(path);
      let found: { epfd: number; waker: number } | undefined;
      for (const epfd of openFds((target) => target === "anon_inode:[eventpoll]")) {
        const entries = epollEntries(epfd);
        const waker = entries.find((e) => e.token === 0n)?.fd;
        if (waker !== undefined && entries.some((e) => e.inode === inode)) {
          found = { epfd, waker };
          break;
        }
      }
      if (!found) throw new Error("the runtime's epoll was not found in /proc/self/fdinfo");
      if (Deno.readLinkSync(`/proc/self/fd/${found.waker}`) !== "anon_inode:[eventfd]") {
        throw new Error("the runtime's waker is not an eventfd");
      }
      // Reading it must never block the JS thread.
      const flags = /^flags:\s+([0-7]+)/m.exec(
        Deno.readTextFileSync(`/proc/self/fdinfo/${found.waker}`),
      );
      if (!flags || (parseInt(flags[1], 8) & O_NONBLOCK) === 0) {
        throw new Error("the runtime's waker is not nonblocking");
      }
      const ringer = connectUnix(path);
      const l = listener;
      const bell = l.accept().finally(() => l.close());
      listener = undefined;
      return new RuntimeWait(found.epfd, found.waker, ringer, bell);
    } finally {
      listener?.close();
      Deno.removeSync(dir, { recursive: true });
    }
  }

  /** Lets go of the doorbell (a probe that found the wait and does not use it). */
  async close(): Promise<void> {
    libc().close(this.ringer);
    (await this.bell).close();
  }

  /** Clears the runtime's waker (step 3), just before the JS thread blocks in its own poll. */
  resetWaker(): void {
    if (libc().read(this.#waker, this.#counter, 8n) < 0) {
      const { errno } = lastErrno();
      if (errno !== 11) log.debug("waker reset failed", { errno }); // EAGAIN: already clear
    }
  }

  /**
   * One round of the runtime's event loop (step 2): with `io`, one that includes its
   * `epoll_wait`, for the runtime's sockets; without, one that only delivers the operations
   * already complete (a link's write) and runs what waited on them.
   */
  async turn(io: boolean): Promise<void> {
    if (io) {
      // The ringer is written with plain write(2): were it the runtime's, each read of the bell
      // would make it writable again, that would make the epoll readable, and so on for ever.
      const rung = (this.#bellConn ??= await this.bell).read(this.#sink);
      libc().write(this.ringer, this.#bell, 1n);
      await rung;
    }
    await new Promise<void>((resolve) => setImmediate(resolve));
  }
}
