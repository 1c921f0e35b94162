/** `vnet client`: ask a server to create, list and close handlers. */
import { VXLAN_PORT } from "../dataplane/vxlan.ts";
import { formatHostPort, type HostPort, parseHostPort } from "../addr.ts";
import { codeOf, ErrorCode, messageOf, VnetError } from "../errors.ts";
import { type Link } from "../link/link.ts";
import { dial } from "../link/dial.ts";
import { log, visible, visibleJson } from "../log.ts";
import { parseMac } from "../dataplane/mac.ts";
import { TRANSPORTS } from "../dataplane/handler.ts";
import { parseGateway } from "../link/ssh.ts";
import { type ListedHandler } from "../control/rpc.ts";
import { isUnresolvable } from "../control/client_requests.ts";
import {
  absolutePath,
  noPositionals,
  type Options,
  parseFlags,
  readTextFile,
  required,
  secretKey,
  unknownCommand,
  within,
} from "./common.ts";

/** What each subcommand does, and its own options; `vnet client SUB --help` prints one. */
const SUBCOMMAND_HELP = {
  create: `
vnet client [create]: set up a handler between a Proxy and a Host

Usage:
  vnet client [create] --proxy ADDR:PORT --proxy-dev DEV --host ADDR:PORT --host-dev DEV \\
              --mac MAC [--mac MAC ...] [--multicast] [--via proxy|host]
              [--transport auto|udp|tcp] --secret-file FILE

The client contacts one server (--via, default proxy); that server opens its end and dials
the other one, which opens the other end. So the side behind NAT should be the one the client
contacts: with the Host behind NAT, use --via host and the Host dials out to the Proxy, which
then needs one reachable port. Prints the handler's id on stdout once frames can flow; warns
on stderr about a --mac that no frame on the Host's --host-dev has carried yet (a typo?).

Options for create:
  --proxy ADDR:PORT     the Proxy's server (on the LAN the VMs should appear on)
  --proxy-dev DEV       the Proxy's LAN interface, e.g. eth0
  --host ADDR:PORT      the Host's server (where the VMs run)
  --host-dev DEV        the VMs' interface on the Host (their tap/veth/bridge), e.g. vnet0
  --mac MAC             a VM's MAC address; repeat for several VMs on one handler
  --multicast           also carry multicast to the VMs (IPv6 neighbour discovery needs it)
  --via proxy|host      which server to contact; it dials the other (default proxy)
  --transport auto|udp|tcp
                        how the handler's frames cross the WAN (default: the contacted
                        server's --transport, itself auto by default): auto, by UDP while it
                        gets through and by the link when it does not; udp, the same, but
                        refused if the servers have no UDP path; tcp, always by the link
  --proxy-peer ADDR:PORT, --host-peer ADDR:PORT
                        where the contacted server reaches the other one, when that differs
                        from the address this client uses (e.g. a NAT or a private address)
  --ssh [USER@]GATEWAY[:PORT]
                        the contacted server reaches the other one through 'ssh -W' on this
                        gateway (OpenSSH; for sites where only SSH gets through). Host keys
                        are checked: the gateway must be in known_hosts
  --ssh-identity FILE   private key for ssh (a path on the contacted server)
  --ssh-known-hosts FILE
                        known_hosts file for ssh (a path on the contacted server)
`,
  list: `
vnet client list: show a server's handlers

Usage:
  vnet client list --server ADDR:PORT --secret-file FILE [--json] [--rate-window S] [--wide]

One row per handler: its link, MACs, and rates (bits/s each way) and drops. The client
measures rates itself: it asks twice, --rate-window seconds apart (default 1; 0 for counters
only, at once). With --json, rates are added only when --rate-window is given.

Options for list:
  --server ADDR:PORT    the server to ask
  --rate-window S       seconds between the two samples (default 1; 0: counters only)
  --wide                every column (keepalive RTT, frames/bytes/drops each way, drops by
                        reason, MAC conflicts, frames/s); the default fits 100 columns
  --json                machine-readable output
`,
  watch: `
vnet client watch: the list table, live

Usage:
  vnet client watch --server ADDR:PORT --secret-file FILE [--interval S] [--count N] [--wide]

The list table, refreshed every --interval seconds (default 2) until Ctrl-C; rates are over
the last interval (the first snapshot has none yet: '-'). On a terminal it redraws the screen;
otherwise (a pipe, a file) it prints one timestamped snapshot per interval.

Options for watch:
  --server ADDR:PORT    the server to ask
  --interval S          seconds between snapshots (default 2)
  --count N             stop after N snapshots
  --wide                every column (see 'vnet client list --help')
`,
  close: `
vnet client close: close a handler, on both servers

Usage:
  vnet client close --server ADDR:PORT --secret-file FILE ID

Options for close:
  --server ADDR:PORT    either server of the handler
`,
  devices: `
vnet client devices: list the interfaces a server can put a handler on

Usage:
  vnet client devices --server ADDR:PORT --secret-file FILE [--all] [--json]

Lists the Ethernet-like interfaces (the ones with a MAC address: a handler's --proxy-dev or
--host-dev), each with its MAC, state and MTU.

Options for devices:
  --server ADDR:PORT    the server to ask
  --all                 also the interfaces that cannot carry a handler (loopback, any,
                        nflog, nfqueue, dbus-*, bluetooth-monitor, ...)
  --json                machine-readable output (all interfaces)
`,
  vxlan: `
vnet client vxlan: a handler whose far end is a VXLAN endpoint, not a VNET server

Usage:
  vnet client vxlan --server ADDR:PORT --secret-file FILE --dev DEV --mac MAC --remote ADDR[:PORT] --vni N

Creates a handler on one server that tunnels its VMs' frames to a VXLAN endpoint (RFC 7348): a
Linux vxlan device, Open vSwitch, or a switch that terminates VXLAN, with no VNET server on that
side. The server sends from and listens on its --vxlan-port (4789) on its --listen address.
Plain VXLAN is not encrypted or authenticated: use it on a network you trust.

Options for vxlan:
  --server ADDR:PORT    the server that opens the end (the Host, or the Proxy with --role proxy)
  --dev DEV             its interface: the VM's tap or bridge (Host), the LAN (Proxy)
  --mac MAC             a VM's MAC (repeat for more)
  --remote ADDR[:PORT]  the VXLAN endpoint's IP address (port 4789 if not given)
  --vni N               the VXLAN network identifier, 0 to 16777215
  --role host|proxy     which end this server is (default host)
  --multicast           carry multicast too
`,
  migrate: `
vnet client migrate: move a handler's Host end to another host

Usage:
  vnet client migrate --server ADDR:PORT --secret-file FILE ID --host ADDR:PORT --host-dev DEV
  vnet client vxlan   --server ADDR:PORT --secret-file FILE --dev DEV --mac MAC --remote ADDR --vni N

Moves a handler's Host end to another host (the VM moved there) while the Proxy end, the id
and the MACs stay; send it to the Proxy's server. The old host stops forwarding before the new
one starts. Prints the gap in ms on stderr.

Options for migrate:
  --server ADDR:PORT    the Proxy's server
  --host ADDR:PORT      the new Host's server
  --host-dev DEV        the VM's interface on the new Host
  --ssh, --ssh-identity, --ssh-known-hosts  as for create
`,
} as const;

