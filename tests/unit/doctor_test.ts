/**
 * `vnet doctor`'s checks against a fake sysfs/procfs tree in a temp dir and fake probes:
 * capabilities from CapEff, devices (missing, down, no carrier, bridge port, Wi-Fi client and
 * AP/4addr), the secret's mode, the peer's answers (wrong secret, versions, MTUs), exit codes.
 */
import { assert, assertEquals, assertMatch } from "./assert.ts";
import {
  type Check,
  exitCode,
  formatChecks,
  type PeerSession,
  type Probes,
  runDoctor,
} from "../../src/ops/doctor.ts";
import {
  CAP_NET_ADMIN,
  CAP_NET_RAW,
  hasCapability,
  parseIwInfo,
  parseOffloads,
  privilegeProblem,
  readDevice,
  readPrivileges,
  setcapHint,
  wifiCanBridge,
} from "../../src/ops/sysinfo.ts";
import { ErrorCode, VnetError } from "../../src/errors.ts";
import { probeDatagram } from "../../src/dataplane/udp_peers.ts";

/** A fake /proc and /sys under one temp dir. */
class FakeRoot {
  readonly dir = Deno.makeTempDirSync({ prefix: "vnet-doctor-" });
  get proc() {
    return `${this.dir}/proc`;
  }
  get sys() {
    return `${this.dir}/sys`;
  }
  status(uid: number, capEff: string): this {
    Deno.mkdirSync(`${this.proc}/self`, { recursive: true });
    Deno.writeTextFileSync(
      `${this.proc}/self/status`,
      `Name:\tvnet\nUid:\t${uid}\t${uid}\t${uid}\t${uid}\nCapInh:\t0000000000000000\n` +
        `CapPrm:\t${capEff}\nCapEff:\t${capEff}\nCapBnd:\t000001ffffffffff\n`,
    );
    return this;
  }
  device(
    name: string,
    o: {
      up?: boolean;
      carrier?: boolean;
      mtu?: number;
      devtype?: string;
      master?: string;
      wireless?: boolean;
    } = {},
  ): this {
    const d = `${this.sys}/class/net/${name}`;
    Deno.mkdirSync(d, { recursive: true });
    const up = o.up ?? true;
    Deno.writeTextFileSync(`${d}/flags`, up ? "0x1003\n" : "0x1002\n");
    // The kernel refuses to read carrier of a down device (EINVAL): no file here.
    if (up) Deno.writeTextFileSync(`${d}/carrier`, (o.carrier ?? true) ? "1\n" : "0\n");
    Deno.writeTextFileSync(`${d}/operstate`, up ? "up\n" : "down\n");
    Deno.writeTextFileSync(`${d}/mtu`, `${o.mtu ?? 1500}\n`);
    Deno.writeTextFileSync(`${d}/address`, "02:aa:bb:cc:dd:ee\n");
    Deno.writeTextFileSync(
      `${d}/uevent`,
      `INTERFACE=${name}\nIFINDEX=3\n${o.devtype ? `DEVTYPE=${o.devtype}\n` : ""}`,
    );
    if (o.master) {
      Deno.mkdirSync(`${d}/brport`);
      Deno.symlinkSync(`../${o.master}`, `${d}/master`);
    }
    if (o.wireless) Deno.mkdirSync(`${d}/phy80211`);
    return this;
  }
  cleanup() {
    Deno.removeSync(this.dir, { recursive: true });
  }
}

const ALL_CAPS = "000001ffffffffff";
const NET_CAPS = ((1n << BigInt(CAP_NET_RAW)) | (1n << BigInt(CAP_NET_ADMIN))).toString(16)
  .padStart(16, "0");

function probes(over: Partial<Probes> = {}): Probes {
  return {
    libraryVersion: (spec) => `${spec.name} version 1.0`,
    openPromiscuous: () => {},
    dataPathWorker: () => Promise.resolve(),
    endConnection: () => Promise.resolve(),
    wifiMode: () => Promise.resolve(null),
    offloads: () => Promise.resolve(["tso", "gso", "gro"]),
    tcpConnect: () => Promise.resolve(0.4),
    tlsCertificate: () => Promise.reject(new Error("not used")),
    udpEcho: () => Promise.resolve(null),
    dialControl: () => Promise.resolve(session({})),
    ...over,
  };
}

