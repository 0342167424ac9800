//! The test cases each rule file carries: short events (everything defaulted but what the
//! case is about), with the enrichment they would have, and whether the rule must fire.

use std::net::IpAddr;

use chrono::{DateTime, Duration, TimeZone, Utc};
use serde::Deserialize;

use super::Dur;
use crate::enrich::{Enrichment, GeoInfo, IpClass, KeyFacts, LeakEntry};
use crate::event::{
    AccessKeyId, AccountId, Cloud, Event, KeyKind, Origin, Outcome, Principal, PrincipalType,
    Request,
};

/// One test case of a rule.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TestSpec {
    pub name: String,
    /// `alarm`: the rule must fire on some event of the case; `none`: on none of them.
    pub expect: String,
    /// With `expect: alarm`: how many distinct alarms of the rule the case raises (the rule's
    /// dimension and aggregation at work: one per incident, not per event).
    #[serde(default)]
    pub alarms: Option<u32>,
    /// Detector parameters for this case (as in the alarm policy), to keep cases short.
    #[serde(default)]
    pub thresholds: std::collections::BTreeMap<String, String>,
    pub events: Vec<TestEvent>,
}

impl TestSpec {
    pub fn expect_alarm(&self) -> bool {
        self.expect == "alarm"
    }

    pub fn validate(&self) -> Result<(), String> {
        if self.expect != "alarm" && self.expect != "none" {
            return Err(format!(
                "expect must be alarm or none, not {:?}",
                self.expect
            ));
        }
        if self.events.is_empty() {
            return Err("no events".into());
        }
        if self.alarms.is_some() && !self.expect_alarm() {
            return Err("alarms: a count of alarms goes with expect: alarm".into());
        }
        for (i, e) in self.events.iter().enumerate() {
            e.build(i)
                .map_err(|err| format!("event {}: {err}", i + 1))?;
        }
        Ok(())
    }
}

/// Report facts a test event's key has.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TestKeyFacts {
    #[serde(default = "yes")]
    pub active: bool,
    pub last_used_days_ago: Option<i64>,
    pub created_days_ago: Option<i64>,
    #[serde(default)]
    pub never_used: bool,
    #[serde(default)]
    pub at_risk: bool,
}

fn yes() -> bool {
    true
}

/// A test event; every member has a default.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TestEvent {
    /// Offset from the case's start (default: one minute per event).
    pub at: Option<Dur>,
    pub cloud: Option<String>,
    /// `service:action` (sets both).
    pub api: Option<String>,
    pub service: Option<String>,
    pub action: Option<String>,
    /// The access key (default `AKIATESTKEY000000001`); `none` for a call without one.
    pub key: Option<String>,
    pub key_kind: Option<String>,
    pub principal_type: Option<String>,
    pub principal_name: Option<String>,
    pub principal_id: Option<String>,
    pub account: Option<String>,
    pub instance_id: Option<String>,
    pub invoked_by: Option<String>,
    /// The source IP (default `198.51.100.10`); `none` with `address` for a non-IP source.
    pub ip: Option<String>,
    pub address: Option<String>,
    pub user_agent: Option<String>,
    pub region: Option<String>,
    #[serde(default)]
    pub console: bool,
    pub outcome: Option<String>,
    pub error_code: Option<String>,
    pub read_only: Option<bool>,
    pub target_user: Option<String>,
    pub policy: Option<String>,
    pub created_key: Option<String>,
    pub resource: Option<String>,
    /// The request parameters as the log writes them; their effects (`effect:`) are worked
    /// out as the decoder does.
    pub request: Option<serde_json::Value>,
    pub geo: Option<GeoInfo>,
    #[serde(default)]
    pub ip_class: Vec<String>,
    pub report_key: Option<TestKeyFacts>,
    #[serde(default)]
    pub leaked: bool,
    /// When given, the rule must (true) or must not (false) fire on this very event.
    pub fires: Option<bool>,
}

/// The most days ago a test event's report key may have been created or last used.
pub const MAX_DAYS_AGO: i64 = 36_500;

/// Test cases start here.
pub fn test_epoch() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2025, 6, 2, 8, 0, 0)
        .single()
        .unwrap_or_default()
}

fn enum_value<T: for<'de> Deserialize<'de>>(s: &str, what: &str) -> Result<T, String> {
    serde_json::from_value(serde_json::Value::String(s.to_owned()))
        .map_err(|_| format!("unknown {what} {s:?}"))
}

