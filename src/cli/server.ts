/** `vnet server`: run a VNET server, the Host's or the Proxy's (or both roles at once). */
import { raiseOpenFileLimit } from "../../ffi/libc.ts";
import {
  checkSettings,
  loadConfig,
  loadMetricsToken,
  mergeSettings,
  resolveSettings,
  SERVER_FLAGS,
  type Settings,
  systemdNotes,
} from "./config.ts";
import { ErrorCode, messageOf, VnetError } from "../errors.ts";
import { listDevices } from "../dataplane/interfaces.ts";
import { WorkerForwarder } from "../dataplane/worker_data_path.ts";
import { configureLog, log } from "../log.ts";
import { type MetricsServer, processInfo, renderMetrics, serveMetrics } from "../ops/metrics.ts";
import { Server } from "../control/server.ts";
import { type TlsFiles } from "../control/acceptor.ts";
import { checkPrivateFile } from "../link/secret.ts";
import { COMMIT, VERSION } from "../version.ts";
import { buildStatus } from "../ops/status_page.ts";
import { privilegeProblem } from "../ops/sysinfo.ts";
import { noPositionals, optionsHelp, parseFlags, readTextFile, secretKey } from "./common.ts";

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
${optionsHelp(SERVER_FLAGS)}

Permissions when run from source: deno run --allow-ffi --allow-net --allow-read --allow-write
  --allow-env --allow-run=ssh main.ts server ...  (--allow-read for the config, secret and
  certificate files, the libraries and /sys/class/net; --allow-write for the state file;
  --allow-run for links over ssh; -A is simpler). The binary from 'deno task compile' has
  exactly these built in.
`;

/** parseArgs options made from SERVER_FLAGS: numbers arrive as text, as the file may give them. */
const serverOptions = Object.fromEntries(
  SERVER_FLAGS.map((f) => [f.name, {
    type: f.type === "boolean" ? "boolean" : "string",
    ...("short" in f ? { short: f.short } : {}),
    ...("repeatable" in f ? { multiple: true } : {}),
  }]),
) as {
  [F in typeof SERVER_FLAGS[number] as F["name"]]: {
    type: F["type"] extends "boolean" ? "boolean" : "string";
  };
};

export async function serverCommand(args: string[]): Promise<number> {
  // No parseArgs defaults: a flag overrides the config file only when it is given.
  const parsed = parseFlags(args, serverOptions, SERVER_HELP, "server");
  if (!parsed) return 0;
  const { values, positionals } = parsed;
  noPositionals(positionals, "server");
  // A repeated flag (--metrics-host) is one comma-separated setting, as in a config file.
  for (const [name, v] of Object.entries(values)) {
    if (Array.isArray(v)) (values as Record<string, unknown>)[name] = v.join(",");
  }

  if (values["check-config"]) {
    let problems: string[];
    try {
      const file: Settings = values.config ? loadConfig(values.config) : {};
      const settings = mergeSettings(file, values);
      problems = await checkSettings(settings);
      for (const { note } of systemdNotes(settings)) console.error(`vnet: note: ${note}`);
    } catch (e) {
      problems = [messageOf(e)]; // the file itself is bad: nothing else can be checked
    }
    if (problems.length === 0) {
      console.log("config ok");
      return 0;
    }
    for (const p of problems) console.error(`vnet: ${p}`);
    return 1;
  }

  const settings = mergeSettings(values.config ? loadConfig(values.config) : {}, values);
  const { config, problems } = resolveSettings(settings);
  if (!config) {
    throw new VnetError(
      problems[0].includes("(see") ? problems[0] : `${problems[0]} (see 'vnet server --help')`,
    );
  }
  configureLog({ level: config.logLevel, json: config.logJson });
  // One fd per connection: a flood reaches a soft limit of 1024 (systemd's default) at once.
  const fds = raiseOpenFileLimit();
  if (fds && fds.raisedTo !== fds.soft) {
    log.info("open file limit raised", { from: Number(fds.soft), to: Number(fds.raisedTo) });
  }
  // Read before anything starts, so that a bad token file stops the start as a bad secret does.
  const metricsToken = config.metricsTokenFile
    ? loadMetricsToken(config.metricsTokenFile)
    : undefined;

  const key = await secretKey(config.secretFile);
  const tls = tlsFiles(config.tls);
  // Every handler captures and injects on this server (Host and Proxy ends alike; there is no
  // relay-only role), so a server without the privileges could only fail at each create.
  const unprivileged = privilegeProblem();
  if (unprivileged) throw new VnetError(unprivileged, { code: ErrorCode.System });
  const { promise: stopped, resolve: stop } = Promise.withResolvers<string>();
  // The data path runs on a worker of its own (issue 17); without it nothing is forwarded, so a
  // worker that fails stops the server, saying why, with a non-zero exit.
  let dataPathFailed: string | null = null;
  let forwarder: WorkerForwarder | null = null;
  const server = new Server({
    listen: config.listen,
    key,
    tls,
    forwarder: (hooks) =>
      forwarder = new WorkerForwarder(
        {
          injector: config.injector,
          captureBufferBytes: config.captureBufferMiB * 1024 * 1024,
        },
        hooks,
        (reason) => {
          log.error("the data path failed; stopping", { reason });
          dataPathFailed ??= reason;
          stop("data path failed");
        },
      ),
    listDevices,
    log,
    keepaliveMs: config.keepaliveSeconds * 1000,
    statePath: config.state,
    maxHandshakes: config.maxHandshakes,
    maxHandshakesPerAddress: config.maxHandshakesPerAddress,
    maxConnections: config.maxConnections,
    allowLiveMac: config.allowLiveMac,
    allowMacs: config.allowMacs,
    direct: config.direct,
    vxlanPort: config.vxlanPort,
    udpPort: config.udpPort,
    transport: config.transport,
  });
  let metrics: MetricsServer | null = null;
  if (config.metrics) {
    metrics = serveMetrics(config.metrics, {
      metrics: async () =>
        renderMetrics(await server.list(), processInfo(VERSION, COMMIT), await server.udpPort()),
      status: async () =>
        buildStatus(await server.list(), server.events.recent(), processInfo(VERSION, COMMIT)),
      token: metricsToken,
      hosts: config.metricsHosts,
    }, log);
  }
  await forwarder!.ready;
  log.info("data path started", { thread: "worker", injector: config.injector });
  await server.start();
  const signals = ["SIGINT", "SIGTERM"] as const;
  const listeners = signals.map((signal) => {
    const listener = () => stop(signal);
    Deno.addSignalListener(signal, listener);
    return listener;
  });
  const signal = await stopped;
  log.info("shutting down", { signal });
  await metrics?.shutdown();
  await server.stop();
  signals.forEach((s, i) => Deno.removeSignalListener(s, listeners[i]));
  return dataPathFailed === null ? 0 : 1;
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
