/**
 * The link's fair, self-shortening send queue (src/link/flow_queue.ts): a sparse flow goes
 * ahead of a bulk backlog, CoDel drops only what waited longer than the target for a whole
 * interval, and memory stays within the bound.
 */
import { FlowQueue, POP_SLACK } from "../../src/link/flow_queue.ts";
import { FRAME_OVERHEAD, MAX_FRAME, MessageType } from "../../src/link/wire.ts";
import { assert, assertEquals } from "./assert.ts";

/** An IPv4 TCP or UDP frame from `srcPort` to `dstPort`, `size` bytes, tagged with `tag`. */
function frame(srcPort: number, dstPort: number, size = 1514, tag = 0, proto = 6): Uint8Array {
  const f = new Uint8Array(size);
  f.set([2, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 2, 0x08, 0x00], 0);
  f[14] = 0x45;
  f[23] = proto;
  f.set([10, 77, 0, 2, 10, 77, 0, 60], 26);
  f[34] = srcPort >> 8;
  f[35] = srcPort & 0xff;
  f[36] = dstPort >> 8;
  f[37] = dstPort & 0xff;
  new DataView(f.buffer).setUint32(size - 4, tag);
  return f;
}

/** The frames `popInto` hands out, decoded back: [handler, tag] each. */
function drain(q: FlowQueue, max = Infinity): [number, number][] {
  const out = new Uint8Array(MAX_FRAME + FRAME_OVERHEAD + POP_SLACK);
  const got: [number, number][] = [];
  while (got.length < max) {
    const end = q.popInto(out, 0);
    if (end < 0) break;
    const view = new DataView(out.buffer);
    assertEquals(view.getUint32(0), end - 4, "the message length covers the frame");
    assertEquals(out[4], MessageType.Frame);
    got.push([view.getUint32(5), view.getUint32(end - 4)]);
  }
  return got;
}

function clock(start = 1000) {
  const c = { t: start, now: () => c.t };
  return c;
}

Deno.test("flow queue: frames come out intact, in order within a flow", () => {
  const q = new FlowQueue({ maxBytes: 1 << 20 });
  const sizes = [60, 1514, 2039, 2040, 4100, 65_000, MAX_FRAME];
  for (const [i, size] of sizes.entries()) {
    const f = frame(1000, 80, size, i);
    for (let k = 38; k < size - 4; k++) f[k] = (k * 7 + i) & 0xff;
    assert(q.push(0x12345678, f));
  }
  const out = new Uint8Array(MAX_FRAME + FRAME_OVERHEAD + POP_SLACK);
  for (const [i, size] of sizes.entries()) {
    const end = q.popInto(out, 0);
    assertEquals(end, size + FRAME_OVERHEAD);
    const m = decode(out.subarray(0, end));
    assertEquals(m.type, MessageType.Frame);
    assertEquals(new DataView(m.payload.buffer, m.payload.byteOffset).getUint32(0), 0x12345678);
    const body = m.payload.subarray(4);
    assertEquals(body.length, size);
    for (let k = 38; k < size - 4; k++) {
      if (body[k] !== ((k * 7 + i) & 0xff)) throw new Error(`frame ${i} byte ${k} differs`);
    }
  }
  assertEquals(q.popInto(out, 0), -1);
  assertEquals(q.bytes, 0);
  assertEquals(q.frames, 0);
});

function decode(bytes: Uint8Array): { type: number; payload: Uint8Array } {
  const view = new DataView(bytes.buffer, bytes.byteOffset);
  const length = view.getUint32(0);
  assertEquals(length + 4, bytes.length);
  return { type: bytes[4], payload: bytes.subarray(5) };
}

Deno.test("flow queue: a sparse flow's frame goes before a bulk flow's backlog", () => {
  const q = new FlowQueue({ maxBytes: 4 << 20 });
  for (let i = 0; i < 500; i++) q.push(1, frame(5001, 5201, 1514, i));
  // Half of the backlog has been written when the ping (ICMP) and a keystroke (TCP 22) arrive.
  assertEquals(drain(q, 250).length, 250);
  const ping = frame(0, 0, 98, 9001, 1);
  q.push(1, ping);
  q.push(1, frame(40000, 22, 90, 9002));
  const next = drain(q, 3).map(([, tag]) => tag);
  assert(next.includes(9001), `the ping is among the next 3 frames, got ${next}`);
  assert(next.includes(9002), `the keystroke is among the next 3 frames, got ${next}`);
});

Deno.test("flow queue: bulk flows share the link by bytes (DRR)", () => {
  const q = new FlowQueue({ maxBytes: 8 << 20 });
  // Flow A sends full frames, flow B small ones; both have a long backlog.
  for (let i = 0; i < 400; i++) {
    q.push(1, frame(1111, 80, 1514, 1));
    q.push(1, frame(2222, 80, 200, 2));
    q.push(1, frame(2222, 80, 200, 2));
    q.push(1, frame(2222, 80, 200, 2));
  }
  const bytes = { 1: 0, 2: 0 } as Record<number, number>;
  for (const [, tag] of drain(q, 600)) bytes[tag] += tag === 1 ? 1514 : 200;
  const ratio = bytes[1] / bytes[2];
  assert(ratio > 0.8 && ratio < 1.25, `bytes should be shared evenly: ${JSON.stringify(bytes)}`);
});

