//! serde_json against sonic-rs, decoding the same CloudTrail records into the same typed,
//! borrowing struct, one record per call as on Kafka. The struct holds twelve top-level members
//! and six of `userIdentity`, a part of what akwatch's own decoder reads, as `&str` (no
//! allocation on either side); every other member is skipped. A record with an escape in one
//! of those members does not borrow on either side; how many did is printed (none in the
//! stratus corpus). Records are re-serialised compact, as the decode bench does.
//!
//! From this directory: `cargo run --release -- DIR`, with DIR a directory of CloudTrail JSON
//! files (a `Records` array, an array, or one event each); the default is
//! `../../../shared/corpus/aws/stratus-detonation-logs`.
//! sonic-rs uses its SIMD paths only when built for them: run it again with
//! `RUSTFLAGS="-C target-cpu=native"`.

use std::time::Instant;

use serde::Deserialize;

#[derive(Debug, PartialEq, Deserialize)]
struct Identity<'a> {
    #[serde(borrow, rename = "type")]
    kind: Option<&'a str>,
    #[serde(borrow, rename = "principalId")]
    principal_id: Option<&'a str>,
    #[serde(borrow)]
    arn: Option<&'a str>,
    #[serde(borrow, rename = "accountId")]
    account_id: Option<&'a str>,
    #[serde(borrow, rename = "accessKeyId")]
    access_key_id: Option<&'a str>,
    #[serde(borrow, rename = "userName")]
    user_name: Option<&'a str>,
}

#[derive(Debug, PartialEq, Deserialize)]
struct Record<'a> {
    #[serde(borrow, rename = "eventVersion")]
    event_version: Option<&'a str>,
    #[serde(borrow, rename = "userIdentity")]
    user_identity: Option<Identity<'a>>,
    #[serde(borrow, rename = "eventTime")]
    event_time: Option<&'a str>,
    #[serde(borrow, rename = "eventSource")]
    event_source: Option<&'a str>,
    #[serde(borrow, rename = "eventName")]
    event_name: Option<&'a str>,
    #[serde(borrow, rename = "awsRegion")]
    aws_region: Option<&'a str>,
    #[serde(borrow, rename = "sourceIPAddress")]
    source_ip: Option<&'a str>,
    #[serde(borrow, rename = "userAgent")]
    user_agent: Option<&'a str>,
    #[serde(borrow, rename = "eventID")]
    event_id: Option<&'a str>,
    #[serde(borrow, rename = "errorCode")]
    error_code: Option<&'a str>,
    #[serde(rename = "readOnly")]
    read_only: Option<bool>,
    #[serde(borrow, rename = "recipientAccountId")]
    recipient: Option<&'a str>,
}

impl Record<'_> {
    /// Bytes of every member read, so that neither decode can be optimised away and both can
    /// be checked to read the same.
    fn weight(&self) -> usize {
        let s = |v: &Option<&str>| v.map_or(0, str::len);
        let id = self.user_identity.as_ref().map_or(0, |i| {
            s(&i.kind)
                + s(&i.principal_id)
                + s(&i.arn)
                + s(&i.account_id)
                + s(&i.access_key_id)
                + s(&i.user_name)
        });
        id + s(&self.event_version)
            + s(&self.event_time)
            + s(&self.event_source)
            + s(&self.event_name)
            + s(&self.aws_region)
            + s(&self.source_ip)
            + s(&self.user_agent)
            + s(&self.event_id)
            + s(&self.error_code)
            + usize::from(self.read_only.unwrap_or(false))
            + s(&self.recipient)
    }
}

fn records(dir: &str) -> Vec<Vec<u8>> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{dir}: {e}"))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    let mut out = Vec::new();
    for path in files {
        let text = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let items = match serde_json::from_slice(&text) {
            Ok(serde_json::Value::Array(items)) => items,
            Ok(serde_json::Value::Object(mut o)) => match o.remove("Records") {
                Some(serde_json::Value::Array(items)) => items,
                _ => vec![serde_json::Value::Object(o)],
            },
            _ => continue,
        };
        out.extend(
            items
                .iter()
                .map(|v| serde_json::to_vec(v).unwrap_or_default()),
        );
    }
    out
}

fn main() {
    let dir = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "../../../shared/corpus/aws/stratus-detonation-logs".into());
    let recs = records(&dir);
    assert!(!recs.is_empty(), "no records in {dir}");
    let bytes: usize = recs.iter().map(Vec::len).sum();
    println!(
        "{} records, {} bytes each on average, decoded 1,000 times over",
        recs.len(),
        bytes / recs.len()
    );
    // Both read the same: every record decoded alike (or failing alike), member by member.
    let mut failed = 0;
    for (i, r) in recs.iter().enumerate() {
        let json = serde_json::from_slice::<Record>(r).ok();
        let sonic = sonic_rs::from_slice::<Record>(r).ok();
        assert_eq!(json, sonic, "record {i} decodes differently");
        failed += usize::from(json.is_none());
    }
    println!("records that do not borrow (on either side): {failed}");
    let rounds = 1_000;
    let total = (rounds * recs.len()) as f64;
    let time = |decode: &dyn Fn(&[u8]) -> usize| {
        let t = Instant::now();
        let mut weight = 0;
        for _ in 0..rounds {
            for r in &recs {
                weight += decode(r);
            }
        }
        (t.elapsed().as_secs_f64(), weight)
    };
    let json = |r: &[u8]| serde_json::from_slice::<Record>(r).map_or(0, |x| x.weight());
    let sonic = |r: &[u8]| sonic_rs::from_slice::<Record>(r).map_or(0, |x| x.weight());
    for pass in 1..=4 {
        // Which goes first alternates from pass to pass.
        let ((json, a), (sonic, b)) = if pass % 2 == 1 {
            let j = time(&json);
            (j, time(&sonic))
        } else {
            let s = time(&sonic);
            (time(&json), s)
        };
        assert_eq!(a, b);
        println!(
            "pass {pass}: serde_json {:.0}k records/s ({:.2} µs), sonic-rs {:.0}k/s ({:.2} µs): sonic-rs ÷ serde_json {:.2}×",
            total / json / 1e3,
            json / total * 1e6,
            total / sonic / 1e3,
            sonic / total * 1e6,
            json / sonic
        );
    }
}
