/**
 * VNET against the wire and against OpenVPN, in one run, on the test topology (lab/netns.ts).
 *
 *   deno task bench [--runs N] [--seconds S] [--quick] [--rate 100mbit] [--only a,b]
 *
 * Configurations (measured round-robin: run 1 does every configuration once, then run 2, ...; the
 * order rotates each run so no configuration always goes first or last):
 *
 *   direct           the wire: the proxy bridges lan0 with wan0 and the host bridges wan0 with
 *                    vmif0, so frames take the very same veths and WAN switch as the tunnels, but
 *                    are forwarded by Linux bridges instead of a userspace tunnel. --rate shapes
 *                    it like the others. No tunnel processes, so no CPU figure.
 *   vnet             vnet servers on proxy and host, one handler lan0 <-> vmif0, plain TCP link,
 *                    default injector (the GSO packet socket on Linux), default transport (auto:
 *                    frames by the link's UDP path, plain VXLAN).
 *   vnet-tcp         the same with --transport tcp: frames by the link itself.
 *   vnet-tls         with --tls-cert/--tls-key/--tls-ca (certificates from `vnet cert`): frames
 *                    by a sealed UDP path (AES-256-GCM).
 *   vnet-tls-tcp     the same with --transport tcp: frames by the TLS link.
 *   vnet-libnet      `vnet` with --injector libnet: what the GSO injector buys.
 *   openvpn-tcp      OpenVPN 2.6 p2p over TCP, TAP: tap0 bridged with lan0 in the proxy and with
 *                    vmif0 in the host; no TLS, no cipher, no auth (plaintext, like `vnet`).
 *   openvpn-tcp-tls  the same with TLS (the same ECDSA P-256 certificates) and AES-256-GCM.
 *   openvpn-udp-tls  OpenVPN over UDP with TLS and AES-256-GCM.
 *
 * Every configuration is measured twice per run (--offloads both, the default): with the veths'
 * offloads on (as Linux sets them: GSO super-frames of up to 64 KB cross whole), and with them off
 * (`ethtool -K ... tso/gso/gro/tx/rx off` on both ends of every veth between the LAN client and
 * the VM, captured interfaces included): then every frame is at most 1500 bytes, and what counts is
 * the cost per frame.
 *
 * Per configuration and run: iperf3 TCP LAN client -> VM and VM -> LAN client (receiver's
 * figure), ping RTT idle and under load (ping -i 0.01 while an iperf3 TCP upload runs), the
 * 64-byte frame rate (iperf3 UDP, 18-byte payloads = 64-byte frames with FCS, unlimited send
 * rate, received packets per second), and the CPU seconds (utime+stime from /proc/PID/stat) of
 * the tunnel processes per GB moved during each TCP test.
 *
 * Writes bench/results/latest.json (every run, raw) and bench/results/chart.svg, prints a table
 * of medians. Needs root; installs iperf3/openvpn with apt-get when missing.
 */
import {
  addBridge,
  LAN,
  type Proc,
  REPO_ROOT,
  run,
  sleep,
  spawn,
  Topology,
  tryRun,
  vnetCommand,
  WAN,
} from "../lab/netns.ts";
import { type Medians, renderChart } from "./chart.ts";
import { percentile, pingTimes } from "../lab/ping.ts";

// ---------------------------------------------------------------------------------------------
// Options
// ---------------------------------------------------------------------------------------------

export const CONFIGS = [
  "direct",
  "vnet",
  "vnet-tcp",
  "vnet-tls",
  "vnet-tls-tcp",
  "vnet-libnet",
  "openvpn-tcp",
  "openvpn-tcp-tls",
  "openvpn-udp-tls",
] as const;
export type Config = typeof CONFIGS[number];

/** `--only A,B`: the configurations named, in `all`'s order; `die` for a name not in it. */
export function pickConfigs<T extends string>(
  text: string,
  all: readonly T[],
  die: (msg: string) => never,
): T[] {
  const list = text.split(",").map((s) => s.trim()).filter(Boolean);
  for (const c of list) {
    if (!(all as readonly string[]).includes(c)) die(`--only: unknown config ${c}`);
  }
  return all.filter((c) => list.includes(c));
}

interface Options {
  runs: number;
  seconds: number;
  pings: number;
  rate?: string;
  only: Config[];
  out: string;
  /** Offload settings to measure each configuration with, in this order within a run. */
  offloads: Offloads[];
}

export type Offloads = "on" | "off";

