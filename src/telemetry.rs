//! Metrics (Prometheus) and the ops HTTP endpoints (`/metrics`, `/healthz`, `/readyz`).
//!
//! Every metric name is here; labels come from bounded sets only — provider, reject kind, rule
//! id, severity, configured input topic — never a key, an IP, an account or a user.
//!
//! The ops server is bounded ([`OpsLimits`]): a request's headers must arrive within a few
//! seconds of the connection opening (or of the previous response, on a kept-alive connection),
//! every request and every connection has a total time limit, and past a number of concurrent
//! connections the oldest is closed at once for each new one (counted in
//! `akwatch_ops_connections_rejected_total`).
//! `/readyz` reflects [`Readiness`]: subscribed, broker reachable, consume loop making progress.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prometheus::{
    Encoder, Gauge, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec,
    Opts, Registry, TextEncoder,
};

/// The service's metrics.
pub struct Metrics {
    pub registry: Registry,
    pub records_consumed: IntCounterVec,
    pub events_decoded: IntCounterVec,
    /// `records_consumed` and `events_decoded` per cloud (`Cloud::ALL`'s order): counted for
    /// each record without hashing the label ([`Metrics::record_consumed`],
    /// [`Metrics::event_decoded`]).
    consumed_by_cloud: [IntCounter; 3],
    decoded_by_cloud: [IntCounter; 3],
    pub records_rejected: IntCounterVec,
    pub alarms: IntCounterVec,
    pub allowlisted: IntCounterVec,
    pub superseded: IntCounterVec,
    pub ip_hidden_skips: IntCounter,
    pub consumer_lag: IntGaugeVec,
    pub state_keys: IntGauge,
    pub state_entries: IntGauge,
    pub state_bytes: IntGauge,
    pub state_evicted_keys: IntCounter,
    /// The engine's other caps (`engine::Limits`), one counter each.
    pub window_entries_summarised: IntCounter,
    pub window_entries_dropped: IntCounter,
    pub alarms_evicted: IntCounter,
    pub alarms_evicted_per_key: IntCounter,
    pub alarm_fields_truncated: IntCounter,
    pub created_evicted: IntCounter,
    pub created_expired: IntCounter,
    pub quarantined_evicted: IntCounter,
    pub quarantined_expired: IntCounter,
    pub checkpoint_age_seconds: Gauge,
    pub late_records: IntCounter,
    pub merge_queued: IntGauge,
    /// Partitions of the repartition topic whose detection state this instance owns.
    pub detect_partitions: IntGauge,
    /// Events waiting in the detection side's event-time merge.
    pub detect_queued: IntGauge,
    /// Input records whose repartition writes are not acknowledged yet.
    pub repartition_pending: IntGauge,
    /// Repartition records skipped as copies of events already applied.
    pub repartition_duplicates: IntCounter,
    /// Events released from the detection merge before their turn because it was full.
    pub detect_forced: IntCounter,
    pub changelog_restore_seconds: Histogram,
    pub changelog_snapshot_bytes: IntCounter,
    pub changelog_errors: IntCounter,
    /// Inventory (issue 11): events counted, batches written, write / claim failures, events
    /// that could not be counted (store unavailable past the pending cap), write time.
    pub inventory_events: IntCounter,
    pub inventory_writes: IntCounter,
    pub inventory_errors: IntCounter,
    pub inventory_uncounted: IntCounter,
    pub inventory_already_counted: IntCounter,
    pub inventory_capped: IntCounter,
    /// Console sessions dropped past the session cap (least recently used first).
    pub console_sessions_evicted: IntCounter,
    pub inventory_write_seconds: Histogram,
    pub report_accounts: IntGauge,
    pub report_updates: IntCounter,
    pub report_errors: IntCounter,
    pub event_to_alarm_seconds: Histogram,
    pub ingest_to_alarm_seconds: Histogram,
    pub ingest_to_done_seconds: Histogram,
    /// Delivery attempts that failed and were tried again, by output (`alarm`, `dead_letter`).
    pub delivery_retries: IntCounterVec,
    /// Deliveries given up, by output and reason (`permanent`: the broker refused for good;
    /// `stopped`: not acknowledged within the shutdown grace period).
    pub delivery_failures: IntCounterVec,
    /// Alarms too large for the topic, delivered with their longest fields cut.
    pub alarms_shrunk: IntCounter,
    /// Dead letters too large for the topic, delivered cut (header `akwatch-truncated`).
    pub dead_letters_truncated: IntCounter,
    /// Notification sinks (`notify:`): alarms sent, failed attempts by reason, alarms dropped
    /// by reason; `sink` is the sink's configured name or `<kind>-<index>`.
    pub notifications_sent: IntCounterVec,
    pub notification_failures: IntCounterVec,
    pub notifications_dropped: IntCounterVec,
    /// Connections the ops server closed at once because it was at its connection limit.
    pub ops_connections_rejected: IntCounter,
    /// Connections the ops server holds open.
    pub ops_connections: IntGauge,
    /// 1 when the last broker probe succeeded.
    pub broker_up: IntGauge,
    /// Consumer-group rebalances, by event (`assign`, `revoke`, `error`).
    pub rebalances: IntCounterVec,
    /// The configured cap on keys with detection state (`state_max_keys`).
    pub state_max_keys: IntGauge,
    /// 1 while an input topic does not exist on the cluster, by topic.
    pub input_topic_missing: IntGaugeVec,
    /// Reloads of rules, policies, lists and leak feeds, by part and result (`ok`, `error`).
    pub config_reloads: IntCounterVec,
    /// 1 when the last reload of a part succeeded (or none was tried), 0 after a failed one.
    pub config_last_reload_success: IntGaugeVec,
    /// Set once the consumer is subscribed (see [`Readiness`]).
    pub ready: AtomicBool,
    /// Milliseconds since `since` (+1, so 0 means never) of the consume loop's last iteration.
    heartbeat_ms: AtomicU64,
    /// The same for the detection loop (scale-out), and whether there is one.
    detect_heartbeat_ms: AtomicU64,
    pub detect_expected: AtomicBool,
    /// Milliseconds since `since` (+1) of the last broker probe, and of the last successful one.
    broker_checked_ms: AtomicU64,
    broker_ok_ms: AtomicU64,
    /// The last broker probe's error, if it failed.
    broker_error: Mutex<Option<String>>,
    since: Instant,
}

