//! The public samples in `../shared/corpus/` (not copied into this repository).

use std::path::Path;

use akwatch::event::{Cloud, KeyKind, PrincipalType};
use akwatch::provider::{Decoder, RejectKind};
use akwatch::report::read_report;
use akwatch::source::expand;

use crate::{Read, corpus, read_file};

fn read_dir(dir: &Path) -> Read {
    let inputs = expand(&[dir.display().to_string()]).unwrap();
    let mut all = Read {
        events: Vec::new(),
        rejects: Vec::new(),
        counts: Default::default(),
    };
    for input in &inputs.inputs {
        let akwatch::source::Input::File(path) = input else {
            unreachable!()
        };
        let r = read_file(path, Decoder::auto());
        all.events.extend(r.events);
        all.rejects.extend(r.rejects);
        all.counts.events += r.counts.events;
        all.counts.rejected += r.counts.rejected;
    }
    all
}

#[test]
fn stratus_detonation_logs_decode_with_invalid_ips_kept_as_text() {
    let Some(c) = corpus() else { return };
    let r = read_dir(&c.join("aws/stratus-detonation-logs"));
    assert_eq!(r.rejects.len(), 0, "{:?}", r.rejects.first());
    assert_eq!(r.events.len(), 310);
    let invalid: Vec<_> = r.events.iter().filter(|e| e.source_ip.is_none()).collect();
    assert_eq!(
        invalid.len(),
        107,
        "the corpus README counts 107 invalid sourceIPAddress values"
    );
    assert!(invalid.iter().all(|e| e.source_address.is_some()));
    assert!(
        invalid
            .iter()
            .any(|e| e.source_address.as_deref() == Some("035.249.253.232"))
    );
    assert!(r.events.iter().all(|e| e.cloud == Cloud::Aws));
    let asia = r.events.iter().filter(|e| {
        e.access_key_id
            .as_ref()
            .is_some_and(|k| k.as_str().starts_with("ASIA"))
    });
    assert!(asia.clone().count() > 0 && asia.clone().all(|e| e.key_kind == KeyKind::Temporary));
}

#[test]
fn traildiscover_examples_all_decode() {
    let Some(c) = corpus() else { return };
    let r = read_dir(&c.join("aws/traildiscover-examples"));
    assert_eq!(r.rejects.len(), 0, "{:?}", r.rejects.first());
    assert_eq!(r.events.len(), 563);
    let denied = r
        .events
        .iter()
        .filter(|e| {
            e.error_code
                .as_deref()
                .is_some_and(|c| c.contains("AccessDenied"))
        })
        .count();
    assert!(
        denied > 100,
        "AccessDenied variants decode as failures ({denied})"
    );
    // Anonymised `AKIA****` ids on role sessions: the identity decides the key kind.
    assert!(
        r.events
            .iter()
            .filter(|e| e.principal.kind == PrincipalType::AssumedRole)
            .all(|e| e.key_kind == KeyKind::Temporary)
    );
}

#[test]
fn vendor_samples_decode_with_keys_times_and_principals() {
    let Some(c) = corpus() else { return };
    let docs = read_file(
        &c.join("aws/awsdocs/log-file-examples_from_awsdocs.json"),
        Decoder::auto(),
    );
    assert_eq!(docs.events.len(), 6);
    assert_eq!(
        docs.events[0].access_key_id.as_ref().unwrap().as_str(),
        "EXAMPLE_KEY_ID"
    );
    assert_eq!(
        docs.events[0].event_time.to_rfc3339(),
        "2014-03-06T21:22:54+00:00"
    );
    // The two CloudTrail Insights summaries are not API calls; they are rejected as such.
    assert!(
        docs.rejects
            .iter()
            .all(|(r, _)| r.kind == RejectKind::Unsupported)
    );
    assert_eq!(docs.rejects.len(), 2);

    let signin = read_file(
        &c.join("aws/awsdocs/console-sign-in-events_from_awsdocs.json"),
        Decoder::auto(),
    );
    assert!(signin.rejects.is_empty());
    assert!(
        signin
            .events
            .iter()
            .filter(|e| e.action == "ConsoleLogin")
            .all(|e| e.console)
    );
    assert!(
        signin
            .events
            .iter()
            .any(|e| e.principal.kind == PrincipalType::Root)
    );

    let eb = read_file(
        &c.join("aws/eventbridge/aws-docs-stepfunctions-s3-putobject-eventbridge.json"),
        Decoder::auto(),
    );
    let e = &eb.events[0];
    assert_eq!(
        e.access_key_id.as_ref().unwrap().as_str(),
        "AKIAI44QH8DHBEXAMPLE"
    );
    assert_eq!(e.event_time.to_rfc3339(), "2018-09-12T00:25:10+00:00");
    assert_eq!(e.principal.kind, PrincipalType::User);

    let lambda = read_file(
        &c.join("aws/lambda-rust-fixtures/example-cloudwatch-cloudtrail-assumed-role.json"),
        Decoder::auto(),
    );
    assert_eq!(lambda.events[0].principal.kind, PrincipalType::AssumedRole);
    assert_eq!(lambda.events[0].source_ip, None);
    assert_eq!(
        lambda.events[0].source_address.as_deref(),
        Some("servicecatalog.amazonaws.com")
    );

    let tc = read_file(
        &c.join("tencent/tccli_DescribeEvents_example_response.json"),
        Decoder::auto(),
    );
    let e = &tc.events[0];
    assert_eq!(e.cloud, Cloud::Tencent);
    assert_eq!(e.access_key_id.as_ref().unwrap().as_str(), "xxx");
    assert_eq!(e.event_time.to_rfc3339(), "2023-04-03T09:23:29+00:00");
    assert_eq!(e.principal.kind, PrincipalType::Root);
    assert_eq!(
        e.key_kind,
        KeyKind::Temporary,
        "the session carries a token"
    );

    let v1 = read_file(
        &c.join("tencent/CloudAuditEvent_v1_2017_LookupEvents_decoded.json"),
        Decoder::auto(),
    );
    let e = &v1.events[0];
    assert_eq!(
        e.access_key_id.as_ref().unwrap().as_str(),
        "AKIDPhngQxbmwzsYCkEJLCqKbloJhx4yoGhv"
    );
    assert_eq!(
        e.event_time.to_rfc3339(),
        "2017-11-02T07:56:53+00:00",
        "Beijing local time → UTC"
    );
    assert_eq!(e.region.as_deref(), Some("ap-guangzhou"));
    assert_eq!(e.request_id.as_deref(), Some("1603560497"));

    let ram = read_file(
        &c.join("alibaba/actiontrail_ram-user_DescribeInstances.json"),
        Decoder::auto(),
    );
    let e = &ram.events[0];
    assert_eq!(e.cloud, Cloud::Alibaba);
    assert_eq!(e.principal.kind, PrincipalType::User);
    assert_eq!(e.access_key_id, None);
    assert_eq!(e.source_address.as_deref(), Some("10.10.**.**"));
    assert_eq!(e.event_time.to_rfc3339(), "2021-08-05T09:21:32+00:00");

    let sys = read_file(
        &c.join("alibaba/actiontrail_system_DeleteDisk.json"),
        Decoder::auto(),
    );
    assert_eq!(sys.events[0].principal.kind, PrincipalType::Service);

    let partial = read_file(
        &c.join("alibaba/actiontrail_assumed-role_LookupEvents_PARTIAL.json"),
        Decoder::auto(),
    );
    assert!(partial.events.is_empty());
    let (reject, _) = &partial.rejects[0];
    assert_eq!(reject.kind, RejectKind::MissingField);
    assert!(
        reject.reason.contains("missing event time"),
        "{}",
        reject.reason
    );
}

