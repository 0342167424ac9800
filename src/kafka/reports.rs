//! Credential reports while the service runs: the report files are re-scanned and the report
//! topic is followed on a thread of their own; every change rebuilds the join index, which the
//! consume loop swaps in between two records (the Kafka Streams "global table" model: every
//! instance reads every partition of the report topic, from the beginning, without a group).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};

use crate::enrich::ReportIndex;
use crate::report::live::{Change, ReportFeed};
use crate::telemetry::Metrics;

/// A new index for the consume loop.
pub struct ReportUpdate {
    pub index: ReportIndex,
    pub accounts: usize,
    /// The configuration risks of the reports now in use.
    pub risks: Vec<crate::risk::Risk>,
    /// Their principals, for the inventory.
    pub principals: Vec<crate::inventory::PrincipalRow>,
}

/// How long start-up waits to read the report topic to its end before consuming events anyway.
const BOOTSTRAP_LIMIT: Duration = Duration::from_secs(60);

/// The report topic, read with a manual assignment of all its partitions.
struct TopicReader {
    consumer: BaseConsumer<super::Logged>,
    topic: String,
    /// partition → next offset to read.
    next: BTreeMap<i32, i64>,
}

impl TopicReader {
    fn new(config: ClientConfig, group: &str, topic: &str) -> anyhow::Result<TopicReader> {
        let consumer: BaseConsumer<super::Logged> = config
            .clone()
            // Required by librdkafka for a consumer; with a manual assignment and no commits the
            // group is never joined.
            .set("group.id", group)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .create_with_context(super::Logged)?;
        let mut reader = TopicReader {
            consumer,
            topic: topic.to_owned(),
            next: BTreeMap::new(),
        };
        reader.refresh_partitions();
        Ok(reader)
    }

    /// Assigns partitions that appeared since (or the topic, once it exists).
    fn refresh_partitions(&mut self) {
        let Ok(md) = self
            .consumer
            .fetch_metadata(Some(&self.topic), Duration::from_secs(5))
        else {
            return;
        };
        let Some(t) = md.topics().iter().find(|t| t.name() == self.topic) else {
            return;
        };
        if t.error().is_some() || t.partitions().len() == self.next.len() {
            return;
        }
        for p in t.partitions() {
            self.next.entry(p.id()).or_insert(0);
        }
        let mut tpl = TopicPartitionList::new();
        for (p, offset) in &self.next {
            let _ = tpl.add_partition_offset(&self.topic, *p, Offset::Offset(*offset));
        }
        match self.consumer.assign(&tpl) {
            Ok(()) => {
                tracing::info!(topic = %self.topic, partitions = self.next.len(), "following the report topic")
            }
            Err(e) => {
                tracing::warn!(topic = %self.topic, error = %e, "cannot assign the report topic");
                self.next.clear();
            }
        }
    }

    /// Reads what is there (up to `wait` for the first message) into the feed.
    fn poll(&mut self, feed: &mut ReportFeed, wait: Duration) -> Change {
        let mut change = Change::default();
        let mut timeout = wait;
        while let Some(m) = self.consumer.poll(timeout) {
            timeout = Duration::ZERO;
            let m = match m {
                Ok(m) => m,
                Err(e) => {
                    tracing::warn!(topic = %self.topic, error = %e, "report topic");
                    break;
                }
            };
            self.next.insert(m.partition(), m.offset() + 1);
            let received = m
                .timestamp()
                .to_millis()
                .and_then(DateTime::<Utc>::from_timestamp_millis)
                .unwrap_or_else(Utc::now);
            let origin = format!("{}:{}:{}", m.topic(), m.partition(), m.offset());
            change.merge(feed.apply_message(&self.topic, m.key(), m.payload(), received, &origin));
        }
        change
    }

    /// Whether every partition has been read up to the end it had when asked.
    fn at_end(&self) -> bool {
        !self.next.is_empty()
            && self.next.iter().all(|(p, next)| {
                self.consumer
                    .fetch_watermarks(&self.topic, *p, Duration::from_secs(5))
                    .is_ok_and(|(_, high)| *next >= high)
            })
    }
}

/// Logs and counts what a scan or a message brought; true when the index must be rebuilt.
fn report(change: Change, metrics: &Metrics) -> bool {
    for e in &change.errors {
        tracing::error!("credential report not read (the previous version stays in use): {e}");
    }
    metrics.report_errors.inc_by(change.errors.len() as u64);
    for w in &change.warnings {
        tracing::warn!("{w}");
    }
    change.changed
}

