//! The console's pages: each one reads the API as the signed-in user and renders it; each form
//! checks the session's CSRF token and calls the API, then redirects (303) to the page it
//! changed with a fixed message, or shows the API's refusal in place.

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Redirect, Response};
use maud::{Markup, html};
use serde_json::{Value, json};

use super::view::{
    self, ListState, csrf, empty, expiry, flash, int, page, page_with, seg, select, severity,
    status, text, time, time_or_text, time_text,
};
use super::{Console, Failed, Sess, chart, field, require, require_post};
use crate::api::Role;

type Form = axum::Form<Vec<(String, String)>>;
type Params = Query<Vec<(String, String)>>;

const CLOUDS: [(&str, &str); 4] = [
    ("", "Any cloud"),
    ("aws", "AWS"),
    ("alibaba", "Alibaba Cloud"),
    ("tencent", "Tencent Cloud"),
];
const SEVERITIES: [(&str, &str); 6] = [
    ("", "Any severity"),
    ("critical", "Critical"),
    ("high", "High"),
    ("medium", "Medium"),
    ("low", "Low"),
    ("info", "Info"),
];
const TRIAGE: [(&str, &str); 5] = [
    ("", "Any status"),
    ("pending", "Pending"),
    ("handled", "Handled"),
    ("ignored", "Ignored"),
    ("allowlisted", "Allowlisted"),
];

/// The page asked for, path and query (where sign-in returns to).
fn target(uri: &Uri) -> String {
    uri.path_and_query()
        .map_or_else(|| uri.path().to_owned(), |p| p.as_str().to_owned())
}

/// The fixed messages a redirect after a change may show (`?done=`).
fn done_message(code: &str) -> Option<&'static str> {
    Some(match code {
        "handled" => "Marked handled.",
        "ignored" => "Marked ignored.",
        "pending" => "Marked pending again.",
        "triaged" => "The selected alarms are updated.",
        "allowlisted" => {
            "Allowlisted: the entry is saved to the policy files and applies to new events."
        }
        "note" => "Note saved.",
        "saved" => "Policy entry saved; it applies to new events.",
        "deleted" => "Policy entry deleted.",
        "hidden" => "The key's IPs are hidden from now on.",
        _ => return None,
    })
}

fn done(params: &[(String, String)]) -> Markup {
    let code = params
        .iter()
        .find(|(k, _)| k == "done")
        .map_or("", |(_, v)| v.as_str());
    match done_message(code) {
        Some(m) => flash("ok", m),
        None => html! {},
    }
}

/// A page that could not be read from the API.
fn failed(s: &Sess, title: &str, active: &str, f: &Failed) -> Response {
    if f.status == StatusCode::UNAUTHORIZED {
        // The token was removed from the configuration: sign in again.
        return Redirect::to("/login").into_response();
    }
    page_with(
        f.status,
        s,
        title,
        active,
        html! { (flash("error", &f.message)) p { a href=(active) { "Back to the list" } } },
    )
}

/// The API query of a list page: the page's own parameters that the API knows.
fn api_query(params: &[(String, String)], names: &[&str]) -> String {
    let kept: Vec<(&str, &str)> = params
        .iter()
        .filter(|(k, v)| names.contains(&k.as_str()) && !v.is_empty())
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    view::query(&kept)
}

fn list_state<'a>(path: &'a str, params: &[(String, String)]) -> ListState<'a> {
    ListState {
        path,
        default_sort: match path {
            "/keys" | "/ips" | "/accounts" | "/alarms" => "last_seen",
            "/risks" => "severity_rank",
            _ => "",
        },
        params: params
            .iter()
            .filter(|(k, v)| k != "done" && !v.is_empty())
            .cloned()
            .collect(),
    }
}

fn items(v: &Value) -> &[Value] {
    v["items"].as_array().map_or(&[], Vec::as_slice)
}

fn key_link(k: &str) -> Markup {
    if k.is_empty() {
        html! { span.muted { "—" } }
    } else {
        html! { a.mono href={ "/keys/" (seg(k)) } { (k) } }
    }
}

fn ip_link(ip: &str) -> Markup {
    html! { a.mono href={ "/ips/" (seg(ip)) } { (ip) } }
}

fn account_link(cloud: &str, account: &str) -> Markup {
    if account.is_empty() {
        html! { span.muted { "—" } }
    } else {
        html! { a href={ "/accounts/" (seg(cloud)) "/" (seg(account)) } { (account) } }
    }
}

fn alarm_link(a: &Value) -> Markup {
    let id = text(&a["alarm_id"]);
    let name = a["rule_name"]
        .as_str()
        .unwrap_or(a["rule_id"].as_str().unwrap_or(""));
    html! { a href={ "/alarms/" (seg(&id)) } { (name) } }
}

/// A table of alarms (their key, rule, severity, count, times, triage status).
fn alarm_table(alarms: &[Value], pick: Option<&str>) -> Markup {
    html! {
        div.table-wrap {
            table {
                thead { tr {
                    @if pick.is_some() { th scope="col" {
                        label.sr-only for="pick-all" { "Select all" }
                        input #pick-all type="checkbox" data-select-all="id";
                    } }
                    th scope="col" { "Severity" } th scope="col" { "Alarm" } th scope="col" { "Key" }
                    th scope="col" { "Cloud / account" } th scope="col" { "Hits" }
                    th scope="col" { "First seen" } th scope="col" { "Last seen" } th scope="col" { "Status" }
                } }
                tbody {
                    @for a in alarms {
                        @let id = text(&a["alarm_id"]);
                        tr {
                            @if pick.is_some() { td {
                                label.sr-only for={ "pick-" (id) } { "Select " (text(&a["rule_name"])) }
                                input id={ "pick-" (id) } type="checkbox" name="id" value=(id);
                            } }
                            td { (severity(a["severity"].as_str().unwrap_or(""))) }
                            td { (alarm_link(a)) }
                            td { (key_link(a["access_key_id"].as_str().unwrap_or(""))) }
                            td { (text(&a["cloud"])) " / " (account_link(&text(&a["cloud"]), &text(&a["account_id"]))) }
                            td.num { (int(&a["count"])) }
                            td { (time_text(&a["first_seen"])) }
                            td { (time_text(&a["last_seen"])) }
                            td { (status(a["triage_status"].as_str().unwrap_or(""))) }
                        }
                    }
                }
            }
        }
    }
}

/// A table of configuration risks.
fn risk_table(risks: &[Value]) -> Markup {
    html! {
        div.table-wrap {
            table {
                thead { tr {
                    th scope="col" { "Severity" } th scope="col" { "Risk" } th scope="col" { "Principal" }
                    th scope="col" { "Key" } th scope="col" { "Detail" } th scope="col" { "Still present" } th scope="col" { "Status" }
                } }
                tbody {
                    @for r in risks {
                        tr {
                            td { (severity(r["severity"].as_str().unwrap_or(""))) }
                            td { a href={ "/risks/" (seg(&text(&r["id"]))) } { (text(&r["name"])) } }
                            td { (text(&r["principal"])) }
                            td { (key_link(r["key_id"].as_str().unwrap_or(""))) }
                            td { (text(&r["detail"])) }
                            td { @if r["present"] == json!(true) { "yes" } @else { "fixed" } }
                            td { (status(r["triage_status"].as_str().unwrap_or(""))) }
                        }
                    }
                }
            }
        }
    }
}

fn advice_list(advice: &Value) -> Markup {
    let list: Vec<String> = match advice {
        Value::Array(l) => l.iter().map(text).filter(|s| !s.is_empty()).collect(),
        Value::String(s) if !s.is_empty() => vec![s.clone()],
        _ => Vec::new(),
    };
    html! {
        @if list.is_empty() { p.muted { "No advice: nothing here needs action." } }
        @else { ul.advice { @for a in &list { li { (a) } } } }
    }
}

/// A label / value list.
fn facts(rows: &[(&str, Markup)]) -> Markup {
    html! { dl.facts { @for (k, v) in rows { dt { (k) } dd { (v) } } } }
}

// ---------------------------------------------------------------------------------------------
// Overview

