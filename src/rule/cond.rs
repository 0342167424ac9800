//! Rule conditions: the YAML form (`CondSpec`) and the compiled predicate (`Cond`).

use serde::Deserialize;
use wildmatch::WildMatchPattern;

use super::catalog::Catalogs;
use crate::enrich::{IpClass, IpClasses};
use crate::event::{Cloud, Event, KeyKind, Outcome, PrincipalType};

/// One value or a list of them.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany<T> {
    One(T),
    Many(Vec<T>),
}

impl<T: Clone> OneOrMany<T> {
    pub fn to_vec(&self) -> Vec<T> {
        match self {
            OneOrMany::One(t) => vec![t.clone()],
            OneOrMany::Many(v) => v.clone(),
        }
    }
}

/// The largest `key_idle_days_min`.
pub const MAX_IDLE_DAYS: i64 = 36_500;

/// A condition as written in a rule file: every member given must hold (`any`, `all` and
/// `not` combine conditions). Text matches are case-insensitive globs (`*`, `?`); `@name`
/// refers to a catalog under `rules/catalogs/`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CondSpec {
    pub cloud: Option<OneOrMany<String>>,
    pub service: Option<OneOrMany<String>>,
    pub action: Option<OneOrMany<String>>,
    /// `service:action`, e.g. `iam:*AccessKey*`.
    pub api: Option<OneOrMany<String>>,
    pub region: Option<OneOrMany<String>>,
    pub principal_type: Option<OneOrMany<String>>,
    pub key_kind: Option<OneOrMany<String>>,
    /// The call was signed with an access key.
    pub has_key: Option<bool>,
    pub console: Option<bool>,
    pub outcome: Option<OneOrMany<String>>,
    pub read_only: Option<bool>,
    pub error_code: Option<OneOrMany<String>>,
    pub user_agent: Option<OneOrMany<String>>,
    /// Any of these IP classes (`own`, `private`, `service`, `tor`, `threat`, `hosting`,
    /// `cloud`, `public`, `unknown`).
    pub ip_class: Option<OneOrMany<String>>,
    /// A cloud service made the call on the principal's behalf (`invokedBy`).
    pub invoked_by_service: Option<bool>,
    /// A VM's instance-role session.
    pub instance_session: Option<bool>,
    /// Whom the request targets: `self`, `other`, `any` (some user) or `none`.
    pub target_user: Option<String>,
    pub policy: Option<OneOrMany<String>>,
    /// The request created an access key.
    pub created_key: Option<bool>,
    /// Any of these effects of the request's parameters (`logging_weakened`,
    /// `versioning_suspended`, `opened_to_internet`, `user_data_changed`, `layer_added`,
    /// `password_reset`, `container_credentials_read`).
    pub effect: Option<OneOrMany<String>>,
    /// The key is known to be leaked (leak feed, report flag, quarantine policy).
    pub leaked: Option<bool>,
    /// The report says the key is disabled (or every key of the principal is).
    pub key_inactive: Option<bool>,
    /// Days since the key was last used before this call (engine history or report; a key
    /// never used counts from its creation), at least this many.
    pub key_idle_days_min: Option<i64>,
    /// The source IP has not been seen for this key in the `new_source_ip` history.
    pub ip_new_for_key: Option<bool>,
    pub any: Option<Vec<CondSpec>>,
    pub all: Option<Vec<CondSpec>>,
    pub not: Option<Box<CondSpec>>,
}

/// One non-plain pattern, lower-cased.
#[derive(Debug, Clone)]
enum Matcher {
    Prefix(String),
    Suffix(String),
    /// `*text*`
    Contains(String),
    Wild(WildMatchPattern<'*', '?'>),
}

impl Matcher {
    fn new(lower: &str, original: &str) -> Matcher {
        let wild = |s: &str| s.contains(['*', '?']);
        if let Some(inner) = lower
            .strip_prefix('*')
            .and_then(|x| x.strip_suffix('*'))
            .filter(|x| !wild(x))
        {
            Matcher::Contains(inner.to_owned())
        } else if let Some(prefix) = lower.strip_suffix('*').filter(|head| !wild(head)) {
            Matcher::Prefix(prefix.to_owned())
        } else if let Some(suffix) = lower.strip_prefix('*').filter(|tail| !wild(tail)) {
            Matcher::Suffix(suffix.to_owned())
        } else {
            Matcher::Wild(WildMatchPattern::new_case_insensitive(original))
        }
    }

