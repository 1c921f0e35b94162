/**
 * `vnet doctor`: the checks. Each says PASS, WARN or FAIL (INFO for facts that need no action)
 * and one line of what to do. What touches the system (libpcap, `iw`, `ethtool`, the peer) goes
 * through `Probes`, and sysfs/procfs are read under a root path, so the logic is testable.
 */
import tls from "node:tls";
import "reflect-metadata";
import * as x509 from "@peculiar/x509";
import { formatHostPort, type HostPort } from "../addr.ts";
import { codeOf, ErrorCode, messageOf } from "../errors.ts";
import { visible } from "../log.ts";
import { probeDatagram } from "../dataplane/udp_peers.ts";
import { candidatesFor, LIBNET, LIBPCAP, type LibrarySpec } from "../../ffi/load.ts";
import { checkPrivateFile, loadSecret, SECRET_ENV } from "../link/secret.ts";
import {
  CAP_NET_ADMIN,
  CAP_NET_RAW,
  type DeviceFacts,
  hasCapability,
  listDeviceNames,
  type Privileges,
  readDevice,
  readPrivileges,
  setcapHint,
  validDeviceName,
  wifiCanBridge,
  type WifiMode,
} from "./sysinfo.ts";

type Status = "PASS" | "WARN" | "FAIL" | "INFO";

export interface Check {
  status: Status;
  /** What was checked, e.g. `device lan0`, `peer handshake`. */
  name: string;
  /** One line: what was found and, unless PASS/INFO, what to do. */
  message: string;
}

/** 0 all pass, 1 any FAIL, 2 only WARNs (INFO counts as pass). */
export function exitCode(checks: Check[]): 0 | 1 | 2 {
  if (checks.some((c) => c.status === "FAIL")) return 1;
  if (checks.some((c) => c.status === "WARN")) return 2;
  return 0;
}

/** The answer of a peer to the doctor's questions, over one authenticated control link. */
export interface PeerSession {
  request(op: string, body?: Record<string, unknown>): Promise<Record<string, unknown>>;
  close(): void;
}

/** The peer's TLS certificate as it presented it. */
interface PeerCertificate {
  /** DER of the leaf certificate. */
  der: Uint8Array<ArrayBuffer>;
}

/** What the checks need from the system; `systemProbes` in cli/doctor.ts is the real one. */
export interface Probes {
  /** The library's version text; throws the loader's VnetError if it cannot be loaded. */
  libraryVersion(spec: LibrarySpec): string;
  /** Opens (then closes) a promiscuous capture on `dev`; throws a VnetError if it cannot. */
  openPromiscuous(dev: string): void;
  /** `iw dev DEV info`, parsed; null when iw is missing or says nothing. */
  wifiMode(dev: string): Promise<WifiMode | null>;
  /** The offloads on (`ethtool -k`); null when ethtool is missing. */
  offloads(dev: string): Promise<string[] | null>;
  /** Starts the data-path worker (its FFI in a thread of its own) and stops it; throws why not. */
  dataPathWorker(): Promise<void>;
  /**
   * Ends a loopback TCP connection of its own by its endpoints, as the server ends a TLS
   * handshake cut short (src/io/sock_diag.ts); throws why it could not.
   */
  endConnection(): Promise<void>;
  /** TCP connect; resolves with the time it took in ms, throws on failure. */
  tcpConnect(addr: HostPort, timeoutMs: number): Promise<number>;
  /** TLS handshake without verification; the leaf certificate. Throws if not TLS. */
  tlsCertificate(addr: HostPort, timeoutMs: number): Promise<PeerCertificate>;
  /**
   * Sends `datagram` to `addr` over UDP (a few times, in case one is lost) and waits for it to
   * come back; the round trip in ms, or null if nothing came within `timeoutMs`.
   */
  udpEcho(addr: HostPort, datagram: Uint8Array, timeoutMs: number): Promise<number | null>;
  /** The vnet handshake as a control client; throws a VnetError whose code says why. */
  dialControl(
    addr: HostPort,
    key: Uint8Array,
    tlsCa: string | undefined,
    timeoutMs: number,
  ): Promise<PeerSession>;
}

