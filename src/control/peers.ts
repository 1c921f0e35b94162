/**
 * The servers this one dials, one Peer each, kept for as long as a handler needs it. The
 * dialling side owns a link: if it breaks, the Peer reconnects with backoff and the server
 * re-attaches every handler it carries there; the other side's handlers wait, down.
 */
import { formatHostPort, type HostPort } from "../addr.ts";
import { messageOf } from "../errors.ts";
import { type Link } from "../link/link.ts";
import { type SshOptions } from "../link/ssh.ts";
import { type Logger } from "../log.ts";

/** How long a server tries to reach its peer when it has no link to it. */
export const DIAL_TIMEOUT_MS = 10_000;

interface PeerHooks {
  /** Opens a link to the peer within `timeoutMs`. */
  dial(peer: Peer, timeoutMs: number): Promise<Link>;
  /** The link came back after a failure: re-attach what it carries. */
  reconnected(peer: Peer, link: Link): Promise<void>;
}

/** The dialled connection to one peer server. */
export class Peer {
  link: Link | null = null;
  reconnects = 0;
  #connecting: Promise<Link> | null = null;
  #retry: ReturnType<typeof setTimeout> | undefined;
  #failures = 0;
  #closed = false;

  constructor(
    readonly addr: HostPort,
    readonly ssh: SshOptions | undefined,
    private readonly hooks: PeerHooks,
    private readonly log: Logger,
  ) {}

  /** The open link, dialling (within `timeoutMs`) if there is none. */
  connect(timeoutMs = DIAL_TIMEOUT_MS): Promise<Link> {
    if (this.link?.isOpen) return Promise.resolve(this.link);
    this.#connecting ??= this.hooks.dial(this, timeoutMs).then((link) => {
      this.link = link;
      this.#failures = 0;
      return link;
    }).finally(() => this.#connecting = null);
    return this.#connecting;
  }

  /** Called when the link went down while handlers still need it. */
  scheduleReconnect(): void {
    if (this.#closed || this.#retry !== undefined) return;
    // Exponential backoff from 0.5 s to 30 s, with ±50% jitter so many servers don't sync up.
    const base = Math.min(30_000, 500 * 2 ** this.#failures);
    const delay = Math.round(base * (0.5 + Math.random()));
    this.log.info("reconnecting", { peer: formatHostPort(this.addr), inMs: delay });
    this.#retry = setTimeout(async () => {
      this.#retry = undefined;
      try {
        const link = await this.connect();
        this.reconnects++;
        await this.hooks.reconnected(this, link);
      } catch (e) {
        this.#failures++;
        this.log.warn("reconnect failed", { peer: formatHostPort(this.addr), error: messageOf(e) });
        if (this.link?.isOpen) this.link.close("re-attach failed");
        this.scheduleReconnect();
      }
    }, delay);
  }

  close(): void {
    this.#closed = true;
    clearTimeout(this.#retry);
    this.link?.close("no handlers use this peer any more");
  }
}

/** One Peer per address (and ssh gateway). */
export class Peers {
  readonly #peers = new Map<string, Peer>();

  constructor(private readonly hooks: PeerHooks, private readonly log: Logger) {}

  get(addr: HostPort, ssh?: SshOptions): Peer {
    const key = formatHostPort(addr) + (ssh ? ` via ssh ${ssh.gateway}` : "");
    let peer = this.#peers.get(key);
    if (!peer) {
      peer = new Peer(addr, ssh, this.hooks, this.log);
      this.#peers.set(key, peer);
    }
    return peer;
  }

  values(): IterableIterator<Peer> {
    return this.#peers.values();
  }

  /** Closes the peers no handler uses any more. */
  dropUnused(used: Set<Peer>): void {
    for (const [key, peer] of this.#peers) {
      if (used.has(peer)) continue;
      peer.close();
      this.#peers.delete(key);
    }
  }

  closeAll(): void {
    for (const peer of this.#peers.values()) peer.close();
    this.#peers.clear();
  }
}
