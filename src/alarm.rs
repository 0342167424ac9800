//! Alarms and their aggregation: one alarm per (rule, key, dimension value, aggregation period),
//! with a deterministic id, `created` on the first hit, then `updated` at most once per
//! notification interval.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::enrich::{Enrichment, GeoInfo, IpClass};
use crate::event::{AccessKeyId, AccountId, Cloud, Event, KeyKind, Principal};
use crate::rule::{AlarmType, Rule, Severity};

/// The most source IPs, APIs and event ids an alarm lists (the rest of the event ids is
/// `count` minus the ones listed); also the most items of a list in its facts.
const MAX_LISTED: usize = 20;

/// Size limits of the input-derived strings an alarm holds, in bytes (a longer value is cut on
/// a character boundary and ends with a marker saying how much was cut, within the limit).
pub const MAX_USER_AGENT_BYTES: usize = 512;
/// ARNs, names, ids, dimension values, fact strings.
pub const MAX_TEXT_BYTES: usize = 1024;
/// Source addresses, APIs, event ids.
pub const MAX_SHORT_BYTES: usize = 256;

/// The longest prefix of `s` of at most `max` bytes ending on a character boundary.
pub fn truncate_on_char(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while end > 0 && !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// `s` cut to `max` bytes with a marker (`…[N bytes cut]`) when longer; counts the cuts.
pub fn bound(s: &str, max: usize, cuts: &mut u64) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    *cuts += 1;
    let marker = format!("…[{} bytes cut]", s.len());
    let head = truncate_on_char(s, max.saturating_sub(marker.len()));
    format!("{head}{marker}")
}

fn bound_opt(s: &Option<String>, max: usize, cuts: &mut u64) -> Option<String> {
    s.as_deref().map(|s| bound(s, max, cuts))
}

/// Bounds every string and list in a fact value (depth-limited: deeper values are dropped).
fn bound_value(v: serde_json::Value, depth: u32, cuts: &mut u64) -> serde_json::Value {
    use serde_json::Value;
    match v {
        Value::String(s) if s.len() > MAX_TEXT_BYTES => {
            Value::String(bound(&s, MAX_TEXT_BYTES, cuts))
        }
        Value::Array(items) if depth < 4 => {
            if items.len() > MAX_LISTED {
                *cuts += 1;
            }
            Value::Array(
                items
                    .into_iter()
                    .take(MAX_LISTED)
                    .map(|x| bound_value(x, depth + 1, cuts))
                    .collect(),
            )
        }
        Value::Object(map) if depth < 4 => {
            if map.len() > MAX_LISTED * 2 {
                *cuts += 1;
            }
            Value::Object(
                map.into_iter()
                    .take(MAX_LISTED * 2)
                    .map(|(k, x)| {
                        (
                            bound(&k, MAX_SHORT_BYTES, cuts),
                            bound_value(x, depth + 1, cuts),
                        )
                    })
                    .collect(),
            )
        }
        Value::Array(_) | Value::Object(_) => {
            *cuts += 1;
            Value::Null
        }
        v => v,
    }
}

fn bound_facts(
    facts: BTreeMap<String, serde_json::Value>,
    cuts: &mut u64,
) -> BTreeMap<String, serde_json::Value> {
    facts
        .into_iter()
        .map(|(k, v)| (k, bound_value(v, 0, cuts)))
        .collect()
}

fn bound_principal(p: &Principal, cuts: &mut u64) -> Principal {
    Principal {
        kind: p.kind,
        name: bound_opt(&p.name, MAX_TEXT_BYTES, cuts),
        id: bound_opt(&p.id, MAX_TEXT_BYTES, cuts),
        arn: bound_opt(&p.arn, MAX_TEXT_BYTES, cuts),
        role: bound_opt(&p.role, MAX_TEXT_BYTES, cuts),
        invoked_by: bound_opt(&p.invoked_by, MAX_TEXT_BYTES, cuts),
        mfa: p.mfa,
        instance_id: bound_opt(&p.instance_id, MAX_TEXT_BYTES, cuts),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum AlarmStatus {
    /// The first notification of this alarm.
    Created,
    /// The alarm got more hits since its last notification.
    Updated,
}

/// A source IP of an alarm, with what enrichment knows about it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct SourceIp {
    /// The IP, what the log said when it is not one, or `masked` for an IP-hidden key.
    pub ip: String,
    #[serde(flatten)]
    pub geo: GeoInfo,
    pub classes: Vec<IpClass>,
}

/// The alarm's split value (the rule's `dimension`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Dimension {
    pub name: String,
    pub value: String,
}

/// The MITRE ATT&CK (Enterprise, cloud) tactics and techniques a rule stands for: tactic ids
/// `TA0001`..., technique ids `T1078` or sub-techniques `T1078.004`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Attack {
    pub tactics: Vec<String>,
    pub techniques: Vec<String>,
}

