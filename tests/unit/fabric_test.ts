/**
 * The switch fabric (src/dataplane/fabric.ts), with stand-in handlers: what is switched, what
 * is put on the interface, what is a loop, and where a Host's captured frame goes.
 */
import { assert, assertEquals } from "./assert.ts";
import { Fabric, type FabricPort, LoopGuard, Verdict } from "../../src/dataplane/fabric.ts";
import { macBytes } from "../../src/dataplane/mac.ts";
import { type Link } from "../../src/link/link.ts";

const VM1 = "02:00:00:00:00:01", VM2 = "02:00:00:00:00:02", VM3 = "02:00:00:00:00:03";
const LAN = "02:aa:00:00:00:99";
const BCAST = "ff:ff:ff:ff:ff:ff", MCAST = "33:33:00:00:00:01";

/** A stand-in link: open, remembered by name. */
function link(name: string): Link {
  return { isOpen: true, remote: name, sendFrame: () => true } as unknown as Link;
}

class Port implements FabricPort {
  readonly sent: string[] = [];
  readonly delivered: string[] = [];
  constructor(
    readonly number: number,
    readonly role: "proxy" | "host",
    readonly macs: string[],
    readonly link: Link | null,
    readonly multicast = false,
    readonly device = "eth0",
  ) {}
  sendToPeer(frame: Uint8Array): boolean {
    this.sent.push(`${mac(frame, 0)}<-${mac(frame, 6)}`);
    return true;
  }
  deliver(frame: Uint8Array): void {
    this.delivered.push(`${mac(frame, 0)}<-${mac(frame, 6)}`);
  }
}

function mac(frame: Uint8Array, at: number): string {
  return Array.from(frame.subarray(at, at + 6), (b) => b.toString(16).padStart(2, "0")).join(":");
}

function frame(dst: string, src: string, body = 0): Uint8Array {
  const f = new Uint8Array(60);
  f.set(macBytes(dst), 0);
  f.set(macBytes(src), 6);
  f[20] = body;
  return f;
}

Deno.test("fabric, Proxy: known unicast is switched to its handler only, never flooded", () => {
  const fabric = new Fabric();
  const a = new Port(1, "proxy", [VM1], link("hostA"));
  const b = new Port(2, "proxy", [VM2], link("hostB"));
  const c = new Port(3, "proxy", [VM3], link("hostC"));
  for (const p of [a, b, c]) fabric.join(p);
  const switched: string[] = [];
  fabric.onSwitched = (from, to) => switched.push(`${from.number}->${to.number}`);
  assertEquals(fabric.fromPeer(a, frame(VM2, VM1)), Verdict.Switched);
  assertEquals(b.sent, [`${VM2}<-${VM1}`]);
  assertEquals(c.sent, []);
  assertEquals(switched, ["1->2"]);
  // To the LAN (or a MAC nobody here carries): put on the interface, switched nowhere.
  assertEquals(fabric.fromPeer(a, frame(LAN, VM1)), Verdict.Inject);
  assertEquals(b.sent.length + c.sent.length, 1);
});

Deno.test("fabric, Proxy: broadcast goes to the LAN and every other handler, multicast to those that asked", () => {
  const fabric = new Fabric();
  const a = new Port(1, "proxy", [VM1], link("hostA"));
  const b = new Port(2, "proxy", [VM2], link("hostB"), true);
  const c = new Port(3, "proxy", [VM3], link("hostC"), false);
  const other = new Port(4, "proxy", ["02:00:00:00:00:04"], link("hostD"), true, "eth1");
  for (const p of [a, b, c, other]) fabric.join(p);
  assertEquals(fabric.fromPeer(a, frame(BCAST, VM1)), Verdict.Inject);
  assertEquals([a.sent.length, b.sent.length, c.sent.length], [0, 1, 1]);
  assertEquals(fabric.fromPeer(a, frame(MCAST, VM1)), Verdict.Inject);
  assertEquals([a.sent.length, b.sent.length, c.sent.length], [0, 2, 1]);
  assertEquals(other.sent, [], "another device's handler got a frame");
  // Between two handlers on one peer link: switched, but no direct path to offer.
  const same = link("hostA");
  const fabric2 = new Fabric();
  const x = new Port(5, "proxy", [VM1], same), y = new Port(6, "proxy", [VM2], same);
  fabric2.join(x);
  fabric2.join(y);
  let offered = 0;
  fabric2.onSwitched = () => offered++;
  assertEquals(fabric2.fromPeer(x, frame(VM2, VM1)), Verdict.Switched);
  assertEquals(offered, 0);
  // A handler that left is no longer switched to.
  fabric.leave(b);
  assertEquals(fabric.fromPeer(a, frame(VM2, VM1)), Verdict.Inject);
});

