/**
 * Direct Host↔Host paths (issue 11): VM↔VM traffic between two sites need not trombone
 * through the user's site.
 *
 *   1. The Proxy switches a unicast frame from one handler to another whose peers differ
 *      (fabric.ts): VMs behind two Hosts are talking.
 *   2. It tells both Hosts, over the links their handlers are attached to, with one fresh
 *      token (`route`): the sender's Host is to dial, the other to expect it.
 *   3. The sender's Host dials the other Host's server (same secret, same TLS rules), agrees
 *      the direct link's UDP path on it (udp_transport.ts), and presents the token (`direct`);
 *      the other Host checks it against what its Proxy said.
 *   4. Each installs a route for the far VM's MAC over that link (fabric.ts), and lets frames
 *      for its handlers on that Proxy link in from it (#letIn); the link's UDP path carries
 *      them while it works both ways, the link otherwise. VM↔VM unicast now goes direct;
 *      everything else, and anything while no direct path is up, goes through the Proxy.
 *   5. A direct link that fails (keepalive of 1 s, so within ~3 s) takes its routes with it:
 *      traffic falls back to the Proxy. Routes idle for ROUTE_AGE_MS are forgotten; a VM that
 *      moves is unrouted by the Proxy and learned again from its next frame.
 *
 * Hosts behind NAT cannot dial each other; the Proxy is their rendezvous (as in tinc and
 * ZeroTier). When it hears both Hosts by UDP and neither handler is `--transport tcp`, its
 * `route` also gives each the other's UDP endpoint as its NAT maps it (learned from that Host's
 * keepalives), a fresh secret and the token that names it (rpc.ts's Rendezvous). Both Hosts then
 * punch at once, beside the dial: a UDP path with no link (udp_peers.ts's PunchedLink) to that
 * endpoint, from the server's one UDP socket, whose keepalives open each NAT for the other's.
 * Its keys and ids come from the secret and its token (link/udp/keys.ts's derivePunched); the
 * secret is ephemeral and crossed only the links.
 *
 * One punched path joins two Hosts, not two VMs: the Proxy keeps one rendezvous per pair of
 * its links (the same secret, token and dialler) for RENDEZVOUS_TTL_MS and re-sends it in the
 * announcement of each new pair of MACs between those two Hosts, whichever handlers; each
 * Host keys its punched paths by the rendezvous's token, and routes every MAC announced with it
 * over the one path, which carries every handler of theirs announced with it. Were each pair of
 * MACs given its own secret, the second pair's Host would punch a path the first Host, which
 * already had one to it, never matched. A Host never opens a path twice from one rendezvous
 * (the sealed keys' nonces would repeat): it remembers those it closed until the Proxy can no
 * longer re-send them. A pair announced again (its first announcement did not take) comes with a
 * fresh rendezvous; a Host whose path to that endpoint works both ways takes the pair onto it
 * rather than punch a second path beside it, and lets the pair's frames in on both.
 *
 * The routes go over it, but the fabric sends by it only while it works both ways, and through
 * the Proxy otherwise (within ~4 s of silence), so nothing is sent twice and nothing waits for
 * the control plane. A path that does not come up within PUNCH_MS, stays down PUNCH_DOWN_MS,
 * (sealed, it cannot rekey) reaches PUNCHED_LIFETIME_MS, or carries no route once the Proxy no
 * longer re-sends its rendezvous, is closed; the Proxy, switching the Hosts' frames again, offers
 * a new one. A direct link that takes a MAC routed over a punched path goes to the same Host: it
 * takes that path whole (its routes and the handlers it lets in), and the path closes. Each
 * Host does so when its own announcement completes, so the two ends never keep routes over a
 * path one of them has closed.
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
 *     never the server's other VMs, and a path the Proxy named lets in frames for those
 *     handlers only, which that Proxy may send frames anyway;
 *   - a Proxy names only the server of a live handler whose traffic it has just switched;
 *   - a rendezvous is an IP address (never a name), neither loopback, unspecified nor
 *     multicast, nor an IPv6 form of those (judged on the address's bytes, not its text), and
 *     the punched path's routes are bound by the same rules as a dialled one's;
 *   - offers in flight, tokens kept, dials and punched paths are bounded per link and per
 *     server (below);
 *   - a refused offer is logged at WARN with the peer and the MAC (at most once a second per
 *     link, with the count of those not logged).
 */
