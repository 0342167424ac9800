#!/usr/bin/env bash
# The project's one test command: installs what is missing, starts Apache Kafka, runs every
# check and test, and stops Kafka.
#   bash scripts/test.sh
# Environment:
#   AKWATCH_REQUIRE_CORPUS=1  fail (instead of skipping) when ../shared/corpus is absent (CI sets it)
#   KAFKA_BROKERS=host:port   use that broker instead of starting one
#   AKWATCH_POSTGRES_URL=postgres://...  use that PostgreSQL server (the role may create databases)
#                             instead of starting one with scripts/postgres.sh
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n== %s\n' "$*"; }

step "toolchain"
if ! command -v cargo >/dev/null 2>&1; then
    echo "cargo not found: install Rust (https://rustup.rs) first" >&2
    exit 1
fi
for component in rustfmt clippy; do
    if ! cargo "${component/rustfmt/fmt}" --version >/dev/null 2>&1; then
        rustup component add "$component"
    fi
done
cargo --version

step "GeoLite2 (best effort: a test reads it when present)"
bash scripts/install-geoip.sh || echo "notice: GeoLite2 not installed; its test will be skipped"

step "format"
cargo fmt --all -- --check
# The crates with a workspace of their own (not built here; formatting needs no build).
for crate in fuzz benches/sonic-check; do
    cargo fmt --manifest-path "$crate/Cargo.toml" -- --check
done

step "clippy"
cargo clippy --all-targets --locked -- -D warnings

step "console in a real browser (headless Chromium; screenshots under target/console-screenshots)"
timeout 1500 bash scripts/browser-test.sh

step "fuzz (short: every target 10 s; the long runs are in fuzz/README.md)"
# Installs cargo-afl and AFL++ under target/ when missing; fails on a crash or a hang.
# A hang in a 10 s run on a shared machine is more likely load than a bug: reported, not fatal
# (the long runs in fuzz/README.md judge hangs); a crash fails the run.
FUZZ_ALLOW_HANGS=1 timeout 2700 bash scripts/fuzz.sh --ci

cleanup=()
trap 'for c in "${cleanup[@]}"; do $c || true; done' EXIT

step "Apache Kafka"
if [ -z "${KAFKA_BROKERS:-}" ]; then
    KAFKA_BROKERS="$(bash scripts/kafka.sh start | tail -n 1)"
    cleanup+=("bash scripts/kafka.sh stop")
fi
export KAFKA_BROKERS
export AKWATCH_REQUIRE_KAFKA=1
echo "broker: $KAFKA_BROKERS"

step "PostgreSQL (the inventory's shared backend)"
if [ -z "${AKWATCH_POSTGRES_URL:-}" ]; then
    AKWATCH_POSTGRES_URL="$(bash scripts/postgres.sh start | tail -n 1)"
    cleanup+=("bash scripts/postgres.sh stop")
fi
export AKWATCH_POSTGRES_URL
export AKWATCH_REQUIRE_POSTGRES=1
echo "postgres: $AKWATCH_POSTGRES_URL"

step "tests"
# --all-targets also runs each criterion bench once, as a test. The bound keeps a hung test
# from eating the CI budget.
timeout 2700 cargo test --locked --all-targets

step "operations kit: promtool (alert rules, their unit tests, metrics lint), the Grafana dashboard, against a live service"
# The service on the test broker, fed the bundled examples; every metric the dashboard and the
# alert rules use must be in its /metrics.
timeout 600 bash scripts/ops-live-check.sh target/debug/akwatch
