/**
 * The links' UDP paths (src/dataplane/udp_peers.ts) between two ports on 127.0.0.1: the
 * keepalives bring a path up, frames cross it plain (VXLAN) and sealed, and what a stranger or
 * a forger sends is counted and never handed on.
 */
import { assert, assertEquals } from "./assert.ts";
import {
  LOSS_MIN_SAMPLES,
  LOSS_WINDOW,
  probeDatagram,
  type UdpPathSpec,
  UdpPeerPort,
} from "../../src/dataplane/udp_peers.ts";
import { deriveSessionKeys, EphemeralKeyPair } from "../../src/link/udp/keys.ts";
import { UdpSocket } from "../../src/io/udp_socket.ts";
import { encodeVxlan } from "../../src/dataplane/vxlan.ts";
import { prepareForWire } from "../../src/dataplane/offload.ts";
import { tcpSuperFrame } from "../tcp_frames.ts";
import { Logger } from "../../src/log.ts";
import { until } from "./wait.ts";

const LINK = 7;
const HANDLER = 0x0a0b0c0d;

interface End {
  port: UdpPeerPort;
  delivered: { link: number; handler: number; frame: Uint8Array }[];
  changes: boolean[];
  /** Frames dropped for the path's queue, by handler. */
  dropped: number[];
}

function end(): End {
  const e: End = { port: null!, delivered: [], changes: [], dropped: [] };
  e.port = new UdpPeerPort("127.0.0.1", 0, {
    deliver: (link, handler, frame) => e.delivered.push({ link, handler, frame: frame.slice() }),
    changed: (_link, up) => e.changes.push(up),
    cut: () => {},
    dropped: (handler) => e.dropped.push(handler),
  }, new Logger());
  return e;
}

/**
 * Two ends with a path between them, plain or sealed (keys as the link would agree them);
 * `peerCompletesChecksums` as each end heard it of the other.
 */
function pair(sealed: boolean, peerCompletesChecksums = false): { a: End; b: End } {
  const a = end(), b = end();
  let keysA = null, keysB = null;
  if (sealed) {
    const linkSecret = crypto.getRandomValues(new Uint8Array(32));
    const ea = new EphemeralKeyPair(), eb = new EphemeralKeyPair();
    const pa = ea.publicKey.slice(), pb = eb.publicKey.slice();
    const aead = "chacha20poly1305";
    keysA = deriveSessionKeys({
      role: "dialer",
      aead,
      epoch: 0,
      linkSecret,
      ephemeral: ea,
      peerPublic: pb,
    });
    keysB = deriveSessionKeys({
      role: "acceptor",
      aead,
      epoch: 0,
      linkSecret,
      ephemeral: eb,
      peerPublic: pa,
    });
  }
  const spec = (keys: typeof keysA, port: number, mine: number, theirs: number): UdpPathSpec => ({
    host: "127.0.0.1",
    port,
    keys,
    localId: mine,
    peerId: theirs,
    token: mine,
    peerToken: theirs,
    peerCompletesChecksums,
  });
  const now = performance.now();
  a.port.open(LINK, spec(keysA, b.port.port, 111, 222), now).carry(HANDLER);
  b.port.open(LINK, spec(keysB, a.port.port, 222, 111), now).carry(HANDLER);
  return { a, b };
}

function frame(n: number, length = 100): Uint8Array {
  const f = new Uint8Array(length);
  f.set([2, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 2, 0x88, 0xb5]);
  for (let i = 14; i < length; i++) f[i] = (n + i) & 0xff;
  return f;
}

function close(...ends: End[]): void {
  for (const e of ends) e.port.close();
}

