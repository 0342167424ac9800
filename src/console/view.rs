//! The console's layout and the pieces every page uses: navigation, times, badges, tables with
//! sortable headers, pagers, forms. Everything goes through maud, which escapes every value.

use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};
use maud::{DOCTYPE, Markup, PreEscaped, html};
use serde_json::Value;

use super::Sess;
use crate::api::Role;

/// The sections of the navigation.
pub(crate) const NAV: [(&str, &str); 8] = [
    ("/", "Overview"),
    ("/keys", "AK assets"),
    ("/ips", "Source IPs"),
    ("/accounts", "Accounts"),
    ("/alarms", "Alarms"),
    ("/risks", "Configuration risks"),
    ("/policies", "Policies"),
    ("/audit", "Audit log"),
];

fn head(title: &str) -> Markup {
    html! {
        head {
            meta charset="utf-8";
            meta name="viewport" content="width=device-width, initial-scale=1";
            title { (title) " · akwatch" }
            link rel="icon" href="/static/favicon.svg" type="image/svg+xml";
            link rel="stylesheet" href="/static/app.css";
            script src="/static/app.js" defer {}
        }
    }
}

/// A whole page: the navigation (`active` is its section's path), the user, sign-out, content.
pub(crate) fn page(s: &Sess, title: &str, active: &str, content: Markup) -> Response {
    page_with(StatusCode::OK, s, title, active, content)
}

pub(crate) fn page_with(
    status: StatusCode,
    s: &Sess,
    title: &str,
    active: &str,
    content: Markup,
) -> Response {
    let doc = html! {
        (DOCTYPE)
        html lang="en" {
            (head(title))
            body {
                a.skip href="#main" { "Skip to content" }
                header.top {
                    a.brand href="/" { "akwatch" }
                    nav aria-label="Sections" {
                        ul {
                            @for (href, label) in NAV {
                                li {
                                    @if href == active {
                                        a href=(href) aria-current="page" { (label) }
                                    } @else {
                                        a href=(href) { (label) }
                                    }
                                }
                            }
                        }
                    }
                    div.user {
                        span { (s.name) " · " (role_name(s.role)) }
                        form method="post" action="/logout" {
                            (csrf(s))
                            button.link type="submit" { "Sign out" }
                        }
                    }
                }
                main #main tabindex="-1" {
                    h1 { (title) }
                    (content)
                }
            }
        }
    };
    (status, Html(doc.into_string())).into_response()
}

pub(crate) fn role_name(r: Role) -> &'static str {
    match r {
        Role::Viewer => "viewer",
        Role::Operator => "operator",
        Role::Admin => "admin",
    }
}

/// The sign-in page.
pub(crate) fn login(next: &str, csrf: &str, error: Option<&str>) -> Html<String> {
    let doc = html! {
        (DOCTYPE)
        html lang="en" {
            (head("Sign in"))
            body.login {
                main #main {
                    h1 { "akwatch" }
                    p { "Access-key anomaly detection for AWS, Alibaba Cloud and Tencent Cloud." }
                    @if let Some(e) = error { p.error role="alert" { (e) } }
                    form method="post" action="/login" {
                        input type="hidden" name="next" value=(next);
                        input type="hidden" name="csrf" value=(csrf);
                        label for="token" { "API token" }
                        input #token type="password" name="token" autocomplete="current-password" required autofocus;
                        button type="submit" { "Sign in" }
                    }
                    p.hint { "Use a token of the API's tokens file, or the one-time token akwatch printed when it started." }
                }
            }
        }
    };
    Html(doc.into_string())
}

/// The hidden CSRF field every form carries.
pub(crate) fn csrf(s: &Sess) -> Markup {
    html! { input type="hidden" name="csrf" value=(s.csrf); }
}

/// A time (Unix seconds): UTC in the markup and on hover, the viewer's zone once the script ran.
pub(crate) fn time(t: i64) -> Markup {
    match chrono::DateTime::from_timestamp(t, 0) {
        Some(d) if t > 0 => {
            let utc = d.format("%Y-%m-%d %H:%M:%S UTC").to_string();
            html! { time datetime=(d.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)) title=(utc) { (utc) } }
        }
        _ => html! { span.muted { "—" } },
    }
}

/// A time given as RFC 3339 text (alarm fields).
pub(crate) fn time_text(v: &Value) -> Markup {
    match v
        .as_str()
        .and_then(|s| chrono::DateTime::parse_from_rfc3339(s).ok())
    {
        Some(d) => time(d.timestamp()),
        None => html! { span.muted { "—" } },
    }
}

/// A time given as text that may hold none (a credential report's `N/A` or
/// `no_information`): a `<time>` when it is RFC 3339, the text as given otherwise.
pub(crate) fn time_or_text(v: &Value) -> Markup {
    let s = text(v);
    match chrono::DateTime::parse_from_rfc3339(s.trim()) {
        Ok(d) => time(d.timestamp()),
        Err(_) if s.is_empty() => html! { span.muted { "—" } },
        Err(_) => html! { (s) },
    }
}

/// A policy entry's `expires` (a date ends at 23:59:59 UTC, as the policy loader reads it): a
/// `<time>`, or the text as given when the loader would refuse it.
pub(crate) fn expiry(v: &Value) -> Markup {
    let s = text(v);
    match crate::policy::parse_expiry(s.trim()) {
        Some(t) => time(t.timestamp()),
        None if s.is_empty() => html! { span.muted { "never" } },
        None => html! { (s) },
    }
}

pub(crate) fn severity(s: &str) -> Markup {
    let class = match s {
        "critical" => "sev sev-critical",
        "high" => "sev sev-high",
        "medium" => "sev sev-medium",
        "low" => "sev sev-low",
        _ => "sev sev-info",
    };
    html! { span class=(class) { (s) } }
}

