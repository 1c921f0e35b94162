/**
 * Pacing a UDP path below its bottleneck (src/dataplane/path_shaper.ts): the rate follows the
 * queue the peer reports, frames wait in a fair queue, and a sparse flow goes around a backlog.
 */
import { assert, assertEquals } from "./assert.ts";
import { PathShaper } from "../../src/dataplane/path_shaper.ts";

interface Sent {
  handler: number;
  length: number;
  mac: number;
}

function shaper(): { s: PathShaper; sent: Sent[]; wakes: number[]; dropped: number[] } {
  const sent: Sent[] = [], wakes: number[] = [], dropped: number[] = [];
  const s = new PathShaper({
    transmit: (handler, frame) => {
      sent.push({ handler, length: frame.length, mac: frame[11] });
      return true;
    },
    dropped: (h) => dropped.push(h),
    wakeAt: (at) => wakes.push(at),
  });
  return { s, sent, wakes, dropped };
}

/** An Ethernet frame of `length` bytes from MAC ...:`mac` (its own flow). */
function frame(length: number, mac = 1): Uint8Array {
  const f = new Uint8Array(length);
  f.set([2, 0, 0, 0, 0, 9, 2, 0, 0, 0, 0, mac, 0x88, 0xb5]);
  return f;
}

/** Reports of a path queue of `ms` over one adjustment, with `bytes` sent meanwhile. */
function adjustment(s: PathShaper, t: number, ms: number, bytes = 0): number {
  s.report(ms, t);
  for (let sent = 0; sent < bytes; sent += 1000) s.offer(7, frame(1000));
  s.report(ms, t + 100);
  return t + 100;
}

Deno.test("path shaper: no pacing until the path's queue is seen, then 0.85 of what went", () => {
  const { s, sent } = shaper();
  let t = 0;
  t = adjustment(s, t, 0.5, 100_000);
  assertEquals(s.pacing, false);
  assertEquals(sent.length, 100, "every frame sent at once");
  // A queue of 3 ms: under the bar.
  t = adjustment(s, t, 3, 100_000);
  assertEquals(s.pacing, false);
  // 6 ms for a whole adjustment: the rate comes down below what was sent (100 kB in 100 ms).
  s.report(6, t);
  for (let i = 0; i < 100; i++) s.offer(7, frame(1000));
  s.report(6, t + 50);
  s.report(20, t + 100);
  assertEquals(s.pacing, true);
  assertEquals(s.rate, 850);
  // Still 6 ms, and the flows backed off (little went): down, but by 30% at most a step.
  s.offer(7, frame(1000));
  s.report(6, t + 200);
  assertEquals(s.rate, 850 * 0.7);
});

Deno.test("path shaper: a way that carries ACKs, not bulk, is never paced", () => {
  const { s } = shaper();
  s.report(10, 0);
  for (let i = 0; i < 2000; i++) s.offer(7, frame(66));
  s.report(10, 100);
  assertEquals(s.pacing, false);
  // The same queue with full-size frames: paced.
  for (let i = 0; i < 100; i++) s.offer(7, frame(1514));
  s.report(10, 200);
  assertEquals(s.pacing, true);
});

Deno.test("path shaper: a spike is no standing queue; the mean over an adjustment is", () => {
  const { s } = shaper();
  s.report(0.2, 0);
  for (let i = 0; i < 100; i++) s.offer(7, frame(1000));
  s.report(0.3, 25);
  s.report(8, 50);
  s.report(0.3, 75);
  s.report(0.4, 100);
  assertEquals(s.pacing, false);
});

