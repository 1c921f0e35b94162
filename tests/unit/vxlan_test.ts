import { assert, assertEquals, assertStrictEquals, assertThrows } from "./assert.ts";
import {
  decodeVxlan,
  encodeVxlan,
  VXLAN_HEADER_LENGTH,
  VXLAN_MAX_VNI,
  VXLAN_OVERHEAD_IPV4,
  VXLAN_OVERHEAD_IPV6,
  VXLAN_PORT,
  VXLAN_SOURCE_PORT_MAX,
  VXLAN_SOURCE_PORT_MIN,
  VxlanInvalid,
  vxlanSourcePort,
} from "../../src/dataplane/vxlan.ts";

const hex = (s: string) =>
  new Uint8Array(s.replace(/\s+/g, "").match(/../g)!.map((h) => parseInt(h, 16)));

/**
 * The UDP payload of a datagram sent by Linux 6.18's vxlan driver (`ip link add vx0 type vxlan
 * id 42 dstport 4789 remote ... local ...`, bridged to a veth; `ping -s 56 -p 5a` through it;
 * captured with tcpdump on the underlay), outer UDP port 54800 → 4789: the header, then an
 * ICMP echo request 192.168.77.1 → 192.168.77.2.
 */
const KERNEL_DATAGRAM = hex(
  "0800000000002a00" + // flags I, reserved, VNI 42, reserved
    "020000000002 020000000001 0800" +
    "45000054 7a2c4000 4001a528 c0a84d01 c0a84d02" +
    "0800032a 2aea0001 dc670f6b 00000000 cc080300 00000000" + "5a".repeat(40),
);

Deno.test("constants: the IANA port and the overheads Linux sizes a vxlan device by", () => {
  assertStrictEquals(VXLAN_PORT, 4789);
  assertStrictEquals(VXLAN_HEADER_LENGTH, 8);
  assertStrictEquals(VXLAN_MAX_VNI, 2 ** 24 - 1);
  assertStrictEquals(1500 - VXLAN_OVERHEAD_IPV4, 1450); // `ip link add type vxlan` on a 1500 path
  assertStrictEquals(VXLAN_OVERHEAD_IPV6 - VXLAN_OVERHEAD_IPV4, 20);
});

Deno.test("encodeVxlan writes the kernel's header in front of the frame", () => {
  const inner = KERNEL_DATAGRAM.subarray(8);
  const buf = new Uint8Array(100 + inner.length).fill(0xee); // reserved bytes must be zeroed
  buf.set(inner, 100);
  const at = encodeVxlan(buf, 100, 42);
  assertStrictEquals(at, 92);
  assertEquals(buf.subarray(at, 100 + inner.length), KERNEL_DATAGRAM);
  assertStrictEquals(buf[91], 0xee, "nothing before the header is touched");
});

Deno.test("encodeVxlan puts the VNI big-endian in bytes 4..6", () => {
  const buf = new Uint8Array(8 + 14);
  assertStrictEquals(encodeVxlan(buf, 8, 0xabcdef), 0);
  assertEquals([...buf.subarray(0, 8)], [0x08, 0, 0, 0, 0xab, 0xcd, 0xef, 0]);
  encodeVxlan(buf, 8, 0);
  assertEquals([...buf.subarray(0, 8)], [0x08, 0, 0, 0, 0, 0, 0, 0]);
  encodeVxlan(buf, 8, VXLAN_MAX_VNI);
  assertEquals([...buf.subarray(0, 8)], [0x08, 0, 0, 0, 0xff, 0xff, 0xff, 0]);
});

Deno.test("encodeVxlan refuses a VNI beyond 24 bits and a frame with no room in front", () => {
  const buf = new Uint8Array(64);
  for (const vni of [-1, 2 ** 24, 1.5, NaN]) {
    assertThrows(() => encodeVxlan(buf, 8, vni), RangeError);
  }
  assertThrows(() => encodeVxlan(buf, 7, 1), RangeError);
  assertThrows(() => encodeVxlan(buf, 65, 1), RangeError);
  assertStrictEquals(encodeVxlan(buf, 64, 1), 56);
});

