//! State checkpoints: the engine's state together with the input offsets it reflects, written
//! atomically (temporary file, fsync, rename) in a versioned format, and read at start.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use flate2::Compression;
use flate2::read::GzDecoder;
use flate2::write::GzEncoder;
use serde::{Deserialize, Serialize};

use crate::engine::Snapshot;

/// Bumped when the layout changes; a checkpoint this version cannot read is not read (the
/// engine starts cold, with a warning). 3 (2026-12-04): remembered values as 32-bit hash folds
/// — an older akwatch would take them for 64-bit hashes and every value for new, so it must
/// refuse the file; version 2 files are still read (their hashes fold on reading).
pub const VERSION: u32 = 3;
/// The older versions this one reads.
const READS_ALSO: [u32; 1] = [2];
const FILE: &str = "checkpoint.json.gz";

/// The next offset to consume of one input partition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicOffset {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
}

#[derive(Clone, Serialize, Deserialize)]
pub struct Checkpoint {
    pub version: u32,
    pub written_at: DateTime<Utc>,
    pub offsets: Vec<TopicOffset>,
    pub engine: Snapshot,
}

pub fn path(dir: &Path) -> PathBuf {
    dir.join(FILE)
}

/// Writes the checkpoint atomically: a reader sees the previous one or this one, never a part.
pub fn write(dir: &Path, checkpoint: &Checkpoint) -> std::io::Result<u64> {
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(format!("{FILE}.tmp"));
    let file = std::fs::File::create(&tmp)?;
    let mut gz = GzEncoder::new(std::io::BufWriter::new(file), Compression::fast());
    serde_json::to_writer(&mut gz, checkpoint).map_err(std::io::Error::other)?;
    let mut inner = gz.finish()?;
    inner.flush()?;
    let file = inner.into_inner().map_err(|e| e.into_error())?;
    file.sync_all()?;
    let len = file.metadata()?.len();
    std::fs::rename(&tmp, path(dir))?;
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(len)
}

/// Reads the checkpoint if there is one; an unreadable or other-version file is an error the
/// caller reports (and starts cold).
pub fn read(dir: &Path) -> Result<Option<Checkpoint>, String> {
    let p = path(dir);
    let file = match std::fs::File::open(&p) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("{}: {e}", p.display())),
    };
    let mut text = Vec::new();
    GzDecoder::new(file)
        .read_to_end(&mut text)
        .map_err(|e| format!("{}: {e}", p.display()))?;
    #[derive(Deserialize)]
    struct Head {
        version: u32,
    }
    let head: Head = serde_json::from_slice(&text).map_err(|e| format!("{}: {e}", p.display()))?;
    if head.version != VERSION && !READS_ALSO.contains(&head.version) {
        return Err(format!(
            "{}: checkpoint version {} (this akwatch reads {VERSION})",
            p.display(),
            head.version
        ));
    }
    serde_json::from_slice(&text)
        .map(Some)
        .map_err(|e| format!("{}: {e}", p.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_raw(dir: &Path, version: u32) {
        let text = serde_json::json!({
            "version": version,
            "written_at": "2026-12-01T00:00:00Z",
            "offsets": [{"topic": "in", "partition": 0, "offset": 42}],
            "engine": {
                "rules_fingerprint": "f",
                "keys": [[7, {
                    "first": 1, "last": 2, "pending": 0,
                    "seen": [{"hash": 18_446_744_073_709_551_615_u64, "first": 1, "last": 2}],
                    "windows": [], "sightings": [],
                    "locations": [{"time": 2, "lat": 1.0, "lon": 2.0, "ip": 5}],
                }]],
                "created": [], "quarantined": [], "alarms": [],
            },
        });
        let mut gz = GzEncoder::new(
            std::fs::File::create(path(dir)).unwrap(),
            flate2::Compression::fast(),
        );
        serde_json::to_writer(&mut gz, &text).unwrap();
        gz.finish().unwrap();
    }

    /// A version 2 checkpoint (64-bit hashes) is read, its hashes folded; a version this
    /// akwatch does not know is refused with both versions named.
    #[test]
    fn version_2_is_read_and_an_unknown_version_refused() {
        let dir = tempfile::tempdir().unwrap();
        write_raw(dir.path(), 2);
        let c = read(dir.path()).unwrap().unwrap();
        assert_eq!(c.offsets[0].offset, 42);
        let seen = &c.engine.keys[0].1.seen;
        assert_eq!(seen[0].hash, crate::engine::state::fold(u64::MAX));
        write_raw(dir.path(), 99);
        let e = read(dir.path()).err().unwrap();
        assert!(
            e.contains("checkpoint version 99 (this akwatch reads 3)"),
            "{e}"
        );
    }
}
