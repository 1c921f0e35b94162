/**
 * Compiles (never runs) a C file for each architecture VNET ships for: numbers copied from C
 * headers into TypeScript (struct layouts, socket constants) become `_Static_assert`s, so
 * aarch64 is proven here on an x86_64 machine. scripts/run.sh installs both compilers and the
 * headers (libpcap-dev, the arm64 cross toolchain).
 */
import type { Arch } from "../../ffi/layout.ts";

const COMPILERS: Record<Arch, string> = {
  x86_64: Deno.build.arch === "x86_64" ? "gcc" : "x86_64-linux-gnu-gcc",
  aarch64: Deno.build.arch === "aarch64" ? "gcc" : "aarch64-linux-gnu-gcc",
};

/**
 * Compiles `source` for `arch`; the compiler's errors, or "" if it built. libpcap's headers are
 * architecture-independent, so the cross compiler gets the host's pcap/ folder, and only it.
 */
export async function compileC(arch: Arch, source: string): Promise<string> {
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

/**
 * A C file that checks each of `constants` (name: the value VNET uses) against `headers`, one
 * `_Static_assert` each, for `compileC`.
 */
export function constantChecks(headers: string[], constants: Record<string, number>): string {
  const lines = ["#define _GNU_SOURCE", ...headers.map((h) => `#include <${h}>`)];
  for (const [name, value] of Object.entries(constants)) {
    lines.push(`_Static_assert(${name} == ${value}, "${name}");`);
  }
  return lines.join("\n") + "\n";
}