impl Attack {
    /// Every id malformed, or a list left empty.
    pub fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        if self.tactics.is_empty() || self.techniques.is_empty() {
            out.push("needs at least one tactic and one technique".to_owned());
        }
        let digits = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_digit());
        for t in &self.tactics {
            if !t.strip_prefix("TA").is_some_and(|d| digits(d, 4)) {
                out.push(format!("tactic {t:?} is not an ATT&CK tactic id (TA0001)"));
            }
        }
        for t in &self.techniques {
            let ok = t
                .strip_prefix('T')
                .is_some_and(|rest| match rest.split_once('.') {
                    Some((main, sub)) => digits(main, 4) && digits(sub, 3),
                    None => digits(rest, 4),
                });
            if !ok {
                out.push(format!(
                    "technique {t:?} is not an ATT&CK technique id (T1078 or T1078.004)"
                ));
            }
        }
        out
    }

    /// `TA0001 T1078.004` (for listings).
    pub fn ids(&self) -> String {
        self.tactics
            .iter()
            .chain(&self.techniques)
            .map(String::as_str)
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// What fired the rule.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Evidence {
    /// Ids of the events that hit (the first ones, up to 20).
    pub event_ids: Vec<String>,
    /// The facts of the latest hit (the detector's figures, report facts, leak source).
    pub facts: BTreeMap<String, serde_json::Value>,
}

/// The version of the alarm's JSON form (`schema_version`, and the `$id` of
/// `schemas/alarm.schema.json`): the minor moves when fields are added, the major when a field
/// changes meaning or goes.
pub const ALARM_SCHEMA_VERSION: &str = "1.1";

/// The alarm's `schema_version`: always [`ALARM_SCHEMA_VERSION`] when written (no memory per
/// alarm); any version is accepted when read back (checkpoints written by an older release).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SchemaVersion;

impl Serialize for SchemaVersion {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(ALARM_SCHEMA_VERSION)
    }
}

impl<'de> Deserialize<'de> for SchemaVersion {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let _ = serde::de::IgnoredAny::deserialize(d)?;
        Ok(SchemaVersion)
    }
}

impl JsonSchema for SchemaVersion {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "SchemaVersion".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "const": ALARM_SCHEMA_VERSION,
            "description": "The version of this alarm form."
        })
    }
}

/// `kind` in a schema: serde writes it from the container's tag, which schemars leaves out.
pub fn kind_property<const ALARM: bool>(schema: &mut schemars::Schema) {
    let value = if ALARM { "alarm" } else { "risk" };
    if let Some(props) = schema
        .get_mut("properties")
        .and_then(serde_json::Value::as_object_mut)
    {
        props.insert(
            "kind".to_owned(),
            serde_json::json!({
                "description": "What this record is: `alarm` or `risk` (one stream may carry both).",
                "const": value,
                "type": "string"
            }),
        );
    }
    if let Some(required) = schema
        .get_mut("required")
        .and_then(serde_json::Value::as_array_mut)
    {
        required.insert(0, serde_json::Value::from("kind"));
    }
}

/// An alarm, as written to the alarm topic / stdout. Its first field is `"kind": "alarm"`
/// (a configuration risk's is `"kind": "risk"`), so a stream holding both tells them apart;
/// read back, the field may be absent (alarms written before it existed).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "kind", rename = "alarm")]
#[schemars(rename = "Alarm", transform = kind_property::<true>)]
pub struct Alarm {
    /// The version of this alarm form ([`ALARM_SCHEMA_VERSION`]).
    #[serde(default)]
    #[schemars(required)]
    pub schema_version: SchemaVersion,
    pub alarm_id: String,
    pub rule_id: String,
    pub rule_name: String,
    pub severity: Severity,
    pub alarm_type: AlarmType,
    pub status: AlarmStatus,
    pub cloud: Cloud,
    pub account_id: Option<AccountId>,
    pub access_key_id: Option<AccessKeyId>,
    pub key_kind: KeyKind,
    pub principal: Principal,
    pub dimension: Option<Dimension>,
    pub source_ips: Vec<SourceIp>,
    pub apis: Vec<String>,
    /// Hits aggregated into this alarm.
    pub count: u64,
    pub first_seen: DateTime<Utc>,
    pub last_seen: DateTime<Utc>,
    pub evidence: Evidence,
    /// This alarm in one sentence, from its own facts (the key, the call, the target, where
    /// from): "AKIA… called iam:CreateAccessKey for user bob from 203.0.113.9 (tor; Frankfurt,
    /// DE) in us-east-1: Access key created for another user."
    #[serde(default)]
    pub summary: String,
    pub description: String,
    pub advice: String,
    /// The rule's MITRE ATT&CK tactics and techniques.
    #[serde(default)]
    pub attack: Attack,
}

