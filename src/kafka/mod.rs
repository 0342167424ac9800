//! `akwatch run`: the pipeline on Kafka. At-least-once: an input offset is stored for commit only
//! after every alarm (and dead-letter record) derived from it has been acknowledged by the broker
//! (`acks=all`, idempotent producer); offsets are committed with each state checkpoint (every
//! `commit_interval_seconds`, after a rebalance and at shutdown), or on that schedule alone
//! without a state directory, and at the revocation of a partition.

pub mod changelog;
pub mod deliver;
pub mod detect;
mod group;
mod ingest;
pub mod merge;
pub mod reload;
pub mod repartition;
mod reports;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use deliver::{Abandoned, Outputs, PRODUCE_TIMEOUT, Stop};
use group::{GroupConsumer, GroupContext, Progress, write_checkpoint};
use ingest::{Ingest, IngestSetup, Written};

use rdkafka::ClientConfig;
use rdkafka::consumer::Consumer;
use rdkafka::producer::{FutureProducer, FutureRecord};

use crate::config::Config;
use crate::engine::Engine;
use crate::event::Origin;
use crate::pipeline::Pipeline;
use crate::provider::Decoder;
use crate::replay::{Setup, setup};

fn client_config(config: &Config) -> ClientConfig {
    client_config_over(config, &[])
}

/// The brokers and the user's options over `defaults`.
fn client_config_over(config: &Config, defaults: &[(&str, &str)]) -> ClientConfig {
    let mut c = ClientConfig::new();
    for (k, v) in defaults {
        c.set(*k, *v);
    }
    c.set("bootstrap.servers", &config.brokers);
    for (k, v) in &config.options {
        c.set(k, v);
    }
    c
}

/// The consume loops' fetch settings, unless the user's options say otherwise. The event-time
/// merge pauses a partition whose queue is full and waits for a partition whose queue is
/// empty; with librdkafka's defaults such a partition's next fetch could be postponed for up
/// to a second (`fetch.queue.backoff.ms`, after the local queue's thresholds were passed) and
/// then held by the broker for up to half a second (`fetch.wait.max.ms`), and the whole loop
/// stood idle meanwhile: 0.3-0.5 s stalls, a third of a backlog's time (benches/README.md).
/// The cost: an idle consumer asks each broker ten times a second instead of twice.
const CONSUMER_DEFAULTS: [(&str, &str); 2] = [
    ("fetch.wait.max.ms", "100"),
    ("fetch.queue.backoff.ms", "10"),
];

/// Sets [`CONSUMER_DEFAULTS`] where the user's options have not.
pub(crate) fn consumer_defaults(c: &mut ClientConfig) -> &mut ClientConfig {
    for (k, v) in CONSUMER_DEFAULTS {
        if c.get(k).is_none() {
            c.set(k, v);
        }
    }
    c
}

/// Hands the pipeline's own outputs (leak alarms, risks) to the sinks.
pub(crate) async fn emit_all(
    outputs: Vec<crate::pipeline::Output>,
    out: &Outputs<'_>,
    risk_topic: Option<&str>,
) -> Result<(), Abandoned> {
    for o in &outputs {
        out.emit(o, risk_topic).await?;
    }
    Ok(())
}

/// Runs the service until SIGTERM / Ctrl-C: then stops consuming, notifies pending alarm
/// updates, flushes the producer and commits. The stages: [`start`] (configuration, clients,
/// reports, internal topics), the [`ingest`] loop on this task, the [`detect`] loop on a task
/// of its own (scale-out), then [`shutdown`].
pub async fn run(config: Config) -> anyhow::Result<()> {
    crate::isolate::install_panic_hook();
    let stop = stop_on_signal(config.shutdown_grace);
    let Some((mut svc, s)) = start(&config, &stop).await? else {
        return Ok(());
    };
    let Setup {
        enricher,
        engine,
        rules,
        ..
    } = s;
    let lateness = engine.policy.allowed_lateness.secs();
    let (producer, metrics) = (svc.producer.clone(), svc.metrics.clone());
    let notifier = match config.notify.is_empty() {
        true => None,
        false => Some(crate::notify::Notifier::start(
            &config.notify,
            crate::notify::NotifyMetrics::of(&metrics),
        )?),
    };
    let out = Outputs {
        producer: &producer,
        alarm_topic: &config.alarm_topic,
        alarm_format: config.alarm_format,
        dlq_topic: &config.dlq_topic,
        max_bytes: config
            .options
            .get("message.max.bytes")
            .and_then(|v| v.parse().ok())
            .unwrap_or(deliver::DEFAULT_MAX_MESSAGE_BYTES),
        stop: stop.clone(),
        metrics: &metrics,
        notify: notifier.clone(),
    };
    let labels: HashMap<String, &'static str> = config
        .inputs
        .iter()
        // Topics of one configured cloud; an auto-detected topic's records are labelled with the
        // cloud they decode as.
        .filter_map(|i| Some((i.topic.clone(), i.provider?.as_str())))
        .collect();
    // The pipeline after decode: on the ingest task (one instance), or on the detection task
    // (scale-out), which then also follows the reports.
    let mut pipeline = Box::new(Pipeline::new(enricher));
    let scale_out = svc.scale.is_some();
    let detect_alive = Arc::new(AtomicBool::new(scale_out));
    svc.metrics
        .detect_expected
        .store(scale_out, Ordering::Relaxed);
    let mut start_outputs = Vec::new();
    let (next, reports, detect_task) = match svc.scale.take() {
        Some((writer, consumer, changelog)) => {
            let task = spawn_detect(
                &config,
                producer.clone(),
                metrics.clone(),
                lateness,
                DetectParts {
                    consumer,
                    changelog,
                    pipeline,
                    reports: svc.reports_rx.take(),
                    reload: svc.reload_rx.take(),
                    risks: std::mem::take(&mut svc.start_risks),
                    principals: std::mem::take(&mut svc.start_principals),
                    labels: labels.clone(),
                    alive: AliveGuard(detect_alive.clone()),
                    max_bytes: out.max_bytes,
                    notify: notifier.clone(),
                    stop: stop.clone(),
                    policy_sync: match (&svc.inventory, api_policy_dir(&config)) {
                        (Some((store, revision)), Some(write_dir)) => Some(detect::PolicySync {
                            store: store.clone(),
                            dirs: config.pipeline_options().policies,
                            write_dir,
                            rules: rules.clone(),
                            revision: *revision,
                            swapped: false,
                        }),
                        _ => None,
                    },
                    inventory: svc.inventory.take().map(|(store, _)| detect::Inventory {
                        store,
                        group: config.group_id.clone(),
                        owner: format!(
                            "{}:{}",
                            std::env::var("HOSTNAME").unwrap_or_else(|_| "akwatch".into()),
                            std::process::id()
                        ),
                        max_pending_rows: config
                            .inventory
                            .as_ref()
                            .map_or(2_000_000, |i| i.max_pending_rows),
                    }),
                },
            );
            (ingest::Next::Repartition(writer), None, Some(task))
        }
        None => {
            // The leaks and risks known before any call (deterministic ids: re-sent on restart,
            // harmless); later, what a new credential report brings. A stop before they are
            // out: they are sent again at the next start. (Scale-out: the detection task sends
            // them.)
            start_outputs = pipeline.start(&svc.start_risks);
            let state_dir = config.state_dir.clone();
            let next = ingest::Next::Local {
                pipeline,
                state_dir,
            };
            (next, svc.reports_rx.take(), None)
        }
    };
    let topics: Vec<&str> = config.inputs.iter().map(|i| i.topic.as_str()).collect();
    svc.consumer.subscribe(&topics)?;
    svc.metrics.ready.store(true, Ordering::Relaxed);
    tracing::info!(brokers = %config.brokers, topics = ?topics, group = %config.group_id, "akwatch run: consuming");
    let mut ingest = Ingest::new(IngestSetup {
        consumer: svc.consumer.clone(),
        progress: svc.progress.clone(),
        metrics: svc.metrics.clone(),
        out: &out,
        stop: stop.clone(),
        next,
        engine,
        reports,
        // One instance: this loop takes the reloads (scale-out: the detection task took them).
        reload: svc.reload_rx.take(),
        risk_topic: config.risk_topic.clone(),
        labels,
        decoders: config
            .inputs
            .iter()
            .map(|i| {
                let decoder = Decoder::pinned(i.provider).with_max_skew(config.max_event_skew_secs);
                (i.topic.clone(), decoder)
            })
            .collect(),
        fallback: Decoder::auto().with_max_skew(config.max_event_skew_secs),
        merge: merge::Merge::new(
            config.merge_queue_records,
            config.partition_idle_timeout,
            lateness,
        ),
        watermarks: Arc::new(client_config(&config).create_with_context(Logged)?),
        commit_interval: config.commit_interval,
        detect_alive,
    });
    ingest.abandoned = emit_all(start_outputs, &out, config.risk_topic.as_deref())
        .await
        .is_err();
    ingest.run().await;
    let detect_end = match detect_task {
        Some(task) => tokio::time::timeout(stop.remaining(Duration::from_secs(60)), task)
            .await
            .ok()
            .and_then(Result::ok)
            .flatten(),
        None => None,
    };
    if let Some(n) = &notifier {
        // Queued notifications get a short grace period, within the stop's.
        n.drain(stop.remaining(NOTIFY_DRAIN)).await;
    }
    shutdown(&config, svc, ingest, detect_end, &stop).await
}

