/**
 * A Link is one authenticated connection (TCP or TLS) between two VNET endpoints. Peer links
 * join two servers and carry the frames of every handler between them; control links join a
 * client to a server. Both speak the same messages (wire.ts) after the same handshake (auth.ts).
 *
 * Sending frames (capture side, the hot path; send_queue.ts, flow_queue.ts):
 *   1. `sendFrame` copies the frame, behind 9 bytes of framing, into a fair queue of flows
 *      (fq_codel-like): a sparse flow's frame goes ahead of a bulk flow's backlog, and frames
 *      that waited too long are dropped (counted as `aqmDrops`), so the queue stays short.
 *   2. The queue is bounded (`maxQueuedBytes`): when it is full, the flow with the largest
 *      backlog loses frames from its head (counted as `queueDrops`); memory never grows.
 *   3. The writer loop, started once per burst (after the synchronous capture drain returns),
 *      writes control messages first, then frames, in batches: one socket write carries many
 *      frames.
 *
 * Receiving frames (inject side):
 *   1. The reader loop reads as much as the socket has into one reusable buffer.
 *   2. Each complete FRAME message is handed to `onFrame` as a view into that buffer and
 *      injected synchronously before the next read, so nothing is copied or allocated.
 *
 * What a link may cost the server is bounded: control links carry no frames (a FRAME is a
 * protocol error there), a peer may have only so many requests in flight, and an end that
 * does not read what we send (replies, pongs) is disconnected once its backlog passes the
 * queue bound, or once one write has been stuck for `stallMs`.
 */
import { codeOf, ErrorCode, isErrorCode, messageOf, VnetError } from "../errors.ts";
import { type Logger } from "../log.ts";
import {
  decodeJson,
  decodeText,
  encodeJson,
  encodeMessage,
  encodePing,
  MAX_FRAME,
  type Message,
  MessageReader,
  MessageType,
  pongRoundTrip,
  ProtocolError,
} from "./wire.ts";
import { SendQueue } from "./send_queue.ts";
import { SocketStream } from "./socket_stream.ts";
import { closeQuietly, type Stream, writeAll } from "./stream.ts";

const DEFAULT_QUEUE_BYTES = 4 * 1024 * 1024;
const REQUEST_TIMEOUT_MS = 15_000;
/** Requests from the other end being served at once; more is a protocol error. */
const MAX_SERVING = 64;
/** A write stuck this long means the other end stopped reading. */
const DEFAULT_STALL_MS = 30_000;

export interface LinkEvents {
  /**
   * A frame for handler `handler`; `frame` is valid only during the call. Absent on links that
   * carry no frames (control links): a FRAME there is a protocol error.
   */
  onFrame?(link: Link, handler: number, frame: Uint8Array): void;
  /** A request from the other end; the resolved value is the response's `result`. */
  onRequest(op: string, body: Record<string, unknown>, link: Link): Promise<unknown>;
  /** The link is gone (called once). */
  onClose(link: Link, reason: string): void;
  /**
   * A frame for `handler` that `sendFrame` had accepted was dropped before it was written: the
   * send queue was full (`full`), or the frame waited too long (`aqm`, the queue's AQM).
   */
  onSendDrop?(link: Link, handler: number, reason: "full" | "aqm"): void;
}

/**
 * Another thread that carries a plain link's socket: the data-path worker (issue 17). It reads
 * and writes the socket from then on, takes the frames and the keepalives (pings, pongs, the
 * round trip, silence), hands every other message back (`Link.receive`), and says when the
 * socket closed (`Link.close`): stuck writes and silence are its to find.
 */
export interface SocketOwner {
  /** Takes `fd` over, with the bytes already read past the handshake. */
  adopt(link: Link, fd: number, buffered: Uint8Array, stallMs: number, keepaliveMs: number): void;
  /** Queues a control message on the link, ahead of its frames. */
  sendControl(link: Link, message: Uint8Array): void;
  /** A direct path's shorter stall limit and keepalive. */
  tune(link: Link, stallMs: number, keepaliveMs: number): void;
  /** Closes the socket, telling the peer `notify` first if given. */
  close(link: Link, notify?: string): void;
}

