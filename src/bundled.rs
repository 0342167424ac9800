//! The bundled data — the repository's `rules/` and `examples/` — found wherever akwatch runs:
//! in the working directory (a checkout, the container's `/etc/akwatch`), else unpacked from the
//! copy embedded in the binary at build time (`build.rs`), once,
//! into a directory of this user's (`$XDG_CACHE_HOME/akwatch`, `~/.cache/akwatch`, or the
//! temporary directory), named by the bundle's hash so a new build never reads an old copy.
//! So `cargo install`, the Docker image and a copied binary all run `akwatch replay` anywhere.

use std::path::{Path, PathBuf};

mod embedded {
    include!(concat!(env!("OUT_DIR"), "/bundled.rs"));
}

/// `rules` or `examples`: the working directory's, else the embedded copy's.
pub fn path(top: &str) -> anyhow::Result<PathBuf> {
    let here = PathBuf::from(top);
    if here.is_dir() {
        return Ok(here);
    }
    Ok(unpacked()?.join(top))
}

/// Where the embedded copy is unpacked (unpacking it the first time).
pub fn unpacked() -> anyhow::Result<PathBuf> {
    use anyhow::Context;
    let (base, shared) = match std::env::var_os("XDG_CACHE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME")
                .filter(|v| !v.is_empty())
                .map(|h| PathBuf::from(h).join(".cache"))
        }) {
        Some(cache) => (cache.join("akwatch"), false),
        None => (std::env::temp_dir(), true),
    };
    std::fs::create_dir_all(&base)
        .with_context(|| format!("cannot create {} for the bundled data", base.display()))?;
    let name = format!(
        "akwatch-bundled-{}-{}",
        env!("CARGO_PKG_VERSION"),
        embedded::HASH
    );
    let dir = base.join(&name);
    if dir.join(".complete").is_file() && (!shared || ours(&base, &dir)?) {
        return Ok(dir);
    }
    // Unpacked beside it under a name of this process's, then renamed into place whole: a
    // reader never sees half a copy, and two first runs at once both end with a complete one.
    let tmp = base.join(format!(
        ".{name}.{}.{}",
        std::process::id(),
        rand::random::<u32>()
    ));
    let write = || -> std::io::Result<()> {
        create_private_dir(&tmp)?;
        for (rel, bytes) in embedded::FILES {
            let path = tmp.join(rel);
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent)?;
            }
            std::fs::write(path, bytes)?;
        }
        std::fs::write(tmp.join(".complete"), embedded::HASH)
    };
    if let Err(e) = write() {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e)
            .with_context(|| format!("cannot unpack the bundled data into {}", tmp.display()));
    }
    if std::fs::rename(&tmp, &dir).is_err() {
        // Another run got there first.
        let _ = std::fs::remove_dir_all(&tmp);
    }
    if dir.join(".complete").is_file() && (!shared || ours(&base, &dir)?) {
        Ok(dir)
    } else {
        anyhow::bail!(
            "cannot use {} for the bundled data (remove it, or set XDG_CACHE_HOME)",
            dir.display()
        )
    }
}

#[cfg(unix)]
fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new().mode(0o700).create(dir)
}

#[cfg(not(unix))]
fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir(dir)
}

/// In a shared temporary directory: the copy is this user's and nobody else can write to it
/// (another user could have put rules of their own under the name first).
#[cfg(unix)]
fn ours(base: &Path, dir: &Path) -> anyhow::Result<bool> {
    use std::os::unix::fs::MetadataExt;
    // This user's id: the owner of a directory just made under a fresh random name (mkdir
    // neither follows a symlink nor reuses what someone else planted under a known name).
    let probe = base.join(format!(
        ".akwatch-uid-{}-{:016x}",
        std::process::id(),
        rand::random::<u64>()
    ));
    create_private_dir(&probe)?;
    let uid = std::fs::symlink_metadata(&probe)?.uid();
    let _ = std::fs::remove_dir(&probe);
    let meta = std::fs::symlink_metadata(dir)?;
    Ok(meta.is_dir() && meta.uid() == uid && meta.mode() & 0o022 == 0)
}

#[cfg(not(unix))]
fn ours(_base: &Path, _dir: &Path) -> anyhow::Result<bool> {
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The embedded copy holds the rules and the example scenario, byte for byte.
    #[test]
    fn the_embedded_copy_is_the_repository_s() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        assert!(
            embedded::FILES
                .iter()
                .any(|(n, _)| *n == "examples/geo.mmdb")
        );
        assert!(embedded::FILES.iter().any(|(n, _)| n.starts_with("rules/")));
        for (rel, bytes) in embedded::FILES {
            assert_eq!(std::fs::read(root.join(rel)).unwrap(), *bytes, "{rel}");
        }
    }
}
