/**
 * Fuzzing the control protocol's requests (issue 9, "Validation"): every checker of
 * src/control/rpc.ts gets random and mutated bodies (wrong types in every field, huge values,
 * strange strings), then a real Server (fake interfaces, loopback only) gets the same over real
 * control and peer links. Seeded and reproducible:
 *
 *   VNET_FUZZ_SEED=1234 deno test -A tests/unit/control_fuzz_test.ts   # replay one run
 *   VNET_FUZZ_SCALE=10 ...                                              # ten times the cases
 *
 * Asserted: a checker either returns a request that holds every invariant below or throws a
 * VnetError (code invalid or refused), nothing else; the server answers every request with a
 * result or an error carrying a code, keeps its links open and keeps answering `list`; a
 * control link that sends a FRAME is cut off with a protocol error while others are served.
 *
 * No fuzzed request may send traffic beyond loopback: before a body goes to the server it is
 * checked here, and any address it would make the server dial is pinned to 127.0.0.1 at a
 * port nothing listens on; ssh gateways and devices that exist on this machine are replaced.
 */
import { assert, assertEquals } from "./assert.ts";
import { ErrorCode, isErrorCode, VnetError } from "../../src/errors.ts";
import * as rpc from "../../src/control/rpc.ts";
import { Server } from "../../src/control/server.ts";
import { handshake, importSecret } from "../../src/link/auth.ts";
import { dial } from "../../src/link/dial.ts";
import { type Link, type LinkEvents } from "../../src/link/link.ts";
import { encodeMessage, MessageReader, MessageType } from "../../src/link/wire.ts";
import { parseGateway } from "../../src/link/ssh.ts";
import { fakeInterfaces } from "../../src/dataplane/fake_ports.ts";
import { type Fields, Logger } from "../../src/log.ts";
import { prng } from "../prng.ts";

// ---------------------------------------------------------------------------------------------
// Seeded randomness
// ---------------------------------------------------------------------------------------------

const SEED = Number(Deno.env.get("VNET_FUZZ_SEED") ?? Math.floor(Math.random() * 2 ** 31));
const SCALE = Number(Deno.env.get("VNET_FUZZ_SCALE") ?? "1");
console.log(`control fuzz seed ${SEED} (replay: VNET_FUZZ_SEED=${SEED}), scale ${SCALE}`);

type Rng = ReturnType<typeof prng>;

// ---------------------------------------------------------------------------------------------
// What JSON can carry: values, and the text that carries them
// ---------------------------------------------------------------------------------------------

/** A JSON value as a request body holds it once parsed (objects have no prototype here). */
type Json = null | boolean | number | string | Json[] | { [k: string]: Json };

function obj(entries: [string, Json][]): { [k: string]: Json } {
  // A null prototype: a "__proto__" key is an own property, as JSON.parse makes it.
  const o = Object.create(null) as { [k: string]: Json };
  for (const [k, v] of entries) o[k] = v;
  return o;
}

/**
 * JSON text for `v`, including what JSON.stringify cannot write but JSON text still carries:
 * -0 stays "-0", and ±Infinity is written as ±1e999 (JSON.parse reads it back as ±Infinity).
 */
function toJson(v: Json): string {
  if (typeof v === "number") {
    if (Object.is(v, -0)) return "-0";
    if (v === Infinity) return "1e999";
    if (v === -Infinity) return "-1e999";
    return JSON.stringify(v);
  }
  if (Array.isArray(v)) return `[${v.map(toJson).join(",")}]`;
  if (v !== null && typeof v === "object") {
    return `{${Object.keys(v).map((k) => `${JSON.stringify(k)}:${toJson(v[k])}`).join(",")}}`;
  }
  return JSON.stringify(v);
}

/** What the server's decoder makes of `text`: a plain object, or null if it would refuse it. */
function decodeBody(text: string): Record<string, unknown> | null {
  try {
    const v = JSON.parse(text);
    return typeof v === "object" && v !== null && !Array.isArray(v) ? v : null;
  } catch {
    return null;
  }
}

// ---------------------------------------------------------------------------------------------
// The corpus
// ---------------------------------------------------------------------------------------------

const NUMBERS: readonly number[] = [
  0,
  -0,
  1,
  -1,
  0.5,
  1.5,
  7000,
  65535,
  65536,
  65535.5,
  -65535,
  999,
  1000,
  20_000,
  600_000,
  600_001,
  2 ** 31,
  2 ** 32,
  2 ** 53,
  2 ** 53 + 2,
  -(2 ** 53),
  Number.MAX_SAFE_INTEGER,
  1e308,
  -1e308,
  5e-324,
  1e-7,
  Infinity,
  -Infinity,
];

const LONG = "x".repeat(300);
const VERY_LONG = "y".repeat(100_000);

