//! Per-key detection state, kept in a `DashMap` so that several consumers can share it.
//!
//! Compact by design (the target is under 600 bytes per active key with 10 IPs): attribute
//! values are remembered as 32-bit folds of their 64-bit hashes, times as seconds, and every
//! list is bounded.

use std::collections::VecDeque;

use dashmap::DashMap;

use crate::rule::Attr;

/// The key map's shared pointer: copy on write for snapshots, and no weak count (8 bytes a key
/// less than `std::sync::Arc`).
pub use triomphe::Arc as KeyArc;

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

/// The 32 bits of a value hash the state keeps: the 64-bit [`value_hash`] folded (high half
/// XOR low half). A new value taken for a remembered one needs a 32-bit collision with one of
/// its key's remembered values: at the 512-value cap about 1 in 8 million new values, at 10
/// values 1 in 400 million. (FNV is not a keyed hash: neither width resists a caller who
/// knows a key's remembered values and crafts a colliding one.)
pub fn fold(h: u64) -> u32 {
    (h ^ (h >> 32)) as u32
}

/// Reads a hash saved as a 64-bit value (state written before 2026-12-04) or a fold.
fn folded<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    <u64 as serde::Deserialize>::deserialize(d).map(fold)
}

/// Event times in state are seconds since 2000-01-01 in a `u32` (good until 2136).
pub const STATE_EPOCH: i64 = 946_684_800;

pub fn compact_time(t: i64) -> u32 {
    t.saturating_sub(STATE_EPOCH).clamp(0, i64::from(u32::MAX)) as u32
}

pub fn full_time(t: u32) -> i64 {
    i64::from(t) + STATE_EPOCH
}

/// A remembered value: its hash ([`fold`]) and when it was first and last seen (12 bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Seen {
    #[serde(deserialize_with = "folded")]
    pub hash: u32,
    pub first: u32,
    pub last: u32,
}

/// The most values remembered per key; past it the least recently seen is forgotten.
pub const MAX_SEEN_PER_KEY: usize = 512;

/// A located call, for `velocity` (compact: 28 bytes).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Located {
    pub time: u32,
    pub lat: f32,
    pub lon: f32,
    /// The caller's IP (IPv4 as IPv4-mapped IPv6), for the alarm's evidence and to tell two
    /// IPs apart; unspecified in state saved before it was kept (such a call counts as from
    /// another IP). State saved before 2026-12-04 also holds an `ip` hash, ignored now.
    #[serde(default = "unspecified")]
    pub addr: std::net::Ipv6Addr,
}

fn unspecified() -> std::net::Ipv6Addr {
    std::net::Ipv6Addr::UNSPECIFIED
}

impl Located {
    /// The caller's IP, when known.
    pub fn address(&self) -> Option<std::net::IpAddr> {
        if self.addr.is_unspecified() {
            return None;
        }
        Some(match self.addr.to_ipv4_mapped() {
            Some(v4) => std::net::IpAddr::V4(v4),
            None => std::net::IpAddr::V6(self.addr),
        })
    }
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
            self.count = self.count.saturating_add(1);
        } else {
            // A late event for a closed bucket: fold it into the mean.
            self.mean += alpha;
        }
    }
}

/// A `distinct` detector's memory of one value: which detector and attribute, the value's
/// hash ([`fold`]) and its latest sighting (12 bytes; all detectors of a key share one vector,
/// sorted by (rule, detector, attribute, hash) so that a value is found by binary search).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Sighting {
    #[serde(deserialize_with = "folded")]
    pub hash: u32,
    pub time: u32,
    pub rule: u16,
    pub detector: u8,
    pub attr: u8,
}

impl Sighting {
    /// The group (rule, detector, attribute) as one number in the same order (one comparison
    /// in the binary searches instead of three).
    fn group(&self) -> u32 {
        group_key((self.rule, self.detector, self.attr))
    }
}

fn group_key(g: (u16, u8, u8)) -> u32 {
    (u32::from(g.0) << 16) | (u32::from(g.1) << 8) | u32::from(g.2)
}

