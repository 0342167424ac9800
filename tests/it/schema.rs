//! The committed JSON Schemas are generated from the Rust types and must be fresh.
//! `UPDATE_SCHEMAS=1 cargo test` rewrites them.

use crate::repo;

#[test]
fn event_schema_is_fresh() {
    let path = repo().join("schemas/event.schema.json");
    let want = format!("{}\n", akwatch::cli::event_schema());
    if std::env::var_os("UPDATE_SCHEMAS").is_some() {
        std::fs::write(&path, &want).unwrap();
    }
    let got = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        got == want,
        "schemas/event.schema.json is stale: run UPDATE_SCHEMAS=1 cargo test"
    );
}

#[test]
fn decoded_events_validate_against_the_schema_shape() {
    // Every required property of the schema is present in a decoded event.
    let schema: serde_json::Value = serde_json::from_str(&akwatch::cli::event_schema()).unwrap();
    let required: Vec<&str> = schema["required"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    for field in [
        "cloud",
        "event_id",
        "event_time",
        "principal",
        "access_key_id",
        "key_kind",
        "source_ip",
        "origin",
    ] {
        assert!(
            required.contains(&field),
            "{field} is required in the schema"
        );
    }
    let read = crate::read_file(
        &crate::fixture("ingest/aws_single.json"),
        akwatch::Decoder::auto(),
    );
    let event = serde_json::to_value(&read.events[0]).unwrap();
    for field in required {
        assert!(event.get(field).is_some(), "{field}");
    }
}

#[test]
fn alarm_and_risk_schemas_are_fresh() {
    for (file, want) in [
        ("schemas/alarm.schema.json", akwatch::cli::alarm_schema()),
        ("schemas/risk.schema.json", akwatch::cli::risk_schema()),
    ] {
        let path = repo().join(file);
        let want = format!("{want}\n");
        if std::env::var_os("UPDATE_SCHEMAS").is_some() {
            std::fs::write(&path, &want).unwrap();
        }
        let got = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            got == want,
            "{file} is stale: run UPDATE_SCHEMAS=1 cargo test"
        );
    }
}
