/**
 * Running VNET as a service: `vnet server --config FILE --metrics ADDR:PORT`, `--check-config`,
 * the systemd unit, and the observability of a real handler (metrics, `client list` rates and
 * RTT, `client watch`).
 *
 * The config and metrics parts run real servers in the root namespace on loopback, with
 * exactly the permissions `deno task compile` bakes into the binary (scripts/compile.ts
 * PERMISSIONS), so a missing permission shows up here. With VNET_BIN set they run that binary.
 * The handler part needs root and network namespaces (lab/netns.ts) and is skipped, saying
 * so, without them.
 *
 *   deno test -A tests/e2e/service_test.ts
 *   VNET_BIN=dist/vnet deno test -A tests/e2e/service_test.ts
 */
import {
  canMakeNamespaces,
  REPO_ROOT,
  type Role,
  sendRawFrame,
  spawn,
  Topology,
  tryRun,
  waitFor,
  WAN,
} from "../../lab/netns.ts";
import { PERMISSIONS, V8_FLAGS } from "../../scripts/compile.ts";
import { createSocket } from "node:dgram";
import { createCa, issueCert } from "../../src/link/pki.ts";
import config from "../../deno.json" with { type: "json" };

function assert(cond: unknown, msg: string): asserts cond {
  if (!cond) throw new Error(msg);
}

/** The program with the compiled binary's permissions (or the binary itself). */
function vnetBaked(): string[] {
  const bin = Deno.env.get("VNET_BIN");
  if (bin) return [bin];
  return [Deno.execPath(), "run", ...PERMISSIONS, `--v8-flags=${V8_FLAGS}`, `${REPO_ROOT}/main.ts`];
}

function freePort(): number {
  const l = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (l.addr as Deno.NetAddr).port;
  l.close();
  return port;
}

const SECRET = "cdf569895ff0020204eb37ad937db3b53e0dacffa5452c05f9c7f6f62bb74db1\n";

async function write(path: string, text: string, mode = 0o600): Promise<string> {
  await Deno.writeTextFile(path, text);
  await Deno.chmod(path, mode);
  return path;
}

