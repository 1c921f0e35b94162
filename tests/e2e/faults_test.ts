/**
 * Faults (issue 4, "Keep it running"): the server-to-server connection is killed, cut, reset
 * and black-holed; servers restart with a state file, find it corrupt, are stopped with
 * SIGTERM; the VM's interface vanishes and comes back. After each, without re-running the
 * client, the handler is up again and the LAN reaches the VM.
 *
 *   deno test -A tests/e2e/faults_test.ts
 */
import { type Role, run, type ServerOptions, type Topology, waitFor } from "../../lab/netns.ts";
import {
  assert,
  byMac,
  e2e,
  flowing,
  list,
  type Listed,
  nftClear,
  nftFault,
  pingMonitor,
  pingOk,
  setVmIp,
  sleep,
  stepper,
  waitPing,
  withTopology,
} from "./ops_helpers.ts";

const VM_IP = "10.77.0.51";
const PORT = 7000;
/** Keepalive 1 s: a silent link is dropped after 3 s. */
const KEEPALIVE = ["--keepalive", "1", "--capture-buffer", "4"];

/** Waits until the proxy's entry for `id` is up with more reconnects than `before`. */
async function waitReconnected(topo: Topology, id: string, before: number): Promise<Listed> {
  return await waitFor(
    `handler ${id} up again after a reconnect`,
    async () => {
      const h = (await list(topo, "proxy")).find((x) => x.id === id);
      return h && h.state === "up" && h.reconnects > before ? h : undefined;
    },
    30_000,
    250,
  );
}

async function reconnectsNow(topo: Topology, id: string): Promise<number> {
  const h = (await list(topo, "proxy")).find((x) => x.id === id);
  assert(h, `the proxy lost handler ${id}`);
  return h.reconnects;
}

/** True if a line of `role`'s server log, from line `since` on, matches. */
function logHas(topo: Topology, role: Role, re: RegExp, since = 0): boolean {
  return topo.servers[role]?.lines.slice(since).some((l) => re.test(l)) ?? false;
}

function logMark(topo: Topology, role: Role): number {
  return topo.servers[role]?.lines.length ?? 0;
}

