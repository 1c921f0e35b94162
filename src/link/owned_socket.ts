/**
 * A plain link's socket as the data path owns it (issue 17): after the handshake on the main
 * thread, the fd goes to the data-path worker, which reads and writes it on the thread that
 * woke for it, in the same poll as the captures. One wake-up per hop, whether a frame leaves or
 * arrives, and no promise on the way: the poller calls `#onReadable` and `#flush` itself.
 *
 * Frames are the worker's own business: a FRAME message goes straight to the forwarder, and
 * frames for the peer queue here, in the link's fair queue (send_queue.ts). So are keepalives:
 * this thread pings the peer, answers its pings, measures the round trip and closes a silent
 * link, so an idle link's keepalives never wake the main thread (issue 17's idle target: each
 * one crossing cost both threads a wake-up). Everything else on the link (requests, responses,
 * errors) is the control plane's: messages from the peer are handed to the main thread as they
 * are, and the main thread's messages are queued here ahead of frames. The main thread's Link
 * keeps the rest of the link's state: requests, closing.
 */
import { messageOf } from "../errors.ts";
import { SendQueue } from "./send_queue.ts";
import { SocketStream } from "./socket_stream.ts";
import { poller } from "../io/poller.ts";
import { withTimeout, writeAll } from "./stream.ts";
import {
  encodeMessage,
  encodePing,
  MAX_FRAME,
  MAX_MESSAGE,
  MessageReader,
  MessageType,
  pongRoundTrip,
  ProtocolError,
} from "./wire.ts";

const DEFAULT_QUEUE_BYTES = 4 * 1024 * 1024;
/**
 * Reads one readiness takes at most (each up to the reader's 256 KB buffer): the poll is
 * level-triggered, so what is left wakes it again, after the other fds had their turn.
 */
const READS_PER_WAKE = 8;
/** A ping is due this much early: the worker's tick that sends it may come a hair early. */
const PING_SLACK_MS = 50;
/**
 * A peer heard from needs no ping: only a quiet one does. But this end pings at least once in
 * this many intervals all the same, for the round trip it shows (`list`, the metrics).
 */
const RTT_EVERY = 6;

export interface OwnedSocketEvents {
  /** A FRAME for `handler`; `frame` is lent for the call. */
  frame(handler: number, frame: Uint8Array): void;
  /** A frame of `handler`'s was queued for the peer. */
  queued(handler: number): void;
  /** Any other message, for the main thread's Link. */
  message(type: number, payload: Uint8Array): void;
  /** The socket is closed (once), and why. */
  closed(reason: string): void;
  /** A queued frame for `handler` was dropped: the queue was full, or its AQM dropped it. */
  sendDropped(handler: number, reason: "full" | "aqm"): void;
}

export class OwnedSocket {
  isOpen = true;
  readonly #stream: SocketStream;
  readonly #reader: MessageReader;
  readonly #queue: SendQueue;
  #stallMs: number;
  /** What is left of the chunk being written (a view of the queue's batch), or null. */
  #pending: Uint8Array | null = null;
  /** A flush is deferred to the end of this round, or waits for the socket to be writable. */
  #flushScheduled = false;
  #waitingWritable = false;
  /** When the write in progress started (0: none), to tell a stuck peer. */
  #writeStarted = 0;
  /** Keepalive: a PING every `#keepaliveMs`; silence for 3 intervals closes the link. 0 = off. */
  #keepaliveMs: number;
  /** When the peer was last heard, and pinged (on `clock`). */
  #lastHeard: number;
  #lastPing: number;
  /** Round-trip time of the last keepalive, in ms. */
  rttMs: number | null = null;

