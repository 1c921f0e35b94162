/**
 * `vnet server --metrics ADDR:PORT`: an opt-in, read-only HTTP endpoint serving `/metrics` in
 * the Prometheus text exposition format (version 0.0.4), and the status page `/` with its
 * JSON `/api/status` (status_page.ts), over the bounded server of status_http.ts.
 *
 * Series (per handler, labels id, role, device):
 *   vnet_handler_frames_total{direction}          frames forwarded, to_peer / from_peer
 *   vnet_handler_bytes_total{direction}           bytes forwarded
 *   vnet_handler_drops_total{reason}              link, aqm, truncated, offload, inject, ...
 *   vnet_handler_link_up                          1 when the peer link is up
 *   vnet_handler_degraded                         1 when the interface is gone
 *   vnet_handler_reconnects_total                 reconnects of the link (dialling side)
 *   vnet_handler_link_rtt_seconds                 last keepalive round trip (absent until known)
 *   vnet_handler_capture_received_total           frames the capture saw
 *   vnet_handler_capture_kernel_drops_total       dropped by the kernel: capture buffer full
 *   vnet_handler_capture_interface_drops_total    dropped by the interface or its driver
 *   vnet_handler_mac_conflicts_total              frames from a proxied MAC seen on the interface
 * and vnet_handlers, vnet_process_resident_memory_bytes, vnet_process_uptime_seconds,
 * vnet_build_info{version,commit,deno}; with a UDP socket, vnet_udp_datagrams_total{outcome}
 * (send_refused, stranger, truncated: what no path took).
 */
import { formatHostPort, type HostPort } from "../addr.ts";
import { createHash } from "node:crypto";
import { ErrorCode, messageOf, VnetError } from "../errors.ts";
import type { Logger } from "../log.ts";
import type { ListedHandler } from "../control/rpc.ts";
import type { UdpPortStats } from "../dataplane/udp_peers.ts";
import { PAGE_CSP, STATUS_PAGE, type StatusJson } from "./status_page.ts";
import {
  type HttpLimits,
  type HttpRequest,
  type HttpResponse,
  type HttpStats,
  serveHttp,
} from "./status_http.ts";

export interface ProcessInfo {
  rssBytes: number;
  uptimeSeconds: number;
  version: string;
  commit: string;
  deno: string;
}

/** This process, now. */
export function processInfo(version: string, commit: string): ProcessInfo {
  return {
    rssBytes: Deno.memoryUsage().rss,
    uptimeSeconds: performance.now() / 1000,
    version,
    commit,
    deno: Deno.version.deno,
  };
}

type Labels = Record<string, string>;

