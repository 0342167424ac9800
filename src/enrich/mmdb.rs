//! A small writer of MaxMind DB files (format 2.0) with GeoIP2-City and GeoLite2-ASN fields in
//! one record. The scenario generator writes one beside its logs so that replays have
//! geolocation without a licensed database, and tests build theirs with it. Real deployments
//! read MaxMind's own files; this writer only has to produce what `maxminddb` reads.
//!
//! Format: <https://maxmind.github.io/MaxMind-DB/>. A 128-bit binary search tree (IPv4 lives
//! under `::/96`), 32-bit records, a 16-byte separator, the data section, then the metadata
//! marker and map.

use std::collections::HashMap;

use ipnetwork::IpNetwork;

/// What one network resolves to.
#[derive(Debug, Clone, PartialEq)]
pub struct GeoRecord {
    pub country_iso: String,
    pub country_name: String,
    pub city: String,
    pub latitude: f64,
    pub longitude: f64,
    pub asn: u32,
    pub as_org: String,
}

#[derive(Debug, Clone, Copy)]
enum Child {
    Empty,
    Node(u32),
    Data(u32),
}

/// Builds an MMDB file in memory.
#[derive(Debug)]
pub struct MmdbWriter {
    database_type: String,
    build_epoch: u64,
    nodes: Vec<[Child; 2]>,
    data: Vec<u8>,
    cache: HashMap<Vec<u8>, u32>,
}

/// The build time written when none is given (2025-01-01T00:00:00Z): libmaxminddb (and so
/// `mmdblookup`, the Python and many other readers) refuses a database whose `build_epoch` is
/// 0, and a generated database must not depend on the clock to stay reproducible.
pub const DEFAULT_BUILD_EPOCH: u64 = 1_735_689_600;

impl MmdbWriter {
    /// Sets the database's build time (Unix seconds, at least 1).
    pub fn build_epoch(&mut self, epoch: u64) {
        self.build_epoch = epoch.max(1);
    }

    pub fn new(database_type: &str) -> Self {
        MmdbWriter {
            database_type: database_type.to_owned(),
            build_epoch: DEFAULT_BUILD_EPOCH,
            nodes: vec![[Child::Empty, Child::Empty]],
            data: Vec::new(),
            cache: HashMap::new(),
        }
    }

    /// Maps `network` to `record`. Later inserts of overlapping networks win where they overlap.
    pub fn insert(&mut self, network: IpNetwork, record: &GeoRecord) {
        let bytes = encode_record(record);
        let offset = match self.cache.get(&bytes) {
            Some(o) => *o,
            None => {
                let o = u32::try_from(self.data.len()).unwrap_or(u32::MAX);
                self.data.extend_from_slice(&bytes);
                self.cache.insert(bytes, o);
                o
            }
        };
        let (bits, prefix) = match network {
            IpNetwork::V4(n) => (
                u128::from(n.network().to_bits()),
                96 + u32::from(n.prefix()),
            ),
            IpNetwork::V6(n) => (n.network().to_bits(), u32::from(n.prefix())),
        };
        let mut node = 0usize;
        for depth in 0..prefix {
            let bit = ((bits >> (127 - depth)) & 1) as usize;
            if depth + 1 == prefix {
                self.nodes[node][bit] = Child::Data(offset);
                return;
            }
            node = match self.nodes[node][bit] {
                Child::Node(n) => n as usize,
                Child::Empty | Child::Data(_) => {
                    let n = self.nodes.len();
                    self.nodes.push([Child::Empty, Child::Empty]);
                    self.nodes[node][bit] = Child::Node(n as u32);
                    n
                }
            };
        }
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let node_count = self.nodes.len() as u32;
        let mut out = Vec::with_capacity(self.nodes.len() * 8 + self.data.len() + 256);
        for node in &self.nodes {
            for child in node {
                let value = match *child {
                    Child::Empty => node_count,
                    Child::Node(n) => n,
                    Child::Data(o) => node_count + 16 + o,
                };
                out.extend_from_slice(&value.to_be_bytes());
            }
        }
        out.extend_from_slice(&[0u8; 16]);
        out.extend_from_slice(&self.data);
        out.extend_from_slice(b"\xab\xcd\xefMaxMind.com");
        let mut meta = Vec::new();
        map_header(&mut meta, 9);
        string(&mut meta, "binary_format_major_version");
        uint(&mut meta, 5, 2);
        string(&mut meta, "binary_format_minor_version");
        uint(&mut meta, 5, 0);
        string(&mut meta, "build_epoch");
        uint(&mut meta, 9, self.build_epoch);
        string(&mut meta, "database_type");
        string(&mut meta, &self.database_type);
        string(&mut meta, "description");
        map_header(&mut meta, 1);
        string(&mut meta, "en");
        string(&mut meta, "akwatch generated database");
        string(&mut meta, "ip_version");
        uint(&mut meta, 5, 6);
        string(&mut meta, "languages");
        control(&mut meta, 11, 1);
        string(&mut meta, "en");
        string(&mut meta, "node_count");
        uint(&mut meta, 6, u64::from(node_count));
        string(&mut meta, "record_size");
        uint(&mut meta, 5, 32);
        out.extend_from_slice(&meta);
        out
    }
}

