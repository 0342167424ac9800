//! The detection side of the service: consumes the repartition topic (its own consumer group,
//! `<group>-detect`), owns one engine per assigned partition, restores it from the changelog
//! topic before the partition's first record, merges the input partitions' events in event
//! time (progress marks as punctuation), runs enrich → policy → detect → aggregate, delivers the
//! alarms, and writes each partition's state to the changelog every `commit_interval_seconds`.
//!
//! Positions come from the changelog, not from the group's commits: a snapshot says which
//! repartition offset it reflects, and the partition is read from there at assignment (events
//! after it that the snapshot already holds are skipped by their input position). A partition
//! without a snapshot is read from its beginning.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{ClientConfig, ClientContext, Offset, TopicPartitionList};

use super::changelog::{ChangelogWriter, PartSnapshot, restore};
use super::deliver::{Abandoned, Outputs, Round, Stop};
use super::merge::{Merge, Tp};
use super::repartition::{self, Record};
use crate::engine::Engine;
use crate::event::Origin;
use crate::provider::{Reject, RejectKind};
use crate::telemetry::Metrics;

/// A record of the repartition topic waiting in a partition's merge.
struct Item {
    /// Its repartition offset.
    offset: i64,
    record: Record,
}

/// One owned partition of the repartition topic.
struct Part {
    engine: Engine,
    merge: Merge<Item>,
    /// Per input partition, the last event position received (copies at or before it are
    /// skipped) and applied (saved with the state).
    received: HashMap<Tp, (i64, u32)>,
    applied: HashMap<Tp, (i64, u32)>,
    /// The next repartition offset to read.
    next_offset: i64,
    dirty: bool,
    /// The newest event time applied, and the events applied more than the allowed lateness
    /// behind it (the merge's own count includes progress marks, which are no events).
    newest: i64,
    late: u64,
    /// Its restore failed: it writes no snapshot (the changelog's is better than its own).
    restore_failed: bool,
    /// Its counting in the inventory, once claimed (`None`: no inventory, or not claimed yet).
    inv: Option<PartInventory>,
}

/// A partition's share of the inventory: the owner epoch it claimed, the input positions the
/// store had counted at the claim (events at or before them are applied to the engine again,
/// not counted again), and the counts since the last write.
struct PartInventory {
    epoch: i64,
    counted: HashMap<Tp, (i64, u32)>,
    /// The positions the store holds once the writes handed out so far commit (the next
    /// write's expected positions).
    written: HashMap<Tp, (i64, u32)>,
    batch: crate::inventory::Batch,
    /// Writes that failed, in order, to be tried again before the next one.
    pending: Vec<Counts>,
}

/// The inventory the detection loop counts into: each partition's batch is written in one
/// transaction with the input positions it reflects, under the partition's owner epoch, and
/// only then is the partition's changelog snapshot written (so the store is never behind the
/// changelog: a restart re-reads from the snapshot and counts only what the store has not).
pub struct Inventory {
    pub store: crate::inventory::Store,
    pub group: String,
    /// This process, as the owners table names it.
    pub owner: String,
    pub max_pending_rows: usize,
}

/// What the write task hands back to the loop.
enum Back {
    /// These writes of partition `r` (epoch) failed: tried again, in order, at the next round.
    Retry(i32, i64, Vec<Counts>),
    /// Partition `r`'s store positions are not what this owner wrote (epoch): claimed again.
    Reclaim(i32, i64),
    /// The loose alarms' batch failed.
    Loose(Box<crate::inventory::Batch>),
}

type Returned = Arc<Mutex<Vec<Back>>>;

impl Part {
    /// The offset to resume from: the oldest record still queued, else the next to read.
    fn resume_offset(&self) -> i64 {
        self.merge
            .items()
            .map(|i| i.offset)
            .min()
            .unwrap_or(self.next_offset)
    }

    fn snapshot(&self) -> PartSnapshot {
        let mut applied: Vec<(String, i32, i64, u32)> = self
            .applied
            .iter()
            .map(|((t, p), (o, i))| (t.clone(), *p, *o, *i))
            .collect();
        applied.sort();
        PartSnapshot {
            offset: self.resume_offset(),
            applied,
            engine: self.engine.snapshot(),
        }
    }
}

/// What the rebalance callback hands the loop, in the order it happened (an assignment and a
/// revocation of the same partition may both come before the loop looks).
enum Change {
    Assigned(i32, Box<Part>, Vec<String>),
    Revoked(i32),
}

#[derive(Default)]
struct Handover(Vec<Change>);

/// Builds a partition's engine and merge.
pub struct PartFactory {
    pub engine: Box<dyn Fn() -> Engine + Send + Sync>,
    /// The rules new partitions' engines are built with (swapped by a reload).
    pub rules: Arc<std::sync::RwLock<crate::rule::RuleSet>>,
    /// The policy new partitions' engines are built with (swapped by a live policy change).
    pub policy: Arc<std::sync::RwLock<crate::policy::Policy>>,
    /// Every input partition (the sources the merge waits for).
    pub sources: Vec<Tp>,
    pub idle_timeout: Duration,
    pub lateness: i64,
}

