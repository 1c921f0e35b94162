/**
 * What clients ask a server: create, close and migrate handlers (paper, section 4.2: a client
 * contacts either server, which opens its end and has the other server open the other).
 *
 * Creating a handler:
 *   1. The request is checked (rpc.ts) and the MACs against this server (mac_policy.ts).
 *   2. This server plays the role the client contacted (`via`), opens its own end (capture and
 *      injector), and dials the other server, or reuses the link it already has to it.
 *   3. It asks the other server to `attach` the other end, with a fresh binding key; the other
 *      server opens its end and binds it to the link. Both ends now forward frames, and the
 *      client gets the handler's id.
 */
import { formatHostPort } from "../addr.ts";
import { codeOf, ErrorCode, messageOf, VnetError } from "../errors.ts";
import { type Role } from "../dataplane/ports.ts";
import { type Link } from "../link/link.ts";
import { checkAllowedMacs, checkNotLive, checkNotOwnMacs } from "./mac_policy.ts";
import { macWarnings } from "./peer_requests.ts";
import { DIAL_TIMEOUT_MS } from "./peers.ts";
import { type Entry } from "./registry.ts";
import {
  type AttachRequest,
  call,
  type CreateRequest,
  type MigrateRequest,
  randomKey,
  type ResultOf,
  type VxlanRequest,
} from "./rpc.ts";
import { type ServerContext } from "./server_context.ts";

/**
 * Creates a handler (steps above). A refusal, here or by the other server, is logged here with
 * its reason as well as answered: the operator of this server sees why, not just the handler
 * closing.
 */
export async function create(ctx: ServerContext, req: CreateRequest): Promise<ResultOf<"create">> {
  try {
    return await createHandler(ctx, req);
  } catch (e) {
    ctx.log.warn("handler refused", {
      via: req.via,
      proxy: `${formatHostPort(req.proxy.addr)} ${req.proxy.dev}`,
      host: `${formatHostPort(req.host.addr)} ${req.host.dev}`,
      macs: req.macs.join(","),
      code: codeOf(e),
      reason: messageOf(e),
    });
    throw e;
  }
}

async function createHandler(
  ctx: ServerContext,
  req: CreateRequest,
): Promise<ResultOf<"create">> {
  const ownRole = req.via;
  const otherRole: Role = ownRole === "proxy" ? "host" : "proxy";
  const own = req[ownRole];
  const other = req[otherRole];
  checkNotOwnMacs(req.macs, ctx.devices());
  checkAllowedMacs(req.macs, ctx.allowMacs);
  if (ownRole === "proxy") await checkNotLive(own.dev, req.macs, ctx.allowLiveMac, ctx.log);
  const id = ctx.registry.newId();
  const dialTo = req.peer ?? other.addr;
  // Answer within the client's own timeout, so that it hears why, not just "no answer".
  const budget = req.timeoutMs ?? 20_000;
  const dialMs = Math.max(1_000, Math.min(DIAL_TIMEOUT_MS, budget - 2_000));
  const transport = req.transport ?? ctx.transport;
  const spec = {
    id,
    role: ownRole,
    device: own.dev,
    macs: req.macs,
    multicast: req.multicast,
    peer: formatHostPort(dialTo),
    transport,
  };
  const peer = ctx.peers.get(dialTo, req.ssh);
  const attach: AttachRequest = {
    id,
    role: otherRole,
    device: other.dev,
    macs: req.macs,
    multicast: req.multicast,
    peer: formatHostPort(own.addr),
    transport,
    origin: ctx.id,
    bind: randomKey(),
  };
  const entry = await ctx.registry.open(spec, { bind: attach.bind, dial: { peer, attach } });
  try {
    let link: Link;
    try {
      link = await peer.connect(dialMs);
    } catch (e) {
      if (isUnresolvable(e)) {
        throw new VnetError(
          `the ${ownRole} server cannot resolve ${dialTo.hostname} (the ${otherRole} ` +
            `server's name): check the name, or give an IP address`,
          { code: ErrorCode.Unreachable, cause: e },
        );
      }
      throw new VnetError(
        `the ${ownRole} server could not reach the ${otherRole} server: ${messageOf(e)}` +
          reachHint(codeOf(e), req, ownRole, otherRole),
        { code: codeOf(e) ?? ErrorCode.Unreachable, cause: e },
      );
    }
    if (ownRole === "host") ctx.checkDeviceNotCarryingLink(own.dev, link);
    if (transport === "udp" && !ctx.udp.has(link)) {
      throw new VnetError(
        `--transport udp: the ${ownRole} and ${otherRole} servers have no UDP path (UDP off ` +
          "on one of them, a link through ssh, or an older VNET; the log says which): use " +
          "--transport auto to fall back to the link",
        { code: ErrorCode.Refused },
      );
    }
    let answer: ResultOf<"attach">;
    try {
      answer = await call(link, "attach", attach, Math.max(1_000, budget - dialMs - 1_000));
    } catch (e) {
      throw new VnetError(`the ${otherRole} server refused: ${messageOf(e)}`, {
        code: codeOf(e) ?? ErrorCode.Refused,
        cause: e,
      });
    }
    const warnings = ownRole === "host"
      ? macWarnings(ctx, id, own.dev, req.macs)
      : peerWarnings(answer.warnings);
    entry.handler.attach(link);
    ctx.save();
    ctx.log.info("handler up", { handler: id, role: ownRole, peer: link.remote });
    ctx.events.add({ kind: "handler-up", remote: link.remote, handler: id });
    return warnings.length > 0 ? { id, warnings } : { id };
  } catch (e) {
    await ctx.remove(id);
    throw e;
  }
}

