/**
 * Undoing NIC offloads on captured frames before they are injected on another wire.
 *
 * A VM's virtio/veth NIC hands the host GSO super-frames (IP packets up to 64 KiB) whose TCP/UDP
 * checksum is unfinished (CHECKSUM_PARTIAL: the field holds only the pseudo-header sum), and a
 * real NIC's GRO hands a capture merged frames. libpcap sees them like that. `prepareForWire`
 * turns such a frame into frames a real wire accepts: checksums completed, TCP super-frames cut
 * into MSS-sized segments, oversized IPv4 datagrams without DF fragmented.
 *
 * Hot path (a frame that already fits): checksums are verified and, when wrong, rewritten in
 * place, and the same view is emitted; on a UDP path whose peer completes them (`L4Checksums`),
 * TCP's and UDP's are left to that peer. No allocation happens there as long as consecutive
 * frames are views over the same ArrayBuffer (a DataView over it is cached).
 */

import { type GsoFrame } from "./ports.ts";
import { ETHERTYPE_IPV4, ETHERTYPE_IPV6, etherTypeAt, networkOffset } from "./headers.ts";

/**
 * What `prepareForWire` returns for a frame it dropped: negative, so that any result above 0 is
 * the number of frames emitted.
 */
export const Dropped = {
  /** Over the MTU, and neither segmentable (TCP) nor fragmentable (IPv4 without DF). */
  oversize: -1,
  /** Headers inconsistent or truncated. */
  malformed: -2,
} as const;
export type DropReason = keyof typeof Dropped;

const IPPROTO_TCP = 6;
const IPPROTO_UDP = 17;
const IPV6_HOPOPTS = 0;
const IPV6_DSTOPTS = 60;
const TCP_FIN = 0x01;
const TCP_SYN = 0x02;
const TCP_RST = 0x04;
const TCP_PSH = 0x08;
const TCP_CWR = 0x80;
const IP_DF = 0x4000;
const IP_MF = 0x2000;

// ---------------------------------------------------------------------------------------------
// Checksums

let frameBuf: ArrayBufferLike | null = null;
let frameDv: DataView<ArrayBufferLike> = new DataView(new ArrayBuffer(0));

/** A DataView over the frame's whole buffer, cached while consecutive frames share a buffer. */
function dvOf(f: Uint8Array): DataView<ArrayBufferLike> {
  if (f.buffer !== frameBuf) {
    frameBuf = f.buffer;
    frameDv = new DataView(f.buffer);
  }
  return frameDv;
}

/**
 * One's-complement sum of bytes [start, end) of `dv` as big-endian 16-bit words, folded to
 * 0..0xffff (0 only when every byte is 0). Reads little-endian 32-bit words (the fastest DataView
 * access in V8), sums them in a double (exact below 2^53, i.e. any IP packet), folds with one
 * modulo and swaps the bytes at the end (RFC 1071 byte-order independence).
 */
function sumBytes(dv: DataView<ArrayBufferLike>, start: number, end: number): number {
  let i = start;
  let a = 0;
  let b = 0;
  const end16 = end - 15;
  for (; i < end16; i += 16) {
    a += dv.getUint32(i, true) + dv.getUint32(i + 4, true);
    b += dv.getUint32(i + 8, true) + dv.getUint32(i + 12, true);
  }
  for (; i + 1 < end; i += 2) a += dv.getUint16(i, true);
  if (i < end) a += dv.getUint8(i);
  const sum = a + b;
  if (sum === 0) return 0;
  const f = ((sum - 1) % 65535) + 1;
  return ((f & 0xff) << 8) | (f >>> 8);
}

/** Folds a non-negative sum of 16-bit words to 0..0xffff with end-around carry. */
export function fold(sum: number): number {
  return sum === 0 ? 0 : ((sum - 1) % 65535) + 1;
}

