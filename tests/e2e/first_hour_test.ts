/**
 * Issue 20 on real servers in namespaces: what the first hour's mistakes and normal operations
 * put in the client's output and the servers' logs.
 *   - a --mac no frame has carried on the Host's device is warned about (a typo?), and one the
 *     VM has sent from is not;
 *   - a normal close logs no WARN (a link closed on purpose is INFO);
 *   - a handler refused because the secrets differ is logged, with why, by the Proxy;
 *   - a --host name that does not resolve says "cannot resolve NAME", with no NAT advice.
 */
import { sendRawFrame, type Topology, waitFor } from "../../lab/netns.ts";
import { assert, e2e, withTopology } from "./fixtures/e2e_common.ts";

/** The lines a server logged after `mark` (its line count before). */
function logSince(topo: Topology, role: "proxy" | "host", mark: number): string {
  return topo.servers[role]!.lines.slice(mark).join("\n");
}

e2e("first hour: MAC not seen warned, close at INFO, refusal and DNS explained", async (t) => {
  await withTopology({ hostBridge: true }, 120_000, async (topo) => {
    await topo.startServers({ logLevel: "info" });
    const vm = topo.vms[0];

    await t.step("a MAC no frame has carried is warned about, on stderr", async () => {
      const typo = "02:00:00:00:00:99";
      const args = topo.handlerArgs([{ ...vm, mac: typo }]);
      const r = await topo.vnet(args);
      assert(r.code === 0, `create failed: ${r.stderr}`);
      try {
        assert(
          new RegExp(`^vnet: warning: no frame from ${typo} seen on vmbr0 yet .*typo`, "m")
            .test(r.stderr),
          `no warning for ${typo}: ${r.stderr}`,
        );
        assert(/MAC not seen on device/.test(logSince(topo, "host", 0)), topo.serverLogs());
      } finally {
        // Closed either way: the next step needs the peer link to have no handler.
        const closed = await topo.closeHandler(r.stdout.trim());
        assert(closed.code === 0, closed.stderr);
      }
    });

    await t.step("a MAC the VM has sent from is not warned about; a close is no WARN", async () => {
      // One broadcast from the VM: the bridge learns its MAC.
      await sendRawFrame(vm.ns, "eth0", "ff:ff:ff:ff:ff:ff", 0x88b5, "first-hour", 1);
      const r = await topo.vnet(topo.handlerArgs([vm]));
      assert(r.code === 0, `create failed: ${r.stderr}`);
      assert(!/warning/.test(r.stderr), `warned about a MAC the VM sent from: ${r.stderr}`);
      const mark = {
        proxy: topo.servers.proxy!.lines.length,
        host: topo.servers.host!.lines.length,
      };
      const closed = await topo.closeHandler(r.stdout.trim());
      assert(closed.code === 0, closed.stderr);
      // The normal close: the peer link no handler uses is closed, at INFO on both sides.
      await waitFor(
        "the Proxy to log its peer link closing",
        () =>
          Promise.resolve(
            /peer link (closed|down)/.test(logSince(topo, "proxy", mark.proxy)) || undefined,
          ),
        10_000,
      );
      for (const role of ["proxy", "host"] as const) {
        const log = logSince(topo, role, mark[role]);
        assert(!/ WARN /.test(log), `${role} logged a WARN on a normal close:\n${log}`);
      }
    });

    await t.step("a name that does not resolve: 'cannot resolve', no NAT advice", async () => {
      const args = topo.handlerArgs([vm]);
      args[args.indexOf("--host") + 1] = "no-such-host.invalid:7000";
      const r = await topo.vnet(args);
      assert(r.code === 1, `exit ${r.code}: ${r.stderr}`);
      assert(
        /cannot resolve no-such-host\.invalid/.test(r.stderr) && !/NAT|--via|--ssh/.test(r.stderr),
        r.stderr,
      );
    });

    await t.step("secrets differ: the Proxy's log says why the handler was refused", async () => {
      await topo.servers.host!.kill();
      await topo.startServer("host", { secretFile: topo.wrongSecretFile, logLevel: "info" });
      const mark = topo.servers.proxy!.lines.length;
      const r = await topo.vnet(topo.handlerArgs([vm]));
      assert(r.code === 1, `exit ${r.code}: ${r.stderr}`);
      const line = await waitFor(
        "the Proxy's refusal line",
        () => Promise.resolve(logSince(topo, "proxy", mark).match(/.*handler refused.*/)?.[0]),
        10_000,
      );
      assert(
        /WARN handler refused .*reason=".*(secret|authentication)/.test(line),
        `${line}\n${logSince(topo, "proxy", mark)}`,
      );
    });
  });
});
