/**
 * Many sites: N Host namespaces × M VMs each, all behind one Proxy on the user's LAN (issue 11,
 * VNET as a distributed switch). Built from lab/netns.ts's pieces (commands, processes, the
 * bridge, the LAN/WAN addresses, the naming scheme) so lab/cleanup.sh finds its leftovers.
 *
 *       the user's LAN                        the WAN (a dumb switch, 10.78.0.0/24)
 *  ┌─────────────────────────────┐      ┌──────────────────────────────────────────────┐
 *  │ lan: br0 10.77.0.1, dnsmasq │      │ wan: br0                                     │
 *  └─┬──────────┬─────────┬──────┘      └─┬──────────┬──────────┬──────────────┬───────┘
 *    │ c0       │ p0      │ p1 (opt.)     │          │          │              │
 *  client    proxy: lan0 wan0 10.78.0.1 ──┘          │          │              │
 *  10.77.0.2 proxy2 (optional): lan0, wan0 10.78.0.2 ┘          │              │
 *                                            h1: wan0 10.78.0.11 ┘   hN: wan0 10.78.0.(10+N)
 *                                              vif0 ── eth0 of h1v1        vif.. ── eth0 of hNvM
 *                                              vif1 ── eth0 of h1v2
 *
 * Each VM is a namespace with its own veth into its Host (`vif<k>`, k numbering every VM of
 * the topology, so a VM's wire keeps its name when it migrates), or with `vmBridge` all VM ends
 * of a Host are ports of a bridge `vmbr0`. VMs have fixed MACs 02:5e:00:00:<host>:<vm> and fixed
 * LAN addresses (outside the DHCP range); spare Hosts (no VMs) receive migrating VMs.
 *
 * Names: namespaces `vnt-<pid>-<n>-<role>` (roles lan, wan, client, proxy, proxy2, h<i>,
 * h<i>v<j>), temp dir `vnt-<pid>-<n>-...` in $TMPDIR.
 */
import { type ListedHandler } from "../src/control/rpc.ts";
import {
  addUpBridge,
  addVeth,
  DHCP_RANGE,
  LAN,
  type Ns,
  PREFIX,
  Proc,
  run,
  type RunResult,
  sleep,
  spawn,
  startLanDhcp,
  tryRun,
  VNET_PORT,
  vnetCommand,
  WAN,
} from "./netns.ts";

export { removeLeftovers } from "./netns.ts";

const PY_DIR = new URL("./py/", import.meta.url).pathname;

export interface SitesOptions {
  /** Hosts that carry VMs. */
  hosts: number;
  /** VMs on each of those Hosts. */
  vmsPerHost: number;
  /** Extra Hosts with no VMs (migration targets). Default 0. */
  spareHosts?: number;
  /** All VM ends of a Host on one bridge `vmbr0` (the handler device then is vmbr0). */
  vmBridge?: boolean;
  /** A second Proxy namespace `proxy2` on the same LAN (and the WAN, 10.78.0.2). */
  secondProxy?: boolean;
  /** Start dnsmasq on the LAN (default true; the scale test has no use for it). */
  dhcp?: boolean;
}

export interface SiteHost {
  /** 1-based. */
  index: number;
  label: string;
  ns: string;
  wanIp: string;
  /** `ADDR:PORT` of its vnet server. */
  addr: string;
}

export interface SiteVm {
  /** `h<host>v<vm>` as first placed. */
  label: string;
  ns: string;
  mac: string;
  /** Its fixed LAN address (eth0, /24). */
  ip: string;
  /** The Host it is plugged into now. */
  host: SiteHost;
  /** Host-side end of its veth. */
  hostIf: string;
  /** What a handler captures on: hostIf, or vmbr0. */
  hostDev: string;
  /** Handler id once created. */
  handler?: string;
}

/** A place to ping from or to. */
export interface Endpoint {
  label: string;
  ns: string;
  ip: string;
}

