/**
 * The one shape of "a stream" in the link layer: what a Link, the handshake and the message
 * reader run over. A TCP or TLS connection is one (Deno.Conn), and so are the pipes of an
 * `ssh -W` process (ssh.ts) and the in-memory pair the tests use (fake_stream.ts).
 */

interface Reader {
  read(p: Uint8Array): Promise<number | null>;
}

export interface Writer {
  write(p: Uint8Array): Promise<number>;
}

export interface Stream extends Reader, Writer {
  close(): void;
}

/** Writes all of `data`, however many writes it takes. */
export async function writeAll(w: Writer, data: Uint8Array): Promise<void> {
  let off = 0;
  while (off < data.length) off += await w.write(data.subarray(off));
}

/** Closes `s`, ignoring that it may be closed already. */
export function closeQuietly(s: { close(): void } | undefined): void {
  try {
    s?.close();
  } catch { /* already closed */ }
}

/**
 * `promise`, or a Deno.errors.TimedOut with `message()` after `ms`. The promise itself is not
 * cancelled: the caller releases what it holds (usually by closing the stream).
 */
export async function withTimeout<T>(
  promise: Promise<T>,
  ms: number,
  message: () => string,
): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  try {
    return await Promise.race([
      promise,
      new Promise<never>((_, reject) => {
        timer = setTimeout(() => reject(new Deno.errors.TimedOut(message())), ms);
      }),
    ]);
  } finally {
    clearTimeout(timer);
  }
}
