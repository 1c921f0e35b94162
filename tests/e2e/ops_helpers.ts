/**
 * Helpers for the "keep it running" end-to-end tests (migration, faults, fuzz, load): bounded
 * topologies, `list` as the server really answers it, link faults with nft, process memory, a
 * byte-counting TCP stream and a timestamped ping. Built on lab/netns.ts (not edited here).
 */
import { type ListedHandler } from "../../src/control/rpc.ts";
import {
  type Proc,
  type Role,
  run,
  type RunResult,
  sleep,
  spawn,
  type Topology,
  tryRun,
  waitFor,
} from "../../lab/netns.ts";

export { assert, e2e, NS_OK, stepper, withTopology } from "./fixtures/e2e_common.ts";
import { assert } from "./fixtures/e2e_common.ts";

/** One entry of `vnet client list --json`. */
export type Listed = ListedHandler;

/** `vnet client list --json` against one server's role. */
export async function list(topo: Topology, role: Role = "proxy"): Promise<Listed[]> {
  const r = await topo.vnet([
    "client",
    "list",
    "--server",
    topo.addr(role),
    "--secret-file",
    topo.secretFile,
    "--json",
  ]);
  if (r.code !== 0) throw new Error(`vnet client list (${role}) failed: ${r.stderr.trim()}`);
  return JSON.parse(r.stdout) as Listed[];
}

export function byMac(handlers: Listed[], mac: string): Listed | undefined {
  return handlers.find((h) => h.macs.map((m) => m.toLowerCase()).includes(mac.toLowerCase()));
}

/** Gives a VM a fixed LAN address (no DHCP: faster, and independent of the bridge's state). */
export async function setVmIp(vmNs: string, ip: string): Promise<void> {
  await run(vmNs, ["ip", "addr", "replace", `${ip}/24`, "dev", "eth0"]);
}

/** Pings until `count` replies arrive, bounded by `deadlineS`. */
export async function pingOk(
  topo: Topology,
  target: string,
  opts: { count?: number; deadlineS?: number } = {},
): Promise<void> {
  const p = await topo.ping(topo.ns.client, target, opts);
  assert(p.ok, `ping ${target} failed:\n${p.output}\n${topo.serverLogs(20)}`);
}

/** Waits until pinging `target` from the LAN client works again (e.g. after a fault). */
export async function waitPing(topo: Topology, target: string, timeoutMs: number): Promise<void> {
  await waitFor(
    `ping ${target} to work`,
    async () => {
      const p = await topo.ping(topo.ns.client, target, { count: 1, deadlineS: 1 });
      return p.ok ? true : undefined;
    },
    timeoutMs,
    100,
  );
}

// ---------------------------------------------------------------------------------------------
// Faults on the server-to-server connection (nft in one namespace)
// ---------------------------------------------------------------------------------------------

/** Installs an nft table `vnetfault` in `ns` with one rule on tcp port `port` in and out. */
export async function nftFault(
  ns: string,
  port: number,
  action: "drop" | "reject with tcp reset",
): Promise<void> {
  const rules = `table inet vnetfault {
  chain input { type filter hook input priority 0; tcp dport ${port} ${action}; tcp sport ${port} ${action}; }
  chain output { type filter hook output priority 0; tcp dport ${port} ${action}; tcp sport ${port} ${action}; }
}
`;
  await run(ns, ["nft", "-f", "-"], { stdin: rules });
}

export async function nftClear(ns: string): Promise<void> {
  await tryRun(ns, ["nft", "delete", "table", "inet", "vnetfault"]);
}

// ---------------------------------------------------------------------------------------------
// Memory
// ---------------------------------------------------------------------------------------------

/** The pid of the deno process serving `proc` (ip netns exec execs it, so usually the same). */
export function serverPid(proc: Proc): number {
  return proc.pid;
}

/** VmRSS of a process in KiB, from /proc. */
export function rssKiB(pid: number): number {
  const status = Deno.readTextFileSync(`/proc/${pid}/status`);
  const m = /VmRSS:\s+(\d+) kB/.exec(status);
  if (!m) throw new Error(`no VmRSS for pid ${pid}`);
  return Number(m[1]);
}

// ---------------------------------------------------------------------------------------------
// A TCP stream with every byte accounted for
// ---------------------------------------------------------------------------------------------

/**
 * Receiver: accepts one connection, says "flowing" once 64 KiB arrived, reads to EOF, answers
 * "RECEIVED <count> <sha256>" and exits. Sender: sends `total` bytes of a deterministic pattern at about `rate` bytes/s, shuts
 * down its side, prints "SENT <count> <sha256>" and the receiver's answer. Any reset or error
 * prints "ERROR ..." and exits 1.
 */