impl Alarm {
    /// The alarm in one sentence, from its fields and the latest hit's facts.
    pub fn summarize(&self) -> String {
        use std::fmt::Write;
        let f = &self.evidence.facts;
        let text = |k: &str| f.get(k).and_then(|v| v.as_str());
        let who = self
            .access_key_id
            .as_ref()
            .map(|k| k.0.as_str())
            .or(self.principal.name.as_deref())
            .unwrap_or("an unknown caller");
        let mut s = format!("{who} called ");
        s.push_str(self.apis.last().map_or("an API", String::as_str));
        if let Some(u) = text("target_user") {
            let itself = f.get("target_is_caller").and_then(|v| v.as_bool()) == Some(true);
            let _ = write!(s, " for user {u}{}", if itself { " (itself)" } else { "" });
        }
        if let Some(p) = text("policy") {
            let _ = write!(s, " with policy {p}");
        }
        if let Some(k) = text("created_key_id") {
            let _ = write!(s, " creating key {k}");
        }
        if let Some(d) = &self.dimension
            && d.name == "tool"
        {
            let _ = write!(s, " using {}", d.value);
        }
        // The IP of the latest hit when its facts name it (travel), else the last one listed.
        let latest = text("ip").and_then(|ip| self.source_ips.iter().find(|s| s.ip == ip));
        if let Some(ip) = latest.or(self.source_ips.last()) {
            let classes: Vec<&str> = ip
                .classes
                .iter()
                .map(|c| c.as_str())
                .filter(|c| *c != "public")
                .collect();
            let place: Vec<&str> = [ip.geo.city.as_deref(), ip.geo.country.as_deref()]
                .into_iter()
                .flatten()
                .collect();
            let about: Vec<String> = [classes.join(", "), place.join(", ")]
                .into_iter()
                .filter(|x| !x.is_empty())
                .collect();
            let _ = write!(s, " from {}", ip.ip);
            if !about.is_empty() {
                let _ = write!(s, " ({})", about.join("; "));
            }
        }
        if let Some(r) = text("region") {
            let _ = write!(s, " in {r}");
        }
        let number = |k: &str| f.get(k).and_then(serde_json::Value::as_f64);
        if let (Some(km), Some(kmh)) = (number("distance_km"), number("speed_kmh")) {
            let _ = write!(s, ", {km:.0} km from another call");
            if let Some(prev) = text("previous_ip") {
                let _ = write!(s, " from {prev}");
                let place: Vec<&str> = [text("previous_city"), text("previous_country")]
                    .into_iter()
                    .flatten()
                    .collect();
                if !place.is_empty() {
                    let _ = write!(s, " ({})", place.join(", "));
                }
            }
            if let Some(at) = text("previous_call_at") {
                let _ = write!(s, " at {at}");
            }
            let _ = write!(s, ", {kmh:.0} km/h");
        }
        // Bursts: how many calls / distinct values within the window.
        if let Some(w) = text("window") {
            if let Some(d) = f.get("distinct").and_then(serde_json::Value::as_object) {
                let parts: Vec<String> = d
                    .iter()
                    .filter_map(|(attr, n)| Some(format!("{} {}", n.as_u64()?, plural(attr))))
                    .collect();
                if !parts.is_empty() {
                    let _ = write!(s, ", {} within {w}", parts.join(" / "));
                }
            } else if let Some(n) = f.get("count").and_then(serde_json::Value::as_u64) {
                let _ = write!(s, ", {n} calls within {w}");
                if let Some(b) = number("baseline_per_window") {
                    let _ = write!(s, " (baseline {b})");
                }
            }
        }
        let _ = write!(s, ": {}", self.rule_name);
        if self.count > 1 {
            let _ = write!(
                s,
                " ({} hits since {})",
                self.count,
                self.first_seen.format("%Y-%m-%d %H:%M UTC")
            );
        }
        s.push('.');
        s
    }
}

/// An attribute's name in a sentence, plural ("3 source IPs").
fn plural(attr: &str) -> String {
    match attr {
        "source_ip" => "source IPs".to_owned(),
        "asn" => "networks (ASNs)".to_owned(),
        "city" => "cities".to_owned(),
        "country" => "countries".to_owned(),
        "api" => "APIs".to_owned(),
        "user_agent" => "user agents".to_owned(),
        other => format!("{}s", other.replace('_', " ")),
    }
}

/// One rule firing on one event.
#[derive(Debug, Clone)]
pub struct Hit {
    pub facts: BTreeMap<String, serde_json::Value>,
    pub dimension: Option<String>,
    /// The severity of this hit (the rule's, the alarm policy's, or raised by `severity_when`).
    pub severity: Option<Severity>,
}

