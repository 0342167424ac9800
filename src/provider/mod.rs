//! Provider decoders: raw cloud log records in, normalized [`Event`]s out.
//!
//! This is the only module that knows a cloud's raw field names. A *record* (one JSON value
//! from a file line, an array element or a Kafka message) may hold one event or a batch of
//! them, possibly inside a delivery wrapper; [`Decoder::decode`] unwraps, detects the cloud
//! of each event (unless pinned) and maps it, pushing one `Result` per event found.

// `Result<Event, Reject>` is the per-event result everywhere; `Event` is the larger of the
// two, so boxing `Reject` would not make the `Result` smaller.
#![allow(clippy::result_large_err)]

mod alibaba;
mod aws;
pub mod effects;
pub mod raw;
mod tencent;
pub mod time;

use std::fmt;
use std::net::IpAddr;

use chrono::{DateTime, Utc};
use serde_json::value::RawValue;

use crate::event::{Cloud, Event, Origin};
use raw::{MaybeJson, RawEvent, RawIdentity, RawTencentResponse, Scalar};

/// Wrappers nested deeper than this (an envelope in an envelope in ...) are rejected.
const MAX_WRAPPER_DEPTH: u8 = 6;

/// The most rejects kept per batch record; the others are summed up in one.
pub const MAX_REJECTS_PER_BATCH: usize = 100;

/// The longest reject reason kept (it goes into a log line, a header and stderr).
pub const MAX_REASON_BYTES: usize = 300;

/// Why a record was rejected; `as_str` is the bounded label used in metrics and headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RejectKind {
    /// Not valid JSON.
    BadJson,
    /// The JSON ends before the value does.
    Truncated,
    /// Valid JSON, but not a log record of a known cloud or wrapper.
    UnknownFormat,
    /// A member every event needs (event time, event name) is missing.
    MissingField,
    /// A member has a value of the wrong type or an unparseable value.
    BadField,
    /// A record larger than the framing limit.
    TooLarge,
    /// A cloud API response that reports an error instead of events.
    ApiError,
    /// A well-formed record that is not an API call (CloudTrail Insights summaries).
    Unsupported,
    /// The input could not be read (I/O or decompression error).
    ReadError,
    /// Processing the record failed inside akwatch (a bug, caught: see `isolate`).
    InternalError,
}

impl RejectKind {
    pub const ALL: [RejectKind; 10] = [
        RejectKind::BadJson,
        RejectKind::Truncated,
        RejectKind::UnknownFormat,
        RejectKind::MissingField,
        RejectKind::BadField,
        RejectKind::TooLarge,
        RejectKind::ApiError,
        RejectKind::Unsupported,
        RejectKind::ReadError,
        RejectKind::InternalError,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RejectKind::BadJson => "bad_json",
            RejectKind::Truncated => "truncated",
            RejectKind::UnknownFormat => "unknown_format",
            RejectKind::MissingField => "missing_field",
            RejectKind::BadField => "bad_field",
            RejectKind::TooLarge => "too_large",
            RejectKind::ApiError => "api_error",
            RejectKind::Unsupported => "unsupported",
            RejectKind::ReadError => "read_error",
            RejectKind::InternalError => "internal_error",
        }
    }
}

impl fmt::Display for RejectKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A record (or an event inside one) that could not be decoded, with where it came from.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{origin}: {reason}")]
pub struct Reject {
    pub kind: RejectKind,
    pub reason: String,
    pub origin: Origin,
}

impl Reject {
    /// A reject; the reason is cut to `MAX_REASON_BYTES` (on a character boundary) so that
    /// no reason echoes a large part of its record.
    pub fn new(kind: RejectKind, reason: impl Into<String>, origin: Origin) -> Self {
        let mut reason = reason.into();
        if reason.len() > MAX_REASON_BYTES {
            let mut end = MAX_REASON_BYTES;
            while !reason.is_char_boundary(end) {
                end -= 1;
            }
            reason.truncate(end);
            reason.push('…');
        }
        Reject {
            kind,
            reason,
            origin,
        }
    }
}

