/**
 * What every subcommand shares: flag parsing, loading keys. Commands never exit: a user error
 * is a thrown VnetError (main.ts prints `vnet: <message>` and exits 1), anything else resolves
 * with the exit status, and main.ts is the only caller of Deno.exit.
 */
import { parseArgs, type ParseArgsConfig } from "node:util";
import { ErrorCode, VnetError } from "../errors.ts";
import { loadSecret } from "../link/secret.ts";
import { importSecret } from "../link/auth.ts";
import { configureLog, isLevel } from "../log.ts";

export type Options = NonNullable<ParseArgsConfig["options"]>;

/** Flags every command takes. */
const commonOptions = {
  help: { type: "boolean", short: "h" },
  "log-level": { type: "string" },
  "log-json": { type: "boolean" },
} as const satisfies Options;

/**
 * Parses `args` strictly (unknown flags are errors, thrown as one line that points at the
 * help). On --help it prints `help` and returns null: the command then resolves with 0.
 */
export function parseFlags<O extends Options>(
  args: string[],
  options: O,
  help: string,
  command: string,
) {
  let parsed;
  try {
    parsed = parseArgs({
      args,
      options: { ...commonOptions, ...options },
      allowPositionals: true,
      strict: true,
    });
  } catch (e) {
    const first = (e as Error).message.split(/\.\s/)[0].replace(/\.$/, "");
    const unknown = /^Unknown option '(-{1,2}[^']*)'/.exec(first)?.[1];
    const known = Object.keys({ ...commonOptions, ...options }).map((name) => `--${name}`);
    const guess = unknown === undefined ? undefined : didYouMean(unknown.split("=")[0], known);
    const hint = guess ? `; did you mean ${guess}?` : "";
    throw new VnetError(`${first}${hint} (see 'vnet ${command} --help')`, { cause: e });
  }
  const values = parsed.values as Record<string, unknown>;
  if (values.help) {
    console.log(help.trim());
    return null;
  }
  const level = values["log-level"] as string | undefined;
  if (level !== undefined && !isLevel(level)) {
    throw new VnetError(`bad --log-level '${level}': debug, info, warn or error`);
  }
  configureLog({ level: level as "info" | undefined, json: values["log-json"] === true });
  return parsed;
}

/**
 * The candidate closest to what was typed, if it is close enough to be a slip: a prefix of it
 * (`--secret-fil`), or at most a third of its letters wrong (`lst`, `--tls-cs`).
 */
export function didYouMean(typed: string, candidates: readonly string[]): string | undefined {
  let best: string | undefined;
  let bestDistance = Infinity;
  for (const c of candidates) {
    if (typed.length >= 3 && c.startsWith(typed)) return c;
    const d = editDistance(typed, c);
    if (d < bestDistance) [best, bestDistance] = [c, d];
  }
  const bare = typed.replace(/^-+/, "");
  return bestDistance <= Math.max(1, Math.floor(bare.length / 3)) ? best : undefined;
}

/** Levenshtein distance, with a swap of two neighbours counted as one edit. */
function editDistance(a: string, b: string): number {
  const d = Array.from({ length: a.length + 1 }, (_, i) => [i, ...Array(b.length).fill(0)]);
  for (let j = 1; j <= b.length; j++) d[0][j] = j;
  for (let i = 1; i <= a.length; i++) {
    for (let j = 1; j <= b.length; j++) {
      const cost = a[i - 1] === b[j - 1] ? 0 : 1;
      d[i][j] = Math.min(d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + cost);
      if (i > 1 && j > 1 && a[i - 1] === b[j - 2] && a[i - 2] === b[j - 1]) {
        d[i][j] = Math.min(d[i][j], d[i - 2][j - 2] + 1);
      }
    }
  }
  return d[a.length][b.length];
}

/** One line for a (sub)command that does not exist, with the nearest one if it is a slip. */
export function unknownCommand(typed: string, known: readonly string[], parent?: string): never {
  const guess = didYouMean(typed, known);
  const what = parent ? `${parent} command` : "command";
  const help = parent ? `vnet ${parent} --help` : "vnet --help";
  throw new VnetError(
    `unknown ${what} '${typed}'${guess ? `; did you mean '${guess}'?` : ""} ` +
      `(${known.join(", ")}; see '${help}')`,
  );
}