interface DoctorOptions {
  devs: string[];
  peer?: HostPort;
  peerDev?: string;
  secretFile?: string;
  /** PEM text of --tls-ca, and its path for messages. */
  tlsCa?: { path: string; pem: string };
  /** This vnet's version, to compare with the peer's. */
  version: string;
  timeoutMs?: number;
  sysRoot?: string;
  procRoot?: string;
  /** The secret from the environment, if any (VNET_SECRET). */
  envSecret?: string;
  now?: () => Date;
}

const DAY_MS = 86_400_000;
/** A certificate expiring sooner than this is a WARN. */
const EXPIRY_WARN_DAYS = 30;
/** Clocks further apart than this break certificate checks and confuse logs. */
const SKEW_WARN_MS = 60_000;

export async function runDoctor(opts: DoctorOptions, probes: Probes): Promise<Check[]> {
  const checks: Check[] = [];
  const add = (status: Status, name: string, message: string) =>
    checks.push({ status, name, message });
  const timeoutMs = opts.timeoutMs ?? 5000;

  checkPrivileges(opts.procRoot, add);
  checkLibraries(probes, add);
  await checkDataPathWorker(probes, add);
  await checkConnectionEnding(probes, add);

  const local = new Map<string, DeviceFacts>();
  for (const dev of opts.devs) local.set(dev, await checkDevice(dev, opts, probes, add));

  const secret = checkSecret(opts, add);
  if (opts.peer) {
    await checkPeer(opts.peer, secret, opts, probes, local, timeoutMs, add);
  } else if (opts.peerDev) {
    add("FAIL", "peer", "--peer-dev needs --peer ADDR:PORT, the server that has that device");
  }
  return checks;
}

type Add = (status: Status, name: string, message: string) => void;

function checkPrivileges(procRoot: string | undefined, add: Add): void {
  let p: Privileges;
  try {
    p = readPrivileges(procRoot);
  } catch (e) {
    add("WARN", "privileges", `cannot read ${procRoot ?? "/proc"}/self/status (${messageOf(e)})`);
    return;
  }
  const fix = `run as root, or give the binary the capabilities: ${setcapHint()}`;
  if (p.effective === null) {
    add("WARN", "privileges", `no CapEff in /proc/self/status: cannot tell; ${fix}`);
    return;
  }
  const raw = hasCapability(p.effective, CAP_NET_RAW);
  const admin = hasCapability(p.effective, CAP_NET_ADMIN);
  const who = p.uid === 0 ? "root" : `uid ${p.uid}`;
  if (raw && admin) {
    add("PASS", "privileges", `${who} with CAP_NET_RAW and CAP_NET_ADMIN effective`);
    return;
  }
  const missing = [raw ? "" : "CAP_NET_RAW", admin ? "" : "CAP_NET_ADMIN"].filter(Boolean);
  add(
    "FAIL",
    "privileges",
    `${who} lacks ${missing.join(" and ")} (needed to capture and inject): ${fix}`,
  );
}

async function checkDataPathWorker(probes: Probes, add: Add): Promise<void> {
  try {
    await probes.dataPathWorker();
    add("PASS", "data path", "the data-path worker starts: one thread wake-up per hop");
  } catch (e) {
    add(
      "FAIL",
      "data path",
      `the data-path worker cannot start (${messageOf(e)}): the server cannot forward frames`,
    );
  }
}

/**
 * Whether a TLS server can free the fd of a handshake cut short: the runtime keeps it after
 * close(), and the server has the kernel end the connection (docs/security.md).
 */
async function checkConnectionEnding(probes: Probes, add: Add): Promise<void> {
  try {
    await probes.endConnection();
    add(
      "PASS",
      "tls floods",
      "the kernel ends a connection by its endpoints: a TLS handshake cut short frees its fd",
    );
  } catch (e) {
    add(
      "WARN",
      "tls floods",
      `the kernel cannot end a connection by its endpoints (${messageOf(e)}): with TLS, a ` +
        "silent peer keeps its fd until it leaves; run the server with CAP_NET_ADMIN on a kernel " +
        "built with CONFIG_INET_DIAG_DESTROY",
    );
  }
}

