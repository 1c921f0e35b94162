import { assert, assertEquals, assertStrictEquals, assertThrows } from "./assert.ts";
import { clampMss, TokenBucket, TOO_BIG_REPLY_MAX, tooBigReply } from "../../src/dataplane/mtu.ts";
import { prepareForWire } from "../../src/dataplane/offload.ts";

// ---------------------------------------------------------------------------------------------
// Independent helpers: a naive checksum over plain arrays and a builder that lays out every byte.

const hex = (s: string) =>
  new Uint8Array(s.replace(/\s+/g, "").match(/../g)!.map((h) => parseInt(h, 16)));
const be16 = (b: ArrayLike<number>, o: number) => (b[o] << 8) | b[o + 1];
const be32 = (b: ArrayLike<number>, o: number) =>
  ((b[o] << 24) | (b[o + 1] << 16) | (b[o + 2] << 8) | b[o + 3]) >>> 0;
const words = (v: number) => [v >>> 8, v & 255];

/** The Internet checksum, summed as a big integer and reduced modulo 65535 at the end. */
function checksumOf(bytes: ArrayLike<number>): number {
  let total = 0n;
  for (let i = 0; i < bytes.length; i += 2) {
    total += BigInt(bytes[i] * 256 + (i + 1 < bytes.length ? bytes[i + 1] : 0));
  }
  const folded = total === 0n ? 0 : Number((total - 1n) % 65535n) + 1;
  return 0xffff - folded;
}

const MAC_A = [2, 0, 0, 0, 0, 0xa];
const MAC_B = [2, 0, 0, 0, 0, 0xb];
const V4_A = [10, 1, 2, 3];
const V4_B = [10, 4, 5, 6];
const V6_A = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xa];
const V6_B = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xb];

interface IpSpec {
  v6?: boolean;
  vlan?: boolean;
  proto: number;
  body: number[];
  src?: number[];
  dst?: number[];
  /** IPv4 flags and fragment offset. */
  frag?: number;
  ttl?: number;
  ipOptions?: number[];
  /** IPv6 extension headers before `proto`, each [type, ...its bytes]. */
  ext?: number[][];
}

/** An Ethernet frame from MAC_A to MAC_B around one IP packet. */
function ipFrame(s: IpSpec): Uint8Array {
  const out = [...MAC_B, ...MAC_A];
  if (s.vlan) out.push(0x81, 0x00, 0x20, 0x07);
  if (s.v6) {
    const ext = s.ext ?? [];
    const extBytes: number[] = [];
    ext.forEach((h, i) =>
      extBytes.push(i + 1 < ext.length ? ext[i + 1][0] : s.proto, ...h.slice(1))
    );
    const plen = extBytes.length + s.body.length;
    const first = ext.length > 0 ? ext[0][0] : s.proto;
    out.push(0x86, 0xdd, 0x60, 0x01, 0x23, 0x45, ...words(plen), first, s.ttl ?? 64);
    out.push(...(s.src ?? V6_A), ...(s.dst ?? V6_B), ...extBytes, ...s.body);
  } else {
    const opts = s.ipOptions ?? [];
    const ihl = 20 + opts.length;
    const header = [0x40 | (ihl / 4), 0, ...words(ihl + s.body.length), 0x12, 0x34];
    header.push(...words(s.frag ?? 0x4000), s.ttl ?? 64, s.proto, 0, 0);
    header.push(...(s.src ?? V4_A), ...(s.dst ?? V4_B), ...opts);
    const c = checksumOf(header);
    header[10] = c >>> 8;
    header[11] = c & 255;
    out.push(0x08, 0x00, ...header, ...s.body);
  }
  return new Uint8Array(out);
}

const SYN = 0x02;
const ACK = 0x10;
const RST = 0x04;
const MSS = (v: number) => [2, 4, ...words(v)];
const NOP = 1;
const WSCALE = [3, 3, 7];
const SACK_OK = [4, 2];
const TIMESTAMPS = [8, 10, 1, 2, 3, 4, 0, 0, 0, 0];

