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
/// events off) decodes as `logging_weakened` and raises `ak.audit_tamper`; its security group
/// opened with `cidrIp: <host>/0` is `opened_to_internet`; a successful `UpdateTrail` that
/// only sets a KMS key (shaped like AWS's documented record) raises neither tampering nor a
/// false weakening, while the same call without parameters fails closed.
#[test]
fn real_request_parameters_decide_tampering_and_exposure() {
    use akwatch::event::Effect;
    let Some(c) = corpus() else { return };
    let stratus = |name: &str| {
        read_file(
            &c.join(format!("aws/stratus-detonation-logs/{name}")),
            Decoder::auto(),
        )
    };
    let selectors = stratus("aws.defense-evasion.cloudtrail-event-selectors.json");
    let put = selectors
        .events
        .iter()
        .find(|e| e.action == "PutEventSelectors")
        .expect("the Stratus log has the call");
    assert_eq!(put.request.effects, vec![Effect::LoggingWeakened]);
    let open = stratus("aws.exfiltration.ec2-security-group-open-port-22-ingress.json");
    let ingress: Vec<_> = open
        .events
        .iter()
        .filter(|e| {
            e.action == "AuthorizeSecurityGroupIngress"
                && e.outcome == akwatch::event::Outcome::Success
        })
        .collect();
    assert!(!ingress.is_empty());
    assert!(
        ingress
            .iter()
            .all(|e| e.request.effects == vec![Effect::OpenedToInternet]),
        "{:?}",
        ingress.iter().map(|e| &e.request).collect::<Vec<_>>()
    );

    let dir = tempfile::tempdir().unwrap();
    let record = |params: &str| {
        format!(
            r#"{{"eventVersion":"1.08","userIdentity":{{"type":"IAMUser","principalId":"AIDAEXAMPLE","arn":"arn:aws:iam::123456789012:user/ops","accountId":"123456789012","accessKeyId":"AKIAIOSFODNN7EXAMPLE","userName":"ops"}},"eventTime":"2025-06-02T10:00:00Z","eventSource":"cloudtrail.amazonaws.com","eventName":"UpdateTrail","awsRegion":"us-east-1","sourceIPAddress":"198.51.100.7","userAgent":"aws-cli/2.15.0","requestParameters":{params},"responseElements":null,"requestID":"r-1","eventID":"e-{n}","readOnly":false,"eventType":"AwsApiCall","managementEvent":true,"recipientAccountId":"123456789012"}}"#,
            n = params.len()
        )
    };
    let kms = dir.path().join("kms.json");
    std::fs::write(
        &kms,
        record(r#"{"name":"management-events","kmsKeyId":"arn:aws:kms:us-east-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab"}"#),
    )
    .unwrap();
    let blind = dir.path().join("blind.json");
    std::fs::write(&blind, record("null")).unwrap();
    let kms = read_file(&kms, Decoder::auto());
    let blind = read_file(&blind, Decoder::auto());
    assert!(kms.events[0].request.effects.is_empty());
    assert_eq!(
        blind.events[0].request.effects,
        vec![Effect::LoggingWeakened]
    );

    let rules = akwatch::rule::RuleSet::load(&crate::repo().join("rules")).unwrap();
    let mut engine =
        akwatch::engine::Engine::new(&rules, akwatch::policy::Policy::default()).unwrap();
    let enr = akwatch::enrich::Enrichment::default();
    let mut fired = |e: &akwatch::event::Event| -> Vec<String> {
        engine
            .process(e, &enr)
            .into_iter()
            .map(|a| a.rule_id)
            .collect()
    };
    assert!(fired(put).iter().any(|r| r == "ak.audit_tamper"));
    let on_kms = fired(&kms.events[0]);
    assert!(!on_kms.iter().any(|r| r == "ak.audit_tamper"), "{on_kms:?}");
    assert!(
        on_kms.iter().any(|r| r == "ak.sensitive_api"),
        "a trail change stays sensitive: {on_kms:?}"
    );
    assert!(
        fired(&blind.events[0])
            .iter()
            .any(|r| r == "ak.audit_tamper")
    );
}