    fn matches(&self, lower: &str, original: &str) -> bool {
        match self {
            Matcher::Prefix(p) => lower.starts_with(p.as_str()),
            Matcher::Suffix(p) => lower.ends_with(p.as_str()),
            Matcher::Contains(p) => lower.contains(p.as_str()),
            Matcher::Wild(w) => w.matches(original),
        }
    }
}

/// A compiled glob set (case-insensitive), expanded from `@catalog` references. Catalogs hold
/// hundreds of `service:action` entries, so: plain names are looked up in a hash set, patterns
/// whose service part is plain (`iam:Attach*Policy`) are only tried on calls to that service,
/// and the rest (`*:List*`, `*kali*`) on every value.
#[derive(Debug, Clone, Default)]
pub struct Globs {
    exact: rustc_hash::FxHashSet<String>,
    by_service: rustc_hash::FxHashMap<String, Vec<Matcher>>,
    general: Vec<Matcher>,
    /// `*text*` patterns, matched in one pass, case-insensitively (hacker-tool signatures).
    contains: Option<aho_corasick::AhoCorasick>,
    /// The answers of `contains` for long values, by value: user agents repeat, and the scan
    /// costs more than a lookup. Shared by the clones of one compiled set; emptied when full.
    contains_seen: ContainsCache,
}

/// The cache of `contains` answers, by value.
#[derive(Clone, Default)]
struct ContainsCache(std::sync::Arc<dashmap::DashMap<Box<str>, bool, rustc_hash::FxBuildHasher>>);

/// Without its entries: a rule's `Debug` is its definition (the engine's rule fingerprint and
/// reload matching compare it), which the values seen so far are no part of.
impl std::fmt::Debug for ContainsCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ContainsCache")
    }
}

// Unwind-safe to share (a rule set crosses `catch_unwind`): an entry is a pure function of the
// patterns and the value, inserted whole or not at all, so a panic cannot leave a wrong answer.
impl std::panic::RefUnwindSafe for ContainsCache {}
impl std::panic::UnwindSafe for ContainsCache {}

/// Values of this many bytes have their `contains` answer cached (shorter ones scan faster
/// than a lookup; longer ones, rare and attacker-sized, are not kept).
const CACHE_LEN: std::ops::RangeInclusive<usize> = 24..=512;
/// Distinct values a glob set's cache holds before it is emptied (at most ~2 MiB).
const CACHE_MAX: usize = 4_096;

impl Globs {
    pub fn compile(patterns: &[String], catalogs: &Catalogs) -> Result<Self, String> {
        let mut all = Vec::new();
        for p in patterns {
            match p.strip_prefix('@') {
                Some(name) => all.extend(catalogs.expand(name)?),
                None => all.push(p.clone()),
            }
        }
        let mut g = Globs::default();
        let mut contains: Vec<String> = Vec::new();
        for p in all {
            let lower = p.to_ascii_lowercase();
            if !lower.contains(['*', '?']) {
                g.exact.insert(lower);
                continue;
            }
            let matcher = Matcher::new(&lower, &p);
            if let Matcher::Contains(text) = &matcher
                && !text.contains(':')
            {
                contains.push(text.clone());
                continue;
            }
            match lower.split_once(':') {
                Some((service, _)) if !service.contains(['*', '?']) => g
                    .by_service
                    .entry(service.to_owned())
                    .or_default()
                    .push(matcher),
                _ => g.general.push(matcher),
            }
        }
        if !contains.is_empty() {
            let ac = aho_corasick::AhoCorasick::builder()
                .ascii_case_insensitive(true)
                .build(&contains)
                .map_err(|e| format!("cannot compile {} patterns: {e}", contains.len()))?;
            g.contains = Some(ac);
        }
        Ok(g)
    }

    /// Whether a `*text*` pattern matches `s` (cached per value when it is long).
    fn contains_match(&self, ac: &aho_corasick::AhoCorasick, s: &str) -> bool {
        if !CACHE_LEN.contains(&s.len()) {
            return ac.is_match(s);
        }
        let cache = &self.contains_seen.0;
        if let Some(hit) = cache.get(s) {
            return *hit;
        }
        let hit = ac.is_match(s);
        if cache.len() >= CACHE_MAX {
            cache.clear();
        }
        cache.insert(s.into(), hit);
        hit
    }