/** A TCP segment (the checksum left 0: `tcpFrame` fills it in). Options padded with EOL. */
function tcpSegment(flags: number, options: number[], payload: number[] = []): number[] {
  const opts = [...options];
  while (opts.length % 4 !== 0) opts.push(0);
  const doff = (20 + opts.length) / 4;
  return [0x9c, 0x40, 0x01, 0xbb, 1, 2, 3, 4, 0, 0, 0, 0, doff << 4, flags, 0xfa, 0xf0, 0, 0, 0, 0]
    .concat(opts, payload);
}

interface Located {
  l3: number;
  v6: boolean;
  l4: number;
  end: number;
}

/** Finds the TCP header the way the builder put it there (the test knows its own frames). */
function locate(f: Uint8Array, ext = 0): Located {
  const l3 = be16(f, 12) === 0x8100 ? 18 : 14;
  const v6 = be16(f, l3 - 2) === 0x86dd;
  if (v6) return { l3, v6, l4: l3 + 40 + ext, end: l3 + 40 + be16(f, l3 + 4) };
  return { l3, v6, l4: l3 + (f[l3] & 15) * 4, end: l3 + be16(f, l3 + 2) };
}

/** The TCP checksum of the frame computed from scratch, the checksum field taken as 0. */
function tcpChecksum(f: Uint8Array, ext = 0): number {
  const { l3, v6, l4, end } = locate(f, ext);
  const segment = [...f.subarray(l4, end)];
  segment[16] = segment[17] = 0;
  const len = end - l4;
  const pseudo = v6
    ? [...f.subarray(l3 + 8, l3 + 40), 0, 0, ...words(len), 0, 0, 0, 6]
    : [...f.subarray(l3 + 12, l3 + 20), 0, 6, ...words(len)];
  return checksumOf([...pseudo, ...segment]);
}

/** A frame around a TCP segment, with a correct TCP checksum. */
function tcpFrame(segment: number[], s: Partial<IpSpec> = {}): Uint8Array {
  const f = ipFrame({ ...s, proto: 6, body: segment });
  const ext = (s.ext ?? []).reduce((n, h) => n + h.length, 0);
  const { l4 } = locate(f, ext);
  const c = tcpChecksum(f, ext);
  f[l4 + 16] = c >>> 8;
  f[l4 + 17] = c & 255;
  return f;
}

/** The MSS option's value, found by scanning the options naively. */
function mssOf(f: Uint8Array, ext = 0): number | undefined {
  const { l4 } = locate(f, ext);
  const end = l4 + (f[l4 + 12] >>> 4) * 4;
  for (let i = l4 + 20; i < end;) {
    if (f[i] === 0) return undefined;
    if (f[i] === 1) {
      i++;
      continue;
    }
    if (f[i] === 2) return be16(f, i + 2);
    i += f[i + 1];
  }
  return undefined;
}

function storedTcpChecksum(f: Uint8Array, ext = 0): number {
  return be16(f, locate(f, ext).l4 + 16);
}

// ---------------------------------------------------------------------------------------------
// clampMss

Deno.test("clampMss lowers an IPv4 SYN's MSS and its checksum still adds up", () => {
  const f = tcpFrame(tcpSegment(SYN, [...MSS(1460), ...SACK_OK, ...TIMESTAMPS, NOP, ...WSCALE]));
  const before = f.slice();
  assertStrictEquals(clampMss(f, 1360), true);
  assertStrictEquals(mssOf(f), 1360);
  assertStrictEquals(storedTcpChecksum(f), tcpChecksum(f));
  assert(storedTcpChecksum(f) !== storedTcpChecksum(before));
  const { l4 } = locate(f);
  const changed = [...f.keys()].filter((i) => f[i] !== before[i]);
  assert(changed.every((i) => i === l4 + 16 || i === l4 + 17 || i === l4 + 22 || i === l4 + 23));
});

Deno.test("clampMss lowers a SYN-ACK's MSS too", () => {
  const f = tcpFrame(tcpSegment(SYN | ACK, [...MSS(8960), NOP, ...WSCALE]));
  assertStrictEquals(clampMss(f, 1410), true);
  assertStrictEquals(mssOf(f), 1410);
  assertStrictEquals(storedTcpChecksum(f), tcpChecksum(f));
});

