//! What the command line shows a person at a terminal: `replay --format table`, colours by
//! severity, and the progress bar of a long replay. Nothing here is machine-read output.

use std::io::{self, IsTerminal};
use std::sync::Arc;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use ::console::{Alignment, pad_str, truncate_str};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle, TermLike};

use crate::alarm::Alarm;
use crate::risk::Risk;
use crate::rule::Severity;
use crate::source::Progress;

/// `--color` and `--progress`: on a terminal only (`auto`), or always, or never.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum When {
    #[default]
    Auto,
    Always,
    Never,
}

/// Whether to colour what goes to a stream: `always`, `never`, or (`auto`) when the stream is
/// a terminal and `NO_COLOR` is unset or empty (<https://no-color.org>).
pub fn use_color(when: When, is_terminal: bool) -> bool {
    color_with(when, is_terminal, std::env::var_os("NO_COLOR").as_deref())
}

/// [`use_color`] with `NO_COLOR`'s value given.
fn color_with(when: When, is_terminal: bool, no_color: Option<&std::ffi::OsStr>) -> bool {
    match when {
        When::Always => true,
        When::Never => false,
        When::Auto => is_terminal && no_color.is_none_or(|v| v.is_empty()),
    }
}

/// `text` in the colour of `severity` (ANSI codes) when `color`, else unchanged. The one place
/// the command line's colours are chosen.
pub fn paint(text: &str, severity: Severity, color: bool) -> String {
    use anstyle::{AnsiColor, Effects, Style};
    if !color {
        return text.to_owned();
    }
    let style = match severity {
        Severity::Critical => Style::new()
            .fg_color(Some(AnsiColor::BrightRed.into()))
            .effects(Effects::BOLD),
        Severity::High => Style::new().fg_color(Some(AnsiColor::Red.into())),
        Severity::Medium => Style::new().fg_color(Some(AnsiColor::Yellow.into())),
        Severity::Low => Style::new().fg_color(Some(AnsiColor::Cyan.into())),
        Severity::Info => Style::new().effects(Effects::DIMMED),
    };
    format!("{}{text}{}", style.render(), style.render_reset())
}

/// Lines wider than this are cut when stdout is a terminal whose width is unknown.
const FALLBACK_WIDTH: usize = 160;

/// The columns: name and width (the last, the summary, takes what is left).
const COLUMNS: [(&str, usize); 8] = [
    ("TIME", 20),
    ("SEVERITY", 8),
    ("KIND", 5),
    ("RULE", 30),
    ("KEY", 24),
    ("PRINCIPAL", 22),
    ("SOURCE IPS", 20),
    ("COUNT", 6),
];

/// `replay --format table`: one row per alarm notification and per configuration risk, under a
/// header. Each line is made as its row comes (fixed column widths, long cells cut with `…`);
/// on a terminal every line is cut to its width.
pub struct Table {
    color: bool,
    /// The most characters a line may take (`None`: not cut).
    width: Option<usize>,
}

impl Table {
    /// `terminal`: whether the table goes to a terminal (then lines are cut to its width).
    pub fn new(color: bool, terminal: bool) -> Self {
        let width = terminal.then(|| {
            ::console::Term::stdout()
                .size_checked()
                .map_or(FALLBACK_WIDTH, |(_, w)| usize::from(w))
        });
        Table { color, width }
    }

    /// The header line (with its newline).
    pub fn header(&self) -> String {
        let mut cells: Vec<String> = COLUMNS
            .iter()
            .map(|(name, w)| cell(name, *w, false))
            .collect();
        cells.push("SUMMARY".to_owned());
        self.line(&cells.join(" "))
    }

    /// An alarm notification's row (with its newline).
    pub fn alarm(&self, a: &Alarm) -> String {
        let ips = match a.source_ips.split_first() {
            None => "-".to_owned(),
            Some((first, [])) => first.ip.clone(),
            Some((first, rest)) => format!("{} +{}", first.ip, rest.len()),
        };
        let principal = a
            .principal
            .name
            .as_deref()
            .or(a.principal.arn.as_deref())
            .or(a.principal.id.as_deref())
            .unwrap_or("-");
        let key = a.access_key_id.as_ref().map_or("-", |k| k.0.as_str());
        self.row(
            &a.last_seen.format("%Y-%m-%dT%H:%M:%SZ").to_string(),
            a.severity,
            "alarm",
            &a.rule_id,
            key,
            principal,
            &ips,
            &a.count.to_string(),
            &a.summary,
        )
    }

