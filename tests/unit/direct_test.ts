/**
 * Direct paths' authority and bounds (src/control/direct.ts, issue 19), with stand-in links:
 * offers in flight on a Proxy, and what a Host takes from "the Proxy" of a handler.
 */
import { assert, assertEquals, assertThrows } from "./assert.ts";
import { DirectPaths } from "../../src/control/direct.ts";
import { Registry } from "../../src/control/registry.ts";
import { fakeInterfaces } from "../../src/dataplane/fake_ports.ts";
import { DataPath, type HandlerRef, InProcessForwarder } from "../../src/dataplane/data_path.ts";
import { macBytes } from "../../src/dataplane/mac.ts";
import { type Link } from "../../src/link/link.ts";
import { Warnings } from "./warnings_log.ts";

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
  ) => {
    const entry = await registry.open(
      { id, role, device, macs, multicast: false, peer: `${id}-peer:7000` },
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
  const { direct, open, receive } = setup();
  const rogue = link("rogue"), host = link("host");
  const macs = Array.from(
    { length: 48 },
    (_, i) => `02:68:00:00:00:${i.toString(16).padStart(2, "0")}`,
  );
  const a = await open("0000000a", "proxy", macs, rogue);
  await open("0000000b", "proxy", [VM2], host);
  for (const m of macs) receive(a, frame(VM2, m));
  // Announcements go out once the rendezvous (the links' UDP paths) is looked up.
  await new Promise((r) => setTimeout(r, 0));
  assertEquals(rogue.requests.filter((r) => r.op === "route").length, 8);
  assertEquals(host.requests.filter((r) => r.op === "route").length, 8);
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
    const vm = await open("0000000a", "host", [VM1], proxy);
    const far = (i: number) => `02:5e:00:00:03:${i.toString(16).padStart(2, "0")}`;
    for (let i = 0; i < 12; i++) receive(vm, frame(VM1, far(i)));
    const secret = btoa(String.fromCharCode(...new Uint8Array(32).fill(9)));
    const offer = (i: number, host: string, l = proxy) =>
      direct.route({
        handler: "0000000a",
        mac: far(i),
        peer: "10.0.0.9:7000",
        remote: "0000000c",
        token: (100 + i).toString(16).padStart(32, "0"),
        dial: false,
        udp: { host, port: 7000, secret },
      }, l);
    const settle = () => new Promise((r) => setTimeout(r, 10));
    // Never to this server itself, nor to a multicast group.
    offer(0, "127.0.0.1");
    offer(1, "224.0.0.1");
    await settle();
    assertEquals(registry.fabric.route(proxy, far(0)), undefined);
    assertEquals(registry.fabric.route(proxy, far(1)), undefined);
    assert(
      log.lines.some((l) => l.msg === "direct path offer refused" && l.fields.mac === far(0)),
      "no WARN for a loopback rendezvous",
    );
    // 8 on one Proxy link; the route goes over each, shown as the endpoint it punches to.
    for (let i = 2; i < 12; i++) offer(i, "192.0.2.7");
    await settle();
    const routed = Array.from({ length: 12 }, (_, i) => registry.fabric.route(proxy, far(i)))
      .filter((r) => r !== undefined);
    assertEquals(routed.length, 8);
    for (const r of routed) assertEquals(r.remote, "udp 192.0.2.7:7000");
    // Not up yet: the VM's frames still go through the Proxy.
    const [state] = Object.values(await registry.dataPath.states());
    assert(state.paths.every((p) => p.via === "proxy"), JSON.stringify(state.paths));
    // The Proxy forgets a MAC: its punched path goes with its route.
    assertEquals(Object.keys(await registry.dataPath.udpStates()).length, 8);
    direct.unroute(far(2), proxy);
    await settle();
    assertEquals(registry.fabric.route(proxy, far(2)), undefined);
    assertEquals(Object.keys(await registry.dataPath.udpStates()).length, 7);
  } finally {
    direct.close();
    await registry.dataPath.stop();
  }
});