Deno.test("flow queue: CoDel drops only after the target is exceeded for an interval", () => {
  const c = clock();
  const drops: [number, string][] = [];
  const q = new FlowQueue({
    maxBytes: 16 << 20,
    now: c.now,
    onDrop: (h, r) => drops.push([h, r]),
  });
  const out = new Uint8Array(MAX_FRAME + FRAME_OVERHEAD + POP_SLACK);
  // A standing queue: 200 frames that each waited 4 ms (under the 5 ms target), for 300 ms.
  let tag = 0;
  const standing = (waitMs: number, ms: number) => {
    const end = c.t + ms;
    while (c.t < end) {
      q.push(7, frame(1000, 80, 1514, tag++));
      c.t += waitMs / 200;
      while (q.frames > 200) q.popInto(out, 0);
    }
  };
  for (let i = 0; i < 200; i++) q.push(7, frame(1000, 80, 1514, tag++));
  standing(4, 300);
  assertEquals(drops.length, 0, "under the target: no drops");
  // Now each frame waits 20 ms: nothing is dropped for the first interval (100 ms) ...
  const start = c.t;
  let firstDrop = 0;
  while (c.t < start + 400) {
    q.push(7, frame(1000, 80, 1514, tag++));
    c.t += 20 / 200;
    while (q.frames > 200) {
      q.popInto(out, 0);
      if (drops.length > 0 && firstDrop === 0) firstDrop = c.t;
    }
  }
  assert(firstDrop > 0, "above the target for an interval: CoDel drops");
  assert(
    firstDrop - start >= 100,
    `the first drop comes after an interval above target (${firstDrop - start} ms)`,
  );
  assertEquals(drops[0], [7, "aqm"], "the drop is told with its handler and reason");
  // ... and then more often (the control law), but far from every frame.
  assert(drops.length >= 3, `several drops in 300 ms above target: ${drops.length}`);
  assert(drops.length < 100, `CoDel does not drop everything: ${drops.length}`);
  assertEquals(q.drops.aqm, drops.length);
  assertEquals(q.drops.full, 0);
});

Deno.test("flow queue: a flow that queues no more than one frame is never dropped", () => {
  const c = clock();
  const q = new FlowQueue({ maxBytes: 1 << 20, now: c.now });
  const out = new Uint8Array(MAX_FRAME + FRAME_OVERHEAD + POP_SLACK);
  // One frame at a time that waits 50 ms each (a slow link, nothing standing behind it).
  for (let i = 0; i < 100; i++) {
    q.push(1, frame(1000, 80, 1514, i));
    c.t += 50;
    assert(q.popInto(out, 0) > 0, `frame ${i} is sent, not dropped`);
  }
  assertEquals(q.drops.aqm, 0);
});

Deno.test("flow queue: full storage drops from the fattest flow, and memory stays bounded", () => {
  const drops: string[] = [];
  const q = new FlowQueue({ maxBytes: 1 << 20, onDrop: (_h, r) => drops.push(r) });
  // A bulk flow fills the whole bound, then a sparse flow's frame arrives.
  for (let i = 0; i < 2000; i++) assert(q.push(1, frame(5001, 5201, 1514, 1)));
  assert(q.push(2, frame(0, 0, 98, 42, 1)), "the sparse frame is taken");
  assert(drops.length > 0 && drops.every((r) => r === "full"), "the bulk flow lost frames");
  assertEquals(q.drops.full, drops.length);
  assert(q.storageBytes <= 1 << 20, `storage within the bound: ${q.storageBytes}`);
  // The bulk flow had not had its first turn yet: the sparse frame goes right after it.
  const first = drain(q, 2);
  assertEquals(first[1], [2, 42], "the sparse frame goes out second");
  // Refuses only a frame that can never fit.
  const small = new FlowQueue({ maxBytes: 64 * 1024 });
  assert(!small.push(1, new Uint8Array(MAX_FRAME)), "a frame larger than the bound is refused");
  assert(small.push(1, frame(1, 2, 60_000)), "a frame within the bound is taken");
});

Deno.test("flow queue: storage is made on demand and reused", () => {
  const q = new FlowQueue({ maxBytes: 4 << 20 });
  assertEquals(q.storageBytes, 0, "nothing made before the first frame");
  const out = new Uint8Array(MAX_FRAME + FRAME_OVERHEAD + POP_SLACK);
  for (let round = 0; round < 50; round++) {
    for (let i = 0; i < 40; i++) q.push(1, frame(1000 + i, 80, 1514, i));
    while (q.popInto(out, 0) >= 0) { /* drain */ }
  }
  assertEquals(q.storageBytes, 128 * 1024, "40 queued frames at a time use one segment");
});
