/**
 * The two interface handles of one handler end, capture and injector, through their life: an
 * interface can vanish (a VM's tap goes with the VM) and come back. While it is gone the end
 * is degraded: both handles are released, and opening them is tried again every second.
 */
import { messageOf } from "../errors.ts";
import { poller, type Timer } from "../io/poller.ts";
import { type Logger } from "../log.ts";
import {
  type Capture,
  type CaptureSpec,
  type FrameSink,
  type Injector,
  type Interfaces,
} from "./ports.ts";

const RETRY_MS = 1000;

export class DevicePorts {
  capture: Capture | null = null;
  injector: Injector | null = null;
  /** Why the handles are closed while the end is open (the device is gone); null when open. */
  degraded: string | null = null;
  #capturing = false;
  #closed = false;
  #retry: Timer | undefined;
  #sinks: { onFrame: FrameSink; onConflict: FrameSink } | null = null;

  constructor(
    private readonly ports: Interfaces,
    private readonly device: string,
    private readonly spec: CaptureSpec,
    private readonly log: Logger,
    /** Called with each newly opened injector (the handler binds its GSO path to it). */
    private readonly onInjector: (injector: Injector) => void,
  ) {}

  /**
   * Opens both handles. Throws a VnetError if the device is bad, unless `tolerant` (restoring
   * saved handlers): then the end starts degraded and retries.
   */
  open(tolerant: boolean): void {
    try {
      this.#open();
    } catch (e) {
      if (!tolerant) throw e;
      this.#degrade(messageOf(e));
    }
  }

  /** Hands every captured frame to `onFrame` from now on (and after the device comes back). */
  startCapture(onFrame: FrameSink, onConflict: FrameSink): void {
    this.#sinks = { onFrame, onConflict };
    if (!this.capture || this.#capturing) return;
    this.#capturing = true;
    this.capture.start(onFrame, (e) => {
      if (!this.#closed) this.#degrade(messageOf(e));
    }, onConflict);
  }

  stats(): { received: number; dropped: number; ifDropped: number } {
    return this.capture?.stats() ?? { received: 0, dropped: 0, ifDropped: 0 };
  }

  close(): void {
    this.#closed = true;
    this.#retry?.cancel();
    this.#release();
  }

  #open(): void {
    const capture = this.ports.openCapture(this.device, this.spec);
    try {
      this.injector = this.ports.openInjector(this.device);
    } catch (e) {
      capture.close();
      throw e;
    }
    this.onInjector(this.injector);
    this.capture = capture;
  }

  #release(): void {
    this.#capturing = false;
    this.capture?.close();
    this.injector?.close();
    this.capture = null;
    this.injector = null;
  }

  /** The interface is gone: release it, say so once, and try again every second. */
  #degrade(reason: string): void {
    this.#release();
    if (this.degraded === null) this.log.warn("handler degraded", { reason });
    this.degraded = reason;
    this.#retry?.cancel();
    // The loop's timer, not setTimeout: on the data-path worker nothing runs the runtime's.
    this.#retry = poller.at(performance.now() + RETRY_MS, () => {
      if (this.#closed) return;
      try {
        this.#open();
      } catch (e) {
        return this.#degrade(messageOf(e));
      }
      this.degraded = null;
      this.log.info("handler resumed: interface is back");
      if (this.#sinks) this.startCapture(this.#sinks.onFrame, this.#sinks.onConflict);
    });
  }
}
