/**
 * The data path's one wait: a single `poll` over every file descriptor the data path serves,
 * the captures' and the plain links' sockets (socket_stream.ts), in one of two places:
 *
 * - **inline**, on the JS thread itself (runtime_wait.ts), while frames flow: the poll also
 *   watches the runtime's own epoll, so the thread that wakes for a frame or a link's bytes is
 *   the one that forwards them. One thread wake-up per hop, as in a C loop.
 * - **on a helper thread** (a nonblocking FFI call, Deno's blocking pool) when no frame was
 *   captured for the inline window, or the data path is busy: then the JS thread sleeps in the
 *   runtime's own wait, truly idle, and under load the helper's poll overlaps the JS thread's
 *   work. Only captured frames open the window: a link's keepalives, every few seconds, would
 *   otherwise keep an idle server waking every 5 ms (2.3-2.8% of a CPU, measured).
 *
 * Why one poll for all: a nonblocking FFI call holds a blocking-pool thread until it returns.
 * With one poll per capture, a server with a hundred handlers held a hundred threads, the pool
 * ran dry, and everything else that needs it (the handshake's WebCrypto) queued behind it.
 *
 *   1. `readable(fd)` / `writable(fd)` register a waiter; if a helper poll is in flight it is
 *      woken (self-pipe) to take the new fd in.
 *   2. One poll runs over [runtime epoll or wake pipe, every waiting fd] until one is ready or the
 *      earliest deadline passes.
 *   3. Ready and timed-out waiters are resolved; their owners drain synchronously and wait again
 *      before the next poll (one macrotask inline, one microtask otherwise).
 *
 * An fd that is part of a helper's poll in flight must not be closed: `whenIdle` defers that
 * until the poll has returned.
 */
import { lastErrno, libc, POLLIN, POLLOUT, WakePipe } from "../../ffi/libc.ts";
import { structs } from "../../ffi/layout.ts";
import { RuntimeWait } from "./runtime_wait.ts";

/** How late the runtime's timers may run while the JS thread waits inline. */
const INLINE_CAP_MS = 5;
/**
 * Past this many ready polls in a LOAD_WINDOW_MS window the data path is busy: its threads are
 * awake anyway, and a helper thread's poll overlaps the JS thread's work, which then carries
 * more (measured inline under bulk TCP: 4.8 against 6.1 Gbit/s, and twice the CPU per GB).
 */
const BUSY_POLLS = 200;
const LOAD_WINDOW_MS = 100;
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
  /** A capture's: its frames open the inline window. */
  frames: boolean;
}

/** Waiters are keyed by fd for readable, by -fd-1 for writable: a socket may wait for both. */
const writeKey = (fd: number) => -fd - 1;

class Poller {
  #waiters = new Map<number, Waiter>();
  #wake: WakePipe | null = null;
  #running = false;
  /** The fds of the helper's poll in flight, or null when none is. */
  #inFlight: Set<number> | null = null;
  #afterPoll: (() => void)[] = [];
  /** struct pollfd[]: off-heap and untouched while a poll runs on another thread. */
  #fds = new Uint8Array(new ArrayBuffer(64 * POLLFD_SIZE));
  #runtime: RuntimeWait | null = null;
  #lastFrame = -Infinity;
  #windowStart = 0;
  #readyInWindow = 0;
  #busy = false;
  /** For this long after a captured frame the JS thread waits inline (`--inline-wait`). */
  #inlineWindowMs = 0;
  /** Helper polls that failed in a row (see #loop). */
  #pollFailures = 0;
  /** Why the wait itself failed: every wait from then on rejects with it. */
  #failure: Error | null = null;

  /**
   * Lets the JS thread wait inline for `windowMs` after traffic (0: never). Returns whether it
   * can: false where the runtime's wait cannot be joined (runtime_wait.ts).
   */
  enableInline(windowMs: number): boolean {
    this.#inlineWindowMs = windowMs;
    if (windowMs > 0) this.#runtime ??= RuntimeWait.open();
    return this.inline;
  }

  /** Whether the JS thread waits inline after traffic (so a link's socket is best served here). */
  get inline(): boolean {
    return this.#inlineWindowMs > 0 && this.#runtime !== null;
  }

  /**
   * Resolves true when `fd` is readable (or in error), or `timeoutMs` passed; false if cancelled.
   * `frames`: `fd` is a capture's, whose frames open the inline window.
   */
  readable(fd: number, timeoutMs = MAX_POLL_MS, frames = false): Promise<boolean> {
    return this.#wait(fd, timeoutMs, frames);
  }

  /** Resolves true when `fd` is writable (or in error); false if cancelled. */
  writable(fd: number): Promise<boolean> {
    return this.#wait(writeKey(fd), MAX_POLL_MS, false);
  }