pub struct DetectContext {
    client: ClientConfig,
    group: String,
    topic: String,
    factory: PartFactory,
    handover: Mutex<Handover>,
    rebalances: AtomicU64,
    cooperative: bool,
    metrics: Arc<Metrics>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl DetectContext {
    pub fn rebalance_count(&self) -> u64 {
        self.rebalances.load(Ordering::Relaxed)
    }

    /// Restores partition `r` from the changelog; returns it and where to read from.
    fn restore_part(&self, r: i32) -> (Part, Offset, Vec<String>) {
        let mut merge = Merge::new(usize::MAX, self.factory.idle_timeout, self.factory.lateness);
        merge.assign(&self.factory.sources);
        let mut part = Part {
            engine: (self.factory.engine)(),
            merge,
            received: HashMap::new(),
            applied: HashMap::new(),
            next_offset: 0,
            dirty: false,
            newest: i64::MIN,
            late: 0,
            restore_failed: false,
            inv: None,
        };
        // A restore that fails is tried again; one that keeps failing leaves the partition to
        // run from the beginning of the repartition topic on empty state, and never to write
        // a snapshot over the good one in the changelog (the next owner restores that).
        let mut attempt = 0;
        let restored = loop {
            attempt += 1;
            match restore(&self.client, &self.group, r, Duration::from_secs(120)) {
                Err(e) if attempt < 3 => {
                    self.metrics.changelog_errors.inc();
                    tracing::warn!(partition = r, attempt, error = %e, "restoring the partition's state failed; trying again");
                    std::thread::sleep(Duration::from_secs(attempt));
                }
                done => break done,
            }
        };
        match restored {
            Ok(restored) => {
                self.metrics
                    .changelog_restore_seconds
                    .observe(restored.took.as_secs_f64());
                match restored.snapshot {
                    Some(s) => {
                        let same_rules = part.engine.restore(s.engine);
                        for (t, p, o, i) in s.applied {
                            part.applied.insert((t, p), (o, i));
                        }
                        part.received = part.applied.clone();
                        part.next_offset = s.offset;
                        tracing::info!(
                            partition = r,
                            offset = s.offset,
                            changelog_records = restored.records,
                            took_ms = restored.took.as_millis() as u64,
                            same_rules,
                            "restored a partition's detection state from the changelog"
                        );
                        return (part, Offset::Offset(s.offset), restored.chunks);
                    }
                    None => tracing::info!(
                        partition = r,
                        "no state in the changelog: the partition starts empty, from its beginning"
                    ),
                }
            }
            Err(e) => {
                self.metrics.changelog_errors.inc();
                part.restore_failed = true;
                tracing::error!(partition = r, error = %e, "cannot restore the partition's state: it runs from the beginning of the repartition topic on empty state, and writes no snapshot");
            }
        }
        (part, Offset::Beginning, Vec::new())
    }
}

impl ClientContext for DetectContext {
    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        super::log_client_error(&error, reason);
    }

    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, log_message: &str) {
        super::log_librdkafka(level, fac, log_message);
    }
}

impl ConsumerContext for DetectContext {
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        self.rebalances.fetch_add(1, Ordering::Relaxed);
        self.metrics
            .rebalances
            .with_label_values(&[super::rebalance_event(err)])
            .inc();
        let result = match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                let ids: Vec<i32> = tpl
                    .elements()
                    .iter()
                    .filter(|e| e.topic() == self.topic)
                    .map(|e| e.partition())
                    .collect();
                for r in ids {
                    // Before the partition's first record: state restored, position set.
                    let (part, offset, chunks) = self.restore_part(r);
                    let _ = tpl.set_partition_offset(&self.topic, r, offset);
                    lock(&self.handover)
                        .0
                        .push(Change::Assigned(r, Box::new(part), chunks));
                }
                tracing::info!(assigned = tpl.count(), "detection: partitions assigned");
                if self.cooperative {
                    consumer.incremental_assign(tpl)
                } else {
                    consumer.assign(tpl)
                }
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                lock(&self.handover).0.extend(
                    tpl.elements()
                        .iter()
                        .map(|e| Change::Revoked(e.partition())),
                );
                tracing::info!(revoked = tpl.count(), "detection: partitions revoked");
                if self.cooperative {
                    consumer.incremental_unassign(tpl)
                } else {
                    consumer.unassign()
                }
            }
            other => {
                tracing::warn!(error = ?other, "detection: rebalance error");
                // Everything is given up: so is every partition's state here.
                let owned: Vec<Change> = consumer
                    .assignment()
                    .map(|a| {
                        a.elements()
                            .iter()
                            .map(|e| Change::Revoked(e.partition()))
                            .collect()
                    })
                    .unwrap_or_default();
                lock(&self.handover).0.extend(owned);
                consumer.unassign()
            }
        };
        if let Err(e) = result {
            tracing::warn!(error = %e, "detection: (un)assignment failed");
        }
    }
}

pub type DetectConsumer = StreamConsumer<DetectContext>;

/// Creates the detection consumer (not yet subscribed).
pub fn consumer(
    client: &ClientConfig,
    group: &str,
    factory: PartFactory,
    cooperative: bool,
    metrics: Arc<Metrics>,
) -> anyhow::Result<DetectConsumer> {
    let mut c = client.clone();
    super::consumer_defaults(&mut c)
        .set("group.id", format!("{group}-detect"))
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("enable.partition.eof", "false");
    Ok(c.create_with_context(DetectContext {
        client: client.clone(),
        group: group.to_owned(),
        topic: repartition::repartition_topic(group),
        factory,
        handover: Mutex::new(Handover::default()),
        rebalances: AtomicU64::new(0),
        cooperative,
        metrics,
    })?)
}

