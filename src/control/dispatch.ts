/**
 * Which request goes where: every request a server takes is checked (rpc.ts) and handed to
 * the module that serves it. Control links carry client requests, peer links peer requests;
 * nothing else is taken on either.
 */
import { VnetError } from "../errors.ts";
import { type Link } from "../link/link.ts";
import { COMMIT, VERSION } from "../version.ts";
import * as clients from "./client_requests.ts";
import * as peers from "./peer_requests.ts";
import * as rpc from "./rpc.ts";
import { type ServerContext } from "./server_context.ts";

type Body = Record<string, unknown>;

export function serveClient(ctx: ServerContext, op: string, body: Body): Promise<unknown> {
  switch (op) {
    case "create":
      return clients.create(ctx, rpc.parseCreate(body));
    case "close":
      return clients.close(ctx, rpc.parseHandlerRef(body).handler);
    case "migrate":
      return clients.migrate(ctx, rpc.parseMigrate(body));
    case "vxlan":
      return clients.vxlan(ctx, rpc.parseVxlan(body));
    case "list":
      return ctx.list().then((handlers) => ({ handlers }));
    case "devices":
      return Promise.resolve({ devices: ctx.devices() });
    case "version":
      return Promise.resolve({ version: VERSION, commit: COMMIT, time: Date.now() });
    case "udpProbe":
      return ctx.udp.probe();
    default:
      return Promise.reject(new VnetError(`unknown request '${op.slice(0, 40)}'`));
  }
}

export async function servePeer(
  ctx: ServerContext,
  op: string,
  body: Body,
  link: Link,
): Promise<unknown> {
  switch (op) {
    case "attach":
      return await peers.attach(ctx, rpc.parseAttach(body), link);
    case "detach":
      await peers.detach(ctx, rpc.parseDetach(body));
      return {};
    case "sync":
      return await peers.sync(ctx, rpc.parseSync(body));
    case "route":
      ctx.direct.route(rpc.parseRoute(body), link);
      return {};
    case "direct":
      await ctx.direct.direct(rpc.parseDirect(body), link);
      return {};
    case "unroute":
      ctx.direct.unroute(rpc.parseUnroute(body).mac, link);
      return {};
    case "udp":
      return await ctx.udp.answer(link, body);
    case "udpRekey":
      return await ctx.udp.answerRekey(link, body);
    default:
      throw new VnetError(`unknown peer request '${op.slice(0, 40)}'`);
  }
}
