/**
 * The status page served on the `--metrics` listener: `/api/status` (the JSON below) and `/`
 * (one self-contained HTML page that polls it). The page has no data of its own: it is the
 * same bytes for everyone, so it may be sent with a 401 when a token is needed, and then asks
 * for the token and sends it with every poll.
 */
import type { LinkEvent } from "../control/events.ts";
import type { ListedHandler } from "../control/rpc.ts";

/** What `/api/status` answers. */
export interface StatusJson {
  version: string;
  commit: string;
  uptimeSeconds: number;
  /** How many handlers this server holds in each role. */
  roles: { proxy: number; host: number };
  /** As `vnet client list --json`. */
  handlers: ListedHandler[];
  events: LinkEvent[];
}

/** The status of a server with these handlers and events, for this process (`processInfo`). */
export function buildStatus(
  handlers: ListedHandler[],
  events: LinkEvent[],
  process: { version: string; commit: string; uptimeSeconds: number },
): StatusJson {
  return {
    version: process.version,
    commit: process.commit,
    uptimeSeconds: Math.round(process.uptimeSeconds * 1000) / 1000,
    roles: {
      proxy: handlers.filter((h) => h.role === "proxy").length,
      host: handlers.filter((h) => h.role === "host").length,
    },
    handlers,
    events,
  };
}

/**
 * The page's Content-Security-Policy: nothing but itself and same-origin polls, so a field
 * that got past the escaping could still not load or send anything.
 */
export const PAGE_CSP = "default-src 'none'; script-src 'unsafe-inline'; " +
  "style-src 'unsafe-inline'; connect-src 'self'; img-src data:; base-uri 'none'; " +
  "form-action 'none'; frame-ancestors 'none'";

/** How often the page polls `/api/status`, and how much history its charts keep. */
const POLL_MS = 2000;
const CHART_SECONDS = 300;

