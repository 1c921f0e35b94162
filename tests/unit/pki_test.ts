/**
 * Tests for src/link/pki.ts and `vnet cert`: the certificates are checked by what really consumes them,
 * Deno.listenTls / Deno.connectTls (rustls) on loopback, plus node:tls for client certificates.
 */
import "reflect-metadata";
import * as x509 from "@peculiar/x509";
import * as tls from "node:tls";
import { strict } from "node:assert";
import { VnetError } from "../../src/errors.ts";
import {
  type CertAndKey,
  checkPrivateFile,
  createCa,
  issueCert,
  parseSan,
  readCa,
  writeSecretFile,
} from "../../src/link/pki.ts";
import { certCommand } from "../../src/cli/cert.ts";

x509.cryptoProvider.set(crypto);

const ca = await createCa({ name: "Test CA" });
const otherCa = await createCa({ name: "Other CA" });
const server = await issueCert({ ca, name: "node1", sans: ["127.0.0.1", "localhost"] });

// ------------------------------------------------------------------------------------------
// Helpers (node:assert; JSR's @std/assert is not reachable)

const assert: (value: unknown, message?: string) => asserts value = strict.ok;
const assertEquals = <T>(actual: T, expected: T) => strict.deepEqual(actual, expected);
const assertMatch = (actual: string, re: RegExp) => strict.match(actual, re);

/** The VnetError `f` throws; fails unless it throws one (containing `includes`, if given). */
function assertThrows(f: () => unknown, includes?: string): VnetError {
  try {
    f();
  } catch (e) {
    return checkVnetError(e, includes);
  }
  throw new Error("expected a VnetError, nothing was thrown");
}

/** The VnetError `f` rejects with; fails unless it rejects with one (containing `includes`). */
async function assertRejects(f: () => Promise<unknown>, includes?: string): Promise<VnetError> {
  try {
    await f();
  } catch (e) {
    return checkVnetError(e, includes);
  }
  throw new Error("expected a VnetError, the promise resolved");
}

function checkVnetError(e: unknown, includes?: string): VnetError {
  if (!(e instanceof VnetError)) throw new Error(`expected a VnetError, got ${e}`, { cause: e });
  if (includes !== undefined && !e.message.includes(includes)) {
    throw new Error(`expected ${JSON.stringify(includes)} in ${JSON.stringify(e.message)}`);
  }
  return e;
}

type ClientOptions = Partial<Deno.ConnectTlsOptions & Deno.TlsCertifiedKeyPem>;

/**
 * One Deno.listenTls server on 127.0.0.1 serving `leaf`, one echo exchange, then a
 * Deno.connectTls client with `clientOpts`. Resolves to the client's result: "ping" or the error.
 */
async function roundTrip(leaf: CertAndKey, clientOpts: ClientOptions = {}): Promise<string> {
  const listener = Deno.listenTls({ hostname: "127.0.0.1", port: 0, ...leaf });
  const served = (async () => {
    const conn = await listener.accept();
    try {
      await conn.handshake();
      const buf = new Uint8Array(16);
      const n = await conn.read(buf);
      if (n) await conn.write(buf.subarray(0, n));
    } catch {
      // the client refused us: expected in the negative tests
    } finally {
      conn.close();
      listener.close();
    }
  })();
  let result: string;
  try {
    result = await clientExchange(listener.addr.port, { caCerts: [ca.cert], ...clientOpts });
  } catch (e) {
    result = `error: ${(e as Error).message}`;
  }
  await served;
  return result;
}

async function clientExchange(port: number, opts: ClientOptions): Promise<string> {
  const conn = await Deno.connectTls({ hostname: "127.0.0.1", port, ...opts });
  try {
    await conn.handshake();
    await conn.write(new TextEncoder().encode("ping"));
    const buf = new Uint8Array(16);
    const n = await conn.read(buf);
    return n === null ? "eof" : new TextDecoder().decode(buf.subarray(0, n));
  } finally {
    conn.close();
  }
}

async function tempDir(): Promise<string> {
  return await Deno.makeTempDir({ prefix: "vnet-pki-" });
}

