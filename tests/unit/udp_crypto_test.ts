/**
 * The encrypted UDP transport's cryptography (src/link/udp/): the AEADs and the key derivation
 * against published vectors and an independent implementation (node:crypto), then the session:
 * the datagram layout, round trips, every refusal and its counter, and rekeying.
 */
import {
  createCipheriv,
  createPrivateKey,
  createPublicKey,
  diffieHellman,
  generateKeyPairSync,
  hkdfSync,
} from "node:crypto";
import { assert, assertEquals, assertThrows } from "./assert.ts";
import { sodium } from "../../ffi/sodium.ts";
import {
  aeadKey,
  type AeadName,
  aes256gcmAvailable,
  agreeAead,
  supportedAeads,
} from "../../src/link/udp/aead.ts";
import {
  deriveSessionKeys,
  EphemeralKeyPair,
  hkdfExpand,
  hkdfExtract,
  type LinkRole,
  type SessionKeys,
} from "../../src/link/udp/keys.ts";
import {
  DEFAULT_REKEY_LIMITS,
  HEADER_BYTES,
  HeaderOffset,
  OVERHEAD_BYTES,
  RekeyPolicy,
  SEALED_DATAGRAM_TYPE,
  SessionCounters,
  UdpCryptoSession,
} from "../../src/link/udp/session.ts";

const hex = (s: string) => Uint8Array.from(s.match(/../g) ?? [], (b) => parseInt(b, 16));
const toHex = (b: Uint8Array) => Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");
const range = (from: number, to: number) =>
  Uint8Array.from({ length: to - from + 1 }, (_, i) => from + i);
const random = (n: number) => {
  const b = new Uint8Array(n);
  if (n) sodium().randombytes_buf(b, BigInt(n));
  return b;
};
const AEADS = supportedAeads();

// ---------------------------------------------------------------------------------------------
// AEADs

Deno.test("aead: ChaCha20-Poly1305 gives RFC 8439 §2.8.2's ciphertext and tag", () => {
  const key = aeadKey("chacha20poly1305", range(0x80, 0x9f));
  const plaintext = new TextEncoder().encode(
    "Ladies and Gentlemen of the class of '99: If I could offer you only one tip for the " +
      "future, sunscreen would be it.",
  );
  const ad = hex("50515253c0c1c2c3c4c5c6c7");
  const nonce = hex("070000004041424344454647");
  const sealed = new Uint8Array(plaintext.length + 16);
  key.seal(sealed, plaintext, plaintext.length, ad, ad.length, nonce);
  assertEquals(
    toHex(sealed),
    "d31a8d34648e60db7b86afbc53ef7ec2a4aded51296e08fea9e2b5a736ee62d63dbea45e8ca9671282fafb" +
      "69da92728b1a71de0a9e060b2905d6a5b67ecd3b3692ddbd7f2d778b8c9803aee328091b58fab324e4fad6" +
      "75945585808b4831d7bc3ff4def08e4b7a9de576d26586cec64b6116" +
      "1ae10b594f09e26a7e902ecbd0600691",
  );
  const opened = new Uint8Array(plaintext.length);
  assert(key.open(opened, sealed, sealed.length, ad, ad.length, nonce));
  assertEquals(opened, plaintext);
});

