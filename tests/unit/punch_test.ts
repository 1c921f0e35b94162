/**
 * Punched UDP paths between two Hosts (control/direct.ts): the keys and ids both Hosts derive
 * from the Proxy's rendezvous (link/udp/keys.ts), the rendezvous as a Host checks it (rpc.ts),
 * and a PunchedLink (udp_peers.ts) that opens only once the path works both ways.
 */
import { assert, assertEquals, assertThrows } from "./assert.ts";

const assertNotEquals = <T>(a: T, b: T) => assert(a !== b, `${a} equals ${b}`);
import { derivePunched } from "../../src/link/udp/keys.ts";
import { parseRoute } from "../../src/control/rpc.ts";
import { toBase64 } from "../../src/dataplane/forwarder_protocol.ts";
import { PunchedLink, UdpPeerPort } from "../../src/dataplane/udp_peers.ts";
import { Logger } from "../../src/log.ts";
import { until } from "./wait.ts";

const hex = (b: Uint8Array) => Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");
const token = new TextEncoder().encode("0123456789abcdef0123456789abcdef");

Deno.test("punched keys: each Host's send key is the other's receive key, and ids cross", () => {
  const pairSecret = crypto.getRandomValues(new Uint8Array(32));
  for (const aead of ["chacha20poly1305", "aes256gcm"] as const) {
    const d = derivePunched({ role: "dialer", aead, pairSecret, token });
    const a = derivePunched({ role: "acceptor", aead, pairSecret, token });
    assertEquals(hex(d.keys!.send), hex(a.keys!.receive));
    assertEquals(hex(d.keys!.receive), hex(a.keys!.send));
    assertNotEquals(hex(d.keys!.send), hex(d.keys!.receive));
    assertEquals([d.localId, d.peerId], [a.peerId, a.localId]);
    assertNotEquals(d.localId, d.peerId);
    assertEquals(d.keys!.epoch, 0);
  }
  // Another secret, another token or another AEAD: other keys.
  const base = derivePunched({ role: "dialer", aead: "chacha20poly1305", pairSecret, token });
  const otherSecret = derivePunched({
    role: "dialer",
    aead: "chacha20poly1305",
    pairSecret: crypto.getRandomValues(new Uint8Array(32)),
    token,
  });
  const otherToken = derivePunched({
    role: "dialer",
    aead: "chacha20poly1305",
    pairSecret,
    token: token.slice(1),
  });
  const otherAead = derivePunched({ role: "dialer", aead: "aes256gcm", pairSecret, token });
  for (const other of [otherSecret, otherToken, otherAead]) {
    assertNotEquals(hex(other.keys!.send), hex(base.keys!.send));
  }
  // Plain: ids (the keepalive tokens) only.
  const plain = derivePunched({ role: "acceptor", aead: null, pairSecret, token });
  assertEquals(plain.keys, null);
  assertThrows(
    () => derivePunched({ role: "dialer", aead: null, pairSecret: new Uint8Array(16), token }),
    RangeError,
  );
});

Deno.test("rendezvous: an IP address, a port, 32 bytes of secret, a known AEAD", () => {
  const route = (udp: unknown) => ({
    handler: "0000000a",
    mac: "02:00:00:00:00:09",
    peer: "10.0.0.9:7000",
    remote: "0000000b",
    token: "1".repeat(32),
    dial: true,
    udp,
  });
  const secret = toBase64(new Uint8Array(32).fill(7));
  const token = "2".repeat(32);
  const ok = parseRoute(
    route({ host: "203.0.113.7", port: 7000, secret, token, aead: "chacha20poly1305" }),
  );
  assertEquals(ok.udp, {
    host: "203.0.113.7",
    port: 7000,
    secret,
    token,
    aead: "chacha20poly1305",
  });
  assertEquals(
    parseRoute(route({ host: "2001:db8::7", port: 1, secret, token })).udp?.host,
    "2001:db8::7",
  );
  assertEquals(parseRoute({ ...route(undefined), udp: undefined }).udp, undefined);
  for (
    const [bad, why] of [
      [{ host: "evil.example", port: 7000, secret, token }, /an IP address/],
      [{ host: "300.1.1.1", port: 7000, secret, token }, /an IP address/],
      [{ host: "203.0.113.7\n", port: 7000, secret, token }, /an IP address/],
      [{ host: "203.0.113.7", port: 0, secret, token }, /udp.port/],
      [
        { host: "203.0.113.7", port: 7000, secret: toBase64(new Uint8Array(16)), token },
        /32 bytes/,
      ],
      [{ host: "203.0.113.7", port: 7000, secret: "!!!", token }, /32 bytes/],
      [{ host: "203.0.113.7", port: 7000, secret, token, aead: "rot13" }, /udp.aead/],
      [{ host: "203.0.113.7", port: 7000, secret }, /lacks 'token'/],
      [{ host: "203.0.113.7", port: 7000, secret, token: "X".repeat(32) }, /udp.token/],
      ["203.0.113.7:7000", /an object/],
    ] as const
  ) {
    const e = assertThrows(() => parseRoute(route(bad)));
    assert(why.test(e.message), `${JSON.stringify(bad)}: ${e.message}`);
  }
});

interface End {
  port: UdpPeerPort;
  delivered: { link: number; handler: number }[];
}

function end(): End {
  const e: End = { port: null!, delivered: [] };
  e.port = new UdpPeerPort("127.0.0.1", 0, {
    deliver: (link, handler) => e.delivered.push({ link, handler }),
    changed: () => {},
    cut: () => {},
    dropped: () => {},
  }, new Logger());
  return e;
}

const A_HANDLER = 0x0a, B_HANDLER = 0x0b, LINK = 0x40000001;
const FRAME = new Uint8Array(60).fill(1);

for (const aead of [null, "chacha20poly1305"] as const) {
  Deno.test(`punched link (${aead ?? "plain"}): open only while both ways work`, async () => {
    const pairSecret = crypto.getRandomValues(new Uint8Array(32));
    const a = end(), b = end();
    try {
      const open = (e: End, other: End, role: "dialer" | "acceptor", mine: number, far: number) => {
        const k = derivePunched({ role, aead, pairSecret, token });
        const path = e.port.open(LINK, {
          host: "127.0.0.1",
          port: other.port.port,
          keys: k.keys,
          localId: k.localId,
          peerId: k.peerId,
          token: k.localId,
          peerToken: k.peerId,
        }, performance.now());
        path.carry(mine);
        path.carry(far);
        return new PunchedLink(LINK, "udp test", path);
      };
      // Only a punches at first: its datagrams reach a b with no path (a NAT's drop, here).
      const la = open(a, b, "dialer", A_HANDLER, B_HANDLER);
      assertEquals(la.isOpen, false);
      assertEquals(la.sendFrame(B_HANDLER, FRAME), false, "a closed punched link sends nothing");
      const lb = open(b, a, "acceptor", B_HANDLER, A_HANDLER);
      await until("both ends open", () => la.isOpen && lb.isOpen);
      assertEquals(la.sendFrame(B_HANDLER, FRAME), true);
      assertEquals(lb.sendFrame(A_HANDLER, FRAME), true);
      await until("a frame each way", () => a.delivered.length === 1 && b.delivered.length === 1);
      assertEquals(b.delivered[0], { link: LINK, handler: B_HANDLER });
      assertEquals(a.delivered[0], { link: LINK, handler: A_HANDLER });
      b.port.closeLink(LINK);
      assertEquals(lb.isOpen, false);
    } finally {
      a.port.close();
      b.port.close();
    }
  });
}
