import { assertEquals, assertThrows } from "./assert.ts";
import { buildFilter } from "../../src/dataplane/filter.ts";
import { isMulticast, parseMac } from "../../src/dataplane/mac.ts";
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
