/**
 * End-to-end tests of the VNET CLI contract against real processes in network namespaces
 * (see lab/netns.ts for the topology). Needs root. Every wait is bounded; every topology is
 * torn down in `finally`.
 *
 *   deno test -A tests/e2e/                      # with `deno run -A main.ts`
 *   VNET_BIN=dist/vnet deno test -A tests/e2e/   # against a compiled binary
 *   VNET_MIN_MBPS=50 ...                         # iperf3 throughput floor (default 20 Mbit/s)
 */
import {
  type HandlerInfo,
  LAN,
  macOf,
  receiveRawFrame,
  sendRawFrame,
  spawn,
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
  firstLine,
  iperf,
  ipInRange,
  NS_OK,
  stepper,
  withTopology,
} from "./fixtures/e2e_common.ts";

// ---------------------------------------------------------------------------------------------
// Preconditions: decided once, printed, never silently passed.
// ---------------------------------------------------------------------------------------------

async function tlsSupport(): Promise<string | null> {
  if (!NS_OK) return "no namespaces";
  const r = await tryRun(null, [...vnetCommand(), "cert", "--help"], { timeoutMs: 30_000 });
  return r.code === 0 ? null : `\`vnet cert --help\` failed (exit ${r.code}): ${firstLine(r)}`;
}
const TLS_MISSING = await tlsSupport();
if (NS_OK && TLS_MISSING) console.log(`SKIP TLS cases: ${TLS_MISSING}`);

const MIN_MBPS = Number(Deno.env.get("VNET_MIN_MBPS") ?? "20");
const ETHERTYPE = 0x88b5; // IEEE 802 local experimental EtherType: certainly not IP

// ---------------------------------------------------------------------------------------------
// Small assertion helpers (no JSR here: keep the suite dependency-free).
// ---------------------------------------------------------------------------------------------

function find(list: HandlerInfo[], id: string): HandlerInfo | undefined {
  return list.find((h) => h.id === id);
}

// ---------------------------------------------------------------------------------------------
// The CLI itself
// ---------------------------------------------------------------------------------------------

e2e("cli: --version and --help", async () => {
  const v = await tryRun(null, [...vnetCommand(), "--version"]);
  assert(v.code === 0, `vnet --version exit ${v.code}: ${v.stderr}`);
  assert(/\d+\.\d+\.\d+/.test(v.stdout), `--version should print a version: ${v.stdout}`);
  const h = await tryRun(null, [...vnetCommand(), "--help"]);
  assert(h.code === 0, `vnet --help exit ${h.code}: ${h.stderr}`);
  assert(/server/.test(h.stdout) && /client/.test(h.stdout), `--help names the commands`);
  for (const cmd of ["server", "client"]) {
    const r = await tryRun(null, [...vnetCommand(), cmd, "--help"]);
    assert(r.code === 0, `vnet ${cmd} --help exit ${r.code}: ${r.stderr}`);
    assert(r.stdout.includes("--secret-file"), `vnet ${cmd} --help mentions --secret-file`);
  }
});

// ---------------------------------------------------------------------------------------------
// One VM bridged onto the LAN: the whole story, TLS off and on.
// ---------------------------------------------------------------------------------------------