Deno.test("clampMss leaves segments that are not a SYN alone, and a SYN with RST", () => {
  for (const flags of [ACK, ACK | 0x08, 0x01 | ACK, SYN | RST, RST]) {
    const f = tcpFrame(tcpSegment(flags, MSS(1460), [1, 2, 3]));
    const before = f.slice();
    assertStrictEquals(clampMss(f, 1000), false, `flags ${flags}`);
    assertEquals(f, before);
  }
});

Deno.test("clampMss never raises an MSS, nor adds one", () => {
  for (const mss of [536, 1359, 1360]) {
    const f = tcpFrame(tcpSegment(SYN, MSS(mss)));
    const before = f.slice();
    assertStrictEquals(clampMss(f, 1360), false);
    assertEquals(f, before);
  }
  const none = tcpFrame(tcpSegment(SYN, [...SACK_OK, ...TIMESTAMPS, NOP, ...WSCALE]));
  const before = none.slice();
  assertStrictEquals(clampMss(none, 1360), false);
  assertEquals(none, before);
  const noOptions = tcpFrame(tcpSegment(SYN, []));
  assertStrictEquals(clampMss(noOptions, 1360), false);
});

Deno.test("clampMss finds the MSS behind other options, at even and odd offsets", () => {
  const layouts: [string, number[]][] = [
    ["timestamps first", [NOP, NOP, ...TIMESTAMPS, ...MSS(1460)]],
    ["one NOP: the value straddles two checksum words", [NOP, ...MSS(1460)]],
    ["window scale: odd again", [...WSCALE, ...MSS(1460), NOP]],
    ["everything", [...SACK_OK, ...TIMESTAMPS, NOP, ...WSCALE, ...MSS(65535)]],
  ];
  for (const [name, options] of layouts) {
    for (const v6 of [false, true]) {
      const f = tcpFrame(tcpSegment(SYN, options, [0xde, 0xad, 0xbe]), { v6 });
      assertStrictEquals(clampMss(f, 1200), true, name);
      assertStrictEquals(mssOf(f), v6 ? 1180 : 1200, name);
      assertStrictEquals(storedTcpChecksum(f), tcpChecksum(f), `${name} (v6: ${v6})`);
    }
  }
});

Deno.test("clampMss gives IPv6 20 bytes less by default, or the limit it is given", () => {
  const f = tcpFrame(tcpSegment(SYN, MSS(1440)), { v6: true });
  assertStrictEquals(clampMss(f, 1360), true);
  assertStrictEquals(mssOf(f), 1340);
  assertStrictEquals(storedTcpChecksum(f), tcpChecksum(f));
  const g = tcpFrame(tcpSegment(SYN, MSS(1440)), { v6: true });
  assertStrictEquals(clampMss(g, 1360, 1300), true);
  assertStrictEquals(mssOf(g), 1300);
  const h = tcpFrame(tcpSegment(SYN, MSS(1440)));
  assertStrictEquals(clampMss(h, 1360, 1300), true);
  assertStrictEquals(mssOf(h), 1360, "IPv4 takes maxMss");
});

Deno.test("clampMss reaches TCP behind a VLAN tag, IPv4 options and IPv6 extension headers", () => {
  const tagged = tcpFrame(tcpSegment(SYN, MSS(1460)), { vlan: true });
  assertStrictEquals(clampMss(tagged, 1360), true);
  assertStrictEquals(mssOf(tagged), 1360);
  assertStrictEquals(storedTcpChecksum(tagged), tcpChecksum(tagged));

  const withOptions = tcpFrame(tcpSegment(SYN, MSS(1460)), { ipOptions: [0x94, 4, 0, 0] });
  assertStrictEquals(clampMss(withOptions, 1360), true);
  assertStrictEquals(mssOf(withOptions), 1360);
  assertStrictEquals(storedTcpChecksum(withOptions), tcpChecksum(withOptions));

  // Hop-by-hop (PadN), destination options, and a first fragment: skipped to TCP.
  const ext = [[0, 0, 1, 4, 0, 0, 0, 0], [60, 0, 1, 4, 0, 0, 0, 0], [44, 0, 0, 0, 0, 0, 0, 1]];
  const v6 = tcpFrame(tcpSegment(SYN, MSS(1460)), { v6: true, vlan: true, ext });
  assertStrictEquals(clampMss(v6, 1360), true);
  assertStrictEquals(mssOf(v6, 24), 1340);
  assertStrictEquals(storedTcpChecksum(v6, 24), tcpChecksum(v6, 24));
});

