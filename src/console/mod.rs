//! The console: the inventory's pages in a browser, served by akwatch beside `/api/v1`.
//!
//! Server-rendered HTML (maud templates, escaped by construction) with one small script for
//! local times and select-all; charts are SVG drawn on the server by `plotters`. Every page is
//! backed by the API: a page handler calls the `/api/v1` router in-process with the signed-in
//! user's token, so the console can show and do exactly what that token may through the API —
//! same validation messages, same audit log. Sign-in takes an API token and opens a session
//! (cookie `HttpOnly`, `SameSite=Strict`, `Secure` behind TLS); every form carries the session's
//! CSRF token; every response carries a Content-Security-Policy that allows no inline script
//! and no other origin. Assets are compiled into the binary.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, Method, Request, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use serde_json::Value;
use tower::ServiceExt as _;

use crate::api::{ApiState, Role};

mod chart;
mod pages;
mod view;

/// The session cookie's name.
pub const COOKIE: &str = "akwatch_session";
/// A session ends this long after its last request.
pub const SESSION_IDLE: Duration = Duration::from_secs(12 * 3600);
/// The most sessions kept; past it the least recently used is dropped (and counted).
pub const MAX_SESSIONS: usize = 10_000;
/// The most sessions of one token.
pub const MAX_SESSIONS_PER_TOKEN: usize = 100;

/// The Content-Security-Policy of every response: this origin's script and style only, no
/// inline script or style, no frames, forms posting here only.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
     connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'";

/// A signed-in user.
#[derive(Clone)]
pub(crate) struct Sess {
    /// The API token the session acts with (kept in memory only).
    secret: String,
    pub name: String,
    pub role: Role,
    pub csrf: String,
}

struct Entry {
    sess: Sess,
    last: Instant,
}

pub struct Console {
    api_state: Arc<ApiState>,
    api: Router,
    sessions: Mutex<HashMap<String, Entry>>,
    evicted: prometheus::IntCounter,
}

fn random_hex(bytes: usize) -> String {
    (0..bytes)
        .map(|_| format!("{:02x}", rand::random::<u8>()))
        .collect()
}

/// What an API call answered when it was not a success: its status and message.
pub(crate) struct Failed {
    pub status: StatusCode,
    pub message: String,
}

impl Console {
    fn session(&self, headers: &HeaderMap) -> Option<Sess> {
        let id = cookie(headers, COOKIE)?;
        let mut map = self.sessions.lock().ok()?;
        let now = Instant::now();
        let entry = map.get_mut(&id)?;
        if now.duration_since(entry.last) > SESSION_IDLE {
            map.remove(&id);
            return None;
        }
        entry.last = now;
        Some(entry.sess.clone())
    }

    fn open_session(&self, sess: Sess) -> String {
        let id = random_hex(32);
        let Ok(mut map) = self.sessions.lock() else {
            return id;
        };
        let now = Instant::now();
        map.retain(|_, e| now.duration_since(e.last) <= SESSION_IDLE);
        loop {
            // One token's sessions are capped too, so signing in again and again with one
            // token drops that token's oldest sessions, not everyone else's.
            let own = map
                .values()
                .filter(|e| e.sess.secret == sess.secret)
                .count();
            if map.len() < MAX_SESSIONS && own < MAX_SESSIONS_PER_TOKEN {
                break;
            }
            let oldest = map
                .iter()
                .filter(|(_, e)| own < MAX_SESSIONS_PER_TOKEN || e.sess.secret == sess.secret)
                .min_by_key(|(_, e)| e.last)
                .map(|(k, _)| k.clone());
            match oldest {
                Some(k) => {
                    map.remove(&k);
                    self.evicted.inc();
                }
                None => break,
            }
        }
        map.insert(id.clone(), Entry { sess, last: now });
        id
    }

    /// Calls the API in-process as the session's user.
    pub(crate) async fn call(
        &self,
        s: &Sess,
        method: Method,
        uri: &str,
        body: Option<&Value>,
    ) -> Result<Value, Failed> {
        let mut req = Request::builder()
            .method(method)
            .uri(format!("/api/v1{uri}"))
            .header(header::AUTHORIZATION, format!("Bearer {}", s.secret));
        let body = match body {
            Some(v) => {
                req = req.header(header::CONTENT_TYPE, "application/json");
                Body::from(v.to_string())
            }
            None => Body::empty(),
        };
        let failed = |message: String| Failed {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            message,
        };
        let req = req.body(body).map_err(|e| failed(e.to_string()))?;
        let resp = self
            .api
            .clone()
            .oneshot(req)
            .await
            .map_err(|e| failed(e.to_string()))?;
        let status = resp.status();
        let bytes = axum::body::to_bytes(resp.into_body(), 64 * 1024 * 1024)
            .await
            .map_err(|e| failed(e.to_string()))?;
        let v: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        if status.is_success() {
            Ok(v)
        } else {
            Err(Failed {
                status,
                message: v["error"]
                    .as_str()
                    .map_or_else(|| status.to_string(), str::to_owned),
            })
        }
    }
}