/// Per-rule aggregation settings (alarm policy).
#[derive(Debug, Clone, Copy)]
pub struct AggregationSettings {
    pub period_secs: i64,
    pub renotify_secs: i64,
}

#[derive(Clone, Serialize, Deserialize)]
pub struct Tracked {
    alarm: Alarm,
    last_notified: DateTime<Utc>,
    pending: bool,
    /// When it was last hit, in hits recorded by the aggregator (for least-recently-updated
    /// eviction).
    #[serde(default)]
    touched: u64,
    /// The key (or principal) it is about (`subject_of`), for the per-subject index.
    #[serde(default)]
    subject: String,
}

impl Tracked {
    pub fn id(&self) -> &str {
        &self.alarm.alarm_id
    }
}

/// The default cap on tracked alarms. A tracked alarm with full evidence lists (20 source IPs
/// with their location, 20 event ids) costs about 8 KiB of heap (`tests/alarm_memory.rs`), so
/// the cap holds alarms to about 400 MiB in a storm.
pub const DEFAULT_MAX_ALARMS: usize = 50_000;
/// The default cap on tracked alarms per key (or principal without a key).
pub const DEFAULT_MAX_ALARMS_PER_KEY: usize = 256;

/// Alarms being aggregated, at most `max` of them: past it the least recently updated are
/// dropped (in batches of 1% of the cap), those with hits not yet notified sent as updates
/// first. An evicted alarm hit again starts over as `created`, with the same id (ids are a
/// function of rule, key, dimension value and period), so downstream it is the same alarm;
/// only its count restarts.
pub struct Aggregator {
    /// Shared with checkpoint snapshots (copied on write).
    alarms: HashMap<String, std::sync::Arc<Tracked>>,
    /// The ids of each subject's tracked alarms (derived from `alarms`, kept in step with it).
    by_subject: HashMap<String, Vec<String>>,
    max: usize,
    /// The most alarms tracked per subject (key or principal).
    max_per_subject: usize,
    clock: u64,
    evicted: u64,
    /// Of `evicted`, those dropped by the per-subject cap.
    evicted_per_subject: u64,
    truncated: u64,
    evicted_out: Vec<Alarm>,
}

impl Default for Aggregator {
    fn default() -> Self {
        Aggregator {
            alarms: HashMap::new(),
            by_subject: HashMap::new(),
            max: DEFAULT_MAX_ALARMS,
            max_per_subject: DEFAULT_MAX_ALARMS_PER_KEY,
            clock: 0,
            evicted: 0,
            evicted_per_subject: 0,
            truncated: 0,
            evicted_out: Vec::new(),
        }
    }
}

impl Aggregator {
    /// Sets the cap on tracked alarms (at least 1).
    pub fn set_max(&mut self, max: usize) {
        self.max = max.max(1);
    }

    /// Sets the cap on tracked alarms per subject (at least 1).
    pub fn set_max_per_subject(&mut self, max: usize) {
        self.max_per_subject = max.max(1);
    }

    /// Alarms evicted so far (by either cap).
    pub fn evicted(&self) -> u64 {
        self.evicted
    }

    /// Alarms evicted so far by the per-subject cap.
    pub fn evicted_per_subject(&self) -> u64 {
        self.evicted_per_subject
    }

    /// Alarm fields cut to their size limit so far.
    pub fn truncated(&self) -> u64 {
        self.truncated
    }

    /// The pending updates of alarms evicted since the last call.
    pub fn take_evicted(&mut self) -> Vec<Alarm> {
        std::mem::take(&mut self.evicted_out)
    }

    /// Drops the least recently updated alarms down to 99% of the cap.
    fn evict(&mut self) {
        let len = self.alarms.len();
        let target = self.max - self.max / 100;
        let excess = len.saturating_sub(target).max(1).min(len);
        let mut ages: Vec<(u64, String)> = self
            .alarms
            .iter()
            .map(|(id, t)| (t.touched, id.clone()))
            .collect();
        ages.select_nth_unstable(excess - 1);
        let mut ids: Vec<String> = ages.drain(..excess).map(|(_, id)| id).collect();
        // (Sorted, so the updates sent for them come out in a deterministic order.)
        ids.sort_unstable();
        for id in &ids {
            self.close(id);
        }
        tracing::warn!(
            evicted = excess,
            cap = self.max,
            "alarm cap reached: the least recently updated alarms dropped"
        );
    }

    /// Drops the least recently updated alarm of `subject` when it has more than its cap.
    fn evict_subject(&mut self, subject: &str) {
        let Some(ids) = self.by_subject.get(subject) else {
            return;
        };
        if ids.len() <= self.max_per_subject {
            return;
        }
        // Attack-stage alarms (and the key's attack sequence) go last: a flood of new-IP
        // alarms must not push out the stages an attack sequence is built from.
        let oldest = ids
            .iter()
            .filter_map(|id| {
                self.alarms.get(id).map(|t| {
                    let keep = is_stage(&t.alarm) || t.alarm.rule_id == ATTACK_SEQUENCE;
                    ((keep, t.touched), id)
                })
            })
            .min()
            .map(|(_, id)| id.clone());
        if let Some(id) = oldest {
            self.close(&id);
            self.evicted_per_subject += 1;
        }
    }

