#!/usr/bin/env python3
"""End-to-end load run through a real Kafka broker (issue 4's speed targets, issue 9's scale-out).

    python3 scripts/load-run.py [--rate 5000] [--runs 3] [--seconds 20] [--throughput-repeat 40]
                                [--partitions 3] [--modes repartition,legacy] [--bare-runs 3]
                                [--input-file FILE] [--bin NAME=PATH ...]

Input records are produced without a key (`akwatch load --key none`, as the clouds' forwarders
send them) into topics created with --partitions partitions (3); the records' spread over the
partitions is read back from the watermarks and printed (a one-sided spread is flagged).

1. Sustained throughput: the bundled scenario's records x N already in a topic (produced at
   --produce-rate records/s: unpaced, librdkafka's sticky partitioner can put a whole burst in
   one partition). On that same topic, in this order:
   - a bare librdkafka consumer, `kcat -C -e` (best of --bare-runs; the time to its first
     record, measured apart, is taken off): what the broker and librdkafka alone deliver;
   - `akwatch run` (every rule on, the bundled GeoIP / lists / reports / leaks / policies) on a
     fresh group, for each of --modes: `repartition` (the default: events re-keyed by access key
     through `<group>-repartition`, --internal-partitions partitions, detection state in
     `<group>-changelog`) and `legacy` (`kafka.repartition: false`: one instance, state
     checkpoints in state_dir). Time from its first consumed record to the last event through
     detection (akwatch_events_decoded_total, counted where the rules run).
   Events/s of each, and akwatch's rates as ratios of the bare consumer's.
   --input-file FILE takes that file instead of the scenario (an alarm storm from
   benches/storm.py, say); --bin NAME=PATH (repeatable) runs those builds instead of
   target/release/akwatch, one after the other on the same topic: before / after in one run.
2. Latency: for each run, `akwatch run` (--latency-modes, default repartition) consumes a fresh
   topic while `akwatch load` produces into it at a fixed rate; the service's histograms are read
   from /metrics at the end: ingest -> alarm acknowledged (akwatch_ingest_to_alarm_seconds) and
   ingest -> the record done (akwatch_ingest_to_done_seconds: everything derived from it
   acknowledged; with repartitioning, its events acknowledged by the repartition topic).

After each service: the consumer groups' lag (input topic, and with repartitioning the
repartition topic) and the warnings / errors in its log (target/load-run/NAME.log).

Uses KAFKA_BROKERS if set, else starts the project's broker (scripts/kafka.sh) and stops it at
the end. Builds the release binary (--no-build: use it as it is). Needs `kcat` for the bare
consumer (Debian: apt-get install kcat; without it that row is skipped) and Kafka's tools in
target/kafka/libs (bash scripts/kafka.sh start fetches them) for topics and lag. Deletes its
topics at the end (--keep-topics: keep them). Prints Markdown for benches/README.md.
"""

import argparse
import datetime
import gzip
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, "target", "release", "akwatch")
WORK = os.path.join(ROOT, "target", "load-run")
LIBS = os.path.join(ROOT, "target", "kafka", "libs")


def sh(*args, **kw):
    return subprocess.run(args, cwd=ROOT, check=True, text=True, capture_output=True, **kw).stdout


def kafka_tool(*args, check=True):
    """One of Kafka's command-line tools (a JVM: about a second each)."""
    log4j = os.path.join(ROOT, "scripts", "kafka", "log4j.properties")
    return subprocess.run(
        ["java", "-Xmx256m", f"-Dlog4j.configuration=file:{log4j}", "-cp", os.path.join(LIBS, "*"),
         *args], cwd=ROOT, check=check, text=True, capture_output=True).stdout


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


def counter(body, name, label=None):
    """The sum of a metric's series (those whose labels contain `label`, if given)."""
    total = 0.0
    for line in body.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            if label is None or label in line.split("}")[0]:
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


