/**
 * The control protocol, typed: every request a client sends a server, and a server its peer,
 * with its answer. Both sides use these types; servers accept nothing that `parse*` has not
 * checked (types, ranges, kernel rules for names, the MAC policy that needs no system state).
 *
 * Client → server (control links):  create, close, migrate, list, devices, version
 * Server → server (peer links):      attach, detach, sync
 */
import { type HostPort } from "../addr.ts";
import { ErrorCode, VnetError } from "../errors.ts";
import { type Role } from "../dataplane/ports.ts";
import { type HandlerSpec, type Transport, TRANSPORTS } from "../dataplane/handler.ts";
import { type UdpOffer } from "./udp_transport.ts";
import { type HandlerInfo } from "../dataplane/data_path.ts";
import { type DeviceInfo } from "../dataplane/interfaces.ts";
import { BROADCAST, parseMac } from "../dataplane/mac.ts";
import { type Link } from "../link/link.ts";
import { type AeadName, supportedAeads } from "../link/udp/aead.ts";
import { fromBase64 } from "../dataplane/forwarder_protocol.ts";
import { parseGateway, type SshOptions } from "../link/ssh.ts";

interface Endpoint {
  addr: HostPort;
  dev: string;
}

export interface CreateRequest {
  proxy: Endpoint;
  host: Endpoint;
  /** The server the client contacted: it plays this role and dials the other one. */
  via: Role;
  macs: string[];
  multicast: boolean;
  /** Where the contacted server reaches the other one, if not at the client's address for it. */
  peer?: HostPort;
  /** Reach the other server through `ssh -W` on a gateway. */
  ssh?: SshOptions;
  /** The client's own timeout: the answer comes within it. */
  timeoutMs?: number;
  /** How the handler's frames cross; the server's default (`--transport`) when absent. */
  transport?: Transport;
}

export interface MigrateRequest {
  handler: string;
  host: Endpoint;
  ssh?: SshOptions;
}

/** A handler as `list` shows it. */
export interface ListedHandler extends HandlerInfo {
  /** Which side dialled the link: this server ("out") or the peer ("in"). */
  dialled: "out" | "in";
  reconnects: number;
}

/** What a server asks its peer to open: the other end of a handler. */
export interface AttachRequest extends HandlerSpec {
  /** The dialling server's id: the acceptor refuses its own, and reconciles by it. */
  origin: string;
  /**
   * A random key made at creation: only the server that holds it may attach to, detach or
   * sync this handler later. It binds the handler to the two servers that made it.
   */
  bind: string;
}

export interface DetachRequest {
  handler: string;
  bind: string;
}

/** After a reconnect, the dialler says which of its handlers the acceptor should still hold. */
export interface SyncRequest {
  origin: string;
  handlers: string[];
}

/** The Proxy tells a Host of a direct path for its handler's VMs to `mac` (direct.ts). */
export interface RouteRequest {
  handler: string;
  mac: string;
  /** The other Host's server, `ADDR:PORT`. */
  peer: string;
  /** The other Host's handler id for `mac`. */
  remote: string;
  token: string;
  /** This Host dials the other; else it expects the other to dial it. */
  dial: boolean;
  /** Where to punch a UDP path to the other Host, when the Proxy hears both by UDP. */
  udp?: Rendezvous;
}

/**
 * The rendezvous of a punched UDP path (control/direct.ts): the other Host's UDP endpoint as the
 * Proxy sees it (its NAT's mapping), the two Hosts' fresh secret (32 bytes, base64), the token
 * that names it (the same in every announcement between the two Hosts while the Proxy re-sends
 * it), and on a sealed path the AEAD both run.
 */
export interface Rendezvous {
  host: string;
  port: number;
  secret: string;
  token: string;
  aead?: AeadName;
}

/** A Host presents the Proxy's token on a direct link it dialled. */
export interface DirectRequest {
  token: string;
  /** The handler (of the Host dialled) whose VM the dialler's VMs talk to. */
  handler: string;
}

/**
 * A handler whose far end is a VXLAN endpoint (a Linux `vxlan` device, a switch), not a VNET
 * server: this server opens its end and tunnels to `remote` with VNI `vni` (issue 18).
 */
