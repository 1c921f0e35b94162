/**
 * The IPv4 TCP frames the data path's tests send: Ethernet from 02:00:00:00:00:02 to
 * 02:00:00:00:00:01, TCP from 10.0.0.1:40000 to 10.0.0.2:8080.
 */
import { internetChecksum } from "../src/dataplane/offload.ts";

/** An IPv4 TCP super-frame (DF, ACK) with `payload` bytes of data and a complete checksum. */
export function tcpSuperFrame(payload: number): Uint8Array {
  const f = new Uint8Array(14 + 20 + 20 + payload);
  f.set([2, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 2, 0x08, 0x00]);
  const tot = 40 + payload;
  f.set([0x45, 0, tot >>> 8, tot & 0xff, 0, 1, 0x40, 0, 64, 6, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2], 14);
  const ipSum = internetChecksum(f, 14, 34);
  f.set([ipSum >>> 8, ipSum & 0xff], 24);
  f.set([0x9c, 0x40, 0x1f, 0x90, 0, 0, 0, 1, 0, 0, 0, 1, 0x50, 0x10, 0xff, 0xff, 0, 0, 0, 0], 34);
  for (let i = 54; i < f.length; i++) f[i] = (i * 7) & 0xff;
  const pseudo = new Uint8Array(12 + 20 + payload);
  pseudo.set(f.subarray(26, 34));
  pseudo.set([0, 6, (20 + payload) >>> 8, (20 + payload) & 0xff], 8);
  pseudo.set(f.subarray(34), 12);
  const c = internetChecksum(pseudo);
  f.set([c >>> 8, c & 0xff], 34 + 16);
  return f;
}