import { formatHostPort, type HostPort, parseHostPort } from "../addr.ts";
import { ErrorCode, messageOf, VnetError } from "../errors.ts";
import { type HandlerRef, type RouteLink } from "../dataplane/data_path.ts";
import { fromBase64, toBase64, toWireKeys } from "../dataplane/forwarder_protocol.ts";
import { type AeadName } from "../link/udp/aead.ts";
import { derivePunched } from "../link/udp/keys.ts";
import { mac48, macBytes } from "../dataplane/mac.ts";
import { handlerNumber } from "../dataplane/handler.ts";
import { type Link } from "../link/link.ts";
import { ipBytes } from "../io/tcp_socket.ts";
import { type Logger } from "../log.ts";
import { type Registry } from "./registry.ts";
import { call, type DirectRequest, randomKey, type Rendezvous, type RouteRequest } from "./rpc.ts";

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
/**
 * Host: dials in flight for one Proxy link, and direct links dialled in all. Over a link to that
 * Host already there (or being dialled), up to MAX_TOKENS_PER_LINK, as many as the other Host
 * keeps: presenting a token opens nothing.
 */
const MAX_DIALS_PER_LINK = 4;
const MAX_DIRECT_LINKS = 64;
const SWEEP_MS = 30_000;
/** Direct links notice a dead path within 3 keepalives. */
const DIRECT_KEEPALIVE_MS = 1_000;
/** Refused offers are logged at most this often per link (a flood must not flood the log). */
const WARN_EVERY_MS = 1_000;
/** A punched path that has not worked both ways within this is given up: the Proxy carries. */
const PUNCH_MS = 10_000;
/** A punched path down this long is given up (a NAT mapping outlives a short outage). */
const PUNCH_DOWN_MS = 30_000;
/**
 * A sealed punched path cannot rekey (it has no link to exchange over), and its keys are refused
 * after 3 minutes: it is dropped before, and the Proxy, switching the Hosts' frames again, offers
 * a new one with a new secret.
 */
const PUNCHED_LIFETIME_MS = 150_000;
/**
 * Proxy: how long it re-sends one rendezvous between two Hosts, from when it made it. Less than
 * PUNCHED_LIFETIME_MS: a Host's sealed path, started at the earliest then, is never closed for
 * its age while the Proxy may still re-send its rendezvous. A Host keeps a closed path's token
 * this long after it closed it, and refuses to punch with it again.
 */
const RENDEZVOUS_TTL_MS = 120_000;
/** Proxy: rendezvous kept, one per pair of links; pairs of MACs each remembers. */
const MAX_RENDEZVOUS = 4096;
const MAX_PAIRS_PER_RENDEZVOUS = 256;
/**
 * Host: punched paths for one Proxy link, and in all; tokens of closed ones per link. One per
 * other Host behind that Proxy, two for a while when a rendezvous is renewed: 8 left the ninth
 * Host of a 10-Host site to the Proxy for good where no dial gets through (NAT). As many as the
 * tokens a Proxy link may have offered at once (MAX_TOKENS_PER_LINK).
 */
const MAX_PUNCHES_PER_LINK = 32;
const MAX_PUNCHED = 64;
const MAX_SPENT_PER_LINK = 32;
const PUNCH_CHECK_MS = 1_000;
/** The AEAD two Hosts whose Proxy links agreed different ones share: every libsodium runs it. */
const COMMON_AEAD: AeadName = "chacha20poly1305";
const encoder = new TextEncoder();

interface DirectHooks {
  /** Opens a peer link to another Host, and agrees its UDP path where it can. */
  dial(addr: HostPort, keepaliveMs: number, timeoutMs: number): Promise<Link>;
  /** The AEAD of a link's sealed UDP path (null: plain or none): a Proxy's rendezvous. */
  aeadOf(link: Link): AeadName | null;
}

/** A Host's UDP path punched to another Host, from one rendezvous of one Proxy link. */
interface Punch {
  via: Link;
  /** The rendezvous's token: announcements that re-send it add to this path. */
  token: string;
  /** The forwarder's link for it: a tunnel number, shown as `udp ADDR:PORT`. */
  ref: RouteLink;
  /** The other Host's UDP endpoint, as the Proxy named it. */
  endpoint: HostPort;
  sealed: boolean;
  startedAt: number;
  /** Whether it works both ways now; since when it does not (null: it never did). */
  up: boolean;
  downAt: number | null;
  /** Whether the forwarder opened it (a promise until it answered). */
  opened: Promise<boolean>;
  /** The remote MACs whose routes were put over it (some may have moved since). */
  macs: Set<string>;
  /** The handlers whose frames it carries: ours in, the far Host's out. */
  carried: Set<number>;
}

/** Proxy: the rendezvous of two Hosts (two links), re-sent for RENDEZVOUS_TTL_MS. */
interface Rendezvoused {
  links: [Link, Link];
  /** The Host that punches as the dialer, and dials: the same in every announcement. */
  dialer: Link;
  secret: string;
  token: string;
  aead: AeadName | undefined;
  madeAt: number;
  /** The pairs of MACs (`lower/higher`) announced with it. */
  pairs: Set<string>;
}

