/**
 * The userspace GRO (src/dataplane/gro.ts): what it merges, cut again the way the kernel's GSO
 * would (prepareForWire's own segmentation), gives back exactly the segments that went in; and
 * what it must not merge ends the chain, in order.
 */
import { assert, assertEquals } from "./assert.ts";
import { TcpCoalescer, tcpDataOffset } from "../../src/dataplane/gro.ts";
import { prepareForWire } from "../../src/dataplane/offload.ts";

const MTU = 1500;
/** With timestamps (12 option bytes): the MSS a 1500-byte MTU leaves over IPv4. */
const MSS4 = MTU - 20 - 32;
const MSS6 = MTU - 40 - 32;

interface Segment {
  v6?: boolean;
  seq: number;
  payload: number;
  id?: number;
  flags?: number;
  /** Another flow: the source port differs. */
  port?: number;
}

/** An Ethernet + IP + TCP (timestamps) segment with a patterned payload, checksums right. */
function segment(s: Segment): Uint8Array {
  const l3 = 14, ipLen = s.v6 ? 40 : 20, l4 = l3 + ipLen, th = 32;
  const f = new Uint8Array(l4 + th + s.payload);
  f.set([2, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 2, ...(s.v6 ? [0x86, 0xdd] : [0x08, 0x00])]);
  const dv = new DataView(f.buffer);
  if (s.v6) {
    f[l3] = 0x60;
    dv.setUint16(l3 + 4, th + s.payload);
    f[l3 + 6] = 6;
    f[l3 + 7] = 64;
    f.set([0xfd, ...new Array(14).fill(0), 1], l3 + 8);
    f.set([0xfd, ...new Array(14).fill(0), 2], l3 + 24);
  } else {
    f[l3] = 0x45;
    dv.setUint16(l3 + 2, ipLen + th + s.payload);
    dv.setUint16(l3 + 4, s.id ?? 0x1000);
    f[l3 + 6] = 0x40; // DF
    f[l3 + 8] = 64;
    f[l3 + 9] = 6;
    f.set([10, 0, 0, 1, 10, 0, 0, 2], l3 + 12);
  }
  dv.setUint16(l4, s.port ?? 40000);
  dv.setUint16(l4 + 2, 5201);
  dv.setUint32(l4 + 4, s.seq >>> 0);
  dv.setUint32(l4 + 8, 0xaabbccdd);
  f[l4 + 12] = (th / 4) << 4;
  f[l4 + 13] = s.flags ?? 0x10;
  dv.setUint16(l4 + 14, 502);
  f.set([1, 1, 8, 10, 0x12, 0x34, 0x56, 0x78, 0x9a, 0xbc, 0xde, 0xf0], l4 + 20);
  for (let i = 0; i < s.payload; i++) f[l4 + th + i] = (s.seq + i * 7) & 0xff;
  // prepareForWire completes the checksums of a frame that fits (its hot path fixes them).
  let fixed: Uint8Array | null = null;
  assertEquals(prepareForWire(f, MTU, (x) => fixed = x.slice()), 1);
  return fixed!;
}

/** A bulk run: `n` full segments from `seq`, IDs counting up, PSH on the last. */
function bulk(n: number, v6 = false, seq = 0xfffff000, port?: number): Uint8Array[] {
  const mss = v6 ? MSS6 : MSS4;
  return Array.from({ length: n }, (_, k) =>
    segment({
      v6,
      seq: seq + k * mss,
      payload: mss,
      id: 0x1000 + k,
      flags: k === n - 1 ? 0x18 : 0x10,
      port,
    }));
}

/** Runs frames through a coalescer (flushing at the end, as a burst ends); copies what left. */
function coalesce(frames: Uint8Array[]): { out: Uint8Array[]; gro: TcpCoalescer } {
  const out: Uint8Array[] = [];
  const gro = new TcpCoalescer((f) => out.push(f.slice()));
  for (const f of frames) if (!gro.add(f)) out.push(f.slice());
  gro.flush();
  return { out, gro };
}

