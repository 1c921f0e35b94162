/**
 * A VNET server: holds any number of handlers, in either role, and the links that carry them.
 *
 * Setting up a handler (the paper's client contacting either server):
 *   1. A client opens a control link and asks this server to `create` a handler.
 *   2. This server plays the role the client contacted (`via`), opens its own end (capture and
 *      injector), and dials the other server, or reuses the link it already has to it.
 *   3. It asks the other server to `attach` the other end over that link; the other server
 *      opens its end and binds it to the link. Both ends now forward frames, and the client
 *      gets the handler's id.
 *
 * The dialling side owns the link: if it breaks, the dialler reconnects with backoff and
 * re-attaches every handler it carries; the other side's handlers wait, down, meanwhile.
 */
import { type ConnectionKind, handshake, writeAll } from "../link/auth.ts";
import { checkProof, loadIdentity, type PeerIdentity } from "../link/peer_cert.ts";
import { formatHostPort, type HostPort } from "../addr.ts";
import { messageOf, VnetError } from "../errors.ts";
import { Handler, type HandlerInfo, type HandlerSpec } from "../dataplane/handler.ts";
import { dial, Link, type LinkEvents, withTimeout } from "../link/link.ts";
import { type Logger } from "../ops/log.ts";
import { parseMac } from "../dataplane/mac.ts";
import { type Interfaces } from "../dataplane/ports.ts";
import { encodeMessage, MessageReader, MessageType } from "../link/wire.ts";
import { type Role } from "../dataplane/filter.ts";
import { parseGateway, type SshOptions } from "../link/ssh.ts";
import { loadState, type SavedHandler, saveState } from "./state.ts";

export interface TlsFiles {
  /** PEM certificate chain and key this server presents. */
  cert: string;
  key: string;
  /** PEM CA that signs the peers' certificates; peers are verified against it. */
  ca: string;
}

export interface ServerOptions {
  listen: HostPort;
  key: CryptoKey;
  tls?: TlsFiles;
  ports: Interfaces;
  listDevices: () => unknown[];
  log: Logger;
  /** Keepalive interval of peer links; 3 silent intervals close a link. */
  keepaliveMs?: number;
  /** Where handlers are saved and restored from across restarts. */
  statePath?: string;
}

export interface ListedHandler extends HandlerInfo {
  /** Which side dialled the link: this server ("out") or the peer ("in"). */
  dialled: "out" | "in";
  reconnects: number;
}

/** The dialled connection to one peer server, kept up for as long as handlers need it. */
class Peer {
  link: Link | null = null;
  reconnects = 0;
  #connecting: Promise<Link> | null = null;
  #retry: ReturnType<typeof setTimeout> | undefined;
  #failures = 0;
  #closed = false;

  constructor(
    readonly addr: HostPort,
    readonly ssh: SshOptions | undefined,
    private readonly open: (peer: Peer, timeoutMs: number) => Promise<Link>,
    private readonly onReconnect: (peer: Peer, link: Link) => Promise<void>,
    private readonly log: Logger,
  ) {}

  /** The open link, dialling if there is none. */
  /** The open link, dialling (within `timeoutMs`) if there is none. */
  connect(timeoutMs = DIAL_TIMEOUT_MS): Promise<Link> {
    if (this.link?.isOpen) return Promise.resolve(this.link);
    this.#connecting ??= this.open(this, timeoutMs).then((link) => {
      this.link = link;
      this.#failures = 0;
      return link;
    }).finally(() => this.#connecting = null);
    return this.#connecting;
  }

  /** Called when the link went down while handlers still need it. */
  scheduleReconnect(): void {
    if (this.#closed || this.#retry !== undefined) return;
    // Exponential backoff from 0.5 s to 30 s, with ±50% jitter so many servers don't sync up.
    const base = Math.min(30_000, 500 * 2 ** this.#failures);
    const delay = Math.round(base * (0.5 + Math.random()));
    this.log.info("reconnecting", { peer: formatHostPort(this.addr), inMs: delay });
    this.#retry = setTimeout(async () => {
      this.#retry = undefined;
      try {
        const link = await this.connect();
        this.reconnects++;
        await this.onReconnect(this, link);
      } catch (e) {
        this.#failures++;
        this.log.warn("reconnect failed", { peer: formatHostPort(this.addr), error: messageOf(e) });
        if (this.link?.isOpen) this.link.close("re-attach failed");
        this.scheduleReconnect();
      }
    }, delay);
  }

  close(): void {
    this.#closed = true;
    clearTimeout(this.#retry);
    this.link?.close("no handlers use this peer any more");
  }
}

