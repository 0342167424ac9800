//! Hot reload of rules, policies, IP lists and leak feeds while the service runs: their files
//! are looked at every `reload_rescan_seconds` on a thread of their own (as the credential
//! reports are, see [`super::reports`]); a change is loaded with the start-up loaders and, when
//! it loads, handed to the loop that detects (the detection task with scale-out, the ingest
//! loop on one instance), which swaps it in between two events. A change that does not load
//! is logged (the loaders' `file:line: message`) and counted, and the last good version stays.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

use crate::engine::Engine;
use crate::enrich::{IpLists, LeakFeed};
use crate::policy::Policy;
use crate::rule::RuleSet;
use crate::telemetry::Metrics;

/// The parts of the configuration that are reloaded (the metrics' `what` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum What {
    Rules,
    Policies,
    Lists,
    Leaks,
}

impl What {
    pub const ALL: [What; 4] = [What::Rules, What::Policies, What::Lists, What::Leaks];

    pub fn as_str(self) -> &'static str {
        match self {
            What::Rules => "rules",
            What::Policies => "policies",
            What::Lists => "lists",
            What::Leaks => "leaks",
        }
    }
}

/// What changed and loaded, for the detecting loop to swap in between two events.
#[derive(Default)]
pub struct Reload {
    /// The rules and the policy to detect with from now on (either or both changed; checked
    /// together with `Engine::new`, so every engine takes them).
    pub detection: Option<(RuleSet, Policy)>,
    pub lists: Option<IpLists>,
    pub leaks: Option<LeakFeed>,
}

impl Reload {
    fn is_empty(&self) -> bool {
        self.detection.is_none() && self.lists.is_none() && self.leaks.is_none()
    }
}

/// One file as last looked at: path, size, modification time.
type Stamp = (PathBuf, u64, Option<SystemTime>);

/// The files under some paths (directories walked), and whether they changed: names, sizes
/// and modification times are compared first; when those differ the contents are hashed, so a
/// file touched or rewritten unchanged is no change. Hidden files (an editor's swap file) are
/// left out.
pub struct Watch {
    paths: Vec<PathBuf>,
    /// Directories under `paths` that belong to another part (the policies under the rules).
    exclude: Vec<PathBuf>,
    stamps: Vec<Stamp>,
    hash: u64,
}

/// A file modified this recently may still be being written: its stamp is not kept, so the
/// next look hashes it again (a change within one tick of the file system's clock is not lost).
const SETTLE: Duration = Duration::from_secs(2);

impl Watch {
    /// Watches `paths` as they are now (the version loaded at start).
    pub fn new(paths: Vec<PathBuf>, exclude: Vec<PathBuf>) -> Watch {
        let mut w = Watch {
            paths,
            exclude,
            stamps: Vec::new(),
            hash: 0,
        };
        let stamps = w.stamps();
        w.hash = w.contents_hash(&stamps);
        w.keep(stamps);
        w
    }

    /// Whether the contents changed since the last look (or since `new`).
    pub fn changed(&mut self) -> bool {
        let stamps = self.stamps();
        if stamps == self.stamps {
            return false;
        }
        let hash = self.contents_hash(&stamps);
        self.keep(stamps);
        if hash == self.hash {
            return false;
        }
        self.hash = hash;
        true
    }

    fn keep(&mut self, stamps: Vec<Stamp>) {
        let now = SystemTime::now();
        let settled = stamps.iter().all(|(_, _, m)| {
            m.and_then(|m| now.duration_since(m).ok())
                .is_some_and(|age| age >= SETTLE)
        });
        // Unsettled: forget the stamps, so the next look hashes again.
        self.stamps = if settled { stamps } else { Vec::new() };
    }

    fn stamps(&self) -> Vec<Stamp> {
        let mut out = Vec::new();
        for p in &self.paths {
            walk(p, &self.exclude, &mut out);
        }
        out.sort();
        out.dedup();
        out
    }

    fn contents_hash(&self, stamps: &[Stamp]) -> u64 {
        let mut h = DefaultHasher::new();
        for (path, _, _) in stamps {
            path.hash(&mut h);
            // A file that cannot be read now hashes as absent; the loader says why.
            std::fs::read(path).ok().hash(&mut h);
        }
        h.finish()
    }
}