    /// Stops tracking an alarm; its hits not yet notified go out as an update.
    fn close(&mut self, id: &str) {
        let Some(t) = self.alarms.remove(id) else {
            return;
        };
        self.unindex(&t.subject, id);
        self.evicted += 1;
        if t.pending {
            let mut a = t.alarm.clone();
            a.status = AlarmStatus::Updated;
            self.evicted_out.push(a);
        }
    }

    /// Every tracked alarm, for a checkpoint: pointers, not copies (unsorted).
    pub fn export(&self) -> Vec<std::sync::Arc<Tracked>> {
        self.alarms.values().cloned().collect()
    }

    /// Restores tracked alarms from a checkpoint.
    pub fn import(&mut self, tracked: Vec<std::sync::Arc<Tracked>>) {
        for t in tracked {
            self.clock = self.clock.max(t.touched.saturating_add(1));
            let id = t.alarm.alarm_id.clone();
            if let Some(old) = self.alarms.insert(id.clone(), t.clone()) {
                self.unindex(&old.subject, &id);
            }
            self.index(&t.subject, &id);
        }
        while self.alarms.len() > self.max {
            self.evict();
        }
    }
}

/// The incident alarm of a key whose alarms span several attack stages.
pub const ATTACK_SEQUENCE: &str = "ak.attack_sequence";
/// The window within which a key's alarms make one attack sequence (24 h).
pub const SEQUENCE_WINDOW_SECS: i64 = 86_400;
/// The distinct stages (member rules' primary tactics) an attack sequence needs.
pub const SEQUENCE_MIN_STAGES: usize = 3;
/// The ATT&CK tactics that count as stages of an attack, with their names. Initial access and
/// reconnaissance do not: a key used from a new IP is no stage on its own.
const STAGES: [(&str, &str); 10] = [
    ("TA0002", "execution"),
    ("TA0003", "persistence"),
    ("TA0004", "privilege escalation"),
    ("TA0005", "defence evasion"),
    ("TA0006", "credential access"),
    ("TA0007", "discovery"),
    ("TA0008", "lateral movement"),
    ("TA0009", "collection"),
    ("TA0010", "exfiltration"),
    ("TA0040", "impact"),
];

fn stage_name(tactic: &str) -> Option<&'static str> {
    STAGES.iter().find(|(id, _)| *id == tactic).map(|(_, n)| *n)
}

/// Whether an alarm is a stage of an attack: its rule's primary (first) ATT&CK tactic is one
/// of the stage tactics. Only such an alarm, new, can start or grow an attack sequence.
pub fn is_stage(alarm: &Alarm) -> bool {
    alarm.rule_id != ATTACK_SEQUENCE
        && alarm
            .attack
            .tactics
            .first()
            .is_some_and(|t| stage_name(t).is_some())
}

impl Aggregator {
    fn index(&mut self, subject: &str, id: &str) {
        if !subject.is_empty() {
            self.by_subject
                .entry(subject.to_owned())
                .or_default()
                .push(id.to_owned());
        }
    }

    fn unindex(&mut self, subject: &str, id: &str) {
        if let Some(ids) = self.by_subject.get_mut(subject) {
            ids.retain(|i| i != id);
            if ids.is_empty() {
                self.by_subject.remove(subject);
            }
        }
    }

