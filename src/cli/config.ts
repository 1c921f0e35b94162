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
 * files they name (secret, certificates, state file, metrics token), one line each.
 *
 * SERVER_FLAGS is the one definition of the server's flags: the parser (src/cli/server.ts),
 * the config keys and their types, the defaults and the help's Options section come from it.
 */
import { type HostPort, parseHostPort } from "../addr.ts";
import { messageOf, VnetError } from "../errors.ts";
import { isLevel, type Level } from "../log.ts";
import { checkKeyMaterial, checkPrivateFile, loadSecret } from "../link/secret.ts";
import { metricsHostName } from "../ops/metrics.ts";
import { STATE_VERSION } from "../control/state.ts";
import { type MacRange, parseMacRanges } from "../control/mac_policy.ts";
import { DEFAULT_INJECTOR, type InjectorKind, INJECTORS } from "../dataplane/interfaces.ts";
import { type Transport, TRANSPORTS } from "../dataplane/handler.ts";

/** One flag of `vnet server`: its parser option, its config key and its help come from here. */
interface ServerFlag {
  /** The flag without `--`; also its key in a config file. */
  readonly name: string;
  /** Numbers are given as text on the command line and as JSON numbers (or text) in a file. */
  readonly type: "string" | "number" | "boolean";
  /** What the help shows after the flag, e.g. `ADDR:PORT`; booleans take none. */
  readonly value?: string;
  /** Used when neither the flag nor the file gives one; the help shows it. */
  readonly default?: string | number;
  /**
   * The help text, wrapped to the help's width. A line that starts with spaces is an example,
   * shown as it is.
   */
  readonly help: string;
  /** A file name: relative names in a config file are relative to the file's directory. */
  readonly path?: true;
  /** Only on the command line, never in a config file (--config, --check-config, --help). */
  readonly flagOnly?: true;
  /** For numbers: which values are good, and how the problem line says so. */
  readonly range?: { readonly valid: (n: number) => boolean; readonly expect: string };
  readonly short?: string;
  /** May be given more than once on the command line; the values join with commas. */
  readonly repeatable?: true;
}

const wholeFrom = (min: number, max: number) => ({
  valid: (n: number) => Number.isInteger(n) && n >= min && n <= max,
  expect: `a whole number from ${min} to ${max}`,
});

/**
 * Every flag of `vnet server`, in the order of its help. The parser options, the config file's
 * keys and their types, the defaults and the help's Options section are all made from this.
 */
