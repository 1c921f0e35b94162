/**
 * What a Link has yet to write: control messages, and frames in a fair queue that keeps itself
 * short (flow_queue.ts), so that a bulk transfer does not make every other flow on the link
 * wait (issue 18).
 *
 *   1. `pushControl` queues a control message (request, response, keepalive). Control messages
 *      jump the queue: each write starts with those waiting. They are bounded by the frame
 *      bound plus CONTROL_SLACK_BYTES; past that `pushControl` refuses, and the Link hangs up
 *      on an end that does not read.
 *   2. `pushFrame` hands the frame to the flow queue, which copies it into its block storage.
 *   3. The writer loop, started once per burst (after the synchronous capture drain returns),
 *      builds one batch of up to BATCH_BYTES (the control messages, then frames in the flow
 *      queue's order) in one reused buffer and writes it: one socket write still carries a
 *      burst. A frame waits in the flow queue, not in a batch, while the previous write is in
 *      the kernel's hands, so the flow queue sees how long frames wait and drops what waited
 *      too long.
 *   4. The kernel's socket buffer is kept short too (a Deno.Conn cannot set TCP_NOTSENT_LOWAT):
 *      the queue puts a probe, a PING carrying its send time and its offset in the stream, in
 *      the batches it writes, and the other end echoes it (every VNET end echoes pings). An
 *      echo proves that everything before that offset has been read by the other end, so
 *      `bytesWritten - acked` bounds what sits in the kernel's buffers and in the network. The
 *      queue keeps that under a window sized like BBR's: the best delivery rate of the last
 *      RATE_PERIODS periods (of two round trips each) times the path's fastest round trip,
 *      times WINDOW_GAIN so that the rate can grow. Rate-based, not delay-based: on a lossy
 *      path a retransmission holds up every echo behind it for a round trip, and a window that
 *      shrank on late echoes would starve the link. What the kernel holds unsent is then about
 *      (WINDOW_GAIN - 1) of a round trip's worth, and the backlog waits in the flow queue,
 *      where it is fair and CoDel sees it, not in the kernel's FIFO.
 */
import { FlowQueue, POP_SLACK } from "./flow_queue.ts";
import { encodeMessage, FRAME_OVERHEAD, MAX_FRAME, MessageType } from "./wire.ts";
import { writeAll, type Writer } from "./stream.ts";

/** Control messages (replies, pongs) may pass the frame queue bound by this much, no more. */
const CONTROL_SLACK_BYTES = 1024 * 1024;
/**
 * A batch is written once it holds this much: big enough that a write carries a burst, small
 * enough that a batch does not itself become a queue (64 KB is 1 ms at 500 Mbit/s).
 */
const BATCH_BYTES = 64 * 1024;

/** The window's bounds and first value, in bytes of written but not yet echoed data. */
const MIN_WINDOW = 64 * 1024;
const FIRST_WINDOW = 512 * 1024;
/** The window over one round trip's worth at the best recent rate: room to grow by a quarter. */
const WINDOW_GAIN = 1.25;
/** Rate samples (one per period of two round trips) the best rate is taken from. */
const RATE_PERIODS = 10;
/** Probes go out at most this often, and at least once per quarter of the round trip. */
const MIN_PROBE_INTERVAL_MS = 2;
/** The path's fastest round trip is remembered this long (two such periods, for continuity). */
const MIN_RTT_PERIOD_MS = 10_000;
/** No echo at all for this long: the other end does not echo probes, the window is lifted. */
const ECHO_TIMEOUT_MS = 5_000;
/** A probe is a PING of 16 bytes: its send time and its stream offset, as float64s. */
const PROBE_PAYLOAD = 16;

interface SendQueueOptions {
  /** Bound of the frame storage, in bytes. */
  maxBytes: number;
  /** Told of a frame dropped after it was queued: the storage was full, or it waited too long. */
  onDrop: (handler: number, reason: "full" | "aqm") => void;
  onWriteError: (e: unknown) => void;
  /**
   * Keep the kernel's buffers short with the echo window (step 4). Off on TLS links: the end
   * that accepted a TLS link cannot turn Nagle's algorithm off (Deno.listenTls gives no
   * setNoDelay), so its echoes come up to a delayed ACK late, and a window sized on the round
   * trip would throttle the link.
   */
  window: boolean;
  /** CoDel's target and interval, in ms (flow_queue.ts). */
  targetMs?: number;
  intervalMs?: number;
}

