//! `/policies/{allowlist|ip-hiding|alarm}`: the policy entries made through the API (read,
//! create, replace, delete) beside the read-only entries of the policy files. A change is checked
//! by the policy loader on the files as they would be (same messages as at start-up), stored with
//! the revision bumped, audited, and rendered to the kind's `api-*.yaml` file; a running service
//! applies it live (see [`crate::policy_store`]).

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use serde_json::{Value, json};

use super::{ApiError, ApiResult, ApiState, Caller, PolicyFiles, Role, audit, authorize};
use crate::policy_store::{self, Kind};

/// The longest id of an entry.
const MAX_ID: usize = 128;

fn kind(s: &str) -> Result<Kind, ApiError> {
    Kind::parse(s).ok_or_else(|| {
        ApiError(
            StatusCode::NOT_FOUND,
            format!("no policy kind {s:?}: allowlist, ip-hiding or alarm"),
        )
    })
}

fn files(s: &ApiState) -> Result<&PolicyFiles, ApiError> {
    s.policies.as_ref().ok_or_else(|| {
        ApiError(
            StatusCode::CONFLICT,
            "no policy directory to write to (serve --policies DIR, or inventory.api.policies_dir)"
                .into(),
        )
    })
}

fn check_id(id: &str) -> Result<(), ApiError> {
    let ok = !id.is_empty()
        && id.len() <= MAX_ID
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._:-@".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(ApiError(
            StatusCode::BAD_REQUEST,
            format!("id {id:?}: 1 to {MAX_ID} of letters, digits and . _ : - @"),
        ))
    }
}

/// The entries of the policy files (not the API's own): read-only here.
fn file_entries(files: &PolicyFiles, kind: Kind) -> Vec<Value> {
    let mut out = Vec::new();
    for dir in &files.dirs {
        let Ok(read) = std::fs::read_dir(dir) else {
            continue;
        };
        let mut paths: Vec<std::path::PathBuf> = read
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| {
                p.extension().is_some_and(|x| x == "yaml" || x == "yml")
                    && !p
                        .file_name()
                        .is_some_and(|n| n.to_string_lossy().starts_with("api-"))
            })
            .collect();
        paths.sort();
        for path in paths {
            let Ok(text) = std::fs::read_to_string(&path) else {
                continue;
            };
            let Ok(doc) = serde_saphyr::from_str::<Value>(&text) else {
                continue;
            };
            let file = path.display().to_string();
            let mut push = |id: String, entry: Value| {
                out.push(json!({"id": id, "entry": entry, "source": "file", "file": file, "editable": false}));
            };
            match kind {
                Kind::Allowlist | Kind::IpHiding => {
                    let key = kind.yaml_key();
                    for (i, e) in doc[key].as_array().into_iter().flatten().enumerate() {
                        let id = e["id"]
                            .as_str()
                            .map_or_else(|| format!("{key}[{i}]"), str::to_owned);
                        push(id, e.clone());
                    }
                }
                Kind::Alarm => {
                    if let Some(rules) = doc[kind.yaml_key()]["rules"].as_object() {
                        for (id, e) in rules {
                            push(id.clone(), e.clone());
                        }
                    }
                }
            }
        }
    }
    out
}

pub(super) async fn list(
    State(s): State<Arc<ApiState>>,
    headers: HeaderMap,
    Path(k): Path<String>,
) -> ApiResult {
    authorize(&s, &headers, Role::Viewer)?;
    let kind = kind(&k)?;
    let rows = sqlx::query_as::<_, (String, String, i64, String)>(
        "SELECT id, body, updated, updated_by FROM inv_policies WHERE kind = $1 ORDER BY id ASC",
    )
    .bind(kind.as_str())
    .fetch_all(s.store.pool())
    .await?;
    let file = s
        .policies
        .as_ref()
        .map(|f| f.dir.join(kind.file()).display().to_string());
    let mut items: Vec<Value> = rows
        .into_iter()
        .map(|(id, body, updated, by)| {
            let entry: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
            json!({"id": id, "entry": entry, "source": "api", "file": file, "updated": updated, "updated_by": by, "editable": true})
        })
        .collect();
    if let Some(f) = &s.policies {
        items.extend(file_entries(f, kind));
    }
    Ok(Json(
        json!({"kind": kind.as_str(), "items": items, "total": items.len()}),
    ))
}

