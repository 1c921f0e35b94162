/**
 * libpcap bindings: the symbols VNET uses (prototypes from <pcap/pcap.h>, libpcap >= 1.5),
 * `PcapError` for a failed call, and `PcapHandle`, an owned `pcap_t *`.
 *
 * Every call here is synchronous; the only asynchronous FFI call on the capture path is `poll`
 * in `ffi/libc.ts`.
 */
import { PcapError } from "./errors.ts";
import { lazyLibrary, LIBPCAP } from "./load.ts";
import { structs } from "./layout.ts";

const symbols = {
  // pcap_t *pcap_create(const char *source, char *errbuf);
  pcap_create: {
    parameters: [
      "buffer", // const char *source (NUL-terminated)
      "buffer", // char *errbuf (PCAP_ERRBUF_SIZE)
    ],
    result: "pointer", // pcap_t * or NULL
  },
  // int pcap_set_snaplen(pcap_t *p, int snaplen);
  pcap_set_snaplen: {
    parameters: [
      "pointer", // pcap_t *p
      "i32", // int snaplen
    ],
    result: "i32",
  },
  // int pcap_set_promisc(pcap_t *p, int promisc);
  pcap_set_promisc: {
    parameters: [
      "pointer", // pcap_t *p
      "i32", // int promisc
    ],
    result: "i32",
  },
  // int pcap_set_immediate_mode(pcap_t *p, int immediate_mode);
  pcap_set_immediate_mode: {
    parameters: [
      "pointer", // pcap_t *p
      "i32", // int immediate_mode
    ],
    result: "i32",
  },
  // int pcap_set_buffer_size(pcap_t *p, int buffer_size);
  pcap_set_buffer_size: {
    parameters: [
      "pointer", // pcap_t *p
      "i32", // int buffer_size (bytes)
    ],
    result: "i32",
  },
  // int pcap_set_timeout(pcap_t *p, int to_ms);
  pcap_set_timeout: {
    parameters: [
      "pointer", // pcap_t *p
      "i32", // int to_ms
    ],
    result: "i32",
  },
  // int pcap_activate(pcap_t *p);
  pcap_activate: {
    parameters: [
      "pointer", // pcap_t *p
    ],
    result: "i32", // 0, > 0 warning (PCAP_WARNING_*), < 0 error (PCAP_ERROR_*)
  },
  // int pcap_setdirection(pcap_t *p, pcap_direction_t d);
  pcap_setdirection: {
    parameters: [
      "pointer", // pcap_t *p
      "i32", // pcap_direction_t d (enum: PCAP_D_INOUT, PCAP_D_IN, PCAP_D_OUT)
    ],
    result: "i32",
  },
  // int pcap_setnonblock(pcap_t *p, int nonblock, char *errbuf);
  pcap_setnonblock: {
    parameters: [
      "pointer", // pcap_t *p
      "i32", // int nonblock
      "buffer", // char *errbuf (PCAP_ERRBUF_SIZE)
    ],
    result: "i32",
  },
  // int pcap_compile(pcap_t *p, struct bpf_program *fp, const char *str, int optimize,
  //                  bpf_u_int32 netmask);
  pcap_compile: {
    parameters: [
      "pointer", // pcap_t *p
      "buffer", // struct bpf_program *fp (out)
      "buffer", // const char *str (NUL-terminated)
      "i32", // int optimize
      "u32", // bpf_u_int32 netmask
    ],
    result: "i32",
  },
  // int pcap_setfilter(pcap_t *p, struct bpf_program *fp);
  pcap_setfilter: {
    parameters: [
      "pointer", // pcap_t *p
      "buffer", // struct bpf_program *fp
    ],
    result: "i32",
  },
  // void pcap_freecode(struct bpf_program *fp);
  pcap_freecode: {
    parameters: [
      "buffer", // struct bpf_program *fp
    ],
    result: "void",
  },
  // int pcap_get_selectable_fd(pcap_t *p);  (UN*X only; Npcap has pcap_getevent instead)
  pcap_get_selectable_fd: {
    parameters: [
      "pointer", // pcap_t *p
    ],
    result: "i32",
    optional: true,
  },
  // int pcap_next_ex(pcap_t *p, struct pcap_pkthdr **pkt_header, const u_char **pkt_data);
  pcap_next_ex: {
    parameters: [
      "pointer", // pcap_t *p
      "buffer", // struct pcap_pkthdr **pkt_header (out)
      "buffer", // const u_char **pkt_data (out)
    ],
    result: "i32", // 1 packet, 0 none (nonblocking), PCAP_ERROR, PCAP_ERROR_BREAK
  },
  // int pcap_inject(pcap_t *p, const void *buf, size_t size);
  pcap_inject: {
    parameters: [
      "pointer", // pcap_t *p
      "buffer", // const void *buf
      "usize", // size_t size
    ],
    result: "i32", // bytes written or PCAP_ERROR
  },
  // int pcap_stats(pcap_t *p, struct pcap_stat *ps);
  pcap_stats: {
    parameters: [
      "pointer", // pcap_t *p
      "buffer", // struct pcap_stat *ps (out)
    ],
    result: "i32",
  },
  // void pcap_close(pcap_t *p);
  pcap_close: {
    parameters: [
      "pointer", // pcap_t *p
    ],
    result: "void",
  },
  // char *pcap_geterr(pcap_t *p);
  pcap_geterr: {
    parameters: [
      "pointer", // pcap_t *p
    ],
    result: "pointer", // char * (owned by p)
  },
  // const char *pcap_statustostr(int error);
  pcap_statustostr: {
    parameters: [
      "i32", // int error
    ],
    result: "pointer", // const char * (static)
  },
  // int pcap_findalldevs(pcap_if_t **alldevsp, char *errbuf);
  pcap_findalldevs: {
    parameters: [
      "buffer", // pcap_if_t **alldevsp (out)
      "buffer", // char *errbuf (PCAP_ERRBUF_SIZE)
    ],
    result: "i32",
  },
  // void pcap_freealldevs(pcap_if_t *alldevs);
  pcap_freealldevs: {
    parameters: [
      "pointer", // pcap_if_t *alldevs
    ],
    result: "void",
  },
  // const char *pcap_lib_version(void);
  pcap_lib_version: {
    parameters: [],
    result: "pointer", // const char * (static)
  },
  // int pcap_datalink(pcap_t *p);
  pcap_datalink: {
    parameters: [
      "pointer", // pcap_t *p
    ],
    result: "i32", // DLT_* (DLT_EN10MB = 1)
  },
} as const satisfies Deno.ForeignLibraryInterface;

