/**
 * Links through SSH (paper §4.2: "if only SSH connections are possible, VNET's TCP connection
 * can be tunneled through SSH"). The Host's firewall (nftables) lets only port 22 in; a real
 * OpenSSH server on the Host is the gateway, and the Proxy's server dials the Host's vnet port
 * with `ssh -W` through it. Keys, host key and known_hosts are all made by the test.
 *
 *   deno test -A tests/e2e/ssh_test.ts
 */
import { LAN, Topology, tryRun, WAN } from "../../lab/netns.ts";
import {
  assert,
  assertCleanFailure,
  e2e,
  findByMac,
  ipInRange,
  stepper,
  timed,
  withEnv,
} from "./fixtures/e2e_common.ts";
import { keygen, listAt, nft, Site, startSshd, waitForPort } from "./fixtures/firewall.ts";

async function site(): Promise<Site> {
  return new Site(await Topology.create({ vms: 1 }));
}

e2e("ssh: only port 22 reaches the Host; the link goes through ssh -W", async (t) => {
  await withEnv(site, 150_000, async ({ topo }) => {
    const vm = topo.vms[0];
    const dir = `${topo.dir}/ssh`;
    await Deno.mkdir(dir, { mode: 0o700 });
    const identity = `${dir}/id_ed25519`;
    const userKey = await keygen(identity, "vnet-proxy");
    const otherIdentity = `${dir}/other_ed25519`;
    await keygen(otherIdentity, "not-authorized");

    // Least privilege: this key may only open a forward to the Host's vnet port.
    const sshd = await startSshd(topo, topo.ns.host, WAN.host, [
      `restrict,port-forwarding,permitopen="${WAN.host}:7000" ${userKey}`,
    ]);
    const step = stepper(t, () => `${topo.serverLogs()}\nsshd:\n${sshd.proc.output()}`);
    const knownHosts = `${dir}/known_hosts`;
    await Deno.writeTextFile(knownHosts, `${WAN.host} ${sshd.hostKey}\n`);
    // The Host's firewall: in from outside only SSH (and ping); local traffic is free.
    await nft(
      topo.ns.host,
      `table inet vnet_ssh_only {
  chain input {
    type filter hook input priority filter; policy drop;
    iifname "lo" accept
    ct state established,related accept
    tcp dport 22 accept
    icmp type echo-request accept
  }
}
`,
    );
    await topo.startServers();
    await waitForPort(topo.ns.proxy, WAN.host, 22);

    const sshArgs = (known = knownHosts, key = identity) => [
      "--ssh",
      `root@${WAN.host}`,
      "--ssh-identity",
      key,
      "--ssh-known-hosts",
      known,
    ];
    const nothingCreated = async () => {
      assert((await topo.list("proxy")).length === 0, "the proxy lists a handler");
      // Only the Host itself gets past its firewall.
      const h = await listAt(topo, topo.ns.host, topo.addr("host"));
      assert(h.length === 0, "the host lists a handler");
    };
    let vmIp = "";
    let id = "";

    await step("a direct create fails: the firewall drops the vnet port", async () => {
      const [r, ms] = await timed(() => topo.vnet(topo.handlerArgs([vm])));
      const line = assertCleanFailure(
        r,
        /could not reach the host server: .*10\.78\.0\.2/,
        "direct",
      );
      assert(line.includes("--ssh"), `the error should suggest --ssh: ${line}`);
      assert(ms < 25_000, `the failure took ${Math.round(ms)} ms`);
      await nothingCreated();
    });

    await step("--ssh root@GATEWAY --ssh-identity --ssh-known-hosts works", async () => {
      const r = await topo.vnet([...topo.handlerArgs([vm]), ...sshArgs()]);
      assert(r.code === 0 && r.stdout.trim(), `create over ssh failed: ${r.stderr}`);
      id = r.stdout.trim();
      const p = (await topo.list("proxy")).find((h) => h.id === id);
      assert(p?.link.state === "up", `proxy entry: ${JSON.stringify(p)}`);
      assert(/ssh/.test(JSON.stringify(p)), `the proxy should show the ssh link: ${p?.peer}`);
      const h = await listAt(topo, topo.ns.host, topo.addr("host"));
      assert(findByMac(h, vm.mac), "the host lists no handler");
      await sshd.proc.waitForLine(/Accepted publickey for root/, 5000);
      // The Host's server saw the link come from the gateway itself, not from the Proxy.
      const hostLog = topo.servers.host!.output();
      assert(
        /peer link up remote=10\.78\.0\.2:/.test(hostLog),
        `the host server should see the link from its own address (sshd):\n${hostLog}`,
      );
    });

    await step("the VM gets a DHCP lease through it", async () => {
      vmIp = await topo.dhcp(vm);
      assert(ipInRange(vmIp), `lease ${vmIp} not in the dnsmasq range`);
    });

    await step("the LAN client pings the VM, and back", async () => {
      const p = await topo.ping(topo.ns.client, vmIp);
      assert(p.ok, `ping failed:\n${p.output}`);
      const back = await topo.ping(vm.ns, LAN.bridge);
      assert(back.ok, `VM cannot ping ${LAN.bridge}:\n${back.output}`);
    });

    await step("close ends the ssh link", async () => {
      const r = await topo.closeHandler(id);
      assert(r.code === 0, `close exit ${r.code}: ${r.stderr}`);
      await nothingCreated();
      const p = await topo.ping(topo.ns.client, vmIp, { count: 1, deadlineS: 2 });
      assert(!p.ok, `the VM still answers after close`);
    });

    await step("an unknown gateway host key is refused", async () => {
      const empty = `${dir}/empty_known_hosts`;
      await Deno.writeTextFile(empty, "");
      const r = await topo.vnet([...topo.handlerArgs([vm]), ...sshArgs(empty)]);
      assertCleanFailure(r, /Host key verification failed/, "unknown host key");
      await nothingCreated();
    });

    await step("a changed gateway host key is refused", async () => {
      const changed = `${dir}/changed_known_hosts`;
      const impostor = await keygen(`${dir}/impostor`, "impostor");
      await Deno.writeTextFile(
        changed,
        `${WAN.host} ${impostor.split(" ").slice(0, 2).join(" ")}\n`,
      );
      const r = await topo.vnet([...topo.handlerArgs([vm]), ...sshArgs(changed)]);
      const line = assertCleanFailure(r, /Host key verification failed/, "changed host key");
      assert(/IDENTIFICATION HAS CHANGED/.test(line), `ssh's warning should be kept: ${line}`);
      assert(!line.includes("@@@") && line.length < 600, `ssh's banner should be condensed`);
      await nothingCreated();
    });

    await step("a key the gateway does not accept is refused", async () => {
      const r = await topo.vnet([...topo.handlerArgs([vm]), ...sshArgs(knownHosts, otherIdentity)]);
      assertCleanFailure(r, /Permission denied \(publickey\)/, "unauthorized key");
      await nothingCreated();
      const p = await topo.ping(topo.ns.client, vmIp, { count: 1, deadlineS: 2 });
      assert(!p.ok, `the VM answers although every ssh attempt was refused`);
    });

    await step("no ssh process is left behind", async () => {
      const r = await tryRun(topo.ns.proxy, ["pgrep", "-a", "-x", "ssh"]);
      const mine = r.stdout.split("\n").filter((l) => l.includes(dir));
      assert(mine.length === 0, `ssh processes left: ${mine.join("\n")}`);
    });
  });
});
