//! Notification sinks (`notify:`) against a local HTTP server each test starts on
//! 127.0.0.1:0: the exact request of every kind (signatures verified here, independently),
//! retries, give-ups, de-duplication, filters, the rate limit, a server that never answers, the
//! configuration's errors; and one end-to-end run on the real broker.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use base64::Engine as _;
use hmac::{KeyInit, Mac};

use akwatch::alarm::Alarm;
use akwatch::config::Config;
use akwatch::notify::{Notifier, NotifyMetrics};
use akwatch::telemetry::Metrics;

use crate::repo;

/// One request the server received.
#[derive(Debug, Clone)]
struct Got {
    path: String,
    query: Option<String>,
    headers: HeaderMap,
    body: Bytes,
}

impl Got {
    fn header(&self, k: &str) -> Option<&str> {
        self.headers.get(k).and_then(|v| v.to_str().ok())
    }

    fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap()
    }

    fn query_pairs(&self) -> BTreeMap<String, String> {
        let url = format!("http://x/?{}", self.query.as_deref().unwrap_or(""));
        reqwest::Url::parse(&url)
            .unwrap()
            .query_pairs()
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect()
    }
}

/// What the server answers to the `n`th request (from 0) on a path; `None`: never answers.
type Answer = dyn Fn(&str, usize) -> Option<(u16, String)> + Send + Sync;

struct Server {
    addr: SocketAddr,
    got: Arc<Mutex<Vec<Got>>>,
}