/// The rejects of one record, kept as one dead letter: a record's raw bytes are written (or
/// produced) once, however many of its events were rejected.
#[derive(Debug, Default)]
pub struct RecordRejects {
    first: Option<Reject>,
    more: u64,
}

impl RecordRejects {
    pub fn add(&mut self, reject: Reject) {
        match self.first {
            None => self.first = Some(reject),
            Some(_) => self.more += 1,
        }
    }

    /// Rejected events of the record.
    pub fn len(&self) -> u64 {
        u64::from(self.first.is_some()) + self.more
    }

    pub fn is_empty(&self) -> bool {
        self.first.is_none()
    }

    /// The record's dead letter: the first reject, its reason saying how many others there
    /// were.
    pub fn take(&mut self) -> Option<Reject> {
        let mut first = self.first.take()?;
        if self.more > 0 {
            first.reason = format!(
                "{} (and {} more of the record's events rejected)",
                first.reason, self.more
            );
        }
        self.more = 0;
        Some(first)
    }
}

/// What a wrapper tells the event inside it.
#[derive(Debug, Clone, Copy, Default)]
struct Context {
    /// The wall clock when the record's decoding began (read once per record).
    now: Option<DateTime<Utc>>,
    /// The envelope's time, used when the event itself has none.
    fallback_time: Option<DateTime<Utc>>,
    /// The cloud the wrapper belongs to, used when the event's own members do not tell.
    hint: Option<Cloud>,
}

/// Decodes records into events. Cheap to create and to share between threads.
#[derive(Debug, Clone, Copy)]
pub struct Decoder {
    pinned: Option<Cloud>,
    /// Event times later than the wall clock plus this are rejected (`bad_field`).
    max_skew_secs: i64,
}

impl Default for Decoder {
    fn default() -> Self {
        Decoder::auto()
    }
}

impl Decoder {
    /// A decoder that detects the cloud of every event.
    pub fn auto() -> Self {
        Decoder::pinned(None)
    }

    /// A decoder that treats every event as coming from `cloud` (`--provider`).
    pub fn pinned(cloud: Option<Cloud>) -> Self {
        Decoder {
            pinned: cloud,
            max_skew_secs: time::DEFAULT_MAX_SKEW_SECS,
        }
    }

    /// How far ahead of the wall clock an event time may be (default one hour); later ones
    /// are rejected, so that no record can move a detection window into the future.
    pub fn with_max_skew(self, secs: i64) -> Self {
        Decoder {
            max_skew_secs: secs.max(0),
            ..self
        }
    }

    /// Decodes one record, pushing one result per event it holds (none for an empty batch).
    pub fn decode(&self, bytes: &[u8], origin: &Origin, out: &mut Vec<Result<Event, Reject>>) {
        let ctx = Context {
            now: Some(Utc::now()),
            ..Context::default()
        };
        self.decode_value(bytes, origin, ctx, 0, out);
    }

    /// Convenience for tests and tools: decodes one record into a fresh vector.
    pub fn decode_to_vec(&self, bytes: &[u8], origin: &Origin) -> Vec<Result<Event, Reject>> {
        let mut out = Vec::new();
        self.decode(bytes, origin, &mut out);
        out
    }

    fn decode_value(
        &self,
        bytes: &[u8],
        origin: &Origin,
        ctx: Context,
        depth: u8,
        out: &mut Vec<Result<Event, Reject>>,
    ) {
        if depth > MAX_WRAPPER_DEPTH {
            out.push(Err(Reject::new(
                RejectKind::UnknownFormat,
                format!("wrappers nested more than {MAX_WRAPPER_DEPTH} deep"),
                origin.clone(),
            )));
            return;
        }
        let trimmed = bytes.trim_ascii_start();
        match trimmed.first() {
            None => {
                out.push(Err(Reject::new(
                    RejectKind::BadJson,
                    "empty record",
                    origin.clone(),
                )));
                return;
            }
            Some(b'[') => {
                // A JSON array of events (OSS delivery, stratus logs, `[...]` files).
                self.decode_batch(bytes, origin, ctx, depth, out);
                return;
            }
            Some(_) => {}
        }
        let raw: Box<RawEvent<'_>> = match serde_json::from_slice(bytes) {
            Ok(raw) => raw,
            Err(e) => {
                out.push(Err(json_reject(bytes, &e, origin)));
                return;
            }
        };

