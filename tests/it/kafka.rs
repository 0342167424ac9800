//! End to end on a real Apache Kafka broker (`scripts/kafka.sh`, started by the test command,
//! which exports `KAFKA_BROKERS`). Without a broker the test prints a notice and skips, unless
//! `AKWATCH_REQUIRE_KAFKA` is set (the test command sets it).

use std::collections::BTreeSet;
use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Headers;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};

use akwatch::replay::{ReplayOptions, run, setup};

use crate::repo;

pub(crate) fn brokers() -> Option<String> {
    match std::env::var("KAFKA_BROKERS") {
        Ok(b) if !b.is_empty() => Some(b),
        _ if std::env::var_os("AKWATCH_REQUIRE_KAFKA").is_some() => {
            panic!("AKWATCH_REQUIRE_KAFKA is set but KAFKA_BROKERS is not")
        }
        _ => {
            eprintln!(
                "notice: KAFKA_BROKERS not set (bash scripts/kafka.sh start); Kafka end-to-end test skipped"
            );
            None
        }
    }
}

/// The records of one cloud's bundled logs, as the framer hands them out.
fn cloud_records(cloud: &str) -> Vec<Vec<u8>> {
    akwatch::source::read_records(&[repo()
        .join("examples/logs")
        .join(cloud)
        .display()
        .to_string()])
    .unwrap()
}

/// The keys (alarm ids) of alarm-topic messages.
pub(crate) fn alarm_keys(msgs: &[rdkafka::message::OwnedMessage]) -> Vec<String> {
    msgs.iter()
        .filter_map(|m| m.key())
        .map(|k| String::from_utf8_lossy(k).into_owned())
        .collect()
}

/// Until every expected alarm id has been read.
pub(crate) fn all_present(
    expected: &BTreeSet<String>,
) -> impl Fn(&[rdkafka::message::OwnedMessage]) -> bool + '_ {
    move |got| {
        let ids: BTreeSet<String> = alarm_keys(got).into_iter().collect();
        expected.iter().all(|e| ids.contains(e))
    }
}

/// The alarm ids `akwatch replay` creates for the bundled scenario.
pub(crate) fn replay_alarm_ids() -> BTreeSet<String> {
    let options = ReplayOptions::bundled(&repo().join("examples"), &repo().join("rules"));
    let mut s = setup(&options).unwrap();
    let summary = run(&mut s, &options.inputs, None, &mut |_| {}, &mut |_| {}).unwrap();
    summary.alarms.into_iter().map(|a| a.alarm_id).collect()
}

/// The configuration risks `akwatch replay` lists for the bundled scenario, as JSON.
fn replay_risks() -> BTreeSet<String> {
    let options = ReplayOptions::bundled(&repo().join("examples"), &repo().join("rules"));
    let mut s = setup(&options).unwrap();
    let summary = run(&mut s, &options.inputs, None, &mut |_| {}, &mut |_| {}).unwrap();
    summary
        .risks
        .iter()
        .map(|r| serde_json::to_string(r).unwrap())
        .collect()
}

pub(crate) fn consume_all(
    brokers: &str,
    topic: &str,
    want: impl Fn(&[rdkafka::message::OwnedMessage]) -> bool,
    timeout: Duration,
) -> Vec<rdkafka::message::OwnedMessage> {
    // Every partition from the beginning, by assignment: no group to join (a group's join waits
    // for the previous reader's session to end).
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", format!("{topic}-reader"))
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let md = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in md.topics()[0].partitions() {
        tpl.add_partition_offset(topic, p.id(), Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&tpl).unwrap();
    let start = Instant::now();
    let mut got = Vec::new();
    while start.elapsed() < timeout && !want(&got) {
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(200)) {
            got.push(m.detach());
        }
    }
    got
}

type ServiceLog = (
    std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
    std::thread::JoinHandle<()>,
);

/// The stderr of each service process, by pid, drained by a thread of its own.
static SERVICE_LOGS: std::sync::LazyLock<
    std::sync::Mutex<std::collections::HashMap<u32, ServiceLog>>,
> = std::sync::LazyLock::new(Default::default);

/// Everything an exited service process wrote on stderr.
fn service_log(child: &std::process::Child) -> String {
    let Some((log, drain)) = SERVICE_LOGS.lock().unwrap().remove(&child.id()) else {
        return String::new();
    };
    let _ = drain.join();
    let bytes = log.lock().unwrap().clone();
    String::from_utf8_lossy(&bytes).into_owned()
}

/// What a running (or exited) service process has written on stderr so far, its last `max`
/// characters.
pub(crate) fn service_log_tail(child: &std::process::Child, max: usize) -> String {
    let logs = SERVICE_LOGS.lock().unwrap();
    let Some((log, _)) = logs.get(&child.id()) else {
        return String::new();
    };
    let text = String::from_utf8_lossy(&log.lock().unwrap()).into_owned();
    text.chars()
        .skip(text.chars().count().saturating_sub(max))
        .collect()
}

