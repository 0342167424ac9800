//! The console as a browser meets it, in process (the headless-Chromium run is
//! tests/browser/console_test.py): sign-in and its cookie, the CSP, CSRF and origin checks,
//! escaping, what a viewer sees, and the API's filters and dry runs the pages use.

use axum::body::Body;
use axum::http::{Request, StatusCode};
use serde_json::json;
use tower::ServiceExt as _;

use crate::api::{ADMIN, Backend, OPERATOR, VIEWER, call, fixture, get};

const LEAKED: &str = "AKIASIM0000000000000";

struct Page {
    status: StatusCode,
    headers: axum::http::HeaderMap,
    body: String,
}

async fn send(app: &axum::Router, req: Request<Body>) -> Page {
    let resp = app.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let headers = resp.headers().clone();
    let bytes = axum::body::to_bytes(resp.into_body(), 1 << 24)
        .await
        .unwrap();
    Page {
        status,
        headers,
        body: String::from_utf8_lossy(&bytes).into_owned(),
    }
}

async fn page(app: &axum::Router, path: &str, cookie: &str) -> Page {
    let req = Request::get(path)
        .header("cookie", cookie)
        .header("host", "console.test")
        .body(Body::empty())
        .unwrap();
    send(app, req).await
}

async fn post(app: &axum::Router, path: &str, cookie: &str, form: &[(&str, &str)]) -> Page {
    let req = Request::post(path)
        .header("cookie", cookie)
        .header("host", "console.test")
        .header("origin", "http://console.test")
        .header("content-type", "application/x-www-form-urlencoded")
        .body(Body::from(serde_urlencoded::to_string(form).unwrap()))
        .unwrap();
    send(app, req).await
}

/// Posts the sign-in form as a browser does: the form's CSRF value and cookie from the sign-in
/// page, then `token` and `next`.
async fn login(app: &axum::Router, token: &str, next: &str, tls: bool) -> Page {
    let form = page(
        app,
        &format!(
            "/login?{}",
            serde_urlencoded::to_string([("next", next)]).unwrap()
        ),
        "",
    )
    .await;
    assert_eq!(form.status, StatusCode::OK);
    let set = form.headers["set-cookie"].to_str().unwrap();
    assert!(
        set.starts_with("akwatch_login=") && set.contains("HttpOnly"),
        "{set}"
    );
    let cookie = set.split(';').next().unwrap().to_owned();
    let field = csrf(&form.body);
    let mut req = Request::post("/login")
        .header("host", "console.test")
        .header("origin", "http://console.test")
        .header("cookie", cookie)
        .header("content-type", "application/x-www-form-urlencoded");
    if tls {
        req = req.header("x-forwarded-proto", "https");
    }
    let body =
        serde_urlencoded::to_string([("token", token), ("next", next), ("csrf", field.as_str())])
            .unwrap();
    send(app, req.body(Body::from(body)).unwrap()).await
}

/// Signs in with `token`: the session cookie (`name=value`) and its Set-Cookie line.
async fn sign_in(app: &axum::Router, token: &str, tls: bool) -> (String, String) {
    let p = login(app, token, "/alarms?status=pending", tls).await;
    assert_eq!(p.status, StatusCode::SEE_OTHER, "{}", p.body);
    assert_eq!(p.headers["location"], "/alarms?status=pending");
    let set = p
        .headers
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .find(|v| v.starts_with("akwatch_session="))
        .unwrap();
    (set.split(';').next().unwrap().to_owned(), set)
}

/// The CSRF token of the first form of a page.
fn csrf(body: &str) -> String {
    let at = body
        .find("name=\"csrf\" value=\"")
        .expect("a form with a CSRF field")
        + 19;
    body[at..at + 64].to_owned()
}

fn post_forms(body: &str) -> Vec<String> {
    body.match_indices("<form method=\"post\" action=\"")
        .map(|(i, m)| {
            let rest = &body[i + m.len()..];
            rest[..rest.find('"').unwrap()].to_owned()
        })
        .collect()
}