/// The detection loop's inputs.
pub struct Detect<'a> {
    pub consumer: &'a DetectConsumer,
    /// The pipeline after decode; its engines are the partitions'.
    pub pipeline: crate::pipeline::Pipeline,
    pub changelog: ChangelogWriter,
    pub out: &'a Outputs<'a>,
    pub metrics: &'a Metrics,
    pub stop: Stop,
    pub commit_interval: Duration,
    /// Events queued in one partition's merge before the oldest is released regardless.
    pub queue_cap: usize,
    pub reports: tokio::sync::mpsc::Receiver<super::reports::ReportUpdate>,
    /// Reloaded rules, policies, lists and leak feeds, when they are watched.
    pub reload: Option<tokio::sync::mpsc::Receiver<super::reload::Reload>>,
    /// Rules or a policy were reloaded since start: partitions assigned later are given them
    /// (the rebalance callback may have built one before the swap).
    pub reloaded: bool,
    /// The allowed lateness, seconds.
    pub lateness: i64,
    /// The metric label of each input topic.
    pub labels: HashMap<String, &'static str>,
    /// Where the configuration risks go, and those of the reports in use at start.
    pub risk_topic: Option<String>,
    pub risks: Vec<crate::risk::Risk>,
    /// The reported principals at start (for the inventory).
    pub principals: Vec<crate::inventory::PrincipalRow>,
    /// The inventory counted into, when configured.
    pub inventory: Option<Inventory>,
    /// Policy changes made through the API, applied live, when the API can make them.
    pub policy_sync: Option<PolicySync>,
}

/// Where the loop learns of policy changes made through the API (any instance's): the store's
/// policy revision, polled every half second; on a change the API's files are rendered again
/// into `write_dir`, every policy directory is loaded (the start-up loader) and the policy is
/// swapped into every partition's engine and the factory.
pub struct PolicySync {
    pub store: crate::inventory::Store,
    pub dirs: Vec<std::path::PathBuf>,
    pub write_dir: std::path::PathBuf,
    pub rules: crate::rule::RuleSet,
    /// The revision the files and engines reflect.
    pub revision: i64,
    /// A policy was swapped in since start: partitions assigned later are given it too (the
    /// rebalance callback may have built one with the policy before the swap).
    pub swapped: bool,
}

/// How the detection loop ended.
pub struct Ended {
    /// Every owned partition's state was written to the changelog at the end.
    pub saved: bool,
    pub events: u64,
}