for (const name of AEADS) {
  const nodeName = name === "aes256gcm" ? "aes-256-gcm" : "chacha20-poly1305";
  Deno.test(`aead ${name}: agrees with node:crypto's ${nodeName}, in place and not`, () => {
    for (const size of [0, 1, 15, 16, 17, 64, 1400, 65536]) {
      const k = random(32), nonce = random(12), ad = random(16), plaintext = random(size);
      const e = nodeName === "aes-256-gcm"
        ? createCipheriv(nodeName, k, nonce, { authTagLength: 16 })
        : createCipheriv(nodeName, k, nonce, { authTagLength: 16 });
      e.setAAD(ad);
      const expected = new Uint8Array([...e.update(plaintext), ...e.final(), ...e.getAuthTag()]);
      const key = aeadKey(name, k);
      const sealed = new Uint8Array(size + 16);
      key.seal(sealed, plaintext, size, ad, ad.length, nonce);
      assertEquals(toHex(sealed), toHex(expected), `${size} bytes`);
      // In place: the plaintext sits where the ciphertext goes.
      const inPlace = new Uint8Array(size + 16);
      inPlace.set(plaintext);
      key.seal(inPlace, inPlace, size, ad, ad.length, nonce);
      assertEquals(inPlace, sealed, `${size} bytes in place`);
      assert(key.open(inPlace, inPlace, inPlace.length, ad, ad.length, nonce));
      assertEquals(inPlace.subarray(0, size), plaintext, `${size} bytes opened in place`);
    }
  });

  Deno.test(`aead ${name}: a wrong tag, ad, nonce, key or length does not open`, () => {
    const k = random(32), nonce = random(12), ad = random(16), plaintext = random(100);
    const key = aeadKey(name, k);
    const sealed = new Uint8Array(116);
    key.seal(sealed, plaintext, 100, ad, ad.length, nonce);
    const out = new Uint8Array(100).fill(0xaa);
    const flip = (b: Uint8Array, i: number) => {
      const c = b.slice();
      c[i] ^= 1;
      return c;
    };
    assert(!key.open(out, flip(sealed, 115), 116, ad, ad.length, nonce), "tag");
    assertEquals(out, new Uint8Array(100), "refused: the output holds zeros, no plaintext");
    assert(!key.open(out, flip(sealed, 0), 116, ad, ad.length, nonce), "ciphertext");
    assert(!key.open(out, sealed, 116, flip(ad, 3), ad.length, nonce), "ad");
    assert(!key.open(out, sealed, 116, ad, ad.length - 1, nonce), "ad length");
    assert(!key.open(out, sealed, 116, ad, ad.length, flip(nonce, 11)), "nonce");
    assert(!aeadKey(name, flip(k, 0)).open(out, sealed, 116, ad, ad.length, nonce), "key");
    assert(!key.open(out, sealed, 115, ad, ad.length, nonce), "length");
    assert(!key.open(out, sealed, 15, ad, ad.length, nonce), "shorter than a tag");
    assert(key.open(out, sealed, 116, ad, ad.length, nonce), "the original still opens");
    assertEquals(out, plaintext);
  });
}

Deno.test("aead: a key is 32 bytes; a destroyed key opens nothing", () => {
  assertThrows(() => aeadKey("chacha20poly1305", new Uint8Array(16)), RangeError);
  const key = aeadKey("chacha20poly1305", random(32));
  const nonce = random(12), sealed = new Uint8Array(20);
  key.seal(sealed, random(4), 4, nonce, 0, nonce);
  key.destroy();
  assert(!key.open(new Uint8Array(4), sealed, 20, nonce, 0, nonce));
});

Deno.test("aead: AES-256-GCM is offered exactly where libsodium runs it, and preferred", () => {
  assertEquals(AEADS.includes("aes256gcm"), aes256gcmAvailable());
  assertEquals(AEADS[AEADS.length - 1], "chacha20poly1305");
  const both: AeadName[] = ["aes256gcm", "chacha20poly1305"];
  const chacha: AeadName[] = ["chacha20poly1305"];
  assertEquals(agreeAead(both, both), "aes256gcm");
  // Both sides reach the same answer, whoever asks.
  assertEquals(agreeAead(both, chacha), "chacha20poly1305");
  assertEquals(agreeAead(chacha, both), "chacha20poly1305");
  assertEquals(agreeAead(["aes256gcm"], chacha), null);
});

// ---------------------------------------------------------------------------------------------
// HKDF and X25519

Deno.test("hkdf: RFC 5869's SHA-256 test cases 1 to 3", () => {
  const cases = [
    {
      ikm: new Uint8Array(22).fill(0x0b),
      salt: range(0x00, 0x0c),
      info: range(0xf0, 0xf9),
      length: 42,
      prk: "077709362c2e32df0ddc3f0dc47bba6390b6c73bb50f9c3122ec844ad7c2b3e5",
      okm: "3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf34007208d5b887185865",
    },
    {
      ikm: range(0x00, 0x4f),
      salt: range(0x60, 0xaf),
      info: range(0xb0, 0xff),
      length: 82,
      prk: "06a6b88c5853361a06104c9ceb35b45cef760014904671014a193f40c15fc244",
      okm: "b11e398dc80327a1c8e7f78c596a49344f012eda2d4efad8a050cc4c19afa97c59045a99cac7827271" +
        "cb41c65e590e09da3275600c2f09b8367793a9aca3db71cc30c58179ec3e87c14c01d5c1f3434f1d87",
    },
    {
      ikm: new Uint8Array(22).fill(0x0b),
      salt: new Uint8Array(0),
      info: new Uint8Array(0),
      length: 42,
      prk: "19ef24a32c717b167f33a91d6f648bdf96596776afdb6377ac434c1c293ccb04",
      okm: "8da4e775a563c18f715f802a063c5a31b8a11f5c5ee1879ec3454e5f3c738d2d9d201395faa4b61a96c8",
    },
  ];
  for (const [i, c] of cases.entries()) {
    const prk = hkdfExtract(c.salt, c.ikm);
    assertEquals(toHex(prk), c.prk, `case ${i + 1} PRK`);
    assertEquals(toHex(hkdfExpand(prk, c.info, c.length)), c.okm, `case ${i + 1} OKM`);
  }
});

