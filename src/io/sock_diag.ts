/**
 * Ends a TCP connection by its two endpoints, through the kernel's socket diagnostics (netlink,
 * NETLINK_SOCK_DIAG), as `ss -K` does. No fd is needed, so a socket the runtime owns and does
 * not expose is ended without looking it up among the process's fds. The one user: a TLS
 * handshake cut short (src/link/socket_abort.ts).
 *
 * Two requests, because the kernel finds a socket by endpoints as it would for a packet: when
 * no connection has them (closed already), it finds the listening socket on the local port,
 * and a SOCK_DESTROY by endpoints alone would end the server's listener. So the first request
 * (SOCK_DIAG_BY_FAMILY) asks which socket has them; only if that is a connection, not a
 * listener, does the second (SOCK_DESTROY) end it, named by its cookie too, so that nothing
 * else is ended if it closed in between.
 *
 * The kernel aborts the socket as a reset would: a read pending on it fails (ECONNABORTED) and
 * its owner closes it; the peer gets a RST. It takes CAP_NET_ADMIN, which the server has for
 * its captures, and a kernel built with CONFIG_INET_DIAG_DESTROY; without that the kernel
 * answers EOPNOTSUPP, which the caller is told.
 *
 * The kernel handles each request within `send` and queues its answer before `send` returns,
 * so the answer is read at once, without waiting.
 */
import { errnoText, lastErrno, libc } from "../../ffi/libc.ts";
import { structs } from "../../ffi/layout.ts";
import { ipBytes } from "./tcp_socket.ts";

/**
 * Linux's numbers for the requests, from <linux/netlink.h>, <linux/sock_diag.h>,
 * <linux/inet_diag.h>, <netinet/tcp.h> and <sys/socket.h>; tests/unit/sock_diag_test.ts checks
 * them against both architectures' headers.
 */
export const SOCK_DIAG = {
  AF_NETLINK: 16,
  AF_INET: 2,
  AF_INET6: 10,
  SOCK_DGRAM: 2,
  SOCK_CLOEXEC: 0o2000000,
  NETLINK_SOCK_DIAG: 4,
  SOCK_DIAG_BY_FAMILY: 20,
  SOCK_DESTROY: 21,
  NLM_F_REQUEST: 1,
  NLM_F_ACK: 4,
  NLMSG_ERROR: 2,
  IPPROTO_TCP: 6,
  TCP_LISTEN: 10,
  MSG_DONTWAIT: 0x40,
  ENOENT: 2,
  ESTALE: 116,
} as const;

/** Every TCP state: a request for one socket names it by its endpoints. */
const ALL_STATES = 0xffffffff;
/** INET_DIAG_NOCOOKIE: the socket is not named by its cookie. */
export const NO_COOKIE: readonly [number, number] = [0xffffffff, 0xffffffff];

const HEADER = structs.nlmsghdr;
const REQUEST = structs.inet_diag_req_v2;
const ID = structs.inet_diag_sockid;
const ERROR = structs.nlmsgerr;
const MSG = structs.inet_diag_msg;
/** A whole request: the netlink header, then the sock_diag request. */
export const REQUEST_BYTES = HEADER.size + REQUEST.size;

/**
 * A sock_diag request of `type` (SOCK_DIAG_BY_FAMILY or SOCK_DESTROY) for the TCP connection
 * from `local` to `remote`, named by `cookie` too unless NO_COOKIE, with sequence number `seq`;
 * null if an address is not an IP address, or the two are of different families. Netlink's own
 * fields are in host byte order (little-endian on every target), ports and addresses in network
 * byte order, the cookie as the kernel gave it.
 */
export function encodeRequest(
  type: number,
  local: Deno.NetAddr,
  remote: Deno.NetAddr,
  cookie: readonly [number, number],
  seq: number,
): Uint8Array | null {
  const src = ipBytes(local.hostname), dst = ipBytes(remote.hostname);
  if (!src || !dst || src.length !== dst.length) return null;
  const out = new Uint8Array(REQUEST_BYTES);
  const view = new DataView(out.buffer);
  const h = HEADER.offsets;
  view.setUint32(h.nlmsg_len, out.length, true);
  view.setUint16(h.nlmsg_type, type, true);
  // A destroy is acknowledged; a lookup is answered with the socket, or an error.
  const ack = type === SOCK_DIAG.SOCK_DESTROY ? SOCK_DIAG.NLM_F_ACK : 0;
  view.setUint16(h.nlmsg_flags, SOCK_DIAG.NLM_F_REQUEST | ack, true);
  view.setUint32(h.nlmsg_seq, seq >>> 0, true);
  const r = HEADER.size;
  out[r + REQUEST.offsets.sdiag_family] = src.length === 4 ? SOCK_DIAG.AF_INET : SOCK_DIAG.AF_INET6;
  out[r + REQUEST.offsets.sdiag_protocol] = SOCK_DIAG.IPPROTO_TCP;
  view.setUint32(r + REQUEST.offsets.idiag_states, ALL_STATES, true);
  const id = r + REQUEST.offsets.id;
  view.setUint16(id + ID.offsets.idiag_sport, local.port);
  view.setUint16(id + ID.offsets.idiag_dport, remote.port);
  out.set(src, id + ID.offsets.idiag_src);
  out.set(dst, id + ID.offsets.idiag_dst);
  view.setUint32(id + ID.offsets.idiag_cookie, cookie[0], true);
  view.setUint32(id + ID.offsets.idiag_cookie + 4, cookie[1], true);
  return out;
}

