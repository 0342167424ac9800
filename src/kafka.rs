//! `akwatch run`: the pipeline on Kafka. At-least-once: an input offset is stored for commit only
//! after every alarm (and dead-letter record) derived from it has been acknowledged by the broker
//! (`acks=all`, idempotent producer); offsets are committed every second and at shutdown.
//!
//! Still to come (next milestone): state checkpoints, metrics and health endpoints, rebalance
//! hooks, bounded concurrency between stages.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::Message;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
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
const COMMIT_EVERY: Duration = Duration::from_secs(1);
/// With a state directory, state and offsets are checkpointed (and the offsets committed)
/// together this often.
const CHECKPOINT_EVERY: Duration = Duration::from_secs(5);

fn client_config(config: &Config) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &config.brokers);
    for (k, v) in &config.options {
        c.set(k, v);
    }
    c
}

/// Produces one record, retrying with backoff until the broker acknowledges it.
async fn deliver(
    producer: &FutureProducer,
    topic: &str,
    key: &str,
    payload: &[u8],
    headers: Option<OwnedHeaders>,
) {
    let mut backoff = Duration::from_millis(100);
    loop {
        let mut record = FutureRecord::to(topic).key(key).payload(payload);
        if let Some(h) = &headers {
            record = record.headers(h.clone());
        }
        match producer.send(record, PRODUCE_TIMEOUT).await {
            Ok(_) => return,
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
        Ok(bytes) => deliver(producer, topic, &alarm.alarm_id, &bytes, None).await,
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

/// Runs the service until SIGTERM / Ctrl-C: then stops consuming, notifies pending alarm
/// updates, flushes the producer and commits.
pub async fn run(config: Config) -> anyhow::Result<()> {
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
    for w in &s.warnings {
        tracing::warn!("{w}");
    }
    let consumer: std::sync::Arc<StreamConsumer> = std::sync::Arc::new(
        client_config(&config)
            .set("group.id", &config.group_id)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .create()?,
    );
    let producer: FutureProducer = client_config(&config)
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
    let mut positions: HashMap<(String, i32), i64> = HashMap::new();
    if let Some(dir) = &config.state_dir {
        match crate::checkpoint::read(dir) {
            Ok(Some(cp)) => {
                let same_rules = s.engine.restore(cp.engine);
                for o in &cp.offsets {
                    positions.insert((o.topic.clone(), o.partition), o.offset);
                }
                tracing::info!(written_at = %cp.written_at, partitions = cp.offsets.len(), same_rules, "restored the checkpoint");
            }
            Ok(None) => {
                tracing::info!(dir = %dir.display(), "no checkpoint: starting with empty state")
            }
            Err(e) => tracing::warn!("cannot read the checkpoint, starting with empty state: {e}"),
        }
    }
    let metrics = crate::telemetry::Metrics::new()?;
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
    metrics
        .ready
        .store(true, std::sync::atomic::Ordering::Relaxed);
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

    // Leaks known before any call (deterministic ids: re-sent on restart, harmless).
    for alarm in leak_alarms(&s.enricher) {
        deliver_alarm(&producer, &config.alarm_topic, &alarm).await;
    }

    let mut shutdown = Box::pin(shutdown_signal());
    let mut last_commit = Instant::now();
    let mut last_checkpoint = Instant::now();
    let mut dirty = false;
    let mut ticker = tokio::time::interval(Duration::from_secs(1));
    let mut lag_task: Option<tokio::task::JoinHandle<()>> = None;
    let mut checkpoint_task: Option<tokio::task::JoinHandle<()>> = None;
    let mut results = Vec::new();
    loop {
        let message = tokio::select! {
            _ = &mut shutdown => break,
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
                // Idle: checkpoint what was processed since the last one.
                if let Some(dir) = &config.state_dir
                    && dirty
                    && last_checkpoint.elapsed() >= CHECKPOINT_EVERY
                {
                    last_checkpoint = Instant::now();
                    if start_checkpoint(&mut checkpoint_task, &consumer, &s, &positions, dir) {
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
        if positions
            .get(&(message.topic().to_owned(), message.partition()))
            .is_some_and(|next| message.offset() < *next)
        {
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
        positions.insert(
            (message.topic().to_owned(), message.partition()),
            message.offset() + 1,
        );
        dirty = true;
        match &config.state_dir {
            Some(dir) => {
                if last_checkpoint.elapsed() >= CHECKPOINT_EVERY {
                    last_checkpoint = Instant::now();
                    if start_checkpoint(&mut checkpoint_task, &consumer, &s, &positions, dir) {
                        dirty = false;
                    }
                }
            }
            None => {
                if let Err(e) = consumer.store_offset_from_message(&message) {
                    tracing::warn!(error = %e, "cannot store an offset");
                }
                if last_commit.elapsed() >= COMMIT_EVERY {
                    last_commit = Instant::now();
                    if let Err(e) = consumer.commit_consumer_state(CommitMode::Async) {
                        tracing::debug!(error = %e, "commit");
                    }
                }
            }
        }
    }
    tracing::info!("shutting down: notifying pending alarm updates, flushing, committing");
    for alarm in s.engine.flush() {
        deliver_alarm(&producer, &config.alarm_topic, &alarm).await;
    }
    use rdkafka::producer::Producer;
    producer.flush(Duration::from_secs(30))?;
    if let Some(task) = checkpoint_task.take() {
        let _ = task.await;
    }
    match &config.state_dir {
        Some(dir) => write_checkpoint(&consumer, s.engine.snapshot(), &positions, dir),
        None => {
            if let Err(e) = consumer.commit_consumer_state(CommitMode::Sync) {
                tracing::warn!(error = %e, "final commit");
            }
        }
    }
    tracing::info!(events = s.engine.stats.events, "stopped");
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
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

/// Takes a snapshot of the state and the offsets it reflects on the consume task, and writes and
/// commits it on a blocking thread, unless the previous checkpoint is still being written (the
/// next tick tries again). Checkpoints never overlap, so they land in order.
fn start_checkpoint(
    task: &mut Option<tokio::task::JoinHandle<()>>,
    consumer: &std::sync::Arc<StreamConsumer>,
    s: &Setup,
    positions: &HashMap<(String, i32), i64>,
    dir: &std::path::Path,
) -> bool {
    if task.as_ref().is_some_and(|t| !t.is_finished()) {
        return false;
    }
    let (consumer, snapshot, positions, dir) = (
        consumer.clone(),
        s.engine.snapshot(),
        positions.clone(),
        dir.to_path_buf(),
    );
    *task = Some(tokio::task::spawn_blocking(move || {
        write_checkpoint(&consumer, snapshot, &positions, &dir)
    }));
    true
}

/// Writes the state with the offsets it reflects, then commits those offsets. Every alarm derived
/// from events before them has been acknowledged (deliveries are awaited before an offset moves).
fn write_checkpoint(
    consumer: &StreamConsumer,
    snapshot: crate::engine::Snapshot,
    positions: &HashMap<(String, i32), i64>,
    dir: &std::path::Path,
) {
    let mut offsets: Vec<crate::checkpoint::TopicOffset> = positions
        .iter()
        .map(
            |((topic, partition), offset)| crate::checkpoint::TopicOffset {
                topic: topic.clone(),
                partition: *partition,
                offset: *offset,
            },
        )
        .collect();
    offsets.sort_by(|a, b| (&a.topic, a.partition).cmp(&(&b.topic, b.partition)));
    let cp = crate::checkpoint::Checkpoint {
        version: crate::checkpoint::VERSION,
        written_at: chrono::Utc::now(),
        offsets: offsets.clone(),
        engine: snapshot,
    };
    match crate::checkpoint::write(dir, &cp) {
        Ok(bytes) => tracing::debug!(bytes, partitions = offsets.len(), "checkpoint written"),
        Err(e) => {
            // Without a checkpoint the offsets must not move either: state and offsets go together.
            tracing::error!(error = %e, "cannot write the checkpoint; offsets not committed");
            return;
        }
    }
    let mut tpl = rdkafka::TopicPartitionList::new();
    for o in &offsets {
        if tpl
            .add_partition_offset(&o.topic, o.partition, rdkafka::Offset::Offset(o.offset))
            .is_err()
        {
            continue;
        }
    }
    if tpl.count() > 0
        && let Err(e) = consumer.commit(&tpl, CommitMode::Sync)
    {
        tracing::warn!(error = %e, "commit after checkpoint");
    }
}

/// The engine's counters as last exported, to add only what changed since.
#[derive(Default)]
struct ExportedStats {
    allowlisted: std::collections::BTreeMap<String, u64>,
    ip_hidden_skips: u64,
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
    }
}

/// Consumer lag per input topic: the end of each assigned partition minus our position.
fn update_lag(consumer: &StreamConsumer, metrics: &crate::telemetry::Metrics) {
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
/// `repeat` times, to `topic` at `rate` records per second (0: unpaced). Returns records sent.
pub async fn load(
    brokers: &str,
    topic: &str,
    rate: u64,
    repeat: u32,
    paths: &[String],
) -> anyhow::Result<u64> {
    let records = crate::source::read_records(paths)?;
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("linger.ms", if rate == 0 { "20" } else { "0" })
        .set("compression.type", "lz4")
        .set("queue.buffering.max.messages", "1000000")
        .create()?;
    let start = Instant::now();
    let mut sent: u64 = 0;
    let mut pending = Vec::new();
    for _ in 0..repeat {
        for r in &records {
            if rate > 0 {
                // Sleep only when 2 ms or more ahead of schedule (timer granularity).
                let due = Duration::from_secs_f64(sent as f64 / rate as f64);
                if let Some(wait) = due.checked_sub(start.elapsed())
                    && wait >= Duration::from_millis(2)
                {
                    tokio::time::sleep(wait).await;
                }
            }
            pending.push(producer.send(
                FutureRecord::<(), _>::to(topic).payload(r.as_slice()),
                Duration::from_secs(60),
            ));
            sent += 1;
            if pending.len() >= 10_000 {
                for f in pending.drain(..) {
                    f.await.map_err(|(e, _)| anyhow::anyhow!("produce: {e}"))?;
                }
            }
        }
    }
    for f in pending {
        f.await.map_err(|(e, _)| anyhow::anyhow!("produce: {e}"))?;
    }
    Ok(sent)
}
