import { assert, assertEquals, assertStrictEquals } from "./assert.ts";
import {
  Dropped,
  type DropReason,
  internetChecksum,
  prepareForWire,
} from "../../src/dataplane/offload.ts";
import type { GsoFrame } from "../../src/dataplane/ports.ts";

// ---------------------------------------------------------------------------------------------
// Independent reference implementation and helpers (deliberately naive).

function refSum(bytes: ArrayLike<number>): number {
  let sum = 0;
  for (let i = 0; i < bytes.length; i += 2) {
    sum += (bytes[i] << 8) + (i + 1 < bytes.length ? bytes[i + 1] : 0);
  }
  while (sum > 0xffff) sum = (sum & 0xffff) + Math.floor(sum / 0x10000);
  return sum;
}
function refChecksum(bytes: ArrayLike<number>): number {
  return ~refSum(bytes) & 0xffff;
}
const u16 = (b: Uint8Array, o: number) => (b[o] << 8) | b[o + 1];
const u32 = (b: Uint8Array, o: number) =>
  ((b[o] << 24) | (b[o + 1] << 16) | (b[o + 2] << 8) | b[o + 3]) >>> 0;
const put16 = (b: Uint8Array, o: number, v: number) => {
  b[o] = (v >>> 8) & 0xff;
  b[o + 1] = v & 0xff;
};
const hex = (s: string) =>
  new Uint8Array(s.replace(/\s+/g, "").match(/../g)!.map((h) => parseInt(h, 16)));

interface Parsed {
  l3: number;
  v6: boolean;
  ipLen: number; // bytes of IP packet (header + payload)
  netLen: number; // IP header (+ IPv6 ext headers)
  proto: number;
  l4: number;
  l4len: number;
}

/** Independent parser used by the assertions (one VLAN tag, IPv4 options, IPv6 HBH only). */
function parse(f: Uint8Array): Parsed {
  let l3 = 14;
  let type = u16(f, 12);
  if (type === 0x8100 || type === 0x88a8) {
    type = u16(f, 16);
    l3 = 18;
  }
  if (type === 0x0800) {
    const ihl = (f[l3] & 15) * 4;
    const ipLen = u16(f, l3 + 2);
    return {
      l3,
      v6: false,
      ipLen,
      netLen: ihl,
      proto: f[l3 + 9],
      l4: l3 + ihl,
      l4len: ipLen - ihl,
    };
  }
  assertEquals(type, 0x86dd);
  let nh = f[l3 + 6];
  let l4 = l3 + 40;
  if (nh === 0) {
    nh = f[l4];
    l4 += (f[l4 + 1] + 1) * 8;
  }
  const ipLen = 40 + u16(f, l3 + 4);
  return { l3, v6: true, ipLen, netLen: l4 - l3, proto: nh, l4, l4len: l3 + ipLen - l4 };
}

function pseudoHeader(f: Uint8Array, p: Parsed, len: number): number[] {
  const out: number[] = [];
  if (p.v6) {
    for (let i = 8; i < 40; i++) out.push(f[p.l3 + i]);
    out.push(len >>> 24, (len >>> 16) & 255, (len >>> 8) & 255, len & 255, 0, 0, 0, p.proto);
  } else {
    for (let i = 12; i < 20; i++) out.push(f[p.l3 + i]);
    out.push(0, p.proto, len >>> 8, len & 255);
  }
  return out;
}

/** Sum over pseudo header + L4 bytes (checksum field included); 0xffff means valid. */
function l4Sum(f: Uint8Array): number {
  const p = parse(f);
  const len = p.proto === 17 ? u16(f, p.l4 + 4) : p.l4len;
  return refSum([...pseudoHeader(f, p, len), ...f.subarray(p.l4, p.l4 + len)]);
}
function ipHeaderOk(f: Uint8Array): boolean {
  const p = parse(f);
  return p.v6 || refSum(f.subarray(p.l3, p.l3 + p.netLen)) === 0xffff;
}
function l4Ok(f: Uint8Array): boolean {
  return l4Sum(f) === 0xffff;
}

interface Spec {
  v6?: boolean;
  vlan?: number;
  proto?: 6 | 17;
  payload?: Uint8Array;
  seq?: number;
  flags?: number;
  ts?: boolean;
  id?: number;
  df?: boolean;
  ipOptions?: number[];
  hopByHop?: boolean;
  /** "correct", "partial" (pseudo-header sum only, like CHECKSUM_PARTIAL), "garbage", "zero" */
  csum?: "correct" | "partial" | "garbage" | "zero";
  pad?: number;
}