/// The files under `p` (a file, or a directory walked; hidden entries inside it left out).
fn walk(p: &Path, exclude: &[PathBuf], out: &mut Vec<Stamp>) {
    if exclude.iter().any(|x| p == x) {
        return;
    }
    let Ok(md) = std::fs::metadata(p) else {
        return;
    };
    if md.is_dir() {
        if let Ok(rd) = std::fs::read_dir(p) {
            for e in rd.filter_map(Result::ok) {
                if !e.file_name().to_string_lossy().starts_with('.') {
                    walk(&e.path(), exclude, out);
                }
            }
        }
    } else if md.is_file() {
        out.push((p.to_path_buf(), md.len(), md.modified().ok()));
    }
}

/// Where each part is read from (the service's configuration).
pub struct Sources {
    pub rules: PathBuf,
    pub policies: Vec<PathBuf>,
    pub lists: Vec<PathBuf>,
    pub leaks: Vec<PathBuf>,
    /// Rules that need GeoIP are left out without a GeoIP database, as at start.
    pub has_geo: bool,
}

impl Sources {
    pub fn of(o: &crate::replay::ReplayOptions) -> Sources {
        Sources {
            rules: o.rules.clone(),
            policies: if o.policies.is_empty() {
                vec![o.rules.join("policies")]
            } else {
                o.policies.clone()
            },
            lists: o.lists.clone(),
            leaks: o.leaks.clone(),
            has_geo: !o.geoip.is_empty(),
        }
    }

    fn load_rules(&self) -> Result<RuleSet, Vec<String>> {
        let mut rules = RuleSet::load(&self.rules)?;
        if !self.has_geo {
            rules.rules.retain(|r| !r.requires_geoip);
        }
        Ok(rules)
    }

    fn load_leaks(&self) -> Result<LeakFeed, Vec<String>> {
        let mut leaks = LeakFeed::default();
        let errors: Vec<String> = crate::source::files_in(&self.leaks)
            .iter()
            .filter_map(|p| leaks.read(p).err())
            .collect();
        if errors.is_empty() {
            Ok(leaks)
        } else {
            Err(errors)
        }
    }
}

/// The watcher: the files' last looks, the last good rules and policy (each is checked against
/// the other).
pub struct Reloader {
    sources: Sources,
    rules_watch: Watch,
    policies_watch: Watch,
    lists_watch: Watch,
    leaks_watch: Watch,
    rules: RuleSet,
    policy: Policy,
    /// The rules on disk changed but were not taken (they did not load, or did not fit the
    /// policy in use): tried again with the next policy change, which may be the fix.
    rules_pending: bool,
    rescan: Duration,
    metrics: Arc<Metrics>,
}

impl Reloader {
    /// Watches the sources as loaded at start (`rules`, `policy`: the versions in use).
    pub fn new(
        sources: Sources,
        rules: RuleSet,
        policy: Policy,
        rescan: Duration,
        metrics: Arc<Metrics>,
    ) -> Reloader {
        // The other parts' files under the rules directory (`policies/`, `lists/`) are theirs.
        let mut exclude = sources.policies.clone();
        exclude.push(sources.rules.join("policies"));
        exclude.extend(sources.lists.iter().chain(&sources.leaks).cloned());
        for w in What::ALL {
            metrics.config_reloaded(w.as_str(), true, false);
        }
        Reloader {
            rules_watch: Watch::new(vec![sources.rules.clone()], exclude),
            policies_watch: Watch::new(sources.policies.clone(), Vec::new()),
            lists_watch: Watch::new(sources.lists.clone(), Vec::new()),
            leaks_watch: Watch::new(sources.leaks.clone(), Vec::new()),
            sources,
            rules,
            policy,
            rules_pending: false,
            rescan,
            metrics,
        }
    }

    fn failed(&self, what: What, errors: &[String]) {
        self.metrics.config_reloaded(what.as_str(), false, true);
        tracing::error!(
            what = what.as_str(),
            "{} not reloaded (the last good version stays in use): {}",
            what.as_str(),
            errors.join("; ")
        );
    }

