/**
 * What `vnet doctor` reads about this machine from procfs and sysfs (Linux). Every reader takes
 * the root it reads under, so tests run them against a fake tree in a temp dir.
 */

/** Capability numbers (linux/capability.h). */
export const CAP_NET_ADMIN = 12;
export const CAP_NET_RAW = 13;

export interface Privileges {
  /** Real user id, from the `Uid:` line; null if unknown. */
  uid: number | null;
  /** The effective capability set (`CapEff:`), null if the file has none. */
  effective: bigint | null;
}

/** The privileges of this process, from `<proc>/self/status`. Throws if it cannot be read. */
export function readPrivileges(procRoot = "/proc"): Privileges {
  const text = Deno.readTextFileSync(`${procRoot}/self/status`);
  const uid = /^Uid:\s+(\d+)/m.exec(text);
  const eff = /^CapEff:\s+([0-9a-fA-F]+)\s*$/m.exec(text);
  return {
    uid: uid ? Number(uid[1]) : null,
    effective: eff ? BigInt(`0x${eff[1]}`) : null,
  };
}

export function hasCapability(set: bigint, cap: number): boolean {
  return ((set >> BigInt(cap)) & 1n) === 1n;
}

/**
 * How to give this program the two capabilities: setcap on the vnet binary. From source the
 * program is Deno itself, and setcap on `deno` would give them to every script it runs: the
 * compiled binary is the thing to give them to.
 */
export function setcapHint(execPath = Deno.execPath()): string {
  const compiled = !/(^|\/)deno(\.exe)?$/.test(execPath);
  return compiled
    ? `sudo setcap cap_net_raw,cap_net_admin+ep ${execPath}`
    : "build the binary (deno task compile), then: " +
      "sudo setcap cap_net_raw,cap_net_admin+ep /path/to/vnet";
}

/**
 * One line if this process cannot capture and inject (neither root's capabilities nor
 * CAP_NET_RAW and CAP_NET_ADMIN effective), saying what is missing and how to fix it; null if
 * it can, or if it cannot tell (no /proc: not Linux).
 */
export function privilegeProblem(procRoot = "/proc", execPath = Deno.execPath()): string | null {
  let p: Privileges;
  try {
    p = readPrivileges(procRoot);
  } catch {
    return null;
  }
  if (p.effective === null) return null;
  const missing = [
    hasCapability(p.effective, CAP_NET_RAW) ? "" : "CAP_NET_RAW",
    hasCapability(p.effective, CAP_NET_ADMIN) ? "" : "CAP_NET_ADMIN",
  ].filter(Boolean);
  if (missing.length === 0) return null;
  const who = p.uid === 0 ? "root" : `uid ${p.uid ?? "?"}`;
  return `cannot capture or inject frames: ${who} lacks ${missing.join(" and ")}; run as ` +
    `root, or give the binary the capabilities: ${setcapHint(execPath)}`;
}

export interface DeviceFacts {
  name: string;
  exists: boolean;
  /** IFF_UP: the administrator set it up. */
  up: boolean;
  /** `carrier`: null when the kernel will not say (the device is down). */
  carrier: boolean | null;
  operstate: string;
  mtu: number | null;
  mac: string | null;
  /** The bridge this device is a port of, if any. */
  bridgeMaster: string | null;
  /** The device is itself a bridge. */
  isBridge: boolean;
  /** A Wi-Fi (cfg80211) interface. */
  wireless: boolean;
}

function read(path: string): string | null {
  try {
    return Deno.readTextFileSync(path).trim();
  } catch {
    return null;
  }
}

function exists(path: string): boolean {
  try {
    Deno.statSync(path);
    return true;
  } catch {
    return false;
  }
}

/** A kernel interface name: 1-15 bytes, no '/', no whitespace, not "." or "..". */
export function validDeviceName(name: string): boolean {
  return name.length > 0 && name.length < 16 && !/[/\s:\0]/.test(name) && name !== "." &&
    name !== "..";
}

