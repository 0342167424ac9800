//! Metrics (Prometheus) and the ops HTTP endpoints (`/metrics`, `/healthz`, `/readyz`).
//!
//! Every metric name is here; labels come from bounded sets only — provider, reject kind, rule
//! id, severity, configured input topic — never a key, an IP, an account or a user.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use prometheus::{
    Encoder, Gauge, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec,
    Opts, Registry, TextEncoder,
};

/// The service's metrics.
pub struct Metrics {
    pub registry: Registry,
    pub records_consumed: IntCounterVec,
    pub events_decoded: IntCounterVec,
    pub records_rejected: IntCounterVec,
    pub alarms: IntCounterVec,
    pub allowlisted: IntCounterVec,
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
    pub alarm_fields_truncated: IntCounter,
    pub created_evicted: IntCounter,
    pub created_expired: IntCounter,
    pub quarantined_evicted: IntCounter,
    pub quarantined_expired: IntCounter,
    pub checkpoint_age_seconds: Gauge,
    pub report_accounts: IntGauge,
    pub report_updates: IntCounter,
    pub report_errors: IntCounter,
    pub event_to_alarm_seconds: Histogram,
    pub ingest_to_alarm_seconds: Histogram,
    pub ingest_to_done_seconds: Histogram,
    /// Set once the consumer is subscribed and the first poll returned.
    pub ready: AtomicBool,
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
                "Records behind the end of each input topic",
            ),
            &["topic"],
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
        Ok(Arc::new(Metrics {
            records_consumed: counter_vec(
                &r,
                "akwatch_records_consumed_total",
                "Records read from the input topics",
                &["provider"],
            )?,
            events_decoded: counter_vec(
                &r,
                "akwatch_events_decoded_total",
                "Events decoded",
                &["provider"],
            )?,
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
            ready: AtomicBool::new(false),
            registry: r,
        }))
    }

    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }
}

/// Serves `/metrics`, `/healthz` and `/readyz` on `addr` until the runtime ends.
pub async fn serve(addr: &str, metrics: Arc<Metrics>) -> std::io::Result<()> {
    use axum::Router;
    use axum::http::StatusCode;
    use axum::routing::get;
    let m = metrics.clone();
    let app = Router::new()
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
                    if m.ready.load(Ordering::Relaxed) {
                        (StatusCode::OK, "ready")
                    } else {
                        (StatusCode::SERVICE_UNAVAILABLE, "starting")
                    }
                }
            }),
        );
    let listener = tokio::net::TcpListener::bind(addr).await?;
    axum::serve(listener, app).await
}
