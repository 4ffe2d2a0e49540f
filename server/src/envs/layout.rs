//! Where environments live and how they are switched: the per-ref directory, the
//! versioned build directories, the marker and the atomic symlink switch.
//!
//! ```text
//! <envs_root>/
//!   .home/                     HOME of pip/npm (no user configuration is read)
//!   .cache/pip, .cache/npm     download caches, shared by all packs
//!   <ref>/
//!     .lock                    flock(2) held while the ref's environments are built
//!                              (`crate::locks::PackLocks::lock_across_processes`)
//!     python -> python-<hash16>-<build id>       (relative symlink)
//!     python-<hash16>-<build id>/                the virtualenv, built in place
//!       .attune-env.json       marker, written last
//!     node -> node-<hash16>-<build id>
//!     node-<hash16>-<build id>/node_modules/
//! ```

use std::io;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::error::EnvError;

/// File name of the marker inside a versioned environment directory.
pub const MARKER_FILE: &str = ".attune-env.json";
/// Bumped when the layout or the meaning of the marker changes: old environments
/// are then rebuilt rather than misread.
pub const MARKER_SCHEMA: u32 = 1;

/// Written after a successful build; its presence means the directory is complete.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Marker {
    pub schema: u32,
    /// "python" or "nodejs".
    pub runtime: String,
    /// Hex SHA-256 of every input (see `python::inputs_hash` / `node::inputs_hash`).
    pub inputs_hash: String,
    /// The resolved interpreter (`sys.executable`, canonical) or `node` binary.
    pub tool_path: PathBuf,
    /// Its version, `3.11.7` / `20.20.2`.
    pub tool_version: String,
    /// `Python 3.11.7` / `v20.20.2`, as reported to the caller.
    pub version_text: String,
    pub deps_installed: bool,
    pub package_count: u32,
    pub built_at_unix: u64,
}

/// Inside a ref's directory: a JSON list of the build directory names that kept
/// versions of the pack (RollbackPack) still point at; garbage collection spares them.
/// Written before anything that could collect them and rewritten after the change
/// committed, so that it never names fewer builds than the database keeps.
pub const KEPT_FILE: &str = ".kept";
/// Upper bound of the kept-builds file read (it names at most a few builds per kept
/// version).
const MAX_KEPT_BYTES: u64 = 64 * 1024;

/// The directory of one pack's environments.
#[derive(Debug, Clone)]
pub struct RefDir {
    pub root: PathBuf,
    pub dir: PathBuf,
}

impl RefDir {
    pub fn new(envs_root: &Path, pack_ref: &str) -> Self {
        Self {
            root: envs_root.to_path_buf(),
            dir: envs_root.join(pack_ref),
        }
    }

    /// The stable path (`<ref>/python`, `<ref>/node`): a symlink to the current build.
    pub fn link(&self, kind: &str) -> PathBuf {
        self.dir.join(kind)
    }

    /// The marker of the current build of `kind`, if there is a complete one.
    pub fn current_marker(&self, kind: &str) -> Option<Marker> {
        let link = self.link(kind);
        // Only a symlink counts: a real directory here was not made by this module.
        if !std::fs::symlink_metadata(&link)
            .ok()?
            .file_type()
            .is_symlink()
        {
            return None;
        }
        let bytes = std::fs::read(link.join(MARKER_FILE)).ok()?;
        let marker: Marker = serde_json::from_slice(&bytes).ok()?;
        (marker.schema == MARKER_SCHEMA).then_some(marker)
    }

    /// A fresh, not yet existing directory for a build of `kind` (`python`/`node`).
    pub fn new_build_dir(&self, kind: &str, inputs_hash: &str) -> PathBuf {
        self.dir
            .join(format!("{kind}-{}-{}", &inputs_hash[..16], build_id()))
    }

