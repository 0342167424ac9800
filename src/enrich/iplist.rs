//! IP / CIDR lists (Tor exits, threat intel, the account's own ranges) and ASN lists, from
//! plain text files: one entry a line, `#` comments, blank lines ignored.

use std::net::IpAddr;
use std::path::Path;

use ipnetwork::IpNetwork;

/// A problem in a list file, with its file and line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}:{line}: {message}")]
pub struct ListError {
    pub file: String,
    pub line: usize,
    pub message: String,
}

/// A set of addresses and networks, as merged, sorted ranges: lookups are a binary search.
#[derive(Debug, Clone, Default)]
pub struct IpSet {
    /// Inclusive ranges over the IPv6 space (IPv4 mapped into `::ffff:0:0/96`).
    ranges: Vec<(u128, u128)>,
}

fn key(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v4) => u128::from(v4.to_ipv6_mapped()),
        IpAddr::V6(v6) => u128::from(v6),
    }
}

fn range(net: IpNetwork) -> (u128, u128) {
    let (start, bits, total) = match net {
        IpNetwork::V4(n) => (key(IpAddr::V4(n.network())), u32::from(n.prefix()), 32),
        IpNetwork::V6(n) => (key(IpAddr::V6(n.network())), u32::from(n.prefix()), 128),
    };
    let host_bits = total - bits;
    let span = if host_bits >= 128 {
        u128::MAX
    } else {
        (1u128 << host_bits) - 1
    };
    (start, start.saturating_add(span))
}

impl IpSet {
    pub fn from_networks(networks: impl IntoIterator<Item = IpNetwork>) -> Self {
        let mut ranges: Vec<(u128, u128)> = networks.into_iter().map(range).collect();
        ranges.sort_unstable();
        let mut merged: Vec<(u128, u128)> = Vec::with_capacity(ranges.len());
        for (s, e) in ranges {
            match merged.last_mut() {
                Some((_, last_end)) if s <= last_end.saturating_add(1) => {
                    *last_end = (*last_end).max(e)
                }
                _ => merged.push((s, e)),
            }
        }
        IpSet { ranges: merged }
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        let k = key(ip);
        let i = self.ranges.partition_point(|(s, _)| *s <= k);
        i > 0 && self.ranges[i - 1].1 >= k
    }

    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    pub fn len(&self) -> usize {
        self.ranges.len()
    }

    /// Parses list text: an IP or CIDR per line; `#` starts a comment. Every bad line is
    /// reported.
    pub fn parse(file: &str, text: &str) -> Result<Self, Vec<ListError>> {
        let mut nets = Vec::new();
        let mut errors = Vec::new();
        for (i, entry) in entries(text) {
            let parsed = entry
                .parse::<IpNetwork>()
                .or_else(|_| entry.parse::<IpAddr>().map(IpNetwork::from));
            match parsed {
                Ok(n) => nets.push(n),
                Err(_) => errors.push(ListError {
                    file: file.to_owned(),
                    line: i,
                    message: format!("not an IP address or CIDR: {entry:?}"),
                }),
            }
        }
        if errors.is_empty() {
            Ok(IpSet::from_networks(nets))
        } else {
            Err(errors)
        }
    }

    pub fn read(path: &Path) -> Result<Self, Vec<ListError>> {
        let name = path.display().to_string();
        let text = read_text(path)?;
        IpSet::parse(&name, &text)
    }
}

/// Parses an ASN list: `AS13335`, `13335`, one a line, `#` comments.
pub fn parse_asns(file: &str, text: &str) -> Result<Vec<u32>, Vec<ListError>> {
    let mut asns = Vec::new();
    let mut errors = Vec::new();
    for (i, entry) in entries(text) {
        let digits = entry.trim_start_matches(['A', 'S', 'a', 's']);
        match digits.parse::<u32>() {
            Ok(n) => asns.push(n),
            Err(_) => errors.push(ListError {
                file: file.to_owned(),
                line: i,
                message: format!("not an AS number: {entry:?}"),
            }),
        }
    }
    if errors.is_empty() {
        Ok(asns)
    } else {
        Err(errors)
    }
}

pub fn read_asns(path: &Path) -> Result<Vec<u32>, Vec<ListError>> {
    let name = path.display().to_string();
    let text = read_text(path)?;
    parse_asns(&name, &text)
}

fn read_text(path: &Path) -> Result<String, Vec<ListError>> {
    std::fs::read_to_string(path).map_err(|e| {
        vec![ListError {
            file: path.display().to_string(),
            line: 0,
            message: format!("cannot read: {e}"),
        }]
    })
}

/// Non-empty entries with their 1-based line numbers; the first field of a line is the entry
/// (so `1.2.3.4 # note` and `AS123 Some Org` work).
fn entries(text: &str) -> impl Iterator<Item = (usize, &str)> {
    text.lines().enumerate().filter_map(|(i, line)| {
        let line = line.split('#').next().unwrap_or("").trim();
        line.split_whitespace()
            .next()
            .map(|e| (i + 1, e.trim_end_matches(',')))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn membership_merges_and_mixes_families() {
        let set = IpSet::parse(
            "t",
            "# tor\n10.0.0.0/8\n10.1.0.0/16\n192.0.2.7\n2001:db8::/32 # doc\n",
        )
        .unwrap();
        assert_eq!(set.len(), 3, "10.1/16 merged into 10/8");
        for ip in ["10.0.0.1", "10.255.255.255", "192.0.2.7", "2001:db8::1"] {
            assert!(set.contains(ip.parse().unwrap()), "{ip}");
        }
        for ip in ["11.0.0.0", "192.0.2.8", "2001:db9::1", "::ffff:0:0"] {
            assert!(!set.contains(ip.parse().unwrap()), "{ip}");
        }
    }

    #[test]
    fn bad_lines_are_all_reported_with_line_numbers() {
        let errors = IpSet::parse("lists/tor.txt", "1.2.3.4\nbogus\n\n5.6.7.8/33\n").unwrap_err();
        let lines: Vec<_> = errors.iter().map(|e| e.line).collect();
        assert_eq!(lines, [2, 4]);
        assert_eq!(
            errors[0].to_string(),
            "lists/tor.txt:2: not an IP address or CIDR: \"bogus\""
        );
        assert_eq!(
            parse_asns("a", "AS13335 Cloudflare\n16509\n").unwrap(),
            [13335, 16509]
        );
        assert_eq!(parse_asns("a", "ASx\n").unwrap_err()[0].line, 1);
    }
}
