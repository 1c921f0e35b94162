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
 */
import { type HostPort, parseHostPort } from "../addr.ts";
import { ErrorCode, messageOf, VnetError } from "../errors.ts";
import { type FabricPort } from "../dataplane/fabric.ts";
import { mac48, macBytes } from "../dataplane/mac.ts";
import { type Handler, handlerNumber } from "../dataplane/handler.ts";
import { type Link } from "../link/link.ts";
import { type Logger } from "../log.ts";
import { type Registry } from "./registry.ts";
import { call, type DirectRequest, randomKey, type RouteRequest } from "./rpc.ts";

/** A pair announced again only after this long (a route ages out, or a Host restarted). */
const ANNOUNCE_EVERY_MS = 30_000;
/** How long a Host waits for the Proxy's word on a token another Host presents. */
const TOKEN_WAIT_MS = 3_000;
/** Announcements in flight on one link; more wait for the next switched frame of the pair. */
const MAX_ANNOUNCING = 8;
const TOKEN_TTL_MS = 30_000;
const SWEEP_MS = 30_000;
/** Direct links notice a dead path within 3 keepalives. */
const DIRECT_KEEPALIVE_MS = 1_000;

interface DirectHooks {
  /** Opens a peer link to another Host. */
  dial(addr: HostPort, keepaliveMs: number, timeoutMs: number): Promise<Link>;
}

interface Expected {
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
  readonly #told = new Map<string, Set<Link>>();
  /** Proxy: announcements not answered yet, per link (bounded, see MAX_ANNOUNCING). */
  readonly #announcing = new WeakMap<Link, number>();
  /** Host: tokens the Proxy gave us to expect, and the links frames may come in on. */
  readonly #expected = new Map<string, Expected>();
  readonly #allowed = new WeakMap<Link, Set<number>>();
  /** Host: direct links we dialled, by address. */
  readonly #dialled = new Map<string, Promise<Link>>();
  readonly #sweep: ReturnType<typeof setInterval>;

  constructor(
    private readonly registry: Registry,
    private readonly enabled: boolean,
    private readonly hooks: DirectHooks,
    private readonly log: Logger,
  ) {
    registry.fabric.onSwitched = (from, to, frame) => this.#switched(from, to, frame);
    this.#sweep = setInterval(() => this.#ageRoutes(), SWEEP_MS);
  }

  /** Whether frames for handler `number` may come in on `link` (a direct link). */
  allows(link: Link, number: number): boolean {
    return this.#allowed.get(link)?.has(number) ?? false;
  }

  // --- the Proxy's side ----------------------------------------------------------------------

