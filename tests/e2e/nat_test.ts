/**
 * The Host behind NAT (paper §4.2: "if only one of the VNET servers is behind a NAT firewall,
 * it can initiate the handler with an outgoing connection through the firewall"). See
 * fixtures/firewall.ts for the layout: the router masquerades the Host, lets nothing in and
 * only TCP to port 443 out, so the Proxy listens on 443.
 *
 *   deno test -A tests/e2e/nat_test.ts
 */
import {
  type HandlerInfo,
  LAN,
  run,
  spawn,
  Topology,
  tryRun,
  vnetCommand,
  waitFor,
  WAN,
} from "../../lab/netns.ts";
import {
  assert,
  assertCleanFailure,
  e2e,
  findByMac,
  iperf,
  ipInRange,
  stepper,
  timed,
  withEnv,
} from "./fixtures/e2e_common.ts";
import {
  createArgs,
  listAt,
  MGMT,
  NAT,
  natHost,
  Site,
  startServerAt,
} from "./fixtures/firewall.ts";

const MIN_MBPS = Number(Deno.env.get("VNET_MIN_MBPS") ?? "20");

async function natSite(): Promise<Site> {
  const site = new Site(await Topology.create({ vms: 1 }));
  try {
    await natHost(site, { admin: true, egressPorts: [443] });
  } catch (e) {
    await site.cleanup();
    throw e;
  }
  return site;
}

e2e("nat: Host behind masquerading NAT, client uses --via host", async (t) => {
  await withEnv(natSite, 180_000, async (site) => {
    const { topo } = site;
    const step = stepper(t, () => topo.serverLogs());
    const vm = topo.vms[0];
    const hostAddr = `${NAT.host}:7000`;
    let vmIp = "";
    let id = "";

    await topo.startServer("proxy"); // 10.78.0.1:7000, the default port
    await startServerAt(topo, "host", hostAddr);

    await step("--via proxy to the router's public address fails in bounded time", async () => {
      // The only address of the Host's site the Proxy can see is the router's; nothing is
      // forwarded in, so the Proxy's dial times out (its dial timeout is 10 s).
      const [r, ms] = await timed(() =>
        topo.vnet(createArgs(topo, topo.addr("proxy"), `${NAT.routerWan}:7000`))
      );
      assertCleanFailure(r, /could not reach the host server.*--via host/, "via proxy (public)");
      assert(ms < 25_000, `the failure took ${Math.round(ms)} ms`);
    });

    await step("--via proxy to the Host's private address fails at once", async () => {
      const [r, ms] = await timed(() => topo.vnet(createArgs(topo, topo.addr("proxy"), hostAddr)));
      const line = assertCleanFailure(r, /--via host/, "via proxy (private)");
      assert(line.includes(NAT.host), `the error should name ${NAT.host}: ${line}`);
      assert(ms < 10_000, `the failure took ${Math.round(ms)} ms`);
    });

    await step("nothing was half-created on either server", async () => {
      assert((await topo.list("proxy")).length === 0, `the proxy lists handlers`);
      const h = await listAt(topo, topo.ns.host, hostAddr);
      assert(h.length === 0, `the host lists handlers: ${JSON.stringify(h)}`);
    });

    await step("--via host to a Proxy on 7000 fails: the NAT only lets 443 out", async () => {
      const r = await topo.vnet(
        createArgs(topo, topo.addr("proxy"), hostAddr, ["--via", "host"]),
        { ns: topo.ns.host },
      );
      assertCleanFailure(
        r,
        /host server could not reach the proxy server.*10\.78\.0\.1:7000/,
        "7000",
      );
    });

    await startServerAt(topo, "proxy", "0.0.0.0:443");
    const proxy443 = `${WAN.proxy}:443`;

    await step("--via host: the Host dials out to the Proxy on port 443", async () => {
      const r = await topo.vnet(createArgs(topo, proxy443, hostAddr, ["--via", "host"]), {
        ns: topo.ns.host,
      });
      assert(r.code === 0 && r.stdout.trim(), `create --via host failed: ${r.stderr}`);
      id = r.stdout.trim();
      const p = findByMac(await listAt(topo, topo.ns.proxy, proxy443), vm.mac);
      assert(p?.role === "proxy" && p.link.state === "up", `proxy entry: ${JSON.stringify(p)}`);
    });

    await step("the VM gets a DHCP lease from the LAN's dnsmasq", async () => {
      vmIp = await topo.dhcp(vm);
      assert(ipInRange(vmIp), `lease ${vmIp} not in the dnsmasq range`);
    });

    await step("the LAN client pings the VM and the VM pings the LAN", async () => {
      const p = await topo.ping(topo.ns.client, vmIp);
      assert(p.ok, `ping failed:\n${p.output}`);
      const back = await topo.ping(vm.ns, LAN.bridge);
      assert(back.ok, `VM cannot ping ${LAN.bridge}:\n${back.output}`);
    });

    await step(`iperf3 both ways through the NAT (≥ ${MIN_MBPS} Mbit/s)`, async () => {
      const srv = spawn(vm.ns, ["iperf3", "-s", "-B", vmIp, "--forceflush"]);
      topo.procs.push(srv);
      await srv.waitForLine(/Server listening/, 5000);
      const up = await iperf(topo, vmIp);
      const down = await iperf(topo, vmIp, true);
      console.log(`    iperf3 LAN→VM ${up.toFixed(0)} Mbit/s, VM→LAN ${down.toFixed(0)} Mbit/s`);
      assert(up >= MIN_MBPS && down >= MIN_MBPS, `throughput ${up} / ${down} Mbit/s`);
      await srv.kill();
    });

    await step("close through the Host's server", async () => {
      const r = await topo.vnet(
        ["client", "close", "--server", hostAddr, "--secret-file", topo.secretFile, id],
        { ns: topo.ns.host },
      );
      assert(r.code === 0, `close exit ${r.code}: ${r.stderr}`);
      const left = await listAt(topo, topo.ns.proxy, proxy443);
      assert(left.length === 0, `the proxy still lists ${JSON.stringify(left)}`);
    });

    // An admin machine inside the NAT reaches the Proxy over a management link (10.79.0.1) the
    // Host does not have: its --proxy is not where the Host can dial.
    const admin = site.extra.find((n) => n.endsWith("-admin"))!;
    const proxyMgmt = `${MGMT.proxy}:443`;

    await step("the admin manages the Proxy at its management address", async () => {
      assert((await listAt(topo, admin, proxyMgmt)).length === 0, `proxy lists handlers`);
    });

    await step("without --proxy-peer the Host dials the admin's address and fails", async () => {
      const r = await topo.vnet(createArgs(topo, proxyMgmt, hostAddr, ["--via", "host"]), {
        ns: admin,
      });
      const line = assertCleanFailure(r, /could not reach the proxy server/, "no --proxy-peer");
      assert(line.includes(MGMT.proxy), `the error should name ${MGMT.proxy}: ${line}`);
      assert(line.includes("--proxy-peer"), `the error should suggest --proxy-peer: ${line}`);
      assert((await listAt(topo, admin, proxyMgmt)).length === 0, `proxy lists handlers`);
      assert((await listAt(topo, admin, hostAddr)).length === 0, `host lists handlers`);
    });

    await step("with --proxy-peer (the public address) it works", async () => {
      const r = await topo.vnet(
        createArgs(topo, proxyMgmt, hostAddr, ["--via", "host", "--proxy-peer", proxy443]),
        { ns: admin },
      );
      assert(r.code === 0 && r.stdout.trim(), `create with --proxy-peer failed: ${r.stderr}`);
      const p = findByMac(await listAt(topo, admin, proxyMgmt), vm.mac);
      assert(p?.link.state === "up", `proxy entry: ${JSON.stringify(p)}`);
      const ping = await topo.ping(topo.ns.client, vmIp);
      assert(ping.ok, `ping failed:\n${ping.output}`);
    });
  });
});

