//! Enrichment: what akwatch knows about an event beyond the log line — where the IP is
//! (GeoIP, ASN), what kind of IP it is (own asset, private, cloud service, Tor, threat list,
//! hosting / VPN, cloud provider), what the credential reports say about the principal and the
//! key, and whether the key is known to be leaked.

pub mod geo;
pub mod iplist;
pub mod leaks;
pub mod mmdb;

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::net::IpAddr;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::event::{Cloud, Event};
use crate::report::{Cell, ReportSnapshot};
pub use geo::{GeoDb, GeoInfo};
pub use iplist::IpSet;
pub use leaks::{LeakEntry, LeakFeed};

/// One kind of IP. An IP can be of several (a Tor exit on a hosting ASN).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum IpClass {
    /// In the account's own ranges (internal assets).
    Own,
    /// Private, loopback, link-local or other non-routable space.
    Private,
    /// Not an IP: a cloud service acting (`ec2.amazonaws.com`, `AWS Internal`).
    Service,
    /// A Tor exit node.
    Tor,
    /// On a threat-intelligence list.
    Threat,
    /// In a hosting / VPN provider's ASN.
    Hosting,
    /// In a cloud provider's ASN.
    Cloud,
    /// Any other routable address.
    Public,
    /// No usable address (masked, invalid or missing).
    Unknown,
}

impl IpClass {
    pub const ALL: [IpClass; 9] = [
        IpClass::Own,
        IpClass::Private,
        IpClass::Service,
        IpClass::Tor,
        IpClass::Threat,
        IpClass::Hosting,
        IpClass::Cloud,
        IpClass::Public,
        IpClass::Unknown,
    ];

    fn bit(self) -> u16 {
        1 << (self as u16)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            IpClass::Own => "own",
            IpClass::Private => "private",
            IpClass::Service => "service",
            IpClass::Tor => "tor",
            IpClass::Threat => "threat",
            IpClass::Hosting => "hosting",
            IpClass::Cloud => "cloud",
            IpClass::Public => "public",
            IpClass::Unknown => "unknown",
        }
    }

    pub fn parse(s: &str) -> Option<IpClass> {
        IpClass::ALL.into_iter().find(|c| c.as_str() == s)
    }
}

/// A set of [`IpClass`]es.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct IpClasses(u16);

impl IpClasses {
    pub fn insert(&mut self, c: IpClass) {
        self.0 |= c.bit();
    }
    pub fn contains(self, c: IpClass) -> bool {
        self.0 & c.bit() != 0
    }
    pub fn intersects(self, other: IpClasses) -> bool {
        self.0 & other.0 != 0
    }
    pub fn iter(self) -> impl Iterator<Item = IpClass> {
        IpClass::ALL.into_iter().filter(move |c| self.contains(*c))
    }
}

impl FromIterator<IpClass> for IpClasses {
    fn from_iter<T: IntoIterator<Item = IpClass>>(iter: T) -> Self {
        let mut s = IpClasses::default();
        for c in iter {
            s.insert(c);
        }
        s
    }
}

impl fmt::Display for IpClasses {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<_> = self.iter().map(IpClass::as_str).collect();
        f.write_str(&names.join(","))
    }
}

impl Serialize for IpClasses {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.iter())
    }
}

/// What a credential report says about one key.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct KeyFacts {
    pub active: bool,
    pub created: Option<DateTime<Utc>>,
    pub last_used: Option<DateTime<Utc>>,
    /// The report says the key was never used (as opposed to "unknown").
    pub never_used: bool,
    pub at_risk: bool,
}

/// What a credential report says about a principal.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct PrincipalFacts {
    pub root: bool,
    pub mfa_active: Option<bool>,
    pub keys: Vec<KeyFacts>,
}

/// Everything enrichment adds to one event.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Enrichment {
    /// Shared with the GeoIP cache: no copy per event.
    pub geo: Option<std::sync::Arc<GeoInfo>>,
    pub ip_class: IpClasses,
    /// Report facts for the key itself (Tencent reports name keys), or for the principal's only
    /// key.
    pub key: Option<KeyFacts>,
    pub principal: Option<std::sync::Arc<PrincipalFacts>>,
    /// The leak-feed entry or report flag that marks this key as leaked.
    pub leak: Option<LeakEntry>,
    /// The policy that makes the calling principal an administrator (permission snapshots).
    pub admin_via: Option<std::sync::Arc<str>>,
}

/// One principal of one report: its cloud, account (when the report tells) and facts.
type ReportedPrincipal = (Cloud, Option<String>, std::sync::Arc<PrincipalFacts>);

