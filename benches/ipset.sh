#!/usr/bin/env bash
# Kernel-side figures of the ipset sink, inside a throwaway network namespace (root needed):
# (postfix-sasl bans go to the sets of its port scope, mpb4-25-465-587)
# bans applied per second, and ban latency from a line's arrival to its kernel entry.
#
#   benches/ipset.sh [ATTACKERS]        (default 100000; each sends 5 SASL failures)
set -euo pipefail
N=${1:-100000}
(( N <= 131072 )) || { echo "at most 131072 attackers (198.18.0.0/15)"; exit 2; }
ROOT=$(cd "$(dirname "$0")/.." && pwd)
(cd "$ROOT" && cargo build --release -q)
NS=mpbench$$
ip netns add "$NS"
trap 'ip netns del "$NS"' EXIT
W=$(mktemp -d)
cat > "$W/p.ron" <<RON
Pipeline(include: [(file: "$ROOT/pipelines/mail.ron")], inputs: [Stdin], sink: Ipset(set4: "mpb4", set6: "mpb6"))
RON
python3 - "$N" > "$W/lines" <<'PY'
import sys, time
n = int(sys.argv[1])
t = time.strftime("%b %e %H:%M:%S", time.gmtime())
for i in range(n):
    ip = f"198.{18 + i // 65536}.{i // 256 % 256}.{i % 256}"   # RFC 2544 range, inside the namespace only
    for _ in range(5):
        print(f"{t} mx1 postfix/smtpd[7]: warning: unknown[{ip}]: SASL LOGIN authentication failed: x")
PY
start=$(date +%s%N)
TZ=UTC ip netns exec "$NS" "$ROOT/target/release/mailpipe" run -c "$W/p.ron" < "$W/lines" 2> "$W/err"
end=$(date +%s%N)
entries=$(ip netns exec "$NS" ipset list -t mpb4-25-465-587 | awk '/Number of entries/ {print $4}')
secs=$(awk -v a="$start" -v b="$end" 'BEGIN{printf "%.3f", (b-a)/1e9}')
echo "flood: attackers $N, lines $((N * 5)), kernel entries $entries, wall $secs s, $(awk -v n="$entries" -v s="$secs" 'BEGIN{printf "%.0f", n/s}') bans/s end to end"
grep 'sink ipset:' "$W/err"
# Paced: 1,000 attackers over about 5 s, so each ban meets an idle firewall (latency without queueing).
ip netns exec "$NS" ipset flush mpb4-25-465-587
head -5000 "$W/lines" | sed 's/198\.18\./198.19./' | python3 -c '
import sys, time
for i, line in enumerate(sys.stdin):
    sys.stdout.write(line); sys.stdout.flush()
    if i % 5 == 4: time.sleep(0.005)
' | TZ=UTC ip netns exec "$NS" "$ROOT/target/release/mailpipe" run -c "$W/p.ron" 2> "$W/err2"
echo "paced: $(grep 'sink ipset:' "$W/err2")"
# Reconciliation at N bans: the daemon stays up (stdin held open) and checks the kernel every 2 s;
# the set is flushed behind its back, and the next reconciliation adds every ban again.
cat > "$W/r.ron" <<RON
Pipeline(include: [(file: "$ROOT/pipelines/mail.ron")], inputs: [Stdin], sink: Ipset(set4: "mpr4", set6: "mpr6", reconcile: "2s"))
RON
python3 - "$N" > "$W/lines" <<'PY'
import sys, time
n = int(sys.argv[1])
t = time.strftime("%b %e %H:%M:%S", time.gmtime())
for i in range(n):
    ip = f"198.{18 + i // 65536}.{i // 256 % 256}.{i % 256}"
    for _ in range(5):
        print(f"{t} mx1 postfix/smtpd[7]: warning: unknown[{ip}]: SASL LOGIN authentication failed: x")
PY
( cat "$W/lines"; sleep 14 ) | TZ=UTC ip netns exec "$NS" "$ROOT/target/release/mailpipe" run -c "$W/r.ron" 2> "$W/err3" &
for _ in $(seq 60); do
    n=$(ip netns exec "$NS" ipset list -t mpr4-25-465-587 2>/dev/null | awk '/Number of entries/ {print $4}' || true)
    [ "${n:-0}" -ge "$N" ] && break
    sleep 0.2
done
sleep 3
ip netns exec "$NS" ipset flush mpr4-25-465-587
sleep 4
wait
echo "reconcile after a flush: $(grep 'kernel had lost' "$W/err3")"
echo "reconcile, nothing lost: $(grep -o '"reconcile_last_ms":[0-9.]*' "$W/err3") (the last check, $N bans present)"
rm -rf "$W"
