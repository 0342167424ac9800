//! Validation matches execution: every duration, count and threshold of a rule, a rule test or
//! a policy is range-checked at load, with file and line, all problems together, and
//! `check-rules` rejects what the engine could not run.

use std::path::{Path, PathBuf};

use akwatch::policy::Policy;
use akwatch::rule::RuleSet;

/// A rule file over `detector` (its indented members, from line 7), with a positive and a
/// negative test; `event` holds the members of the positive test's first event (line 14); its
/// ATT&CK ids on the last line.
fn rule(detector: &str, event: &str) -> String {
    format!(
        "id: ak.t\nname: T\nseverity: high\ndescription: d\nadvice: a\ndetector:\n{detector}tests:\n  - name: fires\n    expect: alarm\n    events:\n      - {{{event}}}\n      - {{}}\n      - {{}}\n  - name: quiet\n    expect: none\n    events: [{{}}]\nattack: {{tactics: [TA0007], techniques: [T1580]}}\n"
    )
}

const THRESHOLD: &str = "  kind: threshold\n  window: 5m\n  count: 3\n";

struct Dir(PathBuf);

impl Drop for Dir {
    fn drop(&mut self) {
        std::fs::remove_dir_all(&self.0).ok();
    }
}

fn dir_with(files: &[(&str, &str)]) -> Dir {
    let d = std::env::temp_dir().join(format!(
        "akwatch-validation-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos())
    ));
    for (name, text) in files {
        let p = d.join(name);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }
    Dir(d)
}

fn rule_errors(text: &str) -> String {
    let d = dir_with(&[("r.yaml", text)]);
    RuleSet::load(&d.0).unwrap_err().join("\n")
}

fn policy_errors(policy: &str) -> String {
    let d = dir_with(&[
        ("r.yaml", &rule(THRESHOLD, "")),
        ("policies/p.yaml", policy),
    ]);
    let set = RuleSet::load(&d.0).unwrap();
    Policy::load(&d.0.join("policies"), &set)
        .unwrap_err()
        .join("\n")
}

fn has(all: &str, want: &str) {
    assert!(all.contains(want), "missing {want:?} in:\n{all}");
}

#[test]
fn the_template_is_valid() {
    let d = dir_with(&[("r.yaml", &rule(THRESHOLD, ""))]);
    let set = RuleSet::load(&d.0).unwrap();
    let outcomes = akwatch::rule::testing::run_tests(&set);
    assert!(
        outcomes.iter().all(|o| o.failures.is_empty()),
        "{outcomes:?}"
    );
}

#[test]
fn a_threshold_window_of_zero_is_rejected() {
    // In the rule (the engine would divide by zero on the first event).
    let e = rule_errors(&rule("  kind: threshold\n  window: 0s\n  count: 3\n", ""));
    has(
        &e,
        "r.yaml:8: threshold: window must be longer than 0s, not 0s",
    );
    // In the alarm policy, which check-rules loads too.
    let e = policy_errors(
        "alarm_policy:\n  rules:\n    ak.t:\n      thresholds:\n        window: 0s\n",
    );
    has(
        &e,
        "p.yaml:5: alarm_policy.rules.ak.t.thresholds: window must be longer than 0s, not 0s",
    );
    // In a rule test's own thresholds.
    let text = rule(THRESHOLD, "").replace(
        "  - name: quiet\n",
        "  - name: quiet\n    thresholds: {window: 0s}\n",
    );
    has(
        &rule_errors(&text),
        "r.yaml:17: test \"quiet\": thresholds: window must be longer than 0s, not 0s",
    );
}

#[test]
fn a_renotify_past_ten_years_is_rejected() {
    let e = policy_errors("alarm_policy:\n  defaults:\n    renotify: 10000000000000000s\n");
    has(
        &e,
        "p.yaml:3: duration \"10000000000000000s\" is longer than 10 years (3650d)",
    );
    let e =
        policy_errors("alarm_policy:\n  rules:\n    ak.t:\n      renotify: 10000000000000000s\n");
    has(
        &e,
        "p.yaml:4: duration \"10000000000000000s\" is longer than 10 years (3650d)",
    );
}

#[test]
fn a_test_event_time_past_ten_years_is_rejected() {
    let e = rule_errors(&rule(THRESHOLD, "at: 10000000000000000s"));
    has(
        &e,
        "r.yaml:14: duration \"10000000000000000s\" is longer than 10 years (3650d)",
    );
    // Ten years is the bound, and it runs.
    let d = dir_with(&[("r.yaml", &rule(THRESHOLD, "at: 3650d"))]);
    let set = RuleSet::load(&d.0).unwrap();
    akwatch::rule::testing::run_tests(&set);
}

