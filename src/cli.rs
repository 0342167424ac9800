//! The command line: `normalize`, `reports`, `schema`.

use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};

use crate::event::{AccountId, Cloud, Event};
use crate::provider::Decoder;
use crate::report::{ReportSnapshot, read_report};
use crate::sink::{RejectOutput, write_json_line};
use crate::source::framing::FrameOptions;
use crate::source::{Rejected, expand, read_input};

#[derive(Debug, Parser)]
#[command(
    name = "akwatch",
    version,
    about = "Access-key anomaly detection for AWS, Alibaba Cloud and Tencent Cloud logs"
)]
pub struct Cli {
    /// More detail in the service's log (-v: debug, -vv: trace). RUST_LOG, when set, wins.
    #[arg(short, long, global = true, action = clap::ArgAction::Count,
          help_heading = "Global options")]
    pub verbose: u8,
    /// Only errors on stderr: no summary, no progress, no warnings (the service logs errors
    /// only).
    #[arg(
        short,
        long,
        global = true,
        conflicts_with = "verbose",
        help_heading = "Global options"
    )]
    pub quiet: bool,
    #[command(subcommand)]
    pub command: Command,
}

/// How much goes to stderr: -q (0), default (1), -v (2), -vv (3).
static VERBOSITY: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(1);

fn verbosity() -> u8 {
    VERBOSITY.load(std::sync::atomic::Ordering::Relaxed)
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Decode call logs of any of the three clouds into normalized events (JSON lines on stdout).
    ///
    /// Example: akwatch normalize --dlq rejects.jsonl examples/logs/aws
    Normalize(NormalizeArgs),
    /// Parse credential reports (AWS IAM, Alibaba RAM, Tencent CAM) and print them as JSON.
    ///
    /// Example: akwatch reports --account 210987654321 examples/reports/aws-iam-credential-report.csv
    Reports(ReportsArgs),
    /// The service: consume call logs from Kafka, produce alarms and dead letters (Ctrl-C /
    /// SIGTERM stops it cleanly).
    ///
    /// Example: akwatch run --config akwatch.yaml
    Run {
        /// The service configuration (YAML; akwatch.example.yaml documents every field).
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
    },
    /// Check a service configuration as `run` would at start: the file, then the rules,
    /// policies, lists, GeoIP databases, reports and leak feeds it names. Problems are listed
    /// with their file and line (the file's structure stops at its first), and the exit code
    /// is 1 when there is any.
    ///
    /// Example: akwatch check-config akwatch.yaml
    CheckConfig {
        /// The service configuration (YAML).
        #[arg(value_name = "FILE")]
        config: PathBuf,
    },
    /// Exit 0 when an HTTP URL answers 2xx, else 1 with the reason: the container's
    /// HEALTHCHECK, without curl in the image. Plain http:// only.
    ///
    /// Example: akwatch probe http://127.0.0.1:9464/readyz
    Probe {
        /// The URL to GET.
        #[arg(default_value = "http://127.0.0.1:9464/healthz")]
        url: String,
        /// Give up after this many seconds (connect, send, answer).
        #[arg(long, value_name = "SECONDS", default_value_t = 3,
              value_parser = clap::value_parser!(u64).range(1..=300))]
        timeout: u64,
    },
    /// Load generator: produce the records of log files to a Kafka topic at a fixed rate (for
    /// the end-to-end load run; see benches/README.md).
    ///
    /// Example: akwatch load --brokers 127.0.0.1:9092 --topic cloudtrail --rate 1000 examples/logs/aws
    Load {
        /// Kafka bootstrap servers (host:port[,host:port...]).
        #[arg(long, value_name = "HOST:PORT")]
        brokers: String,
        /// The topic to produce to (created by the broker if it allows auto-creation).
        #[arg(long)]
        topic: String,
        /// Records per second (0: as fast as possible).
        #[arg(long, default_value_t = 0)]
        rate: u64,
        /// Send the inputs this many times.
        #[arg(long, default_value_t = 1)]
        repeat: u32,
        /// The records' Kafka key: none (as CloudTrail / ActionTrail / CloudAudit forwarders
        /// send them: spread over the partitions) or the access key of the record's first event
        /// (its principal when it has none).
        #[arg(long, value_enum, default_value_t = crate::kafka::KeyBy::None)]
        key: crate::kafka::KeyBy,
        /// Log files or directories (read recursively; `.gz` read transparently) or `-`.
        #[arg(required = true, value_name = "PATH|-")]
        paths: Vec<String>,
    },
    /// Run the whole pipeline over files and print alarms (JSON lines on stdout, a summary
    /// table on stderr). With no paths: the bundled example scenario under examples/.
    #[command(after_help = "Examples:\n  \
        akwatch replay                                   the bundled scenario\n  \
        akwatch replay --scenario scenario               a `simulate` output, whole\n  \
        akwatch replay --format table --reports reports/ --geoip GeoLite2-City.mmdb logs/")]
    Replay(ReplayArgs),
    /// Replay logs into an inventory store and serve the console (the CSC views in a browser)
    /// and the API on 127.0.0.1: with no paths, the bundled example scenario into a fresh store.
    /// Prints the address and one-time sign-in tokens (admin and viewer) unless --tokens is given.
    ///
    /// Example: akwatch console   (then open http://127.0.0.1:8080/)
    Console {
        #[command(flatten)]
        replay: ReplayArgs,
        /// Where to serve. Without --tokens only a loopback address is allowed.
        #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8080")]
        listen: std::net::SocketAddr,
        /// YAML: `tokens: [{name, role: viewer|operator|admin, sha256: <hex of the token>}]`.
        #[arg(long, value_name = "FILE")]
        tokens: Option<PathBuf>,
        /// Serve the store (--store) as it is, without replaying into it first.
        #[arg(long, requires = "store")]
        no_replay: bool,
    },
    /// Serve the inventory API (`/api/v1`: keys, source IPs, accounts, alarms and their triage,
    /// audit log) and the console (`/`) over a store that `replay --store` filled.
    ///
    /// Example: akwatch replay --store akwatch.db && akwatch serve --store akwatch.db
    Serve {
        /// The store: a SQLite file, or a postgres:// URL.
        #[arg(long, value_name = "FILE|URL")]
        store: String,
        /// Where to listen. Without --tokens only a loopback address is allowed, and a one-time
        /// admin token is printed at start.
        #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8080")]
        listen: std::net::SocketAddr,
        /// YAML: `tokens: [{name, role: viewer|operator|admin, sha256: <hex of the token>}]`.
        #[arg(long, value_name = "FILE")]
        tokens: Option<PathBuf>,
        /// The policy directory allowlist entries made from alarms are written to
        /// (`api-allowlist.yaml`), validated against the rules of --rules.
        #[arg(long, value_name = "DIR")]
        policies: Option<PathBuf>,
        /// The rules directory the policy entries are validated against (default: the working
        /// directory's rules/, else the bundled rules).
        #[arg(long, value_name = "DIR", default_value = "rules")]
        rules: PathBuf,
    },
    /// Write a realistic multi-cloud scenario: native logs, reports, GeoIP, lists, leak feed,
    /// policies and the ground truth of the attacks it injected.
    ///
    /// Example: akwatch simulate --keys 200 --days 3 --out scenario && akwatch replay --scenario scenario
    Simulate {
        /// Seed of the random generator: the same seed writes the same scenario.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Access keys of the everyday traffic (1 to 100,000); the attacks bring a few keys of
        /// their own (a backdoor key, a new key used at once, ...).
        #[arg(long, default_value_t = 40, value_parser = clap::value_parser!(u32).range(1..=100_000))]
        keys: u32,
        /// Days of traffic (1 to 3,650).
        #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(i64).range(1..=3650))]
        days: i64,
        /// First day (UTC), YYYY-MM-DD.
        #[arg(long, value_name = "YYYY-MM-DD", default_value = "2025-06-02", value_parser = parse_day)]
        start: chrono::NaiveDate,
        /// Median calls per key per day (0.1 to 100,000).
        #[arg(long, default_value_t = 12.0, value_parser = parse_rate)]
        calls_per_day: f64,
        /// The directory to write the scenario to (created; files in it are replaced).
        #[arg(long, value_name = "DIR", default_value = "scenario")]
        out: PathBuf,
    },
    /// Configuration risks in credential reports (JSON lines).
    ///
    /// Example: akwatch risks examples/reports/aws-iam-credential-report.csv
    Risks {
        /// Judge as of this time (RFC 3339); default: when each report was generated.
        #[arg(long)]
        as_of: Option<String>,
        /// Credential report files (CSV, or the JSON of `aws iam get-credential-report`).
        #[arg(required = true, value_name = "FILE")]
        reports: Vec<PathBuf>,
    },
    /// Validate the rules (and policies) under DIR and run every rule's own test events.
    ///
    /// Example: akwatch check-rules rules
    CheckRules {
        /// The rules directory (catalogs under catalogs/, policies under policies/).
        #[arg(default_value = "rules")]
        dir: PathBuf,
    },
    /// Print the JSON Schema of a normalized type.
    ///
    /// Example: akwatch schema alarm > alarm.schema.json
    Schema {
        /// Which document.
        #[arg(value_enum)]
        which: SchemaKind,
    },
}

