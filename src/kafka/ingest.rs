//! The ingest stage of the service: the input topics' partitions merged in event time (see
//! [`merge`](super::merge)), each record decoded and then handed on — to the pipeline on this
//! task (one instance, `kafka.repartition: false`), or to the repartition topic (scale-out,
//! where detection runs on the [`detect`](super::detect) task). It owns the input offsets: a
//! record is done, and its offset may be committed, once everything derived from it is
//! acknowledged (alarms and dead letters, or its events' repartition writes).

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rdkafka::Message;
use rdkafka::consumer::Consumer;
use rdkafka::error::{KafkaError, KafkaResult, RDKafkaErrorCode};
use rdkafka::message::BorrowedMessage;

use super::deliver::{Abandoned, Outputs, Round, Stop};
use super::group::{GroupConsumer, Progress};
use super::merge::{self, Merge, Tp};
use super::reports::ReportUpdate;
use super::{ExportedStats, repartition, start_checkpoint, update_lag};
use crate::engine::Engine;
use crate::event::{Event, Origin};
use crate::pipeline::Pipeline;
use crate::provider::{Decoder, RecordRejects, Reject, RejectKind};
use crate::telemetry::Metrics;

/// How often the ingest side writes the input partitions' progress to the repartition topic.
const PROGRESS_EVERY: Duration = Duration::from_millis(20);

/// At most this many records already fetched are taken per round of the consume loop.
pub(super) const RECV_BATCH: usize = 256;

/// Where decoded records go.
pub(super) enum Next {
    /// The pipeline, on this task: one instance owns every key.
    Local {
        pipeline: Box<Pipeline>,
        /// Checkpoints (state and offsets) go here; without it, offsets are committed alone.
        state_dir: Option<PathBuf>,
    },
    /// The repartition topic, re-keyed by access key (scale-out).
    Repartition(repartition::Writer<Written>),
}

/// The ingest stage's clients and settings (what [`Ingest::new`] needs from the service).
pub(super) struct IngestSetup<'a> {
    pub consumer: Arc<GroupConsumer>,
    pub progress: Arc<Progress>,
    pub metrics: Arc<Metrics>,
    pub out: &'a Outputs<'a>,
    pub stop: Stop,
    pub next: Next,
    /// The engine of the local pipeline (unused with scale-out).
    pub engine: Engine,
    pub reports: Option<tokio::sync::mpsc::Receiver<ReportUpdate>>,
    /// Reloaded rules, policies, lists and leak feeds (one instance).
    pub reload: Option<tokio::sync::mpsc::Receiver<super::reload::Reload>>,
    pub risk_topic: Option<String>,
    /// The metric label (provider) of each input topic of one configured cloud, and the decoder
    /// of each input topic.
    pub labels: HashMap<String, &'static str>,
    pub decoders: HashMap<String, Decoder>,
    pub fallback: Decoder,
    pub merge: Merge<Pending>,
    /// Partition ends are asked on a connection of their own: on the consumer's, the request
    /// waits behind its long fetches.
    pub watermarks: Arc<rdkafka::consumer::BaseConsumer<super::Logged>>,
    pub commit_interval: Duration,
    /// Cleared when the detection task ends (scale-out): ingest then stops too.
    pub detect_alive: Arc<AtomicBool>,
}

/// The ingest loop's state.
pub(super) struct Ingest<'a> {
    s: IngestSetup<'a>,
    /// Stopping without having delivered everything (the stop's grace period ran out).
    pub abandoned: bool,
    // Checkpoint / commit schedule.
    last_checkpoint: Instant,
    dirty: bool,
    rebalances_seen: u64,
    checkpoint_task: Option<tokio::task::JoinHandle<()>>,
    // Gauges.
    exported: ExportedStats,
    last_gauges: Instant,
    lag_task: Option<tokio::task::JoinHandle<()>>,
    late_exported: u64,
    consume_errors: u64,
    last_consume_error: Option<Instant>,
    /// The rebalance count the merge's assignment follows.
    merge_rebalances: u64,
    /// Scale-out: each input partition's progress as last written, and when.
    progress_sent: HashMap<Tp, (i64, bool, Instant)>,
    last_progress: Instant,
    /// Partition numbers that reported their end, the check of which partition it was, and
    /// its answer.
    eof_wanted: HashSet<i32>,
    eof_check: Option<tokio::task::JoinHandle<Vec<(Tp, i64)>>>,
    eof_ends: Option<Vec<(Tp, i64)>>,
}

