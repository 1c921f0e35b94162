/**
 * Which MACs a server may proxy, beyond what a request can be checked for alone (rpc.ts):
 *
 * - never one of this server's own interfaces' MACs (it would capture its own traffic);
 * - only MACs in the ranges the operator allows (`--allow-mac 52:54:00:*,...`, as OpenStack's
 *   port security), if any are given;
 * - at the Proxy end, not a MAC that is already live on the LAN, unless the operator says
 *   so (`--allow-live-mac`): a handler for the LAN gateway's MAC would hijack the gateway.
 *   A MAC is live when the Proxy's neighbour table knows it on that device, or when a frame
 *   from it is seen on the device during a short listen. Either way it is logged at WARN.
 * - A quiet host is live too when it is one the LAN cannot do without: the Proxy's gateways on
 *   that device (/proc/net/route), its DNS servers there (/etc/resolv.conf) and its DHCP server
 *   (dhclient's or systemd-networkd's lease), each resolved to its MAC through the kernel's
 *   neighbour table after a probe (a TCP connection attempt makes the kernel ARP for it).
 */
import { ErrorCode, VnetError } from "../errors.ts";
import { type DeviceInfo } from "../dataplane/interfaces.ts";
import { PcapCapture } from "../dataplane/pcap_capture.ts";
import { type Logger } from "../log.ts";

/** How long the Proxy listens for frames from a MAC before it carries it. */
const LIVE_LISTEN_MS = 300;
/** How long a probe waits for the kernel to resolve a LAN server's address. */
const PROBE_MS = 300;
/** LAN servers resolved on a device are trusted this long (a burst of creates probes once). */
const PRESENT_TTL_MS = 10_000;

/** A range of MACs the operator allows: a whole MAC, or leading bytes then `*`. */
export interface MacRange {
  /** The leading bytes, `xx:xx:`, lower case (a whole MAC: all six, no trailing colon). */
  prefix: string;
  text: string;
}

/**
 * `--allow-mac` ranges, comma-separated: `52:54:00:*`, `02:*`, `52:54:00:12:34:56`. Throws one
 * line naming the bad one.
 */
export function parseMacRanges(text: string): MacRange[] {
  return text.split(",").map((t) => t.trim()).filter((t) => t !== "").map((t) => {
    const m = /^((?:[0-9a-fA-F]{2}:){1,5})\*$/.exec(t);
    if (m) return { prefix: m[1].toLowerCase(), text: t };
    if (/^([0-9a-fA-F]{2}:){5}[0-9a-fA-F]{2}$/.test(t)) return { prefix: t.toLowerCase(), text: t };
    throw new VnetError(
      `bad MAC range '${t.slice(0, 40).replace(/[^\x20-\x7e]/g, "?")}': leading bytes then ` +
        "'*' (52:54:00:*) or a whole MAC, comma-separated",
      { code: ErrorCode.Invalid },
    );
  });
}

/** Refuses a MAC outside the operator's ranges (none given: every MAC is allowed). */
export function checkAllowedMacs(macs: readonly string[], ranges: readonly MacRange[]): void {
  if (ranges.length === 0) return;
  for (const mac of macs) {
    if (ranges.some((r) => mac.startsWith(r.prefix))) continue;
    throw new VnetError(
      `MAC ${mac} is outside this server's --allow-mac ranges ` +
        `(${ranges.map((r) => r.text).join(",")}): give a VM's MAC from them`,
      { code: ErrorCode.Refused },
    );
  }
}

export function checkNotOwnMacs(macs: string[], devices: DeviceInfo[]): void {
  for (const mac of macs) {
    const own = devices.find((d) => d.mac === mac);
    if (own) {
      throw new VnetError(
        `MAC ${mac} belongs to this server's own interface ${own.name}: give the VM's MAC`,
        { code: ErrorCode.Refused },
      );
    }
  }
}

/** The kernel's IPv4 neighbour table on `device` (complete entries): MAC by address. */
function neighbours(device: string, arpTable = "/proc/net/arp"): Map<string, string> {
  const found = new Map<string, string>();
  let text = "";
  try {
    text = Deno.readTextFileSync(arpTable);
  } catch {
    return found; // not Linux, or no procfs: the listen below still runs
  }
  // IP address  HW type  Flags  HW address  Mask  Device
  for (const line of text.split("\n").slice(1)) {
    const f = line.trim().split(/\s+/);
    if (f.length >= 6 && f[5] === device && f[2] !== "0x0") found.set(f[0], f[3].toLowerCase());
  }
  return found;
}

