//! GeoIP city / country / location and ASN from MaxMind DB files (GeoLite2 / GeoIP2 City and
//! ASN, or one file holding both, such as the scenario generator's).

use std::net::IpAddr;
use std::path::Path;

use serde::{Deserialize, Serialize};

/// Where an IP is, as far as the databases know.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct GeoInfo {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub country: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub city: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latitude: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub longitude: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub asn: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub as_org: Option<String>,
}

impl GeoInfo {
    pub fn location(&self) -> Option<(f64, f64)> {
        Some((self.latitude?, self.longitude?))
    }

    fn merge(&mut self, other: GeoInfo) {
        self.country = self.country.take().or(other.country);
        self.city = self.city.take().or(other.city);
        self.latitude = self.latitude.or(other.latitude);
        self.longitude = self.longitude.or(other.longitude);
        self.asn = self.asn.or(other.asn);
        self.as_org = self.as_org.take().or(other.as_org);
    }
}

#[derive(Deserialize)]
struct Names<'a> {
    #[serde(borrow)]
    en: Option<&'a str>,
}

#[derive(Deserialize)]
struct Named<'a> {
    #[serde(borrow)]
    names: Option<Names<'a>>,
    #[serde(borrow)]
    iso_code: Option<&'a str>,
}

#[derive(Deserialize)]
struct Location {
    latitude: Option<f64>,
    longitude: Option<f64>,
}

#[derive(Deserialize)]
struct Record<'a> {
    #[serde(borrow)]
    city: Option<Named<'a>>,
    #[serde(borrow)]
    country: Option<Named<'a>>,
    location: Option<Location>,
    autonomous_system_number: Option<u32>,
    #[serde(borrow)]
    autonomous_system_organization: Option<&'a str>,
}

/// One or more MaxMind DB files, looked up together.
pub struct GeoDb {
    readers: Vec<(String, maxminddb::Reader<Vec<u8>>)>,
}

impl std::fmt::Debug for GeoDb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<_> = self
            .readers
            .iter()
            .map(|(n, r)| format!("{n} ({})", r.metadata().database_type))
            .collect();
        f.debug_struct("GeoDb").field("files", &names).finish()
    }
}

impl GeoDb {
    pub fn open(paths: &[impl AsRef<Path>]) -> Result<Self, String> {
        let mut readers = Vec::new();
        for p in paths {
            let p = p.as_ref();
            let bytes =
                std::fs::read(p).map_err(|e| format!("{}: cannot read: {e}", p.display()))?;
            let reader = maxminddb::Reader::from_source(bytes)
                .map_err(|e| format!("{}: not a MaxMind DB file: {e}", p.display()))?;
            readers.push((p.display().to_string(), reader));
        }
        Ok(GeoDb { readers })
    }

    pub fn from_bytes(name: &str, bytes: Vec<u8>) -> Result<Self, String> {
        let reader = maxminddb::Reader::from_source(bytes)
            .map_err(|e| format!("{name}: not a MaxMind DB: {e}"))?;
        Ok(GeoDb {
            readers: vec![(name.to_owned(), reader)],
        })
    }

    /// The database types, for the start-up log (`GeoLite2-City`, `GeoLite2-ASN`, ...).
    pub fn kinds(&self) -> Vec<String> {
        self.readers
            .iter()
            .map(|(_, r)| r.metadata().database_type.clone())
            .collect()
    }

    pub fn has_location(&self) -> bool {
        self.kinds().iter().any(|k| !k.contains("ASN"))
    }

    pub fn has_asn(&self) -> bool {
        self.kinds()
            .iter()
            .any(|k| k.contains("ASN") || k.starts_with("akwatch"))
    }

    pub fn lookup(&self, ip: IpAddr) -> Option<GeoInfo> {
        let mut info = GeoInfo::default();
        let mut found = false;
        for (_, reader) in &self.readers {
            let Ok(result) = reader.lookup(ip) else {
                continue;
            };
            let Ok(Some(record)) = result.decode::<Record<'_>>() else {
                continue;
            };
            found = true;
            info.merge(GeoInfo {
                country: record
                    .country
                    .as_ref()
                    .and_then(|c| c.iso_code)
                    .map(str::to_owned),
                city: record
                    .city
                    .and_then(|c| c.names)
                    .and_then(|n| n.en)
                    .map(str::to_owned),
                latitude: record.location.as_ref().and_then(|l| l.latitude),
                longitude: record.location.as_ref().and_then(|l| l.longitude),
                asn: record.autonomous_system_number,
                as_org: record.autonomous_system_organization.map(str::to_owned),
            });
        }
        found.then_some(info)
    }
}

