/**
 * The data path's one wait: a single `poll` over every file descriptor a thread serves. Each
 * thread that waits on fds has its own (a module instance per isolate), in one of two modes:
 *
 * - **blocking**, on the data-path worker (src/dataplane/data_path_worker.ts): the worker's
 *   thread itself blocks in a synchronous `poll` over its captures, its links' sockets and its
 *   doorbell, and does the work when it wakes: one thread wake-up per hop, as in a C loop, and
 *   no CPU while idle. Nothing of the runtime's is touched: the worker never waits on anything
 *   but these fds (its commands come through a doorbell, not `postMessage`), and between polls
 *   it yields one macrotask, so its timers and promise continuations run.
 * - **pool**, on the main thread (the control plane: listeners and handshakes of plain links):
 *   an epoll set of its own, waited on by a nonblocking FFI `epoll_wait` on a helper thread of
 *   Deno's blocking pool, so the main thread stays free for the runtime's own work. A waiter is
 *   one `epoll_ctl` (one-shot), whatever the number of fds: a flood of a thousand connections in
 *   their handshakes costs no more per connection than one does.
 *
 * Why one poll for all: a nonblocking FFI call holds a blocking-pool thread until it returns.
 * With one poll per capture, a server with a hundred handlers held a hundred threads, the pool
 * ran dry, and everything else that needs it (the handshake's WebCrypto) queued behind it.
 *
 *   1. `readable(fd)` / `writable(fd)` register a waiter.
 *   2. One poll runs over [wake pipe (pool mode), every waiting fd] until one is ready or the
 *      earliest deadline passes.
 *   3. Ready and timed-out waiters are resolved; their owners drain synchronously and wait again
 *      before the next poll (the macrotask between polls lets every continuation run first).
 *
 * An fd that is part of a helper's poll in flight must not be closed: `whenIdle` defers that
 * until the poll has returned.
 */
import { lastErrno, libc, POLLIN, POLLOUT, WakePipe } from "../../ffi/libc.ts";

const EPOLLIN = 0x001;
const EPOLLOUT = 0x004;
const EPOLLERR = 0x008;
const EPOLLHUP = 0x010;
const EPOLLONESHOT = 1 << 30;
const EPOLL_CTL_ADD = 1;
const EPOLL_CTL_DEL = 2;
const EPOLL_CTL_MOD = 3;
const EPOLL_CLOEXEC = 0o2000000;
const EEXIST = 17;
const ENOENT = 2;
/** Ready fds one `epoll_wait` reports at most; more wait for the next. */
const MAX_EVENTS = 256;
const EVENT_SIZE = structs.epoll_event.size;
const { events: EVENTS_OF, data: DATA_OF } = structs.epoll_event.offsets;
import { structs } from "../../ffi/layout.ts";

/**
 * Blocking mode: the longest one poll blocks, so the thread's own timers (a degraded device's
 * retry, the worker's housekeeping) run at most this late. One wake-up a second costs an idle
 * worker ~0.015% of a CPU.
 */
const MAX_BLOCK_MS = 1000;
/** The longest poll timeout (ms) poll(2) takes. */
const MAX_POLL_MS = 0x7fffffff;
const EINTR = 4;
/** Helper polls failing in a row past this are a broken wait, not interrupted ones. */
const MAX_POLL_FAILURES = 100;
/** struct pollfd: { int fd; short events; short revents; } */
const POLLFD_SIZE = structs.pollfd.size;
const { fd: FD_AT, events: EVENTS_AT, revents: REVENTS_AT } = structs.pollfd.offsets;

interface Waiter {
  resolve: (ready: boolean) => void;
  reject: (error: Error) => void;
  deadline: number;
}

/** Waiters are keyed by fd for readable, by -fd-1 for writable: a socket may wait for both. */
const writeKey = (fd: number) => -fd - 1;

/**
 * One macrotask: every promise continuation queued so far runs before it (a MessageChannel
 * message; `setTimeout(0)` is clamped to ~2 ms once nested, measured 2.2 ms against 5 µs).
 */
class MacrotaskYield {
  #channel = new MessageChannel();
  #resolve: (() => void) | null = null;

