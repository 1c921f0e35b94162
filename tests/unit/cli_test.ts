/**
 * The real program, `deno run -A main.ts ...`, as a user runs it: help, version, bad commands,
 * flags and values, `vnet secret`, `server --check-config`, and the exit codes (0 ok, 1 a
 * user error). Nothing here needs root, opens a namespace or touches an interface. Run as root,
 * the commands run as the `nobody` user (setpriv) with a copy of the npm cache, so that a test
 * that quietly needed root would fail.
 */
import { assert, assertEquals, assertMatch } from "./assert.ts";

const MAIN = new URL("../../main.ts", import.meta.url).pathname;

/** How commands run: as nobody when this test runs as root and can drop to it, else as is. */
interface Runner {
  prefix: string[];
  env: Record<string, string>;
  /** Who owns the files the commands must read or write. */
  owner?: { uid: number; gid: number };
  /** The copy of the npm cache made for nobody, removed when the tests end. */
  denoDir?: string;
}

async function output(cmd: string, args: string[]): Promise<string | null> {
  try {
    const r = await new Deno.Command(cmd, { args, stdout: "piped", stderr: "null" }).output();
    return r.success ? new TextDecoder().decode(r.stdout).trim() : null;
  } catch {
    return null;
  }
}

async function makeRunner(): Promise<Runner> {
  const base = { PATH: Deno.env.get("PATH") ?? "/usr/bin:/bin", NO_COLOR: "1" };
  const asIs: Runner = {
    prefix: [Deno.execPath(), "run", "-A", MAIN],
    env: { ...base, HOME: Deno.env.get("HOME") ?? "/tmp" },
  };
  const [uid, gid, info] = await Promise.all([
    output("id", ["-u", "nobody"]),
    output("id", ["-g", "nobody"]),
    output(Deno.execPath(), ["info", "--json"]),
  ]);
  if (Deno.uid() !== 0 || !uid || !gid || !info || !await output("setpriv", ["--version"])) {
    return asIs;
  }
  // nobody cannot read root's DENO_DIR: give it a copy of the npm packages main.ts imports.
  const denoDir = await Deno.makeTempDir({ prefix: "vnet-cli-deno-" });
  await Deno.chmod(denoDir, 0o755);
  const npm = JSON.parse(info).npmCache as string;
  const copied = await new Deno.Command("cp", { args: ["-r", npm, `${denoDir}/npm`] }).output();
  await new Deno.Command("chmod", { args: ["-R", "a+rX", denoDir] }).output();
  const nobody: Runner = {
    prefix: [
      "setpriv",
      `--reuid=${uid}`,
      `--regid=${gid}`,
      "--clear-groups",
      "--inh-caps=-all",
      Deno.execPath(),
      "run",
      "-A",
      "--cached-only",
      MAIN,
    ],
    env: { ...base, HOME: denoDir, DENO_DIR: denoDir },
    owner: { uid: Number(uid), gid: Number(gid) },
    denoDir,
  };
  const probe = copied.success && await run(nobody, ["--version"]);
  if (probe && probe.code === 0) return nobody;
  console.error(`cli_test: cannot run as nobody (${probe ? probe.stderr : "no npm cache"}), as is`);
  await Deno.remove(denoDir, { recursive: true });
  return asIs;
}

interface Result {
  code: number;
  stdout: string;
  stderr: string;
}

