/**
 * `deno run -A scripts/check_layers.ts` (part of `deno task check`): fails, naming each import,
 * if a module of main.ts, src/ or ffi/ imports a layer above its own, imports in a cycle, or
 * sits in no layer. The rules are in .dependency-cruiser.cjs; dependency-cruiser reads the
 * imports (type-only and dynamic ones too) with TypeScript's parser.
 *
 * Exit status: 0 clean, 1 violations, 2 the check itself could not run. `--root=DIR` checks
 * another tree laid out the same way (the tests check fixtures with it), with this repository's
 * rules.
 */
// dependency-cruiser parses .ts only when it can import TypeScript (5.x: 7 has no JS API);
// importing it here puts it in the npm graph dependency-cruiser resolves from.
import "typescript";
import { cruise } from "dependency-cruiser";
import { createRequire } from "node:module";

const repo = new URL("..", import.meta.url).pathname.replace(/\/$/, "");
const root = (Deno.args.find((a) => a.startsWith("--root="))?.slice(7) ?? repo).replace(/\/$/, "");

/** The part of dependency-cruiser's JSON result read here. */
interface Summary {
  totalCruised: number;
  violations: { from: string; to: string; rule: { name: string }; cycle?: { name: string }[] }[];
}

async function main(): Promise<number> {
  const { forbidden, options } = createRequire(import.meta.url)(`${repo}/.dependency-cruiser.cjs`);
  const targets = ["main.ts", "src", "ffi"].filter((p) => {
    try {
      Deno.statSync(`${root}/${p}`);
      return true;
    } catch {
      return false;
    }
  });
  const { output } = await cruise(targets, {
    ...options,
    baseDir: root,
    validate: true,
    ruleSet: { forbidden },
    outputType: "json",
  });
  const summary: Summary = JSON.parse(output as string).summary;
  for (const v of summary.violations) {
    const path = v.cycle?.length
      ? [v.from, ...v.cycle.map((c) => c.name)].join(" -> ")
      : `${v.from} -> ${v.to}`;
    console.error(`${v.rule.name}: ${path}`);
  }
  if (summary.violations.length > 0) {
    console.error(
      `check_layers: ${summary.violations.length} violation(s); the rules: .dependency-cruiser.cjs`,
    );
    return 1;
  }
  console.log(`check_layers: ${summary.totalCruised} modules, every import within its layer`);
  return 0;
}

try {
  Deno.exit(await main());
} catch (e) {
  console.error(`check_layers: could not run: ${e instanceof Error ? e.message : e}`);
  Deno.exit(2);
}
