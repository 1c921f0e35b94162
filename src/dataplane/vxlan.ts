/**
 * VXLAN (RFC 7348): the 8-byte header that VNET's plain UDP transport puts in front of each
 * Ethernet frame, so that a VNET server talks to a Linux `vxlan` device, Open vSwitch or a switch
 * that terminates VXLAN.
 *
 *    0                   1                   2                   3
 *   +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
 *   |R|R|R|R|I|R|R|R|            Reserved                           |
 *   +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
 *   |                VXLAN Network Identifier (VNI) |   Reserved    |
 *   +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
 *
 * The inner frame follows without its FCS. Sent: I set, every reserved bit 0, which matters:
 * Linux (6.18, tried) drops a datagram with any reserved bit set, as a frame error. Received: I
 * must be set, the reserved bits are ignored, as RFC 7348 section 5 says. VXLAN has no
 * fragmentation of its own: a VTEP must not fragment, and may drop fragmented VXLAN datagrams
 * (section 4.3); see mtu.ts for frames larger than the path.
 *
 * Codecs only: no allocation, no sockets (the outer IP and UDP headers are the kernel's).
 */

import { ETHERTYPE_IPV4, ETHERTYPE_IPV6, etherTypeAt, networkOffset } from "./headers.ts";

/** The IANA port of VXLAN (RFC 7348 section 5), the destination of every datagram by default. */
export const VXLAN_PORT = 4789;
export const VXLAN_HEADER_LENGTH = 8;
/** VNIs are 24 bits. */
export const VXLAN_MAX_VNI = 0xffffff;
/**
 * Bytes between the path MTU and the largest inner IP packet: outer IPv4 (20) or IPv6 (40), UDP
 * (8), VXLAN (8) and the inner Ethernet header (14). As Linux sizes a `vxlan` device (MTU 1450
 * on a 1500 path). An inner VLAN tag takes 4 more.
 */
export const VXLAN_OVERHEAD_IPV4 = 50;
export const VXLAN_OVERHEAD_IPV6 = 70;
/** The source ports RFC 7348 recommends (the dynamic range, RFC 6335). */
export const VXLAN_SOURCE_PORT_MIN = 49152;
export const VXLAN_SOURCE_PORT_MAX = 65535;

const FLAG_I = 0x08;
const ETH_HLEN = 14;

/** What `decodeVxlan` returns for a datagram it refuses: negative, so any result ≥ 0 is a VNI. */
export const VxlanInvalid = {
  /** Shorter than the header and an inner Ethernet header. */
  truncated: -1,
  /** The I flag is clear: the VNI is not valid (RFC 7348 section 5). */
  noVni: -2,
} as const;

/**
 * Writes the VXLAN header for `vni` into the 8 bytes of `buf` before `frameOffset`, where the
 * caller left room in front of the frame. Returns the offset of the datagram (the header):
 * `buf[frameOffset - 8, frameOffset + frame length)` is the UDP payload. Throws a RangeError for
 * a VNI outside 0..2^24-1 or no room in front.
 */
export function encodeVxlan(buf: Uint8Array, frameOffset: number, vni: number): number {
  const at = frameOffset - VXLAN_HEADER_LENGTH;
  if (at < 0 || frameOffset > buf.length) throw new RangeError("no room for the VXLAN header");
  if (!Number.isInteger(vni) || vni < 0 || vni > VXLAN_MAX_VNI) {
    throw new RangeError(`VNI ${vni} is not 24 bits`);
  }
  buf[at] = FLAG_I;
  buf[at + 1] = 0;
  buf[at + 2] = 0;
  buf[at + 3] = 0;
  buf[at + 4] = vni >>> 16;
  buf[at + 5] = (vni >>> 8) & 0xff;
  buf[at + 6] = vni & 0xff;
  buf[at + 7] = 0;
  return at;
}

/**
 * Validates the VXLAN datagram (UDP payload) at `buf[offset, offset + length)` and returns its
 * VNI, or a negative `VxlanInvalid` code. The inner frame is
 * `buf[offset + 8, offset + length)`; checking that the VNI is one the receiver serves is its
 * business.
 */
export function decodeVxlan(
  buf: Uint8Array,
  offset = 0,
  length = buf.length - offset,
): number {
  if (length < VXLAN_HEADER_LENGTH + ETH_HLEN || offset < 0 || offset + length > buf.length) {
    return VxlanInvalid.truncated;
  }
  if ((buf[offset] & FLAG_I) === 0) return VxlanInvalid.noVni;
  return (buf[offset + 4] << 16) | (buf[offset + 5] << 8) | buf[offset + 6];
}

/**
 * The outer UDP source port for `frame` (RFC 7348 section 5): a hash of the inner flow, so that
 * the routers between the VTEPs spread flows over equal-cost paths (ECMP, LAG) while each flow
 * keeps one path and its order. The flow, like Linux's flow dissector: for IPv4 and IPv6 (behind
 * at most one VLAN tag) the addresses, the protocol and, for TCP, UDP, SCTP and UDP-Lite outside
 * later fragments, the ports; for anything else the MACs and the EtherType. FNV-1a, scaled into
 * `[min, max]` by multiplication (as the kernel's `udp_flow_src_port`). `seed` varies the mapping
 * per sender (Linux seeds at random at boot).
 */
export function vxlanSourcePort(
  frame: Uint8Array,
  seed = 0,
  min = VXLAN_SOURCE_PORT_MIN,
  max = VXLAN_SOURCE_PORT_MAX,
): number {
  let h = (0x811c9dc5 ^ seed) >>> 0;
  const n = frame.length;
  const l3 = networkOffset(frame);
  const type = l3 === 0 ? -1 : etherTypeAt(frame, l3);
  let l4 = 0;
  let proto = -1;
  if (type === ETHERTYPE_IPV4 && n >= l3 + 20 && frame[l3] >>> 4 === 4) {
    for (let i = l3 + 12; i < l3 + 20; i++) h = fnv(h, frame[i]);
    proto = frame[l3 + 9];
    const fragmentOffset = ((frame[l3 + 6] & 0x1f) << 8) | frame[l3 + 7];
    if (fragmentOffset === 0) l4 = l3 + ((frame[l3] & 0x0f) << 2);
  } else if (type === ETHERTYPE_IPV6 && n >= l3 + 40 && frame[l3] >>> 4 === 6) {
    for (let i = l3 + 8; i < l3 + 40; i++) h = fnv(h, frame[i]);
    proto = frame[l3 + 6];
    l4 = l3 + 40;
  } else {
    for (let i = 0; i < Math.min(n, 12); i++) h = fnv(h, frame[i]);
    h = fnv(fnv(h, type >>> 8), type & 0xff);
  }
  if (proto >= 0) {
    h = fnv(h, proto);
    const ported = proto === 6 || proto === 17 || proto === 132 || proto === 136;
    if (ported && l4 > 0 && n >= l4 + 4) {
      for (let i = l4; i < l4 + 4; i++) h = fnv(h, frame[i]);
    }
  }
  // Multiplying keeps FNV's best-mixed bits, the high ones (a modulo would take the low ones).
  return min + Math.floor(((h >>> 0) * (max - min + 1)) / 0x100000000);
}

/** One step of FNV-1a (32 bits). */
function fnv(h: number, byte: number): number {
  return Math.imul(h ^ byte, 0x01000193);
}