fn encode_record(r: &GeoRecord) -> Vec<u8> {
    let mut out = Vec::new();
    map_header(&mut out, 5);
    string(&mut out, "autonomous_system_number");
    uint(&mut out, 6, u64::from(r.asn));
    string(&mut out, "autonomous_system_organization");
    string(&mut out, &r.as_org);
    string(&mut out, "city");
    names(&mut out, &r.city, None);
    string(&mut out, "country");
    names(&mut out, &r.country_name, Some(&r.country_iso));
    string(&mut out, "location");
    map_header(&mut out, 2);
    string(&mut out, "latitude");
    double(&mut out, r.latitude);
    string(&mut out, "longitude");
    double(&mut out, r.longitude);
    out
}

/// `{"iso_code": ..., "names": {"en": name}}` (iso_code only when given).
fn names(out: &mut Vec<u8>, name: &str, iso: Option<&str>) {
    map_header(out, if iso.is_some() { 2 } else { 1 });
    if let Some(iso) = iso {
        string(out, "iso_code");
        string(out, iso);
    }
    string(out, "names");
    map_header(out, 1);
    string(out, "en");
    string(out, name);
}

/// A control byte (and extended type byte, and size bytes) for a field of `kind` and `size`.
fn control(out: &mut Vec<u8>, kind: u8, size: usize) {
    let (first_type, ext) = if kind <= 7 {
        (kind << 5, None)
    } else {
        (0u8, Some(kind - 7))
    };
    let (size_bits, extra): (u8, Vec<u8>) = if size < 29 {
        (size as u8, vec![])
    } else if size < 29 + 256 {
        (29, vec![(size - 29) as u8])
    } else if size < 285 + 65_536 {
        (30, ((size - 285) as u16).to_be_bytes().to_vec())
    } else {
        (31, ((size - 65_821) as u32).to_be_bytes()[1..].to_vec())
    };
    out.push(first_type | size_bits);
    if let Some(e) = ext {
        out.push(e);
    }
    out.extend_from_slice(&extra);
}

fn map_header(out: &mut Vec<u8>, pairs: usize) {
    control(out, 7, pairs);
}

fn string(out: &mut Vec<u8>, s: &str) {
    control(out, 2, s.len());
    out.extend_from_slice(s.as_bytes());
}

fn double(out: &mut Vec<u8>, v: f64) {
    control(out, 3, 8);
    out.extend_from_slice(&v.to_be_bytes());
}

/// An unsigned integer of MMDB type `kind` (5 = uint16, 6 = uint32, 9 = uint64), in as few
/// big-endian bytes as it needs.
fn uint(out: &mut Vec<u8>, kind: u8, v: u64) {
    let bytes = v.to_be_bytes();
    let skip = bytes.iter().take_while(|b| **b == 0).count();
    control(out, kind, 8 - skip);
    out.extend_from_slice(&bytes[skip..]);
}
