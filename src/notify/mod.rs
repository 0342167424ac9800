//! Notification sinks beside the alarm topic (`notify:` in the service configuration): a
//! generic signed webhook, Slack, DingTalk, WeCom and Feishu.
//!
//! **Never blocking the pipeline.** [`Notifier::notify`] is synchronous and does no I/O: per
//! sink it filters (minimum severity, rule globs), de-duplicates by alarm id (the last
//! [`DEDUP_CAP`] ids accepted), takes a token from the sink's bucket (`rate_per_minute`, a
//! minute's worth of burst) and hands the alarm to the sink's bounded queue with `try_send`.
//! Whatever does not pass is dropped and counted (`akwatch_notifications_dropped_total{sink,
//! reason}`: `duplicate`, `rate_limited`, `queue_full`). One task per sink sends what is
//! queued, one alarm at a time, each attempt bounded by the sink's `timeout`, retried with
//! exponential backoff on 5xx / 429 / a timeout / no connection,
//! not on other answers, at most `max_attempts` times (then `gave_up`). A failing endpoint is
//! counted (`akwatch_notification_failures_total{sink,reason}`) and logged at most once per
//! [`LOG_EVERY`] per sink; it never holds a Kafka offset.

pub mod config;
pub mod render;

use std::collections::{HashSet, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prometheus::IntCounterVec;
use tokio::sync::mpsc;
use wildmatch::WildMatch;

pub use config::{RawSink, SinkConfig, SinkKind};
use render::Outcome;

use crate::alarm::Alarm;
use crate::rule::Severity;

/// Alarm ids remembered per sink for de-duplication (oldest forgotten first).
pub const DEDUP_CAP: usize = 10_000;
/// A sink's failures are logged at most once per this (with the count since the last line).
pub const LOG_EVERY: Duration = Duration::from_secs(10);
/// The most of an answer's body read (to find a chat tool's error code).
const MAX_ANSWER: usize = 64 * 1024;
/// The first backoff; it doubles per attempt up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(200);
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// The metrics a notifier counts in (registered in `telemetry::Metrics`).
#[derive(Clone)]
pub struct NotifyMetrics {
    pub sent: IntCounterVec,
    pub failures: IntCounterVec,
    pub dropped: IntCounterVec,
}

impl NotifyMetrics {
    pub fn of(m: &crate::telemetry::Metrics) -> NotifyMetrics {
        NotifyMetrics {
            sent: m.notifications_sent.clone(),
            failures: m.notification_failures.clone(),
            dropped: m.notifications_dropped.clone(),
        }
    }
}

/// The last `cap` ids accepted: a ring and a set.
struct RecentIds {
    cap: usize,
    order: VecDeque<String>,
    set: HashSet<String>,
}

impl RecentIds {
    fn new(cap: usize) -> RecentIds {
        RecentIds {
            cap,
            order: VecDeque::new(),
            set: HashSet::new(),
        }
    }

    fn contains(&self, id: &str) -> bool {
        self.set.contains(id)
    }

    fn insert(&mut self, id: &str) {
        if self.set.insert(id.to_owned()) {
            self.order.push_back(id.to_owned());
            while self.order.len() > self.cap {
                if let Some(old) = self.order.pop_front() {
                    self.set.remove(&old);
                }
            }
        }
    }
}

/// A token bucket: `capacity` tokens, refilled at `per_sec`.
struct Bucket {
    capacity: f64,
    tokens: f64,
    per_sec: f64,
    at: Instant,
}

impl Bucket {
    fn per_minute(n: u32) -> Bucket {
        Bucket {
            capacity: f64::from(n),
            tokens: f64::from(n),
            per_sec: f64::from(n) / 60.0,
            at: Instant::now(),
        }
    }

    fn take(&mut self, now: Instant) -> bool {
        let dt = now.saturating_duration_since(self.at).as_secs_f64();
        self.at = now;
        self.tokens = (self.tokens + dt * self.per_sec).min(self.capacity);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    fn give_back(&mut self) {
        self.tokens = (self.tokens + 1.0).min(self.capacity);
    }
}

/// What the pipeline side of a sink holds.
struct Gate {
    recent: RecentIds,
    bucket: Bucket,
}

struct Sink {
    name: String,
    min_severity: Severity,
    rules: Vec<WildMatch>,
    gate: Mutex<Gate>,
    /// `None` once draining.
    tx: Mutex<Option<mpsc::Sender<Arc<Alarm>>>>,
    /// Alarms accepted and not finished (sent or given up).
    pending: Arc<AtomicUsize>,
}

impl Sink {
    fn wants(&self, alarm: &Alarm) -> bool {
        alarm.severity >= self.min_severity
            && (self.rules.is_empty() || self.rules.iter().any(|g| g.matches(&alarm.rule_id)))
    }
}

/// The notification sinks and their sending tasks.
pub struct Notifier {
    sinks: Vec<Sink>,
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
    metrics: NotifyMetrics,
}

impl Notifier {
    /// Builds the sinks' HTTP clients and starts one sending task per sink (on the current
    /// Tokio runtime). Fails only when a TLS client cannot be built.
    pub fn start(sinks: &[SinkConfig], metrics: NotifyMetrics) -> anyhow::Result<Arc<Notifier>> {
        let mut out = Vec::new();
        let mut tasks = Vec::new();
        for s in sinks {
            let client = reqwest::Client::builder()
                .timeout(s.timeout)
                .connect_timeout(s.timeout)
                // A redirect would send the body (and a signed URL) somewhere not configured.
                .redirect(reqwest::redirect::Policy::none())
                .user_agent(concat!("akwatch/", env!("CARGO_PKG_VERSION")))
                .build()
                .map_err(|e| anyhow::anyhow!("notify sink {}: HTTP client: {e}", s.name))?;
            let (tx, rx) = mpsc::channel(s.queue.max(1));
            let pending = Arc::new(AtomicUsize::new(0));
            let worker = Worker {
                config: s.clone(),
                client,
                metrics: metrics.clone(),
                pending: pending.clone(),
                log: LogLimit::default(),
            };
            tasks.push(tokio::spawn(worker.run(rx)));
            out.push(Sink {
                name: s.name.clone(),
                min_severity: s.min_severity,
                rules: s.rules.iter().map(|g| WildMatch::new(g)).collect(),
                gate: Mutex::new(Gate {
                    recent: RecentIds::new(DEDUP_CAP),
                    bucket: Bucket::per_minute(s.rate_per_minute),
                }),
                tx: Mutex::new(Some(tx)),
                pending,
            });
        }
        // Each sink's series exist from the start, at zero (rates and alerts over them work
        // before the first notification).
        for s in &out {
            metrics.sent.with_label_values(&[&s.name]);
            for reason in ["status", "timeout", "connect", "request", "rejected"] {
                metrics.failures.with_label_values(&[&s.name, reason]);
            }
            for reason in [
                "queue_full",
                "rate_limited",
                "duplicate",
                "gave_up",
                "shutdown",
            ] {
                metrics.dropped.with_label_values(&[&s.name, reason]);
            }
        }
        Ok(Arc::new(Notifier {
            sinks: out,
            tasks: Mutex::new(tasks),
            metrics,
        }))
    }

    /// The sinks' names (their `sink` label), in configuration order.
    pub fn sink_names(&self) -> Vec<&str> {
        self.sinks.iter().map(|s| s.name.as_str()).collect()
    }

    fn dropped(&self, sink: &str, reason: &str) {
        self.metrics
            .dropped
            .with_label_values(&[sink, reason])
            .inc();
    }

    /// Hands an alarm (one the alarm topic has acknowledged) to every sink that wants it.
    /// Never waits: a sink that cannot take it now drops it and counts why.
    pub fn notify(&self, alarm: &Alarm) {
        let mut shared: Option<Arc<Alarm>> = None;
        for sink in &self.sinks {
            if !sink.wants(alarm) {
                continue;
            }
            let Ok(mut gate) = sink.gate.lock() else {
                continue;
            };
            if gate.recent.contains(&alarm.alarm_id) {
                drop(gate);
                self.dropped(&sink.name, "duplicate");
                continue;
            }
            let Ok(tx) = sink.tx.lock() else { continue };
            let Some(tx) = tx.as_ref() else {
                continue; // draining: nothing new is taken
            };
            if !gate.bucket.take(Instant::now()) {
                drop(gate);
                self.dropped(&sink.name, "rate_limited");
                continue;
            }
            let item = shared
                .get_or_insert_with(|| Arc::new(alarm.clone()))
                .clone();
            sink.pending.fetch_add(1, Ordering::SeqCst);
            match tx.try_send(item) {
                Ok(()) => gate.recent.insert(&alarm.alarm_id),
                Err(_) => {
                    sink.pending.fetch_sub(1, Ordering::SeqCst);
                    gate.bucket.give_back();
                    self.dropped(&sink.name, "queue_full");
                }
            }
        }
    }

    /// At shutdown: takes nothing more, lets the tasks send what is queued for at most
    /// `grace`, then stops them; what was still pending is counted as dropped (`shutdown`).
    pub async fn drain(&self, grace: Duration) {
        for s in &self.sinks {
            if let Ok(mut tx) = s.tx.lock() {
                tx.take();
            }
        }
        let tasks = self
            .tasks
            .lock()
            .map(|mut t| std::mem::take(&mut *t))
            .unwrap_or_default();
        let aborts: Vec<_> = tasks.iter().map(|t| t.abort_handle()).collect();
        let all = async {
            for t in tasks {
                let _ = t.await;
            }
        };
        if tokio::time::timeout(grace, all).await.is_err() {
            for a in aborts {
                a.abort();
            }
        }
        for s in &self.sinks {
            let left = s.pending.swap(0, Ordering::SeqCst);
            if left > 0 {
                tracing::warn!(sink = %s.name, left, "notifications not sent within the shutdown grace period");
                self.metrics
                    .dropped
                    .with_label_values(&[&s.name, "shutdown"])
                    .inc_by(left as u64);
            }
        }
    }
}

/// Logs a sink's failures at most once per [`LOG_EVERY`].
#[derive(Default)]
struct LogLimit {
    last: Option<Instant>,
    suppressed: u64,
}

impl LogLimit {
    fn warn(&mut self, sink: &str, alarm_id: &str, attempt: u32, reason: &str, detail: &str) {
        let now = Instant::now();
        if self.last.is_some_and(|t| now.duration_since(t) < LOG_EVERY) {
            self.suppressed += 1;
            return;
        }
        self.last = Some(now);
        let suppressed = std::mem::take(&mut self.suppressed);
        tracing::warn!(
            sink,
            alarm_id,
            attempt,
            reason,
            detail,
            suppressed,
            "notification failed"
        );
    }
}

/// A sink's sending task.
struct Worker {
    config: SinkConfig,
    client: reqwest::Client,
    metrics: NotifyMetrics,
    pending: Arc<AtomicUsize>,
    log: LogLimit,
}

impl Worker {
    async fn run(mut self, mut rx: mpsc::Receiver<Arc<Alarm>>) {
        while let Some(alarm) = rx.recv().await {
            self.deliver(&alarm).await;
            let _ = self
                .pending
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1));
        }
    }

    async fn deliver(&mut self, alarm: &Alarm) {
        let name = self.config.name.clone();
        let mut backoff = FIRST_BACKOFF;
        for attempt in 1..=self.config.max_attempts {
            let (reason, detail, after, retry) = match self.attempt(alarm).await {
                Outcome::Sent => {
                    self.metrics.sent.with_label_values(&[&name]).inc();
                    return;
                }
                Outcome::Retry {
                    reason,
                    after,
                    detail,
                } => (reason, detail, after, true),
                Outcome::Fail { reason, detail } => (reason, detail, None, false),
            };
            self.metrics
                .failures
                .with_label_values(&[&name, reason])
                .inc();
            self.log
                .warn(&name, &alarm.alarm_id, attempt, reason, &detail);
            if !retry || attempt == self.config.max_attempts {
                break;
            }
            tokio::time::sleep(after.unwrap_or(backoff).max(backoff)).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
        self.metrics
            .dropped
            .with_label_values(&[&name, "gave_up"])
            .inc();
    }

    /// One request, bounded by the sink's timeout (the client's, and this one around the
    /// body's read too).
    async fn attempt(&self, alarm: &Alarm) -> Outcome {
        let now_ms = chrono::Utc::now().timestamp_millis();
        let c = &self.config;
        let req = render::request(c.kind, &c.url, c.secret.as_deref(), alarm, now_ms);
        let mut builder = self.client.post(req.url).body(req.body);
        for (k, v) in req.headers {
            builder = builder.header(k, v);
        }
        let call = async {
            let mut resp = builder.send().await?;
            let status = resp.status().as_u16();
            let retry_after = resp
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            let mut body = Vec::new();
            while let Some(chunk) = resp.chunk().await? {
                let room = MAX_ANSWER.saturating_sub(body.len());
                body.extend_from_slice(&chunk[..chunk.len().min(room)]);
                if room <= chunk.len() {
                    break;
                }
            }
            Ok::<_, reqwest::Error>((status, retry_after, body))
        };
        match tokio::time::timeout(c.timeout, call).await {
            Err(_) => Outcome::Retry {
                reason: "timeout",
                after: None,
                detail: format!("no answer within {:?}", c.timeout),
            },
            Ok(Err(e)) => {
                let reason = if e.is_timeout() {
                    "timeout"
                } else if e.is_connect() {
                    "connect"
                } else {
                    "request"
                };
                // reqwest's message can name the URL, which for Slack and WeCom is the
                // credential: without it.
                Outcome::Retry {
                    reason,
                    after: None,
                    detail: e.without_url().to_string(),
                }
            }
            Ok(Ok((status, retry_after, body))) => {
                render::outcome(c.kind, status, retry_after.as_deref(), &body)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recent_ids_forget_the_oldest_past_the_cap() {
        let mut r = RecentIds::new(2);
        r.insert("a");
        r.insert("b");
        r.insert("a");
        assert!(r.contains("a") && r.contains("b"));
        r.insert("c");
        assert!(!r.contains("a") && r.contains("b") && r.contains("c"));
        assert_eq!((r.order.len(), r.set.len()), (2, 2));
    }

    #[test]
    fn the_bucket_holds_a_minute_and_refills() {
        let mut b = Bucket::per_minute(2);
        let t0 = b.at;
        assert!(b.take(t0) && b.take(t0) && !b.take(t0));
        assert!(!b.take(t0 + Duration::from_secs(20)));
        assert!(b.take(t0 + Duration::from_secs(31)));
    }
}
