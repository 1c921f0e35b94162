/**
 * A real hypervisor guest bridged onto the LAN by VNET (issue 11): QEMU with virtio-net on a tap
 * in the Host namespace, offloads at QEMU's defaults, booting a Debian cloud kernel and busybox
 * (lab/qemu.ts builds the image from Debian packages, once per machine, before any namespace is
 * entered). The tap has no path to the LAN but VNET, so the guest's DHCP lease from the LAN's
 * dnsmasq, both pings and both TCP transfers cross the handler. The servers use TLS, so the
 * guest's frames take the link's sealed UDP path (issue 18: AES-256-GCM datagrams).
 *
 *   flock /tmp/vnet-ns.lock deno test -A tests/e2e/qemu_guest_test.ts
 *   VNET_GUEST_ACCEL=kvm|tcg ...   # skip the KVM probe (lab/qemu.ts)
 */
import {
  LAN,
  type Proc,
  run,
  sleep,
  spawn,
  type Topology,
  tryRun,
  type Vm,
} from "../../lab/netns.ts";
import { ensureGuestImage, type Guest, startGuest } from "../../lab/qemu.ts";
import {
  assert,
  e2e,
  findByMac,
  ipInRange,
  stepper,
  timed,
  withTopology,
} from "./fixtures/e2e_common.ts";

/** QEMU's own OUI, as a hypervisor would assign; not one of the lab's veth VM MACs. */
const GUEST_MAC = "52:54:00:4e:54:01";
/** The veth VM on the second Host. */
const OTHER_SITE_IP = "10.77.0.71";
const TAP = "vmtap0";
/**
 * virtio-net feature bits (virtio spec 5.1.3) that QEMU offers by default with a tap backend:
 * with them the guest hands the tap partially checksummed TCP super-frames of up to 64 KiB, and
 * accepts them, which is what VNET must cope with on a real hypervisor.
 */
const VIRTIO_NET_OFFLOADS = { CSUM: 0, GUEST_CSUM: 1, GUEST_TSO4: 7, HOST_TSO4: 11 };
/** Bytes each TCP transfer carries: many super-frames, a few seconds under TCG. */
const TRANSFER_BYTES = 4 * 1024 * 1024;
const MIB = TRANSFER_BYTES / (1 << 20);
/** A frame this big on the tap was built by TSO: the path's MTU is 1500. */
const SUPER_FRAME_BYTES = 3000;

/** tcpdump on the tap until `count` frames from the guest that match `filter` were seen. */
function guestFrames(count: number, filter: string): string[] {
  return [
    "tcpdump",
    "-i",
    TAP,
    "-nn",
    "-p",
    "-c",
    String(count),
    `ether src ${GUEST_MAC} and ${filter}`,
  ];
}

e2e(
  "qemu guest: a virtio-net VM on a tap gets a lease through VNET and talks to the LAN",
  (t) => guestOnTheLan(t),
);

