//! Reading files of a pack without leaving it: every name is opened through the pack's
//! directory descriptor ([`PackDir`]), which follows a symbolic link only when it
//! stays inside the pack and otherwise refuses it, naming it.

use std::path::Path;

use crate::packfs::{self, PackDir, PackFsError};

/// What a directory entry is (a link inside the pack judged as what it points to).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum EntryKind {
    File,
    Dir,
    /// A FIFO, socket or device: "fifo", "socket", ...
    Other(&'static str),
}

/// A `*.yaml`/`*.yml` entry of a component directory.
#[derive(Debug, Clone)]
pub(super) struct YamlEntry {
    /// File name.
    pub name: String,
    /// Relative to the pack root, `/`-separated.
    pub rel: String,
    pub kind: EntryKind,
}

/// Problems with listing a directory, reported by the caller.
#[derive(Debug, Default)]
pub(super) struct Listing {
    pub entries: Vec<YamlEntry>,
    /// (relative path, message)
    pub errors: Vec<(String, String)>,
    pub warnings: Vec<(String, String)>,
    /// Links that cannot be followed: (the link relative to the pack root, message).
    pub links: Vec<(String, String)>,
}

/// The link that `e` refuses, relative to the pack root, with the message; `None`
/// when `e` is not about a link.
pub(super) fn link_refusal(pack: &PackDir, e: &PackFsError) -> Option<LinkRefusal> {
    match e {
        PackFsError::Link { path, .. } => Some(LinkRefusal {
            link: path
                .strip_prefix(pack.root_path())
                .unwrap_or(path)
                .display()
                .to_string(),
            reason: e.reason(),
        }),
        _ => None,
    }
}

/// A symbolic link that leaves the pack, points to nothing or loops.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct LinkRefusal {
    /// Relative to the pack root.
    pub link: String,
    /// "is a symbolic link to '...' that leaves the pack; ..."
    pub reason: String,
}

/// Lists the `*.yaml`/`*.yml` entries directly inside `dir_rel` of the pack, sorted by
/// name. A missing directory is empty.
pub(super) fn list_yaml(pack: &PackDir, dir_rel: &str) -> Listing {
    let mut out = Listing::default();
    let dir = match pack.open_dir(dir_rel) {
        Ok(dir) => dir,
        Err(e) if e.is_not_found() => return out,
        Err(e @ PackFsError::Link { .. }) => {
            if let Some(refusal) = link_refusal(pack, &e) {
                out.links.push((refusal.link, refusal.reason));
            }
            return out;
        }
        Err(PackFsError::NotADirectory { .. } | PackFsError::Special { .. }) => {
            out.errors
                .push((dir_rel.to_string(), "is not a directory".to_string()));
            return out;
        }
        Err(e) => {
            out.errors.push((
                dir_rel.to_string(),
                format!("cannot read directory: {}", e.reason()),
            ));
            return out;
        }
    };
    let entries = match dir.entries() {
        Ok(entries) => entries,
        Err(e) => {
            out.errors.push((
                dir_rel.to_string(),
                format!("cannot read directory: {}", e.reason()),
            ));
            return out;
        }
    };
    for entry in entries {
        let name = match entry.name.into_string() {
            Ok(n) => n,
            Err(raw) => {
                let lossy = raw.to_string_lossy().into_owned();
                if is_yaml_name(&lossy) {
                    out.warnings.push((
                        format!("{dir_rel}/{lossy}"),
                        "file name is not valid UTF-8; skipped".to_string(),
                    ));
                }
                continue;
            }
        };
        if !is_yaml_name(&name) {
            continue;
        }
        let rel = format!("{dir_rel}/{name}");
        if name.starts_with('.') {
            out.warnings.push((rel, "hidden file; skipped".to_string()));
            continue;
        }
        let kind = match entry.kind {
            packfs::EntryKind::Symlink => match dir.resolve_kind(&name) {
                Ok((kind, _)) => kind,
                Err(e) => {
                    match link_refusal(pack, &e) {
                        Some(refusal) => out.links.push((refusal.link, refusal.reason)),
                        None => out.errors.push((rel, e.reason())),
                    }
                    continue;
                }
            },
            other => other,
        };
        let kind = match kind {
            packfs::EntryKind::File => EntryKind::File,
            packfs::EntryKind::Dir => EntryKind::Dir,
            other => EntryKind::Other(other.describe()),
        };
        out.entries.push(YamlEntry { name, rel, kind });
    }
    out.entries.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

fn is_yaml_name(name: &str) -> bool {
    name.ends_with(".yaml") || name.ends_with(".yml")
}

/// Why a path given in a component (`entry_point`, `workflow_file`) is unusable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum PathProblem {
    Empty,
    /// Absolute, or not a plain relative `/`-separated path.
    NotRelative,
    /// `..` climbs above the pack root.
    Escapes,
    /// Relative path (to the pack root) that was looked for.
    Missing(String),
    /// A symbolic link on the way that cannot be followed.
    Symlink(LinkRefusal),
    NotAFile(String),
    Io(String, String),
}

