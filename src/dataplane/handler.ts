/**
 * A Handler is one end of a VNET bridge (paper, section 4.2): on the Host it captures what the
 * VMs send and injects what the LAN sends them; on the Proxy it does the reverse. Its two
 * directions are the whole data path:
 *
 *   to the peer:   (device capture loop) → Capture → Handler.#forward → Link.sendFrame
 *   from the peer: Link reader → Handler.receive → prepareForWire → Injector.inject
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
import { type Capture, type Injector, type Interfaces, type Role } from "./ports.ts";
import { type Link } from "../link/link.ts";
import { type Logger } from "../ops/log.ts";
import { messageOf } from "../errors.ts";
import { type DirectRoute, type Fabric, type FabricPort, LoopGuard, Verdict } from "./fabric.ts";
import { isBroadcastFrame, MacSet } from "./mac.ts";
import { type GsoEmit, prepareForWire } from "./offload.ts";

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
}

interface DirectionCounters {
  frames: number;
  bytes: number;
  drops: number;
}

/** Why frames were dropped, for `list` and metrics. */
interface DropCounters {
  /** Link down or its send queue full. */
  link: number;
  /** Captured frame longer than the snap length. */
  truncated: number;
  /** Too large for the far interface and not segmentable, or malformed. */
  offload: number;
  /** The system refused to inject it. */
  inject: number;
  /**
   * From the peer, but not this end's to inject: at a Proxy, a source that is not one of the
   * handler's MACs; at a Host, a destination that is not one of them (nor broadcast, nor
   * multicast with multicast on).
   */
  foreignMac: number;
  /** A loop: a Host's own frame come back, a broadcast seen twice (fabric.ts). */
  loop: number;
}

/** A direct path to a MAC on another Host (fabric.ts), as `list` shows it. */
interface PathInfo {
  mac: string;
  via: "direct";
  peer: string;
  state: "up" | "down";
  frames: number;
  bytes: number;
}

/** At most one conflict warning per handler in this time, with the count since the last. */
const CONFLICT_WARN_MS = 60_000;

export interface HandlerInfo extends HandlerSpec {
  /** up: forwarding; down: no link to the peer; degraded: the interface is gone. */
  state: "up" | "down" | "degraded" | "closed";
  degraded: string | null;
  link: { state: "up" | "down"; remote: string | null; tls: boolean; rttMs: number | null };
  toPeer: DirectionCounters;
  fromPeer: DirectionCounters;
  dropReasons: DropCounters;
  capture: { received: number; dropped: number; ifDropped: number };
  /**
   * Frames seen on this end's interface with one of the handler's MACs as source, which only
   * the far end should send: a duplicate MAC on the LAN, or a loop.
   */
  macConflicts: number;
  /** Frames from the peer handed to another handler of this device (a Proxy's switching). */
  switched: { frames: number; bytes: number };
  /** Direct paths this end's VMs use to other Hosts' VMs; the rest go through the Proxy. */
  paths: PathInfo[];
}

export function handlerNumber(id: string): number {
  return parseInt(id, 16) >>> 0;
}

export class Handler implements FabricPort {
  readonly spec: HandlerSpec;
  readonly number: number;
  readonly toPeer: DirectionCounters = { frames: 0, bytes: 0, drops: 0 };
  readonly fromPeer: DirectionCounters = { frames: 0, bytes: 0, drops: 0 };
  readonly dropReasons: DropCounters = {
    link: 0,
    truncated: 0,
    offload: 0,
    inject: 0,
    foreignMac: 0,
    loop: 0,
  };
  readonly switched = { frames: 0, bytes: 0 };
  /** Frames seen on the interface from one of our MACs (a Proxy's duplicate MAC or loop). */
  macConflicts = 0;

  #ports: Interfaces;
  #fabric: Fabric;
  /** A Proxy's broadcasts seen lately: one that comes back is a loop (fabric.ts). */
  #loopGuard = new LoopGuard();
  #capture: Capture | null = null;
  #injector: Injector | null = null;
  #link: Link | null = null;
  #log: Logger;
  #open = true;
  /** Frames are flowing from the capture to the link (started at the first attach). */
  #capturing = false;
  #retry: ReturnType<typeof setTimeout> | undefined;
  #lastInjectError = "";
  /** The handler's MACs, to check frames from the peer against. */
  readonly #macs: MacSet;
  /** When the last conflict warning was logged, and the count it reported. */
  #conflictWarnedAt = -Infinity;
  #conflictsWarned = 0;
  /** Why the interface handles are closed while the handler is open (device gone). */
  degraded: string | null = null;

