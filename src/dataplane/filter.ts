/**
 * The BPF filters of the paper's two roles (section 4.2), compiled by libpcap.
 *
 * Host:  frames *from* the VMs, i.e. whose source is a proxied MAC, on the VMs' interface.
 * Proxy: frames *to* the VMs (destination a proxied MAC, or broadcast, or with --multicast any
 *        group address) on the LAN interface, except those whose source is a proxied MAC: those
 *        are our own injections seen again, or a loop.
 */
import { parseMac } from "./mac.ts";
import type { Role } from "./ports.ts";

/** Where Role was first defined; src/control imports it from here until it imports ports.ts. */
export type { Role };

export function buildFilter(role: Role, macs: string[], multicast: boolean): string {
  if (macs.length === 0) throw new Error("a filter needs at least one MAC");
  const canonical = macs.map(parseMac);
  const from = canonical.map((m) => `ether src ${m}`).join(" or ");
  if (role === "host") return from;
  const to = canonical.map((m) => `ether dst ${m}`);
  to.push(multicast ? "ether multicast" : "ether broadcast");
  return `(${to.join(" or ")}) and not (${from})`;
}