for (const sealed of [false, true]) {
  const kind = sealed ? "sealed" : "plain VXLAN";
  Deno.test(`udp path (${kind}): keepalives bring it up, frames cross both ways`, async () => {
    const { a, b } = pair(sealed);
    try {
      await until("both ends up", () => a.port.get(LINK)!.up && b.port.get(LINK)!.up);
      assertEquals(a.changes, [true]);
      for (let n = 0; n < 20; n++) {
        assertEquals(a.port.get(LINK)!.bypass(HANDLER, frame(n)), true);
      }
      assertEquals(b.port.get(LINK)!.bypass(HANDLER, frame(99)), true);
      await until(
        "20 frames at b, 1 at a",
        () => b.delivered.length === 20 && a.delivered.length === 1,
      );
      for (let n = 0; n < 20; n++) {
        assertEquals(b.delivered[n], { link: LINK, handler: HANDLER, frame: frame(n) });
      }
      // A handler the path does not carry stays on the link's stream.
      assertEquals(a.port.get(LINK)!.bypass(HANDLER + 1, frame(0)), null);
      assertEquals(a.port.get(LINK)!.state().sealed, sealed);
      // Each wake-up read what there was with one recvmmsg, and never asked again for nothing.
      for (const e of [a, b]) {
        const rx = e.port.socket.rx;
        assert(rx.calls > 0 && rx.empty === 0, `${rx.calls} receives, ${rx.empty} found nothing`);
      }
    } finally {
      close(a, b);
    }
  });

  Deno.test(`udp path (${kind}): strangers, forgeries and replays are counted, never handed on`, async () => {
    const { a, b } = pair(sealed);
    const stranger = UdpSocket.open({ address: "127.0.0.1", port: 0 });
    try {
      await until("both ends up", () => a.port.get(LINK)!.up && b.port.get(LINK)!.up);
      // Catch what a sends b: a real datagram to replay and tamper with.
      const spy = UdpSocket.open({ address: "127.0.0.1", port: 0 });
      const realPeer = a.port.get(LINK)!.peer;
      a.port.get(LINK)!.peer = a.port.socket.peer("127.0.0.1", spy.port);
      a.port.get(LINK)!.bypass(HANDLER, frame(1));
      await until("the spy to catch a datagram", () => spy.rx.receive() > 0);
      const caught = spy.rx.data.slice(spy.rx.offset[0], spy.rx.offset[0] + spy.rx.length[0]);
      spy.close();
      a.port.get(LINK)!.peer = realPeer;
      const to = stranger.peer("127.0.0.1", b.port.port);
      const hostile: Uint8Array[] = [
        crypto.getRandomValues(new Uint8Array(200)),
        new Uint8Array(0),
        caught.subarray(0, 20),
      ];
      for (let i = 0; i < 50; i++) {
        const flipped = caught.slice();
        flipped[Math.floor(Math.random() * flipped.length)] ^= 1 << (i % 8);
        hostile.push(flipped);
      }
      for (const d of hostile) stranger.sendTo(to, d);
      // The caught datagram from a stranger's address: sealed, it is genuine (once); plain, it
      // comes from the wrong address.
      stranger.sendTo(to, caught);
      stranger.sendTo(to, caught);
      const before = b.port.get(LINK)!.state().refused + b.port.strangers;
      await until(
        "b to count them",
        () => b.port.get(LINK)!.state().refused + b.port.strangers >= before + hostile.length,
      );
      const genuine = b.delivered.filter((d) => d.frame.length === 100);
      assert(genuine.length <= 1, `${genuine.length} datagrams handed on`);
      if (genuine.length === 1) assertEquals(genuine[0].frame, frame(1));
      // Whatever a stranger sent, the path still works.
      await until("b still up", () => b.port.get(LINK)!.up);
    } finally {
      stranger.close();
      close(a, b);
    }
  });
}

Deno.test("udp path: silence takes it down, and frames go back to the link's stream", async () => {
  const { a, b } = pair(true);
  try {
    await until("both ends up", () => a.port.get(LINK)!.up && b.port.get(LINK)!.up);
    b.port.close();
    // Four seconds on a's clock without a word from b.
    a.port.get(LINK)!.tick(performance.now() + 4000);
    assertEquals(a.port.get(LINK)!.up, false);
    assertEquals(a.changes, [true, false]);
    assertEquals(a.port.get(LINK)!.bypass(HANDLER, frame(0)), null);
    assertEquals(a.port.get(LINK)!.state().fallbackFrames, 1);
  } finally {
    close(a, b);
  }
});