Deno.test("clampMss leaves malformed and unreachable headers alone", () => {
  const cases: [string, Uint8Array][] = [
    ["the MSS after EOL (padding)", tcpFrame(tcpSegment(SYN, [0, 4, 0, 0, ...MSS(1460)]))],
    ["an option of length 0", tcpFrame(tcpSegment(SYN, [5, 0, 0, 0, ...MSS(1460)]))],
    ["an option running past the header", tcpFrame(tcpSegment(SYN, [...MSS(1460).slice(0, 1), 9]))],
    ["an MSS of the wrong length", tcpFrame(tcpSegment(SYN, [2, 6, 5, 0xb4, 0, 0, 0, 0]))],
    ["a later IPv4 fragment", tcpFrame(tcpSegment(SYN, MSS(1460)), { frag: 0x2000 | 100 })],
    ["UDP", ipFrame({ proto: 17, body: tcpSegment(SYN, MSS(1460)) })],
    [
      "a later IPv6 fragment",
      tcpFrame(tcpSegment(SYN, MSS(1460)), { v6: true, ext: [[44, 0, 0, 0x08, 0, 0, 0, 1]] }),
    ],
  ];
  for (const [name, f] of cases) {
    const before = f.slice();
    assertStrictEquals(clampMss(f, 1000), false, name);
    assertEquals(f, before, name);
  }
  const syn = tcpFrame(tcpSegment(SYN, MSS(1460)));
  for (let n = 0; n < syn.length; n++) {
    const cut = syn.slice(0, n);
    assertStrictEquals(clampMss(cut, 1000), false, `truncated to ${n}`);
  }
  const header = syn.slice();
  header[14 + 20 + 12] = 0x40; // data offset 16: shorter than the fixed header
  assertStrictEquals(clampMss(header, 1000), false);
});

Deno.test("clampMss: random option layouts, payloads and limits always keep the checksum right", () => {
  let seed = 12345;
  const rand = (n: number) => {
    seed = (Math.imul(seed, 1103515245) + 12345) >>> 0;
    return (seed >>> 8) % n;
  };
  const fillers = [[NOP], SACK_OK, TIMESTAMPS, WSCALE, [NOP, NOP], [30, 3, 9]];
  let clamped = 0;
  for (let k = 0; k < 3000; k++) {
    const options: number[] = [];
    for (let j = rand(4); j > 0; j--) options.push(...fillers[rand(fillers.length)]);
    const mss = rand(65536);
    options.push(...MSS(mss));
    for (let j = rand(3); j > 0; j--) options.push(...fillers[rand(fillers.length)]);
    if (options.length > 40) continue;
    const payload = Array.from({ length: rand(40) }, () => rand(256));
    const v6 = rand(2) === 1;
    const f = tcpFrame(tcpSegment(SYN | (rand(2) ? ACK : 0), options, payload), {
      v6,
      vlan: rand(2) === 1,
    });
    const limit = rand(65536);
    const before = f.slice();
    const changed = clampMss(f, limit, limit);
    assertStrictEquals(changed, mss > limit, `mss ${mss} limit ${limit}`);
    assertStrictEquals(mssOf(f), changed ? limit : mss);
    assertStrictEquals(storedTcpChecksum(f), tcpChecksum(f), `layout ${options}`);
    if (!changed) assertEquals(f, before);
    if (changed) clamped++;
  }
  assert(clamped > 1000, `only ${clamped} clamped`);
});

