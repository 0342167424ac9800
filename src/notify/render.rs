//! Each sink's request for an alarm (URL, headers, body, signature) and how its answer is read.
//! Pure functions of the alarm, the secret and the time, so tests check them byte for byte.
//!
//! Formats and signing, as the vendors document them (sources in ARCHITECTURE.md):
//! - webhook: the alarm's JSON; `X-Akwatch-Timestamp: <unix s>` and
//!   `X-Akwatch-Signature: sha256=<hex HMAC-SHA256(secret, "<ts>.<body>")>`.
//! - Slack incoming webhook: `{"text": fallback, "blocks": [...]}` (header, mrkdwn sections,
//!   fields, context); answers `ok` with 200.
//! - DingTalk custom robot: `{"msgtype":"markdown","markdown":{"title","text"}}`, and
//!   `&timestamp=<ms>&sign=<urlencode(base64(HMAC-SHA256(secret, "<ms>\n<secret>")))>` on the
//!   URL; answers `{"errcode":0,"errmsg":"ok"}`.
//! - WeCom group robot: `{"msgtype":"markdown","markdown":{"content"}}` (at most 4,096 bytes);
//!   answers `{"errcode":0,...}`.
//! - Feishu custom bot: `{"timestamp":"<s>","sign":base64(HMAC-SHA256(key="<s>\n<secret>",
//!   msg="")),"msg_type":"interactive","card":{...}}`; answers `{"code":0,...}`.

use std::time::Duration;

use base64::Engine as _;
use hmac::{KeyInit, Mac};
use serde_json::{Value, json};
use sha2::Sha256;

use super::config::SinkKind;
use crate::alarm::Alarm;

type HmacSha256 = hmac::Hmac<Sha256>;

