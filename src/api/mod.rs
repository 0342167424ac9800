//! The inventory's HTTP API (`/api/v1`): keys, source IPs, accounts, alarms with triage, and the
//! audit log, over a [`Store`]. Bearer tokens with a role each (viewer < operator < admin),
//! configured as SHA-256 hashes and compared in constant time; every change is audited. SQL is
//! built from fixed fragments and placeholders only: request values are always bound, sort
//! columns come from a fixed list.

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};

pub mod openapi;
mod policies;
use serde::Deserialize;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use sqlx::Row as _;

use crate::inventory::Store;

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Read everything.
    Viewer,
    /// Also triage alarms and write IP notes.
    Operator,
    /// Also edit policies.
    Admin,
}

/// A configured token: its name (for the audit log), role, and SHA-256 (hex) of the secret.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenSpec {
    pub name: String,
    pub role: Role,
    pub sha256: String,
}

/// The API's tokens file: `tokens: [{name, role, sha256}]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokensFile {
    pub tokens: Vec<TokenSpec>,
}

/// SHA-256 of `secret`, hex.
pub fn token_hash(secret: &str) -> String {
    let digest = Sha256::digest(secret.as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// Byte strings equal, in time independent of where they differ.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

pub struct ApiState {
    pub store: Store,
    pub tokens: Vec<TokenSpec>,
    /// Where allowlist entries made from alarms are written (`api-allowlist.yaml` in it), with
    /// the rules they are validated against; none: the allowlist action is refused.
    pub policies: Option<PolicyFiles>,
}

/// The policy directory the API writes to, and the rules its entries are checked against.
pub struct PolicyFiles {
    /// Where the API's files are written (one of `dirs`).
    pub dir: std::path::PathBuf,
    /// Every policy directory the engine loads (a change is checked against all of them).
    pub dirs: Vec<std::path::PathBuf>,
    pub rules: crate::rule::RuleSet,
    /// One policy write at a time.
    pub lock: tokio::sync::Mutex<()>,
}

impl PolicyFiles {
    /// The policy directory `dir`, checked now: its files must load against `rules`.
    pub fn open(dir: std::path::PathBuf, rules: crate::rule::RuleSet) -> anyhow::Result<Self> {
        Self::open_among(dir.clone(), vec![dir], rules)
    }

    /// The policy directory `dir` among all those the engine loads, `dirs` (`dir` is added when
    /// missing), checked now.
    pub fn open_among(
        dir: std::path::PathBuf,
        mut dirs: Vec<std::path::PathBuf>,
        rules: crate::rule::RuleSet,
    ) -> anyhow::Result<Self> {
        if !dirs.contains(&dir) {
            dirs.push(dir.clone());
        }
        if let Err(e) = crate::policy::Policy::load_dirs(&dirs, &rules) {
            anyhow::bail!("the policies: {}", e.join("; "));
        }
        Ok(PolicyFiles {
            dir,
            dirs,
            rules,
            lock: tokio::sync::Mutex::new(()),
        })
    }
}

/// The tokens the API accepts: from the tokens file when given (hashes, checked), else one
/// random admin token printed on stderr — refused unless `listen` is a loopback address.
pub fn load_tokens(
    path: Option<&std::path::Path>,
    listen: std::net::SocketAddr,
) -> anyhow::Result<Vec<TokenSpec>> {
    use anyhow::Context as _;
    match path {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read {}", path.display()))?;
            let file: TokensFile = serde_saphyr::from_str(&text)
                .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
            for t in &file.tokens {
                if t.sha256.len() != 64 || !t.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
                    anyhow::bail!(
                        "{}: token {}: sha256 must be 64 hex digits (the hash, never the token)",
                        path.display(),
                        t.name
                    );
                }
            }
            Ok(file.tokens)
        }
        None => {
            if !listen.ip().is_loopback() {
                anyhow::bail!(
                    "{listen} is not a loopback address: give API tokens (serve --tokens, or inventory.api.tokens in the service's configuration) to serve beyond this machine"
                );
            }
            let secret: String = (0..32)
                .map(|_| format!("{:02x}", rand::random::<u8>()))
                .collect();
            eprintln!(
                "no API tokens configured: a one-time admin token for this run (loopback only): {secret}"
            );
            Ok(vec![TokenSpec {
                name: "one-time admin".into(),
                role: Role::Admin,
                sha256: token_hash(&secret),
            }])
        }
    }
}

/// Serves the API on `listen` until `shutdown` completes.
pub async fn serve(
    state: Arc<ApiState>,
    listen: std::net::SocketAddr,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    use anyhow::Context as _;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    eprintln!(
        "serving the inventory API on http://{listen}/api/v1 and the console on http://{listen}/"
    );
    let evicted = prometheus::IntCounter::new(
        "akwatch_console_sessions_evicted_total",
        "Console sessions dropped past the cap",
    )?;
    axum::serve(listener, crate::console::app(state, evicted))
        .with_graceful_shutdown(shutdown)
        .await?;
    Ok(())
}

/// The caller, once its token is checked.
struct Caller {
    name: String,
    role: Role,
}

#[derive(Debug)]
pub struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(json!({"error": self.1}))).into_response()
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(e: sqlx::Error) -> Self {
        tracing::error!(error = %e, "store query failed");
        ApiError(
            StatusCode::INTERNAL_SERVER_ERROR,
            "store query failed".into(),
        )
    }
}

type ApiResult = Result<Json<Value>, ApiError>;

fn authorize(state: &ApiState, headers: &HeaderMap, need: Role) -> Result<Caller, ApiError> {
    let secret = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or_else(|| {
            ApiError(
                StatusCode::UNAUTHORIZED,
                "a bearer token is required".into(),
            )
        })?;
    let found = token_owner(state, secret)
        .ok_or_else(|| ApiError(StatusCode::UNAUTHORIZED, "unknown token".into()))?;
    if found.role < need {
        return Err(ApiError(
            StatusCode::FORBIDDEN,
            format!(
                "this needs the {need:?} role; the token has {:?}",
                found.role
            )
            .to_lowercase(),
        ));
    }
    Ok(Caller {
        name: found.name.clone(),
        role: found.role,
    })
}

/// The configured token whose secret this is (the console's sign-in uses it too).
pub fn token_owner<'a>(state: &'a ApiState, secret: &str) -> Option<&'a TokenSpec> {
    let hash = token_hash(secret.trim());
    // Every configured hash is compared (no early exit), each in constant time.
    state.tokens.iter().fold(None, |hit, t| {
        if constant_time_eq(t.sha256.to_ascii_lowercase().as_bytes(), hash.as_bytes()) {
            Some(t)
        } else {
            hit
        }
    })
}

/// The most rows a list returns.
pub const MAX_PAGE: i64 = 500;

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct ListQuery {
    limit: Option<i64>,
    offset: Option<i64>,
    sort: Option<String>,
    order: Option<String>,
    cloud: Option<String>,
    account: Option<String>,
    kind: Option<String>,
    key: Option<String>,
    status: Option<String>,
    severity: Option<String>,
    rule: Option<String>,
    since: Option<i64>,
    until: Option<i64>,
    /// Risks: 1 for those the newest reports still show, 0 for fixed ones.
    present: Option<i64>,
    /// Keys: 1 for those with pending alarms, 0 for those without. IPs: 1 for those an alarm
    /// names among its sources, 0 for the others.
    has_alarms: Option<i64>,
    /// IPs: one of their classes (`hosting`, `tor`, ...).
    class: Option<String>,
    /// IPs: the country (as the GeoIP database names it, e.g. `JP`).
    country: Option<String>,
    /// IPs: a part of the address or of the AS organisation's name (any case).
    q: Option<String>,
}

enum Param {
    Text(String),
    Int(i64),
}

/// A `WHERE` clause of fixed fragments with numbered placeholders, and its parameters.
#[derive(Default)]
struct Filter {
    clauses: Vec<String>,
    params: Vec<Param>,
}