export interface PingPair {
  from: Endpoint;
  to: Endpoint;
}

export interface PingFailure extends PingPair {
  output: string;
}

export type ProxyRole = "proxy" | "proxy2";

/** The WAN address of the second Proxy (the first is WAN.proxy). */
export const PROXY2_WAN = "10.78.0.2";
/** Port of the UDP reachability probes. */
export const MESH_PORT = 7007;

/** Fixed VM addresses: after the DHCP range first, then below it. */
function vmAddress(k: number): string {
  const last = Number(DHCP_RANGE.last.split(".")[3]);
  const first = Number(DHCP_RANGE.first.split(".")[3]);
  const high = 254 - last;
  const n = k < high ? last + 1 + k : 3 + (k - high);
  if (n >= first && k >= high) throw new Error(`no fixed LAN address left for VM #${k}`);
  return `10.77.0.${n}`;
}

const hex2 = (n: number) => n.toString(16).padStart(2, "0");

// Topology numbers in this process: far from lab/netns.ts's (which count from 1), so a test
// that builds both never gets the same name twice.
let sitesCounter = 500;

/** Runs `fn` over `items` with at most `limit` running at once; results in order. */
export async function mapLimit<T, R>(
  items: readonly T[],
  limit: number,
  fn: (item: T, i: number) => Promise<R>,
): Promise<R[]> {
  const out: R[] = new Array(items.length);
  let next = 0;
  const worker = async () => {
    while (next < items.length) {
      const i = next++;
      out[i] = await fn(items[i], i);
    }
  };
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, worker));
  return out;
}

export class Sites {
  readonly ns: { lan: string; wan: string; client: string; proxy: string; proxy2?: string };
  readonly hosts: SiteHost[] = [];
  readonly vms: SiteVm[] = [];
  readonly dir: string;
  readonly secretFile: string;
  readonly procs: Proc[] = [];
  /** Running vnet servers by role: proxy, proxy2, h1, h2, ... (and any named extra). */
  readonly servers = new Map<string, Proc>();
  private readonly namespaces: string[] = [];
  private cleaned = false;

  private constructor(readonly name: string, dir: string, readonly opts: SitesOptions) {
    this.dir = dir;
    this.secretFile = `${dir}/secret`;
    this.ns = {
      lan: `${name}-lan`,
      wan: `${name}-wan`,
      client: `${name}-client`,
      proxy: `${name}-proxy`,
      proxy2: opts.secondProxy ? `${name}-proxy2` : undefined,
    };
  }

  /** Builds the namespaces, wires, addresses and (by default) dnsmasq; cleans up on failure. */
  static async create(opts: SitesOptions): Promise<Sites> {
    const name = `${PREFIX}${Deno.pid}-${++sitesCounter}`;
    const dir = await Deno.makeTempDir({ prefix: `${name}-` });
    const s = new Sites(name, dir, opts);
    try {
      await s.build();
    } catch (e) {
      await s.cleanup();
      throw e;
    }
    return s;
  }

  /** The LAN client as an endpoint. */
  get client(): Endpoint {
    return { label: "client", ns: this.ns.client, ip: LAN.client };
  }

  /** Every VM and the LAN client. */
  endpoints(): Endpoint[] {
    return [...this.vms.map((v) => ({ label: v.label, ns: v.ns, ip: v.ip })), this.client];
  }

  /** Address of a server, `ADDR:PORT`: proxy, proxy2 or a Host. */
  addr(role: ProxyRole | SiteHost): string {
    if (role === "proxy") return `${WAN.proxy}:${VNET_PORT}`;
    if (role === "proxy2") return `${PROXY2_WAN}:${VNET_PORT}`;
    return role.addr;
  }

  vmByLabel(label: string): SiteVm {
    const vm = this.vms.find((v) => v.label === label);
    if (!vm) throw new Error(`no VM ${label}`);
    return vm;
  }

  // -------------------------------------------------------------------------------------------
  // Building
  // -------------------------------------------------------------------------------------------

