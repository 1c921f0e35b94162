/**
 * Issue 9, "Hold under attack": real servers in namespaces, an attacker on the WAN (the host2
 * namespace, with four addresses), bounded loops. Throughout, the LAN pings the VM through the
 * bridge; after each attack a legitimate client must get in, and the server's fds and memory
 * must come back.
 *
 *   deno test -A tests/e2e/attack_test.ts
 */
import { REPO_ROOT, run, spawn, waitFor, WAN } from "../../lab/netns.ts";
import {
  assert,
  e2e,
  list,
  pingMonitor,
  pingOk,
  pingSummary,
  rssKiB,
  setVmIp,
  stepper,
  withTopology,
} from "./ops_helpers.ts";

const VM_IP = "10.77.0.53";
const ATTACKERS = ["10.78.0.20", "10.78.0.21", "10.78.0.22", "10.78.0.23"];

const ATTACK_PY = `
import socket, struct, sys, time
mode, ip, port, count, sources = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5].split(",")
if mode == "reset":
    # A port scan's worst case: connect, then reset at once (SO_LINGER 0), before any accept.
    n = 0
    for i in range(count):
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        s.bind((sources[i % len(sources)], 0))
        try:
            s.connect((ip, port)); n += 1
        except OSError:
            pass
        s.close()
    print(f"reset {n}", flush=True)
elif mode == "hold":
    # Silent connections from every source address, held open until stdin closes.
    conns, failed = [], 0
    for i in range(count):
        try:
            s = socket.socket(); s.bind((sources[i % len(sources)], 0)); s.settimeout(2)
            s.connect((ip, port)); conns.append(s)
        except OSError:
            failed += 1
    print(f"holding {len(conns)} failed {failed}", flush=True)
    # Re-open whatever the server closed, for the time given, so the pressure stays on.
    end = time.time() + float(sys.argv[6])
    reopened = 0
    while time.time() < end:
        for k, s in enumerate(conns):
            try:
                s.setblocking(False)
                if s.recv(1) == b"":
                    raise OSError("closed")
            except BlockingIOError:
                continue
            except OSError:
                try:
                    s.close(); n = socket.socket(); n.bind((sources[k % len(sources)], 0)); n.settimeout(1)
                    n.connect((ip, port)); conns[k] = n; reopened += 1
                except OSError:
                    pass
        time.sleep(0.05)
    print(f"done reopened {reopened}", flush=True)
`;

function attack(ns: string, mode: string, target: string, count: number, seconds = 0) {
  return spawn(ns, [
    "python3",
    "-c",
    ATTACK_PY,
    mode,
    target,
    "7000",
    String(count),
    ATTACKERS.join(","),
    String(seconds),
  ]);
}

function fdCount(pid: number): number {
  return [...Deno.readDirSync(`/proc/${pid}/fd`)].length;
}

/** Milliseconds until `vnet client list` on the host server answers from the proxy. */
async function clientGetsIn(
  topo: Parameters<Parameters<typeof withTopology>[2]>[0],
  timeoutMs: number,
): Promise<number> {
  const t0 = performance.now();
  for (;;) {
    const r = await topo.vnet([
      "client",
      "list",
      "--server",
      `${WAN.host}:7000`,
      "--json",
      "--secret-file",
      topo.secretFile,
    ], {
      timeoutMs: 15_000,
    });
    if (r.code === 0) return Math.round(performance.now() - t0);
    if (performance.now() - t0 > timeoutMs) {
      throw new Error(`no client got in within ${timeoutMs} ms: ${r.stderr}`);
    }
  }
}

