/**
 * One encrypted UDP session between two VNET peers: the datagram format, sealing and opening, the
 * anti-replay check, and the change of keys (issue 18). The transport that sends and receives
 * the datagrams, and the exchange of ephemeral keys over the authenticated link that feeds
 * `deriveSessionKeys` (keys.ts), are not here.
 *
 * ## Datagram
 *
 *   offset  size  field
 *        0     1  type: 0x01, a sealed datagram (a VXLAN header starts 0x08)
 *        1     1  epoch: which keys sealed it (moves on by one per rekey, mod 256)
 *        2     2  reserved, zero
 *        4     4  receiver's session id (big-endian), which the receiver chose and announced over
 *                 the link: it finds the session when the sender's address has changed (NAT)
 *        8     8  counter (big-endian): the datagram's number under this epoch's send key
 *       16     n  ciphertext
 *     16+n    16  tag
 *
 * The whole header is the AEAD's associated data, so none of it can be changed. The nonce is
 * 4 zero bytes, then the 8 counter bytes. Overhead: 32 bytes, as WireGuard's.
 *
 * ## Nonces are never reused, across restarts too
 *
 * Each direction of each epoch has its own key (keys.ts), and under one key the counter starts
 * at 0, only goes up, and `seal` refuses to go past 2^32 - 1, long before the 64-bit field could
 * wrap. Across epochs and restarts the key itself differs: every epoch's keys come from fresh
 * ephemeral X25519 secrets drawn from the OS's CSPRNG and wiped after use, so a restarted
 * process holds no old key to reuse and must run a new exchange, whose keys are new even if the
 * peer replayed an old public key (our fresh secret alone makes the shared secret new). That is
 * why no counter high-water mark needs to be persisted.
 *
 * ## Opening
 *
 * `open` refuses a datagram that is short, malformed (type, reserved bits, session id, a counter
 * no sender would use), of an unknown epoch, below the replay window or already seen, all before
 * any cryptography; then makes ONE AEAD check, and only a datagram that passes it moves the
 * replay window. Each refusal adds one to a counter in `counters`, and nothing else happens: no
 * answer, no change to any state (the datagram's own bytes aside: opening is in place).
 *
 * ## Rekeying
 *
 * `shouldRekey(now)` says when a new epoch is due: after 2 minutes or 2^31 datagrams, whichever
 * comes first (`RekeyPolicy`); a key is refused for sealing after 3 minutes or 2^32 datagrams.
 * The exchange runs over the link: one side sends its new ephemeral public, the other answers
 * with its own; both derive keys for epoch + 1 and call `rekey`:
 * - the side that answered (`peerHasKeys: false`) can open the new epoch at once, but keeps
 *   sealing with the old key, since the peer cannot open the new one before the answer reaches
 *   it; it switches on the first datagram that opens under the new epoch (or on
 *   `confirmRekey()`, if the transport learns otherwise that the peer has the keys);
 * - the side that got the answer (`peerHasKeys: true`) seals with the new key at once (and
 *   should send something, a keepalive if nothing else, so that the peer switches too).
 * Each side keeps its old receive key for `previousKeyLingerMs` (10 s) after seeing the peer seal
 * with the new one, so datagrams in flight across the change still open.
 *
 * ## Which AEAD: measured (bench/aead.ts)
 *
 * One core of a 2-vCPU VM (Intel Xeon, AES-NI, AVX-512), shared with other work: the best of
 * three `deno run -A bench/aead.ts` runs; libsodium 1.0.18, Deno 2.9.6. Nanoseconds to seal /
 * to open one packet, and the payload one core both seals and opens, in Gbit/s:
 *
 *                              64 B               1400 B               64 KiB
 *   libsodium aes256gcm        231/239    1.09    942/1094     5.50    34157/43582    6.74
 *   libsodium chacha20poly1305 420/420    0.61    1669/1685    3.34    49460/48667    5.34
 *   node:crypto aes-256-gcm    4722/4009  0.06    14593/13775  0.39    382871/379291  0.69
 *   node:crypto chacha20-p1305 3775/3146  0.07    9055/6781    0.71    59579/61436    4.33
 *   this session, aes256gcm    241/368    0.84    1067/1151    5.05    34479/40599    6.98
 *   this session, chacha20     475/605    0.47    1674/1918    3.12    49646/49713    5.28
 *
 * libsodium's AES-256-GCM wins at every size (1.6 times ChaCha20-Poly1305's rate at 1400 B), so
 * it is the first choice when both sides have it (`agreeAead`), and ChaCha20-Poly1305 the
 * fallback (no AES-NI; aarch64, where libsodium 1.0.18 has no AES-GCM). node:crypto costs a
 * cipher object per packet, some 4 µs even at 64 B: out of the running. The session adds about
 * 0.1 µs per packet to the bare AEAD (header, replay window, the view it returns).
 */
