/**
 * Issue 19, "Hold under attack, again", the edges of a server: its TLS port, its credentials,
 * and its status listener. Real servers in namespaces; the attacker is the host2 namespace,
 * with four addresses on the WAN; the legitimate clients are elsewhere.
 *
 *   - 1500 silent connections to a TLS server and to a plain one whose fd limit is 1024: a
 *     client with the secret gets in during the flood, and the fds stay bounded;
 *   - a weak secret and a weak metrics token stop the start with "use `vnet secret`";
 *   - `Host: rebind.example` gets 421 and no data from the status listener;
 *   - 1000 churned idle connections to the status listener: at least 99% of scrapes succeed,
 *     with a token and without, and memory stays bounded.
 *
 *   flock /tmp/vnet-ns.lock deno test -A tests/e2e/attack_edge_test.ts
 */
import { type Proc, run, spawn, waitFor, WAN } from "../../lab/netns.ts";
import { newSecretText } from "../../src/link/secret.ts";
import { assert, e2e, rssKiB, stepper, withTopology } from "./ops_helpers.ts";

const ATTACKERS = ["10.78.0.20", "10.78.0.21", "10.78.0.22", "10.78.0.23"];
const METRICS_PORT = 9477;
/**
 * What a scrape is given. The flood keeps the listener's accept queue (511, Deno's backlog) full,
 * and a SYN that meets a full queue is dropped: the scraper's kernel sends it again after 1 s,
 * then 3 s, whatever the server does. CI once saw 2 scrapes of 100 dropped twice under a 2 s
 * limit. 5 s lets a scrape through two drops; Prometheus's default scrape timeout is 10 s.
 */
const SCRAPE_TIMEOUT_S = 5;

/**
 * Holds COUNT connections that never send a byte, from every source address in turn, opened
 * without waiting (non-blocking connects); whatever the server closes is opened again at once,
 * for SECONDS. Prints `holding N` once all are opened, `reopened R` every half second, and
 * `done reopened R` at the end.
 */
const FLOOD_PY = `
import errno, resource, selectors, socket, sys, time
ip, port, count, seconds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
sources = sys.argv[5].split(",")
resource.setrlimit(resource.RLIMIT_NOFILE, (count + 256, count + 256))
sel = selectors.DefaultSelector()
def opened(k):
    s = socket.socket(); s.setblocking(False); s.bind((sources[k % len(sources)], 0))
    s.connect_ex((ip, port)); sel.register(s, selectors.EVENT_READ, k)
for k in range(count):
    opened(k)
print(f"holding {count}", flush=True)
end, reopened, said = time.time() + seconds, 0, time.time()
while time.time() < end:
    if time.time() - said > 0.5:
        print(f"reopened {reopened}", flush=True); said = time.time()
    for key, _ in sel.select(timeout=0.05):
        s = key.fileobj
        try:
            if s.recv(4096):
                continue
        except BlockingIOError:
            continue
        except OSError:
            pass
        sel.unregister(s); s.close(); opened(key.data); reopened += 1
print(f"done reopened {reopened}", flush=True)
`;

/**
 * N scrapes of URL, one after another, each given SCRAPE_TIMEOUT_S; prints {"ok": n, "failed": n,
 * ...}.
 */
const SCRAPE_PY = `
import json, sys, time, urllib.request
url, n, timeout = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
token = sys.argv[4] if len(sys.argv) > 4 else ""
ok, failed, errors, slowest = 0, 0, {}, 0.0
for i in range(n):
    req = urllib.request.Request(url, headers={"Authorization": "Bearer " + token} if token else {})
    t0 = time.time()
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            body = r.read()
            if r.status == 200 and b"vnet_handlers" in body: ok += 1
            else: failed += 1
    except Exception as e:
        failed += 1; errors[type(e).__name__] = errors.get(type(e).__name__, 0) + 1
    slowest = max(slowest, time.time() - t0)
print(json.dumps({"ok": ok, "failed": failed, "errors": errors, "slowestMs": round(slowest * 1000)}), flush=True)
`;

/**
 * Waits until a flood of `n` connections to `port` in `ns` is at its height: `n` of them are
 * established at once (a server that keeps them), or the attacker has had to open `n` again
 * (a server that closes them as they come).
 */
function floodAtHeight(attack: Proc, ns: string, port: number, n: number): Promise<string> {
  return waitFor(
    `a flood of ${n} connections to port ${port}`,
    async () => {
      const reopened = Math.max(
        0,
        ...attack.lines.map((l) => Number(/reopened (\d+)/.exec(l)?.[1] ?? 0)),
      );
      const out = await run(ns, ["ss", "-Htn", "state", "established", `( sport = :${port} )`]);
      const established = out.split("\n").filter((l) => l.trim()).length;
      return established >= n || reopened >= n
        ? `${established} established, ${reopened} reopened`
        : undefined;
    },
    20_000,
    100,
  );
}