/** Builds an Ethernet frame. IPv4 header checksum is always right. */
function build(s: Spec): Uint8Array {
  const proto = s.proto ?? 6;
  const payload = s.payload ?? new Uint8Array(0);
  const l2: number[] = [2, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 2];
  if (s.vlan !== undefined) l2.push(0x81, 0x00, (s.vlan >>> 8) & 15, s.vlan & 255);
  l2.push(...(s.v6 ? [0x86, 0xdd] : [0x08, 0x00]));
  let l4h: number[];
  if (proto === 6) {
    const opts = s.ts ? [1, 1, 8, 10, 0x12, 0x34, 0x56, 0x78, 0x9a, 0xbc, 0xde, 0xf0] : [];
    const seq = s.seq ?? 0x01020304;
    l4h = [
      0x9c,
      0x40,
      0x1f,
      0x90,
      seq >>> 24,
      (seq >>> 16) & 255,
      (seq >>> 8) & 255,
      seq & 255,
      0xaa,
      0xbb,
      0xcc,
      0xdd,
      ((20 + opts.length) / 4) << 4,
      s.flags ?? 0x10,
      0x01,
      0xf5,
      0,
      0,
      0,
      0,
      ...opts,
    ];
  } else {
    const ulen = 8 + payload.length;
    l4h = [0x9c, 0x41, 0x00, 0x35, ulen >>> 8, ulen & 255, 0, 0];
  }
  const l4len = l4h.length + payload.length;
  let net: number[];
  if (s.v6) {
    const hbh = s.hopByHop ? [proto, 0, 1, 4, 0, 0, 0, 0] : [];
    const plen = hbh.length + l4len;
    net = [0x60, 0, 0, 0, plen >>> 8, plen & 255, s.hopByHop ? 0 : proto, 64];
    net.push(0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1);
    net.push(0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2);
    net.push(...hbh);
  } else {
    const opt = s.ipOptions ?? [];
    const ihl = 20 + opt.length;
    const tot = ihl + l4len;
    const id = s.id ?? 0x1234;
    net = [
      0x40 | (ihl / 4),
      0,
      tot >>> 8,
      tot & 255,
      id >>> 8,
      id & 255,
      s.df === false ? 0 : 0x40,
    ];
    net.push(0, 64, proto, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2, ...opt);
  }
  const pad = s.pad ?? 0;
  const f = new Uint8Array(l2.length + net.length + l4len + pad);
  f.set(l2, 0);
  f.set(net, l2.length);
  f.set(l4h, l2.length + net.length);
  f.set(payload, l2.length + net.length + l4h.length);
  for (let i = f.length - pad; i < f.length; i++) f[i] = 0xee; // junk padding
  const p = parse(f);
  if (!s.v6) put16(f, p.l3 + 10, refChecksum(f.subarray(p.l3, p.l4)));
  const ck = p.l4 + (proto === 6 ? 16 : 6);
  const mode = s.csum ?? "correct";
  if (mode === "correct") {
    let c = refChecksum([...pseudoHeader(f, p, p.l4len), ...f.subarray(p.l4, p.l4 + p.l4len)]);
    if (proto === 17 && c === 0) c = 0xffff;
    put16(f, ck, c);
  } else if (mode === "partial") {
    put16(f, ck, refSum(pseudoHeader(f, p, p.l4len)));
  } else if (mode === "garbage") {
    put16(f, ck, 0xbeef);
  }
  return f;
}

function bytes(n: number, seed = 1): Uint8Array {
  const b = new Uint8Array(n);
  let x = seed;
  for (let i = 0; i < n; i++) {
    x = (x * 1103515245 + 12345) >>> 0;
    b[i] = x >>> 24;
  }
  return b;
}

/** Runs prepareForWire and returns copies of what it emitted plus the views themselves. */
function run(frame: Uint8Array, mtu = 1500): { out: Uint8Array[]; views: Uint8Array[]; n: number } {
  const out: Uint8Array[] = [];
  const views: Uint8Array[] = [];
  const n = prepareForWire(frame, mtu, (f) => {
    views.push(f);
    out.push(f.slice());
  });
  assertEquals(n, out.length);
  return { out, views, n };
}