// The default injector on Linux is the GSO packet socket; libnet, the portable one, gets the
// whole story too.
const variants = [
  { tls: false, injector: "packet" },
  { tls: true, injector: "packet" },
  { tls: false, injector: "libnet" },
];
for (const { tls, injector } of variants) {
  const name = `tls=${tls}, injector=${injector}`;
  e2e(`bridge: one VM on the LAN through VNET (${name})`, async (t) => {
    await withTopology({ vms: 1 }, 150_000, async (topo) => {
      const step = stepper(t, () => topo.serverLogs());
      const vm = topo.vms[0];
      await topo.startServers({
        tls,
        extraArgs: ["--injector", injector],
      });
      await step("both servers run their data path on a worker of its own", async () => {
        for (const role of ["proxy", "host"] as const) {
          await topo.servers[role]!.waitForLine(/data path started/, 10_000);
        }
      });
      let id = "";
      let before: HandlerInfo | undefined;
      let vmIp = "";

      if (tls) {
        await step("a client without --tls-ca cannot talk to a TLS server", async () => {
          const args = topo.handlerArgs().filter((a, i, all) =>
            a !== "--tls-ca" && all[i - 1] !== "--tls-ca"
          );
          const r = await topo.vnet(args);
          assert(r.code !== 0, `expected failure without --tls-ca, got id ${r.stdout.trim()}`);
        });
      }

      await step("client creates a handler and prints its id", async () => {
        id = await topo.createHandler([vm]);
        assert(/^\S+$/.test(id), `id should be one word, got '${id}'`);
      });

      await step("list --json shows the handler on both servers", async () => {
        const p = find(await topo.list("proxy"), id);
        assert(p, `proxy does not list handler ${id}`);
        assert(p.role === "proxy" && p.device === "lan0", `proxy entry: ${JSON.stringify(p)}`);
        assert(p.macs.map((m) => m.toLowerCase()).includes(vm.mac), `macs: ${p.macs}`);
        assert(p.multicast === false, `multicast should be false`);
        assert(p.link.state === "up", `link state ${p.link.state}`);
        assert(p.link.tls === tls, `link.tls should be ${tls}: ${JSON.stringify(p.link)}`);
        const h = findByMac(await topo.list("host"), vm.mac);
        assert(h, `host does not list a handler for ${vm.mac}`);
        assert(h.role === "host" && h.device === vm.hostDev, `host entry: ${JSON.stringify(h)}`);
        assert(h.link.tls === tls, `host link.tls should be ${tls}`);
        before = p;
      });

      await step("VM gets a DHCP lease from the LAN's dnsmasq", async () => {
        vmIp = await topo.dhcp(vm);
        assert(ipInRange(vmIp), `lease ${vmIp} not in the dnsmasq range`);
        const leases = await Deno.readTextFile(`${topo.dir}/dnsmasq.leases`);
        assert(leases.includes(vm.mac), `dnsmasq has no lease for ${vm.mac}: ${leases}`);
      });

      await step("LAN client pings the VM; ARP resolves to the VM's MAC", async () => {
        const p = await topo.ping(topo.ns.client, vmIp);
        assert(p.ok, `ping failed:\n${p.output}`);
        const neigh = await tryRun(topo.ns.client, ["ip", "neigh", "show", vmIp]);
        assert(neigh.stdout.includes(vm.mac), `ARP entry for ${vmIp}: ${neigh.stdout}`);
        const back = await topo.ping(vm.ns, LAN.bridge);
        assert(back.ok, `VM cannot ping the LAN (${LAN.bridge}):\n${back.output}`);
      });

      await step(
        `a non-IP frame (EtherType 0x${ETHERTYPE.toString(16)}) crosses both ways`,
        async () => {
          const clientMac = await macOf(topo.ns.client, "eth0");
          let rx = await receiveRawFrame(topo.ns.client, "eth0", ETHERTYPE, "vnet-vm-to-lan");
          await sendRawFrame(vm.ns, "eth0", clientMac, ETHERTYPE, "vnet-vm-to-lan");
          assert(await rx.exited === 0, `VM→LAN raw frame not received:\n${rx.output()}`);
          rx = await receiveRawFrame(vm.ns, "eth0", ETHERTYPE, "vnet-lan-to-vm");
          await sendRawFrame(topo.ns.client, "eth0", vm.mac, ETHERTYPE, "vnet-lan-to-vm");
          assert(await rx.exited === 0, `LAN→VM raw frame not received:\n${rx.output()}`);
        },
      );

      await step(`iperf3 TCP both ways (≥ ${MIN_MBPS} Mbit/s)`, async () => {
        const srv = spawn(vm.ns, ["iperf3", "-s", "-B", vmIp, "--forceflush"]);
        topo.procs.push(srv);
        await srv.waitForLine(/Server listening/, 5000);
        const up = await iperf(topo, vmIp, false, 3);
        const down = await iperf(topo, vmIp, true, 3);
        console.log(`    iperf3 LAN→VM ${up.toFixed(0)} Mbit/s, VM→LAN ${down.toFixed(0)} Mbit/s`);
        assert(up >= MIN_MBPS, `LAN→VM throughput ${up.toFixed(1)} Mbit/s < ${MIN_MBPS}`);
        assert(down >= MIN_MBPS, `VM→LAN throughput ${down.toFixed(1)} Mbit/s < ${MIN_MBPS}`);
        await srv.kill();
      });

      await step("list --json counters increased with the traffic", async () => {
        const p = find(await topo.list("proxy"), id);
        assert(p && before, `proxy no longer lists ${id}`);
        assert(p.toPeer.frames > before.toPeer.frames, `proxy toPeer.frames did not grow`);
        assert(p.fromPeer.frames > before.fromPeer.frames, `proxy fromPeer.frames did not grow`);
        assert(p.toPeer.bytes > 1_000_000, `proxy toPeer.bytes ${p.toPeer.bytes} after iperf3`);
        assert(p.fromPeer.bytes > 1_000_000, `proxy fromPeer.bytes ${p.fromPeer.bytes}`);
        const h = findByMac(await topo.list("host"), vm.mac);
        assert(h && h.toPeer.frames > 0 && h.fromPeer.frames > 0, `host counters: ${h}`);
        // Those frames crossed the link's one stream: for a plain link our own socket (dialled
        // and accepted through libc), for TLS the runtime's (socket_stream.ts).
        const want = tls ? "runtime" : "data path";
        assert(p.link.socket === want, `proxy link.socket ${p.link.socket}, want ${want}`);
        assert(h.link.socket === want, `host link.socket ${h.link.socket}, want ${want}`);
        // Counted frame by frame where it happens: a plain link's frames all went through the
        // worker's own sockets (the link's, or its UDP path's: the default transport is auto),
        // a TLS link's none through the link (they cross to the main thread's TLS stream).
        for (const [role, end] of [["proxy", p], ["host", h]] as const) {
          const { out, in: got } = end.dataPathSocket;
          const udpOut = end.link.udp?.datagramsOut ?? 0, udpIn = end.link.udp?.datagramsIn ?? 0;
          if (tls) {
            assert(out === 0 && got === 0, `${role}: TLS frames through a worker socket?`);
          } else {
            assert(
              out + udpOut >= end.toPeer.frames - end.toPeer.drops &&
                got + udpIn >= end.fromPeer.frames,
              `${role}: ${out}+${udpOut} out / ${got}+${udpIn} in through the worker's ` +
                `sockets, of ${end.toPeer.frames} / ${end.fromPeer.frames}`,
            );
          }
        }
      });

      await step("IPv6 link-local ping does NOT work without --multicast", async () => {
        const ll = await topo.linkLocal(vm.ns);
        const p = await topo.ping(topo.ns.client, `${ll}%eth0`, { count: 2, deadlineS: 2 });
        assert(!p.ok, `ping6 should fail without --multicast (NDP is multicast):\n${p.output}`);
      });

      await step("close tears the handler down: ping stops working", async () => {
        const r = await topo.closeHandler(id);
        assert(r.code === 0, `close exit ${r.code}: ${r.stderr}`);
        assert(!find(await topo.list("proxy"), id), `proxy still lists ${id}`);
        await waitFor("the host to drop the handler", async () => {
          return findByMac(await topo.list("host"), vm.mac) ? undefined : true;
        }, 5000);
        const p = await topo.ping(topo.ns.client, vmIp, { count: 2, deadlineS: 2 });
        assert(!p.ok, `ping still works after close:\n${p.output}`);
      });

      await step("a --multicast handler (created via the host) carries IPv6 NDP", async () => {
        id = await topo.createHandler([vm], { multicast: true, via: "host" });
        const p = find(await topo.list("proxy"), id) ?? findByMac(await topo.list("proxy"), vm.mac);
        assert(p?.multicast === true, `proxy entry should say multicast: ${JSON.stringify(p)}`);
        const ll = await topo.linkLocal(vm.ns);
        const r = await topo.ping(topo.ns.client, `${ll}%eth0`);
        assert(r.ok, `ping6 ${ll} failed with --multicast:\n${r.output}`);
        const v4 = await topo.ping(topo.ns.client, vmIp);
        assert(v4.ok, `IPv4 ping failed on the new handler:\n${v4.output}`);
      });

      await step("servers stop on SIGTERM", async () => {
        const codes = await topo.stopServers();
        for (const [role, code] of Object.entries(codes)) {
          assert(code !== 137, `${role} server ignored SIGTERM (had to be killed)`);
        }
      });
    });
  }, tls && TLS_MISSING !== null);
}