export function required(values: Record<string, unknown>, flag: string, command: string): string {
  const v = values[flag];
  if (typeof v !== "string" || v === "") {
    throw new VnetError(`missing --${flag} (see 'vnet ${command} --help')`);
  }
  return v;
}

/** Refuses positional arguments where a command takes none. */
export function noPositionals(positionals: string[], command: string): void {
  if (positionals.length > 0) {
    throw new VnetError(`unexpected argument '${positionals[0]}' (see 'vnet ${command} --help')`);
  }
}

/** The shared secret as an HMAC key, from --secret-file or $VNET_SECRET. */
export function secretKey(file: string | undefined): Promise<CryptoKey> {
  return importSecret(loadSecret(file));
}

/**
 * `work`, or a Timeout VnetError once `ms` have passed: --timeout bounds a whole exchange with
 * a server (connect, TLS, handshake, requests), however long each step's own limit is. What is
 * left running is dropped when the command ends.
 */
export async function within<T>(ms: number, what: string, work: Promise<T>): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  try {
    return await Promise.race([
      work,
      new Promise<never>((_, reject) => {
        timer = setTimeout(
          () =>
            reject(
              new VnetError(`${what}: no answer within ${ms / 1000} s (--timeout)`, {
                code: ErrorCode.Timeout,
              }),
            ),
          ms,
        );
      }),
    ]);
  } finally {
    clearTimeout(timer);
  }
}

/**
 * A file flag as an absolute path, so that a message about it names the file that was tried
 * (a relative name is relative to the directory vnet runs in).
 */
export function absolutePath(path: string | undefined): string | undefined {
  if (path === undefined || path === "" || path.startsWith("/")) return path;
  return `${Deno.cwd()}/${path.replace(/^\.\//, "")}`;
}

export function readTextFile(path: string, what: string): string {
  try {
    return Deno.readTextFileSync(path);
  } catch (e) {
    throw new VnetError(`cannot read ${what} '${path}': ${(e as Error).message}`, { cause: e });
  }
}

/** What `optionsHelp` needs of a flag (SERVER_FLAGS in src/cli/config.ts is one such table). */
interface FlagHelp {
  name: string;
  short?: string;
  type: string;
  value?: string;
  default?: string | number;
  help: string;
}

const HELP_WIDTH = 96;
const HELP_INDENT = 24;

/**
 * A help's Options section from a table of flags: `--name VALUE` then the text, wrapped at
 * HELP_WIDTH with the text in a column, and "(default X)" after the first paragraph. Lines of
 * the text that start with spaces (examples) are kept as they are, in the text's column.
 */
export function optionsHelp(flags: readonly FlagHelp[]): string {
  const pad = " ".repeat(HELP_INDENT);
  const out: string[] = [];
  for (const f of flags) {
    const left = `  ${f.short ? `-${f.short}, ` : ""}--${f.name}${f.value ? ` ${f.value}` : ""}`;
    const lines: string[] = [];
    f.help.split("\n").forEach((part, i) => {
      if (part.startsWith(" ")) return lines.push(part);
      // A no-break space keeps "(default X)" on one line; it is printed as a space.
      const text = i === 0 && f.default !== undefined
        ? `${part} (default\u00a0${f.default})`
        : part;
      lines.push(...wrap(text, HELP_WIDTH - HELP_INDENT).map((l) => l.replaceAll("\u00a0", " ")));
    });
    if (left.length + 2 <= HELP_INDENT) {
      out.push(left.padEnd(HELP_INDENT) + lines[0]);
    } else {
      out.push(left, pad + lines[0]);
    }
    for (const line of lines.slice(1)) out.push(pad + line);
  }
  return out.join("\n");
}

function wrap(text: string, width: number): string[] {
  const lines: string[] = [];
  let line = "";
  for (const word of text.split(/[ \t\n]+/).filter((w) => w !== "")) {
    if (line && line.length + 1 + word.length > width) {
      lines.push(line);
      line = word;
    } else {
      line = line ? `${line} ${word}` : word;
    }
  }
  lines.push(line);
  return lines;
}