def config(path, brokers, topic, group, ops, state, mode, internal_partitions, options=(),
           extra=()):
    """The service's configuration; `options`: librdkafka KEY=VALUE (kafka.options); `extra`:
    top-level YAML lines (e.g. `merge_queue_records: 100000`)."""
    r = ROOT
    if mode == "legacy":
        scale = "  repartition: false\n"
        state_line = f"state_dir: {state}\n"
    else:
        # State lives in <group>-changelog: state_dir would be ignored.
        scale = f"  repartition: true\n  internal_partitions: {internal_partitions}\n"
        state_line = ""
    if options:
        scale += "  options:\n" + "".join(
            f"    {k}: {json.dumps(v)}\n" for k, v in (o.split("=", 1) for o in options))
    text = f"""kafka:
  brokers: {brokers}
  group_id: {group}
  inputs:
    - topic: {topic}
  alarm_topic: {topic}-alarms
  dlq_topic: {topic}-dlq
{scale}rules: {r}/rules
policies: [{r}/rules/policies, {r}/examples/policies]
lists: [{r}/rules/lists, {r}/examples/lists]
geoip: [{r}/examples/geo.mmdb]
reports: [{r}/examples/reports]
leaks: [{r}/examples/leaks]
{state_line}ops_addr: {ops}
""" + "".join(line + "\n" for line in extra)
    with open(path, "w") as f:
        f.write(text)


def create_topic(brokers, name, partitions):
    kafka_tool("org.apache.kafka.tools.TopicCommand", "--bootstrap-server", brokers, "--create",
               "--if-not-exists", "--topic", name, "--partitions", str(partitions),
               "--replication-factor", "1")


def topic(brokers, name, partitions):
    """The input topic with `partitions` partitions; its alarm and dead-letter topics with one."""
    create_topic(brokers, name, partitions)
    for suffix in ("-alarms", "-dlq"):
        create_topic(brokers, name + suffix, 1)


def watermarks(brokers, name):
    """{partition: end offset} of a topic (its records per partition when it starts at 0)."""
    out = kafka_tool("org.apache.kafka.tools.GetOffsetShell", "--bootstrap-server", brokers,
                     "--topic", name)
    ends = {}
    for line in out.splitlines():
        t, p, o = line.rsplit(":", 2)
        if t == name:
            ends[int(p)] = int(o)
    return dict(sorted(ends.items()))


def spread(ends):
    """'100,020 / 96,195 / 104,585', and a warning when a partition has under half its share."""
    text = " / ".join(f"{n:,}" for n in ends.values())
    total = sum(ends.values())
    fair = total / max(len(ends), 1)
    low = [p for p, n in ends.items() if n < fair / 2]
    warn = None
    if low:
        warn = (f"**one-sided spread**: partition(s) {', '.join(map(str, low))} hold under half "
                f"their share ({text})")
    return text, warn


def service(brokers, name, input_topic, mode, internal_partitions, options=(), extra=(), binary=None):
    """`akwatch run` named `name` (config, log, state and group `name-group`) on `input_topic`."""
    ops = f"127.0.0.1:{free_port()}"
    state = os.path.join(WORK, name + "-state")
    shutil.rmtree(state, ignore_errors=True)
    path = os.path.join(WORK, name + ".yaml")
    config(path, brokers, input_topic, name + "-group", ops, state, mode, internal_partitions,
           options, extra)
    log = open(os.path.join(WORK, name + ".log"), "w")
    env = dict(os.environ, NO_COLOR="1")
    proc = subprocess.Popen([binary or BIN, "run", "--config", path], cwd=ROOT, stdout=log, stderr=log,
                            env=env)
    deadline = time.time() + 60
    while time.time() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"akwatch run exited ({proc.returncode}); see {log.name}")
        try:
            with urllib.request.urlopen(f"http://{ops}/readyz", timeout=2) as r:
                if r.status == 200:
                    break
        except OSError:
            pass
        time.sleep(0.2)
    return proc, ops


MODES = ("repartition", "legacy")


def wait_detect_assigned(ops, partitions, timeout=60):
    """With repartitioning: until this instance owns every partition of the repartition topic
    (restored from the changelog). Seconds taken, or None."""
    start = time.time()
    while time.time() - start < timeout:
        if counter(metrics(ops), "akwatch_detect_partitions") >= partitions:
            return time.time() - start
        time.sleep(0.05)
    return None