fn counter_vec(
    registry: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
) -> prometheus::Result<IntCounterVec> {
    let c = IntCounterVec::new(Opts::new(name, help), labels)?;
    registry.register(Box::new(c.clone()))?;
    Ok(c)
}

impl Metrics {
    /// Counts a record read, by its provider label.
    pub fn record_consumed(&self, label: &str) {
        match crate::event::Cloud::ALL
            .iter()
            .position(|c| c.as_str() == label)
        {
            Some(i) => self.consumed_by_cloud[i].inc(),
            None => self.records_consumed.with_label_values(&[label]).inc(),
        }
    }

    /// Counts an event decoded, by its cloud.
    pub fn event_decoded(&self, cloud: crate::event::Cloud) {
        // `Cloud::ALL`'s order; a new cloud makes this match fail to compile, not miscount.
        let i = match cloud {
            crate::event::Cloud::Aws => 0,
            crate::event::Cloud::Alibaba => 1,
            crate::event::Cloud::Tencent => 2,
        };
        self.decoded_by_cloud[i].inc();
    }

    pub fn new() -> prometheus::Result<Arc<Metrics>> {
        let r = Registry::new();
        let gauge = |name: &str, help: &str| -> prometheus::Result<IntGauge> {
            let g = IntGauge::new(name, help)?;
            r.register(Box::new(g.clone()))?;
            Ok(g)
        };
        let latency = |name: &str, help: &str| -> prometheus::Result<Histogram> {
            let buckets = vec![
                0.0025, 0.005, 0.01, 0.02, 0.035, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0,
                10.0, 30.0, 60.0, 300.0, 900.0, 3600.0,
            ];
            let h = Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets))?;
            r.register(Box::new(h.clone()))?;
            Ok(h)
        };
        let ip_hidden_skips = IntCounter::new(
            "akwatch_ip_hidden_rule_skips_total",
            "Rule evaluations skipped for IP-hidden keys",
        )?;
        r.register(Box::new(ip_hidden_skips.clone()))?;
        let consumer_lag = IntGaugeVec::new(
            Opts::new(
                "akwatch_consumer_lag_records",
                "Records behind the end of each assigned input partition",
            ),
            &["topic", "partition"],
        )?;
        r.register(Box::new(consumer_lag.clone()))?;
        let checkpoint_age_seconds = Gauge::new(
            "akwatch_checkpoint_age_seconds",
            "Seconds since the last state checkpoint",
        )?;
        r.register(Box::new(checkpoint_age_seconds.clone()))?;
        let counter = |name: &str, help: &str| -> prometheus::Result<IntCounter> {
            let c = IntCounter::new(name, help)?;
            r.register(Box::new(c.clone()))?;
            Ok(c)
        };
        let records_consumed = counter_vec(
            &r,
            "akwatch_records_consumed_total",
            "Records read from the input topics",
            &["provider"],
        )?;
        let events_decoded = counter_vec(
            &r,
            "akwatch_events_decoded_total",
            "Events decoded",
            &["provider"],
        )?;
        let by_cloud = |v: &IntCounterVec| {
            crate::event::Cloud::ALL.map(|c| v.with_label_values(&[c.as_str()]))
        };
        let metrics = Arc::new(Metrics {
            consumed_by_cloud: by_cloud(&records_consumed),
            decoded_by_cloud: by_cloud(&events_decoded),
            records_consumed,
            events_decoded,
            records_rejected: counter_vec(
                &r,
                "akwatch_records_rejected_total",
                "Records sent to the dead-letter topic",
                &["provider", "reason"],
            )?,
            alarms: counter_vec(
                &r,
                "akwatch_alarm_notifications_total",
                "Alarm notifications produced",
                &["rule", "severity"],
            )?,
            allowlisted: counter_vec(
                &r,
                "akwatch_allowlisted_hits_total",
                "Rule hits suppressed by the allowlist",
                &["rule"],
            )?,
            superseded: counter_vec(
                &r,
                "akwatch_superseded_hits_total",
                "Rule hits suppressed because a stronger rule hit the same event",
                &["rule"],
            )?,
            ip_hidden_skips,
            consumer_lag,
            state_keys: gauge("akwatch_state_keys", "Keys with detection state")?,
            state_entries: gauge(
                "akwatch_state_entries",
                "Remembered values and window entries",
            )?,
            state_bytes: gauge(
                "akwatch_state_bytes",
                "Approximate bytes of detection state",
            )?,
            checkpoint_age_seconds,
            late_records: counter(
                "akwatch_late_records_total",
                "Records that reached detection more than the allowed lateness behind the newest event time released (processed all the same)",
            )?,
            merge_queued: gauge(
                "akwatch_merge_queued_records",
                "Decoded records waiting in the event-time merge of the partitions",
            )?,
            detect_partitions: gauge(
                "akwatch_detect_partitions",
                "Partitions of the repartition topic whose detection state this instance owns",
            )?,
            detect_queued: gauge(
                "akwatch_detect_queued_events",
                "Events waiting in the detection side's event-time merge of the input partitions",
            )?,
            repartition_pending: gauge(
                "akwatch_repartition_pending_records",
                "Input records whose writes to the repartition topic are not acknowledged yet",
            )?,
            repartition_duplicates: counter(
                "akwatch_repartition_duplicates_total",
                "Repartition records skipped as copies of events already applied (an input partition read again after it moved)",
            )?,
            detect_forced: counter(
                "akwatch_detect_forced_releases_total",
                "Events released from the detection merge before their turn because it held detect_queue_events",
            )?,
            changelog_restore_seconds: latency(
                "akwatch_changelog_restore_seconds",
                "Time to restore one repartition partition's state from the changelog topic",
            )?,
            changelog_snapshot_bytes: counter(
                "akwatch_changelog_snapshot_bytes_total",
                "Compressed bytes of state snapshots written to the changelog topic",
            )?,
            changelog_errors: counter(
                "akwatch_changelog_errors_total",
                "Changelog snapshots not written or not restored (the partition is then redone from an older one)",
            )?,
            inventory_events: counter(
                "akwatch_inventory_events_total",
                "Events counted in the inventory store (each input event once, across restarts and rebalances)",
            )?,
            inventory_writes: counter(
                "akwatch_inventory_writes_total",
                "Inventory batches written to the store (one transaction each, with the input positions they reflect)",
            )?,
            inventory_errors: counter(
                "akwatch_inventory_errors_total",
                "Inventory writes or partition claims that failed (the batch is kept and written with the next one)",
            )?,
            inventory_uncounted: counter(
                "akwatch_inventory_uncounted_events_total",
                "Events the inventory could not count: the store was unavailable past inventory.max_pending_rows, or the partition could not be claimed",
            )?,
            inventory_already_counted: counter(
                "akwatch_inventory_already_counted_total",
                "Events applied to detection again after a restore from an older snapshot, not counted again because the store had counted them",
            )?,
            inventory_capped: counter(
                "akwatch_inventory_capped_rows_total",
                "Source IP and API rows of keys past the per-key cap removed from the inventory (the most called are kept)",
            )?,
            console_sessions_evicted: counter(
                "akwatch_console_sessions_evicted_total",
                "Console sessions dropped because the session cap was reached (the least recently used first)",
            )?,
            inventory_write_seconds: latency(
                "akwatch_inventory_write_seconds",
                "Time to write one inventory batch to the store",
            )?,
            state_evicted_keys: counter(
                "akwatch_state_evicted_keys_total",
                "Keys whose state was dropped to stay under state_max_keys",
            )?,
            window_entries_summarised: counter(
                "akwatch_window_entries_summarised_total",
                "Threshold window entries merged into coarser buckets at the per-window cap",
            )?,
            window_entries_dropped: counter(
                "akwatch_window_entries_dropped_total",
                "Distinct values and sequence marks forgotten at the per-window cap",
            )?,
            alarms_evicted: counter(
                "akwatch_alarms_evicted_total",
                "Tracked alarms dropped at the cap, least recently updated first",
            )?,
            alarms_evicted_per_key: counter(
                "akwatch_alarms_evicted_per_key_total",
                "Of the evicted alarms, those dropped at the per-key cap (the key's least recently updated first)",
            )?,
            alarm_fields_truncated: counter(
                "akwatch_alarm_fields_truncated_total",
                "Alarm fields cut to their size limit",
            )?,
            created_evicted: counter(
                "akwatch_state_created_evicted_total",
                "Created-key marks dropped at the cap, oldest first",
            )?,
            created_expired: counter(
                "akwatch_state_created_expired_total",
                "Created-key marks dropped past the longest look-back",
            )?,
            quarantined_evicted: counter(
                "akwatch_state_quarantined_evicted_total",
                "Quarantined principals dropped at the cap, oldest first",
            )?,
            quarantined_expired: counter(
                "akwatch_state_quarantined_expired_total",
                "Quarantined principals dropped past the retention",
            )?,
            report_accounts: gauge(
                "akwatch_report_accounts",
                "Accounts with a credential report in use",
            )?,
            report_updates: counter(
                "akwatch_report_updates_total",
                "Times the credential-report index was rebuilt and swapped in",
            )?,
            report_errors: counter(
                "akwatch_report_errors_total",
                "Credential reports (files or messages) that could not be read",
            )?,
            event_to_alarm_seconds: latency(
                "akwatch_event_to_alarm_seconds",
                "From the call's event time to its alarm notification",
            )?,
            ingest_to_alarm_seconds: latency(
                "akwatch_ingest_to_alarm_seconds",
                "From the record's Kafka timestamp to its alarm notification",
            )?,
            ingest_to_done_seconds: latency(
                "akwatch_ingest_to_done_seconds",
                "From the record's Kafka timestamp until everything derived from it is acknowledged",
            )?,
            notifications_sent: counter_vec(
                &r,
                "akwatch_notifications_sent_total",
                "Alarms a notification sink accepted, by sink",
                &["sink"],
            )?,
            notification_failures: counter_vec(
                &r,
                "akwatch_notification_failures_total",
                "Notification attempts that failed, by sink and reason (status, timeout, connect, rejected, request)",
                &["sink", "reason"],
            )?,
            notifications_dropped: counter_vec(
                &r,
                "akwatch_notifications_dropped_total",
                "Alarms not notified, by sink and reason (duplicate, rate_limited, queue_full, gave_up, shutdown)",
                &["sink", "reason"],
            )?,
            delivery_retries: counter_vec(
                &r,
                "akwatch_delivery_retries_total",
                "Delivery attempts that failed transiently and were retried, by output",
                &["output"],
            )?,
            delivery_failures: counter_vec(
                &r,
                "akwatch_delivery_failures_total",
                "Deliveries given up, by output and reason (permanent, stopped)",
                &["output", "reason"],
            )?,
            alarms_shrunk: counter(
                "akwatch_alarms_shrunk_total",
                "Alarms larger than the producer's message.max.bytes, delivered with fields cut",
            )?,
            dead_letters_truncated: counter(
                "akwatch_dead_letters_truncated_total",
                "Dead letters larger than the producer's message.max.bytes, delivered cut",
            )?,
            ops_connections_rejected: counter(
                "akwatch_ops_connections_rejected_total",
                "Ops HTTP connections closed at once because the connection limit was reached",
            )?,
            ops_connections: gauge("akwatch_ops_connections", "Ops HTTP connections open")?,
            broker_up: gauge(
                "akwatch_broker_up",
                "1 when the last broker metadata probe succeeded, else 0",
            )?,
            rebalances: counter_vec(
                &r,
                "akwatch_rebalances_total",
                "Consumer-group rebalances seen by this instance, by event (assign, revoke, error)",
                &["event"],
            )?,
            state_max_keys: gauge(
                "akwatch_state_max_keys",
                "The configured cap on keys with detection state (state_max_keys)",
            )?,
            input_topic_missing: {
                let g = IntGaugeVec::new(
                    Opts::new(
                        "akwatch_input_topic_missing",
                        "1 while an input topic does not exist on the cluster",
                    ),
                    &["topic"],
                )?;
                r.register(Box::new(g.clone()))?;
                g
            },
            config_reloads: counter_vec(
                &r,
                "akwatch_config_reloads_total",
                "Reloads of changed configuration files, by part (rules, policies, lists, leaks) and result (ok, error)",
                &["what", "result"],
            )?,
            config_last_reload_success: {
                let g = IntGaugeVec::new(
                    Opts::new(
                        "akwatch_config_last_reload_success",
                        "1 when the last reload of a configuration part succeeded (or none was needed), 0 when it failed and the last good version is in use",
                    ),
                    &["what"],
                )?;
                r.register(Box::new(g.clone()))?;
                g
            },
            ready: AtomicBool::new(false),
            heartbeat_ms: AtomicU64::new(0),
            detect_heartbeat_ms: AtomicU64::new(0),
            detect_expected: AtomicBool::new(false),
            broker_checked_ms: AtomicU64::new(0),
            broker_ok_ms: AtomicU64::new(0),
            broker_error: Mutex::new(None),
            since: Instant::now(),
            registry: r,
        });
        metrics.describe_build_and_process()?;
        // Series that exist from the start, at zero, so that rates and alerts over them work
        // before the first occurrence.
        for output in ["alarm", "dead_letter", "risk"] {
            metrics.delivery_retries.with_label_values(&[output]);
            for reason in ["permanent", "stopped"] {
                metrics
                    .delivery_failures
                    .with_label_values(&[output, reason]);
            }
        }
        for event in ["assign", "revoke", "error"] {
            metrics.rebalances.with_label_values(&[event]);
        }
        for cloud in crate::event::Cloud::ALL {
            let provider = cloud.as_str();
            metrics.records_consumed.with_label_values(&[provider]);
            metrics.events_decoded.with_label_values(&[provider]);
            for kind in crate::provider::RejectKind::ALL {
                metrics
                    .records_rejected
                    .with_label_values(&[provider, kind.as_str()]);
            }
        }
        Ok(metrics)
    }

    /// A reload of `what`: counted (when `count`) under its result, and the gauge set.
    pub fn config_reloaded(&self, what: &str, ok: bool, count: bool) {
        let result = if ok { "ok" } else { "error" };
        if count {
            self.config_reloads.with_label_values(&[what, result]).inc();
        } else {
            for r in ["ok", "error"] {
                self.config_reloads.with_label_values(&[what, r]);
            }
        }
        self.config_last_reload_success
            .with_label_values(&[what])
            .set(i64::from(ok));
    }

    /// The per-rule series, at zero from the start: alarms by rule (at the rule's severity),
    /// allowlisted and superseded hits.
    pub fn describe_rules(&self, rules: &crate::rule::RuleSet) {
        for rule in &rules.rules {
            self.alarms
                .with_label_values(&[rule.id.as_str(), rule.severity.as_str()]);
            self.allowlisted.with_label_values(&[rule.id.as_str()]);
            self.superseded.with_label_values(&[rule.id.as_str()]);
        }
    }

    /// `akwatch_build_info` and the process collector (`process_cpu_seconds_total`,
    /// `process_resident_memory_bytes`, `process_open_fds`, `process_start_time_seconds`, ...).
    fn describe_build_and_process(&self) -> prometheus::Result<()> {
        let build = IntGaugeVec::new(
            Opts::new(
                "akwatch_build_info",
                "Always 1; the labels say which build of akwatch runs",
            ),
            &["version", "revision"],
        )?;
        build
            .with_label_values(&[env!("CARGO_PKG_VERSION"), env!("AKWATCH_REVISION")])
            .set(1);
        self.registry.register(Box::new(build))?;
        #[cfg(target_os = "linux")]
        self.registry.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))?;
        Ok(())
    }

    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }

    /// Time since these metrics were created (the clock [`Readiness`] is read on).
    pub fn uptime(&self) -> Duration {
        self.since.elapsed()
    }

    fn stamp(&self) -> u64 {
        u64::try_from(self.since.elapsed().as_millis())
            .unwrap_or(u64::MAX - 1)
            .saturating_add(1)
    }

    /// The consume loop calls this on every iteration (records, ticks and idle polls alike).
    pub fn heartbeat(&self) {
        self.heartbeat_ms.store(self.stamp(), Ordering::Relaxed);
    }

    /// The detection loop calls this on every iteration (at least twice a second).
    pub fn detect_heartbeat(&self) {
        self.detect_heartbeat_ms
            .store(self.stamp(), Ordering::Relaxed);
    }

    /// The outcome of one broker probe.
    pub fn set_broker(&self, result: Result<(), String>) {
        let now = self.stamp();
        self.broker_checked_ms.store(now, Ordering::Relaxed);
        self.broker_up.set(i64::from(result.is_ok()));
        if result.is_ok() {
            self.broker_ok_ms.store(now, Ordering::Relaxed);
        }
        if let Ok(mut e) = self.broker_error.lock() {
            *e = result.err();
        }
    }

    /// What readiness is judged on, as of now.
    pub fn readiness(&self) -> Readiness {
        let at = |a: &AtomicU64| match a.load(Ordering::Relaxed) {
            0 => None,
            ms => Some(Duration::from_millis(ms - 1)),
        };
        Readiness {
            started: self.ready.load(Ordering::Relaxed),
            heartbeat: at(&self.heartbeat_ms),
            detect_heartbeat: self
                .detect_expected
                .load(Ordering::Relaxed)
                .then(|| at(&self.detect_heartbeat_ms)),
            broker_checked: at(&self.broker_checked_ms),
            broker_ok: at(&self.broker_ok_ms),
            broker_error: self.broker_error.lock().ok().and_then(|e| e.clone()),
            missing_topics: {
                use prometheus::core::Collector;
                let mut topics: Vec<String> = self
                    .input_topic_missing
                    .collect()
                    .iter()
                    .flat_map(|f| f.get_metric())
                    .filter(|m| m.get_gauge().get_value() > 0.0)
                    .flat_map(|m| m.get_label())
                    .filter(|l| l.name() == "topic")
                    .map(|l| l.value().to_owned())
                    .collect();
                topics.sort();
                topics
            },
        }
    }
}

