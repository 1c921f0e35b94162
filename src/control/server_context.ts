/** What the request handlers (client_requests.ts, peer_requests.ts) use of their server. */
import { type DeviceInfo } from "../dataplane/interfaces.ts";
import { type Link } from "../link/link.ts";
import { type Logger } from "../log.ts";
import { type DirectPaths } from "./direct.ts";
import { type EventLog } from "./events.ts";
import { type MacRange } from "./mac_policy.ts";
import { type Peer, type Peers } from "./peers.ts";
import { type Registry } from "./registry.ts";
import { type ListedHandler } from "./rpc.ts";
import { type UdpTransport } from "./udp_transport.ts";
import { type Transport } from "../dataplane/handler.ts";

export interface ServerContext {
  /** This server's id (32 hex digits), sent with every attach as `origin`. */
  readonly id: string;
  /** The address this server listens on, `ADDR:PORT`. */
  readonly address: string;
  readonly registry: Registry;
  readonly peers: Peers;
  readonly events: EventLog;
  /** Direct Host↔Host paths (direct.ts). */
  readonly direct: DirectPaths;
  /** The links' UDP paths (udp_transport.ts). */
  readonly udp: UdpTransport;
  /** How the handlers created here cross, unless the client says (`--transport`). */
  readonly transport: Transport;
  readonly log: Logger;
  /** `--allow-live-mac`: carry a MAC already live on the LAN (logged at WARN). */
  readonly allowLiveMac: boolean;
  /** `--allow-mac`: the only MAC ranges handlers may carry; empty: any. */
  readonly allowMacs: readonly MacRange[];
  /** Where this server's VXLAN tunnels send from and listen (`--vxlan-port`). */
  readonly vxlanBind: { address: string; port: number };
  /** This machine's interfaces. */
  devices(): DeviceInfo[];
  /** The handlers, as `list` shows them. */
  list(): Promise<ListedHandler[]>;
  /** Throws if `device` holds the local address of `link`: a Host end must not carry its own link. */
  checkDeviceNotCarryingLink(device: string, link: Link): void;
  /** Closes and forgets a handler, drops peers nobody needs, saves the state. */
  remove(id: string): Promise<void>;
  dropUnusedPeers(): void;
  /**
   * `peer` holds ends we closed without telling it: keep reconnecting to it until a `sync`
   * has told it, even if no handler of ours uses it any more.
   */
  owesSync(peer: Peer): void;
  save(): void;
}
