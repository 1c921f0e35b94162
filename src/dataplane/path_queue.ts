/**
 * The queue a UDP path builds somewhere between two servers, and keeping it short (issue 18).
 *
 * On a WAN the bottleneck is rarely VNET: it is a router or a modem in the middle, with a FIFO
 * that a bulk transfer fills (bufferbloat), and every other packet on the path waits behind it.
 * VNET cannot put a fair queue there. What it can do is see that queue and act before the
 * frames enter it, as CoDel (RFC 8289) does for a queue it owns:
 *
 *   - See it (`QueueDelayEstimate`, at the receiving end): each keepalive carries its send time.
 *     Its one-way delay, less the smallest seen over the last FLOOR_BUCKETS * FLOOR_BUCKET_MS, is
 *     the time it spent in queues on the way. It is taken to the kernel's receive time
 *     (SO_TIMESTAMPNS), not to when the worker read it: the wait in our own socket buffer, for a
 *     worker busy with a burst or short of CPU, is no queue of the path's (p50 1-3 ms, p90 9-11
 *     ms under a bulk copy on two shared vCPUs, where the path's own was 0.1 ms). The two clocks'
 *     offset cancels out; their drift (a few ppm between NTP-disciplined hosts) is microseconds
 *     over the window. The receiver sends the figure back in its own keepalives: the sender
 *     learns the queue on its side of the path, whatever the other direction carries.
 *   - Act on it (`PathCodel`, at the sending end): CoDel's control law on those figures. When
 *     the queue stayed above TARGET_MS for INTERVAL_MS, one full-size frame is dropped, then
 *     more often (the interval over the square root of the drop count) until it falls below.
 *     The bulk flow's TCP sees a loss and slows down before the far queue grows; no queue in
 *     VNET is needed, and a path with no bottleneck queue sees no drop.
 *
 * Only frames of HEAVY_FRAME_BYTES or more are dropped: the frames that fill a queue are bulk
 * flows' full-size segments, and a ping, a keystroke, a DNS query or a TCP ACK never is. The
 * target is low because nothing else here keeps a sparse flow from waiting behind the bulk: at
 * the far queue they all wait alike.
 *
 * The figures are in ms on the keepalives' clock (`performance.now()`); a keepalive carries its
 * send time in µs, modulo 2^32 (71 minutes: only differences are used).
 */

/** The standing queue a path may keep, and how long above it before the first drop. */
export const TARGET_MS = 2;
export const INTERVAL_MS = 100;
/** Figures older than this are no guide: the dropping stops until a new one comes. */
const STALE_MS = 250;
/** Frames smaller than this are never dropped (see the top). */
export const HEAVY_FRAME_BYTES = 1000;
/** The floor is the least one-way delay over 2 to 3 buckets of this long. */
const FLOOR_BUCKET_MS = 10_000;
const FLOOR_BUCKETS = 3;
/**
 * A delay above the floor by more than this is no queue but a peer whose clock started afresh
 * (a new process): the estimate starts again.
 */
const IMPLAUSIBLE_MS = 10_000;

/** The wire's unit of a queue delay figure (u16), and the value for "no figure". */
const DELAY_UNIT_MS = 0.1;
export const NO_DELAY_FIGURE = 0xffff;

/** A send time for the wire: µs modulo 2^32. */
export function sendStamp(nowMs: number): number {
  return Math.floor(nowMs * 1000) >>> 0;
}

/** A delay in ms as the wire's u16 (saturating); null gives NO_DELAY_FIGURE. */
export function encodeDelay(ms: number | null): number {
  if (ms === null) return NO_DELAY_FIGURE;
  return Math.min(NO_DELAY_FIGURE - 1, Math.max(0, Math.round(ms / DELAY_UNIT_MS)));
}

/** The wire's u16 as ms; null for NO_DELAY_FIGURE. */
export function decodeDelay(figure: number): number | null {
  return figure === NO_DELAY_FIGURE ? null : figure * DELAY_UNIT_MS;
}