/** Runs certCommand with console output captured. */
async function runCert(args: string[]): Promise<{ stdout: string; stderr: string }> {
  const out: string[] = [];
  const err: string[] = [];
  const { log, error } = console;
  console.log = (...a: unknown[]) => out.push(a.join(" "));
  console.error = (...a: unknown[]) => err.push(a.join(" "));
  try {
    await certCommand(args);
  } finally {
    console.log = log;
    console.error = error;
  }
  return { stdout: out.join("\n"), stderr: err.join("\n") };
}

async function mode(path: string): Promise<string> {
  return ((await Deno.stat(path)).mode! & 0o777).toString(8);
}

// ------------------------------------------------------------------------------------------
// Certificates

Deno.test("createCa makes a CA:true certificate with keyCertSign and a PKCS#8 key", () => {
  const cert = new x509.X509Certificate(ca.cert);
  assertEquals(cert.subject, "CN=Test CA");
  assertEquals(cert.subject, cert.issuer);
  assert(cert.getExtension(x509.BasicConstraintsExtension)?.ca);
  const ku = cert.getExtension(x509.KeyUsagesExtension)!.usages;
  assert(ku & x509.KeyUsageFlags.keyCertSign);
  assertMatch(ca.key, /^-----BEGIN PRIVATE KEY-----\n/);
  assertEquals((cert.publicKey.algorithm as EcKeyAlgorithm).namedCurve, "P-256");
});

Deno.test("issueCert makes a CA:false leaf with SANs, digitalSignature, server+client auth", async () => {
  const leaf = await issueCert({
    ca,
    name: "node2",
    sans: ["10.1.2.3", "DNS:Node2.Example.", "IP:fd00::0001", "10.1.2.3"],
  });
  const cert = new x509.X509Certificate(leaf.cert);
  assertEquals(cert.subject, "CN=node2");
  assertEquals(cert.issuer, "CN=Test CA");
  assert(await cert.verify({ publicKey: new x509.X509Certificate(ca.cert).publicKey }));
  assertEquals(cert.getExtension(x509.BasicConstraintsExtension)?.ca, false);
  assertEquals(
    cert.getExtension(x509.KeyUsagesExtension)!.usages,
    x509.KeyUsageFlags.digitalSignature,
  );
  assertEquals([...cert.getExtension(x509.ExtendedKeyUsageExtension)!.usages], [
    x509.ExtendedKeyUsage.serverAuth,
    x509.ExtendedKeyUsage.clientAuth,
  ]);
  const sans = cert.getExtension(x509.SubjectAlternativeNameExtension)!.names.toJSON();
  assertEquals(sans, [
    { type: "ip", value: "10.1.2.3" },
    { type: "dns", value: "node2.example" },
    { type: "ip", value: "fd00::1" },
  ]);
  // cert.pem holds only the leaf, so it can go straight into Deno.listenTls({ cert }).
  assertEquals(leaf.cert.match(/BEGIN CERTIFICATE/g)?.length, 1);
});

Deno.test("parseSan: IPs become ip, names dns, junk is a one-line VnetError", () => {
  assertEquals(parseSan("192.0.2.1"), { type: "ip", value: "192.0.2.1" });
  assertEquals(parseSan("::1"), { type: "ip", value: "::1" });
  assertEquals(parseSan("*.vnet.example"), { type: "dns", value: "*.vnet.example" });
  assertEquals(parseSan("DNS:host-a"), { type: "dns", value: "host-a" });
  for (
    const bad of ["1.2.3.999", "bad name", "IP:host", "-x.example", "a..b", "", "fe80::1%eth0"]
  ) {
    const e = assertThrows(() => parseSan(bad));
    assertMatch(e.message, /^bad SAN '.*': [^\n]+$/);
  }
});

Deno.test("issueCert refuses no SANs, a non-CA signer and a mismatched CA key", async () => {
  await assertRejects(() => issueCert({ ca, name: "x", sans: [] }), "at least one SAN");
  await assertRejects(
    () => issueCert({ ca: server, name: "x", sans: ["1.2.3.4"] }),
    "not a CA certificate",
  );
  await assertRejects(
    () => issueCert({ ca: { cert: ca.cert, key: otherCa.key }, name: "x", sans: ["1.2.3.4"] }),
    "does not belong",
  );
});

// ------------------------------------------------------------------------------------------
// Real TLS with Deno.listenTls / Deno.connectTls

