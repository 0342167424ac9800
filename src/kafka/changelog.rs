//! The changelog topic (`<group>-changelog`, compacted): the detection state of each partition
//! of the repartition topic, so that it moves with the partition (the Kafka Streams changelog,
//! written as periodic snapshots rather than per update: a key's state changes with nearly every
//! event, and a snapshot costs a pointer per key on the consume task, see `Engine::snapshot`).
//!
//! Partition `r`'s state lives in changelog partition `r`:
//! - chunks, key `r/c/<writer>/<seq>/<i>`: the gzipped JSON [`PartSnapshot`], cut in pieces
//!   under the broker's message size;
//! - the manifest, key `r/m`, written after every chunk is acknowledged: the writer, the
//!   sequence number, the chunk count and the repartition offset the state reflects.
//!
//! A reader keeps the last manifest and the chunks it names (keys are unique per writer and
//! sequence, so two owners writing in turn never mix); superseded chunks are deleted by
//! tombstones once a newer manifest is acknowledged, and compaction drops them.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use flate2::Compression;
use flate2::read::GzDecoder;
use flate2::write::GzEncoder;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};

use crate::engine::Snapshot;

/// A chunk's size: under the default 1 MB message size of brokers and clients.
const CHUNK: usize = 512 * 1024;

/// One repartition partition's state.
#[derive(Clone, Serialize, Deserialize)]
pub struct PartSnapshot {
    /// The repartition offset to resume from: every record before it is in the state, and so
    /// are the events after it that `applied` covers.
    pub offset: i64,
    /// Per input partition, the last event (offset, index) applied.
    pub applied: Vec<(String, i32, i64, u32)>,
    pub engine: Snapshot,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Manifest {
    writer: String,
    seq: u64,
    chunks: u32,
    bytes: u64,
    offset: i64,
    written_at: chrono::DateTime<chrono::Utc>,
}

fn manifest_key(r: i32) -> String {
    format!("{r}/m")
}

fn chunk_key(r: i32, writer: &str, seq: u64, i: u32) -> String {
    format!("{r}/c/{writer}/{seq}/{i}")
}

/// Writes snapshots of the partitions this instance owns. Cheap to clone (one producer).
#[derive(Clone)]
pub struct ChangelogWriter {
    producer: FutureProducer<super::Logged>,
    topic: String,
    /// A random id of this process: chunk keys of two owners never collide.
    writer: String,
    seq: Arc<AtomicU64>,
    /// The chunks of each partition's last snapshot (ours, or the one we restored), deleted
    /// once a newer one is complete.
    previous: Arc<Mutex<HashMap<i32, Vec<String>>>>,
}

impl ChangelogWriter {
    pub fn new(client: &ClientConfig, group: &str) -> anyhow::Result<ChangelogWriter> {
        let mut c = client.clone();
        c.set("acks", "all")
            .set("enable.idempotence", "true")
            .set("message.timeout.ms", "60000")
            .set("linger.ms", "5")
            .set("compression.type", "none")
            .set("message.max.bytes", (2 * CHUNK).to_string());
        Ok(ChangelogWriter {
            producer: c.create_with_context(super::Logged)?,
            topic: super::repartition::changelog_topic(group),
            writer: format!(
                "{:016x}",
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_nanos() as u64)
                    ^ u64::from(std::process::id()).rotate_left(32)
            ),
            seq: Arc::new(AtomicU64::new(0)),
            previous: Arc::default(),
        })
    }

    /// Serialises and writes partition `r`'s snapshot; returns its compressed size once every
    /// piece is acknowledged.
    pub async fn write(&self, r: i32, snapshot: &PartSnapshot) -> Result<u64, String> {
        let bytes = encode(snapshot)?;
        let seq = self.seq.fetch_add(1, Ordering::Relaxed) + 1;
        let pieces: Vec<&[u8]> = bytes.chunks(CHUNK).collect();
        let mut keys = Vec::with_capacity(pieces.len());
        let mut pending = Vec::with_capacity(pieces.len());
        for (i, piece) in pieces.iter().enumerate() {
            let key = chunk_key(r, &self.writer, seq, i as u32);
            pending.push(self.send(r, &key, Some(piece))?);
            keys.push(key);
        }
        for p in pending {
            wait(p).await?;
        }
        let manifest = Manifest {
            writer: self.writer.clone(),
            seq,
            chunks: keys.len() as u32,
            bytes: bytes.len() as u64,
            offset: snapshot.offset,
            written_at: chrono::Utc::now(),
        };
        let m = serde_json::to_vec(&manifest).map_err(|e| e.to_string())?;
        wait(self.send(r, &manifest_key(r), Some(&m))?).await?;
        // The previous snapshot's chunks are superseded: tombstones (not awaited; a lost one
        // leaves a chunk that no manifest names).
        let old = lock(&self.previous).insert(r, keys);
        if let Some(old) = old {
            for key in old {
                let _ = self.send(r, &key, None);
            }
        }
        Ok(bytes.len() as u64)
    }

    /// The partition moved away: its chunks are no longer ours to delete (the new owner's
    /// manifest may still name them until it writes its own).
    pub fn forget(&self, r: i32) {
        lock(&self.previous).remove(&r);
    }

    /// The chunks of the snapshot restored for `r`: ours to delete once we wrote a newer one.
    pub fn adopt(&self, r: i32, chunks: Vec<String>) {
        lock(&self.previous).insert(r, chunks);
    }

