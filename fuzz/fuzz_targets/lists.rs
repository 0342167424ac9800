//! The enrichment list loaders: IP / CIDR lists (`IpSet::parse`), ASN lists (`parse_asns`) and
//! the leak feed (`LeakFeed::parse`), each given the same text.
use akwatch::enrich::iplist::{IpSet, parse_asns};
use akwatch::enrich::leaks::LeakFeed;

fn main() {
    afl::fuzz!(|data: &[u8]| {
        let Ok(text) = std::str::from_utf8(data) else {
            return; // the list files are read as UTF-8 and the rest rejected
        };
        if let Ok(set) = IpSet::parse("fuzz.txt", text) {
            let _ = set.contains("10.1.2.3".parse().expect("an IP"));
        }
        let _ = parse_asns("fuzz.txt", text);
        let _ = LeakFeed::default().parse("fuzz.json", text);
    });
}
