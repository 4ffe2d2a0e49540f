//! Crash consistency: a journal of intended directory swaps, their recovery at start,
//! and the removal of work directories that crashed processes left behind.
//!
//! Registration switches a pack's files with two renames (old directory aside, staged
//! copy in) and its rows with one database transaction. A crash between the two would
//! leave them disagreeing, so before the first rename an *intent* is written: a small
//! JSON file in `<data_dir>/journal/`, created and fsync'd before any rename, naming
//! for every pack of the transaction the target, the staged copy, the place the old
//! directory moves to, and the checksum the transaction writes into the pack's row.
//! The row's checksum is the commit token: at start, for every intent whose owner is
//! gone, a row holding the intent's checksum means the transaction committed and the
//! swap is finished (the old directory deleted); anything else means it did not, and
//! the swap is undone (the old directory put back, the new one deleted). Only then is
//! the intent removed.
//!
//! The swap protocol is shaped so that every intermediate state tells its own story,
//! which makes both directions idempotent (a crash during recovery is recovered by the
//! next start):
//!
//! | state | target | previous | staged |
//! |---|---|---|---|
//! | S0, before | old or absent | absent | new |
//! | S1, old aside | absent | old, or an empty directory if there was none | new |
//! | S2, swapped | new | old or empty | absent |
//!
//! Install switches environment links before its registration commits; those switches
//! have intents of their own (`envs.*.json`, [`EnvIntent`]), written before the first
//! build and settled by the same token: the new builds stay if the row holds the
//! checksum, otherwise the previous ones come back and every other build is deleted.
//! Process groups a dead server left running are killed first
//! ([`kill_orphaned_groups`]), so that nothing writes into what is being settled.
//!
//! Removals (RemovePacks) have intents of their own (`remove.*.json`, [`RemovalEntry`]):
//! a removed pack's directory and environments are renamed aside before its rows are
//! deleted, and the row's id is the token: no row with that id means the removal
//! committed (the asides are deleted), a row means it did not (they go back).
//!
//! Work directories (download staging, staged copies, install work directories, swap
//! backups, removal asides) are named `.attune-<kind>.<owner>.<random>[.<ref>]`, where `<owner>` is
//! `<boot id>-<pid>-<process start time>`: at start, one whose owner is no longer a
//! live process is removed (or, for a backup, put back or deleted as its journal says).

use std::{
    collections::HashSet,
    fs,
    io::Write,
    path::{Path, PathBuf},
    sync::{
        Mutex, OnceLock,
        atomic::{AtomicUsize, Ordering},
    },
};

use serde::{Deserialize, Serialize};

use crate::{
    locks::PackLocks,
    store::{Db, StoreError},
};

/// The journal directory's name inside the data dir.
pub const JOURNAL_DIR: &str = "journal";
/// Inside the journal: one file per directory this server has put work directories in.
const DIRS_DIR: &str = "dirs";
/// Inside the journal: one empty file per process group running now (see
/// [`crate::process::record_groups_in`]).
const GROUPS_DIR: &str = "groups";
const INTENT_PREFIX: &str = "intent.";
/// Intents of environment switches (Install's), beside the swap intents.
const ENV_INTENT_PREFIX: &str = "envs.";
/// Intents of removals (RemovePacks), beside the swap intents.
pub const REMOVAL_INTENT_PREFIX: &str = "remove.";
const INTENT_FORMAT: u32 = 1;

/// The kinds of work directory; the part after `.attune-` in their names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkKind {
    /// Download's staging directory, inside the destination directory.
    DownloadStaging,
    /// A pack copied beside its final place by registration, not yet swapped in.
    Staged,
    /// A registered pack's previous directory during a swap (journal-managed).
    Previous,
    /// Install's work directory under the packs base directory.
    InstallWork,
    /// The directory a forced Download moved aside while placing its replacement.
    Replaced,
    /// A pack directory, or a pack's environments directory, moved aside by a removal
    /// until its rows are deleted (journal-managed, see [`RemovalEntry`]).
    Removed,
}

impl WorkKind {
    const ALL: [WorkKind; 6] = [
        WorkKind::DownloadStaging,
        WorkKind::Staged,
        WorkKind::Previous,
        WorkKind::InstallWork,
        WorkKind::Replaced,
        WorkKind::Removed,
    ];

    fn tag(self) -> &'static str {
        match self {
            WorkKind::DownloadStaging => "staging",
            WorkKind::Staged => "stage",
            WorkKind::Previous => "previous",
            WorkKind::InstallWork => "install",
            WorkKind::Replaced => "replaced",
            WorkKind::Removed => "removed",
        }
    }
}

/// `<dir>/.attune-<kind>.<owner>.<random>[.<ref>]` for this process.
pub fn work_path(dir: &Path, kind: WorkKind, pack_ref: Option<&str>) -> PathBuf {
    let mut name = format!(
        ".attune-{}.{}.{}",
        kind.tag(),
        owner_marker(),
        crate::paths::unique_suffix()
    );
    if let Some(pack_ref) = pack_ref {
        name.push('.');
        name.push_str(pack_ref);
    }
    dir.join(name)
}

/// A work directory's name taken apart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkName {
    pub kind: WorkKind,
    pub owner: String,
    pub pack_ref: Option<String>,
}

impl WorkName {
    /// A work directory's name, or one of the names servers used before owners were
    /// recorded (`.attune-staging-<hex>`, `.attune-install-<hex>`, `.<ref>.staging-<hex>`,
    /// `.<ref>.previous-<hex>`, `.<ref>.replaced-<hex>`), whose owner is unknown and
    /// therefore never alive.
    pub fn parse_any(name: &str) -> Option<WorkName> {
        Self::parse(name).or_else(|| Self::parse_legacy(name))
    }

    fn parse_legacy(name: &str) -> Option<WorkName> {
        let is_suffix = |s: &str| s.len() == 12 && s.bytes().all(|b| b.is_ascii_hexdigit());
        let unowned = |kind, pack_ref: Option<&str>| WorkName {
            kind,
            owner: String::new(),
            pack_ref: pack_ref.map(str::to_string),
        };
        if let Some(suffix) = name.strip_prefix(".attune-staging-") {
            return is_suffix(suffix).then(|| unowned(WorkKind::DownloadStaging, None));
        }
        if let Some(suffix) = name.strip_prefix(".attune-install-") {
            return is_suffix(suffix).then(|| unowned(WorkKind::InstallWork, None));
        }
        let rest = name.strip_prefix('.')?;
        let (pack_ref, tail) = rest.split_once('.')?;
        let (tag, suffix) = tail.split_once('-')?;
        let kind = match tag {
            "staging" => WorkKind::Staged,
            "previous" => WorkKind::Previous,
            "replaced" => WorkKind::Replaced,
            _ => return None,
        };
        (is_suffix(suffix) && crate::manifest::is_valid_pack_ref(pack_ref))
            .then(|| unowned(kind, Some(pack_ref)))
    }

    pub fn parse(name: &str) -> Option<WorkName> {
        let rest = name.strip_prefix(".attune-")?;
        let mut parts = rest.split('.');
        let tag = parts.next()?;
        let kind = WorkKind::ALL.into_iter().find(|k| k.tag() == tag)?;
        let owner = parts.next()?.to_string();
        let random = parts.next()?;
        if owner.is_empty() || random.is_empty() {
            return None;
        }
        let pack_ref = parts.next().map(str::to_string);
        if parts.next().is_some() {
            return None;
        }
        Some(WorkName {
            kind,
            owner,
            pack_ref,
        })
    }
}

/// This process: `<boot id prefix>-<pid>-<start time in clock ticks since boot>`.
pub fn owner_marker() -> &'static str {
    static MARKER: OnceLock<String> = OnceLock::new();
    MARKER.get_or_init(|| {
        let pid = std::process::id();
        format!(
            "{}-{pid}-{}",
            boot_id(),
            process_start(pid).unwrap_or_default()
        )
    })
}

