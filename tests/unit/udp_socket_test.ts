/**
 * The UDP transport's socket (src/io/udp_socket.ts) on real sockets over 127.0.0.1 and ::1:
 * sendmmsg/recvmmsg batches, UDP GSO and GRO, don't-fragment, EAGAIN, and its C constants
 * against the headers of both architectures.
 */
import { assert, assertEquals, assertThrows } from "./assert.ts";
import { compileC, constantChecks } from "./c_check.ts";
import type { Arch } from "../../ffi/layout.ts";
import { structs } from "../../ffi/layout.ts";
import { libc, POLLIN } from "../../ffi/libc.ts";
import {
  DatagramStatus,
  LINUX_SOCKET,
  SocketCallError,
  UdpAddress,
  UdpSocket,
  type UdpSocketOptions,
} from "../../src/io/udp_socket.ts";

const BUFFERS = { receiveBufferBytes: 4 << 20, sendBufferBytes: 4 << 20 };

function open(options: Partial<UdpSocketOptions> & { address: string }): UdpSocket {
  return UdpSocket.open({ port: 0, ...BUFFERS, ...options });
}

/** Datagram `n` of a test: its own length and bytes, so order and integrity both show. */
function datagram(n: number, length: number): Uint8Array {
  const bytes = new Uint8Array(length);
  for (let k = 0; k < length; k++) bytes[k] = (n * 7 + k) & 0xff;
  return bytes;
}

interface Received {
  bytes: Uint8Array;
  source: string;
  sourceHash: number;
}

/** A `struct pollfd` that waits for `socket` to be readable. */
function readablePollfd(socket: UdpSocket): Uint8Array {
  const pollfd = new Uint8Array(structs.pollfd.size);
  const view = new DataView(pollfd.buffer);
  view.setInt32(structs.pollfd.offsets.fd, socket.fd, true);
  view.setInt16(structs.pollfd.offsets.events, POLLIN, true);
  return pollfd;
}

/** Waits (poll, up to 5 s) until `want` datagrams arrived on `socket`; copies them out. */
function receiveAll(socket: UdpSocket, want: number): { got: Received[]; messages: number } {
  const pollfd = readablePollfd(socket);
  const got: Received[] = [];
  let messages = 0;
  const deadline = Date.now() + 5000;
  while (got.length < want && Date.now() < deadline) {
    const n = socket.rx.receive();
    messages += socket.rx.messages;
    const { data, offset, length } = socket.rx;
    for (let i = 0; i < n; i++) {
      got.push({
        bytes: data.slice(offset[i], offset[i] + length[i]),
        source: socket.rx.source(i).toString(),
        sourceHash: socket.rx.sourceHash(i),
      });
    }
    if (n === 0) libc().poll_sync(pollfd, 1n, Math.max(1, deadline - Date.now()));
  }
  return { got, messages };
}

Deno.test("every Linux socket constant holds on x86_64 and aarch64", async () => {
  const source = constantChecks(
    ["errno.h", "sys/socket.h", "netinet/in.h", "netinet/udp.h", "time.h"],
    LINUX_SOCKET,
  );
  for (const arch of ["x86_64", "aarch64"] as Arch[]) {
    assertEquals(await compileC(arch, source), "", arch);
  }
  // ...and the check can fail.
  const wrong = await compileC("aarch64", source + `_Static_assert(UDP_GRO == 105, "wrong");\n`);
  assert(wrong.includes("wrong"), wrong);
});

