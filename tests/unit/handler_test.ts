/**
 * The Handler's MAC policy (issue 9) on fake ports: what it injects from the peer, what it drops
 * as foreign, and the conflicts a Proxy counts and warns about.
 */
import { assert, assertEquals } from "./assert.ts";
import { Fabric } from "../../src/dataplane/fabric.ts";
import { Handler, type HandlerSpec } from "../../src/dataplane/handler.ts";
import { counterTable, HandlerCounters, readCounters } from "../../src/dataplane/counters.ts";
import { fakeInterfaces } from "../../src/dataplane/fake_ports.ts";
import { duplex } from "../../src/link/fake_stream.ts";
import { Link } from "../../src/link/link.ts";
import { MAX_MESSAGE, MessageReader } from "../../src/link/wire.ts";
import { Warnings } from "./warnings_log.ts";
import { macBytes } from "../../src/dataplane/mac.ts";

const VM1 = "02:00:00:00:00:01";
const VM2 = "02:00:00:00:00:02";
const OTHER = "02:00:00:00:00:99";
const LAN = "02:aa:00:00:00:09";
const BCAST = "ff:ff:ff:ff:ff:ff";
const MCAST = "33:33:00:00:00:01";

/** An ARP-sized frame from `src` to `dst`. */
function frame(dst: string, src: string): Uint8Array {
  const f = new Uint8Array(60);
  f.set(macBytes(dst), 0);
  f.set(macBytes(src), 6);
  f[12] = 0x08;
  f[13] = 0x06;
  return f;
}

function open(role: "proxy" | "host", multicast = false) {
  const ports = fakeInterfaces(["eth0"]);
  const spec: HandlerSpec = {
    id: "0000000a",
    role,
    device: "eth0",
    macs: [VM1, VM2],
    multicast,
    peer: "test",
  };
  const log = new Warnings();
  const table = counterTable();
  const handler = new Handler(spec, ports, new Fabric(), new HandlerCounters(table, 0), log);
  return {
    info: () => readCounters(table, 0),
    handler,
    injector: ports.injectors[0],
    capture: ports.captures[0].capture,
    log,
  };
}

/** Which of `frames` the handler injected, as "dst<-src" of their last bytes. */
function injectedOf(injected: Uint8Array[]): string[] {
  return injected.map((f) => `${f[5].toString(16)}<-${f[11].toString(16)}`);
}

Deno.test("a Proxy injects only frames from its MACs; the rest are foreignMac drops", async () => {
  const { handler, info, injector } = open("proxy");
  handler.receive(frame(LAN, VM1));
  handler.receive(frame(BCAST, VM2));
  handler.receive(frame(LAN, OTHER)); // the Host speaking as someone else
  handler.receive(frame(LAN, LAN)); // ... as a LAN host
  handler.receive(frame(VM1, BCAST)); // a broadcast source: never a VM
  assertEquals(injectedOf(injector.injected), ["9<-1", "ff<-2"]);
  const counted = info();
  assertEquals(counted.dropReasons.foreignMac, 3);
  assertEquals(counted.fromPeer, { frames: 5, bytes: 300, drops: 3 });
  await handler.close();
});

Deno.test("a Host injects only frames to its MACs and broadcast; multicast only if asked", async () => {
  for (const multicast of [false, true]) {
    const { handler, info, injector } = open("host", multicast);
    handler.receive(frame(VM1, LAN));
    handler.receive(frame(VM2, LAN));
    handler.receive(frame(BCAST, LAN));
    handler.receive(frame(MCAST, LAN));
    handler.receive(frame(OTHER, LAN)); // for a VM this Host does not carry
    handler.receive(frame(LAN, VM1)); // back to the LAN: not a frame for a VM
    const expected = ["1<-9", "2<-9", "ff<-9", ...(multicast ? ["1<-9"] : [])];
    assertEquals(injectedOf(injector.injected), expected, `multicast ${multicast}`);
    assertEquals(info().dropReasons.foreignMac, multicast ? 2 : 3);
    await handler.close();
  }
});

Deno.test("frames too short for two MACs are the offload check's to drop, not foreign", async () => {
  const { handler, info, injector } = open("proxy");
  handler.receive(new Uint8Array(10));
  assertEquals(injector.injected.length, 0);
  assertEquals(info().dropReasons.foreignMac, 0);
  assertEquals(info().dropReasons.offload, 1);
  await handler.close();
});

Deno.test({
  name: "a Proxy counts frames from its MACs on the LAN as conflicts, warns once a minute",
  sanitizeOps: false,
  sanitizeResources: false,
  fn: async () => {
    const { handler, info, capture, log } = open("proxy");
    const [a, b] = duplex();
    const link = new Link(a, new MessageReader(a, MAX_MESSAGE), {
      remote: "test",
      tls: false,
      log,
      events: { onFrame: () => {}, onRequest: () => Promise.resolve({}), onClose: () => {} },
    });
    handler.attach(link);
    assertEquals(info().macConflicts, 0);
    for (let i = 0; i < 5; i++) assert(capture.conflict(frame(BCAST, VM2)), "no conflict sink");
    const counted = info();
    assertEquals(counted.macConflicts, 5);
    // Counted, never forwarded: nothing went to the peer.
    assertEquals(counted.toPeer.frames, 0);
    const warns = log.lines.filter((l) => l.msg.startsWith("MAC conflict"));
    assertEquals(warns.length, 1, JSON.stringify(log.lines));
    assertEquals(warns[0].fields.mac, VM2);
    assertEquals(warns[0].fields.conflicts, 1);
    await handler.close();
    link.close("done");
    b.close();
  },
});
