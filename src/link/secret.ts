/**
 * The shared secret every connection proves knowledge of (auth.ts). It comes from a file or
 * the environment, never from the command line, where the process list would show it.
 *
 * A secret is a key: at least 32 bytes of key material. The handshake's protection against
 * offline guessing (anyone who records one handshake may try keys at leisure) rests on that
 * material being random, so a short or visibly patterned secret is refused. The material is
 * decoded exactly, in this order:
 *
 *   1. hex text: only 0-9 a-f (or A-F), an even number of them, with optional whitespace or a
 *      newline around it (`openssl rand -hex 32`);
 *   2. base64 text: the standard or the URL alphabet, canonical, padded with `=` as it must
 *      be (the URL alphabet may omit the padding), optional whitespace around it
 *      (`vnet secret`, `head -c 32 /dev/urandom | base64`);
 *   3. anything else: the file's bytes exactly as they are (no text decoding, no trimming), or
 *      for $VNET_SECRET the UTF-8 bytes of its value.
 */
import { VnetError } from "../errors.ts";

export const SECRET_ENV = "VNET_SECRET";
/** Bytes of key material a secret must have: an HMAC-SHA-256 key as long as its output. */
const MIN_SECRET_BYTES = 32;
/** What `estimateSecretBits` must find; a random 32-byte key scores about 155. */
export const MIN_SECRET_BITS = 128;
/** Bytes `vnet secret` writes. */
export const NEW_SECRET_BYTES = 32;
const HOW_TO_MAKE = "use `vnet secret`: make a good one with 'vnet secret --out FILE'";

