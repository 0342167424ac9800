//! `akwatch run`: the pipeline on Kafka. At-least-once: an input offset is stored for commit only
//! after every alarm (and dead-letter record) derived from it has been acknowledged by the broker
//! (`acks=all`, idempotent producer); offsets are committed with each state checkpoint (every
//! `commit_interval_seconds`, after a rebalance and at shutdown), or on that schedule alone
//! without a state directory, and at the revocation of a partition.

mod group;
mod reports;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use group::{GroupConsumer, GroupContext, Progress, write_checkpoint};

use rdkafka::ClientConfig;
use rdkafka::Message;
use rdkafka::consumer::Consumer;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};

use crate::alarm::Alarm;
use crate::config::Config;
use crate::event::Origin;
use crate::provider::{Decoder, Reject};
use crate::replay::{ReplayOptions, Setup, leak_alarms, setup};

/// How long a produce may wait in librdkafka's queue before it is reported as failed and
/// retried by us (broker outage: we keep retrying, never drop).
const PRODUCE_TIMEOUT: Duration = Duration::from_secs(30);

fn client_config(config: &Config) -> ClientConfig {
    client_config_over(config, &[])
}

/// The brokers and the user's options over `defaults`.
fn client_config_over(config: &Config, defaults: &[(&str, &str)]) -> ClientConfig {
    let mut c = ClientConfig::new();
    for (k, v) in defaults {
        c.set(*k, *v);
    }
    c.set("bootstrap.servers", &config.brokers);
    for (k, v) in &config.options {
        c.set(k, v);
    }
    c
}

/// Produces one record, retrying with backoff until the broker acknowledges it; returns the
/// attempts it took. A full local queue (`QueueFull`) is waited out inside `send` for up to
/// `PRODUCE_TIMEOUT`; a message librdkafka gives up on (`message.timeout.ms`: broker down) is
/// sent again.
async fn deliver(
    producer: &FutureProducer,
    topic: &str,
    key: &str,
    payload: &[u8],
    headers: Option<OwnedHeaders>,
) -> u32 {
    let mut backoff = Duration::from_millis(100);
    let mut attempts = 0;
    loop {
        attempts += 1;
        let mut record = FutureRecord::to(topic).key(key).payload(payload);
        if let Some(h) = &headers {
            record = record.headers(h.clone());
        }
        match producer.send(record, PRODUCE_TIMEOUT).await {
            Ok(_) => return attempts,
            Err((e, _)) => {
                tracing::warn!(topic, error = %e, "produce failed; retrying in {:?}", backoff);
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(10));
            }
        }
    }
}

async fn deliver_alarm(producer: &FutureProducer, topic: &str, alarm: &Alarm) {
    match serde_json::to_vec(alarm) {
        Ok(bytes) => {
            deliver(producer, topic, &alarm.alarm_id, &bytes, None).await;
        }
        Err(e) => tracing::error!(error = %e, "cannot serialise an alarm"),
    }
}

async fn deliver_reject(
    producer: &FutureProducer,
    topic: &str,
    reject: &Reject,
    raw: &[u8],
    origin: &Origin,
) {
    let headers = OwnedHeaders::new()
        .insert(Header {
            key: "akwatch-reason",
            value: Some(reject.reason.as_str()),
        })
        .insert(Header {
            key: "akwatch-kind",
            value: Some(reject.kind.as_str()),
        })
        .insert(Header {
            key: "akwatch-origin-topic",
            value: origin.topic.as_deref(),
        })
        .insert(Header {
            key: "akwatch-origin-partition",
            value: Some(&origin.partition.unwrap_or(-1).to_string()),
        })
        .insert(Header {
            key: "akwatch-origin-offset",
            value: Some(&origin.offset.unwrap_or(-1).to_string()),
        });
    let key = format!(
        "{}:{}:{}",
        origin.topic.as_deref().unwrap_or("-"),
        origin.partition.unwrap_or(-1),
        origin.offset.unwrap_or(-1)
    );
    deliver(producer, topic, &key, raw, Some(headers)).await;
}

