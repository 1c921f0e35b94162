/**
 * The forwarder: everything that touches a frame, on one thread (issue 17). It holds the
 * handlers (their captures and injectors), the switch fabric, and the links as the data path
 * sees them; the control plane drives it with commands (forwarder_protocol.ts) and reads its
 * counters from a shared table (counters.ts).
 *
 * In a server it runs on the data-path worker (forwarder_worker.ts), which blocks in its own
 * poll; the unit tests and in-process servers run it on the main thread (data_path.ts). It is
 * the same object either way: only how commands, events and frames reach it differs.
 *
 *   a captured frame:   capture → Handler → Fabric → FrameLink.sendFrame → (to the link's owner)
 *   a frame from a link: `fromLink` → the handler it is tagged for → Fabric → Injector
 *
 * A frame from a link is taken only for a handler attached to that link, or one a direct path
 * allows there (control/direct.ts): a peer cannot inject into another pair's handlers.
 */
import { ErrorCode, isErrorCode, messageOf, VnetError } from "../errors.ts";
import { type Logger } from "../log.ts";
import { Counter, HandlerCounters } from "./counters.ts";
import { Fabric } from "./fabric.ts";
import {
  type Command,
  type Forgotten,
  type ForwarderEvent,
  fromBase64,
  fromWireKeys,
  type States,
  type UdpPathAgreed,
} from "./forwarder_protocol.ts";
import { PunchedLink, type UdpPathState, type UdpPeerLink, UdpPeerPort } from "./udp_peers.ts";
import { OwnedSocket } from "../link/owned_socket.ts";
import { VxlanPort, VxlanTunnel } from "./vxlan_tunnels.ts";
import { Handler } from "./handler.ts";
import { type FrameLink, type Interfaces } from "./ports.ts";

/** A switched pair is reported at most this often: the control plane decides, not per frame. */
const SWITCHED_EVERY_MS = 1000;
const MAX_SWITCHED_PAIRS = 65_536;
/** How often the tick asks whether each captured interface is still there (Interfaces.check). */
const CHECK_INTERFACES_MS = 1000;

/** Where a link's frames go when the forwarder does not own its socket: to the main thread. */
export type FrameOut = (link: number, handler: number, frame: Uint8Array) => boolean;

/** A link whose stream another thread owns: its frames are handed to `out`. */
class ForwardedLink implements FrameLink {
  isOpen = true;
  /** The link's UDP path, which takes some handlers' frames first (as OwnedSocket's). */
  bypass: ((handler: number, frame: Uint8Array) => boolean | null) | null = null;
  constructor(readonly number: number, readonly remote: string, private readonly out: FrameOut) {}
  sendFrame(handler: number, frame: Uint8Array): boolean {
    if (!this.isOpen) return false;
    const bypassed = this.bypass?.(handler, frame);
    if (bypassed !== undefined && bypassed !== null) return bypassed;
    return this.out(this.number, handler, frame);
  }
}

export class Forwarder {
  readonly fabric = new Fabric();
  readonly #handlers = new Map<number, Handler>();
  readonly #links = new Map<number, ForwardedLink | OwnedSocket | VxlanTunnel | PunchedLink>();
  /** The VXLAN socket, opened with the first tunnel. */
  #vxlan: VxlanPort | null = null;
  /** The UDP socket of the links' UDP paths (udp_peers.ts), opened by `udpListen`. */
  #udp: UdpPeerPort | null = null;
  /** Plain links whose sockets this thread owns. */
  readonly #sockets = new Map<number, OwnedSocket>();
  /** Direct links, and the handlers whose frames they may carry in. */
  readonly #allowed = new Map<number, Set<number>>();
  /** When each switched pair was last reported. */
  readonly #switched = new Map<string, number>();
  /** When the tick last asked the interfaces (performance.now()). */
  #checkedAt = -Infinity;

