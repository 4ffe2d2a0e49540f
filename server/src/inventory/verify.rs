//! VerifyPacks: each installed pack's files against what registration recorded, like
//! `rpm -V`.
//!
//! The pack's directory is read again from `storage_path` through the checksum walk
//! with [`LinkPolicy::Report`]: directories are opened beneath the pack's descriptor,
//! and no symbolic link is followed. Registration stores what links resolve to, so a
//! link (or fifo, device, socket) in a stored pack was put there afterwards: it is
//! reported (`added`, or `modified` where a recorded file was), never read through.
//! The attune-pack-file-v1 checksum of the regular files and each file's SHA-256 come
//! from one read and are compared with `packs.checksum` and `packs.file_manifest`.

use std::{
    collections::{BTreeMap, HashSet},
    path::{Path, PathBuf},
};

use futures::StreamExt;

use super::InventoryError;
use crate::{
    checksum::{self, LinkPolicy, TreeDigest},
    manifest::is_valid_pack_ref,
    progress::{Reporter, Stage},
    store::{Db, inventory::VerifyRow},
};

/// More refs than this in one request is a mistake (as for the other batch calls).
pub const MAX_REFS: usize = 10_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VerifyStatus {
    /// Every file as registered, nothing added.
    Ok,
    /// Files differ, were added or removed, or something that is not a regular file
    /// was planted.
    Modified,
    /// The pack's directory is gone.
    Missing,
    /// Nothing was recorded to compare with (no checksum, no manifest).
    Unverifiable,
    /// The ref named in the request is not installed.
    NotInstalled,
    /// The directory could not be read to the end (permissions, limits).
    Error,
}

