//! Per-key detection state, kept in a `DashMap` so that several consumers can share it.
//!
//! Compact by design (the target is under 1 KB per active key with 10 IPs): attribute values
//! are remembered as 64-bit hashes, times as seconds, and every list is bounded.

use std::collections::VecDeque;

use dashmap::DashMap;

use crate::rule::Attr;

/// A 64-bit hash of an attribute value (FNV-1a; stable across runs, so state can be saved).
pub fn value_hash(attr: Attr, value: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325 ^ (attr as u64);
    for b in value.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// When a remembered value was first and last seen (event time, seconds).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seen {
    pub first: i64,
    pub last: i64,
}

/// A located call, for `velocity`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Located {
    pub time: i64,
    pub lat: f32,
    pub lon: f32,
    pub ip: u64,
}

/// The state of one detector of one rule for one key.
#[derive(Debug, Clone, Default)]
pub struct Window {
    /// (event time, value hashes of the detector's attributes), sorted by time.
    pub items: VecDeque<(i64, [u64; 3])>,
    /// `threshold` with a baseline: (bucket start, count), sorted.
    pub buckets: VecDeque<(i64, u32)>,
    /// `sequence`: times (and source-IP hashes) at which `first` matched.
    pub marks: VecDeque<(i64, u64)>,
}

/// Everything the engine remembers about one key.
#[derive(Debug, Clone, Default)]
pub struct KeyState {
    pub first_seen: i64,
    pub last_seen: i64,
    /// Attribute values seen, by [`value_hash`].
    pub seen: hashbrown_map::Map,
    /// (rule index, detector index) → window.
    pub windows: Vec<((u16, u8), Window)>,
    pub locations: VecDeque<Located>,
}

/// A small open-addressed map would do; std's `HashMap` with a cheap hasher is enough and
/// keeps the code plain.
pub mod hashbrown_map {
    use std::collections::HashMap;
    use std::hash::BuildHasherDefault;

    /// Identity hasher: the keys are already hashes.
    #[derive(Default)]
    pub struct Identity(u64);

    impl std::hash::Hasher for Identity {
        fn finish(&self) -> u64 {
            self.0
        }
        fn write(&mut self, bytes: &[u8]) {
            for b in bytes {
                self.0 = (self.0 << 8) ^ u64::from(*b);
            }
        }
        fn write_u64(&mut self, n: u64) {
            self.0 = n;
        }
    }

    pub type Map = HashMap<u64, super::Seen, BuildHasherDefault<Identity>>;
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
                self.windows.push((key, Window::default()));
                self.windows.len() - 1
            }
        };
        &mut self.windows[i].1
    }

    /// Was `hash` seen within `[t - history, t)`? (Sightings are kept as first / last, so a
    /// value seen before and after a quiet gap counts as seen throughout.)
    pub fn seen_within(&self, hash: u64, t: i64, history: i64) -> bool {
        self.seen
            .get(&hash)
            .is_some_and(|s| s.first < t && s.last >= t - history)
    }

    pub fn remember(&mut self, hash: u64, t: i64) {
        self.seen
            .entry(hash)
            .and_modify(|s| {
                s.first = s.first.min(t);
                s.last = s.last.max(t);
            })
            .or_insert(Seen { first: t, last: t });
    }

    /// Drops what no detector can look at any more.
    pub fn expire(&mut self, horizon: i64) {
        let cutoff = self.last_seen - horizon;
        self.seen.retain(|_, s| s.last >= cutoff);
        for (_, w) in &mut self.windows {
            while w.items.front().is_some_and(|(t, _)| *t < cutoff) {
                w.items.pop_front();
            }
            while w.buckets.front().is_some_and(|(t, _)| *t < cutoff) {
                w.buckets.pop_front();
            }
            while w.marks.front().is_some_and(|(t, _)| *t < cutoff) {
                w.marks.pop_front();
            }
        }
        self.windows
            .retain(|(_, w)| !(w.items.is_empty() && w.buckets.is_empty() && w.marks.is_empty()));
        while self.locations.front().is_some_and(|l| l.time < cutoff) {
            self.locations.pop_front();
        }
    }

    /// Approximate heap bytes held (for the state-size metric and the memory bench).
    pub fn heap_bytes(&self) -> usize {
        let seen = self.seen.capacity() * (std::mem::size_of::<(u64, Seen)>() + 1);
        let windows: usize = self
            .windows
            .iter()
            .map(|(_, w)| {
                std::mem::size_of::<((u16, u8), Window)>()
                    + w.items.capacity() * std::mem::size_of::<(i64, [u64; 3])>()
                    + w.buckets.capacity() * std::mem::size_of::<(i64, u32)>()
                    + w.marks.capacity() * std::mem::size_of::<(i64, u64)>()
            })
            .sum();
        seen + windows + self.locations.capacity() * std::mem::size_of::<Located>()
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
    pub keys: DashMap<String, KeyState>,
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
            bytes += k.key().len() + std::mem::size_of::<KeyState>() + k.value().heap_bytes();
            entries += k.value().seen.len()
                + k.value()
                    .windows
                    .iter()
                    .map(|(_, w)| w.items.len())
                    .sum::<usize>();
        }
        (self.keys.len(), entries, bytes)
    }
}