function checkLibraries(probes: Probes, add: Add): void {
  for (const [spec, needed] of [[LIBPCAP, true], [LIBNET, false]] as const) {
    const override = Deno.env.get(spec.envVar!);
    const from = override
      ? `${spec.envVar}=${override}`
      : `tried ${candidatesFor(spec).join(", ")}`;
    try {
      const version = probes.libraryVersion(spec) || "version unknown";
      add("PASS", spec.name, `${version} (${override ? from : `override with ${spec.envVar}`})`);
    } catch (e) {
      const status = needed ? "FAIL" : "WARN";
      const why = needed ? "" : " (needed only for --injector libnet)";
      add(status, spec.name, `${messageOf(e)}${why}`.replace(/\s+/g, " "));
    }
  }
}

async function checkDevice(
  dev: string,
  opts: DoctorOptions,
  probes: Probes,
  add: Add,
): Promise<DeviceFacts> {
  const name = `device ${dev}`;
  const d = readDevice(dev, opts.sysRoot);
  if (!d.exists) {
    const why = validDeviceName(dev) ? "does not exist" : "is not a valid interface name";
    const here = listDeviceNames(opts.sysRoot).filter((n) => n !== "lo");
    add(
      "FAIL",
      name,
      `${dev} ${why} here (interfaces: ${
        here.join(", ") || "none"
      }): check the name with 'ip link'`,
    );
    return d;
  }
  if (!d.up) {
    add("FAIL", name, `${dev} is down: bring it up with 'ip link set ${dev} up'`);
  } else if (d.carrier === false) {
    add(
      "WARN",
      name,
      `${dev} is up but has no carrier (operstate ${d.operstate}): nothing is plugged in, or ` +
        "the other end (the VM, the veth peer) is down; frames flow once it is",
    );
  } else {
    add("PASS", name, `${dev} exists, is up, has carrier (${d.mac ?? "no MAC"})`);
  }
  if (d.up) {
    try {
      probes.openPromiscuous(dev);
      add("PASS", `${name} capture`, `a promiscuous capture opens on ${dev}`);
    } catch (e) {
      add("FAIL", `${name} capture`, messageOf(e));
    }
  }
  const offloads = await probes.offloads(dev);
  add(
    "INFO",
    `${name} mtu`,
    `MTU ${d.mtu ?? "unknown"}; offloads on: ${
      offloads === null ? "unknown (install ethtool to see them)" : offloads.join(" ") || "none"
    } (VNET completes checksums and segments super-frames itself)`,
  );
  if (d.bridgeMaster) {
    add(
      "WARN",
      `${name} bridge`,
      `${dev} is a port of bridge ${d.bridgeMaster}: frames VNET injects leave through ${dev} ` +
        `only, never reaching ${d.bridgeMaster}'s other ports or this host; use --dev ` +
        `${d.bridgeMaster} instead unless that is what you want`,
    );
  }
  if (d.wireless) {
    const mode = await probes.wifiMode(dev);
    if (wifiCanBridge(mode)) {
      add(
        "PASS",
        `${name} wifi`,
        `${dev} is Wi-Fi in ${mode!.type}${mode!.fourAddr ? " 4addr" : ""} mode, which ` +
          "carries other MACs",
      );
    } else {
      const what = mode?.type
        ? `a Wi-Fi client (${mode.type})`
        : "Wi-Fi (probably a client: install iw to check its mode)";
      add(
        "FAIL",
        `${name} wifi`,
        `${dev} is ${what}: an access point accepts only frames from the MAC that associated, so ` +
          "frames with the VMs' source MACs are dropped there; use a wired port, put both ends " +
          "in 4addr/WDS mode (iw dev DEV set 4addr on), or route the VMs' subnet instead",
      );
    }
  }
  return d;
}

