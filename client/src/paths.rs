//! Paths in requests are read by the server, which knows nothing of the CLI's working
//! directory. So that `attune-packs deps examples/packs/hello` means what it says when
//! the CLI and the server share a machine, relative local paths are sent as absolute
//! paths taken from the CLI's working directory.

use std::path::{Path, PathBuf};

/// A pack source or pack path as the server should read it: a relative path (one with
/// a `/` in it, or `.`/`..`) that exists under `cwd` becomes absolute. Registry refs
/// (`hello`, `hello@^1`), URLs, `github:` shorthands, absolute paths and relative paths
/// that do not exist here (the server may find them under an allowed root) are sent
/// as typed.
pub fn source(arg: String, cwd: &Path) -> String {
    let looks_like_path = arg.contains('/') || arg == "." || arg == "..";
    if !looks_like_path || arg.contains("://") || Path::new(&arg).is_absolute() {
        return arg;
    }
    let joined = join(cwd, &arg);
    if joined.exists() {
        joined.to_string_lossy().into_owned()
    } else {
        arg
    }
}

/// A directory the server writes (a download destination, a packs base dir): relative
/// paths are taken from `cwd`, whether or not they exist yet.
pub fn directory(arg: String, cwd: &Path) -> String {
    if arg.is_empty() || Path::new(&arg).is_absolute() {
        return arg;
    }
    join(cwd, &arg).to_string_lossy().into_owned()
}

/// `cwd/arg` without `.` components (`./examples` → `<cwd>/examples`).
fn join(cwd: &Path, arg: &str) -> PathBuf {
    cwd.join(arg).components().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_paths_that_exist_become_absolute() {
        let dir = tempfile::tempdir().unwrap();
        let cwd = dir.path();
        std::fs::create_dir_all(cwd.join("examples/packs/hello")).unwrap();
        std::fs::create_dir_all(cwd.join("hello")).unwrap();
        let s = |a: &str| source(a.to_string(), cwd);
        let abs = cwd.join("examples/packs/hello").display().to_string();
        assert_eq!(s("examples/packs/hello"), abs);
        assert_eq!(s("./examples/packs/hello"), abs);
        assert_eq!(s("."), cwd.display().to_string());
        // Refs, URLs, absolute paths and paths missing here are left to the server.
        for kept in [
            "hello",
            "hello@^1.0",
            "github:org/pack@v1.0.0",
            "https://example.com/p.tar.gz",
            "/srv/packs/p",
            "packs/not-here",
        ] {
            assert_eq!(s(kept), kept);
        }
    }

    #[test]
    fn directories_are_taken_from_the_working_directory() {
        let cwd = Path::new("/work/checkout");
        assert_eq!(
            directory("attune-packs-data/downloads".into(), cwd),
            "/work/checkout/attune-packs-data/downloads"
        );
        assert_eq!(directory("/srv/packs".into(), cwd), "/srv/packs");
    }
}
