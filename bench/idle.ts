/**
 * What an idle VNET costs (issue 17's target: under 0.5% of a CPU with 10 links up): one Proxy,
 * `--hosts` Hosts with one VM each, a handler per VM, so the Proxy holds one peer link per Host
 * with its keepalives running. Every VM is pinged from the LAN once (traffic opens the data
 * path's inline window), then the servers' CPU time is read from /proc over `--seconds`.
 *
 * `--threads` also shows where the Proxy's time went: each thread's CPU and wake-ups (voluntary
 * context switches), from /proc/PID/task.
 *
 *   deno run -A bench/idle.ts [--hosts 10] [--seconds 60] [--threads] [-- extra server flags]
 */
import { withSites } from "../lab/sites.ts";
import { run, waitFor } from "../lab/netns.ts";

function option(name: string, fallback: string): string {
  const i = Deno.args.indexOf(name);
  return i >= 0 && i + 1 < Deno.args.length ? Deno.args[i + 1] : fallback;
}

const hosts = Number(option("--hosts", "10"));
const seconds = Number(option("--seconds", "60"));
const threads = Deno.args.includes("--threads");
const dashes = Deno.args.indexOf("--");
const extraArgs = dashes >= 0 ? Deno.args.slice(dashes + 1) : [];
const CLOCK_TICKS = 100; // USER_HZ on Linux

/** User plus system CPU time of a process so far, in seconds. */
function cpuSeconds(pid: number): number {
  // Fields after the command (which may hold spaces) start after its closing parenthesis.
  const stat = Deno.readTextFileSync(`/proc/${pid}/stat`);
  const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  return (Number(fields[11]) + Number(fields[12])) / CLOCK_TICKS;
}

interface ThreadSample {
  name: string;
  /** Time on a CPU, in ns (schedstat: finer than stat's clock ticks). */
  cpuNs: number;
  wakeups: number;
}

/** Each thread of a process: its name, CPU time and voluntary context switches so far. */
function threadSamples(pid: number): Map<number, ThreadSample> {
  const samples = new Map<number, ThreadSample>();
  for (const entry of Deno.readDirSync(`/proc/${pid}/task`)) {
    const dir = `/proc/${pid}/task/${entry.name}`;
    try {
      const name = Deno.readTextFileSync(`${dir}/comm`).trim();
      const cpuNs = Number(Deno.readTextFileSync(`${dir}/schedstat`).split(" ")[0]);
      const status = Deno.readTextFileSync(`${dir}/status`);
      const wakeups = Number(/voluntary_ctxt_switches:\s+(\d+)/.exec(status)?.[1] ?? 0);
      samples.set(Number(entry.name), { name, cpuNs, wakeups });
    } catch { /* the thread ended */ }
  }
  return samples;
}

function showThreads(
  before: Map<number, ThreadSample>,
  after: Map<number, ThreadSample>,
  wall: number,
): void {
  const rows = [...after].map(([tid, a]) => {
    const b = before.get(tid) ?? { cpuNs: 0, wakeups: 0 };
    return { tid, name: a.name, cpu: (a.cpuNs - b.cpuNs) / 1e9, wakeups: a.wakeups - b.wakeups };
  }).filter((r) => r.cpu > 0 || r.wakeups > 0).sort((x, y) => y.cpu - x.cpu);
  for (const r of rows) {
    console.log(
      `  ${String(r.tid).padStart(8)} ${r.name.padEnd(16)} ${
        (100 * r.cpu / wall).toFixed(3).padStart(7)
      }% ${(r.wakeups / wall).toFixed(2).padStart(7)} wake-ups/s`,
    );
  }
}

await withSites({ hosts, vmsPerHost: 1, dhcp: false }, (seconds + 240) * 1000, async (sites) => {
  await sites.startServers({ proxy: extraArgs, host: extraArgs });
  await sites.createHandlers(sites.vms, { concurrency: 4 });
  for (const vm of sites.vms) {
    await waitFor(`a ping to ${vm.label}`, async () => {
      const r = await run(sites.ns.client, ["ping", "-n", "-c", "1", "-W", "1", vm.ip])
        .catch(() => null);
      return r === null ? undefined : true;
    }, 20_000);
  }
  const pids = [...sites.servers].map(([name, proc]) => ({ name, pid: proc.pid }));
  const proxyPid = pids.find((p) => p.name === "proxy")!.pid;
  if (threads) console.log(`measuring; the Proxy is pid ${proxyPid}`);
  const threadsBefore = threads ? threadSamples(proxyPid) : new Map();
  const before = pids.map(({ pid }) => cpuSeconds(pid));
  const t0 = performance.now();
  await new Promise((r) => setTimeout(r, seconds * 1000));
  const wall = (performance.now() - t0) / 1000;
  const used = pids.map(({ pid }, i) => cpuSeconds(pid) - before[i]);
  const threadsAfter = threads ? threadSamples(proxyPid) : new Map();
  const percent = (s: number) => `${(100 * s / wall).toFixed(2)}%`;
  const proxy = used[pids.findIndex((p) => p.name === "proxy")];
  const hostUse = used.filter((_, i) => pids[i].name !== "proxy");
  console.log(
    `idle over ${wall.toFixed(0)} s, ${hosts} links at the Proxy: Proxy ${percent(proxy)} of a ` +
      `CPU; Hosts (1 link each) mean ${
        percent(hostUse.reduce((a, b) => a + b, 0) / hostUse.length)
      }, max ${percent(Math.max(...hostUse))}`,
  );
  if (threads) {
    console.log("the Proxy's threads (CPU, voluntary context switches):");
    showThreads(threadsBefore, threadsAfter, wall);
  }
});