/** Returns the secret's bytes if it can be used. */
function checkSecret(opts: DoctorOptions, add: Add): Uint8Array | null {
  if (opts.secretFile) {
    try {
      checkPrivateFile(opts.secretFile, "secret file");
    } catch (e) {
      add("FAIL", "secret", messageOf(e));
      return null;
    }
    try {
      const secret = loadSecret(opts.secretFile);
      add("PASS", "secret", `${opts.secretFile} is private (mode 0600) and usable`);
      return secret;
    } catch (e) {
      add("FAIL", "secret", messageOf(e));
      return null;
    }
  }
  if (opts.envSecret !== undefined) {
    try {
      const secret = loadSecret(undefined);
      add("PASS", "secret", `from ${SECRET_ENV}`);
      return secret;
    } catch (e) {
      add("FAIL", "secret", messageOf(e));
      return null;
    }
  }
  if (opts.peer) {
    add(
      "FAIL",
      "secret",
      `no secret to try the handshake with: give --secret-file FILE or set ${SECRET_ENV}`,
    );
  }
  return null;
}

async function checkPeer(
  peer: HostPort,
  secret: Uint8Array | null,
  opts: DoctorOptions,
  probes: Probes,
  local: Map<string, DeviceFacts>,
  timeoutMs: number,
  add: Add,
): Promise<void> {
  const where = formatHostPort(peer);
  try {
    const ms = await probes.tcpConnect(peer, timeoutMs);
    add("PASS", "peer tcp", `${where} accepts TCP connections (connected in ${ms.toFixed(1)} ms)`);
  } catch (e) {
    const refused = e instanceof Deno.errors.ConnectionRefused;
    add(
      "FAIL",
      "peer tcp",
      refused
        ? `${where} refused the connection: is vnet server running there, listening on that ` +
          "address and port?"
        : `${where} did not answer (${messageOf(e)}): check the address, the route, and ` +
          "firewalls on the way (the port must be open to this machine)",
    );
    return;
  }

  if (opts.tlsCa) await checkTls(peer, opts, probes, timeoutMs, add);

  if (!secret) {
    add("INFO", "peer handshake", "not tried: no usable secret (see above)");
    return;
  }
  let session: PeerSession;
  try {
    session = await probes.dialControl(peer, secret, opts.tlsCa?.pem, timeoutMs);
  } catch (e) {
    add("FAIL", "peer handshake", handshakeAdvice(where, e, opts));
    return;
  }
  try {
    add(
      "PASS",
      "peer handshake",
      `${where} proved it holds the same secret${opts.tlsCa ? ", over verified TLS" : ""}`,
    );
    await checkVersion(session, where, opts, timeoutMs, add);
    await checkUdp(session, peer, probes, timeoutMs, add);
    await checkPeerLinks(session, where, timeoutMs, add);
    if (opts.peerDev) await checkPeerMtu(session, where, opts, local, add);
  } finally {
    session.close();
  }
}

function handshakeAdvice(where: string, e: unknown, opts: DoctorOptions): string {
  const said = messageOf(e);
  switch (codeOf(e)) {
    case ErrorCode.Auth:
      return `wrong secret: ${where} holds a different shared secret; copy the same secret ` +
        `file to both sides (${said})`;
    case ErrorCode.Tls:
      return opts.tlsCa
        ? `TLS refused: ${said}`
        : `${where} speaks TLS: give --tls-ca with the CA that signed its certificate (${said})`;
    case ErrorCode.Unreachable:
      return `${where} could not be reached for the handshake: ${said}`;
    case ErrorCode.Protocol:
      // The peer's first bytes were a TLS record: it is a TLS server, and this side spoke plain.
      if (/answered in TLS/.test(said)) {
        return `${where} speaks TLS, this side spoke plain TCP: give --tls-ca with the CA that ` +
          `signed its certificate (${said})`;
      }
      return `${where} answered, but not as a vnet server of this version: ${said}`;
    case ErrorCode.Timeout:
      return `${where} accepted the connection but did not complete the handshake: is a vnet ` +
        `server of this version listening there? (${said})`;
    default:
      return said;
  }
}

