/**
 * A small, strict HTTP/1.1 server for the `--metrics` listener, on Deno.listen rather than
 * Deno.serve: Deno.serve has no connection cap or header timeout, so idle or slow clients could
 * hold every fd, and its accept errors (EMFILE) end the process as an unhandled rejection.
 *
 * What it does, all bounded:
 *   - one request per connection (`Connection: close`), GET and HEAD only, no body;
 *   - the request head must fit in MAX_HEAD_BYTES and arrive within `headTimeoutMs`;
 *   - the response must be taken within `writeTimeoutMs`;
 *   - at most `maxConnections` at once, and at most `maxPerAddress` still sending their head
 *     from one address. A newcomer over its address's share displaces that address's oldest
 *     idle connection; a newcomer when every slot is taken displaces the oldest idle one of
 *     the address holding most (OpenSSH's MaxStartups spirit, as the server port does): a
 *     flood of idle connections churns its own slots, and a scraper elsewhere still gets in.
 *     Idle means still sending its head, or lingering after its answer; if none is, the
 *     newcomer is closed at once;
 *   - after the answer it lingers: it shuts its write side, then reads and discards what the
 *     client still sends for up to LINGER_MS, and only then closes. Closing with unread bytes
 *     would send an RST, which can destroy the answer before the client has read it;
 *   - an accept error (EMFILE, ECONNABORTED, ...) is logged and survived, with a backoff from
 *     5 ms to 1 s on resource errors, as Go's net/http does. Nothing here can end the process.
 */
import { messageOf } from "../errors.ts";
import type { Logger } from "../log.ts";

export interface HttpRequest {
  method: string;
  /** The path, without the query. */
  path: string;
  /** Header names lowercased. */
  headers: Map<string, string>;
  /** The client's IP address ("" if unknown): for per-address limits. */
  remote: string;
}

export interface HttpResponse {
  status: number;
  headers?: Record<string, string>;
  body?: string | Uint8Array;
}

export interface HttpLimits {
  maxConnections?: number;
  /** Connections still sending their head from one address. */
  maxPerAddress?: number;
  headTimeoutMs?: number;
  writeTimeoutMs?: number;
}

export interface HttpStats {
  /** Connections open now. */
  open: number;
  accepted: number;
  /** Closed on arrival because every slot was answering. */
  refused: number;
  /** Closed while idle (sending their head, or lingering), to make room for a newer one. */
  evicted: number;
  /** Closed because their head or their reading of the answer took too long. */
  timedOut: number;
  /** Accept errors survived. */
  acceptErrors: number;
}

interface HttpServer {
  addr: Deno.NetAddr;
  stats(): HttpStats;
  shutdown(): Promise<void>;
}

const MAX_HEAD_BYTES = 8192;
/** The first read's buffer: a scrape's head fits; idle connections hold no more than this. */
const FIRST_READ_BYTES = 1024;
/** How long a connection may linger after its answer, and how much it may still send. */
const LINGER_MS = 1000;
const LINGER_BYTES = 1024 * 1024;
const DEFAULT_LIMITS: Required<HttpLimits> = {
  maxConnections: 64,
  maxPerAddress: 16,
  headTimeoutMs: 5000,
  writeTimeoutMs: 10_000,
};

const REASONS: Record<number, string> = {
  200: "OK",
  400: "Bad Request",
  401: "Unauthorized",
  404: "Not Found",
  405: "Method Not Allowed",
  408: "Request Timeout",
  421: "Misdirected Request",
  429: "Too Many Requests",
  431: "Request Header Fields Too Large",
  500: "Internal Server Error",
  505: "HTTP Version Not Supported",
};

const encoder = new TextEncoder();
const decoder = new TextDecoder();

interface Slot {
  conn: Deno.Conn;
  address: string;
  /** Sending its head or lingering (may be displaced), or being answered. */
  idle: boolean;
  closed: boolean;
}

