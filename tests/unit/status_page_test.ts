/**
 * The `--metrics` listener on 127.0.0.1:0 with a fake status source: paths, methods, the
 * token, the page's self-containment, and its bounds (connection cap, head timeout, head size,
 * idle floods) measured against real sockets.
 */
import { assert, assertEquals, assertMatch } from "./assert.ts";
import { bearerCheck, type MetricsServer, serveMetrics } from "../../src/ops/metrics.ts";
import { type LinkEvent } from "../../src/control/events.ts";
import { buildStatus, STATUS_PAGE } from "../../src/ops/status_page.ts";
import { parseHead } from "../../src/ops/status_http.ts";
import { Logger } from "../../src/log.ts";
import { type ListedHandler } from "../../src/control/rpc.ts";

const quiet = new Logger();
const TOKEN = "tok-0123456789abcdef";

function handler(id: string, role: "proxy" | "host", bytes: number): ListedHandler {
  return {
    id,
    role,
    device: role === "proxy" ? "lan0" : "vmif0",
    macs: ["02:00:00:00:00:01"],
    multicast: false,
    peer: "10.78.0.2:7000",
    state: "up",
    degraded: null,
    link: {
      state: "up",
      remote: "10.78.0.2:7000",
      tls: false,
      rttMs: 0.8,
      socket: "data path",
      transport: "tcp",
      udp: null,
    },
    toPeer: { frames: bytes / 1000, bytes, drops: 0 },
    fromPeer: { frames: bytes / 2000, bytes: bytes / 2, drops: 3 },
    dropReasons: { link: 3, aqm: 0, truncated: 0, offload: 0, inject: 0, foreignMac: 0, loop: 0 },
    capture: { received: bytes / 1000, dropped: 0, ifDropped: 0 },
    macConflicts: 0,
    switched: { frames: 0, bytes: 0 },
    dataPathSocket: { out: 0, in: 0 },
    paths: [],
    dialled: "out",
    reconnects: 1,
  } as ListedHandler;
}

const events: LinkEvent[] = [
  { at: new Date().toISOString(), kind: "connect", remote: "10.78.0.2:7000" },
  {
    at: new Date().toISOString(),
    kind: "refused",
    remote: "10.78.0.9:5555",
    reason: "wrong secret",
  },
];

function serve(
  token?: string,
  limits?: Parameters<typeof serveMetrics>[1] extends infer S
    ? S extends { limits?: infer L } ? L : never
    : never,
): MetricsServer {
  let bytes = 1_000_000;
  const process = { rssBytes: 1, uptimeSeconds: 1, version: "0.1.0", commit: "abc", deno: "2" };
  return serveMetrics({ hostname: "127.0.0.1", port: 0 }, {
    metrics: () => "vnet_handlers 2\n",
    status: () => {
      bytes += 250_000;
      return buildStatus(
        [handler("0a0b0c0d", "proxy", bytes), handler("1a1b1c1d", "host", bytes)],
        events,
        process,
      );
    },
    token,
    limits,
  }, quiet);
}

const url = (s: MetricsServer, path: string) => `http://127.0.0.1:${s.addr.port}${path}`;

Deno.test("status: / is the page, /api/status the JSON, /metrics the text; others 404/405", async () => {
  const s = serve();
  try {
    const page = await fetch(url(s, "/"));
    assertEquals(page.status, 200);
    assertMatch(page.headers.get("content-type")!, /text\/html/);
    assertMatch(page.headers.get("content-security-policy")!, /default-src 'none'/);
    assertEquals(await page.text(), STATUS_PAGE);
    const api = await fetch(url(s, "/api/status"));
    const j = await api.json();
    assertEquals(j.roles, { proxy: 1, host: 1 });
    assertEquals(j.handlers.map((h: ListedHandler) => h.id), ["0a0b0c0d", "1a1b1c1d"]);
    assertEquals(j.events.length, 2);
    assertEquals(j.version, "0.1.0");
    const m = await fetch(url(s, "/metrics"));
    assertMatch(m.headers.get("content-type")!, /version=0\.0\.4/);
    assertEquals(await m.text(), "vnet_handlers 2\n");
    const nf = await fetch(url(s, "/nope"));
    assertEquals(nf.status, 404);
    await nf.body?.cancel();
    for (const method of ["POST", "PUT", "DELETE"]) {
      const r = await fetch(url(s, "/metrics"), { method });
      assertEquals(r.status, 405, method);
      assertEquals(r.headers.get("allow"), "GET, HEAD");
      await r.body?.cancel();
    }
    const head = await fetch(url(s, "/metrics"), { method: "HEAD" });
    assertEquals(head.status, 200);
    assertEquals(await head.text(), "");
  } finally {
    await s.shutdown();
  }
});

Deno.test("status: without /api/status source, only /metrics (the older call)", async () => {
  const s = serveMetrics({ hostname: "127.0.0.1", port: 0 }, () => "x 1\n", quiet);
  try {
    assertEquals(await (await fetch(url(s, "/metrics"))).text(), "x 1\n");
    const r = await fetch(url(s, "/"));
    assertEquals(r.status, 404);
    await r.body?.cancel();
  } finally {
    await s.shutdown();
  }
});

