/**
 * The ports of the VNET core: what a Handler needs from the outside world.
 *
 * Production plugs in libpcap (`Capture`, shared per device: device_capture.ts over
 * pcap_capture.ts) and the injectors of packet_injector.ts, libnet_injector.ts and
 * pcap_injector.ts, wired in interfaces.ts; unit tests plug in the fakes of fake_ports.ts.
 * Nothing here knows C.
 */

/**
 * Which end of a bridge a handler is (paper, section 4.2). The Host captures what its VMs send
 * and injects what the LAN sends them; the Proxy captures, on the LAN, what is sent to the VMs
 * and injects what they send.
 */
export type Role = "host" | "proxy";

/** What a handler captures: the paper's frames for its role and MACs (see filter.ts). */
export interface CaptureSpec {
  role: Role;
  macs: string[];
  multicast: boolean;
}

/** Receives frames: `frame` is only valid during the call (it may point into libpcap's ring). */
export type FrameSink = (frame: Uint8Array, wireLength: number) => void;

/**
 * Frames arriving on one interface for one handler, inbound only. `wireLength` is the frame's
 * length on the wire: larger than `frame.length` means the snap length truncated it.
 */
export interface Capture {
  /** The interface name, e.g. `eth0`. */
  readonly device: string;
  /**
   * Starts handing over frames, synchronously, one `onFrame` each. `onError` is called once
   * if the capture fails (the interface disappeared); no frames follow it. For a Proxy,
   * `onConflict` gets each frame that arrives FROM one of its MACs, which only the VM behind
   * the far end should send (a duplicate MAC on the LAN, or a loop): to count, never to
   * forward.
   */
  start(onFrame: FrameSink, onError: (error: Error) => void, onConflict?: FrameSink): void;
  /** Kernel counters of the interface's capture. */
  stats(): CaptureStats;
  /** Stops; safe to call twice. */
  close(): void;
}

export interface CaptureStats {
  received: number;
  dropped: number;
  ifDropped: number;
}

/** Writes complete Ethernet frames onto one interface. */
export interface Injector {
  readonly device: string;
  /** The interface MTU (largest IP packet); frames are at most `mtu + 14` (+4 with a VLAN tag). */
  readonly mtu: number;
  /** Writes one frame synchronously; returns false if the system refused it. */
  inject(frame: Uint8Array): boolean;
  /**
   * Present when the injector can hand a TCP super-frame to the kernel whole, as GSO (Linux
   * packet sockets with virtio-net headers): the kernel segments it, not us.
   */
  injectGso?(frame: Uint8Array, gso: GsoFrame): boolean;
  /** The last system error text, for logs. */
  lastError(): string;
  /** Releases the handle; safe to call twice. */
  close(): void;
}

/** Where a TCP super-frame's headers end, and how to cut it; see `prepareForWire`. */
export interface GsoFrame {
  v4: boolean;
  /** Offset of the TCP header in the frame. */
  l4Offset: number;
  /** Ethernet + IP + TCP header bytes: what every segment repeats. */
  headerLength: number;
  /** TCP payload bytes per segment, from the MTU of the interface. */
  mss: number;
  /** CWR is set: segments must keep ECN semantics. */
  ecn: boolean;
}

/**
 * What the data path needs of a link to a peer: to send a frame for a handler on it. A TLS or
 * ssh link's frames go to the main thread, which owns those streams; a plain link's socket is
 * the data path's own (data_path_links.ts).
 */
export interface FrameLink {
  /** The link's number, the same on both threads (link.ts). */
  readonly number: number;
  /** The other end, `ADDR:PORT`, for `list`. */
  readonly remote: string;
  readonly isOpen: boolean;
  /** Queues one frame for `handler`; false if it had to be dropped. */
  sendFrame(handler: number, frame: Uint8Array): boolean;
}

/** What a Handler asks of the outside world when it opens its end. */
export interface Interfaces {
  openCapture(device: string, spec: CaptureSpec): Capture;
  openInjector(device: string): Injector;
  /** Fails the captures whose interface is gone (device_capture.ts); once a second. */
  check?(): void;
}
