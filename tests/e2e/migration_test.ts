/**
 * Live migration (issue 4, "Keep it running"): the VM's wire moves from one Host to another
 * while a TCP stream and a ping run from the LAN; `vnet client migrate` re-homes the handler's
 * Host end. The stream must carry on without a reset and with every byte accounted for.
 *
 *   deno test -A tests/e2e/migration_test.ts
 */
import { WAN } from "../../lab/netns.ts";
import {
  assert,
  byMac,
  e2e,
  flowing,
  list,
  pingMonitor,
  pingOk,
  pingSummary,
  setVmIp,
  stepper,
  streamReceiver,
  streamSender,
  withTopology,
} from "./ops_helpers.ts";

const VM_IP = "10.77.0.50";
const STREAM_PORT = 5001;
/** 3 MB at 300 kB/s: a stream of about 10 s, the migration in its middle. */
const STREAM_BYTES = 3_000_000;
const STREAM_RATE = 300_000;

e2e("migration: a VM moves to another host; its TCP stream survives", async (t) => {
  await withTopology({ vms: 1, secondHost: true }, 120_000, async (topo) => {
    const step = stepper(t, () => topo.serverLogs());
    /** `vnet client migrate ID --host TO --host-dev DEV`, sent to the Proxy's server by default. */
    const migrate = (
      id: string,
      to: string,
      dev: string,
      o: { server?: string; extra?: string[]; timeoutMs?: number } = {},
    ) =>
      topo.vnet([
        "client",
        "migrate",
        "--server",
        o.server ?? topo.addr("proxy"),
        "--secret-file",
        topo.secretFile,
        id,
        "--host",
        to,
        "--host-dev",
        dev,
        ...(o.extra ?? []),
      ], { timeoutMs: o.timeoutMs });
    const vm = topo.vms[0];
    let id = "";
    await topo.startServers();
    await setVmIp(vm.ns, VM_IP);

    await step("a handler bridges the VM on the first host", async () => {
      id = await topo.createHandler([vm]);
      await pingOk(topo, VM_IP);
    });

    await step("migrate during a TCP stream and a ping: no reset, no byte lost", async () => {
      const receiver = await streamReceiver(vm.ns, VM_IP, STREAM_PORT);
      topo.procs.push(receiver);
      const sender = streamSender(topo.ns.client, VM_IP, STREAM_PORT, STREAM_BYTES, STREAM_RATE);
      topo.procs.push(sender);
      const ping = pingMonitor(topo.ns.client, VM_IP, 0.02, 9);
      topo.procs.push(ping);
      await flowing([receiver], ping);

      await topo.moveVm(vm, "host2");
      const r = await migrate(id, topo.addr("host2"), vm.hostDev);
      assert(r.code === 0, `migrate exit ${r.code}: ${r.stderr}`);
      assert(r.stdout.trim() === id, `migrate prints the id, got '${r.stdout.trim()}'`);
      const gap = /gap (\d+) ms/.exec(r.stderr);
      assert(gap, `migrate reports the gap: ${r.stderr}`);

      const sent = await sender.exited;
      const received = await receiver.exited;
      await ping.exited;
      const out = sender.lines.join("\n");
      assert(sent === 0, `the sender failed (reset?):\n${out}`);
      assert(received === 0, `the receiver failed:\n${receiver.output()}`);
      const s = /SENT (\d+) (\w+)/.exec(out);
      const rx = /RECEIVED (\d+) (\w+)/.exec(out);
      assert(s && rx, `no byte counts in the sender's output:\n${out}`);
      assert(Number(s[1]) === STREAM_BYTES, `sent ${s[1]} of ${STREAM_BYTES} bytes`);
      assert(
        s[1] === rx[1] && s[2] === rx[2],
        `sender ${s[1]} bytes sha ${s[2]} != receiver ${rx[1]} bytes sha ${rx[2]}`,
      );
      const p = pingSummary(ping);
      console.log(
        `    migration: server gap ${gap[1]} ms, longest ping silence ${p.maxGapMs} ms ` +
          `(${p.replies} replies, ${p.lost} lost at 20 ms intervals), stream ${s[1]} bytes intact`,
      );
      assert(p.replies > 100, `too few ping replies: ${p.replies}`);
      assert(p.maxGapMs < 3000, `the ping stopped for ${p.maxGapMs} ms`);
    });

    await step("list: same id on the proxy, its Host end now on host2", async () => {
      const proxy = (await list(topo, "proxy")).find((h) => h.id === id);
      assert(proxy, `the proxy lost handler ${id}`);
      assert(proxy.state === "up", `proxy state ${proxy.state}`);
      assert(proxy.peer === topo.addr("host2"), `proxy peer ${proxy.peer}`);
      assert(proxy.link.remote === topo.addr("host2"), `link remote ${proxy.link.remote}`);
      const h2 = byMac(await list(topo, "host2"), vm.mac);
      assert(h2 && h2.id === id && h2.state === "up", `host2: ${JSON.stringify(h2)}`);
      assert(!byMac(await list(topo, "host"), vm.mac), "the old host still has the handler");
    });

    await step("and back again: ping works on the first host", async () => {
      await topo.moveVm(vm, "host");
      const r = await migrate(id, topo.addr("host"), vm.hostDev);
      assert(r.code === 0, `migrate back exit ${r.code}: ${r.stderr}`);
      await pingOk(topo, VM_IP);
      assert(!byMac(await list(topo, "host2"), vm.mac), "host2 still has the handler");
    });

    await step("migrate of an unknown id fails clearly", async () => {
      const r = await migrate("0badc0de", topo.addr("host2"), "vmif0");
      assert(r.code !== 0, `migrate of an unknown id succeeded: ${r.stdout}`);
      assert(/no handler '0badc0de'/.test(r.stderr), `unclear error: ${r.stderr}`);
      assert(r.stderr.trim().split("\n").length === 1, `one line expected:\n${r.stderr}`);
    });

    await step("migrate sent to the host server says to send it to the Proxy's", async () => {
      const r = await migrate(id, topo.addr("host2"), "vmif0", { server: `${WAN.host}:7000` });
      assert(r.code !== 0, `migrate via the host succeeded: ${r.stdout}`);
      assert(/Proxy's server/.test(r.stderr), `unclear error: ${r.stderr}`);
      await pingOk(topo, VM_IP);
    });

    await step("a failed migrate is reported and the handler keeps its old host", async () => {
      const r = await migrate(id, "10.78.0.9:7000", "vmif0", {
        extra: ["--timeout", "15"],
        timeoutMs: 30_000,
      });
      assert(r.code !== 0, `migrate to nowhere succeeded: ${r.stdout}`);
      assert(/migrating .* failed.*stays on its old host/.test(r.stderr), `unclear: ${r.stderr}`);
      const proxy = (await list(topo, "proxy")).find((h) => h.id === id);
      assert(proxy, "the proxy dropped the id");
      // The VM did not move: its old Host end must carry it still.
      assert(proxy.state === "up", `after a failed migrate the handler is ${proxy.state}`);
      await pingOk(topo, VM_IP);
    });
  });
});
