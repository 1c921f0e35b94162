/**
 * Opening links: TCP (then TLS) or `ssh -W`, the handshake, and for a server dialling a peer
 * over TLS the proof of its certificate. Every failure is one VnetError whose code says what
 * kind it is, so callers choose their advice by code:
 *   Unreachable  nothing answered (refused, timed out, no route, ssh failed)
 *   Tls          the certificate was refused, or one side speaks TLS and the other not
 *   Auth         the other end holds another secret
 *   Protocol     it answered, but not as a vnet server of this version
 */
import { formatHostPort, type HostPort } from "../addr.ts";
import { codeOf, ErrorCode, messageOf, VnetError } from "../errors.ts";
import { connectTcp } from "../io/tcp_socket.ts";
import { type Logger } from "../log.ts";
import { handshake } from "./auth.ts";
import { Link, type LinkEvents, type SocketOwner } from "./link.ts";
import { makeProof, type PeerIdentity } from "./peer_cert.ts";
import { SocketStream } from "./socket_stream.ts";
import { type SshOptions, sshStream } from "./ssh.ts";
import { closeQuietly, type Stream, withTimeout, writeAll } from "./stream.ts";
import { encodeMessage, MessageReader, MessageType } from "./wire.ts";

interface DialOptions {
  key: CryptoKey;
  kind: "control" | "peer";
  /** PEM of the CA that signs the other end's certificate; TLS is used iff this is set. */
  tlsCa?: string;
  timeoutMs?: number;
  log: Logger;
  events: LinkEvents;
  keepaliveMs?: number;
  /** Reach the other end through `ssh -W` on this gateway instead of connecting directly. */
  ssh?: SshOptions;
  /** A server dialling a peer over TLS proves its certificate with this (peer_cert.ts). */
  identity?: PeerIdentity;
  /** Takes a plain link's socket over (the data-path worker): see Link. */
  socketOwner?: SocketOwner;
}

/** Connects to `addr`, runs the handshake and returns the open Link. Throws a VnetError. */
export async function dial(addr: HostPort, options: DialOptions): Promise<Link> {
  if (options.ssh) return await dialSsh(addr, options.ssh, options);
  const where = formatHostPort(addr);
  const timeoutMs = options.timeoutMs ?? 10_000;
  let conn: Stream | undefined;
  /** This end's IP address. */
  let local: string;
  try {
    if (options.tlsCa) {
      // TCP first, with Nagle off (latency of small frames, and of the tail of each batch),
      // then TLS on top: Deno's TLS connections cannot set TCP_NODELAY themselves.
      const connecting = Deno.connect({ hostname: addr.hostname, port: addr.port });
      // A connect that completes after the timeout is closed, not leaked.
      let gaveUp = false;
      connecting.then((c) => gaveUp && c.close(), () => {});
      const tcp = await withTimeout(connecting, timeoutMs, () => {
        gaveUp = true;
        return `timed out after ${timeoutMs} ms`;
      });
      tcp.setNoDelay(true);
      conn = tcp;
      local = tcp.localAddr.hostname;
      const tls = await Deno.startTls(tcp, { hostname: addr.hostname, caCerts: [options.tlsCa] });
      conn = tls;
      await withTimeout(
        tls.handshake(),
        timeoutMs,
        () => `TLS handshake timed out after ${timeoutMs} ms`,
      );
    } else {
      // A plain link's socket is our own, served in the data path's wait (socket_stream.ts).
      const tcp = await connectTcp(addr.hostname, addr.port, timeoutMs);
      conn = new SocketStream(tcp.fd);
      local = tcp.local.hostname;
    }
  } catch (e) {
    closeQuietly(conn);
    const [code, why] = explainConnectError(e, conn !== undefined);
    throw new VnetError(`cannot connect to ${where}: ${why}`, { code, cause: e });
  }
  const reader = new MessageReader(conn);
  let secret: Uint8Array;
  try {
    const done = await handshake(conn, reader, {
      key: options.key,
      side: "dialer",
      kind: options.kind,
    });
    secret = done.secret;
    if (options.tlsCa && options.identity && options.kind === "peer") {
      const proof = await makeProof(options.identity, done.own, done.peer);
      await writeAll(conn, encodeMessage(MessageType.CertProof, proof));
    }
  } catch (e) {
    closeQuietly(conn);
    const why = messageOf(e);
    const code = codeOf(e) ?? ErrorCode.Protocol;
    if (code === ErrorCode.Auth) throw new VnetError(`${where}: ${why}`, { code, cause: e });
    const hint = options.tlsCa || code !== ErrorCode.Protocol
      ? ""
      : " (if that server uses TLS, give --tls-ca with the CA that signed its certificate)";
    throw new VnetError(`handshake with ${where} failed: ${why}${hint}`, { code, cause: e });
  }
  return new Link(conn, reader, {
    remote: where,
    local,
    tls: Boolean(options.tlsCa),
    log: options.log,
    events: options.events,
    keepaliveMs: options.keepaliveMs,
    socketOwner: options.socketOwner,
    role: "dialer",
    secret,
  });
}