pub(crate) fn status(s: &str) -> Markup {
    html! { span class={ "status status-" (s.replace(|c: char| !c.is_ascii_alphanumeric(), "-")) } { (s.replace('_', " ")) } }
}

/// A JSON value's text (strings bare, others as JSON).
pub(crate) fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

pub(crate) fn int(v: &Value) -> i64 {
    v.as_i64().unwrap_or_default()
}

/// A link-safe path segment.
pub(crate) fn seg(s: &str) -> String {
    if s.bytes().all(|b| b == b'.') {
        // `.` and `..` would be resolved away by the browser.
        return "%2E".repeat(s.len());
    }
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~:@".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A URL query from pairs (empty values left out).
pub(crate) fn query(pairs: &[(&str, &str)]) -> String {
    let kept: Vec<(&str, &str)> = pairs
        .iter()
        .filter(|(_, v)| !v.is_empty())
        .copied()
        .collect();
    serde_urlencoded::to_string(kept).unwrap_or_default()
}

/// The list state of a page: its filters (by name) and sort, offset and limit.
pub(crate) struct ListState<'a> {
    pub path: &'a str,
    /// The column the API sorts by when none is asked for.
    pub default_sort: &'a str,
    pub params: Vec<(String, String)>,
}

impl ListState<'_> {
    pub fn get(&self, name: &str) -> &str {
        self.params
            .iter()
            .find(|(k, _)| k == name)
            .map_or("", |(_, v)| v.as_str())
    }

    /// This list's URL with `changes` applied (an empty value removes the parameter).
    pub fn with(&self, changes: &[(&str, &str)]) -> String {
        let mut p: Vec<(String, String)> = self
            .params
            .iter()
            .filter(|(k, _)| !changes.iter().any(|(c, _)| c == k))
            .cloned()
            .collect();
        for (k, v) in changes {
            if !v.is_empty() {
                p.push(((*k).to_owned(), (*v).to_owned()));
            }
        }
        let pairs: Vec<(&str, &str)> = p.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let q = query(&pairs);
        if q.is_empty() {
            self.path.to_owned()
        } else {
            format!("{}?{q}", self.path)
        }
    }

    /// A column header that sorts the list by `col` (descending first).
    pub fn sort_header(&self, col: &str, label: &str) -> Markup {
        let current =
            self.get("sort") == col || (self.get("sort").is_empty() && col == self.default_sort);
        let desc = self.get("order") != "asc";
        let next = if current && desc { "asc" } else { "desc" };
        let aria = match (current, desc) {
            (true, true) => "descending",
            (true, false) => "ascending",
            _ => "none",
        };
        html! {
            th aria-sort=(aria) scope="col" {
                a href=(self.with(&[("sort", col), ("order", next), ("offset", "")])) {
                    (label)
                    @if current { (if desc { " ▾" } else { " ▴" }) }
                }
            }
        }
    }

    /// Previous / next links and the position in the list.
    pub fn pager(&self, total: i64, limit: i64, offset: i64) -> Markup {
        let end = (offset.saturating_add(limit)).min(total);
        let prev = offset.saturating_sub(limit).max(0).to_string();
        let next = offset.saturating_add(limit).to_string();
        html! {
            nav.pager aria-label="Pages" {
                span {
                    @if total == 0 { "none" }
                    @else if offset >= total { "none here — " a href=(self.with(&[("offset", "")])) { "the first page" } " (" (total) " in all)" }
                    @else { (offset + 1) "–" (end) " of " (total) }
                }
                @if offset > 0 { a href=(self.with(&[("offset", prev.as_str())])) rel="prev" { "← Previous" } }
                @if end < total { a href=(self.with(&[("offset", next.as_str())])) rel="next" { "Next →" } }
            }
        }
    }
}

/// A `<select>` of a filter form, with its label.
pub(crate) fn select(name: &str, label: &str, current: &str, options: &[(&str, &str)]) -> Markup {
    let id = format!("f-{name}");
    html! {
        div.field {
            label for=(id) { (label) }
            select id=(id) name=(name) {
                @for (value, text) in options {
                    @if *value == current {
                        option value=(value) selected { (text) }
                    } @else {
                        option value=(value) { (text) }
                    }
                }
            }
        }
    }
}

/// A text input with its label.
pub(crate) fn input(name: &str, label: &str, value: &str, hint: &str) -> Markup {
    let id = format!("f-{name}");
    html! {
        div.field {
            label for=(id) { (label) }
            input id=(id) type="text" name=(name) value=(value) placeholder=(hint);
        }
    }
}

/// A message box (`kind`: ok, error, info).
pub(crate) fn flash(kind: &str, text: &str) -> Markup {
    let role = if kind == "error" { "alert" } else { "status" };
    html! { div class={ "flash flash-" (kind) } role=(role) { (text) } }
}

/// The text of a list's empty state.
pub(crate) fn empty(text: &str) -> Markup {
    html! { p.empty { (text) } }
}

/// An SVG chart from the server, as a figure with a caption and the numbers as a table.
pub(crate) fn figure(caption: &str, svg: String, rows: &[(String, i64)]) -> Markup {
    html! {
        figure.chart {
            div.svg role="img" aria-label=(caption) { (PreEscaped(svg)) }
            figcaption { (caption) }
            details {
                summary { "The numbers" }
                table {
                    thead { tr { th scope="col" { "Day (UTC)" } th scope="col" { "Count" } } }
                    tbody { @for (d, n) in rows { tr { td { (d) } td.num { (n) } } } }
                }
            }
        }
    }
}
