/**
 * Two Hosts each behind their own NAT get a direct path (issue 18): the Proxy, which hears both
 * by UDP, tells each the other's public UDP endpoint and a pair secret, and both punch at once.
 *
 *        WAN switch 10.78.0.0/24 ── proxy 10.78.0.1 (LAN: the VMs' switch, the client)
 *          │                    │
 *   r1 wan0 10.78.0.201    r2 wan0 10.78.0.202      masquerade; nothing comes in but replies;
 *   r1 br0 192.168.91.1    r2 br0 192.168.92.1      TCP, UDP and ping go out
 *          │                    │
 *   h1 192.168.91.2:7000   h2 192.168.92.2:7000     each dials the Proxy (--via host)
 *        │     │              │     │
 *       VM1   VM3            VM2   VM4
 *
 * Neither Host can dial the other (its address is private), so a direct path here can only be
 * a punched one. The test shows VM1↔VM2 frames leave the Proxy for it; that VM3↔VM2 and VM3↔VM4
 * (other handlers of the same two Hosts) go direct too, over the same punched path; that
 * VM1↔VM2 comes back through the Proxy within 5 s when UDP between the routers is dropped, and
 * goes direct again once it is not.
 *
 *   flock /tmp/vnet-ns.lock deno test -A --no-check=remote tests/e2e/direct_nat_test.ts
 */
import { type Proc, run, tryRun, vnetCommand, waitFor, WAN } from "../../lab/netns.ts";
import {
  type PathInfo,
  type Sites,
  type SiteVm,
  type SwitchListed,
  withSites,
} from "../../lab/sites.ts";
import { masqueradingRouter, nft } from "./fixtures/firewall.ts";
import { assert, e2e, pingMonitor } from "./ops_helpers.ts";

const routerWan = (i: number) => `10.78.0.${200 + i}`;
const routerLan = (i: number) => `192.168.${90 + i}.1`;
const hostIp = (i: number) => `192.168.${90 + i}.2`;
const BLOCK_TABLE = "vnet_punch_block";
const PROXY = `${WAN.proxy}:7000`;

/**
 * A CA and a certificate for each server, made with `vnet cert`; the servers' TLS flags by name.
 * The Hosts' certificates name their private addresses: the Proxy checks no dialler's name.
 */
async function makeCerts(sites: Sites): Promise<Map<string, string[]>> {
  const dir = `${sites.dir}/tls`;
  const vnet = async (args: string[]) => {
    const r = await tryRun(null, [...vnetCommand(), ...args]);
    if (r.code !== 0) throw new Error(`vnet ${args.join(" ")} failed: ${r.stderr}`);
  };
  await vnet(["cert", "ca", "--out", dir]);
  const flags = new Map<string, string[]>();
  const names: [string, string][] = [
    ["proxy", WAN.proxy],
    ...sites.hosts.map((h) => [h.label, hostIp(h.index)] as [string, string]),
  ];
  for (const [name, ip] of names) {
    await vnet([
      "cert",
      "issue",
      "--ca",
      dir,
      "--name",
      name,
      "--san",
      ip,
      "--out",
      `${dir}/${name}`,
    ]);
    flags.set(name, [
      "--tls-cert",
      `${dir}/${name}/cert.pem`,
      "--tls-key",
      `${dir}/${name}/key.pem`,
      "--tls-ca",
      `${dir}/ca.pem`,
    ]);
  }
  clientTls = ["--tls-ca", `${dir}/ca.pem`];
  return flags;
}

const str = (v: unknown) => JSON.stringify(v);

/** The `--tls-ca` flag of every client, when the servers run TLS. */
let clientTls: string[] = [];

/** `vnet client list --json` of a server, asked from inside namespace `ns`. */
async function listIn(sites: Sites, ns: string, addr: string): Promise<SwitchListed[]> {
  const r = await sites.vnet(
    ["client", "list", "--server", addr, "--secret-file", sites.secretFile, "--json", ...clientTls],
    ns,
  );
  if (r.code !== 0) throw new Error(`vnet client list ${addr} failed: ${r.stderr.trim()}`);
  return JSON.parse(r.stdout) as SwitchListed[];
}

function of(list: SwitchListed[], vm: SiteVm): SwitchListed | undefined {
  return list.find((h) => h.macs.map((m) => m.toLowerCase()).includes(vm.mac));
}

/** The path `from`'s Host uses towards `to`'s MAC. */
async function pathTo(sites: Sites, from: SiteVm, to: SiteVm): Promise<PathInfo | undefined> {
  const h = of(await listIn(sites, from.host.ns, from.host.addr), from);
  return h?.paths?.find((p) => p.mac.toLowerCase() === to.mac);
}

