/**
 * `vnet server --config FILE`: a JSON file holding what the server's flags hold, under the
 * same names, e.g.
 *
 *   { "listen": "0.0.0.0:7000", "secret-file": "/etc/vnet/vnet.secret", "metrics": "127.0.0.1:9477" }
 *
 * Flags given on the command line override the file. Unknown keys and wrongly typed values are
 * errors naming the key. Relative paths in the file are relative to the file's directory.
 *
 * `vnet server --check-config` runs `checkSettings`: every problem with the settings and the
 * files they name (secret, certificates, state file), one line each.
 */
import { type HostPort, parseHostPort } from "../addr.ts";
import { messageOf, VnetError } from "../errors.ts";
import { isLevel, type Level } from "./log.ts";
import { loadSecret } from "../link/secret.ts";
import { STATE_VERSION } from "../control/state.ts";
import { DEFAULT_INJECTOR, type InjectorKind, INJECTORS } from "../dataplane/interfaces.ts";

/** The keys a config file may hold (the server's flags) and the JSON type of each. */
export const CONFIG_KEYS = {
  listen: "string",
  "secret-file": "string",
  "tls-cert": "string",
  "tls-key": "string",
  "tls-ca": "string",
  injector: "string",
  keepalive: "number",
  state: "string",
  "capture-buffer": "number",
  metrics: "string",
  "log-level": "string",
  "log-json": "boolean",
} as const;

export type ConfigKey = keyof typeof CONFIG_KEYS;
/** Settings as written: strings as in flags, numbers and booleans as in JSON. */
export type Settings = Partial<Record<ConfigKey, string | number | boolean>>;

const PATH_KEYS: ConfigKey[] = ["secret-file", "tls-cert", "tls-key", "tls-ca", "state"];

export const DEFAULTS = {
  injector: DEFAULT_INJECTOR,
  keepalive: 5,
  "capture-buffer": 32,
  "log-level": "info",
  "log-json": false,
} as const;

/** Parses a config file's text. Throws a VnetError naming the file and the offending key. */
export function parseConfig(text: string, path: string): Settings {
  let data: unknown;
  try {
    data = JSON.parse(text);
  } catch (e) {
    throw new VnetError(`config '${path}' is not valid JSON: ${messageOf(e)}`, { cause: e });
  }
  if (typeof data !== "object" || data === null || Array.isArray(data)) {
    throw new VnetError(`config '${path}' must hold one JSON object of settings`);
  }
  const dir = dirOf(path);
  const settings: Settings = {};
  for (const [key, value] of Object.entries(data)) {
    if (!Object.hasOwn(CONFIG_KEYS, key)) {
      throw new VnetError(
        `config '${path}': unknown key '${key}' (known: ${Object.keys(CONFIG_KEYS).join(", ")})`,
      );
    }
    const k = key as ConfigKey;
    const type = CONFIG_KEYS[k];
    // Numbers may also be written as strings, as on the command line.
    const ok = typeof value === type ||
      (type === "number" && typeof value === "string" && value.trim() !== "");
    if (!ok) throw new VnetError(`config '${path}': '${key}' must be a ${type}`);
    settings[k] = PATH_KEYS.includes(k) && typeof value === "string" && value !== ""
      ? resolvePath(dir, value)
      : value as string | number | boolean;
  }
  return settings;
}

/** Reads and parses a config file. */
export function loadConfig(path: string): Settings {
  let text: string;
  try {
    text = Deno.readTextFileSync(path);
  } catch (e) {
    throw new VnetError(`cannot read config '${path}': ${messageOf(e)}`, { cause: e });
  }
  return parseConfig(text, path);
}

/** The file's settings with the flags that were given on top. */
export function mergeSettings(file: Settings, flags: Record<string, unknown>): Settings {
  const merged: Settings = { ...file };
  for (const key of Object.keys(CONFIG_KEYS) as ConfigKey[]) {
    const v = flags[key];
    // parseArgs leaves absent flags undefined; a boolean flag is only ever `true` when given.
    if (v !== undefined && v !== false) merged[key] = v as string | boolean;
  }
  return merged;
}