function readText(path: string): string {
  try {
    return Deno.readTextFileSync(path);
  } catch {
    return "";
  }
}

/** An IPv4 address from /proc/net/route's little-endian hex. */
function routeAddress(hex: string): string {
  const n = parseInt(hex, 16) >>> 0;
  return [n & 255, (n >>> 8) & 255, (n >>> 16) & 255, n >>> 24].join(".");
}

function ipv4Number(ip: string): number {
  return ip.split(".").reduce((n, b) => n * 256 + Number(b), 0);
}

/**
 * The hosts the LAN on `device` cannot do without, as far as this machine knows them: its
 * gateways through `device`, and the DNS and DHCP servers on that LAN. Address → what it is.
 */
export function lanServers(
  device: string,
  files = {
    route: "/proc/net/route",
    resolv: "/etc/resolv.conf",
    leases: [
      `/var/lib/dhcp/dhclient.${device}.leases`,
      "/var/lib/dhcp/dhclient.leases",
      `/var/lib/dhclient/dhclient-${device}.leases`,
      `/run/systemd/netif/leases/${readText(`/sys/class/net/${device}/ifindex`).trim()}`,
    ],
  },
): Map<string, string> {
  const servers = new Map<string, string>();
  const subnets: [number, number][] = [];
  // Iface Destination Gateway Flags RefCnt Use Metric Mask ...
  for (const line of readText(files.route).split("\n").slice(1)) {
    const f = line.trim().split(/\s+/);
    if (f.length < 8 || f[0] !== device) continue;
    const gateway = routeAddress(f[2]);
    if (gateway !== "0.0.0.0") {
      servers.set(gateway, f[1] === "00000000" ? "the default gateway" : "a gateway");
    } else {
      const mask = ipv4Number(routeAddress(f[7]));
      subnets.push([ipv4Number(routeAddress(f[1])) & mask, mask]);
    }
  }
  const onLink = (ip: string) =>
    /^\d+\.\d+\.\d+\.\d+$/.test(ip) &&
    subnets.some(([net, mask]) => ((ipv4Number(ip) & mask) >>> 0) === net >>> 0);
  const add = (ip: string, what: string) => {
    if (onLink(ip) && !servers.has(ip)) servers.set(ip, what);
  };
  for (const m of readText(files.resolv).matchAll(/^\s*nameserver\s+(\S+)/gm)) {
    add(m[1], "a DNS server");
  }
  for (const path of files.leases) {
    const text = readText(path);
    // dhclient: `option dhcp-server-identifier A;` `option routers A;` `option
    // domain-name-servers A,B;`; systemd-networkd: SERVER_ADDRESS=, ROUTER=, DNS=.
    for (const m of text.matchAll(/(?:dhcp-server-identifier|SERVER_ADDRESS=)\s*([\d.]+)/g)) {
      add(m[1], "the DHCP server");
    }
    for (const m of text.matchAll(/(?:option routers|ROUTER=)\s*([\d., ]+)/g)) {
      for (const ip of m[1].split(/[\s,]+/)) add(ip, "a gateway");
    }
    for (const m of text.matchAll(/(?:domain-name-servers|DNS=)\s*([\d., ]+)/g)) {
      for (const ip of m[1].split(/[\s,]+/)) add(ip, "a DNS server");
    }
  }
  return servers;
}

/** The LAN servers' MACs on a device, resolved lately: MAC → "the default gateway 10.0.0.1". */
const present = new Map<string, { until: number; macs: Promise<Map<string, string>> }>();

/**
 * Resolves the LAN servers of `device` to MACs. One not in the neighbour table is probed: a
 * TCP connection attempt to its discard port makes the kernel ARP for it (whatever the answer,
 * a reset or none, the neighbour entry is what counts), for at most PROBE_MS.
 */