/// What [`start`] sets up: the loaded configuration, the clients, the report follower.
struct Service {
    progress: Arc<Progress>,
    consumer: Arc<GroupConsumer>,
    producer: FutureProducer<Logged>,
    metrics: Arc<crate::telemetry::Metrics>,
    /// The configuration risks of the reports in use at start, and their principals.
    start_risks: Vec<crate::risk::Risk>,
    start_principals: Vec<crate::inventory::PrincipalRow>,
    reports_rx: Option<tokio::sync::mpsc::Receiver<reports::ReportUpdate>>,
    reports_thread: std::thread::JoinHandle<()>,
    /// Also stops the reload thread.
    stop_reports: Arc<AtomicBool>,
    /// Reloaded rules, policies, lists and leak feeds (`reload_rescan_seconds`), and their
    /// watcher's thread.
    reload_rx: Option<tokio::sync::mpsc::Receiver<reload::Reload>>,
    reload_thread: Option<std::thread::JoinHandle<()>>,
    /// The inventory's store (issue 11) and the policy revision at start, when configured; its
    /// API is already serving.
    inventory: Option<(crate::inventory::Store, i64)>,
    /// Scale-out: the repartition writer, the detection consumer, the changelog writer.
    scale: Option<(
        repartition::Writer<Written>,
        detect::DetectConsumer,
        changelog::ChangelogWriter,
    )>,
}

