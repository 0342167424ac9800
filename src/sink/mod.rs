//! Outputs: JSON lines of events and the dead-letter file for rejected records.

use std::io::{self, Write};

use base64::Engine;
use serde::Serialize;

use crate::event::Origin;
use crate::provider::Reject;

/// One line of the dead-letter output: why, where from, and the record unchanged.
#[derive(Debug, Serialize)]
pub struct DeadLetter<'a> {
    pub kind: &'static str,
    pub reason: &'a str,
    pub origin: &'a Origin,
    /// The record as it was read, when it is UTF-8.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub raw: Option<&'a str>,
    /// The record as it was read, base64, when it is not UTF-8.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub raw_base64: Option<String>,
}

impl<'a> DeadLetter<'a> {
    pub fn new(reject: &'a Reject, raw: &'a [u8]) -> Self {
        let (raw, raw_base64) = match std::str::from_utf8(raw) {
            Ok(s) => (Some(s), None),
            Err(_) => (
                None,
                Some(base64::engine::general_purpose::STANDARD.encode(raw)),
            ),
        };
        DeadLetter {
            kind: reject.kind.as_str(),
            reason: &reject.reason,
            origin: &reject.origin,
            raw,
            raw_base64,
        }
    }
}

/// Writes `value` as one JSON line.
pub fn write_json_line<W: Write, T: Serialize>(out: &mut W, value: &T) -> io::Result<()> {
    serde_json::to_writer(&mut *out, value).map_err(io::Error::from)?;
    out.write_all(b"\n")
}

/// The default cap on a dead-letter file (`--dlq-max-bytes`): 256 MiB.
pub const DEFAULT_DLQ_MAX_BYTES: u64 = 256 << 20;

/// Rejected records listed on stderr (without `--dlq`) before the rest are only counted.
pub const MAX_REJECT_LINES: u64 = 20;

/// Where the command line's rejects go: a dead-letter file (JSON lines) up to a size cap, or a
/// few lines on stderr; past either limit they are counted, and [`RejectOutput::finish`] says
/// how many were not written. A 58 KB gzip of 20 million bad lines must not become gigabytes.
pub struct RejectOutput {
    file: Option<(std::path::PathBuf, io::BufWriter<std::fs::File>)>,
    max_bytes: u64,
    written_bytes: u64,
    written: u64,
    not_written: u64,
    error: Option<io::Error>,
    line: Vec<u8>,
}

impl RejectOutput {
    /// To `path` (created) capped at `max_bytes`, or to stderr when `path` is `None`.
    pub fn new(path: Option<&std::path::Path>, max_bytes: u64) -> io::Result<Self> {
        let file = match path {
            Some(p) => Some((
                p.to_path_buf(),
                io::BufWriter::new(std::fs::File::create(p)?),
            )),
            None => None,
        };
        Ok(RejectOutput {
            file,
            max_bytes,
            written_bytes: 0,
            written: 0,
            not_written: 0,
            error: None,
            line: Vec::new(),
        })
    }

    pub fn write(&mut self, reject: &Reject, raw: &[u8]) {
        match &mut self.file {
            None => {
                if self.written < MAX_REJECT_LINES {
                    self.written += 1;
                    eprintln!("rejected [{}] {reject}", reject.kind);
                } else {
                    self.not_written += 1;
                }
            }
            Some((_, w)) => {
                if self.error.is_some() {
                    self.not_written += 1;
                    return;
                }
                self.line.clear();
                if let Err(e) = write_json_line(&mut self.line, &DeadLetter::new(reject, raw)) {
                    self.error = Some(e);
                    return;
                }
                let len = self.line.len() as u64;
                if self.written_bytes.saturating_add(len) > self.max_bytes {
                    self.not_written += 1;
                    return;
                }
                match w.write_all(&self.line) {
                    Ok(()) => {
                        self.written_bytes += len;
                        self.written += 1;
                    }
                    Err(e) => self.error = Some(e),
                }
            }
        }
    }

    /// Flushes, and says on stderr what was not written. A write error is returned.
    pub fn finish(mut self) -> io::Result<()> {
        if let Some((path, w)) = &mut self.file {
            if let Some(e) = self.error.take() {
                return Err(e);
            }
            w.flush()?;
            if self.not_written > 0 {
                eprintln!(
                    "dead-letter file {} reached its limit of {} bytes: {} more rejected record(s) not written ({} written)",
                    path.display(),
                    self.max_bytes,
                    self.not_written,
                    self.written
                );
            }
        } else if self.not_written > 0 {
            eprintln!(
                "... and {} more rejected record(s) not listed (use --dlq FILE to keep them all)",
                self.not_written
            );
        }
        Ok(())
    }
}

/// Parses a byte size: `1048576`, `512k`, `256M`, `1G` (powers of 1024).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let (digits, unit) = match t.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => t.split_at(i),
        None => (t, ""),
    };
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("{s:?} is not a size (for example 512M, 1G, 1048576)"))?;
    let shift = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        "t" | "tb" | "tib" => 40,
        other => return Err(format!("{s:?}: unknown unit {other:?} (use k, M, G or T)")),
    };
    n.checked_mul(1u64 << shift)
        .ok_or_else(|| format!("{s:?} is too large"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::provider::RejectKind;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("1048576"), Ok(1 << 20));
        assert_eq!(parse_size("512k"), Ok(512 << 10));
        assert_eq!(parse_size("256M"), Ok(256 << 20));
        assert_eq!(parse_size("1G"), Ok(1 << 30));
        assert!(parse_size("99999999999T").is_err());
        assert!(parse_size("ten").is_err());
        assert!(parse_size("5X").is_err());
    }

    #[test]
    fn the_dead_letter_file_stops_at_its_cap_and_counts_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dlq.jsonl");
        let mut out = RejectOutput::new(Some(&path), 10_000).unwrap();
        let reject = Reject::new(RejectKind::BadJson, "bad", Origin::default());
        for _ in 0..1000 {
            out.write(&reject, b"{not json");
        }
        assert!(out.not_written > 0);
        out.finish().unwrap();
        let len = std::fs::metadata(&path).unwrap().len();
        assert!(len <= 10_000 && len > 9_000, "{len}");
    }
}
