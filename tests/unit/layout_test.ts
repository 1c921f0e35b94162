/**
 * ffi/layout.ts against the C headers, for every architecture in its tables: each size and
 * offset becomes a `_Static_assert` in a small C file, compiled (not run) by that
 * architecture's gcc (c_check.ts), so aarch64 is proven here on an x86_64 machine.
 */
import { assert, assertEquals } from "./assert.ts";
import { type Arch, LAYOUTS, type Structs } from "../../ffi/layout.ts";
import { compileC } from "./c_check.ts";

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

for (const arch of Object.keys(LAYOUTS) as Arch[]) {
  Deno.test(`every FFI struct's size and offsets hold on ${arch}`, async () => {
    assertEquals(await compileC(arch, cSource(LAYOUTS[arch])), "");
  });
}

Deno.test("the layout check catches a wrong offset (epoll_event's data on aarch64 at 4)", async () => {
  const wrong = {
    ...LAYOUTS.aarch64,
    epoll_event: { ...LAYOUTS.aarch64.epoll_event, size: 12, offsets: { events: 0, data: 4 } },
  };
  const errors = await compileC("aarch64", cSource(wrong));
  assert(errors.includes("epoll_event size"), errors);
  assert(errors.includes("epoll_event.data"), errors);
});
