/**
 * ffi/layout.ts against the C headers, for every architecture in its tables: each size and
 * offset becomes a `_Static_assert` in a small C file, compiled (not run) by that
 * architecture's gcc, so aarch64 is proven here on an x86_64 machine. scripts/run.sh installs
 * both compilers and the headers (libpcap-dev, the arm64 cross toolchain).
 */
import { assert, assertEquals } from "./assert.ts";
import { type Arch, LAYOUTS, type Structs } from "../../ffi/layout.ts";

const COMPILERS: Record<Arch, string> = {
  x86_64: Deno.build.arch === "x86_64" ? "gcc" : "x86_64-linux-gnu-gcc",
  aarch64: Deno.build.arch === "aarch64" ? "gcc" : "aarch64-linux-gnu-gcc",
};

/** The C file that checks every struct of `structs` (one assert a number). */
function cSource(structs: Structs): string {
  const headers = new Set(Object.values(structs).map((s) => s.header));
  const lines = ["#define _GNU_SOURCE", "#include <stddef.h>"];
  for (const h of headers) lines.push(`#include <${h}>`);
  for (const [name, s] of Object.entries(structs)) {
    lines.push(`_Static_assert(sizeof(${s.type}) == ${s.size}, "${name} size");`);
    for (const [field, at] of Object.entries(s.offsets)) {
      lines.push(`_Static_assert(offsetof(${s.type}, ${field}) == ${at}, "${name}.${field}");`);
    }
  }
  return lines.join("\n") + "\n";
}

/**
 * Compiles `source` for `arch`; the compiler's errors, or "" if it built. libpcap's headers are
 * architecture-independent, so the cross compiler gets the host's pcap/ folder, and only it.
 */
async function compile(arch: Arch, source: string): Promise<string> {
  const dir = await Deno.makeTempDir({ prefix: "vnet-layout-" });
  try {
    await Deno.symlink("/usr/include/pcap", `${dir}/pcap`);
    await Deno.writeTextFile(`${dir}/layout.c`, source);
    const out = await new Deno.Command(COMPILERS[arch], {
      args: ["-std=c11", "-I", dir, "-c", "-o", `${dir}/layout.o`, `${dir}/layout.c`],
      stdout: "piped",
      stderr: "piped",
    }).output().catch((e) => {
      throw new Error(`${COMPILERS[arch]} did not run (bash scripts/run.sh installs it): ${e}`);
    });
    return out.success ? "" : new TextDecoder().decode(out.stderr);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

for (const arch of Object.keys(LAYOUTS) as Arch[]) {
  Deno.test(`every FFI struct's size and offsets hold on ${arch}`, async () => {
    assertEquals(await compile(arch, cSource(LAYOUTS[arch])), "");
  });
}

Deno.test("the layout check catches a wrong offset (epoll_event's data on aarch64 at 4)", async () => {
  const wrong = {
    ...LAYOUTS.aarch64,
    epoll_event: { ...LAYOUTS.aarch64.epoll_event, size: 12, offsets: { events: 0, data: 4 } },
  };
  const errors = await compile("aarch64", cSource(wrong));
  assert(errors.includes("epoll_event size"), errors);
  assert(errors.includes("epoll_event.data"), errors);
});
