//! The whole pipeline over files: decode → enrich → policy → detect → aggregate. Used by
//! `akwatch replay` (the embedded default) and by the tests; the Kafka service builds its
//! stages with the same `setup`. With more than one thread, [`parallel`] runs the same
//! stages on every core, with the same output.

pub mod parallel;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::alarm::{Alarm, AlarmStatus, Evidence, alarm_id};
use crate::engine::Engine;
use crate::enrich::{
    Enricher, GeoDb, IpLists, IpSet, KeyOwner, LeakEntry, LeakFeed, ReportIndex, iplist,
};
use crate::event::{Cloud, KeyKind, Principal, PrincipalType};
use crate::pipeline::{Output, Pipeline};
use crate::policy::Policy;
use crate::provider::Decoder;
use crate::report::live::ReportFeed;
use crate::risk::{Risk, report_time, risks};
use crate::rule::{AlarmType, RuleSet, Severity};
use crate::source::framing::FrameOptions;
use crate::source::{Progress, Rejected, expand, files_in, read_input_counted};

/// What to run.
#[derive(Debug, Clone, Default)]
pub struct ReplayOptions {
    pub inputs: Vec<String>,
    pub reports: Vec<PathBuf>,
    pub rules: PathBuf,
    /// Policy directories, merged (default: RULES/policies).
    pub policies: Vec<PathBuf>,
    pub lists: Vec<PathBuf>,
    pub geoip: Vec<PathBuf>,
    pub leaks: Vec<PathBuf>,
    /// Permission snapshots (files or directories of JSON; see `permissions`).
    pub permissions: Vec<PathBuf>,
    pub provider: Option<Cloud>,
    /// The engine's caps on state and tracked alarms.
    pub limits: crate::engine::Limits,
    /// Threads to decode and detect on (0 or 1: the caller's thread only).
    pub threads: usize,
}

impl ReplayOptions {
    /// The bundled example scenario under `dir` (`examples/`): its logs, reports, GeoIP file,
    /// lists, leak feed and policies, with the repository's rules.
    pub fn bundled(dir: &Path, rules: &Path) -> ReplayOptions {
        let files = |sub: &str| files_in(&[dir.join(sub)]);
        let geo = dir.join("geo.mmdb");
        ReplayOptions {
            inputs: vec![dir.join("logs").display().to_string()],
            reports: files("reports"),
            rules: rules.to_path_buf(),
            // A scenario's own policies and lists, when it has them.
            policies: std::iter::once(rules.join("policies"))
                .chain(Some(dir.join("policies")).filter(|d| d.is_dir()))
                .collect(),
            lists: std::iter::once(rules.join("lists"))
                .chain(Some(dir.join("lists")).filter(|d| d.is_dir()))
                .collect(),
            geoip: if geo.is_file() { vec![geo] } else { vec![] },
            leaks: files("leaks"),
            permissions: Vec::new(),
            provider: None,
            limits: crate::engine::Limits::default(),
            threads: 1,
        }
    }
}

/// Everything built at start-up.
pub struct Setup {
    pub enricher: Enricher,
    pub engine: Engine,
    /// The rules in force (those needing a missing GeoIP database left out), for more engines.
    pub rules: RuleSet,
    /// The credential reports read, the newest per account in use.
    pub reports: ReportFeed,
    /// Start-up warnings (rules disabled for want of a GeoIP database, ...).
    pub warnings: Vec<String>,
    /// When given, the run also fills this inventory batch (`replay --store`).
    pub inventory: Option<crate::inventory::Batch>,
    /// Where a full inventory batch goes during the run (past [`INVENTORY_BATCH_ROWS`] rows),
    /// so the batch stays bounded; what is left at the end is in [`Summary::inventory`].
    #[allow(clippy::type_complexity)]
    pub inventory_sink: Option<Box<dyn FnMut(crate::inventory::Batch) -> Result<(), String>>>,
    /// The rows at which a batch goes to the sink (default [`INVENTORY_BATCH_ROWS`]).
    pub inventory_batch_rows: usize,
    /// Threads to decode and detect on ([`ReplayOptions::threads`]).
    pub threads: usize,
    /// When given, the run adds the bytes it reads and the records it frames to it (for a
    /// progress display polling it from another thread).
    pub progress: Option<std::sync::Arc<Progress>>,
}

/// The most rows an inventory batch holds before it is handed to the sink.
pub const INVENTORY_BATCH_ROWS: usize = 200_000;