async function checkTls(
  peer: HostPort,
  opts: DoctorOptions,
  probes: Probes,
  timeoutMs: number,
  add: Add,
): Promise<void> {
  const where = formatHostPort(peer);
  const ca = opts.tlsCa!;
  let cert: x509.X509Certificate;
  try {
    cert = new x509.X509Certificate((await probes.tlsCertificate(peer, timeoutMs)).der);
  } catch (e) {
    add(
      "FAIL",
      "peer tls",
      `${where} does not complete a TLS handshake (${messageOf(e)}): it runs without TLS; ` +
        "drop --tls-ca, or give that server --tls-cert/--tls-key/--tls-ca",
    );
    return;
  }
  let caCert: x509.X509Certificate;
  try {
    caCert = new x509.X509Certificate(ca.pem);
  } catch (e) {
    add("FAIL", "peer tls", `--tls-ca ${ca.path} is not a PEM certificate: ${messageOf(e)}`);
    return;
  }
  const now = opts.now?.() ?? new Date();
  const subject = cert.subject || "(no subject)";
  const issuedByCa = cert.issuer === caCert.subject &&
    await cert.verify({ publicKey: caCert.publicKey, signatureOnly: true }).catch(() => false);
  if (!issuedByCa) {
    // Every `vnet cert ca` is called "CN=VNET CA": say when only the key differs.
    const issuer = cert.issuer === caCert.subject
      ? `another CA also named ${cert.issuer}`
      : cert.issuer;
    add(
      "FAIL",
      "peer tls",
      `${where}'s certificate (${subject}, issued by ${issuer}) is not from the CA in ` +
        `${ca.path}: give --tls-ca the CA that issued it, or re-issue the server's ` +
        "certificate with 'vnet cert issue --ca DIR'",
    );
    return;
  }
  if (now < cert.notBefore) {
    const aheadMin = Math.round((cert.notBefore.getTime() - now.getTime()) / 60_000);
    add(
      "FAIL",
      "peer tls",
      `${where}'s certificate is valid only from ${cert.notBefore.toISOString()}, ${aheadMin} ` +
        "min from this machine's clock: one of the clocks is wrong (clock skew); fix it (NTP)",
    );
    return;
  }
  if (now > cert.notAfter) {
    add(
      "FAIL",
      "peer tls",
      `${where}'s certificate expired on ${cert.notAfter.toISOString()}: issue a new one with ` +
        "'vnet cert issue' (or this machine's clock is wrong)",
    );
    return;
  }
  const names = sanNames(cert);
  if (!names.includes(peer.hostname)) {
    add(
      "FAIL",
      "peer tls",
      `${where}'s certificate is for ${names.join(", ") || "no name"}, not ${peer.hostname}: ` +
        `re-issue it with --san ${peer.hostname}, or dial the name it was issued for`,
    );
    return;
  }
  const days = Math.floor((cert.notAfter.getTime() - now.getTime()) / DAY_MS);
  const until = `valid until ${cert.notAfter.toISOString().slice(0, 10)} (${days} days)`;
  if (days < EXPIRY_WARN_DAYS) {
    add(
      "WARN",
      "peer tls",
      `${where}'s certificate expires soon, ${until}: issue a new one with 'vnet cert issue'`,
    );
  } else {
    add("PASS", "peer tls", `${where}'s certificate (${subject}) is from your CA, ${until}`);
  }
}

function sanNames(cert: x509.X509Certificate): string[] {
  const ext = cert.getExtension(x509.SubjectAlternativeNameExtension);
  return ext?.names.items.map((n) => n.value) ?? [];
}

/**
 * Whether UDP gets through to the peer's UDP port and back: the links' UDP paths need it, and a
 * firewall that lets the TCP port through often drops UDP. The peer gives a token over the
 * authenticated session and sends back the probe that carries it (four copies at most).
 */
