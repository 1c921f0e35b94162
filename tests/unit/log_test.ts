/**
 * src/log.ts: every log line is safe on a terminal. A field value without whitespace but with
 * ESC once passed raw (it needed no quotes); the message and JSON lines are escaped too.
 */
import { assert, assertEquals, assertMatch } from "./assert.ts";
import { visible, visibleJson } from "../../src/log.ts";

const LOG = new URL("../../src/log.ts", import.meta.url).href;
const HOSTILE = "a\x1b[2J\x1b]0;title\x07\u009b31m\u202eb";

/** What the logger writes on stderr for one line, text or JSON. */
async function logged(json: boolean): Promise<string> {
  const code = `import { configureLog, log } from ${JSON.stringify(LOG)};
configureLog({ json: ${json} });
log.warn(${JSON.stringify(`msg ${HOSTILE}`)}, { reason: ${JSON.stringify(HOSTILE)}, plain: "x" });`;
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["eval", code],
    stdout: "null",
    stderr: "piped",
  }).output();
  return new TextDecoder().decode(out.stderr);
}

/** No character a terminal acts on, but the one newline that ends the line. */
function assertTerminalSafe(line: string): void {
  // deno-lint-ignore no-control-regex
  assert(!/[\x00-\x09\x0b-\x1f\x7f-\x9f\u202a-\u202e]/.test(line), JSON.stringify(line));
  assert(line.endsWith("\n") && line.indexOf("\n") === line.length - 1, JSON.stringify(line));
}

Deno.test("log: a field without whitespace but with escapes is quoted and escaped", async () => {
  const line = await logged(false);
  assertTerminalSafe(line);
  assertMatch(line, / WARN msg a\\x1b\[2J\\x1b\]0;title\\x07\\x9b31m\\u202eb reason="a\\x1b/);
  assertMatch(line, / plain=x\n$/);
});

Deno.test("log: JSON lines escape what JSON.stringify leaves raw, and stay JSON", async () => {
  const line = await logged(true);
  assertTerminalSafe(line);
  assertEquals(JSON.parse(line).reason, HOSTILE);
});

Deno.test("visible: controls as escapes, text as it is", () => {
  assertEquals(visible("ok été ✓"), "ok été ✓");
  assertEquals(visible("\x1b[1m\n\t\x07\x7f"), "\\x1b[1m\\n\\t\\x07\\x7f");
  assertEquals(JSON.parse(visibleJson(JSON.stringify({ s: "\u009b\u2028" }))).s, "\u009b\u2028");
});
