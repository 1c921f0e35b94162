/**
 * A Handler is one end of a VNET bridge (paper, section 4.2): on the Host it captures what the
 * VMs send and injects what the LAN sends them; on the Proxy it does the reverse. Its two
 * directions are the whole data path:
 *
 *   to the peer:   (device capture drain) → Capture → Handler.#forward → Link.sendFrame
 *   from the peer: Link reader → Handler.receive → (GRO) → prepareForWire → Injector.inject
 *
 * Both paths ask the server's switch fabric (fabric.ts) first: a frame from the peer may be
 * for another handler of the same device, and a Host's captured frame may have a direct path
 * to another Host.
 *
 * The handler outlives its link: when the link drops the handler stays open (frames to the peer
 * are counted as drops) until a new link is attached.
 *
 * It injects only what its end may speak (issue 9): a Proxy only frames from its VMs' MACs (the
 * Host may speak as its VMs and nothing else), a Host only frames to its VMs' MACs, broadcast,
 * and with multicast on, multicast. Anything else from the peer is dropped and counted
 * (`dropReasons.foreignMac`). A Proxy also counts the frames that arrive on its LAN interface
 * from its VMs' MACs (`macConflicts`): a duplicate MAC on the LAN or a loop.
 */
import { DevicePorts } from "./device_ports.ts";
import { MacConflicts } from "./mac_conflicts.ts";
import { type FrameLink, type Injector, type Interfaces, type Role } from "./ports.ts";
import { Counter, type HandlerCounters } from "./counters.ts";
import { type Logger } from "../log.ts";
import { type Fabric, type FabricPort, LoopGuard, type Path, Verdict } from "./fabric.ts";
import { isBroadcastFrame, MacSet } from "./mac.ts";
import { type GsoEmit, prepareForWire } from "./offload.ts";
import { TcpCoalescer } from "./gro.ts";
import { type UdpPathState } from "./udp_peers.ts";
import { poller } from "../io/poller.ts";

/**
 * How a handler's frames cross the WAN (issue 18): `tcp`, in the link's stream; `udp`, by the
 * link's UDP path while it works (the stream when it does not), and the handler is refused if
 * the servers cannot agree on one; `auto`, the same without the refusal.
 */
export type Transport = "tcp" | "udp" | "auto";
export const TRANSPORTS: readonly Transport[] = ["tcp", "udp", "auto"];

/** What both ends agree on; `id` is 8 hex digits, also the number frames are tagged with. */
export interface HandlerSpec {
  id: string;
  role: Role;
  /** The interface this end captures on and injects into. */
  device: string;
  macs: string[];
  multicast: boolean;
  /** The other server, `ADDR:PORT`, for display. */
  peer: string;
  /** How its frames cross; `tcp` when absent (handlers made before there was a choice). */
  transport?: Transport;
}

/** How this end reaches a remote MAC (fabric.ts), as `list` shows it. */
interface PathInfo {
  mac: string;
  via: "direct" | "proxy";
  /** The far Host (direct) or this handler's peer (through the Proxy). */
  peer: string | null;
  /** Sent to the MAC on each path so far. */
  frames: number;
  bytes: number;
  viaProxy: { frames: number; bytes: number };
  viaDirect: { frames: number; bytes: number };
  /** What carries the direct path's frames now: the direct link's UDP path or its stream. */
  transport: "udp" | "tcp" | null;
  /** The direct link's UDP path, when it carries this MAC's frames while it works. */
  udp: UdpPathState | null;
}

/** What only the data path knows of a handler, beside its counters (counters.ts). */
export interface HandlerState {
  /** Why the interface handles are closed while the handler is open (device gone). */
  degraded: string | null;
  capture: { received: number; dropped: number; ifDropped: number };
  /**
   * At a Host: the remote MACs its VMs reach through this handler's Proxy (the same table in
   * every handler on that link), and how: direct to another Host, or through the Proxy.
   */
  paths: PathInfo[];
  /** The UDP path its frames take while it works (udp_peers.ts), or null: the link's stream. */
  udp: UdpPathState | null;
}

export function handlerNumber(id: string): number {
  return parseInt(id, 16) >>> 0;
}

export class Handler implements FabricPort {
  readonly spec: HandlerSpec;
  readonly number: number;
  /** Frames and bytes each way, and why frames were dropped (a slot of counters.ts). */
  readonly counters: HandlerCounters;
  /** Frames seen on the interface from one of our MACs (a Proxy's duplicate MAC or loop). */
  readonly conflicts: MacConflicts;

