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

/// The most source IPs, APIs and event ids an alarm lists.
const MAX_LISTED: usize = 20;

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

/// What fired the rule.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Evidence {
    /// Ids of the events that hit (the first ones, up to 20).
    pub event_ids: Vec<String>,
    /// The facts of the latest hit (the detector's figures, report facts, leak source).
    pub facts: BTreeMap<String, serde_json::Value>,
}

/// An alarm, as written to the alarm topic / stdout.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Alarm {
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
    pub description: String,
    pub advice: String,
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
    ips: BTreeSet<String>,
}

/// Alarms being aggregated.
#[derive(Default)]
pub struct Aggregator {
    alarms: HashMap<String, Tracked>,
}

impl Aggregator {
    /// Every tracked alarm, for a checkpoint (sorted by id).
    pub fn export(&self) -> Vec<Tracked> {
        let mut v: Vec<Tracked> = self.alarms.values().cloned().collect();
        v.sort_by(|a, b| a.alarm.alarm_id.cmp(&b.alarm.alarm_id));
        v
    }

    /// Restores tracked alarms from a checkpoint.
    pub fn import(&mut self, tracked: Vec<Tracked>) {
        for t in tracked {
            self.alarms.insert(t.alarm.alarm_id.clone(), t);
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
        let source_ip = source_ip_of(event, enrichment, ip_hidden);
        let api = event.api();
        match self.alarms.get_mut(&id) {
            None => {
                let alarm = Alarm {
                    alarm_id: id.clone(),
                    rule_id: rule.id.clone(),
                    rule_name: rule.name.clone(),
                    severity,
                    alarm_type: rule.alarm_type,
                    status: AlarmStatus::Created,
                    cloud: event.cloud,
                    account_id: event.account_id.clone(),
                    access_key_id: event.access_key_id.clone(),
                    key_kind: event.key_kind,
                    principal: event.principal.clone(),
                    dimension: hit.dimension.as_ref().map(|v| Dimension {
                        name: rule.dimension.as_str().to_owned(),
                        value: if ip_hidden && rule.dimension.from_ip() {
                            "masked".to_owned()
                        } else {
                            v.clone()
                        },
                    }),
                    source_ips: source_ip.iter().cloned().collect(),
                    apis: vec![api],
                    count: 1,
                    first_seen: t,
                    last_seen: t,
                    evidence: Evidence {
                        event_ids: vec![event.event_id.clone()],
                        facts: hit.facts,
                    },
                    description: rule.description.clone(),
                    advice: rule.advice.clone(),
                };
                let ips = source_ip.iter().map(|s| s.ip.clone()).collect();
                self.alarms.insert(
                    id,
                    Tracked {
                        alarm: alarm.clone(),
                        last_notified: t,
                        pending: false,
                        ips,
                    },
                );
                Some(alarm)
            }
            Some(tracked) => {
                let a = &mut tracked.alarm;
                a.count += 1;
                a.first_seen = a.first_seen.min(t);
                a.last_seen = a.last_seen.max(t);
                if let Some(ip) = source_ip
                    && tracked.ips.len() < MAX_LISTED
                    && tracked.ips.insert(ip.ip.clone())
                {
                    a.source_ips.push(ip);
                }
                if a.apis.len() < MAX_LISTED && !a.apis.contains(&api) {
                    a.apis.push(api);
                }
                if a.evidence.event_ids.len() < MAX_LISTED {
                    a.evidence.event_ids.push(event.event_id.clone());
                }
                a.evidence.facts = hit.facts;
                a.severity = a.severity.max(severity);
                if t - tracked.last_notified >= chrono::Duration::seconds(settings.renotify_secs) {
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
        out.sort_by(|a, b| (a.first_seen, &a.alarm_id).cmp(&(b.first_seen, &b.alarm_id)));
        out
    }
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
