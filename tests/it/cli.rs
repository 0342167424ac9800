//! The `akwatch` binary as a user runs it.

use std::io::Write;
use std::process::{Command, Output, Stdio};

use crate::fixture;

fn akwatch(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_akwatch"))
        .args(args)
        .output()
        .unwrap()
}

fn last_stderr_line(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr)
        .lines()
        .last()
        .unwrap_or_default()
        .to_owned()
}

#[test]
fn normalize_prints_events_and_a_count_line_and_exits_zero_with_rejects() {
    let dir = fixture("ingest");
    let o = akwatch(&["normalize", dir.to_str().unwrap()]);
    assert!(o.status.success());
    let events: Vec<serde_json::Value> = String::from_utf8(o.stdout.clone())
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(
        last_stderr_line(&o),
        format!("decoded {} records, rejected 7", events.len())
    );
    assert_eq!(events.len(), 21);
    for e in &events {
        for field in [
            "cloud",
            "event_id",
            "event_time",
            "principal",
            "key_kind",
            "service",
            "action",
            "outcome",
            "origin",
        ] {
            assert!(
                e.get(field).is_some_and(|v| !v.is_null()),
                "{field} missing in {e}"
            );
        }
    }
}

#[test]
fn dlq_file_holds_each_rejected_record_unchanged_with_reason_and_origin() {
    let tmp = std::env::temp_dir().join(format!("akwatch-dlq-{}.jsonl", std::process::id()));
    let input = fixture("ingest/mixed_bad.jsonl");
    let o = akwatch(&[
        "normalize",
        "--dlq",
        tmp.to_str().unwrap(),
        input.to_str().unwrap(),
    ]);
    assert!(o.status.success());
    assert_eq!(last_stderr_line(&o), "decoded 3 records, rejected 7");
    assert_eq!(String::from_utf8_lossy(&o.stdout).lines().count(), 3);
    let dlq = std::fs::read_to_string(&tmp).unwrap();
    std::fs::remove_file(&tmp).ok();
    let lines: Vec<serde_json::Value> = dlq
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 7);
    let source = std::fs::read_to_string(&input).unwrap();
    let source_lines: Vec<&str> = source.lines().collect();
    for l in &lines {
        let line = l["origin"]["line"].as_u64().unwrap() as usize;
        assert_eq!(
            l["raw"].as_str().unwrap(),
            source_lines[line - 1],
            "record kept unchanged"
        );
        assert!(l["reason"].as_str().is_some_and(|r| !r.is_empty()));
        assert!(
            l["origin"]["file"]
                .as_str()
                .unwrap()
                .ends_with("mixed_bad.jsonl")
        );
    }
    assert_eq!(lines[0]["kind"], "truncated");
    assert_eq!(lines[6]["kind"], "api_error");
}