    /// A configuration risk's row (with its newline).
    pub fn risk(&self, r: &Risk) -> String {
        self.row(
            "-",
            r.severity,
            "risk",
            r.risk_id,
            r.key_id.as_deref().unwrap_or("-"),
            &r.principal,
            "-",
            "-",
            &r.detail,
        )
    }

    #[allow(clippy::too_many_arguments)] // The row's cells, in column order.
    fn row(
        &self,
        time: &str,
        severity: Severity,
        kind: &str,
        rule: &str,
        key: &str,
        principal: &str,
        ips: &str,
        count: &str,
        summary: &str,
    ) -> String {
        let sev = paint(
            &cell(severity.as_str(), COLUMNS[1].1, false),
            severity,
            self.color,
        );
        let line = [
            cell(time, COLUMNS[0].1, false),
            sev,
            cell(kind, COLUMNS[2].1, false),
            cell(rule, COLUMNS[3].1, false),
            cell(key, COLUMNS[4].1, false),
            cell(principal, COLUMNS[5].1, false),
            cell(ips, COLUMNS[6].1, false),
            cell(count, COLUMNS[7].1, true),
            // One line per row, whatever the summary holds.
            summary.replace(['\n', '\r', '\t'], " "),
        ]
        .join(" ");
        self.line(&line)
    }

    fn line(&self, line: &str) -> String {
        match self.width {
            Some(w) => format!("{}\n", truncate_str(line, w, "…")),
            None => format!("{line}\n"),
        }
    }
}

/// `text` cut (with `…`) or padded to `width` columns.
fn cell(text: &str, width: usize, right: bool) -> String {
    let align = if right {
        Alignment::Right
    } else {
        Alignment::Left
    };
    pad_str(text, width, align, Some("…")).into_owned()
}

