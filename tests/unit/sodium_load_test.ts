import { assert, assertEquals, assertMatch } from "./assert.ts";
import { sodium, sodiumVersion } from "../../ffi/sodium.ts";
import { candidatesFor, LIBSODIUM } from "../../ffi/load.ts";

const root = new URL("../../", import.meta.url);

Deno.test("libsodium loads, initialises, and is 1.0.18 or newer", () => {
  const s = sodium();
  assertEquals(s.sodium_init(), 1, "sodium() ran sodium_init already: a second call says so");
  const [major, minor, patch] = sodiumVersion().split(".").map(Number);
  assert(
    major > 1 || (major === 1 && (minor > 0 || patch >= 18)),
    `libsodium ${sodiumVersion()}`,
  );
  // The CSPRNG answers: 32 random bytes are not all zero.
  const bytes = new Uint8Array(32);
  s.randombytes_buf(bytes, BigInt(bytes.length));
  assert(bytes.some((b) => b !== 0));
});

Deno.test("VNET_LIBSODIUM=/nonexistent names libsodium and its package, on first use", async () => {
  const out = await new Deno.Command(Deno.execPath(), {
    args: [
      "eval",
      "--ext=ts",
      `
      import { sodium } from "./ffi/sodium.ts"; // loads nothing yet
      console.log("imported");
      try { sodium(); console.log("loaded"); } catch (e) { console.log(e.name, e.message); }
      `,
    ],
    cwd: root,
    env: { VNET_LIBSODIUM: "/nonexistent" },
    stdout: "piped",
    stderr: "piped",
  }).output();
  const stdout = new TextDecoder().decode(out.stdout).trim();
  assertEquals(out.code, 0, new TextDecoder().decode(out.stderr));
  const [first, second] = stdout.split("\n");
  assertEquals(first, "imported");
  assertMatch(
    second,
    /^LibraryError libsodium not found \(tried VNET_LIBSODIUM=\/nonexistent.*apt-get install libsodium23.*set VNET_LIBSODIUM=/,
  );
});

Deno.test("libsodium: candidate names per OS", () => {
  assertEquals(candidatesFor(LIBSODIUM, "linux")[0], "libsodium.so.23");
  assert(candidatesFor(LIBSODIUM, "linux").includes("libsodium.so.26"), "1.0.19 and later");
  assertEquals(candidatesFor(LIBSODIUM, "darwin")[0], "libsodium.26.dylib");
  assertEquals(candidatesFor(LIBSODIUM, "windows"), ["libsodium.dll"]);
});
