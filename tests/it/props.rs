//! Property tests: whatever the bytes, decoding and framing never panic, and the records
//! around a damaged one are unaffected.

use std::io::BufReader;

use akwatch::event::Origin;
use akwatch::provider::Decoder;
use akwatch::source::framing::{FrameOptions, frame_records};
use proptest::prelude::*;

use crate::fixture;

fn decode_all(bytes: &[u8]) -> (usize, usize) {
    let decoder = Decoder::auto();
    let (mut ok, mut bad) = (0, 0);
    let mut out = Vec::new();
    frame_records(
        BufReader::new(bytes),
        FrameOptions {
            max_record_bytes: 1 << 16,
        },
        |f| {
            if f.broken.is_some() {
                bad += 1;
                return;
            }
            decoder.decode(f.bytes, &Origin::file("p", f.index, f.line), &mut out);
            for r in out.drain(..) {
                if r.is_ok() { ok += 1 } else { bad += 1 }
            }
        },
    )
    .unwrap();
    (ok, bad)
}

/// JSON-ish text built from the names the decoders look at, so the generator reaches deep
/// into the mapping code rather than failing at the first byte.
fn jsonish() -> impl Strategy<Value = String> {
    let key = prop::sample::select(vec![
        "eventTime",
        "eventName",
        "eventSource",
        "awsRegion",
        "acsRegion",
        "eventRegion",
        "userIdentity",
        "type",
        "accessKeyId",
        "secretId",
        "sessionContext",
        "sessionIssuer",
        "Records",
        "detail",
        "detail-type",
        "data",
        "specversion",
        "event",
        "Response",
        "Events",
        "CloudAuditEvent",
        "@timestamp",
        "message",
        "errorCode",
        "readOnly",
        "requestID",
        "sourceIPAddress",
        "principalId",
        "accountId",
        "token",
        "time",
    ]);
    let leaf = prop_oneof![
        Just("null".to_owned()),
        any::<i64>().prop_map(|i| i.to_string()),
        any::<bool>().prop_map(|b| b.to_string()),
        "[a-zA-Z0-9:. *-]{0,24}".prop_map(|s| format!("{s:?}")),
        Just("\"2025-01-01T00:00:00Z\"".to_owned()),
        Just("\"2017-11-02 15:56:53\"".to_owned()),
        Just("\"AKIA0000000000000000\"".to_owned()),
    ];
    leaf.prop_recursive(4, 48, 6, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(|v| format!("[{}]", v.join(","))),
            prop::collection::vec((key.clone(), inner.clone()), 0..6).prop_map(|kv| {
                let members: Vec<String> = kv.iter().map(|(k, v)| format!("{k:?}:{v}")).collect();
                format!("{{{}}}", members.join(","))
            }),
            // A member holding JSON as a string, as Tencent and SLS do.
            inner.prop_map(|v| format!("{v:?}")),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, .. ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..2048)) {
        decode_all(&bytes);
        Decoder::auto().decode_to_vec(&bytes, &Origin::default());
    }

    #[test]
    fn structured_json_never_panics(text in jsonish()) {
        Decoder::auto().decode_to_vec(text.as_bytes(), &Origin::default());
        decode_all(text.as_bytes());
    }

    #[test]
    fn a_damaged_line_does_not_take_its_neighbours(cut in 1usize..400, byte in any::<u8>(), pos in 0usize..400) {
        let good = std::fs::read_to_string(fixture("ingest/mixed_bad.jsonl")).unwrap();
        let first = good.lines().next().unwrap();
        let mut damaged = first.as_bytes()[..cut.min(first.len() - 1)].to_vec();
        if !damaged.is_empty() {
            let p = pos % damaged.len();
            damaged[p] = if byte == b'\n' { b' ' } else { byte };
        }
        let mut input = Vec::new();
        input.extend_from_slice(first.as_bytes());
        input.push(b'\n');
        input.extend_from_slice(&damaged);
        input.push(b'\n');
        input.extend_from_slice(first.as_bytes());
        input.push(b'\n');
        let (ok, _) = decode_all(&input);
        // The intact lines before and after always decode (the damaged one may or may not).
        prop_assert!(ok >= 2, "ok = {}", ok);
    }
}
