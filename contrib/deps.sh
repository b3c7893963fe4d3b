#!/usr/bin/env bash
# The Debian/Ubuntu packages mailpipe needs, by purpose:
#
#   contrib/deps.sh build   to build it: a C compiler, libipset and libclang (the ipset crate's
#                           bindings are generated at build time), pkg-config
#   contrib/deps.sh test    to build it and run its tests: the real programs the tests drive
#                           (rsyslog, ipset, iptables, nftables, iproute2, python3,
#                           systemd-analyze, promtool; procps for the unit's /bin/kill;
#                           fail2ban, whose stock configuration `import` is tested on;
#                           redis-server, the fleet's stream store; tmux, the terminal `top` is
#                           tested in; and cargo-deb, from crates.io, with dpkg-dev (its
#                           dpkg-shlibdeps), which the package test builds the .deb with)
#   contrib/deps.sh run     to run the binary on a mail server: libipset, and the ipset and
#                           iptables programs for the firewall rules (nftables users have nft),
#                           procps for /bin/kill (the systemd unit's ExecReload)
#
# Several purposes may be given. Installs only what is missing; needs root (or sudo).
# Nothing it installs is started: a policy-rc.d refuses every service start during the
# installation, and the test-only Prometheus server (it comes with promtool) stays disabled.
set -euo pipefail

build=(gcc libc6-dev pkg-config libipset-dev libclang-dev)
test=("${build[@]}" python3 rsyslog bsdutils iproute2 ipset iptables nftables systemd procps prometheus fail2ban redis-server tmux dpkg-dev)
run=(libipset13 ipset iptables procps)
# Packages the tests need only for a program: their service must never run on that account.
declare -A quiet=([prometheus]=prometheus.service [fail2ban]=fail2ban.service [redis-server]=redis-server.service)

[ $# -gt 0 ] || { echo "usage: $0 build|test|run ..." >&2; exit 2; }
want=()
for purpose in "$@"; do
    case "$purpose" in
        build) want+=("${build[@]}") ;;
        test) want+=("${test[@]}") ;;
        run) want+=("${run[@]}") ;;
        *) echo "$0: unknown purpose '$purpose' (build, test or run)" >&2; exit 2 ;;
    esac
done

need=()
for pkg in "${want[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed" || need+=("$pkg")
done
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO=sudo
# The apt part, when something is missing.
install_missing() {
    [ ${#need[@]} -gt 0 ] || return 0
    policy=/usr/sbin/policy-rc.d
    if [ ! -e "$policy" ]; then
        # 101: "action not allowed"; invoke-rc.d and deb-systemd-invoke start nothing.
        printf '#!/bin/sh\nexit 101\n' | $SUDO tee "$policy" >/dev/null
        $SUDO chmod 755 "$policy"
        trap '$SUDO rm -f "$policy"' EXIT
    fi
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}"
    for pkg in "${need[@]}"; do
        unit=${quiet[$pkg]:-}
        # systemctl disable works offline too (no systemd running, a chroot, a container);
        # deb-systemd-helper would refuse: it runs only from a dpkg maintainer script.
        if [ -n "$unit" ] && command -v systemctl >/dev/null; then
            $SUDO systemctl disable --quiet "$unit"
        fi
    done
}
install_missing

# The package test's tool is a cargo one, not a Debian package (it needs the C linker above).
for purpose in "$@"; do
    if [ "$purpose" = test ] && ! command -v cargo-deb >/dev/null; then
        cargo install --locked --quiet cargo-deb
    fi
done