Deno.test("decodeVxlan reads the kernel's datagram", () => {
  assertStrictEquals(decodeVxlan(KERNEL_DATAGRAM), 42);
  const inner = KERNEL_DATAGRAM.subarray(VXLAN_HEADER_LENGTH);
  assertEquals([...inner.subarray(12, 14)], [0x08, 0x00]); // the inner frame starts at 8
});

Deno.test("decodeVxlan ignores reserved bits but needs the I flag", () => {
  const d = KERNEL_DATAGRAM.slice();
  d[0] = 0xff; // every R bit set, and I
  d[1] =
    d[2] =
    d[3] =
    d[7] =
      0xff;
  assertStrictEquals(decodeVxlan(d), 42);
  d[0] = 0xf7; // every bit but I
  assertStrictEquals(decodeVxlan(d), VxlanInvalid.noVni);
  d[0] = 0;
  assertStrictEquals(decodeVxlan(d), VxlanInvalid.noVni);
});

Deno.test("decodeVxlan needs the header and an inner Ethernet header", () => {
  assertStrictEquals(decodeVxlan(KERNEL_DATAGRAM.subarray(0, 21)), VxlanInvalid.truncated);
  assertStrictEquals(decodeVxlan(KERNEL_DATAGRAM.subarray(0, 22)), 42);
  assertStrictEquals(decodeVxlan(new Uint8Array(0)), VxlanInvalid.truncated);
});

Deno.test("decodeVxlan reads a datagram inside a larger buffer, within its bounds", () => {
  const buf = new Uint8Array(300);
  buf.set(KERNEL_DATAGRAM, 100);
  assertStrictEquals(decodeVxlan(buf, 100, KERNEL_DATAGRAM.length), 42);
  assertStrictEquals(decodeVxlan(buf, 100), 42);
  assertStrictEquals(decodeVxlan(buf, 0, 22), VxlanInvalid.noVni);
  assertStrictEquals(decodeVxlan(buf, 290, 22), VxlanInvalid.truncated, "past the end");
  assertStrictEquals(decodeVxlan(buf, -1, 30), VxlanInvalid.truncated);
});

Deno.test("encode then decode round-trips every sort of VNI", () => {
  const buf = new Uint8Array(8 + 60);
  for (let k = 0; k < 24; k++) {
    for (const vni of [1 << k, (1 << k) - 1, (2 ** 24 - 1) ^ (1 << k)]) {
      assertStrictEquals(decodeVxlan(buf, encodeVxlan(buf, 8, vni)), vni);
    }
  }
});

// ---------------------------------------------------------------------------------------------
// The outer source port

/** An Ethernet frame: IPv4 (or IPv6) from `src` to `dst`, `proto`, ports, payload byte `fill`. */
function flowFrame(o: {
  v6?: boolean;
  vlan?: boolean;
  src?: number;
  dst?: number;
  proto?: number;
  sport?: number;
  dport?: number;
  fill?: number;
  length?: number;
  ttl?: number;
  id?: number;
  fragmentOffset?: number;
}): Uint8Array {
  const f = new Uint8Array(o.length ?? 200).fill(o.fill ?? 0);
  f.set([2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1]);
  let l3 = 14;
  if (o.vlan) {
    f.set([0x81, 0x00, 0x00, 0x64], 12);
    l3 = 18;
  }
  const src = o.src ?? 1;
  const dst = o.dst ?? 2;
  let l4: number;
  if (o.v6) {
    f.set([0x86, 0xdd], l3 - 2);
    f.set([0x60, 0, 0, 0, 0, 100, o.proto ?? 6, o.ttl ?? 64], l3);
    f.set([0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, src >>> 24, src >>> 16, src >>> 8, src], l3 + 8);
    f.set([0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, dst >>> 24, dst >>> 16, dst >>> 8, dst], l3 + 24);
    l4 = l3 + 40;
  } else {
    const fo = o.fragmentOffset ?? 0;
    const id = o.id ?? 0;
    f.set([0x08, 0x00], l3 - 2);
    f.set([0x45, 0, 0, 100, id >>> 8, id & 255, fo >>> 8, fo & 255, o.ttl ?? 64, o.proto ?? 6], l3);
    f.set([10, src >>> 16, src >>> 8, src, 10, dst >>> 16, dst >>> 8, dst], l3 + 12);
    l4 = l3 + 20;
  }
  const sport = o.sport ?? 40000;
  const dport = o.dport ?? 80;
  f.set([sport >>> 8, sport & 255, dport >>> 8, dport & 255], l4);
  return f;
}