    /// The attack sequence of `subject` as of `t` (what GuardDuty's
    /// `AttackSequence:IAM/CompromisedCredentials` does): when the subject's alarms that were
    /// hit within [`SEQUENCE_WINDOW_SECS`] before `t` span at least [`SEQUENCE_MIN_STAGES`]
    /// stages (their rules' primary tactics), one `critical` incident alarm listing them. Its id
    /// is a function of the subject and the day of its first member. Returned when it is new
    /// (`created`) or gained members or stages (`updated`); tracked like any alarm.
    pub fn sequence(&mut self, subject: &str, t: DateTime<Utc>) -> Option<Alarm> {
        // (Event times come from input: the window's start is checked, never a panic.)
        let since = t
            .checked_sub_signed(chrono::TimeDelta::seconds(SEQUENCE_WINDOW_SECS))
            .unwrap_or(DateTime::<Utc>::MIN_UTC);
        // A member's stage is its rule's primary (first) tactic: a call that fires a broad
        // rule beside a precise one (sensitive_api beside backdoor_key) adds one stage, not
        // every tactic the broad rule may stand for.
        let stage_of = |a: &Alarm| a.attack.tactics.first().and_then(|x| stage_name(x));
        // References, not copies: a key with many alarms costs one pass per new stage alarm.
        let mut members: Vec<&Alarm> = self
            .by_subject
            .get(subject)?
            .iter()
            .filter_map(|id| self.alarms.get(id))
            .map(|tr| &tr.alarm)
            .filter(|a| a.rule_id != ATTACK_SEQUENCE && a.last_seen >= since)
            .filter(|a| stage_of(a).is_some())
            .collect();
        let stages: BTreeSet<&str> = members.iter().copied().filter_map(stage_of).collect();
        if stages.len() < SEQUENCE_MIN_STAGES {
            return None;
        }
        let rules: BTreeSet<&str> = members.iter().map(|a| a.rule_id.as_str()).collect();
        let stage_list = stages.iter().copied().collect::<Vec<_>>().join(", ");
        let rule_list = rules.iter().copied().collect::<Vec<_>>().join(", ");
        members.sort_by(|a, b| (a.first_seen, &a.alarm_id).cmp(&(b.first_seen, &b.alarm_id)));
        let first = members.first()?.first_seen;
        let latest = members.iter().max_by_key(|a| (a.last_seen, &a.alarm_id))?;
        let id = alarm_id(
            ATTACK_SEQUENCE,
            subject,
            None,
            first.timestamp().div_euclid(SEQUENCE_WINDOW_SECS),
        );
        let (mut source_ips, mut apis, mut seen) = (Vec::new(), Vec::new(), BTreeSet::new());
        let (mut tactics, mut techniques) = (BTreeSet::new(), BTreeSet::new());
        for a in &members {
            for ip in &a.source_ips {
                if source_ips.len() < MAX_LISTED && seen.insert(ip.ip.clone()) {
                    source_ips.push(ip.clone());
                }
            }
            for api in &a.apis {
                if apis.len() < MAX_LISTED && !apis.contains(api) {
                    apis.push(api.clone());
                }
            }
            tactics.extend(a.attack.tactics.iter().cloned());
            techniques.extend(a.attack.techniques.iter().cloned());
        }
        let listed: Vec<serde_json::Value> = members
            .iter()
            .take(MAX_LISTED)
            .map(|a| {
                serde_json::json!({
                    "alarm_id": a.alarm_id,
                    "rule_id": a.rule_id,
                    "severity": a.severity,
                    "tactics": a.attack.tactics,
                    "first_seen": a.first_seen,
                    "last_seen": a.last_seen,
                })
            })
            .collect();
        let mut facts = BTreeMap::new();
        facts.insert("members".to_owned(), serde_json::json!(listed));
        facts.insert("member_count".to_owned(), serde_json::json!(members.len()));
        facts.insert("stages".to_owned(), serde_json::json!(stages));
        let who = latest
            .access_key_id
            .as_ref()
            .map_or_else(|| subject.to_owned(), |k| k.0.clone());
        let alarm = Alarm {
            schema_version: SchemaVersion,
            alarm_id: id.clone(),
            rule_id: ATTACK_SEQUENCE.to_owned(),
            rule_name: "Attack sequence: one key across several attack stages".to_owned(),
            severity: Severity::Critical,
            alarm_type: AlarmType::Incident,
            status: AlarmStatus::Created,
            cloud: latest.cloud,
            account_id: latest.account_id.clone(),
            access_key_id: latest.access_key_id.clone(),
            key_kind: latest.key_kind,
            principal: latest.principal.clone(),
            dimension: None,
            source_ips,
            apis,
            count: members.len() as u64,
            first_seen: first,
            last_seen: latest.last_seen,
            evidence: Evidence {
                event_ids: Vec::new(),
                facts,
            },
            summary: format!(
                "{who} raised {} alarms across {} attack stages ({stage_list}) within 24 h: {rule_list}.",
                members.len(),
                stages.len()
            ),
            description: "Alarms of one key that together span several stages of an attack \
                          (discovery, persistence, privilege escalation, defence evasion, \
                          credential access, exfiltration, impact) within 24 hours."
                .to_owned(),
            advice: "Treat the key as compromised: disable it, review every member alarm and \
                     what the key changed (keys, users, policies, logging), and revert."
                .to_owned(),
            attack: Attack {
                tactics: tactics.into_iter().collect(),
                techniques: techniques.into_iter().collect(),
            },
        };
        self.clock += 1;
        let touched = self.clock;
        match self.alarms.get_mut(&id) {
            Some(tracked) => {
                let tracked = std::sync::Arc::make_mut(tracked);
                tracked.touched = touched;
                let stages = |a: &Alarm| {
                    a.evidence
                        .facts
                        .get("stages")
                        .and_then(|s| s.as_array())
                        .map_or(0, Vec::len)
                };
                // (Grown, not merely changed: a member closed by a cap is no news.)
                let grew =
                    alarm.count > tracked.alarm.count || stages(&alarm) > stages(&tracked.alarm);
                tracked.alarm = Alarm {
                    status: AlarmStatus::Created,
                    ..alarm
                };
                if grew {
                    tracked.last_notified = t;
                    tracked.pending = false;
                    let mut out = tracked.alarm.clone();
                    out.status = AlarmStatus::Updated;
                    Some(out)
                } else {
                    tracked.pending = true;
                    None
                }
            }
            None => {
                self.alarms.insert(
                    id.clone(),
                    std::sync::Arc::new(Tracked {
                        alarm: alarm.clone(),
                        last_notified: t,
                        pending: false,
                        touched,
                        subject: subject.to_owned(),
                    }),
                );
                self.index(subject, &id);
                self.evict_subject(subject);
                if self.alarms.len() > self.max {
                    self.evict();
                }
                Some(alarm)
            }
        }
    }
}

