/**
 * Packetization-layer path MTU discovery for a UDP path (RFC 8899, DPLPMTUD), in its simplest
 * useful form: the search a path needs when a hop in the middle has a smaller MTU and the ICMP
 * "fragmentation needed" it sends (if it sends any) is filtered on the way back. The kernel then
 * never learns the smaller MTU (`IP_MTU` keeps saying 1500), every datagram larger than the hop's
 * vanishes, and a VM's TCP stalls on its first full-size segment: a black hole.
 *
 * So a path does not trust the kernel's figure until a datagram of that size has crossed:
 *   - until then it uses BASE_PLPMTU (1280 bytes of IP packet: IPv6's minimum, and what every
 *     path that carries VNET carries);
 *   - it sends probes (keepalives padded to the size, udp_peers.ts), at most one size at a time,
 *     PROBES_PER_SIZE times PROBE_TIMEOUT_MS apart; the peer answers each one it gets with the
 *     size it saw;
 *   - an answer confirms the size; a size that goes unanswered that many times is too big, and
 *     the search halves the gap between the largest confirmed and the smallest refused, to within
 *     SEARCH_STEP bytes;
 *   - the first probe is the kernel's figure itself: on a clean path one round trip confirms it;
 *   - every RAISE_AFTER_MS a path below the kernel's figure searches again upward (a route that
 *     changed), as RFC 8899's PMTU_RAISE_TIMER.
 * The kernel's figure stays the ceiling: it comes down when ICMP gets through (EMSGSIZE).
 *
 * Sizes are of the outer IP packet (IP and UDP headers included), so both ends count alike.
 */

/** The size used until a larger one is confirmed (or the ceiling, if that is smaller). */
export const BASE_PLPMTU = 1280;
/** A probe unanswered this long is lost. */
const PROBE_TIMEOUT_MS = 600;
/** Lost probes of one size before the size is taken as too big. */
const PROBES_PER_SIZE = 3;
/** The search stops when the confirmed and the refused sizes are this close. */
const SEARCH_STEP = 16;
/** A path below its ceiling searches upward again this often. */
const RAISE_AFTER_MS = 600_000;

/** One path's search. */
export class PathMtuSearch {
  /** The largest outer size confirmed to cross (BASE_PLPMTU until one is). */
  confirmed = BASE_PLPMTU;
  /** The smallest size that went unanswered, or the ceiling plus one. */
  #refused: number;
  #ceiling: number;
  #probing = 0;
  #attempts = 0;
  #sentAt = -Infinity;
  #doneAt = -Infinity;

  constructor(ceiling: number) {
    this.#ceiling = ceiling;
    this.#refused = ceiling + 1;
    this.confirmed = Math.min(BASE_PLPMTU, ceiling);
  }

  /** The kernel's figure: no size above it is used or probed. */
  get ceiling(): number {
    return this.#ceiling;
  }

  /** The size frames may use now: the confirmed one, within the kernel's ceiling. */
  get mtu(): number {
    return Math.min(this.confirmed, this.#ceiling);
  }

  /** Whether the search has settled (until the next raise). */
  get searching(): boolean {
    return this.#refused - this.confirmed > SEARCH_STEP && this.confirmed < this.#ceiling;
  }

  /**
   * The kernel's figure changed (ICMP got through, or the route did): it bounds every size. A
   * larger one opens the search upward again.
   */
  setCeiling(ceiling: number): void {
    if (ceiling === this.#ceiling) return;
    const raised = ceiling > this.#ceiling;
    this.#ceiling = ceiling;
    if (raised) this.#refused = ceiling + 1;
    else this.#refused = Math.min(this.#refused, ceiling + 1);
    this.confirmed = Math.min(this.confirmed, ceiling);
    this.#probing = 0;
  }

  /** The size to probe now, or 0: none due (one in flight, or nothing to search). */
  probe(now: number): number {
    if (!this.searching) {
      if (this.confirmed >= this.#ceiling || now - this.#doneAt < RAISE_AFTER_MS) return 0;
      // Time to look upward again: the route may have changed.
      this.#refused = this.#ceiling + 1;
    }
    if (this.#probing !== 0) {
      if (now - this.#sentAt < PROBE_TIMEOUT_MS) return 0;
      if (++this.#attempts >= PROBES_PER_SIZE) {
        this.#refuse(this.#probing, now);
        if (!this.searching) return 0;
      }
    }
    if (this.#probing === 0) {
      this.#probing = this.#candidate();
      this.#attempts = 0;
    }
    this.#sentAt = now;
    return this.#probing;
  }

  /** The peer got a probe of `size`. */
  acked(size: number, now: number): void {
    if (size <= this.confirmed || size > this.#ceiling) return;
    this.confirmed = size;
    if (size >= this.#refused) this.#refused = this.#ceiling + 1;
    if (size === this.#probing) this.#probing = 0;
    if (!this.searching) this.#doneAt = now;
  }

  #refuse(size: number, now: number): void {
    this.#refused = Math.min(this.#refused, size);
    this.#probing = 0;
    if (!this.searching) this.#doneAt = now;
  }

  /** The ceiling first (a clean path), then halfway between confirmed and refused. */
  #candidate(): number {
    if (this.#refused > this.#ceiling) return this.#ceiling;
    return this.confirmed + Math.floor((this.#refused - this.confirmed) / 2 / 4) * 4;
  }
}
