//! Delivery to the alarm and dead-letter topics: transient errors retried with backoff,
//! permanent ones sent down a clear path, every wait bounded by the shutdown grace period.
//!
//! - *Transient* (broker down, queue full, timeouts, leader changes): retried with backoff
//!   until acknowledged — an alarm is never dropped while the service runs.
//! - *Too large* for `message.max.bytes`: an alarm is shrunk (its longest strings and lists cut,
//!   with a note in `evidence.facts.truncated`) and sent again; a dead letter is cut, with the
//!   header `akwatch-truncated` giving its original size. The partition never stalls on it.
//! - *Other permanent errors* (invalid topic, authorisation): an alarm goes to the dead-letter
//!   topic as an `undeliverable_alarm` record; a dead letter that cannot be written is logged
//!   and counted. Either way the record's offset moves on.
//! - *Stopping*: once the grace period after SIGTERM has passed, a delivery still waiting is
//!   abandoned; the caller then commits nothing past it, so a restart re-derives it.

use std::time::{Duration, Instant};

use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::Value;
use tokio::sync::watch;

use crate::alarm::Alarm;
use crate::event::Origin;
use crate::provider::Reject;
use crate::telemetry::Metrics;

/// How long a produce may wait in librdkafka's queue before it is reported as failed and
/// retried by us (broker outage: we keep retrying, never drop).
pub const PRODUCE_TIMEOUT: Duration = Duration::from_secs(30);

/// librdkafka's default `message.max.bytes`.
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 1_000_000;

/// Room left under `message.max.bytes` for the record's framing, key and headers.
const RECORD_OVERHEAD: usize = 4096;

/// The stop signal as deliveries see it: `None` while running, then the instant after which
/// nothing more is waited for.
#[derive(Clone)]
pub struct Stop(watch::Receiver<Option<Instant>>);

/// Sets the deadline when the stop signal comes.
pub struct StopHandle(watch::Sender<Option<Instant>>);

impl StopHandle {
    /// Starts the grace period: deliveries give up at `now + grace`.
    pub fn stop(&self, grace: Duration) {
        let deadline = Instant::now() + grace;
        self.0.send_if_modified(|d| {
            if d.is_none() {
                *d = Some(deadline);
                true
            } else {
                false
            }
        });
    }
}

impl Stop {
    pub fn new() -> (StopHandle, Stop) {
        let (tx, rx) = watch::channel(None);
        (StopHandle(tx), Stop(rx))
    }

    /// The grace deadline, once stopping.
    pub fn deadline(&self) -> Option<Instant> {
        *self.0.borrow()
    }

    /// Whether the grace period has run out.
    pub fn expired(&self) -> bool {
        self.deadline().is_some_and(|d| Instant::now() >= d)
    }

    /// Resolves when the stop signal has come.
    pub async fn signalled(&self) {
        let mut rx = self.0.clone();
        let _ = rx.wait_for(Option::is_some).await;
    }

    /// Resolves when the grace period has run out (never while running).
    pub async fn until_expired(&self) {
        self.signalled().await;
        if let Some(d) = self.deadline() {
            tokio::time::sleep_until(d.into()).await;
        }
    }

    /// Time left in the grace period (`max` while running).
    pub fn remaining(&self, max: Duration) -> Duration {
        match self.deadline() {
            Some(d) => d.saturating_duration_since(Instant::now()).min(max),
            None => max,
        }
    }
}

/// How one delivery ended.
#[derive(Debug)]
pub enum Delivery {
    /// Acknowledged by the broker after this many attempts.
    Acked(u32),
    /// The broker (or librdkafka) refused it for good.
    Permanent(KafkaError),
    /// Still not acknowledged when the grace period ran out.
    Abandoned,
}

/// A delivery was abandoned at shutdown: the caller must not mark its record done.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Abandoned;

/// Errors that no retry can cure.
pub fn is_permanent(e: &KafkaError) -> bool {
    use RDKafkaErrorCode as C;
    matches!(
        e.rdkafka_error_code(),
        Some(
            C::MessageSizeTooLarge
                | C::InvalidMessageSize
                | C::MessageBatchTooLarge
                | C::InvalidTopic
                | C::TopicAuthorizationFailed
                | C::ClusterAuthorizationFailed
                | C::InvalidRecord
                | C::InvalidArgument
                | C::InvalidMessage
                | C::UnknownPartition
        )
    )
}