  constructor() {
    this.#channel.port1.onmessage = () => {
      const resolve = this.#resolve;
      this.#resolve = null;
      resolve?.();
    };
  }

  next(): Promise<void> {
    const { promise, resolve } = Promise.withResolvers<void>();
    this.#resolve = resolve;
    this.#channel.port2.postMessage(null);
    return promise;
  }
}

class Poller {
  #waiters = new Map<number, Waiter>();
  #wake: WakePipe | null = null;
  #running = false;
  /** struct pollfd[]: off-heap and untouched while a poll runs on another thread. */
  #fds = new Uint8Array(new ArrayBuffer(64 * POLLFD_SIZE));
  /** Set on the data-path worker: this thread blocks in its own poll (see the top). */
  #blocking: MacrotaskYield | null = null;
  /** Helper polls that failed in a row (see #loop). */
  #pollFailures = 0;
  /** Why the wait itself failed: every wait from then on rejects with it. */
  #failure: Error | null = null;
  /** Pool mode: the epoll set, and one `struct epoll_event` to register with. */
  #epfd = -1;
  readonly #event = new Uint8Array(EVENT_SIZE);
  /** Pool mode: the earliest deadline the `epoll_wait` in flight wakes for (Infinity: none). */
  #inFlightDeadline = Infinity;
  /** Pool mode: an `epoll_wait` is in flight on a helper thread. */
  #inFlight = false;

  /**
   * Makes this thread's waits block in poll on this very thread (the data-path worker, which
   * has nothing else to wait for). Call before the first wait.
   */
  blockThisThread(): void {
    this.#blocking ??= new MacrotaskYield();
  }

  /** Whether this thread blocks in its own poll (the data-path worker). */
  get blocking(): boolean {
    return this.#blocking !== null;
  }

  /** Resolves true when `fd` is readable (or in error), or `timeoutMs` passed; false if cancelled. */
  readable(fd: number, timeoutMs = MAX_POLL_MS): Promise<boolean> {
    return this.#wait(fd, timeoutMs);
  }

  /** Resolves true when `fd` is writable (or in error); false if cancelled. */
  writable(fd: number): Promise<boolean> {
    return this.#wait(writeKey(fd), MAX_POLL_MS);
  }

