/**
 * Latency under load on a WAN like a real one (issue 18): the lab topology with a round-trip
 * time and random loss between the Proxy and the Host (lab/delay_line.ts), iperf3 LAN → VM with
 * N bulk streams, and a ping LAN → VM every 100 ms alongside.
 *
 *   deno run -A bench/wan.ts [--rtt MS] [--loss PCT] [--streams N] [--seconds S] [--runs N]
 *                            [--only vnet,vnet-tls,openvpn-udp] [--notsent-lowat BYTES]
 *                            [--cc cubic|bbr] [--vnet-args "ARGS"] [--out FILE]
 *
 * Configurations:
 *   vnet         vnet servers on Proxy and Host, one handler lan0 <-> vmif0, plain TCP link,
 *                the default transport (auto: frames by the link's UDP path, plain VXLAN)
 *   vnet-tcp     the same with --transport tcp: frames by the link itself
 *   vnet-tls     over TLS (auto: frames by a sealed UDP path)
 *   vnet-tls-tcp over TLS with --transport tcp
 *   openvpn-udp  OpenVPN 2.6 p2p TAP over UDP, stock (no cipher, like `vnet`), tap0 bridged
 *                with lan0 in the Proxy and with vmif0 in the Host
 *
 * Per configuration and run: the ping's p50/p99 idle (100 pings) and under load, the added delay
 * (under load p50 and p99 minus the idle p50, the path's usual round trip: an idle p99 is itself
 * a retransmission on a lossy TCP link), iperf3's throughput (receiver) and the bulk streams'
 * retransmits, and for vnet the drops each end counted (`list`). The runs are round-robin, the
 * order rotating, and the table gives medians. --notsent-lowat sets the kernel's
 * net.ipv4.tcp_notsent_lowat in the Proxy's and the Host's namespaces (what an admin can do for
 * every TCP socket there; VNET cannot set TCP_NOTSENT_LOWAT per socket through Deno.Conn).
 */
import {
  addBridge,
  LAN,
  type Proc,
  run,
  sleep,
  spawn,
  Topology,
  tryRun,
  WAN,
} from "../lab/netns.ts";
import { installWan } from "../lab/delay_line.ts";
import { percentile, pingTimes } from "../lab/ping.ts";
import { pickConfigs, start } from "./bench.ts";

const CONFIGS = ["vnet", "vnet-tcp", "vnet-tls", "vnet-tls-tcp", "openvpn-udp"] as const;
type WanConfig = typeof CONFIGS[number];

const VM_IP = "10.77.0.60";
const OVPN_PORT = "1194";

interface Options {
  rttMs: number;
  lossPercent: number;
  streams: number;
  seconds: number;
  runs: number;
  only: WanConfig[];
  notsentLowat?: number;
  /** The bulk senders' TCP congestion control (iperf3 -C; the machine's default otherwise). */
  cc?: string;
  vnetArgs: string[];
  out?: string;
}

const USAGE = `usage: deno run -A bench/wan.ts [--rtt MS] [--loss PCT] [--streams N] [--seconds S]
       [--runs N] [--only ${CONFIGS.join(",")}] [--notsent-lowat BYTES] [--cc NAME]
       [--vnet-args "ARGS"] [--out FILE]
  defaults: --rtt 20 --loss 1 --streams 4 --seconds 15 --runs 1, every configuration`;

function die(msg: string): never {
  console.error(`bench/wan: ${msg}`);
  Deno.exit(2);
}

function parseArgs(args: string[]): Options {
  const o: Options = {
    rttMs: 20,
    lossPercent: 1,
    streams: 4,
    seconds: 15,
    runs: 1,
    only: [...CONFIGS],
    vnetArgs: [],
  };
  for (let i = 0; i < args.length; i++) {
    const a = args[i];
    const val = () => args[++i] ?? die(`${a} needs a value`);
    const num = (min: number, max: number) => {
      const v = val();
      const n = Number(v);
      if (!Number.isFinite(n) || n < min || n > max) die(`${a}: expected ${min}..${max}, got ${v}`);
      return n;
    };
    switch (a) {
      case "--rtt":
        o.rttMs = num(0, 10_000);
        break;
      case "--loss":
        o.lossPercent = num(0, 100);
        break;
      case "--streams":
        o.streams = Math.round(num(1, 128));
        break;
      case "--seconds":
        o.seconds = Math.round(num(2, 3600));
        break;
      case "--runs":
        o.runs = Math.round(num(1, 100));
        break;
      case "--only":
        o.only = pickConfigs(val(), CONFIGS, die);
        break;
      case "--notsent-lowat":
        o.notsentLowat = Math.round(num(1, 2 ** 32 - 1));
        break;
      case "--cc": {
        const cc = val();
        if (!/^[a-z0-9_]+$/.test(cc)) die(`--cc: expected a congestion control's name, got ${cc}`);
        o.cc = cc;
        break;
      }
      case "--vnet-args":
        o.vnetArgs = val().split(/\s+/).filter(Boolean);
        break;
      case "--out":
        o.out = val();
        break;
      case "-h":
      case "--help":
        console.log(USAGE);
        Deno.exit(0);
        break;
      default:
        die(`unknown argument ${a}\n${USAGE}`);
    }
  }
  return o;
}

