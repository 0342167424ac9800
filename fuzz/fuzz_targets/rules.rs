//! A rule file, compiled against the repository's catalogs (`rule::compile_file`, what
//! `RuleSet::load` does per file), then its own tests run as `check-rules` runs them.
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
    });
}