function escapeLabel(v: string): string {
  return v.replace(/\\/g, "\\\\").replace(/"/g, '\\"').replace(/\n/g, "\\n");
}

function labelText(labels: Labels): string {
  const parts = Object.entries(labels).map(([k, v]) => `${k}="${escapeLabel(v)}"`);
  return parts.length ? `{${parts.join(",")}}` : "";
}

function num(v: number): string {
  if (Number.isNaN(v)) return "NaN";
  if (v === Infinity) return "+Inf";
  if (v === -Infinity) return "-Inf";
  return String(v);
}

class Family {
  readonly samples: string[] = [];
  constructor(
    readonly name: string,
    readonly type: "counter" | "gauge",
    readonly help: string,
  ) {}
  add(labels: Labels, value: number): void {
    this.samples.push(`${this.name}${labelText(labels)} ${num(value)}`);
  }
  render(): string {
    return `# HELP ${this.name} ${this.help}\n# TYPE ${this.name} ${this.type}\n` +
      this.samples.map((s) => s + "\n").join("");
  }
}

/** The whole exposition for these handlers and this process. Pure: no I/O. */
export function renderMetrics(
  handlers: ListedHandler[],
  process: ProcessInfo,
  udp: UdpPortStats | null = null,
): string {
  const f = {
    frames: new Family("vnet_handler_frames_total", "counter", "Frames forwarded, by direction."),
    bytes: new Family("vnet_handler_bytes_total", "counter", "Bytes forwarded, by direction."),
    drops: new Family("vnet_handler_drops_total", "counter", "Frames dropped, by reason."),
    linkUp: new Family("vnet_handler_link_up", "gauge", "1 when the link to the peer is up."),
    degraded: new Family(
      "vnet_handler_degraded",
      "gauge",
      "1 when the handler's interface is gone and it waits for it.",
    ),
    reconnects: new Family(
      "vnet_handler_reconnects_total",
      "counter",
      "Reconnects of the link to the peer (counted on the side that dials).",
    ),
    rtt: new Family(
      "vnet_handler_link_rtt_seconds",
      "gauge",
      "Round-trip time of the last keepalive on the link to the peer.",
    ),
    received: new Family(
      "vnet_handler_capture_received_total",
      "counter",
      "Frames the capture received.",
    ),
    kernelDrops: new Family(
      "vnet_handler_capture_kernel_drops_total",
      "counter",
      "Frames the kernel dropped because the capture buffer was full.",
    ),
    ifDrops: new Family(
      "vnet_handler_capture_interface_drops_total",
      "counter",
      "Frames dropped by the network interface or its driver.",
    ),
    conflicts: new Family(
      "vnet_handler_mac_conflicts_total",
      "counter",
      "Frames seen on the interface from one of the handler's MACs: a duplicate MAC or a loop.",
    ),
    udpUp: new Family(
      "vnet_handler_udp_path_up",
      "gauge",
      "1 while the handler's frames go by the link's UDP path, 0 while they fall back to the link.",
    ),
    udpMtu: new Family(
      "vnet_handler_udp_path_mtu_bytes",
      "gauge",
      "The largest inner IP packet one datagram of the UDP path carries.",
    ),
    udpDatagrams: new Family(
      "vnet_handler_udp_path_datagrams_total",
      "counter",
      "Datagrams of the link's UDP path (every handler on the link), by direction.",
    ),
    udpFallback: new Family(
      "vnet_handler_udp_path_fallback_frames_total",
      "counter",
      "Frames sent by the link's stream because the UDP path was down.",
    ),
    udpLoss: new Family(
      "vnet_handler_udp_path_loss_ratio",
      "gauge",
      "Share of the peer's last 40 keepalives lost on the UDP path on the way here.",
    ),
    udpPeerLoss: new Family(
      "vnet_handler_udp_path_peer_loss_ratio",
      "gauge",
      "Share of our last 40 keepalives the peer says it lost (25% or more: frames by the link).",
    ),
    udpQueueDelay: new Family(
      "vnet_handler_udp_path_queue_delay_seconds",
      "gauge",
      "How long our datagrams wait in the UDP path's queues, as the peer measures it: what the " +
        "path's pace follows (docs/wan.md).",
    ),
    udpRefused: new Family(
      "vnet_handler_udp_path_refused_total",
      "counter",
      "Datagrams refused on the UDP path: forged, replayed, malformed.",
    ),
    udpSendRefused: new Family(
      "vnet_handler_udp_path_send_refused_total",
      "counter",
      "Datagrams of ours the kernel would not send on the UDP path: a local firewall's drop, " +
        "no route, a full buffer.",
    ),
    ownSocket: new Family(
      "vnet_handler_data_path_socket_frames_total",
      "counter",
      "Frames carried by a link socket the data-path thread owns (plain links), by direction.",
    ),
  };
  for (const h of handlers) {
    const l = { id: h.id, role: h.role, device: h.device };
    f.frames.add({ ...l, direction: "to_peer" }, h.toPeer.frames);
    f.frames.add({ ...l, direction: "from_peer" }, h.fromPeer.frames);
    f.bytes.add({ ...l, direction: "to_peer" }, h.toPeer.bytes);
    f.bytes.add({ ...l, direction: "from_peer" }, h.fromPeer.bytes);
    for (const [reason, n] of Object.entries(h.dropReasons)) {
      f.drops.add({ ...l, reason }, n);
    }
    f.linkUp.add(l, h.link.state === "up" ? 1 : 0);
    f.degraded.add(l, h.state === "degraded" ? 1 : 0);
    f.reconnects.add(l, h.reconnects);
    if (h.link.rttMs !== null) f.rtt.add(l, h.link.rttMs / 1000);
    f.received.add(l, h.capture.received);
    f.kernelDrops.add(l, h.capture.dropped);
    f.ifDrops.add(l, h.capture.ifDropped);
    f.conflicts.add(l, h.macConflicts);
    const udp = h.link.udp;
    if (udp) {
      f.udpUp.add(l, udp.state === "up" ? 1 : 0);
      f.udpMtu.add(l, udp.mtu);
      f.udpDatagrams.add({ ...l, direction: "to_peer" }, udp.datagramsOut);
      f.udpDatagrams.add({ ...l, direction: "from_peer" }, udp.datagramsIn);
      f.udpFallback.add(l, udp.fallbackFrames);
      f.udpRefused.add(l, udp.refused);
      f.udpSendRefused.add(l, udp.sendRefused);
      if (udp.lossPercent !== null) f.udpLoss.add(l, udp.lossPercent / 100);
      if (udp.peerLossPercent !== null) f.udpPeerLoss.add(l, udp.peerLossPercent / 100);
      // Tenths of a ms, as measured: 4.2 ms is 0.0042 s, not 0.004200000000000001.
      if (udp.queueDelayMs !== null) {
        f.udpQueueDelay.add(l, Math.round(udp.queueDelayMs * 10) / 1e4);
      }
    }
    if (h.dataPathSocket) {
      f.ownSocket.add({ ...l, direction: "to_peer" }, h.dataPathSocket.out);
      f.ownSocket.add({ ...l, direction: "from_peer" }, h.dataPathSocket.in);
    }
  }
  // A Host's path table is listed in each of its handlers: one series per MAC.
  const pathFrames = new Family(
    "vnet_path_frames_total",
    "counter",
    "Frames a Host sent to a remote MAC, by path (direct to its Host, or through the proxy).",
  );
  const pathBytes = new Family("vnet_path_bytes_total", "counter", "Bytes, likewise.");
  const pathDirect = new Family(
    "vnet_path_direct",
    "gauge",
    "1 for a remote MAC a Host reaches directly now, by what carries it (udp or tcp).",
  );
  const pathUdp = new Family(
    "vnet_path_direct_udp_datagrams_total",
    "counter",
    "Datagrams of the UDP path of a direct path (a direct link's, or one punched through NAT).",
  );
  const seen = new Set<string>();
  for (const path of handlers.flatMap((h) => h.paths ?? [])) {
    if (seen.has(path.mac)) continue;
    seen.add(path.mac);
    for (const [via, c] of [["direct", path.viaDirect], ["proxy", path.viaProxy]] as const) {
      pathFrames.add({ mac: path.mac, via }, c.frames);
      pathBytes.add({ mac: path.mac, via }, c.bytes);
    }
    if (path.via === "direct" && path.transport) {
      pathDirect.add({ mac: path.mac, transport: path.transport }, 1);
    }
    if (path.udp) {
      pathUdp.add({ mac: path.mac, direction: "to_peer" }, path.udp.datagramsOut);
      pathUdp.add({ mac: path.mac, direction: "from_peer" }, path.udp.datagramsIn);
    }
  }
  // The UDP socket's own: what belongs to no path. A local firewall that drops VNET's datagrams
  // shows here first (refused), a peer or scanner that sends what no path expects as strangers.
  const udpDatagrams = new Family(
    "vnet_udp_datagrams_total",
    "counter",
    "Datagrams of the server's UDP socket that no path took: refused by the kernel on the " +
      "way out, from strangers, or truncated on the way in.",
  );
  if (udp) {
    udpDatagrams.add({ outcome: "send_refused" }, udp.sendRefused);
    udpDatagrams.add({ outcome: "stranger" }, udp.strangers);
    udpDatagrams.add({ outcome: "truncated" }, udp.receiveTruncated);
  }
  const handlerCount = new Family("vnet_handlers", "gauge", "Handlers this server holds.");
  handlerCount.add({}, handlers.length);
  const rss = new Family(
    "vnet_process_resident_memory_bytes",
    "gauge",
    "Resident memory of the vnet process.",
  );
  rss.add({}, process.rssBytes);
  const uptime = new Family(
    "vnet_process_uptime_seconds",
    "gauge",
    "Seconds since the vnet process started.",
  );
  uptime.add({}, Math.round(process.uptimeSeconds * 1000) / 1000);
  const build = new Family("vnet_build_info", "gauge", "Version and commit of this vnet; 1.");
  build.add({ version: process.version, commit: process.commit, deno: process.deno }, 1);
  return [
    ...Object.values(f),
    pathFrames,
    pathBytes,
    pathDirect,
    pathUdp,
    udpDatagrams,
    handlerCount,
    rss,
    uptime,
    build,
  ]
    .map((x) => x.render()).join("");
}

const CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8";

/** What the `--metrics` listener serves, and who may see it. */
interface MetricsSources {
  /** The Prometheus exposition (`renderMetrics`). */
  metrics: () => string | Promise<string>;
  /** The status for `/api/status` and the page; without it only `/metrics` is served. */
  status?: () => StatusJson | Promise<StatusJson>;
  /** When set, every path needs `Authorization: Bearer <token>`; 401 otherwise. */
  token?: string;
  /**
   * Host names, besides IP literals and localhost, that requests may name in `Host`
   * (`--metrics-host`). Any other name is answered 421 with no data: see `hostAllowed`.
   */
  hosts?: string[];
  /** Connection cap and timeouts (defaults: 64 connections, 5 s head, 10 s write). */
  limits?: HttpLimits;
}

/** A running metrics endpoint. */
export interface MetricsServer {
  /** The address it listens on (the real port if 0 was asked for). */
  addr: HostPort;
  stats(): HttpStats;
  shutdown(): Promise<void>;
}

/** SHA-256 of a token's UTF-8 bytes. */
function digest(text: string): Uint8Array {
  return new Uint8Array(createHash("sha256").update(text).digest());
}

/**
 * A check of `Authorization: Bearer <token>` whose time does not depend on where the given
 * token differs: both sides are hashed to 32 bytes first, then compared in full.
 */
export function bearerCheck(token: string): (authorization: string | undefined) => boolean {
  const want = digest(token);
  return (authorization) => {
    const m = /^Bearer\s+(\S+)\s*$/i.exec(authorization ?? "");
    const got = digest(m ? m[1] : "");
    let diff = m ? 0 : 1;
    for (let i = 0; i < want.length; i++) diff |= want[i] ^ got[i];
    return diff === 0;
  };
}

/**
 * Whether a request's `Host` header names this listener, as a browser would send it for a
 * page the operator opened: an IP literal (v4, or v6 in brackets), `localhost` (or a name under
 * `.localhost`, which resolves there by RFC 6761), or one of `names`, with or without a port.
 * This is the defence against DNS rebinding: a page from an attacker's name that is made to
 * resolve to this listener still sends its own name in `Host`, and gets no data. An IP literal
 * cannot be rebound (the page's origin is then that address), so every one is allowed, which
 * also covers the listener's own addresses when it listens on 0.0.0.0 or behind NAT.
 */
export function hostAllowed(host: string | undefined, names: ReadonlySet<string>): boolean {
  if (host === undefined) return false;
  const text = host.trim().toLowerCase();
  const v6 = /^\[([0-9a-f:.]+)\](?::\d{1,5})?$/.exec(text);
  if (v6) return v6[1].includes(":");
  const m = /^([^:]+)(?::\d{1,5})?$/.exec(text);
  if (!m) return false;
  const name = m[1].replace(/\.$/, "");
  if (/^\d{1,3}(\.\d{1,3}){3}$/.test(name)) return true;
  return name === "localhost" || name.endsWith(".localhost") || names.has(name);
}

/** A metrics host name as `--metrics-host` takes it: a DNS name, lowercased; null if not one. */
export function metricsHostName(text: string): string | null {
  const name = text.trim().toLowerCase().replace(/\.$/, "");
  const label = "[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?";
  return new RegExp(`^${label}(\\.${label})*$`).test(name) && name.length <= 253 ? name : null;
}

/** Wrong tokens one address may present at once, and how fast it earns another try. */
const TOKEN_BURST = 10;
const TOKEN_REFILL_MS = 1000;
/** Addresses remembered; beyond this the longest-known is forgotten. */
const TOKEN_ADDRESSES = 4096;

/**
 * Wrong tokens are limited per address, as a token bucket: TOKEN_BURST at once, then one per
 * TOKEN_REFILL_MS. An address that has used them up is answered 429 without its token being
 * checked (a right guess must not get through either), so an online guesser gets about one
 * try a second instead of thousands.
 */
export class TokenGuesses {
  readonly #buckets = new Map<string, { tries: number; at: number }>();
  constructor(private readonly now: () => number = () => performance.now()) {}

  #bucket(address: string): { tries: number; at: number } {
    const now = this.now();
    let b = this.#buckets.get(address);
    if (!b) {
      b = { tries: TOKEN_BURST, at: now };
      if (this.#buckets.size >= TOKEN_ADDRESSES) {
        this.#buckets.delete(this.#buckets.keys().next().value!);
      }
      this.#buckets.set(address, b);
    }
    const earned = Math.floor((now - b.at) / TOKEN_REFILL_MS);
    if (earned > 0) {
      b.tries = Math.min(TOKEN_BURST, b.tries + earned);
      b.at = b.tries === TOKEN_BURST ? now : b.at + earned * TOKEN_REFILL_MS;
    }
    return b;
  }

  /** Milliseconds until `address` may try a token again; 0 if it may now. */
  waitMs(address: string): number {
    const b = this.#bucket(address);
    return b.tries > 0 ? 0 : Math.max(1, TOKEN_REFILL_MS - (this.now() - b.at));
  }

  /** Counts one wrong token from `address`. */
  failed(address: string): void {
    const b = this.#bucket(address);
    if (b.tries === TOKEN_BURST) b.at = this.now();
    b.tries = Math.max(0, b.tries - 1);
  }
}