impl Detect<'_> {
    pub async fn run(mut self) -> Ended {
        let mut parts: BTreeMap<i32, Part> = BTreeMap::new();
        let risk_topic = self.risk_topic.clone();
        let start_risks = std::mem::take(&mut self.risks);
        let start = self.pipeline.start(&start_risks);
        // Alarms raised outside any partition (leaks from reports and feeds): written with the
        // next snapshot, without a fence (an alarm's row only moves forward).
        let mut loose = crate::inventory::Batch::default();
        let returned: Returned = Arc::default();
        record_outputs(&mut loose, &start);
        if self.inventory.is_some() {
            loose.set_risks(start_risks);
            loose.set_principals(std::mem::take(&mut self.principals));
        }
        let mut abandoned = super::emit_all(start, self.out, risk_topic.as_deref())
            .await
            .is_err();
        let mut ticker = tokio::time::interval(Duration::from_millis(500));
        let mut wake = tokio::time::interval(Duration::from_millis(20));
        wake.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let mut last_snapshot = Instant::now();
        let mut snapshot_task: Option<tokio::task::JoinHandle<()>> = None;
        let (mut late_exported, mut events) = (0u64, 0u64);
        let mut exported = super::ExportedStats::default();
        // The counters of partitions given away (the metrics are totals of this process).
        let mut retired = crate::engine::Stats::default();
        let mut retired_late = 0;
        while !abandoned {
            self.metrics.detect_heartbeat();
            let message = tokio::select! {
                biased;
                _ = self.stop.signalled() => break,
                Some(update) = self.reports.recv() => {
                    self.metrics.report_updates.inc();
                    let outputs = self.pipeline.reports_changed(update.index, &update.risks);
                    record_outputs(&mut loose, &outputs);
                    if self.inventory.is_some() {
                        let mut all = update.risks.clone();
                        all.extend(self.pipeline.enricher.permissions.risks());
                        loose.set_risks(all);
                        loose.set_principals(update.principals.clone());
                    }
                    if super::emit_all(outputs, self.out, risk_topic.as_deref()).await.is_err() {
                        abandoned = true;
                    }
                    None
                }
                Some(update) = super::reload::next(&mut self.reload) => {
                    let outputs = self.apply_reload(update, &mut parts);
                    record_outputs(&mut loose, &outputs);
                    if super::emit_all(outputs, self.out, risk_topic.as_deref()).await.is_err() {
                        abandoned = true;
                    }
                    None
                }
                _ = ticker.tick() => {
                    self.sync_policy(&mut parts).await;
                    let stats = sum_stats(&retired, &parts);
                    exported.export(&stats, self.metrics);
                    if last_snapshot.elapsed() >= self.commit_interval
                        && snapshot_task.as_ref().is_none_or(tokio::task::JoinHandle::is_finished)
                    {
                        last_snapshot = Instant::now();
                        self.claim_unclaimed(&mut parts).await;
                        self.take_returned(&mut parts, &mut loose, &returned);
                        snapshot_task = self.start_snapshots(&mut parts, &mut loose, &returned);
                    }
                    None
                }
                // An input partition waited for may have become idle (its timeout): looked at
                // on a steady tick, not a timer per record.
                _ = wake.tick(), if parts.values().any(|p| !p.merge.is_empty()) => None,
                m = self.consumer.recv() => Some(m),
            };
            retired_late += self.take_handover(&mut parts, &mut retired).await;
            if let Some(message) = message {
                match message {
                    Ok(m) => self.receive(&mut parts, m.partition(), m.offset(), m.payload()),
                    Err(e) => tracing::debug!(error = %e, "detection: consume error"),
                }
                // The records already fetched, in one round: a rebalance served while fetching
                // one is taken before it (as after the select).
                for _ in 1..super::ingest::RECV_BATCH {
                    let mut next = Box::pin(self.consumer.recv());
                    let Some(message) = super::poll_once(&mut next) else {
                        break;
                    };
                    retired_late += self.take_handover(&mut parts, &mut retired).await;
                    match message {
                        Ok(m) => self.receive(&mut parts, m.partition(), m.offset(), m.payload()),
                        Err(e) => tracing::debug!(error = %e, "detection: consume error"),
                    }
                }
                // A rebalance served by the last poll ends the drain (the poll that serves it
                // returns nothing): taken now, before the partitions' records are released.
                retired_late += self.take_handover(&mut parts, &mut retired).await;
            }
            if abandoned {
                break;
            }
            // Release what each merge lets go. The round's alarms are awaited together at its
            // end, before the consumer is polled again (a snapshot, taken between rounds,
            // never covers an event whose alarms are not acknowledged).
            let mut round = Round::default();
            for (r, part) in parts.iter_mut() {
                loop {
                    let popped = part.merge.pop().or_else(|| {
                        (part.merge.len() > self.queue_cap).then(|| {
                            self.metrics.detect_forced.inc();
                            part.merge.pop_any()
                        })?
                    });
                    let Some((src, item, _)) = popped else { break };
                    if self.apply(*r, part, src, item, &mut round).await.is_err() {
                        abandoned = true;
                        break;
                    }
                }
                if abandoned {
                    break;
                }
            }
            if !abandoned && self.out.settle(&mut round).await.is_err() {
                abandoned = true;
            }
            let late: u64 = retired_late + parts.values().map(|p| p.late).sum::<u64>();
            self.metrics
                .late_records
                .inc_by(late.saturating_sub(late_exported));
            late_exported = late;
            // Every event this process applied, in the partitions it has and those it gave away.
            events = retired.events + parts.values().map(|p| p.engine.stats.events).sum::<u64>();
            self.metrics
                .detect_queued
                .set(parts.values().map(|p| p.merge.len()).sum::<usize>() as i64);
            self.metrics.detect_partitions.set(parts.len() as i64);
        }
        // The end: the last rebalance's changes (no snapshot for a partition given away),
        // pending alarm updates, then every partition's state.
        let _ = self.take_handover(&mut parts, &mut retired).await;
        if !abandoned {
            for part in parts.values_mut() {
                let pending = crate::isolate::guard(|| part.engine.flush()).unwrap_or_default();
                if let Some(inv) = part.inv.as_mut() {
                    for alarm in &pending {
                        inv.batch.alarm(alarm);
                    }
                }
                for alarm in pending {
                    if self.out.alarm(&alarm).await.is_err() {
                        abandoned = true;
                        break;
                    }
                }
                part.dirty = true;
            }
        }
        // The last round's writes finish first; one that does not is stopped, and nothing more is
        // written (the store and the changelog stay as they are: the next start counts on from
        // the store's positions).
        let mut late_task = false;
        if let Some(mut task) = snapshot_task.take()
            && tokio::time::timeout(self.stop.remaining(Duration::from_secs(30)), &mut task)
                .await
                .is_err()
        {
            task.abort();
            late_task = true;
            tracing::error!(
                "the last state and inventory writes did not finish in time; the final ones are not written"
            );
        }
        let mut saved = !abandoned && !late_task;
        if saved {
            self.take_returned(&mut parts, &mut loose, &returned);
            if let Some(inv) = &self.inventory
                && !loose.is_empty()
            {
                let write = inv.store.apply(std::mem::take(&mut loose));
                if !matches!(
                    tokio::time::timeout(self.stop.remaining(Duration::from_secs(30)), write).await,
                    Ok(Ok(()))
                ) {
                    self.metrics.inventory_errors.inc();
                    tracing::error!("the inventory's last alarms were not written");
                }
            }
            let inv_metrics = InvMetrics::of(self.metrics);
            for (r, part) in parts.iter_mut() {
                // The counts first: the changelog must never be ahead of the store.
                if let Some(inv) = &self.inventory {
                    let Some(pi) = part.inv.as_mut() else {
                        // Not counted (its claim failed): no state either.
                        saved = false;
                        continue;
                    };
                    let mut list = std::mem::take(&mut pi.pending);
                    list.push(take_counts(inv, *r, pi, &part.applied));
                    let write = write_counts(&inv.store, *r, pi.epoch, list, &inv_metrics);
                    match tokio::time::timeout(self.stop.remaining(Duration::from_secs(30)), write)
                        .await
                    {
                        Ok(Ok(())) => {}
                        Ok(Err(_)) => {
                            tracing::error!(
                                partition = r,
                                "final inventory counts not written; the partition's final state is not written either (the next start counts from the last write)"
                            );
                            saved = false;
                            continue;
                        }
                        Err(_) => {
                            self.metrics.inventory_errors.inc();
                            tracing::error!(
                                partition = r,
                                "final inventory counts not written in time; the partition's final state is not written either"
                            );
                            saved = false;
                            continue;
                        }
                    }
                }
                if part.restore_failed {
                    continue;
                }
                let part = &*part;
                let snapshot = part.snapshot();
                let write = self.changelog.write(*r, &snapshot);
                match tokio::time::timeout(self.stop.remaining(Duration::from_secs(30)), write)
                    .await
                {
                    Ok(Ok(bytes)) => self.metrics.changelog_snapshot_bytes.inc_by(bytes),
                    Ok(Err(e)) => {
                        tracing::error!(partition = r, error = %e, "final state not written");
                        saved = false;
                    }
                    Err(_) => {
                        tracing::error!(partition = r, "final state not written in time");
                        saved = false;
                    }
                }
            }
        }
        tracing::info!(
            events,
            late = late_exported,
            partitions = parts.len(),
            saved,
            inventory_already_counted = self.metrics.inventory_already_counted.get(),
            "detection stopped"
        );
        Ended { saved, events }
    }

    /// Applies the rebalance callback's changes: restored partitions in, revoked ones out.
    /// Returns the late events of the partitions given away.
    async fn take_handover(
        &self,
        parts: &mut BTreeMap<i32, Part>,
        retired: &mut crate::engine::Stats,
    ) -> u64 {
        let mut late = 0;
        let changes = std::mem::take(&mut lock(&self.consumer.context().handover).0);
        for change in changes {
            match change {
                // Queued records were not applied; the next owner reads them from the
                // snapshot's offset.
                Change::Revoked(r) => {
                    if let Some(p) = parts.remove(&r) {
                        retired.add(&p.engine.stats);
                        late += p.late;
                    }
                    self.changelog.forget(r);
                }
                Change::Assigned(r, mut part, chunks) => {
                    self.changelog.adopt(r, chunks);
                    // Before its first record: what the store has counted of it.
                    if let Some(inv) = &self.inventory {
                        part.inv = self.claim(inv, r).await;
                    }
                    if self.reloaded || self.policy_sync.as_ref().is_some_and(|s| s.swapped) {
                        let factory = &self.consumer.context().factory;
                        let rules = factory
                            .rules
                            .read()
                            .unwrap_or_else(std::sync::PoisonError::into_inner)
                            .clone();
                        let current = factory
                            .policy
                            .read()
                            .unwrap_or_else(std::sync::PoisonError::into_inner)
                            .clone();
                        if let Err(errors) = part.engine.set_policy(&rules, current) {
                            tracing::error!(partition = r, errors = %errors.join("; "), "the current policy does not apply to an assigned partition");
                        }
                    }
                    parts.insert(r, *part);
                }
            }
        }
        late
    }

    /// A record of partition `r` at `offset` into that partition's merge.
    fn receive(
        &self,
        parts: &mut BTreeMap<i32, Part>,
        r: i32,
        offset: i64,
        payload: Option<&[u8]>,
    ) {
        let Some(part) = parts.get_mut(&r) else {
            return;
        };
        part.next_offset = offset + 1;
        let record = match repartition::decode(payload.unwrap_or_default()) {
            Ok(x) => x,
            Err(e) => {
                // Only akwatch writes this topic: a record it cannot read is a version skew or
                // a foreign writer; counted and skipped.
                self.metrics
                    .records_rejected
                    .with_label_values(&["repartition", RejectKind::BadJson.as_str()])
                    .inc();
                tracing::warn!(partition = r, offset, error = %e, "an unreadable repartition record; skipped");
                return;
            }
        };
        let (tp, time) = match &record {
            Record::Progress {
                topic,
                partition,
                time,
                ..
            } => ((topic.clone(), *partition), *time),
            Record::Event { source, event, .. } | Record::Marks { source, event } => {
                let tp = (source.topic.clone(), source.partition);
                if !fresh(&mut part.received, &tp, source.at()) {
                    self.metrics.repartition_duplicates.inc();
                    return;
                }
                (tp, event.event_time.timestamp())
            }
        };
        part.merge.push(&tp, time, Item { offset, record });
    }

    /// Applies one released record to its partition's engine.
    async fn apply(
        &self,
        r: i32,
        part: &mut Part,
        src: Tp,
        item: Item,
        round: &mut Round,
    ) -> Result<(), Abandoned> {
        match item.record {
            Record::Progress { caught_up, .. } => {
                if caught_up {
                    part.merge.caught_up(&src);
                }
                Ok(())
            }
            Record::Marks { source, event } => {
                if let Err(e) = self.pipeline.marks(&mut part.engine, &event) {
                    tracing::error!(partition = r, error = %e, "applying an event's marks failed");
                }
                part.applied.insert(src, source.at());
                part.dirty = true;
                Ok(())
            }
            Record::Event {
                source,
                ingested,
                event,
            } => {
                self.metrics.event_decoded(event.cloud);
                let t = event.event_time.timestamp();
                if part.newest != i64::MIN && t < part.newest.saturating_sub(self.lateness) {
                    part.late += 1;
                }
                part.newest = part.newest.max(t);
                // Counted unless the store has counted it already (applied again after a
                // restore from an older snapshot); not counted at all while unclaimed.
                let at = source.at();
                let batch = match part.inv.as_mut() {
                    Some(inv) if inv.counted.get(&src).is_none_or(|c| at > *c) => {
                        Some(&mut inv.batch)
                    }
                    Some(_) => {
                        self.metrics.inventory_already_counted.inc();
                        None
                    }
                    None => {
                        if self.inventory.is_some() {
                            self.metrics.inventory_uncounted.inc();
                        }
                        None
                    }
                };
                match self.pipeline.event_counted(&mut part.engine, &event, batch) {
                    Ok(alarms) => {
                        if let Some(inv) = part.inv.as_mut() {
                            for a in &alarms {
                                inv.batch.alarm(a);
                            }
                        }
                        self.out
                            .event_alarms(round, alarms, &event, ingested)
                            .await?
                    }
                    Err(reason) => {
                        let origin = Origin::kafka(&source.topic, source.partition, source.offset)
                            .at_index(source.index as usize);
                        tracing::error!(%origin, %reason, "processing an event failed; its normalized event goes to the dead-letter topic (the record is at its origin)");
                        let label = self
                            .labels
                            .get(&source.topic)
                            .copied()
                            .unwrap_or(event.cloud.as_str());
                        self.metrics
                            .records_rejected
                            .with_label_values(&[label, RejectKind::InternalError.as_str()])
                            .inc();
                        // The raw record stays in its input topic (the origin names it); the
                        // dead letter holds the event as akwatch read it.
                        let raw = serde_json::to_vec(&event).unwrap_or_default();
                        let reject = Reject::new(RejectKind::InternalError, reason, origin.clone());
                        self.out
                            .dead_letter_in(round, reject, &raw, &origin)
                            .await?;
                    }
                }
                part.applied.insert(src, source.at());
                part.dirty = true;
                Ok(())
            }
        }
    }

    /// Swaps reloaded configuration in, between two events: rules and policy into every
    /// partition's engine (state kept, see `Engine::set_rules`) and the factory, lists and
    /// leak feeds into the enricher. Returns the alarms of newly leaked keys.
    fn apply_reload(
        &mut self,
        update: super::reload::Reload,
        parts: &mut BTreeMap<i32, Part>,
    ) -> Vec<crate::pipeline::Output> {
        if let Some((rules, mut policy)) = update.detection {
            let factory = &self.consumer.context().factory;
            // The allowed lateness keeps its start-up value (the merge and windows use it).
            policy.allowed_lateness = factory
                .policy
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .allowed_lateness;
            let mut reset = Vec::new();
            for (r, part) in parts.iter_mut() {
                // Checked by the watcher with `Engine::new`: it cannot fail here.
                match part.engine.set_rules(&rules, policy.clone()) {
                    Ok(ids) => reset = ids,
                    Err(errors) => {
                        tracing::error!(partition = r, errors = %errors.join("; "), "the reloaded rules and policies do not apply to a partition")
                    }
                }
            }
            if let Some(sync) = self.policy_sync.as_mut() {
                sync.rules = rules.clone();
            }
            self.metrics.describe_rules(&rules);
            tracing::info!(
                rules = rules.rules.len(),
                allowlist = policy.allowlist.len(),
                hidden_keys = policy.hidden_keys.len(),
                partitions = parts.len(),
                state_reset = ?reset,
                "rules and policies swapped in"
            );
            // Both under their locks, rules first (the factory's order): a partition built
            // meanwhile with the previous pair is given this one when it is handed over.
            let mut factory_rules = factory
                .rules
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let mut factory_policy = factory
                .policy
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            *factory_rules = rules;
            *factory_policy = policy;
            self.reloaded = true;
        }
        if let Some(lists) = update.lists {
            self.pipeline.enricher.lists = lists;
        }
        match update.leaks {
            Some(leaks) => self.pipeline.leaks_changed(leaks),
            None => Vec::new(),
        }
    }

    /// Applies a policy changed through the API (see [`PolicySync`]).
    async fn sync_policy(&mut self, parts: &mut BTreeMap<i32, Part>) {
        let Some(sync) = self.policy_sync.as_mut() else {
            return;
        };
        // Read with a short bound: a slow store must not hold detection.
        let read = tokio::time::timeout(
            Duration::from_millis(500),
            crate::policy_store::revision(&sync.store),
        );
        let revision = match read.await {
            Ok(Ok(r)) if r == sync.revision => return,
            Ok(Ok(r)) => r,
            Ok(Err(e)) => {
                tracing::debug!(error = %format!("{e:#}"), "policy revision not read");
                return;
            }
            Err(_) => return,
        };
        // The files as they would be, checked before anything is written or swapped; a store
        // that cannot be read is tried again at the next tick.
        let rendered = match crate::policy_store::render_all(&sync.store, &sync.write_dir).await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "the API's policies could not be read; tried again");
                return;
            }
        };
        // From here on this revision is settled: applied, or refused for good (a policy that
        // does not load here will not load at the next tick either).
        sync.revision = revision;
        let mut policy = match crate::policy::Policy::load_dirs_replacing(
            &sync.dirs,
            &sync.rules,
            &rendered,
        ) {
            Ok(p) => p,
            Err(errors) => {
                tracing::error!(revision, errors = %errors.join("; "), "the changed policy does not load on this instance; the policy in use stays and its files are not rewritten");
                return;
            }
        };
        let factory_policy = &self.consumer.context().factory.policy;
        policy.allowed_lateness = factory_policy
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .allowed_lateness;
        // Built once first: the partitions' engines and the factory's cannot then fail on it.
        if let Err(errors) = Engine::new(&sync.rules, policy.clone()) {
            tracing::error!(revision, errors = %errors.join("; "), "the changed policy does not apply; the policy in use stays");
            return;
        }
        for (path, text) in &rendered {
            if let Err(e) = crate::policy_store::write_if_changed(path, text) {
                tracing::error!(error = %e, path = %path.display(), "the API's policy file could not be written (the policy is applied; the file follows at the next change)");
            }
        }
        for part in parts.values_mut() {
            if let Err(errors) = part.engine.set_policy(&sync.rules, policy.clone()) {
                tracing::error!(errors = %errors.join("; "), "the changed policy does not apply to a partition");
            }
        }
        let (allowlist, hidden) = (policy.allowlist.len(), policy.hidden_keys.len());
        *factory_policy
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = policy;
        sync.swapped = true;
        tracing::info!(
            revision,
            allowlist,
            hidden_keys = hidden,
            "policy changed through the API: applied"
        );
    }

    /// Claims partition `r` in the inventory (tried three times); `None` when the store cannot
    /// be reached (the partition is claimed again at the next snapshot; its events until then
    /// are not counted, and counted as such).
    async fn claim(&self, inv: &Inventory, r: i32) -> Option<PartInventory> {
        for attempt in 1..=3u64 {
            match inv.store.claim(&inv.group, r, &inv.owner).await {
                Ok(c) => {
                    tracing::info!(
                        partition = r,
                        epoch = c.epoch,
                        positions = c.counted.len(),
                        "inventory: claimed the partition's counts"
                    );
                    return Some(PartInventory {
                        epoch: c.epoch,
                        written: c.counted.clone(),
                        counted: c.counted,
                        batch: crate::inventory::Batch::default(),
                        pending: Vec::new(),
                    });
                }
                Err(e) => {
                    self.metrics.inventory_errors.inc();
                    tracing::warn!(partition = r, attempt, error = %format!("{e:#}"), "inventory: cannot claim the partition");
                    if attempt < 3 {
                        tokio::time::sleep(Duration::from_millis(200 * attempt)).await;
                    }
                }
            }
        }
        tracing::error!(
            partition = r,
            "inventory: the partition is not counted until the store can be reached"
        );
        None
    }

    /// Claims the partitions whose claim failed before.
    async fn claim_unclaimed(&self, parts: &mut BTreeMap<i32, Part>) {
        let Some(inv) = &self.inventory else { return };
        for (r, part) in parts.iter_mut().filter(|(_, p)| p.inv.is_none()) {
            part.inv = self.claim(inv, *r).await;
        }
    }

    /// What the write task handed back: failed writes go back to their partition (same owner
    /// epoch) to be tried again first — unless they hold more than the cap, when the partition's
    /// counting starts over from a new claim (its events since the store's positions are
    /// counted as uncounted); a partition whose positions diverged is claimed again.
    fn take_returned(
        &self,
        parts: &mut BTreeMap<i32, Part>,
        loose: &mut crate::inventory::Batch,
        returned: &Returned,
    ) {
        let Some(inv) = &self.inventory else { return };
        let back = std::mem::take(&mut *lock(returned));
        for b in back {
            match b {
                Back::Loose(batch) => loose.absorb_older(*batch),
                Back::Retry(r, epoch, counts) => {
                    let Some(part) = parts.get_mut(&r) else {
                        continue;
                    };
                    let Some(pi) = part.inv.as_mut().filter(|pi| pi.epoch == epoch) else {
                        // Given away or claimed again since: the next owner counts from the store.
                        continue;
                    };
                    let rows: usize = counts.iter().map(|(b, _)| b.len()).sum::<usize>()
                        + pi.pending.iter().map(|(b, _)| b.len()).sum::<usize>()
                        + pi.batch.len();
                    if rows > inv.max_pending_rows {
                        let events: u64 = counts.iter().map(|(b, _)| b.events).sum::<u64>()
                            + pi.pending.iter().map(|(b, _)| b.events).sum::<u64>()
                            + pi.batch.events;
                        self.metrics.inventory_uncounted.inc_by(events);
                        tracing::error!(
                            partition = r,
                            rows,
                            events,
                            "inventory: the store has failed for too long (max_pending_rows): the partition's counts since its last write are dropped and it is claimed again"
                        );
                        part.inv = None;
                    } else {
                        let mut counts = counts;
                        counts.append(&mut pi.pending);
                        pi.pending = counts;
                        part.dirty = true;
                    }
                }
                Back::Reclaim(r, epoch) => {
                    if let Some(part) = parts.get_mut(&r)
                        && part.inv.as_ref().is_some_and(|pi| pi.epoch == epoch)
                    {
                        part.inv = None;
                    }
                }
            }
        }
    }

    /// Takes a snapshot of every changed partition (pointers, on this task) with its counts,
    /// and writes them on a task of their own: each partition's counts to the store (earlier
    /// failed writes first, in order), then — only when they were all written — its state to the
    /// changelog. A partition not counted yet (its claim failed) writes no state either: the
    /// changelog is never ahead of the store.
    fn start_snapshots(
        &self,
        parts: &mut BTreeMap<i32, Part>,
        loose: &mut crate::inventory::Batch,
        returned: &Returned,
    ) -> Option<tokio::task::JoinHandle<()>> {
        let counting = self.inventory.is_some();
        let snapshots: Vec<RoundItem> = parts
            .iter_mut()
            .filter(|(_, p)| {
                (p.dirty || p.inv.as_ref().is_some_and(|pi| !pi.pending.is_empty()))
                    && !(counting && p.inv.is_none())
            })
            .map(|(r, p)| {
                p.dirty = false;
                let counts = match (&self.inventory, p.inv.as_mut()) {
                    (Some(inv), Some(pi)) => {
                        let mut list = std::mem::take(&mut pi.pending);
                        list.push(take_counts(inv, *r, pi, &p.applied));
                        Some((pi.epoch, list))
                    }
                    _ => None,
                };
                let snapshot = (!p.restore_failed).then(|| p.snapshot());
                (*r, snapshot, counts)
            })
            .collect();
        let loose = std::mem::take(loose);
        if snapshots.is_empty() && loose.is_empty() {
            return None;
        }
        let writer = self.changelog.clone();
        let metrics = (
            self.metrics.changelog_errors.clone(),
            self.metrics.changelog_snapshot_bytes.clone(),
        );
        let inv_metrics = InvMetrics::of(self.metrics);
        let store = self.inventory.as_ref().map(|i| i.store.clone());
        let returned = returned.clone();
        static ROUND: AtomicU64 = AtomicU64::new(0);
        let write_changelog =
            crate::isolate::changelog_round_allowed(ROUND.fetch_add(1, Ordering::Relaxed));
        Some(tokio::spawn(async move {
            let (errors, bytes) = metrics;
            if let Some(store) = &store
                && !loose.is_empty()
                && let Err(e) = store.apply_fenced(&loose, None).await
            {
                inv_metrics.errors.inc();
                tracing::warn!(error = %format!("{e:#}"), "inventory: alarms not written (kept for the next write)");
                lock(&returned).push(Back::Loose(Box::new(loose)));
            }
            for (r, s, counts) in snapshots {
                if let (Some(store), Some((epoch, list))) = (&store, counts)
                    && let Err(back) = write_counts(store, r, epoch, list, &inv_metrics).await
                {
                    lock(&returned).push(back);
                    continue;
                }
                let Some(s) = s.filter(|_| write_changelog) else {
                    continue;
                };
                match writer.write(r, &s).await {
                    Ok(n) => bytes.inc_by(n),
                    Err(e) => {
                        errors.inc();
                        tracing::warn!(partition = r, error = %e, "state snapshot not written; the next one follows");
                    }
                }
            }
        }))
    }
}

