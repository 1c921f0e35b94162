/**
 * `deno run -A scripts/check_exports.ts` (part of `deno task check`): fails, naming each, if a
 * module of src/ or ffi/ exports a name (or type) that no other file of the repository imports.
 * Tests, bench/, lab/ and scripts/ count as users (a test double's exports are used by tests
 * only); a name used only inside its own module should not be exported.
 *
 * knip reads the imports. It needs a package.json where it runs, and one at the repository's
 * root would switch Deno to a node_modules directory, so knip runs on a scratch copy of the
 * tree (hard links) with a package.json of its own. Code that tests run from a string with
 * `deno eval` is invisible to it: a name only such code imports is tagged `@public` where it is
 * exported, and knip leaves it alone.
 *
 * Exit status: 0 clean, 1 findings, 2 the check itself could not run. `--root=DIR` checks another
 * tree laid out the same way (the tests check fixtures with it).
 */

const repo = new URL("..", import.meta.url).pathname.replace(/\/$/, "");
const root = (Deno.args.find((a) => a.startsWith("--root="))?.slice(7) ?? repo).replace(/\/$/, "");
/** Copied into the scratch tree: where exports live, and where their users live. */
const DIRS = ["main.ts", "src", "ffi", "tests", "bench", "lab", "scripts"];

const KNIP_CONFIG = {
  entry: ["main.ts", "{tests,bench,lab,scripts}/**/*.ts"],
  project: ["{src,ffi}/**/*.ts"],
  include: ["exports", "types", "nsExports", "nsTypes", "duplicates"],
};

/** `npm:knip@X.Y.Z`, pinned in deno.json's imports (so `deno install` caches it). */
function knipSpecifier(): string {
  const config = JSON.parse(Deno.readTextFileSync(`${repo}/deno.json`));
  const specifier = config.imports?.knip;
  if (typeof specifier !== "string") throw new Error(`deno.json's imports have no "knip"`);
  return specifier;
}

async function run(cmd: string, args: string[], cwd = repo): Promise<Deno.CommandOutput> {
  return await new Deno.Command(cmd, { args, cwd, stdout: "piped", stderr: "piped" }).output();
}

async function main(): Promise<number> {
  const scratch = await Deno.makeTempDir({ prefix: "vnet-check-exports-" });
  try {
    const present = DIRS.filter((p) => {
      try {
        Deno.statSync(`${root}/${p}`);
        return true;
      } catch {
        return false;
      }
    });
    const sources = present.map((p) => `${root}/${p}`);
    let copy = await run("cp", ["-al", ...sources, scratch]);
    if (!copy.success) copy = await run("cp", ["-r", ...sources, scratch]);
    if (!copy.success) throw new Error(new TextDecoder().decode(copy.stderr).trim());
    await Deno.writeTextFile(
      `${scratch}/package.json`,
      JSON.stringify({ name: "vnet-check-exports", private: true, type: "module" }),
    );
    await Deno.writeTextFile(`${scratch}/knip.json`, JSON.stringify(KNIP_CONFIG));
    const knip = await run(Deno.execPath(), [
      "run",
      "-A",
      knipSpecifier(),
      `--directory=${scratch}`,
      "--no-progress",
      "--no-config-hints",
      "--reporter=compact",
    ]);
    const out = new TextDecoder().decode(knip.stdout).trim();
    const err = new TextDecoder().decode(knip.stderr).trim();
    if (knip.code === 0) {
      console.log("check_exports: every export of src/ and ffi/ is imported somewhere");
      return 0;
    }
    if (knip.code === 1 && out) {
      console.error(out);
      console.error("check_exports: drop the `export`, or the name, or use it");
      return 1;
    }
    throw new Error(`knip exited ${knip.code}: ${err || out}`);
  } finally {
    await Deno.remove(scratch, { recursive: true });
  }
}

try {
  Deno.exit(await main());
} catch (e) {
  console.error(`check_exports: could not run: ${e instanceof Error ? e.message : e}`);
  Deno.exit(2);
}