/// Loads the configuration (every problem reported at once), creates the clients, restores
/// the checkpoint (one instance with a state directory), starts the ops server and the broker
/// probe, reads the report topic to its end, and (scale-out) creates the internal topics.
/// `None`: stopped meanwhile.
async fn start(config: &Config, stop: &Stop) -> anyhow::Result<Option<(Service, Setup)>> {
    // The inventory's store first: the API's policy files are rendered from it before the
    // policy is loaded.
    let inventory = match &config.inventory {
        Some(inv) => Some(open_inventory(config, inv).await?),
        None => None,
    };
    let options = config.pipeline_options();
    let mut s: Setup = setup(&options).map_err(|errors| {
        for e in &errors {
            eprintln!("error: {e}");
        }
        anyhow::anyhow!("{} problem(s) at start-up", errors.len())
    })?;
    s.engine.set_limits(config.limits);
    for w in &s.warnings {
        tracing::warn!("{w}");
    }
    let metrics = crate::telemetry::Metrics::new()?;
    metrics
        .state_max_keys
        .set(i64::try_from(config.state_max_keys).unwrap_or(i64::MAX));
    metrics.describe_rules(&s.rules);
    let progress = Arc::new(Progress::default());
    let consumer: Arc<GroupConsumer> = Arc::new(
        consumer_defaults(&mut client_config(config))
            .set("group.id", &config.group_id)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            // Caught-up partitions are idle for the event-time merge.
            .set("enable.partition.eof", "true")
            .create_with_context(GroupContext {
                progress: progress.clone(),
                metrics: metrics.clone(),
                cooperative: config
                    .options
                    .get("partition.assignment.strategy")
                    .is_some_and(|s| s.contains("cooperative")),
            })?,
    );
    // A round's deliveries are awaited at its end, and a round may hold one alarm: no
    // lingering for a batch (the user's options may still set it).
    let producer: FutureProducer<Logged> = client_config_over(config, &[("linger.ms", "0")])
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .set(
            "message.timeout.ms",
            PRODUCE_TIMEOUT.as_millis().to_string(),
        )
        .create_with_context(Logged)?;
    // Restore the last checkpoint: the engine's state, and the offsets it reflects. Messages
    // before those offsets (delivered again because the group's commit lagged the checkpoint, or
    // after a rebalance) are skipped: their effect is in the state already.
    let scale_out = config.repartition;
    if scale_out && config.state_dir.is_some() {
        tracing::info!(
            "state_dir is not used with kafka.repartition (state lives in the changelog topic)"
        );
    }
    if let Some(dir) = config.state_dir.as_ref().filter(|_| !scale_out) {
        match crate::checkpoint::read(dir) {
            Ok(Some(cp)) => {
                let same_rules = s.engine.restore(cp.engine);
                progress.restore(&cp.offsets);
                tracing::info!(written_at = %cp.written_at, partitions = cp.offsets.len(), same_rules, "restored the checkpoint");
            }
            Ok(None) => {
                tracing::info!(dir = %dir.display(), "no checkpoint: starting with empty state")
            }
            Err(e) => tracing::warn!("cannot read the checkpoint, starting with empty state: {e}"),
        }
    }
    if let Some(addr) = &config.ops_addr {
        crate::telemetry::start(addr, metrics.clone()).await?;
    }
    let inventory = match (&config.inventory, inventory) {
        (Some(inv), Some((store, revision))) => {
            serve_inventory(config, inv, &store, stop, &metrics).await?;
            Some((store, revision))
        }
        _ => None,
    };
    // The probe has a client (and so connections) of its own: on the consumer's, a metadata
    // request waits behind the consumer's fetch and an idle service looked unreachable.
    let (alive, probe_topic) = (
        Arc::downgrade(&consumer),
        config.inputs.first().map(|i| i.topic.clone()),
    );
    let probe: rdkafka::consumer::BaseConsumer<Logged> =
        client_config(config).create_with_context(Logged)?;
    crate::telemetry::watch_broker(metrics.clone(), move |wait| {
        alive.upgrade()?;
        Some(
            probe
                .fetch_metadata(probe_topic.as_deref(), wait)
                .map(drop)
                .map_err(|e| e.to_string()),
        )
    })?;
    // Credential reports: the files were read by `setup`; the topic is read to its end before
    // the first event, then both are followed on a thread of their own.
    let reports_group = format!("{}-reports", config.group_id);
    let mut start_risks = reports::current_risks(&s.reports.latest());
    let mut start_principals = crate::inventory::principal_rows(&s.reports.latest());
    let mut follower = reports::Follower::new(
        std::mem::take(&mut s.reports),
        config
            .report_topic
            .as_deref()
            .map(|t| (client_config(config), reports_group.as_str(), t)),
        config.reports_rescan,
        metrics.clone(),
    )?;
    let stop_reports = Arc::new(AtomicBool::new(false));
    let stop_bootstrap = stop_reports.clone();
    let bootstrap = tokio::task::spawn_blocking(move || {
        let first =
            crate::isolate::guard(|| follower.bootstrap(&stop_bootstrap)).unwrap_or_else(|e| {
                tracing::error!(
                    "reading the report topic failed; reports follow as they arrive: {e}"
                );
                None
            });
        (follower, first)
    });
    let (follower, first) = tokio::select! {
        _ = stop.signalled() => {
            tracing::info!("stopped while reading the report topic");
            stop_reports.store(true, Ordering::Relaxed);
            return Ok(None);
        }
        done = bootstrap => done?,
    };
    if let Some(u) = first {
        s.enricher.reports = u.index;
        start_risks = u.risks;
        start_principals = u.principals;
    }
    start_risks.extend(s.enricher.permissions.risks());
    // Rules, policies, lists and leak feeds: watched from the versions loaded at start.
    for w in reload::What::ALL {
        metrics.config_reloaded(w.as_str(), true, false);
    }
    let (reload_rx, reload_thread) = match config.reload_rescan {
        Some(rescan) => {
            let reloader = reload::Reloader::new(
                reload::Sources::of(&options),
                s.rules.clone(),
                s.engine.policy.clone(),
                rescan,
                metrics.clone(),
            );
            let (tx, rx) = tokio::sync::mpsc::channel(2);
            let stop = stop_reports.clone();
            let thread = std::thread::Builder::new()
                .name("akwatch-reload".to_owned())
                .spawn(move || reloader.run(tx, stop))?;
            (Some(rx), Some(thread))
        }
        None => (None, None),
    };
    let (reports_tx, reports_rx) = tokio::sync::mpsc::channel(2);
    let reports_thread = {
        let stop = stop_reports.clone();
        std::thread::Builder::new()
            .name("akwatch-reports".to_owned())
            .spawn(move || follower.run(reports_tx, stop))?
    };
    // Scale-out: the internal topics, the detection consumer, the repartition and changelog
    // writers.
    let scale = if scale_out {
        let Some(scale) = scale_out_setup(config, &s, &metrics, stop).await? else {
            return Ok(None);
        };
        let producer = scale.0.producer().clone();
        progress.set_flush(Box::new(move |limit| {
            use rdkafka::producer::Producer;
            producer.flush(limit).is_ok()
        }));
        Some(scale)
    } else {
        None
    };
    Ok(Some((
        Service {
            progress,
            consumer,
            producer,
            metrics,
            start_risks,
            start_principals,
            reports_rx: Some(reports_rx),
            reports_thread,
            stop_reports,
            reload_rx,
            reload_thread,
            inventory,
            scale,
        },
        s,
    )))
}

/// The policy directory the API's files go to: `inventory.api.policies_dir`, else the first
/// policy directory — on every instance with an inventory, whether it serves the API or not
/// (each renders the store's entries into its own directory and applies them).
fn api_policy_dir(config: &Config) -> Option<std::path::PathBuf> {
    let inv = config.inventory.as_ref()?;
    inv.api
        .as_ref()
        .and_then(|a| a.policies_dir.clone())
        .or_else(|| config.pipeline_options().policies.first().cloned())
}

/// Opens the inventory's store (its migrations run) and renders the API's policy files from it
/// (changes made while this instance was away); returns the store and the policy revision.
async fn open_inventory(
    config: &Config,
    inv: &crate::config::InventoryConfig,
) -> anyhow::Result<(crate::inventory::Store, i64)> {
    use anyhow::Context as _;
    let store = crate::inventory::Store::open(&inv.store)
        .await
        .context("the inventory store")?;
    let revision = crate::policy_store::revision(&store).await?;
    if let Some(dir) = api_policy_dir(config) {
        // The API's directory exists from the start, entries or not (a policy directory that
        // does not exist is a configuration error).
        std::fs::create_dir_all(&dir).with_context(|| {
            format!("cannot create the API's policy directory {}", dir.display())
        })?;
        crate::policy_store::write_files(&store, &dir).await?;
    }
    Ok((store, revision))
}

/// Starts the inventory's API when configured and the hourly purge of call rollups past the
/// retention.
async fn serve_inventory(
    config: &Config,
    inv: &crate::config::InventoryConfig,
    store: &crate::inventory::Store,
    stop: &Stop,
    metrics: &crate::telemetry::Metrics,
) -> anyhow::Result<()> {
    use anyhow::Context as _;
    let store = store.clone();
    if let Some(api) = &inv.api {
        let tokens = crate::api::load_tokens(api.tokens.as_deref(), api.listen)?;
        let dirs = config.pipeline_options().policies;
        let dir = api_policy_dir(config);
        let policies = match dir {
            Some(dir) => {
                let rules = crate::rule::RuleSet::load(&config.rules).map_err(|e| {
                    anyhow::anyhow!("the rules in {}: {}", config.rules.display(), e.join("; "))
                })?;
                Some(crate::api::PolicyFiles::open_among(dir, dirs, rules)?)
            }
            None => None,
        };
        let state = Arc::new(crate::api::ApiState {
            store: store.clone(),
            tokens,
            policies,
        });
        let listener = tokio::net::TcpListener::bind(api.listen)
            .await
            .with_context(|| format!("cannot listen on {} (inventory.api.listen)", api.listen))?;
        tracing::info!(listen = %api.listen, "serving the inventory API");
        let stopping = stop.clone();
        let app = crate::console::app(state, metrics.console_sessions_evicted.clone());
        tokio::spawn(async move {
            let served = axum::serve(listener, app)
                .with_graceful_shutdown(async move { stopping.signalled().await })
                .await;
            if let Err(e) = served {
                tracing::error!(error = %e, "the inventory API stopped");
            }
        });
    }
    let (purging, retention, stopping) = (store.clone(), inv.retention_days, stop.clone());
    let capped = metrics.inventory_capped.clone();
    tokio::spawn(async move {
        let mut hourly = tokio::time::interval(Duration::from_secs(3600));
        loop {
            tokio::select! {
                _ = stopping.signalled() => break,
                _ = hourly.tick() => {
                    match purging.purge_older_than_days(retention).await {
                        Ok(n) if n > 0 => tracing::info!(rows = n, retention_days = retention, "inventory: call rollups past the retention purged"),
                        Ok(_) => {}
                        Err(e) => tracing::warn!(error = %format!("{e:#}"), "inventory: purge failed"),
                    }
                    match purging.cap_per_key(crate::inventory::MAX_PER_KEY).await {
                        Ok(n) if n > 0 => {
                            capped.inc_by(n);
                            tracing::info!(rows = n, max = crate::inventory::MAX_PER_KEY, "inventory: source IPs / APIs past the per-key cap removed");
                        }
                        Ok(_) => {}
                        Err(e) => tracing::warn!(error = %format!("{e:#}"), "inventory: per-key cap failed"),
                    }
                }
            }
        }
    });
    Ok(())
}

