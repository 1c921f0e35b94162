/**
 * Pacing a UDP path just below what its bottleneck carries, with a fair queue in front, so that
 * the standing queue of a bulk transfer forms here, where a ping or a keystroke goes around it,
 * and not in a FIFO somewhere on the WAN (issue 18). CAKE does this with a bandwidth it is
 * told; cake-autorate and BBR find the rate from the delay; so does this:
 *
 *   - The peer reports how long our datagrams wait in the path's queues (path_queue.ts). Once
 *     per ADJUST_MS the mean of its figures in that time is looked at: the wait a ping there
 *     would have had. (Their least, CoDel's choice, hardly ever stands above a few ms there: a
 *     bottleneck short of CPU, and the flows' own pulses, empty the queue for an instant in every
 *     100 ms, while the mean stays at 5-15 ms.) Over HIGH_MS: the rate comes down to DECREASE
 *     times what was sent in that time (by FLOOR of itself at most), which drains the far queue
 *     within a few adjustments.
 *     Under LOW_MS while the pace held the frames back (what went was near the rate): the rate
 *     goes up by INCREASE, to find the bottleneck again when it got faster.
 *   - Only a path that carries bulk is paced: one whose frames were BULK_FRAME_BYTES on average.
 *     The way back of a bulk copy carries its ACKs, and the queue they meet there is someone
 *     else's (the other way's flows, a bottleneck short of CPU); holding ACKs back would only
 *     slow the copy.
 *   - Until the path's queue is first seen, and again after RELEASE_MS without a backlog here,
 *     nothing is paced: a path with no bottleneck queue costs one comparison per frame.
 *   - What waits here waits in a FlowQueue (src/link/flow_queue.ts, the link's own): frames
 *     hashed into flows by their inner addresses and ports, deficit round robin with sparse
 *     flows first, and CoDel per flow, which drops from a bulk flow that keeps too long a queue.
 *     The flows' own congestion control then settles at the paced rate, whatever it is (a
 *     loss-based CUBIC as well as a BBR, which does not slow down for random loss).
 *   - Tokens: the rate's bytes per ms, at most BURST_MS of them banked: the worker wakes to
 *     send on the poll's ms (and a busy machine's scheduler makes that later), and a burst after
 *     a pause goes at once, but cannot flood the bottleneck.
 */
import { FlowQueue, POP_SLACK } from "../link/flow_queue.ts";
import { FRAME_OVERHEAD, frameHandler, MAX_FRAME } from "../link/wire.ts";

/** The mean path queue over an adjustment above which the rate comes down (ms). */
const HIGH_MS = 3;
/** ... and under which, while the pace holds frames back, it goes up. */
const LOW_MS = 2;
/** Frames this large on average are bulk (full-size segments, not ACKs or pings). */
const BULK_FRAME_BYTES = 500;
/** The pace held the frames back when what went was this near the rate. */
const LIMITED = 0.9;
const ADJUST_MS = 100;
const DECREASE = 0.85;
const FLOOR = 0.7;
const INCREASE = 1.04;
/** The rate never comes down below this (bytes/ms: 1 Mbit/s). */
const MIN_RATE = 125;
/** A path with no backlog here for this long is no longer paced. */
const RELEASE_MS = 10_000;
/** Tokens banked at most: this many ms of the rate (and at least a full-size frame). */
const BURST_MS = 3;
/** The queue's bound, and CoDel's target and interval for its flows. */
const QUEUE_BYTES = 2 << 20;
const QUEUE_TARGET_MS = 5;
const QUEUE_INTERVAL_MS = 100;

/** Where the shaper's frames go, and what it drops. */
export interface ShapedPath {
  /** Sends one frame of `handler` now; false if it could not (too big, the path closed). */
  transmit(handler: number, frame: Uint8Array): boolean;
  /** A frame of `handler` was dropped here (its flow kept too long a queue, or it was full). */
  dropped(handler: number): void;
  /** Asks for `pump` at `at` (performance.now() ms). */
  wakeAt(at: number): void;
}

export class PathShaper {
  /** The paced rate in bytes per ms; Infinity: not pacing. */
  rate = Infinity;
  /** Frames dropped here. */
  drops = 0;
  #tokens = 0;
  #refilledAt = 0;
  #queue: FlowQueue | null = null;
  #message: Uint8Array | null = null;
  /** The current adjustment: since when, bytes sent, the path queues reported. */
  #windowStart = -Infinity;
  #windowBytes = 0;
  #windowFrames = 0;
  #windowSum = 0;
  #windowReports = 0;
  #lastBacklog = -Infinity;
  /** When a pump is asked for (Infinity: none). */
  #wakeAt = Infinity;