// ---------------------------------------------------------------------------------------------
// Several VMs
// ---------------------------------------------------------------------------------------------

e2e("two VMs (two MACs) on one handler", async () => {
  await withTopology({ vms: 2, hostBridge: true }, 90_000, async (topo) => {
    await topo.startServers();
    const id = await topo.createHandler(topo.vms);
    const p = find(await topo.list("proxy"), id);
    assert(p?.macs.length === 2, `handler should carry 2 MACs: ${JSON.stringify(p)}`);
    const ips = [];
    for (const vm of topo.vms) ips.push(await topo.dhcp(vm));
    assert(ips[0] !== ips[1], `both VMs got ${ips[0]}`);
    for (const ip of ips) {
      const r = await topo.ping(topo.ns.client, ip);
      assert(r.ok, `client cannot ping ${ip}:\n${r.output}`);
    }
  });
});

e2e("two handlers on one server pair", async (t) => {
  await withTopology({ vms: 2 }, 90_000, async (topo) => {
    const step = stepper(t, () => topo.serverLogs());
    await topo.startServers();
    const [a, b] = topo.vms;
    const ida = await topo.createHandler([a]);
    const idb = await topo.createHandler([b]);
    assert(ida !== idb, `two handlers got the same id ${ida}`);
    const ipa = await topo.dhcp(a);
    const ipb = await topo.dhcp(b);

    await step("both VMs answer the LAN", async () => {
      for (const ip of [ipa, ipb]) {
        const r = await topo.ping(topo.ns.client, ip);
        assert(r.ok, `client cannot ping ${ip}:\n${r.output}`);
      }
      const list = await topo.list("proxy");
      assert(find(list, ida) && find(list, idb), `proxy should list both: ${JSON.stringify(list)}`);
      assert((await topo.list("host")).length === 2, `host should list two handlers`);
    });

    await step("a MAC another handler carries is refused, with one clear line", async () => {
      const r = await topo.vnet(topo.handlerArgs([b]));
      assertCleanFailure(r, new RegExp(`MAC ${b.mac} is already carried by handler ${idb}`), "dup");
      assert((await topo.list("proxy")).length === 2, "no third handler on the proxy");
    });

    await step("closing one leaves the other working", async () => {
      const r = await topo.closeHandler(ida);
      assert(r.code === 0, `close exit ${r.code}: ${r.stderr}`);
      assert(
        !(await topo.ping(topo.ns.client, ipa, { count: 2, deadlineS: 2 })).ok,
        `VM a still reachable`,
      );
      const rb = await topo.ping(topo.ns.client, ipb);
      assert(rb.ok, `VM b lost its handler:\n${rb.output}`);
    });
  });
});

