/**
 * The UDP transport's socket (issue 18), for the data path's own thread: plain synchronous libc
 * calls on an fd the runtime never sees, so that thread can block in poll(2) on it with its other
 * fds. A batch of datagrams costs one syscall each way, and nothing is allocated per datagram:
 *
 * - Sending (`tx`): datagrams are packed back to back into one preallocated buffer, and
 *   `flush()` hands them to `sendmmsg` as an array of `struct mmsghdr`, one message each. With
 *   UDP GSO, a run of datagrams to the same peer and of the same size (the last may be shorter)
 *   goes as ONE message carrying a `UDP_SEGMENT` control message, and the kernel (or the NIC)
 *   cuts it into datagrams: one trip down the stack for up to 64 of them. This is wireguard-go's
 *   conn.StdNetBind (coalesceMessages, IdealBatchSize) in libc terms.
 * - Receiving (`rx`): `recvmmsg` fills up to `receiveMessages` messages at once. With UDP GRO the
 *   kernel hands over several datagrams of one flow as one buffer with a `UDP_GRO` control
 *   message (the segment size); `receive()` lists them as separate datagrams again, in place
 *   (each is an offset and a length in `rx.data`), never copied. The kernel also stamps each
 *   message with its receive time (SO_TIMESTAMPNS): `rx.waitedMs(i)` is how long datagram i
 *   waited in the socket for this thread, which a path's delay figure must leave out.
 * - Don't fragment: IP_MTU_DISCOVER (and IPV6_MTU_DISCOVER) = PMTUDISC_DO, so a datagram that does
 *   not fit the path fails with EMSGSIZE at once (status TooBig) instead of leaving in fragments;
 *   the transport turns that into its path-MTU handling. The kernel learns a smaller path MTU from
 *   ICMP "fragmentation needed" / "packet too big", keeps it per destination, and reports it
 *   through `pathMtu(peer)`, so later sends larger than it fail the same way.
 *
 * Offloads are detected at open (GSO: getsockopt(UDP_SEGMENT) answers; GRO: setsockopt(UDP_GRO)
 * is accepted) and fall back to plain batches where the kernel refuses. A GSO send refused with
 * EIO (a device without checksum offload: GSO needs it) turns GSO off for the socket, as
 * wireguard-go does; one refused with EMSGSIZE or EINVAL (older kernels' word for a segment too
 * big for the path) is sent again datagram by datagram, so each gets its own verdict.
 *
 * Errors: EAGAIN is "would block" (nothing more now: wait for POLLIN/POLLOUT); EMSGSIZE is a
 * datagram's status; anything else throws a SocketCallError naming the call and the errno.
 * Linux only (sendmmsg, recvmmsg, UDP_SEGMENT and UDP_GRO), 64-bit (the layouts of ffi/layout.ts).
 */
import { errnoNow, errnoText, libc } from "../../ffi/libc.ts";
import { addressOf, setWord, structs } from "../../ffi/layout.ts";
import { ipBytes } from "./tcp_socket.ts";
import { formatHostPort, formatIpv6 } from "../addr.ts";

/**
 * The Linux constants this module passes to the kernel. They are asm-generic's, the same on
 * x86_64 and aarch64; tests/unit/udp_socket_test.ts checks each against the C headers with both
 * compilers, as the layout test checks the structs.
 */
export const LINUX_SOCKET = {
  AF_INET: 2,
  AF_INET6: 10,
  SOCK_DGRAM: 2,
  SOCK_NONBLOCK: 0o4000,
  SOCK_CLOEXEC: 0o2000000,
  SOL_SOCKET: 1,
  SO_SNDBUF: 7,
  SO_RCVBUF: 8,
  SO_SNDBUFFORCE: 32,
  SO_RCVBUFFORCE: 33,
  IPPROTO_IP: 0,
  IP_MTU_DISCOVER: 10,
  IP_MTU: 14,
  IP_PMTUDISC_DO: 2,
  IPPROTO_IPV6: 41,
  IPV6_MTU_DISCOVER: 23,
  IPV6_MTU: 24,
  IPV6_V6ONLY: 26,
  IPV6_PMTUDISC_DO: 2,
  SOL_UDP: 17,
  UDP_SEGMENT: 103,
  UDP_GRO: 104,
  SO_TIMESTAMPNS: 35,
  SCM_TIMESTAMPNS: 35,
  CLOCK_REALTIME: 0,
  MSG_CTRUNC: 0x8,
  MSG_TRUNC: 0x20,
  EINTR: 4,
  EIO: 5,
  EAGAIN: 11,
  EINVAL: 22,
  EMSGSIZE: 90,
} as const;
const L = LINUX_SOCKET;

/** The largest UDP payload IPv4 can carry (65535 - 20 - 8); more is EMSGSIZE before any MTU. */
const MAX_PAYLOAD_V4 = 65507;
/** The largest UDP payload IPv6 can carry without jumbograms (65535 - 8). */
const MAX_PAYLOAD_V6 = 65527;
/** The most datagrams one UDP_SEGMENT send may carry (the kernel's UDP_MAX_SEGMENTS, at least). */
const GSO_MAX_SEGMENTS = 64;
/** The most segments GRO puts in one buffer (the kernel's UDP_GRO_CNT_MAX). */
const GRO_MAX_SEGMENTS = 64;
/** A receive slot that holds the largest datagram, and so any GRO buffer. */
const MAX_SLOT = 65535;
/** The most messages recvmmsg takes in one call (the kernel's UIO_MAXIOV). */
const MAX_BATCH = 1024;

/** What became of a datagram (tx.status), or of a `sendTo`. */
export const DatagramStatus = {
  /** Not sent yet: in a batch not flushed, or the socket's buffer was full (EAGAIN). */
  Pending: 0,
  Sent: 1,
  /** EMSGSIZE: larger than the path allows with DF set (or than UDP can carry). Not sent. */
  TooBig: 2,
  /** Another error, thrown by the flush that met it. Not sent. */
  Failed: 3,
} as const;
export type DatagramStatus = typeof DatagramStatus[keyof typeof DatagramStatus];