function expectDrop(frame: Uint8Array, reason: DropReason, mtu = 1500) {
  const emitted: Uint8Array[] = [];
  const n = prepareForWire(frame, mtu, (f) => emitted.push(f));
  assertEquals(emitted.length, 0, "a dropped frame emitted something");
  assertEquals(n, Dropped[reason], `expected a drop as ${reason}`);
}

// ---------------------------------------------------------------------------------------------
// Checksum primitive

Deno.test("internetChecksum: RFC 1071 example and the classic IPv4 header", () => {
  // RFC 1071 section 3: 00 01 f2 03 f4 f5 f6 f7 sums to ddf2, checksum 220d.
  assertEquals(internetChecksum(hex("0001f203f4f5f6f7")), 0x220d);
  // IPv4 header 4500 0073 0000 4000 4011 [b861] c0a8 0001 c0a8 00c7.
  const h = hex("450000730000400040110000c0a80001c0a800c7");
  assertEquals(internetChecksum(h), 0xb861);
  assertEquals(refChecksum(h), 0xb861);
});

Deno.test("internetChecksum matches the naive reference at every length and alignment", () => {
  const big = bytes(70000, 7);
  for (let start = 0; start < 8; start++) {
    for (const len of [0, 1, 2, 3, 7, 15, 16, 17, 31, 33, 63, 1480, 1481, 9001, 65535]) {
      const view = big.subarray(start, start + len);
      assertEquals(internetChecksum(view), refChecksum(view), `start ${start} len ${len}`);
    }
  }
  assertEquals(internetChecksum(new Uint8Array(64)), 0xffff);
  assertEquals(internetChecksum(new Uint8Array(64).fill(0xff)), 0);
});

// ---------------------------------------------------------------------------------------------
// Real packets captured with `tcpdump -xx` on a veth pair (tx checksum offload off on one side,
// on on the other; tcpdump's verdicts were "[udp sum ok]", "cksum 0xd8c1 (correct)",
// "cksum 0x14f7 (incorrect -> 0x8a62)" and "cksum 0x14ef (incorrect -> 0xb768)").

const REAL_UDP4 = "06d7ff868016eadf56ff240408004500002e0d0c4000401118eb0a6300010a630002" +
  "cd9814e9001a93f168656c6c6f20766e6574206f66666c6f6164";
const REAL_TCP4_PSH = "06d7ff868016eadf56ff2404080045000046383b40004006edae0a6300010a630002" +
  "c9621f909ceabf5c709cb3808018003fd8c100000101080a1ed896180867838b" +
  "474554202f20485454502f312e300d0a0d0a";
const REAL_TCP4_SYNACK_PARTIAL = "eadf56ff240406d7ff86801608004500003c0000400040" +
  "0625f40a6300020a6300011f90c962709cb37f9ceabf5ca012fe8814f70000020405b40402080a" +
  "0867838b1ed896180103030a";
const REAL_TCP4_ACK_PARTIAL = "eadf56ff240406d7ff86801608004500003414e54000400611170a630002" +
  "0a6300011f90c962709cb3809ceabf6e8010004014ef00000101080a0867838b1ed89618";
const REAL_UDP6 = "06d7ff868016eadf56ff240486dd6009a84c00151140fd00009900000000000000000000" +
  "0001fd00009900000000000000000000000291bc14e90015e79c68656c6c6f20766e6574207636";

Deno.test("real packets with correct checksums are emitted untouched, as the same view", () => {
  for (const h of [REAL_UDP4, REAL_TCP4_PSH, REAL_UDP6]) {
    const f = hex(h);
    const before = f.slice();
    const { views } = run(f);
    assertEquals(views.length, 1);
    assertStrictEquals(views[0], f);
    assertEquals(f, before);
  }
});

Deno.test("real partial-checksum packets get the checksum tcpdump computed", () => {
  const syn = hex(REAL_TCP4_SYNACK_PARTIAL);
  run(syn);
  assertEquals(u16(syn, 14 + 20 + 16), 0x8a62);
  const ack = hex(REAL_TCP4_ACK_PARTIAL);
  run(ack);
  assertEquals(u16(ack, 14 + 20 + 16), 0xb768);
  // IPv6 UDP with the checksum zeroed (illegal on IPv6) is completed to the real value.
  const u6 = hex(REAL_UDP6);
  put16(u6, 14 + 40 + 6, 0);
  run(u6);
  assertEquals(u16(u6, 14 + 40 + 6), 0xe79c);
  // IPv4 UDP with its checksum wrong is rewritten.
  const u4 = hex(REAL_UDP4);
  put16(u4, 14 + 20 + 6, 0x1234);
  run(u4);
  assertEquals(u16(u4, 14 + 20 + 6), 0x93f1);
  // IPv4 header checksum wrong is rewritten.
  const h4 = hex(REAL_TCP4_PSH);
  put16(h4, 14 + 10, 0);
  run(h4);
  assertEquals(h4, hex(REAL_TCP4_PSH));
});

