/**
 * The status page of a real Proxy server carrying iperf3 traffic, with a metrics token:
 * headless Chromium opens it, is asked for the token, types it, and waits until the table shows
 * the handler's id and its chart a non-zero rate, then saves a screenshot. Without the token
 * every path is 401; `/metrics` passes `promtool check metrics`; neither the secret nor the token
 * appears in what is served; a flood of silent connections neither ends the server nor keeps a
 * real request out.
 *
 *   flock /tmp/vnet-ns.lock deno test -A tests/e2e/status_page_test.ts
 *   VNET_STATUS_SCREENSHOT=docs/status-page.png VNET_STATUS_MIN_POINTS=12 ...
 *     also keep the screenshot there, taken once the chart holds 12 rates (traffic both ways)
 */
import { REPO_ROOT, spawn, type Topology, tryRun } from "../../lab/netns.ts";
import { assert, e2e, iperf, stepper, withTopology } from "./fixtures/e2e_common.ts";
import { setVmIp } from "./ops_helpers.ts";

const VM_IP = "10.77.0.60";
const METRICS = "127.0.0.1:9477";
const FIXTURES = `${REPO_ROOT}/tests/e2e/fixtures`;

interface Got {
  status: number;
  contentType: string | null;
  wwwAuthenticate: string | null;
  body: string;
}

/** GET from inside the Proxy's namespace, where the listener is. */
async function get(topo: Topology, path: string, token?: string): Promise<Got> {
  const r = await tryRun(topo.ns.proxy, [
    Deno.execPath(),
    "run",
    "-A",
    `${FIXTURES}/metrics_probe.ts`,
    "get",
    `http://${METRICS}${path}`,
    ...(token ? [token] : []),
  ], { timeoutMs: 20_000 });
  assert(r.code === 0, `GET ${path} failed: ${r.stderr}`);
  return JSON.parse(r.stdout);
}