/// What the detection task gets.
struct DetectParts {
    consumer: detect::DetectConsumer,
    changelog: changelog::ChangelogWriter,
    pipeline: Box<Pipeline>,
    reports: Option<tokio::sync::mpsc::Receiver<reports::ReportUpdate>>,
    reload: Option<tokio::sync::mpsc::Receiver<reload::Reload>>,
    risks: Vec<crate::risk::Risk>,
    principals: Vec<crate::inventory::PrincipalRow>,
    labels: HashMap<String, &'static str>,
    alive: AliveGuard,
    max_bytes: usize,
    notify: Option<Arc<crate::notify::Notifier>>,
    stop: Stop,
    inventory: Option<detect::Inventory>,
    policy_sync: Option<detect::PolicySync>,
}

/// The detection loop on a task of its own: the rebalance callbacks of either side block their
/// task (a restore from the changelog, a revocation's flush) and must not hold the other. If it
/// ends before the stop (a panic, say), its [`AliveGuard`] tells ingest, and the service stops
/// (exit 1) rather than go on reading input that nothing detects on.
fn spawn_detect(
    config: &Config,
    producer: FutureProducer<Logged>,
    metrics: Arc<crate::telemetry::Metrics>,
    lateness: i64,
    parts: DetectParts,
) -> tokio::task::JoinHandle<Option<detect::Ended>> {
    let (alarm_topic, dlq_topic) = (config.alarm_topic.clone(), config.dlq_topic.clone());
    let (commit_interval, queue_cap) = (config.commit_interval, config.detect_queue_events);
    let risk_topic = config.risk_topic.clone();
    let alarm_format = config.alarm_format;
    tokio::spawn(async move {
        let DetectParts {
            consumer,
            changelog,
            pipeline,
            reports,
            reload,
            risks,
            principals,
            labels,
            alive,
            max_bytes,
            notify,
            stop,
            inventory,
            policy_sync,
        } = parts;
        let _alive = alive;
        let out = Outputs {
            producer: &producer,
            alarm_topic: &alarm_topic,
            alarm_format,
            dlq_topic: &dlq_topic,
            max_bytes,
            stop: stop.clone(),
            metrics: &metrics,
            notify,
        };
        let ended = detect::Detect {
            consumer: &consumer,
            pipeline: *pipeline,
            changelog,
            out: &out,
            metrics: &metrics,
            stop: stop.clone(),
            commit_interval,
            queue_cap,
            reports: reports?,
            reload,
            reloaded: false,
            lateness,
            labels,
            risk_topic,
            risks,
            principals,
            inventory,
            policy_sync,
        }
        .run()
        .await;
        leave_group(&consumer, &stop, || consumer.context().rebalance_count()).await;
        Some(ended)
    })
}

/// The stop: pending alarm updates notified (one instance), the producer flushed, the state
/// saved (checkpoint) or the offsets committed — or, when deliveries were abandoned, the last
/// good checkpoint left standing — then the group left and the process ended.
async fn shutdown(
    config: &Config,
    svc: Service,
    mut ingest: Ingest<'_>,
    detect_end: Option<detect::Ended>,
    stop: &Stop,
) -> anyhow::Result<()> {
    let Service {
        progress,
        consumer,
        producer,
        reports_rx,
        reports_thread,
        stop_reports,
        reload_thread,
        ..
    } = svc;
    tracing::info!(
        grace = ?config.shutdown_grace,
        "shutting down: notifying pending alarm updates, flushing, committing"
    );
    stop_reports.store(true, Ordering::Relaxed);
    ingest.flush_alarms().await;
    use rdkafka::producer::Producer;
    if let Err(e) = producer.flush(stop.remaining(Duration::from_secs(30))) {
        tracing::warn!(error = %e, "producer flush");
    }
    ingest.checkpoint_written().await;
    let scale_out = config.repartition;
    let dir = config.state_dir.as_deref().filter(|_| !scale_out);
    let mut abandoned = ingest.abandoned;
    if abandoned {
        // The state now reflects records whose alarms or dead letters were not acknowledged:
        // saving it would lose them. The last checkpoint and its committed offsets stand; the
        // next start re-derives everything after them (same alarm ids).
        tracing::warn!(
            "deliveries not acknowledged within the shutdown grace period: the last checkpoint and committed offsets stand; the next start redoes the records after them"
        );
        match dir {
            // The positions run past the last checkpoint: no commit of them may land, not even
            // the revocation's when we leave the group.
            Some(_) => progress.forget_positions(),
            // No state to keep consistent: the positions are of acknowledged records only.
            None => progress.commit(&*consumer, None),
        }
    } else {
        let saved = match dir {
            Some(dir) => write_checkpoint(
                &consumer,
                &progress,
                &checkpoint(&progress, ingest.engine()),
                dir,
            ),
            None => {
                progress.commit(&*consumer, None);
                // Scale-out: the detection side wrote every partition's state (or not; or it
                // did not end in time).
                !scale_out || detect_end.as_ref().is_some_and(|d| d.saved)
            }
        };
        if saved {
            SAVED.store(true, Ordering::SeqCst);
        } else {
            // As when abandoned: the last good checkpoint and its offsets stand.
            progress.forget_positions();
            abandoned = true;
        }
    }
    drop(reports_rx);
    let joined = tokio::task::spawn_blocking(move || {
        let _ = reports_thread.join();
        reload_thread.map(std::thread::JoinHandle::join)
    });
    let _ = tokio::time::timeout(stop.remaining(Duration::from_secs(10)), joined).await;
    // Leave the group while polling normally, so the revocation runs like any other (a
    // revocation inside librdkafka's `close` can hang: librdkafka #4041 / #4884). Records that
    // arrive meanwhile are not processed and their offsets not committed.
    leave_group(&consumer, stop, || {
        progress.rebalances.load(Ordering::Relaxed)
    })
    .await;
    // State and offsets are saved: a close that still hangs must not keep the process.
    let close_limit = stop
        .remaining(Duration::from_secs(10))
        .max(Duration::from_secs(1));
    std::thread::spawn(move || {
        std::thread::sleep(close_limit);
        exit_soon(
            if SAVED.load(Ordering::SeqCst) { 0 } else { 1 },
            "the Kafka client did not close in time; exiting",
        );
    });
    let events = detect_end.map_or(ingest.engine().stats.events, |d| d.events);
    tracing::info!(events, "stopped");
    drop(ingest);
    if abandoned {
        // Exit 1: stopped without saving; the next start redoes what was not acknowledged.
        drop(consumer);
        exit_soon(
            1,
            "stopped without saving the state: the next start redoes the records after the last checkpoint",
        );
    }
    drop(consumer);
    Ok(())
}