/** The NAT as above, but letting UDP to the Proxy's port 443 out too: the link's UDP path. */
async function udpNatSite(): Promise<Site> {
  const site = new Site(await Topology.create({ vms: 1 }));
  try {
    await natHost(site, { egressPorts: [443], udpEgressPorts: [443] });
  } catch (e) {
    await site.cleanup();
    throw e;
  }
  return site;
}

/** The UDP path of the one handler in `ns`'s server at `server`. */
async function udpPathAt(topo: Topology, ns: string, server: string, extra: string[]) {
  const [h] = await listAt(topo, ns, server, extra) as (HandlerInfo & {
    link: { udp: { state: string; peer: string; datagramsIn: number } | null };
  })[];
  assert(h, `${server} lists no handler`);
  return h.link.udp;
}

for (const tls of [false, true]) {
  e2e(
    `nat: the NAT forgets the Host's UDP mapping mid-ping, the path follows (tls=${tls})`,
    async (t) => {
      await withEnv(udpNatSite, 120_000, async (site) => {
        const { topo } = site;
        const step = stepper(t, () => topo.serverLogs());
        const router = `${topo.name}-router`;
        const vmIp = "10.77.0.60";
        const hostAddr = `${NAT.host}:7000`;
        const proxy443 = `${WAN.proxy}:443`;
        const dirOf = { proxy: "proxy", host: "host-nat" };
        const tlsArgs = (role: "proxy" | "host") =>
          tls
            ? [
              "--tls-cert",
              `${topo.tlsDir}/${dirOf[role]}/cert.pem`,
              "--tls-key",
              `${topo.tlsDir}/${dirOf[role]}/key.pem`,
              "--tls-ca",
              `${topo.tlsDir}/ca.pem`,
            ]
            : [];
        if (tls) {
          // The Host's server is reached at its private address: its certificate names that.
          const dir = await topo.makeCerts();
          const r = await tryRun(null, [
            ...vnetCommand(),
            ...["cert", "issue", "--ca", dir, "--name", "host", "--san", NAT.host],
            ...["--out", `${dir}/host-nat`],
          ]);
          assert(r.code === 0, `vnet cert issue: ${r.stderr}`);
        }
        const clientTls = topo.clientTlsArgs();
        await startServerAt(topo, "proxy", "0.0.0.0:443", tlsArgs("proxy"));
        await startServerAt(topo, "host", hostAddr, tlsArgs("host"));
        await run(topo.vms[0].ns, ["ip", "addr", "add", `${vmIp}/${LAN.prefix}`, "dev", "eth0"]);
        const atProxy = () => udpPathAt(topo, topo.ns.proxy, proxy443, clientTls);
        const atHost = () => udpPathAt(topo, topo.ns.host, hostAddr, clientTls);

        await step(
          "--via host, --transport udp: a UDP path through the NAT, both ends up",
          async () => {
            const r = await topo.vnet(
              createArgs(topo, proxy443, hostAddr, [
                "--via",
                "host",
                "--transport",
                "udp",
                ...clientTls,
              ]),
              { ns: topo.ns.host },
            );
            assert(r.code === 0, `create failed: ${r.stderr}`);
            await waitFor(
              "both ends' UDP path up",
              async () =>
                (await atProxy())?.state === "up" && (await atHost())?.state === "up" || undefined,
              10_000,
              100,
            );
          },
        );

        await step(
          "the mapping forgotten and remade on another port: the ping carries on",
          async () => {
            const ping = spawn(topo.ns.client, ["ping", "-n", "-i", "0.1", "-w", "8", vmIp]);
            topo.procs.push(ping);
            await ping.waitForLine(/bytes from/, 10_000);
            const before = (await atProxy())!;
            assert(before.peer === `${NAT.routerWan}:7000`, `the Proxy sends to ${before.peer}`);
            // The NAT now maps new UDP flows to other ports, then forgets every UDP mapping it has:
            // what a NAT does when its UDP timeout expires, or when it restarts.
            await run(router, ["nft", "flush", "chain", "inet", "vnet_nat", "postrouting"]);
            await run(router, [
              "nft",
              "add rule inet vnet_nat postrouting oifname wan0 meta l4proto udp masquerade to " +
              ":40000-40999",
            ]);
            await run(router, [
              "nft",
              "add rule inet vnet_nat postrouting oifname wan0 masquerade",
            ]);
            await run(router, ["conntrack", "-D", "-p", "udp"]);
            const forgot = performance.now();
            await waitFor(
              "the Proxy to send to the new mapping",
              async () => {
                const p = await atProxy();
                const port = Number(p?.peer.split(":").at(-1));
                // Up, or lossy: the Host lost the Proxy's keepalives while they went to the
                // forgotten mapping, and may say so for a few seconds.
                const working = p?.state === "up" || p?.state === "lossy";
                return working && port >= 40000 && port <= 40999 ? p : undefined;
              },
              10_000,
              100,
            );
            const followedMs = Math.round(performance.now() - forgot);
            const after = (await atProxy())!;
            // Frames, not only keepalives, come in by UDP from the new mapping.
            await waitFor(
              "frames by UDP from the new mapping",
              async () =>
                ((await atProxy())?.datagramsIn ?? 0) > after.datagramsIn + 20 || undefined,
              5_000,
              100,
            );
            await ping.exited;
            const summary = ping.lines.find((l) => /packets transmitted/.test(l))?.trim() ?? "";
            assert(summary, `ping printed no summary: ${ping.lines.join("\n")}`);
            console.log(
              `    the Proxy followed ${before.peer} -> ${after.peer} in ${followedMs} ms; ` +
                `ping: ${summary}`,
            );
            assert(followedMs <= 3_000, `the path followed after ${followedMs} ms`);
            // What is lost is what the Proxy sent to the forgotten mapping before the Host's next
            // datagram (a keepalive each second) showed it the new one.
            const lost = Number(/(\d+) packets transmitted/.exec(summary)?.[1] ?? 0) -
              Number(/(\d+) received/.exec(summary)?.[1] ?? 0);
            assert(lost <= 15, `${lost} pings lost across the remapping`);
            assert((await atHost())?.state === "up", "the Host's path is not up");
          },
        );
      });
    },
  );
}
