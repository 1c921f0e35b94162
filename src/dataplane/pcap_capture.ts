/**
 * `Capture` on libpcap: promiscuous, immediate mode, inbound only, BPF-filtered, nonblocking.
 *
 * The capture path is: `watch()` = a place in the thread's ONE `poll` over every capture's
 * selectable fd (src/io/poller.ts), which calls back when frames wait; then `drain()` = a
 * synchronous loop of `pcap_next_ex` until libpcap has nothing more (or the batch is full). No
 * per-frame async call: each frame is copied out of libpcap's ring into one reusable buffer and handed on as
 * a view of it, valid during `onFrame` only. The copy is cheaper than the alternative, a view
 * straight into the ring, which costs an external ArrayBuffer per frame (measured: 150 against
 * 280 ns for a 64-byte frame, 2.8 against 3.6 µs for 64 KB, before the GC work it leaves).
 */
import { ErrorCode, VnetError } from "../errors.ts";
import { translated, userError } from "./ffi_errors.ts";
import { log } from "../log.ts";
import type { CaptureStats } from "./ports.ts";
import type { RawCapture } from "./device_capture.ts";
import {
  cString,
  DLT_EN10MB,
  errbufText,
  pcap,
  PCAP_D_IN,
  PCAP_ERRBUF_SIZE,
  PCAP_ERROR_BREAK,
  PCAP_NETMASK_UNKNOWN,
  pcapError,
  PcapHandle,
  PKTHDR_CAPLEN_OFFSET,
  PKTHDR_LEN_OFFSET,
} from "../../ffi/libpcap.ts";
import { poller } from "../io/poller.ts";
import { libc } from "../../ffi/libc.ts";
import { structs } from "../../ffi/layout.ts";

interface PcapCaptureOptions {
  /** Largest frame kept; bigger ones are truncated (`wireLength > frame.length`). */
  snaplen?: number;
  /** Kernel buffer (ring) size in bytes. */
  bufferSize?: number;
  /** Promiscuous mode (default true). */
  promiscuous?: boolean;
}

const DEFAULT_SNAPLEN = 262144;
/**
 * 32 MiB here; the server's `--capture-buffer` default is 22 (src/cli/config.ts): the data-path
 * worker's isolate costs ~10 MiB, and a server with 100 handlers must stay under 150 MiB
 * (tests/e2e/load_test.ts: peaks of 146.5-148.9 MiB with 24, 143.7 with 22, 155-158 with 32).
 * Not 8: in immediate mode libpcap uses TPACKET_V2, whose ring slots are fixed-size, and on an
 * interface with offloads (TSO/GSO/GRO, e.g. any veth) a slot is 65632 bytes so that GSO
 * super-frames fit, each in a block of 128 KiB (blocks are powers of two): the ring takes twice
 * the memory asked for, all of it resident from the start. 8 MiB is then only 128 frames
 * (measured: 25-40% loss in 200k frames/s bursts); 22 MiB is 352, 32 MiB ~500; 64 MiB was
 * measured at 1023 frames and about 1% loss. A snap length that fits a slot in 64 KiB would halve
 * the memory, but truncate (and so drop) the GRO aggregates of 65469 bytes and more that some
 * MSS values give.
 */
const DEFAULT_BUFFER_SIZE = 32 * 1024 * 1024;

const MAX_POLL_MS = 0x7fffffff;

/** One libpcap handle: what a DeviceCapture shares among the handlers of an interface. */
export class PcapCapture implements RawCapture {
  readonly device: string;
  /** The device's name as C has it, read by `present()` once a second. */
  readonly #deviceName: Uint8Array;
  /** The interface's index as it was opened on it (0: unknown), so a namesake is told apart. */
  readonly #ifindex: number;
  readonly #handle: PcapHandle;
  readonly #pcapT: Deno.PointerObject;
  readonly #nextEx: ReturnType<typeof pcap>["pcap_next_ex"];
  /** libpcap's selectable fd, watched by the shared poll. */
  readonly #fd: number;
  /** pcap_next_ex out-params: `struct pcap_pkthdr *` at 0, `const u_char *` at 8. */
  readonly #out = new ArrayBuffer(16);
  readonly #hdrOut = new Uint8Array(this.#out, 0, 8);
  readonly #dataOut = new Uint8Array(this.#out, 8, 8);
  readonly #outWords = new Uint32Array(this.#out);
  readonly #outView = new Deno.UnsafePointerView(Deno.UnsafePointer.of(this.#out)!);
  /** libpcap hands back the same header struct every time: keep a view on it. */
  #hdrLo = 0;
  #hdrHi = 0;
  #hdrView: Deno.UnsafePointerView | null = null;
  readonly #stats = new DataView(new ArrayBuffer(structs.pcap_stat.size));
  /** Where each frame is copied to (snap length bytes: no frame is longer). */
  readonly #frame: Uint8Array;

