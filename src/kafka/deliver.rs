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

/// Room left under `message.max.bytes` for the record's framing, key and headers (at most a
/// tenth of it for small limits).
fn payload_limit(max_bytes: usize) -> usize {
    max_bytes.saturating_sub(4096.min(max_bytes / 10)).max(512)
}

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

/// Errors that no retry of the same record to the same topic can cure: its size, or what the
/// topic is (an illegal name, a policy that refuses the record). Authorisation errors are *not*
/// among them: an ACL is fixed by an operator, and until then the alarms wait (retried, logged,
/// counted) rather than being skipped.
pub fn is_permanent(e: &KafkaError) -> bool {
    use RDKafkaErrorCode as C;
    matches!(
        e.rdkafka_error_code(),
        Some(
            C::MessageSizeTooLarge
                | C::InvalidMessageSize
                | C::MessageBatchTooLarge
                | C::InvalidTopic
                | C::InvalidRecord
                | C::InvalidArgument
                | C::UnknownPartition
                | C::PolicyViolation
        )
    )
}

/// The idempotent producer is unusable after a fatal error: only a new one (a restart) can
/// deliver again. Nothing unacknowledged was committed, so exiting loses nothing.
fn exit_on_fatal(e: &KafkaError) {
    if e.rdkafka_error_code() == Some(RDKafkaErrorCode::Fatal) {
        std::thread::spawn(|| {
            tracing::error!("fatal producer error: exiting so that a restart builds a new producer")
        });
        std::thread::sleep(Duration::from_millis(200));
        std::process::exit(1);
    }
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
    producer: &FutureProducer<super::Logged>,
    topic: &str,
    key: &str,
    payload: &[u8],
    headers: Option<OwnedHeaders>,
    stop: &Stop,
    on_retry: &(dyn Fn() + Sync),
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
                exit_on_fatal(&e);
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
    pub producer: &'a FutureProducer<super::Logged>,
    pub alarm_topic: &'a str,
    /// The form alarms are written in (akwatch's own JSON, or OCSF).
    pub alarm_format: crate::ocsf::AlarmFormat,
    pub dlq_topic: &'a str,
    /// The producer's `message.max.bytes`.
    pub max_bytes: usize,
    pub stop: Stop,
    pub metrics: &'a Metrics,
    /// Notification sinks, handed each alarm the alarm topic acknowledged (never waited on).
    pub notify: Option<std::sync::Arc<crate::notify::Notifier>>,
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
    /// refuses it for good. It is stored somewhere before this returns `Ok`: when neither topic
    /// takes it, it is tried again (with backoff) until one does. Only a stop can make it fail.
    /// The pipeline's own outputs: an alarm to the alarm topic, a risk to the risk topic (keyed
    /// by what it is about; not published without a risk topic).
    pub async fn emit(
        &self,
        output: &crate::pipeline::Output,
        risk_topic: Option<&str>,
    ) -> Result<(), Abandoned> {
        let risk = match output {
            crate::pipeline::Output::Alarm(alarm) => return self.alarm(alarm).await,
            crate::pipeline::Output::Risk(risk) => risk,
        };
        let Some(topic) = risk_topic else {
            return Ok(());
        };
        let Ok(value) = serde_json::to_vec(risk) else {
            return Ok(());
        };
        let key = crate::pipeline::risk_key(risk);
        let retried = self.retry_counter("risk");
        match deliver(
            self.producer,
            topic,
            &key,
            &value,
            None,
            &self.stop,
            &retried,
        )
        .await
        {
            Delivery::Acked(_) => Ok(()),
            Delivery::Permanent(e) => {
                tracing::error!(%topic, error = %e, "a configuration risk was refused by the risk topic");
                Ok(())
            }
            Delivery::Abandoned => Err(Abandoned),
        }
    }

    /// An event's alarms, in order, each counted by rule and severity and timed from the
    /// event's time and its record's Kafka timestamp (`ingested`, ms), when acknowledged.
    /// They are handed to the producer now and awaited with the rest of the `round`
    /// ([`Outputs::settle`]).
    pub async fn event_alarms(
        &self,
        round: &mut Round,
        alarms: Vec<Alarm>,
        event: &crate::event::Event,
        ingested: Option<i64>,
    ) -> Result<(), Abandoned> {
        for alarm in alarms {
            self.start_alarm(round, alarm, event.event_time, ingested)
                .await?;
        }
        Ok(())
    }

    /// Hands an alarm to the producer without waiting for its acknowledgement (it joins the
    /// round). When that cannot be done plainly — too large for the topic, the producer's
    /// queue full, stopping — it is delivered the careful way ([`Outputs::alarm`]), awaited.
    async fn start_alarm(
        &self,
        round: &mut Round,
        alarm: Alarm,
        event_time: chrono::DateTime<chrono::Utc>,
        ingested: Option<i64>,
    ) -> Result<(), Abandoned> {
        if self.stop.deadline().is_none() {
            let value = serde_json::to_value(&alarm).unwrap_or_else(|_| minimal_alarm(&alarm));
            let bytes = self.render(&alarm, &value);
            if bytes.len() <= payload_limit(self.max_bytes) {
                let record = FutureRecord::to(self.alarm_topic)
                    .key(alarm.alarm_id.as_str())
                    .payload(&bytes);
                if let Ok(delivery) = self.producer.send_result(record) {
                    round.bytes = round.bytes.saturating_add(bytes.len());
                    round.flights.push(InFlight {
                        what: Queued::Alarm {
                            alarm: Box::new(alarm),
                            event_time,
                            ingested,
                        },
                        delivery,
                    });
                    if round.is_full() {
                        self.settle(round).await?;
                    }
                    return Ok(());
                }
            }
        }
        self.alarm(&alarm).await?;
        self.alarm_delivered(&alarm, event_time, ingested);
        Ok(())
    }

    /// An alarm the alarm topic acknowledged: counted by rule and severity, timed.
    fn alarm_delivered(
        &self,
        alarm: &Alarm,
        event_time: chrono::DateTime<chrono::Utc>,
        ingested: Option<i64>,
    ) {
        self.metrics
            .alarms
            .with_label_values(&[alarm.rule_id.as_str(), alarm.severity.as_str()])
            .inc();
        super::observe_alarm_latency(self.metrics, event_time, ingested);
    }

    /// A rejected record's dead letter, handed to the producer without waiting (it joins the
    /// round); one that must be cut, or a full queue, is delivered the careful way, awaited.
    pub async fn dead_letter_in(
        &self,
        round: &mut Round,
        reject: Reject,
        raw: &[u8],
        origin: &Origin,
    ) -> Result<(), Abandoned> {
        if self.stop.deadline().is_none() && raw.len() <= payload_limit(self.max_bytes) {
            let key = dead_letter_key(origin);
            let headers = dead_letter_headers(&reject, reject.kind.as_str(), origin, None);
            let record = FutureRecord::to(self.dlq_topic)
                .key(key.as_str())
                .payload(raw)
                .headers(headers);
            if let Ok(delivery) = self.producer.send_result(record) {
                round.bytes = round.bytes.saturating_add(raw.len());
                round.flights.push(InFlight {
                    what: Queued::DeadLetter {
                        reject: Box::new(reject),
                        raw: raw.to_vec(),
                        origin: origin.clone(),
                    },
                    delivery,
                });
                if round.is_full() {
                    self.settle(round).await?;
                }
                return Ok(());
            }
        }
        self.dead_letter(&reject, raw, origin).await
    }

    /// Waits for every delivery of the round, in the order they were started. One that
    /// librdkafka could not deliver (its own retries exhausted, a permanent error) is
    /// delivered again the careful way — retried with backoff, shrunk or cut, or sent to the
    /// dead-letter topic — so a round ends with everything stored, as one awaited delivery
    /// at a time would. The later notifications of an alarm sent again are sent again too,
    /// after it, even when they were acknowledged: the last record of an alarm id on the topic
    /// is always its latest version (a repeat is harmless, ids are stable). Only a stop can
    /// make it fail.
    pub async fn settle(&self, round: &mut Round) -> Result<(), Abandoned> {
        round.bytes = 0;
        let mut resent: std::collections::HashSet<String> = std::collections::HashSet::new();
        for f in std::mem::take(&mut round.flights) {
            let output = match f.what {
                Queued::Alarm { .. } => "alarm",
                Queued::DeadLetter { .. } => "dead_letter",
            };
            let result = tokio::select! {
                biased;
                r = f.delivery => r,
                _ = self.stop.until_expired() => {
                    self.failed(output, "stopped");
                    return Err(Abandoned);
                }
            };
            let error = match result {
                Ok(Ok(_)) => None,
                Ok(Err((e, _))) => Some(e),
                Err(_) => Some(KafkaError::Canceled),
            };
            if let Some(e) = &error {
                exit_on_fatal(e);
                tracing::warn!(output, error = %e, "delivery failed; delivering it again");
                if !is_permanent(e) {
                    self.metrics
                        .delivery_retries
                        .with_label_values(&[output])
                        .inc();
                }
            }
            match f.what {
                Queued::Alarm {
                    alarm,
                    event_time,
                    ingested,
                } => {
                    if error.is_some() || resent.contains(&alarm.alarm_id) {
                        self.alarm(&alarm).await?;
                        resent.insert(alarm.alarm_id.clone());
                    } else if let Some(n) = &self.notify {
                        // Stored on the alarm topic: now (and only now) the notification
                        // sinks get it, without waiting.
                        n.notify(&alarm);
                    }
                    self.alarm_delivered(&alarm, event_time, ingested);
                }
                Queued::DeadLetter {
                    reject,
                    raw,
                    origin,
                } => {
                    if error.is_some() {
                        self.dead_letter(&reject, &raw, &origin).await?;
                    }
                }
            }
        }
        Ok(())
    }

    /// What identifies the alarm, alone, in the output's format (when nothing else fits).
    fn render(&self, alarm: &Alarm, native: &Value) -> Vec<u8> {
        render_alarm(self.alarm_format, alarm, native)
    }

    pub async fn alarm(&self, alarm: &Alarm) -> Result<(), Abandoned> {
        // Shrunk (when too large) in the native form, then rendered in the output's format.
        let mut value = serde_json::to_value(alarm).unwrap_or_else(|_| minimal_alarm(alarm));
        let mut backoff = Duration::from_secs(1);
        loop {
            if self.try_alarm(alarm, &mut value).await? {
                return Ok(());
            }
            tracing::error!(alarm_id = %alarm.alarm_id, "neither the alarm topic nor the dead-letter topic takes the alarm; trying again in {backoff:?}");
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = self.stop.until_expired() => {
                    self.failed("alarm", "stopped");
                    return Err(Abandoned);
                }
            }
            backoff = (backoff * 2).min(Duration::from_secs(60));
        }
    }

    /// One round: the alarm topic (shrinking as needed), else the dead-letter topic. Whether
    /// the alarm was stored.
    async fn try_alarm(&self, alarm: &Alarm, value: &mut Value) -> Result<bool, Abandoned> {
        let mut limit = payload_limit(self.max_bytes);
        let mut bytes = self.render(alarm, value);
        let mut shrunk = false;
        for round in 0..8 {
            if bytes.len() > limit {
                if round < 7 {
                    // The native form is shrunk; the rendered one must fit (an OCSF finding is
                    // about twice the native alarm): aim the shrink by their ratio.
                    let native = serde_json::to_vec(&*value).map_or(bytes.len(), |b| b.len());
                    let target = limit.saturating_mul(native) / bytes.len().max(1);
                    shrink_to(value, target.min(limit));
                }
                if self.render(alarm, value).len() > limit || round == 7 {
                    // Nothing left to cut but what identifies it: the alarm's core alone.
                    *value = minimal_alarm(alarm);
                }
                bytes = self.render(alarm, value);
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
                Delivery::Acked(_) => {
                    // Stored on the alarm topic: now (and only now) the notification sinks get
                    // it, without waiting.
                    if let Some(n) = &self.notify {
                        n.notify(alarm);
                    }
                    return Ok(true);
                }
                Delivery::Abandoned => {
                    self.failed("alarm", "stopped");
                    return Err(Abandoned);
                }
                // The broker's (or the topic's) limit is lower than ours: halve and try again.
                Delivery::Permanent(e) if too_large(&e) => {
                    limit = (bytes.len().min(limit) / 2).max(512);
                }
                Delivery::Permanent(e) => {
                    tracing::error!(alarm_id = %alarm.alarm_id, topic = self.alarm_topic, error = %e,
                        "the alarm topic refuses the alarm for good; sending it to the dead-letter topic");
                    self.failed("alarm", "permanent");
                    let reject = Reject::new(
                        crate::provider::RejectKind::InternalError,
                        format!("undeliverable alarm: {e}"),
                        Origin::default(),
                    );
                    return self
                        .dead_letter_keyed(
                            &reject,
                            "undeliverable_alarm",
                            &bytes,
                            &alarm.alarm_id,
                            &Origin::default(),
                        )
                        .await;
                }
            }
        }
        Ok(false)
    }

    /// Delivers a rejected record unchanged (cut when too large) with its reason and origin.
    pub async fn dead_letter(
        &self,
        reject: &Reject,
        raw: &[u8],
        origin: &Origin,
    ) -> Result<(), Abandoned> {
        let key = dead_letter_key(origin);
        // A dead letter the topic refuses for good is logged and counted: the record itself is
        // bad input, and the partition must not stall on it.
        self.dead_letter_keyed(reject, reject.kind.as_str(), raw, &key, origin)
            .await
            .map(drop)
    }

    /// Produces a dead letter under `key`; whether it was stored.
    async fn dead_letter_keyed(
        &self,
        reject: &Reject,
        kind: &str,
        raw: &[u8],
        key: &str,
        origin: &Origin,
    ) -> Result<bool, Abandoned> {
        let mut limit = payload_limit(self.max_bytes);
        for _ in 0..8 {
            let cut = raw.len() > limit;
            let payload = if cut {
                &raw[..char_floor(raw, limit)]
            } else {
                raw
            };
            if cut {
                tracing::warn!(%key, bytes = raw.len(), limit, "dead letter too large for the topic: cut");
            }
            let headers = dead_letter_headers(reject, kind, origin, cut.then_some(raw.len()));
            let on_retry = self.retry_counter("dead_letter");
            match deliver(
                self.producer,
                self.dlq_topic,
                key,
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
                    return Ok(true);
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
                    return Ok(false);
                }
            }
        }
        tracing::error!(%key, "dead letter still too large after cutting; not kept");
        self.failed("dead_letter", "permanent");
        Ok(false)
    }
}

