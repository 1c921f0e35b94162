/**
 * Errors a user can act on. `message` is one line saying what is wrong and how to fix it;
 * the CLI prints it as `vnet: <message>` and exits non-zero. Anything else is a bug.
 */
export class VnetError extends Error {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = "VnetError";
  }
}

/** The message of any thrown value, on one line. */
export function messageOf(e: unknown): string {
  const text = e instanceof Error ? e.message : String(e);
  return text.replace(/\s*\n\s*/g, " ");
}
