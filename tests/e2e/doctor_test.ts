/**
 * `vnet doctor` against real servers (TLS) in namespaces: the all-pass case, then each thing it
 * must catch: a missing device, a device that is down, an MTU mismatch between the Proxy's and
 * the Host's devices, a world-readable secret, UDP dropped on the way, an unreachable peer, a
 * wrong secret, a peer of another CA. Each is checked by its exit status and the line that says what is wrong.
 *
 *   flock /tmp/vnet-ns.lock deno test -A tests/e2e/doctor_test.ts
 */
import { run, type RunResult, type Topology, tryRun, vnetCommand } from "../../lab/netns.ts";
import { assert, e2e, stepper, withTopology } from "./fixtures/e2e_common.ts";

interface Check {
  status: "PASS" | "WARN" | "FAIL" | "INFO";
  name: string;
  message: string;
}

interface Report {
  code: number;
  checks: Check[];
  text: string;
}

/** `vnet doctor ARGS --json` in a namespace (default: the Proxy's). */
async function doctor(topo: Topology, args: string[], ns = topo.ns.proxy): Promise<Report> {
  const r: RunResult = await topo.vnet(["doctor", ...args, "--json"], { ns, timeoutMs: 60_000 });
  let parsed: { checks: Check[]; exitCode: number };
  try {
    parsed = JSON.parse(r.stdout);
  } catch {
    throw new Error(`vnet doctor gave no JSON (exit ${r.code}): ${r.stdout}\n${r.stderr}`);
  }
  assert(parsed.exitCode === r.code, `exitCode ${parsed.exitCode} but exit status ${r.code}`);
  const text = parsed.checks.map((c) => `${c.status} ${c.name}: ${c.message}`).join("\n");
  return { code: r.code, checks: parsed.checks, text };
}

function check(report: Report, name: string): Check {
  const c = report.checks.find((c) => c.name === name);
  assert(c, `no check '${name}' in:\n${report.text}`);
  return c;
}

function expect(report: Report, name: string, status: Check["status"], re: RegExp): void {
  const c = check(report, name);
  assert(
    c.status === status && re.test(c.message),
    `${name}: want ${status} ${re}, got\n${report.text}`,
  );
  console.log(`    ${c.status} ${c.name}: ${c.message}`);
}

