//! The event-time merge of the partitions one instance consumes (the Kafka Streams task's
//! partition group, Flink's watermark alignment within a source): decoded records wait in one
//! queue per partition and leave in event-time order — the head with the smallest time goes
//! first, and only while every assigned partition has a head or is idle. A partition is idle
//! when it is caught up (librdkafka's partition EOF) and nothing arrived for a short grace, or
//! when nothing arrived for the idle timeout whatever its lag: an empty or stalled partition
//! cannot hold the rest. A queue over its cap asks for its partition to be paused (the
//! partition that runs ahead waits for the others) and for a resume below half of it.
//!
//! Generic over the queued item so it can be tested without a broker.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

/// How long a caught-up partition is waited for after its last record: records produced to it
/// just now, with times before the others' heads, are then still merged in their place.
const EOF_GRACE: Duration = Duration::from_millis(20);

/// A partition: topic and partition number.
pub type Tp = (String, i32);

struct Queue<T> {
    items: VecDeque<(i64, T)>,
    /// Reached the end of the partition and nothing arrived since.
    eof: bool,
    last_arrival: Instant,
    paused: bool,
    /// Declared idle by its producer (a caught-up mark from the repartition topic) and empty
    /// since: idle at once, until the next record.
    idle_now: bool,
    /// The event time of the last record released from it.
    released: i64,
    /// The offset of the last record queued (a partition revoked and assigned back is fetched
    /// again from its committed position: what is still queued is not queued twice).
    last_offset: i64,
}

impl<T> Queue<T> {
    fn new(now: Instant) -> Queue<T> {
        Queue {
            items: VecDeque::new(),
            eof: false,
            last_arrival: now,
            paused: false,
            idle_now: false,
            released: i64::MIN,
            last_offset: -1,
        }
    }
}

/// What the caller should do with a partition's fetching.
#[derive(Debug, PartialEq, Eq)]
pub enum Flow {
    Pause(Tp),
    Resume(Tp),
}

pub struct Merge<T> {
    queues: BTreeMap<Tp, Queue<T>>,
    /// Records per partition queue before its partition is paused.
    cap: usize,
    idle_timeout: Duration,
    eof_grace: Duration,
    /// The largest event time released so far, and the allowed lateness behind it.
    released_max: i64,
    lateness: i64,
    /// Records released more than the lateness behind `released_max`.
    pub late: u64,
    /// Records queued, all partitions.
    queued: usize,
}

impl<T> Merge<T> {
    pub fn new(cap: usize, idle_timeout: Duration, lateness_secs: i64) -> Merge<T> {
        Merge {
            queues: BTreeMap::new(),
            cap: cap.max(1),
            idle_timeout,
            eof_grace: idle_timeout.min(EOF_GRACE),
            released_max: i64::MIN,
            lateness: lateness_secs.max(0),
            late: 0,
            queued: 0,
        }
    }

    /// The partitions now assigned: queues of the others are dropped (their records were not
    /// processed, so their offsets were not stored: the new owner reads them again), new ones
    /// start empty and are waited for until idle.
    pub fn assign(&mut self, assigned: &[Tp]) {
        let now = Instant::now();
        let keep: std::collections::BTreeSet<&Tp> = assigned.iter().collect();
        self.queues.retain(|tp, _| keep.contains(tp));
        // The caller resumes every assigned partition after a rebalance: a kept queue is no
        // longer paused, and asks again when full.
        for q in self.queues.values_mut() {
            q.paused = false;
        }
        for tp in assigned {
            self.queues
                .entry(tp.clone())
                .or_insert_with(|| Queue::new(now));
        }
        self.queued = self.queues.values().map(|q| q.items.len()).sum();
    }

    /// A record of `tp` with event time `time` (seconds). Returns a pause request when its
    /// queue is full.
    pub fn push(&mut self, tp: &Tp, time: i64, item: T) -> Option<Flow> {
        let now = Instant::now();
        let cap = self.cap;
        let q = self
            .queues
            .entry(tp.clone())
            .or_insert_with(|| Queue::new(now));
        q.items.push_back((time, item));
        q.eof = false;
        q.idle_now = false;
        q.last_arrival = now;
        self.queued += 1;
        if q.items.len() >= cap && !q.paused {
            q.paused = true;
            return Some(Flow::Pause(tp.clone()));
        }
        None
    }

