/**
 * The real libpcap capture and libnet, pcap and packet-socket injection, on a veth pair (va <->
 * vb, MTU 1500) in a throwaway network namespace. FFI runs in-process, so each scenario runs in a
 * subprocess started with `ip netns exec` (tests/e2e/fixtures/pcap_probe.ts) and reports JSON.
 *
 *   deno test -A tests/e2e/capture_inject_test.ts          (as root)
 *   VNET_BENCH=1 deno test -A tests/e2e/capture_inject_test.ts   (also prints throughput)
 */

import { assert, assertEquals } from "../unit/assert.ts";

const PROBE = new URL("./fixtures/pcap_probe.ts", import.meta.url).pathname;
let counter = 0;

function hasIp(): boolean {
  try {
    return new Deno.Command("ip", { args: ["-V"], stdout: "null", stderr: "null" }).outputSync()
      .success;
  } catch {
    return false;
  }
}
const canRun = Deno.build.os === "linux" && Deno.uid() === 0 && hasIp();

function sh(cmd: string, args: string[]): string {
  const out = new Deno.Command(cmd, { args, stdout: "piped", stderr: "piped" }).outputSync();
  if (!out.success) {
    throw new Error(`${cmd} ${args.join(" ")}: ${new TextDecoder().decode(out.stderr).trim()}`);
  }
  return new TextDecoder().decode(out.stdout);
}