Deno.test("fabric, Proxy: a broadcast goes once to each Host, never back to its own", () => {
  const fabric = new Fabric();
  const hostA = link("hostA"), hostB = link("hostB");
  const a1 = new Port(1, "proxy", [VM1], hostA), a2 = new Port(2, "proxy", [VM2], hostA);
  const b1 = new Port(3, "proxy", [VM3], hostB);
  const b2 = new Port(4, "proxy", ["02:00:00:00:00:04"], hostB);
  for (const p of [a1, a2, b1, b2]) fabric.join(p);
  assertEquals(fabric.fromPeer(a1, frame(BCAST, VM1)), Verdict.Inject);
  assertEquals([a2.sent.length, b1.sent.length + b2.sent.length], [0, 1]);
});

Deno.test("fabric, Host: broadcasts reach its other devices on the same link, once", () => {
  const fabric = new Fabric();
  const proxy = link("proxy"), other = link("proxy2");
  const a = new Port(1, "host", [VM1], proxy, false, "vif1");
  const b = new Port(2, "host", [VM2], proxy, false, "vif2");
  const c = new Port(3, "host", [VM3], other, false, "vif3");
  for (const p of [a, b, c]) fabric.join(p);
  // From the Proxy through a: put on vif1 (by a), and on vif2 (same link), not on vif3.
  assertEquals(fabric.fromPeer(a, frame(BCAST, LAN, 1)), Verdict.Inject);
  assertEquals([b.delivered.length, c.delivered.length], [1, 0]);
  // VM1's own broadcast, captured on vif1: handed to vif2 here (the Proxy won't send it back).
  assertEquals(fabric.toward(a, frame(BCAST, VM1, 2)), null);
  assertEquals(b.delivered.length, 2);
  // VM1 to VM2 (another device, same link): delivered here, not sent to the Proxy.
  assertEquals(fabric.toward(a, frame(VM2, VM1)), "local");
  assertEquals(b.delivered.at(-1), `${VM2}<-${VM1}`);
  // VM1 to VM3 (another link: another LAN): not local.
  assertEquals(fabric.toward(a, frame(VM3, VM1)), null);
});

Deno.test("fabric, Host: a VM's own frame coming back, and a broadcast twice, are loops", () => {
  const fabric = new Fabric();
  const a = new Port(1, "host", [VM1], link("proxy"));
  const b = new Port(2, "host", [VM2], link("proxy"));
  fabric.join(a);
  fabric.join(b);
  // VM1's broadcast, switched back by the Proxy through b: VM1 is on this device.
  assertEquals(fabric.fromPeer(b, frame(BCAST, VM1)), Verdict.Loop);
  // A LAN broadcast arrives through both handlers of the device: once on the wire.
  assertEquals(fabric.fromPeer(a, frame(BCAST, LAN, 7)), Verdict.Inject);
  assertEquals(fabric.fromPeer(b, frame(BCAST, LAN, 7)), Verdict.Loop);
  assertEquals(fabric.fromPeer(b, frame(BCAST, LAN, 8)), Verdict.Inject, "another broadcast");
  assertEquals(fabric.fromPeer(a, frame(VM1, LAN)), Verdict.Inject);
});