def stop(proc):
    proc.terminate()
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        return "killed after 60 s"
    return None if proc.returncode == 0 else f"exit status {proc.returncode}"


def scenario_records():
    """The bundled scenario's records, in the order `akwatch load` sends them (files sorted by
    path; a CloudTrail file's `Records` elements; other files one record a line)."""
    records = []
    for dirpath, dirnames, filenames in sorted(os.walk(os.path.join(ROOT, "examples", "logs"))):
        dirnames.sort()
        for f in sorted(filenames):
            path = os.path.join(dirpath, f)
            with (gzip.open if f.endswith(".gz") else open)(path, "rt") as fh:
                data = fh.read()
            if data.lstrip().startswith('{"Records"'):
                records.extend(json.loads(data)["Records"])
            else:
                records.extend(json.loads(line) for line in data.splitlines() if line.strip())
    return records


def iso(t):
    return datetime.datetime.fromtimestamp(t, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def event_time(r):
    """Seconds since the epoch of a raw record (CloudTrail, SLS ActionTrail, CloudAudit)."""
    t = r["event"]["eventTime"] if "event" in r and "__time__" in r else r["eventTime"]
    if isinstance(t, (int, float)):
        return int(t)
    return int(datetime.datetime.strptime(t, "%Y-%m-%dT%H:%M:%SZ")
               .replace(tzinfo=datetime.timezone.utc).timestamp())


def shifted(r, by):
    """A copy of a raw record with its times `by` seconds later."""
    r = json.loads(json.dumps(r))
    if "event" in r and "__time__" in r:
        r["__time__"] = str(int(r["__time__"]) + by)
        r["event"]["eventTime"] = iso(event_time(r) + by)
    elif isinstance(r["eventTime"], (int, float)):
        r["eventTime"] += by
    else:
        r["eventTime"] = iso(event_time(r) + by)
        attrs = (r.get("userIdentity") or {}).get("sessionContext", {}).get("attributes", {})
        if attrs.get("creationDate"):
            t = datetime.datetime.strptime(attrs["creationDate"], "%Y-%m-%dT%H:%M:%SZ")
            attrs["creationDate"] = iso(
                int(t.replace(tzinfo=datetime.timezone.utc).timestamp()) + by)
    return r


def ordered_input(passes):
    """`passes` passes of the scenario as one JSON-lines file in event-time order throughout:
    each pass sorted by event time and shifted by the scenario's span (whole days) after the
    one before; the last pass keeps the scenario's own times (all in the past). Without it the
    scenario's times go back at each file set (Alibaba, AWS, Tencent: 10 days each) and at each
    pass, and keyless records spread over partitions make the event-time merge hold the
    partitions whose times are ahead until the others catch up."""
    path = os.path.join(WORK, f"ordered-{passes}.jsonl")
    if os.path.exists(path):
        return path
    records = sorted(scenario_records(), key=event_time)
    times = [event_time(r) for r in records]
    day = 86400
    span = (max(times) // day + 1 - min(times) // day) * day
    with open(path + ".tmp", "w") as f:
        for k in range(passes):
            by = (k - (passes - 1)) * span
            for r in records:
                f.write(json.dumps(shifted(r, by) if by else r, separators=(",", ":")) + "\n")
    os.replace(path + ".tmp", path)
    return path


def load(brokers, name, rate, repeat, key="none", ordered=False, path=None):
    """`repeat` passes of the scenario (or of the file `path`) to `name` at `rate` records/s
    (ordered: in event-time order, see ordered_input)."""
    if path:
        paths = [path]
    elif ordered:
        paths, repeat = [ordered_input(repeat)], 1
    else:
        paths = [os.path.join(ROOT, "examples", "logs")]
    out = subprocess.run(
        [BIN, "load", "--brokers", brokers, "--topic", name, "--rate", str(rate),
         "--repeat", str(repeat), "--key", key, *paths],
        cwd=ROOT, check=True, text=True, capture_output=True)
    m = re.search(r"sent (\d+) records .* in ([\d.]+) s \((\d+) records/s\)", out.stderr)
    return int(m.group(1)), float(m.group(2)), int(m.group(3))


def wait_done(ops, records, events, timeout=300, poll=0.02):
    """Until `records` input records are consumed and `events` events went through detection.
    (first record consumed, all consumed, all detected), None where not reached in time, and the
    last metrics."""
    start = time.time()
    first = consumed = detected = None
    body = ""
    while time.time() - start < timeout:
        body = metrics(ops)
        c = counter(body, "akwatch_records_consumed_total")
        d = counter(body, "akwatch_events_decoded_total")
        now = time.time()
        if c > 0 and first is None:
            first = now
        if c >= records and consumed is None:
            consumed = now
        if d >= events and consumed is not None:
            detected = now
            break
        time.sleep(poll)
    return first, consumed, detected, body


def group_lag(brokers, groups):
    """{(group, topic): lag} from the groups' committed offsets (after the service stopped)."""
    args = ["org.apache.kafka.tools.consumer.group.ConsumerGroupCommand", "--bootstrap-server",
            brokers, "--describe"]
    for g in groups:
        args += ["--group", g]
    out = kafka_tool(*args, check=False)
    lag = {}
    for line in out.splitlines():
        f = line.split()
        if len(f) >= 6 and f[0] in groups and f[2].isdigit():
            key = (f[0], f[1])
            lag[key] = lag.get(key, 0) + (int(f[5]) if f[5].lstrip("-").isdigit() else 0)
            if f[3] == "-":
                lag[key] = lag.get(key, 0) + int(f[4])  # nothing committed: all of it
    return lag


def log_problems(name):
    """WARN / ERROR lines (and panics) of a service's log: (count, the first few), and apart the
    count of librdkafka's partition-end notices logged as errors."""
    path = os.path.join(WORK, name + ".log")
    lines = []
    eof = 0
    with open(path, errors="replace") as f:
        for line in f:
            if "PartitionEOF" in line:
                eof += 1
            elif re.search(r"\b(WARN|ERROR)\b|panicked", line):
                lines.append(line.strip())
    return len(lines), lines[:3], eof


def bare_consumer(brokers, name, runs):
    """kcat reading the topic from the beginning to its end, `runs` times: [(net s, wall s)]
    (net: the time to its first record, from a one-record read, taken off)."""
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        subprocess.run(["kcat", "-C", "-b", brokers, "-t", name, "-o", "beginning", "-c", "1",
                        "-q"], check=True, stdout=subprocess.DEVNULL)
        first = time.perf_counter() - t0
        t0 = time.perf_counter()
        subprocess.run(["kcat", "-C", "-b", brokers, "-t", name, "-o", "beginning", "-e", "-q"],
                       check=True, stdout=subprocess.DEVNULL)
        wall = time.perf_counter() - t0
        times.append((max(wall - first, 1e-9), wall))
    return times


def build_info():
    """The commit the binary was built from, and whether src/ had uncommitted changes then."""
    try:
        head = sh("git", "rev-parse", "--short", "HEAD").strip()
        dirty = sh("git", "status", "--porcelain", "--", "src", "Cargo.toml", "Cargo.lock").strip()
    except (OSError, subprocess.CalledProcessError):
        return "?"
    return head + (" with uncommitted changes in src/" if dirty else "")


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
    mem = ""
    try:
        with open("/proc/meminfo") as f:
            kb = int(f.readline().split()[1])
            mem = f", {kb / 1024 / 1024:.0f} GiB RAM"
    except (OSError, ValueError, IndexError):
        pass
    return f"{os.cpu_count()} cores ({cpu}){mem}"


def after_service(brokers, name, mode, body, notes):
    """Lag, log problems and the metrics that should be zero, as notes."""
    # The input group's commits (the detection side's positions are in the changelog).
    group = name + "-group"
    lag = group_lag(brokers, [group])
    for (g, t), n in sorted(lag.items()):
        if n:
            notes.append(f"{name}: group `{g}` lags {n:,} records on `{t}` after the stop")
    if not lag:
        notes.append(f"{name}: group `{group}` has no committed offsets")
    count, first, eof = log_problems(name)
    if count:
        notes.append(f"{name}: {count} WARN/ERROR line(s) in target/load-run/{name}.log, "
                     f"first: `{first[0][:300]}`")
    if eof:
        notes.append(f"{name}: {eof} librdkafka `PartitionEOF` lines logged at ERROR "
                     "(rdkafka::client: `Global error: PartitionEOF`)")
    for metric in ("akwatch_records_rejected_total", "akwatch_late_records_total",
                   "akwatch_detect_forced_releases_total", "akwatch_changelog_errors_total",
                   "akwatch_delivery_failures_total", "akwatch_repartition_duplicates_total"):
        v = counter(body, metric)
        if v:
            notes.append(f"{name}: {metric} = {v:,.0f}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rate", type=int, default=5000, help="records/s of the latency runs")
    ap.add_argument("--runs", type=int, default=3, help="latency runs (0: none)")
    ap.add_argument("--seconds", type=int, default=20, help="length of each latency run")
    ap.add_argument("--throughput-repeat", type=int, default=40,
                    help="passes of the scenario in the throughput topic (0: no throughput run)")
    ap.add_argument("--partitions", type=int, default=3, help="partitions of each input topic")
    ap.add_argument("--internal-partitions", type=int, default=6,
                    help="kafka.internal_partitions (repartition and changelog topics)")
    ap.add_argument("--produce-rate", type=int, default=100000,
                    help="records/s filling the throughput topic (0: unpaced; librdkafka's sticky "
                         "partitioner may then put most of it in one partition)")
    ap.add_argument("--input", choices=("files", "ordered"), default="files",
                    help="files: the scenario's files as they are, --repeat passes (times go back "
                         "at each file set and pass); ordered: the passes in event-time order "
                         "throughout, each shifted after the one before (one JSON-lines file)")
    ap.add_argument("--key", choices=("none", "access-key"), default="none",
                    help="akwatch load --key (none: keyless, as forwarders send)")
    ap.add_argument("--modes", default="repartition,legacy",
                    help="akwatch modes of the throughput run, comma-separated: repartition, legacy")
    ap.add_argument("--latency-modes", default="repartition",
                    help="akwatch modes of the latency runs, comma-separated")
    ap.add_argument("--bare-runs", type=int, default=3,
                    help="runs of the bare consumer (kcat), best kept (0: none)")
    ap.add_argument("--timeout", type=int, default=300,
                    help="seconds each service may take to go through its input")
    ap.add_argument("--kafka-option", action="append", default=[], metavar="KEY=VALUE",
                    help="a librdkafka option for the services (kafka.options), repeatable")
    ap.add_argument("--config-line", action="append", default=[], metavar="YAML",
                    help="a top-level line added to the services' configuration, repeatable "
                         "(e.g. 'merge_queue_records: 100000')")
    ap.add_argument("--input-file", metavar="PATH",
                    help="throughput: this log file (--throughput-repeat passes) instead of the "
                         "bundled scenario, e.g. an alarm storm from benches/storm.py")
    ap.add_argument("--no-build", action="store_true", help="use target/release/akwatch as it is")
    ap.add_argument("--bin", action="append", default=[], metavar="NAME=PATH",
                    help="throughput: run this akwatch binary instead (repeatable; side by side on "
                         "the same topic, in the order given)")
    ap.add_argument("--keep-topics", action="store_true", help="do not delete the run's topics")
    a = ap.parse_args()
    modes = [m for m in a.modes.split(",") if m]
    latency_modes = [m for m in a.latency_modes.split(",") if m]
    for m in modes + latency_modes:
        if m not in MODES:
            ap.error(f"unknown mode {m!r} (repartition, legacy)")
    os.makedirs(WORK, exist_ok=True)
    if not a.no_build:
        sh("cargo", "build", "--release", "--locked", "-q")
    brokers = os.environ.get("KAFKA_BROKERS")
    started = False
    if not brokers:
        brokers = sh("bash", "scripts/kafka.sh", "start").strip().splitlines()[-1]
        started = True
    stamp = str(int(time.time()))
    events_per_pass = len(
        subprocess.run([BIN, "normalize", os.path.join(ROOT, "examples", "logs")],
                       cwd=ROOT, capture_output=True, text=True).stdout.splitlines())
    file_events = a.input_file and len(
        subprocess.run([BIN, "normalize", a.input_file],
                       cwd=ROOT, capture_output=True, text=True).stdout.splitlines())
    notes = []
    ms = lambda v: "n/a" if v is None else ("> 3600 s" if v == float("inf") else f"≤ {v * 1000:g} ms")
    label = {"repartition": f"akwatch, repartitioned ({a.internal_partitions} internal partitions)",
             "legacy": "akwatch, `kafka.repartition: false` (single instance)"}
    try:
        print(f"machine: {machine()}; broker and akwatch on it; brokers {brokers}; "
              + ("target/release/akwatch as found; tree now at " if a.no_build else
                 "akwatch release build of ") + f"{build_info()}\n")
        if a.kafka_option or a.config_line:
            print("services' configuration beyond the defaults: "
                  + ", ".join(f"`kafka.options.{o}`" for o in a.kafka_option)
                  + (", " if a.kafka_option and a.config_line else "")
                  + ", ".join(f"`{c}`" for c in a.config_line) + "\n")
        # 1. Throughput: one topic, read by the bare consumer and by each mode (a group each).
        if a.throughput_repeat > 0:
            name = f"load-tp-{stamp}"
            topic(brokers, name, a.partitions)
            sent, secs, prate = load(brokers, name, a.produce_rate, a.throughput_repeat, a.key,
                                     a.input == "ordered", a.input_file)
            events = (file_events or events_per_pass) * a.throughput_repeat
            ends = watermarks(brokers, name)
            text, warn = spread(ends)
            if warn:
                notes.append(f"{name}: {warn}")
            if sum(ends.values()) != sent:
                notes.append(f"{name}: {sum(ends.values()):,} records in the topic, {sent:,} sent")
            print(f"**Sustained throughput**: {sent:,} records ({a.throughput_repeat} passes of "
                  + (f"`{a.input_file}`" if a.input_file else f"the scenario, input `{a.input}`")
                  + f", key `{a.key}`) already in a {len(ends)}-partition topic (per "
                  f"partition: {text}; produced at {prate:,} records/s), {events:,} events\n")
            rows = []
            bare = None
            if a.bare_runs > 0 and shutil.which("kcat"):
                times = bare_consumer(brokers, name, a.bare_runs)
                net, wall = min(times)
                bare = sent / net
                version = sh("kcat", "-V").splitlines()[0].split(" - ")[0]
                rows.append((f"bare librdkafka consumer (`kcat -C -e`, best of {a.bare_runs}: "
                             + ", ".join(f"{sent / n:,.0f}" for n, _ in times) + "/s)",
                             f"{net:.2f} s (wall {wall:.2f} s)", bare, "–"))
            elif a.bare_runs > 0:
                notes.append("kcat not found (apt-get install kcat): no bare consumer figure")
            bins = [tuple(b.split("=", 1)) for b in a.bin] or [(None, None)]
            for mode, (bname, bpath) in [(m, b) for b in bins for m in modes]:
                sname = f"{name}-{mode}" + (f"-{bname}" if bname else "")
                proc, ops = service(brokers, sname, name, mode, a.internal_partitions,
                                    a.kafka_option, a.config_line, binary=bpath)
                first, consumed, detected, body = wait_done(ops, sent, events, a.timeout)
                assigned = counter(body, "akwatch_detect_partitions")
                why = stop(proc)
                if why:
                    notes.append(f"{sname}: the stop ended with {why}")
                alarms = counter(body, "akwatch_alarm_notifications_total")
                if detected is None:
                    notes.append(
                        f"{sname}: not through in {a.timeout} s: "
                        f"{counter(body, 'akwatch_records_consumed_total'):,.0f} of {sent:,} records "
                        f"consumed, {counter(body, 'akwatch_events_decoded_total'):,.0f} of "
                        f"{events:,} events detected")
                    rows.append((label[mode] + (f" — {bname}" if bname else ""), "not through",
                                 None, f"{alarms:,.0f}"))
                else:
                    eps = events / max(detected - first, 1e-9)
                    span = f"{detected - first:.2f} s"
                    if mode == "repartition":
                        span += (f" (ingest side: all consumed {consumed - first:.2f} s; "
                                 f"{assigned:.0f} detection partitions)")
                    rows.append((label[mode] + (f" — {bname}" if bname else ""), span, eps,
                                 f"{alarms:,.0f}"))
                after_service(brokers, sname, mode, body, notes)
            print("| consumer | first record → last event detected | events/s | "
                  "÷ bare consumer | alarms |")
            print("|---|---:|---:|---:|---:|")
            for what, span, eps, alarms in rows:
                ratio = "n/a" if bare is None or eps is None else f"{eps / bare:.2f}"
                print(f"| {what} | {span} | "
                      f"{'n/a' if eps is None else f'**{eps:,.0f}**'} | {ratio} | {alarms} |")
            print()
            sys.stdout.flush()
        # 2. Latency at a fixed rate.
        if a.runs > 0:
            repeat = max(1, round(a.rate * a.seconds / max(events_per_pass, 1)))
            print(f"**Latency**: {a.runs} run(s) per mode at {a.rate:,} records/s, {repeat} passes "
                  f"of the scenario each, input `{a.input}`, key `{a.key}`, {a.partitions}-partition input topics\n")
            print("| mode | run | records (per partition) | produced at | alarms | alarm p50 "
                  "| alarm p99 | alarm max bucket | records p50 | records p99 | records p99.9 |")
            print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
            for mode in latency_modes:
                for run in range(1, a.runs + 1):
                    name = f"load-lat-{stamp}-{mode[:3]}{run}"
                    topic(brokers, name, a.partitions)
                    proc, ops = service(brokers, name, name, mode, a.internal_partitions,
                                        a.kafka_option, a.config_line)
                    if mode == "repartition":
                        if wait_detect_assigned(ops, a.internal_partitions) is None:
                            notes.append(f"{name}: detection partitions not all assigned in 60 s")
                    time.sleep(3)  # the group's first assignment
                    sent, secs, rate = load(brokers, name, a.rate, repeat, a.key,
                                            a.input == "ordered")
                    events = events_per_pass * repeat
                    _, _, detected, _ = wait_done(ops, sent, events, a.timeout, poll=0.2)
                    if detected is None:
                        notes.append(f"{name}: not through in {a.timeout} s")
                    time.sleep(1)
                    body = metrics(ops)
                    why = stop(proc)
                    if why:
                        notes.append(f"{name}: the stop ended with {why}")
                    text, warn = spread(watermarks(brokers, name))
                    if warn:
                        notes.append(f"{name}: {warn}")
                    after_service(brokers, name, mode, body, notes)
                    ab, ac = histogram(body, "akwatch_ingest_to_alarm_seconds")
                    rb, rc = histogram(body, "akwatch_ingest_to_done_seconds")
                    top = next((le for le, c in ab if c >= ac), None)
                    print(f"| {mode} | {run} | {sent:,} ({text}) | {rate:,}/s | {int(ac)} "
                          f"| {ms(quantile(ab, ac, 0.5))} | {ms(quantile(ab, ac, 0.99))} "
                          f"| {ms(top)} | {ms(quantile(rb, rc, 0.5))} "
                          f"| {ms(quantile(rb, rc, 0.99))} | {ms(quantile(rb, rc, 0.999))} |")
                    sys.stdout.flush()
            print()
            if "repartition" in latency_modes:
                print("(*records*, repartitioned: record timestamp → its events acknowledged by the "
                      "repartition topic; *alarm*: → the alarm acknowledged, after detection)\n")
        if notes:
            print("Notes:\n")
            for n in notes:
                print(f"- {n}")
        else:
            print("Notes: no lag after the stops, no WARN/ERROR in the services' logs, "
                  "nothing rejected, late or forced.")
    finally:
        if not a.keep_topics and not started:
            kafka_tool("org.apache.kafka.tools.TopicCommand", "--bootstrap-server", brokers,
                       "--delete", "--topic", f"load-(tp|lat)-{stamp}.*", check=False)
        if started:
            subprocess.run(["bash", "scripts/kafka.sh", "stop"], cwd=ROOT)


if __name__ == "__main__":
    main()
