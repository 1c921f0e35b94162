/**
 * Production wiring of the ports (`Interfaces` on libpcap + libnet), and what the CLI shows about
 * the host: its network interfaces (`pcap_findalldevs`) and the native library versions.
 */
import type { Injector, Interfaces } from "./ports.ts";
import { PcapCapture } from "./pcap_capture.ts";
import { DeviceCaptures } from "./device_capture.ts";
import { PacketInjector } from "./packet_injector.ts";
import { LibnetInjector } from "./libnet_injector.ts";
import { PcapInjector } from "./pcap_injector.ts";
import { interfaceMac, interfaceMtu } from "./sysfs.ts";
import { formatIpv6 } from "../addr.ts";
import {
  errbufText,
  pcap,
  PCAP_ERRBUF_SIZE,
  PCAP_IF_LOOPBACK,
  PCAP_IF_RUNNING,
  PCAP_IF_UP,
  pcapLibVersion,
  readCString,
} from "../../ffi/libpcap.ts";
import { libnetVersion } from "../../ffi/libnet.ts";
import { structs } from "../../ffi/layout.ts";
import { ErrorCode, messageOf, VnetError } from "../errors.ts";
import { translated } from "./ffi_errors.ts";

export type InjectorKind = "libnet" | "pcap" | "packet";
export const INJECTORS: readonly InjectorKind[] = ["libnet", "pcap", "packet"];
/**
 * Linux: the packet socket, which passes TCP super-frames to the kernel whole (GSO): about four
 * times the throughput of libnet, which must write them segment by segment (the README's
 * Performance section: 3.1 against 0.65-0.77 Gbit/s). Elsewhere: libnet, the portable injector.
 */
export const DEFAULT_INJECTOR: InjectorKind = Deno.build.os === "linux" ? "packet" : "libnet";

const INJECTOR_CLASSES: Record<InjectorKind, new (device: string) => Injector> = {
  libnet: LibnetInjector,
  pcap: PcapInjector,
  packet: PacketInjector,
};

/** The real `Interfaces`: libpcap captures; libnet, pcap_inject or packet-socket injectors. */
export function systemInterfaces(
  options: { injector: InjectorKind; captureBufferBytes?: number },
): Interfaces {
  const captures = new DeviceCaptures((device, filter) =>
    new PcapCapture(device, filter, { bufferSize: options.captureBufferBytes })
  );
  return {
    openCapture: (device, spec) => captures.open(device, spec),
    openInjector: (device) => new INJECTOR_CLASSES[options.injector](device),
    check: () => captures.check(),
  };
}

export interface DeviceInfo {
  name: string;
  /** libpcap's description, if any. */
  description?: string;
  up: boolean;
  running: boolean;
  loopback: boolean;
  /** IPv4 and IPv6 addresses, e.g. `192.168.1.10`, `fe80::1`. */
  addresses: string[];
  /** Lowercase `aa:bb:cc:dd:ee:ff`, when known (Linux sysfs). */
  mac?: string;
  mtu: number;
}

/** The host's capturable interfaces, as libpcap sees them (no privileges needed on Linux). */
export function listDevices(): DeviceInfo[] {
  const lib = translated(pcap);
  const out = new BigUint64Array(1);
  const errbuf = new Uint8Array(PCAP_ERRBUF_SIZE);
  if (lib.pcap_findalldevs(out, errbuf) < 0) {
    throw new VnetError(`cannot list network interfaces: ${errbufText(errbuf)}`, {
      code: ErrorCode.System,
    });
  }
  const head = Deno.UnsafePointer.create(out[0]);
  const devices: DeviceInfo[] = [];
  try {
    const at = structs.pcap_if.offsets;
    for (let p = head; p !== null;) {
      const v = new Deno.UnsafePointerView(p);
      const name = readCString(v.getPointer(at.name));
      const description = readCString(v.getPointer(at.description)) || undefined;
      const flags = v.getUint32(at.flags);
      devices.push({
        name,
        description,
        up: (flags & PCAP_IF_UP) !== 0,
        running: (flags & PCAP_IF_RUNNING) !== 0,
        loopback: (flags & PCAP_IF_LOOPBACK) !== 0,
        addresses: readAddresses(v.getPointer(at.addresses)),
        mac: interfaceMac(name),
        mtu: interfaceMtu(name),
      });
      p = v.getPointer(at.next);
    }
  } finally {
    if (head !== null) lib.pcap_freealldevs(head);
  }
  return devices;
}

/**
 * The native library versions, best effort (the reason, if one cannot be loaded).
 * @public tests/unit/ffi_load_test.ts imports it from code it runs with `deno eval`.
 */
export function libraryVersions(): { libpcap: string; libnet: string } {
  const attempt = (f: () => string) => {
    try {
      return f() || "unknown";
    } catch (e) {
      return `unavailable: ${messageOf(e)}`;
    }
  };
  return { libpcap: attempt(pcapLibVersion), libnet: attempt(libnetVersion) };
}

// Address families: BSDs and macOS put sa_len in byte 0 and the family in byte 1.
const bsdSockaddr = Deno.build.os === "darwin" || Deno.build.os === "freebsd";
const AF_INET = 2;
const AF_INET6 = Deno.build.os === "linux" || Deno.build.os === "android"
  ? 10
  : Deno.build.os === "windows"
  ? 23
  : Deno.build.os === "freebsd"
  ? 28
  : 30; // darwin

/** The IP addresses in a list of `struct pcap_addr`. */
function readAddresses(first: Deno.PointerValue): string[] {
  const addresses: string[] = [];
  const at = structs.pcap_addr.offsets;
  for (let p = first; p !== null;) {
    const v = new Deno.UnsafePointerView(p);
    const sa = v.getPointer(at.addr);
    if (sa !== null) {
      const s = new Deno.UnsafePointerView(sa);
      const family = bsdSockaddr ? s.getUint8(1) : s.getUint16(0);
      if (family === AF_INET) {
        const ip = structs.sockaddr_in.offsets.sin_addr; // the same on BSD (sa_len, family)
        addresses.push([0, 1, 2, 3].map((i) => s.getUint8(ip + i)).join("."));
      } else if (family === AF_INET6) {
        const bytes = new Uint8Array(16);
        s.copyInto(bytes, structs.sockaddr_in6.offsets.sin6_addr);
        addresses.push(formatIpv6(bytes));
      }
    }
    p = v.getPointer(at.next);
  }
  return addresses;
}
