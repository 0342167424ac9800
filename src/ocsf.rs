//! Alarms as OCSF 1.8.0 Detection Findings (class 2004), for SIEMs and data lakes that speak
//! OCSF (Security Lake, Splunk, Sentinel). `replay --format ocsf`, `alarm_format: ocsf`.
//!
//! The mapping: activity create / update from the alarm's status; `finding_info` carries the
//! alarm id (uid), the rule (analytic), title, description, first / last seen and the ATT&CK
//! tactics and techniques, and for an attack sequence its member alarms (`related_events`);
//! `resources` are the access key, the principal and the account; `evidences` are one per source
//! IP (the caller, the API, the endpoint with its location and ASN) with the alarm's facts as
//! their data; `remediation` is the rule's advice; the `cloud` profile names the provider and
//! account. What OCSF has no attribute for (the dimension, the key kind, the event ids, the
//! native status) is under `unmapped`. `tests/it/ocsf.rs` validates the output against the
//! JSON Schema derived from the OCSF source (`scripts/ocsf-schema.py`,
//! `schemas/ocsf-1.8.0-detection_finding.schema.json`).

use chrono::{DateTime, Utc};
use serde_json::{Map, Value, json};

use crate::alarm::{Alarm, AlarmStatus, SourceIp};
use crate::event::{Cloud, PrincipalType};
use crate::rule::{AlarmType, Severity};

/// The OCSF schema version the output follows.
pub const OCSF_VERSION: &str = "1.8.0";
const CLASS_UID: u64 = 2004;
const CATEGORY_UID: u64 = 2;

/// Which form alarms are written in.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum AlarmFormat {
    /// akwatch's own alarm JSON (`schemas/alarm.schema.json`).
    #[default]
    Native,
    /// OCSF 1.8.0 Detection Finding (class 2004).
    Ocsf,
}

impl AlarmFormat {
    /// The alarm as a JSON value in this format.
    pub fn to_value(self, alarm: &Alarm) -> Value {
        match self {
            AlarmFormat::Native => serde_json::to_value(alarm).unwrap_or(Value::Null),
            AlarmFormat::Ocsf => detection_finding(alarm),
        }
    }
}

fn ms(t: DateTime<Utc>) -> i64 {
    t.timestamp_millis()
}

fn severity(s: Severity) -> (u64, &'static str) {
    match s {
        Severity::Info => (1, "Informational"),
        Severity::Low => (2, "Low"),
        Severity::Medium => (3, "Medium"),
        Severity::High => (4, "High"),
        Severity::Critical => (5, "Critical"),
    }
}

fn provider(c: Cloud) -> &'static str {
    match c {
        Cloud::Aws => "AWS",
        Cloud::Alibaba => "Alibaba Cloud",
        Cloud::Tencent => "Tencent Cloud",
    }
}

/// The OCSF `account.type_id`: 10 is "AWS Account"; the others have no value of their own.
fn account_type(c: Cloud) -> (u64, &'static str) {
    match c {
        Cloud::Aws => (10, "AWS Account"),
        Cloud::Alibaba => (99, "Alibaba Cloud Account"),
        Cloud::Tencent => (99, "Tencent Cloud Account"),
    }
}

/// Inserts `value` under `key` when it is a string that is not empty.
fn put_str(o: &mut Map<String, Value>, key: &str, value: Option<&str>) {
    if let Some(v) = value.filter(|v| !v.is_empty()) {
        o.insert(key.to_owned(), Value::String(v.to_owned()));
    }
}