Deno.test("TLS: client trusting the CA connects by IP SAN and exchanges bytes", async () => {
  assertEquals(await roundTrip(server, { hostname: "127.0.0.1" }), "ping");
});

Deno.test("TLS: client trusting the CA connects by DNS SAN (localhost)", async () => {
  assertEquals(await roundTrip(server, { hostname: "localhost" }), "ping");
});

Deno.test("TLS: client trusting a different CA is refused", async () => {
  assertMatch(await roundTrip(server, { caCerts: [otherCa.cert] }), /^error: .*UnknownIssuer/);
});

Deno.test("TLS: an expired certificate is refused", async () => {
  const expired = await issueCert({
    ca,
    name: "old",
    sans: ["127.0.0.1"],
    notBefore: new Date("2000-01-01T00:00:00Z"),
    days: 1,
  });
  assertMatch(await roundTrip(expired), /^error: invalid peer certificate: certificate expired/);
});

Deno.test("TLS: a certificate for another name is refused", async () => {
  const elsewhere = await issueCert({ ca, name: "n", sans: ["192.0.2.7", "other.example"] });
  assertMatch(
    await roundTrip(elsewhere),
    /^error: invalid peer certificate: certificate not valid for name/,
  );
});

Deno.test("TLS: a self-signed leaf is refused", async () => {
  const alg = { name: "ECDSA", namedCurve: "P-256", hash: "SHA-256" };
  const keys = await crypto.subtle.generateKey(alg, true, ["sign", "verify"]) as CryptoKeyPair;
  const cert = await x509.X509CertificateGenerator.createSelfSigned({
    name: "CN=node1",
    keys,
    signingAlgorithm: alg,
    notBefore: new Date(Date.now() - 60_000),
    notAfter: new Date(Date.now() + 86_400_000),
    extensions: [
      new x509.BasicConstraintsExtension(false, undefined, true),
      new x509.KeyUsagesExtension(x509.KeyUsageFlags.digitalSignature, true),
      new x509.ExtendedKeyUsageExtension([x509.ExtendedKeyUsage.serverAuth]),
      new x509.SubjectAlternativeNameExtension([{ type: "ip", value: "127.0.0.1" }]),
    ],
  });
  const der = await crypto.subtle.exportKey("pkcs8", keys.privateKey);
  const selfSigned = {
    cert: cert.toString("pem"),
    key: x509.PemConverter.encode(der, "PRIVATE KEY"),
  };
  assertMatch(await roundTrip(selfSigned), /^error: .*UnknownIssuer/);
});

// ------------------------------------------------------------------------------------------
// Client certificates (mutual verification): what Deno 2.9.6 can do

const client = await issueCert({ ca, name: "peer", sans: ["127.0.0.2"] });
const stranger = await issueCert({ ca: otherCa, name: "stranger", sans: ["127.0.0.2"] });

Deno.test("mTLS: Deno.connectTls can present a client certificate (cert/key options)", async () => {
  assertEquals(await roundTrip(server, { cert: client.cert, key: client.key }), "ping");
});

Deno.test("mTLS: Deno.listenTls cannot require or verify client certificates", async () => {
  // ListenTlsOptions has no CA / requestCert option: a client certificate from a CA the server
  // never heard of, or none at all, is accepted alike. Peer auth must happen elsewhere.
  assertEquals(await roundTrip(server, { cert: stranger.cert, key: stranger.key }), "ping");
  assertEquals(await roundTrip(server), "ping");
});

/**
 * A node:tls server that requires a client certificate signed by our CA, one connection from a
 * Deno.connectTls client. Returns the client's result and what the server saw.
 */
