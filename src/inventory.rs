//! The inventory (the CSC views' data): every access key, source IP and account seen in the
//! logs, calls rolled up per (key, source IP, API, hour), and the alarms with their triage
//! status. A pipeline stage accumulates a [`Batch`] of deltas per event (no I/O); the driver
//! writes batches to a [`Store`] (SQLite by default, PostgreSQL when shared) in one transaction
//! each, never per event.
//!
//! IP-hidden keys (policy) are counted without their IPs: their calls are rolled up under the
//! IP `hidden`, and their IPs reach neither the IP list nor the key's IPs.

use std::collections::HashMap;

use anyhow::Context as _;
use sqlx::Row as _;

use crate::alarm::Alarm;
use crate::enrich::Enrichment;
use crate::event::{Cloud, Event, Outcome};

/// A region or user agent as the inventory keeps it: at most 512 bytes (cut on a character
/// boundary).
fn cut_attr(s: &str) -> &str {
    if s.len() <= 512 {
        return s;
    }
    let mut end = 512;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// The batch's maps: hashbrown's, so that an event's rows are found by borrowed keys (the
/// query types below hash like the owned tuples) and a key's strings are copied only for a row
/// new to the batch; foldhash, seeded per map (the std maps' SipHash cost a tenth of the
/// detection thread's time).
type Map<K, V> = hashbrown::HashMap<K, V>;

/// (cloud, key) or (cloud, account), borrowed.
#[derive(Hash)]
struct Q2<'a>(Cloud, &'a str);
/// (cloud, key, IP or API), borrowed.
#[derive(Hash)]
struct Q3<'a>(Cloud, &'a str, &'a str);
/// (cloud, key, kind, value), borrowed.
#[derive(Hash)]
struct QAttr<'a>(Cloud, &'a str, &'static str, &'a str);
/// (cloud, key, IP, API, hour), borrowed.
#[derive(Hash)]
struct QHour<'a>(Cloud, &'a str, &'a str, &'a str, i64);

impl hashbrown::Equivalent<(Cloud, String)> for Q2<'_> {
    fn equivalent(&self, k: &(Cloud, String)) -> bool {
        self.0 == k.0 && self.1 == k.1
    }
}

impl hashbrown::Equivalent<(Cloud, String, String)> for Q3<'_> {
    fn equivalent(&self, k: &(Cloud, String, String)) -> bool {
        self.0 == k.0 && self.1 == k.1 && self.2 == k.2
    }
}

