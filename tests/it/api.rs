//! The inventory and its API on the bundled scenario: `replay --store` fills a SQLite store,
//! the `/api/v1` router answers over it (in process, through the same router `serve` runs).

use std::collections::BTreeSet;
use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use serde_json::{Value, json};
use tower::ServiceExt as _;

use akwatch::api::{ApiState, Role, TokenSpec, router, token_hash};
use akwatch::inventory::{Batch, Store};
use akwatch::replay::{ReplayOptions, run, setup};
use akwatch::simulate::GroundTruth;

use crate::repo;

pub(crate) const VIEWER: &str = "viewer-secret";
pub(crate) const ADMIN: &str = "admin-secret";
pub(crate) const OPERATOR: &str = "operator-secret";

pub(crate) struct Fixture {
    /// Where the API writes allowlist entries made from alarms.
    pub(crate) policy_dir: std::path::PathBuf,
    _dir: tempfile::TempDir,
    pub(crate) app: axum::Router,
    store: Store,
    /// Events with an access key, and all events, in the scenario.
    keyed_events: i64,
    events: Vec<akwatch::Event>,
}

/// The PostgreSQL server the tests may use (`scripts/test.sh` starts one and exports
/// `AKWATCH_POSTGRES_URL`); without it the PostgreSQL cases skip, unless `AKWATCH_REQUIRE_POSTGRES`
/// is set.
pub(crate) fn postgres() -> Option<String> {
    match std::env::var("AKWATCH_POSTGRES_URL") {
        Ok(url) if !url.is_empty() => Some(url),
        _ => {
            assert!(
                std::env::var_os("AKWATCH_REQUIRE_POSTGRES").is_none(),
                "AKWATCH_POSTGRES_URL is not set"
            );
            eprintln!("notice: no AKWATCH_POSTGRES_URL, the PostgreSQL case is skipped");
            None
        }
    }
}

/// A fresh database on the server at `url` (each test has its own).
pub(crate) async fn fresh_database(url: &str) -> String {
    sqlx::any::install_default_drivers();
    let name = format!(
        "akwatch_t{}_{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    );
    let pool = sqlx::any::AnyPoolOptions::new()
        .max_connections(1)
        .connect(url)
        .await
        .unwrap();
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&pool)
        .await
        .unwrap();
    pool.close().await;
    let base = url.rsplit_once('/').unwrap().0;
    format!("{base}/{name}")
}

#[derive(Clone, Copy)]
pub(crate) enum Backend {
    Sqlite,
    Postgres,
}

/// Runs `case` on SQLite, and on PostgreSQL when a server is given.
macro_rules! on_both {
    ($sqlite:ident, $postgres:ident, $case:ident) => {
        #[tokio::test]
        async fn $sqlite() {
            $case(fixture(Backend::Sqlite).await).await;
        }

        #[tokio::test]
        async fn $postgres() {
            if postgres().is_some() {
                $case(fixture(Backend::Postgres).await).await;
            }
        }
    };
}

pub(crate) async fn fixture(backend: Backend) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let options = ReplayOptions::bundled(&repo().join("examples"), &repo().join("rules"));
    let mut s = setup(&options).unwrap_or_else(|e| panic!("{e:#?}"));
    s.inventory = Some(Batch::default());
    let mut summary = run(&mut s, &options.inputs, None, &mut |_| {}, &mut |r| {
        panic!("unexpected reject: {}", r.reject)
    })
    .unwrap();
    let batch = summary.inventory.take().unwrap();
    assert_eq!(batch.events, summary.events);
    let url = match backend {
        Backend::Sqlite => dir.path().join("inv.db").display().to_string(),
        Backend::Postgres => fresh_database(&postgres().unwrap()).await,
    };
    let store = Store::open(&url).await.unwrap();
    store.apply(batch).await.unwrap();
    let inputs =
        akwatch::source::expand(&[repo().join("examples/logs").display().to_string()]).unwrap();
    let mut events = Vec::new();
    for input in &inputs.inputs {
        let akwatch::source::Input::File(path) = input else {
            unreachable!()
        };
        events.extend(crate::read_file(path, akwatch::Decoder::auto()).events);
    }
    let keyed_events = events.iter().filter(|e| e.access_key_id.is_some()).count() as i64;
    let tokens = vec![
        TokenSpec {
            name: "alice".into(),
            role: Role::Viewer,
            sha256: token_hash(VIEWER),
        },
        TokenSpec {
            name: "bob".into(),
            role: Role::Operator,
            sha256: token_hash(OPERATOR),
        },
        TokenSpec {
            name: "carol".into(),
            role: Role::Admin,
            sha256: token_hash(ADMIN),
        },
    ];
    let policy_dir = dir.path().join("policies");
    std::fs::create_dir_all(&policy_dir).unwrap();
    // The API as served: inside the console's app (same router, plus the pages).
    let app = akwatch::console::app(
        Arc::new(ApiState {
            store: store.clone(),
            tokens,
            policies: Some(akwatch::api::PolicyFiles {
                dir: policy_dir.clone(),
                dirs: vec![policy_dir.clone()],
                rules: akwatch::rule::RuleSet::load(&repo().join("rules")).unwrap(),
                lock: tokio::sync::Mutex::new(()),
            }),
        }),
        prometheus::IntCounter::new("t", "t").unwrap(),
    );
    Fixture {
        policy_dir,
        _dir: dir,
        app,
        store,
        keyed_events,
        events,
    }
}

pub(crate) async fn call(
    app: &axum::Router,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let mut req = Request::builder().method(method).uri(path);
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    let req = match body {
        Some(b) => req
            .header("content-type", "application/json")
            .body(Body::from(b.to_string()))
            .unwrap(),
        None => req.body(Body::empty()).unwrap(),
    };
    let resp = app.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let bytes = axum::body::to_bytes(resp.into_body(), 1 << 24)
        .await
        .unwrap();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

pub(crate) async fn get(app: &axum::Router, path: &str) -> Value {
    let (status, v) = call(app, "GET", path, Some(VIEWER), None).await;
    assert_eq!(status, StatusCode::OK, "{path}: {v}");
    v
}

fn truth() -> GroundTruth {
    serde_json::from_str(
        &std::fs::read_to_string(repo().join("examples/ground-truth.json")).unwrap(),
    )
    .unwrap()
}

on_both!(
    every_attacked_key_is_listed_with_its_ips_apis_and_alarms,
    every_attacked_key_is_listed_with_its_ips_apis_and_alarms_on_postgres,
    listed
);

async fn listed(f: Fixture) {
    let truth = truth();
    for attack in &truth.attacks {
        let k = get(&f.app, &format!("/api/v1/keys/{}", attack.key)).await;
        assert_eq!(k["key_id"], attack.key.as_str());
        assert!(k["calls"].as_i64().unwrap() > 0, "{}", attack.id);
        assert!(!k["apis"].as_array().unwrap().is_empty(), "{}", attack.id);
        let rules: BTreeSet<&str> = k["alarms"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|a| a["rule_id"].as_str())
            .collect();
        for want in &attack.expect {
            assert!(
                rules.contains(want.as_str()),
                "{}: {want} not on the key's page: {rules:?}",
                attack.id
            );
        }
    }
    // The leaked key: its leak alarm, and the Tor IP it was used from among its IPs.
    let leaked = truth
        .attacks
        .iter()
        .find(|a| a.id == "leaked-key-from-tor")
        .unwrap();
    let k = get(&f.app, &format!("/api/v1/keys/{}", leaked.key)).await;
    let alarms = k["alarms"].as_array().unwrap();
    let tor_ip = alarms
        .iter()
        .filter(|a| a["rule_id"] == "ak.leaked_key_use")
        .flat_map(|a| a["source_ips"].as_array().unwrap().iter())
        .find(|i| i["classes"].as_array().unwrap().iter().any(|c| c == "tor"))
        .expect("the leaked key was used from a Tor exit")["ip"]
        .as_str()
        .unwrap();
    assert!(
        k["ips"]
            .as_array()
            .unwrap()
            .iter()
            .any(|i| i["ip"] == tor_ip)
    );
    let ip = get(&f.app, &format!("/api/v1/ips/{tor_ip}")).await;
    assert!(
        ip["keys_used"]
            .as_array()
            .unwrap()
            .iter()
            .any(|u| u["key_id"] == leaked.key.as_str())
    );
    assert!(ip["classes"].as_str().unwrap().contains("tor"), "{ip}");
    // The list pages and totals.
    let list = get(&f.app, "/api/v1/keys?limit=10&sort=calls&order=desc").await;
    assert_eq!(list["items"].as_array().unwrap().len(), 10);
    let distinct_keys: BTreeSet<&str> = f
        .events
        .iter()
        .filter_map(|e| e.access_key_id.as_ref().map(|k| k.as_str()))
        .collect();
    assert_eq!(
        list["total"].as_u64().unwrap() as usize,
        distinct_keys.len()
    );
    let calls: Vec<i64> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["calls"].as_i64().unwrap())
        .collect();
    assert!(
        calls.windows(2).all(|w| w[0] >= w[1]),
        "sorted by calls: {calls:?}"
    );
}