Deno.test("udp path (sealed): a new epoch's keys, installed as the link agrees them", async () => {
  const a = end(), b = end();
  const linkSecret = crypto.getRandomValues(new Uint8Array(32));
  const aead = "chacha20poly1305";
  const keys = (epoch: number) => {
    const ea = new EphemeralKeyPair(), eb = new EphemeralKeyPair();
    const pa = ea.publicKey.slice(), pb = eb.publicKey.slice();
    return {
      a: deriveSessionKeys({
        role: "dialer",
        aead,
        epoch,
        linkSecret,
        ephemeral: ea,
        peerPublic: pb,
      }),
      b: deriveSessionKeys({
        role: "acceptor",
        aead,
        epoch,
        linkSecret,
        ephemeral: eb,
        peerPublic: pa,
      }),
    };
  };
  const first = keys(0);
  const now = performance.now();
  const spec = (k: typeof first.a, port: number, mine: number, theirs: number) => ({
    host: "127.0.0.1",
    port,
    keys: k,
    localId: mine,
    peerId: theirs,
    token: 0,
    peerToken: 0,
  });
  a.port.open(LINK, spec(first.a, b.port.port, 1, 2), now).carry(HANDLER);
  b.port.open(LINK, spec(first.b, a.port.port, 2, 1), now).carry(HANDLER);
  try {
    await until("both ends up", () => a.port.get(LINK)!.up && b.port.get(LINK)!.up);
    const next = keys(1);
    // The acceptor answers first: it opens with the new keys at once, seals with the old ones.
    b.port.get(LINK)!.session!.rekey(next.b, performance.now(), { peerHasKeys: false });
    a.port.get(LINK)!.session!.rekey(next.a, performance.now(), { peerHasKeys: true });
    assertEquals(a.port.get(LINK)!.session!.epoch, 1);
    a.port.get(LINK)!.bypass(HANDLER, frame(1));
    await until("b to get the frame", () => b.delivered.length === 1);
    // Seen under the new epoch, b seals with it too.
    assertEquals(b.port.get(LINK)!.session!.epoch, 1);
    b.port.get(LINK)!.bypass(HANDLER, frame(2));
    await until("a to get the answer", () => a.delivered.length === 1);
    assertEquals(a.delivered[0].frame, frame(2));
  } finally {
    close(a, b);
  }
});

Deno.test("udp path: the gaps in the peer's last keepalive numbers give the path's loss", () => {
  const { a, b } = pair(false);
  const W = LOSS_WINDOW;
  try {
    const link = a.port.get(LINK)!;
    assertEquals(link.state().lossPercent, null);
    const now = performance.now();
    const came = new Set<number>();
    const hear = (seq: number) => {
      came.add(seq);
      link.heard(now, 1, seq);
    };
    /** The loss over the last W numbers up to `last`, in percent. */
    const expected = (last: number) => {
      let lost = 0;
      for (let s = last - W + 1; s <= last; s++) if (!came.has(s)) lost++;
      return Math.round(100 * lost / W);
    };
    // Too few keepalives give no figure yet.
    for (let seq = 0; seq < LOSS_MIN_SAMPLES - 1; seq++) hear(seq);
    assertEquals(link.state().lossPercent, null);
    hear(LOSS_MIN_SAMPLES - 1);
    assertEquals(link.state().lossPercent, 0);
    // Then every tenth never comes, over the window and beyond it: 10%.
    for (let seq = LOSS_MIN_SAMPLES; seq < 2 * W; seq++) if (seq % 10 !== 5) hear(seq);
    assertEquals(link.state().lossPercent, 10);
    // One that comes late within the window is not lost.
    hear(2 * W - 5);
    assertEquals(link.state().lossPercent, expected(2 * W - 1));
    assert(link.state().lossPercent! < 10);
    // Runs are loss too, however long, short of a silence: a policer makes them.
    hear(2 * W + W / 4);
    assertEquals(link.state().lossPercent, expected(2 * W + W / 4));
    assert(link.state().lossPercent! >= 25);
    // A timed keepalive (flag 8) is not counted, whatever its number.
    const before = link.state().lossPercent;
    link.heard(now, 1 | 8, 2 * W + W);
    assertEquals(link.state().lossPercent, before);
    // A number far below the window: the peer started counting again.
    link.heard(now, 1, 2);
    assertEquals(link.state().lossPercent, null);
    for (let seq = 3; seq < 2 + LOSS_MIN_SAMPLES; seq++) link.heard(now, 1, seq);
    assertEquals(link.state().lossPercent, 0);
    // A silence starts the figure afresh: what was lost in it says nothing of the path now.
    link.heard(now + 4000, 1, 600);
    assertEquals(link.state().lossPercent, null);
  } finally {
    close(a, b);
  }
});

