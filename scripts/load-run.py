#!/usr/bin/env python3
"""End-to-end load run through a real Kafka broker (issue 4's speed targets).

    python3 scripts/load-run.py [--rate 5000] [--runs 3] [--seconds 20] [--throughput-repeat 40]

1. Sustained throughput: the bundled scenario's records x N already in a topic; `akwatch run`
   (every rule on, the bundled GeoIP / lists / reports / leaks / policies, checkpoints) starts
   on a fresh group; time from its first consumed record to the last.
2. Latency: for each run, `akwatch run` consumes a fresh topic while `akwatch load` produces
   into it at a fixed rate; the service's histograms are read from /metrics at the end:
   ingest -> alarm acknowledged (akwatch_ingest_to_alarm_seconds) and ingest -> everything
   derived acknowledged, for every record (akwatch_ingest_to_done_seconds).

Uses KAFKA_BROKERS if set, else starts the project's broker (scripts/kafka.sh) and stops it at
the end. Builds the release binary. Prints Markdown for benches/README.md.
"""

import argparse
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, "target", "release", "akwatch")
WORK = os.path.join(ROOT, "target", "load-run")


def sh(*args, **kw):
    return subprocess.run(args, cwd=ROOT, check=True, text=True, capture_output=True, **kw).stdout


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def metrics(ops):
    try:
        with urllib.request.urlopen(f"http://{ops}/metrics", timeout=5) as r:
            return r.read().decode()
    except OSError:
        return ""


def counter(body, name):
    total = 0.0
    for line in body.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            total += float(line.rsplit(" ", 1)[1])
    return total


def histogram(body, name):
    """[(upper bound, cumulative count)], count."""
    buckets = []
    for line in body.splitlines():
        m = re.match(name + r'_bucket\{le="([^"]+)"\} (\S+)', line)
        if m:
            le = float("inf") if m.group(1) == "+Inf" else float(m.group(1))
            buckets.append((le, float(m.group(2))))
    buckets.sort()
    return buckets, (buckets[-1][1] if buckets else 0)


def quantile(buckets, count, q):
    """The upper bound of the bucket holding the q-quantile (Prometheus-style, no interpolation:
    a conservative figure)."""
    if count == 0:
        return None
    for le, c in buckets:
        if c >= q * count:
            return le
    return float("inf")


def config(path, brokers, topic, group, ops, state):
    r = ROOT
    text = f"""kafka:
  brokers: {brokers}
  group_id: {group}
  inputs:
    - topic: {topic}
  alarm_topic: {topic}-alarms
  dlq_topic: {topic}-dlq
rules: {r}/rules
policies: [{r}/rules/policies, {r}/examples/policies]
lists: [{r}/rules/lists, {r}/examples/lists]
geoip: [{r}/examples/geo.mmdb]
reports: [{r}/examples/reports]
leaks: [{r}/examples/leaks]
state_dir: {state}
ops_addr: {ops}
"""
    with open(path, "w") as f:
        f.write(text)


def topic(name):
    sh("bash", "scripts/kafka.sh", "topic", name, "1")
    for suffix in ("-alarms", "-dlq"):
        sh("bash", "scripts/kafka.sh", "topic", name + suffix, "1")


def service(brokers, name):
    ops = f"127.0.0.1:{free_port()}"
    state = os.path.join(WORK, name + "-state")
    shutil.rmtree(state, ignore_errors=True)
    path = os.path.join(WORK, name + ".yaml")
    config(path, brokers, name, name + "-group", ops, state)
    log = open(os.path.join(WORK, name + ".log"), "w")
    proc = subprocess.Popen([BIN, "run", "--config", path], cwd=ROOT, stdout=log, stderr=log)
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(f"http://{ops}/readyz", timeout=2) as r:
                if r.status == 200:
                    break
        except OSError:
            pass
        time.sleep(0.2)
    return proc, ops


def stop(proc):
    proc.terminate()
    proc.wait(timeout=60)