pub(super) async fn one(
    State(s): State<Arc<ApiState>>,
    headers: HeaderMap,
    Path((k, id)): Path<(String, String)>,
) -> ApiResult {
    authorize(&s, &headers, Role::Viewer)?;
    let kind = kind(&k)?;
    let row = sqlx::query_as::<_, (String, i64, String)>(
        "SELECT body, updated, updated_by FROM inv_policies WHERE kind = $1 AND id = $2",
    )
    .bind(kind.as_str())
    .bind(id.as_str())
    .fetch_optional(s.store.pool())
    .await?;
    if let Some((body, updated, by)) = row {
        let entry: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
        return Ok(Json(
            json!({"id": id, "entry": entry, "source": "api", "updated": updated, "updated_by": by, "editable": true}),
        ));
    }
    s.policies
        .as_ref()
        .and_then(|f| {
            file_entries(f, kind)
                .into_iter()
                .find(|e| e["id"] == json!(id))
        })
        .map(Json)
        .ok_or_else(|| {
            ApiError(
                StatusCode::NOT_FOUND,
                format!("no {} entry {id}", kind.as_str()),
            )
        })
}

/// What a change does to an entry.
pub(super) enum Op {
    /// Create; an entry with the id must not exist.
    Create(Value),
    /// Create or replace.
    Put(Value),
    Delete,
}

/// One change, in `tx`: the revision bumped first (serialising writers, across instances
/// too), the kind's entries read, the change checked by the policy loader on the files as they
/// would be, the row written. Returns the entry before and the file's new text.
pub(super) async fn change_in(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    files: &PolicyFiles,
    caller: &Caller,
    kind: Kind,
    id: &str,
    op: Op,
) -> Result<(Option<Value>, String, crate::policy::Policy), ApiError> {
    check_id(id)?;
    sqlx::query("UPDATE inv_policy_rev SET rev = rev + 1 WHERE singleton = 1")
        .execute(&mut **tx)
        .await?;
    let mut list = policy_store::entries(&mut **tx, kind)
        .await
        .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, format!("{e:#}")))?;
    let at = list.iter().position(|(i, _)| i == id);
    let before = at.map(|i| list[i].1.clone());
    let new = match op {
        Op::Create(_) if at.is_some() => {
            return Err(ApiError(
                StatusCode::CONFLICT,
                format!("a {} entry {id} exists: PUT replaces it", kind.as_str()),
            ));
        }
        Op::Delete if at.is_none() => {
            return Err(ApiError(
                StatusCode::NOT_FOUND,
                format!("no {} entry {id} made through the API", kind.as_str()),
            ));
        }
        Op::Create(v) | Op::Put(v) => {
            let Value::Object(mut o) = v else {
                return Err(ApiError(
                    StatusCode::BAD_REQUEST,
                    "the entry must be a JSON object".into(),
                ));
            };
            o.remove("id");
            Some(Value::Object(o))
        }
        Op::Delete => None,
    };
    match (&new, at) {
        (Some(v), Some(i)) => list[i].1 = v.clone(),
        (Some(v), None) => {
            list.push((id.to_owned(), v.clone()));
            list.sort_by(|a, b| a.0.cmp(&b.0));
        }
        (None, Some(i)) => {
            list.remove(i);
        }
        (None, None) => {}
    }
    let text = policy_store::render(kind, &list);
    let path = files.dir.join(kind.file());
    let policy = crate::policy::Policy::load_dirs_replacing(
        &files.dirs,
        &files.rules,
        &[(path, text.clone())],
    )
    .map_err(|errors| ApiError(StatusCode::BAD_REQUEST, errors.join("\n")))?;
    match &new {
        Some(v) => {
            sqlx::query(
                "INSERT INTO inv_policies (kind, id, body, updated, updated_by) VALUES ($1, $2, $3, $4, $5) \
                 ON CONFLICT (kind, id) DO UPDATE SET body = excluded.body, updated = excluded.updated, updated_by = excluded.updated_by",
            )
            .bind(kind.as_str())
            .bind(id)
            .bind(v.to_string())
            .bind(chrono::Utc::now().timestamp())
            .bind(caller.name.as_str())
            .execute(&mut **tx)
            .await?;
        }
        None => {
            sqlx::query("DELETE FROM inv_policies WHERE kind = $1 AND id = $2")
                .bind(kind.as_str())
                .bind(id)
                .execute(&mut **tx)
                .await?;
        }
    }
    Ok((before, text, policy))
}

