/**
 * One libpcap capture per network interface, shared by every handler that captures there.
 *
 * Why not one capture per handler: in immediate mode libpcap gives every frame a fixed ring
 * slot big enough for a 64 KiB super-frame (and rounds each to a 128 KiB block), so each capture
 * costs 2 MiB at the very least; a hundred handlers on one LAN interface held 280 MB of rings.
 * Shared, the device has one ring, one wait and one drain, and frames are handed out here:
 *
 *   1. The kernel filter is the union of the members' filters (filter.ts) and, for the Proxy
 *      members, of the frames that arrive from their MACs; or everything, when that union would
 *      be too long for the kernel's BPF limit.
 *   2. Each drained frame goes, by its MAC addresses, to the members that want it, with the
 *      paper's rules: a Host member takes frames from its MACs; a Proxy member takes frames to
 *      its MACs, broadcast (and multicast if asked), never those from its own MACs.
 *   3. A frame from a Proxy member's MAC is that member's conflict (a duplicate MAC on the LAN,
 *      or a loop): counted through `onConflict`, never forwarded by it.
 */
import { messageOf } from "../errors.ts";
import { buildFilter, conflictFilter } from "./filter.ts";
import { log } from "../log.ts";
import { mac48, macBytes } from "./mac.ts";
import type { Capture, CaptureSpec, CaptureStats, FrameSink } from "./ports.ts";

/** What a device capture needs of libpcap (PcapCapture). */
export interface RawCapture {
  /**
   * Calls `onReady` on this thread whenever frames may be waiting (or the capture failed: then
   * `drain` throws), until set to null or closed.
   */
  watch(onReady: (() => void) | null): void;
  drain(onFrame: FrameSink, max: number): number;
  setFilter(filter: string): void;
  stats(): CaptureStats;
  /**
   * Whether the interface it was opened on is still there (the same one, not another of its
   * name). A capture that cannot tell says true.
   */
  present?(): boolean;
  close(): void;
}

/**
 * Frames drained per wake-up: bounds the time spent in one synchronous burst. What is left
 * wakes the poll again, after the other fds had their turn.
 */
const DRAIN_BATCH = 1024;
/** Past this many MACs the union filter could exceed the kernel's 4096 BPF instructions. */
const MAX_FILTER_MACS = 200;
const BROADCAST = 0xffffffffffff;

/** The shared captures of one process, by device. */
export class DeviceCaptures {
  #devices = new Map<string, DeviceCapture>();

  constructor(private readonly openRaw: (device: string, filter: string) => RawCapture) {}