#[derive(Debug, clap::Args)]
pub struct NormalizeArgs {
    /// Treat every record as coming from this cloud (aws, alibaba, tencent) instead of
    /// detecting it.
    #[arg(long, value_parser = parse_cloud, value_name = "aws|alibaba|tencent")]
    pub provider: Option<Cloud>,
    /// Write rejected records here (JSON lines: kind, reason, origin, raw record) instead of
    /// listing them on stderr.
    #[arg(long, value_name = "FILE")]
    pub dlq: Option<PathBuf>,
    /// The most bytes written to the dead-letter file (k, M, G suffixes); the rejects past it
    /// are counted, and the count printed at the end.
    #[arg(long, value_name = "SIZE", default_value = "256M", value_parser = crate::sink::parse_size)]
    pub dlq_max_bytes: u64,
    /// Files, directories (read recursively) or `-` for stdin; `.gz` is read transparently.
    #[arg(required = true, value_name = "PATH|-")]
    pub paths: Vec<String>,
}

#[derive(Debug, clap::Args)]
pub struct ReportsArgs {
    /// The account id the reports belong to (Alibaba and Tencent reports do not carry it).
    #[arg(long)]
    pub account: Option<String>,
    /// Credential report files (CSV, or the JSON of `aws iam get-credential-report`).
    #[arg(required = true)]
    pub paths: Vec<PathBuf>,
}