impl VerifyStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            VerifyStatus::Ok => "ok",
            VerifyStatus::Modified => "modified",
            VerifyStatus::Missing => "missing",
            VerifyStatus::Unverifiable => "unverifiable",
            VerifyStatus::NotInstalled => "not_installed",
            VerifyStatus::Error => "error",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedPack {
    pub pack_ref: String,
    pub version: String,
    pub status: VerifyStatus,
    /// `sha256:<hex>` as registered.
    pub recorded_checksum: String,
    /// `sha256:<hex>` of the regular files found now; empty when not computed.
    pub actual_checksum: String,
    pub modified: Vec<String>,
    pub added: Vec<String>,
    pub missing: Vec<String>,
    /// Entries that are not regular files or directories, as `<path> (<what>)`.
    pub irregular: Vec<String>,
    pub message: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct VerifyReport {
    /// In the order asked for (ref order when every pack is verified).
    pub packs: Vec<VerifiedPack>,
    pub ok: u32,
    /// Every pack whose status is not `ok`.
    pub failed: u32,
}

/// Verifies `refs` (every installed pack when empty), `concurrency` packs at a time,
/// with one progress event per pack.
pub async fn verify(
    db: &Db,
    refs: Vec<String>,
    concurrency: usize,
    reporter: &Reporter,
) -> Result<VerifyReport, InventoryError> {
    if refs.len() > MAX_REFS {
        return Err(InventoryError::TooManyRefs {
            count: refs.len(),
            max: MAX_REFS,
        });
    }
    if let Some(bad) = refs.iter().find(|r| !is_valid_pack_ref(r)) {
        return Err(InventoryError::InvalidRef {
            field: "refs",
            value: bad.chars().take(80).collect(),
        });
    }
    let refs = if refs.is_empty() {
        db.installed_refs().await?
    } else {
        let mut seen = HashSet::new();
        refs.into_iter()
            .filter(|r| seen.insert(r.clone()))
            .collect()
    };
    let total = refs.len() as u64;
    let mut done = 0u64;
    let mut report = VerifyReport::default();
    let mut checks = futures::stream::iter(refs)
        .map(|pack_ref| async move {
            let row = db.verify_row(&pack_ref).await?;
            Ok::<_, InventoryError>(match row {
                None => VerifiedPack::not_installed(pack_ref),
                Some(row) => tokio::task::spawn_blocking(move || verify_row(row))
                    .await
                    .expect("verifying a pack panicked"),
            })
        })
        .buffered(concurrency.max(1));
    while let Some(checked) = checks.next().await {
        if reporter.is_cancelled() {
            break;
        }
        let checked = checked?;
        done += 1;
        reporter.with_subject(&checked.pack_ref).count(
            Stage::Verify,
            checked.summary(),
            done,
            Some(total),
        );
        if checked.status == VerifyStatus::Ok {
            report.ok += 1;
        } else {
            report.failed += 1;
        }
        report.packs.push(checked);
    }
    Ok(report)
}

impl VerifiedPack {
    fn not_installed(pack_ref: String) -> Self {
        VerifiedPack {
            message: format!("pack '{pack_ref}' is not installed"),
            pack_ref,
            version: String::new(),
            status: VerifyStatus::NotInstalled,
            recorded_checksum: String::new(),
            actual_checksum: String::new(),
            modified: Vec::new(),
            added: Vec::new(),
            missing: Vec::new(),
            irregular: Vec::new(),
        }
    }

    /// One line for progress: the status and the counts of what differs.
    fn summary(&self) -> String {
        let mut line = self.status.as_str().to_string();
        let parts: Vec<String> = [
            (self.modified.len(), "modified"),
            (self.added.len(), "added"),
            (self.missing.len(), "missing"),
        ]
        .iter()
        .filter(|(n, _)| *n > 0)
        .map(|(n, what)| format!("{n} {what}"))
        .collect();
        if !parts.is_empty() {
            line.push_str(&format!(": {}", parts.join(", ")));
        }
        if !self.message.is_empty() {
            line.push_str(&format!(" ({})", self.message));
        }
        line
    }
}

/// Checks one pack's directory against its row (blocking: reads every file).
pub fn verify_row(row: VerifyRow) -> VerifiedPack {
    let mut out = VerifiedPack {
        pack_ref: row.pack_ref,
        version: row.version,
        status: VerifyStatus::Ok,
        recorded_checksum: row.checksum.clone().unwrap_or_default(),
        actual_checksum: String::new(),
        modified: Vec::new(),
        added: Vec::new(),
        missing: Vec::new(),
        irregular: Vec::new(),
        message: String::new(),
    };
    let dir = PathBuf::from(&row.storage_path);
    if let Some(problem) = directory_problem(&dir) {
        out.status = problem.0;
        out.message = problem.1;
        return out;
    }
    let digest = match checksum::directory_digest(&dir, LinkPolicy::Report) {
        Ok(d) => d,
        Err(e) => {
            out.status = VerifyStatus::Error;
            out.message = format!("the pack's directory cannot be read to the end: {e}");
            return out;
        }
    };
    out.actual_checksum = checksum::checksum_prefixed(&digest.checksum);
    out.irregular = digest
        .irregular
        .iter()
        .map(|(path, what)| format!("{path} ({what}, not followed)"))
        .collect();
    let same_checksum = row.checksum.as_deref() == Some(out.actual_checksum.as_str());
    let manifest: Option<BTreeMap<String, String>> = row
        .file_manifest
        .as_deref()
        .and_then(|m| serde_json::from_str(m).ok());
    match manifest {
        Some(manifest) => {
            compare(&manifest, &digest, &mut out);
            let differs =
                !(out.modified.is_empty() && out.added.is_empty() && out.missing.is_empty());
            if differs {
                out.status = VerifyStatus::Modified;
            } else if !same_checksum {
                out.status = VerifyStatus::Modified;
                out.message = "every file matches the manifest but the directory checksum \
                               differs from the recorded one: the row was changed"
                    .into();
            }
        }
        None if row.checksum.is_none() => {
            out.status = VerifyStatus::Unverifiable;
            out.message = "registration recorded neither a checksum nor a file manifest".into();
        }
        None => {
            let unrecorded = if row.file_manifest.is_some() {
                "the recorded file manifest cannot be read"
            } else {
                "no per-file manifest was recorded (registered before VerifyPacks existed)"
            };
            // Irregular entries are new whatever was recorded.
            out.added = digest.irregular.iter().map(|(p, _)| p.clone()).collect();
            if same_checksum && out.added.is_empty() {
                out.message = format!("{unrecorded}; verified by the directory checksum");
            } else {
                out.status = VerifyStatus::Modified;
                out.message = format!(
                    "{unrecorded}, so which files changed cannot be told; the directory \
                     checksum differs. Register the pack again to record a manifest"
                );
            }
        }
    }
    out
}

/// Fills `modified`, `added` and `missing` (each in component order).
fn compare(manifest: &BTreeMap<String, String>, digest: &TreeDigest, out: &mut VerifiedPack) {
    let mut found: HashSet<&str> = HashSet::with_capacity(digest.files.len());
    for (path, hex) in &digest.files {
        found.insert(path);
        match manifest.get(path) {
            Some(recorded) if recorded == hex => {}
            Some(_) => out.modified.push(path.clone()),
            None => out.added.push(path.clone()),
        }
    }
    for (path, _) in &digest.irregular {
        found.insert(path);
        if manifest.contains_key(path) {
            out.modified.push(path.clone());
        } else {
            out.added.push(path.clone());
        }
    }
    out.missing = manifest
        .keys()
        .filter(|p| !found.contains(p.as_str()))
        .cloned()
        .collect();
    for list in [&mut out.modified, &mut out.added, &mut out.missing] {
        list.sort_by(|a, b| checksum::compare_paths(a, b));
    }
}

/// The status of a pack whose directory is not there to walk: gone (`missing`), or
/// replaced by a link or something else (`modified`). Named by path, never followed.
fn directory_problem(dir: &Path) -> Option<(VerifyStatus, String)> {
    match std::fs::symlink_metadata(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Some((
            VerifyStatus::Missing,
            format!("the pack's directory {} is gone", dir.display()),
        )),
        Err(e) => Some((
            VerifyStatus::Error,
            format!("cannot look at {}: {e}", dir.display()),
        )),
        Ok(meta) if meta.file_type().is_symlink() => Some((
            VerifyStatus::Modified,
            format!(
                "the pack's directory {} was replaced by a symbolic link (not followed)",
                dir.display()
            ),
        )),
        Ok(meta) if !meta.is_dir() => Some((
            VerifyStatus::Modified,
            format!("{} is no longer a directory", dir.display()),
        )),
        Ok(_) => None,
    }
}