on_both!(
    counts_equal_the_events_and_hidden_keys_show_no_ip,
    counts_equal_the_events_and_hidden_keys_show_no_ip_on_postgres,
    counts
);

async fn counts(f: Fixture) {
    assert_eq!(f.store.total_calls().await.unwrap(), f.keyed_events);
    let mut offset = 0;
    let mut sum = 0;
    loop {
        let page = get(&f.app, &format!("/api/v1/keys?limit=500&offset={offset}")).await;
        let items = page["items"].as_array().unwrap();
        sum += items
            .iter()
            .map(|k| k["calls"].as_i64().unwrap())
            .sum::<i64>();
        if items.len() < 500 {
            break;
        }
        offset += 500;
    }
    assert_eq!(sum, f.keyed_events);
    // The IP-hidden partner key: counted, but its IPs are nowhere.
    let hidden = "AKIAPARTNER000000001";
    let k = get(&f.app, &format!("/api/v1/keys/{hidden}")).await;
    assert_eq!(k["ip_hidden"], 1);
    assert!(k["calls"].as_i64().unwrap() > 0);
    assert!(k["ips"].as_array().unwrap().is_empty(), "{}", k["ips"]);
    let partner_ips: BTreeSet<String> = f
        .events
        .iter()
        .filter(|e| {
            e.access_key_id
                .as_ref()
                .is_some_and(|x| x.as_str() == hidden)
        })
        .filter_map(|e| e.source_ip.map(|i| i.to_string()))
        .collect();
    let others: BTreeSet<String> = f
        .events
        .iter()
        .filter(|e| {
            e.access_key_id
                .as_ref()
                .is_none_or(|x| x.as_str() != hidden)
        })
        .filter_map(|e| e.source_ip.map(|i| i.to_string()))
        .collect();
    assert!(!partner_ips.is_empty());
    for ip in partner_ips.difference(&others) {
        let (status, _) = call(
            &f.app,
            "GET",
            &format!("/api/v1/ips/{ip}"),
            Some(VIEWER),
            None,
        )
        .await;
        assert_eq!(
            status,
            StatusCode::NOT_FOUND,
            "{ip} of the hidden key is listed"
        );
    }
    let all_ips = get(&f.app, "/api/v1/ips?limit=500").await;
    for i in all_ips["items"].as_array().unwrap() {
        let detail = get(
            &f.app,
            &format!("/api/v1/ips/{}", i["ip"].as_str().unwrap()),
        )
        .await;
        assert!(
            detail["keys_used"]
                .as_array()
                .unwrap()
                .iter()
                .all(|u| u["key_id"] != hidden),
            "{detail}"
        );
    }
    // Accounts: the AWS account with its keys.
    let acc = get(&f.app, "/api/v1/accounts/aws/210987654321").await;
    assert!(acc["keys"].as_array().unwrap().len() > 5);
    let overview = get(&f.app, "/api/v1/overview").await;
    assert!(overview["keys_with_pending_alarms"].as_i64().unwrap() > 10);
}

on_both!(
    triage_needs_a_role_is_audited_and_a_handled_alarm_fires_again,
    triage_needs_a_role_is_audited_and_a_handled_alarm_fires_again_on_postgres,
    triage
);

