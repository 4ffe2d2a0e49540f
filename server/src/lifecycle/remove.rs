//! The RemovePacks stage: takes installed packs out — their directories, their rows
//! (components and test results cascade), their environments and the versions kept
//! for their rollback — all of the set or none of it.
//!
//! A pack another installed pack depends on is refused, naming the dependents, unless
//! the request cascades (the dependents are removed too, before what they depend on)
//! or forces (they stay, with a missing dependency). A dry run answers what would go.
//!
//! Crash consistency follows registration's swap (see `journal`): under the packs'
//! locks, a removal intent is written, every directory is renamed aside, and one
//! transaction deletes the rows and records history and `pack.deleted` events. Only
//! after the commit are the asides deleted; any failure renames them back. The rows
//! are the commit token: at the next start, an intent whose pack rows are gone is
//! finished, any other undone.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque},
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use tracing::instrument;

use crate::{
    dependency::{self, Cycle, Graph},
    events::PackEvent,
    failure::{Failure, FailureKind},
    journal::{self, CriticalSection, Journal, JournalError, RemovalEntry, RemovalIntent},
    locks::{DirGuard, LockError, PackLocks},
    manifest::{MAX_PACK_REF_LEN, is_valid_pack_ref},
    progress::{Reporter, Stage},
    store::{
        Db, RegisteredPackRow, StoreError,
        history::{HistoryAction, HistoryRow, HistoryVersion},
        packs::PackWrite,
        remove::{KeptFiles, RemovableRow},
    },
};

/// Refs one request may name.
pub const MAX_REFS: usize = 1000;
/// How long a removal waits for an environment build of one of its packs to end.
const ENV_LOCK_WAIT: Duration = Duration::from_secs(10);
/// Plans made again when the installed packs changed between planning and locking.
const ATTEMPTS: usize = 3;
/// Characters of a refused ref shown in an error.
const SHOWN_CHARS: usize = 80;

#[derive(Debug, Clone, Default)]
pub struct RemoveRequest {
    pub refs: Vec<String>,
    /// Remove the installed packs that depend on these too, dependents first.
    pub cascade: bool,
    /// Remove even though installed packs depend on these (they stay).
    pub force: bool,
    /// Only report what would be removed.
    pub dry_run: bool,
    /// Who asked (the token's subject), recorded in the history.
    pub requested_by: Option<String>,
}

/// A pack the removal took out (or, for a dry run, would take out).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemovedPack {
    pub pack_ref: String,
    pub pack_id: i64,
    pub version: String,
    pub storage_path: PathBuf,
    /// Removed because it depends on a requested pack (cascade).
    pub dependent: bool,
    /// The pack's environment links (`<envs_root>/<ref>/python`, …); the whole
    /// `<envs_root>/<ref>` directory goes, older builds included.
    pub environments: Vec<PathBuf>,
    /// Versions kept for rollback, which go with it.
    pub kept_versions: Vec<String>,
    /// Installed packs that depend on it and stay (force).
    pub left_dependents: Vec<String>,
}

/// Why the request removed nothing; one per ref concerned.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    #[error("pack '{pack_ref}' is not installed")]
    NotInstalled { pack_ref: String },
    #[error(
        "pack '{pack_ref}' is required by installed {} {}: remove {} too, or pass \
         cascade (CLI --cascade) to remove {} along, or force (CLI --force) to leave {} \
         without '{pack_ref}'",
        crate::progress::noun(dependents.len(), "pack", "packs"),
        dependents.join(", "),
        crate::progress::noun(dependents.len(), "it", "them"),
        crate::progress::noun(dependents.len(), "it", "them"),
        crate::progress::noun(dependents.len(), "it", "them"),
    )]
    HasDependents {
        pack_ref: String,
        dependents: Vec<String>,
    },
    #[error("nothing was removed: {source}")]
    Failed {
        pack_ref: String,
        #[source]
        source: RemovalFailure,
    },
}

impl Refusal {
    pub fn pack_ref(&self) -> &str {
        match self {
            Refusal::NotInstalled { pack_ref }
            | Refusal::HasDependents { pack_ref, .. }
            | Refusal::Failed { pack_ref, .. } => pack_ref,
        }
    }