Deno.test("udp path: a peer that loses a quarter of ours sends the frames to the link, and back", () => {
  const { a, b } = pair(true);
  try {
    const link = a.port.get(LINK)!;
    const t0 = performance.now();
    let seq = 0;
    const hear = (at: number, peerLoss: number) => link.heard(t0 + at, 1, seq++, peerLoss);
    hear(0, 255);
    assertEquals(link.up, true);
    assertEquals(link.bypass(HANDLER, frame(0)), true);
    // The peer says it lost 24% of ours: still up. 25%: lossy, the frames go by the stream.
    hear(200, 24);
    assertEquals(link.up, true);
    hear(400, 40);
    assertEquals(link.up, false);
    assertEquals(link.state().state, "lossy");
    assertEquals(link.state().peerLossPercent, 40);
    assertEquals(link.bypass(HANDLER, frame(1)), null);
    assertEquals(link.state().fallbackFrames, 1);
    assertEquals(a.changes.at(-1), false);
    // Clean again at once, but the path stays on the stream for 5 s: no flapping.
    hear(600, 0);
    hear(4000, 0);
    assertEquals(link.state().state, "lossy");
    // 10% is better, but not clean: still the stream.
    hear(5400, 10);
    assertEquals(link.state().state, "lossy");
    // No figure (the peer started counting afresh) is not a clean one.
    hear(5500, 255);
    assertEquals(link.state().state, "lossy");
    hear(5600, 5);
    assertEquals(link.state().state, "up");
    assertEquals(link.bypass(HANDLER, frame(2)), true);
    assertEquals(a.changes.at(-1), true);
    assertEquals(link.state().downs, 1);
  } finally {
    close(a, b);
  }
});

Deno.test("udp path: keepalives report the loss both ways, and a busy path's come faster", async () => {
  const { a, b } = pair(false);
  try {
    const la = a.port.get(LINK)!, lb = b.port.get(LINK)!;
    await until("both ends up", () => la.up && lb.up);
    // Frames keep a's path busy: its keepalives go every 100 ms, not every second, so b has
    // a loss figure of a's (20 keepalives) within ~2 s, and tells a in its own keepalives. The
    // timed ones between (every 25 ms) are not counted: the figure is not there sooner.
    const started = performance.now();
    let n = 0;
    const frames = setInterval(() => la.bypass(HANDLER, frame(n++)), 20);
    // b has nothing to send, but the frames it gets keep its keepalives busy too.
    const ticks = setInterval(() => b.port.tick(performance.now()), 250);
    try {
      await until("b's figure of a's loss, reported back", () => la.peerLossPercent !== null);
    } finally {
      clearInterval(frames);
      clearInterval(ticks);
    }
    const tookMs = performance.now() - started;
    assert(tookMs < 4000, `a's loss known after ${tookMs.toFixed(0)} ms`);
    assertEquals(lb.lossPercent, 0);
    assertEquals(la.peerLossPercent, 0);
    assertEquals(la.state().state, "up");
  } finally {
    close(a, b);
  }
});