/// What woke the loop.
enum Wake<'m> {
    Stop,
    Report(ReportUpdate),
    Reload(super::reload::Reload),
    Tick,
    Ends(Option<Vec<(Tp, i64)>>),
    Idle,
    Message(KafkaResult<BorrowedMessage<'m>>),
}

impl<'a> Ingest<'a> {
    pub fn new(s: IngestSetup<'a>) -> Ingest<'a> {
        Ingest {
            s,
            abandoned: false,
            last_checkpoint: Instant::now(),
            dirty: false,
            rebalances_seen: 0,
            checkpoint_task: None,
            exported: ExportedStats::default(),
            last_gauges: Instant::now(),
            lag_task: None,
            late_exported: 0,
            consume_errors: 0,
            last_consume_error: None,
            merge_rebalances: u64::MAX,
            progress_sent: HashMap::new(),
            last_progress: Instant::now(),
            eof_wanted: HashSet::new(),
            eof_check: None,
            eof_ends: None,
        }
    }

    fn scale_out(&self) -> bool {
        matches!(self.s.next, Next::Repartition(_))
    }

    /// Starts a checkpoint (one instance with a state directory) or a commit, unless the
    /// previous one is still at it.
    fn start_checkpoint(&mut self) -> bool {
        let dir = match &self.s.next {
            Next::Local { state_dir, .. } => state_dir.as_deref(),
            Next::Repartition(_) => None,
        };
        start_checkpoint(
            &mut self.checkpoint_task,
            &self.s.consumer,
            &self.s.progress,
            &self.s.engine,
            dir,
        )
    }

    /// Consumes until the stop (or until a delivery is abandoned), then waits for the
    /// repartition writes still out.
    pub async fn run(&mut self) {
        let consumer = self.s.consumer.clone();
        let mut ticker = tokio::time::interval(Duration::from_millis(100));
        // A partition waited for may have become idle (20 ms after its end, or its timeout):
        // looked at on a steady 5 ms tick rather than a timer set for every record.
        let mut wake = tokio::time::interval(Duration::from_millis(5));
        wake.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        while !self.abandoned {
            self.s.metrics.heartbeat();
            self.follow_assignment();
            let eof_check = &mut self.eof_check;
            let woke = tokio::select! {
                // Once the stop signal has come, no further record is taken.
                biased;
                _ = self.s.stop.signalled() => Wake::Stop,
                Some(update) = super::next_report(&mut self.s.reports) => Wake::Report(update),
                Some(update) = super::reload::next(&mut self.s.reload) => Wake::Reload(update),
                _ = ticker.tick() => Wake::Tick,
                ends = async { eof_check.as_mut()?.await.ok() }, if eof_check.is_some() => {
                    Wake::Ends(ends)
                }
                _ = wake.tick(), if !self.s.merge.is_empty() => Wake::Idle,
                m = consumer.recv() => Wake::Message(m),
            };
            match woke {
                Wake::Stop => break,
                Wake::Report(update) => {
                    self.on_report(update).await;
                    continue;
                }
                Wake::Reload(update) => {
                    self.on_reload(update).await;
                    continue;
                }
                Wake::Tick => {
                    self.on_tick();
                    continue;
                }
                Wake::Ends(ends) => {
                    self.eof_check = None;
                    self.eof_ends = ends;
                }
                Wake::Idle => {}
                Wake::Message(m) => {
                    self.on_message(m);
                    // The records already fetched are taken in one round (up to
                    // `RECV_BATCH`): one pass of the select, the merge and the bookkeeping per
                    // batch instead of per record.
                    for _ in 1..RECV_BATCH {
                        let mut next = Box::pin(consumer.recv());
                        match super::poll_once(&mut next) {
                            Some(m) => self.on_message(m),
                            None => break,
                        }
                    }
                }
            }
            self.check_ends();
            if self.release().await.is_err() || self.drain_writes().await.is_err() {
                self.abandoned = true;
                break;
            }
            self.export_merge();
            self.checkpoint_if_due();
        }
        self.finish_writes().await;
        tracing::info!(late = self.s.merge.late, "ingest stopped");
    }

    /// After a rebalance: the merge follows the assignment (and no partition stays paused).
    fn follow_assignment(&mut self) {
        let rebalances = self.s.progress.rebalances.load(Ordering::Relaxed);
        if rebalances == self.merge_rebalances {
            return;
        }
        self.merge_rebalances = rebalances;
        if let Ok(tpl) = self.s.consumer.assignment() {
            let assigned: Vec<Tp> = tpl
                .elements()
                .iter()
                .map(|e| (e.topic().to_owned(), e.partition()))
                .collect();
            self.s.merge.assign(&assigned);
            // Pausing does not outlive an assignment.
            let _ = self.s.consumer.resume(&tpl);
        }
    }

    /// A new credential report version, swapped in between two records (locally; with
    /// scale-out the detection task follows the reports).
    async fn on_report(&mut self, update: ReportUpdate) {
        self.s.metrics.report_updates.inc();
        let Next::Local { pipeline, .. } = &mut self.s.next else {
            return;
        };
        let outputs = pipeline.reports_changed(update.index, &update.risks);
        if super::emit_all(outputs, self.s.out, self.s.risk_topic.as_deref())
            .await
            .is_err()
        {
            self.abandoned = true;
        }
    }

    /// Reloaded configuration, swapped in between two records (one instance; with scale-out
    /// the detection task takes the reloads).
    async fn on_reload(&mut self, update: super::reload::Reload) {
        let Next::Local { pipeline, .. } = &mut self.s.next else {
            return;
        };
        if let Some((rules, policy)) = update.detection {
            // Checked by the watcher with `Engine::new`: it cannot fail here.
            match self.s.engine.set_rules(&rules, policy) {
                Ok(reset) => {
                    self.s.metrics.describe_rules(&rules);
                    tracing::info!(
                        rules = rules.rules.len(),
                        allowlist = self.s.engine.policy.allowlist.len(),
                        state_reset = ?reset,
                        "rules and policies swapped in"
                    );
                }
                Err(errors) => {
                    tracing::error!(errors = %errors.join("; "), "the reloaded rules and policies do not apply; the ones in use stay")
                }
            }
        }
        if let Some(lists) = update.lists {
            pipeline.enricher.lists = lists;
        }
        if let Some(leaks) = update.leaks {
            let outputs = pipeline.leaks_changed(leaks);
            if super::emit_all(outputs, self.s.out, self.s.risk_topic.as_deref())
                .await
                .is_err()
            {
                self.abandoned = true;
            }
        }
    }

    /// Every 100 ms: gauges, the lag (every 10 s), progress marks, an idle checkpoint.
    fn on_tick(&mut self) {
        if self.scale_out() && !self.s.detect_alive.load(Ordering::Relaxed) {
            tracing::error!("the detection task ended before the stop: stopping the service");
            self.abandoned = true;
            return;
        }
        let metrics = &self.s.metrics;
        self.exported.export(&self.s.engine.stats, metrics);
        metrics
            .checkpoint_age_seconds
            .set(self.last_checkpoint.elapsed().as_secs_f64());
        if self.last_gauges.elapsed() >= Duration::from_secs(10) {
            self.last_gauges = Instant::now();
            let (keys, entries, bytes) = self.s.engine.state.size();
            metrics.state_keys.set(keys as i64);
            metrics.state_entries.set(entries as i64);
            metrics.state_bytes.set(bytes as i64);
            // Off the consume task: the watermark look-ups are network round trips.
            if self
                .lag_task
                .as_ref()
                .is_none_or(tokio::task::JoinHandle::is_finished)
            {
                let (c, m) = (self.s.consumer.clone(), metrics.clone());
                let admin = self.s.watermarks.clone();
                let topics: Vec<String> = self.s.decoders.keys().cloned().collect();
                self.lag_task = Some(tokio::task::spawn_blocking(move || {
                    update_lag(&c, &admin, &m, &topics)
                }));
            }
        }
        if let Next::Repartition(w) = &self.s.next {
            send_progress(w, &self.s.merge, &mut self.progress_sent);
        }
        // Idle: checkpoint / commit what was processed since the last one.
        if self.dirty && self.last_checkpoint.elapsed() >= self.s.commit_interval {
            self.last_checkpoint = Instant::now();
            if self.start_checkpoint() {
                self.dirty = false;
            }
        }
    }

    /// A record (or a consumer error / partition end): decoded, and into the merge.
    fn on_message(&mut self, message: KafkaResult<BorrowedMessage<'_>>) {
        let message = match message {
            Ok(m) => m,
            Err(KafkaError::PartitionEOF(p)) => {
                // librdkafka names the partition, not the topic: which of the partitions with
                // that number reached its end is checked off the consume task.
                self.eof_wanted.insert(p);
                return;
            }
            Err(e)
                if matches!(
                    e.rdkafka_error_code(),
                    Some(
                        RDKafkaErrorCode::UnknownTopicOrPartition | RDKafkaErrorCode::UnknownTopic
                    )
                ) =>
            {
                // A missing input topic: reported once by the topic check, with a gauge.
                tracing::debug!(error = %e, "consume error");
                return;
            }
            Err(e) => {
                // An outage makes librdkafka report an error per poll: one line per 10 s.
                self.consume_errors += 1;
                if self
                    .last_consume_error
                    .is_none_or(|t: Instant| t.elapsed() >= Duration::from_secs(10))
                {
                    tracing::warn!(error = %e, errors = self.consume_errors, "consume error");
                    self.last_consume_error = Some(Instant::now());
                    self.consume_errors = 0;
                }
                return;
            }
        };
        let tp = (message.topic().to_owned(), message.partition());
        if self.s.progress.already_done(&tp.0, tp.1, message.offset())
            || !self.s.merge.fresh(&tp, message.offset())
        {
            return;
        }
        let (time, pending) = self.decode(&message);
        if let Some(flow) = self.s.merge.push(&tp, time, pending) {
            apply_flow(&self.s.consumer, flow);
        }
    }

    /// Decodes a record, isolated: a panic while decoding makes it an `internal_error` dead
    /// letter. Its time in the merge is its earliest event's (a record of rejects only leaves
    /// at once).
    fn decode(&self, message: &BorrowedMessage<'_>) -> (i64, Pending) {
        let configured = self.s.labels.get(message.topic()).copied();
        let origin = Origin::kafka(message.topic(), message.partition(), message.offset());
        let payload = message.payload().unwrap_or_default();
        let decoder = self
            .s
            .decoders
            .get(message.topic())
            .copied()
            .unwrap_or(self.s.fallback);
        let mut results = Vec::new();
        if let Err(reason) =
            crate::isolate::guard(|| decoder.decode(payload, &origin, &mut results))
        {
            results.clear();
            results.push(Err(Reject::new(
                RejectKind::InternalError,
                reason,
                origin.clone(),
            )));
        }
        let time = results
            .iter()
            .filter_map(|r| r.as_ref().ok())
            .map(|e| e.event_time.timestamp())
            .min()
            .unwrap_or(i64::MIN);
        // The provider label: the topic's configured cloud, else the one the record decoded as
        // (`unknown` when it decoded to nothing), never `auto`.
        let label = configured.unwrap_or_else(|| provider_label(&results));
        self.s.metrics.record_consumed(label);
        let pending = Pending {
            offset: message.offset(),
            label,
            ingested: message.timestamp().to_millis(),
            origin,
            payload: payload.to_vec(),
            results,
        };
        (time, pending)
    }

    /// End-of-partition checks: a finished one marks the caught-up partitions; the next starts
    /// for the partition numbers that reported an end since.
    fn check_ends(&mut self) {
        if let Some(ends) = self.eof_ends.take() {
            let positions = self.s.consumer.position().ok();
            for (tp, end) in ends {
                let at = positions.as_ref().and_then(|l| {
                    match l.find_partition(&tp.0, tp.1)?.offset() {
                        rdkafka::Offset::Offset(o) => Some(o),
                        _ => None,
                    }
                });
                if at.is_some_and(|at| at >= end) {
                    self.s.merge.eof(&tp);
                }
            }
        }
        if self.eof_check.is_none() && !self.eof_wanted.is_empty() {
            let wanted: Vec<Tp> = self
                .eof_wanted
                .drain()
                .flat_map(|p| self.s.merge.numbered(p))
                .collect();
            let c = self.s.watermarks.clone();
            self.eof_check = Some(tokio::task::spawn_blocking(move || {
                wanted
                    .into_iter()
                    .filter_map(|tp| {
                        let (_, end) = c
                            .fetch_watermarks(&tp.0, tp.1, Duration::from_secs(2))
                            .ok()?;
                        Some((tp, end))
                    })
                    .collect()
            }));
        }
    }

    /// Hands on what the merge lets go, in event-time order.
    async fn release(&mut self) -> Result<(), Abandoned> {
        // The round's alarms and dead letters are awaited together at its end; the records
        // processed meanwhile are done only then.
        let mut round = Round::default();
        let mut processed: Vec<(String, i32, i64, Option<i64>)> = Vec::new();
        while let Some(((topic, partition), record, flow)) = self.s.merge.pop() {
            if let Some(flow) = flow {
                apply_flow(&self.s.consumer, flow);
            }
            self.dirty = true;
            let Pending {
                offset,
                label,
                ingested,
                origin,
                payload,
                results,
            } = record;
            let written = Written {
                topic,
                partition,
                offset,
                ingested,
                label,
                origin,
                payload,
            };
            match &mut self.s.next {
                // Scale-out: the events go to the repartition topic; the record is done once
                // they are all acknowledged (`drain_writes`, in order).
                Next::Repartition(w) => {
                    write_record(w, written, results, self.s.out, &self.s.progress).await?;
                }
                Next::Local { pipeline, .. } => {
                    process(
                        pipeline,
                        &mut self.s.engine,
                        &written,
                        results,
                        self.s.out,
                        &mut round,
                    )
                    .await?;
                    processed.push((written.topic, partition, offset, ingested));
                    if round.is_empty() {
                        self.mark_done(&mut processed);
                    }
                }
            }
        }
        self.s.out.settle(&mut round).await?;
        // Everything derived from these records is acknowledged: their offsets may be
        // committed.
        self.mark_done(&mut processed);
        Ok(())
    }

    fn mark_done(&self, processed: &mut Vec<(String, i32, i64, Option<i64>)>) {
        if processed.is_empty() {
            return;
        }
        self.s
            .progress
            .done_all(processed.iter().map(|(t, p, o, _)| (t.as_str(), *p, *o)));
        let now = chrono::Utc::now().timestamp_millis();
        for (_, _, _, ingested) in processed.drain(..) {
            observe_done_at(&self.s.metrics, ingested, now);
        }
    }

    /// Scale-out: the records whose writes the broker acknowledged are done; the input
    /// partitions' progress is written.
    async fn drain_writes(&mut self) -> Result<(), Abandoned> {
        let Next::Repartition(w) = &mut self.s.next else {
            return Ok(());
        };
        while let Some(done) = w.next_done(false).await {
            finish_written(done, self.s.out, &self.s.progress).await?;
        }
        self.s.metrics.repartition_pending.set(w.pending() as i64);
        if self.last_progress.elapsed() >= PROGRESS_EVERY {
            self.last_progress = Instant::now();
            send_progress(w, &self.s.merge, &mut self.progress_sent);
        }
        Ok(())
    }

    fn export_merge(&mut self) {
        let merge = &self.s.merge;
        // With scale-out, detection counts the late events (per event, where order matters);
        // the ingest merge's own are not added twice.
        if !self.scale_out() {
            self.s
                .metrics
                .late_records
                .inc_by(merge.late.saturating_sub(self.late_exported));
        }
        self.late_exported = merge.late;
        self.s.metrics.merge_queued.set(merge.len() as i64);
    }

    /// Checkpoints on schedule, and at once after a rebalance: the state then reflects the
    /// partitions kept.
    fn checkpoint_if_due(&mut self) {
        let rebalances = self.s.progress.rebalances.load(Ordering::Relaxed);
        if self.dirty
            && (self.last_checkpoint.elapsed() >= self.s.commit_interval
                || rebalances != self.rebalances_seen)
        {
            self.last_checkpoint = Instant::now();
            if self.start_checkpoint() {
                self.dirty = false;
                self.rebalances_seen = rebalances;
            }
        }
    }

    /// Scale-out: the records whose writes are acknowledged within the grace period are done
    /// (in order); the rest are read again at the next start.
    async fn finish_writes(&mut self) {
        let Next::Repartition(w) = &mut self.s.next else {
            return;
        };
        let until = Instant::now() + self.s.stop.remaining(Duration::from_secs(30));
        while w.pending() > 0 {
            let left = until.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, w.next_done(true)).await {
                Ok(Some(done)) => {
                    if finish_written(done, self.s.out, &self.s.progress)
                        .await
                        .is_err()
                    {
                        break;
                    }
                }
                Ok(None) | Err(_) => break,
            }
        }
    }

