/**
 * The shared secret every connection proves knowledge of (auth.ts). It comes from a file or
 * the environment, never from the command line, where the process list would show it.
 */
import { VnetError } from "./errors.ts";

export const SECRET_ENV = "VNET_SECRET";
const MIN_SECRET_BYTES = 16;
const HOW_TO_MAKE =
  "make one with: head -c 32 /dev/urandom | base64 > vnet.secret && chmod 600 vnet.secret";

/** Refuses files that others can read, as OpenSSH does for private keys. */
export function checkPrivateFile(path: string, what: string): void {
  let info: Deno.FileInfo;
  try {
    info = Deno.statSync(path);
  } catch (e) {
    throw new VnetError(`cannot read ${what} '${path}': ${(e as Error).message}`, { cause: e });
  }
  if (info.mode !== null && (info.mode & 0o077) !== 0 && Deno.build.os !== "windows") {
    const mode = (info.mode & 0o777).toString(8).padStart(4, "0");
    throw new VnetError(
      `permissions ${mode} for ${what} '${path}' are too open: others could read it; run chmod 600 ${path}`,
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