Deno.test("fabric, Host capture: local VMs stay local; learned MACs have a path, direct while up", () => {
  const fabric = new Fabric();
  const proxy = link("proxy");
  const a = new Port(1, "host", [VM1], proxy);
  const b = new Port(2, "host", [VM2], proxy);
  fabric.join(a);
  fabric.join(b);
  assertEquals(fabric.toward(a, frame(VM2, VM1)), "local");
  assertEquals(fabric.toward(a, frame(VM3, VM1)), null);
  assertEquals(fabric.toward(a, frame(BCAST, VM1)), null);
  // VM3 is learned from a frame the Proxy sends: a path through the Proxy, counted.
  assertEquals(fabric.fromPeer(a, frame(VM1, VM3)), Verdict.Inject);
  assertEquals(fabric.toward(a, frame(VM3, VM1)), null);
  const learned = fabric.paths();
  assertEquals(learned.map((p) => [p.mac, p.direct, p.viaProxy.frames]), [[VM3, null, 1]]);
  // A direct route: used while its link is open.
  const direct = link("hostB");
  assert(fabric.addRoute(proxy, VM3, direct, "hostB:7000", 0x33), "the route was refused");
  const path = fabric.toward(a, frame(VM3, VM1));
  assert(path !== null && path !== "local" && path.direct?.number === 0x33, "no direct route");
  (direct as { isOpen: boolean }).isOpen = false;
  assertEquals(fabric.toward(a, frame(VM3, VM1)), null, "a closed route was used");
  // The link goes: back through the Proxy, and the path is still listed.
  assertEquals(fabric.removeRoutesOver(direct).map((p) => p.mac), [VM3]);
  assertEquals(fabric.paths().map((p) => [p.mac, p.direct]), [[VM3, null]]);
  assertEquals(fabric.paths()[0].viaProxy.frames, 2);
});

Deno.test("fabric: idle paths age out, busy ones stay", () => {
  const fabric = new Fabric();
  const proxy = link("proxy");
  const a = new Port(1, "host", [VM1], proxy);
  fabric.join(a);
  fabric.fromPeer(a, frame(VM1, VM2));
  fabric.fromPeer(a, frame(VM1, VM3));
  fabric.addRoute(proxy, VM2, link("b"), "b:7000", 2);
  fabric.addRoute(proxy, VM3, link("c"), "c:7000", 3);
  const every = 60_000;
  const busy = () => fabric.paths().find((p) => p.mac === VM3)!.viaDirect.frames++;
  for (let i = 0; i < 4; i++) {
    busy();
    assertEquals(fabric.sweep(every), []);
  }
  busy();
  assertEquals(fabric.sweep(every).map((gone) => gone.path.mac), [VM2]);
  assertEquals(fabric.paths().map((p) => p.mac), [VM3]);
});

Deno.test("loop guard: the same broadcast within the window is a repeat; others are not", () => {
  const guard = new LoopGuard();
  const f = frame(BCAST, LAN, 1);
  assert(!guard.repeat(f), "a first sighting was a repeat");
  assert(guard.repeat(f.slice()), "the same frame again was not a repeat");
  assert(!guard.repeat(frame(BCAST, LAN, 2)), "another frame was a repeat");
  for (let i = 0; i < 100; i++) guard.remember(frame(BCAST, LAN, 10 + (i % 200)));
  assert(!guard.seen(f), "the ring kept a frame past its size");
});

