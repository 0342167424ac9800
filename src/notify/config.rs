//! The `notify:` section of the service configuration: a list of sinks, each validated with
//! every problem reported at once as `file:line: notify[i].field: message`.

use std::time::Duration;

use serde::Deserialize;

use crate::rule::Severity;

/// One sink as written in the configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSink {
    /// `webhook`, `slack`, `dingtalk`, `wecom` or `feishu`.
    kind: String,
    /// The `sink` label of its metrics (default `<kind>-<index>`).
    #[serde(default)]
    name: Option<String>,
    url: String,
    /// The signing secret (`${ENV}` taken from the environment): required for `webhook`,
    /// `dingtalk` and `feishu`; `slack` and `wecom` do not sign (their URL is the secret).
    #[serde(default)]
    secret: Option<String>,
    /// The lowest severity notified (default `info`: all).
    #[serde(default)]
    min_severity: Option<String>,
    /// Rule id globs (`ak.*`); default: every rule.
    #[serde(default)]
    rules: Vec<String>,
    /// Per attempt: `5s`, `500ms`, `1m`, or a number of seconds (default 5 s).
    #[serde(default)]
    timeout: Option<serde_json::Value>,
    /// Attempts per alarm, the first included (default 4).
    #[serde(default)]
    max_attempts: Option<u32>,
    /// Notifications accepted per minute (token bucket of one minute's worth); default per kind.
    #[serde(default)]
    rate_per_minute: Option<u32>,
    /// Alarms waiting for this sink (default 1,000); past it they are dropped and counted.
    #[serde(default)]
    queue: Option<usize>,
}

/// The kinds of sink.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SinkKind {
    /// akwatch's alarm JSON, POSTed, signed with HMAC-SHA256 in `X-Akwatch-Signature`.
    Webhook,
    /// A Slack incoming webhook: `text` and Block Kit `blocks`.
    Slack,
    /// A DingTalk custom robot: markdown, signed in the query string.
    Dingtalk,
    /// A WeCom (WeChat Work) group robot: markdown; the key is in the URL.
    Wecom,
    /// A Feishu / Lark custom bot: an interactive card, signed in the body.
    Feishu,
}

impl SinkKind {
    pub const ALL: [SinkKind; 5] = [
        SinkKind::Webhook,
        SinkKind::Slack,
        SinkKind::Dingtalk,
        SinkKind::Wecom,
        SinkKind::Feishu,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            SinkKind::Webhook => "webhook",
            SinkKind::Slack => "slack",
            SinkKind::Dingtalk => "dingtalk",
            SinkKind::Wecom => "wecom",
            SinkKind::Feishu => "feishu",
        }
    }

    fn signs(self) -> bool {
        matches!(
            self,
            SinkKind::Webhook | SinkKind::Dingtalk | SinkKind::Feishu
        )
    }

    /// The vendors' documented limits: Slack about one message a second, DingTalk and WeCom
    /// robots 20 a minute, Feishu custom bots 100 a minute; a generic webhook 600.
    fn default_rate(self) -> u32 {
        match self {
            SinkKind::Webhook => 600,
            SinkKind::Slack => 60,
            SinkKind::Dingtalk | SinkKind::Wecom => 20,
            SinkKind::Feishu => 100,
        }
    }
}

/// A validated sink.
#[derive(Clone)]
pub struct SinkConfig {
    /// The `sink` label: the configured name or `<kind>-<index>`.
    pub name: String,
    pub kind: SinkKind,
    pub url: reqwest::Url,
    pub secret: Option<String>,
    pub min_severity: Severity,
    /// Rule id globs; empty: every rule.
    pub rules: Vec<String>,
    pub timeout: Duration,
    pub max_attempts: u32,
    pub rate_per_minute: u32,
    pub queue: usize,
}

impl std::fmt::Debug for SinkConfig {
    /// Neither the secret nor the URL (a Slack or WeCom URL is a credential) is printed.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SinkConfig")
            .field("name", &self.name)
            .field("kind", &self.kind)
            .field("host", &self.url.host_str())
            .field("min_severity", &self.min_severity)
            .field("rules", &self.rules)
            .field("timeout", &self.timeout)
            .field("max_attempts", &self.max_attempts)
            .field("rate_per_minute", &self.rate_per_minute)
            .field("queue", &self.queue)
            .finish_non_exhaustive()
    }
}

pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);
pub const DEFAULT_MAX_ATTEMPTS: u32 = 4;
pub const DEFAULT_QUEUE: usize = 1_000;

