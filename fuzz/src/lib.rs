//! Shared setup for the fuzz targets: the repository's rules, a few decoded fixture events,
//! and a scratch file for the targets that go through the file-reading path.
//!
//! Every target calls akwatch's production code and throws its errors away: an error is a
//! correct answer to bad input; a panic, an abort (allocation failure), or a hang is a finding.

#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use akwatch::alarm::Alarm;
use akwatch::engine::Engine;
use akwatch::enrich::Enricher;
use akwatch::event::Origin;
use akwatch::policy::Policy;
use akwatch::rule::RuleSet;
use akwatch::{Decoder, Event};

/// The repository root (the fuzz crate is `<root>/fuzz`).
pub fn repo() -> &'static Path {
    static ROOT: OnceLock<PathBuf> = OnceLock::new();
    ROOT.get_or_init(|| Path::new(env!("CARGO_MANIFEST_DIR")).join(".."))
}

/// The origin every fuzzed record gets (a file, record 0, line 1, as `normalize` gives).
pub fn origin() -> Origin {
    Origin::file("fuzz-input", 0, 1)
}

/// The repository's own rule set (`rules/`), loaded once per process.
pub fn repo_rules() -> &'static RuleSet {
    static RULES: OnceLock<RuleSet> = OnceLock::new();
    RULES.get_or_init(|| {
        RuleSet::load(&repo().join("rules"))
            .unwrap_or_else(|e| panic!("the repository's rules do not load: {e:?}"))
    })
}

/// The events of the repository's ingest fixtures, decoded once per process.
pub fn fixture_events() -> &'static [Event] {
    static EVENTS: OnceLock<Vec<Event>> = OnceLock::new();
    EVENTS.get_or_init(|| {
        let dir = repo().join("tests/fixtures/ingest");
        let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "json"))
            .collect();
        files.sort();
        let decoder = Decoder::auto();
        let mut events = Vec::new();
        for f in files {
            let bytes = std::fs::read(&f).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
            events.extend(
                decoder
                    .decode_to_vec(&bytes, &origin())
                    .into_iter()
                    .filter_map(Result::ok),
            );
        }
        assert!(!events.is_empty(), "no fixture event decoded");
        events
    })
}

/// Decodes one record with `decoder` and serialises what comes out, as `normalize` does.
pub fn decode_record(decoder: &Decoder, data: &[u8]) {
    let mut out = Vec::new();
    decoder.decode(data, &origin(), &mut out);
    for result in &out {
        match result {
            Ok(event) => {
                let _ = serde_json::to_vec(event);
            }
            Err(reject) => {
                let _ = reject.to_string();
            }
        }
    }
}

/// Runs events through a fresh engine (default enricher), then flushes and serialises the
/// alarms, as `replay` does.
pub fn run_engine(engine: &mut Engine, enricher: &Enricher, events: &[Event]) -> Vec<Alarm> {
    let mut alarms = Vec::new();
    for event in events {
        let enrichment = enricher.enrich(event);
        alarms.extend(engine.process(event, &enrichment));
    }
    alarms.extend(engine.flush());
    for alarm in &alarms {
        let _ = serde_json::to_vec(alarm);
    }
    alarms
}

/// An engine over the repository's rules with `policy`, or `None` when the policy is refused.
pub fn engine_with(policy: Policy) -> Option<Engine> {
    Engine::new(repo_rules(), policy).ok()
}

/// A per-process scratch file (on tmpfs when there is one) that `data` is written to, for the
/// targets that read through akwatch's file path (`source::read_input`, gzip detection).
pub fn scratch_file(target: &str, data: &[u8]) -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    let dir = DIR.get_or_init(|| {
        let shm = Path::new("/dev/shm");
        if shm.is_dir() {
            shm.to_path_buf()
        } else {
            std::env::temp_dir()
        }
    });
    let path = dir.join(format!(
        "akwatch-fuzz-{target}-{}.input",
        std::process::id()
    ));
    std::fs::write(&path, data).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    path
}
