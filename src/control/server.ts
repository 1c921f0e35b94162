/**
 * A VNET server: holds any number of handlers, in either role, and the links that carry them.
 * It puts the control plane's parts together:
 *
 *   acceptor.ts          accepting, fairness before authentication, the handshake
 *   client_requests.ts   create, close, migrate          (control links)
 *   peer_requests.ts     attach, detach, sync            (peer links)
 *   registry.ts          the handlers and their MACs     peers.ts   the servers we dial
 *   state.ts             the --state file                events.ts  recent link events
 *
 * and keeps what ties them: which link is which, how many there are, and the state file.
 */
import { formatHostPort, type HostPort } from "../addr.ts";
import { ErrorCode, messageOf, VnetError } from "../errors.ts";
import { type DeviceInfo } from "../dataplane/interfaces.ts";
import { type Interfaces } from "../dataplane/ports.ts";
import { VXLAN_PORT } from "../dataplane/vxlan.ts";
import { type UdpPortStats } from "../dataplane/udp_peers.ts";
import {
  DataPath,
  type ForwarderHooks,
  type ForwarderPort,
  InProcessForwarder,
} from "../dataplane/data_path.ts";
import { dial } from "../link/dial.ts";
import { Link, type LinkEvents } from "../link/link.ts";
import { loadIdentity, type PeerIdentity } from "../link/peer_cert.ts";
import { type SshOptions } from "../link/ssh.ts";
import { type Logger } from "../log.ts";
import { type Accepted, Acceptor, type TlsFiles } from "./acceptor.ts";
import { serveClient, servePeer } from "./dispatch.ts";
import { DirectPaths } from "./direct.ts";
import { EventLog } from "./events.ts";
import { type MacRange } from "./mac_policy.ts";
import { closeStale } from "./peer_requests.ts";
import { type Peer, Peers } from "./peers.ts";
import { Registry } from "./registry.ts";
import * as rpc from "./rpc.ts";
import { type ServerContext } from "./server_context.ts";
import { StateFile } from "./state.ts";
import { UdpTransport } from "./udp_transport.ts";
import { type Transport } from "../dataplane/handler.ts";

interface ServerOptions {
  listen: HostPort;
  key: CryptoKey;
  tls?: TlsFiles;
  /** The interfaces of an in-process forwarder (tests), when `forwarder` is not given. */
  ports?: Interfaces;
  /** Starts the forwarder (the data-path worker in a server); in-process on `ports` if absent. */
  forwarder?: (hooks: ForwarderHooks) => ForwarderPort;
  listDevices: () => DeviceInfo[];
  log: Logger;
  /** Keepalive interval of peer links; 3 silent intervals close a link. */
  keepaliveMs?: number;
  /** Where handlers are saved and restored from across restarts. */
  statePath?: string;
  /** Unauthenticated connections at once, and from one address. */
  maxHandshakes?: number;
  maxHandshakesPerAddress?: number;
  /** Authenticated links at once, of each kind (control, peer). */
  maxConnections?: number;
  allowLiveMac?: boolean;
  /** `--allow-mac`: the only MAC ranges handlers may carry; empty: any. */
  allowMacs?: MacRange[];
  /** Accepted-side handlers whose peer stays away this long are closed (orphans). */
  orphanGraceMs?: number;
  /** Direct Host↔Host paths (direct.ts); on by default, off with --no-direct. */
  direct?: boolean;
  /** The UDP port of VXLAN tunnels (vxlan_tunnels.ts); 4789 by default. */
  vxlanPort?: number;
  /** The UDP port of the links' UDP paths (udp_transport.ts); the listen port by default, 0: off. */
  udpPort?: number;
  /** How the handlers created here cross, unless the client says; `auto` by default. */
  transport?: Transport;
}

/** A control link that sends no request for this long is closed. */
const CONTROL_IDLE_MS = 15 * 60_000;

