/**
 * The UDP transport between two VNET servers (issue 18): a second path for the frames of a
 * link's handlers, beside the link's TCP, TLS or ssh stream, which stays for the control plane
 * and as the fallback. Over a lossy WAN, UDP spares the VMs' flows TCP's head-of-line blocking:
 * one lost datagram holds up nothing behind it.
 *
 * One UDP socket per server (the listen address and port, `--udp-port`), owned by the data-path
 * worker and waited for in its poll. Per link, a `UdpPeerLink` that the link's frame end
 * (OwnedSocket, ForwardedLink) hands a frame to first (`bypass`); it takes the frame when its
 * handler goes by UDP and the path works, and otherwise leaves it to the stream. A path punched
 * between two Hosts behind NAT (control/direct.ts) has no link: a `PunchedLink` stands for it in
 * the fabric, open while the path works.
 *
 * Datagrams:
 *   - plain (the link is plain TCP): VXLAN (RFC 7348), 8 bytes of header and the Ethernet frame,
 *     the VNI the handler number's low 24 bits. VNI 0 carries VNET's keepalive:
 *     "VNKA", the link's token (u32, agreed over the link), flags (u8), a sequence number
 *     (u32), the loss it sees (u8), the size of the probe it answers (u16, or 0), its send time
 *     (u32, µs) and the queueing delay it sees of the peer's datagrams (u16, 0.1 ms units, or
 *     0xffff): 22 bytes.
 *     A datagram is taken only from the link's peer address; a keepalive with the token from the
 *     peer's IP address and another port moves the port (NAT rebinding).
 *   - sealed (TLS or ssh links): link/udp/session.ts's 16-byte header, then, sealed, the
 *     handler number (u32) and the frame; handler 0xffffffff is the keepalive, with flags (u8),
 *     a sequence number (u32), the loss it sees (u8), the size of the probe it answers (u16),
 *     its send time (u32) and the queueing delay it sees (u16), as in a plain one.
 *     An authenticated datagram from a new address moves the peer there (roaming).
 *   A probe (`vnet doctor --peer`): VNI 0, "VNPR", a token (u32) the server gave the doctor over
 *   an authenticated control link, zeros to 14 bytes. The server sends it back as it came, up to
 *   four copies per token (the doctor resends in case one is lost either way): the doctor learns
 *   that UDP gets through both ways, and no stranger gets an answer (nor one larger than what it
 *   sent).
 *   Keepalive flags: bit 0, "I have heard you lately"; bit 1, "idle" (below); bit 2, "probe": a
 *   keepalive padded to a size to find the path's MTU (path_mtu_search.ts), not counted as one, and
 *   answered at once with a keepalive that gives its size; bit 3, "timed": one sent between the
 *   counted ones of a busy path for its send time alone (TIMED_KEEPALIVE_MS), not counted
 *   either. The gaps in the sequence numbers give the loss of the peer's datagrams here, over its
 *   last LOSS_WINDOW keepalives; each keepalive reports it back (a percentage, NO_LOSS_FIGURE while not known), so each side knows the loss of
 *   what it sends. The send times give the time the peer's datagrams waited in the path's queues
 *   (path_queue.ts), reported back likewise: a side whose bulk fills a queue somewhere on the path
 *   paces its datagrams below that bottleneck, with a fair queue in front (path_shaper.ts), and
 *   until the pace starts drops some of its full-size frames, as CoDel would at that queue.
 *   An older VNET's keepalives are shorter (14 or 16 bytes): what they lack is taken as unknown.
 *
 * Is the path usable? Each side sends a keepalive every KEEPALIVE_MS, and every
 * BUSY_KEEPALIVE_MS (with a timed one every TIMED_KEEPALIVE_MS between) while the path carries
 * frames either way; a side sends frames by UDP while it has heard the peer within DOWN_AFTER_MS,
 * the peer's last keepalive says it hears us, and the loss it reports is not far worse than a
 * working path's. So a path blocked either way moves the frames to the stream within ~4 s, one
 * that loses LOSSY_PERCENT of what we send within ~4 s of traffic, and they come back once both
 * ways work again. The side behind NAT opens the mapping
 * with its first keepalive, and the keepalives hold it.
 *
 * "Far worse" is a fixed bar, not the link's own loss: the kernel knows a TCP link's
 * retransmissions, but a TLS link's socket is the runtime's and cannot be asked. A quarter of
 * the datagrams lost is what a UDP policer or a congested UDP queue does, and what no path that
 * carries TCP usefully does; below it, UDP serves the VMs' flows better than a stream whose one
 * lost segment holds up every flow behind it.
 *
 * Checksums: a frame's TCP and UDP checksums are left partial when the peer said it completes
 * them (control/udp_transport.ts, offload.ts `L4Checksums`), and summed here otherwise.
 *
 * MTU: the inner IP MTU is the path's less the outer headers. The path's is what probes confirmed
 * (path_mtu_search.ts: 1280 until a larger one crosses, so a hop whose ICMP is filtered is no black
 * hole; a peer of an older VNET never answers, and the kernel's figure is used), within the
 * kernel's figure (its route and PMTU cache, `IP_MTU`); as for VXLAN tunnels (vxlan_tunnels.ts),
 * TCP's MSS is clamped both ways, super-frames are cut to the path, IPv4 without DF is fragmented,
 * and what is left is answered with ICMP "too big" toward the sender. DF is set on every datagram;
 * a datagram the kernel refuses as too big (EMSGSIZE, after ICMP lowered the path's MTU) makes the
 * link read the MTU again.
 */
import { messageOf } from "../errors.ts";
import { DatagramStatus, type UdpAddress, UdpSocket } from "../io/udp_socket.ts";
import { poller } from "../io/poller.ts";
import { type Logger } from "../log.ts";
import { type SessionKeys } from "../link/udp/keys.ts";
import {
  HEADER_BYTES,
  OVERHEAD_BYTES,
  SEALED_DATAGRAM_TYPE,
  UdpCryptoSession,
} from "../link/udp/session.ts";
import { clampMss, PathFit } from "./mtu.ts";
import { type L4Checksums } from "./offload.ts";
import { PathMtuSearch } from "./path_mtu_search.ts";
import { PathShaper } from "./path_shaper.ts";
import {
  decodeDelay,
  encodeDelay,
  HEAVY_FRAME_BYTES,
  NO_DELAY_FIGURE,
  PathCodel,
  QueueDelayEstimate,
  sendStamp,
} from "./path_queue.ts";
import { type FrameLink } from "./ports.ts";
import { decodeVxlan, encodeVxlan, VXLAN_HEADER_LENGTH } from "./vxlan.ts";

