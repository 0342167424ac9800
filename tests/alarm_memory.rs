//! Memory per tracked alarm, the figure that bounds an alarm storm: an alarm hit from 20 IPs
//! (its evidence lists full: 20 source IPs with their location, 20 event ids) must cost less
//! than 8 KiB of heap, so the default cap of 50,000 tracked alarms stays under 400 MiB. dhat
//! measures the real heap, so this is its own test binary.

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

const KEYS: usize = 20;
/// Alarms per key (under the per-key cap), each from `IPS` IPs.
const TARGETS: usize = 100;
const IPS: usize = 20;

/// Key `key` creates an access key for user `target`, from its `ip`-th IP.
fn event(key: usize, target: usize, ip: usize) -> (Event, Enrichment) {
    let t = Utc.with_ymd_and_hms(2025, 6, 2, 8, 0, 0).unwrap()
        + Duration::seconds((target * IPS + ip) as i64);
    let e = Event {
        cloud: Cloud::Aws,
        event_id: format!("{:08x}-5707-4000-8000-{key:012}", target * IPS + ip),
        event_time: t,
        account_id: Some(AccountId("210987654321".into())),
        principal: Principal {
            kind: PrincipalType::User,
            name: Some(format!("user-{key}")),
            id: Some(format!("AIDAMEM{key:013}")),
            arn: Some(format!("arn:aws:iam::210987654321:user/user-{key}")),
            role: None,
            invoked_by: None,
            mfa: None,
            instance_id: None,
        },
        access_key_id: Some(AccessKeyId(format!("AKIAMEM{key:013}"))),
        key_kind: KeyKind::Permanent,
        source_ip: Some(format!("203.0.{}.{}", key % 250, ip + 1).parse().unwrap()),
        source_address: None,
        user_agent: Some("Boto3/1.34.60 md/Botocore#1.34.60 ua/2.0 os/linux#5.15.0".into()),
        region: Some("us-east-1".into()),
        service: "iam".into(),
        action: "CreateAccessKey".into(),
        read_only: Some(false),
        console: false,
        outcome: Outcome::Success,
        error_code: None,
        request_id: None,
        request: Request {
            target_user: Some(format!("victim-{target:04}")),
            ..Request::default()
        },
        origin: Origin::default(),
    };
    let mut enr = Enrichment {
        geo: Some(std::sync::Arc::new(GeoInfo {
            country: Some("DE".into()),
            city: Some(format!("City number {ip}")),
            latitude: Some(50.11),
            longitude: Some(8.68),
            asn: Some(64600 + ip as u32),
            as_org: Some(format!("Hosting provider {ip} GmbH")),
        })),
        ..Enrichment::default()
    };
    enr.ip_class.insert(IpClass::Public);
    (e, enr)
}

#[test]
fn a_tracked_alarm_with_full_evidence_costs_under_8_kib() {
    let root = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let rules = RuleSet::load(&root.join("rules")).unwrap();
    let _profiler = dhat::Profiler::builder().testing().build();
    let mut engine = akwatch::engine::Engine::new(&rules, Policy::default()).unwrap();
    // Warm up each key's detection state first, so that what follows is alarms.
    for key in 0..KEYS {
        let (e, enr) = event(key, 0, 0);
        drop(engine.process(&e, &enr));
    }
    let before_alarms = engine.tracked_alarms();
    let before = dhat::HeapStats::get().curr_bytes;
    for key in 0..KEYS {
        for target in 1..=TARGETS {
            for ip in 0..IPS {
                let (e, enr) = event(key, target, ip);
                drop(engine.process(&e, &enr));
            }
        }
    }
    let after = dhat::HeapStats::get().curr_bytes;
    let alarms = engine.tracked_alarms() - before_alarms;
    let backdoor = engine
        .alarms()
        .into_iter()
        .filter(|a| a.rule_id == "ak.backdoor_key")
        .count();
    assert!(backdoor >= KEYS * TARGETS, "{backdoor} backdoor-key alarms");
    let full = engine
        .alarms()
        .into_iter()
        .filter(|a| a.source_ips.len() == IPS && a.evidence.event_ids.len() == IPS)
        .count();
    assert!(full >= KEYS * TARGETS, "{full} alarms with full evidence");
    // (The detection state grows too — the new IPs — so this overstates the alarm's share.)
    let per_alarm = (after - before) / alarms;
    let (_, _, state) = engine.state.size();
    eprintln!(
        "{alarms} tracked alarms: {per_alarm} bytes of heap per alarm (state included; the state's own estimate: {} bytes per alarm)",
        state / alarms
    );
    assert!(per_alarm < 8 * 1024, "{per_alarm} bytes per tracked alarm");
}
