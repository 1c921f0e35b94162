import { assert, assertEquals } from "./assert.ts";
import { DeviceCaptures, type RawCapture } from "../../src/dataplane/device_capture.ts";
import { conflictFilter } from "../../src/dataplane/filter.ts";
import { macBytes } from "../../src/dataplane/mac.ts";
import type { CaptureSpec } from "../../src/dataplane/ports.ts";

/** A RawCapture that hands out the frames a test queues, and records what it was told. */
class FakeRaw implements RawCapture {
  queue: Uint8Array[] = [];
  filters: string[] = [];
  closed = false;
  failWith: Error | null = null;
  /** Whether the interface is still there, as `present()` says. */
  there = true;
  #wake: (() => void) | null = null;
  constructor(readonly device: string, filter: string) {
    this.filters.push(filter);
  }
  push(frame: Uint8Array): void {
    this.queue.push(frame);
    this.#wake?.();
  }
  fail(error: Error): void {
    this.failWith = error;
    this.#wake?.();
  }
  /** As the poller does: a callback while frames (or a failure) wait, on a later turn. */
  watch(onReady: (() => void) | null): void {
    this.#wake = onReady && (() => queueMicrotask(() => !this.closed && this.#wake && onReady()));
    if (this.queue.length || this.failWith) this.#wake?.();
  }
  drain(onFrame: (f: Uint8Array, n: number) => void): number {
    if (this.failWith) throw this.failWith;
    const n = this.queue.length;
    for (const f of this.queue.splice(0)) onFrame(f, f.length);
    return n;
  }
  setFilter(filter: string): void {
    this.filters.push(filter);
  }
  stats() {
    return { received: 0, dropped: 0, ifDropped: 0 };
  }
  present(): boolean {
    return this.there;
  }
  close(): void {
    this.closed = true;
    this.#wake = null;
  }
}

function frame(dst: string, src: string): Uint8Array {
  const f = new Uint8Array(60);
  f.set(macBytes(dst), 0);
  f.set(macBytes(src), 6);
  f[12] = 0x08;
  return f;
}

const VM1 = "02:00:00:00:00:01";
const VM2 = "02:00:00:00:00:02";
const LAN = "02:aa:00:00:00:09";
const BCAST = "ff:ff:ff:ff:ff:ff";
const MCAST = "33:33:00:00:00:01";

function setup() {
  const raws: FakeRaw[] = [];
  const captures = new DeviceCaptures((device, filter) => {
    const raw = new FakeRaw(device, filter);
    raws.push(raw);
    return raw;
  });
  const open = (spec: CaptureSpec) => {
    const seen: string[] = [];
    const conflicts: string[] = [];
    const errors: Error[] = [];
    const capture = captures.open("eth0", spec);
    capture.start(
      (f) => seen.push(`${f[5]}<-${f[11]}`),
      (e) => errors.push(e),
      (f) => conflicts.push(`${f[5]}<-${f[11]}`),
    );
    return { capture, seen, conflicts, errors };
  };
  return { raws, open, captures };
}

const tick = () => new Promise((r) => setTimeout(r, 0));

Deno.test("handlers on one device share one libpcap capture with the union filter", () => {
  const { raws, open } = setup();
  const a = open({ role: "proxy", macs: [VM1], multicast: false });
  const b = open({ role: "proxy", macs: [VM2], multicast: true });
  assertEquals(raws.length, 1);
  const union = raws[0].filters.at(-1)!;
  assertEquals(
    union,
    "((ether dst 02:00:00:00:00:01 or ether broadcast) and not (ether src 02:00:00:00:00:01))" +
      " or ((ether dst 02:00:00:00:00:02 or ether multicast) and not (ether src 02:00:00:00:00:02))" +
      ` or (${conflictFilter([VM1, VM2])})`,
  );
  a.capture.close();
  assert(!raws[0].filters.at(-1)!.includes("02:00:00:00:00:01"), "a left the filter");
  b.capture.close();
  assert(raws[0].closed, "the last member closes libpcap");
});

