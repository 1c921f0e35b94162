/** `ADDR:PORT` endpoints as users write them: `10.0.0.1:7000`, `vnet.example.org:443`, `[::1]:7000`. */
import { VnetError } from "./errors.ts";

export interface HostPort {
  hostname: string;
  port: number;
}

/** Parses `ADDR:PORT`; `what` names the flag in the error message. */
export function parseHostPort(text: string, what: string): HostPort {
  const m = /^\[([0-9a-fA-F:.]+)\]:(\d+)$/.exec(text) ?? /^([^:\s[\]]+):(\d+)$/.exec(text);
  const port = m ? Number(m[2]) : NaN;
  if (!m || !Number.isInteger(port) || port < 1 || port > 65535) {
    throw new VnetError(
      `bad address '${text}' for ${what}: expected ADDR:PORT, e.g. 192.0.2.10:7000 or [2001:db8::1]:7000`,
    );
  }
  return { hostname: m[1], port };
}

export function formatHostPort(a: HostPort): string {
  return a.hostname.includes(":") ? `[${a.hostname}]:${a.port}` : `${a.hostname}:${a.port}`;
}

/** RFC 5952 text for a 16-byte IPv6 address. */
export function formatIpv6(bytes: Uint8Array): string {
  const groups: number[] = [];
  for (let i = 0; i < 16; i += 2) groups.push((bytes[i] << 8) | bytes[i + 1]);
  let bestStart = -1, bestLen = 0;
  for (let i = 0; i < 8;) {
    if (groups[i] !== 0) {
      i++;
      continue;
    }
    let j = i;
    while (j < 8 && groups[j] === 0) j++;
    if (j - i > bestLen && j - i > 1) {
      bestStart = i;
      bestLen = j - i;
    }
    i = j;
  }
  const hex = groups.map((g) => g.toString(16));
  if (bestStart < 0) return hex.join(":");
  return `${hex.slice(0, bestStart).join(":")}::${hex.slice(bestStart + bestLen).join(":")}`;
}