function fdCount(pid: number): number {
  return [...Deno.readDirSync(`/proc/${pid}/fd`)].length;
}

e2e(
  "attack edge: TLS and plain fd floods, weak credentials, Host, scrapes under churn",
  async (t) => {
    await withTopology({ vms: 1, secondHost: true }, 300_000, async (topo) => {
      const step = stepper(t, () => topo.serverLogs());
      const attacker = topo.ns.host2!;
      for (const a of ATTACKERS) {
        await run(attacker, ["ip", "addr", "add", `${a}/24`, "dev", "wan0"]);
      }
      const flood = (ip: string, port: number, count: number, seconds: number) => {
        const p = spawn(attacker, [
          "python3",
          "-c",
          FLOOD_PY,
          ip,
          String(port),
          String(count),
          String(seconds),
          ATTACKERS.join(","),
        ]);
        topo.procs.push(p);
        return p;
      };
      const token = newSecretText().trim();
      const tokenFile = `${topo.dir}/metrics.token`;
      await Deno.writeTextFile(tokenFile, token + "\n", { mode: 0o600 });
      await Deno.chmod(tokenFile, 0o600);

      await step("a weak secret or metrics token stops the start: use `vnet secret`", async () => {
        const weak = `${topo.dir}/weak.secret`;
        const weakToken = `${topo.dir}/weak.token`;
        for (
          const [file, text] of [[weak, "The quick brown fox jumps over the lazy dog\n"], [
            weakToken,
            "hunter2\n",
          ]]
        ) {
          await Deno.writeTextFile(file, text, { mode: 0o600 });
          await Deno.chmod(file, 0o600);
        }
        const start = (args: string[]) =>
          topo.vnet(["server", "--listen", `${WAN.proxy}:7001`, ...args], { timeoutMs: 10_000 });
        const r1 = await start(["--secret-file", weak]);
        const r2 = await start([
          "--secret-file",
          topo.secretFile,
          "--metrics",
          `${WAN.proxy}:${METRICS_PORT}`,
          "--metrics-token-file",
          weakToken,
        ]);
        for (
          const [r, re] of [[r1, /text of words/], [
            r2,
            /metrics token .* too short: 7 bytes/,
          ]] as const
        ) {
          const lines = r.stderr.trim().split("\n");
          console.log(`    exit ${r.code}: ${lines.at(-1)}`);
          assert(r.code === 1 && lines.length === 1, `not one line and exit 1:\n${r.stderr}`);
          assert(re.test(lines[0]) && /use `vnet secret`/.test(lines[0]), lines[0]);
        }
      });

      await step(
        "servers: the Host with TLS and a token, the Proxy plain without one",
        async () => {
          await topo.startServer("host", {
            tls: true,
            logLevel: "info",
            extraArgs: [
              "--metrics",
              `${WAN.host}:${METRICS_PORT}`,
              "--metrics-token-file",
              tokenFile,
            ],
          });
          await topo.startServer("proxy", {
            logLevel: "info",
            extraArgs: [
              "--metrics",
              `${WAN.proxy}:${METRICS_PORT}`,
              "--metrics-host",
              "vnet.example",
            ],
          });
          const line = topo.servers.proxy!.lines.find((l) => /open file limit raised/.test(l));
          console.log(`    ${line?.slice(5) ?? "(the soft fd limit was the hard one already)"}`);
        },
      );

      for (const role of ["host", "proxy"] as const) {
        const kind = role === "host" ? "TLS" : "plain";
        await step(
          `1500 silent ${kind} connections at 1024 fds: a client gets in during them`,
          async () => {
            const pid = topo.servers[role]!.pid;
            await run(null, ["prlimit", `--pid=${pid}`, "--nofile=1024:1024"]);
            const fdsBefore = fdCount(pid), rssBefore = rssKiB(pid);
            const attack = flood(WAN[role], 7000, 1500, 25);
            await attack.waitForLine(/^holding/, 20_000);
            // The client tries once the flood is at its height: 1000 connections established.
            const height = await floodAtHeight(attack, topo.ns[role], 7000, 1000);
            const t0 = performance.now();
            let fdsDuring = fdCount(pid);
            const r = await topo.vnet([
              "client",
              "list",
              "--server",
              `${WAN[role]}:7000`,
              "--json",
              "--secret-file",
              topo.secretFile,
              ...(role === "host" ? topo.clientTlsArgs() : []),
            ], { timeoutMs: 20_000 });
            const clientMs = Math.round(performance.now() - t0);
            fdsDuring = Math.max(fdsDuring, fdCount(pid));
            const stillFlooding = attack.exitCode === null;
            // The client's answer is in: the rest of the flood's 25 s would prove nothing more.
            await attack.kill();
            // Once the attacker is gone, its connections' fds come back.
            const fdsAfter = await waitFor("the fds to come back", () => {
              const n = fdCount(pid);
              return Promise.resolve(n <= fdsBefore + 10 ? n : undefined);
            }, 10_000);
            const rssAfter = rssKiB(pid);
            console.log(
              `    ${kind}: ${height}; ${attack.lines.at(-1)?.slice(5)}; client ${
                r.code === 0 ? "in" : "FAILED"
              } after ${clientMs} ms (flood still on: ${stillFlooding}); fds ${fdsBefore} -> ` +
                `${fdsDuring} -> ${fdsAfter}; rss ${rssBefore >> 10} -> ${rssAfter >> 10} MiB`,
            );
            assert(r.code === 0, `the client was locked out: ${r.stderr.trim()}`);
            assert(stillFlooding, "the client got in only after the flood");
            assert(fdsDuring < 900, `the flood held ${fdsDuring} of the 1024 fds`);
          },
        );
      }

      await step(
        "Host: rebind.example gets 421 and no data; the listed name and the IP work",
        async () => {
          const url = `http://${WAN.proxy}:${METRICS_PORT}/api/status`;
          const curl = async (host?: string) => {
            const out = await run(topo.ns.host, [
              "curl",
              "-s",
              "-m",
              "5",
              "-w",
              "\n%{http_code}",
              ...(host ? ["-H", `Host: ${host}`] : []),
              url,
            ]);
            const lines = out.split("\n");
            return { status: Number(lines.pop()), body: lines.join("\n") };
          };
          const rebind = await curl("rebind.example");
          const rebindPort = await curl(`rebind.example:${METRICS_PORT}`);
          const listed = await curl("vnet.example");
          const ip = await curl();
          console.log(
            `    Host rebind.example: ${rebind.status} ${JSON.stringify(rebind.body.trim())}; ` +
              `vnet.example: ${listed.status}; ${WAN.proxy}: ${ip.status}`,
          );
          for (const r of [rebind, rebindPort]) {
            assert(r.status === 421, `rebinding got ${r.status}`);
            assert(!/handlers|events|"version"/.test(r.body), `rebinding got data: ${r.body}`);
          }
          assert(
            listed.status === 200 && /"handlers"/.test(listed.body),
            `listed: ${listed.status}`,
          );
          assert(ip.status === 200, `by address: ${ip.status}`);
        },
      );

      for (const role of ["proxy", "host"] as const) {
        const withToken = role === "host";
        await step(
          `1000 churned idle connections: scrapes ${withToken ? "with" : "without"} a token`,
          async () => {
            const pid = topo.servers[role]!.pid;
            const rssBefore = rssKiB(pid);
            // Longer than the scrapes take (10-20 s here; 100 that all timed out would take 500 s,
            // past the test's limit); stopped once they are done.
            const attack = flood(WAN[role], METRICS_PORT, 1000, 240);
            await attack.waitForLine(/^holding/, 20_000);
            const height = await floodAtHeight(attack, topo.ns[role], METRICS_PORT, 900);
            // The scraper is another WAN server's address, as a Prometheus elsewhere would be.
            const scrape = spawn(role === "proxy" ? topo.ns.host : topo.ns.proxy, [
              "python3",
              "-c",
              SCRAPE_PY,
              `http://${WAN[role]}:${METRICS_PORT}/metrics`,
              "100",
              String(SCRAPE_TIMEOUT_S),
              ...(withToken ? [token] : []),
            ]);
            topo.procs.push(scrape);
            assert(await scrape.exited === 0, `scraper:\n${scrape.output()}`);
            const stillFlooding = attack.exitCode === null;
            const rssDuring = rssKiB(pid);
            await attack.kill();
            const r = JSON.parse(scrape.lines.at(-1)!.slice(5));
            console.log(
              `    ${height}; ${attack.lines.at(-1)?.slice(5)}; scrapes ${r.ok}/${
                r.ok + r.failed
              } ok ${JSON.stringify(r.errors)}, slowest ${r.slowestMs} ms; rss ${
                rssBefore >> 10
              } -> ` +
                `${rssDuring >> 10} MiB`,
            );
            assert(stillFlooding, "the scrapes ended after the flood");
            assert(r.ok >= 99, `only ${r.ok} of 100 scrapes succeeded`);
            // Bounded: what stays is the runtime's high-water mark (the issue saw +98 MB).
            assert(
              rssDuring - rssBefore < 80 * 1024,
              `rss grew ${(rssDuring - rssBefore) >> 10} MiB`,
            );
          },
        );
      }
    });
  },
);
