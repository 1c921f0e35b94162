/**
 * The VNET wire format, spoken between servers (peer links) and by clients (control).
 *
 * A connection is a sequence of messages:
 *
 *   +----------------+--------+----------------------+
 *   | length (u32 BE)| type u8| payload (length - 1) |
 *   +----------------+--------+----------------------+
 *
 * `length` counts the type byte and the payload. Frames are the hot path: their payload is a
 * u32 handler number followed by the Ethernet frame, so a FRAME message costs 9 bytes of
 * framing. Everything else is small and rare (handshake, JSON requests, keepalives).
 */
import { ErrorCode, VnetError } from "../errors.ts";

export const MessageType = {
  /** Handshake opener: magic, version, kind, nonce (see auth.ts). */
  Hello: 1,
  /** Handshake proof: HMAC-SHA256 over both nonces. */
  Auth: 2,
  /** A fatal error, UTF-8 text; the sender closes after it. */
  Error: 3,
  /** JSON `{ req, op, ...body }`; `req` numbers the request. */
  Request: 4,
  /** JSON `{ req, ok, result?, error? }`. */
  Response: 5,
  /** u32 handler number, then one Ethernet frame. */
  Frame: 6,
  /** Keepalive probe: 8 bytes echoed back in a Pong. */
  Ping: 7,
  Pong: 8,
  /** A dialling server's certificate and signature over the nonces (peer_cert.ts). */
  CertProof: 9,
} as const;
export type MessageType = typeof MessageType[keyof typeof MessageType];

/** Bytes of framing before a frame's first byte. */
export const FRAME_OVERHEAD = 9;
/** The largest Ethernet frame a link carries (a 64 KB GSO super-frame plus headers fits). */
export const MAX_FRAME = 262144;
/** Before authentication only the tiny handshake messages are accepted. */
const MAX_HANDSHAKE_MESSAGE = 1024;
/** The largest message of any kind after authentication (a `list` of many handlers). */
export const MAX_MESSAGE = 4 << 20;

export class ProtocolError extends VnetError {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, { ...options, code: ErrorCode.Protocol });
  }
}

/** Writes one message into `out` at `offset`; returns the new offset. */
function putMessage(
  out: Uint8Array,
  offset: number,
  type: MessageType,
  payload: Uint8Array,
): number {
  const view = new DataView(out.buffer, out.byteOffset, out.byteLength);
  view.setUint32(offset, payload.length + 1);
  out[offset + 4] = type;
  out.set(payload, offset + 5);
  return offset + 5 + payload.length;
}

/** Writes one FRAME message into `out` at `offset` (caller checked the room). */
export function putFrame(
  out: Uint8Array,
  view: DataView,
  offset: number,
  handler: number,
  frame: Uint8Array,
): number {
  view.setUint32(offset, frame.length + 5);
  out[offset + 4] = MessageType.Frame;
  view.setUint32(offset + 5, handler);
  out.set(frame, offset + FRAME_OVERHEAD);
  return offset + FRAME_OVERHEAD + frame.length;
}

/** The handler number of a FRAME message as `putFrame` wrote it at `offset`. */
export function frameHandler(message: Uint8Array, offset = 0): number {
  const at = offset + 5;
  return ((message[at] << 24) | (message[at + 1] << 16) | (message[at + 2] << 8) |
    message[at + 3]) >>> 0;
}

/** A keepalive PING carrying its send time (`now`, ms), which the PONG brings back. */
export function encodePing(now: number): Uint8Array {
  const ping = new Uint8Array(8);
  new DataView(ping.buffer).setFloat64(0, now);
  return encodeMessage(MessageType.Ping, ping);
}

/** The round trip of a PONG's payload at `now` (ms, to the µs); null if it is not ours. */
export function pongRoundTrip(payload: Uint8Array, now: number): number | null {
  if (payload.length !== 8) return null;
  const sent = new DataView(payload.buffer, payload.byteOffset, 8).getFloat64(0);
  return Math.round((now - sent) * 1000) / 1000;
}

export function encodeMessage(type: MessageType, payload: Uint8Array): Uint8Array {
  const out = new Uint8Array(5 + payload.length);
  putMessage(out, 0, type, payload);
  return out;
}

const utf8 = new TextEncoder();
const utf8Decoder = new TextDecoder("utf-8", { fatal: true });

export function encodeJson(type: MessageType, value: unknown): Uint8Array {
  return encodeMessage(type, utf8.encode(JSON.stringify(value)));
}

export function decodeJson(payload: Uint8Array): Record<string, unknown> {
  let value: unknown;
  try {
    value = JSON.parse(utf8Decoder.decode(payload));
  } catch {
    throw new ProtocolError("malformed JSON message");
  }
  if (typeof value !== "object" || value === null || Array.isArray(value)) {
    throw new ProtocolError("JSON message is not an object");
  }
  return value as Record<string, unknown>;
}

