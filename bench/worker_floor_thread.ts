/// <reference lib="deno.worker" />
/**
 * bench/worker_floor.ts's `worker` configuration: the forwarder on a thread of its own, blocked
 * in a synchronous `poll` (it never returns to its event loop once started).
 */
import { forwarder } from "./worker_floor.ts";

self.onmessage = (e: MessageEvent<[string, string]>) => {
  const [a, b] = e.data;
  forwarder(a, b).blocking();
};
