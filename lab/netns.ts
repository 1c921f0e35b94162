/**
 * Namespaced test hosts for VNET's end-to-end tests and demo.
 *
 * Every test host is a Linux network namespace; a topology is built fresh for each test run and
 * torn down afterwards. This is THE VNET topology (paper §4.2, Figure 1):
 *
 *                 the user's LAN                       the WAN                   the Host
 *  ┌─────────────────────────────┐            ┌────────────────────┐   ┌──────────────────────────┐
 *  │ lan: bridge br0 10.77.0.1   │            │ wan: bridge br0    │   │ host: wan0 10.78.0.2     │
 *  │      dnsmasq (DHCP .100-150)│            │   (a dumb switch)  │───│   vnet server :7000      │
 *  └──┬───────────────────┬──────┘            └─┬──────────────────┘   │   vmif0 ──── eth0 of vm  │
 *     │ c0                │ p0                  │                      │   (vmif1 ─── eth0 of vm2)│
 *     │                   │                     │                      └──────────────────────────┘
 *  ┌──┴────────────┐  ┌───┴─────────────────────┴──┐                     vm:  eth0 02:00:00:00:00:01
 *  │ client: eth0  │  │ proxy: lan0 (no IP)        │                     vm2: eth0 02:00:00:00:00:02
 *  │   10.77.0.2   │  │        wan0 10.78.0.1      │
 *  │ (the Client)  │  │   vnet server :7000        │   optional host2: wan0 10.78.0.3, vnet server,
 *  └───────────────┘  └────────────────────────────┘   an empty VM side (migrate a VM with moveVm)
 *
 * With `hostBridge: true` the host's vmif0/vmif1 are ports of a bridge `vmbr0` (like a
 * hypervisor's virtual switch), so one handler on `vmbr0` can carry both VMs' MACs.
 *
 * VNET joins the two halves: the host server captures frames from a VM's MAC on its VM device and
 * the proxy server injects them on `lan0` (and the reverse), so the VM appears on the LAN — it
 * gets its address from dnsmasq and the client can ping it. Offloads (TSO/GSO/checksum) are left
 * ON everywhere on purpose: the program must cope with what real veths deliver.
 *
 * Names: namespaces are `vnt-<pid>-<n>-<role>` (pid of the test process, n per topology), so
 * parallel runs never clash and leftovers of dead runs can be found (`removeLeftovers()`,
 * lab/cleanup.sh). Interface names are created directly inside their namespaces, so they are
 * short fixed names (`lan0`, `wan0`, `vmif0`, ...) well within IFNAMSIZ.
 */

import { V8_FLAGS } from "../scripts/compile.ts";

// ---------------------------------------------------------------------------------------------
// The vnet command
// ---------------------------------------------------------------------------------------------

export const REPO_ROOT = new URL("..", import.meta.url).pathname.replace(/\/$/, "");

/**
 * The command prefix that runs the program: `$VNET_BIN` (a compiled binary) if set, else
 * `deno run -A <repo>/main.ts` with the deno that runs us.
 */
export function vnetCommand(): string[] {
  const bin = Deno.env.get("VNET_BIN");
  if (bin) return [bin];
  return [Deno.execPath(), "run", "-A", `--v8-flags=${V8_FLAGS}`, `${REPO_ROOT}/main.ts`];
}

// ---------------------------------------------------------------------------------------------
// Running commands (in a namespace, or in the root namespace with ns = null)
// ---------------------------------------------------------------------------------------------

export type Ns = string | null;

export interface RunResult {
  code: number;
  stdout: string;
  stderr: string;
}

export interface RunOptions {
  /** Kill the command after this long (default 30 s). */
  timeoutMs?: number;
  /** Extra environment variables. */
  env?: Record<string, string>;
  /** Written to the command's stdin. */
  stdin?: string;
}

function inNs(ns: Ns, cmd: string[]): string[] {
  return ns ? ["ip", "netns", "exec", ns, ...cmd] : cmd;
}

const decoder = new TextDecoder();

/** Runs a command to completion and returns its exit code and output; never throws on exit ≠ 0. */
export async function tryRun(ns: Ns, cmd: string[], opts: RunOptions = {}): Promise<RunResult> {
  const argv = inNs(ns, cmd);
  const timeoutMs = opts.timeoutMs ?? 30_000;
  const child = new Deno.Command(argv[0], {
    args: argv.slice(1),
    stdin: opts.stdin === undefined ? "null" : "piped",
    stdout: "piped",
    stderr: "piped",
    env: opts.env,
  }).spawn();
  if (opts.stdin !== undefined) {
    const w = child.stdin.getWriter();
    await w.write(new TextEncoder().encode(opts.stdin));
    await w.close();
  }
  let timedOut = false;
  const timer = setTimeout(() => {
    timedOut = true;
    try {
      child.kill("SIGKILL");
    } catch { /* already gone */ }
  }, timeoutMs);
  const out = await child.output();
  clearTimeout(timer);
  const result = {
    code: out.code,
    stdout: decoder.decode(out.stdout),
    stderr: decoder.decode(out.stderr),
  };
  if (timedOut) {
    result.code = 124;
    result.stderr += `\n[netns] killed after ${timeoutMs} ms: ${argv.join(" ")}`;
  }
  return result;
}