const COMMON_HELP = `
Common options:
  --secret-file FILE    the shared secret (mode 0600); or set VNET_SECRET
  --tls-ca FILE         talk TLS to the server and verify it against this CA
  --timeout SECONDS     bounds the whole exchange with the server, connection and handshake
                        included (default 20)
  -h, --help            show this help
`;

type Subcommand = keyof typeof SUBCOMMAND_HELP;

const CLIENT_HELP = `
vnet client: set up and manage VNET handlers

Usage:
  vnet client [create] --proxy ADDR:PORT --proxy-dev DEV --host ADDR:PORT --host-dev DEV \\
              --mac MAC [--mac MAC ...] [--multicast] [--via proxy|host] --secret-file FILE
  vnet client list    --server ADDR:PORT --secret-file FILE [--json] [--rate-window S] [--wide]
  vnet client watch   --server ADDR:PORT --secret-file FILE [--interval S] [--count N]
  vnet client close   --server ADDR:PORT --secret-file FILE ID
  vnet client devices --server ADDR:PORT --secret-file FILE [--all] [--json]
  vnet client migrate --server ADDR:PORT --secret-file FILE ID --host ADDR:PORT --host-dev DEV

Run 'vnet client COMMAND --help' for one command's options.

${Object.entries(SUBCOMMAND_HELP).map(([sub, help]) => section(sub, help)).join("\n\n")}
${COMMON_HELP}`;

/** A subcommand's help without its title and usage, for the whole client's help. */
function section(sub: string, help: string): string {
  return `${sub}: ${help.trim().split("\n\n").slice(2).join("\n\n")}`;
}

