/**
 * Direct Host↔Host paths (issue 11): VM↔VM traffic between two sites need not trombone
 * through the user's site.
 *
 *   1. The Proxy switches a unicast frame from one handler to another whose peers differ
 *      (fabric.ts): VMs behind two Hosts are talking.
 *   2. It tells both Hosts, over the links their handlers are attached to, with one fresh
 *      token (`route`): the sender's Host is to dial, the other to expect it.
 *   3. The sender's Host dials the other Host's server (same secret, same TLS rules) and
 *      presents the token (`direct`); the other Host checks it against what its Proxy said.
 *   4. Each installs a route for the far VM's MAC over that link (fabric.ts), and lets frames
 *      for its own handler in from it. VM↔VM unicast now goes direct; everything else, and
 *      anything while no direct link is up, goes through the Proxy as before.
 *   5. A direct link that fails (keepalive of 1 s, so within ~3 s) takes its routes with it:
 *      traffic falls back to the Proxy. Routes idle for ROUTE_AGE_MS are forgotten; a VM that
 *      moves is unrouted by the Proxy and learned again from its next frame.
 *
 * Frames take exactly one path at a time, so nothing is delivered twice. `--no-direct` on the
 * Proxy stops the announcements, on a Host refuses them.
 *
 * A direct path belongs to its owner (issue 19). Any holder of the secret can attach a
 * host-role handler and so play "the Proxy" of that handler; what it offers must not reach
 * further than what it carries:
 *   - a Host takes a `route` only over the link of the named host handler, only for a MAC that
 *     came in as a source over that very link (the Proxy switched its traffic to us), and
 *     never for a MAC its own handlers carry;
 *   - the route steers only the handlers on that Proxy link (fabric.ts keeps paths per link),
 *     never the server's other VMs;
 *   - a Proxy names only the server of a live handler whose traffic it has just switched;
 *   - offers in flight, tokens kept and dials are bounded per link and per server (below);
 *   - a refused offer is logged at WARN with the peer and the MAC (at most once a second per
 *     link, with the count of those not logged).
 */
import { type HostPort, parseHostPort } from "../addr.ts";
import { ErrorCode, messageOf, VnetError } from "../errors.ts";
import { type HandlerRef } from "../dataplane/data_path.ts";
import { mac48, macBytes } from "../dataplane/mac.ts";
import { handlerNumber } from "../dataplane/handler.ts";
import { type Link } from "../link/link.ts";
import { type Logger } from "../log.ts";
import { type Registry } from "./registry.ts";
import { call, type DirectRequest, randomKey, type RouteRequest } from "./rpc.ts";

/** A pair announced again only after this long (a route ages out, or a Host restarted). */
const ANNOUNCE_EVERY_MS = 30_000;
/** A Host answers a `route` at once; one that does not within this frees its slot. */
const ANNOUNCE_TIMEOUT_MS = 5_000;
/** Proxy: announcements in flight on one link; more wait for the pair's next switched frame. */
const MAX_ANNOUNCING = 8;
/** Proxy: announcements in flight over all links. */
const MAX_ANNOUNCING_TOTAL = 256;
/** Proxy: pairs remembered as announced (each a few dozen bytes); swept every SWEEP_MS. */
const MAX_ANNOUNCED_PAIRS = 65_536;
/** How long a Host waits for the Proxy's word on a token another Host presents. */
const TOKEN_WAIT_MS = 3_000;
/** A token is presented within TOKEN_WAIT_MS plus one dial (3 s), or never. */
const TOKEN_TTL_MS = 10_000;
/** Host: tokens kept from one Proxy link, and from all (a legitimate Proxy needs a few). */
const MAX_TOKENS_PER_LINK = 32;
const MAX_TOKENS = 1024;
/** Host: dials in flight for one Proxy link, and direct links dialled in all. */
const MAX_DIALS_PER_LINK = 4;
const MAX_DIRECT_LINKS = 64;
const SWEEP_MS = 30_000;
/** Direct links notice a dead path within 3 keepalives. */
const DIRECT_KEEPALIVE_MS = 1_000;
/** Refused offers are logged at most this often per link (a flood must not flood the log). */
const WARN_EVERY_MS = 1_000;

interface DirectHooks {
  /** Opens a peer link to another Host, and agrees its UDP path where it can. */
  dial(addr: HostPort, keepaliveMs: number, timeoutMs: number): Promise<Link>;
}

interface Expected {
  /** The Proxy link the offer came over: the route is for its handlers only. */
  via: Link;
  local: string;
  remote: string;
  mac: string;
  /** The dialling Host's server, `ADDR:PORT`, for `list`. */
  peer: string;
  until: number;
}

