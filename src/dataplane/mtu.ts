/**
 * Frames larger than the tunnel's path: what VNET does so that a VM with MTU 1500 behind a WAN
 * path that carries less works untuned, without black holes.
 *
 * P is the largest inner IP packet the path carries (path MTU minus the encapsulation; for
 * VXLAN over IPv4, path MTU - 50). The strategy, per frame on the sending side:
 *
 *   1. MSS clamping (`clampMss`) on every TCP SYN and SYN-ACK, both ways: the MSS option is
 *      lowered to P - 40 (IPv4) or P - 60 (IPv6). TCP, nearly all the bytes, then never sends a
 *      segment that does not fit, whatever the endpoints think of PMTU discovery and of ICMP.
 *      tinc (ClampMSS, on by default) and OpenVPN (--mssfix, on by default) do the same.
 *   2. Segmentation and fragmentation (offload.ts `prepareForWire` with P): GSO/GRO TCP
 *      super-frames are cut into segments that fit; IPv4 without DF is fragmented, which any
 *      router on the way may do to it too (RFC 791).
 *   3. ICMP synthesis (`tooBigReply`) for what is left, IPv4 with DF and IPv6: the frame is
 *      dropped and an ICMP "fragmentation needed" (RFC 792/1191) or ICMPv6 "packet too big"
 *      (RFC 4443/8201) with P goes back to the sender, injected on the side it came from, so it
 *      learns the MTU within one round trip. Linux's VXLAN and Geneve do exactly this for a
 *      bridged port (`skb_tunnel_check_pmtu`, `iptunnel_pmtud_check_icmp{,v6}`), tinc does it
 *      for IPv4 DF; the replies here are byte for byte the kernel's (tests/unit/mtu_test.ts).
 *
 * Not chosen:
 *   - Fragmentation inside VNET with reassembly (OpenVPN's --fragment, which its manual calls a
 *     last resort): a VXLAN peer cannot reassemble it (VXLAN has no fragments, RFC 7348 4.3),
 *     a lost piece loses the whole frame, and reassembly buffers are memory a forger can fill.
 *     Frames that still do not fit (non-IP, an ICMP error, IPv4 below 576) may instead go over
 *     the TCP link, as tinc sends them over its meta connection: the caller's choice.
 *   - Letting the outer UDP datagram be fragmented by the kernel (OpenVPN's default): many paths
 *     drop fragments, and receivers may drop VXLAN fragments.
 * P itself comes from the transport: the outer socket's PMTU (IP_MTU) and probing (tinc's MTU
 * probes, RFC 8899), since ICMP toward the outer endpoints is often filtered.
 *
 * Everything here is pure: no allocation, no clock but the token bucket's.
 */

import { Dropped, fold, internetChecksum, type L4Checksums, prepareForWire } from "./offload.ts";
import {
  ETHERTYPE_IPV4,
  ETHERTYPE_IPV6,
  etherTypeAt,
  ipv6UpperLayer,
  networkOffset,
} from "./headers.ts";

const IPPROTO_ICMP = 1;
const IPPROTO_TCP = 6;
const IPPROTO_ICMPV6 = 58;
const TCP_SYN = 0x02;
const TCP_RST = 0x04;
const TCPOPT_EOL = 0;
const TCPOPT_NOP = 1;
const TCPOPT_MSS = 2;
const IP_DF = 0x4000;

/** IPv4's limit for an ICMP error (RFC 1812 4.3.2.3) and the smallest MTU Linux replies for. */
const IPV4_ICMP_MAX = 576;
/** IPv6's minimum MTU: the limit for an ICMPv6 error (RFC 4443 2.4) and for the reported MTU. */
const IPV6_MIN_MTU = 1280;

/** The largest frame `tooBigReply` writes: one VLAN tag, and an IPv6 packet of 1280 bytes. */
export const TOO_BIG_REPLY_MAX = 18 + IPV6_MIN_MTU;

// ---------------------------------------------------------------------------------------------
// MSS clamping

