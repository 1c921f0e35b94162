/**
 * Direct paths' authority and bounds (src/control/direct.ts, issue 19), with stand-in links:
 * offers in flight on a Proxy, and what a Host takes from "the Proxy" of a handler.
 */
import { assert, assertEquals, assertThrows } from "./assert.ts";
import { DirectPaths, punchable } from "../../src/control/direct.ts";
import { Registry } from "../../src/control/registry.ts";
import { fakeInterfaces } from "../../src/dataplane/fake_ports.ts";
import { DataPath, type HandlerRef, InProcessForwarder } from "../../src/dataplane/data_path.ts";
import { macBytes } from "../../src/dataplane/mac.ts";
import { type Transport } from "../../src/dataplane/handler.ts";
import { type Link } from "../../src/link/link.ts";
import { type RouteRequest } from "../../src/control/rpc.ts";
import { type UdpPathState } from "../../src/dataplane/udp_peers.ts";
import { Warnings } from "./warnings_log.ts";
import { until } from "./wait.ts";

const VM1 = "02:00:00:00:00:01", VM2 = "02:00:00:00:00:02";
const GATEWAY = "02:aa:00:00:00:01";

let links = 0;

/** A stand-in link: its requests are recorded and never answered. */
function link(name: string) {
  const requests: { op: string; body: Record<string, unknown> }[] = [];
  const l = {
    number: ++links,
    isOpen: true,
    remote: name,
    requests,
    request: (op: string, body: Record<string, unknown>) => {
      requests.push({ op, body });
      return new Promise(() => {});
    },
    sendFrame: () => true,
    tune: () => {},
  };
  return l as unknown as Link & { requests: typeof requests };
}

function frame(dst: string, src: string): Uint8Array {
  const f = new Uint8Array(60);
  f.set(macBytes(dst), 0);
  f.set(macBytes(src), 6);
  return f;
}

function setup(dial: (addr: unknown) => Promise<Link> = () => new Promise(() => {})) {
  const log = new Warnings();
  const ports = fakeInterfaces(["eth0", "eth1"]);
  const dataPath = new DataPath((hooks) => new InProcessForwarder(ports, hooks, log), log);
  const registry = new Registry(dataPath);
  const direct = new DirectPaths(registry, true, { dial, aeadOf: () => null }, log);
  const open = async (
    id: string,
    role: "proxy" | "host",
    macs: string[],
    l: Link,
    device = "eth0",
    transport?: Transport,
  ) => {
    const entry = await registry.open(
      { id, role, device, macs, multicast: false, peer: `${id}-peer:7000`, transport },
      { bind: "", origin: "" },
    );
    dataPath.addLink(l);
    entry.handler.attach(l);
    return entry.handler;
  };
  /** A frame from `handler`'s peer, as its link hands it in. */
  const receive = (handler: HandlerRef, f: Uint8Array) =>
    dataPath.frameIn(handler.link!, handler.number, f);
  return { log, registry, direct, open, receive };
}

Deno.test("direct, Proxy: at most 8 offers in flight on a link that never answers", async () => {
  const { direct, open, receive, registry } = setup();
  const rogue = link("rogue"), host = link("host");
  const macs = Array.from(
    { length: 48 },
    (_, i) => `02:68:00:00:00:${i.toString(16).padStart(2, "0")}`,
  );
  const a = await open("0000000a", "proxy", macs, rogue, "eth0", "auto");
  await open("0000000b", "proxy", [VM2], host, "eth0", "auto");
  for (const m of macs) receive(a, frame(VM2, m));
  // Announcements go out once the rendezvous (the links' UDP paths) is looked up.
  const routes = (l: typeof rogue) => l.requests.filter((r) => r.op === "route").length;
  await until("8 announcements", () => routes(rogue) === 8 && routes(host) === 8);
  // The forwarder answers in order: every lookup before this one has been answered.
  await registry.dataPath.udpStates();
  await Promise.resolve();
  assertEquals(routes(rogue), 8);
  assertEquals(routes(host), 8);
  direct.close();
});