/// `akw-` and the first 24 hex digits of SHA-256 over the alarm's identity.
pub fn alarm_id(rule_id: &str, subject: &str, dimension: Option<&str>, period: i64) -> String {
    let mut h = Sha256::new();
    for part in [
        rule_id,
        subject,
        dimension.unwrap_or("-"),
        &period.to_string(),
    ] {
        h.update(part.as_bytes());
        h.update([0u8]);
    }
    let digest = h.finalize();
    let hex: String = digest.iter().take(12).map(|b| format!("{b:02x}")).collect();
    format!("akw-{hex}")
}

/// The key an alarm is about: the access key, else the principal.
pub fn subject_of(event: &Event) -> String {
    match &event.access_key_id {
        Some(k) => k.0.clone(),
        None => format!(
            "principal:{}:{}:{}",
            event.cloud,
            event.account_id.as_ref().map_or("-", |a| a.as_str()),
            event.principal.name.as_deref().unwrap_or("-")
        ),
    }
}

impl Aggregator {
    pub fn len(&self) -> usize {
        self.alarms.len()
    }

    pub fn is_empty(&self) -> bool {
        self.alarms.is_empty()
    }

    /// Adds a hit; returns the alarm when it is new, or when an update is due.
    pub fn record(
        &mut self,
        rule: &Rule,
        hit: Hit,
        event: &Event,
        enrichment: &Enrichment,
        ip_hidden: bool,
        settings: AggregationSettings,
    ) -> Option<Alarm> {
        let severity = hit.severity.unwrap_or(rule.severity);
        let t = event.event_time;
        let period = t.timestamp().div_euclid(settings.period_secs.max(1));
        let subject = subject_of(event);
        let id = alarm_id(&rule.id, &subject, hit.dimension.as_deref(), period);
        let cuts = &mut self.truncated;
        let source_ip = source_ip_of(event, enrichment, ip_hidden).map(|mut s| {
            s.ip = bound(&s.ip, MAX_SHORT_BYTES, cuts);
            s
        });
        let api = bound(&event.api(), MAX_SHORT_BYTES, cuts);
        let event_id = bound(&event.event_id, MAX_SHORT_BYTES, cuts);
        let facts = bound_facts(hit.facts, cuts);
        self.clock += 1;
        let touched = self.clock;
        match self.alarms.get_mut(&id) {
            None => {
                let dimension_max = if rule.dimension == crate::rule::Attr::UserAgent {
                    MAX_USER_AGENT_BYTES
                } else {
                    MAX_TEXT_BYTES
                };
                let alarm = Alarm {
                    schema_version: SchemaVersion,
                    alarm_id: id.clone(),
                    rule_id: rule.id.clone(),
                    rule_name: rule.name.clone(),
                    severity,
                    alarm_type: rule.alarm_type,
                    status: AlarmStatus::Created,
                    cloud: event.cloud,
                    account_id: event
                        .account_id
                        .as_ref()
                        .map(|a| AccountId(bound(&a.0, MAX_SHORT_BYTES, cuts))),
                    access_key_id: event
                        .access_key_id
                        .as_ref()
                        .map(|k| AccessKeyId(bound(&k.0, MAX_SHORT_BYTES, cuts))),
                    key_kind: event.key_kind,
                    principal: bound_principal(&event.principal, cuts),
                    dimension: hit.dimension.as_ref().map(|v| Dimension {
                        name: rule.dimension.as_str().to_owned(),
                        value: if ip_hidden && rule.dimension.from_ip() {
                            "masked".to_owned()
                        } else {
                            bound(v, dimension_max, cuts)
                        },
                    }),
                    source_ips: source_ip.iter().cloned().collect(),
                    apis: vec![api],
                    count: 1,
                    first_seen: t,
                    last_seen: t,
                    evidence: Evidence {
                        event_ids: vec![event_id],
                        facts,
                    },
                    summary: String::new(),
                    description: rule.description.clone(),
                    advice: rule.advice.clone(),
                    attack: rule.attack.clone(),
                };
                let alarm = Alarm {
                    summary: alarm.summarize(),
                    ..alarm
                };
                self.alarms.insert(
                    id.clone(),
                    std::sync::Arc::new(Tracked {
                        alarm: alarm.clone(),
                        last_notified: t,
                        pending: false,
                        touched,
                        subject: subject.clone(),
                    }),
                );
                self.index(&subject, &id);
                self.evict_subject(&subject);
                if self.alarms.len() > self.max {
                    self.evict();
                }
                Some(alarm)
            }
            Some(tracked) => {
                let tracked = std::sync::Arc::make_mut(tracked);
                tracked.touched = touched;
                let a = &mut tracked.alarm;
                a.count += 1;
                a.first_seen = a.first_seen.min(t);
                a.last_seen = a.last_seen.max(t);
                // (The lists grow one exact step at a time: at most 20 entries, and a tracked
                // alarm's memory is what bounds an alarm storm.)
                if let Some(ip) = source_ip
                    && a.source_ips.len() < MAX_LISTED
                    && !a.source_ips.iter().any(|s| s.ip == ip.ip)
                {
                    a.source_ips.reserve_exact(1);
                    a.source_ips.push(ip);
                }
                if a.apis.len() < MAX_LISTED && !a.apis.contains(&api) {
                    a.apis.reserve_exact(1);
                    a.apis.push(api);
                }
                if a.evidence.event_ids.len() < MAX_LISTED {
                    a.evidence.event_ids.reserve_exact(1);
                    a.evidence.event_ids.push(event_id);
                }
                a.evidence.facts = facts;
                a.severity = a.severity.max(severity);
                a.summary = a.summarize();
                // (Times are within chrono's range, so their difference is; a renotification
                // interval past it means never.)
                if chrono::TimeDelta::try_seconds(settings.renotify_secs)
                    .is_some_and(|d| t - tracked.last_notified >= d)
                {
                    tracked.last_notified = t;
                    tracked.pending = false;
                    let mut out = a.clone();
                    out.status = AlarmStatus::Updated;
                    Some(out)
                } else {
                    tracked.pending = true;
                    None
                }
            }
        }
    }