export const SERVER_FLAGS = [
  {
    name: "listen",
    type: "string",
    value: "ADDR:PORT",
    help: "where clients and peer servers connect (e.g. 0.0.0.0:7000, [::]:443)",
  },
  {
    name: "secret-file",
    type: "string",
    value: "FILE",
    path: true,
    help: "the shared secret (mode 0600); or set VNET_SECRET. Every server and client of one " +
      "deployment uses the same secret: at least 32 random bytes, as hex or base64 text or " +
      "raw. Make one with:\n  vnet secret --out vnet.secret",
  },
  {
    name: "tls-cert",
    type: "string",
    value: "FILE",
    path: true,
    help: "this server's certificate (PEM); with --tls-key and --tls-ca, all connections to " +
      "and from this server use TLS (see 'vnet cert --help')",
  },
  {
    name: "tls-key",
    type: "string",
    value: "FILE",
    path: true,
    help: "this server's private key (PEM, mode 0600)",
  },
  {
    name: "tls-ca",
    type: "string",
    value: "FILE",
    path: true,
    help: "the CA that peers' certificates are verified against",
  },
  {
    name: "injector",
    type: "string",
    value: "NAME",
    default: DEFAULT_INJECTOR,
    help: "what writes frames onto interfaces: packet, a packet socket that hands TCP " +
      "super-frames to the kernel whole, as GSO, ~4x faster (Linux only); libnet, " +
      "libnet_adv_write_link, portable; or pcap, pcap_inject",
  },
  {
    name: "transport",
    type: "string",
    value: "NAME",
    default: "auto",
    help: "how the frames of handlers created through this server cross the WAN, unless the " +
      "client says: auto, by UDP while it gets through and by the link (TCP, TLS) when it " +
      "does not; udp, the same, but a handler is refused if the servers have no UDP path; " +
      "tcp, always by the link",
  },
  {
    name: "udp-port",
    type: "number",
    value: "PORT",
    range: { valid: (n) => Number.isInteger(n) && n >= 0 && n <= 65535, expect: "a UDP port" },
    help: "UDP port of the links' UDP paths, on the --listen address (default: the --listen " +
      "port); 0 turns UDP off: every frame goes by the links",
  },
  {
    name: "vxlan-port",
    type: "number",
    value: "PORT",
    default: 4789,
    range: { valid: (n) => Number.isInteger(n) && n >= 1 && n <= 65535, expect: "a UDP port" },
    help: "UDP port of the VXLAN tunnels (`vnet client vxlan`), on the --listen address; " +
      "opened with the first tunnel",
  },
  {
    name: "keepalive",
    type: "number",
    value: "SECONDS",
    default: 5,
    range: { valid: (n) => n > 0 && Number.isFinite(n), expect: "a number of seconds > 0" },
    help: "peer link keepalive interval; 3 silent intervals drop the link",
  },
  {
    name: "state",
    type: "string",
    value: "FILE",
    path: true,
    help: "save handlers here and restore them when the server starts again",
  },
  {
    name: "capture-buffer",
    type: "number",
    value: "MIB",
    default: 22,
    range: { valid: (n) => n >= 1 && n <= 1024, expect: "MiB from 1 to 1024" },
    help: "kernel capture buffer per interface, shared by the handlers that capture there. " +
      "With offloads on, libpcap's immediate mode gives every frame a 64\u00a0KiB slot in a " +
      "128\u00a0KiB block: 22\u00a0MiB holds 352 frames in 44\u00a0MiB of memory",
  },
  {
    name: "allow-live-mac",
    type: "boolean",
    help: "open a Proxy end even for a MAC that is already live on the LAN (seen as a source " +
      "there, or in the neighbour table); it is logged at WARN either way",
  },
  {
    name: "allow-mac",
    type: "string",
    value: "RANGE",
    repeatable: true,
    help: "carry only VM MACs in these ranges: leading bytes then '*' (52:54:00:* for " +
      "QEMU's), or a whole MAC (repeat it, or give RANGE,RANGE); any other MAC is refused " +
      "at either end (default: any MAC the other checks allow)",
  },
  {
    name: "no-direct",
    type: "boolean",
    help: "no direct Host-to-Host paths: on a Proxy, VM-to-VM traffic between sites always " +
      "goes through it; on a Host, the Proxy's offers of direct paths are refused",
  },
  {
    name: "max-handshakes",
    type: "number",
    value: "N",
    default: 64,
    range: wholeFrom(1, 65536),
    help: "connections not yet authenticated, at once, from all addresses",
  },
  {
    name: "max-handshakes-per-address",
    type: "number",
    value: "N",
    default: 16,
    range: wholeFrom(1, 65536),
    help: "connections not yet authenticated, at once, from one address; at most " +
      "--max-handshakes",
  },
  {
    name: "max-connections",
    type: "number",
    value: "N",
    default: 1024,
    range: wholeFrom(1, 65536),
    help: "authenticated links (peer servers and clients) at once",
  },
  {
    name: "metrics",
    type: "string",
    value: "ADDR:PORT",
    help: "serve Prometheus metrics at http://ADDR:PORT/metrics (off by default; e.g. " +
      "127.0.0.1:9477). Per handler: frames, bytes, drops by reason, link up, " +
      "reconnects, keepalive RTT, capture drops; and process memory, uptime and build info. " +
      "The same listener serves a status page at / and its JSON at /api/status",
  },
  {
    name: "metrics-token-file",
    type: "string",
    value: "FILE",
    path: true,
    help: "a file (mode 0600) holding the token that --metrics requires of scrapers, as " +
      "'Authorization: Bearer TOKEN' (Prometheus: authorization: { credentials_file: FILE })",
  },
  {
    name: "metrics-host",
    type: "string",
    value: "NAME",
    repeatable: true,
    help: "a host name the --metrics listener answers to, besides its IP addresses and " +
      "localhost (repeat it, or give NAME,NAME); requests naming any other Host get 421 " +
      "and no data, so a web page cannot read the status through DNS rebinding",
  },
  {
    name: "log-level",
    type: "string",
    value: "LEVEL",
    default: "info",
    help: "debug, info, warn or error",
  },
  {
    name: "log-json",
    type: "boolean",
    help: "log one JSON object per line instead of text",
  },
  {
    name: "config",
    type: "string",
    value: "FILE",
    flagOnly: true,
    help: "read settings from a JSON file: the keys are the flags' names, e.g.\n" +
      '  {"listen": "0.0.0.0:7000", "secret-file": "/etc/vnet/vnet.secret",\n' +
      '   "state": "/var/lib/vnet/state.json", "log-json": true}\n' +
      "flags given too override the file; unknown keys are errors; relative paths are " +
      "relative to the file's directory",
  },
  {
    name: "check-config",
    type: "boolean",
    flagOnly: true,
    help: "check the settings and the files they name (secret: exists, mode 0600, enough key " +
      "material; TLS: certificates parse, key matches, signed by the CA, not expired; state " +
      'file readable; metrics token file private), print "config ok" or one line per ' +
      "problem, and exit (0 when ok)",
  },
  { name: "help", type: "boolean", short: "h", flagOnly: true, help: "show this help" },
] as const satisfies readonly ServerFlag[];

