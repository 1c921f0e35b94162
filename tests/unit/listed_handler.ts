/** A handler as `list` answers it, for tests of what shows handlers (metrics, the client). */
import { type ListedHandler } from "../../src/control/rpc.ts";

export function listedHandler(over: Partial<ListedHandler> = {}): ListedHandler {
  return {
    id: "0a0b0c0d",
    role: "proxy",
    device: "lan0",
    macs: ["02:00:00:00:00:01"],
    multicast: false,
    peer: "10.78.0.2:7000",
    state: "up",
    degraded: null,
    link: {
      state: "up",
      remote: "10.78.0.2:7000",
      tls: true,
      rttMs: 1.5,
      socket: "runtime",
      transport: "tcp",
      udp: null,
    },
    toPeer: { frames: 10, bytes: 1000, drops: 3 },
    fromPeer: { frames: 20, bytes: 4000, drops: 1 },
    dropReasons: { link: 2, aqm: 0, truncated: 1, offload: 0, inject: 1, foreignMac: 0, loop: 0 },
    capture: { received: 13, dropped: 4, ifDropped: 5 },
    macConflicts: 0,
    switched: { frames: 0, bytes: 0 },
    dataPathSocket: { out: 0, in: 0 },
    paths: [],
    dialled: "out",
    reconnects: 2,
    ...over,
  };
}
