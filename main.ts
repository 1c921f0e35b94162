/**
 * vnet: puts a far-away machine onto a local Ethernet (USENIX VM '04, section 4.2).
 *
 *   vnet server ...   run a VNET server (on the VM's Host and on the LAN's Proxy)
 *   vnet client ...   ask a server to set up, list, watch, migrate or close handlers
 *   vnet cert ...     make the TLS certificates servers use
 *   vnet secret ...   make the shared secret
 *   vnet doctor ...   check a machine for what a bridge needs
 *
 * Each command lives in src/cli/<name>.ts with its own help text. A command resolves with its
 * exit status or throws; this file is the only place the process exits.
 */
import { clientCommand } from "./src/cli/client.ts";
import { serverCommand } from "./src/cli/server.ts";
import { certCommand } from "./src/cli/cert.ts";
import { doctorCommand } from "./src/cli/doctor.ts";
import { secretCommand } from "./src/cli/secret.ts";
import { messageOf, VnetError } from "./src/errors.ts";
import { COMMIT, VERSION } from "./src/version.ts";

const HELP = `
vnet ${VERSION}: bridge a remote VM onto a local Ethernet over one TCP (or TLS) connection

Usage:
  vnet server --listen ADDR:PORT --secret-file FILE [...]   run a server (Host or Proxy)
  vnet server --check-config [--config FILE] [...]          check a server's settings
  vnet client [create] --proxy ADDR:PORT --proxy-dev DEV \\
              --host ADDR:PORT --host-dev DEV --mac MAC ...  create a handler
  vnet client list|watch --server ADDR:PORT ...              show handlers, once or live
  vnet client close|migrate --server ADDR:PORT ... ID        close a handler, or move its Host end
  vnet client devices --server ADDR:PORT ...                 list a server's interfaces
  vnet cert ca|issue ...                                     make TLS certificates
  vnet secret [--out FILE] [--force]                         make a shared secret
  vnet doctor ...                                            check this machine for a bridge
  vnet --version

Run 'vnet <command> --help' for the flags of each command.
`;

/** A command resolves with its exit status (0 when it returns nothing) or throws. */
const commands: Record<string, (args: string[]) => Promise<number | void>> = {
  server: serverCommand,
  client: clientCommand,
  cert: certCommand,
  secret: secretCommand,
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
  if (!run) throw new VnetError(`unknown command '${command}' (see 'vnet --help')`);
  return await run(rest) ?? 0;
}

if (import.meta.main) {
  let status: number;
  try {
    status = await main(Deno.args);
  } catch (e) {
    if (e instanceof VnetError) {
      console.error(`vnet: ${messageOf(e)}`);
      status = 1;
    } else {
      console.error(`vnet: internal error: ${(e as Error)?.stack ?? e}`);
      status = 70;
    }
  }
  Deno.exit(status);
}
