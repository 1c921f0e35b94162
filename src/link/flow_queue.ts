/**
 * The frames a link has yet to write, kept short and fair in the spirit of fq_codel (RFC 8290),
 * so that a ping or an SSH keystroke does not wait behind a bulk transfer (issue 18):
 *
 *   - Flows: each frame goes to one of FLOWS queues, by a keyed hash of its handler and its
 *     inner addresses and ports (Ethernet; IPv4/IPv6; TCP/UDP/SCTP/UDP-Lite ports).
 *   - Deficit round robin between the flows with a backlog, a quantum of one MTU-sized frame a
 *     turn. A flow that was idle starts on the "new" list, served before the "old" one: sparse
 *     flows (pings, DNS, keystrokes) go out ahead of any bulk backlog.
 *   - CoDel in each flow: a frame that waited longer than `targetMs`, when the flow's frames have
 *     waited that long for a whole `intervalMs`, is dropped at dequeue, then more often (the
 *     interval over the square root of the drop count) until the wait falls below the target.
 *     The flow's TCP sees the loss and slows down; nothing else waits behind it.
 *   - A hard bound: when the storage is full, frames are dropped from the head of the flow with
 *     the largest backlog (the one causing it): up to 64 frames or half of its backlog.
 *
 * Storage without allocation per frame: frames (as FRAME messages, framing included, ready to
 * write) live in 2 KB blocks from a pool that grows in 128 KB segments up to the bound and is
 * then reused; a frame takes a chain of blocks. The per-block and per-flow state are typed
 * arrays, made on the first frame (control-only links never pay for them).
 */
import { FRAME_OVERHEAD, frameHandler, MessageType } from "./wire.ts";

const BLOCK_SHIFT = 11;
const BLOCK = 1 << BLOCK_SHIFT;
const SEGMENT_BLOCKS = 64;
/** Flow queues (a power of two); collisions only share a queue, like fq_codel's 1024. */
const FLOWS = 256;
/** The DRR quantum: one full-size Ethernet frame with its framing. */
const QUANTUM = 1514 + FRAME_OVERHEAD;
const NONE = -1;
/** Frames one overflow drops at most from the fattest flow (beyond the room it needs). */
const DROP_BATCH = 64;
/** Tails shorter than this are copied byte by byte rather than as a whole block. */
const SHORT_COPY = 256;

const LIST_NONE = 0;
const LIST_NEW = 1;
const LIST_OLD = 2;

/** Room `popInto` may write past the message it returns. */
export const POP_SLACK = BLOCK;

type DropReason = "full" | "aqm";

interface FlowQueueOptions {
  /** Storage bound in bytes (rounded up to whole 2 KB blocks). */
  maxBytes: number;
  /** CoDel target: the standing queue delay a flow may keep, in ms. */
  targetMs?: number;
  /** CoDel interval: how long above the target before the first drop, in ms. */
  intervalMs?: number;
  /** The clock, in ms (tests drive their own). */
  now?: () => number;
  /** Told of every frame dropped after it was queued, with its handler number. */
  onDrop?: (handler: number, reason: DropReason) => void;
}

export class FlowQueue {
  readonly targetMs: number;
  readonly intervalMs: number;
  /** Frames dropped by CoDel (they waited too long) and because the storage was full. */
  readonly drops = { aqm: 0, full: 0 };

  #maxBlocks: number;
  #now: () => number;
  #onDrop: (handler: number, reason: DropReason) => void;
  #seed = crypto.getRandomValues(new Uint32Array(1))[0];

  // Block storage (made on the first push).
  #segments: Uint8Array[] = [];
  /** A view of each block, made once, so copying a block out allocates nothing. */
  #views: Uint8Array[] = [];
  #free = new Int32Array(0);
  #freeCount = 0;
  #blockNext = new Int32Array(0);
  // Per frame, indexed by its first block.
  #frameNext = new Int32Array(0);
  #frameLength = new Int32Array(0);
  #frameTime = new Float64Array(0);

  // Per flow.
  #head = new Int32Array(FLOWS).fill(NONE);
  #tail = new Int32Array(FLOWS).fill(NONE);
  #flowBytes = new Int32Array(FLOWS);
  #deficit = new Int32Array(FLOWS);
  #listNext = new Int32Array(FLOWS).fill(NONE);
  #inList = new Uint8Array(FLOWS);
  #count = new Int32Array(FLOWS);
  #lastCount = new Int32Array(FLOWS);
  #dropping = new Uint8Array(FLOWS);
  #firstAbove = new Float64Array(FLOWS);
  #dropNext = new Float64Array(FLOWS);

  // The new and old flow lists (linked through #listNext).
  #newHead = NONE;
  #newTail = NONE;
  #oldHead = NONE;
  #oldTail = NONE;

