/**
 * Reconciliation (issue 9, "Left over after a crash"): both servers run with --state while
 * handlers are created and closed; each round SIGKILLs the Host's or the Proxy's server at a
 * random moment (some rounds while a create or a close is in flight) and restarts it on the
 * same state file. After each round the two servers must agree again:
 *
 *   - both state files are version 2 and hold what their server lists;
 *   - both servers hold exactly the same handler ids, each with the same MACs, one end dialled
 *     and the other accepted: no MAC is held by a handler the other side lacks;
 *   - every MAC of the pool not in use can be carried by a new handler (no MAC stays locked);
 *   - the bridge still forwards: the LAN pings both VMs, one through a handler the Proxy
 *     dialled, one through a handler the Host dialled.
 *
 * Seeded (the kill moments and the churn): VNET_FUZZ_SEED=N replays a run's choices.
 *
 *   flock /tmp/vnet-ns.lock deno test -A tests/e2e/reconcile_test.ts
 */
import { type Proc, type Topology, waitFor } from "../../lab/netns.ts";
import {
  assert,
  e2e,
  list,
  type Listed,
  pingOk,
  setVmIp,
  sleep,
  stepper,
  withTopology,
} from "./ops_helpers.ts";
import { prng } from "../prng.ts";

const SEED = Number(Deno.env.get("VNET_FUZZ_SEED") ?? Math.floor(Math.random() * 2 ** 31));
const ROUNDS = 8;
/** MACs the churn takes handlers for (the VMs' own MACs are on the two steady handlers). */
const POOL = Array.from({ length: 6 }, (_, i) => `02:00:00:00:10:0${i + 1}`);
/** The lone-handler step's own MAC: the churn may leave every pool MAC held by the Host. */
const LONE_MAC = "02:00:00:00:10:ff";
const VM_IPS = ["10.77.0.61", "10.77.0.62"];
/** Keepalive 1 s; the rest is the defaults (orphan grace 120 s: longer than this whole test). */
const SERVER_ARGS = ["--keepalive", "1"];
/** How long the two servers may take to agree after the link is back. */
const AGREE_MS = 20_000;

type Side = "proxy" | "host";

interface Op {
  what: string;
  started: number;
  ended?: number;
  ok?: boolean;
  detail?: string;
}