    /// At the stop (one instance): the alarm updates the engine still holds are notified.
    pub async fn flush_alarms(&mut self) {
        if self.abandoned || self.scale_out() {
            return;
        }
        let engine = &mut self.s.engine;
        let pending = crate::isolate::guard(|| engine.flush()).unwrap_or_else(|e| {
            tracing::error!("pending alarm updates lost: {e}");
            Vec::new()
        });
        for alarm in pending {
            if self.s.out.alarm(&alarm).await.is_err() {
                self.abandoned = true;
                break;
            }
        }
    }

    /// The last checkpoint's write / commit, awaited within the grace period.
    pub async fn checkpoint_written(&mut self) {
        if let Some(task) = self.checkpoint_task.take() {
            let _ =
                tokio::time::timeout(self.s.stop.remaining(Duration::from_secs(30)), task).await;
        }
    }

    /// The local engine (its state for the final checkpoint, its counts).
    pub fn engine(&self) -> &Engine {
        &self.s.engine
    }
}

/// One record through the local pipeline: each event's alarms out in order, then one dead
/// letter for its rejected events (and events whose processing failed), if any.
async fn process(
    pipeline: &Pipeline,
    engine: &mut Engine,
    record: &Written,
    results: Vec<Result<Event, Reject>>,
    out: &Outputs<'_>,
    round: &mut Round,
) -> Result<(), Abandoned> {
    let metrics = out.metrics;
    let mut rejects = RecordRejects::default();
    for result in results {
        let reject = match result {
            Ok(event) => {
                metrics.event_decoded(event.cloud);
                match pipeline.event(engine, &event) {
                    Ok(alarms) => {
                        out.event_alarms(round, alarms, &event, record.ingested)
                            .await?;
                        continue;
                    }
                    Err(reason) => {
                        tracing::error!(origin = %record.origin, %reason, "processing a record failed; it goes to the dead-letter topic");
                        Reject::new(RejectKind::InternalError, reason, record.origin.clone())
                    }
                }
            }
            Err(reject) => reject,
        };
        add_reject(&mut rejects, reject, record.label, out);
    }
    dead_letter_rejects(rejects, record, out, round).await
}