pub(super) async fn overview(
    State(c): State<Arc<Console>>,
    headers: HeaderMap,
    uri: Uri,
    Query(params): Params,
) -> Response {
    let s = match require(&c, &headers, &target(&uri)) {
        Ok(s) => s,
        Err(r) => return *r,
    };
    let o = match c.call(&s, Method::GET, "/overview", None).await {
        Ok(v) => v,
        Err(f) => return failed(&s, "Overview", "/", &f),
    };
    let ls = list_state("/", &params);
    let days: i64 = if ls.get("days") == "30" { 30 } else { 7 };
    let per_day: Vec<(i64, i64)> = o["alarms_per_day"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|r| (int(&r["day"]), int(&r["n"])))
        .collect();
    let last = per_day.last().map_or(0, |d| d.0);
    let series = chart::fill_days(&per_day, last.saturating_sub((days - 1) * 86_400), last);
    let rows: Vec<(String, i64)> = series.iter().map(|(d, n)| (day(*d), *n)).collect();
    let total = int(&o["keys_total"]);
    let sum = |k: &str| -> i64 {
        o[k].as_array()
            .into_iter()
            .flatten()
            .map(|r| int(&r["n"]))
            .sum()
    };
    let content = html! {
        (done(&params))
        @if total == 0 {
            (empty("No access keys in the inventory yet. Replay logs into the store (akwatch replay --store FILE) or run the service with an inventory: section; keys, IPs and alarms appear here as events are counted."))
        }
        section.cards aria-label="Totals" {
            div.card {
                h2 { "Access keys" }
                p.big { a href="/keys" { (total) } }
                ul.plain {
                    @for r in o["keys_by_kind"].as_array().into_iter().flatten() {
                        li { a href={ "/keys?kind=" (seg(&text(&r["kind"]))) } { (text(&r["kind"])) } ": " (int(&r["n"])) }
                    }
                }
                ul.plain {
                    @for (st, n) in o["keys_by_status"].as_object().into_iter().flatten() {
                        li { a href={ "/keys?status=" (seg(st)) } { (st.replace('_', " ")) } ": " (int(n)) }
                    }
                }
            }
            div.card {
                h2 { "Keys needing attention" }
                p.big { a href="/keys?has_alarms=1" { (int(&o["keys_with_pending_alarms"])) } }
                p.muted { "keys with pending alarms" }
            }
            div.card {
                h2 { "Pending alarms" }
                p.big { a href="/alarms?status=pending" { (sum("pending_alarms_by_severity")) } }
                ul.plain {
                    @for r in o["pending_alarms_by_severity"].as_array().into_iter().flatten() {
                        @let sev = text(&r["severity"]);
                        li { a href={ "/alarms?status=pending&severity=" (seg(&sev)) } { (severity(&sev)) " " (int(&r["n"])) } }
                    }
                }
            }
            div.card {
                h2 { "Pending configuration risks" }
                p.big { a href="/risks?status=pending&present=1" { (sum("pending_risks_by_severity")) } }
                ul.plain {
                    @for r in o["pending_risks_by_severity"].as_array().into_iter().flatten() {
                        @let sev = text(&r["severity"]);
                        li { a href={ "/risks?status=pending&present=1&severity=" (seg(&sev)) } { (severity(&sev)) " " (int(&r["n"])) } }
                    }
                }
            }
        }
        section aria-labelledby="attention" {
            h2 #attention { "Keys needing attention" }
            @let list = o["keys_needing_attention"].as_array().cloned().unwrap_or_default();
            @if list.is_empty() { (empty("No key has a pending alarm.")) }
            @else {
                div.table-wrap { table {
                    thead { tr { th scope="col" { "Key" } th scope="col" { "Worst pending alarm" } th scope="col" { "Pending alarms" } th scope="col" { "Last alarm" } } }
                    tbody { @for r in &list { tr {
                        td { (key_link(&text(&r["key_id"]))) }
                        td { (severity(&text(&r["severity"]))) }
                        td.num { a href={ "/alarms?status=pending&key=" (seg(&text(&r["key_id"]))) } { (int(&r["n"])) } }
                        td { (time(int(&r["last_seen"]))) }
                    } } }
                } }
            }
        }
        section aria-labelledby="trend" {
            h2 #trend { "Alarm trend" }
            p.tabs {
                "Days up to the newest alarm: "
                @if days == 7 { strong { "7" } } @else { a href="/?days=7" { "7" } }
                " · "
                @if days == 30 { strong { "30" } } @else { a href="/?days=30" { "30" } }
            }
            @if per_day.is_empty() { (empty("No alarms yet.")) }
            @else { (view::figure(&format!("Alarms raised per day, the {days} days up to the newest (UTC days)"), chart::per_day(&series, "alarms"), &rows)) }
        }
        div.columns {
            section aria-labelledby="topkeys" {
                h2 #topkeys { "Top keys by pending alarms" }
                @let list = o["top_keys"].as_array().cloned().unwrap_or_default();
                @if list.is_empty() { (empty("No pending alarms.")) }
                @else { ol { @for r in &list { li { (key_link(&text(&r["key_id"]))) " — " (int(&r["n"])) } } } }
            }
            section aria-labelledby="topips" {
                h2 #topips { "Top source IPs by calls" }
                @let list = o["top_ips"].as_array().cloned().unwrap_or_default();
                @if list.is_empty() { (empty("No source IPs yet.")) }
                @else { ol { @for r in &list { li { (ip_link(&text(&r["ip"]))) " — " (int(&r["n"])) } } } }
            }
        }
        section aria-labelledby="recent" {
            h2 #recent { "Recent changes" }
            @let list = o["recent_changes"].as_array().cloned().unwrap_or_default();
            @if list.is_empty() { (empty("No changes yet: triage, notes and policy edits made here are listed here and in the audit log.")) }
            @else { (audit_table(&list)) p { a href="/audit" { "The whole audit log" } } }
        }
    };
    page(&s, "Overview", "/", content)
}

fn day(t: i64) -> String {
    chrono::DateTime::from_timestamp(t, 0)
        .map(|d| d.format("%Y-%m-%d").to_string())
        .unwrap_or_default()
}

// ---------------------------------------------------------------------------------------------
// Keys

pub(super) async fn keys(
    State(c): State<Arc<Console>>,
    headers: HeaderMap,
    uri: Uri,
    Query(mut params): Params,
) -> Response {
    let s = match require(&c, &headers, &target(&uri)) {
        Ok(s) => s,
        Err(r) => return *r,
    };
    // "Last used on or after" is a date; the API takes Unix seconds.
    let since_day = params
        .iter()
        .find(|(k, _)| k == "used_since")
        .map(|(_, v)| v.clone())
        .unwrap_or_default();
    // The page's own links carry the date only; the API gets the time (never both, never twice).
    params.retain(|(k, _)| k != "since" && k != "until");
    let mut api_params = params.clone();
    if let Ok(d) = chrono::NaiveDate::parse_from_str(&since_day, "%Y-%m-%d")
        && let Some(t) = d.and_hms_opt(0, 0, 0)
    {
        api_params.push(("since".into(), t.and_utc().timestamp().to_string()));
    }
    let q = api_query(
        &api_params,
        &[
            "cloud",
            "account",
            "kind",
            "status",
            "has_alarms",
            "since",
            "sort",
            "order",
            "offset",
            "limit",
        ],
    );
    let v = match c.call(&s, Method::GET, &format!("/keys?{q}"), None).await {
        Ok(v) => v,
        Err(f) => return failed(&s, "AK assets", "/keys", &f),
    };
    let ls = list_state("/keys", &params);
    let content = html! {
        form.filters method="get" action="/keys" aria-label="Filter keys" {
            (select("cloud", "Cloud", ls.get("cloud"), &CLOUDS))
            (view::input("account", "Account", ls.get("account"), "account id"))
            (select("kind", "Kind", ls.get("kind"), &[("", "Any kind"), ("permanent", "Permanent"), ("temporary", "Temporary")]))
            (select("status", "Report status", ls.get("status"), &[("", "Any status"), ("active", "Active"), ("inactive", "Inactive"), ("at_risk", "At risk"), ("not_in_report", "Not in report"), ("unknown", "Unknown")]))
            (select("has_alarms", "Pending alarms", ls.get("has_alarms"), &[("", "Any"), ("1", "With pending alarms"), ("0", "Without")]))
            div.field {
                label for="f-used_since" { "Last used on or after" }
                input #f-used_since type="date" name="used_since" value=(since_day);
            }
            @if !ls.get("sort").is_empty() { input type="hidden" name="sort" value=(ls.get("sort")); }
            @if !ls.get("order").is_empty() { input type="hidden" name="order" value=(ls.get("order")); }
            button type="submit" { "Filter" }
            a href="/keys" { "Clear" }
        }
        @if items(&v).is_empty() {
            (empty("No key matches. Clear the filters, or fill the inventory by replaying logs or running the service."))
        } @else {
            div.table-wrap { table {
                thead { tr {
                    (ls.sort_header("key_id", "Access key"))
                    th scope="col" { "Cloud" } th scope="col" { "Account" } th scope="col" { "Principal" }
                    th scope="col" { "Kind" } th scope="col" { "Report status" }
                    (ls.sort_header("calls", "Calls"))
                    (ls.sort_header("pending_alarms", "Pending alarms"))
                    (ls.sort_header("first_seen", "First seen"))
                    (ls.sort_header("last_seen", "Last used"))
                } }
                tbody { @for k in items(&v) { tr {
                    td { (key_link(&text(&k["key_id"]))) }
                    td { (text(&k["cloud"])) }
                    td { (account_link(&text(&k["cloud"]), &text(&k["account"]))) }
                    td { (text(&k["principal"])) }
                    td { (text(&k["kind"])) }
                    td { (status(&text(&k["status"]))) }
                    td.num { (int(&k["calls"])) }
                    td.num { (int(&k["pending_alarms"])) }
                    td { (time(int(&k["first_seen"]))) }
                    td { (time(int(&k["last_seen"]))) }
                } } }
            } }
        }
        (ls.pager(int(&v["total"]), int(&v["limit"]), int(&v["offset"])))
    };
    page(&s, "AK assets", "/keys", content)
}

