/** `vnet client`: ask a server to create, list and close handlers. */
import { formatHostPort, type HostPort, parseHostPort } from "../addr.ts";
import { messageOf, VnetError } from "../errors.ts";
import { dial, type Link } from "../link.ts";
import { log } from "../log.ts";
import { parseMac } from "../mac.ts";
import { parseGateway } from "../ssh.ts";
import { type ListedHandler } from "../server.ts";
import { error, type Options, parseFlags, readTextFile, required, secretKey } from "./common.ts";

export const CLIENT_HELP = `
vnet client: set up and manage VNET handlers

Usage:
  vnet client [create] --proxy ADDR:PORT --proxy-dev DEV --host ADDR:PORT --host-dev DEV \\
              --mac MAC [--mac MAC ...] [--multicast] [--via proxy|host] --secret-file FILE
  vnet client list    --server ADDR:PORT --secret-file FILE [--json]
  vnet client close   --server ADDR:PORT --secret-file FILE ID
  vnet client devices --server ADDR:PORT --secret-file FILE [--json]
  vnet client migrate --server ADDR:PORT --secret-file FILE ID --host ADDR:PORT --host-dev DEV

create: the client contacts one server (--via, default proxy); that server opens its end and
dials the other one, which opens the other end. So the side behind NAT should be the one the
client contacts: with the Host behind NAT, use --via host and the Host dials out to the Proxy,
which then needs one reachable port. Prints the handler's id on stdout once frames can flow.

Options for create:
  --proxy ADDR:PORT     the Proxy's server (on the LAN the VMs should appear on)
  --proxy-dev DEV       the Proxy's LAN interface, e.g. eth0
  --host ADDR:PORT      the Host's server (where the VMs run)
  --host-dev DEV        the VMs' interface on the Host (their tap/veth/bridge), e.g. vnet0
  --mac MAC             a VM's MAC address; repeat for several VMs on one handler
  --multicast           also carry multicast to the VMs (IPv6 neighbour discovery needs it)
  --via proxy|host      which server to contact; it dials the other (default proxy)
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
  --timeout SECONDS     give up after this long (default 20)

migrate: moves a handler's Host end to another host (the VM moved there) while the Proxy end,
the id and the MACs stay; send it to the Proxy's server. The old host stops forwarding before
the new one starts. Prints the gap in ms on stderr.

Common options:
  --secret-file FILE    the shared secret (mode 0600); or set VNET_SECRET
  --tls-ca FILE         talk TLS to the server and verify it against this CA
  --json                machine-readable output (list, devices)
  -h, --help            show this help
`;

const connectionOptions = {
  "secret-file": { type: "string" },
  "tls-ca": { type: "string" },
  timeout: { type: "string", default: "20" },
} as const satisfies Options;

export async function clientCommand(args: string[]): Promise<void> {
  const sub = ["create", "list", "close", "devices", "migrate"].includes(args[0])
    ? args[0]
    : "create";
  const rest = sub === args[0] ? args.slice(1) : args;
  switch (sub) {
    case "create":
      return await create(rest);
    case "list":
      return await list(rest);
    case "close":
      return await close(rest);
    case "devices":
      return await devices(rest);
    case "migrate":
      return await migrate(rest);
  }
}

function timeoutMs(values: Record<string, unknown>): number {
  const seconds = Number(values.timeout);
  if (!(seconds > 0)) error(`bad --timeout '${values.timeout}': a number of seconds > 0`);
  return seconds * 1000;
}

/** Opens an authenticated control link to a server, with one clear error if it cannot. */
async function connect(addr: HostPort, values: Record<string, unknown>): Promise<Link> {
  const key = await secretKey(values["secret-file"] as string | undefined);
  const ca = values["tls-ca"] as string | undefined;
  return await dial(addr, {
    key,
    kind: "control",
    tlsCa: ca ? readTextFile(ca, "TLS CA") : undefined,
    timeoutMs: Math.min(timeoutMs(values), 10_000),
    log,
    events: {
      onFrame: () => {},
      onRequest: () => Promise.reject(new VnetError("clients take no requests")),
      onClose: () => {},
    },
  });
}

async function ask(
  addr: HostPort,
  values: Record<string, unknown>,
  op: string,
  body: Record<string, unknown> = {},
): Promise<Record<string, unknown>> {
  const link = await connect(addr, values);
  try {
    return await link.request(op, body, timeoutMs(values));
  } catch (e) {
    throw new VnetError(`${formatHostPort(addr)}: ${messageOf(e)}`, { cause: e });
  } finally {
    link.close("done");
  }
}

async function create(args: string[]): Promise<void> {
  const { values, positionals } = parseFlags(
    args,
    {
      ...connectionOptions,
      proxy: { type: "string" },
      "proxy-dev": { type: "string" },
      host: { type: "string" },
      "host-dev": { type: "string" },
      mac: { type: "string", multiple: true },
      multicast: { type: "boolean" },
      via: { type: "string", default: "proxy" },
      "proxy-peer": { type: "string" },
      "host-peer": { type: "string" },
      ...sshOptions,
    },
    CLIENT_HELP,
    "client",
  );
  if (positionals.length > 0) {
    error(`unexpected argument '${positionals[0]}' (see 'vnet client --help')`);
  }
  const proxy = parseHostPort(required(values, "proxy", "client"), "--proxy");
  const host = parseHostPort(required(values, "host", "client"), "--host");
  const proxyDev = required(values, "proxy-dev", "client");
  const hostDev = required(values, "host-dev", "client");
  const macs = (values.mac ?? []).map(parseMac);
  if (macs.length === 0) error("missing --mac: give the MAC address of at least one VM");
  const via = values.via;
  if (via !== "proxy" && via !== "host") error(`bad --via '${via}': proxy or host`);
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
    ssh: sshRequest(values),
  });
  console.log(String(result.id));
}