/// The lines (1-based, inclusive) of each item of the top-level `notify:` block list, and the
/// line of `notify:` itself; so an error points at the sink's own line holding the field.
struct Lines {
    notify: usize,
    items: Vec<(usize, usize)>,
}

impl Lines {
    fn find(text: &str) -> Lines {
        let lines: Vec<&str> = text.lines().collect();
        let Some(start) = lines
            .iter()
            .position(|l| l.trim_end() == "notify:" || l.starts_with("notify:"))
        else {
            return Lines {
                notify: 1,
                items: Vec::new(),
            };
        };
        let mut items: Vec<(usize, usize)> = Vec::new();
        let mut item_indent = None;
        for (i, l) in lines.iter().enumerate().skip(start + 1) {
            let trimmed = l.trim_start();
            if trimmed.is_empty() || trimmed.starts_with('#') {
                continue;
            }
            let indent = l.len() - trimmed.len();
            if indent == 0 && !trimmed.starts_with("- ") {
                break; // the next top-level key
            }
            if trimmed.starts_with("- ") && item_indent.is_none_or(|at| at == indent) {
                item_indent = Some(indent);
                items.push((i + 1, i + 1));
            } else if let Some(last) = items.last_mut() {
                last.1 = i + 1;
            }
        }
        Lines {
            notify: start + 1,
            items,
        }
    }

    /// The line of sink `i` holding `needle` (else the sink's first line, else `notify:`).
    fn of(&self, i: usize, needle: &str, text: &str) -> usize {
        let Some(&(from, to)) = self.items.get(i) else {
            return self.notify;
        };
        text.lines()
            .enumerate()
            .skip(from - 1)
            .take(to + 1 - from)
            .find(|(_, l)| l.contains(needle))
            .map_or(from, |(n, _)| n + 1)
    }
}

fn parse_severity(s: &str) -> Option<Severity> {
    [
        Severity::Info,
        Severity::Low,
        Severity::Medium,
        Severity::High,
        Severity::Critical,
    ]
    .into_iter()
    .find(|v| v.as_str() == s.trim().to_ascii_lowercase())
}

/// `5s`, `500ms`, `2m`, or a number of seconds.
pub fn parse_duration(v: &serde_json::Value) -> Option<Duration> {
    match v {
        serde_json::Value::Number(n) => n
            .as_f64()
            .filter(|s| s.is_finite() && *s >= 0.0)
            .and_then(|s| Duration::try_from_secs_f64(s).ok()),
        serde_json::Value::String(s) => {
            let s = s.trim();
            let (num, unit) = s
                .find(|c: char| !(c.is_ascii_digit() || c == '.'))
                .map_or((s, "s"), |at| (&s[..at], s[at..].trim()));
            let n: f64 = num.parse().ok().filter(|n: &f64| n.is_finite())?;
            let secs = match unit {
                "ms" => n / 1000.0,
                "s" => n,
                "m" => n * 60.0,
                _ => return None,
            };
            Duration::try_from_secs_f64(secs).ok()
        }
        _ => None,
    }
}

