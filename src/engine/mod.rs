//! The detection engine: rules over per-key state in event time, policies, aggregation.
//!
//! For each event: derive the facts conditions read (IP new for the key, idle days, leaked,
//! inactive), evaluate every enabled rule (skipping IP-based ones for IP-hidden keys), update
//! the key's state, then pass the hits through the allowlist into the aggregator.

pub mod state;

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::json;

use crate::alarm::{AggregationSettings, Aggregator, Alarm, Hit};
use crate::enrich::{Enrichment, IpClass, IpClasses, geo::distance_km};
use crate::event::{Event, KeyKind, Outcome};
use crate::policy::Policy;
use crate::rule::cond::Facts;
use crate::rule::{Attr, Detector, Link, Rule, RuleSet, Severity};
use state::{
    Capped, KeyArc, KeyState, Located, State, compact_time, full_time, insert_sorted, value_hash,
};

/// The engine's state as saved in a checkpoint. Keys and alarms are shared with the engine
/// (copy on write: the engine copies one only when it changes it while a snapshot holds it), so
/// taking a snapshot copies pointers, not state; the lists are sorted when serialised (on the
/// checkpoint thread), for a deterministic file.
#[derive(Clone, serde::Serialize, serde::Deserialize)]
pub struct Snapshot {
    pub rules_fingerprint: String,
    #[serde(serialize_with = "sorted_keys")]
    pub keys: Vec<(u64, KeyArc<KeyState>)>,
    #[serde(serialize_with = "sorted")]
    pub created: Vec<((u16, String), (i64, u64))>,
    #[serde(serialize_with = "sorted")]
    pub quarantined: Vec<((crate::event::Cloud, String), i64)>,
    #[serde(serialize_with = "sorted_alarms")]
    pub alarms: Vec<Arc<crate::alarm::Tracked>>,
}

fn sorted_keys<S: serde::Serializer>(
    v: &[(u64, KeyArc<KeyState>)],
    s: S,
) -> Result<S::Ok, S::Error> {
    let mut refs: Vec<&(u64, KeyArc<KeyState>)> = v.iter().collect();
    refs.sort_unstable_by_key(|k| k.0);
    s.collect_seq(refs)
}

fn sorted<S: serde::Serializer, T: serde::Serialize + Ord>(
    v: &[T],
    s: S,
) -> Result<S::Ok, S::Error> {
    let mut refs: Vec<&T> = v.iter().collect();
    refs.sort_unstable();
    s.collect_seq(refs)
}

fn sorted_alarms<S: serde::Serializer>(
    v: &[Arc<crate::alarm::Tracked>],
    s: S,
) -> Result<S::Ok, S::Error> {
    let mut refs: Vec<&Arc<crate::alarm::Tracked>> = v.iter().collect();
    refs.sort_unstable_by(|a, b| a.id().cmp(b.id()));
    s.collect_seq(refs)
}

/// Counters a run reports (and the metrics expose).
#[derive(Debug, Clone, Default)]
pub struct Stats {
    pub events: u64,
    pub hits: BTreeMap<String, u64>,
    pub alarms: BTreeMap<String, u64>,
    pub allowlisted: BTreeMap<String, u64>,
    /// Hits suppressed because a stronger rule (`superseded_by`) hit the same event.
    pub superseded: BTreeMap<String, u64>,
    /// Rule evaluations skipped because the key's IPs are hidden.
    pub ip_hidden_skips: u64,
    /// Keys whose state was dropped to stay under the total cap (least recently seen first).
    pub evicted_keys: u64,
    /// `threshold` window entries merged into coarser buckets to stay under the per-window cap
    /// (the calls are still counted).
    pub window_entries_summarised: u64,
    /// `distinct` values and `sequence` marks forgotten to stay under the per-window cap.
    pub window_entries_dropped: u64,
    /// Tracked alarms dropped to stay under the cap (least recently updated first).
    pub alarms_evicted: u64,
    /// Of those, dropped by the per-key cap (the key's least recently updated first).
    pub alarms_evicted_per_key: u64,
    /// Input-derived alarm fields cut to their size limit.
    pub alarm_fields_truncated: u64,
    /// Created-key marks dropped: past the cap (oldest first), and past their horizon.
    pub created_evicted: u64,
    pub created_expired: u64,
    /// Quarantined principals dropped: past the cap (oldest first), and past the retention.
    pub quarantined_evicted: u64,
    pub quarantined_expired: u64,
}

impl Stats {
    /// Adds another engine's counters (the engines of several partitions, one total).
    pub fn add(&mut self, o: &Stats) {
        self.events += o.events;
        for (mine, theirs) in [
            (&mut self.hits, &o.hits),
            (&mut self.alarms, &o.alarms),
            (&mut self.allowlisted, &o.allowlisted),
            (&mut self.superseded, &o.superseded),
        ] {
            for (k, v) in theirs {
                *mine.entry(k.clone()).or_default() += v;
            }
        }
        self.ip_hidden_skips += o.ip_hidden_skips;
        self.evicted_keys += o.evicted_keys;
        self.window_entries_summarised += o.window_entries_summarised;
        self.window_entries_dropped += o.window_entries_dropped;
        self.alarms_evicted += o.alarms_evicted;
        self.alarms_evicted_per_key += o.alarms_evicted_per_key;
        self.alarm_fields_truncated += o.alarm_fields_truncated;
        self.created_evicted += o.created_evicted;
        self.created_expired += o.created_expired;
        self.quarantined_evicted += o.quarantined_evicted;
        self.quarantined_expired += o.quarantined_expired;
    }
}

impl Limits {
    /// The caps of one of `n` engines sharing these totals (keys, alarms and created-key marks
    /// divide among them; quarantines are copied to every engine, and per-key caps stay).
    pub fn per_partition(self, n: u32) -> Limits {
        let n = n.max(1) as usize;
        Limits {
            max_keys: self.max_keys.div_ceil(n),
            max_alarms: self.max_alarms.div_ceil(n),
            max_created: self.max_created.div_ceil(n),
            ..self
        }
    }
}

/// The engine's caps on work and memory. Each cap has a counter in [`Stats`] and a metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Keys with state (least recently seen evicted). Default 1,000,000 (about 1 GiB).
    pub max_keys: usize,
    /// Entries per window: distinct seconds of a `threshold` window (coarsened past it), values
    /// of one `distinct` attribute, marks of a `sequence` (the oldest forgotten). Default 4,096.
    pub max_window_entries: usize,
    /// Alarms tracked for aggregation (least recently updated evicted). Default 50,000 (about
    /// 8 KiB each with full evidence lists).
    pub max_alarms: usize,
    /// Alarms tracked per key, or per principal without a key (the key's least recently updated
    /// evicted). Default 256.
    pub max_alarms_per_key: usize,
    /// Created-key marks for `link: created_key` sequences (oldest evicted). Default 100,000.
    pub max_created: usize,
    /// Quarantined principals (oldest evicted). Default 100,000.
    pub max_quarantined: usize,
    /// How long a quarantine counts as a leak, in seconds. Default 90 days.
    pub quarantine_retention_secs: i64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_keys: DEFAULT_MAX_KEYS,
            max_window_entries: 4_096,
            max_alarms: crate::alarm::DEFAULT_MAX_ALARMS,
            max_alarms_per_key: crate::alarm::DEFAULT_MAX_ALARMS_PER_KEY,
            max_created: 100_000,
            max_quarantined: 100_000,
            quarantine_retention_secs: 90 * 86_400,
        }
    }
}

