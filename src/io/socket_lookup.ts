/**
 * Finds a connection's socket among the process's fds by its two endpoints: the one way to act
 * on a socket the runtime owns and does not expose. Two places must: a plain link whose socket
 * the data path serves itself (src/link/socket_stream.ts), and a TLS handshake cut short
 * (src/link/socket_abort.ts), whose fd the runtime keeps after `close()`.
 *
 * A connection is keyed `local remote`, each end `ip bytes|port`, from Deno's addresses on one
 * side and `getsockname`/`getpeername` on the other; `findSockets` answers many keys in one pass
 * over /proc/self/fd.
 */
import { libc } from "../../ffi/libc.ts";
import { structs } from "../../ffi/layout.ts";
import { openFds } from "./proc_fds.ts";

const AF_INET = 2;
const AF_INET6 = 10;

/** The 4 or 16 bytes of an IP address as Deno writes it (`10.0.0.1`, `::1`, `::ffff:10.0.0.1`). */
export function ipBytes(text: string): Uint8Array | null {
  if (!text.includes(":")) {
    const parts = text.split(".");
    if (parts.length !== 4 || parts.some((p) => !/^\d{1,3}$/.test(p) || Number(p) > 255)) {
      return null;
    }
    return new Uint8Array(parts.map(Number));
  }
  let head = text;
  let tail4: Uint8Array | null = null;
  const lastColon = text.lastIndexOf(":");
  if (text.slice(lastColon + 1).includes(".")) {
    tail4 = ipBytes(text.slice(lastColon + 1));
    if (!tail4) return null;
    head = `${text.slice(0, lastColon + 1)}0:0`;
  }
  const halves = head.split("::");
  if (halves.length > 2) return null;
  const groups = (s: string) => (s === "" ? [] : s.split(":"));
  const left = groups(halves[0]);
  const right = halves.length === 2 ? groups(halves[1]) : [];
  const missing = 8 - left.length - right.length;
  // "::" stands for at least one group of zeros; without it there are exactly eight groups.
  if (halves.length === 2 ? missing < 1 : missing !== 0) return null;
  const words = [...left, ...Array(missing).fill("0"), ...right];
  const out = new Uint8Array(16);
  for (const [i, w] of words.entries()) {
    if (!/^[0-9a-fA-F]{1,4}$/.test(w)) return null;
    const v = parseInt(w, 16);
    out[2 * i] = v >> 8;
    out[2 * i + 1] = v & 0xff;
  }
  if (tail4) out.set(tail4, 12);
  return out;
}

/** `ip|port` of one end as Deno gives it; "" if its address cannot be read. */
function endpointKey(addr: Deno.NetAddr): string {
  const ip = ipBytes(addr.hostname);
  return ip ? `${ip.join(".")}|${addr.port}` : "";
}

/** The key of a TCP connection with these two ends; "" if either cannot be read. */
export function connectionKey(local: Deno.NetAddr, remote: Deno.NetAddr): string {
  const l = endpointKey(local), r = endpointKey(remote);
  return l && r ? `${l} ${r}` : "";
}

const sockaddr = new Uint8Array(structs.sockaddr_in6.size); // room for either family
const sockaddrView = new DataView(sockaddr.buffer);
const socklen = new Uint8Array(4);

/** `ip|port` of a socket's end, from `getsockname` or `getpeername`; "" if not an IP socket. */
function socketEnd(
  name: (fd: number, addr: Uint8Array, len: Uint8Array) => number,
  fd: number,
): string {
  new DataView(socklen.buffer).setUint32(0, sockaddr.length, true);
  if (name(fd, sockaddr, socklen) !== 0) return "";
  const v4 = structs.sockaddr_in.offsets;
  const v6 = structs.sockaddr_in6.offsets;
  const family = sockaddrView.getUint16(v4.sin_family, true); // the same place in both
  if (family === AF_INET) {
    const ip = sockaddr.subarray(v4.sin_addr, v4.sin_addr + 4);
    return `${ip.join(".")}|${sockaddrView.getUint16(v4.sin_port)}`;
  }
  if (family === AF_INET6) {
    const ip = sockaddr.subarray(v6.sin6_addr, v6.sin6_addr + 16);
    return `${ip.join(".")}|${sockaddrView.getUint16(v6.sin6_port)}`;
  }
  return "";
}

/**
 * The process's sockets whose connection key is in `wanted`, by key: one pass over the fds,
 * ended as soon as all are found. A key not in the result has no socket (closed already).
 */
export function findSockets(wanted: ReadonlySet<string>): Map<string, number> {
  const found = new Map<string, number>();
  if (wanted.size === 0) return found;
  const lib = libc();
  for (const fd of openFds((target) => target.startsWith("socket:"))) {
    const remote = socketEnd(lib.getpeername, fd);
    if (!remote) continue;
    const key = `${socketEnd(lib.getsockname, fd)} ${remote}`;
    if (wanted.has(key)) found.set(key, fd);
    if (found.size === wanted.size) break;
  }
  return found;
}
