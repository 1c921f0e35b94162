/**
 * The BPF filters of the paper's two roles (section 4.2), compiled by libpcap.
 *
 * Host:  frames *from* the VMs, i.e. whose source is a proxied MAC, on the VMs' interface.
 * Proxy: frames *to* the VMs (destination a proxied MAC, or broadcast, or with --multicast any
 *        group address) on the LAN interface, except those whose source is a proxied MAC: those
 *        are our own injections seen again, or a loop, and are never forwarded.
 *
 * Beside the paper's filter, a Proxy captures the frames that arrive FROM a proxied MAC
 * (`conflictFilter`), only to count them: the VM is behind its Host, so such a frame on the LAN
 * is a duplicate MAC or a loop (HandlerInfo.macConflicts).
 */
import { parseMac } from "./mac.ts";
import type { Role } from "./ports.ts";

export function buildFilter(role: Role, macs: string[], multicast: boolean): string {
  const from = fromAny(macs);
  if (role === "host") return from;
  const to = macs.map((m) => `ether dst ${parseMac(m)}`);
  to.push(multicast ? "ether multicast" : "ether broadcast");
  return `(${to.join(" or ")}) and not (${from})`;
}

/**
 * Frames received on the interface from one of `macs`. On Linux the filter says `inbound`
 * itself: libpcap applies PCAP_D_IN after the kernel filter there, so without it each frame the
 * Proxy injects (from those very MACs) would take a ring slot only to be skipped. (libpcap runs
 * the filter once in user space on the first slot after a filter change, where `inbound` is
 * always false: at most that one conflict goes uncounted.)
 */
export function conflictFilter(macs: string[], os: typeof Deno.build.os = Deno.build.os): string {
  return os === "linux" ? `inbound and (${fromAny(macs)})` : fromAny(macs);
}

function fromAny(macs: string[]): string {
  if (macs.length === 0) throw new Error("a filter needs at least one MAC");
  return macs.map((m) => `ether src ${parseMac(m)}`).join(" or ");
}