const STRANGE: readonly string[] = [
  "",
  " ",
  "\0",
  "a\0b",
  "fake0\0",
  "\0fake0",
  "\n",
  "fake0\n",
  "\r\n",
  "\t",
  "a b",
  "../",
  "../../etc/passwd",
  "a/b",
  "a:b",
  ".",
  "..",
  "%",
  "%n%s%x",
  "%00",
  "lan0%",
  "\u202efake0", // right-to-left override
  "\u200f\u200e",
  "fa\u200bke0", // zero width space
  "\ufeff",
  "\u00a0",
  "\u3000",
  "\u2028",
  "😀",
  "😀😀😀",
  "😀😀😀😀", // 16 bytes
  "e\u0301",
  "\u00e0", // à: its UTF-8 (c3 a0) holds byte 0xa0, which the kernel's isspace() refuses
  "x\u00e0y",
  "\u4e20", // e4 b8 a0: the same, in a CJK character
  "\u00e9\u00e9\u00e9\u00e9\u00e9\u00e9\u00e9", // 14 bytes
  "\u00e9".repeat(8), // 16 bytes in 8 characters
  "\u20ac".repeat(5), // 15 bytes
  "\ud800", // lone surrogate
  "\udfff\ud800",
  "a".repeat(15),
  "a".repeat(16),
  LONG,
  VERY_LONG,
  "null",
  "true",
  "[]",
  "{}",
  "-1",
  "0x10",
  "1e3",
  "__proto__",
  "constructor",
  "toString",
  "hasOwnProperty",
  "lo",
  "fake0",
  "fake1",
  "FAKE0",
  "lan0",
  "eth0",
  "proxy",
  "host",
  "PROXY",
  "127.0.0.1",
  "::1",
  "[::1]",
  "-oProxyCommand=x",
  "user@gw:22",
];

const IDS: readonly string[] = [
  "0badc0de",
  "00000000",
  "ffffffff",
  "12345678",
  "0BADC0DE",
  "1234567",
  "123456789",
  "0badc0de\n",
  " 0badc0de",
  "0badc0dg",
  "0x123456",
];

const KEYS: readonly string[] = [
  "0f".repeat(16),
  "a5".repeat(16),
  "0F".repeat(16),
  "0f".repeat(16) + "\n",
  "0f".repeat(15),
  "0f".repeat(17),
  "g".repeat(32),
  "0".repeat(32),
];

const MACS: readonly string[] = [
  "02:00:00:00:00:01",
  "02:00:00:00:00:02",
  "02-00-00-00-00-03",
  "2:0:0:0:0:4",
  "02:AB:CD:EF:00:05",
  " 02:00:00:00:00:06\n",
  "02:00:00:00:00:0g",
  "02:00-00:00:00:07",
  "ff:ff:ff:ff:ff:ff",
  "FF-FF-FF-FF-FF-FF",
  "00:00:00:00:00:00",
  "0:0:0:0:0:0",
  "01:00:5e:00:00:01",
  "33:33:00:00:00:01",
  "03:00:00:00:00:00",
  "02:00:00:00:00:01:02",
  "02:00:00:00:00",
  "020000000001",
  "0x02:00:00:00:00:01",
  "02:00:00:00:00:1\0",
  "０２:00:00:00:00:01",
];

const HOSTNAMES: readonly string[] = ["127.0.0.1", "localhost", "::1", "a_b.c-d", "%", "x y"];

/** The same huge arrays every time: building 10^5 elements per case would be the whole run. */
const HUGE = {
  ids: Array.from({ length: 100_000 }, (_, i) => (i + 1).toString(16).padStart(8, "0")),
  idsOver: Array.from({ length: 100_001 }, (_, i) => (i + 1).toString(16).padStart(8, "0")),
  macs: Array.from({ length: 100_000 }, () => "02:00:00:00:00:01"),
  mixed: Array.from({ length: 100_000 }, (_, i) => (i % 3 ? i : "x")) as Json[],
  macs256: Array.from(
    { length: 256 },
    (_, i) => `02:00:00:00:${(i >> 8).toString(16).padStart(2, "0")}:${(i & 255).toString(16)}`,
  ),
  macs257: Array.from(
    { length: 257 },
    (_, i) => `02:00:00:00:${(i >> 8).toString(16).padStart(2, "0")}:${(i & 255).toString(16)}`,
  ),
};

const FIELD_NAMES: readonly string[] = [
  "proxy",
  "host",
  "via",
  "macs",
  "multicast",
  "peer",
  "ssh",
  "timeoutMs",
  "handler",
  "id",
  "role",
  "device",
  "origin",
  "bind",
  "handlers",
  "addr",
  "dev",
  "hostname",
  "port",
  "gateway",
  "identity",
  "knownHosts",
  "__proto__",
  "constructor",
  "req",
  "op",
];

function anyString(rng: Rng): string {
  switch (rng.int(6)) {
    case 0:
      return rng.pick(IDS);
    case 1:
      return rng.pick(KEYS);
    case 2:
      return rng.pick(MACS);
    case 3:
      return rng.pick(HOSTNAMES);
    default:
      return rng.pick(STRANGE);
  }
}

/** Any JSON value, biased towards the shapes and edges the checkers look at. */
function randomValue(rng: Rng, depth = 0): Json {
  switch (rng.int(depth > 2 ? 5 : 8)) {
    case 0:
      return null;
    case 1:
      return rng.chance(0.5);
    case 2:
      return rng.chance(0.8) ? rng.pick(NUMBERS) : rng.int(2 ** 32) - 2 ** 31;
    case 3:
    case 4:
      return anyString(rng);
    case 5:
      if (rng.chance(0.01)) return rng.pick([HUGE.ids, HUGE.macs, HUGE.mixed, HUGE.idsOver]);
      return Array.from({ length: rng.int(4) }, () => randomValue(rng, depth + 1));
    default:
      return obj(
        Array.from(
          { length: rng.int(5) },
          () => [rng.pick(FIELD_NAMES), randomValue(rng, depth + 1)] as [string, Json],
        ),
      );
  }
}