Deno.test("clampMss on a partial (offloaded) checksum: prepareForWire completes it afterwards", () => {
  const f = tcpFrame(tcpSegment(SYN, [NOP, ...MSS(1460)]));
  const { l3, l4, end } = locate(f);
  // CHECKSUM_PARTIAL: the field holds the folded pseudo-header sum, not complemented.
  const pseudo = 0xffff - checksumOf([...f.subarray(l3 + 12, l3 + 20), 0, 6, ...words(end - l4)]);
  f[l4 + 16] = pseudo >>> 8;
  f[l4 + 17] = pseudo & 255;
  assertStrictEquals(clampMss(f, 1360), true);
  const out: Uint8Array[] = [];
  assertStrictEquals(prepareForWire(f, 1500, (g) => out.push(g.slice())), 1);
  assertStrictEquals(mssOf(out[0]), 1360);
  assertStrictEquals(storedTcpChecksum(out[0]), tcpChecksum(out[0]));
});

// ---------------------------------------------------------------------------------------------
// tooBigReply against the kernel

/*
 * Frames captured on Linux 6.18 (a veth on a bridge with a `vxlan` port of MTU 1500 over a
 * 1500 underlay, so the kernel's PMTU check uses 1450): `ping -M do -s 1472 -p 5a` and
 * `ping -6 -M do -s 1452 -p 5a` from 02:00:00:00:00:01, and the replies the vxlan driver built
 * (iptunnel_pmtud_build_icmp{,v6}) and sent back into the bridge, captured with tcpdump. The
 * echo data after ping's 16-byte timestamp is 0x5a throughout; the replies quote the request.
 */
const KERNEL_V4_REQUEST_HEAD = hex(
  "020000000002 020000000001 0800" +
    "450005dc 00004000 400119cd c0a84d01 c0a84d02" +
    "08003619 2b010001 dd670f6b 00000000 b6200300 00000000",
);
const KERNEL_V4_REPLY_HEAD = hex(
  "020000000001 020000000002 0800" +
    "45000240 00004000 40011d69 c0a84d02 c0a84d01" +
    "0304f751 000005aa",
);
const KERNEL_V6_REQUEST_HEAD = hex(
  "020000000002 020000000001 86dd" +
    "600a575f 05b43a40 fd770000000000000000000000000001 fd770000000000000000000000000002" +
    "8000f1ac 2b020001 dd670f6b 00000000 09320300 00000000",
);
const KERNEL_V6_REPLY_HEAD = hex(
  "020000000001 020000000002 86dd" +
    "60000000 04d83a40 fd770000000000000000000000000002 fd770000000000000000000000000001" +
    "0200522c 000005aa",
);

/** The kernel trims its replies to 576 (IPv4) and 1280 (IPv6) IP bytes. */
const KERNEL_CASES = [
  { request: KERNEL_V4_REQUEST_HEAD, reply: KERNEL_V4_REPLY_HEAD, length: 14 + 576 },
  { request: KERNEL_V6_REQUEST_HEAD, reply: KERNEL_V6_REPLY_HEAD, length: 14 + 1280 },
];

Deno.test("tooBigReply builds the kernel's replies, byte for byte", () => {
  for (const kernel of KERNEL_CASES) {
    const request = new Uint8Array(1514).fill(0x5a);
    request.set(kernel.request);
    const out = new Uint8Array(TOO_BIG_REPLY_MAX).fill(0xee);
    const n = tooBigReply(request, 1450, out);
    assertStrictEquals(n, kernel.length, `reply ${kernel.length}`);
    const quote = n - kernel.reply.length;
    const expected = new Uint8Array(n);
    expected.set(kernel.reply);
    expected.set(request.subarray(14, 14 + quote), kernel.reply.length);
    assertEquals(out.subarray(0, n), expected, `reply ${kernel.length}`);
  }
});

// ---------------------------------------------------------------------------------------------
// tooBigReply parsed back

