/**
 * The listening socket, hardened: nothing a stranger does may stop it accepting.
 *
 * 1. Accept: a plain server on a socket of its own (src/io/tcp_socket.ts), whose connections
 *    are our own sockets from the start (src/link/socket_stream.ts); a TLS server through
 *    Deno.listenTls, the runtime's (rustls). Errors of one connection (ECONNABORTED, ENOTCONN, a
 *    reset before accept) are logged and skipped; resource errors (EMFILE, ENFILE, ENOBUFS,
 *    ENOMEM) back off from 5 ms to 1 s, as Go's net/http does, and accepting resumes when the
 *    resource is back.
 * 2. Admit. At most `maxHandshakes` connections may be unauthenticated at once, and at most
 *    `maxPerAddress` from one address. A newcomer over the per-address limit displaces that
 *    address's oldest; a newcomer when all slots are full displaces the oldest connection of
 *    the address holding most (OpenSSH's MaxStartups spirit: a flood from a few addresses
 *    churns its own slots, and everyone else still gets in).
 * 3. Authenticate: TLS (if on), the handshake, and a dialling server's certificate proof.
 *    Every refused, failed, displaced or timed-out connection is closed at once, releasing its
 *    fd: a plain one's is ours to close. A TLS connection whose handshake is pending is also
 *    ended by the kernel (socket_abort.ts): the runtime keeps its socket after `close()`, so
 *    without that a silent TLS peer would hold its fd until it left, slots or not.
 * 4. Hand the authenticated connection to the server, which caps how many it keeps.
 */
import { formatHostPort, type HostPort } from "../addr.ts";
import { ErrorCode, messageOf, VnetError } from "../errors.ts";
import { listenTcp } from "../io/tcp_socket.ts";
import { type ConnectionKind, handshake, HANDSHAKE_TIMEOUT_MS } from "../link/auth.ts";
import { checkProof } from "../link/peer_cert.ts";
import { abortSocket } from "../link/socket_abort.ts";
import { SocketStream } from "../link/socket_stream.ts";
import { closeQuietly, type Stream, withTimeout, writeAll } from "../link/stream.ts";
import { encodeMessage, MessageReader, MessageType } from "../link/wire.ts";
import { type Fields, type Logger } from "../log.ts";

export interface TlsFiles {
  /** PEM certificate chain and key this server presents. */
  cert: string;
  key: string;
  /** PEM CA that signs the peers' certificates; peers are verified against it. */
  ca: string;
}

export interface Accepted {
  /** A Deno.TlsConn (TLS), or a SocketStream over our own socket (plain). */
  conn: Stream;
  reader: MessageReader;
  kind: "control" | "peer";
  remote: string;
  /** This end's IP address, the one the connection came in on. */
  local: string;
  /** The subject of a dialling server's certificate (TLS peers), for logs. */
  cert: string;
  /** The handshake's secret of this connection (auth.ts). */
  secret: Uint8Array;
}

interface AcceptorOptions {
  listen: HostPort;
  key: CryptoKey;
  tls?: TlsFiles;
  log: Logger;
  maxHandshakes: number;
  maxPerAddress: number;
  handshakeTimeoutMs?: number;
  onAccepted(accepted: Accepted): void;
  /** A connection was refused or displaced, and why (for the event log). */
  onRefused(remote: string, reason: string): void;
}

const RESOURCE_ERRORS = new Set(["EMFILE", "ENFILE", "ENOBUFS", "ENOMEM"]);
const MAX_BACKOFF_MS = 1_000;

/** A connection as it came in: its stream and what is known of its two ends. */
interface Incoming {
  conn: Stream;
  /** The other end; null if it reset before its address could be read. */
  remote: HostPort | null;
  /** This end's IP address ("" if unknown). */
  local: string;
  /** A TLS connection's two endpoints, by which it is ended (see the top). */
  endpoints?: { local: Deno.NetAddr; remote: Deno.NetAddr };
}

/** Where connections come from: our own listening socket, or Deno's TLS listener. */
interface Listener {
  /** The next connection; throws for a failed accept (`code`: the errno's name). */
  accept(): Promise<Incoming>;
  close(): void;
}

/** A plain TCP listener of our own: each connection's socket is ours (socket_stream.ts). */
async function plainListener(listen: HostPort): Promise<Listener> {
  const listener = await listenTcp(listen.hostname, listen.port);
  return {
    accept: async () => {
      const { fd, local, remote } = await listener.accept();
      return { conn: new SocketStream(fd), remote, local: local.hostname };
    },
    close: () => listener.close(),
  };
}