/// The consume loop is unready when its last iteration is older than this (it iterates at least
/// once a second when idle).
pub const MAX_HEARTBEAT_AGE: Duration = Duration::from_secs(30);
/// The broker is taken as unreachable when no probe has succeeded for this long (a probe every
/// [`BROKER_PROBE_INTERVAL`], each waiting at most [`BROKER_PROBE_TIMEOUT`]).
pub const MAX_BROKER_OK_AGE: Duration = Duration::from_secs(30);
pub const BROKER_PROBE_INTERVAL: Duration = Duration::from_secs(5);
pub const BROKER_PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// The facts `/readyz` is judged on; times are since the metrics were created.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Readiness {
    /// The consumer is subscribed.
    pub started: bool,
    /// The consume loop's last iteration.
    pub heartbeat: Option<Duration>,
    /// With scale-out, the detection loop's last iteration (`Some(None)`: not yet).
    pub detect_heartbeat: Option<Option<Duration>>,
    /// The last broker probe, and the last successful one.
    pub broker_checked: Option<Duration>,
    pub broker_ok: Option<Duration>,
    /// The last probe's error when it failed.
    pub broker_error: Option<String>,
    /// Input topics that do not exist (the service waits for them).
    pub missing_topics: Vec<String>,
}

impl Readiness {
    /// Ready when subscribed, the last broker probe succeeded and one succeeded within
    /// [`MAX_BROKER_OK_AGE`], and the consume loop iterated within [`MAX_HEARTBEAT_AGE`].
    /// Otherwise every failed condition, joined with `; `.
    pub fn check(&self, now: Duration) -> Result<(), String> {
        let mut failed = Vec::new();
        let age = |t: Duration| now.saturating_sub(t).as_secs();
        if !self.started {
            if self.missing_topics.is_empty() {
                failed.push("starting: the consumer is not subscribed yet".to_owned());
            } else {
                failed.push(format!(
                    "starting: waiting for the input topic(s) {} to be created",
                    self.missing_topics.join(", ")
                ));
            }
        }
        match (self.broker_ok, &self.broker_error) {
            (_, Some(e)) => failed.push(format!(
                "broker unreachable: {e} (last reachable {})",
                self.broker_ok
                    .map_or("never".to_owned(), |t| format!("{} s ago", age(t)))
            )),
            (None, None) => failed.push("broker: not probed yet".to_owned()),
            (Some(t), None) if now.saturating_sub(t) > MAX_BROKER_OK_AGE => failed.push(format!(
                "broker: no successful probe for {} s (limit {} s)",
                age(t),
                MAX_BROKER_OK_AGE.as_secs()
            )),
            (Some(_), None) => {}
        }
        match self.heartbeat {
            None if self.started => {
                failed.push("consume loop: not started yet".to_owned());
            }
            None => {}
            Some(t) if now.saturating_sub(t) > MAX_HEARTBEAT_AGE => failed.push(format!(
                "consume loop: no progress for {} s (limit {} s)",
                age(t),
                MAX_HEARTBEAT_AGE.as_secs()
            )),
            Some(_) => {}
        }
        match self.detect_heartbeat {
            Some(Some(t)) if now.saturating_sub(t) > MAX_HEARTBEAT_AGE => failed.push(format!(
                "detection loop: no progress for {} s (limit {} s; restoring state, or stuck)",
                age(t),
                MAX_HEARTBEAT_AGE.as_secs()
            )),
            Some(None) if self.started => {
                failed.push("detection loop: not started yet".to_owned());
            }
            _ => {}
        }
        if failed.is_empty() {
            Ok(())
        } else {
            Err(failed.join("; "))
        }
    }
}

