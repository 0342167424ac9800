//! Policies as data (`rules/policies/*.yaml`): the allowlist, IP hiding and the alarm policy.
//!
//! ```yaml
//! allowlist:
//!   - id: ci-runners
//!     ips: [203.0.113.0/24]          # IP / CIDR
//!     method: api                    # api | console
//!     user_agent: ["terraform/*"]    # globs
//!     keys: [AKIA...]                # or key_class: [permanent | temporary | root]
//!     apis: ["iam:*AccessKey*"]      # service:action globs
//!     outcome: success               # success | failure
//!     rules: [ak.new_source_ip]      # scope (all rules when absent)
//!     expires: 2026-12-31
//!     owner: platform-team
//!     comment: CI deploys from the runner pool
//! ip_hiding:
//!   - keys: [AKIA...]
//!     expires: 2026-12-31            # optional, as in the allowlist
//!     owner: partner-team
//!     comment: partner integration, IPs are theirs
//! alarm_policy:
//!   defaults: {aggregation: 1d, renotify: 1h, allowed_lateness: 15m}
//!   rules:
//!     ak.new_source_ip: {enabled: true, severity: medium, thresholds: {history: 14d},
//!                        expires: 2026-12-31, owner: detection-team}
//! ```
//!
//! `expires` ends an allowlist, IP-hiding or alarm-policy entry the same way: judged on each
//! event's time, an event at or after it is treated as if the entry were not there (a date
//! ends at 23:59:59 UTC).

use std::collections::{BTreeMap, HashSet};
use std::net::IpAddr;
use std::path::Path;

use chrono::{DateTime, Datelike, NaiveDate, Utc};
use ipnetwork::IpNetwork;
use serde::Deserialize;

