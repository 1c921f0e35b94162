/**
 * The UDP paths' MTU search (src/dataplane/path_mtu_search.ts) against simulated paths: probes
 * up to the hop's MTU cross and are answered a round trip later, larger ones vanish, as behind a
 * hop whose ICMP is filtered.
 */
import { assert, assertEquals } from "./assert.ts";
import { BASE_PLPMTU, PathMtuSearch } from "../../src/dataplane/path_mtu_search.ts";

/**
 * Runs a search over a path whose hop carries `hop` bytes, from `start` for `forMs`, a tick
 * every 50 ms and 20 ms round trips. Returns the times (ms from start) the usable MTU changed.
 */
function simulate(
  search: PathMtuSearch,
  hop: number,
  start: number,
  forMs: number,
): { at: number; mtu: number }[] {
  const changes: { at: number; mtu: number }[] = [];
  const answers: { at: number; size: number }[] = [];
  let last = search.mtu;
  for (let t = start; t <= start + forMs; t += 50) {
    const due = answers.filter((a) => a.at <= t);
    const later = answers.filter((a) => a.at > t);
    answers.length = 0;
    answers.push(...later);
    for (const a of due) search.acked(a.size, t);
    const size = search.probe(t);
    if (size > 0 && size <= hop) answers.push({ at: t + 20, size });
    if (search.mtu !== last) changes.push({ at: t - start, mtu: last = search.mtu });
  }
  return changes;
}

Deno.test("path mtu search: a clean path is confirmed at the kernel's figure in one round trip", () => {
  const search = new PathMtuSearch(1500);
  assertEquals(search.mtu, BASE_PLPMTU);
  const changes = simulate(search, 1500, 0, 5_000);
  assertEquals(changes, [{ at: 50, mtu: 1500 }]);
  assertEquals(search.searching, false);
  // Nothing more to probe.
  assertEquals(search.probe(10_000), 0);
});

Deno.test("path mtu search: a 1400-byte hop that sends no ICMP is found within 16 bytes", () => {
  const search = new PathMtuSearch(1500);
  const changes = simulate(search, 1400, 0, 20_000);
  const final = search.mtu;
  assert(final <= 1400 && final > 1400 - 16, `settled on ${final}`);
  assertEquals(search.searching, false);
  // Never above the hop, and settled within 10 s.
  assert(changes.every((c) => c.mtu <= 1400), JSON.stringify(changes));
  assert(changes.at(-1)!.at <= 10_000, JSON.stringify(changes));
  // Settled: no probes until the raise timer.
  assertEquals(search.probe(30_000), 0);
});

Deno.test("path mtu search: a route that got better is found again after 10 minutes", () => {
  const search = new PathMtuSearch(1500);
  simulate(search, 1400, 0, 20_000);
  const settled = search.mtu;
  // Within the 10 minutes nothing is probed, however the path changed.
  simulate(search, 1500, 20_000, 500_000);
  assertEquals(search.mtu, settled);
  simulate(search, 1500, 620_000, 5_000);
  assertEquals(search.mtu, 1500);
});

Deno.test("path mtu search: the kernel's figure bounds it, down and up", () => {
  const search = new PathMtuSearch(1500);
  simulate(search, 1500, 0, 1_000);
  assertEquals(search.mtu, 1500);
  // ICMP got through: the kernel says 1420. Nothing above it is used or probed.
  search.setCeiling(1420);
  assertEquals(search.mtu, 1420);
  assertEquals(search.probe(2_000), 0);
  // A path whose every link is smaller than the base: the kernel's figure, never more.
  const small = new PathMtuSearch(1200);
  assertEquals(small.mtu, 1200);
  assertEquals(small.probe(0), 0);
  // The ceiling rises (a new route): the search looks upward at once.
  search.setCeiling(1500);
  assertEquals(search.probe(3_000), 1500);
});
