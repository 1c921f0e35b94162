/** scripts/check_layers.ts: the layer rule of docs/layout.md, on fixture trees and on this one. */
import { assert, assertEquals } from "./assert.ts";
import { checkScript } from "./check_script.ts";

const { run: checkLayers, onTree: checkTree } = checkScript("check_layers.ts");

const downward = {
  "main.ts": `import { run } from "./src/cli/run.ts";\nrun();\n`,
  "src/errors.ts": `export class VnetError extends Error {}\n`,
  "src/cli/run.ts":
    `import { serve } from "../control/y.ts";\nexport function run() { serve(); }\n`,
  "src/control/y.ts": `import type { Frame } from "../link/x.ts";\n` +
    `export function serve(f?: Frame) { return f; }\n`,
  "src/link/x.ts": `import { VnetError } from "../errors.ts";\n` +
    `export interface Frame { e?: VnetError }\n`,
};

Deno.test("imports down the layers pass", async () => {
  const ok = await checkTree(downward);
  assertEquals(ok.code, 0, ok.text);
});

Deno.test("an upward import fails, naming the import and the rule", async () => {
  const bad = await checkTree({
    ...downward,
    // link reaching up into control: a type-only import counts too.
    "src/link/x.ts": `import type { serve } from "../control/y.ts";\n` +
      `export interface Frame { s?: typeof serve }\n`,
  });
  assertEquals(bad.code, 1, bad.text);
  assert(bad.text.includes("link-imports-upward: src/link/x.ts -> src/control/y.ts"), bad.text);
  assert(bad.text.includes("no-circular:"), bad.text);
});

Deno.test("a cycle within one layer fails, type-only steps included", async () => {
  const bad = await checkTree({
    ...downward,
    "src/link/w.ts": `import type { Frame } from "./x.ts";\nexport type Wire = Frame;\n`,
    "src/link/x.ts": `import type { Wire } from "./w.ts";\nexport interface Frame { w?: Wire }\n`,
  });
  assertEquals(bad.code, 1, bad.text);
  assert(
    bad.text.includes("no-circular: src/link/w.ts -> src/link/x.ts -> src/link/w.ts"),
    bad.text,
  );
});

Deno.test("the foundation, main.ts, a module outside every layer and one importing lab/ fail", async () => {
  const bad = await checkTree({
    ...downward,
    "src/errors.ts": `import "./io/w.ts";\nexport class VnetError extends Error {}\n`,
    "src/io/w.ts": `import "../../lab/l.ts";\nexport {};\n`,
    "lab/l.ts": `export {};\n`,
    "src/stray/z.ts": `import "../errors.ts";\n`,
    "main.ts": `import { run } from "./src/cli/run.ts";\nimport "./src/control/y.ts";\nrun();\n`,
    "src/cli/run.ts": `import "../stray/z.ts";\nexport function run() {}\n`,
  });
  assertEquals(bad.code, 1, bad.text);
  assert(bad.text.includes("foundation-imports-upward: src/errors.ts -> src/io/w.ts"), bad.text);
  assert(bad.text.includes("\nunplaced-module: src/stray/z.ts -> src/errors.ts"), bad.text);
  assert(bad.text.includes("imports-outside-the-product: src/io/w.ts -> lab/l.ts"), bad.text);
  assert(bad.text.includes("main-imports-past-cli: main.ts -> src/control/y.ts"), bad.text);
  assert(bad.text.includes("imports-unplaced-module: src/cli/run.ts -> src/stray/z.ts"), bad.text);
});

Deno.test("this repository keeps the layer rule", async () => {
  const ok = await checkLayers();
  assertEquals(ok.code, 0, ok.text);
  assert(ok.text.includes("every import within its layer"), ok.text);
});
