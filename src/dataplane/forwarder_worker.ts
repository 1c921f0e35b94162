/// <reference lib="deno.worker" />
/**
 * The data-path worker (issue 17): the forwarder (forwarder.ts) on a thread of its own, which
 * blocks in its own `poll` (src/io/poller.ts, `runBlocking`) over its captures, its sockets
 * and its doorbell, and forwards on the thread that woke: one wake-up per hop, no CPU while
 * idle. The poll calls the owners of ready fds directly: no promise on the hot path.
 *
 * The main thread (worker_data_path.ts) rings the doorbell when a command or a frame waits in
 * a ring; commands are run in order and each is answered with a message, as are the
 * forwarder's events. Frames for the main thread's links go into the outbound frame ring.
 */
import { drainPipe } from "../../ffi/libc.ts";
import { FrameRing } from "../io/frame_ring.ts";
import { poller } from "../io/poller.ts";
import { configureLog, log } from "../log.ts";
import { messageOf } from "../errors.ts";
import { counterTable } from "./counters.ts";
import { Forwarder } from "./forwarder.ts";
import { type Command } from "./forwarder_protocol.ts";
import { INJECTORS, systemInterfaces } from "./interfaces.ts";
import { type WorkerInit } from "./worker_data_path.ts";

/** The forwarder's housekeeping (stuck writes) runs this often. */
const TICK_MS = 1000;

const decoder = new TextDecoder();

async function run(init: WorkerInit): Promise<void> {
  configureLog(init.log);
  if (!INJECTORS.includes(init.interfaces.injector)) {
    throw new Error(`unknown injector '${init.interfaces.injector}'`);
  }
  poller.blockThisThread();
  const commands = new FrameRing(init.commands);
  const fromMain = new FrameRing(init.toWorker);
  const toMain = new FrameRing(init.toMain);
  const forwarder = new Forwarder(
    systemInterfaces(init.interfaces),
    counterTable(init.counters),
    (link, handler, frame) => {
      const queued = toMain.push(link, handler, frame);
      if (queued === "wake") toMain.signal();
      return queued !== "full";
    },
    (event) => self.postMessage(event),
    log.with({ thread: "data path" }),
  );
  let stopping = false;
  const runCommand = (id: number, _: number, bytes: Uint8Array) => {
    const command = JSON.parse(decoder.decode(bytes)) as Command;
    self.postMessage(forwarder.reply(id, command));
    if (command.op === "stop") stopping = true;
  };
  const fromLink = (link: number, handler: number, frame: Uint8Array) =>
    forwarder.fromLink(link, handler, frame);
  poller.onReadable(init.doorbell, () => {
    drainPipe(init.doorbell);
    // Commands first: a frame for a handler is sent after the command that attached it.
    commands.drain(runCommand);
    fromMain.drain(fromLink);
    // Stopped: nothing is watched any more, and the loop ends.
    if (stopping) poller.onReadable(init.doorbell, null);
  });
  self.postMessage({ event: "ready" });
  await poller.runBlocking(TICK_MS, () => forwarder.tick());
  self.close();
}

self.onmessage = (e: MessageEvent<WorkerInit>) => {
  self.onmessage = null;
  run(e.data).catch((error) => {
    // Said to the main thread, which logs it and stops the server (worker_data_path.ts).
    self.postMessage({ event: "failed", error: messageOf(error) });
    throw error;
  });
};