// ---------------------------------------------------------------------------------------------
// Checksum repair on built frames

Deno.test("partial and wrong checksums are repaired in place, same view emitted", () => {
  for (const v6 of [false, true]) {
    for (const proto of [6, 17] as const) {
      for (const csum of ["partial", "garbage"] as const) {
        for (const len of [0, 1, 17, 1000]) {
          const f = build({ v6, proto, csum, payload: bytes(len, len + 3), ts: true });
          assert(!l4Ok(f));
          const { views } = run(f);
          assertEquals(views.length, 1);
          assertStrictEquals(views[0], f);
          assert(l4Ok(f), `v6 ${v6} proto ${proto} ${csum} len ${len}`);
          assert(ipHeaderOk(f));
          assertEquals(f, build({ v6, proto, payload: bytes(len, len + 3), ts: true }));
        }
      }
    }
  }
});

Deno.test("correct frames are neither copied nor modified", () => {
  for (const v6 of [false, true]) {
    for (const proto of [6, 17] as const) {
      const f = build({ v6, proto, payload: bytes(1400, 9), ts: true });
      const before = f.slice();
      const { views } = run(f);
      assertStrictEquals(views[0], f);
      assertEquals(f, before);
    }
  }
});

Deno.test("a view into a larger buffer at an odd offset is handled", () => {
  const f = build({ proto: 6, csum: "partial", payload: bytes(999, 4) });
  const backing = new Uint8Array(f.length + 11).fill(0x5a);
  backing.set(f, 5);
  const view = backing.subarray(5, 5 + f.length);
  const { views } = run(view);
  assertStrictEquals(views[0], view);
  assert(l4Ok(view));
  assertEquals(backing[4], 0x5a);
  assertEquals(backing[5 + f.length], 0x5a);
});

Deno.test("Ethernet padding is ignored: checksums cover the IP length only", () => {
  const f = build({ proto: 6, csum: "partial", pad: 6 }); // 54-byte ACK padded to 60
  assertEquals(f.length, 60);
  const { views } = run(f);
  assertStrictEquals(views[0], f);
  assert(l4Ok(f));
  assertEquals([...f.subarray(54)], [0xee, 0xee, 0xee, 0xee, 0xee, 0xee]);
  const u = build({ proto: 17, csum: "garbage", payload: bytes(3), pad: 7 });
  run(u);
  assert(l4Ok(u));
});

Deno.test("IPv4 options: header checksum and L4 offset right", () => {
  const opts = [0x94, 0x04, 0, 0]; // router alert
  const f = build({ proto: 6, csum: "partial", ipOptions: opts, payload: bytes(100) });
  put16(f, 14 + 10, 0xdead);
  run(f);
  assert(ipHeaderOk(f));
  assert(l4Ok(f));
});

Deno.test("UDP over IPv4 with checksum 0 is left alone; a computed 0 is sent as 0xffff", () => {
  const z = build({ proto: 17, csum: "zero", payload: bytes(50) });
  const before = z.slice();
  const { views } = run(z);
  assertStrictEquals(views[0], z);
  assertEquals(z, before);

  // Choose two payload bytes so that the correct checksum is 0.
  const f = build({ proto: 17, csum: "zero", payload: new Uint8Array(10) });
  const p = parse(f);
  put16(f, p.l4 + 6, 0);
  const c = refChecksum([...pseudoHeader(f, p, p.l4len), ...f.subarray(p.l4, p.l4 + p.l4len)]);
  put16(f, p.l4 + 8, c); // now the data sums to 0xffff: checksum 0
  put16(f, p.l4 + 6, 0x4242); // wrong, so it gets rewritten
  run(f);
  assertEquals(u16(f, p.l4 + 6), 0xffff);
  assert(l4Ok(f));
  // On IPv6 the same holds, and 0 means "missing", so it is completed too.
  const g = build({ v6: true, proto: 17, csum: "zero", payload: new Uint8Array(10) });
  const q = parse(g);
  const c6 = refChecksum([...pseudoHeader(g, q, q.l4len), ...g.subarray(q.l4, q.l4 + q.l4len)]);
  put16(g, q.l4 + 8, c6);
  run(g);
  assertEquals(u16(g, q.l4 + 6), 0xffff);
});