/** Dials through `ssh -W`; SSH encrypts and authenticates the gateway, so no TLS on top. */
async function dialSsh(addr: HostPort, ssh: SshOptions, options: DialOptions): Promise<Link> {
  const where = `${formatHostPort(addr)} through ssh ${ssh.gateway}`;
  const stream = sshStream(addr, ssh);
  const reader = new MessageReader(stream);
  try {
    await handshake(stream, reader, {
      key: options.key,
      side: "dialer",
      kind: options.kind,
      timeoutMs: options.timeoutMs,
    });
  } catch (e) {
    stream.close();
    const said = await stream.failure();
    // What ssh said on stderr is the reason when it died; else the handshake's own error.
    const code = said ? ErrorCode.Unreachable : codeOf(e) ?? ErrorCode.Unreachable;
    throw new VnetError(`cannot reach ${where}: ${said || messageOf(e)}`, { code, cause: e });
  }
  return new Link(stream, reader, {
    remote: where,
    viaSsh: true,
    tls: false,
    log: options.log,
    events: options.events,
    keepaliveMs: options.keepaliveMs,
  });
}

/**
 * What went wrong connecting, as a code and words. Deno reports TLS verification failures
 * only as text (rustls' names), so those names are read here, in one place, to pick the
 * words; the code is Tls for any failure after TCP connected.
 */
function explainConnectError(e: unknown, tcpConnected: boolean): [ErrorCode, string] {
  if (e instanceof Deno.errors.ConnectionRefused) {
    return [ErrorCode.Unreachable, "connection refused (is vnet server running there?)"];
  }
  if (e instanceof Deno.errors.TimedOut) {
    return [tcpConnected ? ErrorCode.Tls : ErrorCode.Unreachable, messageOf(e)];
  }
  const text = messageOf(e);
  if (!tcpConnected) {
    // An error nobody expects (ENOBUFS, EPERM from a firewall...) says which call failed.
    const syscall = (e as { syscall?: unknown } | null)?.syscall;
    return [ErrorCode.Unreachable, typeof syscall === "string" ? `${syscall}: ${text}` : text];
  }
  if (/InvalidContentType|CorruptMessage|received corrupt message/i.test(text)) {
    return [
      ErrorCode.Tls,
      `not a TLS server: ${text} (drop --tls-ca, or give that server --tls-cert/--tls-key)`,
    ];
  }
  if (!/UnknownIssuer|invalid peer certificate|certificate/i.test(text)) {
    return [ErrorCode.Tls, text];
  }
  const why = /UnknownIssuer/.test(text)
    ? "not issued by the CA given with --tls-ca; "
    : /CaUsedAsEndEntity/.test(text)
    ? "it is a CA (self-signed) certificate, not one issued by your CA; "
    : /expired/i.test(text)
    ? "it has expired; "
    : "";
  return [
    ErrorCode.Tls,
    `the server's TLS certificate was refused: ${why}${text} (check --tls-ca and the name the certificate was issued for)`,
  ];
}