Deno.test("status: with a token every path needs Bearer; / answers 401 with the data-free page", async () => {
  const s = serve(TOKEN);
  try {
    for (const path of ["/metrics", "/api/status", "/nope"]) {
      for (const auth of [undefined, "Bearer wrong", `Basic ${TOKEN}`, `Bearer ${TOKEN}x`]) {
        const r = await fetch(url(s, path), { headers: auth ? { authorization: auth } : {} });
        assertEquals(r.status, 401, `${path} with ${auth}`);
        assertEquals(r.headers.get("www-authenticate"), 'Bearer realm="vnet"');
        const body = await r.text();
        assert(!body.includes("0a0b0c0d") && !body.includes("vnet_handlers"), body);
      }
    }
    const page = await fetch(url(s, "/"));
    assertEquals(page.status, 401);
    assertEquals(await page.text(), STATUS_PAGE);
    const ok = { headers: { authorization: `Bearer ${TOKEN}` } };
    assertEquals((await (await fetch(url(s, "/api/status"), ok)).json()).handlers.length, 2);
    assertEquals(await (await fetch(url(s, "/metrics"), ok)).text(), "vnet_handlers 2\n");
    const nf = await fetch(url(s, "/nope"), ok);
    assertEquals(nf.status, 404);
    await nf.body?.cancel();
  } finally {
    await s.shutdown();
  }
});

Deno.test("status: the bearer check compares whole tokens", () => {
  const ok = bearerCheck("secret-token");
  assert(ok("Bearer secret-token"));
  assert(ok("bearer   secret-token "));
  assert(!ok("Bearer secret-toke"));
  assert(!ok("Bearer secret-tokenn"));
  assert(!ok(undefined));
  assert(!ok(""));
  assert(!ok("secret-token"));
});

