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
import { messageOf, VnetError } from "./src/errors.ts";
import { unknownCommand } from "./src/cli/common.ts";
import { visible } from "./src/log.ts";
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
  vnet completion bash|zsh                                   shell completion, for eval
  vnet --version

Run 'vnet <command> --help' for the flags of each command.
`;

type Command = (args: string[]) => Promise<number | void>;

/**
 * A command resolves with its exit status (0 when it returns nothing) or throws. Commands are
 * loaded when run, so that a Deno that cannot load their npm packages (below) is caught here.
 */
const commands: Record<string, () => Promise<Command>> = {
  server: async () => (await import("./src/cli/server.ts")).serverCommand,
  client: async () => (await import("./src/cli/client.ts")).clientCommand,
  cert: async () => (await import("./src/cli/cert.ts")).certCommand,
  secret: async () => (await import("./src/cli/secret.ts")).secretCommand,
  doctor: async () => (await import("./src/cli/doctor.ts")).doctorCommand,
  completion: async () => (await import("./src/cli/completion.ts")).completionCommand,
};

/**
 * From source, Deno loads the npm packages from its cache, DENO_DIR (by default
 * ~/.cache/deno). Another user's cache (root's, under `sudo -u` or setpriv, which keep HOME)
 * cannot be read, so Deno tries to download them into it and fails with a stack trace: said
 * here in one line, with what to do.
 */
async function load(name: string, loader: () => Promise<Command>): Promise<Command> {
  try {
    return await loader();
  } catch (e) {
    const text = messageOf(e);
    if (!/npm package|os error 13|Permission denied|registry/i.test(text)) throw e;
    const home = Deno.env.get("HOME") ?? "~";
    const cache = Deno.env.get("DENO_DIR") ??
      `${Deno.env.get("XDG_CACHE_HOME") ?? `${home}/.cache`}/deno`;
    throw new VnetError(
      `cannot load the npm packages of 'vnet ${name}' from Deno's cache ${cache} as uid ` +
        `${Deno.uid()}: point DENO_DIR at a directory this user can write (e.g. ` +
        `DENO_DIR=/var/tmp/vnet-deno-${Deno.uid()}; sudo -H uses the user's own home), or run ` +
        `the compiled binary (deno task compile)`,
      { cause: e },
    );
  }
}

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
  if (!Object.hasOwn(commands, command)) unknownCommand(command, Object.keys(commands));
  const run = await load(command, commands[command]);
  return await run(rest) ?? 0;
}

/**
 * `deno task vnet` runs in the checkout (the config file's directory), but the paths a user types
 * are relative to where they typed them: `deno task` (like `npm run`) says where in INIT_CWD.
 */
function toInvokingDirectory(): void {
  // Asked, not read: without --allow-env a read would fail, or prompt on a terminal.
  const env = Deno.permissions.querySync({ name: "env", variable: "INIT_CWD" });
  if (env.state !== "granted") return;
  const initCwd = Deno.env.get("INIT_CWD");
  if (initCwd && initCwd !== Deno.cwd()) Deno.chdir(initCwd);
}

if (import.meta.main) {
  let status: number;
  try {
    toInvokingDirectory();
    status = await main(Deno.args);
  } catch (e) {
    if (e instanceof VnetError) {
      // An error's text may hold what a peer said: shown with its control characters escaped.
      console.error(`vnet: ${visible(messageOf(e))}`);
      status = 1;
    } else {
      const text = String((e as Error)?.stack ?? e);
      console.error(`vnet: internal error: ${text.split("\n").map(visible).join("\n")}`);
      status = 70;
    }
  }
  Deno.exit(status);
}
