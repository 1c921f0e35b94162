/**
 * Has a frame from this MAC been seen on the Host's device? A `--mac` that no table on the Host
 * knows is most often a typo, so the client is warned (issue 20). Two tables the kernel keeps
 * anyway, read at once, no capture:
 *   - the bridge's forwarding database (`/sys/class/net/BR/brforward`), when the device is a
 *     bridge or a port of one: every source MAC the bridge has learnt, for 300 s by default;
 *   - the neighbour table (`/proc/net/arp`) on the device: VMs that talked IPv4 to the Host.
 * A VM on a lone tap that has not talked to the Host is in neither: hence a warning, not a
 * refusal, and the warning says so.
 */

/** `struct __fdb_entry` (linux/if_bridge.h): mac[6], port_no, is_local, ageing u32, ... */
const FDB_ENTRY_BYTES = 16;
/** A bridge's table holds at most this many entries read here (the kernel's default max). */
const MAX_FDB_BYTES = FDB_ENTRY_BYTES * 4096;

interface Roots {
  sys: string;
  proc: string;
}

/** Which of `macs` (lowercase) no table shows behind `device`; [] when all were seen. */
export function unseenMacs(
  device: string,
  macs: readonly string[],
  roots: Roots = { sys: "/sys", proc: "/proc" },
): string[] {
  if (/[/\0]/.test(device) || device === "." || device === "..") return [];
  const seen = new Set<string>();
  const net = `${roots.sys}/class/net`;
  // A port's frames are learnt, and its neighbours kept, by the bridge it belongs to.
  for (const dev of [device, masterOf(net, device)]) {
    if (!dev) continue;
    learntBy(`${net}/${dev}/brforward`, seen);
    neighbours(`${roots.proc}/net/arp`, dev, seen);
  }
  return macs.filter((m) => !seen.has(m.toLowerCase()));
}

/** The bridge `device` is a port of, if any. */
function masterOf(net: string, device: string): string | undefined {
  try {
    const target = Deno.readLinkSync(`${net}/${device}/master`);
    return target.slice(target.lastIndexOf("/") + 1) || undefined;
  } catch {
    return undefined;
  }
}

/** The MACs a bridge has learnt from frames (not its own ports' addresses). */
function learntBy(path: string, into: Set<string>): void {
  let data: Uint8Array;
  try {
    data = Deno.readFileSync(path);
  } catch {
    return; // not a bridge
  }
  const end = Math.min(data.length, MAX_FDB_BYTES);
  for (let at = 0; at + FDB_ENTRY_BYTES <= end; at += FDB_ENTRY_BYTES) {
    if (data[at + 7] !== 0) continue; // is_local: a port's own address
    const mac = Array.from(data.subarray(at, at + 6), (b) => b.toString(16).padStart(2, "0"));
    into.add(mac.join(":"));
  }
}

/** Complete entries of the IPv4 neighbour table on `device`. */
function neighbours(path: string, device: string, into: Set<string>): void {
  let text: string;
  try {
    text = Deno.readTextFileSync(path);
  } catch {
    return;
  }
  // IP address  HW type  Flags  HW address  Mask  Device
  for (const line of text.split("\n").slice(1)) {
    const f = line.trim().split(/\s+/);
    if (f.length >= 6 && f[5] === device && f[2] !== "0x0") into.add(f[3].toLowerCase());
  }
}

/** The warning the client shows for MACs no frame has carried on `device`. */
export function unseenWarning(device: string, macs: readonly string[]): string {
  return `no frame from ${macs.join(", ")} seen on ${device} yet (not in its bridge's ` +
    `forwarding table nor the neighbour table): if the VM is up, check the MAC for a typo`;
}