e2e("faults: the peer link is killed, cut, reset and black-holed; it heals", async (t) => {
  await withTopology({ vms: 1 }, 170_000, async (topo) => {
    const step = stepper(t, () => topo.serverLogs());
    const vm = topo.vms[0];
    const opts: ServerOptions = { extraArgs: KEEPALIVE };
    await topo.startServers(opts);
    await setVmIp(vm.ns, VM_IP);
    const id = await topo.createHandler([vm]);
    await pingOk(topo, VM_IP);

    const recover = async (what: string, before: number) => {
      const started = performance.now();
      const h = await waitReconnected(topo, id, before);
      assert(h.dialled === "out", `the proxy dialled: ${h.dialled}`);
      await waitPing(topo, VM_IP, 15_000);
      const hostEnd = byMac(await list(topo, "host"), vm.mac);
      assert(hostEnd?.state === "up", `host end after ${what}: ${JSON.stringify(hostEnd)}`);
      console.log(
        `    ${what}: healed ${Math.round(performance.now() - started)} ms after the fault ` +
          `ended, reconnects=${h.reconnects}`,
      );
    };

    await step("peer server SIGKILLed and restarted", async () => {
      const before = await reconnectsNow(topo, id);
      const code = await topo.servers.host!.kill("SIGKILL");
      assert(code !== 0, `SIGKILL should not be a clean exit`);
      // Not a wait for anything: the Host stays down a second, as a crashed one would, and the
      // Proxy's redials meet a closed port meanwhile.
      await sleep(1000);
      await topo.startServer("host", opts);
      await recover("SIGKILL+restart", before);
    });

    await step("link cut (the host's WAN interface down 4 s), then restored", async () => {
      const before = await reconnectsNow(topo, id);
      await run(topo.ns.host, ["ip", "link", "set", "wan0", "down"]);
      try {
        await waitFor(
          "the proxy to see the link down",
          async () => {
            const h = (await list(topo, "proxy")).find((x) => x.id === id);
            return h?.state === "down" ? true : undefined;
          },
          8000,
          250,
        );
      } finally {
        await run(topo.ns.host, ["ip", "link", "set", "wan0", "up"]);
      }
      await recover("link cut", before);
    });

    await step("TCP reset under traffic (nft reject with tcp reset for 1 s)", async () => {
      const before = await reconnectsNow(topo, id);
      const mark = logMark(topo, "proxy");
      // Frames in flight both ways when the reset comes: the data path's own sockets (a plain
      // link's, dialled and accepted through libc) meet the reset mid-read and mid-write. The servers must
      // stay up (list answers below, from the same processes) and the link come back.
      const pings = pingMonitor(topo.ns.client, VM_IP, 0.01, 4);
      topo.procs.push(pings);
      await flowing([], pings, 20);
      const rules = `table inet vnetfault {
  chain input { type filter hook input priority 0; tcp dport ${PORT} reject with tcp reset; }
}
`;
      await run(topo.ns.host, ["nft", "-f", "-"], { stdin: rules });
      try {
        await waitFor(
          "the proxy to see the reset",
          () =>
            Promise.resolve(
              logHas(topo, "proxy", /peer link down.*(reset|closed the connection)/, mark) ||
                undefined,
            ),
          5000,
          100,
        );
        // The fault lasts a second more (no condition to wait for): the redials meet it too.
        await sleep(1000);
      } finally {
        await nftClear(topo.ns.host);
      }
      await pings.exited;
      for (const role of ["proxy", "host"] as const) {
        assert(
          !logHas(topo, role, /server stopped|uncaught|panic/i),
          `${role} server went down:\n${topo.servers[role]!.lines.slice(-20).join("\n")}`,
        );
      }
      await recover("TCP reset", before);
    });

    await step("silent black hole (nft drop 5 s): the keepalive notices", async () => {
      const before = await reconnectsNow(topo, id);
      const mark = logMark(topo, "proxy");
      await nftFault(topo.ns.host, PORT, "drop");
      try {
        await waitFor(
          "the keepalive to drop the link",
          () =>
            Promise.resolve(logHas(topo, "proxy", /peer link down.*keepalive/, mark) || undefined),
          8000,
          100,
        );
        // The black hole lasts 1.5 s more (no condition to wait for): the redials go into it too.
        await sleep(1500);
      } finally {
        await nftClear(topo.ns.host);
      }
      await recover("black hole", before);
    });
  });
});

