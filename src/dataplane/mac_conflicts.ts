/**
 * Frames that arrive on a Proxy's LAN interface from a MAC the Proxy carries: only the VM
 * behind its Host should send as that MAC, so each one is a duplicate MAC on the LAN, or a
 * loop. They are counted, never forwarded, and warned of: once when they start, then at most
 * once a minute with the count since.
 */
import { type Logger } from "../log.ts";

const WARN_EVERY_MS = 60_000;

export class MacConflicts {
  count = 0;
  #warnedAt = -Infinity;
  #warnedCount = 0;

  constructor(private readonly log: Logger) {}

  /** Counts one such frame (a capture's `onConflict`). */
  seen = (frame: Uint8Array): void => {
    this.count++;
    const now = performance.now();
    if (now - this.#warnedAt < WARN_EVERY_MS) return;
    this.#warnedAt = now;
    const mac = Array.from(frame.subarray(6, 12), (b) => b.toString(16).padStart(2, "0"))
      .join(":");
    this.log.warn(
      this.#warnedCount === 0
        ? "MAC conflict: a proxied MAC sends on this LAN (a duplicate MAC, or a loop)"
        : "MAC conflicts go on",
      { mac, conflicts: this.count, since: this.count - this.#warnedCount },
    );
    this.#warnedCount = this.count;
  };
}
