/**
 * Links through SSH, for sites where only SSH gets through: the dialling server runs
 * `ssh -W PEER:PORT [USER@]GATEWAY` (OpenSSH) and speaks the VNET protocol over its pipes.
 * No extra port is opened on the far side; host-key checking stays on (BatchMode fails
 * instead of asking), and ssh's own complaint is what the user sees when it fails.
 */
import { formatHostPort, type HostPort } from "./addr.ts";
import { VnetError } from "./errors.ts";
import { type Stream } from "./link.ts";

export interface SshOptions {
  /** `[USER@]HOST[:PORT]` of the SSH server that can reach the peer. */
  gateway: string;
  /** Private key file (ssh -i). */
  identity?: string;
  /** known_hosts file to check the gateway's host key against (default: ssh's own). */
  knownHosts?: string;
}

export function parseGateway(text: string): { user?: string; host: string; port?: number } {
  const m = /^(?:([^@\s]+)@)?(\[[0-9a-fA-F:.]+\]|[^:@\s[\]]+)(?::(\d{1,5}))?$/.exec(text);
  if (!m) throw new VnetError(`bad --ssh '${text}': expected [USER@]GATEWAY[:PORT]`);
  return { user: m[1], host: m[2].replace(/^\[|\]$/g, ""), port: m[3] ? Number(m[3]) : undefined };
}

export function sshArgs(target: HostPort, options: SshOptions): string[] {
  const gw = parseGateway(options.gateway);
  const args = [
    "-W",
    formatHostPort(target),
    "-o",
    "BatchMode=yes",
    "-o",
    "ExitOnForwardFailure=yes",
    "-o",
    "ServerAliveInterval=10",
    "-o",
    "StrictHostKeyChecking=yes",
  ];
  if (options.identity) args.push("-i", options.identity, "-o", "IdentitiesOnly=yes");
  if (options.knownHosts) args.push("-o", `UserKnownHostsFile=${options.knownHosts}`);
  if (gw.port) args.push("-p", String(gw.port));
  args.push(gw.user ? `${gw.user}@${gw.host}` : gw.host);
  return args;
}

/** A Stream over `ssh -W`; `failure()` tells what ssh said on stderr if it died. */
export interface SshStream extends Stream {
  failure(): Promise<string>;
}

export function sshStream(target: HostPort, options: SshOptions): SshStream {
  let child: Deno.ChildProcess;
  try {
    child = new Deno.Command("ssh", {
      args: sshArgs(target, options),
      stdin: "piped",
      stdout: "piped",
      stderr: "piped",
    }).spawn();
  } catch (e) {
    throw new VnetError(
      `cannot run ssh: ${
        (e as Error).message
      } (install OpenSSH's client: apt-get install openssh-client)`,
      { cause: e },
    );
  }
  const reader = child.stdout.getReader();
  let leftover: Uint8Array | null = null;
  const writer = child.stdin.getWriter();
  const stderr = new Response(child.stderr).text();
  let closed = false;
  return {
    async read(p: Uint8Array): Promise<number | null> {
      let chunk = leftover;
      leftover = null;
      if (!chunk) {
        const { value, done } = await reader.read();
        if (done || !value) return null;
        chunk = value;
      }
      if (chunk.length > p.length) {
        leftover = chunk.subarray(p.length);
        chunk = chunk.subarray(0, p.length);
      }
      p.set(chunk);
      return chunk.length;
    },
    async write(p: Uint8Array): Promise<number> {
      await writer.write(p.slice());
      return p.length;
    },
    close(): void {
      if (closed) return;
      closed = true;
      try {
        child.kill("SIGTERM");
      } catch { /* already gone */ }
      writer.close().catch(() => {});
    },
    async failure(): Promise<string> {
      const text = await Promise.race([
        stderr,
        new Promise<string>((r) => setTimeout(() => r(""), 2000)),
      ]);
      return text.trim().split("\n").filter((l) => !/^Warning: Permanently added/.test(l)).join(
        "; ",
      );
    },
  };
}
