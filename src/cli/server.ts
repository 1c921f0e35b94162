/** `vnet server`: run a VNET server, the Host's or the Proxy's (or both roles at once). */
import { parseHostPort } from "../addr.ts";
import { VnetError } from "../errors.ts";
import { listDevices, systemInterfaces } from "../interfaces.ts";
import { log } from "../log.ts";
import { Server, type TlsFiles } from "../server.ts";
import { checkPrivateFile } from "../secret.ts";
import { error, parseFlags, readTextFile, required, secretKey } from "./common.ts";

export const SERVER_HELP = `
vnet server: run a VNET server on a VM's Host or on the LAN's Proxy

Usage:
  vnet server --listen ADDR:PORT --secret-file FILE [options]

A server waits for clients and other servers. It holds any number of handlers, each in the
Host role (captures frames from the VMs' MACs on the VMs' interface) or the Proxy role
(captures frames to those MACs, and broadcasts, on the LAN interface). Needs root, or
CAP_NET_RAW and CAP_NET_ADMIN, to capture and inject.

Options:
  --listen ADDR:PORT    where clients and peer servers connect (e.g. 0.0.0.0:7000, [::]:443)
  --secret-file FILE    the shared secret (mode 0600); or set VNET_SECRET. Every server and
                        client of one deployment uses the same secret. Make one with:
                          head -c 32 /dev/urandom | base64 > vnet.secret; chmod 600 vnet.secret
  --tls-cert FILE       this server's certificate (PEM); with --tls-key and --tls-ca, all
  --tls-key FILE        connections to and from this server use TLS, and peers' certificates
  --tls-ca FILE         are verified against the CA (see 'vnet cert --help')
  --injector NAME       libnet (default) or pcap: what writes frames onto interfaces
  --keepalive SECONDS   peer link keepalive interval; 3 silent intervals drop the link (5)
  --state FILE          save handlers here and restore them when the server starts again
  --capture-buffer MIB  kernel capture buffer per handler (default 32). With offloads on,
                        libpcap's immediate mode gives every frame a 64 KiB slot, so 32 MiB
                        holds 512 frames; lower it when one server carries many handlers
  --log-level LEVEL     debug, info (default), warn or error
  --log-json            log one JSON object per line instead of text
  -h, --help            show this help

Permissions when run from source: deno run --allow-ffi --allow-net --allow-read --allow-env
  --allow-sys main.ts server ...  (--allow-read for the secret and certificate files, the
  libraries and /sys/class/net; -A is simpler).
`;

export async function serverCommand(args: string[]): Promise<void> {
  const { values, positionals } = parseFlags(
    args,
    {
      listen: { type: "string" },
      "secret-file": { type: "string" },
      "tls-cert": { type: "string" },
      "tls-key": { type: "string" },
      "tls-ca": { type: "string" },
      injector: { type: "string", default: "libnet" },
      keepalive: { type: "string", default: "5" },
      state: { type: "string" },
      "capture-buffer": { type: "string", default: "32" },
    },
    SERVER_HELP,
    "server",
  );
  if (positionals.length > 0) {
    error(`unexpected argument '${positionals[0]}' (see 'vnet server --help')`);
  }

  const listen = parseHostPort(required(values, "listen", "server"), "--listen");
  const key = await secretKey(values["secret-file"]);
  const injector = values.injector;
  if (injector !== "libnet" && injector !== "pcap") {
    error(`bad --injector '${injector}': libnet or pcap`);
  }
  const captureBuffer = Number(values["capture-buffer"]);
  if (!(captureBuffer >= 1 && captureBuffer <= 1024)) {
    error(`bad --capture-buffer '${values["capture-buffer"]}': MiB from 1 to 1024`);
  }
  const keepalive = Number(values.keepalive);
  if (!(keepalive > 0)) error(`bad --keepalive '${values.keepalive}': a number of seconds > 0`);

  const server = new Server({
    listen,
    key,
    tls: tlsFiles(values),
    ports: systemInterfaces({ injector, captureBufferBytes: captureBuffer * 1024 * 1024 }),
    listDevices,
    log,
    keepaliveMs: keepalive * 1000,
    statePath: values.state,
  });
  server.start();

  const { promise: stopped, resolve: stop } = Promise.withResolvers<string>();
  for (const signal of ["SIGINT", "SIGTERM"] as const) {
    Deno.addSignalListener(signal, () => stop(signal));
  }
  const signal = await stopped;
  log.info("shutting down", { signal });
  await server.stop();
  Deno.exit(0);
}

function tlsFiles(values: Record<string, unknown>): TlsFiles | undefined {
  const cert = values["tls-cert"] as string | undefined;
  const key = values["tls-key"] as string | undefined;
  const ca = values["tls-ca"] as string | undefined;
  if (!cert && !key && !ca) return undefined;
  if (!cert || !key || !ca) {
    throw new VnetError(
      "TLS needs all of --tls-cert, --tls-key and --tls-ca (see 'vnet cert --help' to make them)",
    );
  }
  checkPrivateFile(key, "TLS key");
  return {
    cert: readTextFile(cert, "TLS certificate"),
    key: readTextFile(key, "TLS key"),
    ca: readTextFile(ca, "TLS CA"),
  };
}