/**
 * Lowers the MSS option of a TCP SYN or SYN-ACK in `frame` (Ethernet, at most one VLAN tag,
 * IPv4 or IPv6 with extension headers) to `maxMss` (IPv4) or `maxMss6` (IPv6) when it is
 * larger, and adjusts the TCP checksum incrementally (RFC 1624, also when the option is not
 * 16-bit aligned). Returns whether it changed the frame. Never raises an MSS, never adds the
 * option when it is absent (the peer then assumes 536 or 1220 bytes, which fit), and leaves
 * anything malformed alone.
 *
 * `maxMss6` defaults to `maxMss - 20`: the same path carries a 20 bytes larger IPv6 header (as
 * OpenVPN's mssfix). For a path carrying P-byte IP packets: `clampMss(frame, P - 40)`.
 *
 * The checksum must be complete. A CHECKSUM_PARTIAL one (a local VM's offload) comes out just as
 * wrong as it went in, and `prepareForWire`, which verifies and rewrites checksums, fixes it
 * (here, or at the receiving VNET when the path leaves checksums to it: `L4Checksums`).
 */
export function clampMss(frame: Uint8Array, maxMss: number, maxMss6 = maxMss - 20): boolean {
  const l3 = networkOffset(frame);
  if (l3 === 0) return false;
  const type = etherTypeAt(frame, l3);
  const avail = frame.length - l3;
  let l4: number;
  let end: number;
  let max: number;
  if (type === ETHERTYPE_IPV4) {
    if (avail < 20 || frame[l3] >>> 4 !== 4 || frame[l3 + 9] !== IPPROTO_TCP) return false;
    const ihl = (frame[l3] & 0x0f) << 2;
    const tot = (frame[l3 + 2] << 8) | frame[l3 + 3];
    // A later fragment holds no TCP header.
    if (ihl < 20 || tot < ihl || tot > avail || ((frame[l3 + 6] & 0x1f) | frame[l3 + 7]) !== 0) {
      return false;
    }
    l4 = l3 + ihl;
    end = l3 + tot;
    max = maxMss;
  } else if (type === ETHERTYPE_IPV6) {
    if (avail < 40 || frame[l3] >>> 4 !== 6) return false;
    end = l3 + 40 + ((frame[l3 + 4] << 8) | frame[l3 + 5]);
    if (end > frame.length) return false;
    const upper = ipv6UpperLayer(frame, l3, end);
    if (upper < 0 || (upper & 0xff) !== IPPROTO_TCP) return false;
    l4 = upper >>> 8;
    max = maxMss6;
  } else {
    return false;
  }
  if (l4 + 20 > end || (frame[l4 + 13] & (TCP_SYN | TCP_RST)) !== TCP_SYN) return false;
  const optEnd = l4 + ((frame[l4 + 12] >>> 4) << 2);
  if (optEnd < l4 + 20 || optEnd > end) return false;
  for (let i = l4 + 20; i < optEnd;) {
    const kind = frame[i];
    if (kind === TCPOPT_EOL) return false;
    if (kind === TCPOPT_NOP) {
      i++;
      continue;
    }
    if (i + 1 >= optEnd) return false;
    const len = frame[i + 1];
    if (len < 2 || i + len > optEnd) return false;
    if (kind === TCPOPT_MSS && len === 4) {
      const mss = (frame[i + 2] << 8) | frame[i + 3];
      if (mss <= max) return false;
      if (!Number.isInteger(max) || max < 0) throw new RangeError(`bad MSS limit ${max}`);
      frame[i + 2] = max >>> 8;
      frame[i + 3] = max & 0xff;
      // Checksum words are aligned on the TCP header: a value at an odd offset straddles two of
      // them, adding its bytes swapped to the sum (RFC 1071's byte-order independence).
      const odd = ((i + 2 - l4) & 1) === 1;
      replaceWord(frame, l4 + 16, odd ? swap16(mss) : mss, odd ? swap16(max) : max);
      return true;
    }
    i += len;
  }
  return false;
}

/** RFC 1624 eqn. 3: HC' = ~(~HC + ~m + m'), for the checksum at `f[ck]` when m becomes m'. */
function replaceWord(f: Uint8Array, ck: number, m: number, m1: number): void {
  const hc = (f[ck] << 8) | f[ck + 1];
  const c = ~fold((~hc & 0xffff) + (~m & 0xffff) + m1) & 0xffff;
  f[ck] = c >>> 8;
  f[ck + 1] = c & 0xff;
}

