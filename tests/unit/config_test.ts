/**
 * `vnet server --config` / `--check-config` (src/ops/config.ts), the Prometheus exposition
 * (src/ops/metrics.ts) and the client's rate arithmetic (src/cli/client.ts). No network, no root.
 */
import { assert, assertEquals, assertMatch, assertThrows } from "./assert.ts";
import {
  checkSettings,
  DEFAULTS,
  mergeSettings,
  parseConfig,
  resolvePath,
  resolveSettings,
  type Settings,
} from "../../src/ops/config.ts";
import { type ProcessInfo, renderMetrics } from "../../src/ops/metrics.ts";
import { type ListedHandler } from "../../src/control/server.ts";
import { computeRates, handlerTable, si } from "../../src/cli/client.ts";
import { createCa, issueCert } from "../../src/link/pki.ts";

// --- parsing ------------------------------------------------------------------------------

Deno.test("config: every flag name is a key; values keep their JSON types", () => {
  const s = parseConfig(
    JSON.stringify({
      listen: "0.0.0.0:7000",
      "secret-file": "/etc/vnet/vnet.secret",
      "tls-cert": "/etc/vnet/cert.pem",
      "tls-key": "/etc/vnet/key.pem",
      "tls-ca": "/etc/vnet/ca.pem",
      injector: "pcap",
      keepalive: 2.5,
      state: "/var/lib/vnet/state.json",
      "capture-buffer": 16,
      metrics: "127.0.0.1:9477",
      "log-level": "debug",
      "log-json": true,
    }),
    "/etc/vnet/vnet.json",
  );
  assertEquals(s.keepalive, 2.5);
  assertEquals(s["log-json"], true);
  const { config, problems } = resolveSettings(s);
  assertEquals(problems, []);
  assertEquals(config?.listen, { hostname: "0.0.0.0", port: 7000 });
  assertEquals(config?.metrics, { hostname: "127.0.0.1", port: 9477 });
  assertEquals(config?.tls, {
    cert: "/etc/vnet/cert.pem",
    key: "/etc/vnet/key.pem",
    ca: "/etc/vnet/ca.pem",
  });
  assertEquals(config?.injector, "pcap");
  assertEquals(config?.keepaliveSeconds, 2.5);
  assertEquals(config?.captureBufferMiB, 16);
  assertEquals(config?.logLevel, "debug");
  assertEquals(config?.logJson, true);
});

