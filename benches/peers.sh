#!/usr/bin/env bash
# akwatch beside a Sigma engine on the same CloudTrail file, back to back, in one run.
#   bash benches/peers.sh [N]           N records generated (default 1,000,000) by benches/peers-gen.py
#   bash benches/peers.sh --file FILE   a CloudTrail JSON-lines file of your own
# Not in CI: the first run builds rsigma 0.23.0 (minutes) into target/peers.
#
# akwatch: `akwatch replay` with the repository's rules and policies (every rule on) and GeoLite2
# City + ASN when scripts/install-geoip.sh has put them under target/geoip. rsigma: `rsigma engine
# eval` with Sigma's 57 AWS CloudTrail rules (../shared/corpus/sigma-aws/cloudtrail). Each one's
# user + system CPU time, wall time and peak RSS are those of its process (getrusage of the
# child), so the two are measured alike; events per CPU-second = records / (user + sys).
set -euo pipefail
cd "$(dirname "$0")/.."

n=1000000
file=""
while [ $# -gt 0 ]; do
    case "$1" in
        --file) file="$2"; shift 2 ;;
        -h|--help) sed -n '2,11p' "$0"; exit 0 ;;
        *) n="$1"; shift ;;
    esac
done
sigma_rules="${SIGMA_RULES:-../shared/corpus/sigma-aws/cloudtrail}"
[ -d "$sigma_rules" ] || { echo "no Sigma rules at $sigma_rules (set SIGMA_RULES)" >&2; exit 1; }

mkdir -p target/peers
if [ -z "$file" ]; then
    file="target/peers/cloudtrail-$n.jsonl"
    if [ ! -s "$file" ]; then
        echo "generating $n CloudTrail records into $file" >&2
        python3 benches/peers-gen.py "$file" "$n"
    fi
fi
records=$(wc -l < "$file")

echo "building akwatch (release)" >&2
cargo build --release --locked --quiet
rsigma="target/peers/bin/rsigma"
if [ ! -x "$rsigma" ]; then
    echo "installing rsigma 0.23.0 under target/peers (once; minutes)" >&2
    cargo install rsigma --version 0.23.0 --locked --quiet --root target/peers
fi

geo=()
for db in target/geoip/GeoLite2-City.mmdb target/geoip/GeoLite2-ASN.mmdb; do
    [ -s "$db" ] && geo+=(--geoip "$db")
done

# Runs a command with stdout to /dev/null; prints "user sys wall maxrss_kib".
measure() {
    python3 - "$@" <<'PY'
import resource, subprocess, sys, time
t = time.monotonic()
with open("/dev/null", "wb") as null:
    rc = subprocess.run(sys.argv[1:], stdout=null, stderr=subprocess.PIPE)
wall = time.monotonic() - t
if rc.returncode != 0:
    sys.stderr.write(rc.stderr.decode(errors="replace")[-2000:])
    sys.exit(f"{sys.argv[1]} failed (exit {rc.returncode})")
r = resource.getrusage(resource.RUSAGE_CHILDREN)
print(f"{r.ru_utime:.2f} {r.ru_stime:.2f} {wall:.2f} {r.ru_maxrss}")
PY
}

threads="${AKWATCH_THREADS:-}"
akwatch_args=(replay --rules rules "${geo[@]}")
[ -n "$threads" ] && akwatch_args+=(--threads "$threads")
echo "akwatch ${akwatch_args[*]} $file" >&2
read -r a_user a_sys a_wall a_rss < <(measure target/release/akwatch "${akwatch_args[@]}" "$file")
echo "rsigma engine eval -r $sigma_rules --input-format json -e @$file" >&2
read -r s_user s_sys s_wall s_rss < <(measure "$rsigma" engine eval -r "$sigma_rules" --input-format json -e "@$file")

python3 - "$records" "$a_user" "$a_sys" "$a_wall" "$a_rss" "$s_user" "$s_sys" "$s_wall" "$s_rss" <<'PY'
import sys
n = int(sys.argv[1])
a = list(map(float, sys.argv[2:6]))
s = list(map(float, sys.argv[6:10]))
def row(name, v):
    cpu = v[0] + v[1]
    rate = n / cpu if cpu > 0 else float("inf")
    print(f"| {name} | {n:,} | {v[0]:.2f} + {v[1]:.2f} s | {v[2]:.2f} s | {rate/1000:,.0f} k | {n / v[2] / 1000:,.0f} k | {v[3] / 1024:.0f} MB |")
    return rate
print("| engine | records | CPU (user + sys) | wall | events per CPU-second | events per wall-second | peak RSS |")
print("|---|---:|---:|---:|---:|---:|---:|")
ra = row("akwatch replay (all rules)", a)
rs = row("rsigma 0.23.0 (57 Sigma AWS rules)", s)
print(f"\nakwatch / rsigma, events per CPU-second: {ra / rs:.2f}x")
PY
