//! A credential report (AWS IAM CSV or get-credential-report JSON, Alibaba RAM, Tencent CAM),
//! as a file (`report::read_report`) and as a report-topic message (`ReportFeed::apply_message`),
//! then indexed and used to enrich the fixture events, as the service does.
use akwatch::enrich::{Enricher, ReportIndex};
use akwatch::report::live::ReportFeed;
use akwatch::report::read_report;

fn main() {
    let received = chrono::DateTime::from_timestamp(1_750_000_000, 0).expect("a valid time");
    afl::fuzz!(|data: &[u8]| {
        let path = akwatch_fuzz::scratch_file("report", data);
        if let Ok(parsed) = read_report(&path) {
            for e in &parsed.row_errors {
                let _ = e.to_string();
            }
        }
        let mut feed = ReportFeed::new(&[]);
        for key in [
            &b"aws:123456789012"[..],
            b"alibaba:1234567890123456",
            b"tencent:100012345678",
        ] {
            let change = feed.apply_message("reports", Some(key), Some(data), received, "fuzz");
            let _ = (change.errors.len(), change.warnings.len());
        }
        let enricher = Enricher {
            reports: ReportIndex::new(feed.latest()),
            ..Enricher::default()
        };
        for event in akwatch_fuzz::fixture_events() {
            let _ = enricher.enrich(event);
        }
    });
}
