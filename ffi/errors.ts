/**
 * Errors of the native bindings. ffi/ knows C libraries, not VNET: its errors carry what the
 * library said (a status code, its error text), as denodrivers/sqlite3's `SqliteError` carries
 * SQLite's result code. src/dataplane turns them into the VnetErrors users see, with the hint
 * that fits (see src/dataplane/ffi_errors.ts).
 */

/**
 * A native library could not be loaded, or lacks a symbol we need. The message is complete: the
 * library, what was tried, how to install it or point at it.
 */
export class LibraryError extends Error {
  constructor(readonly library: string, message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = "LibraryError";
  }
}

/**
 * A libpcap call failed. `code` is libpcap's status (a negative `PCAP_ERROR_*`), made specific
 * where libpcap only says `PCAP_ERROR` and explains in text (no such device, permission).
 */
export class PcapError extends Error {
  constructor(
    readonly code: number,
    readonly device: string,
    /** The call, e.g. `pcap_activate`. */
    readonly operation: string,
    /** libpcap's own text (`pcap_geterr` or `pcap_statustostr`), on one line. */
    readonly detail: string,
    /** What the handle was for, as an error message words it: "capturing on", "injecting on". */
    readonly purpose = "capturing on",
    options?: ErrorOptions,
  ) {
    super(`libpcap ${operation} failed on '${device}': ${detail}`, options);
    this.name = "PcapError";
  }
}

/** Why `libnet_init` failed; libnet has no error codes, so this is read from its text. */
type LibnetErrorCode = "no_such_device" | "permission_denied" | "failed";

/** `libnet_init` failed. */
export class LibnetError extends Error {
  constructor(
    readonly code: LibnetErrorCode,
    readonly device: string,
    /** libnet's own text (its errbuf), on one line. */
    readonly detail: string,
    options?: ErrorOptions,
  ) {
    super(`libnet cannot open '${device}': ${detail}`, options);
    this.name = "LibnetError";
  }
}