async function nodeMtls(clientOpts: ClientOptions): Promise<{ client: string; server: string }> {
  const srv = tls.createServer({
    ...server,
    ca: [ca.cert],
    requestCert: true,
    rejectUnauthorized: true,
  });
  let resolveSeen!: (s: string) => void;
  const seen = new Promise<string>((r) => resolveSeen = r);
  srv.on("tlsClientError", (e) => resolveSeen(`rejected: ${e.message}`));
  srv.on("secureConnection", (sock) => {
    const peer = sock.getPeerCertificate();
    const who = `authorized=${sock.authorized} CN=${peer.subject?.CN} san=${peer.subjectaltname}`;
    sock.on("data", (d) => sock.end(d));
    sock.on("error", () => {});
    sock.on("close", () => resolveSeen(who));
  });
  await new Promise<void>((r) => srv.listen(0, "127.0.0.1", r));
  const { port } = srv.address() as { port: number };
  let clientResult: string;
  try {
    clientResult = await clientExchange(port, { caCerts: [ca.cert], ...clientOpts });
  } catch (e) {
    clientResult = `error: ${(e as Error).message}`;
  }
  let timer: ReturnType<typeof setTimeout> | undefined;
  const timeout = new Promise<string>((r) => timer = setTimeout(() => r("timeout"), 5000));
  const serverSaw = await Promise.race([seen, timeout]);
  clearTimeout(timer);
  await new Promise((r) => srv.close(r));
  return { client: clientResult, server: serverSaw };
}

Deno.test("mTLS: node:tls server with requestCert verifies client certificates", async () => {
  const ok = await nodeMtls({ cert: client.cert, key: client.key });
  assertEquals(ok.client, "ping");
  assertEquals(ok.server, "authorized=true CN=peer san=IP Address:127.0.0.2");

  const none = await nodeMtls({});
  assert(none.client !== "ping", none.client);
  assertMatch(none.server, /^rejected: /);

  const foreign = await nodeMtls({ cert: stranger.cert, key: stranger.key });
  assert(foreign.client !== "ping", foreign.client);
  assertMatch(foreign.server, /^rejected: /);

  const expired = await issueCert({
    ca,
    name: "peer",
    sans: ["127.0.0.2"],
    notBefore: new Date("2000-01-01T00:00:00Z"),
    days: 1,
  });
  const old = await nodeMtls({ cert: expired.cert, key: expired.key });
  assert(old.client !== "ping", old.client);
  assertMatch(old.server, /^rejected: /);
});

// ------------------------------------------------------------------------------------------
// Files and the `vnet cert` command