Deno.test("udp path: a queue the peer sees ours wait in drops full-size frames, never small ones", async () => {
  const { a, b } = pair(false);
  try {
    const la = a.port.get(LINK)!, lb = b.port.get(LINK)!;
    await until("both ends up", () => la.up && lb.up);
    // The keepalives are timed: each end knows how long the other's wait (nothing here).
    await until("b's figure of a's queue, reported back", () => la.state().queueDelayMs !== null);
    // Small, not zero: here both ends share the test's thread, and a keepalive can wait a few
    // ms between its send time and its send (the deferred flush); a worker sends it at once.
    assert(la.state().queueDelayMs! < 10, `queue ${la.state().queueDelayMs} ms on loopback`);
    // b now says a's datagrams wait 20 ms (0.1 ms units), for longer than CoDel's interval.
    const t0 = performance.now() - 300;
    for (let t = 0; t <= 300; t += 25) la.heard(t0 + t, 1, 1000 + t, 0, 0, -1, 200);
    assertEquals(la.state().queueDelayMs, 20);
    // A ping's worth crosses; a full-size frame is dropped (and told), the next not yet. "Full
    // size" is HEAVY_FRAME_BYTES or more, and 1200 fits the path before its MTU probe crosses too.
    const before = b.delivered.length;
    assertEquals(la.bypass(HANDLER, frame(1, 98)), true);
    assertEquals(la.bypass(HANDLER, frame(2, 1200)), true);
    assertEquals(la.bypass(HANDLER, frame(3, 1200)), true);
    assertEquals(a.dropped, [HANDLER]);
    assertEquals(la.state().aqmDrops, 1);
    await until("b to get two frames", () => b.delivered.length >= before + 2);
    assertEquals(b.delivered.slice(before).map((d) => d.frame.length), [98, 1200]);
  } finally {
    close(a, b);
  }
});

Deno.test("udp port: a datagram the kernel refuses is lost alone, the rest of its batch goes", async () => {
  const a = end();
  const listener = UdpSocket.open({ address: "127.0.0.1", port: 0 });
  try {
    const now = performance.now();
    const spec = (host: string, port: number, id: number): UdpPathSpec => ({
      host,
      port,
      keys: null,
      localId: id,
      peerId: id + 1,
      token: id,
      peerToken: id + 1,
    });
    // Link 6's peer is a broadcast address, which a socket without SO_BROADCAST may not send to
    // (EACCES, as a local firewall's drop gives EPERM): each keepalive of its is refused, and
    // comes first in the port's batch, before link 7's to the listener.
    const refusedLink = a.port.open(6, spec("255.255.255.255", 4789, 60), now);
    const sendingLink = a.port.open(LINK, spec("127.0.0.1", listener.port, 70), now);
    const heard = () => {
      let n = 0;
      while (listener.rx.receive() > 0) n += listener.rx.count;
      return n;
    };
    // What open() sent, before any refusal.
    await until("the keepalive link 7 sent when it opened", () => heard() > 0);
    for (let k = 1; k <= 5; k++) {
      const failures = a.port.stats().sendRefused;
      // Both keepalives are due (a minute on, busy or idle): one batch, the refused one first.
      a.port.tick(now + k * 60_000);
      await until(`tick ${k}: the refused keepalive`, () => a.port.stats().sendRefused > failures);
      let got = 0;
      await until(`tick ${k}: link 7's keepalive at the listener`, () => (got += heard()) > 0);
      assertEquals(got, 1);
    }
    // Counted against the link whose peer was refused, so that `list` names it; not the other.
    assertEquals(refusedLink.state().sendRefused, a.port.stats().sendRefused);
    assert(refusedLink.state().sendRefused >= 5, `${refusedLink.state().sendRefused}`);
    assertEquals(sendingLink.state().sendRefused, 0);
  } finally {
    listener.close();
    close(a);
  }
});

