/// <reference lib="deno.worker" />
/**
 * A blocking poller on a worker of its own (poller_test.ts): the loop watches a pipe nobody
 * writes to, ticks every TICK_MS for RUN_MS, and runs three loop timers, one of them cancelled.
 * Posts what ran, when, and the thread's voluntary context switches over the run.
 */
import { WakePipe } from "../../ffi/libc.ts";
import { poller } from "../../src/io/poller.ts";

const TICK_MS = 50;
const RUN_MS = 1000;

const switches = () =>
  Number(
    /voluntary_ctxt_switches:\s+(\d+)/.exec(Deno.readTextFileSync("/proc/thread-self/status"))![1],
  );

poller.blockThisThread();
const pipe = new WakePipe();
const start = performance.now();
const ran: { name: string; lateMs: number }[] = [];
const timer = (name: string, inMs: number) =>
  poller.at(start + inMs, () => ran.push({ name, lateMs: performance.now() - start - inMs }));
timer("first", 120);
const cancelled = timer("cancelled", 300);
timer("second", 420);
poller.at(start + 200, () => cancelled.cancel());
let ticks = 0;
poller.onReadable(pipe.readFd, () => pipe.drain());
const before = switches();
poller.at(start + RUN_MS, () => poller.onReadable(pipe.readFd, null));
await poller.runBlocking(TICK_MS, () => void ticks++);
self.postMessage({ ran, ticks, switches: switches() - before });
pipe.close();
self.close();
