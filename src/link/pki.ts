/**
 * A tiny PKI for VNET peers: one CA per deployment, one server certificate per `vnet server`.
 *
 * All keys are ECDSA P-256; certificates are X.509 v3 made with `@peculiar/x509` on WebCrypto,
 * so no openssl is needed. Everything here returns or takes PEM strings; the file helpers
 * (`writeSecretFile`, `checkPrivateFile`, `readPrivateFile`) are generic and meant for any
 * secret VNET keeps on disk (TLS keys, the shared secret).
 *
 * Certificates are shaped for rustls (what `Deno.listenTls`/`Deno.connectTls` use): the leaf has
 * SANs (rustls ignores the CN), basicConstraints CA:false, keyUsage digitalSignature and
 * extendedKeyUsage serverAuth + clientAuth, so the same certificate can serve and, where the
 * TLS stack allows it, authenticate as a client.
 */
// tsyringe, used inside @peculiar/x509, needs the Reflect metadata API installed first.
import "reflect-metadata";
import * as x509 from "@peculiar/x509";
import { VnetError } from "../errors.ts";
import { checkPrivateFile, shellQuote } from "./secret.ts";

export { checkPrivateFile };

x509.cryptoProvider.set(crypto);

const EC_KEY = { name: "ECDSA", namedCurve: "P-256" } as const;
const SIGNING = { ...EC_KEY, hash: "SHA-256" } as const;
const DAY_MS = 24 * 60 * 60 * 1000;
/** Default backdating of notBefore, so peers with slightly slow clocks accept a new cert. */
const BACKDATE_MS = 5 * 60 * 1000;
export const MAX_DAYS = 36500;
export const CA_DEFAULT_DAYS = 3650;
export const CERT_DEFAULT_DAYS = 365;

/** File names inside a CA directory and a server certificate directory. */
const CA_CERT_FILE = "ca.pem";
const CA_KEY_FILE = "ca-key.pem";
const CERT_FILE = "cert.pem";
const KEY_FILE = "key.pem";

/** A certificate and its private key, both PEM (`CERTIFICATE`, PKCS#8 `PRIVATE KEY`). */
export interface CertAndKey {
  cert: string;
  key: string;
}

interface ValidityOptions {
  /** Start of validity; default: now minus 5 minutes. */
  notBefore?: Date;
  /** Length of validity in whole days counted from notBefore (1..36500). */
  days?: number;
}

export interface CaOptions extends ValidityOptions {
  /** Common name of the CA; default "VNET CA". */
  name?: string;
}

export interface IssueOptions extends ValidityOptions {
  /** The CA that signs: its certificate and PKCS#8 key, PEM. */
  ca: CertAndKey;
  /** Common name of the certificate (not used for name checks by rustls; SANs are). */
  name: string;
  /** Subject alternative names: IP addresses or DNS names, optionally prefixed `IP:`/`DNS:`. */
  sans: string[];
}

export type San = { type: "ip"; value: string } | { type: "dns"; value: string };

const IPV4 = /^(25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)(\.(25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)){3}$/;
const DNS_LABEL = /^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$/;

function parseIp(text: string): string | undefined {
  if (IPV4.test(text)) return text;
  if (!text.includes(":") || /[^0-9a-fA-F:.]/.test(text)) return undefined;
  try {
    // The URL parser implements the full IPv6 grammar (and compresses the result).
    const host = new URL(`http://[${text}]/`).hostname;
    return host.slice(1, -1);
  } catch {
    return undefined;
  }
}

function parseDns(text: string): string | undefined {
  const name = text.toLowerCase().replace(/\.$/, "");
  if (name.length === 0 || name.length > 253) return undefined;
  const labels = name.split(".");
  // A name whose last label is all digits would be read as a (bad) IPv4 address by clients.
  if (/^\d+$/.test(labels[labels.length - 1])) return undefined;
  const ok = labels.every((label, i) => DNS_LABEL.test(label) || (i === 0 && label === "*"));
  return ok && !(labels[0] === "*" && labels.length < 3) ? name : undefined;
}

/**
 * Parses one `--san` value: `IP:ADDR`, `DNS:NAME`, or a bare IPv4/IPv6 address or DNS name.
 * Throws VnetError when it is neither.
 */