  #closed = false;
  #released = false;
  #draining = false;

  /** Opens and activates a capture on `device`; a VnetError saying why if it cannot. */
  constructor(device: string, filter: string, options: PcapCaptureOptions = {}) {
    this.device = device;
    const { handle, fd } = translated(() => activate(device, filter, options));
    this.#handle = handle;
    this.#fd = fd;
    this.#pcapT = handle.pointer;
    this.#nextEx = pcap().pcap_next_ex;
    this.#frame = new Uint8Array(options.snaplen ?? DEFAULT_SNAPLEN);
    this.#deviceName = cString(device);
    this.#ifindex = interfaceIndex(this.#deviceName);
  }

  present(): boolean {
    return this.#ifindex === 0 || interfaceIndex(this.#deviceName) === this.#ifindex;
  }

  wait(timeoutMs: number): Promise<boolean> {
    if (this.#closed) return Promise.resolve(false);
    const ms = Number.isFinite(timeoutMs)
      ? Math.min(Math.max(timeoutMs, 0), MAX_POLL_MS)
      : MAX_POLL_MS;
    return poller.readable(this.#fd, ms);
  }

  watch(onReady: (() => void) | null): void {
    if (!this.#closed) poller.onReadable(this.#fd, onReady);
  }

  drain(onFrame: (frame: Uint8Array, wireLength: number) => void, max: number): number {
    if (this.#closed || this.#draining) return 0;
    const nextEx = this.#nextEx;
    const p = this.#pcapT;
    const words = this.#outWords;
    const outView = this.#outView;
    let n = 0;
    this.#draining = true;
    try {
      while (n < max && !this.#closed) {
        const rc = nextEx(p, this.#hdrOut, this.#dataOut);
        if (rc === 1) {
          let hdr = this.#hdrView;
          if (hdr === null || words[0] !== this.#hdrLo || words[1] !== this.#hdrHi) {
            hdr = this.#hdrView = new Deno.UnsafePointerView(outView.getPointer(0)!);
            this.#hdrLo = words[0];
            this.#hdrHi = words[1];
          }
          const caplen = hdr.getUint32(PKTHDR_CAPLEN_OFFSET);
          const len = hdr.getUint32(PKTHDR_LEN_OFFSET);
          const frame = this.#frame.subarray(0, caplen);
          Deno.UnsafePointerView.copyInto(outView.getPointer(8)!, frame);
          n++;
          onFrame(frame, len);
        } else if (rc === 0 || rc === PCAP_ERROR_BREAK) {
          break;
        } else {
          throw userError(pcapError(this.device, "pcap_next_ex", rc, this.#handle));
        }
      }
    } finally {
      this.#draining = false;
      if (this.#closed) this.#releaseWhenIdle();
    }
    return n;
  }

  /** Replaces the BPF filter (the members of a shared capture changed). */
  setFilter(filter: string): void {
    if (!this.#closed) translated(() => setFilter(this.#handle, filter));
  }

  stats(): CaptureStats {
    if (this.#closed) return { received: 0, dropped: 0, ifDropped: 0 };
    const s = this.#stats;
    const at = structs.pcap_stat.offsets;
    translated(() =>
      this.#handle.check("pcap_stats", pcap().pcap_stats(this.#pcapT, new Uint8Array(s.buffer)))
    );
    return {
      received: s.getUint32(at.ps_recv, true),
      dropped: s.getUint32(at.ps_drop, true),
      ifDropped: s.getUint32(at.ps_ifdrop, true),
    };
  }

  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    poller.cancel(this.#fd);
    // Inside drain (close from onFrame), drain releases when it ends.
    if (!this.#draining) this.#releaseWhenIdle();
  }

  /** Frees the handle, once no poll on another thread watches its fd any more. */
  #releaseWhenIdle(): void {
    poller.whenIdle(this.#fd, () => {
      if (this.#released) return;
      this.#released = true;
      this.#hdrView = null;
      this.#handle.close();
    });
  }
}

/** A live, filtered, nonblocking libpcap handle on `device`, and its selectable fd. */
function activate(
  device: string,
  filter: string,
  options: PcapCaptureOptions,
): { handle: PcapHandle; fd: number } {
  const lib = pcap();
  if (!lib.pcap_get_selectable_fd) {
    throw new VnetError(
      "this libpcap has no pcap_get_selectable_fd (Windows/Npcap): capture is not supported here",
      { code: ErrorCode.System },
    );
  }
  // Everything opened here is released if a later step throws (`stack.move()` keeps it).
  using stack = new DisposableStack();
  const h = stack.use(PcapHandle.create(device, "capturing on"));
  const p = h.pointer;
  h.check("pcap_set_snaplen", lib.pcap_set_snaplen(p, options.snaplen ?? DEFAULT_SNAPLEN));
  h.check("pcap_set_promisc", lib.pcap_set_promisc(p, options.promiscuous === false ? 0 : 1));
  h.check("pcap_set_immediate_mode", lib.pcap_set_immediate_mode(p, 1));
  h.check(
    "pcap_set_buffer_size",
    lib.pcap_set_buffer_size(p, options.bufferSize ?? DEFAULT_BUFFER_SIZE),
  );
  const activated = h.check("pcap_activate", lib.pcap_activate(p));
  if (activated > 0) {
    log.warn("libpcap warning", { dev: device, warning: h.lastError() || String(activated) });
  }
  const dlt = lib.pcap_datalink(p);
  if (dlt !== DLT_EN10MB) {
    throw new VnetError(
      `network interface '${device}' is not Ethernet (libpcap link type ${dlt}): ` +
        "VNET bridges Ethernet frames only",
      { code: ErrorCode.Invalid },
    );
  }
  h.check("pcap_setdirection(PCAP_D_IN)", lib.pcap_setdirection(p, PCAP_D_IN));
  const errbuf = new Uint8Array(PCAP_ERRBUF_SIZE);
  if (lib.pcap_setnonblock(p, 1, errbuf) < 0) {
    throw new VnetError(
      `libpcap pcap_setnonblock failed on '${device}': ${errbufText(errbuf)}`,
      { code: ErrorCode.System },
    );
  }
  setFilter(h, filter);
  const fd = lib.pcap_get_selectable_fd(p);
  if (fd < 0) {
    throw new VnetError(`libpcap gives no selectable fd for '${device}': cannot wait on it`, {
      code: ErrorCode.System,
    });
  }
  stack.move();
  return { handle: h, fd };
}

/**
 * Compiles `filter` (netmask unknown, optimized) and installs it; bad syntax → VnetError.
 *
 * Not prefixed with `inbound`, although on Linux libpcap implements PCAP_D_IN in user space (frames
 * sent on the interface still take a ring slot, then are skipped): after pcap_setfilter, libpcap
 * 1.10 filters the next ring slot in user space, where `inbound` (a kernel-only packet-type load)
 * always fails — the first inbound frame would be lost.
 */
function setFilter(h: PcapHandle, filter: string): void {
  const lib = pcap();
  const prog = new Uint8Array(structs.bpf_program.size); // filled by pcap_compile
  if (lib.pcap_compile(h.pointer, prog, cString(filter), 1, PCAP_NETMASK_UNKNOWN) < 0) {
    throw new VnetError(`bad capture filter '${filter}': ${h.lastError()}`, {
      code: ErrorCode.Invalid,
    });
  }
  try {
    h.check(`pcap_setfilter('${filter}')`, lib.pcap_setfilter(h.pointer, prog));
  } finally {
    lib.pcap_freecode(prog);
  }
}

/** The index of the interface named `name` (NUL-ended; if_nametoindex), or 0 if there is none. */
function interfaceIndex(name: Uint8Array): number {
  if (Deno.build.os !== "linux") return 0;
  return libc().if_nametoindex(name);
}
