//! A rule file, compiled against the repository's catalogs (`rule::compile_file`, what
//! `RuleSet::load` does per file), then its own tests run as `check-rules` runs them. The same
//! text is also loaded as a catalog file (`Catalogs::add_file`, what `RuleSet::load` does for
//! `catalogs/*.yaml`) beside the repository's catalogs, and every catalog expanded.
use std::path::Path;

use akwatch::rule::testing::run_tests;
use akwatch::rule::{RuleSet, compile_file};

fn main() {
    let catalogs = akwatch_fuzz::repo_rules().catalogs.clone();
    afl::fuzz!(|data: &[u8]| {
        let Ok(text) = std::str::from_utf8(data) else {
            return; // RuleSet::load reads files as UTF-8 and rejects the rest
        };
        if let Ok(rule) = compile_file(Path::new("fuzz.yaml"), text, &catalogs) {
            let set = RuleSet {
                rules: vec![rule],
                catalogs: catalogs.clone(),
            };
            let _ = run_tests(&set);
        }
        let mut with_file = catalogs.clone();
        if with_file.add_file("catalogs/fuzz.yaml", text).is_ok() {
            let names: Vec<String> = with_file.names().map(str::to_owned).collect();
            for name in names {
                let _ = with_file.expand(&name);
            }
        }
    });
}