impl Server {
    async fn start(answer: Arc<Answer>) -> Server {
        let got: Arc<Mutex<Vec<Got>>> = Arc::default();
        let log = got.clone();
        let app = axum::Router::new().fallback(
            move |uri: axum::http::Uri, headers: HeaderMap, body: Bytes| {
                let (log, answer) = (log.clone(), answer.clone());
                async move {
                    let path = uri.path().to_owned();
                    let n = {
                        let mut g = log.lock().unwrap();
                        let n = g.iter().filter(|r| r.path == path).count();
                        g.push(Got {
                            path: path.clone(),
                            query: uri.query().map(str::to_owned),
                            headers,
                            body,
                        });
                        n
                    };
                    match answer(&path, n) {
                        Some((status, body)) => (StatusCode::from_u16(status).unwrap(), body),
                        None => std::future::pending().await,
                    }
                }
            },
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        Server { addr, got }
    }

    fn got(&self) -> Vec<Got> {
        self.got.lock().unwrap().clone()
    }

    fn on(&self, path: &str) -> Vec<Got> {
        self.got().into_iter().filter(|g| g.path == path).collect()
    }
}

const BASE: &str = "kafka:\n  brokers: b\n  group_id: g\n  inputs:\n    - topic: in\n  alarm_topic: alarms\n  dlq_topic: dlq\n";

fn env(k: &str) -> Option<String> {
    (k == "HOOK_SECRET").then(|| "s3cret-from-env".to_owned())
}

/// The sinks of a `notify:` section, validated as the service does.
fn sinks(notify: &str) -> Vec<akwatch::notify::SinkConfig> {
    Config::parse("c.yaml", &format!("{BASE}notify:\n{notify}"), &env)
        .unwrap_or_else(|e| panic!("{e:#?}"))
        .notify
}

fn start(notify: &str) -> (Arc<Notifier>, Arc<Metrics>) {
    let metrics = Metrics::new().unwrap();
    let n = Notifier::start(&sinks(notify), NotifyMetrics::of(&metrics)).unwrap();
    (n, metrics)
}

/// A bundled rule's golden alarm.
fn alarm(rule: &str) -> Alarm {
    let text =
        std::fs::read_to_string(repo().join(format!("tests/golden/alarms/{rule}.jsonl"))).unwrap();
    serde_json::from_str(text.lines().next().unwrap()).unwrap()
}

/// `alarm` under another id.
fn with_id(mut a: Alarm, id: &str) -> Alarm {
    a.alarm_id = id.to_owned();
    a
}

fn count(m: &Metrics, name: &str, labels: &[(&str, &str)]) -> u64 {
    let want: BTreeMap<&str, &str> = labels.iter().copied().collect();
    m.registry
        .gather()
        .iter()
        .filter(|f| f.name() == name)
        .flat_map(|f| f.get_metric().iter())
        .filter(|metric| {
            let have: BTreeMap<&str, &str> = metric
                .get_label()
                .iter()
                .map(|l| (l.name(), l.value()))
                .collect();
            have == want
        })
        .map(|metric| metric.get_counter().get_value() as u64)
        .sum()
}

/// Waits (at most 10 s) until `done`.
async fn until(what: &str, done: impl Fn() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "timed out: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn hmac(key: &[u8], msg: &[u8]) -> Vec<u8> {
    let mut m = hmac::Hmac::<sha2::Sha256>::new_from_slice(key).unwrap();
    m.update(msg);
    m.finalize().into_bytes().to_vec()
}

fn b64(b: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(b)
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn now_s() -> i64 {
    chrono::Utc::now().timestamp()
}

fn vendor_ok(path: &str, _n: usize) -> Option<(u16, String)> {
    Some(match path {
        "/ding" | "/wecom" => (200, r#"{"errcode":0,"errmsg":"ok"}"#.to_owned()),
        "/feishu" => (200, r#"{"code":0,"msg":"success","data":{}}"#.to_owned()),
        "/slack" => (200, "ok".to_owned()),
        _ => (204, String::new()),
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_kind_sends_its_vendors_format_signed_as_the_vendor_checks() {
    let server = Server::start(Arc::new(vendor_ok)).await;
    let a = server.addr;
    let (n, m) = start(&format!(
        "  - kind: webhook\n    name: siem\n    url: http://{a}/hook\n    secret: ${{HOOK_SECRET}}\n  - kind: slack\n    url: http://{a}/slack\n  - kind: dingtalk\n    url: http://{a}/ding?access_token=tok1\n    secret: SECding\n  - kind: wecom\n    url: http://{a}/wecom?key=k-1\n  - kind: feishu\n    url: http://{a}/feishu\n    secret: feishu-secret\n"
    ));
    assert_eq!(
        n.sink_names(),
        ["siem", "slack-1", "dingtalk-2", "wecom-3", "feishu-4"]
    );
    let alarm = alarm("ak.backdoor_key");
    n.notify(&alarm);
    until("five requests", || server.got().len() == 5).await;
    let (before, after) = (now_s() - 60, now_s() + 1);

    // Webhook: akwatch's alarm JSON, signed over "<ts>.<body>".
    let hook = &server.on("/hook")[0];
    assert_eq!(hook.header("content-type"), Some("application/json"));
    assert_eq!(
        hook.header("x-akwatch-alarm-id"),
        Some(alarm.alarm_id.as_str())
    );
    let back: Alarm = serde_json::from_slice(&hook.body).unwrap();
    assert_eq!(back, alarm);
    let ts: i64 = hook.header("x-akwatch-timestamp").unwrap().parse().unwrap();
    assert!((before..=after).contains(&ts));
    let mut signed = format!("{ts}.").into_bytes();
    signed.extend_from_slice(&hook.body);
    assert_eq!(
        hook.header("x-akwatch-signature").unwrap(),
        format!("sha256={}", hex(&hmac(b"s3cret-from-env", &signed)))
    );
    assert!(
        hook.header("user-agent").unwrap().starts_with("akwatch/"),
        "{:?}",
        hook.headers
    );

    // Slack: a fallback text and Block Kit blocks.
    let slack = server.on("/slack")[0].json();
    assert!(slack["text"].as_str().unwrap().contains(&alarm.rule_name));
    let blocks = slack["blocks"].as_array().unwrap();
    assert_eq!(blocks[0]["type"], "header");
    assert_eq!(blocks[0]["text"]["type"], "plain_text");
    assert!(blocks[0]["text"]["text"].as_str().unwrap().chars().count() <= 150);
    assert_eq!(
        blocks[0]["text"]["text"],
        "[HIGH] Access key created for another user"
    );
    assert_eq!(blocks[1]["text"]["type"], "mrkdwn");
    assert!(blocks[2]["fields"].as_array().unwrap().len() <= 10);
    assert!(blocks.last().unwrap().to_string().contains(&alarm.alarm_id));
    assert_eq!(server.on("/slack")[0].query, None);

    // DingTalk: the URL's token kept, timestamp (ms) and sign added; markdown.
    let ding = &server.on("/ding")[0];
    let q = ding.query_pairs();
    assert_eq!(q["access_token"], "tok1");
    let ms: i64 = q["timestamp"].parse().unwrap();
    assert!((before * 1000..=after * 1000).contains(&ms));
    assert_eq!(
        q["sign"],
        b64(&hmac(b"SECding", format!("{ms}\nSECding").as_bytes()))
    );
    // URL-encoded in the query (base64's `+`, `/` and `=` never appear raw).
    let raw_sign = ding
        .query
        .as_deref()
        .unwrap()
        .split("sign=")
        .nth(1)
        .unwrap();
    assert!(!raw_sign.contains(['+', '/', '=']), "{raw_sign}");
    let body = ding.json();
    assert_eq!(body["msgtype"], "markdown");
    assert_eq!(
        body["markdown"]["title"],
        "[HIGH] Access key created for another user"
    );
    let text = body["markdown"]["text"].as_str().unwrap();
    assert!(text.contains(&alarm.alarm_id) && text.contains("AKIATESTKEY000000001"));

    // WeCom: markdown content, the key only in the URL, no signature.
    let wecom = &server.on("/wecom")[0];
    assert_eq!(wecom.query.as_deref(), Some("key=k-1"));
    let body = wecom.json();
    assert_eq!(body["msgtype"], "markdown");
    let content = body["markdown"]["content"].as_str().unwrap();
    assert!(content.len() <= 4096 && content.contains(&alarm.alarm_id));
    assert_eq!(body.as_object().unwrap().len(), 2);

    // Feishu: timestamp (s) and sign in the body, the key being "<ts>\n<secret>"; a card.
    let body = server.on("/feishu")[0].json();
    let ts: i64 = body["timestamp"].as_str().unwrap().parse().unwrap();
    assert!((before..=after).contains(&ts));
    assert_eq!(
        body["sign"],
        b64(&hmac(format!("{ts}\nfeishu-secret").as_bytes(), b""))
    );
    assert_eq!(body["msg_type"], "interactive");
    assert_eq!(body["card"]["header"]["title"]["tag"], "plain_text");
    assert_eq!(body["card"]["header"]["template"], "orange");
    assert_eq!(body["card"]["elements"][0]["text"]["tag"], "lark_md");

    for sink in n.sink_names() {
        assert_eq!(
            count(&m, "akwatch_notifications_sent_total", &[("sink", sink)]),
            1,
            "{sink}"
        );
    }
    n.drain(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_500_is_retried_a_400_and_a_chat_refusal_are_not_and_attempts_are_bounded() {
    let server = Server::start(Arc::new(|path: &str, n: usize| {
        Some(match (path, n) {
            ("/flaky", 0) => (500, "oops".to_owned()),
            ("/flaky", _) => (200, String::new()),
            ("/bad", _) => (400, "bad request".to_owned()),
            ("/down", _) => (503, String::new()),
            ("/ding", _) => (
                200,
                r#"{"errcode":310000,"errmsg":"sign not match"}"#.to_owned(),
            ),
            _ => (404, String::new()),
        })
    }))
    .await;
    let a = server.addr;
    let (n, m) = start(&format!(
        "  - {{kind: webhook, name: flaky, url: 'http://{a}/flaky', secret: s, max_attempts: 3}}\n  - {{kind: webhook, name: bad, url: 'http://{a}/bad', secret: s, max_attempts: 3}}\n  - {{kind: webhook, name: down, url: 'http://{a}/down', secret: s, max_attempts: 3}}\n  - {{kind: dingtalk, name: ding, url: 'http://{a}/ding', secret: s, max_attempts: 3}}\n"
    ));
    let alarm = alarm("ak.audit_tamper");
    n.notify(&alarm);
    let dropped = |sink: &str| {
        count(
            &m,
            "akwatch_notifications_dropped_total",
            &[("sink", sink), ("reason", "gave_up")],
        )
    };
    until("outcomes", || {
        count(&m, "akwatch_notifications_sent_total", &[("sink", "flaky")]) == 1
            && dropped("bad") == 1
            && dropped("down") == 1
            && dropped("ding") == 1
    })
    .await;
    // A little longer: nothing more is sent.
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(server.on("/flaky").len(), 2);
    assert_eq!(server.on("/flaky")[0].body, server.on("/flaky")[1].body);
    assert_eq!(server.on("/bad").len(), 1, "no retry on a 400");
    assert_eq!(server.on("/down").len(), 3, "max_attempts");
    assert_eq!(server.on("/ding").len(), 1, "errcode != 0 is a refusal");
    let failures = |sink: &str, reason: &str| {
        count(
            &m,
            "akwatch_notification_failures_total",
            &[("sink", sink), ("reason", reason)],
        )
    };
    assert_eq!(failures("flaky", "status"), 1);
    assert_eq!(failures("bad", "status"), 1);
    assert_eq!(failures("down", "status"), 3);
    assert_eq!(failures("ding", "rejected"), 1);
    assert_eq!(dropped("flaky"), 0);
    for sink in ["bad", "down", "ding"] {
        assert_eq!(
            count(&m, "akwatch_notifications_sent_total", &[("sink", sink)]),
            0
        );
    }
    n.drain(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alarms_are_deduplicated_by_id_filtered_by_severity_and_rule_and_rate_limited() {
    let server = Server::start(Arc::new(vendor_ok)).await;
    let a = server.addr;
    let (n, m) = start(&format!(
        "  - kind: webhook\n    name: all\n    url: http://{a}/all\n    secret: s\n  - kind: webhook\n    name: picky\n    url: http://{a}/picky\n    secret: s\n    min_severity: high\n    rules: ['ak.audit_*', ak.backdoor_key]\n  - kind: webhook\n    name: slow\n    url: http://{a}/slow\n    secret: s\n    rate_per_minute: 2\n"
    ));
    // The same alarm three times (created, then updated twice): one notification per sink.
    let tamper = alarm("ak.audit_tamper"); // critical
    let mut update = tamper.clone();
    update.count += 5;
    n.notify(&tamper);
    n.notify(&update);
    n.notify(&update);
    // Another id for `all` and `slow`; `picky` wants none of them: medium, or not its rules.
    let mut medium = with_id(alarm("ak.backdoor_key"), "akw-medium");
    medium.severity = akwatch::rule::Severity::Medium;
    let other_rule = with_id(alarm("ak.root_key_use"), "akw-root");
    assert!(other_rule.severity >= akwatch::rule::Severity::High);
    let backdoor = alarm("ak.backdoor_key"); // high, a listed rule
    for x in [&medium, &other_rule, &backdoor] {
        n.notify(x);
    }
    until("deliveries", || {
        server.on("/all").len() == 4 && server.on("/picky").len() == 2
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let ids = |path: &str| -> Vec<String> {
        server
            .on(path)
            .iter()
            .map(|g| g.header("x-akwatch-alarm-id").unwrap().to_owned())
            .collect()
    };
    let mut all = ids("/all");
    all.sort();
    let mut want = vec![
        tamper.alarm_id.clone(),
        "akw-medium".into(),
        "akw-root".into(),
        backdoor.alarm_id.clone(),
    ];
    want.sort();
    assert_eq!(all, want);
    assert_eq!(ids("/picky"), [tamper.alarm_id.clone(), backdoor.alarm_id]);
    // Rate: 2 a minute, so the first two distinct alarms only.
    assert_eq!(ids("/slow"), [tamper.alarm_id.clone(), "akw-medium".into()]);
    let dropped = |sink: &str, reason: &str| {
        count(
            &m,
            "akwatch_notifications_dropped_total",
            &[("sink", sink), ("reason", reason)],
        )
    };
    assert_eq!(dropped("all", "duplicate"), 2);
    assert_eq!(dropped("picky", "duplicate"), 2);
    assert_eq!(dropped("slow", "duplicate"), 2);
    assert_eq!(dropped("slow", "rate_limited"), 2);
    assert_eq!(dropped("all", "rate_limited"), 0);
    n.drain(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_never_answers_does_not_hold_the_pipeline() {
    let server = Server::start(Arc::new(|_: &str, _: usize| None)).await;
    let a = server.addr;
    let (n, m) = start(&format!(
        "  - kind: slack\n    name: stuck\n    url: http://{a}/stuck\n    timeout: 200ms\n    max_attempts: 2\n    queue: 4\n    rate_per_minute: 1000\n"
    ));
    let base = alarm("ak.audit_tamper");
    let alarms: Vec<Alarm> = (0..200)
        .map(|i| with_id(base.clone(), &format!("akw-{i}")))
        .collect();
    let t = Instant::now();
    for x in &alarms {
        n.notify(x);
    }
    let took = t.elapsed();
    assert!(took < Duration::from_millis(100), "notify waited: {took:?}");
    let dropped = |reason: &str| {
        count(
            &m,
            "akwatch_notifications_dropped_total",
            &[("sink", "stuck"), ("reason", reason)],
        )
    };
    // One in flight and four queued at most: the rest dropped at once.
    assert!(dropped("queue_full") >= 195, "{}", dropped("queue_full"));
    until("two timed-out attempts", || {
        count(
            &m,
            "akwatch_notification_failures_total",
            &[("sink", "stuck"), ("reason", "timeout")],
        ) >= 2
            && dropped("gave_up") >= 1
    })
    .await;
    // The stop waits no longer than its grace period; what is left is counted.
    let t = Instant::now();
    n.drain(Duration::from_millis(300)).await;
    assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
    let accounted = dropped("queue_full") + dropped("gave_up") + dropped("shutdown");
    assert_eq!(accounted, 200);
    // After the stop nothing more is taken.
    n.notify(&with_id(base, "akw-late"));
    assert_eq!(
        dropped("queue_full") + dropped("gave_up") + dropped("shutdown"),
        200
    );
}

#[test]
fn configuration_errors_name_the_file_line_and_sink() {
    let text = format!(
        "{BASE}notify:\n  - kind: pager\n    url: http://x/\n  - kind: webhook\n    url: not a url\n    secret: s\n  - kind: dingtalk\n    url: https://oapi.dingtalk.com/robot/send?access_token=t\n    min_severity: urgent\n  - kind: feishu\n    url: https://open.feishu.cn/open-apis/bot/v2/hook/x\n    secret: ${{NOPE}}\n  - kind: slack\n    name: chat\n    url: https://hooks.slack.com/services/T/B/X\n    secret: s\n    max_attempts: 0\n  - kind: wecom\n    name: chat\n    url: ftp://qyapi.weixin.qq.com/\n    timeout: 5 parsecs\n    queue: 0\n"
    );
    let all = Config::parse("c.yaml", &text, &env).unwrap_err().join("\n");
    for want in [
        "c.yaml:9: notify[0].kind: unknown kind \"pager\"",
        "c.yaml:12: notify[1].url: not a URL",
        "c.yaml:14: notify[2].secret: a dingtalk sink needs a secret to sign with",
        "c.yaml:16: notify[2].min_severity: unknown severity \"urgent\"",
        "c.yaml:19: notify[3].secret: environment variable NOPE is not set",
        "c.yaml:23: notify[4].secret: a slack sink does not sign",
        "c.yaml:24: notify[4].max_attempts: 0 is out of range",
        "c.yaml:26: notify[5].name: \"chat\" is used by another sink",
        "c.yaml:27: notify[5].url: not an http(s) URL with a host",
        "c.yaml:28: notify[5].timeout:",
        "c.yaml:29: notify[5].queue: 0 is out of range",
    ] {
        assert!(all.contains(want), "{want:?} not in:\n{all}");
    }
    // An unknown field is refused by the parser.
    let e = Config::parse(
        "c.yaml",
        &format!("{BASE}notify:\n  - kind: slack\n    url: http://x/\n    channel: '#sec'\n"),
        &env,
    )
    .unwrap_err();
    assert!(e[0].contains("unknown field `channel`"), "{e:?}");
    // The commented example, uncommented, parses into its five sinks.
    let example = std::fs::read_to_string(repo().join("akwatch.example.yaml")).unwrap();
    let block: String = example
        .lines()
        .skip_while(|l| !l.starts_with("# notify:"))
        .take_while(|l| l.starts_with('#'))
        .map(|l| format!("{}\n", l.strip_prefix("# ").unwrap_or("")))
        .collect();
    let all_env = |k: &str| {
        Some(match k {
            "SLACK_WEBHOOK_URL" => "https://hooks.slack.com/services/T0/B0/X".to_owned(),
            _ => format!("{k}-value"),
        })
    };
    let sinks = Config::parse("example", &format!("{BASE}{block}"), &all_env)
        .unwrap_or_else(|e| panic!("{e:#?}\n{block}"))
        .notify;
    let kinds: Vec<&str> = sinks.iter().map(|s| s.kind.as_str()).collect();
    assert_eq!(kinds, ["webhook", "slack", "dingtalk", "wecom", "feishu"]);
    assert_eq!(sinks[0].name, "siem");
    assert_eq!(sinks[2].rate_per_minute, 20);
    assert!(
        sinks[2]
            .url
            .as_str()
            .contains("access_token=DINGTALK_TOKEN-value")
    );
    // No `notify:`: no sinks.
    assert!(
        Config::parse("c.yaml", BASE, &env)
            .unwrap()
            .notify
            .is_empty()
    );
}

/// `akwatch run` on the real broker with the bundled scenario: a webhook sink receives exactly
/// the alarms that landed on the alarm topic (by id, each once), while a second sink that
/// always answers 500 holds nothing up: every alarm flows and the offsets commit to the end.
#[test]
fn the_service_notifies_exactly_the_alarms_on_the_topic_and_a_failing_sink_holds_nothing() {
    use crate::kafka::{Harness, alarm_keys, all_present, brokers, consume_all, replay_alarm_ids};
    let Some(brokers) = brokers() else { return };
    let rt = tokio::runtime::Runtime::new().unwrap();
    let server = rt.block_on(Server::start(Arc::new(|path: &str, _: usize| {
        Some(match path {
            "/hook" => (200, String::new()),
            _ => (500, "always failing".to_owned()),
        })
    })));
    let a = server.addr;
    let mut h = Harness::new(&brokers, "notify");
    let ops = format!("127.0.0.1:{}", crate::kafka::free_port());
    h.ops = Some(ops.clone());
    h.extra = format!(
        "notify:\n  - kind: webhook\n    name: siem\n    url: http://{a}/hook\n    secret: e2e\n    rate_per_minute: 100000\n    queue: 100000\n  - kind: slack\n    name: broken\n    url: http://{a}/broken\n    max_attempts: 2\n    timeout: 1s\n"
    );
    let expected = replay_alarm_ids();
    h.produce_part(&h.stream(), 0.0, 1.0);
    let sent: usize = h.stream().iter().map(|(_, r)| r.len()).sum();
    let mut child = h.spawn(false);
    let msgs = consume_all(
        &h.brokers,
        &h.topic("alarms"),
        all_present(&expected),
        Duration::from_secs(120),
    );
    let on_topic: BTreeSet<String> = alarm_keys(&msgs).into_iter().collect();
    assert!(expected.is_subset(&on_topic));
    let hooked = || -> Vec<String> {
        server
            .on("/hook")
            .iter()
            .map(|g| {
                let ts = g.header("x-akwatch-timestamp").unwrap();
                let mut signed = format!("{ts}.").into_bytes();
                signed.extend_from_slice(&g.body);
                assert_eq!(
                    g.header("x-akwatch-signature").unwrap(),
                    format!("sha256={}", hex(&hmac(b"e2e", &signed)))
                );
                g.json()["alarm_id"].as_str().unwrap().to_owned()
            })
            .collect()
    };
    let start = Instant::now();
    while hooked().len() < on_topic.len() && start.elapsed() < Duration::from_secs(60) {
        std::thread::sleep(Duration::from_millis(200));
    }
    // A little longer: no extra notification arrives.
    std::thread::sleep(Duration::from_secs(1));
    let got = hooked();
    let got_set: BTreeSet<String> = got.iter().cloned().collect();
    assert_eq!(got.len(), got_set.len(), "each alarm notified once");
    assert_eq!(
        got_set, on_topic,
        "the webhook got exactly the alarm topic's alarms"
    );
    assert!(!server.on("/broken").is_empty());
    let (_, metrics) = crate::kafka::http_get(&ops, "/metrics");
    assert!(
        metrics.contains(&format!(
            "akwatch_notifications_sent_total{{sink=\"siem\"}} {}",
            on_topic.len()
        )),
        "{metrics}"
    );
    assert!(
        metrics.contains("akwatch_notification_failures_total{reason=\"status\",sink=\"broken\"}"),
        "{metrics}"
    );
    Harness::signal(&mut child, "-TERM");
    // The failing sink held no offset: the group committed the end of every input.
    assert_eq!(h.committed_at_end(1), sent);
    drop(rt);
}