// ---------------------------------------------------------------------------------------------
// Configurations
// ---------------------------------------------------------------------------------------------

interface Active {
  stop(): Promise<void>;
}

async function startOpenvpnUdp(topo: Topology): Promise<Active> {
  const { proxy, host } = topo.ns;
  const procs: Proc[] = [];
  const stop = async () => {
    await Promise.all(procs.map((p) => p.kill("SIGTERM", 3000)));
    for (const ns of [proxy, host]) {
      await tryRun(ns, ["ip", "link", "del", "brv"], { timeoutMs: 5000 });
      await tryRun(ns, ["ip", "link", "del", "tap0"], { timeoutMs: 5000 });
    }
  };
  try {
    for (const [ns, dev] of [[proxy, "lan0"], [host, "vmif0"]]) {
      await run(ns, ["ip", "tuntap", "add", "dev", "tap0", "mode", "tap"]);
      await addBridge(ns, "brv");
      for (const port of [dev, "tap0"]) await run(ns, ["ip", "link", "set", port, "master", "brv"]);
      for (const port of ["brv", "tap0"]) await run(ns, ["ip", "link", "set", port, "up"]);
    }
    // Stock OpenVPN over UDP, plaintext like `vnet` (no --secret, no --tls-*), no DCO (no TAP).
    const common = ["--dev", "tap0", "--dev-type", "tap", "--disable-dco", "--verb", "3"];
    common.push("--ping", "5", "--ping-exit", "60", "--proto", "udp");
    const server = spawn(proxy, ["openvpn", ...common, "--local", WAN.proxy, "--lport", OVPN_PORT]);
    procs.push(server);
    topo.procs.push(server);
    const client = spawn(host, [
      "openvpn",
      ...common,
      "--remote",
      WAN.proxy,
      OVPN_PORT,
      "--nobind",
    ]);
    procs.push(client);
    topo.procs.push(client);
    await Promise.all([
      server.waitForLine(/Initialization Sequence Completed/, 20_000),
      client.waitForLine(/Initialization Sequence Completed/, 20_000),
    ]);
    return { stop };
  } catch (e) {
    const logs = procs.map((p) => `--- ${p.name}\n${p.lines.slice(-20).join("\n")}`).join("\n");
    await stop();
    throw new Error(`${e instanceof Error ? e.message : e}\n${logs}`);
  }
}

let certDir: string | undefined;

async function startConfig(topo: Topology, c: WanConfig, o: Options): Promise<Active> {
  if (c === "openvpn-udp") return await startOpenvpnUdp(topo);
  if (o.vnetArgs.length === 0) return await start(topo, c);
  // bench.ts's start() takes no extra server arguments: start the servers here.
  const tls = c.startsWith("vnet-tls");
  certDir ??= await topo.makeCerts();
  topo.tlsDir = tls ? certDir : undefined;
  const extraArgs = [...o.vnetArgs, ...(c.endsWith("-tcp") ? ["--transport", "tcp"] : [])];
  try {
    await topo.startServers({ tls, logLevel: "info", extraArgs });
    await topo.createHandler();
  } catch (e) {
    await topo.stopServers();
    throw e;
  }
  return { stop: async () => void await topo.stopServers() };
}

// ---------------------------------------------------------------------------------------------
// Measurements
// ---------------------------------------------------------------------------------------------

interface PingStats {
  p50: number;
  p99: number;
  sent: number;
  received: number;
}

interface Record {
  run: number;
  config: WanConfig;
  idle?: PingStats;
  load?: PingStats;
  mbps?: number;
  retransmits?: number;
  drops?: string;
  /** The Proxy's UDP path's queue delay at the end of the load (ms), as its peer measured it. */
  pathQueueMs?: number;
  /** ... and the rate it paced the path at then (Mbit/s; none: not paced). */
  pacedMbps?: number;
  errors: string[];
}