type ConfigFlag = Exclude<typeof SERVER_FLAGS[number], { flagOnly: true }>;
type ConfigKey = ConfigFlag["name"];
const CONFIG_FLAGS: readonly ConfigFlag[] = SERVER_FLAGS.filter((f): f is ConfigFlag =>
  !("flagOnly" in f)
);
const FLAG = new Map<string, ServerFlag>(CONFIG_FLAGS.map((f) => [f.name, f]));

/** Settings as written: strings as in flags, numbers and booleans as in JSON. */
export type Settings = Partial<Record<ConfigKey, string | number | boolean>>;

type Defaulted = Extract<ConfigFlag, { default: unknown }>;
/** The value each flag has when neither the flag nor the config file gives one. */
export const DEFAULTS = Object.fromEntries(
  CONFIG_FLAGS.flatMap((f) => "default" in f ? [[f.name, f.default]] : []),
) as { [F in Defaulted as F["name"]]: F["default"] extends number ? number : string };

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
    const flag = FLAG.get(key);
    if (!flag) {
      throw new VnetError(
        `config '${path}': unknown key '${key}' (known: ${[...FLAG.keys()].join(", ")})`,
      );
    }
    const k = key as ConfigKey;
    const type = flag.type;
    // Numbers may also be written as strings, as on the command line.
    const ok = typeof value === type ||
      (type === "number" && typeof value === "string" && value.trim() !== "");
    if (!ok) throw new VnetError(`config '${path}': '${key}' must be a ${type}`);
    settings[k] = flag.path && typeof value === "string" && value !== ""
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
  for (const { name: key } of CONFIG_FLAGS) {
    const v = flags[key];
    // parseArgs leaves absent flags undefined; a boolean flag is only ever `true` when given.
    if (v === undefined || v === false) continue;
    // A relative file name on the command line is relative to where vnet runs: made absolute
    // here, so that every message about the file names the one that was tried.
    merged[key] = FLAG.get(key)?.path && typeof v === "string" && v !== ""
      ? resolvePath(Deno.cwd(), v)
      : v as string | boolean;
  }
  return merged;
}

/** Settings checked and typed, defaults filled in. */
interface ServerConfig {
  listen: HostPort;
  secretFile?: string;
  tls?: { cert: string; key: string; ca: string };
  injector: InjectorKind;
  keepaliveSeconds: number;
  state?: string;
  captureBufferMiB: number;
  /** The UDP port of VXLAN tunnels. */
  vxlanPort: number;
  /** The UDP port of the links' UDP paths (0: off; absent: the --listen port). */
  udpPort?: number;
  /** How handlers created here cross, unless the client says. */
  transport: Transport;
  /** Open a Proxy end for a MAC already live on the LAN (else refused). */
  allowLiveMac: boolean;
  /** The only MAC ranges handlers may carry (--allow-mac); empty: any. */
  allowMacs: MacRange[];
  /** Open direct Host-to-Host links (false with --no-direct). */
  direct: boolean;
  /** Unauthenticated connections at once, in all and from one source address. */
  maxHandshakes: number;
  maxHandshakesPerAddress: number;
  /** Authenticated links at once. */
  maxConnections: number;
  metrics?: HostPort;
  /** Holds the bearer token the metrics endpoint requires; checked private by checkSettings. */
  metricsTokenFile?: string;
  /** Names the metrics listener answers to besides IP literals and localhost. */
  metricsHosts: string[];
  logLevel: Level;
  logJson: boolean;
}