Deno.test("udp port: a doctor's probe comes back, four times at most, for a token given out; others never", async () => {
  const e = end();
  const doctor = UdpSocket.open({ address: "127.0.0.1", port: 0 });
  try {
    const to = doctor.peer("127.0.0.1", e.port.port);
    const heard = async (what: string, expect: Uint8Array | null) => {
      const strangers = e.port.strangers, answered = e.port.probesAnswered;
      // Either answered or counted: then look whether anything came back.
      await until(what, () => e.port.strangers + e.port.probesAnswered > strangers + answered);
      const n = doctor.rx.receive();
      if (expect === null) return assertEquals(n, 0, `${what}: answered`);
      assertEquals(n, 1, `${what}: no answer`);
      const got = doctor.rx.data.slice(
        doctor.rx.offset[0],
        doctor.rx.offset[0] + doctor.rx.length[0],
      );
      assertEquals(got, expect);
    };
    // A token never given out: no answer.
    doctor.sendTo(to, probeDatagram(42));
    await heard("an unknown token", null);
    // Given out: the probe comes back as it went, four copies at most (the doctor resends in
    // case one is lost either way).
    assert(e.port.expectProbe(42, performance.now()));
    for (let copy = 1; copy <= 4; copy++) {
      doctor.sendTo(to, probeDatagram(42));
      await heard(`copy ${copy} of a token given out`, probeDatagram(42));
    }
    doctor.sendTo(to, probeDatagram(42));
    await heard("a fifth copy", null);
    // An expired token: no answer. At most 16 wait at once.
    assert(e.port.expectProbe(43, performance.now() - 20_000));
    doctor.sendTo(to, probeDatagram(43));
    await heard("an expired token", null);
    for (let t = 100; t < 116; t++) assert(e.port.expectProbe(t, performance.now()));
    assertEquals(e.port.expectProbe(116, performance.now()), false);
  } finally {
    doctor.close();
    close(e);
  }
});

/** The start of a unicast Ethernet frame (destination, source, EtherType). */
const UNICAST = new Uint8Array([2, 0x5e, 0, 0, 2, 1, 2, 0x5e, 0, 0, 1, 1, 0x08, 0x00]);

Deno.test("udp path: idle both ways, a keepalive each 10 s and 30 s of patience; a frame wakes it", () => {
  const { a, b } = pair(false);
  try {
    const link = a.port.get(LINK)!;
    const t0 = performance.now();
    const HEARS_YOU = 1, IDLE = 2;
    let seq = 0;
    link.heard(t0, HEARS_YOU, seq++);
    assertEquals(link.up, true);
    const sent = () => link.stats.keepalivesOut;
    // Busy or not yet idle: one a second.
    let before = sent();
    for (let s = 1; s <= 9; s++) {
      link.heard(t0 + s * 1000 - 500, HEARS_YOU, seq++);
      link.tick(t0 + s * 1000);
    }
    assertEquals(sent() - before, 9);
    assertEquals(link.up, true);
    // 10 s without a frame: idle, but the peer is not (yet): still one a second.
    link.heard(t0 + 9500, HEARS_YOU, seq++);
    before = sent();
    link.tick(t0 + 10_000);
    link.tick(t0 + 11_000);
    assertEquals(sent() - before, 2);
    // The peer says it is idle too: one every 10 s.
    link.heard(t0 + 11_500, HEARS_YOU | IDLE, seq++);
    before = sent();
    for (let s = 12; s <= 20; s++) link.tick(t0 + s * 1000);
    assertEquals(sent() - before, 0);
    link.tick(t0 + 21_000);
    assertEquals(sent() - before, 1);
    // An idle peer may keep quiet for 30 s: up at 29 s of silence, down after 30.
    link.tick(t0 + 11_500 + 29_000);
    assertEquals(link.up, true);
    link.tick(t0 + 11_500 + 30_500);
    assertEquals(link.up, false);
    link.heard(t0 + 42_500, HEARS_YOU | IDLE, seq++);
    assertEquals(link.up, true);
    // A VM's chatter (a router solicitation to 33:33:00:00:00:02) does not wake it: no
    // keepalive, and the slow pace goes on.
    const solicitation = new Uint8Array([0x33, 0x33, 0, 0, 0, 2, 2, 0x5e, 0, 0, 1, 1, 0x86, 0xdd]);
    before = sent();
    link.alive(t0 + 42_600, solicitation);
    link.tick(t0 + 42_700);
    assertEquals(sent() - before, 0);
    // A unicast frame from the peer wakes the path: a keepalive at once, then one a second,
    // and the peer gets 3 s to be heard from again.
    link.alive(t0 + 43_000, UNICAST);
    assertEquals(sent() - before, 1);
    link.tick(t0 + 44_000);
    assertEquals(sent() - before, 2);
    link.tick(t0 + 45_900);
    assertEquals(link.up, true);
    link.tick(t0 + 46_100);
    assertEquals(link.up, false);
  } finally {
    close(a, b);
  }
});

