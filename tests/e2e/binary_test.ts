/**
 * The self-contained binary from `deno task compile` (scripts/compile.ts).
 *
 * The binary under test is $VNET_BIN, else dist/vnet; if neither exists the test tries
 * `deno task compile` once. That needs `denort` (downloaded from Deno's release server, or
 * DENORT_BIN=/path/to/denort); when it cannot be had, the binary tests are skipped and the
 * reason is printed. The compile script's own logic (build stamp, DENORT_BIN check) is tested
 * either way. To run the whole end-to-end suite against the binary:
 *
 *   deno task compile && VNET_BIN=$PWD/dist/vnet deno test -A tests/e2e/
 */
import { REPO_ROOT, spawn, tryRun } from "../../lab/netns.ts";
import config from "../../deno.json" with { type: "json" };

function assert(cond: unknown, msg: string): asserts cond {
  if (!cond) throw new Error(msg);
}

const deno = Deno.execPath();
const exe = Deno.build.os === "windows" ? ".exe" : "";

async function exists(path: string): Promise<boolean> {
  return await Deno.stat(path).then((s) => s.isFile, () => false);
}

/** The binary to test, or why there is none. */
async function findBinary(): Promise<{ bin: string } | { skip: string }> {
  const fromEnv = Deno.env.get("VNET_BIN");
  if (fromEnv) {
    return (await exists(fromEnv)) ? { bin: fromEnv } : { skip: `VNET_BIN=${fromEnv} not found` };
  }
  const bin = `${REPO_ROOT}/dist/vnet${exe}`;
  if (await exists(bin)) return { bin };
  const r = await tryRun(null, [deno, "task", "compile"], { timeoutMs: 300_000 }).catch((e) => ({
    code: -1,
    stdout: "",
    stderr: String(e),
  }));
  if (r.code === 0 && (await exists(bin))) return { bin };
  const why = r.stderr.split("\n").filter((l) => l.trim() && !/^Task /.test(l.trim())).at(-1);
  return { skip: `no binary and 'deno task compile' failed: ${why ?? `exit ${r.code}`}` };
}

const found = await findBinary();
const BIN = "bin" in found ? found.bin : null;
if (!BIN) console.log(`SKIP binary tests: ${"skip" in found ? found.skip : ""}`);
else console.log(`binary under test: ${BIN}`);

const procTest = { sanitizeOps: false, sanitizeResources: false };

// ---------------------------------------------------------------------------------------------
// The compile script, with or without denort
// ---------------------------------------------------------------------------------------------

Deno.test("compile: the build stamp puts the git commit into --version", async () => {
  const stamp = await tryRun(null, [
    deno,
    "run",
    "--allow-run",
    "--allow-read",
    "--allow-write",
    "--allow-env",
    `${REPO_ROOT}/scripts/compile.ts`,
    "--stamp-only",
  ], { env: { VNET_BUILD_COMMIT: "0123abcd4567" } });
  assert(stamp.code === 0, `--stamp-only: ${stamp.stderr}`);
  const path = stamp.stdout.trim();
  assert(path.endsWith("dist/.build/stamp.ts"), `stamp path ${path}`);
  const v = await tryRun(null, [deno, "run", "--preload", path, `${REPO_ROOT}/main.ts`, "-V"]);
  assert(v.code === 0, `--version: ${v.stderr}`);
  assert(
    v.stdout.trim() === `vnet ${config.version} (0123abcd4567) deno ${Deno.version.deno}`,
    `--version printed: ${v.stdout}`,
  );
  // Not in git: dist/ is ignored.
  const ignored = await tryRun(null, ["git", "-C", REPO_ROOT, "check-ignore", "-q", path]);
  assert(ignored.code === 0, "dist/.build/stamp.ts is not gitignored");
});