    pub fn matches(&self, s: &str) -> bool {
        if let Some(ac) = &self.contains
            && self.contains_match(ac, s)
        {
            return true;
        }
        if self.exact.is_empty() && self.by_service.is_empty() && self.general.is_empty() {
            return false;
        }
        // Few plain names and nothing else (an action, an outcome code): compare in place.
        if self.by_service.is_empty() && self.general.is_empty() && self.exact.len() <= 4 {
            return self.exact.iter().any(|e| e.eq_ignore_ascii_case(s));
        }
        self.matches_lower(&s.to_ascii_lowercase(), s)
    }

    /// `matches` for a text the caller has lower-cased already (`lower`, and the original `s`).
    pub fn matches_lower(&self, lower: &str, s: &str) -> bool {
        if self.exact.contains(lower) {
            return true;
        }
        if let Some(ac) = &self.contains
            && self.contains_match(ac, lower)
        {
            return true;
        }
        if !self.by_service.is_empty()
            && let Some((service, _)) = lower.split_once(':')
            && let Some(matchers) = self.by_service.get(service)
            && matchers.iter().any(|m| m.matches(lower, s))
        {
            return true;
        }
        self.general.iter().any(|m| m.matches(lower, s))
    }
}

/// What conditions read beyond the event: enrichment and the engine's per-key history.
#[derive(Debug, Clone, Copy)]
pub struct Facts<'a> {
    pub event: &'a Event,
    pub ip_classes: IpClasses,
    pub leaked: bool,
    pub key_inactive: bool,
    pub key_idle_days: Option<u32>,
    pub ip_new_for_key: bool,
    /// `service:action`.
    pub api: &'a str,
    /// The same, lower-cased once for the case-insensitive matchers.
    pub api_lower: &'a str,
    /// The source IP as text, formatted once.
    pub ip: Option<&'a str>,
}

#[derive(Debug, Clone)]
pub enum Target {
    SelfUser,
    Other,
    Any,
    None,
}

/// A compiled condition.
#[derive(Debug, Clone)]
pub enum Cond {
    True,
    Cloud(Vec<Cloud>),
    Service(Globs),
    Action(Globs),
    Api(Globs),
    Region(Globs),
    PrincipalType(Vec<PrincipalType>),
    KeyKind(Vec<KeyKind>),
    HasKey(bool),
    Console(bool),
    Outcome(Outcome),
    ReadOnly(bool),
    ErrorCode(Globs),
    UserAgent(Globs),
    IpClass(IpClasses),
    InvokedByService(bool),
    InstanceSession(bool),
    Target(Target),
    Policy(Globs),
    CreatedKey(bool),
    Effect(Vec<crate::event::Effect>),
    Leaked(bool),
    KeyInactive(bool),
    KeyIdleDaysMin(u32),
    IpNewForKey(bool),
    All(Vec<Cond>),
    Any(Vec<Cond>),
    Not(Box<Cond>),
}

fn parse_each<T>(
    values: &OneOrMany<String>,
    what: &str,
    parse: impl Fn(&str) -> Option<T>,
) -> Result<Vec<T>, String> {
    values
        .to_vec()
        .iter()
        .map(|v| parse(v).ok_or_else(|| format!("unknown {what} {v:?}")))
        .collect()
}

