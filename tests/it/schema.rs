//! The committed JSON Schemas are generated from the Rust types and must be fresh.
//! `UPDATE_SCHEMAS=1 cargo test` rewrites them.

use std::collections::BTreeSet;

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
        ("schemas/openapi.json", akwatch::cli::openapi_document()),
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

/// Every alarm of the bundled scenario validates against the committed alarm schema, whose
/// `$id` and `schema_version` name the same version.
#[test]
fn bundled_alarms_validate_against_the_versioned_alarm_schema() {
    let schema: serde_json::Value = serde_json::from_str(&akwatch::cli::alarm_schema()).unwrap();
    let version = akwatch::alarm::ALARM_SCHEMA_VERSION;
    assert!(
        schema["$id"]
            .as_str()
            .unwrap()
            .contains(&format!("/{version}/")),
        "{}",
        schema["$id"]
    );
    let validator = jsonschema::validator_for(&schema).unwrap();
    let options =
        akwatch::replay::ReplayOptions::bundled(&repo().join("examples"), &repo().join("rules"));
    let mut s = akwatch::replay::setup(&options).unwrap_or_else(|e| panic!("{e:#?}"));
    let mut alarms = Vec::new();
    akwatch::replay::run(
        &mut s,
        &options.inputs,
        None,
        &mut |a| alarms.push(serde_json::to_value(a).unwrap()),
        &mut |r| panic!("unexpected reject: {}", r.reject),
    )
    .unwrap();
    assert!(alarms.len() > 40);
    for a in &alarms {
        assert_eq!(a["schema_version"], version);
        let errors: Vec<String> = validator
            .iter_errors(a)
            .map(|e| format!("{e} at {}", e.instance_path()))
            .collect();
        assert!(errors.is_empty(), "{}: {errors:?}", a["alarm_id"]);
    }
    // The validator is not vacuous.
    let mut bad = alarms[0].clone();
    bad["severity"] = serde_json::json!("catastrophic");
    assert!(!validator.is_valid(&bad));
}

/// Every event decoded from the ingest fixtures (three clouds, every wrapper) validates against
/// the committed event schema.
#[test]
fn decoded_fixture_events_validate_against_the_event_schema() {
    let schema: serde_json::Value = serde_json::from_str(&akwatch::cli::event_schema()).unwrap();
    let validator = jsonschema::validator_for(&schema).unwrap();
    let dir = repo().join("tests/fixtures/ingest");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let read = crate::read_file(&path, akwatch::Decoder::auto());
        for e in &read.events {
            let v = serde_json::to_value(e).unwrap();
            let errors: Vec<String> = validator
                .iter_errors(&v)
                .map(|e| format!("{e} at {}", e.instance_path()))
                .collect();
            assert!(errors.is_empty(), "{}: {errors:?}", path.display());
            n += 1;
        }
    }
    assert!(n > 20, "{n} events");
}

/// Every route the API's router serves (read from its source) is in the OpenAPI document with
/// the same methods, and the document names no route the router lacks.
#[test]
fn the_openapi_document_covers_every_route() {
    let source = std::fs::read_to_string(repo().join("src/api/mod.rs")).unwrap();
    let start = source.find("pub fn router(").unwrap();
    let body = &source[start..];
    let body = &body[..body.find("\n}\n").unwrap()];
    let mut routes = BTreeSet::new();
    for chunk in body.split(".route(").skip(1) {
        let path = chunk.split('"').nth(1).unwrap().to_owned();
        let handlers = chunk.split_once(',').unwrap().1;
        let handlers = &handlers[..handlers.find("\n        .").unwrap_or(handlers.len())];
        for method in ["get", "post", "put", "delete"] {
            let call = format!("{method}(");
            // `get(x)` at the start or `.get(x)` chained.
            if handlers.trim_start().starts_with(&call) || handlers.contains(&format!(".{call}")) {
                routes.insert(format!("{method} {path}"));
            }
        }
    }
    assert!(routes.len() > 15, "{routes:?}");
    let doc = akwatch::api::openapi::document();
    let mut documented = BTreeSet::new();
    for (path, ops) in doc["paths"].as_object().unwrap() {
        for method in ops.as_object().unwrap().keys() {
            documented.insert(format!("{method} {path}"));
        }
    }
    assert_eq!(routes, documented);
}