/// Counts a rejected event of a record and keeps it for the record's one dead letter.
/// The cloud a record of an auto-detected topic decoded as: its first event's, `unknown` when it
/// has none.
pub(crate) fn provider_label(results: &[Result<crate::event::Event, Reject>]) -> &'static str {
    results
        .iter()
        .find_map(|r| r.as_ref().ok())
        .map_or("unknown", |e| e.cloud.as_str())
}

fn add_reject(rejects: &mut RecordRejects, reject: Reject, label: &str, out: &Outputs<'_>) {
    out.metrics
        .records_rejected
        .with_label_values(&[label, reject.kind.as_str()])
        .inc();
    rejects.add(reject);
}

/// One dead letter for a record's rejected events, if it has any.
async fn dead_letter_rejects(
    mut rejects: RecordRejects,
    record: &Written,
    out: &Outputs<'_>,
    round: &mut Round,
) -> Result<(), Abandoned> {
    match rejects.take() {
        Some(reject) => {
            out.dead_letter_in(round, reject, &record.payload, &record.origin)
                .await
        }
        None => Ok(()),
    }
}

/// A decoded record waiting in the event-time merge.
pub(super) struct Pending {
    offset: i64,
    label: &'static str,
    ingested: Option<i64>,
    origin: Origin,
    payload: Vec<u8>,
    results: Vec<Result<Event, Reject>>,
}

