//! Bounded work and memory: one key's per-event cost independent of its history, windows that
//! one far-future event cannot move, caps on every map the engine keeps.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use akwatch::alarm::{Alarm, AlarmStatus};

use akwatch::engine::{Engine, Limits};
use akwatch::enrich::{Enrichment, IpClass};
use akwatch::event::{
    AccessKeyId, AccountId, Cloud, Event, KeyKind, Origin, Outcome, Principal, PrincipalType,
    Request,
};
use akwatch::policy::Policy;
use akwatch::rule::RuleSet;
use chrono::DateTime;
use proptest::prelude::*;

use crate::repo;

/// 2025-06-15 00:00:00 UTC.
const T0: i64 = 1_749_945_600;

fn rules() -> RuleSet {
    RuleSet::load(&repo().join("rules")).unwrap_or_else(|e| panic!("{e:#?}"))
}

fn engine() -> Engine {
    Engine::new(&rules(), Policy::default()).unwrap_or_else(|e| panic!("{e:#?}"))
}

/// An AWS call of `key` at `t` (seconds).
fn call(key: &str, service: &str, action: &str, ip: &str, t: i64) -> Event {
    Event {
        cloud: Cloud::Aws,
        event_id: format!("{key}-{action}-{t}"),
        event_time: DateTime::from_timestamp(t, 0).unwrap(),
        account_id: Some(AccountId("111122223333".into())),
        principal: Principal {
            kind: PrincipalType::User,
            name: Some(format!("u-{key}")),
            id: None,
            arn: Some(format!("arn:aws:iam::111122223333:user/u-{key}")),
            role: None,
            invoked_by: None,
            mfa: None,
            instance_id: None,
        },
        access_key_id: Some(AccessKeyId(key.to_owned())),
        key_kind: KeyKind::Permanent,
        source_ip: ip.parse().ok(),
        source_address: None,
        user_agent: Some("aws-cli/2.15.0".into()),
        region: Some("us-east-1".into()),
        service: service.to_owned(),
        action: action.to_owned(),
        read_only: Some(true),
        console: false,
        outcome: Outcome::Success,
        error_code: None,
        request_id: None,
        request: Request::default(),
        origin: Origin::default(),
    }
}

fn public() -> Enrichment {
    let mut enr = Enrichment::default();
    enr.ip_class.insert(IpClass::Public);
    enr
}

/// `n` calls of one key, ten a second, each to an API it never called before: every call is in
/// the 6-hour `distinct` window and the 10-minute `threshold` windows of the ones after it.
fn one_key_many_apis(n: usize) -> Duration {
    let mut engine = engine();
    let enr = public();
    let events: Vec<Event> = (0..n)
        .map(|i| {
            call(
                "AKIAONEKEY0000000001",
                "ec2",
                &format!("DescribeThing{i}"),
                "203.0.113.10",
                T0 + (i / 10) as i64,
            )
        })
        .collect();
    let start = Instant::now();
    let mut alarms = 0;
    for e in &events {
        alarms += engine.process(e, &enr).len();
    }
    let took = start.elapsed();
    assert!(alarms > 0, "the enumeration is seen");
    took
}

/// Per-event cost does not grow with the key's history: 16 times the events take well under
/// 30 times as long (quadratic cost would be 256 times).
#[test]
fn one_key_with_many_distinct_apis_costs_linear_time() {
    // The best of three for the small run: a shared machine's noise only makes runs slower.
    let small = (0..3).map(|_| one_key_many_apis(10_000)).min().unwrap();
    let mid = one_key_many_apis(40_000);
    let large = (0..2).map(|_| one_key_many_apis(160_000)).min().unwrap();
    eprintln!("one key, distinct APIs: 10k {small:?}, 40k {mid:?}, 160k {large:?}");
    assert!(
        large < small * 30,
        "10k events {small:?}, 160k events {large:?}: not linear"
    );
}