impl PathProblem {
    /// A message about `key: value`.
    pub fn message(&self, key: &str, value: &str) -> String {
        match self {
            PathProblem::Empty => format!("{key} is empty"),
            PathProblem::NotRelative => {
                format!("{key} '{value}' must be a relative '/'-separated path inside the pack")
            }
            PathProblem::Escapes => format!("{key} '{value}' points outside the pack"),
            PathProblem::Missing(rel) => {
                format!("{key} '{value}' does not exist (looked for {rel})")
            }
            PathProblem::Symlink(refusal) => {
                format!("{key} '{value}': '{}' {}", refusal.link, refusal.reason)
            }
            PathProblem::NotAFile(rel) => format!("{key} '{value}' ({rel}) is not a regular file"),
            PathProblem::Io(rel, e) => format!("{key} '{value}': cannot read {rel}: {e}"),
        }
    }
}

/// Resolves `rel` (as written in a component) against the pack directory `base` (e.g.
/// `actions`), lexically, refusing absolute paths and `..` leaving the pack, then checks
/// through the pack's descriptor (following links only inside the pack) that it is a
/// regular file. Returns the path relative to the pack root.
pub(super) fn resolve_in_pack(
    pack: &PackDir,
    base: &str,
    rel: &str,
) -> Result<String, PathProblem> {
    if rel.trim().is_empty() {
        return Err(PathProblem::Empty);
    }
    let bytes = rel.as_bytes();
    if rel.starts_with('/')
        || rel.contains('\\')
        || rel.contains('\0')
        || (bytes.len() >= 2 && bytes[1] == b':' && bytes[0].is_ascii_alphabetic())
        || Path::new(rel).is_absolute()
    {
        return Err(PathProblem::NotRelative);
    }
    let mut parts: Vec<&str> = base.split('/').filter(|p| !p.is_empty()).collect();
    for part in rel.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                if parts.pop().is_none() {
                    return Err(PathProblem::Escapes);
                }
            }
            p => parts.push(p),
        }
    }
    if parts.is_empty() {
        return Err(PathProblem::NotAFile(".".to_string()));
    }
    let joined = parts.join("/");
    match pack.resolve_kind(&joined) {
        Ok((packfs::EntryKind::File, _)) => Ok(joined),
        Ok(_) => Err(PathProblem::NotAFile(joined)),
        Err(PackFsError::NotFound { .. } | PackFsError::NotADirectory { .. }) => {
            Err(PathProblem::Missing(joined))
        }
        Err(e) => match link_refusal(pack, &e) {
            Some(refusal) => Err(PathProblem::Symlink(refusal)),
            None => Err(PathProblem::Io(joined, e.reason())),
        },
    }
}
