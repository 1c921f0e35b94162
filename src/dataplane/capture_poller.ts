/**
 * The capture loop's one wait: a single nonblocking `poll` over the file descriptors of every
 * capture in the process that is waiting for frames.
 *
 * A nonblocking FFI call occupies a thread of Deno's blocking pool until it returns. With one
 * poll per capture, a server with a hundred handlers held a hundred threads in `poll`, the pool
 * ran dry, and everything else that needs it (the handshake's WebCrypto among others) queued
 * behind 250 ms timeouts. So every capture's `wait()` joins one shared poll:
 *
 *   1. `wait(fd)` registers the fd; if a poll is in flight it is woken (self-pipe) to take it in.
 *   2. One poll runs over [wake pipe, every waiting fd] until one is readable or the earliest
 *      deadline passes.
 *   3. Ready and timed-out waiters are resolved; the loop yields once so that their owners can
 *      drain synchronously and wait again, then polls again with everyone.
 *
 * An fd that is part of an in-flight poll must not be closed: `whenIdle` defers that until the
 * poll has returned.
 */
import { libc, POLLFD_SIZE, POLLIN, WakePipe } from "../../ffi/libc.ts";

interface Waiter {
  resolve: (ready: boolean) => void;
  deadline: number;
}

class Poller {
  #waiters = new Map<number, Waiter>();
  #wake: WakePipe | null = null;
  #running = false;
  /** The fds of the poll in flight, or null when none is. */
  #inFlight: Set<number> | null = null;
  #afterPoll: (() => void)[] = [];
  /** struct pollfd[]: off-heap and untouched while a poll runs on another thread. */
  #fds = new Uint8Array(new ArrayBuffer(64 * POLLFD_SIZE));

  /** Resolves true when `fd` is readable (or in error), or `timeoutMs` passed; false if cancelled. */
  wait(fd: number, timeoutMs: number): Promise<boolean> {
    const { promise, resolve } = Promise.withResolvers<boolean>();
    this.#waiters.get(fd)?.resolve(false);
    this.#waiters.set(fd, { resolve, deadline: performance.now() + timeoutMs });
    if (this.#inFlight && !this.#inFlight.has(fd)) this.#wakePipe().wake();
    if (!this.#running) this.#loop();
    return promise;
  }

  /** Ends a pending wait on `fd` (resolving it false). */
  cancel(fd: number): void {
    const waiter = this.#waiters.get(fd);
    if (!waiter) return;
    this.#waiters.delete(fd);
    waiter.resolve(false);
    if (this.#inFlight?.has(fd)) this.#wakePipe().wake();
  }

  /** Runs `fn` (closing `fd`) now, or as soon as the poll that watches `fd` has returned. */
  whenIdle(fd: number, fn: () => void): void {
    if (this.#inFlight?.has(fd)) {
      this.#afterPoll.push(fn);
      this.#wakePipe().wake();
    } else {
      fn();
    }
  }

  #wakePipe(): WakePipe {
    return this.#wake ??= new WakePipe();
  }

  async #loop(): Promise<void> {
    this.#running = true;
    const wake = this.#wakePipe();
    try {
      while (this.#waiters.size > 0) {
        const fds = [...this.#waiters.keys()];
        if ((fds.length + 1) * POLLFD_SIZE > this.#fds.length) {
          this.#fds = new Uint8Array(new ArrayBuffer((fds.length + 64) * POLLFD_SIZE));
        }
        const view = new DataView(this.#fds.buffer);
        [wake.readFd, ...fds].forEach((fd, i) => {
          view.setInt32(i * POLLFD_SIZE, fd, true);
          view.setInt16(i * POLLFD_SIZE + 4, POLLIN, true);
          view.setInt16(i * POLLFD_SIZE + 6, 0, true);
        });
        let deadline = Infinity;
        for (const w of this.#waiters.values()) deadline = Math.min(deadline, w.deadline);
        const timeout = Math.max(0, Math.ceil(deadline - performance.now()));
        this.#inFlight = new Set(fds);
        try {
          await libc().poll(this.#fds, BigInt(fds.length + 1), timeout);
        } finally {
          this.#inFlight = null;
          for (const fn of this.#afterPoll.splice(0)) fn();
        }
        if (view.getInt16(6, true) !== 0) wake.drain();
        const now = performance.now();
        fds.forEach((fd, i) => {
          const waiter = this.#waiters.get(fd);
          if (!waiter) return;
          if (view.getInt16((i + 1) * POLLFD_SIZE + 6, true) !== 0 || waiter.deadline <= now) {
            this.#waiters.delete(fd);
            waiter.resolve(true);
          }
        });
        // Let the owners of ready fds drain and wait again before the next poll.
        await null;
      }
    } finally {
      this.#running = false;
    }
  }
}

/** The process's one capture poller. */
export const capturePoller: Poller = new Poller();
