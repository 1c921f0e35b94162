/**
 * Plain TCP through libc (src/io/tcp_socket.ts) on real loopback sockets: listening, accepting
 * and connecting, checked against Deno's own TCP (its addresses, its errors' classes and words),
 * and the dial errors users read (src/link/dial.ts).
 */
import { evalJson, isOpen } from "./fds.ts";
import { assert, assertEquals, assertRejects } from "./assert.ts";
import {
  closeSocket,
  connectTcp,
  ipBytes,
  ipText,
  listenTcp,
  type TcpConnection,
} from "../../src/io/tcp_socket.ts";
import { SocketStream } from "../../src/link/socket_stream.ts";
import { dial } from "../../src/link/dial.ts";
import { importSecret } from "../../src/link/auth.ts";
import { ErrorCode, VnetError } from "../../src/errors.ts";
import { Warnings } from "./warnings_log.ts";
import { lastErrno, libc } from "../../ffi/libc.ts";
import { structs } from "../../ffi/layout.ts";

const notLinux = Deno.build.os !== "linux";

Deno.test("ipBytes reads addresses as Deno writes them", () => {
  assertEquals(ipBytes("10.78.0.1"), new Uint8Array([10, 78, 0, 1]));
  assertEquals(ipBytes("::1"), new Uint8Array([...Array(15).fill(0), 1]));
  assertEquals(
    ipBytes("2001:db8::1:2"),
    new Uint8Array([0x20, 0x01, 0x0d, 0xb8, ...Array(8).fill(0), 0, 1, 0, 2]),
  );
  assertEquals(
    ipBytes("::ffff:10.1.2.3"),
    new Uint8Array([...Array(10).fill(0), 0xff, 0xff, 10, 1, 2, 3]),
  );
  assertEquals(ipBytes("fe80::"), new Uint8Array([0xfe, 0x80, ...Array(14).fill(0)]));
  for (
    const bad of [
      "1.2.3",
      "1.2.3.256",
      "1..2.3",
      "0x1.2.3.4",
      "1::2::3",
      "g::1",
      "1:2:3:4:5:6:7:8:9",
      "1:2:3:4:5:6:7:8::",
      "1:2",
      "",
      "localhost",
    ]
  ) {
    assertEquals(ipBytes(bad), null, bad);
  }
});

Deno.test("ipText writes addresses as Deno does, and ipBytes reads them back", () => {
  const cases: [string, string][] = [
    ["10.78.0.1", "10.78.0.1"],
    ["::", "::"],
    ["::1", "::1"],
    ["0:0:0:0:0:ffff:a01:203", "::ffff:10.1.2.3"],
    ["2001:DB8:0:0:0:0:0:1", "2001:db8::1"],
    ["2001:db8:0:1:0:0:0:1", "2001:db8:0:1::1"], // the longest run of zeros
    ["2001:0:0:1:0:0:1:1", "2001::1:0:0:1:1"], // the first of two as long
    ["2001:db8:0:1:1:1:1:1", "2001:db8:0:1:1:1:1:1"], // one zero group stays
    ["fe80::", "fe80::"],
    ["1:2:3:4:5:6:7:8", "1:2:3:4:5:6:7:8"],
  ];
  for (const [input, text] of cases) {
    const ip = ipBytes(input);
    assert(ip, input);
    assertEquals(ipText(ip), text, input);
    assertEquals(ipBytes(text), ip, text);
  }
});

/** `fd`'s open flags (octal in /proc/self/fdinfo). */
function fdFlags(fd: number): number {
  const text = Deno.readTextFileSync(`/proc/self/fdinfo/${fd}`);
  return parseInt(/^flags:\s+([0-7]+)/m.exec(text)![1], 8);
}

const O_NONBLOCK = 0o4000;
const O_CLOEXEC = 0o2000000;

/** The IPPROTO_TCP option `option` of `fd`, read back with getsockopt. */
function tcpOption(fd: number, option: number): number {
  const value = new Int32Array(1);
  const len = new Uint32Array([4]);
  const rc = libc().getsockopt(
    fd,
    6,
    option,
    new Uint8Array(value.buffer),
    new Uint8Array(len.buffer),
  );
  assertEquals(rc, 0, `getsockopt: ${lastErrno().text}`);
  return value[0];
}

/** How many sockets this process has open. */
function sockets(): number {
  let n = 0;
  for (const entry of Deno.readDirSync("/proc/self/fd")) {
    try {
      if (Deno.readLinkSync(`/proc/self/fd/${entry.name}`).startsWith("socket:")) n++;
    } catch { /* closed while we looked */ }
  }
  return n;
}

