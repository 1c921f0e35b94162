/**
 * The anti-replay window of one receive key, after RFC 6479: a ring of 32-bit words holding one
 * bit per counter, and the highest counter accepted so far.
 *
 * A counter is acceptable if it is above the highest, or at most `size - 1` below it and not yet
 * seen. Moving the highest up clears only the words it moves past (all of them at most), never
 * bit by bit, so a jump costs at most one pass over the ring and an in-order packet almost
 * nothing. One word of the ring is always the partly filled newest one, so the window is
 * `bits - 32` counters wide (8160 by default: WireGuard's choice; at 1 Mpps that is 8 ms of
 * reordering).
 *
 * Checking and recording are separate on purpose: `check` before the AEAD, so that a replay
 * costs no cryptography, and `accept` after it, so that a forged datagram can never move the
 * window (a forged counter far ahead would otherwise make every genuine packet "too old").
 */

/** What `check` says of a counter. */
export const ReplayVerdict = {
  /** Not seen, and inside the window or ahead of it. */
  fresh: 0,
  /** Below the window: too old to tell, so refused. */
  tooOld: 1,
  /** Already accepted once. */
  replayed: 2,
} as const;
export type ReplayVerdict = typeof ReplayVerdict[keyof typeof ReplayVerdict];

const WORD_BITS = 32;

export class ReplayWindow {
  readonly #words: Uint32Array;
  readonly #mask: number;
  /** How many counters, ending at the highest, the window remembers. */
  readonly size: number;
  #highest = -1;

  /**
   * `bits`: the ring's size, a power of two of at least 64. The window covers `bits - 32`
   * counters.
   */
  constructor(bits = 8192) {
    if (!Number.isInteger(bits) || bits < 64 || (bits & (bits - 1)) !== 0) {
      throw new RangeError(`a replay window is a power of two of at least 64 bits, not ${bits}`);
    }
    this.#words = new Uint32Array(bits / WORD_BITS);
    this.#mask = this.#words.length - 1;
    this.size = bits - WORD_BITS;
  }

  /** The highest counter accepted, or -1 before the first. */
  get highest(): number {
    return this.#highest;
  }

  /**
   * Whether `counter` (an integer from 0 to 2^53 - 1) may be accepted; changes nothing.
   */
  check(counter: number): ReplayVerdict {
    if (counter > this.#highest) return ReplayVerdict.fresh;
    if (this.#highest - counter >= this.size) return ReplayVerdict.tooOld;
    // `& mask` and `& 31` act on the low 32 bits, which is exact for any safe integer here:
    // both moduli divide 2^32.
    const word = this.#words[Math.floor(counter / WORD_BITS) & this.#mask];
    return (word >>> (counter & 31)) & 1 ? ReplayVerdict.replayed : ReplayVerdict.fresh;
  }

  /**
   * Records `counter` as seen (call only once its datagram is authenticated). False, changing
   * nothing, if `check` would not say `fresh`.
   */
  accept(counter: number): boolean {
    if (counter > this.#highest) {
      const index = Math.floor(counter / WORD_BITS);
      const current = Math.floor(this.#highest / WORD_BITS); // -1 before the first counter
      const advance = Math.min(index - current, this.#words.length);
      for (let i = 1; i <= advance; i++) this.#words[(current + i) & this.#mask] = 0;
      this.#highest = counter;
    } else if (this.#highest - counter >= this.size) {
      return false;
    }
    const at = Math.floor(counter / WORD_BITS) & this.#mask;
    const bit = 1 << (counter & 31);
    if (this.#words[at] & bit) return false;
    this.#words[at] |= bit;
    return true;
  }
}
