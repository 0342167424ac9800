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
pub use cond::{Cond, CondSpec, Facts, OneOrMany};
pub use testing::TestSpec;

/// A span of event time, written `30s`, `10m`, `6h`, `10d` or `2w`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Dur(pub i64);

impl Dur {
    pub fn secs(self) -> i64 {
        self.0
    }

    pub fn parse(s: &str) -> Result<Dur, String> {
        let t = s.trim();
        let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
        let (n, unit) = t.split_at(split);
        let n: i64 = n
            .parse()
            .map_err(|_| format!("bad duration {s:?} (expected e.g. 30s, 10m, 6h, 10d)"))?;
        let mult = match unit {
            "s" | "" => 1,
            "m" => 60,
            "h" => 3600,
            "d" => 86_400,
            "w" => 7 * 86_400,
            _ => return Err(format!("bad duration unit in {s:?} (s, m, h, d or w)")),
        };
        Ok(Dur(n * mult))
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
        count: u32,
        #[serde(default)]
        baseline_factor: Option<f64>,
        #[serde(default)]
        baseline_history: Option<Dur>,
    },
    /// At least `min` distinct values of each listed attribute within `window`.
    Distinct {
        window: Dur,
        min: BTreeMap<Attr, u32>,
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
    /// The attribute that splits alarms (one alarm per key and value); `none` by default.
    #[serde(default)]
    pub dimension: Attr,
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
    pub dimension: Attr,
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

/// Parses and compiles one rule file; every problem is reported with the file and a line.
pub fn compile_file(file: &Path, text: &str, catalogs: &Catalogs) -> Result<Rule, Vec<String>> {
    let name = file.display().to_string();
    let spec: RuleSpec = serde_saphyr::from_str(text)
        .map_err(|e| vec![format!("{name}: {}", first_line(&e.to_string()))])?;
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
                if attribute == Attr::None {
                    errors.push(format!(
                        "{name}:{}: first_seen needs an attribute",
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
                if count == 0 || window.secs() <= 0 {
                    errors.push(format!(
                        "{name}:{}: threshold needs count > 0 and a window",
                        at("threshold")
                    ));
                }
                let baseline = match (baseline_factor, baseline_history) {
                    (Some(f), Some(h)) if f > 0.0 && h.secs() > window.secs() => {
                        Some((f, h.secs()))
                    }
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
                if min.is_empty() || min.contains_key(&Attr::None) {
                    errors.push(format!(
                        "{name}:{}: distinct needs attributes with minimum counts",
                        at("distinct")
                    ));
                }
                Detector::Distinct {
                    window: window.secs(),
                    min: min.into_iter().collect(),
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
        detectors.push(compiled);
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
            errors.push(format!("{name}:{}: test {:?}: {e}", at(&t.name), t.name));
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
    let uses_ip =
        cond.uses_ip() || detectors.iter().any(Detector::uses_ip) || spec.dimension.from_ip();
    Ok(Rule {
        id: spec.id,
        name: spec.name,
        severity: spec.severity,
        alarm_type: spec.alarm_type,
        description: spec.description,
        advice: spec.advice,
        dimension: spec.dimension,
        cond,
        detectors,
        severity_when,
        requires_geoip: spec.requires.iter().any(|r| r == "geoip"),
        uses_ip,
        file: file.to_path_buf(),
        tests: spec.tests,
    })
}

impl Rule {
    /// Applies alarm-policy overrides of detector parameters (`count`, `window`, `history`,
    /// `learning`, `within`, `min_distance_km`, `max_speed_kmh`, `baseline_factor`,
    /// `min.<attribute>`). A name no detector of the rule has is an error.
    pub fn apply_thresholds(&mut self, overrides: &BTreeMap<String, String>) -> Result<(), String> {
        for (name, value) in overrides {
            let dur = || Dur::parse(value).map(Dur::secs);
            let num = || {
                value
                    .parse::<f64>()
                    .map_err(|_| format!("{name}: not a number: {value:?}"))
            };
            let mut applied = false;
            for d in &mut self.detectors {
                match (name.as_str(), &mut *d) {
                    ("count", Detector::Threshold { count, .. }) => {
                        *count = value
                            .parse()
                            .map_err(|_| format!("count: not a whole number: {value:?}"))?;
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
                                *m = value
                                    .parse()
                                    .map_err(|_| format!("{n}: not a whole number: {value:?}"))?;
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
        Ok(())
    }
}