/** A keepalive goes out this often on every UDP path. */
const KEEPALIVE_MS = 1000;
/** ... and this often while the path carries frames: the loss is known within seconds. */
const BUSY_KEEPALIVE_MS = 100;
/**
 * ... and in between, while it does, a timed keepalive this often: the queue the frames build
 * on the path is known within a few tens of ms (path_queue.ts). It is not counted for the loss
 * (flag TIMED; it repeats the last number), whose window stays LOSS_WINDOW of the above.
 */
const TIMED_KEEPALIVE_MS = 25;
/**
 * A keepalive is due this much early: the ticks that send them come once a second on an idle
 * server (every ACTIVE_TICK_MS on a busy one), and one a hair less than KEEPALIVE_MS after the
 * last would otherwise wait for the next tick, 2 s in all.
 */
const DUE_SLACK_MS = 100;
/**
 * The worker's tick while a path carries frames: keepalives are then due each second to within
 * this, not to within a second. A tick that finds one a hair short of due would leave it to the
 * next: after the last frame of a burst the gap could reach 1.9 s, and a NAT that forgot the
 * mapping meanwhile had the peer sending into nothing that long.
 */
const ACTIVE_TICK_MS = 250;
/** Nothing heard for this long: the path is down, frames go by the stream. */
const DOWN_AFTER_MS = 3000;
/**
 * An end whose path carried no frame either way for IDLE_AFTER_MS says so in its keepalives
 * (flag IDLE). While both ends are idle, each sends a keepalive every IDLE_KEEPALIVE_MS only, and
 * waits three of those before it calls the path down: a NAT's UDP mapping lasts 30 s or more,
 * and ten idle links cost a Proxy ten wake-ups a second less. The first unicast frame ends it:
 * that end tells the peer at once, both keep the 1 s pace again, and a peer that does not answer
 * within DOWN_AFTER_MS of that frame is down, as before. Broadcast and multicast frames do not:
 * a VM's own chatter (router solicitations, mDNS, ARP probes) comes every few seconds, and kept
 * every path of an idle server at the 1 s pace; such frames go as they come, at the slow pace's
 * patience, and the conversation they start wakes the path with its first unicast frame.
 */
const IDLE_AFTER_MS = 10_000;
const IDLE_KEEPALIVE_MS = 10_000;
/** Plain: the VNI of keepalives; a handler whose VNI would be 0 goes by the stream. */
const KEEPALIVE_VNI = 0;
/** Sealed: the handler number of keepalives. */
const KEEPALIVE_HANDLER = 0xffffffff;
const KEEPALIVE_MAGIC = [0x56, 0x4e, 0x4b, 0x41]; // "VNKA"
const PROBE_MAGIC = [0x56, 0x4e, 0x50, 0x52]; // "VNPR"
/** Probe tokens a server keeps at once, how long each is good for, and copies sent back. */
const MAX_PROBES = 16;
const PROBE_TTL_MS = 10_000;
const ECHOES_PER_PROBE = 4;
/** Keepalive flags. */
const HEARS_YOU = 1;
const IDLE = 2;
const PROBE = 4;
const TIMED = 8;
/** A keepalive's body: plain, after the VXLAN header; sealed, the plaintext. */
const PLAIN_KEEPALIVE_BYTES = 22;
const SEALED_KEEPALIVE_BYTES = 18;
/** ... as an older VNET sends it: with the loss and the probe's answer, but not timed. */
const PLAIN_UNTIMED_BYTES = 16;
const SEALED_UNTIMED_BYTES = 12;
/** Ethernet, IPv4 and UDP around every datagram (IPv6: 20 more). */
const OUTER_IPV4 = 20 + 8;
const OUTER_IPV6 = 40 + 8;
const ETHERNET = 14;
const HANDLER_BYTES = 4;
/**
 * The peer's last keepalives one loss figure is made of (4 s of a busy path). Forty, not fewer:
 * the figure is a sample, and at 40% loss a window of 20 stays under LOSSY_PERCENT for more than
 * 5 s about one time in fifty (a window of 40: one in two hundred), while at 10% loss it crosses
 * it several times as often.
 */
export const LOSS_WINDOW = 40;
/** Fewer keepalives than this in the window give no figure yet (2 s of a busy path). */
export const LOSS_MIN_SAMPLES = 20;
/** The loss byte of a keepalive that has no figure to give. */
const NO_LOSS_FIGURE = 255;
/** The peer loses this much of what we send: frames go by the stream... */
const LOSSY_PERCENT = 25;
/** ... until it loses no more than this, and at least this long after. */
const CLEAR_PERCENT = 5;
const LOSSY_HOLD_MS = 5000;
/** The path MTU assumed until the kernel says otherwise. */
const DEFAULT_PATH_MTU = 1500;
/**
 * The largest path MTU used (and probed): a jumbo frame's. Loopback's 65536 would make a probe
 * of 64 KiB; no Ethernet path between two servers carries more than this.
 */
const MAX_PATH_MTU = 9216;

/** Where a UDP path hands what it received. */
export interface UdpSink {
  /** A frame for `handler` from the link numbered `link` (or a too-big answer for it). */
  deliver(link: number, handler: number, frame: Uint8Array): void;
  /** The path went up or down (frames moved to or from the stream). */
  changed(link: number, up: boolean, why: string): void;
  /**
   * A frame of `handler`'s was cut into `extra` + 1 to fit the path: the sender counts what
   * the peer will receive, so that one end's frames out are the other's frames in.
   */
  cut(handler: number, extra: number): void;
  /** A frame of `handler`'s was dropped: the path's queue is too long (path_queue.ts). */
  dropped(handler: number): void;
}

/** What `open` needs of a link's UDP path, as the two servers agreed it over the link. */
export interface UdpPathSpec {
  /** The peer's address, and its UDP port as it announced it. */
  host: string;
  port: number;
  /** Sealed with the keys when given; plain VXLAN otherwise. */
  keys: SessionKeys | null;
  /** Our session id (sealed) and the peer's; our keepalive token (plain) and the peer's. */
  localId: number;
  peerId: number;
  token: number;
  peerToken: number;
  /** The peer completes the TCP and UDP checksums of our frames (offload.ts `L4Checksums`). */
  peerCompletesChecksums?: boolean;
}