function swap16(v: number): number {
  return ((v & 0xff) << 8) | (v >>> 8);
}

// ---------------------------------------------------------------------------------------------
// ICMP "fragmentation needed" / ICMPv6 "packet too big"

/**
 * For `frame`, an IP packet larger than `mtu` (the largest IP packet the tunnel carries), writes
 * into `out` the Ethernet frame that tells its sender so, and returns its length; 0 when no reply
 * is due. `out` must hold `TOO_BIG_REPLY_MAX` bytes and not overlap `frame`.
 *
 * The reply is what Linux's bridged VXLAN port sends (`iptunnel_pmtud_build_icmp{,v6}`):
 *   - Ethernet: the MACs swapped, the VLAN tag kept.
 *   - Source address: the original destination. A bridge has no address of its own on the
 *     inner network; the destination is one the sender already talks to, on the path the
 *     packet took, so its firewall and rp_filter let the reply in, and the sender only matches
 *     the quoted header to its socket anyway (RFC 1191 does not ask who sent it).
 *   - TTL / hop limit: the original's; TOS / traffic class and flow label 0; IPv4 ID 0 with DF.
 *   - IPv4: ICMP type 3 code 4 with the next-hop MTU, quoting the original packet up to a reply
 *     of 576 bytes (RFC 1812 4.3.2.3: as much as fits), not just the header and 8 bytes that
 *     RFC 792 requires: enough for a sender behind a NAT or an IPsec tunnel to find the flow.
 *   - IPv6: ICMPv6 type 2 with the MTU, quoting as much as fits in 1280 bytes (RFC 4443 2.4),
 *     with the pseudo-header checksum.
 *
 * No reply (0), as the kernel: not IPv4 or IPv6, malformed, or not over `mtu`; IPv4 without DF
 * (the caller fragments it: `prepareForWire`) or a fragment; `mtu` below 576 (IPv4) or 1280
 * (IPv6), which senders would not honour; an ICMP error or ICMPv6 error or redirect (never an
 * error about an error, RFC 1122 3.2.2); an IPv6 later fragment; a source that is unspecified,
 * loopback, broadcast, multicast or (IPv4) reserved; an IPv4 broadcast or multicast
 * destination. Also an IPv6 multicast destination, which Linux would send from: the reply needs
 * a unicast source.
 *
 * Rate limiting is the caller's (`TokenBucket`).
 */
export function tooBigReply(frame: Uint8Array, mtu: number, out: Uint8Array): number {
  const l3 = networkOffset(frame);
  if (l3 === 0) return 0;
  const type = etherTypeAt(frame, l3);
  if (type === ETHERTYPE_IPV4) return fragmentationNeeded(frame, l3, mtu, out);
  if (type === ETHERTYPE_IPV6) return packetTooBig(frame, l3, mtu, out);
  return 0;
}