#[test]
fn report_key_days_out_of_range_are_rejected() {
    let e = rule_errors(&rule(
        THRESHOLD,
        "report_key: {created_days_ago: 999999999999}",
    ));
    has(
        &e,
        "r.yaml:14: test \"fires\": event 1: report_key.created_days_ago must be between 0 and 36500 (100 years), not 999999999999",
    );
    let text = rule(THRESHOLD, "").replace(
        "      - {}\n      - {}\n  - name: quiet",
        "      - {}\n      - report_key:\n          last_used_days_ago: -1\n  - name: quiet",
    );
    has(
        &rule_errors(&text),
        "r.yaml:17: test \"fires\": event 3: report_key.last_used_days_ago must be between 0 and 36500 (100 years), not -1",
    );
}

#[test]
fn a_duration_that_would_wrap_is_rejected() {
    let e = rule_errors(&rule(
        "  kind: threshold\n  window: 30500569566319w\n  count: 3\n",
        "",
    ));
    has(
        &e,
        "r.yaml:8: duration \"30500569566319w\" is longer than 10 years (3650d)",
    );
    // More digits than an i64 holds: the same message, not a parse error.
    let e = rule_errors(&rule(
        "  kind: threshold\n  window: 99999999999999999999s\n  count: 3\n",
        "",
    ));
    has(&e, "is longer than 10 years (3650d)");
    let e =
        policy_errors("alarm_policy:\n  rules:\n    ak.t:\n      thresholds: {window: 3651d}\n");
    has(
        &e,
        "p.yaml:4: alarm_policy.rules.ak.t.thresholds: duration \"3651d\" is longer than 10 years (3650d)",
    );
}

#[test]
fn counts_out_of_range_are_rejected_readably() {
    let e = rule_errors(&rule(
        "  kind: threshold\n  window: 5m\n  count: 4294967296\n",
        "",
    ));
    has(
        &e,
        "r.yaml:9: threshold: count must be between 1 and 100000, not 4294967296",
    );
    let e = rule_errors(&rule("  kind: threshold\n  window: 5m\n  count: 0\n", ""));
    has(
        &e,
        "r.yaml:9: threshold: count must be between 1 and 100000, not 0",
    );
    let e = policy_errors(
        "alarm_policy:\n  rules:\n    ak.t:\n      thresholds:\n        count: '4294967296'\n",
    );
    has(
        &e,
        "p.yaml:5: alarm_policy.rules.ak.t.thresholds: count must be between 1 and 100000, not 4294967296",
    );
    let e = policy_errors("alarm_policy:\n  rules:\n    ak.t:\n      thresholds: {count: '-3'}\n");
    has(&e, "count must be between 1 and 100000, not -3");
}

#[test]
fn other_detector_parameters_are_range_checked() {
    let distinct = rule_errors(&rule(
        "  kind: distinct\n  window: 6h\n  min:\n    api: 0\n    region: 4294967297\n",
        "",
    ));
    has(
        &distinct,
        "r.yaml:10: distinct: min.api must be between 1 and 100000, not 0",
    );
    has(
        &distinct,
        "r.yaml:11: distinct: min.region must be between 1 and 100000, not 4294967297",
    );
    let baseline = rule_errors(&rule(
        "  kind: threshold\n  window: 5m\n  count: 3\n  baseline_factor: 1e9\n  baseline_history: 7d\n",
        "",
    ));
    has(
        &baseline,
        "r.yaml:10: threshold: baseline_factor must be a number above 0 and at most 1000000, not 1000000000",
    );
    // Non-finite numbers are refused by the YAML reader itself, with their line.
    let inf = rule_errors(&rule(
        "  kind: threshold\n  window: 5m\n  count: 3\n  baseline_factor: .inf\n  baseline_history: 7d\n",
        "",
    ));
    has(&inf, "r.yaml: line 10 column 20: non-finite float `.inf`");
    let velocity = rule_errors(&rule(
        "  kind: velocity\n  min_distance_km: -1\n  max_speed_kmh: 0\n  max_gap: 0s\n",
        "",
    ));
    has(
        &velocity,
        "r.yaml:8: velocity: min_distance_km must be between 0 and 20040, not -1",
    );
    has(
        &velocity,
        "r.yaml:9: velocity: max_speed_kmh must be above 0 and at most 1000000, not 0",
    );
    has(
        &velocity,
        "r.yaml:10: velocity: max_gap must be longer than 0s, not 0s",
    );
    let sequence = rule_errors(&rule(
        "  kind: sequence\n  first: {api: \"iam:CreateAccessKey\"}\n  within: 0s\n  link: same_key\n",
        "",
    ));
    has(
        &sequence,
        "r.yaml:9: sequence: within must be longer than 0s, not 0s",
    );
    let first_seen = rule_errors(&rule(
        "  kind: first_seen\n  attribute: source_ip\n  history: 0s\n",
        "",
    ));
    has(
        &first_seen,
        "r.yaml:9: first_seen: history must be longer than 0s, not 0s",
    );
    let e = policy_errors(
        "alarm_policy:\n  rules:\n    ak.t:\n      thresholds:\n        window: 5m\n        count: 2.5\n",
    );
    has(
        &e,
        "p.yaml:6: alarm_policy.rules.ak.t.thresholds: count: not a whole number: \"2.5\"",
    );
}