/** The other server's warnings for the client: a few short strings, whatever it sent. */
function peerWarnings(value: unknown): string[] {
  if (!Array.isArray(value)) return [];
  return value.filter((w): w is string => typeof w === "string").slice(0, 8)
    .map((w) => w.slice(0, 500));
}

/**
 * Did `e`, or what caused it, fail to resolve a host name (rather than to reach an address)?
 * Then advice on NAT and ssh would point the wrong way.
 */
export function isUnresolvable(e: unknown): boolean {
  const dns =
    /failed to lookup address|Name or service not known|No address associated|Temporary failure in name resolution|nodename nor servname/i;
  for (let c: unknown = e; c instanceof Error; c = c.cause) {
    if (dns.test(c.message)) return true;
  }
  return false;
}

/**
 * Advice on reaching the other server, only when it could not be reached: when TLS or the
 * secret refused it, or through ssh, the message itself says what is wrong.
 */
function reachHint(code: ErrorCode | undefined, req: CreateRequest, own: Role, other: Role) {
  if (req.ssh || code === ErrorCode.Auth || code === ErrorCode.Tls) return "";
  const nat = own === "proxy"
    ? "; if the host is behind NAT or a firewall, run the client with --via host so the host dials out"
    : "; if the proxy is behind NAT or a firewall, run the client with --via proxy";
  const peer = req.peer ? "" : `; if the ${own} server reaches it at another address than the ` +
    `client's, give that with --${other}-peer; if only SSH gets through, use --ssh GATEWAY`;
  return nat + peer;
}

export async function close(ctx: ServerContext, id: string): Promise<ResultOf<"close">> {
  const entry = ctx.registry.get(id);
  if (!entry) throw notFound(id);
  const link = entry.handler.link;
  let peerClosed = false;
  if (link?.isOpen) {
    try {
      await call(link, "detach", { handler: id, bind: entry.bind }, 5_000);
      peerClosed = true;
    } catch (e) {
      ctx.log.warn("peer did not close its end", { handler: id, error: messageOf(e) });
    }
  }
  // The peer still holds its end: it is told (sync) when the link is back.
  if (!peerClosed && entry.dial) ctx.owesSync(entry.dial.peer);
  await ctx.remove(id);
  ctx.events.add({ kind: "handler-down", remote: link?.remote ?? "", handler: id });
  return { closed: id, peerClosed };
}

function notFound(id: string): VnetError {
  return new VnetError(`no handler '${id}' on this server (see vnet client list)`, {
    code: ErrorCode.NotFound,
  });
}

/**
 * Moves a handler's Host end to another host (the VM migrated): the Proxy end, the id and
 * the MACs stay. The old host end stops forwarding before the new one starts, so frames are
 * never delivered twice; the gap between the two is returned.
 */
