//! `/policies/{allowlist|ip-hiding|alarm}`: the policy entries made through the API (read,
//! create, replace, delete) beside the read-only entries of the policy files. A change is checked
//! by the policy loader on the files as they would be (same messages as at start-up), stored with
//! the revision bumped, audited, and rendered to the kind's `api-*.yaml` file; a running service
//! applies it live (see [`crate::policy_store`]).

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
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
) -> Result<(Option<Value>, String), ApiError> {
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
    crate::policy::Policy::load_dirs_replacing(&files.dirs, &files.rules, &[(path, text.clone())])
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
    Ok((before, text))
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

async fn apply(
    s: &ApiState,
    headers: &HeaderMap,
    k: &str,
    id: Option<String>,
    op: Op,
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
    let _guard = files.lock.lock().await;
    let mut tx = s.store.pool().begin().await?;
    let (before, text) = change_in(&mut tx, files, &caller, kind, &id, op).await?;
    let after: Value = policy_store::entries(&mut *tx, kind)
        .await
        .ok()
        .and_then(|l| l.into_iter().find(|(i, _)| *i == id).map(|(_, v)| v))
        .unwrap_or(Value::Null);
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
    Json(body): Json<Value>,
) -> ApiResult {
    apply(&s, &headers, &k, None, Op::Create(body)).await
}

pub(super) async fn put(
    State(s): State<Arc<ApiState>>,
    headers: HeaderMap,
    Path((k, id)): Path<(String, String)>,
    Json(body): Json<Value>,
) -> ApiResult {
    apply(&s, &headers, &k, Some(id), Op::Put(body)).await
}

pub(super) async fn delete(
    State(s): State<Arc<ApiState>>,
    headers: HeaderMap,
    Path((k, id)): Path<(String, String)>,
) -> ApiResult {
    apply(&s, &headers, &k, Some(id), Op::Delete).await
}
