/**
 * The shared secret (src/link/secret.ts): hex, base64 and raw bytes each decoded exactly;
 * short and visibly patterned secrets refused with the command that makes a good one; what
 * `vnet secret` makes always accepted. No network, no root.
 */
import { assert, assertEquals, assertMatch } from "./assert.ts";
import {
  checkKeyMaterial,
  decodeSecret,
  estimateSecretBits,
  loadSecret,
  MIN_SECRET_BITS,
  newSecretText,
  SECRET_ENV,
  secretFromBytes,
} from "../../src/link/secret.ts";
import { VnetError } from "../../src/errors.ts";

const text = (s: string) => new TextEncoder().encode(s);
const random = (n: number) => crypto.getRandomValues(new Uint8Array(n));
const hex = (b: Uint8Array) => Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");
const base64 = (b: Uint8Array) => btoa(String.fromCharCode(...b));
const base64url = (b: Uint8Array) =>
  base64(b).replaceAll("+", "-").replaceAll("/", "_").replace(/=+$/, "");
/** The VnetError `f` throws (fails if it throws nothing or something else). */
function refusal(f: () => unknown): VnetError {
  try {
    f();
  } catch (e) {
    assert(e instanceof VnetError, `not a VnetError: ${e}`);
    assert(!e.message.includes("\n"), `not one line: ${e.message}`);
    return e;
  }
  throw new Error("nothing was thrown");
}

const HINT = /use `vnet secret`: make a good one with 'vnet secret --out FILE'$/;