impl hashbrown::Equivalent<(Cloud, String, &'static str, String)> for QAttr<'_> {
    fn equivalent(&self, k: &(Cloud, String, &'static str, String)) -> bool {
        self.0 == k.0 && self.1 == k.1 && self.2 == k.2 && self.3 == k.3
    }
}

impl hashbrown::Equivalent<(Cloud, String, String, String, i64)> for QHour<'_> {
    fn equivalent(&self, k: &(Cloud, String, String, String, i64)) -> bool {
        self.0 == k.0 && self.4 == k.4 && self.1 == k.1 && self.2 == k.2 && self.3 == k.3
    }
}

/// Counts a call in the row `q` names, made from `owned` when new to the batch.
fn count<K, Q>(map: &mut Map<K, Seen>, q: &Q, owned: impl FnOnce() -> K, t: i64, failed: bool)
where
    K: std::hash::Hash + Eq,
    Q: std::hash::Hash + hashbrown::Equivalent<K>,
{
    match map.get_mut(q) {
        Some(seen) => seen.add(t, failed),
        None => map.entry(owned()).or_default().add(t, failed),
    }
}

/// The most source IPs and APIs the store keeps per key ([`Store::cap_per_key`]).
pub const MAX_PER_KEY: i64 = 1000;

/// The IP recorded for calls of IP-hidden keys, and for calls whose source is no IP.
pub const HIDDEN_IP: &str = "hidden";

#[derive(Debug, Clone, Default)]
struct Seen {
    first: i64,
    last: i64,
    calls: u64,
    failures: u64,
}

impl Seen {
    /// Adds the calls of `other` (an earlier or later batch of the same thing).
    fn merge(&mut self, other: &Seen) {
        if other.calls == 0 {
            return;
        }
        if self.calls == 0 || other.first < self.first {
            self.first = other.first;
        }
        self.last = self.last.max(other.last);
        self.calls += other.calls;
        self.failures += other.failures;
    }

    fn add(&mut self, t: i64, failed: bool) {
        if self.calls == 0 || t < self.first {
            self.first = t;
        }
        self.last = self.last.max(t);
        self.calls += 1;
        self.failures += u64::from(failed);
    }
}

#[derive(Debug, Clone, Default)]
struct KeyDelta {
    account: String,
    principal: String,
    /// Kept as the enums (copied per event) and named once per batch, at write.
    principal_type: Option<crate::event::PrincipalType>,
    kind: Option<crate::event::KeyKind>,
    hidden: bool,
    seen: Seen,
}

#[derive(Debug, Clone, Default)]
struct IpDelta {
    /// The latest event's location (shared with the enrichment's cache) and classes, named
    /// at write: the latest description wins, as it always did, for the price of a pointer.
    geo: Option<std::sync::Arc<crate::enrich::GeoInfo>>,
    classes: crate::enrich::IpClasses,
    seen: Seen,
}

/// Deltas accumulated since the last write.
#[derive(Debug, Default)]
pub struct Batch {
    keys: Map<(Cloud, String), KeyDelta>,
    key_ips: Map<(Cloud, String, String), Seen>,
    key_apis: Map<(Cloud, String, String), Seen>,
    ips: Map<String, IpDelta>,
    accounts: Map<(Cloud, String), Seen>,
    hourly: Map<(Cloud, String, String, String, i64), Seen>,
    /// A key's regions and user agents (kind `region` / `user_agent`).
    key_attrs: Map<(Cloud, String, &'static str, String), Seen>,
    /// The latest notification of each alarm.
    alarms: HashMap<String, Alarm>,
    /// The whole current set of configuration risks, when it changed (the newest wins).
    risks: Option<Vec<crate::risk::Risk>>,
    /// The whole current set of reported principals, when it changed (the newest wins).
    principals: Option<Vec<PrincipalRow>>,
    /// Events counted in this batch.
    pub events: u64,
}

impl Batch {
    /// Rows this batch would write (for flushing before it grows large).
    pub fn len(&self) -> usize {
        self.keys.len()
            + self.key_ips.len()
            + self.key_apis.len()
            + self.ips.len()
            + self.accounts.len()
            + self.hourly.len()
            + self.key_attrs.len()
            + self.alarms.len()
            + self.risks.as_ref().map_or(0, Vec::len)
            + self.principals.as_ref().map_or(0, Vec::len)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0 && self.events == 0
    }

    /// Counts one processed event. Rows are found by borrowed keys; strings are copied only
    /// for a row new to the batch (or a key's account / principal that changed).
    pub fn observe(&mut self, e: &Event, enr: &Enrichment, ip_hidden: bool) {
        self.events += 1;
        let t = e.event_time.timestamp();
        let failed = e.outcome == Outcome::Failure;
        let cloud = e.cloud;
        let api = e.api();
        let account = e.account_id.as_ref().map_or("", |a| a.0.as_str());
        if !account.is_empty() {
            count(
                &mut self.accounts,
                &Q2(cloud, account),
                || (cloud, account.to_owned()),
                t,
                failed,
            );
        }
        let ip = match (ip_hidden, e.source_ip) {
            (false, Some(ip)) => ip.to_string(),
            _ => HIDDEN_IP.to_owned(),
        };
        if ip != HIDDEN_IP {
            let d = match self.ips.get_mut(ip.as_str()) {
                Some(d) => d,
                None => self.ips.entry(ip.clone()).or_default(),
            };
            if enr.geo.is_some() {
                d.geo.clone_from(&enr.geo);
            }
            d.classes = enr.ip_class;
            d.seen.add(t, failed);
        }
        let Some(key) = &e.access_key_id else {
            return;
        };
        let key = key.0.as_str();
        let k = match self.keys.get_mut(&Q2(cloud, key)) {
            Some(k) => k,
            None => self.keys.entry((cloud, key.to_owned())).or_default(),
        };
        if k.account != account {
            account.clone_into(&mut k.account);
        }
        let principal = e.principal.name.as_deref().unwrap_or_default();
        if k.principal != principal {
            principal.clone_into(&mut k.principal);
        }
        k.principal_type = Some(e.principal.kind);
        k.kind = Some(e.key_kind);
        k.hidden |= ip_hidden;
        k.seen.add(t, failed);
        if ip != HIDDEN_IP {
            count(
                &mut self.key_ips,
                &Q3(cloud, key, &ip),
                || (cloud, key.to_owned(), ip.clone()),
                t,
                failed,
            );
        }
        count(
            &mut self.key_apis,
            &Q3(cloud, key, &api),
            || (cloud, key.to_owned(), api.clone()),
            t,
            failed,
        );
        for (kind, value) in [("region", &e.region), ("user_agent", &e.user_agent)] {
            if let Some(v) = value.as_deref().filter(|v| !v.is_empty()) {
                let v = cut_attr(v);
                count(
                    &mut self.key_attrs,
                    &QAttr(cloud, key, kind, v),
                    || (cloud, key.to_owned(), kind, v.to_owned()),
                    t,
                    failed,
                );
            }
        }
        let hour = t.div_euclid(3600) * 3600;
        count(
            &mut self.hourly,
            &QHour(cloud, key, &ip, &api, hour),
            || (cloud, key.to_owned(), ip.clone(), api.clone(), hour),
            t,
            failed,
        );
    }

    /// Takes in a batch accumulated before this one (a write of it that failed): counts add up,
    /// the descriptive fields of this (newer) batch win.
    pub fn absorb_older(&mut self, older: Batch) {
        fn seen<K: std::hash::Hash + Eq>(to: &mut Map<K, Seen>, from: Map<K, Seen>) {
            for (k, v) in from {
                to.entry(k).or_default().merge(&v);
            }
        }
        for (k, old) in older.keys {
            match self.keys.get_mut(&k) {
                Some(new) => {
                    new.seen.merge(&old.seen);
                    new.hidden |= old.hidden;
                }
                None => {
                    self.keys.insert(k, old);
                }
            }
        }
        for (k, old) in older.ips {
            match self.ips.get_mut(&k) {
                Some(new) => new.seen.merge(&old.seen),
                None => {
                    self.ips.insert(k, old);
                }
            }
        }
        seen(&mut self.key_ips, older.key_ips);
        seen(&mut self.key_apis, older.key_apis);
        seen(&mut self.accounts, older.accounts);
        seen(&mut self.hourly, older.hourly);
        seen(&mut self.key_attrs, older.key_attrs);
        for (id, a) in older.alarms {
            match self.alarms.get(&id) {
                Some(new) if new.count >= a.count => {}
                _ => {
                    self.alarms.insert(id, a);
                }
            }
        }
        self.events += older.events;
        if self.risks.is_none() {
            self.risks = older.risks;
        }
        if self.principals.is_none() {
            self.principals = older.principals;
        }
    }

    /// The whole current set of configuration risks (of every report in use): risks not in it
    /// are marked fixed in the store.
    pub fn set_risks(&mut self, risks: Vec<crate::risk::Risk>) {
        self.risks = Some(risks);
    }

    /// The whole current set of reported principals (replaces the stored ones).
    pub fn set_principals(&mut self, principals: Vec<PrincipalRow>) {
        self.principals = Some(principals);
    }

    /// Records an alarm notification (the latest wins).
    pub fn alarm(&mut self, a: &Alarm) {
        match self.alarms.get(&a.alarm_id) {
            Some(old) if old.count > a.count => {}
            _ => {
                self.alarms.insert(a.alarm_id.clone(), a.clone());
            }
        }
    }
}

/// The most rows one upsert statement carries (12 columns x 400 rows stays under SQLite's and
/// PostgreSQL's bound-parameter limits).
pub const ROWS_PER_STATEMENT: usize = 400;

/// An enum's name as it is serialized (`assumed_role`, `permanent`); empty for none.
fn serde_name<T: serde::Serialize>(v: &Option<T>) -> String {
    v.as_ref()
        .and_then(|v| serde_json::to_value(v).ok())
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

/// A bound value.
#[derive(PartialEq, Eq, PartialOrd, Ord)]
enum Value {
    Text(String),
    Int(i64),
}

/// `head VALUES (...), (...) tail` for each chunk of `rows`, every value bound.
async fn upsert(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    sqlite: bool,
    head: &str,
    tail: &str,
    mut rows: Vec<Vec<Value>>,
) -> anyhow::Result<()> {
    // In key order (the leading columns are the primary key): the B-tree fills in order
    // instead of at random, several times faster on a large batch.
    rows.sort_unstable();
    for chunk in rows.chunks(ROWS_PER_STATEMENT) {
        let mut sql = format!("{head} VALUES ");
        let mut n = 0;
        for (r, row) in chunk.iter().enumerate() {
            if r > 0 {
                sql.push_str(", ");
            }
            sql.push('(');
            for c in 0..row.len() {
                n += 1;
                if c > 0 {
                    sql.push_str(", ");
                }
                if sqlite {
                    sql.push('?');
                } else {
                    sql.push_str(&format!("${n}"));
                }
            }
            sql.push(')');
        }
        sql.push(' ');
        sql.push_str(tail);
        let mut q = sqlx::query(&sql);
        for row in chunk {
            for v in row {
                q = match v {
                    Value::Text(s) => q.bind(s.as_str()),
                    Value::Int(x) => q.bind(*x),
                };
            }
        }
        q.execute(&mut **tx).await?;
    }
    Ok(())
}

/// Runs the migrations not yet recorded in `inv_migrations`, each in its own transaction.
async fn migrate_on(conn: &mut sqlx::AnyConnection) -> anyhow::Result<()> {
    use sqlx::Connection as _;
    sqlx::query("CREATE TABLE IF NOT EXISTS inv_migrations (version BIGINT PRIMARY KEY)")
        .execute(&mut *conn)
        .await?;
    for (version, sql) in MIGRATIONS {
        let done: Option<i64> =
            sqlx::query_scalar("SELECT version FROM inv_migrations WHERE version = $1")
                .bind(version)
                .fetch_optional(&mut *conn)
                .await?;
        if done.is_some() {
            continue;
        }
        let mut tx = conn.begin().await?;
        // Comment lines go first (a `;` in a comment is no statement's end).
        let code: String = sql
            .lines()
            .filter(|l| !l.trim_start().starts_with("--"))
            .collect::<Vec<_>>()
            .join("\n");
        for body in code.split(';') {
            if body.trim().is_empty() {
                continue;
            }
            sqlx::query(body)
                .execute(&mut *tx)
                .await
                .with_context(|| format!("migration {version}: {}", body.trim()))?;
        }
        backfill(version, &mut tx)
            .await
            .with_context(|| format!("migration {version}: filling it from the stored rows"))?;
        sqlx::query("INSERT INTO inv_migrations (version) VALUES ($1)")
            .bind(version)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
    }
    Ok(())
}

/// The versioned migrations, embedded (the binary needs no file beside it).
const MIGRATIONS: [(i64, &str); 9] = [
    (1, include_str!("../migrations/0001_inventory.sql")),
    (2, include_str!("../migrations/0002_lookup_indexes.sql")),
    (3, include_str!("../migrations/0003_audit_target.sql")),
    (4, include_str!("../migrations/0004_positions.sql")),
    (5, include_str!("../migrations/0005_risks.sql")),
    (6, include_str!("../migrations/0006_policies.sql")),
    (7, include_str!("../migrations/0007_principals.sql")),
    (8, include_str!("../migrations/0008_key_attributes.sql")),
    (9, include_str!("../migrations/0009_alarm_ips.sql")),
];

/// Rows a migration fills from what is stored, in its transaction (after its SQL).
async fn backfill(version: i64, tx: &mut sqlx::Transaction<'_, sqlx::Any>) -> anyhow::Result<()> {
    if version != 9 {
        return Ok(());
    }
    // The alarms stored before `inv_alarm_ips`: their source IPs, from their bodies.
    let rows: Vec<(String, String)> = sqlx::query_as("SELECT alarm_id, body FROM inv_alarms")
        .fetch_all(&mut **tx)
        .await?;
    for (id, body) in rows {
        let Ok(alarm) = serde_json::from_str::<serde_json::Value>(&body) else {
            continue;
        };
        let ips: std::collections::BTreeSet<&str> = alarm["source_ips"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|i| i["ip"].as_str())
            .collect();
        for ip in ips {
            sqlx::query(
                "INSERT INTO inv_alarm_ips (alarm_id, ip) VALUES ($1, $2) ON CONFLICT (alarm_id, ip) DO NOTHING",
            )
            .bind(id.as_str())
            .bind(ip)
            .execute(&mut **tx)
            .await?;
        }
    }
    Ok(())
}

/// A principal of the newest credential reports, as the inventory keeps it.
#[derive(Debug, Clone)]
pub struct PrincipalRow {
    cloud: Cloud,
    account: String,
    name: String,
    root: bool,
    mfa: Option<bool>,
    last_login: Option<i64>,
    active_keys: i64,
    source: String,
    body: String,
}

/// The principals of the reports in use (the newest per account).
pub fn principal_rows(snapshots: &[&crate::report::ReportSnapshot]) -> Vec<PrincipalRow> {
    let mut out = Vec::new();
    for s in snapshots {
        for p in &s.principals {
            let last_login = p
                .last_login
                .as_ref()
                .and_then(|c| c.value().copied())
                .or_else(|| p.password.last_used.value().copied())
                .map(|t| t.timestamp());
            out.push(PrincipalRow {
                cloud: s.cloud,
                account: s
                    .account_id
                    .as_ref()
                    .map(|a| a.0.clone())
                    .unwrap_or_default(),
                name: p.name.clone(),
                root: p.root,
                mfa: p.mfa_active.value().copied(),
                last_login,
                active_keys: p.keys.iter().filter(|k| k.active).count() as i64,
                source: s.source.clone(),
                body: serde_json::to_string(p).unwrap_or_default(),
            });
        }
    }
    out
}

/// A risk's id in the store and the API: a hash of what it is about (cloud, account,
/// principal, risk, key slot), stable across report versions.
pub fn risk_uid(r: &crate::risk::Risk) -> String {
    use sha2::Digest as _;
    let digest = sha2::Sha256::digest(crate::pipeline::risk_key(r).as_bytes());
    let hex: String = digest.iter().take(12).map(|b| format!("{b:02x}")).collect();
    format!("risk-{hex}")
}

/// The PostgreSQL advisory lock the migrations run under (instances starting together).
const MIGRATION_LOCK: i64 = 0x0061_6b77_6174_6368;

/// An input partition's position: (offset, index of the event in its record).
pub type Position = (i64, u32);

/// A detection partition's claim on its counts: the owner epoch its writes must still hold,
/// and the input positions (by topic and partition) already counted.
#[derive(Debug, Clone, Default)]
pub struct Claim {
    pub epoch: i64,
    pub counted: HashMap<(String, i32), Position>,
}

/// The fence a batch is written under: the group and partition, the epoch claimed, and the
/// input positions the batch brings the counts to.
#[derive(Debug, Clone)]
pub struct Fence {
    pub group: String,
    pub part: i32,
    pub epoch: i64,
    /// The positions the store holds before this write (the previous write's, or the claim's):
    /// a compare-and-set, so a write whose commit was not acknowledged is never applied twice.
    pub expected: Vec<((String, i32), Position)>,
    pub positions: Vec<((String, i32), Position)>,
}

/// What a fenced write did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Written {
    Applied,
    /// The store already held the batch's positions: an earlier attempt committed (its
    /// acknowledgement was lost); nothing was written again.
    AlreadyApplied,
}

/// A fenced write found positions other than the ones expected (another writer moved them):
/// nothing was written.
#[derive(Debug, thiserror::Error)]
#[error(
    "detection partition {part} of group {group}: the store's positions moved under this owner; the batch was not written"
)]
pub struct Diverged {
    pub group: String,
    pub part: i32,
}