export class DirectPaths {
  /** Proxy: when each pair of MACs (lower, higher) was announced; which links know each MAC. */
  readonly #announced = new Map<number, Map<number, number>>();
  #pairs = 0;
  readonly #told = new Map<string, Set<Link>>();
  /** Proxy: announcements not answered yet, per link and in all (see MAX_ANNOUNCING). */
  readonly #announcing = new Map<Link, number>();
  #announcingTotal = 0;
  /** Host: tokens the Proxy gave us to expect, and how many came over each link. */
  readonly #expected = new Map<string, Expected>();
  readonly #tokensOn = new Map<Link, number>();
  /** Host: direct links we dialled, by address; dials in flight per Proxy link. */
  readonly #dialled = new Map<string, Promise<Link>>();
  readonly #dialsOn = new Map<Link, number>();
  /** When a refusal was last logged for a link, and how many were not logged since. */
  readonly #warned = new WeakMap<Link, { at: number; quiet: number }>();
  readonly #sweep: ReturnType<typeof setInterval>;

  constructor(
    private readonly registry: Registry,
    private readonly enabled: boolean,
    private readonly hooks: DirectHooks,
    private readonly log: Logger,
  ) {
    registry.dataPath.onSwitched = (from, to, src, dst) => {
      const a = registry.byNumber(from), b = registry.byNumber(to);
      if (a && b) this.#switched(a, b, src, dst);
    };
    this.#sweep = setInterval(
      () =>
        this.#ageRoutes().catch((e) =>
          this.log.error("ageing direct paths failed", { error: messageOf(e) })
        ),
      SWEEP_MS,
    );
  }

  // --- the Proxy's side ----------------------------------------------------------------------

  /**
   * A unicast frame was switched between handlers of one device whose links differ (fabric.ts):
   * the source `src` is one of `from`'s MACs (its Host may speak only as its VMs), the
   * destination `dst` one of `to`'s. Both Hosts hear of it, and only of it. The forwarder
   * reports a pair at most once a second, not per frame.
   */
  #switched(a: HandlerRef, b: HandlerRef, src: string, dst: string): void {
    const from = a, to = b;
    if (!this.enabled || !from.link?.isOpen || !to.link?.isOpen) return;
    if (this.#busy(from.link) || this.#busy(to.link)) return;
    if (this.#announcingTotal + 2 > MAX_ANNOUNCING_TOTAL) return;
    const s = mac48(macBytes(src), 0), d = mac48(macBytes(dst), 0);
    const [lo, hi] = s < d ? [s, d] : [d, s];
    let his = this.#announced.get(lo);
    const now = Date.now();
    const last = his?.get(hi);
    if (last !== undefined && now - last < ANNOUNCE_EVERY_MS) return;
    if (last === undefined) {
      if (this.#pairs >= MAX_ANNOUNCED_PAIRS) return;
      this.#pairs++;
    }
    if (!his) this.#announced.set(lo, his = new Map());
    his.set(hi, now);
    const token = randomKey();
    const tell = (h: HandlerRef, mac: string, far: HandlerRef, dial: boolean) => {
      const link = h.link!;
      let told = this.#told.get(mac);
      if (!told) this.#told.set(mac, told = new Set());
      told.add(link);
      const req = {
        handler: h.spec.id,
        mac,
        peer: far.spec.peer,
        remote: far.spec.id,
        token,
        dial,
      };
      this.#announcing.set(link, (this.#announcing.get(link) ?? 0) + 1);
      this.#announcingTotal++;
      call(link, "route", req, ANNOUNCE_TIMEOUT_MS)
        .catch((e) =>
          this.log.debug("direct path not taken", { handler: h.spec.id, mac, error: messageOf(e) })
        )
        .finally(() => {
          this.#announcingTotal--;
          const n = (this.#announcing.get(link) ?? 1) - 1;
          if (n > 0) this.#announcing.set(link, n);
          else this.#announcing.delete(link);
        });
    };
    // The far end first, so that it expects the token before the dialler presents it.
    tell(b, src, a, false);
    tell(a, dst, b, true);
  }

  #busy(link: Link): boolean {
    return (this.#announcing.get(link) ?? 0) >= MAX_ANNOUNCING;
  }

  /** A MAC moved or went away: the Hosts that route to it directly forget it. */
  forget(macs: readonly string[]): void {
    for (const mac of macs) {
      for (const link of this.#told.get(mac) ?? []) {
        if (link.isOpen) call(link, "unroute", { mac }).catch(() => {});
      }
      this.#told.delete(mac);
      const n = mac48(macBytes(mac), 0);
      this.#pairs -= this.#announced.get(n)?.size ?? 0;
      this.#announced.delete(n);
      for (const his of this.#announced.values()) if (his.delete(n)) this.#pairs--;
    }
  }

  // --- a Host's side -------------------------------------------------------------------------

  /** The Proxy on `link` says: the VMs of `req.handler` talk to `req.mac`, behind `req.peer`. */
  route(req: RouteRequest, link: Link): void {
    if (!this.enabled) {
      throw new VnetError("direct paths are off on this server (--no-direct)", {
        code: ErrorCode.Refused,
      });
    }
    const entry = this.registry.get(req.handler);
    if (!entry || entry.handler.link !== link || entry.handler.spec.role !== "host") {
      throw this.#refuse(link, req.mac, `no host handler '${req.handler}' on this link`);
    }
    const fabric = this.registry.fabric;
    if (fabric.carries(req.mac)) {
      throw this.#refuse(link, req.mac, "it is a VM of this server");
    }
    if (!fabric.learned(link, req.mac)) {
      throw this.#refuse(link, req.mac, "no frame from it came over this link");
    }
    const local = entry.handler;
    if (!req.dial) {
      const mine = this.#tokensOn.get(link) ?? 0;
      if (mine >= MAX_TOKENS_PER_LINK || this.#expected.size >= MAX_TOKENS) {
        throw this.#refuse(link, req.mac, "too many direct paths offered at once");
      }
      if (this.#expected.has(req.token)) {
        throw this.#refuse(link, req.mac, "that token is already in use");
      }
      this.#expected.set(req.token, {
        via: link,
        local: req.handler,
        remote: req.remote,
        mac: req.mac,
        peer: req.peer,
        until: Date.now() + TOKEN_TTL_MS,
      });
      this.#tokensOn.set(link, mine + 1);
      return;
    }
    const addr = parseHostPort(req.peer, "peer");
    if (!dialable(addr.hostname)) {
      throw this.#refuse(link, req.mac, `'${req.peer}' is not another Host's address`);
    }
    const key = `${addr.hostname}:${addr.port}`;
    const dials = this.#dialsOn.get(link) ?? 0;
    if (dials >= MAX_DIALS_PER_LINK) {
      throw this.#refuse(link, req.mac, "too many direct paths being dialled");
    }
    if (!this.#dialled.has(key) && this.#dialled.size >= MAX_DIRECT_LINKS) {
      throw this.#refuse(link, req.mac, `${MAX_DIRECT_LINKS} direct links already`);
    }
    this.#dialsOn.set(link, dials + 1);
    // Answered at once: the Proxy must not wait on another Host (and a slow one must not
    // fill the Proxy's link with requests in flight). Failing here only means no direct path.
    this.#linkTo(addr)
      .then(async (direct) => {
        await call(direct, "direct", { token: req.token, handler: req.remote });
        this.#install(link, direct, req.peer, req.mac, handlerNumber(req.remote), local);
      })
      .catch((e) =>
        this.log.info("no direct path; staying with the proxy", {
          mac: req.mac,
          peer: req.peer,
          error: messageOf(e),
        })
      )
      .finally(() => {
        const n = (this.#dialsOn.get(link) ?? 1) - 1;
        if (n > 0) this.#dialsOn.set(link, n);
        else this.#dialsOn.delete(link);
      });
  }

  /** Another Host presents a token (step 3); `link` is the direct link it dialled. */
  async direct(req: DirectRequest, link: Link): Promise<void> {
    const deadline = Date.now() + TOKEN_WAIT_MS;
    let expected = this.#expected.get(req.token);
    while (!expected && Date.now() < deadline && link.isOpen) {
      await new Promise((r) => setTimeout(r, 50));
      expected = this.#expected.get(req.token);
    }
    const entry = expected && this.registry.get(expected.local);
    if (
      !expected || expected.local !== req.handler || !entry || expected.until < Date.now() ||
      entry.handler.link !== expected.via || expected.via === link
    ) {
      throw this.#refuse(
        link,
        expected?.mac ?? "unknown",
        "no direct path was announced with that token",
      );
    }
    this.#dropToken(req.token, expected);
    this.#install(
      expected.via,
      link,
      expected.peer,
      expected.mac,
      handlerNumber(expected.remote),
      entry.handler,
    );
  }

  /** The Proxy on `link` says `mac` moved: back through it. */
  unroute(mac: string, link: Link): void {
    if (this.registry.fabric.removeRoute(link, mac)) {
      this.log.info("direct path forgotten", { mac, via: link.remote });
    }
  }

  #install(via: Link, link: Link, peer: string, mac: string, number: number, local: HandlerRef) {
    if (!this.registry.fabric.addRoute(via, mac, link, peer, number)) {
      this.log.info("no direct path: the MAC was forgotten meanwhile", { mac, via: peer });
      return;
    }
    // Either end notices a dead direct path within ~3 s, and traffic falls back.
    link.tune({ keepaliveMs: DIRECT_KEEPALIVE_MS, stallMs: 3 * DIRECT_KEEPALIVE_MS });
    const path = this.registry.dataPath;
    path.send({ op: "allow", link: link.number, handler: local.number });
    // Frames take the direct link's UDP path too while it works both ways, as on a Proxy link.
    if ((local.spec.transport ?? "tcp") === "tcp") {
      this.log.info("direct path up", { mac, via: peer, handler: local.spec.id, udp: "no" });
      return;
    }
    path.udpCarry(link, [local.number, number]).then(
      (udp) => this.log.info("direct path up", { mac, via: peer, handler: local.spec.id, udp }),
      (e) => this.log.warn("direct path up, not by UDP", { mac, via: peer, error: messageOf(e) }),
    );
  }

  /** Logs a refused offer (rate-limited per link) and returns the error to answer with. */
  #refuse(link: Link, mac: string, why: string): VnetError {
    const now = Date.now();
    const warned = this.#warned.get(link);
    if (!warned || now - warned.at >= WARN_EVERY_MS) {
      this.log.warn("direct path offer refused", {
        peer: link.remote,
        mac,
        why,
        notLogged: warned?.quiet || undefined,
        tokens: this.#expected.size,
      });
      this.#warned.set(link, { at: now, quiet: 0 });
    } else {
      warned.quiet++;
    }
    return new VnetError(`direct path to ${mac} refused: ${why}`, { code: ErrorCode.Refused });
  }

  #dropToken(token: string, e: Expected): void {
    if (!this.#expected.delete(token)) return;
    const n = (this.#tokensOn.get(e.via) ?? 1) - 1;
    if (n > 0) this.#tokensOn.set(e.via, n);
    else this.#tokensOn.delete(e.via);
  }

  async #linkTo(addr: HostPort): Promise<Link> {
    const key = `${addr.hostname}:${addr.port}`;
    const existing = await this.#dialled.get(key)?.catch(() => null);
    if (existing?.isOpen) return existing;
    const dialling = this.hooks.dial(addr, DIRECT_KEEPALIVE_MS, 3_000);
    this.#dialled.set(key, dialling);
    try {
      return await dialling;
    } catch (e) {
      this.#dialled.delete(key);
      throw e;
    }
  }

  /** A link closed: its routes go, and traffic falls back to the Proxy. */
  linkClosed(link: Link): void {
    const fabric = this.registry.fabric;
    const gone = fabric.removeRoutesOver(link);
    if (gone.length > 0) {
      this.log.warn("direct path down; back through the proxy", {
        via: link.remote,
        macs: gone.join(","),
      });
    }
    // A Proxy link: what was learned and offered over it goes with it.
    fabric.forgetLink(link);
    for (const [token, e] of this.#expected) if (e.via === link) this.#dropToken(token, e);
    this.#announcing.delete(link);
    this.#dialsOn.delete(link);
    for (const [mac, links] of this.#told) {
      links.delete(link);
      if (links.size === 0) this.#told.delete(mac);
    }
  }

  async #ageRoutes(): Promise<void> {
    for (const p of await this.registry.fabric.sweep(SWEEP_MS)) {
      this.log.info("direct path aged out", { mac: p.mac, via: p.remote });
    }
    const now = Date.now();
    for (const [token, e] of this.#expected) if (e.until < now) this.#dropToken(token, e);
    for (const [lo, his] of this.#announced) {
      for (const [hi, at] of his) {
        if (now - at < ANNOUNCE_EVERY_MS) continue;
        his.delete(hi);
        this.#pairs--;
      }
      if (his.size === 0) this.#announced.delete(lo);
    }
    // Dialled links that carry no route any more are closed.
    const used = this.registry.fabric.directLinks();
    for (const [key, dialling] of this.#dialled) {
      dialling.then((link) => {
        if (used.has(link)) return;
        this.#dialled.delete(key);
        link.close("no direct path uses it any more");
      }, () => this.#dialled.delete(key));
    }
  }

  close(): void {
    clearInterval(this.#sweep);
    for (const dialling of this.#dialled.values()) {
      dialling.then((link) => link.close("server shutting down"), () => {});
    }
  }
}

/** Whether a Host may dial `hostname` for a direct path: never itself nor a non-address. */
function dialable(hostname: string): boolean {
  const h = hostname.toLowerCase();
  return !(h === "localhost" || h.startsWith("127.") || h === "::1" || h === "0.0.0.0" ||
    h === "::" || h.startsWith("0.") || /^(22[4-9]|23\d|24\d|25[0-5])\./.test(h) ||
    /^ff[0-9a-f]{0,2}:/.test(h));
}
