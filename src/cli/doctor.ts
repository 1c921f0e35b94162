/** `vnet doctor`: checks this machine, and the path to a peer, for what a bridge needs. */
import dgram from "node:dgram";
import { lookup } from "node:dns/promises";
import { isIPv6 } from "node:net";
import { WorkerForwarder } from "../dataplane/worker_data_path.ts";
import { DEFAULT_INJECTOR } from "../dataplane/interfaces.ts";
import { formatHostPort, type HostPort, parseHostPort } from "../addr.ts";
import { VnetError } from "../errors.ts";
import { pcapLibVersion } from "../../ffi/libpcap.ts";
import { PcapCapture } from "../dataplane/pcap_capture.ts";
import { SocketDiag } from "../io/sock_diag.ts";
import { libnetVersion } from "../../ffi/libnet.ts";
import { LIBPCAP, type LibrarySpec } from "../../ffi/load.ts";
import { importSecret } from "../link/auth.ts";
import { dial } from "../link/dial.ts";
import { configureLog, log, visibleJson } from "../log.ts";
import { exitCode, fetchCertificate, formatChecks, type Probes, runDoctor } from "../ops/doctor.ts";
import { parseIwInfo, parseOffloads } from "../ops/sysinfo.ts";
import { SECRET_ENV } from "../link/secret.ts";
import { VERSION } from "../version.ts";
import {
  absolutePath,
  noPositionals,
  type Options,
  parseFlags,
  readTextFile,
  within,
} from "./common.ts";

const DOCTOR_HELP = `
vnet doctor: check this machine, and the way to a peer, for what a bridge needs

Usage:
  vnet doctor [--dev DEV ...] [--peer ADDR:PORT [--peer-dev DEV]] [--secret-file FILE]
              [--tls-ca FILE] [--json]

Each check prints PASS, WARN or FAIL and one line saying what to do (INFO lines are facts).
Exit status: 0 all passed, 1 something FAILed, 2 only WARNings.

Checks:
  always          privileges (root, or CAP_NET_RAW and CAP_NET_ADMIN effective); libpcap and
                  libnet found, their versions and the override variables VNET_LIBPCAP and
                  VNET_LIBNET
  --dev DEV       (repeat) the device exists, is up, has carrier; a promiscuous capture
                  opens; MTU and offloads; whether it is a bridge port; a Wi-Fi client
                  interface FAILs (it cannot carry other MACs)
  --secret-file   the secret file is private (mode 0600) and usable; or VNET_SECRET
  --peer A:P      TCP reachability and its time; the handshake with the secret ("wrong
                  secret" said as such); with --tls-ca the peer's certificate: your CA,
                  its name, expiry, clock skew; the peer's version; whether UDP gets
                  to its UDP port and back; what carries its handlers' frames (UDP or
                  TCP, the UDP path's MTU and loss)
  --peer-dev DEV  the peer's device's MTU against the first --dev's

Options:
  --timeout SECONDS   for each peer step (default 5)
  --json              one JSON object: {"checks": [{status, name, message}], "exitCode": N}
  -h, --help          show this help
`;

/** The flags of `vnet doctor`: the parser's table, and shell completion's. */
export const DOCTOR_FLAGS = {
  dev: { type: "string", multiple: true },
  peer: { type: "string" },
  "peer-dev": { type: "string" },
  "secret-file": { type: "string" },
  "tls-ca": { type: "string" },
  timeout: { type: "string", default: "5" },
  json: { type: "boolean" },
} as const satisfies Options;

export async function doctorCommand(args: string[]): Promise<number> {
  // Link and library chatter would bury the checks; --log-level brings it back.
  configureLog({ level: "error" });
  const parsed = parseFlags(args, DOCTOR_FLAGS, DOCTOR_HELP, "doctor");
  if (!parsed) return 0; // --help
  const { values, positionals } = parsed;
  noPositionals(positionals, "doctor");
  const seconds = Number(values.timeout);
  if (!(seconds > 0 && seconds <= 300)) {
    throw new VnetError(`bad --timeout '${values.timeout}': seconds from 0 to 300`);
  }
  const tlsCaPath = absolutePath(values["tls-ca"]);
  const checks = await runDoctor({
    devs: values.dev ?? [],
    peer: values.peer ? parseHostPort(values.peer, "--peer") : undefined,
    peerDev: values["peer-dev"],
    secretFile: absolutePath(values["secret-file"]),
    tlsCa: tlsCaPath ? { path: tlsCaPath, pem: readTextFile(tlsCaPath, "TLS CA") } : undefined,
    version: VERSION,
    timeoutMs: seconds * 1000,
    envSecret: Deno.env.get(SECRET_ENV),
  }, systemProbes);
  const code = exitCode(checks);
  if (values.json) {
    console.log(visibleJson(JSON.stringify({ checks, exitCode: code }, null, 2)));
  } else {
    console.log(formatChecks(checks));
  }
  return code;
}