Deno.test("VLAN-tagged frames: checksum repaired, super-frame segmented under the tag", () => {
  const f = build({ vlan: 42, proto: 6, csum: "partial", payload: bytes(300), ts: true });
  const { views } = run(f);
  assertStrictEquals(views[0], f);
  assert(l4Ok(f));
  const big = build({ vlan: 42, proto: 6, csum: "partial", payload: bytes(20000), ts: true });
  const { out } = run(big);
  assertEquals(out.length, Math.ceil(20000 / 1448));
  for (const s of out) {
    assert(s.length <= 1518);
    assertEquals(u16(s, 12), 0x8100);
    assertEquals(u16(s, 14), 42);
    assert(ipHeaderOk(s) && l4Ok(s));
  }
  const ad = build({ vlan: 7, proto: 17, csum: "partial", payload: bytes(33) });
  put16(ad, 12, 0x88a8);
  run(ad);
  assert(l4Ok(ad));
});

Deno.test("non-IP frames pass through untouched; oversize ones are dropped", () => {
  const arp = hex(
    "ffffffffffff020000000001080600010800060400010200000000010a000001000000000000" +
      "0a000002000000000000000000000000000000",
  );
  const before = arp.slice();
  const { views } = run(arp);
  assertStrictEquals(views[0], arp);
  assertEquals(arp, before);
  const local = new Uint8Array(100).fill(0x77);
  local[12] = 0x88;
  local[13] = 0xb5;
  const b2 = local.slice();
  assertStrictEquals(run(local).views[0], local);
  assertEquals(local, b2);
  const huge = new Uint8Array(14 + 1501);
  huge[12] = 0x88;
  huge[13] = 0xb5;
  expectDrop(huge, "oversize");
  assertEquals(run(new Uint8Array(14 + 1500)).n, 1); // 802.3 length field 0: untouched
});

Deno.test("IPv4 fragments keep their L4 checksum", () => {
  for (const fragField of [0x2000, 0x0010, 0x2010]) {
    const f = build({ proto: 17, csum: "garbage", payload: bytes(64), df: false });
    put16(f, 14 + 6, fragField);
    put16(f, 14 + 10, 0);
    put16(f, 14 + 10, refChecksum(f.subarray(14, 34)));
    const before = f.slice();
    const { views } = run(f);
    assertStrictEquals(views[0], f);
    assertEquals(f, before);
  }
});

Deno.test("IPv6 hop-by-hop is skipped; other extension headers pass untouched", () => {
  const f = build({ v6: true, hopByHop: true, proto: 6, csum: "partial", payload: bytes(77) });
  run(f);
  assert(l4Ok(f));
  const big = build({ v6: true, hopByHop: true, proto: 6, csum: "partial", payload: bytes(5000) });
  const { out } = run(big);
  assertEquals(out.length, Math.ceil(5000 / (1500 - 48 - 20)));
  for (const s of out) {
    assert(s.length <= 1514 && l4Ok(s));
    assertEquals([...s.subarray(54, 62)], [6, 0, 1, 4, 0, 0, 0, 0]);
  }
  // Routing header (43): pseudo-header would need the final destination; leave it alone.
  const r = build({ v6: true, hopByHop: true, proto: 6, csum: "partial", payload: bytes(40) });
  r[20] = 43;
  r[54] = 6;
  const before = r.slice();
  assertStrictEquals(run(r).views[0], r);
  assertEquals(r, before);
});

// ---------------------------------------------------------------------------------------------
// Segmentation