#[tokio::test]
async fn sign_in_sessions_csp_and_csrf() {
    let f = fixture(Backend::Sqlite).await;
    // No session: every page sends to the sign-in page, with the CSP on.
    let p = page(&f.app, "/keys?kind=permanent", "").await;
    assert_eq!(p.status, StatusCode::SEE_OTHER);
    assert_eq!(
        p.headers["location"], "/login?next=%2Fkeys%3Fkind%3Dpermanent",
        "the filters survive sign-in"
    );
    let csp = p.headers["content-security-policy"].to_str().unwrap();
    assert!(csp.contains("default-src 'none'") && csp.contains("script-src 'self'"));
    assert!(!csp.contains("unsafe-inline"), "{csp}");
    // A wrong token: refused, no session.
    let p = login(&f.app, "nope", "/", false).await;
    assert_eq!(p.status, StatusCode::UNAUTHORIZED);
    assert!(p.body.contains("not valid"));
    assert!(
        !p.headers
            .get_all("set-cookie")
            .iter()
            .any(|v| v.to_str().unwrap().starts_with("akwatch_session="))
    );
    // The sign-in form without its CSRF value (a login forged from another page): refused.
    let body = serde_urlencoded::to_string([("token", VIEWER)]).unwrap();
    let p = send(
        &f.app,
        Request::post("/login")
            .header("content-type", "application/x-www-form-urlencoded")
            .body(Body::from(body))
            .unwrap(),
    )
    .await;
    assert_eq!(p.status, StatusCode::FORBIDDEN);
    // The cookie: HttpOnly, SameSite=Strict; Secure behind TLS.
    let (_, set) = sign_in(&f.app, VIEWER, false).await;
    assert!(
        set.contains("HttpOnly") && set.contains("SameSite=Strict") && !set.contains("Secure"),
        "{set}"
    );
    let (_, set) = sign_in(&f.app, VIEWER, true).await;
    assert!(set.contains("; Secure"), "{set}");
    // Sign-in never follows a link off this console (a tab is dropped by browsers: `/\t/x`
    // would be `//x`).
    for next in [
        "//evil.example/",
        "/\t/evil.example",
        "/\\evil.example",
        "https://evil.example/",
        "/ok\nLocation: x",
    ] {
        let p = login(&f.app, VIEWER, next, false).await;
        assert_eq!(p.status, StatusCode::SEE_OTHER, "{next:?}");
        assert_eq!(p.headers["location"], "/", "{next:?}");
    }

    // An operator's form without the CSRF token, or from another origin, changes nothing.
    let (cookie, _) = sign_in(&f.app, OPERATOR, false).await;
    let ip = get(&f.app, "/api/v1/ips?sort=calls").await["items"][0]["ip"]
        .as_str()
        .unwrap()
        .to_owned();
    let path = format!("/ips/{ip}/note");
    let p = post(&f.app, &path, &cookie, &[("note", "forged")]).await;
    assert_eq!(p.status, StatusCode::FORBIDDEN);
    let token = csrf(&page(&f.app, &format!("/ips/{ip}"), &cookie).await.body);
    let req = Request::post(&path)
        .header("cookie", &cookie)
        .header("host", "console.test")
        .header("origin", "http://evil.example")
        .header("content-type", "application/x-www-form-urlencoded")
        .body(Body::from(
            serde_urlencoded::to_string([("note", "forged"), ("csrf", token.as_str())]).unwrap(),
        ))
        .unwrap();
    assert_eq!(send(&f.app, req).await.status, StatusCode::FORBIDDEN);
    assert_eq!(get(&f.app, &format!("/api/v1/ips/{ip}")).await["note"], "");

    // With the token: saved, audited, and shown as text.
    let nasty = "<script>alert(1)</script> & \"x\"";
    let p = post(&f.app, &path, &cookie, &[("note", nasty), ("csrf", &token)]).await;
    assert_eq!(p.status, StatusCode::SEE_OTHER, "{}", p.body);
    assert_eq!(
        get(&f.app, &format!("/api/v1/ips/{ip}")).await["note"],
        nasty
    );
    let shown = page(&f.app, &format!("/ips/{ip}"), &cookie).await.body;
    assert!(
        shown.contains("&lt;script&gt;alert(1)&lt;/script&gt; &amp; &quot;x&quot;"),
        "{shown}"
    );
    assert!(!shown.contains("<script>alert"), "the note is escaped");
    assert!(!shown.contains("<script>") || !shown.contains("<script>a"));
    let list = page(&f.app, "/ips?sort=calls", &cookie).await.body;
    assert!(list.contains("&lt;script&gt;alert(1)") && !list.contains("<script>alert"));

    // Signing out ends the session.
    let logout_token = csrf(&page(&f.app, "/", &cookie).await.body);
    let p = post(&f.app, "/logout", &cookie, &[("csrf", &logout_token)]).await;
    assert_eq!(p.status, StatusCode::SEE_OTHER);
    assert_eq!(
        page(&f.app, "/", &cookie).await.status,
        StatusCode::SEE_OTHER
    );
}