/** The orphans a server's log says it closed, by how it found them. */
function orphansClosed(procs: Proc[]): { sync: number; macReused: number; stale: number } {
  let sync = 0, macReused = 0, stale = 0;
  for (const line of procs.flatMap((p) => p.lines)) {
    const synced = /closed handlers the peer no longer has handlers=(\S+)/.exec(line);
    if (synced) sync += synced[1].replace(/"/g, "").split(",").length;
    if (/closing orphaned handler/.test(line)) macReused++;
    if (/closing handler: its peer has not come back/.test(line)) stale++;
  }
  return { sync, macReused, stale };
}

interface SavedFile {
  version: number;
  serverId?: string;
  handlers: { spec: { id: string; macs: string[] } }[];
}

function readState(path: string): SavedFile {
  const text = Deno.readTextFileSync(path);
  let saved: SavedFile;
  try {
    saved = JSON.parse(text);
  } catch (e) {
    throw new Error(`state file ${path} is not JSON (${e}):\n${text.slice(0, 500)}`);
  }
  assert(saved.version === 2, `state file ${path}: version ${saved.version}, not 2`);
  assert(
    typeof saved.serverId === "string" && /^[0-9a-f]{32}$/.test(saved.serverId),
    `state file ${path}: server id ${saved.serverId}`,
  );
  assert(Array.isArray(saved.handlers), `state file ${path}: no handler list`);
  return saved;
}

const ids = (hs: { id: string }[]) => hs.map((h) => h.id).sort();

e2e(
  "reconcile: SIGKILL and restart under handler churn leave no orphan, no locked MAC",
  async (t) => {
    console.log(`    seed ${SEED} (replay: VNET_FUZZ_SEED=${SEED})`);
    const rng = prng(SEED);
    await withTopology({ vms: 2 }, 170_000, async (topo: Topology) => {
      const step = stepper(t, () => topo.serverLogs(60));
      const statePath = (role: Side) => `${topo.dir}/${role}.state.json`;
      const procs: Record<Side, Proc[]> = { proxy: [], host: [] };
      const start = async (role: Side) => {
        const p = await topo.startServer(role, {
          extraArgs: [...SERVER_ARGS, "--state", statePath(role)],
        });
        procs[role].push(p);
        return p;
      };
      const secret = ["--secret-file", topo.secretFile];
      const create = (mac: string, dev: string, via: Side) =>
        topo.vnet([
          "client",
          "--proxy",
          topo.addr("proxy"),
          "--proxy-dev",
          "lan0",
          "--host",
          topo.addr("host"),
          "--host-dev",
          dev,
          "--mac",
          mac,
          "--via",
          via,
          "--timeout",
          "10",
          ...secret,
        ]);
      const both = async () => {
        const [p, h] = await Promise.all([list(topo, "proxy"), list(topo, "host")]);
        return { proxy: p, host: h };
      };
      const [vm1, vm2] = topo.vms;
      let steady: { a: string; b: string } = { a: "", b: "" };
      const roundTimes: string[] = [];
      let killedInFlight = 0;

      await step(
        "both servers with --state; two steady handlers, one dialled each way",
        async () => {
          await Promise.all([start("proxy"), start("host")]);
          await setVmIp(vm1.ns, VM_IPS[0]);
          await setVmIp(vm2.ns, VM_IPS[1]);
          steady = {
            a: await topo.createHandler([vm1], { via: "proxy" }),
            b: await topo.createHandler([vm2], { via: "host" }),
          };
          await Promise.all([pingOk(topo, VM_IPS[0]), pingOk(topo, VM_IPS[1])]);
        },
      );

      const steadyUpB = async () => {
        const s = await both();
        return s.proxy.find((x) => x.id === steady.b)?.state === "up" &&
            s.host.find((x) => x.id === steady.b)?.state === "up"
          ? true
          : undefined;
      };
      const steadyUp = async () => {
        const s = await both();
        for (const id of [steady.a, steady.b]) {
          for (const side of ["proxy", "host"] as const) {
            const h = s[side].find((x) => x.id === id);
            if (h?.state !== "up") return undefined;
          }
        }
        return s;
      };

      for (let round = 1; round <= ROUNDS; round++) {
        const victim: Side = round % 2 === 1 ? "host" : "proxy";
        // Rounds 3 and 6 kill once everything is quiet; the others while requests are in flight.
        const quiet = round % 3 === 0;
        await step(
          `round ${round}: churn, SIGKILL the ${victim}${quiet ? " (quiet)" : ""}, restart, agree`,
          async () => {
            const tag = (check: string) => `[round ${round}, check: ${check}]`;
            const t0 = performance.now();
            const ms = () => Math.round(performance.now() - t0);

            // 1. Churn: close some handlers of the pool, create some, at staggered moments.
            const before = await both();
            const churned = before.proxy.filter((h) => h.id !== steady.a && h.id !== steady.b);
            const inUse = new Set(churned.flatMap((h) => h.macs));
            const free = rng.shuffle(POOL.filter((m) => !inUse.has(m)));
            const ops: Op[] = [];
            const run = async (
              what: string,
              delayMs: number,
              f: () => Promise<{ code: number; stderr: string }>,
            ) => {
              await sleep(delayMs);
              const op: Op = { what, started: ms() };
              ops.push(op);
              const r = await f();
              Object.assign(op, {
                ended: ms(),
                ok: r.code === 0,
                detail: r.stderr.trim().split("\n")[0],
              });
            };
            const work: Promise<void>[] = [];
            for (const h of rng.shuffle(churned).slice(0, 1 + rng.int(2))) {
              const via = rng.pick(["proxy", "host"] as const);
              work.push(
                run(`close ${h.id} via ${via}`, rng.int(250), () => topo.closeHandler(h.id, via)),
              );
            }
            for (const mac of free.slice(0, 1 + rng.int(3))) {
              const via = rng.pick(["proxy", "host"] as const);
              const dev = rng.pick([vm1.hostDev, vm2.hostDev]);
              work.push(
                run(
                  `create ${mac} on ${dev} via ${via}`,
                  rng.int(250),
                  () => create(mac, dev, via),
                ),
              );
            }
            const churn = Promise.all(work);
            // A request takes 150-600 ms (the client starts, the Proxy listens 300 ms for the
            // MAC, the far end attaches): kill inside that window.
            if (quiet) {
              await churn;
            } else await sleep(120 + rng.int(500));

            // 2. SIGKILL the victim, wait for what was in flight, restart it on its state file.
            const killedAt = ms();
            const code = await topo.servers[victim]!.kill("SIGKILL");
            assert(code !== 0, `${tag("SIGKILL")} the ${victim} exited ${code}`);
            await churn;
            const inFlight = ops.filter((o) => o.ended! > killedAt && o.started < killedAt);
            killedInFlight += inFlight.length;
            // Sometimes a handler is closed through the survivor while the victim is down.
            const survivor: Side = victim === "host" ? "proxy" : "host";
            const closable = (await list(topo, survivor)).filter((h) =>
              h.id !== steady.a && h.id !== steady.b
            );
            if (closable.length > 0 && rng.int(2) === 0) {
              const h = rng.pick(closable);
              await run(
                `close ${h.id} via ${survivor} while the ${victim} is down`,
                0,
                () => topo.closeHandler(h.id, survivor),
              );
              assert(ops.at(-1)!.ok, `${tag("close while down")} ${ops.at(-1)!.detail}`);
            }
            await start(victim);
            const listening = ms();
            const steadyState = await waitFor(
              "both steady handlers up on both servers",
              steadyUp,
              30_000,
              200,
            )
              .catch((e) => {
                throw new Error(`${tag("the link is back")} ${e.message}`);
              });
            const linkBack = ms();

            // 3. The two servers agree: the same ids, the same MACs, one end dialled, one accepted.
            let last = steadyState;
            const agreed = await waitFor(
              "the two servers to hold the same handlers",
              async () => {
                last = await both();
                return ids(last.proxy).join() === ids(last.host).join() ? last : undefined;
              },
              AGREE_MS,
              250,
            ).catch(() => {
              const onlyProxy = last.proxy.filter((h) => !last.host.some((x) => x.id === h.id));
              const onlyHost = last.host.filter((h) => !last.proxy.some((x) => x.id === h.id));
              throw new Error(
                `${tag("same handler ids on both sides")} not within ${AGREE_MS} ms of the link ` +
                  `coming back. Only on the proxy: ${
                    JSON.stringify(onlyProxy.map(brief))
                  }; only on ` +
                  `the host: ${JSON.stringify(onlyHost.map(brief))}. Ops: ${
                    JSON.stringify(ops)
                  }, ` +
                  `killed at ${killedAt} ms`,
              );
            });
            const agreedAt = ms();
            for (const p of agreed.proxy) {
              const h = agreed.host.find((x) => x.id === p.id)!;
              assert(
                [...p.macs].sort().join() === [...h.macs].sort().join(),
                `${tag("same MACs")} handler ${p.id}: proxy ${p.macs}, host ${h.macs}`,
              );
              assert(
                p.role === "proxy" && h.role === "host",
                `${tag("roles")} handler ${p.id}: ${p.role} on the proxy, ${h.role} on the host`,
              );
              assert(
                p.dialled !== h.dialled,
                `${tag("one end dialled")} handler ${p.id}: ${p.dialled} on both`,
              );
            }
            for (const [side, other] of [["proxy", "host"], ["host", "proxy"]] as const) {
              for (const h of agreed[side]) {
                for (const mac of h.macs) {
                  assert(
                    agreed[other].some((x) => x.id === h.id),
                    `${tag("no MAC held by an orphan")} ${mac} held on the ${side} by ${h.id}, ` +
                      `which the ${other} lacks`,
                  );
                }
              }
            }

            // 4. The state files are valid and hold what their servers list.
            for (const side of ["proxy", "host"] as const) {
              await waitFor(
                `the ${side}'s state file to hold what it lists`,
                () => {
                  const saved = readState(statePath(side));
                  const listed = ids(agreed[side]).join();
                  return Promise.resolve(
                    ids(saved.handlers.map((h) => h.spec)).join() === listed || undefined,
                  );
                },
                3000,
                100,
              ).catch((e) => {
                const saved = readState(statePath(side));
                throw new Error(
                  `${tag(`${side} state file`)} ${e.message}: file ${
                    ids(saved.handlers.map((h) => h.spec))
                  }, ` +
                    `listed ${ids(agreed[side])}`,
                );
              });
            }

            // 5. Every free MAC of the pool takes a new handler: none stays locked.
            const held = new Set(agreed.proxy.flatMap((h) => h.macs));
            const unheld = POOL.filter((m) => !held.has(m));
            const created = await Promise.all(unheld.map(async (mac) => {
              const via = rng.pick(["proxy", "host"] as const);
              const dev = rng.pick([vm1.hostDev, vm2.hostDev]);
              const r = await create(mac, dev, via);
              assert(
                r.code === 0,
                `${tag("no MAC stays locked")} create for free MAC ${mac} on ${dev} via ${via} ` +
                  `failed: ${r.stderr.trim()}`,
              );
              return r.stdout.trim();
            }));
            const filled = ms();
            const after = await both();
            for (const id of created) {
              assert(
                after.proxy.some((h) => h.id === id) && after.host.some((h) => h.id === id),
                `${tag("new handler on both sides")} ${id}`,
              );
            }

            // 6. The bridge forwards, through a handler dialled each way.
            await Promise.all([pingOk(topo, VM_IPS[0]), pingOk(topo, VM_IPS[1])]);
            const orphans = orphansClosed([...procs.proxy, ...procs.host]);
            const line = `round ${round} (${victim}${quiet ? ", quiet" : ""}): ops ${
              ops.map((o) => `${o.what}${o.ok ? "" : ` FAILED (${o.detail})`}`).join("; ")
            }; killed at ${killedAt} ms with ${inFlight.length} in flight; listening +${
              listening - killedAt
            } ms, link back +${linkBack - listening} ms, agreed +${
              agreedAt - linkBack
            } ms, ${unheld.length} free MACs re-created in ${
              filled - agreedAt
            } ms, pinged at ${ms()} ms; ` +
              `${agreed.proxy.length} handlers; orphans closed so far ${JSON.stringify(orphans)}`;
            console.log(`    ${line}`);
            roundTimes.push(line);
          },
        );
      }

      await step(
        "lone handler: the only one the Proxy dialled is closed while the Host is down",
        async () => {
          const tag = (check: string) => `[lone handler, check: ${check}]`;
          const t0 = performance.now();
          // Nothing else makes the Proxy dial the Host again: every handler it dialled goes.
          for (const h of (await list(topo, "proxy")).filter((x) => x.dialled === "out")) {
            const r = await topo.closeHandler(h.id, "proxy");
            assert(r.code === 0, `${tag("close")} ${h.id}: ${r.stderr.trim()}`);
          }
          const mac = LONE_MAC;
          const made = await create(mac, vm1.hostDev, "proxy");
          assert(made.code === 0, `${tag("create")} ${made.stderr.trim()}`);
          const id = made.stdout.trim();
          await topo.servers.host!.kill("SIGKILL");
          const closed = await topo.closeHandler(id, "proxy");
          assert(closed.code === 0, `${tag("close while the Host is down")} ${closed.stderr}`);
          await start("host");
          await waitFor("the steady handler the Host dialled to be up", steadyUpB, 30_000, 200);
          const linkBack = Math.round(performance.now() - t0);
          let hostHas: Listed | undefined;
          const failures: string[] = [];
          await waitFor(
            `the Host to drop ${id}`,
            async () => {
              hostHas = (await list(topo, "host")).find((h) => h.id === id);
              return hostHas ? undefined : true;
            },
            AGREE_MS,
            250,
          ).catch(() =>
            failures.push(
              `${tag("no orphan remains")} ${AGREE_MS} ms after the link came back the Host ` +
                `still holds ${id} (${JSON.stringify(hostHas && brief(hostHas))}), which the ` +
                `Proxy closed while the Host was down`,
            )
          );
          // Checked even when the orphan stayed: it says whether the orphan also locks its MAC.
          const again = await create(mac, vm1.hostDev, "host");
          if (again.code !== 0) {
            failures.push(
              `${tag("no MAC stays locked")} a handler dialled by the Host for ${mac} on ` +
                `${vm1.hostDev}: ${again.stderr.trim()}`,
            );
          }
          assert(failures.length === 0, failures.join("\n"));
          await pingOk(topo, VM_IPS[1]);
          console.log(
            `    lone handler: host back at ${linkBack} ms, orphan gone and MAC reused at ` +
              `${Math.round(performance.now() - t0)} ms`,
          );
        },
      );

      await step("summary", () => {
        const orphans = orphansClosed([...procs.proxy, ...procs.host]);
        console.log(
          `    ${roundTimes.length} rounds, ${killedInFlight} requests in flight at a SIGKILL, ` +
            `orphans closed ${JSON.stringify(orphans)}`,
        );
        assert(roundTimes.length === ROUNDS, `only ${roundTimes.length} of ${ROUNDS} rounds ran`);
        return Promise.resolve();
      });
    });
  },
);

function brief(h: Listed) {
  return { id: h.id, macs: h.macs, state: h.state, dialled: h.dialled };
}