/// A burst of one key: 20 denied calls in 20 seconds, each a different discovery API in one of
/// six regions (an access-denied burst, an enumeration burst, a region sweep).
fn burst(key: &str, start: i64) -> Vec<Event> {
    const REGIONS: [&str; 6] = [
        "us-east-1",
        "us-west-2",
        "eu-west-1",
        "eu-central-1",
        "ap-southeast-1",
        "sa-east-1",
    ];
    (0..20)
        .map(|i| {
            let mut e = call(
                key,
                "ec2",
                &format!("DescribeThing{i}"),
                "203.0.113.10",
                start + i,
            );
            e.region = Some(REGIONS[i as usize % REGIONS.len()].into());
            e.outcome = Outcome::Failure;
            e.error_code = Some("Client.UnauthorizedOperation".into());
            e
        })
        .collect()
}

/// The rules the burst raises, optionally with one far-future call of the same key in its
/// middle (and a state expiry right after it).
fn burst_rules(future: Option<i64>) -> std::collections::BTreeSet<String> {
    let mut engine = engine();
    let enr = public();
    let key = "AKIAFUTURE0000000001";
    // A day of ordinary history first.
    for h in 0..24 {
        engine.process(
            &call(key, "s3", "ListBuckets", "203.0.113.10", T0 + h * 3600),
            &enr,
        );
    }
    let mut rules = std::collections::BTreeSet::new();
    for (i, e) in burst(key, T0 + 86_400).iter().enumerate() {
        if i == 10
            && let Some(f) = future
        {
            engine.process(&call(key, "s3", "ListBuckets", "203.0.113.10", f), &enr);
            engine.expire();
        }
        for a in engine.process(e, &enr) {
            rules.insert(a.rule_id);
        }
    }
    rules
}

#[test]
fn one_far_future_event_does_not_blind_its_key() {
    let plain = burst_rules(None);
    for rule in [
        "ak.access_denied_burst",
        "ak.enumeration_burst",
        "ak.region_sweep",
    ] {
        assert!(
            plain.contains(rule),
            "{rule} not raised by the burst: {plain:?}"
        );
    }
    // 2099, the last second state can hold, the end of chrono's range; and one far-past call.
    for future in [4_070_908_800, 5_241_652_095, 8_210_266_876_799, 978_307_200] {
        assert_eq!(
            burst_rules(Some(future)),
            plain,
            "after an event at {future}"
        );
    }
}

/// One generated call: key, time, API, IP, user agent, created key id, quarantine.
#[derive(Debug, Clone)]
struct Gen {
    key: u8,
    time: i64,
    api: u8,
    ip: u8,
    agent: String,
    created: Option<String>,
    denied: bool,
}

fn gen_call() -> impl Strategy<Value = Gen> {
    let time = prop_oneof![
        8 => (0i64..6 * 3600).prop_map(|d| T0 + d),
        1 => (0i64..86_400 * 365 * 80).prop_map(|d| T0 + d),
        1 => (0i64..86_400 * 365 * 20).prop_map(|d| T0 - d),
        1 => prop::sample::select(vec![
            DateTime::<chrono::Utc>::MIN_UTC.timestamp(),
            DateTime::<chrono::Utc>::MAX_UTC.timestamp(),
            0,
            i64::from(u32::MAX) + 946_684_800,
        ]),
    ];
    let agent = prop_oneof![
        Just("aws-cli/2.15.0".to_owned()),
        (0usize..3000).prop_map(|n| format!("kali-{}", "é".repeat(n))),
    ];
    let created = prop::option::of((1usize..3000).prop_map(|n| format!("AKIA{}", "K".repeat(n))));
    (0u8..4, time, 0u8..40, 0u8..8, agent, created, any::<bool>()).prop_map(
        |(key, time, api, ip, agent, created, denied)| Gen {
            key,
            time,
            api,
            ip,
            agent,
            created,
            denied,
        },
    )
}