Deno.test("proxy members get frames to their MACs, broadcast, multicast if asked; never their own", async () => {
  const { raws, open } = setup();
  const a = open({ role: "proxy", macs: [VM1], multicast: false });
  const b = open({ role: "proxy", macs: [VM2], multicast: true });
  const raw = raws[0];
  raw.push(frame(VM1, LAN)); // to a
  raw.push(frame(VM2, LAN)); // to b
  raw.push(frame(BCAST, LAN)); // both
  raw.push(frame(MCAST, LAN)); // b only (multicast)
  raw.push(frame(BCAST, VM1)); // from a's own MAC: b only, and a's conflict
  await tick();
  assertEquals(a.seen, ["1<-9", "255<-9"]);
  assertEquals(b.seen, ["2<-9", "255<-9", "1<-9", "255<-1"]);
  assertEquals(a.conflicts, ["255<-1"]);
  assertEquals(b.conflicts, []);
});

Deno.test("a frame from a Proxy member's MAC is its conflict, never its to forward", async () => {
  const { raws, open } = setup();
  const a = open({ role: "proxy", macs: [VM1], multicast: true });
  const h = open({ role: "host", macs: [VM2], multicast: false });
  raws[0].push(frame(LAN, VM1)); // VM1 on the LAN: a duplicate MAC or a loop
  raws[0].push(frame(VM1, VM1)); // even to itself
  raws[0].push(frame(MCAST, VM1));
  raws[0].push(frame(LAN, VM2)); // a Host member's own traffic: no conflict of anyone's
  await tick();
  assertEquals(a.seen, []);
  assertEquals(a.conflicts, ["9<-1", "1<-1", "1<-1"]);
  assertEquals(h.seen, ["9<-2"]);
  assertEquals(h.conflicts, []);
});

Deno.test("host members get frames from their MACs only", async () => {
  const { raws, open } = setup();
  const h = open({ role: "host", macs: [VM1, VM2], multicast: false });
  raws[0].push(frame(LAN, VM1));
  raws[0].push(frame(BCAST, VM2));
  raws[0].push(frame(VM1, LAN)); // to the VM: not the host's to capture
  await tick();
  assertEquals(h.seen, ["9<-1", "255<-2"]);
});

Deno.test("past the MAC limit the kernel filter lets everything through; demux stays exact", async () => {
  const { raws, open } = setup();
  const many = Array.from(
    { length: 300 },
    (_, i) =>
      `02:00:00:00:${(i >> 8).toString(16).padStart(2, "0")}:${
        (i & 255).toString(16).padStart(2, "0")
      }`,
  );
  const h = open({ role: "host", macs: many, multicast: false });
  assertEquals(raws[0].filters.at(-1), "");
  raws[0].push(frame(LAN, "02:00:00:00:01:2b")); // one of the 300
  raws[0].push(frame(LAN, "02:00:00:00:09:99")); // not one of them
  await tick();
  assertEquals(h.seen.length, 1);
});

Deno.test("a failing device tells every member once, and a new open starts afresh", async () => {
  const { raws, open } = setup();
  const a = open({ role: "proxy", macs: [VM1], multicast: false });
  const b = open({ role: "host", macs: [VM2], multicast: false });
  raws[0].fail(new Error("The interface disappeared"));
  await tick();
  assertEquals(a.errors.map((e) => e.message), ["The interface disappeared"]);
  assertEquals(b.errors.length, 1);
  assert(raws[0].closed);
  open({ role: "proxy", macs: [VM1], multicast: false });
  assertEquals(raws.length, 2);
});

Deno.test("a device that cannot be opened throws, and leaves nothing behind", () => {
  const captures = new DeviceCaptures(() => {
    throw new Error("no such network interface 'nosuch0'");
  });
  let threw = false;
  try {
    captures.open("nosuch0", { role: "host", macs: [VM1], multicast: false });
  } catch {
    threw = true;
  }
  assert(threw);
});

Deno.test("a device that is gone without an error from the capture fails its members at the check", () => {
  const { raws, open, captures } = setup();
  const a = open({ role: "proxy", macs: [VM1], multicast: false });
  const b = open({ role: "host", macs: [VM2], multicast: false });
  captures.check();
  assertEquals(a.errors.length + b.errors.length, 0, "still there: nothing");
  raws[0].there = false;
  captures.check();
  assertEquals(a.errors.map((e) => e.message), ["eth0: the interface is gone"]);
  assertEquals(b.errors.length, 1);
  assert(raws[0].closed, "the capture is released");
  // Opened again (the interface came back): a new capture, checked afresh.
  const c = open({ role: "host", macs: [VM2], multicast: false });
  assertEquals(raws.length, 2);
  captures.check();
  assertEquals(c.errors.length, 0);
});