/// Delivers the leak alarms (leak feed, keys the reports flag) not delivered before.
async fn deliver_new_leak_alarms(
    s: &Setup,
    sent: &mut HashSet<String>,
    producer: &FutureProducer,
    topic: &str,
) {
    for alarm in leak_alarms(&s.enricher) {
        if sent.insert(alarm.alarm_id.clone()) {
            deliver_alarm(producer, topic, &alarm).await;
        }
    }
}

/// Runs the service until SIGTERM / Ctrl-C: then stops consuming, notifies pending alarm
/// updates, flushes the producer and commits.
pub async fn run(config: Config) -> anyhow::Result<()> {
    let mut shutdown = Box::pin(shutdown_signal());
    let options = ReplayOptions {
        inputs: Vec::new(),
        reports: config.reports.clone(),
        rules: config.rules.clone(),
        policies: if config.policies.is_empty() {
            vec![config.rules.join("policies")]
        } else {
            config.policies.clone()
        },
        lists: if config.lists.is_empty() {
            vec![config.rules.join("lists")]
        } else {
            config.lists.clone()
        },
        geoip: config.geoip.clone(),
        leaks: config.leaks.clone(),
        provider: None,
    };
    let mut s: Setup = setup(&options).map_err(|errors| {
        for e in &errors {
            eprintln!("error: {e}");
        }
        anyhow::anyhow!("{} problem(s) at start-up", errors.len())
    })?;
    s.engine.set_max_keys(config.state_max_keys);
    for w in &s.warnings {
        tracing::warn!("{w}");
    }
    let progress = Arc::new(Progress::default());
    let consumer: Arc<GroupConsumer> = Arc::new(
        client_config(&config)
            .set("group.id", &config.group_id)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .create_with_context(GroupContext {
                progress: progress.clone(),
                cooperative: config
                    .options
                    .get("partition.assignment.strategy")
                    .is_some_and(|s| s.contains("cooperative")),
            })?,
    );
    // Each alarm's delivery is awaited before the next record: no lingering for a batch (the
    // user's options may still set it).
    let producer: FutureProducer = client_config_over(&config, &[("linger.ms", "0")])
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .set(
            "message.timeout.ms",
            PRODUCE_TIMEOUT.as_millis().to_string(),
        )
        .create()?;
    // Restore the last checkpoint: the engine's state, and the offsets it reflects. Messages
    // before those offsets (delivered again because the group's commit lagged the checkpoint, or
    // after a rebalance) are skipped: their effect is in the state already.
    if let Some(dir) = &config.state_dir {
        match crate::checkpoint::read(dir) {
            Ok(Some(cp)) => {
                let same_rules = s.engine.restore(cp.engine);
                progress.restore(&cp.offsets);
                tracing::info!(written_at = %cp.written_at, partitions = cp.offsets.len(), same_rules, "restored the checkpoint");
            }
            Ok(None) => {
                tracing::info!(dir = %dir.display(), "no checkpoint: starting with empty state")
            }
            Err(e) => tracing::warn!("cannot read the checkpoint, starting with empty state: {e}"),
        }
    }
    let metrics = crate::telemetry::Metrics::new()?;
    // Credential reports: the files were read by `setup`; the topic is read to its end before
    // the first event, then both are followed on a thread of their own.
    let reports_group = format!("{}-reports", config.group_id);
    let mut follower = reports::Follower::new(
        std::mem::take(&mut s.reports),
        config
            .report_topic
            .as_deref()
            .map(|t| (client_config(&config), reports_group.as_str(), t)),
        config.reports_rescan,
        metrics.clone(),
    )?;
    let stop_reports = Arc::new(AtomicBool::new(false));
    let stop = stop_reports.clone();
    let bootstrap = tokio::task::spawn_blocking(move || {
        let first = follower.bootstrap(&stop);
        (follower, first)
    });
    let (follower, first) = tokio::select! {
        _ = &mut shutdown => {
            tracing::info!("stopped while reading the report topic");
            stop_reports.store(true, Ordering::Relaxed);
            return Ok(());
        }
        done = bootstrap => done?,
    };
    if let Some(u) = first {
        s.enricher.reports = u.index;
    }
    let (reports_tx, mut reports_rx) = tokio::sync::mpsc::channel(2);
    let reports_thread = {
        let stop = stop_reports.clone();
        std::thread::Builder::new()
            .name("akwatch-reports".to_owned())
            .spawn(move || follower.run(reports_tx, stop))?
    };
    if let Some(addr) = &config.ops_addr {
        let (addr, m) = (addr.clone(), metrics.clone());
        tokio::spawn(async move {
            if let Err(e) = crate::telemetry::serve(&addr, m).await {
                tracing::error!(%addr, error = %e, "ops HTTP server stopped");
            }
        });
    }
    let topics: Vec<&str> = config.inputs.iter().map(|i| i.topic.as_str()).collect();
    consumer.subscribe(&topics)?;
    metrics.ready.store(true, Ordering::Relaxed);
    let provider_label: HashMap<String, &'static str> = config
        .inputs
        .iter()
        .map(|i| {
            (
                i.topic.clone(),
                i.provider.map_or("auto", crate::event::Cloud::as_str),
            )
        })
        .collect();
    let mut exported = ExportedStats::default();
    let mut last_gauges = Instant::now();
    let decoders: HashMap<String, Decoder> = config
        .inputs
        .iter()
        .map(|i| (i.topic.clone(), Decoder::pinned(i.provider)))
        .collect();
    tracing::info!(brokers = %config.brokers, topics = ?topics, group = %config.group_id, "akwatch run: consuming");

    // Leaks known before any call (deterministic ids: re-sent on restart, harmless); later, the
    // keys a new credential report flags.
    let mut leaks_sent = HashSet::new();
    deliver_new_leak_alarms(&s, &mut leaks_sent, &producer, &config.alarm_topic).await;

    // Checkpoint (state + offsets) or, without a state directory, commit this often.
    let dir = config.state_dir.as_deref();
    let period = config.commit_interval;
    let mut last_checkpoint = Instant::now();
    let mut dirty = false;
    let mut rebalances_seen = 0;
    let mut ticker = tokio::time::interval(Duration::from_secs(1));
    let mut lag_task: Option<tokio::task::JoinHandle<()>> = None;
    let mut checkpoint_task: Option<tokio::task::JoinHandle<()>> = None;
    let mut results = Vec::new();
    loop {
        let message = tokio::select! {
            _ = &mut shutdown => break,
            Some(update) = reports_rx.recv() => {
                // Between two records: every event is joined with one whole version.
                s.enricher.reports = update.index;
                metrics.report_updates.inc();
                deliver_new_leak_alarms(&s, &mut leaks_sent, &producer, &config.alarm_topic).await;
                continue;
            }
            _ = ticker.tick() => {
                exported.export(&s.engine.stats, &metrics);
                metrics.checkpoint_age_seconds.set(last_checkpoint.elapsed().as_secs_f64());
                if last_gauges.elapsed() >= Duration::from_secs(10) {
                    last_gauges = Instant::now();
                    let (keys, entries, bytes) = s.engine.state.size();
                    metrics.state_keys.set(keys as i64);
                    metrics.state_entries.set(entries as i64);
                    metrics.state_bytes.set(bytes as i64);
                    // Off the consume task: the watermark look-ups are network round trips.
                    if lag_task.as_ref().is_none_or(tokio::task::JoinHandle::is_finished) {
                        let (c, m) = (consumer.clone(), metrics.clone());
                        lag_task = Some(tokio::task::spawn_blocking(move || update_lag(&c, &m)));
                    }
                }
                // Idle: checkpoint / commit what was processed since the last one.
                if dirty && last_checkpoint.elapsed() >= period {
                    last_checkpoint = Instant::now();
                    if start_checkpoint(&mut checkpoint_task, &consumer, &progress, &s, dir) {
                        dirty = false;
                    }
                }
                continue;
            }
            m = consumer.recv() => m,
        };
        let message = match message {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(error = %e, "consume error");
                continue;
            }
        };
        if progress.already_done(message.topic(), message.partition(), message.offset()) {
            continue;
        }
        let label = provider_label
            .get(message.topic())
            .copied()
            .unwrap_or("auto");
        metrics.records_consumed.with_label_values(&[label]).inc();
        let ingested = message.timestamp().to_millis();
        let origin = Origin::kafka(message.topic(), message.partition(), message.offset());
        let payload = message.payload().unwrap_or_default();
        let decoder = decoders
            .get(message.topic())
            .copied()
            .unwrap_or_else(Decoder::auto);
        decoder.decode(payload, &origin, &mut results);
        for result in results.drain(..) {
            match result {
                Ok(event) => {
                    metrics
                        .events_decoded
                        .with_label_values(&[event.cloud.as_str()])
                        .inc();
                    let enrichment = s.enricher.enrich(&event);
                    for alarm in s.engine.process(&event, &enrichment) {
                        deliver_alarm(&producer, &config.alarm_topic, &alarm).await;
                        metrics
                            .alarms
                            .with_label_values(&[alarm.rule_id.as_str(), alarm.severity.as_str()])
                            .inc();
                        let now = chrono::Utc::now();
                        metrics.event_to_alarm_seconds.observe(
                            ((now - event.event_time).num_milliseconds().max(0) as f64) / 1000.0,
                        );
                        if let Some(ms) = ingested {
                            metrics
                                .ingest_to_alarm_seconds
                                .observe(((now.timestamp_millis() - ms).max(0) as f64) / 1000.0);
                        }
                    }
                }
                Err(reject) => {
                    metrics
                        .records_rejected
                        .with_label_values(&[label, reject.kind.as_str()])
                        .inc();
                    deliver_reject(&producer, &config.dlq_topic, &reject, payload, &origin).await
                }
            }
        }
        // Everything derived from this message is acknowledged: its offset may be committed.
        progress.done(message.topic(), message.partition(), message.offset());
        if let Some(ms) = ingested {
            metrics
                .ingest_to_done_seconds
                .observe(((chrono::Utc::now().timestamp_millis() - ms).max(0) as f64) / 1000.0);
        }
        dirty = true;
        // After a rebalance, checkpoint at once: the state then reflects the partitions kept.
        let rebalances = progress.rebalances.load(Ordering::Relaxed);
        if last_checkpoint.elapsed() >= period || rebalances != rebalances_seen {
            last_checkpoint = Instant::now();
            if start_checkpoint(&mut checkpoint_task, &consumer, &progress, &s, dir) {
                dirty = false;
                rebalances_seen = rebalances;
            }
        }
    }
    tracing::info!("shutting down: notifying pending alarm updates, flushing, committing");
    // A second SIGTERM / Ctrl-C does not wait for a clean stop.
    tokio::spawn(async {
        shutdown_signal().await;
        tracing::warn!("second stop signal: exiting without finishing the shutdown");
        std::process::exit(130);
    });
    stop_reports.store(true, Ordering::Relaxed);
    for alarm in s.engine.flush() {
        deliver_alarm(&producer, &config.alarm_topic, &alarm).await;
    }
    use rdkafka::producer::Producer;
    producer.flush(Duration::from_secs(30))?;
    if let Some(task) = checkpoint_task.take() {
        let _ = task.await;
    }
    match dir {
        Some(dir) => write_checkpoint(&consumer, &progress, &checkpoint(&progress, &s), dir),
        None => progress.commit(&*consumer, None),
    }
    drop(reports_rx);
    let _ = reports_thread.join();
    // Leave the group while polling normally, so the revocation runs like any other (a
    // revocation inside librdkafka's `close` can hang: librdkafka #4041 / #4884). Records that
    // arrive meanwhile are not processed and their offsets not committed.
    let before = progress.rebalances.load(Ordering::Relaxed);
    if consumer.subscription().is_ok_and(|s| s.count() > 0) {
        consumer.unsubscribe();
        let until = Instant::now() + Duration::from_secs(5);
        while progress.rebalances.load(Ordering::Relaxed) == before && Instant::now() < until {
            let _ = tokio::time::timeout(Duration::from_millis(200), consumer.recv()).await;
        }
    }
    // State and offsets are saved: a close that still hangs must not keep the process.
    std::thread::spawn(|| {
        std::thread::sleep(Duration::from_secs(10));
        tracing::warn!(
            "the Kafka client did not close within 10 s; exiting (state and offsets are saved)"
        );
        std::process::exit(0);
    });
    tracing::info!(events = s.engine.stats.events, "stopped");
    drop(lag_task);
    drop(consumer);
    Ok(())
}

