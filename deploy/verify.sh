#!/usr/bin/env bash
# Checks the systemd units with `systemd-analyze verify`, as installed by
# install.sh: stages an install into a temporary DESTDIR and verifies the
# units there with --root, so ExecStart points at a binary that exists without
# touching this machine's /usr/local or /etc. Any warning fails the check
# (verify exits 0 on unknown keys and bad values; it only prints them).
#
#   deploy/verify.sh        # uses target/debug binaries (builds them if missing)
#
# Needs systemd-analyze (Debian: apt-get install systemd).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(dirname "$here")
command -v systemd-analyze >/dev/null || { echo "verify.sh: systemd-analyze not found (apt-get install systemd)" >&2; exit 1; }

export COREMQ_BIN=${COREMQ_BIN:-$repo/target/debug/coremq}
export COREMQ_CLI_BIN=${COREMQ_CLI_BIN:-$repo/target/debug/coremq-cli}
if [ ! -x "$COREMQ_BIN" ] || [ ! -x "$COREMQ_CLI_BIN" ]; then
  (cd "$repo" && cargo build --quiet -p coremq -p coremq-cli)
fi

root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
DESTDIR=$root "$here/install.sh" >/dev/null
# What verify needs of a system besides our files: the stock units our
# dependencies name (network-online.target, sysinit.target, ...) and
# ExecReload's /bin/kill.
mkdir -p "$root/usr/lib/systemd" "$root/bin"
cp -a /usr/lib/systemd/system "$root/usr/lib/systemd/"
cp "$(type -P kill)" "$root/bin/kill"

out=$(systemd-analyze verify --root="$root" \
  /etc/systemd/system/coremq.service /etc/systemd/system/coremq@ci.service 2>&1) || {
  echo "$out" >&2
  echo "verify.sh: systemd-analyze verify failed" >&2
  exit 1
}
if [ -n "$out" ]; then
  echo "$out" >&2
  echo "verify.sh: systemd-analyze verify reported problems" >&2
  exit 1
fi
echo "verify.sh: coremq.service and coremq@.service verify cleanly"