/// Great-circle distance in kilometres (haversine).
pub fn distance_km(a: (f64, f64), b: (f64, f64)) -> f64 {
    let (lat1, lon1) = (a.0.to_radians(), a.1.to_radians());
    let (lat2, lon2) = (b.0.to_radians(), b.1.to_radians());
    let h = ((lat2 - lat1) / 2.0).sin().powi(2)
        + lat1.cos() * lat2.cos() * ((lon2 - lon1) / 2.0).sin().powi(2);
    2.0 * 6371.0 * h.sqrt().min(1.0).asin()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::enrich::mmdb::{GeoRecord, MmdbWriter};

    fn record(city: &str, cc: &str, lat: f64, lon: f64, asn: u32) -> GeoRecord {
        GeoRecord {
            country_iso: cc.into(),
            country_name: cc.into(),
            city: city.into(),
            latitude: lat,
            longitude: lon,
            asn,
            as_org: format!("AS{asn} org"),
        }
    }

    #[test]
    fn the_generated_database_reads_back() {
        let mut w = MmdbWriter::new("akwatch-City-ASN");
        w.insert(
            "198.51.100.0/24".parse().unwrap(),
            &record("Frankfurt", "DE", 50.11, 8.68, 64501),
        );
        w.insert(
            "203.0.113.0/25".parse().unwrap(),
            &record("Singapore", "SG", 1.29, 103.85, 64502),
        );
        w.insert(
            "2001:db8:1::/48".parse().unwrap(),
            &record("Ashburn", "US", 39.04, -77.49, 64503),
        );
        let db = GeoDb::from_bytes("t.mmdb", w.to_bytes()).unwrap();
        let de = db.lookup("198.51.100.77".parse().unwrap()).unwrap();
        assert_eq!(
            (de.country.as_deref(), de.city.as_deref(), de.asn),
            (Some("DE"), Some("Frankfurt"), Some(64501))
        );
        assert_eq!(de.location(), Some((50.11, 8.68)));
        assert_eq!(
            db.lookup("203.0.113.1".parse().unwrap())
                .unwrap()
                .city
                .as_deref(),
            Some("Singapore")
        );
        assert_eq!(
            db.lookup("2001:db8:1::5".parse().unwrap()).unwrap().asn,
            Some(64503)
        );
        assert!(
            db.lookup("203.0.113.200".parse().unwrap()).is_none(),
            "outside the /25"
        );
        assert!(db.lookup("8.8.8.8".parse().unwrap()).is_none());
    }

    /// The metadata libmaxminddb insists on (it refuses a database built at epoch 0): so
    /// `mmdblookup` and the other C-based readers open what `simulate` writes.
    #[test]
    fn the_generated_database_has_the_metadata_libmaxminddb_requires() {
        let mut w = MmdbWriter::new("akwatch-City-ASN");
        w.insert(
            "198.51.100.0/24".parse().unwrap(),
            &record("Frankfurt", "DE", 50.11, 8.68, 64501),
        );
        let reader = maxminddb::Reader::from_source(w.to_bytes()).unwrap();
        let m = reader.metadata();
        assert_eq!(m.build_epoch, crate::enrich::mmdb::DEFAULT_BUILD_EPOCH);
        assert_eq!(
            (m.binary_format_major_version, m.record_size, m.ip_version),
            (2, 32, 6)
        );
        assert!(m.node_count > 0);
        assert_eq!(m.languages, vec!["en".to_owned()]);
        assert_eq!(m.database_type, "akwatch-City-ASN");
    }

    #[test]
    fn distances() {
        let frankfurt = (50.11, 8.68);
        let singapore = (1.29, 103.85);
        let d = distance_km(frankfurt, singapore);
        assert!((10_200.0..10_300.0).contains(&d), "{d}");
        assert!(distance_km(frankfurt, frankfurt) < 1e-6);
    }
}
