#!/bin/sh
# One-shot loader: feeds the bundled scenario's logs into the input topics. A CloudTrail log
# file is one message (akwatch unwraps its Records); ActionTrail and CloudAudit files are JSON
# lines, one message a line.
set -eu
produce() {
    /opt/kafka/bin/kafka-console-producer.sh --bootstrap-server kafka:19092 --topic "$1" \
        --producer-property max.request.size=16777216
}
for f in /examples/logs/aws/*.gz; do zcat "$f"; done | produce cloudtrail
for f in /examples/logs/alibaba/*.gz; do zcat "$f"; done | produce actiontrail
for f in /examples/logs/tencent/*.gz; do zcat "$f"; done | produce cloudaudit
echo "loaded the bundled scenario"