  /** A capture of `spec`'s frames on `device`; throws a VnetError if the device can't be opened. */
  open(device: string, spec: CaptureSpec): Capture {
    let shared = this.#devices.get(device);
    if (!shared) {
      shared = new DeviceCapture(device, this.openRaw, () => this.#devices.delete(device));
      this.#devices.set(device, shared);
    }
    return shared.join(spec);
  }

  /**
   * Fails the captures whose interface is gone: their handlers degrade. Once a second, from the
   * data path's tick. The capture's own error does not always come: the kernel reports the
   * interface going down, libpcap takes that for "down, not gone" when it looks before the
   * interface is unregistered, and nothing is reported after that.
   */
  check(): void {
    for (const shared of [...this.#devices.values()]) shared.check();
  }
}

class Member implements Capture {
  /** This member's own MACs (a Proxy member never takes frames from them). */
  readonly own: Set<number>;
  onFrame: FrameSink | null = null;
  onError: ((error: Error) => void) | null = null;
  onConflict: FrameSink | null = null;
  closed = false;

  constructor(
    readonly device: string,
    readonly spec: CaptureSpec,
    private readonly shared: DeviceCapture,
  ) {
    this.own = new Set(spec.macs.map((m) => mac48(macBytes(m), 0)));
  }

  start(onFrame: FrameSink, onError: (error: Error) => void, onConflict?: FrameSink): void {
    this.onFrame = onFrame;
    this.onError = onError;
    this.onConflict = onConflict ?? null;
    this.shared.run();
  }

  stats(): CaptureStats {
    return this.shared.stats();
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.shared.leave(this);
  }
}

class DeviceCapture {
  #raw: RawCapture | null = null;
  #members = new Set<Member>();
  #hostBySrc = new Map<number, Member>();
  #proxyByDst = new Map<number, Member>();
  /** Proxy members by their MACs: a frame from one of them is that member's conflict. */
  #proxyBySrc = new Map<number, Member>();
  /** The kernel filter installed now: a change of members that keeps it costs no recompile. */
  #filter: string | null = null;
  #proxies: Member[] = [];
  #running = false;
  #closed = false;

  constructor(
    readonly device: string,
    private readonly openRaw: (device: string, filter: string) => RawCapture,
    private readonly forget: () => void,
  ) {}

  join(spec: CaptureSpec): Member {
    const member = new Member(this.device, spec, this);
    this.#members.add(member);
    try {
      this.#update();
    } catch (e) {
      this.#members.delete(member);
      if (this.#members.size === 0) this.#close();
      else this.#update();
      throw e;
    }
    return member;
  }

  leave(member: Member): void {
    if (!this.#members.delete(member) || this.#closed) return;
    if (this.#members.size === 0) this.#close();
    else this.#update();
  }

  stats(): CaptureStats {
    return this.#raw && !this.#closed
      ? this.#raw.stats()
      : { received: 0, dropped: 0, ifDropped: 0 };
  }

  /** Starts draining the device's frames to the members, once. */
  run(): void {
    if (this.#running || this.#closed) return;
    this.#running = true;
    log.info("capture started", { dev: this.device });
    this.#raw!.watch(this.#drain);
  }

  /** Role: move every frame of the device to the handlers that want it. */
  #drain = (): void => {
    try {
      this.#raw!.drain(this.#dispatch, DRAIN_BATCH);
    } catch (e) {
      if (!this.#closed) this.#fail(e instanceof Error ? e : new Error(messageOf(e)));
    }
  };

  #dispatch = (frame: Uint8Array, wireLength: number): void => {
    if (frame.length < 14) return;
    const dst = mac48(frame, 0);
    const src = mac48(frame, 6);
    this.#hostBySrc.get(src)?.onFrame?.(frame, wireLength);
    this.#proxyBySrc.get(src)?.onConflict?.(frame, wireLength);
    if ((frame[0] & 1) === 0) {
      const proxy = this.#proxyByDst.get(dst);
      if (proxy && !proxy.own.has(src)) proxy.onFrame?.(frame, wireLength);
      return;
    }
    const broadcast = dst === BROADCAST;
    for (const proxy of this.#proxies) {
      if ((broadcast || proxy.spec.multicast) && !proxy.own.has(src)) {
        proxy.onFrame?.(frame, wireLength);
      }
    }
  };

  /** Re-indexes the members and sets the union filter (opening libpcap on first use). */
  #update(): void {
    this.#hostBySrc.clear();
    this.#proxyByDst.clear();
    this.#proxyBySrc.clear();
    this.#proxies = [];
    let macs = 0;
    const proxied: string[] = [];
    for (const m of this.#members) {
      macs += m.own.size;
      if (m.spec.role === "host") {
        for (const mac of m.own) this.#hostBySrc.set(mac, m);
      } else {
        for (const mac of m.own) {
          this.#proxyByDst.set(mac, m);
          this.#proxyBySrc.set(mac, m);
        }
        this.#proxies.push(m);
        proxied.push(...m.spec.macs);
      }
    }
    // Over the limit: let everything through and sort it out here (still exact, just busier).
    const filter = macs > MAX_FILTER_MACS ? "" : this.#unionFilter(proxied);
    if (!this.#raw) this.#raw = this.openRaw(this.device, filter);
    else if (filter !== this.#filter) this.#raw.setFilter(filter);
    this.#filter = filter;
  }

  #unionFilter(proxied: string[]): string {
    const clauses = [...this.#members]
      .map((m) => `(${buildFilter(m.spec.role, m.spec.macs, m.spec.multicast)})`);
    if (proxied.length) clauses.push(`(${conflictFilter(proxied)})`);
    return clauses.join(" or ");
  }

  /** Fails the capture if its interface is gone (DeviceCaptures.check). */
  check(): void {
    if (this.#closed || !this.#raw || (this.#raw.present?.() ?? true)) return;
    this.#fail(new Error(`${this.device}: the interface is gone`));
  }

  /** The interface failed (e.g. it disappeared): every member hears it, then all starts over. */
  #fail(error: Error): void {
    const members = [...this.#members];
    this.#close();
    for (const m of members) m.onError?.(error);
  }

  #close(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.forget();
    this.#raw?.close();
    if (this.#running) log.info("capture stopped", { dev: this.device });
  }
}
