/**
 * How two servers agree a link's UDP path (issue 18), over the link itself, which is
 * authenticated (and, with TLS, encrypted). The path's datagrams are udp_peers.ts's.
 *
 *   1. Once a peer link is up, the server that dialled offers: its UDP port, a keepalive token
 *      and a session id, and, on a TLS link, the AEADs it has and an ephemeral X25519 public
 *      key (request `udp`).
 *   2. The other server answers the same (the AEAD it chose), or port 0 when it has UDP off.
 *      Both derive the epoch's keys (link/udp/keys.ts: the exchange, mixed with the link's own
 *      handshake secret) and hand the path to the data path.
 *   3. The dialler starts a new epoch every REKEY_MS (request `udpRekey`), well before the
 *      session's 2 minutes: the acceptor installs the keys first, to open with, and seals with
 *      them once it sees the dialler use them.
 *
 * Each side also says that it completes the TCP and UDP checksums of the frames it is sent
 * (`completesChecksums`; every VNET does, in its injector's offload.ts), so the other may leave
 * them to it instead of summing each segment it cuts. An older VNET does not say so: its UDP path
 * is sent complete checksums, as before, and so is a kernel VXLAN tunnel, which is agreed no path
 * here. (A link's stream has always carried frames as they were captured, checksums partial or
 * not: every VNET completes them before it injects them.)
 *
 * A plain link gets a plain path (VXLAN): UDP is no less private than the link. A link through
 * `ssh -W` gets none: only SSH gets through there. A peer that does not know the request (an
 * older VNET) answers with an error: the link carries everything, as before.
 */
import { parseHostPort } from "../addr.ts";
import { ErrorCode, messageOf, VnetError } from "../errors.ts";
import { type Link } from "../link/link.ts";
import { type Logger } from "../log.ts";
import { type AeadName, agreeAead, supportedAeads } from "../link/udp/aead.ts";
import { deriveSessionKeys, EphemeralKeyPair, type SessionKeys } from "../link/udp/keys.ts";
import { type DataPath } from "../dataplane/data_path.ts";
import { fromBase64, toBase64, toWireKeys } from "../dataplane/forwarder_protocol.ts";

/** A new epoch this often (the session refuses keys older than 3 minutes). */
const REKEY_MS = 90_000;

/** What each side says of its end of the path (`udp` request and answer). */
export interface UdpOffer {
  /** Its UDP port; 0: it has no UDP path to give. */
  port: number;
  token: number;
  id: number;
  /** The dialler's AEADs, best first; the acceptor's choice. */
  aeads?: AeadName[];
  aead?: AeadName;
  /** The ephemeral X25519 public key (base64), on a TLS link. */
  public?: string;
  /** It completes the TCP and UDP checksums of the frames sent to it (offload.ts). */
  completesChecksums?: boolean;
}

interface Agreed {
  aead: AeadName | null;
  epoch: number;
  timer?: ReturnType<typeof setInterval>;
}

export class UdpTransport {
  readonly #agreed = new Map<Link, Agreed>();

  constructor(
    private readonly dataPath: DataPath,
    private readonly log: Logger,
    /** This server's UDP port for its links; 0: none. */
    readonly port: number,
  ) {}

  /**
   * For `vnet doctor --peer`: a token whose probe datagram the UDP port sends back (up to four
   * copies) within 10 s; port 0 when this server has no UDP port.
   */
  async probe(): Promise<{ port: number; token: number }> {
    if (this.port === 0) return { port: 0, token: 0 };
    const token = crypto.getRandomValues(new Uint32Array(1))[0];
    if (!await this.dataPath.udpProbe(token)) {
      throw new VnetError("too many UDP probes at once; try again in 10 s", {
        code: ErrorCode.Refused,
      });
    }
    return { port: this.port, token };
  }

  /** Whether `link` has a UDP path agreed. */
  has(link: Link): boolean {
    return this.#agreed.has(link);
  }

  /** The AEAD of `link`'s sealed UDP path; null: plain, or none. */
  aeadOf(link: Link): AeadName | null {
    return this.#agreed.get(link)?.aead ?? null;
  }

