/**
 * Fuzzing (issue 4, "Keep it running"): the frame codec (MessageReader), the handshake and the
 * control and peer protocols of a real in-process Server (fake interfaces: no root needed) get
 * random and mutated input. Bounded in count and time; seeded and reproducible:
 *
 *   VNET_FUZZ_SEED=1234 deno test -A tests/unit/fuzz_test.ts      # replay one run
 *   VNET_FUZZ_SCALE=10 ...                                         # ten times the cases
 *
 * Asserted: nothing but the module's own errors escape (no TypeError/RangeError, no unhandled
 * rejection), a bad peer is disconnected with a logged reason, the server keeps answering, and
 * memory stays bounded.
 */
import { counterTable, HandlerCounters, readCounters } from "../../src/dataplane/counters.ts";
import { assert, assertEquals } from "./assert.ts";
import { AuthError, handshake, importSecret } from "../../src/link/auth.ts";
import { VnetError } from "../../src/errors.ts";
import { Fabric } from "../../src/dataplane/fabric.ts";
import { Handler } from "../../src/dataplane/handler.ts";
import { dial } from "../../src/link/dial.ts";
import { Link } from "../../src/link/link.ts";
import { type Fields, Logger } from "../../src/log.ts";
import { FakeCapture, FakeInjector, fakeInterfaces } from "../../src/dataplane/fake_ports.ts";
import { duplex } from "../../src/link/fake_stream.ts";
import { Server } from "../../src/control/server.ts";
import {
  encodeJson,
  encodeMessage,
  MAX_FRAME,
  MAX_MESSAGE,
  MessageReader,
  MessageType,
  ProtocolError,
  putFrame,
} from "../../src/link/wire.ts";
import { prng } from "../prng.ts";

// ---------------------------------------------------------------------------------------------
// Seeded randomness
// ---------------------------------------------------------------------------------------------

const SEED = Number(Deno.env.get("VNET_FUZZ_SEED") ?? Math.floor(Math.random() * 2 ** 31));
const SCALE = Number(Deno.env.get("VNET_FUZZ_SCALE") ?? "1");
console.log(`fuzz seed ${SEED} (replay: VNET_FUZZ_SEED=${SEED}), scale ${SCALE}`);

type Rng = ReturnType<typeof prng>;

function concat(parts: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let off = 0;
  for (const p of parts) {
    out.set(p, off);
    off += p.length;
  }
  return out;
}

/** Bit flips, byte changes, cuts, insertions, length-field rewrites. */
function mutate(rng: Rng, input: Uint8Array): Uint8Array {
  let b: Uint8Array = input.slice();
  for (let n = 1 + rng.int(4); n > 0; n--) {
    switch (rng.int(6)) {
      case 0:
        if (b.length) b[rng.int(b.length)] ^= 1 << rng.int(8);
        break;
      case 1:
        if (b.length) b[rng.int(b.length)] = rng.int(256);
        break;
      case 2:
        b = b.subarray(0, rng.int(b.length + 1));
        break;
      case 3: {
        const at = rng.int(b.length + 1);
        b = concat([b.subarray(0, at), rng.bytes(1 + rng.int(16)), b.subarray(at)]);
        break;
      }
      case 4:
        if (b.length >= 4) {
          const at = rng.int(b.length - 3);
          new DataView(b.buffer, b.byteOffset).setUint32(
            at,
            rng.pick([0, 1, 5, 0xffffffff, MAX_MESSAGE, MAX_MESSAGE + 1, rng.int(2 ** 32)]),
          );
        }
        break;
      default: {
        const at = rng.int(b.length + 1);
        b = concat([b.subarray(0, at), b.subarray(at, at + rng.int(64)), b.subarray(at)]);
      }
    }
  }
  return b;
}