async function ping(topo: Topology, count: number): Promise<PingStats> {
  const { rtts, code, stderr } = await pingTimes(topo.ns.client, VM_IP, {
    count,
    intervalS: 0.1,
    waitS: 2,
  });
  if (rtts.length === 0) throw new Error(`ping: no replies (exit ${code}) ${stderr.trim()}`);
  return {
    p50: percentile(rtts, 0.5),
    p99: percentile(rtts, 0.99),
    sent: count,
    received: rtts.length,
  };
}

async function waitReachable(topo: Topology): Promise<void> {
  for (let i = 0; i < 40; i++) {
    const r = await tryRun(topo.ns.client, ["ping", "-n", "-c", "1", "-W", "1", VM_IP]);
    if (r.code === 0) return;
  }
  throw new Error(`VM ${VM_IP} not reachable from the LAN client`);
}

/** iperf3 with `streams` streams for `seconds` while the pings run, 1 s after it starts. */
async function underLoad(topo: Topology, o: Options, rec: Record): Promise<void> {
  const load = tryRun(topo.ns.client, [
    "iperf3",
    "-c",
    VM_IP,
    "-t",
    String(o.seconds + 2),
    "-P",
    String(o.streams),
    "-J",
    "--connect-timeout",
    "5000",
    ...(o.cc ? ["-C", o.cc] : []),
  ], { timeoutMs: (o.seconds + 30) * 1000 });
  await sleep(1000);
  rec.load = await ping(topo, o.seconds * 10);
  // The Proxy's UDP path's figure of the queue its datagrams wait in, once, as the load goes on
  // (each `list` is a process: sampling it often would take the CPU the tunnel needs).
  const h = (await topo.list("proxy").catch(() => []))[0] as
    | { link?: { udp?: { queueDelayMs?: number | null; pacedMbps?: number | null } | null } }
    | undefined;
  rec.pathQueueMs = h?.link?.udp?.queueDelayMs ?? undefined;
  rec.pacedMbps = h?.link?.udp?.pacedMbps ?? undefined;
  const r = await load;
  // deno-lint-ignore no-explicit-any
  let j: any;
  try {
    j = JSON.parse(r.stdout);
  } catch {
    throw new Error(`iperf3: no JSON (exit ${r.code}): ${r.stderr.trim().slice(0, 200)}`);
  }
  if (j.error) throw new Error(`iperf3: ${j.error}`);
  rec.mbps = j.end.sum_received.bits_per_second / 1e6;
  rec.retransmits = j.end.sum_sent?.retransmits;
}

async function measure(topo: Topology, c: WanConfig, o: Options, rec: Record): Promise<void> {
  const active = await startConfig(topo, c, o);
  try {
    await waitReachable(topo);
    rec.idle = await ping(topo, 100);
    await underLoad(topo, o, rec);
    if (c !== "openvpn-udp") {
      const parts: string[] = [];
      for (const role of ["proxy", "host"] as const) {
        // lab/netns.ts's HandlerInfo leaves out the drop reasons `list --json` also gives.
        const h = (await topo.list(role))[0] as { dropReasons?: { [reason: string]: number } };
        const reasons = Object.entries(h?.dropReasons ?? {}).filter(([, n]) => n > 0);
        parts.push(`${role}: ${reasons.map(([k, n]) => `${k} ${n}`).join(", ") || "none"}`);
      }
      rec.drops = parts.join("; ");
    }
  } catch (e) {
    rec.errors.push(e instanceof Error ? e.message.split("\n")[0] : String(e));
  } finally {
    await active.stop();
  }
}

function median(xs: (number | undefined)[]): number | undefined {
  const v = xs.filter((x): x is number => x !== undefined).sort((a, b) => a - b);
  if (v.length === 0) return undefined;
  const m = v.length >> 1;
  return v.length % 2 ? v[m] : (v[m - 1] + v[m]) / 2;
}

function fmt(v: number | undefined, digits = 1): string {
  return v === undefined ? "-" : v.toFixed(digits);
}