// ---------------------------------------------------------------------------------------------
// Valid requests, and mutations of them
// ---------------------------------------------------------------------------------------------

const PARSERS = {
  create: rpc.parseCreate,
  migrate: rpc.parseMigrate,
  close: rpc.parseHandlerRef,
  attach: rpc.parseAttach,
  detach: rpc.parseDetach,
  sync: rpc.parseSync,
} as const;
type Parsed = keyof typeof PARSERS;

function validMacs(rng: Rng): Json[] {
  if (rng.chance(0.02)) return HUGE.macs256;
  return Array.from(
    { length: 1 + rng.int(3) },
    () => `02:00:00:00:0${rng.int(10)}:${rng.int(90) + 10}`,
  );
}

function validId(rng: Rng): string {
  return (1 + rng.int(2 ** 32 - 1)).toString(16).padStart(8, "0");
}

function validKey(rng: Rng): string {
  return Array.from({ length: 32 }, () => "0123456789abcdef"[rng.int(16)]).join("");
}

/** A request the checker accepts, for the operation `op`. */
function validBody(rng: Rng, op: Parsed, deadPort: number): { [k: string]: Json } {
  const addr = () => obj([["hostname", "127.0.0.1"], ["port", deadPort]]);
  const endpoint = (dev: string) => obj([["addr", addr()], ["dev", dev]]);
  switch (op) {
    case "create":
      return obj([
        ["proxy", endpoint("fake0")],
        ["host", endpoint("fake1")],
        ["via", rng.pick(["proxy", "host"])],
        ["macs", validMacs(rng)],
        ["multicast", rng.chance(0.5)],
        ...(rng.chance(0.3) ? [["peer", addr()] as [string, Json]] : []),
        ...(rng.chance(0.3) ? [["timeoutMs", 1000 + rng.int(599_001)] as [string, Json]] : []),
      ]);
    case "migrate":
      return obj([["handler", validId(rng)], ["host", endpoint("fake1")]]);
    case "close":
      return obj([["handler", validId(rng)]]);
    case "attach":
      return obj([
        ["id", validId(rng)],
        ["role", rng.pick(["proxy", "host"])],
        ["device", rng.pick(["fake0", "fake1"])],
        ["macs", validMacs(rng)],
        ["multicast", rng.chance(0.5)],
        ["peer", "127.0.0.1:1"],
        ["origin", validKey(rng)],
        ["bind", validKey(rng)],
      ]);
    case "detach":
      return obj([["handler", validId(rng)], ["bind", validKey(rng)]]);
    case "sync":
      return obj([
        ["origin", validKey(rng)],
        [
          "handlers",
          rng.chance(0.02) ? HUGE.ids : Array.from({ length: rng.int(5) }, () => validId(rng)),
        ],
      ]);
  }
}

/** A string changed a little: a strange character in it, cut, case flipped, doubled. */
function mutateString(rng: Rng, s: string): string {
  switch (rng.int(6)) {
    case 0: {
      const at = rng.int(s.length + 1);
      return s.slice(0, at) +
        rng.pick(["\0", "\n", " ", "/", ":", "\u00a0", "\u00e0", "😀", "%", "\u202e"]) +
        s.slice(at);
    }
    case 1:
      return s.slice(0, rng.int(s.length + 1));
    case 2:
      return s.toUpperCase();
    case 3:
      return s + s;
    case 4:
      return s.slice(0, Math.max(0, s.length - 1)) + rng.pick(["g", "G", "0", "-", "\u0660"]);
    default:
      return rng.pick(STRANGE);
  }
}

/** Changes one place in `v` (at any depth): a new value, a deleted key, a changed string. */
function mutateValue(rng: Rng, v: Json): Json {
  if (typeof v === "string" && rng.chance(0.6)) return mutateString(rng, v);
  if (Array.isArray(v) && v.length > 0 && v.length < 1000 && rng.chance(0.7)) {
    const copy = v.slice();
    const i = rng.int(copy.length);
    switch (rng.int(4)) {
      case 0:
        copy.splice(i, 1);
        break;
      case 1:
        copy.push(copy[i]); // a duplicate
        break;
      default:
        copy[i] = mutateValue(rng, copy[i]);
    }
    return copy;
  }
  if (v !== null && typeof v === "object" && !Array.isArray(v) && rng.chance(0.8)) {
    const keys = Object.keys(v);
    const copy = obj(keys.map((k) => [k, v[k]]));
    if (keys.length === 0 || rng.chance(0.15)) {
      copy[rng.pick(FIELD_NAMES)] = randomValue(rng);
    } else {
      const k = rng.pick(keys);
      if (rng.chance(0.2)) delete copy[k];
      else copy[k] = mutateValue(rng, copy[k]);
    }
    return copy;
  }
  return randomValue(rng);
}

