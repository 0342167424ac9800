#!/usr/bin/env bash
# Rebuilds fuzz/seeds/<target>/ from the repository's own fixtures and examples (not from
# ../shared). Run from anywhere; the seeds are committed, so this is only needed when the
# fixtures change.
set -euo pipefail
cd "$(dirname "$0")/.."
out=fuzz/seeds
rm -rf "$out"
for t in decode_auto decode_aws decode_alibaba decode_tencent framer gzip report permissions rules policy config lists pipeline; do
    mkdir -p "$out/$t"
done
ingest=tests/fixtures/ingest
# Whole records: the JSON fixtures, and each line of the JSON-lines fixtures.
records=$(mktemp -d)
trap 'rm -rf "$records"' EXIT
for f in "$ingest"/*.json; do cp "$f" "$records/$(basename "$f")"; done
for f in "$ingest"/*.jsonl; do
    n=0
    while IFS= read -r line; do
        [ -n "$line" ] || continue
        n=$((n + 1))
        printf '%s' "$line" > "$records/$(basename "$f" .jsonl)-line$n.json"
    done < "$f"
done
# Two events of each example day-one log (the examples are gzip files).
for f in examples/logs/alibaba/actiontrail-sls-2025-06-02.jsonl.gz examples/logs/tencent/cloudaudit-2025-06-02.jsonl.gz; do
    n=0
    while IFS= read -r line; do
        n=$((n + 1))
        printf '%s' "$line" > "$records/example-$(basename "$f" .jsonl.gz)-$n.json"
    done < <(gzip -dc "$f" | head -n 2)
done
gzip -dc examples/logs/aws/210987654321_CloudTrail_2025-06-02.json.gz | python3 -c '
import json, sys
doc = json.load(sys.stdin)
for i, r in enumerate(doc["Records"][:2]):
    open(sys.argv[1] + "/example-cloudtrail-%d.json" % (i + 1), "w").write(json.dumps(r))
' "$records"
for t in decode_auto decode_aws decode_alibaba decode_tencent pipeline; do
    cp "$records"/* "$out/$t/"
done
# Whole files for the framer (every layout: lines, arrays, Records, pretty-printed, broken).
cp "$ingest"/*.json "$ingest"/*.jsonl "$out/framer/"
# Gzip: the gzip fixture and one example day, plus plain files (compressed by the target).
cp "$ingest"/alibaba_oss.json.gz examples/logs/tencent/cloudaudit-2025-06-02.jsonl.gz "$out/gzip/"
cp "$ingest"/aws_records.json "$ingest"/mixed_bad.jsonl "$ingest"/alibaba_sls.jsonl "$out/gzip/"
cp tests/fixtures/reports/* examples/reports/* "$out/report/"
cp tests/fixtures/permissions/* "$out/permissions/"
cp rules/detections/*.yaml rules/catalogs/*.yaml tests/fixtures/rules_broken/*.yaml "$out/rules/"
for f in rules/policies/*.yaml; do cp "$f" "$out/policy/rules-$(basename "$f")"; done
for f in examples/policies/*.yaml; do cp "$f" "$out/policy/examples-$(basename "$f")"; done
cp akwatch.example.yaml deploy/akwatch.compose.yaml "$out/config/"
cp rules/lists/*.txt examples/lists/*.txt examples/leaks/*.json "$out/lists/"
du -sh "$out"