Deno.test("config: an unknown key is an error naming the key and the file", () => {
  assertThrows(
    () => parseConfig('{"listen": "1.2.3.4:7000", "secret_file": "x"}', "/etc/vnet/vnet.json"),
    /config '\/etc\/vnet\/vnet\.json': unknown key 'secret_file' \(known: listen, secret-file/,
  );
});

Deno.test("config: wrong types, bad JSON and non-objects are errors", () => {
  assertThrows(() => parseConfig('{"listen": 7000}', "c.json"), /'listen' must be a string/);
  assertThrows(() => parseConfig('{"log-json": "yes"}', "c.json"), /'log-json' must be a boolean/);
  assertThrows(() => parseConfig('{"keepalive": true}', "c.json"), /'keepalive' must be a number/);
  assertThrows(() => parseConfig('{"listen": ', "c.json"), /config 'c.json' is not valid JSON/);
  assertThrows(() => parseConfig("[1]", "c.json"), /one JSON object/);
  // Numbers may be written as strings, as on the command line.
  assertEquals(parseConfig('{"keepalive": "3"}', "c.json").keepalive, "3");
});

Deno.test("config: relative paths are relative to the config file's directory", () => {
  const s = parseConfig(
    '{"secret-file": "vnet.secret", "state": "/var/lib/vnet/state.json", "tls-ca": "tls/ca.pem"}',
    "/etc/vnet/vnet.json",
  );
  assertEquals(s["secret-file"], "/etc/vnet/vnet.secret");
  assertEquals(s.state, "/var/lib/vnet/state.json");
  assertEquals(s["tls-ca"], "/etc/vnet/tls/ca.pem");
  assertEquals(parseConfig('{"state": "s.json"}', "vnet.json").state, "s.json");
  assertEquals(resolvePath("/etc/vnet", "C:\\vnet\\s.json"), "C:\\vnet\\s.json");
});

Deno.test("config: flags given override the file; absent flags do not", () => {
  const file: Settings = { listen: "0.0.0.0:7000", keepalive: 5, "log-json": true, state: "/s" };
  const merged = mergeSettings(file, {
    listen: "127.0.0.1:7001",
    keepalive: undefined,
    "log-json": false, // parseArgs never gives false for an absent boolean flag, but be safe
    metrics: "127.0.0.1:9477",
    help: undefined,
  });
  assertEquals(merged, {
    listen: "127.0.0.1:7001",
    keepalive: 5,
    "log-json": true,
    state: "/s",
    metrics: "127.0.0.1:9477",
  });
});

Deno.test("config: defaults, and every bad value is one problem line", () => {
  const ok = resolveSettings({ listen: "[::1]:7000" });
  assertEquals(ok.problems, []);
  assertEquals(ok.config?.injector, DEFAULTS.injector);
  assertEquals(ok.config?.keepaliveSeconds, DEFAULTS.keepalive);
  assertEquals(ok.config?.captureBufferMiB, DEFAULTS["capture-buffer"]);
  assertEquals(ok.config?.logLevel, "info");
  assertEquals(ok.config?.metrics, undefined);

  const bad = resolveSettings({
    injector: "raw",
    keepalive: "0",
    "capture-buffer": 4096,
    metrics: "localhost",
    "log-level": "loud",
    "tls-cert": "c.pem",
  });
  assertEquals(bad.config, undefined);
  assertEquals(bad.problems.length, 7, bad.problems.join("\n"));
  const all = bad.problems.join("\n");
  assertMatch(all, /missing --listen/);
  assertMatch(all, /TLS needs all of --tls-cert, --tls-key and --tls-ca/);
  assertMatch(all, /bad --injector 'raw'/);
  assertMatch(all, /bad --keepalive '0'/);
  assertMatch(all, /bad --capture-buffer '4096'/);
  assertMatch(all, /bad address 'localhost' for --metrics/);
  assertMatch(all, /bad --log-level 'loud'/);
});

// --- --check-config: the files ------------------------------------------------------------

async function withDir(fn: (dir: string) => Promise<void>): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "vnet-config-test-" });
  try {
    await fn(dir);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

async function writeFile(path: string, text: string, mode = 0o600): Promise<string> {
  await Deno.writeTextFile(path, text);
  await Deno.chmod(path, mode);
  return path;
}

const SECRET = "0123456789abcdef0123456789abcdef\n";

Deno.test("check-config: a good secret and state file are ok", async () => {
  await withDir(async (dir) => {
    const secret = await writeFile(`${dir}/vnet.secret`, SECRET);
    const s = { listen: "127.0.0.1:7000", "secret-file": secret, state: `${dir}/state.json` };
    assertEquals(await checkSettings(s), []); // a missing state file is an empty one
    await writeFile(`${dir}/state.json`, '{"version": 1, "handlers": []}\n');
    assertEquals(await checkSettings(s), []);
  });
});

Deno.test("check-config: secret too open, too short, or missing", async () => {
  await withDir(async (dir) => {
    const open = await writeFile(`${dir}/open.secret`, SECRET, 0o644);
    const short = await writeFile(`${dir}/short.secret`, "tooshort\n");
    const base = { listen: "127.0.0.1:7000" };
    const p1 = await checkSettings({ ...base, "secret-file": open });
    assertEquals(p1.length, 1);
    assertMatch(p1[0], /permissions 0644 for secret file .* too open.*chmod 600/);
    const p2 = await checkSettings({ ...base, "secret-file": short });
    assertMatch(p2.join(), /too short \(8 bytes, need 16\)/);
    const p3 = await checkSettings({ ...base, "secret-file": `${dir}/nope` });
    assertMatch(p3.join(), /secret file .* not found/);
  });
});

Deno.test("check-config: a corrupt state file or a missing state directory is reported", async () => {
  await withDir(async (dir) => {
    const secret = await writeFile(`${dir}/vnet.secret`, SECRET);
    const base = { listen: "127.0.0.1:7000", "secret-file": secret };
    await writeFile(`${dir}/state.json`, "{not json");
    const p1 = await checkSettings({ ...base, state: `${dir}/state.json` });
    assertMatch(p1.join(), /state file .* is not valid JSON/);
    // Checking must not move the bad file aside, as a starting server would.
    assert((await Deno.stat(`${dir}/state.json`)).isFile);
    await writeFile(`${dir}/state.json`, '{"version": 99}');
    assertMatch(
      (await checkSettings({ ...base, state: `${dir}/state.json` })).join(),
      /not a version 1 vnet state file/,
    );
    const p2 = await checkSettings({ ...base, state: `${dir}/no/such/dir/state.json` });
    assertMatch(p2.join(), /state file directory .* does not exist/);
  });
});

Deno.test("check-config: TLS files: good, mismatched key, other CA, expired, unparsable", async () => {
  const ca = await createCa({ name: "Test CA" });
  const other = await createCa({ name: "Other CA" });
  const leaf = await issueCert({ ca, name: "node1", sans: ["127.0.0.1"] });
  const stranger = await issueCert({ ca, name: "node2", sans: ["127.0.0.1"] });
  await withDir(async (dir) => {
    const secret = await writeFile(`${dir}/vnet.secret`, SECRET);
    const files = {
      cert: await writeFile(`${dir}/cert.pem`, leaf.cert, 0o644),
      key: await writeFile(`${dir}/key.pem`, leaf.key),
      ca: await writeFile(`${dir}/ca.pem`, ca.cert, 0o644),
      otherKey: await writeFile(`${dir}/other-key.pem`, stranger.key),
      otherCa: await writeFile(`${dir}/other-ca.pem`, other.cert, 0o644),
      junk: await writeFile(`${dir}/junk.pem`, "hello\n", 0o644),
      openKey: await writeFile(`${dir}/open-key.pem`, leaf.key, 0o644),
    };
    const s = (cert: string, key: string, caFile: string): Settings => ({
      listen: "127.0.0.1:7000",
      "secret-file": secret,
      "tls-cert": cert,
      "tls-key": key,
      "tls-ca": caFile,
    });
    assertEquals(await checkSettings(s(files.cert, files.key, files.ca)), []);

    const mismatch = await checkSettings(s(files.cert, files.otherKey, files.ca));
    assertEquals(mismatch.length, 1, mismatch.join("\n"));
    assertMatch(mismatch[0], /TLS key .*other-key\.pem' does not match the certificate/);

    const wrongCa = await checkSettings(s(files.cert, files.key, files.otherCa));
    assertEquals(wrongCa.length, 1, wrongCa.join("\n"));
    assertMatch(wrongCa[0], /is not signed by the CA .*other-ca\.pem/);

    const later = new Date(Date.now() + 2 * 365 * 24 * 3600 * 1000);
    const expired = await checkSettings(s(files.cert, files.key, files.ca), later);
    assertEquals(expired.length, 1, expired.join("\n"));
    assertMatch(expired[0], /TLS certificate .*cert\.pem' expired on/);

    const junk = await checkSettings(s(files.junk, files.key, files.ca));
    assertMatch(junk.join("\n"), /TLS certificate .*junk\.pem' is not a PEM certificate/);

    const openKey = await checkSettings(s(files.cert, files.openKey, files.ca));
    assertMatch(openKey.join("\n"), /TLS key: permissions 0644 .* too open/);

    const missing = await checkSettings(s(`${dir}/none.pem`, files.key, files.ca));
    assertMatch(missing.join("\n"), /cannot read TLS certificate .*none\.pem/);
  });
});

// --- metrics ------------------------------------------------------------------------------

function handler(over: Partial<ListedHandler> = {}): ListedHandler {
  return {
    id: "0a0b0c0d",
    role: "proxy",
    device: "lan0",
    macs: ["02:00:00:00:00:01"],
    multicast: false,
    peer: "10.78.0.2:7000",
    state: "up",
    degraded: null,
    link: { state: "up", remote: "10.78.0.2:7000", tls: true, rttMs: 1.5 },
    toPeer: { frames: 10, bytes: 1000, drops: 3 },
    fromPeer: { frames: 20, bytes: 4000, drops: 1 },
    dropReasons: { link: 2, truncated: 1, offload: 0, inject: 1 },
    capture: { received: 13, dropped: 4, ifDropped: 5 },
    dialled: "out",
    reconnects: 2,
    ...over,
  };
}

const PROCESS: ProcessInfo = {
  rssBytes: 12345678,
  uptimeSeconds: 61.5,
  version: "0.1.0",
  commit: "abc123",
  deno: "2.9.6",
};

Deno.test("metrics: Prometheus text with HELP and TYPE for every family", () => {
  const text = renderMetrics([handler()], PROCESS);
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
    [handler({
      device: 'we"ird\\dev',
      state: "degraded",
      link: { state: "down", remote: null, tls: false, rttMs: null },
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

// --- client rates -------------------------------------------------------------------------

Deno.test("client rates: from two samples; gone or restarted handlers have none", () => {
  const a = { at: 1000, handlers: [handler(), handler({ id: "00000002" })] };
  const b = {
    at: 3000,
    handlers: [
      handler({
        toPeer: { frames: 210, bytes: 251000, drops: 3 },
        fromPeer: { frames: 20, bytes: 4000, drops: 1 },
      }),
      handler({ id: "00000002", toPeer: { frames: 1, bytes: 60, drops: 0 } }),
      handler({ id: "00000003" }),
    ],
  };
  const r = computeRates(a, b);
  assertEquals(r.get("0a0b0c0d"), {
    toPeer: { framesPerSecond: 100, bitsPerSecond: 1_000_000 },
    fromPeer: { framesPerSecond: 0, bitsPerSecond: 0 },
  });
  assertEquals(r.has("00000002"), false);
  assertEquals(r.has("00000003"), false);
  assertEquals(computeRates(a, { ...a }).size, 0);

  const table = handlerTable(b.handlers, r);
  assertMatch(table, /RTT .*TO PEER rate +FROM PEER rate/);
  assertMatch(table, /1\.50 ms/);
  assertMatch(table, /100 fr\/s 1\.00 Mbit\/s +0 fr\/s 0 bit\/s/);
  assert(!handlerTable(b.handlers, null).includes("rate"));
  assertEquals(handlerTable([], null), "no handlers");
});

Deno.test("client rates: SI formatting", () => {
  assertEquals(si(0), "0");
  assertEquals(si(2.5), "2.5");
  assertEquals(si(999), "999");
  assertEquals(si(1000), "1.00k");
  assertEquals(si(12_345), "12.3k");
  assertEquals(si(987_654_321), "988M");
  assertEquals(si(9_400_000_000), "9.40G");
});

Deno.test("packaging: the example config is valid and fits the systemd unit", async () => {
  const root = new URL("../../packaging/", import.meta.url).pathname;
  const s = parseConfig(await Deno.readTextFile(`${root}vnet.example.json`), "/etc/vnet/vnet.json");
  const { config, problems } = resolveSettings(s);
  assertEquals(problems, []);
  const unit = await Deno.readTextFile(`${root}vnet.service`);
  // The secret is the credential the unit loads; the state file is in its StateDirectory.
  const credential = /^LoadCredential=([^:]+):/m.exec(unit)?.[1];
  assertEquals(config?.secretFile, `/run/credentials/vnet.service/${credential}`);
  assertMatch(unit, /^StateDirectory=vnet$/m);
  assert(config?.state?.startsWith("/var/lib/vnet/"));
  assertMatch(unit, /^ExecStart=\S+ server --config \/etc\/vnet\/vnet\.json$/m);
});