/// An input record on its way: being processed, or its events being written to the
/// repartition topic.
pub(super) struct Written {
    topic: String,
    partition: i32,
    offset: i64,
    ingested: Option<i64>,
    label: &'static str,
    origin: Origin,
    payload: Vec<u8>,
}

/// Dead-letters a record's rejects and writes its events to the repartition topic (waiting for
/// the oldest writes when too many are out).
async fn write_record(
    w: &mut repartition::Writer<Written>,
    written: Written,
    results: Vec<Result<Event, Reject>>,
    out: &Outputs<'_>,
    progress: &Progress,
) -> Result<(), Abandoned> {
    let mut rejects = RecordRejects::default();
    let mut events = Vec::with_capacity(results.len());
    for (i, result) in results.into_iter().enumerate() {
        match result {
            Ok(event) => events.push((u32::try_from(i).unwrap_or(u32::MAX), event)),
            Err(reject) => add_reject(&mut rejects, reject, written.label, out),
        }
    }
    // Awaited here, not in the round: the record counts as written (and, once its writes are
    // acknowledged, done — even at a stop whose round was abandoned) right below.
    if let Some(reject) = rejects.take() {
        out.dead_letter(&reject, &written.payload, &written.origin)
            .await?;
    }
    while w.is_full() {
        match w.next_done(true).await {
            Some(done) => finish_written(done, out, progress).await?,
            None => break,
        }
    }
    let (topic, partition, offset, ingested) = (
        written.topic.clone(),
        written.partition,
        written.offset,
        written.ingested,
    );
    match w.write(written, &topic, partition, offset, ingested, events) {
        Ok(()) => {}
        // Too large for the client, say: the record is a dead letter now (before a revocation
        // could commit past it), and done in its turn.
        Err(refused) => {
            dead_letter_unwritten(&refused.tag, &refused.error, out).await?;
            w.push_done(refused.tag);
        }
    }
    progress.written(&topic, partition, offset);
    Ok(())
}