fn to_event(g: &Gen) -> Event {
    let key = format!("AKIAPROP{:012}", g.key);
    let (service, action) = match g.api {
        0 => ("iam", "CreateAccessKey".to_owned()),
        1 => ("iam", "AttachUserPolicy".to_owned()),
        2 => ("iam", "ListUsers".to_owned()),
        n => ("ec2", format!("DescribeThing{n}")),
    };
    let mut e = call(
        &key,
        service,
        &action,
        &format!("198.51.100.{}", g.ip),
        g.time,
    );
    e.user_agent = Some(g.agent.clone());
    e.region = Some(format!("region-{}", g.api % 7));
    if g.denied {
        e.outcome = Outcome::Failure;
        e.error_code = Some("AccessDenied".into());
    }
    e.request.resource = Some(format!("secret-{}", g.api));
    match g.api {
        0 => {
            e.request.created_key_id = g.created.clone().map(AccessKeyId);
            e.request.target_user = Some("svc".into());
        }
        1 => {
            e.request.policy = Some("arn:aws:iam::aws:policy/AWSCompromisedKeyQuarantineV2".into());
            e.request.target_user = g.created.clone().or(Some("u".into()));
        }
        _ => {}
    }
    e
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// No sequence of valid events panics or grows the state past its caps (set small here).
    #[test]
    fn no_event_sequence_grows_state_past_its_caps(calls in prop::collection::vec(gen_call(), 1..300)) {
        let mut engine = engine();
        let limits = Limits {
            max_keys: 3,
            max_window_entries: 8,
            max_alarms: 5,
            max_alarms_per_key: 2,
            max_created: 4,
            max_quarantined: 2,
            quarantine_retention_secs: 86_400,
        };
        engine.set_limits(limits);
        let enr = public();
        for (i, g) in calls.iter().enumerate() {
            for a in engine.process(&to_event(g), &enr) {
                let json = serde_json::to_string(&a).unwrap();
                prop_assert!(json.len() < 32 * 1024, "{} bytes: {}", json.len(), &json[..2000]);
            }
            if i % 50 == 49 {
                engine.expire();
            }
            prop_assert!(engine.state.keys.len() <= limits.max_keys);
            prop_assert!(engine.state.created.len() <= limits.max_created);
            prop_assert!(engine.state.quarantined.len() <= limits.max_quarantined);
            prop_assert!(engine.tracked_alarms() <= limits.max_alarms);
            let mut per_key = std::collections::BTreeMap::new();
            for a in engine.alarms() {
                *per_key.entry(a.access_key_id.clone()).or_insert(0usize) += 1;
            }
            prop_assert!(per_key.values().all(|n| *n <= limits.max_alarms_per_key), "{per_key:?}");
            for k in &engine.state.keys {
                for (_, w) in &k.value().windows {
                    prop_assert!(w.len() <= limits.max_window_entries, "{w:?}");
                }
                let mut groups = std::collections::BTreeMap::new();
                for s in &k.value().sightings {
                    *groups.entry((s.rule, s.detector, s.attr)).or_insert(0usize) += 1;
                }
                prop_assert!(groups.values().all(|n| *n <= limits.max_window_entries), "{groups:?}");
                prop_assert!(k.value().seen.len() <= akwatch::engine::state::MAX_SEEN_PER_KEY);
            }
            for e in &engine.state.created {
                prop_assert!(e.key().1.len() <= akwatch::engine::MAX_KEY_ID_BYTES);
            }
        }
        let (_, entries, _) = engine.state.size();
        prop_assert!(entries < 4 * 1024);
        engine.flush();
    }
}

