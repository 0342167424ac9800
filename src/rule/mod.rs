//! Rules as data: `rules/**/*.yaml`, each one detector kind over a condition, with its own
//! positive and negative test events. Loading reports every problem of every file at once,
//! with file and line; `akwatch check-rules` and start-up use the same loader.

pub mod catalog;
pub mod cond;
pub mod testing;

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_saphyr::Spanned;

pub use catalog::Catalogs;
pub use cond::{Cond, CondSpec, Facts, Globs, OneOrMany};
pub use testing::TestSpec;

/// A span of event time, written `30s`, `10m`, `6h`, `10d` or `2w`: from 0 to
/// [`Dur::MAX`] (10 years); the arithmetic is checked, so a long one is an error, never a wrap.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Dur(pub i64);

impl Dur {
    /// The longest duration a rule, a policy or a rule test may give: 10 years (3650d).
    pub const MAX: Dur = Dur(3650 * 86_400);

    pub fn secs(self) -> i64 {
        self.0
    }

    pub fn parse(s: &str) -> Result<Dur, String> {
        let t = s.trim();
        let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
        let (n, unit) = t.split_at(split);
        let mult: i64 = match unit {
            "s" | "" => 1,
            "m" => 60,
            "h" => 3600,
            "d" => 86_400,
            "w" => 7 * 86_400,
            _ if n.is_empty() => {
                return Err(format!(
                    "bad duration {s:?} (expected e.g. 30s, 10m, 6h, 10d)"
                ));
            }
            _ => return Err(format!("bad duration unit in {s:?} (s, m, h, d or w)")),
        };
        if n.is_empty() {
            return Err(format!(
                "bad duration {s:?} (expected e.g. 30s, 10m, 6h, 10d)"
            ));
        }
        let too_long = || format!("duration {s:?} is longer than 10 years (3650d)");
        // Only digits: a parse failure is an overflow.
        let n: i64 = n.parse().map_err(|_| too_long())?;
        n.checked_mul(mult)
            .filter(|secs| *secs <= Dur::MAX.0)
            .map(Dur)
            .ok_or_else(too_long)
    }
}

/// The largest `count` of a threshold and `min` of a distinct detector.
pub const MAX_COUNT: i64 = 100_000;
/// The largest `baseline_factor`.
pub const MAX_FACTOR: f64 = 1e6;
/// The largest `min_distance_km`: half the Earth's circumference (no two places are further).
pub const MAX_DISTANCE_KM: f64 = 20_040.0;
/// The largest `max_speed_kmh`.
pub const MAX_SPEED_KMH: f64 = 1e6;

/// A whole count within `1..=MAX_COUNT`.
fn count_in_range(what: &str, n: i64) -> Result<u32, String> {
    if (1..=MAX_COUNT).contains(&n) {
        u32::try_from(n).map_err(|_| format!("{what} must be between 1 and {MAX_COUNT}, not {n}"))
    } else {
        Err(format!("{what} must be between 1 and {MAX_COUNT}, not {n}"))
    }
}

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Dur::parse(&s).map_err(serde::de::Error::custom)
    }
}

impl fmt::Display for Dur {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = self.0;
        if s % 86_400 == 0 && s > 0 {
            write!(f, "{}d", s / 86_400)
        } else if s % 3600 == 0 && s > 0 {
            write!(f, "{}h", s / 3600)
        } else if s % 60 == 0 && s > 0 {
            write!(f, "{}m", s / 60)
        } else {
            write!(f, "{s}s")
        }
    }
}

#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    Info,
    Low,
    Medium,
    High,
    Critical,
}

impl Severity {
    /// One level higher (critical stays critical).
    pub fn raised(self) -> Severity {
        match self {
            Severity::Info => Severity::Low,
            Severity::Low => Severity::Medium,
            Severity::Medium => Severity::High,
            Severity::High | Severity::Critical => Severity::Critical,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Low => "low",
            Severity::Medium => "medium",
            Severity::High => "high",
            Severity::Critical => "critical",
        }
    }
}

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum AlarmType {
    #[default]
    AbnormalCall,
    Leak,
    /// Several alarms of one key that together make one incident (`ak.attack_sequence`).
    Incident,
}