/** `path` as a shell word, quoted only when it needs to be (for "run chmod 600 PATH"). */
export function shellQuote(path: string): string {
  return /^[\w@%+=:,./-]+$/.test(path) ? path : `'${path.replaceAll("'", `'\\''`)}'`;
}

/**
 * Refuses a private file (secret, key) that group or others may access, as OpenSSH does:
 * `permissions 0644 for secret file 'x' are too open; run chmod 600 x`. Also one clear line if
 * it is missing or not a regular file. Modes are not checked where the OS has none (Windows).
 */
export function checkPrivateFile(path: string, what = ""): void {
  const named = what ? `${what} '${path}'` : `'${path}'`;
  let info: Deno.FileInfo;
  try {
    info = Deno.statSync(path);
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) throw new VnetError(`${named} not found`);
    throw new VnetError(`cannot read ${named}: ${(e as Error).message}`, { cause: e });
  }
  if (!info.isFile) throw new VnetError(`${named} is not a regular file`);
  if (info.mode !== null && (info.mode & 0o077) !== 0 && Deno.build.os !== "windows") {
    const mode = (info.mode & 0o7777).toString(8).padStart(4, "0");
    throw new VnetError(
      `permissions ${mode} for ${named} are too open; run chmod 600 ${shellQuote(path)}`,
    );
  }
}

/** How a secret's bytes were read. */
type SecretEncoding = "hex" | "base64" | "raw";

/** Decodes a secret's bytes as described at the top of this file. Does not judge the result. */
export function decodeSecret(bytes: Uint8Array): { key: Uint8Array; encoding: SecretEncoding } {
  const text = asciiTrimmed(bytes);
  if (text !== null && text.length > 0) {
    if (text.length % 2 === 0 && /^[0-9a-fA-F]+$/.test(text)) {
      const key = new Uint8Array(text.length / 2);
      for (let i = 0; i < key.length; i++) key[i] = parseInt(text.slice(2 * i, 2 * i + 2), 16);
      return { key, encoding: "hex" };
    }
    const key = decodeBase64Exactly(text);
    if (key) return { key, encoding: "base64" };
  }
  return { key: bytes.slice(), encoding: "raw" };
}

/** `bytes` without surrounding ASCII whitespace, as a string, or null if any byte is not ASCII. */
function asciiTrimmed(bytes: Uint8Array): string | null {
  let text = "";
  for (const b of bytes) {
    if (b > 0x7e) return null;
    text += String.fromCharCode(b);
  }
  return text.replace(/^[ \t\r\n]+|[ \t\r\n]+$/g, "");
}

function asciiTrimmedBytes(bytes: Uint8Array): Uint8Array {
  return Uint8Array.from(asciiTrimmed(bytes) ?? "", (c) => c.charCodeAt(0));
}

/**
 * The bytes `text` encodes in base64 (standard alphabet, padded) or base64url (padding
 * optional), or null if it is not exactly that: the alphabets are not mixed, the padding is
 * right, and the unused low bits of the last character are zero (encoding the bytes again
 * gives back `text`), so one key has one spelling.
 */
function decodeBase64Exactly(text: string): Uint8Array | null {
  const standard = /^[A-Za-z0-9+/]*={0,2}$/.test(text);
  const url = /^[A-Za-z0-9_-]*={0,2}$/.test(text);
  if (!standard && !url) return null;
  const body = text.replace(/=+$/, "");
  const padded = body.length !== text.length;
  if (body.length % 4 === 1) return null;
  if ((padded || !url) && text.length % 4 !== 0) return null;
  const stdBody = body.replaceAll("-", "+").replaceAll("_", "/");
  let key: Uint8Array;
  try {
    const binary = atob(stdBody + "=".repeat((4 - stdBody.length % 4) % 4));
    key = Uint8Array.from(binary, (c) => c.charCodeAt(0));
  } catch {
    return null;
  }
  let again = btoa(String.fromCharCode(...key)).replace(/=+$/, "");
  if (!standard) again = again.replaceAll("+", "-").replaceAll("/", "_");
  return again === body ? key : null;
}

/**
 * A deliberately simple upper bound on the entropy of `key`, in bits, that catches secrets
 * which are visibly not random:
 *
 *   bits = log2(distinct byte values) × (distinct 4-byte sequences + 3)
 *
 * The first factor is what each byte could carry if the key were drawn at random from the
 * bytes it uses (a single repeated byte scores 0, letters of a small alphabet score little).
 * The second is the key's length once repeats are removed: it equals the length when no
 * 4-byte sequence occurs twice, and collapses for a repeated pattern (`passwordpassword...`
 * counts as 11). A random 32-byte key scores about 155 (it uses ~30 distinct values; below
 * 128 needs 15 or fewer, a chance of 3e-17); its hex text scores ~250 and its base64 ~210.
 * `keyWeakness` also runs it on the steps between bytes, where a sequence collapses.
 */
export function estimateSecretBits(key: Uint8Array): number {
  const distinct = new Set(key).size;
  if (distinct <= 1) return 0;
  const sequences = new Set<number>();
  for (let i = 0; i + 4 <= key.length; i++) {
    sequences.add(((key[i] << 24) | (key[i + 1] << 16) | (key[i + 2] << 8) | key[i + 3]) >>> 0);
  }
  const length = Math.min(key.length, sequences.size + 3);
  return Math.log2(distinct) * length;
}

/** The steps from each byte to the next, modulo 256: a sequence (00 01 02..., a-z) is one step. */
function steps(bytes: Uint8Array): Uint8Array {
  return bytes.subarray(1).map((b, i) => (b - bytes[i]) & 0xff);
}

/** The longest run of letters still counted as a word (longer runs are not language). */
const MAX_WORD = 20;

/**
 * Whether `bytes` read as text is mostly words: tokens between spaces or punctuation that are
 * all letters (any script), 2 to MAX_WORD of them, written as words are (lowercase,
 * Capitalized or UPPERCASE) and holding a vowel, at least two, covering at least half of the
 * text. A sentence or a passphrase is that; random hex or base64 text, whose letters are mixed
 * in case and with digits, is not.
 */
function isWords(bytes: Uint8Array): boolean {
  const text = new TextDecoder().decode(bytes).normalize("NFD").replace(/\p{M}/gu, "");
  const chars = text.replace(/\s/gu, "").length;
  let words = 0, covered = 0;
  for (const token of text.split(/[^\p{L}\p{N}]+/u)) {
    const cased = /^(\p{Lu}?\p{Ll}+|\p{Lu}+)$/u.test(token);
    if (token.length >= 2 && token.length <= MAX_WORD && cased && /[aeiouy]/i.test(token)) {
      words++;
      covered += token.length;
    }
  }
  return words >= 2 && covered * 2 >= chars;
}

/**
 * Why `bytes` is not key material, or null if it passes: the one judge of both the shared
 * secret and the metrics token. Refused are text of words (a sentence is guessed from a
 * dictionary in well under a second, offline), sequences (each byte one fixed step from the
 * last: hex of 00..1f, the alphabet 0-9a-zA-Z), repeated patterns and few distinct bytes
 * (`estimateSecretBits` under MIN_SECRET_BITS, on the bytes and on their steps). It cannot
 * see a predictable generator, so it is a floor on what is refused, not a proof of strength.
 */
function keyWeakness(bytes: Uint8Array): string | null {
  if (isWords(bytes)) return "is text of words, which a dictionary guesses";
  const bits = estimateSecretBits(bytes);
  const stepBits = estimateSecretBits(steps(bytes));
  if (stepBits < MIN_SECRET_BITS && bits >= MIN_SECRET_BITS) {
    return "is a sequence: its bytes go up or down in few distinct steps";
  }
  if (bits < MIN_SECRET_BITS) {
    return "looks guessable: it repeats a pattern or uses few distinct bytes " +
      `(about ${Math.floor(bits)} bits, need ${MIN_SECRET_BITS})`;
  }
  return null;
}

/**
 * Decodes a secret's or a token's bytes (hex, base64 or raw, as at the top of this file) and
 * refuses one that is too short or not key material, with one line that says to use
 * `vnet secret`. `what` names it in that line, e.g. "the shared secret (file 'x')".
 */
export function checkKeyMaterial(bytes: Uint8Array, what: string): Uint8Array {
  const { key, encoding } = decodeSecret(bytes);
  const read = encoding === "raw" ? "raw bytes: not hex or base64 text" : encoding;
  if (key.length < MIN_SECRET_BYTES) {
    throw new VnetError(
      `${what} is too short: ${key.length} bytes of key material ` +
        `(read as ${read}), need at least ${MIN_SECRET_BYTES}; ${HOW_TO_MAKE}`,
    );
  }
  // Hex and base64 spread their characters over more byte values than the text uses, so
  // the text is judged too: random text from a few letters stays poor once decoded.
  const weakness = keyWeakness(key) ??
    (encoding === "raw" ? null : keyWeakness(asciiTrimmedBytes(bytes)));
  if (weakness) throw new VnetError(`${what} ${weakness}; ${HOW_TO_MAKE}`);
  return key;
}

/**
 * Decodes a secret's bytes and refuses one that is too short or visibly guessable, with one
 * line that says how to make a good one. `source` names where it came from in that line.
 */
export function secretFromBytes(bytes: Uint8Array, source: string): Uint8Array {
  return checkKeyMaterial(bytes, `the shared secret (${source})`);
}

/** Loads the secret from `file` if given, else from $VNET_SECRET; throws saying how to make one. */
export function loadSecret(file: string | undefined): Uint8Array {
  if (file) {
    checkPrivateFile(file, "secret file");
    let bytes: Uint8Array;
    try {
      bytes = Deno.readFileSync(file);
    } catch (e) {
      throw new VnetError(`cannot read secret file '${file}': ${(e as Error).message}`, {
        cause: e,
      });
    }
    return secretFromBytes(bytes, `file '${file}'`);
  }
  const text = Deno.env.get(SECRET_ENV);
  if (text === undefined) {
    throw new VnetError(
      `no shared secret: give --secret-file FILE or set ${SECRET_ENV}; ${HOW_TO_MAKE}`,
    );
  }
  return secretFromBytes(new TextEncoder().encode(text), `$${SECRET_ENV}`);
}

/** A fresh secret as `vnet secret` writes it: random bytes in base64, one line. */
export function newSecretText(): string {
  const key = crypto.getRandomValues(new Uint8Array(NEW_SECRET_BYTES));
  return btoa(String.fromCharCode(...key)) + "\n";
}