fn too_large(e: &KafkaError) -> bool {
    matches!(
        e.rdkafka_error_code(),
        Some(
            RDKafkaErrorCode::MessageSizeTooLarge
                | RDKafkaErrorCode::InvalidMessageSize
                | RDKafkaErrorCode::MessageBatchTooLarge
        )
    )
}

/// Produces one record, retrying transient errors with backoff until the broker acknowledges
/// it; a permanent error is returned at once, and once stopping, the wait ends with the grace
/// period. A full local queue (`QueueFull`) is waited out inside `send` for up to
/// `PRODUCE_TIMEOUT`; a message librdkafka gives up on (`message.timeout.ms`: broker down) is
/// sent again.
pub async fn deliver(
    producer: &FutureProducer,
    topic: &str,
    key: &str,
    payload: &[u8],
    headers: Option<OwnedHeaders>,
    stop: &Stop,
    on_retry: &dyn Fn(),
) -> Delivery {
    let mut backoff = Duration::from_millis(100);
    let mut attempts = 0;
    loop {
        if stop.expired() {
            return Delivery::Abandoned;
        }
        attempts += 1;
        let mut record = FutureRecord::to(topic).key(key).payload(payload);
        if let Some(h) = &headers {
            record = record.headers(h.clone());
        }
        let sent = tokio::select! {
            r = producer.send(record, PRODUCE_TIMEOUT) => r,
            _ = stop.until_expired() => return Delivery::Abandoned,
        };
        match sent {
            Ok(_) => return Delivery::Acked(attempts),
            Err((e, _)) if is_permanent(&e) => return Delivery::Permanent(e),
            Err((e, _)) => {
                on_retry();
                tracing::warn!(topic, error = %e, "produce failed; retrying in {:?}", backoff);
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = stop.until_expired() => return Delivery::Abandoned,
                }
                backoff = (backoff * 2).min(Duration::from_secs(10));
            }
        }
    }
}

/// Where alarms and dead letters go, and how large a record may be.
pub struct Outputs<'a> {
    pub producer: &'a FutureProducer,
    pub alarm_topic: &'a str,
    pub dlq_topic: &'a str,
    /// The producer's `message.max.bytes`.
    pub max_bytes: usize,
    pub stop: Stop,
    pub metrics: &'a Metrics,
}