/// SIGTERM or Ctrl-C. The handlers are installed when this is called, not when first polled.
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    #[cfg(unix)]
    let term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate());
    async move {
        let ctrl_c = tokio::signal::ctrl_c();
        #[cfg(unix)]
        {
            let mut term = match term {
                Ok(t) => t,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
            tokio::select! {
                _ = ctrl_c => {},
                _ = term.recv() => {},
            }
        }
        #[cfg(not(unix))]
        {
            let _ = ctrl_c.await;
        }
    }
}

/// Takes a snapshot of the state and the offsets it reflects on the consume task, and writes it
/// and commits (or only commits, without a state directory) on a blocking thread, unless the
/// previous one is still at it (the next tick tries again). They never overlap, so they land in
/// order.
fn start_checkpoint(
    task: &mut Option<tokio::task::JoinHandle<()>>,
    consumer: &Arc<GroupConsumer>,
    progress: &Arc<Progress>,
    s: &Setup,
    dir: Option<&std::path::Path>,
) -> bool {
    if task.as_ref().is_some_and(|t| !t.is_finished()) {
        return false;
    }
    let (consumer, progress) = (consumer.clone(), progress.clone());
    *task = Some(match dir {
        Some(dir) => {
            let cp = checkpoint(&progress, s);
            let dir = dir.to_path_buf();
            tokio::task::spawn_blocking(move || write_checkpoint(&consumer, &progress, &cp, &dir))
        }
        None => tokio::task::spawn_blocking(move || progress.commit(&*consumer, None)),
    });
    true
}

