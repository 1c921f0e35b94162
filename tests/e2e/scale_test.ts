/**
 * Scale (issue 11): 10 Hosts × 10 VMs behind one Proxy, one handler per VM. Every VM must reach
 * every other VM and the LAN: one process (lab/py/udp_mesh.py) opens a UDP socket in each VM
 * and in the LAN client, and each answers and probes all the others (101 × 100 pairs), paced,
 * in rounds that retry only what is missing. Then the Proxy's memory, fds and links.
 *
 *   flock /tmp/vnet-ns.lock deno test -A tests/e2e/scale_test.ts
 *   VNET_SCALE=HOSTSxVMS (default 4x4)
 *
 * The kernel's ARP table is one for the whole machine, shared by every namespace, and 100 VMs
 * that each know 100 neighbours need 10 000 entries: past gc_thresh3 (1024 by default) the
 * kernel refuses new ones ("neighbor table overflow") and the VMs cannot answer. The test
 * raises the three thresholds for its run and puts them back after.
 */
import {
  establishedOn,
  type MeshReport,
  processFigures,
  type Sites,
  withSites,
} from "../../lab/sites.ts";
import { assert, e2e } from "./ops_helpers.ts";

const [HOSTS, VMS] = (Deno.env.get("VNET_SCALE") ?? "10x10").split("x").map(Number);

const GC_THRESH = ["gc_thresh1", "gc_thresh2", "gc_thresh3"].map((k) =>
  `/proc/sys/net/ipv4/neigh/default/${k}`
);

/** Room for every VM's neighbours in the machine-wide ARP table; returns how to put it back. */
function roomInArpTable(entries: number): () => void {
  const before = GC_THRESH.map((p) => Deno.readTextFileSync(p).trim());
  const wanted = [entries, entries * 2, entries * 4];
  GC_THRESH.forEach((p, i) => {
    if (Number(before[i]) < wanted[i]) Deno.writeTextFileSync(p, String(wanted[i]));
  });
  return () => GC_THRESH.forEach((p, i) => Deno.writeTextFileSync(p, before[i]));
}

/**
 * What the servers say of unanswered pairs, for the failure message: each VM's handler at its
 * Host, that Host's path to the other VM's MAC, the Proxy's view of both handlers, and the
 * Hosts' last warnings and lines that name either MAC. A pair that fails only now and then
 * must explain itself the first time.
 */
async function whyUnanswered(sites: Sites, pairs: [string, string][]): Promise<string> {
  const out: string[] = [];
  const vms = [...new Set(pairs.flat())].filter((l) => l !== "client").map((l) =>
    sites.vmByLabel(l)
  );
  const proxy = await sites.list("proxy").catch((e) => (out.push(`proxy list: ${e}`), []));
  for (const [a, b] of pairs) {
    for (const [from, to] of [[a, b], [b, a]]) {
      if (from === "client") continue;
      const vm = sites.vmByLabel(from);
      const other = to === "client" ? null : sites.vmByLabel(to);
      const listed = await sites.list(vm.host).catch((e) => (out.push(`${from}: ${e}`), []));
      const mine = listed.find((h) => h.id === vm.handler);
      const path = mine?.paths?.find((p) => p.mac === other?.mac);
      out.push(
        `${from} at ${vm.host.label}: handler ${JSON.stringify(mine?.link ?? null)}; ` +
          `path to ${to}: ${JSON.stringify(path ?? null)}`,
      );
    }
  }
  for (const vm of vms) {
    const h = proxy.find((e) => e.id === vm.handler);
    out.push(`proxy's ${vm.label}: ${JSON.stringify(h?.switched ?? null)} ${h?.link.state}`);
  }
  for (const host of new Set(vms.map((v) => v.host))) {
    const lines = sites.servers.get(host.label)?.lines ?? [];
    const said = lines.filter((l) => / (WARN|ERROR) /.test(l) || vms.some((v) => l.includes(v.mac)))
      .slice(-20);
    out.push(`${host.label} server:\n  ${said.join("\n  ")}`);
  }
  return out.join("\n");
}

e2e(
  `scale: ${HOSTS} Hosts × ${VMS} VMs behind one Proxy reach each other and the LAN`,
  async (t) => {
    const t0 = performance.now();
    const at = () => `${((performance.now() - t0) / 1000).toFixed(1)} s`;
    const endpoints = HOSTS * VMS + 1;
    const restoreArpTable = roomInArpTable(endpoints * endpoints);
    try {
      await withSites({ hosts: HOSTS, vmsPerHost: VMS, dhcp: false }, 230_000, async (sites) => {
        console.log(`    ${sites.vms.length} VMs in ${sites.hosts.length} Hosts built at ${at()}`);
        await sites.startServers();
        console.log(`    ${sites.servers.size} servers listening at ${at()}`);
        await sites.createHandlers(sites.vms, { concurrency: 6 });
        console.log(`    ${sites.vms.length} handlers made at ${at()}`);
        const proxy = sites.servers.get("proxy")!;

        let mesh: MeshReport | undefined;
        await t.step("every VM reaches every other VM and the LAN client (UDP)", async () => {
          mesh = await sites.reachability(sites.endpoints(), {
            rate: 800,
            rounds: 4,
            roundWait: 3,
            deadlineS: 120,
            announce: true,
          });
          console.log(
            `    reachability: ${mesh.reached}/${mesh.pairs} ordered pairs of ${mesh.endpoints} ` +
              `endpoints in ${mesh.seconds} s after ${mesh.announceSeconds} s of gratuitous ARP; rounds ${
                JSON.stringify(mesh.rounds)
              }`,
          );
          const lan = mesh.missing.filter(([a, b]) => a === "client" || b === "client");
          assert(
            mesh.missingCount === 0,
            `${mesh.missingCount} pairs unanswered (${lan.length}+ with the LAN), e.g. ` +
              mesh.missing.slice(0, 12).map(([a, b]) => `${a}→${b}`).join(" ") +
              `\n${await whyUnanswered(sites, mesh.missing.slice(0, 2))}`,
          );
        });

        await t.step("the Proxy's memory, fds and links", async () => {
          const f = processFigures(proxy.pid);
          const list = await sites.list("proxy");
          const links = new Set(list.map((h) => h.link.remote)).size;
          const tcp = await establishedOn(sites.ns.proxy);
          const switched = list.reduce((n, h) => n + (h.switched?.frames ?? 0), 0);
          const hostDirect = await Promise.all(
            sites.hosts.map(async (h) =>
              (await sites.list(h)).reduce(
                (n, e) => n + (e.paths ?? []).filter((p) => p.via === "direct").length,
                0,
              )
            ),
          );
          console.log(
            `    Proxy: RSS ${
              (f.rssKiB / 1024).toFixed(0)
            } MiB, ${f.fds} fds, ${f.threads} threads, ` +
              `${list.length} handlers over ${links} peer links (${tcp} established TCP on :7000), ` +
              `${switched} frames switched; direct paths on the Hosts: ${
                hostDirect.reduce((a, b) => a + b, 0)
              } (${mesh ? "after" : "without"} the mesh) at ${at()}`,
          );
          assert(list.length === sites.vms.length, `the Proxy lists ${list.length} handlers`);
          assert(links === HOSTS, `${links} peer links for ${HOSTS} Hosts: one link per Host`);
          assert(f.rssKiB < 400 * 1024, `Proxy RSS ${f.rssKiB} KiB`);
        });
      });
    } finally {
      restoreArpTable();
    }
  },
);