/// Loads rules, policies, lists, GeoIP, reports and leak feeds. Every problem is reported
/// together.
pub fn setup(o: &ReplayOptions) -> Result<Setup, Vec<String>> {
    let mut errors = Vec::new();
    let mut warnings = Vec::new();
    let mut rules = match RuleSet::load(&o.rules) {
        Ok(r) => r,
        Err(e) => {
            errors.extend(e);
            RuleSet::default()
        }
    };
    let policy_dirs = if o.policies.is_empty() {
        vec![o.rules.join("policies")]
    } else {
        o.policies.clone()
    };
    // A path that names nothing is a typo, not an empty list: the allowlist or the threat
    // lists silently missing would change every alarm.
    for (what, paths) in [("policy directory", &policy_dirs), ("list", &o.lists)] {
        for p in paths.iter().filter(|p| !p.exists()) {
            errors.push(format!(
                "{}: cannot read the {what}: it does not exist",
                p.display()
            ));
        }
    }
    let policy = match Policy::load_dirs(&policy_dirs, &rules) {
        Ok(p) => p,
        Err(e) => {
            errors.extend(e);
            Policy::default()
        }
    };
    let geo = if o.geoip.is_empty() {
        None
    } else {
        match GeoDb::open(&o.geoip) {
            Ok(g) => Some(std::sync::Arc::new(g)),
            Err(e) => {
                errors.push(e);
                None
            }
        }
    };
    if geo.is_none() {
        let off: Vec<String> = rules
            .rules
            .iter()
            .filter(|r| r.requires_geoip)
            .map(|r| r.id.clone())
            .collect();
        if !off.is_empty() {
            warnings.push(format!(
                "no GeoIP database given (replay --geoip, configuration geoip:): rules disabled: {}",
                off.join(", ")
            ));
        }
        rules.rules.retain(|r| !r.requires_geoip);
    }
    let lists = match load_lists(&o.lists) {
        Ok(l) => l,
        Err(e) => {
            errors.extend(e);
            IpLists::default()
        }
    };
    // The newest report per account (files: by `GeneratedTime`, else modification time).
    let mut reports = ReportFeed::new(&o.reports);
    let scanned = reports.scan();
    errors.extend(scanned.errors);
    warnings.extend(scanned.warnings);
    let mut leaks = LeakFeed::default();
    for path in &files_in(&o.leaks) {
        if let Err(e) = leaks.read(path) {
            errors.push(e);
        }
    }
    let (permissions, problems) = crate::permissions::load(&o.permissions);
    errors.extend(problems);
    let engine = match Engine::new(&rules, policy) {
        Ok(e) => Some(e),
        Err(e) => {
            errors.extend(e);
            None
        }
    };
    match (errors.is_empty(), engine) {
        (true, Some(mut engine)) => Ok(Setup {
            enricher: Enricher {
                geo: geo.clone(),
                lists,
                reports: ReportIndex::new(reports.latest()),
                leaks,
                permissions,
                ..Enricher::default()
            },
            engine: {
                engine.set_limits(o.limits);
                engine.set_geo(geo.clone());
                engine
            },
            rules,
            reports,
            warnings,
            inventory: None,
            inventory_sink: None,
            inventory_batch_rows: INVENTORY_BATCH_ROWS,
            threads: o.threads.max(1),
            progress: None,
        }),
        _ => Err(errors),
    }
}