/// A record is done: the time from its Kafka timestamp (ms) to now.
fn observe_done(metrics: &Metrics, ingested: Option<i64>) {
    observe_done_at(metrics, ingested, chrono::Utc::now().timestamp_millis());
}

/// [`observe_done`] with the time now (ms) given: one clock read for a round's records.
fn observe_done_at(metrics: &Metrics, ingested: Option<i64>, now: i64) {
    if let Some(ms) = ingested {
        metrics
            .ingest_to_done_seconds
            .observe((now.saturating_sub(ms).max(0) as f64) / 1000.0);
    }
}

/// A record whose events the repartition topic refused for good goes to the dead-letter topic.
async fn dead_letter_unwritten(
    w: &Written,
    error: &str,
    out: &Outputs<'_>,
) -> Result<(), Abandoned> {
    tracing::error!(origin = %w.origin, %error, "a record's events could not be written to the repartition topic; it goes to the dead-letter topic");
    out.metrics
        .records_rejected
        .with_label_values(&[w.label, RejectKind::InternalError.as_str()])
        .inc();
    let reject = Reject::new(
        RejectKind::InternalError,
        format!("not written to the repartition topic: {error}"),
        w.origin.clone(),
    );
    out.dead_letter(&reject, &w.payload, &w.origin).await
}

