import { assert, assertEquals, assertThrows } from "./assert.ts";
import { ReplayVerdict, ReplayWindow } from "../../src/link/udp/replay_window.ts";

const { fresh, tooOld, replayed } = ReplayVerdict;

/** check, then accept if fresh (as the session does around the AEAD); returns the verdict. */
function offer(w: ReplayWindow, counter: number): ReplayVerdict {
  const verdict = w.check(counter);
  assertEquals(w.accept(counter), verdict === fresh, `accept(${counter}) vs check`);
  return verdict;
}

Deno.test("replay window: the default covers 8160 counters, at least the 2048 asked", () => {
  const w = new ReplayWindow();
  assertEquals(w.size, 8160);
  assert(w.size >= 2048);
  assertEquals(new ReplayWindow(64).size, 32);
  assertEquals(w.highest, -1);
});

Deno.test("replay window: ring sizes that are not a power of two of 64+ bits are refused", () => {
  for (const bits of [0, 32, 63, 96, 1000, 64.5]) {
    assertThrows(() => new ReplayWindow(bits), RangeError);
  }
});

Deno.test("replay window: in order, every counter once", () => {
  const w = new ReplayWindow(2048);
  for (let c = 0; c < 20_000; c++) assertEquals(offer(w, c), fresh, `counter ${c}`);
  assertEquals(w.highest, 19_999);
});

Deno.test("replay window: duplicates are refused, in order and out of order", () => {
  const w = new ReplayWindow(2048);
  assertEquals(offer(w, 0), fresh);
  assertEquals(offer(w, 0), replayed);
  assertEquals(offer(w, 5), fresh);
  assertEquals(offer(w, 3), fresh);
  assertEquals(offer(w, 3), replayed);
  assertEquals(offer(w, 5), replayed);
  assertEquals(offer(w, 4), fresh);
  assertEquals(offer(w, 1), fresh);
  assertEquals(offer(w, 2), fresh);
  for (let c = 0; c <= 5; c++) assertEquals(w.check(c), replayed, `counter ${c}`);
  assertEquals(w.check(6), fresh);
});

Deno.test("replay window: out of order within the window, each accepted once", () => {
  const w = new ReplayWindow(2048); // 2016 counters
  assertEquals(offer(w, 3000), fresh);
  // Every counter from 3000 - 2015 to 2999, backwards, then all of them again.
  for (let c = 2999; c > 3000 - w.size; c--) assertEquals(offer(w, c), fresh, `counter ${c}`);
  for (let c = 3000; c > 3000 - w.size; c--) assertEquals(offer(w, c), replayed, `counter ${c}`);
});

Deno.test("replay window: the edge of the window, exactly", () => {
  const w = new ReplayWindow(2048);
  const top = 10_000;
  assertEquals(offer(w, top), fresh);
  const lowest = top - w.size + 1; // the oldest counter still inside
  assertEquals(w.check(lowest - 1), tooOld);
  assertEquals(offer(w, lowest - 1), tooOld);
  assertEquals(offer(w, lowest), fresh);
  assertEquals(offer(w, lowest), replayed);
  // One step up and `lowest` falls out.
  assertEquals(offer(w, top + 1), fresh);
  assertEquals(w.check(lowest), tooOld);
  assertEquals(offer(w, lowest + 1), fresh);
});

Deno.test("replay window: too old stays too old, whatever was seen", () => {
  const w = new ReplayWindow(64); // 32 counters
  for (let c = 0; c < 100; c++) offer(w, c);
  for (let c = 0; c <= 99 - 32; c++) assertEquals(w.check(c), tooOld, `counter ${c}`);
  for (let c = 99 - 31; c < 100; c++) assertEquals(w.check(c), replayed, `counter ${c}`);
});

Deno.test("replay window: a big jump forgets everything behind the new window", () => {
  const w = new ReplayWindow(2048);
  for (let c = 0; c < 100; c++) offer(w, c);
  assertEquals(offer(w, 1_000_000), fresh);
  assertEquals(w.highest, 1_000_000);
  assertEquals(w.check(99), tooOld);
  // Inside the new window nothing has been seen: no stale bit from before the jump answers.
  for (let c = 1_000_000 - w.size + 1; c < 1_000_000; c++) {
    assertEquals(w.check(c), fresh, `counter ${c}`);
  }
  assertEquals(offer(w, 1_000_000), replayed);
});