function checkSegments(
  original: Uint8Array,
  segs: Uint8Array[],
  mtu: number,
  payload: Uint8Array,
) {
  const o = parse(original);
  const th = (original[o.l4 + 12] >>> 4) * 4;
  const mss = mtu - o.netLen - th;
  assertEquals(segs.length, Math.ceil(payload.length / mss));
  const seq0 = u32(original, o.l4 + 4);
  const flags0 = original[o.l4 + 13];
  const got: number[] = [];
  let seq = seq0;
  segs.forEach((s, k) => {
    const p = parse(s);
    const last = k === segs.length - 1;
    assert(s.length <= o.l3 + mtu, `segment ${k} is ${s.length} bytes`);
    assertEquals(s.length, p.l3 + p.ipLen);
    assert(ipHeaderOk(s), `IP header checksum of segment ${k}`);
    assert(l4Ok(s), `TCP checksum of segment ${k}`);
    // Everything up to the TCP header except the fields that change is copied.
    assertEquals(s.subarray(0, o.l3), original.subarray(0, o.l3));
    if (!p.v6) {
      assertEquals(u16(s, p.l3 + 4), (u16(original, o.l3 + 4) + k) & 0xffff, "IP ID");
      assertEquals(u16(s, p.l3 + 6), u16(original, o.l3 + 6), "DF kept");
    }
    assertEquals(u32(s, p.l4 + 4), seq, "seq");
    assertEquals(u32(s, p.l4 + 8), u32(original, o.l4 + 8), "ack");
    assertEquals(s.subarray(p.l4 + 20, p.l4 + th), original.subarray(o.l4 + 20, o.l4 + th));
    let want = flags0;
    if (k > 0) want &= ~0x80;
    if (!last) want &= ~0x09;
    assertEquals(s[p.l4 + 13], want, `flags of segment ${k}`);
    const data = s.subarray(p.l4 + th, p.l3 + p.ipLen);
    if (!last) assertEquals(data.length, mss);
    got.push(...data);
    seq = (seq + data.length) >>> 0;
  });
  assertEquals(new Uint8Array(got), payload);
}

Deno.test("64 KiB IPv4 TCP super-frame with timestamps is segmented for mtu 1500", () => {
  const payload = bytes(65535 - 20 - 32, 11);
  const f = build({
    proto: 6,
    csum: "partial",
    payload,
    ts: true,
    flags: 0x80 | 0x10 | 0x08 | 0x01, // CWR ACK PSH FIN
    seq: 0xffff0000, // wraps during the super-frame
    id: 0xfff0, // wraps too
  });
  assertEquals(f.length, 14 + 65535);
  const { out, views, n } = run(f);
  checkSegments(f, out, 1500, payload);
  assertEquals(out[0].length, 1514);
  assertEquals(n, Math.ceil(payload.length / (1500 - 20 - 32)));
  for (const v of views) assert(v.buffer !== f.buffer, "segments come from scratch");
});

Deno.test("with a GSO injector a super-frame goes out whole, pseudo-header sum in place", () => {
  for (const v6 of [false, true]) {
    const payload = bytes(20000, 13);
    const f = build({ v6, proto: 6, csum: "garbage", payload, ts: true, flags: 0x80 | 0x18 });
    const p = parse(f);
    const seen: { frame: Uint8Array; gso: GsoFrame }[] = [];
    let accept = true;
    const gso = (frame: Uint8Array, g: GsoFrame) => {
      seen.push({ frame, gso: { ...g } });
      return accept;
    };
    const emitted: Uint8Array[] = [];
    assertEquals(prepareForWire(f, 1500, (x) => emitted.push(x), gso), 1);
    assertEquals(emitted.length, 0, "segmented although the injector takes it whole");
    assertEquals(seen.length, 1);
    assertStrictEquals(seen[0].frame.buffer, f.buffer);
    assertEquals(seen[0].frame.length, f.length);
    assertEquals(seen[0].gso, {
      v4: !v6,
      l4Offset: p.l4,
      headerLength: p.l4 + 32,
      mss: 1500 - p.netLen - 32,
      ecn: true,
    });
    // CHECKSUM_PARTIAL: the kernel adds the data to the pseudo-header sum left in the field.
    assertEquals(u16(f, p.l4 + 16), refSum(pseudoHeader(f, p, p.l4len)));
    // A refusal is the injector's to count: 0, and nothing segmented behind its back.
    accept = false;
    assertEquals(prepareForWire(f, 1500, (x) => emitted.push(x), gso), 0);
    assertEquals(emitted.length, 0);
  }
});

