#!/usr/bin/env bash
# Installs the system packages mailpipe's build and tests need on Debian/Ubuntu.
# Idempotent: installs only what is missing. Needs root (or sudo).
set -euo pipefail
need=()
command -v python3 >/dev/null || need+=(python3)   # tests run the shared log generator
command -v cc >/dev/null || need+=(gcc)             # build scripts of some crates
command -v rsyslogd >/dev/null || [ -x /usr/sbin/rsyslogd ] || need+=(rsyslog)   # the real syslog client in tests
command -v logger >/dev/null || need+=(bsdutils)   # injects lines into rsyslog
if ((${#need[@]})); then
    SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO=sudo
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}"
fi