pub(super) async fn key(
    State(c): State<Arc<Console>>,
    headers: HeaderMap,
    uri: Uri,
    Path(key): Path<String>,
    Query(params): Params,
) -> Response {
    let path = format!("/keys/{}", seg(&key));
    let s = match require(&c, &headers, &target(&uri)) {
        Ok(s) => s,
        Err(r) => return *r,
    };
    let k = match c.call(&s, Method::GET, &path, None).await {
        Ok(v) => v,
        Err(f) => return failed(&s, "Access key", "/keys", &f),
    };
    let cloud = text(&k["cloud"]);
    let days: Vec<(i64, i64)> = k["calls_per_day"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|r| (int(&r["day"]), int(&r["calls"])))
        .collect();
    let series = match (days.first(), days.last()) {
        (Some(a), Some(b)) => chart::fill_days(&days, a.0, b.0),
        _ => Vec::new(),
    };
    let rows: Vec<(String, i64)> = series.iter().map(|(d, n)| (day(*d), *n)).collect();
    let report = &k["report"];
    // Hidden by the store's flag (events counted since), or by an IP-hiding entry just made.
    let now = chrono::Utc::now();
    let hidden = int(&k["ip_hidden"]) != 0
        || k["policies"].as_array().is_some_and(|l| {
            l.iter().any(|p| {
                p["kind"] == "ip-hiding"
                    && p["expires"]
                        .as_str()
                        .is_none_or(|x| crate::policy::parse_expiry(x).is_none_or(|t| t > now))
            })
        });
    let content = html! {
        (done(&params))
        section aria-labelledby="basic" {
            h2 #basic { "Basic information" }
            (facts(&[
                ("Access key", html! { span.mono { (text(&k["key_id"])) } }),
                ("Cloud", html! { (cloud) }),
                ("Account", account_link(&cloud, &text(&k["account"]))),
                ("Principal", html! { (text(&k["principal"])) " " span.muted { "(" (text(&k["principal_type"])) ")" } }),
                ("Kind", html! { (text(&k["kind"])) }),
                ("Report status", status(&text(&k["status"]))),
                ("Calls", html! { (int(&k["calls"])) " (" (int(&k["failures"])) " failed)" }),
                ("First seen", time(int(&k["first_seen"]))),
                ("Last used", time(int(&k["last_seen"]))),
                ("IP hiding", html! { @if hidden { "on: its source IPs are not kept" } @else { "off" } }),
            ]))
        }
        section aria-labelledby="report" {
            h2 #report { "From the credential report" }
            @if report.is_null() {
                (empty("No credential report names this key's principal: give the cloud's report (--reports, or reports: in the service's configuration)."))
            } @else {
                @let key_id = text(&k["key_id"]);
                @let slot = |name: &str| report_key_field(report, &key_id, name);
                @let when = |name: &str| time_or_text(&Value::String(slot(name)));
                (facts(&[
                    ("Report", html! { span.muted { (text(&report["report"])) } }),
                    ("Principal created", time_or_text(&report["created"])),
                    ("Root", html! { @if report["root"] == json!(true) { "yes" } @else { "no" } }),
                    ("MFA", html! { @match &report["mfa_active"] { Value::Bool(true) => "on", Value::Bool(false) => "off", _ => "unknown" } }),
                    ("Console password", html! { (text(&report["password"]["enabled"])) @if report["password"]["last_used"].is_string() { ", last used " (time_or_text(&report["password"]["last_used"])) } }),
                    ("Key created", when("created")),
                    ("Key last rotated", when("last_rotated")),
                    ("Key last used (report)", html! { (when("last_used")) " " span.muted { (slot("last_used_region")) " " (slot("last_used_service")) } }),
                ]))
            }
        }
        section aria-labelledby="advice" {
            h2 #advice { "Security advice" }
            (advice_list(&k["advice"]))
        }
        @if s.role >= Role::Admin {
            section.actions aria-labelledby="actions" {
                h2 #actions { "Actions" }
                a.button href={ "/policies/allowlist?keys=" (seg(&text(&k["key_id"]))) "#editor" } { "Allowlist this key…" }
                @if !hidden {
                    form method="post" action={ "/keys/" (seg(&text(&k["key_id"]))) "/hide" } {
                        (csrf(&s))
                        label for="hide-comment" { "Why hide its IPs" }
                        input #hide-comment type="text" name="comment" required placeholder="e.g. partner integration: its IPs are theirs";
                        button type="submit" { "Hide its IPs" }
                    }
                }
            }
        }
        section aria-labelledby="alarms" {
            h2 #alarms { "Alarms" }
            @let list = k["alarms"].as_array().cloned().unwrap_or_default();
            @if list.is_empty() { (empty("No alarms for this key.")) } @else {
                (alarm_table(&list, None))
                p { a href={ "/alarms?key=" (seg(&text(&k["key_id"]))) } { "This key's alarms in the alarm list (filters, paging, bulk triage)" } }
            }
        }
        section aria-labelledby="risks" {
            h2 #risks { "Configuration risks" }
            @let list = k["risks"].as_array().cloned().unwrap_or_default();
            @if list.is_empty() { (empty("The credential reports show no risk for this key or its principal.")) } @else { (risk_table(&list)) }
        }
        section aria-labelledby="perday" {
            h2 #perday { "Calls per day" }
            @if series.is_empty() { (empty("No calls in the kept rollups.")) }
            @else { (view::figure("Calls per day (UTC days)", chart::per_day(&series, "calls"), &rows)) }
        }
        div.columns {
            section aria-labelledby="ips" {
                h2 #ips { "Source IPs" }
                @let list = k["ips"].as_array().cloned().unwrap_or_default();
                @if list.is_empty() { (empty(if hidden { "IP hiding is on for this key." } else { "No source IPs recorded." })) }
                @else { div.table-wrap { table {
                    thead { tr { th scope="col" { "IP" } th scope="col" { "Calls" } th scope="col" { "First seen" } th scope="col" { "Last seen" } } }
                    tbody { @for r in &list { tr { td { (ip_link(&text(&r["ip"]))) } td.num { (int(&r["calls"])) } td { (time(int(&r["first_seen"]))) } td { (time(int(&r["last_seen"]))) } } } }
                } } }
            }
            section aria-labelledby="apis" {
                h2 #apis { "APIs" }
                @let list = k["apis"].as_array().cloned().unwrap_or_default();
                @if list.is_empty() { (empty("No calls recorded.")) }
                @else { div.table-wrap { table {
                    thead { tr { th scope="col" { "API" } th scope="col" { "Calls" } th scope="col" { "Failed" } th scope="col" { "Last seen" } } }
                    tbody { @for r in &list { tr { td.mono { (text(&r["api"])) } td.num { (int(&r["calls"])) } td.num { (int(&r["failures"])) } td { (time(int(&r["last_seen"]))) } } } }
                } } }
            }
        }
        div.columns {
            section aria-labelledby="regions" {
                h2 #regions { "Regions" }
                (value_table(&k["regions"], "Region"))
            }
            section aria-labelledby="uas" {
                h2 #uas { "User agents" }
                (value_table(&k["user_agents"], "User agent"))
            }
        }
        section aria-labelledby="pol" {
            h2 #pol { "Policies that name this key" }
            @let list = k["policies"].as_array().cloned().unwrap_or_default();
            @if list.is_empty() { (empty("No allowlist or IP-hiding entry names this key.")) }
            @else { ul { @for p in &list {
                li {
                    (text(&p["kind"]))
                    @if !p["id"].is_null() { " " a href={ "/policies/" (seg(&text(&p["kind"]))) "/" (seg(&text(&p["id"]))) } { (text(&p["id"])) } }
                    @if p["owner"].is_string() { " (owner " (text(&p["owner"])) ")" }
                    @if p["expires"].is_string() { ", expires " (expiry(&p["expires"])) }
                    @if !p["comment"].is_null() { " — " (text(&p["comment"])) }
                }
            } } }
        }
    };
    page(
        &s,
        &format!("Access key {}", text(&k["key_id"])),
        "/keys",
        content,
    )
}

/// A field of the key's slot in its principal's report entry: the slot naming the key, else
/// the only active slot (AWS and Alibaba reports do not name keys); empty when it is ambiguous.
fn report_key_field(report: &Value, key: &str, name: &str) -> String {
    let keys = report["keys"].as_array().cloned().unwrap_or_default();
    let active: Vec<&Value> = keys.iter().filter(|k| k["active"] == json!(true)).collect();
    let k = keys
        .iter()
        .find(|k| k["id"].as_str() == Some(key))
        .or_else(|| (active.len() == 1).then(|| active[0]));
    k.map(|k| text(&k[name])).unwrap_or_default()
}

fn value_table(list: &Value, label: &str) -> Markup {
    let list = list.as_array().cloned().unwrap_or_default();
    html! {
        @if list.is_empty() { (empty("None recorded.")) }
        @else { div.table-wrap { table {
            thead { tr { th scope="col" { (label) } th scope="col" { "Calls" } th scope="col" { "Last seen" } } }
            tbody { @for r in &list { tr { td.mono.wrap { (text(&r["value"])) } td.num { (int(&r["calls"])) } td { (time(int(&r["last_seen"]))) } } } }
        } } }
    }
}

pub(super) async fn hide_key(
    State(c): State<Arc<Console>>,
    headers: HeaderMap,
    Path(key): Path<String>,
    axum::Form(form): Form,
) -> Response {
    let s = match require_post(&c, &headers, &form) {
        Ok(s) => s,
        Err(r) => return *r,
    };
    let id: String = format!("hide-{key}")
        .chars()
        .map(|ch| {
            if ch.is_ascii_alphanumeric() || "._:-@".contains(ch) {
                ch
            } else {
                '-'
            }
        })
        .take(128)
        .collect();
    let entry =
        json!({"id": id, "keys": [key], "comment": field(&form, "comment").unwrap_or_default()});
    match c
        .call(&s, Method::POST, "/policies/ip-hiding", Some(&entry))
        .await
    {
        Ok(_) => Redirect::to(&format!("/keys/{}?done=hidden", seg(&key))).into_response(),
        Err(f) => failed(&s, "Hide a key's IPs", "/keys", &f),
    }
}

// ---------------------------------------------------------------------------------------------
// Source IPs

pub(super) async fn ips(
    State(c): State<Arc<Console>>,
    headers: HeaderMap,
    uri: Uri,
    Query(params): Params,
) -> Response {
    let s = match require(&c, &headers, &target(&uri)) {
        Ok(s) => s,
        Err(r) => return *r,
    };
    let q = api_query(
        &params,
        &[
            "class",
            "country",
            "has_alarms",
            "q",
            "sort",
            "order",
            "offset",
            "limit",
        ],
    );
    let v = match c.call(&s, Method::GET, &format!("/ips?{q}"), None).await {
        Ok(v) => v,
        Err(f) => return failed(&s, "Source IPs", "/ips", &f),
    };
    let ls = list_state("/ips", &params);
    let filtered = ["class", "country", "has_alarms", "q"]
        .iter()
        .any(|n| !ls.get(n).is_empty());
    let mut class_options = vec![("", "Any class")];
    class_options.extend(
        crate::enrich::IpClass::ALL
            .iter()
            .map(|c| (c.as_str(), c.as_str())),
    );
    let content = html! {
        form.filters method="get" action="/ips" aria-label="Filter source IPs" {
            (view::input("q", "Search", ls.get("q"), "part of the IP or AS organisation"))
            (select("class", "Class", ls.get("class"), &class_options))
            (view::input("country", "Country", ls.get("country"), "e.g. JP"))
            (select("has_alarms", "Alarms", ls.get("has_alarms"), &[("", "Any"), ("1", "Named by alarms"), ("0", "Named by none")]))
            @if !ls.get("sort").is_empty() { input type="hidden" name="sort" value=(ls.get("sort")); }
            @if !ls.get("order").is_empty() { input type="hidden" name="order" value=(ls.get("order")); }
            button type="submit" { "Filter" }
            a href="/ips" { "Clear" }
        }
        @if items(&v).is_empty() && filtered {
            (empty("No source IP matches. Clear the filters to see them all."))
        } @else if items(&v).is_empty() {
            (empty("No source IPs yet: they appear as calls are counted (keys with IP hiding keep none)."))
        } @else {
            div.table-wrap { table {
                thead { tr {
                    (ls.sort_header("ip", "IP"))
                    th scope="col" { "Location" } th scope="col" { "ASN / organisation" } th scope="col" { "Class" }
                    (ls.sort_header("keys", "Keys"))
                    th scope="col" { "Alarms" }
                    (ls.sort_header("calls", "Calls"))
                    (ls.sort_header("last_seen", "Last seen"))
                    th scope="col" { "Note" }
                } }
                tbody { @for r in items(&v) { tr {
                    td { (ip_link(&text(&r["ip"]))) }
                    td { (location(r)) }
                    td { (asn(r)) }
                    td { (classes(&r["classes"])) }
                    td.num { (int(&r["keys"])) }
                    td.num { (int(&r["alarm_count"])) }
                    td.num { (int(&r["calls"])) }
                    td { (time(int(&r["last_seen"]))) }
                    td.wrap { (text(&r["note"])) }
                } } }
            } }
        }
        (ls.pager(int(&v["total"]), int(&v["limit"]), int(&v["offset"])))
    };
    page(&s, "Source IPs", "/ips", content)
}

fn location(r: &Value) -> String {
    let parts: Vec<String> = [text(&r["city"]), text(&r["country"])]
        .into_iter()
        .filter(|x| !x.is_empty())
        .collect();
    if parts.is_empty() {
        "unknown".into()
    } else {
        parts.join(", ")
    }
}

fn asn(r: &Value) -> String {
    match (int(&r["asn"]), text(&r["as_org"])) {
        (0, o) if o.is_empty() => "unknown".into(),
        (0, o) => o,
        (n, o) => format!("AS{n} {o}"),
    }
}

/// An IP's classes (stored as a JSON list in text).
fn class_list(v: &Value) -> Vec<String> {
    match v {
        Value::String(s) => serde_json::from_str::<Vec<String>>(s).unwrap_or_default(),
        Value::Array(l) => l.iter().map(text).collect(),
        _ => Vec::new(),
    }
}

fn classes(v: &Value) -> Markup {
    html! { @for c in class_list(v) { span class={ "tag tag-" (c) } { (c) } " " } }
}

