/**
 * A bounded ring of frames in a SharedArrayBuffer, one producer thread and one consumer thread:
 * how frames cross between the data-path worker and the main thread, which owns the TLS and
 * ssh links (issue 17), without a `postMessage` per frame.
 *
 * Layout: an Int32Array header and a byte area of a power-of-two size. `head` and `tail` are
 * free-running byte counters (uint32, wrapping); a record at `head % size` is
 *   [u32 length of the whole record][u32 link][u32 handler][frame bytes], padded to 4,
 * and a record that would run past the end is preceded by a SKIP word that sends the reader back
 * to offset 0. The producer publishes with `Atomics.store(head)` after writing; the consumer
 * frees with `Atomics.store(tail)` after its callback returned: a frame is read in place, never
 * copied on the way out.
 *
 * Wake-ups: a consumer that found the ring empty goes to sleep (in poll, or Atomics.waitAsync).
 * `push` returns whether the consumer may have missed it: true when, after publishing, the tail
 * it sees equals the head before the push (everything older was consumed). `drain` re-reads the
 * head after freeing, so of the two threads one always sees the other: no wake-up is lost, and
 * a busy consumer is not woken per frame.
 */

const HEAD = 0;
const TAIL = 1;
/** Bumped by the producer when the consumer is to wake (Atomics.waitAsync waits on it). */
const SIGNAL = 2;
const HEADER_INTS = 4;
const RECORD_HEADER = 12;
const SKIP = 0xffffffff;

export class FrameRing {
  readonly buffer: SharedArrayBuffer;
  readonly #header: Int32Array;
  readonly #bytes: Uint8Array;
  readonly #view: DataView;
  readonly #size: number;
  readonly #mask: number;

  /** A ring of `size` bytes (a power of two); or the ring another thread made, from its buffer. */
  constructor(source: number | SharedArrayBuffer) {
    this.buffer = typeof source === "number"
      ? new SharedArrayBuffer(HEADER_INTS * 4 + source)
      : source;
    this.#size = this.buffer.byteLength - HEADER_INTS * 4;
    if (this.#size <= 0 || (this.#size & (this.#size - 1)) !== 0) {
      throw new RangeError(`frame ring size ${this.#size} is not a power of two`);
    }
    this.#mask = this.#size - 1;
    this.#header = new Int32Array(this.buffer, 0, HEADER_INTS);
    this.#bytes = new Uint8Array(this.buffer, HEADER_INTS * 4);
    this.#view = new DataView(this.buffer, HEADER_INTS * 4);
  }

  /** The largest frame a push can ever take. */
  get maxFrame(): number {
    return (this.#size >>> 1) - RECORD_HEADER;
  }

  /**
   * Copies one frame in. Returns "full" when there is no room (the frame is dropped, and
   * counted by the caller), "wake" when the consumer may be asleep and must be woken, "queued"
   * otherwise.
   */
  push(link: number, handler: number, frame: Uint8Array): "queued" | "wake" | "full" {
    const length = RECORD_HEADER + frame.length;
    const need = (length + 3) & ~3;
    if (length > this.maxFrame + RECORD_HEADER) return "full";
    const head = Atomics.load(this.#header, HEAD) >>> 0;
    const tail = Atomics.load(this.#header, TAIL) >>> 0;
    const used = (head - tail) >>> 0;
    let at = head & this.#mask;
    const skip = at + need > this.#size ? this.#size - at : 0;
    if (used + skip + need > this.#size) return "full";
    if (skip > 0) {
      this.#view.setUint32(at, SKIP, true);
      at = 0;
    }
    this.#view.setUint32(at, length, true);
    this.#view.setUint32(at + 4, link, true);
    this.#view.setUint32(at + 8, handler, true);
    this.#bytes.set(frame, at + RECORD_HEADER);
    Atomics.store(this.#header, HEAD, (head + skip + need) | 0);
    return (Atomics.load(this.#header, TAIL) >>> 0) === head ? "wake" : "queued";
  }

  /**
   * Hands each queued frame to `onFrame` (a view into the ring, valid during the call), at most
   * `max` of them; returns how many.
   */
  drain(
    onFrame: (link: number, handler: number, frame: Uint8Array) => void,
    max = Infinity,
  ): number {
    let count = 0;
    let tail = Atomics.load(this.#header, TAIL) >>> 0;
    for (;;) {
      const head = Atomics.load(this.#header, HEAD) >>> 0;
      if (head === tail || count >= max) return count;
      while (tail !== head && count < max) {
        let at = tail & this.#mask;
        let length = this.#view.getUint32(at, true);
        if (length === SKIP) {
          tail = (tail + this.#size - at) >>> 0;
          at = 0;
          length = this.#view.getUint32(0, true);
        }
        onFrame(
          this.#view.getUint32(at + 4, true),
          this.#view.getUint32(at + 8, true),
          this.#bytes.subarray(at + RECORD_HEADER, at + length),
        );
        count++;
        tail = (tail + ((length + 3) & ~3)) >>> 0;
        Atomics.store(this.#header, TAIL, tail | 0);
      }
    }
  }

  /** Whether nothing is queued. */
  get empty(): boolean {
    return Atomics.load(this.#header, HEAD) === Atomics.load(this.#header, TAIL);
  }

  /** Producer: wakes a consumer that waits in `waitAsync`. */
  signal(): void {
    Atomics.add(this.#header, SIGNAL, 1);
    Atomics.notify(this.#header, SIGNAL);
  }

  /**
   * Consumer: resolves once `signal` was called after `seen` (the value `signalSeen` returned
   * before the last drain), at once if it already was.
   */
  waitSignal(seen: number): Promise<unknown> {
    const wait = Atomics.waitAsync(this.#header, SIGNAL, seen);
    return wait.async ? wait.value : Promise.resolve();
  }

  /** Consumer: the signal count to wait past, read before draining. */
  signalSeen(): number {
    return Atomics.load(this.#header, SIGNAL);
  }
}
