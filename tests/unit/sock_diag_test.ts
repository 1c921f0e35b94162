/**
 * src/io/sock_diag.ts and src/link/socket_abort.ts: the SOCK_DESTROY request's bytes and the
 * kernel's answer, the constants against both architectures' headers, and real sockets ended by
 * their endpoints (it needs CAP_NET_ADMIN, as the server does: the tests run as root), a TLS
 * connection whose handshake the runtime still waits on among them.
 */
import "reflect-metadata";
import * as x509 from "@peculiar/x509";
import { assert, assertEquals } from "./assert.ts";
import { compileC, constantChecks } from "./c_check.ts";
import type { Arch } from "../../ffi/layout.ts";
import {
  decodeAnswer,
  encodeRequest,
  NO_COOKIE,
  REQUEST_BYTES,
  SOCK_DIAG,
  SocketDiag,
} from "../../src/io/sock_diag.ts";
import { abortSocket } from "../../src/link/socket_abort.ts";
import { createCa, issueCert } from "../../src/link/pki.ts";

x509.cryptoProvider.set(crypto);

const linux = Deno.build.os === "linux";
const hex = (b: Uint8Array) => Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");
const addr = (hostname: string, port: number): Deno.NetAddr => ({
  transport: "tcp",
  hostname,
  port,
});

Deno.test("every sock_diag constant holds on x86_64 and aarch64", async () => {
  const headers = ["errno.h", "sys/socket.h", "netinet/in.h", "netinet/tcp.h"];
  headers.push("linux/netlink.h", "linux/sock_diag.h", "linux/inet_diag.h");
  const source = constantChecks(headers, { ...SOCK_DIAG, INET_DIAG_NOCOOKIE: 0xffffffff });
  for (const arch of ["x86_64", "aarch64"] as Arch[]) {
    assertEquals(await compileC(arch, source), "", arch);
  }
  const wrong = await compileC(
    "aarch64",
    source + `_Static_assert(SOCK_DESTROY == 20, "wrong");\n`,
  );
  assert(wrong.includes("wrong"), wrong);
});

Deno.test("a request names the connection: header, family, ports, addresses, cookie", () => {
  const { SOCK_DESTROY, SOCK_DIAG_BY_FAMILY } = SOCK_DIAG;
  const r = encodeRequest(
    SOCK_DESTROY,
    addr("10.78.0.1", 7000),
    addr("10.78.0.20", 0xabcd),
    [0x11223344, 0x55667788],
    7,
  )!;
  assertEquals(r.length, REQUEST_BYTES);
  assertEquals(REQUEST_BYTES, 72);
  // nlmsghdr: length 72, type 21 (SOCK_DESTROY), flags REQUEST|ACK, seq 7, pid 0 (host order).
  assertEquals(hex(r.subarray(0, 16)), "48000000" + "1500" + "0500" + "07000000" + "00000000");
  // inet_diag_req_v2: AF_INET, TCP, no extensions, every state.
  assertEquals(hex(r.subarray(16, 24)), "02060000" + "ffffffff");
  // inet_diag_sockid: ports then addresses in network order, no interface, the cookie.
  assertEquals(hex(r.subarray(24, 28)), "1b58abcd");
  assertEquals(hex(r.subarray(28, 44)), "0a4e0001" + "00".repeat(12));
  assertEquals(hex(r.subarray(44, 60)), "0a4e0014" + "00".repeat(12));
  assertEquals(hex(r.subarray(60, 72)), "00000000" + "44332211" + "88776655");

  // A lookup wants no acknowledgement (its answer is the socket), and names no cookie.
  const q = encodeRequest(
    SOCK_DIAG_BY_FAMILY,
    addr("fd00::1", 443),
    addr("::ffff:10.0.0.9", 50000),
    NO_COOKIE,
    1,
  )!;
  assertEquals(hex(q.subarray(4, 8)), "1400" + "0100");
  assertEquals(q[16], SOCK_DIAG.AF_INET6);
  assertEquals(hex(q.subarray(28, 44)), "fd00" + "00".repeat(13) + "01");
  assertEquals(hex(q.subarray(44, 60)), "00".repeat(10) + "ffff0a000009");
  assertEquals(hex(q.subarray(64, 72)), "ff".repeat(8));

  const some = (a: string, b: string) =>
    encodeRequest(SOCK_DESTROY, addr(a, 1), addr(b, 2), NO_COOKIE, 1);
  assertEquals(some("10.0.0.1", "fd00::1"), null);
  assertEquals(some("not-an-ip", "10.0.0.1"), null);
});