/** A valid message of a random type. */
function randomMessage(rng: Rng): Uint8Array {
  switch (rng.int(5)) {
    case 0: {
      const frame = rng.bytes(rng.int(3000));
      const out = new Uint8Array(frame.length + 9);
      putFrame(out, new DataView(out.buffer), 0, rng.int(2 ** 32), frame);
      return out;
    }
    case 1:
      return encodeJson(MessageType.Request, { req: rng.int(100), op: rng.pick(["list", "x"]) });
    case 2:
      return encodeMessage(MessageType.Ping, rng.bytes(8));
    case 3:
      return encodeMessage(rng.int(256) as MessageType, rng.bytes(rng.int(100)));
    default:
      return encodeMessage(MessageType.Error, new TextEncoder().encode("bye"));
  }
}

/** A byte source handing out `data` in random-sized reads. */
function chunkedSource(rng: Rng, data: Uint8Array) {
  let off = 0;
  return {
    read(p: Uint8Array): Promise<number | null> {
      if (off >= data.length) return Promise.resolve(null);
      const n = Math.min(p.length, data.length - off, 1 + rng.int(rng.pick([1, 7, 100, 5000])));
      p.set(data.subarray(off, off + n));
      off += n;
      return Promise.resolve(n);
    },
  };
}

/**
 * Our own failures are VnetErrors (ProtocolError, AuthError), plus the I/O errors of a peer
 * that hung up mid-handshake; anything else (TypeError, RangeError, ...) is a bug.
 */
function expectOwnError(e: unknown, context: string): void {
  const io = [
    Deno.errors.TimedOut,
    Deno.errors.BrokenPipe,
    Deno.errors.ConnectionReset,
    Deno.errors.ConnectionAborted,
    Deno.errors.NotConnected,
  ];
  if (e instanceof VnetError || io.some((c) => e instanceof c)) return;
  throw new Error(`${context}: unexpected ${(e as Error)?.name}: ${(e as Error)?.message}`, {
    cause: e,
  });
}

// ---------------------------------------------------------------------------------------------
// Unhandled rejections fail the test that caused them (registered once for the module).
// ---------------------------------------------------------------------------------------------

const unhandled: unknown[] = [];
globalThis.addEventListener("unhandledrejection", (e) => {
  unhandled.push(e.reason);
  e.preventDefault();
});

function assertNoUnhandled(): void {
  assert(
    unhandled.length === 0,
    `unhandled rejections: ${unhandled.map((r) => String((r as Error)?.stack ?? r)).join("\n")}`,
  );
}

// ---------------------------------------------------------------------------------------------
// 1. The codec
// ---------------------------------------------------------------------------------------------

Deno.test("fuzz: the codec round-trips valid streams split at random points", async () => {
  const rng = prng(SEED ^ 0x1);
  const cases = 300 * SCALE;
  for (let c = 0; c < cases; c++) {
    const messages = Array.from({ length: 1 + rng.int(20) }, () => randomMessage(rng));
    const reader = new MessageReader(chunkedSource(rng, concat(messages)), MAX_MESSAGE, 64);
    for (const [i, want] of messages.entries()) {
      const m = await reader.message();
      assert(m, `case ${c}: stream ended before message ${i}`);
      assertEquals(m.type, want[4], `case ${c}: type of message ${i}`);
      assertEquals(m.payload.length, want.length - 5, `case ${c}: length of message ${i}`);
      assert(m.payload.every((b, j) => b === want[5 + j]), `case ${c}: payload ${i} differs`);
    }
    assertEquals(await reader.message(), null, `case ${c}: trailing message`);
  }
});

