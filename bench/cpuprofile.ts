/**
 * Summarises a V8 .cpuprofile (from `deno run --cpu-prof`): the top functions by self time, and
 * the share of the process's sampled time that was idle, GC or program code.
 *
 *   deno run -A bench/cpuprofile.ts FILE.cpuprofile [TOP]
 */

interface CallFrame {
  functionName: string;
  url: string;
  lineNumber: number;
  columnNumber: number;
}
interface ProfileNode {
  id: number;
  callFrame: CallFrame;
  children?: number[];
}
export interface CpuProfile {
  nodes: ProfileNode[];
  startTime: number;
  endTime: number;
  samples: number[];
  timeDeltas: number[];
}

function where(cf: CallFrame): string {
  if (!cf.url) return "";
  const short = cf.url.replace(/^file:\/\/\/work\/main\//, "").replace(/^.*\/node_modules\//, "");
  return `${short}:${cf.lineNumber + 1}`;
}

export function summarize(p: CpuProfile, top = 15): string {
  const byId = new Map(p.nodes.map((n) => [n.id, n]));
  const self = new Map<number, number>();
  // timeDeltas[i] is the time before sample i; attribute it to the sample's node.
  for (let i = 0; i < p.samples.length; i++) {
    const dt = Math.max(0, p.timeDeltas[i] ?? 0);
    self.set(p.samples[i], (self.get(p.samples[i]) ?? 0) + dt);
  }
  // Merge nodes of the same function (same name and location) across call paths.
  const fn = new Map<string, { name: string; at: string; us: number }>();
  let total = 0, idle = 0, gc = 0;
  for (const [id, us] of self) {
    const cf = byId.get(id)!.callFrame;
    total += us;
    if (cf.functionName === "(idle)") idle += us;
    if (cf.functionName === "(garbage collector)") gc += us;
    const key = `${cf.functionName}|${cf.url}|${cf.lineNumber}`;
    const e = fn.get(key) ?? { name: cf.functionName || "(anonymous)", at: where(cf), us: 0 };
    e.us += us;
    fn.set(key, e);
  }
  const busy = total - idle;
  const lines = [
    `sampled ${(total / 1e6).toFixed(2)} s: idle ${(idle / 1e6).toFixed(2)} s, busy ${
      (busy / 1e6).toFixed(2)
    } s (GC ${(100 * gc / Math.max(1, busy)).toFixed(1)}% of busy)`,
    `  self ms  %busy  function  (location)`,
  ];
  const rows = [...fn.values()].filter((e) => e.name !== "(idle)").sort((a, b) => b.us - a.us);
  for (const e of rows.slice(0, top)) {
    lines.push(
      `  ${(e.us / 1000).toFixed(0).padStart(7)}  ${
        (100 * e.us / Math.max(1, busy)).toFixed(1).padStart(5)
      }  ${e.name}${e.at ? `  (${e.at})` : ""}`,
    );
  }
  return lines.join("\n");
}

if (import.meta.main) {
  const [file, top] = Deno.args;
  if (!file) {
    console.error("usage: deno run -A bench/cpuprofile.ts FILE.cpuprofile [TOP]");
    Deno.exit(2);
  }
  console.log(summarize(JSON.parse(await Deno.readTextFile(file)), Number(top ?? 20)));
}
