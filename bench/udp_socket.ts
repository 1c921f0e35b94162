/**
 * What batching, GSO and GRO buy the UDP transport's socket (src/io/udp_socket.ts), over
 * loopback, on one thread, as the data path's Worker would run it:
 *
 *   deno run -A bench/udp_socket.ts [--size 1400] [--seconds 2] [--runs 3] [--family 4|6]
 *
 * Four ways, each a sender and a receiver socket; rounds of 512 datagrams, sent (the datagrams
 * written into the batch, then the syscalls) then drained (recvmmsg until all have arrived,
 * reading each datagram's offset and length):
 *   - sendto + recvmmsg x1: one syscall per datagram each way (the naive loop);
 *   - sendmmsg + recvmmsg x64: batches of 64, one datagram a message;
 *   - GSO + recvmmsg x64: runs of up to 64 datagrams a message, which loopback (a device that
 *     "offloads" segmentation to software) cuts into datagrams inside the send call;
 *   - GSO + GRO: the GRO socket takes the GSO buffer whole, and receive() splits it in place.
 * Send and receive are timed apart. Loopback delivers inside the sender's syscall, so the send
 * side's time includes the kernel's receive path up to the socket's queue. Figures are datagrams
 * per second and the payload's Gbit/s, the median of the runs.
 */
import { UdpSocket, type UdpSocketOptions } from "../src/io/udp_socket.ts";

function flag(name: string, fallback: number): number {
  const at = Deno.args.indexOf(`--${name}`);
  return at >= 0 ? Number(Deno.args[at + 1]) : fallback;
}

const SIZE = flag("size", 1400);
const SECONDS = flag("seconds", 2);
const RUNS = flag("runs", 3);
const FAMILY = flag("family", 4);
const HOST = FAMILY === 6 ? "::1" : "127.0.0.1";
const ROUND = 512;
const BATCH = 64;

interface Way {
  name: string;
  sender: Partial<UdpSocketOptions>;
  receiver: Partial<UdpSocketOptions>;
  perDatagram: boolean;
}

const WAYS: Way[] = [
  {
    name: "sendto + recvmmsg x1",
    sender: { gso: false },
    receiver: { gro: false, receiveMessages: 1 },
    perDatagram: true,
  },
  {
    name: "sendmmsg + recvmmsg x64",
    sender: { gso: false },
    receiver: { gro: false },
    perDatagram: false,
  },
  {
    name: "GSO + recvmmsg x64",
    sender: { gso: true },
    receiver: { gro: false },
    perDatagram: false,
  },
  { name: "GSO + GRO", sender: { gso: true }, receiver: { gro: true }, perDatagram: false },
];

interface Figures {
  sendSeconds: number;
  receiveSeconds: number;
  datagrams: number;
  lost: number;
  sendCalls: number;
  receiveCalls: number;
}

function measure(way: Way): Figures {
  const buffers = { receiveBufferBytes: 32 << 20, sendBufferBytes: 32 << 20 };
  const receiver = UdpSocket.open({ address: HOST, port: 0, ...buffers, ...way.receiver });
  const sender = UdpSocket.open({
    address: HOST,
    port: 0,
    ...buffers,
    sendDatagrams: BATCH,
    ...way.sender,
  });
  if (way.sender.gso && !sender.gso) throw new Error("this kernel has no UDP GSO");
  if (way.receiver.gro && !receiver.gro) throw new Error("this kernel has no UDP GRO");
  const to = sender.peer(HOST, receiver.port);
  const payload = new Uint8Array(SIZE).map((_, k) => k);
  const { tx } = sender, { rx } = receiver;
  const f: Figures = {
    sendSeconds: 0,
    receiveSeconds: 0,
    datagrams: 0,
    lost: 0,
    sendCalls: 0,
    receiveCalls: 0,
  };
  let sink = 0;
  const end = performance.now() + SECONDS * 1000;
  try {
    while (performance.now() < end) {
      const t0 = performance.now();
      if (way.perDatagram) {
        for (let n = 0; n < ROUND; n++) sender.sendTo(to, payload);
        f.sendCalls += ROUND;
      } else {
        for (let n = 0; n < ROUND; n += BATCH) {
          tx.clear();
          for (let k = 0; k < BATCH; k++) tx.data.set(payload, tx.reserve(to, SIZE));
          tx.flush();
        }
      }
      const t1 = performance.now();
      let got = 0;
      for (let idle = 0; got < ROUND && idle < 3;) {
        const n = rx.receive();
        if (n === 0) idle++;
        for (let i = 0; i < n; i++) sink += rx.length[i] + rx.offset[i];
        got += n;
      }
      const t2 = performance.now();
      f.sendSeconds += (t1 - t0) / 1000;
      f.receiveSeconds += (t2 - t1) / 1000;
      f.datagrams += ROUND;
      f.lost += ROUND - got;
    }
    f.sendCalls += tx.calls;
    f.receiveCalls = rx.calls;
  } finally {
    sender.close();
    receiver.close();
  }
  if (sink < 0) console.log(sink);
  return f;
}

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
const rate = (n: number, s: number) => `${(n / s / 1e6).toFixed(2)} M/s`;
const gbit = (n: number, s: number) => `${(n * SIZE * 8 / s / 1e9).toFixed(1)} Gbit/s`;

console.log(
  `UDP over ${HOST}, ${SIZE}-byte datagrams, ${RUNS} runs of ${SECONDS} s per way, ` +
    `${Deno.build.arch}, Deno ${Deno.version.deno}, kernel ${Deno.osRelease()}`,
);
const results = new Map<string, Figures[]>(WAYS.map((w) => [w.name, []]));
for (let run = 0; run < RUNS; run++) {
  for (const way of WAYS) results.get(way.name)!.push(measure(way));
}
const rows = [[
  "way",
  "send",
  "",
  "receive",
  "",
  "both",
  "syscalls/datagram (send, receive)",
  "lost",
]];
for (const way of WAYS) {
  const runs = results.get(way.name)!;
  const pick = (key: (f: Figures) => number) => median(runs.map(key));
  const send = pick((f) => f.datagrams / f.sendSeconds);
  const receive = pick((f) => f.datagrams / f.receiveSeconds);
  const both = pick((f) => f.datagrams / (f.sendSeconds + f.receiveSeconds));
  const total = runs.reduce((s, f) => s + f.datagrams, 0);
  const calls = (key: (f: Figures) => number) =>
    (runs.reduce((s, f) => s + key(f), 0) / total).toFixed(3);
  rows.push([
    way.name,
    rate(send, 1),
    gbit(send, 1),
    rate(receive, 1),
    gbit(receive, 1),
    `${rate(both, 1)} ${gbit(both, 1)}`,
    `${calls((f) => f.sendCalls)}, ${calls((f) => f.receiveCalls)}`,
    `${runs.reduce((s, f) => s + f.lost, 0)} of ${total}`,
  ]);
}
const widths = rows[0].map((_, c) => Math.max(...rows.map((r) => r[c].length)));
for (const r of rows) console.log(r.map((cell, c) => cell.padEnd(widths[c])).join("  "));
