//! Build script: the revision `akwatch_build_info` reports. `AKWATCH_REVISION` when set (the
//! Docker build passes it: the image has no `.git`), else `git rev-parse --short HEAD`, else
//! `unknown`.
use std::process::Command;

fn main() {
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