export interface VxlanRequest {
  role: Role;
  device: string;
  macs: string[];
  multicast: boolean;
  /** The endpoint's IP address and UDP port (4789 by default). */
  remote: HostPort;
  vni: number;
}

/** Each operation's request and answer. */
interface Operations {
  /** `warnings`: what the client should hear, e.g. a MAC no frame has carried (a typo?). */
  create: [CreateRequest, { id: string; warnings?: string[] }];
  vxlan: [VxlanRequest, { id: string; warnings?: string[] }];
  close: [{ handler: string }, { closed: string; peerClosed: boolean }];
  migrate: [MigrateRequest, { id: string; host: string; gapMs: number }];
  list: [Record<never, never>, { handlers: ListedHandler[] }];
  devices: [Record<never, never>, { devices: DeviceInfo[] }];
  version: [Record<never, never>, { version: string; commit: string; time: number }];
  /** For `vnet doctor`: the UDP port, and a token its probe datagram is answered for; port 0: off. */
  udpProbe: [Record<never, never>, { port: number; token: number }];
  attach: [AttachRequest, { warnings?: string[] }];
  detach: [DetachRequest, Record<never, never>];
  sync: [SyncRequest, { closed: string[] }];
  route: [RouteRequest, Record<never, never>];
  direct: [DirectRequest, Record<never, never>];
  unroute: [{ mac: string }, Record<never, never>];
  udp: [UdpOffer, UdpOffer];
  udpRekey: [{ epoch: number; public: string }, { public: string }];
}
type Operation = keyof Operations;
type RequestOf<O extends Operation> = Operations[O][0];
export type ResultOf<O extends Operation> = Operations[O][1];

/** Sends a typed request over `link` and waits for its typed answer. */
export async function call<O extends Operation>(
  link: Link,
  op: O,
  body: RequestOf<O>,
  timeoutMs?: number,
): Promise<ResultOf<O>> {
  return await link.request(op, { ...body }, timeoutMs) as ResultOf<O>;
}

// --- checking what arrives -----------------------------------------------------------------

type Body = Record<string, unknown>;

function invalid(message: string): VnetError {
  return new VnetError(message, { code: ErrorCode.Invalid });
}

function str(body: Body, key: string, max = 256): string {
  const v = body[key];
  if (typeof v !== "string" || v === "") throw invalid(`request lacks '${key}'`);
  if (v.length > max || v.includes("\0")) throw invalid(`bad '${key}': too long or not text`);
  return v;
}

function optionalStr(body: Body, key: string, max = 4096): string | undefined {
  return body[key] === undefined || body[key] === null ? undefined : str(body, key, max);
}

/** A whole number in [min, max], or `fallback` when absent. */
function int(v: unknown, key: string, min: number, max: number, fallback?: number): number {
  if (v === undefined && fallback !== undefined) return fallback;
  if (typeof v !== "number" || !Number.isInteger(v) || v < min || v > max) {
    throw invalid(`bad '${key}': a whole number from ${min} to ${max}`);
  }
  return v;
}

function hostPort(v: unknown, key: string): HostPort {
  const o = v as Body | undefined;
  if (typeof o !== "object" || o === null) throw invalid(`request lacks '${key}'`);
  const hostname = str(o, "hostname", 253);
  if (!/^[\w.:%-]+$/.test(hostname)) {
    throw invalid(`bad '${key}.hostname' '${printable(hostname)}'`);
  }
  return { hostname, port: int(o.port, `${key}.port`, 1, 65535) };
}

/** Bytes the kernel's isspace() is true for (include/linux/ctype.h: Latin-1 NBSP too). */
const KERNEL_SPACE = new Set([0x09, 0x0a, 0x0b, 0x0c, 0x0d, 0x20, 0xa0]);

/**
 * A network interface name by the kernel's rules (dev_valid_name), on its UTF-8 bytes: 1 to
 * 15 bytes, not "." or "..", no "/", ":", NUL or byte the kernel counts as space.
 */
export function checkDeviceName(name: string): string {
  const bytes = new TextEncoder().encode(name);
  if (
    bytes.length === 0 || bytes.length > 15 || name === "." || name === ".." ||
    bytes.some((b) => b === 0x2f || b === 0x3a || b === 0 || KERNEL_SPACE.has(b))
  ) {
    throw invalid(
      `bad device name '${printable(name)}': 1 to 15 bytes, no '/', ':' or spaces`,
    );
  }
  return name;
}

