/**
 * Which AEAD the encrypted UDP transport uses, by measurement (issue 18): seal and open cost per
 * packet, and the throughput of one core doing both, at 64 B, 1400 B and 64 KiB.
 *
 *   deno run -A bench/aead.ts [--ms N] [--sizes 64,1400,65536] [--json]
 *
 * The contenders, each called synchronously once per packet, as the data path would:
 *   - `sodium-chacha20poly1305`: libsodium's ChaCha20-Poly1305 (IETF) over FFI;
 *   - `sodium-aes256gcm`: libsodium's AES-256-GCM over FFI, key expanded once (`beforenm`);
 *     only where the CPU has AES-NI;
 *   - `node-aes256gcm` and `node-chacha20poly1305`: node:crypto (Deno's own implementation
 *     of it), a `createCipheriv`/`createDecipheriv` per packet, which is what its API offers;
 *   - `session-<aead>`: each AEAD this machine runs, inside `UdpCryptoSession` (header,
 *     counter, replay window): what the datagram format adds to the bare AEAD.
 * Each case runs `--ms` milliseconds of seal-only, then of open-only (out of place, the same
 * ciphertext each time; opening does not change it), in 5 rounds of which the best counts.
 * `seal+open Gbit/s` is the payload one core can both seal and open per second:
 * size / (seal ns + open ns).
 */
import { createCipheriv, createDecipheriv } from "node:crypto";
import {
  aeadKey,
  type AeadName,
  aes256gcmAvailable,
  supportedAeads,
} from "../src/link/udp/aead.ts";
import { deriveSessionKeys, EphemeralKeyPair } from "../src/link/udp/keys.ts";
import { HEADER_BYTES, OVERHEAD_BYTES, UdpCryptoSession } from "../src/link/udp/session.ts";
import { sodium, sodiumVersion } from "../ffi/sodium.ts";

const args = Deno.args;
function flag(name: string, fallback: string): string {
  const i = args.indexOf(`--${name}`);
  return i >= 0 && i + 1 < args.length ? args[i + 1] : fallback;
}
const MS = Number(flag("ms", "1000"));
const SIZES = flag("sizes", "64,1400,65536").split(",").map(Number);
const JSON_OUT = args.includes("--json");

interface Contender {
  name: string;
  /** Seals `m` once; returns what `open` takes. */
  prepare(m: Uint8Array): Uint8Array;
  seal(m: Uint8Array): void;
  open(sealed: Uint8Array): void;
}

const key = new Uint8Array(32);
const ad = new Uint8Array(16);
sodium().randombytes_buf(key, BigInt(key.length));
sodium().randombytes_buf(ad, BigInt(ad.length));

function sodiumContender(name: AeadName, size: number): Contender {
  const k = aeadKey(name, key);
  const c = new Uint8Array(size + 16);
  const m2 = new Uint8Array(size);
  const nonce = new Uint8Array(12);
  const view = new DataView(nonce.buffer);
  const openNonce = new Uint8Array(12); // the nonce `prepare` sealed with
  let counter = 0;
  return {
    name: `sodium-${name}`,
    prepare(m) {
      k.seal(c, m, m.length, ad, ad.length, openNonce);
      return c.slice();
    },
    seal(m) {
      view.setUint32(8, ++counter);
      k.seal(c, m, m.length, ad, ad.length, nonce);
    },
    open(sealed) {
      if (!k.open(m2, sealed, sealed.length, ad, ad.length, openNonce)) {
        throw new Error("open failed");
      }
    },
  };
}

function nodeContender(cipher: "aes-256-gcm" | "chacha20-poly1305"): Contender {
  const iv = new Uint8Array(12);
  const view = new DataView(iv.buffer);
  let counter = 0;
  let tag: Uint8Array = new Uint8Array(16);
  const name = cipher === "aes-256-gcm" ? "node-aes256gcm" : "node-chacha20poly1305";
  const seal = (m: Uint8Array) => {
    const e = cipher === "aes-256-gcm"
      ? createCipheriv(cipher, key, iv, { authTagLength: 16 })
      : createCipheriv(cipher, key, iv, { authTagLength: 16 });
    e.setAAD(ad);
    const c = e.update(m);
    e.final();
    tag = e.getAuthTag();
    return c;
  };
  return {
    name,
    prepare(m) {
      view.setUint32(8, 0);
      const c = seal(m);
      const out = new Uint8Array(c.length + 16);
      out.set(c);
      out.set(tag, c.length);
      return out;
    },
    seal(m) {
      view.setUint32(8, ++counter);
      seal(m);
    },
    open(sealed) {
      view.setUint32(8, 0);
      const d = cipher === "aes-256-gcm"
        ? createDecipheriv(cipher, key, iv, { authTagLength: 16 })
        : createDecipheriv(cipher, key, iv, { authTagLength: 16 });
      d.setAAD(ad);
      d.setAuthTag(sealed.subarray(sealed.length - 16));
      d.update(sealed.subarray(0, sealed.length - 16));
      d.final();
    },
  };
}

