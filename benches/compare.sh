#!/usr/bin/env bash
# Side-by-side throughput and memory, on logs made by the shared generator.
#
#   benches/compare.sh [LINES] [WORKDIR]        (defaults: 10000000 lines, /tmp/mailpipe-bench)
#
# Prints one Markdown table: lines/s (median of 3 runs) and peak RSS (/usr/bin/time) for
#   - mailpipe test                        (replay, built-in mail.ron)
#   - cat | mailpipe run --dry-run         (the daemon's stdin path)
#   - grep -c -F -f LITERALS               (one pass over the bytes with the pipeline's literals)
#   - mailpipe test on attack lines only   (worst case: every line parsed, matched and counted)
#   - mailpipe test on a botnet log        (1,000,000 attackers below maxretry: memory)
#   - mailpipe explain -c all.ron x        (start-up with every shipped jail compiled; check also
#                                          builds each rule alone to warn about slow ones)
#   - the same with every jail on (-c all.ron): the log, grep with all.ron's literals, attack
#     lines, and the log as `journalctl -o json` writes it
#   - fail2ban-regex, stock postfix[mode=auth] and dovecot filters, on a 200,000-line slice,
#     when fail2ban is installed (apt-get install fail2ban)
# and checks that mailpipe's bans equal the generator's ground truth.
set -euo pipefail
LINES=${1:-10000000}
W=${2:-/tmp/mailpipe-bench}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
GEN=$ROOT/../shared/bench/gen_maillog.py
BIN=$ROOT/target/release/mailpipe
mkdir -p "$W"
(cd "$ROOT" && cargo build --release -q)
export TZ=UTC

log=$W/mail-$LINES.log
[ -s "$log" ] || python3 "$GEN" --seed 1 --lines "$LINES" --out "$log" --truth "$log.truth" 2>/dev/null
attack=$W/attack-$LINES.log
[ -s "$attack" ] || grep -E 'SASL [A-Za-z0-9-]+ authentication failed|auth failed|unknown user|Password mismatch|pam_authenticate' "$log" > "$attack"
botnet=$W/botnet-5000.log
# 3M lines in 10 minutes of log time: all 1,000,000 attackers inside one 15-minute findtime.
[ -s "$botnet" ] || python3 "$GEN" --seed 2 --lines 3000000 --rate 5000 --botnet --attackers 1000000 --out "$botnet" --truth "$botnet.truth" 2>/dev/null
"$BIN" check --literals > "$W/literals"
cat "$log" "$attack" "$botnet" > /dev/null   # page cache

# measure NAME INPUT CMD: median seconds of 3 runs and the largest peak RSS, as a table row
rows=()
measure() {
    local name=$1 input=$2; shift 2
    local n; n=$(wc -l < "$input")
    local ts=() rss=0
    for _ in 1 2 3; do
        local t0 t1 k
        t0=$(date +%s%N)
        # To a file, not /dev/null: GNU grep stops at the first match when output is discarded.
        /usr/bin/time -f '%M' -o "$W/.rss" bash -c "$*" > "$W/.out"
        t1=$(date +%s%N)
        ts+=("$(( (t1 - t0) / 1000 ))")
        k=$(tail -1 "$W/.rss"); (( k > rss )) && rss=$k
    done
    local med; med=$(printf '%s\n' "${ts[@]}" | sort -n | sed -n 2p)
    local lps=$(( n * 1000000 / (med > 0 ? med : 1) ))
    rows+=("| $name | $n | $(awk -v u="$med" 'BEGIN{printf "%.3f", u/1e6}') | $lps | $(( rss / 1024 )) |")
}