Deno.test({
  name: "listen, accept and connect on 127.0.0.1 and ::1: our sockets, their addresses, bytes",
  ignore: notLinux,
  async fn() {
    for (const hostname of ["127.0.0.1", "::1"]) {
      const listener = await listenTcp(hostname, 0);
      assertEquals(listener.addr.hostname, hostname);
      assert(listener.addr.port > 0);
      const [accepted, dialled] = await Promise.all([
        listener.accept(),
        connectTcp(hostname, listener.addr.port, 5000),
      ]);
      // Each end's view of the other matches.
      assertEquals(accepted.local, { hostname, port: listener.addr.port });
      assertEquals(dialled.remote, accepted.local);
      assertEquals(accepted.remote, dialled.local);
      for (const c of [accepted, dialled]) {
        const flags = fdFlags(c.fd);
        assert(flags & O_NONBLOCK, `${hostname}: nonblocking`);
        assert(flags & O_CLOEXEC, `${hostname}: close-on-exec`);
        assert(tcpOption(c.fd, 1) !== 0, `${hostname}: TCP_NODELAY`);
        // TCP_NOTSENT_LOWAT (25): the unsent queue stays in VNET's fair queue, not the kernel's.
        assertEquals(tcpOption(c.fd, 25), 128 << 10, `${hostname}: TCP_NOTSENT_LOWAT`);
      }
      assert(fdFlags(listener.fd) & O_NONBLOCK, "the listener is nonblocking");
      assert(fdFlags(listener.fd) & O_CLOEXEC, "the listener is close-on-exec");

      const a = new SocketStream(accepted.fd), d = new SocketStream(dialled.fd);
      await d.write(new TextEncoder().encode("hello"));
      const buf = new Uint8Array(16);
      const n = await a.read(buf);
      assertEquals(new TextDecoder().decode(buf.subarray(0, n!)), "hello");
      a.close();
      assertEquals(await d.read(buf), null, "EOF after the other end closed");
      d.close();
      listener.close();
    }
  },
});

Deno.test({
  name: "our listener's addresses are the ones Deno's own sockets see",
  ignore: notLinux,
  async fn() {
    // A dual-stack listener: an IPv4 client reads as ::ffff:127.0.0.1, as through Deno.listen.
    for (const [listenOn, connectTo] of [["::", "127.0.0.1"], ["127.0.0.1", "127.0.0.1"]]) {
      const listener = await listenTcp(listenOn, 0);
      const [accepted, deno] = await Promise.all([
        listener.accept(),
        Deno.connect({ hostname: connectTo, port: listener.addr.port }),
      ]);
      const { hostname, port } = deno.localAddr;
      const expected = listenOn === "::" ? `::ffff:${hostname}` : hostname;
      assertEquals(accepted.remote, { hostname: expected, port });
      deno.close();
      closeSocket(accepted.fd);
      listener.close();
    }
  },
});

Deno.test({
  name: "a host name is resolved (/etc/hosts: localhost) to listen and to connect",
  ignore: notLinux,
  async fn() {
    const listener = await listenTcp("localhost", 0);
    const [accepted, dialled] = await Promise.all([
      listener.accept(),
      connectTcp("localhost", listener.addr.port, 5000),
    ]);
    assertEquals(dialled.remote, listener.addr);
    closeSocket(accepted.fd);
    closeSocket(dialled.fd);
    listener.close();
    await assertRejects(
      () => connectTcp("no-such-host.invalid", 7000, 5000),
      /failed to lookup address information/,
    );
  },
});

const testKey = importSecret(new Uint8Array(32).fill(7));

/** A loopback port nothing listens on (bound, then released). */
function closedPort(hostname = "127.0.0.1"): number {
  const l = Deno.listen({ hostname, port: 0 });
  const port = (l.addr as Deno.NetAddr).port;
  l.close();
  return port;
}

/** The error `f` rejects with. */
async function rejection(f: () => Promise<unknown>): Promise<Error> {
  try {
    await f();
  } catch (e) {
    return e as Error;
  }
  throw new Error("expected a rejection");
}

/** How a control link's dial to `hostname`:`port` fails. */
async function dialFailure(hostname: string, port: number): Promise<Error> {
  const key = await testKey;
  return await rejection(() =>
    dial({ hostname, port }, {
      key,
      kind: "control",
      log: new Warnings(),
      events: { onRequest: () => Promise.resolve(), onClose: () => {} },
    })
  );
}

Deno.test({
  name: "a refused connect fails as Deno.connect's did, and dial says the same words",
  ignore: notLinux,
  async fn() {
    for (const hostname of ["127.0.0.1", "::1"]) {
      const port = closedPort(hostname);
      const ours = await rejection(() => connectTcp(hostname, port, 5000));
      const deno = await rejection(() => Deno.connect({ hostname, port }));
      assert(ours instanceof Deno.errors.ConnectionRefused, String(ours));
      assertEquals(ours.message, deno.message);
      assertEquals((ours as { code?: string }).code, "ECONNREFUSED");
    }
    const port = closedPort();
    const e = await dialFailure("127.0.0.1", port);
    assert(e instanceof VnetError);
    assertEquals(e.code, ErrorCode.Unreachable);
    assertEquals(
      e.message,
      `cannot connect to 127.0.0.1:${port}: connection refused (is vnet server running there?)`,
    );
  },
});