        // Wrappers first: the event is inside them.
        if let Some(records) = raw.records {
            self.decode_batch(
                records.get().as_bytes(),
                origin,
                hinted(ctx, Cloud::Aws),
                depth,
                out,
            );
            return;
        }
        if raw.event_name.is_none() {
            if let Some(detail) = raw.detail {
                if let Some(dt) = raw.detail_type.as_deref()
                    && !dt.contains("CloudTrail")
                {
                    out.push(Err(Reject::new(
                        RejectKind::UnknownFormat,
                        format!(
                            "EventBridge event of detail-type {dt:?} is not a CloudTrail record"
                        ),
                        origin.clone(),
                    )));
                    return;
                }
                let ctx = Context {
                    fallback_time: envelope_time(raw.time.as_ref()).or(ctx.fallback_time),
                    hint: Some(Cloud::Aws),
                    now: ctx.now,
                };
                self.decode_inner(detail, origin, ctx, depth, out);
                return;
            }
            if let (Some(data), Some(_)) = (raw.data, raw.specversion.as_ref()) {
                let ctx = Context {
                    fallback_time: envelope_time(raw.time.as_ref()).or(ctx.fallback_time),
                    hint: ctx.hint,
                    now: ctx.now,
                };
                self.decode_inner(data, origin, ctx, depth, out);
                return;
            }
            if let Some(response) = raw.response {
                self.decode_tencent_response(response, origin, ctx, depth, out);
                return;
            }
            if let Some(inner) = raw.cloud_audit_event {
                let ctx = Context {
                    fallback_time: envelope_time(raw.outer_event_time.as_ref())
                        .or(ctx.fallback_time),
                    hint: Some(Cloud::Tencent),
                    now: ctx.now,
                };
                self.decode_inner(inner, origin, ctx, depth, out);
                return;
            }
            if let Some(event) = raw.event {
                let ctx = Context {
                    fallback_time: envelope_time(raw.sls_time.as_ref()).or(ctx.fallback_time),
                    hint: Some(Cloud::Alibaba),
                    now: ctx.now,
                };
                self.decode_inner(event, origin, ctx, depth, out);
                return;
            }
            if let Some(message) = raw.message.as_deref()
                && message.trim_start().starts_with('{')
            {
                let ctx = Context {
                    fallback_time: envelope_time(raw.at_timestamp.as_ref()).or(ctx.fallback_time),
                    hint: ctx.hint,
                    now: ctx.now,
                };
                self.decode_value(message.as_bytes(), origin, ctx, depth + 1, out);
                return;
            }
        }
        out.push(self.map_event(&raw, bytes, origin, ctx));
    }

    /// Decodes a wrapper member that holds the event as an object or as a JSON string.
    fn decode_inner(
        &self,
        inner: &RawValue,
        origin: &Origin,
        ctx: Context,
        depth: u8,
        out: &mut Vec<Result<Event, Reject>>,
    ) {
        let text = inner.get();
        if text.starts_with('"') {
            match serde_json::from_str::<raw::Text<'_>>(text) {
                Ok(s) => self.decode_value(s.as_bytes(), origin, ctx, depth + 1, out),
                Err(e) => out.push(Err(json_reject(text.as_bytes(), &e, origin))),
            }
        } else {
            self.decode_value(text.as_bytes(), origin, ctx, depth + 1, out);
        }
    }

    fn decode_batch(
        &self,
        bytes: &[u8],
        origin: &Origin,
        ctx: Context,
        depth: u8,
        out: &mut Vec<Result<Event, Reject>>,
    ) {
        match serde_json::from_slice::<Vec<&RawValue>>(bytes) {
            Ok(items) => self.decode_items(&items, origin, ctx, depth, out),
            Err(e) => out.push(Err(json_reject(bytes, &e, origin))),
        }
    }

    /// Decodes the events of a batch, each with its index in the origin.
    fn decode_items(
        &self,
        items: &[&RawValue],
        origin: &Origin,
        ctx: Context,
        depth: u8,
        out: &mut Vec<Result<Event, Reject>>,
    ) {
        // Past `MAX_REJECTS_PER_BATCH` rejects, the rest of a batch's are counted, not kept: a
        // 16 MiB batch of `{}` would otherwise be millions of rejects in memory.
        let mut rejects = 0usize;
        let mut more = 0usize;
        for (i, item) in items.iter().enumerate() {
            let before = out.len();
            self.decode_value(
                item.get().as_bytes(),
                &origin.at_index(i),
                ctx,
                depth + 1,
                out,
            );
            let mut k = before;
            while k < out.len() {
                if out[k].is_err() {
                    if rejects >= MAX_REJECTS_PER_BATCH {
                        let _ = out.remove(k);
                        more += 1;
                        continue;
                    }
                    rejects += 1;
                }
                k += 1;
            }
        }
        if more > 0 {
            out.push(Err(Reject::new(
                RejectKind::BadField,
                format!(
                    "{more} more events of this batch rejected (the first {MAX_REJECTS_PER_BATCH} are reported)"
                ),
                origin.clone(),
            )));
        }
    }

    fn decode_tencent_response(
        &self,
        response: &RawValue,
        origin: &Origin,
        ctx: Context,
        depth: u8,
        out: &mut Vec<Result<Event, Reject>>,
    ) {
        let parsed: RawTencentResponse<'_> = match serde_json::from_str(response.get()) {
            Ok(p) => p,
            Err(e) => {
                out.push(Err(json_reject(response.get().as_bytes(), &e, origin)));
                return;
            }
        };
        if let Some(error) = parsed.error {
            out.push(Err(Reject::new(
                RejectKind::ApiError,
                format!("Tencent API error response: {}", truncate(error.get(), 200)),
                origin.clone(),
            )));
            return;
        }
        let Some(events) = parsed.events else {
            out.push(Err(Reject::new(
                RejectKind::UnknownFormat,
                "a `Response` object without `Events`",
                origin.clone(),
            )));
            return;
        };
        self.decode_items(&events, origin, hinted(ctx, Cloud::Tencent), depth, out);
    }

    /// Maps one unwrapped event record.
    fn map_event(
        &self,
        raw: &RawEvent<'_>,
        bytes: &[u8],
        origin: &Origin,
        ctx: Context,
    ) -> Result<Event, Reject> {
        let reject = |kind, reason: String| Reject::new(kind, reason, origin.clone());
        let cloud = match self.pinned.or_else(|| detect(raw)).or(ctx.hint) {
            Some(c) => c,
            None => {
                return Err(reject(
                    RejectKind::UnknownFormat,
                    "unknown format: not a CloudTrail, ActionTrail or CloudAudit event \
                     (no awsRegion/acsRegion/eventRegion, no known eventSource, no known wrapper)"
                        .into(),
                ));
            }
        };
        if raw.event_type.as_deref() == Some("AwsCloudTrailInsight") {
            return Err(reject(
                RejectKind::Unsupported,
                "CloudTrail Insights event: an API-rate summary with no caller, not an API call"
                    .into(),
            ));
        }
        let action = match raw.event_name.as_deref().map(str::trim) {
            Some(name) if !name.is_empty() => name.to_owned(),
            _ => {
                return Err(reject(
                    RejectKind::MissingField,
                    format!("{cloud} event without eventName"),
                ));
            }
        };
        let event_time = match (&raw.event_time, &raw.at_timestamp, ctx.fallback_time) {
            (Some(t), _, _) if !matches!(t, Scalar::Null) => time::parse_event_time(t)
                .map_err(|e| reject(RejectKind::BadField, format!("eventTime: {e}")))?,
            (_, Some(ts), _) => time::parse_event_time(ts)
                .map_err(|e| reject(RejectKind::BadField, format!("@timestamp: {e}")))?,
            (_, _, Some(fallback)) => fallback,
            _ => {
                return Err(reject(
                    RejectKind::MissingField,
                    format!(
                        "missing event time: {cloud} event {action:?} has no eventTime (nor @timestamp or envelope time)"
                    ),
                ));
            }
        };
        // Checked after every fallback: an envelope's time is no more trusted than the event's.
        let event_time = time::check_event_time(
            event_time,
            ctx.now.unwrap_or_else(Utc::now),
            self.max_skew_secs,
        )
        .map_err(|e| reject(RejectKind::BadField, format!("event time: {e}")))?;
        let identity = match &raw.user_identity {
            Some(MaybeJson::Text(text)) => {
                let parsed: Box<RawIdentity<'_>> = serde_json::from_str(text).map_err(|e| {
                    reject(
                        RejectKind::BadField,
                        format!("userIdentity: not a JSON object: {e}"),
                    )
                })?;
                return self.finish(cloud, raw, &parsed, action, event_time, bytes, origin);
            }
            Some(MaybeJson::Object(identity)) => identity,
            Some(MaybeJson::Null) | None => &EMPTY_IDENTITY,
        };
        self.finish(cloud, raw, identity, action, event_time, bytes, origin)
    }

    #[allow(clippy::too_many_arguments)]
    fn finish(
        &self,
        cloud: Cloud,
        raw: &RawEvent<'_>,
        identity: &RawIdentity<'_>,
        action: String,
        event_time: DateTime<Utc>,
        bytes: &[u8],
        origin: &Origin,
    ) -> Result<Event, Reject> {
        let common = Common {
            action,
            event_time,
            event_id: raw
                .event_id
                .as_ref()
                .or(raw.event_id_alt.as_ref())
                .and_then(Scalar::non_empty)
                .unwrap_or_else(|| synthetic_event_id(bytes)),
            origin: origin.clone(),
        };
        let mut event = match cloud {
            Cloud::Aws => aws::map(raw, identity, common),
            Cloud::Alibaba => alibaba::map(raw, identity, common),
            Cloud::Tencent => tencent::map(raw, identity, common),
        };
        event.request = request_facts(raw, &event.action);
        event.principal.instance_id = instance_session(&event.principal);
        Ok(event)
    }
}