Deno.test("fuzz: the codec rejects mutated and random streams with ProtocolError only", async () => {
  const rng = prng(SEED ^ 0x2);
  const cases = 1500 * SCALE;
  const started = performance.now();
  let rejected = 0;
  for (let c = 0; c < cases; c++) {
    const valid = concat(Array.from({ length: 1 + rng.int(8) }, () => randomMessage(rng)));
    const input = rng.int(4) === 0 ? rng.bytes(rng.int(4000)) : mutate(rng, valid);
    const max = rng.pick([1024, MAX_MESSAGE]);
    const reader = new MessageReader(chunkedSource(rng, input), max, rng.pick([16, 4096]));
    try {
      for (let n = 0; n < 10_000; n++) {
        const m = await reader.message();
        if (!m) break;
        assert(m.payload.length + 1 <= max, `case ${c}: a message over the limit got through`);
      }
    } catch (e) {
      if (!(e instanceof ProtocolError)) expectOwnError(e, `case ${c}`);
      rejected++;
    }
  }
  console.log(
    `    ${cases} streams, ${rejected} rejected, ${Math.round(performance.now() - started)} ms`,
  );
  assert(rejected > cases / 4, `suspiciously few rejections: ${rejected}`);
});

// ---------------------------------------------------------------------------------------------
// 2. The handshake
// ---------------------------------------------------------------------------------------------

Deno.test("fuzz: the handshake refuses mutated hellos and proofs, within its timeout", async () => {
  const rng = prng(SEED ^ 0x3);
  const key = await importSecret(rng.bytes(32));
  const cases = 300 * SCALE;
  let accepted = 0;
  const started = performance.now();
  for (let c = 0; c < cases; c++) {
    const [a, b] = duplex();
    // A genuine dialer's first messages, recorded, then mutated and replayed to an acceptor.
    const acceptor = handshake(a, new MessageReader(a), {
      key,
      side: "acceptor",
      kind: "acceptor",
      timeoutMs: 300,
    });
    const hello = await new MessageReader(b).message(); // the acceptor's hello
    assert(hello?.type === MessageType.Hello, "the acceptor sends hello first");
    const ourHello = encodeMessage(
      MessageType.Hello,
      concat([
        new Uint8Array([0x56, 0x4e, 0x45, 0x54, 0, 1, rng.pick([0, 1, 2, 3, 255])]),
        rng.bytes(32),
      ]),
    );
    const proof = encodeMessage(MessageType.Auth, rng.bytes(32));
    const input = rng.int(3) === 0
      ? rng.bytes(rng.int(200))
      : mutate(rng, concat([ourHello, proof]));
    await b.write(input);
    if (rng.int(2) === 0) b.close();
    try {
      await acceptor;
      accepted++;
    } catch (e) {
      if (!(e instanceof AuthError || e instanceof ProtocolError)) {
        expectOwnError(e, `handshake case ${c}`);
      }
    }
    a.close();
  }
  console.log(`    ${cases} handshakes in ${Math.round(performance.now() - started)} ms`);
  // Without the secret a proof is a 2^-256 guess: nothing forged may be accepted.
  assertEquals(accepted, 0, "a handshake without the secret was accepted");
  assertNoUnhandled();
});

Deno.test("the handshake of a silent peer times out", async () => {
  const key = await importSecret(new Uint8Array(32).fill(7));
  const [a] = duplex();
  const t0 = performance.now();
  try {
    await handshake(a, new MessageReader(a), {
      key,
      side: "acceptor",
      kind: "acceptor",
      timeoutMs: 200,
    });
    throw new Error("a silent peer passed the handshake");
  } catch (e) {
    assert(e instanceof ProtocolError && /timed out/.test(e.message), String(e));
  }
  assert(performance.now() - t0 < 2000, "the timeout took too long");
});

// ---------------------------------------------------------------------------------------------
// 3. A real Server, fake interfaces
// ---------------------------------------------------------------------------------------------

interface LogLine {
  level: string;
  msg: string;
  fields: Fields;
}