function table(records: Record[], configs: readonly WanConfig[]): string {
  const rows = [[
    "config",
    "Mbit/s",
    "retr",
    "idle p50",
    "idle p99",
    "load p50",
    "load p99",
    "added p50",
    "added p99",
  ]];
  for (const c of configs) {
    const rs = records.filter((r) => r.config === c && r.idle && r.load);
    const m = (f: (r: Record) => number | undefined) => median(rs.map(f));
    rows.push([
      c,
      fmt(m((r) => r.mbps)),
      fmt(m((r) => r.retransmits), 0),
      fmt(m((r) => r.idle!.p50)),
      fmt(m((r) => r.idle!.p99)),
      fmt(m((r) => r.load!.p50)),
      fmt(m((r) => r.load!.p99)),
      fmt(m((r) => r.load!.p50 - r.idle!.p50)),
      fmt(m((r) => r.load!.p99 - r.idle!.p50)),
    ]);
  }
  const widths = rows[0].map((_, i) => Math.max(...rows.map((r) => r[i].length)));
  return rows.map((r) =>
    r.map((x, i) => i ? x.padStart(widths[i]) : x.padEnd(widths[i])).join("  ")
  )
    .join("\n");
}

async function main(): Promise<number> {
  const o = parseArgs(Deno.args);
  if (Deno.uid() !== 0) die("needs root (network namespaces, nftables)");
  console.log(
    `WAN: ${o.rttMs} ms RTT, ${o.lossPercent}% loss each way; iperf3 LAN->VM -P ${o.streams} ` +
      `for ${o.seconds} s with a ping every 100 ms; ${o.runs} run(s) of [${o.only.join(", ")}]` +
      (o.notsentLowat ? `; tcp_notsent_lowat ${o.notsentLowat}` : "") +
      `; inner TCP ${
        o.cc ?? Deno.readTextFileSync("/proc/sys/net/ipv4/tcp_congestion_control").trim()
      }` +
      (o.vnetArgs.length ? `; vnet server ${o.vnetArgs.join(" ")}` : ""),
  );
  const topo = await Topology.create({ vms: 1 });
  const records: Record[] = [];
  try {
    await run(topo.vms[0].ns, ["ip", "addr", "add", `${VM_IP}/${LAN.prefix}`, "dev", "eth0"]);
    const wan = await installWan(topo, { rttMs: o.rttMs, lossPercent: o.lossPercent });
    if (o.notsentLowat) {
      for (const ns of [topo.ns.proxy, topo.ns.host]) {
        await run(ns, ["sysctl", "-q", "-w", `net.ipv4.tcp_notsent_lowat=${o.notsentLowat}`]);
      }
    }
    const iperfServer = spawn(topo.vms[0].ns, ["iperf3", "-s", "-B", VM_IP, "--forceflush"]);
    topo.procs.push(iperfServer);
    await iperfServer.waitForLine(/Server listening/, 10_000);
    for (let r = 1; r <= o.runs; r++) {
      const k = (r - 1) % o.only.length;
      for (const c of [...o.only.slice(k), ...o.only.slice(0, k)]) {
        const rec: Record = { run: r, config: c, errors: [] };
        records.push(rec);
        await measure(topo, c, o, rec);
        console.log(
          `  run ${r} ${c.padEnd(12)} ${fmt(rec.mbps)} Mbit/s, ping idle ` +
            `${fmt(rec.idle?.p50)}/${fmt(rec.idle?.p99)} ms, load ` +
            `${fmt(rec.load?.p50)}/${fmt(rec.load?.p99)} ms (p50/p99), retransmits ` +
            `${rec.retransmits ?? "-"}` + (rec.drops ? `, drops ${rec.drops}` : "") +
            (rec.pathQueueMs !== undefined ? `, path queue ${fmt(rec.pathQueueMs)} ms` : "") +
            (rec.pacedMbps !== undefined ? `, paced at ${rec.pacedMbps} Mbit/s` : "") +
            (rec.errors.length ? `  ERRORS: ${rec.errors.join("; ")}` : ""),
        );
      }
    }
    const counters = await wan.stop();
    if (counters) {
      console.log(
        `delay line: to host ${JSON.stringify(counters.toHost)}, ` +
          `to proxy ${JSON.stringify(counters.toProxy)}`,
      );
    }
  } finally {
    await topo.cleanup();
  }
  console.log(`\nmedians over ${o.runs} run(s), ping times in ms:\n`);
  console.log(table(records, o.only));
  if (o.out) {
    await Deno.writeTextFile(o.out, JSON.stringify({ options: o, records }, null, 2) + "\n");
  }
  return records.some((r) => r.errors.length) ? 1 : 0;
}

if (import.meta.main) Deno.exit(await main());