impl Cond {
    /// Compiles a spec; the error names the member and the bad value.
    pub fn compile(spec: &CondSpec, catalogs: &Catalogs) -> Result<Cond, String> {
        let mut all = Vec::new();
        let globs = |v: &OneOrMany<String>, member: &str| {
            Globs::compile(&v.to_vec(), catalogs).map_err(|e| format!("{member}: {e}"))
        };
        if let Some(v) = &spec.cloud {
            all.push(Cond::Cloud(parse_each(v, "cloud", |s| s.parse().ok())?));
        }
        if let Some(v) = &spec.service {
            all.push(Cond::Service(globs(v, "service")?));
        }
        if let Some(v) = &spec.action {
            all.push(Cond::Action(globs(v, "action")?));
        }
        if let Some(v) = &spec.api {
            all.push(Cond::Api(globs(v, "api")?));
        }
        if let Some(v) = &spec.region {
            all.push(Cond::Region(globs(v, "region")?));
        }
        if let Some(v) = &spec.principal_type {
            all.push(Cond::PrincipalType(parse_each(v, "principal_type", |s| {
                serde_json::from_value(serde_json::Value::String(s.to_owned())).ok()
            })?));
        }
        if let Some(v) = &spec.key_kind {
            all.push(Cond::KeyKind(parse_each(v, "key_kind", |s| {
                serde_json::from_value(serde_json::Value::String(s.to_owned())).ok()
            })?));
        }
        if let Some(b) = spec.has_key {
            all.push(Cond::HasKey(b));
        }
        if let Some(b) = spec.console {
            all.push(Cond::Console(b));
        }
        if let Some(v) = &spec.outcome {
            let outcomes: Vec<Outcome> = parse_each(v, "outcome", |s| {
                serde_json::from_value(serde_json::Value::String(s.to_owned())).ok()
            })?;
            // Both outcomes: no constraint.
            if let [one] = outcomes.as_slice() {
                all.push(Cond::Outcome(*one));
            }
        }
        if let Some(b) = spec.read_only {
            all.push(Cond::ReadOnly(b));
        }
        if let Some(v) = &spec.error_code {
            all.push(Cond::ErrorCode(globs(v, "error_code")?));
        }
        if let Some(v) = &spec.user_agent {
            all.push(Cond::UserAgent(globs(v, "user_agent")?));
        }
        if let Some(v) = &spec.ip_class {
            all.push(Cond::IpClass(
                parse_each(v, "ip_class", IpClass::parse)?
                    .into_iter()
                    .collect(),
            ));
        }
        if let Some(b) = spec.invoked_by_service {
            all.push(Cond::InvokedByService(b));
        }
        if let Some(b) = spec.instance_session {
            all.push(Cond::InstanceSession(b));
        }
        if let Some(t) = &spec.target_user {
            all.push(Cond::Target(match t.as_str() {
                "self" => Target::SelfUser,
                "other" => Target::Other,
                "any" => Target::Any,
                "none" => Target::None,
                other => {
                    return Err(format!(
                        "target_user: expected self, other, any or none, found {other:?}"
                    ));
                }
            }));
        }
        if let Some(v) = &spec.policy {
            all.push(Cond::Policy(globs(v, "policy")?));
        }
        if let Some(b) = spec.created_key {
            all.push(Cond::CreatedKey(b));
        }
        if let Some(v) = &spec.effect {
            all.push(Cond::Effect(parse_each(
                v,
                "effect",
                crate::event::Effect::parse,
            )?));
        }
        if let Some(b) = spec.leaked {
            all.push(Cond::Leaked(b));
        }
        if let Some(b) = spec.key_inactive {
            all.push(Cond::KeyInactive(b));
        }
        if let Some(d) = spec.key_idle_days_min {
            match u32::try_from(d) {
                Ok(days) if d <= MAX_IDLE_DAYS => all.push(Cond::KeyIdleDaysMin(days)),
                _ => {
                    return Err(format!(
                        "key_idle_days_min must be between 0 and {MAX_IDLE_DAYS} (100 years), not {d}"
                    ));
                }
            }
        }
        if let Some(b) = spec.ip_new_for_key {
            all.push(Cond::IpNewForKey(b));
        }
        if let Some(list) = &spec.any {
            let conds = list
                .iter()
                .map(|c| Cond::compile(c, catalogs))
                .collect::<Result<Vec<_>, _>>()?;
            all.push(Cond::Any(conds));
        }
        if let Some(list) = &spec.all {
            let conds = list
                .iter()
                .map(|c| Cond::compile(c, catalogs))
                .collect::<Result<Vec<_>, _>>()?;
            all.push(Cond::All(conds));
        }
        if let Some(not) = &spec.not {
            all.push(Cond::Not(Box::new(Cond::compile(not, catalogs)?)));
        }
        Ok(match all.len() {
            0 => Cond::True,
            1 => all.pop().unwrap_or(Cond::True),
            _ => Cond::All(all),
        })
    }

    /// Whether the condition reads the source IP or what is derived from it (IP-hidden keys
    /// skip such rules).
    pub fn uses_ip(&self) -> bool {
        match self {
            Cond::IpClass(_) | Cond::IpNewForKey(_) => true,
            Cond::All(c) | Cond::Any(c) => c.iter().any(Cond::uses_ip),
            Cond::Not(c) => c.uses_ip(),
            _ => false,
        }
    }

