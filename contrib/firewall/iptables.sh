#!/bin/sh
# The ipset sink's sets and the iptables/ip6tables rules that drop them (chain `mailpipe`: the
# mail ports from SET4/SET6, every port from SET4-all/SET6-all), as mailpipe itself puts them in
# place at start and checks them every reconciliation. Idempotent. At boot, prefer
# contrib/systemd/mailpipe-firewall.service (`mailpipe firewall`).
#
#   contrib/firewall/iptables.sh [PIPELINE-FILE]  (default: /etc/mailpipe/mailpipe.ron and conf.d)
set -eu
if [ $# -gt 0 ]; then exec mailpipe firewall -c "$1"; else exec mailpipe firewall; fi