function fragmentationNeeded(f: Uint8Array, l3: number, mtu: number, out: Uint8Array): number {
  const avail = f.length - l3;
  if (avail < 20 || f[l3] >>> 4 !== 4) return 0;
  const ihl = (f[l3] & 0x0f) << 2;
  const tot = (f[l3 + 2] << 8) | f[l3 + 3];
  if (ihl < 20 || tot < ihl || tot > avail || tot <= mtu || mtu < IPV4_ICMP_MAX) return 0;
  // DF and nothing else: neither a fragment nor the reserved bit (as the kernel).
  if (((f[l3 + 6] << 8) | f[l3 + 7]) !== IP_DF) return 0;
  const src = f[l3 + 12];
  const dst = f[l3 + 16];
  if (src === 0 || src === 127 || src >= 224 || dst >= 224 && dst < 240) return 0;
  if (isAllOnes(f, l3 + 16, 4)) return 0;
  if (f[l3 + 9] === IPPROTO_ICMP) {
    if (tot === ihl || isIcmpError(f[l3 + ihl])) return 0;
  }
  const quote = Math.min(tot, IPV4_ICMP_MAX - 28);
  const len = l3 + 28 + quote;
  if (out.length < len) throw new RangeError("tooBigReply: out is too small");
  const o = ethernetBack(f, l3, out, ETHERTYPE_IPV4);
  out[o] = 0x45;
  out[o + 1] = 0;
  out[o + 2] = (28 + quote) >>> 8;
  out[o + 3] = (28 + quote) & 0xff;
  out[o + 4] = 0;
  out[o + 5] = 0;
  out[o + 6] = IP_DF >>> 8;
  out[o + 7] = 0;
  out[o + 8] = f[l3 + 8];
  out[o + 9] = IPPROTO_ICMP;
  out[o + 10] = 0;
  out[o + 11] = 0;
  copy(f, l3 + 16, out, o + 12, 4);
  copy(f, l3 + 12, out, o + 16, 4);
  putChecksum(out, o + 10, internetChecksum(out, o, o + 20));
  const icmp = o + 20;
  out[icmp] = 3; // destination unreachable
  out[icmp + 1] = 4; // fragmentation needed and DF set
  out[icmp + 2] = 0;
  out[icmp + 3] = 0;
  out[icmp + 4] = 0;
  out[icmp + 5] = 0;
  out[icmp + 6] = mtu >>> 8;
  out[icmp + 7] = mtu & 0xff;
  copy(f, l3, out, icmp + 8, quote);
  putChecksum(out, icmp + 2, internetChecksum(out, icmp, len));
  return len;
}

function packetTooBig(f: Uint8Array, l3: number, mtu: number, out: Uint8Array): number {
  const avail = f.length - l3;
  if (avail < 40 || f[l3] >>> 4 !== 6) return 0;
  const plen = (f[l3 + 4] << 8) | f[l3 + 5];
  // plen 0 is a jumbogram or a BIG TCP super-frame: not for an ICMP error.
  if (plen === 0 || 40 + plen > avail || 40 + plen <= mtu || mtu < IPV6_MIN_MTU) return 0;
  const src = f[l3 + 8];
  if (src === 0xff || f[l3 + 24] === 0xff) return 0; // multicast
  if (isZero(f, l3 + 8, 15) && (f[l3 + 23] === 0 || f[l3 + 23] === 1)) return 0; // :: and ::1
  const upper = ipv6UpperLayer(f, l3, l3 + 40 + plen);
  if (upper < 0) return 0;
  if ((upper & 0xff) === IPPROTO_ICMPV6) {
    const at = upper >>> 8;
    if (at >= l3 + 40 + plen) return 0;
    const icmpType = f[at];
    if (icmpType < 128 || icmpType === 137) return 0; // an error, or a redirect
  }
  const quote = Math.min(40 + plen, IPV6_MIN_MTU - 48);
  const len = l3 + 48 + quote;
  if (out.length < len) throw new RangeError("tooBigReply: out is too small");
  const o = ethernetBack(f, l3, out, ETHERTYPE_IPV6);
  out[o] = 0x60;
  out[o + 1] = 0;
  out[o + 2] = 0;
  out[o + 3] = 0;
  out[o + 4] = (8 + quote) >>> 8;
  out[o + 5] = (8 + quote) & 0xff;
  out[o + 6] = IPPROTO_ICMPV6;
  out[o + 7] = f[l3 + 7];
  copy(f, l3 + 24, out, o + 8, 16);
  copy(f, l3 + 8, out, o + 24, 16);
  const icmp = o + 40;
  out[icmp] = 2; // packet too big
  out[icmp + 1] = 0;
  out[icmp + 2] = 0;
  out[icmp + 3] = 0;
  out[icmp + 4] = mtu >>> 24;
  out[icmp + 5] = (mtu >>> 16) & 0xff;
  out[icmp + 6] = (mtu >>> 8) & 0xff;
  out[icmp + 7] = mtu & 0xff;
  copy(f, l3, out, icmp + 8, quote);
  // The pseudo-header: both addresses, the upper-layer length, the next header (RFC 8200 8.1).
  const addresses = ~internetChecksum(out, o + 8, o + 40) & 0xffff;
  const message = ~internetChecksum(out, icmp, len) & 0xffff;
  putChecksum(out, icmp + 2, ~fold(addresses + message + 8 + quote + IPPROTO_ICMPV6) & 0xffff);
  return len;
}