const library = lazyLibrary(LIBPCAP, symbols);

/** The libpcap symbols; opens the library on first call (a LibraryError if it cannot). */
export function pcap(): Deno.DynamicLibrary<typeof symbols>["symbols"] {
  return library.get();
}

export const PCAP_ERRBUF_SIZE = 256;
export const PCAP_NETMASK_UNKNOWN = 0xffffffff;
export const PCAP_D_IN = 1;
export const PCAP_D_OUT = 2;
export const DLT_EN10MB = 1;

const PCAP_ERROR = -1;
export const PCAP_ERROR_BREAK = -2;
export const PCAP_ERROR_NO_SUCH_DEVICE = -5;
export const PCAP_ERROR_PERM_DENIED = -8;
export const PCAP_ERROR_IFACE_NOT_UP = -9;
export const PCAP_ERROR_PROMISC_PERM_DENIED = -11;

export const PCAP_IF_LOOPBACK = 0x1;
export const PCAP_IF_UP = 0x2;
export const PCAP_IF_RUNNING = 0x4;

/**
 * `struct pcap_pkthdr`: a `struct timeval`, then `bpf_u_int32 caplen`, `bpf_u_int32 len`. The
 * timeval is 16 bytes on 64-bit Unix (ffi/layout.ts), 8 on Windows (two 32-bit longs).
 */
export const PKTHDR_CAPLEN_OFFSET = Deno.build.os === "windows"
  ? 8
  : structs.pcap_pkthdr.offsets.caplen;
export const PKTHDR_LEN_OFFSET = PKTHDR_CAPLEN_OFFSET + 4;