fn boot_id() -> String {
    fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().replace('-', "").chars().take(8).collect())
        .unwrap_or_else(|_| "noboot".into())
}

/// Field 22 of `/proc/<pid>/stat` (after the parenthesised command, which may hold
/// spaces and parentheses itself).
pub(crate) fn process_start(pid: u32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &stat[stat.rfind(')')? + 1..];
    after.split_whitespace().nth(19)?.parse().ok()
}

/// Whether the process that named a work directory `owner` is still running. A marker
/// that does not parse belongs to nobody.
pub fn owner_alive(owner: &str) -> bool {
    if owner == owner_marker() {
        return true;
    }
    let mut parts = owner.splitn(3, '-');
    let (Some(boot), Some(pid), Some(start)) = (parts.next(), parts.next(), parts.next()) else {
        return false;
    };
    let (Ok(pid), Ok(start)) = (pid.parse::<u32>(), start.parse::<u64>()) else {
        return false;
    };
    boot == boot_id() && process_start(pid) == Some(start)
}

#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("cannot write the swap journal in {dir}: {source}")]
    Write {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write the swap journal in {dir}: {source}")]
    Encode {
        dir: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("cannot move the previous '{}' aside: {source}", target.display())]
    MoveAside {
        target: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot move the pack into '{}': {source}", target.display())]
    MoveIn {
        target: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot read the swap journal in {dir}: {source}")]
    Read {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot decide interrupted registrations: {0}")]
    Store(#[from] StoreError),
    #[error("cannot settle the environments of '{pack_ref}': {source}")]
    Environments {
        pack_ref: String,
        #[source]
        source: Box<crate::envs::EnvError>,
    },
}

/// The target, the previous directory and the staged copy of a swap all exist: not a
/// state the protocol produces, so something else made the target.
#[derive(Debug, thiserror::Error)]
#[error(
    "'{}', '{}' and '{}' all exist; leaving them for an operator",
    target.display(),
    previous.display(),
    staged.display()
)]
pub struct UnknownSwapState {
    pub target: PathBuf,
    pub previous: PathBuf,
    pub staged: PathBuf,
}

/// One pack of an intended swap.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SwapEntry {
    pub pack_ref: String,
    /// `<packs_base_dir>/<ref>`.
    pub target: PathBuf,
    /// The new files, beside the target.
    pub staged: PathBuf,
    /// Where the old files go (an empty directory stands for "there were none").
    pub previous: PathBuf,
    /// `sha256:…`, the checksum the transaction writes into the pack's row.
    pub checksum: String,
    /// Where the old files go once the transaction committed, instead of being
    /// deleted: a kept version (`history.keep_versions`). Part of the intent, so that
    /// recovery finishes a committed swap the same way.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep: Option<PathBuf>,
    /// `staged` is a kept version being restored (RollbackPack): undoing puts it back
    /// where it was instead of deleting it, since it is the only copy.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub restores_kept: bool,
}

impl SwapEntry {
    /// A swap of `staged` into `target`, with a fresh name for the previous directory.
    pub fn new(pack_ref: &str, target: &Path, staged: &Path, checksum: &str) -> Self {
        let dir = target.parent().unwrap_or(Path::new("/"));
        SwapEntry {
            pack_ref: pack_ref.to_string(),
            target: target.to_path_buf(),
            staged: staged.to_path_buf(),
            previous: work_path(dir, WorkKind::Previous, Some(pack_ref)),
            checksum: checksum.to_string(),
            keep: None,
            restores_kept: false,
        }
    }

    /// Once committed, the old files are kept at `keep` rather than deleted.
    pub fn keeping(mut self, keep: Option<PathBuf>) -> Self {
        self.keep = keep;
        self
    }

    /// S0 → S2: the old directory aside (or an empty one to say there was none), then
    /// the staged one in. On failure the swap is undone before returning.
    #[tracing::instrument(skip(self), fields(pack = %self.pack_ref))]
    pub fn swap_in(&self) -> Result<(), JournalError> {
        if !exists(&self.previous) {
            let moved = if exists(&self.target) {
                fs::rename(&self.target, &self.previous)
            } else {
                fs::create_dir(&self.previous)
            };
            moved.map_err(|source| JournalError::MoveAside {
                target: self.target.clone(),
                source,
            })?;
        }
        crate::fault::pause("swap: previous moved aside");
        if let Err(source) = fs::rename(&self.staged, &self.target) {
            let _ = self.undo();
            return Err(JournalError::MoveIn {
                target: self.target.clone(),
                source,
            });
        }
        crate::fault::pause("swap: new files in place");
        Ok(())
    }

    /// Back to the old files from any state of the protocol; the staged copy is deleted.
    #[tracing::instrument(skip(self), fields(pack = %self.pack_ref))]
    pub fn undo(&self) -> std::io::Result<()> {
        if exists(&self.previous) {
            if exists(&self.target) {
                if exists(&self.staged) {
                    return Err(std::io::Error::other(UnknownSwapState {
                        target: self.target.clone(),
                        previous: self.previous.clone(),
                        staged: self.staged.clone(),
                    }));
                }
                fs::rename(&self.target, &self.staged)?;
            }
            if is_empty_dir(&self.previous) {
                fs::remove_dir(&self.previous)?;
            } else {
                fs::rename(&self.previous, &self.target)?;
            }
        }
        if self.restores_kept {
            return Ok(());
        }
        remove_all(&self.staged)
    }

    /// Forward to the new files from any state of the protocol; the old ones are deleted.
    #[tracing::instrument(skip(self), fields(pack = %self.pack_ref))]
    pub fn finish(&self) -> std::io::Result<()> {
        if exists(&self.staged) {
            if !exists(&self.previous) {
                if exists(&self.target) {
                    fs::rename(&self.target, &self.previous)?;
                } else {
                    fs::create_dir(&self.previous)?;
                }
            }
            fs::rename(&self.staged, &self.target)?;
        }
        if let Some(keep) = &self.keep
            && exists(&self.previous)
            && !is_empty_dir(&self.previous)
        {
            if let Some(parent) = keep.parent() {
                fs::create_dir_all(parent)?;
            }
            return fs::rename(&self.previous, keep);
        }
        remove_all(&self.previous)
    }
}

/// Backups of `target` that dead processes left between the renames of a swap: another
/// server sharing the packs directory that crashed, its own journal out of our reach.
/// Called under the pack's write lock, so no live swap of `target` is in progress.
pub fn stale_backups(target: &Path, pack_ref: &str) -> Vec<PathBuf> {
    let Some(dir) = target.parent() else {
        return Vec::new();
    };
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter(|e| {
            WorkName::parse_any(&e.file_name().to_string_lossy()).is_some_and(|w| {
                w.kind == WorkKind::Previous
                    && w.pack_ref.as_deref() == Some(pack_ref)
                    && !owner_alive(&w.owner)
            })
        })
        .map(|e| e.path())
        .collect()
}

/// Settles the swap a dead process left on `target` (see [`stale_backups`]), under the
/// pack's write lock: when the target's files have the checksum the row records
/// (`recorded`), that swap committed and the backup is deleted; otherwise it did not,
/// and the backup is put back.
pub fn settle_stale(
    target: &Path,
    backups: &[PathBuf],
    recorded: Option<&str>,
) -> std::io::Result<()> {
    let dir = target.parent().unwrap_or(Path::new("/"));
    for backup in backups {
        let target_checksum = crate::checksum::directory_checksum(target)
            .ok()
            .map(|c| crate::checksum::checksum_prefixed(&c));
        if recorded.is_some() && target_checksum.as_deref() == recorded {
            remove_all(backup)?;
            continue;
        }
        if exists(target) {
            let discarded = work_path(dir, WorkKind::Staged, None);
            fs::rename(target, &discarded)?;
            remove_all(&discarded)?;
        }
        if is_empty_dir(backup) {
            fs::remove_dir(backup)?;
        } else {
            fs::rename(backup, target)?;
        }
    }
    Ok(())
}

fn exists(path: &Path) -> bool {
    fs::symlink_metadata(path).is_ok()
}

fn is_empty_dir(path: &Path) -> bool {
    fs::read_dir(path).is_ok_and(|mut entries| entries.next().is_none())
}

fn remove_all(path: &Path) -> std::io::Result<()> {
    match fs::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct IntentFile {
    format: u32,
    owner: String,
    entries: Vec<SwapEntry>,
}

/// The journal of one data dir. Cheap to share; every method is blocking I/O.
#[derive(Debug)]
pub struct Journal {
    dir: PathBuf,
    /// Directories already recorded in `dirs/` by this process.
    recorded: Mutex<HashSet<PathBuf>>,
    /// Critical sections running now: shutdown waits for them, since abandoning one
    /// midway leaves work for the next start's recovery.
    critical: AtomicUsize,
    critical_done: tokio::sync::Notify,
    /// Settling an environment switch takes the ref's lock, as a build does.
    locks: PackLocks,
}

impl Journal {
    pub fn new(data_dir: &Path, locks: PackLocks) -> Self {
        Journal {
            dir: data_dir.join(JOURNAL_DIR),
            recorded: Mutex::new(HashSet::new()),
            critical: AtomicUsize::new(0),
            critical_done: tokio::sync::Notify::new(),
            locks,
        }
    }

    /// Counts a critical section as running until the guard is dropped.
    pub fn enter_critical(self: &std::sync::Arc<Self>) -> CriticalSection {
        self.critical.fetch_add(1, Ordering::SeqCst);
        CriticalSection {
            journal: std::sync::Arc::clone(self),
        }
    }

    /// Resolves once no critical section is running.
    pub async fn critical_sections_done(&self) {
        loop {
            let notified = self.critical_done.notified();
            if self.critical.load(Ordering::SeqCst) == 0 {
                return;
            }
            notified.await;
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Where running process groups are recorded ([`crate::process::record_groups_in`]).
    pub fn groups_dir(&self) -> PathBuf {
        self.dir.join(GROUPS_DIR)
    }

    /// Creates `<prefix><owner>.<random>.json` holding `intent`, fsync'd; a file that
    /// could not be written whole is removed again.
    fn write_new_intent(
        &self,
        prefix: &str,
        intent: &impl Serialize,
    ) -> Result<PathBuf, JournalError> {
        let write_error = |source| JournalError::Write {
            dir: self.dir.clone(),
            source,
        };
        fs::create_dir_all(&self.dir).map_err(write_error)?;
        let path = self.dir.join(format!(
            "{prefix}{}.{}.json",
            owner_marker(),
            crate::paths::unique_suffix()
        ));
        let body = serde_json::to_vec(intent).map_err(|source| JournalError::Encode {
            dir: self.dir.clone(),
            source,
        })?;
        let written = (|| {
            let mut file = fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&path)?;
            file.write_all(&body)?;
            file.sync_all()
        })();
        if let Err(e) = written {
            let _ = fs::remove_file(&path);
            return Err(write_error(e));
        }
        Ok(path)
    }

    /// Writes the intent of Install's environment switches, before the first build
    /// (one small fsync per Install; RegisterBatch does not switch environments).
    pub fn begin_envs(
        self: &std::sync::Arc<Self>,
        db: &Db,
        entries: Vec<EnvSwitchEntry>,
    ) -> Result<EnvIntent, JournalError> {
        let path = self.write_new_intent(
            ENV_INTENT_PREFIX,
            &EnvIntentFile {
                format: INTENT_FORMAT,
                owner: owner_marker().to_string(),
                entries: entries.clone(),
            },
        )?;
        Ok(EnvIntent {
            path,
            entries,
            journal: std::sync::Arc::clone(self),
            db: db.clone(),
            armed: true,
        })
    }

    /// Writes the intent for `entries` (one file, fsync'd: the only fsync a swap
    /// costs). It must be durable before the first rename, so that no rename can
    /// reach the disk without it; a torn intent therefore describes nothing done
    /// and recovery discards it.
    #[tracing::instrument(skip_all, fields(packs = ?pack_refs(&entries)))]
    pub fn begin(&self, entries: Vec<SwapEntry>) -> Result<Intent, JournalError> {
        let path = self.write_new_intent(
            INTENT_PREFIX,
            &IntentFile {
                format: INTENT_FORMAT,
                owner: owner_marker().to_string(),
                entries: entries.clone(),
            },
        )?;
        Ok(Intent { path, entries })
    }

    /// Records that this process puts work directories in `dir`, so that a start
    /// after a crash looks there for leftovers. Best effort, once per directory.
    pub fn remember_dir(&self, dir: &Path) {
        // A work directory (Install's downloads go into one) is swept with its parent.
        if dir
            .file_name()
            .is_some_and(|n| WorkName::parse(&n.to_string_lossy()).is_some())
        {
            return;
        }
        {
            let mut recorded = self.recorded.lock().expect("journal dirs lock");
            if !recorded.insert(dir.to_path_buf()) {
                return;
            }
        }
        let Some(text) = dir.to_str() else {
            return;
        };
        let records = self.dir.join(DIRS_DIR);
        let name = {
            use sha2::Digest as _;
            hex::encode(&sha2::Sha256::digest(text.as_bytes())[..8])
        };
        let record = records.join(name);
        if record.exists() {
            return;
        }
        let _ = fs::create_dir_all(&records).and_then(|()| fs::write(record, text));
    }

    fn recorded_dirs(&self) -> Vec<(PathBuf, PathBuf)> {
        let Ok(entries) = fs::read_dir(self.dir.join(DIRS_DIR)) else {
            return Vec::new();
        };
        entries
            .flatten()
            .filter_map(|e| {
                let text = fs::read_to_string(e.path()).ok()?;
                Some((e.path(), PathBuf::from(text)))
            })
            .collect()
    }
}

fn pack_refs(entries: &[SwapEntry]) -> Vec<&str> {
    entries.iter().map(|e| e.pack_ref.as_str()).collect()
}

/// A written intent; [`Intent::complete`] removes it once every entry was finished or
/// undone. Dropped without that (a crash, an abandoned task), it stays for recovery.
#[derive(Debug)]
pub struct Intent {
    path: PathBuf,
    entries: Vec<SwapEntry>,
}

impl Intent {
    pub fn entries(&self) -> &[SwapEntry] {
        &self.entries
    }

    pub fn complete(self) {
        let _ = fs::remove_file(&self.path);
    }
}

/// One pack of an Install whose environment links may be switched before its
/// registration commits.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnvSwitchEntry {
    pub pack_ref: String,
    /// `<packs_base_dir>/.envs`.
    pub envs_root: PathBuf,
    /// `sha256:…`, the checksum the registration writes into the pack's row: the
    /// commit token, as for directory swaps.
    pub checksum: String,
    /// Where the links pointed before the builds.
    pub previous: crate::envs::EnvLinks,
    /// Where the builds pointed them; `None` until they are done (a crash during the
    /// builds leaves it unknown, and then every build but `previous` is abandoned).
    #[serde(default)]
    pub switched_to: Option<crate::envs::EnvLinks>,
}

#[derive(Debug, Serialize, Deserialize)]
struct EnvIntentFile {
    format: u32,
    owner: String,
    entries: Vec<EnvSwitchEntry>,
}

/// How the environment switches of an [`EnvIntent`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EnvSettled {
    /// The registration committed: the new builds stay.
    Kept,
    /// It did not: the links point at the previous builds again.
    Restored,
}

/// A written intent of environment switches. [`EnvIntent::committed`] ends it after
/// the registration committed, [`EnvIntent::settle`] after anything else. Dropped
/// without either (its caller left mid-Install), it settles itself in a task once no
/// registration's critical section is running, since one started by the dropped call
/// may still commit; a crash leaves it for the next start.
#[derive(Debug)]
pub struct EnvIntent {
    path: PathBuf,
    entries: Vec<EnvSwitchEntry>,
    journal: std::sync::Arc<Journal>,
    db: Db,
    armed: bool,
}

impl EnvIntent {
    pub fn entries(&self) -> &[EnvSwitchEntry] {
        &self.entries
    }

    /// Records where the builds pointed the links (the intent is replaced atomically:
    /// a crash leaves the old file or the new one, both whole).
    pub fn record_switched(&mut self) -> Result<(), JournalError> {
        for entry in &mut self.entries {
            entry.switched_to =
                Some(crate::envs::EnvSnapshot::take(&entry.envs_root, &entry.pack_ref).links());
        }
        let write_error = |source| JournalError::Write {
            dir: self.journal.dir.clone(),
            source,
        };
        let mut tmp = self.path.clone().into_os_string();
        tmp.push(".tmp");
        let tmp = PathBuf::from(tmp);
        let body = serde_json::to_vec(&EnvIntentFile {
            format: INTENT_FORMAT,
            owner: owner_marker().to_string(),
            entries: self.entries.clone(),
        })
        .map_err(|source| JournalError::Encode {
            dir: self.journal.dir.clone(),
            source,
        })?;
        let written = (|| {
            let mut file = fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .open(&tmp)?;
            file.write_all(&body)?;
            file.sync_all()?;
            fs::rename(&tmp, &self.path)
        })();
        written.map_err(|e| {
            let _ = fs::remove_file(&tmp);
            write_error(e)
        })
    }

    /// The registration committed: the replaced builds are deleted, the intent too.
    pub fn committed(mut self) {
        self.armed = false;
        for entry in &self.entries {
            crate::envs::EnvSnapshot::from_links(
                &entry.envs_root,
                &entry.pack_ref,
                &entry.previous,
            )
            .commit();
        }
        let _ = fs::remove_file(&self.path);
    }

    /// Nothing was registered (the builds failed): every link goes back to its
    /// previous build and the new builds are deleted, then the intent. A link that
    /// cannot be put back keeps the intent for the next start.
    pub fn restore(mut self) {
        self.armed = false;
        let mut restored = true;
        for entry in &self.entries {
            let snapshot = crate::envs::EnvSnapshot::from_links(
                &entry.envs_root,
                &entry.pack_ref,
                &entry.previous,
            );
            if let Err(e) = snapshot.try_restore() {
                restored = false;
                tracing::error!(pack = %entry.pack_ref, "cannot switch environments back: {e}");
            }
        }
        if restored {
            let _ = fs::remove_file(&self.path);
        }
    }

    /// Anything but a known commit: the rows decide, pack by pack (see
    /// [`settle_env_entries`]). When they cannot (the database is unreachable), the
    /// intent is left for the next start.
    pub async fn settle(mut self) -> Result<Vec<(String, EnvSettled)>, JournalError> {
        self.armed = false;
        let settled = settle_env_entries(&self.db, &self.journal.locks, &self.entries).await;
        if settled.is_ok() {
            let _ = fs::remove_file(&self.path);
        }
        settled
    }
}

impl Drop for EnvIntent {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let intent = EnvIntent {
            path: std::mem::take(&mut self.path),
            entries: std::mem::take(&mut self.entries),
            journal: std::sync::Arc::clone(&self.journal),
            db: self.db.clone(),
            armed: false,
        };
        runtime.spawn(async move {
            // A shutdown that does not wait for this leaves the intent to the next start.
            intent.journal.critical_sections_done().await;
            if let Err(e) = intent.settle().await {
                tracing::error!("cannot settle the environments of an abandoned install: {e}");
            }
        });
    }
}

