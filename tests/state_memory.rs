//! State memory per key: with every repository rule on, a key seen from 10 IPs must cost at
//! most 600 bytes of heap (issue 13; the design's bound is 1 KiB). dhat measures the real
//! heap, so this is its own test binary.

use akwatch::enrich::{Enrichment, GeoInfo, IpClass};
use akwatch::event::{
    AccessKeyId, AccountId, Cloud, Event, KeyKind, Origin, Outcome, Principal, PrincipalType,
    Request,
};
use akwatch::policy::Policy;
use akwatch::rule::RuleSet;
use chrono::{Duration, TimeZone, Utc};

#[global_allocator]
static ALLOC: dhat::Alloc = dhat::Alloc;

const KEYS: usize = 1000;
const IPS: usize = 10;

fn event(key: usize, ip: usize, n: usize) -> (Event, Enrichment) {
    let t = Utc.with_ymd_and_hms(2025, 6, 2, 8, 0, 0).unwrap()
        + Duration::minutes((ip * 3 + n) as i64 * 90);
    let e = Event {
        cloud: Cloud::Aws,
        event_id: format!("e-{key}-{ip}-{n}"),
        event_time: t,
        account_id: Some(AccountId("210987654321".into())),
        principal: Principal {
            kind: PrincipalType::User,
            name: Some(format!("user-{key}")),
            id: None,
            arn: None,
            role: None,
            invoked_by: None,
            mfa: None,
            instance_id: None,
        },
        access_key_id: Some(AccessKeyId(format!("AKIAMEM{key:013}"))),
        key_kind: KeyKind::Permanent,
        source_ip: Some(format!("198.18.{}.{}", key % 200, ip + 1).parse().unwrap()),
        source_address: None,
        user_agent: Some("Boto3/1.34.60 md/Botocore#1.34.60 ua/2.0 os/linux#5.15.0".into()),
        region: Some("us-east-1".into()),
        service: if n.is_multiple_of(2) { "s3" } else { "ec2" }.into(),
        action: if n.is_multiple_of(2) {
            "GetObject"
        } else {
            "DescribeInstances"
        }
        .into(),
        read_only: Some(true),
        console: false,
        outcome: Outcome::Success,
        error_code: None,
        request_id: None,
        request: Request::default(),
        origin: Origin::default(),
    };
    let mut enr = Enrichment {
        geo: Some(std::sync::Arc::new(GeoInfo {
            country: Some("US".into()),
            city: Some("Ashburn".into()),
            latitude: Some(39.04),
            longitude: Some(-77.49),
            asn: Some(64600 + ip as u32 % 2),
            as_org: Some("ISP".into()),
        })),
        ..Enrichment::default()
    };
    enr.ip_class.insert(IpClass::Public);
    (e, enr)
}

#[test]
fn a_key_with_ten_ips_costs_at_most_600_bytes() {
    let root = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let rules = RuleSet::load(&root.join("rules")).unwrap();
    let events: Vec<_> = (0..KEYS)
        .flat_map(|k| (0..IPS).flat_map(move |ip| (0..3).map(move |n| event(k, ip, n))))
        .collect();
    let _profiler = dhat::Profiler::builder().testing().build();
    let mut engine = akwatch::engine::Engine::new(&rules, Policy::default()).unwrap();
    let before = dhat::HeapStats::get().curr_bytes;
    let mut alarms = 0;
    for (e, enr) in &events {
        alarms += engine.process(e, enr).len();
    }
    let after = dhat::HeapStats::get().curr_bytes;
    let per_key = (after - before) / KEYS;
    let (keys, entries, estimate) = engine.state.size();
    eprintln!(
        "{keys} keys, {entries} state entries, {alarms} alarms: {per_key} bytes of heap per key (the state's own estimate: {} bytes per key)",
        estimate / keys
    );
    assert_eq!(keys, KEYS);
    assert_eq!(
        alarms, 0,
        "the traffic is benign and within the learning period"
    );
    // The design's bound is 1 KiB, issue 13's 600 bytes; 599 measured (2026-12-04). The
    // assertion keeps the gains of benches/README.md ("State memory") from slipping back.
    assert!(per_key <= 600, "{per_key} bytes per key");
}
