/**
 * A test double for a connection (as wireguard-go keeps `conn/bindtest` beside `conn`): two
 * in-memory ends of a byte stream, for links, handshakes and servers tested without sockets.
 * Not used by production code.
 */

/** One end: reads what the other end wrote, in order, split however the reader's buffer asks. */
interface FakeStreamEnd {
  read(p: Uint8Array): Promise<number | null>;
  write(p: Uint8Array): Promise<number>;
  /** Ends both directions, as closing a socket does: reads return null, writes fail. */
  close(): void;
}

/** Two connected ends; closing either one ends both directions (like a socket). */
export function duplex(): readonly [FakeStreamEnd, FakeStreamEnd] {
  const queues: Uint8Array[][] = [[], []];
  const wakers: ((() => void) | null)[] = [null, null];
  let closed = false;
  const end = (me: 0 | 1): FakeStreamEnd => ({
    async read(p: Uint8Array): Promise<number | null> {
      const q = queues[me];
      while (q.length === 0) {
        if (closed) return null;
        await new Promise<void>((r) => wakers[me] = r);
        wakers[me] = null;
      }
      const b = q.shift()!;
      p.set(b.subarray(0, p.length));
      if (b.length > p.length) q.unshift(b.subarray(p.length));
      return Math.min(b.length, p.length);
    },
    write(p: Uint8Array): Promise<number> {
      if (closed) return Promise.reject(new Deno.errors.BrokenPipe("closed"));
      queues[1 - me].push(p.slice());
      wakers[1 - me]?.();
      return Promise.resolve(p.length);
    },
    close() {
      closed = true;
      for (const wake of wakers) wake?.();
    },
  });
  return [end(0), end(1)] as const;
}
