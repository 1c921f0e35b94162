/**
 * Issue 19, item 3: nothing a peer sends reaches a terminal raw. A fake server
 * (tests/e2e/fixtures/hostile_server.ts, on 127.0.0.1) answers the handshake with an ERROR
 * message, or, holding the secret, answers every request, with screen clears, a window title
 * (OSC ... BEL), a green fake PASS line and a C1 CSI. The real `vnet doctor --peer`, `client
 * list`, `client create` and `client devices` must print it all with its control characters
 * escaped: no ESC (0x1b), BEL (0x07) or CSI (0x9b) byte in their output. And --timeout bounds
 * the whole exchange: a peer that accepts and says nothing is given up on in --timeout.
 */
import { assert, assertEquals, assertMatch } from "./assert.ts";

const ROOT = new URL("../../", import.meta.url).pathname;
const MAIN = `${ROOT}main.ts`;
const FIXTURE = `${ROOT}tests/e2e/fixtures/hostile_server.ts`;
const SECRET = "qZ3u0yKc9nJ1wq8mXo4Hk2Tt7Va5Rb6LpE0sDf1Gh2U="; // 32 random bytes, base64

interface Run {
  code: number;
  out: Uint8Array;
  text: string;
  ms: number;
}

/** Starts the fake server in `mode`; resolves with its port and a stop function. */
async function fakeServer(mode: string, secretFile?: string) {
  const child = new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", FIXTURE, mode, ...(secretFile ? [secretFile] : [])],
    stdout: "piped",
    stderr: "inherit",
    stdin: "null",
  }).spawn();
  const reader = child.stdout.pipeThrough(new TextDecoderStream()).getReader();
  let text = "";
  while (!text.includes("\n")) {
    const { value, done } = await reader.read();
    if (done) throw new Error(`fake server (${mode}) exited before listening`);
    text += value;
  }
  reader.releaseLock();
  return {
    port: Number(text.trim()),
    async stop() {
      child.kill("SIGTERM");
      await child.stdout.cancel().catch(() => {});
      await child.status;
    },
  };
}

/** Runs vnet with `args`: its exit code, stdout and stderr together, and how long it took. */
async function vnet(args: string[], env: Record<string, string> = {}): Promise<Run> {
  const t0 = performance.now();
  const r = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", MAIN, ...args],
    env: { NO_COLOR: "1", ...env },
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).output();
  const out = new Uint8Array([...r.stdout, ...r.stderr]);
  return { code: r.code, out, text: new TextDecoder().decode(out), ms: performance.now() - t0 };
}

/** No byte a terminal acts on: ESC, BEL, or a C1 control (CSI 0x9b, as UTF-8 c2 9b). */
function assertNoControls(r: Run, what: string): void {
  const count = (b: number) => r.out.filter((x) => x === b).length;
  const detail = `${what}: exit ${r.code}\n${r.text}`;
  assertEquals(count(0x1b), 0, `ESC in ${detail}`);
  assertEquals(count(0x07), 0, `BEL in ${detail}`);
  assert(!r.text.includes("\u009b"), `C1 CSI in ${detail}`);
  // The text is there, escaped: what the server said is still shown.
  assertMatch(r.text, /\\x1b\[2J/, detail);
}

async function withSecret(fn: (file: string) => Promise<void>): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "vnet-hostile-" });
  const file = `${dir}/vnet.secret`;
  await Deno.writeTextFile(file, SECRET + "\n", { mode: 0o600 });
  await Deno.chmod(file, 0o600);
  try {
    await fn(file);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

const CREATE = (port: number, mac: string) => [
  "client",
  "create",
  "--proxy",
  `127.0.0.1:${port}`,
  "--proxy-dev",
  "eth0",
  "--host",
  "127.0.0.1:1",
  "--host-dev",
  "eth0",
  "--mac",
  mac,
  "--timeout",
  "5",
];

Deno.test("hostile text: an ERROR in the handshake is printed escaped", async () => {
  await withSecret(async (secret) => {
    const server = await fakeServer("error");
    try {
      const at = `127.0.0.1:${server.port}`;
      const env = {};
      const doctor = await vnet(["doctor", "--peer", at, "--secret-file", secret], env);
      assertNoControls(doctor, "doctor --peer");
      const list = await vnet(["client", "list", "--server", at, "--secret-file", secret], env);
      assertEquals(list.code, 1, list.text);
      assertNoControls(list, "client list");
      const create = await vnet([
        ...CREATE(server.port, "02:00:00:00:00:01"),
        "--secret-file",
        secret,
      ]);
      assertEquals(create.code, 1, create.text);
      assertNoControls(create, "client create");
    } finally {
      await server.stop();
    }
  });
});

Deno.test("hostile text: a secret holder's answers are printed escaped", async () => {
  await withSecret(async (secret) => {
    const server = await fakeServer("secret", secret);
    try {
      const at = `127.0.0.1:${server.port}`;
      const common = ["--server", at, "--secret-file", secret];
      const doctor = await vnet(["doctor", "--peer", at, "--secret-file", secret]);
      assertNoControls(doctor, "doctor --peer (hostile version)");
      assertMatch(doctor.text, /runs vnet 9\.9\\x1b/);
      for (const wide of [[], ["--wide"]]) {
        const list = await vnet(["client", "list", ...common, "--rate-window", "0", ...wide]);
        assertEquals(list.code, 0, list.text);
        assertNoControls(list, `client list ${wide.join(" ")}`);
      }
      const json = await vnet(["client", "list", ...common, "--json"]);
      assertEquals(json.code, 0, json.text);
      assert(!json.out.includes(0x1b) && !json.text.includes("\u009b"), json.text);
      assertEquals(JSON.parse(json.text)[0].device.includes("\x1b"), true);
      const devices = await vnet(["client", "devices", ...common]);
      assertNoControls(devices, "client devices");
      const refused = await vnet([
        ...CREATE(server.port, "02:00:00:00:00:01"),
        "--secret-file",
        secret,
      ]);
      assertEquals(refused.code, 1, refused.text);
      assertNoControls(refused, "client create (refused)");
      const accepted = await vnet([
        ...CREATE(server.port, "02:00:00:00:00:02"),
        "--secret-file",
        secret,
      ]);
      assertEquals(accepted.code, 0, accepted.text);
      assertNoControls(accepted, "client create (hostile id and warning)");
    } finally {
      await server.stop();
    }
  });
});

Deno.test("--timeout bounds the whole exchange, handshake included", async () => {
  await withSecret(async (secret) => {
    const server = await fakeServer("silent");
    try {
      const at = `127.0.0.1:${server.port}`;
      const doctor = await vnet([
        "doctor",
        "--peer",
        at,
        "--secret-file",
        secret,
        "--timeout",
        "3",
      ]);
      assert(doctor.ms < 5_500, `doctor took ${doctor.ms.toFixed(0)} ms with --timeout 3`);
      assertMatch(doctor.text, /FAIL\s+peer handshake/, doctor.text);
      const list = await vnet([
        "client",
        "list",
        "--server",
        at,
        "--secret-file",
        secret,
        "--timeout",
        "3",
      ]);
      assert(list.ms < 5_500, `client list took ${list.ms.toFixed(0)} ms with --timeout 3`);
      assertEquals(list.code, 1, list.text);
      assertMatch(list.text, /no answer within 3 s/, list.text);
    } finally {
      await server.stop();
    }
  });
});