/** What the Proxy's handlers of both VMs carried so far: frames from their Hosts, switched. */
async function proxyFrames(sites: Sites, vms: SiteVm[]): Promise<number> {
  const list = await listIn(sites, sites.ns.proxy, PROXY);
  return vms.reduce((n, vm) => {
    const h = of(list, vm);
    assert(h, `the Proxy does not list ${vm.label}'s handler`);
    return n + h.fromPeer.frames + (h.switched?.frames ?? 0);
  }, 0);
}

/** The round-trip times of a `ping -D` run's replies between two wall-clock times, ms. */
function rtts(ping: Proc, fromMs: number, toMs: number): number[] {
  const out: number[] = [];
  for (const line of ping.lines) {
    const m = /^\w+\| \[(\d+\.\d+)\] \d+ bytes from .* time=([\d.]+) ms/.exec(line);
    const at = m ? Number(m[1]) * 1000 : NaN;
    if (m && at >= fromMs && at <= toMs) out.push(Number(m[2]));
  }
  return out;
}

/** The longest time without a reply between two wall-clock times, ms. */
function longestSilence(ping: Proc, fromMs: number, toMs: number): number {
  const times = [fromMs];
  for (const line of ping.lines) {
    const m = /^\w+\| \[(\d+\.\d+)\] \d+ bytes from /.exec(line);
    const at = m ? Number(m[1]) * 1000 : NaN;
    if (at > fromMs && at < toMs) times.push(at);
  }
  times.push(toMs);
  let longest = 0;
  for (let i = 1; i < times.length; i++) longest = Math.max(longest, times[i] - times[i - 1]);
  return Math.round(longest);
}

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)] ?? NaN;