    /// `tp` is caught up.
    pub fn eof(&mut self, tp: &Tp) {
        if let Some(q) = self.queues.get_mut(tp) {
            q.eof = true;
        }
    }

    /// The partitions numbered `p` (librdkafka's EOF event names no topic), for the caller to
    /// check which of them is at its end.
    pub fn numbered(&self, p: i32) -> Vec<Tp> {
        self.queues
            .keys()
            .filter(|(_, partition)| *partition == p)
            .cloned()
            .collect()
    }

    /// Whether the record of `tp` at `offset` is new to its queue (false: fetched again after a
    /// rebalance gave the partition back while it was still queued, or processed).
    pub fn fresh(&mut self, tp: &Tp, offset: i64) -> bool {
        if !self.queues.contains_key(tp) {
            self.queues.insert(tp.clone(), Queue::new(Instant::now()));
        }
        let Some(q) = self.queues.get_mut(tp) else {
            return true;
        };
        if offset <= q.last_offset {
            return false;
        }
        q.last_offset = offset;
        true
    }

    /// `tp`'s producer says it is caught up: once its queue is empty it is idle at once.
    pub fn caught_up(&mut self, tp: &Tp) {
        if let Some(q) = self.queues.get_mut(tp)
            && q.items.is_empty()
        {
            q.idle_now = true;
        }
    }

    /// Where each partition stands, for the progress marks the ingest side writes: the time
    /// below which no record of it is still to come (its head, else the last released), and
    /// whether it is idle (empty, and caught up or silent: the merge does not wait for it).
    pub fn progress(&self) -> impl Iterator<Item = (&Tp, i64, bool)> {
        let now = Instant::now();
        self.queues
            .iter()
            .map(move |(tp, q)| match q.items.front() {
                Some((t, _)) => (tp, *t, false),
                None => (tp, q.released, self.idle(q, now)),
            })
    }

    /// The queued items, in no particular order.
    pub fn items(&self) -> impl Iterator<Item = &T> {
        self.queues
            .values()
            .flat_map(|q| q.items.iter().map(|(_, x)| x))
    }

    pub fn is_empty(&self) -> bool {
        self.queued == 0
    }

    pub fn len(&self) -> usize {
        self.queued
    }

    /// The next record in event-time order, if it may leave now; with a resume request when its
    /// partition's queue fell below half its cap.
    pub fn pop(&mut self) -> Option<(Tp, T, Option<Flow>)> {
        self.pop_at(false)
    }

    /// Every queued record, in event-time order, whatever the idle state (at shutdown the
    /// caller does not use this: unprocessed records are simply read again next time).
    pub fn pop_any(&mut self) -> Option<(Tp, T, Option<Flow>)> {
        self.pop_at(true)
    }

    fn pop_at(&mut self, any: bool) -> Option<(Tp, T, Option<Flow>)> {
        let mut best: Option<(&Tp, i64)> = None;
        // The clock is read only when an empty queue must be judged idle.
        let mut now: Option<Instant> = None;
        for (tp, q) in &self.queues {
            match q.items.front() {
                Some((t, _)) => {
                    if best.is_none_or(|(_, b)| *t < b) {
                        best = Some((tp, *t));
                    }
                }
                None => {
                    if !any && !self.idle(q, *now.get_or_insert_with(Instant::now)) {
                        return None;
                    }
                }
            }
        }
        let tp = best?.0.clone();
        let cap = self.cap;
        let q = self.queues.get_mut(&tp)?;
        let (time, item) = q.items.pop_front()?;
        self.queued -= 1;
        let flow = if q.paused && q.items.len() <= cap / 2 {
            q.paused = false;
            Some(Flow::Resume(tp.clone()))
        } else {
            None
        };
        if time != i64::MIN {
            q.released = q.released.max(time);
            if self.released_max != i64::MIN && time < self.released_max - self.lateness {
                self.late += 1;
            }
            self.released_max = self.released_max.max(time);
        }
        Some((tp, item, flow))
    }

