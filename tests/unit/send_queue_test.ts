/**
 * The link's send queue (src/link/send_queue.ts): control messages jump the frames, one write
 * carries a burst, and frames wait in the fair queue (not in a batch) while a write is in the
 * kernel's hands.
 */
import { BATCH_BYTES, SendQueue } from "../../src/link/send_queue.ts";
import { encodeMessage, MessageReader, MessageType } from "../../src/link/wire.ts";
import { assert, assertEquals } from "./assert.ts";

/** A writer whose writes complete when the test says so. */
class SlowWriter {
  writes: Uint8Array[] = [];
  #pending: (() => void)[] = [];
  write(p: Uint8Array): Promise<number> {
    this.writes.push(p.slice());
    return new Promise((resolve) => this.#pending.push(() => resolve(p.length)));
  }
  /** Completes the write in progress; resolves once the queue had its turn. */
  async complete(): Promise<void> {
    this.#pending.shift()?.();
    for (let i = 0; i < 5; i++) await Promise.resolve();
  }
  get waiting(): number {
    return this.#pending.length;
  }
}

/** The messages in one write, as [type, first payload byte or handler]. */
async function messages(bytes: Uint8Array): Promise<[number, number][]> {
  let done = false;
  const reader = new MessageReader(
    {
      read: (p) => {
        if (done) return Promise.resolve(null);
        done = true;
        p.set(bytes);
        return Promise.resolve(bytes.length);
      },
    },
    1 << 20,
    bytes.length,
  );
  const out: [number, number][] = [];
  for (let m = await reader.message(); m; m = await reader.message()) {
    const key = m.type === MessageType.Frame
      ? new DataView(m.payload.buffer, m.payload.byteOffset).getUint32(0)
      : m.payload[0];
    out.push([m.type, key]);
  }
  return out;
}

function tick(): Promise<void> {
  return new Promise((r) => setTimeout(r, 0));
}

Deno.test("send queue: one write carries a burst; control messages go first", async () => {
  const w = new SlowWriter();
  const q = new SendQueue(w, { maxBytes: 4 << 20, onDrop: () => {}, onWriteError: () => {} });
  const frame = new Uint8Array(1514);
  frame.set([0x08, 0x00], 12);
  for (let i = 0; i < 10; i++) assert(q.pushFrame(1, frame));
  await tick();
  assertEquals(w.writes.length, 1, "the burst is one write");
  assertEquals((await messages(w.writes[0])).length, 10);
  // While that write is in the kernel's hands, more frames and then a keepalive arrive.
  for (let i = 0; i < 10; i++) q.pushFrame(2, frame);
  assert(q.pushControl(encodeMessage(MessageType.Ping, new Uint8Array([0xee]))));
  await w.complete();
  assertEquals(w.writes.length, 2);
  const second = await messages(w.writes[1]);
  assertEquals(second[0], [MessageType.Ping, 0xee], "the keepalive jumps the frames");
  assertEquals(second.length, 11);
  await w.complete();
  assertEquals(w.waiting, 0, "nothing more to write");
});

Deno.test("send queue: a batch is bounded, the rest waits in the fair queue", async () => {
  const w = new SlowWriter();
  const q = new SendQueue(w, { maxBytes: 4 << 20, onDrop: () => {}, onWriteError: () => {} });
  const frame = new Uint8Array(1514);
  const frames = Math.ceil(2 * BATCH_BYTES / 1523);
  for (let i = 0; i < frames; i++) q.pushFrame(1, frame);
  await tick();
  assert(w.writes[0].length <= BATCH_BYTES + 1523, `one batch: ${w.writes[0].length} bytes`);
  assert(q.queuedBytes > frames * 1523 - w.writes[0].length - 1, "the rest is still queued");
  let written = 0;
  while (w.waiting > 0) await w.complete();
  for (const b of w.writes) written += (await messages(b)).length;
  assertEquals(written, frames, "every frame is written once");
  assertEquals(q.queuedBytes, 0);
});

Deno.test("send queue: control messages are bounded, and one alone is written as it is", async () => {
  const w = new SlowWriter();
  const q = new SendQueue(w, { maxBytes: 64 * 1024, onDrop: () => {}, onWriteError: () => {} });
  const big = encodeMessage(MessageType.Response, new Uint8Array(512 * 1024));
  assert(q.pushControl(big), "one big response fits the slack");
  let refused = false;
  for (let i = 0; i < 4 && !refused; i++) refused = !q.pushControl(big);
  assert(refused, "a peer that does not read cannot make control messages pile up");
  await tick();
  assertEquals(w.writes[0].length, big.length, "a control message alone is written as it is");
  assertEquals(q.drops, { aqm: 0, full: 0 });
});
