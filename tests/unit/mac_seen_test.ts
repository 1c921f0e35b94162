/**
 * src/control/mac_seen.ts against a fake sysfs/procfs tree: a MAC is seen when the bridge of
 * the device (or the device, a bridge) has learnt it, or the neighbour table has it there.
 */
import { assertEquals } from "./assert.ts";
import { unseenMacs } from "../../src/control/mac_seen.ts";

/** One `struct __fdb_entry`: 16 bytes. */
function fdbEntry(mac: string, local: boolean): Uint8Array {
  const e = new Uint8Array(16);
  e.set(mac.split(":").map((h) => parseInt(h, 16)), 0);
  e[6] = 1; // port_no
  e[7] = local ? 1 : 0;
  return e;
}

Deno.test("mac seen: the bridge's learnt MACs and the neighbour table; not its own", async () => {
  const root = await Deno.makeTempDir({ prefix: "vnet-mac-seen-" });
  try {
    const net = `${root}/sys/class/net`;
    await Deno.mkdir(`${net}/br0`, { recursive: true });
    await Deno.mkdir(`${net}/tap0`, { recursive: true });
    await Deno.mkdir(`${net}/tap1`, { recursive: true });
    await Deno.mkdir(`${root}/proc/net`, { recursive: true });
    await Deno.symlink("../br0", `${net}/tap0/master`);
    const fdb = new Uint8Array(48);
    fdb.set(fdbEntry("52:54:00:00:00:01", false), 0);
    fdb.set(fdbEntry("52:54:00:00:00:02", true), 16); // a port's own address
    fdb.set(fdbEntry("52:54:00:00:00:03", false), 32);
    await Deno.writeFile(`${net}/br0/brforward`, fdb);
    await Deno.writeTextFile(
      `${root}/proc/net/arp`,
      "IP address       HW type     Flags       HW address            Mask     Device\n" +
        "10.0.0.7         0x1         0x2         52:54:00:00:00:07     *        tap1\n" +
        "10.0.0.8         0x1         0x0         52:54:00:00:00:08     *        tap1\n" +
        "10.0.0.9         0x1         0x2         52:54:00:00:00:09     *        br0\n",
    );
    const roots = { sys: `${root}/sys`, proc: `${root}/proc` };
    const macs = ["52:54:00:00:00:01", "52:54:00:00:00:02", "52:54:00:00:00:03"];
    // A port of br0: br0's learnt MACs and neighbours count.
    assertEquals(unseenMacs("tap0", [...macs, "52:54:00:00:00:09"], roots), ["52:54:00:00:00:02"]);
    assertEquals(unseenMacs("br0", ["52:54:00:00:00:03"], roots), []);
    // A lone tap: only its neighbours; an incomplete entry (flags 0x0) is no proof.
    assertEquals(
      unseenMacs("tap1", ["52:54:00:00:00:07", "52:54:00:00:00:08", "52:54:00:00:00:01"], roots),
      ["52:54:00:00:00:08", "52:54:00:00:00:01"],
    );
    assertEquals(unseenMacs("../etc", ["52:54:00:00:00:08"], roots), []);
  } finally {
    await Deno.remove(root, { recursive: true });
  }
});