const connectionOptions = {
  "secret-file": { type: "string" },
  "tls-ca": { type: "string" },
  timeout: { type: "string", default: "20" },
} as const satisfies Options;

/** What the commands that read one server's tables take. */
const readOptions = {
  ...connectionOptions,
  server: { type: "string" },
  json: { type: "boolean" },
} as const satisfies Options;

const sshOptions = {
  ssh: { type: "string" },
  "ssh-identity": { type: "string" },
  "ssh-known-hosts": { type: "string" },
} as const satisfies Options;

/**
 * Each subcommand's flags: the parser's table, and the one shell completion is made from
 * (src/cli/completion.ts).
 */
export const CLIENT_FLAGS = {
  create: {
    ...connectionOptions,
    proxy: { type: "string" },
    "proxy-dev": { type: "string" },
    host: { type: "string" },
    "host-dev": { type: "string" },
    mac: { type: "string", multiple: true },
    multicast: { type: "boolean" },
    via: { type: "string", default: "proxy" },
    transport: { type: "string" },
    "proxy-peer": { type: "string" },
    "host-peer": { type: "string" },
    ...sshOptions,
  },
  list: { ...readOptions, "rate-window": { type: "string" }, wide: { type: "boolean" } },
  watch: {
    ...connectionOptions,
    server: { type: "string" },
    interval: { type: "string", default: "2" },
    count: { type: "string" },
    wide: { type: "boolean" },
  },
  close: { ...connectionOptions, server: { type: "string" } },
  devices: { ...readOptions, all: { type: "boolean" } },
  migrate: {
    ...connectionOptions,
    server: { type: "string" },
    host: { type: "string" },
    "host-dev": { type: "string" },
    ...sshOptions,
  },
  vxlan: {
    ...connectionOptions,
    server: { type: "string" },
    dev: { type: "string" },
    mac: { type: "string", multiple: true },
    remote: { type: "string" },
    vni: { type: "string" },
    role: { type: "string", default: "host" },
    multicast: { type: "boolean" },
  },
} as const satisfies Record<Subcommand, Options>;

/** Parses a subcommand's flags; null after --help, which shows that subcommand's help only. */
function flags<S extends Subcommand>(args: string[], sub: S) {
  const help = SUBCOMMAND_HELP[sub] + COMMON_HELP;
  return parseFlags(args, CLIENT_FLAGS[sub], help, sub === "create" ? "client" : `client ${sub}`);
}

/** The subcommands; without one of their names, the arguments are a `create`. */
const SUBCOMMANDS: Record<Subcommand, (args: string[]) => Promise<number>> = {
  create: (a) => create(a),
  list: (a) => list(a),
  watch: (a) => watch(a),
  close: (a) => close(a),
  devices: (a) => devices(a),
  migrate: (a) => migrate(a),
  vxlan: (a) => vxlan(a),
};

export async function clientCommand(args: string[]): Promise<number> {
  const first = args[0] ?? "";
  if (first === "--help" || first === "-h" || first === "help") {
    console.log(CLIENT_HELP.trim());
    return 0;
  }
  if (Object.hasOwn(SUBCOMMANDS, first)) {
    return await SUBCOMMANDS[first as Subcommand](args.slice(1));
  }
  // create takes no positional arguments: a word first is a subcommand mistyped (`lst`).
  if (first !== "" && !first.startsWith("-")) {
    unknownCommand(first, Object.keys(SUBCOMMANDS), "client");
  }
  return await create(args);
}

function timeoutMs(values: Record<string, unknown>): number {
  const seconds = Number(values.timeout);
  if (!(seconds > 0)) {
    throw new VnetError(`bad --timeout '${values.timeout}': a number of seconds > 0`);
  }
  return seconds * 1000;
}

/**
 * Opens an authenticated control link to a server, with one clear error if it cannot, within
 * --timeout all told (connection, TLS and handshake).
 */
async function connect(addr: HostPort, values: Record<string, unknown>): Promise<Link> {
  const timeout = timeoutMs(values); // a bad flag is named before the secret is read
  const key = await secretKey(absolutePath(values["secret-file"] as string | undefined));
  const ca = absolutePath(values["tls-ca"] as string | undefined);
  const where = formatHostPort(addr);
  const dialing = dial(addr, {
    key,
    kind: "control",
    tlsCa: ca ? readTextFile(ca, "TLS CA") : undefined,
    timeoutMs: timeout,
    log,
    events: {
      onFrame: () => {},
      onRequest: () => Promise.reject(new VnetError("clients take no requests")),
      onClose: () => {},
    },
  });
  // A link that opens after the deadline is closed, not left running.
  let late = false;
  dialing.then((link) => late && link.close("timed out"), () => {});
  try {
    return await within(timeout, where, dialing);
  } catch (e) {
    late = true;
    if (isUnresolvable(e)) {
      throw new VnetError(
        `cannot resolve ${addr.hostname}: no such host name (check the name, or give an IP ` +
          `address)`,
        { code: ErrorCode.Unreachable, cause: e },
      );
    }
    throw e;
  }
}

