#!/usr/bin/env bash
# The one entry point: bash scripts/run.sh demo|test|bench [bench flags]
#
# On a fresh Debian 12 machine with Node/npm, as root, it installs what is missing (Deno pinned
# from npm, the apt packages the tests and the program need), caches Deno dependencies (the test
# namespaces have no route to any registry), removes leftovers of dead test runs, then runs.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

DENO_VERSION=2.9.6
APT_PACKAGES=(libpcap0.8 libnet1 iproute2 iputils-ping iperf3 dnsmasq-base udhcpc nftables
  openssh-server openssh-client ethtool tcpdump python3 util-linux chromium prometheus
  qemu-system-x86 zsh
  # tests/e2e/nat_test.ts makes a NAT forget its UDP mappings
  conntrack
  # the encrypted UDP transport's AEADs, X25519 and HMAC (ffi/sodium.ts)
  libsodium23
  # tests/unit/layout_test.ts compiles the FFI struct layouts against the C headers, for x86_64
  # and aarch64
  gcc libc6-dev libpcap-dev gcc-aarch64-linux-gnu libc6-dev-arm64-cross)

say() { echo "[run.sh] $*" >&2; }

usage() {
  echo "usage: bash scripts/run.sh demo|test|bench" >&2
  exit 2
}

need_root() {
  if [[ $(id -u) -ne 0 ]]; then
    say "must run as root (network namespaces, raw sockets, apt-get)"
    exit 1
  fi
}

ensure_apt() {
  local missing=() p
  for p in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" ||
      missing+=("$p")
  done
  [[ ${#missing[@]} -eq 0 ]] && return
  say "installing: ${missing[*]}"
  local log
  log=$(mktemp)
  if ! { DEBIAN_FRONTEND=noninteractive apt-get update -qq &&
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      "${missing[@]}"; } >"$log" 2>&1; then
    cat "$log" >&2
    say "apt-get install failed"
    exit 1
  fi
  rm -f "$log"
}

deno_ok() { command -v deno >/dev/null && [[ "$(deno --version 2>/dev/null | head -1)" == "deno $DENO_VERSION "* ]]; }

ensure_deno() {
  deno_ok && return
  say "installing deno $DENO_VERSION from npm"
  npm install -g --silent --no-fund --no-audit "deno@$DENO_VERSION" >&2
  hash -r
  if ! deno_ok; then
    say "deno $DENO_VERSION not on PATH after npm install (found: $(deno --version 2>&1 | head -1))"
    exit 1
  fi
}

cache_deps() {
  deno install --quiet >&2 || say "warning: 'deno install' failed"
  local files=()
  [[ -f main.ts ]] && files+=(main.ts)
  [[ -f scripts/demo.ts ]] && files+=(scripts/demo.ts)
  # The layer check's dependency-cruiser and TypeScript: `deno task check` must run offline.
  [[ -f scripts/check_layers.ts ]] && files+=(scripts/check_layers.ts)
  while IFS= read -r f; do files+=("$f"); done < <(find tests lab -name '*.ts' 2>/dev/null | sort)
  [[ ${#files[@]} -gt 0 ]] && deno cache --quiet "${files[@]}" >&2
}

prepare() {
  need_root
  ensure_apt
  ensure_deno
  cache_deps
  bash lab/cleanup.sh >&2 || true
  # The QEMU guest of the e2e tests, built once from Debian packages (lab/qemu.ts).
  deno run -A lab/qemu.ts >&2
}

run_tests() {
  local log rc=0
  log=$(mktemp)
  # The suite bounds every wait itself; this is the last line of defence against a hang.
  NO_COLOR=1 timeout --kill-after=30 2400 deno test -A tests/ 2>&1 | tee "$log" || rc=$?
  bash lab/cleanup.sh >/dev/null 2>&1 || true
  # deno test ends with e.g. "ok | 5 passed (12 steps) | 0 failed (3s)" or
  # "FAILED | 4 passed (10 steps) | 1 failed (2 steps) | 1 ignored (3s)".
  local summary passed failed ignored
  summary=$(sed 's/\x1b\[[0-9;]*m//g' "$log" | grep -E '^(ok|FAILED) \| [0-9]+ passed' | tail -1 || true)
  rm -f "$log"
  if [[ -z "$summary" ]]; then
    say "deno test printed no summary (exit $rc)"
    echo "0 passed, 1 failed"
    exit 1
  fi
  passed=$(grep -oE '[0-9]+ passed' <<<"$summary" | head -1 | cut -d' ' -f1)
  failed=$(grep -oE '[0-9]+ failed' <<<"$summary" | head -1 | cut -d' ' -f1)
  ignored=$(grep -oE '[0-9]+ ignored' <<<"$summary" | head -1 | cut -d' ' -f1 || true)
  if [[ -n "$ignored" && "$ignored" != 0 ]]; then
    echo "$passed passed, $failed failed, $ignored skipped"
  else
    echo "$passed passed, $failed failed"
  fi
  [[ $rc -eq 0 && $failed -eq 0 && $passed -gt 0 ]] || exit 1
}

case "${1:-}" in
  demo)
    prepare
    exec deno task demo
    ;;
  test)
    prepare
    run_tests
    ;;
  bench)
    APT_PACKAGES+=(openvpn)
    prepare
    shift
    exec deno task bench "$@"
    ;;
  *) usage ;;
esac
