/**
 * The switch fabric of one server: what happens to a frame besides its own handler's path,
 * when a server carries several handlers on one device, or knows a direct path to a MAC.
 * This is what makes VNET a distributed switch (issue 11), as VNET/P's MAC routes and tinc's
 * switch mode do; handler.ts calls it on both paths.
 *
 * From a peer (Handler.receive → `fromPeer`), at a Proxy:
 *   1. Unicast to a MAC that another handler on this device carries: handed to that handler's
 *      link (switched), not put on the LAN. Known unicast is never flooded.
 *   2. Broadcast: put on the LAN and handed to the other handlers on this device; multicast
 *      likewise, to those that carry multicast. Never back to the Host it came from, and once
 *      per Host: the Host hands it to all of its own devices (step 5).
 *   3. Anything else: put on the LAN.
 * From a peer, at a Host:
 *   4. A frame from a MAC this device's handlers carry is the VMs' own frame come back (a
 *      loop through the Proxy): dropped, and counted as a loop.
 *   5. A broadcast or multicast this device already put out (through another handler of the
 *      same device) is a duplicate: dropped, and counted as a loop. One that is new is put out
 *      on every device of this Host with a handler on the same link (the Proxy sends it once).
 * From the capture (Handler.#forward → `toward`), at a Host:
 *   6. Unicast to a MAC another handler of this Host carries on the same link: delivered here
 *      (by the device itself, or put on the other device); a broadcast is also put on this
 *      Host's other devices on that link. The Proxy never sends a Host its own frames back.
 *   7. Unicast to a MAC with a direct route (another Host, see control/direct.ts): sent on
 *      that route's link, not through the Proxy. Every remote MAC a Host learns (from the
 *      sources of its peer's frames) has a path, direct or through the Proxy, with counters.
 *      Paths belong to the Proxy link they were learned over: a route a Proxy offers steers only
 *      the frames of the handlers that Proxy carries, never the whole server's (issue 19).
 * At a Proxy's capture (`handedOver`, `loopGuard`):
 *   8. A broadcast from a MAC that another handler of this server carries for the same Host, on
 *      another device, is that Host's own broadcast come back over the LAN (the Proxy put it on
 *      one interface, the LAN bridge flooded it to another): the Host already handed it to its
 *      VMs (step 6), so it is dropped, and counted as a loop.
 *   9. `loopGuard` drops a broadcast seen again within LOOP_WINDOW_MS: a LAN frame that came
 *      back through a Host (a Host device bridged to the LAN), never a storm.
 */
import { type FrameLink } from "./ports.ts";
import { isBroadcastFrame, mac48, macBytes } from "./mac.ts";
import {
  ETHERTYPE_IPV4,
  ETHERTYPE_IPV6,
  etherTypeAt,
  ipv6UpperLayer,
  networkOffset,
} from "./headers.ts";

/** What the fabric needs of a handler. */
export interface FabricPort {
  readonly number: number;
  readonly role: "proxy" | "host";
  readonly device: string;
  readonly macs: readonly string[];
  readonly multicast: boolean;
  /** Sends a frame to this handler's peer; false if it had to be dropped. */
  sendToPeer(frame: Uint8Array): boolean;
  /** Puts a frame on this handler's interface (a Host handing it to its own VMs). */
  deliver(frame: Uint8Array): void;
  /** The handler's own link, to tell switched frames between two peers from local ones. */
  readonly link: FrameLink | null;
}

/**
 * How a Host reaches one remote MAC: learned from the source of frames its peer sends (through
 * the Proxy), and direct while a direct route to the Host that carries it is up.
 */
export interface Path {
  readonly mac: string;
  /** The direct route: a link to the far Host, its server's address, its handler number. */
  direct: { link: FrameLink; peer: string; number: number } | null;
  /** Frames and bytes sent to the MAC, by way of each path. */
  viaProxy: { frames: number; bytes: number };
  viaDirect: { frames: number; bytes: number };
  /** Frames at the last sweep, to age idle paths out. */
  seenFrames: number;
  idleSweeps: number;
}

function newPath(mac: string): Path {
  return {
    mac,
    direct: null,
    viaProxy: { frames: 0, bytes: 0 },
    viaDirect: { frames: 0, bytes: 0 },
    seenFrames: 0,
    idleSweeps: 0,
  };
}

/** A Host learns at most this many remote MACs, over all its links (a switch's table). */
const MAX_PATHS = 16_384;