Deno.test("vxlanSourcePort stays in the RFC's dynamic range, or the one given", () => {
  for (let i = 0; i < 2000; i++) {
    const f = flowFrame({ src: i, sport: i * 7, v6: i % 2 === 0 });
    const p = vxlanSourcePort(f);
    assert(p >= VXLAN_SOURCE_PORT_MIN && p <= VXLAN_SOURCE_PORT_MAX && Number.isInteger(p));
    const q = vxlanSourcePort(f, 0, 32768, 60999); // Linux's ip_local_port_range
    assert(q >= 32768 && q <= 60999 && Number.isInteger(q));
  }
  assertStrictEquals(vxlanSourcePort(flowFrame({}), 0, 5000, 5000), 5000);
  const ends = new Set<number>();
  for (let i = 0; i < 64; i++) ends.add(vxlanSourcePort(flowFrame({ src: i }), 0, 5000, 5001));
  assertEquals([...ends].sort(), [5000, 5001], "both ends of the range are used");
});

Deno.test("vxlanSourcePort: one flow, one port, whatever its packets carry", () => {
  for (const v6 of [false, true]) {
    const p = vxlanSourcePort(flowFrame({ v6 }));
    assertStrictEquals(vxlanSourcePort(flowFrame({ v6, fill: 0x5a, length: 1514 })), p);
    assertStrictEquals(vxlanSourcePort(flowFrame({ v6, ttl: 3, id: 999 })), p);
    assertStrictEquals(vxlanSourcePort(flowFrame({ v6, vlan: true })), p, "the tag is not flow");
    assert(vxlanSourcePort(flowFrame({ v6, sport: 40001 })) !== p, "another port, another flow");
    assert(vxlanSourcePort(flowFrame({ v6, proto: 17 })) !== p, "another protocol");
    assert(vxlanSourcePort(flowFrame({ v6, dst: 3 })) !== p, "another address");
  }
});

Deno.test("vxlanSourcePort: ports only where the protocol has them and the fragment holds them", () => {
  // GRE (47) has no ports: its first bytes do not make flows.
  const gre = vxlanSourcePort(flowFrame({ proto: 47 }));
  assertStrictEquals(vxlanSourcePort(flowFrame({ proto: 47, sport: 1234 })), gre);
  // A later IPv4 fragment carries payload where the ports were.
  const later = vxlanSourcePort(flowFrame({ fragmentOffset: 185 }));
  assertStrictEquals(vxlanSourcePort(flowFrame({ fragmentOffset: 185, sport: 1 })), later);
  // SCTP (132) and UDP-Lite (136) do have ports.
  for (const proto of [132, 136]) {
    const p = vxlanSourcePort(flowFrame({ proto }));
    assert(vxlanSourcePort(flowFrame({ proto, sport: 1 })) !== p);
  }
});

Deno.test("vxlanSourcePort: frames other than IP go by their MACs and EtherType", () => {
  const arp = flowFrame({});
  arp.set([0x08, 0x06], 12);
  const p = vxlanSourcePort(arp);
  arp[20] ^= 1; // the ARP body is not hashed
  assertStrictEquals(vxlanSourcePort(arp), p);
  arp[11] ^= 1; // the source MAC is
  assert(vxlanSourcePort(arp) !== p);
  assert(vxlanSourcePort(new Uint8Array(5)) >= VXLAN_SOURCE_PORT_MIN, "a runt still gets a port");
});

Deno.test("vxlanSourcePort spreads flows evenly, and the seed changes the mapping", () => {
  const buckets = new Array(16).fill(0);
  let moved = 0;
  const flows = 32768;
  for (let i = 0; i < flows; i++) {
    const f = flowFrame({ src: i >>> 6, sport: 30000 + (i & 63) });
    const p = vxlanSourcePort(f);
    buckets[Math.floor(((p - VXLAN_SOURCE_PORT_MIN) * 16) / 16384)]++;
    if (vxlanSourcePort(f, 0x9e3779b9) !== p) moved++;
  }
  const mean = flows / 16;
  for (const b of buckets) assert(Math.abs(b - mean) < mean * 0.1, `uneven: ${buckets}`);
  assert(moved > flows * 0.99, `the seed moved only ${moved} flows`);
});