function presentMacs(device: string): Promise<Map<string, string>> {
  const cached = present.get(device);
  if (cached && cached.until > Date.now()) return cached.macs;
  const macs = (async () => {
    const servers = lanServers(device);
    const known = neighbours(device);
    const unresolved = [...servers.keys()].filter((ip) => !known.has(ip));
    if (unresolved.length > 0) {
      await Promise.all(unresolved.map((ip) => probe(ip)));
      for (const [ip, mac] of neighbours(device)) known.set(ip, mac);
    }
    const found = new Map<string, string>();
    for (const [ip, what] of servers) {
      const mac = known.get(ip);
      if (mac) found.set(mac, `${what} ${ip}`);
    }
    return found;
  })();
  present.set(device, { until: Date.now() + PRESENT_TTL_MS, macs });
  return macs;
}

/** Makes the kernel resolve `ip` (see presentMacs); settles within PROBE_MS. */
function probe(ip: string): Promise<void> {
  const attempt = Deno.connect({ hostname: ip, port: 9 }).then((c) => c.close(), () => {});
  return Promise.race([attempt, new Promise<void>((r) => setTimeout(r, PROBE_MS))]);
}

/** Listens waiting to start, by device: the creates of one burst share one capture. */
const gathering = new Map<string, { macs: Set<string>; heard: Promise<Set<string>> }>();

/**
 * Which of `macs` send on `device` within `ms`. Requests made in the same turn of the event
 * loop share one capture (a burst of creates opens one, not one each).
 */
function heardFrom(device: string, macs: string[], ms: number): Promise<Set<string>> {
  let batch = gathering.get(device);
  if (!batch) {
    const wanted = new Set<string>();
    const heard = new Promise<void>((r) => setTimeout(r, 0)).then(() => {
      gathering.delete(device);
      return listen(device, [...wanted], ms);
    });
    gathering.set(device, batch = { macs: wanted, heard });
  }
  for (const m of macs) batch.macs.add(m);
  return batch.heard;
}

/** One capture of `ether src` those MACs on `device`, for `ms`. */
async function listen(device: string, macs: string[], ms: number): Promise<Set<string>> {
  const heard = new Set<string>();
  const filter = macs.map((m) => `ether src ${m}`).join(" or ");
  const capture = new PcapCapture(device, filter, { snaplen: 64, bufferSize: 256 * 1024 });
  try {
    const until = Date.now() + ms;
    for (let left = ms; left > 0 && heard.size < macs.length; left = until - Date.now()) {
      if (!await capture.wait(left)) continue;
      capture.drain((frame) => {
        const src = Array.from(frame.subarray(6, 12), (b) => b.toString(16).padStart(2, "0"))
          .join(":");
        heard.add(src);
      }, 64);
    }
  } finally {
    capture.close();
  }
  return heard;
}

/**
 * Refuses (unless `allow`) to proxy a MAC that is live on `device`; logs at WARN either way.
 */
export async function checkNotLive(
  device: string,
  macs: string[],
  allow: boolean,
  log: Logger,
  listenMs = LIVE_LISTEN_MS,
): Promise<void> {
  // The LAN's servers are resolved while we listen: both take a few hundred ms at most.
  const servers = presentMacs(device);
  const known = new Set(neighbours(device).values());
  let live = macs.filter((m) => known.has(m));
  if (live.length === 0 && listenMs > 0) {
    const heard = await heardFrom(device, macs, listenMs);
    live = macs.filter((m) => heard.has(m));
  }
  const server = await servers.catch(() => new Map<string, string>());
  const quiet = macs.filter((m) => server.has(m) && !live.includes(m));
  live.push(...quiet);
  if (live.length === 0) return;
  const what = server.get(live[0]);
  log.warn("MAC already live on the LAN", {
    device,
    macs: live.join(","),
    lanServer: what,
    allowed: allow,
  });
  if (allow) return;
  throw new VnetError(
    `MAC ${live[0]} is already live on ${device} (` +
      (what ? `it is the LAN's ${what.replace(/^the |^a /, "")}` : "another machine uses it") +
      "): proxying it would take its traffic; give the VM's own MAC, or start the Proxy's " +
      "server with --allow-live-mac if this is intended (e.g. the VM moved here from this LAN)",
    { code: ErrorCode.Refused },
  );
}