for (const [family, host] of [[4, "127.0.0.1"], [6, "::1"]] as const) {
  Deno.test(`IPv${family}: 64 datagrams in one sendmmsg arrive in order, from their senders`, () => {
    const receiver = open({ address: host });
    const a = open({ address: host, gso: false });
    const b = open({ address: host, gso: false });
    try {
      assert(receiver.port > 0 && a.port > 0 && receiver.port !== a.port);
      assertEquals([receiver.family, a.gso], [family, false]);
      // 32 from a, in one call, then 32 from b: each its own length and bytes.
      for (const [sender, first] of [[a, 0], [b, 32]] as const) {
        const to = sender.peer(host, receiver.port);
        for (let n = first; n < first + 32; n++) assert(sender.tx.add(to, datagram(n, 100 + n)));
        assertEquals(sender.tx.flush(), 32);
        assertEquals([sender.tx.calls, sender.tx.messages, sender.tx.pending], [1, 32, 0]);
        assert(sender.tx.status.subarray(0, 32).every((s) => s === DatagramStatus.Sent));
      }
      const { got, messages } = receiveAll(receiver, 64);
      assertEquals(got.length, 64);
      assertEquals(messages, 64); // no GRO without GSO: one message each
      const fromA = receiver.peer(host, a.port), fromB = receiver.peer(host, b.port);
      for (const [n, d] of got.entries()) {
        assertEquals(d.bytes, datagram(n, 100 + n), `datagram ${n}`);
        const from = n < 32 ? fromA : fromB;
        assertEquals(d.source, from.toString());
        assertEquals(d.sourceHash, from.hash);
      }
      assertEquals(fromA.toString(), family === 4 ? `${host}:${a.port}` : `[::1]:${a.port}`);
    } finally {
      for (const s of [receiver, a, b]) s.close();
    }
  });

  Deno.test(`IPv${family}: a GSO send of 40 x 1400 B arrives as 40 datagrams, or 1 GRO buffer`, () => {
    const plain = open({ address: host, gro: false });
    const gro = open({ address: host, gro: true });
    const sender = open({ address: host, gso: true });
    try {
      assert(sender.gso, "this kernel has UDP GSO");
      assert(gro.gro && !plain.gro, "this kernel has UDP GRO");
      const sizes = [...Array(40).fill(1400), 500]; // a shorter last segment ends the run
      for (const receiver of [plain, gro]) {
        const to = sender.peer(host, receiver.port);
        sender.tx.clear();
        for (const [n, size] of sizes.entries()) assert(sender.tx.add(to, datagram(n, size)));
        const callsBefore = sender.tx.calls, messagesBefore = sender.tx.messages;
        assertEquals(sender.tx.flush(), 41);
        // One call, one message: the kernel cut it up (sizes sum to 56500 < 65507).
        assertEquals([sender.tx.calls - callsBefore, sender.tx.messages - messagesBefore], [1, 1]);
        const { got, messages } = receiveAll(receiver, 41);
        assertEquals(got.map((d) => d.bytes.length), sizes);
        for (const [n, d] of got.entries()) assertEquals(d.bytes, datagram(n, sizes[n]));
        assert(got.every((d) => d.source === `${sender.peer(host, sender.port)}`));
        // Loopback has no GRO of its own: a GRO socket gets the GSO buffer whole and splits it.
        assertEquals(messages, receiver === gro ? 1 : 41);
      }
    } finally {
      for (const s of [plain, gro, sender]) s.close();
    }
  });
}

Deno.test("a GSO run ends at another peer, a larger or shorter datagram, 64 segments", () => {
  const r1 = open({ address: "127.0.0.1" }), r2 = open({ address: "127.0.0.1" });
  const sender = open({ address: "127.0.0.1" });
  try {
    const p1 = sender.peer("127.0.0.1", r1.port), p2 = sender.peer("127.0.0.1", r2.port);
    // p1: 3 x 200 and a shorter one, which ends the run, then 100 again; p2 x 2; p1 100 then
    // 150 (larger: a new run); then 70 x 100 B to p2 (64 + 6).
    const plan: [UdpAddress, number][] = [
      [p1, 200],
      [p1, 200],
      [p1, 200],
      [p1, 100],
      [p1, 100],
      [p2, 300],
      [p2, 300],
      [p1, 100],
      [p1, 150],
      ...Array.from({ length: 70 }, () => [p2, 100] as [UdpAddress, number]),
    ];
    for (const [n, [to, size]] of plan.entries()) assert(sender.tx.add(to, datagram(n, size)));
    assertEquals(sender.tx.flush(), plan.length);
    assertEquals(sender.tx.messages, 7); // [4] [1] [2] [1] [1] [64] [6]
    const one = receiveAll(r1, 7), two = receiveAll(r2, 72);
    assertEquals(one.got.map((d) => d.bytes.length), [200, 200, 200, 100, 100, 100, 150]);
    assertEquals(two.got.length, 72);
    const toTwo = plan.map(([to], n) => [to, n] as const).filter(([to]) => to === p2);
    for (const [k, [, n]] of toTwo.entries()) {
      assertEquals(two.got[k].bytes, datagram(n, plan[n][1]));
    }
  } finally {
    for (const s of [r1, r2, sender]) s.close();
  }
});

Deno.test("EMSGSIZE: a datagram over 65507 B is TooBig, alone or in a batch", () => {
  const receiver = open({ address: "127.0.0.1" });
  const sender = open({ address: "127.0.0.1" });
  try {
    const to = sender.peer("127.0.0.1", receiver.port);
    assertEquals(to.maxPayload, 65507);
    assertEquals(sender.sendTo(to, new Uint8Array(65508)), DatagramStatus.TooBig);
    assertEquals(sender.sendTo(to, datagram(0, 65507)), DatagramStatus.Sent);
    // In a batch, the rest still go: [small, too big, small, small].
    for (const [n, size] of [1000, 65508, 1000, 1000].entries()) {
      assert(sender.tx.add(to, datagram(n, size)));
    }
    assertEquals(sender.tx.flush(), 3);
    assertEquals([...sender.tx.status.subarray(0, 4)], [
      DatagramStatus.Sent,
      DatagramStatus.TooBig,
      DatagramStatus.Sent,
      DatagramStatus.Sent,
    ]);
    assertEquals([sender.tx.tooBig, sender.tx.pending], [1, 0]);
    assertEquals(sender.tx.peerOf(1), to);
    const { got } = receiveAll(receiver, 4);
    assertEquals(got.map((d) => d.bytes.length), [65507, 1000, 1000, 1000]);
  } finally {
    receiver.close();
    sender.close();
  }
});