for (const tls of [false, true]) {
  e2e(`direct (tls=${tls}): two Hosts each behind their own NAT get a direct path`, async (t) => {
    await withSites({ hosts: 2, vmsPerHost: 2, dhcp: false }, 170_000, async (sites) => {
      const routers: string[] = [];
      try {
        // Each Host behind a router of its own (fixtures/firewall.ts's, egress TCP and UDP).
        for (const h of sites.hosts) {
          const router = `${sites.name}-r${h.index}`;
          await run(null, ["ip", "netns", "add", router]);
          routers.push(router);
          await run(router, ["ip", "link", "set", "lo", "up"]);
          await masqueradingRouter({
            router,
            wan: sites.ns.wan,
            wanPort: `wr${h.index}`,
            wanIp: routerWan(h.index),
            lanIp: routerLan(h.index),
            prefix: 24,
            host: h.ns,
            hostIp: hostIp(h.index),
            egress: [
              `iifname "br0" oifname "wan0" meta l4proto { tcp, udp } accept`,
              `iifname "br0" oifname "wan0" icmp type echo-request accept`,
            ],
          });
          h.wanIp = hostIp(h.index);
          h.addr = `${hostIp(h.index)}:7000`;
        }
        clientTls = [];
        const certs = tls ? await makeCerts(sites) : new Map<string, string[]>();
        await sites.startServerAt("proxy", sites.ns.proxy, PROXY, certs.get("proxy"));
        for (const h of sites.hosts) {
          await sites.startServerAt(h.label, h.ns, h.addr, certs.get(h.label));
        }
        const [vm1, vm2, vm3, vm4] = ["h1v1", "h2v1", "h1v2", "h2v2"].map((l) =>
          sites.vmByLabel(l)
        );
        for (const vm of sites.vms) {
          const r = await sites.vnet(
            [...sites.handlerArgs(vm, { host: vm.host.addr }), "--via", "host", ...clientTls],
            vm.host.ns,
          );
          assert(r.code === 0 && r.stdout.trim(), `create for ${vm.label}: ${r.stderr}`);
          vm.handler = r.stdout.trim();
        }
        const ping = pingMonitor(vm1.ns, vm2.ip, 0.1, 150);
        sites.procs.push(ping);

        const ok1 = await t.step("the VMs ping each other", async () => {
          await ping.waitForLine(/bytes from/, 20_000);
          const back = await tryRun(vm2.ns, ["ping", "-c", "2", "-w", "5", vm1.ip]);
          assert(back.code === 0, `VM2 cannot ping VM1:\n${back.stdout}`);
        });

        let punchedAt = 0;
        const ok2 = ok1 &&
          await t.step("the direct UDP path comes up, through both NATs", async () => {
            const started = Date.now();
            const [p12, p21] = await waitFor(
              "both Hosts to go direct by UDP",
              async () => {
                const a = await pathTo(sites, vm1, vm2), b = await pathTo(sites, vm2, vm1);
                return a?.via === "direct" && a.transport === "udp" && b?.via === "direct" &&
                    b.transport === "udp"
                  ? [a, b]
                  : undefined;
              },
              40_000,
              250,
            );
            punchedAt = Date.now();
            console.log(
              `    direct UDP path up ${punchedAt - started} ms after the first reply; ` +
                `h1 sends to ${p12.udp?.peer}, h2 to ${p21.udp?.peer}`,
            );
            // Each Host reaches the other at its router's public address: the NAT's mapping.
            assert(p12.udp?.peer.startsWith(`${routerWan(2)}:`), `h1's path: ${str(p12)}`);
            assert(p21.udp?.peer.startsWith(`${routerWan(1)}:`), `h2's path: ${str(p21)}`);
            assert(p12.udp?.sealed === tls && p21.udp?.sealed === tls, `sealed: ${str(p12.udp)}`);
          });

        const ok3 = ok2 &&
          await t.step("VM↔VM frames go direct, not through the Proxy", async () => {
            const proxy0 = await proxyFrames(sites, [vm1, vm2]);
            const a0 = await pathTo(sites, vm1, vm2), b0 = await pathTo(sites, vm2, vm1);
            const from = Date.now();
            // 30 more echo requests at 0.1 s: 3 s.
            await waitFor(
              "30 more replies",
              () => {
                const n = rtts(ping, from, Date.now()).length;
                return Promise.resolve(n >= 30 ? n : undefined);
              },
              20_000,
              100,
            );
            const proxy1 = await proxyFrames(sites, [vm1, vm2]);
            const a1 = await pathTo(sites, vm1, vm2), b1 = await pathTo(sites, vm2, vm1);
            const direct1 = (a1?.viaDirect?.frames ?? 0) - (a0?.viaDirect?.frames ?? 0);
            const direct2 = (b1?.viaDirect?.frames ?? 0) - (b0?.viaDirect?.frames ?? 0);
            const out1 = (a1?.udp?.datagramsOut ?? 0) - (a0?.udp?.datagramsOut ?? 0);
            const in2 = (b1?.udp?.datagramsIn ?? 0) - (b0?.udp?.datagramsIn ?? 0);
            const r = rtts(ping, from, Date.now());
            console.log(
              `    30 pings: Proxy +${proxy1 - proxy0} frames; h1 direct +${direct1} frames ` +
                `(UDP +${out1} out), h2 direct +${direct2} frames (UDP +${in2} in); ` +
                `RTT direct median ${median(r)} ms`,
            );
            assert(proxy1 - proxy0 <= 6, `the Proxy carried ${proxy1 - proxy0} frames meanwhile`);
            assert(direct1 >= 30 && direct2 >= 30, `direct frames: h1 +${direct1}, h2 +${direct2}`);
            assert(out1 >= 30 && in2 >= 30, `direct UDP datagrams: h1 +${out1} out, h2 +${in2} in`);
          });

        const ok3b = ok3 &&
          await t.step("other VMs of the two Hosts go direct too, over one path", async () => {
            const pings = [
              pingMonitor(vm3.ns, vm2.ip, 0.1, 60),
              pingMonitor(vm3.ns, vm4.ip, 0.1, 60),
            ];
            sites.procs.push(...pings);
            const started = Date.now();
            const pairs: [SiteVm, SiteVm][] = [[vm3, vm2], [vm2, vm3], [vm3, vm4], [vm4, vm3]];
            const allDirect = async () => {
              const paths = await Promise.all(pairs.map(([a, b]) => pathTo(sites, a, b)));
              return paths.every((p) => p?.via === "direct" && p.transport === "udp")
                ? paths
                : undefined;
            };
            await waitFor("VM3↔VM2 and VM3↔VM4 to go direct by UDP", allDirect, 40_000, 250);
            const upAfter = Date.now() - started;
            // One punched path per Host: in one listing, every direct UDP path of a Host counts
            // the same datagrams (two paths to one endpoint would not).
            for (const h of sites.hosts) {
              const list = await listIn(sites, h.ns, h.addr);
              const udp = list.flatMap((x) => x.paths ?? []).filter((p) => p.udp);
              assert(udp.length >= 3, `${h.label}: ${udp.length} direct UDP paths: ${str(udp)}`);
              const counts = new Set(udp.map((p) => `${p.udp!.peer} ${p.udp!.datagramsOut}`));
              assert(counts.size === 1, `${h.label} has ${counts.size} punched paths: ${str(udp)}`);
            }
            const vms = [vm2, vm3, vm4];
            const proxy0 = await proxyFrames(sites, vms);
            const before = await Promise.all(pairs.map(([a, b]) => pathTo(sites, a, b)));
            const from = Date.now();
            await waitFor(
              "20 more replies each",
              () => {
                const n = Math.min(...pings.map((p) => rtts(p, from, Date.now()).length));
                return Promise.resolve(n >= 20 ? n : undefined);
              },
              20_000,
              100,
            );
            const proxy1 = await proxyFrames(sites, vms);
            const after = await Promise.all(pairs.map(([a, b]) => pathTo(sites, a, b)));
            const direct = after.map((p, i) =>
              (p?.viaDirect?.frames ?? 0) - (before[i]?.viaDirect?.frames ?? 0)
            );
            console.log(
              `    VM3↔VM2, VM3↔VM4 direct by UDP ${upAfter} ms after their first ping; 20 pings ` +
                `each: Proxy +${proxy1 - proxy0} frames; direct +${direct.join(", +")} frames ` +
                `(3→2, 2→3, 3→4, 4→3)`,
            );
            assert(proxy1 - proxy0 <= 6, `the Proxy carried ${proxy1 - proxy0} frames meanwhile`);
            assert(direct.every((n) => n >= 20), `direct frames: ${direct.join(", ")}`);
            for (const p of pings) await p.kill();
          });

        const [r1] = routers;
        const ok4 = ok3b &&
          await t.step("UDP dropped between the NATs: via the Proxy in 5 s", async () => {
            const proxy0 = await proxyFrames(sites, [vm1, vm2]);
            await nft(
              r1,
              `table inet ${BLOCK_TABLE} {
  chain forward {
    type filter hook forward priority filter - 10; policy accept;
    ip saddr ${routerWan(2)} meta l4proto udp drop
    ip daddr ${routerWan(2)} meta l4proto udp drop
  }
}
`,
            );
            const blockedAt = Date.now();
            const fellBack = await waitFor(
              "VM1→VM2 to leave the direct path",
              async () => {
                const p = await pathTo(sites, vm1, vm2);
                return p?.via === "proxy" ? Date.now() - blockedAt : undefined;
              },
              20_000,
              100,
            );
            // Replies resume through the Proxy.
            await waitFor(
              "20 replies through the Proxy",
              () => {
                const n = rtts(ping, blockedAt + fellBack, Date.now()).length;
                return Promise.resolve(n >= 20 ? n : undefined);
              },
              20_000,
              100,
            );
            const now = Date.now();
            const silence = longestSilence(ping, blockedAt - 1000, now);
            const proxy1 = await proxyFrames(sites, [vm1, vm2]);
            const viaProxy = rtts(ping, blockedAt + fellBack + 1000, now);
            console.log(
              `    UDP blocked: h1 off the direct path after ${fellBack} ms; longest ping ` +
                `silence ${silence} ms; Proxy +${proxy1 - proxy0} frames; RTT via the Proxy ` +
                `median ${median(viaProxy)} ms`,
            );
            assert(silence < 5000, `the VMs could not talk for ${silence} ms`);
            assert(proxy1 - proxy0 >= 20, `the Proxy carried only ${proxy1 - proxy0} frames`);
          });

        if (ok4) {
          await t.step("unblocked: direct again", async () => {
            await run(r1, ["nft", "delete", "table", "inet", BLOCK_TABLE]);
            const unblockedAt = Date.now();
            const back = await waitFor(
              "VM1↔VM2 to go direct by UDP again",
              async () => {
                const a = await pathTo(sites, vm1, vm2), b = await pathTo(sites, vm2, vm1);
                return a?.via === "direct" && a.transport === "udp" && b?.via === "direct" &&
                    b.transport === "udp"
                  ? Date.now() - unblockedAt
                  : undefined;
              },
              60_000,
              250,
            );
            const proxy0 = await proxyFrames(sites, [vm1, vm2]);
            const from = Date.now();
            await waitFor(
              "20 more replies",
              () => {
                const n = rtts(ping, from, Date.now()).length;
                return Promise.resolve(n >= 20 ? n : undefined);
              },
              20_000,
              100,
            );
            const proxy1 = await proxyFrames(sites, [vm1, vm2]);
            console.log(
              `    unblocked: direct again after ${back} ms; 20 pings then: Proxy ` +
                `+${proxy1 - proxy0} frames`,
            );
            assert(proxy1 - proxy0 <= 6, `the Proxy still carried ${proxy1 - proxy0} frames`);
          });
        }
        await ping.kill();
        assert(punchedAt > 0, "no direct path came up");
      } finally {
        for (const r of routers) await tryRun(null, ["ip", "netns", "del", r]);
      }
    });
  });
}
