/**
 * A WAN like a real one for the lab topology (lab/netns.ts): a round-trip time and random loss
 * between the Proxy and the Host. This kernel has no netem, so:
 *
 *   - the delay comes from lab/delay_line.c, a small C forwarder compiled here with gcc (never
 *     a downloaded binary). It takes the WAN switch's two ports (w0 toward the Proxy, w1 toward
 *     the Host) out of the bridge and forwards frames between them after a fixed one-way delay,
 *     through a bounded FIFO per direction;
 *   - the loss comes from nftables: a netdev ingress chain on wan0 of the Proxy and of the Host,
 *     `numgen random mod 10000 < N drop`, so each direction loses that share of its frames.
 *     Ingress, not egress: a frame that a host's own egress hook drops is reported to its sender
 *     as local congestion (ENOBUFS), and TCP then sends the same segment again at once instead
 *     of seeing a loss (iputils ping resends too). Only OpenVPN's UDP would have lost anything,
 *     and a TCP link would have seen a clean path.
 *
 * The WAN veths' segmentation offloads are turned off (a real path carries frames of at most
 * its MTU, and one lost 64 KB super-frame would be 44 frames lost at once).
 */
import { type Proc, run, spawn, type Topology, tryRun } from "./netns.ts";

export interface WanOptions {
  /** Round-trip time the delay line adds, in ms (half each way). */
  rttMs: number;
  /** Share of frames lost on the way into each WAN end, in percent (0 to 100, 0.01 steps). */
  lossPercent: number;
  /** Frames each direction's FIFO holds before it drops (default 8192). */
  queueFrames?: number;
}

export interface DelayLineCounters {
  forwarded: number;
  fullDrops: number;
  oversizeDrops: number;
  sendErrors: number;
}

export interface Wan {
  readonly options: WanOptions;
  /** Changes the loss on both ends. */
  setLoss(percent: number): Promise<void>;
  /** Stops the delay line; returns its counters (Proxy→Host, Host→Proxy). */
  stop(): Promise<{ toHost: DelayLineCounters; toProxy: DelayLineCounters } | null>;
}

const SOURCE = new URL("./delay_line.c", import.meta.url).pathname;
const LOSS_TABLE = "vnet_wan_loss";

/** Compiles the delay line into `dir` (once per directory); returns the binary's path. */
async function buildDelayLine(dir: string): Promise<string> {
  const bin = `${dir}/delay_line`;
  try {
    await Deno.stat(bin);
    return bin;
  } catch { /* not built yet */ }
  await run(null, ["gcc", "-O2", "-Wall", "-Wextra", "-Werror", "-o", bin, SOURCE], {
    timeoutMs: 60_000,
  });
  return bin;
}

async function setLossOn(ns: string, percent: number): Promise<void> {
  if (!(percent >= 0 && percent <= 100)) throw new Error(`loss must be 0..100 %, got ${percent}`);
  await tryRun(ns, ["nft", "delete", "table", "netdev", LOSS_TABLE], { timeoutMs: 5000 });
  if (percent === 0) return;
  const threshold = Math.round(percent * 100);
  await run(ns, ["nft", "-f", "-"], {
    stdin: `table netdev ${LOSS_TABLE} {
  chain ingress {
    type filter hook ingress device "wan0" priority 0; policy accept;
    numgen random mod 10000 < ${threshold} counter drop
  }
}
`,
  });
}

/**
 * Puts the delay line between the Proxy and the Host of `topo` (a topology without host2) and
 * sets the loss. The topology's cleanup stops the delay line (it is one of its processes).
 */
export async function installWan(topo: Topology, options: WanOptions): Promise<Wan> {
  if (topo.ns.host2) throw new Error("installWan: topologies with host2 are not supported");
  const { wan, proxy, host } = topo.ns;
  const bin = await buildDelayLine(topo.dir);
  for (const [ns, dev] of [[proxy, "wan0"], [host, "wan0"], [wan, "w0"], [wan, "w1"]]) {
    await run(ns, ["ethtool", "-K", dev, "tso", "off", "gso", "off", "gro", "off", "tx", "off"]);
  }
  for (const port of ["w0", "w1"]) await run(wan, ["ip", "link", "set", port, "nomaster"]);
  const oneWayUs = Math.round(options.rttMs * 500);
  const line: Proc = spawn(wan, [
    bin,
    "w0",
    "w1",
    String(oneWayUs),
    String(options.queueFrames ?? 8192),
  ]);
  topo.procs.push(line);
  await line.waitForLine(/^ready$/, 10_000);
  const setLoss = async (percent: number) => {
    for (const ns of [proxy, host]) await setLossOn(ns, percent);
  };
  await setLoss(options.lossPercent);
  return {
    options,
    setLoss,
    async stop() {
      await line.kill("SIGTERM", 2000);
      const json = line.lines.map((l) => l.slice(5)).find((l) => l.startsWith("{"));
      if (!json) return null;
      const c = JSON.parse(json);
      return { toHost: c.aToB, toProxy: c.bToA };
    },
  };
}
