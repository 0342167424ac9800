//! Credential reports that change while the service runs. Reports come from files (watched
//! directories, re-scanned) and from a Kafka topic (keyed by account, typically compacted); the
//! newest report of each account wins, whatever its way in. The engine's join index is rebuilt
//! from the winners and swapped in whole.
//!
//! "Newest" is the report's own `GeneratedTime` (AWS `get-credential-report` JSON) when it has
//! one, else the file's modification time or the Kafka message's timestamp. "Account" is the
//! cloud plus the account id (AWS: from the ARNs; a topic key `cloud:account` supplies it for
//! the clouds whose reports do not carry it), else the Alibaba account alias, else the report's
//! origin (the file path, or the topic and key): a report that names no account replaces only
//! the one from the same file or key.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use chrono::{DateTime, Utc};

use super::{Parsed, ReportSnapshot, parse_report, read_report};
use crate::event::{AccountId, Cloud};
use crate::source::files_in;

/// One report as received, with the time that orders it against others of the same account.
#[derive(Debug, Clone)]
pub struct Candidate {
    pub snapshot: ReportSnapshot,
    pub as_of: DateTime<Utc>,
}

impl Candidate {
    fn new(snapshot: ReportSnapshot, received: DateTime<Utc>) -> Candidate {
        let as_of = snapshot.generated_at.unwrap_or(received);
        Candidate { snapshot, as_of }
    }

    /// The account this report describes, when it says.
    pub fn account(&self) -> Option<String> {
        let s = &self.snapshot;
        let cloud = s.cloud.as_str();
        if let Some(id) = &s.account_id {
            return Some(format!("{cloud}:{}", id.0));
        }
        s.account_alias
            .as_ref()
            .map(|alias| format!("{cloud}:alias:{alias}"))
    }
}

/// What one scan or message changed.
#[derive(Debug, Default)]
pub struct Change {
    /// The set of winning reports may be different.
    pub changed: bool,
    /// Files or messages that could not be read (the previous version of each is kept).
    pub errors: Vec<String>,
    /// Rows left out of reports that were read.
    pub warnings: Vec<String>,
}

impl Change {
    pub fn merge(&mut self, other: Change) {
        self.changed |= other.changed;
        self.errors.extend(other.errors);
        self.warnings.extend(other.warnings);
    }
}

/// A report file as last seen: its size and modification time, and what it held.
#[derive(Debug)]
struct SeenFile {
    stamp: (Option<SystemTime>, u64),
    candidate: Option<Candidate>,
    /// The last error, so an unchanged broken file is reported once, not at every scan.
    error: Option<String>,
}

/// Every report received, by origin; `latest()` picks the newest per account.
#[derive(Debug, Default)]
pub struct ReportFeed {
    paths: Vec<PathBuf>,
    files: BTreeMap<PathBuf, SeenFile>,
    /// Topic reports by their origin (`topic/key`).
    messages: BTreeMap<String, Candidate>,
}

impl ReportFeed {
    /// A feed over report files and directories (directories: every file in them).
    pub fn new(paths: &[PathBuf]) -> ReportFeed {
        ReportFeed {
            paths: paths.to_vec(),
            ..ReportFeed::default()
        }
    }

    /// Looks at the files again: new and changed ones are read, vanished ones dropped. A file
    /// that cannot be read keeps its previous version (a report half-written is not a report
    /// with no users) and is reported once per change.
    pub fn scan(&mut self) -> Change {
        let mut change = Change::default();
        let mut present = Vec::new();
        for path in files_in(&self.paths) {
            let stamp = stamp(&path);
            present.push(path.clone());
            if self.files.get(&path).is_some_and(|f| f.stamp == stamp) {
                continue;
            }
            change.merge(self.read_file(path, stamp));
        }
        let before = self.files.len();
        self.files.retain(|p, _| present.contains(p));
        if self.files.len() != before {
            change.changed = true;
        }
        change
    }

    fn read_file(&mut self, path: PathBuf, stamp: (Option<SystemTime>, u64)) -> Change {
        let mut change = Change::default();
        let entry = self.files.entry(path.clone()).or_insert(SeenFile {
            stamp: (None, u64::MAX),
            candidate: None,
            error: None,
        });
        match read_report(&path) {
            Ok(parsed) => {
                change.warnings.extend(row_warnings(&parsed));
                let received = stamp.0.map_or_else(Utc::now, DateTime::<Utc>::from);
                entry.candidate = Some(Candidate::new(parsed.snapshot, received));
                entry.stamp = stamp;
                entry.error = None;
                change.changed = true;
            }
            Err(e) => {
                let e = e.to_string();
                if entry.error.as_ref() != Some(&e) {
                    change.errors.push(e.clone());
                }
                // The stamp is left as it was: the next scan tries again.
                entry.error = Some(e);
            }
        }
        change
    }