impl Filter {
    fn text(&mut self, fragment: &str, v: &Option<String>) {
        if let Some(v) = v {
            self.params.push(Param::Text(v.clone()));
            self.clauses
                .push(fragment.replace('?', &format!("${}", self.params.len())));
        }
    }

    fn int(&mut self, fragment: &str, v: Option<i64>) {
        if let Some(v) = v {
            self.params.push(Param::Int(v));
            self.clauses
                .push(fragment.replace('?', &format!("${}", self.params.len())));
        }
    }

    /// A clause of fixed text, no parameter.
    fn fixed(&mut self, clause: &str) {
        self.clauses.push(clause.to_owned());
    }

    fn sql(&self) -> String {
        if self.clauses.is_empty() {
            String::new()
        } else {
            format!(" WHERE {}", self.clauses.join(" AND "))
        }
    }

    fn bind<'q>(
        &'q self,
        mut q: sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>>,
    ) -> sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>> {
        for p in &self.params {
            q = match p {
                Param::Text(s) => q.bind(s.as_str()),
                Param::Int(n) => q.bind(*n),
            };
        }
        q
    }
}

fn page(q: &ListQuery) -> Result<(i64, i64), ApiError> {
    let limit = q.limit.unwrap_or(50);
    let offset = q.offset.unwrap_or(0);
    if !(1..=MAX_PAGE).contains(&limit) || offset < 0 {
        return Err(ApiError(
            StatusCode::BAD_REQUEST,
            format!("limit must be 1 to {MAX_PAGE} and offset at least 0"),
        ));
    }
    Ok((limit, offset))
}

/// `ORDER BY` from a fixed list of columns (the first is the default).
fn order_by(q: &ListQuery, allowed: &[&str], tie: &str) -> Result<String, ApiError> {
    let col = match &q.sort {
        None => allowed[0],
        Some(s) => allowed.iter().find(|c| **c == s).copied().ok_or_else(|| {
            ApiError(
                StatusCode::BAD_REQUEST,
                format!("sort must be one of {}", allowed.join(", ")),
            )
        })?,
    };
    let dir = match q.order.as_deref() {
        None | Some("desc") => "DESC",
        Some("asc") => "ASC",
        Some(_) => {
            return Err(ApiError(
                StatusCode::BAD_REQUEST,
                "order must be asc or desc".into(),
            ));
        }
    };
    Ok(format!(" ORDER BY {col} {dir}, {tie} ASC"))
}

/// Rows as JSON objects: each column by name, as text or integer.
fn rows_json(rows: &[sqlx::any::AnyRow], text: &[&str], ints: &[&str]) -> Vec<Value> {
    rows.iter()
        .map(|r| {
            let mut o = serde_json::Map::new();
            for c in text {
                o.insert(
                    (*c).into(),
                    json!(r.try_get::<String, _>(*c).unwrap_or_default()),
                );
            }
            for c in ints {
                o.insert(
                    (*c).into(),
                    json!(r.try_get::<i64, _>(*c).unwrap_or_default()),
                );
            }
            Value::Object(o)
        })
        .collect()
}

async fn count(store: &Store, sql: &str, f: &Filter) -> Result<i64, ApiError> {
    let row = f.bind(sqlx::query(sql)).fetch_one(store.pool()).await?;
    Ok(row.try_get::<i64, _>(0)?)
}

/// A key row, as the list and the key's page both read it (`k` is `inv_keys`).
const KEY_SELECT: &str = "SELECT k.cloud, k.key_id, k.account, k.principal, k.principal_type, k.kind, \
     k.first_seen, k.last_seen, k.calls, k.failures, k.ip_hidden, \
     (SELECT COUNT(*) FROM inv_alarms a WHERE a.key_id = k.key_id AND a.status = 'pending') AS pending_alarms \
     FROM inv_keys k";

const KEY_TEXT: [&str; 6] = [
    "cloud",
    "key_id",
    "account",
    "principal",
    "principal_type",
    "kind",
];
const KEY_INTS: [&str; 6] = [
    "first_seen",
    "last_seen",
    "calls",
    "failures",
    "ip_hidden",
    "pending_alarms",
];

/// The most keys a list filtered by report status judges (the status comes from each key's
/// principal in the reports, so such a filter reads every key the other filters leave).
pub const MAX_STATUS_SCAN: usize = 200_000;

/// The principal's report body beside each key row (for its status).
const KEY_PRINCIPAL: &str = ", (SELECT p.body FROM inv_principals p WHERE p.cloud = k.cloud AND p.principal = k.principal \
     AND (p.account = k.account OR p.account = '') ORDER BY p.account DESC LIMIT 1) AS principal_body";

/// The report statuses a key can have (see [`key_status`]).
pub const KEY_STATUSES: [&str; 5] = ["active", "inactive", "at_risk", "not_in_report", "unknown"];

async fn keys(
    State(s): State<Arc<ApiState>>,
    headers: HeaderMap,
    Query(q): Query<ListQuery>,
) -> ApiResult {
    authorize(&s, &headers, Role::Viewer)?;
    let (limit, offset) = page(&q)?;
    let mut f = Filter::default();
    f.text("k.cloud = ?", &q.cloud);
    f.text("k.account = ?", &q.account);
    f.text("k.kind = ?", &q.kind);
    f.int("k.last_seen >= ?", q.since);
    f.int("k.last_seen <= ?", q.until);
    match q.has_alarms {
        None => {}
        Some(1) => f.fixed(
            "EXISTS (SELECT 1 FROM inv_alarms a WHERE a.key_id = k.key_id AND a.status = 'pending')",
        ),
        Some(0) => f.fixed(
            "NOT EXISTS (SELECT 1 FROM inv_alarms a WHERE a.key_id = k.key_id AND a.status = 'pending')",
        ),
        Some(_) => {
            return Err(ApiError(
                StatusCode::BAD_REQUEST,
                "has_alarms must be 0 or 1".into(),
            ));
        }
    }
    if let Some(st) = &q.status
        && !KEY_STATUSES.contains(&st.as_str())
    {
        return Err(ApiError(
            StatusCode::BAD_REQUEST,
            format!("status must be one of {}", KEY_STATUSES.join(", ")),
        ));
    }
    let order = order_by(
        &q,
        &[
            "last_seen",
            "calls",
            "first_seen",
            "key_id",
            "pending_alarms",
        ],
        "key_id",
    )?;
    let select = KEY_SELECT.replacen(
        " FROM inv_keys k",
        &format!("{KEY_PRINCIPAL} FROM inv_keys k"),
        1,
    );
    let with_status = |rows: &[sqlx::any::AnyRow]| -> Vec<Value> {
        rows.iter()
            .zip(rows_json(rows, &KEY_TEXT, &KEY_INTS))
            .map(|(r, mut v)| {
                let body: Option<String> = r.try_get("principal_body").ok().flatten();
                let key = v["key_id"].as_str().unwrap_or_default().to_owned();
                v["status"] = json!(key_status(body.as_deref(), &key));
                v
            })
            .collect()
    };
    let (items, total) = match &q.status {
        None => {
            let total = count(
                &s.store,
                &format!("SELECT COUNT(*) FROM inv_keys k{}", f.sql()),
                &f,
            )
            .await?;
            let sql = format!("{select}{}{order} LIMIT {limit} OFFSET {offset}", f.sql());
            let rows = f.bind(sqlx::query(&sql)).fetch_all(s.store.pool()).await?;
            (with_status(&rows), total)
        }
        Some(want) => {
            let sql = format!("{select}{}{order} LIMIT {}", f.sql(), MAX_STATUS_SCAN + 1);
            let rows = f.bind(sqlx::query(&sql)).fetch_all(s.store.pool()).await?;
            if rows.len() > MAX_STATUS_SCAN {
                return Err(ApiError(
                    StatusCode::BAD_REQUEST,
                    format!(
                        "more than {MAX_STATUS_SCAN} keys to judge by status: narrow the list by cloud, account or kind first"
                    ),
                ));
            }
            let all: Vec<Value> = with_status(&rows)
                .into_iter()
                .filter(|v| v["status"] == json!(want))
                .collect();
            let total = i64::try_from(all.len()).unwrap_or(i64::MAX);
            let from = usize::try_from(offset).unwrap_or(usize::MAX);
            let n = usize::try_from(limit).unwrap_or(0);
            (all.into_iter().skip(from).take(n).collect(), total)
        }
    };
    Ok(Json(
        json!({"items": items, "total": total, "limit": limit, "offset": offset}),
    ))
}

