/**
 * The README's walk-through, run as written. Every shell block under "## Walk-through" starts
 * with `# on the Proxy`, `# on the Host` or `# on a LAN machine`; each command runs with `sh` in
 * the namespace of that machine, in a directory of its own, with `vnet` on PATH (a wrapper for
 * the lab's way of running the program: `deno run -A main.ts`, or `$VNET_BIN`). Nothing else of
 * a command is changed. The namespaces carry the README's names and addresses:
 *
 *   LAN 192.0.2.0/24 (bridge, dnsmasq at .1 leasing          WAN (a switch)
 *   52:54:00:12:34:56 the address 192.0.2.50)
 *     ├── pc: eth0 192.0.2.20 ("a LAN machine")     ┌── proxy: wan0 198.51.100.1
 *     └── proxy: lan0, no IP ───────────────────────┘   host: wan0 203.0.113.7
 *                                                         vmtap0 ── vm: eth0 52:54:00:12:34:56
 *
 * What the README leaves to the reader the test does too: it copies `vnet.secret` from the
 * Proxy's directory to the Host's (the README's `scp`), keeps each server running, and makes the
 * VM take its DHCP lease before the LAN machine pings it. After the last command (close) the VM
 * must no longer answer: the ping went through VNET and nothing else.
 *
 *   flock /tmp/vnet-ns.lock deno test -A tests/e2e/readme_test.ts
 */
import {
  addUpBridge,
  addVeth,
  PREFIX,
  type Proc,
  run,
  spawn,
  tryRun,
  vnetCommand,
} from "../../lab/netns.ts";
import { assert, e2e } from "./fixtures/e2e_common.ts";

const README = new URL("../../README.md", import.meta.url).pathname;

/** The machines the README names, as the `# on ...` lines spell them. */
const MACHINES = { "the Proxy": "proxy", "the Host": "host", "a LAN machine": "pc" } as const;
type Machine = (typeof MACHINES)[keyof typeof MACHINES];

interface Command {
  machine: Machine;
  /** The command as written, continuation lines joined. */
  text: string;
}