/** Listens on `hostname:port` (0: any free port) and answers with `handle`. Throws if it cannot. */
export function serveHttp(
  options: { hostname: string; port: number },
  handle: (req: HttpRequest) => HttpResponse | Promise<HttpResponse>,
  log: Logger,
  limits: HttpLimits = {},
): HttpServer {
  const lim = { ...DEFAULT_LIMITS, ...limits };
  const listener = Deno.listen({ hostname: options.hostname, port: options.port });
  /** Open connections, oldest first. */
  const slots = new Set<Slot>();
  /** Idle connections per address. */
  const idleOf = new Map<string, number>();
  const stats: HttpStats = {
    open: 0,
    accepted: 0,
    refused: 0,
    evicted: 0,
    timedOut: 0,
    acceptErrors: 0,
  };
  let stopping = false;
  let lastWarn = -Infinity;
  /** At most one warning per 10 s: a flood must not flood the log too. */
  const warn = (msg: string, fields: Record<string, string | number>) => {
    const now = performance.now();
    if (now - lastWarn < 10_000) return;
    lastWarn = now;
    log.warn(msg, fields);
  };

  const setIdle = (slot: Slot, idle: boolean) => {
    if (slot.idle === idle || slot.closed) return;
    slot.idle = idle;
    const n = (idleOf.get(slot.address) ?? 0) + (idle ? 1 : -1);
    if (n > 0) idleOf.set(slot.address, n);
    else idleOf.delete(slot.address);
  };

  const close = (slot: Slot) => {
    if (slot.closed) return;
    setIdle(slot, false);
    slot.closed = true;
    slots.delete(slot);
    stats.open = slots.size;
    try {
      slot.conn.close();
    } catch { /* already closed */ }
  };

  /** The idle connection to close for a newcomer from `address`, if one must go. */
  const victimFor = (address: string): Slot | undefined => {
    const oldestIdleOf = (a: string) => {
      for (const s of slots) if (s.idle && s.address === a) return s;
    };
    if ((idleOf.get(address) ?? 0) >= lim.maxPerAddress) return oldestIdleOf(address);
    if (slots.size < lim.maxConnections) return undefined;
    let busiest = "", most = 0;
    for (const [a, n] of idleOf) if (n > most) [busiest, most] = [a, n];
    return most > 0 ? oldestIdleOf(busiest) : undefined;
  };

  const serveOne = async (slot: Slot) => {
    const timer = setTimeout(() => {
      stats.timedOut++;
      close(slot);
    }, lim.headTimeoutMs);
    let response: HttpResponse & { head?: boolean };
    try {
      const head = await readHead(slot.conn);
      clearTimeout(timer);
      if (slot.closed) return;
      setIdle(slot, false);
      response = head === null
        ? { status: 431, body: "request head too large\n" }
        : await answer(head, slot.address, handle, log);
    } catch {
      clearTimeout(timer);
      close(slot); // reset, timed out, evicted, or not HTTP: nothing to answer
      return;
    }
    const writeTimer = setTimeout(() => {
      stats.timedOut++;
      close(slot);
    }, lim.writeTimeoutMs);
    try {
      await writeAll(slot.conn, encodeResponse(response.head ?? false, response));
    } catch {
      clearTimeout(writeTimer);
      return close(slot); // the client went away
    }
    clearTimeout(writeTimer);
    await linger(slot);
  };

  /** Shuts the write side, discards what the client still sends, then closes (see the top). */
  const linger = async (slot: Slot) => {
    if (slot.closed) return;
    setIdle(slot, true);
    const timer = setTimeout(() => close(slot), LINGER_MS);
    try {
      await slot.conn.closeWrite();
      const sink = new Uint8Array(4096);
      for (let drained = 0; drained < LINGER_BYTES && !slot.closed;) {
        const n = await slot.conn.read(sink);
        if (n === null) break;
        drained += n;
      }
    } catch { /* reset, or closed by the timer or for a newcomer */ }
    clearTimeout(timer);
    close(slot);
  };

  const acceptLoop = async () => {
    let backoffMs = 0;
    while (!stopping) {
      let conn: Deno.Conn;
      try {
        conn = await listener.accept();
      } catch (e) {
        if (stopping || e instanceof Deno.errors.BadResource) return;
        stats.acceptErrors++;
        warn("metrics accept failed, retrying", { error: messageOf(e) });
        backoffMs = Math.min(1000, backoffMs ? backoffMs * 2 : 5);
        await new Promise((r) => setTimeout(r, backoffMs));
        continue;
      }
      backoffMs = 0;
      stats.accepted++;
      let address = "";
      try {
        address = (conn.remoteAddr as Deno.NetAddr).hostname;
      } catch { /* reset already: its read fails */ }
      const victim = victimFor(address);
      if (victim) {
        stats.evicted++;
        close(victim);
      }
      if (slots.size >= lim.maxConnections) {
        stats.refused++;
        warn("metrics connection refused: too many open", { open: slots.size });
        try {
          conn.close();
        } catch { /* gone */ }
        continue;
      }
      const slot: Slot = { conn, address, idle: false, closed: false };
      slots.add(slot);
      setIdle(slot, true);
      stats.open = slots.size;
      serveOne(slot).catch((e) => {
        log.error("metrics request failed", { error: messageOf(e) });
        close(slot);
      });
    }
  };
  const loop = acceptLoop().catch((e) =>
    log.error("metrics listener stopped", { error: messageOf(e) })
  );

  return {
    addr: listener.addr as Deno.NetAddr,
    stats: () => ({ ...stats }),
    shutdown: async () => {
      if (stopping) return;
      stopping = true;
      try {
        listener.close();
      } catch { /* closed */ }
      for (const s of [...slots]) close(s);
      await loop;
    },
  };
}