/// The inventory's write metrics, for the write task.
#[derive(Clone)]
struct InvMetrics {
    writes: prometheus::IntCounter,
    events: prometheus::IntCounter,
    errors: prometheus::IntCounter,
    seconds: prometheus::Histogram,
}

impl InvMetrics {
    fn of(m: &Metrics) -> InvMetrics {
        InvMetrics {
            writes: m.inventory_writes.clone(),
            events: m.inventory_events.clone(),
            errors: m.inventory_errors.clone(),
            seconds: m.inventory_write_seconds.clone(),
        }
    }
}

/// Writes a partition's counts in order (each a compare-and-set on the store's positions). On
/// a failure, what to hand back: the writes not done (to try again), or a claim to make again
/// (taken over, or positions moved).
async fn write_counts(
    store: &crate::inventory::Store,
    r: i32,
    epoch: i64,
    mut list: Vec<Counts>,
    m: &InvMetrics,
) -> Result<(), Back> {
    while !list.is_empty() {
        let (batch, fence) = &list[0];
        let started = Instant::now();
        match store.apply_fenced(batch, Some(fence)).await {
            Ok(written) => {
                if written == crate::inventory::Written::Applied {
                    m.writes.inc();
                    m.events.inc_by(batch.events);
                    m.seconds.observe(started.elapsed().as_secs_f64());
                } else {
                    tracing::info!(
                        partition = r,
                        "inventory: a write whose acknowledgement was lost had committed; not written again"
                    );
                }
                list.remove(0);
            }
            Err(e)
                if e.is::<crate::inventory::Fenced>() || e.is::<crate::inventory::Diverged>() =>
            {
                tracing::info!(
                    partition = r,
                    "inventory: {e}; its state is not written either"
                );
                return Err(Back::Reclaim(r, epoch));
            }
            Err(e) => {
                m.errors.inc();
                tracing::warn!(partition = r, error = %format!("{e:#}"), "inventory: counts not written (tried again with the next); the partition's state is not written either");
                return Err(Back::Retry(r, epoch, list));
            }
        }
    }
    Ok(())
}

