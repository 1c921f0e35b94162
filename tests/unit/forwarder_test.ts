/**
 * The data-path worker's Forwarder (src/dataplane/forwarder.ts), driven on this thread: its
 * housekeeping tick.
 */
import { assertEquals } from "./assert.ts";
import { Forwarder } from "../../src/dataplane/forwarder.ts";
import { fakeInterfaces } from "../../src/dataplane/fake_ports.ts";
import { Logger } from "../../src/log.ts";

Deno.test("forwarder tick: asks whether the interfaces are there once a second, not per tick", () => {
  let checks = 0;
  const ports = { ...fakeInterfaces(), check: () => checks++ };
  const forwarder = new Forwarder(ports, new Float64Array(64), () => false, () => {}, new Logger());
  // A busy UDP path's ticks, 250 ms apart, then the second's.
  for (const at of [0, 250, 500, 750, 999]) forwarder.tick(0, 10_000 + at);
  assertEquals(checks, 1);
  forwarder.tick(0, 11_000);
  assertEquals(checks, 2);
  forwarder.tick(0, 11_250);
  assertEquals(checks, 2);
});
