//! Confinement of caller-supplied paths to the configured roots.
//!
//! Callers name server paths (pack_paths, destination_dir, packs_base_dir). Each must
//! resolve, symlinks followed, inside one of the allowed roots; otherwise the server
//! would read or write anywhere its user can. Paths that do not exist yet (a
//! destination to create) are resolved through their nearest existing ancestor.

use std::os::fd::AsRawFd;
use std::{
    io,
    path::{Component, Path, PathBuf},
};

use crate::packfs::{PackDir, PackFsError, PackReadLimits};

#[derive(Debug, thiserror::Error)]
pub enum PathError {
    #[error("path must not be empty")]
    Empty,
    #[error("path '{path}' must be absolute (paths are read on the server)")]
    Relative { path: String },
    #[error(
        "path '{path}' resolves to '{resolved}', which is outside the allowed roots ({roots}); \
         paths are read on the server; set allowed_roots to add one"
    )]
    OutsideRoots {
        path: String,
        resolved: String,
        roots: String,
    },
    #[error("path '{path}' contains '..' below a directory that does not exist")]
    DotDot { path: String },
    #[error("cannot resolve path '{path}': {source}")]
    Io { path: String, source: io::Error },
    #[error(transparent)]
    Open(PackFsError),
}

/// The roots requests may touch, and how much of a pack file may be read into
/// memory once a pack under them is opened. Cheap to clone.
#[derive(Debug, Clone)]
pub struct PathPolicy {
    roots: Vec<PathBuf>,
    read_limits: PackReadLimits,
}

impl PathPolicy {
    pub fn new(roots: Vec<PathBuf>) -> Self {
        Self {
            roots,
            read_limits: PackReadLimits::default(),
        }
    }

    /// The caps of the `pack_files` settings.
    pub fn with_read_limits(mut self, read_limits: PackReadLimits) -> Self {
        self.read_limits = read_limits;
        self
    }

    pub fn read_limits(&self) -> &PackReadLimits {
        &self.read_limits
    }

    pub fn roots(&self) -> &[PathBuf] {
        &self.roots
    }

