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

/// A copied binary, run outside the repository: the bundled rules and scenario come from the
/// copy embedded in it, unpacked once into the user's cache directory.
#[test]
fn a_binary_away_from_the_repository_runs_the_bundled_scenario_from_its_embedded_copy() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_akwatch"))
            .args(args)
            .current_dir(dir.path())
            .env("XDG_CACHE_HOME", &cache)
            .output()
            .unwrap()
    };
    let o = run(&["replay", "-q"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(
        stdout.contains("\"rule_id\":\"ak.leaked_key_use\""),
        "{stdout}"
    );
    // -q: no summary on stderr.
    assert_eq!(String::from_utf8_lossy(&o.stderr), "");
    let unpacked: Vec<_> = std::fs::read_dir(cache.join("akwatch"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(unpacked.len(), 1, "{unpacked:?}");
    assert!(unpacked[0].starts_with("akwatch-bundled-"), "{unpacked:?}");
    let copy = cache.join("akwatch").join(&unpacked[0]);
    assert!(copy.join("rules/policies").is_dir());
    assert!(copy.join("examples/geo.mmdb").is_file());
    // The same alarms as from the repository (the paths inside them differ).
    let here = Command::new(env!("CARGO_BIN_EXE_akwatch"))
        .args(["replay", "-q"])
        .current_dir(crate::repo())
        .output()
        .unwrap();
    let ids = |out: &[u8]| -> Vec<(String, String)> {
        String::from_utf8_lossy(out)
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .map(|v| {
                let id = |k: &str| v[k].as_str().unwrap_or_default().to_owned();
                (
                    id("alarm_id") + &id("risk_id"),
                    id("rule_id") + &id("key_id"),
                )
            })
            .collect()
    };
    assert!(ids(&here.stdout).len() > 20);
    assert_eq!(ids(&here.stdout), ids(&o.stdout));
    // Reused, not unpacked again; check-rules finds the bundled rules too.
    let o = run(&["check-rules"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(std::fs::read_dir(cache.join("akwatch")).unwrap().count(), 1);
}

/// A `simulate` scenario replays whole with one flag, or given as the one path; its ground
/// truth is not read as a log. Policies and lists given add to the defaults.
#[test]
fn a_simulated_scenario_replays_with_one_flag_and_list_flags_add_to_the_defaults() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("scn");
    let o = akwatch(&[
        "simulate",
        "--keys",
        "30",
        "--days",
        "2",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let by_flag = akwatch(&[
        "replay",
        "--threads",
        "1",
        "--scenario",
        out.to_str().unwrap(),
    ]);
    assert!(
        by_flag.status.success(),
        "{}",
        String::from_utf8_lossy(&by_flag.stderr)
    );
    let err = String::from_utf8_lossy(&by_flag.stderr);
    assert!(
        err.contains(" 0 rejected"),
        "nothing read as a bad log: {err}"
    );
    let by_path = akwatch(&["replay", "--threads", "1", out.to_str().unwrap()]);
    assert!(by_path.status.success());
    assert_eq!(by_flag.stdout, by_path.stdout);
    assert!(String::from_utf8_lossy(&by_path.stderr).contains("is a scenario directory"));
    // The scenario's own allowlist applies: without the default policies it does not.
    let allowlisted = |o: &Output| -> u64 {
        let err = String::from_utf8_lossy(&o.stderr);
        err.lines()
            .filter(|l| l.starts_with("  ak."))
            .filter_map(|l| l.split_whitespace().last()?.parse::<u64>().ok())
            .sum()
    };
    let bare = akwatch(&[
        "replay",
        "--threads",
        "1",
        "--scenario",
        out.to_str().unwrap(),
        "--no-default-policies",
        "--policies",
        crate::repo().join("rules/policies").to_str().unwrap(),
    ]);
    assert!(
        bare.status.success(),
        "{}",
        String::from_utf8_lossy(&bare.stderr)
    );
    assert!(
        allowlisted(&by_flag) > allowlisted(&bare),
        "{}",
        String::from_utf8_lossy(&by_flag.stderr)
    );
    // Naming a default directory again changes nothing (it loads once).
    let again = akwatch(&[
        "replay",
        "--threads",
        "1",
        "--scenario",
        out.to_str().unwrap(),
        "--policies",
        out.join("policies").to_str().unwrap(),
    ]);
    assert!(
        again.status.success(),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
    assert_eq!(again.stdout, by_flag.stdout);
    let o = akwatch(&["replay", "--scenario", dir.path().to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("not a scenario directory"));
}

/// Alarms and risks in one stream carry `kind`; the summary lists the most severe rules first.
#[test]
fn alarms_and_risks_are_told_apart_and_the_summary_is_by_severity() {
    let o = Command::new(env!("CARGO_BIN_EXE_akwatch"))
        .arg("replay")
        .current_dir(crate::repo())
        .output()
        .unwrap();
    assert!(o.status.success());
    let (mut alarms, mut risks) = (0, 0);
    for line in String::from_utf8_lossy(&o.stdout).lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        match v["kind"].as_str() {
            Some("alarm") => {
                assert!(v.get("alarm_id").is_some(), "{line}");
                alarms += 1;
            }
            Some("risk") => {
                assert!(v.get("risk_id").is_some(), "{line}");
                risks += 1;
            }
            other => panic!("kind {other:?}: {line}"),
        }
    }
    assert!(alarms > 0 && risks > 0);
    let rank = |s: &str| match s {
        "critical" => 4,
        "high" => 3,
        "medium" => 2,
        "low" => 1,
        _ => 0,
    };
    let err = String::from_utf8_lossy(&o.stderr);
    let severities: Vec<i32> = err
        .lines()
        .skip_while(|l| !l.trim_start().starts_with("rule "))
        .skip(1)
        .take_while(|l| l.starts_with("  ak."))
        .map(|l| rank(l.split_whitespace().nth(1).unwrap_or("")))
        .collect();
    assert!(severities.len() > 5, "{err}");
    assert!(severities.windows(2).all(|w| w[0] >= w[1]), "{err}");
}

/// `check-config` checks a service configuration and everything it names, every problem with
/// its line; `probe` is the image's health check.
#[test]
fn check_config_and_probe() {
    let example = crate::repo().join("akwatch.example.yaml");
    let o = Command::new(env!("CARGO_BIN_EXE_akwatch"))
        .args(["check-config", example.to_str().unwrap()])
        .current_dir(crate::repo())
        .env_remove("KAFKA_BROKERS")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stdout).contains("ok (3 input topic(s)"));
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        "kafka:\n  brokers: ${NOPE_NOT_SET}\n  group_id: g\n  inputs:\n    - topic: in\n  alarm_topic: a\n  dlq_topic: d\nrules: /no/such/rules\ncommit_interval_seconds: 10s\n",
    )
    .unwrap();
    let o = akwatch(&["check-config", bad.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("bad.yaml:2: kafka.brokers: environment variable NOPE_NOT_SET is not set"),
        "{err}"
    );
    // The file is well formed once the variable is set; then what it names is checked.
    let o = Command::new(env!("CARGO_BIN_EXE_akwatch"))
        .args(["check-config", bad.to_str().unwrap()])
        .env("NOPE_NOT_SET", "127.0.0.1:9")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("/no/such/rules"), "{err}");

    // probe: 200 is healthy, 503 is not, nothing listening is not.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let server = std::thread::spawn(move || {
        for status in ["200 OK", "503 Service Unavailable"] {
            let (mut s, _) = listener.accept().unwrap();
            // The whole request, then the answer.
            let mut got = Vec::new();
            let mut buf = [0u8; 1024];
            while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                match std::io::Read::read(&mut s, &mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => got.extend_from_slice(&buf[..n]),
                }
            }
            assert!(got.starts_with(b"GET /healthz HTTP/1.1\r\n"));
            let _ = write!(s, "HTTP/1.1 {status}\r\nContent-Length: 2\r\n\r\nok");
        }
    });
    let url = format!("http://{addr}/healthz");
    let o = akwatch(&["probe", &url]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let o = akwatch(&["probe", &url]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("503"));
    server.join().unwrap();
    let o = akwatch(&["probe", &format!("http://{addr}/healthz"), "--timeout", "1"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("cannot connect"));
    let o = akwatch(&["probe", "https://example.com/"]);
    assert_eq!(o.status.code(), Some(1));
}

/// `replay --format table`: a header and a row per alarm notification and per configuration
/// risk (the JSON's lines); colours only with `--color always` (stdout here is a pipe), also on
/// the summary; `native` is `json`.
#[test]
fn replay_table_has_a_row_per_json_line_and_colours_only_when_asked() {
    let replay = |args: &[&str], no_color: bool| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_akwatch"));
        c.arg("replay").args(args).current_dir(crate::repo());
        if no_color {
            c.env("NO_COLOR", "1");
        } else {
            c.env_remove("NO_COLOR");
        }
        let o = c.output().unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        o
    };
    let json = replay(&["--format", "json"], false);
    let kinds: Vec<String> = String::from_utf8_lossy(&json.stdout)
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            v["kind"].as_str().unwrap().to_owned()
        })
        .collect();
    assert!(kinds.iter().any(|k| k == "alarm") && kinds.iter().any(|k| k == "risk"));
    let native = replay(&["--format", "native"], false);
    assert_eq!(native.stdout, json.stdout);

    let plain = replay(&["--format", "table"], false);
    let text = String::from_utf8(plain.stdout.clone()).unwrap();
    let mut lines = text.lines();
    let header = lines.next().unwrap();
    for column in [
        "TIME",
        "SEVERITY",
        "KIND",
        "RULE",
        "KEY",
        "PRINCIPAL",
        "SOURCE IPS",
        "COUNT",
        "SUMMARY",
    ] {
        assert!(header.contains(column), "{header}");
    }
    let rows: Vec<&str> = lines.collect();
    let row_kinds: Vec<&str> = rows
        .iter()
        .map(|r| r.split_whitespace().nth(2).unwrap())
        .collect();
    assert_eq!(row_kinds, kinds, "{text}");
    assert!(text.contains("ak.audit_tamper") && text.contains("risk.root_active_key"));
    // Not a terminal, so no colour with auto (or NO_COLOR), and lines are not cut.
    assert!(!text.contains('\x1b'), "{text}");
    assert!(!String::from_utf8_lossy(&plain.stderr).contains('\x1b'));
    let no_color = replay(&["--format", "table", "--color", "auto"], true);
    assert_eq!(no_color.stdout, plain.stdout);
    assert!(!String::from_utf8_lossy(&no_color.stderr).contains('\x1b'));

    let coloured = replay(&["--format", "table", "--color", "always"], true);
    let painted = String::from_utf8(coloured.stdout).unwrap();
    assert!(painted.contains("\x1b[31mhigh"), "{painted}");
    // Only the colour codes differ.
    let mut stripped = String::new();
    let mut rest = painted.as_str();
    while let Some(i) = rest.find('\x1b') {
        stripped.push_str(&rest[..i]);
        let end = rest[i..].find('m').unwrap();
        rest = &rest[i + end + 1..];
    }
    stripped.push_str(rest);
    assert_eq!(stripped, text);
    assert!(String::from_utf8_lossy(&coloured.stderr).contains("\x1b["));
}