    /// Installed packs that depend on the ref, when that is the reason.
    pub fn dependents(&self) -> &[String] {
        match self {
            Refusal::HasDependents { dependents, .. } => dependents,
            _ => &[],
        }
    }

    /// A stable, machine-readable name of the reason.
    pub fn reason(&self) -> &'static str {
        match self {
            Refusal::NotInstalled { .. } => "not_installed",
            Refusal::HasDependents { .. } => "has_dependents",
            Refusal::Failed { .. } => "failed",
        }
    }
}

/// Why an accepted removal could not be carried out; everything was put back.
#[derive(Debug, thiserror::Error)]
pub enum RemovalFailure {
    #[error(transparent)]
    Journal(#[from] JournalError),
    #[error(
        "an environment build of '{pack_ref}' holds its environments ({source}); try again \
         when it has ended"
    )]
    EnvironmentsBusy {
        pack_ref: String,
        #[source]
        source: LockError,
    },
    #[error(
        "the recorded storage path '{storage_path}' of '{pack_ref}' is not a directory named \
         after the pack; refusing to delete it"
    )]
    StoragePath {
        pack_ref: String,
        storage_path: String,
    },
    #[error("cannot move '{}' back after a failed removal: {source}", path.display())]
    PutBack {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("database: {0}")]
    Store(#[from] StoreError),
    #[error("the installed packs kept changing while the removal was planned; try again")]
    Unstable,
    #[error("the removal task failed: {0}")]
    Task(#[source] tokio::task::JoinError),
    #[error(
        "the database did not confirm the commit ({0}); the next start of the server \
         finishes or undoes the removal"
    )]
    CommitUnknown(#[source] StoreError),
}

#[derive(Debug, Default)]
pub struct RemoveReport {
    pub dry_run: bool,
    /// In removal order: dependents before what they depend on.
    pub removed: Vec<RemovedPack>,
    /// Nothing was removed when non-empty.
    pub refused: Vec<Refusal>,
}

impl RemoveReport {
    pub fn success(&self) -> bool {
        self.refused.is_empty()
    }
}

/// A malformed request, or a database the stage cannot read.
#[derive(Debug, thiserror::Error)]
pub enum RemoveError {
    #[error("refs is empty: name at least one installed pack to remove")]
    NoRefs,
    #[error("refs has {count} entries; at most {max} per request")]
    TooManyRefs { count: usize, max: usize },
    #[error(
        "refs[{index}]: '{shown}' is not a pack ref (2 to {MAX_PACK_REF_LEN} characters: \
         lowercase letters, digits, '_' and '-', starting with a letter)"
    )]
    InvalidRef { index: usize, shown: String },
    #[error("cannot read the installed packs: {0}")]
    Store(#[from] StoreError),
}

impl Failure for RemoveError {
    fn kind(&self) -> FailureKind {
        match self {
            RemoveError::NoRefs
            | RemoveError::TooManyRefs { .. }
            | RemoveError::InvalidRef { .. } => FailureKind::InvalidRequest,
            RemoveError::Store(_) => FailureKind::Internal,
        }
    }
}

/// The refs of `refs`, checked, each once, in the order given.
pub fn checked_refs(refs: &[String]) -> Result<Vec<String>, RemoveError> {
    if refs.is_empty() {
        return Err(RemoveError::NoRefs);
    }
    if refs.len() > MAX_REFS {
        return Err(RemoveError::TooManyRefs {
            count: refs.len(),
            max: MAX_REFS,
        });
    }
    let mut seen = HashSet::new();
    let mut out = Vec::with_capacity(refs.len());
    for (index, given) in refs.iter().enumerate() {
        if !is_valid_pack_ref(given) {
            return Err(RemoveError::InvalidRef {
                index,
                shown: shown(given),
            });
        }
        if seen.insert(given.as_str()) {
            out.push(given.clone());
        }
    }
    Ok(out)
}

fn shown(given: &str) -> String {
    let mut chars = given.chars();
    let mut shown: String = chars
        .by_ref()
        .take(SHOWN_CHARS)
        .map(|c| if c.is_control() { '?' } else { c })
        .collect();
    if chars.next().is_some() {
        shown.push('…');
    }
    shown
}

/// A pack of the set being removed.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Member {
    pack_ref: String,
    dependent: bool,
    left_dependents: Vec<String>,
}

