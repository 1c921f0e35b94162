/**
 * The main thread's side of the data-path worker (forwarder_worker.ts): it starts the worker
 * and carries commands, replies, events and frames between it and the control plane
 * (data_path.ts), without a `postMessage` per frame (issue 17).
 *
 *   commands  main → worker: a ring of JSON records, and the doorbell (a pipe the worker polls)
 *   replies, events  worker → main: messages (rare: a command's answer, a MAC learned)
 *   frames    main → worker: a frame ring and the doorbell (frames of TLS and ssh links)
 *             worker → main: a frame ring and `Atomics.notify` (frames for those links)
 *   counters  a shared table the worker writes and the main thread reads (counters.ts)
 *
 * A worker that fails is said once, with its reason, to `onFailure`; the server then stops
 * with a non-zero exit (src/cli/server.ts): it cannot forward without it.
 */
import { WakePipe } from "../../ffi/libc.ts";
import { FrameRing } from "../io/frame_ring.ts";
import { type Level, logOptions } from "../log.ts";
import { ErrorCode, isErrorCode, VnetError } from "../errors.ts";
import { counterTable } from "./counters.ts";
import { type ForwarderHooks, type ForwarderPort } from "./data_path.ts";
import { type Command, type ForwarderEvent } from "./forwarder_protocol.ts";
import { type InjectorKind } from "./interfaces.ts";

/** Commands waiting for the worker; a JSON record each. */
const COMMAND_RING_BYTES = 1 << 20;
/**
 * Frames waiting to cross, each way: 8 MiB holds ~30 ms of a 2 Gbit/s TLS link's frames, more
 * than a link's own send queue lets wait (flow_queue.ts): a full ring is a dropped frame,
 * counted as the link's.
 */
const FRAME_RING_BYTES = 8 << 20;

interface InterfaceOptions {
  injector: InjectorKind;
  captureBufferBytes?: number;
}

/** What the worker is started with (its first and only message). */
export interface WorkerInit {
  interfaces: InterfaceOptions;
  log: { level: Level; json: boolean };
  counters: SharedArrayBuffer;
  commands: SharedArrayBuffer;
  toWorker: SharedArrayBuffer;
  toMain: SharedArrayBuffer;
  /** The read end of the doorbell pipe. */
  doorbell: number;
}

export class WorkerForwarder implements ForwarderPort {
  readonly counters = counterTable();
  readonly adoptsSockets = true;
  /** Resolves once the worker runs; rejects with why it could not start. */
  readonly ready: Promise<void>;
  readonly #worker: Worker;
  readonly #commands = new FrameRing(COMMAND_RING_BYTES);
  readonly #toWorker = new FrameRing(FRAME_RING_BYTES);
  readonly #toMain = new FrameRing(FRAME_RING_BYTES);
  readonly #doorbell = new WakePipe();
  readonly #pending = new Map<number, PromiseWithResolvers<unknown>>();
  readonly #encoder = new TextEncoder();
  readonly #hooks: ForwarderHooks;
  readonly #onFailure: (reason: string) => void;
  #nextId = 1;
  #failed: string | null = null;
  #stopped = false;

  constructor(
    interfaces: InterfaceOptions,
    hooks: ForwarderHooks,
    onFailure: (reason: string) => void,
  ) {
    this.#hooks = hooks;
    this.#onFailure = onFailure;
    const { promise: ready, resolve, reject } = Promise.withResolvers<void>();
    this.ready = ready;
    this.#worker = new Worker(new URL("./forwarder_worker.ts", import.meta.url).href, {
      type: "module",
      name: "vnet data path",
    });
    this.#worker.onmessage = (e: MessageEvent<ForwarderEvent | WorkerNotice>) => {
      const message = e.data;
      if (message.event === "ready") return resolve();
      if (message.event === "failed") {
        reject(new VnetError(`the data path could not start: ${message.error}`));
        return this.#fail(message.error);
      }
      if (message.event === "reply") return this.#settle(message);
      hooks.event(message);
    };
    this.#worker.onerror = (e: ErrorEvent) => {
      e.preventDefault();
      reject(new VnetError(`the data path could not start: ${e.message}`));
      this.#fail(e.message);
    };
    this.#worker.postMessage(
      {
        interfaces,
        log: logOptions(),
        counters: this.counters.buffer as SharedArrayBuffer,
        commands: this.#commands.buffer,
        toWorker: this.#toWorker.buffer,
        toMain: this.#toMain.buffer,
        doorbell: this.#doorbell.readFd,
      } satisfies WorkerInit,
    );
    this.#carryOut();
  }

  call(command: Command): Promise<unknown> {
    if (this.#failed !== null) {
      return Promise.reject(new VnetError(`the data path failed: ${this.#failed}`));
    }
    const id = this.#nextId++;
    const queued = this.#commands.push(id, 0, this.#encoder.encode(JSON.stringify(command)));
    if (queued === "full") {
      return Promise.reject(new VnetError("the data path is not taking commands (ring full)"));
    }
    const pending = Promise.withResolvers<unknown>();
    this.#pending.set(id, pending);
    if (queued === "wake") this.#doorbell.wake();
    return pending.promise;
  }

  frameIn(link: number, handler: number, frame: Uint8Array): boolean {
    const queued = this.#toWorker.push(link, handler, frame);
    if (queued === "wake") this.#doorbell.wake();
    return queued !== "full";
  }

  async stop(): Promise<void> {
    if (this.#stopped) return;
    this.#stopped = true;
    this.#toMain.signal();
    // The worker closes itself after the stop command; this ends it if it did not.
    this.#worker.terminate();
    await Promise.resolve();
  }

  /** Hands the worker's frames for main-thread links to their links, as they come. */
  async #carryOut(): Promise<void> {
    const ring = this.#toMain;
    const hooks = this.#hooks;
    const deliver = (link: number, handler: number, frame: Uint8Array) => {
      if (!hooks.frameOut(link, handler, frame)) hooks.frameDropped(handler);
    };
    while (!this.#stopped) {
      const seen = ring.signalSeen();
      ring.drain(deliver);
      await ring.waitSignal(seen);
    }
  }

  #settle(reply: Extract<ForwarderEvent, { event: "reply" }>): void {
    const pending = this.#pending.get(reply.id);
    if (!pending) return;
    this.#pending.delete(reply.id);
    if (reply.ok) pending.resolve(reply.value);
    else {
      const code = isErrorCode(reply.code) ? reply.code : ErrorCode.System;
      pending.reject(new VnetError(reply.error, { code }));
    }
  }

  #fail(reason: string): void {
    if (this.#failed !== null) return;
    this.#failed = reason;
    for (const pending of this.#pending.values()) {
      pending.reject(new VnetError(`the data path failed: ${reason}`));
    }
    this.#pending.clear();
    this.#onFailure(reason);
  }
}

/** What the worker says of itself, beside the forwarder's events. */
type WorkerNotice = { event: "ready" } | { event: "failed"; error: string };