/// The caller as an OCSF `user`.
fn user(alarm: &Alarm) -> Value {
    let p = &alarm.principal;
    let mut u = Map::new();
    put_str(&mut u, "name", p.name.as_deref());
    put_str(&mut u, "uid", p.arn.as_deref().or(p.id.as_deref()));
    if let Some(k) = &alarm.access_key_id {
        // `credential_uid` is deprecated since OCSF 1.6 but what Security Lake's CloudTrail
        // mapping fills; `programmatic_credentials` is its successor.
        u.insert("credential_uid".to_owned(), json!(k.0));
        u.insert(
            "programmatic_credentials".to_owned(),
            json!([{"uid": k.0, "type": "Access Key"}]),
        );
    }
    let (type_id, kind) = match p.kind {
        PrincipalType::Root => (2, "Admin"),
        PrincipalType::User | PrincipalType::Federated => (1, "User"),
        PrincipalType::Service => (4, "Service"),
        PrincipalType::AssumedRole => (99, "AssumedRole"),
        PrincipalType::Unknown => (0, "Unknown"),
    };
    u.insert("type_id".to_owned(), json!(type_id));
    u.insert("type".to_owned(), json!(kind));
    if let Some(a) = &alarm.account_id {
        let (type_id, kind) = account_type(alarm.cloud);
        u.insert(
            "account".to_owned(),
            json!({"uid": a.0, "type_id": type_id, "type": kind}),
        );
    }
    Value::Object(u)
}

/// The actor: the user (when anything identifies it) and, where the log says, whether its
/// session was MFA-authenticated.
fn actor(alarm: &Alarm) -> Option<Value> {
    let user = user(alarm);
    let mut a = Map::new();
    if ["name", "uid", "account"]
        .iter()
        .any(|k| user.get(k).is_some())
    {
        a.insert("user".to_owned(), user);
    }
    if let Some(mfa) = alarm.principal.mfa {
        a.insert("session".to_owned(), json!({"is_mfa": mfa}));
    }
    (!a.is_empty()).then_some(Value::Object(a))
}

/// A source IP as an OCSF `network_endpoint` (IP-hidden keys show `masked`, not an IP: then
/// the endpoint is named, not addressed).
fn endpoint(s: &SourceIp) -> Value {
    let mut e = Map::new();
    if s.ip.parse::<std::net::IpAddr>().is_ok() {
        e.insert("ip".to_owned(), json!(s.ip));
    } else {
        e.insert("name".to_owned(), json!(s.ip));
    }
    let g = &s.geo;
    let mut loc = Map::new();
    put_str(&mut loc, "country", g.country.as_deref());
    put_str(&mut loc, "city", g.city.as_deref());
    if !loc.is_empty() {
        if let Some(lat) = g.latitude {
            loc.insert("lat".to_owned(), json!(lat));
        }
        if let Some(long) = g.longitude {
            loc.insert("long".to_owned(), json!(long));
        }
        e.insert("location".to_owned(), Value::Object(loc));
    }
    if g.asn.is_some() || g.as_org.is_some() {
        let mut asys = Map::new();
        if let Some(n) = g.asn {
            asys.insert("number".to_owned(), json!(n));
        }
        put_str(&mut asys, "name", g.as_org.as_deref());
        e.insert("autonomous_system".to_owned(), Value::Object(asys));
    }
    Value::Object(e)
}

/// The API call as an OCSF `api` (`service:Action`).
fn api(name: &str) -> Value {
    match name.split_once(':') {
        Some((service, op)) if !service.is_empty() && !op.is_empty() => {
            json!({"operation": op, "service": {"name": service}})
        }
        _ => json!({"operation": name}),
    }
}

