/**
 * The main thread's waits (src/io/poller.ts, pool mode: an epoll set of its own): a ready fd
 * resolves its waiter, and only its own, whatever the number of fds waited on; a cancelled wait
 * resolves false; a deadline resolves true.
 */
import { assert, assertEquals } from "./assert.ts";
import { poller } from "../../src/io/poller.ts";
import { libc } from "../../ffi/libc.ts";

const O_NONBLOCK = 0o4000;

function pipe(): [number, number] {
  const fds = new Int32Array(2);
  assertEquals(libc().pipe2(fds, O_NONBLOCK), 0);
  return [fds[0], fds[1]];
}

function closeAll(fds: number[]): void {
  for (const fd of fds) libc().close(fd);
}

Deno.test("poller: of 1000 waiting pipes, the one written to resolves, before its deadline", async () => {
  const pipes = Array.from({ length: 1000 }, pipe);
  const settled = new Set<number>();
  const waits = pipes.map(([r], i) =>
    poller.readable(r, 60_000).then((ready) => {
      settled.add(i);
      return ready;
    })
  );
  libc().write(pipes[617][1], new Uint8Array(1), 1n);
  assertEquals(await waits[617], true);
  assertEquals([...settled], [617]);
  for (const [r] of pipes) poller.cancel(r);
  assertEquals((await Promise.all(waits)).filter(Boolean).length, 1, "a cancelled wait was true");
  closeAll(pipes.flat());
});

Deno.test("poller: writable, a deadline, and a fd waited for both ways", async () => {
  const [r, w] = pipe();
  assertEquals(await poller.writable(w), true);
  const started = performance.now();
  assertEquals(await poller.readable(r, 50), true, "a deadline resolves true");
  assert(performance.now() - started >= 45, "the deadline came early");
  // Both ways on one fd: the write end is writable; the read way does not steal it.
  const both = pipe();
  const reading = poller.readable(both[0], 60_000);
  assertEquals(await poller.writable(both[1]), true);
  libc().write(both[1], new Uint8Array(1), 1n);
  assertEquals(await reading, true);
  closeAll([r, w, ...both]);
});

Deno.test("poller: a wait registered as the loop winds down is still served", async () => {
  // A stream's writer resolves, runs a few continuations, and waits again: whatever the number
  // of hops, the new wait must be polled (it once found the loop "running" as it exited).
  for (let hops = 0; hops < 8; hops++) {
    const [r, w] = pipe();
    const first = poller.readable(r);
    libc().write(w, new Uint8Array(1), 1n);
    await first;
    for (let i = 0; i < hops; i++) await null;
    const second = poller.writable(w);
    let timer: ReturnType<typeof setTimeout> | undefined;
    const stuck = new Promise<string>((resolve) =>
      timer = setTimeout(() => resolve("stuck"), 5000)
    );
    assertEquals(
      await Promise.race([second.then(() => "served"), stuck]),
      "served",
      `${hops} hops`,
    );
    clearTimeout(timer);
    closeAll([r, w]);
  }
});

Deno.test("poller: cancelling the last wait ends the wait in flight (a client can exit)", async () => {
  // A program whose only wait is cancelled must exit by itself: the helper's epoll_wait in
  // flight would otherwise keep it alive for good.
  const script = `
    import { poller } from "${new URL("../../src/io/poller.ts", import.meta.url).href}";
    import { libc } from "${new URL("../../ffi/libc.ts", import.meta.url).href}";
    const fds = new Int32Array(2);
    libc().pipe2(fds, ${O_NONBLOCK});
    const waiting = poller.readable(fds[0]);
    setTimeout(() => poller.cancel(fds[0]), 50);
    console.log(await waiting);
  `;
  const child = new Deno.Command(Deno.execPath(), {
    args: ["eval", "--no-check", script],
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  let timer: ReturnType<typeof setTimeout> | undefined;
  const hung = new Promise<"hung">((resolve) => timer = setTimeout(() => resolve("hung"), 20_000));
  const result = await Promise.race([child.output(), hung]);
  clearTimeout(timer);
  if (result === "hung") {
    child.kill();
    await child.output();
  }
  assert(result !== "hung", "the program did not exit after its last wait was cancelled");
  assertEquals(new TextDecoder().decode(result.stdout).trim(), "false");
});

Deno.test("poller: a blocking loop runs its timers on time, not cancelled ones, asleep between", async () => {
  const worker = new Worker(new URL("./loop_timers_worker.ts", import.meta.url), {
    type: "module",
  });
  const result = await new Promise<{
    ran: { name: string; lateMs: number }[];
    ticks: number;
    switches: number;
  }>((resolve, reject) => {
    worker.onmessage = (e) => resolve(e.data);
    worker.onerror = (e) => reject(e.message);
  }).finally(() => worker.terminate());
  assertEquals(result.ran.map((r) => r.name), ["first", "second"]);
  for (const r of result.ran) assert(r.lateMs < 40, `${r.name} ran ${r.lateMs} ms late`);
  assert(result.ticks >= 15, `${result.ticks} ticks in 1 s of a 50 ms tick`);
  // Each tick and timer is one wake-up from poll; a turn of the runtime's timers at each tick
  // (setTimeout) made it two a tick.
  assert(
    result.switches <= result.ticks + 10,
    `${result.switches} context switches for ${result.ticks} ticks and 3 timers`,
  );
});
