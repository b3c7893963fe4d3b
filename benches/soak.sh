#!/usr/bin/env bash
# Memory over time: feeds `mailpipe run --dry-run` at a constant rate and prints its RSS every
# 10 seconds. RSS must level off once the windows hold `findtime` worth of attackers.
#
#   benches/soak.sh [SECONDS] [RATE]      (defaults: 600 s at 10000 lines/s)
set -euo pipefail
SECS=${1:-600}
RATE=${2:-10000}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
W=${W:-/tmp/mailpipe-bench}
mkdir -p "$W"
(cd "$ROOT" && cargo build --release -q)
log=$W/soak-$RATE-$SECS.log
# The log's own clock runs at the feed rate, so its windows expire as in real time.
[ -s "$log" ] || python3 "$ROOT/../shared/bench/gen_maillog.py" --seed 5 --rate "$RATE" --lines $((SECS * RATE)) --out "$log" 2>/dev/null
python3 - "$log" "$RATE" <<'PY' | TZ=UTC "$ROOT/target/release/mailpipe" run --dry-run > /dev/null &
import sys, time
path, rate = sys.argv[1], int(sys.argv[2])
out = sys.stdout.buffer
start = time.monotonic()
with open(path, "rb") as f:
    for i, line in enumerate(f):
        if i % 1000 == 0:
            ahead = i / rate - (time.monotonic() - start)
            if ahead > 0:
                time.sleep(ahead)
        out.write(line)
PY
sleep 1
pid=$(pgrep -n -f "mailpipe run --dry-run")
echo "seconds rss_kib"
for ((t = 10; t <= SECS; t += 10)); do
    sleep 10
    [ -d /proc/$pid ] || break
    echo "$t $(awk '/VmRSS/ {print $2}' /proc/$pid/status)"
done
wait
