/**
 * `vnet server --metrics ADDR:PORT`: an opt-in HTTP endpoint serving `GET /metrics` in the
 * Prometheus text exposition format (version 0.0.4); every other request gets 404.
 *
 * Series (per handler, labels id, role, device):
 *   vnet_handler_frames_total{direction}          frames forwarded, to_peer / from_peer
 *   vnet_handler_bytes_total{direction}           bytes forwarded
 *   vnet_handler_drops_total{reason}              link, truncated, offload, inject
 *   vnet_handler_link_up                          1 when the peer link is up
 *   vnet_handler_degraded                         1 when the interface is gone
 *   vnet_handler_reconnects_total                 reconnects of the link (dialling side)
 *   vnet_handler_link_rtt_seconds                 last keepalive round trip (absent until known)
 *   vnet_handler_capture_received_total           frames the capture saw
 *   vnet_handler_capture_kernel_drops_total       dropped by the kernel: capture buffer full
 *   vnet_handler_capture_interface_drops_total    dropped by the interface or its driver
 * and vnet_handlers, vnet_process_resident_memory_bytes, vnet_process_uptime_seconds,
 * vnet_build_info{version,commit,deno}.
 */
import { formatHostPort, type HostPort } from "../addr.ts";
import { messageOf, VnetError } from "../errors.ts";
import { type Logger } from "./log.ts";
import { type ListedHandler } from "../control/server.ts";

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
export function renderMetrics(handlers: ListedHandler[], process: ProcessInfo): string {
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
  return [...Object.values(f), handlerCount, rss, uptime, build].map((x) => x.render()).join("");
}

export const CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8";

/** A running metrics endpoint. */
export interface MetricsServer {
  /** The address it listens on (the real port if 0 was asked for). */
  addr: HostPort;
  shutdown(): Promise<void>;
}

/**
 * Serves `GET /metrics` on `addr` with `render()`'s text; anything else is 404. Throws a
 * VnetError if it cannot listen.
 */
export function serveMetrics(addr: HostPort, render: () => string, log: Logger): MetricsServer {
  const controller = new AbortController();
  let server: Deno.HttpServer<Deno.NetAddr>;
  try {
    server = Deno.serve({
      hostname: addr.hostname,
      port: addr.port,
      signal: controller.signal,
      onListen: () => {},
      onError: (e) => {
        log.error("metrics request failed", { error: messageOf(e) });
        return new Response("internal error\n", { status: 500 });
      },
    }, (req) => {
      const url = new URL(req.url);
      if (url.pathname !== "/metrics" || (req.method !== "GET" && req.method !== "HEAD")) {
        return new Response("not found\n", { status: 404 });
      }
      return new Response(req.method === "HEAD" ? null : render(), {
        headers: { "content-type": CONTENT_TYPE },
      });
    });
  } catch (e) {
    throw new VnetError(
      `cannot serve metrics on ${formatHostPort(addr)}: ${messageOf(e)}`,
      { cause: e },
    );
  }
  const bound = { hostname: server.addr.hostname, port: server.addr.port };
  log.info("metrics listening", { addr: `http://${formatHostPort(bound)}/metrics` });
  return {
    addr: bound,
    shutdown: async () => {
      controller.abort();
      await server.finished.catch(() => {});
    },
  };
}
