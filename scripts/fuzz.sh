#!/usr/bin/env bash
# Coverage-guided fuzzing of akwatch's decoders, readers and loaders with AFL++ (`cargo afl`,
# stable Rust). Installs cargo-afl and builds AFL++ under target/ when they are missing (both
# cached there), builds the targets of fuzz/, and runs each target for a fixed time, one at a
# time, niced.
#
#   bash scripts/fuzz.sh --ci                     # CI: every target for 10 s (about 2 minutes)
#   bash scripts/fuzz.sh --seconds 360            # every target for 6 minutes
#   bash scripts/fuzz.sh --seconds 60 framer gzip # some targets
#   bash scripts/fuzz.sh --build-only             # install and build, run nothing
#   bash scripts/fuzz.sh --list                   # the targets
#
# Exits non-zero when a run found a crash (a panic, an abort such as an allocation failure) or
# a hang, printing the inputs' paths (minimise one with
# `cargo afl tmin -i CRASH -o min.bin -- target/fuzz/release/TARGET`; the script prints the
# full command). Works as root, without a terminal and without standard input.
#
# Environment:
#   FUZZ_CACHE=DIR        where cargo-afl, AFL++ and the instrumented build are cached
#                         (default target/; a directory outside the clone keeps them warm
#                         across fresh clones)
#   FUZZ_OUT=DIR          where the runs go (default target/fuzz-out; cleared per target)
#   FUZZ_TIMEOUT_MS=N     an input taking longer is a hang (default 3000)
#   FUZZ_MEMORY_MB=N      address-space limit of the target (default 2048): larger
#                         allocations fail, and an allocation failure aborts, a crash
#   FUZZ_ALLOW_HANGS=1    report hangs without failing
set -euo pipefail
cd "$(dirname "$0")/.."
root="$PWD"

AFL_VERSION=0.18.2 # cargo-afl and the afl crate (fuzz/Cargo.toml) must be the same version
TARGETS=(decode_auto decode_aws decode_alibaba decode_tencent framer gzip report permissions rules policy config lists pipeline internal)

seconds=""
build_only=0
selected=()
while [ $# -gt 0 ]; do
    case "$1" in
        --ci) seconds=10 ;;
        --seconds)
            seconds="${2:?--seconds needs a number}"
            shift
            ;;
        --seconds=*) seconds="${1#--seconds=}" ;;
        --build-only) build_only=1 ;;
        --list)
            printf '%s\n' "${TARGETS[@]}"
            exit 0
            ;;
        -h | --help)
            sed -n '2,25p' "$0" | sed 's/^# \{0,1\}//'
            exit 0
            ;;
        -*)
            echo "fuzz.sh: unknown option $1 (see --help)" >&2
            exit 2
            ;;
        *) selected+=("$1") ;;
    esac
    shift
done
if [ "$build_only" = 0 ] && ! [[ "$seconds" =~ ^[1-9][0-9]*$ ]]; then
    echo "fuzz.sh: give --ci, --seconds N (N > 0) or --build-only (see --help)" >&2
    exit 2
fi
if [ ${#selected[@]} -eq 0 ]; then
    selected=("${TARGETS[@]}")
fi
for t in "${selected[@]}"; do
    if [ ! -f "fuzz/fuzz_targets/$t.rs" ]; then
        echo "fuzz.sh: no target $t (targets: ${TARGETS[*]})" >&2
        exit 2
    fi
done

step() { printf '\n== %s\n' "$*"; }
started=$(date +%s)

# Everything cached under target/: cargo-afl's binary, AFL++ (built by `cargo afl config`, kept
# in XDG_DATA_HOME), and the instrumented build (its own target directory, so the normal
# build's artefacts are not rebuilt with AFL's flags).
cache="${FUZZ_CACHE:-$root/target}"
mkdir -p "$cache"
cache="$(cd "$cache" && pwd)"
tools="$cache/tools"
export PATH="$tools/bin:$PATH"
export XDG_DATA_HOME="$tools/share"
export CARGO_TARGET_DIR="$cache/fuzz"

step "cargo-afl $AFL_VERSION"
if ! "$tools/bin/cargo-afl" afl --version 2>/dev/null | grep -q "$AFL_VERSION"; then
    nice -n 10 cargo install cargo-afl --locked --version "$AFL_VERSION" --root "$tools"
fi
cargo afl --version

step "AFL++"
if ! compgen -G "$XDG_DATA_HOME/afl.rs/rustc-*/afl.rs-$AFL_VERSION/afl/bin/afl-fuzz" >/dev/null; then
    t0=$(date +%s)
    nice -n 10 cargo afl config --build </dev/null
    echo "AFL++ built in $(($(date +%s) - t0)) s"
else
    echo "cached in $XDG_DATA_HOME/afl.rs"
fi

step "build the targets"
t0=$(date +%s)
(cd fuzz && nice -n 10 cargo afl build --release --locked)
echo "built in $(($(date +%s) - t0)) s"
if [ "$build_only" = 1 ]; then
    exit 0
fi

# AFL++ in a container or CI: no UI, no CPU-frequency or core_pattern checks (writing
# /proc/sys/kernel/core_pattern is often not allowed; a crash is seen by its signal anyway), no
# CPU binding (the machine is shared), never read standard input.
export AFL_NO_UI=1
export AFL_SKIP_CPUFREQ=1
export AFL_I_DONT_CARE_ABOUT_MISSING_CRASHES=1
export AFL_NO_AFFINITY=1
export AFL_NO_WARN_INSTABILITY=1
export AFL_FAST_CAL=1
export AFL_NO_CRASH_README=1

out="${FUZZ_OUT:-$root/target/fuzz-out}"
mkdir -p "$out"
timeout_ms="${FUZZ_TIMEOUT_MS:-3000}"
memory_mb="${FUZZ_MEMORY_MB:-2048}"
summary="$out/summary.tsv"
printf 'target\tseconds\texecs_done\tcorpus_count\tsaved_crashes\tsaved_hangs\n' >"$summary"

dict_of() { # TARGET: the AFL dictionary for the target's input language, if any
    case "$1" in
        decode_* | framer | gzip | pipeline | internal) echo "fuzz/dict/json.dict" ;;
        rules | policy | config) echo "fuzz/dict/yaml.dict" ;;
        report) echo "fuzz/dict/csv.dict" ;;
    esac
}

