/**
 * `vnet cert`: make the CA and the server certificates that `vnet server`s use to verify each
 * other over TLS, without openssl. Written paths go to stderr; stdout carries only help text.
 */
import { parseArgs } from "node:util";
import { VnetError } from "../errors.ts";
import { didYouMean, unknownCommand } from "./common.ts";
import {
  CA_DEFAULT_DAYS,
  CERT_DEFAULT_DAYS,
  fingerprint,
  MAX_DAYS,
  parseCertificate,
  writeCa,
  writeIssued,
} from "../link/pki.ts";

const CERT_HELP = `Usage: vnet cert <command> [options]

Make the TLS material vnet servers use to verify each other: one CA per
network, one certificate per server, all ECDSA P-256. No openssl needed.

Commands:
  ca      make a certificate authority (DIR/ca.pem, DIR/ca-key.pem)
  issue   make a server certificate signed by a CA (DIR/cert.pem, key.pem, ca.pem)

Run 'vnet cert <command> --help' for a command's options.

Example:
  vnet cert ca --out pki/ca
  vnet cert issue --ca pki/ca --name node1 --san 192.0.2.10 --out pki/node1
  # copy pki/node1 to node1; keep pki/ca/ca-key.pem private
`;

const CA_HELP =
  `Usage: vnet cert ca --out DIR [--name NAME] [--days N] [--not-before DATE] [--force]

Make a certificate authority: DIR/ca.pem (the CA certificate, give it to every
server) and DIR/ca-key.pem (its private key, mode 0600; keep it off the servers
if you can). DIR is created (mode 0700) if missing.

Options:
  --out DIR          directory to write into (required)
  --name NAME        CA common name (default "VNET CA")
  --days N           validity in days from --not-before (default ${CA_DEFAULT_DAYS}, max ${MAX_DAYS})
  --not-before DATE  start of validity, ISO 8601 (default: now minus 5 minutes)
  --force            overwrite existing files
  -h, --help         show this help
`;

const ISSUE_HELP =
  `Usage: vnet cert issue --ca DIR --name NAME --san ADDR [--san ADDR ...] --out DIR [options]

Make a server certificate signed by the CA in --ca: OUT/cert.pem (the
certificate, usable as-is for Deno.listenTls), OUT/key.pem (its private key,
mode 0600) and OUT/ca.pem (a copy of the CA certificate), so OUT holds all one
server needs. The certificate is valid for both server and client auth.

Options:
  --ca DIR           CA directory made by 'vnet cert ca' (required)
  --name NAME        server name; becomes the certificate's common name (required)
  --san ADDR         name peers use to reach this server (required, repeatable):
                     an IP address (192.0.2.10, fd00::1) or a DNS name
                     (node1.example); prefix IP: or DNS: to be explicit.
                     Peers check these, not --name.
  --out DIR          directory to write into (required; created mode 0700)
  --days N           validity in days from --not-before (default ${CERT_DEFAULT_DAYS}, max ${MAX_DAYS})
  --not-before DATE  start of validity, ISO 8601 (default: now minus 5 minutes)
  --force            overwrite existing files
  -h, --help         show this help

An already expired certificate (for tests):
  vnet cert issue ... --not-before 2000-01-01 --days 1
`;

type Spec = Record<string, { type: "string" | "boolean"; short?: string; multiple?: boolean }>;

/** parseArgs with errors turned into one-line VnetErrors that point at --help. */
function parse<T extends Spec>(args: string[], options: T, command: string) {
  try {
    return parseArgs({ args, options, strict: true, allowPositionals: false }).values;
  } catch (e) {
    const code = (e as { code?: string }).code ?? "";
    const msg = e instanceof Error ? e.message : String(e);
    const hint = `see '${command} --help'`;
    if (code === "ERR_PARSE_ARGS_UNKNOWN_OPTION") {
      const opt = /'([^']+)'/.exec(msg)?.[1] ?? msg;
      const guess = didYouMean(opt.split("=")[0], Object.keys(options).map((o) => `--${o}`));
      const slip = guess ? `; did you mean ${guess}?` : "";
      throw new VnetError(`unknown option '${opt}' for '${command}'${slip}; ${hint}`);
    }
    if (code === "ERR_PARSE_ARGS_UNEXPECTED_POSITIONAL") {
      const arg = /'([^']*)'/.exec(msg)?.[1] ?? msg;
      throw new VnetError(`unexpected argument '${arg}' for '${command}'; ${hint}`);
    }
    // e.g. "Option '--out <value>' argument missing"; keep the first sentence.
    const first = msg.split(/\.\s/)[0].replace(/\.$/, "");
    throw new VnetError(`${first.charAt(0).toLowerCase()}${first.slice(1)}; ${hint}`);
  }
}