/// A fenced write found another owner: the partition was taken over; nothing was written.
#[derive(Debug, thiserror::Error)]
#[error(
    "detection partition {part} of group {group} has a newer owner (epoch {epoch} is stale); the batch was not written"
)]
pub struct Fenced {
    pub group: String,
    pub part: i32,
    pub epoch: i64,
}

/// Where the inventory lives: a SQLite file or a PostgreSQL database.
#[derive(Clone)]
pub struct Store {
    pool: sqlx::AnyPool,
    /// SQLite (else PostgreSQL): bulk statements use `?` placeholders there (sqlx looks a
    /// `$N` up by name for every bind, quadratic in a many-row statement).
    sqlite: bool,
}

/// `CASE` expressions that keep the earlier / later of two times, the same in SQLite and
/// PostgreSQL (which spell min / max of two values differently).
fn earliest(col: &str, table: &str) -> String {
    format!("CASE WHEN excluded.{col} < {table}.{col} THEN excluded.{col} ELSE {table}.{col} END")
}

fn latest(col: &str, table: &str) -> String {
    format!("CASE WHEN excluded.{col} > {table}.{col} THEN excluded.{col} ELSE {table}.{col} END")
}

fn cloud(c: Cloud) -> &'static str {
    c.as_str()
}

/// Severity order for sorting (critical first).
pub fn severity_rank(s: crate::rule::Severity) -> i64 {
    use crate::rule::Severity::*;
    match s {
        Info => 0,
        Low => 1,
        Medium => 2,
        High => 3,
        Critical => 4,
    }
}