async fn key(
    State(s): State<Arc<ApiState>>,
    headers: HeaderMap,
    Path(key): Path<String>,
) -> ApiResult {
    authorize(&s, &headers, Role::Viewer)?;
    let pool = s.store.pool();
    let rows = sqlx::query(&format!("{KEY_SELECT} WHERE k.key_id = $1"))
        .bind(key.as_str())
        .fetch_all(pool)
        .await?;
    let Some(mut info) = rows_json(&rows, &KEY_TEXT, &KEY_INTS).into_iter().next() else {
        return Err(ApiError(StatusCode::NOT_FOUND, format!("no key {key}")));
    };
    // (An IP-hidden key shows no IP, even ones recorded before it was hidden.)
    let ips = sqlx::query(
        "SELECT ip, calls, first_seen, last_seen FROM inv_key_ips WHERE key_id = $1 \
         AND NOT EXISTS (SELECT 1 FROM inv_keys h WHERE h.key_id = $1 AND h.ip_hidden <> 0) \
         ORDER BY calls DESC, ip ASC LIMIT 500",
    )
    .bind(key.as_str())
    .fetch_all(pool)
    .await?;
    let apis = sqlx::query(
        "SELECT api, calls, failures, last_seen FROM inv_key_apis WHERE key_id = $1 ORDER BY calls DESC, api ASC LIMIT 500",
    )
    .bind(key.as_str())
    .fetch_all(pool)
    .await?;
    let days = sqlx::query(
        "SELECT (hour / 86400) * 86400 AS day, CAST(SUM(calls) AS BIGINT) AS calls, CAST(SUM(failures) AS BIGINT) AS failures FROM inv_calls_hourly \
         WHERE key_id = $1 GROUP BY (hour / 86400) * 86400 ORDER BY day ASC",
    )
    .bind(key.as_str())
    .fetch_all(pool)
    .await?;
    let alarms = sqlx::query(
        "SELECT body, status FROM inv_alarms WHERE key_id = $1 ORDER BY severity_rank DESC, last_seen DESC LIMIT 500",
    )
    .bind(key.as_str())
    .fetch_all(pool)
    .await?;
    // The key's own risks, and its principal's (permissions, password, MFA).
    let field = |name: &str| info[name].as_str().unwrap_or_default().to_owned();
    let risks = sqlx::query(&format!(
        "{RISK_SELECT} WHERE key_id = $1 OR (key_id = '' AND principal <> '' AND cloud = $2 AND (account = $3 OR account = '') AND principal = $4) \
         ORDER BY present DESC, severity_rank DESC, risk_uid ASC LIMIT 500"
    ))
    .bind(key.as_str())
    .bind(field("cloud"))
    .bind(field("account"))
    .bind(field("principal"))
    .fetch_all(pool)
    .await?;
    let attrs = sqlx::query(
        "SELECT kind, value, calls, last_seen FROM inv_key_attrs WHERE key_id = $1 ORDER BY calls DESC, value ASC LIMIT 200",
    )
    .bind(key.as_str())
    .fetch_all(pool)
    .await?;
    let principal = sqlx::query(
        "SELECT body, source FROM inv_principals WHERE cloud = $1 AND principal = $2 AND (account = $3 OR account = '') ORDER BY account DESC LIMIT 1",
    )
    .bind(field("cloud"))
    .bind(field("principal"))
    .bind(field("account"))
    .fetch_optional(pool)
    .await?;
    if let Some(o) = info.as_object_mut() {
        o.insert(
            "ips".into(),
            json!(rows_json(
                &ips,
                &["ip"],
                &["calls", "first_seen", "last_seen"]
            )),
        );
        o.insert(
            "apis".into(),
            json!(rows_json(
                &apis,
                &["api"],
                &["calls", "failures", "last_seen"]
            )),
        );
        o.insert(
            "calls_per_day".into(),
            json!(rows_json(&days, &[], &["day", "calls", "failures"])),
        );
        let alarms = alarm_rows(&alarms);
        let risks = risk_rows(&risks);
        let (report, status) = report_facts(&principal, &key);
        o.insert("report".into(), report);
        o.insert("status".into(), json!(status));
        for (kind, name) in [("region", "regions"), ("user_agent", "user_agents")] {
            let rows: Vec<&sqlx::any::AnyRow> = attrs
                .iter()
                .filter(|r| r.try_get::<String, _>("kind").is_ok_and(|k| k == kind))
                .collect();
            let list: Vec<Value> = rows
                .iter()
                .map(|r| {
                    json!({
                        "value": r.try_get::<String, _>("value").unwrap_or_default(),
                        "calls": r.try_get::<i64, _>("calls").unwrap_or_default(),
                        "last_seen": r.try_get::<i64, _>("last_seen").unwrap_or_default(),
                    })
                })
                .collect();
            o.insert(name.into(), json!(list));
        }
        o.insert("policies".into(), json!(policies_naming(&s, &key)));
        o.insert("advice".into(), json!(advice(&alarms, &risks)));
        o.insert("alarms".into(), json!(alarms));
        o.insert("risks".into(), json!(risks));
    }
    Ok(Json(info))
}

/// The credential report's facts about a key's principal, and the key's status from them:
/// `at_risk` (Tencent's flag), `active` / `inactive`, `not_in_report` (the principal lists no
/// such key: deleted, or never its), `unknown` (no report names the principal).
fn report_facts(row: &Option<sqlx::any::AnyRow>, key: &str) -> (Value, &'static str) {
    let Some(row) = row else {
        return (Value::Null, "unknown");
    };
    let body: String = row.try_get("body").unwrap_or_default();
    let source: String = row.try_get("source").unwrap_or_default();
    let status = key_status(Some(&body), key);
    let mut p: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
    if let Some(o) = p.as_object_mut() {
        o.insert("report".into(), json!(source));
    }
    (p, status)
}

/// A key's status from its principal's report entry (`body`, none: no report names it).
fn key_status(body: Option<&str>, key: &str) -> &'static str {
    let Some(body) = body else {
        return "unknown";
    };
    let p: Value = serde_json::from_str(body).unwrap_or(Value::Null);
    let keys = p["keys"].as_array().cloned().unwrap_or_default();
    // Reports that name keys (Tencent) say which; the others (AWS, Alibaba) list slots: a
    // principal with an active slot has the key active, one with none has it inactive.
    let named = keys.iter().find(|k| k["id"].as_str() == Some(key));
    match named {
        Some(k) if k["at_risk"] == json!(true) => "at_risk",
        Some(k) if k["active"] == json!(true) => "active",
        Some(_) => "inactive",
        None if keys.is_empty() || keys.iter().all(|k| k["id"].is_string()) => "not_in_report",
        None if keys.iter().any(|k| k["active"] == json!(true)) => "active",
        None => "inactive",
    }
}

/// The severity of a stored rank (`inv_alarms.severity_rank`).
fn severity_name(rank: i64) -> &'static str {
    match rank {
        i64::MIN..=0 => "info",
        1 => "low",
        2 => "medium",
        3 => "high",
        _ => "critical",
    }
}

/// The policy entries that name a key (allowlist entries listing it, IP hiding), from the
/// policy directories the API knows; empty without them.
fn policies_naming(s: &ApiState, key: &str) -> Vec<Value> {
    let Some(files) = &s.policies else {
        return Vec::new();
    };
    let Ok(policy) = crate::policy::Policy::load_dirs(&files.dirs, &files.rules) else {
        return Vec::new();
    };
    let mut out: Vec<Value> = policy
        .allowlist
        .iter()
        .filter(|a| a.names_key(key))
        .map(|a| {
            json!({
                "kind": "allowlist", "id": a.id, "rules": a.rules,
                "expires": a.expires.map(|t| t.to_rfc3339()), "owner": a.owner, "comment": a.comment,
            })
        })
        .collect();
    if let Some(until) = policy.hiding(key) {
        out.push(json!({"kind": "ip-hiding", "expires": until.map(|t| t.to_rfc3339())}));
    }
    out
}