/** One request over a fresh link, all of it (connection included) within --timeout. */
async function ask(
  addr: HostPort,
  values: Record<string, unknown>,
  op: string,
  body: Record<string, unknown> = {},
): Promise<Record<string, unknown>> {
  const started = performance.now();
  const link = await connect(addr, values);
  const left = Math.max(1, timeoutMs(values) - (performance.now() - started));
  try {
    return await within(left, op, link.request(op, body, left));
  } catch (e) {
    throw new VnetError(`${formatHostPort(addr)}: ${messageOf(e)}`, {
      code: codeOf(e),
      cause: e,
    });
  } finally {
    link.close("done");
  }
}

async function create(args: string[]): Promise<number> {
  const parsed = flags(args, "create");
  if (!parsed) return 0;
  const { values, positionals } = parsed;
  noPositionals(positionals, "client");
  const proxy = parseHostPort(required(values, "proxy", "client"), "--proxy");
  const host = parseHostPort(required(values, "host", "client"), "--host");
  const proxyDev = required(values, "proxy-dev", "client");
  const hostDev = required(values, "host-dev", "client");
  const macs = (values.mac ?? []).map(parseMac);
  if (macs.length === 0) {
    throw new VnetError("missing --mac: give the MAC address of at least one VM");
  }
  const via = values.via;
  if (via !== "proxy" && via !== "host") throw new VnetError(`bad --via '${via}': proxy or host`);
  const transport = values.transport;
  if (transport !== undefined && !(TRANSPORTS as readonly string[]).includes(transport)) {
    throw new VnetError(`bad --transport '${transport}': ${TRANSPORTS.join(", ")}`);
  }
  // The contacted server dials the other; an explicit peer address overrides the client's.
  const peerFlag = via === "proxy" ? values["host-peer"] : values["proxy-peer"];
  const peer = peerFlag
    ? parseHostPort(peerFlag, via === "proxy" ? "--host-peer" : "--proxy-peer")
    : undefined;

  const contact = via === "proxy" ? proxy : host;
  const result = await ask(contact, values, "create", {
    proxy: { addr: proxy, dev: proxyDev },
    host: { addr: host, dev: hostDev },
    via,
    macs,
    multicast: values.multicast === true,
    peer,
    transport,
    ssh: sshRequest(values),
    // The server's own limit ends first, so that its reason arrives before --timeout does.
    timeoutMs: Math.max(1_000, timeoutMs(values) - Math.min(1_000, timeoutMs(values) / 10)),
  });
  // What a server sends is shown escaped: it cannot drive the terminal.
  for (const w of Array.isArray(result.warnings) ? result.warnings : []) {
    console.error(`vnet: warning: ${visible(String(w))}`);
  }
  console.log(visible(String(result.id)));
  return 0;
}

function sshRequest(values: Record<string, unknown>) {
  const gateway = values.ssh as string | undefined;
  if (!gateway) {
    if (values["ssh-identity"] || values["ssh-known-hosts"]) {
      throw new VnetError("--ssh-identity and --ssh-known-hosts go with --ssh GATEWAY");
    }
    return undefined;
  }
  parseGateway(gateway);
  return {
    gateway,
    identity: values["ssh-identity"],
    knownHosts: values["ssh-known-hosts"],
  };
}

