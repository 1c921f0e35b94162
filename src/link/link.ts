/**
 * A Link is one authenticated connection (TCP or TLS) between two VNET endpoints. Peer links
 * join two servers and carry the frames of every handler between them; control links join a
 * client to a server. Both speak the same messages (wire.ts) after the same handshake (auth.ts).
 *
 * Sending frames (capture side, the hot path):
 *   1. `sendFrame` copies the frame, behind 9 bytes of framing, into the current chunk.
 *   2. A full chunk is sealed onto the ready queue; the queue is bounded (`maxQueuedBytes`):
 *      when it is full the frame is dropped and counted, memory never grows.
 *   3. The writer loop, started once per burst (after the synchronous capture drain returns),
 *      writes whole chunks: one socket write carries many frames.
 *
 * Receiving frames (inject side):
 *   1. The reader loop reads as much as the socket has into one reusable buffer.
 *   2. Each complete FRAME message is handed to `onFrame` as a view into that buffer and
 *      injected synchronously before the next read, so nothing is copied or allocated.
 */
import { AuthError, handshake, writeAll } from "./auth.ts";
import { messageOf, VnetError } from "../errors.ts";
import { type Logger } from "../ops/log.ts";
import {
  decodeJson,
  decodeText,
  encodeJson,
  encodeMessage,
  FRAME_OVERHEAD,
  MAX_FRAME,
  type Message,
  MessageReader,
  MessageType,
  ProtocolError,
  putFrame,
} from "./wire.ts";
import { formatHostPort, type HostPort } from "../addr.ts";
import { type SshOptions, sshStream } from "./ssh.ts";
import { makeProof, type PeerIdentity } from "./peer_cert.ts";

/** One chunk holds at least one maximal frame; chunks are recycled through a pool. */
const CHUNK_BYTES = 512 * 1024;
const DEFAULT_QUEUE_BYTES = 4 * 1024 * 1024;
const REQUEST_TIMEOUT_MS = 15_000;

export interface LinkEvents {
  /** A frame for handler `handler`; `frame` is valid only during the call. */
  onFrame(handler: number, frame: Uint8Array): void;
  /** A request from the other end; the resolved value is the response's `result`. */
  onRequest(op: string, body: Record<string, unknown>, link: Link): Promise<unknown>;
  /** The link is gone (called once). */
  onClose(link: Link, reason: string): void;
}

export interface LinkOptions {
  /** The other end, for logs and `list`. */
  remote: string;
  tls: boolean;
  log: Logger;
  events: LinkEvents;
  /** Keepalive: a PING every `keepaliveMs`; silence for 3 intervals closes the link. 0 = off. */
  keepaliveMs?: number;
  maxQueuedBytes?: number;
}

export interface LinkStats {
  framesOut: number;
  bytesOut: number;
  framesIn: number;
  bytesIn: number;
  /** Frames dropped because the send queue was full (the link is slower than the capture). */
  queueDrops: number;
}

/** What a link runs over: a TCP or TLS connection, or the pipes of an `ssh -W` process. */
export interface Stream {
  read(p: Uint8Array): Promise<number | null>;
  write(p: Uint8Array): Promise<number>;
  close(): void;
}

let nextLinkNumber = 1;

export class Link {
  readonly number = nextLinkNumber++;
  readonly remote: string;
  readonly tls: boolean;
  readonly stats: LinkStats = { framesOut: 0, bytesOut: 0, framesIn: 0, bytesIn: 0, queueDrops: 0 };
  /** Round-trip time of the last keepalive, in ms. */
  rttMs: number | null = null;
  readonly closed: Promise<string>;

  #conn: Stream;
  #reader: MessageReader;
  #events: LinkEvents;
  #log: Logger;
  #open = true;
  #resolveClosed!: (reason: string) => void;

  // Send side: the chunk being filled, sealed chunks waiting, spare chunks.
  #current = new Uint8Array(CHUNK_BYTES);
  #currentView = new DataView(this.#current.buffer);
  #fill = 0;
  #ready: Uint8Array[] = [];
  #readyBytes = 0;
  #pool: Uint8Array<ArrayBuffer>[] = [];
  #writing = false;
  #maxQueuedBytes: number;

  // Requests in flight, by id.
  #nextRequest = 1;
  #pending = new Map<
    number,
    {
      resolve: (v: unknown) => void;
      reject: (e: Error) => void;
      timer: ReturnType<typeof setTimeout>;
    }
  >();

  #keepalive: ReturnType<typeof setInterval> | undefined;
  #lastHeard = Date.now();