/// Settles the environment switches of `entries` against the rows: under the pack's
/// write lock, a row holding the entry's checksum means the registration committed
/// (the new builds stay), anything else that it did not (the previous builds come
/// back). Every entry is tried; the first error is returned after all were.
async fn settle_env_entries(
    db: &Db,
    locks: &PackLocks,
    entries: &[EnvSwitchEntry],
) -> Result<Vec<(String, EnvSettled)>, JournalError> {
    let mut settled = Vec::with_capacity(entries.len());
    let mut first_error = None;
    for entry in entries {
        let mut locked = db.begin_packs_write(&[entry.pack_ref.as_str()]).await?;
        let committed = locked.recorded_checksum(&entry.pack_ref).await?.as_deref()
            == Some(entry.checksum.as_str());
        let outcome = crate::envs::settle_switch(
            locks,
            &entry.envs_root,
            &entry.pack_ref,
            &entry.previous,
            entry.switched_to.as_ref(),
            committed,
        )
        .await;
        locked.rollback().await;
        match outcome {
            Ok(()) => settled.push((
                entry.pack_ref.clone(),
                if committed {
                    EnvSettled::Kept
                } else {
                    EnvSettled::Restored
                },
            )),
            Err(e) => {
                first_error.get_or_insert(JournalError::Environments {
                    pack_ref: entry.pack_ref.clone(),
                    source: Box::new(e),
                });
            }
        }
    }
    first_error.map_or(Ok(settled), Err)
}