    /// A message of the report topic. The key names the account (`aws:123456789012`,
    /// `tencent:100012345678`, or any stable name); an empty payload (a tombstone) withdraws the
    /// key's report. `received` orders reports without a `GeneratedTime`.
    pub fn apply_message(
        &mut self,
        topic: &str,
        key: Option<&[u8]>,
        payload: Option<&[u8]>,
        received: DateTime<Utc>,
        origin: &str,
    ) -> Change {
        let key = key.map(|k| String::from_utf8_lossy(k).into_owned());
        let name = match &key {
            Some(k) => format!("{topic}/{k}"),
            // Without a key nothing can replace it but a report naming the same account.
            None => origin.to_owned(),
        };
        let mut change = Change::default();
        let Some(payload) = payload.filter(|p| !p.is_empty()) else {
            change.changed = self.messages.remove(&name).is_some();
            return change;
        };
        match parse_report(origin, payload) {
            Ok(parsed) => {
                change.warnings.extend(row_warnings(&parsed));
                let mut snapshot = parsed.snapshot;
                if snapshot.account_id.is_none()
                    && let Some((cloud, account)) = key.as_deref().and_then(|k| k.split_once(':'))
                    && cloud.parse::<Cloud>() == Ok(snapshot.cloud)
                    && !account.is_empty()
                    && account
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                {
                    snapshot.account_id = Some(AccountId(account.to_owned()));
                }
                self.messages
                    .insert(name, Candidate::new(snapshot, received));
                change.changed = true;
            }
            Err(e) => change.errors.push(e.to_string()),
        }
        change
    }

    /// The newest report of each account, oldest first (so that where two accounts' reports
    /// name the same key, the newer report's facts win in the index).
    pub fn latest(&self) -> Vec<&ReportSnapshot> {
        let mut best: HashMap<String, &Candidate> = HashMap::new();
        let files = self
            .files
            .iter()
            .filter_map(|(p, f)| Some((p.display().to_string(), f.candidate.as_ref()?)));
        let messages = self.messages.iter().map(|(n, c)| (n.clone(), c));
        for (origin, candidate) in files.chain(messages) {
            let account = candidate.account().unwrap_or(origin);
            match best.get(&account) {
                // Ties go to the later origin in name order: deterministic.
                Some(held) if held.as_of > candidate.as_of => {}
                _ => {
                    best.insert(account, candidate);
                }
            }
        }
        let mut out: Vec<&Candidate> = best.into_values().collect();
        out.sort_by(|a, b| (a.as_of, &a.snapshot.source).cmp(&(b.as_of, &b.snapshot.source)));
        out.into_iter().map(|c| &c.snapshot).collect()
    }

    /// How many reports (accounts) are in use.
    pub fn accounts(&self) -> usize {
        self.latest().len()
    }
}

fn row_warnings(parsed: &Parsed) -> impl Iterator<Item = String> + '_ {
    parsed
        .row_errors
        .iter()
        .map(|e| format!("credential report row left out: {e}"))
}