/// The longest access key id kept in the `created` map (real ids are at most 128 characters);
/// longer ones are cut, on a character boundary.
pub const MAX_KEY_ID_BYTES: usize = 128;

/// An event more than this far past its key's watermark (or the allowed lateness, if longer)
/// moves the watermark only once a second event confirms the jump.
const MIN_JUMP: i64 = 300;

fn bounded_key_id(id: &str) -> String {
    crate::alarm::truncate_on_char(id, MAX_KEY_ID_BYTES).to_owned()
}

/// A rule as the engine runs it: compiled, with its policy applied.
#[derive(Debug, Clone)]
struct Active {
    rule: Rule,
    severity: Severity,
    settings: AggregationSettings,
    /// The event times whose hits this version raises, `[from, until)`: a rule whose
    /// alarm-policy entry expires runs twice, with the entry until then and without it from
    /// then on (both always detect, so the second's windows are warm when it takes over).
    from: Option<chrono::DateTime<chrono::Utc>>,
    until: Option<chrono::DateTime<chrono::Utc>>,
}

impl Active {
    fn applies(&self, t: chrono::DateTime<chrono::Utc>) -> bool {
        self.from.is_none_or(|f| t >= f) && self.until.is_none_or(|u| t < u)
    }
}

/// The engine. One per stream; its state may be shared (`State` is concurrent).
pub struct Engine {
    rules: Vec<Active>,
    pub policy: Policy,
    pub state: State,
    aggregator: Aggregator,
    /// Names a travel alarm's previous IP's place (`set_geo`).
    geo: Option<std::sync::Arc<crate::enrich::geo::GeoDb>>,
    pub stats: Stats,
    /// The longest look-back of any detector, for state expiry.
    horizon: i64,
    /// `new_source_ip` history, for the `ip_new_for_key` fact.
    ip_history: i64,
    processed_since_expiry: u64,
    limits: Limits,
    /// The per-event texts `detect` builds (API, its lower case, the source IP), kept between
    /// events so that their buffers are reused rather than allocated for each event.
    scratch: Scratch,
    /// Something was added to the capped maps (keys, created-key marks, quarantines) since
    /// their caps were last checked: `DashMap::len` locks every shard, too dear for each event.
    caps_due: bool,
}

#[derive(Default)]
struct Scratch {
    api: String,
    api_lower: String,
    ip: String,
}

/// The default total cap on keys with state: under 1 KiB each, about 1 GiB.
pub const DEFAULT_MAX_KEYS: usize = 1_000_000;

/// Keys are expired of old state every this many events.
const EXPIRY_EVERY: u64 = 50_000;

/// How long a key must have been seen before its IPs can be "new".
const IP_NEW_MIN_KEY_AGE: i64 = 86_400;