async function runText(cmd: string, args: string[]): Promise<string | null> {
  try {
    const out = await new Deno.Command(cmd, { args, stdout: "piped", stderr: "null" }).output();
    return out.success ? new TextDecoder().decode(out.stdout) : null;
  } catch {
    return null; // not installed
  }
}

/** The real system. */
const systemProbes: Probes = {
  libraryVersion(spec: LibrarySpec): string {
    return spec === LIBPCAP ? pcapLibVersion() : libnetVersion();
  },
  openPromiscuous(dev: string): void {
    // The data plane's own capture: the same checks (Ethernet) and the same one-line errors.
    new PcapCapture(dev, "", { snaplen: 256, bufferSize: 1 << 20 }).close();
  },
  async dataPathWorker(): Promise<void> {
    const worker = new WorkerForwarder(
      { injector: DEFAULT_INJECTOR },
      { frameOut: () => false, frameDropped: () => {}, event: () => {} },
      () => {},
    );
    try {
      await worker.ready;
    } finally {
      await worker.stop();
    }
  },
  async endConnection(): Promise<void> {
    if (Deno.build.os !== "linux") throw new Error("Linux only");
    const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
    try {
      const port = (listener.addr as Deno.NetAddr).port;
      const client = await Deno.connect({ hostname: "127.0.0.1", port });
      const server = await listener.accept();
      try {
        using diag = new SocketDiag();
        const local = server.localAddr as Deno.NetAddr;
        const outcome = diag.destroyTcp(local, server.remoteAddr as Deno.NetAddr);
        if (outcome === "gone") throw new Error("the kernel did not find the connection");
        if (outcome !== "destroyed") throw new Error(`SOCK_DESTROY: ${outcome.text}`);
      } finally {
        server.close();
        client.close();
      }
    } finally {
      listener.close();
    }
  },
  async wifiMode(dev) {
    const text = await runText("iw", ["dev", dev, "info"]);
    return text === null ? null : parseIwInfo(text);
  },
  async offloads(dev) {
    const text = await runText("ethtool", ["-k", dev]);
    return text === null ? null : parseOffloads(text);
  },
  async tcpConnect(addr, timeoutMs) {
    const t0 = performance.now();
    const connecting = Deno.connect({ hostname: addr.hostname, port: addr.port });
    let timer: ReturnType<typeof setTimeout> | undefined;
    let gaveUp = false;
    connecting.then((c) => gaveUp && c.close(), () => {});
    try {
      const conn = await Promise.race([
        connecting,
        new Promise<never>((_, reject) => {
          timer = setTimeout(() => {
            gaveUp = true;
            reject(new Deno.errors.TimedOut(`no answer in ${timeoutMs} ms`));
          }, timeoutMs);
        }),
      ]);
      const ms = performance.now() - t0;
      conn.close();
      return ms;
    } finally {
      clearTimeout(timer);
    }
  },
  tlsCertificate: fetchCertificate,
  udpEcho,
  async dialControl(addr, secret, tlsCa, timeoutMs) {
    // --timeout bounds the handshake too (dial's own limit for it is longer).
    const link = await within(
      timeoutMs,
      formatHostPort(addr),
      dial(addr, {
        key: await importSecret(secret),
        kind: "control",
        tlsCa,
        timeoutMs,
        log,
        events: {
          onRequest: () => Promise.reject(new VnetError("the doctor takes no requests")),
          onClose: () => {},
        },
      }),
    );
    return {
      request: (op, body = {}) => link.request(op, body, timeoutMs),
      close: () => link.close("doctor done"),
    };
  },
};

/** Probes sent, one each this often, until one comes back or the time is up. */
const UDP_PROBE_EVERY_MS = 250;

/** Probes.udpEcho: `datagram` to `addr` from a socket of its own, until it comes back. */
async function udpEcho(
  addr: HostPort,
  datagram: Uint8Array,
  timeoutMs: number,
): Promise<number | null> {
  const { address } = await lookup(addr.hostname);
  const socket = dgram.createSocket(isIPv6(address) ? "udp6" : "udp4");
  const t0 = performance.now();
  let sender: ReturnType<typeof setInterval> | undefined;
  let timer: ReturnType<typeof setTimeout> | undefined;
  try {
    return await new Promise<number | null>((resolve) => {
      socket.on("message", (msg, from) => {
        const same = from.address === address && from.port === addr.port &&
          msg.length === datagram.length && msg.every((b, i) => b === datagram[i]);
        if (same) resolve(performance.now() - t0);
      });
      // A send that fails (no route) is the same answer as silence, with its reason unheard.
      socket.on("error", () => resolve(null));
      const send = () => socket.send(datagram, addr.port, address, () => {});
      socket.bind(0, () => {
        send();
        sender = setInterval(send, UDP_PROBE_EVERY_MS);
      });
      timer = setTimeout(() => resolve(null), timeoutMs);
    });
  } finally {
    clearInterval(sender);
    clearTimeout(timer);
    socket.close();
  }
}