  #bytes = 0;
  #frames = 0;
  /** The largest frame message seen: a flow with no more than that queued is never dropped. */
  #largest = QUANTUM;

  constructor(options: FlowQueueOptions) {
    this.#maxBlocks = Math.max(SEGMENT_BLOCKS, Math.ceil(options.maxBytes / BLOCK));
    this.targetMs = options.targetMs ?? 5;
    this.intervalMs = options.intervalMs ?? 100;
    this.#now = options.now ?? (() => performance.now());
    this.#onDrop = options.onDrop ?? (() => {});
  }

  /** Bytes of the queued frame messages. */
  get bytes(): number {
    return this.#bytes;
  }

  get frames(): number {
    return this.#frames;
  }

  /** Bytes of storage made so far (it grows up to the bound and stays). */
  get storageBytes(): number {
    return this.#segments.length * SEGMENT_BLOCKS * BLOCK;
  }

  /**
   * Queues one frame for `handler` as a FRAME message. False only if the frame alone is larger
   * than the whole bound; otherwise room is made by dropping from the fattest flow.
   */
  push(handler: number, frame: Uint8Array): boolean {
    const length = frame.length + FRAME_OVERHEAD;
    const blocks = (length + BLOCK - 1) >> BLOCK_SHIFT;
    if (blocks > this.#maxBlocks) return false;
    if (this.#blockNext.length === 0) this.#init();
    while (this.#freeCount < blocks) {
      if (!this.#grow()) this.#dropFattest(blocks);
    }
    const flow = this.#flowOf(handler, frame);
    // Take the blocks and copy the message in, framing first.
    const first = this.#free[--this.#freeCount];
    let block = first;
    let seg = this.#segments[block >> 6];
    let at = (block & 63) << BLOCK_SHIFT;
    seg[at] = (frame.length + 5) >>> 24;
    seg[at + 1] = (frame.length + 5) >>> 16;
    seg[at + 2] = (frame.length + 5) >>> 8;
    seg[at + 3] = frame.length + 5;
    seg[at + 4] = MessageType.Frame;
    seg[at + 5] = handler >>> 24;
    seg[at + 6] = handler >>> 16;
    seg[at + 7] = handler >>> 8;
    seg[at + 8] = handler;
    let copied = Math.min(frame.length, BLOCK - FRAME_OVERHEAD);
    // The usual frame fits its first block: copied without making a view.
    seg.set(copied === frame.length ? frame : frame.subarray(0, copied), at + FRAME_OVERHEAD);
    while (copied < frame.length) {
      const next = this.#free[--this.#freeCount];
      this.#blockNext[block] = next;
      block = next;
      seg = this.#segments[block >> 6];
      at = (block & 63) << BLOCK_SHIFT;
      const n = Math.min(frame.length - copied, BLOCK);
      seg.set(frame.subarray(copied, copied + n), at);
      copied += n;
    }
    this.#blockNext[block] = NONE;
    this.#frameLength[first] = length;
    this.#frameTime[first] = this.#now();
    this.#frameNext[first] = NONE;
    if (this.#tail[flow] === NONE) this.#head[flow] = first;
    else this.#frameNext[this.#tail[flow]] = first;
    this.#tail[flow] = first;
    this.#flowBytes[flow] += length;
    this.#bytes += length;
    this.#frames++;
    if (length > this.#largest) this.#largest = length;
    if (this.#inList[flow] === LIST_NONE) {
      // A flow that had nothing queued is sparse until it has used its quantum.
      this.#deficit[flow] = QUANTUM;
      this.#append(flow, LIST_NEW);
    }
    return true;
  }

  /**
   * Copies the next frame message to send into `out` at `offset` and returns the offset after
   * it, or -1 if nothing is queued. The caller leaves room for the largest message plus
   * POP_SLACK: whole blocks are copied, so up to a block past the message may be overwritten.
   */
  popInto(out: Uint8Array, offset: number): number {
    for (;;) {
      const fromNew = this.#newHead !== NONE;
      const flow = fromNew ? this.#newHead : this.#oldHead;
      if (flow === NONE) return -1;
      if (this.#deficit[flow] <= 0) {
        // Used its turn: to the back of the old flows with a fresh quantum.
        this.#deficit[flow] += QUANTUM;
        this.#unlinkHead(fromNew);
        this.#append(flow, LIST_OLD);
        continue;
      }
      const frame = this.#codelDequeue(flow);
      if (frame === NONE) {
        // Emptied. A new flow goes to the old list once (so it cannot come back as new at
        // once and starve the old ones); an old flow leaves the lists.
        this.#unlinkHead(fromNew);
        if (fromNew && this.#oldHead !== NONE) this.#append(flow, LIST_OLD);
        else this.#inList[flow] = LIST_NONE;
        continue;
      }
      const length = this.#frameLength[frame];
      this.#deficit[flow] -= length;
      this.#copyOut(frame, out, offset);
      this.#release(frame);
      return offset + length;
    }
  }

  // --- CoDel (RFC 8289, as fq_codel runs it per flow) --------------------------------------

  /** Takes the flow's head frame off, or NONE; says whether CoDel may drop it. */
  #okToDrop = false;

  #takeHead(flow: number, now: number): number {
    const frame = this.#head[flow];
    if (frame === NONE) {
      this.#firstAbove[flow] = 0;
      this.#okToDrop = false;
      return NONE;
    }
    this.#head[flow] = this.#frameNext[frame];
    if (this.#head[flow] === NONE) this.#tail[flow] = NONE;
    const length = this.#frameLength[frame];
    this.#flowBytes[flow] -= length;
    this.#bytes -= length;
    this.#frames--;
    const sojourn = now - this.#frameTime[frame];
    this.#okToDrop = false;
    if (sojourn < this.targetMs || this.#flowBytes[flow] <= this.#largest) {
      this.#firstAbove[flow] = 0;
    } else if (this.#firstAbove[flow] === 0) {
      this.#firstAbove[flow] = now + this.intervalMs;
    } else if (now >= this.#firstAbove[flow]) {
      this.#okToDrop = true;
    }
    return frame;
  }

  #controlLaw(t: number, count: number): number {
    return t + this.intervalMs / Math.sqrt(count);
  }

  #codelDequeue(flow: number): number {
    const now = this.#now();
    let frame = this.#takeHead(flow, now);
    if (this.#dropping[flow]) {
      if (!this.#okToDrop) {
        this.#dropping[flow] = 0;
      } else {
        while (now >= this.#dropNext[flow] && this.#dropping[flow]) {
          this.#dropAqm(frame);
          this.#count[flow]++;
          frame = this.#takeHead(flow, now);
          if (!this.#okToDrop) this.#dropping[flow] = 0;
          else this.#dropNext[flow] = this.#controlLaw(this.#dropNext[flow], this.#count[flow]);
        }
      }
    } else if (this.#okToDrop) {
      this.#dropAqm(frame);
      frame = this.#takeHead(flow, now);
      this.#dropping[flow] = 1;
      // Drop about as often as when last in the dropping state, if that was lately.
      const delta = this.#count[flow] - this.#lastCount[flow];
      this.#count[flow] = delta > 1 && now - this.#dropNext[flow] < 16 * this.intervalMs
        ? delta
        : 1;
      this.#dropNext[flow] = this.#controlLaw(now, this.#count[flow]);
      this.#lastCount[flow] = this.#count[flow];
    }
    return frame;
  }

  #dropAqm(frame: number): void {
    this.drops.aqm++;
    const handler = this.#handlerOf(frame);
    this.#release(frame);
    this.#onDrop(handler, "aqm");
  }

  // --- the hard bound ----------------------------------------------------------------------

  /**
   * Drops head frames of the flow with the largest backlog: enough for `blocks`, and then on to
   * half of its backlog but at most DROP_BATCH frames (as fq_codel does), so that the next
   * frames find room without a scan each, and the flow loses no more than a burst.
   */
  #dropFattest(blocks: number): void {
    let fattest = 0;
    for (let f = 1; f < FLOWS; f++) {
      if (this.#flowBytes[f] > this.#flowBytes[fattest]) fattest = f;
    }
    const goal = this.#flowBytes[fattest] >> 1;
    let dropped = 0;
    let frames = 0;
    while (
      this.#head[fattest] !== NONE &&
      (this.#freeCount < blocks || (dropped < goal && frames < DROP_BATCH))
    ) {
      frames++;
      const frame = this.#head[fattest];
      this.#head[fattest] = this.#frameNext[frame];
      if (this.#head[fattest] === NONE) this.#tail[fattest] = NONE;
      const length = this.#frameLength[frame];
      this.#flowBytes[fattest] -= length;
      this.#bytes -= length;
      this.#frames--;
      dropped += length;
      this.drops.full++;
      const handler = this.#handlerOf(frame);
      this.#release(frame);
      this.#onDrop(handler, "full");
    }
  }

  // --- storage -----------------------------------------------------------------------------

  #init(): void {
    const n = this.#maxBlocks;
    this.#free = new Int32Array(n);
    this.#blockNext = new Int32Array(n);
    this.#frameNext = new Int32Array(n);
    this.#frameLength = new Int32Array(n);
    this.#frameTime = new Float64Array(n);
  }

  /** Adds a segment of blocks to the pool; false when the bound is reached. */
  #grow(): boolean {
    const first = this.#segments.length * SEGMENT_BLOCKS;
    if (first >= this.#maxBlocks) return false;
    const segment = new Uint8Array(SEGMENT_BLOCKS * BLOCK);
    this.#segments.push(segment);
    for (let i = 0; i < SEGMENT_BLOCKS; i++) {
      this.#views.push(segment.subarray(i << BLOCK_SHIFT, (i + 1) << BLOCK_SHIFT));
    }
    const last = Math.min(first + SEGMENT_BLOCKS, this.#maxBlocks);
    for (let b = last - 1; b >= first; b--) this.#free[this.#freeCount++] = b;
    return true;
  }

  #release(frame: number): void {
    for (let b = frame; b !== NONE; b = this.#blockNext[b]) this.#free[this.#freeCount++] = b;
  }

  #handlerOf(frame: number): number {
    return frameHandler(this.#segments[frame >> 6], (frame & 63) << BLOCK_SHIFT);
  }

  /**
   * Copies the message out, whole blocks at a time (`out` has room for the message rounded up
   * to a block: POP_SLACK); a short tail byte by byte, so a small frame does not cost a block.
   */
  #copyOut(frame: number, out: Uint8Array, offset: number): void {
    let left = this.#frameLength[frame];
    for (let b = frame; b !== NONE; b = this.#blockNext[b]) {
      if (left < SHORT_COPY) {
        const block = this.#views[b];
        for (let i = 0; i < left; i++) out[offset + i] = block[i];
        return;
      }
      out.set(this.#views[b], offset);
      offset += BLOCK;
      left -= BLOCK;
    }
  }

  // --- flow lists --------------------------------------------------------------------------

  #append(flow: number, list: number): void {
    this.#inList[flow] = list;
    this.#listNext[flow] = NONE;
    if (list === LIST_NEW) {
      if (this.#newTail === NONE) this.#newHead = flow;
      else this.#listNext[this.#newTail] = flow;
      this.#newTail = flow;
    } else {
      if (this.#oldTail === NONE) this.#oldHead = flow;
      else this.#listNext[this.#oldTail] = flow;
      this.#oldTail = flow;
    }
  }

  #unlinkHead(fromNew: boolean): void {
    if (fromNew) {
      this.#newHead = this.#listNext[this.#newHead];
      if (this.#newHead === NONE) this.#newTail = NONE;
    } else {
      this.#oldHead = this.#listNext[this.#oldHead];
      if (this.#oldHead === NONE) this.#oldTail = NONE;
    }
  }

  // --- the flow hash -----------------------------------------------------------------------

  /**
   * FNV-1a over the handler, the Ethernet addresses and type, and for IPv4/IPv6 the addresses,
   * the protocol and (TCP, UDP, SCTP, UDP-Lite, first fragments only) the ports; keyed with a
   * random seed per queue so that no one can aim two flows at one queue.
   */
  #flowOf(handler: number, f: Uint8Array): number {
    let h = (0x811c9dc5 ^ this.#seed) >>> 0;
    h = fnv(
      fnv(fnv(fnv(h, handler & 0xff), (handler >>> 8) & 0xff), (handler >>> 16) & 0xff),
      handler >>> 24,
    );
    const n = f.length;
    const header = Math.min(n, 14);
    for (let i = 0; i < header; i++) h = fnv(h, f[i]);
    if (n < 14) return (h >>> 0) & (FLOWS - 1);
    const type = (f[12] << 8) | f[13];
    let proto = -1;
    let l4 = 0;
    if (type === 0x0800 && n >= 34) {
      for (let i = 26; i < 34; i++) h = fnv(h, f[i]); // source and destination addresses
      proto = f[23];
      const fragmentOffset = ((f[20] & 0x1f) << 8) | f[21];
      l4 = fragmentOffset === 0 ? 14 + (f[14] & 0x0f) * 4 : 0;
    } else if (type === 0x86dd && n >= 54) {
      for (let i = 22; i < 54; i++) h = fnv(h, f[i]);
      proto = f[20];
      l4 = 54;
    }
    h = fnv(h, proto & 0xff);
    const ported = proto === 6 || proto === 17 || proto === 132 || proto === 136;
    if (ported && l4 > 0 && n >= l4 + 4) {
      for (let i = l4; i < l4 + 4; i++) h = fnv(h, f[i]);
    }
    return (h >>> 0) & (FLOWS - 1);
  }
}

/** One step of FNV-1a (32 bits). */
function fnv(h: number, byte: number): number {
  return Math.imul(h ^ byte, 0x01000193);
}