/// The alarm as an OCSF 1.8.0 Detection Finding.
pub fn detection_finding(alarm: &Alarm) -> Value {
    let (activity_id, activity) = match alarm.status {
        AlarmStatus::Created => (1u64, "Create"),
        AlarmStatus::Updated => (2, "Update"),
    };
    let (severity_id, severity_name) = severity(alarm.severity);

    let mut attacks = Vec::new();
    // One entry per technique (sub-techniques under their parent) with the rule's tactics; the
    // single `tactic` only when the rule has one (which technique serves which of several
    // tactics is not recorded).
    let primary = match alarm.attack.tactics.as_slice() {
        [one] => Some(one),
        _ => None,
    };
    for t in &alarm.attack.techniques {
        let mut a = Map::new();
        match t.split_once('.') {
            Some((parent, _)) => {
                a.insert("technique".to_owned(), json!({"uid": parent}));
                a.insert("sub_technique".to_owned(), json!({"uid": t}));
            }
            None => {
                a.insert("technique".to_owned(), json!({"uid": t}));
            }
        }
        if let Some(tactic) = primary {
            a.insert("tactic".to_owned(), json!({"uid": tactic}));
        }
        a.insert(
            "tactics".to_owned(),
            Value::Array(
                alarm
                    .attack
                    .tactics
                    .iter()
                    .map(|t| json!({"uid": t}))
                    .collect(),
            ),
        );
        attacks.push(Value::Object(a));
    }
    if attacks.is_empty() {
        for tactic in &alarm.attack.tactics {
            attacks.push(json!({"tactic": {"uid": tactic}}));
        }
    }

    let mut finding = Map::new();
    finding.insert("uid".to_owned(), json!(alarm.alarm_id));
    finding.insert("title".to_owned(), json!(alarm.rule_name));
    put_str(&mut finding, "desc", Some(&alarm.description));
    finding.insert(
        "types".to_owned(),
        json!([alarm.rule_id, alarm_type(alarm.alarm_type)]),
    );
    finding.insert("first_seen_time".to_owned(), json!(ms(alarm.first_seen)));
    finding.insert("last_seen_time".to_owned(), json!(ms(alarm.last_seen)));
    finding.insert(
        "analytic".to_owned(),
        json!({"uid": alarm.rule_id, "name": alarm.rule_name, "type_id": 1, "type": "Rule"}),
    );
    if !attacks.is_empty() {
        finding.insert("attacks".to_owned(), Value::Array(attacks));
    }
    // (A leak alarm may rest on a leak feed or a credential report alone, not on the logs.)
    if alarm.alarm_type != AlarmType::Leak {
        finding.insert(
            "data_sources".to_owned(),
            json!([match alarm.cloud {
                Cloud::Aws => "AWS CloudTrail",
                Cloud::Alibaba => "Alibaba Cloud ActionTrail",
                Cloud::Tencent => "Tencent Cloud CloudAudit",
            }]),
        );
    }
    if let Some(members) = alarm
        .evidence
        .facts
        .get("members")
        .and_then(Value::as_array)
    {
        let related: Vec<Value> = members
            .iter()
            .filter_map(|m| {
                let uid = m.get("alarm_id")?.as_str()?;
                let mut r = Map::new();
                r.insert("uid".to_owned(), json!(uid));
                put_str(&mut r, "title", m.get("rule_id").and_then(Value::as_str));
                for (from, to) in [
                    ("first_seen", "first_seen_time"),
                    ("last_seen", "last_seen_time"),
                ] {
                    if let Some(t) = m
                        .get(from)
                        .and_then(Value::as_str)
                        .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
                    {
                        r.insert(to.to_owned(), json!(t.timestamp_millis()));
                    }
                }
                if let Some(s) = m
                    .get("severity")
                    .cloned()
                    .and_then(|v| serde_json::from_value::<Severity>(v).ok())
                {
                    let (id, name) = severity(s);
                    r.insert("severity_id".to_owned(), json!(id));
                    r.insert("severity".to_owned(), json!(name));
                }
                Some(Value::Object(r))
            })
            .collect();
        let count = alarm
            .evidence
            .facts
            .get("member_count")
            .and_then(Value::as_u64)
            .unwrap_or(related.len() as u64);
        finding.insert("related_events_count".to_owned(), json!(count));
        finding.insert("related_events".to_owned(), Value::Array(related));
    }

    let mut resources = Vec::new();
    if let Some(k) = &alarm.access_key_id {
        resources.push(json!({"uid": k.0, "type": "AccessKey", "role_id": 1, "role": "Target"}));
    }
    if let Some(uid) = alarm
        .principal
        .arn
        .as_deref()
        .or(alarm.principal.id.as_deref())
    {
        let mut r = Map::new();
        r.insert("uid".to_owned(), json!(uid));
        put_str(&mut r, "name", alarm.principal.name.as_deref());
        r.insert(
            "type".to_owned(),
            json!(format!(
                "Principal:{}",
                principal_type(alarm.principal.kind)
            )),
        );
        resources.push(Value::Object(r));
    }
    if let Some(a) = &alarm.account_id {
        resources.push(json!({"uid": a.0, "type": "Account"}));
    }
    for r in &mut resources {
        if let Some(o) = r.as_object_mut() {
            o.insert("provider".to_owned(), json!(provider(alarm.cloud)));
            if let Some(region) = alarm.evidence.facts.get("region").and_then(Value::as_str) {
                o.insert("region".to_owned(), json!(region));
            }
        }
    }

    let facts = Value::Object(
        alarm
            .evidence
            .facts
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
    );
    let latest_api = alarm.apis.last().map(|a| api(a));
    let actor = actor(alarm);
    // The latest hit: its caller, call and IP (the facts name the IP for travel; else the last
    // one listed) with its facts. Then each other source IP alone: which API each one called
    // is not recorded, so none is claimed.
    let latest_ip = alarm
        .evidence
        .facts
        .get("ip")
        .and_then(Value::as_str)
        .and_then(|ip| alarm.source_ips.iter().find(|s| s.ip == ip))
        .or(alarm.source_ips.last());
    let mut evidences = Vec::new();
    let mut first = Map::new();
    if let Some(a) = &actor {
        first.insert("actor".to_owned(), a.clone());
    }
    if let Some(a) = &latest_api {
        first.insert("api".to_owned(), a.clone());
    }
    if let Some(s) = latest_ip {
        first.insert("src_endpoint".to_owned(), endpoint(s));
    }
    if !alarm.evidence.facts.is_empty() || first.is_empty() {
        first.insert("data".to_owned(), facts);
    }
    evidences.push(Value::Object(first));
    for s in &alarm.source_ips {
        if latest_ip.is_some_and(|l| l.ip == s.ip) {
            continue;
        }
        evidences.push(json!({"src_endpoint": endpoint(s)}));
    }

    let mut observables = Vec::new();
    for s in &alarm.source_ips {
        if s.ip.parse::<std::net::IpAddr>().is_ok() {
            observables.push(json!({"name": "evidences.src_endpoint.ip", "type_id": 2, "type": "IP Address", "value": s.ip}));
        }
    }
    if let Some(k) = &alarm.access_key_id {
        observables.push(json!({"name": "actor.user.programmatic_credentials.uid", "type_id": 19, "type": "User Credential ID", "value": k.0}));
    }
    if let Some(n) = &alarm.principal.name {
        observables.push(
            json!({"name": "actor.user.name", "type_id": 4, "type": "User Name", "value": n}),
        );
    }

    let mut cloud = Map::new();
    cloud.insert("provider".to_owned(), json!(provider(alarm.cloud)));
    if let Some(a) = &alarm.account_id {
        let (type_id, kind) = account_type(alarm.cloud);
        cloud.insert(
            "account".to_owned(),
            json!({"uid": a.0, "type_id": type_id, "type": kind}),
        );
    }
    if let Some(region) = alarm.evidence.facts.get("region").and_then(Value::as_str) {
        cloud.insert("region".to_owned(), json!(region));
    }

    let mut out = Map::new();
    out.insert("activity_id".to_owned(), json!(activity_id));
    out.insert("activity_name".to_owned(), json!(activity));
    out.insert("category_uid".to_owned(), json!(CATEGORY_UID));
    out.insert("category_name".to_owned(), json!("Findings"));
    out.insert("class_uid".to_owned(), json!(CLASS_UID));
    out.insert("class_name".to_owned(), json!("Detection Finding"));
    out.insert("type_uid".to_owned(), json!(CLASS_UID * 100 + activity_id));
    out.insert(
        "type_name".to_owned(),
        json!(format!("Detection Finding: {activity}")),
    );
    out.insert("severity_id".to_owned(), json!(severity_id));
    out.insert("severity".to_owned(), json!(severity_name));
    out.insert("status_id".to_owned(), json!(1));
    out.insert("status".to_owned(), json!("New"));
    // An alert when first raised; its updates only add hits.
    out.insert("is_alert".to_owned(), json!(activity_id == 1));
    out.insert("time".to_owned(), json!(ms(alarm.last_seen)));
    out.insert("start_time".to_owned(), json!(ms(alarm.first_seen)));
    out.insert("end_time".to_owned(), json!(ms(alarm.last_seen)));
    out.insert("count".to_owned(), json!(alarm.count));
    put_str(&mut out, "message", Some(&alarm.summary));
    out.insert(
        "metadata".to_owned(),
        json!({
            "version": OCSF_VERSION,
            "product": {
                "name": "akwatch",
                "vendor_name": "akwatch",
                "version": env!("CARGO_PKG_VERSION"),
            },
            "profiles": ["cloud"],
            // One notification (create or update) of the alarm: the finding's own id is
            // `finding_info.uid`.
            "uid": format!("{}:{}", alarm.alarm_id, alarm.count),
            "log_name": "alarms",
        }),
    );
    out.insert("cloud".to_owned(), Value::Object(cloud));
    out.insert("finding_info".to_owned(), Value::Object(finding));
    if let Some(a) = actor {
        out.insert("actor".to_owned(), a);
    }
    if let Some(a) = latest_api {
        out.insert("api".to_owned(), a);
    }
    if !resources.is_empty() {
        out.insert("resources".to_owned(), Value::Array(resources));
    }
    out.insert("evidences".to_owned(), Value::Array(evidences));
    if !observables.is_empty() {
        out.insert("observables".to_owned(), Value::Array(observables));
    }
    put_str_remediation(&mut out, &alarm.advice);
    out.insert(
        "unmapped".to_owned(),
        json!({
            "akwatch": {
                "status": alarm.status,
                "alarm_type": alarm.alarm_type,
                "key_kind": alarm.key_kind,
                "dimension": alarm.dimension,
                "apis": alarm.apis,
                "event_ids": alarm.evidence.event_ids,
                // Each source IP's classes (own / private / service / tor / threat / hosting /
                // cloud / public): OCSF's endpoint `type` is a device type, not this.
                "ip_classes": alarm
                    .source_ips
                    .iter()
                    .map(|s| (s.ip.clone(), json!(s.classes)))
                    .collect::<Map<String, Value>>(),
            }
        }),
    );
    Value::Object(out)
}

