/** The Prometheus exposition (src/ops/metrics.ts). No network, no root. */
import { assert, assertEquals, assertMatch } from "./assert.ts";
import {
  hostAllowed,
  type ProcessInfo,
  renderMetrics,
  serveMetrics,
  TokenGuesses,
} from "../../src/ops/metrics.ts";
import { Logger } from "../../src/log.ts";
import type { StatusJson } from "../../src/ops/status_page.ts";
import { listedHandler } from "./listed_handler.ts";

const PROCESS: ProcessInfo = {
  rssBytes: 12345678,
  uptimeSeconds: 61.5,
  version: "0.1.0",
  commit: "abc123",
  deno: "2.9.6",
};

Deno.test("metrics: Prometheus text with HELP and TYPE for every family", () => {
  const text = renderMetrics([listedHandler()], PROCESS);
  const lines = text.trimEnd().split("\n");
  const l = 'id="0a0b0c0d",role="proxy",device="lan0"';
  for (
    const want of [
      `vnet_handler_frames_total{${l},direction="to_peer"} 10`,
      `vnet_handler_frames_total{${l},direction="from_peer"} 20`,
      `vnet_handler_bytes_total{${l},direction="to_peer"} 1000`,
      `vnet_handler_bytes_total{${l},direction="from_peer"} 4000`,
      `vnet_handler_drops_total{${l},reason="link"} 2`,
      `vnet_handler_drops_total{${l},reason="truncated"} 1`,
      `vnet_handler_drops_total{${l},reason="offload"} 0`,
      `vnet_handler_drops_total{${l},reason="inject"} 1`,
      `vnet_handler_link_up{${l}} 1`,
      `vnet_handler_degraded{${l}} 0`,
      `vnet_handler_reconnects_total{${l}} 2`,
      `vnet_handler_link_rtt_seconds{${l}} 0.0015`,
      `vnet_handler_capture_received_total{${l}} 13`,
      `vnet_handler_capture_kernel_drops_total{${l}} 4`,
      `vnet_handler_capture_interface_drops_total{${l}} 5`,
      "vnet_handlers 1",
      "vnet_process_resident_memory_bytes 12345678",
      "vnet_process_uptime_seconds 61.5",
      'vnet_build_info{version="0.1.0",commit="abc123",deno="2.9.6"} 1',
    ]
  ) {
    assert(lines.includes(want), `missing line: ${want}\n${text}`);
  }
  // Every sample's family has exactly one HELP and one TYPE line, before its samples.
  const families = new Set(
    lines.filter((x) => !x.startsWith("#")).map((x) => x.split(/[{ ]/)[0]),
  );
  for (const f of families) {
    const help = lines.findIndex((x) => x.startsWith(`# HELP ${f} `));
    const type = lines.findIndex((x) => x.startsWith(`# TYPE ${f} `));
    const first = lines.findIndex((x) => x.startsWith(`${f}{`) || x.startsWith(`${f} `));
    assert(help >= 0 && type === help + 1 && first > type, `HELP/TYPE of ${f}`);
    assertMatch(lines[type], f.endsWith("_total") ? / counter$/ : / gauge$/);
  }
  assert(text.endsWith("\n"));
});

Deno.test("metrics: link down, unknown RTT, degraded; label values escaped", () => {
  const text = renderMetrics(
    [listedHandler({
      device: 'we"ird\\dev',
      state: "degraded",
      link: {
        state: "down",
        remote: null,
        tls: false,
        rttMs: null,
        socket: null,
        transport: "tcp",
        udp: null,
      },
    })],
    PROCESS,
  );
  const l = 'id="0a0b0c0d",role="proxy",device="we\\"ird\\\\dev"';
  assert(text.includes(`vnet_handler_link_up{${l}} 0\n`), text);
  assert(text.includes(`vnet_handler_degraded{${l}} 1\n`), text);
  assert(!/^vnet_handler_link_rtt_seconds\{/m.test(text), "no RTT sample while unknown");
  assert(text.includes("# TYPE vnet_handler_link_rtt_seconds gauge\n"));
  const none = renderMetrics([], PROCESS);
  assert(none.includes("vnet_handlers 0\n"));
  assert(!/^vnet_handler_/m.test(none));
});

/**
 * One request on a fresh connection; status and text. With `extra`, that many more bytes are
 * sent once the server has answered (as a client that pipelines or sends a body does), and
 * only then is the answer read: a server that closed without lingering resets the connection,
 * and the reset destroys the answer not yet read.
 */
async function raw(
  port: number,
  head: string,
  extra = 0,
): Promise<{ status: number; text: string }> {
  const c = await Deno.connect({ hostname: "127.0.0.1", port });
  try {
    await c.write(new TextEncoder().encode(head));
    if (extra) {
      await new Promise((r) => setTimeout(r, 100));
      await c.write(new Uint8Array(extra).fill(0x41)).catch(() => 0);
      await new Promise((r) => setTimeout(r, 100));
    }
    let text = "";
    const buf = new Uint8Array(65536);
    for (;;) {
      const n = await c.read(buf).catch((e) => {
        if (e instanceof Deno.errors.ConnectionReset) return "reset" as const;
        throw e;
      });
      if (n === "reset") return { status: -1, text: text + "(reset)" };
      if (n === null) break;
      text += new TextDecoder().decode(buf.subarray(0, n));
    }
    return { status: Number(/^HTTP\/1\.1 (\d+)/.exec(text)?.[1] ?? 0), text };
  } finally {
    c.close();
  }
}

const quiet = new Logger();
const STATUS = () => ({ secret: "0a0b0c0d-handler" }) as unknown as StatusJson;

Deno.test("metrics: Host must be an IP literal, localhost or a listed name (DNS rebinding)", async () => {
  const names = new Set(["vnet.example"]);
  for (
    const ok of [
      "127.0.0.1:9477",
      "10.1.2.3",
      "[::1]:9477",
      "localhost",
      "LOCALHOST:1",
      "a.localhost",
      "vnet.example",
      "vnet.example.:9477",
    ]
  ) {
    assert(hostAllowed(ok, names), ok);
  }
  for (
    const bad of [
      undefined,
      "",
      "rebind.example",
      "rebind.example:9477",
      "127.0.0.1.rebind.example",
      "vnet.example.evil",
      "[::1",
      "a:b:c",
      "localhost.evil",
    ]
  ) {
    assert(!hostAllowed(bad, names), String(bad));
  }
  const s = serveMetrics({ hostname: "127.0.0.1", port: 0 }, {
    metrics: () => "vnet_handlers 1\n",
    status: STATUS,
    hosts: ["vnet.example"],
  }, quiet);
  try {
    for (const path of ["/", "/api/status", "/metrics"]) {
      const r = await raw(s.addr.port, `GET ${path} HTTP/1.1\r\nHost: rebind.example:9477\r\n\r\n`);
      assertEquals(r.status, 421, path);
      assert(!/0a0b0c0d|vnet_handlers|<html/i.test(r.text), r.text);
    }
    const listed = await raw(s.addr.port, "GET /api/status HTTP/1.1\r\nHost: vnet.example\r\n\r\n");
    assertEquals(listed.status, 200);
    assertMatch(listed.text, /0a0b0c0d/);
  } finally {
    await s.shutdown();
  }
});

Deno.test("metrics: wrong tokens are limited per address; the right one then waits too", async () => {
  const token = "k".repeat(8) + crypto.randomUUID();
  const s = serveMetrics({ hostname: "127.0.0.1", port: 0 }, {
    metrics: () => "vnet_handlers 1\n",
    token,
  }, quiet);
  const get = (t: string) =>
    raw(
      s.addr.port,
      `GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer ${t}\r\n\r\n`,
    );
  try {
    const statuses: number[] = [];
    for (let i = 0; i < 15; i++) statuses.push((await get(`guess${i}`)).status);
    assertEquals(statuses.filter((x) => x === 401).length, 10, statuses.join());
    assertEquals(statuses.slice(10), [429, 429, 429, 429, 429]);
    assertEquals((await get(token)).status, 429);
    await new Promise((r) => setTimeout(r, 1100));
    assertEquals((await get(token)).status, 200);
  } finally {
    await s.shutdown();
  }
  let t = 0;
  const guesses = new TokenGuesses(() => t);
  for (let i = 0; i < 10; i++) guesses.failed("10.0.0.1");
  assert(guesses.waitMs("10.0.0.1") > 0);
  assertEquals(guesses.waitMs("10.0.0.2"), 0);
  t = 1000;
  assertEquals(guesses.waitMs("10.0.0.1"), 0);
});

Deno.test("metrics: a large answer survives unread bytes from the client (lingering close)", async () => {
  // 16 MB does not fit in the kernel's buffers, so the server is still sending when the client
  // starts reading; a close with the client's 100 kB unread would reset the connection and
  // drop what was still queued.
  const body = "# " + "x".repeat(16 * 1024 * 1024) + "\n";
  const s = serveMetrics({ hostname: "127.0.0.1", port: 0 }, () => body, quiet);
  try {
    for (let i = 0; i < 3; i++) {
      const c = await Deno.connect({ hostname: "127.0.0.1", port: s.addr.port });
      const head = new TextEncoder().encode("GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n");
      const extra = new Uint8Array(100_000).fill(0x41);
      const sent = new Uint8Array(head.length + extra.length);
      sent.set(head);
      sent.set(extra, head.length);
      let off = 0;
      while (off < sent.length) off += await c.write(sent.subarray(off));
      await new Promise((r) => setTimeout(r, 200));
      let got = 0, reset = false;
      const buf = new Uint8Array(1 << 20);
      for (;;) {
        const n = await c.read(buf).catch(() => {
          reset = true;
          return null;
        });
        if (n === null) break;
        got += n;
      }
      c.close();
      assert(!reset && got > body.length, `got ${got} of ${body.length}+ bytes, reset ${reset}`);
    }
  } finally {
    await s.shutdown();
  }
});

Deno.test("metrics: a Host's direct paths, by what carries them, and their UDP datagrams", () => {
  const udp = {
    state: "up" as const,
    sealed: true,
    peer: "203.0.113.7:7000",
    mtu: 1422,
    datagramsOut: 40,
    datagramsIn: 38,
    fallbackFrames: 0,
    refused: 0,
    sendRefused: 0,
    tooBig: 0,
    downs: 0,
    lossPercent: null,
    peerLossPercent: null,
    queueDelayMs: null,
    aqmDrops: 0,
    pacedMbps: null,
    checksums: "partial" as const,
  };
  const path = (mac: string, via: "direct" | "proxy", transport: "udp" | "tcp" | null) => ({
    mac,
    via,
    peer: "10.78.0.12:7000",
    frames: 50,
    bytes: 5000,
    viaProxy: { frames: 10, bytes: 1000 },
    viaDirect: { frames: 40, bytes: 4000 },
    transport,
    udp: transport === "udp" ? udp : null,
  });
  const text = renderMetrics([
    listedHandler({
      role: "host",
      paths: [
        path("02:00:00:00:00:0a", "direct", "udp"),
        path("02:00:00:00:00:0b", "direct", "tcp"),
        path("02:00:00:00:00:0c", "proxy", null),
      ],
    }),
  ], PROCESS);
  const lines = text.split("\n");
  for (
    const want of [
      'vnet_path_direct{mac="02:00:00:00:00:0a",transport="udp"} 1',
      'vnet_path_direct{mac="02:00:00:00:00:0b",transport="tcp"} 1',
      'vnet_path_direct_udp_datagrams_total{mac="02:00:00:00:00:0a",direction="to_peer"} 40',
      'vnet_path_direct_udp_datagrams_total{mac="02:00:00:00:00:0a",direction="from_peer"} 38',
    ]
  ) {
    assert(lines.includes(want), `missing line: ${want}\n${text}`);
  }
  assert(!text.includes('vnet_path_direct{mac="02:00:00:00:00:0c"'), "a proxied path as direct");
});

Deno.test("metrics: a handler's UDP path, its queue delay among them; none while unknown", () => {
  const udp = {
    state: "up" as const,
    sealed: false,
    peer: "10.78.0.2:7000",
    mtu: 1450,
    datagramsOut: 40,
    datagramsIn: 38,
    fallbackFrames: 1,
    refused: 0,
    sendRefused: 5,
    tooBig: 0,
    downs: 0,
    lossPercent: 0,
    peerLossPercent: 2,
    queueDelayMs: 4.2,
    aqmDrops: 3,
    pacedMbps: 610,
    checksums: "partial" as const,
  };
  const base = listedHandler();
  const l = 'id="0a0b0c0d",role="proxy",device="lan0"';
  const text = renderMetrics([listedHandler({ link: { ...base.link, udp } })], PROCESS);
  const lines = text.split("\n");
  for (
    const want of [
      `vnet_handler_udp_path_up{${l}} 1`,
      `vnet_handler_udp_path_peer_loss_ratio{${l}} 0.02`,
      `vnet_handler_udp_path_queue_delay_seconds{${l}} 0.0042`,
      `vnet_handler_udp_path_send_refused_total{${l}} 5`,
    ]
  ) {
    assert(lines.includes(want), `missing line: ${want}\n${text}`);
  }
  const unknown = renderMetrics(
    [listedHandler({ link: { ...base.link, udp: { ...udp, queueDelayMs: null } } })],
    PROCESS,
  );
  assert(!unknown.includes("vnet_handler_udp_path_queue_delay_seconds{"), unknown);
});

Deno.test("metrics: the UDP socket's datagrams no path took; none without a socket", () => {
  const udp = { sendRefused: 7, strangers: 3, receiveTruncated: 1 };
  const lines = renderMetrics([listedHandler()], PROCESS, udp).split("\n");
  for (
    const want of [
      "# TYPE vnet_udp_datagrams_total counter",
      'vnet_udp_datagrams_total{outcome="send_refused"} 7',
      'vnet_udp_datagrams_total{outcome="stranger"} 3',
      'vnet_udp_datagrams_total{outcome="truncated"} 1',
    ]
  ) {
    assert(lines.includes(want), `missing line: ${want}\n${lines.join("\n")}`);
  }
  const without = renderMetrics([listedHandler()], PROCESS);
  assert(!/^vnet_udp_datagrams_total\{/m.test(without), without);
});