/** A socket call failed with an errno that is not part of normal operation. */
export class SocketCallError extends Error {
  constructor(
    /** The libc call, e.g. `sendmmsg`. */
    readonly call: string,
    readonly errno: number,
    /** What it was called on, e.g. `127.0.0.1:4789`, or "". */
    readonly subject = "",
  ) {
    super(`${call}${subject ? ` (${subject})` : ""} failed: ${errnoText(errno)} (errno ${errno})`);
    this.name = "SocketCallError";
  }
}

// ---- struct layouts (ffi/layout.ts), flattened to the offsets used here ----

const MMSGHDR = structs.mmsghdr.size;
const HDR = structs.mmsghdr.offsets.msg_hdr;
const MSG_LEN = structs.mmsghdr.offsets.msg_len;
const MSG_NAME = HDR + structs.msghdr.offsets.msg_name;
const MSG_NAMELEN = HDR + structs.msghdr.offsets.msg_namelen;
const MSG_IOV = HDR + structs.msghdr.offsets.msg_iov;
const MSG_IOVLEN = HDR + structs.msghdr.offsets.msg_iovlen;
const MSG_CONTROL = HDR + structs.msghdr.offsets.msg_control;
const MSG_CONTROLLEN = HDR + structs.msghdr.offsets.msg_controllen;
const MSG_FLAGS = HDR + structs.msghdr.offsets.msg_flags;
const IOVEC = structs.iovec.size;
const IOV_BASE = structs.iovec.offsets.iov_base;
const IOV_LEN = structs.iovec.offsets.iov_len;
const CMSG_LEN_AT = structs.cmsghdr.offsets.cmsg_len;
const CMSG_LEVEL_AT = structs.cmsghdr.offsets.cmsg_level;
const CMSG_TYPE_AT = structs.cmsghdr.offsets.cmsg_type;
/** CMSG_ALIGN: control messages align to sizeof(size_t). */
const cmsgAlign = (n: number) => (n + 7) & ~7;
/** CMSG_DATA's offset from its header. */
const CMSG_DATA = cmsgAlign(structs.cmsghdr.size);
/** Room for one sockaddr_in or sockaddr_in6, aligned. */
const NAME_SLOT = cmsgAlign(structs.sockaddr_in6.size);
/** The UDP_SEGMENT control message: a u16 segment size. CMSG_SPACE(2). */
const TX_CONTROL = CMSG_DATA + cmsgAlign(2);
/**
 * Room for the control messages of one received message: UDP_GRO's int (CMSG_SPACE(4), 24) and
 * SCM_TIMESTAMPNS's struct timespec (CMSG_SPACE(16), 32).
 */
const RX_CONTROL = 64;
const TS_SEC = structs.timespec.offsets.tv_sec;
const TS_NSEC = structs.timespec.offsets.tv_nsec;

const SIN = structs.sockaddr_in.offsets;
const SIN6 = structs.sockaddr_in6.offsets;

/** Reads a 64-bit word (little-endian, below 2^53) without a BigInt. */
function readWord(view: DataView, at: number): number {
  return view.getUint32(at, true) + view.getUint32(at + 4, true) * 0x1_0000_0000;
}

const clockNow = new Uint8Array(structs.timespec.size);
const clockView = new DataView(clockNow.buffer);

/** The ms from a CLOCK_REALTIME time (`sec`, `nsec`) to now; 0 if the clock cannot be read. */
function sinceRealtime(sec: number, nsec: number): number {
  if (libc().clock_gettime(L.CLOCK_REALTIME, clockNow) !== 0) return 0;
  return (readWord(clockView, TS_SEC) - sec) * 1000 +
    (clockView.getUint32(TS_NSEC, true) - nsec) / 1e6;
}

// ---- addresses ----

/** `host` or `host%zone` → the IP's bytes and the scope id (IPv6 link-local), or null. */
function parseIp(text: string): { ip: Uint8Array; scope: number } | null {
  const cut = text.indexOf("%");
  const ip = ipBytes(cut < 0 ? text : text.slice(0, cut));
  if (!ip) return null;
  if (cut < 0) return { ip, scope: 0 };
  if (ip.length !== 16) return null;
  const zone = text.slice(cut + 1);
  const scope = /^\d+$/.test(zone)
    ? Number(zone)
    : libc().if_nametoindex(new TextEncoder().encode(`${zone}\0`));
  return scope > 0 ? { ip, scope } : null;
}

const V4_MAPPED_PREFIX = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff];

/** The sockaddr for `ip` (4 or 16 bytes) as a socket of `v6` sends to it (IPv4 mapped in v6). */
function encodeSockaddr(v6: boolean, ip: Uint8Array, port: number, scope: number): Uint8Array {
  if (!v6) {
    const sa = new Uint8Array(structs.sockaddr_in.size);
    const view = new DataView(sa.buffer);
    view.setUint16(SIN.sin_family, L.AF_INET, true);
    view.setUint16(SIN.sin_port, port); // network order
    sa.set(ip, SIN.sin_addr);
    return sa;
  }
  const sa = new Uint8Array(structs.sockaddr_in6.size);
  const view = new DataView(sa.buffer);
  view.setUint16(SIN6.sin6_family, L.AF_INET6, true);
  view.setUint16(SIN6.sin6_port, port);
  if (ip.length === 4) {
    sa.set(V4_MAPPED_PREFIX, SIN6.sin6_addr);
    sa.set(ip, SIN6.sin6_addr + 12);
  } else {
    sa.set(ip, SIN6.sin6_addr);
  }
  view.setUint32(SIN6.sin6_scope_id, scope, true);
  return sa;
}