  /** The dialler's side: offers a path on a new link. Never throws: the link works without. */
  async offer(link: Link): Promise<void> {
    if (!this.#possible(link)) return;
    const sealed = link.tls;
    const ephemeral = sealed ? new EphemeralKeyPair() : null;
    const mine: UdpOffer = {
      port: this.port,
      token: randomId(),
      id: randomId(),
      completesChecksums: true,
      ...(ephemeral ? { aeads: supportedAeads(), public: toBase64(ephemeral.publicKey) } : {}),
    };
    try {
      const theirs = checkOffer(await link.request("udp", { ...mine }), sealed);
      if (theirs.port === 0) {
        this.log.info("the peer has UDP off: frames go by the link", { remote: link.remote });
        return;
      }
      const aead = sealed ? theirs.aead! : null;
      const keys = ephemeral
        ? this.#derive(link, "dialer", aead!, 0, ephemeral, theirs.public!)
        : null;
      const host = await peerAddress(link);
      await this.#open(link, host, mine, theirs, keys, aead);
      if (sealed) {
        const agreed = this.#agreed.get(link)!;
        agreed.timer = setInterval(() => this.#rekey(link), REKEY_MS);
        Deno.unrefTimer(agreed.timer);
      }
    } catch (e) {
      this.log.info("no UDP path: frames go by the link", {
        remote: link.remote,
        why: messageOf(e),
      });
    } finally {
      ephemeral?.destroy();
    }
  }

  /** The acceptor's side: answers an offer (`udp` request). */
  async answer(link: Link, body: Record<string, unknown>): Promise<UdpOffer> {
    const sealed = link.tls;
    const theirs = checkOffer(body, sealed);
    if (!this.#possible(link) || theirs.port === 0) return { port: 0, token: 0, id: 0 };
    const aead = sealed ? agreeAead(supportedAeads(), theirs.aeads ?? []) : null;
    if (sealed && !aead) return { port: 0, token: 0, id: 0 };
    const ephemeral = sealed ? new EphemeralKeyPair() : null;
    try {
      const mine: UdpOffer = {
        port: this.port,
        token: randomId(),
        id: randomId(),
        completesChecksums: true,
        ...(ephemeral ? { aead: aead!, public: toBase64(ephemeral.publicKey) } : {}),
      };
      const keys = ephemeral
        ? this.#derive(link, "acceptor", aead!, 0, ephemeral, theirs.public!)
        : null;
      await this.#open(link, await peerAddress(link), mine, theirs, keys, aead);
      return mine;
    } finally {
      ephemeral?.destroy();
    }
  }

  /** The acceptor's side of a new epoch (`udpRekey` request). */
  async answerRekey(link: Link, body: Record<string, unknown>): Promise<{ public: string }> {
    const agreed = this.#agreed.get(link);
    if (!agreed?.aead) throw refused("this link has no sealed UDP path");
    const epoch = body.epoch, peerPublic = body.public;
    if (epoch !== ((agreed.epoch + 1) & 0xff) || typeof peerPublic !== "string") {
      throw refused(`bad rekey: epoch ${String(epoch)} after ${agreed.epoch}`);
    }
    const ephemeral = new EphemeralKeyPair();
    try {
      const keys = this.#derive(link, "acceptor", agreed.aead, epoch, ephemeral, peerPublic);
      await this.dataPath.udpRekey(link, toWireKeys(keys), false);
      agreed.epoch = epoch;
      return { public: toBase64(ephemeral.publicKey) };
    } finally {
      ephemeral.destroy();
    }
  }

  /** The link closed: its path went with it (the forwarder's `unlink`). */
  forget(link: Link): void {
    const agreed = this.#agreed.get(link);
    if (agreed?.timer !== undefined) clearInterval(agreed.timer);
    this.#agreed.delete(link);
  }

  #possible(link: Link): boolean {
    // ssh: only SSH gets through. No handshake secret here: nothing to key a path with.
    return this.port !== 0 && link.isOpen && !link.viaSsh && link.secret !== null;
  }

  async #open(
    link: Link,
    host: string,
    mine: UdpOffer,
    theirs: UdpOffer,
    keys: SessionKeys | null,
    aead: AeadName | null,
  ): Promise<void> {
    const opened = await this.dataPath.udpOpen(link, {
      host,
      port: theirs.port,
      keys: keys && toWireKeys(keys),
      localId: mine.id,
      peerId: theirs.id,
      token: mine.token,
      peerToken: theirs.token,
      peerCompletesChecksums: theirs.completesChecksums === true,
    });
    if (!opened) throw new VnetError("the data path has no UDP socket");
    this.#agreed.set(link, { aead, epoch: 0 });
    this.log.info("UDP path agreed", {
      remote: link.remote,
      peer: `${host}:${theirs.port}`,
      sealed: aead ?? "no (plain VXLAN)",
    });
  }

  async #rekey(link: Link): Promise<void> {
    const agreed = this.#agreed.get(link);
    if (!agreed?.aead || !link.isOpen) return this.forget(link);
    const epoch = (agreed.epoch + 1) & 0xff;
    const ephemeral = new EphemeralKeyPair();
    try {
      const answer = await link.request("udpRekey", {
        epoch,
        public: toBase64(ephemeral.publicKey),
      });
      if (typeof answer.public !== "string") throw refused("no public key in the answer");
      const keys = this.#derive(link, "dialer", agreed.aead, epoch, ephemeral, answer.public);
      await this.dataPath.udpRekey(link, toWireKeys(keys), true);
      agreed.epoch = epoch;
    } catch (e) {
      // The old keys hold for 3 minutes; the next try comes before that.
      this.log.warn("UDP rekey failed", { remote: link.remote, why: messageOf(e) });
    } finally {
      ephemeral.destroy();
    }
  }