const STREAM_PY = `
import hashlib, socket, sys, time
mode = sys.argv[1]
FLOWING = 64 * 1024
if mode == "recv":
    ip, port = sys.argv[2], int(sys.argv[3])
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind((ip, port)); srv.listen(1)
    print("listening", flush=True)
    try:
        c, _ = srv.accept()
        h, n = hashlib.sha256(), 0
        while True:
            b = c.recv(65536)
            if not b: break
            if n < FLOWING <= n + len(b): print("flowing", flush=True)
            h.update(b); n += len(b)
        c.sendall(f"RECEIVED {n} {h.hexdigest()}\\n".encode())
        c.shutdown(socket.SHUT_WR)
        c.recv(1)
        c.close()
        print(f"RECEIVED {n} {h.hexdigest()}", flush=True)
    except Exception as e:
        print(f"ERROR {type(e).__name__}: {e}", flush=True); sys.exit(1)
else:
    ip, port, total, rate = sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5])
    s = socket.create_connection((ip, port), timeout=60)
    block = bytes((i * 7 + 3) & 0xff for i in range(8192))
    h, n, t0 = hashlib.sha256(), 0, time.time()
    try:
        while n < total:
            chunk = block[: min(len(block), total - n)]
            s.sendall(chunk); h.update(chunk); n += len(chunk)
            ahead = n / rate - (time.time() - t0)
            if ahead > 0: time.sleep(ahead)
        s.shutdown(socket.SHUT_WR)
        print(f"SENT {n} {h.hexdigest()}", flush=True)
        answer = b""
        while not answer.endswith(b"\\n"):
            b = s.recv(256)
            if not b: break
            answer += b
        print(answer.decode().strip() or "ERROR no answer", flush=True)
    except Exception as e:
        print(f"ERROR {type(e).__name__}: {e} after {n} bytes", flush=True); sys.exit(1)
`;

export async function streamReceiver(ns: string, ip: string, port: number): Promise<Proc> {
  const p = spawn(ns, ["python3", "-c", STREAM_PY, "recv", ip, String(port)]);
  await p.waitForLine(/^listening/, 10_000);
  return p;
}

export function streamSender(
  ns: string,
  ip: string,
  port: number,
  total: number,
  bytesPerSecond: number,
): Proc {
  return spawn(ns, [
    "python3",
    "-c",
    STREAM_PY,
    "send",
    ip,
    String(port),
    String(total),
    String(bytesPerSecond),
  ]);
}

/**
 * Waits until traffic is under way (in place of a fixed pause before a fault): each receiver
 * has had its first 64 KiB, and the ping its first `replies` replies.
 */
export async function flowing(receivers: Proc[], ping: Proc, replies = 3): Promise<void> {
  await Promise.all(receivers.map((r) => r.waitForLine(/^flowing/, 15_000)));
  await waitFor(`${replies} ping replies`, () => {
    const n = ping.lines.filter((l) => / bytes from /.test(l)).length;
    return Promise.resolve(n >= replies ? true : undefined);
  }, 15_000);
}

// ---------------------------------------------------------------------------------------------
// Timestamped ping: the longest silence during a run
// ---------------------------------------------------------------------------------------------

/** `ping -D -i INTERVAL` for a while; returns replies and the longest gap between two. */
export function pingMonitor(ns: string, target: string, intervalS: number, seconds: number): Proc {
  return spawn(ns, [
    "ping",
    "-n",
    "-D",
    "-i",
    String(intervalS),
    "-w",
    String(seconds),
    target,
  ]);
}

export interface PingSummary {
  replies: number;
  /** Longest time between two consecutive replies, ms. */
  maxGapMs: number;
  lost: number;
}

export function pingSummary(p: Proc): PingSummary {
  const times: number[] = [];
  const seqs = new Set<number>();
  let maxSeq = 0;
  for (const line of p.lines) {
    const m = /^\w+\| \[(\d+\.\d+)\] \d+ bytes from .* icmp_seq=(\d+)/.exec(line);
    if (!m) continue;
    times.push(Number(m[1]) * 1000);
    seqs.add(Number(m[2]));
    maxSeq = Math.max(maxSeq, Number(m[2]));
  }
  let maxGapMs = 0;
  for (let i = 1; i < times.length; i++) maxGapMs = Math.max(maxGapMs, times[i] - times[i - 1]);
  return { replies: times.length, maxGapMs: Math.round(maxGapMs), lost: maxSeq - seqs.size };
}

export function firstLine(r: RunResult): string {
  return r.stderr.trim().split("\n")[0] ?? "";
}

export { sleep };