// ---------------------------------------------------------------------------------------------
// Authentication
// ---------------------------------------------------------------------------------------------

e2e("secrets: wrong secret is refused and nothing crosses", async (t) => {
  await withTopology({ vms: 1 }, 90_000, async (topo) => {
    const step = stepper(t, () => topo.serverLogs());
    await topo.startServers();
    const vm = topo.vms[0];

    await step("client with the wrong secret is refused with one clear line", async () => {
      const r = await topo.vnet(topo.handlerArgs([vm], { secretFile: topo.wrongSecretFile }));
      assertCleanFailure(r, /secret|auth|denied|refused|unauthori[sz]ed/i, "wrong secret");
      const l = await topo.vnet([
        "client",
        "list",
        "--server",
        topo.addr("host"),
        "--secret-file",
        topo.wrongSecretFile,
        "--json",
      ]);
      assertCleanFailure(l, /secret|auth|denied|refused|unauthori[sz]ed/i, "list, wrong secret");
      assert((await topo.list("proxy")).length === 0, `proxy has a handler after refusal`);
      assert((await topo.list("host")).length === 0, `host has a handler after refusal`);
    });

    await step("servers with different secrets cannot link", async () => {
      await topo.servers.host!.kill();
      await topo.startServer("host", { secretFile: topo.wrongSecretFile });
      const r = await topo.vnet(topo.handlerArgs([vm]));
      assertCleanFailure(r, /secret|auth|denied|refused|unauthori[sz]ed/i, "mismatched servers");
      const up = (await topo.list("proxy")).filter((h) => h.link.state === "up");
      assert(up.length === 0, `proxy has an up link with a mismatched host: ${JSON.stringify(up)}`);
    });

    await step("nothing crosses: the VM gets no lease", async () => {
      const got = await topo.dhcp(vm, 4000).then((ip) => ip, () => null);
      assert(got === null, `VM got a lease ${got} although no handler exists`);
    });

    await step("a group/other-readable secret file is refused", async () => {
      const loose = `${topo.dir}/loose.secret`;
      await Deno.copyFile(topo.secretFile, loose);
      await Deno.chmod(loose, 0o644);
      const r = await tryRun(topo.ns.proxy, [
        ...vnetCommand(),
        "server",
        "--listen",
        `${WAN.proxy}:7001`,
        "--secret-file",
        loose,
      ], { timeoutMs: 15_000 });
      assertCleanFailure(r, /secret|permission|mode|0600|readable/i, "0644 secret file");
    });
  });
});