/** The bytes of a sockaddr that make an endpoint: the port and the address (+ scope id). */
function endpointRange(v6: boolean): [number, number, number] {
  // [port at, address from, address to]
  return v6
    ? [SIN6.sin6_port, SIN6.sin6_addr, SIN6.sin6_scope_id + 4]
    : [SIN.sin_port, SIN.sin_addr, SIN.sin_addr + 4];
}

/** FNV-1a over the endpoint bytes of the sockaddr at `bytes[at]`. */
function hashSockaddr(bytes: Uint8Array, at: number, v6: boolean): number {
  const [port, from, to] = v6 ? ENDPOINT_V6 : ENDPOINT_V4;
  let h = 0x811c9dc5;
  h = Math.imul(h ^ bytes[at + port], 0x01000193);
  h = Math.imul(h ^ bytes[at + port + 1], 0x01000193);
  for (let k = from; k < to; k++) h = Math.imul(h ^ bytes[at + k], 0x01000193);
  return h >>> 0;
}
const ENDPOINT_V4 = endpointRange(false);
const ENDPOINT_V6 = endpointRange(true);

function isV4Mapped(bytes: Uint8Array, at: number): boolean {
  for (let k = 0; k < 12; k++) if (bytes[at + k] !== V4_MAPPED_PREFIX[k]) return false;
  return true;
}

/** An IP address as text: dotted for IPv4 (and IPv4-mapped), RFC 5952 for IPv6. */
function formatIp(bytes: Uint8Array, at: number, v6: boolean): string {
  if (!v6) return `${bytes[at]}.${bytes[at + 1]}.${bytes[at + 2]}.${bytes[at + 3]}`;
  if (isV4Mapped(bytes, at)) return formatIp(bytes, at + 12, false);
  return formatIpv6(bytes.subarray(at, at + 16));
}

/**
 * A peer's IP address and UDP port, encoded once as the sockaddr its socket sends to. Make one
 * with `UdpSocket.peer()` (or get one from `rx.source()`), keep it, and pass the same object for
 * every datagram to that peer: consecutive datagrams coalesce into one GSO send only when they
 * name the same UdpAddress object.
 */
export class UdpAddress {
  /** sockaddr_in (16 bytes) for an IPv4 socket; sockaddr_in6 (28 bytes, IPv4 mapped) for IPv6. */
  readonly sockaddr: Uint8Array;
  /** Equal for equal endpoints; `rx.sourceHash(i)` computes the same for a received datagram. */
  readonly hash: number;
  /** Whether the peer is an IPv4 address (also when it is mapped into an IPv6 socket's). */
  readonly ipv4: boolean;
  /** The largest datagram payload IP can carry to this peer, before any MTU. */
  readonly maxPayload: number;

  constructor(readonly hostname: string, readonly port: number, sockaddr: Uint8Array) {
    this.sockaddr = sockaddr;
    const v6 = sockaddr.length === structs.sockaddr_in6.size;
    this.hash = hashSockaddr(sockaddr, 0, v6);
    this.ipv4 = !v6 || isV4Mapped(sockaddr, SIN6.sin6_addr);
    this.maxPayload = this.ipv4 ? MAX_PAYLOAD_V4 : MAX_PAYLOAD_V6;
  }

  /** The same endpoint (port, address, scope). */
  equals(other: UdpAddress): boolean {
    return other === this ||
      (other.sockaddr.length === this.sockaddr.length &&
        sameEndpoint(this.sockaddr, 0, other.sockaddr, this.sockaddr.length > 16));
  }

  toString(): string {
    return formatHostPort(this);
  }
}

/**
 * Whether the sockaddr at `bytes[at]` names the same endpoint as `sockaddr` (the same host only,
 * whatever the port, when `anyPort`).
 */
function sameEndpoint(
  bytes: Uint8Array,
  at: number,
  sockaddr: Uint8Array,
  v6: boolean,
  anyPort = false,
): boolean {
  const [port, from, to] = v6 ? ENDPOINT_V6 : ENDPOINT_V4;
  if (
    !anyPort && (bytes[at + port] !== sockaddr[port] || bytes[at + port + 1] !== sockaddr[port + 1])
  ) {
    return false;
  }
  for (let k = from; k < to; k++) if (bytes[at + k] !== sockaddr[k]) return false;
  return true;
}

// ---- the socket ----

export interface UdpSocketOptions {
  /**
   * The local address to bind: `0.0.0.0` or `127.0.0.1` opens an IPv4 socket; `::`, `::1` or
   * `fe80::1%eth0` an IPv6 one, which also carries IPv4 (mapped) unless `v6Only`.
   */
  readonly address: string;
  /** The local port; 0 picks a free one (then read `port`). */
  readonly port: number;
  /** IPv6 only, no IPv4-mapped peers. Default false (one socket for both families). */
  readonly v6Only?: boolean;
  /** SO_RCVBUF in bytes, past net.core.rmem_max where allowed (SO_RCVBUFFORCE, as root). */
  readonly receiveBufferBytes?: number;
  /** SO_SNDBUF in bytes, likewise. */
  readonly sendBufferBytes?: number;
  /**
   * Messages one `receive()` takes at most (each a datagram, or a GRO buffer of up to 64).
   * Default 64, at most 1024.
   */
  readonly receiveMessages?: number;
  /** Room for one received message without GRO; with GRO always 65535. Default 65535. */
  readonly receiveSlotBytes?: number;
  /** Datagrams one send batch holds. Default 128. */
  readonly sendDatagrams?: number;
  /** Bytes one send batch holds, at least 65527. Default 256 KiB. */
  readonly sendBytes?: number;
  /** Use UDP GSO when the kernel has it. Default true. */
  readonly gso?: boolean;
  /** Ask for UDP GRO when the kernel has it. Default true. */
  readonly gro?: boolean;
  /**
   * Ask the kernel for each datagram's receive time (SO_TIMESTAMPNS), for `rx.waitedMs`.
   * Default true.
   */
  readonly timestamps?: boolean;
}