  /**
   * Opens both interface handles. Throws a VnetError if the device is bad, unless
   * `tolerant` (restoring saved handlers), where the handler starts degraded and retries.
   */
  constructor(
    spec: HandlerSpec,
    ports: Interfaces,
    fabric: Fabric,
    log: Logger,
    tolerant = false,
  ) {
    this.spec = spec;
    this.number = handlerNumber(spec.id);
    this.#macs = new MacSet(spec.macs);
    this.#ports = ports;
    this.#fabric = fabric;
    this.#log = log.with({ handler: spec.id, role: spec.role, dev: spec.device });
    try {
      this.#openPorts();
      this.#log.info("handler opened", { macs: spec.macs.join(","), multicast: spec.multicast });
    } catch (e) {
      if (!tolerant) throw e;
      this.#degrade(messageOf(e));
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

  #openPorts(): void {
    const { role, macs, multicast } = this.spec;
    const capture = this.#ports.openCapture(this.spec.device, { role, macs, multicast });
    try {
      this.#injector = this.#ports.openInjector(this.spec.device);
    } catch (e) {
      capture.close();
      throw e;
    }
    const injector = this.#injector;
    this.#injectGso = injector.injectGso
      ? (frame, gso) => injector.injectGso!(frame, gso) || this.#injectFailed(frame, injector)
      : undefined;
    this.#capture = capture;
  }

  #closePorts(): void {
    this.#capturing = false;
    this.#capture?.close();
    this.#injector?.close();
    this.#capture = null;
    this.#injector = null;
  }

  /** The interface is gone: release it, say so once, and try again every second. */
  #degrade(reason: string): void {
    this.#closePorts();
    if (this.degraded === null) this.#log.warn("handler degraded", { reason });
    this.degraded = reason;
    clearTimeout(this.#retry);
    this.#retry = setTimeout(() => {
      if (!this.#open) return;
      try {
        this.#openPorts();
      } catch (e) {
        return this.#degrade(messageOf(e));
      }
      this.degraded = null;
      this.#log.info("handler resumed: interface is back");
      if (this.#link) this.#startCapture();
    }, 1000);
  }

  get link(): Link | null {
    return this.#link;
  }

  /** Binds the handler to a link (a new one after a reconnect) and starts capturing. */
  attach(link: Link): void {
    this.#link = link;
    if (this.#capture && !this.#capturing) this.#startCapture();
  }

  /** Forgets a link that went down; captured frames are dropped until the next attach. */
  detach(link: Link): void {
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
    this.fromPeer.frames++;
    this.fromPeer.bytes += frame.length;
    if (frame.length < 14) {
      this.fromPeer.drops++;
      this.dropReasons.offload++;
      return;
    }
    if (!this.#mayInject(frame)) {
      this.fromPeer.drops++;
      this.dropReasons.foreignMac++;
      return;
    }
    const verdict = this.#fabric.fromPeer(this, frame);
    if (verdict === Verdict.Loop) {
      this.fromPeer.drops++;
      this.dropReasons.loop++;
      return;
    }
    if (verdict === Verdict.Switched) {
      this.switched.frames++;
      this.switched.bytes += frame.length;
      return;
    }
    if (!this.#injector) {
      this.fromPeer.drops++;
      this.dropReasons.inject++;
    } else if (prepareForWire(frame, this.#injector.mtu, this.#inject, this.#injectGso) < 0) {
      this.fromPeer.drops++;
      this.dropReasons.offload++;
    }
  }

  /** Whether this end may put `frame` (from the peer) on its interface; see the top. */
  #mayInject(frame: Uint8Array): boolean {
    if (this.spec.role === "proxy") return this.#macs.has(frame, 6);
    if ((frame[0] & 1) === 0) return this.#macs.has(frame, 0);
    return this.spec.multicast || isBroadcastFrame(frame);
  }

  #inject = (frame: Uint8Array): void => {
    const injector = this.#injector!;
    if (!injector.inject(frame)) this.#injectFailed(frame, injector);
  };