use crate::enrich::IpSet;
use crate::event::{Event, KeyKind, Outcome, PrincipalType};
use crate::rule::cond::{Globs, OneOrMany};
use crate::rule::{Catalogs, Dur, RuleSet, Severity};

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyFile {
    #[serde(default)]
    allowlist: Vec<AllowSpec>,
    #[serde(default)]
    ip_hiding: Vec<HideSpec>,
    #[serde(default)]
    alarm_policy: Option<AlarmPolicySpec>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct AllowSpec {
    id: Option<String>,
    #[serde(default)]
    ips: Vec<String>,
    method: Option<String>,
    user_agent: Option<OneOrMany<String>>,
    #[serde(default)]
    keys: Vec<String>,
    key_class: Option<OneOrMany<String>>,
    apis: Option<OneOrMany<String>>,
    outcome: Option<String>,
    #[serde(default)]
    rules: Vec<String>,
    expires: Option<String>,
    owner: Option<String>,
    comment: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct HideSpec {
    /// Names the entry (the API's entries have one; files may).
    #[serde(default)]
    id: Option<String>,
    keys: Vec<String>,
    expires: Option<String>,
    owner: Option<String>,
    comment: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct AlarmPolicySpec {
    #[serde(default)]
    defaults: Option<RulePolicySpec>,
    #[serde(default)]
    rules: BTreeMap<String, RulePolicySpec>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RulePolicySpec {
    enabled: Option<bool>,
    severity: Option<Severity>,
    /// Detector parameters by name (`count`, `window`, `history`, `learning`, ...).
    #[serde(default)]
    thresholds: BTreeMap<String, String>,
    aggregation: Option<Dur>,
    renotify: Option<Dur>,
    allowed_lateness: Option<Dur>,
    /// Per rule only: the entry no longer applies to events from then on.
    expires: Option<String>,
    owner: Option<String>,
}

/// Which calls an allowlist entry covers; every given member must match.
#[derive(Debug, Clone)]
pub struct AllowEntry {
    pub id: String,
    ips: Option<IpSet>,
    console: Option<bool>,
    user_agent: Option<Globs>,
    keys: HashSet<String>,
    key_class: Vec<String>,
    apis: Option<Globs>,
    outcome: Option<Outcome>,
    /// Rule ids in scope (all when empty).
    pub rules: Vec<String>,
    pub expires: Option<DateTime<Utc>>,
    pub owner: Option<String>,
    pub comment: Option<String>,
}

impl AllowEntry {
    /// Whether the entry names this key.
    pub fn names_key(&self, key: &str) -> bool {
        self.keys.contains(key)
    }

    /// Whether the entry covers a call of `key` from `ip` to `api` as far as the inventory's
    /// hourly rollups can tell: keys, IPs and APIs are judged; the members the rollups do not
    /// keep ([`AllowEntry::unjudged_members`]) are taken as matching.
    pub fn covers_call(&self, key: &str, ip: Option<IpAddr>, api: &str) -> bool {
        (self.keys.is_empty() || self.keys.contains(key))
            && self
                .ips
                .as_ref()
                .is_none_or(|set| ip.is_some_and(|ip| set.contains(ip)))
            && self.apis.as_ref().is_none_or(|g| g.matches(api))
    }

    /// The members given that hourly rollups cannot judge (a preview over them ignores these).
    pub fn unjudged_members(&self) -> Vec<&'static str> {
        let mut out = Vec::new();
        if self.console.is_some() {
            out.push("method");
        }
        if self.user_agent.is_some() {
            out.push("user_agent");
        }
        if !self.key_class.is_empty() {
            out.push("key_class");
        }
        if self.outcome.is_some() {
            out.push("outcome");
        }
        if !self.rules.is_empty() {
            out.push("rules");
        }
        out
    }

    /// The keys the entry names (empty: any key).
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.keys.iter().map(String::as_str)
    }

    pub fn covers(&self, rule_id: &str, e: &Event) -> bool {
        if !self.rules.is_empty() && !self.rules.iter().any(|r| r == rule_id) {
            return false;
        }
        if self.expires.is_some_and(|x| e.event_time >= x) {
            return false;
        }
        if let Some(ips) = &self.ips
            && !e.source_ip.is_some_and(|ip: IpAddr| ips.contains(ip))
        {
            return false;
        }
        if self.console.is_some_and(|c| c != e.console) {
            return false;
        }
        if let Some(g) = &self.user_agent
            && !e.user_agent.as_deref().is_some_and(|ua| g.matches(ua))
        {
            return false;
        }
        if !self.keys.is_empty()
            && !e
                .access_key_id
                .as_ref()
                .is_some_and(|k| self.keys.contains(k.as_str()))
        {
            return false;
        }
        if !self.key_class.is_empty() {
            let class_ok = self.key_class.iter().any(|c| match c.as_str() {
                "permanent" => e.key_kind == KeyKind::Permanent,
                "temporary" => e.key_kind == KeyKind::Temporary,
                "root" => e.principal.kind == PrincipalType::Root && e.access_key_id.is_some(),
                _ => false,
            });
            if !class_ok {
                return false;
            }
        }
        if let Some(g) = &self.apis
            && !g.matches(&e.api())
        {
            return false;
        }
        self.outcome.is_none_or(|o| o == e.outcome)
    }
}

/// Per-rule alarm settings after the policy.
#[derive(Debug, Clone)]
pub struct RulePolicy {
    pub enabled: bool,
    pub severity: Option<Severity>,
    pub thresholds: BTreeMap<String, String>,
    pub aggregation: Dur,
    pub renotify: Dur,
    /// Events at or after this time get the rule as if the entry were not there
    /// ([`Policy::default_rule`]).
    pub expires: Option<DateTime<Utc>>,
    pub owner: Option<String>,
}

/// All policies.
#[derive(Debug, Clone)]
pub struct Policy {
    pub allowlist: Vec<AllowEntry>,
    /// The keys whose IPs are hidden, each until when (events at or after it are not hidden;
    /// `None`: no end). Several entries naming a key hide it while any of them applies.
    pub hidden_keys: rustc_hash::FxHashMap<String, Option<DateTime<Utc>>>,
    pub rules: BTreeMap<String, RulePolicy>,
    pub default_aggregation: Dur,
    pub default_renotify: Dur,
    /// How late an event may arrive and still be counted in its windows.
    pub allowed_lateness: Dur,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            allowlist: Vec::new(),
            hidden_keys: Default::default(),
            rules: BTreeMap::new(),
            default_aggregation: Dur(86_400),
            default_renotify: Dur(3600),
            allowed_lateness: Dur(15 * 60),
        }
    }
}

impl Policy {
    pub fn rule(&self, id: &str) -> RulePolicy {
        self.rules
            .get(id)
            .cloned()
            .unwrap_or_else(|| self.default_rule())
    }

    /// A rule's settings without an entry of its own (the defaults only).
    pub fn default_rule(&self) -> RulePolicy {
        RulePolicy {
            enabled: true,
            severity: None,
            thresholds: BTreeMap::new(),
            aggregation: self.default_aggregation,
            renotify: self.default_renotify,
            expires: None,
            owner: None,
        }
    }

    /// Whether the event's key has its IPs hidden at the event's time.
    pub fn is_hidden(&self, e: &Event) -> bool {
        e.access_key_id
            .as_ref()
            .and_then(|k| self.hidden_keys.get(k.as_str()))
            .is_some_and(|until| until.is_none_or(|x| e.event_time < x))
    }