/// The next credential report update, when this loop follows them.
async fn next_report(
    rx: &mut Option<tokio::sync::mpsc::Receiver<reports::ReportUpdate>>,
) -> Option<reports::ReportUpdate> {
    match rx.as_mut() {
        Some(r) => r.recv().await,
        None => std::future::pending().await,
    }
}

/// The internal topics, the detection consumer (subscribed) and the two writers.
/// `None`: stopped while waiting for the input topics.
async fn scale_out_setup(
    config: &Config,
    s: &Setup,
    metrics: &Arc<crate::telemetry::Metrics>,
    stop: &Stop,
) -> anyhow::Result<
    Option<(
        repartition::Writer<Written>,
        detect::DetectConsumer,
        changelog::ChangelogWriter,
    )>,
> {
    let client = client_config(config);
    repartition::ensure_topics(
        &client,
        &config.group_id,
        config.internal_partitions,
        config.internal_replication,
        i64::try_from(config.repartition_retention.as_millis()).unwrap_or(i64::MAX),
    )
    .await?;
    let names: Vec<String> = config.inputs.iter().map(|i| i.topic.clone()).collect();
    // The detection side waits for every input partition: the topics must exist first. A
    // missing one is one warning and `akwatch_input_topic_missing` until it is created.
    let sources = loop {
        let c = client.clone();
        let wanted = names.clone();
        let found = tokio::task::spawn_blocking(move || repartition::input_partitions(&c, &wanted))
            .await??;
        let mut missing = Vec::new();
        for topic in &names {
            let gauge = metrics
                .input_topic_missing
                .with_label_values(&[topic.as_str()]);
            let absent = !found.iter().any(|(t, _)| t == topic);
            if absent && gauge.get() == 0 {
                tracing::warn!(%topic, "input topic does not exist (yet): the service starts when it is created; akwatch_input_topic_missing is 1 meanwhile");
            } else if !absent && gauge.get() == 1 {
                tracing::info!(%topic, "input topic exists now");
            }
            gauge.set(i64::from(absent));
            if absent {
                missing.push(topic.as_str());
            }
        }
        if missing.is_empty() {
            break found;
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(5)) => {}
            _ = stop.signalled() => return Ok(None),
        }
    };
    let n = config.internal_partitions as u32;
    // Shared with the detection loop, which swaps in a policy changed through the API and
    // reloaded rules and policies (both under their locks, rules first: the closure below
    // never sees a pair that was not built together).
    let shared_rules = Arc::new(std::sync::RwLock::new(s.rules.clone()));
    let shared_policy = Arc::new(std::sync::RwLock::new(s.engine.policy.clone()));
    let (rules, policy) = (shared_rules.clone(), shared_policy.clone());
    let limits = config.limits.per_partition(n);
    let geo = s.enricher.geo.clone();
    // Built once here: the closure below cannot fail on the same rules and policy.
    Engine::new(&s.rules, s.engine.policy.clone())
        .map_err(|e| anyhow::anyhow!("the engine: {}", e.join("; ")))?;
    let factory = detect::PartFactory {
        rules: shared_rules,
        policy: shared_policy,
        engine: Box::new(move || {
            let rules = rules
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let current = policy
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .clone();
            // (Rules and a policy are swapped in only after an engine was built with them.)
            let mut e = Engine::new(&rules, current)
                .unwrap_or_else(|_| unreachable!("built before with the same rules and policy"));
            e.set_limits(limits);
            e.set_geo(geo.clone());
            e
        }),
        sources,
        idle_timeout: config.source_idle_timeout,
        lateness: s.engine.policy.allowed_lateness.secs(),
    };
    let cooperative = config
        .options
        .get("partition.assignment.strategy")
        .is_some_and(|s| s.contains("cooperative"));
    let consumer = detect::consumer(
        &client,
        &config.group_id,
        factory,
        cooperative,
        metrics.clone(),
    )?;
    consumer.subscribe(&[&repartition::repartition_topic(&config.group_id)])?;
    tracing::info!(
        partitions = n,
        repartition = %repartition::repartition_topic(&config.group_id),
        changelog = %repartition::changelog_topic(&config.group_id),
        "scale-out: events re-keyed by access key, state per partition"
    );
    Ok(Some((
        repartition::Writer::new(&client, &config.group_id, n)?,
        consumer,
        changelog::ChangelogWriter::new(&client, &config.group_id)?,
    )))
}

/// Leaves a consumer group while polling, so the revocation runs like any other.
async fn leave_group<C, F>(
    consumer: &rdkafka::consumer::StreamConsumer<C>,
    stop: &Stop,
    rebalances: F,
) where
    C: rdkafka::consumer::ConsumerContext + 'static,
    F: Fn() -> u64,
{
    let before = rebalances();
    if consumer.subscription().is_ok_and(|s| s.count() > 0) {
        consumer.unsubscribe();
        let until = Instant::now() + stop.remaining(Duration::from_secs(5));
        while rebalances() == before && Instant::now() < until {
            let _ = tokio::time::timeout(Duration::from_millis(200), consumer.recv()).await;
        }
    }
}

/// Clears its flag when dropped: at the end of the task that holds it, panic or not.
struct AliveGuard(Arc<AtomicBool>);

impl Drop for AliveGuard {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Relaxed);
    }
}

/// Whether the state and offsets were saved at shutdown (for the exit code of a forced exit).
static SAVED: AtomicBool = AtomicBool::new(false);

/// The longest the notification sinks' queues are drained at a stop.
const NOTIFY_DRAIN: Duration = Duration::from_secs(5);

/// The part of the grace period deliveries may use; the rest is for saving state and closing.
fn delivery_grace(grace: Duration) -> Duration {
    grace.saturating_sub((grace / 4).min(Duration::from_secs(5)))
}

/// Listens for SIGTERM / Ctrl-C: the first starts the grace period (deliveries give up at
/// `delivery_grace`, the process exits at `grace` whatever it is waiting for); a second exits
/// at once.
fn stop_on_signal(grace: Duration) -> Stop {
    let (handle, stop) = Stop::new();
    // On a thread and a runtime of their own: a consume task blocked in a synchronous call
    // (librdkafka's revocation commit during an outage, say) must not delay the stop.
    let (installed_tx, installed) = std::sync::mpsc::channel();
    let spawned = std::thread::Builder::new()
        .name("akwatch-signals".to_owned())
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    tracing::error!(error = %e, "cannot start the signal thread's runtime");
                    let _ = installed_tx.send(());
                    return;
                }
            };
            rt.block_on(async move {
                // Installed when called, not when first polled.
                let first = shutdown_signal();
                let _ = installed_tx.send(());
                first.await;
                // Before anything that could block (a log write to a full pipe, say).
                handle.stop(delivery_grace(grace));
                std::thread::spawn(move || {
                    std::thread::sleep(grace);
                    exit_soon(
                        if SAVED.load(Ordering::SeqCst) { 0 } else { 1 },
                        "the shutdown grace period is over; exiting (what was not acknowledged is redone at the next start)",
                    );
                });
                tracing::info!(?grace, "stop signal: finishing within the grace period");
                shutdown_signal().await;
                exit_soon(
                    130,
                    "second stop signal: exiting without finishing the shutdown",
                );
            });
        });
    match spawned {
        Ok(_) => {
            let _ = installed.recv();
        }
        Err(e) => tracing::error!(error = %e, "cannot start the signal thread"),
    }
    stop
}

