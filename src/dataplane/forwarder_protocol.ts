/**
 * What the control plane (main thread) and the forwarder (forwarder.ts, on the data-path
 * worker) say to each other. Commands go one way, in order, through a ring and a doorbell
 * (worker_data_path.ts); events come back as messages. Frames never travel here: they cross in
 * frame rings (src/io/frame_ring.ts) or, on a plain link, never leave the worker.
 */
import { type HandlerSpec, type HandlerState } from "./handler.ts";
import { type AeadName } from "../link/udp/aead.ts";
import { type SessionKeys } from "../link/udp/keys.ts";

export type Command =
  /** Opens a handler's end; `slot` is its place in the counter table (counters.ts). */
  | { op: "open"; spec: HandlerSpec; slot: number; tolerant: boolean }
  | { op: "close"; handler: number }
  /** `udp`: the handler's frames go by the link's UDP path where there is one (udp_peers.ts). */
  | { op: "attach"; handler: number; link: number; udp?: boolean }
  | { op: "detach"; handler: number; link: number }
  /** A peer link whose frames the main thread carries (TLS, ssh). */
  | { op: "link"; link: number; remote: string }
  | { op: "unlink"; link: number }
  /** Frames for `handler` may come in on `link` too (a direct path, control/direct.ts). */
  | { op: "allow"; link: number; handler: number }
  /** A direct route: frames for `mac` of the handlers on `via` go on `link` (fabric.ts). */
  | { op: "route"; via: number; mac: string; link: number; peer: string; number: number }
  | { op: "unroute"; via: number; mac: string }
  | { op: "unrouteOver"; link: number }
  | { op: "forgetLink"; via: number }
  /** Ages idle paths; the reply is what was forgotten (`Forgotten[]`). */
  | { op: "sweep"; everyMs: number }
  /** The reply is every handler's `HandlerState`, by handler number. */
  | { op: "state" }
  /**
   * Takes a plain link's socket over (owned_socket.ts), and its keepalives (`keepaliveMs`, 0:
   * none); `buffered`: bytes read past the handshake.
   */
  | {
    op: "adopt";
    link: number;
    remote: string;
    fd: number;
    buffered: string;
    stallMs: number;
    keepaliveMs: number;
  }
  /** A control message (base64) for an adopted socket's peer. */
  | { op: "control"; link: number; message: string }
  | { op: "tune"; link: number; stallMs: number; keepaliveMs: number }
  | { op: "closeSocket"; link: number; notify?: string }
  /**
   * A tunnel for `handler` to the VXLAN endpoint `host:port`, VNI `vni` (vxlan_tunnels.ts), on
   * the forwarder's VXLAN socket (`bind:localPort`, opened with the first tunnel).
   */
  | {
    op: "vxlan";
    link: number;
    handler: number;
    bind: string;
    localPort: number;
    host: string;
    port: number;
    vni: number;
  }
  | { op: "unvxlan"; link: number }
  /** Opens the server's UDP socket for its links; answers the port it is bound to. */
  | { op: "udpListen"; bind: string; port: number }
  /** The UDP path of a link, as the two servers agreed it (udp_peers.ts). */
  | ({ op: "udpOpen"; link: number } & UdpPathAgreed)
  /**
   * A direct link's UDP path carries these handlers' frames (control/direct.ts): the far Host's,
   * which we send, and ours, which come in (a plain path maps them by VNI). False if it cannot
   * take them all: they stay on the link's stream.
   */
  | { op: "udpCarry"; link: number; handlers: number[] }
  /**
   * A UDP path punched to another Host, with no link under it (control/direct.ts): numbered
   * `link` like a link (a tunnel number), shown as `remote`; it lets frames for `allow` in and
   * carries `carry`'s frames. A direct route may use it while it works both ways.
   */
  | (
    & { op: "udpPunch"; link: number; remote: string; allow: number; carry: number[] }
    & UdpPathAgreed
  )
  /** Closes a punched path; the routes over it go back through the Proxy. */
  | { op: "unpunch"; link: number }
  /** The next epoch's keys of a link's sealed UDP path. */
  | { op: "udpRekey"; link: number; keys: WireKeys; peerHasKeys: boolean }
  /** Every UDP path's state, by link. */
  | { op: "udpState" }
  /** The UDP socket's own counters (UdpPortStats); null without one. */
  | { op: "udpPort" }
  /** A probe with this token is to be sent back (udp_peers.ts); answers false if it cannot. */
  | { op: "udpProbe"; token: number }
  | { op: "stop" };

/** A path the fabric forgot: learned over link `via` (null: no link), direct over `link`. */
/** A link's UDP path as the two servers agreed it over the link (udp_peers.ts's UdpPathSpec). */
export interface UdpPathAgreed {
  /** The peer's address, and the UDP port it announced. */
  host: string;
  port: number;
  /** The first epoch's keys (a sealed path), or null (plain VXLAN). */
  keys: WireKeys | null;
  /** Session ids (sealed): ours, which the peer writes, and the peer's. */
  localId: number;
  peerId: number;
  /** Keepalive tokens (plain): ours, and the peer's. */
  token: number;
  peerToken: number;
  /** The peer said it completes our frames' TCP and UDP checksums (udp_transport.ts). */
  peerCompletesChecksums?: boolean;
}

/** An epoch's keys as a command carries them (base64). */
export interface WireKeys {
  aead: AeadName;
  epoch: number;
  send: string;
  receive: string;
}

export interface Forgotten {
  via: number | null;
  mac: string;
  direct: { link: number; peer: string } | null;
}

/**
 * Every handler's state, by number, with its link's keepalive round trip (ms) when the
 * forwarder owns the link's socket and keeps it alive (null: not measured here).
 */
export type States = Record<number, HandlerState & { linkRttMs: number | null }>;

export type ForwarderEvent =
  /** A Host learned a remote MAC over link `via` (the control plane checks routes against it). */
  | { event: "learned"; via: number | null; mac: string }
  /** Unicast was switched between two handlers whose links differ (direct path candidates). */
  | { event: "switched"; from: number; to: number; src: string; dst: string }
  /** A message other than a frame came in on an adopted socket. */
  | { event: "message"; link: number; type: number; payload: Uint8Array }
  /** An adopted socket closed, and why. */
  | { event: "closed"; link: number; reason: string }
  /** A link's UDP path went up or down. */
  | { event: "udp"; link: number; up: boolean; why: string }
  | { event: "reply"; id: number; ok: true; value: unknown }
  | { event: "reply"; id: number; ok: false; error: string; code?: string };

/** Bytes as base64, for a command's JSON. */
export function toBase64(bytes: Uint8Array): string {
  let text = "";
  for (let i = 0; i < bytes.length; i += 0x8000) {
    text += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
  }
  return btoa(text);
}

export function fromBase64(text: string): Uint8Array {
  return Uint8Array.from(atob(text), (c) => c.charCodeAt(0));
}

/** An epoch's keys as a command carries them. */
export function toWireKeys(keys: SessionKeys): WireKeys {
  return {
    aead: keys.aead,
    epoch: keys.epoch,
    send: toBase64(keys.send),
    receive: toBase64(keys.receive),
  };
}

/** The keys a command carried. */
export function fromWireKeys(keys: WireKeys): SessionKeys {
  return {
    aead: keys.aead,
    epoch: keys.epoch,
    send: fromBase64(keys.send),
    receive: fromBase64(keys.receive),
  };
}