/** The Internet checksum (RFC 1071) of `bytes[start, end)`, for tests and tools. */
export function internetChecksum(bytes: Uint8Array, start = 0, end = bytes.length): number {
  if (start < 0 || end > bytes.length || start > end) throw new RangeError("bad checksum range");
  return ~sumBytes(dvOf(bytes), bytes.byteOffset + start, bytes.byteOffset + end) & 0xffff;
}

/** Verifies the IPv4 header checksum; rewrites it when wrong. */
function fixIpv4HeaderChecksum(f: Uint8Array, l3: number, ihl: number): void {
  const base = f.byteOffset + l3;
  const s = sumBytes(dvOf(f), base, base + ihl);
  if (s === 0xffff) return;
  const stored = (f[l3 + 10] << 8) | f[l3 + 11];
  const c = ~fold(s + (0xffff ^ stored)) & 0xffff;
  f[l3 + 10] = c >>> 8;
  f[l3 + 11] = c & 0xff;
}

/** Writes the IPv4 header checksum of a header we built in the scratch buffer. */
function writeIpv4HeaderChecksum(s: Uint8Array, l3: number, ihl: number): void {
  s[l3 + 10] = 0;
  s[l3 + 11] = 0;
  const hc = ~sumBytes(scratchDv, l3, l3 + ihl) & 0xffff;
  s[l3 + 10] = hc >>> 8;
  s[l3 + 11] = hc & 0xff;
}

/**
 * Verifies the TCP/UDP checksum of `f[l4, l4 + len)` (field at `f[ck]`) against `pseudo`, the
 * unfolded pseudo-header sum; rewrites it when wrong. `udp`: a result of 0 is sent as 0xffff, and
 * a stored 0 is always rewritten (callers skip IPv4 UDP with checksum 0).
 */
function fixL4Checksum(
  f: Uint8Array,
  l4: number,
  len: number,
  ck: number,
  pseudo: number,
  udp: boolean,
): void {
  const base = f.byteOffset + l4;
  const s = fold(sumBytes(dvOf(f), base, base + len) + pseudo);
  const stored = (f[ck] << 8) | f[ck + 1];
  if (s === 0xffff && !(udp && stored === 0)) return;
  let c = ~fold(s + (0xffff ^ stored)) & 0xffff;
  if (udp && c === 0) c = 0xffff;
  f[ck] = c >>> 8;
  f[ck + 1] = c & 0xff;
}

/** Sum of the 16-bit words of `f[off, off + len)`, len even and small (addresses). */
function sumWords(f: Uint8Array, off: number, len: number): number {
  let s = 0;
  for (let i = off; i < off + len; i += 2) s += (f[i] << 8) | f[i + 1];
  return s;
}

// ---------------------------------------------------------------------------------------------
// Scratch space for segments and fragments

let scratch = new Uint8Array(16384);
let scratchDv = new DataView(scratch.buffer);
let scratchView = scratch.subarray(0, 0);

function ensureScratch(size: number): void {
  if (scratch.length >= size) return;
  scratch = new Uint8Array(Math.max(size, scratch.length * 2));
  scratchDv = new DataView(scratch.buffer);
  scratchView = scratch.subarray(0, 0);
}

/** `scratch[0, len)`; the view is reused while the length repeats (all but the last segment). */
function scratchOf(len: number): Uint8Array {
  if (scratchView.length !== len || scratchView.buffer !== scratch.buffer) {
    scratchView = scratch.subarray(0, len);
  }
  return scratchView;
}

const fragHeader = new Uint8Array(60);

// ---------------------------------------------------------------------------------------------

/** Emits `f` trimmed to `l3 + ipLen` when trailing bytes beyond the IP packet would not fit. */
function emitFitting(
  f: Uint8Array,
  l3: number,
  ipLen: number,
  mtu: number,
  emit: (frame: Uint8Array) => void,
): number {
  emit(f.length - l3 > mtu ? f.subarray(0, l3 + ipLen) : f);
  return 1;
}

/**
 * Hands a TCP super-frame to an injector that lets the kernel segment it (GSO), instead of
 * segmenting it here; returns false if the injector refused it. `gso` is only valid during the
 * call (it is reused).
 */