/// A dead letter's key: where the record was read.
fn dead_letter_key(origin: &Origin) -> String {
    format!(
        "{}:{}:{}",
        origin.topic.as_deref().unwrap_or("-"),
        origin.partition.unwrap_or(-1),
        origin.offset.unwrap_or(-1)
    )
}

/// At most this many deliveries, or this many bytes of them (the round keeps a dead letter's
/// record to send it again), wait in a round; the next one waits for them first.
const ROUND_MAX: usize = 1024;
const ROUND_MAX_BYTES: usize = 16 << 20;

/// Deliveries handed to the producer in one round of a consume loop and awaited together at
/// its end ([`Outputs::settle`]): a round's alarms and dead letters cost one wait for the
/// broker's acknowledgements instead of one each. The loops settle before they poll their
/// consumer again, so nothing is in flight when a rebalance callback, a checkpoint or a
/// snapshot runs, and a record is marked done only after its round is settled.
#[derive(Default)]
pub struct Round {
    flights: Vec<InFlight>,
    bytes: usize,
}

impl Round {
    fn is_full(&self) -> bool {
        self.flights.len() >= ROUND_MAX || self.bytes >= ROUND_MAX_BYTES
    }

    /// Nothing waits: everything started in this round is acknowledged.
    pub fn is_empty(&self) -> bool {
        self.flights.is_empty()
    }
}

