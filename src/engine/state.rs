//! Per-key detection state, kept in a `DashMap` so that several consumers can share it.
//!
//! Compact by design (the target is under 1 KB per active key with 10 IPs): attribute values
//! are remembered as 64-bit hashes, times as seconds, and every list is bounded.

use std::collections::VecDeque;

use dashmap::DashMap;

use crate::rule::Attr;

/// FNV-1a, seeded by the attribute: stable across runs and versions, so state can be saved.
pub struct Fnv(u64);

impl Fnv {
    pub fn new(attr: Attr) -> Self {
        Fnv(0xcbf2_9ce4_8422_2325 ^ (attr as u64))
    }

    pub fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 ^= u64::from(*b);
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
    }

    pub fn finish(&self) -> u64 {
        self.0
    }
}

/// A 64-bit hash of an attribute value.
pub fn value_hash(attr: Attr, value: &str) -> u64 {
    let mut h = Fnv::new(attr);
    h.write(value.as_bytes());
    h.finish()
}

/// Event times in state are seconds since 2000-01-01 in a `u32` (good until 2136).
pub const STATE_EPOCH: i64 = 946_684_800;

pub fn compact_time(t: i64) -> u32 {
    (t - STATE_EPOCH).clamp(0, i64::from(u32::MAX)) as u32
}

pub fn full_time(t: u32) -> i64 {
    i64::from(t) + STATE_EPOCH
}

/// A remembered value: its hash and when it was first and last seen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Seen {
    pub hash: u64,
    pub first: u32,
    pub last: u32,
}

/// The most values remembered per key; past it the least recently seen is forgotten.
pub const MAX_SEEN_PER_KEY: usize = 512;

/// A located call, for `velocity` (compact: 16 bytes).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Located {
    pub time: u32,
    pub lat: f32,
    pub lon: f32,
    pub ip: u32,
}

/// The most located calls kept per key.
pub const MAX_LOCATIONS: usize = 4;

/// An exponentially weighted mean of a key's count per window (the `threshold` baseline).
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Ewma {
    /// Start of the bucket being counted (compact time).
    pub bucket: u32,
    pub count: u32,
    pub mean: f32,
}

impl Ewma {
    /// Counts one event in `bucket` (event time, seconds); buckets are `window` long and
    /// `alpha` = window / history.
    pub fn add(&mut self, bucket: i64, window: i64, alpha: f32) {
        let bucket = compact_time(bucket);
        if self.count == 0 && self.mean == 0.0 {
            self.bucket = bucket;
        }
        if bucket > self.bucket {
            // Close the current bucket, then decay over the empty ones in between.
            self.mean = alpha * self.count as f32 + (1.0 - alpha) * self.mean;
            let empty =
                (i64::from(bucket - self.bucket) / window.max(1) - 1).clamp(0, 100_000) as i32;
            self.mean *= (1.0 - alpha).powi(empty);
            self.bucket = bucket;
            self.count = 0;
        }
        if bucket == self.bucket {
            self.count += 1;
        } else {
            // A late event for a closed bucket: fold it into the mean.
            self.mean += alpha;
        }
    }
}

/// A `distinct` detector's memory of one value: which detector and attribute, the value's
/// hash and its latest sighting (16 bytes; all detectors of a key share one vector).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Sighting {
    pub hash: u64,
    pub time: u32,
    pub rule: u16,
    pub detector: u8,
    pub attr: u8,
}

/// The state of one detector of one rule for one key.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub enum Window {
    /// `threshold`: event times in the window (compact, sorted) and the baseline.
    Times {
        times: Vec<u32>,
        baseline: Option<Ewma>,
    },
    /// `sequence`: (time, source-IP hash) of each `first` step.
    Marks(VecDeque<(u32, u32)>),
}

impl Window {
    fn is_empty(&self) -> bool {
        match self {
            Window::Times { times, baseline } => times.is_empty() && baseline.is_none(),
            Window::Marks(m) => m.is_empty(),
        }
    }

    fn heap_bytes(&self) -> usize {
        match self {
            Window::Times { times, .. } => times.capacity() * 4,
            Window::Marks(m) => m.capacity() * 8,
        }
    }

    /// The `threshold` parts (the window is made one if it was not).
    pub fn times(&mut self) -> (&mut Vec<u32>, &mut Option<Ewma>) {
        if !matches!(self, Window::Times { .. }) {
            *self = Window::Times {
                times: Vec::new(),
                baseline: None,
            };
        }
        match self {
            Window::Times { times, baseline } => (times, baseline),
            // Invariant: set to `Times` just above.
            _ => unreachable!("window is Times"),
        }
    }

    pub fn marks(&mut self) -> &mut VecDeque<(u32, u32)> {
        if !matches!(self, Window::Marks(_)) {
            *self = Window::Marks(VecDeque::new());
        }
        match self {
            Window::Marks(m) => m,
            // Invariant: set to `Marks` just above.
            _ => unreachable!("window is Marks"),
        }
    }
}

/// Everything the engine remembers about one key.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct KeyState {
    pub first_seen: i64,
    pub last_seen: i64,
    /// Attribute values seen, by [`value_hash`], sorted by hash.
    pub seen: Vec<Seen>,
    /// (rule index, detector index) → window (`threshold`, `sequence`).
    pub windows: Vec<((u16, u8), Window)>,
    /// `distinct` detectors' values.
    pub sightings: Vec<Sighting>,
    /// Recent located calls, sorted by time.
    pub locations: Vec<Located>,
}