Deno.test("udp path: an end that turns idle says so before it slows down", () => {
  const { a, b } = pair(false);
  try {
    const link = a.port.get(LINK)!;
    const t0 = performance.now();
    const HEARS_YOU = 1, IDLE = 2;
    // The peer went idle first; this end carried a frame a moment ago.
    link.heard(t0, HEARS_YOU | IDLE, 0);
    link.alive(t0 + 500, UNICAST);
    const sent = () => link.stats.keepalivesOut;
    for (let s = 1; s <= 10; s++) {
      link.heard(t0 + s * 1000 - 100, HEARS_YOU | IDLE, s);
      link.tick(t0 + s * 1000);
    }
    // Idle from 10.5 s: the tick at 11 s still sends (its keepalive says idle, the first to),
    // and only then the pace drops to one in 10 s.
    let before = sent();
    link.heard(t0 + 10_900, HEARS_YOU | IDLE, 11);
    link.tick(t0 + 11_000);
    assertEquals(sent() - before, 1, "the keepalive that says idle");
    before = sent();
    for (let s = 12; s <= 20; s++) {
      link.heard(t0 + s * 1000 - 100, HEARS_YOU | IDLE, s);
      link.tick(t0 + s * 1000);
    }
    assertEquals(sent() - before, 0, "then one in 10 s");
  } finally {
    close(a, b);
  }
});

Deno.test("udp path: 1280 bytes until a probe of the kernel's MTU crosses, then that", async () => {
  for (const sealed of [false, true]) {
    const { a, b } = pair(sealed);
    try {
      const la = a.port.get(LINK)!;
      // Less the outer IPv4 and UDP, the seal or VXLAN, and the frame's Ethernet header.
      const overhead = 28 + (sealed ? 32 + 4 : 8) + 14;
      assertEquals(la.mtu, 1280 - overhead);
      await until("both ends up", () => la.up && b.port.get(LINK)!.up);
      // Loopback's MTU, capped at a jumbo frame's: one probe, answered, confirms it.
      await until(`a's MTU ${9216 - overhead}`, () => la.mtu === 9216 - overhead);
      // A frame as large as that crosses whole.
      const big = frame(1, la.mtu + 14);
      assertEquals(la.bypass(HANDLER, big), true);
      await until("b to get it", () => b.delivered.some((d) => d.frame.length === big.length));
    } finally {
      close(a, b);
    }
  }
});