/// Writes a kind's file after its change committed (a failure is reported; the store has the
/// change and a running service renders the file again).
pub(super) fn write_file(files: &PolicyFiles, kind: Kind, text: &str) -> Result<String, ApiError> {
    let path = files.dir.join(kind.file());
    std::fs::create_dir_all(&files.dir)
        .and_then(|()| policy_store::write_atomic(&path, text))
        .map_err(|e| {
            ApiError(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!(
                    "the change is stored but {} could not be written: {e}",
                    path.display()
                ),
            )
        })?;
    Ok(path.display().to_string())
}

/// `?dry_run=true`: check the change and preview it, store nothing.
#[derive(serde::Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub(super) struct DryRun {
    dry_run: bool,
}

async fn apply(
    s: &ApiState,
    headers: &HeaderMap,
    k: &str,
    id: Option<String>,
    op: Op,
    dry_run: bool,
) -> ApiResult {
    let caller = authorize(s, headers, Role::Admin)?;
    let kind = kind(k)?;
    let files = files(s)?;
    let id = match (id, &op) {
        (Some(id), _) => id,
        (None, Op::Create(v) | Op::Put(v)) => v["id"]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| ApiError(StatusCode::BAD_REQUEST, "the entry needs an id".into()))?,
        (None, Op::Delete) => unreachable!("a delete names its entry"),
    };
    let action = match &op {
        Op::Create(_) => "create",
        Op::Put(_) => "update",
        Op::Delete => "delete",
    };
    let guard = files.lock.lock().await;
    let mut tx = s.store.pool().begin().await?;
    let (before, text, policy) = change_in(&mut tx, files, &caller, kind, &id, op).await?;
    let after: Value = policy_store::entries(&mut *tx, kind)
        .await
        .ok()
        .and_then(|l| l.into_iter().find(|(i, _)| *i == id).map(|(_, v)| v))
        .unwrap_or(Value::Null);
    if dry_run {
        // Dropping the transaction rolls the change back; the preview holds no lock.
        drop(tx);
        drop(guard);
        let matched = preview(&s.store, kind, &policy, &id, &after).await?;
        return Ok(Json(json!({
            "kind": kind.as_str(), "id": id, "entry": after, "before": before,
            "dry_run": true, "file_text": text, "preview": matched,
        })));
    }
    let comment = after["comment"].as_str().unwrap_or_default().to_owned();
    audit(
        &mut tx,
        &caller,
        &format!("policy.{}.{action}", kind.as_str()),
        &format!("policy:{}:{id}", kind.as_str()),
        &before.as_ref().map_or(String::new(), Value::to_string),
        &if after.is_null() {
            String::new()
        } else {
            after.to_string()
        },
        &comment,
    )
    .await?;
    tx.commit().await?;
    let file = write_file(files, kind, &text)?;
    Ok(Json(
        json!({"kind": kind.as_str(), "id": id, "entry": after, "before": before, "file": file}),
    ))
}

pub(super) async fn create(
    State(s): State<Arc<ApiState>>,
    headers: HeaderMap,
    Path(k): Path<String>,
    Query(d): Query<DryRun>,
    Json(body): Json<Value>,
) -> ApiResult {
    apply(&s, &headers, &k, None, Op::Create(body), d.dry_run).await
}

pub(super) async fn put(
    State(s): State<Arc<ApiState>>,
    headers: HeaderMap,
    Path((k, id)): Path<(String, String)>,
    Query(d): Query<DryRun>,
    Json(body): Json<Value>,
) -> ApiResult {
    apply(&s, &headers, &k, Some(id), Op::Put(body), d.dry_run).await
}

pub(super) async fn delete(
    State(s): State<Arc<ApiState>>,
    headers: HeaderMap,
    Path((k, id)): Path<(String, String)>,
) -> ApiResult {
    apply(&s, &headers, &k, Some(id), Op::Delete, false).await
}