/** What `list` shows of a link's UDP path. */
export interface UdpPathState {
  /** lossy: both ways work, but the peer loses too much of what we send; frames by the link. */
  state: "up" | "down" | "lossy";
  sealed: boolean;
  peer: string;
  /** The inner IP MTU: the largest IP packet a datagram carries. */
  mtu: number;
  datagramsOut: number;
  datagramsIn: number;
  /** Frames sent by the stream because the path was down. */
  fallbackFrames: number;
  /** Datagrams refused: forged, replayed, malformed, from a stranger. */
  refused: number;
  /** Datagrams of ours the kernel would not send: a local firewall's drop, no route, ENOBUFS. */
  sendRefused: number;
  tooBig: number;
  /** Times the path went down. */
  downs: number;
  /** The share of the peer's last LOSS_WINDOW keepalives lost on the way here, %; null: not yet. */
  lossPercent: number | null;
  /** What the peer says of ours, likewise. */
  peerLossPercent: number | null;
  /** How long our datagrams wait in the path's queues as the peer sees it, ms; null: not known. */
  queueDelayMs: number | null;
  /** Frames dropped because they did (path_queue.ts), or because they waited here too long. */
  aqmDrops: number;
  /** The rate the path is paced at to keep its queue short, Mbit/s; null: not paced. */
  pacedMbps: number | null;
  /** partial: the peer completes our frames' TCP and UDP checksums, which we leave to it. */
  checksums: L4Checksums;
}

