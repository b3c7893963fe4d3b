#!/usr/bin/env bash
# Installs the system packages mailpipe's build and tests need on Debian/Ubuntu.
# Idempotent: installs only what is missing. Needs root (or sudo).
set -euo pipefail
need=()
command -v python3 >/dev/null || need+=(python3)   # tests run the shared log generator
command -v cc >/dev/null || need+=(gcc)             # build scripts of some crates
command -v rsyslogd >/dev/null || [ -x /usr/sbin/rsyslogd ] || need+=(rsyslog)   # the real syslog client in tests
command -v logger >/dev/null || need+=(bsdutils)   # injects lines into rsyslog
# The ipset sink builds against libipset through bindgen, which needs libclang.
for pkg in libipset-dev libclang-dev pkg-config; do
    dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
done
# The firewall tests: sets, rules and network namespaces.
command -v ipset >/dev/null || [ -x /usr/sbin/ipset ] || need+=(ipset)
command -v iptables >/dev/null || [ -x /usr/sbin/iptables ] || need+=(iptables)
command -v ip >/dev/null || [ -x /usr/sbin/ip ] || need+=(iproute2)
command -v nft >/dev/null || [ -x /usr/sbin/nft ] || need+=(nftables)
# The service files' checks: systemd-analyze (systemd) and promtool (prometheus).
command -v systemd-analyze >/dev/null || need+=(systemd)
command -v promtool >/dev/null || need+=(prometheus)
if ((${#need[@]})); then
    SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO=sudo
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}"
fi
