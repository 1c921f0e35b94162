/**
 * VXLAN interop (issue 18): a VNET server tunnels to a Linux `vxlan` device, with no VNET server
 * on the other side, both ways round:
 *   - a VNET Host, and on the LAN side a kernel vxlan device bridged onto the LAN;
 *   - a VNET Proxy, and on the Host a kernel vxlan device bridged with the VM's interface.
 * The VM gets its DHCP lease, answers pings and carries iperf3 both ways. The path carries
 * 1500-byte packets and VXLAN takes 50 of them: TCP is clamped to fit, and a ping with DF that
 * does not fit gets "fragmentation needed" back, so nothing disappears into a black hole.
 *
 *   flock /tmp/vnet-ns.lock deno test -A tests/e2e/vxlan_test.ts
 */
import { LAN, run, spawn, type Topology, tryRun, WAN } from "../../lab/netns.ts";
import { assert, e2e, stepper, withTopology } from "./fixtures/e2e_common.ts";

const VNI = 4242;

/** A kernel vxlan device in `ns` to `remote`, bridged with `port`. */
async function kernelVxlan(ns: string, local: string, remote: string, port: string) {
  await run(ns, [
    "ip",
    "link",
    "add",
    "vx0",
    "type",
    "vxlan",
    "id",
    String(VNI),
    "local",
    local,
    "remote",
    remote,
    "dstport",
    "4789",
    "dev",
    "wan0",
  ]);
  await run(ns, ["ip", "link", "add", "brvx", "type", "bridge"]);
  await run(ns, ["ip", "link", "set", port, "master", "brvx"]);
  await run(ns, ["ip", "link", "set", "vx0", "master", "brvx"]);
  for (const dev of ["vx0", "brvx", port]) await run(ns, ["ip", "link", "set", dev, "up"]);
}

/** `vnet client vxlan` against one server; the handler's id. */
async function createVxlan(
  topo: Topology,
  server: "proxy" | "host",
  args: string[],
): Promise<string> {
  const r = await topo.vnet([
    "client",
    "vxlan",
    "--server",
    topo.addr(server),
    "--secret-file",
    topo.secretFile,
    "--mac",
    topo.vms[0].mac,
    "--vni",
    String(VNI),
    ...args,
  ], { ns: topo.ns[server === "proxy" ? "host" : "proxy"] });
  assert(r.code === 0 && r.stdout.trim() !== "", `vnet client vxlan: ${r.stderr}`);
  return r.stdout.trim();
}

/** iperf3 LAN client → VM and back (-R): Mbit/s each way. */
async function iperf(topo: Topology, vmIp: string): Promise<[number, number]> {
  const server = spawn(topo.vms[0].ns, ["iperf3", "-s", "-B", vmIp, "--forceflush"]);
  topo.procs.push(server);
  await server.waitForLine(/Server listening/, 10_000);
  const rates: number[] = [];
  for (const reverse of [[], ["-R"]]) {
    const r = await tryRun(topo.ns.client, [
      "iperf3",
      "-c",
      vmIp,
      "-t",
      "3",
      "-J",
      "--connect-timeout",
      "5000",
      ...reverse,
    ], { timeoutMs: 30_000 });
    assert(r.code === 0, `iperf3 ${reverse.join("")} failed: ${r.stdout.slice(-400)} ${r.stderr}`);
    rates.push(JSON.parse(r.stdout).end.sum_received.bits_per_second / 1e6);
  }
  return [rates[0], rates[1]];
}

/** DHCP, ping, iperf3 and the MTU, the same on either arrangement. */
async function carries(topo: Topology, t: Deno.TestContext, role: "proxy" | "host") {
  const step = stepper(t, () => topo.serverLogs());
  let vmIp = "";
  await step("the VM gets a DHCP lease from the LAN", async () => {
    vmIp = await topo.dhcp(topo.vms[0], 20_000);
  });
  await step("the LAN client pings the VM", async () => {
    const r = await tryRun(topo.ns.client, ["ping", "-n", "-c", "3", "-i", "0.2", "-W", "2", vmIp]);
    assert(r.code === 0, `ping: ${r.stdout}`);
  });
  await step("iperf3 both ways (TCP clamped to the tunnel's MTU)", async () => {
    const [down, up] = await iperf(topo, vmIp);
    console.log(`    iperf3 LAN->VM ${down.toFixed(0)} Mbit/s, VM->LAN ${up.toFixed(0)} Mbit/s`);
    assert(down > 20 && up > 20, `iperf3 ${down} / ${up} Mbit/s`);
  });
  await step("a DF ping too big for the tunnel gets 'fragmentation needed' back", async () => {
    // From the side VNET encapsulates: the VM's frames at a Host, the LAN's at a Proxy. (The
    // other way, the kernel's bridge drops what does not fit its vxlan port, silently.)
    const [ns, to] = role === "host" ? [topo.vms[0].ns, LAN.client] : [topo.ns.client, vmIp];
    const r = await tryRun(ns, [
      "ping",
      "-n",
      "-c",
      "2",
      "-i",
      "0.3",
      "-W",
      "2",
      "-M",
      "do",
      "-s",
      "1472",
      to,
    ]);
    const said = r.stdout + r.stderr;
    assert(r.code !== 0 && /mtu ?=? ?1450/i.test(said), `ping -M do -s 1472: ${said}`);
  });
  await step("list shows the tunnel", async () => {
    const [h] = await topo.list(role);
    assert(h?.link.remote?.includes(`vni ${VNI}`) && h.state === "up", JSON.stringify(h));
    assert(h.toPeer.frames > 0 && h.fromPeer.frames > 0, `counters: ${JSON.stringify(h)}`);
  });
}

e2e("vxlan: a VNET Host and a kernel vxlan device on the LAN side", async (t) => {
  await withTopology({ vms: 1 }, 120_000, async (topo) => {
    await kernelVxlan(topo.ns.proxy, WAN.proxy, WAN.host, "lan0");
    await topo.startServer("host");
    await createVxlan(topo, "host", ["--dev", topo.vms[0].hostDev, "--remote", WAN.proxy]);
    await carries(topo, t, "host");
  });
});

e2e("vxlan: a VNET Proxy and a kernel vxlan device on the Host", async (t) => {
  await withTopology({ vms: 1 }, 120_000, async (topo) => {
    await kernelVxlan(topo.ns.host, WAN.host, WAN.proxy, topo.vms[0].hostDev);
    await topo.startServer("proxy");
    await createVxlan(topo, "proxy", ["--role", "proxy", "--dev", "lan0", "--remote", WAN.host]);
    await carries(topo, t, "proxy");
  });
});