/** Runs a command to completion; throws (with its stderr and stdout) unless it exits 0. */
export async function run(ns: Ns, cmd: string[], opts: RunOptions = {}): Promise<string> {
  const r = await tryRun(ns, cmd, opts);
  if (r.code !== 0) {
    throw new Error(
      `command failed (exit ${r.code})${ns ? ` in ${ns}` : ""}: ${cmd.join(" ")}\n` +
        indent("stderr", r.stderr) + indent("stdout", r.stdout),
    );
  }
  return r.stdout;
}

function indent(label: string, text: string): string {
  const t = text.trimEnd();
  return t ? `  ${label}:\n${t.split("\n").map((l) => `    ${l}`).join("\n")}\n` : "";
}

// ---------------------------------------------------------------------------------------------
// Long-running processes
// ---------------------------------------------------------------------------------------------

/** A long-running process (a server, dnsmasq, iperf3 -s, ...). */
export class Proc {
  /** Every line of stdout and stderr so far, in arrival order, prefixed `out| ` / `err| `. */
  readonly lines: string[] = [];
  /** Resolves with the exit code once the process has exited. */
  readonly exited: Promise<number>;
  exitCode: number | null = null;
  private readonly child: Deno.ChildProcess;
  private readonly readers: Promise<void>[];
  private waiters: (() => void)[] = [];

  constructor(readonly name: string, readonly argv: string[], env?: Record<string, string>) {
    this.child = new Deno.Command(argv[0], {
      args: argv.slice(1),
      stdin: "null",
      stdout: "piped",
      stderr: "piped",
      env,
    }).spawn();
    this.readers = [this.pump(this.child.stdout, "out"), this.pump(this.child.stderr, "err")];
    this.exited = this.child.status.then(async (s) => {
      await Promise.all(this.readers);
      this.exitCode = s.code;
      this.notify();
      return s.code;
    });
  }

  get pid(): number {
    return this.child.pid;
  }

  private async pump(stream: ReadableStream<Uint8Array>, tag: string): Promise<void> {
    let buf = "";
    const td = new TextDecoder();
    for await (const chunk of stream) {
      buf += td.decode(chunk, { stream: true });
      let i;
      while ((i = buf.indexOf("\n")) >= 0) {
        this.lines.push(`${tag}| ${buf.slice(0, i)}`);
        buf = buf.slice(i + 1);
      }
      this.notify();
    }
    if (buf) this.lines.push(`${tag}| ${buf}`);
    this.notify();
  }

  private notify(): void {
    const w = this.waiters;
    this.waiters = [];
    for (const f of w) f();
  }

  /** All output so far, for failure messages. */
  output(): string {
    return this.lines.join("\n");
  }

  /**
   * Waits until a line of stdout or stderr matches; returns that line (without its tag).
   * Rejects, with the collected output, if the process exits first or the time runs out.
   */
  async waitForLine(re: RegExp, timeoutMs: number): Promise<string> {
    const deadline = Date.now() + timeoutMs;
    let seen = 0;
    while (true) {
      for (; seen < this.lines.length; seen++) {
        const line = this.lines[seen].slice(5);
        if (re.test(line)) return line;
      }
      if (this.exitCode !== null) {
        throw new Error(
          `${this.name} exited (code ${this.exitCode}) before printing ${re}\n${
            indent("output", this.output())
          }`,
        );
      }
      const left = deadline - Date.now();
      if (left <= 0) {
        throw new Error(
          `${this.name}: no line matching ${re} within ${timeoutMs} ms\n${
            indent("output", this.output())
          }`,
        );
      }
      let timer: ReturnType<typeof setTimeout> | undefined;
      await new Promise<void>((resolve) => {
        this.waiters.push(resolve);
        timer = setTimeout(resolve, left);
      });
      clearTimeout(timer);
    }
  }

  /** Stops the process: `signal` (default SIGTERM), then SIGKILL after `graceMs`. Returns code. */
  async kill(signal: Deno.Signal = "SIGTERM", graceMs = 3000): Promise<number> {
    if (this.exitCode === null) {
      try {
        this.child.kill(signal);
      } catch { /* already exited */ }
      let timer: ReturnType<typeof setTimeout> | undefined;
      const graceful = await Promise.race([
        this.exited.then(() => true),
        new Promise<boolean>((r) => timer = setTimeout(() => r(false), graceMs)),
      ]);
      clearTimeout(timer);
      if (!graceful) {
        try {
          this.child.kill("SIGKILL");
        } catch { /* already exited */ }
      }
    }
    return await this.exited;
  }
}

