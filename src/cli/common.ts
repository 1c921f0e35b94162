/** What every subcommand shares: flag parsing, the one exit path for user errors, loading keys. */
import { parseArgs, type ParseArgsConfig } from "node:util";
import { VnetError } from "../errors.ts";
import { loadSecret } from "../link/secret.ts";
import { importSecret } from "../link/auth.ts";
import { configureLog, isLevel } from "../ops/log.ts";

/** Prints `vnet: <message>` on stderr and exits 1. The only way a command fails on bad input. */
export function error(message: string): never {
  console.error(`vnet: ${message}`);
  Deno.exit(1);
}

export type Options = NonNullable<ParseArgsConfig["options"]>;

/** Flags every command takes. */
export const commonOptions = {
  help: { type: "boolean", short: "h" },
  "log-level": { type: "string" },
  "log-json": { type: "boolean" },
} as const satisfies Options;

/**
 * Parses `args` strictly (unknown flags are errors). Prints `help` and exits 0 on --help;
 * turns parser errors into one line that points at the help.
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
    error(`${first} (see 'vnet ${command} --help')`);
  }
  const values = parsed.values as Record<string, unknown>;
  if (values.help) {
    console.log(help.trim());
    Deno.exit(0);
  }
  const level = values["log-level"] as string | undefined;
  if (level !== undefined && !isLevel(level)) {
    error(`bad --log-level '${level}': debug, info, warn or error`);
  }
  configureLog({ level: level as "info" | undefined, json: values["log-json"] === true });
  return parsed;
}

export function required(values: Record<string, unknown>, flag: string, command: string): string {
  const v = values[flag];
  if (typeof v !== "string" || v === "") {
    error(`missing --${flag} (see 'vnet ${command} --help')`);
  }
  return v;
}

/** The shared secret as an HMAC key, from --secret-file or $VNET_SECRET. */
export function secretKey(file: string | undefined): Promise<CryptoKey> {
  return importSecret(loadSecret(file));
}

export function readTextFile(path: string, what: string): string {
  try {
    return Deno.readTextFileSync(path);
  } catch (e) {
    throw new VnetError(`cannot read ${what} '${path}': ${(e as Error).message}`, { cause: e });
  }
}