/// What start-up recovery did, for the log and the tests.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Recovered {
    /// Packs whose interrupted swap was committed and is now finished.
    pub finished: Vec<String>,
    /// Packs whose interrupted swap was not committed and is now undone.
    pub undone: Vec<String>,
    /// Work directories of dead processes removed.
    pub removed: Vec<PathBuf>,
    /// Download backups put back because their pack's directory was missing.
    pub restored: Vec<PathBuf>,
    /// Registration backups without an intent, settled against the rows.
    pub settled_backups: Vec<PathBuf>,
    /// Process groups a dead server left running, killed.
    pub killed_groups: usize,
    /// Packs whose interrupted environment switch was kept (the registration committed).
    pub envs_kept: Vec<String>,
    /// Packs whose interrupted environment switch was undone.
    pub envs_restored: Vec<String>,
    /// Packs whose interrupted removal had committed and is now finished.
    pub removals_finished: Vec<String>,
    /// Packs whose interrupted removal had not committed and is now undone.
    pub removals_undone: Vec<String>,
    /// What could not be settled (left in place, logged).
    pub problems: Vec<String>,
}

/// Kills the process groups that dead servers recorded in `dir` and left running
/// (a build or a pack test outliving its `kill -9`'d server), then forgets them. A
/// group is killed only while its leader is the very process recorded (same pid,
/// same start time): a pid reused since is someone else's. Returns how many were
/// killed.
pub fn kill_orphaned_groups(dir: &Path) -> usize {
    let Ok(entries) = fs::read_dir(dir) else {
        return 0;
    };
    let mut killed = 0;
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let mut parts = name.split('.');
        let (Some(owner), Some(pgid), Some(start), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            let _ = fs::remove_file(entry.path());
            continue;
        };
        if owner_alive(owner) {
            continue;
        }
        if let (Ok(pgid), Ok(start)) = (pgid.parse::<u32>(), start.parse::<u64>())
            && pgid > 1
            && process_start(pgid) == Some(start)
            && let Ok(pgid) = i32::try_from(pgid)
        {
            // SAFETY: `killpg` takes plain integers and has no memory-safety preconditions.
            if unsafe { libc::killpg(pgid, libc::SIGKILL) } == 0 {
                killed += 1;
            }
        }
        let _ = fs::remove_file(entry.path());
    }
    killed
}