/** Broadcasts seen again this soon are a loop (retransmissions wait a second or more). */
const LOOP_WINDOW_MS = 500;
/** Learned routes idle this long are forgotten (a switch's MAC ageing). */
const ROUTE_AGE_MS = 300_000;

/** The handlers of one device, by role and MAC. */
class DeviceTable {
  readonly proxies: FabricPort[] = [];
  readonly proxyByMac = new Map<number, FabricPort>();
  readonly hostByMac = new Map<number, FabricPort>();
  /** Broadcasts this device put out from its peers (Host side duplicate check). */
  readonly injected = new LoopGuard();
}

/** The links a broadcast went to, in one `fromPeer` (reused: no allocation per frame). */
const sentTo: (FrameLink | null)[] = [];

/** What a handler does with a frame from its peer. */
export const Verdict = {
  /** Put it on the interface (after offload.ts). */
  Inject: 0,
  /** It went to other handlers only. */
  Switched: 1,
  /** A loop or a duplicate: drop it. */
  Loop: 2,
} as const;
export type Verdict = typeof Verdict[keyof typeof Verdict];

/** Frames switched past a handler: the switch calls this for unicast between two peers. */
type SwitchedHook = (from: FabricPort, to: FabricPort, frame: Uint8Array) => void;

export class Fabric {
  readonly #devices = new Map<string, DeviceTable>();
  /** A Host's paths, by the Proxy link they were learned over, then by MAC. */
  readonly #paths = new Map<FrameLink | null, Map<number, Path>>();
  #pathCount = 0;
  /** Every Host-role handler of this server by its MACs, whatever its device. */
  readonly #hostPorts = new Map<number, FabricPort>();
  /** Every Proxy-role handler of this server by its MACs, whatever its device. */
  readonly #proxyPorts = new Map<number, FabricPort>();
  /** Called for unicast switched between handlers whose peers differ (direct path candidates). */
  onSwitched: SwitchedHook | null = null;
  /** Called for each remote MAC a Host learns over a link (the control plane keeps a copy). */
  onLearned: ((via: FrameLink | null, mac: string) => void) | null = null;

