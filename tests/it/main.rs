//! The integration test binary: golden ingest tests, the public corpus, reports, the CLI,
//! schemas and property tests.

mod api;
mod cli;
mod compose;
mod console;
mod corpus;
mod detect;
mod golden;
mod kafka;
mod limits;
mod notify;
mod ocsf;
mod ops;
mod poison;
mod props;
mod reload;
mod reports;
mod schema;
mod validation;

use std::path::{Path, PathBuf};

use akwatch::Event;
use akwatch::provider::{Decoder, Reject};
use akwatch::source::framing::FrameOptions;
use akwatch::source::{Input, ReadCounts, read_input};

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn fixture(rel: &str) -> PathBuf {
    repo().join("tests/fixtures").join(rel)
}

/// Everything reading one file produced.
pub struct Read {
    pub events: Vec<Event>,
    pub rejects: Vec<(Reject, Vec<u8>)>,
    pub counts: ReadCounts,
}

pub fn read_file(path: &Path, decoder: Decoder) -> Read {
    let mut events = Vec::new();
    let mut rejects = Vec::new();
    let counts = read_input(
        &Input::File(path.to_path_buf()),
        &decoder,
        FrameOptions::default(),
        &mut |e| {
            events.push(e);
            Ok(())
        },
        &mut |r| rejects.push((r.reject, r.raw.to_vec())),
    );
    Read {
        events,
        rejects,
        counts,
    }
}

/// The shared corpus beside the repository, if present. With `AKWATCH_REQUIRE_CORPUS` set
/// (as `.ci/run` does) its absence is a failure; otherwise the test prints a notice and skips.
pub fn corpus() -> Option<PathBuf> {
    let dir = repo().join("../shared/corpus");
    if dir.is_dir() {
        return Some(dir);
    }
    if std::env::var_os("AKWATCH_REQUIRE_CORPUS").is_some() {
        panic!("../shared/corpus is missing and AKWATCH_REQUIRE_CORPUS is set");
    }
    eprintln!("notice: ../shared/corpus not found beside the repository; corpus test skipped");
    None
}
