//! The service configuration (`akwatch run --config FILE`): a raw serde struct that rejects
//! unknown keys, validated into what the service needs, every problem reported at once with the
//! file and line. `${NAME}` (or `${NAME:-default}`) in any string value is taken from the
//! environment (secrets, addresses). Every duration accepts a number in the unit its key names
//! (`commit_interval_seconds: 5`) or a duration in the rules' and policies' syntax (`5s`, `15m`,
//! `6h`, `1d`, `2w`; `ms` for the millisecond keys).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::event::Cloud;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    kafka: RawKafka,
    #[serde(default = "default_rules")]
    rules: PathBuf,
    #[serde(default)]
    policies: Vec<PathBuf>,
    #[serde(default)]
    lists: Vec<PathBuf>,
    #[serde(default)]
    geoip: Vec<PathBuf>,
    #[serde(default)]
    reports: Vec<PathBuf>,
    #[serde(default = "default_rescan", deserialize_with = "span::secs")]
    reports_rescan_seconds: u64,
    /// How often rules, policies, lists and leak feeds are looked at for changes (0: never).
    #[serde(default = "default_rescan", deserialize_with = "span::secs")]
    reload_rescan_seconds: u64,
    #[serde(default)]
    leaks: Vec<PathBuf>,
    /// Permission snapshots (read at start).
    #[serde(default)]
    permissions: Vec<PathBuf>,
    #[serde(default)]
    state_dir: Option<PathBuf>,
    #[serde(default = "default_commit_interval", deserialize_with = "span::secs")]
    commit_interval_seconds: u64,
    #[serde(default = "default_max_keys")]
    state_max_keys: usize,
    #[serde(default)]
    ops_addr: Option<String>,
    #[serde(default = "default_window_entries")]
    state_max_window_entries: usize,
    #[serde(default = "default_alarms")]
    state_max_alarms: usize,
    #[serde(default = "default_per_key")]
    state_max_alarms_per_key: usize,
    #[serde(default = "default_tracked")]
    state_max_created_keys: usize,
    #[serde(default = "default_tracked")]
    state_max_quarantined: usize,
    #[serde(default = "default_grace", deserialize_with = "span::secs")]
    shutdown_grace_seconds: u64,
    #[serde(default = "default_skew", deserialize_with = "span::secs")]
    max_event_skew_seconds: u64,
    #[serde(default = "default_idle_ms", deserialize_with = "span::millis")]
    partition_idle_timeout_ms: u64,
    #[serde(default = "default_merge_queue")]
    merge_queue_records: usize,
    #[serde(default = "default_source_idle_ms", deserialize_with = "span::millis")]
    source_idle_timeout_ms: u64,
    #[serde(default = "default_detect_queue")]
    detect_queue_events: usize,
    #[serde(default)]
    inventory: Option<RawInventory>,
    /// Notification sinks beside the alarm topic (webhook, Slack, DingTalk, WeCom, Feishu).
    #[serde(default)]
    notify: Vec<crate::notify::RawSink>,
}

/// `inventory:` — the CSC views' store and API (issue 11).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawInventory {
    store: String,
    #[serde(default = "default_retention_days")]
    retention_days: i64,
    #[serde(default = "default_pending_rows")]
    max_pending_rows: usize,
    #[serde(default)]
    api: Option<RawApi>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawApi {
    #[serde(default = "default_api_listen")]
    listen: String,
    #[serde(default)]
    tokens: Option<PathBuf>,
    #[serde(default)]
    policies_dir: Option<PathBuf>,
}

fn default_retention_days() -> i64 {
    30
}

fn default_pending_rows() -> usize {
    2_000_000
}

fn default_api_listen() -> String {
    "127.0.0.1:8080".to_owned()
}

/// The inventory of the service: where it is stored, and the API serving it.
#[derive(Debug, Clone)]
pub struct InventoryConfig {
    /// A SQLite file, or a postgres:// URL (the secret may come from `${ENV}`).
    pub store: String,
    pub retention_days: i64,
    /// Rows a detection partition keeps while the store cannot be written, before it gives up
    /// counting (counted in akwatch_inventory_dropped_events_total).
    pub max_pending_rows: usize,
    pub api: Option<ApiConfig>,
}

#[derive(Debug, Clone)]
pub struct ApiConfig {
    pub listen: std::net::SocketAddr,
    pub tokens: Option<PathBuf>,
    /// Where allowlist entries made through the API are written (default: the first policy
    /// directory).
    pub policies_dir: Option<PathBuf>,
}

fn default_idle_ms() -> u64 {
    2000
}

fn default_merge_queue() -> usize {
    20_000
}

fn default_window_entries() -> usize {
    crate::engine::Limits::default().max_window_entries
}

fn default_tracked() -> usize {
    crate::engine::Limits::default().max_created
}

fn default_alarms() -> usize {
    crate::engine::Limits::default().max_alarms
}

fn default_per_key() -> usize {
    crate::engine::Limits::default().max_alarms_per_key
}

fn default_grace() -> u64 {
    20
}

