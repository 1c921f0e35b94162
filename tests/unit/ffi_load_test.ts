import { assert, assertEquals, assertMatch, assertThrows } from "./assert.ts";
import { candidatesFor, LIBNET, LIBPCAP, type LibrarySpec, openLibrary } from "../../ffi/load.ts";
import { LibraryError } from "../../ffi/errors.ts";

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

Deno.test("VNET_LIBPCAP=/nonexistent gives one clear error, on first use only", async () => {
  const r = await runIsolated(
    `
    import { libraryVersions, listDevices } from "./src/dataplane/interfaces.ts"; // loads nothing
    import { pcap } from "./ffi/libpcap.ts";
    console.log(JSON.stringify(libraryVersions()));
    const show = (e) => JSON.stringify({ name: e.name, code: e.code, message: e.message, cause: !!e.cause });
    try {
      pcap();
      console.log("loaded");
    } catch (e) {
      console.log(show(e));
    }
    try {
      listDevices();
      console.log("listed");
    } catch (e) {
      console.log(show(e));
    }
    `,
    { VNET_LIBPCAP: "/nonexistent" },
  );
  assertEquals(r.code, 0, r.stderr);
  const [versionsLine, ffiLine, userLine] = r.stdout.split("\n");
  const versions = JSON.parse(versionsLine);
  assertMatch(versions.libpcap, /^unavailable: libpcap not found/);
  // ffi/ says it in its own terms...
  const err = JSON.parse(ffiLine);
  assertEquals(err.name, "LibraryError");
  assertEquals(err.cause, true);
  assertMatch(err.message, /^libpcap not found \(tried VNET_LIBPCAP=\/nonexistent/);
  assertMatch(err.message, /apt-get install libpcap0\.8/);
  assertMatch(err.message, /set VNET_LIBPCAP=/);
  assert(!err.message.includes("\n"));
  // ...and the data plane hands users the same line as a VnetError (`vnet: ...`, exit 1).
  const user = JSON.parse(userLine);
  assertEquals([user.name, user.code, user.message], ["VnetError", "system", err.message]);
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
  const e = assertThrows(() => openLibrary(spec, {}), LibraryError);
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
    LibraryError,
  );
  assertMatch(e.message, /^libc is unusable \(.*vnet_no_such_symbol.*\): install a newer one/);
});

Deno.test("candidate names per OS", () => {
  assertEquals(candidatesFor(LIBPCAP, "linux"), ["libpcap.so.1", "libpcap.so.0.8", "libpcap.so"]);
  assertEquals(candidatesFor(LIBNET, "linux"), ["libnet.so.9", "libnet.so.1", "libnet.so"]);
  assertEquals(candidatesFor(LIBPCAP, "windows")[0], "wpcap.dll");
  assertEquals(candidatesFor(LIBPCAP, "darwin")[0], "libpcap.A.dylib");
});