/// Probes the broker every [`BROKER_PROBE_INTERVAL`] on a thread of its own and records the
/// outcome in `metrics` (see [`Metrics::set_broker`]). `probe` gets the time it may wait and
/// returns `None` when there is nothing left to probe (the client is gone): the thread ends.
pub fn watch_broker<F>(metrics: Arc<Metrics>, mut probe: F) -> std::io::Result<()>
where
    F: FnMut(Duration) -> Option<Result<(), String>> + Send + 'static,
{
    std::thread::Builder::new()
        .name("akwatch-broker-probe".to_owned())
        .spawn(move || {
            while let Some(result) = probe(BROKER_PROBE_TIMEOUT) {
                if let Err(e) = &result
                    && metrics.broker_up.get() == 1
                {
                    tracing::warn!(error = %e, "broker probe failed: /readyz reports unready");
                }
                metrics.set_broker(result);
                std::thread::sleep(BROKER_PROBE_INTERVAL);
            }
        })
        .map(drop)
}

/// Limits of the ops HTTP server.
#[derive(Debug, Clone, Copy)]
pub struct OpsLimits {
    /// From a connection's opening (or its previous response) to a request's complete headers;
    /// an idle kept-alive connection is closed after this too.
    pub header_read_timeout: Duration,
    /// From a request's headers to its response.
    pub request_timeout: Duration,
    /// The longest a connection may stay open, whatever it does.
    pub connection_timeout: Duration,
    /// Concurrent connections; past it the oldest is closed at once for each new one.
    pub max_connections: usize,
}