async function checkUdp(
  session: PeerSession,
  peer: HostPort,
  probes: Probes,
  timeoutMs: number,
  add: Add,
): Promise<void> {
  const where = formatHostPort(peer);
  let reply: Record<string, unknown>;
  try {
    reply = await withTimeout(session.request("udpProbe"), timeoutMs);
  } catch (e) {
    const said = visible(messageOf(e));
    if (/unknown request/.test(said)) {
      add(
        "INFO",
        "peer udp",
        `${where} cannot be asked about UDP (${said}): a vnet older than this one; its links ` +
          "carry every frame over TCP",
      );
    } else {
      add("WARN", "peer udp", `${where} did not answer the UDP question: ${said}`);
    }
    return;
  }
  const port = Number(reply.port), token = Number(reply.token);
  if (!Number.isInteger(port) || port < 0 || port > 65535 || !Number.isInteger(token)) {
    add("WARN", "peer udp", `${where} answered the UDP question with nonsense`);
    return;
  }
  if (port === 0) {
    add(
      "INFO",
      "peer udp",
      `${where} has UDP off (--udp-port 0): its links carry every frame over TCP`,
    );
    return;
  }
  const udp = formatHostPort({ hostname: peer.hostname, port });
  const ms = await probes.udpEcho(
    { hostname: peer.hostname, port },
    probeDatagram(token),
    timeoutMs,
  );
  if (ms === null) {
    add(
      "WARN",
      "peer udp",
      `no answer from UDP ${udp} in ${timeoutMs / 1000} s: something on the way drops UDP. ` +
        `Links to it will carry frames over TCP, slower under loss; let UDP port ${port} through ` +
        "both ways (or give the servers --transport tcp to stop trying)",
    );
    return;
  }
  add(
    "PASS",
    "peer udp",
    `UDP ${udp} answered in ${ms.toFixed(1)} ms: links to it can carry frames over UDP`,
  );
}

/** Lines shown of the peer's links at most; the rest are counted. */
const MAX_PEER_LINKS = 10;

/** What carries each of the peer's handlers' frames now: the transport, its MTU and loss. */
async function checkPeerLinks(
  session: PeerSession,
  where: string,
  timeoutMs: number,
  add: Add,
): Promise<void> {
  let handlers: unknown;
  try {
    handlers = (await withTimeout(session.request("list"), timeoutMs)).handlers;
  } catch {
    return; // an older peer, or a slow one: the checks above said what matters
  }
  if (!Array.isArray(handlers) || handlers.length === 0) return;
  const lines = handlers.slice(0, MAX_PEER_LINKS).map((h) => describeLink(h));
  const more = handlers.length > MAX_PEER_LINKS
    ? `; and ${handlers.length - MAX_PEER_LINKS} more`
    : "";
  add("INFO", "peer links", `${where}'s handlers: ${lines.join("; ")}${more}`);
}

/** One handler of a peer's `list`, as "ID to PEER: udp sealed, MTU 1450, loss 0%/2%". */
function describeLink(h: Record<string, unknown>): string {
  const link = (h.link ?? {}) as Record<string, unknown>;
  const udp = link.udp as Record<string, unknown> | null | undefined;
  const pct = (v: unknown) => typeof v === "number" ? `${v}%` : "?";
  let how = `${visible(String(link.transport ?? "tcp"))} (link ${visible(String(link.state))})`;
  if (udp) {
    how = `${visible(String(link.transport))}: UDP path ${visible(String(udp.state))}` +
      `${udp.sealed ? " sealed" : " plain"}, MTU ${Number(udp.mtu)}, loss here ` +
      `${pct(udp.lossPercent)} there ${pct(udp.peerLossPercent)}` +
      (typeof udp.queueDelayMs === "number" ? `, queue ${udp.queueDelayMs} ms` : "");
  }
  return `${visible(String(h.id))} to ${visible(String(h.peer))} ${how}`;
}

async function checkVersion(
  session: PeerSession,
  where: string,
  opts: DoctorOptions,
  timeoutMs: number,
  add: Add,
): Promise<void> {
  const sent = Date.now();
  let reply: Record<string, unknown>;
  try {
    reply = await withTimeout(session.request("version"), timeoutMs);
  } catch (e) {
    add(
      "WARN",
      "peer version",
      `${where} does not tell its version (${messageOf(e)}): it is older than this vnet ` +
        `${opts.version}; run the same version on both sides`,
    );
    return;
  }
  const got = Date.now();
  const version = String(reply.version ?? "unknown");
  const commit = reply.commit ? ` (${reply.commit})` : "";
  let skew = "";
  if (typeof reply.time === "number") {
    const skewMs = reply.time - (sent + got) / 2;
    if (Math.abs(skewMs) > SKEW_WARN_MS + (got - sent) / 2) {
      add(
        "WARN",
        "peer clock",
        `${where}'s clock is ${(skewMs / 1000).toFixed(0)} s off this machine's: certificates ` +
          "may look expired or not yet valid, and logs will not line up; run NTP on both",
      );
    } else {
      skew = `, clocks within ${Math.max(1, Math.ceil(Math.abs(skewMs) / 1000))} s`;
    }
  }
  if (version !== opts.version) {
    add(
      "WARN",
      "peer version",
      `${where} runs vnet ${version}${commit}, this is ${opts.version}: run the same version on ` +
        "both sides",
    );
  } else {
    add("PASS", "peer version", `${where} runs vnet ${version}${commit}${skew}`);
  }
}