    pub fn eval(&self, f: &Facts<'_>) -> bool {
        let e = f.event;
        match self {
            Cond::True => true,
            Cond::Cloud(c) => c.contains(&e.cloud),
            Cond::Service(g) => g.matches(&e.service),
            Cond::Action(g) => g.matches(&e.action),
            Cond::Api(g) => g.matches_lower(f.api_lower, f.api),
            Cond::Region(g) => e.region.as_deref().is_some_and(|r| g.matches(r)),
            Cond::PrincipalType(t) => t.contains(&e.principal.kind),
            Cond::KeyKind(k) => k.contains(&e.key_kind),
            Cond::HasKey(b) => e.access_key_id.is_some() == *b,
            Cond::Console(b) => e.console == *b,
            Cond::Outcome(o) => e.outcome == *o,
            Cond::ReadOnly(b) => e.read_only == Some(*b),
            Cond::ErrorCode(g) => e.error_code.as_deref().is_some_and(|c| g.matches(c)),
            Cond::UserAgent(g) => e.user_agent.as_deref().is_some_and(|ua| g.matches(ua)),
            Cond::IpClass(c) => f.ip_classes.intersects(*c),
            Cond::InvokedByService(b) => e.principal.invoked_by.is_some() == *b,
            Cond::InstanceSession(b) => e.principal.instance_id.is_some() == *b,
            Cond::Target(t) => {
                let target = e.request.target_user.as_deref();
                let is_self = target.is_some_and(|t| is_same_user(t, e));
                match t {
                    Target::SelfUser => target.is_none() || is_self,
                    Target::Other => target.is_some() && !is_self,
                    Target::Any => target.is_some(),
                    Target::None => target.is_none(),
                }
            }
            Cond::Policy(g) => e.request.policy.as_deref().is_some_and(|p| g.matches(p)),
            Cond::CreatedKey(b) => e.request.created_key_id.is_some() == *b,
            Cond::Effect(want) => e.request.effects.iter().any(|x| want.contains(x)),
            Cond::Leaked(b) => f.leaked == *b,
            Cond::KeyInactive(b) => f.key_inactive == *b,
            Cond::KeyIdleDaysMin(d) => f.key_idle_days.is_some_and(|idle| idle >= *d),
            Cond::IpNewForKey(b) => f.ip_new_for_key == *b,
            Cond::All(c) => c.iter().all(|c| c.eval(f)),
            Cond::Any(c) => c.iter().any(|c| c.eval(f)),
            Cond::Not(c) => !c.eval(f),
        }
    }
}

/// The request targets the caller itself: same user name (RAM UPN or not), or same UIN.
pub fn is_same_user(target: &str, e: &Event) -> bool {
    let name = e.principal.name.as_deref().unwrap_or("");
    target == name
        || e.principal.id.as_deref() == Some(target)
        || name.split('@').next() == Some(target)
        || target.split('@').next() == Some(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The cache of `*text*` answers gives the scan's answers, case-insensitively, and stays
    /// within its cap however many distinct values come.
    #[test]
    fn contains_answers_are_cached_within_a_cap() {
        let g = Globs::compile(
            &["*sqlmap*".to_owned(), "*pacu*".to_owned()],
            &Catalogs::default(),
        )
        .unwrap();
        let tool = "Mozilla/5.0 (compatible; SQLMap/1.8; +https://sqlmap.org)";
        let sdk = "aws-sdk-go-v2/1.26.1 os/linux lang/go#1.22.1 md/GOOS#linux";
        for _ in 0..3 {
            assert!(g.matches(tool));
            assert!(!g.matches(sdk));
            assert!(g.matches_lower(&tool.to_ascii_lowercase(), tool));
        }
        assert!(g.clone().matches(tool), "a clone shares the answers");
        for i in 0..CACHE_MAX * 2 {
            let ua = format!("aws-cli/2.{i} Python/3.11 Linux/6.1 exe/x86_64");
            assert!(!g.matches(&ua));
            assert!(g.matches(&format!("{ua} pacu/1.6")));
        }
        assert!(g.contains_seen.0.len() <= CACHE_MAX);
        // Past the cached lengths: scanned every time, never kept.
        let long = format!("{} sqlmap", "x".repeat(4_000));
        assert!(g.matches(&long));
        assert!(!g.contains_seen.0.contains_key(long.as_str()));
    }
}