  constructor(
    private readonly ports: Interfaces,
    private readonly counters: Float64Array,
    private readonly out: FrameOut,
    private readonly emit: (event: ForwarderEvent) => void,
    private readonly log: Logger,
  ) {
    this.fabric.onLearned = (via, mac) =>
      this.emit({ event: "learned", via: via?.number ?? null, mac });
    this.fabric.onSwitched = (from, to, frame) => {
      const src = macText(frame, 6), dst = macText(frame, 0);
      const key = `${from.number}/${to.number}/${src}/${dst}`;
      const now = performance.now();
      if (now - (this.#switched.get(key) ?? -Infinity) < SWITCHED_EVERY_MS) return;
      if (this.#switched.size >= MAX_SWITCHED_PAIRS) this.#switched.clear();
      this.#switched.set(key, now);
      this.emit({ event: "switched", from: from.number, to: to.number, src, dst });
    };
  }

  /** A frame for handler `number` came in on link `link`. `frame` is lent for the call. */
  fromLink(link: number, number: number, frame: Uint8Array): void {
    const handler = this.#handlers.get(number);
    if (!handler) return;
    if (handler.link?.number === link || this.#allowed.get(link)?.has(number)) {
      handler.receive(frame);
    }
  }

  /** Runs one command; returns its reply, or throws (a VnetError says what the caller did wrong). */
  run(command: Command): unknown {
    switch (command.op) {
      case "open": {
        const { spec, slot, tolerant } = command;
        const number = parseInt(spec.id, 16) >>> 0;
        if (this.#handlers.has(number)) {
          throw new VnetError(`handler ${spec.id} is open already`, { code: ErrorCode.Refused });
        }
        const counters = new HandlerCounters(this.counters, slot);
        const handler = new Handler(spec, this.ports, this.fabric, counters, this.log, tolerant);
        this.#handlers.set(number, handler);
        return null;
      }
      case "close": {
        const handler = this.#handlers.get(command.handler);
        this.#handlers.delete(command.handler);
        handler?.close();
        return null;
      }
      case "attach": {
        const link = this.#links.get(command.link);
        const handler = this.#handlers.get(command.handler);
        if (!link || !handler) return false;
        handler.attach(link);
        // Whether its frames go by UDP: the link must have a path that can take them.
        const udp = this.#udp?.get(command.link);
        if (!command.udp || !udp) {
          udp?.drop(command.handler);
          return false;
        }
        return udp.carry(command.handler);
      }
      case "detach": {
        const link = this.#links.get(command.link);
        if (link) this.#handlers.get(command.handler)?.detach(link);
        this.#udp?.get(command.link)?.drop(command.handler);
        return null;
      }
      case "link":
        if (!this.#links.has(command.link)) {
          this.#links.set(command.link, new ForwardedLink(command.link, command.remote, this.out));
        }
        return null;
      case "unlink": {
        this.#udp?.closeLink(command.link);
        const link = this.#links.get(command.link);
        if (link instanceof OwnedSocket) link.close("the link closed");
        else if (link && !(link instanceof PunchedLink)) link.isOpen = false;
        this.#sockets.delete(command.link);
        this.#links.delete(command.link);
        this.#allowed.delete(command.link);
        return null;
      }
      case "allow": {
        let allowed = this.#allowed.get(command.link);
        if (!allowed) this.#allowed.set(command.link, allowed = new Set());
        allowed.add(command.handler);
        return null;
      }
      case "route": {
        const via = this.#links.get(command.via), link = this.#links.get(command.link);
        if (!via || !link) return false;
        return this.fabric.addRoute(via, command.mac, link, command.peer, command.number);
      }
      case "unroute": {
        const via = this.#links.get(command.via);
        return via ? this.fabric.removeRoute(via, command.mac) : false;
      }
      case "unrouteOver": {
        const link = this.#links.get(command.link);
        if (link) this.fabric.removeRoutesOver(link);
        return null;
      }
      case "forgetLink": {
        const via = this.#links.get(command.via);
        if (via) this.fabric.forgetLink(via);
        return null;
      }
      case "sweep":
        return this.fabric.sweep(command.everyMs).map(({ via, path }): Forgotten => ({
          via: via?.number ?? null,
          mac: path.mac,
          direct: path.direct ? { link: path.direct.link.number, peer: path.direct.peer } : null,
        }));
      case "state": {
        const states: States = {};
        for (const [number, handler] of this.#handlers) {
          const udp = handler.link ? this.#udpStateOf(handler.link, number) : null;
          const linkRttMs = handler.link instanceof OwnedSocket ? handler.link.rttMs : null;
          states[number] = { ...handler.state(this.#udpStateOf), udp, linkRttMs };
        }
        return states;
      }
      case "adopt": {
        const { link: number, remote, fd, buffered, stallMs, keepaliveMs } = command;
        const bytes = fromBase64(buffered);
        const socket = new OwnedSocket(number, remote, fd, bytes, stallMs, keepaliveMs, {
          frame: (handler, frame) => {
            this.#handlers.get(handler)?.counters.add(Counter.ownSocketIn);
            this.fromLink(number, handler, frame);
          },
          queued: (handler) => this.#handlers.get(handler)?.counters.add(Counter.ownSocketOut),
          message: (type, payload) => this.emit({ event: "message", link: number, type, payload }),
          closed: (reason) => {
            this.#sockets.delete(number);
            this.emit({ event: "closed", link: number, reason });
          },
          sendDropped: (handler, reason) => this.#handlers.get(handler)?.sendDropped(reason),
        });
        this.#links.set(number, socket);
        this.#sockets.set(number, socket);
        return null;
      }
      case "control":
        this.#sockets.get(command.link)?.sendControl(fromBase64(command.message));
        return null;
      case "tune":
        this.#sockets.get(command.link)?.tune(command.stallMs, command.keepaliveMs);
        return null;
      case "closeSocket":
        this.#sockets.get(command.link)?.close("closed by the control plane", command.notify);
        return null;
      case "vxlan": {
        const { link, handler, bind, localPort, host, port, vni } = command;
        this.#vxlan ??= new VxlanPort(bind, localPort, {
          deliver: (number, handler, frame) => this.fromLink(number, handler, frame),
        }, this.log);
        const tunnel = this.#vxlan.open(link, handler, host, port, vni);
        this.#links.set(link, tunnel);
        this.#handlers.get(handler)?.attach(tunnel);
        return null;
      }
      case "unvxlan": {
        const tunnel = this.#links.get(command.link);
        if (tunnel instanceof VxlanTunnel) this.#vxlan?.closeTunnel(tunnel);
        this.#links.delete(command.link);
        return null;
      }
      case "udpListen": {
        this.#udp ??= new UdpPeerPort(command.bind, command.port, {
          deliver: (link, handler, frame) => this.fromLink(link, handler, frame),
          changed: (link, up, why) => this.emit({ event: "udp", link, up, why }),
          cut: (handler, extra) => {
            const counters = this.#handlers.get(handler)?.counters;
            if (counters) counters.toPeer.frames += extra;
          },
          dropped: (handler) => this.#handlers.get(handler)?.sendDropped("aqm"),
        }, this.log);
        return this.#udp.port;
      }
      case "udpOpen": {
        const link = this.#links.get(command.link);
        if (!this.#udp || !(link instanceof OwnedSocket || link instanceof ForwardedLink)) {
          return false;
        }
        const path = this.#openUdpPath(this.#udp, command);
        link.bypass = path.bypass;
        return true;
      }
      case "udpCarry": {
        const path = this.#udp?.get(command.link);
        if (!path) return false;
        // A refusal undoes only this command's handlers: the others carried stay carried.
        const added = command.handlers.filter((h) => !path.carries(h));
        if (added.every((h) => path.carry(h))) return true;
        for (const h of added) path.drop(h);
        return false;
      }
      case "udpPunch": {
        if (!this.#udp || this.#links.has(command.link)) return false;
        const path = this.#openUdpPath(this.#udp, command);
        // A plain path whose handler's VNI is 0 or taken would be up and drop every frame.
        if (!command.carry.every((h) => path.carry(h))) {
          this.#udp.closeLink(command.link);
          return false;
        }
        this.#links.set(command.link, new PunchedLink(command.link, command.remote, path));
        this.#allowed.set(command.link, new Set([command.allow]));
        return true;
      }
      case "unpunch": {
        const link = this.#links.get(command.link);
        if (!(link instanceof PunchedLink)) return false;
        this.fabric.removeRoutesOver(link);
        this.#udp?.closeLink(command.link);
        this.#links.delete(command.link);
        this.#allowed.delete(command.link);
        return true;
      }
      case "udpRekey": {
        const session = this.#udp?.get(command.link)?.session;
        if (!session) return false;
        session.rekey(fromWireKeys(command.keys), performance.now(), {
          peerHasKeys: command.peerHasKeys,
        });
        return true;
      }
      case "udpProbe":
        return this.#udp?.expectProbe(command.token, performance.now()) ?? false;
      case "udpState": {
        const states: Record<number, UdpPathState> = {};
        for (const path of this.#udp?.links() ?? []) states[path.number] = path.state();
        return states;
      }
      case "udpPort":
        return this.#udp?.stats() ?? null;
      case "stop":
        this.#udp?.close();
        this.#vxlan?.close();
        for (const handler of this.#handlers.values()) handler.close();
        this.#handlers.clear();
        for (const socket of [...this.#sockets.values()]) socket.close("server shutting down");
        return null;
    }
  }

  /** The UDP path of `link` (a handler's, or a direct one) while it carries `handler`'s frames. */
  #udpStateOf = (link: FrameLink, handler: number): UdpPathState | null => {
    const path = this.#udp?.get(link.number);
    return path?.carries(handler) ? path.state() : null;
  };

  /**
   * Housekeeping, at least once a second: a capture whose interface is gone fails (asked once a
   * second), a socket whose writes are stuck is closed, the sockets' keepalives are sent and
   * their silence checked. Returns the ms until the next tick when a keepalive or the UDP paths
   * want it sooner. `monotonic`: performance.now()'s clock.
   */
  tick(now = Date.now(), monotonic = performance.now()): number | undefined {
    // A busy UDP path ticks every 250 ms; looking up each interface costs three system calls.
    if (monotonic - this.#checkedAt >= CHECK_INTERFACES_MS) {
      this.#checkedAt = monotonic;
      this.ports.check?.();
    }
    let next = Infinity;
    for (const socket of this.#sockets.values()) {
      socket.checkStall(now);
      next = Math.min(next, socket.keepalive(monotonic));
    }
    next = Math.min(next, this.#udp?.tick(monotonic) ?? Infinity);
    return next === Infinity ? undefined : next;
  }

  /** Opens link `agreed.link`'s UDP path as the two servers agreed it (or a Proxy told). */
  #openUdpPath(udp: UdpPeerPort, agreed: UdpPathAgreed & { link: number }): UdpPeerLink {
    const { host, port, keys, localId, peerId, token, peerToken, peerCompletesChecksums } = agreed;
    return udp.open(agreed.link, {
      host,
      port,
      keys: keys && fromWireKeys(keys),
      localId,
      peerId,
      token,
      peerToken,
      peerCompletesChecksums,
    }, performance.now());
  }

  /** Runs a command for a caller on another thread: the reply, or the error as words and code. */
  reply(id: number, command: Command): ForwarderEvent {
    try {
      return { event: "reply", id, ok: true, value: this.run(command) ?? null };
    } catch (e) {
      const code = e instanceof VnetError && isErrorCode(e.code) ? e.code : undefined;
      return { event: "reply", id, ok: false, error: messageOf(e), code };
    }
  }
}

function macText(frame: Uint8Array, at: number): string {
  return Array.from(frame.subarray(at, at + 6), (b) => b.toString(16).padStart(2, "0")).join(":");
}