Deno.test("direct, Host: only a MAC seen over the offering link, never its own VMs", async () => {
  const { log, direct, open, receive, registry } = setup();
  const proxy = link("proxy"), rogue = link("rogue");
  const vm = await open("0000000a", "host", [VM1], proxy);
  const own = await open("0000000b", "host", ["02:66:00:00:00:01"], rogue, "eth1");
  receive(vm, frame(VM1, GATEWAY)); // VM1 talks to the gateway through its Proxy
  const offer = (mac: string, token: string, dial = false) =>
    direct.route({
      handler: "0000000b",
      mac,
      peer: "10.0.0.9:7000",
      remote: "0000000c",
      token,
      dial,
    }, rogue);
  assertThrows(() => offer(GATEWAY, "1".repeat(32)), /no frame from it came over this link/);
  assertThrows(() => offer(VM1, "2".repeat(32)), /a VM of this server/);
  assertThrows(
    () =>
      direct.route({
        handler: "0000000a",
        mac: GATEWAY,
        peer: "x:1",
        remote: "0000000c",
        token: "3".repeat(32),
        dial: false,
      }, rogue),
    /no host handler '0000000a' on this link/,
  );
  assert(
    log.lines.some((l) => l.msg === "direct path offer refused" && l.fields.mac === GATEWAY),
    "no WARN",
  );
  // The rogue feeds a frame from the gateway: its offer is taken, for its own handler only.
  receive(own, frame("02:66:00:00:00:01", GATEWAY));
  offer(GATEWAY, "4".repeat(32));
  assert(registry.fabric.learned(proxy, GATEWAY), "the Proxy's own path was forgotten");
  assertEquals(registry.fabric.directLinks().size, 0, "VM1 diverted");
  direct.close();
});