fn label_ok(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// Validates the sinks; problems go to `errors` as `file:line: notify[i]...: message`.
pub fn validate(
    raw: &[RawSink],
    file: &str,
    text: &str,
    errors: &mut Vec<String>,
) -> Vec<SinkConfig> {
    let lines = Lines::find(text);
    let mut out = Vec::new();
    let mut names = std::collections::HashSet::new();
    for (i, r) in raw.iter().enumerate() {
        let mut err = |needle: &str, msg: String| {
            errors.push(format!(
                "{file}:{}: notify[{i}].{msg}",
                lines.of(i, needle, text)
            ));
        };
        let kind = SinkKind::ALL
            .into_iter()
            .find(|k| k.as_str() == r.kind.trim());
        if kind.is_none() {
            err(
                "kind:",
                format!(
                    "kind: unknown kind {:?} (webhook, slack, dingtalk, wecom or feishu)",
                    r.kind
                ),
            );
        }
        let name = match &r.name {
            Some(n) => n.clone(),
            None => format!("{}-{i}", r.kind.trim()),
        };
        if r.name.is_some() && !label_ok(&name) {
            err(
                "name:",
                format!("name: {name:?} must be 1 to 64 letters, digits, '-', '_' or '.'"),
            );
        } else if !names.insert(name.clone()) {
            err("name:", format!("name: {name:?} is used by another sink"));
        }
        // `${NAME}` was expanded in the whole configuration already (an unset one is reported
        // there, with its line, and left as it was).
        let unset = |v: &str| v.contains("${");
        let url = if unset(&r.url) {
            None
        } else {
            match reqwest::Url::parse(r.url.trim()) {
                Ok(url)
                    if matches!(url.scheme(), "http" | "https")
                        && url.host_str().is_some_and(|h| !h.is_empty()) =>
                {
                    Some(url)
                }
                Ok(_) => {
                    err("url:", "url: not an http(s) URL with a host".to_owned());
                    None
                }
                Err(e) => {
                    err("url:", format!("url: not a URL: {e}"));
                    None
                }
            }
        };
        let secret = match r.secret.as_deref() {
            None => None,
            Some(s) if s.is_empty() || unset(s) => None,
            Some(s) => Some(s.to_owned()),
        };
        if let Some(k) = kind {
            if k.signs() && secret.is_none() && !matches!(&r.secret, Some(s) if s.contains("${")) {
                err(
                    "kind:",
                    format!("secret: a {} sink needs a secret to sign with", k.as_str()),
                );
            }
            if !k.signs() && r.secret.is_some() {
                err(
                    "secret:",
                    format!(
                        "secret: a {} sink does not sign (its URL is the secret); remove it",
                        k.as_str()
                    ),
                );
            }
        }
        let min_severity = match &r.min_severity {
            None => Severity::Info,
            Some(s) => parse_severity(s).unwrap_or_else(|| {
                err(
                    "min_severity:",
                    format!(
                        "min_severity: unknown severity {s:?} (info, low, medium, high or critical)"
                    ),
                );
                Severity::Info
            }),
        };
        for g in &r.rules {
            if g.trim().is_empty() {
                err("rules:", "rules: an empty rule glob".to_owned());
            }
        }
        let timeout = match &r.timeout {
            None => DEFAULT_TIMEOUT,
            Some(v) => match parse_duration(v) {
                Some(d) if d >= Duration::from_millis(10) && d <= Duration::from_secs(300) => d,
                _ => {
                    err(
                        "timeout:",
                        format!("timeout: {v} is not a duration from 10ms to 300s (5s, 500ms)"),
                    );
                    DEFAULT_TIMEOUT
                }
            },
        };
        let max_attempts = r.max_attempts.unwrap_or(DEFAULT_MAX_ATTEMPTS);
        if !(1..=20).contains(&max_attempts) {
            err(
                "max_attempts:",
                format!("max_attempts: {max_attempts} is out of range (1 to 20)"),
            );
        }
        let rate_per_minute = r
            .rate_per_minute
            .unwrap_or_else(|| kind.map_or(60, SinkKind::default_rate));
        if !(1..=100_000).contains(&rate_per_minute) {
            err(
                "rate_per_minute:",
                format!("rate_per_minute: {rate_per_minute} is out of range (1 to 100000)"),
            );
        }
        let queue = r.queue.unwrap_or(DEFAULT_QUEUE);
        if !(1..=100_000).contains(&queue) {
            err(
                "queue:",
                format!("queue: {queue} is out of range (1 to 100000)"),
            );
        }
        if let (Some(kind), Some(url)) = (kind, url) {
            out.push(SinkConfig {
                name,
                kind,
                url,
                secret,
                min_severity,
                rules: r.rules.iter().map(|g| g.trim().to_owned()).collect(),
                timeout,
                max_attempts,
                rate_per_minute,
                queue,
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        let d = |v: serde_json::Value| parse_duration(&v);
        assert_eq!(d("5s".into()), Some(Duration::from_secs(5)));
        assert_eq!(d("250ms".into()), Some(Duration::from_millis(250)));
        assert_eq!(d("2m".into()), Some(Duration::from_secs(120)));
        assert_eq!(d(serde_json::json!(1.5)), Some(Duration::from_millis(1500)));
        assert_eq!(d("3".into()), Some(Duration::from_secs(3)));
        assert_eq!(d("5 parsecs".into()), None);
        assert_eq!(d(serde_json::json!(-1)), None);
        assert_eq!(d(serde_json::json!(true)), None);
    }

    #[test]
    fn item_lines() {
        let text = "kafka:\n  x: 1\nnotify:\n  # a comment\n  - kind: slack\n    url: u\n\n  - kind: wecom\n    url: v\nrules: r\n";
        let l = Lines::find(text);
        assert_eq!(l.notify, 3);
        assert_eq!(l.items, vec![(5, 6), (8, 9)]);
        assert_eq!(l.of(1, "url:", text), 9);
        assert_eq!(l.of(0, "nothing", text), 5);
        assert_eq!(l.of(7, "url:", text), 3);
    }
}
