/**
 * The two AEADs of the encrypted UDP transport, both libsodium's (ffi/sodium.ts), behind one
 * shape: a key object that seals and opens with no allocation, in place if asked.
 *
 * - AES-256-GCM: the faster where libsodium has it, so the first choice (src/link/udp/session.ts
 *   has the measurements). libsodium's needs AES-NI and PCLMULQDQ (x86_64 only in 1.0.18); the
 *   key schedule and GHASH powers are computed once per key (`beforenm`), not per packet.
 * - ChaCha20-Poly1305 (IETF, RFC 8439): runs everywhere, constant time without special
 *   instructions; the choice when either side lacks AES-256-GCM.
 */
import { AEAD_KEY_BYTES, AEAD_TAG_BYTES, sodium } from "../../../ffi/sodium.ts";

export type AeadName = "chacha20poly1305" | "aes256gcm";

/**
 * One direction's key. Both methods are synchronous and allocate nothing but the BigInts of the
 * lengths: Deno's FFI takes its fast path for a 64-bit parameter only when handed a BigInt (a
 * number costs about 150 ns more per call, a `BigInt(n)` next to nothing).
 */
export interface AeadKey {
  readonly name: AeadName;
  /**
   * Encrypts the `mlen` bytes at `m` into `c`: the ciphertext, then the 16-byte tag. `c` may be
   * `m` (in place). The buffers' lengths are not read, only their start: the caller makes sure
   * `m` holds `mlen` bytes, `c` `mlen + 16`, `ad` `adlen`, `nonce` 12.
   */
  seal(
    c: Uint8Array,
    m: Uint8Array,
    mlen: number,
    ad: Uint8Array,
    adlen: number,
    nonce: Uint8Array,
  ): void;
  /**
   * Verifies the `clen` bytes at `c` (ciphertext, then the tag) and decrypts them into `m`
   * (`clen - 16` bytes; `m` may be `c`). False if the tag does not verify (`clen` < 16 included):
   * `m` then holds zeros, never unauthenticated plaintext.
   */
  open(
    m: Uint8Array,
    c: Uint8Array,
    clen: number,
    ad: Uint8Array,
    adlen: number,
    nonce: Uint8Array,
  ): boolean;
  /** Wipes the key material; the key must not be used afterwards. */
  destroy(): void;
}

/** Whether libsodium's AES-256-GCM runs on this CPU. */
export function aes256gcmAvailable(): boolean {
  return sodium().crypto_aead_aes256gcm_is_available() === 1;
}

class ChaCha20Poly1305Key implements AeadKey {
  readonly name = "chacha20poly1305";
  readonly #key = new Uint8Array(AEAD_KEY_BYTES);

  constructor(key: Uint8Array) {
    this.#key.set(key);
  }

  seal(c: Uint8Array, m: Uint8Array, mlen: number, ad: Uint8Array, adlen: number, n: Uint8Array) {
    sodium().crypto_aead_chacha20poly1305_ietf_encrypt(
      c,
      null,
      m,
      BigInt(mlen),
      ad,
      BigInt(adlen),
      null,
      n,
      this.#key,
    );
  }

  open(m: Uint8Array, c: Uint8Array, clen: number, ad: Uint8Array, adlen: number, n: Uint8Array) {
    if (clen < AEAD_TAG_BYTES) return false;
    return sodium().crypto_aead_chacha20poly1305_ietf_decrypt(
      m,
      null,
      null,
      c,
      BigInt(clen),
      ad,
      BigInt(adlen),
      n,
      this.#key,
    ) === 0;
  }

  destroy(): void {
    sodium().sodium_memzero(this.#key, BigInt(this.#key.length));
  }
}

/** libsodium's `crypto_aead_aes256gcm_state` must be 16-byte aligned (CRYPTO_ALIGN(16)). */
const AES_STATE_ALIGN = 16;

class Aes256GcmKey implements AeadKey {
  readonly name = "aes256gcm";
  readonly #state: Uint8Array<ArrayBuffer>;

  constructor(key: Uint8Array) {
    const s = sodium();
    if (s.crypto_aead_aes256gcm_is_available() !== 1) {
      throw new Error("AES-256-GCM is not available on this CPU (libsodium needs AES-NI)");
    }
    const size = Number(s.crypto_aead_aes256gcm_statebytes());
    const raw = new Uint8Array(size + AES_STATE_ALIGN);
    const address = Deno.UnsafePointer.value(Deno.UnsafePointer.of(raw));
    const skew = Number(BigInt(address) % BigInt(AES_STATE_ALIGN));
    this.#state = raw.subarray(skew === 0 ? 0 : AES_STATE_ALIGN - skew).subarray(0, size);
    s.crypto_aead_aes256gcm_beforenm(this.#state, key);
  }

  seal(c: Uint8Array, m: Uint8Array, mlen: number, ad: Uint8Array, adlen: number, n: Uint8Array) {
    sodium().crypto_aead_aes256gcm_encrypt_afternm(
      c,
      null,
      m,
      BigInt(mlen),
      ad,
      BigInt(adlen),
      null,
      n,
      this.#state,
    );
  }

  open(m: Uint8Array, c: Uint8Array, clen: number, ad: Uint8Array, adlen: number, n: Uint8Array) {
    if (clen < AEAD_TAG_BYTES) return false;
    return sodium().crypto_aead_aes256gcm_decrypt_afternm(
      m,
      null,
      null,
      c,
      BigInt(clen),
      ad,
      BigInt(adlen),
      n,
      this.#state,
    ) === 0;
  }

  destroy(): void {
    sodium().sodium_memzero(this.#state, BigInt(this.#state.length));
  }
}

/** A key for `name`; `key` (32 bytes) is copied, so the caller may wipe its own copy. */
export function aeadKey(name: AeadName, key: Uint8Array): AeadKey {
  if (key.length !== AEAD_KEY_BYTES) {
    throw new RangeError(`an AEAD key is ${AEAD_KEY_BYTES} bytes, not ${key.length}`);
  }
  return name === "aes256gcm" ? new Aes256GcmKey(key) : new ChaCha20Poly1305Key(key);
}

/**
 * Fastest first, as bench/aead.ts measured (see src/link/udp/session.ts): both sides pick the
 * first entry that both run, so they agree without a round of negotiation.
 */
const AEAD_PREFERENCE: readonly AeadName[] = ["aes256gcm", "chacha20poly1305"];

/** The AEADs this machine runs, fastest first: what to offer the peer. */
export function supportedAeads(): AeadName[] {
  return AEAD_PREFERENCE.filter((name) => name !== "aes256gcm" || aes256gcmAvailable());
}

/**
 * The AEAD for a session between `ours` and `theirs` (each side's `supportedAeads()`): the first
 * of the fixed preference both run, so both sides get the same answer; null if none.
 */
export function agreeAead(ours: readonly AeadName[], theirs: readonly AeadName[]): AeadName | null {
  return AEAD_PREFERENCE.find((name) => ours.includes(name) && theirs.includes(name)) ?? null;
}