function session(answers: Record<string, Record<string, unknown>>): PeerSession {
  return {
    request: (op) =>
      answers[op]
        ? Promise.resolve(answers[op])
        : Promise.reject(new VnetError(`unknown request '${op}'`)),
    close: () => {},
  };
}

function find(checks: Check[], name: string): Check {
  const c = checks.find((c) => c.name === name);
  if (!c) throw new Error(`no check '${name}' in:\n${checks.map((c) => c.name).join("\n")}`);
  return c;
}

Deno.test("sysinfo: capabilities from CapEff", () => {
  const root = new FakeRoot().status(1000, NET_CAPS);
  try {
    const p = readPrivileges(root.proc);
    assertEquals(p.uid, 1000);
    assert(hasCapability(p.effective!, CAP_NET_RAW));
    assert(hasCapability(p.effective!, CAP_NET_ADMIN));
    assert(!hasCapability(p.effective!, 21)); // CAP_SYS_ADMIN
  } finally {
    root.cleanup();
  }
});

Deno.test("sysinfo: devices from sysfs (up, carrier, bridge port, Wi-Fi)", () => {
  const root = new FakeRoot()
    .device("eth0", { master: "br0" })
    .device("br0", { devtype: "bridge" })
    .device("wlan0", { devtype: "wlan", wireless: true })
    .device("tap0", { up: false });
  try {
    const eth = readDevice("eth0", root.sys);
    assertEquals([eth.exists, eth.up, eth.carrier, eth.mtu], [true, true, true, 1500]);
    assertEquals(eth.bridgeMaster, "br0");
    assert(readDevice("br0", root.sys).isBridge);
    assert(readDevice("wlan0", root.sys).wireless);
    const tap = readDevice("tap0", root.sys);
    assertEquals([tap.up, tap.carrier], [false, null]);
    assertEquals(readDevice("nope0", root.sys).exists, false);
    assertEquals(readDevice("../../etc", root.sys).exists, false);
  } finally {
    root.cleanup();
  }
});

Deno.test("sysinfo: iw and ethtool output", () => {
  const client = parseIwInfo(
    "Interface wlan0\n\tifindex 3\n\taddr 02:aa:bb:cc:dd:ee\n\ttype managed\n\twiphy 0\n",
  );
  assertEquals(client, { type: "managed", fourAddr: false });
  assert(!wifiCanBridge(client));
  assert(wifiCanBridge({ type: "managed", fourAddr: true }));
  assert(wifiCanBridge(parseIwInfo("Interface wlan0\n\ttype AP\n")));
  assert(!wifiCanBridge(null));
  assertEquals(
    parseOffloads(
      "Features for veth0:\nrx-checksumming: on\ntx-checksumming: on\n" +
        "tcp-segmentation-offload: on\ngeneric-receive-offload: off\n" +
        "large-receive-offload: off [fixed]\ngeneric-segmentation-offload: on\n",
    ),
    ["rx-csum", "tx-csum", "tso", "gso"],
  );
});

Deno.test("doctor: all pass on a good machine: exit 0", async () => {
  const root = new FakeRoot().status(0, ALL_CAPS).device("lan0");
  try {
    const checks = await runDoctor({
      devs: ["lan0"],
      version: "0.1.0",
      sysRoot: root.sys,
      procRoot: root.proc,
    }, probes());
    assertEquals(checks.filter((c) => c.status !== "PASS" && c.status !== "INFO"), []);
    assertMatch(find(checks, "privileges").message, /root with CAP_NET_RAW and CAP_NET_ADMIN/);
    assertMatch(find(checks, "device lan0 mtu").message, /MTU 1500; offloads on: tso gso gro/);
    assertEquals(exitCode(checks), 0);
  } finally {
    root.cleanup();
  }
});