/// The index over the newest report per account; the accounts gauge follows.
fn update(feed: &ReportFeed, metrics: &Metrics) -> ReportUpdate {
    let latest = feed.latest();
    metrics.report_accounts.set(latest.len() as i64);
    ReportUpdate {
        accounts: latest.len(),
        risks: current_risks(&latest),
        principals: crate::inventory::principal_rows(&latest),
        index: ReportIndex::new(latest),
    }
}

/// The configuration risks of these reports, each as of its report's time.
pub fn current_risks(latest: &[&crate::report::ReportSnapshot]) -> Vec<crate::risk::Risk> {
    latest
        .iter()
        .flat_map(|s| crate::risk::risks(s, crate::risk::report_time(s)))
        .collect()
}

/// The follower: the feed (files already read once at start), the report topic if any.
pub struct Follower {
    feed: ReportFeed,
    reader: Option<TopicReader>,
    rescan: Duration,
    metrics: Arc<Metrics>,
}

impl Follower {
    pub fn new(
        feed: ReportFeed,
        topic: Option<(ClientConfig, &str, &str)>,
        rescan: Duration,
        metrics: Arc<Metrics>,
    ) -> anyhow::Result<Follower> {
        let reader = match topic {
            Some((config, group, topic)) => Some(TopicReader::new(config, group, topic)?),
            None => None,
        };
        metrics.report_accounts.set(feed.accounts() as i64);
        Ok(Follower {
            feed,
            reader,
            rescan,
            metrics,
        })
    }

    /// Reads the report topic to its end (bounded), so the first events are joined with the
    /// reports already published. Returns the index to start with, if the topic changed it.
    pub fn bootstrap(&mut self, stop: &AtomicBool) -> Option<ReportUpdate> {
        let reader = self.reader.as_mut()?;
        let start = Instant::now();
        let mut changed = false;
        loop {
            let c = reader.poll(&mut self.feed, Duration::from_millis(200));
            changed |= report(c, &self.metrics);
            if reader.at_end() || stop.load(Ordering::Relaxed) {
                break;
            }
            if start.elapsed() > BOOTSTRAP_LIMIT {
                tracing::warn!(
                    "the report topic was not read to its end within {BOOTSTRAP_LIMIT:?}; \
                     consuming events anyway, reports follow as they arrive"
                );
                break;
            }
            if reader.next.is_empty() {
                // No such topic (yet): nothing to wait for.
                tracing::warn!(topic = %reader.topic, "the report topic has no partitions (yet)");
                break;
            }
        }
        let u = update(&self.feed, &self.metrics);
        tracing::info!(
            accounts = u.accounts,
            ms = start.elapsed().as_millis() as u64,
            "report topic read"
        );
        changed.then_some(u)
    }

    /// Follows files and topic until `stop` or the receiver is gone; sends each new index.
    pub fn run(mut self, tx: tokio::sync::mpsc::Sender<ReportUpdate>, stop: Arc<AtomicBool>) {
        let mut last_scan = Instant::now();
        while !stop.load(Ordering::Relaxed) {
            // Isolated: a failure in one round (a report the parsers did not catch, the index
            // build) is counted and logged, the index in use stays, and the thread goes on.
            let round = crate::isolate::guard(|| {
                let mut changed = false;
                match self.reader.as_mut() {
                    Some(reader) => {
                        let c = reader.poll(&mut self.feed, Duration::from_millis(500));
                        changed |= report(c, &self.metrics);
                    }
                    None => std::thread::sleep(Duration::from_millis(500)),
                }
                if last_scan.elapsed() >= self.rescan {
                    last_scan = Instant::now();
                    let c = self.feed.scan();
                    changed |= report(c, &self.metrics);
                    if let Some(reader) = self.reader.as_mut() {
                        reader.refresh_partitions();
                    }
                }
                changed.then(|| update(&self.feed, &self.metrics))
            });
            match round {
                Ok(Some(u)) => {
                    tracing::info!(accounts = u.accounts, "credential reports changed");
                    if tx.blocking_send(u).is_err() {
                        return;
                    }
                }
                Ok(None) => {}
                Err(e) => {
                    self.metrics.report_errors.inc();
                    tracing::error!(
                        "credential report update failed (the previous version stays in use): {e}"
                    );
                    std::thread::sleep(Duration::from_millis(500));
                }
            }
        }
    }
}