    /// Whether an IP-hiding entry names the key (expired or not), and until when.
    pub fn hiding(&self, key: &str) -> Option<Option<DateTime<Utc>>> {
        self.hidden_keys.get(key).copied()
    }

    /// The allowlist entry covering this hit, if any.
    pub fn allowed(&self, rule_id: &str, e: &Event) -> Option<&AllowEntry> {
        self.allowlist.iter().find(|a| a.covers(rule_id, e))
    }

    /// Loads several policy directories into one policy (see [`Policy::load`]).
    pub fn load_dirs(dirs: &[std::path::PathBuf], rules: &RuleSet) -> Result<Policy, Vec<String>> {
        let mut policy = Policy::default();
        let mut errors = Vec::new();
        for dir in dirs {
            if let Err(mut e) = policy.load_into(dir, rules) {
                errors.append(&mut e);
            }
        }
        if errors.is_empty() {
            Ok(policy)
        } else {
            Err(errors)
        }
    }

    /// [`Policy::load_dirs`] with some files' text given instead of read (a change checked
    /// before it is written: the same loader, the same messages). A given file that does not
    /// exist yet is added.
    pub fn load_dirs_replacing(
        dirs: &[std::path::PathBuf],
        rules: &RuleSet,
        replace: &[(std::path::PathBuf, String)],
    ) -> Result<Policy, Vec<String>> {
        let mut policy = Policy::default();
        let mut errors = Vec::new();
        for dir in dirs {
            if let Err(mut e) = policy.load_into_replacing(dir, rules, replace) {
                errors.append(&mut e);
            }
        }
        if errors.is_empty() {
            Ok(policy)
        } else {
            Err(errors)
        }
    }

    /// Loads every `*.yaml` in `dir` (missing dir: empty policy). Rule ids named in scopes and
    /// the alarm policy must exist in `rules`. All problems are returned, with file and line.
    pub fn load(dir: &Path, rules: &RuleSet) -> Result<Policy, Vec<String>> {
        let mut policy = Policy::default();
        policy.load_into(dir, rules)?;
        Ok(policy)
    }

    fn load_into(&mut self, dir: &Path, rules: &RuleSet) -> Result<(), Vec<String>> {
        self.load_into_replacing(dir, rules, &[])
    }

    fn load_into_replacing(
        &mut self,
        dir: &Path,
        rules: &RuleSet,
        replace: &[(std::path::PathBuf, String)],
    ) -> Result<(), Vec<String>> {
        let given: Vec<&(std::path::PathBuf, String)> = replace
            .iter()
            .filter(|(p, _)| p.parent() == Some(dir))
            .collect();
        if !dir.is_dir() && given.is_empty() {
            return Ok(());
        }
        let mut errors = Vec::new();
        let mut files: Vec<_> = walkdir::WalkDir::new(dir)
            .sort_by_file_name()
            .into_iter()
            .filter_map(Result::ok)
            .filter(|e| {
                e.file_type().is_file()
                    && e.path()
                        .extension()
                        .is_some_and(|x| x == "yaml" || x == "yml")
            })
            .map(walkdir::DirEntry::into_path)
            .collect();
        for (p, _) in &given {
            if !files.contains(p) {
                files.push(p.clone());
            }
        }
        files.sort();
        for file in files {
            let name = file.display().to_string();
            let text = match given.iter().find(|(p, _)| *p == file) {
                Some((_, t)) => t.clone(),
                None => match std::fs::read_to_string(&file) {
                    Ok(t) => t,
                    Err(e) => {
                        errors.push(format!("{name}: cannot read: {e}"));
                        continue;
                    }
                },
            };
            if let Err(mut e) = self.add_file(&name, &text, rules) {
                errors.append(&mut e);
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors)
        }
    }

