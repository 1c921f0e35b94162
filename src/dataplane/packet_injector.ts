/**
 * The Linux fast path for injection: an AF_PACKET socket with PACKET_VNET_HDR.
 *
 * The default on Linux. libnet (the portable injector, the default elsewhere) writes one frame per call, and costs two system calls a frame
 * (it looks the interface up again each time): a 64 KB TCP super-frame captured on the far side
 * must be cut into ~45 segments in JavaScript and written one by one. With a virtio-net header in
 * front of each frame, the kernel takes the super-frame whole, as GSO, and segments it only if
 * and where it has to (a veth hands it to the VM as is; a NIC segments it in hardware): one
 * system call instead of ~45, and no segmentation or checksum work in JavaScript for it.
 */
import { lastErrno, libc } from "../../ffi/libc.ts";
import { addressOf, setWord, structs } from "../../ffi/layout.ts";
import { ErrorCode, VnetError } from "../errors.ts";
import { noSuchInterface, translated } from "./ffi_errors.ts";
import { interfaceMtu } from "./sysfs.ts";
import { type GsoFrame, type Injector } from "./ports.ts";
import { MAX_FRAME } from "../link/wire.ts";

const AF_PACKET = 17;
const SOCK_RAW = 3;
const SOL_PACKET = 263;
const PACKET_VNET_HDR = 15;
const SOCKADDR_LL = structs.sockaddr_ll;

/** struct virtio_net_hdr (legacy, native byte order: little-endian here). */
const VNET_HDR = structs.virtio_net_hdr;
const VNET_HDR_LEN = VNET_HDR.size;
const VIRTIO_NET_HDR_F_NEEDS_CSUM = 1;
const VIRTIO_NET_HDR_GSO_TCPV4 = 1;
const VIRTIO_NET_HDR_GSO_TCPV6 = 4;
const VIRTIO_NET_HDR_GSO_ECN = 0x80;

/**
 * A small frame goes out from one buffer, copied in behind the header, which is rewritten in place
 * per frame. Injection is synchronous on the one JS thread, so every injector shares it (a hundred
 * handlers would otherwise hold 25 MB of them).
 */
const buf = new Uint8Array(VNET_HDR_LEN + MAX_FRAME);
const hdr = new DataView(buf.buffer, 0, VNET_HDR_LEN);

/**
 * From this size on a frame goes out by `sendmsg` from where it lies, the header from `buf`: the
 * copy behind the header was a 64 KB memcpy per super-frame. Below it the copy is small, and
 * `send` hands the kernel one buffer.
 */
const GATHER_FROM = 2048;

/**
 * Where each buffer that frames lie in starts. Finding an address takes an object and a BigInt,
 * so it is done once per buffer (frames come from a few long-lived ones: the GRO's, the receive
 * batches', the rings'), and a frame's address is its buffer's plus its offset: no allocation
 * per frame. A backing store never moves.
 */
const bufferStarts = new WeakMap<ArrayBufferLike, number>();

function frameAddress(frame: Uint8Array): number {
  let start = bufferStarts.get(frame.buffer);
  if (start === undefined) {
    start = addressOf(frame) - frame.byteOffset;
    bufferStarts.set(frame.buffer, start);
  }
  return start + frame.byteOffset;
}

const IOVEC = structs.iovec;
const MSGHDR = structs.msghdr;
/** Two iovecs, the header's (fixed) and the frame's (set per frame), and the msghdr naming them. */
const iovecs = new Uint8Array(2 * IOVEC.size);
const iovecView = new DataView(iovecs.buffer);
const msghdr = new Uint8Array(MSGHDR.size);
{
  const m = new DataView(msghdr.buffer);
  setWord(m, MSGHDR.offsets.msg_iov, addressOf(iovecs));
  setWord(m, MSGHDR.offsets.msg_iovlen, 2);
  setWord(iovecView, IOVEC.offsets.iov_base, addressOf(buf));
  setWord(iovecView, IOVEC.offsets.iov_len, VNET_HDR_LEN);
}

