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
 *     goes up by INCREASE, to find the bottleneck again when it got faster; and by twice and
 *     four times that when it keeps rising while well under where the queue last formed. A
 *     transfer that is still starting up is not paced yet: what it sends in an adjustment says
 *     nothing of what the path carries, and its bursts fill the queue for an instant.
 *   - Not every wait there is ours to shorten. On a receiver short of CPU, datagrams also wait
 *     in its socket buffer for a thread to run, whatever we send; cutting after such a wait
 *     brought the rate down to MIN_RATE (switch_test once saw 1 Mbit/s on a LAN). The peer
 *     leaves that wait out (it measures to the kernel's receive time, path_queue.ts), but not
 *     one before its socket (a peer's softirq backlog, an older VNET that measures to its read).
 *     So the cuts that follow one another are a run, and a run answers for itself:
 *       - it cuts to RUN_FLOOR of the rate it started from at most, and holds the rate (no
 *         rise) until it is judged, RUN_MS after it began, on the means of its second half;
 *       - it was answered if the wait came under HIGH_MS or RUN_ANSWERED of the mean that
 *         began it, or moved by RUN_MOVED_MS or more over that half: a big queue behind a
 *         bottleneck just under the pace drains slowly, and one behind a bottleneck below the
 *         run's floor still grows. The rate stays, and a wait still over the bar starts a new run
 *         from there, so a bottleneck that fell far is followed down run by run;
 *       - otherwise the wait was not ours: the run is undone (back to the rate it started from,
 *         unpaced if it was, with what waits here sent at once), and no run starts for a hold
 *         that doubles from HOLD_MS up to HOLD_MAX_MS while runs keep going unanswered.
 *     A queue behind a real bottleneck drains by 15% of its bottleneck's time for every 100 ms
 *     paced at DECREASE below it, so it answers within a few adjustments.
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
/** Rises speed up while the rate is under this much of where the path's queue last formed. */
const FAR_BELOW = 0.8;
/** What went grew by less than this since the adjustment before: the transfer is steady. */
const STEADY = 1.25;
/** The rate never comes down below this (bytes/ms: 1 Mbit/s). */
const MIN_RATE = 125;
/** A run of cuts brings the rate down to this much of where it started, at most. */
const RUN_FLOOR = 0.5;
/** How long a run has for the path's queue to answer it. */
const RUN_MS = 1000;
/** ... by falling under HIGH_MS, or to under this much of the mean that started the run. */
const RUN_ANSWERED = 0.5;
/**
 * ... or by moving this much over that half, either way: a big queue behind a bottleneck just
 * under the pace drains slowly, and one behind a bottleneck below the run's floor still grows.
 */
const RUN_MOVED_MS = 10;
/** After a run that was not answered, none starts for this long; doubling while none is. */
const HOLD_MS = 1000;
const HOLD_MAX_MS = 16_000;
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
  /** The current run of cuts (see the top): the rate and the mean it started from, its end. */
  #runFrom: {
    rate: number;
    mean: number;
    base: number;
    until: number;
    /** The means of its second half's adjustments. */
    late: number[];
  } | null = null;
  /** No run starts before this, after one that was not answered; and the next such hold. */
  #holdUntil = -Infinity;
  #holdMs = HOLD_MS;
  /** What went in the last adjustment (bytes/ms), and the rises of the rate in a row. */
  #lastSent = 0;
  #rises = 0;
  /** What went when the path's queue last formed (bytes/ms): the last run's start. */
  #ceiling = 0;
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

  /**
   * Whether the path's queue lately proved not ours to shorten (a run of cuts went unanswered,
   * see the top): dropping for it would slow the flows for nothing too.
   */
  get waitNotOurs(): boolean {
    return this.clock() < this.#holdUntil;
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
    while (this.#tokens > 0) {
      const sent = this.#sendNext(queue);
      if (sent < 0) break;
      this.#tokens -= sent;
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
      this.#adjust(now, this.#windowBytes / elapsed, this.#windowSum / this.#windowReports);
    }
    this.#windowStart = now;
    this.#windowBytes = 0;
    this.#windowFrames = 0;
    this.#windowSum = 0;
    this.#windowReports = 0;
  }

  /** Sends the next frame waiting in `queue`; its length, or -1 if none waits. */
  #sendNext(queue: FlowQueue): number {
    this.#message ??= new Uint8Array(MAX_FRAME + FRAME_OVERHEAD + POP_SLACK);
    const m = this.#message;
    const end = queue.popInto(m, 0);
    if (end < 0) return -1;
    this.#send(frameHandler(m), m.subarray(FRAME_OVERHEAD, end));
    return end - FRAME_OVERHEAD;
  }

  /** Sends what waits here, all of it: the pace is gone and new frames no longer wait. */
  #flush(): void {
    const queue = this.#queue;
    while (queue && this.#sendNext(queue) >= 0);
  }

  /** One adjustment: `sent` bytes/ms went, and the path's queue was `mean` ms (see the top). */
  #adjust(now: number, sent: number, mean: number): void {
    const run = this.#runFrom;
    if (run) {
      if (now >= run.until - RUN_MS / 2) run.late.push(mean);
      if (now >= run.until) {
        // Judged on the mean of its second half: one adjustment under the bar is no answer,
        // since a wait that is not ours dips under it now and then too.
        this.#runFrom = null;
        const late = run.late;
        const lateMean = average(late, 0, late.length);
        const moved = average(late, late.length - 2, late.length) - average(late, 0, 2);
        const flat = lateMean > HIGH_MS && lateMean >= run.mean * RUN_ANSWERED &&
          Math.abs(moved) <= RUN_MOVED_MS;
        if (flat) {
          // Not ours: undo the run, and do not try again for a while.
          this.rate = run.rate;
          if (this.rate === Infinity) this.#flush();
          this.#holdUntil = now + this.#holdMs;
          this.#holdMs = Math.min(HOLD_MAX_MS, this.#holdMs * 2);
          return;
        }
        // Answered: under the bar, or well down from where it began, or still moving (a big
        // queue draining slowly, or growing behind a bottleneck below the run's floor). Ours,
        // and the rate stays; a wait still over the bar starts a new run from here.
        if (lateMean <= HIGH_MS) this.#holdMs = HOLD_MS;
      }
    }
    const sentBefore = this.#lastSent;
    this.#lastSent = sent;
    if (mean <= HIGH_MS) {
      // Within a run, the rate holds until the run is judged.
      if (this.rate === Infinity || this.#runFrom) return;
      if (mean < LOW_MS && sent >= LIMITED * this.rate) {
        // Each rise in a row goes further (INCREASE, then twice and four times as much) while
        // the rate is well under where the path's queue last formed: a pace that came down far
        // climbs back in a second or two, not in tens. Near there, it probes gently.
        const far = this.rate < FAR_BELOW * this.#ceiling;
        this.rate *= 1 + (INCREASE - 1) * (far ? 1 << Math.min(this.#rises, 2) : 1);
        this.#rises++;
        return;
      }
      this.#rises = 0;
      if (now - this.#lastBacklog > RELEASE_MS) this.rate = Infinity;
      return;
    }
    this.#rises = 0;
    const bulk = this.#windowBytes >= BULK_FRAME_BYTES * this.#windowFrames;
    if (sent <= 0 || !bulk) return;
    if (!this.#runFrom) {
      if (now < this.#holdUntil) return;
      // A transfer still starting up (what went grew by more than STEADY since the last
      // adjustment) queues in bursts, and a pace taken from what it sent then is far below
      // what it will carry: the pace starts once it is steady.
      if (this.rate === Infinity && sent > STEADY * sentBefore) return;
      this.#ceiling = Math.min(this.rate, sent);
      this.#runFrom = {
        rate: this.rate,
        mean,
        base: this.rate === Infinity ? sent : this.rate,
        until: now + RUN_MS,
        late: [],
      };
      if (this.rate === Infinity) this.#lastBacklog = now;
    }
    // Not below FLOOR of the pace in one step: `sent` is also low when the flows have just
    // backed off, and a pace that fell with them took seconds to climb back.
    const next = this.rate === Infinity
      ? sent * DECREASE
      : Math.max(Math.min(this.rate, sent) * DECREASE, this.rate * FLOOR);
    this.rate = Math.max(MIN_RATE, this.#runFrom.base * RUN_FLOOR, next);
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

/** The mean of `values[from..to)`, clamped to what is there. */
function average(values: number[], from: number, to: number): number {
  from = Math.max(0, from);
  to = Math.min(values.length, to);
  let sum = 0;
  for (let i = from; i < to; i++) sum += values[i];
  return sum / (to - from);
}
