//! Hot reload in `akwatch run` on the real broker: a policy edited in the watched directory
//! takes effect for the events after it without a restart; a broken edit keeps the last good
//! policy, is logged with its file and line and counted; fixing it loads again.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::kafka::{Harness, brokers, free_port, http_get, service_log_tail};
use crate::repo;

const KEY: &str = "AKIARELOADTEST000001";

/// A CloudTrail record of `KEY` creating a user from the CLI (`ak.sensitive_api`).
fn create_user(n: usize) -> Vec<u8> {
    let time = chrono::DateTime::parse_from_rfc3339("2026-06-01T10:00:00Z").unwrap()
        + chrono::Duration::minutes(n as i64 * 3);
    serde_json::to_vec(&serde_json::json!({
        "eventVersion": "1.08",
        "userIdentity": {
            "type": "IAMUser",
            "principalId": "AIDARELOADTEST0000001",
            "arn": "arn:aws:iam::111122223333:user/reload",
            "accountId": "111122223333",
            "accessKeyId": KEY,
            "userName": "reload"
        },
        "eventTime": time.format("%Y-%m-%dT%H:%M:%SZ").to_string(),
        "eventSource": "iam.amazonaws.com",
        "eventName": "CreateUser",
        "awsRegion": "us-east-1",
        "sourceIPAddress": "81.2.69.160",
        "userAgent": "aws-cli/2.15.0 Python/3.11.6 Linux/6.1 exe/x86_64",
        "requestParameters": {"userName": format!("user{n}")},
        "responseElements": null,
        "requestID": format!("req-{n}"),
        "eventID": format!("reload-event-{n}"),
        "eventType": "AwsApiCall",
        "recipientAccountId": "111122223333"
    }))
    .unwrap()
}

/// The value of the series of `name` with these labels (any order), 0 when absent.
fn metric(ops: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    let (_, body) = http_get(ops, "/metrics");
    body.lines()
        .filter(|l| l.strip_prefix(name).is_some_and(|r| r.starts_with('{')))
        .find(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0.0)
}

/// Waits (at most `limit`) until `ok`; panics with `what` and the service's log.
fn wait_until(
    child: &std::process::Child,
    what: &str,
    limit: Duration,
    mut ok: impl FnMut() -> bool,
) {
    let start = Instant::now();
    while !ok() {
        assert!(
            start.elapsed() < limit,
            "{what}: not after {limit:?}; the service's log ends:\n{}",
            service_log_tail(child, 6000)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), &target).unwrap();
        }
    }
}

const ALLOW: &str = "allowlist:\n  - id: reload-test\n    keys: [AKIARELOADTEST000001]\n";
/// The same, with a member no allowlist entry has, on line 5.
const BROKEN: &str = "allowlist:\n  - id: reload-test\n    keys: [AKIARELOADTEST000001]\n  - id: broken\n    no_such_member: 1\n";

fn reload_policies(scale_out: bool) {
    let Some(brokers) = brokers() else { return };
    let mut h = Harness::new(&brokers, if scale_out { "reload" } else { "reload-local" });
    if !scale_out {
        h.kafka_extra = "  repartition: false\n".to_owned();
    }
    let copy = tempfile::tempdir().unwrap();
    let rules = copy.path().join("rules");
    copy_dir(&repo().join("rules"), &rules);
    let policies = rules.join("policies");
    h.rules = Some(rules.clone());
    h.policies = Some(vec![policies.clone()]);
    // A duration string, as the configuration accepts them.
    h.extra = "reload_rescan_seconds: 1s\n".to_owned();
    let ops = format!("127.0.0.1:{}", free_port());
    h.ops = Some(ops.clone());
    let aws = h.topic("aws");
    let child = h.spawn(false);
    let allowlisted = || {
        metric(
            &ops,
            "akwatch_allowlisted_hits_total",
            &[("rule", "ak.sensitive_api")],
        )
    };
    let reloads = |result: &str| {
        metric(
            &ops,
            "akwatch_config_reloads_total",
            &[("what", "policies"), ("result", result)],
        )
    };
    let last_ok = || {
        metric(
            &ops,
            "akwatch_config_last_reload_success",
            &[("what", "policies")],
        )
    };
    let limit = Duration::from_secs(30);
    wait_until(&child, "ready", Duration::from_secs(60), || {
        http_get(&ops, "/readyz").0 == 200
    });
    assert_eq!(last_ok(), 1.0, "the start-up version counts as good");

    // Before the edit: the calls raise alarms, nothing is allowlisted.
    h.produce(&aws, &(0..3).map(create_user).collect::<Vec<_>>());
    wait_until(&child, "an alarm of the first calls", limit, || {
        metric(
            &ops,
            "akwatch_alarm_notifications_total",
            &[("rule", "ak.sensitive_api")],
        ) >= 1.0
    });
    assert_eq!(allowlisted(), 0.0);

    // An allowlist entry for the key: the calls after it are suppressed, without a restart.
    std::fs::write(policies.join("allowlist.yaml"), ALLOW).unwrap();
    wait_until(&child, "the policy reloaded", limit, || {
        reloads("ok") >= 1.0
    });
    h.produce(&aws, &(3..6).map(create_user).collect::<Vec<_>>());
    wait_until(&child, "three calls allowlisted", limit, || {
        allowlisted() >= 3.0
    });

    // A broken edit: logged with file and line, counted; the last good policy stays.
    std::fs::write(policies.join("allowlist.yaml"), BROKEN).unwrap();
    wait_until(&child, "the broken policy counted", limit, || {
        reloads("error") >= 1.0
    });
    assert_eq!(last_ok(), 0.0);
    let log = service_log_tail(&child, 20_000);
    // The loader's own message, as at start: the file, then its line (`file:5:` for a
    // semantic error, `file: line 5 column 5:` for a structural one, like this).
    let file = policies.join("allowlist.yaml").display().to_string();
    assert!(
        log.lines().any(|l| l.contains("policies not reloaded")
            && (l.contains(&format!("{file}:5:")) || l.contains(&format!("{file}: line 5 ")))),
        "no error naming {file} line 5:\n{log}"
    );
    h.produce(&aws, &(6..8).map(create_user).collect::<Vec<_>>());
    wait_until(
        &child,
        "the last good policy still allowlists",
        limit,
        || allowlisted() >= 5.0,
    );

    // Fixed: loads again.
    std::fs::write(policies.join("allowlist.yaml"), ALLOW).unwrap();
    wait_until(&child, "the fixed policy reloaded", limit, || {
        reloads("ok") >= 2.0
    });
    assert_eq!(last_ok(), 1.0);
    assert_eq!(reloads("error"), 1.0, "the broken edit is counted once");
    let mut child = child;
    Harness::signal(&mut child, "-TERM");
}

#[test]
fn a_policy_edit_applies_without_a_restart_and_a_broken_one_keeps_the_last_good() {
    reload_policies(true);
}

#[test]
fn a_policy_edit_applies_without_a_restart_on_one_instance() {
    reload_policies(false);
}