fn default_skew() -> u64 {
    crate::provider::time::DEFAULT_MAX_SKEW_SECS.unsigned_abs()
}

fn default_rules() -> PathBuf {
    PathBuf::from("rules")
}

fn default_rescan() -> u64 {
    30
}

fn default_commit_interval() -> u64 {
    5
}

fn default_max_keys() -> usize {
    crate::engine::DEFAULT_MAX_KEYS
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawKafka {
    brokers: String,
    group_id: String,
    inputs: Vec<RawInput>,
    alarm_topic: String,
    /// `native` (akwatch's alarm JSON) or `ocsf` (OCSF 1.8.0 Detection Finding).
    #[serde(default)]
    alarm_format: crate::ocsf::AlarmFormat,
    dlq_topic: String,
    /// Credential reports keyed by account, read from the beginning and followed.
    #[serde(default)]
    report_topic: Option<String>,
    /// Configuration risks of the reports in use, at start and when they change.
    #[serde(default)]
    risk_topic: Option<String>,
    /// librdkafka options, passed through (TLS, SASL, tuning); numbers and booleans are taken
    /// as librdkafka reads them, as text (`linger.ms: 5`).
    #[serde(default, deserialize_with = "scalar_map")]
    options: BTreeMap<String, String>,
    /// Re-key decoded events by access key through `<group_id>-repartition`, with state per
    /// partition in `<group_id>-changelog` (false: one instance only, state in `state_dir`).
    #[serde(default = "default_true")]
    repartition: bool,
    #[serde(default = "default_internal_partitions")]
    internal_partitions: i32,
    /// -1: the broker's default.
    #[serde(default = "default_internal_replication")]
    internal_replication: i32,
    #[serde(default = "default_retention_hours", deserialize_with = "span::hours")]
    repartition_retention_hours: u64,
}

fn default_true() -> bool {
    true
}

fn default_internal_partitions() -> i32 {
    6
}

fn default_internal_replication() -> i32 {
    -1
}

fn default_retention_hours() -> u64 {
    7 * 24
}

fn default_source_idle_ms() -> u64 {
    30_000
}

fn default_detect_queue() -> usize {
    200_000
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawInput {
    topic: String,
    #[serde(default)]
    provider: Option<String>,
}

/// An input topic and the cloud its records are (None: detected per record).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Input {
    pub topic: String,
    pub provider: Option<Cloud>,
}

/// The validated service configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub brokers: String,
    pub group_id: String,
    pub inputs: Vec<Input>,
    pub alarm_topic: String,
    pub alarm_format: crate::ocsf::AlarmFormat,
    pub dlq_topic: String,
    /// Credential reports, keyed by account (`aws:123456789012`); the newest per account wins.
    pub report_topic: Option<String>,
    pub risk_topic: Option<String>,
    pub options: BTreeMap<String, String>,
    pub rules: PathBuf,
    pub policies: Vec<PathBuf>,
    pub lists: Vec<PathBuf>,
    pub geoip: Vec<PathBuf>,
    /// Report files and directories, re-scanned every `reports_rescan`.
    pub reports: Vec<PathBuf>,
    pub reports_rescan: std::time::Duration,
    /// How often rules, policies, lists and leak feeds are re-read when changed (`None`: never).
    pub reload_rescan: Option<std::time::Duration>,
    pub leaks: Vec<PathBuf>,
    pub permissions: Vec<PathBuf>,
    pub state_dir: Option<PathBuf>,
    /// How often the state is checkpointed and the offsets committed (also at a rebalance and at
    /// shutdown).
    pub commit_interval: std::time::Duration,
    /// The most keys with detection state; past it the least recently seen are evicted.
    pub state_max_keys: usize,
    /// The engine's other caps (entries per window, tracked alarms, created-key marks,
    /// quarantined principals), with `state_max_keys`.
    pub limits: crate::engine::Limits,
    pub ops_addr: Option<String>,
    /// How long a stop (SIGTERM / Ctrl-C) may take: what is not acknowledged by then is left
    /// to the next start (its offsets were never committed).
    pub shutdown_grace: std::time::Duration,
    /// Event times later than the wall clock plus this are rejected (`bad_field`).
    pub max_event_skew_secs: i64,
    /// The event-time merge waits at most this long for a partition with nothing queued (one
    /// caught up is waited for at most 200 ms of it).
    pub partition_idle_timeout: std::time::Duration,
    /// Records queued per partition in the merge before the partition is paused.
    pub merge_queue_records: usize,
    /// Scale-out through the repartition and changelog topics (the default).
    pub repartition: bool,
    pub internal_partitions: i32,
    pub internal_replication: i32,
    pub repartition_retention: std::time::Duration,
    /// How long the detection side waits for an input partition that sends nothing, not even
    /// progress (its reader gone), before going on without it.
    pub source_idle_timeout: std::time::Duration,
    /// Events one partition's detection merge holds before it releases the oldest regardless.
    pub detect_queue_events: usize,
    /// The CSC views' inventory and its API, when configured.
    pub inventory: Option<InventoryConfig>,
    /// Notification sinks (`notify:`), in configuration order.
    pub notify: Vec<crate::notify::SinkConfig>,
}

