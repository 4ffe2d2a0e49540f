//! Pack history and kept versions: where kept versions live on disk, how a change is
//! named (install, upgrade, downgrade, replace), what PackHistory reads, and the
//! clean-up of kept directories and environment builds after a change committed.
//!
//! A registration that replaces a pack keeps the previous version's directory: the
//! swap's `previous` is renamed to `<packs base dir>/.history/<ref>/<unique>` instead of
//! being deleted (`journal::SwapEntry::keep`), and a `pack_versions` row written in the
//! registration's transaction snapshots its rows and environment links. The builds
//! those links name are listed in `<envs root>/<ref>/.kept`, which environment garbage
//! collection spares. The file only ever names a superset of what the rows keep: it is
//! extended before anything could collect, and narrowed to the rows after commit.

use std::{
    collections::{BTreeSet, HashSet},
    fs,
    path::{Path, PathBuf},
};

use crate::{
    envs::{EnvLinks, RefDir},
    store::{
        Db, StoreError,
        history::HistoryAction,
        versions::{HistoryRecord, KeptVersionRow},
    },
};

/// The directory inside a packs base directory that holds kept versions. Not a
/// `.attune-*` name: the start-up sweep of work directories leaves it alone.
pub const HISTORY_DIR: &str = ".history";
/// PackHistory's default and largest page.
pub const DEFAULT_LIMIT: u32 = 100;
pub const MAX_LIMIT: u32 = 1000;

/// `<base>/.history/<ref>`, `base` being the parent of the pack's directory `target`.
pub fn history_dir(target: &Path, pack_ref: &str) -> PathBuf {
    target
        .parent()
        .unwrap_or(Path::new("/"))
        .join(HISTORY_DIR)
        .join(pack_ref)
}

/// A fresh place for a kept copy of the pack at `target`.
pub fn keep_path(target: &Path, pack_ref: &str) -> PathBuf {
    history_dir(target, pack_ref).join(format!("v.{}", crate::paths::unique_suffix()))
}

/// What replacing version `from` (none: not installed) by `to` is.
pub fn action_for(from: Option<&str>, to: &str) -> HistoryAction {
    let Some(from) = from else {
        return HistoryAction::Install;
    };
    match (semver::Version::parse(from), semver::Version::parse(to)) {
        (Ok(a), Ok(b)) if b > a => HistoryAction::Upgrade,
        (Ok(a), Ok(b)) if b < a => HistoryAction::Downgrade,
        (Ok(_), Ok(_)) => HistoryAction::Replace,
        _ if from == to => HistoryAction::Replace,
        _ => HistoryAction::Upgrade,
    }
}

/// The environment links a kept version recorded; unreadable JSON reads as none.
pub fn env_links_of(row: &KeptVersionRow) -> EnvLinks {
    serde_json::from_str(&row.env_links).unwrap_or_default()
}

/// The build directory names of `links`.
pub fn builds_of(links: &EnvLinks) -> impl Iterator<Item = String> + '_ {
    [&links.python, &links.node]
        .into_iter()
        .flatten()
        .filter_map(|t| t.file_name())
        .map(|n| n.to_string_lossy().into_owned())
}

/// Adds `builds` to the ref's kept-builds file, before a change that may collect them.
pub fn extend_kept_builds(
    envs_root: &Path,
    pack_ref: &str,
    builds: impl IntoIterator<Item = String>,
) -> std::io::Result<()> {
    let ref_dir = RefDir::new(envs_root, pack_ref);
    let mut all = ref_dir.kept_builds();
    let before = all.len();
    all.extend(builds);
    if all.len() == before {
        return Ok(());
    }
    ref_dir.write_kept(&all)
}

/// What a committed change leaves to do for one ref: the kept-builds file narrowed to
/// what the rows keep, the directories of pruned versions and any unreferenced kept
/// directory deleted.
#[derive(Debug, Clone)]
pub struct AfterCommit {
    pub pack_ref: String,
    pub envs_root: PathBuf,
    pub history_dir: PathBuf,
    /// The kept versions' directories the rows name now.
    pub referenced: HashSet<PathBuf>,
    /// The builds the kept versions' links name now.
    pub kept_builds: BTreeSet<String>,
}

