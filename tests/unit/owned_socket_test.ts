/**
 * A plain link's socket as the data-path worker owns it (src/link/owned_socket.ts): its
 * keepalives are its own, so an idle link never wakes the main thread. Run here on the main
 * thread's poller, over a real loopback connection whose far end is a Deno.Conn.
 */
import { assert, assertEquals } from "./assert.ts";
import { OwnedSocket, type OwnedSocketEvents } from "../../src/link/owned_socket.ts";
import { connectTcp } from "../../src/io/tcp_socket.ts";
import { encodeMessage, MessageType } from "../../src/link/wire.ts";
import { readExactly, until } from "./wait.ts";

/**
 * An owned socket on one end of a loopback connection, a Deno.Conn on the other, and the
 * keepalives' clock, which the test moves: `at` is the time the socket sees.
 */
async function ownedPair(keepaliveMs: number) {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (listener.addr as Deno.NetAddr).port;
  const [far, near] = await Promise.all([listener.accept(), connectTcp("127.0.0.1", port, 5000)]);
  listener.close();
  const seen = { messages: [] as number[], closed: null as string | null };
  const events: OwnedSocketEvents = {
    frame: () => {},
    queued: () => {},
    message: (type) => seen.messages.push(type),
    closed: (reason) => seen.closed = reason,
    sendDropped: () => {},
  };
  const clock = { at: 0 };
  const socket = new OwnedSocket(
    1,
    "far",
    near.fd,
    new Uint8Array(0),
    30_000,
    keepaliveMs,
    events,
    () => clock.at,
  );
  return { far, socket, seen, clock };
}

/** The far end's next message: a ping or a pong, and the time it carries. */
async function nextKeepalive(far: Deno.Conn): Promise<{ type: number; time: number }> {
  const m = await readExactly(far, 13);
  return { type: m[4], time: new DataView(m.buffer, 5, 8).getFloat64(0) };
}

function timeMessage(type: MessageType, time: number): Uint8Array {
  const payload = new Uint8Array(8);
  new DataView(payload.buffer).setFloat64(0, time);
  return encodeMessage(type, payload);
}

Deno.test({
  name: "an owned socket answers pings, pings when due, and closes a silent link",
  ignore: Deno.build.os !== "linux",
  async fn() {
    const every = 1000;
    const { far, socket, seen, clock } = await ownedPair(every);
    try {
      // The peer's ping is answered here, with its own bytes: nothing for the main thread.
      const payload = new Uint8Array([1, 2, 3, 4, 5, 6, 7, 8]);
      await far.write(encodeMessage(MessageType.Ping, payload));
      assertEquals(await readExactly(far, 13), encodeMessage(MessageType.Pong, payload));
      assertEquals(seen.messages, []);

      // Not due yet: no ping, and a wish to be called again within the interval and a quarter.
      clock.at = 10;
      const wait = socket.keepalive(clock.at);
      assert(wait > 0 && wait <= 1.25 * every, `next call in ${wait} ms`);

      // Due: a ping goes out; its pong gives the round trip.
      clock.at = every;
      socket.keepalive(clock.at);
      const ping = await nextKeepalive(far);
      assertEquals(ping, { type: MessageType.Ping, time: every });
      clock.at = every + 3;
      await far.write(timeMessage(MessageType.Pong, ping.time));
      await until("the round trip", () => socket.rttMs !== null);
      assertEquals(socket.rttMs, 3);
      assertEquals(seen.messages, []);
      assertEquals(seen.closed, null);

      // Three intervals of silence close the link, saying why.
      clock.at += 3 * every + 1;
      socket.keepalive(clock.at);
      assert(seen.closed !== null && /keepalive/.test(seen.closed), `closed: ${seen.closed}`);
      assert(!socket.isOpen, "closed");
      assertEquals(socket.keepalive(clock.at), Infinity);
    } finally {
      socket.close("test over");
      far.close();
    }
  },
});

Deno.test({
  name: "an owned socket pings a quiet peer only: one that talks is alive",
  ignore: Deno.build.os !== "linux",
  async fn() {
    const every = 1000;
    const { far, socket, seen, clock } = await ownedPair(every);
    try {
      // The first ping measures the round trip.
      clock.at = every;
      socket.keepalive(clock.at);
      const first = await nextKeepalive(far);
      await far.write(timeMessage(MessageType.Pong, first.time));
      await until("the round trip", () => socket.rttMs !== null);

      // The peer pings at 1.5 s (our pong is its answer): at 2 s we are due by the clock, but
      // the peer was heard half an interval ago, so no ping; at 2.5 s it has been quiet an
      // interval, and the ping goes. Its time says which call sent it.
      clock.at = 1.5 * every;
      await far.write(timeMessage(MessageType.Ping, 42));
      assertEquals(await nextKeepalive(far), { type: MessageType.Pong, time: 42 });
      clock.at = 2 * every;
      const wait = socket.keepalive(clock.at);
      assertEquals(wait, 0.75 * every, "called again at 2.5 s and a quarter interval");
      clock.at = 2.5 * every;
      socket.keepalive(clock.at);
      assertEquals(await nextKeepalive(far), { type: MessageType.Ping, time: 2.5 * every });

      // A peer that keeps talking is not pinged, but for the round trip now and then (6
      // intervals); it never looks silent.
      const sent: number[] = [];
      for (let t = 3 * every; t <= 9 * every; t += every / 2) {
        clock.at = t;
        await far.write(timeMessage(MessageType.Ping, t));
        let m = await nextKeepalive(far);
        socket.keepalive(t + 1);
        if (m.type === MessageType.Ping) {
          sent.push(m.time);
          m = await nextKeepalive(far);
        }
        assertEquals(m, { type: MessageType.Pong, time: t });
      }
      assertEquals(sent, [8.5 * every + 1], "one ping, 6 intervals after the last");
      assertEquals(seen.closed, null);
      assertEquals(seen.messages, []);
    } finally {
      socket.close("test over");
      far.close();
    }
  },
});