/// Exits with `code` after trying to log `why` for at most 200 ms: a log that cannot be
/// written (stderr a full pipe) must not keep the process.
fn exit_soon(code: i32, why: &'static str) -> ! {
    std::thread::spawn(move || tracing::warn!("{why}"));
    std::thread::sleep(Duration::from_millis(200));
    std::process::exit(code)
}

pub(crate) fn observe_alarm_latency(
    metrics: &crate::telemetry::Metrics,
    event_time: chrono::DateTime<chrono::Utc>,
    ingested: Option<i64>,
) {
    let now = chrono::Utc::now();
    metrics
        .event_to_alarm_seconds
        .observe(((now - event_time).num_milliseconds().max(0) as f64) / 1000.0);
    if let Some(ms) = ingested {
        metrics
            .ingest_to_alarm_seconds
            .observe((now.timestamp_millis().saturating_sub(ms).max(0) as f64) / 1000.0);
    }
}

/// SIGTERM or Ctrl-C. The handlers are installed when this is called, not when first polled.
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    #[cfg(unix)]
    let term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate());
    async move {
        let ctrl_c = tokio::signal::ctrl_c();
        #[cfg(unix)]
        {
            let mut term = match term {
                Ok(t) => t,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
            tokio::select! {
                _ = ctrl_c => {},
                _ = term.recv() => {},
            }
        }
        #[cfg(not(unix))]
        {
            let _ = ctrl_c.await;
        }
    }
}

/// Takes a snapshot of the state and the offsets it reflects on the consume task, and writes it
/// and commits (or only commits, without a state directory) on a blocking thread, unless the
/// previous one is still at it (the next tick tries again). They never overlap, so they land in
/// order.
fn start_checkpoint(
    task: &mut Option<tokio::task::JoinHandle<()>>,
    consumer: &Arc<GroupConsumer>,
    progress: &Arc<Progress>,
    engine: &Engine,
    dir: Option<&std::path::Path>,
) -> bool {
    if task.as_ref().is_some_and(|t| !t.is_finished()) {
        return false;
    }
    let (consumer, progress) = (consumer.clone(), progress.clone());
    *task = Some(match dir {
        Some(dir) => {
            let cp = checkpoint(&progress, engine);
            let dir = dir.to_path_buf();
            tokio::task::spawn_blocking(move || {
                write_checkpoint(&consumer, &progress, &cp, &dir);
            })
        }
        None => tokio::task::spawn_blocking(move || progress.commit(&*consumer, None)),
    });
    true
}

fn checkpoint(progress: &Progress, engine: &Engine) -> crate::checkpoint::Checkpoint {
    crate::checkpoint::Checkpoint {
        version: crate::checkpoint::VERSION,
        written_at: chrono::Utc::now(),
        offsets: progress.checkpoint_offsets(),
        engine: engine.snapshot(),
    }
}

/// The engine's counters as last exported, to add only what changed since.
#[derive(Default)]
pub(crate) struct ExportedStats {
    allowlisted: std::collections::BTreeMap<String, u64>,
    superseded: std::collections::BTreeMap<String, u64>,
    ip_hidden_skips: u64,
    evicted_keys: u64,
    window_entries_summarised: u64,
    window_entries_dropped: u64,
    alarms_evicted: u64,
    alarms_evicted_per_key: u64,
    alarm_fields_truncated: u64,
    created_evicted: u64,
    created_expired: u64,
    quarantined_evicted: u64,
    quarantined_expired: u64,
}

impl ExportedStats {
    pub(crate) fn export(
        &mut self,
        stats: &crate::engine::Stats,
        metrics: &crate::telemetry::Metrics,
    ) {
        for (now, before, counter) in [
            (
                &stats.allowlisted,
                &mut self.allowlisted,
                &metrics.allowlisted,
            ),
            (&stats.superseded, &mut self.superseded, &metrics.superseded),
        ] {
            for (rule, n) in now {
                let was = before.insert(rule.clone(), *n).unwrap_or(0);
                counter
                    .with_label_values(&[rule.as_str()])
                    .inc_by(n.saturating_sub(was));
            }
        }
        metrics
            .ip_hidden_skips
            .inc_by(stats.ip_hidden_skips.saturating_sub(self.ip_hidden_skips));
        self.ip_hidden_skips = stats.ip_hidden_skips;
        metrics
            .state_evicted_keys
            .inc_by(stats.evicted_keys.saturating_sub(self.evicted_keys));
        self.evicted_keys = stats.evicted_keys;
        for (counter, now, before) in [
            (
                &metrics.window_entries_summarised,
                stats.window_entries_summarised,
                &mut self.window_entries_summarised,
            ),
            (
                &metrics.window_entries_dropped,
                stats.window_entries_dropped,
                &mut self.window_entries_dropped,
            ),
            (
                &metrics.alarms_evicted,
                stats.alarms_evicted,
                &mut self.alarms_evicted,
            ),
            (
                &metrics.alarms_evicted_per_key,
                stats.alarms_evicted_per_key,
                &mut self.alarms_evicted_per_key,
            ),
            (
                &metrics.alarm_fields_truncated,
                stats.alarm_fields_truncated,
                &mut self.alarm_fields_truncated,
            ),
            (
                &metrics.created_evicted,
                stats.created_evicted,
                &mut self.created_evicted,
            ),
            (
                &metrics.created_expired,
                stats.created_expired,
                &mut self.created_expired,
            ),
            (
                &metrics.quarantined_evicted,
                stats.quarantined_evicted,
                &mut self.quarantined_evicted,
            ),
            (
                &metrics.quarantined_expired,
                stats.quarantined_expired,
                &mut self.quarantined_expired,
            ),
        ] {
            counter.inc_by(now.saturating_sub(*before));
            *before = now;
        }
    }
}

