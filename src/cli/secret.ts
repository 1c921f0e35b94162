/** `vnet secret`: make the shared secret every server and client of one deployment holds. */
import { VnetError } from "../errors.ts";
import { NEW_SECRET_BYTES, newSecretText } from "../link/secret.ts";
import { writeSecretFile } from "../link/pki.ts";
import { noPositionals, parseFlags } from "./common.ts";

const SECRET_HELP = `
vnet secret: make a shared secret (${NEW_SECRET_BYTES} random bytes, base64)

Usage:
  vnet secret --out FILE [--force]   write it to FILE, mode 0600
  vnet secret                        print it on stdout

Copy the one file to every server and client of a deployment (--secret-file FILE), or put
its text in $VNET_SECRET. When printing to a file, keep the file private:
  (umask 077; vnet secret > vnet.secret)

A secret may also be made elsewhere: ${NEW_SECRET_BYTES} or more random bytes as hex text
(openssl rand -hex 32), as base64 text (head -c 32 /dev/urandom | base64) or raw. Shorter
secrets, text of words, sequences (00 01 02..., 0-9a-zA-Z) and repeated patterns are refused:
anyone who records a handshake can try guesses offline, so the secret's randomness is all that
protects it. The same rules hold for the --metrics-token-file of 'vnet server'.

Options:
  --out FILE    write the secret to FILE (created with mode 0600)
  --force       overwrite FILE if it exists
  -h, --help    show this help
`;

/** The flags of `vnet secret`: the parser's table, and shell completion's. */
export const SECRET_FLAGS = { out: { type: "string" }, force: { type: "boolean" } } as const;

export async function secretCommand(args: string[]): Promise<number> {
  const parsed = parseFlags(
    args,
    SECRET_FLAGS,
    SECRET_HELP,
    "secret",
  );
  if (!parsed) return 0;
  const { values, positionals } = parsed;
  noPositionals(positionals, "secret");
  const text = newSecretText();
  if (values.out === undefined) {
    if (values.force) throw new VnetError("--force goes with --out FILE");
    console.log(text.trimEnd());
    return 0;
  }
  if (values.out === "") throw new VnetError("--out needs a file name");
  await writeSecretFile(values.out, text, { overwrite: values.force === true });
  console.error(`wrote ${values.out}`);
  return 0;
}