Deno.test("path shaper: paced frames leave at the rate, a sparse flow ahead of the backlog", async () => {
  const { s, sent, wakes } = shaper();
  s.report(10, 0);
  for (let i = 0; i < 10; i++) s.offer(7, frame(1000));
  s.report(10, 100);
  assertEquals(s.pacing, false, "a transfer just starting is not paced yet");
  for (let i = 0; i < 10; i++) s.offer(7, frame(1000));
  s.report(10, 200); // steady: 10 kB in 100 ms went, so 85 B/ms (0.68 Mbit/s) from now
  assertEquals(s.rate, 125, "not below 1 Mbit/s");
  sent.length = 0;
  const start = performance.now();
  for (let i = 0; i < 20; i++) s.offer(7, frame(1000));
  // A burst's worth went at once (the tokens banked), the rest waits, and a wake is asked for.
  assert(sent.length >= 1 && sent.length <= 2, `${sent.length} sent at once`);
  assertEquals(s.queued, 20 - sent.length);
  assert(wakes.length > 0);
  // A ping of another flow joins: it goes as soon as the bulk flow has used its turn (a
  // quantum: two of its frames at most), before the rest of the backlog.
  s.offer(7, frame(98, 2));
  const before = sent.length;
  while (s.queued > 0) {
    const wait = wakes.at(-1)! - performance.now();
    await new Promise((r) => setTimeout(r, Math.max(0, wait)));
    s.pump();
  }
  const tookMs = performance.now() - start;
  const ping = sent.slice(before).findIndex((x) => x.mac === 2);
  assert(ping >= 0 && ping <= 2, `the ping went ${ping}th of ${sent.length - before}`);
  // 125 bytes a ms: the 18-odd kB that waited cannot have left in less than ~140 ms.
  const waited = sent.slice(before).reduce((n, x) => n + x.length, 0);
  assert(tookMs >= (waited - 3 * 1514) / 125, `${waited} bytes in ${tookMs.toFixed(0)} ms`);
});

Deno.test("path shaper: up while the pace holds frames back and the path's queue is gone; free after a quiet while", () => {
  let now = 0;
  const sent: number[] = [];
  const s = new PathShaper({
    transmit: (_h, f) => sent.push(f.length) > 0,
    dropped: () => {},
    wakeAt: () => {},
  }, () => now);
  // Paced: 100 kB went in each of two adjustments with 10 ms of queue on the path (the first
  // is a transfer starting up, the second a steady one): 850 bytes a ms.
  let t = adjustment(s, 0, 10, 100_000);
  assertEquals(s.pacing, false);
  for (let i = 0; i < 100; i++) s.offer(7, frame(1000));
  t = adjustment(s, t, 10);
  assertEquals(s.rate, 850);
  /** An adjustment with the path's queue at `ms`, frames offered faster than the pace. */
  const paced = (ms: number) => {
    s.report(ms, t);
    for (let step = 1; step <= 100; step++) {
      now = t + step;
      while (s.queued < 20) s.offer(7, frame(1000));
      s.pump();
    }
    t += 100;
    s.report(ms, t);
  };
  // The path's queue between the bars: the pace holds, and a second after the cut the run of
  // cuts is judged answered (the queue went under the bar).
  for (let i = 0; i < 10; i++) paced(2);
  assertEquals(s.rate, 850);
  // Gone, while the pace held frames back: up.
  paced(0.5);
  assertEquals(s.rate, 850 * 1.04);
  // Frames offered slower than the pace: it does not climb beyond what is used.
  const rate = s.rate;
  s.report(0.5, t);
  for (let step = 1; step <= 100; step++) {
    now = t + step;
    if (step % 4 === 0) s.offer(7, frame(1000));
    s.pump();
  }
  t += 100;
  s.report(0.5, t);
  assertEquals(s.rate, rate);
  // Nothing waiting for 10 s: no more pacing.
  now = t;
  while (s.queued > 0) {
    now += 1;
    s.pump();
  }
  for (let i = 0; i < 110; i++) t = adjustment(s, t, 0.5);
  assertEquals(s.pacing, false);
});

/**
 * A path driven for `ms` ms of its clock: 12 full-size frames offered every ms (~145 Mbit/s),
 * sent into a FIFO that drains `capacity(t)` bytes a ms, and the peer's report every 25 ms: the
 * FIFO's wait 20 ms before (the report's way back) plus `extra(t)`, a wait that is not ours.
 */
function drive(
  ms: number,
  capacity: (t: number) => number,
  extra: (t: number) => number,
): {
  rates: number[];
  delivered: number;
  fifoMs: number;
  meanWait: number;
  queuedUnpaced: number;
  notOursMs: number;
} {
  let now = 0, wake = Infinity, fifo = 0, delivered = 0, waitSum = 0, queuedUnpaced = 0;
  let notOursMs = 0;
  const s = new PathShaper({
    transmit: (_h, f) => {
      fifo += f.length;
      return true;
    },
    dropped: () => {},
    wakeAt: (at) => {
      wake = Math.min(wake, at);
    },
  }, () => now);
  const waits: number[] = [], rates: number[] = [];
  const f = frame(1514);
  for (let t = 0; t < ms; t++) {
    now = t;
    if (now >= wake) {
      wake = Infinity;
      s.pump();
    }
    for (let i = 0; i < 12; i++) s.offer(1, f);
    const drained = Math.min(fifo, capacity(t));
    fifo -= drained;
    delivered += drained;
    waits.push(fifo / capacity(t) + extra(t));
    if (t % 25 === 0 && t >= 20) s.report(waits[t - 20], now);
    if (t >= ms / 2) waitSum += waits[t];
    if (t % 100 === 0) rates.push(s.rate);
    if (!s.pacing && s.queued > 0) queuedUnpaced++;
    if (s.waitNotOurs) notOursMs++;
  }
  return {
    rates,
    delivered,
    fifoMs: fifo / capacity(ms),
    meanWait: waitSum / (ms / 2),
    queuedUnpaced,
    notOursMs,
  };
}

