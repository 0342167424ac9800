//! The repartition topic (`<group>-repartition`): decoded events re-keyed by their subject (the
//! access key, else the principal), so that every event of one key reaches the one engine that
//! owns the key's partition, whichever instance read it and from whichever input partition
//! (the Kafka Streams repartition topic, on rdkafka).
//!
//! Three kinds of record, JSON, written to an explicit partition:
//! - `event`: an event for the partition that owns its subject, with where it came from (input
//!   topic, partition, offset, index in the record) so a copy written twice (an input partition
//!   re-read after it moved) is recognised and skipped;
//! - `marks`: a marks-only copy of an event for a partition that owns a subject the event marks
//!   (the key it created, or — for a quarantine — every partition);
//! - `progress`: an input partition's event-time progress, written to every partition: no event
//!   of it older than `time` is still to come (within the allowed lateness), and whether its
//!   reader is caught up. The detection side merges the input partitions' events in event time
//!   with these as punctuation (Flink's per-source watermarks), so the order in which instances
//!   wrote them does not matter.

use std::collections::VecDeque;
use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::Consumer;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord};
use serde::{Deserialize, Serialize};

use crate::engine::route;
use crate::event::Event;

/// Where an event came from: input topic, partition, offset and its index in the record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourcePos {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub index: u32,
}

impl SourcePos {
    /// Order within one input partition.
    pub fn at(&self) -> (i64, u32) {
        (self.offset, self.index)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
// Externally tagged (`{"event": {...}}`): an internally tagged enum is buffered whole before it
// is parsed, which cost more than the parse.
#[serde(rename_all = "snake_case")]
pub enum Record {
    Event {
        source: SourcePos,
        /// The input record's Kafka timestamp (ms), for the ingest-to-alarm latency.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        ingested: Option<i64>,
        event: Box<Event>,
    },
    Marks {
        source: SourcePos,
        event: Box<Event>,
    },
    Progress {
        topic: String,
        partition: i32,
        /// Event time, seconds.
        time: i64,
        caught_up: bool,
    },
}

/// The internal topics' names, from the group id.
pub fn repartition_topic(group: &str) -> String {
    format!("{group}-repartition")
}

pub fn changelog_topic(group: &str) -> String {
    format!("{group}-changelog")
}

/// Creates the repartition and changelog topics with `partitions` partitions when missing; an
/// existing one with another partition count is an error (keys would move between engines).
pub async fn ensure_topics(
    client: &ClientConfig,
    group: &str,
    partitions: i32,
    replication: i32,
    retention_ms: i64,
) -> anyhow::Result<()> {
    let admin: AdminClient<DefaultClientContext> = client.create()?;
    let (rep, log) = (repartition_topic(group), changelog_topic(group));
    let retention = retention_ms.to_string();
    let max_bytes = (crate::source::framing::DEFAULT_MAX_RECORD_BYTES + (1 << 20)).to_string();
    let topics = [
        NewTopic::new(&rep, partitions, TopicReplication::Fixed(replication))
            .set("retention.ms", &retention)
            .set("max.message.bytes", &max_bytes),
        NewTopic::new(&log, partitions, TopicReplication::Fixed(replication))
            .set("cleanup.policy", "compact")
            .set("max.message.bytes", &max_bytes),
    ];
    let results = admin
        .create_topics(
            &topics,
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(30))),
        )
        .await?;
    for r in results {
        match r {
            Ok(name) => tracing::info!(topic = %name, partitions, "created an internal topic"),
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((name, e)) => anyhow::bail!("cannot create the internal topic {name}: {e}"),
        }
    }
    // An existing topic must have the configured count.
    let md = tokio::task::spawn_blocking({
        let admin_client = client.clone();
        let names = [rep.clone(), log.clone()];
        move || -> anyhow::Result<Vec<(String, usize)>> {
            let c: rdkafka::consumer::BaseConsumer = admin_client.create()?;
            names
                .iter()
                .map(|n| {
                    // A topic just created may show no partitions until the broker's metadata
                    // catches up (seen on a fresh broker): asked again for up to 10 s; a real
                    // topic never has 0.
                    let deadline = std::time::Instant::now() + Duration::from_secs(10);
                    loop {
                        let md = c.fetch_metadata(Some(n), Duration::from_secs(10))?;
                        let count = md.topics().first().map_or(0, |t| t.partitions().len());
                        if count > 0 || std::time::Instant::now() >= deadline {
                            return Ok((n.clone(), count));
                        }
                        std::thread::sleep(Duration::from_millis(200));
                    }
                })
                .collect()
        }
    })
    .await??;
    for (name, n) in md {
        if n != partitions as usize {
            anyhow::bail!(
                "the internal topic {name} has {n} partitions, the configuration says {partitions} (kafka.internal_partitions): keys would move between engines; set it to {n} or use a new group_id"
            );
        }
    }
    Ok(())
}