/** Facts about network interface `name` from `<sys>/class/net/<name>`. */
export function readDevice(name: string, sysRoot = "/sys"): DeviceFacts {
  const dir = `${sysRoot}/class/net/${name}`;
  const none: DeviceFacts = {
    name,
    exists: false,
    up: false,
    carrier: null,
    operstate: "unknown",
    mtu: null,
    mac: null,
    bridgeMaster: null,
    isBridge: false,
    wireless: false,
  };
  if (!validDeviceName(name) || !exists(dir)) return none;
  const flags = Number.parseInt(read(`${dir}/flags`) ?? "0", 16) || 0;
  const carrier = read(`${dir}/carrier`);
  const mtu = Number(read(`${dir}/mtu`));
  const uevent = read(`${dir}/uevent`) ?? "";
  const devtype = /^DEVTYPE=(\S+)$/m.exec(uevent)?.[1] ?? "";
  let bridgeMaster: string | null = null;
  if (exists(`${dir}/brport`)) {
    try {
      bridgeMaster = Deno.readLinkSync(`${dir}/master`).split("/").pop() ?? null;
    } catch {
      bridgeMaster = "a bridge";
    }
  }
  return {
    name,
    exists: true,
    up: (flags & 0x1) !== 0,
    carrier: carrier === "1" ? true : carrier === "0" ? false : null,
    operstate: read(`${dir}/operstate`) ?? "unknown",
    mtu: Number.isFinite(mtu) && mtu > 0 ? mtu : null,
    mac: read(`${dir}/address`),
    bridgeMaster,
    isBridge: devtype === "bridge" || exists(`${dir}/bridge`),
    wireless: devtype === "wlan" || exists(`${dir}/wireless`) || exists(`${dir}/phy80211`),
  };
}

/** The names of every interface under `<sys>/class/net`. */
export function listDeviceNames(sysRoot = "/sys"): string[] {
  try {
    return [...Deno.readDirSync(`${sysRoot}/class/net`)].map((e) => e.name).sort();
  } catch {
    return [];
  }
}

export interface WifiMode {
  /** nl80211 interface type: managed (a client, "station"), AP, mesh point, monitor, ... */
  type: string | null;
  /** 4-address (WDS) mode: frames keep foreign source MACs. */
  fourAddr: boolean;
}

/** Parses `iw dev DEV info`. */
export function parseIwInfo(text: string): WifiMode {
  return {
    type: /^\s*type\s+(.+?)\s*$/m.exec(text)?.[1] ?? null,
    fourAddr: /^\s*4addr:\s*on\s*$/m.test(text),
  };
}

/**
 * Whether a Wi-Fi interface in `mode` can carry frames of other MACs: an access point, a
 * 4-address station, a mesh point can; a plain client (managed) cannot, and unknown is
 * treated as a client (the common case).
 */
export function wifiCanBridge(mode: WifiMode | null): boolean {
  if (!mode?.type) return false;
  if (mode.fourAddr) return true;
  return /^(AP|AP\/VLAN|mesh point|WDS)$/i.test(mode.type);
}

/** Parses `ethtool -k DEV`: the offloads that are on (fixed ones too), by their short names. */
export function parseOffloads(text: string): string[] {
  const short: Record<string, string> = {
    "rx-checksumming": "rx-csum",
    "tx-checksumming": "tx-csum",
    "scatter-gather": "sg",
    "tcp-segmentation-offload": "tso",
    "generic-segmentation-offload": "gso",
    "generic-receive-offload": "gro",
    "large-receive-offload": "lro",
    "rx-vlan-offload": "rxvlan",
    "tx-vlan-offload": "txvlan",
  };
  const on: string[] = [];
  for (const m of text.matchAll(/^([a-z-]+):\s+on\b/gm)) {
    if (short[m[1]]) on.push(short[m[1]]);
  }
  return on;
}