  private async addNs(name: string): Promise<void> {
    await run(null, ["ip", "netns", "add", name]);
    this.namespaces.push(name);
    await run(name, ["ip", "link", "set", "lo", "up"]);
  }

  private async build(): Promise<void> {
    const { ns, opts } = this;
    for (const n of [ns.lan, ns.wan, ns.client, ns.proxy]) await this.addNs(n);
    if (ns.proxy2) await this.addNs(ns.proxy2);

    await addUpBridge(ns.lan, "br0", `${LAN.bridge}/${LAN.prefix}`);
    await addVeth(ns.lan, "c0", ns.client, "eth0");
    await run(ns.lan, ["ip", "link", "set", "c0", "master", "br0"]);
    await run(ns.client, ["ip", "addr", "add", `${LAN.client}/${LAN.prefix}`, "dev", "eth0"]);

    await addUpBridge(ns.wan, "br0");
    const proxies: [string, string][] = [[ns.proxy, WAN.proxy]];
    if (ns.proxy2) proxies.push([ns.proxy2, PROXY2_WAN]);
    for (const [i, [n, ip]] of proxies.entries()) {
      await addVeth(ns.lan, `p${i}`, n, "lan0");
      await run(ns.lan, ["ip", "link", "set", `p${i}`, "master", "br0"]);
      await addVeth(ns.wan, `wp${i}`, n, "wan0");
      await run(ns.wan, ["ip", "link", "set", `wp${i}`, "master", "br0"]);
      await run(n, ["ip", "addr", "add", `${ip}/${WAN.prefix}`, "dev", "wan0"]);
    }

    const total = opts.hosts + (opts.spareHosts ?? 0);
    for (let h = 1; h <= total; h++) {
      const wanIp = `10.78.0.${10 + h}`;
      this.hosts.push({
        index: h,
        label: `h${h}`,
        ns: `${this.name}-h${h}`,
        wanIp,
        addr: `${wanIp}:${VNET_PORT}`,
      });
    }
    // Hosts (and their VMs) are independent of each other: wire them a few at a time.
    await mapLimit(this.hosts, 4, async (host) => {
      await this.addNs(host.ns);
      await addVeth(this.ns.wan, `wh${host.index}`, host.ns, "wan0");
      await run(this.ns.wan, ["ip", "link", "set", `wh${host.index}`, "master", "br0"]);
      await run(host.ns, ["ip", "addr", "add", `${host.wanIp}/${WAN.prefix}`, "dev", "wan0"]);
      if (opts.vmBridge) await addUpBridge(host.ns, "vmbr0");
      if (host.index > opts.hosts) return;
      for (let v = 1; v <= opts.vmsPerHost; v++) {
        const k = (host.index - 1) * opts.vmsPerHost + (v - 1);
        const vm: SiteVm = {
          label: `h${host.index}v${v}`,
          ns: `${this.name}-h${host.index}v${v}`,
          mac: `02:5e:00:00:${hex2(host.index)}:${hex2(v)}`,
          ip: vmAddress(k),
          host,
          hostIf: `vif${k}`,
          hostDev: opts.vmBridge ? "vmbr0" : `vif${k}`,
        };
        await this.addNs(vm.ns);
        await addVeth(host.ns, vm.hostIf, vm.ns, "eth0", vm.mac);
        if (opts.vmBridge) await run(host.ns, ["ip", "link", "set", vm.hostIf, "master", "vmbr0"]);
        await run(vm.ns, ["ip", "addr", "add", `${vm.ip}/${LAN.prefix}`, "dev", "eth0"]);
        this.vms.push(vm);
      }
    });
    this.vms.sort((a, b) => a.hostIf.localeCompare(b.hostIf, "en", { numeric: true }));

    const rnd = Array.from(crypto.getRandomValues(new Uint8Array(32)), hex2).join("");
    await Deno.writeTextFile(this.secretFile, rnd + "\n", { mode: 0o600 });
    await Deno.chmod(this.secretFile, 0o600);
    if (opts.dhcp !== false) await this.startDnsmasq();
  }