async function checkPeerMtu(
  session: PeerSession,
  where: string,
  opts: DoctorOptions,
  local: Map<string, DeviceFacts>,
  add: Add,
): Promise<void> {
  const peerDev = opts.peerDev!;
  let devices: { name: string; mtu?: number }[];
  try {
    devices = (await session.request("devices")).devices as { name: string; mtu?: number }[];
  } catch (e) {
    add("WARN", "peer mtu", `${where} did not list its devices: ${messageOf(e)}`);
    return;
  }
  const far = devices.find((d) => d.name === peerDev);
  if (!far) {
    add(
      "FAIL",
      "peer mtu",
      `${where} has no device ${peerDev} (it has ${
        devices.map((d) => d.name).join(", ") || "none"
      }): check --peer-dev`,
    );
    return;
  }
  const [dev, near] = [...local.entries()][0] ?? [];
  if (!near?.exists || near.mtu === null) {
    add(
      "INFO",
      "peer mtu",
      `${where}'s ${peerDev} has MTU ${far.mtu}; give --dev with this side's device to compare`,
    );
    return;
  }
  if (far.mtu === near.mtu) {
    add("PASS", "peer mtu", `${dev} and ${where}'s ${peerDev} both have MTU ${near.mtu}`);
    return;
  }
  const small = Math.min(near.mtu, far.mtu ?? 0);
  const [bigSide, smallSide] = near.mtu > (far.mtu ?? 0)
    ? [`${dev} here`, `${peerDev} there`]
    : [`${peerDev} there`, `${dev} here`];
  add(
    "WARN",
    "peer mtu",
    `MTU mismatch: ${dev} here ${near.mtu}, ${peerDev} on ${where} ${far.mtu}. Frames from ` +
      `${bigSide} larger than ${small} do not fit ${smallSide}: TCP is segmented to fit, other ` +
      "frames (UDP, ICMP, ...) are dropped and counted (dropReasons.offload); set both MTUs equal",
  );
}

function withTimeout<T>(p: Promise<T>, ms: number): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  return Promise.race([
    p,
    new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new Error(`no answer in ${ms} ms`)), ms);
    }),
  ]).finally(() => clearTimeout(timer));
}

/** The leaf certificate `addr` presents, fetched without verifying it (node:tls). */
export function fetchCertificate(addr: HostPort, timeoutMs: number): Promise<PeerCertificate> {
  return new Promise((resolve, reject) => {
    const socket = tls.connect({
      host: addr.hostname,
      port: addr.port,
      rejectUnauthorized: false,
      servername: /^[\d.]+$|:/.test(addr.hostname) ? undefined : addr.hostname,
    });
    const timer = setTimeout(() => {
      socket.destroy();
      reject(new Error(`no TLS answer in ${timeoutMs} ms`));
    }, timeoutMs);
    socket.once("secureConnect", () => {
      clearTimeout(timer);
      const raw = socket.getPeerCertificate()?.raw;
      socket.destroy();
      if (raw) resolve({ der: new Uint8Array(raw) });
      else reject(new Error("no certificate presented"));
    });
    socket.once("error", (e: Error) => {
      clearTimeout(timer);
      socket.destroy();
      reject(e);
    });
  });
}

/** Renders checks as lines: `PASS  name: message`. */
export function formatChecks(checks: Check[]): string {
  // Messages quote what the peer said (errors, certificate names, versions): escaped.
  return checks.map((c) => `${c.status.padEnd(4)}  ${visible(c.name)}: ${visible(c.message)}`)
    .join("\n");
}
