//! The consumer group's side of delivery: where each partition stands, commits (with or without a
//! state checkpoint), and the rebalance hooks.
//!
//! A partition's *position* is the next offset to process; every alarm and dead-letter record
//! derived from the records before it has been acknowledged by the broker (the consume loop
//! moves a position only once the round of deliveries holding them is settled, see
//! `deliver::Round`). Commits only ever send positions.
//!
//! Rebalances: librdkafka calls the hooks from inside `recv()`, on the consume task, so never
//! while a record is half processed — "drain" is the loop's shape. On revocation the revoked
//! partitions' positions are committed synchronously and forgotten. The checkpoint thread queues
//! its commits asynchronously (a synchronous one could wait on the rebalance that waits on us)
//! under the same short lock, and librdkafka sends commits in order, so no commit of ours for a
//! partition lands after its revocation's (which could rewind the new owner's progress).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, StreamConsumer};
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{ClientContext, Offset, TopicPartitionList};

use crate::checkpoint::{Checkpoint, TopicOffset};

/// Offsets by topic and partition. Nested so that the per-record look-ups take the topic as
/// `&str` (no allocation per record).
#[derive(Default, Clone)]
struct PartitionOffsets(HashMap<String, HashMap<i32, i64>>);

impl PartitionOffsets {
    fn get(&self, topic: &str, partition: i32) -> Option<i64> {
        self.0.get(topic)?.get(&partition).copied()
    }

    fn set(&mut self, topic: &str, partition: i32, offset: i64) {
        match self.0.get_mut(topic) {
            Some(t) => {
                t.insert(partition, offset);
            }
            None => {
                self.0
                    .insert(topic.to_owned(), HashMap::from([(partition, offset)]));
            }
        }
    }

    fn remove(&mut self, topic: &str, partition: i32) -> Option<i64> {
        self.0.get_mut(topic)?.remove(&partition)
    }

    fn iter(&self) -> impl Iterator<Item = (&str, i32, i64)> {
        self.0
            .iter()
            .flat_map(|(t, ps)| ps.iter().map(move |(p, o)| (t.as_str(), *p, *o)))
    }

    fn to_vec(&self) -> Vec<TopicOffset> {
        self.iter()
            .map(|(topic, partition, offset)| TopicOffset {
                topic: topic.to_owned(),
                partition,
                offset,
            })
            .collect()
    }
}