fn i(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// A replay's inventory sink: full batches handed to [`BatchWriter`]'s thread.
pub type BatchSink = Box<dyn FnMut(Batch) -> Result<(), String>>;

/// Writes a replay's full batches to the store on a thread of its own while the replay goes on
/// (the store's work on another core). At most one batch waits for it, so a run holds at most
/// three (being filled, waiting, being written); batches are written in the order given. (On
/// shards, `replay --threads`, each shard fills its share of a batch's rows, and the shards'
/// full shares may also wait in their channels to the merger: about four batches' worth.)
pub struct BatchWriter {
    thread: std::thread::JoinHandle<Result<(), String>>,
}

impl BatchWriter {
    /// The writer and the sink that feeds it. `rt` runs the store's futures (not from inside
    /// another runtime's worker).
    pub fn spawn(
        store: Store,
        rt: std::sync::Arc<tokio::runtime::Runtime>,
    ) -> std::io::Result<(BatchSink, BatchWriter)> {
        let (tx, rx) = std::sync::mpsc::sync_channel::<Batch>(1);
        let thread = std::thread::Builder::new()
            .name("inventory".into())
            .spawn(move || {
                for batch in rx {
                    rt.block_on(store.apply(batch))
                        .map_err(|e| format!("{e:#}"))?;
                }
                Ok(())
            })?;
        // A send fails only once the writer stopped on an error (which `finish` returns).
        let sink: BatchSink = Box::new(move |batch| {
            tx.send(batch)
                .map_err(|_| "the inventory writer stopped".to_owned())
        });
        Ok((sink, BatchWriter { thread }))
    }

    /// Waits for the batches given to be written; the first write error, if any. The sink must
    /// be dropped first (the writer runs until its channel closes).
    pub fn finish(self) -> Result<(), String> {
        self.thread
            .join()
            .unwrap_or_else(|_| Err("the inventory writer panicked".to_owned()))
    }
}

/// A store URL fit for messages: the password of `postgres://user:password@host` replaced.
pub fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    match rest.split_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _)) => format!("{scheme}://{user}:***@{host}"),
            None => url.to_owned(),
        },
        None => url.to_owned(),
    }
}