Deno.test("hkdf: agrees with node:crypto's hkdfSync; at most 255 blocks", () => {
  for (const length of [0, 1, 31, 32, 33, 64, 100, 255 * 32]) {
    const ikm = random(1 + (length % 70)), salt = random(length % 90), info = random(length % 40);
    const expected = new Uint8Array(hkdfSync("sha256", ikm, salt, info, length));
    assertEquals(toHex(hkdfExpand(hkdfExtract(salt, ikm), info, length)), toHex(expected));
  }
  assertThrows(() => hkdfExpand(random(32), new Uint8Array(0), 255 * 32 + 1), RangeError);
});

Deno.test("x25519: RFC 7748 §6.1's key pairs and shared secret", () => {
  const s = sodium();
  const alice = hex("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a");
  const bob = hex("5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb");
  const alicePublic = new Uint8Array(32), bobPublic = new Uint8Array(32);
  s.crypto_scalarmult_curve25519_base(alicePublic, alice);
  s.crypto_scalarmult_curve25519_base(bobPublic, bob);
  assertEquals(
    toHex(alicePublic),
    "8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a",
  );
  assertEquals(
    toHex(bobPublic),
    "de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f",
  );
  const shared = new Uint8Array(32);
  assertEquals(s.crypto_scalarmult_curve25519(shared, alice, bobPublic), 0);
  assertEquals(toHex(shared), "4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742");
});

Deno.test("x25519: ephemeral pairs agree, once each, and refuse low-order points", () => {
  const a = new EphemeralKeyPair(), b = new EphemeralKeyPair();
  assert(toHex(a.publicKey) !== toHex(b.publicKey));
  const ab = a.agree(b.publicKey), ba = b.agree(a.publicKey);
  assertEquals(toHex(ab), toHex(ba));
  assertThrows(() => a.agree(b.publicKey), /already been used/);
  assertThrows(() => new EphemeralKeyPair().agree(new Uint8Array(31)), RangeError);
  // The identity and a point of order 8: the shared secret would be all zeros.
  assertThrows(() => new EphemeralKeyPair().agree(new Uint8Array(32)), /low order/);
  const order8 = hex("e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800");
  assertThrows(() => new EphemeralKeyPair().agree(order8), /low order/);
  const abandoned = new EphemeralKeyPair();
  abandoned.destroy();
  assertThrows(() => abandoned.agree(b.publicKey), /already been used/);
});

// ---------------------------------------------------------------------------------------------
// Session keys

interface Exchange {
  dialer: SessionKeys;
  acceptor: SessionKeys;
}

/** Both sides of one epoch's exchange over a link whose secret is `linkSecret`. */
function exchange(
  aead: AeadName,
  epoch = 0,
  linkSecret = random(32),
  acceptorLinkSecret = linkSecret,
): Exchange {
  const d = new EphemeralKeyPair(), a = new EphemeralKeyPair();
  const dPublic = d.publicKey.slice(), aPublic = a.publicKey.slice();
  return {
    dialer: deriveSessionKeys({
      role: "dialer",
      aead,
      epoch,
      linkSecret,
      ephemeral: d,
      peerPublic: aPublic,
    }),
    acceptor: deriveSessionKeys({
      role: "acceptor",
      aead,
      epoch,
      linkSecret: acceptorLinkSecret,
      ephemeral: a,
      peerPublic: dPublic,
    }),
  };
}

Deno.test("keys: each side's send key is the other's receive key, and the two differ", () => {
  for (const aead of AEADS) {
    const { dialer, acceptor } = exchange(aead, 7);
    assertEquals(toHex(dialer.send), toHex(acceptor.receive));
    assertEquals(toHex(dialer.receive), toHex(acceptor.send));
    assert(toHex(dialer.send) !== toHex(dialer.receive), "the directions share no key");
    assertEquals([dialer.epoch, acceptor.epoch, dialer.aead, acceptor.aead], [7, 7, aead, aead]);
    assertEquals([dialer.send.length, dialer.receive.length], [32, 32]);
  }
});