Deno.test("replay window: jumps of less than the ring keep what is still inside", () => {
  const w = new ReplayWindow(256); // 8 words, 224 counters
  offer(w, 0);
  offer(w, 10);
  offer(w, 150); // crosses four words: 10 stays inside
  assertEquals(w.check(10), replayed);
  assertEquals(w.check(0), replayed);
  assertEquals(w.check(11), fresh);
  offer(w, 230); // 0..6 fall out, 10 stays
  assertEquals(w.check(0), tooOld);
  assertEquals(w.check(10), replayed);
  assertEquals(w.check(7), fresh);
});

Deno.test("replay window: the ring wraps around many times with no stale bits", () => {
  // 64 bits: 2 words, a 32-counter window. Counters a word apart share a slot every lap, so a
  // stale bit left by a lap would show as `replayed` for a counter never seen.
  const w = new ReplayWindow(64);
  for (let c = 0; c < 10_000; c += 2) assertEquals(offer(w, c), fresh, `counter ${c}`);
  // Every odd counter still inside the window is fresh: not mistaken for its even neighbours'
  // old bits, nor for the counters that held its slot laps ago.
  for (let c = 9998 - 31; c < 9998; c++) {
    assertEquals(w.check(c), c % 2 ? fresh : replayed, `counter ${c}`);
  }
  // Jumps of exactly one lap, two laps, and one word: what they pass over is fresh (never seen),
  // or too old, never `replayed`.
  assertEquals(offer(w, 10_062), fresh); // one lap
  assertEquals(w.check(10_052), fresh);
  assertEquals(w.check(9998), tooOld);
  assertEquals(offer(w, 10_190), fresh); // two laps
  assertEquals(w.check(10_189), fresh);
  assertEquals(offer(w, 10_222), fresh); // one word
  assertEquals(w.check(10_190), tooOld);
  assertEquals(offer(w, 10_200), fresh);
  assertEquals(offer(w, 10_200), replayed);
});

Deno.test("replay window: counters near 2^32 and beyond (the wire's 64 bits)", () => {
  const w = new ReplayWindow(2048);
  const base = 2 ** 32 - 5;
  for (let c = base; c < base + 10; c++) assertEquals(offer(w, c), fresh, `counter ${c}`);
  for (let c = base; c < base + 10; c++) assertEquals(w.check(c), replayed, `counter ${c}`);
  const huge = Number.MAX_SAFE_INTEGER - 10;
  assertEquals(offer(w, huge), fresh);
  assertEquals(offer(w, huge - 1), fresh);
  assertEquals(offer(w, huge - 1), replayed);
  assertEquals(w.check(base), tooOld);
});

Deno.test("replay window: checking alone changes nothing", () => {
  const w = new ReplayWindow(64);
  assertEquals(w.check(1000), fresh);
  assertEquals(w.highest, -1);
  assertEquals(offer(w, 5), fresh); // 1000 was never recorded, so 5 is not too old
  assertEquals(w.check(1000), fresh);
});

/** A seeded PRNG (mulberry32), so that a failure can be replayed. */
function prng(seed: number): () => number {
  return () => {
    seed = (seed + 0x6d2b79f5) | 0;
    let t = Math.imul(seed ^ (seed >>> 15), 1 | seed);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

Deno.test("replay window: agrees with a model on reordered, duplicated, jumping streams", () => {
  for (const [seed, bits] of [[1, 64], [2, 256], [3, 2048], [4, 8192]]) {
    const random = prng(seed);
    const w = new ReplayWindow(bits);
    const seen = new Set<number>();
    let highest = -1;
    let next = 0;
    for (let i = 0; i < 50_000; i++) {
      const r = random();
      let counter: number;
      if (r < 0.6) counter = next++; // in order
      else if (r < 0.8) counter = Math.max(0, next - Math.floor(random() * w.size * 1.2)); // late
      else if (r < 0.95) counter = Math.max(0, next - 1 - Math.floor(random() * 4)); // duplicate
      else counter = next += Math.floor(random() * bits * 3); // a jump
      const expected = counter > highest
        ? fresh
        : highest - counter >= w.size
        ? tooOld
        : seen.has(counter)
        ? replayed
        : fresh;
      assertEquals(offer(w, counter), expected, `seed ${seed}, step ${i}, counter ${counter}`);
      if (expected === fresh) {
        seen.add(counter);
        highest = Math.max(highest, counter);
      }
    }
  }
});