/// Polls `/readyz` on `ops` until it answers `want`; returns how long that took and the body.
/// Panics after `limit`, or as soon as the service has exited, with the end of its log.
fn ready_within(
    child: &mut std::process::Child,
    ops: &str,
    want: u16,
    limit: Duration,
) -> (Duration, String) {
    let start = Instant::now();
    loop {
        let (status, body) = http_get(ops, "/readyz");
        if status == want {
            return (start.elapsed(), body);
        }
        let exited = child.try_wait().unwrap();
        assert!(
            exited.is_none() && start.elapsed() < limit,
            "/readyz still {status} ({body}) after {:?}, wanted {want}; the service {}; its log ends:\n{}",
            start.elapsed(),
            exited.map_or("is running".to_owned(), |s| format!("exited: {s}")),
            service_log_tail(child, 6000)
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// One test's topics, group and service processes.
pub(crate) struct Harness {
    pub(crate) brokers: String,
    prefix: String,
    rt: tokio::runtime::Runtime,
    admin: AdminClient<DefaultClientContext>,
    producer: FutureProducer,
    dir: std::path::PathBuf,
    /// The ops address to give the service, if any.
    pub(crate) ops: Option<String>,
    /// Credential-report files and directories (default: the bundled reports).
    reports: Vec<std::path::PathBuf>,
    /// More top-level configuration lines.
    pub(crate) extra: String,
    /// More lines of the `kafka:` section (two-space indented).
    pub(crate) kafka_extra: String,
    /// Read the test's report topic.
    report_topic: bool,
    /// More librdkafka options (`kafka.options`).
    options: Vec<(&'static str, String)>,
    /// Environment of the service processes.
    env: Vec<(&'static str, String)>,
    /// The rules directory and policy directories (default: the bundled ones and the
    /// examples').
    pub(crate) rules: Option<std::path::PathBuf>,
    pub(crate) policies: Option<Vec<std::path::PathBuf>>,
}

const CLOUDS: [&str; 3] = ["aws", "alibaba", "tencent"];

impl Harness {
    pub(crate) fn new(brokers: &str, tag: &str) -> Harness {
        Harness::with_partitions(brokers, tag, 1)
    }

    /// Input topics of `partitions` partitions each.
    fn with_partitions(brokers: &str, tag: &str, partitions: i32) -> Harness {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .unwrap();
        let prefix = format!(
            "it-{tag}-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_millis()
        );
        let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .create()
            .unwrap();
        let h = Harness {
            brokers: brokers.to_owned(),
            dir: std::env::temp_dir().join(format!("{prefix}-dir")),
            producer: ClientConfig::new()
                .set("bootstrap.servers", brokers)
                .set("linger.ms", "5")
                .create()
                .unwrap(),
            prefix,
            rt,
            admin,
            ops: None,
            reports: vec![repo().join("examples/reports")],
            extra: String::new(),
            kafka_extra: String::new(),
            report_topic: false,
            options: Vec::new(),
            env: Vec::new(),
            rules: None,
            policies: None,
        };
        let names = h.topics();
        let new: Vec<NewTopic> = names
            .iter()
            .map(|n| {
                let input = CLOUDS.iter().any(|c| *n == h.topic(c));
                NewTopic::new(
                    n,
                    if input { partitions } else { 1 },
                    TopicReplication::Fixed(1),
                )
            })
            .collect();
        h.rt.block_on(h.admin.create_topics(&new, &AdminOptions::new()))
            .unwrap();
        std::fs::create_dir_all(&h.dir).unwrap();
        h
    }

    pub(crate) fn topic(&self, s: &str) -> String {
        format!("{}-{s}", self.prefix)
    }

    /// The bundled scenario's records, by cloud topic.
    pub(crate) fn stream(&self) -> Vec<(String, Vec<Vec<u8>>)> {
        CLOUDS
            .iter()
            .map(|c| (self.topic(c), cloud_records(c)))
            .collect()
    }

    /// Produces, of each topic's records, the part between the fractions `from` and `to`.
    pub(crate) fn produce_part(&self, stream: &[(String, Vec<Vec<u8>>)], from: f64, to: f64) {
        for (topic, records) in stream {
            let at = |f: f64| ((records.len() as f64) * f) as usize;
            self.produce(topic, &records[at(from)..at(to)]);
        }
    }

    fn topics(&self) -> Vec<String> {
        [
            "aws", "alibaba", "tencent", "alarms", "dlq", "reports", "risks",
        ]
        .iter()
        .map(|s| self.topic(s))
        .collect()
    }

    pub(crate) fn produce(&self, topic: &str, records: &[Vec<u8>]) {
        self.rt.block_on(async {
            let futures: Vec<_> = records
                .iter()
                .map(|r| {
                    self.producer.send(
                        FutureRecord::<(), _>::to(topic).payload(r.as_slice()),
                        Duration::from_secs(30),
                    )
                })
                .collect();
            for f in futures {
                f.await.unwrap();
            }
        });
    }

    /// The service's configuration; `state`: its state directory under the test's directory.
    fn config(&self, state: Option<&str>) -> std::path::PathBuf {
        let r = repo();
        let mut extra = match state {
            Some(sub) => format!("state_dir: {}\n", self.dir.join(sub).display()),
            None => String::new(),
        };
        if let Some(ops) = &self.ops {
            extra.push_str(&format!("ops_addr: {ops}\n"));
        }
        extra.push_str(&self.extra);
        let report_topic = if self.report_topic {
            format!("  report_topic: {}\n", self.topic("reports"))
        } else {
            String::new()
        };
        let reports: Vec<String> = self
            .reports
            .iter()
            .map(|p| p.display().to_string())
            .collect();
        let options: String = self
            .options
            .iter()
            .map(|(k, v)| format!("    {k}: '{v}'\n"))
            .collect();
        let config = format!(
            "kafka:\n{}  brokers: {}\n  group_id: {}-akwatch\n  options:\n    session.timeout.ms: '6000'\n    heartbeat.interval.ms: '1000'\n{options}  inputs:\n    - topic: {}\n      provider: aws\n    - topic: {}\n    - topic: {}\n  alarm_topic: {}\n  dlq_topic: {}\n{report_topic}rules: {}\npolicies: [{}]\nlists: [{}, {}]\ngeoip: [{}]\nreports: [{}]\nleaks: [{}]\n{extra}",
            self.kafka_extra,
            self.brokers,
            self.prefix,
            self.topic("aws"),
            self.topic("alibaba"),
            self.topic("tencent"),
            self.topic("alarms"),
            self.topic("dlq"),
            self.rules
                .clone()
                .unwrap_or_else(|| r.join("rules"))
                .display(),
            self.policies
                .clone()
                .unwrap_or_else(|| vec![r.join("rules/policies"), r.join("examples/policies")])
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", "),
            r.join("rules/lists").display(),
            r.join("examples/lists").display(),
            r.join("examples/geo.mmdb").display(),
            reports.join(", "),
            r.join("examples/leaks").display(),
        );
        let path = self
            .dir
            .join(format!("akwatch-{}.yaml", state.unwrap_or("nostate")));
        std::fs::write(&path, config).unwrap();
        path
    }

    pub(crate) fn spawn(&self, state: bool) -> std::process::Child {
        self.spawn_with(state.then_some("state"))
    }

    fn spawn_with(&self, state: Option<&str>) -> std::process::Child {
        let mut child = Command::new(env!("CARGO_BIN_EXE_akwatch"))
            .args(["run", "--config", self.config(state).to_str().unwrap()])
            .envs(self.env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // Drained all along: a service whose log fills the pipe would block writing it.
        let mut pipe = child.stderr.take().unwrap();
        let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = log.clone();
        let drain = std::thread::spawn(move || {
            let mut buf = [0u8; 8192];
            while let Ok(n) = pipe.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock().unwrap().extend_from_slice(&buf[..n]);
            }
        });
        SERVICE_LOGS
            .lock()
            .unwrap()
            .insert(child.id(), (log, drain));
        child
    }

    pub(crate) fn signal(child: &mut std::process::Child, signal: &str) -> String {
        assert!(
            Command::new("kill")
                .args([signal, &child.id().to_string()])
                .status()
                .unwrap()
                .success()
        );
        // Bounded: a service that does not stop is a failure, not a hung test run.
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut hung = false;
        let exit = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            if Instant::now() > deadline {
                hung = true;
                child.kill().unwrap();
                break child.wait().unwrap();
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        let stderr = service_log(child);
        assert!(
            !hung,
            "akwatch run did not stop within 60 s of {signal}: {stderr}"
        );
        if signal == "-TERM" {
            assert!(exit.success(), "akwatch run exited with {exit}: {stderr}");
        }
        stderr
    }

    /// Alarm ids on the alarm topic (all notifications, with repeats), read until `expected` are
    /// all there and a little longer, or the timeout.
    fn alarm_ids(&self, expected: &BTreeSet<String>, timeout: Duration) -> Vec<String> {
        alarm_keys(&consume_all(
            &self.brokers,
            &self.topic("alarms"),
            all_present(expected),
            timeout,
        ))
    }
}

impl Harness {
    /// Asserts that the service's group has committed the end of every partition of the input
    /// topics (`partitions` each; an empty partition may have no commit); returns the sum.
    pub(crate) fn committed_at_end(&self, partitions: i32) -> usize {
        let checker: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &self.brokers)
            .set("group.id", format!("{}-akwatch", self.prefix))
            .create()
            .unwrap();
        let mut tpl = TopicPartitionList::new();
        for c in CLOUDS {
            for p in 0..partitions {
                tpl.add_partition(&self.topic(c), p);
            }
        }
        let committed = checker
            .committed_offsets(tpl, Duration::from_secs(10))
            .unwrap();
        let mut sum = 0i64;
        for e in committed.elements() {
            let (_, high) = checker
                .fetch_watermarks(e.topic(), e.partition(), Duration::from_secs(10))
                .unwrap();
            let at = match e.offset() {
                Offset::Offset(at) => at,
                _ if high == 0 => 0,
                other => panic!("{}/{} committed {other:?}", e.topic(), e.partition()),
            };
            assert_eq!(at, high, "lag on {}/{}", e.topic(), e.partition());
            sum += at;
        }
        sum as usize
    }
}

/// A header of a message, as text.
fn header(m: &rdkafka::message::OwnedMessage, key: &str) -> Option<String> {
    m.headers()?
        .iter()
        .find(|h| h.key == key)
        .and_then(|h| h.value)
        .map(|v| String::from_utf8_lossy(v).into_owned())
}

impl Drop for Harness {
    fn drop(&mut self) {
        let mut names = self.topics();
        // The service's internal topics (scale-out).
        names.push(format!("{}-akwatch-repartition", self.prefix));
        names.push(format!("{}-akwatch-changelog", self.prefix));
        let _ = self.rt.block_on(self.admin.delete_topics(
            &names.iter().map(String::as_str).collect::<Vec<_>>(),
            &AdminOptions::new(),
        ));
        std::fs::remove_dir_all(&self.dir).ok();
    }
}

fn assert_same_alarms(got: &[String], expected: &BTreeSet<String>) -> usize {
    let ids: BTreeSet<String> = got.iter().cloned().collect();
    let missing: Vec<_> = expected.difference(&ids).collect();
    let extra: Vec<_> = ids.difference(expected).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "missing {missing:?}, extra {extra:?} (of {} expected)",
        expected.len()
    );
    got.len() - ids.len()
}

/// `kill -9` in the middle of the stream, then a restart from the saved state (the changelog
/// topic, scale-out; the local checkpoint with `repartition: false`): every alarm replay raises
/// is on the topic, no other, and repeats carry the same id.
fn kill_minus_nine_then_restart(scale_out: bool) {
    let Some(brokers) = brokers() else { return };
    let mut h = Harness::new(&brokers, if scale_out { "kill9" } else { "kill9-local" });
    if !scale_out {
        h.kafka_extra = "  repartition: false\n".to_owned();
    }
    let ops = format!("127.0.0.1:{}", free_port());
    h.ops = Some(ops.clone());
    let expected = replay_alarm_ids();
    let all = h.stream();
    h.produce_part(&all, 0.0, 0.6);
    let mut first = h.spawn(true);
    let checkpoint = h.dir.join("state/checkpoint.json.gz");
    let start = Instant::now();
    let saved = || {
        if scale_out {
            metric_value(&ops, "akwatch_changelog_snapshot_bytes_total").is_some_and(|v| v > 0.0)
        } else {
            checkpoint.exists()
        }
    };
    while !saved() && start.elapsed() < Duration::from_secs(60) {
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(saved(), "no state saved after 60 s");
    std::thread::sleep(Duration::from_secs(2));
    Harness::signal(&mut first, "-KILL");
    h.produce_part(&all, 0.6, 1.0);
    let mut second = h.spawn(true);
    h.alarm_ids(&expected, Duration::from_secs(120));
    std::thread::sleep(Duration::from_secs(6));
    let stderr = Harness::signal(&mut second, "-TERM");
    let restored = if scale_out {
        "restored a partition's detection state from the changelog"
    } else {
        "restored the checkpoint"
    };
    assert!(stderr.contains(restored), "{stderr}");
    let got = h.alarm_ids(&expected, Duration::from_secs(30));
    let repeats = assert_same_alarms(&got, &expected);
    eprintln!(
        "kill -9 (scale-out {scale_out}): {} alarms, {} notifications ({repeats} beyond one per alarm: updates, and re-sends of work after the last saved state, all with the alarm's own id)",
        expected.len(),
        got.len()
    );
}

#[test]
fn kill_minus_nine_then_restart_loses_no_alarm_and_invents_none() {
    kill_minus_nine_then_restart(true);
}

#[test]
fn kill_minus_nine_then_restart_with_a_local_state_dir_loses_no_alarm() {
    kill_minus_nine_then_restart(false);
}

/// The value of a metric line without labels on the ops port, if it is there.
fn metric_value(ops: &str, name: &str) -> Option<f64> {
    let (status, body) = http_get(ops, "/metrics");
    if status != 200 {
        return None;
    }
    body.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// A clean restart keeps what the keys did before it: their IPs are not "new" again and no
/// alarm appears that one continuous run would not raise.
#[test]
fn after_a_clean_restart_known_ips_are_not_new() {
    let Some(brokers) = brokers() else { return };
    let h = Harness::new(&brokers, "restart");
    let expected = replay_alarm_ids();
    let all = h.stream();
    h.produce_part(&all, 0.0, 0.5);
    let mut first = h.spawn(true);
    std::thread::sleep(Duration::from_secs(8));
    Harness::signal(&mut first, "-TERM");
    h.produce_part(&all, 0.5, 1.0);
    let mut second = h.spawn(true);
    let got = h.alarm_ids(&expected, Duration::from_secs(120));
    Harness::signal(&mut second, "-TERM");
    assert_same_alarms(&got, &expected);
}

/// A GET on the ops port (plain HTTP/1.1, no client library needed).
pub(crate) fn http_get(addr: &str, path: &str) -> (u16, String) {
    use std::io::Write;
    // Status 0: no answer (not listening yet, or the connection failed).
    let Ok(mut stream) = std::net::TcpStream::connect(addr) else {
        return (0, String::new());
    };
    let mut response = String::new();
    if write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .and_then(|()| stream.read_to_string(&mut response))
    .is_err()
    {
        return (0, response);
    }
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (status, response)
}

/// `/metrics` once the lag of all three input topics is zero (or after 30 s: the caller checks).
fn metrics_once_lag_is_zero(ops: &str) -> String {
    let start = Instant::now();
    loop {
        let (status, body) = http_get(ops, "/metrics");
        assert_eq!(status, 200);
        let lag: Vec<&str> = body
            .lines()
            .filter(|l| l.starts_with("akwatch_consumer_lag_records{"))
            .collect();
        // One series per assigned partition; every input topic must have reported.
        let topics: std::collections::BTreeSet<&str> = lag
            .iter()
            .filter_map(|l| l.split("topic=\"").nth(1)?.split('"').next())
            .collect();
        if (topics.len() == 3 && lag.iter().all(|l| l.ends_with(" 0")))
            || start.elapsed() > Duration::from_secs(30)
        {
            return body;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// A port free to listen on, below Linux's ephemeral range (32768-60999): a port the kernel
/// handed out for `bind(0)` could be taken by any outgoing connection between this call and
/// the service binding it (tests run in parallel, each with its Kafka clients). Ports are taken
/// in turn from a range that depends on the process id, so concurrent test runs differ too.
pub(crate) fn free_port() -> u16 {
    static NEXT: std::sync::atomic::AtomicU16 = std::sync::atomic::AtomicU16::new(0);
    let base = 21000 + (std::process::id() % 100) as u16 * 100;
    loop {
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        assert!(n < 100, "no free port in {base}..{}", base + 100);
        if std::net::TcpListener::bind(("127.0.0.1", base + n)).is_ok() {
            return base + n;
        }
    }
}

#[test]
fn run_on_kafka_gives_the_replay_alarms_dead_letters_metrics_and_zero_lag() {
    let Some(brokers) = brokers() else { return };
    let mut h = Harness::new(&brokers, "run");
    let ops = format!("127.0.0.1:{}", free_port());
    h.ops = Some(ops.clone());
    h.kafka_extra = format!("  risk_topic: {}\n", h.topic("risks"));
    let expected = replay_alarm_ids();
    // The bundled scenario into one topic per cloud, and malformed records among the AWS ones.
    let malformed: [&[u8]; 3] = [
        b"not json at all",
        br#"{"eventName": 42, "awsRegion": "us-east-1"}"#,
        br#"{"Records": [{"eventTime": "#,
    ];
    let mut sent = 0usize;
    let mut expected_rejects = 0usize;
    for cloud in CLOUDS {
        let mut records = cloud_records(cloud);
        if cloud == "aws" {
            for (n, at) in [500usize, 1500, 2500].iter().enumerate() {
                records.insert(*at, malformed[n].to_vec());
                expected_rejects += 1;
            }
        }
        sent += records.len();
        h.produce(&h.topic(cloud), &records);
    }
    let mut child = h.spawn(false);

    // Every alarm replay raises arrives on the alarm topic, keyed by its id, and no other.
    let alarms = consume_all(
        &brokers,
        &h.topic("alarms"),
        all_present(&expected),
        Duration::from_secs(120),
    );
    let ids = alarm_keys(&alarms);
    assert_same_alarms(&ids, &expected);
    // The configuration risks of the reports in use, as `replay` lists them, on the risk topic.
    let expected_risks = replay_risks();
    let risks = consume_all(
        &brokers,
        &h.topic("risks"),
        |got| got.len() >= expected_risks.len(),
        Duration::from_secs(60),
    );
    let got_risks: BTreeSet<String> = risks
        .iter()
        .map(|m| String::from_utf8_lossy(m.payload().unwrap()).into_owned())
        .collect();
    assert_eq!(got_risks, expected_risks);
    for m in &alarms {
        let v: serde_json::Value = serde_json::from_slice(m.payload().unwrap()).unwrap();
        assert_eq!(
            v["alarm_id"].as_str().unwrap().as_bytes(),
            m.key().unwrap(),
            "alarms are keyed by their id"
        );
    }

    // Every malformed record is on the dead-letter topic, unchanged, with reason and origin.
    let dead = consume_all(
        &brokers,
        &h.topic("dlq"),
        |got| got.len() >= expected_rejects,
        Duration::from_secs(60),
    );
    assert_eq!(dead.len(), expected_rejects);
    for m in &dead {
        assert!(
            malformed.contains(&m.payload().unwrap()),
            "unchanged: {:?}",
            m.payload()
        );
        let get = |k: &str| header(m, k);
        assert!(get("akwatch-reason").is_some_and(|r| !r.is_empty()));
        assert_eq!(get("akwatch-origin-topic"), Some(h.topic("aws")));
        assert!(
            get("akwatch-origin-offset")
                .unwrap()
                .parse::<i64>()
                .unwrap()
                >= 0
        );
    }

    // The ops port: health, readiness, metrics with bounded labels, lag back to zero.
    assert_eq!(http_get(&ops, "/healthz").0, 200);
    assert_eq!(http_get(&ops, "/readyz").0, 200);
    let metrics = metrics_once_lag_is_zero(&ops);
    for needle in [
        "akwatch_records_rejected_total{provider=\"aws\",reason=\"bad_json\"} 1",
        "akwatch_records_rejected_total{provider=\"aws\",reason=\"bad_field\"} 1",
        "akwatch_records_rejected_total{provider=\"aws\",reason=\"truncated\"} 1",
        "akwatch_alarm_notifications_total{rule=\"ak.audit_tamper\",severity=\"critical\"}",
        "akwatch_allowlisted_hits_total{rule=\"ak.sensitive_api\"}",
        "akwatch_event_to_alarm_seconds_bucket",
        "akwatch_state_keys",
        "akwatch_state_evicted_keys_total 0",
        "akwatch_report_accounts 3",
        "akwatch_ingest_to_done_seconds_bucket",
    ] {
        assert!(
            metrics.contains(needle),
            "{needle} missing from /metrics:\n{metrics}"
        );
    }
    assert!(
        metrics
            .lines()
            .filter(|l| l.starts_with("akwatch_consumer_lag_records{"))
            .all(|l| l.ends_with(" 0")),
        "{metrics}"
    );
    assert!(
        !metrics.contains("AKIA") && !metrics.contains("198.18."),
        "no key or IP in metric labels"
    );

    // A clean stop commits everything: the group's lag is zero.
    Harness::signal(&mut child, "-TERM");
    assert_eq!(h.committed_at_end(1), sent);
}

/// The tests that stop and start a broker of their own share one (port 19292): one at a time.
static OWN_BROKER: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Runs `scripts/kafka.sh` for the outage tests' own broker (port 19292, its own data).
fn outage_broker(command: &str) -> String {
    let out = Command::new("bash")
        .arg(repo().join("scripts/kafka.sh"))
        .arg(command)
        .env("KAFKA_PORT", "19292")
        .env("KAFKA_ROOT", "target/kafka-outage")
        .current_dir(repo())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "kafka.sh {command}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .last()
        .unwrap_or_default()
        .to_owned()
}

/// The broker stops in the middle of the stream and comes back: the service waits, retries,
/// and every alarm replay raises is still on the topic (and no other).
#[test]
fn a_broker_outage_mid_stream_loses_nothing() {
    if brokers().is_none() {
        return;
    }
    let _own = OWN_BROKER
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let brokers = outage_broker("start");
    let result = std::panic::catch_unwind(|| {
        let mut h = Harness::new(&brokers, "outage");
        let ops = format!("127.0.0.1:{}", free_port());
        h.ops = Some(ops.clone());
        let expected = replay_alarm_ids();
        let all = h.stream();
        h.produce_part(&all, 0.0, 0.5);
        let mut child = h.spawn(true);
        ready_within(&mut child, &ops, 200, Duration::from_secs(60));
        std::thread::sleep(Duration::from_secs(2));
        outage_broker("pause");
        // Readiness follows the broker: unready while it is gone, ready again after.
        let (down, why) = ready_within(&mut child, &ops, 503, Duration::from_secs(40));
        assert!(why.contains("broker"), "{why}");
        std::thread::sleep(Duration::from_secs(4));
        outage_broker("resume");
        let (up, _) = ready_within(&mut child, &ops, 200, Duration::from_secs(60));
        eprintln!(
            "/readyz: unready {down:?} after the broker stopped ({why}); ready {up:?} after it came back"
        );
        h.produce_part(&all, 0.5, 1.0);
        h.alarm_ids(&expected, Duration::from_secs(180));
        std::thread::sleep(Duration::from_secs(6));
        let stderr = Harness::signal(&mut child, "-TERM");
        let got = h.alarm_ids(&expected, Duration::from_secs(30));
        let ids: BTreeSet<String> = got.iter().cloned().collect();
        if !expected.is_subset(&ids) {
            let tail: String = stderr
                .chars()
                .skip(stderr.chars().count().saturating_sub(6000))
                .collect();
            panic!(
                "{} of {} alarms missing; the service's log ends:\n{tail}",
                expected.difference(&ids).count(),
                expected.len()
            );
        }
        assert_same_alarms(&got, &expected);
        eprintln!(
            "broker outage: {} alarms, all delivered; the service logged {} retries",
            expected.len(),
            stderr.matches("retrying").count()
        );
    });
    outage_broker("stop");
    if let Err(e) = result {
        std::panic::resume_unwind(e);
    }
}

/// A Tencent CAM credential report (the console's CSV columns) of (user, uin, key, status,
/// may-be-at-risk) rows.
fn tencent_report(rows: &[(&str, &str, &str, &str, bool)]) -> Vec<u8> {
    let mut csv = String::from(
        "AccountID,Username,UserType,CreationTime,PasswordEnabled,PasswordLastRotation,LoginConsoleActive,LoginProtectionActive,OperationProtectionActive,MFADeviceActive,Abnormal LoginsNumWithin30Days,AccessKey1SecretId,AccessKey1MayBeAtRisk,AccessKey1CreationTime,AccessKey1Status,AccessKey1lastUsedDate,AccessKey1CreatedOver90Days,AccessKey1CreatedOver30Days\n",
    );
    for (user, uin, key, status, risk) in rows {
        let risk = if *risk { "TRUE" } else { "FALSE" };
        csv.push_str(&format!(
            "{uin},{user},sub-user,2025/1/3 8:00:00,FALSE,FALSE,FALSE,FALSE,FALSE,FALSE,FALSE,{key},{risk},2025/1/3 8:00:00,{status},2025/6/1 8:00:00,TRUE,TRUE\n"
        ));
    }
    csv.into_bytes()
}

/// Alarms (parsed) on the alarm topic, read until `want` holds or the timeout.
fn alarms_until(
    h: &Harness,
    want: impl Fn(&[serde_json::Value]) -> bool,
    timeout: Duration,
) -> Vec<serde_json::Value> {
    let parse = |got: &[rdkafka::message::OwnedMessage]| -> Vec<serde_json::Value> {
        got.iter()
            .filter_map(|m| serde_json::from_slice(m.payload()?).ok())
            .collect()
    };
    parse(&consume_all(
        &h.brokers,
        &h.topic("alarms"),
        |got| want(&parse(got)),
        timeout,
    ))
}

fn has_alarm(alarms: &[serde_json::Value], rule: &str, key: &str) -> bool {
    alarms
        .iter()
        .any(|a| a["rule_id"] == rule && a["access_key_id"] == key)
}

/// Credential reports change while the service runs: a newer report on the report topic replaces
/// the account's older one (a key disabled since is used: alarm; a key newly flagged at risk:
/// leak alarm), a report file dropped into the watched directory is read within the rescan
/// interval, and a broken one is counted and leaves the rest alone.
#[test]
fn credential_reports_from_the_topic_and_a_watched_directory_are_swapped_in_while_running() {
    let Some(brokers) = brokers() else { return };
    let mut h = Harness::new(&brokers, "reports");
    let ops = format!("127.0.0.1:{}", free_port());
    h.ops = Some(ops.clone());
    let watched = h.dir.join("reports");
    std::fs::create_dir_all(&watched).unwrap();
    h.reports = vec![watched.clone()];
    h.report_topic = true;
    h.extra = "reports_rescan_seconds: 1\n".to_owned();
    let used = "AKIDSIM00000000000000000000000000003";
    let flagged = "AKIDTESTREPORTTOPIC00000000000000001";
    let account = b"tencent:100011110000".to_vec();
    let publish = |report: Vec<u8>| {
        h.rt.block_on(async {
            h.producer
                .send(
                    FutureRecord::to(&h.topic("reports"))
                        .key(&account)
                        .payload(&report),
                    Duration::from_secs(30),
                )
                .await
                .unwrap();
        });
    };
    // Published before the service starts: read before the first event.
    publish(tencent_report(&[
        ("web-00003", "200000000003", used, "Active", false),
        ("ops-1", "200000000099", flagged, "Active", false),
    ]));
    let mut child = h.spawn(false);
    let event = |id: &str| {
        format!(
            r#"{{"eventID":"{id}","eventName":"DescribeVpcs","eventRegion":"ap-shanghai","eventSource":"vpc.tencentcloudapi.com","eventTime":1748831232,"eventType":"ApiCall","eventVersion":2,"requestID":"{id}","sourceIPAddress":"198.18.56.144","userAgent":"TencentCloudSDK/Go 1.0.800","errorCode":"0","userIdentity":{{"accountId":"100011110000","principalId":"200000000003","secretId":"{used}","type":"CAMUser","userName":"web-00003"}}}}"#
        )
        .into_bytes()
    };
    h.produce(&h.topic("tencent"), &[event("before-00000001")]);

    // A newer report of the same account: the used key is disabled, another one at risk.
    std::thread::sleep(Duration::from_millis(50));
    publish(tencent_report(&[
        ("web-00003", "200000000003", used, "Disable", false),
        ("ops-1", "200000000099", flagged, "Active", true),
    ]));
    let got = alarms_until(
        &h,
        |a| has_alarm(a, "ak.key_leaked", flagged),
        Duration::from_secs(60),
    );
    if !has_alarm(&got, "ak.key_leaked", flagged) {
        let stderr = Harness::signal(&mut child, "-TERM");
        panic!("no leak alarm for {flagged}: {stderr}");
    }
    assert!(
        !has_alarm(&got, "ak.disabled_key_use", used),
        "the key was active when it was used"
    );
    // The leak alarm is sent after the swap: a call with the now disabled key raises its alarm.
    h.produce(&h.topic("tencent"), &[event("after-000000000002")]);
    let got = alarms_until(
        &h,
        |a| has_alarm(a, "ak.disabled_key_use", used),
        Duration::from_secs(60),
    );
    assert!(has_alarm(&got, "ak.disabled_key_use", used), "{got:#?}");

    // A report file dropped into the watched directory (atomically: written, then renamed), and
    // a broken one beside it.
    let from_file = "AKIDTESTREPORTFILE000000000000000002";
    let tmp = watched.join(".other-account.csv.tmp");
    std::fs::write(
        &tmp,
        tencent_report(&[("ci", "200000000777", from_file, "Active", true)]),
    )
    .unwrap();
    std::fs::rename(&tmp, watched.join("other-account.csv")).unwrap();
    std::fs::write(watched.join("broken.csv"), "AccountID,Username\n\"open").unwrap();
    let got = alarms_until(
        &h,
        |a| has_alarm(a, "ak.key_leaked", from_file),
        Duration::from_secs(60),
    );
    assert!(has_alarm(&got, "ak.key_leaked", from_file), "{got:#?}");
    let start = Instant::now();
    let metrics = loop {
        let body = http_get(&ops, "/metrics").1;
        if body.contains("akwatch_report_errors_total 1")
            || start.elapsed() > Duration::from_secs(20)
        {
            break body;
        }
        std::thread::sleep(Duration::from_millis(300));
    };
    assert!(
        metrics.contains("akwatch_report_errors_total 1"),
        "{metrics}"
    );
    assert!(metrics.contains("akwatch_report_accounts 2"), "{metrics}");
    let stderr = Harness::signal(&mut child, "-TERM");
    assert!(
        stderr.contains("broken.csv"),
        "the broken file is named: {stderr}"
    );
}

/// The dead-letter records on the topic: (origin topic, partition, offset) of each.
fn dead_letter_origins(h: &Harness, want: usize, timeout: Duration) -> Vec<(String, i32, i64)> {
    consume_all(
        &h.brokers,
        &h.topic("dlq"),
        |got| got.len() >= want,
        timeout,
    )
    .iter()
    .map(|m| {
        let get = |k: &str| header(m, k).unwrap();
        (
            get("akwatch-origin-topic"),
            get("akwatch-origin-partition").parse().unwrap(),
            get("akwatch-origin-offset").parse().unwrap(),
        )
    })
    .collect()
}

/// A second instance joins the group mid-stream: the first one's revoked partitions are
/// committed where it stood, so the newcomer starts exactly there — no record is processed twice
/// (each malformed record reaches the dead-letter topic exactly once), none is skipped, and at
/// the end the group's committed offsets are the topics' ends. The periodic checkpoint is set to
/// an hour, so only the rebalance hook can have committed the first instance's progress.
#[test]
fn a_rebalance_commits_where_the_revoked_partitions_stood() {
    let Some(brokers) = brokers() else { return };
    let mut h = Harness::with_partitions(&brokers, "rebalance", 2);
    h.extra = "commit_interval_seconds: 3600\n".to_owned();
    // Every 40th record malformed, in each cloud's stream.
    let mut stream = h.stream();
    let mut malformed = 0usize;
    for (_, records) in &mut stream {
        for (i, r) in records.iter_mut().enumerate() {
            if i % 40 == 7 {
                *r = format!("not json, record {i}").into_bytes();
                malformed += 1;
            }
        }
    }
    let total: usize = stream.iter().map(|(_, r)| r.len()).sum();
    h.produce_part(&stream, 0.0, 0.5);
    let mut first = h.spawn_with(Some("state-a"));
    // The first half processed by the first instance alone.
    let half = dead_letter_origins(&h, malformed / 2 - 3, Duration::from_secs(60));
    assert!(
        half.len() >= malformed / 2 - 3,
        "{} dead letters",
        half.len()
    );
    std::thread::sleep(Duration::from_secs(2));
    let mut second = h.spawn_with(Some("state-b"));
    // Give the group time to rebalance, then the rest of the stream.
    std::thread::sleep(Duration::from_secs(8));
    h.produce_part(&stream, 0.5, 1.0);
    let origins = dead_letter_origins(&h, malformed, Duration::from_secs(90));
    // Any late duplicate would arrive by now.
    std::thread::sleep(Duration::from_secs(3));
    let origins_again = dead_letter_origins(&h, malformed + 1, Duration::from_secs(3));
    let first_log = Harness::signal(&mut first, "-TERM");
    let second_log = Harness::signal(&mut second, "-TERM");
    assert!(
        first_log.contains("partitions revoked, their positions committed"),
        "{first_log}"
    );
    assert!(second_log.contains("partitions assigned"), "{second_log}");
    let unique: BTreeSet<_> = origins_again.iter().cloned().collect();
    assert_eq!(
        origins_again.len(),
        unique.len(),
        "a record was processed twice: {} dead letters, {} distinct",
        origins_again.len(),
        unique.len()
    );
    assert_eq!(unique.len(), malformed, "{origins:?}");
    // Both instances did part of the work.
    let events = |log: &str| -> u64 {
        log.lines()
            .filter(|l| l.contains("stopped"))
            .find_map(|l| {
                l.split("events=")
                    .nth(1)?
                    .split_whitespace()
                    .next()?
                    .parse()
                    .ok()
            })
            .unwrap_or(0)
    };
    assert!(
        events(&first_log) > 0 && events(&second_log) > 0,
        "first: {first_log}\nsecond: {second_log}"
    );
    // The group's committed offsets are the ends of every partition.
    assert_eq!(h.committed_at_end(2), total);
    eprintln!(
        "rebalance: {total} records over 6 partitions, {malformed} malformed, each dead-lettered once; first instance {} events, second {}",
        events(&first_log),
        events(&second_log)
    );
}

/// A CloudTrail record of a test key (`userName` and ARN of `name_len` bytes).
fn poison_aws(event_id: &str, time: &str, api: &str, key: &str, name_len: usize) -> Vec<u8> {
    let name = "n".repeat(name_len.max(1));
    serde_json::json!({
        "eventVersion": "1.08", "eventTime": time, "eventSource": "cloudtrail.amazonaws.com",
        "eventName": api, "awsRegion": "us-east-1", "sourceIPAddress": "198.51.100.77",
        "eventID": event_id, "userAgent": "aws-cli/2.15.0",
        "requestParameters": {"name": "org-trail"},
        "userIdentity": {"type": "IAMUser", "accessKeyId": key, "userName": name,
            "arn": format!("arn:aws:iam::111122223333:user/{name}"), "accountId": "111122223333"}
    })
    .to_string()
    .into_bytes()
}

/// One poisoned record of each class in the middle of the stream: each is on the dead-letter
/// topic with its kind and a short reason (a too-large one cut, with its size in a header); an
/// alarm larger than the producer's `message.max.bytes` arrives shrunk; every alarm replay
/// raises is there; the service never restarted and its lag returns to zero.
#[test]
fn poisoned_records_mid_stream_are_dead_lettered_and_nothing_else_is_lost() {
    let Some(brokers) = brokers() else { return };
    let mut h = Harness::new(&brokers, "poison");
    let ops = format!("127.0.0.1:{}", free_port());
    h.ops = Some(ops.clone());
    // Small enough that the huge record's alarm is over it even with its fields bounded.
    h.options.push(("message.max.bytes", "2000".to_owned()));
    h.env
        .push(("AKWATCH_TEST_PANIC_ON", "poison-panic".to_owned()));
    let expected = replay_alarm_ids();
    let ok_time = "2025-06-05T10:00:00Z";
    let poison: Vec<(&str, Vec<u8>)> = vec![
        (
            "bad_field",
            poison_aws(
                "p1",
                "-262143-01-01 00:00:00",
                "ListBuckets",
                "AKIAPOISON0000000001",
                1,
            ),
        ),
        (
            "bad_field",
            poison_aws(
                "p2",
                "2099-01-01T00:00:00Z",
                "ListBuckets",
                "AKIAPOISON0000000001",
                1,
            ),
        ),
        // 900 KB: far over the producer's limit for the dead letter too.
        (
            "bad_field",
            poison_aws(
                "p3",
                &"9".repeat(900_000),
                "ListBuckets",
                "AKIAPOISON0000000001",
                1,
            ),
        ),
        // On the AWS topic (provider pinned): a CloudTrail event without its members.
        ("missing_field", b"{}".to_vec()),
        (
            "internal_error",
            poison_aws(
                "poison-panic",
                ok_time,
                "ListBuckets",
                "AKIAPOISON0000000002",
                1,
            ),
        ),
    ];
    // A valid call whose alarm (its 300 KB user name and ARN are copied into it) is far over
    // the producer's 2,000-byte limit.
    let huge = poison_aws(
        "p-huge",
        ok_time,
        "StopLogging",
        "AKIAPOISONHUGE000001",
        300_000,
    );
    let mut records = cloud_records("aws");
    let mut sent = 0usize;
    for (i, (_, r)) in poison.iter().enumerate() {
        records.insert(300 + i * 400, r.clone());
    }
    records.insert(2500, huge);
    for cloud in CLOUDS {
        let records = if cloud == "aws" {
            records.clone()
        } else {
            cloud_records(cloud)
        };
        sent += records.len();
        h.produce(&h.topic(cloud), &records);
    }
    let mut child = h.spawn(false);
    let t0 = Instant::now();

    let huge_alarm = |m: &rdkafka::message::OwnedMessage| {
        serde_json::from_slice::<serde_json::Value>(m.payload().unwrap_or_default())
            .is_ok_and(|v| v["access_key_id"] == "AKIAPOISONHUGE000001")
    };
    let alarms = consume_all(
        &brokers,
        &h.topic("alarms"),
        |got| all_present(&expected)(got) && got.iter().any(huge_alarm),
        Duration::from_secs(120),
    );
    let ids: Vec<String> = alarms
        .iter()
        .filter(|m| !huge_alarm(m))
        .filter_map(|m| m.key())
        .map(|k| String::from_utf8_lossy(k).into_owned())
        .collect();
    assert_same_alarms(&ids, &expected);
    let big = alarms
        .iter()
        .find(|m| huge_alarm(m))
        .expect("the huge alarm");
    let payload = big.payload().unwrap();
    assert!(payload.len() <= 2000, "{} bytes", payload.len());
    let v: serde_json::Value = serde_json::from_slice(payload).unwrap();
    assert_eq!(v["rule_id"], "ak.audit_tamper");
    assert!(
        v["evidence"]["facts"]["truncated"]
            .as_str()
            .is_some_and(|t| t.contains("shrunk")),
        "{v}"
    );

    let dead = consume_all(
        &brokers,
        &h.topic("dlq"),
        |got| got.len() >= poison.len(),
        Duration::from_secs(60),
    );
    assert_eq!(dead.len(), poison.len());
    let mut kinds: Vec<String> = dead
        .iter()
        .map(|m| header(m, "akwatch-kind").unwrap())
        .collect();
    kinds.sort();
    let mut want: Vec<String> = poison.iter().map(|(k, _)| (*k).to_owned()).collect();
    want.sort();
    assert_eq!(kinds, want);
    for m in &dead {
        let reason = header(m, "akwatch-reason").unwrap();
        assert!(!reason.is_empty() && reason.len() <= 310, "{reason}");
        match header(m, "akwatch-truncated") {
            // The 900 KB record, cut under the limit, its original size in the header.
            Some(n) => {
                assert!(n.parse::<usize>().unwrap() > 900_000);
                assert!(m.payload().unwrap().len() <= 2000);
            }
            // A failure in detection (scale-out: on the repartition topic's side, where the
            // raw record is not at hand): the normalized event, its origin in the headers.
            None if header(m, "akwatch-kind").as_deref() == Some("internal_error") => {
                let v: serde_json::Value = serde_json::from_slice(m.payload().unwrap()).unwrap();
                assert_eq!(v["event_id"], "poison-panic", "{v}");
                assert_eq!(header(m, "akwatch-origin-topic"), Some(h.topic("aws")));
            }
            None => assert!(
                poison
                    .iter()
                    .any(|(_, r)| r.as_slice() == m.payload().unwrap()),
                "unchanged"
            ),
        }
    }

    // Lag back to zero, the counters say what happened, and the service never restarted.
    let metrics = metrics_once_lag_is_zero(&ops);
    // Shrunk once per notification of that alarm (created, then its update).
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("akwatch_alarms_shrunk_total ") && !l.ends_with(" 0")),
        "{metrics}"
    );
    for line in [
        "akwatch_dead_letters_truncated_total 1",
        "akwatch_records_rejected_total{provider=\"aws\",reason=\"internal_error\"} 1",
        "akwatch_records_rejected_total{provider=\"aws\",reason=\"bad_field\"} 3",
    ] {
        assert!(
            metrics.lines().any(|l| l == line),
            "{line} missing:\n{metrics}"
        );
    }
    assert!(
        metrics
            .lines()
            .filter(|l| l.starts_with("akwatch_consumer_lag_records{"))
            .all(|l| l.ends_with(" 0")),
        "lag back to zero:\n{metrics}"
    );
    // Every record consumed (lag zero): still exactly one dead letter per poisoned record, no
    // extra one (an alarm sent there as undeliverable, a record dead-lettered twice).
    let all_dead = consume_all(
        &brokers,
        &h.topic("dlq"),
        |got| got.len() > poison.len(),
        Duration::from_secs(5),
    );
    assert_eq!(all_dead.len(), poison.len());
    assert!(
        child.try_wait().unwrap().is_none(),
        "the service is still the same process"
    );
    eprintln!("poison: checks done {:?} after start", t0.elapsed());
    let stderr = Harness::signal(&mut child, "-TERM");
    assert!(stderr.contains("injected fault"), "the panic was logged");
    assert_eq!(h.committed_at_end(1), sent);
}

/// SIGTERM with the broker gone: the service gives up what it cannot deliver, exits within
/// its grace period (it used to retry for ever and ignore the signal), and loses nothing: a
/// restart with the broker back puts every alarm replay raises on the topic, and no other.
#[test]
fn a_stop_with_the_broker_gone_ends_within_the_grace_period_and_loses_no_alarm() {
    if brokers().is_none() {
        return;
    }
    let _own = OWN_BROKER
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let brokers = outage_broker("start");
    let result = std::panic::catch_unwind(|| {
        let mut h = Harness::new(&brokers, "grace");
        let grace = Duration::from_secs(6);
        h.extra = format!(
            "shutdown_grace_seconds: {}\ncommit_interval_seconds: 1\n",
            grace.as_secs()
        );
        let expected = replay_alarm_ids();
        let all = h.stream();
        h.produce_part(&all, 0.0, 0.5);
        let mut child = h.spawn(true);
        // Some alarms are out; then the broker goes away and the stop signal comes.
        consume_all(
            &brokers,
            &h.topic("alarms"),
            |got| got.len() >= 5,
            Duration::from_secs(120),
        );
        outage_broker("pause");
        std::thread::sleep(Duration::from_secs(2));
        let signalled = Instant::now();
        assert!(
            Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status()
                .unwrap()
                .success()
        );
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            if signalled.elapsed() > Duration::from_secs(60) {
                child.kill().unwrap();
                panic!("akwatch run ignored SIGTERM for 60 s with the broker gone");
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let took = signalled.elapsed();
        let stderr = service_log(&child);
        assert!(
            took <= grace + Duration::from_millis(1500),
            "stopped after {took:?} ({status}), grace {grace:?}: {stderr}"
        );
        eprintln!("broker gone: SIGTERM -> exit in {took:?} ({status}), grace {grace:?}");

        outage_broker("resume");
        h.produce_part(&all, 0.5, 1.0);
        let mut child = h.spawn(true);
        let got = h.alarm_ids(&expected, Duration::from_secs(180));
        Harness::signal(&mut child, "-TERM");
        assert_same_alarms(&got, &expected);
    });
    outage_broker("stop");
    if let Err(e) = result {
        std::panic::resume_unwind(e);
    }
}

/// The bundled scenario without keys into 3-partition topics (how forwarders write it), and
/// the alarm ids one instance raises, compared with `replay`'s.
fn keyless_three_partitions(tag: &str, backlog: bool) {
    let Some(brokers) = brokers() else { return };
    let mut h = Harness::with_partitions(&brokers, tag, 3);
    let ops = format!("127.0.0.1:{}", free_port());
    h.ops = Some(ops.clone());
    let expected = replay_alarm_ids();
    let all = h.stream();
    let mut child = if backlog {
        // A backlog: the whole scenario is on the topics before the instance starts.
        h.produce_part(&all, 0.0, 1.0);
        h.spawn(true)
    } else {
        // Live: the instance runs while the scenario arrives in four parts.
        let child = h.spawn(true);
        for part in 0..4 {
            h.produce_part(&all, part as f64 / 4.0, (part + 1) as f64 / 4.0);
            std::thread::sleep(Duration::from_millis(500));
        }
        child
    };
    // Spread over all three partitions of every input topic: no key, no single partition.
    for cloud in CLOUDS {
        let md = h
            .producer
            .client()
            .fetch_metadata(Some(&h.topic(cloud)), Duration::from_secs(10))
            .unwrap();
        for p in md.topics()[0].partitions() {
            let (low, high) = h
                .producer
                .client()
                .fetch_watermarks(&h.topic(cloud), p.id(), Duration::from_secs(10))
                .unwrap();
            assert!(high - low > 0, "{cloud} partition {} is empty", p.id());
        }
    }
    let got = h.alarm_ids(&expected, Duration::from_secs(120));
    let metrics = metrics_once_lag_is_zero(&ops);
    Harness::signal(&mut child, "-TERM");
    let late = metrics
        .lines()
        .find(|l| l.starts_with("akwatch_late_records_total "))
        .unwrap_or("akwatch_late_records_total (missing)")
        .to_owned();
    assert_same_alarms(&got, &expected);
    eprintln!(
        "{tag}: {} alarm ids, as replay; {} notifications; {late}",
        expected.len(),
        got.len()
    );
}

/// One instance, keyless records spread over 3 partitions per topic, arriving while it runs:
/// the partitions are merged in event time, so the order-dependent rules (impossible travel,
/// region sweep, a new key's quick use) fire as in `replay`.
#[test]
fn keyless_three_partition_topics_live_give_replay_s_alarms() {
    keyless_three_partitions("keyless-live", false);
}

/// The same with a backlog of the whole scenario already on the topics, consumed unevenly
/// across partitions (the merge pauses the partitions that run ahead).
#[test]
fn keyless_three_partition_backlog_gives_replay_s_alarms() {
    keyless_three_partitions("keyless-backlog", true);
}

/// How the instances of a scale-out test come and go.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Topology {
    /// Two instances from the start, the scenario arriving while they run.
    Two,
    /// Two instances; one is SIGKILLed midway and started again.
    TwoOneKilled,
    /// One instance; a second joins midway.
    JoinMidway,
    /// The whole scenario on the topics before two instances start.
    BacklogTwo,
}

/// The bundled scenario keyless into 3-partition topics, consumed by several instances of one
/// group: exactly replay's alarm ids (none missing: a key's events meet in one engine in event
/// time; none extra: state moves with its partition, so a key's known IPs stay known).
fn scale_out(tag: &str, topology: Topology) {
    let Some(brokers) = brokers() else { return };
    let h = Harness::with_partitions(&brokers, tag, 3);
    let expected = replay_alarm_ids();
    let all = h.stream();
    let parts = 4;
    let mut a;
    let mut b = None;
    match topology {
        Topology::BacklogTwo => {
            h.produce_part(&all, 0.0, 1.0);
            a = h.spawn_with(Some("a"));
            b = Some(h.spawn_with(Some("b")));
        }
        _ => {
            a = h.spawn_with(Some("a"));
            if topology != Topology::JoinMidway {
                b = Some(h.spawn_with(Some("b")));
            }
            for part in 0..parts {
                h.produce_part(
                    &all,
                    part as f64 / parts as f64,
                    (part + 1) as f64 / parts as f64,
                );
                std::thread::sleep(Duration::from_secs(2));
                if part == 1 {
                    match topology {
                        Topology::TwoOneKilled => {
                            let mut killed = b.take().unwrap();
                            Harness::signal(&mut killed, "-KILL");
                            b = Some(h.spawn_with(Some("b")));
                        }
                        Topology::JoinMidway => b = Some(h.spawn_with(Some("b"))),
                        _ => {}
                    }
                }
            }
        }
    }
    let got = h.alarm_ids(&expected, Duration::from_secs(180));
    // Both instances did detection work (the partitions were shared).
    let log_b = Harness::signal(b.as_mut().unwrap(), "-TERM");
    let log_a = Harness::signal(&mut a, "-TERM");
    let repeats = assert_same_alarms(&got, &expected);
    let events = |log: &str| -> u64 {
        log.lines()
            .filter(|l| l.contains("detection stopped"))
            .filter_map(|l| {
                l.split("events=")
                    .nth(1)?
                    .split_whitespace()
                    .next()?
                    .parse::<u64>()
                    .ok()
            })
            .sum()
    };
    let (ea, eb) = (events(&log_a), events(&log_b));
    assert!(ea > 0 && eb > 0, "events detected by a: {ea}, by b: {eb}");
    let restored = log_a
        .matches("restored a partition's detection state")
        .count()
        + log_b
            .matches("restored a partition's detection state")
            .count();
    if topology != Topology::Two && topology != Topology::BacklogTwo {
        // Partitions moved after state was saved: the new owner restored it.
        assert!(
            restored > 0,
            "no partition restored from the changelog\n{log_a}\n{log_b}"
        );
    }
    eprintln!(
        "{tag}: {} alarm ids, as replay ({repeats} repeated notifications); events detected a {ea}, b {eb}; partitions restored from the changelog: {restored}",
        expected.len()
    );
}

#[test]
fn scale_out_two_instances_give_replay_s_alarms() {
    scale_out("so-two", Topology::Two);
}

#[test]
fn scale_out_one_of_two_killed_and_restarted_gives_replay_s_alarms() {
    scale_out("so-kill", Topology::TwoOneKilled);
}

#[test]
fn scale_out_an_instance_joining_midway_gives_replay_s_alarms() {
    scale_out("so-join", Topology::JoinMidway);
}

#[test]
fn scale_out_two_instances_on_a_backlog_give_replay_s_alarms() {
    scale_out("so-backlog", Topology::BacklogTwo);
}

/// `kafka.alarm_format: ocsf`: the service writes the same alarms (same ids, as message keys)
/// as OCSF 1.8.0 Detection Findings, each valid against the derived schema.
#[test]
fn the_service_writes_ocsf_detection_findings_when_asked() {
    let Some(brokers) = brokers() else { return };
    let mut h = Harness::new(&brokers, "ocsf");
    h.kafka_extra.push_str("  alarm_format: ocsf\n");
    let expected = replay_alarm_ids();
    h.produce_part(&h.stream(), 0.0, 1.0);
    let mut child = h.spawn(false);
    let msgs = consume_all(
        &h.brokers,
        &h.topic("alarms"),
        all_present(&expected),
        Duration::from_secs(120),
    );
    Harness::signal(&mut child, "-TERM");
    let got = alarm_keys(&msgs);
    assert_same_alarms(&got, &expected);
    let schema: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(repo().join("schemas/ocsf-1.8.0-detection_finding.schema.json"))
            .unwrap(),
    )
    .unwrap();
    let validator = jsonschema::validator_for(&schema).unwrap();
    for m in &msgs {
        let finding: serde_json::Value = serde_json::from_slice(m.payload().unwrap()).unwrap();
        let errors: Vec<String> = validator
            .iter_errors(&finding)
            .map(|e| e.to_string())
            .collect();
        assert!(errors.is_empty(), "{errors:?}");
        let key = std::str::from_utf8(m.key().unwrap()).unwrap();
        assert_eq!(finding["finding_info"]["uid"], key);
        assert_eq!(finding["class_uid"], 2004);
    }
}

/// The inventory's tables as comparable rows: every count and time of keys, their IPs and
/// APIs, source IPs, accounts and hourly rollups (alarms by id only: the service notifies
/// updates that replay folds into one).
fn inventory_tables(store: &akwatch::inventory::Store) -> BTreeSet<String> {
    use sqlx::Row as _;
    let queries = [
        "SELECT 'key' AS t, cloud || '|' || key_id || '|' || account || '|' || kind || '|' || CAST(calls AS TEXT) || '|' || CAST(failures AS TEXT) || '|' || CAST(first_seen AS TEXT) || '|' || CAST(last_seen AS TEXT) || '|' || CAST(ip_hidden AS TEXT) AS r FROM inv_keys",
        "SELECT 'key_ip' AS t, cloud || '|' || key_id || '|' || ip || '|' || CAST(calls AS TEXT) || '|' || CAST(first_seen AS TEXT) || '|' || CAST(last_seen AS TEXT) AS r FROM inv_key_ips",
        "SELECT 'key_api' AS t, cloud || '|' || key_id || '|' || api || '|' || CAST(calls AS TEXT) || '|' || CAST(failures AS TEXT) AS r FROM inv_key_apis",
        "SELECT 'ip' AS t, ip || '|' || country || '|' || CAST(asn AS TEXT) || '|' || CAST(calls AS TEXT) || '|' || CAST(first_seen AS TEXT) AS r FROM inv_ips",
        "SELECT 'account' AS t, cloud || '|' || account || '|' || CAST(calls AS TEXT) AS r FROM inv_accounts",
        "SELECT 'hourly' AS t, cloud || '|' || key_id || '|' || ip || '|' || api || '|' || CAST(hour AS TEXT) || '|' || CAST(calls AS TEXT) || '|' || CAST(failures AS TEXT) AS r FROM inv_calls_hourly",
        "SELECT 'key_attr' AS t, cloud || '|' || key_id || '|' || kind || '|' || value || '|' || CAST(calls AS TEXT) || '|' || CAST(last_seen AS TEXT) AS r FROM inv_key_attrs",
        "SELECT 'alarm' AS t, alarm_id AS r FROM inv_alarms",
    ];
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(async {
            let mut all = BTreeSet::new();
            for q in queries {
                for row in sqlx::query(q).fetch_all(store.pool()).await.unwrap() {
                    let t: String = row.try_get("t").unwrap();
                    let r: String = row.try_get("r").unwrap();
                    all.insert(format!("{t}|{r}"));
                }
            }
            all
        })
}

fn open_store(url: &str) -> akwatch::inventory::Store {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(akwatch::inventory::Store::open(url))
        .unwrap()
}

fn http_get_with_token(addr: &str, path: &str, token: &str) -> (u16, String) {
    http_call(addr, "GET", path, token, None)
}

/// One HTTP/1.1 request with a bearer token (and a JSON body); the status and the response.
fn http_call(
    addr: &str,
    method: &str,
    path: &str,
    token: &str,
    body: Option<&serde_json::Value>,
) -> (u16, String) {
    use std::io::Write;
    let Ok(mut stream) = std::net::TcpStream::connect(addr) else {
        return (0, String::new());
    };
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let mut response = String::new();
    if write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .and_then(|()| stream.read_to_string(&mut response))
    .is_err()
    {
        return (0, response);
    }
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (status, response)
}

/// `akwatch run` keeps the inventory: the bundled scenario keyless in 3-partition topics, an
/// instance SIGKILLed midway and started again (with `two`, one of two instances sharing the
/// store): every count, time and alarm in the store equals what `replay --store` writes for the
/// same logs — each event counted exactly once across the crash, the restart and the
/// rebalances — and the API answers from the running service.
fn inventory_exactly_once(tag: &str, store_url: &str, two: bool) {
    let Some(brokers) = brokers() else { return };
    let mut h = Harness::with_partitions(&brokers, tag, 3);
    // What replay writes for the same logs.
    let expected_tables = {
        let options = ReplayOptions::bundled(&repo().join("examples"), &repo().join("rules"));
        let mut s = setup(&options).unwrap();
        s.inventory = Some(akwatch::inventory::Batch::default());
        let mut summary = run(&mut s, &options.inputs, None, &mut |_| {}, &mut |_| {}).unwrap();
        let url = h.dir.join("replay.db").display().to_string();
        let store = open_store(&url);
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(store.apply(summary.inventory.take().unwrap()))
            .unwrap();
        inventory_tables(&store)
    };
    let expected_calls: usize = expected_tables
        .iter()
        .filter(|r| r.starts_with("hourly|"))
        .map(|r| r.split('|').nth(6).unwrap().parse::<usize>().unwrap())
        .sum();
    let token = "inventory-test-admin-token";
    let tokens = h.dir.join("tokens.yaml");
    std::fs::write(
        &tokens,
        format!(
            "tokens:\n  - name: test\n    role: admin\n    sha256: {}\n",
            akwatch::api::token_hash(token)
        ),
    )
    .unwrap();
    // Each instance serves the API on its own port.
    let (api, api_b) = (
        format!("127.0.0.1:{}", free_port()),
        format!("127.0.0.1:{}", free_port()),
    );
    let config = |listen: &str| {
        format!(
            "commit_interval_seconds: 1\ninventory:\n  store: '{store_url}'\n  api:\n    listen: {listen}\n    tokens: {}\n",
            tokens.display()
        )
    };
    // The changelog kept behind the store (as when its writes fail): the restarted instance
    // applies events again that the store has counted.
    h.env.push(("AKWATCH_TEST_CHANGELOG_LAG", "1".to_owned()));
    let expected = replay_alarm_ids();
    let all = h.stream();
    h.extra = config(&api);
    let mut a = h.spawn_with(Some("a"));
    h.extra = config(&api_b);
    let mut b = two.then(|| h.spawn_with(Some("b")));
    for part in 0..4 {
        h.produce_part(&all, f64::from(part) / 4.0, f64::from(part + 1) / 4.0);
        std::thread::sleep(Duration::from_secs(3));
        if part == 1 {
            // Mid-stream, after some counts were written: no goodbye, no final write.
            let victim = b.as_mut().unwrap_or(&mut a);
            Harness::signal(victim, "-KILL");
            h.extra = config(if two { &api_b } else { &api });
            *victim = h.spawn_with(Some(if two { "b" } else { "a" }));
        }
    }
    let got = h.alarm_ids(&expected, Duration::from_secs(180));
    assert_same_alarms(&got, &expected);
    // The API of the running service answers from the store.
    let store = open_store(store_url);
    let start = Instant::now();
    let calls = loop {
        let calls = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(store.total_calls())
            .unwrap() as usize;
        if calls >= expected_calls || start.elapsed() > Duration::from_secs(60) {
            break calls;
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    assert_eq!(calls, expected_calls, "calls counted while running");
    let (status, body) = http_get_with_token(&api, "/api/v1/keys?limit=500", token);
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("AKIA"), "{body}");
    let (status, _) = http_get_with_token(&api, "/api/v1/keys", "wrong-token");
    assert_eq!(status, 401);
    // Every read endpoint of the OpenAPI document answers from the running service.
    let body_of = |r: &str| -> serde_json::Value {
        serde_json::from_str(r.split_once("\r\n\r\n").map_or("", |x| x.1)).unwrap_or_default()
    };
    let first = |path: &str, field: &str| -> String {
        let (status, r) = http_get_with_token(&api, path, token);
        assert_eq!(status, 200, "{path}: {r}");
        body_of(&r)["items"][0][field]
            .as_str()
            .unwrap_or_else(|| panic!("{path}: no {field} in {r}"))
            .to_owned()
    };
    let (ip, alarm, risk) = (
        first("/api/v1/ips", "ip"),
        first("/api/v1/alarms", "alarm_id"),
        first("/api/v1/risks", "id"),
    );
    let (status, r) = http_get_with_token(&api, "/api/v1/openapi.json", token);
    assert_eq!(status, 200, "{r}");
    let doc = body_of(&r);
    let mut answered = 0;
    for (path, ops) in doc["paths"].as_object().unwrap() {
        if ops.get("get").is_none() || path.contains("{kind}/{id}") {
            continue;
        }
        let id = if path.starts_with("/risks") {
            &risk
        } else {
            &alarm
        };
        let concrete = path
            .replace("{key}", "AKIASIM0000000000000")
            .replace("{ip}", &ip)
            .replace("{cloud}", "aws")
            .replace("{account}", "210987654321")
            .replace("{kind}", "allowlist")
            .replace("{id}", id);
        let (status, r) = http_get_with_token(&api, &format!("/api/v1{concrete}"), token);
        assert_eq!(status, 200, "GET {concrete} from the running service: {r}");
        answered += 1;
    }
    assert!(answered >= 14, "{answered} endpoints");
    let log_b = b.as_mut().map(|b| Harness::signal(b, "-TERM"));
    let log_a = Harness::signal(&mut a, "-TERM");
    let got_tables = inventory_tables(&store);
    let missing: Vec<&String> = expected_tables.difference(&got_tables).take(10).collect();
    let extra: Vec<&String> = got_tables.difference(&expected_tables).take(10).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "the inventory differs from replay's: missing {missing:#?}, extra {extra:#?}\n{log_a}\n{}",
        log_b.unwrap_or_default()
    );
    let claims = log_a.matches("claimed the partition's counts").count()
        + log_b
            .as_deref()
            .map_or(0, |l| l.matches("claimed the partition's counts").count());
    let already = |log: &str| -> u64 {
        log.lines()
            .filter(|l| l.contains("detection stopped"))
            .filter_map(|l| {
                l.split("inventory_already_counted=")
                    .nth(1)?
                    .split_whitespace()
                    .next()?
                    .parse::<u64>()
                    .ok()
            })
            .sum()
    };
    let again = already(&log_a) + log_b.as_deref().map_or(0, already);
    // The case proves something only if events were applied again after the kill.
    assert!(
        again > 0,
        "no event was applied again after the restart: the test did not exercise the store's positions\n{log_a}"
    );
    eprintln!(
        "{tag}: {} rows equal to replay's, {calls} calls counted once; {again} events applied again after the kill and not counted again; partition claims: {claims}",
        got_tables.len()
    );
}

#[test]
fn inventory_on_sqlite_counts_each_event_once_across_kill_minus_nine() {
    let dir = tempfile::tempdir().unwrap();
    let url = dir.path().join("inventory.db").display().to_string();
    inventory_exactly_once("inv-sqlite", &url, false);
}

#[test]
fn inventory_on_postgres_with_two_instances_counts_each_event_once() {
    let Some(base) = crate::api::postgres() else {
        return;
    };
    let url = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(crate::api::fresh_database(&base));
    inventory_exactly_once("inv-pg", &url, true);
}

/// A policy made through the running service's API applies to the next events without a
/// restart: an allowlist entry for one key and rule, posted while the service runs, silences
/// that key's next audit-tampering call while an identical call of another key still alarms;
/// the entry is in the API's policy file.
#[test]
fn a_policy_posted_to_the_running_service_applies_to_the_next_event() {
    let Some(brokers) = brokers() else { return };
    let mut h = Harness::new(&brokers, "live-policy");
    let token = "live-policy-admin-token";
    let tokens = h.dir.join("tokens.yaml");
    std::fs::write(
        &tokens,
        format!(
            "tokens:\n  - name: test\n    role: admin\n    sha256: {}\n",
            akwatch::api::token_hash(token)
        ),
    )
    .unwrap();
    let api = format!("127.0.0.1:{}", free_port());
    let policy_dir = h.dir.join("api-policies");
    h.extra = format!(
        "inventory:\n  store: '{}'\n  api:\n    listen: {api}\n    tokens: {}\n    policies_dir: {}\n",
        h.dir.join("inv.db").display(),
        tokens.display(),
        policy_dir.display()
    );
    let mut child = h.spawn(false);
    let now = chrono::Utc::now();
    let at = |secs: i64| {
        (now + chrono::Duration::seconds(secs))
            .format("%Y-%m-%dT%H:%M:%SZ")
            .to_string()
    };
    let topic = h.topic("aws");
    // The service is up and tampering alarms.
    h.produce(
        &topic,
        &[poison_aws(
            "live-0",
            &at(-30),
            "DeleteTrail",
            "AKIALIVEPOLICY000001",
            8,
        )],
    );
    let alarmed = |key: &str, msgs: &[rdkafka::message::OwnedMessage]| {
        msgs.iter().any(|m| {
            m.payload()
                .and_then(|p| serde_json::from_slice::<serde_json::Value>(p).ok())
                .is_some_and(|a| a["rule_id"] == "ak.audit_tamper" && a["access_key_id"] == key)
        })
    };
    let first = consume_all(
        &h.brokers,
        &h.topic("alarms"),
        |m| alarmed("AKIALIVEPOLICY000001", m),
        Duration::from_secs(90),
    );
    assert!(
        alarmed("AKIALIVEPOLICY000001", &first),
        "no tampering alarm: {}",
        service_log_tail(&child, 4000)
    );
    let entry = serde_json::json!({
        "id": "live-test", "keys": ["AKIALIVEPOLICY000002"], "rules": ["ak.audit_tamper"],
        "owner": "secops", "comment": "trail migration by the platform team"
    });
    let (status, body) = http_call(
        &api,
        "POST",
        "/api/v1/policies/allowlist",
        token,
        Some(&entry),
    );
    assert_eq!(status, 200, "{body}");
    // Applied within the half-second poll (the log says so).
    let start = Instant::now();
    while !service_log_tail(&child, usize::MAX).contains("policy changed through the API: applied")
    {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "{}",
            service_log_tail(&child, 4000)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    h.produce(
        &topic,
        &[
            poison_aws("live-1", &at(-20), "DeleteTrail", "AKIALIVEPOLICY000002", 8),
            poison_aws("live-2", &at(-10), "DeleteTrail", "AKIALIVEPOLICY000003", 8),
        ],
    );
    let after = consume_all(
        &h.brokers,
        &h.topic("alarms"),
        |m| alarmed("AKIALIVEPOLICY000003", m),
        Duration::from_secs(90),
    );
    assert!(
        alarmed("AKIALIVEPOLICY000003", &after),
        "the control key raised no alarm"
    );
    // The two keys may be on different detection partitions: the control's alarm can come
    // first. A few seconds more for the other.
    let after = consume_all(
        &h.brokers,
        &h.topic("alarms"),
        |m| alarmed("AKIALIVEPOLICY000002", m),
        Duration::from_secs(5),
    );
    assert!(
        !alarmed("AKIALIVEPOLICY000002", &after),
        "the allowlisted key still alarmed"
    );
    let file = std::fs::read_to_string(policy_dir.join("api-allowlist.yaml")).unwrap();
    assert!(
        file.contains("live-test") && file.contains("AKIALIVEPOLICY000002"),
        "{file}"
    );
    Harness::signal(&mut child, "-TERM");
}