e2e("faults: state file, restarts, corrupt state, SIGTERM, vanished interface", async (t) => {
  await withTopology({ vms: 1 }, 170_000, async (topo) => {
    const step = stepper(t, () => topo.serverLogs());
    const vm = topo.vms[0];
    const state = (role: Role) => `${topo.dir}/${role}.state.json`;
    const opts = (role: Role): ServerOptions => ({
      extraArgs: [...KEEPALIVE, "--state", state(role)],
    });
    const start = (role: Role) => topo.startServer(role, opts(role));
    await Promise.all([start("proxy"), start("host")]);
    await setVmIp(vm.ns, VM_IP);
    const id = await topo.createHandler([vm]);
    await pingOk(topo, VM_IP);

    const stop = async (role: Role) => {
      const p = topo.servers[role]!;
      const code = await p.kill("SIGTERM", 10_000);
      assert(
        code === 0,
        `${role} server exit ${code} on SIGTERM:\n${p.lines.slice(-10).join("\n")}`,
      );
      assert(p.lines.some((l) => /server stopped/.test(l)), `${role}: no "server stopped" logged`);
    };
    const upBoth = async () => {
      await waitFor(
        `handler ${id} up on both servers`,
        async () => {
          const p = (await list(topo, "proxy")).find((h) => h.id === id);
          const h = byMac(await list(topo, "host"), vm.mac);
          return p?.state === "up" && h?.state === "up" && h.id === id ? true : undefined;
        },
        30_000,
        250,
      );
      await waitPing(topo, VM_IP, 15_000);
    };

    await step("both state files hold the handler", async () => {
      for (const role of ["proxy", "host"] as const) {
        const saved = JSON.parse(await Deno.readTextFile(state(role)));
        assert(saved.handlers?.[0]?.spec?.id === id, `${role} state: ${JSON.stringify(saved)}`);
      }
    });

    await step("SIGTERM stops the proxy cleanly; restarted, it restores the handler", async () => {
      await stop("proxy");
      await start("proxy");
      await topo.servers.proxy!.waitForLine(/handlers restored.*count=1/, 5000);
      await upBoth();
    });

    await step("the host restarts too; the proxy re-attaches to it", async () => {
      await stop("host");
      await start("host");
      await topo.servers.host!.waitForLine(/handlers restored.*count=1/, 5000);
      await upBoth();
    });

    await step("both SIGKILLed at once (a crash): both restore", async () => {
      await Promise.all([
        topo.servers.proxy!.kill("SIGKILL"),
        topo.servers.host!.kill("SIGKILL"),
      ]);
      await Promise.all([start("proxy"), start("host")]);
      await upBoth();
    });

    await step("a corrupt state file is reported and kept aside; the server starts", async () => {
      await stop("host");
      const garbage = '{"version": 1, "handlers": [{"spec": 42}';
      await Deno.writeTextFile(state("host"), garbage);
      await start("host");
      await topo.servers.host!.waitForLine(/state file is corrupt/, 5000);
      const aside = [...Deno.readDirSync(topo.dir)].map((e) => e.name)
        .filter((n) => n.startsWith("host.state.json.corrupt-"));
      assert(aside.length === 1, `expected one host.state.json.corrupt-* file: ${aside}`);
      assert(
        Deno.readTextFileSync(`${topo.dir}/${aside[0]}`) === garbage,
        "the corrupt file was not kept as it was",
      );
      // The proxy (the dialler) still has the whole handler: it re-creates the host end.
      await upBoth();
    });

    await step(
      "the VM's interface vanishes: degraded, logged; it comes back: resumed",
      async () => {
        await run(vm.hostNs, ["ip", "link", "del", vm.hostIf]);
        const degraded = await waitFor(
          "the host end to be degraded",
          async () => {
            const h = byMac(await list(topo, "host"), vm.mac);
            return h?.state === "degraded" ? h : undefined;
          },
          10_000,
          250,
        );
        assert(degraded.degraded, `degraded carries a reason: ${JSON.stringify(degraded)}`);
        assert(logHas(topo, "host", /handler degraded/), "host: no 'handler degraded' logged");
        const p = await topo.ping(topo.ns.client, VM_IP, { count: 1, deadlineS: 1 });
        assert(!p.ok, "ping works with the VM unplugged?");

        await run(vm.hostNs, [
          "ip",
          "link",
          "add",
          vm.hostIf,
          "type",
          "veth",
          "peer",
          "name",
          "eth0",
          "address",
          vm.mac,
          "netns",
          vm.ns,
        ]);
        await run(vm.hostNs, ["ip", "link", "set", vm.hostIf, "up"]);
        await run(vm.ns, ["ip", "link", "set", "eth0", "up"]);
        await setVmIp(vm.ns, VM_IP);
        await waitFor(
          "the host end to resume",
          async () => {
            const h = byMac(await list(topo, "host"), vm.mac);
            return h?.state === "up" ? true : undefined;
          },
          10_000,
          250,
        );
        assert(logHas(topo, "host", /handler resumed/), "host: no 'handler resumed' logged");
        await waitPing(topo, VM_IP, 15_000);
      },
    );

    await step("the host's data-path worker fails: it says why, exits 1, restarts", async () => {
      // A real fault, from outside: poll(2) refuses more fds than RLIMIT_NOFILE (EINVAL), and
      // the worker polls several (the capture, its sockets, the doorbell). Its loop throws.
      const host = topo.servers.host!;
      await run(null, ["prlimit", `--pid=${host.pid}`, "--nofile=1:1"]);
      const code = await Promise.race([host.exited, sleep(15_000).then(() => null)]);
      const tail = host.lines.slice(-12).join("\n");
      assert(code !== null, `the host still runs 15 s after its data path failed:\n${tail}`);
      assert(code === 1, `the host exited ${code} after its data path failed, not 1:\n${tail}`);
      assert(
        logHas(topo, "host", /the data path failed; stopping.*poll: Invalid argument/),
        `the host did not say why its data path stopped:\n${tail}`,
      );
      // Nothing of it is left half alive: its listening port is free again for a new server.
      await start("host");
      await topo.servers.host!.waitForLine(/handlers restored.*count=1/, 5000);
      await upBoth();
    });

    await step("SIGTERM at the end: exit 0, 'server stopped'", async () => {
      await stop("proxy");
      await stop("host");
    });
  });
});