function required(value: string | undefined, flag: string, command: string): string {
  if (value === undefined || value === "") {
    throw new VnetError(`${flag} is required; see '${command} --help'`);
  }
  return value;
}

function parseDays(value: string | undefined): number | undefined {
  if (value === undefined) return undefined;
  const n = /^\d+$/.test(value) ? Number(value) : NaN;
  if (!Number.isInteger(n) || n < 1 || n > MAX_DAYS) {
    throw new VnetError(`--days must be a whole number from 1 to ${MAX_DAYS}, not '${value}'`);
  }
  return n;
}

function parseDate(value: string | undefined): Date | undefined {
  if (value === undefined) return undefined;
  const d = new Date(value);
  if (!/^\d{4}-\d{2}-\d{2}/.test(value) || Number.isNaN(d.getTime())) {
    throw new VnetError(
      `--not-before '${value}' is not an ISO 8601 date (2026-01-31 or 2026-01-31T12:00:00Z)`,
    );
  }
  return d;
}

function say(line: string): void {
  console.error(line);
}

/** The flags `ca` and `issue` share: the subject, how long it is valid, overwriting, help. */
const VALIDITY_OPTIONS = {
  name: { type: "string" },
  days: { type: "string" },
  "not-before": { type: "string" },
  force: { type: "boolean" },
  help: { type: "boolean", short: "h" },
} as const;

/** The flags of `cert ca` and `cert issue`: the parser's tables, and shell completion's. */
export const CERT_FLAGS = {
  ca: { ...VALIDITY_OPTIONS, out: { type: "string" } },
  issue: {
    ...VALIDITY_OPTIONS,
    ca: { type: "string" },
    san: { type: "string", multiple: true },
    out: { type: "string" },
  },
} as const;

async function caCommand(args: string[]): Promise<number> {
  const cmd = "vnet cert ca";
  const v = parse(args, CERT_FLAGS.ca, cmd);
  if (v.help) {
    console.log(CA_HELP.trimEnd());
    return 0;
  }
  const out = required(v.out, "--out", cmd);
  const { paths, ca } = await writeCa(out, {
    name: v.name,
    days: parseDays(v.days),
    notBefore: parseDate(v["not-before"]),
    force: v.force ?? false,
  });
  const cert = parseCertificate(ca.cert);
  for (const p of paths) say(`wrote ${p}`);
  say(`CA "${cert.subject}" valid until ${cert.notAfter.toISOString()}`);
  say(`SHA-256 fingerprint ${await fingerprint(ca.cert)}`);
  say(`next: vnet cert issue --ca ${out} --name NAME --san IP-OR-DNS --out DIR`);
  return 0;
}

async function issueCommand(args: string[]): Promise<number> {
  const cmd = "vnet cert issue";
  const v = parse(args, CERT_FLAGS.issue, cmd);
  if (v.help) {
    console.log(ISSUE_HELP.trimEnd());
    return 0;
  }
  const caDir = required(v.ca, "--ca", cmd);
  const name = required(v.name, "--name", cmd);
  const out = required(v.out, "--out", cmd);
  const sans = v.san ?? [];
  if (sans.length === 0) {
    throw new VnetError(
      `--san is required (an IP address or DNS name peers use to reach this server); ` +
        `see '${cmd} --help'`,
    );
  }
  const { paths, issued } = await writeIssued(caDir, out, {
    name,
    sans,
    days: parseDays(v.days),
    notBefore: parseDate(v["not-before"]),
    force: v.force ?? false,
  });
  const cert = parseCertificate(issued.cert);
  for (const p of paths) say(`wrote ${p}`);
  const when = cert.notAfter.getTime() < Date.now() ? "EXPIRED on" : "valid until";
  say(
    `certificate "${cert.subject}" for ${sans.join(", ")} ${when} ${cert.notAfter.toISOString()}`,
  );
  return 0;
}

/**
 * `vnet cert ...`: dispatches to `ca` / `issue`. Resolves with the exit status (0, also after
 * --help); user errors are thrown as VnetError.
 */
export async function certCommand(args: string[]): Promise<number> {
  const [sub, ...rest] = args;
  if (sub === "ca") return await caCommand(rest);
  if (sub === "issue") return await issueCommand(rest);
  if (sub === "-h" || sub === "--help" || sub === "help") {
    console.log(CERT_HELP.trimEnd());
    return 0;
  }
  if (sub === undefined) throw new VnetError("missing command; see 'vnet cert --help'");
  unknownCommand(sub, ["ca", "issue"], "cert");
}