/** Runs the program with `args`; no $VNET_SECRET unless given; killed after 30 s. */
async function run(
  runner: Runner,
  args: string[],
  opts: { env?: Record<string, string>; cwd?: string } = {},
): Promise<Result> {
  const child = new Deno.Command(runner.prefix[0], {
    args: [...runner.prefix.slice(1), ...args],
    env: { ...runner.env, ...opts.env },
    clearEnv: true,
    cwd: opts.cwd ?? "/",
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const timer = setTimeout(() => child.kill("SIGKILL"), 30_000);
  const r = await child.output();
  clearTimeout(timer);
  const text = new TextDecoder();
  return { code: r.code, stdout: text.decode(r.stdout), stderr: text.decode(r.stderr) };
}

const runner = await makeRunner();
const vnet = (args: string[], opts?: { env?: Record<string, string>; cwd?: string }) =>
  run(runner, args, opts);

/** A temp dir the commands' user owns; `file` writes into it as that user would. */
async function withDir(fn: (dir: string) => Promise<void>): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "vnet-cli-test-" });
  try {
    await own(dir);
    await fn(dir);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

async function own(path: string): Promise<void> {
  if (runner.owner) await Deno.chown(path, runner.owner.uid, runner.owner.gid);
}

async function file(path: string, data: string | Uint8Array, mode = 0o600): Promise<string> {
  await Deno.writeFile(path, typeof data === "string" ? new TextEncoder().encode(data) : data);
  await Deno.chmod(path, mode);
  await own(path);
  return path;
}

/** A user error: exit 1, nothing on stdout, one line `vnet: ...` on stderr matching `re`. */
function assertUserError(r: Result, re: RegExp, what: string): void {
  const detail = `${what}: exit ${r.code}\nstdout: ${r.stdout}\nstderr: ${r.stderr}`;
  assertEquals(r.code, 1, detail);
  assertEquals(r.stdout, "", detail);
  const lines = r.stderr.trimEnd().split("\n");
  assertEquals(lines.length, 1, detail);
  assertMatch(lines[0], /^vnet: /, detail);
  assertMatch(lines[0], re, detail);
}

function decodedLength(base64: string): number {
  return atob(base64.trim()).length;
}

Deno.test({
  name: "cli: runs without root (as nobody when started as root)",
  ignore: Deno.uid() !== 0,
  fn: () => {
    assert(runner.owner, "started as root but could not run the commands as nobody");
  },
});

Deno.test("cli: top-level help names every command and subcommand; version", async () => {
  const all = await Promise.all([[], ["--help"], ["-h"], ["help"]].map((a) => vnet(a)));
  for (const r of all) {
    assertEquals(r.code, 0, r.stderr);
    assertEquals(r.stdout, all[1].stdout);
    assertEquals(r.stderr, "");
  }
  const help = all[1].stdout;
  assertMatch(help, /^vnet \d+\.\d+\.\d+: /);
  for (
    const word of [
      "server",
      "--check-config",
      "client",
      "create",
      "list",
      "watch",
      "close",
      "migrate",
      "devices",
      "cert ca|issue",
      "secret",
      "doctor",
      "--version",
    ]
  ) {
    assert(help.includes(word), `help lacks '${word}':\n${help}`);
  }
  for (const a of [["--version"], ["-V"], ["version"]]) {
    const v = await vnet(a);
    assertEquals(v.code, 0, v.stderr);
    assertMatch(v.stdout.trim(), /^vnet \d+\.\d+\.\d+ \(\S+\) deno \d+\.\d+\.\d+$/);
  }
});

Deno.test("cli: every command's --help prints its usage on stdout and exits 0", async () => {
  const cases: [string[], RegExp][] = [
    [["server", "--help"], /--max-handshakes-per-address N/],
    [["server", "-h"], /--check-config/],
    [["client", "--help"], /--proxy-dev DEV/],
    [["client", "create", "--help"], /--proxy-dev DEV/],
    [["client", "list", "--help"], /--rate-window/],
    [["client", "watch", "--help"], /--interval/],
    [["client", "close", "--help"], /close/],
    [["client", "devices", "--help"], /devices/],
    [["client", "migrate", "--help"], /migrate/],
    [["cert", "--help"], /^Usage: vnet cert <command>/],
    [["cert", "ca", "--help"], /^Usage: vnet cert ca --out DIR/],
    [["cert", "issue", "--help"], /^Usage: vnet cert issue --ca DIR/],
    [["secret", "--help"], /vnet secret --out FILE \[--force\]/],
    [["doctor", "--help"], /doctor/],
  ];
  const results = await Promise.all(cases.map(([a]) => vnet(a)));
  results.forEach((r, i) => {
    const what = cases[i][0].join(" ");
    assertEquals(r.code, 0, `${what}: ${r.stderr}`);
    assertEquals(r.stderr, "", what);
    assertMatch(r.stdout, cases[i][1], what);
  });
  // The server's Options section is made from its flag table: every flag once, new ones too.
  const server = results[0].stdout;
  for (
    const flag of [
      "--allow-live-mac",
      "--no-direct",
      "--max-handshakes N",
      "--max-connections N",
      "--metrics-token-file FILE",
    ]
  ) {
    assertEquals(server.split(`\n  ${flag}`).length, 2, `${flag} once in server --help`);
  }
});

Deno.test("cli: unknown commands and flags are one line, exit 1", async () => {
  const cases: [string[], RegExp][] = [
    [["frob"], /^vnet: unknown command 'frob' \(server, client, .*; see 'vnet --help'\)$/],
    [["server", "--frob"], /^vnet: Unknown option '--frob' \(see 'vnet server --help'\)$/],
    [["client", "list", "--frob"], /'--frob' \(see 'vnet client list --help'\)$/],
    [["secret", "--frob"], /'--frob' \(see 'vnet secret --help'\)$/],
    [["cert", "ca", "--frob"], /^vnet: unknown option '--frob' for 'vnet cert ca'/],
    [["cert", "frob"], /^vnet: unknown cert command 'frob' \(ca, issue; see 'vnet cert --help'\)$/],
    [["server", "extra"], /^vnet: unexpected argument 'extra' \(see 'vnet server --help'\)$/],
    [["server", "--listen"], /--listen.*argument missing/],
  ];
  const results = await Promise.all(cases.map(([a]) => vnet(a)));
  results.forEach((r, i) => assertUserError(r, cases[i][1], cases[i][0].join(" ")));
});

Deno.test("cli: bad values are refused before anything starts", async () => {
  const cases: [string[], RegExp][] = [
    [["server", "--listen", "nowhere"], /bad address 'nowhere' for --listen/],
    [["server"], /missing --listen/],
    [["server", "--listen", "127.0.0.1:7000", "--keepalive", "0"], /bad --keepalive '0'/],
    [
      ["server", "--listen", "127.0.0.1:7000", "--max-handshakes", "0"],
      /^vnet: bad --max-handshakes '0': a whole number from 1 to 65536/,
    ],
    [
      ["server", "--listen", "127.0.0.1:7000", "--max-handshakes-per-address", "100"],
      /bad --max-handshakes-per-address '100': at most --max-handshakes \(64\)/,
    ],
    [["server", "--listen", "127.0.0.1:7000", "--log-level", "loud"], /bad --log-level 'loud'/],
    [["client", "list", "--server", "127.0.0.1:7000", "--timeout", "0"], /bad --timeout '0'/],
  ];
  const results = await Promise.all(cases.map(([a]) => vnet(a)));
  results.forEach((r, i) => assertUserError(r, cases[i][1], cases[i][0].join(" ")));
});

Deno.test("cli: client create without --mac names what is missing", async () => {
  const args = [
    "client",
    "--proxy",
    "127.0.0.1:7000",
    "--proxy-dev",
    "eth0",
    "--host",
    "127.0.0.1:7001",
    "--host-dev",
    "vnet0",
  ];
  assertUserError(await vnet(args), /^vnet: missing --mac: give the MAC address of at least/, "");
  assertUserError(
    await vnet(["client", "--proxy", "127.0.0.1:7000"]),
    /^vnet: missing --host \(see 'vnet client --help'\)$/,
    "no --host",
  );
});

Deno.test("cli: vnet secret prints 32 random bytes in base64; --out writes a 0600 file", async () => {
  const [a, b] = await Promise.all([vnet(["secret"]), vnet(["secret"])]);
  for (const r of [a, b]) {
    assertEquals(r.code, 0, r.stderr);
    assertMatch(r.stdout, /^[A-Za-z0-9+/]{43}=\n$/);
    assertEquals(decodedLength(r.stdout), 32);
  }
  assert(a.stdout !== b.stdout, "two secrets are the same");

  await withDir(async (dir) => {
    const path = `${dir}/vnet.secret`;
    const made = await vnet(["secret", "--out", path]);
    assertEquals(made.code, 0, made.stderr);
    assertEquals(made.stdout, "");
    assertEquals(made.stderr, `wrote ${path}\n`);
    assertEquals((await Deno.stat(path)).mode! & 0o777, 0o600);
    const first = await Deno.readTextFile(path);
    assertEquals(decodedLength(first), 32);

    assertUserError(await vnet(["secret", "--out", path]), /already exists.*--force/, "again");
    assertEquals(await Deno.readTextFile(path), first, "a refused --out must not write");
    const forced = await vnet(["secret", "--out", path, "--force"]);
    assertEquals(forced.code, 0, forced.stderr);
    assert(await Deno.readTextFile(path) !== first, "--force writes a new secret");
    assertEquals((await Deno.stat(path)).mode! & 0o777, 0o600);

    // What it makes is what a server accepts.
    const ok = await vnet([
      "server",
      "--check-config",
      "--listen",
      "[::1]:7000",
      "--secret-file",
      path,
    ]);
    assertEquals(ok.code, 0, ok.stderr);
    assertEquals(ok.stdout, "config ok\n");
  });
});

Deno.test("cli: short and patterned secrets are refused with the command that makes one", async () => {
  const hint = /make a good one with 'vnet secret --out FILE'$/;
  await withDir(async (dir) => {
    const check = (secret: string) =>
      vnet(["server", "--check-config", "--listen", "127.0.0.1:7000", "--secret-file", secret]);
    // 16 bytes as 32 hex characters: what an old test wrote.
    const short = await file(`${dir}/short`, "0123456789abcdef0123456789abcdef\n");
    const r1 = await check(short);
    assertUserError(
      r1,
      /too short: 16 bytes of key material \(read as hex\), need at least 32/,
      "",
    );
    assertMatch(r1.stderr.trim(), hint);
    const weak = await file(`${dir}/weak`, "password!".repeat(6));
    const r2 = await check(weak);
    assertUserError(
      r2,
      /text of words, which a dictionary guesses; use `vnet secret`/,
      "password!...",
    );
    assertMatch(r2.stderr.trim(), hint);
    // The lab's secret: 32 random bytes as 64 hex characters.
    const random = crypto.getRandomValues(new Uint8Array(32));
    const hex = Array.from(random, (b) => b.toString(16).padStart(2, "0")).join("");
    const lab = await file(`${dir}/lab`, hex + "\n");
    assertEquals((await check(lab)).code, 0);
  });
  // $VNET_SECRET follows the same rules; the client refuses before it connects anywhere.
  const env = await vnet(["client", "list", "--server", "127.0.0.1:9"], {
    env: { VNET_SECRET: "passwordpassword" },
  });
  assertUserError(env, /the shared secret \(\$VNET_SECRET\) is too short/, "VNET_SECRET");
  assertMatch(env.stderr.trim(), hint);
});

Deno.test("cli: server --check-config: ok, or every problem and exit 1", async () => {
  await withDir(async (dir) => {
    const secret = await file(`${dir}/vnet.secret`, (await vnet(["secret"])).stdout);
    const token = await file(`${dir}/metrics.token`, (await vnet(["secret"])).stdout);
    const config = await file(
      `${dir}/vnet.json`,
      JSON.stringify({
        listen: "127.0.0.1:7000",
        "secret-file": "vnet.secret",
        state: "state.json",
        metrics: "127.0.0.1:9477",
        "metrics-token-file": "metrics.token",
        "max-handshakes": 16,
      }),
      0o644,
    );
    const ok = await vnet(["server", "--check-config", "--config", config]);
    assertEquals(ok.code, 0, ok.stderr);
    assertEquals(ok.stdout, "config ok\n");

    await Deno.chmod(token, 0o644);
    await Deno.chmod(secret, 0o644);
    const bad = await vnet([
      "server",
      "--check-config",
      "--config",
      config,
      "--injector",
      "dpdk",
      "--max-connections",
      "0",
    ]);
    assertEquals(bad.code, 1, bad.stderr);
    assertEquals(bad.stdout, "");
    const lines = bad.stderr.trimEnd().split("\n");
    for (
      const re of [
        /^vnet: bad --injector 'dpdk'/,
        /^vnet: bad --max-connections '0'/,
        /^vnet: permissions 0644 for secret file .* too open/,
        /^vnet: permissions 0644 for metrics token file .* too open/,
      ]
    ) {
      assert(lines.some((l) => re.test(l)), `no line matches ${re}:\n${bad.stderr}`);
    }
    assertEquals(lines.length, 4, bad.stderr);
    assertUserError(
      await vnet(["server", "--check-config", "--config", `${dir}/none.json`]),
      /cannot read config .*none\.json/,
      "missing config",
    );
  });
});

Deno.test({
  name: "cli: a server that cannot capture or inject says so at start, naming the vnet binary",
  ignore: !runner.owner,
  fn: async () => {
    await withDir(async (dir) => {
      const secret = await file(`${dir}/vnet.secret`, (await vnet(["secret"])).stdout);
      const r = await vnet(["server", "--listen", "127.0.0.1:7999", "--secret-file", secret]);
      assertUserError(
        r,
        /^vnet: cannot capture or inject frames: uid \d+ lacks CAP_NET_RAW and CAP_NET_ADMIN; run as root, or .*setcap cap_net_raw,cap_net_admin\+ep \S*vnet$/,
        "unprivileged server",
      );
      assert(!/deno"?\)?$|command -v deno/.test(r.stderr), r.stderr);
    });
  },
});

Deno.test({
  name: "cli: from source, an unreadable Deno cache is one line saying what to do",
  ignore: !runner.owner,
  fn: async () => {
    // root's cache, as `sudo -u nobody` (which keeps HOME) would use it; --cached-only (the
    // runner's) keeps Deno from downloading.
    const r = await vnet(["doctor"], { env: { DENO_DIR: "/root/.cache/deno", HOME: "/root" } });
    assertEquals(r.code, 1, r.stderr);
    const lines = r.stderr.trimEnd().split("\n");
    assertMatch(
      lines[lines.length - 1],
      /^vnet: cannot load the npm packages of 'vnet doctor' from Deno's cache \/root\/\.cache\/deno as uid \d+: point DENO_DIR at a directory this user can write/,
    );
    assert(!r.stderr.includes("Stack backtrace") && !r.stderr.includes("    at "), r.stderr);
    // What needs no npm package still runs.
    assertEquals((await vnet(["--version"], { env: { DENO_DIR: "/root/.cache/deno" } })).code, 0);
  },
});

Deno.test("cli: a mistyped subcommand or flag gets a 'did you mean'", async () => {
  const cases: [string[], RegExp][] = [
    [
      ["client", "lst", "--server", "x:1"],
      /^vnet: unknown client command 'lst'; did you mean 'list'\? \(create, list, watch, close, devices, migrate, vxlan; see 'vnet client --help'\)$/,
    ],
    [
      ["client", "list", "--secret-fil", "x"],
      /^vnet: Unknown option '--secret-fil'; did you mean --secret-file\? \(see 'vnet client list --help'\)$/,
    ],
    [["client", "--prxy", "x:1"], /did you mean --proxy\?/],
    [["server", "--listn", "x:1"], /did you mean --listen\?/],
    [["doctor", "--peeer", "x:1"], /did you mean --peer\?/],
    [["cert", "issue", "--sna", "x"], /did you mean --san\?/],
    [["clint"], /^vnet: unknown command 'clint'; did you mean 'client'\?/],
    [["cert", "isue"], /did you mean 'issue'\?/],
  ];
  const results = await Promise.all(cases.map(([a]) => vnet(a)));
  results.forEach((r, i) => assertUserError(r, cases[i][1], cases[i][0].join(" ")));
  // Nothing close: no guess.
  assertUserError(await vnet(["client", "list", "--frobnicate"]), /'--frobnicate' \(see/, "far");
});

Deno.test("cli: a client subcommand's --help shows that subcommand only", async () => {
  const list = await vnet(["client", "list", "--help"]);
  assertEquals(list.code, 0, list.stderr);
  assertMatch(list.stdout, /^vnet client list: /);
  for (const other of ["--proxy-dev", "--interval", "Options for create", "migrate"]) {
    assert(!list.stdout.includes(other), `client list --help shows ${other}:\n${list.stdout}`);
  }
  assertMatch(list.stdout, /--wide/);
  assertMatch(list.stdout, /--timeout SECONDS/);
  const devices = await vnet(["client", "devices", "--help"]);
  assertMatch(devices.stdout, /--all/);
  assert(!devices.stdout.includes("--rate-window"), devices.stdout);
  // The whole client's help still has every subcommand's options.
  const all = await vnet(["client", "--help"]);
  for (const flag of ["--proxy-dev", "--rate-window", "--interval", "--all", "--wide"]) {
    assert(all.stdout.includes(flag), `client --help lacks ${flag}`);
  }
});

Deno.test("cli: a name that does not resolve is 'cannot resolve NAME', with no NAT advice", async () => {
  await withDir(async (dir) => {
    const secret = await file(`${dir}/vnet.secret`, (await vnet(["secret"])).stdout);
    for (const args of [["list", "--server"], ["devices", "--server"]]) {
      const r = await vnet([
        "client",
        ...args,
        "no-such-host.invalid:7000",
        "--secret-file",
        secret,
      ]);
      assertUserError(r, /^vnet: cannot resolve no-such-host\.invalid: /, args.join(" "));
      assert(!/NAT|--via|--ssh/.test(r.stderr), r.stderr);
    }
  });
});

Deno.test("cli: a missing relative file is named by the absolute path that was tried", async () => {
  await withDir(async (dir) => {
    const client = await vnet(
      ["client", "list", "--server", "127.0.0.1:1", "--secret-file", "nope.secret"],
      { cwd: dir },
    );
    assertUserError(client, new RegExp(`${dir}/nope\\.secret`), "client --secret-file");
    const check = await vnet(
      ["server", "--check-config", "--listen", "127.0.0.1:7000", "--secret-file", "nope.secret"],
      { cwd: dir },
    );
    assertUserError(check, new RegExp(`${dir}/nope\\.secret`), "server --secret-file");
  });
});

Deno.test("cli: the shipped example config passes --check-config outside systemd", async () => {
  const example = new URL("../../packaging/vnet.example.json", import.meta.url).pathname;
  const r = await vnet(["server", "--check-config", "--config", example]);
  assertEquals(r.code, 0, r.stderr);
  assertEquals(r.stdout, "config ok\n");
  // It says what to create for what only the unit provides.
  assertMatch(
    r.stderr,
    /^vnet: note: secret-file '\/run\/credentials\/vnet\.service\/vnet\.secret' is a systemd credential.*vnet secret --out \/etc\/vnet\/vnet\.secret$/m,
  );
  // Inside the unit, the credential is checked as any file: there, a missing one fails.
  await withDir(async (dir) => {
    const inside = await vnet(["server", "--check-config", "--config", example], {
      env: { CREDENTIALS_DIRECTORY: dir, STATE_DIRECTORY: dir },
    });
    assertEquals(inside.code, 1, inside.stderr);
    assertMatch(inside.stderr, /vnet\.secret/);
  });
});

Deno.test("cli: server help names Prometheus' credentials_file", async () => {
  const r = await vnet(["server", "--help"]);
  assertMatch(r.stdout, /credentials_file/);
  assert(!r.stdout.includes("bearer_token_file"), r.stdout);
});

Deno.test("cli: shell completion for bash and zsh, from the flag tables", async () => {
  const bash = await vnet(["completion", "bash"]);
  assertEquals(bash.code, 0, bash.stderr);
  const zsh = await vnet(["completion", "zsh"]);
  assertEquals(zsh.code, 0, zsh.stderr);
  assertMatch(zsh.stdout, /^#compdef vnet/);
  for (
    const word of [
      "--max-handshakes-per-address",
      "--metrics-token-file",
      "--rate-window",
      "--wide",
      "--all",
      "--peer-dev",
      "--san",
      "migrate",
    ]
  ) {
    assert(bash.stdout.includes(word), `bash completion lacks ${word}`);
    assert(zsh.stdout.includes(word), `zsh completion lacks ${word}`);
  }
  // The script is valid bash, and completes as it should.
  const script = `${bash.stdout}
COMP_WORDS=(vnet client list --rate); COMP_CWORD=3; _vnet; echo "\${COMPREPLY[*]}"
COMP_WORDS=(vnet client de); COMP_CWORD=2; _vnet; echo "\${COMPREPLY[*]}"`;
  const out = await new Deno.Command("bash", { args: ["-c", script], stdout: "piped" }).output();
  assertEquals(new TextDecoder().decode(out.stdout), "--rate-window\ndevices\n");
  // The zsh script loads, and offers the right words: compadd (zsh's, which then keeps those
  // that match what was typed) is stood in for by one that prints what it was given.
  const zshScript = `compdef() { :; }
compadd() { print -r -- "\${(j: :)\${(P)2}}"; }
${zsh.stdout}
words=(vnet client list --rate); CURRENT=4; _vnet
words=(vnet client de); CURRENT=3; _vnet`;
  const z = await new Deno.Command("zsh", { args: ["-fc", zshScript], stdout: "piped" }).output();
  const [listWords, clientWords] = new TextDecoder().decode(z.stdout).split("\n");
  assert(z.success && listWords.split(" ").includes("--rate-window"), `zsh: ${listWords}`);
  assert(clientWords?.split(" ").includes("devices"), `zsh: ${clientWords}`);
  assertUserError(
    await vnet(["completion", "fish"]),
    /no completion for 'fish': bash or zsh/,
    "fish",
  );
});

globalThis.addEventListener("unload", () => {
  if (runner.denoDir) Deno.removeSync(runner.denoDir, { recursive: true });
});

Deno.test("deno task vnet runs with the V8 flags the binary is compiled with", async () => {
  const { V8_FLAGS } = await import("../../scripts/compile.ts");
  const config = JSON.parse(
    await Deno.readTextFile(new URL("../../deno.json", import.meta.url)),
  );
  assert(
    String(config.tasks.vnet).includes(`--v8-flags=${V8_FLAGS}`),
    `deno.json's vnet task lacks --v8-flags=${V8_FLAGS}: ${config.tasks.vnet}`,
  );
});

Deno.test("deno task vnet works outside the checkout: paths are the caller's", async () => {
  const dir = await Deno.makeTempDir({ prefix: "vnet-task-" });
  try {
    const config = new URL("../../deno.json", import.meta.url).pathname;
    const out = await new Deno.Command(Deno.execPath(), {
      args: ["task", "-q", "--config", config, "vnet", "secret", "--out", "made.secret"],
      cwd: dir,
      env: { NO_COLOR: "1" },
      stdout: "piped",
      stderr: "piped",
    }).output();
    const stderr = new TextDecoder().decode(out.stderr);
    assertEquals(out.code, 0, stderr);
    assert((await Deno.stat(`${dir}/made.secret`)).isFile, "the secret is where it was asked for");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