export class SendQueue {
  #out: Writer;
  #options: SendQueueOptions;
  #control: Uint8Array[] = [];
  #controlBytes = 0;
  /** Made on the first frame: control-only links never pay for it. */
  #frames: FlowQueue | null = null;
  #batch: Uint8Array<ArrayBuffer> | null = null;
  #writing = false;
  #stopped = false;
  /** When the write in progress started (0: none), to tell a stuck peer. */
  writeStarted = 0;
  /** Bytes handed to the kernel so far. */
  bytesWritten = 0;

  // The window over the kernel's buffers (step 4 above).
  /** Stream offset the other end has echoed: everything before it was read. */
  #acked = 0;
  #window = FIRST_WINDOW;
  #windowOn: boolean;
  #probe = encodeMessage(MessageType.Ping, new Uint8Array(PROBE_PAYLOAD));
  #probeView = new DataView(this.#probe.buffer);
  #lastProbe = 0;
  /** Offset of the last probe sent (> #acked while one is out). */
  #probeOffset = 0;
  #minRtt = Infinity;
  #previousMinRtt = Infinity;
  #minRttSince = 0;
  /** The period being measured: when it began and what had been echoed then. */
  #periodStart = 0;
  #periodAcked = 0;
  /** The window held frames back in this period (its rate is what the path can do). */
  #periodLimited = false;
  /** Delivery rates of the last periods, bytes per ms. */
  #rates = new Float64Array(RATE_PERIODS);
  #rateIndex = 0;
  #wake: (() => void) | null = null;

  constructor(out: Writer, options: SendQueueOptions) {
    this.#out = out;
    this.#options = options;
    this.#windowOn = options.window;
  }

  /** Bytes waiting: control messages and queued frames. */
  get queuedBytes(): number {
    return this.#controlBytes + (this.#frames?.bytes ?? 0);
  }

  /** Frames dropped by the flow queue: CoDel (waited too long) and storage full. */
  get drops(): { aqm: number; full: number } {
    return this.#frames?.drops ?? { aqm: 0, full: 0 };
  }