#[derive(Debug, clap::Args)]
pub struct ReplayArgs {
    /// Credential reports to join (AWS IAM, Alibaba RAM, Tencent CAM).
    #[arg(long)]
    pub reports: Vec<PathBuf>,
    /// The rules directory (catalogs under catalogs/, policies under policies/).
    #[arg(long, default_value = "rules")]
    pub rules: PathBuf,
    /// Policy directories, merged, added to the defaults: RULES/policies, and the scenario's
    /// policies/ when replaying one (the bundled examples or --scenario).
    #[arg(long, value_name = "DIR")]
    pub policies: Vec<PathBuf>,
    /// Use only the --policies given, not the default policy directories.
    #[arg(long)]
    pub no_default_policies: bool,
    /// IP / ASN list files or directories, added to the defaults: RULES/lists, and the
    /// scenario's lists/ when replaying one.
    #[arg(long, value_name = "PATH")]
    pub lists: Vec<PathBuf>,
    /// Use only the --lists given, not the default lists.
    #[arg(long)]
    pub no_default_lists: bool,
    /// A scenario directory as `akwatch simulate` writes it (and as examples/ is laid out):
    /// its logs/, reports/, leaks/, policies/, lists/ and geo.mmdb, all at once. Its
    /// ground-truth.json is not read.
    #[arg(long, value_name = "DIR", conflicts_with = "paths")]
    pub scenario: Option<PathBuf>,
    /// MaxMind DB files (GeoLite2 / GeoIP2 City and ASN).
    #[arg(long)]
    pub geoip: Vec<PathBuf>,
    /// Leak feeds: gitleaks JSON reports or trufflehog JSON lines.
    #[arg(long)]
    pub leaks: Vec<PathBuf>,
    /// Permission snapshots: `aws iam get-account-authorization-details` JSON, or the Alibaba /
    /// Tencent envelope of their CLIs' policy outputs (files or directories). Principals holding
    /// administrator rights get their alarms one severity higher, and high-risk permissions are
    /// configuration risks.
    #[arg(long)]
    pub permissions: Vec<PathBuf>,
    /// Treat every record as coming from this cloud (aws, alibaba, tencent) instead of
    /// detecting it.
    #[arg(long, value_parser = parse_cloud, value_name = "aws|alibaba|tencent")]
    pub provider: Option<Cloud>,
    /// Write rejected records here (JSON lines) instead of listing them on stderr.
    #[arg(long, value_name = "FILE")]
    pub dlq: Option<PathBuf>,
    /// The most bytes written to the dead-letter file (k, M, G suffixes); the rejects past it
    /// are counted, and the count printed at the end.
    #[arg(long, value_name = "SIZE", default_value = "256M", value_parser = crate::sink::parse_size)]
    pub dlq_max_bytes: u64,
    /// The most alarms tracked for aggregation; past it the least recently updated are closed
    /// (their pending hits sent as an update; hit again, they start over with the same id).
    #[arg(long, value_name = "N", default_value_t = crate::alarm::DEFAULT_MAX_ALARMS as u64,
          value_parser = clap::value_parser!(u64).range(1..=100_000_000))]
    pub max_alarms: u64,
    /// The most alarms tracked per key (or per principal without a key), its least recently
    /// updated closed first.
    #[arg(long, value_name = "N", default_value_t = crate::alarm::DEFAULT_MAX_ALARMS_PER_KEY as u64,
          value_parser = clap::value_parser!(u64).range(1..=100_000_000))]
    pub max_alarms_per_key: u64,
    /// The alarms' form: akwatch's own JSON lines (schemas/alarm.schema.json, with configuration
    /// risks after them; `native` is another name for it), a table to read (a row per alarm
    /// notification and per configuration risk), or OCSF 1.8.0 Detection Findings (class 2004;
    /// alarms only).
    #[arg(long, value_enum, default_value_t = ReplayFormat::Json)]
    pub format: ReplayFormat,
    /// Colour the table's and the summary's severities: auto (on a terminal, unless NO_COLOR
    /// is set), always, never.
    #[arg(long, value_enum, value_name = "WHEN", default_value_t = crate::term::When::Auto)]
    pub color: crate::term::When,
    /// A progress bar on stderr (bytes read of the inputs, records per second): auto (when
    /// stderr is a terminal), always, never. Never with -q.
    #[arg(long, value_enum, value_name = "WHEN", default_value_t = crate::term::When::Auto)]
    pub progress: crate::term::When,
    /// Also fill the inventory in this store (a SQLite file, or a postgres:// URL) for
    /// `akwatch serve`: keys, source IPs, accounts, hourly calls and the alarms.
    #[arg(long, value_name = "FILE|URL")]
    pub store: Option<String>,
    /// Days of hourly call rollups the store keeps (older ones are purged after each write,
    /// counted back from the newest call).
    #[arg(long, value_name = "DAYS", default_value_t = 30, value_parser = clap::value_parser!(i64).range(1..=3650))]
    pub retention_days: i64,
    /// Threads to decode, enrich and detect on (default: one per core; with --store, one
    /// fewer, for the store's writer). The output is the same for any number: the same
    /// alarms, with the same ids, in the same order (and the same store).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=256))]
    pub threads: Option<u16>,
    /// Log files, directories or `-`; none: the bundled examples/.
    pub paths: Vec<String>,
}

/// `replay --format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ReplayFormat {
    /// akwatch's alarm JSON, one per line, then the configuration risks.
    #[value(alias = "native")]
    Json,
    /// A table to read: one row per alarm notification and per configuration risk.
    Table,
    /// OCSF 1.8.0 Detection Findings (alarms only).
    Ocsf,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum SchemaKind {
    Event,
    Alarm,
    Risk,
    /// The inventory API's OpenAPI document.
    Openapi,
}

fn parse_day(s: &str) -> Result<chrono::NaiveDate, String> {
    chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d")
        .map_err(|e| format!("{e}: expected a day as YYYY-MM-DD, e.g. 2025-06-02"))
}

fn parse_cloud(s: &str) -> Result<Cloud, String> {
    s.parse()
}

pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    crate::isolate::install_panic_hook();
    VERBOSITY.store(
        if cli.quiet {
            0
        } else {
            cli.verbose.saturating_add(1)
        },
        std::sync::atomic::Ordering::Relaxed,
    );
    match cli.command {
        Command::CheckConfig { config } => check_config(&config),
        Command::Probe { url, timeout } => probe(&url, std::time::Duration::from_secs(timeout)),
        Command::Normalize(args) => normalize(args),
        Command::Reports(args) => reports(args),
        Command::CheckRules { dir } => check_rules(&or_bundled(dir)?),
        Command::Replay(args) => replay(args),
        Command::Console {
            replay,
            listen,
            tokens,
            no_replay,
        } => console(replay, listen, tokens.as_deref(), no_replay),
        Command::Serve {
            store,
            listen,
            tokens,
            policies,
            rules,
        } => serve(
            &store,
            listen,
            tokens.as_deref(),
            policies,
            &or_bundled(rules)?,
        ),
        Command::Load {
            brokers,
            topic,
            rate,
            repeat,
            key,
            paths,
        } => {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            let (sent, secs) = runtime.block_on(crate::kafka::load(
                &brokers, &topic, rate, repeat, key, &paths,
            ))?;
            eprintln!(
                "sent {sent} records to {topic} in {secs:.1} s ({:.0} records/s)",
                sent as f64 / secs.max(1e-9)
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Run { config } => {
            let config = match crate::config::Config::load(&config) {
                Ok(c) => c,
                Err(errors) => {
                    for e in &errors {
                        eprintln!("error: {e}");
                    }
                    anyhow::bail!("{} problem(s) in the configuration", errors.len());
                }
            };
            init_logging();
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            runtime.block_on(crate::kafka::run(config))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Simulate {
            seed,
            keys,
            days,
            start,
            calls_per_day,
            out,
        } => {
            let start = start
                .and_hms_opt(0, 0, 0)
                .map(|t| t.and_utc())
                .ok_or_else(|| anyhow::anyhow!("--start: bad date"))?;
            // Event times outside [2006, now] would be rejected by the decoder.
            let end = start.checked_add_signed(chrono::TimeDelta::days(days));
            if chrono::Datelike::year(&start) < 2006 || end.is_none_or(|e| e > chrono::Utc::now()) {
                anyhow::bail!(
                    "--start: a scenario from {} for {days} days is out of range: it must start in 2006 or later and end by today (later event times are rejected as from the future)",
                    start.format("%Y-%m-%d")
                );
            }
            let options = crate::simulate::SimOptions {
                seed,
                keys: keys as usize,
                days,
                start,
                out: out.clone(),
                calls_per_day,
            };
            let truth = crate::simulate::generate(&options)
                .with_context(|| format!("cannot write the scenario to {}", out.display()))?;
            eprintln!(
                "wrote {} events of {} keys over {} days to {} ({} injected attacks; ground truth in ground-truth.json)",
                truth.events,
                truth.keys,
                truth.days,
                out.display(),
                truth.attacks.len()
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Risks { as_of, reports } => risks(as_of.as_deref(), &reports),
        Command::Schema { which } => {
            let schema = match which {
                SchemaKind::Event => event_schema(),
                SchemaKind::Alarm => alarm_schema(),
                SchemaKind::Risk => risk_schema(),
                SchemaKind::Openapi => openapi_document(),
            };
            println!("{schema}");
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// The JSON Schema of [`crate::alarm::Alarm`], as committed in `schemas/alarm.schema.json`.
/// Its `$id` names the version (`ALARM_SCHEMA_VERSION`).
pub fn alarm_schema() -> String {
    let mut schema = schemars::schema_for!(crate::alarm::Alarm);
    schema.insert(
        "$id".to_owned(),
        serde_json::Value::String(format!(
            "https://akwatch.dev/schemas/alarm/{}/alarm.schema.json",
            crate::alarm::ALARM_SCHEMA_VERSION
        )),
    );
    serde_json::to_string_pretty(&schema).unwrap_or_default()
}

/// The inventory API's OpenAPI document, as committed in `schemas/openapi.json`.
pub fn openapi_document() -> String {
    serde_json::to_string_pretty(&crate::api::openapi::document()).unwrap_or_default()
}

/// The JSON Schema of [`crate::risk::Risk`], as committed in `schemas/risk.schema.json`.
pub fn risk_schema() -> String {
    let schema = schemars::schema_for!(crate::risk::Risk);
    serde_json::to_string_pretty(&schema).unwrap_or_default()
}

/// The JSON Schema of [`Event`], as committed in `schemas/event.schema.json`.
pub fn event_schema() -> String {
    let schema = schemars::schema_for!(Event);
    serde_json::to_string_pretty(&schema).unwrap_or_default()
}

fn parse_rate(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if (0.1..=100_000.0).contains(&v) => Ok(v),
        Ok(v) => Err(format!("{v} is out of range (0.1 to 100000)")),
        Err(e) => Err(format!("{s:?}: {e}")),
    }
}

fn open_rejects(path: Option<&Path>, max_bytes: u64) -> anyhow::Result<RejectOutput> {
    RejectOutput::new(path, max_bytes).with_context(|| {
        format!(
            "cannot create dead-letter file {}",
            path.map(Path::display)
                .map(|d| d.to_string())
                .unwrap_or_default()
        )
    })
}

fn normalize(args: NormalizeArgs) -> anyhow::Result<ExitCode> {
    let inputs = expand(&args.paths)?;
    if !inputs.skipped.is_empty() {
        eprintln!(
            "note: passed over {} file(s) in directories whose names do not look like logs (e.g. {}); name them directly to read them",
            inputs.skipped.len(),
            inputs.skipped[0].display()
        );
    }
    let mut dlq = open_rejects(args.dlq.as_deref(), args.dlq_max_bytes)?;
    let decoder = Decoder::pinned(args.provider);
    let stdout = io::stdout();
    let mut out = BufWriter::with_capacity(256 * 1024, stdout.lock());
    let mut write_error: Option<io::Error> = None;
    let (mut events, mut rejected) = (0u64, 0u64);
    for input in &inputs.inputs {
        let counts = read_input(
            input,
            &decoder,
            FrameOptions::default(),
            &mut |event| {
                if write_error.is_none()
                    && let Err(e) = write_json_line(&mut out, &event)
                {
                    write_error = Some(e);
                }
                Ok(())
            },
            &mut |Rejected { reject, raw }| dlq.write(&reject, raw),
        );
        events += counts.events;
        rejected += counts.rejected;
        if write_error.is_some() {
            break;
        }
    }
    if write_error.is_none()
        && let Err(e) = out.flush()
    {
        write_error = Some(e);
    }
    let dlq_result = dlq.finish();
    eprintln!("decoded {events} records, rejected {rejected}");
    if let Err(e) = dlq_result {
        anyhow::bail!("cannot write the dead-letter file: {e}");
    }
    match write_error {
        // A closed pipe (`| head`) is the reader's choice, not a failure.
        Some(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(ExitCode::SUCCESS),
        Some(e) => Err(anyhow::anyhow!("cannot write to stdout: {e}")),
        None => Ok(ExitCode::SUCCESS),
    }
}

fn reports(args: ReportsArgs) -> anyhow::Result<ExitCode> {
    let mut snapshots: Vec<ReportSnapshot> = Vec::new();
    let (mut failed_files, mut bad_rows) = (0usize, 0usize);
    for path in &args.paths {
        match read_report(path) {
            Ok(parsed) => {
                for e in &parsed.row_errors {
                    eprintln!("error: {e}");
                }
                bad_rows += parsed.row_errors.len();
                let mut snapshot = parsed.snapshot;
                if let Some(account) = &args.account {
                    snapshot.account_id = Some(AccountId(account.clone()));
                }
                snapshots.push(snapshot);
            }
            Err(e) => {
                eprintln!("error: {e}");
                failed_files += 1;
            }
        }
    }
    // Nothing read (every file unreadable): no empty list on stdout, only the errors.
    if !snapshots.is_empty() || failed_files == 0 {
        let stdout = io::stdout();
        let mut out = BufWriter::new(stdout.lock());
        serde_json::to_writer_pretty(&mut out, &snapshots)?;
        writeln!(out)?;
        out.flush()?;
    }
    let principals: usize = snapshots.iter().map(|s| s.principals.len()).sum();
    let keys: usize = snapshots
        .iter()
        .flat_map(|s| &s.principals)
        .map(|p| p.keys.len())
        .sum();
    eprintln!(
        "read {} report(s): {principals} principals, {keys} keys; {bad_rows} row error(s), {failed_files} unreadable file(s)",
        snapshots.len()
    );
    Ok(if failed_files > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

fn check_rules(dir: &std::path::Path) -> anyhow::Result<ExitCode> {
    let set = match crate::rule::RuleSet::load(dir) {
        Ok(s) => s,
        Err(errors) => {
            for e in &errors {
                eprintln!("error: {e}");
            }
            eprintln!("{} problem(s) in {}", errors.len(), dir.display());
            return Ok(ExitCode::FAILURE);
        }
    };
    let mut failed = 0usize;
    if let Err(errors) = crate::policy::Policy::load(&dir.join("policies"), &set) {
        for e in &errors {
            eprintln!("error: {e}");
        }
        failed += errors.len();
    }
    let outcomes = crate::rule::testing::run_tests(&set);
    for o in &outcomes {
        if o.failures.is_empty() {
            println!("ok      {:<34} {}", o.rule_id, o.test);
        } else {
            failed += 1;
            println!("FAILED  {:<34} {}", o.rule_id, o.test);
            for f in &o.failures {
                println!("        {}: {f}", o.file.display());
            }
        }
    }
    // Each rule's MITRE ATT&CK ids (from its file, carried by its alarms).
    for r in &set.rules {
        println!("attack  {:<34} {}", r.id, r.attack.ids());
    }
    println!(
        "{} rules, {} catalogs: {} passed, {} failed",
        set.rules.len(),
        set.catalogs.names().count(),
        outcomes.len() - outcomes.iter().filter(|o| !o.failures.is_empty()).count(),
        failed
    );
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// `akwatch serve`: the inventory API over a store.
fn serve(
    store: &str,
    listen: std::net::SocketAddr,
    tokens: Option<&std::path::Path>,
    policies: Option<PathBuf>,
    rules: &std::path::Path,
) -> anyhow::Result<ExitCode> {
    let policies = match policies {
        None => None,
        Some(dir) => {
            let rules_dir = or_bundled(rules.to_path_buf())?;
            let rules = crate::rule::RuleSet::load(&rules_dir).map_err(|e| {
                anyhow::anyhow!("the rules in {}: {}", rules_dir.display(), e.join("; "))
            })?;
            Some(crate::api::PolicyFiles::open(dir, rules)?)
        }
    };
    let tokens = crate::api::load_tokens(tokens, listen)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let store = crate::inventory::Store::open(store).await?;
        // The API's policy files as the store has them (changes made elsewhere meanwhile).
        if let Some(files) = &policies {
            crate::policy_store::write_files(&store, &files.dir).await?;
        }
        let state = std::sync::Arc::new(crate::api::ApiState {
            store,
            tokens,
            policies,
        });
        crate::api::serve(state, listen, async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await
    })?;
    Ok(ExitCode::SUCCESS)
}

/// Where the repository's own directories are: the working directory, else the source tree
/// the binary was built from (so `akwatch replay` works from anywhere on a developer machine).
fn bundled_path(rel: &str) -> anyhow::Result<PathBuf> {
    crate::bundled::path(rel)
}

/// The rules directory given, the bundled one when it is the default (`rules`).
fn or_bundled(rules: PathBuf) -> anyhow::Result<PathBuf> {
    if rules == Path::new("rules") {
        bundled_path("rules")
    } else {
        Ok(rules)
    }
}

/// Whether a directory is laid out as a scenario (`simulate`'s output, examples/).
fn looks_like_scenario(dir: &Path) -> bool {
    dir.join("logs").is_dir() && dir.join("ground-truth.json").is_file()
}

/// Adds paths not already in the list (the same directory named twice loads once).
fn add_dirs(list: &mut Vec<PathBuf>, more: Vec<PathBuf>) {
    let key = |p: &Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
    for p in more {
        let k = key(&p);
        if !list.iter().any(|q| key(q) == k) {
            list.push(p);
        }
    }
}

fn replay(args: ReplayArgs) -> anyhow::Result<ExitCode> {
    let stdout = io::stdout();
    let terminal = std::io::IsTerminal::is_terminal(&stdout);
    replay_to(args, Box::new(stdout.lock()), terminal).map(|(code, _)| code)
}

/// `replay`, its alarms written to `alarms_out` (`stdout_is_terminal`: whether it is one, for
/// the table's width and colours); also returns the policy directories it loaded.
fn replay_to(
    args: ReplayArgs,
    alarms_out: Box<dyn Write + '_>,
    stdout_is_terminal: bool,
) -> anyhow::Result<(ExitCode, Vec<PathBuf>)> {
    use crate::replay::{ReplayOptions, run, setup};
    let rules = or_bundled(args.rules.clone())?;
    // A scenario: --scenario, the bundled one (no paths), or one directory that is laid out
    // as one (a `simulate` output given as a path: its ground truth and leak feed are not logs).
    let scenario = match (&args.scenario, args.paths.as_slice()) {
        (Some(dir), _) => {
            if !dir.join("logs").is_dir() {
                anyhow::bail!(
                    "--scenario {}: not a scenario directory (no logs/ in it; `akwatch simulate --out DIR` writes one)",
                    dir.display()
                );
            }
            Some(dir.clone())
        }
        (None, []) => {
            let examples = bundled_path("examples")?;
            if !examples.join("logs").is_dir() {
                anyhow::bail!(
                    "no paths given and the bundled examples/ directory was not found; give log paths"
                );
            }
            Some(examples)
        }
        (None, [one]) if looks_like_scenario(Path::new(one)) => {
            if verbosity() > 0 {
                eprintln!(
                    "note: {one} is a scenario directory (logs/, ground-truth.json): replaying it whole, as --scenario {one} does"
                );
            }
            Some(PathBuf::from(one))
        }
        _ => None,
    };
    let mut options = match &scenario {
        Some(dir) => ReplayOptions::bundled(dir, &rules),
        None => ReplayOptions {
            inputs: args.paths.clone(),
            rules: rules.clone(),
            policies: vec![rules.join("policies")],
            lists: vec![rules.join("lists")],
            ..ReplayOptions::default()
        },
    };
    if args.no_default_policies {
        options.policies.clear();
    }
    if args.no_default_lists {
        options.lists.clear();
    }
    options.reports.extend(args.reports);
    options.geoip.extend(args.geoip);
    options.leaks.extend(args.leaks);
    options.permissions.extend(args.permissions);
    add_dirs(&mut options.lists, args.lists);
    add_dirs(&mut options.policies, args.policies);
    if options.policies.is_empty() {
        anyhow::bail!("--no-default-policies without --policies: no policy directory to load");
    }
    options.provider = args.provider;
    // By default one thread per core; with a store, one core is left to its writer, which
    // bounds the run (on two cores, two shards beside the writer were 5-10 % slower than one).
    options.threads = args.threads.map_or_else(
        || {
            let cores = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
            if args.store.is_some() {
                cores.saturating_sub(1).max(1)
            } else {
                cores
            }
        },
        usize::from,
    );
    // (Both at most 100,000,000: they fit.)
    options.limits.max_alarms = usize::try_from(args.max_alarms).unwrap_or(usize::MAX);
    options.limits.max_alarms_per_key =
        usize::try_from(args.max_alarms_per_key).unwrap_or(usize::MAX);
    let mut s = match setup(&options) {
        Ok(s) => s,
        Err(errors) => {
            for e in &errors {
                eprintln!("error: {e}");
            }
            anyhow::bail!("{} problem(s) at start-up", errors.len());
        }
    };
    // The store's runtime and connection, for the batches written during the run and the
    // last one after it.
    let store_rt = match &args.store {
        Some(_) => Some(std::sync::Arc::new(
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?,
        )),
        None => None,
    };
    let store = match (&args.store, &store_rt) {
        (Some(url), Some(rt)) => Some(
            rt.block_on(crate::inventory::Store::open(url))
                .with_context(|| {
                    format!("cannot open the store {}", crate::inventory::redact(url))
                })?,
        ),
        _ => None,
    };
    // Full batches are written on a thread of their own while the replay goes on; joined
    // before the last batch is written.
    let mut writer: Option<crate::inventory::BatchWriter> = None;
    if let (Some(store), Some(rt)) = (&store, &store_rt) {
        s.inventory = Some(crate::inventory::Batch::default());
        let (sink, w) = crate::inventory::BatchWriter::spawn(store.clone(), rt.clone())?;
        s.inventory_sink = Some(sink);
        writer = Some(w);
    }
    if verbosity() > 0 {
        for w in &s.warnings {
            eprintln!("warning: {w}");
        }
    }
    let mut dlq = open_rejects(args.dlq.as_deref(), args.dlq_max_bytes)?;
    let format = args.format;
    let mut out = BufWriter::new(alarms_out);
    let table = (format == ReplayFormat::Table).then(|| {
        crate::term::Table::new(
            crate::term::use_color(args.color, stdout_is_terminal),
            stdout_is_terminal,
        )
    });
    let mut write_error: Option<io::Error> = None;
    if let Some(t) = &table {
        write_error = out.write_all(t.header().as_bytes()).err();
    }
    // The progress bar: bytes of the inputs read, polled from a thread (never with -q).
    let bar = match (args.progress, verbosity()) {
        (_, 0) | (crate::term::When::Never, _) => None,
        (crate::term::When::Auto, _) if !crate::term::stderr_is_terminal() => None,
        (when, _) => {
            let progress = std::sync::Arc::new(crate::source::Progress::default());
            s.progress = Some(progress.clone());
            let total = expand(&options.inputs)
                .ok()
                .and_then(|i| crate::term::input_bytes(&i.inputs));
            Some(crate::term::ProgressDisplay::start(
                progress,
                total,
                when == crate::term::When::Always,
            )?)
        }
    };
    let stderr_rejects = args.dlq.is_none();
    let result = run(
        &mut s,
        &options.inputs,
        options.provider,
        &mut |alarm| {
            if write_error.is_some() {
                return;
            }
            let written = match (format, &table) {
                (_, Some(t)) => out.write_all(t.alarm(alarm).as_bytes()),
                (ReplayFormat::Ocsf, None) => {
                    write_json_line(&mut out, &crate::ocsf::detection_finding(alarm))
                }
                (_, None) => write_json_line(&mut out, alarm),
            };
            if let Err(e) = written {
                write_error = Some(e);
            }
        },
        &mut |Rejected { reject, raw }| match (&bar, stderr_rejects) {
            // Rejects listed on stderr (at most a few hundred) go above the bar.
            (Some(bar), true) => bar.suspend(|| dlq.write(&reject, raw)),
            _ => dlq.write(&reject, raw),
        },
    );
    if let Some(bar) = bar {
        bar.finish();
    }
    // The writer ends once the sink (its channel) is gone; its own error names the cause.
    s.inventory_sink = None;
    if let Some(w) = writer
        && let (Err(e), Some(url)) = (w.finish(), &args.store)
    {
        anyhow::bail!(
            "cannot write the inventory to {}: {e}",
            crate::inventory::redact(url)
        );
    }
    let mut summary = result.map_err(|e| anyhow::anyhow!(e))?;
    match (format, &table) {
        (ReplayFormat::Ocsf, _) => {
            if !summary.risks.is_empty() {
                eprintln!(
                    "note: {} configuration risk(s) not written in OCSF form (`akwatch risks` lists them)",
                    summary.risks.len()
                );
            }
        }
        (_, table) => {
            for r in &summary.risks {
                if write_error.is_some() {
                    break;
                }
                let written = match table {
                    Some(t) => out.write_all(t.risk(r).as_bytes()),
                    None => write_json_line(&mut out, r),
                };
                if let Err(e) = written {
                    write_error = Some(e);
                }
            }
        }
    }
    dlq.finish().context("cannot write the dead-letter file")?;
    if write_error.is_none()
        && let Err(e) = out.flush()
    {
        write_error = Some(e);
    }
    if let (Some(url), Some(batch)) = (&args.store, summary.inventory.take()) {
        let rows = batch.len();
        let started = std::time::Instant::now();
        let (Some(rt), Some(store)) = (&store_rt, &store) else {
            anyhow::bail!("the store {url} is not open");
        };
        let retention = args.retention_days;
        let events = summary.events;
        let purged = rt
            .block_on(async {
                store.apply(batch).await?;
                store.cap_per_key(crate::inventory::MAX_PER_KEY).await?;
                store.purge_older_than_days(retention).await
            })
            .with_context(|| {
                format!(
                    "cannot write the inventory to {}",
                    crate::inventory::redact(url)
                )
            })?;
        eprintln!(
            "inventory: {events} events written to {} (the last {rows} rows in {:.1} s; {purged} rollups past {retention} days purged)",
            crate::inventory::redact(url),
            started.elapsed().as_secs_f64()
        );
    }
    if verbosity() > 0 {
        let color = crate::term::use_color(args.color, crate::term::stderr_is_terminal());
        eprint!("{}", summary_table(&s.engine.stats, &summary, color));
    }
    match write_error {
        Some(e) if e.kind() != io::ErrorKind::BrokenPipe => {
            Err(anyhow::anyhow!("cannot write to stdout: {e}"))
        }
        _ => Ok((ExitCode::SUCCESS, options.policies.clone())),
    }
}

/// `akwatch console`: replay into a store (the bundled scenario by default, into a fresh store
/// under the system's temporary directory), then serve the console and the API on `listen`.
fn console(
    args: ReplayArgs,
    listen: std::net::SocketAddr,
    tokens: Option<&std::path::Path>,
    no_replay: bool,
) -> anyhow::Result<ExitCode> {
    // A directory of this run's own (a fresh random name, created here, readable by this user
    // only; removed when the console stops): the store unless --store, and the policy entries.
    let work = std::env::temp_dir().join(format!(
        "akwatch-console-{}",
        (0..8)
            .map(|_| format!("{:02x}", rand::random::<u8>()))
            .collect::<String>()
    ));
    {
        use std::os::unix::fs::DirBuilderExt as _;
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&work)
            .with_context(|| format!("cannot create {}", work.display()))?;
    }
    let result = console_in(&work, args, listen, tokens, no_replay);
    if let Err(e) = std::fs::remove_dir_all(&work) {
        eprintln!("warning: cannot remove {}: {e}", work.display());
    }
    result
}

fn console_in(
    work: &std::path::Path,
    mut args: ReplayArgs,
    listen: std::net::SocketAddr,
    tokens: Option<&std::path::Path>,
    no_replay: bool,
) -> anyhow::Result<ExitCode> {
    let store = match &args.store {
        Some(s) => s.clone(),
        None => work.join("akwatch.db").display().to_string(),
    };
    let args_store_file = args
        .store
        .as_ref()
        .filter(|s| !s.contains("://"))
        .map(PathBuf::from);
    args.store = Some(store.clone());
    let rules_dir = or_bundled(args.rules.clone())?;
    // Without a tokens file: one-time admin and viewer tokens, printed once the console is up.
    let mut printed = String::new();
    let tokens = match tokens {
        Some(path) => crate::api::load_tokens(Some(path), listen)?,
        None => {
            if !listen.ip().is_loopback() {
                anyhow::bail!(
                    "{listen} is not a loopback address: give --tokens to serve the console beyond this machine"
                );
            }
            let mut out = Vec::new();
            for (name, role) in [
                ("one-time admin", crate::api::Role::Admin),
                ("one-time viewer", crate::api::Role::Viewer),
            ] {
                let secret: String = (0..32)
                    .map(|_| format!("{:02x}", rand::random::<u8>()))
                    .collect();
                printed.push_str(&format!("  {name} token: {secret}\n"));
                out.push(crate::api::TokenSpec {
                    name: name.into(),
                    role,
                    sha256: crate::api::token_hash(&secret),
                });
            }
            out
        }
    };
    let policy_dirs = if no_replay {
        if args.policies.is_empty() {
            vec![rules_dir.join("policies")]
        } else {
            args.policies.clone()
        }
    } else {
        let (code, dirs) = replay_to(args, Box::new(io::sink()), false)?;
        if code != ExitCode::SUCCESS {
            return Ok(code);
        }
        dirs
    };
    // The console's policy entries: beside a store file the user gave (kept), else in the
    // run's own directory (removed at exit, like its store).
    let kept = args_store_file.is_some();
    let api_dir = match &args_store_file {
        Some(file) => file.with_extension("policies"),
        None => work.join("policies"),
    };
    let rules = crate::rule::RuleSet::load(&rules_dir)
        .map_err(|e| anyhow::anyhow!("the rules in {}: {}", rules_dir.display(), e.join("; ")))?;
    let files = crate::api::PolicyFiles::open_among(api_dir.clone(), policy_dirs.clone(), rules)?;
    let again: Vec<String> = policy_dirs
        .iter()
        .chain(std::iter::once(&api_dir))
        .map(|d| format!("--policies {}", d.display()))
        .collect();
    eprintln!(
        "\nstore: {}\npolicy entries made in the console are written to {} (replay with {} to apply them)",
        crate::inventory::redact(&store),
        api_dir.display(),
        again.join(" ")
    );
    if !kept {
        eprintln!(
            "(both are removed when the console stops: give --store FILE to keep the store, and its policy entries beside it)"
        );
    }
    if printed.is_empty() {
        eprintln!(
            "\nakwatch console: open http://{listen}/ and sign in with an API token. Ctrl-C stops it."
        );
    } else {
        eprintln!(
            "\nakwatch console: open http://{listen}/ and sign in with a token (valid for this run only):\n{printed}Ctrl-C stops it."
        );
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let store = crate::inventory::Store::open(&store).await?;
        crate::policy_store::write_files(&store, &files.dir).await?;
        let state = std::sync::Arc::new(crate::api::ApiState {
            store,
            tokens,
            policies: Some(files),
        });
        crate::api::serve(state, listen, async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await
    })?;
    Ok(ExitCode::SUCCESS)
}

/// `akwatch check-config`: the configuration file, then everything it names, as `run` loads
/// them at start. Every problem is printed; any makes the exit code 1.
fn check_config(path: &Path) -> anyhow::Result<ExitCode> {
    let config = match crate::config::Config::load(path) {
        Ok(c) => c,
        Err(errors) => {
            for e in &errors {
                eprintln!("error: {e}");
            }
            anyhow::bail!("{} problem(s) in {}", errors.len(), path.display());
        }
    };
    let mut options = config.pipeline_options();
    // The API's policy directory is created by `run` when it does not exist yet.
    if let Some(api_dir) = config
        .inventory
        .as_ref()
        .and_then(|i| i.api.as_ref())
        .and_then(|a| a.policies_dir.as_ref())
        .filter(|d| !d.exists())
    {
        options.policies.retain(|p| p != api_dir);
    }
    match crate::replay::setup(&options) {
        Ok(s) => {
            if verbosity() > 0 {
                for w in &s.warnings {
                    eprintln!("warning: {w}");
                }
            }
            println!(
                "{}: ok ({} input topic(s), {} rule(s), brokers {})",
                path.display(),
                config.inputs.len(),
                s.rules.rules.len(),
                config.brokers
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(errors) => {
            for e in &errors {
                eprintln!("error: {e}");
            }
            anyhow::bail!(
                "{} problem(s) in what {} names",
                errors.len(),
                path.display()
            );
        }
    }
}

/// `akwatch probe`: one HTTP/1.1 GET over plain TCP; 2xx is success.
fn probe(url: &str, timeout: std::time::Duration) -> anyhow::Result<ExitCode> {
    use std::io::Read;
    use std::net::{TcpStream, ToSocketAddrs};
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| anyhow::anyhow!("{url}: only http:// URLs can be probed"))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let target = if authority.contains(':') {
        authority.to_owned()
    } else {
        format!("{authority}:80")
    };
    let deadline = std::time::Instant::now() + timeout;
    let addr = target
        .to_socket_addrs()
        .with_context(|| format!("{url}: cannot resolve {target}"))?
        .next()
        .ok_or_else(|| anyhow::anyhow!("{url}: {target} resolves to no address"))?;
    let mut stream = TcpStream::connect_timeout(&addr, timeout)
        .with_context(|| format!("{url}: cannot connect to {addr}"))?;
    let left = || {
        deadline
            .saturating_duration_since(std::time::Instant::now())
            .max(std::time::Duration::from_millis(1))
    };
    stream.set_write_timeout(Some(left()))?;
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {authority}\r\nUser-Agent: akwatch-probe\r\nConnection: close\r\n\r\n"
    );
    stream
        .write_all(request.as_bytes())
        .with_context(|| format!("{url}: cannot send the request"))?;
    let mut head = Vec::new();
    let mut buf = [0u8; 512];
    // The status line is all that is needed; at most 4 KiB are read.
    while !head.contains(&b'\n') && head.len() < 4096 {
        stream.set_read_timeout(Some(left()))?;
        let n = stream
            .read(&mut buf)
            .with_context(|| format!("{url}: no answer"))?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    let line = String::from_utf8_lossy(&head);
    let line = line.lines().next().unwrap_or_default().trim().to_owned();
    let status: Option<u16> = line
        .strip_prefix("HTTP/1.")
        .and_then(|r| r.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok());
    match status {
        Some(code) if (200..300).contains(&code) => {
            if verbosity() > 0 {
                println!("{url}: {line}");
            }
            Ok(ExitCode::SUCCESS)
        }
        Some(_) => anyhow::bail!("{url}: {line}"),
        None => anyhow::bail!("{url}: not an HTTP answer: {line:?}"),
    }
}

/// The readable summary a replay prints on stderr (`color`: severities in colour).
pub fn summary_table(
    stats: &crate::engine::Stats,
    summary: &crate::replay::Summary,
    color: bool,
) -> String {
    use std::collections::BTreeMap;
    use std::fmt::Write as _;
    let mut t = String::new();
    let _ = writeln!(
        t,
        "akwatch replay: {} events from {} file(s), {} rejected; {} alarms ({} notifications), {} configuration risks",
        summary.events,
        summary.files,
        summary.rejected,
        summary.alarms.len(),
        summary.notifications,
        summary.risks.len()
    );
    let mut by_rule: BTreeMap<&str, (String, usize, u64)> = BTreeMap::new();
    for a in &summary.alarms {
        let e = by_rule
            .entry(a.rule_id.as_str())
            .or_insert((String::new(), 0, 0));
        if e.0.is_empty() || a.severity > parse_sev(&e.0) {
            e.0 = a.severity.as_str().to_owned();
        }
        e.1 += 1;
        e.2 += a.count;
    }
    let _ = writeln!(
        t,
        "  {:<34} {:>8} {:>7} {:>7} {:>12}",
        "rule", "severity", "alarms", "hits", "allowlisted"
    );
    let mut ids: Vec<&str> = by_rule.keys().copied().collect();
    for id in stats.allowlisted.keys() {
        if !ids.contains(&id.as_str()) {
            ids.push(id);
        }
    }
    // Most severe first, then by rule id; the severity of a rule without alarms (allowlisted
    // only) sorts last.
    ids.sort_unstable_by(|a, b| {
        let sev = |id: &str| by_rule.get(id).map(|e| parse_sev(&e.0));
        sev(b).cmp(&sev(a)).then(a.cmp(b))
    });
    for id in ids {
        let (sev, alarms, hits) = by_rule.get(id).cloned().unwrap_or_default();
        let allowed = stats.allowlisted.get(id).copied().unwrap_or(0);
        let sev = if sev.is_empty() {
            format!("{sev:>8}")
        } else {
            crate::term::paint(&format!("{sev:>8}"), parse_sev(&sev), color)
        };
        let _ = writeln!(t, "  {id:<34} {sev} {alarms:>7} {hits:>7} {allowed:>12}");
    }
    let mut risks: BTreeMap<&str, usize> = BTreeMap::new();
    for r in &summary.risks {
        *risks.entry(r.risk_id).or_default() += 1;
    }
    if !risks.is_empty() {
        let _ = writeln!(t, "  {:<34} {:>8}", "configuration risk", "count");
        for (id, n) in risks {
            let _ = writeln!(t, "  {id:<34} {n:>8}");
        }
    }
    let _ = writeln!(
        t,
        "  rule evaluations skipped for IP-hidden keys: {}",
        stats.ip_hidden_skips
    );
    t
}

fn parse_sev(s: &str) -> crate::rule::Severity {
    serde_json::from_value(serde_json::Value::String(s.to_owned()))
        .unwrap_or(crate::rule::Severity::Info)
}

fn risks(as_of: Option<&str>, reports: &[PathBuf]) -> anyhow::Result<ExitCode> {
    let as_of = match as_of {
        Some(t) => Some(
            crate::provider::time::parse_time_text(t)
                .map_err(|e| anyhow::anyhow!("--as-of: {e}"))?,
        ),
        None => None,
    };
    let stdout = io::stdout();
    let mut out = BufWriter::new(stdout.lock());
    let (mut failed, mut count) = (0usize, 0usize);
    for path in reports {
        match read_report(path) {
            Ok(parsed) => {
                for e in &parsed.row_errors {
                    eprintln!("error: {e}");
                }
                let now = as_of.unwrap_or_else(|| crate::risk::report_time(&parsed.snapshot));
                for r in crate::risk::risks(&parsed.snapshot, now) {
                    write_json_line(&mut out, &r)?;
                    count += 1;
                }
            }
            Err(e) => {
                eprintln!("error: {e}");
                failed += 1;
            }
        }
    }
    out.flush()?;
    eprintln!(
        "{count} configuration risk(s) in {} report(s)",
        reports.len() - failed
    );
    Ok(if failed > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// `tracing` to stderr: text, or JSON with `AKWATCH_LOG_FORMAT=json`; level from `RUST_LOG`
/// (default `info`).
fn init_logging() {
    let level = match verbosity() {
        0 => "error",
        1 => "info",
        2 => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(io::stderr)
        // Colours only on a terminal: not in files, pipes or log collectors.
        .with_ansi(std::io::IsTerminal::is_terminal(&io::stderr()));
    if std::env::var("AKWATCH_LOG_FORMAT").is_ok_and(|f| f == "json") {
        builder.json().init();
    } else {
        builder.init();
    }
}
