/**
 * A plain link's socket taken over from the runtime (src/link/socket_stream.ts), on real
 * loopback TCP connections, and the data path's poller that serves it (src/io/poller.ts).
 */
import { assert, assertEquals, assertRejects } from "./assert.ts";
import { ipBytes, takeOver } from "../../src/link/socket_stream.ts";
import { poller } from "../../src/io/poller.ts";
import { duplex } from "../../src/link/fake_stream.ts";
import type { Stream } from "../../src/link/stream.ts";

/** `takeOver(stream)`, which must succeed. */
function takenOver(stream: Deno.Conn): Stream {
  const own = takeOver(stream);
  if (own === null || typeof own === "string") throw new Error(`not taken over: ${own}`);
  return own;
}

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
    ]
  ) {
    assertEquals(ipBytes(bad), null, bad);
  }
});

/** A connected loopback pair: `far` stays a Deno.Conn, `near` is the one to take over. */
async function pair(hostname: string): Promise<{ far: Deno.Conn; near: Deno.Conn }> {
  const listener = Deno.listen({ hostname, port: 0 });
  const port = (listener.addr as Deno.NetAddr).port;
  const [far, near] = await Promise.all([Deno.connect({ hostname, port }), listener.accept()]);
  listener.close();
  return { far, near };
}

async function readExactly(conn: Deno.Conn, n: number): Promise<Uint8Array> {
  const out = new Uint8Array(n);
  let got = 0;
  while (got < n) {
    const r = await conn.read(out.subarray(got));
    if (r === null) throw new Error(`EOF after ${got} of ${n} bytes`);
    got += r;
  }
  return out;
}

Deno.test({
  name: "a taken-over socket carries bytes both ways, waits when full, and sees EOF",
  ignore: Deno.build.os !== "linux",
  async fn() {
    assert(poller.enableInline(1000), "the runtime's wait is found on Linux");
    for (const hostname of ["127.0.0.1", "::1"]) {
      const { far, near } = await pair(hostname);
      const own = takenOver(near);

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

      // The far end closes: a read ends with null. Our close: the far end reads EOF.
      far.closeWrite();
      assertEquals(await own.read(buf), null);
      own.close();
      assertEquals(await far.read(buf), null);
      far.close();
      await assertRejects(() => own.read(buf));
    }
  },
});

Deno.test({
  name: "close ends a read that waits",
  ignore: Deno.build.os !== "linux",
  async fn() {
    assert(poller.enableInline(1000));
    const { far, near } = await pair("127.0.0.1");
    const own = takenOver(near);
    const reading = own.read(new Uint8Array(16));
    setTimeout(() => own.close(), 20);
    await assertRejects(() => reading);
    far.close();
  },
});

Deno.test("only TCP connections are taken over", () => {
  const [a, b] = duplex();
  assertEquals(takeOver(a), null);
  a.close();
  b.close();
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
      import { takeOver } from "./src/link/socket_stream.ts";
      import { poller } from "./src/io/poller.ts";
      if (!poller.enableInline(1000)) throw new Error("no inline wait");
      const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
      const port = listener.addr.port;
      const [far, near] = await Promise.all([Deno.connect({ hostname: "127.0.0.1", port }), listener.accept()]);
      const own = takeOver(near);
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
    const root = new URL("../..", import.meta.url).pathname;
    const out = await new Deno.Command(Deno.execPath(), {
      args: ["eval", "--ext=ts", script],
      cwd: root,
      stdout: "piped",
      stderr: "piped",
      signal: AbortSignal.timeout(30_000),
    }).output();
    const text = new TextDecoder().decode(out.stdout).trim();
    assert(out.code === 0, `exit ${out.code}: ${new TextDecoder().decode(out.stderr)}`);
    const r = JSON.parse(text);
    assertEquals(r.got, 16 * 1024 * 1024);
    assert(r.ticksWhileFull >= 5, `timers ran ${r.ticksWhileFull} times in 200 ms of full buffers`);
  },
});