    /// The roots as shown in errors: `/a, /b`.
    pub fn roots_text(&self) -> String {
        self.roots
            .iter()
            .map(|r| r.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Resolves `path` (absolute) and checks it lies inside an allowed root.
    /// Returns the resolved path, which is what the caller must use from then on
    /// (checking one path and using another would reopen the symlink hole).
    pub fn confine(&self, path: &str) -> Result<PathBuf, PathError> {
        if path.trim().is_empty() {
            return Err(PathError::Empty);
        }
        let raw = Path::new(path);
        if !raw.is_absolute() {
            return Err(PathError::Relative {
                path: path.to_string(),
            });
        }
        let resolved = resolve(raw).map_err(|e| match e {
            ResolveError::DotDot => PathError::DotDot {
                path: path.to_string(),
            },
            ResolveError::Io(source) => PathError::Io {
                path: path.to_string(),
                source,
            },
        })?;
        if self
            .resolved_roots()
            .iter()
            .any(|root| resolved.starts_with(root))
        {
            Ok(resolved)
        } else {
            Err(PathError::OutsideRoots {
                path: path.to_string(),
                resolved: resolved.display().to_string(),
                roots: self.roots_text(),
            })
        }
    }

    /// Opens the directory `confined` (a path [`confine`](Self::confine) returned) as
    /// a [`PackDir`] and checks where the opened directory really is: a directory on
    /// the way swapped for a link since `confine` judged the path would otherwise
    /// lead the descriptor — and every read through it — outside the roots.
    pub fn open_confined(&self, confined: &Path) -> Result<PackDir, PathError> {
        let dir = PackDir::open(confined).map_err(PathError::Open)?;
        if let Some(actual) = dir.real_path() {
            let roots = self.resolved_roots();
            if !roots.iter().any(|root| actual.starts_with(root)) {
                return Err(PathError::OutsideRoots {
                    path: confined.display().to_string(),
                    resolved: actual.display().to_string(),
                    roots: self.roots_text(),
                });
            }
        }
        Ok(dir)
    }

    /// Checks where an opened file (named `confined` by the caller) really is, as the
    /// kernel names it, against the roots: a parent directory swapped for a link
    /// between `confine` and the open is refused. Without `/proc` there is nothing to
    /// check.
    pub fn check_opened(&self, opened: &impl AsRawFd, confined: &Path) -> Result<(), PathError> {
        let Ok(actual) = std::fs::read_link(format!("/proc/self/fd/{}", opened.as_raw_fd())) else {
            return Ok(());
        };
        let roots = self.resolved_roots();
        if roots.iter().any(|root| actual.starts_with(root)) {
            return Ok(());
        }
        Err(PathError::OutsideRoots {
            path: confined.display().to_string(),
            resolved: actual.display().to_string(),
            roots: self.roots_text(),
        })
    }

    /// Roots are resolved at check time: a root created (or re-pointed) after start-up
    /// must be judged by what it is now.
    fn resolved_roots(&self) -> Vec<PathBuf> {
        self.roots
            .iter()
            .filter_map(|root| resolve(root).ok())
            .collect()
    }
}

/// 12 random hex characters, for names of temporary files and directories that must
/// not collide with a concurrent writer's.
pub fn unique_suffix() -> String {
    let mut bytes = [0u8; 6];
    // Uniqueness, not secrecy: should the OS generator fail, fall back to the clock.
    if getrandom::fill(&mut bytes).is_err() {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        bytes.copy_from_slice(&nanos.to_le_bytes()[..6]);
    }
    hex::encode(bytes)
}

enum ResolveError {
    DotDot,
    Io(io::Error),
}

/// Canonicalizes the longest existing prefix of `path` and appends the rest, which
/// must be plain names (a `..` after a missing directory cannot be judged).
fn resolve(path: &Path) -> Result<PathBuf, ResolveError> {
    let mut existing = path.to_path_buf();
    let mut rest: Vec<std::ffi::OsString> = Vec::new();
    loop {
        match std::fs::canonicalize(&existing) {
            Ok(mut base) => {
                for part in rest.iter().rev() {
                    base.push(part);
                }
                return Ok(base);
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                if matches!(
                    existing.components().next_back(),
                    Some(Component::ParentDir | Component::CurDir)
                ) {
                    return Err(ResolveError::DotDot);
                }
                let Some(name) = existing.file_name().map(|n| n.to_os_string()) else {
                    return Err(ResolveError::Io(e));
                };
                rest.push(name);
                if !existing.pop() {
                    return Err(ResolveError::Io(e));
                }
            }
            Err(e) => return Err(ResolveError::Io(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn confines_to_roots_following_symlinks() {
        let root = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let root_path = root.path().canonicalize().unwrap();
        std::fs::create_dir(root_path.join("pack")).unwrap();
        std::os::unix::fs::symlink(outside.path(), root_path.join("escape")).unwrap();
        let policy = PathPolicy::new(vec![root_path.clone()]);

        let ok = policy
            .confine(root_path.join("pack").to_str().unwrap())
            .unwrap();
        assert_eq!(ok, root_path.join("pack"));
        // Not yet existing: resolved through the existing parent.
        let new = policy
            .confine(root_path.join("new/dir").to_str().unwrap())
            .unwrap();
        assert_eq!(new, root_path.join("new/dir"));

        let err = policy
            .confine(root_path.join("escape").to_str().unwrap())
            .unwrap_err();
        assert!(matches!(err, PathError::OutsideRoots { .. }), "{err}");
        let err = policy
            .confine(root_path.join("escape/sub/new").to_str().unwrap())
            .unwrap_err();
        assert!(matches!(err, PathError::OutsideRoots { .. }), "{err}");
        let err = policy
            .confine(root_path.join("pack/../../etc").to_str().unwrap())
            .unwrap_err();
        assert!(matches!(err, PathError::OutsideRoots { .. }), "{err}");
        let err = policy.confine("/etc/passwd").unwrap_err();
        assert!(err.to_string().contains("outside the allowed roots"));
        assert!(matches!(
            policy.confine("relative/path"),
            Err(PathError::Relative { .. })
        ));
        assert!(matches!(policy.confine(" "), Err(PathError::Empty)));
        let err = policy
            .confine(root_path.join("missing/../../x").to_str().unwrap())
            .unwrap_err();
        assert!(matches!(err, PathError::DotDot { .. }), "{err}");
    }

    #[test]
    fn an_opened_directory_must_really_be_inside_the_roots() {
        let root = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let root_path = root.path().canonicalize().unwrap();
        std::fs::create_dir_all(root_path.join("a/pack")).unwrap();
        std::fs::create_dir_all(outside.path().join("pack")).unwrap();
        let policy = PathPolicy::new(vec![root_path.clone()]);
        let confined = policy
            .confine(root_path.join("a/pack").to_str().unwrap())
            .unwrap();
        assert!(policy.open_confined(&confined).is_ok());

        // `a` swapped for a link out of the roots after `confine` judged the path.
        std::fs::rename(root_path.join("a"), root_path.join("a.real")).unwrap();
        std::os::unix::fs::symlink(outside.path(), root_path.join("a")).unwrap();
        let err = policy.open_confined(&confined).unwrap_err();
        assert!(matches!(err, PathError::OutsideRoots { .. }), "{err}");

        std::fs::remove_file(root_path.join("a")).unwrap();
        let err = policy.open_confined(&confined).unwrap_err();
        assert!(
            matches!(&err, PathError::Open(e) if e.is_not_found()),
            "{err}"
        );
    }

    #[test]
    fn a_root_prefix_is_not_a_root() {
        let base = tempfile::tempdir().unwrap();
        let base = base.path().canonicalize().unwrap();
        std::fs::create_dir(base.join("packs")).unwrap();
        std::fs::create_dir(base.join("packs-evil")).unwrap();
        let policy = PathPolicy::new(vec![base.join("packs")]);
        assert!(
            policy
                .confine(base.join("packs-evil").to_str().unwrap())
                .is_err()
        );
    }
}