  /** Queues one FRAME message; false if the frame can never fit. */
  pushFrame(handler: number, frame: Uint8Array): boolean {
    this.#frames ??= new FlowQueue({
      maxBytes: this.#options.maxBytes,
      targetMs: this.#options.targetMs,
      intervalMs: this.#options.intervalMs,
      onDrop: this.#options.onDrop,
    });
    if (!this.#frames.push(handler, frame)) return false;
    this.#scheduleWrite();
    return true;
  }

  /** Queues an encoded control message; false if even the slack is used up. */
  pushControl(message: Uint8Array): boolean {
    if (this.#controlBytes + message.length > this.#options.maxBytes + CONTROL_SLACK_BYTES) {
      return false;
    }
    this.#control.push(message);
    this.#controlBytes += message.length;
    this.#scheduleWrite();
    return true;
  }

  /** The window over the kernel's buffers, in bytes (for `list`). */
  get window(): number {
    return this.#windowOn ? this.#window : Infinity;
  }

  /** Writes nothing more. */
  stop(): void {
    this.#stopped = true;
    this.#wake?.();
  }

  /**
   * The other end echoed a probe (a PONG of PROBE_PAYLOAD bytes): it has read everything up to
   * the probe's offset, `now - sent` after it was written.
   */
  echo(payload: Uint8Array): void {
    if (payload.length !== PROBE_PAYLOAD) return;
    const view = new DataView(payload.buffer, payload.byteOffset, PROBE_PAYLOAD);
    const now = performance.now();
    const rtt = now - view.getFloat64(0);
    const offset = view.getFloat64(8);
    if (!(rtt >= 0) || !(offset > this.#acked) || offset > this.bytesWritten) return;
    this.#acked = offset;
    if (now - this.#minRttSince > MIN_RTT_PERIOD_MS) {
      this.#previousMinRtt = this.#minRtt;
      this.#minRtt = Infinity;
      this.#minRttSince = now;
    }
    this.#minRtt = Math.min(this.#minRtt, rtt);
    const base = Math.min(this.#minRtt, this.#previousMinRtt);
    if (this.#periodStart === 0) {
      this.#periodStart = now;
      this.#periodAcked = offset;
    } else if (now - this.#periodStart >= 2 * Math.max(base, 5)) {
      const rate = (offset - this.#periodAcked) / (now - this.#periodStart);
      // A period the window did not limit says only what the sender had, not what the path can
      // do: it counts only if it beats the best.
      let best = 0;
      for (const r of this.#rates) best = Math.max(best, r);
      if (this.#periodLimited || rate > best) {
        this.#rates[this.#rateIndex] = rate;
        this.#rateIndex = (this.#rateIndex + 1) % RATE_PERIODS;
        best = 0;
        for (const r of this.#rates) best = Math.max(best, r);
      }
      this.#window = Math.max(MIN_WINDOW, Math.ceil(WINDOW_GAIN * best * base));
      this.#periodStart = now;
      this.#periodAcked = offset;
      this.#periodLimited = false;
    }
    this.#wake?.();
  }

  /** Whether frames may be written now, or must wait for an echo. */
  #windowOpen(): boolean {
    if (!this.#windowOn || this.bytesWritten - this.#acked < this.#window) return true;
    this.#periodLimited = true;
    return false;
  }

  /** Whether the next batch carries a probe: none out, or the last one a while ago. */
  #probeDue(now: number): boolean {
    if (!this.#windowOn) return false;
    if (this.#probeOffset <= this.#acked) return true;
    const base = Math.min(this.#minRtt, this.#previousMinRtt);
    return now - this.#lastProbe >= Math.max(MIN_PROBE_INTERVAL_MS, base / 4 || 5);
  }

  /** Puts a probe at `fill` in `out`, stamped with its stream offset; returns the new fill. */
  #putProbe(out: Uint8Array, fill: number, now: number): number {
    this.#probeView.setFloat64(5, now);
    // The offset just past the probe: the other end has read it all when it echoes.
    const offset = this.bytesWritten + fill + this.#probe.length;
    this.#probeView.setFloat64(13, offset);
    out.set(this.#probe, fill);
    this.#lastProbe = now;
    this.#probeOffset = offset;
    return fill + this.#probe.length;
  }

  /** Waits for an echo (or a stop); lifts the window if none comes. */
  async #waitForEcho(): Promise<void> {
    let timer: ReturnType<typeof setTimeout> | undefined;
    const echoed = await new Promise<boolean>((resolve) => {
      this.#wake = () => resolve(true);
      timer = setTimeout(() => resolve(false), ECHO_TIMEOUT_MS);
    });
    clearTimeout(timer);
    this.#wake = null;
    if (!echoed) this.#windowOn = false;
  }

  #scheduleWrite(): void {
    if (this.#writing) return;
    this.#writing = true;
    // Start after the current synchronous burst (a capture drain) so one write carries it all.
    queueMicrotask(() => this.#writeLoop());
  }

  /**
   * The next thing to write: a batch of control messages and frames, or one control message
   * too big for a batch (or on a link that carries no frames), or null when nothing waits.
   */
  #next(): Uint8Array | null {
    const frames = this.#frames;
    if (!frames || frames.frames === 0) {
      // No frames: control messages as they are, no batch buffer needed.
      const message = this.#control.shift();
      if (message) this.#controlBytes -= message.length;
      return message ?? null;
    }
    const batch = this.#batch ??= new Uint8Array(
      BATCH_BYTES + MAX_FRAME + FRAME_OVERHEAD + POP_SLACK,
    );
    let fill = 0;
    while (this.#control.length > 0 && fill + this.#control[0].length <= BATCH_BYTES) {
      const message = this.#control.shift()!;
      this.#controlBytes -= message.length;
      batch.set(message, fill);
      fill += message.length;
    }
    if (fill === 0 && this.#control.length > 0) {
      const message = this.#control.shift()!;
      this.#controlBytes -= message.length;
      return message;
    }
    if (this.#windowOpen()) {
      const now = performance.now();
      if (this.#probeDue(now)) fill = this.#putProbe(batch, fill, now);
      while (fill < BATCH_BYTES) {
        const end = frames.popInto(batch, fill);
        if (end < 0) break;
        fill = end;
      }
    } else if (this.#probeOffset <= this.#acked) {
      // Held back with no probe out: send one, or no echo would ever open the window.
      fill = this.#putProbe(batch, fill, performance.now());
    }
    return fill > 0 ? batch.subarray(0, fill) : null;
  }

  async #writeLoop(): Promise<void> {
    try {
      while (!this.#stopped) {
        const chunk = this.#next();
        if (!chunk) {
          // Frames held back by the window wait here for the echo that opens it.
          if ((this.#frames?.frames ?? 0) > 0 && !this.#windowOpen()) {
            await this.#waitForEcho();
            continue;
          }
          break;
        }
        this.writeStarted = Date.now();
        await writeAll(this.#out, chunk);
        this.writeStarted = 0;
        this.bytesWritten += chunk.length;
      }
    } catch (e) {
      this.#options.onWriteError(e);
    } finally {
      this.#writing = false;
    }
  }
}