impl TestEvent {
    /// The event and the enrichment it stands for.
    pub fn build(&self, index: usize) -> Result<(Event, Enrichment), String> {
        // `at` is at most Dur::MAX (10 years); the default, a minute per event, is checked too.
        let at = match self.at {
            Some(d) => d.secs(),
            None => i64::try_from(index)
                .ok()
                .and_then(|i| i.checked_mul(60))
                .filter(|s| *s <= Dur::MAX.secs())
                .ok_or_else(|| "too many events for one-minute steps".to_owned())?,
        };
        let event_time = Duration::try_seconds(at)
            .and_then(|d| test_epoch().checked_add_signed(d))
            .ok_or_else(|| format!("at: {} is out of range", Dur(at)))?;
        let days_before = |what: &str,
                           days: Option<i64>|
         -> Result<Option<DateTime<Utc>>, String> {
            let Some(d) = days else { return Ok(None) };
            if !(0..=MAX_DAYS_AGO).contains(&d) {
                return Err(format!(
                    "report_key.{what} must be between 0 and {MAX_DAYS_AGO} (100 years), not {d}"
                ));
            }
            Duration::try_days(d)
                .and_then(|d| event_time.checked_sub_signed(d))
                .map(Some)
                .ok_or_else(|| format!("report_key.{what}: {d} days is out of range"))
        };
        let (created, last_used) = match &self.report_key {
            Some(k) => (
                days_before("created_days_ago", k.created_days_ago)?,
                days_before("last_used_days_ago", k.last_used_days_ago)?,
            ),
            None => (None, None),
        };
        let cloud: Cloud = self.cloud.as_deref().unwrap_or("aws").parse()?;
        let (mut service, mut action) = ("sts".to_owned(), "GetCallerIdentity".to_owned());
        if let Some(api) = &self.api {
            let (s, a) = api
                .split_once(':')
                .ok_or_else(|| format!("api {api:?} is not service:action"))?;
            (service, action) = (s.to_owned(), a.to_owned());
        }
        if let Some(s) = &self.service {
            service = s.clone();
        }
        if let Some(a) = &self.action {
            action = a.clone();
        }
        let key = match self.key.as_deref() {
            Some("none") => None,
            Some(k) => Some(k.to_owned()),
            None => Some("AKIATESTKEY000000001".to_owned()),
        };
        let key_kind = match (&self.key_kind, &key) {
            (Some(k), _) => enum_value(k, "key_kind")?,
            (None, None) => KeyKind::None,
            (None, Some(k)) if k.starts_with("ASIA") || k.starts_with("STS.") => KeyKind::Temporary,
            (None, Some(_)) => KeyKind::Permanent,
        };
        let principal_type: PrincipalType = enum_value(
            self.principal_type.as_deref().unwrap_or("user"),
            "principal_type",
        )?;
        let source_ip: Option<IpAddr> = match self.ip.as_deref() {
            Some("none") => None,
            Some(ip) => Some(ip.parse().map_err(|_| format!("bad ip {ip:?}"))?),
            None => Some(
                "198.51.100.10"
                    .parse()
                    .map_err(|_| "default ip".to_owned())?,
            ),
        };
        let outcome: Outcome = enum_value(self.outcome.as_deref().unwrap_or("success"), "outcome")?;
        let mut ip_class = Vec::new();
        for c in &self.ip_class {
            ip_class.push(IpClass::parse(c).ok_or_else(|| format!("unknown ip_class {c:?}"))?);
        }
        // As the decoder does: a candidate call's effects, from its parameters or their absence.
        let effects = if crate::provider::effects::is_candidate(&action) {
            crate::provider::effects::of(&action, &self.request.clone().unwrap_or_default())
        } else {
            Vec::new()
        };
        let event = Event {
            cloud,
            event_id: format!("test-{index}"),
            event_time,
            account_id: Some(AccountId(
                self.account
                    .clone()
                    .unwrap_or_else(|| "111122223333".to_owned()),
            )),
            principal: Principal {
                kind: principal_type,
                name: Some(
                    self.principal_name
                        .clone()
                        .unwrap_or_else(|| "alice".to_owned()),
                ),
                id: self.principal_id.clone(),
                arn: None,
                role: None,
                invoked_by: self.invoked_by.clone(),
                mfa: None,
                instance_id: self.instance_id.clone(),
            },
            access_key_id: key.map(AccessKeyId),
            key_kind,
            source_ip,
            source_address: self
                .address
                .clone()
                .or_else(|| source_ip.map(|ip| ip.to_string())),
            user_agent: Some(
                self.user_agent
                    .clone()
                    .unwrap_or_else(|| "aws-cli/2.15.0 Python/3.11.6 Linux/6.1".to_owned()),
            ),
            region: Some(
                self.region
                    .clone()
                    .unwrap_or_else(|| "us-east-1".to_owned()),
            ),
            service,
            action,
            read_only: self.read_only,
            console: self.console,
            outcome,
            error_code: self
                .error_code
                .clone()
                .or_else(|| (outcome == Outcome::Failure).then(|| "AccessDenied".to_owned())),
            request_id: None,
            request: Request {
                target_user: self.target_user.clone(),
                policy: self.policy.clone(),
                created_key_id: self.created_key.clone().map(AccessKeyId),
                resource: self.resource.clone(),
                effects,
            },
            origin: Origin::default(),
        };
        let geo = self.geo.clone().map(std::sync::Arc::new);
        let key_facts = self.report_key.as_ref().map(|k| KeyFacts {
            active: k.active,
            created,
            last_used,
            never_used: k.never_used,
            at_risk: k.at_risk,
        });
        let leak = self.leaked.then(|| LeakEntry {
            key_id: event
                .access_key_id
                .as_ref()
                .map(|k| k.0.clone())
                .unwrap_or_default(),
            source: "test".to_owned(),
            location: None,
            found_at: None,
        });
        let enrichment = Enrichment {
            geo,
            ip_class: Default::default(),
            key: key_facts,
            principal: None,
            leak,
            admin_via: None,
        };
        // The classes a real classifier would give without lists, plus the test's own.
        let mut e = enrichment;
        match (source_ip, event.source_address.as_deref()) {
            (Some(ip), _) if crate::enrich::is_private(ip) => e.ip_class.insert(IpClass::Private),
            (Some(_), _) => e.ip_class.insert(IpClass::Public),
            (None, Some(a)) if crate::enrich::is_service_address(a) => {
                e.ip_class.insert(IpClass::Service)
            }
            (None, _) => e.ip_class.insert(IpClass::Unknown),
        }
        for c in ip_class {
            e.ip_class.insert(c);
        }
        Ok((event, e))
    }
}

