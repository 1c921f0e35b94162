/**
 * The data path's one wait: a single `poll` over every file descriptor a thread serves. Each
 * thread that waits on fds has its own (a module instance per isolate), in one of two modes:
 *
 * - **blocking**, on the data-path worker (src/dataplane/forwarder_worker.ts): the worker's
 *   thread itself blocks in a synchronous `poll` over its captures, its links' sockets and its
 *   doorbell (`runBlocking`), and does the work when it wakes: one thread wake-up per hop, as in
 *   a C loop, and no CPU while idle. The hot path is callbacks (`onReadable`, `onWritable`,
 *   `defer`), called by the loop itself on the thread that woke: a promise per readiness made
 *   every continuation wait for a turn of the runtime's loop, and the worker fell behind (a
 *   Proxy's worker saturated at 11 kpps of 64-byte frames). Nothing of the runtime's is
 *   touched: the worker never waits on anything but these fds (its commands come through a
 *   doorbell, not `postMessage`). Promise waits still work there (a closing link's last
 *   message): after a round that resolved one, and at least every YIELD_EVERY_MS, the loop
 *   yields one macrotask, so continuations run. Its timers are the loop's own (`at`).
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
 *   1. `onReadable(fd, fn)` / `onWritable(fd, fn)` watch an fd until told otherwise (null);
 *      `readable(fd)` / `writable(fd)` register a one-time waiter (a promise).
 *   2. One poll runs over [wake pipe (pool mode), every watched and waiting fd] until one is
 *      ready or the earliest deadline passes.
 *   3. Ready watches' callbacks run at once; then what they deferred (`defer`: a link's write
 *      after a burst of captured frames); ready and timed-out waiters are resolved.
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
 * Blocking mode: the longest one poll blocks, so the worker's housekeeping (the tick) runs at
 * most this late.
 */
const MAX_BLOCK_MS = 1000;
/**
 * Blocking mode: the loop yields a macrotask at least this often while busy, so that the
 * thread's promise continuations are not starved by a stream of ready fds; an idle thread
 * yields at its tick (`runBlocking`).
 */
const YIELD_EVERY_MS = 1000;
const POLLERR = 0x008;
const POLLHUP = 0x010;
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

/** What a watched fd's owner wants to hear of: each callback runs until it is set to null. */
interface Watch {
  readable: (() => void) | null;
  writable: (() => void) | null;
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

/** What `Poller.at` set: `cancel()` stops it if it has not run yet. */
export interface Timer {
  cancel(): void;
}

/** A blocking loop's timer, and its own handle: `at` allocates nothing more per call. */
class LoopTimer implements Timer {
  cancelled = false;

  constructor(readonly at: number, readonly fn: () => void) {}

  cancel(): void {
    this.cancelled = true;
  }
}

class Poller {
  #waiters = new Map<number, Waiter>();
  #wake: WakePipe | null = null;
  #running = false;
  /** struct pollfd[]: off-heap and untouched while a poll runs on another thread. */
  #fds = new Uint8Array(new ArrayBuffer(64 * POLLFD_SIZE));
  /** A view of #fds, made with it: the loop reads and writes it every round. */
  #fdsView = new DataView(this.#fds.buffer);
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
  /** Watched fds and their callbacks (blocking mode: polled by the loop itself). */
  readonly #watches = new Map<number, Watch>();
  /** Blocking mode: the watches changed since the poll set was built. */
  #watchesChanged = true;
  /** Blocking mode: the fds of the watches, in the poll set's order. */
  #watched: number[] = [];
  /** Work to do once the ready callbacks have run (blocking mode; pool mode: a microtask). */
  #deferred: (() => void)[] = [];
  /** Blocking mode: work due at a time (a paced queue's next send), soonest not kept sorted. */
  #timers: LoopTimer[] = [];

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

  /**
   * Calls `fn` on this thread whenever `fd` is readable (or in error), until set to null. The
   * owner reads what there is, up to a bound: the poll is level-triggered, and what is left
   * wakes it again. `fn` must not throw (its owner handles its own errors).
   */
  onReadable(fd: number, fn: (() => void) | null): void {
    this.#watch(fd, "readable", fn);
  }

  /** Calls `fn` whenever `fd` is writable (or in error), until set to null. */
  onWritable(fd: number, fn: (() => void) | null): void {
    this.#watch(fd, "writable", fn);
  }