Deno.test("checksums left partial: each segment its pseudo-header sum, completed by the receiver", () => {
  for (const v6 of [false, true]) {
    const payload = bytes(30000, 21);
    const f = build({ v6, proto: 6, csum: "garbage", payload, ts: true, flags: 0x18 });
    const complete = run(f.slice()).out;
    const partial: Uint8Array[] = [];
    const n = prepareForWire(f.slice(), 1500, (x) => partial.push(x.slice()), undefined, "partial");
    assertEquals(n, complete.length);
    partial.forEach((seg, k) => {
      const p = parse(seg);
      // What a kernel leaves in a CHECKSUM_PARTIAL field, and nothing more.
      assertEquals(u16(seg, p.l4 + 16), refSum(pseudoHeader(seg, p, p.l4len)), `segment ${k}`);
      assert(!l4Ok(seg), `segment ${k} was summed after all`);
      assert(ipHeaderOk(seg), `IP header checksum of segment ${k}`);
      // The receiving VNET's own pass (its injector's) makes it what a complete cut gives.
      let fixed: Uint8Array | null = null;
      assertEquals(prepareForWire(seg, 1500, (x) => fixed = x.slice()), 1);
      assertEquals(fixed, complete[k], `segment ${k} once the receiver completed it`);
    });
  }
});

Deno.test("checksums left partial: a frame that fits goes as it came; a fragmented one is summed", () => {
  for (
    const spec of [{ proto: 6 }, { proto: 17 }, { v6: true, proto: 6 }, { v6: true, proto: 17 }]
  ) {
    const f = build({ ...spec, csum: "garbage", payload: bytes(900, 3) } as Spec);
    const want = f.slice();
    if (!spec.v6) put16(f, 14 + 10, 0x1234); // a wrong IPv4 header checksum is still repaired
    const seen: Uint8Array[] = [];
    assertEquals(prepareForWire(f, 1500, (x) => seen.push(x), undefined, "partial"), 1);
    assertStrictEquals(seen[0], f, "a frame that fits is emitted as the same view");
    assertEquals(f, want, `${JSON.stringify(spec)}: changed`);
  }
  // No receiver can sum a datagram from its fragments: those of a partial path are summed here.
  const payload = bytes(4000, 5);
  const g = build({ proto: 17, csum: "partial", payload, df: false });
  const complete = run(g.slice()).out;
  const partial: Uint8Array[] = [];
  prepareForWire(g.slice(), 1500, (x) => partial.push(x.slice()), undefined, "partial");
  assertEquals(partial, complete);
});

Deno.test("64 KiB IPv6 TCP super-frame with timestamps is segmented for mtu 1500", () => {
  const payload = bytes(65535 - 32, 12);
  const f = build({ v6: true, proto: 6, csum: "partial", payload, ts: true, flags: 0x80 | 0x19 });
  const { out } = run(f);
  checkSegments(f, out, 1500, payload);
  assertEquals(out[0].length, 1514);
});

Deno.test("segmentation honours other MTUs, plain headers and a VLAN tag", () => {
  for (const mtu of [576, 1280, 1500, 9000]) {
    for (const v6 of [false, true]) {
      const payload = bytes(30000 + mtu, mtu);
      const f = build({ v6, vlan: 5, proto: 6, csum: "garbage", payload, flags: 0x18 });
      checkSegments(f, run(f, mtu).out, mtu, payload);
    }
  }
});

Deno.test("SYN/RST super-frames and DF or IPv6 non-TCP over the MTU are dropped as oversize", () => {
  expectDrop(build({ proto: 6, flags: 0x02, payload: bytes(2000) }), "oversize");
  expectDrop(build({ proto: 6, flags: 0x04, payload: bytes(2000) }), "oversize");
  expectDrop(build({ proto: 17, payload: bytes(2000) }), "oversize"); // DF set
  expectDrop(build({ v6: true, proto: 17, payload: bytes(2000) }), "oversize");
  expectDrop(build({ proto: 6, payload: bytes(2000) }), "oversize", 40); // MSS < 8
});

Deno.test("IPv4 UDP without DF over the MTU is fragmented", () => {
  const payload = bytes(4000, 5);
  const f = build({ proto: 17, csum: "partial", payload, df: false, ipOptions: [0x94, 4, 0, 0] });
  const { out } = run(f);
  assertEquals(out.length, 3);
  const reassembled: number[] = [];
  let expectOff = 0;
  out.forEach((s, k) => {
    assert(s.length <= 1514);
    assert(ipHeaderOk(s));
    const ihl = (s[14] & 15) * 4;
    assertEquals(ihl, 24); // router alert has the copy flag
    const fo = u16(s, 20);
    assertEquals((fo & 0x1fff) * 8, expectOff);
    assertEquals((fo & 0x2000) !== 0, k < out.length - 1);
    const data = s.subarray(14 + ihl, 14 + u16(s, 16));
    if (k < out.length - 1) assertEquals(data.length % 8, 0);
    reassembled.push(...data);
    expectOff += data.length;
  });
  // Reassembled UDP datagram has a valid checksum (completed before fragmenting).
  const whole = build({ proto: 17, payload, df: false, ipOptions: [0x94, 4, 0, 0] });
  assertEquals(new Uint8Array(reassembled), whole.subarray(14 + 24));
  // Options without the copy flag are not repeated after the first fragment.
  const g = build({ proto: 17, payload, df: false, ipOptions: [0x07, 3, 4, 0] });
  const outs = run(g).out;
  assertEquals((outs[0][14] & 15) * 4, 24);
  assertEquals((outs[1][14] & 15) * 4, 20);
});

