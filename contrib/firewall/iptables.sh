#!/bin/sh
# Drop traffic to the mail ports from addresses mailpipe has banned, and traffic to every port
# from recidive bans (iptables and ip6tables).
# Idempotent: run it at boot, before or after mailpipe; it creates the sets if they are missing
# with the types mailpipe's ipset sink expects.
#
#   contrib/firewall/iptables.sh [SET4] [SET6]          (defaults: mailpipe4 mailpipe6)
set -eu
SET4=${1:-mailpipe4}
SET6=${2:-mailpipe6}
PORTS=25,465,587,110,143,993,995,4190

# SET-all: recidive bans, dropped on every port.
for suffix in "" -all; do
    ipset create -exist "$SET4$suffix" hash:ip family inet timeout 3600 maxelem 1048576
    ipset create -exist "$SET6$suffix" hash:net family inet6 timeout 3600 maxelem 1048576
done

for ipt in iptables ip6tables; do
    if [ "$ipt" = iptables ]; then set=$SET4; else set=$SET6; fi
    "$ipt" -N mailpipe 2>/dev/null || "$ipt" -F mailpipe
    "$ipt" -A mailpipe -p tcp -m multiport --dports "$PORTS" -m set --match-set "$set" src -j DROP
    "$ipt" -A mailpipe -m set --match-set "$set-all" src -j DROP
    "$ipt" -C INPUT -j mailpipe 2>/dev/null || "$ipt" -I INPUT -j mailpipe
done