    /// Points `<ref>/<kind>` at `build_dir` atomically (a temporary symlink renamed
    /// over the old one), then, unless `keep_previous`, deletes every other build of
    /// `kind`.
    pub fn switch_to(&self, kind: &str, build_dir: &Path, keep_previous: bool) -> io::Result<()> {
        let name = build_dir
            .file_name()
            .ok_or_else(|| io::Error::other("build directory has no name"))?;
        let link = self.link(kind);
        let tmp = self.dir.join(format!(".{kind}.tmp-link-{}", build_id()));
        std::os::unix::fs::symlink(name, &tmp)?;
        // A real directory in the link's place (made by hand) cannot be renamed over.
        if let Ok(meta) = std::fs::symlink_metadata(&link)
            && meta.is_dir()
        {
            std::fs::remove_dir_all(&link)?;
        }
        if let Err(e) = std::fs::rename(&tmp, &link) {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
        if !keep_previous {
            self.collect_garbage(kind, name.to_str());
        }
        Ok(())
    }

    /// The builds kept versions point at ([`KEPT_FILE`]); empty when there is none.
    pub fn kept_builds(&self) -> std::collections::BTreeSet<String> {
        use std::io::Read as _;
        let Ok(file) = std::fs::File::open(self.dir.join(KEPT_FILE)) else {
            return Default::default();
        };
        let mut text = Vec::new();
        if file.take(MAX_KEPT_BYTES).read_to_end(&mut text).is_err() {
            return Default::default();
        }
        serde_json::from_slice(&text).unwrap_or_default()
    }

    /// Replaces [`KEPT_FILE`] atomically (and durably) with `builds`; an empty set
    /// removes it.
    pub fn write_kept(&self, builds: &std::collections::BTreeSet<String>) -> io::Result<()> {
        use std::io::Write as _;
        let path = self.dir.join(KEPT_FILE);
        if builds.is_empty() {
            return match std::fs::remove_file(&path) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
                _ => Ok(()),
            };
        }
        std::fs::create_dir_all(&self.dir)?;
        let tmp = self.dir.join(format!("{KEPT_FILE}.tmp-{}", build_id()));
        let body = serde_json::to_vec(builds).map_err(io::Error::other)?;
        let written = (|| {
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&tmp)?;
            file.write_all(&body)?;
            file.sync_all()?;
            std::fs::rename(&tmp, &path)
        })();
        if written.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        written
    }

    /// The build `<ref>/<kind>` points at (its directory name), if it is a link.
    fn current_target(&self, kind: &str) -> Option<PathBuf> {
        std::fs::read_link(self.link(kind)).ok()
    }

    /// Removes builds of `kind` other than `keep` and leftover temporary links: old
    /// environments after a switch, and directories of builds that crashed.
    pub fn collect_garbage(&self, kind: &str, keep: Option<&str>) {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return;
        };
        let build_prefix = format!("{kind}-");
        let tmp_prefix = format!(".{kind}.tmp-link-");
        let kept = self.kept_builds();
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if Some(name) == keep || kept.contains(name) {
                continue;
            }
            let path = entry.path();
            if name.starts_with(&build_prefix) {
                let _ = std::fs::remove_dir_all(&path);
            } else if name.starts_with(&tmp_prefix) {
                let _ = std::fs::remove_file(&path);
            }
        }
    }
}

/// [`RefDir::switch_to`] off the async threads (garbage collection deletes whole
/// trees).
pub async fn switch(
    ref_dir: &RefDir,
    kind: &'static str,
    build_dir: &Path,
    keep_previous: bool,
) -> io::Result<()> {
    let (ref_dir, build_dir) = (ref_dir.clone(), build_dir.to_path_buf());
    tokio::task::spawn_blocking(move || ref_dir.switch_to(kind, &build_dir, keep_previous))
        .await
        .map_err(io::Error::other)?
}

/// Takes a build back from the sandbox user once its tools have run, before the server
/// reads or writes anything in it: afterwards pack code (even a process that escaped
/// the run's process group) can no longer change it, and the environment workers use
/// is not writable by pack code.
pub async fn reclaim(build_dir: &Path) -> Result<(), EnvError> {
    let dir = build_dir.to_path_buf();
    tokio::task::spawn_blocking(move || crate::sandbox::reclaim(&dir)).await??;
    Ok(())
}

/// Ends a build: on success the ref's `kind` link is switched to `build_dir`; on
/// failure (of the build or of the switch) `build_dir` is removed, so the previous
/// environment stays current and nothing half-built is left.
pub async fn finish_build<M>(
    ref_dir: &RefDir,
    kind: &'static str,
    build_dir: PathBuf,
    outcome: Result<M, EnvError>,
    keep_previous: bool,
) -> Result<M, EnvError> {
    let switched = match outcome {
        Ok(marker) => switch(ref_dir, kind, &build_dir, keep_previous)
            .await
            .map(|()| marker)
            .map_err(|source| EnvError::Switch { kind, source }),
        Err(e) => Err(e),
    };
    if switched.is_err() {
        super::util::remove_tree(build_dir).await;
    }
    switched
}

/// Which builds a pack's environment links point at, taken before builds that
/// keep their previous builds ([`BuildOptions::keep_previous`]): afterwards either
/// [`restore`](Self::restore) goes back to them or [`commit`](Self::commit) deletes
/// them.
///
/// [`BuildOptions::keep_previous`]: super::BuildOptions::keep_previous
#[derive(Debug, Clone)]
pub struct EnvSnapshot {
    ref_dir: RefDir,
    /// `(kind, target)` for `python` and `node`; `None`: there was no link.
    links: Vec<(&'static str, Option<PathBuf>)>,
}

const KINDS: [&str; 2] = ["python", "node"];

/// The targets of a pack's environment links (build directory names relative to
/// `<envs_root>/<ref>`); `None`: no link.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnvLinks {
    pub python: Option<PathBuf>,
    pub node: Option<PathBuf>,
}