/// An attribute of an event that detectors count, remember or split alarms by.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum Attr {
    #[default]
    None,
    SourceIp,
    Country,
    City,
    Asn,
    Api,
    Action,
    Region,
    UserAgent,
    Resource,
    TargetUser,
    /// The name of the user-agent signature the rule's `user_agent` condition matched (a
    /// sub-catalog's name: `hacker_tools.kali` → `kali`): one alarm per key and tool, not per
    /// raw user agent, which carries versions and per-invocation ids. A dimension only.
    Tool,
}

impl Attr {
    pub fn as_str(self) -> &'static str {
        match self {
            Attr::None => "none",
            Attr::SourceIp => "source_ip",
            Attr::Country => "country",
            Attr::City => "city",
            Attr::Asn => "asn",
            Attr::Api => "api",
            Attr::Action => "action",
            Attr::Region => "region",
            Attr::UserAgent => "user_agent",
            Attr::Resource => "resource",
            Attr::TargetUser => "target_user",
            Attr::Tool => "tool",
        }
    }

    /// Attributes that come from the source IP (skipped for IP-hidden keys).
    pub fn from_ip(self) -> bool {
        matches!(
            self,
            Attr::SourceIp | Attr::Country | Attr::City | Attr::Asn
        )
    }
}

/// How a `sequence` links its second step to the first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Link {
    /// Both steps by the same key.
    SameKey,
    /// The second step uses the key the first step created.
    CreatedKey,
}

/// A detector as written in a rule file.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum DetectorSpec {
    /// Every event that meets the condition.
    Match,
    /// The attribute's value is new for the key within `history`; never during the key's first
    /// `learning` period.
    FirstSeen {
        attribute: Attr,
        history: Dur,
        #[serde(default)]
        learning: Dur,
    },
    /// At least `count` matching events by the key within `window`; with `baseline_factor`, also
    /// at least that many times the key's own average per `window` over `baseline_history`.
    Threshold {
        window: Dur,
        count: i64,
        #[serde(default)]
        baseline_factor: Option<f64>,
        #[serde(default)]
        baseline_history: Option<Dur>,
    },
    /// At least `min` distinct values of each listed attribute within `window`.
    Distinct {
        window: Dur,
        min: BTreeMap<Attr, i64>,
    },
    /// Two located successful calls more than `min_distance_km` apart at more than
    /// `max_speed_kmh`.
    Velocity {
        min_distance_km: f64,
        max_speed_kmh: f64,
        #[serde(default = "default_velocity_gap")]
        max_gap: Dur,
    },
    /// `first` happened, then this event within `within`, linked as `link` says; with
    /// `or_same_ip`, also when this event comes from the IP `first` came from.
    Sequence {
        first: Box<CondSpec>,
        within: Dur,
        link: Link,
        #[serde(default)]
        or_same_ip: bool,
    },
}

fn default_velocity_gap() -> Dur {
    Dur(24 * 3600)
}

/// A rule file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleSpec {
    pub id: String,
    pub name: String,
    pub severity: Severity,
    #[serde(default)]
    pub alarm_type: AlarmType,
    pub description: String,
    pub advice: String,
    /// The MITRE ATT&CK tactics and techniques the rule stands for (required).
    #[serde(default)]
    pub attack: crate::alarm::Attack,
    /// The attribute that splits alarms (one alarm per key and value); `none` by default.
    #[serde(default)]
    pub dimension: Attr,
    /// Stronger rules that, when they hit the same event, suppress this one's hit (counted in
    /// `akwatch_superseded_hits_total`): `audit_tamper` over `sensitive_api` for one call.
    #[serde(default)]
    pub superseded_by: Vec<String>,
    #[serde(default)]
    pub when: Option<Spanned<CondSpec>>,
    #[serde(default)]
    pub detector: Option<OneOrMany<DetectorSpec>>,
    /// Raise the severity for hits that also meet a condition (e.g. self-granted admin).
    #[serde(default)]
    pub severity_when: Vec<SeverityWhen>,
    /// `geoip`: the rule needs a GeoIP / ASN database and is disabled without one.
    #[serde(default)]
    pub requires: Vec<String>,
    #[serde(default)]
    pub tests: Vec<TestSpec>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SeverityWhen {
    pub when: CondSpec,
    pub severity: Severity,
}

