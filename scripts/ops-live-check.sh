#!/usr/bin/env bash
# The operations kit against a live service: runs `akwatch run` (scale-out, the bundled rules and
# examples, a webhook sink to a local HTTP receiver) on the broker in $KAFKA_BROKERS, feeds the
# bundled examples through fresh keyless 3-partition topics, waits until every record is
# consumed, scrapes /metrics and runs `scripts/ops-check.sh --metrics` on it: promtool's lint,
# and every metric the Grafana dashboard and the Prometheus alert rules use present.
#   KAFKA_BROKERS=127.0.0.1:19092 bash scripts/ops-live-check.sh [path/to/akwatch]
set -euo pipefail
cd "$(dirname "$0")/.."
: "${KAFKA_BROKERS:?set KAFKA_BROKERS (bash scripts/kafka.sh start prints it)}"
bin="${1:-target/debug/akwatch}"
[ -x "$bin" ] || cargo build --locked --bin akwatch
work="$(mktemp -d)"
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

# A receiver that answers 200 to every POST (the webhook sink's endpoint).
python3 - "$work/receiver.port" >"$work/receiver.log" 2>&1 <<'PY' &
import http.server, sys
class H(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.send_response(200); self.end_headers(); self.wfile.write(b"ok")
    def log_message(self, *a): pass
s = http.server.HTTPServer(("127.0.0.1", 0), H)
open(sys.argv[1], "w").write(str(s.server_port))
s.serve_forever()
PY
pids+=($!)
for _ in $(seq 50); do [ -s "$work/receiver.port" ] && break; sleep 0.1; done
receiver="http://127.0.0.1:$(cat "$work/receiver.port")/hook"

run_id="ops$(date +%s)$$"
ops_port=$((20000 + $$ % 10000))
cat >"$work/akwatch.yaml" <<YAML
kafka:
  brokers: \${KAFKA_BROKERS}
  group_id: $run_id
  inputs:
    - topic: $run_id-cloudtrail
      provider: aws
    - topic: $run_id-actiontrail
      provider: alibaba
    - topic: $run_id-cloudaudit
  alarm_topic: $run_id-alarms
  dlq_topic: $run_id-dlq
  internal_partitions: 3
rules: rules
policies: [rules/policies, examples/policies]
lists: [rules/lists, examples/lists]
geoip: [examples/geo.mmdb]
reports: [examples/reports]
leaks: [examples/leaks]
commit_interval_seconds: 2s
ops_addr: 127.0.0.1:$ops_port
notify:
  - kind: webhook
    name: ops-check
    url: $receiver
    secret: \${OPS_CHECK_SECRET:-ops-check-secret}
YAML
"$bin" check-config "$work/akwatch.yaml"

# Keyless records in 3-partition topics, as forwarders write them.
"$bin" run --config "$work/akwatch.yaml" >"$work/run.out" 2>"$work/run.log" &
pids+=($!)
sent=0
for pair in cloudtrail:aws actiontrail:alibaba cloudaudit:tencent; do
    topic="$run_id-${pair%%:*}"
    n=$("$bin" load --brokers "$KAFKA_BROKERS" --topic "$topic" "examples/logs/${pair##*:}" 2>&1 |
        sed -n 's/^sent \([0-9]*\) records.*/\1/p')
    sent=$((sent + n))
done
echo "ops-live-check: sent $sent records"
metrics="$work/metrics.txt"
consumed=0
for _ in $(seq 120); do
    if curl -fsS "http://127.0.0.1:$ops_port/metrics" -o "$metrics" 2>/dev/null; then
        consumed=$(awk '/^akwatch_records_consumed_total\{/ {s += $2} END {print s + 0}' "$metrics")
        [ "$consumed" -ge "$sent" ] && grep -q '^akwatch_consumer_lag_records{' "$metrics" && break
    fi
    sleep 1
done
if [ "$consumed" -lt "$sent" ]; then
    echo "ops-live-check: only $consumed of $sent records consumed in 120 s; the service's log:" >&2
    tail -n 40 "$work/run.log" >&2
    exit 1
fi
sleep 3
curl -fsS "http://127.0.0.1:$ops_port/metrics" -o "$metrics"
echo "ops-live-check: $consumed records consumed; $(grep -c '^akwatch_' "$metrics") akwatch series"
bash scripts/ops-check.sh --metrics "$metrics"