    /// Adds one policy file's text.
    pub fn add_file(&mut self, name: &str, text: &str, rules: &RuleSet) -> Result<(), Vec<String>> {
        let spec: PolicyFile = serde_saphyr::from_str(text).map_err(|e| {
            let msg = e.to_string();
            vec![
                crate::rule::duration_error_at(name, text, &msg)
                    .unwrap_or_else(|| format!("{name}: {}", crate::rule::first_line(&msg))),
            ]
        })?;
        let mut errors = Vec::new();
        let line_of = |needle: &str| {
            text.lines()
                .position(|l| l.contains(needle))
                .map_or(1, |i| i + 1)
        };
        let known = |id: &str| rules.get(id).is_some();
        let catalogs: &Catalogs = &rules.catalogs;
        for (i, a) in spec.allowlist.into_iter().enumerate() {
            let id = a.id.clone().unwrap_or_else(|| format!("allowlist[{i}]"));
            let line = line_of(a.id.as_deref().unwrap_or("allowlist"));
            let mut err =
                |m: String| errors.push(format!("{name}:{line}: allowlist entry {id}: {m}"));
            let mut nets = Vec::new();
            for ip in &a.ips {
                match ip
                    .parse::<IpNetwork>()
                    .or_else(|_| ip.parse::<IpAddr>().map(IpNetwork::from))
                {
                    Ok(n) => nets.push(n),
                    Err(_) => err(format!("not an IP or CIDR: {ip:?}")),
                }
            }
            let console = match a.method.as_deref() {
                None => None,
                Some("console") => Some(true),
                Some("api" | "sdk") => Some(false),
                Some(m) => {
                    err(format!("method must be api or console, not {m:?}"));
                    None
                }
            };
            let globs = |v: &Option<OneOrMany<String>>, err: &mut dyn FnMut(String)| match v {
                None => None,
                Some(v) => match Globs::compile(&v.to_vec(), catalogs) {
                    Ok(g) => Some(g),
                    Err(e) => {
                        err(e);
                        None
                    }
                },
            };
            let user_agent = globs(&a.user_agent, &mut err);
            let apis = globs(&a.apis, &mut err);
            let key_class = a
                .key_class
                .as_ref()
                .map(OneOrMany::to_vec)
                .unwrap_or_default();
            for c in &key_class {
                if !["permanent", "temporary", "root"].contains(&c.as_str()) {
                    err(format!(
                        "key_class must be permanent, temporary or root, not {c:?}"
                    ));
                }
            }
            let outcome = match a.outcome.as_deref() {
                None => None,
                Some("success") => Some(Outcome::Success),
                Some("failure") => Some(Outcome::Failure),
                Some(o) => {
                    err(format!("outcome must be success or failure, not {o:?}"));
                    None
                }
            };
            for r in &a.rules {
                if !known(r) {
                    err(format!("unknown rule {r:?} in rules"));
                }
            }
            let expires = match a.expires.as_deref().map(check_expiry) {
                None => None,
                Some(Ok(t)) => Some(t),
                Some(Err(m)) => {
                    err(m);
                    None
                }
            };
            let empty = nets.is_empty()
                && console.is_none()
                && user_agent.is_none()
                && a.keys.is_empty()
                && key_class.is_empty()
                && apis.is_none()
                && outcome.is_none();
            if empty {
                err("matches every call: give at least one of ips, method, user_agent, keys, key_class, apis, outcome".into());
            }
            self.allowlist.push(AllowEntry {
                id,
                ips: (!nets.is_empty()).then(|| IpSet::from_networks(nets)),
                console,
                user_agent,
                keys: a.keys.into_iter().collect(),
                key_class,
                apis,
                outcome,
                rules: a.rules,
                expires,
                owner: a.owner,
                comment: a.comment,
            });
        }
        for (i, h) in spec.ip_hiding.into_iter().enumerate() {
            if h.keys.is_empty() {
                errors.push(format!(
                    "{name}:{}: ip_hiding entry without keys",
                    line_of("ip_hiding")
                ));
            }
            // As the allowlist's: the entry's id (or its place) names it, on the id's line.
            let id = h.id.clone().unwrap_or_else(|| format!("ip_hiding[{i}]"));
            let expires = match h.expires.as_deref().map(|x| (x, check_expiry(x))) {
                None => None,
                Some((_, Ok(t))) => Some(t),
                Some((x, Err(m))) => {
                    // (An entry without an id: the line of its `expires`.)
                    let line = match h.id.as_deref() {
                        Some(id) => line_of(id),
                        None => text
                            .lines()
                            .position(|l| l.contains("expires") && l.contains(x))
                            .map_or_else(|| line_of("ip_hiding"), |i| i + 1),
                    };
                    errors.push(format!("{name}:{line}: ip_hiding entry {id}: {m}"));
                    None
                }
            };
            let _ = (h.owner, h.comment);
            for k in h.keys {
                let slot = self.hidden_keys.entry(k).or_insert(expires);
                // Hidden while any entry applies: no end wins, else the latest end.
                *slot = match (*slot, expires) {
                    (Some(a), Some(b)) => Some(a.max(b)),
                    _ => None,
                };
            }
        }
        // The first line from `from` (1-based, inclusive) holding `needle`, else `from`.
        let line_after = |from: usize, needle: &str| {
            text.lines()
                .enumerate()
                .skip(from.saturating_sub(1))
                .find(|(_, l)| l.contains(needle))
                .map_or(from, |(i, _)| i + 1)
        };
        if let Some(ap) = spec.alarm_policy {
            if let Some(d) = ap.defaults {
                let from = line_of("defaults");
                for (what, problem) in check_settings(&d) {
                    errors.push(format!(
                        "{name}:{}: alarm_policy.defaults: {problem}",
                        line_after(from, what)
                    ));
                }
                if d.expires.is_some() {
                    errors.push(format!(
                        "{name}:{}: alarm_policy.defaults: expires is set per rule, not in defaults",
                        line_after(from, "expires")
                    ));
                }
                if let Some(a) = d.aggregation {
                    self.default_aggregation = a;
                }
                if let Some(r) = d.renotify {
                    self.default_renotify = r;
                }
                if let Some(l) = d.allowed_lateness {
                    self.allowed_lateness = l;
                }
            }
            for (id, r) in ap.rules {
                let Some(rule) = rules.get(&id) else {
                    errors.push(format!(
                        "{name}:{}: alarm_policy: unknown rule {id:?}",
                        line_of(&id)
                    ));
                    continue;
                };
                let from = line_of(&id);
                if r.allowed_lateness.is_some() {
                    errors.push(format!("{name}:{}: alarm_policy: allowed_lateness is set in defaults, not per rule", line_of(&id)));
                }
                for (what, problem) in check_settings(&r) {
                    errors.push(format!(
                        "{name}:{}: alarm_policy.rules.{id}: {problem}",
                        line_after(from, what)
                    ));
                }
                let expires = match r.expires.as_deref().map(check_expiry) {
                    None => None,
                    Some(Ok(t)) => Some(t),
                    Some(Err(m)) => {
                        errors.push(format!(
                            "{name}:{}: alarm_policy.rules.{id}: {m}",
                            line_after(from, "expires")
                        ));
                        None
                    }
                };
                // Each detector parameter as the engine will apply it, one at a time so that
                // each problem gets its own line.
                for (param, value) in &r.thresholds {
                    let one = BTreeMap::from([(param.clone(), value.clone())]);
                    if let Err(e) = rule.clone().apply_thresholds(&one) {
                        errors.push(format!(
                            "{name}:{}: alarm_policy.rules.{id}.thresholds: {e}",
                            line_after(from, param)
                        ));
                    }
                }
                self.rules.insert(
                    id,
                    RulePolicy {
                        enabled: r.enabled.unwrap_or(true),
                        severity: r.severity,
                        thresholds: r.thresholds,
                        aggregation: r.aggregation.unwrap_or(self.default_aggregation),
                        renotify: r.renotify.unwrap_or(self.default_renotify),
                        expires,
                        owner: r.owner,
                    },
                );
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors)
        }
    }
}