const intOption = new Int32Array(1);
const intOptionBytes = new Uint8Array(intOption.buffer);
const optionLength = new Uint32Array(1);
const optionLengthBytes = new Uint8Array(optionLength.buffer);

function setIntOption(fd: number, level: number, name: number, value: number): boolean {
  intOption[0] = value;
  return libc().setsockopt(fd, level, name, intOptionBytes, 4) === 0;
}

/** getsockopt's int, or null if the option is refused (the errno stays for the caller). */
function getIntOption(fd: number, level: number, name: number): number | null {
  optionLength[0] = 4;
  return libc().getsockopt(fd, level, name, intOptionBytes, optionLengthBytes) === 0
    ? intOption[0]
    : null;
}

const isPort = (n: number) => Number.isInteger(n) && n >= 0 && n <= 65535;

/** A count option: `value`, or `fallback` if not given; a positive integer up to `max`. */
function count(value: number | undefined, fallback: number, max: number): number {
  if (value === undefined) return fallback;
  if (!Number.isInteger(value) || value < 1) throw new Error(`not a positive count: ${value}`);
  return Math.min(value, max);
}

/** The Linux batch calls, or a clear error where libc lacks them. */
function batchCalls() {
  const lib = libc();
  if (!lib.sendmmsg || !lib.recvmmsg) {
    throw new Error("UDP sockets need sendmmsg and recvmmsg (Linux)");
  }
  return { sendmmsg: lib.sendmmsg, recvmmsg: lib.recvmmsg };
}

/**
 * A nonblocking, close-on-exec UDP socket with preallocated batches: `tx` to send, `rx` to
 * receive. Wait on `fd` with poll(2) (POLLIN to receive, POLLOUT after a flush left datagrams
 * pending); call nothing on it from two threads.
 */
