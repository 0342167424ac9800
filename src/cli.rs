//! The command line: `normalize`, `reports`, `schema`.

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};

use crate::event::{AccountId, Cloud, Event};
use crate::provider::Decoder;
use crate::report::{ReportSnapshot, read_report};
use crate::sink::{DeadLetter, write_json_line};
use crate::source::framing::FrameOptions;
use crate::source::{Rejected, expand, read_input};

#[derive(Debug, Parser)]
#[command(
    name = "akwatch",
    version,
    about = "Access-key anomaly detection for AWS, Alibaba Cloud and Tencent Cloud logs"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Decode call logs of any of the three clouds into normalized events (JSON lines on stdout).
    Normalize(NormalizeArgs),
    /// Parse credential reports (AWS IAM, Alibaba RAM, Tencent CAM) and print them as JSON.
    Reports(ReportsArgs),
    /// Validate the rules (and policies) under DIR and run every rule's own test events.
    CheckRules {
        #[arg(default_value = "rules")]
        dir: PathBuf,
    },
    /// Print the JSON Schema of a normalized type.
    Schema {
        #[arg(value_enum)]
        which: SchemaKind,
    },
}

#[derive(Debug, clap::Args)]
pub struct NormalizeArgs {
    /// Treat every record as coming from this cloud instead of detecting it.
    #[arg(long, value_parser = parse_cloud)]
    pub provider: Option<Cloud>,
    /// Write rejected records here (JSON lines: kind, reason, origin, raw record) instead of
    /// listing them on stderr.
    #[arg(long, value_name = "FILE")]
    pub dlq: Option<PathBuf>,
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

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum SchemaKind {
    Event,
}

fn parse_cloud(s: &str) -> Result<Cloud, String> {
    s.parse()
}

pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Normalize(args) => normalize(args),
        Command::Reports(args) => reports(args),
        Command::CheckRules { dir } => check_rules(&dir),
        Command::Schema { which } => {
            let schema = match which {
                SchemaKind::Event => event_schema(),
            };
            println!("{schema}");
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// The JSON Schema of [`Event`], as committed in `schemas/event.schema.json`.
pub fn event_schema() -> String {
    let schema = schemars::schema_for!(Event);
    serde_json::to_string_pretty(&schema).unwrap_or_default()
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
    let mut dlq = match &args.dlq {
        Some(path) => Some(BufWriter::new(File::create(path).with_context(|| {
            format!("cannot create dead-letter file {}", path.display())
        })?)),
        None => None,
    };
    let decoder = Decoder::pinned(args.provider);
    let stdout = io::stdout();
    let mut out = BufWriter::with_capacity(256 * 1024, stdout.lock());
    let mut write_error: Option<io::Error> = None;
    let mut dlq_error: Option<io::Error> = None;
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
            },
            &mut |Rejected { reject, raw }| match dlq.as_mut() {
                Some(w) => {
                    if dlq_error.is_none()
                        && let Err(e) = write_json_line(w, &DeadLetter::new(&reject, raw))
                    {
                        dlq_error = Some(e);
                    }
                }
                None => eprintln!("rejected [{}] {reject}", reject.kind),
            },
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
    if let Some(w) = dlq.as_mut()
        && let Err(e) = w.flush()
    {
        dlq_error.get_or_insert(e);
    }
    eprintln!("decoded {events} records, rejected {rejected}");
    if let Some(e) = dlq_error {
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
    let stdout = io::stdout();
    let mut out = BufWriter::new(stdout.lock());
    serde_json::to_writer_pretty(&mut out, &snapshots)?;
    writeln!(out)?;
    out.flush()?;
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
    println!(
        "{} rules, {} catalogs: {} passed, {} failed",
        set.rules.len(),
        set.catalogs.names().count(),
        outcomes.len() - outcomes.iter().filter(|o| !o.failures.is_empty()).count(),
        failed
    );
    Ok(if failed == 0 { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}