/** Cuts a super-frame as GSO would (prepareForWire's JavaScript segmentation). */
function resegment(frame: Uint8Array): Uint8Array[] {
  const out: Uint8Array[] = [];
  assert(prepareForWire(frame.slice(), MTU, (f) => out.push(f.slice())) > 0, "dropped");
  return out;
}

for (const v6 of [false, true]) {
  Deno.test(`gro: ${v6 ? "IPv6" : "IPv4"} bulk segments merge, and GSO gives them back`, () => {
    // The sequence numbers wrap past 2^32 in the middle.
    const segments = bulk(20, v6);
    const { out, gro } = coalesce(segments);
    assertEquals(out.length, 1);
    assertEquals(gro.merged, 19);
    assertEquals(out[0].length, segments[0].length + 19 * (v6 ? MSS6 : MSS4));
    const back = resegment(out[0]);
    assertEquals(back.length, segments.length);
    for (let i = 0; i < segments.length; i++) assertEquals(back[i], segments[i], `segment ${i}`);
  });
}

Deno.test("gro: the merged packet stays within 65535 bytes of IP", () => {
  const segments = bulk(60);
  const { out } = coalesce(segments);
  assert(out.length > 1, "60 full segments cannot fit one IPv4 packet");
  for (const f of out) assert(f.length - 14 <= 65535, `an IP packet of ${f.length - 14} bytes`);
  assertEquals(out.flatMap(resegment), segments);
});

Deno.test("gro: another flow, a gap, a pure ACK or a SYN ends the chain; order is kept", () => {
  const a = bulk(6, false, 1000);
  const other = bulk(1, false, 5000, 40001)[0];
  const ack = segment({ seq: 1, payload: 0 });
  const syn = segment({ seq: 1, payload: 10, flags: 0x02 });
  const gap = segment({ seq: 1000 + 7 * MSS4, payload: MSS4, id: 0x1006 });
  const input = [a[0], a[1], other, a[2], a[3], ack, a[4], syn, gap];
  const { out } = coalesce(input);
  // What came out, cut again, is what went in, in the same order.
  assertEquals(out.flatMap(resegment), input);
  assertEquals(out.length, 7); // [a0+a1] other [a2+a3] ack a4 syn gap
  assertEquals(tcpDataOffset(ack), -1);
  assertEquals(tcpDataOffset(syn), -1);
});

Deno.test("gro: a short segment or a PSH ends the chain; a wrong IP ID is not merged", () => {
  const short = segment({ seq: 100 + MSS4, payload: 500, id: 0x1001 });
  const after = segment({ seq: 100 + MSS4 + 500, payload: MSS4, id: 0x1002 });
  const first = segment({ seq: 100, payload: MSS4, id: 0x1000 });
  assertEquals(coalesce([first, short, after]).out.length, 2);
  const psh = segment({ seq: 100, payload: MSS4, id: 0x1000, flags: 0x18 });
  const next = segment({ seq: 100 + MSS4, payload: MSS4, id: 0x1001 });
  assertEquals(coalesce([psh, next]).out.length, 2);
  const badId = segment({ seq: 100 + MSS4, payload: MSS4, id: 0x2000 });
  assertEquals(coalesce([first, badId]).out.length, 2);
});

Deno.test("gro: padded, fragmented, VLAN-tagged and IP-option frames are never merged", () => {
  const f = segment({ seq: 1, payload: 100 });
  const padded = new Uint8Array(f.length + 4);
  padded.set(f);
  assertEquals(tcpDataOffset(padded), -1);
  const fragment = f.slice();
  fragment[14 + 6] |= 0x20; // MF
  assertEquals(tcpDataOffset(fragment), -1);
  const options = f.slice();
  options[14] = 0x46;
  assertEquals(tcpDataOffset(options), -1);
  const tagged = f.slice();
  tagged[12] = 0x81;
  tagged[13] = 0x00;
  assertEquals(tcpDataOffset(tagged), -1);
  assertEquals(tcpDataOffset(f), 34);
});
