/**
 * Where the errors of ffi/ (which knows C libraries, not VNET) become the VnetErrors users see:
 * one line, with the hint that fits, chosen by the library's code and never by its text.
 */
import { ErrorCode, VnetError } from "../errors.ts";
import { LibnetError, LibraryError, PcapError } from "../../ffi/errors.ts";
import {
  PCAP_ERROR_IFACE_NOT_UP,
  PCAP_ERROR_NO_SUCH_DEVICE,
  PCAP_ERROR_PERM_DENIED,
  PCAP_ERROR_PROMISC_PERM_DENIED,
} from "../../ffi/libpcap.ts";

const PRIVILEGES = "needs root or CAP_NET_RAW+CAP_NET_ADMIN " +
  "(e.g. sudo setcap cap_net_raw,cap_net_admin+ep /path/to/vnet, the binary from " +
  "'deno task compile')";

export function noSuchInterface(device: string, cause?: unknown): VnetError {
  return new VnetError(`no such network interface '${device}' (see \`vnet client devices\`)`, {
    code: ErrorCode.NotFound,
    cause,
  });
}

/** The VnetError for an error of ffi/; any other value is returned as it is. */
export function userError(e: unknown): unknown {
  const system = (message: string) => new VnetError(message, { code: ErrorCode.System, cause: e });
  if (e instanceof LibraryError) return system(e.message);
  if (e instanceof PcapError) {
    switch (e.code) {
      case PCAP_ERROR_NO_SUCH_DEVICE:
        return noSuchInterface(e.device, e);
      case PCAP_ERROR_PERM_DENIED:
      case PCAP_ERROR_PROMISC_PERM_DENIED:
        return system(`${e.purpose} '${e.device}' ${PRIVILEGES}: ${e.detail}`);
      case PCAP_ERROR_IFACE_NOT_UP:
        return system(
          `network interface '${e.device}' is down (bring it up: ip link set ${e.device} up)`,
        );
      default:
        return system(e.message);
    }
  }
  if (e instanceof LibnetError) {
    switch (e.code) {
      case "no_such_device":
        return noSuchInterface(e.device, e);
      case "permission_denied":
        return system(`injecting on '${e.device}' ${PRIVILEGES}: ${e.detail}`);
      default:
        return system(e.message);
    }
  }
  return e;
}

/** Runs `f`; an error of ffi/ comes out as the VnetError users see. */
export function translated<T>(f: () => T): T {
  try {
    return f();
  } catch (e) {
    throw userError(e);
  }
}