#[tokio::test]
async fn every_page_renders_and_a_viewer_sees_no_write_action() {
    let f = fixture(Backend::Sqlite).await;
    let alarm = get(&f.app, &format!("/api/v1/alarms?key={LEAKED}")).await["items"][0]["alarm_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let risk = get(&f.app, "/api/v1/risks").await["items"][0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let acct = get(&f.app, "/api/v1/accounts").await["items"][0].clone();
    let ip = get(&f.app, "/api/v1/ips").await["items"][0]["ip"]
        .as_str()
        .unwrap()
        .to_owned();
    let pages = [
        "/".to_owned(),
        "/?days=30".into(),
        "/keys".into(),
        "/keys?status=active&has_alarms=1&sort=calls&order=asc".into(),
        format!("/keys/{LEAKED}"),
        "/ips".into(),
        format!("/ips/{ip}"),
        "/accounts".into(),
        format!(
            "/accounts/{}/{}",
            acct["cloud"].as_str().unwrap(),
            acct["account"].as_str().unwrap()
        ),
        "/alarms?status=pending&severity=critical".into(),
        format!("/alarms/{alarm}"),
        format!("/alarms/{alarm}/allowlist"),
        "/risks".into(),
        format!("/risks/{risk}"),
        "/policies/allowlist".into(),
        "/policies/ip-hiding".into(),
        "/policies/alarm".into(),
        "/audit".into(),
    ];
    let (viewer, _) = sign_in(&f.app, VIEWER, false).await;
    let (admin, _) = sign_in(&f.app, ADMIN, false).await;
    for path in &pages {
        let p = page(&f.app, path, &viewer).await;
        assert_eq!(p.status, StatusCode::OK, "{path}: {}", p.body);
        assert!(p.body.contains("<h1>"), "{path}");
        assert!(
            !p.body.contains("style="),
            "{path}: an inline style (the CSP refuses it)"
        );
        assert!(!p.body.contains("<script>"), "{path}: an inline script");
        assert_eq!(
            post_forms(&p.body),
            vec!["/logout"],
            "{path}: a viewer sees a write form"
        );
        assert!(
            !p.body.contains("class=\"button\""),
            "{path}: a viewer sees an action"
        );
        let a = page(&f.app, path, &admin).await;
        assert_eq!(a.status, StatusCode::OK, "{path}");
    }
    // The admin does see the actions.
    let a = page(&f.app, &format!("/alarms/{alarm}"), &admin).await.body;
    assert!(post_forms(&a).contains(&format!("/alarms/{alarm}/status")));
    let k = page(&f.app, &format!("/keys/{LEAKED}"), &admin).await.body;
    assert!(k.contains(&format!("/policies/allowlist?keys={LEAKED}")));
    assert!(post_forms(&k).contains(&format!("/keys/{LEAKED}/hide")));
    // The key's page: its leak alarm, advice, and the calls-per-day chart drawn by plotters.
    assert!(k.contains("ak.leaked_key_use") || k.contains(&alarm));
    assert!(k.contains("<svg") && k.contains("<rect"));
    // An unknown page: 404 inside the console.
    assert_eq!(
        page(&f.app, "/nope", &viewer).await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        page(&f.app, "/keys/NOPE", &viewer).await.status,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn triage_and_allowlist_through_the_forms() {
    let f = fixture(Backend::Sqlite).await;
    let (op, _) = sign_in(&f.app, OPERATOR, false).await;
    let pending = get(&f.app, "/api/v1/alarms?status=pending&limit=500").await;
    let items = pending["items"].as_array().unwrap();
    let ids: Vec<&str> = items
        .iter()
        .take(3)
        .map(|a| a["alarm_id"].as_str().unwrap())
        .collect();
    // Bulk triage.
    let token = csrf(&page(&f.app, "/alarms?status=pending", &op).await.body);
    let mut form = vec![
        ("csrf", token.as_str()),
        ("status", "ignored"),
        ("comment", "bulk"),
        ("back", "/alarms?status=pending"),
    ];
    form.extend(ids[..2].iter().map(|i| ("id", *i)));
    let p = post(&f.app, "/alarms/triage", &op, &form).await;
    assert_eq!(p.status, StatusCode::SEE_OTHER, "{}", p.body);
    assert_eq!(p.headers["location"], "/alarms?status=pending&done=triaged");
    for id in &ids[..2] {
        assert_eq!(
            get(&f.app, &format!("/api/v1/alarms/{id}")).await["triage_status"],
            "ignored"
        );
    }
    assert_eq!(
        get(&f.app, &format!("/api/v1/alarms/{}", ids[2])).await["triage_status"],
        "pending"
    );
    // A bad status: the API's message, in the page.
    let p = post(
        &f.app,
        &format!("/alarms/{}/status", ids[2]),
        &op,
        &[("csrf", &token), ("status", "deleted")],
    )
    .await;
    assert!(p.body.contains("status must be"), "{}", p.body);
    // Allowlist from an alarm: a preview stores nothing and shows the entry.
    let allow = items
        .iter()
        .skip(3)
        .filter(|a| a["rule_id"] != "ak.attack_sequence")
        .find(|a| a["access_key_id"].is_string() && !a["source_ips"].as_array().unwrap().is_empty())
        .unwrap();
    let id = allow["alarm_id"].as_str().unwrap();
    let path = format!("/alarms/{id}/allowlist");
    let form = [
        ("csrf", token.as_str()),
        ("scope", "ip"),
        ("comment", "office"),
        ("action", "preview"),
    ];
    let p = post(&f.app, &path, &op, &form).await;
    assert_eq!(p.status, StatusCode::OK, "{}", p.body);
    assert!(
        p.body.contains("What it would have matched")
            && p.body.contains(allow["access_key_id"].as_str().unwrap())
    );
    let at = p.body.find("name=\"previewed\" value=\"").unwrap() + 24;
    let previewed = p.body[at..at + 64].to_owned();
    assert_eq!(
        get(&f.app, &format!("/api/v1/alarms/{id}")).await["triage_status"],
        "pending"
    );
    assert!(!f.policy_dir.join("api-allowlist.yaml").exists());
    // Without a comment: refused with the API's message.
    let p = post(&f.app, &path, &op, &[("csrf", &token), ("action", "save")]).await;
    assert_eq!(p.status, StatusCode::BAD_REQUEST);
    assert!(p.body.contains("a comment"), "{}", p.body);
    // Saved, from the preview.
    let form = [
        ("csrf", token.as_str()),
        ("scope", "ip"),
        ("comment", "office"),
        ("previewed", previewed.as_str()),
        ("action", "save"),
    ];
    let p = post(&f.app, &path, &op, &form).await;
    assert_eq!(p.status, StatusCode::SEE_OTHER, "{}", p.body);
    assert_eq!(
        get(&f.app, &format!("/api/v1/alarms/{id}")).await["triage_status"],
        "allowlisted"
    );
    let file = std::fs::read_to_string(f.policy_dir.join("api-allowlist.yaml")).unwrap();
    assert!(file.contains(&format!("alarm-{id}")), "{file}");
    let audit = page(&f.app, "/audit", &op).await.body;
    assert!(audit.contains("alarm.allowlist") && audit.contains("ignored"));
}

#[tokio::test]
async fn key_filters_and_policy_dry_runs() {
    let f = fixture(Backend::Sqlite).await;
    let all = get(&f.app, "/api/v1/keys?limit=500").await;
    let total = all["total"].as_i64().unwrap();
    // Report status per key, and the filter by it, add up.
    let mut sum = 0;
    for st in akwatch::api::KEY_STATUSES {
        let v = get(&f.app, &format!("/api/v1/keys?status={st}&limit=500")).await;
        for k in v["items"].as_array().unwrap() {
            assert_eq!(k["status"], st);
        }
        sum += v["total"].as_i64().unwrap();
    }
    assert_eq!(sum, total);
    // The key list filtered by last use keeps working through its sort and pager links.
    let (viewer, _) = sign_in(&f.app, VIEWER, false).await;
    let p = page(&f.app, "/keys?used_since=2025-06-01", &viewer).await;
    assert_eq!(p.status, StatusCode::OK);
    let link = p
        .body
        .split("href=\"")
        .map(|x| &x[..x.find('"').unwrap_or(0)])
        .find(|h| h.starts_with("/keys?") && h.contains("sort=calls"))
        .unwrap()
        .replace("&amp;", "&");
    assert!(
        link.contains("used_since=2025-06-01") && !link.contains("since=17"),
        "{link}"
    );
    let p = page(&f.app, &link, &viewer).await;
    assert_eq!(p.status, StatusCode::OK, "{link}: {}", p.body);
    let with = get(&f.app, "/api/v1/keys?has_alarms=1&limit=500").await;
    let without = get(&f.app, "/api/v1/keys?has_alarms=0&limit=1").await;
    assert_eq!(
        with["total"].as_i64().unwrap() + without["total"].as_i64().unwrap(),
        total
    );
    assert!(
        with["items"]
            .as_array()
            .unwrap()
            .iter()
            .all(|k| k["pending_alarms"].as_i64().unwrap() > 0)
    );
    let (s, _) = call(
        &f.app,
        "GET",
        "/api/v1/keys?status=bogus",
        Some(VIEWER),
        None,
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    // "Hide its IPs" from a key's page (admin): an IP-hiding entry, the page says so at once
    // and offers it no more.
    let (admin, _) = sign_in(&f.app, ADMIN, false).await;
    let key_page = format!("/keys/{LEAKED}");
    let body = page(&f.app, &key_page, &admin).await.body;
    assert!(post_forms(&body).contains(&format!("{key_page}/hide")));
    let p = post(
        &f.app,
        &format!("{key_page}/hide"),
        &admin,
        &[("csrf", &csrf(&body)), ("comment", "partner")],
    )
    .await;
    assert_eq!(p.status, StatusCode::SEE_OTHER, "{}", p.body);
    let body = page(&f.app, &key_page, &admin).await.body;
    assert!(body.contains("on: its source IPs are not kept"));
    assert!(!post_forms(&body).contains(&format!("{key_page}/hide")));
    let hidden = get(&f.app, "/api/v1/policies/ip-hiding").await;
    assert!(
        hidden["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["entry"]["keys"][0] == LEAKED)
    );
    // A policy dry run: checked, previewed, not stored.
    let entry = json!({"id": "office", "keys": [LEAKED], "comment": "x"});
    let (s, v) = call(
        &f.app,
        "POST",
        "/api/v1/policies/allowlist?dry_run=true",
        Some(ADMIN),
        Some(entry.clone()),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["dry_run"], true);
    assert!(v["preview"]["calls"].as_i64().unwrap() > 0, "{v}");
    assert!(v["preview"]["alarms"].as_i64().unwrap() > 0, "{v}");
    assert_eq!(v["preview"]["top_keys"][0]["value"], LEAKED);
    let (s, _) = call(
        &f.app,
        "GET",
        "/api/v1/policies/allowlist/office",
        Some(VIEWER),
        None,
    )
    .await;
    assert_eq!(s, StatusCode::NOT_FOUND, "a dry run stores nothing");
    let bad = json!({"id": "office", "ips": ["1.2.3.999"], "comment": "x"});
    let (s, v) = call(
        &f.app,
        "POST",
        "/api/v1/policies/allowlist?dry_run=true",
        Some(ADMIN),
        Some(bad),
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert!(
        v["error"].as_str().unwrap().contains("api-allowlist.yaml:"),
        "{v}"
    );
    // An IP's page lists the alarms naming it.
    let alarm = get(&f.app, &format!("/api/v1/alarms?key={LEAKED}&limit=100")).await["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| !a["source_ips"].as_array().unwrap().is_empty())
        .cloned()
        .unwrap();
    let ip = alarm["source_ips"][0]["ip"].as_str().unwrap();
    let v = get(&f.app, &format!("/api/v1/ips/{ip}")).await;
    assert!(
        v["alarms"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["alarm_id"] == alarm["alarm_id"])
    );
}

/// The `<dd>` after a `<dt>` of a facts list.
fn fact<'a>(body: &'a str, label: &str) -> &'a str {
    let dt = format!("<dt>{label}</dt><dd>");
    let at = body
        .find(&dt)
        .unwrap_or_else(|| panic!("no {label:?} in the page"))
        + dt.len();
    &body[at..at + body[at..].find("</dd>").unwrap()]
}

#[tokio::test]
async fn the_leaked_key_alarm_shows_where_its_source_ip_is() {
    let f = fixture(Backend::Sqlite).await;
    let alarm = get(&f.app, &format!("/api/v1/alarms?key={LEAKED}&limit=100")).await["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["rule_id"] == "ak.leaked_key_use")
        .cloned()
        .unwrap();
    let src = &alarm["source_ips"][0];
    let (city, country) = (
        src["city"].as_str().unwrap(),
        src["country"].as_str().unwrap(),
    );
    assert!(!city.is_empty() && !country.is_empty(), "{src}");
    assert!(
        alarm["summary"].as_str().unwrap().contains(city),
        "the summary names the place: {}",
        alarm["summary"]
    );
    let (viewer, _) = sign_in(&f.app, VIEWER, false).await;
    let body = page(
        &f.app,
        &format!("/alarms/{}", alarm["alarm_id"].as_str().unwrap()),
        &viewer,
    )
    .await
    .body;
    let at = body.find("<h2 id=\"ips\">").unwrap();
    let table = &body[at..at + body[at..].find("</table>").unwrap()];
    assert!(
        table.contains(&format!("<td>{city}, {country}</td>")),
        "{table}"
    );
    assert!(
        table.contains(&format!(
            "<td>AS{} {}</td>",
            src["asn"],
            src["as_org"].as_str().unwrap()
        )),
        "{table}"
    );
    assert!(!table.contains("unknown"), "{table}");
}

#[tokio::test]
async fn report_dates_and_expiry_are_times_in_the_viewers_zone() {
    let f = fixture(Backend::Sqlite).await;
    let (admin, _) = sign_in(&f.app, ADMIN, false).await;
    let key = page(&f.app, &format!("/keys/{LEAKED}"), &admin).await.body;
    // The credential report's dates are <time> elements (local time by the script, UTC on
    // hover), not RFC 3339 text.
    for label in ["Principal created", "Key last rotated"] {
        let dd = fact(&key, label);
        assert!(
            dd.starts_with("<time datetime=\"") && dd.contains(" UTC\">"),
            "{label}: {dd}"
        );
    }
    // A policy entry's expiry, in the list and on its page.
    let entry = json!({"id": "office", "keys": [LEAKED], "expires": "2030-12-31", "owner": "sec", "comment": "x"});
    let (s, v) = call(
        &f.app,
        "POST",
        "/api/v1/policies/allowlist",
        Some(ADMIN),
        Some(entry),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let want = "<time datetime=\"2030-12-31T23:59:59Z\" title=\"2030-12-31 23:59:59 UTC\">";
    let list = page(&f.app, "/policies/allowlist", &admin).await.body;
    assert!(list.contains(want), "{list}");
    let one = page(&f.app, "/policies/allowlist/office", &admin)
        .await
        .body;
    assert!(fact(&one, "Expires").starts_with(want), "{one}");
    let key = page(&f.app, &format!("/keys/{LEAKED}"), &admin).await.body;
    assert!(key.contains(&format!(", expires {want}")), "{key}");
}

#[tokio::test]
async fn the_ip_list_filters_are_in_the_url() {
    let f = fixture(Backend::Sqlite).await;
    let (viewer, _) = sign_in(&f.app, VIEWER, false).await;
    let leak = get(&f.app, &format!("/api/v1/alarms?key={LEAKED}&limit=100")).await["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["rule_id"] == "ak.leaked_key_use")
        .cloned()
        .unwrap();
    let ip = leak["source_ips"][0]["ip"].as_str().unwrap().to_owned();
    let country = leak["source_ips"][0]["country"]
        .as_str()
        .unwrap()
        .to_owned();
    let url = format!("/ips?class=public&country={country}&has_alarms=1&q={ip}&sort=calls");
    let p = page(&f.app, &url, &viewer).await;
    assert_eq!(p.status, StatusCode::OK, "{}", p.body);
    // The filters are the form's values, the row is the leaked key's IP with its alarm count.
    assert!(
        p.body.contains(&format!("name=\"q\" value=\"{ip}\"")),
        "{}",
        p.body
    );
    assert!(p.body.contains("<option value=\"public\" selected>"));
    assert!(
        p.body
            .contains(&format!("name=\"country\" value=\"{country}\""))
    );
    assert!(
        p.body
            .contains("<option value=\"1\" selected>Named by alarms")
    );
    assert!(p.body.contains(&format!("href=\"/ips/{ip}\"")));
    assert_eq!(
        p.body.matches("<a class=\"mono\" href=\"/ips/").count(),
        1,
        "{}",
        p.body
    );
    // Sorting keeps the filters (deep links).
    let link = p
        .body
        .split("href=\"")
        .map(|x| &x[..x.find('"').unwrap_or(0)])
        .find(|h| h.starts_with("/ips?") && h.contains("sort=ip"))
        .unwrap()
        .replace("&amp;", "&");
    for kept in [
        "class=public",
        "has_alarms=1",
        &format!("country={country}"),
    ] {
        assert!(link.contains(kept), "{link}");
    }
    // A filter nothing matches says so.
    let p = page(&f.app, "/ips?class=tor&q=no-such-org-anywhere", &viewer).await;
    assert_eq!(p.status, StatusCode::OK);
    assert!(p.body.contains("No source IP matches"), "{}", p.body);
    // A bad class: the API's message in the page.
    let p = page(&f.app, "/ips?class=martian", &viewer).await;
    assert_eq!(p.status, StatusCode::BAD_REQUEST);
    assert!(p.body.contains("class must be one of"), "{}", p.body);
}

#[tokio::test]
async fn ip_hiding_and_alarm_editors_round_trip_expiry_and_owner() {
    let f = fixture(Backend::Sqlite).await;
    let (admin, _) = sign_in(&f.app, ADMIN, false).await;
    for (kind, id, file, fields) in [
        (
            "ip-hiding",
            "hide-partner",
            "api-ip-hiding.yaml",
            vec![("keys", LEAKED), ("comment", "partner")],
        ),
        (
            "alarm",
            "ak.new_source_ip",
            "api-alarm-policy.yaml",
            vec![("severity", "low")],
        ),
    ] {
        let list = page(&f.app, &format!("/policies/{kind}"), &admin)
            .await
            .body;
        assert!(
            list.contains("id=\"p-expires\"") && list.contains("id=\"p-owner\""),
            "{kind}"
        );
        let token = csrf(&list);
        let mut form = vec![
            ("csrf", token.as_str()),
            ("id", id),
            ("expires", "2031-03-04"),
            ("owner", "sec-team"),
            ("action", "save"),
        ];
        form.extend(fields.iter().copied());
        let p = post(&f.app, &format!("/policies/{kind}"), &admin, &form).await;
        assert_eq!(p.status, StatusCode::SEE_OTHER, "{kind}: {}", p.body);
        let text = std::fs::read_to_string(f.policy_dir.join(file)).unwrap();
        assert!(
            text.contains("\"expires\":\"2031-03-04\"") && text.contains("\"owner\":\"sec-team\""),
            "{text}"
        );
        // The editor shows them back; an edit keeps what it does not change.
        let edit = page(&f.app, &format!("/policies/{kind}/{id}"), &admin)
            .await
            .body;
        assert!(
            edit.contains("name=\"expires\" value=\"2031-03-04\""),
            "{edit}"
        );
        assert!(edit.contains("name=\"owner\" value=\"sec-team\""), "{edit}");
        assert!(fact(&edit, "Owner").contains("sec-team"));
        let mut form = vec![
            ("csrf", token.as_str()),
            ("id", id),
            ("expires", "2031-03-04"),
            ("owner", "platform"),
            ("action", "save"),
        ];
        form.extend(fields.iter().copied());
        let p = post(&f.app, &format!("/policies/{kind}/{id}"), &admin, &form).await;
        assert_eq!(p.status, StatusCode::SEE_OTHER, "{kind}: {}", p.body);
        let v = get(&f.app, &format!("/api/v1/policies/{kind}/{id}")).await;
        assert_eq!(v["entry"]["owner"], "platform", "{v}");
        assert_eq!(v["entry"]["expires"], "2031-03-04", "{v}");
        // A bad expiry: the loader's message, with the file and line.
        let bad = [
            ("csrf", token.as_str()),
            ("id", id),
            ("expires", "soon"),
            ("action", "preview"),
        ];
        let mut bad = bad.to_vec();
        bad.extend(fields.iter().copied());
        let p = post(&f.app, &format!("/policies/{kind}/{id}"), &admin, &bad).await;
        assert_eq!(p.status, StatusCode::BAD_REQUEST, "{kind}");
        assert!(
            p.body.contains(&format!("{file}:"))
                && p.body
                    .contains("expires: not a date or time: &quot;soon&quot;"),
            "{kind}: {}",
            p.body
        );
    }
}

#[tokio::test]
async fn an_allowlist_entry_is_saved_only_as_previewed() {
    let f = fixture(Backend::Sqlite).await;
    let (op, _) = sign_in(&f.app, OPERATOR, false).await;
    let alarm = get(&f.app, &format!("/api/v1/alarms?key={LEAKED}&limit=100")).await["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["rule_id"] == "ak.leaked_key_use")
        .cloned()
        .unwrap();
    let id = alarm["alarm_id"].as_str().unwrap();
    let path = format!("/alarms/{id}/allowlist");
    let form_page = page(&f.app, &path, &op).await.body;
    // The form offers a preview, no save.
    assert!(form_page.contains("value=\"preview\""));
    assert!(!form_page.contains("value=\"save\""), "{form_page}");
    let token = csrf(&form_page);
    let pending =
        || async { get(&f.app, &format!("/api/v1/alarms/{id}")).await["triage_status"].clone() };
    // "Save" straight away (a hand-made POST): not saved; the preview is shown instead.
    let p = post(
        &f.app,
        &path,
        &op,
        &[
            ("csrf", &token),
            ("scope", "ip"),
            ("comment", "office"),
            ("action", "save"),
        ],
    )
    .await;
    assert_eq!(p.status, StatusCode::CONFLICT, "{}", p.body);
    assert!(p.body.contains("Not saved") && p.body.contains("What it would have matched"));
    assert_eq!(pending().await, "pending");
    assert!(!f.policy_dir.join("api-allowlist.yaml").exists());
    // The preview: the entry, and a Save button carrying it.
    let p = post(
        &f.app,
        &path,
        &op,
        &[
            ("csrf", &token),
            ("scope", "ip"),
            ("comment", "office"),
            ("action", "preview"),
        ],
    )
    .await;
    assert_eq!(p.status, StatusCode::OK, "{}", p.body);
    let at = p.body.find("name=\"previewed\" value=\"").unwrap() + 24;
    let digest = p.body[at..at + 64].to_owned();
    assert!(p.body.contains("value=\"save\""));
    // A save that changed the entry after its preview (another scope) is refused too.
    let p = post(
        &f.app,
        &path,
        &op,
        &[
            ("csrf", &token),
            ("scope", "api"),
            ("comment", "office"),
            ("previewed", &digest),
            ("action", "save"),
        ],
    )
    .await;
    assert_eq!(p.status, StatusCode::CONFLICT, "{}", p.body);
    assert_eq!(pending().await, "pending");
    // The previewed entry's Save: saved.
    let p = post(
        &f.app,
        &path,
        &op,
        &[
            ("csrf", &token),
            ("scope", "ip"),
            ("comment", "office"),
            ("previewed", &digest),
            ("action", "save"),
        ],
    )
    .await;
    assert_eq!(p.status, StatusCode::SEE_OTHER, "{}", p.body);
    assert_eq!(pending().await, "allowlisted");
    let file = std::fs::read_to_string(f.policy_dir.join("api-allowlist.yaml")).unwrap();
    assert!(
        file.contains(&format!("alarm-{id}"))
            && file.contains(alarm["source_ips"][0]["ip"].as_str().unwrap()),
        "{file}"
    );
}