const encoder = new TextEncoder();

/** A NUL-terminated C string in a fresh buffer. */
export function cString(s: string): Uint8Array<ArrayBuffer> {
  const bytes = new Uint8Array(s.length * 3 + 1);
  const { written } = encoder.encodeInto(s, bytes);
  return bytes.subarray(0, written + 1);
}

/** Reads a C string (or "" for NULL). */
export function readCString(p: Deno.PointerValue): string {
  return p === null ? "" : Deno.UnsafePointerView.getCString(p);
}

/** The text in an errbuf filled by libpcap/libnet. */
export function errbufText(buf: Uint8Array): string {
  const end = buf.indexOf(0);
  return new TextDecoder().decode(end < 0 ? buf : buf.subarray(0, end)).trim();
}

/**
 * A PcapError for `status` (a PCAP_ERROR_* code) returned by `operation` on `device`, with
 * `pcap_geterr` text when the handle has one. libpcap reports a missing device or a refused
 * permission sometimes by code and sometimes as PCAP_ERROR with text: both come out as the code.
 */
export function pcapError(
  device: string,
  operation: string,
  status: number,
  handle?: PcapHandle,
): PcapError {
  const detail = (handle?.lastError() || readCString(pcap().pcap_statustostr(status)))
    .replace(/\s*\n\s*/g, " ");
  let code = status;
  if (status === PCAP_ERROR && /no such device/i.test(detail)) code = PCAP_ERROR_NO_SUCH_DEVICE;
  if (status === PCAP_ERROR && /operation not permitted|permission denied/i.test(detail)) {
    code = PCAP_ERROR_PERM_DENIED;
  }
  return new PcapError(code, device, operation, detail, handle?.purpose ?? "capturing on");
}

/**
 * An owned `pcap_t *`. `close()` is safe to call twice; `pointer` throws once closed, so a
 * use-after-close is a clear bug rather than a crash.
 */
export class PcapHandle {
  #pointer: Deno.PointerObject | null;

  private constructor(
    pointer: Deno.PointerObject,
    readonly device: string,
    readonly purpose: string,
  ) {
    this.#pointer = pointer;
  }

  /**
   * `pcap_create(device)`: not yet activated. `purpose` says what the handle is for, in the
   * words of an error message: "capturing on", "injecting on".
   */
  static create(device: string, purpose = "capturing on"): PcapHandle {
    const errbuf = new Uint8Array(PCAP_ERRBUF_SIZE);
    const p = pcap().pcap_create(cString(device), errbuf);
    if (p === null) {
      const text = errbufText(errbuf).replace(/\s*\n\s*/g, " ");
      const code = /no such device/i.test(text) ? PCAP_ERROR_NO_SUCH_DEVICE : PCAP_ERROR;
      throw new PcapError(code, device, "pcap_create", text, purpose);
    }
    return new PcapHandle(p, device, purpose);
  }

  get closed(): boolean {
    return this.#pointer === null;
  }

  /** The raw `pcap_t *`; throws if closed. */
  get pointer(): Deno.PointerObject {
    if (this.#pointer === null) throw new Error(`pcap handle on '${this.device}' is closed`);
    return this.#pointer;
  }

  /** `pcap_geterr` text ("" if closed). */
  lastError(): string {
    return this.#pointer === null ? "" : readCString(pcap().pcap_geterr(this.#pointer));
  }

  /** Throws a PcapError if `status` < 0; returns it otherwise. */
  check(what: string, status: number): number {
    if (status < 0) throw pcapError(this.device, what, status, this);
    return status;
  }

  /** `pcap_close`; safe twice. */
  close(): void {
    const p = this.#pointer;
    if (p === null) return;
    this.#pointer = null;
    pcap().pcap_close(p);
  }

  /** Closes: `using h = PcapHandle.create(dev)` releases it on every way out of the block. */
  [Symbol.dispose](): void {
    this.close();
  }
}

/** `pcap_lib_version()`, e.g. "libpcap version 1.10.3 (with TPACKET_V3)". */
export function pcapLibVersion(): string {
  return readCString(pcap().pcap_lib_version());
}