impl Engine {
    /// Builds the engine from the rule set and the policy (threshold overrides applied,
    /// disabled rules left out). Problems are returned together.
    pub fn new(rules: &RuleSet, policy: Policy) -> Result<Engine, Vec<String>> {
        let mut errors = Vec::new();
        let mut active = Vec::new();
        for rule in &rules.rules {
            let p = policy.rule(&rule.id);
            // An entry that expires: the rule as the entry sets it before, as the defaults
            // set it after (an expired entry no longer applies, as in the allowlist).
            let versions = match p.expires {
                None => vec![(p, None, None)],
                Some(x) => vec![(p, None, Some(x)), (policy.default_rule(), Some(x), None)],
            };
            for (p, from, until) in versions {
                if !p.enabled {
                    continue;
                }
                let mut rule = rule.clone();
                if let Err(e) = rule.apply_thresholds(&p.thresholds) {
                    errors.push(format!("alarm_policy: {e}"));
                }
                active.push(Active {
                    severity: p.severity.unwrap_or(rule.severity),
                    settings: AggregationSettings {
                        period_secs: p.aggregation.secs().max(1),
                        renotify_secs: p.renotify.secs(),
                    },
                    rule,
                    from,
                    until,
                });
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        let horizon = active
            .iter()
            .flat_map(|a| a.rule.detectors.iter().map(Detector::horizon))
            .max()
            .unwrap_or(0)
            .max(7 * 86_400)
            + policy.allowed_lateness.secs();
        let ip_history = active
            .iter()
            .flat_map(|a| &a.rule.detectors)
            .filter_map(|d| match d {
                Detector::FirstSeen {
                    attr: Attr::SourceIp,
                    history,
                    ..
                } => Some(*history),
                _ => None,
            })
            .max()
            .unwrap_or(10 * 86_400);
        Ok(Engine {
            rules: active,
            policy,
            state: State::default(),
            aggregator: Aggregator::default(),
            geo: None,
            stats: Stats::default(),
            horizon,
            ip_history,
            processed_since_expiry: 0,
            limits: Limits::default(),
            scratch: Scratch::default(),
            caps_due: true,
        })
    }

    /// A fingerprint of the active rules and their detectors: per-rule state is only restored
    /// into the same rules.
    pub fn rules_fingerprint(&self) -> String {
        let mut h = state::Fnv::new(Attr::None);
        for a in &self.rules {
            h.write(a.rule.id.as_bytes());
            h.write(format!("{:?}", a.rule.detectors).as_bytes());
        }
        format!("{:016x}", h.finish())
    }

    /// The engine's state, for a checkpoint: a pointer per key and per alarm (see
    /// [`Snapshot`]), the created-key and quarantine maps (capped) copied.
    pub fn snapshot(&self) -> Snapshot {
        let keys: Vec<(u64, KeyArc<KeyState>)> = self
            .state
            .keys
            .iter()
            .map(|k| (*k.key(), KeyArc::clone(k.value())))
            .collect();
        let created = self.state.created_entries();
        let quarantined: Vec<((crate::event::Cloud, String), i64)> = self
            .state
            .quarantined
            .iter()
            .map(|e| (e.key().clone(), *e.value()))
            .collect();
        Snapshot {
            rules_fingerprint: self.rules_fingerprint(),
            keys,
            created,
            quarantined,
            alarms: self.aggregator.export(),
        }
    }

    /// Restores a checkpoint. When the rules changed since, the per-rule parts (windows,
    /// sightings, created-key marks) are dropped and the rest (remembered values, locations,
    /// alarms) kept. Returns whether the per-rule parts were restored.
    pub fn restore(&mut self, snapshot: Snapshot) -> bool {
        let same_rules = snapshot.rules_fingerprint == self.rules_fingerprint();
        for (k, mut ks) in snapshot.keys {
            if !same_rules {
                let ks = KeyArc::make_mut(&mut ks);
                ks.windows = Box::default();
                ks.sightings.clear();
            }
            self.state.keys.insert(k, ks);
        }
        if same_rules {
            for (k, v) in snapshot.created {
                self.state.created.insert(k, v);
            }
        }
        for (k, v) in snapshot.quarantined {
            self.state.quarantined.insert(k, v);
        }
        self.aggregator.import(snapshot.alarms);
        self.caps_due = true;
        same_rules
    }

    /// The active rules' ids, once each (a rule whose alarm-policy entry expires runs as two
    /// versions, side by side).
    pub fn rule_ids(&self) -> impl Iterator<Item = &str> {
        self.rules
            .iter()
            .enumerate()
            .filter(|(i, a)| *i == 0 || self.rules[i - 1].rule.id != a.rule.id)
            .map(|(_, a)| a.rule.id.as_str())
    }

    /// Sets the GeoIP database that names where a travel alarm's previous IP is.
    pub fn set_geo(&mut self, geo: Option<std::sync::Arc<crate::enrich::geo::GeoDb>>) {
        self.geo = geo;
    }

    /// A hit naming a previous IP (impossible travel) gets that IP's city and country: looked
    /// up now, only for the hit, rather than kept in every key's state.
    fn place_previous_ip(&self, hit: &mut Hit) {
        let Some(db) = &self.geo else { return };
        let Some(ip) = hit
            .facts
            .get("previous_ip")
            .and_then(|v| v.as_str())
            .and_then(|s| s.parse().ok())
        else {
            return;
        };
        if let Some(g) = db.lookup(ip) {
            for (k, v) in [("previous_city", g.city), ("previous_country", g.country)] {
                if let Some(v) = v {
                    hit.facts.insert(k.into(), json!(v));
                }
            }
        }
    }

    /// Processes one event; returns the alarms to notify now.
    pub fn process(&mut self, event: &Event, enr: &Enrichment) -> Vec<Alarm> {
        self.stats.events += 1;
        let hits = self.detect(event, enr);
        let hidden = self.policy.is_hidden(event);
        let mut out = Vec::new();
        let mut kept = Vec::with_capacity(hits.len());
        for (i, hit) in hits {
            let active = &self.rules[i];
            // The other version of a rule whose alarm-policy entry expires raises this one.
            if !active.applies(event.event_time) {
                continue;
            }
            *self.stats.hits.entry(active.rule.id.clone()).or_default() += 1;
            if self.policy.allowed(&active.rule.id, event).is_some() {
                *self
                    .stats
                    .allowlisted
                    .entry(active.rule.id.clone())
                    .or_default() += 1;
                continue;
            }
            kept.push((i, hit));
        }
        // One call, one alarm per incident: a hit whose stronger rule also hit (and was not
        // allowlisted) is suppressed and counted.
        if kept.len() > 1 {
            let rules = &self.rules;
            let superseded: Vec<usize> = kept
                .iter()
                .filter(|(i, _)| {
                    rules[*i]
                        .rule
                        .superseded_by
                        .iter()
                        .any(|s| kept.iter().any(|(j, _)| rules[*j].rule.id == *s))
                })
                .map(|(i, _)| *i)
                .collect();
            for i in &superseded {
                *self
                    .stats
                    .superseded
                    .entry(self.rules[*i].rule.id.clone())
                    .or_default() += 1;
            }
            kept.retain(|(i, _)| !superseded.contains(i));
        }
        for (i, hit) in kept {
            let active = &self.rules[i];
            let mut hit = hit;
            self.place_previous_ip(&mut hit);
            hit.severity = Some(hit.severity.unwrap_or(active.severity).max(active.severity));
            // A principal holding administrator rights makes any alarm on it one level worse.
            if let Some(via) = &enr.admin_via {
                hit.severity = hit.severity.map(Severity::raised);
                hit.facts
                    .insert("principal_admin_via".into(), json!(via.as_ref()));
            }
            if let Some(alarm) =
                self.aggregator
                    .record(&active.rule, hit, event, enr, hidden, active.settings)
            {
                *self.stats.alarms.entry(active.rule.id.clone()).or_default() += 1;
                out.push(alarm);
            }
        }
        // A new stage alarm may make the key's alarms an attack sequence (one incident alarm).
        // (Only a stage: a storm of new-IP alarms costs no sequence work.)
        if out
            .iter()
            .any(|a| a.status == crate::alarm::AlarmStatus::Created && crate::alarm::is_stage(a))
            && let Some(incident) = self
                .aggregator
                .sequence(&crate::alarm::subject_of(event), event.event_time)
        {
            *self
                .stats
                .alarms
                .entry(crate::alarm::ATTACK_SEQUENCE.to_owned())
                .or_default() += 1;
            out.push(incident);
        }
        self.processed_since_expiry += 1;
        if self.processed_since_expiry >= EXPIRY_EVERY {
            self.expire();
        }
        // The caps, when something was added (and every 1,024 events in case another engine
        // shares this state).
        if std::mem::take(&mut self.caps_due) || self.processed_since_expiry.is_multiple_of(1024) {
            if self.state.keys.len() > self.limits.max_keys {
                self.evict();
            }
            if self.state.created.len() > self.limits.max_created {
                self.stats.created_evicted +=
                    evict_oldest(&self.state.created, self.limits.max_created, |v| v.0);
            }
            if self.state.quarantined.len() > self.limits.max_quarantined {
                self.stats.quarantined_evicted +=
                    evict_oldest(&self.state.quarantined, self.limits.max_quarantined, |v| *v);
            }
        }
        out.extend(self.aggregator.take_evicted());
        self.stats.alarms_evicted = self.aggregator.evicted();
        self.stats.alarms_evicted_per_key = self.aggregator.evicted_per_subject();
        self.stats.alarm_fields_truncated = self.aggregator.truncated();
        out
    }

    /// Drops the state of an event's subject (after a caught panic while processing it, which
    /// may have left that key's state half updated).
    pub fn reset_subject(&mut self, event: &Event) {
        self.state.keys.remove(&subject_hash(event));
    }

    /// Sets the total cap on keys with state (at least 1).
    pub fn set_max_keys(&mut self, max: usize) {
        self.limits.max_keys = max.max(1);
        self.caps_due = true;
    }

    /// Swaps in a new policy between two events, keeping every key's state: the allowlist and
    /// IP hiding apply to the next event, and the alarm policy's per-rule settings (enabled,
    /// severity, thresholds, aggregation, re-notification) from then on. The allowed lateness
    /// keeps its start-up value (the windows were sized with it). Nothing changes on an error.
    pub fn set_policy(&mut self, rules: &RuleSet, policy: Policy) -> Result<(), Vec<String>> {
        self.set_rules(rules, policy).map(drop)
    }

    /// Swaps in new rules and a new policy between two events (a reload, see
    /// [`Engine::set_policy`]). Per-key state is addressed by the position of a rule among the
    /// active ones, so it is moved to each rule's new position; a rule whose definition (its
    /// condition or detectors, after the alarm policy's thresholds) changed, or that is gone,
    /// loses its per-key state (windows, distinct values, created-key marks) — counting on
    /// under another definition could raise what the new one would not — and a new rule starts
    /// empty. Everything else (remembered values, locations, alarms) is kept. Returns the ids
    /// of the rules still active whose state was dropped. Nothing changes on an error.
    pub fn set_rules(
        &mut self,
        rules: &RuleSet,
        mut policy: Policy,
    ) -> Result<Vec<String>, Vec<String>> {
        policy.allowed_lateness = self.policy.allowed_lateness;
        let built = Engine::new(rules, policy)?;
        let map = rule_map(&self.rules, &built.rules);
        let mut reset: Vec<String> = map
            .iter()
            .zip(&self.rules)
            .filter(|(to, a)| to.is_none() && built.rules.iter().any(|b| b.rule.id == a.rule.id))
            .map(|(_, a)| a.rule.id.clone())
            .collect();
        reset.dedup();
        if map.iter().enumerate().any(|(i, to)| *to != Some(i as u16)) {
            for mut k in self.state.keys.iter_mut() {
                KeyArc::make_mut(k.value_mut()).remap_rules(&map);
            }
            let created = self.state.created_entries();
            self.state.created.clear();
            for ((r, key), v) in created {
                if let Some(Some(to)) = map.get(r as usize) {
                    self.state.created.insert((*to, key), v);
                }
            }
        }
        self.rules = built.rules;
        self.policy = built.policy;
        self.horizon = built.horizon;
        self.ip_history = built.ip_history;
        Ok(reset)
    }

    /// Sets every cap (each at least 1).
    pub fn set_limits(&mut self, limits: Limits) {
        self.caps_due = true;
        self.limits = Limits {
            max_keys: limits.max_keys.max(1),
            max_window_entries: limits.max_window_entries.max(1),
            max_alarms: limits.max_alarms.max(1),
            max_alarms_per_key: limits.max_alarms_per_key.max(1),
            max_created: limits.max_created.max(1),
            max_quarantined: limits.max_quarantined.max(1),
            quarantine_retention_secs: limits.quarantine_retention_secs.max(0),
        };
        self.aggregator.set_max(self.limits.max_alarms);
        self.aggregator
            .set_max_per_subject(self.limits.max_alarms_per_key);
    }

    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Alarms tracked by the aggregator.
    pub fn tracked_alarms(&self) -> usize {
        self.aggregator.len()
    }

    /// Drops the least recently seen keys (by event time) down to 99% of the cap, so eviction
    /// runs once per 1% of the cap in new keys (a linear pass each time: amortised constant).
    /// A flood of random keys costs the oldest keys their baselines, never the memory bound.
    fn evict(&mut self) {
        let len = self.state.keys.len();
        let max = self.limits.max_keys;
        let target = max - max / 100;
        let excess = len.saturating_sub(target).max(1).min(len);
        let mut ages: Vec<(i64, u64)> = self
            .state
            .keys
            .iter()
            .map(|k| (k.value().last_seen(), *k.key()))
            .collect();
        ages.select_nth_unstable(excess - 1);
        for (_, k) in &ages[..excess] {
            self.state.keys.remove(k);
        }
        self.stats.evicted_keys += excess as u64;
        tracing::warn!(
            evicted = excess,
            cap = max,
            "state cap reached: the least recently seen keys' state dropped"
        );
    }

    /// The alarms with hits not yet notified (end of a replay).
    pub fn flush(&mut self) -> Vec<Alarm> {
        self.aggregator.flush()
    }

    /// Every alarm in its latest state.
    pub fn alarms(&self) -> Vec<Alarm> {
        self.aggregator.snapshot()
    }

    /// [`Engine::alarms`] moved out at the end of a run (no copy of them all at its peak); the
    /// engine tracks no alarm after.
    pub fn take_alarms(&mut self) -> Vec<Alarm> {
        self.aggregator.take_all()
    }

    /// Drops state older than any detector's look-back: each key's relative to its own
    /// watermark; created-key marks (past the longest look-back) and quarantines (past their
    /// retention) relative to the median watermark of the keys, which no minority of keys with
    /// future-dated events can move.
    pub fn expire(&mut self) {
        self.processed_since_expiry = 0;
        let horizon = self.horizon;
        let mut marks: Vec<i64> = Vec::with_capacity(self.state.keys.len());
        for mut k in self.state.keys.iter_mut() {
            // A key a checkpoint being written still holds is expired at the next pass rather
            // than copied now.
            if KeyArc::is_unique(k.value()) {
                KeyArc::make_mut(k.value_mut()).expire(horizon);
            }
            marks.push(k.value().last_seen());
        }
        if marks.is_empty() {
            return;
        }
        let mid = marks.len() / 2;
        let present = *marks.select_nth_unstable(mid).1;
        let before = self.state.created.len();
        let cutoff = present.saturating_sub(horizon);
        self.state.created.retain(|_, v| v.0 >= cutoff);
        self.stats.created_expired += (before - self.state.created.len()) as u64;
        let before = self.state.quarantined.len();
        let cutoff = present.saturating_sub(self.limits.quarantine_retention_secs);
        self.state.quarantined.retain(|_, v| *v >= cutoff);
        self.stats.quarantined_expired += (before - self.state.quarantined.len()) as u64;
    }

    /// Evaluates the rules on one event and updates the state; returns (rule index, hit).
    pub fn detect(&mut self, event: &Event, enr: &Enrichment) -> Vec<(usize, Hit)> {
        let t = event.event_time.timestamp();
        let subject = subject_hash(event);
        let hidden = self.policy.is_hidden(event);
        let mut scratch = std::mem::take(&mut self.scratch);
        event.write_api(&mut scratch.api);
        scratch.api_lower.clear();
        scratch.api_lower.push_str(&scratch.api);
        scratch.api_lower.make_ascii_lowercase();
        let (api, api_lower) = (&scratch.api, &scratch.api_lower);
        let mut added = false;
        let mut key = self.state.keys.entry(subject).or_insert_with(|| {
            added = true;
            KeyArc::new(KeyState::new(t))
        });
        self.caps_due |= added;
        // Copied only if a checkpoint being written holds this key.
        let ks: &mut KeyState = KeyArc::make_mut(key.value_mut());
        let ct = compact_time(t);
        let new_key = ks.first == ct && ks.last == ct && ks.seen.is_empty();
        let lateness = self.policy.allowed_lateness.secs();
        let jump_allowed = lateness.max(MIN_JUMP);
        let mut run = Run {
            lateness,
            watermark: ks.watermark_after(t, jump_allowed),
            jump: ks.is_jump(t, jump_allowed),
            confirmed: (ks.pending != 0
                && ks.watermark_after(t, jump_allowed) >= full_time(ks.pending))
            .then_some(ks.pending),
            jump_allowed,
            max_entries: self.limits.max_window_entries,
            capped: Capped::default(),
        };

        let ip_value = event.source_ip.map(|ip| {
            crate::event::write_ip(ip, &mut scratch.ip);
            scratch.ip.as_str()
        });
        let ip_h = value_hash(Attr::SourceIp, ip_value.unwrap_or(""));
        let ip_new_for_key = !hidden
            && ip_value.is_some()
            && t.saturating_sub(ks.first_seen()) >= IP_NEW_MIN_KEY_AGE
            && !ks.seen_within(ip_h, t, self.ip_history);
        let previous = ks.previous_call(t);
        let engine_idle = (!new_key && t > previous)
            .then(|| (t.saturating_sub(previous) / 86_400).min(i64::from(u32::MAX)) as u32);
        let report_idle = enr.key.as_ref().and_then(|k| {
            let since = k
                .last_used
                .or(if k.never_used { k.created } else { None })?;
            (event.event_time > since).then(|| {
                (event
                    .event_time
                    .timestamp()
                    .saturating_sub(since.timestamp())
                    / 86_400)
                    .min(i64::from(u32::MAX)) as u32
            })
        });
        let key_idle_days = match (engine_idle, report_idle) {
            (Some(e), _) if !new_key => Some(e),
            (_, r) => r,
        };
        let (ip_classes, leaked, key_inactive) = self.shared_facts(event, enr);
        let facts = Facts {
            event,
            ip_classes,
            leaked,
            key_inactive,
            key_idle_days,
            ip_new_for_key,
            api,
            api_lower,
            ip: ip_value,
        };

        let mut hits = Vec::new();
        // What this event adds to the key's memory: the source IP (for `ip_new_for_key`) and
        // the attributes of the `first_seen` rules whose condition it meets.
        let mut remember: smallvec_like::Attrs = smallvec_like::Attrs::new();
        remember.push(Attr::SourceIp);
        for (ri, active) in self.rules.iter().enumerate() {
            let rule = &active.rule;
            if hidden && rule.uses_ip {
                self.stats.ip_hidden_skips += 1;
                continue;
            }
            // Sequence detectors watch their first step whatever the rule's condition.
            for (di, d) in rule.detectors.iter().enumerate() {
                if let Detector::Sequence { first, link, .. } = d
                    && first.eval(&facts)
                {
                    match link {
                        Link::SameKey => {
                            let marks = ks.window(ri as u16, di as u8).marks();
                            insert_sorted(marks, (compact_time(t), ip_h as u32), |m| {
                                i64::from(m.0)
                            });
                            while marks.len() > run.max_entries {
                                marks.pop_front();
                                run.capped.dropped += 1;
                            }
                        }
                        // Cross-key: see `cross_key_marks`.
                        Link::CreatedKey => {}
                    }
                }
            }
            if !rule.cond.eval(&facts) {
                continue;
            }
            for d in &rule.detectors {
                if let Detector::FirstSeen { attr, .. } = d
                    && !remember.contains(attr)
                {
                    remember.push(*attr);
                }
            }
            for (di, d) in rule.detectors.iter().enumerate() {
                if let Some(mut f) = run_detector(
                    d,
                    ri,
                    di,
                    ks,
                    &self.state,
                    event,
                    enr,
                    &facts,
                    ip_h,
                    &mut run,
                ) {
                    add_common_facts(&mut f, &facts, enr);
                    // The tool is the dimension; the user agent that named it is the evidence.
                    if rule.dimension == Attr::Tool
                        && let Some(ua) = event.user_agent.as_deref()
                    {
                        let ua = crate::alarm::bound(
                            ua,
                            crate::alarm::MAX_USER_AGENT_BYTES,
                            &mut self.stats.alarm_fields_truncated,
                        );
                        f.insert("user_agent".into(), json!(ua));
                    }
                    let severity = rule
                        .severity_when
                        .iter()
                        .filter(|(c, _)| c.eval(&facts))
                        .map(|(_, s)| *s)
                        .max();
                    hits.push((
                        ri,
                        Hit {
                            facts: f,
                            dimension: if rule.dimension == Attr::Tool {
                                rule.tool_of(event.user_agent.as_deref()).map(str::to_owned)
                            } else {
                                dimension_value(rule.dimension, event, enr, api, ip_value)
                                    .map(Cow::into_owned)
                            },
                            severity,
                        },
                    ));
                    break;
                }
            }
        }

        // Remember this event.
        ks.observe(t, jump_allowed);
        self.stats.window_entries_summarised += run.capped.summarised;
        self.stats.window_entries_dropped += run.capped.dropped;
        // IP-hidden keys: their IPs (and what is derived from them) stay out of the inventory.
        for attr in remember.iter() {
            if hidden && attr.from_ip() {
                continue;
            }
            if let Some(h) = attr_hash(*attr, event, enr, api, ip_value) {
                ks.remember(h, t);
            }
        }
        drop(key);
        self.cross_key_marks(event, ip_classes, leaked, key_inactive);
        self.scratch = scratch;
        hits
    }

    /// The marks one key's event leaves for *other* keys: a key it created (the first step of a
    /// `link: created_key` sequence) and a principal it quarantined. They depend only on the
    /// event and its enrichment, never on the subject's history (the first step's condition is
    /// evaluated without `ip_new_for_key` / `key_idle_days`), so the partition that owns the
    /// other key can apply them from a marks-only copy of the event ([`Engine::apply_marks`])
    /// and reach the same state as one engine that sees everything.
    fn cross_key_marks(
        &mut self,
        event: &Event,
        ip_classes: IpClasses,
        leaked: bool,
        key_inactive: bool,
    ) {
        let t = event.event_time.timestamp();
        if let Some(created) = &event.request.created_key_id {
            let api = event.api();
            let api_lower = api.to_ascii_lowercase();
            let ip_value = event.source_ip.map(|ip| ip.to_string());
            let ip_h = value_hash(Attr::SourceIp, ip_value.as_deref().unwrap_or(""));
            let facts = Facts {
                event,
                ip_classes,
                leaked,
                key_inactive,
                key_idle_days: None,
                ip_new_for_key: false,
                api: &api,
                api_lower: &api_lower,
                ip: ip_value.as_deref(),
            };
            let hidden = self.policy.is_hidden(event);
            for (ri, active) in self.rules.iter().enumerate() {
                if hidden && active.rule.uses_ip {
                    continue;
                }
                for d in &active.rule.detectors {
                    if let Detector::Sequence {
                        first,
                        link: Link::CreatedKey,
                        ..
                    } = d
                        && first.eval(&facts)
                    {
                        self.state
                            .created
                            .insert((ri as u16, bounded_key_id(&created.0)), (t, ip_h));
                        self.caps_due = true;
                    }
                }
            }
        }
        if is_quarantine(event)
            && let Some(user) = &event.request.target_user
        {
            self.state.quarantined.insert(
                (
                    event.cloud,
                    crate::alarm::truncate_on_char(user, MAX_KEY_ID_BYTES).to_owned(),
                ),
                t,
            );
            self.caps_due = true;
        }
    }

    /// The facts of an event that do not depend on its subject's history: its IP classes,
    /// whether its key is leaked (feed, report flag or a quarantine) and whether it is inactive.
    fn shared_facts(&self, event: &Event, enr: &Enrichment) -> (IpClasses, bool, bool) {
        let t = event.event_time.timestamp();
        let quarantined = event.key_kind == KeyKind::Permanent
            && event.principal.name.as_ref().is_some_and(|n| {
                self.state
                    .quarantined
                    .get(&(
                        event.cloud,
                        crate::alarm::truncate_on_char(n, MAX_KEY_ID_BYTES).to_owned(),
                    ))
                    .is_some_and(|q| *q <= t)
            });
        // A leak counts from when it happened (the feed's date), when the feed says.
        let leaked = enr.leak.as_ref().is_some_and(|l| {
            l.found_at
                .as_deref()
                .and_then(|d| chrono::DateTime::parse_from_rfc3339(d).ok())
                .is_none_or(|d| d <= event.event_time)
        }) || quarantined;
        let key_inactive = enr.key.as_ref().is_some_and(|k| !k.active)
            || (event.key_kind == KeyKind::Permanent
                && enr
                    .principal
                    .as_ref()
                    .is_some_and(|p| !p.keys.is_empty() && p.keys.iter().all(|k| !k.active)));
        let mut ip_classes = enr.ip_class;
        if ip_classes == Default::default() {
            ip_classes.insert(if event.source_ip.is_some() {
                IpClass::Public
            } else {
                IpClass::Unknown
            });
        }
        (ip_classes, leaked, key_inactive)
    }

    /// Applies only the cross-key marks of an event whose subject another engine owns (a
    /// marks-only copy sent to this partition, see `kafka::repartition`).
    pub fn apply_marks(&mut self, event: &Event, enr: &Enrichment) {
        let (ip_classes, leaked, key_inactive) = self.shared_facts(event, enr);
        self.cross_key_marks(event, ip_classes, leaked, key_inactive);
    }

    /// Whether an event leaves marks for other keys (and so needs copies elsewhere).
    pub fn leaves_marks(event: &Event) -> MarksFor {
        MarksFor {
            created_key: event.request.created_key_id.clone(),
            everyone: is_quarantine(event),
        }
    }
}

/// The other subjects an event leaves marks for.
pub struct MarksFor {
    /// The key it created.
    pub created_key: Option<crate::event::AccessKeyId>,
    /// Every subject (a quarantined principal, whose keys are not known here).
    pub everyone: bool,
}

/// What a rule's per-key state is the state of: its id, condition and detectors (thresholds
/// applied). Severity, aggregation and texts do not touch it.
fn state_signature(a: &Active) -> String {
    format!(
        "{}\u{0}{:?}\u{0}{:?}",
        a.rule.id, a.rule.cond, a.rule.detectors
    )
}

/// For each active rule of `old` (by position), its position in `new` when the same rule with
/// the same definition is there (versions of a rule whose alarm-policy entry expires are
/// matched in order), else `None`.
fn rule_map(old: &[Active], new: &[Active]) -> Vec<Option<u16>> {
    let mut free: std::collections::HashMap<String, std::collections::VecDeque<usize>> =
        std::collections::HashMap::new();
    for (j, a) in new.iter().enumerate() {
        free.entry(state_signature(a)).or_default().push_back(j);
    }
    old.iter()
        .map(|a| {
            free.get_mut(&state_signature(a))
                .and_then(std::collections::VecDeque::pop_front)
                .and_then(|j| u16::try_from(j).ok())
        })
        .collect()
}

/// Where an event goes among `n` engines: its subject's engine, which processes it, and the
/// other engines it leaves cross-key marks in (a created key's, every one for a quarantine).
pub fn route(event: &Event, n: u32) -> (u32, Vec<u32>) {
    let owner = subject_partition(event, n);
    let marks = Engine::leaves_marks(event);
    let mut others: Vec<u32> = Vec::new();
    if marks.everyone {
        others.extend((0..n.max(1)).filter(|p| *p != owner));
    } else if let Some(k) = &marks.created_key {
        let p = key_partition(k.as_str(), n);
        if p != owner {
            others.push(p);
        }
    }
    (owner, others)
}

/// The partition of `n` an event's subject (its access key, else its principal) belongs to:
/// every event of one subject goes to one engine.
pub fn subject_partition(event: &Event, n: u32) -> u32 {
    (subject_hash(event) % u64::from(n.max(1))) as u32
}

/// The partition of `n` of the subject with this access key.
pub fn key_partition(key: &str, n: u32) -> u32 {
    (fnv1a(0xcbf2_9ce4_8422_2325, key.as_bytes()) % u64::from(n.max(1))) as u32
}

fn fnv1a(mut h: u64, bytes: &[u8]) -> u64 {
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// The state key of an event's subject (see [`crate::alarm::subject_of`]), hashed without
/// building the string.
fn subject_hash(e: &Event) -> u64 {
    let h = 0xcbf2_9ce4_8422_2325;
    match &e.access_key_id {
        Some(k) => fnv1a(h, k.as_str().as_bytes()),
        None => {
            let h = fnv1a(h, b"principal:");
            let h = fnv1a(h, e.cloud.as_str().as_bytes());
            let h = fnv1a(h, b":");
            let h = fnv1a(
                h,
                e.account_id.as_ref().map_or("-", |a| a.as_str()).as_bytes(),
            );
            let h = fnv1a(h, b":");
            fnv1a(h, e.principal.name.as_deref().unwrap_or("-").as_bytes())
        }
    }
}

/// AWS marked a user's key as exposed: it attached its compromised-key quarantine policy (any
/// version: `AWSCompromisedKeyQuarantine`, `V2`, `V3`) or wrote its older inline policy
/// `AWSExposedCredentialPolicy_DO_NOT_REMOVE`.
fn is_quarantine(e: &Event) -> bool {
    let Some(policy) = e.request.policy.as_deref() else {
        return false;
    };
    e.outcome == Outcome::Success
        && match e.action.as_str() {
            "AttachUserPolicy" => policy.contains("AWSCompromisedKeyQuarantine"),
            "PutUserPolicy" => policy.contains("AWSExposedCredentialPolicy_DO_NOT_REMOVE"),
            _ => false,
        }
}

/// The value of an attribute for an event (None when it has none). `ip` is the event's
/// source IP as text, formatted once per event by the caller.
pub fn dimension_value<'a>(
    attr: Attr,
    e: &'a Event,
    enr: &'a Enrichment,
    api: &'a str,
    ip: Option<&'a str>,
) -> Option<Cow<'a, str>> {
    match attr {
        Attr::None => None,
        Attr::SourceIp => ip.map(Cow::Borrowed),
        Attr::Country => enr.geo.as_ref()?.country.as_deref().map(Cow::Borrowed),
        Attr::City => {
            let g = enr.geo.as_ref()?;
            g.city
                .as_ref()
                .map(|c| Cow::Owned(format!("{}/{c}", g.country.as_deref().unwrap_or("?"))))
        }
        Attr::Asn => enr.geo.as_ref()?.asn.map(|a| Cow::Owned(format!("AS{a}"))),
        Attr::Api => Some(Cow::Borrowed(api)),
        Attr::Action => Some(Cow::Borrowed(&e.action)),
        Attr::Region => e.region.as_deref().map(Cow::Borrowed),
        Attr::UserAgent => e.user_agent.as_deref().map(Cow::Borrowed),
        Attr::Resource => e.request.resource.as_deref().map(Cow::Borrowed),
        Attr::TargetUser => e.request.target_user.as_deref().map(Cow::Borrowed),
        // Named by the rule (`Rule::tool_of`); no value of its own.
        Attr::Tool => None,
    }
}

/// The hash of an attribute's value ([`value_hash`] of [`dimension_value`]) without building
/// the value when it would need formatting (city, ASN).
pub fn attr_hash(
    attr: Attr,
    e: &Event,
    enr: &Enrichment,
    api: &str,
    ip: Option<&str>,
) -> Option<u64> {
    match attr {
        Attr::City => {
            let g = enr.geo.as_ref()?;
            let city = g.city.as_deref()?;
            let mut h = state::Fnv::new(attr);
            h.write(g.country.as_deref().unwrap_or("?").as_bytes());
            h.write(b"/");
            h.write(city.as_bytes());
            Some(h.finish())
        }
        Attr::Asn => {
            let asn = enr.geo.as_ref()?.asn?;
            let mut h = state::Fnv::new(attr);
            h.write(b"AS");
            let mut digits = [0u8; 10];
            let mut n = asn;
            let mut i = digits.len();
            loop {
                i -= 1;
                digits[i] = b'0' + (n % 10) as u8;
                n /= 10;
                if n == 0 {
                    break;
                }
            }
            h.write(&digits[i..]);
            Some(h.finish())
        }
        _ => dimension_value(attr, e, enr, api, ip).map(|v| value_hash(attr, &v)),
    }
}

fn add_common_facts(
    f: &mut BTreeMap<String, serde_json::Value>,
    facts: &Facts<'_>,
    enr: &Enrichment,
) {
    if let Some(leak) = &enr.leak {
        f.insert("leak".into(), json!(leak));
    }
    if let Some(days) = facts.key_idle_days
        && days >= 30
    {
        f.insert("key_idle_days".into(), json!(days));
    }
    if facts.key_inactive {
        f.insert("key_inactive_in_report".into(), json!(true));
    }
    // What the call was about, for every rule: an analyst reads the alarm, not the raw log.
    let e = facts.event;
    if let Some(r) = e.region.as_deref() {
        f.entry("region".into()).or_insert_with(|| json!(r));
    }
    let req = &e.request;
    if let Some(p) = &req.policy {
        f.entry("policy".into()).or_insert_with(|| json!(p));
    }
    if let Some(u) = &req.target_user {
        f.entry("target_user".into()).or_insert_with(|| json!(u));
        f.entry("target_is_caller".into())
            .or_insert_with(|| json!(crate::rule::cond::is_same_user(u, e)));
    }
    if let Some(k) = &req.created_key_id {
        f.entry("created_key_id".into())
            .or_insert_with(|| json!(k.0));
    }
    if let Some(r) = &req.resource {
        f.entry("resource".into()).or_insert_with(|| json!(r));
    }
}

/// What one event's detectors share: the key's watermark after it, whether the event is an
/// unconfirmed jump ahead of the watermark, the caps, and what the caps cost.
struct Run {
    lateness: i64,
    watermark: i64,
    jump: bool,
    /// The jump this event confirms (compact time), if any.
    confirmed: Option<u32>,
    jump_allowed: i64,
    max_entries: usize,
    capped: Capped,
}

/// Drops the oldest entries of a map (by `time`) down to 95% of `max`: one pass to find the
/// cut-off time and one to drop, without copying keys, once per 5% of the cap in new entries
/// (amortised constant). Returns how many were dropped.
fn evict_oldest<K, V>(map: &dashmap::DashMap<K, V>, max: usize, time: impl Fn(&V) -> i64) -> u64
where
    K: Eq + std::hash::Hash,
{
    let len = map.len();
    let target = max - max / 20;
    let excess = len.saturating_sub(target).max(1).min(len);
    if excess == 0 {
        return 0;
    }
    let mut times: Vec<i64> = map.iter().map(|e| time(e.value())).collect();
    let cut = *times.select_nth_unstable(excess - 1).1;
    let mut at_cut = excess - times.iter().filter(|t| **t < cut).count();
    map.retain(|_, v| {
        let t = time(v);
        if t < cut {
            return false;
        }
        if t == cut && at_cut > 0 {
            at_cut -= 1;
            return false;
        }
        true
    });
    let dropped = len.saturating_sub(map.len());
    tracing::warn!(
        evicted = dropped,
        cap = max,
        "map cap reached: the oldest entries dropped"
    );
    dropped as u64
}

#[allow(clippy::too_many_arguments)]
fn run_detector(
    d: &Detector,
    ri: usize,
    di: usize,
    ks: &mut KeyState,
    state: &State,
    event: &Event,
    enr: &Enrichment,
    facts: &Facts<'_>,
    ip_h: u64,
    run: &mut Run,
) -> Option<BTreeMap<String, serde_json::Value>> {
    let t = event.event_time.timestamp();
    let lateness = run.lateness;
    let api = facts.api;
    let mut f = BTreeMap::new();
    match d {
        Detector::Match => Some(f),
        Detector::FirstSeen {
            attr,
            history,
            learning,
        } => {
            let v = dimension_value(*attr, event, enr, api, facts.ip)?;
            if t.saturating_sub(ks.first_seen()) < *learning {
                return None;
            }
            let h = value_hash(*attr, &v);
            if ks.seen_within(h, t, *history) {
                return None;
            }
            f.insert("attribute".into(), json!(attr.as_str()));
            f.insert("value".into(), json!(v));
            f.insert(
                "history".into(),
                json!(crate::rule::Dur(*history).to_string()),
            );
            f.insert(
                "key_known_since".into(),
                json!(chrono::DateTime::from_timestamp(ks.first_seen(), 0)),
            );
            Some(f)
        }
        Detector::Threshold {
            window,
            count,
            baseline,
        } => {
            let key_first_seen = ks.first_seen();
            let window = &(*window).max(1);
            let calls = ks.window(ri as u16, di as u8).calls();
            // The confirmed jump's call, if it was one of this window's, joins the baseline now.
            let confirmed = run
                .confirmed
                .filter(|p| calls.count(p.saturating_sub(1), *p) > 0)
                .map(full_time);
            calls.add(compact_time(t));
            // Trimmed relative to the newest call not past the key's watermark: a future-dated
            // call stays in the window (it counts for calls near it) but cannot push the
            // present out.
            let cutoff = calls
                .newest_not_after(compact_time(run.watermark))
                .map(|newest| full_time(newest).saturating_sub(window.saturating_add(lateness)));
            if let Some(c) = cutoff {
                calls.trim_before(compact_time(c), calls.len() > run.max_entries);
            }
            run.capped.summarised += calls.bound(run.max_entries) as u64;
            // Calls in (t - window, t], not before the cutoff.
            let lo = t
                .saturating_sub(*window)
                .max(cutoff.map_or(i64::MIN, |c| c.saturating_sub(1)));
            let n = calls.count(compact_time(lo), compact_time(t));
            let mut fired = n >= *count;
            if let Some((factor, history)) = baseline {
                // The key's own average per window: an exponentially weighted mean over the
                // baseline history, taken before this window's calls.
                let bucket = t.div_euclid(*window).saturating_mul(*window);
                let alpha = (*window as f32 / (*history).max(1) as f32).clamp(1e-6, 1.0);
                let ewma = &mut calls.baseline;
                if let Some(p) = confirmed {
                    ewma.add(
                        p.div_euclid(*window).saturating_mul(*window),
                        *window,
                        alpha,
                    );
                }
                let mean_before = ewma.mean;
                // An unconfirmed jump ahead of the watermark (a future-dated call, or the first
                // after a quiet spell) does not move the baseline's bucket: one future call
                // would otherwise turn every present call into a late one.
                if !run.jump {
                    ewma.add(bucket, *window, alpha);
                }
                let learned = t.saturating_sub(key_first_seen) >= history / 7;
                fired =
                    fired && learned && f64::from(n) >= factor * f64::from(mean_before).max(1.0);
                f.insert(
                    "baseline_per_window".into(),
                    json!((f64::from(mean_before) * 100.0).round() / 100.0),
                );
            }
            if !fired {
                return None;
            }
            f.insert("count".into(), json!(n));
            f.insert(
                "window".into(),
                json!(crate::rule::Dur(*window).to_string()),
            );
            Some(f)
        }
        Detector::Distinct { window, min } => {
            let mut values = Vec::with_capacity(min.len());
            for (attr, _) in min {
                values.push(attr_hash(*attr, event, enr, api, facts.ip)?);
            }
            let (rule, det) = (ri as u16, di as u8);
            let ct = compact_time(t);
            let ahead = compact_time(run.watermark.saturating_add(run.jump_allowed));
            let wm = compact_time(run.watermark);
            let span = window.saturating_add(lateness);
            let hi = compact_time(t.saturating_add(lateness));
            // Per attribute, its group found once: the sighting; the trim relative to the newest
            // sighting not past the key's watermark (see `threshold`); the values seen in
            // (t - window, t + lateness] (a value's latest sighting stands for it). Every
            // attribute is sighted and trimmed before the rule is judged; the counts replace
            // the hashes.
            for (i, v) in values.iter_mut().enumerate() {
                let (dropped, n) = ks.distinct_step(
                    (rule, det, i as u8),
                    *v,
                    ct,
                    run.max_entries,
                    ahead,
                    wm,
                    |newest| {
                        let cutoff = newest.map(|n| full_time(n).saturating_sub(span));
                        let lo = t
                            .saturating_sub(*window)
                            .max(cutoff.map_or(i64::MIN, |c| c.saturating_sub(1)));
                        (cutoff.map(compact_time), compact_time(lo), hi)
                    },
                );
                run.capped.dropped += dropped as u64;
                *v = u64::from(n);
            }
            let mut counts = BTreeMap::new();
            for ((attr, need), n) in min.iter().zip(&values) {
                let n = u32::try_from(*n).unwrap_or(u32::MAX);
                if n < *need {
                    return None;
                }
                counts.insert(attr.as_str().to_owned(), n);
            }
            f.insert("distinct".into(), json!(counts));
            f.insert(
                "window".into(),
                json!(crate::rule::Dur(*window).to_string()),
            );
            Some(f)
        }
        Detector::Velocity {
            min_km,
            max_kmh,
            max_gap,
        } => {
            if event.outcome != Outcome::Success {
                return None;
            }
            let (lat, lon) = enr.geo.as_ref()?.location()?;
            if facts.ip_classes.contains(IpClass::Service)
                || facts.ip_classes.contains(IpClass::Private)
            {
                return None;
            }
            let here = Located {
                time: compact_time(t),
                lat: lat as f32,
                lon: lon as f32,
                addr: match event.source_ip {
                    Some(std::net::IpAddr::V4(v4)) => v4.to_ipv6_mapped(),
                    Some(std::net::IpAddr::V6(v6)) => v6,
                    None => std::net::Ipv6Addr::UNSPECIFIED,
                },
            };
            let mut worst: Option<(f64, f64, Located)> = None;
            for other in ks
                .locations
                .iter()
                .filter(|o| (full_time(o.time) - t).abs() <= *max_gap && o.addr != here.addr)
            {
                let km = distance_km((lat, lon), (f64::from(other.lat), f64::from(other.lon)));
                let hours = ((t - full_time(other.time)).abs() as f64 / 3600.0).max(1.0 / 60.0);
                let speed = km / hours;
                if km >= *min_km && speed > *max_kmh && worst.is_none_or(|w| speed > w.1) {
                    worst = Some((km, speed, *other));
                }
            }
            ks.locate(here);
            let (km, speed, other) = worst?;
            f.insert("distance_km".into(), json!(km.round()));
            f.insert("speed_kmh".into(), json!(speed.round()));
            f.insert(
                "previous_call_at".into(),
                json!(chrono::DateTime::from_timestamp(full_time(other.time), 0)),
            );
            // (Kept as f32 in the state: rounded to 4 decimals, about 10 m.)
            let round = |x: f32| (f64::from(x) * 1e4).round() / 1e4;
            f.insert(
                "previous_location".into(),
                json!([round(other.lat), round(other.lon)]),
            );
            if let Some(prev) = other.address() {
                f.insert("previous_ip".into(), json!(prev.to_string()));
            }
            if let Some(g) = enr.geo.as_ref() {
                for (k, v) in [("city", &g.city), ("country", &g.country)] {
                    if let Some(v) = v {
                        f.insert(k.into(), json!(v));
                    }
                }
            }
            if let Some(ip) = event.source_ip {
                f.insert("ip".into(), json!(ip.to_string()));
            }
            f.insert("time".into(), json!(event.event_time));
            Some(f)
        }
        Detector::Sequence {
            within,
            link,
            or_same_ip,
            ..
        } => {
            let (first_t, first_ip) = match link {
                Link::SameKey => {
                    let marks = ks.window(ri as u16, di as u8).marks();
                    let (mt, mip) = marks
                        .iter()
                        .rev()
                        .find(|m| {
                            let mt = full_time(m.0);
                            mt <= t && (t - mt <= *within || (*or_same_ip && m.1 == ip_h as u32))
                        })
                        .copied()?;
                    (full_time(mt), u64::from(mip))
                }
                Link::CreatedKey => {
                    let key = event.access_key_id.as_ref()?;
                    let entry = state.created.get(&(ri as u16, bounded_key_id(&key.0)))?;
                    let (ct, cip) = *entry;
                    (ct <= t && (t - ct <= *within || (*or_same_ip && cip == ip_h)))
                        .then_some((ct, cip))?
                }
            };
            f.insert(
                "first_step_at".into(),
                json!(chrono::DateTime::from_timestamp(first_t, 0)),
            );
            f.insert("minutes_after".into(), json!((t - first_t) / 60));
            f.insert(
                "same_ip_as_first_step".into(),
                json!(first_ip as u32 == ip_h as u32),
            );
            Some(f)
        }
    }
}

/// A tiny fixed-capacity attribute list (no allocation per event).
mod smallvec_like {
    use crate::rule::Attr;

    pub struct Attrs {
        items: [Attr; 11],
        len: usize,
    }

    impl Attrs {
        pub fn new() -> Self {
            Attrs {
                items: [Attr::None; 11],
                len: 0,
            }
        }

        pub fn contains(&self, a: &Attr) -> bool {
            self.items[..self.len].contains(a)
        }

        pub fn push(&mut self, a: Attr) {
            if self.len < self.items.len() && !self.contains(&a) {
                self.items[self.len] = a;
                self.len += 1;
            }
        }

        pub fn iter(&self) -> impl Iterator<Item = &Attr> {
            self.items[..self.len].iter()
        }
    }
}