/// The paths, with directories replaced by the (sorted) files in them.
/// Reads list files by name: `own*` (the account's CIDRs), `tor*`, `threat*` (IPs / CIDRs),
/// `hosting*` and `cloud*` (ASNs). Directories are read for their `*.txt` files.
pub fn load_lists(paths: &[PathBuf]) -> Result<IpLists, Vec<String>> {
    // In directories, the `*.txt` files (a README beside them is not a list).
    let files: Vec<PathBuf> = files_in(paths)
        .into_iter()
        .filter(|f| {
            !paths
                .iter()
                .any(|p| p.is_dir() && f.parent() == Some(p.as_path()))
                || f.extension().is_some_and(|x| x == "txt")
        })
        .filter(|f| f.is_file())
        .collect();
    let (mut own, mut tor, mut threat) = (Vec::new(), Vec::new(), Vec::new());
    let mut lists = IpLists::default();
    let mut errors = Vec::new();
    for f in files {
        let name = f
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("")
            .to_ascii_lowercase();
        let text = match std::fs::read_to_string(&f) {
            Ok(t) => t,
            Err(e) => {
                errors.push(format!("{}: cannot read: {e}", f.display()));
                continue;
            }
        };
        let file = f.display().to_string();
        let ips = |out: &mut Vec<String>, errors: &mut Vec<String>| match IpSet::parse(&file, &text)
        {
            Ok(_) => out.push(text.clone()),
            Err(e) => errors.extend(e.into_iter().map(|x| x.to_string())),
        };
        if name.starts_with("own") {
            ips(&mut own, &mut errors);
        } else if name.starts_with("tor") {
            ips(&mut tor, &mut errors);
        } else if name.starts_with("threat") {
            ips(&mut threat, &mut errors);
        } else if name.starts_with("hosting") || name.starts_with("cloud") {
            match iplist::parse_asns(&file, &text) {
                Ok(asns) if name.starts_with("hosting") => lists.hosting_asns.extend(asns),
                Ok(asns) => lists.cloud_asns.extend(asns),
                Err(e) => errors.extend(e.into_iter().map(|x| x.to_string())),
            }
        } else {
            errors.push(format!(
                "{file}: unknown list (name it own*, tor*, threat*, hosting*, or cloud*)"
            ));
        }
    }
    let join = |texts: Vec<String>| IpSet::parse("lists", &texts.join("\n")).unwrap_or_default();
    lists.own = join(own);
    lists.tor = join(tor);
    lists.threat = join(threat);
    if errors.is_empty() {
        Ok(lists)
    } else {
        Err(errors)
    }
}

/// An alarm for a leaked key as such (from the leak feed or a report flag), before any use;
/// with the account and principal the credential reports name as its owner, when they do.
pub fn leak_alarm(entry: &LeakEntry, cloud: Cloud, owner: Option<&KeyOwner>) -> Alarm {
    let mut facts = BTreeMap::new();
    facts.insert("leak".to_owned(), serde_json::json!(entry));
    if let Some(o) = owner {
        facts.insert("owner".to_owned(), serde_json::json!(o));
    }
    let now = entry
        .found_at
        .as_deref()
        .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
        .map(|t| t.with_timezone(&chrono::Utc))
        // A feed entry without a date: when the report naming the key was made (the leak is
        // at least as old as what we know of the key); nothing known: the epoch.
        .or(owner.map(|o| o.reported_at))
        .unwrap_or(chrono::DateTime::<chrono::Utc>::UNIX_EPOCH);
    let whose = owner.map_or_else(String::new, |o| {
        format!(
            " (user {}{})",
            o.principal,
            o.account_id
                .as_deref()
                .map(|a| format!(" of account {a}"))
                .unwrap_or_default()
        )
    });
    Alarm {
        schema_version: crate::alarm::SchemaVersion,
        alarm_id: alarm_id("ak.key_leaked", &entry.key_id, Some(&entry.source), 0),
        rule_id: "ak.key_leaked".to_owned(),
        rule_name: "Access key found leaked".to_owned(),
        severity: Severity::High,
        alarm_type: AlarmType::Leak,
        status: AlarmStatus::Created,
        cloud,
        account_id: owner.and_then(|o| o.account_id.clone().map(crate::event::AccountId)),
        access_key_id: Some(crate::event::AccessKeyId(entry.key_id.clone())),
        key_kind: KeyKind::Permanent,
        principal: Principal {
            kind: match owner {
                Some(o) if o.root => PrincipalType::Root,
                Some(_) => PrincipalType::User,
                None => PrincipalType::Unknown,
            },
            name: owner.map(|o| o.principal.clone()),
            id: owner.and_then(|o| o.principal_id.clone()),
            arn: owner.and_then(|o| o.arn.clone()),
            role: None,
            invoked_by: None,
            mfa: None,
            instance_id: None,
        },
        dimension: None,
        source_ips: Vec::new(),
        apis: Vec::new(),
        count: 1,
        first_seen: now,
        last_seen: now,
        evidence: Evidence {
            event_ids: Vec::new(),
            facts,
        },
        summary: format!("{}{whose} was found in {}{}.", entry.key_id, entry.source, entry.location.as_deref().map(|l| format!(" at {l}")).unwrap_or_default()),
        description: "An access key was found where it should not be: in a repository, a paste, or flagged by the cloud's credential report.".to_owned(),
        advice: "Disable the key now, issue a new one, and remove the secret from where it leaked (and its history).".to_owned(),
        // Unsecured Credentials: Credentials In Files (a repository, a paste, a report's flag).
        attack: crate::alarm::Attack {
            tactics: vec!["TA0006".to_owned()],
            techniques: vec!["T1552.001".to_owned()],
        },
    }
}