/** Bytes of JSON text changed: the body may still parse, into something nobody wrote. */
function mutateText(rng: Rng, text: string): string {
  const at = rng.int(text.length + 1);
  switch (rng.int(4)) {
    case 0:
      return text.slice(0, at) + rng.pick(['"', ",", "]", "}", "0", "-", "e9", "\\u0000", " "]) +
        text.slice(at + rng.int(2));
    case 1:
      return text.slice(0, at) + text.slice(at + 1 + rng.int(8));
    case 2:
      // A key given twice: JSON.parse keeps the last.
      return text.replace(
        /^\{/,
        `{${JSON.stringify(rng.pick(FIELD_NAMES))}:${toJson(randomValue(rng))},`,
      )
        .replace(/\}$/, `,${JSON.stringify(rng.pick(FIELD_NAMES))}:${toJson(randomValue(rng))}}`);
    default:
      return text.replace(
        /(-?\d+(\.\d+)?(e[+-]?\d+)?)/,
        rng.pick(["1e999", "-0", "1.0", "0.99999999999999999", "65535.000000000001", "1e-400"]),
      );
  }
}

/** One fuzzed body for `op`, as JSON text: mutated valid, random, or valid. */
function fuzzText(rng: Rng, op: Parsed, deadPort: number): string {
  const r = rng.int(10);
  if (r === 0) return toJson(validBody(rng, op, deadPort));
  if (r === 1) return toJson(randomValue(rng, 2) ?? null);
  let body: Json = validBody(rng, op, deadPort);
  for (let n = 1 + rng.int(3); n > 0; n--) body = mutateValue(rng, body);
  const text = toJson(body);
  return rng.chance(0.15) ? mutateText(rng, text) : text;
}

// ---------------------------------------------------------------------------------------------
// The invariants of an accepted request
// ---------------------------------------------------------------------------------------------

const utf8 = new TextEncoder();

/**
 * The kernel's dev_valid_name(), byte by byte: 1 to 15 bytes, not "." or "..", no '/', ':',
 * NUL, or byte its isspace() (lib/ctype.c) takes for white space: 9-13, 32 and 160 (0xa0,
 * which is also the second byte of "à" and of many other characters in UTF-8).
 */
function kernelAcceptsDeviceName(name: string): boolean {
  const bytes = utf8.encode(name);
  if (bytes.length === 0 || bytes.length > 15 || name === "." || name === "..") return false;
  return bytes.every((b) =>
    b !== 0 && b !== 0x2f && b !== 0x3a && b !== 0x20 && b !== 0xa0 && !(b >= 9 && b <= 13)
  );
}

const CANONICAL_MAC = /^[0-9a-f]{2}(:[0-9a-f]{2}){5}$/;

/** Why `mac` may not be a handler's MAC, or "" if it may. */
function macProblem(mac: unknown): string {
  if (typeof mac !== "string" || !CANONICAL_MAC.test(mac)) return "not a lower-case MAC";
  if (parseInt(mac.slice(0, 2), 16) & 1) return "multicast or broadcast";
  if (mac === "00:00:00:00:00:00") return "zero";
  return "";
}

type Violations = Map<string, string[]>;

/** Records a broken rule with up to three examples (built only when recorded). */
function violation(v: Violations, kind: string, example: () => string): void {
  const list = v.get(kind) ?? [];
  if (list.length < 3) {
    const text = example();
    list.push(text.length > 300 ? text.slice(0, 300) + "…" : text);
  }
  v.set(kind, list);
}

/** A short JSON view of a request: long strings and arrays cut. */
function preview(v: unknown): string {
  return JSON.stringify(
    v,
    (_k, x) =>
      typeof x === "string" && x.length > 40
        ? `${x.slice(0, 40)}…(${x.length})`
        : Array.isArray(x) && x.length > 8
        ? [...x.slice(0, 8), `…(${x.length})`]
        : typeof x === "number" && !Number.isFinite(x)
        ? String(x)
        : Object.is(x, -0)
        ? "-0"
        : x,
  );
}