/** Starts a long-running command in a namespace. Remember to `kill()` it (Topology does). */
export function spawn(ns: Ns, cmd: string[], env?: Record<string, string>): Proc {
  return new Proc(`${cmd[0].split("/").pop()}${ns ? `@${ns}` : ""}`, inNs(ns, cmd), env);
}

// ---------------------------------------------------------------------------------------------
// Small helpers
// ---------------------------------------------------------------------------------------------

export function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

/** Retries `fn` until it returns a non-undefined value or the time runs out (then throws). */
export async function waitFor<T>(
  what: string,
  fn: () => Promise<T | undefined>,
  timeoutMs: number,
  intervalMs = 200,
): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  let last: unknown;
  while (Date.now() < deadline) {
    try {
      const v = await fn();
      if (v !== undefined) return v;
    } catch (e) {
      last = e;
    }
    await sleep(intervalMs);
  }
  throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}${last ? `: ${last}` : ""}`);
}

/** True if we are root and can make network namespaces. */
export async function canMakeNamespaces(): Promise<boolean> {
  if (Deno.uid() !== 0) return false;
  const r = await tryRun(null, ["ip", "netns", "list"], { timeoutMs: 5000 }).catch(() => null);
  return r?.code === 0;
}

// ---------------------------------------------------------------------------------------------
// Naming and leftovers
// ---------------------------------------------------------------------------------------------

/** Every namespace and temp dir of ours starts with this. */
export const PREFIX = "vnt-";
const OURS = /^vnt-(\d+)-(\d+)-/;
let topologyCounter = 0;

function pidAlive(pid: number): boolean {
  try {
    Deno.statSync(`/proc/${pid}`);
    return true;
  } catch {
    return false;
  }
}

/**
 * Removes namespaces and temp dirs left by dead test runs (their owner pid is gone): kills the
 * processes still inside such namespaces, then deletes them. With `all`, removes every one of
 * ours regardless of owner. Returns the names removed.
 */
export async function removeLeftovers(all = false): Promise<string[]> {
  const removed: string[] = [];
  const list = await tryRun(null, ["ip", "netns", "list"], { timeoutMs: 5000 });
  for (const line of list.stdout.split("\n")) {
    const name = line.split(" ")[0];
    const m = OURS.exec(name);
    if (!m || (!all && pidAlive(Number(m[1])))) continue;
    await killNsProcesses(name);
    await tryRun(null, ["ip", "netns", "del", name], { timeoutMs: 5000 });
    removed.push(name);
  }
  const tmp = Deno.env.get("TMPDIR") ?? "/tmp";
  for (const e of Deno.readDirSync(tmp)) {
    const m = OURS.exec(e.name);
    if (!m || (!all && pidAlive(Number(m[1])))) continue;
    await Deno.remove(`${tmp}/${e.name}`, { recursive: true }).catch(() => {});
    removed.push(`${tmp}/${e.name}`);
  }
  return removed;
}

async function killNsProcesses(ns: string): Promise<void> {
  for (const sig of ["TERM", "KILL"]) {
    const r = await tryRun(null, ["ip", "netns", "pids", ns], { timeoutMs: 5000 });
    const pids = r.stdout.split(/\s+/).filter((p) => /^\d+$/.test(p));
    if (pids.length === 0) return;
    await tryRun(null, ["kill", `-${sig}`, ...pids], { timeoutMs: 5000 });
    await sleep(300);
  }
}

// ---------------------------------------------------------------------------------------------
// The topology
// ---------------------------------------------------------------------------------------------

export interface TopologyOptions {
  /** How many VMs on the host: 1 (vm) or 2 (vm, vm2). Default 1. */
  vms?: 1 | 2;
  /** Put the host's VM ends (vmif0, vmif1) into a bridge vmbr0. Default false. */
  hostBridge?: boolean;
  /** Add a second host namespace host2 (wan0 10.78.0.3) for migration tests. Default false. */
  secondHost?: boolean;
}

export interface Vm {
  /** The VM's namespace; its interface is `eth0`. */
  ns: string;
  mac: string;
  /** The host namespace the VM is plugged into now. */
  hostNs: string;
  /** The host-side interface of the VM's veth (vmif0, vmif1). */
  hostIf: string;
  /** The device a handler should capture on (`hostIf`, or `vmbr0` with hostBridge). */
  hostDev: string;
}

export type Role = "proxy" | "host" | "host2";

export interface ServerOptions {
  tls?: boolean;
  /** Use this secret file instead of the shared one (e.g. `topo.wrongSecretFile`). */
  secretFile?: string;
  logLevel?: "debug" | "info" | "warn" | "error";
  /** Extra arguments for `vnet server`. */
  extraArgs?: string[];
}

export const VNET_PORT = 7000;
export const LAN = { bridge: "10.77.0.1", client: "10.77.0.2", prefix: 24 } as const;
export const WAN = { proxy: "10.78.0.1", host: "10.78.0.2", host2: "10.78.0.3", prefix: 24 };
export const VM_MACS = ["02:00:00:00:00:01", "02:00:00:00:00:02"] as const;
export const DHCP_RANGE = { first: "10.77.0.100", last: "10.77.0.150" } as const;

/** A veth pair with one end in each namespace (created in place: no root-namespace names). */
export async function addVeth(nsA: string, ifA: string, nsB: string, ifB: string, macB?: string) {
  const peer = ["peer", "name", ifB, ...(macB ? ["address", macB] : []), "netns", nsB];
  await run(nsA, ["ip", "link", "add", ifA, "type", "veth", ...peer]);
  await run(nsA, ["ip", "link", "set", ifA, "up"]);
  await run(nsB, ["ip", "link", "set", ifB, "up"]);
}

/** A dumb-switch bridge (addBridge), with an address if given, up. */
export async function addUpBridge(ns: string, br: string, addr?: string) {
  await addBridge(ns, br);
  if (addr) await run(ns, ["ip", "addr", "add", addr, "dev", br]);
  await run(ns, ["ip", "link", "set", br, "up"]);
}

/**
 * Starts dnsmasq on the LAN bridge `br0` of `lanNs`, serving `range` (DHCP_RANGE by default),
 * its lease file, pid and log (with --log-dhcp) in `dir`; resolves once its DHCP socket is bound.
 */
export async function startLanDhcp(
  lanNs: string,
  dir: string,
  range: { first: string; last: string } = DHCP_RANGE,
): Promise<Proc> {
  const p = spawn(lanNs, [
    "dnsmasq",
    "--keep-in-foreground",
    "--conf-file=/dev/null",
    "--no-resolv",
    "--no-hosts",
    "--port=0",
    "--user=root",
    "--group=root",
    "--interface=br0",
    "--bind-interfaces",
    `--dhcp-range=${range.first},${range.last},255.255.255.0,1h`,
    "--dhcp-authoritative",
    "--no-ping",
    "--log-dhcp",
    `--dhcp-leasefile=${dir}/dnsmasq.leases`,
    `--pid-file=${dir}/dnsmasq.pid`,
    `--log-facility=${dir}/dnsmasq.log`,
  ]);
  // dnsmasq logs "DHCP, IP range ..." once its DHCP socket is bound.
  await waitFor(
    "dnsmasq to start",
    async () => {
      if (p.exitCode !== null) throw new Error(`dnsmasq exited: ${p.output()}`);
      const log = await Deno.readTextFile(`${dir}/dnsmasq.log`).catch(() => "");
      return /DHCP, IP range/.test(log) ? true : undefined;
    },
    10_000,
    100,
  ).catch((e) => {
    p.kill("SIGKILL");
    throw e;
  });
  return p;
}

/**
 * Adds a Linux bridge that behaves like a dumb switch: no STP (ports forward at once), no
 * multicast snooping (multicast is flooded).
 */
export async function addBridge(ns: Ns, br: string): Promise<void> {
  await run(ns, [
    "ip",
    "link",
    "add",
    br,
    "type",
    "bridge",
    "stp_state",
    "0",
    "forward_delay",
    "0",
    "mcast_snooping",
    "0",
  ]);
}

export class Topology {
  /** Namespace names by role. */
  readonly ns: {
    lan: string;
    wan: string;
    client: string;
    proxy: string;
    host: string;
    host2?: string;
  };
  readonly vms: Vm[] = [];
  /** Temp dir for secrets, certs, leases, logs. */
  readonly dir: string;
  readonly secretFile: string;
  readonly wrongSecretFile: string;
  /** Processes started by this topology, killed by cleanup(). */
  readonly procs: Proc[] = [];
  /** Running vnet servers by role. */
  readonly servers: Partial<Record<Role, Proc>> = {};
  /** Directory of TLS material (ca.pem, <role>/cert.pem, <role>/key.pem) once made. */
  tlsDir?: string;
  private readonly namespaces: string[] = [];
  private cleaned = false;

  private constructor(readonly name: string, dir: string, readonly opts: TopologyOptions) {
    this.dir = dir;
    this.secretFile = `${dir}/secret`;
    this.wrongSecretFile = `${dir}/wrong.secret`;
    const n = (role: string) => `${name}-${role}`;
    this.ns = {
      lan: n("lan"),
      wan: n("wan"),
      client: n("client"),
      proxy: n("proxy"),
      host: n("host"),
      host2: opts.secondHost ? n("host2") : undefined,
    };
  }

  /** Builds the whole topology (namespaces, links, addresses, dnsmasq). Cleans up on failure. */
  static async create(opts: TopologyOptions = {}): Promise<Topology> {
    const name = `${PREFIX}${Deno.pid}-${++topologyCounter}`;
    const dir = await Deno.makeTempDir({ prefix: `${name}-` });
    const t = new Topology(name, dir, opts);
    try {
      await t.build();
    } catch (e) {
      await t.cleanup();
      throw e;
    }
    return t;
  }

  /** Address of a role's server, `ADDR:PORT`. */
  addr(role: Role): string {
    return `${WAN[role]}:${VNET_PORT}`;
  }

  private async addNs(name: string): Promise<void> {
    await run(null, ["ip", "netns", "add", name]);
    this.namespaces.push(name);
    await run(name, ["ip", "link", "set", "lo", "up"]);
  }

  private async build(): Promise<void> {
    const { ns } = this;
    const all = [ns.lan, ns.wan, ns.client, ns.proxy, ns.host, ...(ns.host2 ? [ns.host2] : [])];
    for (const n of all) await this.addNs(n);

    // LAN: bridge br0 with the client and the proxy's lan0 on it.
    await addUpBridge(ns.lan, "br0", `${LAN.bridge}/${LAN.prefix}`);
    await addVeth(ns.lan, "c0", ns.client, "eth0");
    await run(ns.lan, ["ip", "link", "set", "c0", "master", "br0"]);
    await run(ns.client, ["ip", "addr", "add", `${LAN.client}/${LAN.prefix}`, "dev", "eth0"]);
    await addVeth(ns.lan, "p0", ns.proxy, "lan0");
    await run(ns.lan, ["ip", "link", "set", "p0", "master", "br0"]);

    // WAN: a switch joining proxy, host (and host2).
    await addUpBridge(ns.wan, "br0");
    const wanHosts: [string, string][] = [[ns.proxy, WAN.proxy], [ns.host, WAN.host]];
    if (ns.host2) wanHosts.push([ns.host2, WAN.host2]);
    for (const [i, [n, ip]] of wanHosts.entries()) {
      await addVeth(ns.wan, `w${i}`, n, "wan0");
      await run(ns.wan, ["ip", "link", "set", `w${i}`, "master", "br0"]);
      await run(n, ["ip", "addr", "add", `${ip}/${WAN.prefix}`, "dev", "wan0"]);
    }

    // VMs: each its own namespace, eth0 with a fixed MAC, the other end vmifN in host.
    if (this.opts.hostBridge) await addUpBridge(ns.host, "vmbr0");
    const count = this.opts.vms ?? 1;
    for (let i = 0; i < count; i++) {
      const vmNs = `${this.name}-${i === 0 ? "vm" : `vm${i + 1}`}`;
      await this.addNs(vmNs);
      const hostIf = `vmif${i}`;
      await addVeth(ns.host, hostIf, vmNs, "eth0", VM_MACS[i]);
      if (this.opts.hostBridge) {
        await run(ns.host, ["ip", "link", "set", hostIf, "master", "vmbr0"]);
      }
      this.vms.push({
        ns: vmNs,
        mac: VM_MACS[i],
        hostNs: ns.host,
        hostIf,
        hostDev: this.opts.hostBridge ? "vmbr0" : hostIf,
      });
    }

    await this.writeSecrets();
    await this.startDnsmasq();
  }

  private async writeSecrets(): Promise<void> {
    const rnd = (n: number) =>
      Array.from(crypto.getRandomValues(new Uint8Array(n)), (b) => b.toString(16).padStart(2, "0"))
        .join("");
    await Deno.writeTextFile(this.secretFile, rnd(32) + "\n", { mode: 0o600 });
    await Deno.writeTextFile(this.wrongSecretFile, rnd(32) + "\n", { mode: 0o600 });
    await Deno.chmod(this.secretFile, 0o600);
    await Deno.chmod(this.wrongSecretFile, 0o600);
  }

  /** The LAN's DHCP server. Its log (with --log-dhcp) is `<dir>/dnsmasq.log`. */
  private async startDnsmasq(): Promise<void> {
    this.procs.push(await startLanDhcp(this.ns.lan, this.dir));
  }

  /** dnsmasq's log so far (for failure messages). */
  dnsmasqLog(): string {
    try {
      return Deno.readTextFileSync(`${this.dir}/dnsmasq.log`);
    } catch {
      return "";
    }
  }

  // -------------------------------------------------------------------------------------------
  // vnet
  // -------------------------------------------------------------------------------------------

  /** Runs `vnet ARGS` in a namespace (default: proxy, where the Client can reach both servers). */
  vnet(args: string[], opts: RunOptions & { ns?: string } = {}): Promise<RunResult> {
    return tryRun(opts.ns ?? this.ns.proxy, [...vnetCommand(), ...args], {
      timeoutMs: 30_000,
      ...opts,
    });
  }

  /** Makes a CA and a server certificate for each role with `vnet cert` (once). */
  async makeCerts(): Promise<string> {
    if (this.tlsDir) return this.tlsDir;
    const dir = `${this.dir}/tls`;
    await Deno.mkdir(dir, { recursive: true });
    const ok = async (args: string[]) => {
      const r = await tryRun(null, [...vnetCommand(), ...args]);
      if (r.code !== 0) throw new Error(`vnet ${args.join(" ")} failed: ${r.stderr}`);
    };
    await ok(["cert", "ca", "--out", dir]);
    const roles: Role[] = ["proxy", "host", ...(this.ns.host2 ? ["host2" as const] : [])];
    for (const role of roles) {
      await ok([
        "cert",
        "issue",
        "--ca",
        dir,
        "--name",
        role,
        "--san",
        WAN[role],
        "--out",
        `${dir}/${role}`,
      ]);
    }
    this.tlsDir = dir;
    return dir;
  }

  /** The `--tls-ca` flag for clients, if TLS material exists. */
  clientTlsArgs(): string[] {
    return this.tlsDir ? ["--tls-ca", `${this.tlsDir}/ca.pem`] : [];
  }

  /** Starts `vnet server` for one role and waits for `server listening`. */
  async startServer(role: Role, opts: ServerOptions = {}): Promise<Proc> {
    const ns = this.ns[role];
    if (!ns) throw new Error(`no ${role} namespace in this topology`);
    const args = [
      "server",
      "--listen",
      this.addr(role),
      "--secret-file",
      opts.secretFile ?? this.secretFile,
      "--log-level",
      opts.logLevel ?? "debug",
    ];
    if (opts.tls) {
      const dir = await this.makeCerts();
      args.push("--tls-cert", `${dir}/${role}/cert.pem`, "--tls-key", `${dir}/${role}/key.pem`);
      args.push("--tls-ca", `${dir}/ca.pem`);
    }
    args.push(...(opts.extraArgs ?? []));
    const p = spawn(ns, [...vnetCommand(), ...args]);
    this.procs.push(p);
    this.servers[role] = p;
    await p.waitForLine(/server listening/, 30_000);
    return p;
  }

  /** Starts servers on proxy and host (and host2) in parallel. */
  async startServers(opts: ServerOptions = {}): Promise<void> {
    if (opts.tls) await this.makeCerts();
    const roles: Role[] = ["proxy", "host", ...(this.ns.host2 ? ["host2" as const] : [])];
    await Promise.all(roles.map((r) => this.startServer(r, opts)));
  }

  /** Stops the running servers (SIGTERM). Returns their exit codes by role. */
  async stopServers(): Promise<Partial<Record<Role, number>>> {
    const codes: Partial<Record<Role, number>> = {};
    for (const [role, p] of Object.entries(this.servers) as [Role, Proc][]) {
      codes[role] = await p.kill();
      delete this.servers[role];
    }
    return codes;
  }

  /**
   * Creates a handler proxy:lan0 <-> host:<vm's hostDev> for the given VMs' MACs with
   * `vnet client`; returns its id. Throws (with stderr) if the client fails.
   */
  async createHandler(
    vms: Vm[] = [this.vms[0]],
    opts: { multicast?: boolean; via?: "proxy" | "host"; hostRole?: Role } = {},
  ): Promise<string> {
    const r = await this.vnet(this.handlerArgs(vms, opts));
    if (r.code !== 0 || !r.stdout.trim()) {
      throw new Error(
        `vnet client failed (exit ${r.code}): ${r.stderr.trim()}\n${this.serverLogs()}`,
      );
    }
    return r.stdout.trim();
  }

  /** The `vnet client ...` arguments createHandler uses (for tests that want to vary them). */
  handlerArgs(
    vms: Vm[] = [this.vms[0]],
    opts: { multicast?: boolean; via?: "proxy" | "host"; hostRole?: Role; secretFile?: string } =
      {},
  ): string[] {
    const hostRole = opts.hostRole ?? "host";
    return [
      "client",
      "--proxy",
      this.addr("proxy"),
      "--proxy-dev",
      "lan0",
      "--host",
      this.addr(hostRole),
      "--host-dev",
      vms[0].hostDev,
      ...vms.flatMap((v) => ["--mac", v.mac]),
      ...(opts.multicast ? ["--multicast"] : []),
      ...(opts.via ? ["--via", opts.via] : []),
      "--secret-file",
      opts.secretFile ?? this.secretFile,
      ...this.clientTlsArgs(),
    ];
  }

  /** `vnet client list --json` against one server. */
  async list(role: Role = "proxy"): Promise<HandlerInfo[]> {
    const r = await this.vnet([
      "client",
      "list",
      "--server",
      this.addr(role),
      "--secret-file",
      this.secretFile,
      ...this.clientTlsArgs(),
      "--json",
    ]);
    if (r.code !== 0) throw new Error(`vnet client list failed: ${r.stderr.trim()}`);
    return JSON.parse(r.stdout) as HandlerInfo[];
  }

  /** `vnet client close ID` via one server. */
  async closeHandler(id: string, role: Role = "proxy"): Promise<RunResult> {
    return await this.vnet([
      "client",
      "close",
      "--server",
      this.addr(role),
      "--secret-file",
      this.secretFile,
      ...this.clientTlsArgs(),
      id,
    ]);
  }

  /** The last lines of each server's log, for failure messages. */
  serverLogs(lines = 40): string {
    return Object.entries(this.servers).map(([role, p]) =>
      indent(`${role} server`, p!.lines.slice(-lines).join("\n"))
    ).join("");
  }

  // -------------------------------------------------------------------------------------------
  // The VM side
  // -------------------------------------------------------------------------------------------

  /**
   * Runs a real DHCP client (busybox udhcpc) in a VM; the lease is applied by a tiny script with
   * `ip addr`. Returns the leased IPv4 address read back from eth0. Throws on no lease.
   */
  async dhcp(vm: Vm = this.vms[0], timeoutMs = 15_000): Promise<string> {
    const script = `${this.dir}/udhcpc.sh`;
    await Deno.writeTextFile(script, UDHCPC_SCRIPT, { mode: 0o755 });
    await Deno.chmod(script, 0o755);
    const tries = Math.max(2, Math.floor(timeoutMs / 2000));
    // -f foreground, -q quit once bound, -n fail if no lease, -t tries, -T secs between them.
    const r = await tryRun(vm.ns, [
      "udhcpc",
      "-f",
      "-q",
      "-n",
      "-i",
      "eth0",
      "-t",
      String(tries),
      "-T",
      "2",
      "-s",
      script,
    ], { timeoutMs: timeoutMs + 5000 });
    if (r.code !== 0) {
      throw new Error(
        `no DHCP lease for ${vm.ns} (udhcpc exit ${r.code})\n` + indent("udhcpc", r.stderr) +
          indent("dnsmasq log", this.dnsmasqLog().split("\n").slice(-15).join("\n")) +
          this.serverLogs(),
      );
    }
    const ip = await this.ipv4(vm.ns, "eth0");
    if (!ip) throw new Error(`udhcpc succeeded but eth0 in ${vm.ns} has no address: ${r.stderr}`);
    return ip;
  }

  /** The first IPv4 address of a device, or undefined. */
  async ipv4(ns: string, dev: string): Promise<string | undefined> {
    const out = await run(ns, ["ip", "-4", "-o", "addr", "show", "dev", dev]);
    return /inet (\d+\.\d+\.\d+\.\d+)\//.exec(out)?.[1];
  }

  /** The IPv6 link-local address of a device, once DAD has finished (not tentative). */
  linkLocal(ns: string, dev = "eth0", timeoutMs = 10_000): Promise<string> {
    return waitFor(`IPv6 link-local on ${dev} in ${ns}`, async () => {
      const out = await run(ns, ["ip", "-6", "-o", "addr", "show", "dev", dev, "scope", "link"]);
      if (/tentative/.test(out)) return undefined;
      return /inet6 (fe80::[0-9a-f:]+)\//.exec(out)?.[1];
    }, timeoutMs);
  }

  /**
   * Pings from a namespace: ok when `count` replies arrive within `deadlineS` seconds (`ping -c N
   * -w S`, so a slow first ARP/NDP resolution or an ICMP error does not end it early).
   */
  async ping(ns: string, target: string, opts: { count?: number; deadlineS?: number } = {}) {
    const count = opts.count ?? 3;
    const deadline = opts.deadlineS ?? 5;
    const r = await tryRun(ns, [
      "ping",
      "-n",
      "-c",
      String(count),
      "-i",
      "0.2",
      "-w",
      String(deadline),
      target,
    ], { timeoutMs: (deadline + 5) * 1000 });
    return { ok: r.code === 0, output: r.stdout + r.stderr };
  }

  /**
   * "Migrates" a VM: moves the host end of its veth into another host namespace (host2). The VM
   * keeps its MAC, address and connections; only the wire now ends at a different host.
   */
  async moveVm(vm: Vm, toRole: "host" | "host2"): Promise<void> {
    const to = this.ns[toRole];
    if (!to) throw new Error(`no ${toRole} namespace in this topology`);
    await run(vm.hostNs, ["ip", "link", "set", vm.hostIf, "netns", to]);
    await run(to, ["ip", "link", "set", vm.hostIf, "up"]);
    vm.hostNs = to;
    vm.hostDev = vm.hostIf;
  }

  // -------------------------------------------------------------------------------------------
  // Teardown
  // -------------------------------------------------------------------------------------------

  /** Kills every process started here, deletes every namespace and the temp dir. Idempotent. */
  async cleanup(): Promise<void> {
    if (this.cleaned) return;
    this.cleaned = true;
    await Promise.all(this.procs.map((p) => p.kill("SIGTERM", 2000).catch(() => {})));
    for (const n of this.namespaces.reverse()) {
      await killNsProcesses(n).catch(() => {});
      await tryRun(null, ["ip", "netns", "del", n], { timeoutMs: 5000 }).catch(() => {});
    }
    await Deno.remove(this.dir, { recursive: true }).catch(() => {});
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.cleanup();
  }
}

/** One entry of `vnet client list --json`. */
export interface HandlerInfo {
  id: string;
  role: "host" | "proxy";
  device: string;
  peer: string;
  macs: string[];
  multicast: boolean;
  /** up, down, degraded (the interface is gone) or closed. */
  state: string;
  link: {
    state: string;
    remote: string | null;
    reconnects: number;
    tls: boolean;
    socket: string | null;
    /** What carries the handler's frames now, and the link's UDP path if they take it. */
    transport?: "tcp" | "udp";
    udp?: { state: string; mtu: number; datagramsOut: number; datagramsIn: number } | null;
  };
  toPeer: { frames: number; bytes: number; drops: number };
  fromPeer: { frames: number; bytes: number; drops: number };
  /** Frames through a link socket the data-path worker owns, each way. */
  dataPathSocket: { out: number; in: number };
}

/**
 * busybox udhcpc calls this with $1 = deconfig | bound | renew | leasefail | nak and the lease in
 * the environment ($interface, $ip, $mask = prefix length, $router). No resolv.conf handling:
 * a test VM must not touch the machine's /etc/resolv.conf (namespaces share the filesystem).
 */
const UDHCPC_SCRIPT = `#!/bin/sh
case "$1" in
  deconfig)
    ip -4 addr flush dev "$interface"
    ip link set "$interface" up
    ;;
  bound|renew)
    ip -4 addr flush dev "$interface"
    ip addr add "$ip/\${mask:-24}" dev "$interface"
    if [ -n "$router" ]; then
      for r in $router; do ip route replace default via "$r" dev "$interface"; break; done
    fi
    echo "lease $ip/\${mask:-24} on $interface" >&2
    ;;
