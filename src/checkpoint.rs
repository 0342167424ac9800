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

/// Bumped when the layout changes; an older checkpoint is not read (the engine starts cold,
/// with a warning).
pub const VERSION: u32 = 2;
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
    if head.version != VERSION {
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
