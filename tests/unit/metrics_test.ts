/** The Prometheus exposition (src/ops/metrics.ts). No network, no root. */
import { assert, assertMatch } from "./assert.ts";
import { type ProcessInfo, renderMetrics } from "../../src/ops/metrics.ts";
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
      link: { state: "down", remote: null, tls: false, rttMs: null, socket: null },
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