export type GsoEmit = (frame: Uint8Array, gso: GsoFrame) => boolean;
/** Handed to every `GsoEmit` call, rewritten each time: no allocation per super-frame. */
const gsoFrame: GsoFrame = { v4: false, l4Offset: 0, headerLength: 0, mss: 0, ecn: false };

/**
 * What `prepareForWire` does with the TCP and UDP checksums of what it emits whole or cuts:
 *   - `complete`: each is verified, and rewritten when wrong or partial; what a wire needs.
 *   - `partial`: each is left to the receiver, which is another VNET that completes them itself
 *     (the link agreed it: control/udp_transport.ts). A frame that fits goes as it came; a
 *     segment cut here carries its pseudo-header sum, as the kernel leaves a CHECKSUM_PARTIAL
 *     one. Summing every byte of every segment was a fifth of a sending worker's time with
 *     offloads on, and the receiver merges the segments again and lets its kernel sum them
 *     (gro.ts), or sums a lone one anyway. A datagram IPv4 fragments still gets its checksum
 *     here: no receiver can sum one from a fragment.
 */
export type L4Checksums = "complete" | "partial";

/**
 * Makes one captured frame fit for a wire of `mtu` (the IP MTU of the interface it will be
 * injected on): completes/repairs TCP and UDP checksums (verify; rewrite when wrong; see
 * `L4Checksums` for `partial`) and the IPv4 header checksum, and segments TCP super-frames into
 * MSS-sized segments (MSS = mtu - IP header - TCP header incl. options), or hands them whole to
 * `gso` when given. IPv4 datagrams over the MTU without DF (other than TCP super-frames) are
 * fragmented. Calls `emit` synchronously once per resulting frame (the view may be reused after
 * emit returns). A frame that already fits is fixed in place and emitted as the same view.
 *
 * Returns the number of frames emitted; 0 if `gso` refused the super-frame (its failure, counted
 * by the injector); a negative `Dropped` code if the frame was dropped. Never throws (unless
 * `emit` does).
 */
export function prepareForWire(
  frame: Uint8Array,
  mtu: number,
  emit: (frame: Uint8Array) => void,
  gso?: GsoEmit,
  checksums: L4Checksums = "complete",
): number {
  const l3 = networkOffset(frame);
  if (l3 === 0) return Dropped.malformed;
  const type = etherTypeAt(frame, l3);
  const complete = checksums === "complete";
  if (type === ETHERTYPE_IPV4) return ipv4(frame, l3, mtu, emit, gso, complete);
  if (type === ETHERTYPE_IPV6) return ipv6(frame, l3, mtu, emit, gso, complete);
  // Anything else (ARP, 802.3/LLC, 0x88b5, a second VLAN tag, ...) goes out untouched.
  if (frame.length - l3 > mtu) return Dropped.oversize;
  emit(frame);
  return 1;
}

/** Makes the IP packet at `l3` of `f` fit an interface of `mtu`: frames sent, or a Dropped. */
type FitIp = (
  f: Uint8Array,
  l3: number,
  mtu: number,
  emit: (frame: Uint8Array) => void,
  gso: GsoEmit | undefined,
  /** False: TCP and UDP checksums are left partial (`L4Checksums`). */
  complete: boolean,
) => number;

