import { assertEquals, assertThrows } from "./assert.ts";
import { buildFilter, conflictFilter } from "../../src/dataplane/filter.ts";
import { isBroadcastFrame, isMulticast, MacSet, parseMac } from "../../src/dataplane/mac.ts";
import { parseHostPort } from "../../src/addr.ts";

Deno.test("host role: frames from the proxied MACs", () => {
  assertEquals(
    buildFilter("host", ["02:00:00:00:00:01", "02-00-00-00-00-02"], false),
    "ether src 02:00:00:00:00:01 or ether src 02:00:00:00:00:02",
  );
});

Deno.test("proxy role: to the MACs or broadcast, never from them", () => {
  assertEquals(
    buildFilter("proxy", ["02:00:00:00:00:01"], false),
    "(ether dst 02:00:00:00:00:01 or ether broadcast) and not (ether src 02:00:00:00:00:01)",
  );
});

Deno.test("proxy role with multicast", () => {
  assertEquals(
    buildFilter("proxy", ["02:00:00:00:00:01", "02:00:00:00:00:02"], true),
    "(ether dst 02:00:00:00:00:01 or ether dst 02:00:00:00:00:02 or ether multicast)" +
      " and not (ether src 02:00:00:00:00:01 or ether src 02:00:00:00:00:02)",
  );
});

Deno.test("proxy conflicts: frames received from the MACs; on Linux said in the filter", () => {
  assertEquals(
    conflictFilter(["02:00:00:00:00:01", "02-00-00-00-00-02"], "linux"),
    "inbound and (ether src 02:00:00:00:00:01 or ether src 02:00:00:00:00:02)",
  );
  // Elsewhere the kernel applies the capture's direction itself: no `inbound` (which BPF
  // there does not know for Ethernet).
  assertEquals(conflictFilter(["02:00:00:00:00:01"], "darwin"), "ether src 02:00:00:00:00:01");
  assertThrows(() => conflictFilter([]), /at least one MAC/);
});

Deno.test("MAC sets match frame bytes at the source and destination", () => {
  const set = new MacSet(["02:00:00:00:00:01", "03:00:00:00:00:01", "02:aa:bb:cc:dd:ee"]);
  const f = new Uint8Array(14);
  f.set([2, 0, 0, 0, 0, 1], 0);
  f.set([2, 0xaa, 0xbb, 0xcc, 0xdd, 0xee], 6);
  assertEquals([set.has(f, 0), set.has(f, 6)], [true, true]);
  f[0] = 4; // same low half as two members, another high half
  assertEquals(set.has(f, 0), false);
  f[0] = 3;
  assertEquals(set.has(f, 0), true);
  f[11] = 0xef;
  assertEquals(set.has(f, 6), false);
  assertEquals(isBroadcastFrame(new Uint8Array(14).fill(0xff)), true);
  assertEquals(isBroadcastFrame(Uint8Array.of(0xff, 0xff, 0xff, 0xff, 0xff, 0xfe)), false);
});

Deno.test("MAC parsing accepts common forms and refuses junk", () => {
  assertEquals(parseMac("02:AB:cd:0:1:ff"), "02:ab:cd:00:01:ff");
  assertEquals(parseMac("02-ab-cd-00-01-ff"), "02:ab:cd:00:01:ff");
  assertThrows(() => parseMac("02:ab:cd:00:01"), /bad MAC address '02:ab:cd:00:01'/);
  assertThrows(() => parseMac("02:ab:cd:00:01:zz"), /bad MAC/);
  assertThrows(() => parseMac("02:ab-cd:00:01:ff"), /bad MAC/);
  assertEquals(isMulticast("33:33:00:00:00:01"), true);
  assertEquals(isMulticast("02:00:00:00:00:01"), false);
});

Deno.test("ADDR:PORT parsing", () => {
  assertEquals(parseHostPort("10.0.0.1:7000", "--x"), { hostname: "10.0.0.1", port: 7000 });
  assertEquals(parseHostPort("[::1]:443", "--x"), { hostname: "::1", port: 443 });
  assertEquals(parseHostPort("vnet.example.org:1", "--x"), {
    hostname: "vnet.example.org",
    port: 1,
  });
  assertThrows(() => parseHostPort("10.0.0.1", "--listen"), /bad address '10.0.0.1' for --listen/);
  assertThrows(() => parseHostPort("10.0.0.1:0", "--listen"), /ADDR:PORT/);
  assertThrows(() => parseHostPort("10.0.0.1:99999", "--listen"), /ADDR:PORT/);
});
