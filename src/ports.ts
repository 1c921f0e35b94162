/**
 * The ports of the VNET core: what a Handler needs from the outside world.
 *
 * Production plugs in libpcap (`Capture`) and libnet (`Injector`) from `src/pcap_capture.ts`
 * and `src/libnet_injector.ts`; unit tests plug in fakes. Nothing here knows C.
 */

/** Frames arriving on one interface, already filtered (BPF) and inbound only. */
export interface Capture {
  /** The interface name, e.g. `eth0`. */
  readonly device: string;
  /**
   * Waits until frames may be ready, or `timeoutMs` passes, or the capture is closed.
   * This is the only asynchronous call on the capture path: one wait, then a synchronous drain.
   * Returns false once the capture is closed.
   */
  wait(timeoutMs: number): Promise<boolean>;
  /**
   * Hands every ready frame (at most `max`) to `onFrame` synchronously and returns how many.
   * `frame` is only valid during the call (it may point into libpcap's ring): copy it if kept.
   * `wireLength` is the frame's length on the wire; if it is larger than `frame.length` the
   * frame was truncated by the snap length.
   */
  drain(onFrame: (frame: Uint8Array, wireLength: number) => void, max: number): number;
  /** Kernel counters: frames received by the filter, dropped by the buffer, by the interface. */
  stats(): CaptureStats;
  /** Releases the handle; safe to call twice. A pending `wait` resolves false. */
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

/** What a Handler asks of the outside world when it opens its end. */
export interface Interfaces {
  openCapture(device: string, filter: string): Capture;
  openInjector(device: string): Injector;
}
