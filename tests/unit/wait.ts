/** What unit tests wait on: a condition the event loop brings about, or bytes from a peer. */

/**
 * Resolves once `done()` holds, looking every 5 ms (the poller answers in a turn or two of the
 * event loop); throws after `timeoutMs`, naming `what`.
 */
export async function until(
  what: string,
  done: () => boolean | Promise<boolean>,
  timeoutMs = 5000,
): Promise<void> {
  const deadline = performance.now() + timeoutMs;
  while (!await done()) {
    if (performance.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 5));
  }
}

/** Exactly `n` bytes from `conn`; throws at end of file. */
export async function readExactly(conn: Deno.Conn, n: number): Promise<Uint8Array> {
  const out = new Uint8Array(n);
  let got = 0;
  while (got < n) {
    const r = await conn.read(out.subarray(got));
    if (r === null) throw new Error(`EOF after ${got} of ${n} bytes`);
    got += r;
  }
  return out;
}
