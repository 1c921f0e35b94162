/**
 * VXLAN tunnels (RFC 7348, issue 18): a handler whose far end is not a VNET server but a VXLAN
 * endpoint, given by address and VNI: a Linux `vxlan` device, Open vSwitch, a switch that
 * terminates VXLAN. The forwarder owns one UDP socket for them (src/io/udp_socket.ts, port 4789
 * by default) and waits for it in its own poll.
 *
 *   to the endpoint:   Handler → `VxlanTunnel.sendFrame` → MSS clamp → cut to the path (offload.ts)
 *                      → 8-byte VXLAN header → a batch of datagrams, flushed once per burst
 *                      (sendmmsg, with UDP GSO where the kernel has it)
 *   from the endpoint: datagram → VNI and source host → MSS clamp → the tunnel's handler
 *
 * No MTU black holes (docs/wan.md): the inner IP MTU is the path's minus VXLAN's 50 bytes
 * (1450 on a 1500-byte path), and
 *   1. TCP SYN and SYN-ACK are clamped both ways to that MTU's MSS (as tinc and OpenVPN do), so
 *      TCP never sends a segment that does not fit;
 *   2. TCP super-frames (offloads) are cut into segments that fit, and IPv4 without DF is
 *      fragmented (offload.ts);
 *   3. what is left (IPv4 with DF, IPv6) is answered with ICMP "fragmentation needed" / "packet
 *      too big" toward the sender (mtu.ts), as Linux's own vxlan does, at most 100 a second.
 * VNET never fragments the outer UDP: VXLAN has no fragments (RFC 7348, section 4.3), and many
 * paths drop IP fragments.
 *
 * Plain VXLAN has no authentication: any host that can send to the port with the right source
 * address and VNI can inject frames, exactly as with a kernel vxlan device. Datagrams from any
 * other source or VNI are counted (`foreign`) and dropped.
 */
import { type UdpAddress, UdpSocket } from "../io/udp_socket.ts";
import { poller } from "../io/poller.ts";
import { type Logger } from "../log.ts";
import { messageOf } from "../errors.ts";
import { clampMss, PathFit } from "./mtu.ts";
import { type FrameLink } from "./ports.ts";
import { decodeVxlan, encodeVxlan, VXLAN_HEADER_LENGTH, VXLAN_OVERHEAD_IPV4 } from "./vxlan.ts";

/** The underlay MTU assumed for a tunnel's path (Ethernet). */
const PATH_MTU = 1500;

/** What a tunnel hands back to the forwarder. */
interface TunnelSink {
  /** A frame from the endpoint (or a too-big answer) for `handler`. */
  deliver(link: number, handler: number, frame: Uint8Array): void;
}

/** One handler's tunnel to a VXLAN endpoint; a FrameLink to the fabric and the handler. */
export class VxlanTunnel implements FrameLink {
  isOpen = true;
  readonly remote: string;
  /** The inner IP MTU: what fits in one datagram on the path. */
  readonly mtu = PATH_MTU - VXLAN_OVERHEAD_IPV4;
  readonly stats = { datagramsOut: 0, datagramsIn: 0, tooBig: 0 };
  readonly #fit = new PathFit();

  constructor(
    readonly number: number,
    readonly handler: number,
    readonly peer: UdpAddress,
    readonly vni: number,
    private readonly port: VxlanPort,
  ) {
    this.remote = `vxlan://${peer}/${vni}`;
  }

  sendFrame(handler: number, frame: Uint8Array): boolean {
    if (!this.isOpen) return false;
    const sent = this.#fit.send(frame, this.mtu, this.#send, (reply) => {
      this.stats.tooBig++;
      this.port.sink.deliver(this.number, handler, reply);
    });
    return sent > 0;
  }

  #send = (frame: Uint8Array): void => {
    if (this.port.send(this.peer, this.vni, frame)) this.stats.datagramsOut++;
  };

  /** A frame from the endpoint: clamped, and handed to the handler. */
  receive(frame: Uint8Array): void {
    this.stats.datagramsIn++;
    clampMss(frame, this.mtu - 40);
    this.port.sink.deliver(this.number, this.handler, frame);
  }
}