Deno.test("status: the page is self-contained (no external URL, no external resource)", () => {
  // Only the SVG namespace name may look like a URL; it is never fetched.
  const urls = STATUS_PAGE.match(/(https?:)?\/\/[a-z0-9.-]+\.[a-z]{2,}[^\s"'<>]*/gi) ?? [];
  assertEquals(urls.filter((u) => u !== "http://www.w3.org/2000/svg"), []);
  assert(!/<link\b|<img\b|@import|src=/.test(STATUS_PAGE), "no linked resources");
  assertMatch(STATUS_PAGE, /name="viewport"/);
  assertMatch(STATUS_PAGE, /sessionStorage/);
});

Deno.test("status: request heads are parsed strictly", () => {
  const ok = parseHead("GET /api/status?x=1 HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer t");
  assert(typeof ok !== "number");
  assertEquals(ok.path, "/api/status");
  assertEquals(ok.headers.get("authorization"), "Bearer t");
  assertEquals(parseHead("GET / HTTP/2.0"), 505);
  assertEquals(parseHead("garbage"), 400);
  assertEquals(parseHead("GET / HTTP/1.1\r\nbad header"), 400);
  assertEquals(parseHead("GET / HTTP/1.1\r\nContent-Length: 5"), 400);
  assertEquals(parseHead("GET / HTTP/1.1\r\nTransfer-Encoding: chunked"), 400);
});

/** Raw request on a fresh TCP connection; returns the status code. */
async function rawStatus(port: number, request: string): Promise<number> {
  const c = await Deno.connect({ hostname: "127.0.0.1", port });
  try {
    await c.write(new TextEncoder().encode(request));
    const buf = new Uint8Array(65536);
    let text = "";
    for (;;) {
      const n = await c.read(buf);
      if (n === null) break;
      text += new TextDecoder().decode(buf.subarray(0, n));
    }
    return Number(/^HTTP\/1\.1 (\d+)/.exec(text)?.[1] ?? 0);
  } finally {
    try {
      c.close();
    } catch { /* closed */ }
  }
}

Deno.test("status: an oversized head gets 431, and the connection is closed", async () => {
  const s = serve();
  try {
    const big = "GET / HTTP/1.1\r\nX: " + "a".repeat(9000) + "\r\n\r\n";
    assertEquals(await rawStatus(s.addr.port, big), 431);
  } finally {
    await s.shutdown();
  }
});

Deno.test("status: a silent connection is closed after the head timeout", async () => {
  const s = serve(undefined, { headTimeoutMs: 300 });
  try {
    const c = await Deno.connect({ hostname: "127.0.0.1", port: s.addr.port });
    const t0 = performance.now();
    const n = await c.read(new Uint8Array(16));
    const ms = performance.now() - t0;
    c.close();
    assertEquals(n, null);
    assert(ms >= 250 && ms < 2000, `closed after ${ms.toFixed(0)} ms`);
    assertEquals(s.stats().timedOut, 1);
    assertEquals(s.stats().open, 0);
  } finally {
    await s.shutdown();
  }
});

Deno.test("status: 500 silent connections hold at most the cap, and a real request still gets in", async () => {
  const cap = 16;
  const s = serve(undefined, { maxConnections: cap, headTimeoutMs: 30_000 });
  const idle: Deno.Conn[] = [];
  try {
    for (let i = 0; i < 500; i++) {
      idle.push(await Deno.connect({ hostname: "127.0.0.1", port: s.addr.port }));
    }
    // Let the server accept them all.
    for (let i = 0; i < 50 && s.stats().accepted < 500; i++) {
      await new Promise((r) => setTimeout(r, 20));
    }
    const st = s.stats();
    assert(st.open <= cap, `open ${st.open} > cap ${cap}`);
    assertEquals(st.accepted, 500);
    const t0 = performance.now();
    const r = await fetch(url(s, "/metrics"));
    assertEquals(r.status, 200);
    await r.text();
    const ms = performance.now() - t0;
    console.log(
      `    500 silent connections: ${s.stats().open} held (cap ${cap}), ${s.stats().evicted} ` +
        `evicted; a real request answered in ${ms.toFixed(1)} ms`,
    );
    assert(ms < 1000, `real request took ${ms} ms under the flood`);
  } finally {
    for (const c of idle) {
      try {
        c.close();
      } catch { /* closed by the server */ }
    }
    await s.shutdown();
  }
});

Deno.test("status: the listener survives clients that reset mid-request", async () => {
  const s = serve();
  try {
    for (let i = 0; i < 100; i++) {
      const c = await Deno.connect({ hostname: "127.0.0.1", port: s.addr.port });
      await c.write(new TextEncoder().encode("GET /metr"));
      c.close();
    }
    const r = await fetch(url(s, "/metrics"));
    assertEquals(r.status, 200);
    await r.text();
  } finally {
    await s.shutdown();
  }
});

Deno.test("status: at the fd limit (EMFILE) the listener survives and serves again", async () => {
  // A child process with 64 fds, a cap above that, flooded with 300 connections: accept fails
  // with EMFILE. Before, that was an unhandled rejection and exit 1.
  const script = `
    import { serveMetrics } from "${new URL("../../src/ops/metrics.ts", import.meta.url).href}";
    import { Logger } from "${new URL("../../src/log.ts", import.meta.url).href}";
    const s = serveMetrics({ hostname: "127.0.0.1", port: 0 },
      { metrics: () => "x 1\\n", limits: { maxConnections: 1000, headTimeoutMs: 2000 } },
      new Logger());
    console.log("port " + s.addr.port);
    setInterval(() => console.log("stats " + JSON.stringify(s.stats())), 500);
  `;
  // deno run, not deno eval: under EMFILE, eval's runtime panics in its own signal setup.
  const file = await Deno.makeTempFile({ suffix: ".ts" });
  await Deno.writeTextFile(file, script);
  const child = new Deno.Command("bash", {
    args: ["-c", `ulimit -n 64 && exec "${Deno.execPath()}" run -A --no-check "$0"`, file],
    cwd: new URL("../..", import.meta.url).pathname,
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const lines: string[] = [];
  const reader = child.stdout.pipeThrough(new TextDecoderStream()).getReader();
  let buffered = "";
  const nextLine = async (re: RegExp): Promise<string> => {
    for (;;) {
      const found = lines.find((l) => re.test(l));
      if (found) return found;
      const { value, done } = await reader.read();
      if (done) {
        const err = await new Response(child.stderr).text();
        throw new Error(`child ended: ${lines.join("\n")}\n${err}`);
      }
      buffered += value;
      const parts = buffered.split("\n");
      buffered = parts.pop()!;
      lines.push(...parts);
    }
  };
  const conns: Deno.Conn[] = [];
  try {
    const port = Number((await nextLine(/^port /)).split(" ")[1]);
    // Deno 2.9.6 itself panics (ext/signals, unwrap on EMFILE) when fds run out while its
    // runtime is still setting up in the first moments; let it finish starting first.
    await nextLine(/^stats /);
    for (let i = 0; i < 300; i++) {
      conns.push(await Deno.connect({ hostname: "127.0.0.1", port }));
    }
    lines.length = 0;
    const during = JSON.parse((await nextLine(/"acceptErrors":[1-9]/)).slice(6));
    for (const c of conns.splice(0)) c.close();
    // Once the flood is gone, it answers again.
    let status = 0;
    for (let i = 0; i < 50 && status !== 200; i++) {
      await new Promise((r) => setTimeout(r, 100));
      status = await rawStatus(port, "GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").catch(() =>
        0
      );
    }
    assertEquals(status, 200);
    console.log(`    at 64 fds: ${during.acceptErrors} accept errors survived, then 200`);
    const exited = await Promise.race([
      child.status.then(() => true),
      new Promise((r) => setTimeout(() => r(false), 200)),
    ]);
    assert(!exited, "the process ended");
  } finally {
    for (const c of conns) c.close();
    try {
      child.kill("SIGKILL");
    } catch { /* already ended */ }
    await child.status;
    await Deno.remove(file);
    await reader.cancel().catch(() => {});
    await child.stderr.cancel().catch(() => {});
  }
});