/**
 * Checks the values (not the files they name). Returns the config, or the problems, one line
 * each, in the order of SERVER_FLAGS.
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
  const number = (k: keyof typeof DEFAULTS & ConfigKey): number => {
    const n = Number(s[k] ?? DEFAULTS[k]);
    const range = FLAG.get(k)?.range;
    if (range && !range.valid(n)) problems.push(`bad --${k} '${s[k]}': ${range.expect}`);
    return n;
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
  const keepalive = number("keepalive");
  const captureBuffer = number("capture-buffer");
  const vxlanPort = number("vxlan-port");
  let udpPort: number | undefined;
  if (str("udp-port") !== undefined) {
    udpPort = Number(s["udp-port"]);
    if (!FLAG.get("udp-port")!.range!.valid(udpPort)) {
      problems.push(`bad --udp-port '${s["udp-port"]}': a UDP port, or 0 for none`);
    }
  }
  const transport = str("transport") ?? DEFAULTS.transport;
  if (!(TRANSPORTS as readonly string[]).includes(transport)) {
    problems.push(`bad --transport '${transport}': ${TRANSPORTS.join(", ")}`);
  }
  const before = problems.length;
  const maxHandshakes = number("max-handshakes");
  const maxPerAddress = number("max-handshakes-per-address");
  if (problems.length === before && maxPerAddress > maxHandshakes) {
    problems.push(
      `bad --max-handshakes-per-address '${maxPerAddress}': at most --max-handshakes ` +
        `(${maxHandshakes})`,
    );
  }
  const maxConnections = number("max-connections");
  const metrics = addr("metrics");
  const metricsTokenFile = str("metrics-token-file");
  if (metricsTokenFile && str("metrics") === undefined) {
    problems.push("--metrics-token-file goes with --metrics ADDR:PORT");
  }
  const metricsHosts = (str("metrics-host") ?? "").split(",").filter((h) => h.trim() !== "");
  for (const [i, h] of metricsHosts.entries()) {
    const name = metricsHostName(h);
    if (name === null) problems.push(`bad --metrics-host '${h}': a DNS name, e.g. vnet.example`);
    else metricsHosts[i] = name;
  }
  let allowMacs: MacRange[] = [];
  try {
    allowMacs = parseMacRanges(str("allow-mac") ?? "");
  } catch (e) {
    problems.push(`--allow-mac: ${messageOf(e)}`);
  }
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
      vxlanPort,
      udpPort,
      transport: transport as Transport,
      allowLiveMac: s["allow-live-mac"] === true,
      allowMacs,
      direct: s["no-direct"] !== true,
      maxHandshakes,
      maxHandshakesPerAddress: maxPerAddress,
      maxConnections,
      metrics,
      metricsTokenFile,
      metricsHosts,
      logLevel: level as Level,
      logJson: s["log-json"] === true,
    },
  };
}

/**
 * The token a metrics scraper must present, from a private file (mode 0600, as the secret):
 * its text without surrounding whitespace. Throws one line if the file is open, missing or
 * empty, or if the token is not key material (`checkKeyMaterial`, as for the secret).
 */
export function loadMetricsToken(path: string): string {
  checkPrivateFile(path, "metrics token file");
  let text: string;
  try {
    text = Deno.readTextFileSync(path);
  } catch (e) {
    throw new VnetError(`cannot read metrics token file '${path}': ${messageOf(e)}`, { cause: e });
  }
  const token = text.trim();
  if (token === "") {
    throw new VnetError(
      `metrics token file '${path}' is empty; put a token in it, e.g. 'vnet secret --out ${path}'`,
    );
  }
  // A scraper's token is a key as the secret is: a guessed token reads the whole status.
  checkKeyMaterial(new TextEncoder().encode(token), `the metrics token (file '${path}')`);
  return token;
}

/**
 * Everything `--check-config` checks: the values, the secret (file exists, mode 0600, enough
 * key material; or $VNET_SECRET), the TLS files (parse, key matches certificate, certificate
 * signed by the CA and valid now), that the state file, if it exists, is a readable state file
 * (if not, that its directory exists), and that the metrics token file is private and not
 * empty. Returns the problems, one line each; none = ok.
 */