Deno.test("the kernel's answers: a socket found, an acknowledgement, an errno, another's", () => {
  const message = (type: number, seq: number, length: number) => {
    const a = new Uint8Array(length);
    const v = new DataView(a.buffer);
    v.setUint32(0, length, true);
    v.setUint16(4, type, true);
    v.setUint32(8, seq, true);
    return { a, v };
  };
  const error = (seq: number, errno: number) => {
    const { a, v } = message(SOCK_DIAG.NLMSG_ERROR, seq, 36);
    v.setInt32(16, -errno, true);
    return a;
  };
  assertEquals(decodeAnswer(error(5, 0), 5), { errno: 0 });
  assertEquals(decodeAnswer(error(5, 2), 5), { errno: 2 });
  assertEquals(decodeAnswer(error(4, 0), 5), null, "another request's");
  assertEquals(decodeAnswer(new Uint8Array(12), 5), null, "too short");
  // inet_diag_msg after the header: state at 1, the id at 4 (dport at 6, cookie at 44).
  const { a, v } = message(SOCK_DIAG.SOCK_DIAG_BY_FAMILY, 9, 16 + 72 + 8);
  a[16 + 1] = 1; // TCP_ESTABLISHED
  v.setUint16(16 + 6, 50000);
  v.setUint32(16 + 44, 0xdeadbeef, true);
  v.setUint32(16 + 48, 7, true);
  assertEquals(decodeAnswer(a, 9), {
    socket: { state: 1, remotePort: 50000, cookie: [0xdeadbeef, 7] },
  });
});

/** Resolves with what the next read of `conn` gives: bytes, end of file, or an error's name. */
function nextRead(conn: Deno.Conn): Promise<string> {
  return conn.read(new Uint8Array(16)).then(
    (n) => n === null ? "eof" : `${n} bytes`,
    (e) => (e as Error).name,
  );
}

/** `p`'s value, or "pending" if it has none after `ms` (to show that nothing happened). */
function within<T>(p: Promise<T>, ms: number): Promise<T | "pending"> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  return Promise.race([
    p,
    new Promise<"pending">((r) => timer = setTimeout(() => r("pending"), ms)),
  ]).finally(() => clearTimeout(timer));
}

Deno.test({
  name: "a connection is ended by its endpoints: both ends see it; then gone, the listener kept",
  ignore: !linux,
  fn: async () => {
    using diag = new SocketDiag();
    const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
    const client = await Deno.connect({
      hostname: "127.0.0.1",
      port: (listener.addr as Deno.NetAddr).port,
    });
    const server = await listener.accept();
    const local = server.localAddr as Deno.NetAddr, remote = server.remoteAddr as Deno.NetAddr;
    const serverRead = nextRead(server), clientRead = nextRead(client);
    assertEquals(diag.destroyTcp(local, remote), "destroyed");
    assertEquals(await serverRead, "ConnectionAborted");
    assertEquals(await clientRead, "ConnectionReset");
    // Ended already: nothing to end. The kernel's lookup by endpoints then finds the listener
    // on the local port, which must be left alone: it still accepts.
    assertEquals(diag.destroyTcp(local, remote), "gone");
    server.close();
    client.close();
    const again = await Deno.connect({ hostname: "127.0.0.1", port: local.port });
    (await listener.accept()).close();
    again.close();
    listener.close();
  },
});

Deno.test({
  name: "a TLS connection whose handshake is pending: close() keeps it, abortSocket ends it",
  ignore: !linux,
  fn: async () => {
    const ca = await createCa({ name: "Test CA" });
    const leaf = await issueCert({ ca, name: "node1", sans: ["127.0.0.1"] });
    const listener = Deno.listenTls({
      hostname: "127.0.0.1",
      port: 0,
      cert: leaf.cert,
      key: leaf.key,
    });
    // A client that never speaks: the server's handshake waits for its hello.
    const silent = await Deno.connect({
      hostname: "127.0.0.1",
      port: (listener.addr as Deno.NetAddr).port,
    });
    const conn = await listener.accept();
    const local = conn.localAddr, remote = conn.remoteAddr;
    const handshake = conn.handshake().then(() => "done", (e) => (e as Error).name);
    const seen = nextRead(silent);
    conn.close();
    // The runtime keeps the socket for the handshake: the client is not told. (If this fails,
    // Deno closes such sockets itself now, and socket_abort.ts may go.)
    assertEquals(await within(seen, 300), "pending");
    assertEquals(abortSocket(local, remote), null);
    assert(["eof", "ConnectionReset"].includes(await seen), "the client saw its end");
    assert(await handshake !== "done", "the handshake failed");
    silent.close();
    listener.close();
  },
});
