/**
 * The switch fabric of one server: what happens to a frame besides its own handler's path,
 * when a server carries several handlers on one device, or knows a direct path to a MAC.
 * This is what makes VNET a distributed switch (issue 11), as VNET/P's MAC routes and tinc's
 * switch mode do; handler.ts calls it on both paths.
 *
 * From a peer (Handler.receive → `fromPeer`), at a Proxy:
 *   1. Unicast to a MAC that another handler on this device carries: handed to that handler's
 *      link (switched), not put on the LAN. Known unicast is never flooded.
 *   2. Broadcast: put on the LAN and handed to every other handler on this device; multicast
 *      likewise, to those that carry multicast. Never back to the handler it came from.
 *   3. Anything else: put on the LAN.
 * From a peer, at a Host:
 *   4. A frame from a MAC this device's handlers carry is the VMs' own frame come back (a
 *      loop through the Proxy): dropped, and counted as a loop.
 *   5. A broadcast or multicast this device already put out (through another handler of the
 *      same device) is a duplicate: dropped, and counted as a loop.
 * From the capture (Handler.#forward → `toward`), at a Host:
 *   6. Unicast to a MAC another handler of this device carries: the device delivers it
 *      locally; it is not sent anywhere.
 *   7. Unicast to a MAC with a direct route (another Host, see control/direct.ts): sent on
 *      that route's link, not through the Proxy.
 * At a Proxy's capture, `loopGuard` drops a broadcast seen again within LOOP_WINDOW_MS: a LAN
 * frame that came back through a Host (a Host device bridged to the LAN), never a storm.
 */
import { type Link } from "../link/link.ts";
import { isBroadcastFrame, mac48, macBytes } from "./mac.ts";

/** What the fabric needs of a handler. */
export interface FabricPort {
  readonly number: number;
  readonly role: "proxy" | "host";
  readonly device: string;
  readonly macs: readonly string[];
  readonly multicast: boolean;
  /** Sends a frame to this handler's peer; false if it had to be dropped. */
  sendToPeer(frame: Uint8Array): boolean;
  /** The handler's own link, to tell switched frames between two peers from local ones. */
  readonly link: Link | null;
}

/** A path to a MAC straight to the Host that carries it. */
export interface DirectRoute {
  readonly mac: string;
  readonly link: Link;
  /** The far Host's handler number for that MAC: what the frames are tagged with. */
  readonly number: number;
  /** The local handler that asked for it (whose VMs talk to the MAC), for `list`. */
  readonly owner: number;
  frames: number;
  bytes: number;
  /** `frames` at the last sweep, to age idle routes out. */
  seenFrames: number;
  idleSweeps: number;
}

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
  readonly #routes = new Map<number, DirectRoute>();
  /** Called for unicast switched between handlers whose peers differ (direct path candidates). */
  onSwitched: SwitchedHook | null = null;

  join(port: FabricPort): void {
    let table = this.#devices.get(port.device);
    if (!table) this.#devices.set(port.device, table = new DeviceTable());
    const byMac = port.role === "proxy" ? table.proxyByMac : table.hostByMac;
    for (const mac of port.macs) byMac.set(mac48(macBytes(mac), 0), port);
    if (port.role === "proxy") table.proxies.push(port);
  }

  leave(port: FabricPort): void {
    const table = this.#devices.get(port.device);
    if (!table) return;
    const byMac = port.role === "proxy" ? table.proxyByMac : table.hostByMac;
    for (const [key, p] of byMac) if (p === port) byMac.delete(key);
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
      if (table.hostByMac.has(mac48(frame, 6))) return Verdict.Loop;
      if ((frame[0] & 1) === 1 && table.injected.repeat(frame)) return Verdict.Loop;
      return Verdict.Inject;
    }
    if ((frame[0] & 1) === 0) {
      const to = table.proxyByMac.get(mac48(frame, 0));
      if (!to || to === port) return Verdict.Inject;
      to.sendToPeer(frame);
      if (to.link !== port.link) this.onSwitched?.(port, to, frame);
      return Verdict.Switched;
    }
    const broadcast = isBroadcastFrame(frame);
    for (const to of table.proxies) {
      if (to !== port && (broadcast || to.multicast)) to.sendToPeer(frame);
    }
    return Verdict.Inject;
  }

  /**
   * Where a Host's captured frame goes (steps 6, 7): "local", a direct route, or null for the
   * handler's own link.
   */
  toward(port: FabricPort, frame: Uint8Array): "local" | DirectRoute | null {
    if ((frame[0] & 1) === 1) return null;
    const dst = mac48(frame, 0);
    const local = this.#devices.get(port.device)?.hostByMac.get(dst);
    if (local && local !== port) return "local";
    const route = this.#routes.get(dst);
    return route && route.link.isOpen ? route : null;
  }

  addRoute(mac: string, link: Link, number: number, owner: number): void {
    this.#routes.set(mac48(macBytes(mac), 0), {
      mac,
      link,
      number,
      owner,
      frames: 0,
      bytes: 0,
      seenFrames: 0,
      idleSweeps: 0,
    });
  }

  removeRoute(mac: string): DirectRoute | undefined {
    const key = mac48(macBytes(mac), 0);
    const route = this.#routes.get(key);
    this.#routes.delete(key);
    return route;
  }

  /** Forgets every route over `link` (it closed: traffic falls back to the Proxy). */
  removeRoutesOver(link: Link): DirectRoute[] {
    const gone: DirectRoute[] = [];
    for (const [key, r] of this.#routes) {
      if (r.link !== link) continue;
      this.#routes.delete(key);
      gone.push(r);
    }
    return gone;
  }

  routes(): DirectRoute[] {
    return [...this.#routes.values()];
  }

  /** Ages idle routes out; called every `everyMs`. Returns the routes forgotten. */
  sweep(everyMs: number): DirectRoute[] {
    const gone: DirectRoute[] = [];
    for (const [key, r] of this.#routes) {
      r.idleSweeps = r.frames === r.seenFrames ? r.idleSweeps + 1 : 0;
      r.seenFrames = r.frames;
      if (r.idleSweeps * everyMs < ROUTE_AGE_MS) continue;
      this.#routes.delete(key);
      gone.push(r);
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

/** FNV-1a over the first bytes, mixed with the length. */
function hashFrame(frame: Uint8Array): number {
  let h = 0x811c9dc5 ^ frame.length;
  const n = Math.min(frame.length, HASHED_BYTES);
  for (let i = 0; i < n; i++) h = Math.imul(h ^ frame[i], 0x01000193);
  return h | 0;
}