/** Checks what a checker returned against the rules, recording each rule broken. */
function checkAccepted(op: Parsed, req: unknown, input: Record<string, unknown>, v: Violations) {
  const ex = () => preview(input);
  const r = req as Record<string, unknown>;
  const dev = (d: unknown, what: string) => {
    if (typeof d !== "string" || !kernelAcceptsDeviceName(d)) {
      violation(
        v,
        `${op}: ${what} is a device name the kernel refuses`,
        () => `${JSON.stringify(d)} from ${ex()}`,
      );
    }
  };
  const hostPort = (a: unknown, what: string) => {
    const hp = a as { hostname?: unknown; port?: unknown };
    if (typeof hp?.hostname !== "string" || hp.hostname === "" || hp.hostname.includes("\0")) {
      violation(v, `${op}: ${what}.hostname is not a host name`, ex);
    }
    const p = hp?.port;
    if (typeof p !== "number" || !Number.isInteger(p) || p < 1 || p > 65535) {
      violation(v, `${op}: ${what}.port outside 1..65535`, () => `${String(p)} from ${ex()}`);
    }
  };
  const id = (x: unknown, what: string) => {
    if (typeof x !== "string" || !/^[0-9a-f]{8}$/.test(x) || x === "00000000") {
      violation(v, `${op}: ${what} is not a handler id`, () => `${JSON.stringify(x)} from ${ex()}`);
    }
  };
  const key = (x: unknown, what: string) => {
    if (typeof x !== "string" || !/^[0-9a-f]{32}$/.test(x)) {
      violation(
        v,
        `${op}: ${what} is not a 32-hex-digit key`,
        () => `${JSON.stringify(x)} from ${ex()}`,
      );
    }
  };
  const macs = (m: unknown) => {
    if (!Array.isArray(m) || m.length === 0 || m.length > rpc.MAX_MACS) {
      violation(v, `${op}: macs count outside 1..${rpc.MAX_MACS}`, ex);
      return;
    }
    if (new Set(m).size !== m.length) violation(v, `${op}: a MAC given twice`, ex);
    for (const mac of m) {
      const why = macProblem(mac);
      if (why) {
        violation(v, `${op}: a MAC that is ${why}`, () => `${JSON.stringify(mac)} from ${ex()}`);
      }
    }
    // Each accepted MAC came from a string: a request of another type is refused, not coerced.
    const given = input.macs;
    if (Array.isArray(given) && given.some((g) => typeof g !== "string")) {
      violation(v, `${op}: a macs element that is not a string was accepted`, ex);
    }
  };
  const role = (x: unknown, what: string) => {
    if (x !== "proxy" && x !== "host") violation(v, `${op}: ${what} is not proxy or host`, ex);
  };
  const bool = (x: unknown, what: string) => {
    if (typeof x !== "boolean") violation(v, `${op}: ${what} is not a boolean`, ex);
  };
  const ssh = (s: unknown) => {
    if (s === undefined) return;
    const o = s as { gateway?: unknown; identity?: unknown; knownHosts?: unknown };
    try {
      parseGateway(String(o.gateway));
    } catch {
      violation(v, `${op}: an ssh gateway that does not parse`, ex);
    }
    for (const f of [o.identity, o.knownHosts]) {
      if (f !== undefined && (typeof f !== "string" || f === "" || f.includes("\0"))) {
        violation(v, `${op}: an ssh file name that is not text`, ex);
      }
    }
  };
  switch (op) {
    case "create": {
      for (const side of ["proxy", "host"] as const) {
        const e = r[side] as { addr?: unknown; dev?: unknown };
        hostPort(e?.addr, `${side}.addr`);
        dev(e?.dev, `${side}.dev`);
      }
      role(r.via, "via");
      macs(r.macs);
      bool(r.multicast, "multicast");
      if (r.peer !== undefined) hostPort(r.peer, "peer");
      ssh(r.ssh);
      const t = r.timeoutMs;
      if (typeof t !== "number" || !Number.isInteger(t) || t < 1000 || t > 600_000) {
        violation(v, `create: timeoutMs outside 1000..600000`, () => `${t} from ${ex()}`);
      }
      break;
    }
    case "migrate": {
      id(r.handler, "handler");
      const e = r.host as { addr?: unknown; dev?: unknown };
      hostPort(e?.addr, "host.addr");
      dev(e?.dev, "host.dev");
      ssh(r.ssh);
      break;
    }
    case "close":
      id(r.handler, "handler");
      break;
    case "attach":
      id(r.id, "id");
      role(r.role, "role");
      dev(r.device, "device");
      macs(r.macs);
      bool(r.multicast, "multicast");
      if (typeof r.peer !== "string" || r.peer === "" || r.peer.includes("\0")) {
        violation(v, "attach: peer is not text", ex);
      }
      key(r.origin, "origin");
      key(r.bind, "bind");
      break;
    case "detach":
      id(r.handler, "handler");
      key(r.bind, "bind");
      break;
    case "sync": {
      key(r.origin, "origin");
      const hs = r.handlers;
      if (!Array.isArray(hs) || hs.length > 100_000) violation(v, "sync: handlers not a list", ex);
      else for (const h of hs) id(h, "a handlers element");
      break;
    }
  }
}

/** Only VnetErrors of code invalid or refused may come out of a checker. */
function checkThrown(op: string, e: unknown, text: () => string, v: Violations): void {
  if (!(e instanceof VnetError)) {
    violation(
      v,
      `${op}: threw ${(e as Error)?.name ?? typeof e}, not a VnetError`,
      () => `${e} from ${text()}`,
    );
  } else if (e.code !== ErrorCode.Invalid && e.code !== ErrorCode.Refused) {
    violation(v, `${op}: a VnetError of code ${e.code}`, text);
  } else if (e.message.includes("\n")) {
    violation(v, `${op}: an error message of more than one line`, () => JSON.stringify(e.message));
  }
}

function report(v: Violations): string {
  return [...v].map(([kind, examples]) =>
    `  ${kind}:\n${examples.map((x) => `      ${x}`).join("\n")}`
  )
    .join("\n");
}

// ---------------------------------------------------------------------------------------------
// 1. The checkers alone
// ---------------------------------------------------------------------------------------------