/// The days a preview looks back from the newest hourly rollup.
pub const PREVIEW_DAYS: i64 = 7;
/// The most rollup rows (key, IP, API) and alarms a preview judges.
pub const PREVIEW_ROWS: usize = 200_000;
const PREVIEW_ALARMS: usize = 5_000;
/// The most named keys a preview reads.
const PREVIEW_KEYS: usize = 1_000;

/// What an entry, as `policy` loaded it, would have matched in the last [`PREVIEW_DAYS`] of the
/// inventory: calls (by key, IP and API, from the hourly rollups) and stored alarms.
pub(super) async fn preview(
    store: &crate::inventory::Store,
    kind: Kind,
    policy: &crate::policy::Policy,
    id: &str,
    entry: &Value,
) -> Result<Value, ApiError> {
    use sqlx::Row as _;
    use std::collections::BTreeMap;
    let pool = store.pool();
    let newest: Option<i64> = sqlx::query_scalar("SELECT MAX(hour) FROM inv_calls_hourly")
        .fetch_one(pool)
        .await?;
    let Some(newest) = newest else {
        return Ok(
            json!({"days": PREVIEW_DAYS, "calls": 0, "note": "no invocation records in the inventory yet"}),
        );
    };
    let until = newest.saturating_add(3600);
    let since = until.saturating_sub(PREVIEW_DAYS * 86_400);
    let mut calls = 0i64;
    let mut keys: BTreeMap<String, i64> = BTreeMap::new();
    let mut ips: BTreeMap<String, i64> = BTreeMap::new();
    let mut apis: BTreeMap<String, i64> = BTreeMap::new();
    let mut rows_read = 0usize;
    let mut truncated = false;
    let mut count_row = |r: &sqlx::any::AnyRow, keys: &mut BTreeMap<String, i64>| {
        let n = r.try_get::<i64, _>("calls").unwrap_or_default();
        calls = calls.saturating_add(n);
        for (map, col) in [(&mut *keys, "key_id"), (&mut ips, "ip"), (&mut apis, "api")] {
            let v = r.try_get::<String, _>(col).unwrap_or_default();
            // (An IP-hidden key's calls have no IP: counted in calls, not as an IP.)
            if v.is_empty() || v == "hidden" {
                continue;
            }
            let slot = map.entry(v).or_default();
            *slot = slot.saturating_add(n);
        }
    };
    let group = "SELECT key_id, ip, api, CAST(SUM(calls) AS BIGINT) AS calls FROM inv_calls_hourly";
    let by_key = format!(
        "{group} WHERE key_id = $1 AND hour >= $2 GROUP BY key_id, ip, api LIMIT {}",
        PREVIEW_ROWS + 1
    );
    let rows_of_key = |key: String| sqlx::query(&by_key).bind(key).bind(since).fetch_all(pool);
    let mut unjudged: Vec<&str> = Vec::new();
    let mut alarms_matched = 0usize;
    let mut alarm_samples: Vec<Value> = Vec::new();
    match kind {
        Kind::Allowlist => {
            let Some(a) = policy.allowlist.iter().find(|a| a.id == id) else {
                return Ok(json!({"days": PREVIEW_DAYS, "calls": 0}));
            };
            unjudged = a.unjudged_members();
            let named: Vec<String> = a.keys().map(str::to_owned).collect();
            let rows = if named.is_empty() {
                sqlx::query(&format!(
                    "{group} WHERE hour >= $1 GROUP BY key_id, ip, api LIMIT {}",
                    PREVIEW_ROWS + 1
                ))
                .bind(since)
                .fetch_all(pool)
                .await?
            } else {
                if named.len() > PREVIEW_KEYS {
                    truncated = true;
                }
                let mut all = Vec::new();
                for k in named.into_iter().take(PREVIEW_KEYS) {
                    if all.len() > PREVIEW_ROWS {
                        break;
                    }
                    all.extend(rows_of_key(k).await?);
                }
                all
            };
            for r in &rows {
                rows_read += 1;
                if rows_read > PREVIEW_ROWS {
                    truncated = true;
                    break;
                }
                let key = r.try_get::<String, _>("key_id").unwrap_or_default();
                let ip = r
                    .try_get::<String, _>("ip")
                    .ok()
                    .and_then(|i| i.parse().ok());
                let api = r.try_get::<String, _>("api").unwrap_or_default();
                if a.covers_call(&key, ip, &api) {
                    count_row(r, &mut keys);
                }
            }
            // Stored alarms of the window the entry would have suppressed (judged on their
            // key, rule, source IPs and APIs).
            let stored = sqlx::query(&format!(
                "SELECT body, status FROM inv_alarms WHERE last_seen >= $1 ORDER BY last_seen DESC LIMIT {PREVIEW_ALARMS}"
            ))
            .bind(since)
            .fetch_all(pool)
            .await?;
            if stored.len() >= PREVIEW_ALARMS {
                truncated = true;
            }
            for r in &stored {
                let Ok(body) = r.try_get::<String, _>("body") else {
                    continue;
                };
                let Ok(alarm) = serde_json::from_str::<crate::alarm::Alarm>(&body) else {
                    continue;
                };
                let Some(key) = &alarm.access_key_id else {
                    continue;
                };
                if !a.rules.is_empty() && !a.rules.contains(&alarm.rule_id) {
                    continue;
                }
                let ips: Vec<Option<std::net::IpAddr>> = if alarm.source_ips.is_empty() {
                    vec![None]
                } else {
                    alarm.source_ips.iter().map(|i| i.ip.parse().ok()).collect()
                };
                let apis: Vec<&str> = if alarm.apis.is_empty() {
                    vec![""]
                } else {
                    alarm.apis.iter().map(String::as_str).collect()
                };
                let hit = ips
                    .iter()
                    .all(|ip| apis.iter().all(|api| a.covers_call(key.as_str(), *ip, api)));
                if hit {
                    alarms_matched += 1;
                    if alarm_samples.len() < 20 {
                        alarm_samples.push(json!({
                            "alarm_id": alarm.alarm_id, "rule_id": alarm.rule_id,
                            "severity": alarm.severity, "key": key.as_str(),
                            "status": r.try_get::<String, _>("status").unwrap_or_default(),
                        }));
                    }
                }
            }
        }
        Kind::IpHiding => {
            let named: Vec<String> = entry["keys"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|k| k.as_str().map(str::to_owned))
                .collect();
            if named.len() > PREVIEW_KEYS {
                truncated = true;
            }
            'keys: for k in named.into_iter().take(PREVIEW_KEYS) {
                for r in &rows_of_key(k).await? {
                    rows_read += 1;
                    if rows_read > PREVIEW_ROWS {
                        truncated = true;
                        break 'keys;
                    }
                    count_row(r, &mut keys);
                }
            }
        }
        Kind::Alarm => {
            let stored = sqlx::query(&format!(
                "SELECT alarm_id, severity, status, key_id FROM inv_alarms WHERE rule_id = $1 AND last_seen >= $2 ORDER BY last_seen DESC LIMIT {PREVIEW_ALARMS}"
            ))
            .bind(id)
            .bind(since)
            .fetch_all(pool)
            .await?;
            alarms_matched = stored.len();
            if stored.len() >= PREVIEW_ALARMS {
                truncated = true;
            }
            for r in stored.iter().take(20) {
                alarm_samples.push(json!({
                    "alarm_id": r.try_get::<String, _>("alarm_id").unwrap_or_default(),
                    "rule_id": id,
                    "severity": r.try_get::<String, _>("severity").unwrap_or_default(),
                    "key": r.try_get::<String, _>("key_id").unwrap_or_default(),
                    "status": r.try_get::<String, _>("status").unwrap_or_default(),
                }));
            }
        }
    }
    let top = |m: BTreeMap<String, i64>| -> Vec<Value> {
        let mut v: Vec<(String, i64)> = m.into_iter().collect();
        v.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        v.into_iter()
            .take(20)
            .map(|(value, calls)| json!({"value": value, "calls": calls}))
            .collect()
    };
    let distinct = [keys.len(), ips.len(), apis.len()];
    Ok(json!({
        "days": PREVIEW_DAYS,
        "since": since,
        "until": until,
        "calls": calls,
        "distinct_keys": distinct[0],
        "distinct_ips": distinct[1],
        "distinct_apis": distinct[2],
        "top_keys": top(keys),
        "top_ips": top(ips),
        "top_apis": top(apis),
        "alarms": alarms_matched,
        "alarm_samples": alarm_samples,
        "not_judged": unjudged,
        "truncated": truncated,
    }))
}