    /// An empty queue is idle: declared so, caught up for the short grace, or silent for the
    /// idle timeout.
    fn idle(&self, q: &Queue<T>, now: Instant) -> bool {
        let since = now.saturating_duration_since(q.last_arrival);
        q.idle_now
            || if q.eof {
                since >= self.eof_grace
            } else {
                since >= self.idle_timeout
            }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tp(p: i32) -> Tp {
        ("t".to_owned(), p)
    }

    #[test]
    fn records_leave_in_event_time_order_across_partitions() {
        let mut m = Merge::new(100, Duration::from_secs(60), 900);
        m.assign(&[tp(0), tp(1)]);
        for (p, t) in [(0, 10), (0, 30), (1, 5), (1, 20), (1, 40)] {
            m.push(&tp(p), t, t);
        }
        let mut out = Vec::new();
        // Partition 0 runs dry at 30 < 40: 40 waits for partition 0 (not idle, not at EOF).
        while let Some((_, t, _)) = m.pop() {
            out.push(t);
        }
        assert_eq!(out, [5, 10, 20, 30]);
        m.eof(&tp(0));
        std::thread::sleep(EOF_GRACE + Duration::from_millis(5));
        assert_eq!(m.pop().map(|x| x.1), Some(40));
        assert_eq!(m.late, 0);
    }

    #[test]
    fn an_empty_partition_holds_the_others_only_until_the_idle_timeout() {
        let mut m = Merge::new(100, Duration::from_millis(100), 900);
        m.assign(&[tp(0), tp(1)]);
        m.push(&tp(0), 1, 1);
        assert!(m.pop().is_none());
        std::thread::sleep(Duration::from_millis(120));
        assert_eq!(m.pop().map(|x| x.1), Some(1));
    }

    #[test]
    fn a_full_queue_pauses_its_partition_and_resumes_below_half() {
        let mut m = Merge::new(4, Duration::from_secs(60), 900);
        m.assign(&[tp(0), tp(1)]);
        let mut flows = Vec::new();
        for t in 0..4 {
            flows.extend(m.push(&tp(0), t, t));
        }
        assert_eq!(flows, [Flow::Pause(tp(0))]);
        m.push(&tp(1), 100, 100);
        let mut resumed = None;
        for _ in 0..2 {
            if let Some((_, _, Some(f))) = m.pop() {
                resumed = Some(f);
            }
        }
        assert_eq!(resumed, Some(Flow::Resume(tp(0))));
    }

    #[test]
    fn late_records_are_counted_not_dropped() {
        let mut m = Merge::new(100, Duration::from_millis(1), 10);
        m.assign(&[tp(0)]);
        m.push(&tp(0), 1000, 1000);
        m.push(&tp(0), 100, 100);
        let out: Vec<i64> = std::iter::from_fn(|| m.pop().map(|x| x.1)).collect();
        assert_eq!(out, [1000, 100]);
        assert_eq!(m.late, 1);
    }

    #[test]
    fn a_record_fetched_again_is_not_queued_twice() {
        let mut m: Merge<i64> = Merge::new(100, Duration::from_millis(1), 10);
        m.assign(&[tp(0)]);
        assert!(m.fresh(&tp(0), 5));
        assert!(m.fresh(&tp(0), 6));
        // The partition is revoked and assigned back: fetched again from offset 5.
        m.assign(&[tp(0)]);
        assert!(!m.fresh(&tp(0), 5));
        assert!(!m.fresh(&tp(0), 6));
        assert!(m.fresh(&tp(0), 7));
        // Revoked for good, then assigned again: a new queue.
        m.assign(&[]);
        m.assign(&[tp(0)]);
        assert!(m.fresh(&tp(0), 5));
    }

    #[test]
    fn a_revoked_partition_s_records_are_dropped() {
        let mut m = Merge::new(100, Duration::from_millis(1), 10);
        m.assign(&[tp(0), tp(1)]);
        m.push(&tp(0), 1, 1);
        m.push(&tp(1), 2, 2);
        m.assign(&[tp(1)]);
        assert_eq!(m.len(), 1);
        assert_eq!(m.pop().map(|x| x.1), Some(2));
    }
}
