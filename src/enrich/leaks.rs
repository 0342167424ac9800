//! Leak feeds: access keys found in code or paste sites, from a gitleaks JSON report
//! (`gitleaks detect --report-format json`) or trufflehog JSON lines (`trufflehog --json`).

use std::collections::HashMap;
use std::path::Path;

use serde::Serialize;
use serde_json::Value;

/// A key known to be leaked, and where it was found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LeakEntry {
    pub key_id: String,
    /// `gitleaks`, `trufflehog`, `credential report: may be at risk`, ...
    pub source: String,
    /// File, commit or URL where the key was found.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub location: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub found_at: Option<String>,
}

/// Leaked keys by id.
#[derive(Debug, Clone, Default)]
pub struct LeakFeed {
    entries: HashMap<String, LeakEntry>,
}

impl LeakFeed {
    pub fn get(&self, key_id: &str) -> Option<&LeakEntry> {
        self.entries.get(key_id)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Entries sorted by key id (for deterministic output).
    pub fn entries(&self) -> Vec<&LeakEntry> {
        let mut v: Vec<_> = self.entries.values().collect();
        v.sort_by(|a, b| a.key_id.cmp(&b.key_id));
        v
    }

    pub fn insert(&mut self, entry: LeakEntry) {
        self.entries.entry(entry.key_id.clone()).or_insert(entry);
    }

    pub fn read(&mut self, path: &Path) -> Result<usize, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("{}: cannot read: {e}", path.display()))?;
        self.parse(&path.display().to_string(), &text)
    }

    /// Parses a gitleaks report (a JSON array) or trufflehog output (JSON lines); returns how
    /// many keys were added. Errors name the file and line.
    pub fn parse(&mut self, file: &str, text: &str) -> Result<usize, String> {
        let before = self.entries.len();
        if text.trim_start().starts_with('[') {
            let findings: Vec<Value> = serde_json::from_str(text)
                .map_err(|e| format!("{file}:{}: not a gitleaks JSON report: {e}", e.line()))?;
            for f in findings {
                let location = [f.get("File"), f.get("Commit")]
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_str)
                    .collect::<Vec<_>>()
                    .join("@");
                for field in ["Secret", "Match"] {
                    for key in f
                        .get(field)
                        .and_then(Value::as_str)
                        .map(key_ids)
                        .unwrap_or_default()
                    {
                        self.insert(LeakEntry {
                            key_id: key,
                            source: "gitleaks".to_owned(),
                            location: (!location.is_empty()).then(|| location.clone()),
                            found_at: f.get("Date").and_then(Value::as_str).map(str::to_owned),
                        });
                    }
                }
            }
        } else {
            for (i, line) in text.lines().enumerate() {
                if line.trim().is_empty() {
                    continue;
                }
                let f: Value = serde_json::from_str(line)
                    .map_err(|e| format!("{file}:{}: not a trufflehog JSON line: {e}", i + 1))?;
                let git = f.pointer("/SourceMetadata/Data/Git");
                let location = git
                    .map(|g| {
                        [g.get("repository"), g.get("file"), g.get("commit")]
                            .into_iter()
                            .flatten()
                            .filter_map(Value::as_str)
                            .collect::<Vec<_>>()
                            .join(" ")
                    })
                    .filter(|s| !s.is_empty());
                for field in ["Raw", "RawV2", "Redacted"] {
                    for key in f
                        .get(field)
                        .and_then(Value::as_str)
                        .map(key_ids)
                        .unwrap_or_default()
                    {
                        self.insert(LeakEntry {
                            key_id: key,
                            source: format!(
                                "trufflehog{}",
                                if f.get("Verified").and_then(Value::as_bool) == Some(true) {
                                    " (verified)"
                                } else {
                                    ""
                                }
                            ),
                            location: location.clone(),
                            found_at: git
                                .and_then(|g| g.get("timestamp"))
                                .and_then(Value::as_str)
                                .map(str::to_owned),
                        });
                    }
                }
            }
        }
        Ok(self.entries.len() - before)
    }
}

/// How a key id continues after its prefix: allowed bytes, minimum and maximum length.
type KeyShape = (fn(u8) -> bool, usize, usize);

/// Access key ids in a text: AWS `AKIA`/`ASIA` + 16, Alibaba `LTAI` + 12..=30, Tencent `AKID` + 32
/// (upper-case letters and digits for AWS, letters and digits otherwise).
pub fn key_ids(text: &str) -> Vec<String> {
    let bytes = text.as_bytes();
    let mut found = Vec::new();
    let mut i = 0;
    while i + 4 <= bytes.len() {
        let prefix = &bytes[i..i + 4];
        let rule: Option<KeyShape> = match prefix {
            b"AKIA" | b"ASIA" => {
                Some((|b: u8| b.is_ascii_uppercase() || b.is_ascii_digit(), 16, 16))
            }
            b"LTAI" => Some((|b: u8| b.is_ascii_alphanumeric(), 12, 30)),
            b"AKID" => Some((|b: u8| b.is_ascii_alphanumeric(), 32, 32)),
            _ => None,
        };
        let boundary = i == 0 || !bytes[i - 1].is_ascii_alphanumeric();
        if let (Some((ok, min, max)), true) = (rule, boundary) {
            let len = bytes[i + 4..].iter().take_while(|b| ok(**b)).count();
            if (min..=max).contains(&len) {
                found.push(text[i..i + 4 + len].to_owned());
                i += 4 + len;
                continue;
            }
        }
        i += 1;
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_ids_of_the_three_clouds() {
        let t = "aws_access_key_id = AKIAIOSFODNN7EXAMPLE\nLTAI5tKqTestKey12345 AKIDz8krbsJ5yKBZQpn74WFkmLPx3gnPhESA xAKIAIOSFODNN7EXAMPLE";
        assert_eq!(
            key_ids(t),
            [
                "AKIAIOSFODNN7EXAMPLE",
                "LTAI5tKqTestKey12345",
                "AKIDz8krbsJ5yKBZQpn74WFkmLPx3gnPhESA"
            ]
        );
        assert!(key_ids("AKIA123").is_empty());
    }

    #[test]
    fn gitleaks_and_trufflehog() {
        let mut feed = LeakFeed::default();
        let gitleaks = r#"[{"RuleID":"aws-access-token","Match":"key=AKIAIOSFODNN7EXAMPLE","Secret":"AKIAIOSFODNN7EXAMPLE","File":"deploy.sh","Commit":"abc123","Date":"2025-03-01T00:00:00Z"}]"#;
        assert_eq!(feed.parse("g.json", gitleaks).unwrap(), 1);
        let th = "{\"DetectorName\":\"AWS\",\"Verified\":true,\"Raw\":\"AKIAI44QH8DHBEXAMPLE\",\"SourceMetadata\":{\"Data\":{\"Git\":{\"repository\":\"https://example.com/r.git\",\"file\":\"a.py\",\"commit\":\"def\"}}}}\n";
        assert_eq!(feed.parse("t.jsonl", th).unwrap(), 1);
        let e = feed.get("AKIAIOSFODNN7EXAMPLE").unwrap();
        assert_eq!(e.location.as_deref(), Some("deploy.sh@abc123"));
        assert_eq!(
            feed.get("AKIAI44QH8DHBEXAMPLE").unwrap().source,
            "trufflehog (verified)"
        );
        let err = feed.parse("t.jsonl", "{\"ok\":1}\nnot json\n").unwrap_err();
        assert!(err.starts_with("t.jsonl:2:"), "{err}");
    }
}