Deno.test("control fuzz: the request checkers accept only what holds, and throw only VnetError", () => {
  const rng = prng(SEED ^ 0x91);
  const violations: Violations = new Map();
  const ops = Object.keys(PARSERS) as Parsed[];
  const accepted = new Map<string, number>(ops.map((op) => [op, 0]));
  const cases = 12_000 * SCALE;
  const started = performance.now();
  for (let c = 0; c < cases; c++) {
    const op = ops[c % ops.length];
    const text = fuzzText(rng, op, 1);
    const body = decodeBody(text);
    if (!body) continue; // the link's decoder refuses it before any checker sees it
    let req: unknown;
    try {
      req = PARSERS[op](body);
    } catch (e) {
      checkThrown(op, e, () => text, violations);
      continue;
    }
    accepted.set(op, accepted.get(op)! + 1);
    checkAccepted(op, req, body, violations);
  }
  // The two exported helpers, straight.
  for (let c = 0; c < 2000 * SCALE; c++) {
    const name = rng.chance(0.5)
      ? anyString(rng)
      : mutateString(rng, rng.pick(["fake0", "lan0", "vmif0"]));
    try {
      rpc.checkDeviceName(name);
      if (!kernelAcceptsDeviceName(name)) {
        violation(
          violations,
          "checkDeviceName: accepts a name the kernel refuses",
          () => JSON.stringify(name),
        );
      }
    } catch (e) {
      checkThrown("checkDeviceName", e, () => JSON.stringify(name), violations);
    }
    const macs = decodeBody(
      `{"m":${
        toJson(
          rng.chance(0.5)
            ? randomValue(rng)
            : validMacs(rng).map((m) => rng.chance(0.3) ? mutateValue(rng, m) : m),
        )
      }}`,
    )?.m;
    try {
      const out = rpc.checkMacs(macs);
      checkAccepted(
        "attach",
        { ...validAttachShell, macs: out },
        { macs } as Record<string, unknown>,
        violations,
      );
    } catch (e) {
      checkThrown("checkMacs", e, () => preview(macs), violations);
    }
  }
  console.log(
    `    ${cases} bodies in ${Math.round(performance.now() - started)} ms; accepted: ${
      [...accepted].map(([op, n]) => `${op} ${n}`).join(", ")
    }`,
  );
  for (const [op, n] of accepted) {
    assert(n > cases / ops.length / 50, `too few ${op} accepted (${n}): the fuzzer is off`);
  }
  assert(violations.size === 0, `rules broken (seed ${SEED}):\n${report(violations)}`);
});

/** An accepted attach around a MAC list, to check checkMacs' answer with the same rules. */
const validAttachShell = {
  id: "0badc0de",
  role: "host",
  device: "fake0",
  multicast: false,
  peer: "x",
  origin: "0f".repeat(16),
  bind: "0f".repeat(16),
};

Deno.test("control fuzz: the boundaries, one by one", () => {
  const ok = (f: () => unknown) => {
    f();
  };
  const refused = (f: () => unknown, what: string) => {
    try {
      f();
    } catch (e) {
      assert(e instanceof VnetError, `${what}: ${e}`);
      return;
    }
    throw new Error(`${what}: accepted`);
  };
  const sync = (handlers: unknown) => ({ origin: "0f".repeat(16), handlers });
  ok(() => rpc.parseSync(sync(HUGE.ids)));
  refused(() => rpc.parseSync(sync(HUGE.idsOver)), "100001 handler ids");
  refused(() => rpc.parseSync(sync(["00000000"])), "handler id 0");
  ok(() => rpc.checkMacs(HUGE.macs256));
  refused(() => rpc.checkMacs(HUGE.macs257), "257 MACs");
  refused(() => rpc.checkMacs(HUGE.macs), "10^5 MACs");
  assertEquals(rpc.checkMacs(["02:AB:cd:00:00:01", "02-ab-CD-00-00-01"]), ["02:ab:cd:00:00:01"]);
  for (const name of ["a".repeat(15), "\u20ac".repeat(5), "e\u0301"]) {
    ok(() => rpc.checkDeviceName(name));
  }
  for (
    const name of [
      "a".repeat(16),
      "\u00e9".repeat(8),
      ".",
      "..",
      "a/b",
      "a:b",
      "a b",
      "a\0",
      "\u00a0",
    ]
  ) {
    refused(() => rpc.checkDeviceName(name), JSON.stringify(name));
  }
  for (const port of [0, -0, 65536, 1.5, Infinity, -1, 2 ** 53]) {
    refused(
      () =>
        rpc.parseMigrate({
          handler: "0badc0de",
          host: { addr: { hostname: "127.0.0.1", port }, dev: "fake0" },
        }),
      `port ${port}`,
    );
  }
  for (const timeoutMs of [999, 600_001, 1e308, -0, null, "20000"]) {
    const body = decodeBody(toJson(validBody(prng(1), "create", 1)))!;
    body.timeoutMs = timeoutMs;
    refused(() => rpc.parseCreate(body), `timeoutMs ${timeoutMs}`);
  }
});

Deno.test("control fuzz: a MAC inside a nested list is refused, not coerced by String()", () => {
  // checkMacs maps each element through String(): [["02:00:00:00:00:01"]] becomes a MAC.
  for (const macs of [[["02:00:00:00:00:01"]], [[["02:00:00:00:00:01"]]]]) {
    let refused = false;
    try {
      rpc.checkMacs(macs);
    } catch (e) {
      refused = e instanceof VnetError;
    }
    assert(refused, `checkMacs(${JSON.stringify(macs)}) accepts a list as a MAC`);
  }
});

Deno.test("control fuzz: a device name holding byte 0xa0 is refused, as the kernel refuses it", () => {
  // dev_valid_name() tests each byte with isspace(), and lib/ctype.c classes 0xa0 as a space:
  // `ip link add xà type veth ...` fails with EINVAL, while `ip link add zé ...` works.
  for (const name of ["x\u00e0", "\u4e20", "\u00a0"]) {
    assert(!kernelAcceptsDeviceName(name), `the kernel rule here takes ${JSON.stringify(name)}`);
    let refused = false;
    try {
      rpc.checkDeviceName(name);
    } catch (e) {
      refused = e instanceof VnetError;
    }
    assert(refused, `checkDeviceName(${JSON.stringify(name)}) accepts a name the kernel refuses`);
  }
});

