/** `vnet server`: run a VNET server, the Host's or the Proxy's (or both roles at once). */
import {
  checkSettings,
  loadConfig,
  mergeSettings,
  resolveSettings,
  type Settings,
} from "../ops/config.ts";
import { messageOf } from "../errors.ts";
import { listDevices, systemInterfaces } from "../dataplane/interfaces.ts";
import { configureLog, log } from "../ops/log.ts";
import { type MetricsServer, processInfo, renderMetrics, serveMetrics } from "../ops/metrics.ts";
import { Server, type TlsFiles } from "../control/server.ts";
import { checkPrivateFile } from "../link/secret.ts";
import { COMMIT, VERSION } from "../ops/version.ts";
import { error, parseFlags, readTextFile, secretKey } from "./common.ts";

export const SERVER_HELP = `
vnet server: run a VNET server on a VM's Host or on the LAN's Proxy

Usage:
  vnet server --listen ADDR:PORT --secret-file FILE [options]
  vnet server --config FILE [options]
  vnet server --check-config [--config FILE] [options]

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
  --injector NAME       what writes frames onto interfaces: packet (the default on Linux: a
                        packet socket that hands TCP super-frames to the kernel whole, as
                        GSO, ~4x faster), libnet (libnet_adv_write_link: portable, the
                        default elsewhere) or pcap (pcap_inject)
  --keepalive SECONDS   peer link keepalive interval; 3 silent intervals drop the link (5)
  --state FILE          save handlers here and restore them when the server starts again
  --capture-buffer MIB  kernel capture buffer per interface, shared by the handlers that
                        capture there (default 32). With offloads on, libpcap's immediate
                        mode gives every frame a 64 KiB slot: 32 MiB holds ~500 frames
  --metrics ADDR:PORT   serve Prometheus metrics at http://ADDR:PORT/metrics (off by default;
                        e.g. 127.0.0.1:9477). Per handler: frames, bytes, drops by reason,
                        link up, reconnects, keepalive RTT, capture drops; and process memory,
                        uptime and build info
  --log-level LEVEL     debug, info (default), warn or error
  --log-json            log one JSON object per line instead of text
  --config FILE         read settings from a JSON file: the keys are the flags' names, e.g.
                          {"listen": "0.0.0.0:7000", "secret-file": "/etc/vnet/vnet.secret",
                           "state": "/var/lib/vnet/state.json", "log-json": true}
                        flags given too override the file; unknown keys are errors; relative
                        paths are relative to the file's directory
  --check-config        check the settings and the files they name (secret: exists, mode 0600,
                        long enough; TLS: certificates parse, key matches, signed by the CA,
                        not expired; state file readable), print "config ok" or one line per
                        problem, and exit (0 when ok)
  -h, --help            show this help

Permissions when run from source: deno run --allow-ffi --allow-net --allow-read --allow-write
  --allow-env --allow-run=ssh main.ts server ...  (--allow-read for the config, secret and
  certificate files, the libraries and /sys/class/net; --allow-write for the state file;
  --allow-run for links over ssh; -A is simpler). The binary from 'deno task compile' has
  exactly these built in.
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
      // No parseArgs defaults: a flag overrides the config file only when it is given.
      injector: { type: "string" },
      keepalive: { type: "string" },
      state: { type: "string" },
      "capture-buffer": { type: "string" },
      metrics: { type: "string" },
      config: { type: "string" },
      "check-config": { type: "boolean" },
    },
    SERVER_HELP,
    "server",
  );
  if (positionals.length > 0) {
    error(`unexpected argument '${positionals[0]}' (see 'vnet server --help')`);
  }

  if (values["check-config"]) {
    let problems: string[];
    try {
      const file: Settings = values.config ? loadConfig(values.config) : {};
      problems = await checkSettings(mergeSettings(file, values));
    } catch (e) {
      problems = [messageOf(e)]; // the file itself is bad: nothing else can be checked
    }
    if (problems.length === 0) {
      console.log("config ok");
      return;
    }
    for (const p of problems) console.error(`vnet: ${p}`);
    Deno.exit(1);
  }

  const settings = mergeSettings(values.config ? loadConfig(values.config) : {}, values);
  const { config, problems } = resolveSettings(settings);
  if (!config) {
    error(problems[0].includes("(see") ? problems[0] : `${problems[0]} (see 'vnet server --help')`);
  }
  configureLog({ level: config.logLevel, json: config.logJson });

  const key = await secretKey(config.secretFile);
  const server = new Server({
    listen: config.listen,
    key,
    tls: tlsFiles(config.tls),
    ports: systemInterfaces({
      injector: config.injector,
      captureBufferBytes: config.captureBufferMiB * 1024 * 1024,
    }),
    listDevices,
    log,
    keepaliveMs: config.keepaliveSeconds * 1000,
    statePath: config.state,
  });
  let metrics: MetricsServer | null = null;
  if (config.metrics) {
    metrics = serveMetrics(
      config.metrics,
      () => renderMetrics(server.list(), processInfo(VERSION, COMMIT)),
      log,
    );
  }
  server.start();

  const { promise: stopped, resolve: stop } = Promise.withResolvers<string>();
  for (const signal of ["SIGINT", "SIGTERM"] as const) {
    Deno.addSignalListener(signal, () => stop(signal));
  }
  const signal = await stopped;
  log.info("shutting down", { signal });
  await metrics?.shutdown();
  await server.stop();
  Deno.exit(0);
}

function tlsFiles(
  files: { cert: string; key: string; ca: string } | undefined,
): TlsFiles | undefined {
  if (!files) return undefined;
  checkPrivateFile(files.key, "TLS key");
  return {
    cert: readTextFile(files.cert, "TLS certificate"),
    key: readTextFile(files.key, "TLS key"),
    ca: readTextFile(files.ca, "TLS CA"),
  };
}