/** Deno's TLS listener (the record layer is rustls'): the runtime keeps these sockets. */
function tlsListener(listen: HostPort, tls: TlsFiles): Listener {
  const listener = Deno.listenTls({
    hostname: listen.hostname,
    port: listen.port,
    cert: tls.cert,
    key: tls.key,
  });
  return {
    accept: async () => {
      const conn = await listener.accept();
      try {
        const local = conn.localAddr, remote = conn.remoteAddr;
        return { conn, remote, local: local.hostname, endpoints: { local, remote } };
      } catch {
        return { conn, remote: null, local: "" }; // reset already: it fails in the handshake
      }
    },
    close: () => listener.close(),
  };
}

interface Pending {
  conn: Stream;
  address: string;
  since: number;
  /**
   * Its two endpoints, read on arrival, while its TLS handshake is pending: the socket is ended
   * by them (see the top). Once the handshake is done, `close()` closes it.
   */
  endpoints?: { local: Deno.NetAddr; remote: Deno.NetAddr };
  /** Closed for a newcomer: counted and reported then, not again when its handshake fails. */
  displaced?: boolean;
}

export class Acceptor {
  readonly #options: AcceptorOptions;
  readonly #log: Logger;
  /** Whether the failure to end a TLS handshake cut short was logged (once is enough). */
  #abortWarned = false;
  #listener: Listener | null = null;
  #closed = false;
  /** Unauthenticated connections, oldest first, and how many each address holds. */
  readonly #pending = new Set<Pending>();
  readonly #perAddress = new Map<string, number>();
  #lastLog = new Map<string, number>();
  /** Counters for list/metrics and the tests. */
  readonly stats = { accepted: 0, displaced: 0, refused: 0, acceptErrors: 0 };

  constructor(options: AcceptorOptions) {
    this.#options = options;
    this.#log = options.log;
  }