/** Keeps log lines in memory (the last 20000) and counts every message. */
class MemoryLog extends Logger {
  constructor(
    readonly sink: { lines: LogLine[]; counts: Map<string, number> },
    private readonly extra: Fields = {},
  ) {
    super(extra);
  }
  override with(fields: Fields): Logger {
    return new MemoryLog(this.sink, { ...this.extra, ...fields });
  }
  #push(level: string, msg: string, fields: Fields) {
    this.sink.lines.push({ level, msg, fields: { ...this.extra, ...fields } });
    if (this.sink.lines.length > 20_000) this.sink.lines.splice(0, 10_000);
    this.sink.counts.set(msg, (this.sink.counts.get(msg) ?? 0) + 1);
  }
  override debug(msg: string, fields: Fields = {}) {
    this.#push("debug", msg, fields);
  }
  override info(msg: string, fields: Fields = {}) {
    this.#push("info", msg, fields);
  }
  override warn(msg: string, fields: Fields = {}) {
    this.#push("warn", msg, fields);
  }
  override error(msg: string, fields: Fields = {}) {
    this.#push("error", msg, fields);
  }
}

/** A loopback port nothing listens on (bound, then released). */
function closedPort(): number {
  const l = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (l.addr as Deno.NetAddr).port;
  l.close();
  return port;
}

async function startServer(key: CryptoKey) {
  const sink = { lines: [] as LogLine[], counts: new Map<string, number>() };
  const port = closedPort();
  const server = new Server({
    listen: { hostname: "127.0.0.1", port },
    key,
    ports: fakeInterfaces(),
    listDevices: () => [],
    log: new MemoryLog(sink),
    keepaliveMs: 0,
  });
  await server.start();
  return { server, sink, port };
}

const noEvents = {
  onFrame: () => {},
  onRequest: () => Promise.reject(new VnetError("no requests here")),
  onClose: () => {},
};

/** Random JSON values, biased to the shapes the server parses. */
function randomValue(rng: Rng, depth = 0): unknown {
  switch (rng.int(depth > 2 ? 6 : 9)) {
    case 0:
      return null;
    case 1:
      return rng.int(2) === 0;
    case 2:
      return rng.pick([0, -1, 1.5, 2 ** 53, NaN, 7000, rng.int(65536)]);
    case 3:
      return rng.pick([
        "",
        "x",
        "fake0",
        "fake1",
        "lan0",
        "02:00:00:00:00:01",
        "zz",
        "ab".repeat(500),
      ]);
    case 4:
      return rng.pick(["0badc0de", "00000000", "ffffffff", "12345678"]);
    case 5:
      return undefined;
    case 6:
      return Array.from({ length: rng.int(4) }, () => randomValue(rng, depth + 1));
    default: {
      const o: Record<string, unknown> = {};
      for (let n = rng.int(5); n > 0; n--) {
        o[rng.pick(["hostname", "port", "addr", "dev", "id", "x", "__proto__", "constructor"])] =
          randomValue(rng, depth + 1);
      }
      return o;
    }
  }
}

/**
 * A random request body. Addresses are only ever 127.0.0.1 at a port nothing listens on, and
 * `ssh` is never a valid gateway: a fuzzed request must not send traffic anywhere else.
 */
function randomBody(rng: Rng, deadPort: number): Record<string, unknown> {
  const addr = () =>
    rng.int(4) === 0 ? randomValue(rng) : { hostname: "127.0.0.1", port: deadPort };
  const mac = () => rng.pick(["02:00:00:00:00:01", "02:00:00:00:00:02", "ff:ff", "", "x"]);
  const body: Record<string, unknown> = {
    proxy: rng.int(5) ? { addr: addr(), dev: rng.pick(["fake0", "fake1", "nope", 3]) } : undefined,
    host: rng.int(5) ? { addr: addr(), dev: rng.pick(["fake0", "nope", ""]) } : undefined,
    via: rng.pick(["proxy", "host", "both", undefined, 1]),
    macs: rng.int(5) ? Array.from({ length: rng.int(4) }, mac) : randomValue(rng),
    multicast: randomValue(rng),
    handler: rng.pick(["0badc0de", "", "x", 5, undefined]),
    id: rng.pick(["0badc0de", "1234567", "abcdef01", "", 3]),
    role: rng.pick(["proxy", "host", "x"]),
    device: rng.pick(["fake0", "fake1", "nope", ""]),
    peer: rng.pick(["127.0.0.1:1", "", 5, undefined]),
  };
  if (rng.int(10) === 0) body.ssh = rng.pick([5, "gw", { gateway: 7 }, []]);
  for (let n = rng.int(3); n > 0; n--) body[String(rng.int(1000))] = randomValue(rng);
  for (const k of Object.keys(body)) if (body[k] === undefined || rng.int(6) === 0) delete body[k];
  return body;
}

