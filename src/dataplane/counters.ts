/**
 * A handler's counters, in a slot of a shared Float64Array: the data-path worker counts, the
 * main thread reads (`list`, metrics, the status page) without asking the worker (issue 17).
 *
 * Each number has one writer: the worker counts everything it sees; the frames the main thread
 * drops from a TLS or ssh link's send queue (after the worker handed them over) are counted in
 * the slot's MAIN_* fields, by the main thread only. Readers add the two. Float64 holds exact
 * integers to 2^53, and a torn read cannot happen for an aligned 8-byte element on the
 * platforms Deno runs on.
 */

/** Field offsets in a slot. */
export const Counter = {
  toPeerFrames: 0,
  toPeerBytes: 1,
  toPeerDrops: 2,
  fromPeerFrames: 3,
  fromPeerBytes: 4,
  fromPeerDrops: 5,
  dropLink: 6,
  dropAqm: 7,
  dropTruncated: 8,
  dropOffload: 9,
  dropInject: 10,
  dropForeignMac: 11,
  dropLoop: 12,
  switchedFrames: 13,
  switchedBytes: 14,
  macConflicts: 15,
  /** Counted by the main thread: frames its send queue dropped (full, or AQM). */
  mainDropLink: 16,
  mainDropAqm: 17,
  /**
   * Frames this handler sent and received through a link socket the data-path worker owns
   * (owned_socket.ts): proof that a plain link's frames never touched the main thread.
   */
  ownSocketOut: 18,
  ownSocketIn: 19,
} as const;

/** Float64 elements per handler. */
export const SLOT_SIZE = 24;
/** Handlers a server holds at most: the slots of one counter table. */
export const MAX_HANDLERS = 4096;

/** The counters of every handler, shared between the worker and the main thread. */
export function counterTable(buffer?: SharedArrayBuffer): Float64Array {
  return new Float64Array(
    buffer ?? new SharedArrayBuffer(MAX_HANDLERS * SLOT_SIZE * Float64Array.BYTES_PER_ELEMENT),
  );
}

/** Frames, bytes and drops of one direction, read and written through a slot. */
export class DirectionCounters {
  constructor(private readonly table: Float64Array, private readonly at: number) {}
  get frames(): number {
    return this.table[this.at];
  }
  set frames(n: number) {
    this.table[this.at] = n;
  }
  get bytes(): number {
    return this.table[this.at + 1];
  }
  set bytes(n: number) {
    this.table[this.at + 1] = n;
  }
  get drops(): number {
    return this.table[this.at + 2];
  }
  set drops(n: number) {
    this.table[this.at + 2] = n;
  }
}

/** Why frames were dropped, for `list` and metrics. */
interface DropCounters {
  /** Link down or its send queue full. */
  link: number;
  /**
   * Queued for the peer but dropped by the link's AQM: it waited in the send queue longer than
   * the target for too long (the flow sends faster than the link carries it).
   */
  aqm: number;
  /** Captured frame longer than the snap length. */
  truncated: number;
  /** Too large for the far interface and not segmentable, or malformed. */
  offload: number;
  /** The system refused to inject it. */
  inject: number;
  /**
   * From the peer, but not this end's to inject: at a Proxy, a source that is not one of the
   * handler's MACs; at a Host, a destination that is not one of them (nor broadcast, nor
   * multicast with multicast on).
   */
  foreignMac: number;
  /**
   * A loop: a Host's own frame come back, a broadcast seen twice, a Host's broadcast come back
   * over the LAN to another device of its Proxy (fabric.ts).
   */
  loop: number;
}

/** One handler's slot, as the worker counts into it. */
export class HandlerCounters {
  readonly toPeer: DirectionCounters;
  readonly fromPeer: DirectionCounters;
  readonly #table: Float64Array;
  readonly #at: number;

  constructor(table: Float64Array, slot: number) {
    this.#table = table;
    this.#at = slot * SLOT_SIZE;
    table.fill(0, this.#at, this.#at + SLOT_SIZE);
    this.toPeer = new DirectionCounters(table, this.#at + Counter.toPeerFrames);
    this.fromPeer = new DirectionCounters(table, this.#at + Counter.fromPeerFrames);
  }

  /** Adds one to a field of the slot. */
  add(field: number, n = 1): void {
    this.#table[this.#at + field] += n;
  }
}

/** What `list` shows of a slot (both writers' numbers added). */
export interface CounterSnapshot {
  toPeer: { frames: number; bytes: number; drops: number };
  fromPeer: { frames: number; bytes: number; drops: number };
  dropReasons: DropCounters;
  switched: { frames: number; bytes: number };
  macConflicts: number;
  /** Frames carried by a link socket of the data-path worker's own, each way (see Counter). */
  dataPathSocket: { out: number; in: number };
}

export function readCounters(table: Float64Array, slot: number): CounterSnapshot {
  const c = (field: number) => table[slot * SLOT_SIZE + field];
  const mainDrops = c(Counter.mainDropLink) + c(Counter.mainDropAqm);
  return {
    toPeer: {
      frames: c(Counter.toPeerFrames),
      bytes: c(Counter.toPeerBytes),
      drops: c(Counter.toPeerDrops) + mainDrops,
    },
    fromPeer: {
      frames: c(Counter.fromPeerFrames),
      bytes: c(Counter.fromPeerBytes),
      drops: c(Counter.fromPeerDrops),
    },
    dropReasons: {
      link: c(Counter.dropLink) + c(Counter.mainDropLink),
      aqm: c(Counter.dropAqm) + c(Counter.mainDropAqm),
      truncated: c(Counter.dropTruncated),
      offload: c(Counter.dropOffload),
      inject: c(Counter.dropInject),
      foreignMac: c(Counter.dropForeignMac),
      loop: c(Counter.dropLoop),
    },
    switched: { frames: c(Counter.switchedFrames), bytes: c(Counter.switchedBytes) },
    macConflicts: c(Counter.macConflicts),
    dataPathSocket: { out: c(Counter.ownSocketOut), in: c(Counter.ownSocketIn) },
  };
}