/** Settings checked and typed, defaults filled in. */
export interface ServerConfig {
  listen: HostPort;
  secretFile?: string;
  tls?: { cert: string; key: string; ca: string };
  injector: InjectorKind;
  keepaliveSeconds: number;
  state?: string;
  captureBufferMiB: number;
  metrics?: HostPort;
  logLevel: Level;
  logJson: boolean;
}

/**
 * Checks the values (not the files they name). Returns the config, or the problems, one line
 * each, in the order of CONFIG_KEYS.
 */
export function resolveSettings(s: Settings): { config?: ServerConfig; problems: string[] } {
  const problems: string[] = [];
  const str = (k: ConfigKey) => (s[k] === undefined || s[k] === "" ? undefined : String(s[k]));
  const addr = (k: ConfigKey): HostPort | undefined => {
    const v = str(k);
    if (v === undefined) return undefined;
    try {
      return parseHostPort(v, `--${k}`);
    } catch (e) {
      problems.push(messageOf(e));
      return undefined;
    }
  };

  const listen = addr("listen");
  if (str("listen") === undefined) {
    problems.push('missing --listen (or "listen" in the --config file)');
  }

  const [cert, key, ca] = [str("tls-cert"), str("tls-key"), str("tls-ca")];
  let tls: ServerConfig["tls"];
  if (cert || key || ca) {
    if (cert && key && ca) {
      tls = { cert, key, ca };
    } else {
      problems.push(
        "TLS needs all of --tls-cert, --tls-key and --tls-ca (see 'vnet cert --help' to make them)",
      );
    }
  }

  const injector = str("injector") ?? DEFAULTS.injector;
  if (!INJECTORS.includes(injector as InjectorKind)) {
    problems.push(`bad --injector '${injector}': ${INJECTORS.join(", ")}`);
  }
  const keepalive = Number(s.keepalive ?? DEFAULTS.keepalive);
  if (!(keepalive > 0) || !Number.isFinite(keepalive)) {
    problems.push(`bad --keepalive '${s.keepalive}': a number of seconds > 0`);
  }
  const captureBuffer = Number(s["capture-buffer"] ?? DEFAULTS["capture-buffer"]);
  if (!(captureBuffer >= 1 && captureBuffer <= 1024)) {
    problems.push(`bad --capture-buffer '${s["capture-buffer"]}': MiB from 1 to 1024`);
  }
  const metrics = addr("metrics");
  const level = str("log-level") ?? DEFAULTS["log-level"];
  if (!isLevel(level)) problems.push(`bad --log-level '${level}': debug, info, warn or error`);

  if (problems.length > 0) return { problems };
  return {
    problems,
    config: {
      listen: listen!,
      secretFile: str("secret-file"),
      tls,
      injector: injector as InjectorKind,
      keepaliveSeconds: keepalive,
      state: str("state"),
      captureBufferMiB: captureBuffer,
      metrics,
      logLevel: level as Level,
      logJson: s["log-json"] === true,
    },
  };
}

/**
 * Everything `--check-config` checks: the values, the secret (file exists, mode 0600, long
 * enough; or $VNET_SECRET), the TLS files (parse, key matches certificate, certificate signed
 * by the CA and valid now), and that the state file, if it exists, is a readable state file
 * (if not, that its directory exists). Returns the problems, one line each; none = ok.
 */
export async function checkSettings(s: Settings, now = new Date()): Promise<string[]> {
  const { config, problems } = resolveSettings(s);
  const secretFile = s["secret-file"] === undefined ? undefined : String(s["secret-file"]);
  try {
    loadSecret(secretFile || undefined);
  } catch (e) {
    problems.push(messageOf(e));
  }
  // The files are checked even when other values are bad: every problem at once.
  const [cert, key, ca] = (["tls-cert", "tls-key", "tls-ca"] as const).map((k) => s[k]);
  if (config?.tls || (cert && key && ca)) {
    problems.push(...await checkTls({ cert: String(cert), key: String(key), ca: String(ca) }, now));
  }
  const state = s.state === undefined || s.state === "" ? undefined : String(s.state);
  if (state) {
    const problem = checkStateFile(state);
    if (problem) problems.push(problem);
  }
  return problems;
}