export class UdpSocket {
  /** 4 or 6: the socket's family (an IPv6 socket reaches IPv4 peers too unless v6Only). */
  readonly family: 4 | 6;
  /** The bound port (the one the kernel picked, for port 0). */
  readonly port: number;
  /** The bound address as given. */
  readonly address: string;
  /** Whether received buffers may be GRO-coalesced (UDP_GRO accepted at open). */
  readonly gro: boolean;
  /** Whether the kernel stamps each datagram's arrival (SO_TIMESTAMPNS accepted at open). */
  readonly timestamps: boolean;
  /** The kernel's buffer sizes after the options (it doubles what it is asked for). */
  readonly receiveBufferBytes: number;
  readonly sendBufferBytes: number;
  /** Datagrams to send: fill, then `flush()`. */
  readonly tx: UdpSendBatch;
  /** Datagrams received by the last `receive()`. */
  readonly rx: UdpReceiveBatch;
  #fd: number;
  #gso: boolean;
  readonly #v6Only: boolean;
  /** What the batches need of their socket. */
  readonly #handle: SocketHandle = {
    fd: (call) => this.#openFd(call),
    port: () => this.port,
    gso: () => this.#gso,
    disableGso: () => {
      this.#gso = false;
    },
  };

  private constructor(fd: number, options: UdpSocketOptions, family: 4 | 6, port: number) {
    this.#fd = fd;
    this.family = family;
    this.port = port;
    this.address = options.address;
    this.#v6Only = options.v6Only ?? false;
    this.#gso = options.gso !== false && getIntOption(fd, L.SOL_UDP, L.UDP_SEGMENT) !== null;
    this.gro = options.gro !== false && setIntOption(fd, L.SOL_UDP, L.UDP_GRO, 1);
    this.timestamps = options.timestamps !== false &&
      setIntOption(fd, L.SOL_SOCKET, L.SO_TIMESTAMPNS, 1);
    this.receiveBufferBytes = getIntOption(fd, L.SOL_SOCKET, L.SO_RCVBUF) ?? 0;
    this.sendBufferBytes = getIntOption(fd, L.SOL_SOCKET, L.SO_SNDBUF) ?? 0;
    const slot = this.gro ? MAX_SLOT : count(options.receiveSlotBytes, MAX_SLOT, MAX_SLOT);
    this.rx = new UdpReceiveBatch(
      this.#handle,
      family,
      count(options.receiveMessages, 64, MAX_BATCH),
      slot,
    );
    this.tx = new UdpSendBatch(
      this.#handle,
      family,
      count(options.sendDatagrams, 128, Infinity),
      Math.max(count(options.sendBytes, 256 * 1024, Infinity), MAX_PAYLOAD_V6),
    );
  }

  /** Opens and binds a socket; throws a SocketCallError naming the call that failed. */
  static open(options: UdpSocketOptions): UdpSocket {
    const local = parseIp(options.address);
    if (!local) throw new Error(`not an IP address to bind: '${options.address}'`);
    if (!isPort(options.port)) throw new Error(`bad port to bind: ${options.port}`);
    const family = local.ip.length === 4 ? 4 : 6;
    batchCalls();
    const lib = libc();
    const fd = lib.socket(
      family === 4 ? L.AF_INET : L.AF_INET6,
      L.SOCK_DGRAM | L.SOCK_NONBLOCK | L.SOCK_CLOEXEC,
      0,
    );
    if (fd < 0) throw new SocketCallError("socket", errnoNow(), `UDP/IPv${family}`);
    const where = formatHostPort({ hostname: options.address, port: options.port });
    const must = (ok: boolean, call: string) => {
      if (!ok) throw new SocketCallError(call, errnoNow(), where);
    };
    try {
      if (family === 6) {
        must(
          setIntOption(fd, L.IPPROTO_IPV6, L.IPV6_V6ONLY, options.v6Only ? 1 : 0),
          "IPV6_V6ONLY",
        );
        must(
          setIntOption(fd, L.IPPROTO_IPV6, L.IPV6_MTU_DISCOVER, L.IPV6_PMTUDISC_DO),
          "IPV6_MTU_DISCOVER",
        );
      }
      // An IPv6 socket's IPv4-mapped traffic follows the IPv4 option.
      if (family === 4 || !options.v6Only) {
        must(
          setIntOption(fd, L.IPPROTO_IP, L.IP_MTU_DISCOVER, L.IP_PMTUDISC_DO),
          "IP_MTU_DISCOVER",
        );
      }
      if (options.receiveBufferBytes) {
        const n = options.receiveBufferBytes;
        must(
          setIntOption(fd, L.SOL_SOCKET, L.SO_RCVBUFFORCE, n) ||
            setIntOption(fd, L.SOL_SOCKET, L.SO_RCVBUF, n),
          "SO_RCVBUF",
        );
      }
      if (options.sendBufferBytes) {
        const n = options.sendBufferBytes;
        must(
          setIntOption(fd, L.SOL_SOCKET, L.SO_SNDBUFFORCE, n) ||
            setIntOption(fd, L.SOL_SOCKET, L.SO_SNDBUF, n),
          "SO_SNDBUF",
        );
      }
      const name = encodeSockaddr(family === 6, local.ip, options.port, local.scope);
      must(lib.bind(fd, name, name.length) === 0, "bind");
      optionLength[0] = name.length;
      must(lib.getsockname(fd, name, optionLengthBytes) === 0, "getsockname");
      const port = new DataView(name.buffer).getUint16(
        family === 6 ? SIN6.sin6_port : SIN.sin_port,
      );
      return new UdpSocket(fd, options, family, port);
    } catch (e) {
      lib.close(fd);
      throw e;
    }
  }

  /** The socket's fd, for poll(2); -1 once closed. */
  get fd(): number {
    return this.#fd;
  }

  /** Whether sends coalesce with UDP GSO (off at open if the kernel lacks it, or after EIO). */
  get gso(): boolean {
    return this.#gso;
  }

  /** The fd for a call, or an error if the socket is closed. */
  #openFd(call: string): number {
    if (this.#fd < 0) throw new Error(`${call} on a closed UDP socket`);
    return this.#fd;
  }

  /**
   * `hostname` (`192.0.2.1`, `2001:db8::1`, `fe80::1%eth0`) and `port` as this socket sends to
   * them; throws if it cannot reach that family.
   */
  peer(hostname: string, port: number): UdpAddress {
    const parsed = parseIp(hostname);
    if (!parsed) throw new Error(`not an IP address: '${hostname}'`);
    if (!isPort(port)) throw new Error(`bad port: ${port}`);
    if (this.family === 4 && parsed.ip.length === 16) {
      throw new Error(`an IPv4 socket cannot send to ${hostname}`);
    }
    if (this.family === 6 && parsed.ip.length === 4 && this.#v6Only) {
      throw new Error(`an IPv6-only socket cannot send to ${hostname}`);
    }
    const sockaddr = encodeSockaddr(this.family === 6, parsed.ip, port, parsed.scope);
    return new UdpAddress(hostname, port, sockaddr);
  }

  /**
   * The kernel's MTU for the path to `peer`, including what it learned from ICMP (fragmentation
   * needed / packet too big) since. IP_MTU is only answered on a connected socket, so this
   * connects a throwaway socket (no packet is sent) and asks it: four syscalls, for the path-MTU
   * handling after an EMSGSIZE, not per packet.
   */
  pathMtu(peer: UdpAddress): number {
    this.#openFd("pathMtu");
    const lib = libc();
    const v4 = peer.ipv4;
    const sockaddr = v4 && peer.sockaddr.length !== structs.sockaddr_in.size
      ? encodeSockaddr(
        false,
        peer.sockaddr.subarray(SIN6.sin6_addr + 12, SIN6.sin6_addr + 16),
        peer.port,
        0,
      )
      : peer.sockaddr;
    const fd = lib.socket(v4 ? L.AF_INET : L.AF_INET6, L.SOCK_DGRAM | L.SOCK_CLOEXEC, 0);
    if (fd < 0) throw new SocketCallError("socket", errnoNow(), "path MTU");
    try {
      if (lib.connect(fd, sockaddr, sockaddr.length) !== 0) {
        throw new SocketCallError("connect", errnoNow(), `path MTU to ${peer}`);
      }
      const mtu = v4
        ? getIntOption(fd, L.IPPROTO_IP, L.IP_MTU)
        : getIntOption(fd, L.IPPROTO_IPV6, L.IPV6_MTU);
      if (mtu === null) throw new SocketCallError("getsockopt(IP_MTU)", errnoNow(), `${peer}`);
      return mtu;
    } finally {
      lib.close(fd);
    }
  }

  /**
   * One datagram with one `sendto`: the first `length` bytes of `data` (for what does not come in
   * batches, such as a keepalive). Sent, Pending (EAGAIN: not sent) or TooBig (EMSGSIZE).
   */
  sendTo(peer: UdpAddress, data: Uint8Array, length = data.length): DatagramStatus {
    const fd = this.#openFd("sendto");
    if (!(length >= 0 && length <= data.length)) throw new Error(`bad length ${length}`);
    for (;;) {
      const rc = libc().sendto(fd, data, BigInt(length), 0, peer.sockaddr, peer.sockaddr.length);
      if (Number(rc) >= 0) return DatagramStatus.Sent;
      const errno = errnoNow();
      if (errno === L.EINTR) continue;
      if (errno === L.EAGAIN) return DatagramStatus.Pending;
      if (errno === L.EMSGSIZE) return DatagramStatus.TooBig;
      throw new SocketCallError("sendto", errno, `${peer}`);
    }
  }

  /** Closes the fd; safe twice. Never while a poll on it may be in flight on another thread. */
  close(): void {
    if (this.#fd < 0) return;
    libc().close(this.#fd);
    this.#fd = -1;
  }
}

/** What a batch needs of its socket. */
interface SocketHandle {
  /** The fd, for `call`; throws if the socket is closed. */
  fd(call: string): number;
  port(): number;
  /** Whether to coalesce with UDP GSO. */
  gso(): boolean;
  /** A GSO send failed with EIO: send datagram by datagram from now on. */
  disableGso(): void;
}

/** The `struct mmsghdr`s, iovecs, sockaddrs and control buffers of a batch, in one buffer. */
class MessageArena {
  readonly bytes: Uint8Array;
  readonly view: DataView;
  readonly iovecAt: number;
  readonly nameAt: number;
  readonly controlAt: number;
  /** The mmsghdr array from message m on, for a call that resumes there. */
  readonly from: Uint8Array[];

  constructor(readonly messages: number, controlBytes: number) {
    this.iovecAt = messages * MMSGHDR;
    this.nameAt = this.iovecAt + messages * IOVEC;
    this.controlAt = this.nameAt + messages * NAME_SLOT;
    this.bytes = new Uint8Array(this.controlAt + messages * controlBytes);
    this.view = new DataView(this.bytes.buffer);
    this.from = Array.from({ length: messages }, (_, m) => this.bytes.subarray(m * MMSGHDR));
    const base = addressOf(this.bytes);
    for (let m = 0; m < messages; m++) {
      const at = m * MMSGHDR;
      setWord(this.view, at + MSG_NAME, base + this.nameAt + m * NAME_SLOT);
      setWord(this.view, at + MSG_IOV, base + this.iovecAt + m * IOVEC);
      setWord(this.view, at + MSG_IOVLEN, 1);
      setWord(this.view, at + MSG_CONTROL, base + this.controlAt + m * controlBytes);
    }
  }
}

/**
 * Datagrams to send, packed back to back in `data`. `reserve(peer, n)` returns where to write
 * the next datagram (or -1 when the batch is full: flush, then `clear()`); `flush()` sends what is
 * pending; `status[i]` says what became of datagram i until `clear()`.
 */
class UdpSendBatch {
  /** The datagrams' bytes: datagram i is data[offset[i] .. offset[i] + length[i]). */
  readonly data: Uint8Array;
  readonly offset: Uint32Array;
  readonly length: Uint32Array;
  /** DatagramStatus of each datagram. */
  readonly status: Uint8Array;
  /** Datagrams in the batch. */
  count = 0;
  /** Bytes of `data` in use. */
  bytes = 0;
  /** Datagrams found TooBig since the socket opened. */
  tooBig = 0;
  /** sendmmsg calls made since the socket opened (a measure of batching). */
  calls = 0;
  /** Messages the kernel took since the socket opened: a GSO run is one. */
  messages = 0;
  readonly #socket: SocketHandle;
  readonly #peers: (UdpAddress | null)[];
  readonly #arena: MessageArena;
  /** The peer whose sockaddr each message's name slot holds now. */
  readonly #named: (UdpAddress | null)[];
  readonly #dataAddress: number;
  /** The first datagram of each message built, and how many it carries. */
  readonly #first: Uint32Array;
  readonly #runs: Uint32Array;
  /** The first datagram not yet handed to the kernel. */
  #next = 0;

  constructor(
    socket: SocketHandle,
    family: 4 | 6,
    readonly capacity: number,
    readonly capacityBytes: number,
  ) {
    this.#socket = socket;
    this.data = new Uint8Array(capacityBytes);
    this.#dataAddress = addressOf(this.data);
    this.offset = new Uint32Array(capacity);
    this.length = new Uint32Array(capacity);
    this.status = new Uint8Array(capacity);
    this.#peers = new Array(capacity).fill(null);
    this.#named = new Array(capacity).fill(null);
    this.#first = new Uint32Array(capacity);
    this.#runs = new Uint32Array(capacity);
    this.#arena = new MessageArena(capacity, TX_CONTROL);
    const { view, controlAt } = this.#arena;
    const namelen = family === 6 ? structs.sockaddr_in6.size : structs.sockaddr_in.size;
    for (let m = 0; m < capacity; m++) {
      view.setUint32(m * MMSGHDR + MSG_NAMELEN, namelen, true);
      // The UDP_SEGMENT header is the same for every message; only its u16 changes.
      const c = controlAt + m * TX_CONTROL;
      setWord(view, c + CMSG_LEN_AT, CMSG_DATA + 2);
      view.setInt32(c + CMSG_LEVEL_AT, L.SOL_UDP, true);
      view.setInt32(c + CMSG_TYPE_AT, L.UDP_SEGMENT, true);
    }
  }

  /** Datagrams not yet sent (none handed over, or the kernel said EAGAIN). */
  get pending(): number {
    return this.count - this.#next;
  }

  /** The peer datagram i goes to. */
  peerOf(i: number): UdpAddress {
    return this.#peers[i]!;
  }

  /**
   * Adds a datagram of `length` bytes to `peer` (from this socket's `peer()`): returns the offset
   * in `data` where its bytes go, or -1 if the batch has no room for it.
   */
  reserve(peer: UdpAddress, length: number): number {
    if (length >>> 0 !== length) throw new Error(`bad datagram length ${length}`);
    const at = this.bytes;
    if (this.count === this.capacity || at + length > this.capacityBytes) return -1;
    const i = this.count++;
    this.offset[i] = at;
    this.length[i] = length;
    this.status[i] = DatagramStatus.Pending;
    this.#peers[i] = peer;
    this.bytes = at + length;
    return at;
  }

  /** Copies `bytes` in as a datagram to `peer`; false if the batch has no room. */
  add(peer: UdpAddress, bytes: Uint8Array): boolean {
    const at = this.reserve(peer, bytes.length);
    if (at < 0) return false;
    this.data.set(bytes, at);
    return true;
  }

  /** Empties the batch (what is still pending is dropped). */
  clear(): void {
    this.#peers.fill(null, 0, this.count);
    this.count = 0;
    this.bytes = 0;
    this.#next = 0;
  }

  /** Builds messages from datagram `from` on; returns how many. */
  #build(from: number, coalesce: boolean): number {
    const { view, bytes, nameAt, iovecAt, controlAt } = this.#arena;
    let m = 0;
    for (let i = from; i < this.count; m++) {
      const peer = this.#peers[i]!;
      const size = this.length[i];
      let run = 1;
      let total = size;
      if (coalesce && size > 0) {
        const limit = peer.maxPayload;
        while (i + run < this.count && run < GSO_MAX_SEGMENTS && this.#peers[i + run] === peer) {
          const next = this.length[i + run];
          if (next > size || next === 0 || total + next > limit) break;
          total += next;
          run++;
          if (next < size) break; // a shorter datagram must end the run
        }
      }
      const at = m * MMSGHDR;
      if (this.#named[m] !== peer) {
        bytes.set(peer.sockaddr, nameAt + m * NAME_SLOT);
        this.#named[m] = peer;
      }
      const iov = iovecAt + m * IOVEC;
      setWord(view, iov + IOV_BASE, this.#dataAddress + this.offset[i]);
      setWord(view, iov + IOV_LEN, total);
      if (run > 1) {
        view.setUint16(controlAt + m * TX_CONTROL + CMSG_DATA, size, true);
        setWord(view, at + MSG_CONTROLLEN, TX_CONTROL);
      } else {
        setWord(view, at + MSG_CONTROLLEN, 0);
      }
      this.#first[m] = i;
      this.#runs[m] = run;
      i += run;
    }
    return m;
  }

  /**
   * Sends the pending datagrams: as few `sendmmsg` calls as the kernel takes, GSO runs where the
   * socket has it. Returns how many datagrams were sent. Stops early on EAGAIN (`pending` > 0:
   * wait for POLLOUT and flush again). A datagram refused with EMSGSIZE gets status TooBig and
   * the rest go on. Any other error marks the message's datagrams Failed, skips them, and
   * throws: flushing again sends the rest.
   */
  flush(): number {
    const fd = this.#socket.fd("sendmmsg");
    const { sendmmsg } = batchCalls();
    let coalesce = this.#socket.gso();
    let sent = 0;
    while (this.#next < this.count) {
      const built = this.#build(this.#next, coalesce);
      let m = 0;
      while (m < built) {
        this.calls++;
        const rc = sendmmsg(fd, this.#arena.from[m], built - m, 0);
        if (rc > 0) {
          this.messages += rc;
          const end = m + rc;
          for (; m < end; m++) sent += this.#runs[m];
          const done = m < built ? this.#first[m] : this.count;
          this.status.fill(DatagramStatus.Sent, this.#next, done);
          this.#next = done;
          continue;
        }
        const errno = errnoNow();
        if (errno === L.EINTR) continue;
        if (errno === L.EAGAIN) return sent;
        const first = this.#first[m], run = this.#runs[m];
        if (run > 1 && (errno === L.EMSGSIZE || errno === L.EINVAL || errno === L.EIO)) {
          if (errno === L.EIO) this.#socket.disableGso();
          coalesce = false; // again from `first`, one datagram a message
          break;
        }
        const tooBig = errno === L.EMSGSIZE;
        this.status.fill(
          tooBig ? DatagramStatus.TooBig : DatagramStatus.Failed,
          first,
          first + run,
        );
        this.#next = first + run;
        m++;
        if (!tooBig) throw new SocketCallError("sendmmsg", errno, `${this.#peers[first]}`);
        this.tooBig += run;
      }
    }
    return sent;
  }
}

/**
 * The datagrams of the last `receive()`: datagram i is data[offset[i] .. offset[i] + length[i]),
 * from `source(i)`. A GRO buffer's segments are listed one by one, in order, where they lie.
 * Everything here is overwritten by the next `receive()`.
 */
class UdpReceiveBatch {
  readonly data: Uint8Array;
  readonly offset: Uint32Array;
  readonly length: Uint32Array;
  /** Datagrams of the last receive. */
  count = 0;
  /** Messages of the last receive (fewer than `count` when GRO coalesced). */
  messages = 0;
  /** Datagrams lost since the socket opened because they did not fit a slot (MSG_TRUNC). */
  truncated = 0;
  /** recvmmsg calls made since the socket opened. */
  calls = 0;
  /** recvmmsg calls that found nothing (EAGAIN): a reader that asks once too often. */
  empty = 0;
  readonly #socket: SocketHandle;
  readonly #arena: MessageArena;
  readonly #v6: boolean;
  /** The message each datagram came in, whose name slot holds its source. */
  readonly #message: Uint16Array;

  constructor(
    socket: SocketHandle,
    family: 4 | 6,
    readonly capacity: number,
    readonly slotBytes: number,
  ) {
    this.#socket = socket;
    this.#v6 = family === 6;
    this.data = new Uint8Array(capacity * slotBytes);
    const table = capacity * GRO_MAX_SEGMENTS;
    this.offset = new Uint32Array(table);
    this.length = new Uint32Array(table);
    this.#message = new Uint16Array(table);
    this.#arena = new MessageArena(capacity, RX_CONTROL);
    const base = addressOf(this.data);
    const { view, iovecAt } = this.#arena;
    for (let m = 0; m < capacity; m++) {
      setWord(view, iovecAt + m * IOVEC + IOV_BASE, base + m * slotBytes);
      setWord(view, iovecAt + m * IOVEC + IOV_LEN, slotBytes);
    }
    this.#reset(capacity);
  }

  /**
   * The last receive took less than a full batch: the socket had nothing more then, and another
   * receive now would only find nothing (one syscall wasted per wake-up).
   */
  get drained(): boolean {
    return this.messages < this.capacity;
  }

  /** Gives back the room the kernel shrank to what it wrote (names, control) in `messages`. */
  #reset(messages: number): void {
    const { view } = this.#arena;
    for (let m = 0; m < messages; m++) {
      const at = m * MMSGHDR;
      view.setUint32(at + MSG_NAMELEN, NAME_SLOT, true);
      setWord(view, at + MSG_CONTROLLEN, RX_CONTROL);
    }
  }

  /**
   * How long datagram i waited between the kernel's receipt and this thread's `receive()` (ms,
   * from the SCM_TIMESTAMPNS the socket asked for; 0 without one): the time it spent in this
   * socket's buffer, for a thread busy elsewhere or short of CPU, and so no part of the path's.
   * A call to clock_gettime: for a datagram now and then, not for each.
   */
  waitedMs(i: number): number {
    const at = this.#controlData(
      this.#message[i],
      L.SOL_SOCKET,
      L.SCM_TIMESTAMPNS,
      structs.timespec.size,
    );
    if (at < 0) return 0;
    const { view } = this.#arena;
    return Math.max(
      0,
      sinceRealtime(readWord(view, at + TS_SEC), view.getUint32(at + TS_NSEC, true)),
    );
  }

  /** The GRO segment size in message m's control messages, or 0 (not coalesced). */
  #segmentSize(m: number): number {
    const at = this.#controlData(m, L.SOL_UDP, L.UDP_GRO, 2);
    // An int; segment sizes fit its low half.
    return at < 0 ? 0 : this.#arena.view.getUint16(at, true);
  }

  /**
   * Where the data of message m's control message `level`/`type` starts in the arena, if the
   * kernel wrote one of at least `bytes`; else -1.
   */
  #controlData(m: number, level: number, type: number, bytes: number): number {
    const { view, controlAt } = this.#arena;
    const start = controlAt + m * RX_CONTROL;
    const end = start + view.getUint32(m * MMSGHDR + MSG_CONTROLLEN, true);
    for (let c = start; c + CMSG_DATA <= end;) {
      const len = view.getUint32(c + CMSG_LEN_AT, true);
      if (len < CMSG_DATA) break;
      if (
        view.getInt32(c + CMSG_LEVEL_AT, true) === level &&
        view.getInt32(c + CMSG_TYPE_AT, true) === type && len >= CMSG_DATA + bytes
      ) {
        return c + CMSG_DATA;
      }
      c += cmsgAlign(len);
    }
    return -1;
  }

  /**
   * Takes what has arrived, up to `capacity` messages in one `recvmmsg`, and lists its datagrams.
   * Returns their count: 0 when nothing was waiting (EAGAIN).
   */
  receive(): number {
    const fd = this.#socket.fd("recvmmsg");
    const { recvmmsg } = batchCalls();
    this.#reset(this.messages);
    this.count = 0;
    this.messages = 0;
    let n: number;
    for (;;) {
      this.calls++;
      n = recvmmsg(fd, this.#arena.bytes, this.capacity, 0, null);
      if (n >= 0) break;
      const errno = errnoNow();
      if (errno === L.EINTR) continue;
      if (errno === L.EAGAIN) {
        this.empty++;
        return 0;
      }
      throw new SocketCallError("recvmmsg", errno, `port ${this.#socket.port()}`);
    }
    this.messages = n;
    const { view } = this.#arena;
    let count = 0;
    for (let m = 0; m < n; m++) {
      const at = m * MMSGHDR;
      const size = view.getUint32(at + MSG_LEN, true);
      const flags = view.getInt32(at + MSG_FLAGS, true);
      // Cut short, or its GRO segment size lost: no way to tell its datagrams apart.
      if (flags & (L.MSG_TRUNC | L.MSG_CTRUNC)) {
        this.truncated++;
        continue;
      }
      const start = m * this.slotBytes;
      const segment = this.#segmentSize(m) || size;
      let k = 0;
      do {
        this.offset[count] = start + k;
        this.length[count] = Math.min(segment, size - k);
        this.#message[count++] = m;
        k += segment;
      } while (k < size && count < this.offset.length);
      if (k < size) this.truncated++; // more segments than GRO makes: the table is full
    }
    this.count = count;
    return count;
  }

  #nameAt(i: number): number {
    return this.#arena.nameAt + this.#message[i] * NAME_SLOT;
  }

  /** Whether datagram i came from `peer` (no allocation). */
  sourceMatches(i: number, peer: UdpAddress): boolean {
    return sameEndpoint(this.#arena.bytes, this.#nameAt(i), peer.sockaddr, this.#v6);
  }

  /**
   * Whether datagram i came from `peer`'s host, from whatever port: a VXLAN endpoint picks its
   * source port per flow (RFC 7348, section 5).
   */
  sourceHostMatches(i: number, peer: UdpAddress): boolean {
    return sameEndpoint(this.#arena.bytes, this.#nameAt(i), peer.sockaddr, this.#v6, true);
  }

  /** The hash `UdpAddress.hash` would have for datagram i's source (no allocation). */
  sourceHash(i: number): number {
    return hashSockaddr(this.#arena.bytes, this.#nameAt(i), this.#v6);
  }

  /** Datagram i's source as an address to send to (allocates: for a new peer, not per packet). */
  source(i: number): UdpAddress {
    const at = this.#nameAt(i);
    const bytes = this.#arena.bytes;
    const size = this.#v6 ? structs.sockaddr_in6.size : structs.sockaddr_in.size;
    const sockaddr = bytes.slice(at, at + size);
    const view = new DataView(sockaddr.buffer);
    const v6 = this.#v6;
    let hostname = formatIp(sockaddr, v6 ? SIN6.sin6_addr : SIN.sin_addr, v6);
    const scope = v6 ? view.getUint32(SIN6.sin6_scope_id, true) : 0;
    if (scope) hostname += `%${scope}`;
    return new UdpAddress(hostname, view.getUint16(v6 ? SIN6.sin6_port : SIN.sin_port), sockaddr);
  }
}
