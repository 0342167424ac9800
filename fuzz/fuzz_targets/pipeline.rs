//! One record end to end: decode (auto), enrich, detect with the repository's rules and the
//! default policy, aggregate, serialise the alarms, as `replay` does per record. The record's
//! events are run after the fixture events, so the engine has some history for the key.
use akwatch::Decoder;
use akwatch::enrich::Enricher;
use akwatch::policy::Policy;

fn main() {
    let decoder = Decoder::auto();
    afl::fuzz!(|data: &[u8]| {
        // Per input: the enricher's GeoIP cache is not unwind-safe to share, and is empty here.
        let enricher = Enricher::default();
        let events: Vec<_> = decoder
            .decode_to_vec(data, &akwatch_fuzz::origin())
            .into_iter()
            .filter_map(Result::ok)
            .collect();
        if events.is_empty() {
            return;
        }
        let mut engine = akwatch_fuzz::engine_with(Policy::default())
            .expect("the repository's rules build an engine");
        akwatch_fuzz::run_engine(&mut engine, &enricher, akwatch_fuzz::fixture_events());
        akwatch_fuzz::run_engine(&mut engine, &enricher, &events);
    });
}
