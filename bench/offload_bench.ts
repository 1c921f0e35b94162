/**
 * prepareForWire throughput. Run: deno bench -A bench/offload_bench.ts
 * Frames are built once; each iteration re-dirties the checksum so the repair path is measured.
 */
import { prepareForWire } from "../src/dataplane/offload.ts";

function tcpFrame(payloadLen: number): Uint8Array {
  const ipLen = 20 + 32 + payloadLen;
  const f = new Uint8Array(14 + ipLen);
  f.set([2, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 2, 0x08, 0x00]);
  f.set([0x45, 0, ipLen >>> 8, ipLen & 255, 0x12, 0x34, 0x40, 0, 64, 6, 0, 0], 14);
  f.set([10, 0, 0, 1, 10, 0, 0, 2], 26);
  f.set([0x9c, 0x40, 0x1f, 0x90, 1, 2, 3, 4, 5, 6, 7, 8, 0x80, 0x18, 1, 0xf5], 34);
  f.set([0, 0, 0, 0, 1, 1, 8, 10, 1, 2, 3, 4, 5, 6, 7, 8], 50);
  for (let i = 66; i < f.length; i++) f[i] = (i * 31) & 255;
  return f;
}

const small = tcpFrame(1448); // 1514 bytes on the wire
const big = tcpFrame(65535 - 52); // 64 KiB GSO super-frame
let sink = 0;
const emit = (f: Uint8Array) => {
  sink = (sink + f.length) & 0xffff; // stays a small integer: no boxing in the harness
};

// Warm the in-place path once so the first bench iteration sees a valid frame.
prepareForWire(small, 1500, emit);

Deno.bench("1514-byte TCP frame, checksum valid (verify only)", () => {
  prepareForWire(small, 1500, emit);
});

Deno.bench("1514-byte TCP frame, partial checksum (verify + rewrite)", () => {
  small[50] ^= 0x55; // TCP checksum field wrong again
  prepareForWire(small, 1500, emit);
});

Deno.bench("64 KiB TCP super-frame -> 46 segments at mtu 1500", () => {
  prepareForWire(big, 1500, emit);
});

const arp = new Uint8Array(42);
arp.set([0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 2, 0, 0, 0, 0, 1, 0x08, 0x06]);

Deno.bench("42-byte ARP frame (pass-through)", () => {
  prepareForWire(arp, 1500, emit);
});

addEventListener("unload", () => {
  if (sink < 0) console.log(sink);
});