impl Outputs<'_> {
    fn retry_counter(&self, output: &'static str) -> impl Fn() + '_ {
        move || {
            self.metrics
                .delivery_retries
                .with_label_values(&[output])
                .inc()
        }
    }

    fn failed(&self, output: &str, reason: &str) {
        self.metrics
            .delivery_failures
            .with_label_values(&[output, reason])
            .inc();
    }

    /// Delivers an alarm: shrunk when too large, to the dead-letter topic when the alarm topic
    /// refuses it for good. Only a stop can make it fail.
    pub async fn alarm(&self, alarm: &Alarm) -> Result<(), Abandoned> {
        let Ok(mut value) = serde_json::to_value(alarm) else {
            tracing::error!(alarm_id = %alarm.alarm_id, "cannot serialise an alarm");
            self.failed("alarm", "permanent");
            return Ok(());
        };
        let mut limit = self.max_bytes.saturating_sub(RECORD_OVERHEAD).max(1024);
        let mut bytes = serde_json::to_vec(&value).unwrap_or_default();
        let mut shrunk = false;
        for _ in 0..8 {
            if bytes.len() > limit {
                shrink_to(&mut value, limit);
                bytes = serde_json::to_vec(&value).unwrap_or_default();
                if !shrunk {
                    shrunk = true;
                    self.metrics.alarms_shrunk.inc();
                    tracing::warn!(alarm_id = %alarm.alarm_id, limit, "alarm too large for the topic: fields cut");
                }
            }
            let on_retry = self.retry_counter("alarm");
            match deliver(
                self.producer,
                self.alarm_topic,
                &alarm.alarm_id,
                &bytes,
                None,
                &self.stop,
                &on_retry,
            )
            .await
            {
                Delivery::Acked(_) => return Ok(()),
                Delivery::Abandoned => {
                    self.failed("alarm", "stopped");
                    return Err(Abandoned);
                }
                // The broker's (or the topic's) limit is lower than ours: halve and try again.
                Delivery::Permanent(e) if too_large(&e) => {
                    limit = (bytes.len().min(limit) / 2).max(1024);
                }
                Delivery::Permanent(e) => {
                    tracing::error!(alarm_id = %alarm.alarm_id, topic = self.alarm_topic, error = %e,
                        "the alarm topic refuses the alarm for good; sending it to the dead-letter topic");
                    self.failed("alarm", "permanent");
                    let origin = Origin::default();
                    let reject = Reject::new(
                        crate::provider::RejectKind::InternalError,
                        format!("undeliverable alarm: {e}"),
                        origin.clone(),
                    );
                    return self
                        .dead_letter_as(&reject, "undeliverable_alarm", &bytes, &origin)
                        .await;
                }
            }
        }
        tracing::error!(alarm_id = %alarm.alarm_id, "alarm still too large after cutting; not delivered");
        self.failed("alarm", "permanent");
        Ok(())
    }

    /// Delivers a rejected record unchanged (cut when too large) with its reason and origin.
    pub async fn dead_letter(
        &self,
        reject: &Reject,
        raw: &[u8],
        origin: &Origin,
    ) -> Result<(), Abandoned> {
        self.dead_letter_as(reject, reject.kind.as_str(), raw, origin)
            .await
    }

    async fn dead_letter_as(
        &self,
        reject: &Reject,
        kind: &str,
        raw: &[u8],
        origin: &Origin,
    ) -> Result<(), Abandoned> {
        let key = format!(
            "{}:{}:{}",
            origin.topic.as_deref().unwrap_or("-"),
            origin.partition.unwrap_or(-1),
            origin.offset.unwrap_or(-1)
        );
        let mut limit = self.max_bytes.saturating_sub(RECORD_OVERHEAD).max(1024);
        for _ in 0..8 {
            let cut = raw.len() > limit;
            let payload = if cut { &raw[..limit] } else { raw };
            if cut {
                tracing::warn!(%key, bytes = raw.len(), limit, "dead letter too large for the topic: cut");
            }
            let headers = dead_letter_headers(reject, kind, origin, cut.then_some(raw.len()));
            let on_retry = self.retry_counter("dead_letter");
            match deliver(
                self.producer,
                self.dlq_topic,
                &key,
                payload,
                Some(headers),
                &self.stop,
                &on_retry,
            )
            .await
            {
                Delivery::Acked(_) => {
                    if cut {
                        self.metrics.dead_letters_truncated.inc();
                    }
                    return Ok(());
                }
                Delivery::Abandoned => {
                    self.failed("dead_letter", "stopped");
                    return Err(Abandoned);
                }
                Delivery::Permanent(e) if too_large(&e) => {
                    limit = (payload.len() / 2).max(256);
                }
                Delivery::Permanent(e) => {
                    tracing::error!(%key, topic = self.dlq_topic, error = %e, reason = %reject.reason,
                        "the dead-letter topic refuses the record for good; it is not kept");
                    self.failed("dead_letter", "permanent");
                    return Ok(());
                }
            }
        }
        tracing::error!(%key, "dead letter still too large after cutting; not kept");
        self.failed("dead_letter", "permanent");
        Ok(())
    }
}