    /// The alarms with hits not yet notified, as updates (sorted by id), e.g. at the end of
    /// a replay.
    pub fn flush(&mut self) -> Vec<Alarm> {
        let mut out: Vec<Alarm> = self
            .alarms
            .values_mut()
            .filter(|t| t.pending)
            .map(|t| {
                let t = std::sync::Arc::make_mut(t);
                t.pending = false;
                let mut a = t.alarm.clone();
                a.status = AlarmStatus::Updated;
                a
            })
            .collect();
        out.sort_by(|a, b| a.alarm_id.cmp(&b.alarm_id));
        out
    }

    /// Every alarm in its latest state, sorted by first hit.
    pub fn snapshot(&self) -> Vec<Alarm> {
        let mut out: Vec<Alarm> = self.alarms.values().map(|t| t.alarm.clone()).collect();
        sort_by_first_hit(&mut out);
        out
    }

    /// Every tracked alarm, as [`Aggregator::snapshot`] gives them, moved out (copied only
    /// when a checkpoint still shares one): the end of a run, without a second copy of them
    /// all at its peak. No alarm is tracked after.
    pub fn take_all(&mut self) -> Vec<Alarm> {
        self.by_subject.clear();
        let mut out: Vec<Alarm> = self
            .alarms
            .drain()
            .map(|(_, t)| {
                std::sync::Arc::try_unwrap(t).map_or_else(|t| t.alarm.clone(), |t| t.alarm)
            })
            .collect();
        sort_by_first_hit(&mut out);
        out
    }
}

/// By first hit, then id (the order of a run's final alarms).
fn sort_by_first_hit(alarms: &mut [Alarm]) {
    alarms.sort_by(|a, b| (a.first_seen, &a.alarm_id).cmp(&(b.first_seen, &b.alarm_id)));
}

fn source_ip_of(event: &Event, enrichment: &Enrichment, ip_hidden: bool) -> Option<SourceIp> {
    let shown = if ip_hidden {
        "masked".to_owned()
    } else {
        event
            .source_ip
            .map(|ip| ip.to_string())
            .or_else(|| event.source_address.clone())?
    };
    Some(SourceIp {
        ip: shown,
        geo: if ip_hidden {
            GeoInfo::default()
        } else {
            enrichment.geo.as_deref().cloned().unwrap_or_default()
        },
        classes: enrichment.ip_class.iter().collect(),
    })
}