/// A delivery handed to the producer, not yet acknowledged.
struct InFlight {
    what: Queued,
    delivery: rdkafka::producer::DeliveryFuture,
}

/// What an in-flight delivery carries, to count it when acknowledged or deliver it again.
enum Queued {
    Alarm {
        alarm: Box<Alarm>,
        event_time: chrono::DateTime<chrono::Utc>,
        ingested: Option<i64>,
    },
    DeadLetter {
        reject: Box<Reject>,
        raw: Vec<u8>,
        origin: Origin,
    },
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
        // What identifies the alarm is never cut.
        if let Some(o) = value.as_object_mut() {
            for (k, v) in o.iter_mut() {
                if !PROTECTED.contains(&k.as_str()) {
                    cut_value(v, max_str, max_items, &mut cut);
                }
            }
        }
        let note = format!(
            "shrunk to fit the topic's message size: strings cut to {max_str} bytes, lists to {max_items} items"
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

/// Alarm fields never cut: its identity, kind and times.
const PROTECTED: [&str; 10] = [
    "alarm_id",
    "rule_id",
    "severity",
    "alarm_type",
    "status",
    "cloud",
    "account_id",
    "key_kind",
    "first_seen",
    "last_seen",
];

/// The alarm's core, when nothing else fits: identity, key, times, count, and a note.
/// The bytes written for the alarm's (possibly shrunk) native JSON `native`, in `format`. An
/// OCSF finding is mapped from the shrunk alarm, so what identifies it is never cut, and the
/// shrink note lands in its evidence data; when the shrunk form no longer reads as an alarm
/// (only the core fits), the finding of the core alone.
pub fn render_alarm(format: crate::ocsf::AlarmFormat, alarm: &Alarm, native: &Value) -> Vec<u8> {
    let out = match format {
        crate::ocsf::AlarmFormat::Native => return serde_json::to_vec(native).unwrap_or_default(),
        crate::ocsf::AlarmFormat::Ocsf => match serde_json::from_value::<Alarm>(native.clone()) {
            Ok(shrunk) => crate::ocsf::detection_finding(&shrunk),
            Err(_) => crate::ocsf::minimal(alarm),
        },
    };
    serde_json::to_vec(&out).unwrap_or_default()
}

fn minimal_alarm(alarm: &Alarm) -> Value {
    let key = alarm.access_key_id.as_ref().map(|k| cut_str(&k.0, 128));
    serde_json::json!({
        "alarm_id": alarm.alarm_id,
        "rule_id": alarm.rule_id,
        "severity": alarm.severity,
        "alarm_type": alarm.alarm_type,
        "status": alarm.status,
        "cloud": alarm.cloud,
        "access_key_id": key,
        "count": alarm.count,
        "first_seen": alarm.first_seen,
        "last_seen": alarm.last_seen,
        "evidence": {"event_ids": [], "facts": {"truncated": "only the alarm's core fits the topic's message size: see the akwatch log for the rest"}},
    })
}

fn cut_str(s: &str, max: usize) -> String {
    s[..char_floor(s.as_bytes(), max)].to_owned()
}

/// The largest index ≤ `at` that does not split a UTF-8 character (when the bytes are text).
fn char_floor(bytes: &[u8], at: usize) -> usize {
    let at = at.min(bytes.len());
    match std::str::from_utf8(bytes) {
        Ok(s) => (0..=at).rev().find(|i| s.is_char_boundary(*i)).unwrap_or(0),
        Err(_) => at,
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
pub(super) mod tests {
    use super::*;

    /// Every record of `topic` (one partition) on the mock cluster: (key, payload); waits up to
    /// 10 s for `n`, then half a second for any more (listed as `unexpected`).
    pub(in crate::kafka) async fn read_all(
        servers: String,
        topic: &'static str,
        n: usize,
    ) -> Vec<(String, Vec<u8>)> {
        use rdkafka::Message;
        use rdkafka::consumer::{BaseConsumer, Consumer};
        tokio::task::spawn_blocking(move || {
            let consumer: BaseConsumer = rdkafka::ClientConfig::new()
                .set("bootstrap.servers", servers)
                .set("group.id", "check")
                .create()
                .unwrap();
            let mut tpl = rdkafka::TopicPartitionList::new();
            tpl.add_partition_offset(topic, 0, rdkafka::Offset::Beginning)
                .unwrap();
            consumer.assign(&tpl).unwrap();
            let mut got = Vec::new();
            let until = Instant::now() + Duration::from_secs(10);
            while got.len() < n && Instant::now() < until {
                if let Some(Ok(m)) = consumer.poll(Duration::from_millis(200)) {
                    let key = String::from_utf8_lossy(m.key().unwrap_or_default()).into_owned();
                    got.push((key, m.payload().unwrap_or_default().to_vec()));
                }
            }
            // Nothing more than expected either.
            if let Some(Ok(m)) = consumer.poll(Duration::from_millis(500)) {
                got.push((
                    String::from("unexpected"),
                    m.payload().unwrap_or_default().to_vec(),
                ));
            }
            got
        })
        .await
        .unwrap()
    }

    /// A round whose deliveries librdkafka gave up on (the broker down past
    /// `message.timeout.ms`, 3 s here) is delivered again the careful way when it settles: the alarm and
    /// the dead letter land, and the alarm id sent again takes its later notification — one
    /// the broker had acknowledged — with it, so the id's last record on the topic is its
    /// latest version. Runs on librdkafka's in-process mock broker.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_round_librdkafka_gave_up_on_is_delivered_again_latest_version_last() {
        use rdkafka::mocking::MockCluster;
        let cluster = MockCluster::new(1).unwrap();
        cluster.create_topic("alarms", 1, 1).unwrap();
        cluster.create_topic("dlq", 1, 1).unwrap();
        let producer: FutureProducer<super::super::Logged> = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", cluster.bootstrap_servers())
            .set("acks", "all")
            .set("enable.idempotence", "true")
            .set("message.timeout.ms", "3000")
            .set("linger.ms", "0")
            .create_with_context(super::super::Logged)
            .unwrap();
        let metrics = Metrics::new().unwrap();
        let (_handle, stop) = Stop::new();
        let out = Outputs {
            producer: &producer,
            alarm_topic: "alarms",
            alarm_format: crate::ocsf::AlarmFormat::Native,
            dlq_topic: "dlq",
            max_bytes: 1_000_000,
            stop,
            metrics: &metrics,
            notify: None,
        };
        let golden = std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("tests/golden/alarms/ak.new_source_ip.jsonl"),
        )
        .unwrap();
        let base: Alarm = serde_json::from_str(golden.lines().next().unwrap()).unwrap();
        let version = |id: &str, count: u64| {
            let mut a = base.clone();
            a.alarm_id = id.to_owned();
            a.count = count;
            a
        };
        let t = base.last_seen;

        cluster.broker_down(-1).unwrap();
        let mut round = Round::default();
        out.start_alarm(&mut round, version("akw-a", 1), t, None)
            .await
            .unwrap();
        let origin = Origin::kafka("in", 0, 7);
        let reject = Reject::new(
            crate::provider::RejectKind::BadJson,
            "expected value at line 1 column 1",
            origin.clone(),
        );
        out.dead_letter_in(&mut round, reject, b"not json", &origin)
            .await
            .unwrap();
        // librdkafka gives up on both (message.timeout.ms; it looks once a second): nothing
        // left in flight. Then the broker is back, the producer connected to it again (a
        // metadata request answered), and the round goes on: another alarm, and the first
        // one's next version. (Waits on states, not times: a loaded machine only slows it.)
        {
            use rdkafka::producer::Producer as _;
            let until = Instant::now() + Duration::from_secs(30);
            while producer.in_flight_count() > 0 {
                assert!(Instant::now() < until, "librdkafka never gave up");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            cluster.broker_up(-1).unwrap();
            tokio::task::block_in_place(|| {
                producer
                    .client()
                    .fetch_metadata(Some("alarms"), Duration::from_secs(30))
            })
            .unwrap();
        }
        out.start_alarm(&mut round, version("akw-b", 1), t, None)
            .await
            .unwrap();
        out.start_alarm(&mut round, version("akw-a", 2), t, None)
            .await
            .unwrap();
        assert_eq!(round.flights.len(), 4, "all four joined the round");
        out.settle(&mut round).await.unwrap();
        assert!(round.is_empty());

        let alarms = read_all(cluster.bootstrap_servers(), "alarms", 4).await;
        let counts: Vec<(String, u64)> = alarms
            .iter()
            .map(|(k, v)| {
                let a: Alarm = serde_json::from_slice(v).unwrap();
                assert_eq!(&a.alarm_id, k);
                (a.alarm_id, a.count)
            })
            .collect();
        // b and a's second version as acknowledged first, then a again the careful way, then
        // its second version again after it.
        let want = [("akw-b", 1), ("akw-a", 2), ("akw-a", 1), ("akw-a", 2)];
        assert_eq!(
            counts,
            want.map(|(k, c)| (k.to_owned(), c)).to_vec(),
            "the alarm topic"
        );
        let dead = read_all(cluster.bootstrap_servers(), "dlq", 1).await;
        assert_eq!(dead, [("in:0:7".to_owned(), b"not json".to_vec())].to_vec());
        assert_eq!(
            metrics
                .delivery_retries
                .with_label_values(&["dead_letter"])
                .get(),
            1
        );
        assert!(metrics.delivery_retries.with_label_values(&["alarm"]).get() >= 1);
    }

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
        assert!(note.contains("strings cut to"), "{note}");
        // Cut on character boundaries: still valid JSON text, still the same characters.
        assert!(
            v["evidence"]["facts"]["user_agent"]
                .as_str()
                .unwrap()
                .starts_with("时时")
        );
    }

    #[test]
    fn what_identifies_an_alarm_is_never_cut() {
        let id = format!("akw-{}", "0".repeat(64));
        let mut v = serde_json::json!({
            "alarm_id": id, "rule_id": "ak.sensitive_api", "first_seen": "2025-06-05T10:00:00Z",
            "description": "d".repeat(100_000),
            "evidence": {"event_ids": (0..1000).map(|i| i.to_string()).collect::<Vec<_>>(), "facts": {}},
        });
        shrink_to(&mut v, 600);
        assert_eq!(v["alarm_id"], id);
        assert_eq!(v["rule_id"], "ak.sensitive_api");
        assert_eq!(v["first_seen"], "2025-06-05T10:00:00Z");
        assert!(v["description"].as_str().unwrap().len() < 600);
        assert!(serde_json::to_vec(&v).unwrap().len() <= 600);
    }

    /// An OCSF finding too large for the topic is mapped from the shrunk alarm: it fits, its
    /// identity is whole, and its evidence says it was cut.
    #[test]
    fn an_oversized_ocsf_finding_is_shrunk_with_its_identity_whole() {
        let line = include_str!("../../tests/golden/alarms/ak.backdoor_key.jsonl")
            .lines()
            .next()
            .unwrap();
        let mut alarm: Alarm = serde_json::from_str(line).unwrap();
        alarm
            .evidence
            .facts
            .insert("user_agent".into(), Value::String("x".repeat(300_000)));
        alarm.apis = (0..5_000).map(|i| format!("iam:Api{i}")).collect();
        let format = crate::ocsf::AlarmFormat::Ocsf;
        let mut native = serde_json::to_value(&alarm).unwrap();
        let limit = 20_000;
        let bytes = render_alarm(format, &alarm, &native);
        assert!(bytes.len() > limit);
        let ratio_target = limit * serde_json::to_vec(&native).unwrap().len() / bytes.len();
        shrink_to(&mut native, ratio_target);
        let bytes = render_alarm(format, &alarm, &native);
        assert!(bytes.len() <= limit, "{}", bytes.len());
        let finding: Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(finding["finding_info"]["uid"], alarm.alarm_id);
        assert_eq!(finding["class_uid"], 2004);
        let note = finding["evidences"][0]["data"]["truncated"]
            .as_str()
            .unwrap();
        assert!(note.contains("shrunk"), "{note}");
        // Only the core fits: the finding of the core alone.
        let core = render_alarm(format, &alarm, &minimal_alarm(&alarm));
        let core: Value = serde_json::from_slice(&core).unwrap();
        assert_eq!(core["finding_info"]["uid"], alarm.alarm_id);
    }

    #[test]
    fn cuts_keep_utf8_whole() {
        let text = "时".repeat(10);
        for at in 0..31 {
            assert!(
                std::str::from_utf8(&text.as_bytes()[..char_floor(text.as_bytes(), at)]).is_ok()
            );
        }
        assert_eq!(char_floor(&[0xff, 0xfe, 0xfd], 2), 2);
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
        assert!(is_permanent(&P(RDKafkaErrorCode::InvalidTopic)));
        // An ACL is fixed by an operator: the alarms wait for it rather than being skipped.
        assert!(!is_permanent(&P(
            RDKafkaErrorCode::TopicAuthorizationFailed
        )));
        assert!(!is_permanent(&P(RDKafkaErrorCode::MessageTimedOut)));
        assert!(!is_permanent(&P(RDKafkaErrorCode::QueueFull)));
        assert!(!is_permanent(&P(RDKafkaErrorCode::AllBrokersDown)));
        assert!(!is_permanent(&P(RDKafkaErrorCode::NotEnoughReplicas)));
    }
}
