/**
 * The data path as the control plane sees it, on the main thread (issue 17): a handle on the
 * forwarder (forwarder.ts), wherever it runs.
 *
 * - `HandlerRef` is a handler as the control plane holds it: its spec, the Link it is attached
 *   to, and its counters, read from the shared table (counters.ts) without asking anyone.
 * - `FabricMirror` keeps what the control plane decides with: which remote MACs a Host learned
 *   over which link (the forwarder tells it), and the direct routes it installed. Decisions are
 *   made here, synchronously; the forwarder is told the outcome.
 * - Frames of links whose streams the main thread owns (TLS, ssh) cross in both directions.
 *
 * The forwarder runs behind a `ForwarderPort`: on the data-path worker in a server
 * (worker_data_path.ts), or in-process (`InProcessForwarder`, for tests and in-process servers
 * on fake interfaces).
 */
import { formatHostPort } from "../addr.ts";
import { ErrorCode, messageOf, VnetError } from "../errors.ts";
import { type Link, type SocketOwner } from "../link/link.ts";
import { type Logger } from "../log.ts";
import {
  Counter,
  type CounterSnapshot,
  counterTable,
  MAX_HANDLERS,
  readCounters,
  SLOT_SIZE,
} from "./counters.ts";
import { Forwarder } from "./forwarder.ts";
import {
  type Command,
  type Forgotten,
  type ForwarderEvent,
  type States,
  toBase64,
  type UdpPathAgreed,
  type WireKeys,
} from "./forwarder_protocol.ts";
import { handlerNumber, type HandlerSpec, type HandlerState } from "./handler.ts";
import { type Interfaces } from "./ports.ts";
import { type UdpPathState, type UdpPortStats } from "./udp_peers.ts";

/** How the main thread reaches the forwarder. */
export interface ForwarderPort {
  /** The counter table the forwarder writes (counters.ts). */
  readonly counters: Float64Array;
  /** Whether it can take plain links' sockets over (a thread of its own can). */
  readonly adoptsSockets: boolean;
  /** Runs a command after every one sent before it; resolves with its reply. */
  call(command: Command): Promise<unknown>;
  /** Hands over a frame that came in on a main-thread link; false if it had to be dropped. */
  frameIn(link: number, handler: number, frame: Uint8Array): boolean;
  stop(): Promise<void>;
}

/** What the forwarder hands back to the main thread. */
export interface ForwarderHooks {
  /** A frame for a main-thread link; false if it had to be dropped. */
  frameOut(link: number, handler: number, frame: Uint8Array): boolean;
  /**
   * A frame the forwarder counted as sent was dropped on the main thread (its link was gone):
   * counted there (data-path worker only; in-process, `frameOut`'s false is counted at once).
   */
  frameDropped(handler: number): void;
  event(event: ForwarderEvent): void;
}

/** The forwarder on this very thread: tests, and servers on fake interfaces. */
export class InProcessForwarder implements ForwarderPort {
  readonly counters = counterTable();
  /** On this thread, a socket is the Link's own: nothing to take over. */
  readonly adoptsSockets = false;
  readonly #forwarder: Forwarder;

  constructor(ports: Interfaces, hooks: ForwarderHooks, log: Logger) {
    this.#forwarder = new Forwarder(
      ports,
      this.counters,
      (link, handler, frame) => hooks.frameOut(link, handler, frame),
      (event) => hooks.event(event),
      log,
    );
  }

  call(command: Command): Promise<unknown> {
    try {
      return Promise.resolve(this.#forwarder.run(command));
    } catch (e) {
      return Promise.reject(e);
    }
  }

  frameIn(link: number, handler: number, frame: Uint8Array): boolean {
    this.#forwarder.fromLink(link, handler, frame);
    return true;
  }

  stop(): Promise<void> {
    this.#forwarder.run({ op: "stop" });
    return Promise.resolve();
  }
}

/** What `list` shows of a handler. */
export interface HandlerInfo extends HandlerSpec, Omit<HandlerState, "udp">, CounterSnapshot {
  /** up: forwarding; down: no link to the peer; degraded: the interface is gone. */
  state: "up" | "down" | "degraded" | "closed";
  link: {
    state: "up" | "down";
    remote: string | null;
    tls: boolean;
    rttMs: number | null;
    /** Who carries the link's frames (Link.socket). */
    socket: "data path" | "runtime" | null;
    /** What carries this handler's frames now: the link's stream, or its UDP path. */
    transport: "tcp" | "udp";
    /** The link's UDP path, when this handler's frames take it while it works. */
    udp: UdpPathState | null;
  };
}