async function vxlan(args: string[]): Promise<number> {
  const parsed = flags(args, "vxlan");
  if (!parsed) return 0;
  const { values, positionals } = parsed;
  noPositionals(positionals, "client vxlan");
  const server = parseHostPort(required(values, "server", "client vxlan"), "--server");
  const dev = required(values, "dev", "client vxlan");
  const macs = (values.mac ?? []).map(parseMac);
  if (macs.length === 0) throw new VnetError("missing --mac: give the MAC address of a VM");
  const remoteText = required(values, "remote", "client vxlan");
  const remote = parseHostPort(
    remoteText.includes(":") || remoteText.startsWith("[")
      ? remoteText
      : `${remoteText}:${VXLAN_PORT}`,
    "--remote",
  );
  const vni = Number(required(values, "vni", "client vxlan"));
  if (!Number.isInteger(vni) || vni < 0 || vni > 0xffffff) {
    throw new VnetError(`bad --vni '${values.vni}': a whole number from 0 to 16777215`);
  }
  const role = values.role;
  if (role !== "host" && role !== "proxy") {
    throw new VnetError(`bad --role '${role}': host or proxy`);
  }
  const result = await ask(server, values, "vxlan", {
    role,
    device: dev,
    macs,
    multicast: values.multicast === true,
    remote,
    vni,
  });
  for (const w of Array.isArray(result.warnings) ? result.warnings : []) {
    console.error(`vnet: warning: ${visible(String(w))}`);
  }
  console.log(visible(String(result.id)));
  return 0;
}

async function migrate(args: string[]): Promise<number> {
  const parsed = flags(args, "migrate");
  if (!parsed) return 0;
  const { values, positionals } = parsed;
  const server = parseHostPort(required(values, "server", "client migrate"), "--server");
  const host = parseHostPort(required(values, "host", "client migrate"), "--host");
  const dev = required(values, "host-dev", "client migrate");
  if (positionals.length !== 1) {
    throw new VnetError("give exactly one handler ID to migrate (see 'vnet client list')");
  }
  const result = await ask(server, values, "migrate", {
    handler: positionals[0],
    host: { addr: host, dev },
    ssh: sshRequest(values),
  });
  console.error(
    `migrated ${visible(positionals[0])} to ${visible(String(result.host))} ` +
      `(gap ${visible(String(result.gapMs))} ms)`,
  );
  console.log(visible(positionals[0]));
  return 0;
}

async function list(args: string[]): Promise<number> {
  const parsed = flags(args, "list");
  if (!parsed) return 0;
  const { values, positionals } = parsed;
  noPositionals(positionals, "client list");
  const server = parseHostPort(required(values, "server", "client list"), "--server");
  // Rates come from two samples `window` seconds apart over one connection. The table always
  // has them (1 s by default); --json only when --rate-window is given, so scripts stay fast.
  const windowFlag = values["rate-window"];
  const window = windowFlag === undefined ? (values.json ? 0 : 1) : Number(windowFlag);
  if (!(window >= 0 && window <= 3600)) {
    throw new VnetError(`bad --rate-window '${windowFlag}': seconds from 0 to 3600 (0: no rates)`);
  }
  const link = await connect(server, values);
  let first: Sample, second: Sample | null = null;
  try {
    first = await sample(link, server, values);
    if (window > 0 && first.handlers.length > 0) {
      await new Promise((r) => setTimeout(r, window * 1000));
      second = await sample(link, server, values);
    }
  } finally {
    link.close("done");
  }
  const now = second ?? first;
  const rates = second ? computeRates(first, second) : null;
  if (values.json) {
    const out = rates
      ? now.handlers.map((h) => ({ ...h, rates: rates.get(h.id) ?? null }))
      : now.handlers;
    console.log(visibleJson(JSON.stringify(out, null, 2)));
    return 0;
  }
  console.log(handlerTable(now.handlers, rates, values.wide === true));
  return 0;
}

/** One `list` answer and when it was taken. */
interface Sample {
  at: number;
  handlers: ListedHandler[];
}

async function sample(
  link: Link,
  server: HostPort,
  values: Record<string, unknown>,
): Promise<Sample> {
  try {
    const result = await link.request("list", {}, timeoutMs(values));
    return { at: performance.now(), handlers: result.handlers as ListedHandler[] };
  } catch (e) {
    throw new VnetError(`${formatHostPort(server)}: ${messageOf(e)}`, { cause: e });
  }
}

interface DirectionRate {
  framesPerSecond: number;
  bitsPerSecond: number;
}
interface HandlerRates {
  toPeer: DirectionRate;
  fromPeer: DirectionRate;
}

/**
 * Rates of each handler present in both samples, from the difference of its counters. A
 * counter that went down (the handler was re-created under the same id) gives no rate.
 */