/** The forwarder's VXLAN socket and its tunnels. */
export class VxlanPort {
  /** Datagrams that were not VXLAN, or not from a tunnel's endpoint and VNI. */
  foreign = 0;
  readonly #socket: UdpSocket;
  readonly #tunnels = new Map<number, VxlanTunnel[]>();
  #flushing = false;
  #open = true;

  constructor(
    address: string,
    port: number,
    readonly sink: TunnelSink,
    private readonly log: Logger,
  ) {
    this.#socket = UdpSocket.open({ address, port });
    poller.onReadable(this.#socket.fd, this.#onReadable);
  }

  get tunnels(): number {
    let n = 0;
    for (const list of this.#tunnels.values()) n += list.length;
    return n;
  }

  /** A tunnel for `handler` to `host:port`, VNI `vni`. */
  open(number: number, handler: number, host: string, port: number, vni: number): VxlanTunnel {
    const tunnel = new VxlanTunnel(number, handler, this.#socket.peer(host, port), vni, this);
    const list = this.#tunnels.get(vni) ?? [];
    list.push(tunnel);
    this.#tunnels.set(vni, list);
    return tunnel;
  }

  closeTunnel(tunnel: VxlanTunnel): void {
    tunnel.isOpen = false;
    const list = this.#tunnels.get(tunnel.vni)?.filter((t) => t !== tunnel) ?? [];
    if (list.length > 0) this.#tunnels.set(tunnel.vni, list);
    else this.#tunnels.delete(tunnel.vni);
  }

  /** Queues one datagram; the batch goes out once the burst that queued it is done. */
  send(peer: UdpAddress, vni: number, frame: Uint8Array): boolean {
    const tx = this.#socket.tx;
    let at = tx.reserve(peer, VXLAN_HEADER_LENGTH + frame.length);
    if (at < 0) {
      this.#flush();
      at = tx.reserve(peer, VXLAN_HEADER_LENGTH + frame.length);
      if (at < 0) return false;
    }
    tx.data.set(frame, at + VXLAN_HEADER_LENGTH);
    encodeVxlan(tx.data, at + VXLAN_HEADER_LENGTH, vni);
    if (!this.#flushing) {
      this.#flushing = true;
      poller.defer(() => this.#flush());
    }
    return true;
  }

  #flush(): void {
    this.#flushing = false;
    try {
      this.#socket.tx.flush();
    } catch (e) {
      this.log.warn("VXLAN send failed", { error: messageOf(e) });
    }
    // What the kernel did not take now (a full buffer) is dropped: UDP is lossy anyway.
    this.#socket.tx.clear();
  }

  /** Datagram batches one readiness takes at most: what is left wakes the poll again. */
  #onReadable = (): void => {
    const rx = this.#socket.rx;
    try {
      for (let round = 0; round < 8 && this.#open; round++) {
        const n = rx.receive();
        for (let i = 0; i < n; i++) this.#dispatch(rx.data, rx.offset[i], rx.length[i], i);
        if (rx.drained) return;
      }
    } catch (e) {
      // Not a datagram's fault (those are counted): the socket is broken, stop reading it.
      if (this.#open) this.log.error("VXLAN receive failed", { error: messageOf(e) });
      poller.onReadable(this.#socket.fd, null);
    }
  };

  #dispatch(data: Uint8Array, at: number, length: number, i: number): void {
    const vni = decodeVxlan(data, at, length);
    const tunnel = vni < 0
      ? undefined
      : this.#tunnels.get(vni)?.find((t) => this.#socket.rx.sourceHostMatches(i, t.peer));
    if (!tunnel || length < VXLAN_HEADER_LENGTH + 14) {
      this.foreign++;
      return;
    }
    tunnel.receive(data.subarray(at + VXLAN_HEADER_LENGTH, at + length));
  }

  close(): void {
    if (!this.#open) return;
    this.#open = false;
    poller.cancel(this.#socket.fd);
    this.#socket.close();
  }
}