/// Whose a key is, as the newest credential report naming it says.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct KeyOwner {
    pub cloud: Cloud,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub account_id: Option<String>,
    pub principal: String,
    /// The principal's id where the report gives one (Tencent: the sub-account UIN).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub principal_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub arn: Option<String>,
    pub root: bool,
    /// When the report was generated (or its latest date).
    pub reported_at: DateTime<Utc>,
    /// The report's file.
    pub source: String,
}

/// Credential-report facts, indexed for the event join.
#[derive(Debug, Default)]
pub struct ReportIndex {
    by_key: HashMap<String, KeyFacts>,
    /// Each key's owner (one entry per key the reports list, as `by_key`).
    owners: HashMap<String, KeyOwner>,
    /// principal name → (cloud, account, facts); names are unique within an account.
    by_principal: HashMap<String, Vec<ReportedPrincipal>>,
}

impl ReportIndex {
    /// The index over reports given oldest first (a later report's facts about a key win).
    pub fn new<'a>(snapshots: impl IntoIterator<Item = &'a ReportSnapshot>) -> Self {
        let mut index = ReportIndex::default();
        for s in snapshots {
            index.add(s);
        }
        index
    }

    /// Adds (or replaces) the principals of one report.
    pub fn add(&mut self, snapshot: &ReportSnapshot) {
        let reported_at = crate::risk::report_time(snapshot);
        for p in &snapshot.principals {
            let keys: Vec<KeyFacts> = p
                .keys
                .iter()
                .map(|k| KeyFacts {
                    active: k.active,
                    created: k.created.value().or(k.last_rotated.value()).copied(),
                    last_used: k.last_used.value().copied(),
                    never_used: matches!(k.last_used, Cell::NotApplicable),
                    at_risk: k.at_risk.value() == Some(&true),
                })
                .collect();
            for (k, facts) in p.keys.iter().zip(&keys) {
                if let Some(id) = &k.id {
                    self.by_key.insert(id.0.clone(), facts.clone());
                    self.owners.insert(
                        id.0.clone(),
                        KeyOwner {
                            cloud: snapshot.cloud,
                            account_id: snapshot.account_id.as_ref().map(|a| a.0.clone()),
                            principal: p.name.clone(),
                            principal_id: p.id.clone(),
                            arn: p.arn.clone(),
                            root: p.root,
                            reported_at,
                            source: snapshot.source.clone(),
                        },
                    );
                }
            }
            let facts = std::sync::Arc::new(PrincipalFacts {
                root: p.root,
                mfa_active: p.mfa_active.value().copied(),
                keys,
            });
            let account = snapshot.account_id.as_ref().map(|a| a.0.clone());
            let mut names = vec![p.name.clone()];
            if let Some(id) = &p.id {
                names.push(id.clone());
            }
            if let Some((short, _)) = p.name.split_once('@') {
                names.push(short.to_owned());
            }
            for name in names {
                let entries = self.by_principal.entry(name).or_default();
                // A newer report of the same account replaces the older entry.
                entries.retain(|(c, a, _)| !(*c == snapshot.cloud && *a == account));
                entries.push((snapshot.cloud, account.clone(), facts.clone()));
            }
        }
    }

    /// The owner of a key the reports list.
    pub fn owner(&self, key: &str) -> Option<&KeyOwner> {
        self.owners.get(key)
    }

    /// Keys the reports flag as possibly leaked (Tencent `AccessKeyNMayBeAtRisk`).
    pub fn at_risk_keys(&self) -> impl Iterator<Item = &str> {
        self.by_key
            .iter()
            .filter(|(_, f)| f.at_risk)
            .map(|(k, _)| k.as_str())
    }

    fn principal(&self, event: &Event) -> Option<&std::sync::Arc<PrincipalFacts>> {
        let cloud = event.cloud;
        let names = [
            event.principal.name.as_deref(),
            event.principal.id.as_deref(),
            (event.principal.kind == crate::event::PrincipalType::Root).then_some(match cloud {
                Cloud::Aws => "<root_account>",
                Cloud::Alibaba => "<root>",
                Cloud::Tencent => "root",
            }),
        ];
        names.into_iter().flatten().find_map(|n| {
            self.by_principal
                .get(n)?
                .iter()
                .find_map(|(c, account, facts)| {
                    let same_account = match (account, &event.account_id) {
                        (Some(a), Some(b)) => a == b.as_str(),
                        _ => true,
                    };
                    (*c == cloud && same_account).then_some(facts)
                })
        })
    }
}

const GEO_CACHE_MAX: usize = 100_000;

/// Where the IP classes come from: list files and ASN sets.
#[derive(Debug, Default)]
pub struct IpLists {
    pub own: IpSet,
    pub tor: IpSet,
    pub threat: IpSet,
    pub hosting_asns: HashSet<u32>,
    pub cloud_asns: HashSet<u32>,
}

