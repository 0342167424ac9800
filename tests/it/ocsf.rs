//! `replay --format ocsf`: every alarm of the bundled scenario (abnormal calls, leaks, an attack
//! sequence, updates) is an OCSF 1.8.0 Detection Finding that validates against the JSON Schema
//! derived from the OCSF source by `scripts/ocsf-schema.py` (committed under `schemas/`).

use akwatch::alarm::{Alarm, AlarmStatus};
use akwatch::ocsf::{detection_finding, minimal};
use akwatch::replay::{ReplayOptions, run, setup};
use serde_json::{Value, json};

use crate::repo;

fn validator() -> jsonschema::Validator {
    let path = repo().join("schemas/ocsf-1.8.0-detection_finding.schema.json");
    let schema: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    jsonschema::options()
        .should_validate_formats(true)
        .build(&schema)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn problems(v: &jsonschema::Validator, finding: &Value) -> Vec<String> {
    v.iter_errors(finding)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect()
}

fn bundled_alarms() -> Vec<Alarm> {
    let options = ReplayOptions::bundled(&repo().join("examples"), &repo().join("rules"));
    let mut s = setup(&options).unwrap_or_else(|e| panic!("{e:#?}"));
    let mut alarms = Vec::new();
    run(
        &mut s,
        &options.inputs,
        None,
        &mut |a| alarms.push(a.clone()),
        &mut |r| panic!("unexpected reject: {}", r.reject),
    )
    .unwrap();
    alarms
}

#[test]
fn every_bundled_alarm_is_a_valid_ocsf_detection_finding() {
    let v = validator();
    let alarms = bundled_alarms();
    for kind in ["ak.attack_sequence", "ak.key_leaked", "ak.backdoor_key"] {
        assert!(
            alarms.iter().any(|a| a.rule_id == kind),
            "{kind} in the scenario"
        );
    }
    assert!(alarms.iter().any(|a| a.status == AlarmStatus::Updated));
    let mut failures = Vec::new();
    for a in &alarms {
        for f in [detection_finding(a), minimal(a)] {
            let p = problems(&v, &f);
            if !p.is_empty() {
                failures.push(format!("{} ({}): {}", a.alarm_id, a.rule_id, p.join("; ")));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} alarms fail OCSF 1.8.0:\n{}",
        failures.len(),
        alarms.len(),
        failures.join("\n")
    );
}

#[test]
fn the_finding_carries_what_an_analyst_needs() {
    let alarms = bundled_alarms();
    let seq = alarms
        .iter()
        .find(|a| a.rule_id == "ak.attack_sequence")
        .unwrap();
    let f = detection_finding(seq);
    assert_eq!(f["class_uid"], 2004);
    assert_eq!(
        f["type_uid"],
        json!(200400 + f["activity_id"].as_u64().unwrap())
    );
    assert_eq!(f["severity_id"], 5, "critical");
    assert_eq!(f["finding_info"]["uid"], json!(seq.alarm_id));
    assert_eq!(f["message"], json!(seq.summary));
    let related = f["finding_info"]["related_events"].as_array().unwrap();
    assert!(related.len() >= 3, "the member alarms: {related:?}");
    assert!(
        related
            .iter()
            .all(|r| r["uid"].as_str().unwrap().starts_with("akw-"))
    );
    let key = seq.access_key_id.as_ref().unwrap().as_str();
    assert!(
        f["resources"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["uid"] == key && r["type"] == "AccessKey")
    );
    assert_eq!(f["actor"]["user"]["credential_uid"], key);
    let tactics: Vec<&str> = f["finding_info"]["attacks"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|a| a["tactics"].as_array().unwrap().iter())
        .filter_map(|t| t["uid"].as_str())
        .collect();
    for t in &seq.attack.tactics {
        assert!(tactics.contains(&t.as_str()), "{t} in {tactics:?}");
    }
    // Several tactics: no single `tactic` is claimed for a technique.
    assert!(
        f["finding_info"]["attacks"]
            .as_array()
            .unwrap()
            .iter()
            .all(|a| a.get("tactic").is_none())
    );
    assert_eq!(
        f["finding_info"]["related_events_count"],
        seq.evidence.facts["member_count"]
    );
    // An update is another event of the same finding.
    assert_ne!(f["metadata"]["uid"], f["finding_info"]["uid"]);
    // Every source IP is an evidence with its location.
    let ips: Vec<&str> = f["evidences"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["src_endpoint"]["ip"].as_str())
        .collect();
    assert_eq!(ips.len(), seq.source_ips.len());
    assert_eq!(f["remediation"]["desc"], json!(seq.advice));
}

#[test]
fn the_schema_rejects_what_is_not_a_detection_finding() {
    // The validator is not vacuous: a misspelt field, a missing required one and a wrong class
    // each fail.
    let v = validator();
    let alarms = bundled_alarms();
    let good = detection_finding(&alarms[0]);
    assert!(problems(&v, &good).is_empty());
    let mut misspelt = good.clone();
    misspelt["finding_info"]["titel"] = json!("x");
    assert!(!problems(&v, &misspelt).is_empty());
    let mut missing = good.clone();
    missing.as_object_mut().unwrap().remove("metadata");
    assert!(!problems(&v, &missing).is_empty());
    let mut class = good.clone();
    class["class_uid"] = json!(2001);
    assert!(!problems(&v, &class).is_empty());
    let mut severity = good;
    severity["severity_id"] = json!(7);
    assert!(!problems(&v, &severity).is_empty());
}

/// The committed schema is what the script derives from the OCSF source (when the source is
/// beside the repository, as in CI).
#[test]
fn the_committed_ocsf_schema_is_fresh() {
    let source = repo().join("../shared/corpus/ocsf-schema-1.8.0");
    if !source.is_dir() {
        assert!(
            std::env::var_os("AKWATCH_REQUIRE_CORPUS").is_none(),
            "{} is missing",
            source.display()
        );
        eprintln!("skipped: {} is absent", source.display());
        return;
    }
    let out = std::process::Command::new("python3")
        .arg(repo().join("scripts/ocsf-schema.py"))
        .arg(&source)
        .output()
        .expect("python3 runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let committed =
        std::fs::read(repo().join("schemas/ocsf-1.8.0-detection_finding.schema.json")).unwrap();
    assert!(
        out.stdout == committed,
        "schemas/ocsf-1.8.0-detection_finding.schema.json is stale: run python3 scripts/ocsf-schema.py > schemas/ocsf-1.8.0-detection_finding.schema.json"
    );
}