Deno.test("compile: a DENORT_BIN that does not exist is one line and exit 1", async () => {
  const r = await tryRun(null, [deno, "task", "compile", "--output", "/tmp/vnet-never"], {
    env: { DENORT_BIN: "/nonexistent/denort" },
  });
  // deno's own "Task compile ..." banner (coloured when it thinks it may) is not ours.
  // deno-lint-ignore no-control-regex -- the ESC of ANSI colour codes, on purpose
  const plain = r.stderr.replace(/\x1b\[[0-9;]*m/g, "");
  const lines = plain.split("\n").filter((l) => l.trim() && !/^Task /.test(l.trim()));
  assert(r.code === 1, `exit ${r.code}`);
  assert(lines.length === 1, `one line expected:\n${plain}`);
  assert(/DENORT_BIN '\/nonexistent\/denort' does not exist/.test(lines[0]), lines[0]);
});

// ---------------------------------------------------------------------------------------------
// The binary
// ---------------------------------------------------------------------------------------------

Deno.test({
  name: "binary: --version names version and commit, --help works",
  ignore: !BIN,
  fn: async () => {
    const v = await tryRun(null, [BIN!, "--version"]);
    assert(v.code === 0, `--version: exit ${v.code}: ${v.stderr}`);
    const m = /^vnet (\S+) \((\S+)\) deno (\S+)$/.exec(v.stdout.trim());
    assert(m, `--version printed: ${v.stdout}`);
    assert(m[1] === config.version, `version ${m[1]}, deno.json says ${config.version}`);
    assert(m[2] !== "dev", "the binary carries no build stamp");
    const h = await tryRun(null, [BIN!, "--help"]);
    assert(h.code === 0 && /Usage:/.test(h.stdout), `--help: ${h.stdout}${h.stderr}`);
    const s = await tryRun(null, [BIN!, "server", "--help"]);
    assert(s.code === 0 && /--check-config/.test(s.stdout), `server --help: ${s.stderr}`);
  },
});

Deno.test({
  name: "binary: check a config, serve metrics, answer a client (baked-in permissions)",
  ignore: !BIN,
  ...procTest,
  fn: async () => {
    const dir = await Deno.makeTempDir({ prefix: "vnet-binary-test-" });
    const port = () => {
      const l = Deno.listen({ hostname: "127.0.0.1", port: 0 });
      const p = (l.addr as Deno.NetAddr).port;
      l.close();
      return p;
    };
    const [listen, metrics] = [port(), port()];
    try {
      await Deno.writeTextFile(
        `${dir}/vnet.secret`,
        "921de031692801b6131e3e435ffa812ced2ad067801e614de2e3fe8bae9d093b\n",
      );
      await Deno.chmod(`${dir}/vnet.secret`, 0o600);
      await Deno.writeTextFile(
        `${dir}/vnet.json`,
        JSON.stringify({
          listen: `127.0.0.1:${listen}`,
          "secret-file": "vnet.secret",
          state: "state.json",
          metrics: `127.0.0.1:${metrics}`,
        }),
      );
      const check = await tryRun(null, [
        BIN!,
        "server",
        "--check-config",
        "--config",
        `${dir}/vnet.json`,
      ]);
      assert(check.code === 0 && check.stdout.trim() === "config ok", `check: ${check.stderr}`);

      const server = spawn(null, [BIN!, "server", "--config", `${dir}/vnet.json`]);
      try {
        await server.waitForLine(/server listening/, 30_000);
        const text = await (await fetch(`http://127.0.0.1:${metrics}/metrics`)).text();
        const version = (await tryRun(null, [BIN!, "--version"])).stdout;
        const commit = /\((\S+)\)/.exec(version)?.[1];
        assert(text.includes(`commit="${commit}"`), `build_info lacks commit ${commit}:\n${text}`);
        const list = await tryRun(null, [
          BIN!,
          "client",
          "list",
          "--server",
          `127.0.0.1:${listen}`,
          "--secret-file",
          `${dir}/vnet.secret`,
        ]);
        assert(list.code === 0 && list.stdout.trim() === "no handlers", `list: ${list.stderr}`);
      } finally {
        const code = await server.kill();
        assert(code === 0, `server exit ${code}: ${server.output()}`);
      }
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
});