export async function checkSettings(
  s: Settings,
  now = new Date(),
  systemd: SystemdDirs = systemdDirs(),
): Promise<string[]> {
  const { config, problems } = resolveSettings(s);
  const deferred = new Set(systemdNotes(s, systemd).map((n) => n.key));
  const secretFile = s["secret-file"] === undefined ? undefined : String(s["secret-file"]);
  if (!deferred.has("secret-file")) {
    try {
      loadSecret(secretFile || undefined);
    } catch (e) {
      problems.push(messageOf(e));
    }
  }
  // The files are checked even when other values are bad: every problem at once.
  const [cert, key, ca] = (["tls-cert", "tls-key", "tls-ca"] as const).map((k) => s[k]);
  const tlsDeferred = deferred.has("tls-cert") || deferred.has("tls-key") || deferred.has("tls-ca");
  if (!tlsDeferred && (config?.tls || (cert && key && ca))) {
    problems.push(...await checkTls({ cert: String(cert), key: String(key), ca: String(ca) }, now));
  }
  const state = s.state === undefined || s.state === "" ? undefined : String(s.state);
  if (state && !deferred.has("state")) {
    const problem = checkStateFile(state);
    if (problem) problems.push(problem);
  }
  const tokenFile = s["metrics-token-file"];
  if (tokenFile !== undefined && tokenFile !== "" && !deferred.has("metrics-token-file")) {
    try {
      loadMetricsToken(String(tokenFile));
    } catch (e) {
      problems.push(messageOf(e));
    }
  }
  return problems;
}

/** What systemd gives a service, as it tells it: set inside the unit only. */
interface SystemdDirs {
  /** $CREDENTIALS_DIRECTORY: where LoadCredential= put the files (/run/credentials/UNIT). */
  credentials?: string;
  /** $STATE_DIRECTORY: the StateDirectory= systemd made (/var/lib/NAME). */
  state?: string;
}

function systemdDirs(): SystemdDirs {
  return {
    credentials: Deno.env.get("CREDENTIALS_DIRECTORY"),
    state: Deno.env.get("STATE_DIRECTORY"),
  };
}

const CREDENTIALS_ROOT = "/run/credentials/";

/**
 * Files that exist only inside the systemd unit (packaging/vnet.service), checked outside it:
 * a credential under /run/credentials/ (LoadCredential= copies it there when the service
 * starts) and a state directory under /var/lib/ that StateDirectory= makes. Outside the unit
 * they cannot be checked, so `--check-config` says what to create instead of failing on a
 * config that is right for the service; inside it ($CREDENTIALS_DIRECTORY, $STATE_DIRECTORY
 * set, as in ExecStartPre=) they are checked as any other file.
 */
export function systemdNotes(
  s: Settings,
  systemd: SystemdDirs = systemdDirs(),
): { key: ConfigKey; note: string }[] {
  const notes: { key: ConfigKey; note: string }[] = [];
  const keys = ["secret-file", "tls-cert", "tls-key", "tls-ca", "metrics-token-file"] as const;
  for (const key of keys) {
    const path = s[key];
    if (typeof path !== "string" || !path.startsWith(CREDENTIALS_ROOT)) continue;
    if (systemd.credentials) continue;
    const name = path.slice(path.lastIndexOf("/") + 1);
    const make = key === "secret-file" || key === "metrics-token-file"
      ? `vnet secret --out /etc/vnet/${name}`
      : `'vnet cert', then copy it to /etc/vnet/${name}`;
    notes.push({
      key,
      note: `${key} '${path}' is a systemd credential, present only while the service runs ` +
        `(LoadCredential=${name}:/etc/vnet/${name} in vnet.service copies it there), so it ` +
        `is checked then, by ExecStartPre; create its source: ${make}`,
    });
  }
  const state = s.state;
  if (typeof state === "string" && state.startsWith("/var/lib/") && !systemd.state) {
    const dir = dirOf(state);
    let exists = false;
    try {
      exists = Deno.statSync(dir).isDirectory;
    } catch { /* missing */ }
    if (!exists) {
      notes.push({
        key: "state",
        note: `state directory '${dir}' does not exist yet: systemd makes it for the service ` +
          `(StateDirectory= in vnet.service); to run vnet outside systemd, make it: ` +
          `install -d -m 0700 ${dir}`,
      });
    }
  }
  return notes;
}

async function checkTls(
  files: { cert: string; key: string; ca: string },
  now: Date,
): Promise<string[]> {
  const { importSigningKey, parseCertificate } = await import("../link/pki.ts");
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
    // Versions from 1 up are read (src/control/state.ts).
    const version = parsed?.version;
    const known = Number.isInteger(version) && version >= 1 && version <= STATE_VERSION;
    if (!known || !Array.isArray(parsed.handlers)) {
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