/** A namespace named like lab/netns.ts's (`vnt-<pid>-<n>-<role>`) so cleanup.sh finds it. */
function createNamespace(): string {
  const ns = `vnt-${Deno.pid}-${9000 + counter++}-capinj`;
  sh("ip", ["netns", "add", ns]);
  try {
    sh("ip", ["-n", ns, "link", "add", "va", "type", "veth", "peer", "name", "vb"]);
    sh("ip", ["-n", ns, "link", "set", "va", "address", "02:00:00:00:aa:01", "mtu", "1500"]);
    sh("ip", ["-n", ns, "link", "set", "vb", "address", "02:00:00:00:aa:02", "mtu", "1500"]);
    // No IPv6 chatter (DAD, router solicitations) on the test link.
    sh("ip", ["netns", "exec", ns, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1"]);
    sh("ip", ["netns", "exec", ns, "sysctl", "-qw", "net.ipv6.conf.default.disable_ipv6=1"]);
    for (const dev of ["lo", "va", "vb"]) sh("ip", ["-n", ns, "link", "set", dev, "up"]);
  } catch (e) {
    deleteNamespace(ns);
    throw e;
  }
  return ns;
}

function deleteNamespace(ns: string): void {
  try {
    sh("ip", ["netns", "del", ns]);
  } catch {
    // already gone
  }
}

// deno-lint-ignore no-explicit-any
type Json = any;

/** Runs one probe scenario in `ns`; returns its JSON result (the last stdout line). */
async function probe(ns: string, scenario: string, ...args: string[]): Promise<Json> {
  const out = await new Deno.Command("ip", {
    args: ["netns", "exec", ns, Deno.execPath(), "run", "-A", PROBE, scenario, "va", "vb", ...args],
    stdout: "piped",
    stderr: "piped",
  }).output();
  const stdout = new TextDecoder().decode(out.stdout).trim();
  const stderr = new TextDecoder().decode(out.stderr).trim();
  const last = stdout.split("\n").pop() ?? "";
  if (!out.success) throw new Error(`probe ${scenario} failed (${out.code}): ${last}\n${stderr}`);
  return JSON.parse(last);
}

Deno.test({
  name: "libpcap capture and libnet injection on a veth pair",
  ignore: !canRun,
  async fn(t) {
    const ns = createNamespace();
    try {
      await t.step("a filter on the source MAC captures only matching frames", async () => {
        const r = await probe(ns, "filter");
        assertEquals(r.injected, 10);
        assertEquals(r.got.map((g: Json) => g.src), Array(5).fill("02:00:00:00:00:01"));
        assertEquals(r.got.map((g: Json) => g.seq), [0, 2, 4, 6, 8]);
        assertEquals(r.got.map((g: Json) => [g.length, g.wireLength]), Array(5).fill([100, 100]));
        assertEquals(r.stats.dropped, 0);
      });

      await t.step(
        "injected on A, captured on B; never by a capture on A (inbound only)",
        async () => {
          const r = await probe(ns, "direction");
          assertEquals(r.injected, 20);
          const expected = [
            ...Array.from({ length: 10 }, (_, i) => `02:00:00:00:00:0a/${i}`), // LibnetInjector
            ...Array.from({ length: 10 }, (_, i) => `02:00:00:00:00:0b/${i + 10}`), // PcapInjector
          ];
          assertEquals(r.peer, expected);
          assertEquals(r.same, 0, "frames injected on va must not be captured on va");
          assertEquals(r.sameBack, ["02:00:00:00:00:0c/99"], "frames arriving on va are captured");
        },
      );

      await t.step("a 9000-byte frame on a 1500-MTU veth is refused", async () => {
        const r = await probe(ns, "oversize");
        assertEquals(r.mtu, 1500);
        assertEquals(r.libnetBig, false);
        assert(/too long/i.test(r.libnetError), `libnet error: ${r.libnetError}`);
        assertEquals(r.pcapBig, false);
        assert(/too long/i.test(r.pcapError), `pcap error: ${r.pcapError}`);
        assertEquals([r.libnetFull, r.pcapFull], [true, true]);
        assertEquals(r.got, [1514, 1514], "only the two full-size frames arrive");
      });

      await t.step("the GSO packet injector: copied, gathered, and refused", async () => {
        const r = await probe(ns, "packet");
        assertEquals([r.smallSent, r.gsoSent, r.tooBig], [true, true, false]);
        assert(/too long/i.test(r.tooBigError), `packet injector error: ${r.tooBigError}`);
        assertEquals(r.lengths[0], 100, `captured lengths ${r.lengths}`);
        assert(r.smallIntact, "the small frame arrived changed");
        assert(r.payloadIntact, `the super-frame's payload arrived changed: lengths ${r.lengths}`);
      });

      await t.step("close() twice is fine and wakes a pending wait", async () => {
        const r = await probe(ns, "close");
        assertEquals(r.pendingResult, false);
        assert(r.elapsedMs < 2000, `pending wait took ${r.elapsedMs} ms to resolve`);
        assertEquals([r.afterWait, r.afterDrain], [false, 0]);
        assertEquals([r.injectAfterClose, r.pcapInjectAfterClose], [false, false]);
      });

      await t.step("close() inside onFrame keeps the frame readable until it returns", async () => {
        const r = await probe(ns, "close-in-drain");
        assertEquals(r.seen, 1);
        assertEquals(r.waitAfter, false);
      });

      await t.step("a wrong device and a bad filter give clear VnetErrors", async () => {
        const r = await probe(ns, "errors");
        const noDevice = "no such network interface 'nosuch0' (see `vnet client devices`)";
        for (const k of ["captureNoDevice", "libnetNoDevice", "pcapInjNoDevice"]) {
          assertEquals([r[k].name, r[k].message], ["VnetError", noDevice], k);
        }
        assertEquals(r.badFilter.name, "VnetError");
        assertEquals(
          r.badFilter.message,
          "bad capture filter 'ether src nonsense((': unknown ether host 'nonsense'",
        );
      });

      await t.step(
        "a Proxy counts the VM's MAC arriving from the LAN as conflicts, not its own injections",
        async () => {
          const r = await probe(ns, "conflicts");
          const vm = "02:00:00:00:00:0a";
          assertEquals(r.forwarded, ["02:00:00:00:00:0c/0", "02:00:00:00:00:0c/26"]);
          assertEquals(r.conflicts, [21, 22, 23, 24, 25].map((i) => `${vm}/${i}`));
          // The 20 frames it injected itself never reached the ring: 2 + 5 frames were received.
          assertEquals(r.stats.received, 7, JSON.stringify(r.stats));
        },
      );

      if (Deno.env.get("VNET_BENCH")) {
        await t.step("throughput (VNET_BENCH=1)", async () => {
          const n = Deno.env.get("VNET_BENCH_FRAMES") ?? "200000";
          const inject = await probe(ns, "bench-inject", n, "1500", "libnet");
          const injectPcap = await probe(ns, "bench-inject", n, "1500", "pcap");
          const burst = await probe(ns, "burst", "50000", "1500", "256");
          // Concurrent: a capture process on vb while another process injects on va.
          const capture = new Deno.Command("ip", {
            args: ["netns", "exec", ns, Deno.execPath(), "run", "-A", PROBE, "bench-capture"]
              .concat(["va", "vb", "1000"]),
            stdout: "piped",
            stderr: "inherit",
          }).spawn();
          const reader = capture.stdout.pipeThrough(new TextDecoderStream()).getReader();
          let text = "";
          while (!text.includes("ready")) {
            const { value, done } = await reader.read();
            if (done) break;
            text += value;
          }
          const pipelineInject = await probe(ns, "bench-inject", n, "1500", "libnet");
          for (;;) {
            const { value, done } = await reader.read();
            if (done) break;
            text += value;
          }
          await capture.status;
          const pipeline = JSON.parse(text.trim().split("\n").pop()!);
          console.log(JSON.stringify({ inject, injectPcap, burst, pipelineInject, pipeline }));
        });
      }
    } finally {
      deleteNamespace(ns);
    }
  },
});
