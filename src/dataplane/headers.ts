/**
 * Where a frame's headers start: the network header after at most one VLAN tag, and the
 * upper-layer header after IPv6's extension headers. Shared by the VXLAN source-port hash and
 * the MTU helpers (mtu.ts); pure, no allocation.
 */

export const ETHERTYPE_IPV4 = 0x0800;
export const ETHERTYPE_IPV6 = 0x86dd;
const ETHERTYPE_8021Q = 0x8100;
const ETHERTYPE_8021AD = 0x88a8;

const IPV6_HOPOPTS = 0;
const IPV6_ROUTING = 43;
const IPV6_FRAGMENT = 44;
const IPV6_DSTOPTS = 60;

/**
 * The offset of the frame's network header: 14, or 18 behind one 802.1Q or 802.1ad tag. Its
 * EtherType is the two bytes just before it. 0 when the frame is too short to hold its Ethernet
 * header (and tag).
 */
export function networkOffset(frame: Uint8Array): number {
  if (frame.length < 14) return 0;
  const type = (frame[12] << 8) | frame[13];
  if (type !== ETHERTYPE_8021Q && type !== ETHERTYPE_8021AD) return 14;
  return frame.length < 18 ? 0 : 18;
}

/** The EtherType of the frame whose network header is at `l3` (from `networkOffset`). */
export function etherTypeAt(frame: Uint8Array, l3: number): number {
  return (frame[l3 - 2] << 8) | frame[l3 - 1];
}

/**
 * The upper-layer header of the IPv6 packet at `l3` whose payload ends at `end`: hop-by-hop,
 * routing and destination options headers are skipped, and a fragment header when it is the
 * first fragment. Packed into one number so that nothing is allocated: the header's offset
 * times 256 plus its protocol number (read them with `>>> 8` and `& 0xff`). -1 when the chain
 * is truncated or this is a later fragment, which holds no upper-layer header.
 */
export function ipv6UpperLayer(frame: Uint8Array, l3: number, end: number): number {
  let nh = frame[l3 + 6];
  let at = l3 + 40;
  for (;;) {
    if (nh === IPV6_HOPOPTS || nh === IPV6_ROUTING || nh === IPV6_DSTOPTS) {
      if (at + 8 > end) return -1;
      nh = frame[at];
      at += (frame[at + 1] + 1) << 3;
    } else if (nh === IPV6_FRAGMENT) {
      if (at + 8 > end || (((frame[at + 2] << 8) | frame[at + 3]) & 0xfff8) !== 0) return -1;
      nh = frame[at];
      at += 8;
    } else {
      return at > end ? -1 : at * 256 + nh;
    }
  }
}