Deno.test("keys: the derivation is the documented one (checked with node:crypto)", () => {
  // The peer's ephemeral pair is node:crypto's, so the shared secret, the HKDF and the labels
  // are all computed a second time, independently.
  const peer = generateKeyPairSync("x25519");
  const peerPublic = Uint8Array.from(
    atob(peer.publicKey.export({ format: "jwk" }).x!.replace(/-/g, "+").replace(/_/g, "/")),
    (c) => c.charCodeAt(0),
  );
  const ours = new EphemeralKeyPair();
  const ourPublic = ours.publicKey.slice();
  const linkSecret = random(32);
  const keys = deriveSessionKeys({
    role: "acceptor",
    aead: "chacha20poly1305",
    epoch: 3,
    linkSecret,
    ephemeral: ours,
    peerPublic,
  });
  const b64url = (b: Uint8Array) =>
    btoa(String.fromCharCode(...b)).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
  const shared = new Uint8Array(diffieHellman({
    privateKey: createPrivateKey(peer.privateKey.export({ format: "pem", type: "pkcs8" })),
    publicKey: createPublicKey({
      key: { kty: "OKP", crv: "X25519", x: b64url(ourPublic) },
      format: "jwk",
    }),
  }));
  const text = (s: string) => new TextEncoder().encode(s);
  const info = (direction: string) =>
    new Uint8Array([
      ...text("vnet/udp-aead v1"),
      0,
      ...text("chacha20poly1305"),
      0,
      3,
      ...peerPublic, // the dialer's
      ...ourPublic, // the acceptor's
      ...text(direction),
    ]);
  const expand = (direction: string) =>
    toHex(new Uint8Array(hkdfSync("sha256", shared, linkSecret, info(direction), 32)));
  assertEquals(toHex(keys.send), expand("acceptor->dialer"));
  assertEquals(toHex(keys.receive), expand("dialer->acceptor"));
});

Deno.test("keys: another link secret, epoch or AEAD gives other keys", () => {
  // A man in the middle who swapped the publics but lacks the link secret: keys that match
  // nothing on either side.
  const mitm = exchange("chacha20poly1305", 0, random(32), random(32));
  assert(toHex(mitm.dialer.send) !== toHex(mitm.acceptor.receive));
  // Same ephemeral inputs are impossible to repeat (pairs are single use), so compare epochs
  // and AEADs through fresh exchanges: every key is distinct.
  const all = [exchange("chacha20poly1305", 0), exchange("chacha20poly1305", 1)]
    .flatMap((x) => [x.dialer.send, x.dialer.receive]).map(toHex);
  assertEquals(new Set(all).size, all.length);
});

Deno.test("keys: a short link secret, a bad epoch or a used pair is refused", () => {
  const base = () => ({
    role: "dialer" as LinkRole,
    aead: "chacha20poly1305" as AeadName,
    epoch: 0,
    linkSecret: random(32),
    ephemeral: new EphemeralKeyPair(),
    peerPublic: new EphemeralKeyPair().publicKey,
  });
  assertThrows(() => deriveSessionKeys({ ...base(), linkSecret: random(15) }), RangeError);
  assertThrows(() => deriveSessionKeys({ ...base(), epoch: 256 }), RangeError);
  assertThrows(() => deriveSessionKeys({ ...base(), epoch: -1 }), RangeError);
  const x = base();
  deriveSessionKeys(x);
  assertThrows(() => deriveSessionKeys(x), /already been used/);
});

// ---------------------------------------------------------------------------------------------
// Sessions

const DIALER_ID = 0x11223344;
const ACCEPTOR_ID = 0xa0b0c0d0;

/** A dialer and an acceptor session over one fresh exchange. */
function sessionPair(
  aead: AeadName,
  { now = 0, policy, replayWindowBits }: {
    now?: number;
    policy?: RekeyPolicy;
    replayWindowBits?: number;
  } = {},
) {
  const x = exchange(aead);
  const dialer = new UdpCryptoSession({
    keys: x.dialer,
    localId: DIALER_ID,
    peerId: ACCEPTOR_ID,
    now,
    policy,
    replayWindowBits,
  });
  const acceptor = new UdpCryptoSession({
    keys: x.acceptor,
    localId: ACCEPTOR_ID,
    peerId: DIALER_ID,
    now,
    policy,
    replayWindowBits,
  });
  return { dialer, acceptor };
}

/** Seals `plaintext` from `from`; a copy of the datagram. */
function seal(from: UdpCryptoSession, plaintext: Uint8Array): Uint8Array {
  const out = new Uint8Array(plaintext.length + OVERHEAD_BYTES + 10);
  const n = from.seal(plaintext, out);
  assertEquals(n, plaintext.length + OVERHEAD_BYTES);
  return out.slice(0, n);
}

/** Opens a copy of `datagram` at `to` (open works in place); the plaintext or null. */
function open(to: UdpCryptoSession, datagram: Uint8Array): Uint8Array | null {
  return to.open(datagram.slice());
}

/** The counters that are not zero. */
function nonZero(c: SessionCounters): Record<string, number> {
  return Object.fromEntries(Object.entries(c).filter(([, v]) => v !== 0));
}