/// A compiled detector.
#[derive(Debug, Clone)]
pub enum Detector {
    Match,
    FirstSeen {
        attr: Attr,
        history: i64,
        learning: i64,
    },
    Threshold {
        window: i64,
        count: u32,
        baseline: Option<(f64, i64)>,
    },
    Distinct {
        window: i64,
        min: Vec<(Attr, u32)>,
    },
    Velocity {
        min_km: f64,
        max_kmh: f64,
        max_gap: i64,
    },
    Sequence {
        first: Cond,
        within: i64,
        link: Link,
        or_same_ip: bool,
    },
}

impl Detector {
    fn uses_ip(&self) -> bool {
        match self {
            Detector::FirstSeen { attr, .. } => attr.from_ip(),
            Detector::Distinct { min, .. } => min.iter().any(|(a, _)| a.from_ip()),
            Detector::Velocity { .. } => true,
            Detector::Sequence { first, .. } => first.uses_ip(),
            Detector::Match | Detector::Threshold { .. } => false,
        }
    }

    /// The detector's parameters out of range, each as (parameter, message): every window is
    /// longer than 0 and at most [`Dur::MAX`], counts are within `1..=MAX_COUNT`, factors,
    /// distances and speeds finite and within their bounds. The engine relies on this (a window
    /// of 0 would divide by zero).
    pub fn check(&self) -> Vec<(&'static str, String)> {
        let mut bad = Vec::new();
        let mut dur = |name: &'static str, secs: i64, min: i64| {
            if secs < min || secs > Dur::MAX.0 {
                bad.push((
                    name,
                    if secs < min {
                        format!("{name} must be longer than 0s, not {}", Dur(secs))
                    } else {
                        format!("{name} must be at most 10 years (3650d), not {secs}s")
                    },
                ));
            }
        };
        match self {
            Detector::Match => {}
            Detector::FirstSeen {
                history, learning, ..
            } => {
                dur("history", *history, 1);
                dur("learning", *learning, 0);
            }
            Detector::Threshold {
                window,
                count,
                baseline,
            } => {
                dur("window", *window, 1);
                if let Some((factor, history)) = baseline {
                    dur("baseline_history", *history, 1);
                    if !(factor.is_finite() && *factor > 0.0 && *factor <= MAX_FACTOR) {
                        bad.push((
                            "baseline_factor",
                            format!(
                                "baseline_factor must be a number above 0 and at most {MAX_FACTOR}, not {factor}"
                            ),
                        ));
                    }
                    if history <= window {
                        bad.push((
                            "baseline_history",
                            format!(
                                "baseline_history ({}) must be longer than the window ({})",
                                Dur(*history),
                                Dur(*window)
                            ),
                        ));
                    }
                }
                if let Err(e) = count_in_range("count", i64::from(*count)) {
                    bad.push(("count", e));
                }
            }
            Detector::Distinct { window, min } => {
                dur("window", *window, 1);
                for (attr, m) in min {
                    if let Err(e) = count_in_range(&format!("min.{}", attr.as_str()), i64::from(*m))
                    {
                        bad.push(("min", e));
                    }
                }
            }
            Detector::Velocity {
                min_km,
                max_kmh,
                max_gap,
            } => {
                dur("max_gap", *max_gap, 1);
                if !(min_km.is_finite() && (0.0..=MAX_DISTANCE_KM).contains(min_km)) {
                    bad.push((
                        "min_distance_km",
                        format!(
                            "min_distance_km must be between 0 and {MAX_DISTANCE_KM}, not {min_km}"
                        ),
                    ));
                }
                if !(max_kmh.is_finite() && *max_kmh > 0.0 && *max_kmh <= MAX_SPEED_KMH) {
                    bad.push((
                        "max_speed_kmh",
                        format!(
                            "max_speed_kmh must be above 0 and at most {MAX_SPEED_KMH}, not {max_kmh}"
                        ),
                    ));
                }
            }
            Detector::Sequence { within, .. } => dur("within", *within, 1),
        }
        bad
    }

    /// How far back this detector looks, for state expiry.
    pub fn horizon(&self) -> i64 {
        match self {
            Detector::Match => 0,
            Detector::FirstSeen { history, .. } => *history,
            Detector::Threshold {
                window, baseline, ..
            } => baseline.map_or(*window, |(_, h)| h.max(*window)),
            Detector::Distinct { window, .. } => *window,
            Detector::Velocity { max_gap, .. } => *max_gap,
            Detector::Sequence { within, .. } => *within,
        }
    }
}