const ipv4: FitIp = (f, l3, mtu, emit, gso, complete) => {
  const avail = f.length - l3;
  if (avail < 20) return Dropped.malformed;
  const vihl = f[l3];
  const ihl = (vihl & 15) << 2;
  if (vihl >>> 4 !== 4 || ihl < 20 || ihl > avail) return Dropped.malformed;
  let tot = (f[l3 + 2] << 8) | f[l3 + 3];
  // BIG TCP (Linux): GSO packets over 64 KiB carry total length 0.
  if (tot === 0 && avail > 65535) tot = avail;
  if (tot < ihl || tot > avail) return Dropped.malformed;
  fixIpv4HeaderChecksum(f, l3, ihl);
  const frag = (f[l3 + 6] << 8) | f[l3 + 7];
  const proto = f[l3 + 9];
  const l4 = l3 + ihl;
  const l4len = tot - ihl;
  if ((frag & 0x3fff) === 0) {
    if (proto === IPPROTO_TCP) {
      if (l4len < 20) return Dropped.malformed;
      const th = (f[l4 + 12] >>> 4) << 2;
      if (th < 20 || th > l4len) return Dropped.malformed;
      // The addresses' sum only where a checksum is written (a `partial` frame that fits: none).
      if (tot > mtu) {
        const addr = sumWords(f, l3 + 12, 8);
        return segmentTcp(f, l3, ihl, th, l4len, addr, mtu, true, emit, gso, complete);
      }
      if (complete) {
        fixL4Checksum(f, l4, l4len, l4 + 16, sumWords(f, l3 + 12, 8) + IPPROTO_TCP + l4len, false);
      }
    } else if (proto === IPPROTO_UDP) {
      if (l4len < 8) return Dropped.malformed;
      const ulen = (f[l4 + 4] << 8) | f[l4 + 5];
      if (ulen < 8 || ulen > l4len) return Dropped.malformed;
      // 0: sent without checksum (RFC 768). Left partial only if no fragment will carry it.
      if ((f[l4 + 6] !== 0 || f[l4 + 7] !== 0) && (complete || tot > mtu)) {
        fixL4Checksum(f, l4, ulen, l4 + 6, sumWords(f, l3 + 12, 8) + IPPROTO_UDP + ulen, true);
      }
    }
  }
  if (tot <= mtu) return emitFitting(f, l3, tot, mtu, emit);
  if ((frag & IP_DF) !== 0 || tot > 65535) return Dropped.oversize;
  return fragmentIpv4(f, l3, ihl, tot, frag, mtu, emit);
};

const ipv6: FitIp = (f, l3, mtu, emit, gso, complete) => {
  const avail = f.length - l3;
  if (avail < 40 || f[l3] >>> 4 !== 6) return Dropped.malformed;
  let plen = (f[l3 + 4] << 8) | f[l3 + 5];
  let nh = f[l3 + 6];
  // BIG TCP (Linux >= 6.3): GSO packets over 64 KiB carry payload length 0 and no jumbo option.
  // With a hop-by-hop header it would be an RFC 2675 jumbogram, which we leave alone.
  if (plen === 0 && avail - 40 > 65535) {
    if (nh === IPV6_HOPOPTS) return Dropped.oversize;
    plen = avail - 40;
  }
  if (40 + plen > avail) return Dropped.malformed;
  const end = l3 + 40 + plen;
  let l4 = l3 + 40;
  // Hop-by-hop then destination options: fixed-format, skipped and copied verbatim. Anything
  // else (routing changes the pseudo-header, fragments, ESP, ...) passes through untouched.
  if (nh === IPV6_HOPOPTS) {
    if (l4 + 8 > end) return Dropped.malformed;
    nh = f[l4];
    l4 += (f[l4 + 1] + 1) << 3;
    if (l4 > end) return Dropped.malformed;
  }
  if (nh === IPV6_DSTOPTS) {
    if (l4 + 8 > end) return Dropped.malformed;
    nh = f[l4];
    l4 += (f[l4 + 1] + 1) << 3;
    if (l4 > end) return Dropped.malformed;
  }
  const l4len = end - l4;
  if (nh === IPPROTO_TCP) {
    if (l4len < 20) return Dropped.malformed;
    const th = (f[l4 + 12] >>> 4) << 2;
    if (th < 20 || th > l4len) return Dropped.malformed;
    if (40 + plen > mtu) {
      const addr = sumWords(f, l3 + 8, 32);
      return segmentTcp(f, l3, l4 - l3, th, l4len, addr, mtu, false, emit, gso, complete);
    }
    if (complete) {
      fixL4Checksum(f, l4, l4len, l4 + 16, sumWords(f, l3 + 8, 32) + IPPROTO_TCP + l4len, false);
    }
  } else if (nh === IPPROTO_UDP) {
    if (l4len < 8) return Dropped.malformed;
    let ulen = (f[l4 + 4] << 8) | f[l4 + 5];
    if (ulen === 0 && l4len > 65535) ulen = l4len; // RFC 2675 jumbo UDP
    if (ulen < 8 || ulen > l4len) return Dropped.malformed;
    // IPv6 UDP must carry a checksum (RFC 8200): a stored 0 is completed like a partial one.
    const ulenSum = (ulen >>> 16) + (ulen & 0xffff);
    if (complete) {
      fixL4Checksum(f, l4, ulen, l4 + 6, sumWords(f, l3 + 8, 32) + IPPROTO_UDP + ulenSum, true);
    }
  }
  if (40 + plen > mtu) return Dropped.oversize;
  return emitFitting(f, l3, 40 + plen, mtu, emit);
};

