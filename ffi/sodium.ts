/**
 * libsodium bindings (prototypes from <sodium.h>, libsodium >= 1.0.18, Debian's libsodium23):
 * the AEADs, X25519, HMAC-SHA256 and the system CSPRNG that the encrypted UDP transport is built
 * from (src/link/udp/).
 *
 * Every call is synchronous, on the JS thread: one call per packet costs a few tens of
 * nanoseconds this way, where a promise per packet would cost microseconds.
 *
 * `sodium()` opens the library on first use and runs `sodium_init` once; the library then picks
 * its fastest implementations for this CPU (AES-NI, AVX2). libsodium 1.0.18 has no HKDF
 * (`crypto_kdf_hkdf_sha256_*` came in 1.0.19), so src/link/udp/keys.ts builds RFC 5869 HKDF on
 * `crypto_auth_hmacsha256_*`, which every version has.
 *
 * The two state structs that cross here (`crypto_auth_hmacsha256_state`,
 * `crypto_aead_aes256gcm_state`) are opaque: their sizes come from the library itself
 * (`*_statebytes()`), and no field is ever read, so they have no entry in ffi/layout.ts.
 */
import { LibraryError } from "./errors.ts";
import { lazyLibrary, LIBSODIUM } from "./load.ts";

const symbols = {
  // int sodium_init(void);
  sodium_init: {
    parameters: [],
    result: "i32", // 0 initialised now, 1 already initialised, -1 failure
  },
  // const char *sodium_version_string(void);
  sodium_version_string: {
    parameters: [],
    result: "pointer", // const char * (static)
  },
  // void randombytes_buf(void * const buf, const size_t size);
  randombytes_buf: {
    parameters: [
      "buffer", // void *buf (out)
      "usize", // size_t size
    ],
    result: "void",
  },
  // void sodium_memzero(void * const pnt, const size_t len);
  sodium_memzero: {
    parameters: [
      "buffer", // void *pnt
      "usize", // size_t len
    ],
    result: "void",
  },
  // int crypto_aead_chacha20poly1305_ietf_encrypt(unsigned char *c, unsigned long long *clen_p,
  //     const unsigned char *m, unsigned long long mlen, const unsigned char *ad,
  //     unsigned long long adlen, const unsigned char *nsec, const unsigned char *npub,
  //     const unsigned char *k);
  crypto_aead_chacha20poly1305_ietf_encrypt: {
    parameters: [
      "buffer", // unsigned char *c (out: mlen bytes of ciphertext, then the 16-byte tag)
      "pointer", // unsigned long long *clen_p (NULL: the length is mlen + 16)
      "buffer", // const unsigned char *m (may be c: in place)
      "u64", // unsigned long long mlen
      "buffer", // const unsigned char *ad
      "u64", // unsigned long long adlen
      "pointer", // const unsigned char *nsec (NULL: unused)
      "buffer", // const unsigned char *npub (12 bytes)
      "buffer", // const unsigned char *k (32 bytes)
    ],
    result: "i32", // 0
  },
  // int crypto_aead_chacha20poly1305_ietf_decrypt(unsigned char *m, unsigned long long *mlen_p,
  //     unsigned char *nsec, const unsigned char *c, unsigned long long clen,
  //     const unsigned char *ad, unsigned long long adlen, const unsigned char *npub,
  //     const unsigned char *k);
  crypto_aead_chacha20poly1305_ietf_decrypt: {
    parameters: [
      "buffer", // unsigned char *m (out: clen - 16 bytes; may be c: in place)
      "pointer", // unsigned long long *mlen_p (NULL)
      "pointer", // unsigned char *nsec (NULL: unused)
      "buffer", // const unsigned char *c (ciphertext, then the tag)
      "u64", // unsigned long long clen (tag included)
      "buffer", // const unsigned char *ad
      "u64", // unsigned long long adlen
      "buffer", // const unsigned char *npub (12 bytes)
      "buffer", // const unsigned char *k (32 bytes)
    ],
    result: "i32", // 0, or -1: the tag does not verify (m is then zeroed)
  },
  // int crypto_aead_aes256gcm_is_available(void);
  crypto_aead_aes256gcm_is_available: {
    parameters: [],
    result: "i32", // 1 if this CPU has the instructions libsodium's AES-GCM needs
  },
  // size_t crypto_aead_aes256gcm_statebytes(void);
  crypto_aead_aes256gcm_statebytes: {
    parameters: [],
    result: "usize",
  },
  // int crypto_aead_aes256gcm_beforenm(crypto_aead_aes256gcm_state *ctx_,
  //     const unsigned char *k);
  crypto_aead_aes256gcm_beforenm: {
    parameters: [
      "buffer", // crypto_aead_aes256gcm_state *ctx_ (out; opaque, 16-byte aligned)
      "buffer", // const unsigned char *k (32 bytes)
    ],
    result: "i32", // 0
  },
  // int crypto_aead_aes256gcm_encrypt_afternm(unsigned char *c, unsigned long long *clen_p,
  //     const unsigned char *m, unsigned long long mlen, const unsigned char *ad,
  //     unsigned long long adlen, const unsigned char *nsec, const unsigned char *npub,
  //     const crypto_aead_aes256gcm_state *ctx_);
  crypto_aead_aes256gcm_encrypt_afternm: {
    parameters: [
      "buffer", // unsigned char *c (out: ciphertext, then the 16-byte tag)
      "pointer", // unsigned long long *clen_p (NULL)
      "buffer", // const unsigned char *m (may be c: in place)
      "u64", // unsigned long long mlen
      "buffer", // const unsigned char *ad
      "u64", // unsigned long long adlen
      "pointer", // const unsigned char *nsec (NULL: unused)
      "buffer", // const unsigned char *npub (12 bytes)
      "buffer", // const crypto_aead_aes256gcm_state *ctx_
    ],
    result: "i32", // 0
  },
  // int crypto_aead_aes256gcm_decrypt_afternm(unsigned char *m, unsigned long long *mlen_p,
  //     unsigned char *nsec, const unsigned char *c, unsigned long long clen,
  //     const unsigned char *ad, unsigned long long adlen, const unsigned char *npub,
  //     const crypto_aead_aes256gcm_state *ctx_);
  crypto_aead_aes256gcm_decrypt_afternm: {
    parameters: [
      "buffer", // unsigned char *m (out; may be c: in place)
      "pointer", // unsigned long long *mlen_p (NULL)
      "pointer", // unsigned char *nsec (NULL: unused)
      "buffer", // const unsigned char *c (ciphertext, then the tag)
      "u64", // unsigned long long clen (tag included)
      "buffer", // const unsigned char *ad
      "u64", // unsigned long long adlen
      "buffer", // const unsigned char *npub (12 bytes)
      "buffer", // const crypto_aead_aes256gcm_state *ctx_
    ],
    result: "i32", // 0, or -1: the tag does not verify (m is then zeroed)
  },
  // int crypto_scalarmult_curve25519(unsigned char *q, const unsigned char *n,
  //     const unsigned char *p);
  crypto_scalarmult_curve25519: {
    parameters: [
      "buffer", // unsigned char *q (out: 32-byte shared secret)
      "buffer", // const unsigned char *n (our 32-byte secret scalar)
      "buffer", // const unsigned char *p (the peer's 32-byte public key)
    ],
    result: "i32", // 0, or -1: p is a low-order point (the result would be all zeros)
  },
  // int crypto_scalarmult_curve25519_base(unsigned char *q, const unsigned char *n);
  crypto_scalarmult_curve25519_base: {
    parameters: [
      "buffer", // unsigned char *q (out: 32-byte public key)
      "buffer", // const unsigned char *n (32-byte secret scalar)
    ],
    result: "i32", // 0
  },
  // size_t crypto_auth_hmacsha256_statebytes(void);
  crypto_auth_hmacsha256_statebytes: {
    parameters: [],
    result: "usize",
  },
  // int crypto_auth_hmacsha256_init(crypto_auth_hmacsha256_state *state,
  //     const unsigned char *key, size_t keylen);
  crypto_auth_hmacsha256_init: {
    parameters: [
      "buffer", // crypto_auth_hmacsha256_state *state (out; opaque)
      "buffer", // const unsigned char *key (any length)
      "usize", // size_t keylen
    ],
    result: "i32", // 0
  },
  // int crypto_auth_hmacsha256_update(crypto_auth_hmacsha256_state *state,
  //     const unsigned char *in, unsigned long long inlen);
  crypto_auth_hmacsha256_update: {
    parameters: [
      "buffer", // crypto_auth_hmacsha256_state *state
      "buffer", // const unsigned char *in
      "u64", // unsigned long long inlen
    ],
    result: "i32", // 0
  },
  // int crypto_auth_hmacsha256_final(crypto_auth_hmacsha256_state *state, unsigned char *out);
  crypto_auth_hmacsha256_final: {
    parameters: [
      "buffer", // crypto_auth_hmacsha256_state *state
      "buffer", // unsigned char *out (32 bytes)
    ],
    result: "i32", // 0
  },
} as const satisfies Deno.ForeignLibraryInterface;

const library = lazyLibrary(LIBSODIUM, symbols);
let initialised = false;

/**
 * The libsodium symbols; opens the library and runs `sodium_init` on first call (a LibraryError
 * if either fails).
 */
export function sodium(): Deno.DynamicLibrary<typeof symbols>["symbols"] {
  const s = library.get();
  if (!initialised) {
    if (s.sodium_init() < 0) {
      throw new LibraryError(LIBSODIUM.name, "libsodium: sodium_init failed");
    }
    initialised = true;
  }
  return s;
}

/** `sodium_version_string()`, e.g. "1.0.18". */
export function sodiumVersion(): string {
  const p = sodium().sodium_version_string();
  return p === null ? "" : Deno.UnsafePointerView.getCString(p);
}

/** The AEAD sizes, the same for ChaCha20-Poly1305-IETF and AES-256-GCM. */
export const AEAD_KEY_BYTES = 32;
export const AEAD_NONCE_BYTES = 12;
export const AEAD_TAG_BYTES = 16;
export const X25519_BYTES = 32;
export const HMAC_SHA256_BYTES = 32;