export function parseSan(text: string): San {
  const m = /^(ip|dns):(.*)$/i.exec(text);
  const kind = m?.[1].toLowerCase();
  const value = (m ? m[2] : text).trim();
  if (kind !== "dns") {
    const ip = parseIp(value);
    if (ip !== undefined) return { type: "ip", value: ip };
    if (kind === "ip") {
      throw new VnetError(`bad SAN '${text}': '${value}' is not an IPv4 or IPv6 address`);
    }
  }
  const dns = parseDns(value);
  if (dns !== undefined) return { type: "dns", value: dns };
  throw new VnetError(
    `bad SAN '${text}': expected an IP address (10.0.0.1, fd00::1) or a DNS name (node1.example)`,
  );
}

function checkName(name: string, what: string): string {
  const trimmed = name.trim();
  if (trimmed.length === 0) throw new VnetError(`${what} must not be empty`);
  if (trimmed.length > 64) throw new VnetError(`${what} '${trimmed}' is longer than 64 characters`);
  return trimmed;
}

function validity(opts: ValidityOptions, defaultDays: number): { notBefore: Date; notAfter: Date } {
  const days = opts.days ?? defaultDays;
  if (!Number.isInteger(days) || days < 1 || days > MAX_DAYS) {
    throw new VnetError(`days must be a whole number from 1 to ${MAX_DAYS}, not ${days}`);
  }
  const notBefore = opts.notBefore ?? new Date(Date.now() - BACKDATE_MS);
  if (Number.isNaN(notBefore.getTime())) throw new VnetError("notBefore is not a valid date");
  return { notBefore, notAfter: new Date(notBefore.getTime() + days * DAY_MS) };
}