/**
 * Cuts a TCP super-frame into segments of at most `mtu` IP bytes in the scratch buffer, as TSO
 * would: sequence numbers advance, CWR only on the first, FIN/PSH only on the last, IPv4 ID + 1
 * per segment, DF and TCP options copied, lengths and all checksums recomputed (`complete`; else
 * TCP's is each segment's pseudo-header sum, `L4Checksums`).
 */
function segmentTcp(
  f: Uint8Array,
  l3: number,
  netLen: number,
  th: number,
  l4len: number,
  addrSum: number,
  mtu: number,
  v4: boolean,
  emit: (frame: Uint8Array) => void,
  gso: GsoEmit | undefined,
  complete: boolean,
): number {
  const l4 = l3 + netLen;
  const hdrEnd = l4 + th;
  const payload = l4len - th;
  const mss = mtu - netLen - th;
  const flags = f[l4 + 13];
  // A SYN or RST is never built by GSO/GRO; segmenting one would change its meaning.
  if (mss < 8 || (flags & (TCP_SYN | TCP_RST)) !== 0) return Dropped.oversize;
  if (gso && netLen + l4len <= 65535) {
    // The kernel segments and checksums: leave it the pseudo-header sum (CHECKSUM_PARTIAL).
    const partial = fold(addrSum + IPPROTO_TCP + l4len);
    f[l4 + 16] = partial >>> 8;
    f[l4 + 17] = partial & 0xff;
    gsoFrame.v4 = v4;
    gsoFrame.l4Offset = l4;
    gsoFrame.headerLength = hdrEnd;
    gsoFrame.mss = mss;
    gsoFrame.ecn = (flags & TCP_CWR) !== 0;
    // The frame ends with its IP packet: trailing bytes are cut only when there are some.
    const end = l4 + l4len;
    return gso(end === f.length ? f : f.subarray(0, end), gsoFrame) ? 1 : 0;
  }
  ensureScratch(hdrEnd + mss);
  const s = scratch;
  s.set(f.subarray(0, hdrEnd), 0);
  const seq0 = ((f[l4 + 4] << 24) | (f[l4 + 5] << 16) | (f[l4 + 6] << 8) | f[l4 + 7]) >>> 0;
  const id0 = (f[l3 + 4] << 8) | f[l3 + 5];
  const count = Math.ceil(payload / mss);
  const src = f.byteOffset;
  const pseudo = addrSum + IPPROTO_TCP;
  for (let k = 0, off = 0; k < count; k++, off += mss) {
    const n = k === count - 1 ? payload - off : mss;
    const from = hdrEnd + off;
    s.set(new Uint8Array(f.buffer, src + from, n), hdrEnd);
    const segLen = th + n;
    if (v4) {
      const tot = netLen + segLen;
      s[l3 + 2] = tot >>> 8;
      s[l3 + 3] = tot & 0xff;
      const id = (id0 + k) & 0xffff;
      s[l3 + 4] = id >>> 8;
      s[l3 + 5] = id & 0xff;
      writeIpv4HeaderChecksum(s, l3, netLen);
    } else {
      const plen = netLen - 40 + segLen;
      s[l3 + 4] = plen >>> 8;
      s[l3 + 5] = plen & 0xff;
    }
    const seq = (seq0 + off) >>> 0;
    s[l4 + 4] = seq >>> 24;
    s[l4 + 5] = (seq >>> 16) & 0xff;
    s[l4 + 6] = (seq >>> 8) & 0xff;
    s[l4 + 7] = seq & 0xff;
    let fl = flags;
    if (k > 0) fl &= ~TCP_CWR;
    if (k < count - 1) fl &= ~(TCP_FIN | TCP_PSH);
    s[l4 + 13] = fl;
    let c: number;
    if (complete) {
      s[l4 + 16] = 0;
      s[l4 + 17] = 0;
      c = ~fold(sumBytes(scratchDv, l4, l4 + segLen) + pseudo + segLen) & 0xffff;
    } else {
      c = fold(pseudo + segLen);
    }
    s[l4 + 16] = c >>> 8;
    s[l4 + 17] = c & 0xff;
    emit(scratchOf(hdrEnd + n));
  }
  return count;
}

