#!/usr/bin/env bash
# The account jails' figures:
#   benches/accounts.sh [WORKDIR]        (default /tmp/mailpipe-accounts)
# 1. Memory: 10,000,000 failed logins, each on a user name never seen before, from 100,000
#    addresses (100 each, interleaved), through `mailpipe test` with mail.ron (its spraying
#    and stuffing jails on): peak RSS and time.
# 2. Speed: the shared generator's log (2,000,000 lines) with mail.ron, against mail.ron
#    without its account jails (dovecot-spray, dovecot-stuffing), and without those nor the
#    success rules (mail.ron before accounts).
set -euo pipefail
W=${1:-/tmp/mailpipe-accounts}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=$ROOT/target/release/mailpipe
mkdir -p "$W"
(cd "$ROOT" && cargo build --release -q)
export TZ=UTC

names=$W/names-10m.log
[ -s "$names" ] || python3 - "$names" <<'PY'
import sys
out = open(sys.argv[1], "w", buffering=1 << 20)
for i in range(10_000_000):
    a = i % 100_000
    ip = f"10.{a >> 16}.{(a >> 8) & 255}.{a & 255}"
    t = 1782000000 + i // 1000
    h, m, s = (t // 3600) % 24, (t // 60) % 60, t % 60
    out.write(f"Jun 21 {h:02}:{m:02}:{s:02} mx1 dovecot: imap-login: Disconnected (auth failed, 1 attempts in 2 secs): "
              f"user=<u{i:08}@example.com>, method=PLAIN, rip={ip}, lip=192.0.2.10, TLS, session=<s{i}>\n")
PY
cat "$names" > /dev/null
echo "| 10,000,000 distinct user names, 100,000 addresses | s | peak RSS MiB |"
echo "|---|---:|---:|"
/usr/bin/time -f '%e %M' -o "$W/.t" "$BIN" test "$names" > "$W/names.out"
read -r s kb < "$W/.t"
echo "| mailpipe test (mail.ron) | $s | $(( kb / 1024 )) |"

log=$W/mail-2000000.log
[ -s "$log" ] || python3 "$ROOT/../shared/bench/gen_maillog.py" --seed 1 --lines 2000000 --out "$log" 2>/dev/null
# mail.ron as it was before accounts: the per-address jails, no success rules.
cat > "$W/plain.ron" <<RON
Pipeline(include: [(file: "$ROOT/pipelines/mail.ron", jails: ["postfix-sasl", "dovecot-auth"])],
  set: {"postfix-sasl": (success: []), "dovecot-auth": (success: [])})
RON
# mail.ron without the spraying and stuffing jails: the per-address jails with their success rules.
cat > "$W/per-address.ron" <<RON
Pipeline(include: [(file: "$ROOT/pipelines/mail.ron", jails: ["postfix-sasl", "dovecot-auth"])])
RON
cat "$log" > /dev/null
echo
echo "| generator log, 2,000,000 lines | median s of 5 | lines/s |"
echo "|---|---:|---:|"
for cfg in "$W/plain.ron" "$W/per-address.ron" "$ROOT/pipelines/mail.ron"; do
    ts=()
    for _ in 1 2 3 4 5; do
        t0=$(date +%s%N); "$BIN" test -c "$cfg" "$log" > /dev/null; t1=$(date +%s%N)
        ts+=("$(( (t1 - t0) / 1000 ))")
    done
    med=$(printf '%s\n' "${ts[@]}" | sort -n | sed -n 3p)
    echo "| $(basename "$cfg") | $(awk -v u="$med" 'BEGIN{printf "%.3f", u/1e6}') | $(( 2000000 * 1000000 / med )) |"
done
