/**
 * The floor of issue 17's design: how fast a frame crosses a forwarder that owns its captures and
 * injectors on a thread of its own, against today's helper-thread wait and a kernel bridge.
 *
 *   deno run -A bench/worker_floor.ts [--count N] [--runs R]
 *
 * Two namespaces, A (10.9.0.1) and B (10.9.0.2), each with a veth into a middle namespace, where
 * one of these joins the two veths:
 *   - `bridge`: a kernel bridge (the floor of any forwarder);
 *   - `pool`:   libpcap captures and packet-socket injectors on the JS thread, which waits in a
 *               nonblocking FFI `poll` (a blocking-pool thread wakes, then wakes the JS thread):
 *               the data path's wait with `--inline-wait 0`;
 *   - `worker`: the same captures and injectors in a Worker that blocks in a synchronous `poll`
 *               of its own: one wake-up per hop, the thread that woke does the work.
 * A pings B every 20 ms; each configuration's round trips are printed as p50/p90/p99. The
 * configurations take turns, `--runs` times, so a noisy machine spreads over all of them.
 */
import { PREFIX, run, spawn, tryRun, waitFor } from "../lab/netns.ts";
import { percentile, pingTimes } from "../lab/ping.ts";
import { cString, pcap, PCAP_D_IN } from "../ffi/libpcap.ts";
import { libc, POLLIN } from "../ffi/libc.ts";
import { structs } from "../ffi/layout.ts";
import { PacketInjector } from "../src/dataplane/packet_injector.ts";

const MODES = ["bridge", "pool", "worker"] as const;
type Mode = typeof MODES[number];

/** One direction's capture: a nonblocking libpcap handle in immediate mode, inbound only. */
function openCapture(device: string): { handle: Deno.PointerObject; fd: number } {
  const lib = pcap();
  const errbuf = new Uint8Array(256);
  const handle = lib.pcap_create(cString(device), errbuf);
  if (handle === null) throw new Error(`pcap_create ${device}`);
  lib.pcap_set_snaplen(handle, 65535);
  lib.pcap_set_promisc(handle, 1);
  lib.pcap_set_immediate_mode(handle, 1);
  lib.pcap_set_buffer_size(handle, 4 << 20);
  if (lib.pcap_activate(handle) < 0) throw new Error(`pcap_activate ${device}`);
  lib.pcap_setdirection(handle, PCAP_D_IN);
  lib.pcap_setnonblock(handle, 1, errbuf);
  return { handle, fd: lib.pcap_get_selectable_fd!(handle) };
}

/** Forwards every frame between devices `a` and `b`; `wait` blocks until one is readable. */
export function forwarder(a: string, b: string) {
  const lib = pcap();
  const captures = [openCapture(a), openCapture(b)];
  const injectors = [new PacketInjector(b), new PacketInjector(a)];
  const out = new ArrayBuffer(16);
  const hdrOut = new Uint8Array(out, 0, 8), dataOut = new Uint8Array(out, 8, 8);
  const outView = new Deno.UnsafePointerView(Deno.UnsafePointer.of(out)!);
  const frame = new Uint8Array(65536);
  const caplenAt = structs.pcap_pkthdr.offsets.caplen;
  const { size, offsets } = structs.pollfd;
  const fds = new Uint8Array(2 * size);
  const view = new DataView(fds.buffer);
  for (const [i, c] of captures.entries()) {
    view.setInt32(i * size + offsets.fd, c.fd, true);
    view.setInt16(i * size + offsets.events, POLLIN, true);
  }
  const drainReady = () => {
    for (const [i, c] of captures.entries()) {
      if (view.getInt16(i * size + offsets.revents, true) === 0) continue;
      while (lib.pcap_next_ex(c.handle, hdrOut, dataOut) === 1) {
        const caplen = new Deno.UnsafePointerView(outView.getPointer(0)!).getUint32(caplenAt);
        const f = frame.subarray(0, caplen);
        Deno.UnsafePointerView.copyInto(outView.getPointer(8)!, f);
        injectors[i].inject(f);
      }
    }
  };
  return {
    /** The Worker's loop: never returns. */
    blocking(): never {
      for (;;) {
        if (libc().poll_sync(fds, 2n, -1) > 0) drainReady();
      }
    },
    /** The JS thread's loop, waiting on the blocking pool. */
    async pooled(): Promise<never> {
      for (;;) {
        if (await libc().poll(fds, 2n, -1) > 0) drainReady();
      }
    },
  };
}

