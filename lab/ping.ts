/**
 * Round trips measured with ping(8), and their percentiles: one reader of ping's output for the
 * benchmarks and the tests that report latency.
 */
import { type Ns, tryRun } from "./netns.ts";

export interface PingTimes {
  /** The round trips that came back, in ms, sorted. */
  rtts: number[];
  code: number;
  stderr: string;
}

/** `count` pings from `ns` to `target`, `intervalS` apart, each waited for `waitS`. */
export async function pingTimes(
  ns: Ns,
  target: string,
  o: { count: number; intervalS: number; waitS: number },
): Promise<PingTimes> {
  const r = await tryRun(ns, [
    "ping",
    "-n",
    "-i",
    String(o.intervalS),
    "-c",
    String(o.count),
    "-W",
    String(o.waitS),
    target,
  ], { timeoutMs: o.count * o.intervalS * 1000 + 15_000 });
  const rtts = [...r.stdout.matchAll(/time=([\d.]+) ms/g)].map((m) => Number(m[1]));
  return { rtts: rtts.sort((a, b) => a - b), code: r.code, stderr: r.stderr };
}

/** The `p` percentile (nearest rank, 0 < p <= 1) of sorted values; NaN for none. */
export function percentile(sorted: number[], p: number): number {
  if (sorted.length === 0) return NaN;
  return sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil(p * sorted.length) - 1))];
}
