import { assert, assertEquals, assertThrows } from "./assert.ts";
import {
  encodeJson,
  encodeMessage,
  MAX_MESSAGE,
  MessageReader,
  MessageType,
  ProtocolError,
  putFrame,
} from "../../src/link/wire.ts";

/** A byte source that returns the given chunks one read at a time. */
function source(chunks: Uint8Array[]) {
  return {
    read(p: Uint8Array): Promise<number | null> {
      const next = chunks.shift();
      if (!next) return Promise.resolve(null);
      if (next.length > p.length) {
        p.set(next.subarray(0, p.length));
        chunks.unshift(next.subarray(p.length));
        return Promise.resolve(p.length);
      }
      p.set(next);
      return Promise.resolve(next.length);
    },
  };
}

function concat(...parts: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let off = 0;
  for (const p of parts) {
    out.set(p, off);
    off += p.length;
  }
  return out;
}

Deno.test("a frame message is length, type, handler number, frame", () => {
  const out = new Uint8Array(64);
  const frame = new Uint8Array([1, 2, 3]);
  const end = putFrame(out, new DataView(out.buffer), 0, 0xdeadbeef, frame);
  assertEquals(end, 12);
  assertEquals([...out.subarray(0, 12)], [0, 0, 0, 8, 6, 0xde, 0xad, 0xbe, 0xef, 1, 2, 3]);
});

Deno.test("the reader reassembles messages split at every byte", async () => {
  const frameBytes = new Uint8Array(1500).map((_, i) => i & 0xff);
  const out = new Uint8Array(2000);
  const n = putFrame(out, new DataView(out.buffer), 0, 7, frameBytes);
  const stream = concat(
    encodeJson(MessageType.Request, { req: 1, op: "list" }),
    out.subarray(0, n),
  );
  const reader = new MessageReader(
    source([...stream].map((b) => new Uint8Array([b]))),
    MAX_MESSAGE,
  );
  const first = await reader.message();
  assertEquals(first?.type, MessageType.Request);
  assertEquals(new TextDecoder().decode(first!.payload), '{"req":1,"op":"list"}');
  const second = await reader.message();
  assertEquals(second?.type, MessageType.Frame);
  assertEquals(second!.payload.subarray(4), frameBytes);
  assertEquals(await reader.message(), null);
});

Deno.test("before authentication, anything but a tiny message is refused", async () => {
  const out = new Uint8Array(2000);
  const n = putFrame(out, new DataView(out.buffer), 0, 7, new Uint8Array(1500));
  await assertRejects(() => new MessageReader(source([out.subarray(0, n)])).message());
});

Deno.test("many messages in one read come out one by one", async () => {
  const msgs = Array.from(
    { length: 100 },
    (_, i) => encodeMessage(MessageType.Ping, new Uint8Array([i])),
  );
  const reader = new MessageReader(source([concat(...msgs)]));
  for (let i = 0; i < 100; i++) assertEquals((await reader.message())!.payload[0], i);
  assertEquals(await reader.message(), null);
});

Deno.test("an oversized length is a protocol error, not an allocation", async () => {
  const bad = new Uint8Array([0x7f, 0xff, 0xff, 0xff, 6]);
  const reader = new MessageReader(source([bad]));
  reader.maxMessage = MAX_MESSAGE;
  let error: unknown;
  try {
    await reader.message();
  } catch (e) {
    error = e;
  }
  assert(error instanceof ProtocolError);
});

Deno.test("a TLS ClientHello to a plain server is recognised", async () => {
  const hello = new Uint8Array([0x16, 0x03, 0x01, 0x02, 0x00, 0x01]);
  const reader = new MessageReader(source([hello]));
  let error: unknown;
  try {
    await reader.message();
  } catch (e) {
    error = e;
  }
  assert(error instanceof ProtocolError && /answered in TLS/.test(error.message), String(error));
});

Deno.test("a zero length and a stream cut mid-message are errors", async () => {
  await assertRejects(() => new MessageReader(source([new Uint8Array([0, 0, 0, 0, 1])])).message());
  await assertRejects(() =>
    new MessageReader(source([new Uint8Array([0, 0, 0, 9, 6, 1])])).message()
  );
  assertThrows(() => {
    throw new ProtocolError("x");
  });
});

async function assertRejects(f: () => Promise<unknown>) {
  try {
    await f();
  } catch (e) {
    assert(e instanceof ProtocolError, String(e));
    return;
  }
  throw new Error("expected a ProtocolError");
}