/// The set `refs` (plus, with `cascade`, every installed pack depending on them,
/// directly or not) in removal order, or why it cannot be removed. A dependency
/// cycle among the set does not block it: the cycle is removed as one, in ref order.
fn plan(
    installed: &[RegisteredPackRow],
    refs: &[String],
    cascade: bool,
    force: bool,
) -> Result<(Vec<Member>, Option<Cycle>), Vec<Refusal>> {
    let known: HashSet<&str> = installed.iter().map(|p| p.pack_ref.as_str()).collect();
    // Who depends on whom, read once (the same rule as `dependency::direct_dependents`):
    // a ref → the installed packs declaring a dependency on it, in ref order.
    let mut dependents: HashMap<&str, BTreeSet<&str>> = HashMap::new();
    let mut depends_on: HashMap<&str, Vec<String>> = HashMap::new();
    for pack in installed {
        let deps: Vec<String> = dependency::recorded(&pack.dependencies)
            .map(|d| d.pack_ref)
            .collect();
        for dep in &deps {
            if let Some(dep) = known.get(dep.as_str())
                && *dep != pack.pack_ref
            {
                dependents.entry(dep).or_default().insert(&pack.pack_ref);
            }
        }
        depends_on.insert(&pack.pack_ref, deps);
    }
    let mut refused: Vec<Refusal> = refs
        .iter()
        .filter(|r| !known.contains(r.as_str()))
        .map(|r| Refusal::NotInstalled {
            pack_ref: r.clone(),
        })
        .collect();
    let requested: Vec<&str> = refs
        .iter()
        .map(String::as_str)
        .filter(|r| known.contains(r))
        .collect();
    let mut set: BTreeMap<&str, bool> = requested.iter().map(|r| (*r, false)).collect();
    if cascade {
        let mut queue: VecDeque<&str> = requested.iter().copied().collect();
        while let Some(pack) = queue.pop_front() {
            for user in dependents.get(pack).into_iter().flatten() {
                if !set.contains_key(user) {
                    set.insert(user, true);
                    queue.push_back(user);
                }
            }
        }
    }
    let mut left: HashMap<&str, Vec<String>> = HashMap::new();
    for pack in &requested {
        let outside: Vec<String> = dependents
            .get(pack)
            .into_iter()
            .flatten()
            .filter(|d| !set.contains_key(*d))
            .map(|d| d.to_string())
            .collect();
        if outside.is_empty() {
            continue;
        }
        if force {
            left.insert(pack, outside);
        } else {
            refused.push(Refusal::HasDependents {
                pack_ref: pack.to_string(),
                dependents: outside,
            });
        }
    }
    if !refused.is_empty() {
        return Err(refused);
    }

    let within: BTreeMap<&str, Vec<&str>> = set
        .keys()
        .map(|pack| {
            let deps = depends_on
                .get(pack)
                .into_iter()
                .flatten()
                .map(String::as_str)
                .filter(|d| set.contains_key(d))
                .collect();
            (*pack, deps)
        })
        .collect();
    let graph = Graph::new(&within);
    let (order, cycle) = match graph.dependency_order() {
        Ok(order) => (order, None),
        // Tarjan's components come out dependencies first, each in ref order.
        Err(cycle) => (
            graph.strongly_connected().into_iter().flatten().collect(),
            Some(cycle),
        ),
    };
    let members = order
        .into_iter()
        .rev()
        .map(|index| {
            let pack = graph.pack_ref(index);
            Member {
                pack_ref: pack.to_string(),
                dependent: set[pack],
                left_dependents: left.remove(pack).unwrap_or_default(),
            }
        })
        .collect();
    Ok((members, cycle))
}

/// A member with what the database and the disk hold of it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Planned {
    member: Member,
    row: RemovableRow,
    kept: Vec<KeptFiles>,
    /// `<envs_root>/<ref>`.
    envs: PathBuf,
}

impl Planned {
    fn new(member: Member, row: RemovableRow, kept: Vec<KeptFiles>) -> Self {
        let storage = Path::new(&row.storage_path);
        let base = storage.parent().unwrap_or(Path::new("/"));
        let envs = crate::buildenvs::envs_root(base).join(&row.pack_ref);
        Planned {
            member,
            row,
            kept,
            envs,
        }
    }