fn checkpoint(progress: &Progress, s: &Setup) -> crate::checkpoint::Checkpoint {
    crate::checkpoint::Checkpoint {
        version: crate::checkpoint::VERSION,
        written_at: chrono::Utc::now(),
        offsets: progress.checkpoint_offsets(),
        engine: s.engine.snapshot(),
    }
}

/// The engine's counters as last exported, to add only what changed since.
#[derive(Default)]
struct ExportedStats {
    allowlisted: std::collections::BTreeMap<String, u64>,
    ip_hidden_skips: u64,
    evicted_keys: u64,
    window_entries_summarised: u64,
    window_entries_dropped: u64,
    alarms_evicted: u64,
    alarm_fields_truncated: u64,
    created_evicted: u64,
    created_expired: u64,
    quarantined_evicted: u64,
    quarantined_expired: u64,
}

impl ExportedStats {
    fn export(&mut self, stats: &crate::engine::Stats, metrics: &crate::telemetry::Metrics) {
        for (rule, n) in &stats.allowlisted {
            let before = self.allowlisted.insert(rule.clone(), *n).unwrap_or(0);
            metrics
                .allowlisted
                .with_label_values(&[rule.as_str()])
                .inc_by(n.saturating_sub(before));
        }
        metrics
            .ip_hidden_skips
            .inc_by(stats.ip_hidden_skips.saturating_sub(self.ip_hidden_skips));
        self.ip_hidden_skips = stats.ip_hidden_skips;
        metrics
            .state_evicted_keys
            .inc_by(stats.evicted_keys.saturating_sub(self.evicted_keys));
        self.evicted_keys = stats.evicted_keys;
        for (counter, now, before) in [
            (
                &metrics.window_entries_summarised,
                stats.window_entries_summarised,
                &mut self.window_entries_summarised,
            ),
            (
                &metrics.window_entries_dropped,
                stats.window_entries_dropped,
                &mut self.window_entries_dropped,
            ),
            (
                &metrics.alarms_evicted,
                stats.alarms_evicted,
                &mut self.alarms_evicted,
            ),
            (
                &metrics.alarm_fields_truncated,
                stats.alarm_fields_truncated,
                &mut self.alarm_fields_truncated,
            ),
            (
                &metrics.created_evicted,
                stats.created_evicted,
                &mut self.created_evicted,
            ),
            (
                &metrics.created_expired,
                stats.created_expired,
                &mut self.created_expired,
            ),
            (
                &metrics.quarantined_evicted,
                stats.quarantined_evicted,
                &mut self.quarantined_evicted,
            ),
            (
                &metrics.quarantined_expired,
                stats.quarantined_expired,
                &mut self.quarantined_expired,
            ),
        ] {
            counter.inc_by(now.saturating_sub(*before));
            *before = now;
        }
    }
}