impl Store {
    /// Opens (creating when missing) the store at `url`: `postgres://…`, `sqlite://…`, or a
    /// file path (SQLite, WAL), and brings its schema up to date.
    pub async fn open(url: &str) -> anyhow::Result<Store> {
        sqlx::any::install_default_drivers();
        let sqlite = !(url.starts_with("postgres://") || url.starts_with("postgresql://"));
        let url = if sqlite && !url.starts_with("sqlite:") {
            format!("sqlite://{url}?mode=rwc")
        } else {
            url.to_owned()
        };
        let pool = sqlx::any::AnyPoolOptions::new()
            .max_connections(if sqlite { 1 } else { 8 })
            .after_connect(move |conn, _| {
                Box::pin(async move {
                    if sqlite {
                        // WAL with NORMAL: a crash of the process loses nothing committed; only
                        // a power loss may lose the last transactions.
                        for pragma in [
                            "PRAGMA journal_mode=WAL",
                            "PRAGMA synchronous=NORMAL",
                            "PRAGMA busy_timeout=30000",
                        ] {
                            sqlx::query(pragma).execute(&mut *conn).await?;
                        }
                    }
                    Ok(())
                })
            })
            .connect(&url)
            .await
            .with_context(|| format!("cannot open the store {}", redact(&url)))?;
        let store = Store { pool, sqlite };
        store.migrate().await?;
        Ok(store)
    }

    pub fn pool(&self) -> &sqlx::AnyPool {
        &self.pool
    }

    async fn migrate(&self) -> anyhow::Result<()> {
        // One connection for the whole run: on PostgreSQL it holds an advisory lock, so two
        // instances starting together do not both create the tables (the second waits, then
        // finds every version done).
        let mut conn = self.pool.acquire().await?;
        if !self.sqlite {
            sqlx::query("SELECT pg_advisory_lock($1)")
                .bind(MIGRATION_LOCK)
                .execute(&mut *conn)
                .await?;
        }
        let result = migrate_on(&mut conn).await;
        if !self.sqlite {
            let unlocked = sqlx::query("SELECT pg_advisory_unlock($1)")
                .bind(MIGRATION_LOCK)
                .execute(&mut *conn)
                .await;
            if unlocked.is_err() {
                // The session ends with the connection; so does its lock.
                conn.detach();
            }
        }
        result
    }

    /// Takes over detection partition `part` of `group` for `owner`: the epoch is bumped (an
    /// older owner's later write is refused) and the positions already counted are returned
    /// (their events are applied to the engine again but not counted again).
    pub async fn claim(&self, group: &str, part: i32, owner: &str) -> anyhow::Result<Claim> {
        let mut tx = self.pool.begin().await?;
        let now = chrono::Utc::now().timestamp();
        sqlx::query(
            "INSERT INTO inv_owners (grp, part, epoch, owner, claimed) VALUES ($1, $2, 0, $3, $4) \
             ON CONFLICT (grp, part) DO UPDATE SET epoch = inv_owners.epoch + 1, owner = excluded.owner, claimed = excluded.claimed",
        )
        .bind(group)
        .bind(i64::from(part))
        .bind(owner)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        let epoch: i64 =
            sqlx::query_scalar("SELECT epoch FROM inv_owners WHERE grp = $1 AND part = $2")
                .bind(group)
                .bind(i64::from(part))
                .fetch_one(&mut *tx)
                .await?;
        let rows = sqlx::query(
            "SELECT topic, tpart, pos_offset, pos_index FROM inv_positions WHERE grp = $1 AND part = $2",
        )
        .bind(group)
        .bind(i64::from(part))
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        let mut counted = HashMap::new();
        for row in rows {
            let topic: String = row.try_get("topic")?;
            let tpart: i64 = row.try_get("tpart")?;
            let offset: i64 = row.try_get("pos_offset")?;
            let index: i64 = row.try_get("pos_index")?;
            counted.insert(
                (topic, i32::try_from(tpart)?),
                (offset, u32::try_from(index)?),
            );
        }
        Ok(Claim { epoch, counted })
    }

    /// Writes a batch in one transaction: multi-row upserts of at most [`ROWS_PER_STATEMENT`]
    /// rows each (one statement per row made the write ten times the replay's own time).
    pub async fn apply(&self, batch: Batch) -> anyhow::Result<()> {
        self.apply_fenced(&batch, None).await.map(drop)
    }