    fn target(&self) -> PathBuf {
        PathBuf::from(&self.row.storage_path)
    }

    /// Registration stores a pack at `<base>/<ref>`: anything else in a row is not a
    /// directory this stage may delete.
    fn check_storage_path(&self) -> Result<(), RemovalFailure> {
        let storage = Path::new(&self.row.storage_path);
        let named = storage.is_absolute()
            && storage
                .file_name()
                .is_some_and(|n| n == self.row.pack_ref.as_str())
            && storage.parent().is_some_and(|p| p != Path::new("/"));
        if named {
            Ok(())
        } else {
            Err(RemovalFailure::StoragePath {
                pack_ref: self.row.pack_ref.clone(),
                storage_path: self.row.storage_path.clone(),
            })
        }
    }

    fn removed(&self) -> RemovedPack {
        RemovedPack {
            pack_ref: self.row.pack_ref.clone(),
            pack_id: self.row.pack_id,
            version: self.row.version.clone(),
            storage_path: self.target(),
            dependent: self.member.dependent,
            environments: environment_links(&self.envs),
            kept_versions: self.kept.iter().map(|k| k.version.clone()).collect(),
            left_dependents: self.member.left_dependents.clone(),
        }
    }

    fn history(&self, actor: Option<&String>, outcome: Result<(), String>) -> HistoryRow {
        let succeeded = outcome.is_ok();
        let detail = match outcome {
            Err(e) => Some(e),
            Ok(()) if self.member.dependent => {
                Some("removed with a pack it depends on (cascade)".to_string())
            }
            Ok(()) if !self.member.left_dependents.is_empty() => {
                let n = self.member.left_dependents.len();
                Some(format!(
                    "forced: installed {} {} {} on it",
                    crate::progress::noun(n, "pack", "packs"),
                    self.member.left_dependents.join(", "),
                    crate::progress::noun(n, "depends", "depend"),
                ))
            }
            Ok(()) => None,
        };
        HistoryRow {
            pack_ref: self.row.pack_ref.clone(),
            action: HistoryAction::Remove,
            from: HistoryVersion {
                version: Some(self.row.version.clone()),
                source: self.row.source.clone(),
                checksum: self.row.checksum.clone(),
            },
            to: HistoryVersion::default(),
            actor: actor.cloned(),
            succeeded,
            detail,
        }
    }
}

/// The environment links (`python`, `node`) in `<envs_root>/<ref>`, in name order.
fn environment_links(envs: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(envs) else {
        return Vec::new();
    };
    let mut links: Vec<PathBuf> = entries
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_symlink()))
        .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
        .map(|e| e.path())
        .collect();
    links.sort();
    links
}

/// How the critical section ended when it removed nothing.
enum NotRemoved {
    /// The installed packs changed since the plan: plan again.
    Changed,
    Failed {
        pack_ref: String,
        failure: RemovalFailure,
        /// Whether it is known that nothing changed (a failed history row is written).
        undone: bool,
    },
}

pub struct Remover {
    db: Db,
    journal: Arc<Journal>,
    locks: PackLocks,
}

impl Remover {
    pub fn new(db: Db, journal: Arc<Journal>, locks: PackLocks) -> Self {
        Self { db, journal, locks }
    }