const DEMAND = 12 * 1514; // bytes a ms

Deno.test("path shaper: a wait that cutting does not shorten is not ours: the cuts are undone", () => {
  // A receiver short of CPU: 5 ms, whatever we send. The old law cut every 100 ms, down to
  // 1 Mbit/s.
  const { rates, delivered, queuedUnpaced, notOursMs } = drive(20_000, () => 1e9, () => 5);
  const least = Math.min(...rates);
  assert(least >= 0.5 * 0.85 * DEMAND, `paced down to ${(least * 8 / 1000).toFixed(1)} Mbit/s`);
  assertEquals(rates[15], Infinity, "the first run is undone after 1 s");
  // Tried again after holds of 1, 2, 4, 8 s: most of the time unpaced.
  const paced = rates.filter((r) => r !== Infinity).length;
  assert(paced <= rates.length / 4, `paced in ${paced} of ${rates.length} adjustments`);
  assert(delivered >= 0.85 * DEMAND * 20_000, `${delivered * 8 / 20_000_000} Mbit/s carried`);
  assertEquals(queuedUnpaced, 0, "frames left waiting when the pace went");
  // Meanwhile the path's CoDel does not drop for that wait either (udp_peers.ts asks this).
  assert(notOursMs >= 0.5 * 20_000, `the wait known as not ours for ${notOursMs} ms of 20 000`);
});

Deno.test("path shaper: a queue behind a bottleneck is ours: paced under it, the queue short", () => {
  const capacity = 100_000 / 8; // 100 Mbit/s
  const { delivered, meanWait, rates, notOursMs } = drive(20_000, () => capacity, () => 0);
  assertEquals(notOursMs, 0, "a run taken for not ours");
  assert(delivered >= 0.8 * capacity * 20_000, `${delivered * 8 / 20_000_000} Mbit/s carried`);
  assert(meanWait < 3, `the bottleneck's queue: ${meanWait.toFixed(1)} ms on average`);
  assert(rates.slice(50).every((r) => r < 1.15 * capacity), "paced near the bottleneck");
});

Deno.test("path shaper: a bottleneck that falls to a quarter is followed below the run's floor", () => {
  // 100 Mbit/s, then 24: more than one run's halving below the pace of the time.
  const { fifoMs, meanWait, rates } = drive(20_000, (t) => t < 5000 ? 12_500 : 3000, () => 0);
  assert(fifoMs < 10, `${fifoMs.toFixed(0)} ms still queued at the bottleneck`);
  assert(rates.at(-1)! < 3000 * 1.15, `paced at ${rates.at(-1)! * 8 / 1000} Mbit/s`);
  assert(meanWait < 200, `a queue of ${meanWait.toFixed(0)} ms on average in the last 10 s`);
});

Deno.test("path shaper: a pace that came down far climbs back fast, then probes gently", () => {
  // No bottleneck; a queue of 10 ms for 400 ms (a burst somebody else sent), from 2 s on.
  const { rates } = drive(6000, () => 1e9, (t) => t >= 2000 && t < 2400 ? 10 : 0);
  const cut = rates.findIndex((r) => r !== Infinity);
  assert(cut >= 20 && cut <= 23, `paced from ${cut * 100} ms`);
  const least = Math.min(...rates.slice(cut));
  assert(least <= 0.55 * DEMAND, `cut to ${least} bytes a ms of ${DEMAND}`);
  // The run is judged a second after it began; then 4%, 8%, 16% and 16%: back over 0.8 of
  // where the queue formed within 600 ms (4% at a time would take 1.2 s).
  const back = rates.findIndex((r, i) => i > cut + 10 && r >= 0.8 * DEMAND);
  assert(back > 0 && back <= cut + 17, `back at ${back * 100} ms, paced from ${cut * 100}`);
  // Near there, 4% an adjustment.
  assert(rates[back + 1] / rates[back] <= 1.041, `${rates[back]} then ${rates[back + 1]}`);
});