/** A UDP datagram of `size` IP bytes with DF (IPv4), from A to B. */
function bigUdp(size: number, s: Partial<IpSpec> = {}): Uint8Array {
  const header = s.v6 ? 40 : 20 + (s.ipOptions?.length ?? 0);
  const ext = (s.ext ?? []).reduce((n, h) => n + h.length, 0);
  const body = Array.from({ length: size - header - ext }, (_, i) => (i * 7) & 255);
  body.splice(0, 8, 0x30, 0x39, 0x00, 0x35, ...words(body.length), 0, 0);
  return ipFrame({ proto: 17, body, ...s });
}

interface Icmp4 {
  type: number;
  code: number;
  mtu: number;
  quote: Uint8Array;
}

/** Checks the reply's Ethernet and IPv4 headers and both checksums; returns its ICMP fields. */
function parseV4Reply(request: Uint8Array, reply: Uint8Array): Icmp4 {
  const l3 = be16(reply, 12) === 0x8100 ? 18 : 14;
  assertEquals([...reply.subarray(0, 6)], [...request.subarray(6, 12)], "to the sender's MAC");
  assertEquals([...reply.subarray(6, 12)], [...request.subarray(0, 6)]);
  assertEquals([...reply.subarray(12, l3)], [...request.subarray(12, l3)], "tag and EtherType");
  assertStrictEquals(reply[l3], 0x45);
  assertStrictEquals(be16(reply, l3 + 2), reply.length - l3, "total length");
  assertStrictEquals(reply[l3 + 9], 1);
  assertStrictEquals(checksumOf(reply.subarray(l3, l3 + 20)), 0, "IP header checksum");
  // The request's network header is at the same offset: the addresses swapped.
  assertEquals([...reply.subarray(l3 + 12, l3 + 16)], [...request.subarray(l3 + 16, l3 + 20)]);
  assertEquals([...reply.subarray(l3 + 16, l3 + 20)], [...request.subarray(l3 + 12, l3 + 16)]);
  const icmp = reply.subarray(l3 + 20);
  assertStrictEquals(checksumOf(icmp), 0, "ICMP checksum");
  assertStrictEquals(be16(icmp, 4), 0, "unused");
  return { type: icmp[0], code: icmp[1], mtu: be16(icmp, 6), quote: icmp.subarray(8) };
}

/** Checks the reply's Ethernet and IPv6 headers and the pseudo-header checksum. */
function parseV6Reply(request: Uint8Array, reply: Uint8Array): Icmp4 {
  const l3 = be16(reply, 12) === 0x8100 ? 18 : 14;
  assertEquals([...reply.subarray(0, 6)], [...request.subarray(6, 12)]);
  assertEquals([...reply.subarray(6, 12)], [...request.subarray(0, 6)]);
  assertEquals([...reply.subarray(12, l3)], [...request.subarray(12, l3)]);
  assertStrictEquals(be32(reply, l3), 0x60000000);
  const plen = be16(reply, l3 + 4);
  assertStrictEquals(plen, reply.length - l3 - 40);
  assertStrictEquals(reply[l3 + 6], 58);
  assertStrictEquals(reply[l3 + 7], request[l3 + 7], "the request's hop limit");
  assertEquals([...reply.subarray(l3 + 8, l3 + 24)], [...request.subarray(l3 + 24, l3 + 40)]);
  assertEquals([...reply.subarray(l3 + 24, l3 + 40)], [...request.subarray(l3 + 8, l3 + 24)]);
  const icmp = reply.subarray(l3 + 40);
  const pseudo = [...reply.subarray(l3 + 8, l3 + 40), 0, 0, ...words(plen), 0, 0, 0, 58];
  assertStrictEquals(checksumOf([...pseudo, ...icmp]), 0, "ICMPv6 checksum");
  return { type: icmp[0], code: icmp[1], mtu: be32(icmp, 4), quote: icmp.subarray(8) };
}

function reply(frame: Uint8Array, mtu: number): Uint8Array | undefined {
  const out = new Uint8Array(TOO_BIG_REPLY_MAX);
  const n = tooBigReply(frame, mtu, out);
  return n === 0 ? undefined : out.slice(0, n);
}