/// An alarm's input-derived fields are bounded: a 10 MB user agent is cut to 512 bytes.
#[test]
fn alarm_fields_are_bounded() {
    let mut engine = engine();
    let enr = public();
    let mut e = call(
        "AKIAHUGEAGENT0000001",
        "s3",
        "ListBuckets",
        "203.0.113.10",
        T0,
    );
    e.user_agent = Some(format!("kali-{}", "a".repeat(10 << 20)));
    e.principal.arn = Some(format!(
        "arn:aws:iam::111122223333:user/{}",
        "ü".repeat(1 << 20)
    ));
    e.principal.name = e.principal.arn.clone();
    let alarms = engine.process(&e, &enr);
    let tool = alarms
        .iter()
        .find(|a| a.rule_id == "ak.hacker_tool")
        .expect("the hacker tool is seen");
    // One alarm per key and tool: the dimension is the tool's name, the user agent the
    // evidence, cut.
    assert_eq!(tool.dimension.as_ref().unwrap().value, "kali");
    let agent = tool.evidence.facts["user_agent"].as_str().unwrap();
    assert!(
        agent.len() <= akwatch::alarm::MAX_USER_AGENT_BYTES,
        "{}",
        agent.len()
    );
    assert!(
        agent.starts_with("kali-aaa") && agent.ends_with("bytes cut]"),
        "{agent}"
    );
    let arn = tool.principal.arn.as_deref().unwrap();
    assert!(arn.len() <= akwatch::alarm::MAX_TEXT_BYTES);
    for a in &alarms {
        assert!(serde_json::to_string(a).unwrap().len() < 16 * 1024);
    }
    assert!(engine.stats.alarm_fields_truncated > 0);
}

/// Past the alarm cap the least recently updated alarm is dropped (its pending hits notified
/// first); hit again, it comes back with the same id.
#[test]
fn tracked_alarms_are_capped_least_recently_updated_first() {
    let mut engine = engine();
    engine.set_limits(Limits {
        max_alarms: 10,
        ..Limits::default()
    });
    let enr = public();
    let tool = |i: usize, t: i64| {
        let mut e = call(
            &format!("AKIATOOL{i:012}"),
            "s3",
            "ListBuckets",
            "203.0.113.10",
            t,
        );
        e.user_agent = Some("kali-2024".into());
        e
    };
    let first: Vec<_> = engine.process(&tool(0, T0), &enr);
    let id = first
        .iter()
        .find(|a| a.rule_id == "ak.hacker_tool")
        .unwrap()
        .alarm_id
        .clone();
    // A second hit, not yet notified (renotify 1 h).
    assert!(
        engine
            .process(&tool(0, T0 + 1), &enr)
            .iter()
            .all(|a| a.alarm_id != id)
    );
    let mut flushed = Vec::new();
    for i in 1..40 {
        flushed.extend(engine.process(&tool(i, T0 + 10 + i as i64), &enr));
    }
    assert!(engine.tracked_alarms() <= 10);
    assert!(engine.stats.alarms_evicted >= 30);
    let update = flushed
        .iter()
        .find(|a| a.alarm_id == id)
        .expect("the evicted alarm's pending hit is notified");
    assert_eq!(update.count, 2);
    let again = engine.process(&tool(0, T0 + 100), &enr);
    assert!(again.iter().any(|a| a.alarm_id == id));
}

/// The consume task's pause for a checkpoint: `Engine::snapshot` on 200,000 keys (printed;
/// `cargo test --release --test it snapshot_pause -- --ignored --nocapture`).
#[test]
#[ignore = "a measurement"]
fn snapshot_pause() {
    let mut engine = engine();
    let enr = public();
    for i in 0..200_000i64 {
        for n in 0..3 {
            let e = call(
                &format!("AKIASNAP{i:012}"),
                "ec2",
                &format!("DescribeThing{n}"),
                &format!("198.51.{}.{}", i % 200, n + 1),
                T0 + i + n * 600,
            );
            engine.process(&e, &enr);
        }
    }
    let start = Instant::now();
    let snapshot = engine.snapshot();
    let took = start.elapsed();
    let (keys, entries, bytes) = engine.state.size();
    eprintln!(
        "snapshot of {keys} keys ({entries} entries, {bytes} bytes): {took:?} on the consume task"
    );
    let start = Instant::now();
    let json = serde_json::to_vec(&snapshot).unwrap();
    eprintln!(
        "serialised ({} bytes) in {:?}, off the consume task",
        json.len(),
        start.elapsed()
    );
}