interface Entry {
  handler: Handler;
  /** Set on the side that dialled: the peer, and what to ask of it again after a reconnect. */
  dial?: { peer: Peer; attach: Record<string, unknown> };
}

const MAX_HANDSHAKING = 64;
/** How long a server tries to reach its peer when it has no link to it. */
const DIAL_TIMEOUT_MS = 10_000;

export class Server {
  #options: ServerOptions;
  #log: Logger;
  #listener: Deno.Listener | null = null;
  #entries = new Map<string, Entry>();
  #byNumber = new Map<number, Handler>();
  #peers = new Map<string, Peer>();
  #links = new Set<Link>();
  #stopping = false;
  /** Connections still in their handshake; past the limit new ones are closed at once. */
  #handshaking = 0;
  /** Our certificate and key as proved to the peers we dial (TLS only). */
  #identity: Promise<PeerIdentity> | null = null;
  #lastFloodLog = 0;

  constructor(options: ServerOptions) {
    this.#options = options;
    this.#log = options.log;
  }

  get address(): string {
    return formatHostPort(this.#options.listen);
  }

  /** Binds the listening socket (throws a VnetError if it cannot) and starts accepting. */
  start(): void {
    const { listen, tls } = this.#options;
    try {
      this.#listener = tls
        ? Deno.listenTls({
          hostname: listen.hostname,
          port: listen.port,
          cert: tls.cert,
          key: tls.key,
        })
        : Deno.listen({ hostname: listen.hostname, port: listen.port });
    } catch (e) {
      throw new VnetError(`cannot listen on ${this.address}: ${messageOf(e)}`, { cause: e });
    }
    this.#log.info("server listening", { addr: this.address, tls: Boolean(tls) });
    this.#acceptLoop(this.#listener);
    this.#restore();
  }

  async #acceptLoop(listener: Deno.Listener): Promise<void> {
    this.#log.debug("accept loop started");
    try {
      for await (const conn of listener) this.#serve(conn);
    } catch (e) {
      if (!this.#stopping) this.#log.error("accept loop failed", { error: messageOf(e) });
    }
    this.#log.debug("accept loop stopped");
  }

  /** Authenticates one incoming connection and turns it into a control or peer link. */
  async #serve(conn: Deno.Conn): Promise<void> {
    const remote = conn.remoteAddr.transport === "tcp"
      ? formatHostPort(conn.remoteAddr as Deno.NetAddr)
      : "unknown";
    // A flood of connections must not starve established links: each costs a few KB and at
    // most HANDSHAKE_TIMEOUT_MS, and only MAX_HANDSHAKING of them at a time.
    if (this.#handshaking >= MAX_HANDSHAKING) {
      if (Date.now() - this.#lastFloodLog > 5_000) {
        this.#lastFloodLog = Date.now();
        this.#log.warn("too many connections in handshake, refusing new ones", { remote });
      }
      conn.close();
      return;
    }
    this.#handshaking++;
    try {
      await this.#authenticate(conn, remote);
    } finally {
      this.#handshaking--;
    }
  }

