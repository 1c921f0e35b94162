/**
 * libnet bindings (prototypes from <libnet/libnet-functions.h>, libnet >= 1.1): link-layer
 * injection of complete frames in "advanced" mode, and `LibnetHandle`, an owned `libnet_t *`.
 */
import { LibnetError } from "./errors.ts";
import { cString, errbufText, readCString } from "./libpcap.ts";
import { lazyLibrary, LIBNET } from "./load.ts";

const symbols = {
  // libnet_t *libnet_init(int injection_type, const char *device, char *err_buf);
  libnet_init: {
    parameters: [
      "i32", // int injection_type (LIBNET_LINK_ADV)
      "buffer", // const char *device (NUL-terminated)
      "buffer", // char *err_buf (LIBNET_ERRBUF_SIZE)
    ],
    result: "pointer", // libnet_t * or NULL
  },
  // int libnet_adv_write_link(libnet_t *l, const uint8_t *packet, uint32_t packet_s);
  libnet_adv_write_link: {
    parameters: [
      "pointer", // libnet_t *l
      "buffer", // const uint8_t *packet
      "u32", // uint32_t packet_s
    ],
    result: "i32", // bytes written or -1
  },
  // char *libnet_geterror(libnet_t *l);
  libnet_geterror: {
    parameters: [
      "pointer", // libnet_t *l
    ],
    result: "pointer", // char * (owned by l)
  },
  // void libnet_destroy(libnet_t *l);
  libnet_destroy: {
    parameters: [
      "pointer", // libnet_t *l
    ],
    result: "void",
  },
  // int libnet_getfd(libnet_t *l);
  libnet_getfd: {
    parameters: [
      "pointer", // libnet_t *l
    ],
    result: "i32",
  },
  // const char *libnet_version(void);
  libnet_version: {
    parameters: [],
    result: "pointer", // const char * (static)
    optional: true,
  },
} as const satisfies Deno.ForeignLibraryInterface;

const library = lazyLibrary(LIBNET, symbols);

/** The libnet symbols; opens the library on first call (a LibraryError if it cannot). */
export function libnet(): Deno.DynamicLibrary<typeof symbols>["symbols"] {
  return library.get();
}

const LIBNET_LINK_ADV = 0x08;
const LIBNET_ERRBUF_SIZE = 0x100;

/** An owned `libnet_t *` opened with LIBNET_LINK_ADV. `close()` is safe to call twice. */
export class LibnetHandle {
  #pointer: Deno.PointerObject | null;

  private constructor(pointer: Deno.PointerObject, readonly device: string) {
    this.#pointer = pointer;
  }

  /** `libnet_init(LIBNET_LINK_ADV, device)`; a LibnetError saying why if it fails. */
  static open(device: string): LibnetHandle {
    const errbuf = new Uint8Array(LIBNET_ERRBUF_SIZE);
    const p = libnet().libnet_init(LIBNET_LINK_ADV, cString(device), errbuf);
    if (p === null) {
      const text = errbufText(errbuf).replace(/\s*\n\s*/g, " ");
      const code = /no such device/i.test(text)
        ? "no_such_device"
        : /operation not permitted|permission denied|CAP_NET_RAW|UID/i.test(text)
        ? "permission_denied"
        : "failed";
      throw new LibnetError(code, device, text);
    }
    return new LibnetHandle(p, device);
  }

  get closed(): boolean {
    return this.#pointer === null;
  }

  /** The raw `libnet_t *`; throws if closed. */
  get pointer(): Deno.PointerObject {
    if (this.#pointer === null) throw new Error(`libnet handle on '${this.device}' is closed`);
    return this.#pointer;
  }

  /** `libnet_geterror` text ("" if closed). */
  lastError(): string {
    return this.#pointer === null ? "" : readCString(libnet().libnet_geterror(this.#pointer));
  }

  /** `libnet_destroy`; safe twice. */
  close(): void {
    const p = this.#pointer;
    if (p === null) return;
    this.#pointer = null;
    libnet().libnet_destroy(p);
  }

  /** Closes: `using h = LibnetHandle.open(dev)` releases it on every way out of the block. */
  [Symbol.dispose](): void {
    this.close();
  }
}

/** `libnet_version()`, e.g. "libnet version 1.1.6" ("" if the symbol is missing). */
export function libnetVersion(): string {
  const fn = libnet().libnet_version;
  return fn ? readCString(fn()) : "";
}