impl Config {
    pub fn load(path: &Path) -> Result<Config, Vec<String>> {
        let name = path.display().to_string();
        let text =
            std::fs::read_to_string(path).map_err(|e| vec![format!("{name}: cannot read: {e}")])?;
        Config::parse(&name, &text, &|k| std::env::var(k).ok())
    }

    /// Parses and validates; relative paths stay relative to the working directory.
    pub fn parse(
        name: &str,
        text: &str,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Config, Vec<String>> {
        let line_of = |needle: &str| {
            text.lines()
                .position(|l| l.contains(needle))
                .map_or(1, |i| i + 1)
        };
        let mut tree: serde_json::Value = serde_saphyr::from_str(text).map_err(|e| {
            vec![format!(
                "{name}: {}",
                crate::rule::first_line(&e.to_string())
            )]
        })?;
        // `${NAME}` in every string value, before the values are read.
        let mut errors = Vec::new();
        expand_tree(&mut tree, &mut String::new(), env, &mut |path, var| {
            errors.push(format!(
                "{name}:{}: {path}: environment variable {var} is not set",
                line_of(&format!("${{{var}"))
            ));
        });
        let raw: RawConfig = match serde_path_to_error::deserialize(tree) {
            Ok(raw) => raw,
            Err(e) => {
                let path = e.path().to_string();
                let inner = e.into_inner().to_string();
                // The line of the key in error: the unknown one, else the path's last key.
                let key = inner
                    .split('`')
                    .nth(1)
                    .filter(|_| inner.starts_with("unknown field"))
                    .map(str::to_owned)
                    .or_else(|| {
                        path.rsplit('.')
                            .find(|k| !k.is_empty() && !k.starts_with('['))
                            .map(|k| k.split('[').next().unwrap_or(k).to_owned())
                    })
                    .filter(|k| !k.is_empty() && k != "?");
                let line = key.map_or(1, |k| line_of(&format!("{k}:")));
                let at = if path == "." {
                    String::new()
                } else {
                    format!("{path}: ")
                };
                errors.push(format!(
                    "{name}:{line}: {at}{}",
                    crate::rule::first_line(&inner)
                ));
                return Err(errors);
            }
        };
        let k = raw.kafka;
        for (field, value) in [
            ("brokers", &k.brokers),
            ("group_id", &k.group_id),
            ("alarm_topic", &k.alarm_topic),
            ("dlq_topic", &k.dlq_topic),
        ] {
            if value.trim().is_empty() {
                errors.push(format!("{name}:{}: kafka.{field} is empty", line_of(field)));
            }
        }
        if k.inputs.is_empty() {
            errors.push(format!(
                "{name}:{}: kafka.inputs: no input topics",
                line_of("inputs")
            ));
        }
        let mut inputs = Vec::new();
        for i in k.inputs {
            let provider = match i.provider.as_deref() {
                None | Some("auto") => None,
                Some(p) => match p.parse::<Cloud>() {
                    Ok(c) => Some(c),
                    Err(e) => {
                        errors.push(format!(
                            "{name}:{}: kafka.inputs[{}].provider: {e}",
                            line_of(p),
                            i.topic
                        ));
                        None
                    }
                },
            };
            if i.topic == k.alarm_topic
                || i.topic == k.dlq_topic
                || k.report_topic.as_ref() == Some(&i.topic)
            {
                errors.push(format!(
                    "{name}:{}: kafka.inputs: {} is also the alarm, dead-letter or report topic",
                    line_of(&i.topic),
                    i.topic
                ));
            }
            inputs.push(Input {
                topic: i.topic,
                provider,
            });
        }
        if let Some(t) = &k.report_topic
            && (t.trim().is_empty() || *t == k.alarm_topic || *t == k.dlq_topic)
        {
            errors.push(format!(
                "{name}:{}: kafka.report_topic: {t:?} is empty or also the alarm or dead-letter topic",
                line_of("report_topic")
            ));
        }
        if raw.state_max_keys == 0 {
            errors.push(format!(
                "{name}:{}: state_max_keys must be at least 1",
                line_of("state_max_keys")
            ));
        }
        for (key, value) in [
            ("state_max_window_entries", raw.state_max_window_entries),
            ("state_max_alarms", raw.state_max_alarms),
            ("state_max_alarms_per_key", raw.state_max_alarms_per_key),
            ("state_max_created_keys", raw.state_max_created_keys),
            ("state_max_quarantined", raw.state_max_quarantined),
        ] {
            if !(1..=100_000_000).contains(&value) {
                errors.push(format!(
                    "{name}:{}: {key}: {value} is out of range (1 to 100000000)",
                    line_of(key)
                ));
            }
        }
        if raw.commit_interval_seconds == 0 {
            errors.push(format!(
                "{name}:{}: commit_interval_seconds must be at least 1",
                line_of("commit_interval_seconds")
            ));
        }
        if raw.reports_rescan_seconds == 0 {
            errors.push(format!(
                "{name}:{}: reports_rescan_seconds must be at least 1",
                line_of("reports_rescan_seconds")
            ));
        }
        if let Some(addr) = &raw.ops_addr
            && let Err(e) = check_ops_addr(addr)
        {
            errors.push(format!(
                "{name}:{}: ops_addr {addr:?}: {e}",
                line_of("ops_addr")
            ));
        }
        let mut options = BTreeMap::new();
        for (key, value) in k.options {
            options.insert(key, value);
        }
        if !(1..=3600).contains(&raw.shutdown_grace_seconds) {
            errors.push(format!(
                "{name}:{}: shutdown_grace_seconds: {} is out of range (1 to 3600)",
                line_of("shutdown_grace_seconds"),
                raw.shutdown_grace_seconds
            ));
        }
        if !(1..=600_000).contains(&raw.partition_idle_timeout_ms) {
            errors.push(format!(
                "{name}:{}: partition_idle_timeout_ms: {} is out of range (1 to 600000)",
                line_of("partition_idle_timeout_ms"),
                raw.partition_idle_timeout_ms
            ));
        }
        if !(1..=1_000_000).contains(&raw.merge_queue_records) {
            errors.push(format!(
                "{name}:{}: merge_queue_records: {} is out of range (1 to 1000000)",
                line_of("merge_queue_records"),
                raw.merge_queue_records
            ));
        }
        if !(1..=1024).contains(&k.internal_partitions) {
            errors.push(format!(
                "{name}:{}: kafka.internal_partitions: {} is out of range (1 to 1024)",
                line_of("internal_partitions"),
                k.internal_partitions
            ));
        }
        if k.internal_replication == 0 || !(-1..=32).contains(&k.internal_replication) {
            errors.push(format!(
                "{name}:{}: kafka.internal_replication: {} is out of range (-1 for the broker's default, or 1 to 32)",
                line_of("internal_replication"),
                k.internal_replication
            ));
        }
        if !(1..=100 * 365 * 24).contains(&k.repartition_retention_hours) {
            errors.push(format!(
                "{name}:{}: kafka.repartition_retention_hours: {} is out of range (1 to 876000)",
                line_of("repartition_retention_hours"),
                k.repartition_retention_hours
            ));
        }
        if !(1..=3_600_000).contains(&raw.source_idle_timeout_ms) {
            errors.push(format!(
                "{name}:{}: source_idle_timeout_ms: {} is out of range (1 to 3600000)",
                line_of("source_idle_timeout_ms"),
                raw.source_idle_timeout_ms
            ));
        }
        if !(1..=10_000_000).contains(&raw.detect_queue_events) {
            errors.push(format!(
                "{name}:{}: detect_queue_events: {} is out of range (1 to 10000000)",
                line_of("detect_queue_events"),
                raw.detect_queue_events
            ));
        }
        let inventory = match raw.inventory.clone() {
            None => None,
            Some(inv) => {
                if !k.repartition {
                    errors.push(format!(
                        "{name}:{}: inventory: needs kafka.repartition: true (the inventory counts each event exactly once per detection partition)",
                        line_of("inventory")
                    ));
                }
                let store = inv.store.clone();
                if store.trim().is_empty() {
                    errors.push(format!(
                        "{name}:{}: inventory.store is empty",
                        line_of("store")
                    ));
                }
                if !(1..=3660).contains(&inv.retention_days) {
                    errors.push(format!(
                        "{name}:{}: inventory.retention_days: {} is out of range (1 to 3660)",
                        line_of("retention_days"),
                        inv.retention_days
                    ));
                }
                if !(1_000..=100_000_000).contains(&inv.max_pending_rows) {
                    errors.push(format!(
                        "{name}:{}: inventory.max_pending_rows: {} is out of range (1000 to 100000000)",
                        line_of("max_pending_rows"),
                        inv.max_pending_rows
                    ));
                }
                let api = inv.api.and_then(|a| match a.listen.parse::<std::net::SocketAddr>() {
                    Ok(listen) if !listen.ip().is_loopback() && a.tokens.is_none() => {
                        errors.push(format!(
                            "{name}:{}: inventory.api.listen {listen} is not a loopback address: give inventory.api.tokens to serve beyond this machine",
                            line_of("listen")
                        ));
                        None
                    }
                    Ok(listen) => Some(ApiConfig {
                        listen,
                        tokens: a.tokens,
                        policies_dir: a.policies_dir,
                    }),
                    Err(e) => {
                        errors.push(format!(
                            "{name}:{}: inventory.api.listen {:?}: {e} (an address and port, such as 127.0.0.1:8080)",
                            line_of("listen"),
                            a.listen
                        ));
                        None
                    }
                });
                Some(InventoryConfig {
                    store,
                    retention_days: inv.retention_days,
                    max_pending_rows: inv.max_pending_rows,
                    api,
                })
            }
        };
        if raw.max_event_skew_seconds > 366 * 86_400 {
            errors.push(format!(
                "{name}:{}: max_event_skew_seconds: {} is out of range (0 to one year, 31622400)",
                line_of("max_event_skew_seconds"),
                raw.max_event_skew_seconds
            ));
        }
        let notify = crate::notify::config::validate(&raw.notify, name, text, &mut errors);
        if !errors.is_empty() {
            return Err(errors);
        }
        Ok(Config {
            brokers: k.brokers,
            group_id: k.group_id,
            inputs,
            alarm_topic: k.alarm_topic,
            alarm_format: k.alarm_format,
            dlq_topic: k.dlq_topic,
            report_topic: k.report_topic,
            risk_topic: k.risk_topic,
            options,
            rules: raw.rules,
            policies: raw.policies,
            lists: raw.lists,
            geoip: raw.geoip,
            reports: raw.reports,
            reports_rescan: std::time::Duration::from_secs(raw.reports_rescan_seconds),
            reload_rescan: (raw.reload_rescan_seconds > 0)
                .then(|| std::time::Duration::from_secs(raw.reload_rescan_seconds)),
            leaks: raw.leaks,
            permissions: raw.permissions,
            state_dir: raw.state_dir,
            commit_interval: std::time::Duration::from_secs(raw.commit_interval_seconds),
            state_max_keys: raw.state_max_keys,
            limits: crate::engine::Limits {
                max_keys: raw.state_max_keys,
                max_window_entries: raw.state_max_window_entries,
                max_alarms: raw.state_max_alarms,
                max_alarms_per_key: raw.state_max_alarms_per_key,
                max_created: raw.state_max_created_keys,
                max_quarantined: raw.state_max_quarantined,
                ..crate::engine::Limits::default()
            },
            ops_addr: raw.ops_addr,
            shutdown_grace: std::time::Duration::from_secs(raw.shutdown_grace_seconds),
            max_event_skew_secs: i64::try_from(raw.max_event_skew_seconds).unwrap_or(i64::MAX),
            partition_idle_timeout: std::time::Duration::from_millis(raw.partition_idle_timeout_ms),
            merge_queue_records: raw.merge_queue_records,
            repartition: k.repartition,
            internal_partitions: k.internal_partitions,
            internal_replication: k.internal_replication,
            repartition_retention: std::time::Duration::from_secs(
                k.repartition_retention_hours.saturating_mul(3600),
            ),
            source_idle_timeout: std::time::Duration::from_millis(raw.source_idle_timeout_ms),
            detect_queue_events: raw.detect_queue_events,
            inventory,
            notify,
        })
    }
}

impl Config {
    /// What the pipeline is built from (the command line lowers into the same): rules,
    /// policies and lists (default: RULES/policies, RULES/lists), GeoIP, reports, leak feeds.
    pub fn pipeline_options(&self) -> crate::replay::ReplayOptions {
        // The default `rules` when the working directory has none: the bundled rules.
        let rules = if self.rules == Path::new("rules") && !self.rules.is_dir() {
            crate::bundled::path("rules").unwrap_or_else(|_| self.rules.clone())
        } else {
            self.rules.clone()
        };
        let or_default = |given: &[PathBuf], sub: &str| {
            if given.is_empty() {
                vec![rules.join(sub)]
            } else {
                given.to_vec()
            }
        };
        // The API's policy directory is loaded with the others (its files are the API's
        // entries).
        let mut policies = or_default(&self.policies, "policies");
        if let Some(dir) = self
            .inventory
            .as_ref()
            .and_then(|i| i.api.as_ref())
            .and_then(|a| a.policies_dir.clone())
            && !policies.contains(&dir)
        {
            policies.push(dir);
        }
        crate::replay::ReplayOptions {
            inputs: Vec::new(),
            reports: self.reports.clone(),
            rules: rules.clone(),
            policies,
            lists: or_default(&self.lists, "lists"),
            geoip: self.geoip.clone(),
            leaks: self.leaks.clone(),
            permissions: self.permissions.clone(),
            provider: None,
            limits: self.limits,
            // The service's engines are per repartition partition (`kafka::run`).
            threads: 1,
        }
    }
}

/// `ops_addr` is `IP:port` or `host:port` (binding it is checked at start: a bad one is fatal).
fn check_ops_addr(addr: &str) -> Result<(), String> {
    if addr.parse::<std::net::SocketAddr>().is_ok() {
        return Ok(());
    }
    let bad = || "not an address host:port (e.g. 127.0.0.1:9464)".to_owned();
    let (host, port) = addr.rsplit_once(':').ok_or_else(bad)?;
    let host_ok = !host.is_empty()
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.');
    if !host_ok || port.parse::<u16>().is_err() {
        return Err(bad());
    }
    Ok(())
}

/// Replaces `${NAME}` with the environment's value, and `${NAME:-default}` with it or, when it
/// is unset or empty, the default; the error is the missing name.
fn expand_env(value: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
    let mut out = String::new();
    let mut rest = value;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let Some(end) = after.find('}') else {
            out.push_str(&rest[start..]);
            return Ok(out);
        };
        let inner = &after[..end];
        match inner.split_once(":-") {
            Some((var, default)) => match env(var).filter(|v| !v.is_empty()) {
                Some(v) => out.push_str(&v),
                None => out.push_str(default),
            },
            None => out.push_str(&env(inner).ok_or_else(|| inner.to_owned())?),
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// [`expand_env`] over every string value of the configuration (not the keys); `missing` gets
/// the dotted path and the variable of each one that is not set (the value is left as it was).
fn expand_tree(
    value: &mut serde_json::Value,
    path: &mut String,
    env: &dyn Fn(&str) -> Option<String>,
    missing: &mut dyn FnMut(&str, &str),
) {
    use serde_json::Value;
    match value {
        Value::String(s) if s.contains("${") => match expand_env(s, env) {
            Ok(v) => *s = v,
            Err(var) => missing(path, &var),
        },
        Value::Array(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                let len = path.len();
                path.push_str(&format!("[{i}]"));
                expand_tree(item, path, env, missing);
                path.truncate(len);
            }
        }
        Value::Object(map) => {
            for (k, v) in map.iter_mut() {
                let len = path.len();
                if !path.is_empty() {
                    path.push('.');
                }
                path.push_str(k);
                expand_tree(v, path, env, missing);
                path.truncate(len);
            }
        }
        _ => {}
    }
}

/// A map of scalars, each as text.
fn scalar_map<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<BTreeMap<String, String>, D::Error> {
    use serde::de::Error;
    let map = BTreeMap::<String, serde_json::Value>::deserialize(d)?;
    map.into_iter()
        .map(|(k, v)| match v {
            serde_json::Value::String(s) => Ok((k, s)),
            serde_json::Value::Number(n) => Ok((k, n.to_string())),
            serde_json::Value::Bool(b) => Ok((k, b.to_string())),
            other => Err(D::Error::custom(format!(
                "{k}: expected a text, number or boolean value, not {other}"
            ))),
        })
        .collect()
}

/// Durations of the configuration: a number in the key's unit, or a duration string (the
/// rules' syntax: `30s`, `15m`, `6h`, `1d`, `2w`; and `ms` for the millisecond keys).
mod span {
    use serde::{Deserialize, Deserializer, de::Error};

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Number(u64),
        Text(String),
    }

    /// Milliseconds in a duration string.
    fn parse_ms(text: &str) -> Result<u64, String> {
        let t = text.trim();
        if let Some(n) = t
            .strip_suffix("ms")
            .filter(|n| n.bytes().all(|b| b.is_ascii_digit()))
        {
            return n
                .parse()
                .map_err(|_| format!("duration {text:?} is longer than 10 years (3650d)"));
        }
        let secs = crate::rule::Dur::parse(t)?.secs();
        u64::try_from(secs)
            .ok()
            .and_then(|s| s.checked_mul(1000))
            .ok_or_else(|| format!("bad duration {text:?}"))
    }

    fn read<'de, D: Deserializer<'de>>(d: D, unit_ms: u64) -> Result<u64, D::Error> {
        match Raw::deserialize(d).map_err(|_| {
            D::Error::custom("expected a number or a duration such as 30s, 15m, 6h, 1d")
        })? {
            Raw::Number(n) => Ok(n),
            // Digits only (as `${NAME}` gives them): a number in the key's own unit.
            Raw::Text(t)
                if !t.trim().is_empty() && t.trim().bytes().all(|b| b.is_ascii_digit()) =>
            {
                t.trim()
                    .parse()
                    .map_err(|_| D::Error::custom(format!("{t:?} is too large")))
            }
            Raw::Text(t) => {
                let ms = parse_ms(&t).map_err(D::Error::custom)?;
                if ms % unit_ms != 0 {
                    return Err(D::Error::custom(format!(
                        "duration {t:?} is not a whole number of {}",
                        match unit_ms {
                            1 => "milliseconds",
                            1000 => "seconds",
                            _ => "hours",
                        }
                    )));
                }
                Ok(ms / unit_ms)
            }
        }
    }

    pub fn secs<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        read(d, 1000)
    }