/// The enrichment stage.
#[derive(Debug, Default)]
pub struct Enricher {
    pub geo: Option<std::sync::Arc<GeoDb>>,
    /// GeoIP answers by IP (an API key calls from few IPs; the MaxMind decode is the costly
    /// part). Cleared when it reaches `GEO_CACHE_MAX` entries.
    pub geo_cache:
        dashmap::DashMap<IpAddr, Option<std::sync::Arc<GeoInfo>>, rustc_hash::FxBuildHasher>,
    pub lists: IpLists,
    pub reports: ReportIndex,
    pub leaks: LeakFeed,
    /// Permission snapshots: who holds high-risk permissions.
    pub permissions: crate::permissions::PermissionIndex,
}

impl Enricher {
    pub fn enrich(&self, event: &Event) -> Enrichment {
        let geo = match (&self.geo, event.source_ip) {
            (Some(db), Some(ip)) => match self.geo_cache.get(&ip) {
                Some(hit) => hit.clone(),
                None => {
                    let found = db.lookup(ip).map(std::sync::Arc::new);
                    if self.geo_cache.len() >= GEO_CACHE_MAX {
                        self.geo_cache.clear();
                    }
                    self.geo_cache.insert(ip, found.clone());
                    found
                }
            },
            _ => None,
        };
        let ip_class = self.classify(event, geo.as_deref());
        let principal = self.reports.principal(event).cloned();
        let key_id = event.access_key_id.as_ref().map(|k| k.as_str());
        let key = key_id
            .and_then(|k| self.reports.by_key.get(k).cloned())
            .or_else(|| {
                // Reports that do not name keys: a principal with a single key slot holds it.
                let p = principal.as_ref()?;
                (event.key_kind == crate::event::KeyKind::Permanent && p.keys.len() == 1)
                    .then(|| p.keys[0].clone())
            });
        let leak = key_id.and_then(|k| self.leaks.get(k).cloned()).or_else(|| {
            key_id
                .and_then(|k| self.reports.by_key.get(k))
                .filter(|f| f.at_risk)
                .map(|_| LeakEntry {
                    key_id: key_id.unwrap_or_default().to_owned(),
                    source: "credential report: may be at risk".to_owned(),
                    location: None,
                    found_at: None,
                })
        });
        let admin_via = if self.permissions.is_empty() {
            None
        } else {
            event.principal.name.as_deref().and_then(|p| {
                self.permissions
                    .admin_via(
                        event.cloud,
                        event.account_id.as_ref().map(|a| a.as_str()),
                        p,
                    )
                    .map(std::sync::Arc::from)
            })
        };
        Enrichment {
            geo,
            ip_class,
            key,
            principal,
            leak,
            admin_via,
        }
    }

    pub fn classify(&self, event: &Event, geo: Option<&GeoInfo>) -> IpClasses {
        let mut classes = IpClasses::default();
        let Some(ip) = event.source_ip else {
            if event
                .source_address
                .as_deref()
                .is_some_and(is_service_address)
            {
                classes.insert(IpClass::Service);
            } else {
                classes.insert(IpClass::Unknown);
            }
            return classes;
        };
        if self.lists.own.contains(ip) {
            classes.insert(IpClass::Own);
        }
        if is_private(ip) {
            classes.insert(IpClass::Private);
        } else {
            classes.insert(IpClass::Public);
        }
        if self.lists.tor.contains(ip) {
            classes.insert(IpClass::Tor);
        }
        if self.lists.threat.contains(ip) {
            classes.insert(IpClass::Threat);
        }
        if let Some(asn) = geo.and_then(|g| g.asn) {
            if self.lists.hosting_asns.contains(&asn) {
                classes.insert(IpClass::Hosting);
            }
            if self.lists.cloud_asns.contains(&asn) {
                classes.insert(IpClass::Cloud);
            }
        }
        classes
    }
}

/// A cloud service name where an IP would be (`ec2.amazonaws.com`, `AWS Internal`).
pub fn is_service_address(address: &str) -> bool {
    let a = address.trim();
    a == "AWS Internal"
        || a.ends_with(".amazonaws.com")
        || a.ends_with(".amazonaws.com.cn")
        || a.ends_with(".aliyuncs.com")
        || a.ends_with(".tencentcloudapi.com")
        || a.ends_with(".tencentyun.com")
}

/// Not routable on the internet: RFC 1918, CGNAT, loopback, link-local, ULA, documentation
/// ranges are *not* included (they stand for public addresses in examples).
pub fn is_private(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            v4.is_private()
                || v4.is_loopback()
                || v4.is_link_local()
                || v4.is_unspecified()
                || (o[0] == 100 && (64..128).contains(&o[1]))
        }
        IpAddr::V6(v6) => {
            let s = v6.segments();
            v6.is_loopback()
                || v6.is_unspecified()
                || (s[0] & 0xfe00) == 0xfc00
                || (s[0] & 0xffc0) == 0xfe80
        }
    }
}