stat_of() { # FILE KEY
    sed -n "s/^$2 *: *//p" "$1" | head -n 1
}

failed=0
for t in "${selected[@]}"; do
    step "fuzz $t for $seconds s"
    dir="$out/$t"
    rm -rf "$dir"
    log="$out/$t.log"
    status=0
    dict_args=()
    dict="$(dict_of "$t")"
    if [ -n "$dict" ]; then
        dict_args=(-x "$dict")
    fi
    # -V: stop after that many seconds. The outer bound only guards against afl-fuzz itself
    # not stopping (seen once under heavy load on a shared machine); generous on purpose.
    timeout --kill-after=30 $((seconds * 2 + 300)) \
        nice -n 10 cargo afl fuzz -V "$seconds" -t "$timeout_ms" -m "$memory_mb" "${dict_args[@]}" \
        -i "fuzz/seeds/$t" -o "$dir" -- "$CARGO_TARGET_DIR/release/$t" \
        </dev/null >"$log" 2>&1 || status=$?
    stats="$dir/default/fuzzer_stats"
    if [ ! -f "$stats" ]; then
        echo "afl-fuzz did not start (exit $status); the end of its log, $log:" >&2
        tail -n 40 "$log" >&2
        failed=1
        continue
    fi
    execs=$(stat_of "$stats" execs_done)
    corpus=$(stat_of "$stats" corpus_count)
    crashes=$(stat_of "$stats" saved_crashes)
    hangs=$(stat_of "$stats" saved_hangs)
    run_time=$(stat_of "$stats" run_time)
    printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$t" "${run_time:-$seconds}" "$execs" "$corpus" "$crashes" "$hangs" >>"$summary"
    echo "$t: ${run_time:-?} s, $execs executions, corpus $corpus, crashes $crashes, hangs $hangs"
    if [ "$status" = 124 ] || [ "$status" = 137 ]; then
        # Stopped by the outer bound: what it found is saved and judged below.
        echo "warning: afl-fuzz overran its time and was stopped (exit $status); log: $log" >&2
    elif [ "$status" != 0 ]; then
        echo "afl-fuzz exited with $status; the end of its log, $log:" >&2
        tail -n 20 "$log" >&2
        failed=1
    fi
    if [ "${crashes:-0}" != 0 ]; then
        failed=1
        echo "CRASH: $t found $crashes crashing input(s):" >&2
        find "$dir/default/crashes" -type f -name 'id:*' | sort >&2
        echo "  replay one:   $CARGO_TARGET_DIR/release/$t < INPUT" >&2
        echo "  minimise it:  PATH=$tools/bin:\$PATH XDG_DATA_HOME=$XDG_DATA_HOME cargo afl tmin -i INPUT -o min.bin -- $CARGO_TARGET_DIR/release/$t" >&2
    fi
    if [ "${hangs:-0}" != 0 ]; then
        echo "HANG: $t found $hangs input(s) taking over $timeout_ms ms:" >&2
        find "$dir/default/hangs" -type f -name 'id:*' | sort >&2
        if [ "${FUZZ_ALLOW_HANGS:-0}" != 1 ]; then
            failed=1
        fi
    fi
done

step "summary ($summary)"
column -t -s $'\t' "$summary" 2>/dev/null || cat "$summary"
echo "fuzz.sh took $(($(date +%s) - started)) s"
if [ "$failed" != 0 ]; then
    echo "fuzz.sh: FAILED (see above)" >&2
    exit 1
fi
echo "fuzz.sh: no crash, no hang"