/// The progress bar of a replay on stderr, fed by a thread that polls the run's [`Progress`]
/// ten times a second: bytes of `total` (the inputs' sizes) with the rate and the time left,
/// or a spinner with the bytes when the total is unknown (stdin); and the records framed, per
/// second. The run itself only adds to two counters.
pub struct ProgressDisplay {
    bar: ProgressBar,
    stop: mpsc::Sender<()>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl ProgressDisplay {
    /// Starts the bar. `force`: draw it even when stderr is not a terminal (`--progress always`).
    pub fn start(progress: Arc<Progress>, total: Option<u64>, force: bool) -> io::Result<Self> {
        let target = if force {
            ProgressDrawTarget::term_like_with_hz(Box::new(Stderr(::console::Term::stderr())), 10)
        } else {
            ProgressDrawTarget::stderr_with_hz(10)
        };
        let bar = match total {
            Some(len) => ProgressBar::with_draw_target(Some(len), target).with_style(
                ProgressStyle::with_template(
                    "{elapsed_precise} [{wide_bar}] {binary_bytes}/{binary_total_bytes} {binary_bytes_per_sec} eta {eta} {msg}",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
            ),
            None => ProgressBar::with_draw_target(None, target).with_style(
                ProgressStyle::with_template(
                    "{spinner} {elapsed_precise} {binary_bytes} read ({binary_bytes_per_sec}) {msg}",
                )
                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
            ),
        };
        let (stop, stopped) = mpsc::channel::<()>();
        let started = Instant::now();
        let update = move |bar: &ProgressBar| {
            let records = progress.records();
            let secs = started.elapsed().as_secs_f64().max(1e-3);
            bar.set_position(progress.bytes());
            bar.set_message(format!(
                "{records} records ({:.0} records/s)",
                records as f64 / secs
            ));
        };
        let shown = bar.clone();
        let thread = std::thread::Builder::new()
            .name("replay-progress".into())
            .spawn(move || {
                loop {
                    update(&bar);
                    bar.tick();
                    match stopped.recv_timeout(Duration::from_millis(100)) {
                        Err(mpsc::RecvTimeoutError::Timeout) => {}
                        _ => break,
                    }
                }
                update(&bar);
                bar.finish();
            })?;
        Ok(ProgressDisplay {
            bar: shown,
            stop,
            thread: Some(thread),
        })
    }

    /// Runs `f` (which writes to stderr) with the bar out of the way, then draws it again.
    pub fn suspend<R>(&self, f: impl FnOnce() -> R) -> R {
        self.bar.suspend(f)
    }

    /// Draws the final state (left on screen) and stops the thread.
    pub fn finish(mut self) {
        self.end();
    }

    fn end(&mut self) {
        let _ = self.stop.send(());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for ProgressDisplay {
    fn drop(&mut self) {
        self.end();
    }
}

/// The bar drawn on stderr whether or not it is a terminal (indicatif's own stderr target
/// hides itself on a pipe): `--progress always`.
#[derive(Debug)]
struct Stderr(::console::Term);

impl TermLike for Stderr {
    fn width(&self) -> u16 {
        self.0.size().1
    }
    fn move_cursor_up(&self, n: usize) -> io::Result<()> {
        self.0.move_cursor_up(n)
    }
    fn move_cursor_down(&self, n: usize) -> io::Result<()> {
        self.0.move_cursor_down(n)
    }
    fn move_cursor_right(&self, n: usize) -> io::Result<()> {
        self.0.move_cursor_right(n)
    }
    fn move_cursor_left(&self, n: usize) -> io::Result<()> {
        self.0.move_cursor_left(n)
    }
    fn write_line(&self, s: &str) -> io::Result<()> {
        self.0.write_line(s)
    }
    fn write_str(&self, s: &str) -> io::Result<()> {
        self.0.write_str(s)
    }
    fn clear_line(&self) -> io::Result<()> {
        self.0.clear_line()
    }
    fn flush(&self) -> io::Result<()> {
        self.0.flush()
    }
}

/// The total size of the inputs when every one is a file (`None` with stdin).
pub fn input_bytes(inputs: &[crate::source::Input]) -> Option<u64> {
    inputs
        .iter()
        .map(|i| match i {
            crate::source::Input::Stdin => None,
            crate::source::Input::File(p) => std::fs::metadata(p).ok().map(|m| m.len()),
        })
        .sum()
}

/// Whether stderr is a terminal (the progress bar's and the summary's `auto`).
pub fn stderr_is_terminal() -> bool {
    io::stderr().is_terminal()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colour_on_a_terminal_unless_no_color_is_set_and_not_empty() {
        let set = Some(std::ffi::OsStr::new("1"));
        let empty = Some(std::ffi::OsStr::new(""));
        for (when, terminal, no_color, expected) in [
            (When::Auto, true, None, true),
            (When::Auto, true, empty, true),
            (When::Auto, true, set, false),
            (When::Auto, false, None, false),
            (When::Always, false, set, true),
            (When::Never, true, None, false),
        ] {
            assert_eq!(
                color_with(when, terminal, no_color),
                expected,
                "{when:?} terminal={terminal} NO_COLOR={no_color:?}"
            );
        }
    }

    #[test]
    fn cells_are_cut_or_padded_and_paint_only_when_asked() {
        assert_eq!(cell("ak.rule", 9, false), "ak.rule  ");
        assert_eq!(cell("12", 4, true), "  12");
        assert_eq!(cell("AKIDATRISK0000000000", 8, false), "AKIDATR…");
        assert_eq!(paint("high", Severity::High, false), "high");
        assert_eq!(paint("high", Severity::High, true), "\x1b[31mhigh\x1b[0m");
    }

    #[test]
    fn a_terminal_line_is_cut_to_its_width() {
        let t = Table {
            color: false,
            width: Some(40),
        };
        let header = t.header();
        assert_eq!(::console::measure_text_width(header.trim_end()), 40);
        assert!(header.trim_end().ends_with('…'), "{header}");
        let wide = Table {
            color: false,
            width: None,
        };
        assert!(wide.header().trim_end().ends_with("SUMMARY"));
    }
}