function option(name: string, fallback: string): string {
  const i = Deno.args.indexOf(name);
  return i >= 0 && i + 1 < Deno.args.length ? Deno.args[i + 1] : fallback;
}

/** The forwarder process: `--forward pool|worker A B`, run inside the middle namespace. */
async function forwardMain(mode: Mode, a: string, b: string): Promise<void> {
  if (mode === "worker") {
    const worker = new Worker(new URL("./worker_floor_thread.ts", import.meta.url), {
      type: "module",
    });
    worker.onerror = (e) => {
      console.error(`worker: ${e.message}`);
      Deno.exit(1);
    };
    worker.postMessage([a, b]);
    console.log("forwarding");
    return;
  }
  const f = forwarder(a, b);
  console.log("forwarding");
  await f.pooled();
}

async function benchMain(): Promise<void> {
  const count = Number(option("--count", "300"));
  const runs = Number(option("--runs", "2"));
  const ns = { a: `${PREFIX}${Deno.pid}-0-a`, b: `${PREFIX}${Deno.pid}-0-b`, mid: "" };
  ns.mid = `${PREFIX}${Deno.pid}-0-mid`;
  const all = [ns.a, ns.b, ns.mid];
  try {
    for (const n of all) await run(null, ["ip", "netns", "add", n]);
    for (const [side, dev, ip] of [[ns.a, "xa", "10.9.0.1"], [ns.b, "xb", "10.9.0.2"]]) {
      await run(ns.mid, ["ip", "link", "add", dev, "type", "veth", "peer", "name", "e0"]);
      await run(ns.mid, ["ip", "link", "set", "e0", "netns", side]);
      await run(side, ["ip", "addr", "add", `${ip}/24`, "dev", "e0"]);
      await run(side, ["ip", "link", "set", "e0", "up"]);
      await run(ns.mid, ["ip", "link", "set", dev, "up"]);
    }
    const results = new Map<Mode, number[]>(MODES.map((m) => [m, []]));
    for (let r = 0; r < runs; r++) {
      for (const mode of MODES) {
        let fwd = null;
        if (mode === "bridge") {
          await run(ns.mid, ["ip", "link", "add", "br0", "type", "bridge"]);
          for (const dev of ["xa", "xb"]) {
            await run(ns.mid, ["ip", "link", "set", dev, "master", "br0"]);
          }
          await run(ns.mid, ["ip", "link", "set", "br0", "up"]);
        } else {
          fwd = spawn(ns.mid, [
            Deno.execPath(),
            "run",
            "-A",
            "--v8-flags=--max-semi-space-size=1",
            new URL(import.meta.url).pathname,
            "--forward",
            mode,
            "xa",
            "xb",
          ]);
          await fwd.waitForLine(/forwarding/, 20_000);
        }
        await waitFor(`a ping through ${mode}`, async () => {
          const p = await tryRun(ns.a, ["ping", "-n", "-c", "1", "-W", "1", "10.9.0.2"]);
          return p.code === 0 ? true : undefined;
        }, 20_000);
        const { rtts } = await pingTimes(ns.a, "10.9.0.2", { count, intervalS: 0.02, waitS: 1 });
        results.get(mode)!.push(...rtts);
        if (fwd) await fwd.kill();
        else await run(ns.mid, ["ip", "link", "del", "br0"]);
      }
    }
    console.log(`round trips A→B→A, ${count} pings × ${runs} runs, ms:`);
    for (const [mode, rtts] of results) {
      const s = rtts.sort((x, y) => x - y);
      const [p50, p90, p99] = [0.5, 0.9, 0.99].map((p) => percentile(s, p).toFixed(3));
      console.log(`  ${mode.padEnd(7)} p50 ${p50}  p90 ${p90}  p99 ${p99}  (n=${s.length})`);
    }
  } finally {
    for (const n of all) await tryRun(null, ["ip", "netns", "del", n]);
  }
}

if (import.meta.main) {
  const at = Deno.args.indexOf("--forward");
  if (at >= 0) {
    const [mode, a, b] = Deno.args.slice(at + 1);
    await forwardMain(mode as Mode, a, b);
  } else {
    await benchMain();
  }
}
