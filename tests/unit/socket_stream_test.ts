/**
 * A plain link's socket, our own (src/link/socket_stream.ts over an fd of src/io/tcp_socket.ts),
 * on real loopback TCP connections, and the data path's poller that serves it (src/io/poller.ts).
 * The far end is a Deno.Conn: the runtime's own TCP, a second opinion on every byte.
 */
import { evalJson, isOpen } from "./fds.ts";
import { assert, assertEquals, assertRejects } from "./assert.ts";
import { SocketStream } from "../../src/link/socket_stream.ts";
import { connectTcp } from "../../src/io/tcp_socket.ts";
import { readExactly } from "./wait.ts";

/** A connected loopback pair: `far` a Deno.Conn, `own` our socket (connectTcp) as a stream. */
async function pair(hostname: string): Promise<{ far: Deno.Conn; own: SocketStream }> {
  const listener = Deno.listen({ hostname, port: 0 });
  const port = (listener.addr as Deno.NetAddr).port;
  const [far, near] = await Promise.all([listener.accept(), connectTcp(hostname, port, 5000)]);
  listener.close();
  return { far, own: new SocketStream(near.fd) };
}

Deno.test({
  name: "our socket carries bytes both ways, waits when full, and sees EOF",
  ignore: Deno.build.os !== "linux",
  async fn() {
    for (const hostname of ["127.0.0.1", "::1"]) {
      const { far, own } = await pair(hostname);

      await far.write(new TextEncoder().encode("ping"));
      const buf = new Uint8Array(64);
      const n = await own.read(buf);
      assertEquals(new TextDecoder().decode(buf.subarray(0, n!)), "ping");

      // More than the kernel buffers hold: send(2) would block, so the write waits for the
      // poller to say writable, while the far end reads it all.
      const big = new Uint8Array(16 * 1024 * 1024).map((_, i) => i % 251);
      const writing = (async () => {
        let off = 0;
        while (off < big.length) off += await own.write(big.subarray(off));
      })();
      const got = await readExactly(far, big.length);
      await writing;
      assertEquals(got[big.length - 1], (big.length - 1) % 251);
      assert(got.every((b, i) => b === i % 251), "every byte in order");

      // The far end closes: a read ends with null. Our close: the far end reads EOF, and the
      // fd is gone; a second close does nothing.
      far.closeWrite();
      assertEquals(await own.read(buf), null);
      assert(isOpen(own.fd), "open until closed");
      own.close();
      assertEquals(await far.read(buf), null);
      assert(!isOpen(own.fd), "close() closes the fd");
      own.close();
      far.close();
      await assertRejects(() => own.read(buf), Deno.errors.BadResource);
      await assertRejects(() => own.write(buf), Deno.errors.BadResource);
    }
  },
});

Deno.test({
  name: "close ends a read that waits",
  ignore: Deno.build.os !== "linux",
  async fn() {
    const { far, own } = await pair("127.0.0.1");
    const reading = own.read(new Uint8Array(16));
    setTimeout(() => own.close(), 20);
    await assertRejects(() => reading, Deno.errors.BadResource);
    // The read's wait was on a helper thread's poll: the fd is closed once that poll returned.
    for (let i = 0; i < 100 && isOpen(own.fd); i++) await new Promise((r) => setTimeout(r, 10));
    assert(!isOpen(own.fd), "the fd was closed after the poll let go of it");
    far.close();
  },
});

/**
 * Two writes that both find the kernel's buffer full (the queue's writer, and the last message
 * of a closing link) wait together. Run in its own process with a time limit: the failure this
 * guards against is two waits ending each other for ever, which starves the whole thread.
 */
Deno.test({
  name: "two writes waiting for room both finish, and the thread keeps running meanwhile",
  ignore: Deno.build.os !== "linux",
  async fn() {
    const script = `
      import { SocketStream } from "./src/link/socket_stream.ts";
      import { connectTcp } from "./src/io/tcp_socket.ts";
      const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
      const port = listener.addr.port;
      const [far, near] = await Promise.all([listener.accept(), connectTcp("127.0.0.1", port, 5000)]);
      const own = new SocketStream(near.fd);
      let ticks = 0;
      const timer = setInterval(() => ticks++, 10);
      const writeAll = async (data) => {
        let off = 0;
        while (off < data.length) off += await own.write(data.subarray(off));
      };
      const size = 8 * 1024 * 1024;
      const writes = Promise.all([writeAll(new Uint8Array(size)), writeAll(new Uint8Array(size))]);
      await new Promise((r) => setTimeout(r, 200));
      const ticksWhileFull = ticks;
      let got = 0;
      const buf = new Uint8Array(1 << 20);
      while (got < 2 * size) got += await far.read(buf);
      await writes;
      clearInterval(timer);
      console.log(JSON.stringify({ got, ticksWhileFull }));
      own.close(); far.close(); listener.close();
    `;
    const r = await evalJson<{ got: number; ticksWhileFull: number }>(script, 30_000);
    assertEquals(r.got, 16 * 1024 * 1024);
    assert(r.ticksWhileFull >= 5, `timers ran ${r.ticksWhileFull} times in 200 ms of full buffers`);
  },
});