    fn loaded(&self, what: What) {
        self.metrics.config_reloaded(what.as_str(), true, true);
        tracing::info!(what = what.as_str(), "{} reloaded", what.as_str());
    }

    /// One look at every part; what changed and loaded.
    pub fn round(&mut self) -> Reload {
        let mut out = Reload::default();
        let rules_changed = self.rules_watch.changed();
        let policies_changed = self.policies_watch.changed();
        if rules_changed || policies_changed {
            let rules_again = rules_changed || (policies_changed && self.rules_pending);
            out.detection = self.detection(rules_again, policies_changed);
        }
        if self.lists_watch.changed() {
            match crate::replay::load_lists(&self.sources.lists) {
                Ok(l) => {
                    self.loaded(What::Lists);
                    out.lists = Some(l);
                }
                Err(e) => self.failed(What::Lists, &e),
            }
        }
        if self.leaks_watch.changed() {
            match self.sources.load_leaks() {
                Ok(l) => {
                    self.loaded(What::Leaks);
                    out.leaks = Some(l);
                }
                Err(e) => self.failed(What::Leaks, &e),
            }
        }
        out
    }

    /// New rules and / or policy, each checked with the other (the policy names rules; an
    /// engine must build from both).
    fn detection(
        &mut self,
        rules_changed: bool,
        policies_changed: bool,
    ) -> Option<(RuleSet, Policy)> {
        let rules = match rules_changed.then(|| self.sources.load_rules()) {
            None => None,
            Some(Ok(r)) => Some(r),
            Some(Err(e)) => {
                self.failed(What::Rules, &e);
                self.rules_pending = true;
                None
            }
        };
        if rules.is_none() && !policies_changed {
            return None;
        }
        let with = rules.as_ref().unwrap_or(&self.rules);
        let policy = Policy::load_dirs(&self.sources.policies, with)
            .and_then(|p| Engine::new(with, p.clone()).map(|_| p));
        match (rules, policy) {
            (Some(rules), Ok(policy)) => {
                self.loaded(What::Rules);
                if policies_changed {
                    self.loaded(What::Policies);
                }
                self.rules = rules;
                self.policy = policy;
                self.rules_pending = false;
            }
            (None, Ok(policy)) => {
                self.loaded(What::Policies);
                self.policy = policy;
            }
            (rules, Err(e)) => {
                // The new rules do not fit the policy in use (a rule it names is gone, a
                // threshold it sets no longer applies), or the new policy does not load.
                if rules.is_some() {
                    self.failed(What::Rules, &e);
                    self.rules_pending = true;
                }
                if policies_changed {
                    self.failed(What::Policies, &e);
                }
                return None;
            }
        }
        Some((self.rules.clone(), self.policy.clone()))
    }

    /// Looks every `rescan` until `stop` or the receiver is gone; sends what loaded.
    pub fn run(mut self, tx: tokio::sync::mpsc::Sender<Reload>, stop: Arc<AtomicBool>) {
        let mut last = Instant::now();
        while !stop.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(200));
            if last.elapsed() < self.rescan {
                continue;
            }
            last = Instant::now();
            // Isolated: a loader's panic is counted as an error of every part, and the
            // versions in use stay.
            match crate::isolate::guard(|| self.round()) {
                Ok(r) if r.is_empty() => {}
                Ok(r) => {
                    if tx.blocking_send(r).is_err() {
                        return;
                    }
                }
                Err(e) => {
                    for w in What::ALL {
                        self.metrics.config_reloaded(w.as_str(), false, true);
                    }
                    tracing::error!(
                        "reloading the configuration failed (the versions in use stay): {e}"
                    );
                }
            }
        }
    }
}