Deno.test("tooBigReply (IPv4): type 3 code 4, the MTU, 576 bytes at most, quoting the packet", () => {
  for (const [size, mtu] of [[1500, 1400], [577, 576], [9000, 1450], [1400, 1399]]) {
    const request = bigUdp(size, { ttl: 17 });
    const r = reply(request, mtu)!;
    const icmp = parseV4Reply(request, r);
    assertEquals([icmp.type, icmp.code, icmp.mtu], [3, 4, mtu]);
    assertStrictEquals(r.length - 14, 576);
    assertEquals(icmp.quote, request.subarray(14, 14 + 548));
    assertStrictEquals(r[14 + 8], 17, "the request's TTL");
    assertStrictEquals(r[14 + 1], 0, "TOS 0");
    assertStrictEquals(be16(r, 14 + 6), 0x4000, "DF");
  }
});

Deno.test("tooBigReply (IPv4): IP options are quoted, a VLAN tag is kept", () => {
  const request = bigUdp(1500, { vlan: true, ipOptions: [0x94, 4, 0, 0] });
  const r = reply(request, 1400)!;
  const icmp = parseV4Reply(request, r);
  assertStrictEquals(icmp.mtu, 1400);
  assertStrictEquals(r.length, 18 + 576);
  assertEquals(icmp.quote, request.subarray(18, 18 + 548));
  assertStrictEquals(icmp.quote[0], 0x46, "the quoted header with its options");
});

Deno.test("tooBigReply (IPv6): type 2, the MTU, 1280 bytes, quoting the packet", () => {
  for (const [size, mtu] of [[1500, 1400], [1281, 1280], [9000, 1450]]) {
    const request = bigUdp(size, { v6: true, ttl: 9 });
    const r = reply(request, mtu)!;
    const icmp = parseV6Reply(request, r);
    assertEquals([icmp.type, icmp.code, icmp.mtu], [2, 0, mtu]);
    assertStrictEquals(r.length - 14, 1280);
    assertEquals(icmp.quote, request.subarray(14, 14 + 1232));
  }
  const tagged = bigUdp(1500, { v6: true, vlan: true });
  const r = reply(tagged, 1400)!;
  assertStrictEquals(parseV6Reply(tagged, r).mtu, 1400);
  assertStrictEquals(r.length, 18 + 1280);
});

Deno.test("tooBigReply: ICMP echo gets a reply, ICMP errors never do", () => {
  const icmp4 = (type: number) =>
    ipFrame({ proto: 1, body: [type, 0, ...new Array(1478).fill(0)] });
  assert(reply(icmp4(8), 1400) !== undefined, "echo request");
  assert(reply(icmp4(0), 1400) !== undefined, "echo reply");
  for (const type of [3, 4, 5, 11, 12]) assertStrictEquals(reply(icmp4(type), 1400), undefined);
  const icmp6 = (type: number, ext?: number[][]) =>
    ipFrame({ v6: true, proto: 58, ext, body: [type, 0, ...new Array(1450).fill(0)] });
  assert(reply(icmp6(128), 1400) !== undefined, "echo request");
  assert(reply(icmp6(129), 1400) !== undefined, "echo reply");
  for (const type of [1, 2, 3, 4, 127, 137]) {
    assertStrictEquals(reply(icmp6(type), 1400), undefined, `type ${type}`);
  }
  const hbh = [[0, 0, 1, 4, 0, 0, 0, 0]];
  assertStrictEquals(reply(icmp6(2, hbh), 1400), undefined, "an error behind hop-by-hop");
  assert(reply(icmp6(128, hbh), 1400) !== undefined);
});