  /** Counts a frame the system refused; returns true: it has been dealt with. */
  #injectFailed(frame: Uint8Array, injector: Injector): boolean {
    this.fromPeer.drops++;
    this.dropReasons.inject++;
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

  /** Every frame the capture hands over goes to `#forward`; a failed capture degrades us. */
  #startCapture(): void {
    this.#capturing = true;
    this.#capture!.start(this.#forward, (e) => {
      if (this.#open) this.#degrade(messageOf(e));
    }, this.#conflict);
  }

  /** A frame from one of our MACs arrived on a Proxy's interface: count; warn now and then. */
  #conflict = (frame: Uint8Array): void => {
    this.macConflicts++;
    const now = performance.now();
    if (now - this.#conflictWarnedAt < CONFLICT_WARN_MS) return;
    this.#conflictWarnedAt = now;
    const mac = Array.from(frame.subarray(6, 12), (b) => b.toString(16).padStart(2, "0"))
      .join(":");
    this.#log.warn(
      this.#conflictsWarned === 0
        ? "MAC conflict: a proxied MAC sends on this LAN (a duplicate MAC, or a loop)"
        : "MAC conflicts go on",
      { mac, conflicts: this.macConflicts, since: this.macConflicts - this.#conflictsWarned },
    );
    this.#conflictsWarned = this.macConflicts;
  };

  /**
   * A captured frame:
   *   1. A truncated one is dropped.
   *   2. At a Host, the fabric may find it local (another handler's VM on this device) or give
   *      it a direct path to another Host; at a Proxy, a broadcast seen again is a loop.
   *   3. The rest goes to this handler's peer.
   */
  #forward = (frame: Uint8Array, wireLength: number): void => {
    if (wireLength > frame.length) {
      this.toPeer.drops++;
      this.dropReasons.truncated++;
      return;
    }
    if (this.spec.role === "host") {
      const to = this.#fabric.toward(this, frame);
      if (to === "local") return;
      if (to !== null && this.#sendDirect(to, frame)) return;
    } else if ((frame[0] & 1) === 1 && this.#loopGuard.repeat(frame)) {
      this.toPeer.drops++;
      this.dropReasons.loop++;
      return;
    }
    this.sendToPeer(frame);
  };

  #sendDirect(route: DirectRoute, frame: Uint8Array): boolean {
    if (!route.link.sendFrame(route.number, frame)) return false;
    route.frames++;
    route.bytes += frame.length;
    return true;
  }

  /** Sends a frame to this handler's peer (its own, or one the fabric switched to it). */
  sendToPeer(frame: Uint8Array): boolean {
    if (this.#link?.sendFrame(this.number, frame)) {
      this.toPeer.frames++;
      this.toPeer.bytes += frame.length;
      return true;
    }
    this.toPeer.drops++;
    this.dropReasons.link++;
    return false;
  }

  info(): HandlerInfo {
    const link = this.#link;
    return {
      ...this.spec,
      state: !this.#open
        ? "closed"
        : this.degraded !== null
        ? "degraded"
        : link?.isOpen
        ? "up"
        : "down",
      degraded: this.degraded,
      link: {
        state: link?.isOpen ? "up" : "down",
        remote: link?.remote ?? null,
        tls: link?.tls ?? false,
        rttMs: link?.rttMs ?? null,
      },
      toPeer: { ...this.toPeer },
      fromPeer: { ...this.fromPeer },
      dropReasons: { ...this.dropReasons },
      capture: this.#capture?.stats() ?? { received: 0, dropped: 0, ifDropped: 0 },
      macConflicts: this.macConflicts,
      switched: { ...this.switched },
      paths: this.#fabric.routes().filter((r) => r.owner === this.number).map((r) => ({
        mac: r.mac,
        via: "direct" as const,
        peer: r.link.remote,
        state: r.link.isOpen ? "up" as const : "down" as const,
        frames: r.frames,
        bytes: r.bytes,
      })),
    };
  }

  /** Stops capturing and releases both handles; safe to call twice. */
  close(): Promise<void> {
    if (!this.#open) return Promise.resolve();
    this.#open = false;
    this.#link = null;
    this.#fabric.leave(this);
    clearTimeout(this.#retry);
    this.#closePorts();
    this.#log.info("handler closed", {
      toPeer: this.toPeer.frames,
      fromPeer: this.fromPeer.frames,
    });
    return Promise.resolve();
  }
}