export function computeRates(before: Sample, after: Sample): Map<string, HandlerRates> {
  const seconds = (after.at - before.at) / 1000;
  const old = new Map(before.handlers.map((h) => [h.id, h]));
  const rates = new Map<string, HandlerRates>();
  if (!(seconds > 0)) return rates;
  const rate = (a: { frames: number; bytes: number }, b: { frames: number; bytes: number }) => ({
    framesPerSecond: (b.frames - a.frames) / seconds,
    bitsPerSecond: ((b.bytes - a.bytes) * 8) / seconds,
  });
  for (const h of after.handlers) {
    const o = old.get(h.id);
    if (!o || h.toPeer.frames < o.toPeer.frames || h.fromPeer.frames < o.fromPeer.frames) continue;
    rates.set(h.id, { toPeer: rate(o.toPeer, h.toPeer), fromPeer: rate(o.fromPeer, h.fromPeer) });
  }
  return rates;
}

/** 1234567 → "1.23M"; below 1000 one decimal under 10, else whole numbers. */
export function si(n: number): string {
  const units = ["", "k", "M", "G", "T"];
  let i = 0;
  while (Math.abs(n) >= 999.5 && i < units.length - 1) {
    n /= 1000;
    i++;
  }
  const digits = i === 0
    ? (Math.abs(n) < 10 && n !== Math.trunc(n) ? 1 : 0)
    : Math.abs(n) < 10
    ? 2
    : Math.abs(n) < 100
    ? 1
    : 0;
  return n.toFixed(digits) + units[i];
}

function rateText(r: DirectionRate | undefined): string {
  if (!r) return "-";
  const bits = si(r.bitsPerSecond);
  return `${si(r.framesPerSecond)} fr/s ${bits.replace(/(\d)([kMGT]?)$/, "$1 $2")}bit/s`;
}

/** The first MAC and how many more: a handler of many VMs stays one narrow cell. */
function macsCell(h: ListedHandler): string {
  return (h.macs[0] ?? "-") + (h.macs.length > 1 ? `+${h.macs.length - 1}` : "");
}

/** The default table's width: it fits a terminal of 100 columns. */
const NARROW_WIDTH = 100;

/**
 * The `list` and `watch` table; `rates` null when there was one sample only (the rate columns
 * then show counters). By default it fits 100 columns for addresses of up to 21 characters:
 * ID, role, device, peer, link, the first MAC, bits/s each way and the drops. `wide` shows
 * everything: keepalive RTT, every MAC, frames/bytes/drops each way, frames/s, and the DROPS
 * BY REASON, CONFLICTS and DIRECT (a Host's direct paths, by transport) columns when any
 * handler has some. Every cell is escaped: a server
 * (or a peer, through it) names devices and peers.
 */