esac
exit 0
`;

// ---------------------------------------------------------------------------------------------
// Raw Ethernet frames (a non-IP EtherType) with python3 AF_PACKET sockets
// ---------------------------------------------------------------------------------------------

const RAW_PY = `
import socket, sys, time, select
mode, dev, ethertype = sys.argv[1], sys.argv[2], int(sys.argv[3], 16)
if mode == "send":
    dst, payload = bytes.fromhex(sys.argv[4].replace(":", "")), sys.argv[5].encode()
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
    s.bind((dev, 0))
    src = s.getsockname()[4][:6]
    frame = dst + src + ethertype.to_bytes(2, "big") + payload
    frame += bytes(max(0, 60 - len(frame)))
    for _ in range(int(sys.argv[6])):
        s.send(frame)
        time.sleep(0.1)
else:
    want, timeout = sys.argv[4].encode(), float(sys.argv[5])
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ethertype))
    s.bind((dev, ethertype))
    print("ready", flush=True)
    end = time.time() + timeout
    while time.time() < end:
        r, _, _ = select.select([s], [], [], max(0.0, end - time.time()))
        if not r:
            break
        data, addr = s.recvfrom(65535)
        if addr[2] == socket.PACKET_OUTGOING:
            continue
        if want in data[14:]:
            print("got", data[6:12].hex(":"), data[14:14 + len(want)].decode(), flush=True)
            sys.exit(0)
    print("timeout", flush=True)
    sys.exit(1)
`;

/** Starts a receiver for frames of `ethertype` containing `marker`; wait for it with `.exited`. */
export async function receiveRawFrame(
  ns: string,
  dev: string,
  ethertype: number,
  marker: string,
  timeoutS = 5,
): Promise<Proc> {
  const p = spawn(ns, [
    "python3",
    "-c",
    RAW_PY,
    "recv",
    dev,
    ethertype.toString(16),
    marker,
    String(timeoutS),
  ]);
  await p.waitForLine(/^ready/, 10_000);
  return p;
}

/** Sends `count` raw frames (dst MAC, EtherType, payload) out of `dev` in a namespace. */
export async function sendRawFrame(
  ns: string,
  dev: string,
  dst: string,
  ethertype: number,
  payload: string,
  count = 3,
): Promise<void> {
  await run(ns, [
    "python3",
    "-c",
    RAW_PY,
    "send",
    dev,
    ethertype.toString(16),
    dst,
    payload,
    String(count),
  ]);
}

/** The MAC address of a device. */
export async function macOf(ns: string, dev: string): Promise<string> {
  const out = await run(ns, ["cat", `/sys/class/net/${dev}/address`]);
  return out.trim();
}