  get address(): string {
    return formatHostPort(this.#options.listen);
  }

  /** Binds the socket (throws a VnetError if it cannot) and starts accepting. */
  /**
   * Binds the listening socket: a port in use fails here, before the server restores anything.
   * Connections wait in the kernel's backlog until `accept()`.
   */
  async listen(): Promise<void> {
    const { listen, tls } = this.#options;
    try {
      this.#listener = tls ? tlsListener(listen, tls) : await plainListener(listen);
    } catch (e) {
      throw new VnetError(`cannot listen on ${this.address}: ${messageOf(e)}`, {
        code: ErrorCode.System,
        cause: e,
      });
    }
  }

  /** Takes connections from now on (after `listen()`). */
  accept(): void {
    if (!this.#listener) throw new Error("accept() before listen()");
    this.#log.info("server listening", { addr: this.address, tls: Boolean(this.#options.tls) });
    this.#loop(this.#listener);
  }

  close(): void {
    this.#closed = true;
    closeQuietly(this.#listener ?? undefined);
    for (const p of this.#pending) this.#drop(p);
  }

  /** Closes an unauthenticated connection so that its fd is released, TLS or not. */
  #drop(p: Pending): void {
    closeQuietly(p.conn);
    if (!p.endpoints) return;
    const unable = abortSocket(p.endpoints.local, p.endpoints.remote);
    if (unable !== null && !this.#abortWarned) {
      this.#abortWarned = true;
      this.#log.warn("cannot end TLS handshakes cut short: a silent peer keeps its fd", {
        reason: unable,
      });
    }
  }

  async #loop(listener: Listener): Promise<void> {
    let backoff = 0;
    while (!this.#closed) {
      let incoming: Incoming;
      try {
        incoming = await listener.accept();
        backoff = 0;
      } catch (e) {
        if (this.#closed || e instanceof Deno.errors.BadResource) break;
        this.stats.acceptErrors++;
        const code = (e as { code?: string }).code ?? "";
        if (RESOURCE_ERRORS.has(code)) {
          backoff = Math.min(MAX_BACKOFF_MS, backoff ? backoff * 2 : 5);
          this.#rateLimited("accept", "warn", "accept failed, backing off", {
            error: messageOf(e),
            backoffMs: backoff,
          });
          await new Promise((r) => setTimeout(r, backoff));
        } else {
          this.#rateLimited("accept-one", "debug", "accept failed for one connection", {
            error: messageOf(e),
          });
        }
        continue;
      }
      this.#admit(incoming);
    }
    this.#log.debug("accept loop stopped");
  }

  #admit({ conn, remote: from, local, endpoints }: Incoming): void {
    const address = from?.hostname ?? "unknown";
    const remote = from ? formatHostPort(from) : "unknown";
    const { maxHandshakes, maxPerAddress } = this.#options;
    const mine = this.#perAddress.get(address) ?? 0;
    const victim = mine >= maxPerAddress
      ? this.#oldestOf(address)
      : this.#pending.size >= maxHandshakes
      ? this.#oldestOf(this.#busiestAddress())
      : undefined;
    if (victim) {
      this.stats.displaced++;
      this.#rateLimited(
        "displace",
        "warn",
        "too many connections in handshake, dropping the oldest",
        {
          remote,
          dropped: victim.address,
        },
      );
      this.#options.onRefused(victim.address, "displaced: too many unauthenticated connections");
      victim.displaced = true;
      this.#drop(victim);
      this.#release(victim);
    }
    const pending: Pending = { conn, address, since: Date.now(), endpoints };
    this.#pending.add(pending);
    this.#perAddress.set(address, (this.#perAddress.get(address) ?? 0) + 1);
    this.stats.accepted++;
    this.#authenticate(pending, remote, local).finally(() => this.#release(pending));
  }

  #release(p: Pending): void {
    if (!this.#pending.delete(p)) return;
    const n = (this.#perAddress.get(p.address) ?? 1) - 1;
    if (n > 0) this.#perAddress.set(p.address, n);
    else this.#perAddress.delete(p.address);
  }

  #oldestOf(address: string): Pending | undefined {
    for (const p of this.#pending) if (p.address === address) return p; // insertion order
    return undefined;
  }

  #busiestAddress(): string {
    let best = "", most = -1;
    for (const [address, n] of this.#perAddress) {
      if (n > most) [best, most] = [address, n];
    }
    return best;
  }

  async #authenticate(pending: Pending, remote: string, local: string): Promise<void> {
    const conn = pending.conn;
    const tls = this.#options.tls;
    const timeoutMs = this.#options.handshakeTimeoutMs ?? HANDSHAKE_TIMEOUT_MS;
    const reader = new MessageReader(conn);
    let kind: ConnectionKind, cert = "", secret: Uint8Array;
    try {
      if (tls) {
        await withTimeout(
          (conn as Deno.TlsConn).handshake(),
          timeoutMs,
          () => "TLS handshake timed out",
        );
        // The runtime closes this socket itself now; ending it too would reset what is still
        // to be sent (an error for the dialler).
        pending.endpoints = undefined;
      }
      const done = await handshake(conn, reader, {
        key: this.#options.key,
        side: "acceptor",
        kind: "acceptor",
        timeoutMs,
      });
      kind = done.kind;
      secret = done.secret;
      if (kind !== "control" && kind !== "peer") {
        throw new VnetError(`unexpected kind ${kind}`, { code: ErrorCode.Protocol });
      }
      // With TLS, a dialling server must also prove the certificate it holds (peer_cert.ts).
      if (tls && kind === "peer") cert = await this.#checkPeerCertificate(conn, reader, done);
    } catch (e) {
      this.#drop(pending);
      if (pending.displaced) return;
      this.stats.refused++;
      this.#rateLimited(`refused ${remote}`, "warn", "connection refused", {
        remote,
        reason: messageOf(e),
      });
      this.#options.onRefused(remote, messageOf(e));
      return;
    }
    if (this.#closed) return closeQuietly(conn);
    this.#options.onAccepted({ conn, reader, kind, remote, local, cert, secret });
  }

  /** Reads the dialler's certificate proof; on a bad one, tells it why and throws. */
  async #checkPeerCertificate(
    conn: Stream,
    reader: MessageReader,
    nonces: { own: Uint8Array; peer: Uint8Array },
  ): Promise<string> {
    const m = await withTimeout(reader.message(), 10_000, () => "no certificate proof in time");
    try {
      if (m?.type !== MessageType.CertProof) {
        throw new VnetError(
          "the dialling server proved no certificate (give it --tls-cert/--tls-key/--tls-ca)",
          { code: ErrorCode.Tls },
        );
      }
      return await checkProof(m.payload, this.#options.tls!.ca, nonces.peer, nonces.own);
    } catch (e) {
      const text = `certificate refused: ${messageOf(e)}`;
      await writeAll(conn, encodeMessage(MessageType.Error, new TextEncoder().encode(text)))
        .catch(() => {});
      throw new VnetError(text, { code: ErrorCode.Tls, cause: e });
    }
  }

  /** Logs at most once per 5 s per key: a flood must not flood the log too. */
  #rateLimited(
    key: string,
    level: "debug" | "warn",
    message: string,
    fields: Fields,
  ): void {
    const now = Date.now();
    if (now - (this.#lastLog.get(key) ?? 0) < 5_000) return;
    if (this.#lastLog.size > 1_000) this.#lastLog = new Map();
    this.#lastLog.set(key, now);
    this.#log[level](message, fields);
  }
}
