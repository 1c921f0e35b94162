/**
 * The keys of one encrypted UDP session epoch: an ephemeral X25519 exchange, mixed by HKDF-SHA256
 * (RFC 5869) with secret material from the link's authenticated handshake, into one key per
 * direction.
 *
 *   shared = X25519(our ephemeral secret, their ephemeral public)
 *   prk    = HKDF-Extract(salt = link secret, ikm = shared)
 *   key    = HKDF-Expand(prk, "vnet/udp-aead v1" 0 aead 0 epoch dialer-public acceptor-public
 *                              direction, 32)
 *   direction: "dialer->acceptor" or "acceptor->dialer"
 *
 * - Forward secrecy: the ephemeral secrets live only until the keys are derived, then are wiped;
 *   whoever later steals the long-term secret (and with it the link secret) still lacks `shared`
 *   for any recorded epoch.
 * - Authentication: the link secret comes from the link's authenticated handshake, so a
 *   man in the middle who swaps the ephemeral publics but lacks the long-term secret derives
 *   other keys, and every datagram he sends fails the AEAD. (The salt is secret, as Noise's
 *   chaining key is, which RFC 5869 §3.1 allows.)
 * - Both publics, the epoch and the AEAD are in `info`, so no two epochs, sessions or AEADs share
 *   a key, even if an ephemeral were reused by mistake (`EphemeralKeyPair` forbids that).
 * - Directions are labelled by the link's roles (the dialler of the TCP/TLS/SSH link, and its
 *   acceptor), so the dialler's send key is the acceptor's receive key and the other way round,
 *   and the two directions never share a key (so never a nonce under one key).
 *
 * HKDF is RFC 5869 built on libsodium's HMAC-SHA256, since Debian 12's libsodium (1.0.18) has no
 * `crypto_kdf_hkdf_sha256_*`; tests/unit/udp_crypto_test.ts checks it against the RFC's vectors.
 */
import { AEAD_KEY_BYTES, HMAC_SHA256_BYTES, sodium, X25519_BYTES } from "../../../ffi/sodium.ts";
import type { AeadName } from "./aead.ts";

let hmacState: Uint8Array | undefined;
/** A scratch `crypto_auth_hmacsha256_state`, sized by the library. */
function hmacScratch(): Uint8Array {
  hmacState ??= new Uint8Array(Number(sodium().crypto_auth_hmacsha256_statebytes()));
  return hmacState;
}

/** libsodium's prototypes say non-NULL; an empty array might be passed as NULL. */
const NOT_NULL = new Uint8Array(1);

/** HMAC-SHA256(key, the parts one after the other). */
function hmacSha256(key: Uint8Array, ...parts: Uint8Array[]): Uint8Array {
  const s = sodium();
  const state = hmacScratch();
  s.crypto_auth_hmacsha256_init(state, key.length ? key : NOT_NULL, BigInt(key.length));
  for (const part of parts) {
    s.crypto_auth_hmacsha256_update(state, part.length ? part : NOT_NULL, BigInt(part.length));
  }
  const out = new Uint8Array(HMAC_SHA256_BYTES);
  s.crypto_auth_hmacsha256_final(state, out);
  s.sodium_memzero(state, BigInt(state.length));
  return out;
}

/** RFC 5869 HKDF-Extract with SHA-256: a 32-byte pseudorandom key. */
export function hkdfExtract(salt: Uint8Array, ikm: Uint8Array): Uint8Array {
  return hmacSha256(salt, ikm);
}

/** RFC 5869 HKDF-Expand with SHA-256: `length` bytes (at most 255 × 32). */
export function hkdfExpand(prk: Uint8Array, info: Uint8Array, length: number): Uint8Array {
  const blocks = Math.ceil(length / HMAC_SHA256_BYTES);
  if (!Number.isInteger(length) || length < 0 || blocks > 255) {
    throw new RangeError(`HKDF-SHA256 expands to at most ${255 * HMAC_SHA256_BYTES} bytes`);
  }
  const out = new Uint8Array(blocks * HMAC_SHA256_BYTES);
  let previous: Uint8Array = new Uint8Array(0);
  for (let i = 1; i <= blocks; i++) {
    previous = hmacSha256(prk, previous, info, Uint8Array.of(i));
    out.set(previous, (i - 1) * HMAC_SHA256_BYTES);
  }
  return out.subarray(0, length);
}