/// A record whose writes are all acknowledged (or one was refused for good: then the record is
/// a dead letter) is done: its offset may be committed.
async fn finish_written(
    done: Result<Written, repartition::Refused<Written>>,
    out: &Outputs<'_>,
    progress: &Progress,
) -> Result<(), Abandoned> {
    let written = match done {
        Ok(w) => w,
        Err(refused) => {
            dead_letter_unwritten(&refused.tag, &refused.error, out).await?;
            refused.tag
        }
    };
    progress.done(&written.topic, written.partition, written.offset);
    observe_done(out.metrics, written.ingested);
    Ok(())
}

/// Writes each input partition's progress when it changed, or at least once a second.
fn send_progress(
    w: &repartition::Writer<Written>,
    merge: &Merge<Pending>,
    sent: &mut HashMap<Tp, (i64, bool, Instant)>,
) {
    for (tp, time, caught_up) in merge.progress() {
        let due = sent.get(tp).is_none_or(|(t, c, at)| {
            *t != time || *c != caught_up || at.elapsed() >= Duration::from_secs(1)
        });
        if due {
            w.progress(&tp.0, tp.1, time, caught_up);
            sent.insert(tp.clone(), (time, caught_up, Instant::now()));
        }
    }
}

/// Pauses or resumes fetching a partition for the merge.
fn apply_flow(consumer: &GroupConsumer, flow: merge::Flow) {
    let (tp, pause) = match flow {
        merge::Flow::Pause(tp) => (tp, true),
        merge::Flow::Resume(tp) => (tp, false),
    };
    let mut tpl = rdkafka::TopicPartitionList::new();
    tpl.add_partition(&tp.0, tp.1);
    let done = if pause {
        consumer.pause(&tpl)
    } else {
        consumer.resume(&tpl)
    };
    if let Err(e) = done {
        tracing::warn!(topic = %tp.0, partition = tp.1, pause, error = %e, "pause / resume");
    }
}