impl EnvLinks {
    fn of(links: &[(&'static str, Option<PathBuf>)]) -> Self {
        let find = |kind: &str| {
            links
                .iter()
                .find(|(k, _)| *k == kind)
                .and_then(|(_, t)| t.clone())
        };
        Self {
            python: find("python"),
            node: find("node"),
        }
    }
}

impl EnvSnapshot {
    pub fn take(envs_root: &Path, pack_ref: &str) -> Self {
        let ref_dir = RefDir::new(envs_root, pack_ref);
        let links = KINDS
            .iter()
            .map(|kind| (*kind, ref_dir.current_target(kind)))
            .collect();
        Self { ref_dir, links }
    }

    /// A snapshot of links recorded earlier (see [`links`](Self::links)), as the swap
    /// journal keeps them across a crash.
    pub fn from_links(envs_root: &Path, pack_ref: &str, links: &EnvLinks) -> Self {
        Self {
            ref_dir: RefDir::new(envs_root, pack_ref),
            links: vec![
                ("python", links.python.clone()),
                ("node", links.node.clone()),
            ],
        }
    }

    /// The link targets the snapshot holds.
    pub fn links(&self) -> EnvLinks {
        EnvLinks::of(&self.links)
    }

    /// Where the links point now.
    pub fn current(&self) -> EnvLinks {
        EnvLinks {
            python: self.ref_dir.current_target("python"),
            node: self.ref_dir.current_target("node"),
        }
    }

    /// Points every link back where it pointed when the snapshot was taken (or
    /// removes links that did not exist), then deletes the builds made since.
    pub fn restore(&self) {
        if let Err(e) = self.try_restore() {
            tracing::warn!(dir = %self.ref_dir.dir.display(), "cannot switch environments back: {e}");
        }
    }

    /// [`restore`](Self::restore), saying what failed. A link whose recorded build is
    /// gone is not pointed at nothing: that is an error and the link stays.
    pub fn try_restore(&self) -> io::Result<()> {
        let mut first_error = None;
        for (kind, target) in &self.links {
            let link = self.ref_dir.link(kind);
            if self.ref_dir.current_target(kind) != *target {
                let switched = match target {
                    Some(target) => {
                        let build = self.ref_dir.dir.join(target);
                        if build.is_dir() {
                            self.ref_dir.switch_to(kind, &build, true)
                        } else {
                            Err(io::Error::other(format!(
                                "the previous {kind} environment '{}' is gone",
                                build.display()
                            )))
                        }
                    }
                    None => match std::fs::remove_file(&link) {
                        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
                        _ => Ok(()),
                    },
                };
                if let Err(e) = switched {
                    first_error.get_or_insert(e);
                    continue;
                }
            }
            self.collect(kind);
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Keeps the current builds and deletes the ones they replaced.
    pub fn commit(&self) {
        for (kind, _) in &self.links {
            self.collect(kind);
        }
    }

    fn collect(&self, kind: &str) {
        let current = self.ref_dir.current_target(kind);
        let keep = current
            .as_deref()
            .and_then(Path::file_name)
            .and_then(|n| n.to_str());
        match keep {
            Some(keep) => self.ref_dir.collect_garbage(kind, Some(keep)),
            // No link: every build of this kind is unreferenced.
            None => self.ref_dir.collect_garbage(kind, None),
        }
    }
}

/// Writes the marker atomically (temporary file, then rename) into `build_dir`.
pub fn write_marker(build_dir: &Path, marker: &Marker) -> io::Result<()> {
    use std::io::Write as _;
    let tmp = build_dir.join(format!("{MARKER_FILE}.tmp"));
    let bytes = serde_json::to_vec_pretty(marker).map_err(io::Error::other)?;
    // Pack code built this directory: a link planted under the temporary name must be
    // replaced, never followed.
    match std::fs::remove_file(&tmp) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&tmp)?
        .write_all(&bytes)?;
    std::fs::rename(&tmp, build_dir.join(MARKER_FILE))
}

pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Unique within the host: time, process id and a counter.
fn build_id() -> String {
    static COUNTER: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!(
        "{:x}{:x}{n:x}",
        nanos & 0xffff_ffff_ffff,
        std::process::id()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_link_planted_under_the_marker_name_is_replaced_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let build = dir.path().join("python-0123456789abcdef-x");
        std::fs::create_dir_all(&build).unwrap();
        let victim = dir.path().join("victim");
        std::fs::write(&victim, "untouched").unwrap();
        std::os::unix::fs::symlink(&victim, build.join(format!("{MARKER_FILE}.tmp"))).unwrap();
        let marker = Marker {
            schema: MARKER_SCHEMA,
            runtime: "python".into(),
            inputs_hash: "0".repeat(64),
            tool_path: PathBuf::from("/usr/bin/python3"),
            tool_version: "3.11.2".into(),
            version_text: "Python 3.11.2".into(),
            deps_installed: false,
            package_count: 0,
            built_at_unix: 0,
        };
        write_marker(&build, &marker).unwrap();
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "untouched");
        let written = std::fs::symlink_metadata(build.join(MARKER_FILE)).unwrap();
        assert!(written.is_file());
    }
}
