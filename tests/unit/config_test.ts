/** `vnet server --config` / `--check-config` (src/cli/config.ts). No network, no root. */
import { assert, assertEquals, assertMatch, assertThrows } from "./assert.ts";
import {
  checkSettings,
  DEFAULTS,
  loadMetricsToken,
  mergeSettings,
  parseConfig,
  resolvePath,
  resolveSettings,
  SERVER_FLAGS,
  type Settings,
} from "../../src/cli/config.ts";
import { SERVER_HELP } from "../../src/cli/server.ts";
import { createCa, issueCert } from "../../src/link/pki.ts";
import { STATE_VERSION } from "../../src/control/state.ts";
import { newSecretText } from "../../src/link/secret.ts";

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
      "allow-live-mac": true,
      "no-direct": true,
      "max-handshakes": 32,
      "max-handshakes-per-address": "4",
      "max-connections": 100,
      "metrics-token-file": "metrics.token",
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
  assertEquals(config?.allowLiveMac, true);
  assertEquals(config?.direct, false);
  assertEquals(config?.maxHandshakes, 32);
  assertEquals(config?.maxHandshakesPerAddress, 4);
  assertEquals(config?.maxConnections, 100);
  assertEquals(config?.metricsTokenFile, "/etc/vnet/metrics.token");
});

Deno.test("config: every server flag is in the parser, the help and (but three) the file", () => {
  const keys = SERVER_FLAGS.filter((f) => !("flagOnly" in f)).map((f) => f.name);
  assertEquals(
    SERVER_FLAGS.filter((f) => "flagOnly" in f).map((f) => f.name),
    ["config", "check-config", "help"],
  );
  const options = SERVER_HELP.slice(SERVER_HELP.indexOf("\nOptions:\n"));
  for (const f of SERVER_FLAGS) {
    // Each flag starts a line of the Options section, with its value name.
    const value = "value" in f ? ` ${f.value}` : "";
    assertMatch(options, new RegExp(`^  (-h, )?--${f.name}${value}( |$)`, "m"), f.name);
    if ("default" in f) assertMatch(options, new RegExp(`\\(default ${f.default}\\)`), f.name);
    // A file key of each type is accepted with its type and refused with another.
    if (keys.includes(f.name)) {
      const good = f.type === "boolean" ? true : f.type === "number" ? 1 : "x";
      assertEquals(
        parseConfig(JSON.stringify({ [f.name]: good }), "c.json")[f.name as "listen"],
        good,
      );
      const bad = f.type === "boolean" ? "yes" : f.type === "number" ? false : 1;
      assertThrows(
        () => parseConfig(JSON.stringify({ [f.name]: bad }), "c.json"),
        new RegExp(`'${f.name}' must be a ${f.type}`),
      );
    }
  }
  for (const line of SERVER_HELP.split("\n")) assert(line.length <= 100, `too long: ${line}`);
});

Deno.test("config: handshake and connection limits, live MACs, direct links, metrics token", () => {
  const ok = resolveSettings({ listen: "127.0.0.1:7000" });
  assertEquals(ok.config?.maxHandshakes, 64);
  assertEquals(ok.config?.maxHandshakesPerAddress, 16);
  assertEquals(ok.config?.maxConnections, 1024);
  assertEquals(ok.config?.allowLiveMac, false);
  assertEquals(ok.config?.direct, true);
  assertEquals(ok.config?.metricsTokenFile, undefined);

  const problems = (s: Settings) => resolveSettings({ listen: "127.0.0.1:7000", ...s }).problems;
  assertEquals(problems({ "max-handshakes": "0" }), [
    "bad --max-handshakes '0': a whole number from 1 to 65536",
  ]);
  assertEquals(problems({ "max-handshakes-per-address": 2.5 }), [
    "bad --max-handshakes-per-address '2.5': a whole number from 1 to 65536",
  ]);
  assertEquals(problems({ "max-connections": "lots" }), [
    "bad --max-connections 'lots': a whole number from 1 to 65536",
  ]);
  assertEquals(problems({ "max-handshakes": 4, "max-handshakes-per-address": 8 }), [
    "bad --max-handshakes-per-address '8': at most --max-handshakes (4)",
  ]);
  // One problem per bad value: a bad total is not also blamed on the per-address limit.
  assertEquals(problems({ "max-handshakes": 0 }).length, 1);
  assertEquals(problems({ "metrics-token-file": "/t" }), [
    "--metrics-token-file goes with --metrics ADDR:PORT",
  ]);
  // Absent boolean flags do not override the file; given ones do.
  assertEquals(mergeSettings({ "no-direct": true }, { "no-direct": undefined }), {
    "no-direct": true,
  });
  assertEquals(mergeSettings({}, { "allow-live-mac": true })["allow-live-mac"], true);
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

// 32 random bytes as hex, as the lab writes them.
const SECRET = "575c1d3e16076403f4648fd952038746d9dd177b0adb3b9147857496acbf0eee\n";

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
    assertMatch(
      p2.join(),
      /too short: 6 bytes of key material \(read as base64\), need at least 32/,
    );
    const p3 = await checkSettings({ ...base, "secret-file": `${dir}/nope` });
    assertMatch(p3.join(), /secret file .* not found/);
  });
});

Deno.test("check-config: the metrics token file is private and not empty", async () => {
  await withDir(async (dir) => {
    const base = {
      listen: "127.0.0.1:7000",
      "secret-file": await writeFile(`${dir}/vnet.secret`, SECRET),
      metrics: "127.0.0.1:9477",
    };
    const goodToken = newSecretText().trim();
    const good = await writeFile(`${dir}/good.token`, goodToken + "\n");
    assertEquals(await checkSettings({ ...base, "metrics-token-file": good }), []);
    assertEquals(loadMetricsToken(good), goodToken);
    const open = await writeFile(`${dir}/open.token`, goodToken + "\n", 0o644);
    const p1 = await checkSettings({ ...base, "metrics-token-file": open });
    assertEquals(p1.length, 1, p1.join("\n"));
    assertMatch(p1[0], /permissions 0644 for metrics token file .*open\.token' are too open/);
    const empty = await writeFile(`${dir}/empty.token`, " \n");
    const p2 = await checkSettings({ ...base, "metrics-token-file": empty });
    assertMatch(p2.join("\n"), /metrics token file .*empty\.token' is empty/);
    const p3 = await checkSettings({ ...base, "metrics-token-file": `${dir}/none` });
    assertMatch(p3.join("\n"), /metrics token file .*none' not found/);
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
      new RegExp(`not a version ${STATE_VERSION} vnet state file`),
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