for (const aead of AEADS) {
  Deno.test(`session ${aead}: round trips both ways, from empty to 64 KiB`, () => {
    const { dialer, acceptor } = sessionPair(aead);
    for (const size of [0, 1, 64, 1400, 9000, 65507 - OVERHEAD_BYTES]) {
      const m = random(size);
      assertEquals(open(acceptor, seal(dialer, m)), m, `dialer -> acceptor, ${size} bytes`);
      const r = random(size);
      assertEquals(open(dialer, seal(acceptor, r)), r, `acceptor -> dialer, ${size} bytes`);
    }
    assertEquals(nonZero(dialer.counters), { sealed: 6, opened: 6 });
    assertEquals(nonZero(acceptor.counters), { sealed: 6, opened: 6 });
  });
}

Deno.test("session: the header's layout", () => {
  const { dialer, acceptor } = sessionPair("chacha20poly1305");
  assertEquals(HeaderOffset, { type: 0, epoch: 1, reserved: 2, receiverId: 4, counter: 8 });
  assertEquals([HEADER_BYTES, OVERHEAD_BYTES, SEALED_DATAGRAM_TYPE], [16, 32, 1]);
  for (let i = 0; i < 3; i++) seal(dialer, random(5));
  const d = seal(dialer, random(5));
  assertEquals(d.length, 5 + 32);
  assertEquals(
    toHex(d.subarray(0, HEADER_BYTES)),
    "01" + // type
      "00" + // epoch
      "0000" + // reserved
      "a0b0c0d0" + // the receiver's (acceptor's) session id
      "0000000000000003", // counter: the fourth datagram
  );
  assertEquals(
    toHex(seal(acceptor, random(0)).subarray(0, HEADER_BYTES)),
    "0100000011223344" + "0".repeat(16),
  );
});

Deno.test("session: sealing in place, and into a buffer too small", () => {
  const { dialer, acceptor } = sessionPair("chacha20poly1305");
  const m = random(300);
  const out = new Uint8Array(2000);
  out.set(m, HEADER_BYTES);
  const n = dialer.seal(out.subarray(HEADER_BYTES, HEADER_BYTES + m.length), out);
  assertEquals(open(acceptor, out.subarray(0, n)), m);
  // The same `out` again (the cached view past the header), then another one.
  assertEquals(open(acceptor, out.subarray(0, dialer.seal(m, out))), m);
  assertEquals(open(acceptor, seal(dialer, m)), m);
  assertThrows(() => dialer.seal(m, new Uint8Array(m.length + OVERHEAD_BYTES - 1)), RangeError);
  assertEquals(dialer.counters.sealed, 3, "the refused seal used no counter");
});

Deno.test("session: open is in place, the plaintext a view into the datagram", () => {
  const { dialer, acceptor } = sessionPair("chacha20poly1305");
  const d = seal(dialer, random(40));
  const p = acceptor.open(d)!;
  assertEquals(p.buffer, d.buffer);
  assertEquals([p.byteOffset, p.length], [HEADER_BYTES, 40]);
});

for (const aead of AEADS) {
  Deno.test(`session ${aead}: a flipped bit anywhere is refused, and changes nothing`, () => {
    const { dialer, acceptor } = sessionPair(aead);
    const m = random(20);
    const d = seal(dialer, m);
    let refused = 0;
    for (let i = 0; i < d.length * 8; i++) {
      const bad = d.slice();
      bad[i >> 3] ^= 1 << (i & 7);
      assertEquals(acceptor.open(bad), null, `bit ${i}`);
      refused++;
    }
    const c = acceptor.counters;
    assertEquals(
      c.short + c.malformed + c.unknownEpoch + c.tooOld + c.replayed + c.forged,
      refused,
    );
    assertEquals(c.unknownEpoch, 8, "the epoch byte's bits");
    // type (8), reserved (16), receiver id (32), the counter's high half (32): before the AEAD.
    assertEquals(c.malformed, 8 + 16 + 32 + 32);
    // The counter's low half, the ciphertext and the tag: one AEAD check each.
    assertEquals(c.forged, 32 + 20 * 8 + 16 * 8);
    assertEquals(c.opened, 0);
    assertEquals(open(acceptor, d), m, "the genuine datagram still opens");
  });
}

Deno.test("session: truncated or extended datagrams are refused", () => {
  const { dialer, acceptor } = sessionPair("chacha20poly1305");
  const m = random(50);
  const d = seal(dialer, m);
  for (let n = 0; n < d.length; n++) assertEquals(open(acceptor, d.subarray(0, n)), null, `${n}`);
  assertEquals(acceptor.counters.short, OVERHEAD_BYTES);
  assertEquals(acceptor.counters.forged, d.length - OVERHEAD_BYTES);
  const longer = new Uint8Array(d.length + 1);
  longer.set(d);
  assertEquals(open(acceptor, longer), null);
  // Cut from the front: the header no longer says what it should.
  assertEquals(open(acceptor, d.subarray(1)), null);
  assertEquals(open(acceptor, d), m);
});