async function withDir(fn: (dir: string) => Promise<void>): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "vnet-secret-test-" });
  try {
    await fn(dir);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

async function secretFile(path: string, data: Uint8Array): Promise<string> {
  await Deno.writeFile(path, data, { mode: 0o600 });
  await Deno.chmod(path, 0o600);
  return path;
}

Deno.test("secret: hex text is decoded exactly, either case, whitespace around it", () => {
  const key = random(32);
  for (const form of [hex(key), `${hex(key)}\n`, ` \t${hex(key).toUpperCase()}\r\n`]) {
    const d = decodeSecret(text(form));
    assertEquals(d.encoding, "hex");
    assertEquals(d.key, key);
  }
  // Whitespace inside is not hex text: the bytes are taken as they are.
  const split = `${hex(key).slice(0, 32)}\n${hex(key).slice(32)}\n`;
  assertEquals(decodeSecret(text(split)), { key: text(split), encoding: "raw" });
});

Deno.test("secret: base64 text, standard or URL alphabet, is decoded exactly", () => {
  for (const n of [32, 33, 34, 48]) {
    const key = random(n);
    for (const form of [base64(key), `${base64(key)}\n`, base64url(key)]) {
      const d = decodeSecret(text(form));
      assertEquals(d.key, key, `${n} bytes as ${form}`);
      assertEquals(d.encoding, "base64");
    }
  }
  // What `vnet secret` writes is 32 bytes in base64.
  const made = decodeSecret(text(newSecretText()));
  assertEquals(made.encoding, "base64");
  assertEquals(made.key.length, 32);
});

Deno.test("secret: inexact base64 is not decoded but taken as raw bytes", () => {
  const b = base64(random(32)); // 44 characters, the last one "="
  const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  const cases = {
    "too much padding": `${b}=`,
    "padding in the middle": `${b.slice(0, 20)}==${b.slice(22)}`,
    "mixed alphabets": `+_${b.slice(2)}`,
    "a length no bytes give": `${b.slice(0, 43)}AA`,
    // 32 bytes are 43 characters and "="; the 43rd carries 2 unused bits, which must be 0.
    "stray low bits": `${b.slice(0, 42)}${alphabet[alphabet.indexOf(b[42]) ^ 1]}=`,
  };
  for (const [what, form] of Object.entries(cases)) {
    assertEquals(decodeSecret(text(form)), { key: text(form), encoding: "raw" }, what);
  }
});

Deno.test("secret: raw bytes are the key as they are, never decoded as text", async () => {
  // Two different files of bytes 0x80-0xbf: as UTF-8 text both were 40 U+FFFD characters,
  // the same key, and they authenticated each other.
  const one = Uint8Array.from(random(40), (b) => 0x80 | (b & 0x3f));
  const two = Uint8Array.from(one, (b, i) => i === 7 ? 0x80 | ((b + 1) & 0x3f) : b);
  assert(hex(one) !== hex(two));
  assertEquals(new TextDecoder().decode(one), new TextDecoder().decode(two));
  await withDir(async (dir) => {
    const a = loadSecret(await secretFile(`${dir}/a`, one));
    const b = loadSecret(await secretFile(`${dir}/b`, two));
    assertEquals(a, one);
    assertEquals(b, two);
    assert(hex(a) !== hex(b), "two different binary secrets must be two different keys");
  });
  // Raw bytes are exact: a trailing newline is part of the key.
  const phrase = "Tr0ub4dor&3 correct horse battery staple, said nobody ever";
  assertEquals(decodeSecret(text(phrase + "\n")).key, text(phrase + "\n"));
});

Deno.test("secret: a random key in hex, base64 or raw always passes", () => {
  for (let i = 0; i < 2000; i++) {
    const key = random(32);
    for (const form of [text(hex(key)), text(base64(key) + "\n"), text(base64url(key)), key]) {
      assertEquals(secretFromBytes(form, "test"), key);
    }
  }
});

Deno.test("secret: shorter than 32 bytes of key material is refused with the hint", () => {
  const cases: [string, RegExp][] = [
    // 16 bytes as 32 hex characters: long enough as text, too short as a key.
    ["0123456789abcdef0123456789abcdef\n", /16 bytes of key material \(read as hex\)/],
    [base64(random(31)), /31 bytes of key material \(read as base64\)/],
    ["hunter2!", /8 bytes of key material \(read as raw bytes/],
    ["", /0 bytes/],
  ];
  for (const [form, re] of cases) {
    const e = refusal(() => secretFromBytes(text(form), "file 'x'"));
    assertMatch(e.message, /^the shared secret \(file 'x'\) is too short: /);
    assertMatch(e.message, re);
    assertMatch(e.message, /need at least 32/);
    assertMatch(e.message, HINT);
  }
});

Deno.test("secret: visibly low-entropy secrets are refused with the hint", () => {
  const few = (alphabet: string, n: number) =>
    Array.from(random(n), (b) => alphabet[b % alphabet.length]).join("");
  const cases = [
    "pass1word!".repeat(5), // a repeated pattern (raw: "!" is neither hex nor base64)
    "passwordpassword".repeat(4), // valid base64: 48 bytes of a repeated pattern
    "0".repeat(64), // hex: 32 zero bytes
    "Q".repeat(44), // base64: 33 bytes, a 3-byte pattern
    "\x00".repeat(64), // raw: one byte
    "0123456789abcdef".repeat(4), // hex: an 8-byte pattern, 4 times
    few("ab", 64) + "!", // raw: random, but two letters carry 1 bit each
    few("wxyz", 48), // base64 from four letters: 36 bytes that look varied, 96 bits of text
  ];
  for (const form of cases) {
    const e = refusal(() => secretFromBytes(text(form), "$VNET_SECRET"));
    assertMatch(e.message, /^the shared secret \(\$VNET_SECRET\) looks guessable: /, form);
    assertMatch(e.message, new RegExp(`need ${MIN_SECRET_BITS}\\)`));
    assertMatch(e.message, HINT);
  }
});

Deno.test("secret: the estimate: zero for one byte, collapses for a pattern, ~155 for random", () => {
  assertEquals(estimateSecretBits(new Uint8Array(32)), 0);
  // "passwordpassword..." uses 7 byte values and has 8 distinct 4-byte sequences: 11 × log2 7.
  const pattern = estimateSecretBits(text("passwordpassword".repeat(4)));
  assert(Math.abs(pattern - 11 * Math.log2(7)) < 1e-9, `${pattern}`);
  const bits = estimateSecretBits(random(32));
  assert(bits > 140 && bits <= 256, `${bits}`);
});

Deno.test("secret: $VNET_SECRET follows the same rules as a file", () => {
  const before = Deno.env.get(SECRET_ENV);
  try {
    const key = random(32);
    Deno.env.set(SECRET_ENV, hex(key));
    assertEquals(loadSecret(undefined), key);
    Deno.env.set(SECRET_ENV, ` ${base64(key)}\n`);
    assertEquals(loadSecret(undefined), key);
    // Raw bytes (not text), but no NUL: no environment variable can hold one.
    const raw = random(40).map((b) => b || 1);
    raw[0] = 0xff;
    Deno.env.set(SECRET_ENV, new TextDecoder("latin1").decode(raw));
    assertEquals(loadSecret(undefined).length >= 32, true);
    const phrase = "ünïcödé, raw: a long phrase of many different characters!";
    Deno.env.set(SECRET_ENV, phrase);
    assertMatch(refusal(() => loadSecret(undefined)).message, /is text of words/);
    Deno.env.set(SECRET_ENV, "passwordpassword");
    assertMatch(refusal(() => loadSecret(undefined)).message, /is too short/);
    Deno.env.delete(SECRET_ENV);
    const e = refusal(() => loadSecret(undefined));
    assertMatch(e.message, /^no shared secret: give --secret-file FILE or set VNET_SECRET; /);
    assertMatch(e.message, HINT);
  } finally {
    if (before === undefined) Deno.env.delete(SECRET_ENV);
    else Deno.env.set(SECRET_ENV, before);
  }
});

Deno.test("secret: a file must be private and present; the lab's 64 hex characters work", async () => {
  await withDir(async (dir) => {
    const key = random(32);
    const path = await secretFile(`${dir}/lab.secret`, text(hex(key) + "\n"));
    assertEquals(loadSecret(path), key);
    await Deno.chmod(path, 0o640);
    assertMatch(refusal(() => loadSecret(path)).message, /permissions 0640 for secret file/);
    assertMatch(refusal(() => loadSecret(`${dir}/none`)).message, /not found/);
  });
});

/** Issue 19's weak credentials, each accepted before: words, sequences, short tokens. */
const WEAK: [string, string, RegExp][] = [
  ["an English sentence", "The quick brown fox jumps over the lazy dog", /is text of words/],
  [
    "hex of the bytes 00..1f",
    Array.from({ length: 32 }, (_, i) => i.toString(16).padStart(2, "0")).join(""),
    /is a sequence/,
  ],
  [
    "the alphabet 0-9a-zA-Z",
    "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ",
    /is a sequence/,
  ],
  ["words of a passphrase", "correct horse battery staple orbit vivid amber lemon", /words/],
  ["the alphabet, backwards", "zyxwvutsrqponmlkjihgfedcbaZYXWVUTSRQPONMLKJIHGFEDCBA", /sequence/],
  ["a 1-byte token", "x", /too short: 1 bytes/],
  ["hunter2", "hunter2", /too short: 7 bytes/],
];

Deno.test("key material: words, sequences and short ones are refused, secret and token alike", () => {
  for (const [what, form, re] of WEAK) {
    for (const name of ["the shared secret (file 'x')", "the metrics token (file 'y')"]) {
      const e = refusal(() => checkKeyMaterial(text(form), name));
      assertMatch(e.message, re, what);
      assert(e.message.startsWith(name), e.message);
      assertMatch(e.message, HINT);
    }
  }
});

Deno.test("key material: what `vnet secret` makes, and random hex/base64/raw, always pass", () => {
  for (let i = 0; i < 5000; i++) {
    const key = random(32);
    checkKeyMaterial(text(newSecretText()), "secret");
    checkKeyMaterial(text(hex(key)), "secret");
    checkKeyMaterial(
      text(base64(key).replace(/=+$/, "").replaceAll("+", "-").replaceAll("/", "_")),
      "t",
    );
    checkKeyMaterial(key, "raw");
  }
});