const PAGE_HEADERS = {
  "content-type": "text/html; charset=utf-8",
  "content-security-policy": PAGE_CSP,
  "referrer-policy": "no-referrer",
  "x-frame-options": "DENY",
};

/**
 * Serves, read-only (GET and HEAD), on `addr`: `/metrics` (Prometheus text), and with
 * `sources.status` also `/` (the status page) and `/api/status` (JSON). With a token every
 * path needs it; `/` without it answers 401 with the page itself, which holds no data and asks
 * for the token. Throws a VnetError if it cannot listen; nothing after that ends the process.
 *
 * `serveMetrics(addr, render, log)` (a function) is the older form: `/metrics` only.
 */
export function serveMetrics(
  addr: HostPort,
  sources: MetricsSources | (() => string),
  log: Logger,
): MetricsServer {
  const src: MetricsSources = typeof sources === "function" ? { metrics: sources } : sources;
  const authorized = src.token !== undefined ? bearerCheck(src.token) : () => true;
  const names = new Set(src.hosts ?? []);
  const guesses = new TokenGuesses();
  const handle = async (req: HttpRequest): Promise<HttpResponse> => {
    const known = req.path === "/metrics" ||
      (src.status !== undefined && (req.path === "/" || req.path === "/api/status"));
    if (!hostAllowed(req.headers.get("host"), names)) {
      return {
        status: 421,
        body: "this listener answers only its IP address, localhost, or a name given with " +
          "--metrics-host NAME\n",
      };
    }
    const authorization = req.headers.get("authorization");
    if (src.token !== undefined && authorization !== undefined) {
      const waitMs = guesses.waitMs(req.remote);
      if (waitMs > 0) {
        return {
          status: 429,
          headers: { "retry-after": String(Math.ceil(waitMs / 1000)) },
          body: "too many wrong tokens from this address; try again later\n",
        };
      }
    }
    if (!authorized(authorization)) {
      if (authorization !== undefined) guesses.failed(req.remote);
      const challenge = { "www-authenticate": 'Bearer realm="vnet"' };
      if (req.path === "/" && src.status) {
        return { status: 401, headers: { ...PAGE_HEADERS, ...challenge }, body: STATUS_PAGE };
      }
      return { status: 401, headers: challenge, body: "token needed: Authorization: Bearer\n" };
    }
    if (!known) return { status: 404, body: "not found\n" };
    if (req.path === "/metrics") {
      return { status: 200, headers: { "content-type": CONTENT_TYPE }, body: await src.metrics() };
    }
    if (req.path === "/api/status") {
      return {
        status: 200,
        headers: { "content-type": "application/json" },
        body: JSON.stringify(await src.status!()),
      };
    }
    return { status: 200, headers: PAGE_HEADERS, body: STATUS_PAGE };
  };
  let server;
  try {
    server = serveHttp(addr, handle, log, src.limits);
  } catch (e) {
    throw new VnetError(
      `cannot serve metrics on ${formatHostPort(addr)}: ${messageOf(e)}`,
      { code: ErrorCode.System, cause: e },
    );
  }
  const bound = { hostname: server.addr.hostname, port: server.addr.port };
  const base = `http://${formatHostPort(bound)}`;
  log.info("metrics listening", {
    addr: `${base}/metrics`,
    page: src.status ? `${base}/` : undefined,
    token: src.token !== undefined ? "required" : undefined,
    hosts: src.hosts?.length ? src.hosts.join(",") : undefined,
  });
  return { addr: bound, stats: server.stats, shutdown: server.shutdown };
}