/** 16 random bytes as hex, top bit clear so the DER integer stays positive. */
function serialNumber(): string {
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  bytes[0] &= 0x7f;
  bytes[0] |= 0x01; // no leading zero byte either
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

async function newKeyPair(): Promise<CryptoKeyPair> {
  return await crypto.subtle.generateKey(EC_KEY, true, ["sign", "verify"]) as CryptoKeyPair;
}

async function privateKeyPem(key: CryptoKey): Promise<string> {
  const der = await crypto.subtle.exportKey("pkcs8", key);
  return x509.PemConverter.encode(der, "PRIVATE KEY");
}

/** Parses one PEM certificate; throws VnetError naming `where` if it is not one. */
export function parseCertificate(pem: string, where = "certificate"): x509.X509Certificate {
  try {
    return new x509.X509Certificate(pem);
  } catch (e) {
    throw new VnetError(`${where} is not a PEM certificate`, { cause: e });
  }
}

/** Imports a PKCS#8 PEM ECDSA P-256 private key for signing. */
export async function importSigningKey(pem: string, where = "private key"): Promise<CryptoKey> {
  const m = /-----BEGIN ([A-Z ]+)-----/.exec(pem);
  if (!m) throw new VnetError(`${where} is not a PEM private key`);
  if (m[1] !== "PRIVATE KEY") {
    throw new VnetError(`${where} is a '${m[1]}' PEM; expected a PKCS#8 'PRIVATE KEY'`);
  }
  try {
    const der = x509.PemConverter.decode(pem)[0];
    return await crypto.subtle.importKey("pkcs8", der, EC_KEY, false, ["sign"]);
  } catch (e) {
    throw new VnetError(`${where} is not an ECDSA P-256 PKCS#8 private key`, { cause: e });
  }
}

/** Makes a self-signed CA (CA:true, pathlen 0, keyCertSign + cRLSign). */
export async function createCa(opts: CaOptions = {}): Promise<CertAndKey> {
  const name = checkName(opts.name ?? "VNET CA", "CA name");
  const { notBefore, notAfter } = validity(opts, CA_DEFAULT_DAYS);
  const keys = await newKeyPair();
  const cert = await x509.X509CertificateGenerator.createSelfSigned({
    serialNumber: serialNumber(),
    name: [{ CN: [name] }],
    notBefore,
    notAfter,
    signingAlgorithm: SIGNING,
    keys,
    extensions: [
      new x509.BasicConstraintsExtension(true, 0, true),
      new x509.KeyUsagesExtension(
        x509.KeyUsageFlags.keyCertSign | x509.KeyUsageFlags.cRLSign |
          x509.KeyUsageFlags.digitalSignature,
        true,
      ),
      await x509.SubjectKeyIdentifierExtension.create(keys.publicKey),
    ],
  });
  return { cert: cert.toString("pem") + "\n", key: await privateKeyPem(keys.privateKey) + "\n" };
}

/**
 * Checks that `ca` is a usable CA: a CA certificate, not expired, whose key matches.
 * `names` say what to call the two parts in errors (e.g. their file paths).
 * Returns the parsed certificate and the signing key.
 */
async function loadCaMaterial(
  ca: CertAndKey,
  names: { cert: string; key: string } = { cert: "CA certificate", key: "CA key" },
): Promise<{ cert: x509.X509Certificate; key: CryptoKey }> {
  const cert = parseCertificate(ca.cert, names.cert);
  const key = await importSigningKey(ca.key, names.key);
  const bc = cert.getExtension(x509.BasicConstraintsExtension);
  if (!bc?.ca) throw new VnetError(`${names.cert} is not a CA certificate (CA:false)`);
  if (cert.notAfter.getTime() < Date.now()) {
    throw new VnetError(`${names.cert} expired on ${cert.notAfter.toISOString()}; make a new CA`);
  }
  const probe = crypto.getRandomValues(new Uint8Array(32));
  const signature = await crypto.subtle.sign(SIGNING, key, probe);
  const publicKey = await cert.publicKey.export(SIGNING, ["verify"]);
  if (!(await crypto.subtle.verify(SIGNING, publicKey, signature, probe))) {
    throw new VnetError(`${names.key} does not belong to ${names.cert}`);
  }
  return { cert, key };
}

/**
 * Issues a server certificate signed by `opts.ca`: CN = name, SANs from `opts.sans`,
 * CA:false, keyUsage digitalSignature, extendedKeyUsage serverAuth + clientAuth.
 * `cert` in the result is the leaf alone, usable as `Deno.listenTls({ cert, key })`.
 */
export async function issueCert(opts: IssueOptions): Promise<CertAndKey> {
  const name = checkName(opts.name, "certificate name");
  if (opts.sans.length === 0) {
    throw new VnetError("at least one SAN (IP address or DNS name) is required");
  }
  const seen = new Set<string>();
  const sans = opts.sans.map(parseSan).filter((s) => {
    const k = `${s.type}:${s.value}`;
    return seen.has(k) ? false : (seen.add(k), true);
  });
  const { notBefore, notAfter } = validity(opts, CERT_DEFAULT_DAYS);
  const ca = await loadCaMaterial(opts.ca);
  const keys = await newKeyPair();
  const cert = await x509.X509CertificateGenerator.create({
    serialNumber: serialNumber(),
    subject: [{ CN: [name] }],
    issuer: ca.cert.subjectName,
    notBefore,
    notAfter,
    signingAlgorithm: SIGNING,
    publicKey: keys.publicKey,
    signingKey: ca.key,
    extensions: [
      new x509.BasicConstraintsExtension(false, undefined, true),
      new x509.KeyUsagesExtension(x509.KeyUsageFlags.digitalSignature, true),
      new x509.ExtendedKeyUsageExtension(
        [x509.ExtendedKeyUsage.serverAuth, x509.ExtendedKeyUsage.clientAuth],
        false,
      ),
      new x509.SubjectAlternativeNameExtension(sans, false),
      await x509.SubjectKeyIdentifierExtension.create(keys.publicKey),
      await x509.AuthorityKeyIdentifierExtension.create(ca.cert.publicKey),
    ],
  });
  return { cert: cert.toString("pem") + "\n", key: await privateKeyPem(keys.privateKey) + "\n" };
}

/** SHA-256 fingerprint of a PEM certificate, as colon-separated upper-case hex. */
export async function fingerprint(pem: string): Promise<string> {
  const cert = parseCertificate(pem);
  const hash = new Uint8Array(await crypto.subtle.digest("SHA-256", cert.rawData));
  return Array.from(hash, (b) => b.toString(16).padStart(2, "0").toUpperCase()).join(":");
}

// ---------------------------------------------------------------------------------------------
// Files

const EXISTS_HINT = "remove it or pass --force to overwrite";

/** The OS reason of a Deno file error, without the trailing ": open '/path'" part. */
function reason(e: unknown): string {
  const text = e instanceof Error ? e.message : String(e);
  return text.replace(/:\s*[a-z]+ '.*'$/s, "").replace(/\s*\n\s*/g, " ");
}

/** `checkPrivateFile`, then the file's text. */
async function readPrivateFile(path: string): Promise<string> {
  checkPrivateFile(path);
  try {
    return await Deno.readTextFile(path);
  } catch (e) {
    throw new VnetError(`cannot read '${path}': ${reason(e)}`, { cause: e });
  }
}

export interface WriteOptions {
  /** Replace an existing file (atomically, via a temporary file and rename). Default false. */
  overwrite?: boolean;
}

async function writeWithMode(
  path: string,
  data: string | Uint8Array,
  mode: number,
  opts: WriteOptions,
): Promise<void> {
  const bytes = typeof data === "string" ? new TextEncoder().encode(data) : data;
  const target = opts.overwrite ? `${path}.tmp-${serialNumber().slice(0, 8)}` : path;
  try {
    // createNew: the file is born with `mode` (never briefly wider) and an existing one is kept.
    await Deno.writeFile(target, bytes, { createNew: true, mode });
    if (opts.overwrite) await Deno.rename(target, path);
  } catch (e) {
    if (opts.overwrite) await Deno.remove(target).catch(() => {});
    if (e instanceof Deno.errors.AlreadyExists) {
      throw new VnetError(`'${path}' already exists; ${EXISTS_HINT}`);
    }
    throw new VnetError(`cannot write '${path}': ${reason(e)}`, { cause: e });
  }
}

/**
 * Writes a secret (private key, shared secret) created with mode 0600 from the start.
 * Refuses to replace an existing file unless `overwrite`.
 */
export const writeSecretFile = (path: string, data: string | Uint8Array, opts: WriteOptions = {}) =>
  writeWithMode(path, data, 0o600, opts);

/** Writes a public file (certificate) with mode 0644; same overwrite rule as writeSecretFile. */
const writePublicFile = (path: string, data: string | Uint8Array, opts: WriteOptions = {}) =>
  writeWithMode(path, data, 0o644, opts);

/** Makes `dir` (mode 0700, parents too) unless it exists; clear error if it cannot. */
async function ensureDir(dir: string): Promise<void> {
  try {
    const info = await Deno.stat(dir);
    if (!info.isDirectory) throw new VnetError(`output '${dir}' exists and is not a directory`);
    return;
  } catch (e) {
    if (!(e instanceof Deno.errors.NotFound)) {
      if (e instanceof VnetError) throw e;
      throw new VnetError(`cannot use output directory '${dir}': ${reason(e)}`, { cause: e });
    }
  }
  try {
    await Deno.mkdir(dir, { recursive: true, mode: 0o700 });
  } catch (e) {
    throw new VnetError(`cannot create output directory '${dir}': ${reason(e)}`, { cause: e });
  }
}

function join(dir: string, file: string): string {
  return dir.endsWith("/") ? dir + file : `${dir}/${file}`;
}

async function exists(path: string): Promise<boolean> {
  try {
    await Deno.lstat(path);
    return true;
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return false;
    throw new VnetError(`cannot use '${path}': ${reason(e)}`, { cause: e });
  }
}

/** Throws if any of `paths` exists (checked before any work, so nothing is half done). */
async function refuseExisting(paths: string[]): Promise<void> {
  for (const path of paths) {
    if (await exists(path)) throw new VnetError(`'${path}' already exists; ${EXISTS_HINT}`);
  }
}

/** A file to write into a directory, and whether it is secret (0600) or public (0644). */
interface OutFile {
  path: string;
  data: string;
  secret: boolean;
  /** Keep an existing file with exactly this content instead of refusing. */
  keepIfSame?: boolean;
}

/**
 * Writes all `files` or none: refuses up front if any exists (unless `force`), and removes what
 * it wrote if a later write fails. Returns the paths written.
 */
async function writeAll(files: OutFile[], force: boolean): Promise<string[]> {
  const todo: OutFile[] = [];
  for (const f of files) {
    if (await exists(f.path)) {
      if (f.keepIfSame && (await Deno.readTextFile(f.path).catch(() => "")) === f.data) continue;
      if (!force) throw new VnetError(`'${f.path}' already exists; ${EXISTS_HINT}`);
    }
    todo.push(f);
  }
  const written: string[] = [];
  try {
    for (const f of todo) {
      const write = f.secret ? writeSecretFile : writePublicFile;
      await write(f.path, f.data, { overwrite: force });
      written.push(f.path);
    }
  } catch (e) {
    if (!force) { for (const p of written) await Deno.remove(p).catch(() => {}); }
    throw e;
  }
  return written;
}

/** Paths of a CA directory. */
function caPaths(dir: string): { cert: string; key: string } {
  return { cert: join(dir, CA_CERT_FILE), key: join(dir, CA_KEY_FILE) };
}

/** Paths of a server certificate directory. */
function certPaths(dir: string): { cert: string; key: string; ca: string } {
  return { cert: join(dir, CERT_FILE), key: join(dir, KEY_FILE), ca: join(dir, CA_CERT_FILE) };
}

/** Makes a CA and writes `DIR/ca.pem` and `DIR/ca-key.pem` (0600). Returns paths written. */
export async function writeCa(
  dir: string,
  opts: CaOptions & { force?: boolean } = {},
): Promise<{ paths: string[]; ca: CertAndKey }> {
  const p = caPaths(dir);
  await ensureDir(dir);
  if (!opts.force) await refuseExisting([p.cert, p.key]);
  const ca = await createCa(opts);
  const paths = await writeAll([
    { path: p.key, data: ca.key, secret: true },
    { path: p.cert, data: ca.cert, secret: false },
  ], opts.force ?? false);
  return { paths, ca };
}

/**
 * Reads a CA directory made by `writeCa`, refusing a key file group/others can read.
 * Errors say which file is missing and how to make one.
 */
export async function readCa(dir: string): Promise<CertAndKey> {
  let info: Deno.FileInfo;
  try {
    info = await Deno.stat(dir);
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) {
      throw new VnetError(
        `CA directory '${dir}' not found; make one with 'vnet cert ca --out ${shellQuote(dir)}'`,
      );
    }
    throw new VnetError(`cannot read CA directory '${dir}': ${reason(e)}`, { cause: e });
  }
  if (!info.isDirectory) throw new VnetError(`CA directory '${dir}' is not a directory`);
  const p = caPaths(dir);
  for (const path of [p.cert, p.key]) {
    if (!(await exists(path))) {
      throw new VnetError(
        `'${path}' not found; is '${dir}' a CA directory made by 'vnet cert ca --out ${
          shellQuote(dir)
        }'?`,
      );
    }
  }
  const key = await readPrivateFile(p.key);
  let cert: string;
  try {
    cert = await Deno.readTextFile(p.cert);
  } catch (e) {
    throw new VnetError(`cannot read '${p.cert}': ${reason(e)}`, { cause: e });
  }
  await loadCaMaterial({ cert, key }, { cert: `'${p.cert}'`, key: `'${p.key}'` });
  return { cert, key };
}

/**
 * Issues a certificate from the CA in `caDir` and writes `DIR/cert.pem`, `DIR/key.pem` (0600)
 * and a copy of the CA's `ca.pem`. Returns the paths written.
 */
export async function writeIssued(
  caDir: string,
  outDir: string,
  opts: Omit<IssueOptions, "ca"> & { force?: boolean },
): Promise<{ paths: string[]; issued: CertAndKey }> {
  const ca = await readCa(caDir);
  const p = certPaths(outDir);
  await ensureDir(outDir);
  if (!opts.force) await refuseExisting([p.cert, p.key]);
  const issued = await issueCert({ ...opts, ca });
  const paths = await writeAll([
    { path: p.key, data: issued.key, secret: true },
    { path: p.cert, data: issued.cert, secret: false },
    { path: p.ca, data: ca.cert, secret: false, keepIfSame: true },
  ], opts.force ?? false);
  return { paths, issued };
}
