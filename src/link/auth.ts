/**
 * The handshake every connection starts with, control and peer alike.
 *
 * 1. Both sides send HELLO: "VNET", protocol version (u16), kind (u8), a fresh 32-byte nonce.
 * 2. Both check the magic and version. The dialler sends AUTH = HMAC-SHA256(secret,
 *    "vnet/2 " + side + own nonce + peer nonce), `side` being "dialer" or "acceptor" so a
 *    proof can never be reflected back to its author.
 * 3. The acceptor verifies it, and only then sends its own AUTH, which the dialler verifies.
 *    A wrong proof gets an ERROR message and the connection is closed: nothing else is read
 *    from that peer, so nothing it sends is ever injected.
 *
 * The secret never crosses the wire; fresh nonces on both sides make replays useless. The
 * acceptor proves last, so a stranger who connects to a server learns nothing from it but a
 * nonce: nothing to guess the secret from offline. A dialler does hand its proof to whatever
 * answers at the address it dials, so against an impostor there, the protection of the secret
 * rests on its entropy: 32 random bytes (`vnet secret`) cannot be guessed.
 */
import { ErrorCode, VnetError } from "../errors.ts";
import { encodeMessage, MAX_MESSAGE, MessageReader, MessageType, ProtocolError } from "./wire.ts";
import { closeQuietly, writeAll, type Writer } from "./stream.ts";

export const PROTOCOL_VERSION = 2;
const MAGIC = [0x56, 0x4e, 0x45, 0x54]; // "VNET"
const NONCE_BYTES = 32;
export const HANDSHAKE_TIMEOUT_MS = 10_000;
const AUTH_FAILED = "authentication failed";

/** What the dialler wants the connection for; the acceptor answers with `acceptor`. */
export const ConnectionKind = { acceptor: 0, control: 1, peer: 2 } as const;
export type ConnectionKind = keyof typeof ConnectionKind;

interface Hello {
  version: number;
  kind: ConnectionKind;
  nonce: Uint8Array;
}

/** The peer proved it does not know the secret. */
export class AuthError extends VnetError {
  constructor(message: string) {
    super(message, { code: ErrorCode.Auth });
  }
}

export function encodeHello(hello: Hello): Uint8Array {
  const out = new Uint8Array(7 + NONCE_BYTES);
  out.set(MAGIC, 0);
  new DataView(out.buffer).setUint16(4, hello.version);
  out[6] = ConnectionKind[hello.kind];
  out.set(hello.nonce, 7);
  return out;
}

export function decodeHello(payload: Uint8Array): Hello {
  if (payload.length !== 7 + NONCE_BYTES || MAGIC.some((b, i) => payload[i] !== b)) {
    throw new ProtocolError("the peer is not a vnet server or client (bad hello)");
  }
  const version = new DataView(payload.buffer, payload.byteOffset).getUint16(4);
  const kind = (Object.keys(ConnectionKind) as ConnectionKind[])
    .find((k) => ConnectionKind[k] === payload[6]);
  if (!kind) throw new ProtocolError(`unknown connection kind ${payload[6]}`);
  return { version, kind, nonce: payload.slice(7) };
}

/** Imports the shared secret as an HMAC key usable for both signing and verifying. */
export function importSecret(secret: Uint8Array): Promise<CryptoKey> {
  return crypto.subtle.importKey(
    "raw",
    secret as Uint8Array<ArrayBuffer>,
    { name: "HMAC", hash: "SHA-256" },
    false,
    ["sign", "verify"],
  );
}

function proofInput(side: "dialer" | "acceptor", own: Uint8Array, peer: Uint8Array) {
  const label = new TextEncoder().encode(`vnet/${PROTOCOL_VERSION} ${side} `);
  const data = new Uint8Array(label.length + own.length + peer.length);
  data.set(label, 0);
  data.set(own, label.length);
  data.set(peer, label.length + own.length);
  return data;
}

async function prove(
  key: CryptoKey,
  side: "dialer" | "acceptor",
  own: Uint8Array,
  peer: Uint8Array,
): Promise<Uint8Array> {
  return new Uint8Array(await crypto.subtle.sign("HMAC", key, proofInput(side, own, peer)));
}

function verify(
  key: CryptoKey,
  side: "dialer" | "acceptor",
  proof: Uint8Array,
  own: Uint8Array,
  peer: Uint8Array,
): Promise<boolean> {
  // subtle.verify compares in constant time.
  return crypto.subtle.verify(
    "HMAC",
    key,
    proof as Uint8Array<ArrayBuffer>,
    proofInput(side, own, peer),
  );
}