  join(port: FabricPort): void {
    let table = this.#devices.get(port.device);
    if (!table) this.#devices.set(port.device, table = new DeviceTable());
    const byMac = port.role === "proxy" ? table.proxyByMac : table.hostByMac;
    for (const mac of port.macs) {
      const key = mac48(macBytes(mac), 0);
      byMac.set(key, port);
      (port.role === "host" ? this.#hostPorts : this.#proxyPorts).set(key, port);
    }
    if (port.role === "proxy") table.proxies.push(port);
  }

  leave(port: FabricPort): void {
    const table = this.#devices.get(port.device);
    if (!table) return;
    const byMac = port.role === "proxy" ? table.proxyByMac : table.hostByMac;
    for (const [key, p] of byMac) if (p === port) byMac.delete(key);
    for (const [key, p] of this.#hostPorts) if (p === port) this.#hostPorts.delete(key);
    for (const [key, p] of this.#proxyPorts) if (p === port) this.#proxyPorts.delete(key);
    const i = table.proxies.indexOf(port);
    if (i >= 0) table.proxies.splice(i, 1);
    if (table.proxies.length === 0 && table.hostByMac.size === 0) {
      this.#devices.delete(port.device);
    }
  }

  /** A frame from `port`'s peer (steps 1–5): what `port` should do with it. */
  fromPeer(port: FabricPort, frame: Uint8Array): Verdict {
    const table = this.#devices.get(port.device);
    if (!table) return Verdict.Inject;
    if (port.role === "host") {
      const src = mac48(frame, 6);
      if (table.hostByMac.has(src)) return Verdict.Loop;
      if ((frame[0] & 1) === 1) {
        if (table.injected.repeat(frame)) return Verdict.Loop;
        this.#fanOut(port, frame, src);
      }
      if ((frame[6] & 1) === 0) this.#learn(port.link, src, frame);
      return Verdict.Inject;
    }
    if ((frame[0] & 1) === 0) {
      const to = table.proxyByMac.get(mac48(frame, 0));
      if (!to || to === port) return Verdict.Inject;
      to.sendToPeer(frame);
      if (to.link !== port.link) this.onSwitched?.(port, to, frame);
      return Verdict.Switched;
    }
    // Once per peer link, never back to the source's: each Host fans it out itself.
    const broadcast = isBroadcastFrame(frame);
    sentTo.length = 0;
    sentTo.push(port.link);
    for (const to of table.proxies) {
      if (!(broadcast || to.multicast) || sentTo.includes(to.link)) continue;
      sentTo.push(to.link);
      to.sendToPeer(frame);
    }
    return Verdict.Inject;
  }

  /**
   * A Host hands a broadcast or multicast to its other devices that are on the same link as
   * `from` (step 5, and step 6 for a VM's own broadcast), except where `src` lives.
   */
  #fanOut(from: FabricPort, frame: Uint8Array, src: number): void {
    const multicast = !isBroadcastFrame(frame);
    for (const [device, table] of this.#devices) {
      if (device === from.device || table.hostByMac.has(src)) continue;
      let to: FabricPort | undefined;
      for (const p of table.hostByMac.values()) {
        if (p.link === from.link && (!multicast || p.multicast)) {
          to = p;
          break;
        }
      }
      if (to && !table.injected.repeat(frame)) to.deliver(frame);
    }
  }

  /**
   * Where a Host's captured frame goes (steps 6, 7): "local", the direct route to use, or
   * null for the handler's own link (the frame is counted on the MAC's path either way).
   */
  toward(port: FabricPort, frame: Uint8Array): "local" | Path | null {
    if ((frame[0] & 1) === 1) {
      this.#fanOut(port, frame, mac48(frame, 6));
      return null;
    }
    const dst = mac48(frame, 0);
    const local = this.#hostPorts.get(dst);
    if (local && local !== port && local.link === port.link) {
      if (local.device !== port.device) local.deliver(frame);
      return "local";
    }
    const path = this.#paths.get(port.link)?.get(dst);
    if (!path) return null;
    if (path.direct?.link.isOpen) return path;
    path.viaProxy.frames++;
    path.viaProxy.bytes += frame.length;
    return null;
  }

  #learn(via: FrameLink | null, key: number, frame: Uint8Array): void {
    let table = this.#paths.get(via);
    if (table?.has(key) || this.#pathCount >= MAX_PATHS) return;
    if (!table) this.#paths.set(via, table = new Map());
    const mac = Array.from(frame.subarray(6, 12), (b) => b.toString(16).padStart(2, "0"))
      .join(":");
    table.set(key, newPath(mac));
    this.#pathCount++;
    this.onLearned?.(via, mac);
  }

  /** The path to `mac` learned over `via` (a frame from `mac` came in on that link), if any. */
  learned(via: FrameLink, mac: string): Path | undefined {
    return this.#paths.get(via)?.get(mac48(macBytes(mac), 0));
  }

  /** Whether a Host-role handler of this server carries `mac` (one of our own VMs). */
  carries(mac: string): boolean {
    return this.#hostPorts.has(mac48(macBytes(mac), 0));
  }

  /**
   * A direct route to `mac` for the handlers on `via` (the Proxy link that offered it): their
   * frames for it go on `link` (to `peer`), tagged `number`. False if `mac` was never learned
   * over `via`.
   */
  addRoute(via: FrameLink, mac: string, link: FrameLink, peer: string, number: number): boolean {
    const path = this.learned(via, mac);
    if (!path) return false;
    path.direct = { link, peer, number };
    return true;
  }

  /** `mac` goes through the Proxy `via` again; false if it had no direct route there. */
  removeRoute(via: FrameLink, mac: string): boolean {
    const path = this.learned(via, mac);
    if (!path?.direct) return false;
    path.direct = null;
    return true;
  }

  /** Every route over `link` falls back to the Proxy (the link closed). */
  removeRoutesOver(link: FrameLink): Path[] {
    const gone: Path[] = [];
    for (const path of this.#every()) {
      if (path.direct?.link !== link) continue;
      path.direct = null;
      gone.push(path);
    }
    return gone;
  }

  /** The Proxy link `via` closed: what was learned over it goes (a new link learns again). */
  forgetLink(via: FrameLink): void {
    const table = this.#paths.get(via);
    if (!table) return;
    this.#pathCount -= table.size;
    this.#paths.delete(via);
  }

  /** The paths learned over `via`, or over every link. */
  paths(via?: FrameLink | null): Path[] {
    return via === undefined ? [...this.#every()] : [...this.#paths.get(via)?.values() ?? []];
  }

  *#every(): Generator<Path> {
    for (const table of this.#paths.values()) yield* table.values();
  }

  /**
   * Whether a broadcast or multicast captured by Proxy handler `port` is its Host's own, come
   * back over the LAN from another of this server's devices (step 8).
   */
  handedOver(port: FabricPort, frame: Uint8Array): boolean {
    const owner = this.#proxyPorts.get(mac48(frame, 6));
    return owner !== undefined && owner.device !== port.device && owner.link === port.link &&
      port.link !== null;
  }

  /** Ages idle paths out; called every `everyMs`. Returns every path forgotten, and its link. */
  sweep(everyMs: number): { via: FrameLink | null; path: Path }[] {
    const gone: { via: FrameLink | null; path: Path }[] = [];
    for (const [via, table] of this.#paths) {
      for (const [key, p] of table) {
        const frames = p.viaProxy.frames + p.viaDirect.frames;
        p.idleSweeps = frames === p.seenFrames ? p.idleSweeps + 1 : 0;
        p.seenFrames = frames;
        if (p.idleSweeps * everyMs < ROUTE_AGE_MS) continue;
        table.delete(key);
        this.#pathCount--;
        gone.push({ via, path: p });
      }
      if (table.size === 0) this.#paths.delete(via);
    }
    return gone;
  }
}

/**
 * Recently seen broadcast and multicast frames, by a hash of their first bytes and length: a
 * ring of RING entries, each good for LOOP_WINDOW_MS. Only multi-destination frames come here,
 * so the hashing costs nothing on the unicast path.
 */
const RING = 64;
const HASHED_BYTES = 96;

export class LoopGuard {
  readonly #hashes = new Int32Array(RING);
  readonly #times = new Float64Array(RING).fill(-Infinity);
  #next = 0;

  /** Whether `frame` was remembered within the window. */
  seen(frame: Uint8Array): boolean {
    const h = hashFrame(frame);
    const now = performance.now();
    for (let i = 0; i < RING; i++) {
      if (this.#hashes[i] === h && now - this.#times[i] < LOOP_WINDOW_MS) return true;
    }
    return false;
  }

  remember(frame: Uint8Array): void {
    this.#hashes[this.#next] = hashFrame(frame);
    this.#times[this.#next] = performance.now();
    this.#next = (this.#next + 1) % RING;
  }

  /** `seen`, then `remember`: true if it is a repeat. */
  repeat(frame: Uint8Array): boolean {
    if (this.seen(frame)) return true;
    this.remember(frame);
    return false;
  }
}

/**
 * FNV-1a over the first bytes, mixed with the length. The TCP or UDP checksum counts as zero:
 * one copy of a frame may carry it complete and another partial (a UDP path leaves checksums to
 * the VNET that receives it: offload.ts `L4Checksums`), and they are still the same frame.
 */
function hashFrame(frame: Uint8Array): number {
  let h = 0x811c9dc5 ^ frame.length;
  const n = Math.min(frame.length, HASHED_BYTES);
  const skip = l4ChecksumAt(frame);
  for (let i = 0; i < n; i++) {
    h = Math.imul(h ^ (i === skip || i === skip + 1 ? 0 : frame[i]), 0x01000193);
  }
  return h | 0;
}

/**
 * Where the TCP or UDP checksum of `frame` is (Ethernet, one VLAN tag at most, IPv4 or IPv6 that
 * is not a later fragment), or -2 if it has none there.
 */
function l4ChecksumAt(frame: Uint8Array): number {
  const l3 = networkOffset(frame);
  if (l3 === 0) return -2;
  const type = etherTypeAt(frame, l3);
  let l4: number, proto: number;
  if (type === ETHERTYPE_IPV4 && frame.length >= l3 + 20) {
    if ((((frame[l3 + 6] & 0x1f) << 8) | frame[l3 + 7]) !== 0) return -2;
    l4 = l3 + ((frame[l3] & 15) << 2);
    proto = frame[l3 + 9];
  } else if (type === ETHERTYPE_IPV6 && frame.length >= l3 + 40) {
    const upper = ipv6UpperLayer(frame, l3, frame.length);
    if (upper < 0) return -2;
    l4 = upper >>> 8;
    proto = upper & 0xff;
  } else {
    return -2;
  }
  return proto === 6 ? l4 + 16 : proto === 17 ? l4 + 6 : -2;
}