/// HMAC-SHA256 of `msg` under `key`.
pub fn hmac_sha256(key: &[u8], msg: &[u8]) -> Vec<u8> {
    // HMAC takes a key of any length: `new_from_slice` cannot fail for it.
    let mut mac = match HmacSha256::new_from_slice(key) {
        Ok(m) => m,
        Err(_) => return Vec::new(),
    };
    mac.update(msg);
    mac.finalize().into_bytes().to_vec()
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// The generic webhook's signature header value for `body` at `ts` (Unix seconds).
pub fn webhook_signature(secret: &str, ts: i64, body: &[u8]) -> String {
    let mut msg = format!("{ts}.").into_bytes();
    msg.extend_from_slice(body);
    format!("sha256={}", hex(&hmac_sha256(secret.as_bytes(), &msg)))
}

/// DingTalk's `sign` before URL encoding, for `ts_ms`.
pub fn dingtalk_sign(secret: &str, ts_ms: i64) -> String {
    b64(&hmac_sha256(
        secret.as_bytes(),
        format!("{ts_ms}\n{secret}").as_bytes(),
    ))
}

/// Feishu's `sign` for `ts` (Unix seconds): the string to sign is the key, the message empty.
pub fn feishu_sign(secret: &str, ts: i64) -> String {
    b64(&hmac_sha256(format!("{ts}\n{secret}").as_bytes(), b""))
}

/// One HTTP request.
#[derive(Debug, Clone)]
pub struct Request {
    pub url: reqwest::Url,
    pub headers: Vec<(&'static str, String)>,
    pub body: Vec<u8>,
}

/// The longest value quoted in a chat message (input-derived strings are cut).
const MAX_FIELD: usize = 256;

fn cut(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    format!("{}…", crate::alarm::truncate_on_char(s, max))
}

/// What a chat message says about an alarm, as (label, value) lines.
fn facts(a: &Alarm) -> Vec<(&'static str, String)> {
    let mut out = vec![
        ("Severity", a.severity.as_str().to_owned()),
        ("Rule", a.rule_id.clone()),
    ];
    if let Some(k) = &a.access_key_id {
        out.push(("Access key", cut(&k.0, MAX_FIELD)));
    }
    let mut account = a.cloud.as_str().to_owned();
    if let Some(acc) = &a.account_id {
        account.push_str(&format!(" {}", cut(&acc.0, MAX_FIELD)));
    }
    out.push(("Account", account));
    if let Some(p) = a.principal.name.as_deref().or(a.principal.arn.as_deref()) {
        out.push(("Principal", cut(p, MAX_FIELD)));
    }
    if !a.source_ips.is_empty() {
        let ips: Vec<&str> = a.source_ips.iter().take(5).map(|s| s.ip.as_str()).collect();
        out.push(("Source IPs", cut(&ips.join(", "), MAX_FIELD)));
    }
    out.push((
        "Seen",
        format!(
            "{} calls, {} to {}",
            a.count,
            a.first_seen.format("%Y-%m-%d %H:%M:%SZ"),
            a.last_seen.format("%Y-%m-%d %H:%M:%SZ")
        ),
    ));
    out.push(("Alarm id", a.alarm_id.clone()));
    out
}

fn title(a: &Alarm) -> String {
    format!(
        "[{}] {}",
        a.severity.as_str().to_ascii_uppercase(),
        cut(&a.rule_name, MAX_FIELD)
    )
}

fn summary(a: &Alarm) -> String {
    let s = if a.summary.is_empty() {
        &a.description
    } else {
        &a.summary
    };
    cut(s, 1024)
}

/// Markdown as DingTalk, WeCom and Feishu's `lark_md` read it (`**bold**`, `- ` lists).
fn markdown(a: &Alarm, heading: bool) -> String {
    let mut s = String::new();
    if heading {
        s.push_str(&format!("### {}\n\n", title(a)));
    }
    s.push_str(&summary(a));
    s.push_str("\n\n");
    for (k, v) in facts(a) {
        s.push_str(&format!("- **{k}:** {v}\n"));
    }
    if !a.advice.is_empty() {
        s.push_str(&format!("\n**Advice:** {}\n", cut(&a.advice, 1024)));
    }
    s
}

/// Slack's mrkdwn needs `&`, `<` and `>` escaped.
fn slack_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

fn slack_body(a: &Alarm) -> Value {
    let fields: Vec<Value> = facts(a)
        .into_iter()
        .filter(|(k, _)| *k != "Alarm id")
        .take(10) // Slack: at most 10 fields per section
        .map(|(k, v)| json!({"type": "mrkdwn", "text": format!("*{k}*\n{}", slack_escape(&v))}))
        .collect();
    let mut blocks = vec![
        // A header is plain text of at most 150 characters.
        json!({"type": "header", "text": {"type": "plain_text", "text": cut(&title(a), 140), "emoji": false}}),
        json!({"type": "section", "text": {"type": "mrkdwn", "text": slack_escape(&summary(a))}}),
        json!({"type": "section", "fields": fields}),
    ];
    if !a.advice.is_empty() {
        blocks.push(json!({"type": "section", "text": {"type": "mrkdwn",
            "text": format!("*Advice:* {}", slack_escape(&cut(&a.advice, 1024)))}}));
    }
    blocks.push(json!({"type": "context", "elements": [
        {"type": "mrkdwn", "text": format!("akwatch alarm `{}`", a.alarm_id)}]}));
    json!({"text": format!("{}: {}", title(a), summary(a)), "blocks": blocks})
}

fn feishu_card(a: &Alarm) -> Value {
    let template = match a.severity {
        crate::rule::Severity::Critical => "red",
        crate::rule::Severity::High => "orange",
        crate::rule::Severity::Medium => "yellow",
        _ => "blue",
    };
    json!({
        "config": {"wide_screen_mode": true},
        "header": {"template": template, "title": {"tag": "plain_text", "content": title(a)}},
        "elements": [{"tag": "div", "text": {"tag": "lark_md", "content": markdown(a, false)}}],
    })
}

/// WeCom's markdown content limit, in bytes.
const WECOM_MAX: usize = 4096;

/// The request for `alarm` to a sink of `kind` at `url`, signed with `secret` at `now_ms`
/// (Unix milliseconds).
pub fn request(
    kind: SinkKind,
    url: &reqwest::Url,
    secret: Option<&str>,
    alarm: &Alarm,
    now_ms: i64,
) -> Request {
    let now_s = now_ms.div_euclid(1000);
    let mut url = url.clone();
    let mut headers = vec![("content-type", "application/json".to_owned())];
    let body = match kind {
        SinkKind::Webhook => {
            let body = serde_json::to_vec(alarm).unwrap_or_default();
            headers.push(("x-akwatch-alarm-id", alarm.alarm_id.clone()));
            if let Some(secret) = secret {
                headers.push(("x-akwatch-timestamp", now_s.to_string()));
                headers.push((
                    "x-akwatch-signature",
                    webhook_signature(secret, now_s, &body),
                ));
            }
            return Request { url, headers, body };
        }
        SinkKind::Slack => slack_body(alarm),
        SinkKind::Dingtalk => {
            if let Some(secret) = secret {
                url.query_pairs_mut()
                    .append_pair("timestamp", &now_ms.to_string())
                    .append_pair("sign", &dingtalk_sign(secret, now_ms));
            }
            json!({"msgtype": "markdown", "markdown": {"title": title(alarm), "text": markdown(alarm, true)}})
        }
        SinkKind::Wecom => {
            let text = markdown(alarm, true);
            let content = if text.len() > WECOM_MAX {
                cut(&text, WECOM_MAX - 4)
            } else {
                text
            };
            json!({"msgtype": "markdown", "markdown": {"content": content}})
        }
        SinkKind::Feishu => {
            let mut body = json!({"msg_type": "interactive", "card": feishu_card(alarm)});
            if let Some(secret) = secret {
                body["timestamp"] = Value::String(now_s.to_string());
                body["sign"] = Value::String(feishu_sign(secret, now_s));
            }
            body
        }
    };
    Request {
        url,
        headers,
        body: serde_json::to_vec(&body).unwrap_or_default(),
    }
}

/// How one attempt ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Sent,
    /// Worth another attempt (5xx, 429, a timeout, no connection),
    /// after at least `after` when the server said so (`Retry-After`).
    Retry {
        reason: &'static str,
        after: Option<Duration>,
        detail: String,
    },
    /// Not worth another (other 4xx, a chat tool's refusal: DingTalk throttles a robot for
    /// 10 minutes past 20 messages a minute, so a quick retry would not help either).
    Fail {
        reason: &'static str,
        detail: String,
    },
}

/// Reads an answer: status first, then for the chat tools the JSON body's error code
/// (`errcode` for DingTalk and WeCom, `code` — or the older `StatusCode` — for Feishu).
pub fn outcome(kind: SinkKind, status: u16, retry_after: Option<&str>, body: &[u8]) -> Outcome {
    let text = || String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned();
    if status == 429 || (500..=599).contains(&status) {
        let after = retry_after
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(|s| Duration::from_secs(s.min(60)));
        return Outcome::Retry {
            reason: "status",
            after,
            detail: format!("HTTP {status}: {}", text()),
        };
    }
    if !(200..=299).contains(&status) {
        return Outcome::Fail {
            reason: "status",
            detail: format!("HTTP {status}: {}", text()),
        };
    }
    let field = match kind {
        SinkKind::Dingtalk | SinkKind::Wecom => &["errcode"][..],
        SinkKind::Feishu => &["code", "StatusCode"][..],
        SinkKind::Webhook | SinkKind::Slack => return Outcome::Sent,
    };
    let Ok(v) = serde_json::from_slice::<Value>(body) else {
        return Outcome::Fail {
            reason: "rejected",
            detail: format!("not a JSON answer: {}", text()),
        };
    };
    let code = field.iter().find_map(|f| v.get(*f)).and_then(Value::as_i64);
    match code {
        Some(0) => Outcome::Sent,
        Some(c) => Outcome::Fail {
            reason: "rejected",
            detail: format!("code {c}: {}", text()),
        },
        None => Outcome::Fail {
            reason: "rejected",
            detail: format!("no {} in the answer: {}", field[0], text()),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_match_the_vendors_published_algorithms() {
        // RFC 4231 test case 2: key "Jefe", "what do ya want for nothing?".
        assert_eq!(
            hex(&hmac_sha256(b"Jefe", b"what do ya want for nothing?")),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        // The webhook signs "<ts>.<body>".
        let expected = hex(&hmac_sha256(b"s", b"10.{}"));
        assert_eq!(
            webhook_signature("s", 10, b"{}"),
            format!("sha256={expected}")
        );
        // DingTalk: key = secret, message = "<ms>\n<secret>"; Feishu: key = "<s>\n<secret>",
        // message empty.
        assert_eq!(
            dingtalk_sign("SEC1", 5),
            b64(&hmac_sha256(b"SEC1", b"5\nSEC1"))
        );
        assert_eq!(feishu_sign("k", 7), b64(&hmac_sha256(b"7\nk", b"")));
    }

    #[test]
    fn answers_are_read_per_vendor() {
        use SinkKind::*;
        assert_eq!(outcome(Slack, 200, None, b"ok"), Outcome::Sent);
        assert!(
            matches!(outcome(Webhook, 503, Some("2"), b""), Outcome::Retry { after: Some(d), .. } if d == Duration::from_secs(2))
        );
        assert!(matches!(
            outcome(Webhook, 429, None, b""),
            Outcome::Retry { .. }
        ));
        assert!(matches!(
            outcome(Webhook, 404, None, b""),
            Outcome::Fail {
                reason: "status",
                ..
            }
        ));
        assert_eq!(
            outcome(Dingtalk, 200, None, br#"{"errcode":0,"errmsg":"ok"}"#),
            Outcome::Sent
        );
        assert!(matches!(
            outcome(
                Dingtalk,
                200,
                None,
                br#"{"errcode":310000,"errmsg":"sign not match"}"#
            ),
            Outcome::Fail {
                reason: "rejected",
                ..
            }
        ));
        assert!(matches!(
            outcome(Wecom, 200, None, br#"{"errcode":93000}"#),
            Outcome::Fail {
                reason: "rejected",
                ..
            }
        ));
        assert_eq!(
            outcome(
                Feishu,
                200,
                None,
                br#"{"code":0,"msg":"success","data":{}}"#
            ),
            Outcome::Sent
        );
        assert_eq!(
            outcome(Feishu, 200, None, br#"{"StatusCode":0}"#),
            Outcome::Sent
        );
        assert!(matches!(
            outcome(
                Feishu,
                200,
                None,
                br#"{"code":19021,"msg":"sign match fail"}"#
            ),
            Outcome::Fail { .. }
        ));
        assert!(matches!(
            outcome(Feishu, 200, None, b"<html>"),
            Outcome::Fail {
                reason: "rejected",
                ..
            }
        ));
    }
}