    pub async fn remove(
        &self,
        request: RemoveRequest,
        reporter: &Reporter,
    ) -> Result<RemoveReport, RemoveError> {
        let refs = checked_refs(&request.refs)?;
        let mut report = RemoveReport {
            dry_run: request.dry_run,
            ..Default::default()
        };
        for _ in 0..ATTEMPTS {
            reporter.info(
                Stage::Analyze,
                "reading the installed packs and their dependents",
            );
            let installed = self.db.registered_packs().await?;
            let (members, cycle) = match plan(&installed, &refs, request.cascade, request.force) {
                Ok(planned) => planned,
                Err(refused) => {
                    for refusal in &refused {
                        reporter
                            .with_subject(refusal.pack_ref())
                            .error(Stage::Analyze, refusal.to_string());
                    }
                    report.refused = refused;
                    return Ok(report);
                }
            };
            if let Some(cycle) = cycle {
                reporter.warn(
                    Stage::Analyze,
                    format!(
                        "installed packs depend on each other ({cycle}); they are removed together"
                    ),
                );
            }
            let Some(planned) = self.describe(members).await? else {
                // A pack went away between the two reads.
                continue;
            };
            if request.dry_run {
                for p in &planned {
                    reporter.with_subject(&p.row.pack_ref).info(
                        Stage::Analyze,
                        format!("would remove {} {}", p.row.pack_ref, p.row.version),
                    );
                }
                report.removed = planned.iter().map(Planned::removed).collect();
                return Ok(report);
            }
            for p in &planned {
                if let Err(failure) = p.check_storage_path() {
                    report.refused.push(Refusal::Failed {
                        pack_ref: p.row.pack_ref.clone(),
                        source: failure,
                    });
                    return Ok(report);
                }
            }
            match self
                .commit(planned.clone(), &refs, &request, reporter)
                .await
            {
                Ok(removed) => {
                    report.removed = removed;
                    return Ok(report);
                }
                Err(NotRemoved::Changed) => continue,
                Err(NotRemoved::Failed {
                    pack_ref, failure, ..
                }) => {
                    reporter
                        .with_subject(&pack_ref)
                        .error(Stage::Register, format!("removal failed: {failure}"));
                    report.refused.push(Refusal::Failed {
                        pack_ref,
                        source: failure,
                    });
                    return Ok(report);
                }
            }
        }
        report.refused.push(Refusal::Failed {
            pack_ref: refs[0].clone(),
            source: RemovalFailure::Unstable,
        });
        Ok(report)
    }

    /// The rows and kept versions of `members`; `None` when one is gone.
    async fn describe(&self, members: Vec<Member>) -> Result<Option<Vec<Planned>>, StoreError> {
        let mut planned = Vec::with_capacity(members.len());
        for member in members {
            let Some(row) = self.db.removable(&member.pack_ref).await? else {
                return Ok(None);
            };
            let kept = self.db.kept_files(&member.pack_ref).await?;
            planned.push(Planned::new(member, row, kept));
        }
        Ok(Some(planned))
    }

    /// The critical section, in a task of its own: a caller that leaves (or a server
    /// that shuts down) must not stop it between the renames and the commit.
    async fn commit(
        &self,
        planned: Vec<Planned>,
        refs: &[String],
        request: &RemoveRequest,
        reporter: &Reporter,
    ) -> Result<Vec<RemovedPack>, NotRemoved> {
        let first = planned
            .first()
            .map(|p| p.row.pack_ref.clone())
            .unwrap_or_default();
        let critical = Critical {
            running: self.journal.enter_critical(),
            db: self.db.clone(),
            journal: Arc::clone(&self.journal),
            locks: self.locks.clone(),
            planned,
            refs: refs.to_vec(),
            cascade: request.cascade,
            force: request.force,
            actor: request.requested_by.clone(),
            reporter: reporter.clone(),
        };
        tokio::spawn(critical.run()).await.unwrap_or_else(|e| {
            Err(NotRemoved::Failed {
                pack_ref: first,
                failure: RemovalFailure::Task(e),
                undone: false,
            })
        })
    }
}

fn now_ms() -> i64 {
    crate::auth::unix_now() as i64 * 1000
}

/// Everything the critical section of a removal owns.
struct Critical {
    running: CriticalSection,
    db: Db,
    journal: Arc<Journal>,
    locks: PackLocks,
    planned: Vec<Planned>,
    refs: Vec<String>,
    cascade: bool,
    force: bool,
    actor: Option<String>,
    reporter: Reporter,
}

impl Critical {
    /// The critical section; a failure known to have changed nothing is recorded as a
    /// failed history row per pack (here, so that a departed caller does not skip it).
    #[instrument(name = "remove", skip_all, fields(packs = ?self.refs))]
    async fn run(self) -> Result<Vec<RemovedPack>, NotRemoved> {
        let outcome = self.attempt().await;
        if let Err(NotRemoved::Failed {
            failure,
            undone: true,
            ..
        }) = &outcome
        {
            let now = now_ms();
            for p in &self.planned {
                let row = p.history(self.actor.as_ref(), Err(failure.to_string()));
                if let Err(e) = self.db.append_history(&row, now).await {
                    tracing::error!(pack = %p.row.pack_ref, error = %e, "cannot record a failed removal");
                }
            }
        }
        outcome
    }