  constructor(
    readonly number: number,
    readonly remote: string,
    fd: number,
    buffered: Uint8Array,
    stallMs: number,
    keepaliveMs: number,
    private readonly events: OwnedSocketEvents,
    /** The keepalives' clock: performance.now(), as the worker's tick passes to `keepalive`. */
    private readonly clock: () => number = () => performance.now(),
  ) {
    this.#keepaliveMs = keepaliveMs;
    this.#lastHeard = this.#lastPing = clock();
    this.#stream = new SocketStream(fd);
    this.#reader = new MessageReader(this.#stream, MAX_MESSAGE, 256 * 1024);
    this.#reader.preload(buffered);
    this.#stallMs = stallMs;
    this.#queue = new SendQueue(null, {
      maxBytes: DEFAULT_QUEUE_BYTES,
      onDrop: (handler, reason) => events.sendDropped(handler, reason),
      onWriteError: (e) => this.close(`write failed: ${messageOf(e)}`),
      onPending: () => this.#scheduleFlush(),
    });
    poller.onReadable(fd, this.#onReadable);
    // What came with the handshake is handed out once the forwarder has registered this link.
    if (buffered.length > 0) poller.defer(() => this.#dispatch());
  }

  /**
   * A second path for some handlers' frames (the UDP transport): it sends the frame (true or
   * false), or answers null and the frame goes by this socket.
   */
  bypass: ((handler: number, frame: Uint8Array) => boolean | null) | null = null;

  /** Queues one frame for `handler` (FrameLink); false if it had to be dropped. */
  sendFrame(handler: number, frame: Uint8Array): boolean {
    const bypassed = this.bypass?.(handler, frame);
    if (bypassed !== undefined && bypassed !== null) return this.isOpen && bypassed;
    if (!this.isOpen || frame.length > MAX_FRAME || !this.#queue.pushFrame(handler, frame)) {
      return false;
    }
    this.events.queued(handler);
    return true;
  }

  /** Queues a message of the main thread's; a peer that lets too much pile up is cut off. */
  sendControl(message: Uint8Array): void {
    if (!this.isOpen) return;
    if (!this.#queue.pushControl(message)) {
      this.close(`the other end does not read (${this.#queue.queuedBytes} bytes queued)`);
    }
  }

  /**
   * A direct path's stall limit and keepalive (control/direct.ts): the main thread tunes, this
   * thread checks.
   */
  tune(stallMs: number, keepaliveMs: number): void {
    this.#stallMs = stallMs;
    this.#keepaliveMs = keepaliveMs;
  }

  /**
   * Sends a PING if one is due, or closes the link if the peer was silent for 3 keepalive
   * intervals. Returns the ms until it wants to be called again (Infinity: keepalive off).
   *
   * A ping is due once the peer has been quiet for an interval, not every interval: a peer that
   * pings us, or sends anything, is alive, and the pongs we answer it with tell it we are. So two
   * ends of this VNET share one round trip an interval rather than make one each (and wake each
   * other half as often), and a peer that pings on its own schedule (an older VNET, or a link
   * the runtime carries) is answered as before.
   */
  keepalive(now: number): number {
    const every = this.#keepaliveMs;
    if (every <= 0 || !this.isOpen) return Infinity;
    const silence = now - this.#lastHeard;
    if (silence > 3 * every) {
      this.close(`no data from the other end for ${3 * every} ms (keepalive)`);
      return Infinity;
    }
    if (now >= this.#pingAt() - PING_SLACK_MS) {
      this.#lastPing = now;
      this.sendControl(encodePing(now));
    }
    // The next ping, or the end of the silence the link may keep: either may come a quarter
    // interval late, so that the worker's regular tick sends the pings of many links at once
    // rather than waking for each (always > 0 here).
    const next = Math.min(this.#pingAt(), this.#lastHeard + 3 * every);
    return Math.max(next, now) + every / 4 - now;
  }

  /** When the next ping is due: an interval after the last, and the peer quiet for as long. */
  #pingAt(): number {
    const every = this.#keepaliveMs;
    const rttEvery = this.rttMs === null ? every : RTT_EVERY * every;
    const wanted = Math.min(this.#lastHeard + every, this.#lastPing + rttEvery);
    return Math.max(this.#lastPing + every, wanted);
  }

  /** Closes the link if one write has been stuck too long: the other end does not read. */
  checkStall(now: number): void {
    const writing = this.#writeStarted;
    if (writing && now - writing > this.#stallMs) {
      this.close(`the other end does not read (a write stuck for ${now - writing} ms)`);
    }
  }

  /** Closes the socket, telling the peer why first when `notify` is given (bounded: 500 ms). */
  close(reason: string, notify?: string): void {
    if (!this.isOpen) return;
    this.isOpen = false;
    this.#queue.stop();
    poller.cancel(this.#stream.fd);
    const finish = () => this.#stream.close();
    if (notify) {
      // After the rest of a message half written, or the peer would read garbage.
      const error = encodeMessage(MessageType.Error, new TextEncoder().encode(notify));
      const rest = this.#pending ?? new Uint8Array(0);
      const bytes = new Uint8Array(rest.length + error.length);
      bytes.set(rest);
      bytes.set(error, rest.length);
      withTimeout(writeAll(this.#stream, bytes), 500, () => "")
        .catch(() => {}).finally(finish);
    } else finish();
    this.events.closed(reason);
  }

  #scheduleFlush(): void {
    if (this.#flushScheduled || this.#waitingWritable || !this.isOpen) return;
    this.#flushScheduled = true;
    poller.defer(this.#flush);
  }

  /** Writes what waits until it is all written or the kernel's buffer is full. */
  #flush = (): void => {
    this.#flushScheduled = false;
    if (this.#waitingWritable) {
      this.#waitingWritable = false;
      poller.onWritable(this.#stream.fd, null);
    }
    try {
      while (this.isOpen) {
        let chunk = this.#pending;
        if (!chunk) {
          chunk = this.#queue.next();
          if (!chunk) break;
          this.#writeStarted = Date.now();
        }
        const n = this.#stream.tryWrite(chunk);
        if (n < chunk.length) {
          this.#pending = chunk.subarray(n);
          this.#waitingWritable = true;
          poller.onWritable(this.#stream.fd, this.#flush);
          return;
        }
        this.#pending = null;
        this.#writeStarted = 0;
      }
    } catch (e) {
      this.close(`write failed: ${messageOf(e)}`);
    }
  };

  #onReadable = (): void => {
    try {
      for (let i = 0; i < READS_PER_WAKE && this.isOpen; i++) {
        const n = this.#reader.readWith((p) => this.#stream.tryRead(p));
        if (n === null) {
          this.close("the other end closed the connection");
          return;
        }
        if (n === 0) return;
        this.#lastHeard = this.clock();
        this.#dispatch();
      }
    } catch (e) {
      this.#failed(e);
    }
  };

  /** Hands out every complete message buffered. */
  #dispatch(): void {
    try {
      for (let m = this.#reader.next(); m !== null && this.isOpen; m = this.#reader.next()) {
        const p = m.payload;
        if (m.type === MessageType.Ping) {
          this.sendControl(encodeMessage(MessageType.Pong, p.slice()));
          continue;
        }
        if (m.type === MessageType.Pong) {
          // Our own ping's time, on this thread's clock.
          this.rttMs = pongRoundTrip(p, this.clock()) ?? this.rttMs;
          continue;
        }
        if (m.type !== MessageType.Frame) {
          this.events.message(m.type, p.slice());
          continue;
        }
        if (p.length < 4 || p.length > MAX_FRAME + 4) {
          throw new ProtocolError(`frame message of ${p.length} bytes`);
        }
        const handler = ((p[0] << 24) | (p[1] << 16) | (p[2] << 8) | p[3]) >>> 0;
        this.events.frame(handler, p.subarray(4));
      }
    } catch (e) {
      this.#failed(e);
    }
  }

  #failed(e: unknown): void {
    if (!this.isOpen) return;
    const reason = messageOf(e);
    if (e instanceof ProtocolError) {
      this.close(`protocol error: ${reason}`, `protocol error: ${reason}`);
    } else {
      this.close(`read failed: ${reason}`);
    }
  }
}