Deno.test("tooBigReply: no reply for what fits, what may be fragmented, or what the kernel skips", () => {
  const none: [string, Uint8Array, number][] = [
    ["fits", bigUdp(1400), 1400],
    ["fits (IPv6)", bigUdp(1400, { v6: true }), 1400],
    ["no DF", bigUdp(1500, { frag: 0 }), 1400],
    ["a first fragment", bigUdp(1500, { frag: 0x6000 }), 1400],
    ["a later fragment", bigUdp(1500, { frag: 0x4000 | 10 }), 1400],
    ["the reserved flag", bigUdp(1500, { frag: 0xc000 }), 1400],
    ["an MTU below 576", bigUdp(1500), 575],
    ["an MTU below 1280", bigUdp(1500, { v6: true }), 1279],
    ["from 0.0.0.0", bigUdp(1500, { src: [0, 0, 0, 0] }), 1400],
    ["from loopback", bigUdp(1500, { src: [127, 0, 0, 1] }), 1400],
    ["from multicast", bigUdp(1500, { src: [224, 0, 0, 1] }), 1400],
    ["from broadcast", bigUdp(1500, { src: [255, 255, 255, 255] }), 1400],
    ["to multicast", bigUdp(1500, { dst: [239, 1, 2, 3] }), 1400],
    ["to broadcast", bigUdp(1500, { dst: [255, 255, 255, 255] }), 1400],
    ["from ::", bigUdp(1500, { v6: true, src: new Array(16).fill(0) }), 1400],
    ["from ::1", bigUdp(1500, { v6: true, src: [...new Array(15).fill(0), 1] }), 1400],
    ["from ff02::1", bigUdp(1500, { v6: true, src: [0xff, 2, ...V6_A.slice(2)] }), 1400],
    ["to ff02::1", bigUdp(1500, { v6: true, dst: [0xff, 2, ...V6_A.slice(2)] }), 1400],
    [
      "an IPv6 later fragment",
      bigUdp(1500, { v6: true, ext: [[44, 0, 0, 0x10, 0, 0, 0, 1]] }),
      1400,
    ],
  ];
  for (const [name, frame, mtu] of none) assertStrictEquals(reply(frame, mtu), undefined, name);
  const first = bigUdp(1500, { v6: true, ext: [[44, 0, 0, 1, 0, 0, 0, 1]] });
  assert(reply(first, 1400) !== undefined, "an IPv6 first fragment gets one");
  assert(reply(bigUdp(1500, { dst: [10, 255, 255, 255] }), 1400) !== undefined, "unicast");
});

Deno.test("tooBigReply: nothing for frames that are not IP or not whole", () => {
  const arp = bigUdp(1500);
  arp.set([0x08, 0x06], 12);
  assertStrictEquals(reply(arp, 1400), undefined);
  const request = bigUdp(1500);
  for (const n of [0, 13, 14, 33, 34, 600, request.length - 1]) {
    assertStrictEquals(reply(request.subarray(0, n), 1400), undefined, `cut to ${n}`);
  }
  const v6 = bigUdp(1500, { v6: true });
  assertStrictEquals(reply(v6.subarray(0, v6.length - 1), 1400), undefined);
  const jumbo = v6.slice();
  jumbo[18] = jumbo[19] = 0; // payload length 0
  assertStrictEquals(reply(jumbo, 1400), undefined);
  const v4 = bigUdp(1500);
  v4[14] = 0x44; // IHL 16
  assertStrictEquals(reply(v4, 1400), undefined);
});

Deno.test("tooBigReply needs room for the reply", () => {
  const out = new Uint8Array(14 + 575);
  assertThrows(() => tooBigReply(bigUdp(1500), 1400, out), RangeError);
  assertStrictEquals(tooBigReply(bigUdp(1500), 1400, new Uint8Array(14 + 576)), 14 + 576);
});

// ---------------------------------------------------------------------------------------------

Deno.test("TokenBucket: a burst, then the rate, never more than the burst saved", () => {
  let now = 1000;
  const bucket = new TokenBucket(2, 3, () => now);
  assertEquals([bucket.take(), bucket.take(), bucket.take(), bucket.take()], [
    true,
    true,
    true,
    false,
  ]);
  now += 400;
  assertStrictEquals(bucket.take(), false);
  now += 100;
  assertStrictEquals(bucket.take(), true, "one token every 500 ms");
  assertStrictEquals(bucket.take(), false);
  now += 60_000;
  assertEquals([bucket.take(), bucket.take(), bucket.take(), bucket.take()], [
    true,
    true,
    true,
    false,
  ]);
});