const sshOptions = {
  ssh: { type: "string" },
  "ssh-identity": { type: "string" },
  "ssh-known-hosts": { type: "string" },
} as const satisfies Options;

function sshRequest(values: Record<string, unknown>) {
  const gateway = values.ssh as string | undefined;
  if (!gateway) {
    if (values["ssh-identity"] || values["ssh-known-hosts"]) {
      error("--ssh-identity and --ssh-known-hosts go with --ssh GATEWAY");
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

async function migrate(args: string[]): Promise<void> {
  const { values, positionals } = parseFlags(
    args,
    {
      ...connectionOptions,
      server: { type: "string" },
      host: { type: "string" },
      "host-dev": { type: "string" },
      ...sshOptions,
    },
    CLIENT_HELP,
    "client migrate",
  );
  const server = parseHostPort(required(values, "server", "client migrate"), "--server");
  const host = parseHostPort(required(values, "host", "client migrate"), "--host");
  const dev = required(values, "host-dev", "client migrate");
  if (positionals.length !== 1) {
    error("give exactly one handler ID to migrate (see 'vnet client list')");
  }
  const result = await ask(server, values, "migrate", {
    handler: positionals[0],
    host: { addr: host, dev },
    ssh: sshRequest(values),
  });
  console.error(`migrated ${positionals[0]} to ${result.host} (gap ${result.gapMs} ms)`);
  console.log(positionals[0]);
}

async function list(args: string[]): Promise<void> {
  const { values } = parseFlags(
    args,
    {
      ...connectionOptions,
      server: { type: "string" },
      json: { type: "boolean" },
    },
    CLIENT_HELP,
    "client list",
  );
  const server = parseHostPort(required(values, "server", "client list"), "--server");
  const handlers = (await ask(server, values, "list")).handlers as ListedHandler[];
  if (values.json) {
    console.log(JSON.stringify(handlers, null, 2));
    return;
  }
  if (handlers.length === 0) {
    console.log("no handlers");
    return;
  }
  const rows = [[
    "ID",
    "ROLE",
    "DEVICE",
    "PEER",
    "LINK",
    "MACS",
    "TO PEER frames/bytes/drops",
    "FROM PEER frames/bytes/drops",
  ]];
  for (const h of handlers) {
    rows.push([
      h.id,
      h.role,
      h.device,
      h.peer,
      h.link.state + (h.link.tls ? "+tls" : "") +
      (h.reconnects ? ` (${h.reconnects} reconnects)` : ""),
      h.macs.join(",") + (h.multicast ? " +multicast" : ""),
      `${h.toPeer.frames}/${h.toPeer.bytes}/${h.toPeer.drops}`,
      `${h.fromPeer.frames}/${h.fromPeer.bytes}/${h.fromPeer.drops}`,
    ]);
  }
  console.log(table(rows));
}

async function close(args: string[]): Promise<void> {
  const { values, positionals } = parseFlags(
    args,
    {
      ...connectionOptions,
      server: { type: "string" },
    },
    CLIENT_HELP,
    "client close",
  );
  const server = parseHostPort(required(values, "server", "client close"), "--server");
  if (positionals.length !== 1) {
    error("give exactly one handler ID to close (see 'vnet client list')");
  }
  const result = await ask(server, values, "close", { handler: positionals[0] });
  if (!result.peerClosed) {
    log.warn("the peer server could not be told; its end stays until it is closed there");
  }
  console.error(`closed ${positionals[0]}`);
}

async function devices(args: string[]): Promise<void> {
  const { values } = parseFlags(
    args,
    {
      ...connectionOptions,
      server: { type: "string" },
      json: { type: "boolean" },
    },
    CLIENT_HELP,
    "client devices",
  );
  const server = parseHostPort(required(values, "server", "client devices"), "--server");
  const found = (await ask(server, values, "devices")).devices as Record<string, unknown>[];
  if (values.json) {
    console.log(JSON.stringify(found, null, 2));
    return;
  }
  const rows = [["NAME", "MAC", "MTU", "FLAGS", "ADDRESSES"]];
  for (const d of found) {
    rows.push([
      String(d.name),
      String(d.mac ?? "-"),
      String(d.mtu ?? "-"),
      Object.entries(d).filter(([, v]) => v === true).map(([k]) => k).join(",") || "-",
      Array.isArray(d.addresses) ? d.addresses.join(",") || "-" : "-",
    ]);
  }
  console.log(table(rows));
}

function table(rows: string[][]): string {
  const widths = rows[0].map((_, i) => Math.max(...rows.map((r) => r[i].length)));
  return rows.map((r) => r.map((c, i) => c.padEnd(widths[i])).join("  ").trimEnd()).join("\n");
}