/// Finishes or undoes every interrupted swap, then removes leftover work directories
/// of dead processes in `dirs` (the default packs base dir and the data dir), in every
/// directory recorded by [`Journal::remember_dir`] and beside every registered pack.
/// Runs before the server serves.
pub async fn recover(
    journal: &Journal,
    db: &Db,
    dirs: &[PathBuf],
) -> Result<Recovered, JournalError> {
    let mut recovered = Recovered::default();
    let started = std::time::Instant::now();
    // First: nothing a dead server started may go on writing into what is settled.
    recovered.killed_groups = kill_orphaned_groups(&journal.groups_dir());
    if recovered.killed_groups > 0 {
        tracing::warn!(
            count = recovered.killed_groups,
            "killed process groups left running by stopped servers"
        );
    }
    let read_error = |source| JournalError::Read {
        dir: journal.dir.clone(),
        source,
    };
    let mut intents = Vec::new();
    let mut env_intents = Vec::new();
    let mut removal_intents = Vec::new();
    match fs::read_dir(&journal.dir) {
        Ok(entries) => {
            for entry in entries {
                let entry = entry.map_err(read_error)?;
                let name = entry.file_name().to_string_lossy().into_owned();
                if name.starts_with(INTENT_PREFIX) {
                    intents.push(entry.path());
                } else if name.starts_with(ENV_INTENT_PREFIX) {
                    env_intents.push(entry.path());
                } else if name.starts_with(REMOVAL_INTENT_PREFIX) {
                    removal_intents.push(entry.path());
                }
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(read_error(e)),
    }
    intents.sort();
    for path in intents {
        let Ok(text) = fs::read(&path) else { continue };
        let Ok(intent) = serde_json::from_slice::<IntentFile>(&text) else {
            // Torn: written before any rename, so it describes nothing that happened.
            tracing::warn!(path = %path.display(), "discarding an unreadable swap intent");
            let _ = fs::remove_file(&path);
            continue;
        };
        if owner_alive(&intent.owner) {
            continue;
        }
        // The packs' write locks: another server sharing the database and the packs
        // directory must not swap them while they are settled.
        let refs: Vec<&str> = intent.entries.iter().map(|e| e.pack_ref.as_str()).collect();
        let mut locked = db.begin_packs_write(&refs).await?;
        let mut settled = true;
        for entry in &intent.entries {
            let committed = locked.recorded_checksum(&entry.pack_ref).await?.as_deref()
                == Some(entry.checksum.as_str());
            let outcome = if committed {
                entry.finish()
            } else {
                entry.undo()
            };
            match outcome {
                Ok(()) if committed => recovered.finished.push(entry.pack_ref.clone()),
                Ok(()) => recovered.undone.push(entry.pack_ref.clone()),
                Err(e) => {
                    settled = false;
                    recovered.problems.push(format!(
                        "cannot {} the interrupted registration of '{}': {e}",
                        if committed { "finish" } else { "undo" },
                        entry.pack_ref
                    ));
                }
            }
        }
        locked.rollback().await;
        if settled {
            let _ = fs::remove_file(&path);
        }
    }

    removal_intents.sort();
    let pending_removals = settle_removal_intents(db, removal_intents, &mut recovered).await?;

    let swaps_settled = started.elapsed();
    env_intents.sort();
    for path in env_intents {
        settle_env_intent(db, &journal.locks, &path, &mut recovered).await?;
    }

    let envs_settled = started.elapsed();
    let mut scan: Vec<PathBuf> = dirs.to_vec();
    for (record, dir) in journal.recorded_dirs() {
        if dir.is_dir() {
            scan.push(dir);
        } else {
            let _ = fs::remove_file(record);
        }
    }
    for storage in db.storage_paths().await? {
        if let Some(parent) = Path::new(&storage).parent() {
            scan.push(parent.to_path_buf());
        }
    }
    // Removals move environments aside inside the environment root.
    let envs_roots: Vec<PathBuf> = scan
        .iter()
        .map(|d| crate::buildenvs::envs_root(d))
        .filter(|d| d.is_dir())
        .collect();
    scan.extend(envs_roots);
    let mut seen = HashSet::new();
    let mut backups = Vec::new();
    for dir in scan {
        if seen.insert(dir.clone()) {
            backups.extend(sweep(&dir, &mut recovered));
        }
    }
    let (removed_asides, backups): (Vec<_>, Vec<_>) =
        backups.into_iter().partition(|(_, _, aside)| {
            aside
                .file_name()
                .and_then(|n| WorkName::parse(&n.to_string_lossy()))
                .is_some_and(|w| w.kind == WorkKind::Removed)
        });
    settle_stale_removals(db, removed_asides, &pending_removals, &mut recovered).await?;
    // Backups without an intent here: left by another server sharing the packs
    // directory, or by a server that kept no journal. The rows decide, under the lock.
    for (target, pack_ref, backup) in backups {
        let mut locked = db.begin_packs_write(&[pack_ref.as_str()]).await?;
        let recorded = locked.recorded_checksum(&pack_ref).await?;
        match settle_stale(&target, std::slice::from_ref(&backup), recorded.as_deref()) {
            Ok(()) => recovered.settled_backups.push(backup),
            Err(e) => recovered.problems.push(format!(
                "cannot settle '{}' against '{}': {e}",
                backup.display(),
                target.display()
            )),
        }
        locked.rollback().await;
    }
    for problem in &recovered.problems {
        tracing::error!("{problem}");
    }
    if recovered != Recovered::default() {
        tracing::info!(
            swaps_ms = swaps_settled.as_millis() as u64,
            envs_ms = (envs_settled - swaps_settled).as_millis() as u64,
            sweep_ms = (started.elapsed() - envs_settled).as_millis() as u64,
            "recovery took"
        );
    }
    if !(recovered.finished.is_empty() && recovered.undone.is_empty()) {
        tracing::warn!(
            finished = ?recovered.finished,
            undone = ?recovered.undone,
            "settled registrations a crash interrupted"
        );
    }
    if !(recovered.removals_finished.is_empty() && recovered.removals_undone.is_empty()) {
        tracing::warn!(
            finished = ?recovered.removals_finished,
            undone = ?recovered.removals_undone,
            "settled removals a crash interrupted"
        );
    }
    if !(recovered.envs_kept.is_empty() && recovered.envs_restored.is_empty()) {
        tracing::warn!(
            kept = ?recovered.envs_kept,
            restored = ?recovered.envs_restored,
            "settled environment switches a crash interrupted"
        );
    }
    if !(recovered.restored.is_empty() && recovered.settled_backups.is_empty()) {
        tracing::warn!(
            restored = ?recovered.restored,
            settled = ?recovered.settled_backups,
            "put back or settled pack directories a crash left aside"
        );
    }
    if !recovered.removed.is_empty() {
        tracing::info!(
            count = recovered.removed.len(),
            "removed work directories left by stopped processes"
        );
    }
    Ok(recovered)
}

/// One environment intent at start: a rewrite a crash interrupted (`.tmp`) is
/// dropped, since the intent it was replacing is still whole; an unreadable intent
/// was torn while first written, before any build, so it describes nothing done.
async fn settle_env_intent(
    db: &Db,
    locks: &PackLocks,
    path: &Path,
    recovered: &mut Recovered,
) -> Result<(), JournalError> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let owner = name.split('.').nth(1).unwrap_or_default();
    if owner_alive(owner) {
        return Ok(());
    }
    if name.ends_with(".tmp") {
        let _ = fs::remove_file(path);
        return Ok(());
    }
    let Ok(text) = fs::read(path) else {
        return Ok(());
    };
    let Ok(intent) = serde_json::from_slice::<EnvIntentFile>(&text) else {
        tracing::warn!(path = %path.display(), "discarding an unreadable environment intent");
        let _ = fs::remove_file(path);
        return Ok(());
    };
    match settle_env_entries(db, locks, &intent.entries).await {
        Ok(settled) => {
            for (pack_ref, how) in settled {
                match how {
                    EnvSettled::Kept => recovered.envs_kept.push(pack_ref),
                    EnvSettled::Restored => recovered.envs_restored.push(pack_ref),
                }
            }
            let _ = fs::remove_file(path);
        }
        Err(JournalError::Store(e)) => return Err(JournalError::Store(e)),
        Err(e) => recovered.problems.push(e.to_string()),
    }
    Ok(())
}

/// Removes the work directories of dead owners in `dir`. A Download backup whose pack
/// directory is missing is the only copy of that pack and is put back instead.
/// Registration backups (`previous`) and removal asides (`removed`) are returned as
/// `(target, ref, backup)`: intents were settled before, so these have none here (or
/// one that could not be settled) and the rows must decide.
fn sweep(dir: &Path, recovered: &mut Recovered) -> Vec<(PathBuf, String, PathBuf)> {
    let mut backups = Vec::new();
    let Ok(entries) = fs::read_dir(dir) else {
        return backups;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(work) = WorkName::parse_any(&name) else {
            continue;
        };
        if owner_alive(&work.owner) {
            continue;
        }
        let path = entry.path();
        if matches!(work.kind, WorkKind::Previous | WorkKind::Removed) {
            if let Some(pack_ref) = work.pack_ref {
                backups.push((dir.join(&pack_ref), pack_ref, path));
            }
            continue;
        }
        if work.kind == WorkKind::Replaced
            && let Some(pack_ref) = &work.pack_ref
        {
            let target = dir.join(pack_ref);
            if !exists(&target) && !is_empty_dir(&path) {
                match fs::rename(&path, &target) {
                    Ok(()) => recovered.restored.push(target),
                    Err(e) => recovered.problems.push(format!(
                        "cannot put '{}' back to '{}': {e}",
                        path.display(),
                        target.display()
                    )),
                }
                continue;
            }
        }
        match remove_all(&path) {
            Ok(()) => recovered.removed.push(path),
            Err(e) => recovered
                .problems
                .push(format!("cannot remove '{}': {e}", path.display())),
        }
    }
    backups
}

/// One pack of an intended removal (RemovePacks). The pack's row id is the commit
/// token: row ids are never reused, so once the removal's transaction committed no row
/// has it and the moved-aside directories are deleted; while a row has it, they go
/// back. Each move is a rename inside one directory (the pack's beside the pack, its
/// environments' inside the environment root), so nothing is copied and a crash
/// leaves every directory whole, at its place or aside.
///
/// | state | target, envs | asides |
/// |---|---|---|
/// | R0, before | present (or never existed) | absent |
/// | R1, aside | absent | present |
/// | R2, committed and finished | absent (or a pack registered since) | absent |
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemovalEntry {
    pub pack_ref: String,
    /// The id of the row the removal deletes: the commit token.
    pub pack_id: i64,
    /// The pack's directory (`storage_path`).
    pub target: PathBuf,
    pub target_aside: PathBuf,
    /// `<envs_root>/<ref>`: every environment build of the pack.
    pub envs: PathBuf,
    pub envs_aside: PathBuf,
    /// Directories of the pack's versions kept for rollback, deleted after the commit
    /// (their rows go with the pack's).
    #[serde(default)]
    pub kept: Vec<PathBuf>,
}

impl RemovalEntry {
    /// A removal of `target` and `envs`, with fresh names for the places they move to.
    pub fn new(
        pack_ref: &str,
        pack_id: i64,
        target: &Path,
        envs: &Path,
        kept: Vec<PathBuf>,
    ) -> Self {
        let beside = |p: &Path| {
            work_path(
                p.parent().unwrap_or(Path::new("/")),
                WorkKind::Removed,
                Some(pack_ref),
            )
        };
        RemovalEntry {
            pack_ref: pack_ref.to_string(),
            pack_id,
            target: target.to_path_buf(),
            target_aside: beside(target),
            envs: envs.to_path_buf(),
            envs_aside: beside(envs),
            kept,
        }
    }

    fn pairs(&self) -> [(&Path, &Path); 2] {
        [
            (&self.target, &self.target_aside),
            (&self.envs, &self.envs_aside),
        ]
    }

    /// R0 → R1: the pack's directory and its environments aside (what does not exist
    /// is skipped). On failure the caller undoes every entry.
    #[tracing::instrument(skip(self), fields(pack = %self.pack_ref))]
    pub fn move_aside(&self) -> Result<(), JournalError> {
        for (from, aside) in self.pairs() {
            if exists(from) && !exists(aside) {
                fs::rename(from, aside).map_err(|source| JournalError::MoveAside {
                    target: from.to_path_buf(),
                    source,
                })?;
            }
            crate::fault::pause("remove: moved aside");
        }
        Ok(())
    }

    /// Back to R0 from any state before the commit.
    #[tracing::instrument(skip(self), fields(pack = %self.pack_ref))]
    pub fn undo(&self) -> std::io::Result<()> {
        for (from, aside) in self.pairs() {
            if !exists(aside) {
                continue;
            }
            if exists(from) {
                return Err(std::io::Error::other(format!(
                    "'{}' and '{}' both exist; leaving them for an operator",
                    from.display(),
                    aside.display()
                )));
            }
            fs::rename(aside, from)?;
        }
        Ok(())
    }

    /// R1 → R2, after the commit: the moved-aside directories are deleted. The target
    /// is never touched: a pack registered since the commit may be there.
    #[tracing::instrument(skip(self), fields(pack = %self.pack_ref))]
    pub fn finish(&self) -> std::io::Result<()> {
        for (_, aside) in self.pairs() {
            remove_all(aside)?;
        }
        Ok(())
    }
}

/// Deletes the kept-version directories of a committed removal that no
/// `pack_versions` row names any more (a version kept again since, by a pack
/// registered under the same ref, keeps its files). Returns what could not be deleted.
pub async fn remove_unused_kept(db: &Db, entry: &RemovalEntry) -> Result<Vec<String>, StoreError> {
    let mut problems = Vec::new();
    for kept in &entry.kept {
        // Only a directory below some other one: never `/` or a relative path.
        if !kept.is_absolute() || kept.parent().is_none_or(|p| p == Path::new("/")) {
            problems.push(format!(
                "not deleting '{}', recorded as a kept version of '{}': not a kept-version directory",
                kept.display(),
                entry.pack_ref
            ));
            continue;
        }
        if db.kept_files_in_use(&kept.to_string_lossy()).await? {
            continue;
        }
        if let Err(e) = remove_all(kept) {
            problems.push(format!(
                "cannot delete the kept version '{}' of removed pack '{}': {e}",
                kept.display(),
                entry.pack_ref
            ));
        }
    }
    Ok(problems)
}

#[derive(Debug, Serialize, Deserialize)]
struct RemovalIntentFile {
    format: u32,
    owner: String,
    entries: Vec<RemovalEntry>,
}

/// A written removal intent; [`RemovalIntent::complete`] removes it once every entry
/// was finished or undone. Dropped without that, it stays for recovery.
#[derive(Debug)]
pub struct RemovalIntent {
    path: PathBuf,
    entries: Vec<RemovalEntry>,
}

impl RemovalIntent {
    pub fn entries(&self) -> &[RemovalEntry] {
        &self.entries
    }

    pub fn complete(self) {
        let _ = fs::remove_file(&self.path);
    }
}

impl Journal {
    /// Writes the intent of a removal (fsync'd) before anything moves: a torn intent
    /// describes nothing done and recovery discards it.
    pub fn begin_removal(&self, entries: Vec<RemovalEntry>) -> Result<RemovalIntent, JournalError> {
        let path = self.write_new_intent(
            REMOVAL_INTENT_PREFIX,
            &RemovalIntentFile {
                format: INTENT_FORMAT,
                owner: owner_marker().to_string(),
                entries: entries.clone(),
            },
        )?;
        Ok(RemovalIntent { path, entries })
    }
}

/// Settles the removal intents of dead owners: under the packs' write locks, an entry
/// whose row is gone committed (its asides and unused kept versions are deleted),
/// any other is undone (its directories go back). Returns the asides of intents left
/// unsettled (or still running), which the sweep must not touch.
async fn settle_removal_intents(
    db: &Db,
    paths: Vec<PathBuf>,
    recovered: &mut Recovered,
) -> Result<HashSet<PathBuf>, JournalError> {
    let mut pending = HashSet::new();
    let protect = |pending: &mut HashSet<PathBuf>, entries: &[RemovalEntry]| {
        for e in entries {
            pending.insert(e.target_aside.clone());
            pending.insert(e.envs_aside.clone());
        }
    };
    for path in paths {
        let Ok(text) = fs::read(&path) else { continue };
        let Ok(intent) = serde_json::from_slice::<RemovalIntentFile>(&text) else {
            tracing::warn!(path = %path.display(), "discarding an unreadable removal intent");
            let _ = fs::remove_file(&path);
            continue;
        };
        if owner_alive(&intent.owner) {
            protect(&mut pending, &intent.entries);
            continue;
        }
        let refs: Vec<&str> = intent.entries.iter().map(|e| e.pack_ref.as_str()).collect();
        let mut locked = db.begin_packs_write(&refs).await?;
        let mut settled = true;
        let mut committed_entries = Vec::new();
        for entry in &intent.entries {
            let committed = !locked.pack_id_exists(entry.pack_id).await?;
            let outcome = if committed {
                entry.finish()
            } else {
                entry.undo()
            };
            match outcome {
                Ok(()) if committed => {
                    recovered.removals_finished.push(entry.pack_ref.clone());
                    committed_entries.push(entry);
                }
                Ok(()) => recovered.removals_undone.push(entry.pack_ref.clone()),
                Err(e) => {
                    settled = false;
                    recovered.problems.push(format!(
                        "cannot {} the interrupted removal of '{}': {e}",
                        if committed { "finish" } else { "undo" },
                        entry.pack_ref
                    ));
                }
            }
        }
        locked.rollback().await;
        for entry in committed_entries {
            recovered
                .problems
                .extend(remove_unused_kept(db, entry).await?);
        }
        if settled {
            let _ = fs::remove_file(&path);
        } else {
            protect(&mut pending, &intent.entries);
        }
    }
    Ok(pending)
}

/// Removal asides a dead process left without an intent here (another server sharing
/// the packs directory crashed): under the pack's write lock, no row for the ref means
/// the removal committed and the aside is deleted; a row whose directory is missing
/// means it did not, and the aside goes back; anything else is left for an operator.
async fn settle_stale_removals(
    db: &Db,
    asides: Vec<(PathBuf, String, PathBuf)>,
    pending: &HashSet<PathBuf>,
    recovered: &mut Recovered,
) -> Result<(), JournalError> {
    for (target, pack_ref, aside) in asides {
        if pending.contains(&aside) {
            continue;
        }
        let is_envs = aside
            .parent()
            .and_then(Path::file_name)
            .is_some_and(|n| n == ".envs");
        let mut locked = db.begin_packs_write(&[pack_ref.as_str()]).await?;
        let storage = locked.pack_storage_path(&pack_ref).await?;
        let outcome = match storage {
            None => remove_all(&aside).map(|()| recovered.removed.push(aside.clone())),
            Some(storage) if !exists(&target) && (is_envs || Path::new(&storage) == target) => {
                fs::rename(&aside, &target).map(|()| recovered.restored.push(target.clone()))
            }
            Some(_) => Err(std::io::Error::other(
                "the pack is registered and its place is taken; leaving it for an operator",
            )),
        };
        locked.rollback().await;
        if let Err(e) = outcome {
            recovered.problems.push(format!(
                "cannot settle the removed '{}' of '{pack_ref}': {e}",
                aside.display()
            ));
        }
    }
    Ok(())
}

/// Held while a critical section (swap + commit) runs; see [`Journal::enter_critical`].
pub struct CriticalSection {
    journal: std::sync::Arc<Journal>,
}

impl Drop for CriticalSection {
    fn drop(&mut self) {
        if self.journal.critical.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.journal.critical_done.notify_waiters();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pack(dir: &Path, version: &str) {
        fs::create_dir_all(dir).unwrap();
        fs::write(dir.join("pack.yaml"), format!("version: {version}\n")).unwrap();
    }

    fn version(dir: &Path) -> Option<String> {
        fs::read_to_string(dir.join("pack.yaml")).ok()
    }

    fn entry(base: &Path) -> SwapEntry {
        let staged = work_path(base, WorkKind::Staged, Some("demo"));
        SwapEntry::new("demo", &base.join("demo"), &staged, "sha256:x")
    }

    #[test]
    fn names_round_trip_and_carry_this_process() {
        let path = work_path(Path::new("/x"), WorkKind::Staged, Some("my_pack-2"));
        let name = path.file_name().unwrap().to_str().unwrap();
        let parsed = WorkName::parse(name).unwrap();
        assert_eq!(parsed.kind, WorkKind::Staged);
        assert_eq!(parsed.pack_ref.as_deref(), Some("my_pack-2"));
        assert!(owner_alive(&parsed.owner));
        assert!(WorkName::parse(".demo.previous-abc").is_none());
        assert!(WorkName::parse(".attune-unknown.a.b").is_none());
    }

    #[test]
    fn dead_and_malformed_owners_are_not_alive() {
        assert!(!owner_alive("garbage"));
        let pid = std::process::id();
        // This pid, but another start time: a reused pid is not the owner.
        assert!(!owner_alive(&format!("{}-{pid}-1", boot_id())));
        // Another boot.
        assert!(!owner_alive(&format!(
            "zzzzzzzz-{pid}-{}",
            process_start(pid).unwrap()
        )));
    }

    /// Every state the swap can stop in, undone and finished, twice (idempotence).
    #[test]
    fn every_intermediate_state_recovers_both_ways() {
        for had_old in [true, false] {
            for stop_after in 0..3 {
                for commit in [true, false] {
                    let base = tempfile::tempdir().unwrap();
                    let e = entry(base.path());
                    if had_old {
                        pack(&e.target, "1");
                    }
                    pack(&e.staged, "2");
                    if stop_after >= 1 {
                        if had_old {
                            fs::rename(&e.target, &e.previous).unwrap();
                        } else {
                            fs::create_dir(&e.previous).unwrap();
                        }
                    }
                    if stop_after >= 2 {
                        fs::rename(&e.staged, &e.target).unwrap();
                    }
                    for _ in 0..2 {
                        if commit {
                            e.finish().unwrap();
                        } else {
                            e.undo().unwrap();
                        }
                    }
                    let expected = match (commit, had_old) {
                        (true, _) => Some("version: 2\n".to_string()),
                        (false, true) => Some("version: 1\n".to_string()),
                        (false, false) => None,
                    };
                    assert_eq!(
                        version(&e.target),
                        expected,
                        "old {had_old} stop {stop_after} commit {commit}"
                    );
                    let left: Vec<_> = fs::read_dir(base.path())
                        .unwrap()
                        .flatten()
                        .map(|d| d.file_name())
                        .filter(|n| n != "demo")
                        .collect();
                    assert!(left.is_empty(), "{left:?}");
                }
            }
        }
    }

    /// Every state a removal can stop in (nothing moved, the pack aside, both aside),
    /// undone and finished, twice (idempotence); a pack without environments too.
    #[test]
    fn every_removal_state_recovers_both_ways() {
        for with_envs in [true, false] {
            for moved in 0..3 {
                for commit in [true, false] {
                    let base = tempfile::tempdir().unwrap();
                    let target = base.path().join("demo");
                    let envs = base.path().join(".envs").join("demo");
                    pack(&target, "1");
                    fs::create_dir_all(base.path().join(".envs")).unwrap();
                    if with_envs {
                        pack(&envs, "env");
                    }
                    let e = RemovalEntry::new("demo", 7, &target, &envs, Vec::new());
                    if moved >= 1 {
                        fs::rename(&target, &e.target_aside).unwrap();
                    }
                    if moved >= 2 && with_envs {
                        fs::rename(&envs, &e.envs_aside).unwrap();
                    }
                    for _ in 0..2 {
                        if commit {
                            // A commit follows every move.
                            e.move_aside().unwrap();
                            e.finish().unwrap();
                        } else {
                            e.undo().unwrap();
                        }
                    }
                    let context = format!("envs {with_envs} moved {moved} commit {commit}");
                    if commit {
                        assert!(!target.exists() && !envs.exists(), "{context}");
                    } else {
                        assert_eq!(
                            version(&target).as_deref(),
                            Some("version: 1\n"),
                            "{context}"
                        );
                        assert_eq!(envs.exists(), with_envs, "{context}");
                    }
                    for dir in [base.path(), &base.path().join(".envs")] {
                        let left: Vec<_> = fs::read_dir(dir)
                            .unwrap()
                            .flatten()
                            .map(|d| d.file_name().to_string_lossy().into_owned())
                            .filter(|n| n.starts_with(".attune"))
                            .collect();
                        assert!(left.is_empty(), "{context}: {left:?}");
                    }
                }
            }
        }
    }

    /// A swap that keeps the old files (`keep`) and one that restores a kept copy
    /// (`restores_kept`), stopped in every state: finishing leaves the old files at
    /// `keep`, undoing leaves the kept copy where it was; twice each.
    #[test]
    fn kept_versions_survive_every_intermediate_state_both_ways() {
        for restores_kept in [false, true] {
            for stop_after in 0..3 {
                for commit in [true, false] {
                    let base = tempfile::tempdir().unwrap();
                    let mut e = entry(base.path());
                    let keep = base.path().join(".history/demo/v.1");
                    e = e.keeping(Some(keep.clone()));
                    if restores_kept {
                        e.staged = base.path().join(".history/demo/v.0");
                        e.restores_kept = true;
                    }
                    pack(&e.target, "1");
                    pack(&e.staged, "2");
                    if stop_after >= 1 {
                        fs::rename(&e.target, &e.previous).unwrap();
                    }
                    if stop_after >= 2 {
                        fs::rename(&e.staged, &e.target).unwrap();
                    }
                    for _ in 0..2 {
                        if commit {
                            e.finish().unwrap();
                        } else {
                            e.undo().unwrap();
                        }
                    }
                    let context =
                        format!("restore {restores_kept} stop {stop_after} commit {commit}");
                    let (current, kept) = if commit { ("2", "1") } else { ("1", "2") };
                    assert_eq!(
                        version(&e.target),
                        Some(format!("version: {current}\n")),
                        "{context}"
                    );
                    let kept_at = if commit { &keep } else { &e.staged };
                    let expected_kept = if commit || restores_kept {
                        Some(format!("version: {kept}\n"))
                    } else {
                        None
                    };
                    assert_eq!(version(kept_at), expected_kept, "{context}");
                    assert!(!e.previous.exists(), "{context}");
                    if !commit {
                        assert!(!keep.exists(), "{context}");
                    }
                }
            }
        }
    }

    /// A backup without an intent: the target's checksum against the row decides.
    #[test]
    fn stale_backups_are_settled_by_the_recorded_checksum() {
        let checksum = |dir: &Path| {
            crate::checksum::checksum_prefixed(&crate::checksum::directory_checksum(dir).unwrap())
        };
        for committed in [true, false] {
            let base = tempfile::tempdir().unwrap();
            let target = base.path().join("demo");
            let dead = format!("{}-999999999-1", boot_id());
            let backup = base.path().join(format!(".attune-previous.{dead}.aa.demo"));
            pack(&target, "2");
            pack(&backup, "1");
            let recorded = if committed {
                checksum(&target)
            } else {
                checksum(&backup)
            };
            let stale = stale_backups(&target, "demo");
            assert_eq!(stale, vec![backup.clone()]);
            settle_stale(&target, &stale, Some(&recorded)).unwrap();
            assert_eq!(checksum(&target), recorded);
            assert!(!backup.exists());
            let left = fs::read_dir(base.path()).unwrap().count();
            assert_eq!(left, 1, "committed {committed}");
        }
    }

    /// A group recorded by a dead owner is killed while its leader is the recorded
    /// process; a record whose start time does not match (a reused pid) kills nothing.
    #[test]
    fn orphaned_groups_of_dead_servers_are_killed_and_reused_pids_spared() {
        use std::os::unix::process::CommandExt;
        let dir = tempfile::tempdir().unwrap();
        let dead = format!("{}-999999999-1", boot_id());
        let spawn = || {
            std::process::Command::new("sleep")
                .arg("100")
                .process_group(0)
                .spawn()
                .unwrap()
        };
        let (mut orphan, mut other) = (spawn(), spawn());
        let start = process_start(orphan.id()).unwrap();
        fs::write(
            dir.path().join(format!("{dead}.{}.{start}", orphan.id())),
            "",
        )
        .unwrap();
        let wrong = process_start(other.id()).unwrap() + 1;
        fs::write(
            dir.path().join(format!("{dead}.{}.{wrong}", other.id())),
            "",
        )
        .unwrap();
        // A live owner's group is not touched either.
        let live = format!("{}.{}.{}", owner_marker(), other.id(), wrong - 1);
        fs::write(dir.path().join(&live), "").unwrap();

        assert_eq!(kill_orphaned_groups(dir.path()), 1);
        let status = orphan.wait().unwrap();
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&status),
            Some(libc::SIGKILL)
        );
        assert!(
            other.try_wait().unwrap().is_none(),
            "an unrelated group was killed"
        );
        let left: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(left, vec![live]);
        other.kill().unwrap();
        other.wait().unwrap();
    }

    #[test]
    fn a_torn_intent_is_unreadable_and_a_whole_one_round_trips() {
        let data = tempfile::tempdir().unwrap();
        let journal = Journal::new(data.path(), PackLocks::default());
        let e = entry(data.path());
        let intent = journal.begin(vec![e.clone()]).unwrap();
        let text = fs::read(&intent.path).unwrap();
        let whole: IntentFile = serde_json::from_slice(&text).unwrap();
        assert_eq!(whole.entries, vec![e]);
        assert!(serde_json::from_slice::<IntentFile>(&text[..text.len() - 1]).is_err());
        let mut zeroed = text.clone();
        zeroed.extend([0u8; 16]);
        assert!(serde_json::from_slice::<IntentFile>(&zeroed).is_err());
        let path = intent.path.clone();
        intent.complete();
        assert!(!path.exists());
    }

    #[test]
    fn sweep_removes_dead_work_dirs_and_puts_orphaned_download_backups_back() {
        let base = tempfile::tempdir().unwrap();
        let dead = format!("{}-999999999-1", boot_id());
        let staging = base.path().join(format!(".attune-staging.{dead}.aa"));
        let backup = base.path().join(format!(".attune-replaced.{dead}.bb.lost"));
        let stale_backup = base.path().join(format!(".attune-previous.{dead}.cc.kept"));
        let mine = work_path(base.path(), WorkKind::Staged, Some("live"));
        let unrelated = base.path().join(".hidden");
        for d in [&staging, &mine, &unrelated] {
            fs::create_dir_all(d).unwrap();
        }
        pack(&backup, "1");
        pack(&stale_backup, "1");
        pack(&base.path().join("kept"), "2");
        let legacy_staging = base.path().join(".attune-staging-0123456789ab");
        let legacy_backup = base.path().join(".kept.previous-0123456789ab");
        fs::create_dir_all(&legacy_staging).unwrap();
        pack(&legacy_backup, "0");
        let mut recovered = Recovered::default();
        let mut backups = sweep(base.path(), &mut recovered);
        backups.sort();
        assert!(!staging.exists() && !legacy_staging.exists());
        // Registration backups are left for the rows to decide.
        let kept = base.path().join("kept");
        assert_eq!(
            backups,
            vec![
                (kept.clone(), "kept".to_string(), stale_backup.clone()),
                (kept.clone(), "kept".to_string(), legacy_backup.clone()),
            ]
        );
        assert!(stale_backup.exists() && legacy_backup.exists());
        assert!(mine.exists() && unrelated.exists());
        assert_eq!(
            version(&base.path().join("lost")).as_deref(),
            Some("version: 1\n")
        );
        assert_eq!(
            version(&base.path().join("kept")).as_deref(),
            Some("version: 2\n")
        );
        assert!(recovered.problems.is_empty(), "{:?}", recovered.problems);
    }
}