async function guestOnTheLan(t: Deno.TestContext): Promise<void> {
  // The image comes from the Debian registry, which the namespaces cannot reach: build it first.
  const [image, imageMs] = await timed(() => ensureGuestImage());
  console.log(`    guest image ${image.versions} ready in ${imageMs.toFixed(0)} ms`);

  let guest: Guest | undefined;
  // A second Host with a veth VM: the guest also talks to a VM of another site (issue 11).
  await withTopology({ vms: 1, secondHost: true }, 150_000, async (topo) => {
    const step = stepper(
      t,
      () =>
        `${topo.serverLogs()}  guest console:\n${guest?.consoleText() ?? "(none)"}\n` +
        `  dnsmasq:\n${topo.dnsmasqLog().split("\n").slice(-10).join("\n")}`,
    );
    const otherSite = topo.vms[0];
    await topo.moveVm(otherSite, "host2");
    await topo.startServers({ tls: true });
    const guestVm: Vm = {
      ns: topo.ns.host,
      mac: GUEST_MAC,
      hostNs: topo.ns.host,
      hostIf: TAP,
      hostDev: TAP,
    };
    let ip = "";

    await step("the guest boots on a tap in the Host namespace", async () => {
      guest = await startGuest(topo.ns.host, {
        tap: TAP,
        mac: GUEST_MAC,
        name: "guest1",
        procs: topo.procs,
        dir: topo.dir,
        image,
      });
      await guest.waitFor(/^VNET-GUEST-READY$/, 60_000);
      const bootMs = performance.now() - guest.startedAt;
      console.log(`    guest booted (accel ${guest.accel}) in ${bootMs.toFixed(0)} ms`);
      const errors = guest.consoleText().split("\n").filter((l) => /^VNET-GUEST-ERROR/.test(l));
      assert(errors.length === 0, `guest init reported: ${errors.join("; ")}`);
      const nic = await guest.run("cat /sys/class/net/eth0/address", 10_000);
      assert(nic.code === 0 && nic.output.trim() === GUEST_MAC, `guest eth0: ${nic.output}`);
    });

    await step("virtio-net negotiated QEMU's default offloads (checksum, TSO)", async () => {
      // The guest's view of the device: one character per feature bit, "1" if negotiated.
      const r = await guest!.run("cat /sys/class/net/eth0/device/features", 10_000);
      const bits = r.output.trim();
      assert(r.code === 0 && /^[01]{32,}$/.test(bits), `virtio features: ${r.output}`);
      const missing = Object.keys(VIRTIO_NET_OFFLOADS).filter((name) =>
        bits[VIRTIO_NET_OFFLOADS[name as keyof typeof VIRTIO_NET_OFFLOADS]] !== "1"
      );
      console.log(`    virtio-net features ${bits.slice(0, 16)}…`);
      assert(missing.length === 0, `offloads not negotiated: ${missing.join(", ")}`);
    });

    await step("without a handler the guest gets no lease (VNET is its only way out)", async () => {
      // The guest's DHCP client asks every second: three more requests seen on the tap, and no
      // lease meanwhile, say it asked and nobody answered (not that it had not asked yet).
      const asked = await tryRun(topo.ns.host, guestFrames(3, "udp dst port 67"), {
        timeoutMs: 15_000,
      });
      assert(asked.code === 0, `the guest sent no 3 DHCP requests in 15 s:\n${asked.stderr}`);
      const leased = guest!.consoleText().split("\n").filter((l) => /^LEASE /.test(l));
      assert(leased.length === 0, `a lease without VNET: ${leased.join("; ")}`);
    });

    await step("a handler for the guest's MAC on the tap; a lease from the LAN", async () => {
      const handlerStart = performance.now();
      await topo.createHandler([guestVm]);
      const lease = await guest!.waitFor(/^LEASE (\d+\.\d+\.\d+\.\d+)\/\d+ bound$/, 30_000);
      ip = lease[1];
      const now = performance.now();
      console.log(
        `    lease ${ip} ${(now - handlerStart).toFixed(0)} ms after the handler, ` +
          `${(now - guest!.startedAt).toFixed(0)} ms after qemu started`,
      );
      assert(ipInRange(ip), `lease ${ip} is outside the LAN's DHCP range`);
      const acked = topo.dnsmasqLog().split("\n").some((l) =>
        l.includes("DHCPACK") && l.includes(ip) && l.toLowerCase().includes(GUEST_MAC)
      );
      assert(acked, `dnsmasq on the LAN never acked ${ip} to ${GUEST_MAC}`);
      const addr = await guest!.run("ip -4 -o addr show dev eth0", 10_000);
      assert(addr.output.includes(`inet ${ip}/`), `guest eth0 lacks ${ip}: ${addr.output}`);
    });

    await step("the guest pings the LAN client", async () => {
      const r = await guest!.run(`ping -c 3 -w 10 ${LAN.client}`, 15_000);
      const summary = r.output.split("\n").filter((l) => /transmitted|round-trip/.test(l));
      console.log(`    ${summary.join("; ")}`);
      assert(r.code === 0 && /3 packets received/.test(r.output), `guest ping:\n${r.output}`);
    });

    await step("the LAN client pings the guest", async () => {
      const r = await topo.ping(topo.ns.client, ip, { count: 3, deadlineS: 10 });
      assert(r.ok, `client ping ${ip}:\n${r.output}`);
    });

    await step(`TCP ${MIB} MiB guest → LAN client (the guest's TSO super-frames)`, async () => {
      const sink = startSink(topo, 5001);
      await sink.waitForLine(/^ready$/, 10_000);
      // Proof that the guest really hands the tap super-frames (bigger than any MTU on the path).
      const superFrames = spawn(
        topo.ns.host,
        guestFrames(1, `tcp and greater ${SUPER_FRAME_BYTES}`),
      );
      topo.procs.push(superFrames);
      await superFrames.waitForLine(/listening on/, 10_000);
      const [r, ms] = await timed(() =>
        guest!.run(
          `dd if=/dev/zero bs=65536 count=${TRANSFER_BYTES / 65536} 2>/dev/null | ` +
            `nc -w 10 ${LAN.client} 5001`,
          30_000,
        )
      );
      const got = await sink.waitForLine(/^received \d+$/, 20_000);
      console.log(`    ${got} bytes in ${ms.toFixed(0)} ms (${mbps(TRANSFER_BYTES, ms)} Mbit/s)`);
      assert(r.code === 0, `guest nc exit ${r.code}: ${r.output}`);
      assert(got === `received ${TRANSFER_BYTES}`, `client ${got}, expected ${TRANSFER_BYTES}`);
      const caught = await Promise.race([superFrames.exited, sleep(3000).then(() => null)]);
      await superFrames.kill();
      assert(
        caught === 0,
        `no frame over ${SUPER_FRAME_BYTES} B from the guest on ${TAP}: are its offloads on?\n` +
          superFrames.output(),
      );
      const frame = superFrames.lines.find((l) => /^out\| .*length \d+/.test(l)) ?? "";
      console.log(`    a super-frame on ${TAP}: ${frame.replace(/^out\| /, "").slice(0, 110)}`);
    });

    await step(`TCP ${MIB} MiB LAN client → guest`, async () => {
      // busybox nc -l prints nothing until it accepts, so retry the connect until it listens.
      const counted = guest!.run(`nc -l -p 5002 -w 20 | wc -c`, 40_000);
      const [r, ms] = await timed(() =>
        tryRun(topo.ns.client, [
          "python3",
          "-c",
          TCP_SOURCE,
          ip,
          "5002",
          String(TRANSFER_BYTES),
        ], { timeoutMs: 30_000 })
      );
      const received = await counted;
      console.log(
        `    sent ${TRANSFER_BYTES} bytes in ${ms.toFixed(0)} ms ` +
          `(${mbps(TRANSFER_BYTES, ms)} Mbit/s), the guest counted ${received.output.trim()}`,
      );
      assert(r.code === 0, `client send failed (exit ${r.code}): ${r.stderr}`);
      assert(received.output.trim() === String(TRANSFER_BYTES), `guest got ${received.output}`);
    });

    await step("the guest's frames crossed the handler both ways", async () => {
      const h = findByMac(await topo.list("host"), GUEST_MAC);
      assert(h, `the host lists no handler for ${GUEST_MAC}`);
      assert(h.device === TAP, `host handler device ${h.device}, expected ${TAP}`);
      assert(h.toPeer.frames > 0 && h.fromPeer.frames > 0, `host counters: ${JSON.stringify(h)}`);
      const udp = h.link.udp;
      console.log(
        `    host handler: to peer ${h.toPeer.frames} frames / ${h.toPeer.bytes} B, from peer ` +
          `${h.fromPeer.frames} frames / ${h.fromPeer.bytes} B, drops ${h.toPeer.drops}/` +
          `${h.fromPeer.drops}; sealed UDP path ${JSON.stringify(udp)}`,
      );
      // By the sealed UDP path, not the TLS link: its datagrams carried most of the frames (the
      // first ones may go by the link, before the path is up).
      assert(udp && udp.state === "up" && (udp as { sealed?: boolean }).sealed, "no sealed path");
      assert(
        udp.datagramsOut > h.toPeer.frames / 2 && udp.datagramsIn > h.fromPeer.frames / 2,
        `frames by the link, not the sealed path: ${JSON.stringify(udp)}`,
      );
    });

    await step(
      "the guest and a VM on another Host reach each other through the Proxy",
      async () => {
        await run(otherSite.ns, ["ip", "addr", "replace", `${OTHER_SITE_IP}/24`, "dev", "eth0"]);
        await topo.createHandler([otherSite], { hostRole: "host2" });
        const r = await guest!.run(`ping -c 3 -w 10 ${OTHER_SITE_IP}`, 15_000);
        assert(r.code === 0 && /3 packets received/.test(r.output), `guest → VM:\n${r.output}`);
        const back = await topo.ping(otherSite.ns, ip, { count: 3, deadlineS: 10 });
        assert(back.ok, `VM → guest ${ip}:\n${back.output}`);
        // The lab's HandlerInfo predates paths: read them as the switch lists them.
        const host = findByMac(await topo.list("host"), GUEST_MAC) as
          | { paths?: { mac: string; via: string }[] }
          | undefined;
        const toVm = host?.paths?.find((p) => p.mac === otherSite.mac);
        console.log(
          `    guest ↔ VM on host2: 3/3 each way; the guest's Host reaches it ${toVm?.via}`,
        );
        assert(toVm, `the guest's Host has no path to ${otherSite.mac}: ${JSON.stringify(host)}`);
      },
    );
  }, () => guest?.stop() ?? Promise.resolve());
}

