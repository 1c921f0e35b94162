/**
 * What Linux says about a network interface in `/sys/class/net/DEV/`: its MTU and its MAC
 * address. Elsewhere (or for a name that is not a plain interface name) the answers are defaults.
 */

/** The MTU assumed when the system does not say (Ethernet's). */
const DEFAULT_MTU = 1500;

/** A name that cannot escape `/sys/class/net/` when put into a path. */
function plainName(device: string): boolean {
  return Deno.build.os === "linux" && device !== "" && device !== "." && device !== ".." &&
    !/[/\0]/.test(device);
}

/** The interface MTU: `/sys/class/net/DEV/mtu` on Linux, else 1500. */
export function interfaceMtu(device: string): number {
  if (plainName(device)) {
    try {
      const mtu = parseInt(Deno.readTextFileSync(`/sys/class/net/${device}/mtu`).trim(), 10);
      if (Number.isInteger(mtu) && mtu > 0) return mtu;
    } catch {
      // not readable: fall back
    }
  }
  return DEFAULT_MTU;
}

/** The interface's MAC address, lowercase `aa:bb:cc:dd:ee:ff`, when Linux sysfs tells it. */
export function interfaceMac(device: string): string | undefined {
  if (!plainName(device)) return undefined;
  try {
    const mac = Deno.readTextFileSync(`/sys/class/net/${device}/address`).trim().toLowerCase();
    return /^([0-9a-f]{2}:){5}[0-9a-f]{2}$/.test(mac) ? mac : undefined;
  } catch {
    return undefined;
  }
}
