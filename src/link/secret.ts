/**
 * The shared secret every connection proves knowledge of (auth.ts). It comes from a file or
 * the environment, never from the command line, where the process list would show it.
 */
import { VnetError } from "../errors.ts";

export const SECRET_ENV = "VNET_SECRET";
const MIN_SECRET_BYTES = 16;
const HOW_TO_MAKE =
  "make one with: head -c 32 /dev/urandom | base64 > vnet.secret && chmod 600 vnet.secret";

/** `path` as a shell word, quoted only when it needs to be (for "run chmod 600 PATH"). */
export function shellQuote(path: string): string {
  return /^[\w@%+=:,./-]+$/.test(path) ? path : `'${path.replaceAll("'", `'\\''`)}'`;
}

/**
 * Refuses a private file (secret, key) that group or others may access, as OpenSSH does:
 * `permissions 0644 for secret file 'x' are too open; run chmod 600 x`. Also one clear line if
 * it is missing or not a regular file. Modes are not checked where the OS has none (Windows).
 */
export function checkPrivateFile(path: string, what = ""): void {
  const named = what ? `${what} '${path}'` : `'${path}'`;
  let info: Deno.FileInfo;
  try {
    info = Deno.statSync(path);
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) throw new VnetError(`${named} not found`);
    throw new VnetError(`cannot read ${named}: ${(e as Error).message}`, { cause: e });
  }
  if (!info.isFile) throw new VnetError(`${named} is not a regular file`);
  if (info.mode !== null && (info.mode & 0o077) !== 0 && Deno.build.os !== "windows") {
    const mode = (info.mode & 0o7777).toString(8).padStart(4, "0");
    throw new VnetError(
      `permissions ${mode} for ${named} are too open; run chmod 600 ${shellQuote(path)}`,
    );
  }
}

/** Loads the secret from `file` if given, else from $VNET_SECRET; throws saying how to make one. */
export function loadSecret(file: string | undefined): Uint8Array {
  let text: string | undefined;
  if (file) {
    checkPrivateFile(file, "secret file");
    text = Deno.readTextFileSync(file);
  } else {
    text = Deno.env.get(SECRET_ENV);
    if (text === undefined) {
      throw new VnetError(
        `no shared secret: give --secret-file FILE or set ${SECRET_ENV}; ${HOW_TO_MAKE}`,
      );
    }
  }
  const secret = new TextEncoder().encode(text.trim());
  if (secret.length < MIN_SECRET_BYTES) {
    throw new VnetError(
      `the shared secret is too short (${secret.length} bytes, need ${MIN_SECRET_BYTES}); ${HOW_TO_MAKE}`,
    );
  }
  return secret;
}