Deno.test("don't fragment: over ::1 (MTU 65536) 65489 B is TooBig, and fragments without DF", () => {
  const socket = open({ address: "::1" });
  try {
    const self = socket.peer("::1", socket.port);
    assertEquals(socket.pathMtu(self), 65536);
    // 65488 + 8 (UDP) + 40 (IPv6) = 65536 fits; one byte more needs fragments, which DF refuses.
    assertEquals(socket.sendTo(self, new Uint8Array(65488)), DatagramStatus.Sent);
    assertEquals(socket.sendTo(self, new Uint8Array(65489)), DatagramStatus.TooBig);
    // The same socket with IPV6_PMTUDISC_DONT (0) fragments it: DF was what refused.
    const dont = new Int32Array([0]);
    const { IPPROTO_IPV6, IPV6_MTU_DISCOVER } = LINUX_SOCKET;
    assertEquals(
      libc().setsockopt(socket.fd, IPPROTO_IPV6, IPV6_MTU_DISCOVER, new Uint8Array(dont.buffer), 4),
      0,
    );
    assertEquals(socket.sendTo(self, new Uint8Array(65489)), DatagramStatus.Sent);
    assertEquals(receiveAll(socket, 2).got.map((d) => d.bytes.length), [65488, 65489]);
  } finally {
    socket.close();
  }
});

Deno.test("IPv4 sockets say IP_PMTUDISC_DO; the path MTU of 127.0.0.1 is 65535", () => {
  const socket = open({ address: "127.0.0.1" });
  try {
    const value = new Int32Array(1), length = new Uint32Array([4]);
    const { IPPROTO_IP, IP_MTU_DISCOVER, IP_PMTUDISC_DO } = LINUX_SOCKET;
    const rc = libc().getsockopt(
      socket.fd,
      IPPROTO_IP,
      IP_MTU_DISCOVER,
      new Uint8Array(value.buffer),
      new Uint8Array(length.buffer),
    );
    assertEquals([rc, value[0]], [0, IP_PMTUDISC_DO]);
    assertEquals(socket.pathMtu(socket.peer("127.0.0.1", 9)), 65535); // IPv4's largest
  } finally {
    socket.close();
  }
});

Deno.test("an IPv6 socket on :: reaches IPv4 peers, mapped, and names them as IPv4", () => {
  const dual = open({ address: "::" });
  const v4 = open({ address: "127.0.0.1" });
  try {
    const to = dual.peer("127.0.0.1", v4.port);
    assert(to.ipv4);
    assertEquals(to.maxPayload, 65507);
    assertEquals(dual.pathMtu(to), 65535);
    assertEquals(dual.sendTo(to, datagram(1, 10)), DatagramStatus.Sent);
    assertEquals(receiveAll(v4, 1).got[0].source, `127.0.0.1:${dual.port}`);
    assertEquals(v4.sendTo(v4.peer("127.0.0.1", dual.port), datagram(2, 20)), DatagramStatus.Sent);
    assertEquals(dual.rx.receive(), 1);
    assertEquals(`${dual.rx.source(0)}`, `127.0.0.1:${v4.port}`);
    assert(dual.rx.sourceMatches(0, dual.peer("127.0.0.1", v4.port)));
    assert(!dual.rx.sourceMatches(0, dual.peer("127.0.0.1", v4.port + 1)));
    assert(dual.rx.source(0).equals(dual.peer("127.0.0.1", v4.port)));
    const v6only = open({ address: "::", v6Only: true });
    try {
      assertThrows(() => v6only.peer("127.0.0.1", 1), /IPv6-only/);
    } finally {
      v6only.close();
    }
    assertThrows(() => v4.peer("::1", 1), /IPv4 socket/);
  } finally {
    dual.close();
    v4.close();
  }
});

/** Blocks until `socket` has something to read (or 5 s went by). */
function waitReadable(socket: UdpSocket): void {
  assertEquals(libc().poll_sync(readablePollfd(socket), 1n, 5000), 1, "a datagram came");
}