/// Consumer lag per input topic: the end of each assigned partition minus our position.
fn update_lag(consumer: &GroupConsumer, metrics: &crate::telemetry::Metrics) {
    let Ok(positions) = consumer.position() else {
        return;
    };
    let mut per_topic: HashMap<String, i64> = HashMap::new();
    for e in positions.elements() {
        let Ok((_, high)) =
            consumer.fetch_watermarks(e.topic(), e.partition(), Duration::from_millis(500))
        else {
            continue;
        };
        let at = match e.offset() {
            rdkafka::Offset::Offset(o) => o,
            _ => continue,
        };
        *per_topic.entry(e.topic().to_owned()).or_default() += (high - at).max(0);
    }
    for (topic, lag) in per_topic {
        metrics
            .consumer_lag
            .with_label_values(&[topic.as_str()])
            .set(lag);
    }
}

/// The load generator: every record of the inputs (framed as the file source frames them),
/// `repeat` times, to `topic` at `rate` records per second (0: unpaced). Each record is handed
/// to librdkafka when it is due (its Kafka timestamp is then), deliveries are awaited behind;
/// a full local queue is waited out, not dropped. Returns records sent and seconds taken.
pub async fn load(
    brokers: &str,
    topic: &str,
    rate: u64,
    repeat: u32,
    paths: &[String],
) -> anyhow::Result<(u64, f64)> {
    use rdkafka::error::{KafkaError, RDKafkaErrorCode};
    let records = crate::source::read_records(paths)?;
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("linger.ms", if rate == 0 { "20" } else { "1" })
        .set("compression.type", "lz4")
        .set("queue.buffering.max.messages", "1000000")
        .create()?;
    let start = Instant::now();
    let mut sent: u64 = 0;
    let mut pending = std::collections::VecDeque::new();
    for _ in 0..repeat {
        for r in &records {
            if rate > 0 {
                // Sleep only when 1 ms or more ahead of schedule (timer granularity).
                let due = Duration::from_secs_f64(sent as f64 / rate as f64);
                if let Some(wait) = due.checked_sub(start.elapsed())
                    && wait >= Duration::from_millis(1)
                {
                    tokio::time::sleep(wait).await;
                }
            }
            let mut record = FutureRecord::<(), _>::to(topic).payload(r.as_slice());
            loop {
                match producer.send_result(record) {
                    Ok(delivery) => {
                        pending.push_back(delivery);
                        break;
                    }
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                        record = back;
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                    Err((e, _)) => anyhow::bail!("produce: {e}"),
                }
            }
            sent += 1;
            // Collect the acknowledgements that are in (waiting only when too many are out).
            loop {
                let full = pending.len() > 50_000;
                let Some(front) = pending.front_mut() else {
                    break;
                };
                let done = if full {
                    Some(front.await)
                } else {
                    poll_once(front)
                };
                let Some(done) = done else { break };
                pending.pop_front();
                match done {
                    Ok(Ok(_)) => {}
                    Ok(Err((e, _))) => anyhow::bail!("produce: {e}"),
                    Err(_) => anyhow::bail!("produce: cancelled"),
                }
            }
        }
    }
    for f in pending {
        match f.await {
            Ok(Ok(_)) => {}
            Ok(Err((e, _))) => anyhow::bail!("produce: {e}"),
            Err(_) => anyhow::bail!("produce: cancelled"),
        }
    }
    Ok((sent, start.elapsed().as_secs_f64()))
}