static EMPTY_IDENTITY: RawIdentity<'static> = RawIdentity {
    kind: None,
    principal_id: None,
    arn: None,
    account_id: None,
    access_key_id: None,
    secret_id: None,
    user_name: None,
    invoked_by: None,
    session_context: None,
};

/// What every cloud's mapper gets already resolved.
struct Common {
    action: String,
    event_time: DateTime<Utc>,
    event_id: String,
    origin: Origin,
}

/// Which cloud wrote this event, from the members only that cloud uses.
fn detect(raw: &RawEvent<'_>) -> Option<Cloud> {
    if raw.aws_region.is_some() {
        return Some(Cloud::Aws);
    }
    if raw.acs_region.is_some() {
        return Some(Cloud::Alibaba);
    }
    if raw.event_region.is_some() {
        return Some(Cloud::Tencent);
    }
    if let Some(source) = raw.event_source.as_deref() {
        if source.ends_with(".amazonaws.com") {
            return Some(Cloud::Aws);
        }
        if source.contains(".aliyuncs.com") {
            return Some(Cloud::Alibaba);
        }
        if source.contains("tencentyun.com") || source.contains("tencentcloudapi.com") {
            return Some(Cloud::Tencent);
        }
    }
    if let Some(MaybeJson::Object(identity)) = &raw.user_identity {
        if identity.secret_id.is_some() {
            return Some(Cloud::Tencent);
        }
        match identity.kind.as_deref() {
            Some(
                "IAMUser" | "AssumedRole" | "AWSService" | "AWSAccount" | "FederatedUser" | "Root",
            ) => {
                return Some(Cloud::Aws);
            }
            Some(
                "ram-user" | "root-account" | "assumed-role" | "system" | "alibaba-cloud-account",
            ) => {
                return Some(Cloud::Alibaba);
            }
            _ => {}
        }
    }
    None
}