/// What the consume loop, the checkpoint thread and the rebalance hooks share.
#[derive(Default)]
pub struct Progress {
    /// Partitions this instance processed records of since it got them, and where they stand.
    positions: Mutex<PartitionOffsets>,
    /// From the restored checkpoint: records before these offsets are in the state already and
    /// are skipped. Never committed from (the partition may belong to another instance now).
    skip_before: Mutex<PartitionOffsets>,
    /// Serialises commits with revocations.
    commit_lock: Mutex<()>,
    /// Rebalances seen (for the loop: checkpoint soon after one).
    pub rebalances: AtomicU64,
    /// The partitions assigned to us now: a record finished after its partition was revoked
    /// (its repartition writes acknowledged late) moves no position.
    owned: Mutex<HashSet<(String, i32)>>,
    /// Scale-out: the last offset handed to the repartition writer per partition, and how to
    /// wait for every write to be acknowledged (at a revocation, so the positions committed for
    /// the next owner include the records whose writes were in flight).
    written: Mutex<PartitionOffsets>,
    flush: OnceLock<Box<dyn Fn(std::time::Duration) -> bool + Send + Sync>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic elsewhere while holding one of these maps leaves them consistent (single inserts).
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Progress {
    pub fn restore(&self, offsets: &[TopicOffset]) {
        let mut skip = lock(&self.skip_before);
        for o in offsets {
            skip.set(&o.topic, o.partition, o.offset);
        }
    }

    /// Whether a record's effect is in the restored state already.
    pub fn already_done(&self, topic: &str, partition: i32, offset: i64) -> bool {
        lock(&self.skip_before)
            .get(topic, partition)
            .is_some_and(|next| offset < next)
    }

    /// Everything derived from this record is acknowledged.
    pub fn done(&self, topic: &str, partition: i32, offset: i64) {
        self.done_all([(topic, partition, offset)]);
    }

    /// [`Progress::done`] of several records, the locks taken once.
    pub fn done_all<'a>(&self, records: impl IntoIterator<Item = (&'a str, i32, i64)>) {
        // In `revoke`'s order (positions before owned), so the two can never deadlock.
        let mut positions = lock(&self.positions);
        let owned = lock(&self.owned);
        let mut last: Option<(&str, i32, bool)> = None;
        for (topic, partition, offset) in records {
            // Records come in runs of one partition: its ownership is looked up once a run.
            let mine = match last {
                Some((t, p, mine)) if t == topic && p == partition => mine,
                _ => owned.contains(&(topic.to_owned(), partition)),
            };
            last = Some((topic, partition, mine));
            if mine && positions.get(topic, partition).is_none_or(|p| p <= offset) {
                positions.set(topic, partition, offset + 1);
            }
        }
    }

    /// Scale-out: a record's events were handed to the repartition writer.
    pub fn written(&self, topic: &str, partition: i32, offset: i64) {
        // As `done`: a record of a partition revoked meanwhile leaves no position behind (a
        // later revocation would commit it over the next owner's).
        if lock(&self.owned).contains(&(topic.to_owned(), partition)) {
            lock(&self.written).set(topic, partition, offset);
        }
    }

    /// Scale-out: how to wait for every repartition write (at a revocation).
    pub fn set_flush(&self, flush: Box<dyn Fn(std::time::Duration) -> bool + Send + Sync>) {
        let _ = self.flush.set(flush);
    }

    fn assigned(&self, tpl: &TopicPartitionList) {
        let mut owned = lock(&self.owned);
        for e in tpl.elements() {
            owned.insert((e.topic().to_owned(), e.partition()));
        }
    }

    /// Forgets every position: nothing processed since the last checkpoint may be committed
    /// (a stop that could not save the state). The revocation then commits nothing.
    pub fn forget_positions(&self) {
        let _serial = lock(&self.commit_lock);
        *lock(&self.positions) = PartitionOffsets::default();
        *lock(&self.written) = PartitionOffsets::default();
    }

    /// The offsets a checkpoint records: the positions, and the restored ones not since moved.
    pub fn checkpoint_offsets(&self) -> Vec<TopicOffset> {
        let mut all = lock(&self.skip_before).clone();
        for (topic, partition, offset) in lock(&self.positions).iter() {
            all.set(topic, partition, offset);
        }
        let mut offsets = all.to_vec();
        offsets.sort_by(|a, b| (&a.topic, a.partition).cmp(&(&b.topic, b.partition)));
        offsets
    }

    /// Commits `offsets` (as taken with a checkpoint, or the positions now), leaving out
    /// partitions revoked since. Asynchronously: the commit is queued under the lock and
    /// librdkafka sends commits in order, so a revocation's (synchronous) commit always lands
    /// after it. A synchronous commit here would deadlock with a revocation: it can wait on the
    /// group's rebalance, which waits on the consume task's callback, which would wait on this
    /// lock.
    pub fn commit<C: ConsumerContext, K: Consumer<C>>(
        &self,
        consumer: &K,
        offsets: Option<&[TopicOffset]>,
    ) {
        let _serial = lock(&self.commit_lock);
        let mut tpl = TopicPartitionList::new();
        {
            let positions = lock(&self.positions);
            let now;
            let offsets = match offsets {
                Some(o) => o,
                None => {
                    now = positions.to_vec();
                    &now
                }
            };
            for o in offsets {
                if positions.get(&o.topic, o.partition).is_some() {
                    let _ =
                        tpl.add_partition_offset(&o.topic, o.partition, Offset::Offset(o.offset));
                }
            }
        }
        if tpl.count() > 0
            && let Err(e) = consumer.commit(&tpl, CommitMode::Async)
        {
            tracing::warn!(error = %e, "commit");
        }
    }

    /// The revocation hook: commit the revoked partitions' positions, forget them.
    fn revoke<C: ConsumerContext, K: Consumer<C>>(
        &self,
        consumer: &K,
        revoked: &TopicPartitionList,
    ) {
        let _serial = lock(&self.commit_lock);
        // Scale-out: the records whose writes are in flight are done once the writer is flushed.
        let flushed = self
            .flush
            .get()
            .is_some_and(|f| f(std::time::Duration::from_secs(10)));
        let mut tpl = TopicPartitionList::new();
        {
            let mut positions = lock(&self.positions);
            let mut skip = lock(&self.skip_before);
            let mut written = lock(&self.written);
            let mut owned = lock(&self.owned);
            for e in revoked.elements() {
                owned.remove(&(e.topic().to_owned(), e.partition()));
                if let Some(w) = written.remove(e.topic(), e.partition())
                    && flushed
                    && positions
                        .get(e.topic(), e.partition())
                        .is_none_or(|p| p <= w)
                {
                    positions.set(e.topic(), e.partition(), w + 1);
                }
                skip.remove(e.topic(), e.partition());
                if let Some(offset) = positions.remove(e.topic(), e.partition()) {
                    let _ =
                        tpl.add_partition_offset(e.topic(), e.partition(), Offset::Offset(offset));
                }
            }
        }
        let result = if tpl.count() > 0 {
            consumer.commit(&tpl, CommitMode::Sync)
        } else {
            Ok(())
        };
        match result {
            Ok(()) => tracing::info!(
                revoked = revoked.count(),
                committed = tpl.count(),
                "rebalance: partitions revoked, their positions committed"
            ),
            // The new owner starts from the previous commit: work repeated, nothing lost
            // (at-least-once; alarm ids make repeats harmless).
            Err(e) => tracing::warn!(error = %e, "rebalance: commit of revoked partitions failed"),
        }
    }
}

