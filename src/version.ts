/**
 * The version users see in `vnet --version`. The version comes from deno.json; the commit is
 * stamped in by `deno task compile`: scripts/compile.ts writes a small gitignored module that
 * calls `stampBuild(...)` and compiles it in with `deno compile --preload`, so it runs before
 * main.ts reads `COMMIT`. Run from source, the commit is $VNET_BUILD_COMMIT, else "dev".
 */
import config from "../deno.json" with { type: "json" };

export const VERSION: string = config.version;

function envCommit(): string | undefined {
  try {
    return Deno.env.get("VNET_BUILD_COMMIT") || undefined;
  } catch {
    return undefined; // no --allow-env
  }
}

/** The git commit the binary was built from (live binding: see `stampBuild`). */
export let COMMIT: string = envCommit() ?? "dev";

/** Called once by the generated build module, before main.ts runs. */
export function stampBuild(build: { commit: string }): void {
  COMMIT = build.commit;
}
