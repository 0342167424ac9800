//! `replay` on every core, with the output of one thread.
//!
//! ```text
//!  reader ──batches──▶ decode + enrich × T ──▶ dispatcher ──events by key──▶ engine shard × S
//!  (framing, in order)   (any order)           (back in order)                (own keys, in order)
//!                                                    │                              │
//!                                                    └──records──▶ merger ◀──alarms─┘
//!                                                                 (the caller's thread)
//! ```
//!
//! - The reader frames the inputs into batches of records, numbered in input order.
//! - Decode workers decode and enrich whole batches, in any order.
//! - The dispatcher puts the batches back in order and hands every event to the engine shard
//!   that owns its subject (access key, else principal; the service's `route`), with a
//!   marks-only copy to the shards it leaves cross-key marks in. So each shard sees its keys'
//!   events, and the marks for them, in input order: what one engine would see of them.
//! - The merger takes each batch's records in order and each event's alarms from its shard,
//!   and hands them to the caller in record order: the same alarms, ids and order as
//!   [`super::run`] (`replay --threads 1`); the end-of-run updates are sorted by alarm id and
//!   the final alarms by first hit and id, as one engine sorts them.
//! - At most [`IN_FLIGHT`] batches are anywhere between the reader and the merger (a ticket
//!   each), so memory is bounded on any input however the stages' speeds differ.
//! - The shards' caps are the totals divided among them ([`crate::engine::Limits::per_partition`]),
//!   as in the service: when a cap is reached, which keys lose state may differ from one
//!   engine's choice.

use std::collections::BTreeMap;
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::sync::{Arc, Mutex};

use crate::alarm::Alarm;
use crate::engine::{Engine, Stats, route};
use crate::enrich::{Enricher, Enrichment};
use crate::event::{Event, Origin};
use crate::inventory::Batch;
use crate::provider::{Decoder, RecordRejects, Reject, RejectKind};
use crate::source::framing::{FrameOptions, frame_records};
use crate::source::{Input, Progress, Rejected, open_counted};

/// Records per batch (a batch also closes at [`BATCH_BYTES`]).
const BATCH_RECORDS: usize = 256;
/// Bytes of records per batch.
const BATCH_BYTES: usize = 512 * 1024;
/// Batches anywhere in the pipeline at once.
const IN_FLIGHT: usize = 16;

/// One record as framed: its bytes in the batch's buffer, or a reject of the whole record.
struct Framed {
    range: std::ops::Range<usize>,
    origin: Origin,
    broken: Option<Reject>,
}

/// Records framed in input order.
struct RawBatch {
    seq: u64,
    data: Vec<u8>,
    records: Vec<Framed>,
}

/// What decoding made of one record, in the record's order.
enum Slot {
    /// An event: its index in the batch's events.
    Event(u32),
    Reject(Reject),
    /// An event whose enrichment failed (a panic, isolated): why.
    Failed(String),
}

struct Record {
    range: std::ops::Range<usize>,
    origin: Origin,
    /// The whole record rejected (broken frame, a panic while decoding, a read error).
    whole: Option<Reject>,
    slots: Vec<Slot>,
}

/// A batch decoded and enriched.
struct Decoded {
    seq: u64,
    data: Vec<u8>,
    records: Vec<Record>,
    events: Vec<(Event, Enrichment)>,
}

/// The records of a batch, for the merger (its events gone to the shards).
struct Meta {
    data: Vec<u8>,
    records: Vec<Record>,
}

/// What a shard does with the events of a batch (shared by all shards, read only: no event is
/// copied or moved on its way).
struct Work {
    events: Arc<Vec<(Event, Enrichment)>>,
    tasks: Vec<Task>,
}

enum Task {
    /// Process the event (its index in the batch).
    Process(u32),
    /// Only the cross-key marks of an event another shard owns.
    Marks(u32),
}

/// A shard's results for one batch: alarms (or why processing failed) per event index.
type Results = Vec<(u32, Result<Vec<Alarm>, String>)>;

/// What a shard hands back for one batch: its results, and its inventory batch when that
/// became full (`replay --store`).
type Out = (Results, Option<Batch>);

/// What a shard hands back at the end.
struct Finished {
    flushed: Vec<Alarm>,
    alarms: Vec<Alarm>,
    stats: Stats,
    inventory: Option<Batch>,
}

