//! A policy file (`Policy::add_file`, what `Policy::load` does per file) against the
//! repository's rules; if it loads, an engine is built with it (threshold overrides applied)
//! and the fixture events are run through it twice (a second hit renotifies), as `replay` does.
use akwatch::enrich::Enricher;
use akwatch::policy::Policy;

fn main() {
    let rules = akwatch_fuzz::repo_rules();
    afl::fuzz!(|data: &[u8]| {
        // Per input: the enricher's GeoIP cache is not unwind-safe to share, and is empty here.
        let enricher = Enricher::default();
        let Ok(text) = std::str::from_utf8(data) else {
            return; // Policy::load reads files as UTF-8 and rejects the rest
        };
        let mut policy = Policy::default();
        if policy.add_file("fuzz.yaml", text, rules).is_err() {
            return;
        }
        if let Some(mut engine) = akwatch_fuzz::engine_with(policy) {
            let events = akwatch_fuzz::fixture_events();
            akwatch_fuzz::run_engine(&mut engine, &enricher, events);
            akwatch_fuzz::run_engine(&mut engine, &enricher, events);
        }
    });
}