Deno.test("doctor: a data-path worker that cannot start is a FAIL that says why", async () => {
  const root = new FakeRoot().status(0, ALL_CAPS).device("lan0");
  try {
    const checks = await runDoctor(
      {
        devs: ["lan0"],
        version: "0.1.0",
        sysRoot: root.sys,
        procRoot: root.proc,
      },
      probes({
        dataPathWorker: () => Promise.reject(new Error("libpcap.so.0.8: cannot open")),
      }),
    );
    const dataPath = find(checks, "data path");
    assertEquals(dataPath.status, "FAIL");
    assertMatch(dataPath.message, /cannot start \(libpcap.so.0.8: cannot open\).*cannot forward/);
    assertEquals(exitCode(checks), 1);
  } finally {
    root.cleanup();
  }
});

Deno.test("doctor: a kernel that cannot end a connection is a WARN that says what to run on", async () => {
  const root = new FakeRoot().status(0, ALL_CAPS).device("lan0");
  try {
    const ok = await runDoctor(
      { devs: ["lan0"], version: "0.1.0", sysRoot: root.sys, procRoot: root.proc },
      probes(),
    );
    assertEquals(find(ok, "tls floods").status, "PASS");
    const checks = await runDoctor(
      { devs: ["lan0"], version: "0.1.0", sysRoot: root.sys, procRoot: root.proc },
      probes({
        endConnection: () => Promise.reject(new Error("SOCK_DESTROY: Operation not supported")),
      }),
    );
    const ending = find(checks, "tls floods");
    assertEquals(ending.status, "WARN");
    assertMatch(
      ending.message,
      /\(SOCK_DESTROY: Operation not supported\).*keeps its fd.*CONFIG_INET_DIAG_DESTROY/,
    );
    assertEquals(exitCode(checks), 2);
  } finally {
    root.cleanup();
  }
});

Deno.test("doctor: no capabilities, missing and down devices, no libpcap: FAIL, exit 1", async () => {
  const root = new FakeRoot().status(1000, "0000000000000000").device("lan0", { up: false })
    .device("vmif0");
  try {
    const checks = await runDoctor(
      {
        devs: ["nope0", "lan0"],
        version: "0.1.0",
        sysRoot: root.sys,
        procRoot: root.proc,
      },
      probes({
        libraryVersion: (spec) => {
          if (spec.name === "libpcap") {
            throw new VnetError("libpcap not found (tried libpcap.so.1): install it");
          }
          return "libnet version 1.3";
        },
      }),
    );
    assertEquals(find(checks, "privileges").status, "FAIL");
    assertMatch(find(checks, "privileges").message, /CAP_NET_RAW and CAP_NET_ADMIN.*setcap/);
    assertEquals(find(checks, "libpcap").status, "FAIL");
    assertEquals(find(checks, "libnet").status, "PASS");
    const missing = find(checks, "device nope0");
    assertEquals(missing.status, "FAIL");
    assertMatch(missing.message, /does not exist here \(interfaces: lan0, vmif0\)/);
    assertEquals(find(checks, "device lan0").status, "FAIL");
    assertMatch(find(checks, "device lan0").message, /ip link set lan0 up/);
    assertEquals(exitCode(checks), 1);
  } finally {
    root.cleanup();
  }
});

Deno.test("doctor: a Wi-Fi client FAILs and says why; an AP passes", async () => {
  const root = new FakeRoot().status(0, ALL_CAPS).device("wlan0", { wireless: true })
    .device("wlan1", { devtype: "wlan" });
  try {
    const checks = await runDoctor(
      {
        devs: ["wlan0", "wlan1"],
        version: "0.1.0",
        sysRoot: root.sys,
        procRoot: root.proc,
      },
      probes({
        wifiMode: (dev) =>
          Promise.resolve(
            dev === "wlan0"
              ? { type: "managed", fourAddr: false }
              : { type: "AP", fourAddr: false },
          ),
      }),
    );
    const client = find(checks, "device wlan0 wifi");
    assertEquals(client.status, "FAIL");
    assertMatch(client.message, /source MACs are dropped/);
    assertMatch(client.message, /wired port.*4addr\/WDS.*route/);
    assertEquals(find(checks, "device wlan1 wifi").status, "PASS");
  } finally {
    root.cleanup();
  }
});