/** Opens a raw TCP connection, writes `bytes`, and waits (bounded) for the server to close it. */
async function hitRaw(port: number, bytes: Uint8Array, keepOpenMs: number): Promise<void> {
  const conn = await Deno.connect({ hostname: "127.0.0.1", port });
  try {
    await conn.write(bytes).catch(() => 0);
    const buf = new Uint8Array(4096);
    const deadline = Date.now() + keepOpenMs;
    while (Date.now() < deadline) {
      let timer: ReturnType<typeof setTimeout> | undefined;
      const n = await Promise.race([
        conn.read(buf).catch(() => null),
        new Promise<"wait">((r) => timer = setTimeout(() => r("wait"), deadline - Date.now())),
      ]);
      clearTimeout(timer);
      if (n === null || n === "wait") break;
    }
  } finally {
    try {
      conn.close();
    } catch { /* closed */ }
  }
}

async function controlList(port: number, key: CryptoKey): Promise<unknown[]> {
  const link = await dial({ hostname: "127.0.0.1", port }, {
    key,
    kind: "control",
    log: new MemoryLog({ lines: [], counts: new Map() }),
    events: noEvents,
    timeoutMs: 5000,
  });
  try {
    return (await link.request("list", {}, 5000)).handlers as unknown[];
  } finally {
    link.close("done");
  }
}

/** Handshakes properly as `kind`, then hands back the raw connection. */
async function rawAuthenticated(port: number, key: CryptoKey, kind: "control" | "peer") {
  const conn = await Deno.connect({ hostname: "127.0.0.1", port });
  const reader = new MessageReader(conn);
  await handshake(conn, reader, { key, side: "dialer", kind });
  return { conn, reader };
}

function rssMiB(): number {
  return Deno.memoryUsage().rss / 2 ** 20;
}