/// The finding of the alarm's core alone (its identity, rule, key, times, count), for an
/// output whose message size nothing else fits.
pub fn minimal(alarm: &Alarm) -> Value {
    let cut = |s: &str| crate::alarm::truncate_on_char(s, 128).to_owned();
    let core = Alarm {
        alarm_id: alarm.alarm_id.clone(),
        rule_id: cut(&alarm.rule_id),
        rule_name: cut(&alarm.rule_name),
        access_key_id: alarm
            .access_key_id
            .as_ref()
            .map(|k| crate::event::AccessKeyId(cut(&k.0))),
        account_id: alarm
            .account_id
            .as_ref()
            .map(|a| crate::event::AccountId(cut(&a.0))),
        principal: crate::event::Principal {
            kind: alarm.principal.kind,
            name: None,
            id: None,
            arn: None,
            role: None,
            invoked_by: None,
            mfa: None,
            instance_id: None,
        },
        dimension: None,
        source_ips: Vec::new(),
        apis: Vec::new(),
        evidence: crate::alarm::Evidence::default(),
        summary:
            "only the alarm's core fits the output's message size: see the akwatch log for the rest"
                .to_owned(),
        description: String::new(),
        advice: String::new(),
        attack: alarm.attack.clone(),
        ..alarm.clone()
    };
    detection_finding(&core)
}

fn put_str_remediation(out: &mut Map<String, Value>, advice: &str) {
    if !advice.is_empty() {
        out.insert("remediation".to_owned(), json!({"desc": advice}));
    }
}

fn alarm_type(t: AlarmType) -> &'static str {
    match t {
        AlarmType::AbnormalCall => "abnormal_call",
        AlarmType::Leak => "leak",
        AlarmType::Incident => "incident",
    }
}

fn principal_type(t: PrincipalType) -> &'static str {
    match t {
        PrincipalType::Root => "Root",
        PrincipalType::User => "User",
        PrincipalType::AssumedRole => "AssumedRole",
        PrincipalType::Federated => "Federated",
        PrincipalType::Service => "Service",
        PrincipalType::Unknown => "Unknown",
    }
}
