/**
 * The VNET demo: a VM on a far-away Host appears on the user's LAN.
 *
 *   bash scripts/run.sh demo      (or, with everything installed: deno task demo)
 *
 * Builds the test topology (lab/netns.ts) in network namespaces, starts a VNET server on the
 * Proxy and on the Host, asks for a handler with `vnet client`, lets the VM get its address from
 * the LAN's DHCP server through VNET, pings it from the LAN client and shows `vnet client list`.
 * Always tears everything down, also on Ctrl-C; exits non-zero if any step fails.
 * Set VNET_DEMO_TLS=1 to run the servers with TLS.
 */
import { canMakeNamespaces, LAN, removeLeftovers, Topology, WAN } from "../lab/netns.ts";

const tls = Deno.env.get("VNET_DEMO_TLS") === "1";
let topo: Topology | undefined;
let stepNo = 0;

function say(text: string): void {
  console.log(text);
}

async function step<T>(title: string, fn: () => Promise<T>): Promise<T> {
  stepNo++;
  say(`\n${stepNo}. ${title}`);
  const t0 = Date.now();
  const result = await fn();
  say(`   ✓ done (${Date.now() - t0} ms)`);
  return result;
}

async function teardown(): Promise<void> {
  if (!topo) return;
  const t = topo;
  topo = undefined;
  say("\nCleaning up: stopping servers and dnsmasq, deleting the namespaces.");
  await t.cleanup();
}

let interrupted = false;
const onSignal = () => {
  if (interrupted) return;
  interrupted = true;
  say("\nInterrupted.");
  teardown().finally(() => Deno.exit(130));
};
Deno.addSignalListener("SIGINT", onSignal);
Deno.addSignalListener("SIGTERM", onSignal);

async function main(): Promise<void> {
  if (!(await canMakeNamespaces())) {
    throw new Error("the demo needs root and `ip netns` (try: sudo bash scripts/run.sh demo)");
  }
  await removeLeftovers();

  say("VNET demo: bridging a remote VM onto the local LAN (USENIX VM '04, section 4.2)");
  say(`
   LAN 10.77.0.0/24                     WAN 10.78.0.0/24
   [client ${LAN.client}]--[br0 + DHCP]--[lan0 Proxy ${WAN.proxy}]====[${WAN.host} Host]--vmif0--[VM]
                                              vnet server  <-- TCP${
    tls ? "+TLS" : ""
  } -->  vnet server`);

  topo = await step("Building the test network (namespaces, bridge, DHCP server)", async () => {
    const t = await Topology.create({ vms: 1 });
    say(`   namespaces: ${Object.values(t.ns).filter(Boolean).join(", ")}, ${t.vms[0].ns}`);
    return t;
  });
  const t = topo;
  const vm = t.vms[0];

  await step(`Starting vnet servers on the Proxy and the Host${tls ? " (TLS)" : ""}`, async () => {
    await t.startServers({ tls, logLevel: "info" });
    say(`   proxy listening on ${t.addr("proxy")}, host listening on ${t.addr("host")}`);
  });

  const id = await step(`Asking for a handler: LAN device lan0 <-> VM ${vm.mac}`, async () => {
    const id = await t.createHandler([vm]);
    say(`   handler id: ${id}`);
    return id;
  });

  const ip = await step("The VM asks for an address by DHCP (through VNET)", async () => {
    const ip = await t.dhcp(vm);
    say(`   the LAN's dnsmasq leased ${ip} to the VM`);
    return ip;
  });

  await step(`The LAN client (${LAN.client}) pings the VM at ${ip}`, async () => {
    const p = await t.ping(t.ns.client, ip, { count: 3 });
    if (!p.ok) throw new Error(`ping failed:\n${p.output}`);
    for (const line of p.output.split("\n").filter((l) => /bytes from|packet loss/.test(l))) {
      say(`   ${line}`);
    }
  });

  await step("What the Proxy's server reports (vnet client list)", async () => {
    const r = await t.vnet([
      "client",
      "list",
      "--server",
      t.addr("proxy"),
      "--secret-file",
      t.secretFile,
      ...t.clientTlsArgs(),
    ]);
    if (r.code !== 0) throw new Error(`vnet client list failed: ${r.stderr.trim()}`);
    for (const line of r.stdout.trimEnd().split("\n")) say(`   ${line}`);
  });

  await step(`Closing handler ${id}`, async () => {
    const r = await t.closeHandler(id);
    if (r.code !== 0) throw new Error(`vnet client close failed: ${r.stderr.trim()}`);
    const p = await t.ping(t.ns.client, ip, { count: 1, deadlineS: 2 });
    say(p.ok ? "   (the VM still answers?!)" : "   the VM is no longer reachable from the LAN");
    if (p.ok) throw new Error("the VM still answers after close");
  });

  say("\nThe VM was on the LAN, as if plugged in next to the Proxy.");
}

let code = 0;
try {
  await main();
} catch (e) {
  code = 1;
  const msg = e instanceof Error ? e.message : String(e);
  if (!interrupted) {
    console.error(`\n✗ demo failed: ${msg}`);
    if (topo && !msg.includes(" server:\n")) console.error(topo.serverLogs(20));
  }
} finally {
  await teardown();
  Deno.removeSignalListener("SIGINT", onSignal);
  Deno.removeSignalListener("SIGTERM", onSignal);
}
if (!interrupted) Deno.exit(code);