/** `text` cut short, with anything unprintable shown as '?': error messages stay one line. */
function printable(text: string): string {
  return text.slice(0, 40).replace(/[^\x20-\x7e]/g, "?");
}

function endpoint(v: unknown, key: string): Endpoint {
  const o = (v ?? {}) as Body;
  return { addr: hostPort(o.addr, `${key}.addr`), dev: checkDeviceName(str(o, "dev", 64)) };
}

/** The most MACs one handler carries. */
export const MAX_MACS = 256;

/**
 * The MACs a handler may carry: unicast, not zero, each once. Broadcast and multicast are
 * carried for every handler by its role's filter; as a proxied address they would claim the
 * whole LAN.
 */
export function checkMacs(v: unknown): string[] {
  if (!Array.isArray(v) || v.length === 0) throw invalid("a handler needs at least one MAC");
  if (v.length > MAX_MACS) throw invalid(`a handler carries at most ${MAX_MACS} MACs`);
  const macs = [
    ...new Set(v.map((m) => {
      if (typeof m !== "string") throw invalid("bad 'macs': a list of MAC address strings");
      try {
        return parseMac(m);
      } catch {
        throw invalid(
          `bad MAC address '${printable(m)}': expected six hex bytes like 02:00:00:aa:bb:cc`,
        );
      }
    })),
  ];
  for (const mac of macs) {
    const why = mac === BROADCAST
      ? "the broadcast address"
      : mac === "00:00:00:00:00:00"
      ? "the zero address"
      : (parseInt(mac.slice(0, 2), 16) & 1) === 1
      ? "a multicast address"
      : "";
    if (why) {
      throw new VnetError(
        `MAC ${mac} is ${why}: give the VM's own (unicast) MAC; broadcasts are carried anyway` +
          " (and multicast with --multicast)",
        { code: ErrorCode.Refused },
      );
    }
  }
  return macs;
}

function role(v: unknown): Role {
  if (v !== "proxy" && v !== "host") {
    throw invalid(`bad role '${printable(String(v))}': proxy or host`);
  }
  return v;
}

function ssh(v: unknown): SshOptions | undefined {
  if (v === undefined || v === null) return undefined;
  const o = v as Body;
  const gateway = str(o, "gateway");
  parseGateway(gateway);
  return {
    gateway,
    identity: optionalStr(o, "identity"),
    knownHosts: optionalStr(o, "knownHosts"),
  };
}

const HANDLER_ID = /^[0-9a-f]{8}$/;
const KEY = /^[0-9a-f]{32}$/;

function handlerId(body: Body, key = "handler"): string {
  const id = str(body, key);
  if (!HANDLER_ID.test(id) || id === "00000000") {
    throw invalid(`bad handler id '${printable(id)}' (see vnet client list)`);
  }
  return id;
}

function key(body: Body, name: string): string {
  const v = str(body, name);
  if (!KEY.test(v)) throw invalid(`bad '${name}': 32 hex digits`);
  return v;
}

export function parseCreate(body: Body): CreateRequest {
  return {
    proxy: endpoint(body.proxy, "proxy"),
    host: endpoint(body.host, "host"),
    via: role(body.via),
    macs: checkMacs(body.macs),
    multicast: body.multicast === true,
    peer: body.peer === undefined || body.peer === null ? undefined : hostPort(body.peer, "peer"),
    ssh: ssh(body.ssh),
    timeoutMs: int(body.timeoutMs, "timeoutMs", 1_000, 600_000, 20_000),
    transport: transport(body.transport),
  };
}

function transport(value: unknown): Transport | undefined {
  if (value === undefined || value === null) return undefined;
  if (typeof value === "string" && (TRANSPORTS as readonly string[]).includes(value)) {
    return value as Transport;
  }
  throw invalid(`bad 'transport' '${printable(String(value))}': one of ${TRANSPORTS.join(", ")}`);
}