  private async startDnsmasq(): Promise<void> {
    this.procs.push(await startLanDhcp(this.ns.lan, this.dir));
  }

  // -------------------------------------------------------------------------------------------
  // Servers and handlers
  // -------------------------------------------------------------------------------------------

  /**
   * Starts `vnet server` named `name` in `ns` listening on `listen`; waits until it logs that it
   * listens (an info line: the level must be info or debug).
   */
  async startServerAt(
    name: string,
    ns: string,
    listen: string,
    extraArgs: string[] = [],
    logLevel = "info",
  ): Promise<Proc> {
    const p = spawn(ns, [
      ...vnetCommand(),
      "server",
      "--listen",
      listen,
      "--secret-file",
      this.secretFile,
      "--log-level",
      logLevel,
      ...extraArgs,
    ]);
    this.procs.push(p);
    this.servers.set(name, p);
    await p.waitForLine(/server listening/, 60_000);
    return p;
  }

  /**
   * Starts the Proxy's (and proxy2's) and every Host's server at once. `proxy`, `proxy2` and
   * `host` are extra arguments for those roles.
   */
  async startServers(
    extra: { proxy?: string[]; proxy2?: string[]; host?: string[]; logLevel?: string } = {},
  ): Promise<void> {
    const starts: Promise<Proc>[] = [
      this.startServerAt("proxy", this.ns.proxy, this.addr("proxy"), extra.proxy, extra.logLevel),
    ];
    if (this.ns.proxy2) {
      starts.push(
        this.startServerAt(
          "proxy2",
          this.ns.proxy2,
          this.addr("proxy2"),
          extra.proxy2,
          extra.logLevel,
        ),
      );
    }
    for (const h of this.hosts) {
      starts.push(this.startServerAt(h.label, h.ns, h.addr, extra.host, extra.logLevel));
    }
    await Promise.all(starts);
  }

  /** Stops one server (SIGTERM); its exit code. */
  async stopServer(name: string): Promise<number> {
    const p = this.servers.get(name);
    if (!p) return 0;
    this.servers.delete(name);
    return await p.kill();
  }

  /** Runs `vnet ARGS` (in the Proxy's namespace unless `ns`). */
  vnet(args: string[], ns: string = this.ns.proxy, timeoutMs = 30_000): Promise<RunResult> {
    return tryRun(ns, [...vnetCommand(), ...args], { timeoutMs });
  }

  /** The `vnet client` arguments of a one-VM handler between a Proxy and the VM's Host. */
  handlerArgs(vm: SiteVm, o: { multicast?: boolean; proxy?: ProxyRole; host?: string } = {}) {
    return [
      "client",
      "--proxy",
      this.addr(o.proxy ?? "proxy"),
      "--proxy-dev",
      "lan0",
      "--host",
      o.host ?? vm.host.addr,
      "--host-dev",
      vm.hostDev,
      "--mac",
      vm.mac,
      ...(o.multicast ? ["--multicast"] : []),
      "--secret-file",
      this.secretFile,
    ];
  }

  /** One handler for a VM, made through the Proxy; returns (and records) its id. */
  async createHandler(
    vm: SiteVm,
    o: { multicast?: boolean; proxy?: ProxyRole; host?: string } = {},
  ): Promise<string> {
    const r = await this.vnet(this.handlerArgs(vm, o));
    if (r.code !== 0 || !r.stdout.trim()) {
      throw new Error(`vnet client for ${vm.label} failed (exit ${r.code}): ${r.stderr.trim()}`);
    }
    vm.handler = r.stdout.trim();
    return vm.handler;
  }

  /** One handler per VM, a few clients at a time. */
  async createHandlers(
    vms: SiteVm[] = this.vms,
    o: { multicast?: boolean; concurrency?: number } = {},
  ): Promise<string[]> {
    return await mapLimit(vms, o.concurrency ?? 4, (vm) => this.createHandler(vm, o));
  }

