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
 *   3. The writer, started once per burst (after the synchronous capture drain returns),
 *      builds one batch of up to BATCH_BYTES (the control messages, then frames in the flow
 *      queue's order) in one reused buffer and writes it: one socket write still carries a
 *      burst. A frame waits in the flow queue, not in a batch, while the previous write is in
 *      the kernel's hands, so the flow queue sees how long frames wait and drops what waited
 *      too long.
 */
import { FlowQueue, POP_SLACK } from "./flow_queue.ts";
import { FRAME_OVERHEAD, MAX_FRAME } from "./wire.ts";
import { writeAll, type Writer } from "./stream.ts";

/** Control messages (replies, pongs) may pass the frame queue bound by this much, no more. */
const CONTROL_SLACK_BYTES = 1024 * 1024;
/**
 * A batch is written once it holds this much. Each write is an operation of the runtime, so
 * the batch sets the writes per GB: at 64 KB a fast link wrote 8 times as often as with the
 * 512 KB chunks before the flow queue, and lost 25-50% of its throughput with offloads on
 * (bench, A/B in one run). 512 KB costs nothing there, and on a 20 ms WAN with 1% loss a bulk
 * transfer adds 35.9 ms to a ping's p50 (64 KB: 31.3; before the flow queue: 62.8): frames
 * wait in the flow queue, where CoDel sees them, whenever the kernel's buffer is full.
 */
export const BATCH_BYTES = 512 * 1024;

interface SendQueueOptions {
  /** Bound of the frame storage, in bytes. */
  maxBytes: number;
  /** Told of a frame dropped after it was queued: the storage was full, or it waited too long. */
  onDrop: (handler: number, reason: "full" | "aqm") => void;
  onWriteError: (e: unknown) => void;
  /**
   * An owner that writes for itself, synchronously (owned_socket.ts on the data-path worker):
   * told when something waits, it takes `next()` chunks until null. Without it, the queue
   * writes to its Writer with a loop of its own.
   */
  onPending?: () => void;
  /** CoDel's target and interval, in ms (flow_queue.ts). */
  targetMs?: number;
  intervalMs?: number;
}

export class SendQueue {
  #out: Writer | null;
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

  constructor(out: Writer | null, options: SendQueueOptions) {
    this.#out = out;
    this.#options = options;
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

  /** Writes nothing more. */
  stop(): void {
    this.#stopped = true;
  }

  #scheduleWrite(): void {
    if (this.#options.onPending) return this.#options.onPending();
    if (this.#writing) return;
    this.#writing = true;
    // Start after the current synchronous burst (a capture drain) so one write carries it all.
    queueMicrotask(() => this.#writeLoop());
  }

  /**
   * The next thing to write: a batch of control messages and frames, or one control message
   * too big for a batch (or on a link that carries no frames), or null when nothing waits.
   * A batch is a view of a buffer the next call reuses: write it all before asking again.
   */
  next(): Uint8Array | null {
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
    while (fill < BATCH_BYTES) {
      const end = frames.popInto(batch, fill);
      if (end < 0) break;
      fill = end;
    }
    return fill > 0 ? batch.subarray(0, fill) : null;
  }

  async #writeLoop(): Promise<void> {
    try {
      while (!this.#stopped) {
        const chunk = this.next();
        if (!chunk) break;
        this.writeStarted = Date.now();
        await writeAll(this.#out!, chunk);
        this.writeStarted = 0;
      }
    } catch (e) {
      this.#options.onWriteError(e);
    } finally {
      this.#writing = false;
    }
  }
}