/** The queueing delay of the peer's datagrams on their way here, from their keepalives. */
export class QueueDelayEstimate {
  /** The latest keepalive's wait in queues, in ms; null: none seen yet. */
  delayMs: number | null = null;
  /** The first sample's raw difference: later ones are taken relative to it (no wrap). */
  #base = -1;
  readonly #mins = new Float64Array(FLOOR_BUCKETS).fill(Infinity);
  #bucket = 0;
  #bucketStart = -Infinity;

  /** A keepalive sent at `stamp` (sendStamp on the peer's clock) came at `nowMs`. */
  sample(stamp: number, nowMs: number): number {
    const raw = (sendStamp(nowMs) - stamp) >>> 0;
    if (this.#base < 0) this.#base = raw;
    // Signed, in ms: the offset of the clocks is in the base.
    const relative = ((raw - this.#base) | 0) / 1000;
    if (nowMs - this.#bucketStart >= FLOOR_BUCKET_MS) {
      this.#bucket = (this.#bucket + 1) % FLOOR_BUCKETS;
      this.#mins[this.#bucket] = Infinity;
      this.#bucketStart = nowMs;
    }
    if (relative < this.#mins[this.#bucket]) this.#mins[this.#bucket] = relative;
    let floor = Infinity;
    for (const m of this.#mins) floor = Math.min(floor, m);
    const delay = relative - floor;
    if (delay > IMPLAUSIBLE_MS) {
      this.reset();
      return this.sample(stamp, nowMs);
    }
    this.delayMs = delay;
    return delay;
  }

  reset(): void {
    this.#base = -1;
    this.#mins.fill(Infinity);
    this.#bucketStart = -Infinity;
    this.delayMs = null;
  }
}

/** CoDel's control law, on the queue delay the peer reports of our datagrams. */
export class PathCodel {
  /** The peer's latest figure of our datagrams' wait, in ms; null: none yet. */
  delayMs: number | null = null;
  /** Frames dropped so far. */
  drops = 0;
  #reportedAt = -Infinity;
  /** When the queue, above the target since, will have been so for an interval (0: below). */
  #firstAbove = 0;
  #dropping = false;
  #dropNext = 0;
  #count = 0;
  #lastCount = 0;
  /** The dropping state just began: its first drop does not raise the count. */
  #entering = false;

  /** Whether frames are being dropped (the caller then asks `drop` per heavy frame). */
  get dropping(): boolean {
    return this.#dropping;
  }

  /** A figure from the peer: our datagrams waited `delayMs` in the path's queues. */
  report(delayMs: number, now: number): void {
    this.delayMs = delayMs;
    this.#reportedAt = now;
    if (delayMs < TARGET_MS) {
      this.#firstAbove = 0;
      this.#dropping = false;
      return;
    }
    if (this.#firstAbove === 0) {
      this.#firstAbove = now + INTERVAL_MS;
      return;
    }
    if (this.#dropping || now < this.#firstAbove) return;
    this.#dropping = true;
    // As RFC 8289: back in the dropping state soon after leaving it, start near the rate that
    // last brought the queue down rather than from one.
    const delta = this.#count - this.#lastCount;
    this.#count = delta > 1 && now - this.#dropNext < 16 * INTERVAL_MS ? delta : 1;
    this.#lastCount = this.#count;
    this.#entering = true;
    this.#dropNext = now;
  }

  /** Whether a heavy frame sent at `now` is to be dropped; counted if so. */
  drop(now: number): boolean {
    if (!this.#dropping) return false;
    if (now - this.#reportedAt > STALE_MS) {
      this.#dropping = false;
      this.#firstAbove = 0;
      return false;
    }
    if (now < this.#dropNext) return false;
    if (this.#entering) this.#entering = false;
    else this.#count++;
    this.drops++;
    this.#dropNext = now + INTERVAL_MS / Math.sqrt(this.#count);
    return true;
  }
}