/// The next reload, when this loop takes them.
pub async fn next(rx: &mut Option<tokio::sync::mpsc::Receiver<Reload>>) -> Option<Reload> {
    match rx.as_mut() {
        Some(r) => r.recv().await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn age(path: &Path) {
        // Older than `SETTLE`, so a look keeps the stamps.
        let f = std::fs::File::options().write(true).open(path).unwrap();
        f.set_modified(SystemTime::now() - Duration::from_secs(60))
            .unwrap();
    }

    #[test]
    fn a_watch_sees_content_changes_only() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a.yaml");
        std::fs::write(&a, "x: 1\n").unwrap();
        age(&a);
        let mut w = Watch::new(vec![dir.path().to_path_buf()], Vec::new());
        assert!(!w.changed(), "nothing changed");
        // Rewritten unchanged (a new mtime): no change.
        std::fs::write(&a, "x: 1\n").unwrap();
        assert!(!w.changed(), "same contents");
        // Same size, other contents, within the same second: a change.
        std::fs::write(&a, "x: 2\n").unwrap();
        assert!(w.changed(), "contents changed");
        assert!(!w.changed(), "seen once");
        // A new file, a new subdirectory's file, a removed file.
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        std::fs::write(dir.path().join("sub/b.yaml"), "y: 1\n").unwrap();
        assert!(w.changed(), "file added in a subdirectory");
        std::fs::remove_file(&a).unwrap();
        assert!(w.changed(), "file removed");
        // Hidden files (editor swap files) are no change.
        std::fs::write(dir.path().join(".b.yaml.swp"), "junk").unwrap();
        assert!(!w.changed(), "hidden file");
    }

    #[test]
    fn a_watch_leaves_out_excluded_directories() {
        let dir = tempfile::tempdir().unwrap();
        let policies = dir.path().join("policies");
        std::fs::create_dir(&policies).unwrap();
        std::fs::write(dir.path().join("r.yaml"), "r").unwrap();
        let mut w = Watch::new(vec![dir.path().to_path_buf()], vec![policies.clone()]);
        std::fs::write(policies.join("allow.yaml"), "a").unwrap();
        assert!(!w.changed(), "the policies are another part");
        std::fs::write(dir.path().join("r.yaml"), "s").unwrap();
        assert!(w.changed());
    }

    fn copy_dir(from: &Path, to: &Path) {
        std::fs::create_dir_all(to).unwrap();
        for e in std::fs::read_dir(from).unwrap() {
            let e = e.unwrap();
            if e.file_type().unwrap().is_dir() {
                copy_dir(&e.path(), &to.join(e.file_name()));
            } else {
                std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
            }
        }
    }

    #[test]
    fn a_bad_edit_is_counted_and_the_last_good_version_stays() {
        let dir = tempfile::tempdir().unwrap();
        let rules_dir = dir.path().join("rules");
        copy_dir(
            &Path::new(env!("CARGO_MANIFEST_DIR")).join("rules"),
            &rules_dir,
        );
        let policies = rules_dir.join("policies");
        let sources = Sources {
            rules: rules_dir.clone(),
            policies: vec![policies.clone()],
            lists: vec![rules_dir.join("lists")],
            leaks: vec![dir.path().join("leaks")],
            has_geo: false,
        };
        copy_dir(
            &Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/leaks"),
            &dir.path().join("leaks"),
        );
        let rules = sources.load_rules().unwrap();
        let policy = Policy::load_dirs(&sources.policies, &rules).unwrap();
        let metrics = Metrics::new().unwrap();
        let mut r = Reloader::new(sources, rules, policy, Duration::ZERO, metrics.clone());
        let count = |what: &str, result: &str| {
            metrics
                .config_reloads
                .with_label_values(&[what, result])
                .get()
        };
        let good = |what: &str| {
            metrics
                .config_last_reload_success
                .with_label_values(&[what])
                .get()
        };
        assert!(r.round().is_empty(), "nothing changed");

        // A policy edit: the policy, with the rules in use.
        let allow = "allowlist:\n  - id: ci\n    keys: [AKIAEXAMPLE000000001]\n";
        std::fs::write(policies.join("allowlist.yaml"), allow).unwrap();
        let (_, policy) = r.round().detection.expect("a new policy");
        assert_eq!(policy.allowlist.len(), 1);
        assert_eq!((count("policies", "ok"), good("policies")), (1, 1));

        // A broken one: an error naming the file and line, the last good policy stays.
        let broken = "allowlist:\n  - id: ci\n    keyz: [AKIAEXAMPLE000000001]\n";
        std::fs::write(policies.join("allowlist.yaml"), broken).unwrap();
        assert!(r.round().is_empty());
        assert_eq!((count("policies", "error"), good("policies")), (1, 0));
        assert_eq!(r.policy.allowlist.len(), 1);

        // A rule the alarm policy names removed: the new rules do not fit the policy in use.
        std::fs::write(policies.join("allowlist.yaml"), allow).unwrap();
        assert!(r.round().detection.is_some(), "fixed");
        let leaked = rules_dir.join("detections/leaked_key_use.yaml");
        assert!(leaked.exists());
        std::fs::remove_file(&leaked).unwrap();
        assert!(r.round().is_empty());
        assert_eq!((count("rules", "error"), good("rules")), (1, 0));
        assert!(r.rules.rules.iter().any(|x| x.id == "ak.leaked_key_use"));
        // The rule back: the rules load again.
        std::fs::copy(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("rules/detections/leaked_key_use.yaml"),
            &leaked,
        )
        .unwrap();
        assert!(r.round().detection.is_some());
        assert_eq!((count("rules", "ok"), good("rules")), (1, 1));
        // A rule only the alarm policy names removed: the rules load but do not fit the
        // policy in use; then the policy fixed to match: the pending rules come with it.
        let alarm_policy = policies.join("alarm_policy.yaml");
        let text = std::fs::read_to_string(&alarm_policy).unwrap();
        std::fs::write(
            &alarm_policy,
            text.replace(
                "\n  rules:\n",
                "\n  rules:\n    ak.new_source_ip: {renotify: 6h}\n",
            ),
        )
        .unwrap();
        assert!(r.round().detection.is_some(), "the policy names the rule");
        std::fs::remove_file(rules_dir.join("detections/new_source_ip.yaml")).unwrap();
        assert!(r.round().is_empty());
        assert_eq!((count("rules", "error"), good("rules")), (2, 0));
        let text = std::fs::read_to_string(&alarm_policy).unwrap();
        let fixed: String = text
            .lines()
            .filter(|l| !l.contains("ak.new_source_ip"))
            .map(|l| format!("{l}\n"))
            .collect();
        std::fs::write(&alarm_policy, fixed).unwrap();
        assert!(r.round().detection.is_some(), "rules and policy together");
        assert!(!r.rules.rules.iter().any(|x| x.id == "ak.new_source_ip"));
        assert_eq!((count("rules", "ok"), good("rules")), (2, 1));

        // An unparsable list line: the lists in use stay; a good list loads.
        let extra = rules_dir.join("lists/threat-extra.txt");
        std::fs::write(&extra, "not an address\n").unwrap();
        let round = r.round();
        assert!(
            round.lists.is_none() && round.detection.is_none(),
            "lists only"
        );
        assert_eq!((count("lists", "error"), good("lists")), (1, 0));
        std::fs::write(&extra, "203.0.113.9\n").unwrap();
        assert!(r.round().lists.is_some());
        assert_eq!((count("lists", "ok"), good("lists")), (1, 1));

        // A leak feed that is not JSON: counted, the feeds in use stay; removed: they load.
        let bad = dir.path().join("leaks/bad.json");
        std::fs::write(&bad, "{").unwrap();
        assert!(r.round().leaks.is_none());
        assert_eq!((count("leaks", "error"), good("leaks")), (1, 0));
        std::fs::remove_file(&bad).unwrap();
        assert!(r.round().leaks.is_some());
        assert_eq!((count("leaks", "ok"), good("leaks")), (1, 1));
    }

    #[test]
    fn a_settled_watch_does_not_read_the_files_again() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a.txt");
        std::fs::write(&a, "1.2.3.4\n").unwrap();
        age(&a);
        let w = Watch::new(vec![a.clone()], Vec::new());
        assert_eq!(w.stamps.len(), 1, "settled stamps are kept");
        let b = dir.path().join("b.txt");
        std::fs::write(&b, "1.2.3.4\n").unwrap();
        let w = Watch::new(vec![b], Vec::new());
        assert!(
            w.stamps.is_empty(),
            "a file just written is looked at again"
        );
    }
}
