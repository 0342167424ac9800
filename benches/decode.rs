//! Decode speed: akwatch's typed decode into `Event` versus building a `serde_json::Value`
//! of the same bytes, per cloud. Records are compact JSON, one per message, as on Kafka.
//!
//! AWS uses the 310 real events of `../shared/corpus/aws/stratus-detonation-logs` when the
//! corpus is beside the repository (the project's fixtures otherwise); Alibaba and Tencent use
//! the project's fixtures, varied so that no two records are identical.

use std::hint::black_box;
use std::path::Path;

use akwatch::event::Origin;
use akwatch::provider::Decoder;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use serde_json::Value;

fn compact(v: &Value) -> Vec<u8> {
    serde_json::to_vec(v).unwrap()
}

fn events_of(path: &Path) -> Vec<Value> {
    let v: Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    match v {
        Value::Array(items) => items,
        Value::Object(mut o) => match o.remove("Records") {
            Some(Value::Array(items)) => items,
            _ => vec![Value::Object(o)],
        },
        _ => vec![],
    }
}

/// `n` variants of `base`: distinct ids and times, as a real stream would have.
fn varied(base: &[Value], n: usize, id_key: &str) -> Vec<Vec<u8>> {
    (0..n)
        .map(|i| {
            let mut v = base[i % base.len()].clone();
            if let Some(o) = v.as_object_mut() {
                o.insert(id_key.to_owned(), Value::String(format!("bench-{i:08}")));
            }
            compact(&v)
        })
        .collect()
}

fn corpus_sets() -> Vec<(&'static str, Vec<Vec<u8>>)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let fixtures = root.join("tests/fixtures/ingest");
    let stratus = root.join("../shared/corpus/aws/stratus-detonation-logs");
    let aws: Vec<Vec<u8>> = if stratus.is_dir() {
        let mut files: Vec<_> = std::fs::read_dir(&stratus)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        files.sort();
        files
            .iter()
            .filter(|p| p.extension().is_some_and(|e| e == "json"))
            .flat_map(|p| events_of(p))
            .map(|v| compact(&v))
            .collect()
    } else {
        let mut base = events_of(&fixtures.join("aws_records.json"));
        base.extend(events_of(&fixtures.join("aws_single.json")));
        varied(&base, 300, "eventID")
    };
    let alibaba = varied(
        &events_of(&fixtures.join("alibaba_single.json")),
        300,
        "eventId",
    );
    // The Tencent raw form, with sessionContext / requestParameters / responseElements as
    // JSON strings holding JSON.
    let tencent_raw = events_of(&fixtures.join("tencent_raw.json"));
    let tencent = varied(&tencent_raw, 300, "eventID");
    // The same events with those members decoded to objects (CLS / EventBridge deliveries).
    let tencent_objects: Vec<Value> = tencent_raw
        .iter()
        .map(|e| {
            let mut e = e.clone();
            for key in ["requestParameters", "responseElements", "resources"] {
                if let Some(Value::String(s)) = e.get(key) {
                    let parsed: Value = serde_json::from_str(s).unwrap();
                    e[key] = parsed;
                }
            }
            if let Some(Value::String(s)) = e["userIdentity"].get("sessionContext") {
                let parsed: Value = serde_json::from_str(s).unwrap();
                e["userIdentity"]["sessionContext"] = parsed;
            }
            e
        })
        .collect();
    let tencent_decoded = varied(&tencent_objects, 300, "eventID");
    vec![
        ("aws_cloudtrail", aws),
        ("alibaba_actiontrail", alibaba),
        ("tencent_cloudaudit_string_members", tencent),
        ("tencent_cloudaudit_object_members", tencent_decoded),
    ]
}

fn decode(c: &mut Criterion) {
    let decoder = Decoder::auto();
    let origin = Origin::kafka("bench", 0, 0);
    for (name, records) in corpus_sets() {
        let bytes: usize = records.iter().map(Vec::len).sum();
        eprintln!(
            "{name}: {} records, {bytes} bytes, {:.0} bytes/record",
            records.len(),
            bytes as f64 / records.len() as f64
        );
        // Sanity: every record decodes to exactly one event.
        let mut out = Vec::new();
        for r in &records {
            decoder.decode(r, &origin, &mut out);
        }
        assert!(
            out.iter().all(Result::is_ok) && out.len() == records.len(),
            "{name}: {:?}",
            out.iter().find(|r| r.is_err())
        );

        let mut group = c.benchmark_group(format!("decode/{name}"));
        group.throughput(Throughput::Elements(records.len() as u64));
        group.bench_function("akwatch_event", |b| {
            let mut out = Vec::with_capacity(4);
            b.iter(|| {
                for r in &records {
                    decoder.decode(black_box(r), &origin, &mut out);
                    black_box(&out);
                    out.clear();
                }
            })
        });
        group.bench_function("serde_json_value", |b| {
            b.iter(|| {
                for r in &records {
                    black_box(serde_json::from_slice::<Value>(black_box(r)).unwrap());
                }
            })
        });
        group.finish();
    }
}

/// The framer over JSON lines and a CloudTrail `{"Records":[...]}` file (about 8 MB each, the
/// bench's AWS records), with the fast path and byte by byte, beside a bare `memchr` line split
/// of the same bytes (the floor), in bytes per second.
fn framing(c: &mut Criterion) {
    use akwatch::source::framing::{FrameOptions, frame_bytes};
    let aws = corpus_sets().into_iter().next().unwrap().1;
    let mut lines = Vec::new();
    while lines.len() < 8 << 20 {
        for r in &aws {
            lines.extend_from_slice(r);
            lines.push(b'\n');
        }
    }
    let mut records = b"{\"Records\":[".to_vec();
    for (i, line) in lines
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .enumerate()
    {
        if i > 0 {
            records.push(b',');
        }
        records.extend_from_slice(line);
    }
    records.extend_from_slice(b"]}");
    let expect = lines.iter().filter(|b| **b == b'\n').count() as u64;
    for (name, data, lines_mode) in [
        ("json_lines", &lines, true),
        ("records_file", &records, false),
    ] {
        let options = FrameOptions::default();
        assert_eq!(
            frame_bytes(data, lines_mode, options, true, |f| {
                black_box(f.bytes);
            }),
            expect
        );
        assert_eq!(
            frame_bytes(data, lines_mode, options, false, |f| {
                black_box(f.bytes);
            }),
            expect
        );
        let mut group = c.benchmark_group(format!("framing/{name}"));
        group.throughput(Throughput::Bytes(data.len() as u64));
        group.bench_function("fast_path", |b| {
            b.iter(|| {
                frame_bytes(black_box(data), lines_mode, options, true, |f| {
                    black_box(f.bytes);
                })
            })
        });
        group.bench_function("byte_by_byte", |b| {
            b.iter(|| {
                frame_bytes(black_box(data), lines_mode, options, false, |f| {
                    black_box(f.bytes);
                })
            })
        });
        group.bench_function("memchr_lines_floor", |b| {
            b.iter(|| memchr::memchr_iter(b'\n', black_box(data)).count())
        });
        group.finish();
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(30).measurement_time(std::time::Duration::from_secs(4)).warm_up_time(std::time::Duration::from_secs(1));
    targets = decode, framing
}
criterion_main!(benches);