/// One call, one alarm: stopping a trail is a sensitive API too, but `ak.sensitive_api` names
/// `ak.audit_tamper` (and `ak.security_tamper`) as stronger, so the call raises the stronger
/// alarm alone and the weaker hit is counted as superseded; a sensitive call no stronger rule
/// raises still gets its `ak.sensitive_api` alarm.
#[test]
fn a_stronger_rule_supersedes_the_weaker_on_the_same_call() {
    let mut engine = engine();
    let enr = public();
    let key = "AKIATAMPER0000000001";
    let rules_of = |alarms: &[akwatch::alarm::Alarm]| -> Vec<String> {
        let mut r: Vec<String> = alarms.iter().map(|a| a.rule_id.clone()).collect();
        r.sort();
        r
    };
    let stop = engine.process(
        &call(key, "cloudtrail", "StopLogging", "203.0.113.10", T0),
        &enr,
    );
    let got = rules_of(&stop);
    assert!(got.contains(&"ak.audit_tamper".to_owned()), "{got:?}");
    assert!(!got.contains(&"ak.sensitive_api".to_owned()), "{got:?}");
    assert_eq!(engine.stats.superseded.get("ak.sensitive_api"), Some(&1));
    let archive = engine.process(
        &call(
            key,
            "securityhub",
            "BatchUpdateFindings",
            "203.0.113.10",
            T0 + 60,
        ),
        &enr,
    );
    let got = rules_of(&archive);
    assert!(got.contains(&"ak.security_tamper".to_owned()), "{got:?}");
    assert!(!got.contains(&"ak.sensitive_api".to_owned()), "{got:?}");
    assert_eq!(engine.stats.superseded.get("ak.sensitive_api"), Some(&2));
    let mut create = call(key, "iam", "CreateUser", "203.0.113.10", T0 + 120);
    create.request.target_user = Some("mallory".into());
    let got = rules_of(&engine.process(&create, &enr));
    assert!(got.contains(&"ak.sensitive_api".to_owned()), "{got:?}");
    assert_eq!(engine.stats.superseded.get("ak.sensitive_api"), Some(&2));
}