  /** `vnet client list --json` of a server: a Proxy, a Host, or any `{ addr }`. */
  async list(server: ProxyRole | { addr: string } = "proxy"): Promise<SwitchListed[]> {
    const addr = typeof server === "string" ? this.addr(server) : server.addr;
    const r = await this.vnet([
      "client",
      "list",
      "--server",
      addr,
      "--secret-file",
      this.secretFile,
      "--json",
    ]);
    if (r.code !== 0) throw new Error(`vnet client list ${addr} failed: ${r.stderr.trim()}`);
    return JSON.parse(r.stdout) as SwitchListed[];
  }

  /**
   * Migrates a VM to another Host: its veth's host end moves into that Host's namespace (the
   * VM keeps MAC, address and connections), then `vnet client migrate` through the Proxy.
   */
  async migrate(vm: SiteVm, to: SiteHost): Promise<{ r: RunResult; gapMs: number | null }> {
    if (!vm.handler) throw new Error(`${vm.label} has no handler to migrate`);
    await run(vm.host.ns, ["ip", "link", "set", vm.hostIf, "netns", to.ns]);
    if (this.opts.vmBridge) await run(to.ns, ["ip", "link", "set", vm.hostIf, "master", "vmbr0"]);
    await run(to.ns, ["ip", "link", "set", vm.hostIf, "up"]);
    vm.host = to;
    const r = await this.vnet([
      "client",
      "migrate",
      "--server",
      this.addr("proxy"),
      "--secret-file",
      this.secretFile,
      vm.handler,
      "--host",
      to.addr,
      "--host-dev",
      vm.hostDev,
    ]);
    const gap = /gap (\d+) ms/.exec(r.stderr);
    return { r, gapMs: gap ? Number(gap[1]) : null };
  }

  /** The last lines of every server's log, for failure messages. */
  serverLogs(lines = 25): string {
    return [...this.servers].map(([name, p]) =>
      `  ${name} server:\n${p.lines.slice(-lines).map((l) => `    ${l}`).join("\n")}\n`
    ).join("");
  }

  // -------------------------------------------------------------------------------------------
  // Traffic
  // -------------------------------------------------------------------------------------------

  /** Forgets every learned neighbour (ARP/NDP) in the VMs, the client and the LAN bridge. */
  async flushNeighbours(): Promise<void> {
    const all = [...this.vms.map((v) => v.ns), this.ns.client, this.ns.lan];
    await mapLimit(all, 8, (ns) => run(ns, ["ip", "neigh", "flush", "all"]));
  }

  /**
   * Pings every pair (`count` replies within `deadlineS`), `concurrency` at a time. Returns the
   * pairs that failed, each with ping's output.
   */
  async pingMatrix(
    pairs: PingPair[],
    o: { concurrency?: number; count?: number; deadlineS?: number } = {},
  ): Promise<PingFailure[]> {
    const count = o.count ?? 2;
    const deadline = o.deadlineS ?? 5;
    const results = await mapLimit(pairs, o.concurrency ?? 8, async (pair) => {
      const r = await tryRun(pair.from.ns, [
        "ping",
        "-n",
        "-c",
        String(count),
        "-i",
        "0.2",
        "-w",
        String(deadline),
        pair.to.ip,
      ], { timeoutMs: (deadline + 5) * 1000 });
      return r.code === 0 ? null : { ...pair, output: (r.stdout + r.stderr).trim() };
    });
    return results.filter((r): r is PingFailure => r !== null);
  }