  async #authenticate(conn: Deno.Conn, remote: string): Promise<void> {
    const tls = Boolean(this.#options.tls);
    let kind: ConnectionKind;
    let peerCert = "";
    const reader = new MessageReader(conn);
    try {
      if (tls) {
        await withTimeout(
          (conn as Deno.TlsConn).handshake(),
          10_000,
          () => "TLS handshake timed out",
        );
      } else {
        (conn as Deno.TcpConn).setNoDelay(true);
      }
      const done = await handshake(conn, reader, {
        key: this.#options.key,
        side: "acceptor",
        kind: "acceptor",
      });
      kind = done.kind;
      // With TLS, a dialling server must also prove the certificate it holds (peer_cert.ts).
      if (this.#options.tls && kind === "peer") {
        peerCert = await this.#checkPeerCertificate(conn, reader, done.peer, done.own);
      }
    } catch (e) {
      this.#log.warn("connection refused", { remote, reason: messageOf(e) });
      try {
        conn.close();
      } catch { /* already closed */ }
      return;
    }
    if (kind !== "control" && kind !== "peer") {
      this.#log.warn("connection refused", { remote, reason: `unexpected kind ${kind}` });
      conn.close();
      return;
    }
    const link = new Link(conn, reader, {
      remote,
      tls,
      log: this.#log,
      events: this.#events(kind),
      keepaliveMs: kind === "peer" ? this.#options.keepaliveMs : 0,
    });
    this.#links.add(link);
    this.#log.info(kind === "peer" ? "peer link up" : "client connected", {
      remote,
      tls,
      cert: peerCert || undefined,
    });
  }

  /** Reads the dialler's certificate proof; on a bad one, tells it why and throws. */
  async #checkPeerCertificate(
    conn: Deno.Conn,
    reader: MessageReader,
    dialerNonce: Uint8Array,
    acceptorNonce: Uint8Array,
  ): Promise<string> {
    const m = await withTimeout(reader.message(), 10_000, () => "no certificate proof in time");
    try {
      if (m?.type !== MessageType.CertProof) {
        throw new VnetError(
          "the dialling server proved no certificate (give it --tls-cert/--tls-key/--tls-ca)",
        );
      }
      return await checkProof(m.payload, this.#options.tls!.ca, dialerNonce, acceptorNonce);
    } catch (e) {
      const text = `certificate refused: ${messageOf(e)}`;
      await writeAll(conn, encodeMessage(MessageType.Error, new TextEncoder().encode(text)))
        .catch(() => {});
      throw new VnetError(text, { cause: e });
    }
  }

  #events(kind: "control" | "peer"): LinkEvents {
    return {
      onFrame: (number, frame) => {
        const handler = this.#byNumber.get(number);
        if (handler) handler.receive(frame);
      },
      onRequest: (op, body, link) =>
        kind === "control" ? this.#control(op, body) : this.#peerRequest(op, body, link),
      onClose: (link, reason) => this.#linkClosed(link, reason, kind),
    };
  }

  #linkClosed(link: Link, reason: string, kind: "control" | "peer"): void {
    this.#links.delete(link);
    if (kind === "control") return;
    let waiting = 0;
    for (const entry of this.#entries.values()) {
      if (entry.handler.link !== link) continue;
      entry.handler.detach(link);
      waiting++;
    }
    if (!this.#stopping) {
      this.#log.warn("peer link down", { remote: link.remote, reason, handlers: waiting });
    }
    for (const peer of this.#peers.values()) {
      if (peer.link === link && !this.#stopping) peer.scheduleReconnect();
    }
  }

  // --- requests from clients -------------------------------------------------------------

  #control(op: string, body: Record<string, unknown>): Promise<unknown> {
    switch (op) {
      case "create":
        return this.#create(body);
      case "list":
        return Promise.resolve({ handlers: this.list() });
      case "close":
        return this.#closeHandler(String(body.handler ?? ""));
      case "devices":
        return Promise.resolve({ devices: this.#options.listDevices() });
      case "migrate":
        return this.#migrate(body);
      default:
        return Promise.reject(new VnetError(`unknown request '${op}'`));
    }
  }

  async #create(body: Record<string, unknown>): Promise<unknown> {
    const req = parseCreate(body);
    const ownRole = req.via;
    const otherRole: Role = ownRole === "proxy" ? "host" : "proxy";
    const own = req[ownRole];
    const other = req[otherRole];
    const id = this.#newId();
    const dialTo = req.peer ?? other.addr;
    // Answer within the client's own timeout, so that it hears why, not just "no answer".
    const budget = typeof body.timeoutMs === "number" ? body.timeoutMs : 20_000;
    const dialMs = Math.max(1_000, Math.min(DIAL_TIMEOUT_MS, budget - 2_000));
    const handler = this.#open({
      id,
      role: ownRole,
      device: own.dev,
      macs: req.macs,
      multicast: req.multicast,
      peer: formatHostPort(dialTo),
    });
    try {
      const peer = this.#peer(dialTo, req.ssh);
      let link: Link;
      try {
        link = await peer.connect(dialMs);
      } catch (e) {
        // Advice on reaching the other server only when it could not be reached: through ssh,
        // or when TLS or the secret refused it, the message itself says what is wrong.
        const refused = /TLS|certificate|authentication failed/.test(messageOf(e));
        const hint = req.ssh || refused
          ? ""
          : (ownRole === "proxy"
            ? "; if the host is behind NAT or a firewall, run the client with --via host so the host dials out"
            : "; if the proxy is behind NAT or a firewall, run the client with --via proxy") +
            (req.peer
              ? ""
              : `; if the ${ownRole} server reaches it at another address than the client's, give that with --${otherRole}-peer; if only SSH gets through, use --ssh GATEWAY`);
        throw new VnetError(
          `the ${ownRole} server could not reach the ${otherRole} server: ${messageOf(e)}${hint}`,
          { cause: e },
        );
      }
      const attach = {
        id,
        role: otherRole,
        device: other.dev,
        macs: req.macs,
        multicast: req.multicast,
        peer: formatHostPort(own.addr),
      };
      try {
        await link.request("attach", attach, Math.max(1_000, budget - dialMs - 1_000));
      } catch (e) {
        throw new VnetError(`the ${otherRole} server refused: ${messageOf(e)}`, { cause: e });
      }
      this.#entries.set(id, { handler, dial: { peer, attach } });
      handler.attach(link);
      this.#save();
      this.#log.info("handler up", { handler: id, role: ownRole, peer: link.remote });
      return { id };
    } catch (e) {
      this.#byNumber.delete(handler.number);
      await handler.close();
      this.#dropIdlePeers();
      throw e;
    }
  }

  async #closeHandler(id: string): Promise<unknown> {
    const entry = this.#entries.get(id);
    if (!entry) throw new VnetError(`no handler '${id}' on this server (see vnet client list)`);
    const link = entry.handler.link;
    let peerClosed = false;
    if (link?.isOpen) {
      try {
        await link.request("detach", { handler: id }, 5_000);
        peerClosed = true;
      } catch (e) {
        this.#log.warn("peer did not close its end", { handler: id, error: messageOf(e) });
      }
    }
    await this.#remove(id);
    return { closed: id, peerClosed };
  }

  /**
   * Moves a handler's Host end to another host (the VM migrated): the Proxy end, the id and
   * the MACs stay. The old host end stops forwarding before the new one starts, so frames are
   * never delivered twice; the gap between the two is returned.
   */
  async #migrate(body: Record<string, unknown>): Promise<unknown> {
    const id = String(body.handler ?? "");
    const entry = this.#entries.get(id);
    if (!entry) throw new VnetError(`no handler '${id}' on this server (see vnet client list)`);
    const handler = entry.handler;
    if (handler.spec.role !== "proxy") {
      throw new VnetError(
        `handler ${id} is the host end here: send migrate to the Proxy's server`,
      );
    }
    const to = endpoint(body.host, "host");
    const ssh = parseSsh(body.ssh);
    // 1. The old host end stops forwarding.
    const started = performance.now();
    const old = handler.link;
    if (old?.isOpen) {
      await old.request("detach", { handler: id }, 5_000).catch((e) =>
        this.#log.warn("old host did not close its end", { handler: id, error: messageOf(e) })
      );
      handler.detach(old);
    }
    // 2. The new host end opens and is bound to this handler.
    const peer = this.#peer(to.addr, ssh);
    const attach = {
      id,
      role: "host",
      device: to.dev,
      macs: handler.spec.macs,
      multicast: handler.spec.multicast,
      peer: String(entry.dial?.attach.peer ?? this.address),
    };
    let link: Link;
    try {
      link = await peer.connect();
      await link.request("attach", attach);
    } catch (e) {
      this.#dropIdlePeers();
      // Put the old host end back, so a failed migrate does not leave the handler dead.
      const back = await this.#restoreOldHost(id, entry);
      throw new VnetError(
        `migrating ${id} to ${formatHostPort(to.addr)} failed: ${messageOf(e)}${back}`,
        { cause: e },
      );
    }
    entry.dial = { peer, attach };
    handler.spec.peer = formatHostPort(to.addr);
    handler.attach(link);
    const gapMs = Math.round(performance.now() - started);
    this.#dropIdlePeers();
    this.#save();
    this.#log.info("handler migrated", { handler: id, to: link.remote, gapMs });
    return { id, host: link.remote, gapMs };
  }

  /** After a failed migrate: re-attaches the handler's old host end; says how it went. */
  async #restoreOldHost(id: string, entry: Entry): Promise<string> {
    if (!entry.dial || entry.handler.link?.isOpen) return "";
    try {
      const link = await entry.dial.peer.connect();
      await link.request("attach", entry.dial.attach);
      entry.handler.attach(link);
      this.#log.info("migrate failed; handler back on its old host", {
        handler: id,
        peer: link.remote,
      });
      return "; the handler stays on its old host";
    } catch (e) {
      this.#log.warn("migrate failed and the old host end cannot be restored", {
        handler: id,
        error: messageOf(e),
      });
      return `; the old host end could not be restored either (${messageOf(e)})`;
    }
  }

  // --- requests from peer servers --------------------------------------------------------

  async #peerRequest(op: string, body: Record<string, unknown>, link: Link): Promise<unknown> {
    switch (op) {
      case "attach": {
        const spec = parseSpec(body);
        const existing = this.#entries.get(spec.id);
        if (existing && sameEnd(existing.handler.spec, spec)) {
          // The dialler reconnected: same handler, new link.
          existing.handler.attach(link);
          this.#log.info("handler re-attached", { handler: spec.id, peer: link.remote });
          return {};
        }
        if (existing) await this.#remove(spec.id);
        const handler = this.#open(spec);
        this.#entries.set(spec.id, { handler });
        handler.attach(link);
        this.#save();
        this.#log.info("handler up", { handler: spec.id, role: spec.role, peer: link.remote });
        return {};
      }
      case "detach":
        await this.#remove(String(body.handler ?? ""));
        return {};
      default:
        throw new VnetError(`unknown peer request '${op}'`);
    }
  }

  // --- handlers --------------------------------------------------------------------------

  /**
   * Opens a handler's end on this server and indexes it by its frame number. A MAC is carried
   * by one handler per interface and role: the capture of that interface hands each frame to
   * one owner.
   */
  #open(spec: HandlerSpec, tolerant = false): Handler {
    for (const { handler } of this.#entries.values()) {
      const other = handler.spec;
      if (other.id === spec.id || other.device !== spec.device || other.role !== spec.role) {
        continue;
      }
      const shared = spec.macs.find((m) => other.macs.includes(m));
      if (shared) {
        throw new VnetError(
          `MAC ${shared} is already carried by handler ${other.id} on ${spec.device} ` +
            `(${spec.role} role): close that handler first, or carry the MAC there`,
        );
      }
    }
    const handler = new Handler(spec, this.#options.ports, this.#log, tolerant);
    this.#byNumber.set(handler.number, handler);
    return handler;
  }

  async #remove(id: string): Promise<void> {
    const entry = this.#entries.get(id);
    if (!entry) return;
    this.#entries.delete(id);
    this.#byNumber.delete(entry.handler.number);
    await entry.handler.close();
    this.#dropIdlePeers();
    this.#save();
  }

  /** Writes every handler to the state file, if there is one. */
  #save(): void {
    const path = this.#options.statePath;
    if (!path || this.#stopping) return;
    const saved: SavedHandler[] = [...this.#entries.values()].map((e) => ({
      spec: e.handler.spec,
      dial: e.dial && { addr: e.dial.peer.addr, ssh: e.dial.peer.ssh, attach: e.dial.attach },
    }));
    try {
      saveState(path, saved);
    } catch (e) {
      this.#log.error("cannot write the state file", { path, error: messageOf(e) });
    }
  }

  /**
   * Reopens the handlers of the state file: each end opens (degraded if its interface is
   * missing), and the handlers this server dialled for are re-attached as their peers answer.
   */
  #restore(): void {
    const path = this.#options.statePath;
    if (!path) return;
    const saved = loadState(path, this.#log);
    const peers = new Set<Peer>();
    for (const s of saved) {
      try {
        const handler = this.#open(s.spec, true);
        const entry: Entry = { handler };
        if (s.dial) {
          const peer = this.#peer(s.dial.addr, s.dial.ssh);
          entry.dial = { peer, attach: s.dial.attach };
          peers.add(peer);
        }
        this.#entries.set(s.spec.id, entry);
      } catch (e) {
        this.#log.error("cannot restore handler", { handler: s.spec.id, error: messageOf(e) });
      }
    }
    if (saved.length > 0) this.#log.info("handlers restored", { count: this.#entries.size, path });
    for (const peer of peers) peer.scheduleReconnect();
  }

  list(): ListedHandler[] {
    return [...this.#entries.values()].map((e) => ({
      ...e.handler.info(),
      dialled: e.dial ? "out" : "in",
      reconnects: e.dial?.peer.reconnects ?? 0,
    }));
  }

  #newId(): string {
    for (;;) {
      const n = crypto.getRandomValues(new Uint32Array(1))[0];
      const id = n.toString(16).padStart(8, "0");
      if (n !== 0 && !this.#entries.has(id) && !this.#byNumber.has(n)) return id;
    }
  }

  // --- peers -----------------------------------------------------------------------------

  #peer(addr: HostPort, ssh?: SshOptions): Peer {
    const key = formatHostPort(addr) + (ssh ? ` via ssh ${ssh.gateway}` : "");
    let peer = this.#peers.get(key);
    if (!peer) {
      peer = new Peer(
        addr,
        ssh,
        (p, timeoutMs) => this.#dialPeer(p, timeoutMs),
        (p, link) => this.#reattach(p, link),
        this.#log,
      );
      this.#peers.set(key, peer);
    }
    return peer;
  }

  async #dialPeer(peer: Peer, timeoutMs: number): Promise<Link> {
    const tls = this.#options.tls;
    if (tls) this.#identity ??= loadIdentity(tls.cert, tls.key);
    const link = await dial(peer.addr, {
      timeoutMs,
      identity: tls ? await this.#identity! : undefined,
      ssh: peer.ssh,
      key: this.#options.key,
      kind: "peer",
      tlsCa: tls?.ca,
      log: this.#log,
      events: this.#events("peer"),
      keepaliveMs: this.#options.keepaliveMs,
    });
    this.#links.add(link);
    this.#log.info("peer link up", { remote: link.remote, tls: link.tls, dialled: true });
    return link;
  }

  /** After a reconnect: ask the peer to attach every handler this server carries to it. */
  async #reattach(peer: Peer, link: Link): Promise<void> {
    for (const [id, entry] of this.#entries) {
      if (entry.dial?.peer !== peer) continue;
      await link.request("attach", entry.dial.attach);
      entry.handler.attach(link);
      this.#log.info("handler re-attached", { handler: id, peer: link.remote });
    }
  }

  #dropIdlePeers(): void {
    for (const [key, peer] of this.#peers) {
      const used = [...this.#entries.values()].some((e) => e.dial?.peer === peer);
      if (!used) {
        peer.close();
        this.#peers.delete(key);
      }
    }
  }

  /** Closes every handler and link and stops listening. */
  async stop(): Promise<void> {
    if (this.#stopping) return;
    this.#stopping = true;
    this.#listener?.close();
    for (const id of [...this.#entries.keys()]) await this.#remove(id);
    for (const peer of this.#peers.values()) peer.close();
    for (const link of this.#links) link.close("server shutting down");
    this.#log.info("server stopped");
  }
}

// --- request parsing -----------------------------------------------------------------------

interface CreateRequest {
  proxy: { addr: HostPort; dev: string };
  host: { addr: HostPort; dev: string };
  via: Role;
  macs: string[];
  multicast: boolean;
  /** Where the contacted server reaches the other one, if not at the client's address for it. */
  peer?: HostPort;
  /** Reach the other server through `ssh -W` on a gateway. */
  ssh?: SshOptions;
}

function str(body: Record<string, unknown>, key: string): string {
  const v = body[key];
  if (typeof v !== "string" || v === "") throw new VnetError(`request lacks '${key}'`);
  return v;
}

function hostPort(v: unknown, key: string): HostPort {
  const o = v as HostPort | undefined;
  if (typeof o?.hostname !== "string" || typeof o?.port !== "number") {
    throw new VnetError(`request lacks '${key}'`);
  }
  return { hostname: o.hostname, port: o.port };
}

function endpoint(v: unknown, key: string): { addr: HostPort; dev: string } {
  const o = (v ?? {}) as Record<string, unknown>;
  return { addr: hostPort(o.addr, `${key}.addr`), dev: str(o, "dev") };
}

function macList(v: unknown): string[] {
  if (!Array.isArray(v) || v.length === 0) throw new VnetError("a handler needs at least one MAC");
  return [...new Set(v.map((m) => parseMac(String(m))))];
}

function role(v: unknown): Role {
  if (v !== "proxy" && v !== "host") throw new VnetError(`bad role '${v}': proxy or host`);
  return v;
}

export function parseCreate(body: Record<string, unknown>): CreateRequest {
  return {
    proxy: endpoint(body.proxy, "proxy"),
    host: endpoint(body.host, "host"),
    via: role(body.via),
    macs: macList(body.macs),
    multicast: body.multicast === true,
    peer: body.peer === undefined ? undefined : hostPort(body.peer, "peer"),
    ssh: parseSsh(body.ssh),
  };
}

function parseSsh(v: unknown): SshOptions | undefined {
  if (v === undefined || v === null) return undefined;
  const o = v as Record<string, unknown>;
  const gateway = str(o, "gateway");
  parseGateway(gateway);
  const opt = (k: string) => (typeof o[k] === "string" ? o[k] as string : undefined);
  return { gateway, identity: opt("identity"), knownHosts: opt("knownHosts") };
}

export function parseSpec(body: Record<string, unknown>): HandlerSpec {
  const id = str(body, "id");
  if (!/^[0-9a-f]{8}$/.test(id)) throw new VnetError(`bad handler id '${id}'`);
  return {
    id,
    role: role(body.role),
    device: str(body, "device"),
    macs: macList(body.macs),
    multicast: body.multicast === true,
    peer: str(body, "peer"),
  };
}

function sameEnd(a: HandlerSpec, b: HandlerSpec): boolean {
  return a.role === b.role && a.device === b.device && a.multicast === b.multicast &&
    a.macs.join() === b.macs.join();
}
