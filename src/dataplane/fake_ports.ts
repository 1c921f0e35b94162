/**
 * Test doubles for the ports (ports.ts), beside them as wireguard-go keeps `tun/tuntest`
 * beside `tun`: a handler or a whole Server runs on these without root, libpcap or an interface.
 * Not used by production code.
 */
import { ErrorCode, VnetError } from "../errors.ts";
import type {
  Capture,
  CaptureSpec,
  CaptureStats,
  FrameSink,
  Injector,
  Interfaces,
} from "./ports.ts";

/**
 * A capture that hands over the frames it is given: those passed to the constructor once
 * started (on the next macrotask, as a real capture would), and each `push` afterwards.
 */
export class FakeCapture implements Capture {
  #onFrame: FrameSink | null = null;
  #onError: ((error: Error) => void) | null = null;
  #onConflict: FrameSink | null = null;
  #closed = false;

  /** `frames` is the queue still to be handed over: a test can wait for it to empty. */
  constructor(readonly device: string, readonly frames: Uint8Array[] = []) {}

  get closed(): boolean {
    return this.#closed;
  }

  start(onFrame: FrameSink, onError: (error: Error) => void, onConflict?: FrameSink): void {
    this.#onFrame = onFrame;
    this.#onError = onError;
    this.#onConflict = onConflict ?? null;
    setTimeout(() => this.#flush(), 0);
  }

  /** Queues one frame; handed over at once if the capture has started. */
  push(frame: Uint8Array, wireLength = frame.length): void {
    if (this.#closed) return;
    if (this.#onFrame && this.frames.length === 0) this.#onFrame(frame, wireLength);
    else this.frames.push(frame);
  }

  /**
   * Hands over `frame` as a real capture hands a Proxy a frame from one of its MACs; false if
   * the capture has not started or its owner takes no conflicts.
   */
  conflict(frame: Uint8Array): boolean {
    if (this.#closed || !this.#onConflict) return false;
    this.#onConflict(frame, frame.length);
    return true;
  }

  /** Fails as a capture whose interface disappeared: `onError` once, then nothing more. */
  fail(error: Error): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#onError?.(error);
  }

  stats(): CaptureStats {
    return { received: 0, dropped: 0, ifDropped: 0 };
  }

  close(): void {
    this.#closed = true;
  }

  #flush(): void {
    while (!this.#closed && this.#onFrame && this.frames.length) {
      const f = this.frames.shift()!;
      this.#onFrame(f, f.length);
    }
  }
}

/** An injector that keeps a copy of every frame it is asked to write. */
export class FakeInjector implements Injector {
  readonly injected: Uint8Array[] = [];
  closed = false;
  /** Set to false to make `inject` fail as a system refusal would. */
  accept = true;

  constructor(readonly device: string, readonly mtu = 1500) {}

  inject(frame: Uint8Array): boolean {
    if (this.closed || !this.accept) return false;
    this.injected.push(frame.slice());
    return true;
  }

  lastError(): string {
    return this.accept ? "" : "refused by the fake injector";
  }

  close(): void {
    this.closed = true;
  }
}

/** `Interfaces` over fakes, with every capture and injector it opened, for assertions. */
interface FakeInterfaces extends Interfaces {
  readonly captures: { capture: FakeCapture; spec: CaptureSpec }[];
  readonly injectors: FakeInjector[];
}

/**
 * Fake interfaces named `devices`; opening any other name throws the VnetError a missing
 * interface gives.
 */
export function fakeInterfaces(devices: readonly string[] = ["fake0", "fake1"]): FakeInterfaces {
  const captures: { capture: FakeCapture; spec: CaptureSpec }[] = [];
  const injectors: FakeInjector[] = [];
  const check = (device: string) => {
    if (!devices.includes(device)) {
      throw new VnetError(`no such network interface '${device}'`, { code: ErrorCode.NotFound });
    }
  };
  return {
    captures,
    injectors,
    openCapture(device: string, spec: CaptureSpec) {
      check(device);
      const capture = new FakeCapture(device);
      captures.push({ capture, spec });
      return capture;
    },
    openInjector(device: string) {
      check(device);
      const injector = new FakeInjector(device);
      injectors.push(injector);
      return injector;
    },
  };
}