export class PacketInjector implements Injector {
  readonly device: string;
  readonly mtu: number;
  #fd: number;
  #closed = false;
  #error = "";

  constructor(device: string) {
    if (Deno.build.os !== "linux") {
      throw new VnetError("--injector packet is Linux only: use libnet or pcap", {
        code: ErrorCode.Invalid,
      });
    }
    this.device = device;
    const lib = translated(libc);
    const index = lib.if_nametoindex(new TextEncoder().encode(device + "\0"));
    if (index === 0) {
      throw noSuchInterface(device);
    }
    // Protocol 0: the socket sends only and never receives a copy of the traffic.
    const fd = lib.socket(AF_PACKET, SOCK_RAW, 0);
    if (fd < 0) {
      const { text } = lastErrno();
      throw new VnetError(
        `cannot open a packet socket on '${device}': ${text} (needs root or CAP_NET_RAW)`,
        { code: ErrorCode.System },
      );
    }
    const one = new Int32Array([1]);
    const addr = new DataView(new ArrayBuffer(SOCKADDR_LL.size));
    addr.setUint16(SOCKADDR_LL.offsets.sll_family, AF_PACKET, true);
    addr.setInt32(SOCKADDR_LL.offsets.sll_ifindex, index, true);
    if (
      lib.setsockopt(fd, SOL_PACKET, PACKET_VNET_HDR, one, 4) < 0 ||
      lib.bind(fd, new Uint8Array(addr.buffer), SOCKADDR_LL.size) < 0
    ) {
      const { text } = lastErrno();
      lib.close(fd);
      throw new VnetError(`cannot set up the packet socket on '${device}': ${text}`, {
        code: ErrorCode.System,
      });
    }
    this.#fd = fd;
    this.mtu = interfaceMtu(device);
  }

  /** Writes a frame that already fits the MTU, checksums complete: a zeroed header. */
  inject(frame: Uint8Array): boolean {
    buf.fill(0, 0, VNET_HDR_LEN);
    return this.#send(frame);
  }

  /**
   * Writes a TCP super-frame as one GSO packet. Its checksum field must hold the pseudo-header
   * sum (CHECKSUM_PARTIAL), which `prepareForWire` arranges.
   */
  injectGso(frame: Uint8Array, gso: GsoFrame): boolean {
    const h = hdr;
    const at = VNET_HDR.offsets;
    h.setUint8(at.flags, VIRTIO_NET_HDR_F_NEEDS_CSUM);
    h.setUint8(
      at.gso_type,
      (gso.v4 ? VIRTIO_NET_HDR_GSO_TCPV4 : VIRTIO_NET_HDR_GSO_TCPV6) |
        (gso.ecn ? VIRTIO_NET_HDR_GSO_ECN : 0),
    );
    h.setUint16(at.hdr_len, gso.headerLength, true);
    h.setUint16(at.gso_size, gso.mss, true);
    h.setUint16(at.csum_start, gso.l4Offset, true);
    h.setUint16(at.csum_offset, 16, true); // the TCP checksum field
    return this.#send(frame);
  }

  #send(frame: Uint8Array): boolean {
    if (this.#closed) return false;
    let n: number | bigint;
    if (frame.length >= GATHER_FROM) {
      setWord(iovecView, IOVEC.size + IOVEC.offsets.iov_base, frameAddress(frame));
      setWord(iovecView, IOVEC.size + IOVEC.offsets.iov_len, frame.length);
      n = libc().sendmsg(this.#fd, msghdr, 0);
    } else {
      buf.set(frame, VNET_HDR_LEN);
      n = libc().send(this.#fd, buf, BigInt(VNET_HDR_LEN + frame.length), 0);
    }
    if (n >= 0) return true;
    this.#error = lastErrno().text;
    return false;
  }

  lastError(): string {
    return this.#error;
  }

  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    libc().close(this.#fd);
  }
}
