/**
 * Hostile clients against real servers (issue 4, "Keep it running"): garbage on the server
 * port, half-open and trickling connections, a flood of connects, all while a handler forwards
 * and the LAN pings the VM. The handler's link must not notice.
 *
 *   deno test -A tests/e2e/hostile_test.ts
 */
import { HANDSHAKE_TIMEOUT_MS } from "../../src/link/auth.ts";
import { run, spawn, WAN } from "../../lab/netns.ts";
import {
  assert,
  e2e,
  list,
  pingMonitor,
  pingOk,
  pingSummary,
  setVmIp,
  stepper,
  withTopology,
} from "./ops_helpers.ts";

const VM_IP = "10.77.0.52";

const HOSTILE_PY = `
import os, random, socket, sys, time
mode, ip, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
random.seed(int(sys.argv[5]) if len(sys.argv) > 5 else 1)
HELLO = b"\\x00\\x00\\x00\\x28\\x01VNET\\x00\\x01\\x02" + bytes(32)
if mode == "garbage":
    end, n = time.time() + float(sys.argv[4]), 0
    while time.time() < end:
        try:
            s = socket.create_connection((ip, port), timeout=2)
            kind = random.randrange(4)
            if kind == 0: data = os.urandom(random.randrange(1, 3000))
            elif kind == 1: data = HELLO[: random.randrange(len(HELLO))]
            elif kind == 2: data = HELLO + b"\\x00\\x00\\x00\\x21\\x02" + os.urandom(32)
            else: data = b"\\xff\\xff\\xff\\xff" + os.urandom(100)
            s.sendall(data)
            s.close()
            n += 1
        except OSError:
            pass
        time.sleep(0.005)
    print(f"garbage connections {n}", flush=True)
elif mode == "slow":
    count = int(sys.argv[4])
    source = (sys.argv[6], 0) if len(sys.argv) > 6 else None
    conns = []
    for i in range(count):
        s = socket.create_connection((ip, port), timeout=5, source_address=source)
        s.setblocking(False)
        conns.append([s, i % 2 == 1, time.time(), None, 0])
    print("open", flush=True)
    end = time.time() + 20
    while time.time() < end and any(c[3] is None for c in conns):
        for c in conns:
            if c[3] is not None: continue
            s, trickle, t0 = c[0], c[1], c[2]
            try:
                data = s.recv(4096)
                if data == b"":
                    c[3] = time.time() - t0
                    continue
            except BlockingIOError:
                pass
            except OSError:
                c[3] = time.time() - t0
                continue
            if trickle:
                # A valid hello, one byte a second: it would take 44 s to finish.
                try: s.send(HELLO[c[4] : c[4] + 1]); c[4] += 1
                except OSError: c[3] = time.time() - t0
        time.sleep(1)
    for s, trickle, _, closed, _ in conns:
        print(f"{'trickle' if trickle else 'silent'} closed_after {closed if closed is not None else -1:.1f}", flush=True)
elif mode == "flood":
    count, conns, refused = int(sys.argv[4]), [], 0
    for i in range(count):
        try:
            conns.append(socket.create_connection((ip, port), timeout=2))
        except OSError:
            refused += 1
    print(f"flood connected {len(conns)} refused {refused}", flush=True)
    time.sleep(2)
    for s in conns: s.close()
    print("flood done", flush=True)
`;

function hostile(ns: string, mode: string, ip: string, arg: string, seed = 1, source?: string) {
  const from = source ? [source] : [];
  return spawn(ns, ["python3", "-c", HOSTILE_PY, mode, ip, "7000", arg, String(seed), ...from]);
}

/**
 * A second address of the Proxy's namespace, for the slow connections: from the garbage's own
 * address the server rightly drops the oldest of them once 16 of that address wait in the
 * handshake (--max-handshakes-per-address), which a loaded machine reached with garbage alone.
 */
const SLOW_FROM = "10.78.0.99";