export function parseVxlan(body: Body): VxlanRequest {
  const remote = hostPort(body.remote, "remote");
  if (!/^[\d.]+$|:/.test(remote.hostname)) {
    throw invalid(`bad 'remote' '${printable(remote.hostname)}': give the endpoint's IP address`);
  }
  return {
    role: role(body.role),
    device: checkDeviceName(str(body, "device", 64)),
    macs: checkMacs(body.macs),
    multicast: body.multicast === true,
    remote,
    vni: int(body.vni, "vni", 0, 0xffffff),
  };
}

export function parseMigrate(body: Body): MigrateRequest {
  return { handler: handlerId(body), host: endpoint(body.host, "host"), ssh: ssh(body.ssh) };
}

export function parseHandlerRef(body: Body): { handler: string } {
  return { handler: handlerId(body) };
}

export function parseAttach(body: Body): AttachRequest {
  return {
    id: handlerId(body, "id"),
    role: role(body.role),
    device: checkDeviceName(str(body, "device", 64)),
    macs: checkMacs(body.macs),
    multicast: body.multicast === true,
    peer: displayAddress(str(body, "peer")),
    transport: transport(body.transport),
    origin: key(body, "origin"),
    bind: key(body, "bind"),
  };
}

export function parseDetach(body: Body): DetachRequest {
  return { handler: handlerId(body), bind: key(body, "bind") };
}

export function parseSync(body: Body): SyncRequest {
  const handlers = body.handlers;
  if (!Array.isArray(handlers) || handlers.length > 100_000) {
    throw invalid("bad 'handlers': a list of handler ids");
  }
  return {
    origin: key(body, "origin"),
    handlers: handlers.map((h) => handlerId({ handler: h })),
  };
}

export function parseRoute(body: Body): RouteRequest {
  const peer = displayAddress(str(body, "peer"));
  return {
    handler: handlerId(body),
    mac: checkMacs([body.mac])[0],
    peer,
    remote: handlerId(body, "remote"),
    token: key(body, "token"),
    dial: body.dial === true,
    ...(body.udp === undefined ? {} : { udp: rendezvous(body.udp) }),
  };
}

/** A rendezvous: an IP literal (never a name to resolve), a port, 32 bytes, a known AEAD. */
function rendezvous(v: unknown): Rendezvous {
  const o = v as Body;
  if (typeof o !== "object" || o === null) throw invalid("bad 'udp': an object");
  const host = str(o, "host", 45);
  const v4 = /^(\d{1,3})\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})$/.exec(host);
  if (v4 ? v4.slice(1).some((n) => Number(n) > 255) : !/^[0-9a-f:.]+$/i.test(host)) {
    throw invalid(`bad 'udp.host' '${printable(host)}': an IP address`);
  }
  const secret = str(o, "secret", 64);
  let bytes = 0;
  try {
    bytes = fromBase64(secret).length;
  } catch {
    // counted as 0 bytes below
  }
  if (bytes !== 32) throw invalid("bad 'udp.secret': 32 bytes in base64");
  const token = str(o, "token", 32);
  if (!KEY.test(token)) throw invalid("bad 'udp.token': 32 hex digits");
  const aead = o.aead;
  if (aead !== undefined && !(supportedAeads() as unknown[]).includes(aead)) {
    throw invalid(`bad 'udp.aead' '${printable(String(aead))}'`);
  }
  return {
    host,
    port: int(o.port, "udp.port", 1, 65535),
    secret,
    token,
    ...(aead === undefined ? {} : { aead: aead as AeadName }),
  };
}

export function parseDirect(body: Body): DirectRequest {
  return { token: key(body, "token"), handler: handlerId(body) };
}

export function parseUnroute(body: Body): { mac: string } {
  return { mac: checkMacs([body.mac])[0] };
}

/** The other server as shown in `list`: printable, one line. */
function displayAddress(text: string): string {
  if (!/^[\x21-\x7e]{1,300}$/.test(text)) throw invalid(`bad 'peer' '${printable(text)}'`);
  return text;
}

/** 16 random bytes as 32 hex digits: server ids and handler keys. */
export function randomKey(): string {
  return Array.from(
    crypto.getRandomValues(new Uint8Array(16)),
    (b) => b.toString(16).padStart(2, "0"),
  )
    .join("");
}