/// Discovery, persistence and defence evasion on one key within a day: besides each rule's
/// alarm, one `critical` `ak.attack_sequence` incident listing the member alarms and the
/// stages; a later stage updates it (same id, more members). Another key that only enumerates
/// (one stage) raises none.
#[test]
fn alarms_of_several_stages_on_one_key_make_one_attack_sequence() {
    let mut engine = engine();
    let enr = public();
    let key = "AKIASEQUENCE00000001";
    let ip = "203.0.113.10";
    let mut out = Vec::new();
    for i in 0..6 {
        let action = format!("DescribeThing{i}");
        out.extend(engine.process(&call(key, "ec2", &action, ip, T0 + i), &enr));
    }
    let mut backdoor = call(key, "iam", "CreateAccessKey", ip, T0 + 600);
    backdoor.request.target_user = Some("bob".into());
    out.extend(engine.process(&backdoor, &enr));
    assert!(
        out.iter().all(|a| a.rule_id != "ak.attack_sequence"),
        "two stages are no sequence yet: {:?}",
        out.iter().map(|a| &a.rule_id).collect::<Vec<_>>()
    );
    let tamper = engine.process(&call(key, "cloudtrail", "StopLogging", ip, T0 + 1200), &enr);
    let incident = tamper
        .iter()
        .find(|a| a.rule_id == "ak.attack_sequence")
        .expect("the third stage makes an attack sequence");
    assert_eq!(incident.severity, akwatch::rule::Severity::Critical);
    assert_eq!(incident.status, akwatch::alarm::AlarmStatus::Created);
    let members: Vec<&str> = incident.evidence.facts["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["rule_id"].as_str().unwrap())
        .collect();
    for rule in ["ak.enumeration_burst", "ak.backdoor_key", "ak.audit_tamper"] {
        assert!(members.contains(&rule), "{members:?}");
    }
    let stages = incident.evidence.facts["stages"].to_string();
    for stage in ["discovery", "persistence", "defence evasion"] {
        assert!(stages.contains(stage), "{stages}");
    }
    assert!(incident.attack.tactics.contains(&"TA0005".to_owned()));
    assert_eq!(incident.access_key_id.as_ref().unwrap().0, key);
    // It starts with its first member: the burst, raised by its sixth call.
    assert_eq!(incident.first_seen.timestamp(), T0 + 5);
    // A further stage: the same incident, updated with one more member.
    let mut grant = call(key, "iam", "AttachUserPolicy", ip, T0 + 1800);
    grant.request.policy = Some("arn:aws:iam::aws:policy/AdministratorAccess".into());
    grant.request.target_user = Some("bob".into());
    let more = engine.process(&grant, &enr);
    let update = more
        .iter()
        .find(|a| a.rule_id == "ak.attack_sequence")
        .expect("a new member updates the incident");
    assert_eq!(update.alarm_id, incident.alarm_id);
    assert_eq!(update.status, akwatch::alarm::AlarmStatus::Updated);
    assert!(update.count > incident.count);
    // One stage only: no incident.
    let other = "AKIAONLYDISCOVERY001";
    let mut quiet = Vec::new();
    for i in 0..6 {
        let action = format!("ListThing{i}");
        quiet.extend(engine.process(&call(other, "s3", &action, ip, T0 + i), &enr));
    }
    assert!(quiet.iter().any(|a| a.rule_id == "ak.enumeration_burst"));
    assert!(quiet.iter().all(|a| a.rule_id != "ak.attack_sequence"));
}

/// Past the per-key cap a key's least recently updated alarm is closed (its pending hits
/// notified first), so one key in a storm cannot take the whole alarm cap; every alarm is
/// still delivered.
#[test]
fn tracked_alarms_per_key_are_capped() {
    let mut engine = engine();
    engine.set_limits(Limits {
        max_alarms_per_key: 5,
        ..Limits::default()
    });
    let enr = public();
    let backdoor = |user: usize, t: i64| {
        let mut e = call(
            "AKIASTORM00000000001",
            "iam",
            "CreateAccessKey",
            "203.0.113.10",
            t,
        );
        e.request.target_user = Some(format!("victim-{user}"));
        e
    };
    let mut out: Vec<Alarm> = Vec::new();
    out.extend(engine.process(&backdoor(0, T0), &enr));
    // A second hit on the first alarm, not yet notified (renotify 1 h).
    out.extend(engine.process(&backdoor(0, T0 + 1), &enr));
    let first = out
        .iter()
        .find(|a| a.rule_id == "ak.backdoor_key")
        .expect("a backdoor key alarm")
        .alarm_id
        .clone();
    for user in 1..20 {
        out.extend(engine.process(&backdoor(user, T0 + 10 + user as i64), &enr));
    }
    let created: BTreeSet<&str> = out
        .iter()
        .filter(|a| a.rule_id == "ak.backdoor_key" && a.status == AlarmStatus::Created)
        .map(|a| a.alarm_id.as_str())
        .collect();
    assert_eq!(created.len(), 20, "every target user's alarm is delivered");
    assert!(engine.tracked_alarms() <= 5, "{}", engine.tracked_alarms());
    assert!(engine.stats.alarms_evicted_per_key >= 15);
    assert_eq!(
        engine.stats.alarms_evicted,
        engine.stats.alarms_evicted_per_key
    );
    let update = out
        .iter()
        .find(|a| a.alarm_id == first && a.status == AlarmStatus::Updated)
        .expect("the closed alarm's pending hit is notified");
    assert_eq!(update.count, 2);
}

/// The rules the burst raises when the rules are reloaded (`change`d) in its middle: before
/// the reload, and after it.
fn burst_rules_across_a_reload(
    change: impl Fn(&mut RuleSet),
) -> (BTreeSet<String>, BTreeSet<String>) {
    let mut engine = engine();
    let enr = public();
    let key = "AKIARELOAD0000000001";
    for h in 0..24 {
        engine.process(
            &call(key, "s3", "ListBuckets", "203.0.113.10", T0 + h * 3600),
            &enr,
        );
    }
    let (mut before, mut after) = (BTreeSet::new(), BTreeSet::new());
    for (i, e) in burst(key, T0 + 86_400).iter().enumerate() {
        if i == 10 {
            let mut new = rules();
            change(&mut new);
            engine.set_rules(&new, Policy::default()).unwrap();
        }
        for a in engine.process(e, &enr) {
            if i < 10 { &mut before } else { &mut after }.insert(a.rule_id);
        }
    }
    (before, after)
}

/// A reload keeps each key's windows for the rules whose definition did not change, even
/// when their positions shift (state is addressed by position), and drops those of a rule
/// whose detectors changed.
#[test]
fn a_rule_reload_keeps_the_state_of_unchanged_rules_only() {
    let straight = burst_rules(None);
    let windowed: Vec<String> = rules()
        .rules
        .iter()
        .filter(|r| straight.contains(&r.id))
        .filter(|r| {
            r.detectors.iter().any(|d| {
                matches!(
                    d,
                    akwatch::rule::Detector::Threshold { .. }
                        | akwatch::rule::Detector::Distinct { .. }
                )
            })
        })
        .map(|r| r.id.clone())
        .collect();
    assert!(!windowed.is_empty(), "the burst raises windowed rules");
    // The same rules: the same alarms, some of them only after the reload (their windows
    // were kept).
    let all = |(b, a): (BTreeSet<String>, BTreeSet<String>)| -> BTreeSet<String> {
        b.union(&a).cloned().collect()
    };
    let (before, after) = burst_rules_across_a_reload(|_| {});
    assert_eq!(all((before.clone(), after.clone())), straight);
    let late: Vec<&String> = windowed.iter().filter(|id| !before.contains(*id)).collect();
    assert!(
        !late.is_empty(),
        "a windowed rule raised after the reload: {after:?}"
    );
    // The late rules moved to the end of the set and a rule the burst does not raise removed:
    // positions change, the same alarms.
    let unrelated = rules()
        .rules
        .iter()
        .find(|r| !straight.contains(&r.id))
        .unwrap()
        .id
        .clone();
    let moved = burst_rules_across_a_reload(|r| {
        r.rules.retain(|r| r.id != unrelated);
        for id in &late {
            let at = r.rules.iter().position(|r| &r.id == *id).unwrap();
            let rule = r.rules.remove(at);
            r.rules.push(rule);
        }
    });
    assert_eq!(all(moved), straight);
    // The windowed rules' windows one second longer: a new definition, their state starts
    // again in the middle of the burst, and those raised only late do not reach their
    // thresholds.
    let (_, changed) = burst_rules_across_a_reload(|r| {
        for rule in r.rules.iter_mut().filter(|r| windowed.contains(&r.id)) {
            for d in &mut rule.detectors {
                if let akwatch::rule::Detector::Threshold { window, .. }
                | akwatch::rule::Detector::Distinct { window, .. } = d
                {
                    *window += 1;
                }
            }
        }
    });
    for id in late {
        assert!(
            !changed.contains(id),
            "{id} raised across a change: {changed:?}"
        );
    }
}

/// State saved before 2026-12-04 holds 64-bit value hashes (and an `ip` hash per located call);
/// it is read as 32-bit folds: what it remembered is still known, lists sorted again, and two
/// values whose hashes fold alike merged (the earliest first sighting, the latest last).
#[test]
fn state_saved_with_64_bit_hashes_restores_as_folds() {
    use akwatch::engine::state::{KeyState, fold, value_hash};
    use akwatch::rule::Attr;

    let ip = value_hash(Attr::SourceIp, "203.0.113.7");
    let ua = value_hash(Attr::UserAgent, "aws-cli/2.15.0");
    // Two 64-bit hashes with the same fold.
    let twin = ip ^ 0x0000_0001_0000_0001;
    assert_eq!(fold(twin), fold(ip));
    let (t0, t1) = (800_000_000_u32, 800_003_600_u32);
    let saved = serde_json::json!({
        "first": t0, "last": t1, "pending": 0,
        "seen": [
            {"hash": ua, "first": t0, "last": t0},
            {"hash": ip, "first": t0 + 10, "last": t0 + 20},
            {"hash": twin, "first": t0 + 5, "last": t1},
        ],
        "windows": [],
        "sightings": [
            {"hash": ua, "time": t0, "rule": 3, "detector": 0, "attr": 1},
            {"hash": ip, "time": t0, "rule": 3, "detector": 0, "attr": 0},
            {"hash": twin, "time": t1, "rule": 3, "detector": 0, "attr": 0},
        ],
        "locations": [
            {"time": t1, "lat": 1.5, "lon": 2.5, "ip": 7, "addr": "::ffff:203.0.113.7"},
            {"time": t0, "lat": 3.5, "lon": 4.5, "ip": 9, "addr": "::ffff:198.51.100.1"},
        ],
    });
    let mut ks: KeyState = serde_json::from_value(saved).unwrap();
    let t = |c: u32| akwatch::engine::state::full_time(c);
    // Remembered values are found by their 64-bit hashes, as the engine asks.
    assert!(ks.seen_within(ua, t(t1), 86_400));
    assert!(ks.seen_within(ip, t(t1), 86_400));
    assert_eq!(ks.seen.len(), 2, "the twins merged: {:?}", ks.seen);
    let merged = ks.seen.iter().find(|s| s.hash == fold(ip)).unwrap();
    assert_eq!((merged.first, merged.last), (t0 + 5, t1));
    assert!(ks.seen.windows(2).all(|w| w[0].hash < w[1].hash));
    // One distinct value left in group (3, 0, 0), seen last at t1; one in (3, 0, 1).
    assert_eq!(ks.group_count((3, 0, 0), 0, u32::MAX), 1);
    assert_eq!(ks.group_count((3, 0, 1), 0, u32::MAX), 1);
    assert_eq!(ks.group_newest_not_after((3, 0, 0), u32::MAX), Some(t1));
    // A sighting of a known value adds nothing.
    assert_eq!(ks.sight((3, 0, 0), ip, t1 + 1, 100, u32::MAX), 0);
    assert_eq!(ks.group_count((3, 0, 0), 0, u32::MAX), 1);
    // Located calls sorted by time, their IPs kept.
    let ips: Vec<String> = ks
        .locations
        .iter()
        .map(|l| l.address().unwrap().to_string())
        .collect();
    assert_eq!(ips, ["198.51.100.1", "203.0.113.7"]);
    // And it saves and reads back as it is.
    let again: KeyState = serde_json::from_str(&serde_json::to_string(&ks).unwrap()).unwrap();
    assert_eq!(format!("{again:?}"), format!("{ks:?}"));
}

/// A `distinct` group cut by its cap into the range where its time index is kept but not
/// built (32 to 63 values: `state_max_window_entries` 64 to 72) counts the values it kept, not
/// the ones it dropped (the index was left with their times until 2026-12-04).
#[test]
fn a_distinct_group_cut_by_its_cap_counts_only_what_it_kept() {
    use akwatch::engine::state::{KeyState, value_hash};
    use akwatch::rule::Attr;
    let mut ks = KeyState::new(1_000_000_000);
    let g = (0, 0, 0);
    let max = 70;
    let mut dropped = 0;
    for i in 0..=max {
        let h = value_hash(Attr::Api, &format!("svc:Api{i}"));
        dropped += ks.sight(g, h, 800_000_000 + i as u32, max, u32::MAX);
    }
    // 71 values, over the cap of 70: cut to 70 - 70 / 8 = 62.
    assert_eq!(dropped, 9);
    assert_eq!(ks.group_count(g, 0, u32::MAX), 62);
    // The oldest went: the newest 62 remain.
    assert_eq!(ks.group_count(g, 0, 800_000_000 + 8), 0);
    assert_eq!(ks.group_count(g, 800_000_000 + 8, u32::MAX), 62);
}