function mbps(bytes: number, ms: number): string {
  return (bytes * 8 / ms / 1000).toFixed(1);
}

/** A TCP sink on the LAN client: prints `ready`, then `received N` at the sender's EOF. */
function startSink(topo: Topology, port: number): Proc {
  const p = spawn(topo.ns.client, ["python3", "-c", TCP_SINK, String(port), "20"]);
  topo.procs.push(p);
  return p;
}

/** Accepts one TCP connection on argv[1], counts its bytes until EOF; gives up after argv[2] s. */
const TCP_SINK = `
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", int(sys.argv[1])))
s.listen(1)
s.settimeout(float(sys.argv[2]))
print("ready", flush=True)
c, _ = s.accept()
c.settimeout(float(sys.argv[2]))
n = 0
while True:
    b = c.recv(1 << 16)
    if not b:
        break
    n += len(b)
print("received", n, flush=True)
`;

/**
 * Connects to argv[1]:argv[2] (retrying while refused: the listener may not be up yet), sends
 * argv[3] zero bytes, closes its side and waits for the peer to close.
 */
const TCP_SOURCE = `
import socket, sys, time
deadline = time.time() + 10
while True:
    try:
        c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=20)
        break
    except ConnectionRefusedError:
        if time.time() > deadline:
            raise
        time.sleep(0.2)
left, chunk = int(sys.argv[3]), bytes(1 << 16)
while left > 0:
    left -= c.send(chunk[:min(left, len(chunk))])
c.shutdown(socket.SHUT_WR)
c.recv(1)
c.close()
`;
