//! File sources: paths, directories (recursive), `.gz` and stdin, read as a stream of records
//! and decoded into events.

pub mod framing;

use std::fs::File;
use std::io::{self, BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use flate2::read::MultiGzDecoder;

use crate::event::{Event, Origin};
use crate::provider::{Decoder, RecordRejects, Reject, RejectKind};
use framing::{Broken, FrameOptions, frame_records};

const READ_BUFFER: usize = 256 * 1024;

/// One thing to read: a file or standard input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    Stdin,
    File(PathBuf),
}

impl Input {
    /// How origins name this input.
    pub fn name(&self) -> String {
        match self {
            Input::Stdin => "-".to_owned(),
            Input::File(p) => p.display().to_string(),
        }
    }
}

/// A command-line path that cannot be read. (Its message carries the OS error; it is not a
/// `source` too, so an error chain prints it once.)
#[derive(Debug, thiserror::Error)]
#[error("cannot read {path}: {error}")]
pub struct InputError {
    pub path: String,
    pub error: io::Error,
}

/// The inputs named on the command line, with directories expanded.
#[derive(Debug, Default)]
pub struct Inputs {
    pub inputs: Vec<Input>,
    /// Files inside directories that were passed over because their names are not log-like.
    pub skipped: Vec<PathBuf>,
}

/// Expands `-` to stdin and directories to the log files below them (sorted, so runs are
/// repeatable). Files named explicitly are always read; inside directories only files whose
/// names look like logs (`*.json*`, `*.ndjson`, `*.log`, `*.gz`) are, so a `LICENSE` or an
/// `index.html` beside the logs is not mistaken for bad input.
pub fn expand(args: &[String]) -> Result<Inputs, InputError> {
    let mut out = Inputs::default();
    for arg in args {
        if arg == "-" {
            out.inputs.push(Input::Stdin);
            continue;
        }
        let path = Path::new(arg);
        let meta = std::fs::metadata(path).map_err(|error| InputError {
            path: arg.clone(),
            error,
        })?;
        if meta.is_dir() {
            let mut files = Vec::new();
            for entry in walkdir::WalkDir::new(path)
                .follow_links(true)
                .sort_by_file_name()
            {
                let entry = entry.map_err(|e| InputError {
                    path: e
                        .path()
                        .map_or_else(|| arg.clone(), |p| p.display().to_string()),
                    error: e
                        .into_io_error()
                        .unwrap_or_else(|| io::Error::other("directory loop")),
                })?;
                if !entry.file_type().is_file() {
                    continue;
                }
                if is_log_name(entry.path()) {
                    files.push(Input::File(entry.into_path()));
                } else {
                    out.skipped.push(entry.into_path());
                }
            }
            out.inputs.extend(files);
        } else {
            File::open(path).map_err(|error| InputError {
                path: arg.clone(),
                error,
            })?;
            out.inputs.push(Input::File(path.to_path_buf()));
        }
    }
    Ok(out)
}

fn is_log_name(path: &Path) -> bool {
    let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
        return false;
    };
    if name.starts_with('.') {
        return false;
    }
    let lower = name.to_ascii_lowercase();
    lower.contains(".json")
        || lower.ends_with(".ndjson")
        || lower.ends_with(".log")
        || lower.ends_with(".gz")
}

/// How far reading has come, for a progress display that polls it from another thread: the
/// bytes read from the inputs as stored (compressed, for `.gz`: so they add up to the files'
/// sizes) and the records framed. Counted with relaxed atomics, once per read of up to 256 KiB
/// and once per record.
#[derive(Debug, Default)]
pub struct Progress {
    bytes: AtomicU64,
    records: AtomicU64,
}

impl Progress {
    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    pub fn records(&self) -> u64 {
        self.records.load(Ordering::Relaxed)
    }

    pub(crate) fn record(&self) {
        self.records.fetch_add(1, Ordering::Relaxed);
    }
}

/// A reader that adds what it reads to a [`Progress`].
struct Counted<R> {
    inner: R,
    progress: Arc<Progress>,
}

impl<R: Read> Read for Counted<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.progress.bytes.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}

/// Opens an input as a buffered reader, transparently gunzipping it when it starts with the
/// gzip magic bytes (whatever its name).
pub fn open(input: &Input) -> io::Result<Box<dyn BufRead>> {
    open_counted(input, None)
}

/// [`open`], the bytes read from the input (before gunzip) added to `progress` when given.
pub fn open_counted(
    input: &Input,
    progress: Option<&Arc<Progress>>,
) -> io::Result<Box<dyn BufRead>> {
    let raw: Box<dyn Read> = match input {
        Input::Stdin => Box::new(io::stdin()),
        Input::File(p) => Box::new(File::open(p)?),
    };
    let raw: Box<dyn Read> = match progress {
        Some(p) => Box::new(Counted {
            inner: raw,
            progress: Arc::clone(p),
        }),
        None => raw,
    };
    let mut reader = BufReader::with_capacity(READ_BUFFER, raw);
    let is_gzip = {
        let head = reader.fill_buf()?;
        head.len() >= 2 && head[0] == 0x1f && head[1] == 0x8b
    };
    if is_gzip {
        Ok(Box::new(BufReader::with_capacity(
            READ_BUFFER,
            MultiGzDecoder::new(reader),
        )))
    } else {
        Ok(Box::new(reader))
    }
}

/// What reading one input produced.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ReadCounts {
    pub records: u64,
    pub events: u64,
    pub rejected: u64,
}