fn hinted(ctx: Context, cloud: Cloud) -> Context {
    Context {
        hint: Some(cloud),
        ..ctx
    }
}

fn envelope_time(value: Option<&Scalar<'_>>) -> Option<DateTime<Utc>> {
    value.and_then(|v| time::parse_event_time(v).ok())
}

/// Turns a serde_json error into a reject whose reason names the line and column in the
/// input (counting from the record's first line) and, for type errors, the member.
fn json_reject(bytes: &[u8], e: &serde_json::Error, origin: &Origin) -> Reject {
    use serde_json::error::Category;
    let message = e.to_string();
    let message = message
        .rsplit_once(" at line ")
        .map_or(message.as_str(), |(m, _)| m);
    let line = origin
        .line
        .map_or(e.line() as u64, |start| start + e.line() as u64 - 1);
    match e.classify() {
        Category::Eof => Reject::new(
            RejectKind::Truncated,
            format!(
                "truncated JSON: input ends at line {line}, column {}: {message}",
                e.column()
            ),
            origin.clone(),
        ),
        Category::Syntax | Category::Io => Reject::new(
            RejectKind::BadJson,
            format!("bad JSON at line {line}, column {}: {message}", e.column()),
            origin.clone(),
        ),
        Category::Data => {
            let path = data_error_path(bytes);
            let what = if path.is_empty() || path == "." {
                "a JSON value that is not an object".to_owned()
            } else {
                format!("member {path}")
            };
            let kind = if path.is_empty() || path == "." {
                RejectKind::UnknownFormat
            } else {
                RejectKind::BadField
            };
            Reject::new(
                kind,
                format!("{what}: {message} (line {line}, column {})", e.column()),
                origin.clone(),
            )
        }
    }
}