e2e("status page: a live page in Chromium, the token, promtool, and a flood", async (t) => {
  await withTopology({ vms: 1 }, 240_000, async (topo) => {
    const step = stepper(t, () => topo.serverLogs());
    const token = Array.from(
      crypto.getRandomValues(new Uint8Array(32)),
      (b) => b.toString(16).padStart(2, "0"),
    ).join("");
    const tokenFile = `${topo.dir}/metrics.token`;
    await Deno.writeTextFile(tokenFile, token + "\n", { mode: 0o600 });
    await Deno.chmod(tokenFile, 0o600);
    const secret = (await Deno.readTextFile(topo.secretFile)).trim();
    let id = "";

    await step("servers, a handler and iperf3 through it", async () => {
      await topo.startServer("host");
      await topo.startServer("proxy", {
        extraArgs: ["--metrics", METRICS, "--metrics-token-file", tokenFile],
      });
      id = await topo.createHandler();
      await setVmIp(topo.vms[0].ns, VM_IP);
    });

    await step("without the token every path is 401, and / is the page asking for it", async () => {
      for (const path of ["/", "/api/status", "/metrics"]) {
        const r = await get(topo, path);
        assert(r.status === 401, `${path}: ${r.status}`);
        assert(r.wwwAuthenticate === 'Bearer realm="vnet"', `${path}: ${r.wwwAuthenticate}`);
        assert(!r.body.includes(id), `${path} without the token shows the handler`);
      }
      const wrong = await get(topo, "/api/status", token.slice(1));
      assert(wrong.status === 401, `a wrong token got ${wrong.status}`);
    });

    await step("headless Chromium shows the handler and a live rate; a screenshot", async () => {
      const srv = spawn(topo.vms[0].ns, ["iperf3", "-s", "-B", VM_IP, "--forceflush"]);
      topo.procs.push(srv);
      await srv.waitForLine(/Server listening/, 10_000);
      // Traffic for as long as the browser needs: the page polls every 2 s and wants 3 rates
      // (VNET_STATUS_MIN_POINTS more for a picture: then both ways, one after the other).
      const points = Number(Deno.env.get("VNET_STATUS_MIN_POINTS") ?? "3");
      const seconds = Math.max(14, points * 2 + 8);
      const traffic = points > 3
        ? iperf(topo, VM_IP, false, seconds / 2).then(async (up) =>
          Math.min(up, await iperf(topo, VM_IP, true, seconds / 2))
        )
        : iperf(topo, VM_IP, false, seconds);
      const shot = `${topo.dir}/status-page.png`;
      const browser = await tryRun(topo.ns.proxy, [
        Deno.execPath(),
        "run",
        "-A",
        `${FIXTURES}/status_browser.ts`,
        `http://${METRICS}/`,
        id,
        shot,
        token,
      ], { timeoutMs: 90_000 });
      const mbps = await traffic;
      assert(browser.code === 0, `browser: ${browser.stdout} ${browser.stderr}`);
      const seen = JSON.parse(browser.stdout.trim().split("\n").pop()!);
      const png = await Deno.readFile(shot);
      assert(png.length > 10_000, `screenshot is ${png.length} bytes`);
      assert(
        png[0] === 0x89 && png[1] === 0x50 && png[2] === 0x4e && png[3] === 0x47,
        "screenshot is not a PNG",
      );
      console.log(
        `    iperf3 ${mbps.toFixed(0)} Mbit/s; page: ids ${seen.ids}, to peer ` +
          `${(seen.toBps / 1e6).toFixed(0)} Mbit/s, from peer ${(seen.fromBps / 1e6).toFixed(0)} ` +
          `Mbit/s; screenshot ${png.length} bytes`,
      );
      const keep = Deno.env.get("VNET_STATUS_SCREENSHOT");
      if (keep) await Deno.copyFile(shot, keep);
    });

    await step("/api/status: the handler, roles, events; no secret, no token", async () => {
      const r = await get(topo, "/api/status", token);
      assert(r.status === 200, `status ${r.status}`);
      const s = JSON.parse(r.body);
      assert(s.handlers.some((h: { id: string }) => h.id === id), `no ${id} in ${r.body}`);
      assert(s.roles.proxy === 1 && s.roles.host === 0, `roles ${JSON.stringify(s.roles)}`);
      assert(Array.isArray(s.events), "no events");
      assert(typeof s.version === "string" && s.uptimeSeconds > 0, "no version or uptime");
      for (const path of ["/", "/api/status", "/metrics"]) {
        const body = (await get(topo, path, token)).body;
        assert(!body.includes(secret), `${path} shows the secret`);
        assert(!body.includes(token), `${path} shows the token`);
      }
    });

    await step("/metrics passes promtool check metrics", async () => {
      const m = await get(topo, "/metrics", token);
      assert(m.status === 200 && m.body.includes(`id="${id}"`), `metrics: ${m.status}`);
      const check = await tryRun(null, ["promtool", "check", "metrics"], { stdin: m.body });
      assert(check.code === 0, `promtool: ${check.stdout}${check.stderr}`);
    });

    await step("600 silent connections: the server lives and answers", async () => {
      const [host, port] = METRICS.split(":");
      const flood = spawn(topo.ns.proxy, [
        Deno.execPath(),
        "run",
        "-A",
        `${FIXTURES}/metrics_probe.ts`,
        "flood",
        host,
        port,
        "600",
        "4",
      ]);
      topo.procs.push(flood);
      await flood.waitForLine(/"opened"/, 20_000);
      const t0 = performance.now();
      const r = await get(topo, "/metrics", token);
      const ms = performance.now() - t0;
      assert(r.status === 200, `during the flood: ${r.status}`);
      const code = await flood.exited;
      const summary = flood.lines.filter((l) => l.includes("closedByServer")).pop() ?? "";
      console.log(`    flood: ${summary}; a scrape during it took ${ms.toFixed(0)} ms`);
      assert(code === 0, `flood: ${flood.output()}`);
      assert(topo.servers.proxy!.exitCode === null, "the proxy server ended");
      assert((await get(topo, "/metrics", token)).status === 200, "after the flood");
    });
  });
});