Deno.test("doctor: a bridge port and no carrier are WARNs: exit 2", async () => {
  const root = new FakeRoot().status(0, ALL_CAPS).device("eth0", { master: "br0" })
    .device("tap0", { carrier: false });
  try {
    const checks = await runDoctor({
      devs: ["eth0", "tap0"],
      version: "0.1.0",
      sysRoot: root.sys,
      procRoot: root.proc,
    }, probes());
    assertMatch(find(checks, "device eth0 bridge").message, /port of bridge br0.*--dev br0/);
    assertEquals(find(checks, "device tap0").status, "WARN");
    assertEquals(exitCode(checks), 2);
  } finally {
    root.cleanup();
  }
});

Deno.test("doctor: a world-readable secret FAILs with the chmod to run", async () => {
  const root = new FakeRoot().status(0, ALL_CAPS);
  const secret = `${root.dir}/vnet.secret`;
  Deno.writeTextFileSync(secret, "a".repeat(44) + "\n");
  Deno.chmodSync(secret, 0o644);
  try {
    const checks = await runDoctor({
      devs: [],
      secretFile: secret,
      peer: { hostname: "127.0.0.1", port: 7000 },
      version: "0.1.0",
      procRoot: root.proc,
      sysRoot: root.sys,
    }, probes());
    const s = find(checks, "secret");
    assertEquals(s.status, "FAIL");
    assertMatch(s.message, /0644.*chmod 600/);
    assertMatch(find(checks, "peer handshake").message, /not tried/);
    assertEquals(exitCode(checks), 1);
  } finally {
    root.cleanup();
  }
});

Deno.test("doctor: the peer: refused, wrong secret, version, MTU mismatch", async () => {
  const root = new FakeRoot().status(0, ALL_CAPS).device("lan0", { mtu: 1500 });
  const base = {
    devs: ["lan0"],
    peer: { hostname: "10.78.0.2", port: 7000 },
    version: "0.1.0",
    procRoot: root.proc,
    sysRoot: root.sys,
    envSecret: "x",
  };
  Deno.env.set(
    "VNET_SECRET",
    btoa(String.fromCharCode(...crypto.getRandomValues(new Uint8Array(32)))),
  );
  try {
    let checks = await runDoctor(
      base,
      probes({
        tcpConnect: () => Promise.reject(new Deno.errors.ConnectionRefused("refused")),
      }),
    );
    assertMatch(find(checks, "peer tcp").message, /refused the connection: is vnet server running/);
    assert(!checks.some((c) => c.name === "peer handshake"), "no handshake after a refusal");

    checks = await runDoctor(
      base,
      probes({
        dialControl: () =>
          Promise.reject(
            new VnetError("authentication failed", { code: ErrorCode.Auth }),
          ),
      }),
    );
    assertEquals(find(checks, "peer tcp").status, "PASS");
    assertMatch(find(checks, "peer handshake").message, /^wrong secret: /);

    const peer = session({
      version: { version: "0.2.0", commit: "abc", time: Date.now() + 3_600_000 },
      devices: { devices: [{ name: "vmif0", mtu: 1400 }] },
    });
    checks = await runDoctor(
      { ...base, peerDev: "vmif0" },
      probes({ dialControl: () => Promise.resolve(peer) }),
    );
    assertEquals(find(checks, "peer handshake").status, "PASS");
    assertMatch(find(checks, "peer version").message, /runs vnet 0\.2\.0 \(abc\), this is 0\.1\.0/);
    assertMatch(find(checks, "peer clock").message, /3600 s off/);
    const mtu = find(checks, "peer mtu");
    assertEquals(mtu.status, "WARN");
    assertMatch(mtu.message, /lan0 here 1500, vmif0 on 10\.78\.0\.2:7000 1400/);
    assertMatch(mtu.message, /TCP is segmented to fit, other frames .* dropped and counted/);
    assertEquals(exitCode(checks), 2);

    checks = await runDoctor(
      { ...base, peerDev: "nope" },
      probes({ dialControl: () => Promise.resolve(peer) }),
    );
    assertMatch(find(checks, "peer mtu").message, /has no device nope \(it has vmif0\)/);
  } finally {
    Deno.env.delete("VNET_SECRET");
    root.cleanup();
  }
});

