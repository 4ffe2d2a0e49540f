//! Reading files of a pack without following symbolic links or leaving the pack.

use std::fs;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use super::MAX_COMPONENT_FILE_BYTES;

/// What a directory entry is, judged without following symlinks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum EntryKind {
    File,
    Symlink,
    Dir,
    Other,
}

/// A `*.yaml`/`*.yml` entry of a component directory.
#[derive(Debug, Clone)]
pub(super) struct YamlEntry {
    /// File name.
    pub name: String,
    /// Relative to the pack root, `/`-separated.
    pub rel: String,
    pub path: PathBuf,
    pub kind: EntryKind,
}

/// Problems with listing a directory, reported by the caller.
#[derive(Debug, Default)]
pub(super) struct Listing {
    pub entries: Vec<YamlEntry>,
    /// (relative path, message)
    pub errors: Vec<(String, String)>,
    pub warnings: Vec<(String, String)>,
}

pub(super) const SYMLINK_REFUSED: &str =
    "is a symbolic link; refused (a pack must not make the server read outside it)";

/// Lists the `*.yaml`/`*.yml` entries directly inside `pack_dir/dir_rel`, sorted by
/// name. A missing directory is empty.
pub(super) fn list_yaml(pack_dir: &Path, dir_rel: &str) -> Listing {
    let mut out = Listing::default();
    let dir = pack_dir.join(dir_rel);
    match fs::symlink_metadata(&dir) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return out,
        Err(e) => {
            out.errors
                .push((dir_rel.to_string(), format!("cannot read directory: {e}")));
            return out;
        }
        Ok(m) if m.file_type().is_symlink() => {
            out.errors
                .push((dir_rel.to_string(), SYMLINK_REFUSED.to_string()));
            return out;
        }
        Ok(m) if !m.is_dir() => {
            out.errors
                .push((dir_rel.to_string(), "is not a directory".to_string()));
            return out;
        }
        Ok(_) => {}
    }
    let read = match fs::read_dir(&dir) {
        Ok(r) => r,
        Err(e) => {
            out.errors
                .push((dir_rel.to_string(), format!("cannot read directory: {e}")));
            return out;
        }
    };
    for entry in read {
        let entry = match entry {
            Ok(e) => e,
            Err(e) => {
                out.errors
                    .push((dir_rel.to_string(), format!("cannot read directory: {e}")));
                continue;
            }
        };
        let name = match entry.file_name().into_string() {
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
        let kind = match entry.file_type() {
            Ok(t) if t.is_symlink() => EntryKind::Symlink,
            Ok(t) if t.is_file() => EntryKind::File,
            Ok(t) if t.is_dir() => EntryKind::Dir,
            Ok(_) => EntryKind::Other,
            Err(e) => {
                out.errors
                    .push((rel, format!("cannot read file type: {e}")));
                continue;
            }
        };
        out.entries.push(YamlEntry {
            name,
            rel,
            path: entry.path(),
            kind,
        });
    }
    out.entries.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

fn is_yaml_name(name: &str) -> bool {
    name.ends_with(".yaml") || name.ends_with(".yml")
}

/// Reads a regular file of at most [`MAX_COMPONENT_FILE_BYTES`] as UTF-8 text. The error
/// is a message for an issue on that file.
pub(super) fn read_text(path: &Path) -> Result<String, String> {
    let meta = fs::symlink_metadata(path).map_err(|e| format!("cannot read file: {e}"))?;
    if meta.file_type().is_symlink() {
        return Err(SYMLINK_REFUSED.to_string());
    }
    if !meta.is_file() {
        return Err("is not a regular file".to_string());
    }
    if meta.len() > MAX_COMPONENT_FILE_BYTES {
        return Err(too_large(meta.len()));
    }
    let file = fs::File::open(path).map_err(|e| format!("cannot read file: {e}"))?;
    // Re-check on the opened handle: the entry may have been replaced meanwhile.
    let opened = file
        .metadata()
        .map_err(|e| format!("cannot read file: {e}"))?;
    if !opened.is_file() {
        return Err("is not a regular file".to_string());
    }
    let mut buf = Vec::new();
    file.take(MAX_COMPONENT_FILE_BYTES + 1)
        .read_to_end(&mut buf)
        .map_err(|e| format!("cannot read file: {e}"))?;
    if buf.len() as u64 > MAX_COMPONENT_FILE_BYTES {
        return Err(too_large(buf.len() as u64));
    }
    let mut text = String::from_utf8(buf).map_err(|e| {
        format!(
            "is not valid UTF-8 (invalid byte at offset {})",
            e.utf8_error().valid_up_to()
        )
    })?;
    if text.starts_with('\u{feff}') {
        text.remove(0);
    }
    Ok(text)
}

fn too_large(len: u64) -> String {
    format!(
        "file is {len} bytes; component files are limited to 1 MiB ({MAX_COMPONENT_FILE_BYTES} bytes)"
    )
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
    /// The first component of the path that is a symlink.
    Symlink(String),
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
            PathProblem::Symlink(rel) => {
                format!("{key} '{value}' goes through the symbolic link {rel}; refused")
            }
            PathProblem::NotAFile(rel) => format!("{key} '{value}' ({rel}) is not a regular file"),
            PathProblem::Io(rel, e) => format!("{key} '{value}': cannot read {rel}: {e}"),
        }
    }
}

/// Resolves `rel` (as written in a component) against the pack directory `base` (e.g.
/// `actions`), lexically, refusing absolute paths and `..` leaving the pack, then checks
/// on disk, component by component without following symlinks, that it is a regular
/// file. Returns the path relative to the pack root.
pub(super) fn resolve_in_pack(
    pack_dir: &Path,
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
    let mut path = pack_dir.to_path_buf();
    for (i, part) in parts.iter().enumerate() {
        path.push(part);
        let so_far = parts[..=i].join("/");
        let meta = match fs::symlink_metadata(&path) {
            Ok(m) => m,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
                ) =>
            {
                return Err(PathProblem::Missing(joined));
            }
            Err(e) => return Err(PathProblem::Io(so_far, e.to_string())),
        };
        if meta.file_type().is_symlink() {
            return Err(PathProblem::Symlink(so_far));
        }
        let last = i + 1 == parts.len();
        if last && !meta.is_file() {
            return Err(PathProblem::NotAFile(joined));
        }
        if !last && !meta.is_dir() {
            return Err(PathProblem::Missing(joined));
        }
    }
    Ok(joined)
}
