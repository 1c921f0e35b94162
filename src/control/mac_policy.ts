/**
 * Which MACs a server may proxy, beyond what a request can be checked for alone (rpc.ts):
 *
 * - never one of this server's own interfaces' MACs (it would capture its own traffic);
 * - at the Proxy end, not a MAC that is already live on the LAN, unless the operator says
 *   so (`--allow-live-mac`): a handler for the LAN gateway's MAC would hijack the gateway.
 *   A MAC is live when the Proxy's neighbour table knows it on that device, or when a frame
 *   from it is seen on the device during a short listen. Either way it is logged at WARN.
 */
import { ErrorCode, VnetError } from "../errors.ts";
import { type DeviceInfo } from "../dataplane/interfaces.ts";
import { PcapCapture } from "../dataplane/pcap_capture.ts";
import { type Logger } from "../log.ts";

/** How long the Proxy listens for frames from a MAC before it carries it. */
const LIVE_LISTEN_MS = 300;

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

/** The MACs the kernel's IPv4 neighbour table holds on `device` (complete entries). */
function neighbourMacs(device: string, arpTable = "/proc/net/arp"): Set<string> {
  const found = new Set<string>();
  let text = "";
  try {
    text = Deno.readTextFileSync(arpTable);
  } catch {
    return found; // not Linux, or no procfs: the listen below still runs
  }
  // IP address  HW type  Flags  HW address  Mask  Device
  for (const line of text.split("\n").slice(1)) {
    const f = line.trim().split(/\s+/);
    if (f.length >= 6 && f[5] === device && f[2] !== "0x0") found.add(f[3].toLowerCase());
  }
  return found;
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
  const neighbours = neighbourMacs(device);
  let live = macs.filter((m) => neighbours.has(m));
  if (live.length === 0 && listenMs > 0) {
    const heard = await heardFrom(device, macs, listenMs);
    live = macs.filter((m) => heard.has(m));
  }
  if (live.length === 0) return;
  log.warn("MAC already live on the LAN", { device, macs: live.join(","), allowed: allow });
  if (allow) return;
  throw new VnetError(
    `MAC ${live[0]} is already live on ${device} (another machine uses it): proxying it would ` +
      "take its traffic; give the VM's own MAC, or start the Proxy's server with " +
      "--allow-live-mac if this is intended (e.g. the VM moved here from this LAN)",
    { code: ErrorCode.Refused },
  );
}