Deno.test({
  name: "fuzz: a real server survives garbage before, during and after the handshake",
  sanitizeOps: false,
  sanitizeResources: false,
  fn: async () => {
    const rng = prng(SEED ^ 0x4);
    const key = await importSecret(rng.bytes(32));
    const { server, sink, port } = await startServer(key);
    const deadPort = closedPort();
    const rssBefore = rssMiB();
    const started = performance.now();
    try {
      // a) Unauthenticated garbage: random bytes, mutated hellos, wrong secrets, kinds.
      const preCases = 200 * SCALE;
      for (let c = 0; c < preCases; c++) {
        const hello = encodeMessage(
          MessageType.Hello,
          concat([new Uint8Array([0x56, 0x4e, 0x45, 0x54, 0, 1, rng.int(4)]), rng.bytes(32)]),
        );
        const input = rng.int(3) === 0
          ? rng.bytes(rng.int(3000))
          : mutate(rng, concat([hello, encodeMessage(MessageType.Auth, rng.bytes(32))]));
        await hitRaw(port, input, 300);
      }
      const refused = sink.counts.get("connection refused") ?? 0;
      assert(refused >= preCases * 0.9, `only ${refused}/${preCases} bad peers were refused`);
      const reasons = sink.lines.filter((l) => l.msg === "connection refused");
      assert(reasons.every((l) => typeof l.fields.reason === "string" && l.fields.reason !== ""));
      assertEquals(await controlList(port, key), [], "the server answers after the garbage");

      // b) Authenticated control link, fuzzed requests: each answered, none crashes the server.
      const link = await dial({ hostname: "127.0.0.1", port }, {
        key,
        kind: "control",
        log: new MemoryLog({ lines: [], counts: new Map() }),
        events: noEvents,
        timeoutMs: 5000,
      });
      let ok = 0, refusedReq = 0;
      for (let c = 0; c < 300 * SCALE; c++) {
        const op = rng.pick(["create", "list", "close", "devices", "migrate", "attach", "", "?"]);
        try {
          await link.request(op, randomBody(rng, deadPort), 5000);
          ok++;
        } catch (e) {
          assert(e instanceof VnetError, `request ${op}: ${e}`);
          assert(!/did not answer/.test(e.message), `request ${op} got no answer: ${e.message}`);
          refusedReq++;
        }
      }
      assert(link.isOpen, "the server dropped a well-behaved control link");
      link.close("done");
      console.log(`    control fuzz: ${ok} answered, ${refusedReq} refused with a reason`);

      // c) Authenticated, then garbage: disconnected with a logged protocol error.
      for (let c = 0; c < 30 * SCALE; c++) {
        const kind = rng.pick(["control", "peer"] as const);
        const { conn } = await rawAuthenticated(port, key, kind);
        const garbage = rng.int(2) === 0
          ? rng.bytes(1 + rng.int(2000))
          : mutate(rng, concat(Array.from({ length: 3 }, () => randomMessage(rng))));
        await conn.write(garbage).catch(() => 0);
        conn.close();
      }
      // Peers sending oversized messages are cut off at once.
      const before = sink.counts.get("protocol error, disconnecting") ?? 0;
      const { conn: big, reader } = await rawAuthenticated(port, key, "peer");
      const header = new Uint8Array(5);
      new DataView(header.buffer).setUint32(0, MAX_MESSAGE + 1);
      header[4] = MessageType.Frame;
      await big.write(header);
      const answer = await reader.message().catch(() => null);
      assert(answer === null || answer.type === MessageType.Error, "oversize: no error answer");
      big.close();
      await waitUntil(() => (sink.counts.get("protocol error, disconnecting") ?? 0) > before);
      const cut = sink.lines.filter((l) => l.msg === "protocol error, disconnecting");
      assert(cut.some((l) => /exceeds the limit/.test(String(l.fields.reason))), "no size reason");

      // d) Peer protocol: random attach/detach and frames to random and real handler numbers.
      const peer = await dial({ hostname: "127.0.0.1", port }, {
        key,
        kind: "peer",
        log: new MemoryLog({ lines: [], counts: new Map() }),
        events: noEvents,
        timeoutMs: 5000,
      });
      const ids: string[] = [];
      for (let c = 0; c < 100 * SCALE; c++) {
        const op = rng.pick(["attach", "attach", "detach", "list", "x"]);
        const body = randomBody(rng, deadPort);
        if (op === "attach" && rng.int(2) === 0) {
          const id = rng.int(2 ** 32).toString(16).padStart(8, "0");
          Object.assign(body, {
            id,
            role: "host",
            device: "fake0",
            macs: ["02:00:00:00:00:01"],
            peer: "127.0.0.1:1",
            origin: "0f".repeat(16),
            bind: "a5".repeat(16),
          });
          ids.push(id);
        }
        await peer.request(op, body, 5000).catch((e) => assert(e instanceof VnetError, String(e)));
        for (let f = rng.int(20); f > 0; f--) {
          const number = ids.length && rng.int(2) ? parseInt(rng.pick(ids), 16) : rng.int(2 ** 32);
          peer.sendFrame(number, rng.bytes(rng.int(1600)));
        }
      }
      assert(peer.isOpen, "the server dropped a well-behaved peer link");
      assert((await server.list()).length > 0, "no fuzzed attach got through");
      peer.close("done");
      await waitUntil(async () => (await server.list()).every((h) => h.state === "down"));

      assertEquals((await controlList(port, key)).length, (await server.list()).length);
      const rssAfter = rssMiB();
      console.log(
        `    server fuzz: ${Math.round(performance.now() - started)} ms, rss ` +
          `${rssBefore.toFixed(0)} -> ${rssAfter.toFixed(0)} MiB, ${
            (await server.list()).length
          } handlers`,
      );
      // Every connection above is gone; what is left is handlers and caches: bounded.
      assert(rssAfter - rssBefore < 150, `rss grew by ${(rssAfter - rssBefore).toFixed(0)} MiB`);
      assert(
        !sink.lines.some((l) => l.level === "error" && l.msg === "request failed"),
        `a request failed with a non-VNET error: ${
          JSON.stringify(sink.lines.filter((l) => l.msg === "request failed").slice(0, 3))
        }`,
      );
      assert(!sink.lines.some((l) => l.msg === "accept loop failed"), "the accept loop died");
    } finally {
      await server.stop();
    }
    await new Promise((r) => setTimeout(r, 50));
    assertNoUnhandled();
  },
});