impl AfterCommit {
    pub fn of(
        pack_ref: &str,
        target: &Path,
        envs_root: &Path,
        remaining: &[KeptVersionRow],
    ) -> Self {
        AfterCommit {
            pack_ref: pack_ref.to_string(),
            envs_root: envs_root.to_path_buf(),
            history_dir: history_dir(target, pack_ref),
            referenced: remaining
                .iter()
                .map(|r| PathBuf::from(&r.files_path))
                .collect(),
            kept_builds: remaining
                .iter()
                .flat_map(|r| builds_of(&env_links_of(r)).collect::<Vec<_>>())
                .collect(),
        }
    }

    /// Runs under the pack's lock, after the swap was finished (a kept directory an
    /// unfinished swap still has to produce is not there yet, and is referenced).
    /// Best effort: what is left is retried by the ref's next change.
    pub fn run(&self) {
        let ref_dir = RefDir::new(&self.envs_root, &self.pack_ref);
        if ref_dir.dir.is_dir()
            && let Err(e) = ref_dir.write_kept(&self.kept_builds)
        {
            tracing::warn!(pack = %self.pack_ref, "cannot rewrite the kept builds: {e}");
        }
        let Ok(entries) = fs::read_dir(&self.history_dir) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if self.referenced.contains(&path) {
                continue;
            }
            let removed = match entry.file_type() {
                Ok(t) if t.is_dir() => fs::remove_dir_all(&path),
                _ => fs::remove_file(&path),
            };
            if let Err(e) = removed {
                tracing::warn!(path = %path.display(), "cannot delete a dropped kept version: {e}");
            }
        }
        if self.referenced.is_empty() {
            let _ = fs::remove_dir(&self.history_dir);
        }
    }
}

/// PackHistory's answer.
#[derive(Debug, Clone)]
pub struct PackHistory {
    pub entries: Vec<HistoryRecord>,
    pub kept: Vec<KeptVersionRow>,
}

#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    #[error("'{0}' is not a valid pack ref (lowercase letters, digits, '_' and '-')")]
    InvalidRef(String),
    #[error("limit must be between 1 and {MAX_LIMIT}, got {0}")]
    Limit(u32),
    #[error("cannot read the history: {0}")]
    Store(#[from] StoreError),
}

impl crate::failure::Failure for HistoryError {
    fn kind(&self) -> crate::failure::FailureKind {
        match self {
            HistoryError::InvalidRef(_) | HistoryError::Limit(_) => {
                crate::failure::FailureKind::InvalidRequest
            }
            HistoryError::Store(_) => crate::failure::FailureKind::Internal,
        }
    }
}

/// The history of `pack_ref`, newest first (`limit`: default 100, 1 to 1000), and
/// its kept versions. A ref with no history has an empty one: history outlives packs,
/// so "never installed" and "nothing recorded" are the same answer.
pub async fn pack_history(
    db: &Db,
    pack_ref: &str,
    limit: Option<u32>,
) -> Result<PackHistory, HistoryError> {
    if !crate::manifest::is_valid_pack_ref(pack_ref) {
        return Err(HistoryError::InvalidRef(pack_ref.to_string()));
    }
    let limit = limit.unwrap_or(DEFAULT_LIMIT);
    if !(1..=MAX_LIMIT).contains(&limit) {
        return Err(HistoryError::Limit(limit));
    }
    Ok(PackHistory {
        entries: db.pack_history(pack_ref, limit).await?,
        kept: db.kept_versions(pack_ref).await?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn actions_follow_semver() {
        assert_eq!(action_for(None, "1.0.0"), HistoryAction::Install);
        assert_eq!(action_for(Some("1.0.0"), "1.1.0"), HistoryAction::Upgrade);
        assert_eq!(
            action_for(Some("1.10.0"), "1.9.0"),
            HistoryAction::Downgrade
        );
        assert_eq!(action_for(Some("1.0.0"), "1.0.0"), HistoryAction::Replace);
        assert_eq!(
            action_for(Some("2.0.0-beta"), "2.0.0"),
            HistoryAction::Upgrade
        );
    }

    #[test]
    fn keep_paths_are_beside_the_pack_and_never_work_directories() {
        let path = keep_path(Path::new("/packs/demo"), "demo");
        assert!(path.starts_with("/packs/.history/demo"));
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        assert!(crate::journal::WorkName::parse_any(&name).is_none());
        assert_ne!(path, keep_path(Path::new("/packs/demo"), "demo"));
    }
}
