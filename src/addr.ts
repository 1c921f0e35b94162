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