def load(brokers, name, rate, repeat):
    out = subprocess.run(
        [BIN, "load", "--brokers", brokers, "--topic", name, "--rate", str(rate),
         "--repeat", str(repeat), os.path.join(ROOT, "examples", "logs")],
        cwd=ROOT, check=True, text=True, capture_output=True)
    m = re.search(r"sent (\d+) records .* in ([\d.]+) s \((\d+) records/s\)", out.stderr)
    return int(m.group(1)), float(m.group(2)), int(m.group(3))


def wait_consumed(ops, n, timeout=300):
    start = time.time()
    first = None
    while time.time() - start < timeout:
        c = counter(metrics(ops), "akwatch_records_consumed_total")
        if c > 0 and first is None:
            first = time.time()
        if c >= n:
            return first, time.time()
        time.sleep(0.05)
    raise SystemExit(f"only {c} of {n} records consumed in {timeout} s")


def machine():
    cpu = "?"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{os.cpu_count()} cores ({cpu})"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rate", type=int, default=5000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--seconds", type=int, default=20, help="length of each latency run")
    ap.add_argument("--throughput-repeat", type=int, default=40)
    a = ap.parse_args()
    os.makedirs(WORK, exist_ok=True)
    sh("cargo", "build", "--release", "--locked", "-q")
    brokers = os.environ.get("KAFKA_BROKERS")
    started = False
    if not brokers:
        brokers = sh("bash", "scripts/kafka.sh", "start").strip().splitlines()[-1]
        started = True
    stamp = str(int(time.time()))
    records_per_pass = len(
        subprocess.run([BIN, "normalize", os.path.join(ROOT, "examples", "logs")],
                       cwd=ROOT, capture_output=True, text=True).stdout.splitlines())
    try:
        print(f"machine: {machine()}; broker and akwatch on it; brokers {brokers}\n")
        # 1. Throughput.
        name = f"load-tp-{stamp}"
        topic(name)
        sent, secs, _ = load(brokers, name, 0, a.throughput_repeat)
        proc, ops = service(brokers, name)
        first, last = wait_consumed(ops, sent)
        stop(proc)
        eps = sent / max(last - first, 1e-9)
        print(f"| sustained | {sent:,} records, first consumed -> last consumed {last - first:.2f} s "
              f"| **{eps:,.0f} events/s** |\n")
        # 2. Latency at a fixed rate.
        repeat = max(1, round(a.rate * a.seconds / max(records_per_pass, 1)))
        print(f"latency: {a.runs} runs at {a.rate:,} records/s, {repeat} passes of the scenario each\n")
        print("| run | records | produced at | alarms | alarm p50 | alarm p99 | alarm max bucket "
              "| records p50 | records p99 | records p99.9 |")
        print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        ms = lambda v: "n/a" if v is None else ("> 3600 s" if v == float("inf") else f"≤ {v * 1000:g} ms")
        for run in range(1, a.runs + 1):
            name = f"load-lat-{stamp}-{run}"
            topic(name)
            proc, ops = service(brokers, name)
            time.sleep(3)  # the group's first assignment
            sent, secs, rate = load(brokers, name, a.rate, repeat)
            wait_consumed(ops, sent)
            time.sleep(1)
            body = metrics(ops)
            stop(proc)
            ab, ac = histogram(body, "akwatch_ingest_to_alarm_seconds")
            rb, rc = histogram(body, "akwatch_ingest_to_done_seconds")
            top = next((le for le, c in ab if c >= ac), None)
            print(f"| {run} | {sent:,} | {rate:,}/s | {int(ac)} | {ms(quantile(ab, ac, 0.5))} "
                  f"| {ms(quantile(ab, ac, 0.99))} | {ms(top)} | {ms(quantile(rb, rc, 0.5))} "
                  f"| {ms(quantile(rb, rc, 0.99))} | {ms(quantile(rb, rc, 0.999))} |")
            sys.stdout.flush()
    finally:
        if started:
            subprocess.run(["bash", "scripts/kafka.sh", "stop"], cwd=ROOT)


if __name__ == "__main__":
    main()