export const STATUS_PAGE = `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="referrer" content="no-referrer">
<title>vnet status</title>
<style>
:root { --fg:#1d232a; --muted:#5b6672; --bg:#f6f7f9; --card:#fff; --line:#d9dee4;
  --to:#1f6feb; --from:#d9480f; --ok:#1a7f37; --bad:#cf222e; --warn:#9a6700; }
* { box-sizing: border-box; }
body { margin:0; font:14px/1.4 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif;
  color:var(--fg); background:var(--bg); }
header { padding:12px 16px; background:var(--card); border-bottom:1px solid var(--line);
  display:flex; flex-wrap:wrap; gap:8px 20px; align-items:baseline; }
header h1 { font-size:18px; margin:0; }
.kv { color:var(--muted); } .kv b { color:var(--fg); font-weight:600; }
main { padding:12px 16px; max-width:1200px; margin:0 auto; }
section { background:var(--card); border:1px solid var(--line); border-radius:6px;
  margin:0 0 12px; padding:10px 12px; }
h2 { font-size:15px; margin:0 0 8px; }
.scroll { overflow-x:auto; }
table { border-collapse:collapse; width:100%; }
th, td { text-align:left; padding:4px 6px; border-bottom:1px solid var(--line);
  vertical-align:top; }
td.mono { white-space:nowrap; }
th { color:var(--muted); font-weight:600; font-size:12px; }
td.num { text-align:right; font-variant-numeric:tabular-nums; }
.mono { font-family:ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; font-size:12px; }
.up { color:var(--ok); font-weight:600; } .down { color:var(--bad); font-weight:600; }
.degraded { color:var(--warn); font-weight:600; }
.charts { display:grid; grid-template-columns:repeat(auto-fill, minmax(320px, 1fr)); gap:12px; }
.chart h3 { font-size:13px; margin:0 0 4px; display:flex; justify-content:space-between; gap:8px; }
.chart h3 span { color:var(--muted); font-weight:400; font-size:12px; }
.axis { display:flex; justify-content:space-between; font-size:11px; color:var(--muted); }
.chart svg { width:100%; height:140px; display:block; background:#fbfcfd;
  border:1px solid var(--line); border-radius:4px; }
.legend { font-size:12px; color:var(--muted); display:flex; gap:14px; flex-wrap:wrap; }
.legend i { display:inline-block; width:10px; height:3px; vertical-align:middle; margin-right:4px; }
.to { background:var(--to); } .from { background:var(--from); }
#events li { padding:2px 0; list-style:none; }
#events { margin:0; padding:0; max-height:320px; overflow-y:auto; }
.empty { color:var(--muted); font-style:italic; }
#conn { font-size:12px; }
#login { display:none; }
#login.show { display:block; }
#login input { font:inherit; padding:6px 8px; width:min(100%, 360px); }
#login button { font:inherit; padding:6px 12px; }
@media (max-width: 700px) {
  header { padding:10px; } main { padding:8px; }
  #handlers table, #handlers tbody, #handlers tr, #handlers td { display:block; width:100%; }
  #handlers thead { display:none; }
  #handlers tr { border:1px solid var(--line); border-radius:6px; margin-bottom:8px; padding:4px; }
  #handlers td { border:0; white-space:normal; padding:2px 6px; text-align:left; }
  #handlers td::before { content:attr(data-label) ": "; color:var(--muted); font-size:12px; }
}
</style>
</head>
<body>
<header>
  <h1>vnet</h1>
  <span class="kv">version <b id="version">-</b></span>
  <span class="kv">uptime <b id="uptime">-</b></span>
  <span class="kv">handlers <b id="roles">-</b></span>
  <span class="kv" id="conn">connecting…</span>
</header>
<main>
<section id="login">
  <h2>Token needed</h2>
  <p id="login-why">This status page needs the metrics token (the contents of the server's
  --metrics-token-file). It is kept for this browser tab only.</p>
  <form id="login-form" autocomplete="off">
    <input id="token" type="password" placeholder="metrics token" aria-label="metrics token">
    <button type="submit">Show status</button>
  </form>
</section>
<section id="handlers">
  <h2>Handlers</h2>
  <div class="scroll"><table>
    <thead><tr><th>ID</th><th>Role</th><th>Device</th><th>Peer</th><th>Link</th><th>RTT</th>
      <th>MACs</th><th>To peer</th><th>From peer</th><th>Drops by reason</th>
      <th>MAC conflicts</th><th>Capture</th></tr></thead>
    <tbody id="rows"><tr><td colspan="12" class="empty">no data yet</td></tr></tbody>
  </table></div>
</section>
<section>
  <h2>Rates, last ${CHART_SECONDS / 60} minutes</h2>
  <div class="legend"><span><i class="to"></i>to peer</span><span><i class="from"></i>from peer</span></div>
  <div class="charts" id="charts"><p class="empty">no handlers</p></div>
</section>
<section>
  <h2>Recent link events</h2>
  <ul id="events"><li class="empty">none</li></ul>
</section>
</main>
<script>
"use strict";
const POLL_MS = ${POLL_MS}, HISTORY = ${CHART_SECONDS} * 1000 / POLL_MS;
const TOKEN_KEY = "vnet-metrics-token";
let token = sessionStorage.getItem(TOKEN_KEY);
/** Per handler: the last counters seen, and the rate history [{to, from}] in bit/s. */
const series = new Map();
let lastUptime = null;

const $ = (id) => document.getElementById(id);
function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") e.className = v; else e.setAttribute(k, v);
  }
  for (const c of children) e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return e;
}
function si(n) {
  const u = ["", "k", "M", "G", "T"]; let i = 0;
  while (Math.abs(n) >= 999.5 && i < u.length - 1) { n /= 1000; i++; }
  return (i === 0 ? String(Math.round(n)) : n.toFixed(Math.abs(n) < 10 ? 2 : Math.abs(n) < 100 ? 1 : 0)) + u[i];
}
function duration(s) {
  s = Math.floor(s);
  const d = Math.floor(s / 86400), h = Math.floor(s % 86400 / 3600), m = Math.floor(s % 3600 / 60);
  return d ? d + "d " + h + "h" : h ? h + "h " + m + "m" : m ? m + "m " + (s % 60) + "s" : s + "s";
}
function dir(c) { return si(c.frames) + " fr, " + si(c.bytes) + "B, " + si(c.drops) + " drops"; }

function showLogin(why) {
  $("login").classList.add("show");
  if (why) $("login-why").textContent = why;
  $("conn").textContent = "token needed";
  $("token").focus();
}
$("login-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  token = $("token").value.trim();
  $("token").value = "";
  sessionStorage.setItem(TOKEN_KEY, token);
  $("login").classList.remove("show");
  poll();
});

let timer = null;
async function poll() {
  clearTimeout(timer);
  try {
    const headers = token ? { Authorization: "Bearer " + token } : {};
    const r = await fetch("api/status", { headers, cache: "no-store" });
    if (r.status === 401) {
      sessionStorage.removeItem(TOKEN_KEY);
      showLogin(token ? "That token was refused. Enter the metrics token again." : "");
      token = null;
      return;
    }
    if (!r.ok) throw new Error("HTTP " + r.status);
    render(await r.json());
    $("conn").textContent = "live, updated " + new Date().toLocaleTimeString();
    $("conn").className = "kv";
  } catch (e) {
    $("conn").textContent = "no answer (" + e.message + "), retrying";
    $("conn").className = "kv down";
  }
  timer = setTimeout(poll, POLL_MS);
}

function render(s) {
  $("version").textContent = s.version + " (" + s.commit + ")";
  $("uptime").textContent = duration(s.uptimeSeconds);
  $("roles").textContent = s.handlers.length + " (" + s.roles.proxy + " proxy, " + s.roles.host + " host)";
  const dt = lastUptime === null ? 0 : s.uptimeSeconds - lastUptime;
  lastUptime = s.uptimeSeconds;
  const seen = new Set();
  for (const h of s.handlers) {
    seen.add(h.id);
    let e = series.get(h.id);
    if (!e) { e = { last: null, points: [] }; series.set(h.id, e); }
    if (e.last && dt > 0 && h.toPeer.bytes >= e.last.to && h.fromPeer.bytes >= e.last.from) {
      e.points.push({ to: (h.toPeer.bytes - e.last.to) * 8 / dt, from: (h.fromPeer.bytes - e.last.from) * 8 / dt });
      if (e.points.length > HISTORY) e.points.shift();
    }
    e.last = { to: h.toPeer.bytes, from: h.fromPeer.bytes };
  }
  for (const id of [...series.keys()]) if (!seen.has(id)) series.delete(id);
  renderRows(s.handlers);
  renderCharts(s.handlers);
  renderEvents(s.events || []);
}

function renderRows(handlers) {
  const rows = $("rows");
  rows.replaceChildren();
  if (handlers.length === 0) {
    rows.append(el("tr", {}, el("td", { colspan: 12, class: "empty" }, "no handlers")));
    return;
  }
  for (const h of handlers) {
    const state = h.state === "degraded" ? "degraded" : h.link.state;
    const drops = Object.entries(h.dropReasons).filter(([, n]) => n > 0)
      .map(([k, n]) => k + " " + si(n)).join(", ") || "none";
    const td = (label, value, cls) => el("td", { "data-label": label, class: cls || "" }, value);
    rows.append(el("tr", { "data-id": h.id },
      td("ID", h.id, "mono"),
      td("Role", h.role),
      td("Device", h.device, "mono"),
      td("Peer", h.peer, "mono"),
      td("Link", state + (h.link.tls ? " +tls" : "") +
        (h.link.udp ? (h.link.udp.state === "up" ? " udp mtu " + h.link.udp.mtu : " udp " + h.link.udp.state) + (h.link.udp.peerLossPercent ? " loss " + h.link.udp.peerLossPercent + "%" : "") + (h.link.udp.state === "up" ? "" : " (by the link)") : "") +
        (h.reconnects ? " (" + h.reconnects + " reconnects)" : "") +
        (h.degraded ? ": " + h.degraded : ""), state === "up" ? "up" : state === "degraded" ? "degraded" : "down"),
      td("RTT", h.link.rttMs == null ? "-" : h.link.rttMs.toFixed(2) + " ms", "num"),
      td("MACs", h.macs.join(" ") + (h.multicast ? " +multicast" : ""), "mono"),
      td("To peer", dir(h.toPeer), "num"),
      td("From peer", dir(h.fromPeer), "num"),
      td("Drops by reason", drops),
      td("MAC conflicts", String(h.macConflicts ?? 0), "num"),
      td("Capture", si(h.capture.received) + " rx, " + si(h.capture.dropped) + " dropped", "num"),
    ));
  }
}

const NS = "http://www.w3.org/2000/svg";
function svg(tag, attrs) {
  const e = document.createElementNS(NS, tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  return e;
}
function renderCharts(handlers) {
  const box = $("charts");
  box.replaceChildren();
  if (handlers.length === 0) { box.append(el("p", { class: "empty" }, "no handlers")); return; }
  const W = 600, H = 140, PAD = 4;
  for (const h of handlers) {
    const pts = series.get(h.id)?.points ?? [];
    const max = Math.max(1000, ...pts.map((p) => Math.max(p.to, p.from)));
    const last = pts[pts.length - 1] ?? { to: 0, from: 0 };
    const chart = svg("svg", { viewBox: "0 0 " + W + " " + H, preserveAspectRatio: "none", role: "img",
      class: "rate-chart", "data-id": h.id, "data-to-bps": String(last.to), "data-from-bps": String(last.from),
      "data-points": String(pts.length), "aria-label": "rate of handler " + h.id });
    for (let i = 1; i < 4; i++) {
      chart.append(svg("line", { x1: 0, x2: W, y1: H * i / 4, y2: H * i / 4, stroke: "#e6e9ed", "stroke-width": 1 }));
    }
    // Until the history fills the window, the samples there are spread over the whole width.
    const step = W / Math.max(1, Math.min(HISTORY, pts.length) - 1);
    for (const [key, color] of [["to", "#1f6feb"], ["from", "#d9480f"]]) {
      const coords = pts.map((p, i) => {
        const x = W - (pts.length - 1 - i) * step;
        const y = H - PAD - (p[key] / max) * (H - 2 * PAD);
        return x.toFixed(1) + "," + y.toFixed(1);
      });
      if (coords.length === 1) coords.unshift((W - 2) + "," + coords[0].split(",")[1]);
      chart.append(svg("polyline", { points: coords.join(" "), fill: "none", stroke: color,
        "stroke-width": 2, "vector-effect": "non-scaling-stroke", class: "series-" + key }));
    }
    box.append(el("div", { class: "chart" },
      el("h3", {}, h.id + " " + h.role + " " + h.device, el("span", {}, "top " + si(max) + "bit/s")),
      chart,
      el("div", { class: "axis" }, el("span", {}, "-" + duration(Math.max(1, pts.length - 1) * POLL_MS / 1000)),
        el("span", {}, "now")),
      el("div", { class: "legend" },
        el("span", {}, el("i", { class: "to" }), "to peer " + si(last.to) + "bit/s"),
        el("span", {}, el("i", { class: "from" }), "from peer " + si(last.from) + "bit/s")),
    ));
  }
}

function renderEvents(events) {
  const ul = $("events");
  ul.replaceChildren();
  if (events.length === 0) { ul.append(el("li", { class: "empty" }, "none")); return; }
  for (const e of events.slice(-50).reverse()) {
    const cls = /refus|disconnect|fail|down|degrad/.test(e.kind) ? "down"
      : /connect|up$|resum/.test(e.kind) ? "up" : "";
    ul.append(el("li", {},
      el("span", { class: "mono" }, new Date(e.at).toLocaleString() + " "),
      el("b", { class: cls }, e.kind), " " + e.remote +
        (e.handler ? " handler " + e.handler : "") + (e.reason ? ": " + e.reason : "")));
  }
}

poll();
</script>
</body>
</html>
`;
