#!/usr/bin/env bash
# A single-node Apache Kafka broker (KRaft) on 127.0.0.1 for the tests, from Maven Central.
#   bash scripts/kafka.sh start   fetch (once, cached under target/kafka), format, start, wait until ready
#   bash scripts/kafka.sh stop    stop it and remove its data
#   bash scripts/kafka.sh pause   stop it, keeping its data (a broker outage)
#   bash scripts/kafka.sh resume  start it again on its data
#   bash scripts/kafka.sh status
#   bash scripts/kafka.sh topic NAME [PARTITIONS]   create a topic (if it does not exist)
# Environment: KAFKA_PORT (default 19092; the controller listens on KAFKA_PORT+1), KAFKA_ROOT
# (default target/kafka: a second broker needs its own).
# Prints the bootstrap address on success (e.g. 127.0.0.1:19092).
set -euo pipefail
cd "$(dirname "$0")/.."
root="${KAFKA_ROOT:-target/kafka}"
libs="target/kafka/libs"
data="$root/data"
port="${KAFKA_PORT:-19092}"
cport=$((port + 1))
pidfile="$root/broker.pid"
props="$root/server.properties"

fetch() {
    if [ -f "$libs/.complete" ]; then return; fi
    command -v mvn >/dev/null 2>&1 || { echo "mvn (Maven) is needed to fetch Kafka from Maven Central" >&2; exit 1; }
    command -v java >/dev/null 2>&1 || { echo "java is needed to run Kafka" >&2; exit 1; }
    mkdir -p "$libs"
    # Maven's output goes to a log: stdout carries only the broker address.
    if ! mvn -q -B -Dstyle.color=never -f scripts/kafka/pom.xml dependency:copy-dependencies \
        -DoutputDirectory="$(pwd)/$libs" -DincludeScope=runtime > "target/kafka-fetch.log" 2>&1; then
        cat target/kafka-fetch.log >&2
        exit 1
    fi
    touch "$libs/.complete"
}

java_cmd() {
    java -Xms256m -Xmx768m -Dlog4j.configuration="file:$(pwd)/scripts/kafka/log4j.properties" -cp "$libs/*" "$@"
}

running() {
    [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null
}

ready() {
    java_cmd org.apache.kafka.tools.TopicCommand --bootstrap-server "127.0.0.1:$port" --list >/dev/null 2>&1
}

# Something (not this script's broker) accepts connections on the port.
taken() {
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

refuse_taken_ports() {
    local p
    for p in "$port" "$cport"; do
        if taken "$p"; then
            echo "127.0.0.1:$p is already in use by another process (not the broker under $root);" \
                "stop it, or set KAFKA_PORT to a free port" >&2
            exit 1
        fi
    done
}

start() {
    fetch
    if running; then
        echo "127.0.0.1:$port"
        return
    fi
    refuse_taken_ports
    rm -rf "$data"
    mkdir -p "$data"
    mkdir -p "$root"
    cat > "$props" <<PROPS
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$cport
listeners=PLAINTEXT://127.0.0.1:$port,CONTROLLER://127.0.0.1:$cport
advertised.listeners=PLAINTEXT://127.0.0.1:$port
controller.listener.names=CONTROLLER
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
inter.broker.listener.name=PLAINTEXT
log.dirs=$(pwd)/$data
num.partitions=3
offsets.topic.replication.factor=1
offsets.topic.num.partitions=3
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
# Kafka's shipped default: the first members of a new group are assigned together, as in
# production (two instances started on a backlog both get partitions).
group.initial.rebalance.delay.ms=3000
auto.create.topics.enable=true
PROPS
    local id
    id="$(java_cmd kafka.tools.StorageTool random-uuid 2>/dev/null | tail -n 1)"
    java_cmd kafka.tools.StorageTool format -t "$id" -c "$props" >/dev/null
    launch
}

launch() {
    nohup java -Xms256m -Xmx768m -Dlog4j.configuration="file:$(pwd)/scripts/kafka/log4j.properties" \
        -cp "$libs/*" kafka.Kafka "$props" > "$root/broker.log" 2>&1 &
    echo $! > "$pidfile"
    for _ in $(seq 1 90); do
        if ready; then
            echo "127.0.0.1:$port"
            return
        fi
        if ! running; then
            echo "Kafka exited; see $root/broker.log" >&2
            tail -20 "$root/broker.log" >&2
            exit 1
        fi
        sleep 1
    done
    echo "Kafka did not become ready in 90 s; see $root/broker.log" >&2
    exit 1
}

resume() {
    if running; then
        echo "127.0.0.1:$port"
        return
    fi
    [ -f "$props" ] || { echo "no broker to resume in $root" >&2; exit 1; }
    refuse_taken_ports
    launch
}

halt() {
    if running; then
        local pid
        pid="$(cat "$pidfile")"
        kill "$pid" 2>/dev/null || true
        for _ in $(seq 1 30); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 1
        done
        kill -9 "$pid" 2>/dev/null || true
    fi
    rm -f "$pidfile"
}

stop() {
    halt
    rm -rf "$data"
}

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    pause) halt ;;
    resume) resume ;;
    topic)
        [ -n "${2:-}" ] || { echo "usage: $0 topic NAME [PARTITIONS]" >&2; exit 2; }
        java_cmd org.apache.kafka.tools.TopicCommand --bootstrap-server "127.0.0.1:$port" --create \
            --if-not-exists --topic "$2" --partitions "${3:-1}" --replication-factor 1 >/dev/null ;;
    status) if running; then echo "running (pid $(cat "$pidfile")) on 127.0.0.1:$port"; else echo "stopped"; fi ;;
    *) echo "usage: $0 start|stop|pause|resume|status|topic" >&2; exit 2 ;;
esac