/// A loaded, compiled rule.
#[derive(Debug, Clone)]
pub struct Rule {
    pub id: String,
    pub name: String,
    pub severity: Severity,
    pub alarm_type: AlarmType,
    pub description: String,
    pub advice: String,
    pub attack: crate::alarm::Attack,
    pub dimension: Attr,
    /// Rules whose hit on the same event suppresses this one's.
    pub superseded_by: Vec<String>,
    /// With the `tool` dimension: each signature's name and patterns, in catalog order.
    pub tools: Vec<(String, Globs)>,
    pub cond: Cond,
    pub detectors: Vec<Detector>,
    pub severity_when: Vec<(Cond, Severity)>,
    /// Needs a GeoIP / ASN database.
    pub requires_geoip: bool,
    /// Reads the source IP (directly or through geo / IP class); IP-hidden keys skip it.
    pub uses_ip: bool,
    pub file: PathBuf,
    pub tests: Vec<TestSpec>,
}

/// The named signatures of a `user_agent` condition, for the `tool` dimension: each entry of a
/// `@catalog` that is itself a `@catalog` is one signature, named by that catalog's last
/// dotted part; any other pattern is a signature named by its text without `*`.
fn tool_signatures(
    patterns: &[String],
    catalogs: &Catalogs,
) -> Result<Vec<(String, Globs)>, String> {
    if patterns.is_empty() {
        return Err("needs a `when: user_agent:` condition to name the tool".to_owned());
    }
    let named = |p: &str| -> Result<(String, Globs), String> {
        let name = match p.strip_prefix('@') {
            Some(cat) => cat.rsplit('.').next().unwrap_or(cat).to_owned(),
            None => p.trim_matches('*').to_ascii_lowercase(),
        };
        Ok((name, Globs::compile(&[p.to_owned()], catalogs)?))
    };
    let mut out = Vec::new();
    for p in patterns {
        match p.strip_prefix('@') {
            Some(cat) => {
                let entries = catalogs
                    .get(cat)
                    .ok_or_else(|| format!("unknown catalog @{cat}"))?;
                for e in entries {
                    out.push(named(e)?);
                }
            }
            None => out.push(named(p)?),
        }
    }
    Ok(out)
}

impl Rule {
    /// The `tool` dimension's value: the first signature (in catalog order) the user agent
    /// matches.
    pub fn tool_of(&self, user_agent: Option<&str>) -> Option<&str> {
        let ua = user_agent?;
        self.tools
            .iter()
            .find(|(_, g)| g.matches(ua))
            .map(|(n, _)| n.as_str())
    }
}

/// Every rule and catalog under a directory.
#[derive(Debug, Clone, Default)]
pub struct RuleSet {
    pub rules: Vec<Rule>,
    pub catalogs: Catalogs,
}

/// The first line of a multi-line error (serde-saphyr adds a source snippet).
pub(crate) fn first_line(s: &str) -> &str {
    let s = s.strip_prefix("error: ").unwrap_or(s);
    s.lines().next().unwrap_or(s)
}

fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = walkdir::WalkDir::new(dir)
        .sort_by_file_name()
        .into_iter()
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_file())
        .map(walkdir::DirEntry::into_path)
        .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
        .collect();
    files.sort();
    files
}

