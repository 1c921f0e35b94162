/**
 * What a peer server asks this one: attach (open or rebind the other end of a handler),
 * detach (close it) and sync (after a reconnect: which of its handlers we should still hold).
 *
 * Least authority: a handler is bound to the two servers that made it by the key sent with
 * its first attach. Only a peer that presents that key may attach to, detach or re-sync it;
 * frames for it are taken only from the link it is attached to (server.ts).
 */
import { codeOf, ErrorCode, messageOf, VnetError } from "../errors.ts";
import { type Link } from "../link/link.ts";
import { checkAllowedMacs, checkNotLive, checkNotOwnMacs } from "./mac_policy.ts";
import { type AttachRequest, type DetachRequest, type ResultOf, type SyncRequest } from "./rpc.ts";
import { unseenMacs, unseenWarning } from "./mac_seen.ts";
import { type ServerContext } from "./server_context.ts";

function refused(message: string): VnetError {
  return new VnetError(message, { code: ErrorCode.Refused });
}

/**
 * Opens this server's end of a handler that the other server created. A refusal is logged here
 * with its reason as well as answered, so this server's operator sees why.
 */
export async function attach(
  ctx: ServerContext,
  req: AttachRequest,
  link: Link,
): Promise<ResultOf<"attach">> {
  try {
    return await attachHandler(ctx, req, link);
  } catch (e) {
    ctx.log.warn("handler refused", {
      handler: req.id,
      role: req.role,
      dev: req.device,
      macs: req.macs.join(","),
      peer: link.remote,
      code: codeOf(e),
      reason: messageOf(e),
    });
    throw e;
  }
}

async function attachHandler(
  ctx: ServerContext,
  req: AttachRequest,
  link: Link,
): Promise<ResultOf<"attach">> {
  if (req.origin === ctx.id) {
    throw refused("the far end is this very server: a handler joins two different servers");
  }
  const { origin, bind, ...spec } = req;
  const existing = ctx.registry.get(spec.id);
  if (existing) {
    if (existing.bind && existing.bind !== bind) {
      throw refused(`handler ${spec.id} belongs to another pair of servers`);
    }
    const same = existing.handler.spec;
    if (
      same.role === spec.role && same.device === spec.device &&
      same.multicast === spec.multicast && same.macs.join() === spec.macs.join()
    ) {
      // The dialler reconnected: same handler, new link.
      Object.assign(existing, { bind, origin, downSince: 0 });
      existing.handler.attach(link);
      ctx.log.info("handler re-attached", { handler: spec.id, peer: link.remote });
      return {};
    }
    await ctx.remove(spec.id);
  }
  checkNotOwnMacs(spec.macs, ctx.devices());
  checkAllowedMacs(spec.macs, ctx.allowMacs);
  if (spec.role === "host") ctx.checkDeviceNotCarryingLink(spec.device, link);
  await releaseOrphan(ctx, req);
  if (spec.role === "proxy") {
    await checkNotLive(spec.device, spec.macs, ctx.allowLiveMac, ctx.log);
  }
  const entry = await ctx.registry.open(spec, { bind, origin });
  entry.downSince = 0;
  entry.handler.attach(link);
  ctx.save();
  ctx.log.info("handler up", { handler: spec.id, role: spec.role, peer: link.remote });
  ctx.events.add({ kind: "handler-up", remote: link.remote, handler: spec.id });
  return spec.role === "host"
    ? { warnings: macWarnings(ctx, spec.id, spec.device, spec.macs) }
    : {};
}

/**
 * On the Host: the MACs no frame on the VMs' device has carried (a typo?), logged here and
 * told to the client. Two kernel tables, read at once (mac_seen.ts).
 */
export function macWarnings(
  ctx: ServerContext,
  handler: string,
  device: string,
  macs: readonly string[],
): string[] {
  const unseen = unseenMacs(device, macs);
  if (unseen.length === 0) return [];
  ctx.log.warn("MAC not seen on device", { handler, dev: device, macs: unseen.join(",") });
  return [unseenWarning(device, unseen)];
}

/**
 * A MAC held here by a handler that the other side no longer has is freed: one from the same
 * dialler (it would not ask for the MAC twice), or one whose link has been down since. A MAC
 * held by a live handler stays taken, and the attach is refused by the registry.
 */
async function releaseOrphan(ctx: ServerContext, req: AttachRequest): Promise<void> {
  const taken = ctx.registry.conflicting(req);
  if (!taken?.entry || taken.entry.dial) return;
  const sameOrigin = taken.entry.origin === req.origin;
  if (!sameOrigin && taken.entry.handler.link?.isOpen) return;
  const id = taken.entry.handler.spec.id;
  ctx.log.warn("closing orphaned handler: its MAC is asked for again", {
    handler: id,
    mac: taken.mac,
    by: req.id,
  });
  ctx.events.add({ kind: "orphan", remote: "", handler: id, reason: `MAC ${taken.mac} reused` });
  await ctx.remove(id);
}

export async function detach(ctx: ServerContext, req: DetachRequest): Promise<void> {
  const entry = ctx.registry.get(req.handler);
  if (!entry) return;
  if (entry.bind && entry.bind !== req.bind) {
    throw refused(`handler ${req.handler} belongs to another pair of servers`);
  }
  await ctx.remove(req.handler);
}

/** Closes the handlers dialled by `origin` that it no longer has. */
export async function sync(ctx: ServerContext, req: SyncRequest): Promise<{ closed: string[] }> {
  const keep = new Set(req.handlers);
  const closed: string[] = [];
  for (const [id, entry] of [...ctx.registry.entries()]) {
    if (entry.dial || entry.origin !== req.origin || keep.has(id)) continue;
    closed.push(id);
    await ctx.remove(id);
  }
  if (closed.length > 0) {
    ctx.log.warn("closed handlers the peer no longer has", { handlers: closed.join(",") });
    for (const id of closed) ctx.events.add({ kind: "orphan", remote: "", handler: id });
  }
  return { closed };
}

/** Accepting side: handlers down longer than `graceMs` are orphans; the dialler re-creates. */
export async function closeStale(ctx: ServerContext, graceMs: number): Promise<void> {
  const now = Date.now();
  for (const [id, entry] of [...ctx.registry.entries()]) {
    if (entry.dial || entry.downSince === 0 || now - entry.downSince < graceMs) continue;
    ctx.log.warn("closing handler: its peer has not come back", {
      handler: id,
      downForMs: now - entry.downSince,
    });
    ctx.events.add({ kind: "orphan", remote: "", handler: id, reason: "peer gone" });
    await ctx.remove(id).catch((e) => ctx.log.error("close failed", { error: messageOf(e) }));
  }
}