/** Writes the reply's Ethernet header (and the VLAN tag): back to the sender. */
function ethernetBack(f: Uint8Array, l3: number, out: Uint8Array, type: number): number {
  copy(f, 6, out, 0, 6);
  copy(f, 0, out, 6, 6);
  copy(f, 12, out, 12, l3 - 14); // the tag, if any
  out[l3 - 2] = type >>> 8;
  out[l3 - 1] = type & 0xff;
  return l3;
}

function copy(from: Uint8Array, at: number, to: Uint8Array, toAt: number, n: number): void {
  for (let i = 0; i < n; i++) to[toAt + i] = from[at + i];
}

function putChecksum(out: Uint8Array, at: number, c: number): void {
  out[at] = c >>> 8;
  out[at + 1] = c & 0xff;
}

/** ICMP errors (Linux's icmp_is_err): unreachable, quench, redirect, time, parameter problem. */
function isIcmpError(type: number): boolean {
  return type === 3 || type === 4 || type === 5 || type === 11 || type === 12;
}

function isZero(f: Uint8Array, at: number, n: number): boolean {
  for (let i = 0; i < n; i++) if (f[at + i] !== 0) return false;
  return true;
}

function isAllOnes(f: Uint8Array, at: number, n: number): boolean {
  for (let i = 0; i < n; i++) if (f[at + i] !== 0xff) return false;
  return true;
}

// ---------------------------------------------------------------------------------------------

/**
 * A token bucket for rate limiting replies: `ratePerSecond` tokens a second, at most `burst`
 * saved up (it starts full). `take` spends one if there is one.
 */
export class TokenBucket {
  readonly ratePerSecond: number;
  readonly burst: number;
  #now: () => number;
  #tokens: number;
  #last: number;

  /** `now`: the clock in ms (tests drive their own). */
  constructor(ratePerSecond: number, burst: number, now: () => number = () => performance.now()) {
    this.ratePerSecond = ratePerSecond;
    this.burst = burst;
    this.#now = now;
    this.#tokens = burst;
    this.#last = now();
  }

  take(): boolean {
    const t = this.#now();
    const earned = ((t - this.#last) * this.ratePerSecond) / 1000;
    this.#tokens = Math.min(this.burst, this.#tokens + earned);
    this.#last = t;
    if (this.#tokens < 1) return false;
    this.#tokens--;
    return true;
  }
}

/** ICMP "too big" answers a path sends per second at most (a sender that ignores them). */
const TOO_BIG_PER_SECOND = 100;

/**
 * Puts frames on a UDP path of inner MTU `mtu` (a VXLAN tunnel, a link's UDP path), the three
 * ways above: TCP's MSS clamped, the frame cut to fit (offload.ts), and what cannot be cut
 * answered with ICMP "too big" toward its sender, at most TOO_BIG_PER_SECOND a second.
 */
export class PathFit {
  /** "Too big" answers sent. */
  tooBig = 0;
  readonly #bucket = new TokenBucket(TOO_BIG_PER_SECOND, TOO_BIG_PER_SECOND);
  readonly #reply = new Uint8Array(TOO_BIG_REPLY_MAX);

  /**
   * Emits `frame` as frames of at most `mtu` IP bytes, their TCP and UDP checksums as `checksums`
   * says; `answer` gets the "too big" reply for one it cannot cut (lent for the call). Returns
   * the frames emitted: 0 if none was.
   */
  send(
    frame: Uint8Array,
    mtu: number,
    emit: (frame: Uint8Array) => void,
    answer: (reply: Uint8Array) => void,
    checksums: L4Checksums = "complete",
  ): number {
    clampMss(frame, mtu - 40);
    const sent = prepareForWire(frame, mtu, emit, undefined, checksums);
    if (sent === Dropped.oversize) {
      // IPv4 with DF, IPv6: tell the sender the MTU, as a router would (a reply only where due).
      const n = this.#bucket.take() ? tooBigReply(frame, mtu, this.#reply) : 0;
      if (n > 0) {
        this.tooBig++;
        answer(this.#reply.subarray(0, n));
      }
    }
    return Math.max(0, sent);
  }
}