#[test]
fn normalize_reads_stdin() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_akwatch"))
        .args(["normalize", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let data = std::fs::read(fixture("ingest/aws_records.json")).unwrap();
    child.stdin.take().unwrap().write_all(&data).unwrap();
    let o = child.wait_with_output().unwrap();
    assert!(o.status.success());
    assert_eq!(last_stderr_line(&o), "decoded 3 records, rejected 0");
    assert!(String::from_utf8_lossy(&o.stdout).contains("\"file\":\"-\""));
}

/// Exit codes: 0 success, 1 a runtime failure, 2 a usage error (clap's). Each failure is one
/// message naming the path and the cause, once.
#[test]
fn unreadable_paths_and_bad_flags_fail_clearly() {
    let missing = "No such file or directory";
    let runtime = |args: &[&str], expect: &str| {
        let o = akwatch(args);
        let err = String::from_utf8_lossy(&o.stderr).into_owned();
        assert_eq!(o.status.code(), Some(1), "{args:?}: {err}");
        assert!(err.contains(expect), "{args:?}: {err}");
        assert_eq!(
            err.matches(missing).count(),
            1,
            "{args:?}: the cause once: {err}"
        );
        (String::from_utf8_lossy(&o.stdout).into_owned(), err)
    };
    runtime(
        &["normalize", "/no/such/file.json"],
        "akwatch: cannot read /no/such/file.json: No such file or directory",
    );
    runtime(
        &["replay", "/no/such/file.json"],
        "cannot read /no/such/file.json: No such file or directory",
    );
    // A file that cannot be read is named without a line number.
    let (_, err) = runtime(
        &["replay", "--reports", "/no/such.csv", "/dev/null"],
        "error: /no/such.csv: cannot read: No such file or directory",
    );
    assert!(!err.contains("/no/such.csv:0"), "{err}");
    let (_, err) = runtime(
        &["replay", "--geoip", "/no/such.mmdb", "/dev/null"],
        "error: /no/such.mmdb: cannot read: No such file or directory",
    );
    assert!(!err.contains("not a MaxMind DB"), "{err}");
    // Nothing read: no empty list on stdout.
    let (out, _) = runtime(
        &["reports", "/no/such.csv"],
        "error: /no/such.csv: cannot read: No such file or directory",
    );
    assert_eq!(out, "");
    runtime(
        &["risks", "/no/such.csv"],
        "error: /no/such.csv: cannot read: No such file or directory",
    );
    runtime(
        &["run", "--config", "/no/such.yaml"],
        "/no/such.yaml: cannot read: No such file or directory",
    );
    // A file that is not a MaxMind database is told apart from one that cannot be read.
    let o = akwatch(&["replay", "--geoip", "/dev/null", "/dev/null"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("/dev/null: not a MaxMind DB file"));
    // Usage errors: clap's code 2.
    let o = akwatch(&["normalize", "--provider", "azure", "x"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("unknown provider"));
    let o = akwatch(&["replay", "--threads", "0"]);
    assert_eq!(o.status.code(), Some(2));
    let o = akwatch(&["normalize"]);
    assert_eq!(o.status.code(), Some(2));
}

#[test]
fn pinned_provider_decodes_ambiguous_records() {
    // No region member and no known eventSource: auto-detection cannot tell, a pin can.
    let tmp = std::env::temp_dir().join(format!("akwatch-pin-{}.json", std::process::id()));
    std::fs::write(&tmp, r#"{"eventTime":"2025-01-01T00:00:00Z","eventName":"DescribeInstances","eventSource":"cvm.internal"}"#).unwrap();
    let auto = akwatch(&["normalize", tmp.to_str().unwrap()]);
    assert_eq!(last_stderr_line(&auto), "decoded 0 records, rejected 1");
    let pinned = akwatch(&["normalize", "--provider", "tencent", tmp.to_str().unwrap()]);
    std::fs::remove_file(&tmp).ok();
    assert_eq!(last_stderr_line(&pinned), "decoded 1 records, rejected 0");
    assert!(String::from_utf8_lossy(&pinned.stdout).contains("\"cloud\":\"tencent\""));
}

#[test]
fn reports_prints_snapshots_and_names_bad_cells() {
    let o = akwatch(&[
        "reports",
        fixture("reports/aws_iam.csv").to_str().unwrap(),
        fixture("reports/alibaba_ram.csv").to_str().unwrap(),
        fixture("reports/tencent_cam.csv").to_str().unwrap(),
    ]);
    assert!(o.status.success());
    let snapshots: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let clouds: Vec<_> = snapshots
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["cloud"].as_str().unwrap())
        .collect();
    assert_eq!(clouds, ["aws", "alibaba", "tencent"]);
    assert_eq!(
        snapshots[0]["principals"][0]["password"]["enabled"],
        "not_supported"
    );
    assert_eq!(snapshots[2]["principals"][0]["keys"][1]["at_risk"], true);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("tencent_cam.csv:6: column AccessKey1MayBeAtRisk (column 13)"),
        "{err}"
    );
    let o = akwatch(&["reports", fixture("reports/unknown.csv").to_str().unwrap()]);
    assert!(!o.status.success());
}

#[test]
fn replay_with_no_arguments_runs_the_bundled_scenario() {
    let o = Command::new(env!("CARGO_BIN_EXE_akwatch"))
        .arg("replay")
        .current_dir(crate::repo())
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let stdout = String::from_utf8_lossy(&o.stdout);
    let rules: std::collections::BTreeSet<String> = stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| v.get("rule_id").and_then(|r| r.as_str()).map(str::to_owned))
        .collect();
    for id in [
        "ak.audit_tamper",
        "ak.leaked_key_use",
        "ak.backdoor_key",
        "ak.root_key_use",
        "ak.attack_sequence",
    ] {
        assert!(rules.contains(id), "{id} missing from {rules:?}");
    }
    assert!(stdout.contains("\"risk_id\":\"risk.root_active_key\""));
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(stderr.contains("akwatch replay: 7530 events"), "{stderr}");
    assert!(stderr.contains("ak.audit_tamper"));
}

#[test]
fn check_rules_passes_on_the_repository_and_fails_on_a_broken_rule() {
    let o = akwatch(&["check-rules", crate::repo().join("rules").to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stdout));
    assert!(String::from_utf8_lossy(&o.stdout).contains(", 0 failed"));
    let o = akwatch(&["check-rules", fixture("rules_broken").to_str().unwrap()]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("bad_severity.yaml"), "{err}");
}

#[test]
fn risks_lists_report_risks() {
    let o = akwatch(&[
        "risks",
        fixture("reports/tencent_cam.csv").to_str().unwrap(),
    ]);
    assert!(o.status.success());
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("\"risk_id\":\"risk.key_at_risk\""), "{out}");
    assert!(
        out.contains("\"risk_id\":\"risk.console_without_mfa\""),
        "{out}"
    );
}