  #derive(
    link: Link,
    role: "dialer" | "acceptor",
    aead: AeadName,
    epoch: number,
    ephemeral: EphemeralKeyPair,
    peerPublic: string,
  ): SessionKeys {
    return deriveSessionKeys({
      role,
      aead,
      epoch,
      linkSecret: link.secret!,
      ephemeral,
      peerPublic: fromBase64(peerPublic),
    });
  }
}

/** Checks an offer or answer from the peer; a bad one is a refusal, said in one line. */
function checkOffer(body: Record<string, unknown>, sealed: boolean): UdpOffer {
  const { port, token, id, aeads, aead } = body;
  const u32 = (v: unknown) =>
    Number.isInteger(v) && (v as number) >= 0 && (v as number) <= 0xffffffff;
  if (!Number.isInteger(port) || (port as number) < 0 || (port as number) > 65535) {
    throw refused(`bad UDP port ${String(port)}`);
  }
  if (port === 0) return { port: 0, token: 0, id: 0 };
  if (!u32(token) || !u32(id)) throw refused("bad UDP token or session id");
  const offer: UdpOffer = {
    port: port as number,
    token: token as number,
    id: id as number,
    // Anything but true (an older VNET says nothing) gets complete checksums.
    completesChecksums: body.completesChecksums === true,
  };
  if (!sealed) return offer;
  const known = supportedAeads() as string[];
  if (aeads !== undefined) {
    if (!Array.isArray(aeads) || aeads.some((a) => typeof a !== "string")) {
      throw refused("bad AEAD list");
    }
    offer.aeads = aeads.filter((a) => known.includes(a)) as AeadName[];
  }
  if (aead !== undefined) {
    if (typeof aead !== "string" || !known.includes(aead)) throw refused("unknown AEAD");
    offer.aead = aead as AeadName;
  }
  if (offer.aeads === undefined && offer.aead === undefined) throw refused("no AEAD offered");
  if (typeof body.public !== "string" || fromBase64(body.public).length !== 32) {
    throw refused("bad X25519 public key");
  }
  offer.public = body.public;
  return offer;
}

/** The peer's IP address: where the link's TCP goes, resolved if it was given by name. */
async function peerAddress(link: Link): Promise<string> {
  const { hostname } = parseHostPort(link.remote, "the link's peer");
  if (/^[0-9.]+$/.test(hostname) || hostname.includes(":")) return hostname;
  const [first] = await Deno.resolveDns(hostname, "A");
  if (!first) throw new VnetError(`${hostname} has no IPv4 address`);
  return first;
}

function randomId(): number {
  return crypto.getRandomValues(new Uint32Array(1))[0];
}

function refused(message: string): VnetError {
  return new VnetError(message, { code: ErrorCode.Refused });
}
