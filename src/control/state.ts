/**
 * The state file (`vnet server --state FILE`): the handlers a server holds, so that a restart
 * restores them. Written atomically (temporary file, fsync, rename), so a crash leaves either
 * the old file or the new one. A file that cannot be read back is moved aside and reported,
 * never silently dropped.
 */
import { type VxlanEndpoint } from "../dataplane/data_path.ts";
import { type HostPort } from "../addr.ts";
import { type HandlerSpec } from "../dataplane/handler.ts";
import { type Logger } from "../log.ts";
import { type SshOptions } from "../link/ssh.ts";
import { messageOf } from "../errors.ts";
import { type Peer, type Peers } from "./peers.ts";
import { type Registry } from "./registry.ts";
import { type AttachRequest, randomKey } from "./rpc.ts";

/** Version 2 adds the server's id and each handler's binding key; version 1 is still read. */
export const STATE_VERSION = 2;

interface SavedHandler {
  spec: HandlerSpec;
  /** The handler's binding key (rpc.ts); absent in version 1 files. */
  bind?: string;
  /** On the accepting side: the id of the server that dialled. */
  origin?: string;
  /** Present on the side that dials: where, how, and what to ask the peer to attach. */
  dial?: { addr: HostPort; ssh?: SshOptions; attach: AttachRequest };
  /** A handler whose far end is a VXLAN endpoint: that endpoint. */
  vxlan?: VxlanEndpoint;
}

interface SavedState {
  /** This server's id, kept across restarts so that its peers recognise it. */
  serverId?: string;
  handlers: SavedHandler[];
  /** Peers that hold ends we closed while they were away: they are told on reconnect. */
  owesSync?: { addr: HostPort; ssh?: SshOptions }[];
}

function saveState(path: string, state: SavedState): void {
  const tmp = `${path}.tmp-${Deno.pid}`;
  const data = new TextEncoder().encode(
    JSON.stringify({ version: STATE_VERSION, ...state }, null, 2) + "\n",
  );
  const file = Deno.openSync(tmp, { write: true, create: true, truncate: true, mode: 0o600 });
  try {
    let off = 0;
    while (off < data.length) off += file.writeSync(data.subarray(off));
    file.syncSync();
  } finally {
    file.close();
  }
  Deno.renameSync(tmp, path);
}

/** Reads saved handlers; a missing file is an empty state, a bad one is kept aside. */
function loadState(path: string, log: Logger): SavedState {
  let text: string;
  try {
    text = Deno.readTextFileSync(path);
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return { handlers: [] };
    throw e;
  }
  try {
    const parsed = JSON.parse(text);
    if (![1, STATE_VERSION].includes(parsed?.version) || !Array.isArray(parsed.handlers)) {
      throw new Error(`not a version ${STATE_VERSION} vnet state file`);
    }
    for (const h of parsed.handlers) {
      if (typeof h?.spec?.id !== "string" || !Array.isArray(h.spec.macs)) {
        throw new Error("a handler entry lacks its id or MACs");
      }
    }
    const serverId = typeof parsed.serverId === "string" ? parsed.serverId : undefined;
    const owesSync = Array.isArray(parsed.owesSync) ? parsed.owesSync : [];
    return { serverId, handlers: parsed.handlers, owesSync };
  } catch (e) {
    const aside = `${path}.corrupt-${new Date().toISOString().replace(/[:.]/g, "-")}`;
    Deno.renameSync(path, aside);
    log.error("state file is corrupt; kept aside, starting with no handlers", {
      path,
      keptAs: aside,
      error: (e as Error).message,
    });
    return { handlers: [] };
  }
}

/** A server's --state file: what it writes after every change, and reads when it starts. */
export class StateFile {
  constructor(
    private readonly path: string | undefined,
    private readonly registry: Registry,
    private readonly peers: Peers,
    private readonly log: Logger,
  ) {}

  /** Writes every handler, and the peers owed a sync, if there is a file. */
  save(serverId: string, owesSync: Set<Peer>): void {
    if (!this.path) return;
    const handlers = [...this.registry.values()].map((e) => ({
      spec: e.handler.spec,
      bind: e.bind,
      origin: e.origin,
      dial: e.dial && { addr: e.dial.peer.addr, ssh: e.dial.peer.ssh, attach: e.dial.attach },
      vxlan: e.handler.vxlan ?? undefined,
    }));
    const owed = [...owesSync].map((p) => ({ addr: p.addr, ssh: p.ssh }));
    try {
      saveState(this.path, { serverId, handlers, owesSync: owed });
    } catch (e) {
      this.log.error("cannot write the state file", { path: this.path, error: messageOf(e) });
    }
  }

  /**
   * Reopens the handlers of the file: each end opens (degraded if its interface is missing).
   * Returns the server id to keep, the peers to reconnect to (the handlers this server dialled
   * are re-attached as they answer), and those owed a sync; null without a file.
   */
  async restore(
    newId: string,
    vxlanBind: { address: string; port: number },
  ): Promise<{ serverId: string; count: number; reconnect: Set<Peer>; owesSync: Peer[] } | null> {
    if (!this.path) return null;
    const saved = loadState(this.path, this.log);
    // The id peers know this server by; a version 1 file has none, so the fresh one it is.
    const serverId = saved.serverId ?? newId;
    const reconnect = new Set<Peer>();
    for (const s of saved.handlers) {
      try {
        // Version 1 files have no keys: the dialler makes one, the acceptor takes the next.
        const bind = s.bind ?? (s.dial ? randomKey() : "");
        const peer = s.dial && this.peers.get(s.dial.addr, s.dial.ssh);
        const attach = peer && { ...s.dial!.attach, bind, origin: serverId };
        const vxlan = isVxlanEndpoint(s.vxlan) ? s.vxlan : undefined;
        const entry = await this.registry.open(s.spec, {
          bind,
          origin: s.origin,
          dial: peer && { peer, attach: attach! },
          vxlan,
        }, true);
        if (vxlan) await entry.handler.attachVxlan(vxlan, vxlanBind.address, vxlanBind.port);
        if (peer) reconnect.add(peer);
      } catch (e) {
        this.log.error("cannot restore handler", { handler: s.spec.id, error: messageOf(e) });
      }
    }
    if (saved.handlers.length > 0) {
      this.log.info("handlers restored", { count: this.registry.size, path: this.path });
    }
    const owesSync = (saved.owesSync ?? []).map(({ addr, ssh }) => this.peers.get(addr, ssh));
    for (const peer of owesSync) reconnect.add(peer);
    return { serverId, count: saved.handlers.length, reconnect, owesSync };
  }
}

function isVxlanEndpoint(v: unknown): v is VxlanEndpoint {
  const e = v as VxlanEndpoint | undefined;
  return typeof e?.host === "string" && Number.isInteger(e.port) && Number.isInteger(e.vni);
}