/// The consumer's context: the rebalance hooks.
pub struct GroupContext {
    pub progress: Arc<Progress>,
    pub metrics: Arc<crate::telemetry::Metrics>,
    /// The group uses the cooperative protocol (`partition.assignment.strategy`
    /// `cooperative-sticky`): assignments are incremental.
    pub cooperative: bool,
}

impl ClientContext for GroupContext {
    /// librdkafka's errors; a partition's end is not one (it is an event the consume loop
    /// reads: `enable.partition.eof`), and logging it at ERROR flooded the log. A missing input
    /// topic is reported once, with a gauge, by the lag check ([`super::update_lag`]).
    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        super::log_client_error(&error, reason);
    }

    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, log_message: &str) {
        super::log_librdkafka(level, fac, log_message);
    }
}

impl ConsumerContext for GroupContext {
    /// The outcome of the asynchronous commits (a failed one is repeated by the next checkpoint
    /// or the revocation).
    fn commit_callback(
        &self,
        result: rdkafka::error::KafkaResult<()>,
        offsets: &TopicPartitionList,
    ) {
        match result {
            Ok(()) => tracing::debug!(partitions = offsets.count(), "offsets committed"),
            Err(e) => tracing::warn!(error = %e, "offset commit failed"),
        }
    }

    /// rdkafka's default asks librdkafka for the rebalance protocol here, which can hang forever
    /// when the rebalance is the one `close` makes (librdkafka #4041, rust-rdkafka #509; seen
    /// here as a shutdown that never ended). The protocol is known from the configuration, so
    /// the (un)assignment is done directly.
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        self.progress.rebalances.fetch_add(1, Ordering::Relaxed);
        self.metrics
            .rebalances
            .with_label_values(&[super::rebalance_event(err)])
            .inc();
        let result = match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                self.progress.assigned(tpl);
                tracing::info!(assigned = tpl.count(), "rebalance: partitions assigned");
                if self.cooperative {
                    consumer.incremental_assign(tpl)
                } else {
                    consumer.assign(tpl)
                }
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                self.progress.revoke(consumer, tpl);
                if self.cooperative {
                    consumer.incremental_unassign(tpl)
                } else {
                    consumer.unassign()
                }
            }
            other => {
                tracing::warn!(error = ?other, "rebalance error");
                consumer.unassign()
            }
        };
        if let Err(e) = result {
            tracing::warn!(error = %e, "rebalance: (un)assignment failed");
        }
    }
}

pub type GroupConsumer = StreamConsumer<GroupContext>;

/// Writes the state with the offsets it reflects, then commits those offsets (not for partitions
/// revoked in between). Without a checkpoint the offsets must not move either. Returns whether
/// the checkpoint was written.
pub fn write_checkpoint(
    consumer: &GroupConsumer,
    progress: &Progress,
    cp: &Checkpoint,
    dir: &std::path::Path,
) -> bool {
    match crate::checkpoint::write(dir, cp) {
        Ok(bytes) => tracing::debug!(bytes, partitions = cp.offsets.len(), "checkpoint written"),
        Err(e) => {
            tracing::error!(error = %e, "cannot write the checkpoint; offsets not committed");
            return false;
        }
    }
    progress.commit(consumer, Some(&cp.offsets));
    true
}