/// The distinct advice of an item's alarms and risks, most severe first.
fn advice(alarms: &[Value], risks: &[Value]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for a in risks.iter().chain(alarms) {
        let text = match &a["advice"] {
            Value::String(s) => vec![s.clone()],
            Value::Array(l) => l
                .iter()
                .filter_map(|x| x.as_str().map(str::to_owned))
                .collect(),
            _ => Vec::new(),
        };
        for t in text {
            if !t.is_empty() && !out.contains(&t) {
                out.push(t);
            }
        }
    }
    out
}

fn alarm_rows(rows: &[sqlx::any::AnyRow]) -> Vec<Value> {
    rows.iter()
        .filter_map(|r| {
            let body: String = r.try_get("body").ok()?;
            let mut v: Value = serde_json::from_str(&body).ok()?;
            let status: String = r.try_get("status").ok()?;
            v.as_object_mut()?
                .insert("triage_status".into(), json!(status));
            Some(v)
        })
        .collect()
}

/// An IP row, as the list and the IP's page both read it (`i` is `inv_ips`).
const IP_SELECT: &str = "SELECT i.ip, i.country, i.city, i.as_org, i.classes, i.note, i.asn, \
     i.first_seen, i.last_seen, i.calls, \
     (SELECT COUNT(*) FROM inv_key_ips k WHERE k.ip = i.ip) AS keys, \
     (SELECT COUNT(*) FROM inv_alarm_ips x WHERE x.ip = i.ip) AS alarm_count FROM inv_ips i";

const IP_TEXT: [&str; 6] = ["ip", "country", "city", "as_org", "classes", "note"];
const IP_INTS: [&str; 6] = [
    "asn",
    "first_seen",
    "last_seen",
    "calls",
    "keys",
    "alarm_count",
];

/// The longest text search of the IP list.
const MAX_SEARCH: usize = 200;

/// A `LIKE` pattern holding `s` anywhere, its wildcards escaped (with `ESCAPE '\'`).
fn like_anywhere(s: &str) -> String {
    let mut p = String::with_capacity(s.len() + 2);
    p.push('%');
    for ch in s.chars() {
        if matches!(ch, '%' | '_' | '\\') {
            p.push('\\');
        }
        p.push(ch);
    }
    p.push('%');
    p
}

async fn ips(
    State(s): State<Arc<ApiState>>,
    headers: HeaderMap,
    Query(q): Query<ListQuery>,
) -> ApiResult {
    authorize(&s, &headers, Role::Viewer)?;
    let (limit, offset) = page(&q)?;
    let bad = |m: String| Err(ApiError(StatusCode::BAD_REQUEST, m));
    let mut f = Filter::default();
    if let Some(c) = &q.class {
        if crate::enrich::IpClass::parse(c).is_none() {
            let all: Vec<&str> = crate::enrich::IpClass::ALL
                .iter()
                .map(|c| c.as_str())
                .collect();
            return bad(format!("class must be one of {}", all.join(", ")));
        }
        // `classes` is a JSON list of fixed names: the quoted name matches exactly one.
        f.text("i.classes LIKE ?", &Some(format!("%\"{c}\"%")));
    }
    f.text("i.country = ?", &q.country);
    match q.has_alarms {
        None => {}
        Some(1) => f.fixed("EXISTS (SELECT 1 FROM inv_alarm_ips x WHERE x.ip = i.ip)"),
        Some(0) => f.fixed("NOT EXISTS (SELECT 1 FROM inv_alarm_ips x WHERE x.ip = i.ip)"),
        Some(_) => return bad("has_alarms must be 0 or 1".into()),
    }
    if let Some(text) = q.q.as_deref().map(str::trim).filter(|t| !t.is_empty()) {
        if text.len() > MAX_SEARCH {
            return bad(format!("q is at most {MAX_SEARCH} bytes"));
        }
        // One scan of the IP table: a part of the address, or of the AS organisation (any case).
        let pattern = like_anywhere(&text.to_lowercase());
        f.params.push(Param::Text(pattern.clone()));
        f.params.push(Param::Text(pattern));
        let n = f.params.len();
        f.clauses.push(format!(
            "(LOWER(i.ip) LIKE ${} ESCAPE '\\' OR LOWER(i.as_org) LIKE ${n} ESCAPE '\\')",
            n - 1
        ));
    }
    let order = order_by(
        &q,
        &["last_seen", "calls", "first_seen", "ip", "keys"],
        "ip",
    )?;
    let total = count(
        &s.store,
        &format!("SELECT COUNT(*) FROM inv_ips i{}", f.sql()),
        &f,
    )
    .await?;
    let sql = format!(
        "{IP_SELECT}{}{order} LIMIT {limit} OFFSET {offset}",
        f.sql()
    );
    let rows = f.bind(sqlx::query(&sql)).fetch_all(s.store.pool()).await?;
    Ok(Json(
        json!({"items": rows_json(&rows, &IP_TEXT, &IP_INTS), "total": total, "limit": limit, "offset": offset}),
    ))
}