/// An alarm for every key known to be leaked before any call: the leak feeds' entries and the
/// keys a credential report flags as at risk. Sorted by key id (deterministic ids and order).
pub fn leak_alarms(enricher: &Enricher) -> Vec<Alarm> {
    let mut leak_keys: Vec<LeakEntry> = enricher.leaks.entries().into_iter().cloned().collect();
    let known: std::collections::HashSet<String> =
        leak_keys.iter().map(|l| l.key_id.clone()).collect();
    for key in enricher.reports.at_risk_keys() {
        if !known.contains(key) {
            let owner = enricher.reports.owner(key);
            leak_keys.push(LeakEntry {
                key_id: key.to_owned(),
                source: "credential report: may be at risk".to_owned(),
                location: owner.map(|o| o.source.clone()),
                found_at: owner.map(|o| o.reported_at.to_rfc3339()),
            });
        }
    }
    leak_keys.sort_by(|a, b| a.key_id.cmp(&b.key_id));
    leak_keys
        .iter()
        .map(|entry| {
            let owner = enricher.reports.owner(&entry.key_id);
            let cloud = owner.map_or_else(|| cloud_of_key(&entry.key_id), |o| o.cloud);
            leak_alarm(entry, cloud, owner)
        })
        .collect()
}

/// The cloud of a key id, from its shape.
pub fn cloud_of_key(key: &str) -> Cloud {
    if key.starts_with("LTAI") || key.starts_with("STS.") {
        Cloud::Alibaba
    } else if key.starts_with("AKID") {
        Cloud::Tencent
    } else {
        Cloud::Aws
    }
}

/// What a replay did.
#[derive(Debug, Default)]
pub struct Summary {
    pub files: usize,
    pub events: u64,
    pub rejected: u64,
    pub alarms: Vec<Alarm>,
    pub risks: Vec<Risk>,
    pub notifications: u64,
    /// The inventory batch the run filled, when the setup asked for one.
    pub inventory: Option<crate::inventory::Batch>,
    /// Engine shards the run detected on (1: the caller's thread only).
    pub shards: usize,
}