  /**
   * Runs `fn` once the ready callbacks of this round have run, before the next poll: one socket
   * write carries the frames a burst queued. Pool mode: a microtask.
   */
  defer(fn: () => void): void {
    if (this.#blocking) this.#deferred.push(fn);
    else queueMicrotask(fn);
  }

  #watch(fd: number, way: "readable" | "writable", fn: (() => void) | null): void {
    let watch = this.#watches.get(fd);
    if (!watch) {
      if (!fn) return;
      this.#watches.set(fd, watch = { readable: null, writable: null });
    }
    if (watch[way] === fn) return;
    watch[way] = fn;
    if (!watch.readable && !watch.writable) this.#watches.delete(fd);
    this.#watchesChanged = true;
    if (this.#blocking) return;
    if (fn) this.#pump(fd, way, fn);
    else this.#endWait(way === "readable" ? fd : writeKey(fd));
  }

  /** Pool mode: a watch is a chain of one-time waits, each calling `fn` while it is current. */
  #pump(fd: number, way: "readable" | "writable", fn: () => void): void {
    const current = () => this.#watches.get(fd)?.[way] === fn;
    (async () => {
      while (current()) {
        const ready = way === "readable" ? await this.readable(fd) : await this.writable(fd);
        if (!ready || !current()) return;
        fn();
      }
    })().catch(() => {/* the wait failed: #fail told every waiter, this one included */});
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
    if (!this.#running && !this.#blocking) {
      // Not from here: the caller gets its promise before the loop's first turn.
      this.#running = true;
      queueMicrotask(() => this.#loop().catch((e) => this.#fail(e)));
    }
    return promise;
  }

  /** Pool mode: ends the one-time wait on `key` (resolved false), as `cancel` does. */
  #endWait(key: number): void {
    const waiter = this.#waiters.get(key);
    if (!waiter) return;
    this.#waiters.delete(key);
    waiter.resolve(false);
    if (this.#waiters.size === 0 && this.#inFlight) this.#wakePipe().wake();
  }

  /** Ends the pending waits and the watches on `fd` (waits resolve false). */
  cancel(fd: number): void {
    if (this.#watches.delete(fd)) this.#watchesChanged = true;
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
      await this.#poolLoop();
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
   * Blocking mode: the thread's loop, until nothing is watched or waited for. poll(2) over
   * every watched and waiting fd; the ready watches' callbacks run at once, then what they
   * deferred, then the ready waiters are resolved. `tick` runs every `tickMs` (housekeeping), or
   * sooner when it asks to: it returns the ms it wants until the next.
   *
   * After a round that resolved a waiter, the next poll only looks (timeout 0): the waiter's
   * owner may take more than one turn to drain and wait again, and a fd not waited on yet must
   * not be left out of a poll that sleeps (measured: reads parked up to the 200 ms of a TCP
   * retransmission). Rejects if a callback throws: the thread's owner says why.
   */
  async runBlocking(tickMs: number, tick: () => number | void): Promise<void> {
    const yielder = this.#blocking;
    if (!yielder) throw new Error("runBlocking: call blockThisThread first");
    if (this.#running) throw new Error("runBlocking: the loop runs already");
    this.#running = true;
    try {
      let lastYield = performance.now();
      let nextTick = lastYield + tickMs;
      let woke = 0;
      while (this.#waiters.size > 0 || this.#watches.size > 0 || this.#timers.length > 0) {
        this.#runDeferred();
        const n = this.#buildPollSet();
        const now = performance.now();
        const until = Math.min(nextTick, this.#timeout().deadline, this.#nextTimer());
        const timeout = woke > 0 ? 0 : Math.max(0, Math.min(Math.ceil(until - now), MAX_BLOCK_MS));
        if (libc().poll_sync(this.#fds, BigInt(n), timeout) < 0) {
          const { errno, text } = lastErrno();
          if (errno !== EINTR) throw new Error(`poll: ${text}`);
        }
        woke = this.#dispatch(n);
        this.#runDeferred();
        if (this.#timers.length > 0 && this.#runTimers(performance.now()) > 0) this.#runDeferred();
        const after = performance.now();
        woke += this.#expire(after);
        let ticked = false;
        if (after >= nextTick) {
          const wanted = tick();
          nextTick = after + (typeof wanted === "number" ? Math.min(wanted, tickMs) : tickMs);
          ticked = true;
        }
        // A poll that slept counts as a yield: the thread was not busy. Yielding right after
        // an idle wake-up cost each hop of an idle round trip ~100 µs more (bench/hops.ts).
        if (timeout > 0) lastYield = after;
        // The thread's own timers are `at`'s, run above: a turn of the runtime's (setTimeout)
        // would cost a wake-up and ~2 ms away from poll each time (1.0 context switches and
        // 2.2 ms a turn, measured), and a message's turn (the yield below) can come before the
        // timers' and leave them starved.
        if (ticked || woke > 0 || after - lastYield >= YIELD_EVERY_MS) {
          // Promise continuations (a resolved waiter's owner) run here.
          await yielder.next();
          lastYield = performance.now();
        }
      }
    } finally {
      this.#running = false;
    }
  }

  /**
   * Runs `fn` once at `at` (performance.now() ms), to within the poll's ms: on the blocking
   * thread in its loop, elsewhere by a timer. For a few pending at once (a paced queue's next
   * send): they are kept in a plain array. The blocking thread's work that waits for a time
   * goes here, not to `setTimeout`: the loop never hands the thread to the runtime's timers,
   * since a turn of them costs a wake-up and ~2 ms without polling (see `runBlocking`).
   */
  at(at: number, fn: () => void): Timer {
    if (!this.#blocking) {
      const id = setTimeout(fn, Math.max(0, at - performance.now()));
      return { cancel: () => clearTimeout(id) };
    }
    const timer = new LoopTimer(at, fn);
    this.#timers.push(timer);
    return timer;
  }

  /** The earliest timer's time (Infinity: none). */
  #nextTimer(): number {
    let soonest = Infinity;
    for (const t of this.#timers) if (!t.cancelled && t.at < soonest) soonest = t.at;
    return soonest;
  }

  /**
   * Runs the timers due by `now`; how many ran. Those not due stay, in place: a paced queue sets
   * one per send, and this runs every round of the loop. Cancelled ones go, due or not. A timer
   * set while these run waits for the next round.
   */
  #runTimers(now: number): number {
    const timers = this.#timers;
    const pending = timers.length;
    let kept = 0;
    let ran = 0;
    for (let i = 0; i < pending; i++) {
      const t = timers[i];
      if (t.cancelled) continue;
      if (t.at > now) timers[kept++] = t;
      else {
        ran++;
        t.fn();
      }
    }
    // Timers set by the ones that ran were pushed past `pending`: keep them.
    timers.copyWithin(kept, pending);
    timers.length = kept + (timers.length - pending);
    return ran;
  }

  #runDeferred(): void {
    // What a deferred function defers runs in this same pass.
    for (let i = 0; i < this.#deferred.length; i++) this.#deferred[i]();
    this.#deferred.length = 0;
  }

  /**
   * Fills the pollfd array: the watches (rebuilt only when they changed), then the one-time
   * waiters. Returns the number of entries.
   */
  #buildPollSet(): number {
    if (this.#watchesChanged) {
      this.#watched = [...this.#watches.keys()];
    }
    const watched = this.#watched;
    const n = watched.length + this.#waiters.size;
    if (n * POLLFD_SIZE > this.#fds.length) {
      this.#fds = new Uint8Array(new ArrayBuffer((n + 64) * POLLFD_SIZE));
      this.#fdsView = new DataView(this.#fds.buffer);
      this.#watchesChanged = true;
    }
    const view = this.#fdsView;
    if (this.#watchesChanged) {
      this.#watchesChanged = false;
      for (let i = 0; i < watched.length; i++) {
        const watch = this.#watches.get(watched[i])!;
        const at = i * POLLFD_SIZE;
        view.setInt32(at + FD_AT, watched[i], true);
        view.setInt16(
          at + EVENTS_AT,
          (watch.readable ? POLLIN : 0) | (watch.writable ? POLLOUT : 0),
          true,
        );
      }
    }
    let i = watched.length;
    for (const key of this.#waiters.keys()) {
      const at = i++ * POLLFD_SIZE;
      view.setInt32(at + FD_AT, key >= 0 ? key : -key - 1, true);
      view.setInt16(at + EVENTS_AT, key >= 0 ? POLLIN : POLLOUT, true);
    }
    return n;
  }

  /** Runs the ready watches' callbacks and resolves the ready waiters; returns how many of those. */
  #dispatch(n: number): number {
    const view = this.#fdsView;
    const watched = this.#watched;
    const m = watched.length;
    for (let i = 0; i < m; i++) {
      const revents = view.getInt16(i * POLLFD_SIZE + REVENTS_AT, true);
      if (revents === 0) continue;
      const fd = watched[i];
      const failed = (revents & (POLLERR | POLLHUP)) !== 0;
      // Looked up at each call: an earlier callback may have ended this watch.
      if (failed || (revents & POLLIN) !== 0) this.#watches.get(fd)?.readable?.();
      if (failed || (revents & POLLOUT) !== 0) this.#watches.get(fd)?.writable?.();
    }
    let woke = 0;
    for (let i = m; i < n; i++) {
      const at = i * POLLFD_SIZE;
      if (view.getInt16(at + REVENTS_AT, true) === 0) continue;
      const fd = view.getInt32(at + FD_AT, true);
      const key = (view.getInt16(at + EVENTS_AT, true) & POLLIN) !== 0 ? fd : writeKey(fd);
      const waiter = this.#waiters.get(key);
      if (!waiter) continue;
      this.#waiters.delete(key);
      waiter.resolve(true);
      woke++;
    }
    return woke;
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