impl KeyState {
    pub fn new(t: i64) -> Self {
        KeyState {
            first_seen: t,
            last_seen: t,
            ..KeyState::default()
        }
    }

    pub fn window(&mut self, rule: u16, detector: u8) -> &mut Window {
        let key = (rule, detector);
        let i = match self.windows.iter().position(|(k, _)| *k == key) {
            Some(i) => i,
            None => {
                self.windows.reserve_exact(1);
                self.windows.push((key, Window::Marks(VecDeque::new())));
                self.windows.len() - 1
            }
        };
        &mut self.windows[i].1
    }

    /// Was `hash` seen within `[t - history, t)`? (Sightings are kept as first / last, so a
    /// value seen before and after a quiet gap counts as seen throughout.)
    pub fn seen_within(&self, hash: u64, t: i64, history: i64) -> bool {
        match self.seen.binary_search_by_key(&hash, |s| s.hash) {
            Ok(i) => {
                let s = self.seen[i];
                full_time(s.first) < t && full_time(s.last) >= t - history
            }
            Err(_) => false,
        }
    }

    pub fn remember(&mut self, hash: u64, t: i64) {
        let ct = compact_time(t);
        match self.seen.binary_search_by_key(&hash, |s| s.hash) {
            Ok(i) => {
                let s = &mut self.seen[i];
                s.first = s.first.min(ct);
                s.last = s.last.max(ct);
            }
            Err(i) => {
                if self.seen.len() >= MAX_SEEN_PER_KEY
                    && let Some(oldest) = self
                        .seen
                        .iter()
                        .enumerate()
                        .min_by_key(|(_, s)| s.last)
                        .map(|(j, _)| j)
                {
                    // Forget the least recently seen value.
                    self.seen.remove(oldest);
                    let i = self.seen.partition_point(|s| s.hash < hash);
                    self.seen.insert(
                        i,
                        Seen {
                            hash,
                            first: ct,
                            last: ct,
                        },
                    );
                    return;
                }
                if self.seen.len() == self.seen.capacity() {
                    // Grow by a few entries, not double: most keys hold a handful of values.
                    self.seen.reserve_exact(4);
                }
                self.seen.insert(
                    i,
                    Seen {
                        hash,
                        first: ct,
                        last: ct,
                    },
                );
            }
        }
    }

    /// Drops what no detector can look at any more.
    pub fn expire(&mut self, horizon: i64) {
        let cutoff = self.last_seen - horizon;
        let c = compact_time(cutoff);
        self.seen.retain(|s| s.last >= c);
        self.seen.shrink_to_fit();
        for (_, w) in &mut self.windows {
            match w {
                Window::Times { times, baseline } => {
                    times.retain(|t| *t >= c);
                    if baseline.is_some_and(|b| b.bucket < c) {
                        *baseline = None;
                    }
                }
                Window::Marks(m) => {
                    while m.front().is_some_and(|(t, _)| *t < c) {
                        m.pop_front();
                    }
                }
            }
        }
        self.windows.retain(|(_, w)| !w.is_empty());
        self.sightings.retain(|s| s.time >= c);
        self.locations.retain(|l| l.time >= c);
    }

    /// Heap bytes held (for the state-size metric and the memory bench).
    pub fn heap_bytes(&self) -> usize {
        let windows: usize = self.windows.iter().map(|(_, w)| w.heap_bytes()).sum();
        self.seen.capacity() * std::mem::size_of::<Seen>()
            + self.windows.capacity() * std::mem::size_of::<((u16, u8), Window)>()
            + windows
            + self.sightings.capacity() * std::mem::size_of::<Sighting>()
            + self.locations.capacity() * std::mem::size_of::<Located>()
    }
}

/// Insert keeping the deque sorted by time (late events go to their place).
pub fn insert_sorted<T>(deque: &mut VecDeque<T>, item: T, time: impl Fn(&T) -> i64) {
    let t = time(&item);
    let pos = deque.partition_point(|x| time(x) <= t);
    deque.insert(pos, item);
}

/// All keys' state.
#[derive(Debug, Default)]
pub struct State {
    /// By the hash of the alarm subject (access key id, or principal): 8 bytes a key instead
    /// of the id string.
    pub keys: DashMap<u64, KeyState, rustc_hash::FxBuildHasher>,
    /// Keys created by a watched `first` step: (rule index, created key) → (time, source-IP hash).
    pub created: DashMap<(u16, String), (i64, u64)>,
    /// Principals AWS quarantined (compromised-key policy attached): (cloud, user) → time.
    pub quarantined: DashMap<(crate::event::Cloud, String), i64>,
}

impl State {
    /// Total approximate heap bytes and entries, for metrics.
    pub fn size(&self) -> (usize, usize, usize) {
        let mut bytes = 0;
        let mut entries = 0;
        for k in &self.keys {
            bytes += std::mem::size_of::<(u64, KeyState)>() + k.value().heap_bytes();
            let k = k.value();
            let windowed: usize = k
                .windows
                .iter()
                .map(|(_, w)| match w {
                    Window::Times { times, .. } => times.len(),
                    Window::Marks(m) => m.len(),
                })
                .sum();
            entries += k.seen.len() + windowed + k.sightings.len();
        }
        (self.keys.len(), entries, bytes)
    }
}
