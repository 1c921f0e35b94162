/** The process's open file descriptors, as /proc/self/fd shows them (Linux). */

/** The fds whose link target (`socket:[123]`, `anon_inode:[eventpoll]`, a path) `match` takes. */
export function openFds(match: (target: string) => boolean): number[] {
  const fds: number[] = [];
  for (const entry of Deno.readDirSync("/proc/self/fd")) {
    try {
      if (match(Deno.readLinkSync(`/proc/self/fd/${entry.name}`))) fds.push(Number(entry.name));
    } catch {
      // closed while we looked
    }
  }
  return fds;
}