Deno.test("session: replays and datagrams below the window are refused", () => {
  const { dialer, acceptor } = sessionPair("chacha20poly1305", { replayWindowBits: 64 });
  const first = seal(dialer, random(10));
  assert(open(acceptor, first) !== null);
  assertEquals(open(acceptor, first), null);
  assertEquals(open(acceptor, first), null);
  assertEquals(acceptor.counters.replayed, 2);
  // Out of order within the window: fine, once.
  const late = seal(dialer, random(10));
  const datagrams = Array.from({ length: 40 }, () => seal(dialer, random(10)));
  assert(open(acceptor, datagrams[39]) !== null);
  assert(open(acceptor, datagrams[20]) !== null);
  assertEquals(open(acceptor, datagrams[20]), null);
  // `late` (counter 1) is 40 behind the highest (41): outside a 32-counter window.
  assertEquals(open(acceptor, late), null);
  assertEquals(nonZero(acceptor.counters), { opened: 3, replayed: 3, tooOld: 1 });
});

Deno.test("session: a forged counter far ahead does not move the window", () => {
  const { dialer, acceptor } = sessionPair("chacha20poly1305", { replayWindowBits: 64 });
  const m = random(10);
  const genuine = seal(dialer, m);
  const forged = genuine.slice();
  forged[12] = 0xff; // counter 0xff000000: passes the window check, fails the AEAD
  assertEquals(open(acceptor, forged), null);
  assertEquals(acceptor.counters.forged, 1);
  // Had the window moved to 0xff000000, counter 0 would now be too old.
  assertEquals(open(acceptor, genuine), m);
});

Deno.test("session: random bytes, other sessions' and reflected datagrams are refused", () => {
  const { dialer, acceptor } = sessionPair("chacha20poly1305");
  for (let i = 0; i < 2000; i++) assertEquals(acceptor.open(random(i % 200)), null);
  // Random bodies behind a valid header: one AEAD check each, nothing opens.
  const header = seal(dialer, random(0)).subarray(0, HEADER_BYTES);
  let forged = 0;
  for (let i = 0; i < 2000; i++) {
    const d = random(OVERHEAD_BYTES + (i % 100));
    d.set(header);
    d[15] = i; // a counter still in the window
    d[14] = i >> 8;
    assertEquals(acceptor.open(d), null);
    forged++;
  }
  assertEquals(acceptor.counters.opened, 0);
  assert(acceptor.counters.forged >= forged);
  // Another session with the same ids and epoch: its keys are not ours.
  const other = sessionPair("chacha20poly1305");
  const before = acceptor.counters.forged;
  assertEquals(open(acceptor, seal(other.dialer, random(10))), null);
  assertEquals(acceptor.counters.forged, before + 1);
  // Reflected back to its sender: the id is the peer's, and with equal ids the key is too.
  assertEquals(open(dialer, seal(dialer, random(10))), null);
  assertEquals(dialer.counters.malformed, 1);
  const x = exchange("chacha20poly1305");
  const same = new UdpCryptoSession({ keys: x.dialer, localId: 9, peerId: 9, now: 0 });
  assertEquals(open(same, seal(same, random(10))), null);
  assertEquals(same.counters.forged, 1);
});

Deno.test("session: a datagram of an unknown epoch is refused before the AEAD", () => {
  const { dialer, acceptor } = sessionPair("chacha20poly1305");
  const d = seal(dialer, random(10));
  for (const epoch of [1, 2, 255, 128]) {
    const bad = d.slice();
    bad[HeaderOffset.epoch] = epoch;
    assertEquals(open(acceptor, bad), null);
  }
  assertEquals(nonZero(acceptor.counters), { unknownEpoch: 4 });
});

Deno.test("session: ids are u32s", () => {
  const x = exchange("chacha20poly1305");
  for (const id of [-1, 2 ** 32, 1.5]) {
    assertThrows(() => new UdpCryptoSession({ keys: x.dialer, localId: id, peerId: 1, now: 0 }));
    assertThrows(() => new UdpCryptoSession({ keys: x.dialer, localId: 1, peerId: id, now: 0 }));
  }
});

// ---------------------------------------------------------------------------------------------
// Rekeying

/** The rekey exchange: the dialer asks, the acceptor answers; the keys for `epoch`. */
function rekeyBoth(
  dialer: UdpCryptoSession,
  acceptor: UdpCryptoSession,
  now: number,
  aead: AeadName = "chacha20poly1305",
) {
  const x = exchange(aead, (dialer.epoch + 1) & 0xff);
  acceptor.rekey(x.acceptor, now, { peerHasKeys: false }); // derives first, answers
  return () => dialer.rekey(x.dialer, now, { peerHasKeys: true }); // when the answer arrives
}