Deno.test({
  name: "a port in use fails as Deno.listen's did",
  ignore: notLinux,
  async fn() {
    const taken = await listenTcp("127.0.0.1", 0);
    const ours = await rejection(() => listenTcp("127.0.0.1", taken.addr.port));
    let deno: Error | undefined;
    try {
      Deno.listen({ hostname: "127.0.0.1", port: taken.addr.port }).close();
    } catch (e) {
      deno = e as Error;
    }
    assert(ours instanceof Deno.errors.AddrInUse, String(ours));
    assertEquals(ours.message, deno?.message);
    assertEquals(ours.message, "Address already in use (os error 98)");
    assertEquals((ours as { syscall?: string }).syscall, "bind");
    taken.close();
  },
});

Deno.test({
  name: "a connect that fails unexpectedly says which call failed",
  ignore: notLinux,
  async fn() {
    // Linux refuses a TCP connect to a multicast address at once: ENETUNREACH.
    const e = await dialFailure("224.0.0.1", 9);
    assert(e instanceof VnetError);
    assertEquals(e.code, ErrorCode.Unreachable);
    assertEquals(
      e.message,
      "cannot connect to 224.0.0.1:9: connect: Network is unreachable (os error 101)",
    );
  },
});

/**
 * A listener whose accept queue is full and never drained (backlog 0 holds one connection): the
 * kernel drops every further SYN, so a connect to it hangs until its timeout.
 */
function fullListener(): { port: number; close(): void } {
  const lib = libc();
  const fd = lib.socket(2, 1 | 0o2000000, 0); // AF_INET, SOCK_STREAM | SOCK_CLOEXEC
  const { size, offsets } = structs.sockaddr_in;
  const addr = new Uint8Array(size);
  const view = new DataView(addr.buffer);
  view.setUint16(offsets.sin_family, 2, true);
  addr.set([127, 0, 0, 1], offsets.sin_addr);
  assertEquals(lib.bind(fd, addr, size), 0, lastErrno().text);
  assertEquals(lib.listen(fd, 0), 0, lastErrno().text);
  const len = new Uint32Array([size]);
  assertEquals(lib.getsockname(fd, addr, new Uint8Array(len.buffer)), 0);
  return { port: view.getUint16(offsets.sin_port), close: () => lib.close(fd) };
}

Deno.test({
  name: "a connect that is not answered times out, its socket closed",
  ignore: notLinux,
  async fn() {
    const full = fullListener();
    const held: TcpConnection[] = [];
    try {
      // Fill the queue: what the kernel still takes connects at once.
      for (let i = 0; i < 4; i++) {
        const before = sockets();
        const t0 = performance.now();
        const r = await connectTcp("127.0.0.1", full.port, 300).catch((e) => e as Error);
        const ms = performance.now() - t0;
        if (!(r instanceof Error)) {
          held.push(r);
          continue;
        }
        assert(r instanceof Deno.errors.TimedOut, String(r));
        assertEquals(r.message, "timed out after 300 ms");
        assert(ms >= 290 && ms < 3000, `timed out after ${Math.round(ms)} ms`);
        // Its socket is closed once the helper thread's poll let go of it.
        for (let j = 0; j < 100 && sockets() > before; j++) {
          await new Promise((r) => setTimeout(r, 10));
        }
        assertEquals(sockets(), before, "the timed-out connect's socket is closed");
        const e = await rejection(async () =>
          dial({ hostname: "127.0.0.1", port: full.port }, {
            key: await testKey,
            kind: "control",
            log: new Warnings(),
            events: { onRequest: () => Promise.resolve(), onClose: () => {} },
            timeoutMs: 200,
          })
        );
        assertEquals(
          e.message,
          `cannot connect to 127.0.0.1:${full.port}: timed out after 200 ms`,
        );
        assertEquals((e as VnetError).code, ErrorCode.Unreachable);
        return;
      }
      throw new Error(`${held.length} connects to a full queue all completed`);
    } finally {
      for (const c of held) closeSocket(c.fd);
      full.close();
    }
  },
});