Deno.test("direct, Host: tokens and dials are bounded per link; refusals are logged once a second", async () => {
  let dials = 0;
  const { log, direct, open, receive } = setup(() => {
    dials++;
    return new Promise(() => {});
  });
  const proxy = link("proxy");
  const vm = await open("0000000a", "host", [VM1], proxy);
  const far = "02:5e:00:00:02:01";
  receive(vm, frame(VM1, far));
  const offer = (i: number, dial: boolean, peer = `10.0.0.${1 + (i % 200)}:7000`) =>
    direct.route({
      handler: "0000000a",
      mac: far,
      peer,
      remote: "0000000c",
      token: i.toString(16).padStart(32, "0"),
      dial,
    }, proxy);
  let kept = 0;
  for (let i = 0; i < 1000; i++) {
    try {
      offer(i, false);
      kept++;
    } catch { /* refused */ }
  }
  assertEquals(kept, 32);
  assertEquals(log.lines.length, 1, "a flood of refusals flooded the log");
  for (let i = 0; i < 10; i++) {
    try {
      offer(2000 + i, true);
    } catch { /* refused */ }
  }
  await Promise.resolve();
  assertEquals(dials, 4);
  assertThrows(() => offer(3000, true, "127.0.0.1:7000"), /not another Host's address/);
  direct.close();
});

Deno.test("direct, Host: punched paths only to an address, bounded per link", async () => {
  const { log, direct, open, receive, registry } = setup();
  await registry.dataPath.udpListen("127.0.0.1", 0);
  try {
    const proxy = link("proxy");
    const vm = await open("0000000a", "host", [VM1], proxy, "eth0", "auto");
    const far = (i: number) => `02:5e:00:00:03:${i.toString(16).padStart(2, "0")}`;
    const OFFERS = 38;
    for (let i = 0; i < OFFERS; i++) receive(vm, frame(VM1, far(i)));
    // This Host dials (so no token is kept for the far Host's dial, which bounds offers too).
    const offer = (i: number, host: string) =>
      direct.route({
        handler: "0000000a",
        mac: far(i),
        peer: "10.0.0.9:7000",
        remote: "0000000c",
        token: (100 + i).toString(16).padStart(32, "0"),
        dial: true,
        // A rendezvous each: a path each.
        udp: { host, port: 7000, secret: SECRET, token: (200 + i).toString(16).padStart(32, "0") },
      }, proxy);
    const routed = () =>
      Array.from({ length: OFFERS }, (_, i) => registry.fabric.route(proxy, far(i)))
        .filter((r) => r !== undefined);
    // Never to this server itself, nor to a multicast group, however the address is written.
    offer(0, "127.0.0.1");
    offer(1, "224.0.0.1");
    offer(2, "::ffff:127.0.0.1");
    offer(3, "0:0:0:0:0:0:0:1");
    assert(
      log.lines.some((l) => l.msg === "direct path offer refused" && l.fields.mac === far(0)),
      "no WARN for a loopback rendezvous",
    );
    // 32 on one Proxy link (a Host behind it each, more than the 9 others of a 10-Host site);
    // the route goes over each, shown as the endpoint it punches to.
    for (let i = 4; i < OFFERS; i++) offer(i, "192.0.2.7");
    await until("32 routes", () => routed().length >= 32);
    await registry.dataPath.udpStates(); // every command sent before has been run
    assertEquals(routed().length, 32);
    for (let i = 0; i < 4; i++) assertEquals(registry.fabric.route(proxy, far(i)), undefined);
    for (const r of routed()) assertEquals(r.remote, "udp 192.0.2.7:7000");
    assertEquals(Object.keys(await registry.dataPath.udpStates()).length, 32);
    // Not up yet: the VM's frames still go through the Proxy.
    const [state] = Object.values(await registry.dataPath.states());
    assert(state.paths.every((p) => p.via === "proxy"), JSON.stringify(state.paths));
    // The Proxy forgets a MAC: its route goes back through the Proxy.
    direct.unroute(far(4), proxy);
    assertEquals(registry.fabric.route(proxy, far(4)), undefined);
    assertEquals(routed().length, 31);
  } finally {
    direct.close();
    await registry.dataPath.stop();
  }
});

const SECRET = btoa(String.fromCharCode(...new Uint8Array(32).fill(9)));
const token = (n: number) => n.toString(16).padStart(32, "0");

Deno.test("direct, Host: one punched path per rendezvous, for all it announces", async () => {
  const { log, direct, open, receive, registry } = setup();
  await registry.dataPath.udpListen("127.0.0.1", 0);
  try {
    const proxy = link("proxy");
    const F1 = "02:5e:00:00:04:01", F2 = "02:5e:00:00:04:02";
    const vm1 = await open("0000000a", "host", [VM1], proxy, "eth0", "auto");
    const vm2 = await open("0000000b", "host", [VM2], proxy, "eth1", "udp");
    const tcp = await open("0000000e", "host", ["02:00:00:00:00:03"], proxy, "eth0", "tcp");
    receive(vm1, frame(VM1, F1));
    receive(vm2, frame(VM2, F1));
    receive(vm2, frame(VM2, F2));
    receive(tcp, frame("02:00:00:00:00:03", F2));
    let n = 0;
    const offer = (handler: string, mac: string, remote: string, udpToken: string) =>
      direct.route({
        handler,
        mac,
        peer: "10.0.0.9:7000",
        remote,
        token: token(++n),
        dial: false,
        udp: { host: "192.0.2.7", port: 7000, secret: SECRET, token: udpToken },
      }, proxy);
    // VM1→F1, VM2→F1 and VM2→F2 (another handler of the far Host): one rendezvous, one path.
    offer("0000000a", F1, "0000000c", token(0xa1));
    offer("0000000b", F1, "0000000c", token(0xa1));
    offer("0000000b", F2, "0000000d", token(0xa1));
    await until("both routes", () => !!registry.fabric.route(proxy, F2));
    const first = registry.fabric.route(proxy, F1);
    assert(first && registry.fabric.route(proxy, F2) === first, "F1 and F2 on different paths");
    assertEquals(Object.keys(await registry.dataPath.udpStates()).length, 1);
    // A new rendezvous (the Proxy's old one expired): a new path, for the MAC it names.
    offer("0000000b", F2, "0000000d", token(0xa2));
    await until("F2 on a new path", () => registry.fabric.route(proxy, F2) !== first);
    assertEquals(registry.fabric.route(proxy, F1), first);
    assertEquals(Object.keys(await registry.dataPath.udpStates()).length, 2);
    // A handler that goes by TCP is not put on a punched path.
    offer("0000000e", F2, "0000000d", token(0xa3));
    await registry.dataPath.udpStates();
    assertEquals(Object.keys(await registry.dataPath.udpStates()).length, 2);
    assert(
      log.lines.some((l) =>
        l.msg === "direct path offer refused" && /by TCP/.test(`${l.fields.why}`)
      ),
      JSON.stringify(log.lines),
    );
    // A route this Host refuses (it has not seen the MAC yet) still lets its handler's frames in
    // from the path: the other Host may have taken the route, and the path is up for it.
    const VM4 = "02:00:00:00:00:04";
    const vm4 = await open("0000000f", "host", [VM4], proxy, "eth0", "auto");
    assertThrows(
      () => offer("0000000f", "02:5e:00:00:04:09", "0000000d", token(0xa1)),
      /no frame from it came over this link/,
    );
    await until("a frame from the path let in", () => {
      registry.dataPath.frameIn(first as unknown as Link, vm4.number, frame(VM4, F2));
      return vm4.counters().fromPeer.frames > 0;
    });
  } finally {
    direct.close();
    await registry.dataPath.stop();
  }
});

Deno.test("direct, Host: a rendezvous is punched with once, never again once closed", async () => {
  const { log, direct, open, receive, registry } = setup();
  // No UDP socket: the forwarder refuses the path, and it is closed at once.
  const proxy = link("proxy");
  const vm = await open("0000000a", "host", [VM1], proxy, "eth0", "auto");
  const F = "02:5e:00:00:05:01";
  receive(vm, frame(VM1, F));
  let n = 0;
  const offer = () =>
    direct.route({
      handler: "0000000a",
      mac: F,
      peer: "10.0.0.9:7000",
      remote: "0000000c",
      token: token(++n),
      dial: false,
      udp: { host: "192.0.2.7", port: 7000, secret: SECRET, token: token(0xb1) },
    }, proxy);
  try {
    // Offered again until the closed path's token is refused; a Host that punched with it
    // again would never refuse, and time out here.
    const refused = () => log.lines.filter((l) => l.msg === "direct path offer refused");
    await until("a refusal", async () => {
      offer();
      await registry.dataPath.udpStates();
      return refused().length > 0;
    });
    assertEquals(refused().map((l) => l.fields.why), [
      "a path was punched with that rendezvous already",
    ]);
  } finally {
    direct.close();
    await registry.dataPath.stop();
  }
});

Deno.test("direct: a rendezvous's address is judged on its bytes", () => {
  for (
    const bad of [
      "127.0.0.1",
      "127.1.2.3",
      "0.0.0.0",
      "0.1.2.3",
      "224.0.0.1",
      "239.255.255.250",
      "255.255.255.255",
      "::1",
      "0:0:0:0:0:0:0:1",
      "::0:1",
      "0000::0001",
      "::",
      "0:0:0:0:0:0:0:0",
      "ff02::1",
      "FF02::1:2",
      "ff05::2",
      "ff0e::1",
      "::ffff:127.0.0.1",
      "::ffff:7f00:1",
      "0:0:0:0:0:ffff:127.0.0.1",
      "::ffff:0.0.0.0",
      "::ffff:224.0.0.1",
      "::ffff:e000:1",
      "::127.0.0.1",
      "::224.0.0.1",
      "64:ff9b::127.0.0.1",
      "64:ff9b::e000:1",
      "localhost",
      "evil.example",
      "1.2.3",
      "::ffff:300.1.1.1",
      ":::1",
    ]
  ) assert(!punchable(bad), `${bad} taken for another Host's address`);
  for (
    const good of ["192.0.2.7", "10.78.0.201", "203.0.113.9", "2001:db8::7", "::ffff:192.0.2.7"]
  ) assert(punchable(good), `${good} refused`);
});

Deno.test("direct, Host: a dial to a loopback address written as IPv6 is refused", async () => {
  const { direct, open, receive } = setup(() => Promise.reject(new Error("dialled")));
  const proxy = link("proxy");
  const vm = await open("0000000a", "host", [VM1], proxy);
  const far = "02:5e:00:00:06:01";
  receive(vm, frame(VM1, far));
  let n = 0;
  for (const peer of ["[::ffff:127.0.0.1]:7000", "[::0:1]:7000", "localhost:7000"]) {
    assertThrows(
      () =>
        direct.route({
          handler: "0000000a",
          mac: far,
          peer,
          remote: "0000000c",
          token: token(++n),
          dial: true,
        }, proxy),
      /not another Host's address/,
    );
  }
  direct.close();
});

Deno.test("forwarder: a punched path that cannot carry its handlers is not opened", async () => {
  const { registry } = setup();
  await registry.dataPath.udpListen("127.0.0.1", 0);
  try {
    const punch = (carry: number[]) =>
      registry.dataPath.udpPunch({
        link: registry.dataPath.newTunnelNumber(),
        remote: "udp 192.0.2.7:7000",
        host: "192.0.2.7",
        port: 7000,
        keys: null,
        localId: 1,
        peerId: 2,
        token: 1,
        peerToken: 2,
        allow: carry[0],
        carry,
      });
    // Plain: a handler whose VNI (low 24 bits) is 0, or two whose VNIs clash.
    assertEquals(await punch([0x01000000, 0x0c]), false);
    assertEquals(await punch([0x0a, 0x0100000a]), false);
    assertEquals(Object.keys(await registry.dataPath.udpStates()).length, 0);
    assertEquals(await punch([0x0a, 0x0c]), true);
    assertEquals(Object.keys(await registry.dataPath.udpStates()).length, 1);
  } finally {
    await registry.dataPath.stop();
  }
});

Deno.test("direct, Proxy: one rendezvous per two Hosts, whichever handlers talk", async () => {
  const { direct, open, receive, registry } = setup();
  const la = link("host-a"), lb = link("host-b");
  const A1 = "02:0a:00:00:00:01", A2 = "02:0a:00:00:00:02", A3 = "02:0a:00:00:00:03";
  const B1 = "02:0b:00:00:00:01", B2 = "02:0b:00:00:00:02";
  const a1 = await open("000000a1", "proxy", [A1], la, "eth0", "auto");
  const a2 = await open("000000a2", "proxy", [A2], la, "eth0", "udp");
  const a3 = await open("000000a3", "proxy", [A3], la, "eth0", "tcp");
  const b1 = await open("000000b1", "proxy", [B1], lb, "eth0", "auto");
  const b2 = await open("000000b2", "proxy", [B2], lb, "eth0", "auto");
  // Both Hosts' UDP paths are up, each behind its NAT's mapping.
  const up = (peer: string) => ({ state: "up", sealed: false, peer }) as UdpPathState;
  registry.dataPath.udpStates = () =>
    Promise.resolve({
      [la.number]: up("198.51.100.1:40001"),
      [lb.number]: up("198.51.100.2:40002"),
    });
  const routes = (l: typeof la) =>
    l.requests.filter((r) => r.op === "route").map((r) => r.body as unknown as RouteRequest);
  receive(a1, frame(B1, A1)); // A's Host sends first: it dials, and punches as the dialer
  receive(a2, frame(B1, A2));
  receive(b2, frame(A1, B2)); // B's Host sends first this time
  receive(a3, frame(B2, A3)); // a handler that goes by TCP
  await until(
    "4 announcements each",
    () => routes(la).length === 4 && routes(lb).length === 4,
    500,
  ).catch((e) => {
    throw new Error(`${e.message}: ${JSON.stringify([routes(la), routes(lb)])}`);
  });
  // The TCP handler's pair gets no rendezvous (and is told first: nothing to look up).
  const tcpPair = (r: RouteRequest) => r.handler === "000000a3" || r.mac === A3;
  const [ra, rb] = [routes(la).filter((r) => !tcpPair(r)), routes(lb).filter((r) => !tcpPair(r))];
  assertEquals(
    [...routes(la), ...routes(lb)].filter(tcpPair).map((r) => r.udp),
    [undefined, undefined],
  );
  const udp = ra[0].udp!;
  assertEquals(udp.host, "198.51.100.2");
  assertEquals(rb[0].udp?.host, "198.51.100.1");
  for (const r of [...ra, ...rb]) {
    assertEquals([r.udp?.secret, r.udp?.token], [udp.secret, udp.token]);
  }
  assert(ra.every((r) => r.dial), "A's Host is not the dialer throughout");
  assert(rb.every((r) => !r.dial), "B's Host dials");
  // A pair announced again did not take: a fresh rendezvous, which the next pairs share.
  // (Each way of a pair is reported once a second: B1→A1 now, A1→B2 for the first time.)
  direct.forget([A1]);
  receive(b1, frame(A1, B1));
  receive(a1, frame(B2, A1));
  await until(
    "2 more announcements with a rendezvous",
    () => routes(la).filter((r) => !tcpPair(r)).length === 5,
  );
  const [again, next] = routes(la).filter((r) => !tcpPair(r)).slice(3);
  assert(again.udp && again.udp.token !== udp.token, "the same rendezvous for a pair again");
  assertEquals([next.udp?.token, next.udp?.secret], [again.udp.token, again.udp.secret]);
  direct.close();
});

/**
 * A Host with a UDP socket whose dial waits for `connect(dialled)`: a direct link to the far
 * Host, which takes every token presented.
 */
async function withDialledLink() {
  let connect = (_: Link) => {};
  const dialled = link("direct");
  dialled.request = () => Promise.resolve({}) as never;
  dialled.close = () => {};
  const host = setup(() => new Promise((r) => connect = r));
  await host.registry.dataPath.udpListen("127.0.0.1", 0);
  return { ...host, dialled, connect: (l: Link) => connect(l) };
}

/**
 * Waits until a frame for `vm` from `src`, handed in from `from`, is let in: counted beyond those
 * its handler had (VM2 of twoVmsTalkTo has one from its Proxy already).
 */
async function letIn(registry: Registry, from: unknown, vm: HandlerRef, src: string, what: string) {
  const before = vm.counters().fromPeer.frames;
  await until(what, () => {
    registry.dataPath.frameIn(from as Link, vm.number, frame(vm.spec.macs[0], src));
    return vm.counters().fromPeer.frames > before;
  });
}

/** VM1 and VM2, a handler each over one Proxy link, talking to F1 and F2 of another Host. */
async function twoVmsTalkTo(host: ReturnType<typeof setup>, F1: string, F2: string) {
  const proxy = link("proxy");
  const vm1 = await host.open("0000000a", "host", [VM1], proxy, "eth0", "auto");
  const vm2 = await host.open("0000000b", "host", [VM2], proxy, "eth1", "auto");
  host.receive(vm1, frame(VM1, F1));
  host.receive(vm2, frame(VM2, F2));
  return { proxy, vm1, vm2 };
}

Deno.test("direct, Host: a direct link that takes a punched path's last MAC closes it", async () => {
  const { dialled, connect, direct, open, receive, registry } = await withDialledLink();
  try {
    const proxy = link("proxy");
    const vm = await open("0000000a", "host", [VM1], proxy, "eth0", "auto");
    const F = "02:5e:00:00:07:01";
    receive(vm, frame(VM1, F));
    direct.route({
      handler: "0000000a",
      mac: F,
      peer: "192.0.2.7:7000",
      remote: "0000000c",
      token: token(1),
      dial: true,
      udp: { host: "192.0.2.7", port: 7000, secret: SECRET, token: token(0xc1) },
    }, proxy);
    await until("the route over the punched path", () => !!registry.fabric.route(proxy, F));
    assertEquals(Object.keys(await registry.dataPath.udpStates()).length, 1);
    connect(dialled);
    await until(
      "the route over the direct link",
      () => registry.fabric.route(proxy, F) === dialled,
    );
    await until(
      "the punched path closed",
      async () => Object.keys(await registry.dataPath.udpStates()).length === 0,
    );
  } finally {
    direct.close();
    await registry.dataPath.stop();
  }
});

Deno.test("direct, Host: a direct link that takes one MAC of a punched path takes it whole", async () => {
  const host = await withDialledLink();
  const { dialled, connect, direct, registry } = host;
  try {
    const F1 = "02:5e:00:00:08:01", F2 = "02:5e:00:00:08:02";
    const { proxy, vm2 } = await twoVmsTalkTo(host, F1, F2);
    const udp = { host: "192.0.2.7", port: 7000, secret: SECRET, token: token(0xd1) };
    // VM2's pair is offered without a dial (say, its Host was dialling too much at the time):
    // the punched path alone carries it, and lets VM2's frames in.
    direct.route({
      handler: "0000000b",
      mac: F2,
      peer: "192.0.2.7:7000",
      remote: "0000000d",
      token: token(2),
      dial: false,
      udp,
    }, proxy);
    await until("F2 over the punched path", () => !!registry.fabric.route(proxy, F2));
    const punched = registry.fabric.route(proxy, F2);
    direct.route({
      handler: "0000000a",
      mac: F1,
      peer: "192.0.2.7:7000",
      remote: "0000000c",
      token: token(1),
      dial: true,
      udp,
    }, proxy);
    await until("F1 over the punched path", () => registry.fabric.route(proxy, F1) === punched);
    connect(dialled);
    await until("F1 over the direct link", () => registry.fabric.route(proxy, F1) === dialled);
    // F2 went with it, and the path closed: the far Host, which closes its end too when its
    // own announcement completes, must find no route here over a path that is gone.
    assertEquals(registry.fabric.route(proxy, F2), dialled);
    await until(
      "the punched path closed",
      async () => Object.keys(await registry.dataPath.udpStates()).length === 0,
    );
    // The far Host's frames for VM2 come over the direct link now: they are let in.
    await letIn(registry, dialled, vm2, F2, "a frame for VM2 from the direct link let in");
  } finally {
    direct.close();
    await registry.dataPath.stop();
  }
});

Deno.test("direct, Host: a link to a Host already dialled serves every pair announced", async () => {
  let dials = 0;
  const dialled = link("direct");
  dialled.close = () => {};
  const { direct, open, receive } = setup(() => {
    dials++;
    return Promise.resolve(dialled);
  });
  const proxy = link("proxy");
  const vm = await open("0000000a", "host", [VM1], proxy);
  const far = (i: number) => `02:5e:00:00:09:${i.toString(16).padStart(2, "0")}`;
  for (let i = 0; i < 10; i++) receive(vm, frame(VM1, far(i)));
  // Ten pairs with one far Host in a burst, each token presented over the one link: more than
  // the four dials a Proxy link may have in flight.
  for (let i = 0; i < 10; i++) {
    direct.route({
      handler: "0000000a",
      mac: far(i),
      peer: "192.0.2.7:7000",
      remote: "0000000c",
      token: token(0xe0 + i),
      dial: true,
    }, proxy);
  }
  await until("10 tokens presented", () => dialled.requests.length === 10);
  assertEquals(dials, 1);
  direct.close();
});

Deno.test("direct, Host: a pair announced again joins the path the two Hosts share", async () => {
  const host = setup();
  const { direct, registry } = host;
  await registry.dataPath.udpListen("127.0.0.1", 0);
  try {
    const F1 = "02:5e:00:00:0a:01", F2 = "02:5e:00:00:0a:02";
    const { proxy, vm2 } = await twoVmsTalkTo(host, F1, F2);
    const offer = (handler: string, mac: string, remote: string, udpToken: string, n: number) =>
      direct.route({
        handler,
        mac,
        peer: "192.0.2.7:7000",
        remote,
        token: token(n),
        dial: false,
        udp: { host: "192.0.2.7", port: 7000, secret: SECRET, token: udpToken },
      }, proxy);
    offer("0000000a", F1, "0000000c", token(0xf1), 1);
    await until("F1 over a punched path", () => !!registry.fabric.route(proxy, F1));
    const shared = registry.fabric.route(proxy, F1)!;
    // Not up yet: a fresh rendezvous for VM2's pair gets a path of its own, and VM2's frames
    // are let in on the first one too (the other Host may have taken the pair onto it).
    offer("0000000b", F2, "0000000d", token(0xf2), 2);
    await until("F2 over a second path", () => !!registry.fabric.route(proxy, F2));
    assert(registry.fabric.route(proxy, F2) !== shared, "F2 joined a path that is not up");
    await letIn(
      registry,
      shared as unknown as Link,
      vm2,
      F2,
      "a frame for VM2 from the first path let in",
    );
    // Up both ways: a pair announced again with a fresh rendezvous joins it.
    registry.dataPath.onPunched?.(shared.number, true, "both ways work");
    direct.unroute(F2, proxy);
    offer("0000000b", F2, "0000000d", token(0xf3), 3);
    await until("F2 over the shared path", () => registry.fabric.route(proxy, F2) === shared);
    assertEquals(Object.keys(await registry.dataPath.udpStates()).length, 2);
  } finally {
    direct.close();
    await registry.dataPath.stop();
  }
});

Deno.test("direct, Host: a direct link lets in every VM of the Proxy link that named it", async () => {
  const host = setup();
  const { direct, open, registry } = host;
  try {
    const F1 = "02:5e:00:00:0b:01", F2 = "02:5e:00:00:0b:02";
    const { proxy, vm1, vm2 } = await twoVmsTalkTo(host, F1, F2);
    // A VM of another Proxy's: the direct link's Proxy cannot reach it, nor can the link.
    const VM3 = "02:00:00:00:00:03";
    const vm3 = await open("0000000e", "host", [VM3], link("proxy2"), "eth0", "auto");
    direct.route({
      handler: "0000000a",
      mac: F1,
      peer: "192.0.2.7:7000",
      remote: "0000000c",
      token: token(0x11),
      dial: false,
    }, proxy);
    // The far Host dials and presents the token for VM1's pair only.
    const accepted = link("accepted");
    await direct.direct({ token: token(0x11), handler: "0000000a" }, accepted);
    assertEquals(registry.fabric.route(proxy, F1), accepted);
    // It sends VM2's frames on the link too (it moved the pair there when a punched path gave
    // way to the link, or took a pair this Host refused): they are let in, not lost for good.
    await letIn(registry, accepted, vm2, F2, "a frame for VM2 from the direct link let in");
    registry.dataPath.frameIn(accepted, vm1.number, frame(VM1, F1));
    registry.dataPath.frameIn(accepted, vm3.number, frame(VM3, F1));
    await until("VM1's frame in", () => vm1.counters().fromPeer.frames > 1);
    assertEquals(vm3.counters().fromPeer.frames, 0);
  } finally {
    direct.close();
    await registry.dataPath.stop();
  }
});

Deno.test("direct, Host: a dialled link a token is being presented over is not swept", async () => {
  let closed = "";
  const dialled = link("direct");
  dialled.close = (why?: string) => void (closed = why ?? "closed");
  const { direct, open, receive } = setup(() => Promise.resolve(dialled));
  const proxy = link("proxy");
  const vm = await open("0000000a", "host", [VM1], proxy);
  const F = "02:5e:00:00:0c:01";
  receive(vm, frame(VM1, F));
  try {
    direct.route({
      handler: "0000000a",
      mac: F,
      peer: "192.0.2.7:7000",
      remote: "0000000c",
      token: token(0x21),
      dial: true,
    }, proxy);
    // The far Host has the token and routes over the link once it answers; this end's route
    // comes after. Closed now, the far Host's route would go down with it.
    await until("the token presented", () => dialled.requests.length === 1);
    await direct.ageRoutes();
    await Promise.resolve();
    assertEquals(closed, "");
  } finally {
    direct.close();
  }
});
