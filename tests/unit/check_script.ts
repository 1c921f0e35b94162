/** Runs one of the repository checks (scripts/check_*.ts) on this tree or on a fixture tree. */

export interface CheckResult {
  code: number;
  /** stdout and stderr together. */
  text: string;
}

/** A check script's runner: on `root` (this repository when omitted), or on fixture files. */
export function checkScript(name: string): {
  run(root?: string): Promise<CheckResult>;
  onTree(files: Record<string, string>): Promise<CheckResult>;
} {
  const script = new URL(`../../scripts/${name}`, import.meta.url).pathname;
  const run = async (root?: string): Promise<CheckResult> => {
    const out = await new Deno.Command(Deno.execPath(), {
      args: ["run", "-A", "--cached-only", script, ...(root ? [`--root=${root}`] : [])],
      stdout: "piped",
      stderr: "piped",
    }).output();
    const text = new TextDecoder().decode(out.stdout) + new TextDecoder().decode(out.stderr);
    return { code: out.code, text };
  };
  /** Writes `files` under a fresh directory and runs the check there. */
  const onTree = async (files: Record<string, string>): Promise<CheckResult> => {
    const root = await Deno.makeTempDir({ prefix: "vnet-check-test-" });
    try {
      for (const [path, text] of Object.entries(files)) {
        await Deno.mkdir(`${root}/${path.split("/").slice(0, -1).join("/")}`, { recursive: true });
        await Deno.writeTextFile(`${root}/${path}`, text);
      }
      return await run(root);
    } finally {
      await Deno.remove(root, { recursive: true });
    }
  };
  return { run, onTree };
}
