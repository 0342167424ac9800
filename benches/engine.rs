//! The whole pipeline per event (decode + enrich + policy + every rule) beside decode alone,
//! on the bundled scenario's real-shaped records (`examples/`: 3 clouds, native formats).
//! Target: the pipeline at least half the speed of decode alone.

use std::hint::black_box;
use std::io::Read;
use std::path::Path;

use akwatch::event::Origin;
use akwatch::provider::Decoder;
use akwatch::replay::{ReplayOptions, setup};
use akwatch::source::framing::{FrameOptions, frame_records};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

/// Every record of the bundled scenario, as the framer hands them out.
fn records(dir: &Path) -> Vec<Vec<u8>> {
    let mut files: Vec<_> = walkdir::WalkDir::new(dir)
        .sort_by_file_name()
        .into_iter()
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_file())
        .map(|e| e.into_path())
        .collect();
    files.sort();
    let mut out = Vec::new();
    for f in files {
        let mut bytes = Vec::new();
        flate2::read::MultiGzDecoder::new(std::fs::File::open(&f).unwrap())
            .read_to_end(&mut bytes)
            .unwrap();
        frame_records(bytes.as_slice(), FrameOptions::default(), |frame| {
            out.push(frame.bytes.to_vec())
        })
        .unwrap();
    }
    out
}

fn pipeline(c: &mut Criterion) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let examples = root.join("examples");
    let records = records(&examples.join("logs"));
    let bytes: usize = records.iter().map(Vec::len).sum();
    eprintln!("{} records, {bytes} bytes", records.len());
    let decoder = Decoder::auto();
    let origin = Origin::kafka("bench", 0, 0);
    let mut s = setup(&ReplayOptions::bundled(&examples, &root.join("rules"))).unwrap();

    let mut group = c.benchmark_group("pipeline");
    group.throughput(Throughput::Elements(records.len() as u64));
    group.bench_function("decode_only", |b| {
        let mut out = Vec::with_capacity(4);
        b.iter(|| {
            for r in &records {
                decoder.decode(black_box(r), &origin, &mut out);
                black_box(&out);
                out.clear();
            }
        })
    });
    group.bench_function("decode_enrich_detect", |b| {
        let mut out = Vec::with_capacity(4);
        b.iter(|| {
            for r in &records {
                decoder.decode(black_box(r), &origin, &mut out);
                for e in out.drain(..).flatten() {
                    let enr = s.enricher.enrich(&e);
                    black_box(s.engine.process(&e, &enr));
                }
            }
        })
    });
    group.finish();
    let (keys, entries, state_bytes) = s.engine.state.size();
    eprintln!(
        "state after the runs: {keys} keys, {entries} entries, {state_bytes} bytes ({} per key)",
        state_bytes / keys.max(1)
    );
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20).measurement_time(std::time::Duration::from_secs(6)).warm_up_time(std::time::Duration::from_secs(2));
    targets = pipeline
}
criterion_main!(benches);