impl Default for OpsLimits {
    fn default() -> Self {
        OpsLimits {
            header_read_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(10),
            connection_timeout: Duration::from_secs(60),
            max_connections: 256,
        }
    }
}

/// Binds the ops address; the error names the address and the cause.
pub async fn bind(addr: &str) -> anyhow::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("ops_addr {addr:?}: cannot listen: {e}"))
}

/// Binds `addr` and serves the ops endpoints on it in a task of their own, with the default
/// limits. Fails (naming the address and the cause) when the address cannot be bound.
pub async fn start(addr: &str, metrics: Arc<Metrics>) -> anyhow::Result<SocketAddr> {
    let listener = bind(addr).await?;
    let local = listener.local_addr()?;
    tokio::spawn(serve(listener, metrics, OpsLimits::default()));
    tracing::info!(addr = %local, "ops HTTP server listening");
    Ok(local)
}

fn router(metrics: Arc<Metrics>) -> axum::Router {
    use axum::Router;
    use axum::http::StatusCode;
    use axum::routing::get;
    let m = metrics.clone();
    Router::new()
        .route(
            "/metrics",
            get(move || {
                let m = m.clone();
                async move { ([("content-type", "text/plain; version=0.0.4")], m.render()) }
            }),
        )
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/readyz",
            get(move || {
                let m = metrics.clone();
                async move {
                    match m.readiness().check(m.uptime()) {
                        Ok(()) => (StatusCode::OK, "ready".to_owned()),
                        Err(why) => (StatusCode::SERVICE_UNAVAILABLE, format!("unready: {why}")),
                    }
                }
            }),
        )
}