export function handlerTable(
  handlers: ListedHandler[],
  rates: Map<string, HandlerRates> | null,
  wide = false,
): string {
  if (handlers.length === 0) return "no handlers";
  // The UDP path, when the handler's frames take it: up (its MTU, the loss the peer sees of
  // ours, the queue ours wait in on the way when it is a ms or more, the pace that keeps it
  // short), or down or lossy (frames by the link).
  const udpText = (h: ListedHandler) => {
    const udp = h.link.udp;
    if (!udp) return "";
    const loss = udp.peerLossPercent ? ` loss ${udp.peerLossPercent}%` : "";
    const queue = (udp.queueDelayMs ?? 0) >= 1 ? ` queue ${Math.round(udp.queueDelayMs!)} ms` : "";
    const paced = udp.pacedMbps ? ` paced ${udp.pacedMbps} Mbit/s` : "";
    return udp.state === "up"
      ? ` udp mtu ${udp.mtu}${loss}${queue}${paced}`
      : ` udp ${udp.state}${loss} (by the link)`;
  };
  const linkText = (h: ListedHandler) =>
    h.link.state + (h.link.tls ? "+tls" : "") + udpText(h) +
    (h.reconnects ? ` (${h.reconnects} reconnects)` : "");
  if (!wide) {
    const rows = [[
      "ID",
      "ROLE",
      "DEVICE",
      "PEER",
      "LINK",
      "MACS",
      rates ? "BIT/S TO/FROM" : "FRAMES TO/FROM",
      "DROPS",
    ]];
    for (const h of handlers) {
      const r = rates?.get(h.id);
      rows.push([
        h.id,
        h.role,
        h.device,
        h.peer,
        h.link.state + (h.link.tls ? "+tls" : ""),
        macsCell(h),
        rates
          ? (r ? `${si(r.toPeer.bitsPerSecond)}/${si(r.fromPeer.bitsPerSecond)}` : "-")
          : `${si(h.toPeer.frames)}/${si(h.fromPeer.frames)}`,
        si(h.toPeer.drops + h.fromPeer.drops),
      ]);
    }
    // Long device names and addresses are cut in the middle to fit (--wide shows them whole).
    return table(rows, { width: NARROW_WIDTH, shrink: [3, 2] });
  }
  const reasons = (h: ListedHandler) =>
    Object.entries(h.dropReasons ?? {}).filter(([, n]) => typeof n === "number" && n > 0);
  const showReasons = handlers.some((h) => reasons(h).length > 0);
  // Servers from before MAC conflicts were counted send none.
  const conflicts = (h: ListedHandler) => h.macConflicts ?? 0;
  const showConflicts = handlers.some((h) => conflicts(h) > 0);
  // A Host's remote MACs reached directly now, and how many of them by UDP.
  const direct = (h: ListedHandler) => (h.paths ?? []).filter((p) => p.via === "direct");
  const showDirect = handlers.some((h) => direct(h).length > 0);
  const directText = (h: ListedHandler) => {
    const paths = direct(h);
    if (paths.length === 0) return "-";
    const udp = paths.filter((p) => p.transport === "udp").length;
    return `${paths.length} (${udp} udp, ${paths.length - udp} tcp)`;
  };
  const rows = [[
    "ID",
    "ROLE",
    "DEVICE",
    "PEER",
    "LINK",
    "RTT",
    "MACS",
    "TO PEER frames/bytes/drops",
    "FROM PEER frames/bytes/drops",
    ...(showReasons ? ["DROPS BY REASON"] : []),
    ...(showConflicts ? ["CONFLICTS"] : []),
    ...(showDirect ? ["DIRECT"] : []),
    ...(rates ? ["TO PEER rate", "FROM PEER rate"] : []),
  ]];
  for (const h of handlers) {
    const r = rates?.get(h.id);
    rows.push([
      h.id,
      h.role,
      h.device,
      h.peer,
      linkText(h),
      h.link.rttMs === null || h.link.rttMs === undefined ? "-" : `${h.link.rttMs.toFixed(2)} ms`,
      h.macs.join(",") + (h.multicast ? " +multicast" : ""),
      `${h.toPeer.frames}/${h.toPeer.bytes}/${h.toPeer.drops}`,
      `${h.fromPeer.frames}/${h.fromPeer.bytes}/${h.fromPeer.drops}`,
      ...(showReasons ? [reasons(h).map(([k, n]) => `${k} ${n}`).join(", ") || "-"] : []),
      ...(showConflicts ? [String(conflicts(h))] : []),
      ...(showDirect ? [directText(h)] : []),
      ...(rates ? [rateText(r?.toPeer), rateText(r?.fromPeer)] : []),
    ]);
  }
  return table(rows);
}

/**
 * `watch`: the `list` table every --interval seconds over one connection, rates from the
 * previous sample. On a terminal it clears the screen and redraws; otherwise it prints one
 * timestamped snapshot per interval. Stops on Ctrl-C (or SIGTERM), or after --count snapshots.
 */
async function watch(args: string[]): Promise<number> {
  const parsed = flags(args, "watch");
  if (!parsed) return 0;
  const { values, positionals } = parsed;
  noPositionals(positionals, "client watch");
  const server = parseHostPort(required(values, "server", "client watch"), "--server");
  const interval = Number(values.interval);
  if (!(interval >= 0.1 && interval <= 3600)) {
    throw new VnetError(`bad --interval '${values.interval}': seconds from 0.1 to 3600`);
  }
  const count = values.count === undefined ? Infinity : Number(values.count);
  if (!(count >= 1) || !Number.isInteger(count) && count !== Infinity) {
    throw new VnetError(`bad --count '${values.count}': a whole number >= 1`);
  }
  const tty = Deno.stdout.isTerminal();
  const { promise: stopped, resolve: stop } = Promise.withResolvers<void>();
  // Windows has no SIGTERM listener.
  const signals: Deno.Signal[] = Deno.build.os === "windows" ? ["SIGINT"] : ["SIGINT", "SIGTERM"];
  const onSignal = () => stop();
  for (const s of signals) Deno.addSignalListener(s, onSignal);
  let running = true;
  stopped.then(() => running = false);

  const link = await connect(server, values);
  const encoder = new TextEncoder();
  const write = (text: string) => Deno.stdout.writeSync(encoder.encode(text));
  let previous: Sample | null = null;
  try {
    for (let n = 0; running && n < count; n++) {
      if (!link.isOpen) throw new VnetError(`${formatHostPort(server)}: connection closed`);
      const current = await sample(link, server, values);
      // The first snapshot has no rates yet, but the same columns: one header throughout.
      const rates = previous ? computeRates(previous, current) : new Map<string, HandlerRates>();
      previous = current;
      const header = `vnet watch ${formatHostPort(server)}, every ${interval} s  ` +
        new Date().toISOString().replace("T", " ").replace(/\.\d+Z$/, " UTC");
      const body = handlerTable(current.handlers, rates, values.wide === true);
      if (tty) {
        write(`\x1b[H\x1b[2J${header}   (Ctrl-C to stop)\n\n${body}\n`);
      } else {
        write(`${n > 0 ? "\n" : ""}${header}\n${body}\n`);
      }
      if (n + 1 < count) {
        let timer: ReturnType<typeof setTimeout> | undefined;
        await Promise.race([stopped, new Promise((r) => timer = setTimeout(r, interval * 1000))]);
        clearTimeout(timer);
      }
    }
  } finally {
    for (const s of signals) Deno.removeSignalListener(s, onSignal);
    link.close("done");
  }
  return 0;
}