export class Server implements ServerContext {
  readonly log: Logger;
  readonly registry: Registry;
  readonly peers: Peers;
  readonly events = new EventLog();
  readonly direct: DirectPaths;
  /** Made by `start`, once the UDP socket is open (or UDP is off). */
  udp: UdpTransport;
  readonly transport: Transport;
  readonly allowLiveMac: boolean;
  readonly allowMacs: readonly MacRange[];
  id = rpc.randomKey();
  #options: ServerOptions;
  #acceptor: Acceptor;
  #links = { control: new Set<Link>(), peer: new Set<Link>() };
  #stopping = false;
  /** Peers owed a sync (server_context.ts). */
  #owed = new Set<Peer>();
  #sweep: ReturnType<typeof setInterval> | undefined;
  #state: StateFile;
  /** Our certificate and key as proved to the peers we dial (TLS only). */
  #identity: Promise<PeerIdentity> | null = null;

  constructor(options: ServerOptions) {
    this.#options = options;
    this.log = options.log;
    this.allowLiveMac = options.allowLiveMac ?? false;
    this.allowMacs = options.allowMacs ?? [];
    const forwarder = options.forwarder ??
      ((hooks: ForwarderHooks) => new InProcessForwarder(options.ports!, hooks, this.log));
    this.registry = new Registry(new DataPath(forwarder, this.log));
    this.transport = options.transport ?? "auto";
    this.udp = new UdpTransport(this.registry.dataPath, this.log, 0);
    this.peers = new Peers({
      dial: (peer, timeoutMs) => this.#dial(peer, timeoutMs),
      reconnected: (peer, link) => this.#reattach(peer, link),
    }, this.log);
    this.#state = new StateFile(options.statePath, this.registry, this.peers, this.log);
    this.direct = new DirectPaths(this.registry, options.direct ?? true, {
      dial: async (addr, keepaliveMs, timeoutMs) => {
        const link = await this.#dialLink(addr, undefined, timeoutMs, keepaliveMs);
        // Before the token is presented: both ends find the path there when they install.
        await this.udp.offer(link);
        return link;
      },
      aeadOf: (link) => this.udp.aeadOf(link),
    }, this.log);
    this.#acceptor = new Acceptor({
      listen: options.listen,
      key: options.key,
      tls: options.tls,
      log: this.log,
      maxHandshakes: options.maxHandshakes ?? 64,
      maxPerAddress: options.maxHandshakesPerAddress ?? 16,
      onAccepted: (a) => this.#accepted(a),
      onRefused: (remote, reason) => this.events.add({ kind: "refused", remote, reason }),
    });
  }

  get vxlanBind(): { address: string; port: number } {
    return { address: this.#options.listen.hostname, port: this.#options.vxlanPort ?? VXLAN_PORT };
  }

  get address(): string {
    return formatHostPort(this.#options.listen);
  }

  /** Restores saved handlers, binds the socket (throws a VnetError if it cannot), accepts. */
  /**
   * Binds the port, opens UDP, restores the state file, and only then takes connections: a peer
   * that reconnects at once (it was waiting for us) must find the restored handlers, or its
   * `sync` closes nothing and a handler it closed while we were down stays here for good.
   */
  async start(): Promise<void> {
    await this.#acceptor.listen();
    const udpPort = this.#options.udpPort ?? this.#options.listen.port;
    if (udpPort !== 0) {
      const { hostname } = this.#options.listen;
      try {
        const bound = await this.registry.dataPath.udpListen(hostname, udpPort);
        this.udp = new UdpTransport(this.registry.dataPath, this.log, bound);
      } catch (e) {
        throw new VnetError(
          `cannot open UDP port ${udpPort} on ${hostname}: ${messageOf(e)}; give another with ` +
            "--udp-port, or --udp-port 0 to carry every frame over the links",
          { code: ErrorCode.System, cause: e },
        );
      }
    }
    const restored = await this.#state.restore(this.id, this.vxlanBind);
    if (restored) {
      this.id = restored.serverId;
      for (const peer of restored.owesSync) this.#owed.add(peer);
      if (restored.count > 0) this.save();
      for (const peer of restored.reconnect) peer.scheduleReconnect();
    }
    const grace = this.#options.orphanGraceMs ?? 120_000;
    this.#sweep = setInterval(() => closeStale(this, grace), Math.min(10_000, grace));
    this.#acceptor.accept();
  }

  devices(): DeviceInfo[] {
    return this.#options.listDevices();
  }

  checkDeviceNotCarryingLink(device: string, link: Link): void {
    const dev = this.devices().find((d) => d.name === device);
    if (link.local && dev?.addresses.includes(link.local)) {
      throw new VnetError(
        `${device} carries the link to the peer itself (${link.local}): give the VMs' own ` +
          "interface (their tap or bridge), not the uplink",
        { code: ErrorCode.Refused },
      );
    }
  }

  #accepted(a: Accepted): void {
    const links = this.#links[a.kind];
    const max = this.#options.maxConnections ?? 1024;
    const link = new Link(a.conn, a.reader, {
      remote: a.remote,
      local: a.local,
      tls: Boolean(this.#options.tls),
      log: this.log,
      events: this.#linkEvents(a.kind),
      keepaliveMs: a.kind === "peer" ? this.#options.keepaliveMs : 0,
      idleTimeoutMs: a.kind === "control" ? CONTROL_IDLE_MS : 0,
      socketOwner: a.kind === "peer" ? this.registry.dataPath.socketOwner : undefined,
      role: "acceptor",
      secret: a.secret,
    });
    if (links.size >= max) {
      link.close("too many connections", `server busy: ${max} ${a.kind} connections already`);
      this.events.add({ kind: "refused", remote: a.remote, reason: `${max} ${a.kind} links` });
      return;
    }
    links.add(link);
    if (a.kind === "peer") this.registry.dataPath.addLink(link);
    this.log.info(a.kind === "peer" ? "peer link up" : "client connected", {
      remote: a.remote,
      tls: link.tls,
      cert: a.cert || undefined,
    });
    if (a.kind === "peer") this.events.add({ kind: "connect", remote: a.remote });
  }

  #linkEvents(kind: "control" | "peer"): LinkEvents {
    return {
      // Frames are taken only from the link their handler is attached to.
      // Frames are taken only from the link their handler is attached to (forwarder.ts).
      onFrame: kind === "peer"
        ? (link, number, frame) => this.registry.dataPath.frameIn(link, number, frame)
        : undefined,
      onRequest: (op, body, link) =>
        kind === "control" ? serveClient(this, op, body) : servePeer(this, op, body, link),
      onClose: (link, reason) => this.#linkClosed(link, reason, kind),
      onSendDrop: (_link, number, reason) => {
        const handler = this.registry.byNumber(number);
        if (handler) this.registry.dataPath.sendDropped(handler, reason);
      },
    };
  }

  #linkClosed(link: Link, reason: string, kind: "control" | "peer"): void {
    this.#links[kind].delete(link);
    if (kind === "control" || this.#stopping) return;
    this.direct.linkClosed(link);
    let waiting = 0;
    for (const entry of this.registry.values()) {
      if (entry.handler.link !== link) continue;
      entry.handler.detach(link);
      if (!entry.dial) entry.downSince = Date.now();
      waiting++;
    }
    // A link no handler used any more was closed on purpose (close, migrate): nothing to watch.
    if (waiting > 0) {
      this.log.warn("peer link down", { remote: link.remote, reason, handlers: waiting });
    } else this.log.info("peer link closed", { remote: link.remote, reason });
    this.events.add({ kind: "disconnect", remote: link.remote, reason });
    for (const peer of this.peers.values()) {
      if (peer.link === link) peer.scheduleReconnect();
    }
    this.registry.dataPath.removeLink(link);
    this.udp.forget(link);
  }

  async remove(id: string): Promise<void> {
    const entry = this.registry.get(id);
    if (entry?.handler.spec.role === "proxy") this.direct.forget(entry.handler.spec.macs);
    if (!await this.registry.remove(id)) return;
    this.dropUnusedPeers();
    this.save();
  }

  dropUnusedPeers(): void {
    const used = new Set<Peer>(this.#owed);
    for (const e of this.registry.values()) if (e.dial) used.add(e.dial.peer);
    this.peers.dropUnused(used);
  }

  owesSync(peer: Peer): void {
    this.#owed.add(peer);
    const link = peer.link;
    if (!link?.isOpen) return peer.scheduleReconnect();
    this.#sync(peer, link).catch((e) =>
      this.log.warn("sync failed; retried on reconnect", { peer: link.remote, error: messageOf(e) })
    );
  }

  /** Writes every handler to the state file, if there is one. */
  save(): void {
    if (!this.#stopping) this.#state.save(this.id, this.#owed);
  }

  /** The UDP socket's own counters (datagrams refused, from strangers); null without one. */
  udpPort(): Promise<UdpPortStats | null> {
    return this.registry.dataPath.udpPort();
  }

  async list(): Promise<rpc.ListedHandler[]> {
    const states = await this.registry.dataPath.states();
    return [...this.registry.values()].map((e) => ({
      ...e.handler.info(states[e.handler.number]),
      dialled: e.dial ? "out" : "in",
      reconnects: e.dial?.peer.reconnects ?? 0,
    }));
  }

  async #dial(peer: Peer, timeoutMs: number): Promise<Link> {
    const link = await this.#dialLink(peer.addr, peer.ssh, timeoutMs, this.#options.keepaliveMs);
    // Before the handlers attach: they find the link's UDP path there (or none).
    await this.udp.offer(link);
    return link;
  }

  async #dialLink(
    addr: HostPort,
    ssh: SshOptions | undefined,
    timeoutMs: number,
    keepaliveMs: number | undefined,
  ): Promise<Link> {
    const tls = this.#options.tls;
    if (tls) this.#identity ??= loadIdentity(tls.cert, tls.key);
    const link = await dial(addr, {
      timeoutMs,
      identity: tls ? await this.#identity! : undefined,
      ssh,
      key: this.#options.key,
      kind: "peer",
      tlsCa: tls?.ca,
      log: this.log,
      events: this.#linkEvents("peer"),
      keepaliveMs,
      socketOwner: this.registry.dataPath.socketOwner,
    });
    this.#links.peer.add(link);
    this.registry.dataPath.addLink(link);
    this.log.info("peer link up", { remote: link.remote, tls: link.tls, dialled: true });
    this.events.add({ kind: "connect", remote: link.remote });
    return link;
  }

  /**
   * After a reconnect: tell the peer which handlers we still hold with it (it closes the
   * others), then ask it to attach each. One refused handler does not hold up the rest.
   */
  async #reattach(peer: Peer, link: Link): Promise<void> {
    this.events.add({ kind: "reconnect", remote: link.remote });
    const mine = [...this.registry.entries()].filter(([, e]) => e.dial?.peer === peer);
    await this.#sync(peer, link);
    for (const [id, entry] of mine) {
      try {
        await rpc.call(link, "attach", entry.dial!.attach);
        entry.handler.attach(link);
        this.log.info("handler re-attached", { handler: id, peer: link.remote });
      } catch (e) {
        this.log.error("peer refused to re-attach handler", { handler: id, error: messageOf(e) });
      }
    }
  }

  /** Tells `peer` which handlers we hold with it; it closes the others. */
  async #sync(peer: Peer, link: Link): Promise<void> {
    const handlers = [...this.registry.entries()].filter(([, e]) => e.dial?.peer === peer)
      .map(([id]) => id);
    await rpc.call(link, "sync", { origin: this.id, handlers });
    if (this.#owed.delete(peer)) {
      this.dropUnusedPeers();
      this.save();
    }
  }

  /** Closes every handler and link and stops listening. */
  async stop(): Promise<void> {
    if (this.#stopping) return;
    this.#stopping = true;
    clearInterval(this.#sweep);
    this.direct.close();
    this.#acceptor.close();
    for (const id of [...this.registry.entries()].map(([id]) => id)) {
      await this.registry.remove(id);
    }
    this.peers.closeAll();
    for (const link of [...this.#links.control, ...this.#links.peer]) {
      link.close("server shutting down");
    }
    await this.registry.dataPath.stop();
    this.log.info("server stopped");
  }
}
