/**
 * A plain link's socket as the data path owns it (issue 17): after the handshake on the main
 * thread, the fd goes to the data-path worker, which reads and writes it on the thread that
 * woke for it, in the same poll as the captures. One wake-up per hop, whether a frame leaves or
 * arrives.
 *
 * Frames are the worker's own business: a FRAME message goes straight to the forwarder, and
 * frames for the peer queue here, in the link's fair queue (send_queue.ts). Everything else on
 * the link (requests, responses, keepalives, errors) is the control plane's: messages from the
 * peer are handed to the main thread as they are, and the main thread's messages are queued
 * here ahead of frames. The main thread's Link keeps the link's state: keepalive, requests,
 * closing.
 */
import { messageOf } from "../errors.ts";
import { SendQueue } from "./send_queue.ts";
import { SocketStream } from "./socket_stream.ts";
import { withTimeout, writeAll } from "./stream.ts";
import {
  encodeMessage,
  MAX_FRAME,
  MAX_MESSAGE,
  MessageReader,
  MessageType,
  ProtocolError,
} from "./wire.ts";

const DEFAULT_QUEUE_BYTES = 4 * 1024 * 1024;

export interface OwnedSocketEvents {
  /** A FRAME for `handler`; `frame` is lent for the call. */
  frame(handler: number, frame: Uint8Array): void;
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

  constructor(
    readonly number: number,
    readonly remote: string,
    fd: number,
    buffered: Uint8Array,
    stallMs: number,
    private readonly events: OwnedSocketEvents,
  ) {
    this.#stream = new SocketStream(fd);
    this.#reader = new MessageReader(this.#stream, MAX_MESSAGE, 256 * 1024);
    this.#reader.preload(buffered);
    this.#stallMs = stallMs;
    this.#queue = new SendQueue(this.#stream, {
      maxBytes: DEFAULT_QUEUE_BYTES,
      onDrop: (handler, reason) => events.sendDropped(handler, reason),
      onWriteError: (e) => this.close(`write failed: ${messageOf(e)}`),
    });
    this.#readLoop();
  }

  /** Queues one frame for `handler` (FrameLink); false if it had to be dropped. */
  sendFrame(handler: number, frame: Uint8Array): boolean {
    return this.isOpen && frame.length <= MAX_FRAME && this.#queue.pushFrame(handler, frame);
  }

  /** Queues a message of the main thread's; a peer that lets too much pile up is cut off. */
  sendControl(message: Uint8Array): void {
    if (!this.isOpen) return;
    if (!this.#queue.pushControl(message)) {
      this.close(`the other end does not read (${this.#queue.queuedBytes} bytes queued)`);
    }
  }

  /** A direct path's stall limit (control/direct.ts): the main thread tunes, this thread checks. */
  tune(stallMs: number): void {
    this.#stallMs = stallMs;
  }

  /** Closes the link if one write has been stuck too long: the other end does not read. */
  checkStall(now: number): void {
    const writing = this.#queue.writeStarted;
    if (writing && now - writing > this.#stallMs) {
      this.close(`the other end does not read (a write stuck for ${now - writing} ms)`);
    }
  }

  /** Closes the socket, telling the peer why first when `notify` is given (bounded: 500 ms). */
  close(reason: string, notify?: string): void {
    if (!this.isOpen) return;
    this.isOpen = false;
    this.#queue.stop();
    const finish = () => this.#stream.close();
    if (notify) {
      const bytes = encodeMessage(MessageType.Error, new TextEncoder().encode(notify));
      withTimeout(writeAll(this.#stream, bytes), 500, () => "")
        .catch(() => {}).finally(finish);
    } else finish();
    this.events.closed(reason);
  }

  async #readLoop(): Promise<void> {
    try {
      for (;;) {
        for (let m = this.#reader.next(); m !== null; m = this.#reader.next()) {
          const p = m.payload;
          if (m.type !== MessageType.Frame) {
            this.events.message(m.type, p.slice());
            continue;
          }
          if (p.length < 4 || p.length > MAX_FRAME + 4) {
            throw new ProtocolError(`frame message of ${p.length} bytes`);
          }
          const handler = ((p[0] << 24) | (p[1] << 16) | (p[2] << 8) | p[3]) >>> 0;
          this.events.frame(handler, p.subarray(4));
          if (!this.isOpen) return;
        }
        if (!this.isOpen) return;
        if (!await this.#reader.read()) {
          this.close("the other end closed the connection");
          return;
        }
      }
    } catch (e) {
      if (!this.isOpen) return;
      const reason = messageOf(e);
      if (e instanceof ProtocolError) {
        this.close(`protocol error: ${reason}`, `protocol error: ${reason}`);
      } else {
        this.close(`read failed: ${reason}`);
      }
    }
  }
}