export function decodeText(payload: Uint8Array): string {
  return new TextDecoder().decode(payload);
}

/** One decoded message; `payload` is a view into the reader's buffer, valid until the next read. */
export interface Message {
  type: number;
  payload: Uint8Array;
}

/**
 * Reads messages from a byte stream with one reusable buffer: `read()` fills it from the
 * connection, `next()` hands out complete messages as views until it needs more bytes.
 * The buffer starts small, so unauthenticated connections cost little, and grows to hold
 * the largest message allowed (`maxMessage`, raised after the handshake).
 */
export class MessageReader {
  #buf: Uint8Array;
  #view: DataView;
  #start = 0;
  #end = 0;
  /** Bytes read in total, for counters. */
  bytesRead = 0;

  constructor(
    private readonly source: { read(p: Uint8Array): Promise<number | null> },
    /** The largest message accepted: tiny until the handshake completes. */
    public maxMessage = MAX_HANDSHAKE_MESSAGE,
    bufferSize = 4096,
  ) {
    this.#buf = new Uint8Array(bufferSize);
    this.#view = new DataView(this.#buf.buffer);
  }

  /** Makes the buffer at least `size` bytes (bigger reads mean fewer system calls). */
  reserve(size: number): void {
    if (size <= this.#buf.length) return;
    const bigger = new Uint8Array(size);
    bigger.set(this.#buf.subarray(this.#start, this.#end));
    this.#end -= this.#start;
    this.#start = 0;
    this.#buf = bigger;
    this.#view = new DataView(bigger.buffer);
  }

  /** The next complete message already buffered, or null if more bytes are needed. */
  next(): Message | null {
    const available = this.#end - this.#start;
    if (available < 5) return null;
    const length = this.#view.getUint32(this.#start);
    if (length === 0 || length > this.maxMessage) {
      // The very first bytes are a TLS record header (handshake 0x16 or alert 0x15, version 3.x):
      // the other end answered in TLS where we speak plain.
      const first = this.#buf[this.#start];
      if (
        this.bytesRead === available && (first === 0x16 || first === 0x15) &&
        this.#buf[this.#start + 1] === 0x03
      ) {
        throw new ProtocolError("the other end answered in TLS, this side speaks plain TCP");
      }
      throw new ProtocolError(`message of ${length} bytes exceeds the limit of ${this.maxMessage}`);
    }
    if (available < 4 + length) {
      // Make room for the whole message before the next read.
      if (4 + length > this.#buf.length) this.reserve(Math.max(4 + length, this.#buf.length * 2));
      return null;
    }
    const type = this.#buf[this.#start + 4];
    const payload = this.#buf.subarray(this.#start + 5, this.#start + 4 + length);
    this.#start += 4 + length;
    return { type, payload };
  }

  /**
   * Reads more bytes. Returns false at end of stream. Views handed out by `next()` before this
   * call become invalid (the buffer is compacted).
   */
  async read(): Promise<boolean> {
    if (this.#start > 0) {
      this.#buf.copyWithin(0, this.#start, this.#end);
      this.#end -= this.#start;
      this.#start = 0;
    }
    const n = await this.source.read(this.#buf.subarray(this.#end));
    if (n === null) return false;
    this.#end += n;
    this.bytesRead += n;
    return true;
  }

  /**
   * Reads more bytes with a synchronous `read` (a nonblocking socket's recv): the bytes read, 0
   * when none were ready, null at end of stream. Invalidates views as `read()` does.
   */
  readWith(read: (p: Uint8Array) => number | null): number | null {
    if (this.#start > 0) {
      this.#buf.copyWithin(0, this.#start, this.#end);
      this.#end -= this.#start;
      this.#start = 0;
    }
    const n = read(this.#buf.subarray(this.#end));
    if (n === null) return null;
    this.#end += n;
    this.bytesRead += n;
    return n;
  }

  /**
   * Hands over what is buffered and not read yet (the first bytes after the handshake), for a
   * reader on another thread to start from (`preload`); this reader is empty afterwards.
   */
  takeBuffered(): Uint8Array {
    const rest = this.#buf.slice(this.#start, this.#end);
    this.#start = this.#end = 0;
    return rest;
  }

  /** Starts with `bytes` buffered, as if read: what another reader handed over. */
  preload(bytes: Uint8Array): void {
    this.reserve(this.#end + bytes.length);
    this.#buf.set(bytes, this.#end);
    this.#end += bytes.length;
    this.bytesRead += bytes.length;
  }

  /** Reads until a whole message is available; null at end of stream. */
  async message(): Promise<Message | null> {
    for (;;) {
      const m = this.next();
      if (m) return m;
      if (!await this.read()) {
        if (this.#end > this.#start) throw new ProtocolError("connection closed mid-message");
        return null;
      }
    }
  }
}