/** What the kernel says to request `seq`: a socket it found, an errno (0: done), or neither. */
export type Answer =
  | { socket: { state: number; remotePort: number; cookie: [number, number] } }
  | { errno: number }
  | null;

/** Decodes the kernel's answer in `answer` to request `seq`; null if it is another's. */
export function decodeAnswer(answer: Uint8Array, seq: number): Answer {
  if (answer.length < HEADER.size) return null;
  const view = new DataView(answer.buffer, answer.byteOffset, answer.length);
  const h = HEADER.offsets;
  if (view.getUint32(h.nlmsg_seq, true) !== seq >>> 0) return null;
  const type = view.getUint16(h.nlmsg_type, true);
  if (type === SOCK_DIAG.NLMSG_ERROR && answer.length >= HEADER.size + ERROR.size) {
    return { errno: -view.getInt32(HEADER.size + ERROR.offsets.error, true) | 0 }; // not -0
  }
  if (type === SOCK_DIAG.SOCK_DIAG_BY_FAMILY && answer.length >= HEADER.size + MSG.size) {
    const m = HEADER.size;
    const id = m + MSG.offsets.id;
    return {
      socket: {
        state: answer[m + MSG.offsets.idiag_state],
        remotePort: view.getUint16(id + ID.offsets.idiag_dport),
        cookie: [
          view.getUint32(id + ID.offsets.idiag_cookie, true),
          view.getUint32(id + ID.offsets.idiag_cookie + 4, true),
        ],
      },
    };
  }
  return null;
}

/** What became of a connection: ended, not there (closed already), or refused with an errno. */
export type DestroyOutcome = "destroyed" | "gone" | { errno: number; text: string };

/** A NETLINK_SOCK_DIAG socket that ends TCP connections by their endpoints. */
export class SocketDiag implements Disposable {
  readonly #fd: number;
  #seq = 0;
  #open = true;
  /** Room for an answer: a socket with the attributes the kernel adds, or an error. */
  readonly #answer = new Uint8Array(4096);

  /** Opens the socket; throws with the reason if it cannot (not Linux, no netlink). */
  constructor() {
    const fd = libc().socket(
      SOCK_DIAG.AF_NETLINK,
      SOCK_DIAG.SOCK_DGRAM | SOCK_DIAG.SOCK_CLOEXEC,
      SOCK_DIAG.NETLINK_SOCK_DIAG,
    );
    if (fd < 0) throw new Error(`socket(AF_NETLINK, NETLINK_SOCK_DIAG): ${lastErrno().text}`);
    this.#fd = fd;
  }

  /** Ends the TCP connection from `local` to `remote` (addresses as Deno gives them). */
  destroyTcp(local: Deno.NetAddr, remote: Deno.NetAddr): DestroyOutcome {
    const found = this.#ask(SOCK_DIAG.SOCK_DIAG_BY_FAMILY, local, remote, NO_COOKIE);
    if (found === null) return { errno: 0, text: "not a TCP connection between two IP addresses" };
    if ("errno" in found) return failure(found.errno);
    const s = found.socket;
    // The listener on the local port, found in the connection's place: the connection is gone.
    if (s.state === SOCK_DIAG.TCP_LISTEN || s.remotePort !== remote.port) return "gone";
    const done = this.#ask(SOCK_DIAG.SOCK_DESTROY, local, remote, s.cookie);
    if (done === null || "socket" in done) return { errno: 0, text: "no acknowledgement" };
    return done.errno === 0 ? "destroyed" : failure(done.errno);
  }

  /** Sends one request and reads its answer (see the top: it is there when `send` returns). */
  #ask(
    type: number,
    local: Deno.NetAddr,
    remote: Deno.NetAddr,
    cookie: readonly [number, number],
  ): Answer | { errno: number } {
    if (!this.#open) throw new Error("the sock_diag socket is closed");
    const seq = ++this.#seq;
    const request = encodeRequest(type, local, remote, cookie, seq);
    if (!request) return null;
    const lib = libc();
    if (Number(lib.send(this.#fd, request, BigInt(request.length), 0)) < 0) {
      return { errno: lastErrno().errno };
    }
    // Answers to earlier requests that were not read (none should be) are passed over.
    for (;;) {
      const n = Number(
        lib.recv(this.#fd, this.#answer, BigInt(this.#answer.length), SOCK_DIAG.MSG_DONTWAIT),
      );
      if (n < 0) return { errno: lastErrno().errno };
      const answer = decodeAnswer(this.#answer.subarray(0, n), seq);
      if (answer !== null) return answer;
    }
  }

  close(): void {
    if (!this.#open) return;
    this.#open = false;
    libc().close(this.#fd);
  }

  [Symbol.dispose](): void {
    this.close();
  }
}

/** An errno as an outcome: no such socket (or another in its place, ESTALE) is "gone". */
function failure(errno: number): DestroyOutcome {
  if (errno === SOCK_DIAG.ENOENT || errno === SOCK_DIAG.ESTALE) return "gone";
  return { errno, text: errnoText(errno) };
}