    pub fn millis<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        read(d, 1)
    }

    pub fn hours<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        read(d, 3_600_000)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(k: &str) -> Option<String> {
        (k == "KAFKA_PASSWORD").then(|| "s3cret".to_owned())
    }

    #[test]
    fn env_anywhere_with_defaults_and_durations_in_either_form() {
        let text = "kafka:\n  brokers: ${BROKERS:-127.0.0.1:9092}\n  group_id: ${GROUP}\n  inputs:\n    - topic: in\n  alarm_topic: alarms\n  dlq_topic: dlq\n  options:\n    linger.ms: 5\n    enable.idempotence: true\n    sasl.password: ${KAFKA_PASSWORD}\n  repartition_retention_hours: 2d\ncommit_interval_seconds: 2m\nshutdown_grace_seconds: 30\npartition_idle_timeout_ms: 1500ms\nsource_idle_timeout_ms: 1m\nmax_event_skew_seconds: 1h\n";
        let env = |k: &str| match k {
            "GROUP" => Some("g1".to_owned()),
            "KAFKA_PASSWORD" => Some("s3cret".to_owned()),
            _ => None,
        };
        let c = Config::parse("c.yaml", text, &env).unwrap_or_else(|e| panic!("{e:#?}"));
        assert_eq!(c.brokers, "127.0.0.1:9092");
        // A number from the environment is in the key's own unit.
        let digits = text
            .replace(
                "partition_idle_timeout_ms: 1500ms",
                "partition_idle_timeout_ms: ${IDLE:-1500}",
            )
            .replace(
                "repartition_retention_hours: 2d",
                "repartition_retention_hours: '48'",
            );
        let d = Config::parse("c.yaml", &digits, &env).unwrap_or_else(|e| panic!("{e:#?}"));
        assert_eq!(d.partition_idle_timeout, c.partition_idle_timeout);
        assert_eq!(d.repartition_retention, c.repartition_retention);
        assert_eq!(c.group_id, "g1");
        assert_eq!(c.options["linger.ms"], "5");
        assert_eq!(c.options["enable.idempotence"], "true");
        assert_eq!(c.options["sasl.password"], "s3cret");
        assert_eq!(c.commit_interval, std::time::Duration::from_secs(120));
        assert_eq!(c.shutdown_grace, std::time::Duration::from_secs(30));
        assert_eq!(c.max_event_skew_secs, 3600);
        // Set and empty takes the default too; set and not empty wins.
        let env2 = |k: &str| match k {
            "BROKERS" => Some("kafka:19092".to_owned()),
            "GROUP" => Some("g2".to_owned()),
            "KAFKA_PASSWORD" => Some(String::new()),
            _ => None,
        };
        let c = Config::parse("c.yaml", text, &env2).unwrap_or_else(|e| panic!("{e:#?}"));
        assert_eq!(c.brokers, "kafka:19092");
        // Bad durations and unset variables: each with its line.
        let bad = text
            .replace(
                "commit_interval_seconds: 2m",
                "commit_interval_seconds: 90ms",
            )
            .replace("max_event_skew_seconds: 1h", "max_event_skew_seconds: soon");
        let all = Config::parse("c.yaml", &bad, &env).unwrap_err().join("\n");
        assert!(
            all.contains("c.yaml:13: commit_interval_seconds: duration \"90ms\" is not a whole number of seconds"),
            "{all}"
        );
        let bad = text
            .replace("${GROUP}", "${NOPE}")
            .replace("source_idle_timeout_ms: 1m", "source_idle_timeout_ms: 3y");
        let all = Config::parse("c.yaml", &bad, &env).unwrap_err().join("\n");
        assert!(
            all.contains("c.yaml:3: kafka.group_id: environment variable NOPE is not set"),
            "{all}"
        );
        assert!(
            all.contains("c.yaml:16: source_idle_timeout_ms: bad duration unit"),
            "{all}"
        );
    }

    #[test]
    fn the_commented_example_parses() {
        let text =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/akwatch.example.yaml"))
                .unwrap();
        let c =
            Config::parse("akwatch.example.yaml", &text, &env).unwrap_or_else(|e| panic!("{e:#?}"));
        assert_eq!(c.inputs.len(), 3);
        assert_eq!(c.inputs[0].provider, Some(Cloud::Aws));
        // As shipped it needs no secret: it runs against the local broker.
        assert_eq!(c.options.get("sasl.password"), None);
        assert_eq!(c.brokers, "127.0.0.1:19092");
        assert_eq!(c.commit_interval, std::time::Duration::from_secs(5));
    }

    #[test]
    fn the_inventory_section_is_checked_whole() {
        let base = "kafka:\n  brokers: b\n  group_id: g\n  inputs:\n    - topic: in\n  alarm_topic: alarms\n  dlq_topic: dlq\n";
        let ok = format!(
            "{base}inventory:\n  store: postgres://akwatch:${{KAFKA_PASSWORD}}@db/akwatch\n  api:\n    listen: 127.0.0.1:8081\n"
        );
        let c = Config::parse("c.yaml", &ok, &env).unwrap_or_else(|e| panic!("{e:#?}"));
        let inv = c.inventory.unwrap();
        assert_eq!(inv.store, "postgres://akwatch:s3cret@db/akwatch");
        assert_eq!(inv.retention_days, 30);
        assert_eq!(inv.api.unwrap().listen.port(), 8081);
        let bad = format!(
            "{}  repartition: false\ninventory:\n  store: ${{NOPE}}\n  retention_days: 0\n  api:\n    listen: 0.0.0.0:8080\n",
            base
        );
        let all = Config::parse("c.yaml", &bad, &env).unwrap_err().join("\n");
        for want in [
            "c.yaml:9: inventory: needs kafka.repartition: true",
            "c.yaml:10: inventory.store: environment variable NOPE is not set",
            "c.yaml:11: inventory.retention_days: 0 is out of range",
            "c.yaml:13: inventory.api.listen 0.0.0.0:8080 is not a loopback address",
        ] {
            assert!(all.contains(want), "{want} not in:\n{all}");
        }
    }

    #[test]
    fn caps_and_the_grace_period_are_range_checked_with_their_lines() {
        let text = "kafka:\n  brokers: b\n  group_id: g\n  inputs:\n    - topic: in\n  alarm_topic: alarms\n  dlq_topic: dlq\nstate_max_alarms: 0\nshutdown_grace_seconds: 0\nmax_event_skew_seconds: 99999999999\n";
        let all = Config::parse("c.yaml", text, &env).unwrap_err().join("\n");
        assert!(
            all.contains("c.yaml:8: state_max_alarms: 0 is out of range"),
            "{all}"
        );
        assert!(
            all.contains("c.yaml:9: shutdown_grace_seconds: 0 is out of range"),
            "{all}"
        );
        assert!(all.contains("c.yaml:10: max_event_skew_seconds"), "{all}");
        let ok = text
            .replace("state_max_alarms: 0", "state_max_alarms: 7")
            .replace("shutdown_grace_seconds: 0", "shutdown_grace_seconds: 5")
            .replace(
                "max_event_skew_seconds: 99999999999",
                "max_event_skew_seconds: 60",
            );
        let c = Config::parse("c.yaml", &ok, &env).unwrap();
        assert_eq!(c.limits.max_alarms, 7);
        assert_eq!(c.shutdown_grace, std::time::Duration::from_secs(5));
        assert_eq!(c.max_event_skew_secs, 60);
    }

    #[test]
    fn every_problem_is_reported_with_its_line() {
        let text = "kafka:\n  brokers: ''\n  group_id: g\n  inputs:\n    - topic: alarms\n      provider: azure\n  alarm_topic: alarms\n  dlq_topic: dlq\n  options:\n    sasl.password: ${NOPE}\n";
        let errors = Config::parse("c.yaml", text, &env).unwrap_err();
        let all = errors.join("\n");
        assert!(all.contains("c.yaml:2: kafka.brokers is empty"), "{all}");
        assert!(
            all.contains("c.yaml:6: kafka.inputs[alarms].provider: unknown provider"),
            "{all}"
        );
        assert!(
            all.contains("alarms is also the alarm, dead-letter or report topic"),
            "{all}"
        );
        assert!(
            all.contains(
                "c.yaml:10: kafka.options.sasl.password: environment variable NOPE is not set"
            ),
            "{all}"
        );
        let text = "kafka:\n  brokers: b\n  group_id: g\n  inputs:\n    - topic: in\n  alarm_topic: alarms\n  dlq_topic: dlq\n  report_topic: dlq\nreports_rescan_seconds: 0\n";
        let all = Config::parse("c.yaml", text, &env).unwrap_err().join("\n");
        assert!(
            all.contains("c.yaml:8: kafka.report_topic: \"dlq\" is empty or also the alarm or dead-letter topic"),
            "{all}"
        );
        assert!(
            all.contains("c.yaml:9: reports_rescan_seconds must be at least 1"),
            "{all}"
        );
        let text = "kafka:\n  brokers: b\n  group_id: g\n  inputs:\n    - topic: in\n  alarm_topic: alarms\n  dlq_topic: dlq\nops_addr: 127.0.0.1:99999\n";
        let all = Config::parse("c.yaml", text, &env).unwrap_err().join("\n");
        assert!(
            all.contains("c.yaml:8: ops_addr \"127.0.0.1:99999\": not an address host:port (e.g. 127.0.0.1:9464)"),
            "{all}"
        );
        for ok in [
            "0.0.0.0:9464",
            "[::1]:9464",
            "localhost:9464",
            "akwatch.internal:80",
        ] {
            assert_eq!(check_ops_addr(ok), Ok(()), "{ok}");
        }
        for bad in ["9464", ":9464", "localhost", "local host:1", "1.2.3.4:x"] {
            assert!(check_ops_addr(bad).is_err(), "{bad}");
        }
        let e = Config::parse("c.yaml", "kafka:\n  brokerz: x\n", &env).unwrap_err();
        assert!(e[0].contains("unknown field `brokerz`"), "{e:?}");
    }

    #[test]
    fn reload_rescan_takes_a_number_or_a_duration_and_zero_turns_it_off() {
        let env = |_: &str| None;
        let base = "kafka:\n  brokers: b\n  group_id: g\n  inputs:\n    - topic: in\n  alarm_topic: alarms\n  dlq_topic: dlq\n";
        let rescan = |extra: &str| {
            Config::parse("c.yaml", &format!("{base}{extra}"), &env)
                .unwrap()
                .reload_rescan
        };
        let secs = |n| Some(std::time::Duration::from_secs(n));
        assert_eq!(rescan(""), secs(30));
        assert_eq!(rescan("reload_rescan_seconds: 5\n"), secs(5));
        assert_eq!(rescan("reload_rescan_seconds: 2m\n"), secs(120));
        assert_eq!(rescan("reload_rescan_seconds: 0\n"), None);
        // The example's commented key, uncommented.
        let example =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/akwatch.example.yaml"))
                .unwrap()
                .replace("# reload_rescan_seconds: 30", "reload_rescan_seconds: 30");
        let c = Config::parse("akwatch.example.yaml", &example, &|_: &str| None)
            .unwrap_or_else(|e| panic!("{e:#?}"));
        assert_eq!(c.reload_rescan, secs(30));
    }
}
