/**
 * Finds a connection's socket among the process's fds by its two endpoints: the one way to act
 * on a socket the runtime owns and does not expose. One place must: a TLS handshake cut short
 * (src/link/socket_abort.ts), whose fd the runtime keeps after `close()`. TLS connections stay
 * the runtime's (rustls); plain ones are our own from the start (tcp_socket.ts), so this goes
 * when the TLS path no longer needs it.
 *
 * A connection is keyed `local remote`, each end `ip bytes|port`, from Deno's addresses on one
 * side and `getsockname`/`getpeername` on the other; `findSockets` answers many keys in one pass
 * over /proc/self/fd.
 */
import { libc } from "../../ffi/libc.ts";
import { structs } from "../../ffi/layout.ts";
import { openFds } from "./proc_fds.ts";
import { ipBytes } from "./tcp_socket.ts";

const AF_INET = 2;
const AF_INET6 = 10;

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
