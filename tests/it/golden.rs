//! Golden tests: every fixture under `tests/fixtures/ingest/` is normalized and compared with
//! `tests/golden/ingest/<fixture>.jsonl` (events, then `{"rejected": ...}` lines).
//! `UPDATE_GOLDEN=1 cargo test` rewrites the goldens; review the diff before committing.
//! The explicit tests below pin the facts that matter, so a blessed golden cannot hide them.

use std::fmt::Write as _;
use std::net::IpAddr;

use akwatch::event::{Cloud, KeyKind, Outcome, PrincipalType};
use akwatch::provider::{Decoder, RejectKind};
use serde_json::json;

use crate::{Read, fixture, read_file, repo};

fn render(read: &Read) -> String {
    let mut out = String::new();
    for e in &read.events {
        writeln!(out, "{}", serde_json::to_string(e).unwrap()).unwrap();
    }
    for (r, _) in &read.rejects {
        let line =
            json!({"rejected": {"kind": r.kind.as_str(), "reason": r.reason, "origin": r.origin}});
        writeln!(out, "{line}").unwrap();
    }
    out
}

#[test]
fn fixtures_match_their_goldens() {
    let dir = repo().join("tests/fixtures/ingest");
    let golden_dir = repo().join("tests/golden/ingest");
    let update = std::env::var_os("UPDATE_GOLDEN").is_some();
    let mut names: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    names.sort();
    assert!(names.len() >= 12, "fixtures missing: {names:?}");
    let mut failures = Vec::new();
    for name in names {
        let name = name.to_string_lossy().into_owned();
        let read = read_file(&dir.join(&name), Decoder::auto());
        // Origins name the file relative to the repository, so goldens do not depend on where
        // the checkout lives.
        let got = render(&read).replace(&format!("{}/", repo().display()), "");
        let golden = golden_dir.join(format!("{name}.jsonl"));
        if update {
            std::fs::write(&golden, &got).unwrap();
            continue;
        }
        match std::fs::read_to_string(&golden) {
            Ok(want) if want == got => {}
            Ok(want) => failures.push(format!(
                "{name}: output differs from {}\n--- want\n{want}--- got\n{got}",
                golden.display()
            )),
            Err(_) => failures.push(format!(
                "{name}: no golden at {} (run with UPDATE_GOLDEN=1)",
                golden.display()
            )),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

fn one(name: &str) -> Read {
    let read = read_file(&fixture(&format!("ingest/{name}")), Decoder::auto());
    assert!(read.rejects.is_empty(), "{name}: {:?}", read.rejects);
    read
}

fn ip(s: &str) -> Option<IpAddr> {
    Some(s.parse().unwrap())
}

#[test]
fn aws_single_event() {
    let e = &one("aws_single.json").events[0];
    assert_eq!(e.cloud, Cloud::Aws);
    assert_eq!(
        e.access_key_id.as_ref().unwrap().as_str(),
        "AKIATESTDEPLOYER0001"
    );
    assert_eq!(e.key_kind, KeyKind::Permanent);
    assert_eq!(e.principal.kind, PrincipalType::User);
    assert_eq!(e.principal.name.as_deref(), Some("ci-deployer"));
    assert_eq!(e.account_id.as_ref().unwrap().as_str(), "210987654321");
    assert_eq!(e.event_time.to_rfc3339(), "2025-03-14T09:26:53+00:00");
    assert_eq!(
        (e.service.as_str(), e.action.as_str()),
        ("iam", "CreateAccessKey")
    );
    assert_eq!(e.source_ip, ip("198.51.100.23"));
    assert_eq!(e.read_only, Some(false));
    assert!(!e.console);
    assert_eq!(e.outcome, Outcome::Success);
    assert_eq!(e.origin.line, Some(1));
    assert_eq!(
        e.request.target_user.as_deref(),
        Some("backup-svc"),
        "requestParameters.userName"
    );
    assert_eq!(
        e.request.created_key_id.as_ref().unwrap().as_str(),
        "AKIATESTBACKUP000002"
    );
}

#[test]
fn aws_records_file_with_role_session_root_console_and_service() {
    let r = one("aws_records.json");
    assert_eq!(r.events.len(), 3);
    let (role, root, svc) = (&r.events[0], &r.events[1], &r.events[2]);
    assert_eq!(role.principal.kind, PrincipalType::AssumedRole);
    assert_eq!(role.principal.role.as_deref(), Some("web-instance-role"));
    assert_eq!(
        role.principal.name.as_deref(),
        Some("web-instance-role/i-0a1b2c3d4e5f60718")
    );
    assert_eq!(role.key_kind, KeyKind::Temporary);
    assert_eq!(role.source_ip, ip("2001:db8::42"));
    assert_eq!(
        role.principal.instance_id.as_deref(),
        Some("i-0a1b2c3d4e5f60718"),
        "an EC2 instance-profile session"
    );
    assert_eq!(
        role.origin.record,
        Some(0),
        "each element of Records is a record"
    );
    assert_eq!(role.origin.line, Some(3));

    assert_eq!(root.principal.kind, PrincipalType::Root);
    assert_eq!(root.access_key_id, None, "an empty accessKeyId is no key");
    assert_eq!(root.key_kind, KeyKind::None);
    assert!(root.console);
    assert_eq!(root.outcome, Outcome::Failure, "ConsoleLogin: Failure");

    assert_eq!(svc.principal.kind, PrincipalType::Service);
    assert_eq!(svc.source_ip, None);
    assert_eq!(
        svc.source_address.as_deref(),
        Some("cloudtrail.amazonaws.com")
    );
}

#[test]
fn aws_array_keeps_invalid_and_service_addresses_as_text() {
    let r = one("aws_array.json");
    let (probe, denied, fed) = (&r.events[0], &r.events[1], &r.events[2]);
    assert_eq!(probe.source_ip, None, "leading zeros are not a valid IP");
    assert_eq!(probe.source_address.as_deref(), Some("035.249.253.232"));
    assert_eq!(denied.source_address.as_deref(), Some("AWS Internal"));
    assert_eq!(denied.outcome, Outcome::Failure);
    assert_eq!(
        denied.error_code.as_deref(),
        Some("Client.UnauthorizedOperation")
    );
    assert_eq!(fed.principal.kind, PrincipalType::Federated);
    assert_eq!(fed.key_kind, KeyKind::Temporary);
    assert_eq!(
        fed.service, "cloudwatch",
        "monitoring.amazonaws.com is the cloudwatch namespace"
    );
    assert!(fed.console, "sessionCredentialFromConsole");
    assert_eq!(fed.principal.mfa, Some(true));
}

#[test]
fn eventbridge_envelope_is_unwrapped() {
    let e = &one("aws_eventbridge.json").events[0];
    assert_eq!(e.action, "StopLogging");
    assert_eq!(
        e.event_time.to_rfc3339(),
        "2025-03-16T12:00:01+00:00",
        "the event's own time, not the envelope's"
    );
    assert_eq!(
        e.access_key_id.as_ref().unwrap().as_str(),
        "AKIATESTOPS000000008"
    );
}

#[test]
fn logstash_timestamp_is_the_time_when_event_time_is_missing() {
    let r = one("aws_logstash.jsonl");
    assert_eq!(
        r.events[0].event_time.to_rfc3339(),
        "2025-03-17T03:04:05.678+00:00"
    );
    assert_eq!(
        r.events[1].action, "GetParameter",
        "Filebeat `message` holding the raw event"
    );
    assert_eq!(
        r.events[1].event_time.to_rfc3339(),
        "2025-03-17T03:04:06+00:00"
    );
}

#[test]
fn alibaba_single_sls_and_gzipped_oss() {
    let e = &one("alibaba_single.json").events[0];
    assert_eq!(e.cloud, Cloud::Alibaba);
    assert_eq!(e.key_kind, KeyKind::Permanent);
    assert_eq!(
        e.access_key_id.as_ref().unwrap().as_str(),
        "LTAI5tTestKeyRamUser01"
    );
    assert_eq!(
        (e.service.as_str(), e.action.as_str()),
        ("ram", "CreateAccessKey")
    );

    let sls = one("alibaba_sls.jsonl");
    let (sts, root) = (&sls.events[0], &sls.events[1]);
    assert_eq!(sts.key_kind, KeyKind::Temporary);
    assert_eq!(sts.principal.kind, PrincipalType::AssumedRole);
    assert_eq!(sts.principal.role.as_deref(), Some("ci-build-role"));
    assert_eq!(sts.source_ip, None);
    assert_eq!(
        sts.source_address.as_deref(),
        Some("10.10.**.**"),
        "masked addresses are kept as text"
    );
    assert_eq!(root.principal.kind, PrincipalType::Root);
    assert_eq!(root.service, "ecs", "ecs-cn-beijing.aliyuncs.com");
    assert_eq!(root.outcome, Outcome::Failure);
    assert_eq!(
        root.event_time.to_rfc3339(),
        "2025-03-18T09:28:20+00:00",
        "SLS __time__ when the event has none"
    );

    let oss = one("alibaba_oss.json.gz");
    assert_eq!(oss.events.len(), 2);
    assert!(oss.events[0].console);
    assert_eq!(oss.events[1].principal.kind, PrincipalType::Service);
}

#[test]
fn tencent_string_members_api_response_and_cloudevents() {
    let e = &one("tencent_raw.json").events[0];
    assert_eq!(e.cloud, Cloud::Tencent);
    assert_eq!(
        e.event_time.to_rfc3339(),
        "2025-03-19T06:00:00+00:00",
        "epoch seconds"
    );
    assert_eq!(e.principal.kind, PrincipalType::User);
    assert_eq!(e.key_kind, KeyKind::Permanent, "no session token");
    assert_eq!(e.account_id.as_ref().unwrap().as_str(), "100011110000");
    assert_eq!(e.service, "cam");
    assert_eq!(
        e.request.target_user.as_deref(),
        Some("100011113333"),
        "TargetUin inside a JSON string"
    );
    assert_eq!(
        e.request.created_key_id.as_ref().unwrap().as_str(),
        "AKIDTestNewKeyFor3333000000000002"
    );

    let d = &one("tencent_describe_events.json").events[0];
    assert_eq!(
        d.event_time.to_rfc3339(),
        "2025-03-19T06:01:00+00:00",
        "outer EventTime as an epoch string"
    );
    assert_eq!(d.principal.kind, PrincipalType::Root);
    assert_eq!(d.outcome, Outcome::Failure);
    assert_eq!(d.origin.index, Some(0));

    let c = &one("tencent_cloudevents.json").events[0];
    assert_eq!(
        c.event_time.to_rfc3339(),
        "2025-03-19T06:05:06+00:00",
        "local time is UTC+8"
    );
    assert_eq!(
        c.key_kind,
        KeyKind::Temporary,
        "a session token marks temporary keys"
    );
    assert_eq!(
        c.region.as_deref(),
        Some("ap-guangzhou"),
        "short region code expanded"
    );
    assert_eq!(c.request_id.as_deref(), Some("123456789"));
    assert_eq!(c.principal.mfa, Some(true));
}

#[test]
fn bad_records_are_rejected_with_reasons_and_the_good_ones_survive() {
    let r = read_file(&fixture("ingest/mixed_bad.jsonl"), Decoder::auto());
    let good: Vec<_> = r
        .events
        .iter()
        .map(|e| e.principal.name.clone().unwrap())
        .collect();
    assert_eq!(good, ["good1", "good2", "good3"]);
    let rejects: Vec<_> = r
        .rejects
        .iter()
        .map(|(j, _)| (j.kind, j.origin.line.unwrap()))
        .collect();
    assert_eq!(
        rejects,
        [
            (RejectKind::Truncated, 2),
            (RejectKind::UnknownFormat, 3),
            (RejectKind::MissingField, 4),
            (RejectKind::BadField, 5),
            (RejectKind::BadField, 6),
            (RejectKind::BadJson, 7),
            (RejectKind::ApiError, 9),
        ]
    );
    let reasons: Vec<_> = r.rejects.iter().map(|(j, _)| j.reason.as_str()).collect();
    assert!(reasons[2].contains("missing event time"), "{}", reasons[2]);
    assert!(
        reasons[4].contains("eventName"),
        "the reason names the member: {}",
        reasons[4]
    );
    assert!(reasons[5].contains("line 7"), "{}", reasons[5]);
    // The dead-letter output gets each record unchanged.
    assert_eq!(r.rejects[5].1, b"this is not json at all");
    assert_eq!(r.counts.events, 3);
    assert_eq!(r.counts.rejected, 7);
}

/// Every rule's first positive test case, run as `check-rules` runs it, gives the alarms in
/// `tests/golden/alarms/<rule id>.jsonl` (JSON lines, in notification order): the whole alarm an
/// analyst reads — summary, facts, ATT&CK ids, advice — pinned per rule.
/// `UPDATE_GOLDEN=1 cargo test` rewrites them; review the diff before committing.
#[test]
fn every_rule_has_a_golden_alarm() {
    let set = akwatch::rule::RuleSet::load(&repo().join("rules")).unwrap();
    let dir = repo().join("tests/golden/alarms");
    let update = std::env::var_os("UPDATE_GOLDEN").is_some();
    if update {
        std::fs::create_dir_all(&dir).unwrap();
    }
    let outcomes = akwatch::rule::testing::run_tests(&set);
    let mut failures = Vec::new();
    for rule in &set.rules {
        let Some(case) = outcomes
            .iter()
            .find(|o| o.rule_id == rule.id && o.positive && o.failures.is_empty())
        else {
            failures.push(format!("{}: no passing positive test case", rule.id));
            continue;
        };
        assert!(!case.alarms.is_empty(), "{}: {}", rule.id, case.test);
        let mut got = String::new();
        for a in &case.alarms {
            writeln!(got, "{}", serde_json::to_string(a).unwrap()).unwrap();
        }
        let path = dir.join(format!("{}.jsonl", rule.id));
        if update {
            std::fs::write(&path, &got).unwrap();
            continue;
        }
        match std::fs::read_to_string(&path) {
            Ok(want) if want == got => {}
            Ok(want) => failures.push(format!(
                "{} ({}): alarms differ from {}\n--- want\n{want}--- got\n{got}",
                rule.id,
                case.test,
                path.display()
            )),
            Err(_) => failures.push(format!(
                "{}: no golden at {} (run with UPDATE_GOLDEN=1)",
                rule.id,
                path.display()
            )),
        }
        // What every alarm must explain, whatever its rule.
        for a in &case.alarms {
            assert!(!a.summary.is_empty(), "{}: summary", rule.id);
            assert!(!a.attack.tactics.is_empty(), "{}: ATT&CK", rule.id);
            assert!(!a.advice.is_empty(), "{}: advice", rule.id);
        }
    }
    // No golden left behind by a rule that is gone.
    if !update && let Ok(entries) = std::fs::read_dir(&dir) {
        for e in entries {
            let name = e.unwrap().file_name().to_string_lossy().into_owned();
            let id = name.trim_end_matches(".jsonl");
            if set.get(id).is_none() {
                failures.push(format!("{name}: golden of no rule"));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