// ---------------------------------------------------------------------------------------------
// Malformed input

Deno.test("malformed and truncated frames are dropped with a reason, never thrown", () => {
  expectDrop(new Uint8Array(0), "malformed");
  expectDrop(new Uint8Array(13), "malformed");
  const vlanShort = new Uint8Array(16);
  vlanShort[12] = 0x81;
  expectDrop(vlanShort, "malformed");

  const good4 = build({ proto: 6, csum: "partial", payload: bytes(100), ts: true });
  expectDrop(good4.subarray(0, 30), "malformed"); // IPv4 header cut
  expectDrop(good4.subarray(0, good4.length - 1), "malformed"); // total length > captured
  let f = good4.slice();
  f[14] = 0x44; // IHL 4
  expectDrop(f, "malformed");
  f = good4.slice();
  f[14] = 0x65; // version 6 in an IPv4 EtherType
  expectDrop(f, "malformed");
  f = good4.slice();
  put16(f, 16, 10); // total length < header
  expectDrop(f, "malformed");
  f = good4.slice();
  f[14 + 20 + 12] = 0xf0; // TCP data offset 60 > segment
  put16(f, 16, 20 + 40);
  expectDrop(f, "malformed");
  f = good4.slice();
  f[14 + 20 + 12] = 0x40; // data offset 16 < 20
  expectDrop(f, "malformed");

  const u = build({ proto: 17, payload: bytes(10) });
  f = u.slice();
  put16(f, 14 + 20 + 4, 4000); // UDP length beyond IP payload
  expectDrop(f, "malformed");
  f = u.slice();
  put16(f, 14 + 20 + 4, 7);
  expectDrop(f, "malformed");

  const good6 = build({ v6: true, proto: 6, payload: bytes(10) });
  expectDrop(good6.subarray(0, 50), "malformed");
  expectDrop(good6.subarray(0, good6.length - 2), "malformed");
  const h = build({ v6: true, hopByHop: true, proto: 6, payload: bytes(10) });
  h[55] = 200; // hop-by-hop length beyond the packet
  expectDrop(h, "malformed");

  // Bad IPv4 options on a datagram that needs fragmenting.
  const o = build({ proto: 17, payload: bytes(3000), df: false, ipOptions: [0x94, 9, 0, 0] });
  expectDrop(o, "malformed");
});

Deno.test("fuzz: truncations and random bytes never throw", () => {
  const frames = [
    build({ proto: 6, csum: "partial", payload: bytes(3000), ts: true }),
    build({ v6: true, proto: 6, csum: "partial", payload: bytes(3000), ts: true }),
    build({ v6: true, hopByHop: true, proto: 17, payload: bytes(300) }),
    build({ vlan: 3, proto: 17, payload: bytes(3000), df: false, ipOptions: [0x94, 4, 0, 0] }),
  ];
  let rnd = 99;
  const next = () => (rnd = (rnd * 1103515245 + 12345) >>> 0) >>> 16;
  for (const frame of frames) {
    for (let cut = 0; cut <= frame.length; cut += 1 + (cut >> 4)) {
      const f = frame.slice(0, cut);
      let emitted = 0;
      const n = prepareForWire(f, 1500, () => emitted++);
      if (n < 0) assert(n === Dropped.malformed || n === Dropped.oversize, `result ${n}`);
      else assertEquals(n, emitted);
    }
    for (let i = 0; i < 3000; i++) {
      const f = frame.slice(0, 14 + (next() % 200));
      for (let j = 0; j < 4; j++) f[12 + (next() % (f.length - 12))] = next() & 255;
      prepareForWire(f, 1 + (next() % 1600), () => {});
    }
  }
});
