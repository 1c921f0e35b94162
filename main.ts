/**
 * vnet: puts a far-away machine onto a local Ethernet (USENIX VM '04, section 4.2).
 *
 *   vnet server ...   run a VNET server (on the VM's Host and on the LAN's Proxy)
 *   vnet client ...   ask a server to set up, list or close handlers
 *   vnet cert ...     make the TLS certificates servers use
 *
 * Each subcommand lives in src/cli/<name>.ts with its own help text.
 */
import { clientCommand } from "./src/cli/client.ts";
import { error } from "./src/cli/common.ts";
import { serverCommand } from "./src/cli/server.ts";
import { certCommand } from "./src/cli/cert.ts";
import { doctorCommand } from "./src/cli/doctor.ts";
import { messageOf, VnetError } from "./src/errors.ts";
import { COMMIT, VERSION } from "./src/ops/version.ts";

const HELP = `
vnet ${VERSION}: bridge a remote VM onto a local Ethernet over one TCP (or TLS) connection

Usage:
  vnet server --listen ADDR:PORT --secret-file FILE [...]   run a server (Host or Proxy)
  vnet client --proxy ADDR:PORT --proxy-dev DEV \\
              --host ADDR:PORT --host-dev DEV --mac MAC ...   create a handler
  vnet client list|close|devices --server ADDR:PORT ...      inspect and manage handlers
  vnet cert ca|issue ...                                      make TLS certificates
  vnet --version

Run 'vnet <command> --help' for the flags of each command.
`;

/** A command resolves with its exit status (0 when it returns nothing) or throws. */
const commands: Record<string, (args: string[]) => Promise<number | void>> = {
  server: serverCommand,
  client: clientCommand,
  cert: certCommand,
  doctor: doctorCommand,
};

async function main(args: string[]): Promise<number> {
  const [command, ...rest] = args;
  if (command === undefined || command === "--help" || command === "-h" || command === "help") {
    console.log(HELP.trim());
    return 0;
  }
  if (command === "--version" || command === "-V" || command === "version") {
    console.log(`vnet ${VERSION} (${COMMIT}) deno ${Deno.version.deno}`);
    return 0;
  }
  const run = commands[command];
  if (!run) error(`unknown command '${command}' (see 'vnet --help')`);
  return await run(rest) ?? 0;
}

if (import.meta.main) {
  try {
    Deno.exit(await main(Deno.args));
  } catch (e) {
    if (e instanceof VnetError) error(messageOf(e));
    console.error(`vnet: internal error: ${(e as Error)?.stack ?? e}`);
    Deno.exit(70);
  }
}