Deno.test("waitedMs: how long a datagram sat in the socket before receive(), from the kernel", () => {
  const stamped = open({ address: "127.0.0.1" });
  const unstamped = open({ address: "127.0.0.1", timestamps: false });
  const sender = open({ address: "127.0.0.1" });
  try {
    assert(stamped.timestamps && !unstamped.timestamps);
    const waited = (receiver: UdpSocket, holdMs: number): number => {
      sender.tx.add(sender.peer("127.0.0.1", receiver.port), datagram(1, 100));
      assertEquals(sender.tx.flush(), 1);
      sender.tx.clear();
      waitReadable(receiver);
      // The reader is busy elsewhere for holdMs: the wait to measure.
      if (holdMs > 0) libc().poll_sync(new Uint8Array(0), 0n, holdMs);
      assertEquals(receiver.rx.receive(), 1);
      return receiver.rx.waitedMs(0);
    };
    const fresh = waited(stamped, 0);
    const held = waited(stamped, 40);
    assert(held >= 40 && held < 5000, `held 40 ms, waitedMs says ${held}`);
    assert(fresh >= 0 && fresh < held, `read at once: ${fresh} ms, held: ${held} ms`);
    // Without the stamps there is nothing to tell: 0, never a guess.
    assertEquals(waited(unstamped, 40), 0);
  } finally {
    for (const s of [stamped, unstamped, sender]) s.close();
  }
});

Deno.test("nothing waiting: receive() returns 0, not an error", () => {
  const socket = open({ address: "127.0.0.1" });
  try {
    assertEquals(socket.rx.receive(), 0);
    assertEquals([socket.rx.count, socket.rx.messages], [0, 0]);
    assertEquals(socket.rx.receive(), 0);
  } finally {
    socket.close();
  }
});

Deno.test("another error throws naming the call; flushing again sends the rest", () => {
  const receiver = open({ address: "127.0.0.1" });
  const sender = open({ address: "127.0.0.1" });
  try {
    const to = sender.peer("127.0.0.1", receiver.port);
    const nowhere = sender.peer("127.0.0.1", 0); // port 0: EINVAL
    for (const [n, peer] of [to, nowhere, nowhere, to].entries()) {
      assert(sender.tx.add(peer, datagram(n, 100)));
    }
    // The two to `nowhere` go as one GSO run, refused whole: then one by one, each refused.
    for (const bad of [1, 2]) {
      const e = assertThrows(() => sender.tx.flush(), SocketCallError);
      assertEquals([e.call, e.errno], ["sendmmsg", LINUX_SOCKET.EINVAL]);
      assert(
        e.message.includes("Invalid argument") && e.message.includes("127.0.0.1:0"),
        e.message,
      );
      assertEquals(sender.tx.status[bad], DatagramStatus.Failed);
    }
    assertEquals(sender.tx.flush(), 1);
    assertEquals([...sender.tx.status.subarray(0, 4)], [
      DatagramStatus.Sent,
      DatagramStatus.Failed,
      DatagramStatus.Failed,
      DatagramStatus.Sent,
    ]);
    assert(sender.gso, "EINVAL does not turn GSO off");
    const { got } = receiveAll(receiver, 2);
    assertEquals(got.map((d) => d.bytes), [datagram(0, 100), datagram(3, 100)]);
  } finally {
    receiver.close();
    sender.close();
  }
});

Deno.test("buffers are sized as asked, ports are reported, a taken port names bind", () => {
  const socket = open({
    address: "127.0.0.1",
    receiveBufferBytes: 1 << 20,
    sendBufferBytes: 1 << 19,
  });
  try {
    // The kernel doubles what it is asked for (its bookkeeping overhead).
    assertEquals([socket.receiveBufferBytes, socket.sendBufferBytes], [2 << 20, 2 << 19]);
    const e = assertThrows(
      () => open({ address: "127.0.0.1", port: socket.port }),
      SocketCallError,
    );
    assertEquals(e.call, "bind");
    assert(e.message.includes(`127.0.0.1:${socket.port}`) && /in use/i.test(e.message), e.message);
  } finally {
    socket.close();
  }
});

Deno.test("close is idempotent; a closed socket refuses calls", () => {
  const socket = open({ address: "127.0.0.1" });
  const to = socket.peer("127.0.0.1", socket.port);
  assert(socket.fd >= 0);
  socket.close();
  socket.close();
  assertEquals(socket.fd, -1);
  assertThrows(() => socket.rx.receive(), /closed UDP socket/);
  assertThrows(() => socket.sendTo(to, new Uint8Array(1)), /closed UDP socket/);
  socket.tx.add(to, new Uint8Array(1));
  assertThrows(() => socket.tx.flush(), /closed UDP socket/);
});