e2e("doctor: all pass, and each broken set-up named", async (t) => {
  await withTopology({ vms: 1 }, 240_000, async (topo) => {
    const step = stepper(t, () => topo.serverLogs());
    await topo.startServers({ tls: true });
    const tls = topo.tlsDir!;
    const host = topo.addr("host");
    const vm = topo.vms[0];
    const base = [
      "--dev",
      "lan0",
      "--peer",
      host,
      "--peer-dev",
      vm.hostDev,
      "--secret-file",
      topo.secretFile,
      "--tls-ca",
      `${tls}/ca.pem`,
    ];

    await step("all pass: exit 0", async () => {
      const r = await doctor(topo, base);
      const bad = r.checks.filter((c) => c.status === "WARN" || c.status === "FAIL");
      assert(r.code === 0 && bad.length === 0, `not all pass (exit ${r.code}):\n${r.text}`);
      for (
        const name of ["privileges", "libpcap", "device lan0", "device lan0 capture", "secret"]
      ) {
        assert(check(r, name).status === "PASS", `${name}:\n${r.text}`);
      }
      expect(r, "peer tcp", "PASS", /connected in [\d.]+ ms/);
      expect(r, "peer tls", "PASS", /from your CA, valid until/);
      expect(r, "peer handshake", "PASS", /same secret, over verified TLS/);
      expect(r, "peer version", "PASS", /runs vnet /);
      expect(r, "peer udp", "PASS", /^UDP 10\.78\.0\.2:7000 answered in [\d.]+ ms/);
      expect(r, "peer mtu", "PASS", /both have MTU 1500/);
      const human = await topo.vnet(["doctor", ...base]);
      assert(human.code === 0 && /^PASS {2}privileges: /m.test(human.stdout), human.stdout);
    });

    await step("a missing device: FAIL, exit 1", async () => {
      const r = await doctor(topo, ["--dev", "nope0"]);
      assert(r.code === 1, `exit ${r.code}\n${r.text}`);
      expect(r, "device nope0", "FAIL", /does not exist here \(interfaces: .*lan0.*\)/);
    });

    await step("a device that is down: FAIL with the command to bring it up", async () => {
      await run(topo.ns.host, ["ip", "link", "set", vm.hostIf, "down"]);
      try {
        const r = await doctor(topo, ["--dev", vm.hostIf], topo.ns.host);
        assert(r.code === 1, `exit ${r.code}\n${r.text}`);
        expect(r, `device ${vm.hostIf}`, "FAIL", new RegExp(`ip link set ${vm.hostIf} up`));
      } finally {
        await run(topo.ns.host, ["ip", "link", "set", vm.hostIf, "up"]);
      }
    });

    await step(
      "an MTU mismatch between the Proxy's and the Host's devices: WARN, exit 2",
      async () => {
        await run(topo.ns.host, ["ip", "link", "set", vm.hostIf, "mtu", "1400"]);
        try {
          const r = await doctor(topo, base);
          assert(r.code === 2, `exit ${r.code}\n${r.text}`);
          expect(
            r,
            "peer mtu",
            "WARN",
            /lan0 here 1500, vmif0 on .* 1400.*TCP is segmented to fit, other frames .*dropped and counted/,
          );
        } finally {
          await run(topo.ns.host, ["ip", "link", "set", vm.hostIf, "mtu", "1500"]);
        }
      },
    );

    await step("a world-readable secret: FAIL with the chmod", async () => {
      const open = `${topo.dir}/open.secret`;
      await Deno.copyFile(topo.secretFile, open);
      await Deno.chmod(open, 0o644);
      const r = await doctor(topo, [
        "--secret-file",
        open,
        "--peer",
        host,
        "--tls-ca",
        `${tls}/ca.pem`,
      ]);
      assert(r.code === 1, `exit ${r.code}\n${r.text}`);
      expect(r, "secret", "FAIL", /0644 .*too open; run chmod 600 /);
    });

    await step("UDP dropped on the way to the peer: WARN naming the port, exit 2", async () => {
      await run(topo.ns.host, ["nft", "-f", "-"], {
        stdin: `table inet vnt_doctor_udp {
          chain in { type filter hook input priority 0; udp dport 7000 drop; }
        }`,
      });
      try {
        const r = await doctor(topo, [...base, "--timeout", "2"]);
        assert(r.code === 2, `exit ${r.code}\n${r.text}`);
        expect(r, "peer udp", "WARN", /no answer from UDP .*:7000 in 2 s: .*let UDP port 7000/);
      } finally {
        await tryRun(topo.ns.host, ["nft", "delete", "table", "inet", "vnt_doctor_udp"]);
      }
    });

    await step("an unreachable peer: refused, and silent", async () => {
      const refused = await doctor(topo, [
        "--peer",
        "10.78.0.2:7999",
        "--secret-file",
        topo.secretFile,
      ]);
      assert(refused.code === 1, `exit ${refused.code}\n${refused.text}`);
      expect(refused, "peer tcp", "FAIL", /refused the connection: is vnet server running/);
      const silent = await doctor(topo, [
        "--peer",
        "10.78.0.250:7000",
        "--secret-file",
        topo.secretFile,
        "--timeout",
        "1",
      ]);
      assert(silent.code === 1, `exit ${silent.code}\n${silent.text}`);
      expect(silent, "peer tcp", "FAIL", /did not answer .*firewalls/);
    });

    await step("a wrong secret: FAIL that says so", async () => {
      const r = await doctor(topo, [
        "--peer",
        host,
        "--secret-file",
        topo.wrongSecretFile,
        "--tls-ca",
        `${tls}/ca.pem`,
      ]);
      assert(r.code === 1, `exit ${r.code}\n${r.text}`);
      expect(r, "peer handshake", "FAIL", /^wrong secret: /);
    });

    await step("a peer of another CA: FAIL naming both", async () => {
      const other = `${topo.dir}/other-ca`;
      const made = await tryRun(null, [...vnetCommand(), "cert", "ca", "--out", other]);
      assert(made.code === 0, made.stderr);
      const r = await doctor(topo, [
        "--peer",
        host,
        "--secret-file",
        topo.secretFile,
        "--tls-ca",
        `${other}/ca.pem`,
      ]);
      assert(r.code === 1, `exit ${r.code}\n${r.text}`);
      expect(r, "peer tls", "FAIL", /is not from the CA in .*other-ca/);
      assert(check(r, "peer handshake").status === "FAIL", r.text);
    });
  });
});