/** The walk-through's commands: the `sh` blocks between its heading and the next `## `. */
function walkThrough(markdown: string): Command[] {
  const start = markdown.search(/^## Walk-through/m);
  assert(start >= 0, "README.md has no '## Walk-through' heading");
  const rest = markdown.slice(start + 3);
  const end = rest.search(/^## /m);
  const section = end >= 0 ? rest.slice(0, end) : rest;
  const commands: Command[] = [];
  for (const block of section.matchAll(/^```sh\n([\s\S]*?)^```$/gm)) {
    let machine: Machine | undefined;
    const lines = block[1].replace(/\\\n\s*/g, "").split("\n");
    for (const line of lines.map((l) => l.trim()).filter((l) => l)) {
      const on = /^# on (.+)$/.exec(line);
      if (on) {
        machine = MACHINES[on[1] as keyof typeof MACHINES];
        assert(machine, `README walk-through: unknown machine '${on[1]}'`);
        continue;
      }
      if (line.startsWith("#")) continue;
      assert(machine, `README walk-through: '${line}' comes before any '# on ...' line`);
      commands.push({ machine, text: line });
    }
  }
  return commands;
}

const NAMES = {
  proxyLan: "lan0",
  proxyWan: "198.51.100.1",
  host: "203.0.113.7",
  vmTap: "vmtap0",
  vmMac: "52:54:00:12:34:56",
  vmIp: "192.0.2.50",
  pc: "192.0.2.20",
  lanRouter: "192.0.2.1",
};

/** The README's world: namespaces, one directory per machine, the `vnet` wrapper. */
class World {
  readonly ns: Record<"lan" | "wan" | Machine | "vm", string>;
  readonly procs: Proc[] = [];
  private readonly made: string[] = [];
  constructor(readonly dir: string) {
    const n = (role: string) => `${PREFIX}${Deno.pid}-0-${role}`;
    this.ns = {
      lan: n("lan"),
      wan: n("wan"),
      proxy: n("proxy"),
      host: n("host"),
      pc: n("pc"),
      vm: n("vm"),
    };
  }

  static async create(): Promise<World> {
    const dir = await Deno.makeTempDir({ prefix: `${PREFIX}${Deno.pid}-0-readme-` });
    const w = new World(dir);
    try {
      await w.build();
    } catch (e) {
      await w.cleanup();
      throw e;
    }
    return w;
  }

  private async build(): Promise<void> {
    for (const name of Object.values(this.ns)) {
      await run(null, ["ip", "netns", "add", name]);
      this.made.push(name);
      await run(name, ["ip", "link", "set", "lo", "up"]);
    }
    const { ns } = this;
    // The LAN: a switch with a router that runs DHCP, the LAN machine and the Proxy's lan0.
    await addUpBridge(ns.lan, "br0", `${NAMES.lanRouter}/24`);
    await addVeth(ns.lan, "pc0", ns.pc, "eth0");
    await run(ns.lan, ["ip", "link", "set", "pc0", "master", "br0"]);
    await run(ns.pc, ["ip", "addr", "add", `${NAMES.pc}/24`, "dev", "eth0"]);
    await addVeth(ns.lan, "px0", ns.proxy, NAMES.proxyLan);
    await run(ns.lan, ["ip", "link", "set", "px0", "master", "br0"]);
    // The WAN: the Proxy's and the Host's public addresses on one switch, routed on-link.
    await addUpBridge(ns.wan, "br0");
    const wan: [string, string, string][] = [
      [ns.proxy, NAMES.proxyWan, "203.0.113.0/24"],
      [ns.host, NAMES.host, "198.51.100.0/24"],
    ];
    for (const [i, [n, ip, other]] of wan.entries()) {
      await addVeth(ns.wan, `w${i}`, n, "wan0");
      await run(ns.wan, ["ip", "link", "set", `w${i}`, "master", "br0"]);
      await run(n, ["ip", "addr", "add", `${ip}/24`, "dev", "wan0"]);
      await run(n, ["ip", "route", "add", other, "dev", "wan0"]);
    }
    // The VM: its NIC in its own namespace, the host side of the wire is vmtap0.
    await addVeth(ns.host, NAMES.vmTap, ns.vm, "eth0", NAMES.vmMac);
    await run(ns.vm, ["ip", "link", "set", "eth0", "up"]);

    for (const m of Object.values(MACHINES)) await Deno.mkdir(`${this.dir}/${m}`);
    await Deno.mkdir(`${this.dir}/bin`);
    const quoted = vnetCommand().map((a) => `'${a.replaceAll("'", `'\\''`)}'`).join(" ");
    await Deno.writeTextFile(`${this.dir}/bin/vnet`, `#!/bin/sh\nexec ${quoted} "$@"\n`, {
      mode: 0o755,
    });
    await Deno.chmod(`${this.dir}/bin/vnet`, 0o755);
    await Deno.writeTextFile(`${this.dir}/udhcpc.sh`, UDHCPC_SCRIPT, { mode: 0o755 });
    await Deno.chmod(`${this.dir}/udhcpc.sh`, 0o755);

    const dnsmasq = spawn(ns.lan, [
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
      `--dhcp-range=${NAMES.vmIp},${NAMES.vmIp},255.255.255.0,1h`,
      "--dhcp-authoritative",
      "--no-ping",
      "--log-dhcp",
      "--log-facility=-",
      `--dhcp-leasefile=${this.dir}/dnsmasq.leases`,
    ]);
    this.procs.push(dnsmasq);
    await dnsmasq.waitForLine(/DHCP, IP range/, 10_000);
  }

  /** How a machine runs a command: sh in its namespace and directory, `vnet` on PATH. */
  shell(machine: Machine, script: string): string[] {
    return ["sh", "-c", `cd '${this.dir}/${machine}' || exit 99\n${script}`];
  }

  env(vars: Record<string, string>): Record<string, string> {
    return { ...vars, PATH: `${this.dir}/bin:${Deno.env.get("PATH") ?? "/usr/bin:/bin"}` };
  }

  /** The README's "copy it to the Host": the secret file, mode 0600, from the Proxy's directory. */
  async copySecret(): Promise<void> {
    const from = `${this.dir}/proxy/vnet.secret`;
    const to = `${this.dir}/host/vnet.secret`;
    const exists = (p: string) => Deno.stat(p).then(() => true, () => false);
    if (!await exists(from) || await exists(to)) return;
    await Deno.copyFile(from, to);
    await Deno.chmod(to, 0o600);
  }

  /** The VM takes its address from the LAN's DHCP server, over VNET; returns it. */
  async vmLease(): Promise<string> {
    const r = await tryRun(this.ns.vm, [
      "udhcpc",
      "-f",
      "-q",
      "-n",
      "-i",
      "eth0",
      "-t",
      "5",
      "-T",
      "2",
      "-s",
      `${this.dir}/udhcpc.sh`,
    ], { timeoutMs: 20_000 });
    assert(r.code === 0, `the VM got no DHCP lease (udhcpc exit ${r.code}): ${r.stderr}`);
    const out = await run(this.ns.vm, ["ip", "-4", "-o", "addr", "show", "dev", "eth0"]);
    return /inet (\d+\.\d+\.\d+\.\d+)\//.exec(out)?.[1] ?? "";
  }

  logs(): string {
    return this.procs.map((p) => `--- ${p.name}\n${p.lines.slice(-30).join("\n")}`).join("\n");
  }

  async cleanup(): Promise<void> {
    await Promise.all(this.procs.map((p) => p.kill("SIGTERM", 2000).catch(() => {})));
    for (const n of this.made.reverse()) {
      await tryRun(null, ["ip", "netns", "del", n], { timeoutMs: 5000 }).catch(() => {});
    }
    await Deno.remove(this.dir, { recursive: true }).catch(() => {});
  }
}

/** The VM's DHCP client's hook (busybox udhcpc): apply the lease with `ip`, nothing else. */
const UDHCPC_SCRIPT = `#!/bin/sh
case "$1" in
  deconfig) ip -4 addr flush dev "$interface"; ip link set "$interface" up ;;
  bound|renew) ip -4 addr flush dev "$interface"; ip addr add "$ip/\${mask:-24}" dev "$interface" ;;
esac
exit 0
`;

/** `vnet server ...` runs until stopped; every other command runs to its end. */
const isServer = (text: string) => /^vnet server\b/.test(text) && !/--check-config/.test(text);

e2e("README walk-through: every command as written reaches a pinging VM", async () => {
  const commands = walkThrough(await Deno.readTextFile(README));
  // The steps the README promises, in order: a README that drops one fails here.
  const vnetSteps = commands.map((c) =>
    /^(?:\w+=\$\()?vnet (\w+)(?: (create|devices|list|close))?/.exec(c.text)?.slice(1)
      .filter(Boolean).join(" ")
  ).filter(Boolean);
  const want = [
    "secret",
    "server",
    "server",
    "client devices",
    "client create",
    "client list",
    "client close",
  ];
  let i = 0;
  for (const s of vnetSteps) if (s === want[i]) i++;
  assert(i === want.length, `walk-through steps ${vnetSteps.join(", ")}; want ${want} in order`);
  assert(
    commands.some((c) => c.machine === "pc" && c.text.startsWith(`ping `)),
    "the walk-through pings the VM from a LAN machine",
  );

  const world = await World.create();
  let timer: ReturnType<typeof setTimeout> | undefined;
  const body = async () => {
    const vars: Record<string, string> = {};
    let leased = false;
    for (const { machine, text } of commands) {
      const ns = world.ns[machine];
      if (machine === "host") await world.copySecret();
      if (machine === "pc" && !leased) {
        const ip = await world.vmLease();
        assert(ip === NAMES.vmIp, `the VM leased ${ip}, the README says ${NAMES.vmIp}`);
        leased = true;
      }
      console.log(`  [${machine}] ${text}`);
      if (isServer(text)) {
        const p = spawn(ns, world.shell(machine, `exec ${text}`), world.env(vars));
        world.procs.push(p);
        await p.waitForLine(/server listening/, 30_000);
        continue;
      }
      const assign = /^(\w+)=\$\(/.exec(text)?.[1];
      const script = assign ? `${text} || exit $?\nprintf '%s' "$${assign}"` : text;
      const r = await tryRun(ns, world.shell(machine, script), {
        env: world.env(vars),
        timeoutMs: 60_000,
      });
      const shown = (r.stdout + r.stderr).trimEnd();
      if (shown) console.log(shown.replace(/^/gm, "    "));
      assert(r.code === 0, `[${machine}] ${text}: exit ${r.code}\n${r.stderr}\n${world.logs()}`);
      if (assign) {
        assert(r.stdout.trim(), `[${machine}] ${text}: printed no ${assign}`);
        vars[assign] = r.stdout.trim();
      }
    }
    assert(leased, "the walk-through never reached the LAN machine");
    // Closed: the VM is off the LAN again, so the ping above went through VNET.
    const after = await tryRun(world.ns.pc, ["ping", "-n", "-c", "2", "-W", "1", NAMES.vmIp]);
    assert(after.code !== 0, `the VM still answers after close:\n${after.stdout}`);
  };
  try {
    await Promise.race([
      body(),
      new Promise<never>((_, reject) => {
        timer = setTimeout(() => reject(new Error("walk-through timed out after 180 s")), 180_000);
      }),
    ]);
  } finally {
    clearTimeout(timer);
    await world.cleanup();
  }
});

// The parser itself, without namespaces.
Deno.test("README walk-through: parsed into machines and commands", async () => {
  const commands = walkThrough(await Deno.readTextFile(README));
  assert(commands.length >= 8, `only ${commands.length} commands in the walk-through`);
  const machines = new Set(commands.map((c) => c.machine));
  for (const m of ["proxy", "host", "pc"] as const) {
    assert(machines.has(m), `the walk-through runs nothing on ${m}`);
  }
});