  #dev: DevicePorts;
  #fabric: Fabric;
  /** A Proxy's broadcasts seen lately: one that comes back is a loop (fabric.ts). */
  #loopGuard = new LoopGuard();
  #link: FrameLink | null = null;
  #log: Logger;
  #open = true;
  #lastInjectError = "";
  /** The handler's MACs, to check frames from the peer against. */
  readonly #macs: MacSet;
  /**
   * Opens both interface handles. Throws a VnetError if the device is bad, unless
   * `tolerant` (restoring saved handlers), where the handler starts degraded and retries.
   */
  constructor(
    spec: HandlerSpec,
    ports: Interfaces,
    fabric: Fabric,
    counters: HandlerCounters,
    log: Logger,
    tolerant = false,
  ) {
    this.spec = spec;
    this.counters = counters;
    this.number = handlerNumber(spec.id);
    this.#macs = new MacSet(spec.macs);
    this.#fabric = fabric;
    this.#log = log.with({ handler: spec.id, role: spec.role, dev: spec.device });
    this.conflicts = new MacConflicts(this.#log);
    const { role, macs, multicast } = spec;
    this.#dev = new DevicePorts(ports, spec.device, { role, macs, multicast }, this.#log, (i) => {
      this.#injectGso = i.injectGso
        ? (frame, gso) => i.injectGso!(frame, gso) || this.#injectFailed(frame, i)
        : undefined;
      // Merging only pays where the injector takes super-frames whole.
      this.#gro = i.injectGso ? new TcpCoalescer((frame) => this.#putNow(frame)) : null;
    });
    this.#dev.open(tolerant);
    if (this.#dev.degraded === null) {
      this.#log.info("handler opened", { macs: macs.join(","), multicast });
    }
    fabric.join(this);
  }

  get role(): Role {
    return this.spec.role;
  }

  get device(): string {
    return this.spec.device;
  }

  get macs(): readonly string[] {
    return this.spec.macs;
  }

  get multicast(): boolean {
    return this.spec.multicast;
  }

  /** Why the interface handles are closed while the handler is open (device gone). */
  get degraded(): string | null {
    return this.#dev.degraded;
  }

  get link(): FrameLink | null {
    return this.#link;
  }

  /** Binds the handler to a link (a new one after a reconnect) and starts capturing. */
  attach(link: FrameLink): void {
    this.#link = link;
    this.#dev.startCapture(this.#forward, this.#conflict);
  }

  /** Forgets a link that went down; captured frames are dropped until the next attach. */
  detach(link: FrameLink): void {
    if (this.#link === link) this.#link = null;
  }

  /**
   * Injects one frame received from the peer, or hands it on (fabric.ts). Synchronous: `frame`
   * is only lent to us.
   *   1. Only what this end may speak is taken (see the top).
   *   2. The fabric may switch it to other handlers, or find it a loop.
   *   3. It is made fit for the interface (offload.ts) and injected.
   */
  receive(frame: Uint8Array): void {
    const fromPeer = this.counters.fromPeer;
    fromPeer.frames++;
    fromPeer.bytes += frame.length;
    if (frame.length < 14) return this.#dropIn(Counter.dropOffload);
    if (!this.#mayInject(frame)) return this.#dropIn(Counter.dropForeignMac);
    const verdict = this.#fabric.fromPeer(this, frame);
    if (verdict === Verdict.Loop) return this.#dropIn(Counter.dropLoop);
    if (verdict === Verdict.Switched) {
      this.counters.add(Counter.switchedFrames);
      this.counters.add(Counter.switchedBytes, frame.length);
      return;
    }
    this.#put(frame);
  }

  /** Puts a frame on the interface that this Host's fabric hands over from another device. */
  deliver(frame: Uint8Array): void {
    this.counters.fromPeer.frames++;
    this.counters.fromPeer.bytes += frame.length;
    this.#put(frame);
  }

  /** A frame from the peer not injected, and why (a drop reason of counters.ts). */
  #dropIn(reason: number): void {
    this.counters.fromPeer.drops++;
    this.counters.add(reason);
  }

  /** A frame from one of our MACs on the interface: counted, and warned of (mac_conflicts.ts). */
  #conflict = (frame: Uint8Array): void => {
    this.counters.add(Counter.macConflicts);
    this.conflicts.seen(frame);
  };

  /**
   * Injects `frame`, merged with the TCP segments of its flow that come with it in this burst
   * (gro.ts) where the injector takes super-frames: one `send` for many. What is merged goes
   * out at the end of the burst (the poller's `defer`), never later.
   */
  #put(frame: Uint8Array): void {
    const gro = this.#gro;
    if (gro && gro.add(frame)) {
      if (!this.#groPending) {
        this.#groPending = true;
        poller.defer(this.#flushGro);
      }
      return;
    }
    this.#putNow(frame);
  }

  #flushGro = (): void => {
    this.#groPending = false;
    if (this.#open) this.#gro?.flush();
  };

  /** Makes `frame` fit for the interface (offload.ts) and injects it. */
  #putNow(frame: Uint8Array): void {
    const injector = this.#dev.injector;
    if (!injector) this.#dropIn(Counter.dropInject);
    else if (prepareForWire(frame, injector.mtu, this.#inject, this.#injectGso) < 0) {
      this.#dropIn(Counter.dropOffload);
    }
  }

  /** Whether this end may put `frame` (from the peer) on its interface; see the top. */
  #mayInject(frame: Uint8Array): boolean {
    if (this.spec.role === "proxy") return this.#macs.has(frame, 6);
    if ((frame[0] & 1) === 0) return this.#macs.has(frame, 0);
    return this.spec.multicast || isBroadcastFrame(frame);
  }

  #inject = (frame: Uint8Array): void => {
    const injector = this.#dev.injector!;
    if (!injector.inject(frame)) this.#injectFailed(frame, injector);
  };

  /** Counts a frame the system refused; returns true: it has been dealt with. */
  #injectFailed(frame: Uint8Array, injector: Injector): boolean {
    this.#dropIn(Counter.dropInject);
    const error = injector.lastError();
    if (error !== this.#lastInjectError) {
      // Log each distinct failure once, not once per frame.
      this.#lastInjectError = error;
      this.#log.warn("inject failed", { bytes: frame.length, error });
    }
    return true;
  }

  /** Set when the injector takes super-frames whole (GSO): no segmentation in JavaScript. */
  #injectGso: GsoEmit | undefined;
  /** The userspace GRO, where the injector takes super-frames; a flush is deferred. */
  #gro: TcpCoalescer | null = null;
  #groPending = false;

  /**
   * A captured frame:
   *   1. A truncated one is dropped.
   *   2. At a Host, the fabric may find it local (another handler's VM on this device) or give
   *      it a direct path to another Host; at a Proxy, a broadcast that its Host already handed
   *      over (fabric.ts, step 8) or one seen again is a loop.
   *   3. The rest goes to this handler's peer.
   */
  #forward = (frame: Uint8Array, wireLength: number): void => {
    if (wireLength > frame.length) return this.#dropOut(Counter.dropTruncated);
    if (this.spec.role === "host") {
      const to = this.#fabric.toward(this, frame);
      if (to === "local") return;
      if (to !== null && this.#sendDirect(to, frame)) return;
    } else if (
      (frame[0] & 1) === 1 &&
      (this.#fabric.handedOver(this, frame) || this.#loopGuard.repeat(frame))
    ) {
      return this.#dropOut(Counter.dropLoop);
    }
    this.sendToPeer(frame);
  };

  #sendDirect(path: Path, frame: Uint8Array): boolean {
    if (!path.direct!.link.sendFrame(path.direct!.number, frame)) return false;
    path.viaDirect.frames++;
    path.viaDirect.bytes += frame.length;
    return true;
  }

  /** Sends a frame to this handler's peer (its own, or one the fabric switched to it). */
  sendToPeer(frame: Uint8Array): boolean {
    if (this.#link?.sendFrame(this.number, frame)) {
      this.counters.toPeer.frames++;
      this.counters.toPeer.bytes += frame.length;
      return true;
    }
    this.#dropOut(Counter.dropLink);
    return false;
  }

  /** A frame for the peer not sent, and why (a drop reason of counters.ts). */
  #dropOut(reason: number): void {
    this.counters.toPeer.drops++;
    this.counters.add(reason);
  }

  /**
   * A frame the link had accepted (and `toPeer` counted) was dropped from its send queue: it
   * was full (`full`), or the frame waited too long (`aqm`).
   */
  sendDropped(reason: "full" | "aqm"): void {
    this.#dropOut(reason === "aqm" ? Counter.dropAqm : Counter.dropLink);
  }

  /**
   * What `list` shows beside the counters (the rest is the control plane's); `udpOf` gives the
   * UDP path of a direct link that carries frames tagged for a far handler.
   */
  state(udpOf?: (link: FrameLink, handler: number) => UdpPathState | null): HandlerState {
    const link = this.#link;
    return {
      degraded: this.degraded,
      capture: this.#dev.stats(),
      // The table of this handler's Proxy link: its VMs reach a MAC by the same path.
      paths: this.spec.role === "proxy" || !link ? [] : this.#fabric.paths(link).map((p) => {
        const direct = p.direct?.link.isOpen ? p.direct : null;
        const udp = direct && udpOf ? udpOf(direct.link, direct.number) : null;
        return {
          mac: p.mac,
          via: direct ? "direct" as const : "proxy" as const,
          peer: direct ? direct.peer : link.remote,
          frames: p.viaProxy.frames + p.viaDirect.frames,
          bytes: p.viaProxy.bytes + p.viaDirect.bytes,
          viaProxy: { ...p.viaProxy },
          viaDirect: { ...p.viaDirect },
          transport: direct ? (udp?.state === "up" ? "udp" as const : "tcp" as const) : null,
          udp,
        };
      }),
      udp: null,
    };
  }

  /** Stops capturing and releases both handles; safe to call twice. */
  close(): Promise<void> {
    if (!this.#open) return Promise.resolve();
    this.#open = false;
    this.#link = null;
    this.#fabric.leave(this);
    this.#dev.close();
    this.#log.info("handler closed", {
      toPeer: this.counters.toPeer.frames,
      fromPeer: this.counters.fromPeer.frames,
    });
    return Promise.resolve();
  }
}