e2e("hostile: garbage, half-open and trickling connections, a connect flood", async (t) => {
  await withTopology({ vms: 1 }, 120_000, async (topo) => {
    const step = stepper(t, () => topo.serverLogs());
    const vm = topo.vms[0];
    await topo.startServers({ logLevel: "info" });
    await setVmIp(vm.ns, VM_IP);
    const id = await topo.createHandler([vm]);
    await pingOk(topo, VM_IP);
    const seed = Math.floor(Math.random() * 1e9);
    console.log(`    garbage seed ${seed}`);

    const linkUnchanged = async () => {
      const p = (await list(topo, "proxy")).find((h) => h.id === id);
      assert(p?.state === "up", `handler state ${p?.state}`);
      assert(p.reconnects === 0, `the peer link was re-made ${p.reconnects} times`);
    };

    await step("garbage and half-open connections to both servers; ping carries on", async () => {
      const ping = pingMonitor(topo.ns.client, VM_IP, 0.1, 13);
      topo.procs.push(ping);
      await run(topo.ns.proxy, ["ip", "addr", "add", `${SLOW_FROM}/${WAN.prefix}`, "dev", "wan0"]);
      const slow = hostile(topo.ns.proxy, "slow", WAN.host, "10", 1, SLOW_FROM);
      topo.procs.push(slow);
      await slow.waitForLine(/^open/, 10_000);
      const t0 = performance.now();
      const garbage = [
        hostile(topo.ns.proxy, "garbage", WAN.host, "8", seed),
        hostile(topo.ns.proxy, "garbage", WAN.proxy, "8", seed + 1),
      ];
      topo.procs.push(...garbage);
      for (const g of garbage) assert(await g.exited === 0, `garbage client:\n${g.output()}`);
      const sent = garbage.map((g) => /garbage connections (\d+)/.exec(g.output())?.[1]);
      await slow.exited;
      await ping.exited;
      const p = pingSummary(ping);
      console.log(
        `    garbage: ${sent.join(" + ")} connections in 8 s; ping ${p.replies} replies, ` +
          `${p.lost} lost, longest silence ${p.maxGapMs} ms`,
      );
      assert(p.replies >= 100 && p.lost <= 5, `ping suffered: ${JSON.stringify(p)}`);

      const times = slow.lines.map((l) => /(silent|trickle) closed_after (-?[\d.]+)/.exec(l))
        .filter((m) => m !== null).map((m) => [m[1], Number(m[2])] as const);
      assert(times.length === 10, `slow client output:\n${slow.output()}`);
      const limit = HANDSHAKE_TIMEOUT_MS / 1000;
      for (const [kind, s] of times) {
        assert(
          s >= 0,
          `a ${kind} connection was never closed (${Math.round(performance.now() - t0)} ms)`,
        );
        assert(s <= limit + 3, `a ${kind} connection was closed only after ${s} s`);
        const displaced = topo.servers.host!.lines.filter((l) => /dropping the oldest/.test(l));
        assert(
          s >= limit - 2,
          `a ${kind} connection was closed early, after ${s} s; the host displaced:\n` +
            displaced.join("\n"),
        );
      }
      console.log(`    half-open/trickle closed after ${times.map(([, s]) => s).join(", ")} s`);
      const host = topo.servers.host!.lines;
      assert(host.some((l) => /connection refused.*handshake timed out/.test(l)), "no timeout log");
      assert(host.some((l) => /connection refused.*reason=/.test(l)), "no refusal reasons logged");
      await linkUnchanged();
    });

    await step("500 quick connects to the host server; ping carries on", async () => {
      const ping = pingMonitor(topo.ns.client, VM_IP, 0.1, 6);
      topo.procs.push(ping);
      const flood = hostile(topo.ns.proxy, "flood", WAN.host, "500");
      topo.procs.push(flood);
      assert(await flood.exited === 0, `flood client:\n${flood.output()}`);
      await ping.exited;
      const p = pingSummary(ping);
      console.log(
        `    flood: ${flood.lines[0]?.slice(5)}; ping ${p.replies} replies, ${p.lost} lost`,
      );
      assert(p.replies >= 45 && p.lost <= 3, `ping suffered: ${JSON.stringify(p)}`);
      const host = topo.servers.host!.lines;
      assert(host.some((l) => /too many connections in handshake/.test(l)), "no flood warning");
      await linkUnchanged();
      await pingOk(topo, VM_IP);
    });
  });
});