import { AEAD_NONCE_BYTES, AEAD_TAG_BYTES } from "../../../ffi/sodium.ts";
import { type AeadKey, aeadKey } from "./aead.ts";
import type { SessionKeys } from "./keys.ts";
import { ReplayVerdict, ReplayWindow } from "./replay_window.ts";

/** The first byte of a sealed datagram. */
export const SEALED_DATAGRAM_TYPE = 0x01;
/** Where the header's fields are. */
export const HeaderOffset = { type: 0, epoch: 1, reserved: 2, receiverId: 4, counter: 8 } as const;
export const HEADER_BYTES = 16;
/** What sealing adds to a plaintext: the header and the tag. */
export const OVERHEAD_BYTES = HEADER_BYTES + AEAD_TAG_BYTES;

/** When to change keys; all times in ms. */
export interface RekeyLimits {
  /** A send key this old asks for a rekey. */
  readonly rekeyAfterMs: number;
  /** A send key that sealed this many datagrams asks for a rekey. */
  readonly rekeyAfterPackets: number;
  /** A send key this old seals no more. */
  readonly rejectAfterMs: number;
  /** A send key seals at most this many datagrams (at most 2^32: the counters fit 32 bits). */
  readonly rejectAfterPackets: number;
  /** How long an old receive key still opens once the peer is seen sealing with the new one. */
  readonly previousKeyLingerMs: number;
}

/** WireGuard's times; packet limits well under the 2^32 the issue asks for. */
export const DEFAULT_REKEY_LIMITS: RekeyLimits = {
  rekeyAfterMs: 120_000,
  rekeyAfterPackets: 2 ** 31,
  rejectAfterMs: 180_000,
  rejectAfterPackets: 2 ** 32,
  previousKeyLingerMs: 10_000,
};

/** What to do with a send key. */
export type KeyVerdict = "keep" | "rekey" | "expired";

/** The rekey policy: asked by the session, and by the transport through `shouldRekey`. */
export class RekeyPolicy {
  constructor(readonly limits: RekeyLimits = DEFAULT_REKEY_LIMITS) {
    if (limits.rejectAfterPackets > 2 ** 32) {
      throw new RangeError("a key may seal at most 2^32 datagrams");
    }
    if (
      limits.rekeyAfterMs >= limits.rejectAfterMs ||
      limits.rekeyAfterPackets >= limits.rejectAfterPackets
    ) {
      throw new RangeError("a key must ask for a rekey before it is refused");
    }
  }

  /** The verdict on a send key `ageMs` old that has sealed `packets` datagrams. */
  judge(ageMs: number, packets: number): KeyVerdict {
    const l = this.limits;
    if (ageMs >= l.rejectAfterMs || packets >= l.rejectAfterPackets) return "expired";
    if (ageMs >= l.rekeyAfterMs || packets >= l.rekeyAfterPackets) return "rekey";
    return "keep";
  }
}

/** What a session did, for metrics: one counter per outcome. */
export class SessionCounters {
  /** Datagrams sealed. */
  sealed = 0;
  /** Seals refused: the send key is spent (too old or too many datagrams); rekey. */
  refused = 0;
  /** Datagrams opened. */
  opened = 0;
  /** Refused: shorter than a header and a tag. */
  short = 0;
  /** Refused: wrong type, reserved bits set, another session's id, a counter beyond 2^32. */
  malformed = 0;
  /** Refused: no key of that epoch (long gone, or never). */
  unknownEpoch = 0;
  /** Refused: below the replay window. */
  tooOld = 0;
  /** Refused: opened once already. */
  replayed = 0;
  /** Refused: failed the AEAD check (forged, corrupted, or not sealed by the peer's key). */
  forged = 0;
}

interface SendKey {
  readonly epoch: number;
  readonly key: AeadKey;
  readonly createdAt: number;
  /** The next datagram's counter. */
  counter: number;
  /** Set by `tick` once the key is too old. */
  expired: boolean;
}

interface ReceiveKey {
  readonly epoch: number;
  readonly key: AeadKey;
  readonly window: ReplayWindow;
  readonly createdAt: number;
  /** When `tick` drops it; Infinity until known. */
  expiresAt: number;
}

export interface SessionOptions {
  /** The first epoch's keys. */
  keys: SessionKeys;
  /** The id the peer writes in datagrams to us (u32). */
  localId: number;
  /** The id we write in datagrams to the peer (u32). */
  peerId: number;
  /** The time now, in ms, on the clock later passed to `tick` and `rekey`. */
  now: number;
  policy?: RekeyPolicy;
  /** The replay window's ring, in bits (ReplayWindow). */
  replayWindowBits?: number;
}

function checkId(what: string, id: number): number {
  if (!Number.isInteger(id) || id < 0 || id > 0xffffffff) {
    throw new RangeError(`${what} is a u32, not ${id}`);
  }
  return id;
}