async function checkTls(
  files: { cert: string; key: string; ca: string },
  now: Date,
): Promise<string[]> {
  const { checkPrivateFile, importSigningKey, parseCertificate } = await import("../link/pki.ts");
  const problems: string[] = [];
  const read = (path: string, what: string): string | undefined => {
    try {
      return Deno.readTextFileSync(path);
    } catch (e) {
      problems.push(`cannot read ${what} '${path}': ${messageOf(e)}`);
      return undefined;
    }
  };
  const parse = (pem: string | undefined, what: string, path: string) => {
    if (pem === undefined) return undefined;
    try {
      const cert = parseCertificate(pem, `${what} '${path}'`);
      if (cert.notAfter.getTime() < now.getTime()) {
        problems.push(`${what} '${path}' expired on ${cert.notAfter.toISOString()}`);
      } else if (cert.notBefore.getTime() > now.getTime()) {
        problems.push(`${what} '${path}' is not valid before ${cert.notBefore.toISOString()}`);
      }
      return cert;
    } catch (e) {
      problems.push(messageOf(e));
      return undefined;
    }
  };
  const cert = parse(read(files.cert, "TLS certificate"), "TLS certificate", files.cert);
  const ca = parse(read(files.ca, "TLS CA"), "TLS CA", files.ca);
  let keyPem: string | undefined;
  try {
    checkPrivateFile(files.key);
    keyPem = read(files.key, "TLS key");
  } catch (e) {
    problems.push(`TLS key: ${messageOf(e)}`);
  }
  if (keyPem !== undefined) {
    try {
      const key = await importSigningKey(keyPem, `TLS key '${files.key}'`);
      if (cert && !(await keyMatches(key, cert))) {
        problems.push(
          `TLS key '${files.key}' does not match the certificate '${files.cert}'`,
        );
      }
    } catch (e) {
      problems.push(messageOf(e));
    }
  }
  if (cert && ca) {
    let signed = false;
    try {
      signed = await cert.verify({ publicKey: ca, signatureOnly: true });
    } catch { /* different key type: not signed by it */ }
    if (!signed) {
      problems.push(`TLS certificate '${files.cert}' is not signed by the CA '${files.ca}'`);
    }
  }
  return problems;
}

/** Does the private key belong to the certificate? Sign with one, verify with the other. */
async function keyMatches(
  key: CryptoKey,
  cert: { publicKey: { export(alg: EcKeyImportParams, usages: KeyUsage[]): Promise<CryptoKey> } },
): Promise<boolean> {
  const alg = { name: "ECDSA", namedCurve: "P-256" } as const;
  const data = crypto.getRandomValues(new Uint8Array(32));
  try {
    const publicKey = await cert.publicKey.export(alg, ["verify"]);
    const sig = await crypto.subtle.sign({ ...alg, hash: "SHA-256" }, key, data);
    return await crypto.subtle.verify({ ...alg, hash: "SHA-256" }, publicKey, sig, data);
  } catch {
    return false;
  }
}

function checkStateFile(path: string): string | null {
  let text: string;
  try {
    text = Deno.readTextFileSync(path);
  } catch (e) {
    if (!(e instanceof Deno.errors.NotFound)) {
      return `cannot read state file '${path}': ${messageOf(e)}`;
    }
    const dir = dirOf(path);
    try {
      if (!Deno.statSync(dir).isDirectory) {
        return `state file directory '${dir}' is not a directory`;
      }
    } catch {
      return `state file directory '${dir}' does not exist`;
    }
    return null; // a missing state file is an empty one
  }
  try {
    const parsed = JSON.parse(text);
    if (parsed?.version !== STATE_VERSION || !Array.isArray(parsed.handlers)) {
      return `state file '${path}' is not a version ${STATE_VERSION} vnet state file`;
    }
  } catch {
    return `state file '${path}' is not valid JSON (the server would move it aside)`;
  }
  return null;
}

function dirOf(path: string): string {
  const i = Math.max(path.lastIndexOf("/"), path.lastIndexOf("\\"));
  return i < 0 ? "." : i === 0 ? path[0] : path.slice(0, i);
}

/** `path` as written in a config file in `dir`: absolute paths stay, others join `dir`. */
export function resolvePath(dir: string, path: string): string {
  if (/^([/\\]|[A-Za-z]:[/\\])/.test(path) || dir === ".") return path;
  return `${dir}/${path}`;
}