    fn send(
        &self,
        r: i32,
        key: &str,
        payload: Option<&[u8]>,
    ) -> Result<rdkafka::producer::DeliveryFuture, String> {
        let mut record = FutureRecord::<str, [u8]>::to(&self.topic)
            .key(key)
            .partition(r);
        if let Some(p) = payload {
            record = record.payload(p);
        }
        self.producer
            .send_result(record)
            .map_err(|(e, _)| format!("changelog write: {e}"))
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

async fn wait(f: rdkafka::producer::DeliveryFuture) -> Result<(), String> {
    match f.await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err((e, _))) => Err(format!("changelog write: {e}")),
        Err(_) => Err("changelog write cancelled".to_owned()),
    }
}

fn encode(snapshot: &PartSnapshot) -> Result<Vec<u8>, String> {
    let mut gz = GzEncoder::new(Vec::new(), Compression::fast());
    serde_json::to_writer(&mut gz, snapshot).map_err(|e| e.to_string())?;
    gz.flush().map_err(|e| e.to_string())?;
    gz.finish().map_err(|e| e.to_string())
}

/// Reads a snapshot (gzip JSON) as the restore does.
pub fn decode(bytes: &[u8]) -> Result<PartSnapshot, String> {
    let mut text = Vec::new();
    GzDecoder::new(bytes)
        .read_to_end(&mut text)
        .map_err(|e| e.to_string())?;
    serde_json::from_slice(&text).map_err(|e| e.to_string())
}

/// What a restore found.
pub struct Restored {
    pub snapshot: Option<PartSnapshot>,
    /// The keys of its chunks.
    pub chunks: Vec<String>,
    /// Changelog records read, and the time it took.
    pub records: u64,
    pub took: Duration,
}

/// Reads changelog partition `r` to its end and returns the last complete snapshot (blocking;
/// bounded by `limit`).
pub fn restore(
    client: &ClientConfig,
    group: &str,
    r: i32,
    limit: Duration,
) -> Result<Restored, String> {
    let started = Instant::now();
    let topic = super::repartition::changelog_topic(group);
    let mut c = client.clone();
    c.set("enable.auto.commit", "false")
        .set("group.id", format!("{group}-restore"))
        .set("enable.partition.eof", "false");
    let consumer: BaseConsumer = c.create().map_err(|e| e.to_string())?;
    let (low, high) = consumer
        .fetch_watermarks(&topic, r, limit)
        .map_err(|e| format!("{topic}/{r}: {e}"))?;
    let mut manifest: Option<Manifest> = None;
    let mut chunks: HashMap<String, Vec<u8>> = HashMap::new();
    let mut records = 0u64;
    if high > low {
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(&topic, r, Offset::Offset(low))
            .map_err(|e| e.to_string())?;
        consumer.assign(&tpl).map_err(|e| e.to_string())?;
        let mut next = low;
        while next < high {
            if started.elapsed() > limit {
                return Err(format!(
                    "{topic}/{r}: not read to its end within {limit:?} ({next} of {high})"
                ));
            }
            let Some(m) = consumer.poll(Duration::from_millis(200)) else {
                continue;
            };
            // A transient error (the broker away for a moment) is retried until the limit.
            let Ok(m) = m else {
                continue;
            };
            next = m.offset() + 1;
            records += 1;
            let Some(key) = m.key().and_then(|k| std::str::from_utf8(k).ok()) else {
                continue;
            };
            if key == manifest_key(r) {
                if let Some(p) = m.payload() {
                    match serde_json::from_slice::<Manifest>(p) {
                        Ok(x) => manifest = Some(x),
                        Err(e) => {
                            tracing::warn!(partition = r, error = %e, "a changelog manifest is unreadable; skipped")
                        }
                    }
                }
            } else {
                match m.payload() {
                    Some(p) => {
                        chunks.insert(key.to_owned(), p.to_vec());
                    }
                    None => {
                        chunks.remove(key);
                    }
                }
            }
        }
    }
    let mut keys = Vec::new();
    let snapshot = match manifest {
        None => None,
        Some(m) => {
            let mut bytes = Vec::with_capacity(m.bytes.min(1 << 30) as usize);
            for i in 0..m.chunks {
                let key = chunk_key(r, &m.writer, m.seq, i);
                let piece = chunks.get(&key).ok_or_else(|| {
                    format!("{topic}/{r}: the last snapshot's chunk {key} is missing")
                })?;
                bytes.extend_from_slice(piece);
                keys.push(key);
            }
            Some(decode(&bytes).map_err(|e| format!("{topic}/{r}: {e}"))?)
        }
    };
    Ok(Restored {
        snapshot,
        chunks: keys,
        records,
        took: started.elapsed(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seed(name: &str) -> Vec<u8> {
        std::fs::read(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("fuzz/seeds/internal")
                .join(name),
        )
        .unwrap()
    }

    /// The fuzz seeds are real records: a snapshot and the three kinds of repartition record.
    #[test]
    fn the_internal_records_decode_and_a_snapshot_round_trips() {
        let s = decode(&seed("snapshot.json.gz")).unwrap();
        assert_eq!((s.offset, s.applied.len()), (12, 1));
        let back = decode(&encode(&s).unwrap()).unwrap();
        assert_eq!(back.offset, 12);
        assert_eq!(back.applied, s.applied);
        for (name, kind) in [
            ("event.json", "event"),
            ("marks.json", "marks"),
            ("progress.json", "progress"),
        ] {
            let r = crate::kafka::repartition::decode(&seed(name)).unwrap();
            let got = match r {
                crate::kafka::repartition::Record::Event { .. } => "event",
                crate::kafka::repartition::Record::Marks { .. } => "marks",
                crate::kafka::repartition::Record::Progress { .. } => "progress",
            };
            assert_eq!(got, kind);
        }
        assert!(decode(b"not gzip").is_err());
        assert!(crate::kafka::repartition::decode(b"{\"kind\":\"event\"}").is_err());
    }
}