async function expect(reader: MessageReader, type: MessageType, what: string) {
  const m = await reader.message();
  if (!m) throw new ProtocolError(`connection closed during the handshake (waiting for ${what})`);
  if (m.type === MessageType.Error) {
    // The other end refused us and said why. Refused while we wait for its proof: it did not
    // accept ours, so it holds another secret.
    const text = new TextDecoder().decode(m.payload);
    if (what === "authentication") throw new AuthError(text);
    throw new VnetError(text, { code: ErrorCode.Protocol });
  }
  if (m.type !== type) throw new ProtocolError(`expected ${what}, got message type ${m.type}`);
  return m.payload.slice();
}

/** What a completed handshake established. */
interface Handshake {
  /** What the other end said the connection is for. */
  kind: ConnectionKind;
  /** This side's and the other side's nonces: fresh, shared, bound to this connection. */
  own: Uint8Array;
  peer: Uint8Array;
  /** Secret bytes of this connection's own (see `connectionSecret`). */
  secret: Uint8Array;
}

/**
 * Runs the handshake on a fresh connection. Resolves with the peer's declared kind; throws
 * AuthError (after telling the peer) if the peer does not know the secret, VnetError or
 * ProtocolError for anything else. Bounded by `timeoutMs`.
 */
export async function handshake(
  conn: Writer & { close(): void },
  reader: MessageReader,
  options: {
    key: CryptoKey;
    side: "dialer" | "acceptor";
    kind: ConnectionKind;
    timeoutMs?: number;
  },
): Promise<Handshake> {
  const timeoutMs = options.timeoutMs ?? HANDSHAKE_TIMEOUT_MS;
  let timer: ReturnType<typeof setTimeout> | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => {
      // Silence is a breach of the protocol: a peer that speaks it answers at once.
      reject(new ProtocolError(`handshake timed out after ${timeoutMs} ms`));
      closeQuietly(conn);
    }, timeoutMs);
  });
  try {
    return await Promise.race([run(), timeout]);
  } finally {
    clearTimeout(timer);
  }

  async function run(): Promise<Handshake> {
    const own = crypto.getRandomValues(new Uint8Array(NONCE_BYTES));
    await writeAll(
      conn,
      encodeMessage(
        MessageType.Hello,
        encodeHello({ version: PROTOCOL_VERSION, kind: options.kind, nonce: own }),
      ),
    );
    const hello = decodeHello(await expect(reader, MessageType.Hello, "hello"));
    if (hello.version !== PROTOCOL_VERSION) {
      const text =
        `protocol version mismatch: this side speaks ${PROTOCOL_VERSION}, the peer ${hello.version}; run the same vnet version on both`;
      await writeAll(conn, encodeMessage(MessageType.Error, new TextEncoder().encode(text)))
        .catch(() => {});
      throw new ProtocolError(text);
    }
    const peerSide = options.side === "dialer" ? "acceptor" : "dialer";
    const sendProof = async () =>
      writeAll(
        conn,
        encodeMessage(MessageType.Auth, await prove(options.key, options.side, own, hello.nonce)),
      );
    // The dialler proves first; the acceptor proves only to someone who proved.
    if (options.side === "dialer") await sendProof();
    const proof = await expect(reader, MessageType.Auth, "authentication");
    if (!await verify(options.key, peerSide, proof, hello.nonce, own)) {
      await writeAll(
        conn,
        encodeMessage(
          MessageType.Error,
          new TextEncoder().encode(
            `${AUTH_FAILED}: wrong shared secret (both sides need the same --secret-file)`,
          ),
        ),
      ).catch(() => {});
      throw new AuthError(
        `${AUTH_FAILED}: the other end holds a different shared secret (both sides need the same secret file)`,
      );
    }
    if (options.side === "acceptor") await sendProof();
    // Authenticated: from now on the peer may send full-size frames and long answers.
    reader.maxMessage = MAX_MESSAGE;
    reader.reserve(1 << 20);
    const secret = await connectionSecret(options.key, options.side, own, hello.nonce);
    return { kind: hello.kind, own, peer: hello.nonce, secret };
  }
}

/**
 * Secret bytes bound to this one connection, for keys agreed over it later (the UDP transport's:
 * link/udp/keys.ts): HMAC-SHA256(shared secret, "vnet/connection-secret v1" dialer-nonce
 * acceptor-nonce). Only the two ends that proved the secret can compute it, and no other
 * connection has the same. The label keeps it apart from the proofs, which are public.
 */
async function connectionSecret(
  key: CryptoKey,
  side: "dialer" | "acceptor",
  own: Uint8Array,
  peer: Uint8Array,
): Promise<Uint8Array> {
  const label = new TextEncoder().encode("vnet/connection-secret v1 ");
  const [dialer, acceptor] = side === "dialer" ? [own, peer] : [peer, own];
  const data = new Uint8Array(label.length + dialer.length + acceptor.length);
  data.set(label);
  data.set(dialer, label.length);
  data.set(acceptor, label.length + dialer.length);
  return new Uint8Array(await crypto.subtle.sign("HMAC", key, data));
}