/**
 * One session's keys and state. Not thread-safe; every method is synchronous. Time comes only
 * from `now` arguments (`tick`, `rekey`, `shouldRekey`): no clock is read per datagram.
 */
export class UdpCryptoSession {
  readonly counters = new SessionCounters();
  readonly localId: number;
  readonly peerId: number;
  readonly #policy: RekeyPolicy;
  readonly #windowBits: number;
  #now: number;
  #send: SendKey;
  #current: ReceiveKey;
  #previous: ReceiveKey | null = null;
  /** Keys of the next epoch that we open with but do not seal with yet. */
  #pending: { send: SendKey; receive: ReceiveKey } | null = null;
  readonly #sealNonce = new Uint8Array(AEAD_NONCE_BYTES);
  readonly #sealNonceView = new DataView(this.#sealNonce.buffer);
  readonly #openNonce = new Uint8Array(AEAD_NONCE_BYTES);
  readonly #openNonceView = new DataView(this.#openNonce.buffer);
  /** The last `out` of `seal`, and its view past the header (the transport reuses one). */
  #sealOut: Uint8Array | null = null;
  #sealBody: Uint8Array | null = null;

  constructor(o: SessionOptions) {
    this.localId = checkId("a session id", o.localId);
    this.peerId = checkId("a session id", o.peerId);
    this.#policy = o.policy ?? new RekeyPolicy();
    this.#windowBits = o.replayWindowBits ?? 8192;
    this.#now = o.now;
    const { send, receive } = this.#keysOf(o.keys, o.now);
    this.#send = send;
    this.#current = receive;
  }

  /** The epoch we seal with. */
  get epoch(): number {
    return this.#send.epoch;
  }