export async function migrate(
  ctx: ServerContext,
  req: MigrateRequest,
): Promise<ResultOf<"migrate">> {
  const id = req.handler;
  const entry = ctx.registry.get(id);
  if (!entry) throw notFound(id);
  const handler = entry.handler;
  if (handler.spec.role !== "proxy") {
    throw new VnetError(`handler ${id} is the host end here: send migrate to the Proxy's server`);
  }
  // 1. The old host end stops forwarding.
  const started = performance.now();
  const old = handler.link;
  const oldPeer = entry.dial?.peer;
  let detached = false;
  if (old?.isOpen) {
    await call(old, "detach", { handler: id, bind: entry.bind }, 5_000).then(
      () => detached = true,
      (e) => ctx.log.warn("old host did not close its end", { handler: id, error: messageOf(e) }),
    );
    handler.detach(old);
  }
  // 2. The new host end opens and is bound to this handler.
  const peer = ctx.peers.get(req.host.addr, req.ssh);
  const attach: AttachRequest = {
    id,
    role: "host",
    device: req.host.dev,
    macs: handler.spec.macs,
    multicast: handler.spec.multicast,
    peer: entry.dial?.attach.peer ?? ctx.address,
    transport: handler.spec.transport,
    origin: ctx.id,
    bind: entry.bind,
  };
  let link: Link;
  try {
    link = await peer.connect();
    await call(link, "attach", attach);
  } catch (e) {
    ctx.dropUnusedPeers();
    // Put the old host end back, so a failed migrate does not leave the handler dead.
    const back = await restoreOldHost(ctx, id, entry);
    throw new VnetError(
      `migrating ${id} to ${formatHostPort(req.host.addr)} failed: ${messageOf(e)}${back}`,
      { code: codeOf(e) ?? ErrorCode.Unreachable, cause: e },
    );
  }
  // Hosts that reached the VM directly at its old host must learn it again.
  ctx.direct.forget(handler.spec.macs);
  // An old host that could not be told keeps its end until it hears from us again.
  if (!detached && oldPeer && oldPeer !== peer) ctx.owesSync(oldPeer);
  entry.dial = { peer, attach };
  entry.origin = undefined;
  handler.spec.peer = formatHostPort(req.host.addr);
  handler.attach(link);
  const gapMs = Math.round(performance.now() - started);
  ctx.dropUnusedPeers();
  ctx.save();
  ctx.log.info("handler migrated", { handler: id, to: link.remote, gapMs });
  return { id, host: link.remote, gapMs };
}

/** After a failed migrate: re-attaches the handler's old host end; says how it went. */
async function restoreOldHost(ctx: ServerContext, id: string, entry: Entry): Promise<string> {
  if (!entry.dial || entry.handler.link?.isOpen) return "";
  try {
    const link = await entry.dial.peer.connect();
    await call(link, "attach", entry.dial.attach);
    entry.handler.attach(link);
    ctx.log.info("migrate failed; handler back on its old host", {
      handler: id,
      peer: link.remote,
    });
    return "; the handler stays on its old host";
  } catch (e) {
    ctx.log.warn("migrate failed and the old host end cannot be restored", {
      handler: id,
      error: messageOf(e),
    });
    return `; the old host end could not be restored either (${messageOf(e)})`;
  }
}

/**
 * Creates a handler whose far end is a VXLAN endpoint (issue 18): no VNET server there, so no
 * link and no peer; this server opens its end and tunnels to the endpoint (vxlan_tunnels.ts).
 */
export async function vxlan(ctx: ServerContext, req: VxlanRequest): Promise<ResultOf<"vxlan">> {
  checkNotOwnMacs(req.macs, ctx.devices());
  checkAllowedMacs(req.macs, ctx.allowMacs);
  if (req.role === "proxy") await checkNotLive(req.device, req.macs, ctx.allowLiveMac, ctx.log);
  const id = ctx.registry.newId();
  const endpoint = { host: req.remote.hostname, port: req.remote.port, vni: req.vni };
  const where = `vxlan ${formatHostPort(req.remote)} vni ${req.vni}`;
  const spec = { id, role: req.role, device: req.device, macs: req.macs, multicast: req.multicast };
  const entry = await ctx.registry.open({ ...spec, peer: where }, { bind: "", vxlan: endpoint });
  try {
    await entry.handler.attachVxlan(endpoint, ctx.vxlanBind.address, ctx.vxlanBind.port);
  } catch (e) {
    await ctx.remove(id);
    const { address, port } = ctx.vxlanBind;
    throw new VnetError(
      `cannot open the VXLAN port ${formatHostPort({ hostname: address, port })}: ` +
        `${messageOf(e)} (another vxlan device or program on that port? see --vxlan-port)`,
      { code: codeOf(e) ?? ErrorCode.System, cause: e },
    );
  }
  ctx.save();
  ctx.log.info("handler up", { handler: id, role: req.role, peer: where });
  ctx.events.add({ kind: "handler-up", remote: where, handler: id });
  const warnings = req.role === "host" ? macWarnings(ctx, id, req.device, req.macs) : [];
  return warnings.length > 0 ? { id, warnings } : { id };
}
