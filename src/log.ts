/**
 * Leveled logging: one line per event, to stderr, as text or JSON.
 *
 *   2026-11-23T22:30:00.000Z INFO handler up id=3f2a9c01 role=host dev=vmtap
 *   {"time":"…","level":"info","msg":"handler up","id":"3f2a9c01","role":"host","dev":"vmtap"}
 */

export type Level = "debug" | "info" | "warn" | "error";
const rank: Record<Level, number> = { debug: 10, info: 20, warn: 30, error: 40 };

export type Fields = Record<string, string | number | boolean | undefined | null>;

const config = { level: "info" as Level, json: false };
const encoder = new TextEncoder();

export function configureLog(options: { level?: Level; json?: boolean }): void {
  if (options.level) config.level = options.level;
  if (options.json !== undefined) config.json = options.json;
}

/** How lines are written now: another thread (the data-path worker) writes them alike. */
export function logOptions(): { level: Level; json: boolean } {
  return { ...config };
}

export function isLevel(s: string): s is Level {
  return s in rank;
}

/**
 * Characters a terminal may act on rather than show: C0 and C1 controls (ESC, BEL, CSI...),
 * DEL, line and paragraph separators, and the bidirectional overrides that reorder text.
 */
// deno-lint-ignore no-control-regex
const CONTROL = /[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]/g;

/** What JSON.stringify leaves raw in strings (it escapes C0 itself; outside strings, only
 * whitespace, which stays). */
const JSON_RAW = /[\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]/g;

function hexEscape(c: string): string {
  const code = c.charCodeAt(0);
  return code < 0x100
    ? `\\x${code.toString(16).padStart(2, "0")}`
    : `\\u${code.toString(16).padStart(4, "0")}`;
}

/**
 * `text` with every control character shown as an escape (ESC as `\x1b`, a newline as `\n`),
 * so that text from a peer cannot move the cursor, clear the screen, set the window title or
 * forge a line when printed or logged. Everything a peer sends goes through this before it
 * reaches a terminal or a log.
 */
export function visible(text: string): string {
  return text.replace(
    CONTROL,
    (c) => c === "\n" ? "\\n" : c === "\r" ? "\\r" : c === "\t" ? "\\t" : hexEscape(c),
  );
}

/**
 * JSON text with the control characters that JSON.stringify leaves raw (DEL, C1, the
 * separators and bidi overrides) as \uXXXX escapes: still the same JSON, safe on a terminal.
 */
export function visibleJson(json: string): string {
  return json.replace(JSON_RAW, (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, "0")}`);
}

/** A field's value: bare when it is plain printable text, else quoted with escapes. */
function quote(v: string): string {
  if (/^[\x21-\x7e]+$/.test(v) && !/["=\\]/.test(v)) return v;
  return `"${visible(v.replaceAll("\\", "\\\\").replaceAll('"', '\\"'))}"`;
}

function emit(level: Level, msg: string, fields: Fields): void {
  if (rank[level] < rank[config.level]) return;
  const time = new Date().toISOString();
  let line: string;
  if (config.json) {
    line = visibleJson(JSON.stringify({ time, level, msg, ...fields }));
  } else {
    line = `${time} ${level.toUpperCase()} ${visible(msg)}`;
    for (const [k, v] of Object.entries(fields)) {
      if (v !== undefined && v !== null) line += ` ${k}=${quote(String(v))}`;
    }
  }
  Deno.stderr.writeSync(encoder.encode(line + "\n"));
}

/** A logger that adds fixed fields (e.g. the handler id) to every line. */
export class Logger {
  constructor(private readonly fields: Fields = {}) {}
  with(fields: Fields): Logger {
    return new Logger({ ...this.fields, ...fields });
  }
  debug(msg: string, fields: Fields = {}): void {
    emit("debug", msg, { ...this.fields, ...fields });
  }
  info(msg: string, fields: Fields = {}): void {
    emit("info", msg, { ...this.fields, ...fields });
  }
  warn(msg: string, fields: Fields = {}): void {
    emit("warn", msg, { ...this.fields, ...fields });
  }
  error(msg: string, fields: Fields = {}): void {
    emit("error", msg, { ...this.fields, ...fields });
  }
}

export const log = new Logger();
