/**
 * VNET over a WAN like a real one (issue 18): 20 ms round trip and 1% loss each way between the
 * Proxy and the Host (lab/delay_line.ts). A 16 MiB transfer LAN → VM arrives intact, and the
 * ping under a bulk load is logged with the drops the AQM made, the queue the UDP path's
 * datagrams wait in and the pace it keeps (bench/wan.ts measures it; a test does not assert
 * timing). `list` reports the AQM's drops per handler, and each end's figure of its path's queue.
 *
 *   flock /tmp/vnet-ns.lock deno test -A tests/e2e/wan_test.ts
 */
import { LAN, run, spawn, type Topology, tryRun, waitFor } from "../../lab/netns.ts";
import { installWan } from "../../lab/delay_line.ts";
import { percentile, pingTimes } from "../../lab/ping.ts";
import { assert, e2e, stepper, withTopology } from "./fixtures/e2e_common.ts";
import { streamReceiver, streamSender } from "./ops_helpers.ts";

const VM_IP = "10.77.0.60";
const TRANSFER_BYTES = 16 * 1024 * 1024;

/** `count` pings every 100 ms from the LAN client to the VM: "p50/p99 ms (received/sent)". */
async function pings(topo: Topology, count: number): Promise<string> {
  const { rtts } = await pingTimes(topo.ns.client, VM_IP, { count, intervalS: 0.1, waitS: 2 });
  if (rtts.length === 0) return `no replies (${count} sent)`;
  return `${percentile(rtts, 0.5)}/${percentile(rtts, 0.99)} ms (${rtts.length}/${count})`;
}

/** The proxy's handler as `list --json` gives it, drop reasons included. */
async function proxyDrops(topo: Topology): Promise<Record<string, number>> {
  const [h] = await topo.list("proxy") as unknown as { dropReasons: Record<string, number> }[];
  return h.dropReasons;
}

/** A server's UDP path as `list --json` gives it: the queue its datagrams wait in, its pace. */
async function udpPath(
  topo: Topology,
  role: "proxy" | "host",
): Promise<{ queueDelayMs: number | null; pacedMbps: number | null } | null> {
  const [h] = await topo.list(role) as unknown as {
    link: { udp: { queueDelayMs: number | null; pacedMbps: number | null } | null };
  }[];
  return h.link.udp;
}

for (const tls of [false, true]) {
  e2e(`wan: 20 ms RTT, 1% loss, tls=${tls}: 16 MiB intact, ping under load`, async (t) => {
    await withTopology({ vms: 1 }, 240_000, async (topo) => {
      const step = stepper(t, () => topo.serverLogs());
      await run(topo.vms[0].ns, ["ip", "addr", "add", `${VM_IP}/${LAN.prefix}`, "dev", "eth0"]);
      const wan = await installWan(topo, { rttMs: 20, lossPercent: 1 });
      await topo.startServers({ tls });
      await topo.createHandler();
      await waitFor(
        "the VM to answer pings from the LAN",
        async () => {
          const r = await tryRun(topo.ns.client, ["ping", "-n", "-c", "1", "-W", "1", VM_IP]);
          return r.code === 0 ? true : undefined;
        },
        30_000,
        100,
      );

      await step("list reports the AQM's drops per handler", async () => {
        const drops = await proxyDrops(topo);
        assert(typeof drops.aqm === "number", `dropReasons.aqm in list: ${JSON.stringify(drops)}`);
      });

      await step("a 16 MiB transfer LAN -> VM arrives intact", async () => {
        const receiver = await streamReceiver(topo.vms[0].ns, VM_IP, 5001);
        topo.procs.push(receiver);
        const sender = streamSender(topo.ns.client, VM_IP, 5001, TRANSFER_BYTES, 1e12);
        topo.procs.push(sender);
        const code = await sender.exited;
        const sent = sender.lines.map((l) => l.slice(5)).find((l) => l.startsWith("SENT"));
        const got = sender.lines.map((l) => l.slice(5)).find((l) => l.startsWith("RECEIVED"));
        assert(code === 0 && sent && got, `transfer failed (exit ${code}):\n${sender.output()}`);
        assert(
          sent.slice(5) === got.slice(9) && sent.startsWith(`SENT ${TRANSFER_BYTES} `),
          `the VM received something else: ${sent} / ${got}`,
        );
        console.log(`    16 MiB intact: ${got}`);
      });

      await step("ping under a 4-stream load (logged, not asserted)", async () => {
        const idle = await pings(topo, 30);
        const server = spawn(topo.vms[0].ns, ["iperf3", "-s", "-B", VM_IP, "--forceflush"]);
        topo.procs.push(server);
        await server.waitForLine(/Server listening/, 10_000);
        const before = await proxyDrops(topo);
        const load = tryRun(topo.ns.client, [
          "iperf3",
          "-c",
          VM_IP,
          "-P",
          "4",
          "-t",
          "8",
          "-J",
          "--connect-timeout",
          "5000",
        ], { timeoutMs: 40_000 });
        // The pings start once the load has (iperf3's first connection is up).
        await waitFor(
          "iperf3's streams to start",
          async () => {
            const r = await tryRun(topo.ns.client, ["ss", "-tn", "state", "established"]);
            return r.stdout.includes(`${VM_IP}:5201`) ? true : undefined;
          },
          10_000,
          100,
        );
        const loaded = await pings(topo, 50);
        const r = await load;
        let mbps = "?";
        try {
          mbps = (JSON.parse(r.stdout).end.sum_received.bits_per_second / 1e6).toFixed(0);
        } catch { /* logged as ? */ }
        const after = await proxyDrops(topo);
        const aqm = after.aqm - before.aqm;
        const full = after.link - before.link;
        const path = await udpPath(topo, "proxy");
        console.log(
          `    ping p50/p99 idle ${idle}, under load ${loaded}; ${mbps} Mbit/s; ` +
            `proxy drops: aqm ${aqm}, full ${full}; path queue ${path?.queueDelayMs} ms, ` +
            `paced at ${path?.pacedMbps ?? "-"} Mbit/s`,
        );
      });

      await step("each end knows how long its datagrams wait on the path", async () => {
        // From the send times in the keepalives, reported back by the other end (path_queue.ts):
        // what the pace follows.
        for (const role of ["proxy", "host"] as const) {
          const path = await udpPath(topo, role);
          assert(path !== null, `${role}: no UDP path in list`);
          assert(
            typeof path.queueDelayMs === "number" && path.queueDelayMs >= 0,
            `${role}: the path's queue delay is ${path.queueDelayMs}`,
          );
        }
      });
      const counters = await wan.stop();
      console.log(`    delay line: ${JSON.stringify(counters)}`);
    });
  });
}
