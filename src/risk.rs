//! Configuration risks from credential reports: keys not rotated or unused for 90 days, root
//! keys, two active keys, console passwords without MFA, keys flagged at risk, passwords never
//! rotated.

use chrono::{DateTime, Duration, Utc};
use schemars::JsonSchema;
use serde::Serialize;

use crate::event::{AccountId, Cloud};
use crate::report::{Cell, ReportPrincipal, ReportSnapshot};
use crate::rule::Severity;

const STALE_DAYS: i64 = 90;

/// One configuration risk. Its first field is `"kind": "risk"` (an alarm's is `"kind":
/// "alarm"`).
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
#[serde(tag = "kind", rename = "risk")]
#[schemars(rename = "Risk", transform = crate::alarm::kind_property::<false>)]
pub struct Risk {
    pub risk_id: &'static str,
    pub name: &'static str,
    pub severity: Severity,
    pub cloud: Cloud,
    pub account_id: Option<AccountId>,
    pub principal: String,
    /// The key slot (1, 2, ...) the risk is about, if a key.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_slot: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_id: Option<String>,
    pub detail: String,
    pub advice: &'static str,
    /// `file:line` of the report row.
    pub source: String,
}

/// The time a report speaks for: when it was generated, else the latest time it holds.
pub fn report_time(s: &ReportSnapshot) -> DateTime<Utc> {
    if let Some(t) = s.generated_at {
        return t;
    }
    let mut latest: Option<DateTime<Utc>> = None;
    let mut see = |c: &Cell<DateTime<Utc>>| {
        if let Some(t) = c.value() {
            latest = Some(latest.map_or(*t, |l| l.max(*t)));
        }
    };
    for p in &s.principals {
        see(&p.created);
        see(&p.password.last_used);
        see(&p.password.last_changed);
        if let Some(l) = &p.last_login {
            see(l);
        }
        for k in &p.keys {
            see(&k.last_used);
            see(&k.last_rotated);
            see(&k.created);
        }
    }
    latest.unwrap_or_else(Utc::now)
}

fn days(d: Duration) -> i64 {
    d.num_days()
}

/// Every risk in one report, as of `now` (see [`report_time`]).
pub fn risks(s: &ReportSnapshot, now: DateTime<Utc>) -> Vec<Risk> {
    let mut out = Vec::new();
    for p in &s.principals {
        principal_risks(s, p, now, &mut out);
    }
    out
}

fn principal_risks(
    s: &ReportSnapshot,
    p: &ReportPrincipal,
    now: DateTime<Utc>,
    out: &mut Vec<Risk>,
) {
    let risk = |risk_id,
                name,
                severity,
                key_slot: Option<u32>,
                key_id: Option<String>,
                detail: String,
                advice| Risk {
        risk_id,
        name,
        severity,
        cloud: s.cloud,
        account_id: s.account_id.clone(),
        principal: p.name.clone(),
        key_slot,
        key_id,
        detail,
        advice,
        source: format!("{}:{}", s.source, p.line),
    };
    let active: Vec<_> = p.keys.iter().filter(|k| k.active).collect();
    if p.root && !active.is_empty() {
        out.push(risk(
            "risk.root_active_key",
            "Root account has an active access key",
            Severity::Critical,
            Some(active[0].slot),
            active[0].id.as_ref().map(|k| k.0.clone()),
            format!("{} active key(s) on the root / main account", active.len()),
            "Delete the root account's access keys; use users or roles for programmatic access.",
        ));
    }
    if active.len() >= 2 {
        out.push(risk(
            "risk.two_active_keys",
            "Two active access keys",
            Severity::Low,
            None,
            None,
            format!("{} active keys", active.len()),
            "Keep one active key per user; delete the one left over from a rotation.",
        ));
    }
    for k in &p.keys {
        let key_id = k.id.as_ref().map(|x| x.0.clone());
        let born = k.created.value().or(k.last_rotated.value()).copied();
        if k.active
            && let Some(rotated) = k.last_rotated.value().or(k.created.value())
            && days(now - *rotated) > STALE_DAYS
        {
            out.push(risk(
                "risk.key_not_rotated",
                "Access key not rotated in 90 days",
                Severity::Medium,
                Some(k.slot),
                key_id.clone(),
                format!("created / last rotated {} days ago", days(now - *rotated)),
                "Rotate the key: create a new one, move the workload, disable and delete the old one.",
            ));
        }
        let unused = match (k.last_used.value(), born) {
            (Some(used), _) => (days(now - *used) > STALE_DAYS)
                .then(|| format!("last used {} days ago", days(now - *used))),
            (None, Some(b))
                if matches!(k.last_used, Cell::NotApplicable) && days(now - b) > STALE_DAYS =>
            {
                Some(format!("never used, created {} days ago", days(now - b)))
            }
            _ => None,
        };
        if let Some(detail) = unused {
            out.push(risk(
                "risk.key_unused",
                "Access key unused for 90 days",
                Severity::Medium,
                Some(k.slot),
                key_id.clone(),
                format!("{detail}{}", if k.active { "" } else { " (disabled)" }),
                "Delete keys nobody uses; a dormant key is the one that leaks unnoticed.",
            ));
        }
        if k.at_risk.value() == Some(&true) {
            out.push(risk(
                "risk.key_at_risk",
                "Access key flagged as possibly leaked",
                Severity::High,
                Some(k.slot),
                key_id.clone(),
                "the cloud's report flags this key as possibly leaked".to_owned(),
                "Disable and replace the key; find where it was exposed.",
            ));
        }
    }
    let password = p.password.enabled.value() == Some(&true)
        && p.password
            .active
            .as_ref()
            .is_none_or(|a| a.value() != Some(&false));
    if password && p.mfa_active.value() == Some(&false) {
        out.push(risk(
            "risk.console_without_mfa",
            "Console password without MFA",
            if p.root {
                Severity::Critical
            } else {
                Severity::High
            },
            None,
            None,
            "console sign-in by password, no MFA device".to_owned(),
            "Require MFA for every console user (and login protection on Tencent Cloud).",
        ));
    }
    if password {
        let never = match (p.password.last_changed.value(), p.created.value()) {
            (None, _) => true,
            (Some(changed), Some(created)) => {
                *changed - *created < Duration::days(1) && days(now - *changed) > STALE_DAYS
            }
            (Some(_), None) => false,
        };
        if never {
            out.push(risk(
                "risk.password_never_rotated",
                "Console password never rotated",
                Severity::Low,
                None,
                None,
                "the password was never changed since the user was created".to_owned(),
                "Have the user change it, and set a password rotation policy.",
            ));
        }
    }
}