async function waitUntil(
  cond: () => boolean | Promise<boolean>,
  timeoutMs = 5000,
): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!await cond()) {
    if (Date.now() > deadline) throw new Error("condition not met in time");
    await new Promise((r) => setTimeout(r, 20));
  }
}

// ---------------------------------------------------------------------------------------------
// 4. Frames over the maximum are counted and dropped, never sent
// ---------------------------------------------------------------------------------------------

Deno.test({
  name: "frames larger than the maximum are counted and dropped",
  sanitizeOps: false,
  sanitizeResources: false,
  fn: async () => {
    const [a, b] = duplex();
    const sink = { lines: [] as LogLine[], counts: new Map<string, number>() };
    const log = new MemoryLog(sink);
    const link = new Link(a, new MessageReader(a, MAX_MESSAGE), {
      remote: "test",
      tls: false,
      log,
      events: noEvents,
    });
    // Directly on the link.
    assertEquals(link.sendFrame(1, new Uint8Array(MAX_FRAME + 1)), false);
    assertEquals(link.stats.queueDrops, 1);
    assertEquals(link.sendFrame(1, new Uint8Array(MAX_FRAME)), true);

    // Through a handler: the oversized frame is a link drop in `list`, the others go out.
    const capture = new FakeCapture("fake0", [
      new Uint8Array(60),
      new Uint8Array(MAX_FRAME + 100),
      new Uint8Array(1514),
    ]);
    const table = counterTable();
    const handler = new Handler(
      {
        id: "00000001",
        role: "host",
        device: "fake0",
        macs: ["02:00:00:00:00:01"],
        multicast: false,
        peer: "test",
      },
      {
        openCapture: () => capture,
        openInjector: (d) => new FakeInjector(d),
      },
      new Fabric(),
      new HandlerCounters(table, 0),
      log,
    );
    handler.attach(link);
    await waitUntil(() => capture.frames.length === 0);
    const info = readCounters(table, 0);
    assertEquals(info.toPeer.frames, 2);
    assertEquals(info.toPeer.drops, 1);
    assertEquals(info.dropReasons.link, 1);

    // The receiving side gets exactly the two frames that fit (plus the one sent above).
    const reader = new MessageReader(b, MAX_MESSAGE);
    const sizes: number[] = [];
    while (sizes.length < 3) {
      const m = await reader.message();
      assert(m, "stream ended");
      if (m.type === MessageType.Frame) sizes.push(m.payload.length - 4);
    }
    assertEquals(sizes, [MAX_FRAME, 60, 1514]);
    await handler.close();
    link.close("done");
  },
});