  #switched(from: FabricPort, to: FabricPort, frame: Uint8Array): void {
    if (!this.enabled || !from.link?.isOpen || !to.link?.isOpen) return;
    if (this.#busy(from.link) || this.#busy(to.link)) return;
    // Per switched frame: numbers only, no allocation, until a pair is announced.
    const s = mac48(frame, 6), d = mac48(frame, 0);
    const [lo, hi] = s < d ? [s, d] : [d, s];
    let his = this.#announced.get(lo);
    const now = Date.now();
    if (now - (his?.get(hi) ?? -Infinity) < ANNOUNCE_EVERY_MS) return;
    if (!his) this.#announced.set(lo, his = new Map());
    his.set(hi, now);
    const src = macText(frame, 6), dst = macText(frame, 0);
    const a = from as Handler, b = to as Handler;
    const token = randomKey();
    const tell = (h: Handler, mac: string, far: Handler, dial: boolean) => {
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
      call(link, "route", req).catch((e) =>
        this.log.debug("direct path not taken", { handler: h.spec.id, mac, error: messageOf(e) })
      );
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
      this.#announced.delete(n);
      for (const his of this.#announced.values()) his.delete(n);
    }
  }

  // --- a Host's side -------------------------------------------------------------------------

  /** The Proxy says: the VMs of `req.handler` talk to `req.mac`, behind `req.peer`. */
  route(req: RouteRequest, link: Link): void {
    if (!this.enabled) {
      throw new VnetError("direct paths are off on this server (--no-direct)", {
        code: ErrorCode.Refused,
      });
    }
    const entry = this.registry.get(req.handler);
    if (!entry || entry.handler.link !== link || entry.handler.spec.role !== "host") {
      throw new VnetError(`no host handler '${req.handler}' on this link`, {
        code: ErrorCode.Refused,
      });
    }
    const local = entry.handler;
    if (!req.dial) {
      this.#expected.set(req.token, {
        local: req.handler,
        remote: req.remote,
        mac: req.mac,
        peer: req.peer,
        until: Date.now() + TOKEN_TTL_MS,
      });
      return;
    }
    // Answered at once: the Proxy must not wait on another Host (and a slow one must not
    // fill the Proxy's link with requests in flight). Failing here only means no direct path.
    const addr = parseHostPort(req.peer, "peer");
    this.#linkTo(addr)
      .then(async (direct) => {
        await call(direct, "direct", { token: req.token, handler: req.remote });
        this.#install(direct, req.peer, req.mac, handlerNumber(req.remote), local);
      })
      .catch((e) =>
        this.log.info("no direct path; staying with the proxy", {
          mac: req.mac,
          peer: req.peer,
          error: messageOf(e),
        })
      );
  }

  /** Another Host presents a token (step 3); `link` is the direct link it dialled. */
  async direct(req: DirectRequest, link: Link): Promise<void> {
    const deadline = Date.now() + TOKEN_WAIT_MS;
    let expected = this.#expected.get(req.token);
    while (!expected && Date.now() < deadline) {
      await new Promise((r) => setTimeout(r, 50));
      expected = this.#expected.get(req.token);
    }
    const entry = expected && this.registry.get(expected.local);
    if (!expected || expected.local !== req.handler || !entry || expected.until < Date.now()) {
      throw new VnetError("no direct path was announced with that token", {
        code: ErrorCode.Refused,
      });
    }
    this.#expected.delete(req.token);
    this.#install(link, expected.peer, expected.mac, handlerNumber(expected.remote), entry.handler);
  }

  unroute(mac: string): void {
    if (this.registry.fabric.removeRoute(mac)) this.log.info("direct path forgotten", { mac });
  }

  #install(link: Link, peer: string, mac: string, number: number, local: Handler): void {
    // Either end notices a dead direct path within ~3 s, and traffic falls back.
    link.tune({ keepaliveMs: DIRECT_KEEPALIVE_MS, stallMs: 3 * DIRECT_KEEPALIVE_MS });
    this.registry.fabric.addRoute(mac, link, peer, number);
    let allowed = this.#allowed.get(link);
    if (!allowed) this.#allowed.set(link, allowed = new Set());
    allowed.add(local.number);
    this.log.info("direct path up", { mac, via: peer, handler: local.spec.id });
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
    const gone = this.registry.fabric.removeRoutesOver(link);
    if (gone.length > 0) {
      this.log.warn("direct path down; back through the proxy", {
        via: link.remote,
        macs: gone.map((r) => r.mac).join(","),
      });
    }
    for (const [mac, links] of this.#told) {
      links.delete(link);
      if (links.size === 0) this.#told.delete(mac);
    }
  }

  #ageRoutes(): void {
    for (const p of this.registry.fabric.sweep(SWEEP_MS)) {
      this.log.info("direct path aged out", { mac: p.mac, via: p.direct!.link.remote });
    }
    const now = Date.now();
    for (const [token, e] of this.#expected) if (e.until < now) this.#expected.delete(token);
    // Dialled links that carry no route any more are closed.
    const used = new Set(this.registry.fabric.paths().map((p) => p.direct?.link));
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

function macText(frame: Uint8Array, at: number): string {
  return Array.from(frame.subarray(at, at + 6), (b) => b.toString(16).padStart(2, "0")).join(":");
}