/// Re-parses a record that failed with a type error, this time tracking the path, so the
/// reason can name the member. Only runs on the error path.
fn data_error_path(bytes: &[u8]) -> String {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    match serde_path_to_error::deserialize::<_, Box<RawEvent<'_>>>(&mut de) {
        Err(e) => e.path().to_string(),
        Ok(_) => String::new(),
    }
}

/// `akw-` and a 64-bit FNV-1a hash of the record: stable across runs and machines.
fn synthetic_event_id(bytes: &[u8]) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    format!("akw-{hash:016x}")
}

/// Parses what the log put in its source-address member; `None` unless it is a valid IP.
/// Rust's parser rejects leading zeros (`035.249.253.232`), as RFC 6943 advises.
fn parse_ip(address: Option<&str>) -> Option<IpAddr> {
    let a = address?.trim();
    let a = a
        .strip_prefix('[')
        .and_then(|x| x.strip_suffix(']'))
        .unwrap_or(a);
    a.parse().ok()
}

fn non_empty(s: Option<&raw::Text<'_>>) -> Option<String> {
    s.map(|c| c.trim())
        .filter(|c| !c.is_empty())
        .map(str::to_owned)
}

fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// The facts rules need from `requestParameters` and `responseElements`, whatever the cloud's
/// spelling.
fn request_facts(raw: &RawEvent<'_>, action: &str) -> crate::event::Request {
    let mut request = raw::with_request(raw.request_parameters, |r| {
        let Some(r) = r else {
            return crate::event::Request::default();
        };
        let text = |t: &Option<raw::Text<'_>>| {
            t.as_deref()
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
        };
        let scalar = |s: &Option<Scalar<'_>>| s.as_ref().and_then(Scalar::non_empty);
        let inline = text(&r.policy_document)
            .or_else(|| text(&r.policy_document_alt))
            .map(|doc| {
                if allows_everything(&doc) {
                    "inline:full-access".to_owned()
                } else {
                    "inline".to_owned()
                }
            });
        let policy = text(&r.policy_arn)
            .or_else(|| inline.filter(|p| p == "inline:full-access"))
            .or_else(|| text(&r.policy_name))
            .or_else(|| scalar(&r.policy_name_alt))
            .or_else(|| scalar(&r.policy_id).map(|id| format!("policy-id:{id}")));
        crate::event::Request {
            target_user: scalar(&r.user_name)
                .or_else(|| scalar(&r.user_name_alt))
                .or_else(|| scalar(&r.target_uin))
                .or_else(|| scalar(&r.attach_uin))
                .or_else(|| scalar(&r.uin)),
            policy,
            created_key_id: None,
            effects: Vec::new(),
            resource: text(&r.secret_id)
                .or_else(|| text(&r.secret_name))
                .or_else(|| text(&r.parameter_name))
                .or_else(|| scalar(&r.name))
                .or_else(|| scalar(&r.name_alt))
                .or_else(|| text(&r.instance_id))
                .or_else(|| text(&r.instance_id_alt))
                .or_else(|| text(&r.role_name)),
        }
    });
    if effects::is_candidate(action) {
        // (Alibaba and Tencent may write the parameters as a JSON string; absent or
        // unreadable parameters are `Null`, which the effects judge as they must.)
        let value = raw
            .request_parameters
            .and_then(|p| serde_json::from_str::<serde_json::Value>(p.get()).ok())
            .map(|v| match v {
                serde_json::Value::String(s) => serde_json::from_str(&s).unwrap_or_default(),
                v => v,
            })
            .unwrap_or_default();
        request.effects = effects::of(action, &value);
    }
    if action == "CreateAccessKey" {
        request.created_key_id = raw::with_response(raw.response_elements, |r| {
            let r = r?;
            let key = r.access_key.as_ref().or(r.access_key_alt.as_ref())?;
            key.access_key_id
                .as_deref()
                .or(key.access_key_id_alt.as_deref())
                .filter(|k| !k.is_empty())
                .map(|k| crate::event::AccessKeyId(k.to_owned()))
        });
    }
    request
}