/**
 * Fragments an IPv4 datagram without DF (RFC 791): every fragment but the last carries a multiple
 * of 8 bytes; the first keeps all options, the others only those with the copy flag.
 */
function fragmentIpv4(
  f: Uint8Array,
  l3: number,
  ihl: number,
  tot: number,
  frag: number,
  mtu: number,
  emit: (frame: Uint8Array) => void,
): number {
  // Header for the fragments after the first: fixed part plus copied options.
  const h = fragHeader;
  for (let i = 0; i < 20; i++) h[i] = f[l3 + i];
  let hl = 20;
  for (let i = l3 + 20, end = l3 + ihl; i < end;) {
    const t = f[i];
    if (t === 0) break; // end of options
    if (t === 1) { // no-op
      i++;
      continue;
    }
    if (i + 1 >= end) return Dropped.malformed;
    const ol = f[i + 1];
    if (ol < 2 || i + ol > end) return Dropped.malformed;
    if ((t & 0x80) !== 0) {
      for (let j = 0; j < ol; j++) h[hl++] = f[i + j];
    }
    i += ol;
  }
  while ((hl & 3) !== 0) h[hl++] = 0;
  h[0] = 0x40 | (hl >>> 2);

  const data = tot - ihl;
  const firstChunk = ((mtu - ihl) >>> 3) << 3;
  const laterChunk = ((mtu - hl) >>> 3) << 3;
  if (mtu < ihl + 8 || firstChunk <= 0 || laterChunk <= 0) return Dropped.oversize;
  ensureScratch(l3 + 60 + Math.max(firstChunk, laterChunk));
  const s = scratch;
  const baseOff = (frag & 0x1fff) << 3;
  const lastMf = frag & IP_MF;
  const dataStart = f.byteOffset + l3 + ihl;
  let count = 0;
  for (let off = 0; off < data; count++) {
    const first = off === 0;
    const hlen = first ? ihl : hl;
    const n = Math.min(data - off, first ? firstChunk : laterChunk);
    const last = off + n >= data;
    if (first) s.set(f.subarray(0, l3 + ihl), 0);
    else {
      for (let i = 0; i < hl; i++) s[l3 + i] = h[i];
    }
    s.set(new Uint8Array(f.buffer, dataStart + off, n), l3 + hlen);
    const len = hlen + n;
    s[l3 + 2] = len >>> 8;
    s[l3 + 3] = len & 0xff;
    const fo = (last ? lastMf : IP_MF) | ((baseOff + off) >>> 3);
    s[l3 + 6] = fo >>> 8;
    s[l3 + 7] = fo & 0xff;
    writeIpv4HeaderChecksum(s, l3, hlen);
    emit(scratchOf(l3 + len));
    off += n;
  }
  return count;
}
