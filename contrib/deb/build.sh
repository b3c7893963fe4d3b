#!/usr/bin/env bash
# Builds the Debian package into target/debian/: a stripped binary, man pages and shell
# completions generated from the command-line definitions, /etc/mailpipe/mailpipe.ron as a
# conffile, the systemd units, the actions. Needs cargo-deb (cargo install cargo-deb).
#
#   contrib/deb/build.sh                      with libipset (Depends: libipset13, ...)
#   contrib/deb/build.sh --no-default-features  nftables only: no libipset at all
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
cd "$ROOT"
cargo build --release --locked "$@"
A=target/deb-assets
rm -rf "$A"
target/release/mailpipe docs "$A"
gzip -9n "$A"/man1/*.1
mkdir -p "$A/systemd"
for u in mailpipe.service mailpipe-firewall.service; do
    sed -e 's#/usr/local/sbin/mailpipe#/usr/sbin/mailpipe#g' \
        -e 's#file:///usr/local/share/doc/mailpipe/README.md#file:///usr/share/doc/mailpipe/README.md man:mailpipe(1)#' \
        "contrib/systemd/$u" > "$A/systemd/$u"
done
variant=()
if [[ " $* " == *" --no-default-features "* ]]; then
    variant=(--variant nftables)
fi
cargo deb --no-build --strip "${variant[@]}" "$@"