/// The result of one test case.
#[derive(Debug, Clone)]
pub struct TestOutcome {
    pub rule_id: String,
    pub file: std::path::PathBuf,
    pub test: String,
    /// Empty when the case passed.
    pub failures: Vec<String>,
    /// Whether the case expects an alarm.
    pub positive: bool,
    /// The rule's alarms the case notified, in order (its golden output).
    pub alarms: Vec<crate::alarm::Alarm>,
}

/// Runs every test case of every rule, each on a fresh engine that holds only that rule.
pub fn run_tests(set: &super::RuleSet) -> Vec<TestOutcome> {
    let mut out = Vec::new();
    for rule in &set.rules {
        for test in &rule.tests {
            let mut failures = Vec::new();
            let mut rule = rule.clone();
            if let Err(e) = rule.apply_thresholds(&test.thresholds) {
                failures.push(format!("thresholds: {e}"));
            }
            let single = super::RuleSet {
                rules: vec![rule.clone()],
                catalogs: set.catalogs.clone(),
            };
            let mut engine =
                match crate::engine::Engine::new(&single, crate::policy::Policy::default()) {
                    Ok(e) => e,
                    Err(e) => {
                        failures.extend(e);
                        out.push(TestOutcome {
                            rule_id: rule.id.clone(),
                            file: rule.file.clone(),
                            test: test.name.clone(),
                            failures,
                            positive: test.expect_alarm(),
                            alarms: Vec::new(),
                        });
                        continue;
                    }
                };
            let mut fired_any = false;
            let mut alarm_ids = std::collections::BTreeSet::new();
            let mut alarms = Vec::new();
            for (i, te) in test.events.iter().enumerate() {
                let (event, enrichment) = match te.build(i) {
                    Ok(x) => x,
                    Err(e) => {
                        failures.push(format!("event {}: {e}", i + 1));
                        continue;
                    }
                };
                // The production path: detection, the policy, then aggregation into alarms.
                // An event fires when the rule hits on it (a later hit of the same alarm is
                // aggregated, not notified again); the test expects an alarm notified.
                let hits_before = engine.stats.hits.get(&rule.id).copied().unwrap_or(0);
                let notified = engine.process(&event, &enrichment);
                let fired = engine.stats.hits.get(&rule.id).copied().unwrap_or(0) > hits_before;
                fired_any |= notified.iter().any(|a| a.rule_id == rule.id);
                alarm_ids.extend(
                    notified
                        .iter()
                        .filter(|a| a.rule_id == rule.id)
                        .map(|a| a.alarm_id.clone()),
                );
                alarms.extend(notified.into_iter().filter(|a| a.rule_id == rule.id));
                if let Some(want) = te.fires
                    && want != fired
                {
                    failures.push(format!(
                        "event {} ({}): expected the rule {} fire, it did{}",
                        i + 1,
                        event.api(),
                        if want { "to" } else { "not to" },
                        if fired { "" } else { " not" }
                    ));
                }
            }
            if fired_any != test.expect_alarm() {
                failures.push(format!(
                    "expected {}, the rule {}",
                    if test.expect_alarm() {
                        "an alarm"
                    } else {
                        "no alarm"
                    },
                    if fired_any { "fired" } else { "did not fire" }
                ));
            }
            if let Some(want) = test.alarms
                && alarm_ids.len() != want as usize
            {
                failures.push(format!(
                    "expected {want} distinct alarm(s), the rule raised {}",
                    alarm_ids.len()
                ));
            }
            out.push(TestOutcome {
                rule_id: rule.id.clone(),
                file: rule.file.clone(),
                test: test.name.clone(),
                failures,
                positive: test.expect_alarm(),
                alarms,
            });
        }
    }
    out
}