/** A dialer's session and the acceptor's, over one key exchange, with `aead`. */
function sessionPair(aead: AeadName) {
  const d = new EphemeralKeyPair(), a = new EphemeralKeyPair();
  const linkSecret = new Uint8Array(32);
  sodium().randombytes_buf(linkSecret, BigInt(linkSecret.length));
  const dPublic = d.publicKey.slice();
  const dialerKeys = deriveSessionKeys({
    role: "dialer",
    aead,
    epoch: 0,
    linkSecret,
    ephemeral: d,
    peerPublic: a.publicKey,
  });
  const acceptorKeys = deriveSessionKeys({
    role: "acceptor",
    aead,
    epoch: 0,
    linkSecret,
    ephemeral: a,
    peerPublic: dPublic,
  });
  return {
    a: new UdpCryptoSession({ keys: dialerKeys, localId: 1, peerId: 2, now: 0 }),
    b: new UdpCryptoSession({ keys: acceptorKeys, localId: 2, peerId: 1, now: 0 }),
  };
}

/**
 * The whole datagram path: `UdpCryptoSession.seal` and `open`. Open is in place and refuses a
 * replay, so each open gets a datagram sealed just before; the seal's own time is taken out
 * afterwards.
 */
function sessionContender(aead: AeadName, size: number): Contender {
  const { a, b } = sessionPair(aead);
  const out = new Uint8Array(size + OVERHEAD_BYTES);
  const work = new Uint8Array(size + OVERHEAD_BYTES);
  return {
    name: `session-${aead}`,
    prepare(m) {
      return out.slice(0, a.seal(m, out));
    },
    seal(m) {
      a.seal(m, out);
    },
    open(sealed) {
      const n = a.seal(sealed.subarray(HEADER_BYTES, HEADER_BYTES + size), work);
      if (b.open(work.subarray(0, n)) === null) throw new Error("open failed");
    },
  };
}

/**
 * Runs `fn` for about `ms` milliseconds in 5 rounds; returns the best round's ns per call (the
 * machine's other work only ever adds time).
 */
function timeIt(fn: () => void, ms: number): number {
  for (let i = 0; i < 500; i++) fn(); // warm-up: JIT, caches
  let best = Infinity;
  for (let round = 0; round < 5; round++) {
    let calls = 0;
    let batch = 16;
    const start = performance.now();
    let elapsed = 0;
    while (elapsed < ms / 5) {
      for (let i = 0; i < batch; i++) fn();
      calls += batch;
      elapsed = performance.now() - start;
      if (elapsed < ms / 500) batch *= 2;
    }
    best = Math.min(best, (elapsed * 1e6) / calls);
  }
  return best;
}

interface Row {
  name: string;
  size: number;
  sealNs: number;
  openNs: number;
  gbps: number;
}

const contenders: ((size: number) => Contender)[] = [
  (size) => sodiumContender("chacha20poly1305", size),
  ...(aes256gcmAvailable() ? [(size: number) => sodiumContender("aes256gcm", size)] : []),
  () => nodeContender("aes-256-gcm"),
  () => nodeContender("chacha20-poly1305"),
  ...supportedAeads().map((aead) => (size: number) => sessionContender(aead, size)),
];

const rows: Row[] = [];
for (const size of SIZES) {
  const m = new Uint8Array(size);
  sodium().randombytes_buf(m, BigInt(m.length));
  for (const make of contenders) {
    const c = make(size);
    const sealed = c.prepare(m);
    const sealNs = timeIt(() => c.seal(m), MS);
    // The session's open includes a seal of its own; take it out again.
    const rawOpenNs = timeIt(() => c.open(sealed), MS);
    const openNs = c.name.startsWith("session-") ? rawOpenNs - sealNs : rawOpenNs;
    rows.push({ name: c.name, size, sealNs, openNs, gbps: (size * 8) / (sealNs + openNs) });
  }
}

if (JSON_OUT) {
  console.log(JSON.stringify({ libsodium: sodiumVersion(), rows }, null, 2));
} else {
  const cpu = Deno.readTextFileSync("/proc/cpuinfo").match(/model name\s*:\s*(.*)/)?.[1] ?? "?";
  console.log(
    `libsodium ${sodiumVersion()}, Deno ${Deno.version.deno}, ${cpu}, AES-NI: ${aes256gcmAvailable()}`,
  );
  console.log(
    `${"contender".padEnd(30)}${"size".padStart(7)}${"seal ns".padStart(10)}${
      "open ns".padStart(10)
    }${"seal+open Gbit/s".padStart(18)}`,
  );
  for (const r of rows) {
    console.log(
      `${r.name.padEnd(30)}${String(r.size).padStart(7)}${r.sealNs.toFixed(0).padStart(10)}${
        r.openNs.toFixed(0).padStart(10)
      }${r.gbps.toFixed(2).padStart(18)}`,
    );
  }
}