interface Spent {
  until: number;
  superseded: boolean;
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
  /** Proxy: each pair of links' rendezvous, by `lower link number/higher`. */
  readonly #rendezvoused = new Map<string, Rendezvoused>();
  /** Host: tokens the Proxy gave us to expect, and how many came over each link. */
  readonly #expected = new Map<string, Expected>();
  readonly #tokensOn = new Map<Link, number>();
  /** Host: direct links we dialled, by address; dials in flight per Proxy link. */
  readonly #dialled = new Map<string, Promise<Link>>();
  readonly #dialsOn = new Map<Link, number>();
  /** Host: tokens being presented over each dialled link (by #dialled's key): it is in use. */
  readonly #presenting = new Map<string, number>();
  /** Host: UDP paths punched to other Hosts, by `via-number/token`; by their link number. */
  readonly #punches = new Map<string, Punch>();
  readonly #punchKeys = new Map<number, string>();
  readonly #punchesOn = new Map<Link, number>();
  /**
   * Host: per Proxy link, the tokens of punched paths closed, until when they are kept, and
   * whether a direct link took the path's place (#supersede).
   */
  readonly #spent = new Map<Link, Map<string, Spent>>();
  #punchTimer: ReturnType<typeof setInterval> | undefined;
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
    registry.dataPath.onPunched = (link, up, why) => this.#punchedChanged(link, up, why);
    this.#sweep = setInterval(
      () =>
        this.ageRoutes().catch((e) =>
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
    const tell = (
      h: HandlerRef,
      link: Link,
      mac: string,
      far: HandlerRef,
      dial: boolean,
      udp: Rendezvous | undefined,
    ) => {
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
        ...(udp ? { udp } : {}),
      };
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
    // Both slots are taken now: the bounds hold while the rendezvous is looked up.
    const la = a.link!, lb = b.link!;
    for (const link of [la, lb]) {
      this.#announcing.set(link, (this.#announcing.get(link) ?? 0) + 1);
      this.#announcingTotal++;
    }
    // A handler that must go by TCP gets no punched path (a direct link's stream carries it).
    const pair = `${lo}/${hi}`;
    const udp = byUdp(a) && byUdp(b) ? this.#rendezvous(la, lb, pair) : Promise.resolve(null);
    udp.catch(() => null).then((r) => {
      // The far end first, so that it expects the token before the dialler presents it. The
      // rendezvous's dialer dials: a Host punches in one role with each rendezvous.
      if (!r || r.dialer === la) {
        tell(b, lb, src, a, false, r?.forB);
        tell(a, la, dst, b, true, r?.forA);
      } else {
        tell(a, la, dst, b, false, r.forA);
        tell(b, lb, src, a, true, r.forB);
      }
    });
  }