// ---------------------------------------------------------------------------------------------
// 2. A real Server over real links
// ---------------------------------------------------------------------------------------------

interface LogLine {
  level: string;
  msg: string;
  fields: Fields;
}

/** Keeps log lines in memory, as fuzz_test.ts's. */
class MemoryLog extends Logger {
  constructor(readonly lines: LogLine[], private readonly extra: Fields = {}) {
    super(extra);
  }
  override with(fields: Fields): Logger {
    return new MemoryLog(this.lines, { ...this.extra, ...fields });
  }
  #push(level: string, msg: string, fields: Fields) {
    this.lines.push({ level, msg, fields: { ...this.extra, ...fields } });
    if (this.lines.length > 20_000) this.lines.splice(0, 10_000);
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

const unhandled: unknown[] = [];
globalThis.addEventListener("unhandledrejection", (e) => {
  unhandled.push(e.reason);
  e.preventDefault();
});

/** A link end that takes nothing but answers: the test's own side of control and peer links. */
function quietEvents(onClose: (reason: string) => void = () => {}): LinkEvents {
  return {
    onFrame: () => {},
    onRequest: () => Promise.reject(new VnetError("no requests here")),
    onClose: (_link, reason) => onClose(reason),
  };
}

/**
 * Makes `body` safe to send, in place: whatever the server would dial is 127.0.0.1 at
 * `deadPort`, no ssh gateway is valid, and no device the server would listen on exists on
 * this machine. A body the checker refuses anyway is left as it is.
 */
function pinToLoopback(
  op: string,
  body: Record<string, unknown>,
  deadPort: number,
  realDevices: Set<string>,
): void {
  const safeAddr = { hostname: "127.0.0.1", port: deadPort };
  const parse = (PARSERS as Record<string, (b: Record<string, unknown>) => unknown>)[op];
  if (!parse) return;
  let req: Record<string, unknown>;
  try {
    req = parse(body) as Record<string, unknown>;
  } catch {
    return; // refused by the same checker on the server: nothing is dialled
  }
  if (op === "create" || op === "migrate") {
    for (const side of ["proxy", "host"]) {
      const e = body[side] as Record<string, unknown> | undefined;
      if (e && typeof e === "object" && req[side]) {
        e.addr = { ...safeAddr };
        if (realDevices.has(String(e.dev))) e.dev = "fake1";
      }
    }
    if (req.peer) body.peer = { ...safeAddr };
    if (req.ssh) delete body.ssh;
  }
  if (op === "attach" && realDevices.has(String(body.device))) body.device = "fake1";
}

/** Handshakes as `kind` on a raw TCP connection: requests are then written as JSON text. */
async function rawLink(port: number, key: CryptoKey, kind: "control" | "peer") {
  const conn = await Deno.connect({ hostname: "127.0.0.1", port });
  const reader = new MessageReader(conn);
  await handshake(conn, reader, { key, side: "dialer", kind });
  let nextReq = 1;
  return {
    conn,
    /** Sends `{...body, req, op}` (text as given) and returns the server's answer, raw. */
    async request(op: string, bodyText: string): Promise<Record<string, unknown>> {
      const req = nextReq++;
      const inner = bodyText.trim().replace(/^\{|\}$/g, "").trim();
      const text = `{${inner}${inner ? "," : ""}"req":${req},"op":${JSON.stringify(op)}}`;
      await conn.write(encodeMessage(MessageType.Request, utf8.encode(text)));
      for (;;) {
        const m = await reader.message();
        if (!m) {
          throw new Error(`the server closed the ${kind} link after '${op}' ${text.slice(0, 200)}`);
        }
        if (m.type === MessageType.Error) {
          throw new Error(
            `the server cut the ${kind} link after '${op}' ${text.slice(0, 200)}: ${
              new TextDecoder().decode(m.payload)
            }`,
          );
        }
        if (m.type !== MessageType.Response) continue;
        const answer = JSON.parse(new TextDecoder().decode(m.payload));
        if (answer.req === req) return answer;
      }
    },
  };
}

async function waitUntil(cond: () => boolean, what: string, timeoutMs = 5000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`not in time: ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

Deno.test({
  name: "control fuzz: a real server answers every fuzzed request with a result or a coded error",
  sanitizeOps: false,
  sanitizeResources: false,
  fn: async () => {
    const rng = prng(SEED ^ 0x92);
    const key = await importSecret(crypto.getRandomValues(new Uint8Array(32)));
    const lines: LogLine[] = [];
    const port = closedPort();
    const deadPort = closedPort();
    const server = new Server({
      listen: { hostname: "127.0.0.1", port },
      key,
      ports: fakeInterfaces(),
      listDevices: () => [],
      log: new MemoryLog(lines),
      keepaliveMs: 0,
    });
    await server.start();
    const realDevices = new Set(Deno.networkInterfaces().map((i) => i.name));
    const testLog = new MemoryLog([]);
    const open = (kind: "control" | "peer", onClose?: (reason: string) => void) =>
      dial({ hostname: "127.0.0.1", port }, {
        key,
        kind,
        log: testLog,
        events: quietEvents(onClose),
        timeoutMs: 5000,
      });
    const started = performance.now();
    const links: Link[] = [];
    try {
      const observer = await open("control");
      const control = await open("control");
      const peer = await open("peer");
      links.push(observer, control, peer);
      const rawControl = await rawLink(port, key, "control");
      const rawPeer = await rawLink(port, key, "peer");
      const listOk = async (when: string) => {
        const answer = await observer.request("list", {}, 5000);
        assert(Array.isArray(answer.handlers), `list after ${when}: ${JSON.stringify(answer)}`);
      };

      const controlOps = [
        "create",
        "close",
        "migrate",
        "list",
        "devices",
        "version",
        "attach",
        "sync",
        "",
        "__proto__",
        "constructor",
        "x".repeat(1000),
        "😀",
      ];
      const peerOps = ["attach", "detach", "sync", "attach", "create", "list", "toString", "\0"];
      const codes = new Map<string, number>();
      let answered = 0, results = 0;
      const cases = 1200 * SCALE;
      for (let c = 0; c < cases; c++) {
        const kind = c % 2 === 0 ? "control" : "peer";
        const op = rng.pick(kind === "control" ? controlOps : peerOps);
        const parsedAs: Parsed = op in PARSERS
          ? op as Parsed
          : rng.pick(Object.keys(PARSERS) as Parsed[]);
        // A quarter valid, so that requests get past the checkers and into the server's logic.
        const text = rng.chance(0.25)
          ? toJson(validBody(rng, parsedAs, deadPort))
          : fuzzText(rng, parsedAs, deadPort);
        const body = decodeBody(text);
        if (!body) continue;
        pinToLoopback(op, body, deadPort, realDevices);
        // Half go over the links dial() makes, half as raw JSON text (with -0 and 1e999 intact).
        if (rng.chance(0.5)) {
          const link = kind === "control" ? control : peer;
          try {
            await link.request(op, { ...body }, 10_000);
            results++;
          } catch (e) {
            assert(e instanceof VnetError, `${kind} '${op}': ${e}`);
            assert(e.code !== ErrorCode.Timeout, `${kind} '${op}' got no answer: ${e.message}`);
            codes.set(e.code, (codes.get(e.code) ?? 0) + 1);
          }
        } else {
          const raw = kind === "control" ? rawControl : rawPeer;
          // toJson keeps what JSON.stringify would lose (-0, 1e999).
          const answer = await raw.request(op, toJson(body as Json));
          if (answer.ok === true) results++;
          else {
            assert(
              answer.ok === false,
              `${kind} '${op}': an answer neither ok nor not: ${JSON.stringify(answer)}`,
            );
            assert(
              isErrorCode(answer.code),
              `${kind} '${op}': an error without a code: ${JSON.stringify(answer)}`,
            );
            assert(
              typeof answer.error === "string" && answer.error !== "",
              `${kind} '${op}': no reason`,
            );
            codes.set(answer.code, (codes.get(answer.code) ?? 0) + 1);
          }
        }
        answered++;
        if (c % 50 === 49) await listOk(`${c + 1} fuzzed requests`);
      }
      assert(
        control.isOpen && peer.isOpen && observer.isOpen,
        "the server dropped a link that only sent requests",
      );
      console.log(
        `    ${answered} requests answered: ${results} results, errors by code ${
          JSON.stringify(Object.fromEntries(codes))
        }, ${(await server.list()).length} handlers, ${Math.round(performance.now() - started)} ms`,
      );
      assert(
        codes.size >= 2,
        `errors of one code only: ${JSON.stringify(Object.fromEntries(codes))}`,
      );

      // A FRAME on a control link: cut off with a protocol error; the others are still served.
      const cutBefore = lines.filter((l) => l.msg === "protocol error, disconnecting").length;
      let reason = "";
      const framer = await open("control", (r) => reason = r);
      links.push(framer);
      await listOk("a second control link opened");
      assert(framer.sendFrame(1, new Uint8Array(60)), "the frame was not even queued");
      await waitUntil(() => !framer.isOpen, "the control link that sent a frame is closed");
      assert(reason !== "", "closed without a reason");
      await waitUntil(
        () => lines.filter((l) => l.msg === "protocol error, disconnecting").length > cutBefore,
        "the server logs the protocol error",
      );
      // A frame on the peer link is fine (no handler takes it) and keeps the link open.
      peer.sendFrame(rng.int(2 ** 32), new Uint8Array(60));
      await listOk("a control link was cut for a frame");
      await peer.request("sync", { origin: "0e".repeat(16), handlers: [] }, 5000);
      assert(peer.isOpen && control.isOpen, "a well-behaved link went down with the framer");
      await control.request("version", {}, 5000);

      const failed = lines.filter((l) => l.level === "error" && l.msg === "request failed");
      assert(
        failed.length === 0,
        `a request failed with a non-VNET error: ${JSON.stringify(failed.slice(0, 3))}`,
      );
      assert(!lines.some((l) => l.msg === "accept loop failed"), "the accept loop died");
      rawControl.conn.close();
      rawPeer.conn.close();
    } finally {
      for (const l of links) l.close("done");
      await server.stop();
    }
    await new Promise((r) => setTimeout(r, 50));
    assert(
      unhandled.length === 0,
      `unhandled rejections: ${unhandled.map((r) => String((r as Error)?.stack ?? r)).join("\n")}`,
    );
    const ms = performance.now() - started;
    assert(ms < 20_000 * SCALE, `the server fuzz took ${Math.round(ms)} ms`);
  },
});