fn dead_letter_headers(
    reject: &Reject,
    kind: &str,
    origin: &Origin,
    truncated_from: Option<usize>,
) -> OwnedHeaders {
    let mut headers = OwnedHeaders::new()
        .insert(Header {
            key: "akwatch-reason",
            value: Some(reject.reason.as_str()),
        })
        .insert(Header {
            key: "akwatch-kind",
            value: Some(kind),
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
    if let Some(n) = truncated_from {
        headers = headers.insert(Header {
            key: "akwatch-truncated",
            value: Some(&n.to_string()),
        });
    }
    headers
}

/// Cuts an alarm's JSON until it serialises within `limit` bytes: strings longer than a bound
/// are cut (on a character boundary, with `…`), lists longer than a bound keep their first
/// items, the bounds halving until it fits. The cut is noted in `evidence.facts.truncated`.
pub fn shrink_to(value: &mut Value, limit: usize) {
    let mut max_str = 8192usize;
    let mut max_items = 256usize;
    let mut cut = Cut::default();
    loop {
        cut_value(value, max_str, max_items, &mut cut);
        let note = format!(
            "shrunk to fit the topic's message size: {} string(s) cut to {max_str} bytes, {} list(s) cut to {max_items} items",
            cut.strings, cut.lists
        );
        if let Some(facts) = value
            .get_mut("evidence")
            .and_then(|e| e.get_mut("facts"))
            .and_then(Value::as_object_mut)
        {
            facts.insert("truncated".to_owned(), Value::String(note));
        }
        let len = serde_json::to_vec(value).map_or(0, |b| b.len());
        if len <= limit || (max_str <= 16 && max_items <= 1) {
            return;
        }
        max_str = (max_str / 2).max(16);
        max_items = (max_items / 2).max(1);
    }
}

#[derive(Default)]
struct Cut {
    strings: usize,
    lists: usize,
}

fn cut_value(v: &mut Value, max_str: usize, max_items: usize, cut: &mut Cut) {
    match v {
        Value::String(s) if s.len() > max_str => {
            let mut end = max_str;
            while !s.is_char_boundary(end) {
                end -= 1;
            }
            s.truncate(end);
            s.push('…');
            cut.strings += 1;
        }
        Value::Array(a) => {
            if a.len() > max_items {
                a.truncate(max_items);
                cut.lists += 1;
            }
            for x in a {
                cut_value(x, max_str, max_items, cut);
            }
        }
        Value::Object(o) => {
            for (_, x) in o.iter_mut() {
                cut_value(x, max_str, max_items, cut);
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_huge_alarm_is_shrunk_under_the_limit_and_says_so() {
        let mut v = serde_json::json!({
            "alarm_id": "akw-1",
            "principal": {"arn": "a".repeat(600_000), "name": "n".repeat(600_000)},
            "apis": (0..10_000).map(|i| format!("Api{i}")).collect::<Vec<_>>(),
            "evidence": {"event_ids": ["e1"], "facts": {"user_agent": "时".repeat(100_000)}},
        });
        shrink_to(&mut v, 100_000);
        let bytes = serde_json::to_vec(&v).unwrap();
        assert!(bytes.len() <= 100_000, "{}", bytes.len());
        assert_eq!(v["alarm_id"], "akw-1");
        let note = v["evidence"]["facts"]["truncated"].as_str().unwrap();
        assert!(note.contains("string(s) cut"), "{note}");
        // Cut on character boundaries: still valid JSON text, still the same characters.
        assert!(
            v["evidence"]["facts"]["user_agent"]
                .as_str()
                .unwrap()
                .starts_with("时时")
        );
    }

    #[test]
    fn small_alarms_are_left_alone() {
        let mut v = serde_json::json!({"alarm_id": "x", "evidence": {"facts": {}}});
        let before = v.clone();
        let mut cut = Cut::default();
        cut_value(&mut v, 8192, 256, &mut cut);
        assert_eq!(v, before);
        assert_eq!((cut.strings, cut.lists), (0, 0));
    }

    #[test]
    fn too_large_and_authorisation_errors_are_permanent_outages_are_not() {
        use rdkafka::error::KafkaError::MessageProduction as P;
        assert!(is_permanent(&P(RDKafkaErrorCode::MessageSizeTooLarge)));
        assert!(is_permanent(&P(RDKafkaErrorCode::TopicAuthorizationFailed)));
        assert!(is_permanent(&P(RDKafkaErrorCode::InvalidTopic)));
        assert!(!is_permanent(&P(RDKafkaErrorCode::MessageTimedOut)));
        assert!(!is_permanent(&P(RDKafkaErrorCode::QueueFull)));
        assert!(!is_permanent(&P(RDKafkaErrorCode::AllBrokersDown)));
        assert!(!is_permanent(&P(RDKafkaErrorCode::NotEnoughReplicas)));
    }
}
