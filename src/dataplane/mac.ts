/** Ethernet (MAC) addresses: parsing and classification. */
import { VnetError } from "../errors.ts";

export const BROADCAST = "ff:ff:ff:ff:ff:ff";

/**
 * Parses `02:00:00:aa:bb:cc` (also with `-` separators, any case) into the canonical
 * lowercase colon form. Throws a VnetError naming the bad input.
 */
export function parseMac(text: string): string {
  const m =
    /^([0-9a-f]{1,2})([:-])([0-9a-f]{1,2})\2([0-9a-f]{1,2})\2([0-9a-f]{1,2})\2([0-9a-f]{1,2})\2([0-9a-f]{1,2})$/i
      .exec(text.trim());
  if (!m) {
    throw new VnetError(
      `bad MAC address '${text}': expected six hex bytes like 02:00:00:aa:bb:cc`,
    );
  }
  return [m[1], m[3], m[4], m[5], m[6], m[7]].map((b) => b.padStart(2, "0").toLowerCase()).join(
    ":",
  );
}

export function macBytes(mac: string): Uint8Array {
  return new Uint8Array(parseMac(mac).split(":").map((b) => parseInt(b, 16)));
}

export function isMulticast(mac: string): boolean {
  return (parseInt(parseMac(mac).slice(0, 2), 16) & 1) === 1;
}

/**
 * A set of MACs to look frame bytes up in, on the packet path: no string, no allocation. A MAC
 * is two 24-bit halves (small integers, unboxed): the low half keys a map, the high half is
 * compared.
 */
export class MacSet {
  readonly #highsByLow = new Map<number, number[]>();

  constructor(macs: readonly string[]) {
    for (const mac of macs) {
      const b = macBytes(mac);
      const low = (b[3] << 16) | (b[4] << 8) | b[5];
      const highs = this.#highsByLow.get(low) ?? [];
      highs.push((b[0] << 16) | (b[1] << 8) | b[2]);
      this.#highsByLow.set(low, highs);
    }
  }

  /** Whether the six bytes of `frame` at `at` (0: destination, 6: source) are in the set. */
  has(frame: Uint8Array, at: number): boolean {
    const highs = this.#highsByLow.get(
      (frame[at + 3] << 16) | (frame[at + 4] << 8) | frame[at + 5],
    );
    if (highs === undefined) return false;
    const high = (frame[at] << 16) | (frame[at + 1] << 8) | frame[at + 2];
    for (let i = 0; i < highs.length; i++) if (highs[i] === high) return true;
    return false;
  }
}

/** The MAC at `at` in `bytes` as one number (48 bits fit a double exactly). */
export function mac48(bytes: Uint8Array, at: number): number {
  return (bytes[at] * 0x10000 + ((bytes[at + 1] << 8) | bytes[at + 2])) * 0x1000000 +
    ((bytes[at + 3] << 16) | (bytes[at + 4] << 8) | bytes[at + 5]);
}

/** Whether the destination of `frame` is ff:ff:ff:ff:ff:ff. */
export function isBroadcastFrame(frame: Uint8Array): boolean {
  return (frame[0] & frame[1] & frame[2] & frame[3] & frame[4] & frame[5]) === 0xff;
}