  /** A new wait on a key ends the one before it (resolved false): one waiter per fd and way. */
  #wait(key: number, timeoutMs: number): Promise<boolean> {
    const { promise, resolve, reject } = Promise.withResolvers<boolean>();
    if (this.#failure) {
      reject(this.#failure);
      return promise;
    }
    this.#waiters.get(key)?.resolve(false);
    const deadline = performance.now() + timeoutMs;
    this.#waiters.set(key, { resolve, reject, deadline });
    if (!this.#blocking) {
      try {
        this.#arm(key >= 0 ? key : -key - 1);
      } catch (e) {
        this.#fail(e);
        return promise;
      }
      if (this.#inFlight && deadline < this.#inFlightDeadline) this.#wakePipe().wake();
    }
    if (!this.#running) {
      // Not from here: a blocking poll would block the caller before it even has its promise.
      this.#running = true;
      queueMicrotask(() => this.#loop().catch((e) => this.#fail(e)));
    }
    return promise;
  }

  /** Ends the pending waits on `fd` (resolving them false). */
  cancel(fd: number): void {
    let had = false;
    for (const key of [fd, writeKey(fd)]) {
      const waiter = this.#waiters.get(key);
      if (!waiter) continue;
      had = true;
      this.#waiters.delete(key);
      waiter.resolve(false);
    }
    if (had && this.#epfd >= 0) libc().epoll_ctl(this.#epfd, EPOLL_CTL_DEL, fd, this.#event);
    // The last wait gone: end the epoll_wait in flight, whose FFI call would keep the process
    // alive (a client exits when its link closes).
    if (had && this.#waiters.size === 0 && this.#inFlight) {
      this.#wakePipe().wake();
    }
  }

  /**
   * Runs `fn` (closing `fd`). An epoll set drops a closed fd by itself, and a blocking poll is
   * never in flight while this thread runs, so that is now.
   */
  whenIdle(_fd: number, fn: () => void): void {
    fn();
  }

  /**
   * Pool mode: (re)registers `fd` in the epoll set, one-shot, for what its waiters wait for. An
   * fd epoll cannot watch (a regular file) is reported ready at once: its owner finds out.
   */
  #arm(fd: number): void {
    const events = (this.#waiters.has(fd) ? EPOLLIN : 0) |
      (this.#waiters.has(writeKey(fd)) ? EPOLLOUT : 0);
    if (events === 0) return;
    const epfd = this.#epollFd(); // first: making the set fills #event with the wake pipe's
    const view = new DataView(this.#event.buffer);
    view.setUint32(EVENTS_OF, events | EPOLLONESHOT, true);
    view.setUint32(DATA_OF, fd, true);
    view.setUint32(DATA_OF + 4, 0, true);
    if (libc().epoll_ctl(epfd, EPOLL_CTL_MOD, fd, this.#event) === 0) return;
    if (lastErrno().errno !== ENOENT) return this.#readyNow(fd);
    if (libc().epoll_ctl(epfd, EPOLL_CTL_ADD, fd, this.#event) === 0) return;
    if (lastErrno().errno !== EEXIST) this.#readyNow(fd);
  }

  #readyNow(fd: number): void {
    for (const key of [fd, writeKey(fd)]) {
      const waiter = this.#waiters.get(key);
      if (!waiter) continue;
      this.#waiters.delete(key);
      queueMicrotask(() => waiter.resolve(true));
    }
  }

  #epollFd(): number {
    if (this.#epfd >= 0) return this.#epfd;
    const epfd = libc().epoll_create1(EPOLL_CLOEXEC);
    if (epfd < 0) throw new Error(`epoll_create1: ${lastErrno().text}`);
    const wake = this.#wakePipe().readFd;
    const view = new DataView(this.#event.buffer);
    view.setUint32(EVENTS_OF, EPOLLIN, true);
    view.setUint32(DATA_OF, wake, true);
    view.setUint32(DATA_OF + 4, 0, true);
    if (libc().epoll_ctl(epfd, EPOLL_CTL_ADD, wake, this.#event) !== 0) {
      throw new Error(`epoll_ctl: ${lastErrno().text}`);
    }
    return this.#epfd = epfd;
  }

  /**
   * The poll itself failed (an FFI error, not an fd's): nothing the data path waits for can be
   * seen any more, so every waiter, now and later, gets the error. Their owners handle it as a
   * failed read: a capture degrades its handler, a link closes, each saying why.
   */
  #fail(e: unknown): void {
    this.#failure = e instanceof Error ? e : new Error(String(e));
    this.#failure.message = `the data path's wait failed: ${this.#failure.message}`;
    const waiters = [...this.#waiters.values()];
    this.#waiters.clear();
    for (const waiter of waiters) waiter.reject(this.#failure);
  }

  #wakePipe(): WakePipe {
    return this.#wake ??= new WakePipe();
  }

  async #loop(): Promise<void> {
    try {
      if (this.#blocking) await this.#blockingLoop(this.#blocking);
      else await this.#poolLoop();
    } finally {
      this.#running = false;
    }
    // A wait registered between the loop's last look and here found it running: start again.
    if (this.#waiters.size > 0 && !this.#failure) {
      this.#running = true;
      queueMicrotask(() => this.#loop().catch((e) => this.#fail(e)));
    }
  }

  /** The earliest deadline of the waiters, as a poll timeout (ms). */
  #timeout(): { deadline: number; timeout: number } {
    let deadline = Infinity;
    for (const w of this.#waiters.values()) deadline = Math.min(deadline, w.deadline);
    const timeout = Math.min(MAX_POLL_MS, Math.max(0, Math.ceil(deadline - performance.now())));
    return { deadline, timeout };
  }

  /** Resolves the waiters whose deadline passed; returns how many. */
  #expire(now: number): number {
    let n = 0;
    for (const [key, waiter] of this.#waiters) {
      if (waiter.deadline > now) continue;
      this.#waiters.delete(key);
      waiter.resolve(true);
      n++;
    }
    return n;
  }

  /**
   * Blocking mode: poll(2) on this thread over every waiting fd. It blocks only after a round
   * that woke nobody: a waiter it woke may take more than one turn to drain and wait again (its
   * continuation can be queued behind this loop's own), and a fd it has not waited on yet must
   * not be left out of a poll that sleeps (measured: reads parked up to the 200 ms of a TCP
   * retransmission). After a busy round the poll only looks (timeout 0), and the next turn comes.
   */
  async #blockingLoop(yielder: MacrotaskYield): Promise<void> {
    let woke = 0;
    while (this.#waiters.size > 0) {
      const keys = [...this.#waiters.keys()];
      const n = keys.length;
      if (n * POLLFD_SIZE > this.#fds.length) {
        this.#fds = new Uint8Array(new ArrayBuffer((n + 64) * POLLFD_SIZE));
      }
      const view = new DataView(this.#fds.buffer);
      for (let i = 0; i < n; i++) {
        const at = i * POLLFD_SIZE;
        view.setInt32(at + FD_AT, keys[i] >= 0 ? keys[i] : -keys[i] - 1, true);
        view.setInt16(at + EVENTS_AT, keys[i] >= 0 ? POLLIN : POLLOUT, true);
        view.setInt16(at + REVENTS_AT, 0, true);
      }
      const timeout = woke > 0 ? 0 : Math.min(this.#timeout().timeout, MAX_BLOCK_MS);
      if (libc().poll_sync(this.#fds, BigInt(n), timeout) < 0) {
        const { errno, text } = lastErrno();
        if (errno !== EINTR) throw new Error(`poll: ${text}`);
      }
      woke = 0;
      for (let i = 0; i < n; i++) {
        const waiter = this.#waiters.get(keys[i]);
        if (!waiter || view.getInt16(i * POLLFD_SIZE + REVENTS_AT, true) === 0) continue;
        this.#waiters.delete(keys[i]);
        waiter.resolve(true);
        woke++;
      }
      woke += this.#expire(performance.now());
      // Let the owners of ready fds do their work and wait again before the next poll.
      await yielder.next();
    }
  }

  /** Pool mode: epoll_wait on a helper thread over the epoll set. */
  async #poolLoop(): Promise<void> {
    const epfd = this.#epollFd();
    const wake = this.#wakePipe().readFd;
    const events = new Uint8Array(new ArrayBuffer(MAX_EVENTS * EVENT_SIZE));
    const view = new DataView(events.buffer);
    while (this.#waiters.size > 0) {
      const { deadline, timeout } = this.#timeout();
      this.#inFlightDeadline = deadline;
      this.#inFlight = true;
      let n: number;
      try {
        // errno is the helper thread's, out of reach here. A signal (the server's SIGTERM or
        // SIGHUP handler may run on that thread) makes it EINTR once: try again; only a
        // wait that keeps failing is broken.
        n = await libc().epoll_wait(epfd, events, MAX_EVENTS, timeout);
      } finally {
        this.#inFlightDeadline = Infinity;
        this.#inFlight = false;
      }
      if (n < 0) {
        if (++this.#pollFailures >= MAX_POLL_FAILURES) {
          throw new Error(`epoll_wait failed ${MAX_POLL_FAILURES} times in a row`);
        }
        continue;
      }
      this.#pollFailures = 0;
      for (let i = 0; i < n; i++) {
        const ready = view.getUint32(i * EVENT_SIZE + EVENTS_OF, true);
        const fd = view.getUint32(i * EVENT_SIZE + DATA_OF, true);
        if (fd === wake) {
          this.#wakePipe().drain();
          continue;
        }
        const error = (ready & (EPOLLERR | EPOLLHUP)) !== 0;
        for (const [key, hit] of [[fd, EPOLLIN], [writeKey(fd), EPOLLOUT]]) {
          const waiter = this.#waiters.get(key);
          if (!waiter || !(error || (ready & hit) !== 0)) continue;
          this.#waiters.delete(key);
          waiter.resolve(true);
        }
        // One-shot: what still waits on this fd (the other way) is armed again.
        this.#arm(fd);
      }
      this.#expire(performance.now());
      await null;
    }
  }
}

/** This thread's one data path poller. */
export const poller: Poller = new Poller();