  /** iperf3 TCP from one VM (or endpoint) to another for `seconds`; Mbit/s received. */
  async iperf(from: Endpoint, to: Endpoint, seconds = 3, port = 5201): Promise<number> {
    const srv = spawn(to.ns, [
      "iperf3",
      "-s",
      "-1",
      "-B",
      to.ip,
      "-p",
      String(port),
      "--forceflush",
    ]);
    this.procs.push(srv);
    try {
      await srv.waitForLine(/Server listening/, 5000);
      const r = await tryRun(from.ns, [
        "iperf3",
        "-c",
        to.ip,
        "-p",
        String(port),
        "-t",
        String(seconds),
        "-J",
        "--connect-timeout",
        "3000",
      ], { timeoutMs: (seconds + 15) * 1000 });
      let j;
      try {
        j = JSON.parse(r.stdout);
      } catch {
        throw new Error(
          `iperf3 ${from.label}→${to.label} gave no JSON (exit ${r.code}): ${r.stderr}`,
        );
      }
      if (r.code !== 0 || j.error) {
        throw new Error(`iperf3 ${from.label}→${to.label} failed: ${j.error ?? r.stderr}`);
      }
      return j.end.sum_received.bits_per_second / 1e6;
    } finally {
      await srv.kill("SIGTERM", 1000);
    }
  }

  /**
   * All-pairs UDP reachability over `endpoints` from one process (lab/py/udp_mesh.py): each
   * endpoint answers and probes every other. With `announce`, each first broadcasts a gratuitous
   * ARP that the others accept (every endpoint needs an eth0). Returns the tool's JSON report.
   */
  async reachability(
    endpoints: Endpoint[] = this.endpoints(),
    o: {
      rate?: number;
      rounds?: number;
      roundWait?: number;
      deadlineS?: number;
      announce?: boolean;
    } = {},
  ): Promise<MeshReport> {
    const deadline = o.deadlineS ?? 90;
    const cfg = {
      endpoints,
      port: MESH_PORT,
      rate: o.rate ?? 500,
      rounds: o.rounds ?? 3,
      roundWait: o.roundWait ?? 2,
      deadline,
      announce: o.announce ?? false,
    };
    const r = await tryRun(null, ["python3", `${PY_DIR}udp_mesh.py`], {
      stdin: JSON.stringify(cfg),
      timeoutMs: (deadline + 30) * 1000,
    });
    if (r.code !== 0) throw new Error(`udp_mesh.py failed (exit ${r.code}): ${r.stderr}`);
    return JSON.parse(r.stdout.trim().split("\n").pop()!) as MeshReport;
  }

  // -------------------------------------------------------------------------------------------
  // Faults and loops
  // -------------------------------------------------------------------------------------------

  private static blockTable(b: SiteHost) {
    return `vnetdirect_${b.label}`;
  }

  /** Drops TCP between two Hosts' WAN addresses (in `a`'s namespace, both directions). */
  async blockDirect(a: SiteHost, b: SiteHost): Promise<void> {
    const t = Sites.blockTable(b);
    await run(a.ns, ["nft", "-f", "-"], {
      stdin: `table inet ${t} {
  chain input { type filter hook input priority 0; ip saddr ${b.wanIp} meta l4proto { tcp, udp } drop; }
  chain output { type filter hook output priority 0; ip daddr ${b.wanIp} meta l4proto { tcp, udp } drop; }
}
`,
    });
  }

  async unblockDirect(a: SiteHost, b: SiteHost): Promise<void> {
    await tryRun(a.ns, ["nft", "delete", "table", "inet", Sites.blockTable(b)]);
  }

  /**
   * A loop on purpose: bridges a VM's Host device straight onto the LAN (a veth from the LAN's
   * br0 into the Host, in one bridge `loopbr` with the VM's end). Returns the undo.
   */
  async bridgeVmDeviceToLan(vm: SiteVm): Promise<() => Promise<void>> {
    if (this.opts.vmBridge) throw new Error("bridgeVmDeviceToLan wants a VM on its own veth");
    const lanPort = `lk${vm.hostIf.slice(3)}`;
    await addVeth(this.ns.lan, lanPort, vm.host.ns, "lanlk");
    await run(this.ns.lan, ["ip", "link", "set", lanPort, "master", "br0"]);
    await addUpBridge(vm.host.ns, "loopbr");
    await run(vm.host.ns, ["ip", "link", "set", "lanlk", "master", "loopbr"]);
    await run(vm.host.ns, ["ip", "link", "set", vm.hostIf, "master", "loopbr"]);
    const hostNs = vm.host.ns;
    return async () => {
      await tryRun(this.ns.lan, ["ip", "link", "del", lanPort]);
      await tryRun(hostNs, ["ip", "link", "del", "loopbr"]);
      await tryRun(hostNs, ["ip", "link", "set", vm.hostIf, "up"]);
    };
  }