Deno.test({
  name: "close ends a pending accept; closing twice is harmless",
  ignore: notLinux,
  async fn() {
    const listener = await listenTcp("127.0.0.1", 0);
    const accepting = listener.accept();
    setTimeout(() => listener.close(), 20);
    await assertRejects(() => accepting, Deno.errors.BadResource);
    listener.close();
    for (let i = 0; i < 100 && isOpen(listener.fd); i++) {
      await new Promise((r) => setTimeout(r, 10));
    }
    assert(!isOpen(listener.fd), "the listener's fd is closed");
    await assertRejects(() => listener.accept(), Deno.errors.BadResource);
    // Its port is free again.
    const again = await listenTcp("127.0.0.1", listener.addr.port);
    again.close();
  },
});

Deno.test({
  name: "accept takes every connection that waits, then waits for more",
  ignore: notLinux,
  async fn() {
    const listener = await listenTcp("127.0.0.1", 0);
    const clients = await Promise.all(
      Array.from({ length: 20 }, () => connectTcp("127.0.0.1", listener.addr.port, 5000)),
    );
    const accepted: TcpConnection[] = [];
    for (let i = 0; i < clients.length; i++) accepted.push(await listener.accept());
    assertEquals(
      new Set(accepted.map((c) => c.remote.port)),
      new Set(clients.map((c) => c.local.port)),
    );
    const late = connectTcp("127.0.0.1", listener.addr.port, 5000);
    const next = await listener.accept();
    assertEquals(next.remote, (await late).local);
    for (const c of [...clients, ...accepted, next, await late]) closeSocket(c.fd);
    listener.close();
  },
});

Deno.test({
  name: "a large write waits for room while the far end reads, every byte in order",
  ignore: notLinux,
  async fn() {
    const listener = await listenTcp("::1", 0);
    const [a, d] = await Promise.all([
      listener.accept(),
      connectTcp("::1", listener.addr.port, 5000),
    ]);
    listener.close();
    const writer = new SocketStream(d.fd), reader = new SocketStream(a.fd);
    const big = new Uint8Array(32 * 1024 * 1024).map((_, i) => (i * 7) % 253);
    let writes = 0;
    const writing = (async () => {
      let off = 0;
      while (off < big.length) {
        off += await writer.write(big.subarray(off));
        writes++;
      }
    })();
    const got = new Uint8Array(big.length);
    let n = 0;
    while (n < big.length) {
      const r = await reader.read(got.subarray(n));
      assert(r !== null, `EOF after ${n} bytes`);
      n += r;
    }
    await writing;
    assert(writes > 1, "the kernel's buffer filled: the write waited and went on");
    assert(got.every((b, i) => b === (i * 7) % 253), "every byte in order");
    writer.close();
    assertEquals(await reader.read(got), null);
    reader.close();
    reader.close();
  },
});

/**
 * Two accepts that wait at once both get a connection, and the thread runs on meanwhile. Run in
 * its own process with a time limit: the failure this guards against is two waits ending each
 * other for ever, which starves the whole thread.
 */
Deno.test({
  name: "two accepts waiting at once both finish, and the thread keeps running meanwhile",
  ignore: notLinux,
  async fn() {
    const script = `
      import { closeSocket, connectTcp, listenTcp } from "./src/io/tcp_socket.ts";
      const listener = await listenTcp("127.0.0.1", 0);
      const both = Promise.all([listener.accept(), listener.accept()]);
      await new Promise((r) => setTimeout(r, 50));
      const dialled = await Promise.all([0, 1].map(() => connectTcp("127.0.0.1", listener.addr.port, 5000)));
      const accepted = await both;
      console.log(JSON.stringify({
        dialled: dialled.map((c) => c.local.port).sort(),
        accepted: accepted.map((c) => c.remote.port).sort(),
      }));
      for (const c of [...dialled, ...accepted]) closeSocket(c.fd);
      listener.close();
    `;
    const r = await evalJson<{ accepted: number[]; dialled: number[] }>(script, 20_000);
    assertEquals(r.accepted.length, 2);
    assertEquals(r.accepted, r.dialled);
  },
});

Deno.test({
  name: "accept: a queue of waiting connections does not keep the thread's other work waiting",
  ignore: notLinux,
  async fn() {
    const listener = await listenTcp("127.0.0.1", 0);
    const n = 80;
    const dialled = await Promise.all(
      Array.from({ length: n }, () => connectTcp("127.0.0.1", listener.addr.port, 5000)),
    );
    // All 80 wait in the kernel: each accept() returns at once, without a turn of the loop.
    let timerAt = -1, accepted = 0;
    setTimeout(() => timerAt = accepted, 0);
    const fds: number[] = [];
    for (let i = 0; i < n; i++) {
      fds.push((await listener.accept()).fd);
      accepted++;
    }
    for (const fd of [...fds, ...dialled.map((c) => c.fd)]) closeSocket(fd);
    listener.close();
    // A flood kept in the accept queue must not starve timers and handshakes.
    assert(timerAt >= 0 && timerAt < n, `the timer ran after ${timerAt} of ${n} accepts`);
  },
});