/// A cookie's value from the request's `Cookie` headers.
fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_owned())
}

/// Whether a request came from a page of this origin: an `Origin` header, when sent, must name
/// the `Host` the request was sent to (browsers send it on every form POST).
fn same_origin(headers: &HeaderMap) -> bool {
    let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) else {
        return true;
    };
    // Behind a proxy that rewrites Host, the host the browser used is X-Forwarded-Host.
    let host = headers
        .get("x-forwarded-host")
        .or_else(|| headers.get(header::HOST))
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let bare = origin
        .strip_prefix("http://")
        .or_else(|| origin.strip_prefix("https://"))
        .unwrap_or("");
    !host.is_empty() && bare == host
}

/// Behind a TLS-terminating proxy (`X-Forwarded-Proto: https`) the cookie is also `Secure`.
fn behind_tls(headers: &HeaderMap) -> bool {
    headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("https"))
}

/// The signed-in user of a page request, or a redirect to the sign-in page.
/// (The refusal is boxed: a response is large, and the success is the common path.)
pub(crate) fn require(c: &Console, headers: &HeaderMap, path: &str) -> Result<Sess, Box<Response>> {
    c.session(headers).ok_or_else(|| {
        let next: String = serde_urlencoded::to_string([("next", path)]).unwrap_or_default();
        Box::new(Redirect::to(&format!("/login?{next}")).into_response())
    })
}

/// The signed-in user of a form POST whose CSRF token and origin are right.
pub(crate) fn require_post(
    c: &Console,
    headers: &HeaderMap,
    form: &[(String, String)],
) -> Result<Sess, Box<Response>> {
    let refuse = |msg: &str| Box::new((StatusCode::FORBIDDEN, msg.to_owned()).into_response());
    if !same_origin(headers) {
        return Err(refuse("refused: the form was not sent from this console"));
    }
    let Some(s) = c.session(headers) else {
        return Err(Box::new(Redirect::to("/login").into_response()));
    };
    let sent = field(form, "csrf").unwrap_or_default();
    if !crate::api::constant_time_eq(sent.as_bytes(), s.csrf.as_bytes()) {
        return Err(refuse(
            "refused: the form's CSRF token is missing or stale; reload the page and try again",
        ));
    }
    Ok(s)
}

/// A form field's first value.
pub(crate) fn field<'a>(form: &'a [(String, String)], name: &str) -> Option<&'a str> {
    form.iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// The sign-in form's CSRF cookie (double submit: the form's hidden field must equal it).
pub const LOGIN_COOKIE: &str = "akwatch_login";

/// The page to return to after sign-in: a path of this console only — visible ASCII, starting
/// with one `/` (no `//host`, no `/\host`, no tab or newline a browser would drop).
fn safe_next(next: &str) -> &str {
    let b = next.as_bytes();
    let ok = b.first() == Some(&b'/')
        && !matches!(b.get(1), Some(b'/' | b'\\'))
        && b.iter().all(u8::is_ascii_graphic);
    if ok { next } else { "/" }
}