/// `replay --store` on shards: each counts its own keys' events in an inventory batch of its
/// own (a key's events all go to one shard, so its rows come from one batch, in order; the
/// rest are sums). A batch that reaches `rows` (the caller gives each shard its share of one
/// batch's rows) comes back to the caller's thread, to `on_batch`, in the merged order of the
/// records; what is left at the end is in [`Counts::inventory`].
pub struct Inventory<'a> {
    /// Rows a batch may reach before it is handed on (`None`: never, all kept to the end).
    pub rows: Option<usize>,
    pub on_batch: &'a mut dyn FnMut(Batch),
}

/// Totals of a run.
#[derive(Debug, Default)]
pub struct Counts {
    pub events: u64,
    pub rejected: u64,
    pub notifications: u64,
    /// The end-of-run state of every alarm, sorted by first hit and id.
    pub alarms: Vec<Alarm>,
    pub stats: Stats,
    /// The shards' inventory batches left at the end (`replay --store`).
    pub inventory: Vec<Batch>,
}

/// Runs the pipeline over `inputs` on `decoders` decode threads and `engines.len()` engine
/// shards. `on_alarm` and `on_reject` are called on this thread, in the order a single engine
/// would produce them (`engine.flush()`'s updates last). The reader adds what it reads to
/// `progress` when given. With `inventory`, the shards also count their events in inventory
/// batches ([`Inventory`]).
#[allow(clippy::too_many_arguments)] // Each is a different thing the stages need.
pub fn run(
    inputs: &[Input],
    progress: Option<&Arc<Progress>>,
    decoder: &Decoder,
    enricher: &Enricher,
    engines: Vec<Engine>,
    decoders: usize,
    inventory: Option<Inventory<'_>>,
    on_alarm: &mut dyn FnMut(&Alarm),
    on_reject: &mut dyn FnMut(Rejected<'_>),
) -> Result<Counts, String> {
    let counting = inventory.is_some();
    let rows = inventory.as_ref().and_then(|i| i.rows);
    let shards = u32::try_from(engines.len().max(1)).unwrap_or(u32::MAX);
    let decoders = decoders.max(1);
    let (tickets_tx, tickets_rx) = sync_channel::<()>(IN_FLIGHT);
    for _ in 0..IN_FLIGHT {
        let _ = tickets_tx.send(());
    }
    let (raw_tx, raw_rx) = sync_channel::<RawBatch>(IN_FLIGHT);
    // Shared by the decode workers; gone with the last of them, so the reader cannot wait on
    // it forever.
    let raw_rx = Arc::new(Mutex::new(raw_rx));
    let (decoded_tx, decoded_rx) = sync_channel::<Decoded>(IN_FLIGHT);
    let (meta_tx, meta_rx) = sync_channel::<Meta>(IN_FLIGHT);
    let mut work_txs = Vec::new();
    let mut work_rxs = Vec::new();
    let mut out_txs = Vec::new();
    let mut out_rxs = Vec::new();
    for _ in 0..shards {
        let (tx, rx) = sync_channel::<Work>(IN_FLIGHT);
        work_txs.push(tx);
        work_rxs.push(rx);
        let (tx, rx) = sync_channel::<Result<Out, Box<Finished>>>(IN_FLIGHT + 1);
        out_txs.push(tx);
        out_rxs.push(rx);
    }
    // Every channel end is owned by one thread, or by this closure: if it returns early (a
    // thread that cannot start), its ends are dropped before the scope joins the threads, so
    // none of them waits forever.
    std::thread::scope(move |scope| {
        let reader = std::thread::Builder::new()
            .name("replay-read".into())
            .spawn_scoped(scope, move || read(inputs, progress, &tickets_rx, &raw_tx))
            .map_err(|e| format!("cannot start a thread: {e}"))?;
        let mut workers = Vec::new();
        for i in 0..decoders {
            let (raw_rx, decoded_tx) = (Arc::clone(&raw_rx), decoded_tx.clone());
            workers.push(
                std::thread::Builder::new()
                    .name(format!("replay-decode-{i}"))
                    .spawn_scoped(scope, move || {
                        decode(&raw_rx, &decoded_tx, decoder, enricher)
                    })
                    .map_err(|e| format!("cannot start a thread: {e}"))?,
            );
        }
        drop(decoded_tx);
        drop(raw_rx);
        let dispatcher = std::thread::Builder::new()
            .name("replay-dispatch".into())
            .spawn_scoped(scope, move || {
                dispatch(&decoded_rx, &meta_tx, &work_txs, shards)
            })
            .map_err(|e| format!("cannot start a thread: {e}"))?;
        let mut shard_threads = Vec::new();
        for (i, (engine, (work_rx, out_tx))) in engines
            .into_iter()
            .zip(work_rxs.into_iter().zip(out_txs))
            .enumerate()
        {
            shard_threads.push(
                std::thread::Builder::new()
                    .name(format!("replay-shard-{i}"))
                    .spawn_scoped(scope, move || {
                        shard(
                            engine,
                            counting.then(Batch::default),
                            rows,
                            &work_rx,
                            &out_tx,
                        )
                    })
                    .map_err(|e| format!("cannot start a thread: {e}"))?,
            );
        }
        let merged = merge(
            &meta_rx,
            &out_rxs,
            tickets_tx,
            inventory.map(|i| i.on_batch),
            on_alarm,
            on_reject,
        );
        // Every stage ends when its input does; a stage that panicked (a bug: records are
        // isolated inside them) is the run's error, not a hang or a lost record.
        drop(meta_rx);
        drop(out_rxs);
        let mut stopped = reader.join().is_err();
        for w in workers {
            stopped |= w.join().is_err();
        }
        stopped |= dispatcher.join().is_err();
        for s in shard_threads {
            stopped |= s.join().is_err();
        }
        if stopped {
            return Err("internal error: a replay thread stopped".to_owned());
        }
        merged
    })
}

/// The reader: frames every input into batches, in order.
fn read(
    inputs: &[Input],
    progress: Option<&Arc<Progress>>,
    tickets: &Receiver<()>,
    out: &SyncSender<RawBatch>,
) {
    let mut seq = 0u64;
    let mut batch = RawBatch {
        seq,
        data: Vec::new(),
        records: Vec::new(),
    };
    // Hands the batch on (after a ticket: at most IN_FLIGHT batches are on their way).
    let mut send = |batch: &mut RawBatch| -> bool {
        if batch.records.is_empty() {
            return true;
        }
        seq += 1;
        let full = std::mem::replace(
            batch,
            RawBatch {
                seq,
                data: Vec::with_capacity(BATCH_BYTES + BATCH_BYTES / 4),
                records: Vec::with_capacity(BATCH_RECORDS),
            },
        );
        tickets.recv().is_ok() && out.send(full).is_ok()
    };
    for input in inputs {
        let name = input.name();
        let whole = |batch: &mut RawBatch, reject: Reject| {
            batch.records.push(Framed {
                range: 0..0,
                origin: reject.origin.clone(),
                broken: Some(reject),
            });
        };
        let reader = match open_counted(input, progress) {
            Ok(r) => r,
            Err(e) => {
                whole(
                    &mut batch,
                    Reject::new(
                        RejectKind::ReadError,
                        format!("cannot read: {e}"),
                        crate::source::file_origin(&name, 0, 0),
                    ),
                );
                continue;
            }
        };
        let mut records = 0u64;
        let mut going = true;
        let framed = crate::isolate::guard(|| {
            frame_records(reader, FrameOptions::default(), |frame| {
                if !going {
                    return;
                }
                records += 1;
                if let Some(p) = progress {
                    p.record();
                }
                let origin = crate::source::file_origin(&name, frame.index, frame.line);
                let start = batch.data.len();
                batch.data.extend_from_slice(frame.bytes);
                let broken = frame.broken.map(|(kind, reason)| {
                    crate::source::broken_reject(kind, reason, origin.clone())
                });
                batch.records.push(Framed {
                    range: start..batch.data.len(),
                    origin,
                    broken,
                });
                if (batch.records.len() >= BATCH_RECORDS || batch.data.len() >= BATCH_BYTES)
                    && !send(&mut batch)
                {
                    going = false;
                }
            })
        });
        if !going {
            return;
        }
        let outcome = match framed {
            Ok(r) => r.map(|_| ()).map_err(|e| format!("read error: {e}")),
            Err(reason) => Err(reason),
        };
        if let Err(e) = outcome {
            whole(
                &mut batch,
                Reject::new(
                    RejectKind::ReadError,
                    e,
                    crate::source::file_origin(&name, records, 0),
                ),
            );
        }
    }
    send(&mut batch);
}

/// A decode worker: decodes and enriches whole batches.
fn decode(
    input: &Mutex<Receiver<RawBatch>>,
    out: &SyncSender<Decoded>,
    decoder: &Decoder,
    enricher: &Enricher,
) {
    let mut results = Vec::new();
    loop {
        let batch = {
            let Ok(rx) = input.lock() else { return };
            match rx.recv() {
                Ok(b) => b,
                Err(_) => return,
            }
        };
        let mut records = Vec::with_capacity(batch.records.len());
        let mut events = Vec::with_capacity(batch.records.len());
        for framed in batch.records {
            let mut record = Record {
                range: framed.range,
                origin: framed.origin,
                whole: framed.broken,
                slots: Vec::new(),
            };
            if record.whole.is_none() {
                let bytes = &batch.data[record.range.clone()];
                match crate::isolate::guard(|| decoder.decode(bytes, &record.origin, &mut results))
                {
                    Err(reason) => {
                        results.clear();
                        record.whole = Some(Reject::new(
                            RejectKind::InternalError,
                            reason,
                            record.origin.clone(),
                        ));
                    }
                    Ok(()) => {
                        for result in results.drain(..) {
                            match result {
                                Ok(event) => {
                                    match crate::isolate::guard(|| enricher.enrich(&event)) {
                                        Ok(e) => {
                                            let index =
                                                u32::try_from(events.len()).unwrap_or(u32::MAX);
                                            record.slots.push(Slot::Event(index));
                                            events.push((event, e));
                                        }
                                        Err(reason) => record.slots.push(Slot::Failed(reason)),
                                    }
                                }
                                Err(reject) => record.slots.push(Slot::Reject(reject)),
                            }
                        }
                    }
                }
            }
            records.push(record);
        }
        let decoded = Decoded {
            seq: batch.seq,
            data: batch.data,
            records,
            events,
        };
        if out.send(decoded).is_err() {
            return;
        }
    }
}

/// The dispatcher: batches back in order, each event to the shard that owns its subject.
fn dispatch(
    input: &Receiver<Decoded>,
    meta: &SyncSender<Meta>,
    work: &[SyncSender<Work>],
    shards: u32,
) {
    let mut next = 0u64;
    let mut waiting: BTreeMap<u64, Decoded> = BTreeMap::new();
    while let Ok(batch) = input.recv() {
        waiting.insert(batch.seq, batch);
        while let Some(batch) = waiting.remove(&next) {
            next += 1;
            let mut per_shard: Vec<Vec<Task>> = (0..shards).map(|_| Vec::new()).collect();
            for (index, (event, _)) in batch.events.iter().enumerate() {
                // (Test hook, debug builds: a stage that fails outside any record's isolation.)
                #[cfg(debug_assertions)]
                crate::isolate::fault_point(&format!("replay-dispatch:{}", event.event_id));
                let index = u32::try_from(index).unwrap_or(u32::MAX);
                let (owner, others) = route(event, shards);
                for o in others {
                    if let Some(w) = per_shard.get_mut(o as usize) {
                        w.push(Task::Marks(index));
                    }
                }
                if let Some(w) = per_shard.get_mut(owner as usize) {
                    w.push(Task::Process(index));
                }
            }
            let sent = meta
                .send(Meta {
                    data: batch.data,
                    records: batch.records,
                })
                .is_ok();
            let events = Arc::new(batch.events);
            for (tx, tasks) in work.iter().zip(per_shard) {
                let w = Work {
                    events: Arc::clone(&events),
                    tasks,
                };
                if tx.send(w).is_err() {
                    return;
                }
            }
            if !sent {
                return;
            }
        }
    }
}

/// An engine shard: its keys' events and marks, in order; with `inventory`, its events counted
/// there too (handed back with the results once it has `rows` rows).
fn shard(
    mut engine: Engine,
    mut inventory: Option<Batch>,
    rows: Option<usize>,
    input: &Receiver<Work>,
    out: &SyncSender<Result<Out, Box<Finished>>>,
) {
    while let Ok(work) = input.recv() {
        let mut results = Vec::with_capacity(work.tasks.len());
        for task in work.tasks {
            match task {
                Task::Process(index) => {
                    let Some((event, enrichment)) = work.events.get(index as usize) else {
                        continue;
                    };
                    // As `Pipeline::event_counted`: counted, then processed, both isolated.
                    let result = crate::isolate::guard(|| {
                        crate::isolate::fault_point(&event.event_id);
                        if let Some(b) = inventory.as_mut() {
                            b.observe(event, enrichment, engine.policy.is_hidden(event));
                        }
                        engine.process(event, enrichment)
                    })
                    .inspect_err(|_| engine.reset_subject(event));
                    results.push((index, result));
                }
                Task::Marks(index) => {
                    if let Some((event, enrichment)) = work.events.get(index as usize) {
                        // As in the service: a failure here loses only these marks.
                        let _ = crate::isolate::guard(|| engine.apply_marks(event, enrichment));
                    }
                }
            }
        }
        let full = match (inventory.as_mut(), rows) {
            (Some(b), Some(rows)) if b.len() >= rows => Some(std::mem::take(b)),
            _ => None,
        };
        if out.send(Ok((results, full))).is_err() {
            return;
        }
    }
    let finished = Finished {
        flushed: engine.flush(),
        alarms: engine.take_alarms(),
        stats: engine.stats.clone(),
        inventory,
    };
    let _ = out.send(Err(Box::new(finished)));
}

/// The merger: each batch's records in order, with their events' alarms from the shards.
fn merge(
    meta: &Receiver<Meta>,
    shards: &[Receiver<Result<Out, Box<Finished>>>],
    tickets: SyncSender<()>,
    mut on_batch: Option<&mut dyn FnMut(Batch)>,
    on_alarm: &mut dyn FnMut(&Alarm),
    on_reject: &mut dyn FnMut(Rejected<'_>),
) -> Result<Counts, String> {
    let mut counts = Counts::default();
    let lost = || "internal error: a replay stage stopped".to_owned();
    let mut results: Vec<Option<Result<Vec<Alarm>, String>>> = Vec::new();
    while let Ok(batch) = meta.recv() {
        results.clear();
        for rx in shards {
            match rx.recv() {
                Ok(Ok((r, full))) => {
                    for (index, result) in r {
                        put(&mut results, index, result);
                    }
                    if let (Some(batch), Some(f)) = (full, on_batch.as_mut()) {
                        f(batch);
                    }
                }
                _ => return Err(lost()),
            }
        }
        for record in batch.records {
            let raw = batch.data.get(record.range).unwrap_or_default();
            if let Some(reject) = record.whole {
                counts.rejected += 1;
                on_reject(Rejected { reject, raw });
                continue;
            }
            // One dead letter per record, however many of its events were rejected.
            let mut rejects = RecordRejects::default();
            for slot in record.slots {
                match slot {
                    Slot::Reject(r) => rejects.add(r),
                    Slot::Failed(reason) => rejects.add(Reject::new(
                        RejectKind::InternalError,
                        reason,
                        record.origin.clone(),
                    )),
                    Slot::Event(index) => {
                        match results.get_mut(index as usize).and_then(Option::take) {
                            Some(Ok(alarms)) => {
                                counts.events += 1;
                                for alarm in &alarms {
                                    counts.notifications += 1;
                                    on_alarm(alarm);
                                }
                            }
                            Some(Err(reason)) => rejects.add(Reject::new(
                                RejectKind::InternalError,
                                reason,
                                record.origin.clone(),
                            )),
                            None => return Err(lost()),
                        }
                    }
                }
            }
            counts.rejected += rejects.len();
            if let Some(reject) = rejects.take() {
                on_reject(Rejected { reject, raw });
            }
        }
        let _ = tickets.send(());
    }
    let mut flushed = Vec::new();
    for rx in shards {
        match rx.recv() {
            Ok(Err(finished)) => {
                flushed.extend(finished.flushed);
                counts.alarms.extend(finished.alarms);
                counts.stats.add(&finished.stats);
                counts.inventory.extend(finished.inventory);
            }
            _ => return Err(lost()),
        }
    }
    // As one engine orders them: updates by id, the final state by first hit and id.
    flushed.sort_by(|a, b| a.alarm_id.cmp(&b.alarm_id));
    for alarm in &flushed {
        counts.notifications += 1;
        on_alarm(alarm);
    }
    counts
        .alarms
        .sort_by(|a, b| (a.first_seen, &a.alarm_id).cmp(&(b.first_seen, &b.alarm_id)));
    Ok(counts)
}

fn put<T>(v: &mut Vec<Option<T>>, index: u32, value: T) {
    let i = index as usize;
    if v.len() <= i {
        v.resize_with(i + 1, || None);
    }
    v[i] = Some(value);
}