/// Consumer lag per assigned input partition: its end minus our position (the committed offset
/// before the first fetch, the start of the partition without one). Partitions no longer
/// assigned lose their series; one whose end cannot be read now keeps its last value. The
/// requests go through `admin`, a client of its own: on the consumer's connection they would
/// wait behind its fetches. Also whether each input topic exists: a missing one is one warning
/// (and one line when it appears), and `akwatch_input_topic_missing` meanwhile.
fn update_lag(
    consumer: &GroupConsumer,
    admin: &rdkafka::consumer::BaseConsumer<Logged>,
    metrics: &crate::telemetry::Metrics,
    topics: &[String],
) {
    const WAIT: Duration = Duration::from_secs(5);
    check_topics(admin, metrics, topics);
    let Ok(positions) = consumer.position() else {
        return;
    };
    let unpositioned: rdkafka::TopicPartitionList = {
        let mut l = rdkafka::TopicPartitionList::new();
        for e in positions.elements() {
            if !matches!(e.offset(), rdkafka::Offset::Offset(_)) {
                l.add_partition(e.topic(), e.partition());
            }
        }
        l
    };
    let committed = if unpositioned.count() > 0 {
        consumer.committed_offsets(unpositioned, WAIT).ok()
    } else {
        None
    };
    let mut lags: Vec<(String, String, i64)> = Vec::new();
    for e in positions.elements() {
        let partition = e.partition().to_string();
        let Ok((low, high)) = admin.fetch_watermarks(e.topic(), e.partition(), WAIT) else {
            // Unknown now: the last value stays.
            let last = metrics
                .consumer_lag
                .get_metric_with_label_values(&[e.topic(), partition.as_str()])
                .map(|g| g.get())
                .unwrap_or(0);
            lags.push((e.topic().to_owned(), partition, last));
            continue;
        };
        let at = match e.offset() {
            rdkafka::Offset::Offset(o) => o,
            _ => committed
                .as_ref()
                .and_then(|c| c.find_partition(e.topic(), e.partition()))
                .and_then(|p| match p.offset() {
                    rdkafka::Offset::Offset(o) => Some(o),
                    _ => None,
                })
                .unwrap_or(low),
        };
        lags.push((
            e.topic().to_owned(),
            partition,
            high.saturating_sub(at).max(0),
        ));
    }
    metrics.consumer_lag.reset();
    for (topic, partition, lag) in lags {
        metrics
            .consumer_lag
            .with_label_values(&[topic.as_str(), partition.as_str()])
            .set(lag);
    }
}

/// Sets `akwatch_input_topic_missing` for each input topic from the cluster's metadata (not
/// when the broker cannot be asked: that is `akwatch_broker_up`'s business).
fn check_topics(
    admin: &rdkafka::consumer::BaseConsumer<Logged>,
    metrics: &crate::telemetry::Metrics,
    topics: &[String],
) {
    for topic in topics {
        let Ok(meta) = admin.fetch_metadata(Some(topic), Duration::from_secs(5)) else {
            continue;
        };
        let missing = meta
            .topics()
            .iter()
            .find(|t| t.name() == topic)
            .is_none_or(|t| t.error().is_some() || t.partitions().is_empty());
        let gauge = metrics
            .input_topic_missing
            .with_label_values(&[topic.as_str()]);
        match (gauge.get() == 1, missing) {
            (false, true) => tracing::warn!(
                %topic,
                "input topic does not exist (yet): nothing is read from it until it is created; akwatch_input_topic_missing is 1 meanwhile"
            ),
            (true, false) => tracing::info!(%topic, "input topic exists now"),
            _ => {}
        }
        gauge.set(i64::from(missing));
    }
}

/// The `event` label of `akwatch_rebalances_total`.
pub(crate) fn rebalance_event(err: rdkafka::types::RDKafkaRespErr) -> &'static str {
    use rdkafka::types::RDKafkaRespErr as E;
    match err {
        E::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => "assign",
        E::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => "revoke",
        _ => "error",
    }
}

/// A librdkafka client error. A missing topic is reported by the topic check (once, with a
/// gauge), so here it is debug; transport errors while the broker is away are the probe's
/// (`akwatch_broker_up`, `/readyz`) and are warnings; the rest are errors.
pub(crate) fn log_client_error(error: &rdkafka::error::KafkaError, reason: &str) {
    use rdkafka::error::{KafkaError, RDKafkaErrorCode as C};
    let code = error.rdkafka_error_code();
    if matches!(
        error,
        KafkaError::PartitionEOF(_) | KafkaError::Global(C::PartitionEOF)
    ) {
        tracing::trace!(target: "librdkafka", "{reason}");
    } else if matches!(
        code,
        Some(C::UnknownTopicOrPartition | C::UnknownTopic | C::UnknownPartition)
    ) {
        tracing::debug!(target: "librdkafka", "{error}: {reason}");
    } else if matches!(
        code,
        Some(
            C::BrokerTransportFailure
                | C::AllBrokersDown
                | C::Resolve
                | C::RequestTimedOut
                | C::OperationTimedOut
        )
    ) {
        // Every client reports an outage, several times a second: one line per 30 s per kind.
        if let Some(held) = log_allowed(&format!("{code:?}")) {
            tracing::warn!(target: "librdkafka", held_back = held, "{error}: {reason}");
        }
    } else {
        tracing::error!(target: "librdkafka", "{error}: {reason}");
    }
}

/// Whether a line of this kind may be written now: at most one per 30 s per kind (an outage
/// makes every client repeat the same line several times a second). Returns the number of lines
/// of the kind held back since the last one written. At most 256 kinds are tracked; past that
/// every line is written.
fn log_allowed(kind: &str) -> Option<u64> {
    use std::collections::hash_map::Entry;
    static SEEN: std::sync::Mutex<Option<HashMap<String, (Instant, u64)>>> =
        std::sync::Mutex::new(None);
    let mut seen = SEEN
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let seen = seen.get_or_insert_with(HashMap::new);
    let now = Instant::now();
    let len = seen.len();
    match seen.entry(kind.to_owned()) {
        Entry::Occupied(mut e) => {
            let (at, held) = e.get_mut();
            if now.duration_since(*at) >= Duration::from_secs(30) {
                let n = *held;
                *at = now;
                *held = 0;
                Some(n)
            } else {
                *held = held.saturating_add(1);
                None
            }
        }
        Entry::Vacant(e) => {
            if len < 256 {
                e.insert((now, 0));
            }
            Some(0)
        }
    }
}

/// librdkafka's log lines at the matching `tracing` level, under the target `librdkafka`.
/// Idle disconnects are debug; request timeouts and an unreachable broker, which every client
/// repeats, are one warning per 30 s per kind.
pub(crate) fn log_librdkafka(level: rdkafka::config::RDKafkaLogLevel, fac: &str, message: &str) {
    use rdkafka::config::RDKafkaLogLevel as L;
    // Idle connections closed by the broker (connections.max.idle.ms) are routine.
    let idle_noise = fac == "FAIL" && message.contains("Disconnected") && message.contains("idle");
    // Request timeouts are real (a slow or overloaded broker) but repeat per request.
    let repeated = fac == "REQTMOUT" || fac == "TIMEOUT";
    // A broker that cannot be reached: every client says so for every connection attempt. The
    // outage is `akwatch_broker_up` and `/readyz`; the log gets a warning per 30 s.
    let unreachable = fac == "FAIL"
        && (message.contains("Connection refused")
            || message.contains("Connect to")
            || message.contains("Disconnected"));
    match level {
        _ if idle_noise => tracing::debug!(target: "librdkafka", fac, "{message}"),
        _ if unreachable || repeated => {
            if let Some(held) = log_allowed(fac) {
                tracing::warn!(target: "librdkafka", fac, held_back = held, "{message}");
            }
        }
        L::Emerg | L::Alert | L::Critical | L::Error => {
            tracing::error!(target: "librdkafka", fac, "{message}")
        }
        L::Warning => tracing::warn!(target: "librdkafka", fac, "{message}"),
        L::Notice | L::Info => tracing::info!(target: "librdkafka", fac, "{message}"),
        L::Debug => tracing::debug!(target: "librdkafka", fac, "{message}"),
    }
}