#[test]
fn every_corpus_file_reads_without_panicking() {
    let Some(c) = corpus() else { return };
    let r = read_dir(&c);
    // Events: 310 + 563 + docs 6 + sign-in 10 + EventBridge 1 + lambda 3 + Tencent 3 + Alibaba 2.
    assert!(r.events.len() >= 890, "{}", r.events.len());
}

#[test]
fn corpus_credential_reports_parse() {
    let Some(c) = corpus() else { return };
    let parsed =
        read_report(&c.join("credential_reports/aws_iam_credential_report_test_fixture_oil.csv"))
            .unwrap();
    assert!(parsed.row_errors.is_empty(), "{:?}", parsed.row_errors);
    let s = parsed.snapshot;
    assert_eq!(s.cloud, Cloud::Aws);
    assert_eq!(s.account_id.as_ref().unwrap().as_str(), "fakearn");
    assert_eq!(s.principals.len(), 4);
    assert!(s.principals[0].root);
    let fakeuser = &s.principals[2];
    assert_eq!(fakeuser.keys.len(), 1);
    assert_eq!(
        fakeuser.keys[0]
            .last_used_region
            .value()
            .map(String::as_str),
        Some("ap-southeast-1")
    );
    assert_eq!(
        fakeuser.keys[0]
            .last_used_service
            .value()
            .map(String::as_str),
        Some("ec2")
    );
    // Header-only files are valid, empty reports.
    let header =
        read_report(&c.join("credential_reports/aws_iam_credential_report_header.csv")).unwrap();
    assert!(header.snapshot.principals.is_empty());
    let ali = read_report(&c.join("credential_reports/alibaba_ram_credential_report_header.csv"))
        .unwrap();
    assert_eq!(ali.snapshot.cloud, Cloud::Alibaba);
}

/// Request parameters decide a few calls: Stratus Red Team's event-selector tampering (management
/// events off) decodes as `logging_weakened` and raises `ak.audit_tamper`, while TrailDiscover's
/// `UpdateTrail` with no parameters logged raises nothing.
#[test]
fn real_event_selector_tampering_is_weakening_and_an_empty_update_is_not() {
    use akwatch::event::Effect;
    let Some(c) = corpus() else { return };
    let stratus = read_file(
        &c.join("aws/stratus-detonation-logs/aws.defense-evasion.cloudtrail-event-selectors.json"),
        Decoder::auto(),
    );
    let put = stratus
        .events
        .iter()
        .find(|e| e.action == "PutEventSelectors")
        .expect("the Stratus log has the call");
    assert_eq!(put.request.effects, vec![Effect::LoggingWeakened]);
    let update = read_file(
        &c.join("aws/traildiscover-examples/UpdateTrail.json.cloudtrail"),
        Decoder::auto(),
    );
    assert!(update.events.iter().all(|e| e.request.effects.is_empty()));

    let rules = akwatch::rule::RuleSet::load(&crate::repo().join("rules")).unwrap();
    let mut engine =
        akwatch::engine::Engine::new(&rules, akwatch::policy::Policy::default()).unwrap();
    let enr = akwatch::enrich::Enrichment::default();
    let fired: Vec<String> = engine
        .process(put, &enr)
        .into_iter()
        .map(|a| a.rule_id)
        .collect();
    assert!(fired.iter().any(|r| r == "ak.audit_tamper"), "{fired:?}");
    for e in &update.events {
        let fired: Vec<String> = engine
            .process(e, &enr)
            .into_iter()
            .map(|a| a.rule_id)
            .collect();
        assert!(
            !fired
                .iter()
                .any(|r| r == "ak.audit_tamper" || r == "ak.sensitive_api"),
            "{fired:?}"
        );
    }
}