/// Runs the pipeline over the inputs. `on_alarm` gets every notification (created and
/// updates, then the final updates), `on_reject` every record that could not be decoded.
pub fn run(
    setup: &mut Setup,
    inputs: &[String],
    provider: Option<Cloud>,
    on_alarm: &mut dyn FnMut(&Alarm),
    on_reject: &mut dyn FnMut(Rejected<'_>),
) -> Result<Summary, String> {
    let expanded = expand(inputs).map_err(|e| e.to_string())?;
    let decoder = Decoder::pinned(provider);
    let mut summary = Summary {
        files: expanded.inputs.len(),
        shards: 1,
        ..Summary::default()
    };
    // The pipeline after decode; what the reports and leak feeds raise before any call.
    let mut risks_now: Vec<Risk> = setup
        .reports
        .latest()
        .iter()
        .flat_map(|s| risks(s, report_time(s)))
        .collect();
    risks_now.extend(setup.enricher.permissions.risks());
    let mut pipeline = Pipeline::new(std::mem::take(&mut setup.enricher));
    pipeline.inventory = setup.inventory.take().map(std::sync::Mutex::new);
    let record = |pipeline: &Pipeline, alarm: &Alarm| {
        if let Some(inv) = &pipeline.inventory
            && let Ok(mut b) = inv.lock()
        {
            b.alarm(alarm);
        }
    };
    for output in pipeline.start(&risks_now) {
        match output {
            Output::Alarm(alarm) => {
                summary.notifications += 1;
                record(&pipeline, &alarm);
                on_alarm(&alarm);
                summary.alarms.push(*alarm);
            }
            Output::Risk(risk) => summary.risks.push(*risk),
        }
    }
    let batch_rows = setup.inventory_batch_rows.max(1);
    // A full batch goes to the sink (`replay --store`): bounded memory on any input. A store
    // that fails is the run's error, not a record's; once it failed, batches are dropped (memory
    // stays bounded; the run fails).
    let sink = std::cell::RefCell::new((setup.inventory_sink.take(), None::<String>));
    let to_sink = |batch: crate::inventory::Batch| {
        let mut s = sink.borrow_mut();
        let (sink, error) = &mut *s;
        if let Some(f) = sink.as_mut()
            && error.is_none()
        {
            *error = f(batch).err();
        }
    };
    let has_sink = sink.borrow().0.is_some();
    // The caller's batch (alarms; every row with one thread) handed on when full.
    let flush_full = |pipeline: &Pipeline| {
        if has_sink
            && let Some(inv) = &pipeline.inventory
            && let Ok(mut b) = inv.lock()
            && b.len() >= batch_rows
        {
            let batch = std::mem::take(&mut *b);
            drop(b);
            to_sink(batch);
        }
    };
    if setup.threads > 1 {
        let counting = pipeline.inventory.is_some();
        let mut on_batch = |batch| to_sink(batch);
        // Each shard hands its batch on at its share of the rows, so the shards together hold
        // what one batch would: memory does not grow with the thread count.
        let shard_rows = batch_rows.div_ceil(setup.threads);
        let inventory = counting.then(|| parallel::Inventory {
            rows: has_sink.then_some(shard_rows),
            on_batch: &mut on_batch,
        });
        let mut alarm = |a: &Alarm| {
            record(&pipeline, a);
            flush_full(&pipeline);
            on_alarm(a);
        };
        let result = run_parallel(
            setup,
            &pipeline,
            &expanded.inputs,
            &decoder,
            inventory,
            &mut alarm,
            on_reject,
        );
        match result {
            Err(e) => {
                setup.enricher = pipeline.enricher;
                return Err(e);
            }
            Ok(counts) => {
                summary.shards = setup.threads;
                summary.events = counts.events;
                summary.rejected = counts.rejected;
                summary.notifications += counts.notifications;
                summary.alarms.extend(counts.alarms);
                setup.engine.stats.add(&counts.stats);
                if let Some(inv) = &pipeline.inventory
                    && let Ok(mut b) = inv.lock()
                {
                    for shard in counts.inventory {
                        b.absorb_older(shard);
                    }
                }
            }
        }
    } else {
        let engine = &mut setup.engine;
        for input in &expanded.inputs {
            let counts = read_input_counted(
                input,
                &decoder,
                FrameOptions::default(),
                setup.progress.as_ref(),
                &mut |event| {
                    for alarm in pipeline.event(engine, &event)? {
                        summary.notifications += 1;
                        record(&pipeline, &alarm);
                        on_alarm(&alarm);
                    }
                    flush_full(&pipeline);
                    Ok(())
                },
                on_reject,
            );
            summary.events += counts.events;
            summary.rejected += counts.rejected;
        }
        for alarm in engine.flush() {
            summary.notifications += 1;
            record(&pipeline, &alarm);
            on_alarm(&alarm);
        }
        summary.alarms.extend(engine.take_alarms());
    }
    if let Some(e) = sink.into_inner().1 {
        setup.enricher = pipeline.enricher;
        return Err(format!("the inventory store: {e}"));
    }
    summary.inventory = pipeline
        .inventory
        .take()
        .map(|m| m.into_inner().unwrap_or_else(|p| p.into_inner()));
    // The reports' risks, the whole current set (the store marks those not in it fixed).
    if let Some(b) = summary.inventory.as_mut() {
        b.set_risks(summary.risks.clone());
        b.set_principals(crate::inventory::principal_rows(&setup.reports.latest()));
    }
    setup.enricher = pipeline.enricher;
    Ok(summary)
}

/// [`run`] on `setup.threads` threads: as many engine shards, built like `setup.engine` (its
/// rules and policy, its caps divided among them).
fn run_parallel(
    setup: &Setup,
    pipeline: &Pipeline,
    inputs: &[crate::source::Input],
    decoder: &Decoder,
    inventory: Option<parallel::Inventory<'_>>,
    on_alarm: &mut dyn FnMut(&Alarm),
    on_reject: &mut dyn FnMut(Rejected<'_>),
) -> Result<parallel::Counts, String> {
    let n = u32::try_from(setup.threads).unwrap_or(u32::MAX);
    let limits = setup.engine.limits().per_partition(n);
    let mut engines = Vec::new();
    for _ in 0..n {
        let mut engine =
            Engine::new(&setup.rules, setup.engine.policy.clone()).map_err(|e| e.join("; "))?;
        engine.set_limits(limits);
        engine.set_geo(pipeline.enricher.geo.clone());
        engines.push(engine);
    }
    parallel::run(
        inputs,
        setup.progress.as_ref(),
        decoder,
        &pipeline.enricher,
        engines,
        setup.threads,
        inventory,
        on_alarm,
        on_reject,
    )
}