/// A reject together with the raw bytes of the record it came from (for the dead-letter
/// output, which keeps records unchanged).
pub struct Rejected<'a> {
    pub reject: Reject,
    pub raw: &'a [u8],
}

/// Reads one input to the end, decoding every record. Events go to `on_event`, rejects (with
/// their raw record) to `on_reject`. A read error part-way (a corrupt `.gz`) is itself a
/// reject; the records before it are kept.
///
/// Each record is isolated: a panic while decoding it, or an error `on_event` returns for one
/// of its events (the caller's own isolation of what it does with the event), makes the record
/// an `internal_error` reject, and reading goes on.
pub fn read_input(
    input: &Input,
    decoder: &Decoder,
    options: FrameOptions,
    on_event: &mut dyn FnMut(Event) -> Result<(), String>,
    on_reject: &mut dyn FnMut(Rejected<'_>),
) -> ReadCounts {
    read_input_counted(input, decoder, options, None, on_event, on_reject)
}

/// [`read_input`], its bytes and records added to `progress` when given.
pub fn read_input_counted(
    input: &Input,
    decoder: &Decoder,
    options: FrameOptions,
    progress: Option<&Arc<Progress>>,
    on_event: &mut dyn FnMut(Event) -> Result<(), String>,
    on_reject: &mut dyn FnMut(Rejected<'_>),
) -> ReadCounts {
    let name = input.name();
    let mut counts = ReadCounts::default();
    let reader = match open_counted(input, progress) {
        Ok(r) => r,
        Err(e) => {
            counts.rejected += 1;
            on_reject(Rejected {
                reject: Reject::new(
                    RejectKind::ReadError,
                    format!("cannot read: {e}"),
                    file_origin(&name, 0, 0),
                ),
                raw: &[],
            });
            return counts;
        }
    };
    let mut results = Vec::new();
    // The framer and gunzip are isolated too: a failure inside them ends this input as a
    // `read_error` (the records before it kept), never the run.
    let counts_ref = &mut counts;
    let framed = crate::isolate::guard(|| {
        frame_records(reader, options, |frame| {
            let counts = &mut *counts_ref;
            counts.records += 1;
            if let Some(p) = progress {
                p.record();
            }
            let origin = file_origin(&name, frame.index, frame.line);
            if let Some((kind, reason)) = frame.broken {
                counts.rejected += 1;
                on_reject(Rejected {
                    reject: broken_reject(kind, reason, origin),
                    raw: frame.bytes,
                });
                return;
            }
            if let Err(reason) =
                crate::isolate::guard(|| decoder.decode(frame.bytes, &origin, &mut results))
            {
                results.clear();
                counts.rejected += 1;
                on_reject(Rejected {
                    reject: Reject::new(RejectKind::InternalError, reason, origin.clone()),
                    raw: frame.bytes,
                });
                return;
            }
            // One dead letter per record, however many of its events were rejected.
            let mut rejects = RecordRejects::default();
            for result in results.drain(..) {
                match result {
                    Ok(event) => match on_event(event) {
                        Ok(()) => counts.events += 1,
                        Err(reason) => rejects.add(Reject::new(
                            RejectKind::InternalError,
                            reason,
                            origin.clone(),
                        )),
                    },
                    Err(reject) => rejects.add(reject),
                }
            }
            counts.rejected += rejects.len();
            if let Some(reject) = rejects.take() {
                on_reject(Rejected {
                    reject,
                    raw: frame.bytes,
                });
            }
        })
    });
    let outcome = match framed {
        Ok(r) => r.map_err(|e| format!("read error: {e}")),
        Err(reason) => Err(reason),
    };
    if let Err(e) = outcome {
        counts.rejected += 1;
        on_reject(Rejected {
            reject: Reject::new(
                RejectKind::ReadError,
                e,
                file_origin(&name, counts.records, 0),
            ),
            raw: &[],
        });
    }
    counts
}

/// Every record of the inputs (`-`, files, directories, gzip), framed as `read_input` frames them
/// but not decoded: for the load generator and the benches.
pub fn read_records(paths: &[String]) -> anyhow::Result<Vec<Vec<u8>>> {
    let mut records = Vec::new();
    for input in &expand(paths)?.inputs {
        frame_records(open(input)?, FrameOptions::default(), |f| {
            records.push(f.bytes.to_vec())
        })?;
    }
    Ok(records)
}

/// The reject of a frame the framer could not complete.
pub(crate) fn broken_reject(kind: Broken, reason: String, origin: Origin) -> Reject {
    let kind = match kind {
        Broken::Truncated => RejectKind::Truncated,
        Broken::TooLarge => RejectKind::TooLarge,
    };
    Reject::new(kind, reason, origin)
}

pub(crate) fn file_origin(name: &str, index: u64, line: u64) -> Origin {
    Origin {
        file: Some(name.to_owned()),
        record: Some(index),
        line: (line > 0).then_some(line),
        ..Origin::default()
    }
}

/// Files named, and the files in directories named (not hidden ones: editors' and `rsync`'s
/// temporary files), sorted.
pub fn files_in(paths: &[PathBuf]) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for p in paths {
        if p.is_dir() {
            let mut v: Vec<PathBuf> = std::fs::read_dir(p)
                .map(|rd| {
                    rd.filter_map(Result::ok)
                        .map(|e| e.path())
                        .filter(|f| f.is_file())
                        .filter(|f| {
                            !f.file_name()
                                .and_then(|n| n.to_str())
                                .is_some_and(|n| n.starts_with('.'))
                        })
                        .collect()
                })
                .unwrap_or_default();
            v.sort();
            out.extend(v);
        } else {
            out.push(p.clone());
        }
    }
    out
}