/** A handler as the control plane holds it; its end is open in the forwarder. */
/** A handler's tunnel to a VXLAN endpoint (vxlan_tunnels.ts), instead of a link to a peer. */
export interface VxlanEndpoint {
  host: string;
  port: number;
  vni: number;
}

export class HandlerRef {
  readonly number: number;
  #link: Link | null = null;
  /** The tunnel's number and endpoint, for a handler whose far end is a VXLAN endpoint. */
  #tunnel: { number: number; endpoint: VxlanEndpoint } | null = null;
  #open = true;

  constructor(
    readonly spec: HandlerSpec,
    readonly slot: number,
    private readonly path: DataPath,
  ) {
    this.number = handlerNumber(spec.id);
  }

  get link(): Link | null {
    return this.#link;
  }

  /** Binds the handler to a link (a new one after a reconnect); it starts capturing. */
  attach(link: Link): void {
    this.#link = link;
    const udp = (this.spec.transport ?? "tcp") !== "tcp";
    this.path.send({ op: "attach", handler: this.number, link: link.number, udp });
  }

  /** Forgets a link that went down; captured frames are dropped until the next attach. */
  detach(link: Link): void {
    if (this.#link !== link) return;
    this.#link = null;
    this.path.send({ op: "detach", handler: this.number, link: link.number });
  }

  /**
   * Binds the handler to a tunnel to a VXLAN endpoint, on the VXLAN socket `bind:localPort`;
   * throws if the socket cannot be opened.
   */
  async attachVxlan(endpoint: VxlanEndpoint, bind: string, localPort: number): Promise<void> {
    const number = this.path.newTunnelNumber();
    await this.path.call({
      op: "vxlan",
      link: number,
      handler: this.number,
      bind,
      localPort,
      ...endpoint,
    });
    this.#tunnel = { number, endpoint };
  }

  /** The VXLAN endpoint this handler tunnels to, if it is such a handler. */
  get vxlan(): VxlanEndpoint | null {
    return this.#tunnel?.endpoint ?? null;
  }

  counters(): CounterSnapshot {
    return readCounters(this.path.counters, this.slot);
  }

  info(state: States[number] | undefined): HandlerInfo {
    const link = this.#link;
    const degraded = state?.degraded ?? null;
    const tunnel = this.#tunnel?.endpoint;
    // A tunnel is up while the handler is: UDP has no connection to lose.
    const up = tunnel !== undefined || (link?.isOpen ?? false);
    return {
      ...this.spec,
      state: !this.#open ? "closed" : degraded !== null ? "degraded" : up ? "up" : "down",
      degraded,
      link: tunnel
        ? {
          state: "up",
          remote: `vxlan ${formatHostPort({ hostname: tunnel.host, port: tunnel.port })} ` +
            `vni ${tunnel.vni}`,
          tls: false,
          rttMs: null,
          socket: "data path",
          transport: "udp",
          udp: null,
        }
        : {
          state: link?.isOpen ? "up" : "down",
          remote: link?.remote ?? null,
          tls: link?.tls ?? false,
          rttMs: state?.linkRttMs ?? link?.rttMs ?? null,
          socket: link?.socket ?? null,
          transport: state?.udp?.state === "up" ? "udp" : "tcp",
          udp: state?.udp ?? null,
        },
      ...this.counters(),
      capture: state?.capture ?? { received: 0, dropped: 0, ifDropped: 0 },
      paths: state?.paths ?? [],
    };
  }

  /** Stops capturing and releases both handles; safe to call twice. */
  async close(): Promise<void> {
    if (!this.#open) return;
    this.#open = false;
    this.#link = null;
    if (this.#tunnel) this.path.send({ op: "unvxlan", link: this.#tunnel.number });
    this.#tunnel = null;
    await this.path.closeHandler(this);
  }
}

/** What a direct route goes over: a link to the far Host, or a UDP path punched to it. */
export type RouteLink = Pick<Link, "number" | "remote">;

/** A direct route as the control plane installed it. */
interface Route {
  link: RouteLink;
  peer: string;
  /** The far handler's number, the frames' tag. */
  number: number;
}

/**
 * What the control plane knows of the forwarder's fabric (fabric.ts): the remote MACs learned
 * over each link and the direct routes installed over them.
 */
export class FabricMirror {
  /** Remote MACs a Host learned, by the number of the link they came over. */
  readonly #learned = new Map<number | null, Set<string>>();
  readonly #routes = new Map<number, Map<string, Route>>();
  /** Host-role handlers' MACs, with how many handlers carry each. */
  readonly #carried = new Map<string, number>();

  constructor(private readonly path: DataPath) {}

  /** Whether a Host-role handler of this server carries `mac` (one of our own VMs). */
  carries(mac: string): boolean {
    return this.#carried.has(mac);
  }

  /** Whether a frame from `mac` came in on `via` (and has not aged out since). */
  learned(via: Link, mac: string): boolean {
    return this.#learned.get(via.number)?.has(mac) ?? false;
  }

  /** A direct route to `mac` for the handlers on `via`; false if it was never learned there. */
  addRoute(via: Link, mac: string, link: RouteLink, peer: string, number: number): boolean {
    if (!this.learned(via, mac)) return false;
    let routes = this.#routes.get(via.number);
    if (!routes) this.#routes.set(via.number, routes = new Map());
    routes.set(mac, { link, peer, number });
    this.path.send({ op: "route", via: via.number, mac, link: link.number, peer, number });
    return true;
  }

  /** Every route of `via` over `from` goes over `to` instead, to the same handler. */
  moveRoutes(via: Link, from: RouteLink, to: RouteLink): void {
    for (const [mac, route] of this.#routes.get(via.number) ?? []) {
      if (route.link !== from) continue;
      route.link = to;
      this.path.send({
        op: "route",
        via: via.number,
        mac,
        link: to.number,
        peer: route.peer,
        number: route.number,
      });
    }
  }

  /** What the direct route to `mac` for the handlers on `via` goes over, if there is one. */
  route(via: Link, mac: string): RouteLink | undefined {
    return this.#routes.get(via.number)?.get(mac)?.link;
  }

  /** `mac` goes through the Proxy `via` again; false if it had no direct route there. */
  removeRoute(via: Link, mac: string): boolean {
    if (!this.#routes.get(via.number)?.delete(mac)) return false;
    this.path.send({ op: "unroute", via: via.number, mac });
    return true;
  }

  /** Every route over `link` falls back to the Proxy (the link closed): their MACs. */
  removeRoutesOver(link: RouteLink): string[] {
    const gone: string[] = [];
    for (const routes of this.#routes.values()) {
      for (const [mac, route] of routes) {
        if (route.link !== link) continue;
        routes.delete(mac);
        gone.push(mac);
      }
    }
    this.path.send({ op: "unrouteOver", link: link.number });
    return gone;
  }

  /** The Proxy link `via` closed: what was learned and routed over it goes. */
  forgetLink(via: Link): void {
    this.#learned.delete(via.number);
    this.#routes.delete(via.number);
    this.path.send({ op: "forgetLink", via: via.number });
  }

  /** The links direct routes use. */
  directLinks(): Set<RouteLink> {
    const links = new Set<RouteLink>();
    for (const routes of this.#routes.values()) for (const r of routes.values()) links.add(r.link);
    return links;
  }

  /** Ages idle paths out (every `everyMs`); returns the direct routes forgotten. */
  async sweep(everyMs: number): Promise<{ mac: string; remote: string }[]> {
    const forgotten = await this.path.call({ op: "sweep", everyMs }) as Forgotten[];
    const gone: { mac: string; remote: string }[] = [];
    for (const f of forgotten) {
      this.#learned.get(f.via)?.delete(f.mac);
      if (f.via === null) continue;
      const route = this.#routes.get(f.via)?.get(f.mac);
      if (!route) continue;
      this.#routes.get(f.via)!.delete(f.mac);
      gone.push({ mac: f.mac, remote: route.link.remote });
    }
    return gone;
  }

  /** The forwarder learned `mac` over link `via`. */
  learn(via: number | null, mac: string): void {
    let macs = this.#learned.get(via);
    if (!macs) this.#learned.set(via, macs = new Set());
    macs.add(mac);
  }

  carry(spec: HandlerSpec, delta: 1 | -1): void {
    if (spec.role !== "host") return;
    for (const mac of spec.macs) {
      const n = (this.#carried.get(mac) ?? 0) + delta;
      if (n > 0) this.#carried.set(mac, n);
      else this.#carried.delete(mac);
    }
  }
}

/** The control plane's handle on the data path. */
export class DataPath {
  readonly fabric: FabricMirror = new FabricMirror(this);
  /** Unicast switched between handlers `from` and `to` whose links differ (direct.ts). */
  onSwitched: ((from: number, to: number, src: string, dst: string) => void) | null = null;
  /** A UDP path that belongs to no link (one punched to a Host, direct.ts) went up or down. */
  onPunched: ((link: number, up: boolean, why: string) => void) | null = null;
  readonly #port: ForwarderPort;
  readonly #links = new Map<number, Link>();
  readonly #handlers = new Map<number, HandlerRef>();
  readonly #freeSlots: number[] = [];
  #nextSlot = 0;
  /** Tunnels are numbered apart from links (link.ts counts from 1). */
  #nextTunnel = 0x40000000;
  #stopped = false;

  /** `open` makes the port, given what it hands back. */
  constructor(open: (hooks: ForwarderHooks) => ForwarderPort, private readonly log: Logger) {
    this.#port = open({
      frameOut: (link, handler, frame) => this.#frameOut(link, handler, frame),
      frameDropped: (handler) => {
        const ref = this.#handlers.get(handler);
        if (ref) this.counters[ref.slot * SLOT_SIZE + Counter.mainDropLink]++;
      },
      event: (event) => this.#event(event),
    });
  }

  get counters(): Float64Array {
    return this.#port.counters;
  }

  /** Who takes a plain peer link's socket over: the data-path worker, if it runs on one. */
  get socketOwner(): SocketOwner | undefined {
    if (!this.#port.adoptsSockets) return undefined;
    return {
      adopt: (link, fd, buffered, stallMs, keepaliveMs) => {
        this.#links.set(link.number, link);
        this.send({
          op: "adopt",
          link: link.number,
          remote: link.remote,
          fd,
          buffered: toBase64(buffered),
          stallMs,
          keepaliveMs,
        });
      },
      sendControl: (link, message) =>
        this.send({ op: "control", link: link.number, message: toBase64(message) }),
      tune: (link, stallMs, keepaliveMs) =>
        this.send({ op: "tune", link: link.number, stallMs, keepaliveMs }),
      close: (link, notify) => this.send({ op: "closeSocket", link: link.number, notify }),
    };
  }

  /** Opens a handler's end in the forwarder; throws a VnetError if the device cannot be opened. */
  async open(spec: HandlerSpec, tolerant: boolean): Promise<HandlerRef> {
    const slot = this.#freeSlots.pop() ?? this.#nextSlot++;
    if (slot >= MAX_HANDLERS) {
      this.#nextSlot--;
      throw new VnetError(`this server holds ${MAX_HANDLERS} handlers already`, {
        code: ErrorCode.Refused,
      });
    }
    try {
      await this.#port.call({ op: "open", spec, slot, tolerant });
    } catch (e) {
      this.#freeSlots.push(slot);
      throw e;
    }
    this.fabric.carry(spec, 1);
    const handler = new HandlerRef(spec, slot, this);
    this.#handlers.set(handler.number, handler);
    return handler;
  }

  async closeHandler(handler: HandlerRef): Promise<void> {
    this.fabric.carry(handler.spec, -1);
    this.#handlers.delete(handler.number);
    await this.call({ op: "close", handler: handler.number });
    this.#freeSlots.push(handler.slot);
  }

  newTunnelNumber(): number {
    return this.#nextTunnel++;
  }

  /** Opens the server's UDP socket for its links' UDP paths; the port it is bound to. */
  async udpListen(bind: string, port: number): Promise<number> {
    return await this.call({ op: "udpListen", bind, port }) as number;
  }

  /** Gives `link` the UDP path the two servers agreed; false if the forwarder has none. */
  async udpOpen(link: Link, path: UdpPathAgreed): Promise<boolean> {
    return await this.call({ op: "udpOpen", link: link.number, ...path }) as boolean;
  }

  /**
   * `link`'s UDP path carries `handlers`' frames too (a direct link or a punched path: ours in,
   * the far Host's out); false if it has none or cannot take them all (then it takes none).
   */
  async udpCarry(link: Pick<Link, "number">, handlers: number[]): Promise<boolean> {
    return await this.call({ op: "udpCarry", link: link.number, handlers }) as boolean;
  }

  /**
   * Opens a UDP path punched to another Host as the link numbered `path.link` (a tunnel
   * number); false if the forwarder has no UDP socket, or the path cannot carry every handler
   * of `carry` (plain: a VNI of 0 or one taken).
   */
  async udpPunch(
    path: { link: number; remote: string; allow: number; carry: number[] } & UdpPathAgreed,
  ): Promise<boolean> {
    return await this.call({ op: "udpPunch", ...path }) as boolean;
  }

  /** The next epoch's keys of `link`'s sealed UDP path. */
  async udpRekey(link: Link, keys: WireKeys, peerHasKeys: boolean): Promise<boolean> {
    return await this.call({ op: "udpRekey", link: link.number, keys, peerHasKeys }) as boolean;
  }

  /** A probe datagram with `token` is to be sent back (four copies at most); false if not. */
  async udpProbe(token: number): Promise<boolean> {
    return await this.call({ op: "udpProbe", token }) as boolean;
  }

  /** Every UDP path's state, by link number. */
  async udpStates(): Promise<Record<number, UdpPathState>> {
    return await this.call({ op: "udpState" }) as Record<number, UdpPathState>;
  }

  /** The UDP socket's own counters; null if the server has none. */
  async udpPort(): Promise<UdpPortStats | null> {
    return await this.call({ op: "udpPort" }) as UdpPortStats | null;
  }

  /** A peer link: its frames cross between it and the forwarder from now on. */
  addLink(link: Link): void {
    this.#links.set(link.number, link);
    this.send({ op: "link", link: link.number, remote: link.remote });
  }

  removeLink(link: Link): void {
    if (!this.#links.delete(link.number)) return;
    this.send({ op: "unlink", link: link.number });
  }

  /** A frame that came in on `link` for handler `number`. */
  frameIn(link: Link, number: number, frame: Uint8Array): void {
    this.#port.frameIn(link.number, number, frame);
  }

  /** A frame for `handler` that a main-thread link accepted was dropped from its send queue. */
  sendDropped(handler: HandlerRef, reason: "full" | "aqm"): void {
    const field = reason === "aqm" ? Counter.mainDropAqm : Counter.mainDropLink;
    this.counters[handler.slot * SLOT_SIZE + field]++;
  }

  /** What only the forwarder knows of each handler, by number. */
  states(): Promise<States> {
    return this.call({ op: "state" }) as Promise<States>;
  }

  /** Runs a command in order; resolves with its reply. */
  call(command: Command): Promise<unknown> {
    if (this.#stopped) return Promise.resolve(null);
    return this.#port.call(command);
  }

  /** Runs a command in order; a failure is logged (none is expected). */
  send(command: Command): void {
    this.call(command).catch((e) =>
      this.log.error("data path command failed", { op: command.op, error: messageOf(e) })
    );
  }

  async stop(): Promise<void> {
    if (this.#stopped) return;
    await this.#port.call({ op: "stop" });
    this.#stopped = true;
    await this.#port.stop();
  }

  #frameOut(link: number, handler: number, frame: Uint8Array): boolean {
    return this.#links.get(link)?.sendFrame(handler, frame) ?? false;
  }

  #event(event: ForwarderEvent): void {
    switch (event.event) {
      case "learned":
        return this.fabric.learn(event.via, event.mac);
      case "switched":
        return this.onSwitched?.(event.from, event.to, event.src, event.dst);
      case "message":
        return this.#links.get(event.link)?.receive(event.type, event.payload);
      case "closed":
        return this.#links.get(event.link)?.close(event.reason);
      case "udp": {
        const link = this.#links.get(event.link);
        if (!link) return this.onPunched?.(event.link, event.up, event.why);
        // Both are news to an operator: frames changed paths.
        const what = event.up ? "UDP path up: frames go by UDP" : "UDP path down: frames go by TCP";
        (event.up ? this.log.info : this.log.warn).call(this.log, what, {
          remote: link.remote,
          why: event.why,
        });
        return;
      }
    }
  }
}