  /**
   * Where each of two Hosts can punch a UDP path to the other: the other's UDP endpoint as this
   * Proxy hears it (its NAT's mapping, learned from its keepalives), and the two Hosts'
   * rendezvous: made fresh with `a` as the dialer, or re-sent while younger than
   * RENDEZVOUS_TTL_MS for a `pair` of MACs not announced with it yet. A pair announced again
   * gets a fresh one: its frames still come through here, so what its Hosts did with the last
   * did not take (one refused it, say, not having seen the MAC yet), and a Host never punches
   * twice with one rendezvous. Its secret travels only over the two links. Null unless both
   * links' UDP paths are up and alike (both sealed or both plain).
   */
  async #rendezvous(
    a: Link,
    b: Link,
    pair: string,
  ): Promise<{ forA: Rendezvous; forB: Rendezvous; dialer: Link } | null> {
    const states = await this.registry.dataPath.udpStates();
    const ua = states[a.number], ub = states[b.number];
    if (ua?.state !== "up" || ub?.state !== "up" || ua.sealed !== ub.sealed) return null;
    const pa = parseHostPort(ua.peer, "UDP peer"), pb = parseHostPort(ub.peer, "UDP peer");
    const key = a.number < b.number ? `${a.number}/${b.number}` : `${b.number}/${a.number}`;
    const now = Date.now();
    let r = this.#rendezvoused.get(key);
    if (
      !r || now - r.madeAt >= RENDEZVOUS_TTL_MS || !r.links.includes(a) || !r.links.includes(b) ||
      r.pairs.has(pair) || r.pairs.size >= MAX_PAIRS_PER_RENDEZVOUS
    ) {
      if (!r && this.#rendezvoused.size >= MAX_RENDEZVOUS) return null;
      let aead: AeadName | undefined;
      if (ua.sealed) {
        const x = this.hooks.aeadOf(a), y = this.hooks.aeadOf(b);
        aead = x !== null && x === y ? x : COMMON_AEAD;
      }
      r = {
        links: [a, b],
        dialer: a,
        secret: toBase64(crypto.getRandomValues(new Uint8Array(32))),
        token: randomKey(),
        aead,
        madeAt: now,
        pairs: new Set(),
      };
      this.#rendezvoused.set(key, r);
    }
    r.pairs.add(pair);
    const { secret, token, aead } = r;
    const to = (p: HostPort): Rendezvous => ({
      host: p.hostname,
      port: p.port,
      secret,
      token,
      ...(aead ? { aead } : {}),
    });
    return { forA: to(pb), forB: to(pa), dialer: r.dialer };
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
    if (req.udp) this.#admit(link, req.udp, entry.handler);
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
      if (req.udp) this.#punch(link, req, local);
      return;
    }
    // Both Hosts punch at once, beside the dial: behind NAT the dial fails, and the far Host,
    // which cannot know that, has started punching already.
    if (req.udp) this.#punch(link, req, local);
    const addr = parseHostPort(req.peer, "peer");
    const key = `${addr.hostname}:${addr.port}`;
    const dials = this.#dialsOn.get(link) ?? 0;
    // A link to that Host, dialled or being dialled, serves this pair too: only its token is
    // presented. Announcements come in bursts (each pair of VMs that talk), and a pair left
    // undialled keeps its route over the punched path alone, which the other Host may close.
    const reused = this.#dialled.has(key);
    const cannot = !dialable(addr.hostname)
      ? `'${req.peer}' is not another Host's address`
      : dials >= (reused ? MAX_TOKENS_PER_LINK : MAX_DIALS_PER_LINK)
      ? "too many direct paths being dialled"
      : !reused && this.#dialled.size >= MAX_DIRECT_LINKS
      ? `${MAX_DIRECT_LINKS} direct links already`
      : null;
    if (cannot !== null) {
      if (req.udp) return;
      throw this.#refuse(link, req.mac, cannot);
    }
    this.#dialsOn.set(link, dials + 1);
    this.#presenting.set(key, (this.#presenting.get(key) ?? 0) + 1);
    // Answered at once: the Proxy must not wait on another Host (and a slow one must not
    // fill the Proxy's link with requests in flight). Failing here only means no direct path.
    this.#linkTo(addr)
      .then(async (direct) => {
        await call(direct, "direct", { token: req.token, handler: req.remote });
        this.#install(link, direct, req.peer, req.mac, handlerNumber(req.remote), local);
      })
      .catch((e) =>
        this.log.info(
          req.udp
            ? "no direct link; punching UDP instead"
            : "no direct path; staying with the proxy",
          { mac: req.mac, peer: req.peer, error: messageOf(e) },
        )
      )
      .finally(() => {
        const n = (this.#dialsOn.get(link) ?? 1) - 1;
        if (n > 0) this.#dialsOn.set(link, n);
        else this.#dialsOn.delete(link);
        const p = (this.#presenting.get(key) ?? 1) - 1;
        if (p > 0) this.#presenting.set(key, p);
        else this.#presenting.delete(key);
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

  /**
   * The Proxy on `link` says `mac` moved: back through it. A punched path it went over stays for
   * the other MACs routed over it (and is closed once it carries none).
   */
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
    // `local` is carried below, with the far handler.
    this.#letIn(via, link, new Set([local.number]));
    // A punched path the route was on goes to the same Host as this link: the link takes its
    // place whole (#supersede).
    for (const [key, p] of this.#punches) {
      if (p.via === via && p.macs.has(mac)) this.#supersede(key, p, link);
    }
    // Frames take the direct link's UDP path too while it works both ways, as on a Proxy link.
    if (!byUdp(local)) {
      this.log.info("direct path up", { mac, via: peer, handler: local.spec.id, udp: "no" });
      return;
    }
    path.udpCarry(link, [local.number, number]).then(
      (udp) => this.log.info("direct path up", { mac, via: peer, handler: local.spec.id, udp }),
      (e) => this.log.warn("direct path up, not by UDP", { mac, via: peer, error: messageOf(e) }),
    );
  }

  /**
   * The direct link `link` takes the place of punched path `p` to the same Host: p's routes
   * move to it, the handlers p let in are let in from it, and p closes. Kept side by side, the
   * two would not stay alike at both ends: each Host moves a route when its own announcement
   * completes, and the one that closes its end of p first leaves the other's routes over p
   * to a path that is gone, or, where both use one UDP endpoint each way, one that still looks
   * up (its datagrams then reach the link's path) and delivers nothing.
   */
  #supersede(key: string, p: Punch, link: RouteLink): void {
    const path = this.registry.dataPath;
    this.registry.fabric.moveRoutes(p.via, p.ref, link);
    // Each on its own: one the link's path cannot carry (plain, its VNI taken) stays on the
    // link's stream, and the others still go by UDP.
    for (const h of p.carried) path.udpCarry(link, [h]).catch(() => false);
    this.#letIn(p.via, link, new Set(p.carried));
    this.#unpunch(key, "a direct link to that Host takes its place", true);
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

  /**
   * The direct link to `addr`: the one dialled, or being dialled (its outcome, failure too, is
   * shared), else a new dial. Known at once, so that a burst of pairs dials once.
   */
  #linkTo(addr: HostPort): Promise<Link> {
    const key = `${addr.hostname}:${addr.port}`;
    const dial = () => this.hooks.dial(addr, DIRECT_KEEPALIVE_MS, 3_000);
    const known = this.#dialled.get(key);
    const dialling = known ? known.then((l) => l.isOpen ? l : dial()) : dial();
    this.#dialled.set(key, dialling);
    dialling.catch(() => {
      if (this.#dialled.get(key) === dialling) this.#dialled.delete(key);
    });
    return dialling;
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
    for (const [key, p] of this.#punches) {
      if (p.via === link) this.#unpunch(key, "its proxy link closed");
    }
    this.#spent.delete(link);
    this.#stopCheckingWhenIdle();
    for (const [token, e] of this.#expected) if (e.via === link) this.#dropToken(token, e);
    for (const [key, r] of this.#rendezvoused) {
      if (r.links.includes(link)) this.#rendezvoused.delete(key);
    }
    this.#announcing.delete(link);
    this.#dialsOn.delete(link);
    for (const [mac, links] of this.#told) {
      links.delete(link);
      if (links.size === 0) this.#told.delete(mac);
    }
  }

  /** Forgets idle routes, spent tokens and unused dialled links: every SWEEP_MS, or a test's. */
  async ageRoutes(): Promise<void> {
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
    for (const [key, r] of this.#rendezvoused) {
      if (now - r.madeAt >= RENDEZVOUS_TTL_MS) this.#rendezvoused.delete(key);
    }
    // Dialled links that carry no route any more are closed; not one a token is being presented
    // over: its route is not in yet, and the far Host, which took the token, would see its own
    // go down (and, the pair announced already, send through the Proxy for ANNOUNCE_EVERY_MS).
    const used = this.registry.fabric.directLinks();
    for (const [key, dialling] of this.#dialled) {
      dialling.then((link) => {
        if (used.has(link) || this.#presenting.has(key)) return;
        this.#dialled.delete(key);
        link.close("no direct path uses it any more");
      }, () => this.#dialled.delete(key));
    }
  }

  // --- punched UDP paths (a Host's side) -------------------------------------------------------

  /**
   * Punches a UDP path to the other Host's endpoint that the Proxy on `via` named, or adds to
   * the one punched with the same rendezvous: both Hosts send keepalives to each other's NAT
   * mapping at once, so each NAT sees its own Host's datagrams go out before the other's come
   * in. The route to the MAC goes over it from the start, but the fabric sends by it only while
   * it works both ways (PunchedLink), and through the Proxy otherwise. Refusals are logged; the
   * Proxy carries either way.
   */
  #punch(via: Link, req: RouteRequest, local: HandlerRef): void {
    const udp = req.udp!;
    const [key, old] = this.#pathFor(via, udp);
    const current = this.registry.fabric.route(via, req.mac);
    if (current && !this.#punchKeys.has(current.number)) {
      // A direct link to that Host carries the MAC: it takes this rendezvous's path too.
      if (old) this.#supersede(key, old, current);
      return;
    }
    const spent = old ? undefined : this.#spentToken(via, udp.token);
    // Its path gave way to a direct link to that Host, which this pair's dial joins too.
    if (spent?.superseded) return;
    const sealed = via.tls;
    const cannot = !byUdp(local)
      ? `handler ${local.spec.id} goes by TCP (--transport tcp)`
      : !punchable(udp.host)
      ? `'${udp.host}' is not another Host's address`
      : sealed && !udp.aead
      ? "no AEAD for a sealed path"
      : old
      ? null
      : spent
      ? "a path was punched with that rendezvous already"
      : (this.#spent.get(via)?.size ?? 0) >= MAX_SPENT_PER_LINK
      ? "too many punched paths closed on this link lately"
      : (this.#punchesOn.get(via) ?? 0) >= MAX_PUNCHES_PER_LINK
      ? "too many punched paths on this link"
      : this.#punches.size >= MAX_PUNCHED
      ? `${MAX_PUNCHED} punched paths already`
      : null;
    if (cannot !== null) return void this.#refuse(via, req.mac, cannot);
    const remote = handlerNumber(req.remote);
    const punch = old ?? this.#open(via, key, req, local, remote);
    punch.opened.then(async (opened) => {
      if (!opened || this.#punches.get(key) !== punch) return;
      // A path opened for another pair of the two Hosts' handlers: it carries this one's too.
      // Only those it does not carry yet are asked for: a refusal drops just those.
      const more = [local.number, remote].filter((h) => !punch.carried.has(h));
      if (more.length > 0) {
        if (!await this.registry.dataPath.udpCarry(punch.ref, more)) {
          return void this.#refuse(via, req.mac, "the punched path cannot carry its handlers");
        }
        for (const h of more) punch.carried.add(h);
      }
      if (this.#punches.get(key) !== punch) return;
      this.#letIn(via, punch.ref, punch.carried);
      // A direct link to that Host took the MAC while the path opened: it takes the path too.
      const carrier = this.registry.fabric.route(via, req.mac);
      if (carrier && !this.#punchKeys.has(carrier.number)) {
        return this.#supersede(key, punch, carrier);
      }
      if (!this.registry.fabric.addRoute(via, req.mac, punch.ref, req.peer, remote)) {
        return this.log.info("no punched path: the MAC was forgotten meanwhile", { mac: req.mac });
      }
      punch.macs.add(req.mac);
      this.log.info(old ? "routed over a punched UDP path" : "punching a direct UDP path", {
        mac: req.mac,
        to: punch.ref.remote,
        sealed: sealed ? udp.aead : "no (plain VXLAN)",
        handler: local.spec.id,
      });
    }, (e) => this.#unpunch(key, `the data path refused it: ${messageOf(e)}`));
  }

  /**
   * The punched paths of rendezvous `udp` on `via`, if there are any, let `local`'s frames in
   * (and, plain, know its VNI), with every other handler of `via`'s (#letIn), whatever becomes
   * of the route offered with it: the other Host may take a route this one refuses (it has not
   * seen that MAC come over its Proxy link yet), and its frames for `local` must not vanish on a
   * path that is up. Those are the path opened with it, and any other of `via` to the same
   * endpoint: the other Host may have taken the pair onto the path the two already share
   * (#pathFor). The Proxy of `via` named `local` and the other Host's endpoint: no more than it
   * may offer anyway.
   */
  #admit(via: Link, udp: Rendezvous, local: HandlerRef): void {
    if (!byUdp(local)) return;
    const own = `${via.number}/${udp.token}`;
    for (const [key, punch] of this.#punches) {
      if (key === own || (punch.via === via && sameEndpoint(punch.endpoint, udp))) {
        this.#admitTo(key, punch);
      }
    }
  }

  #admitTo(key: string, punch: Punch): void {
    punch.opened.then((opened) => {
      if (opened && this.#punches.get(key) === punch) {
        this.#letIn(punch.via, punch.ref, punch.carried);
      }
    }, () => {}); // #punch, which opened it, closes it
  }

  /**
   * Lets every host handler of Proxy link `via` in from `path`, a direct link or punched path to
   * another Host that the Proxy of `via` named, and has its UDP path know their VNIs (those in
   * `carried` it knows already). Not only the handlers of the pairs announced over it: the two
   * Hosts move their routes between the paths they share at different moments (each when its
   * own announcement completes, #supersede), and take pairs the other refused (#punch), so the
   * far Host may send any pair's frames on any of them. A path that let in only its own pairs
   * dropped those for good, both ways (no frame of the pair crossed the Proxy again to have it
   * announced anew): the scale test's one VM cut off from another Host's ten. This reaches no
   * further than the Proxy of `via` does: it may send those handlers any frame itself.
   */
  #letIn(via: Link, path: RouteLink, carried?: Set<number>): void {
    const dataPath = this.registry.dataPath;
    for (const { handler } of this.registry.values()) {
      if (handler.link !== via || handler.spec.role !== "host") continue;
      dataPath.send({ op: "allow", link: path.number, handler: handler.number });
      if (!byUdp(handler) || carried?.has(handler.number)) continue;
      // Each on its own: one the path cannot carry (plain, its VNI taken) stays off it alone.
      dataPath.udpCarry(path, [handler.number]).then((ok) => {
        if (ok) carried?.add(handler.number);
      }, () => {});
    }
  }

  /**
   * The punched path for rendezvous `udp` over `via`, and its key: the one opened with it, else
   * one that works both ways to the same endpoint, from an earlier rendezvous of that Proxy link.
   * The Proxy makes a fresh rendezvous for a pair it announces again (the first announcement did
   * not take); the two Hosts already share a path that works, and each takes the pair onto it
   * rather than punch a second one beside it. A Host whose end of it is not up punches the new
   * one, and the other still lets its frames in on the old (#admit): nothing is lost either way.
   */
  #pathFor(via: Link, udp: Rendezvous): [string, Punch | undefined] {
    const key = `${via.number}/${udp.token}`;
    const own = this.#punches.get(key);
    if (own) return [key, own];
    for (const [k, p] of this.#punches) {
      if (p.via === via && p.up && sameEndpoint(p.endpoint, udp)) return [k, p];
    }
    return [key, undefined];
  }

  /** Opens the punched path `key` for the rendezvous in `req`, carrying `local` and `remote`. */
  #open(via: Link, key: string, req: RouteRequest, local: HandlerRef, remote: number): Punch {
    const udp = req.udp!;
    const sealed = via.tls;
    const derived = derivePunched({
      role: req.dial ? "dialer" : "acceptor",
      aead: sealed ? udp.aead! : null,
      pairSecret: fromBase64(udp.secret),
      token: encoder.encode(udp.token),
    });
    const path = this.registry.dataPath;
    const number = path.newTunnelNumber();
    const endpoint = formatHostPort({ hostname: udp.host, port: udp.port });
    const ref = { number, remote: `udp ${endpoint}` };
    const opened = path.udpPunch({
      link: number,
      remote: ref.remote,
      host: udp.host,
      port: udp.port,
      keys: derived.keys && toWireKeys(derived.keys),
      localId: derived.localId,
      peerId: derived.peerId,
      token: derived.localId,
      peerToken: derived.peerId,
      allow: local.number,
      carry: [local.number, remote],
    }).then((ok) => {
      if (!ok) this.#unpunch(key, "no UDP socket here, or a handler's VNI is 0 or taken");
      return ok;
    });
    const punch: Punch = {
      via,
      token: udp.token,
      ref,
      endpoint: { hostname: udp.host, port: udp.port },
      sealed,
      startedAt: Date.now(),
      up: false,
      downAt: null,
      opened,
      macs: new Set(),
      carried: new Set([local.number, remote]),
    };
    this.#punches.set(key, punch);
    this.#punchKeys.set(number, key);
    this.#punchesOn.set(via, (this.#punchesOn.get(via) ?? 0) + 1);
    this.#punchTimer ??= setInterval(() => this.#checkPunches(), PUNCH_CHECK_MS);
    return punch;
  }

  /** The path punched with rendezvous `token` over `via`, if it was closed lately. */
  #spentToken(via: Link, token: string): Spent | undefined {
    const spent = this.#spent.get(via);
    if (!spent) return undefined;
    const now = Date.now();
    for (const [t, s] of spent) if (s.until <= now) spent.delete(t);
    return spent.get(token);
  }

  /** A punched path (the forwarder's link `number`) went up or down. */
  #punchedChanged(number: number, up: boolean, why: string): void {
    const key = this.#punchKeys.get(number);
    const punch = key === undefined ? undefined : this.#punches.get(key);
    if (!punch) return;
    punch.up = up;
    punch.downAt = up ? null : Date.now();
    const fields = { macs: [...punch.macs].join(","), to: punch.ref.remote, why };
    if (up) this.log.info("direct UDP path up: frames go direct", fields);
    else this.log.warn("direct UDP path down: frames go through the proxy", fields);
  }

  /**
   * Gives up punched paths that did not come up, stay down, are too old, or carry no route once
   * the Proxy no longer re-sends their rendezvous; forgets closed paths' tokens in time.
   */
  #checkPunches(): void {
    const now = Date.now();
    const fabric = this.registry.fabric;
    for (const [key, p] of this.#punches) {
      for (const mac of p.macs) if (fabric.route(p.via, mac) !== p.ref) p.macs.delete(mac);
      const why = !p.up && p.downAt === null && now - p.startedAt >= PUNCH_MS
        ? `no answer within ${PUNCH_MS} ms; staying with the proxy`
        : !p.up && p.downAt !== null && now - p.downAt >= PUNCH_DOWN_MS
        ? `down for ${PUNCH_DOWN_MS} ms; staying with the proxy`
        : p.sealed && now - p.startedAt >= PUNCHED_LIFETIME_MS
        ? "its keys are spent; the proxy offers a new one"
        : p.macs.size === 0 && now - p.startedAt >= RENDEZVOUS_TTL_MS
        ? "no route goes over it any more"
        : null;
      if (why !== null) this.#unpunch(key, why);
    }
    for (const [via, spent] of this.#spent) {
      for (const [token, s] of spent) if (s.until <= now) spent.delete(token);
      if (spent.size === 0) this.#spent.delete(via);
    }
    this.#stopCheckingWhenIdle();
  }

  /** The checks stop once no path is open and no closed one's token is kept. */
  #stopCheckingWhenIdle(): void {
    if (this.#punches.size > 0 || this.#spent.size > 0) return;
    clearInterval(this.#punchTimer);
    this.#punchTimer = undefined;
  }

  /**
   * Closes the punched path `key`, if there is one; its routes fall back to the Proxy. Its token
   * is kept RENDEZVOUS_TTL_MS: the Proxy may re-send that rendezvous until then, and a path
   * opened with it again would repeat the sealed keys' nonces.
   */
  #unpunch(key: string, why: string, superseded = false): void {
    const p = this.#punches.get(key);
    if (!p) return;
    this.#punches.delete(key);
    this.#punchKeys.delete(p.ref.number);
    const n = (this.#punchesOn.get(p.via) ?? 1) - 1;
    if (n > 0) this.#punchesOn.set(p.via, n);
    else this.#punchesOn.delete(p.via);
    if (p.via.isOpen) {
      let spent = this.#spent.get(p.via);
      if (!spent) this.#spent.set(p.via, spent = new Map());
      spent.set(p.token, { until: Date.now() + RENDEZVOUS_TTL_MS, superseded });
    }
    this.registry.fabric.removeRoutesOver(p.ref);
    this.registry.dataPath.send({ op: "unpunch", link: p.ref.number });
    this.log.info("punched UDP path closed", {
      macs: [...p.macs].join(","),
      to: p.ref.remote,
      why,
    });
    this.#stopCheckingWhenIdle();
  }

  close(): void {
    clearInterval(this.#sweep);
    clearInterval(this.#punchTimer);
    for (const dialling of this.#dialled.values()) {
      dialling.then((link) => link.close("server shutting down"), () => {});
    }
  }
}

/** Whether a punched path's endpoint is a rendezvous's: the same address (its bytes) and port. */
function sameEndpoint(endpoint: HostPort, udp: Rendezvous): boolean {
  if (endpoint.port !== udp.port) return false;
  const a = ipBytes(endpoint.hostname), b = ipBytes(udp.host);
  return a !== null && b !== null && a.length === b.length && a.every((x, i) => x === b[i]);
}

/**
 * Whether `h`'s frames may go by UDP: not with `--transport tcp`, nor made before there was a
 * choice (no transport: tcp, handler.ts).
 */
function byUdp(h: HandlerRef): boolean {
  return (h.spec.transport ?? "tcp") !== "tcp";
}

/**
 * Whether a Host may dial `hostname` for a direct path: a name (not `localhost`), or an address
 * another Host may be at (`punchable`).
 */
function dialable(hostname: string): boolean {
  if (ipBytes(hostname) !== null) return punchable(hostname);
  const h = hostname.toLowerCase().replace(/\.$/, "");
  return h !== "localhost" && !h.endsWith(".localhost");
}

/**
 * Whether `host` is an IP address another Host may be at, judged on its bytes, not its text
 * (`::ffff:127.0.0.1`, `0:0:0:0:0:0:0:1` and `::0:1` are loopback too): never loopback, the
 * unspecified address, "this network" (0.0.0.0/8), multicast (link-local or not) or reserved
 * IPv4 (240.0.0.0/4, the broadcast address), nor an IPv6 address that carries such an IPv4 one
 * (v4-mapped ::ffff:0:0/96, v4-compatible ::/96, NAT64's 64:ff9b::/96). A name is not one.
 */
export function punchable(host: string): boolean {
  const ip = ipBytes(host);
  if (ip === null) return false;
  if (ip.length === 16) {
    if (ip[0] === 0xff) return false; // multicast, ff02::/16 (link-local) among them
    const zeros = (n: number) => ip.subarray(0, n).every((b) => b === 0);
    const v4mapped = zeros(10) && ip[10] === 0xff && ip[11] === 0xff;
    const nat64 = ip[0] === 0x00 && ip[1] === 0x64 && ip[2] === 0xff && ip[3] === 0x9b &&
      ip.subarray(4, 12).every((b) => b === 0);
    // ::/96 holds the unspecified address and loopback (::1) as well as the v4-compatible form.
    if (!v4mapped && !nat64 && !zeros(12)) return true;
    return ipv4Punchable(ip.subarray(12));
  }
  return ipv4Punchable(ip);
}

function ipv4Punchable(ip: Uint8Array): boolean {
  // 0/8: this network (0.0.0.0 among it); 127/8: loopback; 224/4: multicast; 240/4: reserved.
  return ip[0] !== 0 && ip[0] !== 127 && ip[0] < 224;
}