interface LinkOptions {
  /** The other end, for logs and `list`. */
  remote: string;
  /** This end's IP address, when the link runs over TCP. */
  local?: string;
  tls: boolean;
  log: Logger;
  events: LinkEvents;
  /** Keepalive: a PING every `keepaliveMs`; silence for 3 intervals closes the link. 0 = off. */
  keepaliveMs?: number;
  /** Nothing received for this long closes the link (control links, never owned; 0 = never). */
  idleTimeoutMs?: number;
  /** One write stuck for this long closes the link: the other end does not read. */
  stallMs?: number;
  maxQueuedBytes?: number;
  /** Hands a plain link's socket to the data path (peer links of a server). */
  socketOwner?: SocketOwner;
  /** Which end of the connection this is: the one that dialled, or accepted. */
  role?: "dialer" | "acceptor";
  /** The link goes through `ssh -W`. */
  viaSsh?: boolean;
  /** The handshake's secret of this connection (auth.ts), for keys agreed over it later. */
  secret?: Uint8Array;
}

interface LinkStats {
  framesOut: number;
  bytesOut: number;
  framesIn: number;
  bytesIn: number;
  /** Frames dropped because the send queue was full (the link is slower than the capture). */
  queueDrops: number;
  /** Frames the send queue's AQM dropped because they waited too long (flow_queue.ts). */
  aqmDrops: number;
}

let nextLinkNumber = 1;

export class Link {
  readonly number = nextLinkNumber++;
  readonly remote: string;
  readonly local: string;
  readonly tls: boolean;
  /**
   * Who waits for the link's socket: the data path's poller (a plain link, whose socket is our
   * own: socket_stream.ts) or the runtime (TLS, ssh).
   */
  readonly socket: "data path" | "runtime";
  readonly stats: LinkStats = {
    framesOut: 0,
    bytesOut: 0,
    framesIn: 0,
    bytesIn: 0,
    queueDrops: 0,
    aqmDrops: 0,
  };
  /** Round-trip time of the last keepalive, in ms (a socket owner measures its own). */
  rttMs: number | null = null;
  readonly role: "dialer" | "acceptor";
  /** Through `ssh -W`: only SSH gets through to the peer. */
  readonly viaSsh: boolean;
  /** The handshake's secret of this connection, if it ran one here (auth.ts). */
  readonly secret: Uint8Array | null;

  #conn: Stream;
  #reader: MessageReader;
  #events: LinkEvents;
  #log: Logger;
  #open = true;
  /** Why the link closed: what a request made afterwards is told. */
  #closedBecause: string | null = null;

  /** What waits to be written (send_queue.ts). */
  #queue: SendQueue;

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

  /** Requests from the other end not answered yet. */
  #serving = 0;

  #watchdog: ReturnType<typeof setInterval> | undefined;
  #lastHeard = Date.now();
  #lastPing = 0;
  #keepaliveMs: number;
  #idleTimeoutMs: number;
  #stallMs: number;
  /** The thread that owns the socket, when not this one. */
  #owner: SocketOwner | null = null;