/// Polls a future once without blocking: `Some` if it is ready.
fn poll_once<F: std::future::Future + Unpin>(f: &mut F) -> Option<F::Output> {
    let waker = std::task::Waker::noop();
    let mut cx = std::task::Context::from_waker(waker);
    match std::pin::Pin::new(f).poll(&mut cx) {
        std::task::Poll::Ready(v) => Some(v),
        std::task::Poll::Pending => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::consumer::BaseConsumer;
    use rdkafka::mocking::MockCluster;

    /// librdkafka's in-process mock broker goes down before an alarm is produced and comes back
    /// 3 s later: the delivery is retried (librdkafka gives up on each attempt after 1 s here)
    /// and lands; nothing is dropped.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_delivery_is_retried_through_a_broker_outage_and_lands() {
        let cluster = MockCluster::new(1).unwrap();
        cluster.create_topic("alarms", 1, 1).unwrap();
        let producer: FutureProducer = ClientConfig::new()
            .set("bootstrap.servers", cluster.bootstrap_servers())
            .set("acks", "all")
            .set("enable.idempotence", "true")
            .set("message.timeout.ms", "1000")
            .set("linger.ms", "0")
            .create()
            .unwrap();
        cluster.broker_down(-1).unwrap();
        let started = Instant::now();
        let (attempts, ()) = tokio::join!(
            deliver(&producer, "alarms", "akw-1", b"{\"alarm\":1}", None),
            async {
                tokio::time::sleep(Duration::from_secs(3)).await;
                cluster.broker_up(-1).unwrap();
            }
        );
        assert!(attempts >= 2, "{attempts} attempt(s)");
        assert!(started.elapsed() >= Duration::from_secs(3));
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", cluster.bootstrap_servers())
            .set("group.id", "check")
            .create()
            .unwrap();
        let mut tpl = rdkafka::TopicPartitionList::new();
        tpl.add_partition_offset("alarms", 0, rdkafka::Offset::Beginning)
            .unwrap();
        consumer.assign(&tpl).unwrap();
        let got = tokio::task::spawn_blocking(move || {
            let until = Instant::now() + Duration::from_secs(10);
            while Instant::now() < until {
                if let Some(Ok(m)) = consumer.poll(Duration::from_millis(200)) {
                    return Some((m.key().map(<[u8]>::to_vec), m.payload().map(<[u8]>::to_vec)));
                }
            }
            None
        })
        .await
        .unwrap();
        assert_eq!(
            got,
            Some((Some(b"akw-1".to_vec()), Some(b"{\"alarm\":1}".to_vec())))
        );
    }
}
