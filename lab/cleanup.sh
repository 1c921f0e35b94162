#!/usr/bin/env bash
# Removes network namespaces and temp dirs left behind by dead VNET test runs.
# Names are vnt-<pid>-<n>-<role> (see lab/netns.ts); only those whose <pid> is gone are
# removed, so a concurrent run is left alone. `--all` removes every one of ours.
set -euo pipefail
all=false
[[ "${1:-}" == "--all" ]] && all=true

dead() { # is the owner pid in a vnt-<pid>-... name gone?
  local pid
  pid=$(sed -E 's/^vnt-([0-9]+)-.*/\1/' <<<"$1")
  $all || [[ ! -d /proc/$pid ]]
}

for ns in $(ip netns list 2>/dev/null | awk '{print $1}' | grep -E '^vnt-[0-9]+-[0-9]+-' || true); do
  dead "$ns" || continue
  for sig in TERM KILL; do
    pids=$(ip netns pids "$ns" 2>/dev/null || true)
    [[ -z "$pids" ]] && break
    # shellcheck disable=SC2086
    kill -s "$sig" $pids 2>/dev/null || true
    sleep 0.3
  done
  ip netns del "$ns" 2>/dev/null || true
  echo "removed namespace $ns"
done

tmp=${TMPDIR:-/tmp}
for d in "$tmp"/vnt-*; do
  [[ -e "$d" ]] || continue
  dead "$(basename "$d")" || continue
  rm -rf "$d"
  echo "removed $d"
done
