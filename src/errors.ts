/**
 * Errors a user can act on. `message` is one line saying what is wrong and how to fix it;
 * the CLI prints it as `vnet: <message>` and exits non-zero. Anything else is a bug.
 *
 * Every VnetError carries a `code`: callers choose hints and retries by the code, never by
 * the text, so rewording a message changes nothing but the message (as `errors.Is` in Go, or
 * `SqliteError(code)` in denodrivers/sqlite3). Codes also cross the wire in request errors.
 */
export const ErrorCode = {
  /** Bad input: a flag, a request field, a file's contents. */
  Invalid: "invalid",
  /** Something named does not exist: a handler id, a device, a file. */
  NotFound: "not_found",
  /** The other end could not be reached: refused, timed out, no route, ssh failed. */
  Unreachable: "unreachable",
  /** The other end holds a different shared secret. */
  Auth: "auth",
  /** TLS or certificate verification failed, or one side speaks TLS and the other not. */
  Tls: "tls",
  /** The other end broke the protocol, or speaks another version. */
  Protocol: "protocol",
  /** Refused by policy or a limit: a MAC that may not be proxied, a full table. */
  Refused: "refused",
  /** No answer in time. */
  Timeout: "timeout",
  /** The system refused: capture, inject, listen, a file. */
  System: "system",
} as const;
export type ErrorCode = typeof ErrorCode[keyof typeof ErrorCode];

const CODES = new Set<string>(Object.values(ErrorCode));

export function isErrorCode(v: unknown): v is ErrorCode {
  return typeof v === "string" && CODES.has(v);
}

export class VnetError extends Error {
  readonly code: ErrorCode;
  constructor(message: string, options?: { code?: ErrorCode; cause?: unknown }) {
    super(message, options);
    this.name = "VnetError";
    this.code = options?.code ?? ErrorCode.Invalid;
  }
}

/** The code of `e` if it is a VnetError, else undefined. */
export function codeOf(e: unknown): ErrorCode | undefined {
  return e instanceof VnetError ? e.code : undefined;
}

/** The message of any thrown value, on one line. */
export function messageOf(e: unknown): string {
  const text = e instanceof Error ? e.message : String(e);
  return text.replace(/\s*\n\s*/g, " ");
}