/** One link's UDP path. */
export class UdpPeerLink {
  isOpen = true;
  peer: UdpAddress;
  readonly session: UdpCryptoSession | null;
  readonly stats = {
    datagramsOut: 0,
    datagramsIn: 0,
    fallbackFrames: 0,
    sendRefused: 0,
    tooBig: 0,
    downs: 0,
    keepalivesOut: 0,
  };
  /** Datagrams of ours the peer refused are not seen here; ours refused from others are. */
  refused = 0;
  mtu = DEFAULT_PATH_MTU - OUTER_IPV4 - ETHERNET - VXLAN_HEADER_LENGTH;
  /** Handlers whose frames go by UDP, by VNI (plain); and the set of them. */
  readonly #byVni = new Map<number, number>();
  readonly #handlers = new Set<number>();
  #heardAt = -Infinity;
  #peerHearsUs = false;
  /** The peer's last keepalive said it is idle (keepalives every IDLE_KEEPALIVE_MS). */
  #peerIdle = false;
  /** Our last keepalive said we are idle: the peer then waits for us as for an idle end. */
  #saidIdle = false;
  /** The last frame either way; and when the path left idleness last. */
  #lastFrameAt: number;
  /** A unicast frame went out in this burst (bypass): the path is busy (IDLE_AFTER_MS). */
  #unicastOut = false;
  #activeSince = -Infinity;
  #up = false;
  #lastKeepalive = -Infinity;
  /** The last keepalive of either kind, counted or timed (#lastKeepalive: counted only). */
  #lastTimed = -Infinity;
  #keepalivesSent = 0;
  /** The peer's keepalives by sequence number, the last LOSS_WINDOW of them: 1 if it came. */
  readonly #arrived = new Uint8Array(LOSS_WINDOW);
  #firstSeq = -1;
  #lastSeq = -1;
  /** Keepalives lost on the way here over the window, in percent (null: not known yet). */
  lossPercent: number | null = null;
  /** What the peer reports of ours (null: not known yet). */
  peerLossPercent: number | null = null;
  #lossy = false;
  #lossySince = -Infinity;
  /** Frames came for the path since the port last looked (it then keeps the keepalives busy). */
  busy = false;
  readonly #fit = new PathFit();
  /** What becomes of our frames' TCP and UDP checksums: left to the peer if it completes them. */
  readonly #checksums: L4Checksums;
  /** The path's MTU as probes confirmed it, within the kernel's. */
  readonly #search: PathMtuSearch;
  /** The size of a probe from the peer, answered in our next keepalive (0: none). */
  #probeHeard = 0;
  /**
   * Whether the peer's keepalives have the probe answer (null: none heard yet). An older VNET's
   * do not: it would never answer a probe, so the path takes the kernel's figure as before.
   */
  #peerAnswersProbes: boolean | null = null;
  /** The handler of the frame being sent (the emit and too-big callbacks have no room for it). */
  #sending = 0;
  /** Datagrams of the frame being sent to leave out: the queue's drop (path_queue.ts). */
  #skip = 0;
  /** The queue the peer's datagrams wait in on their way here, and the one ours do. */
  readonly #arrivals = new QueueDelayEstimate();
  readonly #codel = new PathCodel();
  /** The pace and the fair queue that keep the path's own queue short (path_shaper.ts). */
  readonly #shaper: PathShaper = new PathShaper({
    transmit: (handler, frame) => this.#transmit(handler, frame),
    dropped: (handler) => this.port.sink.dropped(handler),
    wakeAt: (at) => poller.at(at, this.#shaper.pump),
  });

  constructor(
    readonly number: number,
    readonly spec: UdpPathSpec,
    private readonly port: UdpPeerPort,
    now: number,
  ) {
    this.peer = port.socket.peer(spec.host, spec.port);
    this.#checksums = spec.peerCompletesChecksums ? "partial" : "complete";
    // A new path is busy until proven idle: it comes up at the pace of a busy one.
    this.#lastFrameAt = now;
    this.#search = new PathMtuSearch(this.#kernelPathMtu());
    this.session = spec.keys
      ? new UdpCryptoSession({
        keys: spec.keys,
        localId: spec.localId,
        peerId: spec.peerId,
        now,
      })
      : null;
    this.readMtu();
  }

  get up(): boolean {
    return this.#up;
  }

  /**
   * Takes `handler`'s frames from now on, where it can (plain: its VNI must be free and not
   * 0); false if they stay on the stream.
   */
  carry(handler: number): boolean {
    if (!this.session) {
      const vni = handler & 0xffffff;
      const holder = this.#byVni.get(vni);
      if (vni === KEEPALIVE_VNI || (holder !== undefined && holder !== handler)) return false;
      this.#byVni.set(vni, handler);
    }
    this.#handlers.add(handler);
    return true;
  }

  /** Whether `handler`'s frames go by this path (while it is up). */
  carries(handler: number): boolean {
    return this.#handlers.has(handler);
  }

  /** `handler`'s frames go by the stream again. */
  drop(handler: number): void {
    this.#handlers.delete(handler);
    if (!this.session && this.#byVni.get(handler & 0xffffff) === handler) {
      this.#byVni.delete(handler & 0xffffff);
    }
  }

  /** Whether `handler`'s frames go by UDP (the link's bypass): null leaves it to the stream. */
  bypass = (handler: number, frame: Uint8Array): boolean | null => {
    if (!this.#handlers.has(handler)) return null;
    if (!this.busy) {
      this.busy = true;
      this.port.busy(this);
    }
    if ((frame[0] & 1) === 0) this.#unicastOut = true;
    if (!this.#up) {
      this.stats.fallbackFrames++;
      return null;
    }
    // The queue on the path is too long: one datagram of a full-size frame (the first segment
    // of a super-frame) is left out. While the path is paced, its own queue's CoDel does that;
    // while the pacer finds that the wait does not answer its cuts, nobody does.
    if (
      this.#codel.dropping && frame.length >= HEAVY_FRAME_BYTES && !this.#shaper.pacing &&
      !this.#shaper.waitNotOurs && this.#codel.drop(performance.now())
    ) {
      this.#skip = 1;
      this.port.sink.dropped(handler);
    }
    return this.#shaper.offer(handler, frame);
  };

  /** Sends a frame now: cut to the path, each piece a datagram. False if none went. */
  #transmit(handler: number, frame: Uint8Array): boolean {
    if (!this.isOpen) return false;
    this.#sending = handler;
    const sent = this.#fit.send(frame, this.mtu, this.#emit, this.#tooBig, this.#checksums);
    this.#skip = 0;
    if (sent > 1) this.port.sink.cut(handler, sent - 1);
    return sent > 0;
  }

  /** Tells the sender of a frame too big for the path so: one function, not one a frame. */
  #tooBig = (reply: Uint8Array): void => {
    this.stats.tooBig++;
    this.port.sink.deliver(this.number, this.#sending, reply);
  };

  #emit = (frame: Uint8Array): void => {
    if (this.#skip > 0) {
      this.#skip--;
      return;
    }
    if (this.port.sendFrame(this, this.#sending, frame)) this.stats.datagramsOut++;
  };

  /** A frame that came by UDP for `handler`: clamped, and handed on. */
  receive(handler: number, frame: Uint8Array): void {
    // Frames coming keep the keepalives busy too: the peer learns the queue they wait in.
    if (!this.busy) {
      this.busy = true;
      this.port.busy(this);
    }
    this.stats.datagramsIn++;
    clampMss(frame, this.mtu - 40);
    this.port.sink.deliver(this.number, handler, frame);
  }

  /** The VNI's handler (plain), or -1. */
  handlerOfVni(vni: number): number {
    return this.#byVni.get(vni) ?? -1;
  }

  /**
   * A keepalive from the peer (its `seq`-th) with its flags: it hears us (or not), is idle (or
   * not), and loses `peerLoss` percent of ours (NO_LOSS_FIGURE: it cannot tell yet).
   */
  heard(
    now: number,
    flags: number,
    seq: number,
    peerLoss = NO_LOSS_FIGURE,
    /** The size of a probe of ours it answers (0: none; -1: an older VNET, which cannot). */
    probeAnswer = 0,
    /** When it was sent, on the peer's clock (sendStamp); -1: an older VNET's, not timed. */
    stamp = -1,
    /** How long ours wait in the path's queues, as the peer sees it (path_queue.ts). */
    peerDelay = NO_DELAY_FIGURE,
  ): void {
    if (stamp >= 0) this.#arrivals.sample(stamp, now);
    const delay = decodeDelay(peerDelay);
    if (delay !== null) {
      this.#codel.report(delay, now);
      this.#shaper.report(delay, now);
    }
    if (probeAnswer >= 0 && probeAnswer <= MAX_PATH_MTU) {
      this.#peerAnswersProbes = true;
      if (probeAnswer > 0) this.#search.acked(probeAnswer, now);
      this.#setMtu();
    } else if (probeAnswer < 0 && this.#peerAnswersProbes === null) {
      this.#peerAnswersProbes = false;
      this.#setMtu();
    }
    const wasSilent = !this.#heardRecently(now);
    const peerWoke = this.#peerIdle && (flags & IDLE) === 0;
    // After a silence, the keepalives lost in it say nothing of the path as it is now.
    if (wasSilent) this.#resetLoss();
    if ((flags & TIMED) === 0) this.#countLoss(seq);
    this.#heardAt = now;
    this.#peerHearsUs = (flags & HEARS_YOU) !== 0;
    this.#peerIdle = (flags & IDLE) !== 0;
    this.peerLossPercent = peerLoss <= 100 ? peerLoss : null;
    // The first word from the peer in a while, or since it woke: answer at once, so that it
    // knows we hear it.
    if (wasSilent || peerWoke) this.#keepalive(now);
    this.#judge(now);
  }

  /** A frame from the peer: it is heard; a unicast one wakes an idle path (IDLE_AFTER_MS). */
  alive(now: number, frame: Uint8Array): void {
    this.#heardAt = now;
    if ((frame[0] & 1) === 0) this.#active(now);
  }

  /** Every second or so: keepalives, whether the path is up, the session's keys, the MTU. */
  tick(now: number): void {
    // The slow pace only once the peer knows: until our keepalive says idle, the peer calls us
    // down after DOWN_AFTER_MS of silence, and a flap follows every burst.
    const slow = this.#idle(now) && this.#peerIdle && this.#saidIdle;
    const every = slow ? IDLE_KEEPALIVE_MS : KEEPALIVE_MS;
    if (now - this.#lastKeepalive >= every - DUE_SLACK_MS) this.#keepalive(now);
    this.#judge(now);
    this.#probe(now);
    this.session?.tick(now);
  }

  /** After a burst that had frames for the path: a keepalive if a busy path's is due. */
  busyTick(now: number): void {
    this.busy = false;
    if (this.#unicastOut) {
      this.#unicastOut = false;
      this.#active(now);
    }
    // Only broadcast and multicast on an idle path: it stays idle (IDLE_AFTER_MS).
    if (this.#idle(now)) return;
    if (now - this.#lastKeepalive >= BUSY_KEEPALIVE_MS) this.#keepalive(now);
    else if (now - this.#lastTimed >= TIMED_KEEPALIVE_MS) this.#keepalive(now, TIMED);
    this.#judge(now);
    this.#probe(now);
  }

  /** Whether a frame crossed the path either way within IDLE_AFTER_MS. */
  active(now: number): boolean {
    return !this.#idle(now);
  }

  /** Whether no frame crossed the path either way for IDLE_AFTER_MS. */
  #idle(now: number): boolean {
    return now - this.#lastFrameAt >= IDLE_AFTER_MS;
  }

  /** A frame crossed: an idle path wakes, and tells the peer at once. */
  #active(now: number): void {
    const wasIdle = this.#idle(now);
    this.#lastFrameAt = now;
    if (!wasIdle) return;
    this.#activeSince = now;
    this.#keepalive(now);
  }

  /** Reads the kernel's figure of the path's MTU again (after an EMSGSIZE, when it comes up). */
  readMtu(): void {
    this.#search.setCeiling(this.#kernelPathMtu());
    this.#setMtu();
  }

  /** A probe from the peer of `size` bytes (outer): answered at once. */
  probed(size: number, now: number): void {
    this.#probeHeard = size;
    this.#keepalive(now);
  }

  #kernelPathMtu(): number {
    try {
      return Math.min(MAX_PATH_MTU, this.port.socket.pathMtu(this.peer));
    } catch {
      return DEFAULT_PATH_MTU; // no route yet: the next datagram finds out
    }
  }

  /** The inner MTU from the path's: less the outer IP and UDP, VXLAN or the seal, Ethernet. */
  #setMtu(): void {
    const outer = this.peer.ipv4 ? OUTER_IPV4 : OUTER_IPV6;
    const inner = this.session ? OVERHEAD_BYTES + HANDLER_BYTES : VXLAN_HEADER_LENGTH;
    const path = this.#peerAnswersProbes === false ? this.#search.ceiling : this.#search.mtu;
    this.mtu = Math.max(576, path - outer - inner - ETHERNET);
  }

  /**
   * A probe of the path's MTU, when the search has one due: only while the path is up, and to
   * a peer that answers probes. It says whether we hear the peer, like any keepalive.
   */
  #probe(now: number): void {
    if (!this.#up || !this.#peerAnswersProbes) return;
    const size = this.#search.probe(now);
    if (size === 0) return;
    const flags = PROBE | (this.#heardRecently(now) ? HEARS_YOU : 0);
    this.port.sendKeepalive(this, flags, 0, NO_LOSS_FIGURE, 0, size);
  }

  state(): UdpPathState {
    const c = this.session?.counters;
    return {
      state: this.#up
        ? "up"
        : this.#lossy && this.#heardRecently(performance.now())
        ? "lossy"
        : "down",
      sealed: this.session !== null,
      peer: this.peer.toString(),
      mtu: this.mtu,
      datagramsOut: this.stats.datagramsOut,
      datagramsIn: this.stats.datagramsIn,
      fallbackFrames: this.stats.fallbackFrames,
      refused: this.refused +
        (c ? c.short + c.malformed + c.unknownEpoch + c.tooOld + c.replayed + c.forged : 0),
      sendRefused: this.stats.sendRefused,
      tooBig: this.stats.tooBig,
      downs: this.stats.downs,
      lossPercent: this.lossPercent,
      peerLossPercent: this.peerLossPercent,
      queueDelayMs: this.#codel.delayMs === null ? null : Math.round(this.#codel.delayMs * 10) / 10,
      aqmDrops: this.#codel.drops + this.#shaper.drops,
      pacedMbps: this.#shaper.rate === Infinity ? null : Math.round(this.#shaper.rate * 8 / 1000),
      checksums: this.#checksums,
    };
  }

  close(): void {
    if (!this.isOpen) return;
    this.isOpen = false;
    this.#up = false;
    this.session?.close();
  }

  /** A keepalive; `timed` (TIMED): one between the counted ones, for the path's queue only. */
  #keepalive(now: number, timed = 0): void {
    this.#lastTimed = now;
    if (!timed) this.#lastKeepalive = now;
    this.stats.keepalivesOut++;
    const flags = (this.#heardRecently(now) ? HEARS_YOU : 0) | (this.#idle(now) ? IDLE : 0) |
      timed;
    this.#saidIdle = (flags & IDLE) !== 0;
    const loss = this.lossPercent === null ? NO_LOSS_FIGURE : Math.round(this.lossPercent);
    // A timed one repeats the last number: an older VNET, which counts every keepalive, takes it
    // as a duplicate.
    const seq = timed ? Math.max(0, this.#keepalivesSent - 1) : this.#keepalivesSent++;
    this.port.sendKeepalive(
      this,
      flags,
      seq,
      loss,
      this.#probeHeard,
      0,
      encodeDelay(this.#arrivals.delayMs),
    );
    this.#probeHeard = 0;
  }

  /**
   * Whether the peer was heard within the silence it may keep: three of its keepalives. A path
   * that just woke gives an idle peer DOWN_AFTER_MS from then to answer.
   */
  #heardRecently(now: number): boolean {
    if (!this.#idle(now)) {
      return now - Math.max(this.#heardAt, this.#activeSince) < DOWN_AFTER_MS;
    }
    return now - this.#heardAt < (this.#peerIdle ? 3 * IDLE_KEEPALIVE_MS : DOWN_AFTER_MS);
  }

  /**
   * The path's loss, from the gaps in the peer's keepalive numbers over its last LOSS_WINDOW: a
   * datagram in the same queues as the frames. One that comes late, within the window, counts.
   */
  #countLoss(seq: number): void {
    // A short outage (a NAT that forgot its mapping) counts as loss, as it must: at 80% loss
    // runs of five are common, and a figure that started afresh on each would hide the loss. A
    // silence of DOWN_AFTER_MS starts it afresh (heard()).
    if (this.#firstSeq < 0 || seq + LOSS_WINDOW <= this.#lastSeq) {
      // The first, or far older than the window: a peer that started counting again.
      this.#resetLoss();
      this.#firstSeq = this.#lastSeq = seq;
      this.#arrived[seq % LOSS_WINDOW] = 1;
    } else if (seq > this.#lastSeq) {
      // Those skipped are lost until they come.
      for (let s = Math.max(this.#lastSeq + 1, seq - LOSS_WINDOW + 1); s < seq; s++) {
        this.#arrived[s % LOSS_WINDOW] = 0;
      }
      this.#arrived[seq % LOSS_WINDOW] = 1;
      this.#lastSeq = seq;
    } else if (seq >= this.#firstSeq) {
      this.#arrived[seq % LOSS_WINDOW] = 1; // late, within the window
    } else {
      return; // from before the figure started
    }
    const samples = Math.min(LOSS_WINDOW, this.#lastSeq - this.#firstSeq + 1);
    if (samples < LOSS_MIN_SAMPLES) return;
    let arrived = 0;
    for (let s = this.#lastSeq - samples + 1; s <= this.#lastSeq; s++) {
      arrived += this.#arrived[s % LOSS_WINDOW];
    }
    this.lossPercent = Math.round(100 * (samples - arrived) / samples);
  }

  #resetLoss(): void {
    this.#arrived.fill(0);
    this.#firstSeq = this.#lastSeq = -1;
    this.lossPercent = null;
  }

  #judge(now: number): void {
    const peerLoss = this.peerLossPercent;
    if (!this.#lossy && peerLoss !== null && peerLoss >= LOSSY_PERCENT) {
      this.#lossy = true;
      this.#lossySince = now;
    } else if (
      // Only a figure clears it: a peer that has none yet has not seen the loss end.
      this.#lossy && peerLoss !== null && peerLoss <= CLEAR_PERCENT &&
      now - this.#lossySince >= LOSSY_HOLD_MS
    ) {
      this.#lossy = false;
    }
    const up = this.isOpen && this.#peerHearsUs && this.#heardRecently(now) && !this.#lossy;
    if (up === this.#up) return;
    this.#up = up;
    if (up) this.readMtu();
    else this.stats.downs++;
    // Up: the first probe goes now, so a clean path has its full MTU a round trip later.
    if (up) this.#probe(now);
    this.port.sink.changed(
      this.number,
      up,
      up
        ? `both ways work (inner MTU ${this.mtu})`
        : !this.#heardRecently(now)
        ? `nothing heard for ${Math.round(now - this.#heardAt)} ms`
        : !this.#peerHearsUs
        ? "the peer does not hear us"
        : `the peer lost ${peerLoss}% of our last keepalives (the link carries the frames ` +
          `until it is ${CLEAR_PERCENT}% or less)`,
    );
  }
}

/** The probe datagram `vnet doctor` sends with the token a server gave it. */
export function probeDatagram(token: number): Uint8Array {
  const d = new Uint8Array(VXLAN_HEADER_LENGTH + ETHERNET);
  encodeVxlan(d, VXLAN_HEADER_LENGTH, KEEPALIVE_VNI);
  d.set(PROBE_MAGIC, VXLAN_HEADER_LENGTH);
  new DataView(d.buffer).setUint32(VXLAN_HEADER_LENGTH + 4, token);
  return d;
}

/**
 * A UDP path punched to another Host (control/direct.ts) as the fabric sees it: a direct route's
 * link that is open while the path works both ways. While it does not, the fabric sends the
 * route's frames through the Proxy, and takes them back as soon as it does: no control-plane
 * round trip either way, and each frame goes one way only.
 */
export class PunchedLink implements FrameLink {
  constructor(readonly number: number, readonly remote: string, readonly path: UdpPeerLink) {}

  get isOpen(): boolean {
    return this.path.isOpen && this.path.up;
  }

  sendFrame(handler: number, frame: Uint8Array): boolean {
    return this.path.bypass(handler, frame) ?? false;
  }
}

/** The server's UDP socket's own counters, for the metrics. */
export interface UdpPortStats {
  /** Datagrams the kernel refused to send (a local firewall's drop, no route, ENOBUFS). */
  sendRefused: number;
  /** Datagrams from no path's peer, or for no handler: dropped. */
  strangers: number;
  /** Datagrams too big for a receive slot: lost. */
  receiveTruncated: number;
}

/** The server's UDP socket for its links, and their paths. */
export class UdpPeerPort {
  readonly socket: UdpSocket;
  /** Datagrams from no link's peer, or for no handler. */
  strangers = 0;
  /** Datagrams the kernel refused to send (a local firewall's drop, no route, ENOBUFS). */
  sendRefused = 0;
  #lastSendError = "";
  /** Probes sent back. */
  probesAnswered = 0;
  /** Probe tokens given out: when each expires, and the copies it may still have sent back. */
  readonly #probes = new Map<number, { expires: number; echoes: number }>();
  readonly #links = new Map<number, UdpPeerLink>();
  /** Sealed: links by our session id. */
  readonly #byId = new Map<number, UdpPeerLink>();
  #flushing = false;
  #open = true;
  /** A keepalive, or a probe (padded up to a path's MTU). */
  readonly #keepalive = new Uint8Array(MAX_PATH_MTU);
  readonly #keepaliveView = new DataView(this.#keepalive.buffer);
  /** Links that had frames in this burst: their busy keepalives are looked at as it ends. */
  #busy: UdpPeerLink[] = [];
  #busyLooking: UdpPeerLink[] = [];
  constructor(
    address: string,
    port: number,
    readonly sink: UdpSink,
    private readonly log: Logger,
  ) {
    this.socket = UdpSocket.open({
      address,
      port,
      gso: true,
      gro: true,
      // 16 GRO buffers of up to 64 datagrams a read: 1 MiB of ours, not 4 (a Proxy with 100
      // handlers must stay under 150 MiB). The kernel's buffers absorb bursts meanwhile.
      receiveMessages: 16,
      receiveBufferBytes: 4 << 20,
      sendBufferBytes: 1 << 20,
    });
    poller.onReadable(this.socket.fd, this.#onReadable);
  }

  stats(): UdpPortStats {
    return {
      sendRefused: this.sendRefused,
      strangers: this.strangers,
      receiveTruncated: this.socket.rx.truncated,
    };
  }

  get port(): number {
    return this.socket.port;
  }

  /**
   * Opens link `number`'s path. Throws if a sealed path's session id is another path's: the
   * datagrams of one would go to the other (the ids are random, or derived from what a Proxy
   * chose, which must not be able to take over another path).
   */
  open(number: number, spec: UdpPathSpec, now: number): UdpPeerLink {
    const holder = spec.keys ? this.#byId.get(spec.localId) : undefined;
    if (holder && holder.number !== number) {
      throw new Error(`UDP session id ${spec.localId} is another path's (link ${holder.number})`);
    }
    this.closeLink(number);
    const link = new UdpPeerLink(number, spec, this, now);
    this.#links.set(number, link);
    if (link.session) this.#byId.set(spec.localId, link);
    link.tick(now);
    return link;
  }

  get(number: number): UdpPeerLink | undefined {
    return this.#links.get(number);
  }

  links(): IterableIterator<UdpPeerLink> {
    return this.#links.values();
  }

  closeLink(number: number): void {
    const link = this.#links.get(number);
    if (!link) return;
    link.close();
    this.#links.delete(number);
    if (link.session && this.#byId.get(link.spec.localId) === link) {
      this.#byId.delete(link.spec.localId);
    }
  }

  /** Every link's tick; the ms until the next when one is active (frames lately). */
  tick(now: number): number | undefined {
    let active = false;
    for (const link of this.#links.values()) {
      link.tick(now);
      active ||= link.active(now);
    }
    return active ? ACTIVE_TICK_MS : undefined;
  }

  /** Queues one frame of `handler` to the link's peer; the batch goes out after the burst. */
  sendFrame(link: UdpPeerLink, handler: number, frame: Uint8Array): boolean {
    const session = link.session;
    const size = session
      ? OVERHEAD_BYTES + HANDLER_BYTES + frame.length
      : VXLAN_HEADER_LENGTH + frame.length;
    const at = this.#reserve(link.peer, size);
    if (at < 0) return false;
    const data = this.socket.tx.data;
    if (session) {
      const body = at + HEADER_BYTES;
      data[body] = handler >>> 24;
      data[body + 1] = handler >>> 16;
      data[body + 2] = handler >>> 8;
      data[body + 3] = handler;
      data.set(frame, body + HANDLER_BYTES);
      const plaintext = data.subarray(body, body + HANDLER_BYTES + frame.length);
      if (session.seal(plaintext, data.subarray(at, at + size)) < 0) {
        // The send key is spent and no new one came: the datagram is not sent.
        this.socket.tx.count--;
        this.socket.tx.bytes = at;
        return false;
      }
    } else {
      data.set(frame, at + VXLAN_HEADER_LENGTH);
      encodeVxlan(data, at + VXLAN_HEADER_LENGTH, handler & 0xffffff);
    }
    return true;
  }

  /**
   * A probe with `token` is to be sent back (ECHOES_PER_PROBE copies at most) within
   * PROBE_TTL_MS; false if too many are waiting already.
   */
  expectProbe(token: number, now: number): boolean {
    for (const [t, p] of this.#probes) if (p.expires <= now) this.#probes.delete(t);
    if (this.#probes.size >= MAX_PROBES) return false;
    this.#probes.set(token >>> 0, { expires: now + PROBE_TTL_MS, echoes: ECHOES_PER_PROBE });
    return true;
  }

  /** `link` has frames in this burst: a busy path's keepalive goes with them if it is due. */
  busy(link: UdpPeerLink): void {
    this.#busy.push(link);
    if (!this.#flushing) {
      this.#flushing = true;
      poller.defer(this.#flush);
    }
  }

  /**
   * A keepalive to the link's peer; with `probeSize`, padded so that its IP packet is that many
   * bytes (a probe of the path's MTU).
   */
  sendKeepalive(
    link: UdpPeerLink,
    flags: number,
    seq: number,
    loss: number,
    probeAck: number,
    probeSize = 0,
    /** The queueing delay of the peer's datagrams here (path_queue.ts's wire figure). */
    delay = NO_DELAY_FIGURE,
  ): void {
    const stamp = sendStamp(performance.now());
    const k = this.#keepalive;
    const view = this.#keepaliveView;
    const payload = probeSize - (link.peer.ipv4 ? OUTER_IPV4 : OUTER_IPV6);
    let n: number;
    if (link.session) {
      const length = Math.max(SEALED_KEEPALIVE_BYTES, payload - OVERHEAD_BYTES);
      const body = k.subarray(HEADER_BYTES, HEADER_BYTES + length);
      view.setUint32(HEADER_BYTES, KEEPALIVE_HANDLER);
      body[4] = flags;
      view.setUint32(HEADER_BYTES + 5, seq);
      body[9] = loss;
      view.setUint16(HEADER_BYTES + 10, probeAck);
      view.setUint32(HEADER_BYTES + 12, stamp);
      view.setUint16(HEADER_BYTES + 16, delay);
      body.fill(0, SEALED_KEEPALIVE_BYTES);
      n = link.session.seal(body, k);
      if (n < 0) return;
    } else {
      n = Math.max(VXLAN_HEADER_LENGTH + PLAIN_KEEPALIVE_BYTES, payload);
      k.set(KEEPALIVE_MAGIC, VXLAN_HEADER_LENGTH);
      view.setUint32(VXLAN_HEADER_LENGTH + 4, link.spec.token);
      k[VXLAN_HEADER_LENGTH + 8] = flags;
      encodeVxlan(k, VXLAN_HEADER_LENGTH, KEEPALIVE_VNI);
      view.setUint32(VXLAN_HEADER_LENGTH + 9, seq);
      k[VXLAN_HEADER_LENGTH + 13] = loss;
      view.setUint16(VXLAN_HEADER_LENGTH + 14, probeAck);
      view.setUint32(VXLAN_HEADER_LENGTH + 16, stamp);
      view.setUint16(VXLAN_HEADER_LENGTH + 20, delay);
      k.fill(0, VXLAN_HEADER_LENGTH + PLAIN_KEEPALIVE_BYTES, n);
    }
    const at = this.#reserve(link.peer, n);
    if (at >= 0) this.socket.tx.data.set(k.subarray(0, n), at);
  }

  close(): void {
    if (!this.#open) return;
    this.#open = false;
    for (const number of [...this.#links.keys()]) this.closeLink(number);
    poller.cancel(this.socket.fd);
    this.socket.close();
  }

  #reserve(peer: UdpAddress, size: number): number {
    const tx = this.socket.tx;
    let at = tx.reserve(peer, size);
    if (at < 0) {
      this.#flush();
      at = tx.reserve(peer, size);
      if (at < 0) return -1;
    }
    if (!this.#flushing) {
      this.#flushing = true;
      poller.defer(this.#flush);
    }
    return at;
  }

  #flush = (): void => {
    this.#flushing = false;
    if (!this.#open) return;
    // The burst's frames go first; the keepalives its paths owe then follow in a batch of their
    // own, so that no frame waits for them.
    this.#send();
    if (this.#busy.length > 0) {
      // Swapped, not copied: a keepalive that fills the batch flushes it from in here.
      const looking = this.#busy;
      this.#busy = this.#busyLooking;
      this.#busyLooking = looking;
      const now = performance.now();
      for (const link of looking) if (link.isOpen) link.busyTick(now);
      looking.length = 0;
      this.#send();
    }
  };

  /** Sends what the batch holds, now. */
  #send(): void {
    const tx = this.socket.tx;
    if (tx.count === 0) return;
    // A datagram the kernel refuses (EPERM from a local firewall's drop, ENOBUFS) is lost alone,
    // as one lost on the wire would be: flushing again sends the rest of the batch, which used
    // to be dropped with it (a keepalive behind a refused frame, and the path's loss doubled).
    // Each flush that throws has passed the refused datagrams, so this ends.
    for (;;) {
      try {
        tx.flush();
        break;
      } catch (e) {
        const error = messageOf(e);
        if (error !== this.#lastSendError) {
          // Each distinct failure once, not once per datagram.
          this.#lastSendError = error;
          this.log.warn("UDP send failed", { error });
        }
        if (tx.pending === 0) break;
      }
    }
    // A datagram the path refused as too big: its link reads the MTU again. One the kernel
    // refused is counted against its link too, so that `list` names the peer a firewall drops.
    for (let i = 0; i < tx.count; i++) {
      const status = tx.status[i];
      if (status !== DatagramStatus.TooBig && status !== DatagramStatus.Failed) continue;
      if (status === DatagramStatus.Failed) this.sendRefused++;
      for (const link of this.#links.values()) {
        if (link.peer !== tx.peerOf(i)) continue;
        if (status === DatagramStatus.TooBig) link.readMtu();
        else link.stats.sendRefused++;
      }
    }
    // What the kernel did not take now (a full buffer) is dropped: UDP is lossy anyway.
    tx.clear();
  }

  #onReadable = (): void => {
    const rx = this.socket.rx;
    const now = performance.now();
    try {
      for (let round = 0; round < 8 && this.#open; round++) {
        const n = rx.receive();
        for (let i = 0; i < n; i++) this.#dispatch(rx.data, rx.offset[i], rx.length[i], i, now);
        if (rx.drained) return;
      }
    } catch (e) {
      // Not a datagram's fault (those are counted): the socket is broken, stop reading it.
      if (this.#open) this.log.error("UDP receive failed", { error: messageOf(e) });
      poller.onReadable(this.socket.fd, null);
    }
  };

  /**
   * When datagram i reached this host, on performance.now()'s clock: a keepalive's one-way delay
   * (path_queue.ts) is measured to there. Not the burst's time, nor now: those add the time it
   * waited in our socket for this thread (this burst's work, a CPU the VMs' traffic keeps busy),
   * a wait no pace of the sender's shortens; cutting for it slowed a LAN's bulk copy to a fifth.
   */
  #arrivedAt(i: number): number {
    return performance.now() - this.socket.rx.waitedMs(i);
  }

  #dispatch(data: Uint8Array, at: number, length: number, i: number, now: number): void {
    if (length >= OVERHEAD_BYTES && data[at] === SEALED_DATAGRAM_TYPE) {
      const id = u32be(data, at + 4);
      const link = this.#byId.get(id);
      const plain = link?.session?.open(data.subarray(at, at + length));
      if (!link || !plain) {
        if (!link) this.strangers++;
        return;
      }
      // Authentic: the peer is where it sent from (roaming, a NAT's new mapping).
      const rx = this.socket.rx;
      if (!rx.sourceMatches(i, link.peer)) link.peer = rx.source(i);
      if (plain.length < HANDLER_BYTES) return;
      const handler = u32be(plain, 0);
      if (handler === KEEPALIVE_HANDLER) {
        if (plain.length < 9) return;
        if (plain[4] & PROBE) return link.probed(this.#outerSize(link, length), now);
        const seq = u32be(plain, 5);
        // An older VNET's keepalive has no loss byte, nor a probe's answer, nor a send time.
        const loss = plain.length >= 10 ? plain[9] : NO_LOSS_FIGURE;
        const answer = plain.length >= SEALED_UNTIMED_BYTES ? (plain[10] << 8) | plain[11] : -1;
        const timed = plain.length >= SEALED_KEEPALIVE_BYTES;
        link.heard(
          this.#arrivedAt(i),
          plain[4],
          seq,
          loss,
          answer,
          timed ? u32be(plain, 12) : -1,
          timed ? (plain[16] << 8) | plain[17] : NO_DELAY_FIGURE,
        );
        return;
      }
      const frame = plain.subarray(HANDLER_BYTES);
      link.alive(now, frame);
      link.receive(handler, frame);
      return;
    }
    const vni = decodeVxlan(data, at, length);
    if (vni < 0) {
      this.strangers++;
      return;
    }
    const rx = this.socket.rx;
    if (vni === KEEPALIVE_VNI) {
      const k = at + VXLAN_HEADER_LENGTH;
      if (length < VXLAN_HEADER_LENGTH + 13) return void this.strangers++;
      if (startsWith(data, k, PROBE_MAGIC)) return this.#answerProbe(data, at, length, i, now);
      if (!startsWith(data, k, KEEPALIVE_MAGIC)) return void this.strangers++;
      const token = u32be(data, k + 4);
      for (const link of this.#links.values()) {
        if (link.session || link.spec.peerToken !== token) continue;
        if (!rx.sourceHostMatches(i, link.peer)) continue;
        // The peer's port as its NAT maps it now.
        if (!rx.sourceMatches(i, link.peer)) link.peer = rx.source(i);
        if (data[k + 8] & PROBE) return link.probed(this.#outerSize(link, length), now);
        const seq = u32be(data, k + 9);
        // An older VNET's keepalive is 14 bytes (its last is a zero, not a loss figure, and it
        // has no probe's answer), or 16 (no send time).
        const answers = length >= VXLAN_HEADER_LENGTH + PLAIN_UNTIMED_BYTES;
        const timed = length >= VXLAN_HEADER_LENGTH + PLAIN_KEEPALIVE_BYTES;
        link.heard(
          this.#arrivedAt(i),
          data[k + 8],
          seq,
          answers ? data[k + 13] : NO_LOSS_FIGURE,
          answers ? (data[k + 14] << 8) | data[k + 15] : -1,
          timed ? u32be(data, k + 16) : -1,
          timed ? (data[k + 20] << 8) | data[k + 21] : NO_DELAY_FIGURE,
        );
        return;
      }
      this.strangers++;
      return;
    }
    for (const link of this.#links.values()) {
      if (link.session || !rx.sourceMatches(i, link.peer)) continue;
      const handler = link.handlerOfVni(vni);
      if (handler < 0) continue;
      if (length < VXLAN_HEADER_LENGTH + ETHERNET) break;
      const frame = data.subarray(at + VXLAN_HEADER_LENGTH, at + length);
      link.alive(now, frame);
      link.receive(handler, frame);
      return;
    }
    this.strangers++;
  }

  /** The IP packet a datagram of `length` bytes from `link`'s peer came in. */
  #outerSize(link: UdpPeerLink, length: number): number {
    return length + (link.peer.ipv4 ? OUTER_IPV4 : OUTER_IPV6);
  }

  #answerProbe(data: Uint8Array, at: number, length: number, i: number, now: number): void {
    const k = at + VXLAN_HEADER_LENGTH;
    const token = u32be(data, k + 4);
    const probe = this.#probes.get(token);
    if (!probe || probe.expires <= now) return void this.strangers++;
    if (--probe.echoes === 0) this.#probes.delete(token);
    const out = this.#reserve(this.socket.rx.source(i), length);
    if (out < 0) return;
    this.socket.tx.data.set(data.subarray(at, at + length), out);
    this.probesAnswered++;
  }
}

/** The big-endian u32 at `at`. */
function u32be(data: Uint8Array, at: number): number {
  return ((data[at] << 24) | (data[at + 1] << 16) | (data[at + 2] << 8) | data[at + 3]) >>> 0;
}

/** Whether the bytes at `at` are `magic`'s. */
function startsWith(data: Uint8Array, at: number, magic: readonly number[]): boolean {
  for (let j = 0; j < magic.length; j++) if (data[at + j] !== magic[j]) return false;
  return true;
}