  /** Packets received on each interface of a namespace (`ip -s`), by name. */
  async rxPackets(ns: string): Promise<Record<string, number>> {
    const out = JSON.parse(await run(ns, ["ip", "-s", "-j", "link", "show"]));
    const counts: Record<string, number> = {};
    for (const l of out) counts[l.ifname] = l.stats64?.rx?.packets ?? 0;
    return counts;
  }

  // -------------------------------------------------------------------------------------------
  // VLANs through raw sockets (lab/py/vlan.py)
  // -------------------------------------------------------------------------------------------

  /** Answers 802.1Q-tagged ICMP echo requests for `ip` on VLAN `vid` (e.g. on the client). */
  async vlanResponder(ns: string, dev: string, vid: number, ip: string, seconds = 20) {
    const p = spawn(ns, [
      "python3",
      `${PY_DIR}vlan.py`,
      "echo",
      dev,
      String(vid),
      ip,
      String(seconds),
    ]);
    this.procs.push(p);
    await p.waitForLine(/^ready/, 10_000);
    return p;
  }

  /** Tagged ICMP echo from `ns` (src/dst addresses inside VLAN `vid`, dst MAC given). */
  vlanPing(
    ns: string,
    dev: string,
    vid: number,
    srcIp: string,
    dstIp: string,
    dstMac: string,
    count = 3,
    timeoutS = 5,
  ): Promise<RunResult> {
    return tryRun(ns, [
      "python3",
      `${PY_DIR}vlan.py`,
      "ping",
      dev,
      String(vid),
      srcIp,
      dstIp,
      dstMac,
      String(count),
      String(timeoutS),
    ], { timeoutMs: (timeoutS + 10) * 1000 });
  }

  /** Waits for a tagged frame (VLAN `vid`, `ethertype`, containing `marker`); `.exited` = 0. */
  async vlanReceiver(ns: string, dev: string, vid: number, ethertype: number, marker: string) {
    const p = spawn(ns, [
      "python3",
      `${PY_DIR}vlan.py`,
      "recv",
      dev,
      String(vid),
      ethertype.toString(16),
      marker,
      "6",
    ]);
    this.procs.push(p);
    await p.waitForLine(/^ready/, 10_000);
    return p;
  }

  async vlanSend(
    ns: string,
    dev: string,
    vid: number,
    dstMac: string,
    ethertype: number,
    marker: string,
  ): Promise<void> {
    await run(ns, [
      "python3",
      `${PY_DIR}vlan.py`,
      "send",
      dev,
      String(vid),
      dstMac,
      ethertype.toString(16),
      marker,
      "3",
    ]);
  }

  // -------------------------------------------------------------------------------------------
  // Teardown
  // -------------------------------------------------------------------------------------------

  /** Kills every process started here, deletes every namespace and the temp dir. Idempotent. */
  async cleanup(): Promise<void> {
    if (this.cleaned) return;
    this.cleaned = true;
    await Promise.all(this.procs.map((p) => p.kill("SIGTERM", 2000).catch(() => {})));
    await mapLimit([...this.namespaces].reverse(), 8, async (n) => {
      await killNsProcesses(n).catch(() => {});
      await tryRun(null, ["ip", "netns", "del", n], { timeoutMs: 5000 }).catch(() => {});
    });
    await Deno.remove(this.dir, { recursive: true }).catch(() => {});
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.cleanup();
  }
}