/**
 * One side's ephemeral X25519 key pair, for ONE key derivation: `agree` wipes the secret, and a
 * second call throws. A fresh pair per epoch is what makes every epoch's keys new, and so its
 * counters safe to start again at 0.
 */
export class EphemeralKeyPair {
  readonly publicKey = new Uint8Array(X25519_BYTES);
  #secret: Uint8Array | null = new Uint8Array(X25519_BYTES);

  constructor() {
    const s = sodium();
    s.randombytes_buf(this.#secret!, BigInt(X25519_BYTES));
    s.crypto_scalarmult_curve25519_base(this.publicKey, this.#secret!);
  }

  /**
   * The X25519 shared secret with `peerPublic`; wipes our secret. Throws on a peer public of low
   * order (the shared secret would be all zeros, known to anyone).
   */
  agree(peerPublic: Uint8Array): Uint8Array {
    const secret = this.#secret;
    if (secret === null) throw new Error("this ephemeral key pair has already been used");
    if (peerPublic.length !== X25519_BYTES) {
      throw new RangeError(
        `an X25519 public key is ${X25519_BYTES} bytes, not ${peerPublic.length}`,
      );
    }
    this.#secret = null;
    const shared = new Uint8Array(X25519_BYTES);
    const s = sodium();
    const status = s.crypto_scalarmult_curve25519(shared, secret, peerPublic);
    s.sodium_memzero(secret, BigInt(secret.length));
    if (status !== 0) throw new Error("the peer's X25519 public key is of low order");
    return shared;
  }

  /** Wipes the secret without using it (an exchange that was abandoned). */
  destroy(): void {
    if (this.#secret) sodium().sodium_memzero(this.#secret, BigInt(this.#secret.length));
    this.#secret = null;
  }
}

/** Which end of the authenticated link this side is: the one that dialled, or accepted. */
export type LinkRole = "dialer" | "acceptor";

/** One epoch's keys, from this side's point of view. */
export interface SessionKeys {
  readonly aead: AeadName;
  /** 0..255, in every datagram's header; each rekey moves it on by one. */
  readonly epoch: number;
  /** The key we seal with: the peer's `receive`. */
  readonly send: Uint8Array;
  /** The key we open with: the peer's `send`. */
  readonly receive: Uint8Array;
}

/** The least link secret accepted: 128 bits. */
const MIN_LINK_SECRET_BYTES = 16;
const encoder = new TextEncoder();
const LABEL = encoder.encode("vnet/udp-aead v1");
const DIALER_TO_ACCEPTOR = encoder.encode("dialer->acceptor");
const ACCEPTOR_TO_DIALER = encoder.encode("acceptor->dialer");

export interface KeyExchange {
  role: LinkRole;
  aead: AeadName;
  epoch: number;
  /**
   * Secret bytes that only the two authenticated ends of this link know, bound to this link
   * (e.g. an HMAC of the shared secret over both handshake nonces, or a TLS exporter).
   */
  linkSecret: Uint8Array;
  /** Our ephemeral pair; used up by the derivation. */
  ephemeral: EphemeralKeyPair;
  /** The peer's ephemeral public key, as received over the authenticated link. */
  peerPublic: Uint8Array;
}

/** Derives this side's keys for one epoch (see the module comment). */
export function deriveSessionKeys(x: KeyExchange): SessionKeys {
  if (x.linkSecret.length < MIN_LINK_SECRET_BYTES) {
    throw new RangeError(`the link secret must be at least ${MIN_LINK_SECRET_BYTES} bytes`);
  }
  if (!Number.isInteger(x.epoch) || x.epoch < 0 || x.epoch > 255) {
    throw new RangeError(`an epoch is 0..255, not ${x.epoch}`);
  }
  const ourPublic = x.ephemeral.publicKey.slice();
  const shared = x.ephemeral.agree(x.peerPublic);
  const prk = hkdfExtract(x.linkSecret, shared);
  const [dialerPublic, acceptorPublic] = x.role === "dialer"
    ? [ourPublic, x.peerPublic]
    : [x.peerPublic, ourPublic];
  const context = concat(
    LABEL,
    Uint8Array.of(0),
    encoder.encode(x.aead),
    Uint8Array.of(0, x.epoch),
    dialerPublic,
    acceptorPublic,
  );
  const toAcceptor = hkdfExpand(prk, concat(context, DIALER_TO_ACCEPTOR), AEAD_KEY_BYTES);
  const toDialer = hkdfExpand(prk, concat(context, ACCEPTOR_TO_DIALER), AEAD_KEY_BYTES);
  const s = sodium();
  s.sodium_memzero(shared, BigInt(shared.length));
  s.sodium_memzero(prk, BigInt(prk.length));
  return x.role === "dialer"
    ? { aead: x.aead, epoch: x.epoch, send: toAcceptor, receive: toDialer }
    : { aead: x.aead, epoch: x.epoch, send: toDialer, receive: toAcceptor };
}

function concat(...parts: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

const PUNCH_LABEL = encoder.encode("vnet/udp-punch v1");
const PUNCH_IDS = encoder.encode("ids");
/** The least pair secret accepted: the Proxy sends 32 random bytes. */
const MIN_PAIR_SECRET_BYTES = 32;

/** What one Host of a punched path derives from what the Proxy told it (see `derivePunched`). */
export interface PunchedKeys {
  /** Sealed paths only: this side's keys of epoch 0. */
  keys: SessionKeys | null;
  /** Our session id (sealed) or keepalive token (plain), and the other Host's. */
  localId: number;
  peerId: number;
}

/**
 * The keys of a UDP path punched between two Hosts (control/direct.ts), which share no link to
 * run an exchange over: the Proxy gives both the same fresh pair secret over their links (TLS,
 * forward-secret), with the announcement's token, and tells one to be the dialer.
 *
 *   prk  = HKDF-Extract(salt = token, ikm = pair secret)
 *   key  = HKDF-Expand(prk, "vnet/udp-punch v1" 0 aead 0 direction, 32)
 *   ids  = HKDF-Expand(prk, "vnet/udp-punch v1" 0 aead 0 "ids", 8): the dialer's, the acceptor's
 *
 * The pair secret lives only in the two Hosts' memory and in the TLS records that carried it, so
 * a long-term secret stolen later decrypts nothing recorded. The path cannot rekey (there is no
 * link to exchange over): it is dropped before its keys are refused, and the Proxy offers a new
 * one with a new secret. `aead` null: a plain path, which needs only the ids (its tokens).
 */
export function derivePunched(
  x: { role: LinkRole; aead: AeadName | null; pairSecret: Uint8Array; token: Uint8Array },
): PunchedKeys {
  if (x.pairSecret.length < MIN_PAIR_SECRET_BYTES) {
    throw new RangeError(`a pair secret is at least ${MIN_PAIR_SECRET_BYTES} bytes`);
  }
  const prk = hkdfExtract(x.token, x.pairSecret);
  const context = concat(
    PUNCH_LABEL,
    Uint8Array.of(0),
    encoder.encode(x.aead ?? "plain"),
    Uint8Array.of(0),
  );
  const ids = new DataView(hkdfExpand(prk, concat(context, PUNCH_IDS), 8).slice().buffer);
  const dialerId = ids.getUint32(0);
  // Distinct, so that neither side mistakes its own datagrams for the other's.
  const acceptorId = ids.getUint32(4) === dialerId ? (dialerId ^ 1) >>> 0 : ids.getUint32(4);
  let keys: SessionKeys | null = null;
  if (x.aead) {
    const toAcceptor = hkdfExpand(prk, concat(context, DIALER_TO_ACCEPTOR), AEAD_KEY_BYTES);
    const toDialer = hkdfExpand(prk, concat(context, ACCEPTOR_TO_DIALER), AEAD_KEY_BYTES);
    keys = x.role === "dialer"
      ? { aead: x.aead, epoch: 0, send: toAcceptor, receive: toDialer }
      : { aead: x.aead, epoch: 0, send: toDialer, receive: toAcceptor };
  }
  sodium().sodium_memzero(prk, BigInt(prk.length));
  return x.role === "dialer"
    ? { keys, localId: dialerId, peerId: acceptorId }
    : { keys, localId: acceptorId, peerId: dialerId };
}