async function close(args: string[]): Promise<number> {
  const parsed = flags(args, "close");
  if (!parsed) return 0;
  const { values, positionals } = parsed;
  const server = parseHostPort(required(values, "server", "client close"), "--server");
  if (positionals.length !== 1) {
    throw new VnetError("give exactly one handler ID to close (see 'vnet client list')");
  }
  const result = await ask(server, values, "close", { handler: positionals[0] });
  if (!result.peerClosed) {
    log.warn("the peer server could not be told; its end stays until it is closed there");
  }
  console.error(`closed ${visible(positionals[0])}`);
  return 0;
}

async function devices(args: string[]): Promise<number> {
  const parsed = flags(args, "devices");
  if (!parsed) return 0;
  const { values, positionals } = parsed;
  noPositionals(positionals, "client devices");
  const server = parseHostPort(required(values, "server", "client devices"), "--server");
  const found = (await ask(server, values, "devices")).devices as Record<string, unknown>[];
  if (values.json) {
    console.log(visibleJson(JSON.stringify(found, null, 2)));
    return 0;
  }
  const shown = values.all ? found : found.filter(canCarryHandler);
  const rows = [["NAME", "MAC", "STATE", "MTU", "ADDRESSES"]];
  for (const d of shown) {
    rows.push([
      String(d.name),
      String(d.mac ?? "-"),
      d.up !== true ? "down" : d.running === true ? "up" : "up, no carrier",
      String(d.mtu ?? "-"),
      Array.isArray(d.addresses) ? d.addresses.join(",") || "-" : "-",
    ]);
  }
  console.log(table(rows));
  const hidden = found.length - shown.length;
  if (hidden > 0) {
    console.error(`(${hidden} more that cannot carry a handler, e.g. loopback, any, nflog: --all)`);
  }
  return 0;
}

/**
 * An interface a handler can use: Ethernet-like, i.e. it has a MAC address. libpcap also
 * lists pseudo-devices (any, nflog, nfqueue, dbus-*, bluetooth-monitor, usbmon*), which have
 * none, and loopback, whose MAC is all zeros.
 */
export function canCarryHandler(d: Record<string, unknown>): boolean {
  return typeof d.mac === "string" && d.mac !== "00:00:00:00:00:00" && d.loopback !== true;
}

/**
 * Columns padded to the widest cell; every cell escaped (servers and peers name things). With
 * `fit`, the `shrink` columns (in that order) are cut in the middle, down to 8 characters,
 * until the table is at most `width` wide.
 */
function table(rows: string[][], fit?: { width: number; shrink: number[] }): string {
  const cells = rows.map((r) => r.map(visible));
  const widths = cells[0].map((_, i) => Math.max(...cells.map((r) => r[i].length)));
  const total = () => widths.reduce((a, b) => a + b, 0) + 2 * (widths.length - 1);
  for (const i of fit?.shrink ?? []) {
    const over = total() - fit!.width;
    if (over <= 0) break;
    widths[i] = Math.max(8, cells[0][i].length, widths[i] - over);
    for (const r of cells) r[i] = middleCut(r[i], widths[i]);
  }
  return cells.map((r) => r.map((c, i) => c.padEnd(widths[i])).join("  ").trimEnd()).join("\n");
}

/** `text` in at most `width` characters, its middle replaced by "~" if it is longer. */
function middleCut(text: string, width: number): string {
  if (text.length <= width) return text;
  const head = Math.ceil((width - 1) / 2);
  return text.slice(0, head) + "~" + text.slice(text.length - (width - 1 - head));
}
