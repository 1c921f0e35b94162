import { assert, assertEquals, assertRejects } from "./assert.ts";
import {
  AuthError,
  decodeHello,
  encodeHello,
  handshake,
  importSecret,
  PROTOCOL_VERSION,
} from "../../src/link/auth.ts";
import { encodeMessage, MessageReader, MessageType } from "../../src/link/wire.ts";

const enc = new TextEncoder();

/** Two in-memory ends of a connection. */
function pipe() {
  const make = () => {
    const queue: Uint8Array[] = [];
    let wake: (() => void) | null = null;
    let closed = false;
    return {
      push(b: Uint8Array) {
        queue.push(b.slice());
        wake?.();
      },
      close() {
        closed = true;
        wake?.();
      },
      async read(p: Uint8Array): Promise<number | null> {
        while (queue.length === 0) {
          if (closed) return null;
          await new Promise<void>((r) => wake = r);
          wake = null;
        }
        const b = queue.shift()!;
        p.set(b.subarray(0, p.length));
        if (b.length > p.length) queue.unshift(b.subarray(p.length));
        return Math.min(b.length, p.length);
      },
    };
  };
  const ab = make(), ba = make();
  const end = (inbox: typeof ab, outbox: typeof ab) => ({
    read: (p: Uint8Array) => inbox.read(p),
    write: (p: Uint8Array) => {
      outbox.push(p);
      return Promise.resolve(p.length);
    },
    close: () => outbox.close(),
  });
  return [end(ba, ab), end(ab, ba)] as const;
}

Deno.test("hello round-trips", () => {
  const nonce = crypto.getRandomValues(new Uint8Array(32));
  const hello = decodeHello(encodeHello({ version: PROTOCOL_VERSION, kind: "peer", nonce }));
  assertEquals(hello.kind, "peer");
  assertEquals(hello.version, PROTOCOL_VERSION);
  assertEquals(hello.nonce, nonce);
});

Deno.test("garbage instead of a hello is refused", () => {
  let threw = false;
  try {
    decodeHello(enc.encode("GET / HTTP/1.1\r\n"));
  } catch {
    threw = true;
  }
  assert(threw);
});

Deno.test("both sides with the same secret authenticate each other", async () => {
  const key = await importSecret(enc.encode("correct horse battery staple"));
  const [a, b] = pipe();
  const [kindSeenByAcceptor, kindSeenByDialer] = await Promise.all([
    handshake(b, new MessageReader(b), { key, side: "acceptor", kind: "acceptor" }),
    handshake(a, new MessageReader(a), { key, side: "dialer", kind: "control" }),
  ]);
  assertEquals(kindSeenByAcceptor.kind, "control");
  assertEquals(kindSeenByDialer.kind, "acceptor");
  // Both sides end up with the same two nonces, each seen from its own side.
  assertEquals(kindSeenByAcceptor.own, kindSeenByDialer.peer);
  assertEquals(kindSeenByAcceptor.peer, kindSeenByDialer.own);
});

Deno.test("a wrong secret fails on both sides, with a clear reason", async () => {
  const good = await importSecret(enc.encode("correct horse battery staple"));
  const bad = await importSecret(enc.encode("incorrect horse battery staple"));
  const [a, b] = pipe();
  const results = await Promise.allSettled([
    handshake(b, new MessageReader(b), { key: good, side: "acceptor", kind: "acceptor" }),
    handshake(a, new MessageReader(a), { key: bad, side: "dialer", kind: "peer" }),
  ]);
  assert(results[0].status === "rejected" && results[0].reason instanceof AuthError);
  assert(results[1].status === "rejected");
  assert(/authentication failed/.test(String(results[1].reason)), String(results[1].reason));
});

Deno.test("a proof cannot be reflected back to its author", async () => {
  // An attacker without the secret echoes our hello and our proof back to us.
  const key = await importSecret(enc.encode("correct horse battery staple"));
  const [a, b] = pipe();
  const mirror = (async () => {
    const reader = new MessageReader(b);
    const hello = await reader.message();
    await b.write(encodeMessage(MessageType.Hello, hello!.payload.slice()));
    const proof = await reader.message();
    await b.write(encodeMessage(MessageType.Auth, proof!.payload.slice()));
  })();
  await assertRejects(
    () => handshake(a, new MessageReader(a), { key, side: "dialer", kind: "peer" }),
    /authentication failed/,
  );
  await mirror;
});

Deno.test("a version mismatch is reported to both sides", async () => {
  const key = await importSecret(enc.encode("correct horse battery staple"));
  const [a, b] = pipe();
  const fake = (async () => {
    const reader = new MessageReader(b);
    await reader.message();
    const nonce = new Uint8Array(32);
    await b.write(
      encodeMessage(MessageType.Hello, encodeHello({ version: 99, kind: "acceptor", nonce })),
    );
  })();
  await assertRejects(
    () => handshake(a, new MessageReader(a), { key, side: "dialer", kind: "peer" }),
    /version mismatch/,
  );
  await fake;
});

Deno.test("a silent peer times the handshake out", async () => {
  const key = await importSecret(enc.encode("correct horse battery staple"));
  const [a] = pipe();
  await assertRejects(
    () => handshake(a, new MessageReader(a), { key, side: "dialer", kind: "peer", timeoutMs: 100 }),
    /timed out/,
  );
});