  constructor(conn: Stream, reader: MessageReader, options: LinkOptions) {
    this.#conn = conn;
    this.#reader = reader;
    this.remote = options.remote;
    this.tls = options.tls;
    this.#events = options.events;
    this.#log = options.log.with({ link: this.number, remote: options.remote });
    this.#maxQueuedBytes = options.maxQueuedBytes ?? DEFAULT_QUEUE_BYTES;
    this.closed = new Promise((resolve) => this.#resolveClosed = resolve);
    this.#readLoop();
    const every = options.keepaliveMs ?? 0;
    if (every > 0) {
      this.#keepalive = setInterval(() => this.#probe(every * 3), every);
    }
  }

  get isOpen(): boolean {
    return this.#open;
  }

  /** Bytes waiting to be written (sealed chunks plus the one being filled). */
  get queuedBytes(): number {
    return this.#readyBytes + this.#fill;
  }

  /** Queues one frame for `handler`. Returns false (and counts it) if it had to be dropped. */
  sendFrame(handler: number, frame: Uint8Array): boolean {
    const size = frame.length + FRAME_OVERHEAD;
    if (!this.#open || frame.length > MAX_FRAME || !this.#makeRoom(size, false)) {
      this.stats.queueDrops++;
      return false;
    }
    this.#fill = putFrame(this.#current, this.#currentView, this.#fill, handler, frame);
    this.stats.framesOut++;
    this.stats.bytesOut += frame.length;
    this.#scheduleWrite();
    return true;
  }

  /** Sends a request and waits for its response's result (rejects with the peer's error). */
  request(
    op: string,
    body: Record<string, unknown> = {},
    timeoutMs = REQUEST_TIMEOUT_MS,
  ): Promise<Record<string, unknown>> {
    if (!this.#open) return Promise.reject(new VnetError(`link to ${this.remote} is down`));
    const id = this.#nextRequest++;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.#pending.delete(id);
        reject(new VnetError(`${this.remote} did not answer '${op}' within ${timeoutMs} ms`));
      }, timeoutMs);
      this.#pending.set(id, {
        resolve: (v) => resolve((v ?? {}) as Record<string, unknown>),
        reject,
        timer,
      });
      this.#sendControl(encodeJson(MessageType.Request, { ...body, req: id, op }));
    });
  }

  /** Closes the link (idempotent); the reason is logged and passed to `onClose`. */
  close(reason: string, notifyPeer?: string): void {
    if (!this.#open) return;
    this.#open = false;
    clearInterval(this.#keepalive);
    for (const [, p] of this.#pending) {
      clearTimeout(p.timer);
      p.reject(new VnetError(`link to ${this.remote} closed: ${reason}`));
    }
    this.#pending.clear();
    const finish = () => {
      try {
        this.#conn.close();
      } catch { /* already closed */ }
    };
    if (notifyPeer) {
      // Best effort, bounded: tell the peer why before hanging up.
      const bytes = encodeMessage(MessageType.Error, new TextEncoder().encode(notifyPeer));
      Promise.race([writeAll(this.#conn, bytes), new Promise((r) => setTimeout(r, 500))])
        .catch(() => {}).finally(finish);
    } else {
      finish();
    }
    this.#log.debug("link closed", { reason });
    this.#resolveClosed(reason);
    this.#events.onClose(this, reason);
  }

  // --- send side -------------------------------------------------------------------------

  /** Ensures `size` bytes fit in the current chunk, sealing it if needed. */
  #makeRoom(size: number, force: boolean): boolean {
    if (this.#fill + size <= this.#current.length) return true;
    if (!force && this.#readyBytes + this.#fill > this.#maxQueuedBytes) return false;
    if (this.#fill > 0) {
      this.#ready.push(this.#current.subarray(0, this.#fill));
      this.#readyBytes += this.#fill;
    }
    const fresh = this.#pool.pop() ?? new Uint8Array(Math.max(CHUNK_BYTES, size));
    this.#current = fresh.length >= size ? fresh : new Uint8Array(size);
    this.#currentView = new DataView(this.#current.buffer);
    this.#fill = 0;
    return true;
  }

  /** Control messages are never dropped: they may exceed the queue bound. */
  #sendControl(message: Uint8Array): void {
    if (!this.#open) return;
    this.#makeRoom(message.length, true);
    this.#current.set(message, this.#fill);
    this.#fill += message.length;
    this.#scheduleWrite();
  }

  #scheduleWrite(): void {
    if (this.#writing) return;
    this.#writing = true;
    // Start after the current synchronous burst (a capture drain) so one write carries it all.
    queueMicrotask(() => this.#writeLoop());
  }

  async #writeLoop(): Promise<void> {
    try {
      while (this.#open) {
        let chunk: Uint8Array;
        if (this.#ready.length > 0) {
          chunk = this.#ready.shift()!;
          this.#readyBytes -= chunk.length;
        } else if (this.#fill > 0) {
          chunk = this.#current.subarray(0, this.#fill);
          this.#current = this.#pool.pop() ?? new Uint8Array(CHUNK_BYTES);
          this.#currentView = new DataView(this.#current.buffer);
          this.#fill = 0;
        } else {
          break;
        }
        await writeAll(this.#conn, chunk);
        if (chunk.buffer.byteLength === CHUNK_BYTES) {
          this.#pool.push(new Uint8Array(chunk.buffer as ArrayBuffer));
        }
      }
    } catch (e) {
      this.close(`write failed: ${messageOf(e)}`);
    } finally {
      this.#writing = false;
    }
  }

  // --- receive side ----------------------------------------------------------------------

  async #readLoop(): Promise<void> {
    try {
      for (;;) {
        for (let m = this.#reader.next(); m !== null; m = this.#reader.next()) {
          this.#dispatch(m);
          if (!this.#open) return;
        }
        if (!await this.#reader.read()) {
          this.close("the other end closed the connection");
          return;
        }
        this.#lastHeard = Date.now();
      }
    } catch (e) {
      if (!this.#open) return;
      const reason = messageOf(e);
      if (e instanceof ProtocolError) {
        this.#log.warn("protocol error, disconnecting", { reason });
        this.close(`protocol error: ${reason}`, `protocol error: ${reason}`);
      } else {
        this.close(`read failed: ${reason}`);
      }
    }
  }

  #dispatch(m: Message): void {
    const p = m.payload;
    switch (m.type) {
      case MessageType.Frame: {
        if (p.length < 4 || p.length > MAX_FRAME + 4) {
          throw new ProtocolError(`frame message of ${p.length} bytes`);
        }
        const handler = ((p[0] << 24) | (p[1] << 16) | (p[2] << 8) | p[3]) >>> 0;
        this.stats.framesIn++;
        this.stats.bytesIn += p.length - 4;
        this.#events.onFrame(handler, p.subarray(4));
        return;
      }
      case MessageType.Request:
        return this.#serveRequest(decodeJson(p));
      case MessageType.Response:
        return this.#settle(decodeJson(p));
      case MessageType.Ping:
        return this.#sendControl(encodeMessage(MessageType.Pong, p.slice()));
      case MessageType.Pong: {
        if (p.length === 8) {
          const sent = new DataView(p.buffer, p.byteOffset, 8).getFloat64(0);
          this.rttMs = Math.round((performance.now() - sent) * 1000) / 1000;
        }
        return;
      }
      case MessageType.Error:
        this.close(`the other end said: ${decodeText(p)}`);
        return;
      default:
        throw new ProtocolError(`unexpected message type ${m.type}`);
    }
  }

  #serveRequest(body: Record<string, unknown>): void {
    const { req: id, op } = body;
    if (typeof id !== "number" || typeof op !== "string") {
      throw new ProtocolError("request without id or op");
    }
    this.#events.onRequest(op, body, this).then(
      (result) =>
        this.#sendControl(encodeJson(MessageType.Response, { req: id, ok: true, result })),
      (e) => {
        if (!(e instanceof VnetError)) this.#log.error("request failed", { op, error: String(e) });
        this.#sendControl(
          encodeJson(MessageType.Response, { req: id, ok: false, error: messageOf(e) }),
        );
      },
    );
  }

  #settle(body: Record<string, unknown>): void {
    const pending = this.#pending.get(body.req as number);
    if (!pending) return; // timed out already
    this.#pending.delete(body.req as number);
    clearTimeout(pending.timer);
    if (body.ok) pending.resolve(body.result);
    else pending.reject(new VnetError(String(body.error ?? "request failed")));
  }

  #probe(silenceLimitMs: number): void {
    if (Date.now() - this.#lastHeard > silenceLimitMs) {
      this.close(`no data from the other end for ${silenceLimitMs} ms (keepalive)`);
      return;
    }
    const ping = new Uint8Array(8);
    new DataView(ping.buffer).setFloat64(0, performance.now());
    this.#sendControl(encodeMessage(MessageType.Ping, ping));
  }
}

// --- opening links ---------------------------------------------------------------------------

export interface DialOptions {
  key: CryptoKey;
  kind: "control" | "peer";
  /** PEM of the CA that signs the other end's certificate; TLS is used iff this is set. */
  tlsCa?: string;
  timeoutMs?: number;
  log: Logger;
  events: LinkEvents;
  keepaliveMs?: number;
  /** Reach the other end through `ssh -W` on this gateway instead of connecting directly. */
  ssh?: SshOptions;
  /** A server dialling a peer over TLS proves its certificate with this (peer_cert.ts). */
  identity?: PeerIdentity;
}

/** Connects to `addr`, runs the handshake and returns the open Link. Throws a VnetError. */
export async function dial(addr: HostPort, options: DialOptions): Promise<Link> {
  if (options.ssh) return await dialSsh(addr, options.ssh, options);
  const where = formatHostPort(addr);
  const timeoutMs = options.timeoutMs ?? 10_000;
  let conn: Deno.Conn | undefined;
  try {
    // TCP first, with Nagle off (latency of small frames, and of the tail of each batch),
    // then TLS on top: Deno's TLS connections cannot set TCP_NODELAY themselves.
    const connecting = Deno.connect({ hostname: addr.hostname, port: addr.port });
    // A connect that completes after the timeout is closed, not leaked.
    let gaveUp = false;
    connecting.then((c) => gaveUp && c.close(), () => {});
    const tcp = await withTimeout(connecting, timeoutMs, () => {
      gaveUp = true;
      return `timed out after ${timeoutMs} ms`;
    });
    tcp.setNoDelay(true);
    conn = tcp;
    if (options.tlsCa) {
      const tls = await Deno.startTls(tcp, { hostname: addr.hostname, caCerts: [options.tlsCa] });
      conn = tls;
      await withTimeout(
        tls.handshake(),
        timeoutMs,
        () => `TLS handshake timed out after ${timeoutMs} ms`,
      );
    }
  } catch (e) {
    try {
      conn?.close();
    } catch { /* already closed */ }
    throw new VnetError(`cannot connect to ${where}: ${explainConnectError(e)}`, { cause: e });
  }
  const reader = new MessageReader(conn);
  try {
    const done = await handshake(conn, reader, {
      key: options.key,
      side: "dialer",
      kind: options.kind,
    });
    if (options.tlsCa && options.identity && options.kind === "peer") {
      const proof = await makeProof(options.identity, done.own, done.peer);
      await writeAll(conn, encodeMessage(MessageType.CertProof, proof));
    }
  } catch (e) {
    try {
      conn.close();
    } catch { /* closed by the handshake timeout */ }
    const why = messageOf(e);
    if (e instanceof AuthError || /authentication failed/.test(why)) {
      throw new VnetError(`${where}: ${why}`, { cause: e });
    }
    const hint = options.tlsCa
      ? ""
      : " (if that server uses TLS, give --tls-ca with the CA that signed its certificate)";
    throw new VnetError(`handshake with ${where} failed: ${why}${hint}`, { cause: e });
  }
  return new Link(conn, reader, {
    remote: where,
    tls: Boolean(options.tlsCa),
    log: options.log,
    events: options.events,
    keepaliveMs: options.keepaliveMs,
  });
}

/** Dials through `ssh -W`; SSH encrypts and authenticates the gateway, so no TLS on top. */
async function dialSsh(addr: HostPort, ssh: SshOptions, options: DialOptions): Promise<Link> {
  const where = `${formatHostPort(addr)} through ssh ${ssh.gateway}`;
  const stream = sshStream(addr, ssh);
  const reader = new MessageReader(stream);
  try {
    await handshake(stream, reader, {
      key: options.key,
      side: "dialer",
      kind: options.kind,
      timeoutMs: options.timeoutMs,
    });
  } catch (e) {
    stream.close();
    const said = await stream.failure();
    throw new VnetError(`cannot reach ${where}: ${said || messageOf(e)}`, { cause: e });
  }
  return new Link(stream, reader, {
    remote: where,
    tls: false,
    log: options.log,
    events: options.events,
    keepaliveMs: options.keepaliveMs,
  });
}

function explainConnectError(e: unknown): string {
  if (e instanceof Deno.errors.ConnectionRefused) {
    return "connection refused (is vnet server running there?)";
  }
  if (e instanceof Deno.errors.TimedOut) return "timed out";
  const text = messageOf(e);
  if (/UnknownIssuer|invalid peer certificate|certificate/i.test(text)) {
    const why = /UnknownIssuer/.test(text)
      ? "not issued by the CA given with --tls-ca; "
      : /CaUsedAsEndEntity/.test(text)
      ? "it is a CA (self-signed) certificate, not one issued by your CA; "
      : /expired/i.test(text)
      ? "it has expired; "
      : "";
    return `the server's TLS certificate was refused: ${why}${text} (check --tls-ca and the name the certificate was issued for)`;
  }
  if (/InvalidContentType|CorruptMessage|received corrupt message/i.test(text)) {
    return `not a TLS server: ${text} (drop --tls-ca, or give that server --tls-cert/--tls-key)`;
  }
  return text;
}

export async function withTimeout<T>(
  promise: Promise<T>,
  ms: number,
  message: () => string,
): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  try {
    return await Promise.race([
      promise,
      new Promise<never>((_, reject) => {
        timer = setTimeout(() => reject(new Deno.errors.TimedOut(message())), ms);
      }),
    ]);
  } finally {
    clearTimeout(timer);
  }
}