/// A `distinct` group with this many values or more keeps a sorted index of their times, so
/// that counting and trimming it are binary searches rather than scans.
const INDEX_FROM: usize = 64;
/// Below this many values the index is dropped again.
const INDEX_UNTIL: usize = 32;

/// A `threshold` window: its calls as (time, calls up to and including that time), sorted by
/// time, the count wrapping (only differences are read), and the baseline. Counting the calls
/// in a time range is two binary searches, adding an in-order call is constant time, and
/// trimming is amortised constant (the trimmed prefix is dropped once it is half the vector;
/// until then counts start after the cut-off anyway).
///
/// Times are exact seconds while the window holds at most its cap of distinct seconds; past
/// it the resolution doubles (2 s, 4 s, ...) until it fits, and a time stands for the end of
/// its bucket: a call then counts as made up to `2^shift - 1` seconds later than it was (an
/// error at the window's edges only; calls are never lost, only summarised).
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Calls {
    entries: Vec<(u32, u32)>,
    /// The `threshold` baseline (all zero: none yet).
    pub baseline: Ewma,
    /// log2 of the resolution in seconds.
    shift: u8,
}

impl Calls {
    fn round(&self, t: u32) -> u32 {
        if self.shift == 0 {
            t
        } else {
            t | (u32::MAX >> (32 - u32::from(self.shift.min(31))))
        }
    }

    fn cum_at(&self, t: u32) -> u32 {
        match self.entries.partition_point(|e| e.0 <= t) {
            0 => 0,
            p => self.entries[p - 1].1,
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Calls at times in `(lo, hi]` (compact times).
    pub fn count(&self, lo: u32, hi: u32) -> u32 {
        if hi <= lo {
            return 0;
        }
        self.cum_at(self.round(hi))
            .wrapping_sub(self.cum_at(self.round(lo)))
    }

    /// Counts one call at `t`.
    pub fn add(&mut self, t: u32) {
        let t = self.round(t);
        let p = self.entries.partition_point(|e| e.0 <= t);
        let from = if p > 0 && self.entries[p - 1].0 == t {
            p - 1
        } else {
            let before = if p == 0 { 0 } else { self.entries[p - 1].1 };
            if self.entries.len() == self.entries.capacity() && self.entries.len() < 8 {
                // Most windows hold a call or two: grow by one, not to four.
                self.entries.reserve_exact(1);
            }
            self.entries.insert(p, (t, before));
            p
        };
        for e in &mut self.entries[from..] {
            e.1 = e.1.wrapping_add(1);
        }
    }

    /// The newest time not after `t`.
    pub fn newest_not_after(&self, t: u32) -> Option<u32> {
        match self.entries.partition_point(|e| e.0 <= t) {
            0 => None,
            p => Some(self.entries[p - 1].0),
        }
    }

    /// Forgets the calls before `cutoff`: at once with `now` or in a short window, else when
    /// they are half the vector (counts must then start at the cut-off, as the detector's do).
    pub fn trim_before(&mut self, cutoff: u32, now: bool) {
        let p = self.entries.partition_point(|e| e.0 < cutoff);
        if p == 0 || (!now && self.entries.len() > 32 && p < self.entries.len() / 2) {
            return;
        }
        let base = self.entries[p - 1].1;
        self.entries.drain(..p);
        for e in &mut self.entries {
            e.1 = e.1.wrapping_sub(base);
        }
        if self.entries.is_empty() {
            self.shift = 0;
        }
    }

    /// Keeps at most `max` entries by coarsening the resolution; returns the entries merged.
    pub fn bound(&mut self, max: usize) -> usize {
        let before = self.entries.len();
        while self.entries.len() > max.max(4) && self.shift < 31 {
            self.shift += 1;
            let mut w = 0;
            for i in 0..self.entries.len() {
                let (t, c) = self.entries[i];
                let r = self.round(t);
                if w > 0 && self.entries[w - 1].0 == r {
                    self.entries[w - 1].1 = c;
                } else {
                    self.entries[w] = (r, c);
                    w += 1;
                }
            }
            self.entries.truncate(w);
        }
        before - self.entries.len()
    }
}

/// The state of one detector of one rule for one key.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub enum Window {
    /// `threshold`: the calls in the window and the baseline.
    Calls(Calls),
    /// `sequence`: (time, source-IP hash) of each `first` step.
    Marks(VecDeque<(u32, u32)>),
    /// A large `distinct` group's latest sighting times, sorted (see [`INDEX_FROM`]).
    Index(Vec<u32>),
}

impl Window {
    /// Nothing held (the window can be dropped).
    pub fn is_empty(&self) -> bool {
        match self {
            Window::Calls(calls) => calls.is_empty() && calls.baseline == Ewma::default(),
            Window::Marks(m) => m.is_empty(),
            Window::Index(i) => i.is_empty(),
        }
    }