/// An inline policy document that allows every action on every resource.
fn allows_everything(doc: &str) -> bool {
    let d: String = doc
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect::<String>()
        .to_ascii_lowercase();
    d.contains("\"effect\":\"allow\"")
        && (d.contains("\"action\":\"*\"") || d.contains("\"action\":[\"*\"]"))
        && (d.contains("\"resource\":\"*\"") || d.contains("\"resource\":[\"*\"]"))
}

/// The instance id when a role session is held by a VM: AWS `role/i-0abc…`, Tencent
/// `…:ins-…`, Alibaba `role/i-…`.
fn instance_session(principal: &crate::event::Principal) -> Option<String> {
    if principal.kind != crate::event::PrincipalType::AssumedRole {
        return None;
    }
    let session = |s: &str| s.rsplit(['/', ':']).next().map(str::to_owned);
    let candidate = principal
        .name
        .as_deref()
        .and_then(session)
        .into_iter()
        .chain(principal.id.as_deref().and_then(session));
    candidate.into_iter().find(|s| {
        let rest = s.strip_prefix("i-").or_else(|| s.strip_prefix("ins-"));
        rest.is_some_and(|r| r.len() >= 6 && r.bytes().all(|b| b.is_ascii_alphanumeric()))
    })
}

/// The account of the caller: `userIdentity.accountId`, else the recipient account.
fn account_of(raw: &RawEvent<'_>, identity: &RawIdentity<'_>) -> Option<crate::event::AccountId> {
    identity
        .account_id
        .as_ref()
        .and_then(Scalar::non_empty)
        .or_else(|| {
            raw.recipient_account_id
                .as_ref()
                .and_then(Scalar::non_empty)
        })
        .map(crate::event::AccountId)
}

/// Failure when the call carries an error code.
fn outcome_of(error_code: Option<&String>) -> crate::event::Outcome {
    match error_code {
        Some(_) => crate::event::Outcome::Failure,
        None => crate::event::Outcome::Success,
    }
}

/// `true` when an error code means failure: anything but empty, `0` or `Success`.
fn is_error_code(code: &Scalar<'_>) -> bool {
    match code {
        Scalar::Null | Scalar::Other => false,
        Scalar::Int(i) => *i != 0,
        Scalar::UInt(u) => *u != 0,
        Scalar::Float(f) => *f != 0.0,
        Scalar::Bool(b) => *b,
        Scalar::Str(s) => {
            let t = s.trim();
            !(t.is_empty() || t == "0" || t.eq_ignore_ascii_case("success"))
        }
    }
}

#[cfg(test)]
mod tests;
