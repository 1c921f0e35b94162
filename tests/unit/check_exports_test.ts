/** scripts/check_exports.ts: knip on fixture trees, and on this one. */
import { assert, assertEquals } from "./assert.ts";
import { checkScript } from "./check_script.ts";

const { run: checkExports, onTree: checkTree } = checkScript("check_exports.ts");

const clean = {
  "main.ts": `import { used } from "./src/a.ts";\nused();\n`,
  "src/a.ts": `import type { Shape } from "./b.ts";\nexport function used(s?: Shape) {}\n`,
  // forTests is used by a test only, tagged by an `deno eval` string only: both count.
  "src/b.ts": `export interface Shape { x: number }\nexport const forTests = 1;\n` +
    `/** @public imported by code a test runs with deno eval */\nexport const evalOnly = 2;\n`,
  "tests/b_test.ts": `import { forTests } from "../src/b.ts";\nconsole.log(forTests);\n`,
};

Deno.test("exports used by main.ts, by types, by tests or tagged @public pass", async () => {
  const ok = await checkTree(clean);
  assertEquals(ok.code, 0, ok.text);
});

Deno.test("an export nobody imports fails, named with its module", async () => {
  const bad = await checkTree({
    ...clean,
    "src/b.ts": clean["src/b.ts"] + `export function lonely() {}\nexport type Lone = number;\n`,
    "ffi/c.ts": `export const inFfi = 1;\n`,
    "main.ts": clean["main.ts"] + `import "./ffi/c.ts";\n`,
  });
  assertEquals(bad.code, 1, bad.text);
  assert(/src\/b\.ts: lonely\b/.test(bad.text), bad.text);
  assert(/src\/b\.ts: Lone\b/.test(bad.text), bad.text);
  assert(/ffi\/c\.ts: inFfi\b/.test(bad.text), bad.text);
  assert(!/forTests|Shape|evalOnly|: used/.test(bad.text), bad.text);
});

Deno.test("this repository exports nothing unused", async () => {
  const ok = await checkExports();
  assertEquals(ok.code, 0, ok.text);
});