/// The client context of the service's other clients (producers, watermark and metadata
/// clients): librdkafka's errors and logs mapped as the consumer's are.
#[derive(Clone, Copy, Default)]
pub struct Logged;

impl rdkafka::ClientContext for Logged {
    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        log_client_error(&error, reason);
    }

    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, log_message: &str) {
        log_librdkafka(level, fac, log_message);
    }
}

impl rdkafka::consumer::ConsumerContext for Logged {}

/// The load generator: every record of the inputs (framed as the file source frames them),
/// `repeat` times, to `topic` at `rate` records per second (0: unpaced). Each record is handed
/// to librdkafka when it is due (its Kafka timestamp is then), deliveries are awaited behind;
/// a full local queue is waited out, not dropped. Returns records sent and seconds taken.
pub async fn load(
    brokers: &str,
    topic: &str,
    rate: u64,
    repeat: u32,
    key_by: KeyBy,
    paths: &[String],
) -> anyhow::Result<(u64, f64)> {
    use rdkafka::error::{KafkaError, RDKafkaErrorCode};
    let records = crate::source::read_records(paths)?;
    let keys: Vec<Option<String>> = records
        .iter()
        .map(|r| match key_by {
            KeyBy::None => None,
            KeyBy::AccessKey => record_key(r),
        })
        .collect();
    let producer: FutureProducer<Logged> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("linger.ms", if rate == 0 { "20" } else { "1" })
        .set("compression.type", "lz4")
        .set("queue.buffering.max.messages", "1000000")
        .create_with_context(Logged)?;
    // A broker that cannot be reached is said at once, not after the delivery timeout.
    {
        use rdkafka::producer::Producer;
        tokio::task::block_in_place(|| {
            producer
                .client()
                .fetch_metadata(None, Duration::from_secs(10))
                .map(drop)
        })
        .map_err(|e| anyhow::anyhow!("cannot reach a broker at {brokers} within 10 s: {e}"))?;
    }
    let start = Instant::now();
    let mut sent: u64 = 0;
    let mut pending = std::collections::VecDeque::new();
    for _ in 0..repeat {
        for (r, key) in records.iter().zip(&keys) {
            if rate > 0 {
                // Sleep only when 1 ms or more ahead of schedule (timer granularity).
                let due = Duration::from_secs_f64(sent as f64 / rate as f64);
                if let Some(wait) = due.checked_sub(start.elapsed())
                    && wait >= Duration::from_millis(1)
                {
                    tokio::time::sleep(wait).await;
                }
            }
            let mut record = FutureRecord::<str, _>::to(topic).payload(r.as_slice());
            if let Some(k) = key {
                record = record.key(k.as_str());
            }
            loop {
                match producer.send_result(record) {
                    Ok(delivery) => {
                        pending.push_back(delivery);
                        break;
                    }
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                        record = back;
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                    Err((e, _)) => anyhow::bail!("produce: {e}"),
                }
            }
            sent += 1;
            // Collect the acknowledgements that are in (waiting only when too many are out).
            loop {
                let full = pending.len() > 50_000;
                let Some(front) = pending.front_mut() else {
                    break;
                };
                let done = if full {
                    Some(front.await)
                } else {
                    poll_once(front)
                };
                let Some(done) = done else { break };
                pending.pop_front();
                match done {
                    Ok(Ok(_)) => {}
                    Ok(Err((e, _))) => anyhow::bail!("produce: {e}"),
                    Err(_) => anyhow::bail!("produce: cancelled"),
                }
            }
        }
    }
    for f in pending {
        match f.await {
            Ok(Ok(_)) => {}
            Ok(Err((e, _))) => anyhow::bail!("produce: {e}"),
            Err(_) => anyhow::bail!("produce: cancelled"),
        }
    }
    Ok((sent, start.elapsed().as_secs_f64()))
}

/// How `akwatch load` keys its records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum KeyBy {
    /// No key: librdkafka spreads the records over the partitions, as forwarders do.
    None,
    /// The access key of the record's first event (its principal when it has none).
    AccessKey,
}

/// The access key (else the principal's ARN, id or name) of a record's first event.
fn record_key(record: &[u8]) -> Option<String> {
    let mut out = Vec::new();
    Decoder::auto().decode(record, &Origin::default(), &mut out);
    let event = out.into_iter().find_map(Result::ok)?;
    event.access_key_id.map(|k| k.0).or_else(|| {
        let p = event.principal;
        p.arn.or(p.id).or(p.name)
    })
}

/// Polls a future once without blocking: `Some` if it is ready.
pub(crate) fn poll_once<F: std::future::Future + Unpin>(f: &mut F) -> Option<F::Output> {
    let waker = std::task::Waker::noop();
    let mut cx = std::task::Context::from_waker(waker);
    match std::pin::Pin::new(f).poll(&mut cx) {
        std::task::Poll::Ready(v) => Some(v),
        std::task::Poll::Pending => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::mocking::MockCluster;

    /// An outage's repeated lines: the first of a kind is written, the next ones within 30 s
    /// are held back (and counted); another kind is not held back by it.
    #[test]
    fn repeated_outage_lines_are_held_back_per_kind() {
        assert_eq!(log_allowed("test-kind-a"), Some(0));
        for _ in 0..50 {
            assert_eq!(log_allowed("test-kind-a"), None);
        }
        assert_eq!(log_allowed("test-kind-b"), Some(0));
        assert_eq!(
            rebalance_event(rdkafka::types::RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS),
            "assign"
        );
        assert_eq!(
            rebalance_event(rdkafka::types::RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS),
            "revoke"
        );
    }

    /// librdkafka's in-process mock broker goes down before an alarm is produced and comes back
    /// 3 s later: the delivery is retried (librdkafka gives up on each attempt after 1 s here)
    /// and lands; nothing is dropped.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_delivery_is_retried_through_a_broker_outage_and_lands() {
        let cluster = MockCluster::new(1).unwrap();
        cluster.create_topic("alarms", 1, 1).unwrap();
        let producer: FutureProducer<Logged> = ClientConfig::new()
            .set("bootstrap.servers", cluster.bootstrap_servers())
            .set("acks", "all")
            .set("enable.idempotence", "true")
            .set("message.timeout.ms", "1000")
            .set("linger.ms", "0")
            .create_with_context(Logged)
            .unwrap();
        cluster.broker_down(-1).unwrap();
        let started = Instant::now();
        let (attempts, ()) = tokio::join!(
            async {
                let (_handle, stop) = Stop::new();
                match deliver::deliver(
                    &producer,
                    "alarms",
                    "akw-1",
                    b"{\"alarm\":1}",
                    None,
                    &stop,
                    &|| {},
                )
                .await
                {
                    deliver::Delivery::Acked(n) => n,
                    other => panic!("{other:?}"),
                }
            },
            async {
                tokio::time::sleep(Duration::from_secs(3)).await;
                cluster.broker_up(-1).unwrap();
            }
        );
        assert!(attempts >= 2, "{attempts} attempt(s)");
        assert!(started.elapsed() >= Duration::from_secs(3));
        // Exactly that record on the topic, nothing more.
        let got = deliver::tests::read_all(cluster.bootstrap_servers(), "alarms", 1).await;
        assert_eq!(got, [("akw-1".to_owned(), b"{\"alarm\":1}".to_vec())]);
    }
}
