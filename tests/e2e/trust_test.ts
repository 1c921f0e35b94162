/**
 * Trusting the peer: TLS with `vnet cert` material end to end, and every way it should refuse
 * (foreign CA, expired, wrong name, self-signed, TLS/plain mismatches, wrong shared secret),
 * each with a clear message and nothing crossing. Plus: the secret never shows, and private
 * files others can read are refused.
 *
 *   deno test -A tests/e2e/trust_test.ts
 */
import { type RunResult, Topology, tryRun, vnetCommand, WAN } from "../../lab/netns.ts";
import {
  assert,
  assertCleanFailure,
  e2e,
  findByMac,
  ipInRange,
  stepper,
  withEnv,
} from "./fixtures/e2e_common.ts";
import { listAt, Site, startServerAt } from "./fixtures/firewall.ts";

async function site(): Promise<Site> {
  return new Site(await Topology.create({ vms: 1 }));
}

/** `vnet ARGS` in the root namespace (cert making, mode checks); throws unless it exits 0. */
async function vnetOk(args: string[]): Promise<void> {
  const r = await tryRun(null, [...vnetCommand(), ...args]);
  if (r.code !== 0) throw new Error(`vnet ${args.join(" ")} failed: ${r.stderr}`);
}

e2e("trust: TLS with vnet cert material, and what it refuses", async (t) => {
  await withEnv(site, 240_000, async ({ topo }) => {
    const step = stepper(t, () => topo.serverLogs());
    const vm = topo.vms[0];
    await topo.startServers({ tls: true });
    const tls = topo.tlsDir!;
    const ca = `${tls}/ca.pem`;
    const secret = (await Deno.readTextFile(topo.secretFile)).trim();
    const wrongSecret = (await Deno.readTextFile(topo.wrongSecretFile)).trim();
    /** Everything any vnet client printed: checked for the secret at the end. */
    const seen: string[] = [];
    const vnet = async (args: string[]): Promise<RunResult> => {
      const r = await topo.vnet(args);
      seen.push(r.stdout, r.stderr);
      return r;
    };
    const create = (opts: { tlsCa?: string | null; secretFile?: string } = {}) => {
      markHost();
      const args = topo.handlerArgs([vm], { secretFile: opts.secretFile })
        .filter((a, i, all) => a !== "--tls-ca" && all[i - 1] !== "--tls-ca");
      if (opts.tlsCa !== null) args.push("--tls-ca", opts.tlsCa ?? ca);
      return vnet(args);
    };
    const serverTls = (dir: string) => [
      "--tls-cert",
      `${dir}/cert.pem`,
      "--tls-key",
      `${dir}/key.pem`,
      "--tls-ca",
      ca,
    ];
    const restart = (role: "proxy" | "host", args: string[], secretFile?: string) =>
      startServerAt(topo, role, topo.addr(role), args, { secretFile });
    let vmIp = "";

    /** Where the host's log stood before the case under test (see nothingCrossed). */
    let mark = { proc: topo.servers.host!, lines: 0 };
    const markHost = () =>
      mark = { proc: topo.servers.host!, lines: topo.servers.host!.lines.length };
    /**
     * Nothing crossed: no handler on the proxy, none opened on the host since `markHost()`,
     * the VM is silent.
     */
    const nothingCrossed = async (proxyTls = true) => {
      const p = await listAt(
        topo,
        topo.ns.proxy,
        topo.addr("proxy"),
        proxyTls ? ["--tls-ca", ca] : [],
      );
      assert(p.length === 0, `the proxy lists ${JSON.stringify(p)}`);
      const host = topo.servers.host!;
      const hostLog = host.lines.slice(host === mark.proc ? mark.lines : 0).join("\n");
      assert(!/handler opened/.test(hostLog), `the host opened a handler:\n${hostLog}`);
      const ping = await topo.ping(topo.ns.client, vmIp, { count: 1, deadlineS: 2 });
      assert(!ping.ok, `the VM answers the LAN:\n${ping.output}`);
    };
    /** A host certificate that should be refused: the host presents it, the proxy dials. */
    const refusedHostCert = async (dir: string, re: RegExp, what: string) => {
      await restart("host", serverTls(dir));
      const r = await create();
      const line = assertCleanFailure(r, re, what);
      assert(/could not reach the host server/.test(line), `${what}: ${line}`);
      await nothingCrossed();
      // A client checking the host itself refuses it too.
      const l = await vnet([
        "client",
        "list",
        "--server",
        topo.addr("host"),
        "--secret-file",
        topo.secretFile,
        "--tls-ca",
        ca,
      ]);
      assertCleanFailure(l, re, `${what} (client → host)`);
    };

    await step("TLS end to end: create, DHCP, ping, list says tls", async () => {
      const r = await create();
      assert(r.code === 0, `create failed: ${r.stderr}`);
      const id = r.stdout.trim();
      vmIp = await topo.dhcp(vm);
      assert(ipInRange(vmIp), `lease ${vmIp}`);
      const ping = await topo.ping(topo.ns.client, vmIp);
      assert(ping.ok, `ping failed:\n${ping.output}`);
      const l = await vnet([
        "client",
        "list",
        "--server",
        topo.addr("proxy"),
        "--secret-file",
        topo.secretFile,
        "--tls-ca",
        ca,
      ]);
      assert(l.code === 0 && l.stdout.includes(id), `list: ${l.stderr}`);
      assert(/up\+tls/.test(l.stdout), `list should show the link as up+tls:\n${l.stdout}`);
      const h = findByMac(
        await listAt(topo, topo.ns.proxy, topo.addr("host"), ["--tls-ca", ca]),
        vm.mac,
      );
      assert(h?.link.tls === true, `host link: ${JSON.stringify(h)}`);
    });

    await step("the secret is not in the process list", async () => {
      const ps = await tryRun(null, ["ps", "-eo", "args"]);
      assert(ps.code === 0, `ps failed: ${ps.stderr}`);
      assert(ps.stdout.includes("vnet") || ps.stdout.includes("main.ts"), "ps shows no server");
      assert(!ps.stdout.includes(secret), "the secret is in `ps -eo args`");
    });

    await step("close: the VM is cut off again", async () => {
      const id = (await topo.list("proxy"))[0]?.id;
      const r = await topo.closeHandler(id);
      assert(r.code === 0, `close: ${r.stderr}`);
      const ping = await topo.ping(topo.ns.client, vmIp, { count: 1, deadlineS: 2 });
      assert(!ping.ok, `the VM still answers`);
    });

    await step("wrong shared secret: 'authentication failed', server logs a refusal", async () => {
      const r = await create({ secretFile: topo.wrongSecretFile });
      assertCleanFailure(r, /authentication failed/, "wrong secret");
      await topo.servers.proxy!.waitForLine(/connection refused/, 5000);
      await nothingCrossed();
    });

    await step("a plain TCP client against a TLS server is refused", async () => {
      const r = await create({ tlsCa: null });
      assertCleanFailure(r, /answered in TLS.*--tls-ca/, "plain client, TLS server");
      await nothingCrossed();
    });

    await step("a peer certificate from a foreign CA is refused", async () => {
      const foreign = `${topo.dir}/foreign`;
      await vnetOk(["cert", "ca", "--out", `${foreign}/ca`, "--name", "Mallory CA"]);
      await vnetOk([
        "cert",
        "issue",
        "--ca",
        `${foreign}/ca`,
        "--name",
        "host",
        "--san",
        WAN.host,
        "--out",
        `${foreign}/host`,
      ]);
      await refusedHostCert(
        `${foreign}/host`,
        /certificate.*(UnknownIssuer|issuer)/i,
        "foreign CA",
      );
    });

    await step("the accepting server refuses a dialler whose certificate is foreign", async () => {
      // The proxy holds a certificate of another CA (the client is told to trust that CA), and
      // dials the host: the host, not the TLS layer, must refuse the proof of that certificate.
      const foreign = `${topo.dir}/foreign`;
      await vnetOk([
        "cert",
        "issue",
        "--ca",
        `${foreign}/ca`,
        "--name",
        "proxy",
        "--san",
        WAN.proxy,
        "--out",
        `${foreign}/proxy`,
      ]);
      await restart("host", serverTls(`${tls}/host`));
      await restart("proxy", [
        "--tls-cert",
        `${foreign}/proxy/cert.pem`,
        "--tls-key",
        `${foreign}/proxy/key.pem`,
        "--tls-ca",
        ca,
      ]);
      const r = await create({ tlsCa: `${foreign}/ca/ca.pem` });
      assertCleanFailure(r, /certificate refused: .*not issued by this server's CA/, "dialler");
      const hostLog = topo.servers.host!.lines.join("\n");
      assert(/connection refused.*certificate refused/.test(hostLog), `host log:\n${hostLog}`);
      const p = await listAt(topo, topo.ns.proxy, topo.addr("proxy"), [
        "--tls-ca",
        `${foreign}/ca/ca.pem`,
      ]);
      assert(p.length === 0, `the proxy lists ${JSON.stringify(p)}`);
      assert(!/handler opened/.test(hostLog), `the host opened a handler:\n${hostLog}`);
      await restart("proxy", serverTls(`${tls}/proxy`));
    });

    await step("an expired peer certificate is refused", async () => {
      await vnetOk([
        "cert",
        "issue",
        "--ca",
        tls,
        "--name",
        "host",
        "--san",
        WAN.host,
        "--not-before",
        "2000-01-01",
        "--days",
        "1",
        "--out",
        `${topo.dir}/expired`,
      ]);
      await refusedHostCert(`${topo.dir}/expired`, /certificate.*expired/i, "expired");
    });

    await step("a peer certificate for another address is refused", async () => {
      await vnetOk([
        "cert",
        "issue",
        "--ca",
        tls,
        "--name",
        "host",
        "--san",
        "10.78.0.99",
        "--san",
        "DNS:other.example",
        "--out",
        `${topo.dir}/wrongname`,
      ]);
      await refusedHostCert(
        `${topo.dir}/wrongname`,
        /certificate.*(NotValidForName|name)/i,
        "wrong name",
      );
    });

    await step("a self-signed peer certificate is refused", async () => {
      const dir = `${topo.dir}/selfsigned`;
      await Deno.mkdir(dir, { mode: 0o700 });
      const r = await tryRun(null, [
        "openssl",
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-subj",
        "/CN=host",
        "-addext",
        `subjectAltName=IP:${WAN.host}`,
        "-days",
        "30",
        "-keyout",
        `${dir}/key.pem`,
        "-out",
        `${dir}/cert.pem`,
      ]);
      assert(r.code === 0, `openssl: ${r.stderr}`);
      await Deno.chmod(`${dir}/key.pem`, 0o600);
      await refusedHostCert(dir, /TLS certificate was refused/, "self-signed");
    });

    await step("a TLS peer against a plain server is refused", async () => {
      await restart("host", []);
      const r = await create();
      assertCleanFailure(r, /could not reach the host server.*not a TLS server/, "TLS → plain");
      await nothingCrossed();
    });

    await step("a plain peer against a TLS server is refused", async () => {
      await restart("host", serverTls(`${tls}/host`));
      await restart("proxy", []);
      const r = await create({ tlsCa: null });
      assertCleanFailure(r, /could not reach the host server.*answered in TLS/, "plain peer → TLS");
      await nothingCrossed(false);
    });

    await step("a TLS client against a plain server is refused", async () => {
      const r = await create();
      assertCleanFailure(r, /not a TLS server/, "TLS client → plain");
      await nothingCrossed(false);
    });

    await step("a peer with the wrong secret is refused (over TLS)", async () => {
      await restart("proxy", serverTls(`${tls}/proxy`));
      await restart("host", serverTls(`${tls}/host`), topo.wrongSecretFile);
      const r = await create();
      assertCleanFailure(r, /host server.*authentication failed/, "peer, wrong secret");
      await topo.servers.host!.waitForLine(/connection refused/, 5000);
      await nothingCrossed();
    });

    await step("the secrets appear in no log, list output or error", async () => {
      const ps = await tryRun(null, ["ps", "-eo", "args"]);
      const logs = topo.procs.map((p) => p.output()).join("\n");
      assert(logs.includes("connection refused"), "the logs are not what this step expects");
      for (const [name, s] of [["secret", secret], ["wrong secret", wrongSecret]]) {
        assert(!logs.includes(s), `the ${name} is in a server log`);
        assert(!ps.stdout.includes(s), `the ${name} is in \`ps -eo args\``);
        assert(!seen.join("\n").includes(s), `the ${name} is in a client's output`);
      }
    });

    await step("files others can read are refused as too open", async () => {
      const loose = async (src: string, name: string) => {
        const path = `${topo.dir}/loose-${name}`;
        await Deno.copyFile(src, path);
        await Deno.chmod(path, 0o644);
        return path;
      };
      const port = `${WAN.proxy}:7001`;
      const cases: [string, string[]][] = [
        ["secret file (server)", [
          "server",
          "--listen",
          port,
          "--secret-file",
          await loose(topo.secretFile, "secret"),
        ]],
        ["secret file (client)", [
          "client",
          "list",
          "--server",
          topo.addr("proxy"),
          "--secret-file",
          await loose(topo.secretFile, "secret2"),
          "--tls-ca",
          ca,
        ]],
        ["TLS key", [
          "server",
          "--listen",
          port,
          "--secret-file",
          topo.secretFile,
          "--tls-cert",
          `${tls}/proxy/cert.pem`,
          "--tls-key",
          await loose(`${tls}/proxy/key.pem`, "key.pem"),
          "--tls-ca",
          ca,
        ]],
      ];
      const caDir = `${topo.dir}/looseca`;
      await vnetOk(["cert", "ca", "--out", caDir]);
      await Deno.chmod(`${caDir}/ca-key.pem`, 0o644);
      cases.push(["CA key", [
        "cert",
        "issue",
        "--ca",
        caDir,
        "--name",
        "x",
        "--san",
        "10.0.0.1",
        "--out",
        `${topo.dir}/never`,
      ]]);
      for (const [what, args] of cases) {
        const r = await topo.vnet(args, { timeoutMs: 20_000 });
        seen.push(r.stdout, r.stderr);
        assertCleanFailure(r, /permissions 0644 .*too open.*chmod 600/i, what);
      }
      const never = await Deno.stat(`${topo.dir}/never/cert.pem`).then(() => true, () => false);
      assert(!never, "vnet cert issue wrote a certificate with a too-open CA key");
      assert(!seen.join("\n").includes(secret), `the secret is in an error message`);
    });
  });
});
