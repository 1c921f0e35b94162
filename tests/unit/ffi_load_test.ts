import { VnetError } from "../../src/errors.ts";
import { candidatesFor, LIBNET, LIBPCAP, type LibrarySpec, openLibrary } from "../../ffi/load.ts";

// Minimal assertions (JSR's @std/assert is not reachable from here).
function assert(cond: unknown, msg = "assertion failed"): asserts cond {
  if (!cond) throw new Error(msg);
}
function assertEquals(actual: unknown, expected: unknown, msg?: string): void {
  const a = JSON.stringify(actual), e = JSON.stringify(expected);
  assert(a === e, `${msg ? msg + ": " : ""}expected ${e}, got ${a}`);
}
function assertMatch(actual: string, re: RegExp): void {
  assert(re.test(actual), `expected ${JSON.stringify(actual)} to match ${re}`);
}
function assertThrows<E extends Error>(f: () => unknown, type: new (...a: never[]) => E): E {
  try {
    f();
  } catch (e) {
    assert(e instanceof type, `expected ${type.name}, got ${e}`);
    return e;
  }
  throw new Error(`expected ${type.name} to be thrown`);
}

const root = new URL("../../", import.meta.url);

/** Runs `code` (a module body) in a fresh Deno with `env`; returns its stdout and status. */
async function runIsolated(code: string, env: Record<string, string>) {
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["eval", "--ext=ts", code],
    cwd: root,
    env,
    stdout: "piped",
    stderr: "piped",
  }).output();
  const decode = (b: Uint8Array) => new TextDecoder().decode(b);
  return { code: out.code, stdout: decode(out.stdout).trim(), stderr: decode(out.stderr) };
}

Deno.test("VNET_LIBPCAP=/nonexistent gives one clear VnetError, on first use only", async () => {
  const r = await runIsolated(
    `
    import { libraryVersions } from "./src/dataplane/interfaces.ts"; // importing must not load anything
    import { pcap } from "./ffi/libpcap.ts";
    console.log(JSON.stringify(libraryVersions()));
    try {
      pcap();
      console.log("loaded");
    } catch (e) {
      console.log(JSON.stringify({ name: e.name, message: e.message, cause: !!e.cause }));
    }
    `,
    { VNET_LIBPCAP: "/nonexistent" },
  );
  assertEquals(r.code, 0, r.stderr);
  const [versionsLine, errorLine] = r.stdout.split("\n");
  const versions = JSON.parse(versionsLine);
  assertMatch(versions.libpcap, /^unavailable: libpcap not found/);
  const err = JSON.parse(errorLine);
  assertEquals(err.name, "VnetError");
  assertEquals(err.cause, true);
  assertMatch(err.message, /^libpcap not found \(tried VNET_LIBPCAP=\/nonexistent/);
  assertMatch(err.message, /apt-get install libpcap0\.8/);
  assertMatch(err.message, /set VNET_LIBPCAP=/);
  assert(!err.message.includes("\n"));
});

Deno.test("VNET_LIBNET=/nonexistent names libnet and its package", async () => {
  const r = await runIsolated(
    `
    import { libnet } from "./ffi/libnet.ts";
    try { libnet(); console.log("loaded"); } catch (e) { console.log(e.message); }
    `,
    { VNET_LIBNET: "/nonexistent" },
  );
  assertEquals(r.code, 0, r.stderr);
  assertMatch(
    r.stdout,
    /^libnet not found \(tried VNET_LIBNET=\/nonexistent.*apt-get install libnet1/,
  );
});

Deno.test("no candidate loads: the message lists every name tried", () => {
  const spec: LibrarySpec = {
    name: "libvnetmissing",
    envVar: "VNET_TEST_UNSET_VARIABLE",
    candidates: { default: ["libvnetmissing.so.1", "libvnetmissing.so"] },
    install: "apt-get install nothing",
  };
  const e = assertThrows(() => openLibrary(spec, {}), VnetError);
  assertEquals(
    e.message,
    "libvnetmissing not found (tried libvnetmissing.so.1, libvnetmissing.so): " +
      "install it (apt-get install nothing) or set VNET_TEST_UNSET_VARIABLE=/path/to/libvnetmissing.so",
  );
  assert(e.cause instanceof Error);
});

Deno.test("a library without a needed symbol is reported as unusable, not missing", () => {
  if (Deno.build.os !== "linux") return;
  const spec: LibrarySpec = {
    name: "libc",
    candidates: { default: ["libc.so.6"] },
    install: "upgrade",
  };
  const e = assertThrows(
    () => openLibrary(spec, { vnet_no_such_symbol: { parameters: [], result: "void" } }),
    VnetError,
  );
  assertMatch(e.message, /^libc is unusable \(.*vnet_no_such_symbol.*\): install a newer one/);
});

Deno.test("candidate names per OS", () => {
  assertEquals(candidatesFor(LIBPCAP, "linux"), ["libpcap.so.1", "libpcap.so.0.8", "libpcap.so"]);
  assertEquals(candidatesFor(LIBNET, "linux"), ["libnet.so.9", "libnet.so.1", "libnet.so"]);
  assertEquals(candidatesFor(LIBPCAP, "windows")[0], "wpcap.dll");
  assertEquals(candidatesFor(LIBPCAP, "darwin")[0], "libpcap.A.dylib");
});
