/**
 * Links through SSH, for sites where only SSH gets through: the dialling server runs
 * `ssh -W PEER:PORT [USER@]GATEWAY` (OpenSSH) and speaks the VNET protocol over its pipes.
 * No extra port is opened on the far side; host-key checking stays on (BatchMode fails
 * instead of asking), and ssh's own complaint is what the user sees when it fails.
 */
import { formatHostPort, type HostPort } from "../addr.ts";
import { VnetError } from "../errors.ts";
import { type Stream } from "./stream.ts";

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

function sshArgs(target: HostPort, options: SshOptions): string[] {
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
  // "--": a gateway can never be read as an ssh option (e.g. "-oProxyCommand=...").
  args.push("--", gw.user ? `${gw.user}@${gw.host}` : gw.host);
  return args;
}

/** A Stream over `ssh -W`; `failure()` tells what ssh said on stderr if it died. */
interface SshStream extends Stream {
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
      return summarizeSshError(text);
    },
  };
}

/** ssh's advice and banners around the one thing that went wrong: left out of our error. */
const SSH_NOISE = [
  /^Warning: Permanently added/,
  /^@+$/,
  /^IT IS POSSIBLE THAT SOMEONE IS DOING SOMETHING NASTY/,
  /^Someone could be eavesdropping on you/,
  /^It is also possible that a host key has just been changed/,
  /^Please contact your system administrator/,
  /^Add correct host key in/,
  /^remove with:/,
  /^ssh-keygen -f /,
];

/**
 * ssh's stderr as one line: each line trimmed of its trailing period, the "REMOTE HOST
 * IDENTIFICATION HAS CHANGED" banner reduced to its message and its advice left out, so the
 * reason ("Host key verification failed", "Permission denied (publickey)") stays readable.
 */
export function summarizeSshError(stderr: string): string {
  const lines: string[] = [];
  for (const raw of stderr.split(/\r?\n/)) {
    const line = raw.replace(/^@\s+(.*?)\s+@$/, "$1").trim();
    if (!line || SSH_NOISE.some((re) => re.test(line))) continue;
    const last = lines.length - 1;
    if (last >= 0 && / is$/.test(lines[last])) lines[last] += ` ${line}`; // "... key is" SHA256:...
    else lines.push(line);
  }
  return lines.map((l) => l.replace(/\.$/, "")).join("; ");
}