async fn triage(f: Fixture) {
    let list = get(&f.app, "/api/v1/alarms?rule=ak.backdoor_key&limit=1").await;
    let alarm = list["items"][0].clone();
    let id = alarm["alarm_id"].as_str().unwrap().to_owned();
    assert_eq!(alarm["triage_status"], "pending");
    let path = format!("/api/v1/alarms/{id}/status");
    let body = json!({"status": "handled", "comment": "key deleted"});
    assert_eq!(
        call(&f.app, "POST", &path, None, Some(body.clone()))
            .await
            .0,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        call(&f.app, "POST", &path, Some("wrong"), Some(body.clone()))
            .await
            .0,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        call(&f.app, "POST", &path, Some(VIEWER), Some(body.clone()))
            .await
            .0,
        StatusCode::FORBIDDEN
    );
    let (status, v) = call(
        &f.app,
        "POST",
        &path,
        Some(OPERATOR),
        Some(json!({"status": "solved"})),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{v}");
    let (status, v) = call(&f.app, "POST", &path, Some(OPERATOR), Some(body)).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    let a = get(&f.app, &format!("/api/v1/alarms/{id}")).await;
    assert_eq!(a["triage_status"], "handled");
    let h = &a["history"][0];
    assert_eq!(
        (h["before_value"].as_str(), h["after_value"].as_str()),
        (Some("pending"), Some("handled"))
    );
    assert!(h["actor"].as_str().unwrap().starts_with("bob"));
    assert_eq!(h["comment"], "key deleted");
    let handled = get(&f.app, "/api/v1/alarms?status=handled").await;
    assert_eq!(handled["total"], 1);
    // The same alarm fires again (one more hit): pending again, as CSC re-raises.
    let mut again: akwatch::alarm::Alarm = serde_json::from_value(alarm.clone()).unwrap();
    again.count += 1;
    again.last_seen += chrono::Duration::minutes(5);
    let mut batch = Batch::default();
    batch.alarm(&again);
    f.store.apply(batch).await.unwrap();
    let a = get(&f.app, &format!("/api/v1/alarms/{id}")).await;
    assert_eq!(a["triage_status"], "pending");
    // An IP note, audited; a viewer may not write one.
    let ip = get(&f.app, "/api/v1/ips?limit=1").await["items"][0]["ip"]
        .as_str()
        .unwrap()
        .to_owned();
    let note = json!({"note": "<script>office NAT</script>"});
    assert_eq!(
        call(
            &f.app,
            "PUT",
            &format!("/api/v1/ips/{ip}/note"),
            Some(VIEWER),
            Some(note.clone())
        )
        .await
        .0,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        call(
            &f.app,
            "PUT",
            &format!("/api/v1/ips/{ip}/note"),
            Some(OPERATOR),
            Some(note)
        )
        .await
        .0,
        StatusCode::OK
    );
    assert_eq!(
        get(&f.app, &format!("/api/v1/ips/{ip}")).await["note"],
        "<script>office NAT</script>"
    );
    // The re-raised alarm ignored: its history lists both changes oldest first, the audit
    // log all three newest first, in the order made though they fall in a second or two.
    let body = json!({"status": "ignored", "comment": "test key"});
    let (status, v) = call(&f.app, "POST", &path, Some(OPERATOR), Some(body)).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    let history = &get(&f.app, &format!("/api/v1/alarms/{id}")).await["history"];
    assert_eq!(
        (&history[0]["after_value"], &history[1]["after_value"]),
        (&json!("handled"), &json!("ignored")),
        "{history}"
    );
    let audit = get(&f.app, "/api/v1/audit").await;
    assert_eq!(audit["total"], 3);
    let made: Vec<(&str, &str)> = audit["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            (
                a["action"].as_str().unwrap(),
                a["after_value"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        made,
        [
            ("alarm.status", "ignored"),
            ("ip.note", "<script>office NAT</script>"),
            ("alarm.status", "handled")
        ],
        "{audit}"
    );
}

on_both!(
    bad_paging_and_sorting_are_refused,
    bad_paging_and_sorting_are_refused_on_postgres,
    refused
);

async fn refused(f: Fixture) {
    for q in [
        "limit=10000",
        "limit=0",
        "offset=-1",
        "sort=key_id%3BDROP%20TABLE%20inv_keys",
        "order=sideways",
    ] {
        let (status, v) = call(
            &f.app,
            "GET",
            &format!("/api/v1/keys?{q}"),
            Some(VIEWER),
            None,
        )
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{q}: {v}");
    }
    // Filter values are bound, not spliced: a quote finds nothing and breaks nothing.
    let v = get(&f.app, "/api/v1/alarms?rule=ak.x'%20OR%20'1'='1").await;
    assert_eq!(v["total"], 0);
    assert_eq!(
        call(&f.app, "GET", "/api/v1/keys/NOPE", Some(VIEWER), None)
            .await
            .0,
        StatusCode::NOT_FOUND
    );
}

/// The two commands a user runs: `replay --store` then `serve`; without `--tokens` the server
/// prints a one-time admin token and answers only with it (and refuses a non-loopback address).
#[test]
fn replay_store_then_serve_answers_with_the_printed_token() {
    use std::io::{BufRead, Read, Write};
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("x.db");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_akwatch"))
        .args(["replay", "--store", db.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("inventory: 7530 events written"));
    let refused = std::process::Command::new(env!("CARGO_BIN_EXE_akwatch"))
        .args([
            "serve",
            "--store",
            db.to_str().unwrap(),
            "--listen",
            "0.0.0.0:1",
        ])
        .output()
        .unwrap();
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("serve --tokens"));

    let addr = format!("127.0.0.1:{}", crate::kafka::free_port());
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_akwatch"))
        .args(["serve", "--store", db.to_str().unwrap(), "--listen", &addr])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(child.stderr.take().unwrap()).lines();
    let token = lines
        .by_ref()
        .map_while(Result::ok)
        .find_map(|l| l.split("loopback only): ").nth(1).map(str::to_owned))
        .expect("a one-time token is printed");
    let get = |auth: Option<&str>| {
        for _ in 0..100 {
            if let Ok(mut s) = std::net::TcpStream::connect(&addr) {
                let header = auth
                    .map(|t| format!("Authorization: Bearer {t}\r\n"))
                    .unwrap_or_default();
                write!(
                    s,
                    "GET /api/v1/overview HTTP/1.1\r\nHost: x\r\n{header}Connection: close\r\n\r\n"
                )
                .unwrap();
                let mut r = String::new();
                s.read_to_string(&mut r).unwrap();
                return r;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        panic!("the server never answered on {addr}");
    };
    let unauthenticated = get(None);
    let ok = get(Some(&token));
    child.kill().ok();
    child.wait().ok();
    assert!(
        unauthenticated.starts_with("HTTP/1.1 401"),
        "{unauthenticated}"
    );
    assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
    assert!(ok.contains("keys_with_pending_alarms"), "{ok}");
}

/// Hourly rollups past the retention (counted back from the newest) are purged; the key's
/// totals stay.
#[tokio::test]
async fn rollups_past_the_retention_are_purged() {
    let f = fixture(Backend::Sqlite).await;
    let before = f.store.total_calls().await.unwrap();
    // The scenario spans ten days: 3 days of retention keeps about a third.
    let purged = f.store.purge_older_than_days(3).await.unwrap();
    let after = f.store.total_calls().await.unwrap();
    assert!(
        purged > 0 && after < before && after > 0,
        "{before} -> {after}"
    );
    let keys = get(&f.app, "/api/v1/keys?limit=500").await;
    let sum: i64 = keys["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["calls"].as_i64().unwrap())
        .sum();
    assert_eq!(sum, f.keyed_events, "key totals are not rollups");
    // One record dated 2099 is not the reference: nothing more is purged.
    sqlx::query("INSERT INTO inv_calls_hourly (cloud, key_id, ip, api, hour, calls, failures) VALUES ('aws', 'AKIAFUTURE', 'hidden', 'sts:GetCallerIdentity', 4070908800, 1, 0)")
        .execute(f.store.pool())
        .await
        .unwrap();
    assert_eq!(f.store.purge_older_than_days(3).await.unwrap(), 0);
    assert_eq!(f.store.total_calls().await.unwrap(), after + 1);
}

/// An allowlist entry made from an alarm: refused when invalid (the file loader's message),
/// written to the policy directory, the alarm marked allowlisted and audited, and the next
/// replay with that directory no longer raises the alarm.
#[tokio::test]
async fn an_allowlist_entry_from_an_alarm_suppresses_it_on_the_next_replay() {
    let f = fixture(Backend::Sqlite).await;
    let list = get(&f.app, "/api/v1/alarms?rule=ak.backdoor_key&limit=1").await;
    let id = list["items"][0]["alarm_id"].as_str().unwrap().to_owned();
    let path = format!("/api/v1/alarms/{id}/allowlist");
    let (status, v) = call(
        &f.app,
        "POST",
        &path,
        Some(VIEWER),
        Some(json!({"comment": "x"})),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{v}");
    let (status, v) = call(
        &f.app,
        "POST",
        &path,
        Some(OPERATOR),
        Some(json!({"comment": "planned key rotation", "expires": "someday"})),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{v}");
    let message = v["error"].as_str().unwrap();
    assert!(
        message.contains("api-allowlist.yaml:")
            && message.contains("expires: not a date or time: \"someday\""),
        "{message}"
    );
    assert!(
        !f.policy_dir.join("api-allowlist.yaml").exists(),
        "a refused entry leaves no file"
    );
    let (status, v) = call(
        &f.app,
        "POST",
        &path,
        Some(OPERATOR),
        Some(json!({"comment": "planned key rotation", "scope": ["api"]})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{v}");
    let a = get(&f.app, &format!("/api/v1/alarms/{id}")).await;
    assert_eq!(a["triage_status"], "allowlisted");
    assert_eq!(a["history"][0]["action"], "alarm.allowlist");
    // The next replay, with the directory the API wrote to.
    let mut options = ReplayOptions::bundled(&repo().join("examples"), &repo().join("rules"));
    options.policies.push(f.policy_dir.clone());
    let mut s = setup(&options).unwrap_or_else(|e| panic!("{e:#?}"));
    let mut ids = BTreeSet::new();
    run(
        &mut s,
        &options.inputs,
        None,
        &mut |a| {
            ids.insert(a.alarm_id.clone());
        },
        &mut |r| panic!("unexpected reject: {}", r.reject),
    )
    .unwrap();
    assert!(!ids.contains(&id), "the allowlisted alarm is raised again");
    assert!(
        s.engine
            .stats
            .allowlisted
            .get("ak.backdoor_key")
            .copied()
            .unwrap_or(0)
            > 0
    );
    assert!(ids.len() > 40, "the other alarms are still raised");
}

/// A replay writes full batches during the run (bounded memory): many small batches give the
/// same inventory as one.
#[tokio::test(flavor = "multi_thread")]
async fn batches_written_during_the_run_add_up_to_the_events() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("b.db").to_str().unwrap())
        .await
        .unwrap();
    let options = ReplayOptions::bundled(&repo().join("examples"), &repo().join("rules"));
    let mut s = setup(&options).unwrap_or_else(|e| panic!("{e:#?}"));
    s.inventory = Some(Batch::default());
    s.inventory_batch_rows = 300;
    let written = Arc::new(std::sync::Mutex::new(Vec::new()));
    let (sink_store, sink_written) = (store.clone(), written.clone());
    let handle = tokio::runtime::Handle::current();
    s.inventory_sink = Some(Box::new(move |batch: Batch| {
        sink_written.lock().unwrap().push(batch.events);
        tokio::task::block_in_place(|| handle.block_on(sink_store.apply(batch)))
            .map_err(|e| e.to_string())
    }));
    let mut summary = tokio::task::block_in_place(|| {
        run(&mut s, &options.inputs, None, &mut |_| {}, &mut |r| {
            panic!("unexpected reject: {}", r.reject)
        })
    })
    .unwrap();
    store
        .apply(summary.inventory.take().unwrap())
        .await
        .unwrap();
    let batches = written.lock().unwrap().clone();
    assert!(batches.len() > 10, "{} batches", batches.len());
    let keyed = store.total_calls().await.unwrap();
    let one = fixture(Backend::Sqlite).await;
    assert_eq!(keyed, one.keyed_events);
}

/// `replay --store`'s writer thread: batches written while the replay goes on add up to the
/// same counts as one write (their order is the channel's, FIFO; counts do not show it); a store that fails is reported by `finish` with its
/// cause, and the sink refuses the batches after it.
#[test]
fn a_writer_thread_writes_the_batches_while_the_replay_goes_on() {
    use akwatch::inventory::BatchWriter;
    let rt = Arc::new(
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap(),
    );
    let dir = tempfile::tempdir().unwrap();
    let store = rt
        .block_on(Store::open(dir.path().join("w.db").to_str().unwrap()))
        .unwrap();
    let (mut summary, batches) = replay_through_writer(&store, &rt, 1, 300, &[]);
    assert!(batches > 10);
    rt.block_on(store.apply(summary.inventory.take().unwrap()))
        .unwrap();
    let keyed = rt.block_on(store.total_calls()).unwrap();
    let one = rt.block_on(fixture(Backend::Sqlite));
    assert_eq!(keyed, one.keyed_events);

    // A store that cannot be written (its connections closed): the error comes back from
    // `finish`, and the sink refuses the batches after it.
    let store = rt
        .block_on(Store::open(dir.path().join("closed.db").to_str().unwrap()))
        .unwrap();
    let (mut sink, writer) = BatchWriter::spawn(store.clone(), rt.clone()).unwrap();
    rt.block_on(store.pool().close());
    let options = ReplayOptions::bundled(&repo().join("examples"), &repo().join("rules"));
    let mut s = setup(&options).unwrap();
    s.inventory = Some(Batch::default());
    let mut summary = run(&mut s, &options.inputs, None, &mut |_| {}, &mut |_| {}).unwrap();
    let batch = summary.inventory.take().unwrap();
    sink(batch).unwrap();
    let refused = (0..50).any(|_| {
        std::thread::sleep(std::time::Duration::from_millis(100));
        sink(Batch::default()).is_err()
    });
    assert!(
        refused,
        "the sink still takes batches after the writer failed"
    );
    drop(sink);
    let e = writer.finish().unwrap_err();
    assert!(e.contains("closed"), "{e}");
}

/// The fence of the service's inventory writes: a new owner's claim makes an older owner's
/// later write fail whole (no counts, no positions), and positions come back with the claim.
async fn fenced_writes(url: String) {
    let store = Store::open(&url).await.unwrap();
    let first = store.claim("g", 0, "a").await.unwrap();
    assert!(first.counted.is_empty());
    let options = ReplayOptions::bundled(&repo().join("examples"), &repo().join("rules"));
    let mut s = setup(&options).unwrap();
    s.inventory = Some(Batch::default());
    let mut summary = run(&mut s, &options.inputs, None, &mut |_| {}, &mut |_| {}).unwrap();
    let batch = summary.inventory.take().unwrap();
    let at = |offset: i64| vec![(("topic".to_owned(), 2), (offset, 1u32))];
    let fence = |epoch, from: Option<i64>, offset| akwatch::inventory::Fence {
        group: "g".into(),
        part: 0,
        epoch,
        expected: from.map(at).unwrap_or_default(),
        positions: at(offset),
    };
    use akwatch::inventory::Written;
    assert_eq!(
        store
            .apply_fenced(&batch, Some(&fence(first.epoch, None, 10)))
            .await
            .unwrap(),
        Written::Applied
    );
    let calls = store.total_calls().await.unwrap();
    assert!(calls > 0);
    // The same write again (its acknowledgement lost, tried again): not applied twice.
    assert_eq!(
        store
            .apply_fenced(&batch, Some(&fence(first.epoch, None, 10)))
            .await
            .unwrap(),
        Written::AlreadyApplied
    );
    assert_eq!(store.total_calls().await.unwrap(), calls);
    // A write that expects other positions than the store's: refused.
    let err = store
        .apply_fenced(&batch, Some(&fence(first.epoch, Some(7), 12)))
        .await
        .unwrap_err();
    assert!(err.is::<akwatch::inventory::Diverged>(), "{err:#}");
    assert_eq!(store.total_calls().await.unwrap(), calls);
    // Another instance takes the partition over: it sees the positions written.
    let second = store.claim("g", 0, "b").await.unwrap();
    assert!(second.epoch > first.epoch);
    assert_eq!(second.counted.get(&("topic".to_owned(), 2)), Some(&(10, 1)));
    // The old owner's next write is refused whole.
    let err = store
        .apply_fenced(&batch, Some(&fence(first.epoch, Some(10), 20)))
        .await
        .unwrap_err();
    assert!(err.is::<akwatch::inventory::Fenced>(), "{err:#}");
    assert_eq!(store.total_calls().await.unwrap(), calls);
    let third = store.claim("g", 0, "c").await.unwrap();
    assert_eq!(third.counted.get(&("topic".to_owned(), 2)), Some(&(10, 1)));
    // Other partitions are fenced apart.
    let other = store.claim("g", 1, "a").await.unwrap();
    assert!(other.counted.is_empty());
}

#[tokio::test]
async fn a_stale_owner_s_inventory_write_is_refused_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    fenced_writes(dir.path().join("inv.db").display().to_string()).await;
}

#[tokio::test]
async fn a_stale_owner_s_inventory_write_is_refused_on_postgres() {
    if let Some(base) = postgres() {
        fenced_writes(fresh_database(&base).await).await;
    }
}

on_both!(
    the_reports_risks_are_listed_triaged_and_marked_fixed,
    the_reports_risks_are_listed_triaged_and_marked_fixed_on_postgres,
    risks_case
);

/// The bundled reports' configuration risks: all listed (as `akwatch risks` finds them), a key's
/// risks on its page, triage by an operator only and audited; a later report set without one
/// marks it fixed (`present: false`), and a fixed risk that comes back after being handled is
/// pending again.
async fn risks_case(f: Fixture) {
    let options = ReplayOptions::bundled(&repo().join("examples"), &repo().join("rules"));
    let mut s = setup(&options).unwrap();
    let summary = run(&mut s, &options.inputs, None, &mut |_| {}, &mut |_| {}).unwrap();
    let expected: BTreeSet<String> = summary
        .risks
        .iter()
        .map(akwatch::inventory::risk_uid)
        .collect();
    assert!(!expected.is_empty(), "the bundled reports have risks");
    let listed = get(&f.app, "/api/v1/risks?limit=500").await;
    let got: BTreeSet<String> = listed["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(got, expected);
    assert_eq!(listed["total"].as_i64().unwrap() as usize, expected.len());
    // Sorted by severity first.
    let rank = |s: &str| {
        ["info", "low", "medium", "high", "critical"]
            .iter()
            .position(|x| *x == s)
            .unwrap()
    };
    let ranks: Vec<usize> = listed["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| rank(r["severity"].as_str().unwrap()))
        .collect();
    assert!(ranks.windows(2).all(|w| w[0] >= w[1]), "{ranks:?}");
    // A key's risk on the key's page (when a report names keys).
    if let Some(keyed) = summary.risks.iter().find(|r| r.key_id.is_some()) {
        let key = keyed.key_id.as_deref().unwrap();
        let uid = akwatch::inventory::risk_uid(keyed);
        let (status, page) = call(
            &f.app,
            "GET",
            &format!("/api/v1/keys/{key}"),
            Some(VIEWER),
            None,
        )
        .await;
        if status == StatusCode::OK {
            assert!(
                page["risks"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|r| r["id"] == json!(uid)),
                "{page}"
            );
        }
    }
    let first = summary.risks[0].clone();
    let uid = akwatch::inventory::risk_uid(&first);
    let path = format!("/api/v1/risks/{uid}/status");
    let body = json!({"status": "handled", "comment": "MFA enabled"});
    let (status, _) = call(&f.app, "POST", &path, Some(VIEWER), Some(body.clone())).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, v) = call(&f.app, "POST", &path, Some(OPERATOR), Some(body)).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    let one = get(&f.app, &format!("/api/v1/risks/{uid}")).await;
    assert_eq!(one["triage_status"], "handled");
    assert_eq!(one["history"][0]["actor"], "bob (operator)");
    assert_eq!(one["history"][0]["after_value"], "handled");
    assert_eq!(one["history"][0]["comment"], "MFA enabled");
    // The next reports no longer show it: fixed.
    let mut next = Batch::default();
    next.set_risks(summary.risks[1..].to_vec());
    f.store.apply(next).await.unwrap();
    let one = get(&f.app, &format!("/api/v1/risks/{uid}")).await;
    assert_eq!(one["present"], false);
    let open = get(&f.app, "/api/v1/risks?present=1&limit=500").await;
    assert_eq!(open["total"].as_i64().unwrap() as usize, expected.len() - 1);
    // It comes back: pending again.
    let mut again = Batch::default();
    again.set_risks(summary.risks.clone());
    f.store.apply(again).await.unwrap();
    let one = get(&f.app, &format!("/api/v1/risks/{uid}")).await;
    assert_eq!(one["present"], true);
    assert_eq!(one["triage_status"], "pending");
    let overview = get(&f.app, "/api/v1/overview").await;
    assert!(
        !overview["pending_risks_by_severity"]
            .as_array()
            .unwrap()
            .is_empty()
    );
}

on_both!(
    policies_are_edited_through_the_api_checked_like_the_files_and_audited,
    policies_are_edited_through_the_api_checked_like_the_files_and_audited_on_postgres,
    policies_case
);

/// `/policies/{kind}`: an admin creates, replaces and deletes allowlist, IP-hiding and alarm
/// policy entries; each change is in the kind's `api-*.yaml` file (which loads as a policy
/// file), in the audit log with before and after, and refused with the loader's own message
/// when it does not load; viewers and operators may read but not change; the policy files'
/// own entries are listed read-only.
async fn policies_case(f: Fixture) {
    let admin = ADMIN;
    // Read-only entries of the policy files.
    std::fs::write(
        f.policy_dir.join("team.yaml"),
        "allowlist:\n  - id: team-ci\n    ips: [203.0.113.0/24]\n    comment: CI\n",
    )
    .unwrap();
    let listed = get(&f.app, "/api/v1/policies/allowlist").await;
    assert!(
        listed["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["id"] == "team-ci" && e["editable"] == false),
        "{listed}"
    );
    let entry = json!({"id": "deploy-bot", "keys": ["AKIADEPLOYBOT0000001"], "apis": ["iam:*"],
        "rules": ["ak.sensitive_api"], "expires": "2027-06-30", "owner": "platform", "comment": "deploys"});
    for token in [VIEWER, OPERATOR] {
        let (status, _) = call(
            &f.app,
            "POST",
            "/api/v1/policies/allowlist",
            Some(token),
            Some(entry.clone()),
        )
        .await;
        assert_eq!(status, StatusCode::FORBIDDEN);
    }
    let (status, v) = call(
        &f.app,
        "POST",
        "/api/v1/policies/allowlist",
        Some(admin),
        Some(entry.clone()),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{v}");
    let file = f.policy_dir.join("api-allowlist.yaml");
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(text.contains("deploy-bot") && text.contains("AKIADEPLOYBOT0000001"));
    let rules = akwatch::rule::RuleSet::load(&repo().join("rules")).unwrap();
    let loaded = akwatch::policy::Policy::load(&f.policy_dir, &rules).unwrap();
    assert!(loaded.allowlist.iter().any(|a| a.id == "deploy-bot"));
    // Twice: a conflict.
    let (status, _) = call(
        &f.app,
        "POST",
        "/api/v1/policies/allowlist",
        Some(admin),
        Some(entry.clone()),
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT);
    // A bad entry: refused with exactly the message the loader gives for the file.
    let bad = json!({"id": "bad", "ips": ["10.0.0.300"], "rules": ["ak.nope"], "comment": "x"});
    let (status, v) = call(
        &f.app,
        "POST",
        "/api/v1/policies/allowlist",
        Some(admin),
        Some(bad.clone()),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let message = v["error"].as_str().unwrap_or_default().to_owned();
    let probe = tempfile::tempdir().unwrap();
    let mut list = vec![
        (
            "bad".to_owned(),
            json!({"ips": ["10.0.0.300"], "rules": ["ak.nope"], "comment": "x"}),
        ),
        ("deploy-bot".to_owned(), {
            let mut e = entry.clone();
            e.as_object_mut().unwrap().remove("id");
            e
        }),
    ];
    list.sort_by(|a, b| a.0.cmp(&b.0));
    let probe_file = probe.path().join("api-allowlist.yaml");
    std::fs::write(
        &probe_file,
        akwatch::policy_store::render(akwatch::policy_store::Kind::Allowlist, &list),
    )
    .unwrap();
    let expected = akwatch::policy::Policy::load(probe.path(), &rules)
        .unwrap_err()
        .join("\n")
        .replace(
            &probe_file.display().to_string(),
            &file.display().to_string(),
        );
    assert_eq!(message, expected);
    assert!(message.contains("api-allowlist.yaml:") && message.contains("unknown rule"));
    assert!(!std::fs::read_to_string(&file).unwrap().contains("\"bad\""));
    // Replace, then delete; each audited with before and after.
    let mut changed = entry.clone();
    changed["expires"] = json!("2027-01-31");
    let (status, v) = call(
        &f.app,
        "PUT",
        "/api/v1/policies/allowlist/deploy-bot",
        Some(admin),
        Some(changed),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(v["before"]["expires"], "2027-06-30");
    assert_eq!(v["entry"]["expires"], "2027-01-31");
    let (status, _) = call(
        &f.app,
        "DELETE",
        "/api/v1/policies/allowlist/deploy-bot",
        Some(admin),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        !std::fs::read_to_string(&file)
            .unwrap()
            .contains("deploy-bot")
    );
    let (status, _) = call(
        &f.app,
        "DELETE",
        "/api/v1/policies/allowlist/deploy-bot",
        Some(admin),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let audit = get(&f.app, "/api/v1/audit?limit=50").await;
    let actions: Vec<String> = audit["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["action"].as_str().unwrap().to_owned())
        .collect();
    // Newest first, in the order they were made (all within a second or two: the log's
    // order must not fall back to chance within a second).
    let allowlist: Vec<&str> = actions
        .iter()
        .map(String::as_str)
        .filter(|a| a.starts_with("policy.allowlist."))
        .collect();
    assert_eq!(
        allowlist,
        [
            "policy.allowlist.delete",
            "policy.allowlist.update",
            "policy.allowlist.create"
        ],
        "{actions:?}"
    );
    // IP hiding and the alarm policy.
    let (status, v) = call(
        &f.app,
        "PUT",
        "/api/v1/policies/ip-hiding/partner",
        Some(admin),
        Some(json!({"keys": ["AKIAPARTNER000000001"], "comment": "partner's IPs"})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{v}");
    let (status, v) = call(
        &f.app,
        "PUT",
        "/api/v1/policies/alarm/ak.sensitive_api",
        Some(admin),
        Some(json!({"severity": "low", "aggregation": "12h"})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{v}");
    // A key's page names the entries that name it.
    let (status, v) = call(
        &f.app,
        "PUT",
        "/api/v1/policies/allowlist/leaked-key-ci",
        Some(admin),
        Some(json!({"keys": ["AKIASIM0000000000000"], "rules": ["ak.new_source_ip"], "comment": "test"})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{v}");
    let page = get(&f.app, "/api/v1/keys/AKIASIM0000000000000").await;
    assert!(
        page["policies"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["kind"] == "allowlist" && p["id"] == "leaked-key-ci"),
        "{page}"
    );
    // No token: refused before the body is read (a malformed body is not looked at).
    let req = Request::builder()
        .method("POST")
        .uri("/api/v1/policies/allowlist")
        .header("content-type", "application/json")
        .body(Body::from("{not json"))
        .unwrap();
    let res = f.app.clone().oneshot(req).await.unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    let loaded = akwatch::policy::Policy::load(&f.policy_dir, &rules).unwrap();
    assert!(loaded.hidden_keys.contains_key("AKIAPARTNER000000001"));
    assert_eq!(
        loaded.rule("ak.sensitive_api").severity,
        Some(akwatch::rule::Severity::Low)
    );
    let (status, v) = call(
        &f.app,
        "PUT",
        "/api/v1/policies/alarm/ak.nope",
        Some(admin),
        Some(json!({"severity": "low"})),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(v["error"].as_str().unwrap().contains("unknown rule"), "{v}");
    let (status, _) = call(&f.app, "GET", "/api/v1/policies/nope", Some(VIEWER), None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let doc = get(&f.app, "/api/v1/openapi.json").await;
    assert_eq!(doc["openapi"], "3.1.0");
    assert!(doc["paths"]["/policies/{kind}/{id}"]["put"].is_object());
}

/// Permission snapshots of the three clouds (the CLIs' outputs, `tests/fixtures/permissions`):
/// the principals holding administrator rights, wildcards on identity / audit services and
/// credential APIs on any resource are configuration risks naming the policy and statement
/// (read-only policies are not); an alarm on a key whose principal is an administrator is one
/// severity higher and says why; the leaked key's page lists its principal's admin risk.
#[tokio::test]
async fn permission_snapshots_raise_risks_and_alarm_severity() {
    let mut options = ReplayOptions::bundled(&repo().join("examples"), &repo().join("rules"));
    let plain = {
        let mut s = setup(&options).unwrap();
        run(&mut s, &options.inputs, None, &mut |_| {}, &mut |_| {}).unwrap()
    };
    options.permissions = vec![repo().join("tests/fixtures/permissions")];
    let mut s = setup(&options).unwrap();
    s.inventory = Some(Batch::default());
    let mut summary = run(&mut s, &options.inputs, None, &mut |_| {}, &mut |_| {}).unwrap();
    let found: BTreeSet<(String, String)> = summary
        .risks
        .iter()
        .filter(|r| r.risk_id.contains("permissions") || r.risk_id.contains("credential_api"))
        .map(|r| (r.risk_id.to_owned(), r.principal.clone()))
        .collect();
    let want: BTreeSet<(String, String)> = [
        ("ak.admin_permissions", "app-00000"),
        ("ak.admin_permissions", "app-00006"),
        ("ak.audit_wildcard_permissions", "audit-reader"),
        ("ak.audit_wildcard_permissions", "web-00003"),
        ("ak.credential_api_any_resource", "svc-00001"),
        ("ak.credential_api_any_resource", "web-00003"),
    ]
    .iter()
    .map(|(a, b)| ((*a).to_owned(), (*b).to_owned()))
    .collect();
    assert_eq!(found, want);
    let admin = summary
        .risks
        .iter()
        .find(|r| r.risk_id == "ak.admin_permissions" && r.principal == "app-00000")
        .unwrap();
    assert!(
        admin
            .detail
            .contains("AdministratorAccess (group platform-admins)"),
        "{}",
        admin.detail
    );
    assert!(
        admin.detail.contains("\"Resource\":\"*\""),
        "{}",
        admin.detail
    );
    // The leaked key (app-00000, an administrator): its probing alarm one severity higher.
    let leak_use = |alarms: &[akwatch::alarm::Alarm]| {
        alarms
            .iter()
            .find(|a| {
                a.rule_id == "ak.key_probe"
                    && a.access_key_id
                        .as_ref()
                        .is_some_and(|k| k.0 == "AKIASIM0000000000000")
            })
            .cloned()
            .unwrap()
    };
    let (before, after) = (leak_use(&plain.alarms), leak_use(&summary.alarms));
    let before_json = serde_json::to_value(&before).unwrap();
    let after_json = serde_json::to_value(&after).unwrap();
    assert_ne!(before_json["severity"], after_json["severity"]);
    assert_eq!(
        after.severity,
        before.severity.raised(),
        "{before_json}\n{after_json}"
    );
    assert_eq!(
        after_json["evidence"]["facts"]["principal_admin_via"],
        "AdministratorAccess (group platform-admins)"
    );
    // In the store: on the key's page.
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("inv.db").display().to_string())
        .await
        .unwrap();
    store
        .apply(summary.inventory.take().unwrap())
        .await
        .unwrap();
    let app = router(Arc::new(ApiState {
        store,
        tokens: vec![TokenSpec {
            name: "alice".into(),
            role: Role::Viewer,
            sha256: token_hash(VIEWER),
        }],
        policies: None,
    }));
    let page = get(&app, "/api/v1/keys/AKIASIM0000000000000").await;
    assert!(
        page["risks"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["risk_id"] == "ak.admin_permissions"),
        "{page}"
    );
    // A snapshot that is not one: a start-up error naming the file.
    let bad = dir.path().join("bad.json");
    std::fs::write(&bad, "{\"cloud\": \"gcp\"}").unwrap();
    options.permissions = vec![bad.clone()];
    let errors = setup(&options).err().unwrap().join("\n");
    assert!(
        errors.contains(&format!("{}: cloud", bad.display())),
        "{errors}"
    );
}

on_both!(
    key_and_account_pages_carry_the_reports_facts_and_advice,
    key_and_account_pages_carry_the_reports_facts_and_advice_on_postgres,
    report_facts_case
);

/// The reports' facts reach the pages: a key's status and its principal's MFA / last login /
/// keys, an account's principals, root key and last console login, and advice drawn from the
/// item's risks and alarms.
async fn report_facts_case(f: Fixture) {
    // Tencent names keys in its report: the probed key is active and its report row is there.
    let key = get(&f.app, "/api/v1/keys/AKIDSIM00000000000000000000000000003").await;
    assert_eq!(key["status"], "active", "{key}");
    assert_eq!(key["report"]["name"], "web-00003", "{key}");
    assert!(key["report"]["report"].as_str().unwrap().ends_with(".csv"));
    // AWS lists slots: the leaked key's principal has an active one.
    let leaked = get(&f.app, "/api/v1/keys/AKIASIM0000000000000").await;
    assert_eq!(leaked["status"], "active", "{leaked}");
    // Its regions and user agents, with counts.
    assert!(
        !leaked["regions"].as_array().unwrap().is_empty(),
        "{leaked}"
    );
    assert!(
        leaked["user_agents"]
            .as_array()
            .unwrap()
            .iter()
            .all(|u| u["calls"].as_i64().unwrap() > 0)
    );
    assert_eq!(leaked["report"]["name"], "app-00000");
    assert!(
        !leaked["advice"].as_array().unwrap().is_empty(),
        "the leaked key's page gives advice: {leaked}"
    );
    let account = get(&f.app, "/api/v1/accounts/aws/210987654321").await;
    let principals = account["principals"].as_array().unwrap();
    assert!(principals.iter().any(|p| p["principal"] == "app-00000"));
    assert!(principals.iter().any(|p| p["root"] == 1));
    // The bundled AWS report's root has an active key (a risk, and the flag).
    assert_eq!(account["root_key_present"], true, "{account}");
    assert!(account["last_console_login"].as_i64().unwrap() > 0);
    assert!(!account["advice"].as_array().unwrap().is_empty());
}

on_both!(
    a_key_s_ips_are_capped_keeping_the_most_called,
    a_key_s_ips_are_capped_keeping_the_most_called_on_postgres,
    cap_case
);

/// One key called from 1,500 addresses: the store keeps 1,000 of them, the most called among
/// them, and the key's total calls are unchanged.
async fn cap_case(f: Fixture) {
    let mut batch = Batch::default();
    let mut e = f
        .events
        .iter()
        .find(|e| e.access_key_id.is_some() && e.source_ip.is_some())
        .unwrap()
        .clone();
    e.access_key_id = Some(akwatch::event::AccessKeyId("AKIAFLOODFLOODFLOOD1".into()));
    let enr = akwatch::enrich::Enrichment::default();
    for i in 0..1500u32 {
        e.source_ip = Some(std::net::IpAddr::from([
            10,
            9,
            (i / 256) as u8,
            (i % 256) as u8,
        ]));
        let times = if i == 1499 { 5 } else { 1 };
        for _ in 0..times {
            batch.observe(&e, &enr, false);
        }
    }
    f.store.apply(batch).await.unwrap();
    let removed = f.store.cap_per_key(1000).await.unwrap();
    assert_eq!(removed, 500);
    let key = get(&f.app, "/api/v1/keys/AKIAFLOODFLOODFLOOD1").await;
    assert_eq!(key["calls"], 1504);
    let ips = key["ips"].as_array().unwrap();
    // (The page shows the top 500.)
    assert_eq!(ips[0]["ip"], "10.9.5.219");
    let n: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM inv_key_ips WHERE key_id = 'AKIAFLOODFLOODFLOOD1'",
    )
    .fetch_one(f.store.pool())
    .await
    .unwrap();
    assert_eq!(n, 1000);
    // Other keys keep theirs.
    assert_eq!(f.store.cap_per_key(1000).await.unwrap(), 0);
}

on_both!(
    the_ip_list_filters_by_class_country_alarms_and_text,
    the_ip_list_filters_by_class_country_alarms_and_text_on_postgres,
    ip_filters
);

async fn ip_filters(f: Fixture) {
    let all = get(&f.app, "/api/v1/ips?limit=500").await;
    let total = all["total"].as_i64().unwrap();
    let items = all["items"].as_array().unwrap();
    assert!(total > 0 && total <= 500, "{total}");
    let classes = |i: &Value| -> Vec<String> {
        serde_json::from_str(i["classes"].as_str().unwrap()).unwrap()
    };
    // By class: exactly the IPs holding it.
    for class in ["public", "hosting", "tor", "own"] {
        let v = get(&f.app, &format!("/api/v1/ips?class={class}&limit=500")).await;
        let want = items
            .iter()
            .filter(|i| classes(i).iter().any(|c| c == class))
            .count();
        assert_eq!(v["total"].as_i64().unwrap() as usize, want, "{class}");
        assert!(
            v["items"]
                .as_array()
                .unwrap()
                .iter()
                .all(|i| classes(i).iter().any(|c| c == class))
        );
    }
    // By country, and paged on the server with the filter kept in the total.
    let country = items
        .iter()
        .map(|i| i["country"].as_str().unwrap())
        .find(|c| !c.is_empty())
        .unwrap();
    let want = items.iter().filter(|i| i["country"] == country).count() as i64;
    let v = get(
        &f.app,
        &format!("/api/v1/ips?country={country}&limit=1&offset=1"),
    )
    .await;
    assert_eq!(v["total"].as_i64().unwrap(), want);
    assert!(
        v["items"]
            .as_array()
            .unwrap()
            .iter()
            .all(|i| i["country"] == country)
    );
    // With alarms and without add up; each one with alarms lists them on its page.
    let with = get(&f.app, "/api/v1/ips?has_alarms=1&limit=500").await;
    let without = get(&f.app, "/api/v1/ips?has_alarms=0&limit=500").await;
    assert_eq!(
        with["total"].as_i64().unwrap() + without["total"].as_i64().unwrap(),
        total
    );
    assert!(with["total"].as_i64().unwrap() > 0);
    for i in with["items"].as_array().unwrap().iter().take(20) {
        assert!(i["alarm_count"].as_i64().unwrap() > 0, "{i}");
        let ip = get(
            &f.app,
            &format!("/api/v1/ips/{}", i["ip"].as_str().unwrap()),
        )
        .await;
        assert!(!ip["alarms"].as_array().unwrap().is_empty(), "{ip}");
    }
    for i in without["items"].as_array().unwrap().iter().take(20) {
        assert_eq!(i["alarm_count"], 0, "{i}");
    }
    // Text: a part of the address, or of the AS organisation in any case; wildcards are text.
    let some = &items[0];
    let ip = some["ip"].as_str().unwrap();
    let part = &ip[..ip.len() - 1];
    let v = get(&f.app, &format!("/api/v1/ips?q={part}&limit=500")).await;
    assert!(v["items"].as_array().unwrap().iter().any(|i| i["ip"] == ip));
    assert!(
        v["items"]
            .as_array()
            .unwrap()
            .iter()
            .all(|i| i["ip"].as_str().unwrap().contains(part)
                || i["as_org"].as_str().unwrap().to_lowercase().contains(part))
    );
    let org = items
        .iter()
        .map(|i| i["as_org"].as_str().unwrap())
        .find(|o| o.len() > 4)
        .unwrap();
    // (Given in capitals: the search ignores case.)
    let part = org[1..org.len() - 1].to_uppercase();
    let v = get(
        &f.app,
        &format!("/api/v1/ips?q={}&limit=500", urlencode(&part)),
    )
    .await;
    let lower = part.to_lowercase();
    let want = items
        .iter()
        .filter(|i| {
            i["ip"].as_str().unwrap().to_lowercase().contains(&lower)
                || i["as_org"]
                    .as_str()
                    .unwrap()
                    .to_lowercase()
                    .contains(&lower)
        })
        .count();
    assert!(want > 0);
    assert_eq!(v["total"].as_i64().unwrap() as usize, want, "{part}");
    assert_eq!(
        get(&f.app, "/api/v1/ips?q=%25").await["total"],
        0,
        "a % is no wildcard"
    );
    assert_eq!(
        get(&f.app, "/api/v1/ips?q=_").await["total"],
        0,
        "an _ is no wildcard"
    );
    // Combined, and refused when malformed.
    let v = get(
        &f.app,
        &format!("/api/v1/ips?class=public&has_alarms=1&country={country}"),
    )
    .await;
    for i in v["items"].as_array().unwrap() {
        assert!(classes(i).contains(&"public".to_owned()) && i["country"] == country);
        assert!(i["alarm_count"].as_i64().unwrap() > 0);
    }
    for bad in ["class=martian", "has_alarms=2"] {
        let (s, v) = call(
            &f.app,
            "GET",
            &format!("/api/v1/ips?{bad}"),
            Some(VIEWER),
            None,
        )
        .await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{bad}: {v}");
    }
}

fn urlencode(s: &str) -> String {
    serde_urlencoded::to_string([("x", s)]).unwrap()[2..].to_owned()
}

/// `replay --store` on shards (`--threads 2` and 3, each shard counting its own keys' events,
/// full batches handed on mid-run) writes the same store as one thread: every inventory table
/// row for row (the risks' sighting times and generation, wall-clock, aside).
#[test]
fn a_sharded_replay_stores_what_one_thread_stores() {
    use sqlx::{Column as _, Row as _};
    let rt = Arc::new(
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap(),
    );
    let dir = tempfile::tempdir().unwrap();
    // Beside the examples, a key whose principal is renamed after 600 of its 800 hourly calls
    // (a row of its own each). 600 rows before the rename fill a batch of 300 rows (one
    // thread), and a shard's batch of 150 or 100 rows at its checks every 256 records (two or
    // three threads): the old name is handed on in a batch before the new one, whatever the
    // examples leave in the batches. The stored principal must be the newest.
    let renamed = dir.path().join("renamed.jsonl");
    let start = chrono::DateTime::parse_from_rfc3339("2025-06-20T00:00:00Z").unwrap();
    let lines: Vec<String> = (0..800)
        .map(|i| {
            let user = if i < 600 { "deploy-old" } else { "deploy-new" };
            let time = (start + chrono::Duration::hours(i))
                .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
            format!(
                r#"{{"eventVersion":"1.08","userIdentity":{{"type":"IAMUser","principalId":"AIDARENAMED","arn":"arn:aws:iam::210987654321:user/{user}","accountId":"210987654321","accessKeyId":"AKIARENAMEDPRINCIPAL","userName":"{user}"}},"eventTime":"{time}","eventSource":"s3.amazonaws.com","eventName":"ListBuckets","awsRegion":"us-east-1","sourceIPAddress":"198.51.100.{}","userAgent":"aws-cli/2.15.0","eventID":"renamed-{i}","eventType":"AwsApiCall","recipientAccountId":"210987654321"}}"#,
                1 + i % 3
            )
        })
        .collect();
    std::fs::write(&renamed, lines.join("\n")).unwrap();
    let extra = [renamed.display().to_string()];
    let dump = |threads: usize| -> Vec<(String, Vec<String>)> {
        let path = dir.path().join(format!("t{threads}.db"));
        let store = rt.block_on(Store::open(path.to_str().unwrap())).unwrap();
        let (mut summary, batches) = replay_through_writer(&store, &rt, threads, 300, &extra);
        assert!(batches > 10);
        rt.block_on(store.apply(summary.inventory.take().unwrap()))
            .unwrap();
        let mut tables = Vec::new();
        for table in [
            "inv_keys",
            "inv_key_ips",
            "inv_key_apis",
            "inv_key_attrs",
            "inv_ips",
            "inv_accounts",
            "inv_calls_hourly",
            "inv_alarms",
            "inv_alarm_ips",
            "inv_principals",
            "inv_risks",
        ] {
            let rows = rt
                .block_on(sqlx::query(&format!("SELECT * FROM {table}")).fetch_all(store.pool()))
                .unwrap();
            let mut text: Vec<String> = rows
                .iter()
                .map(|row| {
                    row.columns()
                        .iter()
                        .filter(|c| {
                            !(table == "inv_risks"
                                && ["first_seen", "last_seen", "seen_gen"].contains(&c.name()))
                        })
                        .map(|c| {
                            let i = c.ordinal();
                            row.try_get::<i64, _>(i)
                                .map(|v| v.to_string())
                                .or_else(|_| row.try_get::<String, _>(i))
                                .unwrap_or_else(|_| "NULL".to_owned())
                        })
                        .collect::<Vec<_>>()
                        .join("|")
                })
                .collect();
            text.sort();
            tables.push((table.to_owned(), text));
        }
        tables
    };
    let one = dump(1);
    let calls = &one.iter().find(|(t, _)| t == "inv_calls_hourly").unwrap().1;
    assert!(calls.len() > 1_000, "{} hourly rows", calls.len());
    let keys = &one.iter().find(|(t, _)| t == "inv_keys").unwrap().1;
    let key = keys
        .iter()
        .find(|row| row.contains("AKIARENAMEDPRINCIPAL"))
        .expect("the renamed key is stored");
    assert!(
        key.contains("|deploy-new|") && !key.contains("deploy-old"),
        "{key}"
    );
    for threads in [2, 3] {
        for ((table, a), (_, b)) in one.iter().zip(dump(threads)) {
            assert_eq!(a.len(), b.len(), "{table}: rows with {threads} threads");
            for (x, y) in a.iter().zip(&b) {
                assert_eq!(x, y, "{table} with {threads} threads");
            }
        }
    }
}

/// `replay` of the bundled examples (and `extra_inputs`) on `threads` threads, inventory on,
/// its full batches (at `rows` rows) going to `store` through a `BatchWriter` while it runs.
/// Returns the summary (its last batch not yet written) and the batches the writer was given.
fn replay_through_writer(
    store: &Store,
    rt: &Arc<tokio::runtime::Runtime>,
    threads: usize,
    rows: usize,
    extra_inputs: &[String],
) -> (akwatch::replay::Summary, usize) {
    use akwatch::inventory::BatchWriter;
    let mut options = ReplayOptions::bundled(&repo().join("examples"), &repo().join("rules"));
    options.inputs.extend_from_slice(extra_inputs);
    options.threads = threads;
    let mut s = setup(&options).unwrap_or_else(|e| panic!("{e:#?}"));
    s.inventory = Some(Batch::default());
    s.inventory_batch_rows = rows;
    let (mut sink, writer) = BatchWriter::spawn(store.clone(), rt.clone()).unwrap();
    let batches = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = batches.clone();
    s.inventory_sink = Some(Box::new(move |batch: Batch| {
        counted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        sink(batch)
    }));
    let summary = run(&mut s, &options.inputs, None, &mut |_| {}, &mut |r| {
        panic!("unexpected reject: {}", r.reject)
    })
    .unwrap();
    assert_eq!(summary.shards, threads);
    s.inventory_sink = None;
    writer.finish().unwrap();
    (summary, batches.load(std::sync::atomic::Ordering::Relaxed))
}