async function withDir(fn: (dir: string) => Promise<void>): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "vnet-service-test-" });
  try {
    await fn(dir);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

const procTest = { sanitizeOps: false, sanitizeResources: false };

// ---------------------------------------------------------------------------------------------
// --config and --metrics on loopback
// ---------------------------------------------------------------------------------------------

Deno.test({
  name: "service: server from --config, flags override it, /metrics over HTTP, 404 otherwise",
  ...procTest,
  fn: async () => {
    await withDir(async (dir) => {
      await write(`${dir}/vnet.secret`, SECRET);
      const listen = freePort();
      const metricsPort = freePort();
      const unusedPort = freePort();
      // Relative paths are relative to the config's directory; the flags below win over the
      // file's metrics address and log level.
      await write(
        `${dir}/vnet.json`,
        JSON.stringify({
          listen: `127.0.0.1:${listen}`,
          "secret-file": "vnet.secret",
          state: "state.json",
          metrics: `127.0.0.1:${unusedPort}`,
          "log-level": "error",
        }),
        0o644,
      );
      const server = spawn(null, [
        ...vnetBaked(),
        "server",
        "--config",
        `${dir}/vnet.json`,
        "--metrics",
        `127.0.0.1:${metricsPort}`,
        "--log-level",
        "info",
      ]);
      try {
        await server.waitForLine(new RegExp(`metrics listening .*:${metricsPort}/metrics`), 30_000);
        await server.waitForLine(
          new RegExp(`server listening addr=127\\.0\\.0\\.1:${listen}`),
          10_000,
        );

        const base = `http://127.0.0.1:${metricsPort}`;
        const r = await fetch(`${base}/metrics`);
        const text = await r.text();
        assert(r.status === 200, `GET /metrics: ${r.status}`);
        assert(
          r.headers.get("content-type")?.startsWith("text/plain; version=0.0.4") ?? false,
          `content-type ${r.headers.get("content-type")}`,
        );
        for (
          const re of [
            /^# HELP vnet_build_info /m,
            /^# TYPE vnet_build_info gauge$/m,
            new RegExp(`^vnet_build_info\\{version="${config.version}",commit="[^"]+",deno="`, "m"),
            /^vnet_handlers 0$/m,
            /^# TYPE vnet_handler_frames_total counter$/m,
            /^vnet_process_resident_memory_bytes [1-9]\d+$/m,
            /^vnet_process_uptime_seconds \d+(\.\d+)?$/m,
          ]
        ) {
          assert(re.test(text), `/metrics lacks ${re}:\n${text}`);
        }
        // A datagram no path expects, to the server's UDP port (its listen port): the worker
        // counts it, and /metrics says so.
        const stray = createSocket("udp4");
        await new Promise<void>((done, fail) =>
          stray.send(
            new TextEncoder().encode("not VXLAN"),
            listen,
            "127.0.0.1",
            (e) => e ? fail(e) : done(),
          )
        );
        stray.close();
        const strangers = await waitFor("the stray datagram in /metrics", async () => {
          const t = await (await fetch(`${base}/metrics`)).text();
          const m = /^vnet_udp_datagrams_total\{outcome="stranger"\} (\d+)$/m.exec(t);
          return m && Number(m[1]) >= 1 ? t : undefined;
        }, 10_000);
        assert(
          /^vnet_udp_datagrams_total\{outcome="send_refused"\} 0$/m.test(strangers),
          `/metrics: a refused send on an idle server:\n${strangers}`,
        );
        // `/` is the status page (issue 13); the endpoint is read-only.
        for (
          const [method, path, status] of [
            ["GET", "/", 200],
            ["GET", "/metrics/x", 404],
            ["POST", "/metrics", 405],
          ] as const
        ) {
          const res = await fetch(`${base}${path}`, { method });
          await res.body?.cancel();
          assert(res.status === status, `${method} ${path}: expected ${status}, got ${res.status}`);
        }
        // The file's metrics address was overridden, so nothing listens there.
        const other = await fetch(`http://127.0.0.1:${unusedPort}/metrics`).then(
          (x) => (x.body?.cancel(), x.status),
          () => "refused",
        );
        assert(other === "refused", `the config's metrics address answered: ${other}`);

        // The client side of observability, against this server.
        const auth = ["--server", `127.0.0.1:${listen}`, "--secret-file", `${dir}/vnet.secret`];
        const list = await tryRun(null, [...vnetBaked(), "client", "list", ...auth]);
        assert(list.code === 0 && list.stdout.trim() === "no handlers", `list: ${list.stderr}`);
        const watch = await tryRun(null, [
          ...vnetBaked(),
          "client",
          "watch",
          ...auth,
          "--interval",
          "0.2",
          "--count",
          "3",
        ], { timeoutMs: 30_000 });
        assert(watch.code === 0, `watch failed: ${watch.stderr}`);
        const snapshots = watch.stdout.match(/^vnet watch 127\.0\.0\.1:\d+, every 0\.2 s/gm);
        assert(
          snapshots?.length === 3,
          `watch (not a TTY) should print 3 snapshots:\n${watch.stdout}`,
        );
        assert(!watch.stdout.includes("\x1b["), "no terminal escapes when stdout is not a TTY");
      } finally {
        const code = await server.kill();
        assert(code === 0, `server exit code on SIGTERM: ${code}\n${server.output()}`);
      }
    });
  },
});

// ---------------------------------------------------------------------------------------------
// --check-config
// ---------------------------------------------------------------------------------------------

Deno.test({
  name: "service: --check-config passes a good config and lists every problem of a bad one",
  ...procTest,
  fn: async () => {
    const ca = await createCa({ name: "Test CA" });
    const leaf = await issueCert({ ca, name: "node", sans: ["127.0.0.1"] });
    const other = await issueCert({ ca, name: "other", sans: ["127.0.0.1"] });
    const old = await issueCert({
      ca,
      name: "old",
      sans: ["127.0.0.1"],
      notBefore: new Date(Date.now() - 10 * 86400_000),
      days: 1,
    });
    await withDir(async (dir) => {
      const f = {
        secret: await write(`${dir}/vnet.secret`, SECRET),
        openSecret: await write(`${dir}/open.secret`, SECRET, 0o644),
        cert: await write(`${dir}/cert.pem`, leaf.cert, 0o644),
        key: await write(`${dir}/key.pem`, leaf.key),
        otherKey: await write(`${dir}/other-key.pem`, other.key),
        oldCert: await write(`${dir}/old.pem`, old.cert, 0o644),
        ca: await write(`${dir}/ca.pem`, ca.cert, 0o644),
      };
      const good = {
        listen: "127.0.0.1:7000",
        "secret-file": f.secret,
        "tls-cert": f.cert,
        "tls-key": f.key,
        "tls-ca": f.ca,
        state: `${dir}/state.json`,
        metrics: "127.0.0.1:9477",
      };
      const check = async (cfg: Record<string, unknown> | null, ...flags: string[]) => {
        const args = [...vnetBaked(), "server", "--check-config", ...flags];
        if (cfg) {
          const path = await write(`${dir}/c.json`, JSON.stringify(cfg), 0o644);
          args.push("--config", path);
        }
        return await tryRun(null, args, { timeoutMs: 30_000 });
      };
      const problems = (r: { stderr: string }) => r.stderr.trim().split("\n").filter((l) => l);

      const ok = await check(good);
      assert(ok.code === 0, `good config: exit ${ok.code}: ${ok.stderr}`);
      assert(ok.stdout.trim() === "config ok", `good config printed: ${ok.stdout}`);
      // Flags alone, no file.
      const flagsOnly = await check(null, "--listen", "[::1]:7000", "--secret-file", f.secret);
      assert(flagsOnly.code === 0 && flagsOnly.stdout.trim() === "config ok", flagsOnly.stderr);

      const unknown = await check({ ...good, lisen: "x" });
      assert(unknown.code === 1, `unknown key: exit ${unknown.code}`);
      assert(problems(unknown).length === 1, `unknown key: one line:\n${unknown.stderr}`);
      assert(/unknown key 'lisen'/.test(unknown.stderr), unknown.stderr);

      const bad = await check({
        ...good,
        "secret-file": f.openSecret,
        "tls-cert": f.oldCert,
        "tls-key": f.otherKey,
        state: `${dir}/missing/state.json`,
        injector: "dpdk",
      });
      const lines = problems(bad);
      assert(bad.code === 1, `bad config: exit ${bad.code}`);
      for (
        const re of [
          /^vnet: bad --injector 'dpdk'/,
          /^vnet: permissions 0644 for secret file .* too open/,
          /^vnet: TLS certificate .*old\.pem' expired on/,
          /^vnet: TLS key .*other-key\.pem' does not match the certificate/,
          /^vnet: state file directory .*missing' does not exist/,
        ]
      ) {
        assert(lines.some((l) => re.test(l)), `bad config: no line matches ${re}:\n${bad.stderr}`);
      }
      assert(lines.length === 5, `bad config: one line per problem:\n${bad.stderr}`);
      assert(bad.stdout.trim() === "", `bad config printed on stdout: ${bad.stdout}`);

      // A flag overrides the file in the check too.
      const flag = await check(good, "--listen", "nowhere");
      assert(
        flag.code === 1 && /bad address 'nowhere' for --listen/.test(flag.stderr),
        flag.stderr,
      );

      const missing = await tryRun(null, [
        ...vnetBaked(),
        "server",
        "--check-config",
        "--config",
        `${dir}/none.json`,
      ]);
      assert(
        missing.code === 1 && /cannot read config .*none\.json/.test(missing.stderr),
        missing.stderr,
      );

      // The same problems stop a real start, with one line.
      const start = await tryRun(null, [
        ...vnetBaked(),
        "server",
        "--config",
        `${dir}/c.json`,
        "--listen",
        "nowhere",
      ]);
      assert(start.code === 1 && problems(start).length === 1, `start: ${start.stderr}`);
    });
  },
});

// ---------------------------------------------------------------------------------------------
// The systemd unit
// ---------------------------------------------------------------------------------------------

const SYSTEMD_ANALYZE = await tryRun(null, ["systemd-analyze", "--version"]).then(
  (r) => r.code === 0,
  () => false,
);
if (!SYSTEMD_ANALYZE) console.log("SKIP systemd unit check: no systemd-analyze on this machine");

Deno.test({
  name: "service: packaging/vnet.service passes systemd-analyze verify",
  ignore: !SYSTEMD_ANALYZE,
  fn: async () => {
    await withDir(async (dir) => {
      // verify insists that ExecStart's program exists: point it at one that does.
      const unit = await Deno.readTextFile(`${REPO_ROOT}/packaging/vnet.service`);
      assert(unit.includes("/usr/local/bin/vnet server --config /etc/vnet/vnet.json"), "ExecStart");
      for (
        const line of [
          "Restart=on-failure",
          "AmbientCapabilities=CAP_NET_RAW CAP_NET_ADMIN",
          "CapabilityBoundingSet=CAP_NET_RAW CAP_NET_ADMIN",
          "StateDirectory=vnet",
          "NoNewPrivileges=yes",
          "ProtectSystem=strict",
          "RestrictAddressFamilies=AF_INET AF_INET6 AF_PACKET AF_NETLINK AF_UNIX",
        ]
      ) {
        assert(unit.split("\n").includes(line), `vnet.service lacks '${line}'`);
      }
      const bin = Deno.env.get("VNET_BIN") ?? "/bin/true";
      await Deno.writeTextFile(`${dir}/vnet.service`, unit.replaceAll("/usr/local/bin/vnet", bin));
      const r = await tryRun(null, ["systemd-analyze", "verify", `${dir}/vnet.service`], {
        timeoutMs: 30_000,
      });
      const ours = (r.stdout + r.stderr).split("\n").filter((l) => l.includes("vnet.service"));
      assert(
        r.code === 0 && ours.length === 0,
        `systemd-analyze verify (exit ${r.code}):\n${r.stderr}`,
      );
    });
  },
});

// ---------------------------------------------------------------------------------------------
// A real handler: its metrics, and the client's rates and RTT
// ---------------------------------------------------------------------------------------------

const NS_OK = await canMakeNamespaces();
if (!NS_OK) console.log("SKIP service handler metrics: needs root and `ip netns`");

const METRICS_PORT = 9477;
const SCRAPE_PY = "import sys, urllib.request\n" +
  "print(urllib.request.urlopen(sys.argv[1], timeout=5).read().decode(), end='')";

async function scrape(topo: Topology, role: Role): Promise<string> {
  const url = `http://${WAN[role]}:${METRICS_PORT}/metrics`;
  const r = await tryRun(topo.ns[role]!, ["python3", "-c", SCRAPE_PY, url], { timeoutMs: 10_000 });
  if (r.code !== 0) throw new Error(`scraping ${url} failed: ${r.stderr}`);
  return r.stdout;
}

function value(text: string, series: string): number | null {
  const line = text.split("\n").find((l) => l.startsWith(series + " "));
  return line ? Number(line.slice(series.length + 1)) : null;
}

Deno.test({
  name: "service: metrics, list rates and RTT, and watch for a real handler",
  ignore: !NS_OK,
  ...procTest,
  fn: async () => {
    const topo = await Topology.create({ vms: 1 });
    try {
      const extra = (
        role: Role,
      ) => ["--keepalive", "0.5", "--metrics", `${WAN[role]}:${METRICS_PORT}`];
      await Promise.all([
        topo.startServer("proxy", { extraArgs: extra("proxy") }),
        topo.startServer("host", { extraArgs: extra("host") }),
      ]);
      const id = await topo.createHandler();
      const vm = topo.vms[0];
      await sendRawFrame(vm.ns, "eth0", "ff:ff:ff:ff:ff:ff", 0x88b5, "vnet-metrics", 5);

      const l = (role: string, device: string) => `id="${id}",role="${role}",device="${device}"`;
      const proxy = l("proxy", "lan0");
      const host = l("host", vm.hostDev);
      // Wait until the frames arrived and a keepalive measured the round trip.
      const text = await waitFor(
        "proxy metrics with frames and RTT",
        async () => {
          const t = await scrape(topo, "proxy");
          const from = value(t, `vnet_handler_frames_total{${proxy},direction="from_peer"}`) ?? 0;
          const rtt = value(t, `vnet_handler_link_rtt_seconds{${proxy}}`);
          return from >= 5 && rtt !== null ? t : undefined;
        },
        15_000,
        250,
      );
      assert(value(text, `vnet_handler_link_up{${proxy}}`) === 1, `link_up:\n${text}`);
      const rtt = value(text, `vnet_handler_link_rtt_seconds{${proxy}}`)!;
      assert(rtt > 0 && rtt < 1, `RTT ${rtt} s`);
      assert(
        (value(text, `vnet_handler_bytes_total{${proxy},direction="from_peer"}`) ?? 0) >= 5 * 60,
        `bytes from peer:\n${text}`,
      );
      for (const reason of ["link", "truncated", "offload", "inject"]) {
        assert(
          value(text, `vnet_handler_drops_total{${proxy},reason="${reason}"}`) !== null,
          `drops{reason=${reason}} missing:\n${text}`,
        );
      }
      assert(value(text, `vnet_handler_capture_kernel_drops_total{${proxy}}`) !== null, text);
      assert(value(text, "vnet_handlers") === 1, text);

      const hostText = await scrape(topo, "host");
      assert(
        (value(hostText, `vnet_handler_frames_total{${host},direction="to_peer"}`) ?? 0) >= 5,
        `host frames to peer:\n${hostText}`,
      );
      assert(value(hostText, `vnet_handler_reconnects_total{${host}}`) === 0, hostText);

      // `client list`: RTT and rates columns, from two samples.
      const auth = ["--server", topo.addr("proxy"), "--secret-file", topo.secretFile];
      const list = await topo.vnet(["client", "list", ...auth, "--wide"]);
      assert(list.code === 0, `list: ${list.stderr}`);
      assert(/RTT/.test(list.stdout) && /TO PEER rate/.test(list.stdout), list.stdout);
      const row = list.stdout.split("\n").find((x) => x.startsWith(id)) ?? "";
      assert(/\d+\.\d\d ms/.test(row), `list row has no RTT: ${row}`);
      assert(/fr\/s .*bit\/s/.test(row), `list row has no rates: ${row}`);
      const json = await topo.vnet(["client", "list", ...auth, "--json", "--rate-window", "0.5"]);
      const listed = JSON.parse(json.stdout) as { id: string; rates: unknown }[];
      assert(listed[0]?.rates !== null && typeof listed[0]?.rates === "object", json.stdout);

      // `client watch` while frames flow: rates appear from the second snapshot on.
      const sender = sendRawFrame(vm.ns, "eth0", "ff:ff:ff:ff:ff:ff", 0x88b5, "vnet-watch", 15);
      const watch = await topo.vnet(
        ["client", "watch", ...auth, "--interval", "0.5", "--count", "3", "--wide"],
      );
      await sender;
      assert(watch.code === 0, `watch: ${watch.stderr}`);
      const snaps = watch.stdout.split(/\n(?=vnet watch )/);
      assert(snaps.length === 3, `3 snapshots:\n${watch.stdout}`);
      // One header throughout: the first snapshot has the rate columns, with no rates yet.
      const rowOf = (snap: string) => snap.split("\n").find((x) => x.startsWith(id)) ?? "";
      assert(/FROM PEER rate/.test(snaps[0]), `first snapshot's header:\n${snaps[0]}`);
      assert(!/fr\/s/.test(rowOf(snaps[0])), `first snapshot has no rates yet:\n${snaps[0]}`);
      assert(/fr\/s .*bit\/s/.test(rowOf(snaps[2])), `third snapshot has rates:\n${snaps[2]}`);
    } catch (e) {
      if (e instanceof Error) e.message += `\n${topo.serverLogs(25)}`;
      throw e;
    } finally {
      await topo.cleanup();
    }
  },
});