Deno.test("rekey: no datagram is lost across the change, old keys linger then go", () => {
  const { dialer, acceptor } = sessionPair("chacha20poly1305", { now: 0 });
  const linger = DEFAULT_REKEY_LIMITS.previousKeyLingerMs;
  const oldFromDialer = seal(dialer, random(10)); // in flight across the change
  const finishDialer = rekeyBoth(dialer, acceptor, 1000);
  // The acceptor answered: it opens epoch 1 already, and still seals with epoch 0.
  assertEquals(acceptor.receiveEpochs, [0, 1]);
  assertEquals(acceptor.epoch, 0);
  const oldFromAcceptor = seal(acceptor, random(10));
  assert(open(dialer, oldFromAcceptor) !== null);
  // The answer arrives: the dialer seals with epoch 1 at once.
  finishDialer();
  assertEquals(dialer.epoch, 1);
  assertEquals(dialer.receiveEpochs, [1, 0]);
  const newFromDialer = seal(dialer, random(10));
  assertEquals(newFromDialer[HeaderOffset.epoch], 1);
  // The acceptor, still on epoch 0, is heard by the dialer's previous key.
  assert(open(dialer, seal(acceptor, random(10))) !== null);
  // The first epoch-1 datagram switches the acceptor over.
  acceptor.tick(1100);
  assert(open(acceptor, newFromDialer) !== null);
  assertEquals(acceptor.epoch, 1);
  assertEquals(acceptor.receiveEpochs, [1, 0]);
  // What the dialer sealed with epoch 0 before the change still opens.
  assert(open(acceptor, oldFromDialer) !== null);
  // The acceptor's epoch-1 datagrams open; the dialer now knows the acceptor switched.
  dialer.tick(1200);
  const newFromAcceptor = seal(acceptor, random(10));
  assertEquals(newFromAcceptor[HeaderOffset.epoch], 1);
  assert(open(dialer, newFromAcceptor) !== null);
  assertEquals(oldFromAcceptor[HeaderOffset.epoch], 0);
  // Until the linger is up, epoch 0 still opens (a late duplicate is still a replay)...
  const lateFromAcceptor = oldFromAcceptor.slice();
  assertEquals(open(dialer, lateFromAcceptor), null);
  assertEquals(dialer.counters.replayed, 1);
  // ...then the old keys go, on both sides.
  acceptor.tick(1100 + linger);
  dialer.tick(1200 + linger);
  assertEquals(acceptor.receiveEpochs, [1]);
  assertEquals(dialer.receiveEpochs, [1]);
  const stale = oldFromDialer.slice();
  stale[15] = 99; // another counter: not a replay, but the epoch is gone
  assertEquals(open(acceptor, stale), null);
  assertEquals(acceptor.counters.unknownEpoch, 1);
  assertEquals(acceptor.counters.forged, 0);
  assertEquals(dialer.counters.forged, 0);
});

Deno.test("rekey: the previous key waits for the peer to switch, up to its hard limit", () => {
  const { dialer, acceptor } = sessionPair("chacha20poly1305", { now: 0 });
  rekeyBoth(dialer, acceptor, 0)();
  // The acceptor never hears epoch 1 and keeps sealing with epoch 0: the dialer keeps
  // listening for it, past the linger...
  dialer.tick(DEFAULT_REKEY_LIMITS.previousKeyLingerMs * 3);
  assert(open(dialer, seal(acceptor, random(10))) !== null);
  // ...but not past the old key's own end, when the acceptor could not seal with it either.
  dialer.tick(DEFAULT_REKEY_LIMITS.rejectAfterMs);
  assertEquals(dialer.receiveEpochs, [1]);
  acceptor.tick(DEFAULT_REKEY_LIMITS.rejectAfterMs);
  assertEquals(acceptor.seal(random(10), new Uint8Array(100)), -1);
  assertEquals(acceptor.counters.refused, 1);
});

Deno.test("rekey: confirmRekey switches the answering side without a datagram", () => {
  const { dialer, acceptor } = sessionPair("chacha20poly1305");
  const finish = rekeyBoth(dialer, acceptor, 0);
  acceptor.confirmRekey();
  assertEquals(acceptor.epoch, 1);
  finish();
  assert(open(dialer, seal(acceptor, random(10))) !== null);
  assert(open(acceptor, seal(dialer, random(10))) !== null);
  acceptor.confirmRekey(); // nothing pending: nothing happens
  assertEquals(acceptor.epoch, 1);
});

