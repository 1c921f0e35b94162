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
