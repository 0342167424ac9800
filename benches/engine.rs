//! The whole pipeline per event (decode + enrich + policy + every rule) beside decode alone,
//! on the bundled scenario's real-shaped records (`examples/`: 3 clouds, native formats).
//! Target: the pipeline at least half the speed of decode alone.

use std::hint::black_box;
use std::path::Path;

use akwatch::event::Origin;
use akwatch::provider::Decoder;
use akwatch::replay::{ReplayOptions, setup};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

/// The allocator the `akwatch` binary ships with (src/main.rs), so the figures are the binary's.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn pipeline(c: &mut Criterion) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let examples = root.join("examples");
    let records =
        akwatch::source::read_records(&[examples.join("logs").display().to_string()]).unwrap();
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