/// One partition's share of a write round: its state (none when its restore failed), and its
/// counts to write under its epoch.
type RoundItem = (i32, Option<PartSnapshot>, Option<(i64, Vec<Counts>)>);

/// A partition's counts to write, and the fence they are written under.
type Counts = (crate::inventory::Batch, crate::inventory::Fence);

/// Takes partition `r`'s counts since the last write, with the positions they bring the store
/// to: per input partition the later of what was applied and what the store had counted.
fn take_counts(
    inv: &Inventory,
    r: i32,
    pi: &mut PartInventory,
    applied: &HashMap<Tp, (i64, u32)>,
) -> Counts {
    let sorted = |m: &HashMap<Tp, (i64, u32)>| {
        let mut v: Vec<(Tp, (i64, u32))> = m.iter().map(|(k, v)| (k.clone(), *v)).collect();
        v.sort();
        v
    };
    let expected = sorted(&pi.written);
    for (tp, at) in applied {
        let p = pi.written.entry(tp.clone()).or_insert(*at);
        *p = (*p).max(*at);
    }
    let fence = crate::inventory::Fence {
        group: inv.group.clone(),
        part: r,
        epoch: pi.epoch,
        expected,
        positions: sorted(&pi.written),
    };
    (std::mem::take(&mut pi.batch), fence)
}

/// The alarms among the pipeline's own outputs, into `batch`.
fn record_outputs(batch: &mut crate::inventory::Batch, outputs: &[crate::pipeline::Output]) {
    for o in outputs {
        if let crate::pipeline::Output::Alarm(a) = o {
            batch.alarm(a);
        }
    }
}

/// Whether an event at `at` of input partition `tp` comes after every one received before.
fn fresh(received: &mut HashMap<Tp, (i64, u32)>, tp: &Tp, at: (i64, u32)) -> bool {
    match received.get_mut(tp) {
        Some(last) if *last >= at => false,
        Some(last) => {
            *last = at;
            true
        }
        None => {
            received.insert(tp.clone(), at);
            true
        }
    }
}

fn sum_stats(retired: &crate::engine::Stats, parts: &BTreeMap<i32, Part>) -> crate::engine::Stats {
    let mut total = retired.clone();
    for p in parts.values() {
        total.add(&p.engine.stats);
    }
    total
}
