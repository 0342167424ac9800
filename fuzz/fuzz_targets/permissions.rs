//! A permission snapshot (AWS get-account-authorization-details, the Alibaba / Tencent
//! envelopes of their CLIs' outputs): parsed, indexed, its risks listed, and the fixture events
//! enriched with it, as the pipeline does.
use akwatch::enrich::Enricher;
use akwatch::permissions::{PermissionIndex, read_file};

fn main() {
    afl::fuzz!(|data: &[u8]| {
        let path = akwatch_fuzz::scratch_file("permissions", data);
        let Ok(snapshot) = read_file(&path) else {
            return;
        };
        let index = PermissionIndex::new(vec![snapshot]);
        let _ = index.risks();
        let enricher = Enricher {
            permissions: index,
            ..Enricher::default()
        };
        for event in akwatch_fuzz::fixture_events() {
            let _ = enricher.enrich(event);
        }
    });
}
