/**
 * A userspace GRO before injection (issue 17): consecutive TCP segments of one flow, as a burst
 * from the link hands them over, are merged into one super-frame, which the packet injector
 * writes whole as GSO (packet_injector.ts). With frames of 1500 bytes or less (offloads off, or
 * a real NIC on the far side), a per-frame `send` took most of the injecting side's time.
 *
 * The rules are those of Linux's own GRO (net/ipv4/tcp_offload.c), for one flow at a time:
 *   - Ethernet without a VLAN tag; IPv4 without options or fragments, or IPv6 without extension
 *     headers; TCP with data and only ACK (and PSH) set;
 *   - same Ethernet header, addresses, ports, TOS or traffic class and flow label, TTL or hop
 *     limit, ACK number, TCP header length and option bytes (timestamps included);
 *   - the next sequence number, and for IPv4 the next IP ID (or a fixed one with DF);
 *   - every segment as long as the first; a shorter one, or a PSH, ends the chain;
 *   - the merged IP packet stays within 65535 bytes.
 * The first segment's header is kept (its window: Linux keeps it too), with PSH if any had it.
 *
 * Nothing waits for a batch to fill: the owner flushes at the end of the burst (the poller's
 * `defer`), and any frame that does not continue the chain flushes it first, so the order on
 * the wire is the order of arrival.
 */

const ETH_HLEN = 14;
const IPPROTO_TCP = 6;
const TCP_ACK = 0x10;
const TCP_PSH = 0x08;
const IP_DF = 0x40;
/** The largest IP packet a super-frame may hold. */
const MAX_IP = 65535;

export class TcpCoalescer {
  /** Segments merged (beyond the first of each chain), for tests and counters. */
  merged = 0;
  readonly #buf = new Uint8Array(ETH_HLEN + MAX_IP);
  /** Bytes pending in #buf (0: nothing). */
  #len = 0;
  #segments = 0;
  #v4 = false;
  /** Where TCP starts, and its header length. */
  #l4 = 0;
  #th = 0;
  #gsoSize = 0;
  #nextSeq = 0;
  #nextId = 0;
  #firstId = 0;
  /** A short segment or a PSH ended the chain: the next frame starts another. */
  #ended = false;

  constructor(private readonly emit: (frame: Uint8Array) => void) {}

  /**
   * Takes `frame` (lent for the call) into the pending super-frame, or starts one with it:
   * true. False for a frame that cannot be merged, after flushing what was pending: the caller
   * injects it itself, in order.
   */
  add(frame: Uint8Array): boolean {
    const l4 = tcpDataOffset(frame);
    if (l4 < 0) {
      this.flush();
      return false;
    }
    if (this.#len > 0 && !this.#ended && this.#continues(frame, l4)) {
      this.#append(frame, l4);
      return true;
    }
    this.flush();
    this.#start(frame, l4);
    return true;
  }

  /** Emits what is pending: the frame as it came if it is alone, else the super-frame. */
  flush(): void {
    const len = this.#len;
    if (len === 0) return;
    this.#len = 0;
    const b = this.#buf;
    if (this.#segments > 1) {
      const ipLength = this.#v4 ? len - ETH_HLEN : len - ETH_HLEN - 40;
      const at = this.#v4 ? ETH_HLEN + 2 : ETH_HLEN + 4;
      b[at] = ipLength >>> 8;
      b[at + 1] = ipLength & 0xff;
      // Checksums are left as they are: prepareForWire completes the IPv4 header's, and the
      // injector's GSO path writes TCP's pseudo-header sum.
    }
    this.emit(b.subarray(0, len));
  }