pub(super) async fn ip(
    State(c): State<Arc<Console>>,
    headers: HeaderMap,
    uri: Uri,
    Path(ip): Path<String>,
    Query(params): Params,
) -> Response {
    let path = format!("/ips/{}", seg(&ip));
    let s = match require(&c, &headers, &target(&uri)) {
        Ok(s) => s,
        Err(r) => return *r,
    };
    let r = match c.call(&s, Method::GET, &path, None).await {
        Ok(v) => v,
        Err(f) => return failed(&s, "Source IP", "/ips", &f),
    };
    let cls = class_list(&r["classes"]);
    let internal = cls.iter().any(|c| c == "own" || c == "private");
    ip_page(&s, &r, &params, internal, None)
}

fn ip_page(
    s: &Sess,
    r: &Value,
    params: &[(String, String)],
    internal: bool,
    error: Option<&str>,
) -> Response {
    let ip = text(&r["ip"]);
    let content = html! {
        (done(params))
        @if let Some(e) = error { (flash("error", e)) }
        (facts(&[
            ("IP", html! { span.mono { (ip) } }),
            ("Location", html! { (location(r)) }),
            ("ASN / organisation", html! { (asn(r)) }),
            ("Class", classes(&r["classes"])),
            ("Internal asset", html! { @if internal { "yes (own or private range)" } @else { "no" } }),
            ("Calls", html! { (int(&r["calls"])) }),
            ("First seen", time(int(&r["first_seen"]))),
            ("Last seen", time(int(&r["last_seen"]))),
        ]))
        section aria-labelledby="note" {
            h2 #note { "Note" }
            @if s.role >= Role::Operator {
                form.note method="post" action={ "/ips/" (seg(&ip)) "/note" } {
                    (csrf(s))
                    label for="note-text" { "The operator's note on this IP" }
                    textarea #note-text name="note" rows="3" maxlength="4096" { (text(&r["note"])) }
                    button type="submit" { "Save note" }
                }
            } @else {
                @if text(&r["note"]).is_empty() { p.muted { "No note." } } @else { p.note-text { (text(&r["note"])) } }
            }
        }
        section aria-labelledby="keys" {
            h2 #keys { "Keys that used it" }
            @let list = r["keys_used"].as_array().cloned().unwrap_or_default();
            @if list.is_empty() { (empty("No key recorded (IP-hidden keys are not shown).")) }
            @else { div.table-wrap { table {
                thead { tr { th scope="col" { "Key" } th scope="col" { "Cloud" } th scope="col" { "Calls" } th scope="col" { "First seen" } th scope="col" { "Last seen" } } }
                tbody { @for k in &list { tr { td { (key_link(&text(&k["key_id"]))) } td { (text(&k["cloud"])) } td.num { (int(&k["calls"])) } td { (time(int(&k["first_seen"]))) } td { (time(int(&k["last_seen"]))) } } } }
            } } }
        }
        section aria-labelledby="alarms" {
            h2 #alarms { "Alarms from this IP" }
            @let list = r["alarms"].as_array().cloned().unwrap_or_default();
            @if list.is_empty() { (empty("No alarm lists this IP among its sources.")) } @else { (alarm_table(&list, None)) }
        }
    };
    page(s, &format!("Source IP {ip}"), "/ips", content)
}

pub(super) async fn ip_note(
    State(c): State<Arc<Console>>,
    headers: HeaderMap,
    Path(ip): Path<String>,
    axum::Form(form): Form,
) -> Response {
    let s = match require_post(&c, &headers, &form) {
        Ok(s) => s,
        Err(r) => return *r,
    };
    let body = json!({"note": field(&form, "note").unwrap_or_default()});
    match c
        .call(
            &s,
            Method::PUT,
            &format!("/ips/{}/note", seg(&ip)),
            Some(&body),
        )
        .await
    {
        Ok(_) => Redirect::to(&format!("/ips/{}?done=note#note", seg(&ip))).into_response(),
        Err(f) => failed(&s, "Source IP note", "/ips", &f),
    }
}

// ---------------------------------------------------------------------------------------------
// Accounts

pub(super) async fn accounts(
    State(c): State<Arc<Console>>,
    headers: HeaderMap,
    uri: Uri,
    Query(params): Params,
) -> Response {
    let s = match require(&c, &headers, &target(&uri)) {
        Ok(s) => s,
        Err(r) => return *r,
    };
    let q = api_query(&params, &["cloud", "sort", "order", "offset", "limit"]);
    let v = match c
        .call(&s, Method::GET, &format!("/accounts?{q}"), None)
        .await
    {
        Ok(v) => v,
        Err(f) => return failed(&s, "Accounts", "/accounts", &f),
    };
    let ls = list_state("/accounts", &params);
    let content = html! {
        form.filters method="get" action="/accounts" aria-label="Filter accounts" {
            (select("cloud", "Cloud", ls.get("cloud"), &CLOUDS))
            button type="submit" { "Filter" }
        }
        @if items(&v).is_empty() {
            (empty("No accounts yet: they appear as calls naming them are counted."))
        } @else {
            div.table-wrap { table {
                thead { tr {
                    th scope="col" { "Cloud" }
                    (ls.sort_header("account", "Account"))
                    th scope="col" { "Keys" } th scope="col" { "Pending alarms" }
                    (ls.sort_header("calls", "Calls"))
                    (ls.sort_header("last_seen", "Last seen"))
                } }
                tbody { @for r in items(&v) { tr {
                    td { (text(&r["cloud"])) }
                    td { (account_link(&text(&r["cloud"]), &text(&r["account"]))) }
                    td.num { (int(&r["keys"])) }
                    td.num { (int(&r["pending_alarms"])) }
                    td.num { (int(&r["calls"])) }
                    td { (time(int(&r["last_seen"]))) }
                } } }
            } }
        }
        (ls.pager(int(&v["total"]), int(&v["limit"]), int(&v["offset"])))
    };
    page(&s, "Accounts", "/accounts", content)
}

pub(super) async fn account(
    State(c): State<Arc<Console>>,
    headers: HeaderMap,
    uri: Uri,
    Path((cloud, account)): Path<(String, String)>,
) -> Response {
    let path = format!("/accounts/{}/{}", seg(&cloud), seg(&account));
    let s = match require(&c, &headers, &target(&uri)) {
        Ok(s) => s,
        Err(r) => return *r,
    };
    let a = match c.call(&s, Method::GET, &path, None).await {
        Ok(v) => v,
        Err(f) => return failed(&s, "Account", "/accounts", &f),
    };
    let alarms = c
        .call(
            &s,
            Method::GET,
            &format!(
                "/alarms?{}",
                view::query(&[
                    ("cloud", &cloud),
                    ("account", &account),
                    ("limit", "100"),
                    ("sort", "severity_rank")
                ])
            ),
            None,
        )
        .await
        .unwrap_or(Value::Null);
    let yes_no = |b: bool| if b { "yes" } else { "no" };
    let content = html! {
        (facts(&[
            ("Cloud", html! { (cloud) }),
            ("Account", html! { span.mono { (account) } }),
            ("Root key present", html! { (yes_no(a["root_key_present"] == json!(true))) }),
            ("Root key used", html! { (yes_no(a["root_key_used"] == json!(true))) }),
            ("Last console login", time(int(&a["last_console_login"]))),
            ("Calls", html! { (int(&a["calls"])) }),
            ("First seen", time(int(&a["first_seen"]))),
            ("Last seen", time(int(&a["last_seen"]))),
            ("Pending alarms", html! { @for r in a["pending_alarms"].as_array().into_iter().flatten() { (severity(&text(&r["severity"]))) " " (int(&r["n"])) " " } }),
        ]))
        section aria-labelledby="advice" { h2 #advice { "Security advice" } (advice_list(&a["advice"])) }
        section aria-labelledby="principals" {
            h2 #principals { "Principals (credential reports)" }
            @let list = a["principals"].as_array().cloned().unwrap_or_default();
            @if list.is_empty() { (empty("No credential report names this account's principals: give reports (--reports, or reports: in the service's configuration).")) }
            @else { div.table-wrap { table {
                thead { tr { th scope="col" { "Principal" } th scope="col" { "Root" } th scope="col" { "MFA" } th scope="col" { "Last console login" } th scope="col" { "Active keys" } th scope="col" { "Report" } } }
                tbody { @for p in &list { tr {
                    td { (text(&p["principal"])) }
                    td { (yes_no(int(&p["root"]) != 0)) }
                    td { @match int(&p["mfa"]) { 1 => "yes", 0 => "no", _ => "unknown" } }
                    td { (time(int(&p["last_login"]))) }
                    td.num { (int(&p["active_keys"])) }
                    td.wrap.muted { (text(&p["source"])) }
                } } }
            } } }
        }
        section aria-labelledby="keys" {
            h2 #keys { "Keys" }
            @let list = a["keys"].as_array().cloned().unwrap_or_default();
            @if list.is_empty() { (empty("No keys seen in this account.")) }
            @else { div.table-wrap { table {
                thead { tr { th scope="col" { "Key" } th scope="col" { "Principal" } th scope="col" { "Kind" } th scope="col" { "Calls" } th scope="col" { "Last used" } } }
                tbody { @for k in &list { tr { td { (key_link(&text(&k["key_id"]))) } td { (text(&k["principal"])) " " span.muted { "(" (text(&k["principal_type"])) ")" } } td { (text(&k["kind"])) } td.num { (int(&k["calls"])) } td { (time(int(&k["last_seen"]))) } } } }
            } } }
        }
        section aria-labelledby="alarms" {
            h2 #alarms { "Alarms" }
            @if items(&alarms).is_empty() { (empty("No alarms in this account.")) } @else {
                (alarm_table(items(&alarms), None))
                p { "The " (items(&alarms).len()) " most severe of " (int(&alarms["total"])) ". "
                    a href={ "/alarms?" (view::query(&[("cloud", &cloud), ("account", &account)])) } { "All of this account's alarms" } }
            }
        }
        section aria-labelledby="risks" {
            h2 #risks { "Configuration risks" }
            @let list = a["risks"].as_array().cloned().unwrap_or_default();
            @if list.is_empty() { (empty("No configuration risk.")) } @else { (risk_table(&list)) }
        }
    };
    page(
        &s,
        &format!("Account {account} ({cloud})"),
        "/accounts",
        content,
    )
}

// ---------------------------------------------------------------------------------------------
// Alarms

pub(super) async fn alarms(
    State(c): State<Arc<Console>>,
    headers: HeaderMap,
    uri: Uri,
    Query(params): Params,
) -> Response {
    let s = match require(&c, &headers, &target(&uri)) {
        Ok(s) => s,
        Err(r) => return *r,
    };
    alarms_page(&c, &s, &params, None).await
}

async fn alarms_page(
    c: &Console,
    s: &Sess,
    params: &[(String, String)],
    error: Option<&str>,
) -> Response {
    let q = api_query(
        params,
        &[
            "status", "severity", "rule", "cloud", "account", "key", "sort", "order", "offset",
            "limit",
        ],
    );
    let v = match c.call(s, Method::GET, &format!("/alarms?{q}"), None).await {
        Ok(v) => v,
        Err(f) => return failed(s, "Alarms", "/alarms", &f),
    };
    let ls = list_state("/alarms", params);
    let back = ls.with(&[]);
    let content = html! {
        (done(params))
        @if let Some(e) = error { (flash("error", e)) }
        form.filters method="get" action="/alarms" aria-label="Filter alarms" {
            (select("status", "Status", ls.get("status"), &TRIAGE))
            (select("severity", "Severity", ls.get("severity"), &SEVERITIES))
            (select("cloud", "Cloud", ls.get("cloud"), &CLOUDS))
            (view::input("rule", "Rule", ls.get("rule"), "e.g. ak.leaked_key_use"))
            (view::input("account", "Account", ls.get("account"), "account id"))
            (view::input("key", "Access key", ls.get("key"), "key id"))
            @if !ls.get("sort").is_empty() { input type="hidden" name="sort" value=(ls.get("sort")); }
            button type="submit" { "Filter" }
            a href="/alarms" { "Clear" }
        }
        p.sortby {
            "Sort by: "
            @for (col, label) in [("last_seen", "last seen"), ("severity_rank", "severity"), ("first_seen", "first seen"), ("count", "hits")] {
                @if ls.get("sort") == col || (ls.get("sort").is_empty() && col == "last_seen") { strong { (label) } " " }
                @else { a href=(ls.with(&[("sort", col), ("offset", "")])) { (label) } " " }
            }
        }
        @if items(&v).is_empty() {
            (empty("No alarm matches. Clear the filters; alarms appear here as the engine raises them."))
        } @else if s.role >= Role::Operator {
            form method="post" action="/alarms/triage" aria-label="Triage the selected alarms" {
                (csrf(s))
                input type="hidden" name="back" value=(back);
                (alarm_table(items(&v), Some("id")))
                fieldset.bulk {
                    legend { "Triage the selected alarms" }
                    div.field {
                        label for="bulk-status" { "New status" }
                        select #bulk-status name="status" {
                            option value="handled" selected { "Handled" }
                            option value="ignored" { "Ignored" }
                            option value="pending" { "Pending" }
                        }
                    }
                    div.field {
                        label for="bulk-comment" { "Comment" }
                        input #bulk-comment type="text" name="comment" placeholder="what was done";
                    }
                    button type="submit" { "Apply to selected" }
                }
            }
        } @else {
            (alarm_table(items(&v), None))
        }
        (ls.pager(int(&v["total"]), int(&v["limit"]), int(&v["offset"])))
    };
    page(s, "Alarms", "/alarms", content)
}