    /// [`Store::apply`] under a fence: in the same transaction, the partition's epoch is checked
    /// (first, so the row is locked for the rest of it: a takeover waits for this write or
    /// refuses it) and the positions the batch reflects are recorded. A stale epoch is a
    /// [`Fenced`] error and nothing is written.
    pub async fn apply_fenced(
        &self,
        batch: &Batch,
        fence: Option<&Fence>,
    ) -> anyhow::Result<Written> {
        use Value::{Int, Text};
        let mut tx = self.pool.begin().await?;
        if let Some(f) = fence {
            let held = sqlx::query(
                "UPDATE inv_owners SET claimed = claimed WHERE grp = $1 AND part = $2 AND epoch = $3",
            )
            .bind(f.group.as_str())
            .bind(i64::from(f.part))
            .bind(f.epoch)
            .execute(&mut *tx)
            .await?;
            if held.rows_affected() != 1 {
                tx.rollback().await?;
                return Err(Fenced {
                    group: f.group.clone(),
                    part: f.part,
                    epoch: f.epoch,
                }
                .into());
            }
            // Compare and set: the positions must be those expected; the batch's own mean an
            // earlier attempt committed.
            let stored = sqlx::query(
                "SELECT topic, tpart, pos_offset, pos_index FROM inv_positions WHERE grp = $1 AND part = $2",
            )
            .bind(f.group.as_str())
            .bind(i64::from(f.part))
            .fetch_all(&mut *tx)
            .await?;
            let mut now: Vec<((String, i32), Position)> = Vec::with_capacity(stored.len());
            for row in stored {
                let tpart: i64 = row.try_get("tpart")?;
                let index: i64 = row.try_get("pos_index")?;
                now.push((
                    (row.try_get("topic")?, i32::try_from(tpart)?),
                    (row.try_get("pos_offset")?, u32::try_from(index)?),
                ));
            }
            now.sort();
            let sorted = |v: &[((String, i32), Position)]| {
                let mut v = v.to_vec();
                v.sort();
                v
            };
            if now != sorted(&f.expected) {
                tx.rollback().await?;
                if now == sorted(&f.positions) {
                    return Ok(Written::AlreadyApplied);
                }
                return Err(Diverged {
                    group: f.group.clone(),
                    part: f.part,
                }
                .into());
            }
            let rows: Vec<Vec<Value>> = f
                .positions
                .iter()
                .map(|((topic, tpart), (offset, index))| {
                    vec![
                        Text(f.group.clone()),
                        Int(i64::from(f.part)),
                        Text(topic.clone()),
                        Int(i64::from(*tpart)),
                        Int(*offset),
                        Int(i64::from(*index)),
                    ]
                })
                .collect();
            upsert(
                &mut tx,
                self.sqlite,
                "INSERT INTO inv_positions (grp, part, topic, tpart, pos_offset, pos_index)",
                "ON CONFLICT (grp, part, topic, tpart) DO UPDATE SET pos_offset = excluded.pos_offset, pos_index = excluded.pos_index",
                rows,
            )
            .await?;
        }
        let t = |s: &str| Text(s.to_owned());
        let rows: Vec<Vec<Value>> = batch
            .keys
            .iter()
            .map(|((c, key), d)| {
                vec![
                    t(cloud(*c)),
                    t(key),
                    t(&d.account),
                    t(&d.principal),
                    Text(serde_name(&d.principal_type)),
                    Text(serde_name(&d.kind)),
                    Int(d.seen.first),
                    Int(d.seen.last),
                    Int(i(d.seen.calls)),
                    Int(i(d.seen.failures)),
                    Int(i64::from(d.hidden)),
                ]
            })
            .collect();
        upsert(
            &mut tx,
            self.sqlite,
            "INSERT INTO inv_keys (cloud, key_id, account, principal, principal_type, kind, first_seen, last_seen, calls, failures, ip_hidden)",
            &format!(
                "ON CONFLICT (cloud, key_id) DO UPDATE SET account = excluded.account, principal = excluded.principal, \
                 principal_type = excluded.principal_type, kind = excluded.kind, first_seen = {}, last_seen = {}, \
                 calls = inv_keys.calls + excluded.calls, failures = inv_keys.failures + excluded.failures, \
                 ip_hidden = CASE WHEN excluded.ip_hidden > inv_keys.ip_hidden THEN excluded.ip_hidden ELSE inv_keys.ip_hidden END",
                earliest("first_seen", "inv_keys"),
                latest("last_seen", "inv_keys")
            ),
            rows,
        )
        .await?;
        let rows = batch
            .key_ips
            .iter()
            .map(|((c, key, ip), s)| {
                vec![
                    t(cloud(*c)),
                    t(key),
                    t(ip),
                    Int(i(s.calls)),
                    Int(s.first),
                    Int(s.last),
                ]
            })
            .collect();
        upsert(
            &mut tx,
            self.sqlite,
            "INSERT INTO inv_key_ips (cloud, key_id, ip, calls, first_seen, last_seen)",
            &format!(
                "ON CONFLICT (cloud, key_id, ip) DO UPDATE SET calls = inv_key_ips.calls + excluded.calls, first_seen = {}, last_seen = {}",
                earliest("first_seen", "inv_key_ips"),
                latest("last_seen", "inv_key_ips")
            ),
            rows,
        )
        .await?;
        let rows = batch
            .key_apis
            .iter()
            .map(|((c, key, api), s)| {
                vec![
                    t(cloud(*c)),
                    t(key),
                    t(api),
                    Int(i(s.calls)),
                    Int(i(s.failures)),
                    Int(s.last),
                ]
            })
            .collect();
        upsert(
            &mut tx,
            self.sqlite,
            "INSERT INTO inv_key_apis (cloud, key_id, api, calls, failures, last_seen)",
            &format!(
                "ON CONFLICT (cloud, key_id, api) DO UPDATE SET calls = inv_key_apis.calls + excluded.calls, \
                 failures = inv_key_apis.failures + excluded.failures, last_seen = {}",
                latest("last_seen", "inv_key_apis")
            ),
            rows,
        )
        .await?;
        let rows = batch
            .key_attrs
            .iter()
            .map(|((c, key, kind, value), s)| {
                vec![
                    t(cloud(*c)),
                    t(key),
                    t(kind),
                    t(value),
                    Int(i(s.calls)),
                    Int(s.last),
                ]
            })
            .collect();
        upsert(
            &mut tx,
            self.sqlite,
            "INSERT INTO inv_key_attrs (cloud, key_id, kind, value, calls, last_seen)",
            &format!(
                "ON CONFLICT (cloud, key_id, kind, value) DO UPDATE SET calls = inv_key_attrs.calls + excluded.calls, last_seen = {}",
                latest("last_seen", "inv_key_attrs")
            ),
            rows,
        )
        .await?;
        let rows = batch
            .ips
            .iter()
            .map(|(ip, d)| {
                let geo = d.geo.as_deref();
                let text = |f: fn(&crate::enrich::GeoInfo) -> &Option<String>| {
                    Text(geo.and_then(|g| f(g).clone()).unwrap_or_default())
                };
                let classes: Vec<&str> = d.classes.iter().map(|c| c.as_str()).collect();
                vec![
                    t(ip),
                    text(|g| &g.country),
                    text(|g| &g.city),
                    Int(geo.and_then(|g| g.asn).map_or(0, i64::from)),
                    text(|g| &g.as_org),
                    Text(serde_json::to_string(&classes).unwrap_or_default()),
                    Int(d.seen.first),
                    Int(d.seen.last),
                    Int(i(d.seen.calls)),
                ]
            })
            .collect();
        upsert(
            &mut tx,
            self.sqlite,
            "INSERT INTO inv_ips (ip, country, city, asn, as_org, classes, first_seen, last_seen, calls)",
            &format!(
                "ON CONFLICT (ip) DO UPDATE SET country = excluded.country, city = excluded.city, asn = excluded.asn, as_org = excluded.as_org, \
                 classes = excluded.classes, first_seen = {}, last_seen = {}, calls = inv_ips.calls + excluded.calls",
                earliest("first_seen", "inv_ips"),
                latest("last_seen", "inv_ips")
            ),
            rows,
        )
        .await?;
        let rows = batch
            .accounts
            .iter()
            .map(|((c, account), s)| {
                vec![
                    t(cloud(*c)),
                    t(account),
                    Int(s.first),
                    Int(s.last),
                    Int(i(s.calls)),
                ]
            })
            .collect();
        upsert(
            &mut tx,
            self.sqlite,
            "INSERT INTO inv_accounts (cloud, account, first_seen, last_seen, calls)",
            &format!(
                "ON CONFLICT (cloud, account) DO UPDATE SET first_seen = {}, last_seen = {}, calls = inv_accounts.calls + excluded.calls",
                earliest("first_seen", "inv_accounts"),
                latest("last_seen", "inv_accounts")
            ),
            rows,
        )
        .await?;
        let rows = batch
            .hourly
            .iter()
            .map(|((c, key, ip, api, hour), s)| {
                vec![
                    t(cloud(*c)),
                    t(key),
                    t(ip),
                    t(api),
                    Int(*hour),
                    Int(i(s.calls)),
                    Int(i(s.failures)),
                ]
            })
            .collect();
        upsert(
            &mut tx,
            self.sqlite,
            "INSERT INTO inv_calls_hourly (cloud, key_id, ip, api, hour, calls, failures)",
            "ON CONFLICT (cloud, key_id, ip, api, hour) DO UPDATE SET calls = inv_calls_hourly.calls + excluded.calls, \
             failures = inv_calls_hourly.failures + excluded.failures",
            rows,
        )
        .await?;
        let mut rows = Vec::new();
        for a in batch.alarms.values() {
            rows.push(vec![
                t(&a.alarm_id),
                t(&a.rule_id),
                t(a.severity.as_str()),
                Int(severity_rank(a.severity)),
                t(a.cloud.as_str()),
                t(a.account_id.as_ref().map_or("", |x| x.0.as_str())),
                t(a.access_key_id.as_ref().map_or("", |x| x.0.as_str())),
                Int(a.first_seen.timestamp()),
                Int(a.last_seen.timestamp()),
                Int(i(a.count)),
                t("pending"),
                Text(serde_json::to_string(a)?),
            ]);
        }
        // The IPs each alarm names (the IP list's filter and an IP's alarms read them).
        let alarm_ips: std::collections::BTreeSet<(&str, &str)> = batch
            .alarms
            .values()
            .flat_map(|a| {
                a.source_ips
                    .iter()
                    .map(move |i| (a.alarm_id.as_str(), i.ip.as_str()))
            })
            .collect();
        let alarm_ip_rows: Vec<Vec<Value>> = alarm_ips
            .into_iter()
            .map(|(a, ip)| vec![t(a), t(ip)])
            .collect();
        // A handled alarm that fires again (a hit after the last one stored) is pending again, as
        // CSC re-raises;
        // ignored and allowlisted ones stay so.
        upsert(
            &mut tx,
            self.sqlite,
            "INSERT INTO inv_alarms (alarm_id, rule_id, severity, severity_rank, cloud, account, key_id, first_seen, last_seen, count, status, body)",
            // Counts and times only grow (an alarm closed by a cap, or a second replay of the
            // same logs, starts its count over); the body is the newest notification's.
            "ON CONFLICT (alarm_id) DO UPDATE SET \
             severity = CASE WHEN excluded.severity_rank > inv_alarms.severity_rank THEN excluded.severity ELSE inv_alarms.severity END, \
             severity_rank = CASE WHEN excluded.severity_rank > inv_alarms.severity_rank THEN excluded.severity_rank ELSE inv_alarms.severity_rank END, \
             first_seen = CASE WHEN excluded.first_seen < inv_alarms.first_seen THEN excluded.first_seen ELSE inv_alarms.first_seen END, \
             last_seen = CASE WHEN excluded.last_seen > inv_alarms.last_seen THEN excluded.last_seen ELSE inv_alarms.last_seen END, \
             count = CASE WHEN excluded.count > inv_alarms.count THEN excluded.count ELSE inv_alarms.count END, \
             body = CASE WHEN excluded.last_seen >= inv_alarms.last_seen THEN excluded.body ELSE inv_alarms.body END, \
             status = CASE WHEN inv_alarms.status = 'handled' AND excluded.last_seen > inv_alarms.last_seen THEN 'pending' ELSE inv_alarms.status END",
            rows,
        )
        .await?;
        upsert(
            &mut tx,
            self.sqlite,
            "INSERT INTO inv_alarm_ips (alarm_id, ip)",
            "ON CONFLICT (alarm_id, ip) DO NOTHING",
            alarm_ip_rows,
        )
        .await?;
        if let Some(risks) = &batch.risks {
            // This snapshot's generation: risks it does not list are fixed (present = 0); a
            // fixed risk that comes back is pending again if it had been handled.
            let now = chrono::Utc::now();
            let generation = now.timestamp_nanos_opt().unwrap_or(i64::MAX);
            let mut rows: Vec<Vec<Value>> = Vec::with_capacity(risks.len());
            let mut seen = std::collections::HashSet::new();
            for r in risks {
                let uid = risk_uid(r);
                if !seen.insert(uid.clone()) {
                    continue;
                }
                rows.push(vec![
                    Text(uid),
                    t(r.risk_id),
                    t(r.name),
                    t(r.severity.as_str()),
                    Int(severity_rank(r.severity)),
                    t(r.cloud.as_str()),
                    t(r.account_id.as_ref().map_or("", |a| a.as_str())),
                    t(&r.principal),
                    t(r.key_id.as_deref().unwrap_or("")),
                    Int(now.timestamp()),
                    Int(now.timestamp()),
                    Int(1),
                    Int(generation),
                    t("pending"),
                    Text(serde_json::to_string(r)?),
                ]);
            }
            upsert(
                &mut tx,
                self.sqlite,
                "INSERT INTO inv_risks (risk_uid, risk_id, name, severity, severity_rank, cloud, account, principal, key_id, first_seen, last_seen, present, seen_gen, status, body)",
                "ON CONFLICT (risk_uid) DO UPDATE SET name = excluded.name, severity = excluded.severity, \
                 severity_rank = excluded.severity_rank, key_id = excluded.key_id, last_seen = excluded.last_seen, \
                 body = excluded.body, seen_gen = excluded.seen_gen, present = 1, \
                 status = CASE WHEN inv_risks.present = 0 AND inv_risks.status = 'handled' THEN 'pending' ELSE inv_risks.status END",
                rows,
            )
            .await?;
            sqlx::query("UPDATE inv_risks SET present = 0 WHERE present = 1 AND seen_gen <> $1")
                .bind(generation)
                .execute(&mut *tx)
                .await?;
        }
        if let Some(principals) = &batch.principals {
            sqlx::query("DELETE FROM inv_principals")
                .execute(&mut *tx)
                .await?;
            let mut seen = std::collections::HashSet::new();
            let rows: Vec<Vec<Value>> = principals
                .iter()
                .filter(|p| seen.insert((p.cloud, p.account.clone(), p.name.clone())))
                .map(|p| {
                    vec![
                        t(p.cloud.as_str()),
                        t(&p.account),
                        t(&p.name),
                        Int(i64::from(p.root)),
                        Int(p.mfa.map_or(-1, i64::from)),
                        Int(p.last_login.unwrap_or(0)),
                        Int(p.active_keys),
                        t(&p.source),
                        t(&p.body),
                    ]
                })
                .collect();
            upsert(
                &mut tx,
                self.sqlite,
                "INSERT INTO inv_principals (cloud, account, principal, root, mfa, last_login, active_keys, source, body)",
                "ON CONFLICT (cloud, account, principal) DO NOTHING",
                rows,
            )
            .await?;
        }
        tx.commit().await?;
        Ok(Written::Applied)
    }

