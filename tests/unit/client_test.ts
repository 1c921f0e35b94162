/** The client's rate arithmetic and its table (src/cli/client.ts). No network, no root. */
import { assert, assertEquals, assertMatch } from "./assert.ts";
import { canCarryHandler, computeRates, handlerTable, si } from "../../src/cli/client.ts";
import { listedHandler } from "./listed_handler.ts";
import { type ListedHandler } from "../../src/control/rpc.ts";

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

  const table = handlerTable(b.handlers, r, true);
  assertMatch(table, /RTT .*TO PEER rate +FROM PEER rate/);
  assertMatch(table, /1\.50 ms/);
  assertMatch(table, /100 fr\/s 1\.00 Mbit\/s +0 fr\/s 0 bit\/s/);
  assert(!handlerTable(b.handlers, null, true).includes("rate"));
  assertEquals(handlerTable([], null), "no handlers");
  // The default table: bits/s each way.
  assertMatch(handlerTable(b.handlers, r), /BIT\/S TO\/FROM[^]*1\.00M\/0 /);
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

Deno.test("client table: drop reasons as the server names them, CONFLICTS only when any", () => {
  const quiet = listedHandler({
    id: "00000001",
    dropReasons: { link: 0, aqm: 0, truncated: 0, offload: 0, inject: 0, foreignMac: 0, loop: 0 },
  });
  const plain = handlerTable([quiet], null, true);
  assert(!plain.includes("DROPS BY REASON"), plain);
  assert(!plain.includes("CONFLICTS"), plain);

  // A reason this client was built without (a newer server) is shown like the known ones.
  const dropping = listedHandler({
    id: "00000002",
    dropReasons: {
      link: 2,
      aqm: 0,
      truncated: 0,
      offload: 0,
      inject: 1,
      foreignMac: 0,
      loop: 0,
      spoofed: 7,
    } as ListedHandler[
      "dropReasons"
    ],
    macConflicts: 5,
  });
  const text = handlerTable([quiet, dropping], null, true);
  const [header, first, second] = text.split("\n");
  const column = (row: string, name: string) => row.slice(header.indexOf(name)).split(/\s{2,}/)[0];
  assertEquals(column(second, "DROPS BY REASON"), "link 2, inject 1, spoofed 7");
  assertEquals(column(first, "DROPS BY REASON"), "-");
  assertEquals(column(second, "CONFLICTS"), "5");
  assertEquals(column(first, "CONFLICTS"), "0");
  // A server that does not count conflicts yet sends no field: no column, no "undefined".
  const old = listedHandler({ macConflicts: undefined as unknown as number });
  assert(!handlerTable([old], null, true).includes("CONFLICTS"));
  assert(!handlerTable([old], null, true).includes("undefined"));
});

Deno.test("client table: fits 100 columns by default; --wide shows every column", () => {
  // Long but ordinary values: a 15-byte device name, the longest IPv4 peer, several MACs.
  const handlers = [
    listedHandler({
      device: "enp129s0f1np1.9",
      peer: "203.113.255.255:65535",
      macs: ["02:00:00:00:00:01", "02:00:00:00:00:02", "02:00:00:00:00:03"],
      multicast: true,
      reconnects: 0,
      toPeer: { frames: 123_456_789, bytes: 987_654_321_000, drops: 12_345 },
      fromPeer: { frames: 123_456_789, bytes: 987_654_321_000, drops: 12_345 },
    }),
    listedHandler({ id: "00000002", role: "host" }),
  ];
  const rates = new Map(handlers.map((h) => [h.id, {
    toPeer: { framesPerSecond: 812_345, bitsPerSecond: 9_412_345_678 },
    fromPeer: { framesPerSecond: 812_345, bitsPerSecond: 9_412_345_678 },
  }]));
  for (const r of [rates, null]) {
    const text = handlerTable(handlers, r);
    const widest = Math.max(...text.split("\n").map((l) => l.length));
    assert(widest <= 100, `${widest} columns:\n${text}`);
  }
  const wide = handlerTable(handlers, rates, true);
  assert(Math.max(...wide.split("\n").map((l) => l.length)) > 100, wide);
  for (const column of ["RTT", "TO PEER frames/bytes/drops", "DROPS BY REASON", "TO PEER rate"]) {
    assert(wide.includes(column), `--wide lacks ${column}:\n${wide}`);
  }
});

Deno.test("client watch: the first snapshot (no rates yet) has the same header as the next", () => {
  const h = [listedHandler()];
  const later = new Map([[h[0].id, {
    toPeer: { framesPerSecond: 1, bitsPerSecond: 8 },
    fromPeer: { framesPerSecond: 1, bitsPerSecond: 8 },
  }]]);
  for (const wide of [false, true]) {
    const columns = (rates: Map<string, unknown>) =>
      handlerTable(h, rates as typeof later, wide).split("\n")[0].split(/\s{2,}/);
    assertEquals(columns(new Map()), columns(later));
  }
});

Deno.test("client devices: only interfaces that can carry a handler, unless --all", () => {
  const devices = [
    { name: "eth0", mac: "52:54:00:12:34:56", up: true, running: true, mtu: 1500 },
    { name: "lo", mac: "00:00:00:00:00:00", loopback: true, mtu: 65536 },
    { name: "any" },
    { name: "nflog" },
    { name: "nfqueue" },
    { name: "dbus-system" },
    { name: "bluetooth-monitor" },
  ];
  assertEquals(devices.filter(canCarryHandler).map((d) => d.name), ["eth0"]);
});

Deno.test("client table: a Host's direct paths by transport, DIRECT only when any", () => {
  const path = (mac: string, via: "direct" | "proxy", transport: "udp" | "tcp" | null) => ({
    mac,
    via,
    peer: "10.78.0.12:7000",
    frames: 1,
    bytes: 100,
    viaProxy: { frames: 0, bytes: 0 },
    viaDirect: { frames: 1, bytes: 100 },
    transport,
    udp: null,
  });
  const proxied = listedHandler({
    id: "00000001",
    role: "host",
    paths: [path("02:00:00:00:00:0c", "proxy", null)],
  });
  assert(!handlerTable([proxied], null, true).includes("DIRECT"));
  const host = listedHandler({
    id: "00000002",
    role: "host",
    paths: [
      path("02:00:00:00:00:0a", "direct", "udp"),
      path("02:00:00:00:00:0b", "direct", "tcp"),
      path("02:00:00:00:00:0c", "proxy", null),
    ],
  });
  const text = handlerTable([proxied, host], null, true);
  const [header, first, second] = text.split("\n");
  const column = (row: string) => row.slice(header.indexOf("DIRECT")).trim();
  assertEquals(column(first), "-");
  assertEquals(column(second), "2 (1 udp, 1 tcp)");
});
