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

export function isLevel(s: string): s is Level {
  return s in rank;
}

function quote(v: string): string {
  return /^[^\s"=]+$/.test(v) ? v : JSON.stringify(v);
}

function emit(level: Level, msg: string, fields: Fields): void {
  if (rank[level] < rank[config.level]) return;
  const time = new Date().toISOString();
  let line: string;
  if (config.json) {
    line = JSON.stringify({ time, level, msg, ...fields });
  } else {
    line = `${time} ${level.toUpperCase()} ${msg}`;
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