  constructor(
    private readonly path: ShapedPath,
    /** The clock, in ms (tests drive their own). */
    private readonly clock: () => number = () => performance.now(),
  ) {}

  /** Whether frames are paced (else `offer` sends each at once). */
  get pacing(): boolean {
    return this.rate !== Infinity;
  }

  /** Frames waiting here. */
  get queued(): number {
    return this.#queue?.frames ?? 0;
  }

  /**
   * A frame to send: now if the rate allows and nothing waits, else queued. False if it was
   * sent and refused, or could not be queued.
   */
  offer(handler: number, frame: Uint8Array): boolean {
    if (this.rate === Infinity) return this.#send(handler, frame);
    const now = this.clock();
    this.#refill(now);
    if (this.#tokens > 0 && this.queued === 0) {
      this.#tokens -= frame.length;
      return this.#send(handler, frame);
    }
    this.#queue ??= new FlowQueue({
      maxBytes: QUEUE_BYTES,
      targetMs: QUEUE_TARGET_MS,
      intervalMs: QUEUE_INTERVAL_MS,
      onDrop: (h) => {
        this.drops++;
        this.path.dropped(h);
      },
    });
    if (!this.#queue.push(handler, frame)) return false;
    this.#lastBacklog = now;
    this.#schedule(now);
    return true;
  }

  /** Sends what the rate allows now, and asks to be woken for the rest. */
  pump = (): void => {
    const now = this.clock();
    this.#wakeAt = Infinity;
    const queue = this.#queue;
    if (!queue || queue.frames === 0) return;
    this.#refill(now);
    this.#message ??= new Uint8Array(MAX_FRAME + FRAME_OVERHEAD + POP_SLACK);
    const m = this.#message;
    while (this.#tokens > 0) {
      const end = queue.popInto(m, 0);
      if (end < 0) break;
      const handler = frameHandler(m);
      const frame = m.subarray(FRAME_OVERHEAD, end);
      this.#tokens -= frame.length;
      this.#send(handler, frame);
    }
    if (queue.frames > 0) {
      this.#lastBacklog = now;
      this.#schedule(now);
    }
  };

  /**
   * The peer's figure of how long our datagrams wait in the path's queues (ms): the rate
   * follows it once per ADJUST_MS (see the top).
   */
  report(delayMs: number, now: number): void {
    this.#windowSum += delayMs;
    this.#windowReports++;
    const elapsed = now - this.#windowStart;
    if (elapsed < ADJUST_MS) return;
    if (Number.isFinite(elapsed)) {
      const sent = this.#windowBytes / elapsed;
      const mean = this.#windowSum / this.#windowReports;
      const bulk = this.#windowBytes >= BULK_FRAME_BYTES * this.#windowFrames;
      if (mean > HIGH_MS && sent > 0 && bulk) {
        // Not below FLOOR of the pace in one step: `sent` is also low when the flows have just
        // backed off, and a pace that fell with them took seconds to climb back.
        const next = this.rate === Infinity
          ? sent * DECREASE
          : Math.max(Math.min(this.rate, sent) * DECREASE, this.rate * FLOOR);
        if (this.rate === Infinity) this.#lastBacklog = now;
        this.rate = Math.max(MIN_RATE, next);
      } else if (this.rate !== Infinity) {
        if (mean < LOW_MS && sent >= LIMITED * this.rate) this.rate *= INCREASE;
        else if (now - this.#lastBacklog > RELEASE_MS) this.rate = Infinity;
      }
    }
    this.#windowStart = now;
    this.#windowBytes = 0;
    this.#windowFrames = 0;
    this.#windowSum = 0;
    this.#windowReports = 0;
  }

  #send(handler: number, frame: Uint8Array): boolean {
    this.#windowBytes += frame.length;
    this.#windowFrames++;
    return this.path.transmit(handler, frame);
  }

  #refill(now: number): void {
    const cap = Math.max(this.rate * BURST_MS, 1514);
    this.#tokens = Math.min(cap, this.#tokens + (now - this.#refilledAt) * this.rate);
    this.#refilledAt = now;
  }

  /** Asks for a pump when the tokens will have come back above zero. */
  #schedule(now: number): void {
    const at = now + Math.max(0.05, -this.#tokens / this.rate);
    if (at >= this.#wakeAt) return;
    this.#wakeAt = at;
    this.path.wakeAt(at);
  }
}