fn cookie_header(
    name: &str,
    value: &str,
    headers: &HeaderMap,
    max_age: Option<u64>,
) -> HeaderValue {
    let secure = if behind_tls(headers) { "; Secure" } else { "" };
    let age = max_age.map_or(String::new(), |a| format!("; Max-Age={a}"));
    HeaderValue::from_str(&format!(
        "{name}={value}; HttpOnly; SameSite=Strict; Path=/{age}{secure}"
    ))
    .unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// The sign-in page with a fresh CSRF value, in its form and in a short-lived cookie.
fn login_response(
    status: StatusCode,
    headers: &HeaderMap,
    next: &str,
    error: Option<&str>,
) -> Response {
    let token = random_hex(32);
    let mut resp = (status, view::login(safe_next(next), &token, error)).into_response();
    resp.headers_mut().insert(
        header::SET_COOKIE,
        cookie_header(LOGIN_COOKIE, &token, headers, Some(3600)),
    );
    resp
}

async fn login_page(
    headers: HeaderMap,
    axum::extract::Query(q): axum::extract::Query<HashMap<String, String>>,
) -> Response {
    let next = q.get("next").map_or("/", String::as_str);
    login_response(StatusCode::OK, &headers, next, None)
}

async fn login(
    State(c): State<Arc<Console>>,
    headers: HeaderMap,
    axum::Form(form): axum::Form<Vec<(String, String)>>,
) -> Response {
    let next = safe_next(field(&form, "next").unwrap_or("/"));
    let sent = field(&form, "csrf").unwrap_or_default();
    let kept = cookie(&headers, LOGIN_COOKIE).unwrap_or_default();
    if !same_origin(&headers)
        || sent.is_empty()
        || !crate::api::constant_time_eq(sent.as_bytes(), kept.as_bytes())
    {
        return login_response(
            StatusCode::FORBIDDEN,
            &headers,
            next,
            Some("The sign-in form was stale or not sent from this console: try again."),
        );
    }
    let secret = field(&form, "token").unwrap_or_default().trim().to_owned();
    let Some(owner) = crate::api::token_owner(&c.api_state, &secret) else {
        return login_response(
            StatusCode::UNAUTHORIZED,
            &headers,
            next,
            Some("That token is not valid for this console."),
        );
    };
    let sess = Sess {
        secret,
        name: owner.name.clone(),
        role: owner.role,
        csrf: random_hex(32),
    };
    let id = c.open_session(sess);
    let mut resp = Redirect::to(next).into_response();
    // A browser-session cookie: the server ends the session after SESSION_IDLE without use.
    resp.headers_mut().append(
        header::SET_COOKIE,
        cookie_header(COOKIE, &id, &headers, None),
    );
    resp.headers_mut().append(
        header::SET_COOKIE,
        cookie_header(LOGIN_COOKIE, "", &headers, Some(0)),
    );
    resp
}

async fn logout(
    State(c): State<Arc<Console>>,
    headers: HeaderMap,
    axum::Form(form): axum::Form<Vec<(String, String)>>,
) -> Response {
    if let Err(r) = require_post(&c, &headers, &form) {
        return *r;
    }
    if let (Some(id), Ok(mut map)) = (cookie(&headers, COOKIE), c.sessions.lock()) {
        map.remove(&id);
    }
    let mut resp = Redirect::to("/login").into_response();
    resp.headers_mut().insert(
        header::SET_COOKIE,
        cookie_header(COOKIE, "", &headers, Some(0)),
    );
    resp
}

const APP_CSS: &str = include_str!("assets/app.css");
const APP_JS: &str = include_str!("assets/app.js");
const FAVICON: &str = include_str!("assets/favicon.svg");

async fn asset(Path(name): Path<String>) -> Response {
    let (body, kind) = match name.as_str() {
        "app.css" => (APP_CSS, "text/css; charset=utf-8"),
        "app.js" => (APP_JS, "text/javascript; charset=utf-8"),
        "favicon.svg" => (FAVICON, "image/svg+xml"),
        _ => return (StatusCode::NOT_FOUND, "no such asset").into_response(),
    };
    (
        [
            (header::CONTENT_TYPE, kind),
            (header::CACHE_CONTROL, "public, max-age=3600"),
        ],
        body,
    )
        .into_response()
}

/// Security headers on every response (pages, assets and API alike).
async fn headers_layer(req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let mut resp = next.run(req).await;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    if !h.contains_key(header::CACHE_CONTROL) {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    resp
}

/// The API (`/api/v1`) and the console (every other path), with the security headers.
/// `evicted` counts sessions dropped past [`MAX_SESSIONS`].
pub fn app(state: Arc<ApiState>, evicted: prometheus::IntCounter) -> Router {
    let api = crate::api::router(state.clone());
    let console = Arc::new(Console {
        api_state: state,
        api: api.clone(),
        sessions: Mutex::new(HashMap::new()),
        evicted,
    });
    let pages = Router::new()
        .route("/", get(pages::overview))
        .route("/login", get(login_page).post(login))
        .route("/logout", post(logout))
        .route("/keys", get(pages::keys))
        .route("/keys/{key}", get(pages::key))
        .route("/keys/{key}/hide", post(pages::hide_key))
        .route("/ips", get(pages::ips))
        .route("/ips/{ip}", get(pages::ip))
        .route("/ips/{ip}/note", post(pages::ip_note))
        .route("/accounts", get(pages::accounts))
        .route("/accounts/{cloud}/{account}", get(pages::account))
        .route("/alarms", get(pages::alarms))
        .route("/alarms/triage", post(pages::alarms_triage))
        .route("/alarms/{id}", get(pages::alarm))
        .route("/alarms/{id}/status", post(pages::alarm_status))
        .route(
            "/alarms/{id}/allowlist",
            get(pages::alarm_allowlist_form).post(pages::alarm_allowlist),
        )
        .route("/risks", get(pages::risks))
        .route("/risks/{id}", get(pages::risk))
        .route("/risks/{id}/status", post(pages::risk_status))
        .route(
            "/policies",
            get(|| async { Redirect::to("/policies/allowlist") }),
        )
        .route(
            "/policies/{kind}",
            get(pages::policies).post(pages::policy_new),
        )
        .route(
            "/policies/{kind}/{id}",
            get(pages::policy_edit).post(pages::policy_save),
        )
        .route("/audit", get(pages::audit))
        .route("/static/{name}", get(asset))
        .fallback(pages::not_found)
        .layer(axum::extract::DefaultBodyLimit::max(crate::api::MAX_BODY))
        .with_state(console);
    api.merge(pages)
        .layer(axum::middleware::from_fn(headers_layer))
}