    /// Rolled-up calls more than `days` older than the newest one removed (event time, so a
    /// replay of old logs keeps its own last month); how many rows.
    pub async fn purge_older_than_days(&self, days: i64) -> anyhow::Result<u64> {
        // The newest call that is not in the future: one record dated 2099 must neither purge
        // all history nor be the reference (it stays until its time has passed).
        let horizon = chrono::Utc::now().timestamp().saturating_add(86_400);
        let newest: Option<i64> =
            sqlx::query_scalar("SELECT MAX(hour) FROM inv_calls_hourly WHERE hour <= $1")
                .bind(horizon)
                .fetch_one(&self.pool)
                .await?;
        let Some(newest) = newest else { return Ok(0) };
        self.purge_before(newest.saturating_sub(days.saturating_mul(86_400)))
            .await
    }

    /// Keeps at most `max` source IPs, `max` APIs and `max` regions and user agents per key
    /// (the most called, then the most recent): a key called from a flood of addresses cannot grow the store without bound. How
    /// many rows were removed (their calls stay in the key's totals and the hourly rollups).
    pub async fn cap_per_key(&self, max: i64) -> anyhow::Result<u64> {
        let mut removed = 0;
        for (table, col) in [
            ("inv_key_ips", "ip"),
            ("inv_key_apis", "api"),
            ("inv_key_attrs", "kind, value"),
        ] {
            let sql = format!(
                "DELETE FROM {table} WHERE (cloud, key_id, {col}) IN (SELECT cloud, key_id, {col} FROM \
                 (SELECT cloud, key_id, {col}, ROW_NUMBER() OVER (PARTITION BY cloud, key_id ORDER BY calls DESC, last_seen DESC, {col} ASC) AS rn \
                 FROM {table} WHERE key_id IN (SELECT key_id FROM {table} GROUP BY key_id HAVING COUNT(*) > $1)) ranked WHERE rn > $1)"
            );
            removed += sqlx::query(&sql)
                .bind(max)
                .execute(&self.pool)
                .await?
                .rows_affected();
        }
        Ok(removed)
    }

    /// Rolled-up calls older than `before` (Unix seconds) removed; how many rows.
    pub async fn purge_before(&self, before: i64) -> anyhow::Result<u64> {
        let r = sqlx::query("DELETE FROM inv_calls_hourly WHERE hour < $1")
            .bind(before)
            .execute(&self.pool)
            .await?;
        Ok(r.rows_affected())
    }

    /// Total calls in the inventory (the events it has counted).
    pub async fn total_calls(&self) -> anyhow::Result<i64> {
        let row = sqlx::query(
            "SELECT CAST(COALESCE(SUM(calls), 0) AS BIGINT) AS n FROM inv_calls_hourly",
        )
        .fetch_one(&self.pool)
        .await?;
        Ok(row.try_get::<i64, _>("n")?)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn store_urls_lose_their_password_in_messages() {
        assert_eq!(
            super::redact("postgres://akwatch:s3cret@db:5432/akwatch"),
            "postgres://akwatch:***@db:5432/akwatch"
        );
        assert_eq!(
            super::redact("postgres://akwatch@db/a"),
            "postgres://akwatch@db/a"
        );
        assert_eq!(super::redact("/var/lib/akwatch.db"), "/var/lib/akwatch.db");
    }
}