  constructor(conn: Stream, reader: MessageReader, options: LinkOptions) {
    this.remote = options.remote;
    this.local = options.local ?? "";
    this.tls = options.tls;
    this.role = options.role ?? "dialer";
    this.viaSsh = options.viaSsh ?? false;
    this.secret = options.secret ?? null;
    this.#events = options.events;
    this.#log = options.log.with({ link: this.number, remote: options.remote });
    const owner = conn instanceof SocketStream ? options.socketOwner ?? null : null;
    this.socket = owner ? "data path" : "runtime";
    this.#conn = conn;
    this.#reader = reader;
    this.#queue = new SendQueue(this.#conn, {
      maxBytes: options.maxQueuedBytes ?? DEFAULT_QUEUE_BYTES,
      onDrop: (handler, reason) => {
        if (reason === "aqm") this.stats.aqmDrops++;
        else this.stats.queueDrops++;
        this.#events.onSendDrop?.(this, handler, reason);
      },
      onWriteError: (e) => this.close(`write failed: ${messageOf(e)}`),
    });
    this.#keepaliveMs = options.keepaliveMs ?? 0;
    this.#idleTimeoutMs = options.idleTimeoutMs ?? 0;
    this.#stallMs = options.stallMs ?? DEFAULT_STALL_MS;
    if (owner) {
      // The owner keeps the link alive and watches it: no timer here.
      this.#owner = owner;
      const buffered = reader.takeBuffered();
      owner.adopt(this, (conn as SocketStream).fd, buffered, this.#stallMs, this.#keepaliveMs);
      return;
    }
    this.#readLoop();
    // One timer per link checks silence, idleness and stuck writes, and sends keepalives.
    const tick = Math.min(this.#keepaliveMs || 5_000, 5_000, this.#stallMs);
    this.#watchdog = setInterval(() => this.#watch(), tick);
  }

  get isOpen(): boolean {
    return this.#open;
  }

  /** Changes the keepalive and the stuck-write limit (a link found to be a direct path). */
  tune(options: { keepaliveMs: number; stallMs: number }): void {
    if (!this.#open) return;
    this.#keepaliveMs = options.keepaliveMs;
    this.#stallMs = options.stallMs;
    if (this.#owner) return this.#owner.tune(this, options.stallMs, options.keepaliveMs);
    clearInterval(this.#watchdog);
    this.#watchdog = setInterval(() => this.#watch(), Math.min(options.keepaliveMs, 5_000));
  }

  /**
   * Queues one frame for `handler`. Returns false (and counts it) if it had to be dropped now;
   * a frame dropped later, from the queue, is told to `onSendDrop`.
   */
  sendFrame(handler: number, frame: Uint8Array): boolean {
    // A socket another thread owns carries that thread's frames only.
    if (
      !this.#open || this.#owner || frame.length > MAX_FRAME ||
      !this.#queue.pushFrame(handler, frame)
    ) {
      this.stats.queueDrops++;
      return false;
    }
    this.stats.framesOut++;
    this.stats.bytesOut += frame.length;
    return true;
  }

  /** Sends a request and waits for its response's result (rejects with the peer's error). */
  request(
    op: string,
    body: Record<string, unknown> = {},
    timeoutMs = REQUEST_TIMEOUT_MS,
  ): Promise<Record<string, unknown>> {
    if (!this.#open) {
      return Promise.reject(
        new VnetError(
          this.#closedBecause === null
            ? `link to ${this.remote} is down`
            : `link to ${this.remote} closed: ${this.#closedBecause}`,
          { code: ErrorCode.Unreachable },
        ),
      );
    }
    const id = this.#nextRequest++;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.#pending.delete(id);
        reject(
          new VnetError(`${this.remote} did not answer '${op}' within ${timeoutMs} ms`, {
            code: ErrorCode.Timeout,
          }),
        );
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
    this.#closedBecause = reason;
    this.#queue.stop();
    clearInterval(this.#watchdog);
    for (const [, p] of this.#pending) {
      clearTimeout(p.timer);
      p.reject(
        new VnetError(`link to ${this.remote} closed: ${reason}`, { code: ErrorCode.Unreachable }),
      );
    }
    this.#pending.clear();
    const finish = () => closeQuietly(this.#conn);
    if (this.#owner) {
      this.#owner.close(this, notifyPeer);
    } else if (notifyPeer) {
      // Best effort, bounded: tell the peer why before hanging up.
      const bytes = encodeMessage(MessageType.Error, new TextEncoder().encode(notifyPeer));
      Promise.race([writeAll(this.#conn, bytes), new Promise((r) => setTimeout(r, 500))])
        .catch(() => {}).finally(finish);
    } else {
      finish();
    }
    this.#log.debug("link closed", { reason });
    this.#events.onClose(this, reason);
  }

  /**
   * Control messages are never dropped: they may pass the frame queue bound, by a little
   * (send_queue.ts). An end that lets more pile up does not read: it is cut off.
   */
  #sendControl(message: Uint8Array): void {
    if (!this.#open) return;
    if (this.#owner) return this.#owner.sendControl(this, message);
    if (!this.#queue.pushControl(message)) {
      this.close(`the other end does not read (${this.#queue.queuedBytes} bytes queued)`);
    }
  }

  // --- receive side ----------------------------------------------------------------------

  /** A message from the peer that the socket's owner (another thread) hands over. */
  receive(type: number, payload: Uint8Array): void {
    if (!this.#open) return;
    try {
      this.#dispatch({ type, payload });
    } catch (e) {
      const reason = messageOf(e);
      if (e instanceof ProtocolError) {
        this.#log.warn("protocol error, disconnecting", { reason });
        this.close(`protocol error: ${reason}`, `protocol error: ${reason}`);
      } else this.close(`read failed: ${reason}`);
    }
  }

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
        const onFrame = this.#events.onFrame;
        if (!onFrame) throw new ProtocolError("frames are not allowed on this connection");
        if (p.length < 4 || p.length > MAX_FRAME + 4) {
          throw new ProtocolError(`frame message of ${p.length} bytes`);
        }
        const handler = ((p[0] << 24) | (p[1] << 16) | (p[2] << 8) | p[3]) >>> 0;
        this.stats.framesIn++;
        this.stats.bytesIn += p.length - 4;
        onFrame(this, handler, p.subarray(4));
        return;
      }
      case MessageType.Request:
        return this.#serveRequest(decodeJson(p));
      case MessageType.Response:
        return this.#settle(decodeJson(p));
      case MessageType.Ping:
        return this.#sendControl(encodeMessage(MessageType.Pong, p.slice()));
      case MessageType.Pong:
        this.rttMs = pongRoundTrip(p, performance.now()) ?? this.rttMs;
        return;
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
    if (this.#serving >= MAX_SERVING) {
      throw new ProtocolError(`more than ${MAX_SERVING} requests in flight`);
    }
    this.#serving++;
    // A handler that throws synchronously is a rejected request, not a broken link.
    Promise.resolve().then(() => this.#events.onRequest(op, body, this)).then(
      (result) =>
        this.#sendControl(encodeJson(MessageType.Response, { req: id, ok: true, result })),
      (e) => {
        if (!(e instanceof VnetError)) this.#log.error("request failed", { op, error: String(e) });
        const code = codeOf(e) ?? ErrorCode.System;
        this.#sendControl(
          encodeJson(MessageType.Response, { req: id, ok: false, error: messageOf(e), code }),
        );
      },
    ).finally(() => this.#serving--);
  }

  #settle(body: Record<string, unknown>): void {
    const pending = this.#pending.get(body.req as number);
    if (!pending) return; // timed out already
    this.#pending.delete(body.req as number);
    clearTimeout(pending.timer);
    if (body.ok) pending.resolve(body.result);
    else {
      // The other end's error keeps its code, so callers can tell "refused" from "not found".
      const code = isErrorCode(body.code) ? body.code : ErrorCode.Invalid;
      pending.reject(new VnetError(String(body.error ?? "request failed"), { code }));
    }
  }

  #watch(): void {
    const now = Date.now();
    const writing = this.#queue.writeStarted;
    if (writing && now - writing > this.#stallMs) {
      this.close(`the other end does not read (a write stuck for ${now - writing} ms)`);
    } else if (this.#keepaliveMs > 0 && now - this.#lastHeard > 3 * this.#keepaliveMs) {
      this.close(`no data from the other end for ${3 * this.#keepaliveMs} ms (keepalive)`);
    } else if (this.#idleTimeoutMs > 0 && now - this.#lastHeard > this.#idleTimeoutMs) {
      this.close(`idle for ${this.#idleTimeoutMs} ms`);
    } else if (this.#keepaliveMs > 0 && now - this.#lastPing >= this.#keepaliveMs - 50) {
      this.#lastPing = now;
      this.#sendControl(encodePing(performance.now()));
    }
  }
}