  #start(f: Uint8Array, l4: number): void {
    this.#buf.set(f);
    this.#len = f.length;
    this.#segments = 1;
    this.#v4 = f[12] === 0x08;
    this.#l4 = l4;
    this.#th = (f[l4 + 12] >>> 4) << 2;
    this.#gsoSize = f.length - l4 - this.#th;
    this.#nextSeq = (seqOf(f, l4) + this.#gsoSize) >>> 0;
    if (this.#v4) {
      this.#firstId = (f[ETH_HLEN + 4] << 8) | f[ETH_HLEN + 5];
      this.#nextId = (this.#firstId + 1) & 0xffff;
    }
    this.#ended = (f[l4 + 13] & TCP_PSH) !== 0;
  }

  #continues(f: Uint8Array, l4: number): boolean {
    const b = this.#buf;
    const th = this.#th;
    if (l4 !== this.#l4 || ((f[l4 + 12] >>> 4) << 2) !== th) return false;
    const payload = f.length - l4 - th;
    if (payload > this.#gsoSize || this.#len + payload > ETH_HLEN + MAX_IP) return false;
    if (seqOf(f, l4) !== this.#nextSeq) return false;
    // Ethernet header.
    for (let i = 0; i < ETH_HLEN; i++) if (f[i] !== b[i]) return false;
    const l3 = ETH_HLEN;
    if (this.#v4) {
      // TOS, flags (DF), TTL, protocol, addresses; the ID next (or fixed under DF).
      if (f[l3 + 1] !== b[l3 + 1] || f[l3 + 6] !== b[l3 + 6] || f[l3 + 8] !== b[l3 + 8]) {
        return false;
      }
      for (let i = l3 + 12; i < l3 + 20; i++) if (f[i] !== b[i]) return false;
      const id = (f[l3 + 4] << 8) | f[l3 + 5];
      if (id !== this.#nextId && !((f[l3 + 6] & IP_DF) !== 0 && id === this.#firstId)) {
        return false;
      }
    } else {
      // Version, traffic class, flow label; hop limit; addresses.
      for (let i = l3; i < l3 + 4; i++) if (f[i] !== b[i]) return false;
      if (f[l3 + 7] !== b[l3 + 7]) return false;
      for (let i = l3 + 8; i < l3 + 40; i++) if (f[i] !== b[i]) return false;
    }
    // Ports, then the ACK number, then the options.
    for (let i = l4; i < l4 + 4; i++) if (f[i] !== b[i]) return false;
    for (let i = l4 + 8; i < l4 + 12; i++) if (f[i] !== b[i]) return false;
    for (let i = l4 + 20; i < l4 + th; i++) if (f[i] !== b[i]) return false;
    return true;
  }

  #append(f: Uint8Array, l4: number): void {
    const payload = f.subarray(l4 + this.#th);
    this.#buf.set(payload, this.#len);
    this.#len += payload.length;
    this.#segments++;
    this.merged++;
    this.#nextSeq = (this.#nextSeq + payload.length) >>> 0;
    this.#nextId = (this.#nextId + 1) & 0xffff;
    const psh = (f[l4 + 13] & TCP_PSH) !== 0;
    if (psh) this.#buf[this.#l4 + 13] |= TCP_PSH;
    if (psh || payload.length < this.#gsoSize) this.#ended = true;
  }
}

/**
 * Where TCP starts in `f` if it is a segment GRO may merge (see the top), else -1. The IP
 * packet must end the frame: padding would be taken for data.
 */
export function tcpDataOffset(f: Uint8Array): number {
  const len = f.length;
  if (len < ETH_HLEN + 40) return -1;
  const type = (f[12] << 8) | f[13];
  let l4: number;
  if (type === 0x0800) {
    const l3 = ETH_HLEN;
    if (f[l3] !== 0x45 || f[l3 + 9] !== IPPROTO_TCP) return -1;
    // No fragment: MF clear and offset 0 (DF may be set).
    if ((f[l3 + 6] & 0x3f) !== 0 || f[l3 + 7] !== 0) return -1;
    if (((f[l3 + 2] << 8) | f[l3 + 3]) !== len - l3) return -1;
    l4 = l3 + 20;
  } else if (type === 0x86dd) {
    const l3 = ETH_HLEN;
    if (f[l3] >>> 4 !== 6 || f[l3 + 6] !== IPPROTO_TCP) return -1;
    if (((f[l3 + 4] << 8) | f[l3 + 5]) !== len - l3 - 40) return -1;
    l4 = l3 + 40;
  } else {
    return -1;
  }
  if (l4 + 20 > len) return -1;
  const th = (f[l4 + 12] >>> 4) << 2;
  if (th < 20 || l4 + th >= len) return -1; // no data: a pure ACK goes as it is
  // ACK, maybe PSH; nothing else (SYN, FIN, RST, URG, ECE, CWR end or start things).
  if ((f[l4 + 13] & ~TCP_PSH) !== TCP_ACK) return -1;
  return l4;
}

function seqOf(f: Uint8Array, l4: number): number {
  return ((f[l4 + 4] << 24) | (f[l4 + 5] << 16) | (f[l4 + 6] << 8) | f[l4 + 7]) >>> 0;
}