Deno.test("rekey: only epoch + 1, one at a time; the epoch wraps after 255", () => {
  const { dialer, acceptor } = sessionPair("chacha20poly1305");
  assertThrows(
    () => dialer.rekey(exchange("chacha20poly1305", 2).dialer, 0, { peerHasKeys: true }),
    /next epoch is 1/,
  );
  rekeyBoth(dialer, acceptor, 0);
  assertThrows(() => rekeyBoth(dialer, acceptor, 0), /already pending/);
  assertEquals(acceptor.shouldRekey(1e9), false, "nothing more to ask while one is pending");

  const pair = sessionPair("chacha20poly1305");
  // Counter 4 of the first epoch 0: a counter the second epoch 0 will not have seen.
  const firstOfEpoch0 = Array.from({ length: 5 }, () => seal(pair.dialer, random(4)))[4];
  for (let epoch = 1; epoch <= 260; epoch++) {
    rekeyBoth(pair.dialer, pair.acceptor, epoch)();
    const d = seal(pair.dialer, random(4));
    assertEquals(d[HeaderOffset.epoch], epoch & 0xff);
    assert(open(pair.acceptor, d) !== null, `epoch ${epoch}`);
    assert(open(pair.dialer, seal(pair.acceptor, random(4))) !== null, `epoch ${epoch} back`);
    if (epoch === 256) {
      // Epoch 0 again, with other keys: the first epoch 0's datagrams do not open under them.
      const forged = pair.acceptor.counters.forged;
      assertEquals(open(pair.acceptor, firstOfEpoch0), null);
      assertEquals(pair.acceptor.counters.forged, forged + 1);
    }
  }
  assertEquals(pair.dialer.epoch, 260 & 0xff);
});

Deno.test("rekey: new keys, counters from 0 again", () => {
  const { dialer, acceptor } = sessionPair("chacha20poly1305");
  for (let i = 0; i < 5; i++) open(acceptor, seal(dialer, random(4)));
  rekeyBoth(dialer, acceptor, 0)();
  const d = seal(dialer, random(4));
  assertEquals(toHex(d.subarray(8, 16)), "0000000000000000");
  assert(open(acceptor, d) !== null);
});

Deno.test("rekey policy: due after 2 minutes or 2^31 datagrams, spent after 3 or 2^32", () => {
  const p = new RekeyPolicy();
  assertEquals(p.judge(0, 0), "keep");
  assertEquals(p.judge(119_999, 2 ** 31 - 1), "keep");
  assertEquals(p.judge(120_000, 0), "rekey");
  assertEquals(p.judge(0, 2 ** 31), "rekey");
  assertEquals(p.judge(180_000, 0), "expired");
  assertEquals(p.judge(0, 2 ** 32), "expired");
  assert(DEFAULT_REKEY_LIMITS.rejectAfterPackets <= 2 ** 32, "the issue: before 2^32");
  assertThrows(() => new RekeyPolicy({ ...DEFAULT_REKEY_LIMITS, rejectAfterPackets: 2 ** 32 + 1 }));
  assertThrows(() => new RekeyPolicy({ ...DEFAULT_REKEY_LIMITS, rekeyAfterMs: 180_000 }));
  assertThrows(() => new RekeyPolicy({ ...DEFAULT_REKEY_LIMITS, rekeyAfterPackets: 2 ** 32 }));
});

Deno.test("rekey policy: the session asks for a rekey, then refuses to seal", () => {
  const policy = new RekeyPolicy({
    ...DEFAULT_REKEY_LIMITS,
    rekeyAfterPackets: 3,
    rejectAfterPackets: 5,
  });
  const { dialer, acceptor } = sessionPair("chacha20poly1305", { policy, now: 5000 });
  assertEquals(dialer.shouldRekey(5000), false);
  assertEquals(dialer.shouldRekey(5000 + 119_999), false);
  assertEquals(dialer.shouldRekey(5000 + 120_000), true);
  for (let i = 0; i < 3; i++) seal(dialer, random(1));
  assertEquals(dialer.shouldRekey(5000), true);
  seal(dialer, random(1));
  seal(dialer, random(1));
  const out = new Uint8Array(100);
  assertEquals(dialer.seal(random(1), out), -1);
  assertEquals(dialer.counters.refused, 1);
  assertEquals(dialer.counters.sealed, 5);
  // A rekey brings it back.
  rekeyBoth(dialer, acceptor, 6000)();
  assertEquals(dialer.shouldRekey(6000), false);
  assert(open(acceptor, seal(dialer, random(1))) !== null);
  // Time: sealing stops once tick sees the key is 3 minutes old.
  dialer.tick(6000 + 179_999);
  assert(dialer.seal(random(1), out) > 0);
  dialer.tick(6000 + 180_000);
  assertEquals(dialer.seal(random(1), out), -1);
});

Deno.test("session: close wipes the keys; nothing seals or opens", () => {
  const { dialer, acceptor } = sessionPair("chacha20poly1305");
  const d = seal(dialer, random(10));
  acceptor.close();
  assertEquals(open(acceptor, d), null);
  assertEquals(acceptor.seal(random(1), new Uint8Array(100)), -1);
});