/// The open connections of the ops server, oldest first: dropping a sender closes its connection.
#[derive(Default)]
struct Slots {
    next: u64,
    open: std::collections::BTreeMap<u64, tokio::sync::oneshot::Sender<()>>,
}

/// A connection's place in [`Slots`], given back when its task ends however it ends.
struct Slot {
    id: u64,
    slots: Arc<Mutex<Slots>>,
    metrics: Arc<Metrics>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Ok(mut s) = self.slots.lock() {
            s.open.remove(&self.id);
        }
        self.metrics.ops_connections.dec();
    }
}

/// Serves `/metrics`, `/healthz` and `/readyz` on `listener` until the runtime ends, within
/// `limits`. At the connection limit the oldest connection is closed to admit the new one
/// (counted in `akwatch_ops_connections_rejected_total`): stalled connections cannot keep a
/// prober out for longer than it takes `max_connections` newer ones to arrive, and a prober's
/// request, answered in microseconds, is done long before it is the oldest.
pub async fn serve(listener: tokio::net::TcpListener, metrics: Arc<Metrics>, limits: OpsLimits) {
    use hyper_util::rt::{TokioIo, TokioTimer};
    use tower::ServiceExt;
    let app = router(metrics.clone());
    let slots = Arc::new(Mutex::new(Slots::default()));
    let mut last_accept_error: Option<Instant> = None;
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of file descriptors, or the like: wait a little rather than spin.
                if last_accept_error.is_none_or(|t| t.elapsed() >= Duration::from_secs(10)) {
                    last_accept_error = Some(Instant::now());
                    tracing::warn!(error = %e, "ops HTTP server: cannot accept a connection");
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let (kill, killed) = tokio::sync::oneshot::channel::<()>();
        let (id, evicted) = {
            let Ok(mut s) = slots.lock() else { return };
            let evicted = if s.open.len() >= limits.max_connections.max(1) {
                s.open.pop_first()
            } else {
                None
            };
            let id = s.next;
            s.next += 1;
            s.open.insert(id, kill);
            (id, evicted)
        };
        if evicted.is_some() {
            metrics.ops_connections_rejected.inc();
        }
        drop(evicted);
        let _ = stream.set_nodelay(true);
        metrics.ops_connections.inc();
        let slot = Slot {
            id,
            slots: slots.clone(),
            metrics: metrics.clone(),
        };
        let app = app.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let service = hyper::service::service_fn(move |req| {
                let app = app.clone();
                async move {
                    match tokio::time::timeout(limits.request_timeout, app.oneshot(req)).await {
                        Ok(response) => response,
                        Err(_) => {
                            let mut r = axum::response::Response::new(axum::body::Body::from(
                                "request timed out",
                            ));
                            *r.status_mut() = axum::http::StatusCode::SERVICE_UNAVAILABLE;
                            Ok(r)
                        }
                    }
                }
            });
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(limits.header_read_timeout)
                .serve_connection(TokioIo::new(stream), service);
            tokio::select! {
                _ = tokio::time::timeout(limits.connection_timeout, connection) => {}
                _ = killed => {}
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: fn(u64) -> Duration = Duration::from_secs;

    /// The per-cloud children count under their own cloud's label (a mixed-up index would
    /// count Alibaba's events as AWS's); other labels still go through the vector.
    #[test]
    fn records_and_events_are_counted_under_their_own_cloud() {
        use crate::event::Cloud;
        let m = Metrics::new().unwrap();
        m.event_decoded(Cloud::Alibaba);
        m.event_decoded(Cloud::Alibaba);
        m.event_decoded(Cloud::Tencent);
        m.record_consumed("aws");
        m.record_consumed("unknown");
        let decoded = |c: &str| m.events_decoded.with_label_values(&[c]).get();
        let consumed = |c: &str| m.records_consumed.with_label_values(&[c]).get();
        assert_eq!(
            (decoded("aws"), decoded("alibaba"), decoded("tencent")),
            (0, 2, 1)
        );
        assert_eq!(
            (consumed("aws"), consumed("alibaba"), consumed("unknown")),
            (1, 0, 1)
        );
    }

    fn ready_at(now: u64) -> Readiness {
        Readiness {
            started: true,
            heartbeat: Some(S(now)),
            detect_heartbeat: None,
            broker_checked: Some(S(now)),
            broker_ok: Some(S(now)),
            broker_error: None,
            missing_topics: Vec::new(),
        }
    }

    #[test]
    fn ready_when_subscribed_reachable_and_progressing() {
        assert_eq!(ready_at(100).check(S(100)), Ok(()));
        let mut r = ready_at(100);
        r.heartbeat = Some(S(71));
        r.broker_ok = Some(S(71));
        assert_eq!(r.check(S(100)), Ok(()), "29 s old is still fresh");
    }

    #[test]
    fn starting_until_subscribed() {
        let r = Readiness::default();
        let why = r.check(S(1)).unwrap_err();
        assert!(why.starts_with("starting: "), "{why}");
        assert!(why.contains("broker: not probed yet"), "{why}");
        let r = Readiness {
            started: true,
            ..ready_at(5)
        };
        assert_eq!(r.check(S(5)), Ok(()));
        // Waiting for input topics names them.
        let r = Readiness {
            started: false,
            missing_topics: vec!["cloudtrail".into()],
            ..ready_at(5)
        };
        assert_eq!(
            r.check(S(5)),
            Err("starting: waiting for the input topic(s) cloudtrail to be created".into())
        );
    }

    #[test]
    fn unready_while_the_broker_is_unreachable() {
        let mut r = ready_at(100);
        r.broker_ok = Some(S(90));
        r.broker_error = Some("Local: Broker transport failure".into());
        assert_eq!(
            r.check(S(100)),
            Err(
                "broker unreachable: Local: Broker transport failure (last reachable 10 s ago)"
                    .into()
            )
        );
        r.broker_ok = None;
        assert!(
            r.check(S(100))
                .unwrap_err()
                .ends_with("(last reachable never)")
        );
        // Reachable again: ready again.
        r.broker_error = None;
        r.broker_ok = Some(S(100));
        assert_eq!(r.check(S(100)), Ok(()));
    }

    #[test]
    fn unready_when_the_probe_itself_stalls() {
        let mut r = ready_at(100);
        r.broker_ok = Some(S(60));
        assert_eq!(
            r.check(S(100)),
            Err("broker: no successful probe for 40 s (limit 30 s)".into())
        );
    }

    #[test]
    fn unready_when_the_consume_loop_stalls() {
        let mut r = ready_at(100);
        r.heartbeat = Some(S(50));
        assert_eq!(
            r.check(S(100)),
            Err("consume loop: no progress for 50 s (limit 30 s)".into())
        );
        r.heartbeat = None;
        assert_eq!(r.check(S(100)), Err("consume loop: not started yet".into()));
    }

    #[test]
    fn with_scale_out_unready_when_the_detection_loop_stalls() {
        let mut r = ready_at(100);
        r.detect_heartbeat = Some(Some(S(95)));
        assert_eq!(r.check(S(100)), Ok(()));
        r.detect_heartbeat = Some(Some(S(50)));
        assert_eq!(
            r.check(S(100)),
            Err(
                "detection loop: no progress for 50 s (limit 30 s; restoring state, or stuck)"
                    .into()
            )
        );
        r.detect_heartbeat = Some(None);
        assert_eq!(
            r.check(S(100)),
            Err("detection loop: not started yet".into())
        );
    }

    #[test]
    fn every_failed_condition_is_named() {
        let r = Readiness {
            started: true,
            heartbeat: Some(S(0)),
            detect_heartbeat: None,
            broker_checked: Some(S(99)),
            broker_ok: None,
            broker_error: Some("all brokers down".into()),
            missing_topics: Vec::new(),
        };
        let why = r.check(S(100)).unwrap_err();
        assert!(
            why.contains("broker unreachable: all brokers down"),
            "{why}"
        );
        assert!(why.contains("consume loop: no progress for 100 s"), "{why}");
    }

    #[test]
    fn metrics_feed_readiness() {
        let m = Metrics::new().unwrap();
        assert!(m.readiness().check(m.uptime()).is_err());
        m.ready.store(true, Ordering::Relaxed);
        m.heartbeat();
        m.set_broker(Err("down".into()));
        assert_eq!(m.broker_up.get(), 0);
        let why = m.readiness().check(m.uptime()).unwrap_err();
        assert!(why.starts_with("broker unreachable: down"), "{why}");
        m.set_broker(Ok(()));
        assert_eq!(m.broker_up.get(), 1);
        assert_eq!(m.readiness().check(m.uptime()), Ok(()));
    }
}