pub(super) async fn alarms_triage(
    State(c): State<Arc<Console>>,
    headers: HeaderMap,
    axum::Form(form): Form,
) -> Response {
    let s = match require_post(&c, &headers, &form) {
        Ok(s) => s,
        Err(r) => return *r,
    };
    let back = field(&form, "back")
        .filter(|b| b.starts_with("/alarms"))
        .unwrap_or("/alarms");
    let back_params: Vec<(String, String)> = back
        .split_once('?')
        .and_then(|(_, q)| serde_urlencoded::from_str(q).ok())
        .unwrap_or_default();
    let ids: Vec<&str> = form
        .iter()
        .filter(|(k, _)| k == "id")
        .map(|(_, v)| v.as_str())
        .collect();
    if ids.is_empty() {
        return alarms_page(
            &c,
            &s,
            &back_params,
            Some("Select at least one alarm first."),
        )
        .await;
    }
    let body = json!({
        "status": field(&form, "status").unwrap_or("handled"),
        "comment": field(&form, "comment").unwrap_or_default(),
    });
    for id in &ids {
        if let Err(f) = c
            .call(
                &s,
                Method::POST,
                &format!("/alarms/{}/status", seg(id)),
                Some(&body),
            )
            .await
        {
            return alarms_page(
                &c,
                &s,
                &back_params,
                Some(&format!("Alarm {id}: {}", f.message)),
            )
            .await;
        }
    }
    let sep = if back.contains('?') { '&' } else { '?' };
    Redirect::to(&format!("{back}{sep}done=triaged")).into_response()
}

pub(super) async fn alarm(
    State(c): State<Arc<Console>>,
    headers: HeaderMap,
    uri: Uri,
    Path(id): Path<String>,
    Query(params): Params,
) -> Response {
    show(&c, &headers, &uri, &ALARM, &id, &params).await
}

/// An alarm's or a risk's page, read from the API.
async fn show(
    c: &Console,
    headers: &HeaderMap,
    uri: &Uri,
    t: &Triaged,
    id: &str,
    params: &[(String, String)],
) -> Response {
    let s = match require(c, headers, &target(uri)) {
        Ok(s) => s,
        Err(r) => return *r,
    };
    match c
        .call(&s, Method::GET, &format!("{}/{}", t.base, seg(id)), None)
        .await
    {
        Ok(v) => (t.render)(&s, &v, params, None),
        Err(f) => failed(&s, t.title, t.base, &f),
    }
}