const USAGE = `usage: deno task bench [--runs N] [--seconds S] [--quick] [--rate RATE] [--delay D]
                       [--only CONFIG,...] [--offloads on|off|both] [--out DIR]
  --runs N      repetitions, round-robin over the configurations (default 3; --quick 1)
  --seconds S   length of each iperf3 test (default 3; --quick 2)
  --quick       --runs 1 --seconds 2 and fewer idle pings
  --rate RATE   shape both WAN veths with tc tbf (e.g. 100mbit), for every configuration
  --delay D     not available here (no netem in this kernel): skipped with a message
  --only LIST   a subset of: ${CONFIGS.join(", ")}
  --offloads M  on, off (ethtool -K: every frame <= 1500 bytes) or both (default)
  --out DIR     where latest.json and chart.svg go (default bench/results)`;

function parseArgs(args: string[]): Options {
  const o: Options = {
    runs: 3,
    seconds: 3,
    pings: 200,
    only: [...CONFIGS],
    out: `${REPO_ROOT}/bench/results`,
    offloads: ["on", "off"],
  };
  let quick = false;
  let runs: number | undefined;
  let seconds: number | undefined;
  for (let i = 0; i < args.length; i++) {
    const a = args[i];
    const val = () => {
      const v = args[++i];
      if (v === undefined) die(`${a} needs a value`);
      return v;
    };
    const int = (v: string, min: number) => {
      const n = Number(v);
      if (!Number.isInteger(n) || n < min) die(`${a}: expected an integer >= ${min}, got ${v}`);
      return n;
    };
    switch (a) {
      case "--runs":
        runs = int(val(), 1);
        break;
      case "--seconds":
        seconds = int(val(), 1);
        break;
      case "--quick":
        quick = true;
        break;
      case "--rate": {
        const r = val();
        if (!/^\d+(\.\d+)?([kmg]?bit|[kmg]?bps)$/i.test(r)) die(`--rate: not a tc rate: ${r}`);
        o.rate = r;
        break;
      }
      case "--delay":
        val();
        console.log("--delay skipped: this kernel has no netem (sch_netem), so no added delay");
        break;
      case "--only":
        o.only = pickConfigs(val(), CONFIGS, die);
        break;
      case "--offloads": {
        const v = val();
        if (v !== "on" && v !== "off" && v !== "both") die(`--offloads: on, off or both, got ${v}`);
        o.offloads = v === "both" ? ["on", "off"] : [v];
        break;
      }
      case "--out":
        o.out = val().replace(/\/$/, "");
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
  if (quick) {
    o.runs = 1;
    o.seconds = 2;
    o.pings = 100;
  }
  if (runs !== undefined) o.runs = runs;
  if (seconds !== undefined) o.seconds = seconds;
  return o;
}

function die(msg: string): never {
  console.error(`bench: ${msg}`);
  Deno.exit(2);
}

// ---------------------------------------------------------------------------------------------
// Machine and tools
// ---------------------------------------------------------------------------------------------

async function ensureTools(): Promise<void> {
  const missing: string[] = [];
  for (const [bin, pkg] of [["iperf3", "iperf3"], ["openvpn", "openvpn"], ["tc", "iproute2"]]) {
    const r = await tryRun(null, ["sh", "-c", `command -v ${bin}`], { timeoutMs: 5000 });
    if (r.code !== 0) missing.push(pkg);
  }
  if (missing.length === 0) return;
  console.log(`installing ${missing.join(" ")} with apt-get ...`);
  const env = { DEBIAN_FRONTEND: "noninteractive" };
  await tryRun(null, ["apt-get", "update", "-qq"], { timeoutMs: 180_000, env });
  await run(null, ["apt-get", "install", "-y", "-qq", "--no-install-recommends", ...missing], {
    timeoutMs: 300_000,
    env,
  });
}

export interface Machine {
  nproc: number;
  cpu: string;
  kernel: string;
  deno: string;
  iperf3: string;
  openvpn: string;
  load: string;
}

async function machine(): Promise<Machine> {
  const cpuinfo = await Deno.readTextFile("/proc/cpuinfo");
  const first = async (cmd: string[]) =>
    (await tryRun(null, cmd, { timeoutMs: 5000 })).stdout.split("\n")[0].trim();
  return {
    nproc: navigator.hardwareConcurrency,
    cpu: /model name\s*:\s*(.*)/.exec(cpuinfo)?.[1]?.trim() ?? "unknown",
    kernel: Deno.osRelease(),
    deno: Deno.version.deno,
    iperf3: await first(["iperf3", "--version"]),
    openvpn: await first(["openvpn", "--version"]),
    load: (await Deno.readTextFile("/proc/loadavg")).trim(),
  };
}

// ---------------------------------------------------------------------------------------------
// Configurations
// ---------------------------------------------------------------------------------------------

/** A configuration that is up: the tunnel processes to account CPU to, and how to undo it. */
export interface Active {
  pids: number[];
  stop(): Promise<void>;
}

/** The VM's static address on the LAN (outside dnsmasq's range). */
const VM_IP = "10.77.0.60";
const OVPN_PORT = "1194";

async function bridgePorts(ns: string, br: string, ports: string[]): Promise<void> {
  await addBridge(ns, br);
  for (const p of ports) await run(ns, ["ip", "link", "set", p, "master", br]);
  await run(ns, ["ip", "link", "set", br, "up"]);
}

async function delLink(ns: string, dev: string): Promise<void> {
  await tryRun(ns, ["ip", "link", "del", dev], { timeoutMs: 5000 });
}

async function startDirect(topo: Topology): Promise<Active> {
  const { proxy, host } = topo.ns;
  await bridgePorts(proxy, "brw", ["lan0", "wan0"]);
  await bridgePorts(host, "brw", ["wan0", "vmif0"]);
  return {
    pids: [],
    async stop() {
      await delLink(proxy, "brw");
      await delLink(host, "brw");
    },
  };
}

let certDir: string | undefined;

/** `injector` undefined: the server's default (the GSO packet socket on Linux). */
async function startVnet(
  topo: Topology,
  tls: boolean,
  extraArgs: string[] = [],
): Promise<Active> {
  // Topology adds --tls-ca to every client command once it has made certificates: say per run.
  certDir ??= await topo.makeCerts();
  topo.tlsDir = tls ? certDir : undefined;
  try {
    await topo.startServers({
      tls,
      logLevel: "info",
      extraArgs,
    });
    await topo.createHandler();
  } catch (e) {
    await topo.stopServers();
    throw e;
  }
  return {
    pids: [topo.servers.proxy!.pid, topo.servers.host!.pid],
    async stop() {
      await topo.stopServers();
    },
  };
}

async function startOpenvpn(topo: Topology, tls: boolean, udp = false): Promise<Active> {
  const { proxy, host } = topo.ns;
  const procs: Proc[] = [];
  const stop = async () => {
    await Promise.all(procs.map((p) => p.kill("SIGTERM", 3000)));
    for (const ns of [proxy, host]) {
      await delLink(ns, "brv");
      await delLink(ns, "tap0");
    }
  };
  try {
    for (const [ns, dev] of [[proxy, "lan0"], [host, "vmif0"]]) {
      await run(ns, ["ip", "tuntap", "add", "dev", "tap0", "mode", "tap"]);
      await bridgePorts(ns, "brv", [dev, "tap0"]);
      await run(ns, ["ip", "link", "set", "tap0", "up"]);
    }
    // Stock OpenVPN, tuned only as a careful admin would for a TAP bridge: TCP_NODELAY (vnet sets
    // it too), no DCO (it has no TAP support anyway), the tap devices made and bridged above.
    const common = ["--dev", "tap0", "--dev-type", "tap", "--disable-dco"];
    if (!udp) common.push("--tcp-nodelay");
    common.push("--verb", "3", "--ping", "5", "--ping-exit", "60");
    let crypto: (role: "proxy" | "host") => string[];
    if (tls) {
      certDir ??= await topo.makeCerts();
      const dir = certDir;
      crypto = (role) => [
        role === "proxy" ? "--tls-server" : "--tls-client",
        ...(role === "proxy" ? ["--dh", "none"] : []),
        "--ca",
        `${dir}/ca.pem`,
        "--cert",
        `${dir}/${role}/cert.pem`,
        "--key",
        `${dir}/${role}/key.pem`,
        "--data-ciphers",
        "AES-256-GCM",
        "--tls-version-min",
        "1.2",
      ];
    } else {
      // No --secret and no --tls-*: OpenVPN's plaintext mode (no cipher, no HMAC).
      crypto = () => [];
    }
    const server = spawn(proxy, [
      "openvpn",
      ...common,
      "--proto",
      udp ? "udp" : "tcp-server",
      "--local",
      WAN.proxy,
      "--lport",
      OVPN_PORT,
      ...crypto("proxy"),
    ]);
    procs.push(server);
    topo.procs.push(server);
    await server.waitForLine(
      /TCPv4_SERVER link local \(bound\)|Listening for incoming TCP|UDPv4 link local/,
      15_000,
    );
    const client = spawn(host, [
      "openvpn",
      ...common,
      "--proto",
      udp ? "udp" : "tcp-client",
      "--remote",
      WAN.proxy,
      OVPN_PORT,
      "--nobind",
      "--connect-retry",
      "1",
      "1",
      ...crypto("host"),
    ]);
    procs.push(client);
    topo.procs.push(client);
    await Promise.all([
      server.waitForLine(/Initialization Sequence Completed/, 20_000),
      client.waitForLine(/Initialization Sequence Completed/, 20_000),
    ]);
    return { pids: [server.pid, client.pid], stop };
  } catch (e) {
    const logs = procs.map((p) => `--- ${p.name}\n${p.lines.slice(-20).join("\n")}`).join("\n");
    await stop();
    throw new Error(`${e instanceof Error ? e.message : e}\n${logs}`);
  }
}

export function start(topo: Topology, c: Config): Promise<Active> {
  switch (c) {
    case "direct":
      return startDirect(topo);
    case "vnet":
      return startVnet(topo, false);
    case "vnet-tcp":
      return startVnet(topo, false, ["--transport", "tcp"]);
    case "vnet-tls":
      return startVnet(topo, true);
    case "vnet-tls-tcp":
      return startVnet(topo, true, ["--transport", "tcp"]);
    case "vnet-libnet":
      return startVnet(topo, false, ["--injector", "libnet"]);
    case "openvpn-tcp":
      return startOpenvpn(topo, false);
    case "openvpn-tcp-tls":
      return startOpenvpn(topo, true);
    case "openvpn-udp-tls":
      return startOpenvpn(topo, true, true);
  }
}

// ---------------------------------------------------------------------------------------------
// Measurements
// ---------------------------------------------------------------------------------------------

const CLK_TCK = 100; // USER_HZ on Linux

/** utime+stime of a process (all its threads), in seconds. */
function cpuSeconds(pid: number): number {
  const stat = Deno.readTextFileSync(`/proc/${pid}/stat`);
  const f = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  // Fields after the comm: state is field 3, so utime (14) and stime (15) are at 11 and 12.
  return (Number(f[11]) + Number(f[12])) / CLK_TCK;
}

export function cpuOf(pids: number[]): number {
  return pids.reduce((s, p) => s + cpuSeconds(p), 0);
}

export interface TcpResult {
  mbps: number;
  bytes: number;
  retransmits: number | null;
  cpuS: number | null;
  cpuSPerGB: number | null;
}

export interface RttStats {
  min: number;
  p50: number;
  p99: number;
  sent: number;
  received: number;
}

export interface RunRecord {
  run: number;
  position: number;
  config: Config;
  offloads: Offloads;
  startedAt: string;
  tcpToVm?: TcpResult;
  tcpFromVm?: TcpResult;
  rttIdle?: RttStats;
  /** The same, after a ping flood: with the tunnel's code compiled (see warmUp). */
  rttWarm?: RttStats;
  rttLoad?: RttStats;
  udp64?: { pps: number; sentPps: number; lostPercent: number; deliveredPps?: number };
  errors: string[];
}

class IperfServer {
  private proc?: Proc;
  constructor(private topo: Topology, private ns: string) {}

  async ensure(restart = false): Promise<void> {
    if (this.proc && this.proc.exitCode === null && !restart) return;
    if (this.proc) await this.proc.kill("SIGKILL", 1000);
    this.proc = spawn(this.ns, ["iperf3", "-s", "-B", VM_IP, "--forceflush"]);
    this.topo.procs.push(this.proc);
    await this.proc.waitForLine(/Server listening/, 10_000);
  }
}

// deno-lint-ignore no-explicit-any
type Json = any;

/**
 * One iperf3 client run, retried once if the server turned it away. iperf3 -s answers a new
 * control connection that arrives before it has finished the previous test with ACCESS_DENIED and
 * a close with unread data, i.e. a TCP reset ("unable to receive control message: Connection
 * reset by peer"). Over a tunnel that delivers the last test's final messages and the next
 * test's SYN in one burst, that race is easy to hit; so pause between tests, and retry.
 */
async function iperf(
  topo: Topology,
  srv: IperfServer,
  args: string[],
  seconds: number,
): Promise<Json> {
  await sleep(300);
  try {
    return await iperfOnce(topo, srv, args, seconds);
  } catch (e) {
    if (!/reset by peer|busy/.test(String(e))) throw e;
    iperfRetries++;
    await sleep(1000);
    return await iperfOnce(topo, srv, args, seconds);
  }
}

let iperfRetries = 0;

async function iperfOnce(
  topo: Topology,
  srv: IperfServer,
  args: string[],
  seconds: number,
): Promise<Json> {
  await srv.ensure();
  const r = await tryRun(topo.ns.client, [
    "iperf3",
    "-c",
    VM_IP,
    "-t",
    String(seconds),
    "-J",
    "--connect-timeout",
    "3000",
    ...args,
  ], { timeoutMs: (seconds + 20) * 1000 });
  let j: Json;
  try {
    j = JSON.parse(r.stdout);
  } catch {
    j = { error: `no JSON (exit ${r.code}): ${r.stderr.trim().slice(0, 200)}` };
  }
  if (r.code !== 0 || j.error) {
    await srv.ensure(true); // a half-finished test leaves the server busy
    throw new Error(`iperf3 ${args.join(" ")}: ${j.error ?? r.stderr.trim()}`);
  }
  return j;
}

async function tcp(
  topo: Topology,
  srv: IperfServer,
  reverse: boolean,
  seconds: number,
  pids: number[],
): Promise<TcpResult> {
  const cpu0 = pids.length ? cpuOf(pids) : 0;
  const j = await iperf(topo, srv, reverse ? ["-R"] : [], seconds);
  const cpu1 = pids.length ? cpuOf(pids) : 0;
  const recv = j.end.sum_received;
  const cpuS = pids.length ? cpu1 - cpu0 : null;
  return {
    mbps: recv.bits_per_second / 1e6,
    bytes: recv.bytes,
    retransmits: j.end.sum_sent?.retransmits ?? null,
    cpuS,
    cpuSPerGB: cpuS === null ? null : cpuS / (recv.bytes / 1e9),
  };
}

async function ping(topo: Topology, count: number): Promise<RttStats> {
  const { rtts, code, stderr } = await pingTimes(topo.ns.client, VM_IP, {
    count,
    intervalS: 0.01,
    waitS: 1,
  });
  if (rtts.length === 0) throw new Error(`ping: no replies (exit ${code}) ${stderr.trim()}`);
  return {
    min: rtts[0],
    p50: percentile(rtts, 0.5),
    p99: percentile(rtts, 0.99),
    sent: count,
    received: rtts.length,
  };
}

/** Pings in a warm-up flood: for VNET, enough calls that V8 has compiled the data path. */
export const WARM_UP_PINGS = 20_000;

/**
 * A ping flood (as fast as replies come) before an idle round trip is measured again. VNET's data
 * path is JavaScript: just after start V8 runs it unoptimized while it compiles it on other
 * threads, and an idle hop then costs ~1.5-2x what it does once compiled (bench/hops.ts --warm).
 * OpenVPN, C, is measured the same way.
 */
export async function warmUp(topo: Topology): Promise<void> {
  const r = await tryRun(
    topo.ns.client,
    ["ping", "-n", "-q", "-f", "-W", "1", "-c", String(WARM_UP_PINGS), VM_IP],
    { timeoutMs: 60_000 },
  );
  if (r.code !== 0) {
    throw new Error(`warm-up ping flood failed (exit ${r.code}): ${r.stdout.trim()}`);
  }
  await sleep(500);
}

async function pingUnderLoad(topo: Topology, srv: IperfServer, seconds: number) {
  // The load runs one second longer than the pings, which start half a second in.
  const load = iperf(topo, srv, [], seconds + 1).catch((e) => e as Error);
  await sleep(500);
  const rtt = await ping(topo, seconds * 100);
  const l = await load;
  if (l instanceof Error) throw l;
  return rtt;
}

/**
 * The VM's UDP counters (/proc/net/snmp): datagrams its sockets took, and those its receive
 * buffer had no room for.
 */
async function vmUdpCounters(topo: Topology): Promise<{ taken: number; noRoom: number }> {
  const lines = (await run(topo.vms[0].ns, ["cat", "/proc/net/snmp"])).split("\n")
    .filter((l) => l.startsWith("Udp:")).map((l) => l.split(/\s+/));
  const field = (name: string) => Number(lines[1][lines[0].indexOf(name)]);
  return { taken: field("InDatagrams"), noRoom: field("RcvbufErrors") };
}

/**
 * 64-byte frames: what iperf3 read (pps), and what the tunnel delivered to the VM's UDP socket
 * (deliveredPps: read, or dropped there for want of buffer). On two vCPUs the sender takes one
 * and the receiver shares the other with both tunnel ends, so iperf3 reads less than arrives,
 * and less the more CPU the tunnel takes: the first is the end-to-end figure, the second the
 * tunnel's.
 */
async function udp64(topo: Topology, srv: IperfServer, seconds: number) {
  const before = await vmUdpCounters(topo);
  const j = await iperf(topo, srv, ["-u", "-l", "18", "-b", "0"], seconds);
  const after = await vmUdpCounters(topo);
  const recv = j.end.sum_received ?? j.end.sum;
  const sent = j.end.sum_sent ?? j.end.sum;
  const got = recv.packets - recv.lost_packets;
  const delivered = after.taken - before.taken + after.noRoom - before.noRoom;
  return {
    pps: got / recv.seconds,
    sentPps: sent.packets / sent.seconds,
    lostPercent: recv.lost_percent,
    deliveredPps: delivered / recv.seconds,
  };
}

async function waitReachable(topo: Topology, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    const r = await tryRun(topo.ns.client, ["ping", "-n", "-c", "1", "-W", "1", VM_IP], {
      timeoutMs: 5000,
    });
    if (r.code === 0) return;
    await sleep(200);
  }
  throw new Error(`VM ${VM_IP} not reachable from the LAN client within ${timeoutMs} ms`);
}

async function measure(
  topo: Topology,
  srv: IperfServer,
  c: Config,
  o: Options,
  rec: RunRecord,
): Promise<void> {
  const step = async (what: string, fn: () => Promise<void>) => {
    try {
      await fn();
    } catch (e) {
      rec.errors.push(`${what}: ${e instanceof Error ? e.message.split("\n")[0] : e}`);
      // The tunnel's own account of it: the vnet servers' warnings and errors so far.
      for (const [role, p] of Object.entries(topo.servers)) {
        const bad = p!.lines.map((l) => l.slice(5)).filter((l) => /\b(WARN|ERROR)\b/.test(l));
        for (const l of bad.slice(-5)) rec.errors.push(`${role} server: ${l}`);
      }
    }
  };
  const t0 = Date.now();
  const active = await start(topo, c);
  try {
    await waitReachable(topo, 20_000);
    await sleep(300);
    const setupS = (Date.now() - t0) / 1000;
    await step("rtt idle", async () => {
      rec.rttIdle = await ping(topo, o.pings);
    });
    await step("rtt warm", async () => {
      await warmUp(topo);
      rec.rttWarm = await ping(topo, o.pings);
    });
    await step("tcp to vm", async () => {
      rec.tcpToVm = await tcp(topo, srv, false, o.seconds, active.pids);
    });
    await step("tcp from vm", async () => {
      rec.tcpFromVm = await tcp(topo, srv, true, o.seconds, active.pids);
    });
    await step("rtt load", async () => {
      rec.rttLoad = await pingUnderLoad(topo, srv, o.seconds);
    });
    await step("udp64", async () => {
      rec.udp64 = await udp64(topo, srv, o.seconds);
    });
    console.log(
      `  ${c.padEnd(16)} ${rec.offloads.padEnd(3)} ${summary(rec)}  (setup ${setupS.toFixed(1)} s)`,
    );
  } finally {
    await active.stop();
  }
}

function summary(r: RunRecord): string {
  const f = (v: number | undefined, d = 0) => v === undefined ? "-" : v.toFixed(d);
  return [
    `to-vm ${f(r.tcpToVm?.mbps)} Mbit/s`,
    `from-vm ${f(r.tcpFromVm?.mbps)}`,
    `rtt ${f(r.rttIdle?.p50, 3)}/${f(r.rttLoad?.p50, 2)} ms`,
    `udp64 ${f(r.udp64 && r.udp64.pps / 1000, 1)} kpps`,
    r.tcpToVm?.cpuSPerGB != null
      ? `cpu ${f(r.tcpToVm.cpuSPerGB, 1)}/` +
        `${f(r.tcpFromVm?.cpuSPerGB ?? undefined, 1)} s/GB`
      : "",
    r.errors.length ? `ERRORS: ${r.errors.join("; ")}` : "",
  ].filter(Boolean).join("  ");
}

// ---------------------------------------------------------------------------------------------
// Aggregation and output
// ---------------------------------------------------------------------------------------------

function median(xs: number[]): number | null {
  const v = xs.filter((x) => Number.isFinite(x)).sort((a, b) => a - b);
  if (v.length === 0) return null;
  const m = v.length >> 1;
  return v.length % 2 ? v[m] : (v[m - 1] + v[m]) / 2;
}

/** Metric name, unit, how to read it from a run, whether higher is better. */
export const METRICS: [string, string, (r: RunRecord) => number | undefined, boolean][] = [
  ["tcp LAN->VM", "Mbit/s", (r) => r.tcpToVm?.mbps, true],
  ["tcp VM->LAN", "Mbit/s", (r) => r.tcpFromVm?.mbps, true],
  ["rtt idle min", "ms", (r) => r.rttIdle?.min, false],
  ["rtt idle p50", "ms", (r) => r.rttIdle?.p50, false],
  ["rtt idle p99", "ms", (r) => r.rttIdle?.p99, false],
  ["rtt warm p50", "ms", (r) => r.rttWarm?.p50, false],
  ["rtt warm p99", "ms", (r) => r.rttWarm?.p99, false],
  ["rtt load min", "ms", (r) => r.rttLoad?.min, false],
  ["rtt load p50", "ms", (r) => r.rttLoad?.p50, false],
  ["rtt load p99", "ms", (r) => r.rttLoad?.p99, false],
  ["64B frames", "kpps", (r) => r.udp64 && r.udp64.pps / 1000, true],
  ["64B to VM", "kpps", (r) => r.udp64?.deliveredPps && r.udp64.deliveredPps / 1000, true],
  ["cpu LAN->VM", "s/GB", (r) => r.tcpToVm?.cpuSPerGB ?? undefined, false],
  ["cpu VM->LAN", "s/GB", (r) => r.tcpFromVm?.cpuSPerGB ?? undefined, false],
];

function medians(records: RunRecord[], configs: readonly Config[]): Medians {
  const out: Medians = {};
  for (const [name, , get] of METRICS) {
    out[name] = {};
    for (const c of configs) {
      const vals = records.filter((r) => r.config === c).map(get).filter((v) => v !== undefined);
      out[name][c] = median(vals as number[]);
    }
  }
  return out;
}

const RATIOS: [string, Config, Config][] = [
  ["vnet/ovpn", "vnet", "openvpn-tcp"],
  ["tls/ovpntls", "vnet-tls", "openvpn-tcp-tls"],
  ["udp/tcp", "vnet", "vnet-tcp"],
  ["tls/ovpnudp", "vnet-tls", "openvpn-udp-tls"],
  ["vnet/direct", "vnet", "direct"],
];

const SHORT: Record<Config, string> = {
  "direct": "direct",
  "vnet": "vnet",
  "vnet-tcp": "vnet-tcp",
  "vnet-tls": "vnet-tls",
  "vnet-tls-tcp": "tls-tcp",
  "vnet-libnet": "vnet-libnet",
  "openvpn-tcp": "ovpn-tcp",
  "openvpn-tcp-tls": "ovpn-tls",
  "openvpn-udp-tls": "ovpn-udp",
};

function table(m: Medians, configs: readonly Config[]): string {
  const fmt = (v: number | null | undefined) => {
    if (v === null || v === undefined) return "-";
    const a = Math.abs(v);
    return a >= 100 ? v.toFixed(0) : a >= 10 ? v.toFixed(1) : a >= 1 ? v.toFixed(2) : v.toFixed(3);
  };
  const ratios = RATIOS.filter(([, a, b]) => configs.includes(a) && configs.includes(b));
  const head = ["metric", "unit", ...configs.map((c) => SHORT[c]), ...ratios.map((r) => r[0])];
  const rows = [head];
  for (const [name, unit] of METRICS) {
    const row = [name, unit, ...configs.map((c) => fmt(m[name][c]))];
    for (const [, a, b] of ratios) {
      const x = m[name][a], y = m[name][b];
      row.push(x != null && y != null && y !== 0 ? `${(x / y).toFixed(2)}x` : "-");
    }
    rows.push(row);
  }
  const widths = head.map((_, i) => Math.max(...rows.map((r) => r[i].length)));
  return rows.map((r) =>
    r.map((cell, i) => i < 2 ? cell.padEnd(widths[i]) : cell.padStart(widths[i])).join("  ")
  ).join("\n");
}

// ---------------------------------------------------------------------------------------------
// Offloads
// ---------------------------------------------------------------------------------------------

/**
 * Sets the offloads of both ends of every veth between the LAN client and the VM (the captured
 * lan0 and vmif0 included). "on" is what Linux gives a veth: checksum and segmentation offloads
 * on, GRO off.
 */
export async function setOffloads(topo: Topology, mode: Offloads): Promise<void> {
  const vm = topo.vms[0];
  const ends: [string, string][] = [
    [topo.ns.client, "eth0"],
    [topo.ns.lan, "c0"],
    [topo.ns.lan, "p0"],
    [topo.ns.proxy, "lan0"],
    [vm.hostNs, vm.hostIf],
    [vm.ns, "eth0"],
  ];
  const on = mode === "on" ? "on" : "off";
  for (const [ns, dev] of ends) {
    await run(ns, ["ethtool", "-K", dev, "tso", on, "gso", on, "tx", on, "rx", on, "gro", "off"]);
  }
}

// ---------------------------------------------------------------------------------------------
// WAN shaping
// ---------------------------------------------------------------------------------------------

async function shapeWan(topo: Topology, rate: string): Promise<void> {
  for (const ns of [topo.ns.proxy, topo.ns.host]) {
    await run(ns, [
      "tc",
      "qdisc",
      "replace",
      "dev",
      "wan0",
      "root",
      "tbf",
      "rate",
      rate,
      "burst",
      "128kb",
      "latency",
      "50ms",
    ]);
  }
}

// ---------------------------------------------------------------------------------------------
// Main
// ---------------------------------------------------------------------------------------------

async function main(): Promise<number> {
  const o = parseArgs(Deno.args);
  if (Deno.uid() !== 0) die("needs root (network namespaces, bridges, tc)");
  await ensureTools();
  // Compile main.ts once up front, so the first vnet server does not pay for it mid-run.
  await run(null, [...vnetCommand(), "--version"], { timeoutMs: 120_000 });
  const mach = await machine();
  console.log(
    `machine: ${mach.nproc} x ${mach.cpu}, kernel ${mach.kernel}, deno ${mach.deno}, ` +
      `load ${mach.load}`,
  );
  console.log(
    `plan: ${o.runs} run(s) x [${o.only.join(", ")}], ${o.seconds} s per iperf3 test` +
      (o.rate ? `, WAN shaped to ${o.rate}` : ""),
  );

  const topo = await Topology.create({ vms: 1 });
  let interrupted = false;
  let cleaning: Promise<void> | undefined;
  const onSignal = () => {
    if (interrupted) return;
    interrupted = true;
    console.error("\ninterrupted: cleaning up ...");
    // Killing the processes and namespaces also unblocks whatever the main loop awaits.
    cleaning = topo.cleanup();
    cleaning.finally(() => Deno.exit(130));
  };
  Deno.addSignalListener("SIGINT", onSignal);
  Deno.addSignalListener("SIGTERM", onSignal);

  const records: RunRecord[] = [];
  const started = new Date();
  try {
    const vm = topo.vms[0];
    await run(vm.ns, ["ip", "addr", "add", `${VM_IP}/${LAN.prefix}`, "dev", "eth0"]);
    if (o.rate) await shapeWan(topo, o.rate);
    const srv = new IperfServer(topo, vm.ns);
    await srv.ensure();
    for (let r = 1; r <= o.runs; r++) {
      // Rotate the order each run: run 1 starts with the first config, run 2 with the second...
      const k = (r - 1) % o.only.length;
      const order = [...o.only.slice(k), ...o.only.slice(0, k)];
      console.log(`run ${r}/${o.runs}: ${order.join(" -> ")}`);
      for (const offloads of o.offloads) {
        await setOffloads(topo, offloads);
        for (const [position, c] of order.entries()) {
          if (interrupted) break;
          const rec: RunRecord = {
            run: r,
            position,
            config: c,
            offloads,
            startedAt: new Date().toISOString(),
            errors: [],
          };
          records.push(rec);
          try {
            await measure(topo, srv, c, o, rec);
          } catch (e) {
            rec.errors.push(`setup: ${e instanceof Error ? e.message : e}`);
            console.log(`  ${c.padEnd(16)} ${offloads.padEnd(3)} FAILED: ${rec.errors.at(-1)}`);
          }
        }
      }
    }
  } finally {
    await (cleaning ?? topo.cleanup());
  }
  if (interrupted) return 130;

  const byOffloads = Object.fromEntries(
    o.offloads.map((mode) => [mode, medians(records.filter((r) => r.offloads === mode), o.only)]),
  ) as Partial<Record<Offloads, Medians>>;
  const elapsedS = (Date.now() - started.getTime()) / 1000;
  for (const mode of o.offloads) {
    console.log(
      `\nmedians over ${o.runs} run(s), offloads ${mode}` +
        (mode === "off" ? " (every frame <= 1500 bytes)" : "") + `, ${elapsedS.toFixed(0)} s:\n`,
    );
    console.log(table(byOffloads[mode]!, o.only));
  }
  // The chart and `medians` keep their meaning (offloads on) when that was measured.
  const m = byOffloads.on ?? byOffloads.off!;
  await Deno.mkdir(o.out, { recursive: true });
  const result = {
    tool: "vnet bench/bench.ts",
    startedAt: started.toISOString(),
    elapsedS,
    machine: mach,
    options: o,
    notes: [
      "tcp: iperf3 -t S, receiver-side bits_per_second; LAN->VM = client sends",
      "rtt idle: ping -i 0.01 from the LAN client, just after the tunnel started",
      `rtt warm: the same after a ${WARM_UP_PINGS}-ping flood (ping -f)`,
      "rtt load: ping -i 0.01 from the LAN client while iperf3 uploads LAN->VM",
      "64B frames: iperf3 -u -l 18 -b 0 (60-byte frames + FCS), received packets/s",
      "64B to VM: the same test's datagrams delivered to the VM's UDP layer (read or dropped " +
      "for a full receive buffer: /proc/net/snmp InDatagrams + RcvbufErrors), per second",
      "cpu: utime+stime of the tunnel processes (both ends) during the TCP test / GB received",
    ],
    iperfRetries,
    medians: m,
    mediansByOffloads: byOffloads,
    runs: records,
  };
  await Deno.writeTextFile(`${o.out}/latest.json`, JSON.stringify(result, null, 2) + "\n");
  await Deno.writeTextFile(`${o.out}/chart.svg`, renderChart(m, o.only, mach, o));
  const charts = [`${o.out}/latest.json`, `${o.out}/chart.svg`];
  if (byOffloads.on && byOffloads.off) {
    charts.push(`${o.out}/chart-offloads-off.svg`);
    await Deno.writeTextFile(charts[2], renderChart(byOffloads.off, o.only, mach, o));
  }
  // `deno fmt --check` (the check task) covers .json and .svg too: leave them formatted.
  await tryRun(null, [
    Deno.execPath(),
    "fmt",
    "--quiet",
    ...charts,
  ]);
  console.log(`\nwrote ${charts.join(", ")}`);
  if (iperfRetries) console.log(`iperf3 tests retried after a server reset: ${iperfRetries}`);
  const failed = records.filter((r) => r.errors.length);
  for (const r of failed) {
    console.log(`run ${r.run} ${r.config} offloads ${r.offloads}: ${r.errors.join("; ")}`);
  }
  return failed.length ? 1 : 0;
}

if (import.meta.main) Deno.exit(await main());