/** Kills what still runs in a namespace (lab/netns.ts has the same, unexported). */
async function killNsProcesses(ns: Ns): Promise<void> {
  if (!ns) return;
  for (const sig of ["TERM", "KILL"]) {
    const r = await tryRun(null, ["ip", "netns", "pids", ns], { timeoutMs: 5000 });
    const pids = r.stdout.split(/\s+/).filter((p) => /^\d+$/.test(p));
    if (pids.length === 0) return;
    await tryRun(null, ["kill", `-${sig}`, ...pids], { timeoutMs: 5000 });
    await sleep(300);
  }
}

// ---------------------------------------------------------------------------------------------
// What the tests read
// ---------------------------------------------------------------------------------------------

/** One path a Host end sends on (issue 11): to a remote MAC, direct or through the Proxy. */
export interface PathInfo {
  mac: string;
  via: "direct" | "proxy";
  peer: string | null;
  frames: number;
  bytes: number;
  viaProxy?: { frames: number; bytes: number };
  viaDirect?: { frames: number; bytes: number };
  /** A direct path's: what carries it now, and its UDP path's state. */
  transport?: "udp" | "tcp" | null;
  udp?: {
    state: string;
    sealed: boolean;
    peer: string;
    datagramsOut: number;
    datagramsIn: number;
  } | null;
}

/** One entry of `vnet client list --json`. */
export type SwitchListed = ListedHandler;

export interface MeshReport {
  endpoints: number;
  pairs: number;
  reached: number;
  missingCount: number;
  missing: [string, string][];
  rounds: { sent: number; reached: number; seconds: number }[];
  seconds: number;
  /** Time the gratuitous ARPs took (with `announce`). */
  announceSeconds: number;
}

/** RSS (KiB), open fds and threads of a process. */
export function processFigures(pid: number): { rssKiB: number; fds: number; threads: number } {
  const status = Deno.readTextFileSync(`/proc/${pid}/status`);
  const num = (re: RegExp) => Number(re.exec(status)?.[1] ?? NaN);
  let fds = 0;
  for (const _ of Deno.readDirSync(`/proc/${pid}/fd`)) fds++;
  return { rssKiB: num(/VmRSS:\s+(\d+) kB/), fds, threads: num(/Threads:\s+(\d+)/) };
}

/** Established TCP connections on `port` (either end) in a namespace. */
export async function establishedOn(ns: string, port = VNET_PORT): Promise<number> {
  const out = await run(ns, ["ss", "-Htn", "state", "established"]);
  return out.split("\n").filter((l) => new RegExp(`:${port}\\b`).test(l)).length;
}

/**
 * Runs `fn` on a fresh Sites topology, bounded by `timeoutMs` (on expiry cleanup kills every
 * process, which unblocks the body); always cleans up. With VNET_TEST_LOGS=DIR every process's
 * whole output is kept there.
 */
export async function withSites(
  opts: SitesOptions,
  timeoutMs: number,
  fn: (sites: Sites) => Promise<void>,
): Promise<void> {
  const sites = await Sites.create(opts);
  let timer: ReturnType<typeof setTimeout> | undefined;
  try {
    await Promise.race([
      fn(sites),
      new Promise<never>((_, reject) => {
        timer = setTimeout(
          () => reject(new Error(`test body timed out after ${timeoutMs} ms`)),
          timeoutMs,
        );
      }),
    ]);
  } catch (e) {
    if (e instanceof Error) e.message += `\n${sites.serverLogs()}`;
    throw e;
  } finally {
    clearTimeout(timer);
    const keep = Deno.env.get("VNET_TEST_LOGS");
    if (keep) {
      await Deno.mkdir(keep, { recursive: true });
      for (const [i, p] of sites.procs.entries()) {
        await Deno.writeTextFile(`${keep}/${sites.name}-${i}-${p.name}.log`, p.output());
      }
    }
    await sites.cleanup();
  }
}
