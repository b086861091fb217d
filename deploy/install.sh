#!/usr/bin/env bash
# Installs CoreMQ for systemd: binaries, default configuration, an example
# users file, units, logrotate entry and documentation, and (on a real
# install) the `coremq` system user. Build first: `cargo build --release`.
#
#   sudo deploy/install.sh                  # install into /usr/local and /etc
#   DESTDIR=/tmp/stage deploy/install.sh    # stage the files only (packaging, tests)
#
# Environment:
#   DESTDIR         staging root. When set, no user is created, nothing is
#                   chowned and systemd is not told (no root needed).
#   PREFIX          where bin/ and share/ go (default /usr/local); the units'
#                   ExecStart follows it.
#   COREMQ_BIN      broker binary to install (default target/release/coremq)
#   COREMQ_CLI_BIN  CLI binary to install (default target/release/coremq-cli)
#
# /etc/coremq/tls/ is created (0750 root:coremq) for the TLS certificate
# and key; they are the operator's, never written here.
# An existing /etc/coremq/coremq.conf is never overwritten: the new default
# goes next to it as coremq.conf.new. The users file (access control,
# docs/security.md) is the operator's: only the example,
# /etc/coremq/users.example, is (re)installed; /etc/coremq/users is never
# written. Re-running the script is the upgrade (then `systemctl restart
# coremq`).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(dirname "$here")
DESTDIR=${DESTDIR:-}
PREFIX=${PREFIX:-/usr/local}
bin=${COREMQ_BIN:-$repo/target/release/coremq}
cli=${COREMQ_CLI_BIN:-$repo/target/release/coremq-cli}
user=coremq
log_dir=/var/log/coremq

die() { echo "install.sh: $*" >&2; exit 1; }

[ -x "$bin" ] || die "no broker binary at $bin: run 'cargo build --release' first, or set COREMQ_BIN"
[ -x "$cli" ] || die "no CLI binary at $cli: run 'cargo build --release' first, or set COREMQ_CLI_BIN"
case "$PREFIX" in /*) ;; *) die "PREFIX must be an absolute path, not '$PREFIX'" ;; esac
if [ -z "$DESTDIR" ] && [ "$(id -u)" -ne 0 ]; then
  die "a real install needs root (or set DESTDIR to stage the files)"
fi

bindir=$DESTDIR$PREFIX/bin
docdir=$DESTDIR$PREFIX/share/doc/coremq
confdir=$DESTDIR/etc/coremq
unitdir=$DESTDIR/etc/systemd/system
rotdir=$DESTDIR/etc/logrotate.d

install -d -m 0755 "$bindir" "$docdir" "$confdir" "$unitdir" "$rotdir"
install -m 0755 "$bin" "$bindir/coremq"
install -m 0755 "$cli" "$bindir/coremq-cli"
install -m 0644 "$repo/docs/operations.md" "$repo/docs/protocol.md" \
  "$repo/docs/security.md" "$docdir/"

# The default configuration, from the binary being installed (so it matches
# its version), logging to the service's log directory instead of stdout.
conf=$(mktemp)
trap 'rm -f "$conf"' EXIT
"$bin" --print-config >"$conf"
# Both sections' log_file: the same file is one stream, so the WebSocket and
# HTTP listener's lines (HTTP authentication failures among them) land in
# the log too, not in the journal.
sed -i "s|^log_file = stdout\$|log_file = $log_dir/coremq.log|" "$conf"
[ "$(grep -c "^log_file = $log_dir/coremq.log\$" "$conf")" = 2 ] ||
  die "could not set both log_file lines in the default configuration"
target=$confdir/coremq.conf
if [ -e "$target" ]; then
  target=$confdir/coremq.conf.new
  echo "install.sh: keeping $confdir/coremq.conf; the new default is $target"
fi
# The file may hold cluster_secret: readable by root and the service group only.
install -m 0640 "$conf" "$target"
# The example users file: its hashes are of published example passwords, so
# it is installed under a name the broker is never pointed at by default.
# Same mode as the real one should have: a users file holds password hashes.
users_example=$confdir/users.example
install -m 0640 "$here/users.example" "$users_example"
# Where the TLS certificate, key and client CA go (tls_cert_file,
# tls_key_file, tls_client_ca_file; docs/security.md#tls): readable by the
# service group only, since the key is in it. Never filled in here.
tlsdir=$confdir/tls
install -d -m 0750 "$tlsdir"

# Units and logrotate, with paths following PREFIX.
for f in coremq.service coremq@.service; do
  sed "s|/usr/local/|$PREFIX/|g" "$here/$f" >"$unitdir/$f"
  chmod 0644 "$unitdir/$f"
done
install -m 0644 "$here/logrotate.conf" "$rotdir/coremq"

if [ -n "$DESTDIR" ]; then
  echo "install.sh: staged into $DESTDIR (no user created, systemd not told)"
  exit 0
fi

if ! getent passwd "$user" >/dev/null; then
  useradd --system --user-group --no-create-home --home-dir /nonexistent \
    --shell /usr/sbin/nologin --comment "CoreMQ broker" "$user"
  echo "install.sh: created system user $user"
fi
chgrp "$user" "$target" "$users_example" "$tlsdir"
if [ -d /run/systemd/system ]; then
  systemctl daemon-reload
fi
cat <<MSG
install.sh: installed CoreMQ into $PREFIX, configuration in /etc/coremq.
Next: review /etc/coremq/coremq.conf, then
  systemctl enable --now coremq
  coremq-cli status
Access control is off until users_file is set: see /etc/coremq/users.example
and $PREFIX/share/doc/coremq/security.md.
MSG