/// The partitions of the input topics (every source the detection side waits for); a topic
/// that does not exist has none here.
pub fn input_partitions(
    client: &ClientConfig,
    topics: &[String],
) -> anyhow::Result<Vec<(String, i32)>> {
    use rdkafka::types::RDKafkaRespErr;
    let c: rdkafka::consumer::BaseConsumer<super::Logged> =
        client.create_with_context(super::Logged)?;
    let mut out = Vec::new();
    for t in topics {
        let md = c.fetch_metadata(Some(t), Duration::from_secs(10))?;
        for topic in md.topics() {
            match topic.error() {
                None => {}
                Some(RDKafkaRespErr::RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART) => {
                    continue;
                }
                Some(e) => anyhow::bail!("input topic {t}: {e:?}"),
            }
            out.extend(topic.partitions().iter().map(|p| (t.clone(), p.id())));
        }
    }
    out.sort();
    Ok(out)
}

/// One input record's writes, awaited in order.
pub struct Inflight<T> {
    pub tag: T,
    deliveries: Vec<DeliveryFuture>,
}

/// The ingest side's writer: events to the partition of their subject (and marks-only copies),
/// progress marks to every partition; deliveries are collected in input order, so an input
/// record is done when all of its writes are acknowledged.
pub struct Writer<T> {
    producer: FutureProducer<super::Logged>,
    topic: String,
    partitions: u32,
    inflight: VecDeque<Inflight<T>>,
    /// Writes outstanding before `write` waits for the oldest.
    max_inflight: usize,
}

/// A write the broker refused for good (too large, not authorised ...).
#[derive(Debug)]
pub struct Refused<T> {
    pub tag: T,
    pub error: String,
}

impl<T> Writer<T> {
    pub fn new(client: &ClientConfig, group: &str, partitions: u32) -> anyhow::Result<Writer<T>> {
        let mut c = client.clone();
        // Batched (the writes are awaited behind, not one by one), in order, never given up
        // while running (message.timeout.ms 0: librdkafka retries until acknowledged).
        for (k, v) in [
            ("linger.ms", "5"),
            ("acks", "all"),
            ("enable.idempotence", "true"),
            ("message.timeout.ms", "0"),
            ("compression.type", "lz4"),
            ("queue.buffering.max.messages", "200000"),
        ] {
            if c.get(k).is_none() || k == "message.timeout.ms" || k == "enable.idempotence" {
                c.set(k, v);
            }
        }
        c.set(
            "message.max.bytes",
            (crate::source::framing::DEFAULT_MAX_RECORD_BYTES + (1 << 20)).to_string(),
        );
        Ok(Writer {
            producer: c.create_with_context(super::Logged)?,
            topic: repartition_topic(group),
            partitions: partitions.max(1),
            inflight: VecDeque::new(),
            max_inflight: 20_000,
        })
    }

    pub fn producer(&self) -> &FutureProducer<super::Logged> {
        &self.producer
    }