interface Head extends HttpRequest {
  head: boolean;
}

/** Runs `handle` on a parsed head; malformed requests and handler errors become 4xx/500. */
async function answer(
  raw: string,
  remote: string,
  handle: (req: HttpRequest) => HttpResponse | Promise<HttpResponse>,
  log: Logger,
): Promise<HttpResponse & { head?: boolean }> {
  const req = parseHead(raw, remote);
  if (typeof req === "number") return { status: req, body: `${REASONS[req]}\n` };
  if (req.method !== "GET" && req.method !== "HEAD") {
    return { status: 405, headers: { allow: "GET, HEAD" }, body: "only GET and HEAD\n" };
  }
  try {
    return { ...await handle(req), head: req.head };
  } catch (e) {
    log.error("metrics request failed", { path: req.path, error: messageOf(e) });
    return { status: 500, body: "internal error\n", head: req.head };
  }
}

/** The request line and headers, or an HTTP status to answer with. */
export function parseHead(raw: string, remote = ""): Head | number {
  const lines = raw.split("\r\n");
  const m = /^([A-Z]+) (\S+) HTTP\/(\d)\.(\d)$/.exec(lines[0]);
  if (!m) return 400;
  if (m[3] !== "1") return 505;
  const headers = new Map<string, string>();
  for (const line of lines.slice(1)) {
    if (line === "") continue;
    const colon = line.indexOf(":");
    if (colon <= 0 || /\s/.test(line.slice(0, colon))) return 400;
    headers.set(line.slice(0, colon).toLowerCase(), line.slice(colon + 1).trim());
  }
  // No bodies: a request that announces one is refused rather than left half read.
  const length = headers.get("content-length");
  if (headers.has("transfer-encoding") || (length !== undefined && length !== "0")) return 400;
  let path = m[2];
  if (/^https?:\/\//i.test(path)) path = path.replace(/^https?:\/\/[^/]*/i, "") || "/";
  if (!path.startsWith("/")) return 400;
  const q = path.indexOf("?");
  if (q >= 0) path = path.slice(0, q);
  return { method: m[1], path, headers, remote, head: m[1] === "HEAD" };
}

/**
 * Reads up to the blank line ending the head; null if it does not fit in MAX_HEAD_BYTES.
 * Throws if the connection ends first.
 */
async function readHead(conn: Deno.Conn): Promise<string | null> {
  let buf = new Uint8Array(FIRST_READ_BYTES);
  let used = 0;
  for (;;) {
    if (used === buf.length) {
      if (buf.length === MAX_HEAD_BYTES) return null;
      const bigger = new Uint8Array(MAX_HEAD_BYTES);
      bigger.set(buf);
      buf = bigger;
    }
    const n = await conn.read(buf.subarray(used));
    if (n === null) throw new Error("connection closed before the request ended");
    const from = Math.max(0, used - 3);
    used += n;
    for (let i = from; i + 3 < used; i++) {
      if (buf[i] === 13 && buf[i + 1] === 10 && buf[i + 2] === 13 && buf[i + 3] === 10) {
        return decoder.decode(buf.subarray(0, i));
      }
    }
  }
}

function encodeResponse(headOnly: boolean, r: HttpResponse): Uint8Array {
  const body = r.body === undefined
    ? new Uint8Array()
    : typeof r.body === "string"
    ? encoder.encode(r.body)
    : r.body;
  const headers: Record<string, string> = {
    "content-type": "text/plain; charset=utf-8",
    "cache-control": "no-store",
    "x-content-type-options": "nosniff",
    ...r.headers,
    "content-length": String(body.length),
    connection: "close",
  };
  let head = `HTTP/1.1 ${r.status} ${REASONS[r.status] ?? "Status"}\r\n`;
  for (const [k, v] of Object.entries(headers)) head += `${k}: ${v}\r\n`;
  head += "\r\n";
  const h = encoder.encode(head);
  if (headOnly) return h;
  const out = new Uint8Array(h.length + body.length);
  out.set(h);
  out.set(body, h.length);
  return out;
}

async function writeAll(conn: Deno.Conn, data: Uint8Array): Promise<void> {
  let off = 0;
  while (off < data.length) off += await conn.write(data.subarray(off));
}
