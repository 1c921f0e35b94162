/**
 * What a Link has yet to write: frames and control messages, packed into chunks so that one
 * socket write carries a whole burst.
 *
 *   1. `pushFrame` copies the frame, behind 9 bytes of framing, into the current chunk.
 *   2. A full chunk is sealed onto the ready queue. The queue is bounded: past `maxBytes` a
 *      frame is refused (the caller counts the drop), so memory never grows. Control messages
 *      may pass the bound by CONTROL_SLACK_BYTES; past that `pushControl` refuses too, and the
 *      Link hangs up on an end that does not read.
 *   3. The writer loop, started once per burst (after the synchronous capture drain returns),
 *      writes whole chunks, and recycles them through a pool.
 */
import { FRAME_OVERHEAD, putFrame } from "./wire.ts";
import { writeAll, type Writer } from "./stream.ts";

/** One chunk holds at least one maximal frame; chunks are recycled through a pool. */
const CHUNK_BYTES = 512 * 1024;
/** Control messages (replies, pongs) may pass the frame queue bound by this much, no more. */
const CONTROL_SLACK_BYTES = 1024 * 1024;

export class SendQueue {
  #current = new Uint8Array(CHUNK_BYTES);
  #currentView = new DataView(this.#current.buffer);
  #fill = 0;
  #ready: Uint8Array[] = [];
  #readyBytes = 0;
  #pool: Uint8Array<ArrayBuffer>[] = [];
  #writing = false;
  #stopped = false;
  /** When the write in progress started (0: none), to tell a stuck peer. */
  writeStarted = 0;

  constructor(
    private readonly out: Writer,
    private readonly maxBytes: number,
    private readonly onWriteError: (e: unknown) => void,
  ) {}

  /** Bytes waiting (sealed chunks plus the one being filled). */
  get queuedBytes(): number {
    return this.#readyBytes + this.#fill;
  }

  /** Queues one FRAME message; false if the queue is full. */
  pushFrame(handler: number, frame: Uint8Array): boolean {
    if (!this.#makeRoom(frame.length + FRAME_OVERHEAD, false)) return false;
    this.#fill = putFrame(this.#current, this.#currentView, this.#fill, handler, frame);
    this.#scheduleWrite();
    return true;
  }

  /** Queues an encoded control message; false if even the slack is used up. */
  pushControl(message: Uint8Array): boolean {
    if (this.queuedBytes + message.length > this.maxBytes + CONTROL_SLACK_BYTES) return false;
    this.#makeRoom(message.length, true);
    this.#current.set(message, this.#fill);
    this.#fill += message.length;
    this.#scheduleWrite();
    return true;
  }

  /** Writes nothing more. */
  stop(): void {
    this.#stopped = true;
  }

  /** Ensures `size` bytes fit in the current chunk, sealing it if needed. */
  #makeRoom(size: number, force: boolean): boolean {
    if (this.#fill + size <= this.#current.length) return true;
    if (!force && this.queuedBytes > this.maxBytes) return false;
    if (this.#fill > 0) {
      this.#ready.push(this.#current.subarray(0, this.#fill));
      this.#readyBytes += this.#fill;
    }
    const fresh = this.#pool.pop() ?? new Uint8Array(Math.max(CHUNK_BYTES, size));
    this.#current = fresh.length >= size ? fresh : new Uint8Array(size);
    this.#currentView = new DataView(this.#current.buffer);
    this.#fill = 0;
    return true;
  }

  #scheduleWrite(): void {
    if (this.#writing) return;
    this.#writing = true;
    // Start after the current synchronous burst (a capture drain) so one write carries it all.
    queueMicrotask(() => this.#writeLoop());
  }

  async #writeLoop(): Promise<void> {
    try {
      while (!this.#stopped) {
        let chunk: Uint8Array;
        if (this.#ready.length > 0) {
          chunk = this.#ready.shift()!;
          this.#readyBytes -= chunk.length;
        } else if (this.#fill > 0) {
          chunk = this.#current.subarray(0, this.#fill);
          this.#current = this.#pool.pop() ?? new Uint8Array(CHUNK_BYTES);
          this.#currentView = new DataView(this.#current.buffer);
          this.#fill = 0;
        } else {
          break;
        }
        this.writeStarted = Date.now();
        await writeAll(this.out, chunk);
        this.writeStarted = 0;
        if (chunk.buffer.byteLength === CHUNK_BYTES) {
          this.#pool.push(new Uint8Array(chunk.buffer as ArrayBuffer));
        }
      }
    } catch (e) {
      this.onWriteError(e);
    } finally {
      this.#writing = false;
    }
  }
}