    fn send(&self, partition: u32, payload: &[u8]) -> Result<DeliveryFuture, String> {
        let mut record = FutureRecord::<(), [u8]>::to(&self.topic)
            .payload(payload)
            .partition(partition as i32);
        loop {
            match self.producer.send_result(record) {
                Ok(f) => return Ok(f),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    record = back;
                    // The local queue drains as the broker acknowledges.
                    self.producer.poll(Duration::from_millis(10));
                }
                Err((e, _)) => return Err(e.to_string()),
            }
        }
    }

    /// Writes the events of one input record (`events`: index in the record and event) and
    /// queues their acknowledgement under `tag`. An event that cannot even be queued (too
    /// large for the client) is returned as refused.
    pub fn write(
        &mut self,
        tag: T,
        topic: &str,
        partition: i32,
        offset: i64,
        ingested: Option<i64>,
        events: Vec<(u32, Event)>,
    ) -> Result<(), Refused<T>> {
        let mut deliveries = Vec::with_capacity(events.len());
        for (index, event) in events {
            let source = SourcePos {
                topic: topic.to_owned(),
                partition,
                offset,
                index,
            };
            let (owner, others) = route(&event, self.partitions);
            let event = Box::new(event);
            let marks_payload = if others.is_empty() {
                None
            } else {
                Some(
                    serde_json::to_vec(&Record::Marks {
                        source: source.clone(),
                        event: event.clone(),
                    })
                    .map_err(|e| e.to_string()),
                )
            };
            let payload = serde_json::to_vec(&Record::Event {
                source,
                ingested,
                event,
            })
            .map_err(|e| e.to_string());
            let sent = payload.and_then(|p| self.send(owner, &p));
            match sent {
                Ok(f) => deliveries.push(f),
                // The caller dead-letters the record; its earlier writes stay.
                Err(error) => return Err(Refused { tag, error }),
            }
            if let Some(marks) = marks_payload {
                let marks = match marks {
                    Ok(m) => m,
                    Err(error) => return Err(Refused { tag, error }),
                };
                for p in others {
                    match self.send(p, &marks) {
                        Ok(f) => deliveries.push(f),
                        Err(error) => return Err(Refused { tag, error }),
                    }
                }
            }
        }
        self.inflight.push_back(Inflight { tag, deliveries });
        Ok(())
    }

    /// Writes a progress mark of an input partition to every partition (not awaited: a lost
    /// one is replaced by the next).
    pub fn progress(&self, topic: &str, partition: i32, time: i64, caught_up: bool) {
        let Ok(payload) = serde_json::to_vec(&Record::Progress {
            topic: topic.to_owned(),
            partition,
            time,
            caught_up,
        }) else {
            return;
        };
        // One try each: with the local queue full (the broker away) a mark is skipped, the
        // next replaces it.
        for p in 0..self.partitions {
            let record = FutureRecord::<(), [u8]>::to(&self.topic)
                .payload(&payload)
                .partition(p as i32);
            if let Err((e, _)) = self.producer.send_result(record) {
                tracing::debug!(error = %e, "progress mark not written");
            }
        }
    }

    /// Queues a record that needs no write (already dead-lettered), done in its turn.
    pub fn push_done(&mut self, tag: T) {
        self.inflight.push_back(Inflight {
            tag,
            deliveries: Vec::new(),
        });
    }

    pub fn pending(&self) -> usize {
        self.inflight.len()
    }

    pub fn is_full(&self) -> bool {
        self.inflight.len() >= self.max_inflight
    }

    /// The oldest input record whose writes are all acknowledged, if any, without waiting
    /// (`wait`: wait for the oldest). `Err` carries a record a write of which was refused for
    /// good.
    pub async fn next_done(&mut self, wait: bool) -> Option<Result<T, Refused<T>>> {
        loop {
            let front = self.inflight.front_mut()?;
            let Some(f) = front.deliveries.last_mut() else {
                let done = self.inflight.pop_front()?;
                return Some(Ok(done.tag));
            };
            let result = if wait {
                f.await
            } else {
                match super::poll_once(f) {
                    Some(r) => r,
                    None => return None,
                }
            };
            front.deliveries.pop();
            let error = match result {
                Ok(Ok(_)) => continue,
                Ok(Err((e, _))) => e.to_string(),
                Err(_) => "the write was cancelled".to_owned(),
            };
            let done = self.inflight.pop_front()?;
            return Some(Err(Refused {
                tag: done.tag,
                error,
            }));
        }
    }
}

/// Decodes a record of the repartition topic.
pub fn decode(payload: &[u8]) -> Result<Record, String> {
    serde_json::from_slice(payload).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_with_the_whole_event() {
        let mut out = Vec::new();
        let raw = br#"{"eventVersion":"1.08","userIdentity":{"type":"IAMUser","principalId":"AIDA1","arn":"arn:aws:iam::123456789012:user/alice","accountId":"123456789012","accessKeyId":"AKIAEXAMPLE000000001","userName":"alice"},"eventTime":"2024-05-01T10:00:00Z","eventSource":"iam.amazonaws.com","eventName":"CreateAccessKey","awsRegion":"us-east-1","sourceIPAddress":"203.0.113.9","userAgent":"aws-cli/2.15","requestParameters":{"userName":"bob"},"responseElements":{"accessKey":{"accessKeyId":"AKIANEWKEY0000000002","status":"Active","userName":"bob"}},"eventID":"e-1","eventType":"AwsApiCall","recipientAccountId":"123456789012"}"#;
        crate::provider::Decoder::auto().decode(raw, &crate::event::Origin::default(), &mut out);
        let event = out.pop().unwrap().unwrap();
        assert!(event.request.created_key_id.is_some());
        let rec = Record::Event {
            source: SourcePos {
                topic: "t".into(),
                partition: 2,
                offset: 7,
                index: 0,
            },
            ingested: Some(1),
            event: Box::new(event.clone()),
        };
        let back = decode(&serde_json::to_vec(&rec).unwrap()).unwrap();
        match back {
            Record::Event {
                event: e, source, ..
            } => {
                assert_eq!(*e, event);
                assert_eq!(source.at(), (7, 0));
            }
            other => panic!("{other:?}"),
        }
    }
}