#[test]
fn condition_numbers_are_range_checked() {
    let text = rule(THRESHOLD, "").replace(
        "detector:\n",
        "when:\n  key_idle_days_min: 4294967296\ndetector:\n",
    );
    has(
        &rule_errors(&text),
        "r.yaml:7: when: key_idle_days_min must be between 0 and 36500 (100 years), not 4294967296",
    );
}

#[test]
fn policy_settings_are_range_checked() {
    let e = policy_errors(
        "alarm_policy:\n  defaults:\n    aggregation: 0s\n    allowed_lateness: 30d\n  rules:\n    ak.t:\n      aggregation: 0s\nallowlist:\n  - id: old\n    ips: [192.0.2.1]\n    expires: 1999-12-31\n",
    );
    has(
        &e,
        "p.yaml:3: alarm_policy.defaults: aggregation must be at least 1s, not 0s",
    );
    has(
        &e,
        "p.yaml:4: alarm_policy.defaults: allowed_lateness must be at most 7d, not 30d",
    );
    has(
        &e,
        "p.yaml:7: alarm_policy.rules.ak.t: aggregation must be at least 1s, not 0s",
    );
    has(
        &e,
        "p.yaml:9: allowlist entry old: expires: \"1999-12-31\" is before 2000: the entry would never apply",
    );
}

#[test]
fn a_rule_without_well_formed_attack_ids_is_rejected() {
    let template = rule(THRESHOLD, "");
    let last = template.lines().count();
    let e = rule_errors(&template.replace(
        "attack: {tactics: [TA0007], techniques: [T1580]}",
        "attack: {tactics: [Discovery], techniques: [T1580.4]}",
    ));
    has(
        &e,
        &format!("r.yaml:{last}: attack: tactic \"Discovery\" is not an ATT&CK tactic id (TA0001)"),
    );
    has(
        &e,
        "attack: technique \"T1580.4\" is not an ATT&CK technique id",
    );
    let without: String = template
        .lines()
        .filter(|l| !l.starts_with("attack:"))
        .map(|l| format!("{l}\n"))
        .collect();
    has(
        &rule_errors(&without),
        "attack: needs at least one tactic and one technique",
    );
}

#[test]
fn every_problem_of_a_file_is_reported_together() {
    let e = rule_errors(&rule(
        "  - kind: threshold\n    window: 0s\n    count: 4294967296\n  - kind: distinct\n    window: 6h\n    min: {api: 0}\n",
        "report_key: {created_days_ago: 999999999999}",
    ));
    let n = e.lines().count();
    assert_eq!(n, 4, "{e}");
    has(&e, "r.yaml:8: threshold: window must be longer than 0s");
    has(
        &e,
        "r.yaml:9: threshold: count must be between 1 and 100000",
    );
    has(&e, "distinct: min.api must be between 1 and 100000, not 0");
    has(&e, "created_days_ago must be between 0 and 36500");
}

/// `akwatch check-rules` fails on values the engine could not run, naming file and line.
#[test]
fn check_rules_rejects_what_would_fail_at_run_time() {
    let d = dir_with(&[
        ("r.yaml", &rule(THRESHOLD, "")),
        (
            "policies/p.yaml",
            "alarm_policy:\n  rules:\n    ak.t:\n      thresholds: {window: 0s}\n",
        ),
    ]);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_akwatch"))
        .arg("check-rules")
        .arg(&d.0)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    let p = Path::new(&d.0).join("policies/p.yaml");
    has(
        &stderr,
        &format!(
            "{}:4: alarm_policy.rules.ak.t.thresholds: window must be longer than 0s, not 0s",
            p.display()
        ),
    );
}