Deno.test("udp path: segments go summed, or with a partial checksum to a peer that completes it", async () => {
  for (const peerCompletes of [false, true]) {
    const { a, b } = pair(false, peerCompletes);
    try {
      const la = a.port.get(LINK)!;
      assertEquals(la.state().checksums, peerCompletes ? "partial" : "complete");
      await until("both ends up", () => la.up && b.port.get(LINK)!.up);
      const before = b.delivered.length;
      assertEquals(la.bypass(HANDLER, tcpSuperFrame(20000)), true);
      const count = Math.ceil(20000 / (la.mtu - 40));
      await until(`b to get ${count} segments`, () => b.delivered.length - before === count);
      for (const { frame: seg } of b.delivered.slice(before)) {
        // The receiving VNET's own pass (its injector's) leaves a summed segment as it is.
        let fixed: Uint8Array | null = null;
        assertEquals(prepareForWire(seg.slice(), 65535, (x) => fixed = x.slice()), 1);
        const differ = [...seg.keys()].filter((i) => seg[i] !== fixed![i]);
        // The checksum is bytes 50 and 51; it is never 0 for this frame, nor its pseudo sum.
        assertEquals(differ.length > 0, peerCompletes, `bytes ${differ} differ`);
        assert(differ.every((i) => i === 50 || i === 51), `bytes ${differ} differ`);
      }
    } finally {
      close(a, b);
    }
  }
});

Deno.test("udp port: asks for a tick every 250 ms while a path carries frames, else none", () => {
  const { a, b } = pair(false);
  try {
    const link = a.port.get(LINK)!;
    const t0 = performance.now();
    // A new path counts as busy: it comes up at a busy path's pace.
    assertEquals(a.port.tick(t0), 250);
    // Ten seconds without a frame: the worker's own second will do.
    assertEquals(a.port.tick(t0 + 11_000), undefined);
    // A broadcast does not make it busy (a VM's ARP probe); a unicast frame does.
    link.alive(t0 + 11_500, new Uint8Array(14).fill(0xff));
    assertEquals(a.port.tick(t0 + 11_600), undefined);
    link.alive(t0 + 12_000, UNICAST);
    assertEquals(a.port.tick(t0 + 12_100), 250);
  } finally {
    close(a, b);
  }
});

Deno.test("udp path: an older peer's 14-byte keepalives: no loss figure, no probes, the kernel's MTU", async () => {
  const a = end();
  const old = UdpSocket.open({ address: "127.0.0.1", port: 0 });
  try {
    const link = a.port.open(LINK, {
      host: "127.0.0.1",
      port: old.port,
      keys: null,
      localId: 111,
      peerId: 222,
      token: 111,
      peerToken: 222,
    }, performance.now());
    link.carry(HANDLER);
    assertEquals(link.mtu, 1280 - 50);
    // What a VNET of yesterday sent: "VNKA", its token, "hears you", sequence 0, a zero.
    const k = new Uint8Array(8 + 14);
    encodeVxlan(k, 8, 0);
    k.set([0x56, 0x4e, 0x4b, 0x41], 8);
    new DataView(k.buffer).setUint32(12, 222);
    k[16] = 1;
    old.sendTo(old.peer("127.0.0.1", a.port.port), k);
    await until("a to hear the old peer", () => link.up);
    // Its zero is no loss figure, and it never answers probes: the kernel's MTU, as before.
    assertEquals(link.state().peerLossPercent, null);
    assertEquals(link.mtu, 9216 - 50);
    // And none is sent to it: only keepalives, 8 + 22 bytes each.
    link.tick(performance.now() + 1000);
    const sizes: number[] = [];
    await until("a's keepalives at the old peer", () => {
      const n = old.rx.receive();
      for (let i = 0; i < n; i++) sizes.push(old.rx.length[i]);
      return sizes.length >= 2;
    });
    assert(sizes.every((s) => s === 30), `sizes ${sizes}`);
  } finally {
    old.close();
    close(a);
  }
});

Deno.test("udp port: a sealed path cannot take another's session id", () => {
  const { a, b } = pair(true);
  try {
    const taken = a.port.get(LINK)!.spec;
    let threw = "";
    try {
      a.port.open(LINK + 1, { ...taken }, performance.now());
    } catch (e) {
      threw = String(e);
    }
    assert(/session id 111 is another path's \(link 7\)/.test(threw), threw);
    // The first path is untouched; reopening the same link is allowed.
    assertEquals(a.port.get(LINK)!.isOpen, true);
    a.port.open(LINK, { ...taken }, performance.now());
    assertEquals(a.port.get(LINK)!.isOpen, true);
  } finally {
    close(a, b);
  }
});