Deno.test("vnet cert ca + issue write 0600 keys, a usable cert dir, and refuse to overwrite", async () => {
  const dir = await tempDir();
  try {
    const caDir = `${dir}/ca`;
    const nodeDir = `${dir}/node1`;
    const made = await runCert(["ca", "--out", caDir, "--name", "Lab CA"]);
    assertEquals(made.stdout, "");
    assertMatch(made.stderr, /wrote .*ca-key\.pem\nwrote .*ca\.pem/);
    assertEquals(await mode(`${caDir}/ca-key.pem`), "600");
    assertEquals(await mode(caDir), "700");

    await runCert([
      "issue",
      "--ca",
      caDir,
      "--name",
      "node1",
      "--san",
      "127.0.0.1",
      "--out",
      nodeDir,
    ]);
    assertEquals(await mode(`${nodeDir}/key.pem`), "600");
    const caPem = await Deno.readTextFile(`${caDir}/ca.pem`);
    assertEquals(await Deno.readTextFile(`${nodeDir}/ca.pem`), caPem);
    const leaf = {
      cert: await Deno.readTextFile(`${nodeDir}/cert.pem`),
      key: await Deno.readTextFile(`${nodeDir}/key.pem`),
    };
    assertEquals(await roundTrip(leaf, { caCerts: [caPem] }), "ping");

    await assertRejects(
      () => runCert(["ca", "--out", caDir]),
      "already exists; remove it or pass --force",
    );
    await runCert(["ca", "--out", caDir, "--force"]);
    assert(caPem !== await Deno.readTextFile(`${caDir}/ca.pem`));
    assertEquals(await mode(`${caDir}/ca-key.pem`), "600");

    // Expired certificate through the CLI: --not-before in the past plus a short --days.
    const { stderr } = await runCert([
      "issue",
      "--ca",
      caDir,
      "--name",
      "old",
      "--san",
      "127.0.0.1",
      "--out",
      `${dir}/old`,
      "--not-before",
      "2000-01-01",
      "--days",
      "1",
    ]);
    assertMatch(stderr, /EXPIRED on 2000-01-02/);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("vnet cert: clear one-line errors", async () => {
  const dir = await tempDir();
  try {
    const caDir = `${dir}/ca`;
    await runCert(["ca", "--out", caDir]);
    const issue = (...extra: string[]) =>
      runCert(["issue", "--ca", caDir, "--name", "n", "--out", `${dir}/n`, ...extra]);

    const cases: [() => Promise<unknown>, RegExp][] = [
      [
        () =>
          runCert([
            "issue",
            "--ca",
            `${dir}/nope`,
            "--name",
            "n",
            "--san",
            "1.2.3.4",
            "--out",
            dir,
          ]),
        /^CA directory '.*nope' not found; make one with 'vnet cert ca --out .*nope'$/,
      ],
      [() => issue("--san", "not a name"), /^bad SAN 'not a name': /],
      [() => issue(), /^--san is required/],
      [() => issue("--san", "1.2.3.4", "--days", "0"), /^--days must be a whole number/],
      [() => issue("--san", "1.2.3.4", "--not-before", "yesterday"), /^--not-before 'yesterday'/],
      [() => runCert(["issue", "--bogus"]), /^unknown option '--bogus' for 'vnet cert issue'/],
      [() => runCert(["ca"]), /^--out is required; see 'vnet cert ca --help'$/],
      [() => runCert(["frob"]), /^unknown cert command 'frob'/],
      [() => runCert([]), /^missing command/],
    ];
    for (const [run, re] of cases) {
      const e = await assertRejects(run);
      assertMatch(e.message, re);
      assert(!e.message.includes("\n"), e.message);
    }

    // A missing key file in an otherwise present CA dir.
    await Deno.mkdir(`${dir}/half`);
    await Deno.copyFile(`${caDir}/ca.pem`, `${dir}/half/ca.pem`);
    await assertRejects(() => readCa(`${dir}/half`), "ca-key.pem' not found");

    // Output directory that cannot be made (its parent is a file).
    await Deno.writeTextFile(`${dir}/file`, "x");
    const e = await assertRejects(() => issue("--san", "1.2.3.4", "--out", `${dir}/file/sub`));
    assertMatch((e as Error).message, /^cannot (create|use) output directory '.*file\/sub': /);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test({
  name: "vnet cert: output directory without write permission",
  ignore: Deno.build.os === "windows" || Deno.uid() === 0, // root writes anyway
  async fn() {
    const dir = await tempDir();
    try {
      await runCert(["ca", "--out", `${dir}/ca`]);
      await Deno.mkdir(`${dir}/ro`, { mode: 0o555 });
      await assertRejects(
        () => runCert(["ca", "--out", `${dir}/ro`]),
        "cannot write",
      );
    } finally {
      await Deno.chmod(`${dir}/ro`, 0o755).catch(() => {});
      await Deno.remove(dir, { recursive: true });
    }
  },
});

Deno.test({
  name: "CA key readable by group/others is refused like OpenSSH",
  ignore: Deno.build.os === "windows",
  async fn() {
    const dir = await tempDir();
    try {
      await runCert(["ca", "--out", dir]);
      const key = `${dir}/ca-key.pem`;
      for (const m of [0o644, 0o640, 0o604, 0o660]) {
        await Deno.chmod(key, m);
        const e = await assertRejects(
          () => runCert(["issue", "--ca", dir, "--name", "n", "--san", "::1", "--out", dir]),
        );
        assertEquals(
          e.message,
          `permissions 0${m.toString(8)} for '${key}' are too open; run chmod 600 ${key}`,
        );
      }
      await Deno.chmod(key, 0o400);
      checkPrivateFile(key); // read-only for the owner is fine
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
});

Deno.test({
  name: "writeSecretFile creates 0600 (not chmod after) and refuses to clobber",
  ignore: Deno.build.os === "windows",
  async fn() {
    const dir = await tempDir();
    try {
      const path = `${dir}/secret`;
      await writeSecretFile(path, "s3cret\n");
      assertEquals(await mode(path), "600");
      checkPrivateFile(path);
      await assertRejects(() => writeSecretFile(path, "x"), "already exists");
      // overwrite replaces a too-open file with a fresh 0600 one
      await Deno.chmod(path, 0o644);
      await writeSecretFile(path, "new\n", { overwrite: true });
      assertEquals(await mode(path), "600");
      assertEquals(await Deno.readTextFile(path), "new\n");
      assertEquals([...Deno.readDirSync(dir)].length, 1); // no temp file left behind
      assertThrows(() => checkPrivateFile(`${dir}/none`), "not found");
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
});