/// The progress bar: drawn with `--progress always` (its last state: every byte and record),
/// absent on a pipe by default, and never with `-q`.
#[test]
fn replay_progress_bar_only_when_asked_and_never_quiet() {
    let replay = |args: &[&str]| {
        let o = Command::new(env!("CARGO_BIN_EXE_akwatch"))
            .arg("replay")
            .args(args)
            .current_dir(crate::repo())
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8(o.stderr).unwrap()
    };
    let bar = replay(&["--threads", "1", "--progress", "always"]);
    let logs = crate::repo().join("examples/logs").display().to_string();
    let logs =
        akwatch::term::input_bytes(&akwatch::source::expand(&[logs]).unwrap().inputs).unwrap();
    assert!(logs > 100_000, "{logs}");
    let last = bar
        .split(['\r', '\n'])
        .rfind(|l| l.contains("records/s"))
        .unwrap_or_else(|| panic!("no bar in {bar:?}"));
    assert!(last.contains("7530 records ("), "{last}");
    let total = format!("{}", indicatif::BinaryBytes(logs));
    assert!(last.contains(&format!("{total}/{total}")), "{last}");
    assert!(bar.contains("akwatch replay: 7530 events"), "{bar}");

    for args in [
        &["--threads", "1"][..],
        &["--threads", "2", "--progress", "auto"],
    ] {
        let err = replay(args);
        assert!(!err.contains("records/s") && !err.contains('\r'), "{err}");
        assert!(err.contains("akwatch replay: 7530 events"), "{err}");
    }
    assert_eq!(replay(&["-q", "--progress", "always"]), "");
}

/// The load generator against a broker that is not there says so within seconds.
#[test]
fn load_against_no_broker_fails_at_once() {
    let started = std::time::Instant::now();
    let o = akwatch(&[
        "load",
        "--brokers",
        "127.0.0.1:1",
        "--topic",
        "t",
        crate::repo().join("examples/logs/aws").to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("cannot reach a broker at 127.0.0.1:1"),
        "{err}"
    );
    assert!(started.elapsed() < std::time::Duration::from_secs(60));
}