// ---------------------------------------------------------------------------------------------
// Bad input
// ---------------------------------------------------------------------------------------------

e2e("bad CLI input: one clear line on stderr, exit ≠ 0", async (t) => {
  await withTopology({ vms: 1 }, 90_000, async (topo) => {
    await topo.startServers();
    const base = topo.handlerArgs();
    const withArg = (flag: string, value: string) => {
      const args = [...base];
      args[args.indexOf(flag) + 1] = value;
      return args;
    };

    await t.step("bad MAC", async () => {
      const r = await topo.vnet(withArg("--mac", "02:00:00:zz:00:01"));
      assertCleanFailure(r, /MAC/i, "bad MAC");
    });

    await t.step("unknown proxy device", async () => {
      const r = await topo.vnet(withArg("--proxy-dev", "nosuch0"));
      assertCleanFailure(r, /nosuch0/, "unknown proxy device");
    });

    await t.step("unknown host device", async () => {
      const r = await topo.vnet(withArg("--host-dev", "nosuch1"));
      assertCleanFailure(r, /nosuch1/, "unknown host device");
    });

    await t.step("server not listening (connection refused)", async () => {
      const r = await topo.vnet(withArg("--proxy", `${WAN.proxy}:7999`));
      assertCleanFailure(r, /7999|connect|refused|unreachable/i, "refused");
    });

    await t.step("server host unreachable", async () => {
      const r = await topo.vnet(withArg("--host", "10.78.0.99:7000"), { timeoutMs: 60_000 });
      assertCleanFailure(r, /10\.78\.0\.99|connect|unreachable|timed? ?out/i, "unreachable");
    });

    await t.step("a short --timeout still says why the peer was not reached", async () => {
      const t0 = performance.now();
      const r = await topo.vnet([...withArg("--host", "10.78.0.99:7000"), "--timeout", "4"], {
        timeoutMs: 30_000,
      });
      const ms = performance.now() - t0;
      assertCleanFailure(r, /could not reach the host server: .*10\.78\.0\.99/, "--timeout 4");
      assert(ms < 10_000, `the client took ${Math.round(ms)} ms with --timeout 4`);
    });

    await t.step("close of an unknown id", async () => {
      const r = await topo.vnet([
        "client",
        "close",
        "--server",
        topo.addr("proxy"),
        "--secret-file",
        topo.secretFile,
        "no-such-handler",
      ]);
      assertCleanFailure(r, /no-such-handler|unknown|not found|no such/i, "close unknown id");
    });

    await t.step("nothing was half-created", async () => {
      assert((await topo.list("proxy")).length === 0, `proxy lists handlers after bad input`);
      assert((await topo.list("host")).length === 0, `host lists handlers after bad input`);
    });

    await t.step("devices lists each server's interfaces", async () => {
      for (const [role, dev] of [["proxy", "lan0"], ["host", "vmif0"]] as const) {
        const r = await topo.vnet([
          "client",
          "devices",
          "--server",
          topo.addr(role),
          "--secret-file",
          topo.secretFile,
        ]);
        assert(r.code === 0, `devices on ${role}: exit ${r.code}: ${r.stderr}`);
        assert(r.stdout.includes(dev), `devices on ${role} should name ${dev}: ${r.stdout}`);
      }
    });
  });
});