/// A file's identity for change detection: modification time and size.
fn stamp(path: &Path) -> (Option<SystemTime>, u64) {
    match std::fs::metadata(path) {
        Ok(m) => (m.modified().ok(), m.len()),
        Err(_) => (None, 0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const AWS_HEADER: &str = "user,arn,user_creation_time,password_enabled,password_last_used,password_last_changed,password_next_rotation,mfa_active,access_key_1_active,access_key_1_last_rotated,access_key_1_last_used_date,access_key_1_last_used_region,access_key_1_last_used_service,access_key_2_active,access_key_2_last_rotated,access_key_2_last_used_date,access_key_2_last_used_region,access_key_2_last_used_service,cert_1_active,cert_1_last_rotated,cert_2_active,cert_2_last_rotated\n";

    fn aws_report(account: &str, user: &str, active: bool) -> String {
        format!(
            "{AWS_HEADER}{user},arn:aws:iam::{account}:user/{user},2024-01-01T00:00:00+00:00,false,N/A,N/A,N/A,false,{active},2024-01-01T00:00:00+00:00,N/A,N/A,N/A,false,N/A,N/A,N/A,N/A,false,N/A,false,N/A\n"
        )
    }

    fn t(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    fn users(feed: &ReportFeed) -> Vec<String> {
        let mut v: Vec<String> = feed
            .latest()
            .iter()
            .flat_map(|s| s.principals.iter().map(|p| p.name.clone()))
            .collect();
        v.sort();
        v
    }

    /// A message of the test topic.
    fn publish(feed: &mut ReportFeed, key: &str, report: Option<&str>, at: &str) -> Change {
        let origin = format!("reports:0:{at}");
        feed.apply_message(
            "reports",
            Some(key.as_bytes()),
            report.map(str::as_bytes),
            t(at),
            &origin,
        )
    }

    #[test]
    fn a_newer_report_replaces_the_older_per_account_whatever_the_origin() {
        let mut feed = ReportFeed::default();
        let a1 = aws_report("111111111111", "alice", true);
        let b1 = aws_report("222222222222", "bob", true);
        let c = publish(&mut feed, "a", Some(&a1), "2026-11-01T00:00:00Z");
        assert!(c.changed && c.errors.is_empty(), "{c:?}");
        publish(&mut feed, "b", Some(&b1), "2026-11-01T00:00:00Z");
        assert_eq!(users(&feed), ["alice", "bob"]);
        // Same account 111..., another key, newer: replaces alice's report.
        let a2 = aws_report("111111111111", "carol", true);
        publish(&mut feed, "a-again", Some(&a2), "2026-11-02T00:00:00Z");
        assert_eq!(users(&feed), ["bob", "carol"]);
        // An older report of that account arriving late does not win.
        let a0 = aws_report("111111111111", "dave", true);
        publish(&mut feed, "a-old", Some(&a0), "2026-10-01T00:00:00Z");
        assert_eq!(users(&feed), ["bob", "carol"]);
        // A tombstone withdraws the key's report.
        let c = publish(&mut feed, "b", None, "2026-11-03T00:00:00Z");
        assert!(c.changed);
        assert_eq!(users(&feed), ["carol"]);
    }

    #[test]
    fn a_topic_key_names_the_account_of_reports_that_do_not() {
        let tencent = "AccountID,Username,UserType,CreationTime,PasswordEnabled,PasswordLastRotation,LoginConsoleActive,LoginProtectionActive,OperationProtectionActive,MFADeviceActive,Abnormal LoginsNumWithin30Days,AccessKey1SecretId,AccessKey1MayBeAtRisk,AccessKey1CreationTime,AccessKey1Status,AccessKey1lastUsedDate,AccessKey1CreatedOver90Days,AccessKey1CreatedOver30Days\n200000000003,web-00003,sub-user,2025/1/3 8:00:00,FALSE,FALSE,FALSE,FALSE,FALSE,FALSE,FALSE,AKIDSIM00000000000000000000000000003,FALSE,2025/1/3 8:00:00,Active,2025/6/1 8:00:00,TRUE,TRUE\n";
        let mut feed = ReportFeed::default();
        let c = publish(
            &mut feed,
            "tencent:100012345678",
            Some(tencent),
            "2026-11-01T00:00:00Z",
        );
        assert!(c.errors.is_empty(), "{c:?}");
        let latest = feed.latest();
        assert_eq!(
            latest[0].account_id.as_ref().map(|a| a.0.as_str()),
            Some("100012345678")
        );
    }

    #[test]
    fn files_are_rescanned_changed_files_reread_broken_files_keep_their_last_version() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("aws.csv");
        std::fs::write(&file, aws_report("111111111111", "alice", true)).unwrap();
        let mut feed = ReportFeed::new(&[dir.path().to_path_buf()]);
        let c = feed.scan();
        assert!(c.changed && c.errors.is_empty(), "{c:?}");
        assert_eq!(users(&feed), ["alice"]);
        // Unchanged: nothing to do.
        assert!(!feed.scan().changed);
        // A broken rewrite: reported once, the last good version kept.
        std::fs::write(&file, "user,arn\n\"unterminated").unwrap();
        let c = feed.scan();
        assert_eq!(c.errors.len(), 1, "{c:?}");
        assert!(c.errors[0].contains("aws.csv"), "{c:?}");
        assert_eq!(users(&feed), ["alice"]);
        assert!(feed.scan().errors.is_empty(), "reported once");
        // Fixed: read again.
        std::fs::write(&file, aws_report("111111111111", "bob", true)).unwrap();
        assert!(feed.scan().changed);
        assert_eq!(users(&feed), ["bob"]);
        // A second file for another account; hidden files are not read.
        std::fs::write(
            dir.path().join("b.csv"),
            aws_report("222222222222", "carol", true),
        )
        .unwrap();
        std::fs::write(dir.path().join(".b.csv.tmp"), "partial").unwrap();
        let c = feed.scan();
        assert!(c.changed && c.errors.is_empty(), "{c:?}");
        assert_eq!(users(&feed), ["bob", "carol"]);
        // Removed: dropped.
        std::fs::remove_file(&file).unwrap();
        assert!(feed.scan().changed);
        assert_eq!(users(&feed), ["carol"]);
    }
}
