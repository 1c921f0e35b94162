/** scripts/check_graph.ts: its scanner on the forms TypeScript allows, and the whole check on trees. */
import { assert, assertEquals } from "./assert.ts";
import { blankComments, scan } from "../../scripts/check_graph.ts";

const names = (s: Set<string>) => [...s].sort();

Deno.test("the scanner reads every form of export", () => {
  const s = scan(`
    export function f() {}
    export async function g() {}
    export function* gen() {}
    export class C {}
    export abstract class A {}
    export const a = 1, ignoredSecondDeclarator = 2;
    export let b = 2;
    export interface I {}
    export type T = number;
    export enum E { X }
    export const enum CE { Y }
    export const { d1, d2: renamed } = { d1: 1, d2: 2 };
    const local = 1, other = 2;
    export { local, other as alias };
    export type { T as T2 };
    export { re as reAlias } from "./re.ts";
    export * from "./star.ts";
    export * as space from "./space.ts";
    export default class {}
  `);
  assertEquals(
    names(s.exports),
    [
      "A",
      "C",
      "CE",
      "E",
      "I",
      "T",
      "T2",
      "a",
      "alias",
      "b",
      "d1",
      "default",
      "f",
      "g",
      "gen",
      "local",
      "reAlias",
      "renamed",
      "space",
    ].sort(),
  );
  assertEquals(s.starFrom, ["./star.ts"]);
  assertEquals(names(s.uses.get("./re.ts")!), ["re"]);
  assertEquals(names(s.uses.get("./space.ts")!), ["*"]);
});

Deno.test("the scanner reads every form of import", () => {
  const s = scan(`
    import def, { a, b as bee, type c } from "./one.ts";
    import type { T } from "./types.ts";
    import * as ns from "./ns.ts";
    import * as whole from "./whole.ts";
    import "./side.ts";
    import {
      multi,
      line,
    } from "./multi.ts";
    const x = ns.used + ns.alsoUsed;
    console.log(whole);
    const lazy = await import("./lazy.ts");
    type Later = import("./typed.ts").Shape;
    const code = \`import { inString } from "./string.ts";\`;
  `);
  assertEquals(names(s.uses.get("./one.ts")!), ["a", "b", "c", "default"]);
  assertEquals(names(s.uses.get("./types.ts")!), ["T"]);
  assertEquals(names(s.uses.get("./ns.ts")!), ["alsoUsed", "used"]);
  assertEquals(names(s.uses.get("./whole.ts")!), ["*"]);
  assertEquals(names(s.uses.get("./side.ts")!), []);
  assertEquals(names(s.uses.get("./multi.ts")!), ["line", "multi"]);
  assertEquals(names(s.uses.get("./lazy.ts")!), ["*"]);
  assertEquals(names(s.uses.get("./typed.ts")!), ["Shape"]);
  assertEquals(names(s.uses.get("./string.ts")!), ["inString"]);
});

Deno.test("comments are blanked, strings and regular expressions kept", () => {
  const src = [
    `// export const commented = 1;`,
    `/* import { x } from "./nope.ts"; */`,
    `const re = /[/*]export/g; const url = "http://x"; // tail`,
    "const t = `a ${`nested ${1}`} // not a comment`;",
    `export const kept = 1;`,
  ].join("\n");
  const out = blankComments(src);
  assertEquals(out.length, src.length);
  assert(!out.includes("commented") && !out.includes("nope") && !out.includes("tail"), out);
  assert(out.includes(`/[/*]export/g`) && out.includes(`"http://x"`), out);
  assert(out.includes("// not a comment`"), out);
  assertEquals(names(scan(src).exports), ["kept"]);
});

/** Writes `files` under a fresh directory and runs the check there. */
async function checkTree(files: Record<string, string>) {
  const root = await Deno.makeTempDir({ prefix: "vnet-check-graph-test-" });
  try {
    for (const [path, text] of Object.entries(files)) {
      await Deno.mkdir(`${root}/${path.split("/").slice(0, -1).join("/")}`, { recursive: true });
      await Deno.writeTextFile(`${root}/${path}`, text);
    }
    const out = await new Deno.Command(Deno.execPath(), {
      args: [
        "run",
        "-A",
        new URL("../../scripts/check_graph.ts", import.meta.url).pathname,
        `--root=${root}`,
      ],
      stdout: "piped",
      stderr: "piped",
    }).output();
    const text = new TextDecoder().decode(out.stdout) + new TextDecoder().decode(out.stderr);
    return { code: out.code, text };
  } finally {
    await Deno.remove(root, { recursive: true });
  }
}

Deno.test("a clean tree passes; a cycle and an unused export fail, each named", async () => {
  const clean = {
    "main.ts": `import { used } from "./src/a.ts";\nused();\n`,
    "src/a.ts": `import type { Shape } from "./b.ts";\nexport function used(s?: Shape) {}\n`,
    "src/b.ts": `export interface Shape { x: number }\nexport const forTests = 1;\n`,
    "tests/b_test.ts": `import { forTests } from "../src/b.ts";\nconsole.log(forTests);\n`,
  };
  const ok = await checkTree(clean);
  assertEquals(ok.code, 0, ok.text);

  const bad = await checkTree({
    ...clean,
    // b imports a back (a type-only step closes the cycle), and exports a name nobody imports.
    "src/b.ts": `import { used } from "./a.ts";\nexport interface Shape { x: number }\n` +
      `export const forTests = 1;\nexport function lonely() { used(); }\n`,
  });
  assertEquals(bad.code, 1, bad.text);
  assert(bad.text.includes("src/a.ts -> (type) src/b.ts -> src/a.ts"), bad.text);
  assert(/src\/b\.ts: lonely\n/.test(bad.text), bad.text);
  assert(!/forTests|Shape,|: used/.test(bad.text), bad.text);
});