    async fn attempt(&self) -> Result<Vec<RemovedPack>, NotRemoved> {
        let _running = &self.running;
        let planned = &self.planned;
        let failed = |pack_ref: &str, failure: RemovalFailure| NotRemoved::Failed {
            pack_ref: pack_ref.to_string(),
            failure,
            undone: true,
        };
        let first = planned
            .first()
            .map(|p| p.row.pack_ref.clone())
            .unwrap_or_default();

        // This process's concurrent registrations and builds of these packs wait;
        // other processes are held off by the database locks and `flock`.
        let targets: Vec<PathBuf> = planned.iter().map(Planned::target).collect();
        let _dirs = self
            .locks
            .lock_all(targets.iter().map(PathBuf::as_path))
            .await;
        let _envs = self.lock_environments().await?;

        let refs: Vec<&str> = planned.iter().map(|p| p.row.pack_ref.as_str()).collect();
        let mut write = self
            .db
            .begin_packs_write(&refs)
            .await
            .map_err(|e| failed(&first, e.into()))?;
        match self.unchanged(&mut write).await {
            Ok(true) => {}
            Ok(false) => {
                write.rollback().await;
                return Err(NotRemoved::Changed);
            }
            Err(e) => {
                write.rollback().await;
                return Err(failed(&first, e.into()));
            }
        }

        let entries: Vec<RemovalEntry> = planned
            .iter()
            .map(|p| {
                RemovalEntry::new(
                    &p.row.pack_ref,
                    p.row.pack_id,
                    &p.target(),
                    &p.envs,
                    p.kept
                        .iter()
                        .map(|k| PathBuf::from(&k.files_path))
                        .collect(),
                )
            })
            .collect();
        let journal = Arc::clone(&self.journal);
        let intent = match tokio::task::spawn_blocking(move || journal.begin_removal(entries))
            .await
            .expect("journal write panicked")
        {
            Ok(intent) => intent,
            Err(e) => {
                write.rollback().await;
                return Err(failed(&first, e.into()));
            }
        };

        self.reporter.info(
            Stage::Place,
            format!(
                "moving {} and their environments aside",
                crate::progress::count(planned.len(), "pack", "packs")
            ),
        );
        let moving = intent.entries().to_vec();
        let moved = tokio::task::spawn_blocking(move || {
            for entry in &moving {
                if let Err(e) = entry.move_aside() {
                    return Err((entry.pack_ref.clone(), e));
                }
            }
            Ok(())
        })
        .await
        .expect("moving aside panicked");
        if let Err((pack_ref, e)) = moved {
            write.rollback().await;
            return Err(abandon(intent, &pack_ref, e.into()).await);
        }

        self.reporter
            .info(Stage::Register, "deleting the rows in one transaction");
        let now = now_ms();
        if let Err((pack_ref, e)) = self.delete_rows(&mut write, now).await {
            write.rollback().await;
            return Err(abandon(intent, &pack_ref, e.into()).await);
        }
        crate::fault::pause("remove: rows deleted");
        if let Err(e) = write.commit().await {
            // A lost connection during COMMIT leaves its outcome unknown here; the rows
            // say which way to settle.
            let first_id = planned.first().map(|p| p.row.pack_id).unwrap_or_default();
            match self.db.pack_id_exists(first_id).await {
                Ok(true) => return Err(abandon(intent, &first, e.into()).await),
                Err(_) => {
                    tracing::error!(error = %e, "commit outcome unknown; the next start settles the removal");
                    return Err(NotRemoved::Failed {
                        pack_ref: first,
                        failure: RemovalFailure::CommitUnknown(e),
                        undone: false,
                    });
                }
                Ok(false) => {
                    tracing::warn!(error = %e, "commit reported an error but the rows are gone");
                }
            }
        }
        crate::fault::pause("remove: committed");
        self.finish(intent).await;
        for p in planned {
            self.reporter.with_subject(&p.row.pack_ref).info(
                Stage::Register,
                format!("removed {} {}", p.row.pack_ref, p.row.version),
            );
        }
        Ok(planned.iter().map(Planned::removed).collect())
    }

