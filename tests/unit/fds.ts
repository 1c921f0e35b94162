/** What the socket tests share: whether an fd is open, and a script run in a process of its own. */
import { assert } from "./assert.ts";

/** Whether `fd` is open in this process. */
export function isOpen(fd: number): boolean {
  try {
    Deno.readLinkSync(`/proc/self/fd/${fd}`);
    return true;
  } catch {
    return false;
  }
}

/**
 * Runs TypeScript `script` with `deno eval` from the repository's root (its imports start
 * `./src/...`), in a fresh process with a runtime of its own, and returns the JSON it printed.
 */
export async function evalJson<T>(script: string, timeoutMs: number): Promise<T> {
  const root = new URL("../..", import.meta.url).pathname;
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["eval", "--ext=ts", script],
    cwd: root,
    stdout: "piped",
    stderr: "piped",
    signal: AbortSignal.timeout(timeoutMs),
  }).output();
  assert(out.code === 0, `exit ${out.code}: ${new TextDecoder().decode(out.stderr)}`);
  return JSON.parse(new TextDecoder().decode(out.stdout).trim());
}