impl RuleSet {
    /// Loads `dir/catalogs/*.yaml` and then every other `*.yaml` under `dir` except
    /// `dir/policies/`. All problems are returned together, each `file:line: message`.
    pub fn load(dir: &Path) -> Result<RuleSet, Vec<String>> {
        if !dir.exists() {
            return Err(vec![format!(
                "{}: the rules directory does not exist",
                dir.display()
            )]);
        }
        if !dir.is_dir() {
            return Err(vec![format!("{}: not a directory", dir.display())]);
        }
        let mut errors = Vec::new();
        let mut catalogs = Catalogs::default();
        let catalog_dir = dir.join("catalogs");
        for file in yaml_files(&catalog_dir) {
            match std::fs::read_to_string(&file) {
                Ok(text) => {
                    if let Err(e) = catalogs.add_file(&file.display().to_string(), &text) {
                        errors.push(e);
                    }
                }
                Err(e) => errors.push(format!("{}: cannot read: {e}", file.display())),
            }
        }
        let policy_dir = dir.join("policies");
        let mut rules: Vec<Rule> = Vec::new();
        for file in yaml_files(dir) {
            if file.starts_with(&catalog_dir) || file.starts_with(&policy_dir) {
                continue;
            }
            let text = match std::fs::read_to_string(&file) {
                Ok(t) => t,
                Err(e) => {
                    errors.push(format!("{}: cannot read: {e}", file.display()));
                    continue;
                }
            };
            match compile_file(&file, &text, &catalogs) {
                Ok(rule) => {
                    if let Some(other) = rules.iter().find(|r| r.id == rule.id) {
                        errors.push(format!(
                            "{}:1: rule id {:?} is also defined in {}",
                            file.display(),
                            rule.id,
                            other.file.display()
                        ));
                    } else {
                        rules.push(rule);
                    }
                }
                Err(mut e) => errors.append(&mut e),
            }
        }
        for r in &rules {
            for s in &r.superseded_by {
                if *s == r.id || !rules.iter().any(|o| o.id == *s) {
                    let line = std::fs::read_to_string(&r.file)
                        .ok()
                        .and_then(|t| t.lines().position(|l| l.contains(s.as_str())))
                        .map_or(1, |i| i + 1);
                    errors.push(format!(
                        "{}:{line}: superseded_by: {s:?} is not another rule of this set",
                        r.file.display()
                    ));
                }
            }
        }
        if errors.is_empty() {
            Ok(RuleSet { rules, catalogs })
        } else {
            Err(errors)
        }
    }

    pub fn get(&self, id: &str) -> Option<&Rule> {
        self.rules.iter().find(|r| r.id == id)
    }
}

/// A YAML error about a duration (from [`Dur::parse`]) as `file:line: message`, with the line
/// that holds the duration: the reader's own position can be the start of the enclosing map
/// (an internally tagged detector is buffered before it is read).
pub(crate) fn duration_error_at(name: &str, text: &str, msg: &str) -> Option<String> {
    let msg = first_line(msg);
    let (pos, what) = msg.split_once(": ")?;
    if !(what.starts_with("duration \"") || what.starts_with("bad duration")) {
        return None;
    }
    let reported: usize = pos.strip_prefix("line ")?.split(' ').next()?.parse().ok()?;
    let value = what.split('"').nth(1)?;
    let line = text
        .lines()
        .enumerate()
        .skip(reported.saturating_sub(1))
        .find(|(_, l)| l.contains(&format!(": {value}")))
        .map_or(reported, |(i, _)| i + 1);
    Some(format!("{name}:{line}: {what}"))
}

/// The real error inside `detector` (one detector or a list of them), which the untagged
/// `OneOrMany` hides behind "did not match any variant" at the line of `detector:`.
fn detector_error(text: &str) -> Option<String> {
    #[derive(Deserialize)]
    struct One {
        #[serde(rename = "detector")]
        _detector: DetectorSpec,
    }
    #[derive(Deserialize)]
    struct Many {
        #[serde(rename = "detector")]
        _detector: Vec<DetectorSpec>,
    }
    let v: serde_json::Value = serde_saphyr::from_str(text).ok()?;
    let e = if v.get("detector")?.is_array() {
        serde_saphyr::from_str::<Many>(text).err()
    } else {
        serde_saphyr::from_str::<One>(text).err()
    };
    e.map(|e| e.to_string())
}

