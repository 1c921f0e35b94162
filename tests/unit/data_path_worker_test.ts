/**
 * The data-path worker itself (src/dataplane/worker_data_path.ts, issue 17): it starts, answers
 * commands in order, and a worker that throws says why, once, and fails what is asked of it.
 */
import { assert, assertEquals, assertMatch } from "./assert.ts";
import { WorkerForwarder } from "../../src/dataplane/worker_data_path.ts";
import { VnetError } from "../../src/errors.ts";

Deno.test("the real data-path worker starts, answers a command and stops", async () => {
  const events: unknown[] = [];
  let failed = "";
  const worker = new WorkerForwarder(
    { injector: "packet" },
    { frameOut: () => false, frameDropped: () => {}, event: (e) => events.push(e) },
    (reason) => failed = reason,
  );
  await worker.ready;
  assertEquals(await worker.call({ op: "state" }), {});
  const spec = {
    id: "0000000a",
    role: "host" as const,
    device: "no-such-dev0",
    macs: ["02:00:00:00:00:01"],
    multicast: false,
    peer: "test",
  };
  const refused = await worker.call({ op: "open", spec, slot: 0, tolerant: false })
    .then(() => null, (e) => e);
  assert(refused instanceof VnetError, "a handler on a missing device opened");
  assertMatch(refused.message, /no-such-dev0/);
  await worker.stop();
  assertEquals(failed, "");
  assertEquals(events, []);
});

Deno.test("a data-path worker that throws says why, once, and takes no more commands", async () => {
  const reasons: string[] = [];
  const worker = new WorkerForwarder(
    { injector: "nope" as "packet" },
    { frameOut: () => false, frameDropped: () => {}, event: () => {} },
    (reason) => reasons.push(reason),
  );
  const failed = await worker.ready.then(() => null, (e) => e);
  assert(failed instanceof VnetError, "a worker that threw said it was ready");
  assertMatch(failed.message, /data path could not start: .*unknown injector 'nope'/);
  assertEquals(reasons.length, 1);
  assertMatch(reasons[0], /unknown injector 'nope'/);
  const refused = await worker.call({ op: "state" }).then(() => null, (e) => e);
  assertMatch(String(refused), /the data path failed: .*unknown injector/);
  await worker.stop();
});