    /// Holds every existing `<envs_root>/<ref>` against builds, here and in other
    /// processes sharing it.
    async fn lock_environments(&self) -> Result<Vec<DirGuard>, NotRemoved> {
        let mut guards = Vec::new();
        let deadline = tokio::time::Instant::now() + ENV_LOCK_WAIT;
        for p in &self.planned {
            if !p.envs.is_dir() {
                continue;
            }
            match self.locks.lock_across_processes(&p.envs, deadline).await {
                Ok(guard) => guards.push(guard),
                Err(source) => {
                    return Err(NotRemoved::Failed {
                        pack_ref: p.row.pack_ref.clone(),
                        failure: RemovalFailure::EnvironmentsBusy {
                            pack_ref: p.row.pack_ref.clone(),
                            source,
                        },
                        undone: true,
                    });
                }
            }
        }
        Ok(guards)
    }

    /// Whether the plan still holds under the locks: the same set, rows and kept
    /// versions as when it was made.
    async fn unchanged(&self, write: &mut PackWrite) -> Result<bool, StoreError> {
        let installed = write.installed_packs().await?;
        let Ok((members, _)) = plan(&installed, &self.refs, self.cascade, self.force) else {
            return Ok(false);
        };
        if members.len() != self.planned.len()
            || members
                .iter()
                .zip(&self.planned)
                .any(|(m, p)| *m != p.member)
        {
            return Ok(false);
        }
        for p in &self.planned {
            if write.removable(&p.row.pack_ref).await?.as_ref() != Some(&p.row)
                || write.kept_files(&p.row.pack_ref).await? != p.kept
            {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Every pack's rows, a history row and a `pack.deleted` event each.
    async fn delete_rows(
        &self,
        write: &mut PackWrite,
        now: i64,
    ) -> Result<(), (String, StoreError)> {
        for p in &self.planned {
            let pack_ref = &p.row.pack_ref;
            let with_ref = |e: StoreError| (pack_ref.clone(), e);
            write
                .delete_pack(p.row.pack_id, pack_ref)
                .await
                .map_err(with_ref)?;
            write
                .append_history(&p.history(self.actor.as_ref(), Ok(())), now)
                .await
                .map_err(with_ref)?;
            let event = PackEvent::Deleted {
                pack_id: p.row.pack_id,
                pack_ref: pack_ref.clone(),
            };
            write.append_event(&event, now).await.map_err(with_ref)?;
        }
        Ok(())
    }

    /// After the commit: the asides and the kept versions are deleted, then the intent.
    async fn finish(&self, intent: RemovalIntent) {
        let entries = intent.entries().to_vec();
        let finished = tokio::task::spawn_blocking(move || {
            let mut finished = true;
            for entry in &entries {
                if let Err(e) = entry.finish() {
                    finished = false;
                    tracing::warn!(pack = %entry.pack_ref, error = %e, "cannot delete a removed pack's files");
                }
            }
            finished
        })
        .await
        .unwrap_or(false);
        let mut kept_deleted = true;
        for entry in intent.entries() {
            match journal::remove_unused_kept(&self.db, entry).await {
                Ok(problems) => {
                    for problem in problems {
                        kept_deleted = false;
                        tracing::warn!("{problem}");
                    }
                }
                Err(e) => {
                    kept_deleted = false;
                    tracing::warn!(pack = %entry.pack_ref, error = %e, "cannot check the kept versions of a removed pack");
                }
            }
        }
        if finished && kept_deleted {
            intent.complete();
        }
    }
}

/// Puts every moved directory back (any state before the commit undoes); the intent
/// stays for the next start when that fails.
async fn abandon(intent: RemovalIntent, pack_ref: &str, failure: RemovalFailure) -> NotRemoved {
    let entries = intent.entries().to_vec();
    let undone = tokio::task::spawn_blocking(move || {
        let mut first_error = None;
        for entry in entries.iter().rev() {
            if let Err(source) = entry.undo() {
                tracing::error!(pack = %entry.pack_ref, error = %source, "cannot put a pack back");
                first_error.get_or_insert(RemovalFailure::PutBack {
                    path: entry.target.clone(),
                    source,
                });
            }
        }
        first_error
    })
    .await
    .unwrap_or_else(|e| Some(RemovalFailure::Task(e)));
    match undone {
        None => {
            intent.complete();
            NotRemoved::Failed {
                pack_ref: pack_ref.to_string(),
                failure,
                undone: true,
            }
        }
        Some(put_back) => NotRemoved::Failed {
            pack_ref: pack_ref.to_string(),
            failure: put_back,
            undone: false,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn installed(list: &[(&str, &[&str])]) -> Vec<RegisteredPackRow> {
        list.iter()
            .map(|(r, deps)| RegisteredPackRow {
                pack_ref: r.to_string(),
                version: "1.0.0".into(),
                dependencies: deps.iter().map(|d| d.to_string()).collect(),
            })
            .collect()
    }

    fn refs(list: &[&str]) -> Vec<String> {
        list.iter().map(|r| r.to_string()).collect()
    }

    fn order(members: &[Member]) -> Vec<&str> {
        members.iter().map(|m| m.pack_ref.as_str()).collect()
    }

    #[test]
    fn dependents_refuse_unless_cascaded_or_forced() {
        let packs = installed(&[
            ("base", &[]),
            ("lib", &["base@>=1.0"]),
            ("app", &["lib", "base"]),
            ("other", &[]),
        ]);
        let refused = plan(&packs, &refs(&["base"]), false, false).unwrap_err();
        assert_eq!(refused.len(), 1);
        assert_eq!(refused[0].dependents(), ["app", "lib"]);
        assert!(refused[0].to_string().contains("cascade"), "{}", refused[0]);

        let (members, cycle) = plan(&packs, &refs(&["base"]), true, false).unwrap();
        assert!(cycle.is_none());
        assert_eq!(order(&members), ["app", "lib", "base"]);
        assert_eq!(
            members.iter().map(|m| m.dependent).collect::<Vec<_>>(),
            [true, true, false]
        );

        let (members, _) = plan(&packs, &refs(&["base"]), false, true).unwrap();
        assert_eq!(order(&members), ["base"]);
        assert_eq!(members[0].left_dependents, ["app", "lib"]);

        // Dependents named in the request are no obstacle.
        let (members, _) = plan(&packs, &refs(&["base", "lib", "app"]), false, false).unwrap();
        assert_eq!(order(&members), ["app", "lib", "base"]);
    }

    #[test]
    fn unknown_refs_are_refused_with_the_rest() {
        let packs = installed(&[("base", &[]), ("lib", &["base"])]);
        let refused = plan(&packs, &refs(&["nope", "base"]), false, false).unwrap_err();
        let reasons: Vec<_> = refused.iter().map(|r| (r.pack_ref(), r.reason())).collect();
        assert_eq!(
            reasons,
            [("nope", "not_installed"), ("base", "has_dependents")]
        );
        assert_eq!(refused[0].to_string(), "pack 'nope' is not installed");
    }

    #[test]
    fn cycles_are_removed_together_without_hanging() {
        let packs = installed(&[
            ("aa", &["bb"]),
            ("bb", &["cc"]),
            ("cc", &["aa"]),
            ("user", &["aa"]),
            ("selfish", &["selfish"]),
        ]);
        let (members, cycle) = plan(&packs, &refs(&["bb"]), true, false).unwrap();
        assert!(cycle.is_some());
        let got = order(&members);
        assert_eq!(got.len(), 4);
        // `user` depends on the cycle: it goes first.
        assert_eq!(got[0], "user");
        let (members, cycle) = plan(&packs, &refs(&["selfish"]), false, false).unwrap();
        assert!(cycle.is_some());
        assert_eq!(order(&members), ["selfish"]);
    }

    #[test]
    fn requests_are_checked() {
        assert!(matches!(checked_refs(&[]), Err(RemoveError::NoRefs)));
        let long = "x".repeat(5000);
        let err = checked_refs(&refs(&["ok", &long])).unwrap_err();
        assert!(matches!(err, RemoveError::InvalidRef { index: 1, .. }));
        assert!(err.to_string().len() < 300, "{err}");
        assert_eq!(
            checked_refs(&refs(&["aa", "bb", "aa"])).unwrap(),
            ["aa", "bb"]
        );
        let many: Vec<String> = (0..=MAX_REFS).map(|i| format!("p{i}")).collect();
        assert!(matches!(
            checked_refs(&many),
            Err(RemoveError::TooManyRefs { .. })
        ));
    }
}