measure "mailpipe test" "$log" "$BIN test $log"
measure "cat \| mailpipe run --dry-run" "$log" "cat $log | $BIN run --dry-run"
measure "grep -c -F (pipeline literals)" "$log" "grep -c -F -f $W/literals $log"
measure "mailpipe test, attack lines only" "$attack" "$BIN test $attack"
measure "mailpipe test, botnet 1M attackers" "$botnet" "$BIN test $botnet"
ALL=$ROOT/pipelines/all.ron
measure "mailpipe explain -c all.ron (start-up)" "$ALL" "$BIN explain -c $ALL x"
# The log as journald would hand it over: one JSON object per line.
journal=$W/journal-$LINES.json
[ -s "$journal" ] || python3 - "$log" "$journal" <<'PY'
import json, re, sys, time
line = re.compile(r'^(\w{3} +\d+ [\d:]{8}) (\S+) ([^:\[]+)(?:\[(\d+)\])?: (.*)$')
with open(sys.argv[1]) as src, open(sys.argv[2], "w") as out:
    for i, l in enumerate(src, 1):
        m = line.match(l.rstrip("\n"))
        if not m:
            continue
        t = time.strptime("2026 " + m[1], "%Y %b %d %H:%M:%S")
        us = int(time.mktime(t)) * 1000000
        out.write(json.dumps({"__CURSOR": f"s=0;i={i:x}", "__REALTIME_TIMESTAMP": str(us), "_HOSTNAME": m[2],
                              "SYSLOG_IDENTIFIER": m[3], "_PID": m[4] or "1", "MESSAGE": m[5]}) + "\n")
PY
"$BIN" check --literals -c "$ALL" > "$W/literals-all"
cat "$journal" > /dev/null
measure "mailpipe test -c all.ron" "$log" "$BIN test -c $ALL $log"
measure "grep -c -F (all.ron's literals)" "$log" "grep -c -F -f $W/literals-all $log"
measure "mailpipe test -c all.ron, attack lines only" "$attack" "$BIN test -c $ALL $attack"
measure "mailpipe test, journal JSON" "$journal" "$BIN test $journal"
measure "mailpipe test -c all.ron, journal JSON" "$journal" "$BIN test -c $ALL $journal"
if command -v fail2ban-regex > /dev/null; then
    slice=$W/slice.log
    head -200000 "$log" > "$slice"
    measure "fail2ban-regex postfix[mode=auth] (200k slice)" "$slice" "fail2ban-regex $slice 'postfix[mode=auth]'"
    measure "fail2ban-regex dovecot (200k slice)" "$slice" "fail2ban-regex $slice dovecot"
fi

echo "| command | lines | median s | lines/s | peak RSS MiB |"
echo "|---|---:|---:|---:|---:|"
printf '%s\n' "${rows[@]}"

# Correctness: the per-address bans must equal the truth under mail.ron's policy, and beyond them
# only attackers, banned by an account jail (the same check as tests/truth.rs).
"$BIN" test --decisions "$log" > "$W/decisions.jsonl"
python3 - "$log.truth" "$W/decisions.jsonl" <<'PY'
import ipaddress, json, sys
truth, dec = sys.argv[1], sys.argv[2]
def key(ip):
    a = ipaddress.ip_address(ip)
    return str(ipaddress.ip_network(f"{ip}/64", strict=False).network_address) if a.version == 6 else ip
want, attackers = set(), set()
for line in open(truth):
    v = json.loads(line)
    if "ip" not in v: continue
    if v.get("class") != "legit": attackers.add(key(v["ip"]))
    for kinds, m in ((("sasl",), 5), (("dovecot_login", "dovecot_auth"), 7)):
        ts = sorted(t for t, k in zip(v["fail"], v["kinds"]) if k in kinds)
        if any(ts[i + m - 1] - ts[i] < 900 for i in range(len(ts) - m + 1)):
            want.add(key(v["ip"]))
bans = [json.loads(l) for l in open(dec) if '"kind":"ban"' in l]
got = {b["ip"] for b in bans}
extra = {b["ip"] for b in bans if b["ip"] not in want}
wrong = {b["ip"] for b in bans if b["ip"] not in want and (b["ip"] not in attackers or b["jail"] not in ("dovecot-spray", "dovecot-stuffing"))}
print(f"\nbans: {len(got)} addresses; ground truth: {len(want)}; missing {len(want - got)}; "
      f"extra {len(extra)}, all attackers caught by the account jails: {not wrong}")
sys.exit(0 if want <= got and not wrong else 1)
PY