/// The longest `allowed_lateness`: windows hold their span plus the lateness, per key.
pub const MAX_LATENESS: Dur = Dur(7 * 86_400);

/// Alarm settings out of range, as (member, message): `aggregation` at least 1s (durations are
/// at most 10 years by [`Dur::parse`]), `allowed_lateness` at most [`MAX_LATENESS`].
fn check_settings(r: &RulePolicySpec) -> Vec<(&'static str, String)> {
    let mut bad = Vec::new();
    if r.aggregation.is_some_and(|a| a.secs() < 1) {
        bad.push((
            "aggregation",
            "aggregation must be at least 1s, not 0s".to_owned(),
        ));
    }
    if let Some(l) = r.allowed_lateness
        && l > MAX_LATENESS
    {
        bad.push((
            "allowed_lateness",
            format!("allowed_lateness must be at most {MAX_LATENESS}, not {l}"),
        ));
    }
    bad
}

/// Expiry dates from 2000 on (an earlier one is a typo: the entry would never apply).
const MIN_EXPIRY_YEAR: i32 = 2000;

/// An entry's `expires` checked, with the one message every policy kind gives.
fn check_expiry(x: &str) -> Result<DateTime<Utc>, String> {
    match parse_expiry(x) {
        Some(t) if t.year() < MIN_EXPIRY_YEAR => Err(format!(
            "expires: {x:?} is before {MIN_EXPIRY_YEAR}: the entry would never apply"
        )),
        Some(t) => Ok(t),
        None => Err(format!("expires: not a date or time: {x:?}")),
    }
}

/// An entry's `expires`: RFC 3339, or a date (the entry ends at its last second, UTC).
pub fn parse_expiry(s: &str) -> Option<DateTime<Utc>> {
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Some(t.with_timezone(&Utc));
    }
    let d = NaiveDate::parse_from_str(s, "%Y-%m-%d").ok()?;
    Some(d.and_hms_opt(23, 59, 59)?.and_utc())
}
