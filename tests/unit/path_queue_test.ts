/**
 * The queue a UDP path builds (src/dataplane/path_queue.ts): the one-way delay's figure above
 * its floor, and CoDel's control law on what the peer reports.
 */
import { assert, assertEquals } from "./assert.ts";
import {
  decodeDelay,
  encodeDelay,
  INTERVAL_MS,
  NO_DELAY_FIGURE,
  PathCodel,
  QueueDelayEstimate,
  sendStamp,
  TARGET_MS,
} from "../../src/dataplane/path_queue.ts";

/** Within a µs of rounding. */
function near(actual: number | null, expected: number, what: string): void {
  assert(actual !== null && Math.abs(actual - expected) < 0.01, `${what}: ${actual} ≠ ${expected}`);
}

Deno.test("queue delay: the one-way delay above its floor, whatever the clocks' offset", () => {
  for (const offsetMs of [0, 123_456.789, -5_000, 4_294_960]) {
    const q = new QueueDelayEstimate();
    assertEquals(q.delayMs, null);
    // The peer's clock is `offsetMs` ahead of ours; the path takes 10 ms, plus what queues add.
    const hear = (sentAt: number, queued: number) =>
      q.sample(sendStamp(sentAt + offsetMs), sentAt + 10 + queued);
    near(hear(1_000, 0), 0, `offset ${offsetMs}: the first is the floor`);
    near(hear(1_100, 7.5), 7.5, `offset ${offsetMs}: a queue`);
    near(hear(1_200, 0.25), 0.25, `offset ${offsetMs}: draining`);
    // A shorter path than any seen lowers the floor at once.
    near(hear(1_300, -2), 0, `offset ${offsetMs}: a new floor`);
    near(hear(1_400, 0), 2, `offset ${offsetMs}: above the new floor`);
  }
});

Deno.test("queue delay: the floor forgets after 20 to 30 s (a route that got longer)", () => {
  const q = new QueueDelayEstimate();
  const hear = (at: number, oneWay: number) => q.sample(sendStamp(at), at + oneWay);
  hear(0, 10);
  // The path now takes 15 ms: for a while that looks like a queue of 5 ms...
  near(hear(5_000, 15), 5, "at 5 s");
  for (let at = 6_000; at < 25_000; at += 1_000) hear(at, 15);
  near(hear(25_000, 15), 5, "at 25 s");
  // ... until the buckets that held the old floor have gone.
  for (let at = 26_000; at <= 31_000; at += 1_000) hear(at, 15);
  near(q.delayMs, 0, "at 31 s");
});

Deno.test("queue delay: stamps that wrap, and a peer that starts its clock again", () => {
  const q = new QueueDelayEstimate();
  // Our clock near a wrap of the µs stamp: the differences still come out right.
  const wrapAt = 4_294_967.296;
  const hear = (at: number, oneWay: number, peerOffset = 0) =>
    q.sample(sendStamp(at + peerOffset), at + oneWay);
  near(hear(wrapAt - 1, 10), 0, "before the wrap");
  near(hear(wrapAt + 1, 13), 3, "after the wrap");
  // A new process on the peer: its clock starts near 0 again. Not a queue of hours.
  near(hear(wrapAt + 2, 10, -wrapAt + 50), 0, "a new peer clock");
  near(hear(wrapAt + 3, 14, -wrapAt + 50), 4, "measured from the new base");
});

Deno.test("queue delay: the wire's figure in 0.1 ms, saturating, with one value for none", () => {
  assertEquals(encodeDelay(null), NO_DELAY_FIGURE);
  assertEquals(decodeDelay(NO_DELAY_FIGURE), null);
  assertEquals(encodeDelay(12.34), 123);
  near(decodeDelay(encodeDelay(12.34)), 12.3, "round trip");
  assertEquals(encodeDelay(-1), 0);
  assertEquals(encodeDelay(1e9), NO_DELAY_FIGURE - 1);
});

Deno.test("path codel: no drop below the target, nor above it for less than an interval", () => {
  const c = new PathCodel();
  for (let t = 0; t < 1_000; t += 25) {
    c.report(TARGET_MS - 0.1, t);
    assertEquals(c.drop(t), false);
  }
  // Above for just under an interval, then below: still none.
  for (let t = 1_000; t < 1_000 + INTERVAL_MS; t += 25) {
    c.report(TARGET_MS + 5, t);
    assertEquals(c.drop(t), false);
  }
  c.report(0.5, 1_100);
  assertEquals(c.dropping, false);
  assertEquals(c.drops, 0);
});

Deno.test("path codel: a standing queue: a drop after an interval, then faster, until it drains", () => {
  const c = new PathCodel();
  const drops: number[] = [];
  // Reports every 25 ms of a queue at 10 ms; a heavy frame every ms.
  for (let t = 0; t <= 600; t++) {
    if (t % 25 === 0) c.report(10, t);
    if (c.drop(t)) drops.push(t);
  }
  assertEquals(drops[0], INTERVAL_MS, "the first drop, an interval after the queue was seen");
  // Then the interval over the square root of the count: gaps that shrink.
  const gaps = drops.slice(1).map((t, i) => t - drops[i]);
  assert(gaps.length >= 5, `drops at ${drops}`);
  for (let i = 1; i < gaps.length; i++) assert(gaps[i] <= gaps[i - 1], `gaps ${gaps}`);
  assert(gaps[0] <= INTERVAL_MS && gaps[0] >= INTERVAL_MS / 2, `gaps ${gaps}`);
  // The queue drains: no more drops.
  c.report(1, 601);
  for (let t = 601; t < 800; t++) assertEquals(c.drop(t), false);
  assertEquals(c.drops, drops.length);
});

Deno.test("path codel: figures that stop coming stop the dropping", () => {
  const c = new PathCodel();
  for (let t = 0; t <= 200; t += 25) c.report(10, t);
  assert(c.dropping);
  assertEquals(c.drop(200), true);
  // No report since 200 (a peer gone quiet): no drop at 500, and the state is left.
  assertEquals(c.drop(500), false);
  assertEquals(c.dropping, false);
});

Deno.test("path codel: back above soon after, it resumes near the rate that worked", () => {
  const run = (c: PathCodel, from: number, to: number) => {
    let n = 0;
    for (let t = from; t <= to; t++) {
      if (t % 25 === 0) c.report(10, t);
      if (c.drop(t)) n++;
    }
    return n;
  };
  const fresh = new PathCodel();
  const again = new PathCodel();
  run(again, 0, 1_000);
  again.report(0, 1_001);
  // Both above the target from 1 100 for 300 ms: the one that just dropped drops more.
  const a = run(again, 1_100, 1_400);
  const b = run(fresh, 1_100, 1_400);
  assert(a > b, `resumed ${a} drops, fresh ${b}`);
});