  /** A new wait on a key ends the one before it (resolved false): one waiter per fd and way. */
  #wait(key: number, timeoutMs: number, frames: boolean): Promise<boolean> {
    const { promise, resolve, reject } = Promise.withResolvers<boolean>();
    if (this.#failure) {
      reject(this.#failure);
      return promise;
    }
    this.#waiters.get(key)?.resolve(false);
    this.#waiters.set(key, { resolve, reject, deadline: performance.now() + timeoutMs, frames });
    if (this.#inFlight && !this.#inFlight.has(key)) this.#wakePipe().wake();
    if (!this.#running) {
      // Not from here: an inline poll would block the caller before it even has its promise.
      this.#running = true;
      queueMicrotask(() => this.#loop().catch((e) => this.#fail(e)));
    }
    return promise;
  }

  /** Ends the pending waits on `fd` (resolving them false). */
  cancel(fd: number): void {
    for (const key of [fd, writeKey(fd)]) {
      const waiter = this.#waiters.get(key);
      if (!waiter) continue;
      this.#waiters.delete(key);
      waiter.resolve(false);
      if (this.#inFlight?.has(key)) this.#wakePipe().wake();
    }
  }

  /** Runs `fn` (closing `fd`) now, or as soon as the helper's poll that watches `fd` returned. */
  whenIdle(fd: number, fn: () => void): void {
    if (this.#inFlight?.has(fd) || this.#inFlight?.has(writeKey(fd))) {
      this.#afterPoll.push(fn);
      this.#wakePipe().wake();
    } else {
      fn();
    }
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

  /** Wait inline: while frames were captured lately, but not so often that the path is busy. */
  #inline(now: number): RuntimeWait | null {
    if (now - this.#windowStart >= LOAD_WINDOW_MS) {
      this.#busy = this.#readyInWindow > BUSY_POLLS;
      this.#readyInWindow = 0;
      this.#windowStart = now;
    }
    return !this.#busy && now - this.#lastFrame < this.#inlineWindowMs ? this.#runtime : null;
  }

  async #loop(): Promise<void> {
    try {
      while (this.#waiters.size > 0) {
        const runtime = this.#inline(performance.now());
        const keys = [...this.#waiters.keys()];
        const n = keys.length + 1;
        if (n * POLLFD_SIZE > this.#fds.length) {
          this.#fds = new Uint8Array(new ArrayBuffer((n + 64) * POLLFD_SIZE));
        }
        const view = new DataView(this.#fds.buffer);
        const first = runtime ? runtime.epfd : this.#wakePipe().readFd;
        view.setInt32(FD_AT, first, true);
        view.setInt16(EVENTS_AT, POLLIN, true);
        for (let i = 0; i < keys.length; i++) {
          const at = (i + 1) * POLLFD_SIZE;
          view.setInt32(at + FD_AT, keys[i] >= 0 ? keys[i] : -keys[i] - 1, true);
          view.setInt16(at + EVENTS_AT, keys[i] >= 0 ? POLLIN : POLLOUT, true);
        }
        let deadline = Infinity;
        for (const w of this.#waiters.values()) deadline = Math.min(deadline, w.deadline);
        const timeout = Math.min(MAX_POLL_MS, Math.max(0, Math.ceil(deadline - performance.now())));
        if (runtime) {
          runtime.resetWaker();
          if (libc().poll_sync(this.#fds, BigInt(n), Math.min(timeout, INLINE_CAP_MS)) < 0) {
            const { errno, text } = lastErrno();
            if (errno !== EINTR) throw new Error(`poll: ${text}`);
            continue;
          }
        } else {
          this.#inFlight = new Set(keys);
          try {
            // errno is the helper thread's, out of reach here. A signal (the server's SIGTERM or
            // SIGHUP handler may run on that thread) makes it EINTR once: try again; only a
            // poll that keeps failing is broken.
            if (await libc().poll(this.#fds, BigInt(n), timeout) < 0) {
              if (++this.#pollFailures >= MAX_POLL_FAILURES) {
                throw new Error(`poll failed ${MAX_POLL_FAILURES} times in a row`);
              }
              continue;
            }
            this.#pollFailures = 0;
          } finally {
            this.#inFlight = null;
            for (const fn of this.#afterPoll.splice(0)) fn();
          }
        }
        const firstReady = view.getInt16(REVENTS_AT, true) !== 0;
        if (firstReady && !runtime) this.#wakePipe().drain();
        const now = performance.now();
        let ready = firstReady && runtime !== null;
        let frames = false;
        for (let i = 0; i < keys.length; i++) {
          const waiter = this.#waiters.get(keys[i]);
          if (!waiter) continue;
          const fdReady = view.getInt16((i + 1) * POLLFD_SIZE + REVENTS_AT, true) !== 0;
          if (fdReady || waiter.deadline <= now) {
            ready ||= fdReady;
            frames ||= fdReady && waiter.frames;
            this.#waiters.delete(keys[i]);
            waiter.resolve(true);
          }
        }
        if (ready) this.#readyInWindow++;
        if (frames) this.#lastFrame = now;
        // Let the owners of ready fds do their work and wait again before the next poll.
        if (runtime) await runtime.turn(firstReady);
        else await null;
      }
    } finally {
      this.#running = false;
    }
  }
}

/** The process's one data path poller. */
export const poller: Poller = new Poller();