async fn ip(
    State(s): State<Arc<ApiState>>,
    headers: HeaderMap,
    Path(ip): Path<String>,
) -> ApiResult {
    authorize(&s, &headers, Role::Viewer)?;
    let pool = s.store.pool();
    let rows = sqlx::query(&format!("{IP_SELECT} WHERE i.ip = $1"))
        .bind(ip.as_str())
        .fetch_all(pool)
        .await?;
    let Some(mut info) = rows_json(&rows, &IP_TEXT, &IP_INTS).into_iter().next() else {
        return Err(ApiError(
            StatusCode::NOT_FOUND,
            format!("no source IP {ip}"),
        ));
    };
    let keys = sqlx::query(
        "SELECT u.cloud, u.key_id, u.calls, u.first_seen, u.last_seen FROM inv_key_ips u WHERE u.ip = $1 \
         AND NOT EXISTS (SELECT 1 FROM inv_keys h WHERE h.cloud = u.cloud AND h.key_id = u.key_id AND h.ip_hidden <> 0) \
         ORDER BY u.calls DESC, u.key_id ASC LIMIT 500",
    )
    .bind(ip.as_str())
    .fetch_all(pool)
    .await?;
    // The alarms naming this IP among their sources (`inv_alarm_ips`, as the list's
    // `has_alarms` filter reads them).
    let alarms = sqlx::query(
        "SELECT a.body, a.status FROM inv_alarms a JOIN inv_alarm_ips x ON x.alarm_id = a.alarm_id \
         WHERE x.ip = $1 ORDER BY a.severity_rank DESC, a.last_seen DESC LIMIT 200",
    )
    .bind(ip.as_str())
    .fetch_all(pool)
    .await?;
    if let Some(o) = info.as_object_mut() {
        o.insert("alarms".into(), json!(alarm_rows(&alarms)));
        o.insert(
            "keys_used".into(),
            json!(rows_json(
                &keys,
                &["cloud", "key_id"],
                &["calls", "first_seen", "last_seen"]
            )),
        );
    }
    Ok(Json(info))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NoteBody {
    note: String,
}

/// The longest IP note.
const MAX_NOTE: usize = 4096;

async fn ip_note(
    State(s): State<Arc<ApiState>>,
    headers: HeaderMap,
    Path(ip): Path<String>,
    Json(body): Json<NoteBody>,
) -> ApiResult {
    let caller = authorize(&s, &headers, Role::Operator)?;
    if body.note.len() > MAX_NOTE {
        return Err(ApiError(
            StatusCode::BAD_REQUEST,
            format!("a note is at most {MAX_NOTE} bytes"),
        ));
    }
    let mut tx = s.store.pool().begin().await?;
    let before: Option<String> = sqlx::query_scalar("SELECT note FROM inv_ips WHERE ip = $1")
        .bind(ip.as_str())
        .fetch_optional(&mut *tx)
        .await?;
    let Some(before) = before else {
        return Err(ApiError(
            StatusCode::NOT_FOUND,
            format!("no source IP {ip}"),
        ));
    };
    sqlx::query("UPDATE inv_ips SET note = $1 WHERE ip = $2")
        .bind(body.note.as_str())
        .bind(ip.as_str())
        .execute(&mut *tx)
        .await?;
    audit(&mut tx, &caller, "ip.note", &ip, &before, &body.note, "").await?;
    tx.commit().await?;
    Ok(Json(json!({"ip": ip, "note": body.note})))
}

/// The last stamp [`audit_id`] gave out in this process (microseconds since the epoch).
static LAST_AUDIT_STAMP: std::sync::atomic::AtomicI64 = std::sync::atomic::AtomicI64::new(0);

/// An audit entry's id and time (`at`, whole seconds). The id also orders the entries written
/// in one second: a stamp of 20 digits, strictly increasing within the process even when the
/// clock stands still or steps back, then a random hash so that two processes never collide.
/// `at` is the stamp's second, so it never goes back within the process either (after a step
/// back of the clock, entries keep the last second given until the clock passes it again).
/// `ORDER BY at, id` thus lists one console's changes in the order they were made.
fn audit_id(now_micros: i64, what: &str) -> (String, i64) {
    use std::sync::atomic::Ordering;
    let mut last = LAST_AUDIT_STAMP.load(Ordering::Relaxed);
    let stamp = loop {
        let next = now_micros.max(last.saturating_add(1)).max(0);
        match LAST_AUDIT_STAMP.compare_exchange_weak(
            last,
            next,
            Ordering::Relaxed,
            Ordering::Relaxed,
        ) {
            Ok(_) => break next,
            Err(seen) => last = seen,
        }
    };
    let hash = token_hash(&format!("{stamp}|{what}|{}", rand::random::<u64>()));
    (
        format!("{stamp:020}-{}", &hash[..32]),
        stamp.div_euclid(1_000_000),
    )
}

async fn audit(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    caller: &Caller,
    action: &str,
    target: &str,
    before: &str,
    after: &str,
    comment: &str,
) -> Result<(), sqlx::Error> {
    let (id, at) = audit_id(
        chrono::Utc::now().timestamp_micros(),
        &format!("{}|{action}|{target}|{after}", caller.name),
    );
    sqlx::query(
        "INSERT INTO inv_audit (id, at, actor, action, target, before_value, after_value, comment) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
    )
    .bind(id)
    .bind(at)
    .bind(format!("{} ({:?})", caller.name, caller.role).to_lowercase())
    .bind(action)
    .bind(target)
    .bind(before)
    .bind(after)
    .bind(comment)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

async fn accounts(
    State(s): State<Arc<ApiState>>,
    headers: HeaderMap,
    Query(q): Query<ListQuery>,
) -> ApiResult {
    authorize(&s, &headers, Role::Viewer)?;
    let (limit, offset) = page(&q)?;
    let mut f = Filter::default();
    f.text("a.cloud = ?", &q.cloud);
    let order = order_by(&q, &["last_seen", "calls", "account"], "account")?;
    let total = count(
        &s.store,
        &format!("SELECT COUNT(*) FROM inv_accounts a{}", f.sql()),
        &f,
    )
    .await?;
    let sql = format!(
        "SELECT a.cloud, a.account, a.first_seen, a.last_seen, a.calls, \
         (SELECT COUNT(*) FROM inv_keys k WHERE k.cloud = a.cloud AND k.account = a.account) AS keys, \
         (SELECT COUNT(*) FROM inv_alarms x WHERE x.cloud = a.cloud AND x.account = a.account AND x.status = 'pending') AS pending_alarms \
         FROM inv_accounts a{}{order} LIMIT {limit} OFFSET {offset}",
        f.sql()
    );
    let rows = f.bind(sqlx::query(&sql)).fetch_all(s.store.pool()).await?;
    Ok(Json(json!({
        "items": rows_json(&rows, &["cloud", "account"], &["first_seen", "last_seen", "calls", "keys", "pending_alarms"]),
        "total": total, "limit": limit, "offset": offset
    })))
}

async fn account(
    State(s): State<Arc<ApiState>>,
    headers: HeaderMap,
    Path((cloud, account)): Path<(String, String)>,
) -> ApiResult {
    authorize(&s, &headers, Role::Viewer)?;
    let pool = s.store.pool();
    let rows = sqlx::query("SELECT cloud, account, first_seen, last_seen, calls FROM inv_accounts WHERE cloud = $1 AND account = $2")
        .bind(cloud.as_str())
        .bind(account.as_str())
        .fetch_all(pool)
        .await?;
    let Some(mut info) = rows_json(
        &rows,
        &["cloud", "account"],
        &["first_seen", "last_seen", "calls"],
    )
    .into_iter()
    .next() else {
        return Err(ApiError(
            StatusCode::NOT_FOUND,
            format!("no account {cloud}/{account}"),
        ));
    };
    let keys = sqlx::query(
        "SELECT key_id, principal, principal_type, kind, last_seen, calls FROM inv_keys WHERE cloud = $1 AND account = $2 ORDER BY last_seen DESC LIMIT 500",
    )
    .bind(cloud.as_str())
    .bind(account.as_str())
    .fetch_all(pool)
    .await?;
    let by_severity = sqlx::query(
        "SELECT severity, COUNT(*) AS n FROM inv_alarms WHERE cloud = $1 AND account = $2 AND status = 'pending' GROUP BY severity",
    )
    .bind(cloud.as_str())
    .bind(account.as_str())
    .fetch_all(pool)
    .await?;
    // Reports that do not name their account (Alibaba, Tencent) count for every account of
    // their cloud whose keys their principals hold.
    let risks = sqlx::query(&format!(
        "{RISK_SELECT} WHERE cloud = $1 AND (account = $2 OR (account = '' AND principal IN \
         (SELECT principal FROM inv_keys WHERE cloud = $1 AND account = $2))) \
         ORDER BY present DESC, severity_rank DESC, risk_uid ASC LIMIT 500"
    ))
    .bind(cloud.as_str())
    .bind(account.as_str())
    .fetch_all(pool)
    .await?;
    let principals = sqlx::query(
        "SELECT principal, source, root, mfa, last_login, active_keys FROM inv_principals WHERE cloud = $1 AND (account = $2 OR (account = '' AND principal IN \
         (SELECT principal FROM inv_keys WHERE cloud = $1 AND account = $2))) ORDER BY root DESC, principal ASC LIMIT 500",
    )
    .bind(cloud.as_str())
    .bind(account.as_str())
    .fetch_all(pool)
    .await?;
    if let Some(o) = info.as_object_mut() {
        o.insert(
            "keys".into(),
            json!(rows_json(
                &keys,
                &["key_id", "principal", "principal_type", "kind"],
                &["last_seen", "calls"]
            )),
        );
        o.insert(
            "pending_alarms".into(),
            json!(rows_json(&by_severity, &["severity"], &["n"])),
        );
        let risks = risk_rows(&risks);
        o.insert("advice".into(), json!(advice(&[], &risks)));
        o.insert("risks".into(), json!(risks));
        o.insert(
            "principals".into(),
            json!(rows_json(
                &principals,
                &["principal", "source"],
                &["root", "mfa", "last_login", "active_keys"]
            )),
        );
        o.insert(
            "root_key_present".into(),
            json!(principals.iter().any(|r| {
                r.try_get::<i64, _>("root").unwrap_or(0) != 0
                    && r.try_get::<i64, _>("active_keys").unwrap_or(0) > 0
            })),
        );
        o.insert(
            "last_console_login".into(),
            json!(
                principals
                    .iter()
                    .filter_map(|r| r.try_get::<i64, _>("last_login").ok())
                    .filter(|t| *t > 0)
                    .max()
            ),
        );
        o.insert(
            "root_key_used".into(),
            json!(keys.iter().any(|r| {
                r.try_get::<String, _>("principal_type")
                    .is_ok_and(|t| t == "root")
            })),
        );
    }
    Ok(Json(info))
}

async fn alarms(
    State(s): State<Arc<ApiState>>,
    headers: HeaderMap,
    Query(q): Query<ListQuery>,
) -> ApiResult {
    authorize(&s, &headers, Role::Viewer)?;
    let (limit, offset) = page(&q)?;
    let mut f = Filter::default();
    f.text("status = ?", &q.status);
    f.text("severity = ?", &q.severity);
    f.text("rule_id = ?", &q.rule);
    f.text("cloud = ?", &q.cloud);
    f.text("account = ?", &q.account);
    f.text("key_id = ?", &q.key);
    f.int("last_seen >= ?", q.since);
    f.int("first_seen <= ?", q.until);
    let order = order_by(
        &q,
        &["last_seen", "severity_rank", "first_seen", "count"],
        "alarm_id",
    )?;
    let total = count(
        &s.store,
        &format!("SELECT COUNT(*) FROM inv_alarms{}", f.sql()),
        &f,
    )
    .await?;
    let sql = format!(
        "SELECT body, status FROM inv_alarms{}{order} LIMIT {limit} OFFSET {offset}",
        f.sql()
    );
    let rows = f.bind(sqlx::query(&sql)).fetch_all(s.store.pool()).await?;
    Ok(Json(
        json!({"items": alarm_rows(&rows), "total": total, "limit": limit, "offset": offset}),
    ))
}

async fn alarm(
    State(s): State<Arc<ApiState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult {
    authorize(&s, &headers, Role::Viewer)?;
    let pool = s.store.pool();
    let rows = sqlx::query("SELECT body, status FROM inv_alarms WHERE alarm_id = $1")
        .bind(id.as_str())
        .fetch_all(pool)
        .await?;
    let Some(mut a) = alarm_rows(&rows).into_iter().next() else {
        return Err(ApiError(StatusCode::NOT_FOUND, format!("no alarm {id}")));
    };
    let history = sqlx::query(
        "SELECT actor, action, before_value, after_value, comment, at FROM inv_audit WHERE target = $1 ORDER BY at ASC, id ASC LIMIT 500",
    )
    .bind(id.as_str())
    .fetch_all(pool)
    .await?;
    if let Some(o) = a.as_object_mut() {
        o.insert(
            "history".into(),
            json!(rows_json(
                &history,
                &["actor", "action", "before_value", "after_value", "comment"],
                &["at"]
            )),
        );
    }
    Ok(Json(a))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StatusBody {
    status: String,
    #[serde(default)]
    comment: String,
}

/// A triage status an operator may set, and its comment's size.
fn check_status(body: &StatusBody) -> Result<(), ApiError> {
    if !matches!(body.status.as_str(), "handled" | "ignored" | "pending") {
        return Err(ApiError(
            StatusCode::BAD_REQUEST,
            format!(
                "status must be handled, ignored or pending, not {:?}",
                body.status
            ),
        ));
    }
    if body.comment.len() > MAX_NOTE {
        return Err(ApiError(
            StatusCode::BAD_REQUEST,
            format!("a comment is at most {MAX_NOTE} bytes"),
        ));
    }
    Ok(())
}

async fn alarm_status(
    State(s): State<Arc<ApiState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Json(body): Json<StatusBody>,
) -> ApiResult {
    let before = set_status(&s, &headers, Triaged::Alarm, &id, &body).await?;
    Ok(Json(
        json!({"alarm_id": id, "status": body.status, "was": before}),
    ))
}

/// What triage sets the status of: its table, id column and name.
#[derive(Clone, Copy)]
enum Triaged {
    Alarm,
    Risk,
}

impl Triaged {
    /// (table, id column, what it is called, audit action); fixed strings only.
    fn parts(self) -> (&'static str, &'static str, &'static str, &'static str) {
        match self {
            Triaged::Alarm => ("inv_alarms", "alarm_id", "alarm", "alarm.status"),
            Triaged::Risk => ("inv_risks", "risk_uid", "risk", "risk.status"),
        }
    }
}

/// Triage (operator): sets an alarm's or a risk's status, audited with the comment; returns
/// the status before.
async fn set_status(
    s: &ApiState,
    headers: &HeaderMap,
    what: Triaged,
    id: &str,
    body: &StatusBody,
) -> Result<String, ApiError> {
    let caller = authorize(s, headers, Role::Operator)?;
    check_status(body)?;
    let (table, col, name, action) = what.parts();
    let mut tx = s.store.pool().begin().await?;
    // A write first: SQLite takes its write lock now (waiting for a running replay's batch)
    // rather than failing to upgrade a read later.
    sqlx::query(&format!(
        "UPDATE {table} SET status = status WHERE {col} = $1"
    ))
    .bind(id)
    .execute(&mut *tx)
    .await?;
    let before: Option<String> =
        sqlx::query_scalar(&format!("SELECT status FROM {table} WHERE {col} = $1"))
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?;
    let Some(before) = before else {
        return Err(ApiError(StatusCode::NOT_FOUND, format!("no {name} {id}")));
    };
    sqlx::query(&format!("UPDATE {table} SET status = $1 WHERE {col} = $2"))
        .bind(body.status.as_str())
        .bind(id)
        .execute(&mut *tx)
        .await?;
    audit(
        &mut tx,
        &caller,
        action,
        id,
        &before,
        &body.status,
        &body.comment,
    )
    .await?;
    tx.commit().await?;
    Ok(before)
}

/// Risk rows: the risk as the reports gave it, with its id, triage status, whether the newest
/// reports still show it, and when it was first and last seen.
fn risk_rows(rows: &[sqlx::any::AnyRow]) -> Vec<Value> {
    rows.iter()
        .filter_map(|r| {
            let body: String = r.try_get("body").ok()?;
            let mut v: Value = serde_json::from_str(&body).ok()?;
            let o = v.as_object_mut()?;
            o.insert("id".into(), json!(r.try_get::<String, _>("risk_uid").ok()?));
            o.insert(
                "triage_status".into(),
                json!(r.try_get::<String, _>("status").ok()?),
            );
            o.insert(
                "present".into(),
                json!(r.try_get::<i64, _>("present").ok()? != 0),
            );
            o.insert(
                "first_seen".into(),
                json!(r.try_get::<i64, _>("first_seen").ok()?),
            );
            o.insert(
                "last_seen".into(),
                json!(r.try_get::<i64, _>("last_seen").ok()?),
            );
            Some(v)
        })
        .collect()
}

const RISK_SELECT: &str =
    "SELECT risk_uid, body, status, present, first_seen, last_seen FROM inv_risks";

async fn risks(
    State(s): State<Arc<ApiState>>,
    headers: HeaderMap,
    Query(q): Query<ListQuery>,
) -> ApiResult {
    authorize(&s, &headers, Role::Viewer)?;
    let (limit, offset) = page(&q)?;
    let mut f = Filter::default();
    f.text("status = ?", &q.status);
    f.text("severity = ?", &q.severity);
    f.text("risk_id = ?", &q.rule);
    f.text("cloud = ?", &q.cloud);
    f.text("account = ?", &q.account);
    f.text("key_id = ?", &q.key);
    f.int("present = ?", q.present);
    let order = order_by(
        &q,
        &["severity_rank", "last_seen", "first_seen"],
        "risk_uid",
    )?;
    let total = count(
        &s.store,
        &format!("SELECT COUNT(*) FROM inv_risks{}", f.sql()),
        &f,
    )
    .await?;
    let sql = format!(
        "{RISK_SELECT}{}{order} LIMIT {limit} OFFSET {offset}",
        f.sql()
    );
    let rows = f.bind(sqlx::query(&sql)).fetch_all(s.store.pool()).await?;
    Ok(Json(
        json!({"items": risk_rows(&rows), "total": total, "limit": limit, "offset": offset}),
    ))
}

async fn risk(
    State(s): State<Arc<ApiState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult {
    authorize(&s, &headers, Role::Viewer)?;
    let pool = s.store.pool();
    let rows = sqlx::query(&format!("{RISK_SELECT} WHERE risk_uid = $1"))
        .bind(id.as_str())
        .fetch_all(pool)
        .await?;
    let Some(mut r) = risk_rows(&rows).into_iter().next() else {
        return Err(ApiError(StatusCode::NOT_FOUND, format!("no risk {id}")));
    };
    let history = sqlx::query(
        "SELECT actor, action, before_value, after_value, comment, at FROM inv_audit WHERE target = $1 ORDER BY at ASC, id ASC LIMIT 500",
    )
    .bind(id.as_str())
    .fetch_all(pool)
    .await?;
    if let Some(o) = r.as_object_mut() {
        o.insert(
            "history".into(),
            json!(rows_json(
                &history,
                &["actor", "action", "before_value", "after_value", "comment"],
                &["at"]
            )),
        );
    }
    Ok(Json(r))
}

async fn risk_status(
    State(s): State<Arc<ApiState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Json(body): Json<StatusBody>,
) -> ApiResult {
    let before = set_status(&s, &headers, Triaged::Risk, &id, &body).await?;
    Ok(Json(
        json!({"id": id, "status": body.status, "was": before}),
    ))
}

async fn overview(State(s): State<Arc<ApiState>>, headers: HeaderMap) -> ApiResult {
    authorize(&s, &headers, Role::Viewer)?;
    let pool = s.store.pool();
    let kinds = sqlx::query("SELECT kind, COUNT(*) AS n FROM inv_keys GROUP BY kind ORDER BY kind")
        .fetch_all(pool)
        .await?;
    let pending = sqlx::query(
        "SELECT severity, COUNT(*) AS n FROM inv_alarms WHERE status = 'pending' GROUP BY severity ORDER BY severity",
    )
    .fetch_all(pool)
    .await?;
    let pending_risks = sqlx::query(
        "SELECT severity, COUNT(*) AS n FROM inv_risks WHERE status = 'pending' AND present = 1 GROUP BY severity ORDER BY severity",
    )
    .fetch_all(pool)
    .await?;
    let keys_with_pending: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM inv_keys k WHERE EXISTS (SELECT 1 FROM inv_alarms a WHERE a.key_id = k.key_id AND a.status = 'pending')",
    )
    .fetch_one(pool)
    .await?;
    let latest: Option<i64> = sqlx::query_scalar("SELECT MAX(last_seen) FROM inv_alarms")
        .fetch_one(pool)
        .await?;
    // Alarms per day for the 30 days up to the newest alarm (event time: replays of old logs
    // chart too).
    let since = latest.unwrap_or(0) - 30 * 86_400;
    let per_day = sqlx::query(
        "SELECT (first_seen / 86400) * 86400 AS day, COUNT(*) AS n FROM inv_alarms WHERE first_seen > $1 \
         GROUP BY (first_seen / 86400) * 86400 ORDER BY day ASC",
    )
    .bind(since)
    .fetch_all(pool)
    .await?;
    let top_keys = sqlx::query(
        "SELECT key_id, COUNT(*) AS n FROM inv_alarms WHERE status = 'pending' AND key_id <> '' GROUP BY key_id ORDER BY n DESC, key_id ASC LIMIT 10",
    )
    .fetch_all(pool)
    .await?;
    let top_ips =
        sqlx::query("SELECT ip, calls AS n FROM inv_ips ORDER BY calls DESC, ip ASC LIMIT 10")
            .fetch_all(pool)
            .await?;
    // Keys by report status (each key's principal judged; at most MAX_STATUS_SCAN keys, the
    // rest not counted by status).
    let statuses = sqlx::query(&format!(
        "SELECT k.key_id{KEY_PRINCIPAL} FROM inv_keys k LIMIT {}",
        MAX_STATUS_SCAN
    ))
    .fetch_all(pool)
    .await?;
    let mut by_status: std::collections::BTreeMap<&str, i64> = std::collections::BTreeMap::new();
    for r in &statuses {
        let key: String = r.try_get("key_id").unwrap_or_default();
        let body: Option<String> = r.try_get("principal_body").ok().flatten();
        *by_status
            .entry(key_status(body.as_deref(), &key))
            .or_default() += 1;
    }
    // Keys needing attention: pending alarms, the most severe first.
    let attention = sqlx::query(
        "SELECT key_id, MAX(severity_rank) AS rank, COUNT(*) AS n, MAX(last_seen) AS last_seen FROM inv_alarms \
         WHERE status = 'pending' AND key_id <> '' GROUP BY key_id ORDER BY rank DESC, n DESC, key_id ASC LIMIT 10",
    )
    .fetch_all(pool)
    .await?;
    let attention: Vec<Value> = attention
        .iter()
        .map(|r| {
            let rank = r.try_get::<i64, _>("rank").unwrap_or_default();
            json!({
                "key_id": r.try_get::<String, _>("key_id").unwrap_or_default(),
                "severity": severity_name(rank),
                "n": r.try_get::<i64, _>("n").unwrap_or_default(),
                "last_seen": r.try_get::<i64, _>("last_seen").unwrap_or_default(),
            })
        })
        .collect();
    let recent = sqlx::query(
        "SELECT actor, action, target, comment, at FROM inv_audit ORDER BY at DESC, id DESC LIMIT 8",
    )
    .fetch_all(pool)
    .await?;
    let keys_total: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM inv_keys")
        .fetch_one(pool)
        .await?;
    Ok(Json(json!({
        "keys_total": keys_total,
        "keys_by_status": by_status,
        "keys_needing_attention": attention,
        "recent_changes": rows_json(&recent, &["actor", "action", "target", "comment"], &["at"]),
        "keys_by_kind": rows_json(&kinds, &["kind"], &["n"]),
        "pending_alarms_by_severity": rows_json(&pending, &["severity"], &["n"]),
        "pending_risks_by_severity": rows_json(&pending_risks, &["severity"], &["n"]),
        "keys_with_pending_alarms": keys_with_pending,
        "alarms_per_day": rows_json(&per_day, &[], &["day", "n"]),
        "top_keys": rows_json(&top_keys, &["key_id"], &["n"]),
        "top_ips": rows_json(&top_ips, &["ip"], &["n"]),
    })))
}

async fn audit_log(
    State(s): State<Arc<ApiState>>,
    headers: HeaderMap,
    Query(q): Query<ListQuery>,
) -> ApiResult {
    authorize(&s, &headers, Role::Viewer)?;
    let (limit, offset) = page(&q)?;
    let f = Filter::default();
    let total = count(&s.store, "SELECT COUNT(*) FROM inv_audit", &f).await?;
    let rows = sqlx::query(&format!(
        "SELECT actor, action, target, before_value, after_value, comment, at FROM inv_audit ORDER BY at DESC, id DESC LIMIT {limit} OFFSET {offset}"
    ))
    .fetch_all(s.store.pool())
    .await?;
    Ok(Json(json!({
        "items": rows_json(&rows, &["actor", "action", "target", "before_value", "after_value", "comment"], &["at"]),
        "total": total, "limit": limit, "offset": offset
    })))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct AllowBody {
    comment: String,
    owner: Option<String>,
    /// `2026-12-31` or an RFC 3339 time.
    expires: Option<String>,
    /// What besides the key and the rule the entry is scoped to: `ip` (the alarm's source IPs),
    /// `api` (its APIs).
    scope: Vec<String>,
    /// Check the entry and preview what it would have matched; store nothing.
    dry_run: bool,
}

/// `POST /alarms/{id}/allowlist`: an allowlist entry scoped from the alarm (its key and rule,
/// and its IPs / APIs when asked), validated like the policy files, written to
/// `api-allowlist.yaml` (appended: the file's comments stay), and the alarm marked
/// `allowlisted`. The next replay, or a service that reloads its policies, applies it.
async fn alarm_allowlist(
    State(s): State<Arc<ApiState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Json(body): Json<AllowBody>,
) -> ApiResult {
    let caller = authorize(&s, &headers, Role::Operator)?;
    let Some(files) = &s.policies else {
        return Err(ApiError(
            StatusCode::CONFLICT,
            "no policy directory to write to (serve --policies DIR)".into(),
        ));
    };
    if body.comment.trim().is_empty() || body.comment.len() > MAX_NOTE {
        return Err(ApiError(
            StatusCode::BAD_REQUEST,
            format!("a comment (why this is allowed) of 1 to {MAX_NOTE} bytes is required"),
        ));
    }
    if let Some(bad) = body
        .scope
        .iter()
        .find(|x| !matches!(x.as_str(), "ip" | "api"))
    {
        return Err(ApiError(
            StatusCode::BAD_REQUEST,
            format!("scope: ip or api, not {bad:?}"),
        ));
    }
    let row: Option<(String, String)> =
        sqlx::query_as("SELECT body, status FROM inv_alarms WHERE alarm_id = $1")
            .bind(id.as_str())
            .fetch_optional(s.store.pool())
            .await?;
    let Some((alarm, before)) = row else {
        return Err(ApiError(StatusCode::NOT_FOUND, format!("no alarm {id}")));
    };
    let alarm: crate::alarm::Alarm = serde_json::from_str(&alarm).map_err(|e| {
        ApiError(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("stored alarm unreadable: {e}"),
        )
    })?;
    let Some(key) = &alarm.access_key_id else {
        return Err(ApiError(
            StatusCode::BAD_REQUEST,
            "the alarm names no access key".into(),
        ));
    };
    let mut entry = serde_json::Map::new();
    entry.insert("id".into(), json!(format!("alarm-{}", alarm.alarm_id)));
    entry.insert("keys".into(), json!([key.0]));
    entry.insert("rules".into(), json!([alarm.rule_id]));
    if body.scope.iter().any(|x| x == "ip") {
        let ips: Vec<&str> = alarm
            .source_ips
            .iter()
            .map(|i| i.ip.as_str())
            .filter(|i| i.parse::<std::net::IpAddr>().is_ok())
            .collect();
        if ips.is_empty() {
            return Err(ApiError(
                StatusCode::BAD_REQUEST,
                "scope ip: the alarm lists no IP address (IP-hidden or a service caller)".into(),
            ));
        }
        entry.insert("ips".into(), json!(ips));
    }
    if body.scope.iter().any(|x| x == "api") {
        // Names from logs are matched as globs: one holding `*`, `?` or a leading `@` (a
        // catalog) would widen the entry beyond the alarm.
        if let Some(bad) = alarm
            .apis
            .iter()
            .find(|a| a.contains(['*', '?']) || a.starts_with('@'))
        {
            return Err(ApiError(
                StatusCode::BAD_REQUEST,
                format!("scope api: {bad:?} would match more than itself"),
            ));
        }
        entry.insert("apis".into(), json!(alarm.apis));
    }
    if let Some(x) = &body.expires {
        entry.insert("expires".into(), json!(x));
    }
    entry.insert(
        "owner".into(),
        json!(body.owner.clone().unwrap_or_else(|| caller.name.clone())),
    );
    entry.insert("comment".into(), json!(body.comment));
    let entry = Value::Object(entry);
    let entry_id = format!("alarm-{}", alarm.alarm_id);
    let guard = files.lock.lock().await;
    // Stored and checked like any policy change (the loader's messages), the alarm marked in
    // the same transaction.
    let mut tx = s.store.pool().begin().await?;
    let (_, text, policy) = policies::change_in(
        &mut tx,
        files,
        &caller,
        crate::policy_store::Kind::Allowlist,
        &entry_id,
        policies::Op::Create(entry.clone()),
    )
    .await?;
    if body.dry_run {
        // Rolled back; the preview below holds no lock.
        drop(tx);
        drop(guard);
        let matched = policies::preview(
            &s.store,
            crate::policy_store::Kind::Allowlist,
            &policy,
            &entry_id,
            &entry,
        )
        .await?;
        return Ok(Json(json!({
            "alarm_id": id, "entry": entry, "dry_run": true, "file_text": text, "preview": matched,
        })));
    }
    sqlx::query("UPDATE inv_alarms SET status = 'allowlisted' WHERE alarm_id = $1")
        .bind(id.as_str())
        .execute(&mut *tx)
        .await?;
    audit(
        &mut tx,
        &caller,
        "alarm.allowlist",
        &id,
        &before,
        &entry.to_string(),
        &body.comment,
    )
    .await?;
    tx.commit().await?;
    let file = policies::write_file(files, crate::policy_store::Kind::Allowlist, &text)?;
    Ok(Json(
        json!({"alarm_id": id, "status": "allowlisted", "entry": entry, "file": file}),
    ))
}

async fn openapi_json(State(s): State<Arc<ApiState>>, headers: HeaderMap) -> ApiResult {
    authorize(&s, &headers, Role::Viewer)?;
    Ok(Json(openapi::document()))
}

/// How long a request may take (its queries are cancelled past it).
pub const REQUEST_TIME: std::time::Duration = std::time::Duration::from_secs(10);

/// Before any handler: a request without a valid token is refused before its body is read
/// (handlers still check the role), and every request is bounded by [`REQUEST_TIME`].
async fn gate(
    State(s): State<Arc<ApiState>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    if let Err(e) = authorize(&s, req.headers(), Role::Viewer) {
        return e.into_response();
    }
    match tokio::time::timeout(REQUEST_TIME, next.run(req)).await {
        Ok(r) => r,
        Err(_) => ApiError(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "the request took longer than {} s and was stopped",
                REQUEST_TIME.as_secs()
            ),
        )
        .into_response(),
    }
}

/// The largest request body accepted.
pub const MAX_BODY: usize = 64 * 1024;

/// The API's routes under `/api/v1`.
pub fn router(state: Arc<ApiState>) -> Router {
    let api = Router::new()
        .route("/overview", get(overview))
        .route("/keys", get(keys))
        .route("/keys/{key}", get(key))
        .route("/ips", get(ips))
        .route("/ips/{ip}", get(ip))
        .route("/ips/{ip}/note", put(ip_note))
        .route("/accounts", get(accounts))
        .route("/accounts/{cloud}/{account}", get(account))
        .route("/alarms", get(alarms))
        .route("/alarms/{id}", get(alarm))
        .route("/alarms/{id}/status", post(alarm_status))
        .route("/alarms/{id}/allowlist", post(alarm_allowlist))
        .route("/risks", get(risks))
        .route("/risks/{id}", get(risk))
        .route("/risks/{id}/status", post(risk_status))
        .route(
            "/policies/{kind}",
            get(policies::list).post(policies::create),
        )
        .route(
            "/policies/{kind}/{id}",
            get(policies::one)
                .put(policies::put)
                .delete(policies::delete),
        )
        .route("/audit", get(audit_log))
        .route("/openapi.json", get(openapi_json))
        .layer(axum::middleware::from_fn_with_state(state.clone(), gate))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY))
        .with_state(state);
    Router::new().nest("/api/v1", api)
}

#[cfg(test)]
mod tests {
    use super::audit_id;

    #[test]
    fn audit_ids_sort_in_the_order_they_were_given_even_when_the_clock_stands_still_or_steps_back()
    {
        let now = chrono::Utc::now().timestamp_micros();
        let clock = [now, now, now, now - 5_000_000, now + 1, now - 1, now + 10];
        let given: Vec<(String, i64)> = clock
            .iter()
            .map(|&t| audit_id(t, "bob|alarm.status|x|handled"))
            .collect();
        // Listed by (at, id), as the audit log is: the order they were given.
        assert!(
            given
                .windows(2)
                .all(|w| (w[0].1, &w[0].0) < (w[1].1, &w[1].0)),
            "{given:?}"
        );
        assert!(
            given.iter().all(|(id, at)| id.len() == 53
                && id.as_bytes()[20] == b'-'
                && *at >= now / 1_000_000),
            "{given:?}"
        );
        // A clock well ahead is followed; the time is its second.
        let later = now + 3_600_000_000;
        assert_eq!(audit_id(later, "x").1, later / 1_000_000);
    }
}
