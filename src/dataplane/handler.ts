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
import { DevicePorts } from "./device_ports.ts";
import { MacConflicts } from "./mac_conflicts.ts";
import { type Injector, type Interfaces, type Role } from "./ports.ts";
import { type Link } from "../link/link.ts";
import { type Logger } from "../log.ts";
import { type Fabric, type FabricPort, LoopGuard, type Path, Verdict } from "./fabric.ts";
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
  /**
   * Queued for the peer but dropped by the link's AQM: it waited in the send queue longer than
   * the target for too long (the flow sends faster than the link carries it).
   */
  aqm: number;
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
  /**
   * A loop: a Host's own frame come back, a broadcast seen twice, a Host's broadcast come back
   * over the LAN to another device of its Proxy (fabric.ts).
   */
  loop: number;
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
}

export interface HandlerInfo extends HandlerSpec {
  /** up: forwarding; down: no link to the peer; degraded: the interface is gone. */
  state: "up" | "down" | "degraded" | "closed";
  degraded: string | null;
  link: {
    state: "up" | "down";
    remote: string | null;
    tls: boolean;
    rttMs: number | null;
    /** Who waits for the link's socket (Link.socket). */
    socket: "data path" | "runtime" | null;
  };
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
  /**
   * At a Host: the remote MACs its VMs reach through this handler's Proxy (the same table in
   * every handler on that link), and how: direct to another Host, or through the Proxy.
   */
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
    aqm: 0,
    truncated: 0,
    offload: 0,
    inject: 0,
    foreignMac: 0,
    loop: 0,
  };
  readonly switched = { frames: 0, bytes: 0 };
  /** Frames seen on the interface from one of our MACs (a Proxy's duplicate MAC or loop). */
  readonly conflicts: MacConflicts;

  #dev: DevicePorts;
  #fabric: Fabric;
  /** A Proxy's broadcasts seen lately: one that comes back is a loop (fabric.ts). */
  #loopGuard = new LoopGuard();
  #link: Link | null = null;
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
    log: Logger,
    tolerant = false,
  ) {
    this.spec = spec;
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

  get link(): Link | null {
    return this.#link;
  }

  /** Binds the handler to a link (a new one after a reconnect) and starts capturing. */
  attach(link: Link): void {
    this.#link = link;
    this.#dev.startCapture(this.#forward, this.conflicts.seen);
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
    this.#put(frame);
  }

  /** Puts a frame on the interface that this Host's fabric hands over from another device. */
  deliver(frame: Uint8Array): void {
    this.fromPeer.frames++;
    this.fromPeer.bytes += frame.length;
    this.#put(frame);
  }

  /** Makes `frame` fit for the interface (offload.ts) and injects it. */
  #put(frame: Uint8Array): void {
    const injector = this.#dev.injector;
    if (!injector) {
      this.fromPeer.drops++;
      this.dropReasons.inject++;
    } else if (prepareForWire(frame, injector.mtu, this.#inject, this.#injectGso) < 0) {
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
    const injector = this.#dev.injector!;
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

  /**
   * A captured frame:
   *   1. A truncated one is dropped.
   *   2. At a Host, the fabric may find it local (another handler's VM on this device) or give
   *      it a direct path to another Host; at a Proxy, a broadcast that its Host already handed
   *      over (fabric.ts, step 8) or one seen again is a loop.
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
    } else if (
      (frame[0] & 1) === 1 &&
      (this.#fabric.handedOver(this, frame) || this.#loopGuard.repeat(frame))
    ) {
      this.toPeer.drops++;
      this.dropReasons.loop++;
      return;
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
      this.toPeer.frames++;
      this.toPeer.bytes += frame.length;
      return true;
    }
    this.toPeer.drops++;
    this.dropReasons.link++;
    return false;
  }

  /**
   * A frame the link had accepted (and `toPeer` counted) was dropped from its send queue: it
   * was full (`full`), or the frame waited too long (`aqm`).
   */
  sendDropped(reason: "full" | "aqm"): void {
    this.toPeer.drops++;
    if (reason === "aqm") this.dropReasons.aqm++;
    else this.dropReasons.link++;
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
        socket: link?.socket ?? null,
      },
      toPeer: { ...this.toPeer },
      fromPeer: { ...this.fromPeer },
      dropReasons: { ...this.dropReasons },
      capture: this.#dev.stats(),
      macConflicts: this.conflicts.count,
      switched: { ...this.switched },
      // The table of this handler's Proxy link: its VMs reach a MAC by the same path.
      paths: this.spec.role === "proxy" || !link ? [] : this.#fabric.paths(link).map((p) => {
        const direct = p.direct?.link.isOpen ? p.direct : null;
        return {
          mac: p.mac,
          via: direct ? "direct" as const : "proxy" as const,
          peer: direct ? direct.peer : link?.remote ?? null,
          frames: p.viaProxy.frames + p.viaDirect.frames,
          bytes: p.viaProxy.bytes + p.viaDirect.bytes,
          viaProxy: { ...p.viaProxy },
          viaDirect: { ...p.viaDirect },
        };
      }),
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
      toPeer: this.toPeer.frames,
      fromPeer: this.fromPeer.frames,
    });
    return Promise.resolve();
  }
}