e2e("attack: resets, floods, fd exhaustion and secret holders overstepping", async (t) => {
  await withTopology({ vms: 1, secondHost: true }, 240_000, async (topo) => {
    const step = stepper(t, () => topo.serverLogs());
    const vm = topo.vms[0];
    const attacker = topo.ns.host2!;
    for (const a of ATTACKERS) await run(attacker, ["ip", "addr", "add", `${a}/24`, "dev", "wan0"]);
    const proxyState = ["--state", `${topo.dir}/proxy-state.json`];
    await topo.startServer("proxy", { logLevel: "info", extraArgs: proxyState });
    await topo.startServer("host", { logLevel: "info" });
    await setVmIp(vm.ns, VM_IP);
    const id = await topo.createHandler([vm]);
    await pingOk(topo, VM_IP);
    const hostPid = topo.servers.host!.pid;

    await step("3000 connections reset before accept; the server still accepts", async () => {
      const ping = pingMonitor(topo.ns.client, VM_IP, 0.1, 5);
      topo.procs.push(ping);
      const a = attack(attacker, "reset", WAN.host, 3000);
      topo.procs.push(a);
      assert(await a.exited === 0, `attacker:\n${a.output()}`);
      await ping.exited;
      const p = pingSummary(ping);
      const ms = await clientGetsIn(topo, 10_000);
      console.log(
        `    ${a.lines[0]}; ping lost ${p.lost}/${p.replies + p.lost}; client in ${ms} ms`,
      );
      assert(p.lost <= 3, `ping suffered: ${JSON.stringify(p)}`);
      const host = topo.servers.host!.lines.join("\n");
      assert(!/accept loop failed/.test(host), "the accept loop ended");
    });

    await step(
      "300 silent connections from 4 addresses: a client and a restarted peer get in",
      async () => {
        const fdsBefore = fdCount(hostPid), rssBefore = rssKiB(hostPid);
        const ping = pingMonitor(topo.ns.client, VM_IP, 0.1, 12);
        topo.procs.push(ping);
        const hold = attack(attacker, "hold", WAN.host, 300, 10);
        topo.procs.push(hold);
        await hold.waitForLine(/^holding/, 20_000);
        const fdsDuring = fdCount(hostPid);
        const clientMs = await clientGetsIn(topo, 10_000);
        // The peer link is cut: the Proxy's server is killed and restarted from its state. It
        // must reconnect and re-attach through the flood.
        const t0 = performance.now();
        await topo.servers.proxy!.kill("SIGKILL");
        await topo.startServer("proxy", { logLevel: "info", extraArgs: proxyState });
        let back = false;
        while (!back && performance.now() - t0 < 20_000) {
          back = (await list(topo, "proxy")).find((x) => x.id === id)?.state === "up";
        }
        const peerMs = Math.round(performance.now() - t0);
        assert(back, "the peer did not get back in within 20 s");
        assert(await hold.exited === 0, `attacker:\n${hold.output()}`);
        await ping.exited;
        const p = pingSummary(ping);
        // The attacker is gone: its sockets close as their handshakes' deadlines pass.
        const fdsAfter = await waitFor(
          "the host to release the flood's fds",
          () => Promise.resolve(fdCount(hostPid) - fdsBefore <= 5 ? fdCount(hostPid) : undefined),
          10_000,
        ).catch(() => fdCount(hostPid));
        const rssAfter = rssKiB(hostPid);
        console.log(
          `    ${hold.lines.join("; ")}; client in ${clientMs} ms, peer back in ${peerMs} ms; ` +
            `fds ${fdsBefore} -> ${fdsDuring} -> ${fdsAfter}; rss ${rssBefore >> 10} -> ` +
            `${rssAfter >> 10} MiB; ping lost ${p.lost}/${p.replies + p.lost}`,
        );
        assert(clientMs < 5_000, `a client needed ${clientMs} ms to get in`);
        assert(fdsDuring - fdsBefore <= 250, `the flood held ${fdsDuring - fdsBefore} fds`);
        assert(fdsAfter - fdsBefore <= 5, `fds not released: ${fdsBefore} -> ${fdsAfter}`);
        assert((await list(topo, "host")).length === 1, "the host holds an orphan or lost one");
        await pingOk(topo, VM_IP);
      },
    );

    await step("out of fds (EMFILE): the server backs off and accepts again", async () => {
      // Only the soft limit moves, so that it can be put back.
      const [soft] = (await run(null, [
        "prlimit",
        `--pid=${hostPid}`,
        "--nofile",
        "--output=SOFT",
        "--noheadings",
      ])).trim().split(/\s+/);
      await run(null, ["prlimit", `--pid=${hostPid}`, "--nofile=96:"]);
      const hold = attack(attacker, "hold", WAN.host, 200, 4);
      topo.procs.push(hold);
      assert(await hold.exited === 0, `attacker:\n${hold.output()}`);
      const ms = await clientGetsIn(topo, 10_000);
      await run(null, ["prlimit", `--pid=${hostPid}`, `--nofile=${soft}:`]);
      console.log(`    ${hold.lines.join("; ")}; a client got in ${ms} ms after the attack`);
      const host = topo.servers.host!.lines.join("\n");
      assert(/accept failed, backing off/.test(host), "EMFILE was never hit");
      await pingOk(topo, VM_IP);
    });

    await step(
      "a secret holder cannot take another pair's handler, or send frames as a client",
      async () => {
        const rogue = spawn(attacker, [
          "deno",
          "run",
          "-A",
          `${REPO_ROOT}/tests/e2e/fixtures/rogue_peer.ts`,
          "authority",
          `${WAN.host}:7000`,
          topo.secretFile,
          id,
          vm.hostDev,
        ]);
        topo.procs.push(rogue);
        assert(await rogue.exited === 0, `rogue peer:\n${rogue.output()}`);
        const r = JSON.parse(rogue.lines.at(-1)!.replace(/^out\| /, ""));
        console.log(`    ${JSON.stringify(r)}`);
        assert(r.detach === "refused", `detach of another pair's handler: ${r.detach}`);
        assert(r.attach === "refused", `attach to another pair's handler: ${r.attach}`);
        assert(r.nul === "invalid", `a device name with NUL: ${r.nul}`);
        assert(
          /frames are not allowed/.test(r.frameOnControl),
          `frame on control: ${r.frameOnControl}`,
        );
        await pingOk(topo, VM_IP);
        const h = (await list(topo, "proxy")).find((x) => x.id === id);
        assert(h?.state === "up", `handler after the rogue peer: ${h?.state}`);
      },
    );

    await step(
      "a client that never reads its answers is cut off; memory stays bounded",
      async () => {
        const rssBefore = rssKiB(hostPid);
        const rogue = spawn(attacker, [
          "deno",
          "run",
          "-A",
          `${REPO_ROOT}/tests/e2e/fixtures/rogue_peer.ts`,
          "unread",
          `${WAN.host}:7000`,
          topo.secretFile,
          "200000",
        ]);
        topo.procs.push(rogue);
        assert(await rogue.exited === 0, `unread client:\n${rogue.output()}`);
        const r = JSON.parse(rogue.lines.at(-1)!.replace(/^out\| /, ""));
        const rssAfter = rssKiB(hostPid);
        console.log(`    ${JSON.stringify(r)}; rss ${rssBefore >> 10} -> ${rssAfter >> 10} MiB`);
        assert(r.cut, "the server kept a client that does not read");
        assert(
          rssAfter - rssBefore < 200 * 1024,
          `rss grew by ${(rssAfter - rssBefore) >> 10} MiB`,
        );
        await pingOk(topo, VM_IP);
      },
    );

    await step(
      "MAC policy: broadcast, zero, multicast, own and live MACs are refused",
      async () => {
        const lanMac = (await run(topo.ns.proxy, ["cat", "/sys/class/net/lan0/address"])).trim();
        const gwMac = (await run(topo.ns.lan, ["cat", "/sys/class/net/br0/address"])).trim();
        // A chatty gateway: broadcasts from br0's MAC, as ARP and DHCP make on a real LAN.
        const chatter = spawn(topo.ns.lan, [
          "python3",
          "-c",
          `import socket,time
s=socket.socket(socket.AF_PACKET,socket.SOCK_RAW); s.bind(("br0",0))
m=bytes.fromhex("${gwMac.replaceAll(":", "")}")
end=time.time()+20
while time.time()<end:
    s.send(b"\\xff"*6+m+b"\\x88\\xb5"+bytes(46)); time.sleep(0.02)`,
        ]);
        topo.procs.push(chatter);
        const cases: [string, RegExp][] = [
          ["ff:ff:ff:ff:ff:ff", /broadcast address/],
          ["00:00:00:00:00:00", /zero address/],
          ["01:00:5e:00:00:01", /multicast address/],
          [lanMac, /own interface lan0/],
          [gwMac, /already live on lan0.*--allow-live-mac/],
        ];
        for (const [mac, re] of cases) {
          const r = await topo.vnet([
            "client",
            "--proxy",
            `${WAN.proxy}:7000`,
            "--proxy-dev",
            "lan0",
            "--host",
            `${WAN.host}:7000`,
            "--host-dev",
            vm.hostDev,
            "--mac",
            mac,
            "--secret-file",
            topo.secretFile,
          ]);
          const line = r.stderr.trim().split("\n").at(-1) ?? "";
          console.log(`    ${mac}: ${line}`);
          assert(
            r.code !== 0 && re.test(line),
            `${mac} was not refused as it should:\n${r.stderr}`,
          );
        }
        await chatter.kill();
        const proxy = topo.servers.proxy!.lines.join("\n");
        assert(/MAC already live on the LAN/.test(proxy), "no WARN for the live MAC");
        assert((await list(topo, "proxy")).length === 1, "a refused handler was left behind");
        await pingOk(topo, VM_IP);
      },
    );
  });
});
