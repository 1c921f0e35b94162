/**
 * Where an idle round trip spends its time, hop by hop: pings the VM from the LAN client through
 * one bench configuration and timestamps every hop with tcpdump (nanosecond stamps; all
 * namespaces share one clock), so the time a tunnel end takes to forward a frame is read off the
 * wire, not from the program's own account.
 *
 *   deno run -A bench/hops.ts [--config vnet|vnet-tls|openvpn-tcp|...] [--count N]
 *                             [--interval S] [--warm] [--strace proxy|host]
 *
 * The hops: client → proxy.lan0 (the LAN), proxy.lan0 → proxy.wan0 (the Proxy captures and
 * sends), → host.wan0 (the WAN), → host.vmif0 (the Host receives and injects), the VM answers,
 * host.vmif0 → host.wan0 (the Host captures and sends), → proxy.wan0, → proxy.lan0 (the Proxy
 * receives and injects), → client. `--strace ROLE` also writes that server's system calls with
 * their times to /tmp/hops.strace (which slows it: for the order of events, not their length).
 * `--warm` floods pings through first (bench.ts's warmUp), as the bench's `rtt warm` does: without
 * it the hops are those of a tunnel just started, whose JavaScript V8 is still compiling.
 */
import { LAN, run, sleep, spawn, Topology, tryRun } from "../lab/netns.ts";
import { type Config, CONFIGS, cpuOf, start, warmUp } from "./bench.ts";

const VM_IP = "10.77.0.60";

function option(name: string, fallback: string): string {
  const i = Deno.args.indexOf(name);
  return i >= 0 && i + 1 < Deno.args.length ? Deno.args[i + 1] : fallback;
}

const config = option("--config", "vnet") as Config;
const count = Number(option("--count", "300"));
const interval = option("--interval", "0.01");
const straceRole = option("--strace", "") as "proxy" | "host" | "";
const warm = Deno.args.includes("--warm");
if (!CONFIGS.includes(config)) throw new Error(`--config: one of ${CONFIGS.join(", ")}`);

/** Each hop: where its frame is seen (dump, and a text in tcpdump's line), in path order. */
const PATH: [dump: string, what: string][] = [
  ["client", "echo request"],
  ["proxy.lan0", "echo request"],
  ["proxy.wan0", "> 10.78.0.2"],
  ["host.wan0", "> 10.78.0.2"],
  ["host.vmif0", "echo request"],
  ["host.vmif0", "echo reply"],
  ["host.wan0", "> 10.78.0.1"],
  ["proxy.wan0", "> 10.78.0.1"],
  ["proxy.lan0", "echo reply"],
  ["client", "echo reply"],
];

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)] ?? NaN;
}

const topo = await Topology.create({ vms: 1 });
try {
  await run(topo.vms[0].ns, ["ip", "addr", "add", `${VM_IP}/${LAN.prefix}`, "dev", "eth0"]);
  const active = await start(topo, config);
  for (let i = 0; i < 50; i++) {
    const r = await tryRun(topo.ns.client, ["ping", "-n", "-c", "1", "-W", "1", VM_IP]);
    if (r.code === 0) break;
    await sleep(200);
  }
  if (warm) await warmUp(topo);
  const points: [string, string, string][] = [
    ["client", topo.ns.client, "eth0"],
    ["proxy.lan0", topo.ns.proxy, "lan0"],
    ["proxy.wan0", topo.ns.proxy, "wan0"],
    ["host.wan0", topo.ns.host, "wan0"],
    ["host.vmif0", topo.ns.host, "vmif0"],
  ];
  // The tunnel's frames, by its TCP link or its UDP path, are told from the link's ACKs and the
  // path's keepalives by size.
  const dumps = points.map(([name, ns, dev]) => ({
    name,
    proc: spawn(ns, [
      "sh",
      "-c",
      `exec tcpdump -i ${dev} -n -l -tt --time-stamp-precision=nano -Q inout ` +
      `'icmp or ((tcp or udp) and greater 100)' > ${topo.dir}/${name}.txt 2>/dev/null`,
    ]),
  }));
  await sleep(1500);
  const tracer = straceRole
    ? spawn(null, [
      "strace",
      "-f",
      "-tt",
      "-o",
      "/tmp/hops.strace",
      "-p",
      String(topo.servers[straceRole]!.pid),
    ])
    : undefined;
  if (tracer) await sleep(1000);
  const cpuBefore = cpuOf(active.pids);
  const pingStarted = performance.now();
  const ping = await tryRun(
    topo.ns.client,
    ["ping", "-n", "-i", interval, "-c", String(count), VM_IP],
    { timeoutMs: 120_000 },
  );
  const pingSeconds = (performance.now() - pingStarted) / 1000;
  const cpu = cpuOf(active.pids) - cpuBefore;
  const rtts = [...ping.stdout.matchAll(/time=([\d.]+) ms/g)].map((m) => Number(m[1]));
  await sleep(500);
  for (const d of dumps) d.proc.kill("SIGINT");
  tracer?.kill("SIGINT");
  await sleep(500);
  await active.stop();

  const seen: Record<string, { t: number; line: string }[]> = {};
  for (const d of dumps) {
    const text = await Deno.readTextFile(`${topo.dir}/${d.name}.txt`).catch(() => "");
    seen[d.name] = text.split("\n").filter((l) => l).map((line) => ({
      t: Number(line.split(" ")[0]),
      line,
    }));
  }
  // Follow each request along the path: at each hop, the first matching frame after the last.
  const hops: number[][] = PATH.slice(1).map(() => []);
  for (const request of seen["client"].filter((s) => s.line.includes("echo request"))) {
    const times = [request.t];
    for (const [dump, what] of PATH.slice(1)) {
      const last = times.at(-1)!;
      const ev = seen[dump].find((s) => s.t >= last && s.t - last < 0.02 && s.line.includes(what));
      if (!ev) break;
      times.push(ev.t);
    }
    if (times.length !== PATH.length) continue;
    for (let i = 1; i < times.length; i++) hops[i - 1].push((times[i] - times[i - 1]) * 1e6);
  }
  console.log(
    `${config}: ping p50 ${median(rtts)} ms over ${rtts.length} replies; ` +
      `${hops[0].length} followed hop by hop; the tunnel's processes used ` +
      `${(100 * cpu / pingSeconds).toFixed(1)}% of a CPU meanwhile`,
  );
  for (let i = 0; i < hops.length; i++) {
    const from = PATH[i].join(" ");
    const to = PATH[i + 1].join(" ");
    console.log(
      `  ${from.padEnd(26)} -> ${to.padEnd(26)} p50 ${median(hops[i]).toFixed(0).padStart(5)} µs`,
    );
  }
} finally {
  await topo.cleanup();
}