    fn heap_bytes(&self) -> usize {
        match self {
            Window::Calls(calls) => calls.entries.capacity() * 8,
            Window::Marks(m) => m.capacity() * 8,
            Window::Index(i) => i.capacity() * 4,
        }
    }

    /// Entries held (for the state-size metric and the caps).
    pub fn len(&self) -> usize {
        match self {
            Window::Calls(calls) => calls.len(),
            Window::Marks(m) => m.len(),
            Window::Index(_) => 0,
        }
    }

    /// The `threshold` window (the window is made one if it was not).
    pub fn calls(&mut self) -> &mut Calls {
        if !matches!(self, Window::Calls(_)) {
            *self = Window::Calls(Calls::default());
        }
        match self {
            Window::Calls(calls) => calls,
            // Invariant: set to `Calls` just above.
            _ => unreachable!("window is Calls"),
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

/// What a key's windows summarised or dropped to stay under their cap.
#[derive(Debug, Default, Clone, Copy)]
pub struct Capped {
    /// Threshold entries merged into coarser buckets (counts kept).
    pub summarised: u64,
    /// Distinct values and sequence marks forgotten (the oldest first).
    pub dropped: u64,
}

/// A window and where it belongs: (rule index, detector index, slot), see `KeyState::windows`.
pub type Slot = ((u16, u8, u8), Window);

/// Everything the engine remembers about one key (96 bytes and its lists: the two that change
/// with most calls are vectors, the two that rarely change length are boxed slices, 8 bytes
/// less each).
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
#[serde(from = "SavedKeyState")]
pub struct KeyState {
    /// The key's first call (compact time).
    pub first: u32,
    /// The key's watermark (compact time): its latest call, except that a call far ahead of it
    /// (more than the jump allowed, see [`KeyState::observe`]) moves it only once a second
    /// call confirms the jump. Windows are trimmed and state expired relative to it, so one
    /// future-dated event cannot push the present out.
    pub last: u32,
    /// An unconfirmed jump ahead of `last` (compact time; 0: none).
    pub pending: u32,
    /// Attribute values seen, by [`value_hash`], sorted by hash.
    pub seen: Vec<Seen>,
    /// (rule index, detector index, slot) → window: slot 0 is the detector's window
    /// (`threshold`, `sequence`), slot 1 + attribute the time index of a large `distinct`
    /// group.
    pub windows: Box<[Slot]>,
    /// `distinct` detectors' values, sorted by (rule, detector, attribute, hash).
    pub sightings: Vec<Sighting>,
    /// Recent located calls (at most [`MAX_LOCATIONS`]), sorted by time.
    pub locations: Box<[Located]>,
}

/// A key's state as saved: hashes may be 64-bit ones from before 2026-12-04 (read as folds,
/// see [`fold`]), so the lists are sorted again and values that fold alike merged.
#[derive(serde::Deserialize)]
struct SavedKeyState {
    first: u32,
    last: u32,
    pending: u32,
    seen: Vec<Seen>,
    windows: Vec<Slot>,
    sightings: Vec<Sighting>,
    locations: Vec<Located>,
}

impl From<SavedKeyState> for KeyState {
    fn from(s: SavedKeyState) -> Self {
        let mut seen = s.seen;
        seen.sort_unstable_by_key(|v| v.hash);
        seen.dedup_by(|later, kept| {
            let same = later.hash == kept.hash;
            if same {
                kept.first = kept.first.min(later.first);
                kept.last = kept.last.max(later.last);
            }
            same
        });
        let mut sightings = s.sightings;
        sightings.sort_unstable_by_key(|v| (v.group(), v.hash));
        let before = sightings.len();
        sightings.dedup_by(|later, kept| {
            let same = (later.group(), later.hash) == (kept.group(), kept.hash);
            if same {
                kept.time = kept.time.max(later.time);
            }
            same
        });
        let merged = sightings.len() != before;
        let mut locations = s.locations;
        locations.sort_by_key(|l| l.time);
        let extra = locations.len().saturating_sub(MAX_LOCATIONS);
        locations.drain(..extra);
        let mut ks = KeyState {
            first: s.first,
            last: s.last,
            pending: s.pending,
            seen,
            windows: s.windows.into_boxed_slice(),
            sightings,
            locations: locations.into_boxed_slice(),
        };
        if merged {
            ks.reindex_all();
        }
        ks
    }
}

/// Edits a boxed slice as a vector (for the lists whose length rarely changes; the box is
/// exactly as long as its contents).
fn edit<T, R>(slice: &mut Box<[T]>, f: impl FnOnce(&mut Vec<T>) -> R) -> R {
    let mut v = std::mem::take(slice).into_vec();
    let r = f(&mut v);
    *slice = v.into_boxed_slice();
    r
}

impl KeyState {
    pub fn new(t: i64) -> Self {
        KeyState {
            first: compact_time(t),
            last: compact_time(t),
            ..KeyState::default()
        }
    }

    pub fn first_seen(&self) -> i64 {
        full_time(self.first)
    }

    /// The watermark (see `last`), in seconds.
    pub fn last_seen(&self) -> i64 {
        full_time(self.last)
    }

    fn confirms(&self, t: i64, jump: i64) -> bool {
        self.pending != 0 && t >= full_time(self.pending).saturating_sub(jump)
    }

    /// Is a call at `t` an unconfirmed jump ahead of the watermark (one far-future event, or
    /// the first call after a quiet spell — which the next call confirms)?
    pub fn is_jump(&self, t: i64, jump: i64) -> bool {
        t > self.last_seen().saturating_add(jump) && !self.confirms(t, jump)
    }

    /// The watermark after a call at `t`.
    pub fn watermark_after(&self, t: i64, jump: i64) -> i64 {
        if t <= self.last_seen().saturating_add(jump) {
            self.last_seen().max(t)
        } else if self.confirms(t, jump) {
            t.max(full_time(self.pending))
        } else {
            self.last_seen()
        }
    }

    /// Moves the watermark for a call at `t` (see `last_seen`).
    pub fn observe(&mut self, t: i64, jump: i64) {
        self.first = self.first.min(compact_time(t));
        if !self.is_jump(t, jump) {
            self.last = compact_time(self.watermark_after(t, jump));
            if self.pending != 0 && self.pending <= self.last {
                self.pending = 0;
            }
        } else {
            self.pending = compact_time(t).max(1);
        }
    }

    /// The key's latest call not after `t`, as far as its state tells (for idle days).
    pub fn previous_call(&self, t: i64) -> i64 {
        if self.pending != 0 && full_time(self.pending) <= t {
            self.last_seen().max(full_time(self.pending))
        } else {
            self.last_seen()
        }
    }

    /// Moves the per-rule parts to the rules' new positions (`map`, by old position; `None`:
    /// dropped), see `Engine::set_rules`.
    pub fn remap_rules(&mut self, map: &[Option<u16>]) {
        let to = |r: u16| map.get(r as usize).copied().flatten();
        edit(&mut self.windows, |windows| {
            windows.retain_mut(|(k, _)| match to(k.0) {
                Some(n) => {
                    k.0 = n;
                    true
                }
                None => false,
            })
        });
        self.sightings.retain_mut(|s| match to(s.rule) {
            Some(n) => {
                s.rule = n;
                true
            }
            None => false,
        });
        self.sightings.sort_unstable_by_key(|s| (s.group(), s.hash));
    }

    pub fn window(&mut self, rule: u16, detector: u8) -> &mut Window {
        window_in(&mut self.windows, (rule, detector, 0))
    }

    /// Was `hash` seen within `[t - history, t)`? (Sightings are kept as first / last, so a
    /// value seen before and after a quiet gap counts as seen throughout.)
    pub fn seen_within(&self, hash: u64, t: i64, history: i64) -> bool {
        match self.seen.binary_search_by_key(&fold(hash), |s| s.hash) {
            Ok(i) => {
                let s = self.seen[i];
                full_time(s.first) < t && full_time(s.last) >= t.saturating_sub(history)
            }
            Err(_) => false,
        }
    }

    pub fn remember(&mut self, hash: u64, t: i64) {
        let ct = compact_time(t);
        let hash = fold(hash);
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
                    // Grow one entry at a time, not double: most keys hold a handful of values,
                    // and a new value is rare next to the calls (a realloc then is cheap).
                    self.seen
                        .reserve_exact(if self.seen.len() < 32 { 1 } else { 8 });
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

    /// The sightings of one `distinct` group (rule, detector, attribute).
    fn group(&self, g: (u16, u8, u8)) -> std::ops::Range<usize> {
        let g = group_key(g);
        let start = self.sightings.partition_point(|s| s.group() < g);
        let end = start + self.sightings[start..].partition_point(|s| s.group() == g);
        start..end
    }

    fn index(&self, g: (u16, u8, u8)) -> Option<&Vec<u32>> {
        let key = (g.0, g.1, g.2.saturating_add(1));
        self.windows.iter().find_map(|(k, w)| match w {
            Window::Index(i) if *k == key => Some(i),
            _ => None,
        })
    }

    fn index_mut(&mut self, g: (u16, u8, u8)) -> Option<&mut Vec<u32>> {
        let key = (g.0, g.1, g.2.saturating_add(1));
        self.windows.iter_mut().find_map(|(k, w)| match w {
            Window::Index(i) if *k == key => Some(i),
            _ => None,
        })
    }

    /// Rebuilds (or drops) a group's time index after its values changed in bulk.
    /// Between `INDEX_UNTIL` and `INDEX_FROM` values an existing index is rebuilt too (it was
    /// left as it was until 2026-12-04: after `drop_oldest` cut a group into that range, the
    /// index still held the dropped values' times and the group counted them).
    fn reindex(&mut self, g: (u16, u8, u8)) {
        let r = self.group(g);
        self.reindex_in(r, g);
    }

    /// [`KeyState::reindex`] of the group at `r`.
    fn reindex_in(&mut self, r: std::ops::Range<usize>, g: (u16, u8, u8)) {
        let key = (g.0, g.1, g.2.saturating_add(1));
        let indexed = self.index(g).is_some();
        if r.len() >= INDEX_FROM || (indexed && r.len() >= INDEX_UNTIL) {
            let mut times: Vec<u32> = self.sightings[r].iter().map(|s| s.time).collect();
            times.sort_unstable();
            match self.index_mut(g) {
                Some(i) => *i = times,
                None => edit(&mut self.windows, |w| w.push((key, Window::Index(times)))),
            }
        } else if indexed {
            edit(&mut self.windows, |windows| {
                windows.retain(|(k, w)| !(*k == key && matches!(w, Window::Index(_))))
            });
        }
    }

    /// Rebuilds every indexed group's time index (after the sightings changed in bulk).
    fn reindex_all(&mut self) {
        let groups: Vec<(u16, u8, u8)> = self
            .windows
            .iter()
            .filter(|(_, w)| matches!(w, Window::Index(_)))
            .map(|(k, _)| (k.0, k.1, k.2.saturating_sub(1)))
            .collect();
        for g in groups {
            self.reindex(g);
        }
    }

    /// Records a sighting of `hash` at `ct` in group `g`; keeps the group at most `max` values
    /// (forgetting first those dated more than `ahead`, then the oldest). Returns the values
    /// forgotten.
    pub fn sight(&mut self, g: (u16, u8, u8), hash: u64, ct: u32, max: usize, ahead: u32) -> usize {
        let r = self.group(g);
        self.sight_in(r, g, hash, ct, max, ahead).0
    }

    /// [`KeyState::sight`] in the group at `r`; also returns the group's range after.
    fn sight_in(
        &mut self,
        r: std::ops::Range<usize>,
        g: (u16, u8, u8),
        hash: u64,
        ct: u32,
        max: usize,
        ahead: u32,
    ) -> (usize, std::ops::Range<usize>) {
        let hash = fold(hash);
        let start = r.start;
        match self.sightings[r.clone()].binary_search_by_key(&hash, |s| s.hash) {
            Ok(i) => {
                let old = self.sightings[start + i].time;
                if ct > old {
                    self.sightings[start + i].time = ct;
                    if let Some(idx) = self.index_mut(g) {
                        if let Ok(p) = idx.binary_search(&old) {
                            idx.remove(p);
                        }
                        let p = idx.partition_point(|x| *x <= ct);
                        idx.insert(p, ct);
                    }
                }
                (0, r)
            }
            Err(i) => {
                if self.sightings.len() == self.sightings.capacity() {
                    // One at a time for the usual handful; a quarter more for a big one.
                    let more = if self.sightings.len() < 32 {
                        1
                    } else {
                        self.sightings.len() / 4
                    };
                    self.sightings.reserve_exact(more);
                }
                self.sightings.insert(
                    start + i,
                    Sighting {
                        hash,
                        time: ct,
                        rule: g.0,
                        detector: g.1,
                        attr: g.2,
                    },
                );
                let r = start..r.end + 1;
                let len = r.len();
                if let Some(idx) = self.index_mut(g) {
                    let p = idx.partition_point(|x| *x <= ct);
                    idx.insert(p, ct);
                } else if len >= INDEX_FROM {
                    self.reindex_in(r.clone(), g);
                }
                if len > max.max(1) {
                    let dropped = self.drop_oldest(g, len - (max - max / 8).max(1), ahead);
                    (dropped, self.group(g))
                } else {
                    (0, r)
                }
            }
        }
    }

    /// One `distinct` step for group `g`, the group found once: [`KeyState::sight`] of `hash`
    /// at `ct`, then `bounds` is given the newest sighting not after `wm` and says the trim
    /// cutoff ([`KeyState::group_trim`]) and the `(lo, hi]` to count
    /// ([`KeyState::group_count`]). Returns (values forgotten, the count).
    #[allow(clippy::too_many_arguments)] // The three steps' inputs, each used once.
    pub fn distinct_step(
        &mut self,
        g: (u16, u8, u8),
        hash: u64,
        ct: u32,
        max: usize,
        ahead: u32,
        wm: u32,
        bounds: impl FnOnce(Option<u32>) -> (Option<u32>, u32, u32),
    ) -> (usize, u32) {
        let r = self.group(g);
        let (dropped, r) = self.sight_in(r, g, hash, ct, max, ahead);
        let (cutoff, lo, hi) = bounds(self.newest_in(r.clone(), g, wm));
        let r = match cutoff {
            Some(c) => self.trim_in(r, g, c),
            None => r,
        };
        (dropped, self.count_in(r, g, lo, hi))
    }

    /// Forgets `excess` values of a group: those dated after `ahead` first, then the oldest.
    fn drop_oldest(&mut self, g: (u16, u8, u8), excess: usize, ahead: u32) -> usize {
        let r = self.group(g);
        let rank = |t: u32| if t > ahead { 0 } else { u64::from(t) + 1 };
        let mut ranks: Vec<u64> = self.sightings[r.clone()]
            .iter()
            .map(|s| rank(s.time))
            .collect();
        let excess = excess.min(ranks.len());
        if excess == 0 {
            return 0;
        }
        let threshold = *ranks.select_nth_unstable(excess - 1).1;
        let below = ranks.iter().filter(|x| **x < threshold).count();
        let mut at_threshold = excess - below;
        let mut w = r.start;
        for j in r.clone() {
            let s = self.sightings[j];
            let k = rank(s.time);
            let drop = k < threshold || (k == threshold && at_threshold > 0);
            if k == threshold && drop {
                at_threshold -= 1;
            }
            if !drop {
                self.sightings[w] = s;
                w += 1;
            }
        }
        self.sightings.drain(w..r.end);
        self.reindex(g);
        excess
    }

    /// The newest sighting time of a group not after `t`.
    pub fn group_newest_not_after(&self, g: (u16, u8, u8), t: u32) -> Option<u32> {
        self.newest_in(self.group(g), g, t)
    }

    fn newest_in(&self, r: std::ops::Range<usize>, g: (u16, u8, u8), t: u32) -> Option<u32> {
        match self.index(g) {
            Some(idx) => match idx.partition_point(|x| *x <= t) {
                0 => None,
                p => Some(idx[p - 1]),
            },
            None => self.sightings[r]
                .iter()
                .map(|s| s.time)
                .filter(|x| *x <= t)
                .max(),
        }
    }

    /// Forgets a group's values last seen before `cutoff` (at once for a small group; for an
    /// indexed one when they are an eighth of it, so a pass is amortised over many events).
    pub fn group_trim(&mut self, g: (u16, u8, u8), cutoff: u32) {
        let r = self.group(g);
        self.trim_in(r, g, cutoff);
    }

    /// [`KeyState::group_trim`] of the group at `r`; returns the group's range after.
    fn trim_in(
        &mut self,
        r: std::ops::Range<usize>,
        g: (u16, u8, u8),
        cutoff: u32,
    ) -> std::ops::Range<usize> {
        let stale = match self.index(g) {
            Some(idx) => {
                let n = idx.partition_point(|x| *x < cutoff);
                if n < 16.max(idx.len() / 8) {
                    return r;
                }
                n
            }
            None => self.sightings[r.clone()]
                .iter()
                .filter(|s| s.time < cutoff)
                .count(),
        };
        if stale == 0 {
            return r;
        }
        let mut w = r.start;
        for j in r.clone() {
            let s = self.sightings[j];
            if s.time >= cutoff {
                self.sightings[w] = s;
                w += 1;
            }
        }
        self.sightings.drain(w..r.end);
        if let Some(idx) = self.index_mut(g) {
            idx.drain(..stale);
        }
        let r = r.start..w;
        self.reindex_in(r.clone(), g);
        r
    }

    /// A group's values last seen in `(lo, hi]`.
    pub fn group_count(&self, g: (u16, u8, u8), lo: u32, hi: u32) -> u32 {
        self.count_in(self.group(g), g, lo, hi)
    }

    fn count_in(&self, r: std::ops::Range<usize>, g: (u16, u8, u8), lo: u32, hi: u32) -> u32 {
        if hi <= lo {
            return 0;
        }
        match self.index(g) {
            Some(idx) => {
                (idx.partition_point(|x| *x <= hi) - idx.partition_point(|x| *x <= lo)) as u32
            }
            None => self.sightings[r]
                .iter()
                .filter(|s| s.time > lo && s.time <= hi)
                .count() as u32,
        }
    }

    /// Drops what no detector can look at any more: everything older than the watermark
    /// minus `horizon` (one future-dated call does not move the watermark).
    pub fn expire(&mut self, horizon: i64) {
        let cutoff = self.last_seen().saturating_sub(horizon);
        let c = compact_time(cutoff);
        self.seen.retain(|s| s.last >= c);
        self.seen.shrink_to_fit();
        for (_, w) in &mut self.windows {
            match w {
                Window::Calls(calls) => {
                    calls.trim_before(c, true);
                    calls.entries.shrink_to_fit();
                    if calls.baseline.bucket < c {
                        calls.baseline = Ewma::default();
                    }
                }
                Window::Marks(m) => {
                    while m.front().is_some_and(|(t, _)| *t < c) {
                        m.pop_front();
                    }
                    m.shrink_to_fit();
                }
                Window::Index(_) => {}
            }
        }
        let before = self.sightings.len();
        self.sightings.retain(|s| s.time >= c);
        if self.sightings.len() != before {
            self.reindex_all();
        }
        self.sightings.shrink_to_fit();
        if self.windows.iter().any(|(_, w)| w.is_empty()) {
            edit(&mut self.windows, |w| w.retain(|(_, w)| !w.is_empty()));
        }
        if self.locations.iter().any(|l| l.time < c) {
            edit(&mut self.locations, |l| l.retain(|l| l.time >= c));
        }
    }

    /// Keeps a located call: the newest [`MAX_LOCATIONS`], sorted by time (a call older than
    /// all of a full list is not kept).
    pub fn locate(&mut self, here: Located) {
        let pos = self.locations.partition_point(|l| l.time <= here.time);
        if self.locations.len() < MAX_LOCATIONS {
            edit(&mut self.locations, |l| l.insert(pos, here));
        } else if pos > 0 {
            // Full: drop the oldest in place.
            self.locations[..pos].rotate_left(1);
            self.locations[pos - 1] = here;
        }
    }

    /// Heap bytes held (for the state-size metric and the memory bench).
    pub fn heap_bytes(&self) -> usize {
        let windows: usize = self.windows.iter().map(|(_, w)| w.heap_bytes()).sum();
        self.seen.capacity() * std::mem::size_of::<Seen>()
            + self.windows.len() * std::mem::size_of::<Slot>()
            + windows
            + self.sightings.capacity() * std::mem::size_of::<Sighting>()
            + self.locations.len() * std::mem::size_of::<Located>()
    }

    /// Entries held in its lists.
    pub fn entries(&self) -> usize {
        let windowed: usize = self.windows.iter().map(|(_, w)| w.len()).sum();
        self.seen.len() + windowed + self.sightings.len()
    }
}

fn window_in(windows: &mut Box<[Slot]>, key: (u16, u8, u8)) -> &mut Window {
    let i = match windows.iter().position(|(k, _)| *k == key) {
        Some(i) => i,
        None => edit(windows, |w| {
            w.push((key, Window::Marks(VecDeque::new())));
            w.len() - 1
        }),
    };
    &mut windows[i].1
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
    pub keys: DashMap<u64, KeyArc<KeyState>, rustc_hash::FxBuildHasher>,
    /// Keys created by a watched `first` step: (rule index, created key) → (time, source-IP hash).
    pub created: DashMap<(u16, String), (i64, u64)>,
    /// Principals AWS quarantined (compromised-key policy attached): (cloud, user) → time.
    pub quarantined: DashMap<(crate::event::Cloud, String), i64>,
}

impl State {
    /// The `created` map's entries, copied out (for a snapshot, or to re-key them).
    pub fn created_entries(&self) -> Vec<((u16, String), (i64, u64))> {
        self.created
            .iter()
            .map(|e| (e.key().clone(), *e.value()))
            .collect()
    }

    /// Total approximate heap bytes and entries, for metrics: (keys, entries, bytes). The
    /// `created` and `quarantined` maps count as entries and bytes too.
    pub fn size(&self) -> (usize, usize, usize) {
        let mut bytes = 0;
        let mut entries = 0;
        for k in &self.keys {
            bytes += std::mem::size_of::<(u64, KeyArc<KeyState>)>()
                + 8 // the shared pointer's count
                + std::mem::size_of::<KeyState>()
                + k.value().heap_bytes();
            entries += k.value().entries();
        }
        for e in &self.created {
            bytes += std::mem::size_of::<((u16, String), (i64, u64))>() + e.key().1.capacity();
        }
        for e in &self.quarantined {
            bytes +=
                std::mem::size_of::<((crate::event::Cloud, String), i64)>() + e.key().1.capacity();
        }
        entries += self.created.len() + self.quarantined.len();
        (self.keys.len(), entries, bytes)
    }
}