/// Parses and compiles one rule file; every problem is reported with the file and a line.
pub fn compile_file(file: &Path, text: &str, catalogs: &Catalogs) -> Result<Rule, Vec<String>> {
    let name = file.display().to_string();
    let spec: RuleSpec = serde_saphyr::from_str(text).map_err(|e| {
        let mut msg = e.to_string();
        if msg.contains("untagged enum OneOrMany") {
            msg = detector_error(text).unwrap_or(msg);
        }
        vec![
            duration_error_at(&name, text, &msg)
                .unwrap_or_else(|| format!("{name}: {}", first_line(&msg))),
        ]
    })?;
    let mut errors = Vec::new();
    let at = |needle: &str| -> usize {
        text.lines()
            .position(|l| l.contains(needle))
            .map_or(1, |i| i + 1)
    };
    if !spec.id.starts_with("ak.") || spec.id.contains(char::is_whitespace) {
        errors.push(format!(
            "{name}:{}: rule id {:?} must look like ak.name",
            at("id:"),
            spec.id
        ));
    }
    let cond = match &spec.when {
        None => Cond::True,
        Some(w) => Cond::compile(&w.value, catalogs).unwrap_or_else(|e| {
            errors.push(format!("{name}:{}: when: {e}", w.referenced.line()));
            Cond::True
        }),
    };
    let specs = spec
        .detector
        .as_ref()
        .map(OneOrMany::to_vec)
        .unwrap_or_else(|| vec![DetectorSpec::Match]);
    let mut detectors = Vec::new();
    for d in specs {
        let compiled = match d {
            DetectorSpec::Match => Detector::Match,
            DetectorSpec::FirstSeen {
                attribute,
                history,
                learning,
            } => {
                if attribute == Attr::None || attribute == Attr::Tool {
                    errors.push(format!(
                        "{name}:{}: first_seen needs an attribute (tool is a dimension only)",
                        at("first_seen")
                    ));
                }
                Detector::FirstSeen {
                    attr: attribute,
                    history: history.secs(),
                    learning: learning.secs(),
                }
            }
            DetectorSpec::Threshold {
                window,
                count,
                baseline_factor,
                baseline_history,
            } => {
                let count = count_in_range("count", count).unwrap_or_else(|e| {
                    errors.push(format!("{name}:{}: threshold: {e}", at("count:")));
                    1
                });
                let baseline = match (baseline_factor, baseline_history) {
                    (Some(f), Some(h)) => Some((f, h.secs())),
                    (None, None) => None,
                    _ => {
                        errors.push(format!(
                            "{name}:{}: baseline_factor (> 0) and baseline_history (longer than the window) go together",
                            at("baseline")
                        ));
                        None
                    }
                };
                Detector::Threshold {
                    window: window.secs(),
                    count,
                    baseline,
                }
            }
            DetectorSpec::Distinct { window, min } => {
                if min.is_empty() || min.contains_key(&Attr::None) || min.contains_key(&Attr::Tool)
                {
                    errors.push(format!(
                        "{name}:{}: distinct needs attributes with minimum counts",
                        at("distinct")
                    ));
                }
                let mut mins = Vec::new();
                for (attr, m) in min {
                    let what = format!("min.{}", attr.as_str());
                    match count_in_range(&what, m) {
                        Ok(m) => mins.push((attr, m)),
                        Err(e) => {
                            let line = text
                                .lines()
                                .position(|l| l.contains(&format!("{}:", attr.as_str())))
                                .map_or_else(|| at("min:"), |i| i + 1);
                            errors.push(format!("{name}:{line}: distinct: {e}"));
                            mins.push((attr, 1));
                        }
                    }
                }
                Detector::Distinct {
                    window: window.secs(),
                    min: mins,
                }
            }
            DetectorSpec::Velocity {
                min_distance_km,
                max_speed_kmh,
                max_gap,
            } => Detector::Velocity {
                min_km: min_distance_km,
                max_kmh: max_speed_kmh,
                max_gap: max_gap.secs(),
            },
            DetectorSpec::Sequence {
                first,
                within,
                link,
                or_same_ip,
            } => {
                let first = Cond::compile(&first, catalogs).unwrap_or_else(|e| {
                    errors.push(format!("{name}:{}: detector.first: {e}", at("first:")));
                    Cond::True
                });
                Detector::Sequence {
                    first,
                    within: within.secs(),
                    link,
                    or_same_ip,
                }
            }
        };
        let kind = match &compiled {
            Detector::Match => "match",
            Detector::FirstSeen { .. } => "first_seen",
            Detector::Threshold { .. } => "threshold",
            Detector::Distinct { .. } => "distinct",
            Detector::Velocity { .. } => "velocity",
            Detector::Sequence { .. } => "sequence",
        };
        for (param, e) in compiled.check() {
            // Counts were range-checked above, before narrowing.
            if param != "count" && param != "min" {
                errors.push(format!("{name}:{}: {kind}: {e}", at(&format!("{param}:"))));
            }
        }
        detectors.push(compiled);
    }
    for e in spec.attack.problems() {
        errors.push(format!("{name}:{}: attack: {e}", at("attack")));
    }
    if spec.tests.is_empty() {
        errors.push(format!(
            "{name}:1: rule {} has no tests (each rule carries positive and negative test events)",
            spec.id
        ));
    } else {
        let expects: Vec<bool> = spec.tests.iter().map(|t| t.expect_alarm()).collect();
        if !expects.contains(&true) || !expects.contains(&false) {
            errors.push(format!(
                "{name}:{}: rule {} needs at least one positive and one negative test",
                at("tests:"),
                spec.id
            ));
        }
    }
    for t in &spec.tests {
        if let Err(e) = t.validate() {
            // The line of the member the message names, after the test's name; else the name's.
            let start = at(&t.name);
            let member = ["created_days_ago", "last_used_days_ago", "at"]
                .into_iter()
                .find(|m| e.contains(&format!("{m}: ")) || e.contains(&format!(".{m} ")));
            let line = member
                .and_then(|m| {
                    let key = format!("{m}:");
                    text.lines().enumerate().skip(start).find_map(|(i, l)| {
                        let holds = l.match_indices(&key).any(|(at, _)| {
                            !l[..at].ends_with(|c: char| c.is_ascii_alphanumeric() || c == '_')
                        });
                        holds.then_some(i + 1)
                    })
                })
                .unwrap_or(start);
            errors.push(format!("{name}:{line}: test {:?}: {e}", t.name));
        }
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    let mut severity_when = Vec::new();
    for s in &spec.severity_when {
        match Cond::compile(&s.when, catalogs) {
            Ok(c) => severity_when.push((c, s.severity)),
            Err(e) => errors.push(format!(
                "{name}:{}: severity_when: {e}",
                at("severity_when")
            )),
        }
    }
    for r in &spec.requires {
        if r != "geoip" {
            errors.push(format!(
                "{name}:{}: requires: unknown requirement {r:?} (geoip)",
                at("requires")
            ));
        }
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    let tools = if spec.dimension == Attr::Tool {
        let patterns = spec
            .when
            .as_ref()
            .and_then(|w| w.value.user_agent.as_ref())
            .map(OneOrMany::to_vec)
            .unwrap_or_default();
        match tool_signatures(&patterns, catalogs) {
            Ok(t) => t,
            Err(e) => {
                errors.push(format!("{name}:{}: dimension: tool: {e}", at("dimension")));
                return Err(errors);
            }
        }
    } else {
        Vec::new()
    };
    let uses_ip =
        cond.uses_ip() || detectors.iter().any(Detector::uses_ip) || spec.dimension.from_ip();
    let rule = Rule {
        id: spec.id,
        name: spec.name,
        severity: spec.severity,
        alarm_type: spec.alarm_type,
        description: spec.description,
        advice: spec.advice,
        attack: spec.attack,
        dimension: spec.dimension,
        superseded_by: spec.superseded_by,
        tools,
        cond,
        detectors,
        severity_when,
        requires_geoip: spec.requires.iter().any(|r| r == "geoip"),
        uses_ip,
        file: file.to_path_buf(),
        tests: spec.tests,
    };
    // A test case's own detector parameters obey the same ranges as the alarm policy's.
    for t in rule.tests.iter().filter(|t| !t.thresholds.is_empty()) {
        if let Err(e) = rule.clone().apply_thresholds(&t.thresholds) {
            errors.push(format!(
                "{name}:{}: test {:?}: thresholds: {e}",
                at(&t.name),
                t.name
            ));
        }
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    Ok(rule)
}

impl Rule {
    /// Applies alarm-policy overrides of detector parameters (`count`, `window`, `history`,
    /// `learning`, `within`, `min_distance_km`, `max_speed_kmh`, `baseline_factor`,
    /// `min.<attribute>`). A name no detector of the rule has is an error, and so is a value
    /// out of the range [`Detector::check`] allows; the first such problem is returned.
    pub fn apply_thresholds(&mut self, overrides: &BTreeMap<String, String>) -> Result<(), String> {
        for (name, value) in overrides {
            let dur = || Dur::parse(value).map(Dur::secs);
            let num = || {
                value
                    .trim()
                    .parse::<f64>()
                    .map_err(|_| format!("{name}: not a number: {value:?}"))
            };
            let whole = |what: &str| {
                let n = value
                    .trim()
                    .parse::<i64>()
                    .map_err(|_| format!("{what}: not a whole number: {value:?}"))?;
                count_in_range(what, n)
            };
            let mut applied = false;
            for d in &mut self.detectors {
                match (name.as_str(), &mut *d) {
                    ("count", Detector::Threshold { count, .. }) => {
                        *count = whole("count")?;
                        applied = true;
                    }
                    (
                        "window",
                        Detector::Threshold { window, .. } | Detector::Distinct { window, .. },
                    ) => {
                        *window = dur()?;
                        applied = true;
                    }
                    (
                        "baseline_factor",
                        Detector::Threshold {
                            baseline: Some((f, _)),
                            ..
                        },
                    ) => {
                        *f = num()?;
                        applied = true;
                    }
                    ("history", Detector::FirstSeen { history, .. }) => {
                        *history = dur()?;
                        applied = true;
                    }
                    ("learning", Detector::FirstSeen { learning, .. }) => {
                        *learning = dur()?;
                        applied = true;
                    }
                    ("within", Detector::Sequence { within, .. }) => {
                        *within = dur()?;
                        applied = true;
                    }
                    ("min_distance_km", Detector::Velocity { min_km, .. }) => {
                        *min_km = num()?;
                        applied = true;
                    }
                    ("max_speed_kmh", Detector::Velocity { max_kmh, .. }) => {
                        *max_kmh = num()?;
                        applied = true;
                    }
                    (n, Detector::Distinct { min, .. }) if n.starts_with("min.") => {
                        for (attr, m) in min.iter_mut() {
                            if n == format!("min.{}", attr.as_str()) {
                                *m = whole(n)?;
                                applied = true;
                            }
                        }
                    }
                    _ => {}
                }
            }
            if !applied {
                return Err(format!(
                    "rule {} has no detector parameter {name:?}",
                    self.id
                ));
            }
        }
        match self.detectors.iter().flat_map(Detector::check).next() {
            Some((_, e)) => Err(e),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_are_checked_never_wrapped() {
        assert_eq!(Dur::parse("30s"), Ok(Dur(30)));
        assert_eq!(Dur::parse("2w"), Ok(Dur(14 * 86_400)));
        assert_eq!(Dur::parse("0s"), Ok(Dur(0)));
        assert_eq!(Dur::parse("3650d"), Ok(Dur::MAX));
        assert_eq!(Dur::parse("521w"), Ok(Dur(521 * 7 * 86_400)));
        let long = "is longer than 10 years (3650d)";
        for s in [
            "3651d",
            "522w",
            "30500569566319w",
            "10000000000000000s",
            "99999999999999999999999s",
        ] {
            let e = Dur::parse(s).unwrap_err();
            assert!(e.ends_with(long), "{s}: {e}");
        }
        assert!(Dur::parse("5x").unwrap_err().contains("bad duration unit"));
        assert!(Dur::parse("-5s").unwrap_err().starts_with("bad duration"));
        assert!(Dur::parse("m").unwrap_err().starts_with("bad duration"));
    }

    #[test]
    fn overrides_out_of_range_are_refused() {
        let mut d = Detector::Threshold {
            window: 300,
            count: 3,
            baseline: None,
        };
        assert!(d.check().is_empty());
        d = Detector::Threshold {
            window: 0,
            count: 0,
            baseline: Some((f64::NAN, 10)),
        };
        let names: Vec<&str> = d.check().into_iter().map(|(n, _)| n).collect();
        assert_eq!(
            names,
            ["window", "baseline_factor", "count"],
            "{:?}",
            d.check()
        );
    }
}