Deno.test("doctor: UDP to the peer answered, dropped or off; its links' transports", async () => {
  const root = new FakeRoot().status(0, ALL_CAPS);
  Deno.env.set(
    "VNET_SECRET",
    btoa(String.fromCharCode(...crypto.getRandomValues(new Uint8Array(32)))),
  );
  const base = {
    devs: [],
    peer: { hostname: "10.78.0.2", port: 7000 },
    version: "0.1.0",
    procRoot: root.proc,
    sysRoot: root.sys,
    envSecret: "x",
  };
  const version = { version: "0.1.0", commit: "abc", time: Date.now() };
  const handler = (id: string, udp: Record<string, unknown> | null) => ({
    id,
    peer: "10.78.0.1:7000",
    link: { state: "up", transport: udp?.state === "up" ? "udp" : "tcp", udp },
  });
  try {
    // The probe sent is the one the peer gave the token for, to its UDP port.
    const sent: { port: number; datagram: Uint8Array }[] = [];
    let checks = await runDoctor(
      base,
      probes({
        dialControl: () =>
          Promise.resolve(session({
            version,
            udpProbe: { port: 7001, token: 0xdeadbeef },
            list: {
              handlers: [
                handler("h1", {
                  state: "up",
                  sealed: true,
                  mtu: 1402,
                  lossPercent: 0,
                  peerLossPercent: 2,
                }),
                handler("h2\x1b[2J", null),
              ],
            },
          })),
        udpEcho: (addr, datagram) => {
          sent.push({ port: addr.port, datagram: datagram.slice() });
          return Promise.resolve(0.4);
        },
      }),
    );
    assertEquals(sent.length, 1);
    assertEquals(sent[0].port, 7001);
    assertEquals(sent[0].datagram, probeDatagram(0xdeadbeef));
    const udp = find(checks, "peer udp");
    assertEquals(udp.status, "PASS");
    assertMatch(udp.message, /^UDP 10\.78\.0\.2:7001 answered in 0\.4 ms/);
    const links = find(checks, "peer links").message;
    assertMatch(links, /h1 to 10\.78\.0\.1:7000 udp: UDP path up sealed, MTU 1402, loss here 0%/);
    assertMatch(links, /there 2%/);
    // A peer's words are escaped: its handler ids reach this terminal.
    assert(!links.includes("\x1b"), links);
    assertMatch(links, /h2\\x1b\[2J to 10\.78\.0\.1:7000 tcp \(link up\)/);

    // Nothing came back: WARN, with the port to open; exit 2.
    checks = await runDoctor(
      base,
      probes({
        dialControl: () =>
          Promise.resolve(session({ version, udpProbe: { port: 7001, token: 1 } })),
      }),
    );
    assertEquals(find(checks, "peer udp").status, "WARN");
    assertMatch(find(checks, "peer udp").message, /no answer from UDP 10\.78\.0\.2:7001 in 5 s/);
    assertMatch(find(checks, "peer udp").message, /let UDP port 7001 through both ways/);
    assertEquals(exitCode(checks), 2);

    // UDP off there, or a peer too old to be asked: said, not a warning.
    checks = await runDoctor(
      base,
      probes({
        dialControl: () => Promise.resolve(session({ version, udpProbe: { port: 0, token: 0 } })),
      }),
    );
    assertEquals(find(checks, "peer udp").status, "INFO");
    assertMatch(find(checks, "peer udp").message, /has UDP off \(--udp-port 0\)/);
    checks = await runDoctor(
      base,
      probes({ dialControl: () => Promise.resolve(session({ version })) }),
    );
    assertEquals(find(checks, "peer udp").status, "INFO");
    assertMatch(find(checks, "peer udp").message, /a vnet older than this one/);
    assert(!checks.some((c) => c.name === "peer links"), "no links line without a list");
    // A peer that knows the question but cannot answer it now: a WARN with its reason.
    checks = await runDoctor(
      base,
      probes({
        dialControl: () =>
          Promise.resolve({
            request: (op: string) =>
              op === "version"
                ? Promise.resolve(version)
                : Promise.reject(new VnetError("too many UDP probes at once; try again in 10 s")),
            close: () => {},
          }),
      }),
    );
    assertEquals(find(checks, "peer udp").status, "WARN");
    assertMatch(find(checks, "peer udp").message, /did not answer the UDP question: too many/);
  } finally {
    Deno.env.delete("VNET_SECRET");
    root.cleanup();
  }
});

Deno.test("doctor: a peer that answered in TLS points at --tls-ca, not at the version", async () => {
  const root = new FakeRoot().status(0, ALL_CAPS);
  Deno.env.set(
    "VNET_SECRET",
    btoa(String.fromCharCode(...crypto.getRandomValues(new Uint8Array(32)))),
  );
  let checks: Check[];
  try {
    checks = await runDoctor(
      {
        devs: [],
        peer: { hostname: "10.78.0.2", port: 7000 },
        version: "0.1.0",
        procRoot: root.proc,
        sysRoot: root.sys,
        envSecret: "x",
      },
      probes({
        dialControl: () =>
          Promise.reject(
            new VnetError(
              "handshake with 10.78.0.2:7000 failed: the other end answered in TLS, this side " +
                "speaks plain TCP",
              { code: ErrorCode.Protocol },
            ),
          ),
      }),
    );
  } finally {
    Deno.env.delete("VNET_SECRET");
    root.cleanup();
  }
  const message = find(checks, "peer handshake").message;
  assertMatch(message, /^10\.78\.0\.2:7000 speaks TLS, this side spoke plain TCP: give --tls-ca/);
  assert(!message.includes("not as a vnet server"), message);
});

Deno.test("doctor: what a peer says (errors, certificate names, versions) is printed escaped", () => {
  const hostile = "\x1b[2J\x1b]0;title\x07\u009b31m";
  const text = formatChecks([
    { status: "FAIL", name: "peer tls", message: `certificate (CN=${hostile})` },
    { status: "PASS", name: `peer ${hostile}`, message: "x" },
  ]);
  // deno-lint-ignore no-control-regex
  assert(!/[\x00-\x09\x0b-\x1f\x7f-\x9f]/.test(text), JSON.stringify(text));
  assertMatch(text, /CN=\\x1b\[2J\\x1b\]0;title\\x07\\x9b31m/);
});

Deno.test("sysinfo: the capability fix names the vnet binary, never deno", () => {
  assertEquals(
    setcapHint("/usr/local/bin/vnet"),
    "sudo setcap cap_net_raw,cap_net_admin+ep /usr/local/bin/vnet",
  );
  assert(!setcapHint("/root/.deno/bin/deno").includes(".deno/bin/deno"));
  assertMatch(setcapHint("/root/.deno/bin/deno"), /deno task compile.*\/path\/to\/vnet/);
  const user = new FakeRoot().status(1000, "0000000000000000");
  const rootUser = new FakeRoot().status(0, ALL_CAPS);
  try {
    assertMatch(
      privilegeProblem(user.proc, "/usr/local/bin/vnet")!,
      /^cannot capture or inject frames: uid 1000 lacks CAP_NET_RAW and CAP_NET_ADMIN; .*\/usr\/local\/bin\/vnet$/,
    );
    assertEquals(privilegeProblem(rootUser.proc), null);
  } finally {
    user.cleanup();
    rootUser.cleanup();
  }
});
