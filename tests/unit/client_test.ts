/** The client's rate arithmetic and its table (src/cli/client.ts). No network, no root. */
import { assert, assertEquals, assertMatch } from "./assert.ts";
import { computeRates, handlerTable, si } from "../../src/cli/client.ts";
import { listedHandler } from "./listed_handler.ts";

Deno.test("client rates: from two samples; gone or restarted handlers have none", () => {
  const a = { at: 1000, handlers: [listedHandler(), listedHandler({ id: "00000002" })] };
  const b = {
    at: 3000,
    handlers: [
      listedHandler({
        toPeer: { frames: 210, bytes: 251000, drops: 3 },
        fromPeer: { frames: 20, bytes: 4000, drops: 1 },
      }),
      listedHandler({ id: "00000002", toPeer: { frames: 1, bytes: 60, drops: 0 } }),
      listedHandler({ id: "00000003" }),
    ],
  };
  const r = computeRates(a, b);
  assertEquals(r.get("0a0b0c0d"), {
    toPeer: { framesPerSecond: 100, bitsPerSecond: 1_000_000 },
    fromPeer: { framesPerSecond: 0, bitsPerSecond: 0 },
  });
  assertEquals(r.has("00000002"), false);
  assertEquals(r.has("00000003"), false);
  assertEquals(computeRates(a, { ...a }).size, 0);

  const table = handlerTable(b.handlers, r);
  assertMatch(table, /RTT .*TO PEER rate +FROM PEER rate/);
  assertMatch(table, /1\.50 ms/);
  assertMatch(table, /100 fr\/s 1\.00 Mbit\/s +0 fr\/s 0 bit\/s/);
  assert(!handlerTable(b.handlers, null).includes("rate"));
  assertEquals(handlerTable([], null), "no handlers");
});

Deno.test("client rates: SI formatting", () => {
  assertEquals(si(0), "0");
  assertEquals(si(2.5), "2.5");
  assertEquals(si(999), "999");
  assertEquals(si(1000), "1.00k");
  assertEquals(si(12_345), "12.3k");
  assertEquals(si(987_654_321), "988M");
  assertEquals(si(9_400_000_000), "9.40G");
});