fn alarm_page(s: &Sess, a: &Value, params: &[(String, String)], error: Option<&str>) -> Response {
    let id = text(&a["alarm_id"]);
    let cloud = text(&a["cloud"]);
    let facts_v = &a["evidence"]["facts"];
    let members = facts_v["members"].as_array().cloned().unwrap_or_default();
    let principal = &a["principal"];
    let content = html! {
        (done(params))
        @if let Some(e) = error { (flash("error", e)) }
        p.lead { (text(&a["summary"])) }
        (facts(&[
            ("Severity", severity(&text(&a["severity"]))),
            ("Triage status", status(&text(&a["triage_status"]))),
            ("Rule", html! { (text(&a["rule_name"])) " " span.mono.muted { (text(&a["rule_id"])) } }),
            ("Type", html! { (text(&a["alarm_type"])) }),
            ("Access key", key_link(a["access_key_id"].as_str().unwrap_or(""))),
            ("Cloud / account", html! { (cloud) " / " (account_link(&cloud, &text(&a["account_id"]))) }),
            ("Principal", html! { (text(&principal["name"])) " " span.muted { "(" (text(&principal["type"])) ")" } }),
            ("Hits", html! { (int(&a["count"])) }),
            ("First seen", time_text(&a["first_seen"])),
            ("Last seen", time_text(&a["last_seen"])),
            ("MITRE ATT&CK", html! {
                @for t in a["attack"]["tactics"].as_array().into_iter().flatten() { span.tag { (text(t)) } " " }
                @for t in a["attack"]["techniques"].as_array().into_iter().flatten() { span.tag { (text(t)) } " " }
            }),
            ("Alarm id", html! { span.mono { (id) } }),
        ]))
        section aria-labelledby="desc" { h2 #desc { "What it means" } p { (text(&a["description"])) } }
        section aria-labelledby="advice" { h2 #advice { "Advice" } (advice_list(&a["advice"])) }
        @if s.role >= Role::Operator {
            section.actions aria-labelledby="actions" {
                h2 #actions { "Actions" }
                (triage_form(s, &format!("/alarms/{}/status", seg(&id)), &text(&a["triage_status"])))
                @if a["rule_id"] == json!(crate::alarm::ATTACK_SEQUENCE) {
                    p.muted { "An attack sequence is built from its member alarms: allowlist those, and it is not raised." }
                } @else if !a["access_key_id"].is_null() {
                    a.button href={ "/alarms/" (seg(&id)) "/allowlist" } { "Allowlist…" }
                }
            }
        }
        section aria-labelledby="evidence" {
            h2 #evidence { "Evidence" }
            @if let Some(o) = facts_v.as_object() {
                dl.facts { @for (k, v) in o { @if k != "members" { dt { (k) } dd { @if let Value::Object(_) | Value::Array(_) = v { pre { (serde_json::to_string_pretty(v).unwrap_or_default()) } } @else { (text(v)) } } } } }
            } @else { (empty("No facts recorded.")) }
            @let ids = a["evidence"]["event_ids"].as_array().cloned().unwrap_or_default();
            @if !ids.is_empty() { p { "Events: " @for e in &ids { span.mono { (text(e)) } " " } } }
        }
        @if !members.is_empty() {
            section aria-labelledby="members" {
                h2 #members { "Member alarms of this attack sequence" }
                div.table-wrap { table {
                    thead { tr { th scope="col" { "Alarm" } th scope="col" { "Severity" } th scope="col" { "Tactics" } th scope="col" { "First seen" } th scope="col" { "Last seen" } } }
                    tbody { @for m in &members { tr {
                        td { a href={ "/alarms/" (seg(&text(&m["alarm_id"]))) } { (text(&m["rule_id"])) } }
                        td { (severity(&text(&m["severity"]))) }
                        td { @for t in m["tactics"].as_array().into_iter().flatten() { span.tag { (text(t)) } " " } }
                        td { (time_text(&m["first_seen"])) }
                        td { (time_text(&m["last_seen"])) }
                    } } }
                } }
            }
        }
        div.columns {
            section aria-labelledby="ips" {
                h2 #ips { "Source IPs" }
                @let list = a["source_ips"].as_array().cloned().unwrap_or_default();
                @if list.is_empty() { (empty("No source IP (IP-hidden key, a service caller, or a leak report).")) }
                @else { div.table-wrap { table {
                    thead { tr { th scope="col" { "IP" } th scope="col" { "Location" } th scope="col" { "ASN / organisation" } th scope="col" { "Class" } } }
                    tbody { @for i in &list { tr {
                        td { (ip_link(&text(&i["ip"]))) }
                        // The alarm's source IP carries its place flattened (city, country, asn, as_org).
                        td { (location(i)) }
                        td { (asn(i)) }
                        td { (classes(&i["classes"])) }
                    } } }
                } } }
            }
            section aria-labelledby="apis" {
                h2 #apis { "APIs" }
                @let list = a["apis"].as_array().cloned().unwrap_or_default();
                @if list.is_empty() { (empty("No API call in this alarm.")) }
                @else { ul { @for x in &list { li.mono { (text(x)) } } } }
            }
        }
        (history(&a["history"]))
    };
    page(s, &text(&a["rule_name"]), "/alarms", content)
}

pub(super) async fn alarm_status(
    State(c): State<Arc<Console>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    axum::Form(form): Form,
) -> Response {
    triage(&c, &headers, &ALARM, &id, &form).await
}

/// A page of one item: the user, the item, the request's parameters, an error to show.
type ItemPage = fn(&Sess, &Value, &[(String, String)], Option<&str>) -> Response;

/// What is triaged: an alarm or a risk (its pages' base path, title, and page).
struct Triaged {
    base: &'static str,
    title: &'static str,
    render: ItemPage,
}

const ALARM: Triaged = Triaged {
    base: "/alarms",
    title: "Alarm",
    render: alarm_page,
};
const RISK: Triaged = Triaged {
    base: "/risks",
    title: "Configuration risk",
    render: risk_page,
};

/// A triage form's POST: the API's status change, then the item's page (with the API's
/// refusal in it when refused).
async fn triage(
    c: &Console,
    headers: &HeaderMap,
    t: &Triaged,
    id: &str,
    form: &[(String, String)],
) -> Response {
    let s = match require_post(c, headers, form) {
        Ok(s) => s,
        Err(r) => return *r,
    };
    let st = field(form, "status").unwrap_or_default().to_owned();
    let body = json!({"status": st, "comment": field(form, "comment").unwrap_or_default()});
    let path = format!("{}/{}", t.base, seg(id));
    match c
        .call(&s, Method::POST, &format!("{path}/status"), Some(&body))
        .await
    {
        Ok(_) => Redirect::to(&format!("{path}?done={}", seg(&st))).into_response(),
        Err(f) => match c.call(&s, Method::GET, &path, None).await {
            Ok(v) => (t.render)(&s, &v, &[], Some(&f.message)),
            Err(_) => failed(&s, t.title, t.base, &f),
        },
    }
}

/// The triage buttons of an alarm's or a risk's page.
fn triage_form(s: &Sess, action: &str, current: &str) -> Markup {
    html! {
        form method="post" action=(action) {
            (csrf(s))
            label for="triage-comment" { "Comment" }
            input #triage-comment type="text" name="comment" placeholder="what was done";
            button type="submit" name="status" value="handled" { "Mark handled" }
            button type="submit" name="status" value="ignored" { "Ignore" }
            @if current != "pending" { button type="submit" name="status" value="pending" { "Back to pending" } }
        }
    }
}

/// The history section of an alarm's or a risk's page (its audit entries).
fn history(list: &Value) -> Markup {
    let list = list.as_array().cloned().unwrap_or_default();
    html! {
        section aria-labelledby="history" {
            h2 #history { "History" }
            @if list.is_empty() { (empty("No change yet.")) } @else { (audit_table(&list)) }
        }
    }
}

pub(super) async fn alarm_allowlist_form(
    State(c): State<Arc<Console>>,
    headers: HeaderMap,
    uri: Uri,
    Path(id): Path<String>,
) -> Response {
    let path = format!("/alarms/{}", seg(&id));
    let s = match require(&c, &headers, &target(&uri)) {
        Ok(s) => s,
        Err(r) => return *r,
    };
    let a = match c.call(&s, Method::GET, &path, None).await {
        Ok(v) => v,
        Err(f) => return failed(&s, "Allowlist from an alarm", "/alarms", &f),
    };
    allowlist_page(&s, &a, &[], None, None)
}

fn allowlist_page(
    s: &Sess,
    a: &Value,
    form: &[(String, String)],
    preview: Option<&Value>,
    error: Option<&str>,
) -> Response {
    let id = text(&a["alarm_id"]);
    let has = |scope: &str| form.iter().any(|(k, v)| k == "scope" && v == scope);
    let value = |name: &str| field(form, name).unwrap_or("").to_owned();
    let content = html! {
        p.lead { (text(&a["summary"])) }
        p { "An allowlist entry made from this alarm covers its key (" span.mono { (text(&a["access_key_id"])) } ") and its rule (" span.mono { (text(&a["rule_id"])) } "), and — when chosen — only its source IPs or its APIs. Preview it first: the preview shows the entry as it would be saved and what it would have matched, and saves it from there (checked like the policy files, written to the API's policy file, the alarm marked allowlisted)." }
        @if let Some(e) = error { (flash("error", e)) }
        @if s.role < Role::Operator {
            (flash("info", "Viewers cannot allowlist: sign in with an operator or admin token."))
        } @else {
            form.editor method="post" action={ "/alarms/" (seg(&id)) "/allowlist" } {
                (csrf(s))
                fieldset {
                    legend { "Also limit the entry to" }
                    div.check { input #scope-ip type="checkbox" name="scope" value="ip" checked[has("ip")]; label for="scope-ip" { "the alarm's source IPs" } }
                    div.check { input #scope-api type="checkbox" name="scope" value="api" checked[has("api")]; label for="scope-api" { "the alarm's APIs" } }
                }
                div.field { label for="f-expires" { "Expires (optional)" } input #f-expires type="date" name="expires" value=(value("expires")); }
                (view::input("owner", "Owner", &value("owner"), "team or person (default: you)"))
                div.field { label for="f-comment" { "Why this is allowed (required)" } textarea #f-comment name="comment" rows="2" required maxlength="4096" { (value("comment")) } }
                div.buttons {
                    button type="submit" name="action" value="preview" { @if preview.is_some() { "Preview again" } @else { "Preview" } }
                }
            }
        }
        @if let Some(p) = preview {
            (preview_view(p))
            @if s.role >= Role::Operator {
                // Saving carries the previewed entry's fields and its digest: the entry is
                // saved only as it was shown (see `alarm_allowlist`).
                form.save method="post" action={ "/alarms/" (seg(&id)) "/allowlist" } aria-label="Save the previewed entry" {
                    (csrf(s))
                    @for (k, v) in form.iter().filter(|(k, _)| k == "scope") { input type="hidden" name=(k) value=(v); }
                    input type="hidden" name="expires" value=(value("expires"));
                    input type="hidden" name="owner" value=(value("owner"));
                    input type="hidden" name="comment" value=(value("comment"));
                    input type="hidden" name="previewed" value=(previewed_digest(s, &p["entry"]));
                    div.buttons { button.primary type="submit" name="action" value="save" { "Save this entry" } }
                }
            }
        }
        p { a href={ "/alarms/" (seg(&id)) } { "Back to the alarm" } }
    };
    page(s, "Allowlist from an alarm", "/alarms", content)
}

/// The digest a preview's Save form carries: the previewed entry, bound to the session (a
/// save re-runs the dry run and goes ahead only when the entry is still this one).
fn previewed_digest(s: &Sess, entry: &Value) -> String {
    crate::api::token_hash(&format!("{}|{entry}", s.csrf))
}

/// A dry run's answer: the entry as it would be saved, the file line, and what it would have
/// matched.
fn preview_view(p: &Value) -> Markup {
    let m = &p["preview"];
    html! {
        section.preview aria-labelledby="preview" {
            h2 #preview { "Preview (not saved)" }
            h3 { "The entry" }
            pre.entry { (serde_json::to_string_pretty(&p["entry"]).unwrap_or_default()) }
            @if !m.is_null() {
                h3 { "What it would have matched" }
                @if m["note"].is_string() { p.muted { (text(&m["note"])) } }
                @else {
                    p {
                        "In the " (int(&m["days"])) " days up to the newest invocation record ("
                        (time(int(&m["since"]))) " – " (time(int(&m["until"]))) "): "
                        strong { (int(&m["calls"])) " calls" } " of " (int(&m["distinct_keys"])) " keys from "
                        (int(&m["distinct_ips"])) " IPs to " (int(&m["distinct_apis"])) " APIs; "
                        strong { (int(&m["alarms"])) " stored alarms" } "."
                        @if m["truncated"] == json!(true) { " (Only the first rows were judged.)" }
                    }
                    @let nj = m["not_judged"].as_array().cloned().unwrap_or_default();
                    @if !nj.is_empty() { p.muted { "Not judged on the hourly records (they do not keep them): " @for x in &nj { span.mono { (text(x)) } " " } } }
                    div.columns {
                        (top_list("Keys", &m["top_keys"]))
                        (top_list("IPs", &m["top_ips"]))
                        (top_list("APIs", &m["top_apis"]))
                    }
                    @let samples = m["alarm_samples"].as_array().cloned().unwrap_or_default();
                    @if !samples.is_empty() {
                        h3 { "Alarms it covers" }
                        ul { @for x in &samples { li { (severity(&text(&x["severity"]))) " " a href={ "/alarms/" (seg(&text(&x["alarm_id"]))) } { (text(&x["rule_id"])) } " on " span.mono { (text(&x["key"])) } " (" (text(&x["status"])) ")" } } }
                    }
                }
            }
        }
    }
}

fn top_list(label: &str, v: &Value) -> Markup {
    let list = v.as_array().cloned().unwrap_or_default();
    html! {
        section {
            h4 { (label) }
            @if list.is_empty() { p.muted { "none" } }
            @else { ul.plain { @for x in &list { li { span.mono { (text(&x["value"])) } " — " (int(&x["calls"])) } } } }
        }
    }
}

pub(super) async fn alarm_allowlist(
    State(c): State<Arc<Console>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    axum::Form(form): Form,
) -> Response {
    let s = match require_post(&c, &headers, &form) {
        Ok(s) => s,
        Err(r) => return *r,
    };
    let path = format!("/alarms/{}", seg(&id));
    let a = match c.call(&s, Method::GET, &path, None).await {
        Ok(v) => v,
        Err(f) => return failed(&s, "Allowlist from an alarm", "/alarms", &f),
    };
    let mut body = serde_json::Map::new();
    body.insert(
        "comment".into(),
        json!(field(&form, "comment").unwrap_or_default()),
    );
    let scope: Vec<&str> = form
        .iter()
        .filter(|(k, _)| k == "scope")
        .map(|(_, v)| v.as_str())
        .collect();
    body.insert("scope".into(), json!(scope));
    for name in ["owner", "expires"] {
        if let Some(v) = field(&form, name).filter(|v| !v.trim().is_empty()) {
            body.insert(name.into(), json!(v.trim()));
        }
    }
    let refused = |f: Failed| {
        let mut r = allowlist_page(&s, &a, &form, None, Some(&f.message));
        *r.status_mut() = StatusCode::BAD_REQUEST;
        r
    };
    // Every POST is a dry run first: the entry as it would be saved.
    body.insert("dry_run".into(), json!(true));
    let uri = format!("{path}/allowlist");
    let preview = match c
        .call(&s, Method::POST, &uri, Some(&Value::Object(body.clone())))
        .await
    {
        Ok(p) => p,
        Err(f) => return refused(f),
    };
    // A save goes ahead only with the digest of a preview of this very entry (the Save button
    // of the preview carries it); otherwise the preview is shown, with its Save button.
    let digest = previewed_digest(&s, &preview["entry"]);
    let previewed = field(&form, "previewed")
        .is_some_and(|d| crate::api::constant_time_eq(d.as_bytes(), digest.as_bytes()));
    if field(&form, "action") != Some("save") || !previewed {
        let mut r = allowlist_page(&s, &a, &form, Some(&preview), None);
        if field(&form, "action") == Some("save") {
            r = allowlist_page(
                &s,
                &a,
                &form,
                Some(&preview),
                Some("Not saved: check the entry in the preview below, then save it from there."),
            );
            *r.status_mut() = StatusCode::CONFLICT;
        }
        return r;
    }
    body.insert("dry_run".into(), json!(false));
    match c
        .call(&s, Method::POST, &uri, Some(&Value::Object(body)))
        .await
    {
        Ok(_) => Redirect::to(&format!("{path}?done=allowlisted")).into_response(),
        Err(f) => refused(f),
    }
}

// ---------------------------------------------------------------------------------------------
// Risks

pub(super) async fn risks(
    State(c): State<Arc<Console>>,
    headers: HeaderMap,
    uri: Uri,
    Query(params): Params,
) -> Response {
    let s = match require(&c, &headers, &target(&uri)) {
        Ok(s) => s,
        Err(r) => return *r,
    };
    let q = api_query(
        &params,
        &[
            "status", "severity", "rule", "cloud", "account", "key", "present", "sort", "order",
            "offset", "limit",
        ],
    );
    let v = match c.call(&s, Method::GET, &format!("/risks?{q}"), None).await {
        Ok(v) => v,
        Err(f) => return failed(&s, "Configuration risks", "/risks", &f),
    };
    let ls = list_state("/risks", &params);
    let content = html! {
        form.filters method="get" action="/risks" aria-label="Filter risks" {
            (select("status", "Status", ls.get("status"), &[("", "Any status"), ("pending", "Pending"), ("handled", "Handled"), ("ignored", "Ignored")]))
            (select("severity", "Severity", ls.get("severity"), &SEVERITIES))
            (select("cloud", "Cloud", ls.get("cloud"), &CLOUDS))
            (select("present", "Still present", ls.get("present"), &[("", "Present or fixed"), ("1", "Still present"), ("0", "Fixed")]))
            button type="submit" { "Filter" }
            a href="/risks" { "Clear" }
        }
        @if items(&v).is_empty() {
            (empty("No configuration risk matches. Risks come from the credential reports (and permission snapshots) akwatch is given."))
        } @else { (risk_table(items(&v))) }
        (ls.pager(int(&v["total"]), int(&v["limit"]), int(&v["offset"])))
    };
    page(&s, "Configuration risks", "/risks", content)
}

pub(super) async fn risk(
    State(c): State<Arc<Console>>,
    headers: HeaderMap,
    uri: Uri,
    Path(id): Path<String>,
    Query(params): Params,
) -> Response {
    show(&c, &headers, &uri, &RISK, &id, &params).await
}

fn risk_page(s: &Sess, r: &Value, params: &[(String, String)], error: Option<&str>) -> Response {
    let id = text(&r["id"]);
    let skip = [
        "id",
        "name",
        "severity",
        "advice",
        "triage_status",
        "present",
        "first_seen",
        "last_seen",
        "history",
    ];
    let content = html! {
        (done(params))
        @if let Some(e) = error { (flash("error", e)) }
        (facts(&[
            ("Severity", severity(&text(&r["severity"]))),
            ("Triage status", status(&text(&r["triage_status"]))),
            ("Still present", html! { @if r["present"] == json!(true) { "yes: the newest reports still show it" } @else { "no: the newest reports no longer show it" } }),
            ("First seen", time(int(&r["first_seen"]))),
            ("Last seen", time(int(&r["last_seen"]))),
        ]))
        section aria-labelledby="evidence" {
            h2 #evidence { "Evidence" }
            dl.facts { @for (k, v) in r.as_object().into_iter().flatten() { @if !skip.contains(&k.as_str()) && !v.is_null() {
                dt { (k) } dd { @if let Value::Object(_) | Value::Array(_) = v { pre { (serde_json::to_string_pretty(v).unwrap_or_default()) } } @else if k == "key_id" { (key_link(&text(v))) } @else { (text(v)) } }
            } } }
        }
        section aria-labelledby="advice" { h2 #advice { "Advice" } (advice_list(&r["advice"])) }
        @if s.role >= Role::Operator {
            section.actions aria-labelledby="actions" {
                h2 #actions { "Triage" }
                (triage_form(s, &format!("/risks/{}/status", seg(&id)), &text(&r["triage_status"])))
            }
        }
        (history(&r["history"]))
    };
    page(s, &text(&r["name"]), "/risks", content)
}

pub(super) async fn risk_status(
    State(c): State<Arc<Console>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    axum::Form(form): Form,
) -> Response {
    triage(&c, &headers, &RISK, &id, &form).await
}

// ---------------------------------------------------------------------------------------------
// Policies

const KINDS: [(&str, &str); 3] = [
    ("allowlist", "Allowlist"),
    ("ip-hiding", "IP hiding"),
    ("alarm", "Alarm policy"),
];

fn kind_ok(k: &str) -> bool {
    KINDS.iter().any(|(x, _)| *x == k)
}

/// A list field's values: one per line or comma-separated.
fn list_values(v: &str) -> Vec<String> {
    v.split(['\n', ','])
        .map(str::trim)
        .filter(|x| !x.is_empty())
        .map(str::to_owned)
        .collect()
}

/// The entry a policy form describes (empty fields left out).
fn entry_from_form(kind: &str, form: &[(String, String)]) -> Value {
    let mut o = serde_json::Map::new();
    let get = |n: &str| field(form, n).map(str::trim).unwrap_or("");
    if !get("id").is_empty() {
        o.insert("id".into(), json!(get("id")));
    }
    let lists: &[&str] = match kind {
        "allowlist" => &["keys", "ips", "apis", "user_agent", "key_class", "rules"],
        "ip-hiding" => &["keys"],
        _ => &[],
    };
    for n in lists {
        let l = list_values(get(n));
        if !l.is_empty() {
            o.insert((*n).into(), json!(l));
        }
    }
    let scalars: &[&str] = match kind {
        "allowlist" => &["method", "outcome", "expires", "owner", "comment"],
        "ip-hiding" => &["expires", "owner", "comment"],
        _ => &[
            "severity",
            "aggregation",
            "renotify",
            "allowed_lateness",
            "expires",
            "owner",
        ],
    };
    for n in scalars {
        if !get(n).is_empty() {
            o.insert((*n).into(), json!(get(n)));
        }
    }
    if kind == "alarm" {
        match get("enabled") {
            "true" => {
                o.insert("enabled".into(), json!(true));
            }
            "false" => {
                o.insert("enabled".into(), json!(false));
            }
            _ => {}
        }
        let mut t = serde_json::Map::new();
        for line in get("thresholds").lines() {
            if let Some((k, v)) = line.split_once('=') {
                t.insert(k.trim().into(), json!(v.trim()));
            }
        }
        if !t.is_empty() {
            o.insert("thresholds".into(), Value::Object(t));
        }
    }
    Value::Object(o)
}

/// The form's values from an entry (editing one, or prefilled from the query).
fn form_from_entry(id: &str, e: &Value) -> Vec<(String, String)> {
    let mut out = vec![("id".to_owned(), id.to_owned())];
    for (k, v) in e.as_object().into_iter().flatten() {
        let s = match v {
            Value::Array(l) => l.iter().map(text).collect::<Vec<_>>().join("\n"),
            Value::Object(m) => m
                .iter()
                .map(|(a, b)| format!("{a}={}", text(b)))
                .collect::<Vec<_>>()
                .join("\n"),
            other => text(other),
        };
        out.push((k.clone(), s));
    }
    out
}

fn editor(s: &Sess, kind: &str, action: &str, form: &[(String, String)], editing: bool) -> Markup {
    let get = |n: &str| field(form, n).unwrap_or("").to_owned();
    let area = |n: &str, label: &str, hint: &str| {
        let id = format!("p-{n}");
        html! { div.field { label for=(id) { (label) } textarea id=(id) name=(n) rows="2" placeholder=(hint) { (get(n)) } } }
    };
    let line = |n: &str, label: &str, hint: &str, ty: &str| {
        let id = format!("p-{n}");
        // A date box holds a date only: an entry expiring at an RFC 3339 time is edited as
        // text (a date box would drop the value, and saving would drop the expiry).
        let v = get(n);
        let ty = if ty == "date"
            && !v.is_empty()
            && chrono::NaiveDate::parse_from_str(&v, "%Y-%m-%d").is_err()
        {
            "text"
        } else {
            ty
        };
        html! { div.field { label for=(id) { (label) } input id=(id) type=(ty) name=(n) value=(get(n)) placeholder=(hint); } }
    };
    html! {
        form.editor #editor method="post" action=(action) {
            (csrf(s))
            @if editing { input type="hidden" name="id" value=(get("id")); p { "Entry " span.mono { (get("id")) } } }
            @else { (line("id", if kind == "alarm" { "Rule id (the rule this policy sets)" } else { "Entry id" }, if kind == "alarm" { "e.g. ak.new_source_ip" } else { "letters, digits and . _ : - @" }, "text")) }
            @match kind {
                "allowlist" => {
                    (area("keys", "Access keys (one per line)", "AKIA…"))
                    (area("ips", "Source IPs or CIDRs", "203.0.113.0/24"))
                    (area("apis", "APIs (service:action globs)", "iam:*AccessKey*"))
                    (area("user_agent", "User agents (globs)", "terraform/*"))
                    (area("key_class", "Key classes", "permanent, temporary or root"))
                    (area("rules", "Rules in scope (all when empty)", "ak.new_source_ip"))
                    (select("method", "Method", &get("method"), &[("", "Any"), ("api", "API"), ("console", "Console")]))
                    (select("outcome", "Outcome", &get("outcome"), &[("", "Any"), ("success", "Success"), ("failure", "Failure")]))
                    (line("expires", "Expires (events from then on are not covered)", "2026-12-31", "date"))
                    (line("owner", "Owner", "team or person", "text"))
                    (area("comment", "Comment (why)", "CI deploys from the runner pool"))
                }
                "ip-hiding" => {
                    (area("keys", "Access keys whose IPs are hidden (one per line)", "AKIA…"))
                    (line("expires", "Expires (events from then on are not hidden)", "2026-12-31", "date"))
                    (line("owner", "Owner", "team or person", "text"))
                    (area("comment", "Comment (why)", "partner integration: its IPs are theirs"))
                }
                _ => {
                    (select("enabled", "Enabled", &get("enabled"), &[("", "As the rule says"), ("true", "Enabled"), ("false", "Disabled")]))
                    (select("severity", "Severity", &get("severity"), &SEVERITIES))
                    (area("thresholds", "Thresholds (name=value per line)", "history=14d"))
                    (line("aggregation", "Aggregation window", "1d", "text"))
                    (line("renotify", "Renotify after", "1h", "text"))
                    (line("allowed_lateness", "Allowed lateness", "15m", "text"))
                    (line("expires", "Expires (events from then on get the rule's defaults)", "2026-12-31", "date"))
                    (line("owner", "Owner", "team or person", "text"))
                }
            }
            div.buttons {
                button type="submit" name="action" value="preview" { "Preview" }
                button.primary type="submit" name="action" value="save" { "Save" }
                @if editing { button.danger type="submit" name="action" value="delete" { "Delete" } }
            }
        }
    }
}

async fn policies_page(
    c: &Console,
    s: &Sess,
    kind: &str,
    form: &[(String, String)],
    params: &[(String, String)],
    preview: Option<&Value>,
    error: Option<&str>,
) -> Response {
    let v = match c
        .call(s, Method::GET, &format!("/policies/{kind}"), None)
        .await
    {
        Ok(v) => v,
        Err(f) => return failed(s, "Policies", "/policies", &f),
    };
    let content = html! {
        nav.tabs aria-label="Policy kinds" { @for (k, label) in KINDS {
            @if k == kind { a href={ "/policies/" (k) } aria-current="page" { (label) } } @else { a href={ "/policies/" (k) } { (label) } }
        } }
        (done(params))
        @if let Some(e) = error { (flash("error", e)) }
        @if items(&v).is_empty() {
            (empty("No entries. Entries come from the policy files (read-only here) and from this editor."))
        } @else {
            div.table-wrap { table {
                thead { tr { th scope="col" { "Id" } th scope="col" { "Entry" } th scope="col" { "Source" } th scope="col" { "Owner" } th scope="col" { "Expires" } th scope="col" { "Updated" } } }
                tbody { @for e in items(&v) { tr {
                    td { a href={ "/policies/" (kind) "/" (seg(&text(&e["id"]))) } { (text(&e["id"])) } }
                    td.mono.wrap { (e["entry"].to_string()) }
                    td { @if e["editable"] == json!(true) { "console / API" } @else { span.muted { (text(&e["file"])) } } }
                    td { (text(&e["entry"]["owner"])) }
                    td { (expiry(&e["entry"]["expires"])) }
                    td { @if e["updated"].is_number() { (time(int(&e["updated"]))) " by " (text(&e["updated_by"])) } }
                } } }
            } }
        }
        @if s.role >= Role::Admin {
            section aria-labelledby="new" {
                h2 #new { "New entry" }
                p.muted { "Checked by the same loader as the policy files, with the same messages; saved entries are written to the API's policy file and applied by running services within a second." }
                (editor(s, kind, &format!("/policies/{kind}"), form, false))
            }
            @if let Some(p) = preview { (preview_view(p)) }
        } @else {
            (flash("info", "Editing policies needs an admin token."))
        }
    };
    page(s, "Policies", "/policies", content)
}

pub(super) async fn policies(
    State(c): State<Arc<Console>>,
    headers: HeaderMap,
    uri: Uri,
    Path(kind): Path<String>,
    Query(params): Params,
) -> Response {
    let s = match require(&c, &headers, &target(&uri)) {
        Ok(s) => s,
        Err(r) => return *r,
    };
    if !kind_ok(&kind) {
        return not_found_page(&s);
    }
    // Prefilled from the query (e.g. a key's "Allowlist this key").
    let prefill: Vec<(String, String)> = params
        .iter()
        .filter(|(k, _)| k != "done")
        .cloned()
        .collect();
    policies_page(&c, &s, &kind, &prefill, &params, None, None).await
}

pub(super) async fn policy_new(
    State(c): State<Arc<Console>>,
    headers: HeaderMap,
    Path(kind): Path<String>,
    axum::Form(form): Form,
) -> Response {
    let s = match require_post(&c, &headers, &form) {
        Ok(s) => s,
        Err(r) => return *r,
    };
    if !kind_ok(&kind) {
        return not_found_page(&s);
    }
    let entry = entry_from_form(&kind, &form);
    let preview = field(&form, "action") == Some("preview");
    let uri = format!(
        "/policies/{kind}{}",
        if preview { "?dry_run=true" } else { "" }
    );
    match c.call(&s, Method::POST, &uri, Some(&entry)).await {
        Ok(p) if preview => policies_page(&c, &s, &kind, &form, &[], Some(&p), None).await,
        Ok(_) => Redirect::to(&format!("/policies/{kind}?done=saved")).into_response(),
        Err(f) => {
            let mut r = policies_page(&c, &s, &kind, &form, &[], None, Some(&f.message)).await;
            *r.status_mut() = f.status;
            r
        }
    }
}

pub(super) async fn policy_edit(
    State(c): State<Arc<Console>>,
    headers: HeaderMap,
    uri: Uri,
    Path((kind, id)): Path<(String, String)>,
    Query(params): Params,
) -> Response {
    let path = format!("/policies/{}/{}", seg(&kind), seg(&id));
    let s = match require(&c, &headers, &target(&uri)) {
        Ok(s) => s,
        Err(r) => return *r,
    };
    let e = match c.call(&s, Method::GET, &path, None).await {
        Ok(v) => v,
        Err(f) => return failed(&s, "Policy entry", "/policies", &f),
    };
    policy_page(
        &s,
        &kind,
        &e,
        &form_from_entry(&id, &e["entry"]),
        &params,
        None,
        None,
    )
}

fn policy_page(
    s: &Sess,
    kind: &str,
    e: &Value,
    form: &[(String, String)],
    params: &[(String, String)],
    preview: Option<&Value>,
    error: Option<&str>,
) -> Response {
    let id = text(&e["id"]);
    let editable = e["editable"] == json!(true);
    let content = html! {
        (done(params))
        @if let Some(e) = error { (flash("error", e)) }
        (facts(&[
            ("Kind", html! { (kind) }),
            ("Source", html! { @if editable { "made in the console / API, rendered to " (text(&e["file"])) } @else { (text(&e["file"])) " (a policy file: change it in git)" } }),
            ("Updated", html! { @if e["updated"].is_number() { (time(int(&e["updated"]))) " by " (text(&e["updated_by"])) } @else { "—" } }),
            ("Owner", html! { @if e["entry"]["owner"].is_string() { (text(&e["entry"]["owner"])) } @else { span.muted { "—" } } }),
            ("Expires", expiry(&e["entry"]["expires"])),
        ]))
        pre.entry { (serde_json::to_string_pretty(&e["entry"]).unwrap_or_default()) }
        @if editable && s.role >= Role::Admin {
            h2 { "Edit" }
            (editor(s, kind, &format!("/policies/{}/{}", seg(kind), seg(&id)), form, true))
        }
        @if let Some(p) = preview { (preview_view(p)) }
        p { a href={ "/policies/" (kind) } { "All " (kind) " entries" } }
    };
    page(s, &format!("Policy entry {id}"), "/policies", content)
}

pub(super) async fn policy_save(
    State(c): State<Arc<Console>>,
    headers: HeaderMap,
    Path((kind, id)): Path<(String, String)>,
    axum::Form(form): Form,
) -> Response {
    let s = match require_post(&c, &headers, &form) {
        Ok(s) => s,
        Err(r) => return *r,
    };
    let path = format!("/policies/{}/{}", seg(&kind), seg(&id));
    let action = field(&form, "action").unwrap_or("save");
    let result = match action {
        "delete" => c.call(&s, Method::DELETE, &path, None).await,
        _ => {
            let entry = entry_from_form(&kind, &form);
            let uri = if action == "preview" {
                format!("{path}?dry_run=true")
            } else {
                path.clone()
            };
            c.call(&s, Method::PUT, &uri, Some(&entry)).await
        }
    };
    match (action, result) {
        ("delete", Ok(_)) => {
            Redirect::to(&format!("/policies/{}?done=deleted", seg(&kind))).into_response()
        }
        ("preview", Ok(p)) => match c.call(&s, Method::GET, &path, None).await {
            Ok(e) => policy_page(&s, &kind, &e, &form, &[], Some(&p), None),
            Err(f) => failed(&s, "Policy entry", "/policies", &f),
        },
        (_, Ok(_)) => Redirect::to(&format!("{path}?done=saved")).into_response(),
        (_, Err(f)) => match c.call(&s, Method::GET, &path, None).await {
            Ok(e) => {
                let mut r = policy_page(&s, &kind, &e, &form, &[], None, Some(&f.message));
                *r.status_mut() = f.status;
                r
            }
            Err(_) => failed(&s, "Policy entry", "/policies", &f),
        },
    }
}

// ---------------------------------------------------------------------------------------------
// Audit log

fn audit_table(list: &[Value]) -> Markup {
    html! {
        div.table-wrap { table {
            thead { tr { th scope="col" { "When" } th scope="col" { "Who" } th scope="col" { "Action" } th scope="col" { "Target" } th scope="col" { "Change" } th scope="col" { "Comment" } } }
            tbody { @for r in list { tr {
                td { (time(int(&r["at"]))) }
                td { (text(&r["actor"])) }
                td.mono { (text(&r["action"])) }
                td.mono.wrap { (audit_target(&text(&r["action"]), &text(&r["target"]))) }
                td.wrap { @if !text(&r["before_value"]).is_empty() || !text(&r["after_value"]).is_empty() { span.muted { (short(&text(&r["before_value"]))) } " → " (short(&text(&r["after_value"]))) } }
                td.wrap { (text(&r["comment"])) }
            } } }
        } }
    }
}

fn short(s: &str) -> String {
    if s.chars().count() > 160 {
        let mut t: String = s.chars().take(160).collect();
        t.push('…');
        t
    } else {
        s.to_owned()
    }
}

fn audit_target(action: &str, target: &str) -> Markup {
    let href = if action.starts_with("alarm.") {
        Some(format!("/alarms/{}", seg(target)))
    } else if action.starts_with("risk.") {
        Some(format!("/risks/{}", seg(target)))
    } else if action.starts_with("ip.") {
        Some(format!("/ips/{}", seg(target)))
    } else {
        target
            .strip_prefix("policy:")
            .and_then(|r| r.split_once(':'))
            .map(|(k, id)| format!("/policies/{}/{}", seg(k), seg(id)))
    };
    match href {
        Some(h) if !target.is_empty() => html! { a href=(h) { (target) } },
        _ => html! { (target) },
    }
}

pub(super) async fn audit(
    State(c): State<Arc<Console>>,
    headers: HeaderMap,
    uri: Uri,
    Query(params): Params,
) -> Response {
    let s = match require(&c, &headers, &target(&uri)) {
        Ok(s) => s,
        Err(r) => return *r,
    };
    let q = api_query(&params, &["offset", "limit"]);
    let v = match c.call(&s, Method::GET, &format!("/audit?{q}"), None).await {
        Ok(v) => v,
        Err(f) => return failed(&s, "Audit log", "/audit", &f),
    };
    let ls = list_state("/audit", &params);
    let content = html! {
        @if items(&v).is_empty() { (empty("No changes yet: every triage, note and policy change is recorded here.")) }
        @else { (audit_table(items(&v))) }
        (ls.pager(int(&v["total"]), int(&v["limit"]), int(&v["offset"])))
    };
    page(&s, "Audit log", "/audit", content)
}

fn not_found_page(s: &Sess) -> Response {
    page_with(
        StatusCode::NOT_FOUND,
        s,
        "Not found",
        "",
        html! { p { "There is no such page. " a href="/" { "Back to the overview" } } },
    )
}

pub(super) async fn not_found(
    State(c): State<Arc<Console>>,
    headers: HeaderMap,
    uri: Uri,
) -> Response {
    match require(&c, &headers, &target(&uri)) {
        Ok(s) => not_found_page(&s),
        Err(r) => *r,
    }
}
