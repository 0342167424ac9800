//! Unit tests for detection and the shared helpers; whole-record behaviour is in `tests/it`.

use super::*;

fn decode(text: &str) -> Vec<Result<Event, Reject>> {
    Decoder::auto().decode_to_vec(text.as_bytes(), &Origin::file("t.json", 0, 10))
}

fn cloud_of(text: &str) -> Cloud {
    match decode(text).pop() {
        Some(Ok(e)) => e.cloud,
        other => panic!("{text}: {other:?}"),
    }
}

#[test]
fn detection_uses_region_then_source_then_identity() {
    assert_eq!(
        cloud_of(r#"{"eventTime":"2025-01-01T00:00:00Z","eventName":"X","awsRegion":"us-east-1"}"#),
        Cloud::Aws
    );
    assert_eq!(
        cloud_of(
            r#"{"eventTime":"2025-01-01T00:00:00Z","eventName":"X","acsRegion":"cn-hangzhou"}"#
        ),
        Cloud::Alibaba
    );
    assert_eq!(
        cloud_of(r#"{"eventTime":1700000000,"eventName":"X","eventRegion":"ap-guangzhou"}"#),
        Cloud::Tencent
    );
    assert_eq!(
        cloud_of(
            r#"{"eventTime":"2025-01-01T00:00:00Z","eventName":"X","eventSource":"ram.aliyuncs.com"}"#
        ),
        Cloud::Alibaba
    );
    assert_eq!(
        cloud_of(
            r#"{"eventTime":"2025-01-01T00:00:00Z","eventName":"X","userIdentity":{"secretId":"AKIDx"}}"#
        ),
        Cloud::Tencent
    );
    assert_eq!(
        cloud_of(
            r#"{"eventTime":"2025-01-01T00:00:00Z","eventName":"X","userIdentity":{"type":"IAMUser"}}"#
        ),
        Cloud::Aws
    );
}

#[test]
fn error_lines_count_from_the_record_start() {
    let r = decode("{\n\"eventName\": \"X\",\n\"awsRegion\": tru\n}");
    let Some(Err(reject)) = r.first() else {
        panic!("{r:?}")
    };
    assert_eq!(reject.kind, RejectKind::BadJson);
    // Record line 4 (serde_json stops at the newline after `tru`), file line 10 + 4 - 1.
    assert!(reject.reason.contains("line 13"), "{}", reject.reason);
    let r = decode("{\"eventName\": \"X\", \"awsRegion\": \"us-");
    assert!(
        matches!(
            r.first(),
            Some(Err(Reject {
                kind: RejectKind::Truncated,
                ..
            }))
        ),
        "{r:?}"
    );
    let r = decode("[1, 2]");
    assert!(
        r.iter().all(|x| matches!(
            x,
            Err(Reject {
                kind: RejectKind::UnknownFormat,
                ..
            })
        )),
        "{r:?}"
    );
}

#[test]
fn synthetic_event_ids_are_stable_content_hashes() {
    let text = r#"{"eventTime":"2025-01-01T00:00:00Z","eventName":"X","awsRegion":"us-east-1"}"#;
    let a = decode(text).pop().unwrap().unwrap().event_id;
    let b = decode(text).pop().unwrap().unwrap().event_id;
    assert_eq!(a, b);
    assert_eq!(a, synthetic_event_id(text.as_bytes()));
    assert!(a.starts_with("akw-") && a.len() == 20);
}

#[test]
fn error_codes() {
    use std::borrow::Cow;
    for (code, failed) in [
        (Scalar::Str(Cow::Borrowed("0")), false),
        (Scalar::Str(Cow::Borrowed("")), false),
        (Scalar::Str(Cow::Borrowed("Success")), false),
        (Scalar::Int(0), false),
        (Scalar::Null, false),
        (Scalar::Str(Cow::Borrowed("AccessDenied")), true),
        (Scalar::Int(4102), true),
    ] {
        assert_eq!(is_error_code(&code), failed, "{code:?}");
    }
}

#[test]
fn wrappers_nested_too_deep_are_rejected_not_recursed() {
    let mut text =
        r#"{"eventTime":"2025-01-01T00:00:00Z","eventName":"X","awsRegion":"us-east-1"}"#
            .to_owned();
    for _ in 0..10 {
        text = format!(r#"{{"detail-type":"AWS API Call via CloudTrail","detail":{text}}}"#);
    }
    let r = decode(&text);
    assert!(
        matches!(
            r.first(),
            Some(Err(Reject {
                kind: RejectKind::UnknownFormat,
                ..
            }))
        ),
        "{r:?}"
    );
}

#[test]
fn non_cloudtrail_eventbridge_events_are_named() {
    let r = decode(
        r#"{"detail-type":"EC2 Instance State-change Notification","detail":{"state":"running"}}"#,
    );
    let Some(Err(reject)) = r.first() else {
        panic!("{r:?}")
    };
    assert!(
        reject
            .reason
            .contains("EC2 Instance State-change Notification"),
        "{}",
        reject.reason
    );
}

#[test]
fn a_batch_of_bad_events_keeps_a_bounded_number_of_rejects() {
    let batch = format!("{{\"Records\":[{}]}}", vec!["{}"; 50_000].join(","));
    let out = Decoder::auto().decode_to_vec(batch.as_bytes(), &Origin::default());
    assert_eq!(out.len(), MAX_REJECTS_PER_BATCH + 1);
    let last = out.last().unwrap().as_ref().unwrap_err();
    assert!(
        last.reason.starts_with(&format!(
            "{} more events of this batch rejected",
            50_000 - MAX_REJECTS_PER_BATCH
        )),
        "{}",
        last.reason
    );
    // One dead letter for the record, saying how many of its events were rejected.
    let mut rejects = RecordRejects::default();
    for r in out {
        rejects.add(r.unwrap_err());
    }
    assert_eq!(rejects.len(), MAX_REJECTS_PER_BATCH as u64 + 1);
    let one = rejects.take().unwrap();
    assert!(
        one.reason
            .ends_with("(and 100 more of the record's events rejected)"),
        "{}",
        one.reason
    );
    assert!(rejects.take().is_none());
}
