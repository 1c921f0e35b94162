/**
 * Where the vnet servers spend their time, per direction.
 *
 *   deno run -A bench/profile.ts [--seconds S] [--tls] [--udp64] [--offloads on|off] [--top N]
 *                                [--dir DIR]
 *
 * For each direction (LAN -> VM, VM -> LAN) it starts both vnet servers with V8's CPU profiler
 * (`deno run -A --cpu-prof --cpu-prof-dir=DIR/<dir>/<role> main.ts server ...`), opens one
 * handler, runs one iperf3 transfer (TCP; with --udp64 a flood of 64-byte UDP frames), stops the
 * servers with SIGINT (the profiles are written on exit) and prints the top self-time functions of
 * each server's threads, the main one and the data-path worker (bench/cpuprofile.ts). `--offloads off` turns the veths' offloads off as the
 * bench does (every frame at most 1500 bytes).
 */
import { LAN, REPO_ROOT, run, spawn, Topology, tryRun } from "../lab/netns.ts";
import { summarize } from "./cpuprofile.ts";
import { type Offloads, setOffloads } from "./bench.ts";

function arg(name: string, dflt: string): string {
  const i = Deno.args.indexOf(name);
  return i >= 0 && Deno.args[i + 1] ? Deno.args[i + 1] : dflt;
}
const SECONDS = Number(arg("--seconds", "5"));
const TOP = Number(arg("--top", "15"));
const TLS = Deno.args.includes("--tls");
const UDP64 = Deno.args.includes("--udp64");
const OFFLOADS = arg("--offloads", "on") as Offloads;
const DIR = arg("--dir", "/tmp/prof");
const VM_IP = "10.77.0.60";

async function direction(reverse: boolean): Promise<void> {
  const name = reverse ? "vm-to-lan" : "lan-to-vm";
  const topo = await Topology.create({ vms: 1 });
  const onSignal = () => topo.cleanup().finally(() => Deno.exit(130));
  Deno.addSignalListener("SIGINT", onSignal);
  try {
    await run(topo.vms[0].ns, ["ip", "addr", "add", `${VM_IP}/${LAN.prefix}`, "dev", "eth0"]);
    await setOffloads(topo, OFFLOADS);
    const profDirs: Record<string, string> = {};
    const tlsDir = TLS ? await topo.makeCerts() : undefined;
    for (const role of ["proxy", "host"] as const) {
      const dir = `${DIR}/${name}${TLS ? "-tls" : ""}/${role}`;
      await Deno.remove(dir, { recursive: true }).catch(() => {});
      await Deno.mkdir(dir, { recursive: true });
      profDirs[role] = dir;
      const p = spawn(topo.ns[role], [
        Deno.execPath(),
        "run",
        "-A",
        "--cpu-prof",
        `--cpu-prof-dir=${dir}`,
        `${REPO_ROOT}/main.ts`,
        "server",
        "--listen",
        topo.addr(role),
        "--secret-file",
        topo.secretFile,
        ...(tlsDir
          ? [
            "--tls-cert",
            `${tlsDir}/${role}/cert.pem`,
            "--tls-key",
            `${tlsDir}/${role}/key.pem`,
            "--tls-ca",
            `${tlsDir}/ca.pem`,
          ]
          : []),
      ]);
      topo.procs.push(p);
      topo.servers[role] = p;
      await p.waitForLine(/server listening/, 30_000);
    }
    await topo.createHandler();
    const srv = spawn(topo.vms[0].ns, ["iperf3", "-s", "-1", "-B", VM_IP, "--forceflush"]);
    topo.procs.push(srv);
    await srv.waitForLine(/Server listening/, 10_000);
    const r = await tryRun(topo.ns.client, [
      "iperf3",
      "-c",
      VM_IP,
      "-t",
      String(SECONDS),
      "-J",
      ...(UDP64 ? ["-u", "-l", "18", "-b", "0"] : []),
      ...(reverse ? ["-R"] : []),
    ], { timeoutMs: (SECONDS + 20) * 1000 });
    const end = JSON.parse(r.stdout).end;
    const mbps = ((end?.sum_received ?? end?.sum)?.bits_per_second ?? 0) / 1e6;
    const kpps = UDP64
      ? ` (${
        ((end?.sum?.packets - end?.sum?.lost_packets) / end?.sum?.seconds / 1000).toFixed(1)
      } kpps received)`
      : "";
    for (const role of ["proxy", "host"] as const) {
      await topo.servers[role]!.kill("SIGINT", 10_000);
    }
    console.log(
      `\n=== ${name}${TLS ? " (tls)" : ""}${UDP64 ? " 64-byte UDP" : ""}, offloads ${OFFLOADS}: ` +
        `iperf3 ${mbps.toFixed(0)} Mbit/s${kpps} over ${SECONDS} s`,
    );
    for (const role of ["proxy", "host"] as const) {
      const files = [...Deno.readDirSync(profDirs[role])].filter((e) =>
        e.name.endsWith(".cpuprofile")
      );
      if (files.length === 0) {
        console.log(`--- ${role}: NO .cpuprofile written in ${profDirs[role]}`);
        continue;
      }
      const what = role === "proxy"
        ? (reverse ? "injects VM->LAN frames on lan0" : "captures LAN->VM frames on lan0")
        : (reverse ? "captures VM->LAN frames on vmif0" : "injects LAN->VM frames on vmif0");
      // One profile per thread: the main thread's (control plane, TLS links) and the data-path
      // worker's (`.worker-N.cpuprofile`), where the frames are captured, switched and sent.
      for (const file of files.map((f) => f.name).sort()) {
        const path = `${profDirs[role]}/${file}`;
        const thread = /\.worker-\d+\.cpuprofile$/.test(file) ? "data-path worker" : "main thread";
        console.log(`--- ${role} server, ${thread} (${what}): ${path}`);
        console.log(summarize(JSON.parse(await Deno.readTextFile(path)), TOP));
      }
    }
  } finally {
    Deno.removeSignalListener("SIGINT", onSignal);
    await topo.cleanup();
  }
}

await direction(false);
await direction(true);