  /** The epochs we open: the current one, then the previous and the pending ones, if any. */
  get receiveEpochs(): number[] {
    return [this.#current, this.#previous, this.#pending?.receive]
      .filter((k) => k !== null && k !== undefined).map((k) => k!.epoch);
  }

  /**
   * Seals `plaintext` into `out` (header, ciphertext, tag; `OVERHEAD_BYTES` more than the
   * plaintext) and returns the datagram's length, or -1 (counted in `counters.refused`) if the
   * send key is spent and a rekey must come first. `plaintext` may be `out`'s bytes from
   * `HEADER_BYTES` on (sealing in place); it must not overlap `out` otherwise.
   */
  seal(plaintext: Uint8Array, out: Uint8Array): number {
    const send = this.#send;
    if (send.expired || send.counter >= this.#policy.limits.rejectAfterPackets) {
      this.counters.refused++;
      return -1;
    }
    const length = plaintext.length + OVERHEAD_BYTES;
    if (out.length < length) {
      throw new RangeError(`a ${plaintext.length}-byte plaintext seals into ${length} bytes`);
    }
    const counter = send.counter++;
    const id = this.peerId;
    out[0] = SEALED_DATAGRAM_TYPE;
    out[1] = send.epoch;
    out[2] = 0;
    out[3] = 0;
    out[4] = id >>> 24;
    out[5] = id >>> 16;
    out[6] = id >>> 8;
    out[7] = id;
    // The counter stays below 2^32 (`rejectAfterPackets`): its high half is zero.
    out[8] =
      out[9] =
      out[10] =
      out[11] =
        0;
    out[12] = counter >>> 24;
    out[13] = counter >>> 16;
    out[14] = counter >>> 8;
    out[15] = counter;
    this.#sealNonceView.setUint32(8, counter);
    if (out !== this.#sealOut) {
      this.#sealOut = out;
      this.#sealBody = out.subarray(HEADER_BYTES);
    }
    send.key.seal(this.#sealBody!, plaintext, plaintext.length, out, HEADER_BYTES, this.#sealNonce);
    this.counters.sealed++;
    return length;
  }

  /**
   * Opens `datagram` IN PLACE and returns the plaintext, a view into it; null (and one counter
   * up) if it is refused. The datagram's bytes are overwritten either way.
   */
  open(datagram: Uint8Array): Uint8Array | null {
    const d = datagram;
    if (d.length < OVERHEAD_BYTES) {
      this.counters.short++;
      return null;
    }
    const receiverId = ((d[4] << 24) | (d[5] << 16) | (d[6] << 8) | d[7]) >>> 0;
    if (
      d[0] !== SEALED_DATAGRAM_TYPE || d[2] !== 0 || d[3] !== 0 || receiverId !== this.localId ||
      (d[8] | d[9] | d[10] | d[11]) !== 0
    ) {
      this.counters.malformed++;
      return null;
    }
    const key = this.#receiveKey(d[1]);
    if (key === null) {
      this.counters.unknownEpoch++;
      return null;
    }
    const counter = d[12] * 0x1000000 + ((d[13] << 16) | (d[14] << 8) | d[15]);
    const verdict = key.window.check(counter);
    if (verdict !== ReplayVerdict.fresh) {
      if (verdict === ReplayVerdict.tooOld) this.counters.tooOld++;
      else this.counters.replayed++;
      return null;
    }
    this.#openNonceView.setUint32(8, counter);
    // `body` ends before the tag; the AEAD reads `clen` bytes from its start, tag included,
    // which are still inside `datagram`.
    const body = d.subarray(HEADER_BYTES, d.length - AEAD_TAG_BYTES);
    const clen = d.length - HEADER_BYTES;
    if (!key.key.open(body, body, clen, d, HEADER_BYTES, this.#openNonce)) {
      this.counters.forged++;
      return null;
    }
    key.window.accept(counter);
    this.counters.opened++;
    if (key !== this.#current) {
      if (key === this.#pending?.receive) this.confirmRekey();
    } else if (this.#previous !== null && this.#previous.expiresAt === Infinity) {
      // The peer seals with our current key: whatever it sealed with the old one is in flight.
      this.#previous.expiresAt = this.#now + this.#policy.limits.previousKeyLingerMs;
    }
    return body;
  }

  /**
   * Installs the next epoch's keys (`keys.epoch` must be `epoch + 1`, mod 256). `peerHasKeys`:
   * true if the peer derived them before we did (its public came in answer to ours), so we seal
   * with them at once; false if we answered, so we open with them at once but seal with them
   * only once the peer is seen using them (see the module comment).
   */
  rekey(keys: SessionKeys, now: number, { peerHasKeys }: { peerHasKeys: boolean }): void {
    if (this.#pending !== null) throw new Error("a rekey is already pending");
    const expected = (this.#send.epoch + 1) & 0xff;
    if (keys.epoch !== expected) {
      throw new RangeError(`the next epoch is ${expected}, not ${keys.epoch}`);
    }
    this.#now = now;
    this.#pending = this.#keysOf(keys, now);
    if (peerHasKeys) {
      this.confirmRekey();
      // Until the peer is seen sealing with the new key, its old one is still in use.
      this.#previous!.expiresAt = Infinity;
    }
  }

  /**
   * Seals with the pending keys from now on: the peer has them. `open` calls it on the first
   * datagram of the pending epoch; the transport may call it when it learns so otherwise.
   */
  confirmRekey(): void {
    const pending = this.#pending;
    if (pending === null) return;
    this.#pending = null;
    this.#previous?.key.destroy();
    this.#previous = this.#current;
    this.#previous.expiresAt = this.#now + this.#policy.limits.previousKeyLingerMs;
    this.#current = pending.receive;
    this.#send.key.destroy();
    this.#send = pending.send;
  }

  /**
   * Moves the session's clock on: drops the previous receive key once its time is up, and
   * retires a send key that has become too old (`seal` then refuses). Call it every second or so.
   */
  tick(now: number): void {
    this.#now = now;
    const previous = this.#previous;
    if (
      previous !== null &&
      (now >= previous.expiresAt || now - previous.createdAt >= this.#policy.limits.rejectAfterMs)
    ) {
      previous.key.destroy();
      this.#previous = null;
    }
    if (this.#policy.judge(now - this.#send.createdAt, this.#send.counter) === "expired") {
      this.#send.expired = true;
    }
  }

  /**
   * Whether to start a key exchange now: the send key is due for one (or spent) and none is
   * pending already.
   */
  shouldRekey(now: number): boolean {
    if (this.#pending !== null) return false;
    return this.#policy.judge(now - this.#send.createdAt, this.#send.counter) !== "keep";
  }

  /** Wipes every key; the session is unusable afterwards. */
  close(): void {
    for (const k of [this.#send, this.#current, this.#previous, this.#pending?.send]) {
      k?.key.destroy();
    }
    this.#pending?.receive.key.destroy();
    this.#send.expired = true;
    this.#previous = this.#pending = null;
  }

  #receiveKey(epoch: number): ReceiveKey | null {
    if (epoch === this.#current.epoch) return this.#current;
    if (epoch === this.#previous?.epoch) return this.#previous;
    if (epoch === this.#pending?.receive.epoch) return this.#pending.receive;
    return null;
  }

  #keysOf(keys: SessionKeys, now: number): { send: SendKey; receive: ReceiveKey } {
    return {
      send: {
        epoch: keys.epoch,
        key: aeadKey(keys.aead, keys.send),
        createdAt: now,
        counter: 0,
        expired: false,
      },
      receive: {
        epoch: keys.epoch,
        key: aeadKey(keys.aead, keys.receive),
        window: new ReplayWindow(this.#windowBits),
        createdAt: now,
        expiresAt: Infinity,
      },
    };
  }
}
