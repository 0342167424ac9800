//! Build script:
//! - the revision `akwatch_build_info` reports: `AKWATCH_REVISION` when set (the Docker build
//!   passes it: the image has no `.git`), else `git rev-parse --short HEAD`, else `unknown`;
//! - the bundled data (`rules/`, `examples/`) embedded in the binary: `$OUT_DIR/bundled.rs`
//!   lists every file with `include_bytes!`, and a hash of them all names the directory it is
//!   unpacked to (`src/bundled.rs`).
use std::path::{Path, PathBuf};
use std::process::Command;

fn files(root: &Path, dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let mut entries: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            files(root, &p, out);
        } else if p.is_file() {
            out.push(p.strip_prefix(root).unwrap_or(&p).to_path_buf());
        }
    }
}

fn bundle() {
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap_or_default());
    let mut list = Vec::new();
    for top in ["rules", "examples"] {
        println!("cargo:rerun-if-changed={top}");
        files(&root, &root.join(top), &mut list);
    }
    // FNV-1a over every name and content: a new bundle unpacks to a new directory.
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let mut code = String::from("pub static FILES: &[(&str, &[u8])] = &[\n");
    for rel in &list {
        let name = rel.to_string_lossy().replace('\\', "/");
        let bytes = std::fs::read(root.join(rel)).unwrap_or_default();
        for b in name.bytes().chain([0]).chain(bytes.iter().copied()) {
            hash = (hash ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
        code.push_str(&format!(
            "    ({name:?}, include_bytes!({:?})),\n",
            root.join(rel).display().to_string()
        ));
    }
    code.push_str("];\n");
    code.push_str(&format!("pub const HASH: &str = \"{hash:016x}\";\n"));
    let out = PathBuf::from(std::env::var("OUT_DIR").unwrap_or_default()).join("bundled.rs");
    let _ = std::fs::write(out, code);
}

fn main() {
    bundle();
    println!("cargo:rerun-if-env-changed=AKWATCH_REVISION");
    println!("cargo:rerun-if-changed=.git/HEAD");
    println!("cargo:rerun-if-changed=.git/refs/heads");
    let revision = std::env::var("AKWATCH_REVISION")
        .ok()
        .filter(|r| !r.trim().is_empty())
        .or_else(|| {
            let out = Command::new("git")
                .args(["rev-parse", "--short=12", "HEAD"])
                .output()
                .ok()?;
            let r = String::from_utf8(out.stdout).ok()?.trim().to_owned();
            (out.status.success() && !r.is_empty()).then_some(r)
        })
        .unwrap_or_else(|| "unknown".to_owned());
    println!("cargo:rustc-env=AKWATCH_REVISION={revision}");
}