Deno.test("loop guard: copies of a broadcast whose TCP or UDP checksum differs are repeats", () => {
  // mDNS to 224.0.0.251 (UDP, IPv4), an IPv6 multicast UDP frame, and TCP under a VLAN tag: each
  // once with its checksum complete and once with another value there (one copy came by a UDP
  // path that left it to the receiver), and the other bytes the same.
  const mdns = new Uint8Array(80);
  mdns.set([1, 0, 0x5e, 0, 0, 0xfb, 2, 0, 0, 0, 0, 9, 0x08, 0x00, 0x45, 0, 0, 66, 0, 0, 0x40, 0]);
  mdns.set([255, 17, 0, 0, 10, 0, 0, 9, 224, 0, 0, 251, 0x14, 0xe9, 0x14, 0xe9, 0, 46], 22);
  const v6 = new Uint8Array(90);
  v6.set([0x33, 0x33, 0, 0, 0, 0xfb, 2, 0, 0, 0, 0, 9, 0x86, 0xdd, 0x60, 0, 0, 0, 0, 36, 17, 255]);
  const tagged = new Uint8Array(100);
  tagged.set([0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 2, 0, 0, 0, 0, 9, 0x81, 0, 0, 5, 0x08, 0]);
  tagged.set([0x45, 0, 0, 82, 0, 0, 0x40, 0, 64, 6], 18);
  for (const [f, at] of [[mdns, 40], [v6, 60], [tagged, 54]] as const) {
    f[at] = 0x12;
    f[at + 1] = 0x34;
    const guard = new LoopGuard();
    assert(!guard.repeat(f), "a first sighting was a repeat");
    const partial = f.slice();
    partial[at] = 0xab;
    partial[at + 1] = 0xcd;
    assert(guard.repeat(partial), `a copy with another checksum at ${at} was not a repeat`);
    // Any other byte still tells frames apart.
    const other = f.slice();
    other[at + 2] ^= 1;
    assert(!guard.repeat(other), `a frame differing at ${at + 2} was a repeat`);
  }
});

Deno.test("fabric, Host: a route steers only the handlers of the Proxy link that offered it", () => {
  const fabric = new Fabric();
  const proxy = link("proxy"), rogue = link("rogue");
  const a = new Port(1, "host", [VM1], proxy, false, "vif1");
  const r = new Port(2, "host", [VM2], rogue, false, "vif2");
  fabric.join(a);
  fabric.join(r);
  // VM1 talks to the LAN's gateway through its Proxy.
  fabric.fromPeer(a, frame(VM1, LAN));
  assertEquals(fabric.toward(a, frame(LAN, VM1)), null);
  // A rogue that never sent a frame from the gateway's MAC cannot route it at all.
  assert(!fabric.addRoute(rogue, LAN, link("thief"), "thief:7000", 9), "an unlearned route");
  // One that did routes it for its own handler only: VM1's frames still go to its Proxy.
  fabric.fromPeer(r, frame(VM2, LAN));
  const thief = link("thief");
  assert(fabric.addRoute(rogue, LAN, thief, "thief:7000", 9), "the rogue's own route");
  assertEquals(fabric.toward(a, frame(LAN, VM1)), null, "VM1's frame was diverted");
  const own = fabric.toward(r, frame(LAN, VM2));
  assert(own !== null && own !== "local" && own.direct?.link === thief, "not scoped to r");
  assertEquals(fabric.paths(proxy).map((p) => p.direct), [null]);
  // The rogue's link closes: what was learned over it goes.
  fabric.forgetLink(rogue);
  assertEquals(fabric.paths(rogue), []);
  assertEquals(fabric.paths().length, 1);
});

Deno.test("fabric, Proxy: a Host's broadcast come back over the LAN to another device is a loop", () => {
  const fabric = new Fabric();
  const host = link("host"), other = link("host2");
  const vm1 = new Port(1, "proxy", [VM1], host, false, "lan0");
  const vm2 = new Port(2, "proxy", [VM2], host, false, "lan1");
  const vm3 = new Port(3, "proxy", [VM3], other, false, "lan1");
  const vm4 = new Port(4, "proxy", ["02:00:00:00:00:04"], host, false, "lan0");
  for (const p of [vm1, vm2, vm3, vm4]) fabric.join(p);
  // VM1's broadcast, put on lan0 and flooded to lan1: its Host already gave it to VM2.
  assert(fabric.handedOver(vm2, frame(BCAST, VM1)), "VM2 would see it twice");
  // VM3 is behind another Host: only the LAN brings it there.
  assert(!fabric.handedOver(vm3, frame(BCAST, VM1)), "VM3 would not see it");
  // On VM1's own device the capture never sees it (the Proxy's own injection).
  assert(!fabric.handedOver(vm4, frame(BCAST, VM1)), "same device");
  assert(!fabric.handedOver(vm2, frame(BCAST, LAN)), "a LAN broadcast is not a loop");
});
