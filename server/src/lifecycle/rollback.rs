//! RollbackPack: puts a kept version back (files, rows, environment links) in one
//! journaled switch, without the network.
//!
//! The kept directory is swapped into the pack's place through the same journaled
//! swap registration uses (`journal::SwapEntry` with `restores_kept`, so that undoing
//! puts the kept copy back rather than deleting it), and the installed version takes
//! its turn as a kept version (`keep`), so a rollback is undone by another. The
//! environment links are switched back to the kept builds under an environment intent
//! like Install's. The rows, a `rollback` history row and the events commit in one
//! transaction, whose pack checksum (the kept version's) is the commit token that
//! start-up recovery settles both intents by.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use crate::{
    checksum,
    dependency::{direct_dependents, satisfies},
    envs::{EnvLinks, EnvSnapshot, MARKER_FILE, RefDir},
    events::PackEvent,
    failure::{Failure, FailureKind},
    journal::{self, EnvSwitchEntry, JournalError, SwapEntry},
    progress::{Reporter, Stage},
    state::AppState,
    store::{
        StoreError,
        history::{HistoryAction, HistoryRow, HistoryVersion},
        packs::{PackWrite, WriteError},
        versions::{ComponentSnapshot, FullPackRow, KeptVersionRow, PackSnapshot, TestSnapshot},
    },
};

use super::history::{
    AfterCommit, builds_of, env_links_of, extend_kept_builds, history_dir, keep_path,
};

/// Longest `to_version` accepted.
const MAX_VERSION_LEN: usize = 256;
/// How long a rollback waits for a build of the same pack's environments.
const ENV_LOCK_WAIT: Duration = Duration::from_secs(30);

#[derive(Debug, Clone)]
pub struct RollbackRequest {
    pub pack_ref: String,
    /// A kept version; `None`: the most recently kept one.
    pub to_version: Option<String>,
    /// Roll back even though installed dependents need the current version.
    pub force: bool,
    /// Who asked (the token's subject), the history row's actor.
    pub requested_by: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RollbackReport {
    pub success: bool,
    pub pack_ref: String,
    pub from_version: String,
    pub to_version: String,
    pub pack_id: i64,
    /// Why it was refused; nothing was changed when non-empty.
    pub errors: Vec<String>,
    /// Installed packs whose requirement the kept version does not satisfy.
    pub dependents: Vec<String>,
}

/// The request cannot be carried out at all (malformed, or the server failed).
#[derive(Debug, thiserror::Error)]
pub enum RollbackError {
    #[error("'{0}' is not a valid pack ref (lowercase letters, digits, '_' and '-')")]
    InvalidRef(String),
    #[error("to_version is longer than {MAX_VERSION_LEN} bytes")]
    VersionTooLong,
    #[error("cannot read or write the pack's rows: {0}")]
    Store(#[from] StoreError),
    #[error("the rollback task failed: {0}")]
    TaskFailed(#[source] tokio::task::JoinError),
}

impl Failure for RollbackError {
    fn kind(&self) -> FailureKind {
        match self {
            RollbackError::InvalidRef(_) | RollbackError::VersionTooLong => {
                FailureKind::InvalidRequest
            }
            RollbackError::Store(_) | RollbackError::TaskFailed(_) => FailureKind::Internal,
        }
    }
}

/// Why a rollback was refused; nothing was changed.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    #[error(
        "pack '{pack_ref}' is not installed; only an installed pack can be rolled back{}",
        kept_note(kept)
    )]
    NotInstalled { pack_ref: String, kept: Vec<String> },
    #[error(
        "pack '{pack_ref}' has no kept version to roll back to (previous versions are kept when a pack is upgraded or replaced, up to history.keep_versions)"
    )]
    NothingKept { pack_ref: String },
    #[error("pack '{pack_ref}' has no kept version {version}; kept versions: {}", kept.join(", "))]
    UnknownVersion {
        pack_ref: String,
        version: String,
        kept: Vec<String>,
    },
    #[error(
        "the kept copy of '{pack_ref}' {version} at '{}' was changed since it was kept (checksum {actual}, recorded {expected}); it is not restored",
        path.display()
    )]
    Modified {
        pack_ref: String,
        version: String,
        path: PathBuf,
        expected: String,
        actual: String,
    },
    #[error("the kept copy of '{pack_ref}' {version} at '{}' cannot be read: {reason}", path.display())]
    Unreadable {
        pack_ref: String,
        version: String,
        path: PathBuf,
        reason: String,
    },
    #[error(
        "the kept version {version} of '{pack_ref}' has the same files as the installed one (checksum {checksum}); there is nothing to roll back"
    )]
    SameFiles {
        pack_ref: String,
        version: String,
        checksum: String,
    },
    #[error(
        "the {kind} environment '{build}' kept for '{pack_ref}' {version} is gone; roll forward instead (install the version again)"
    )]
    EnvironmentGone {
        pack_ref: String,
        version: String,
        kind: &'static str,
        build: String,
    },
    #[error(
        "{} a version of '{pack_ref}' that {version} does not satisfy: {}; roll back with force to do it anyway",
        crate::progress::noun(needs.len(), "an installed pack needs", "installed packs need"),
        needs.join(", ")
    )]
    Dependents {
        pack_ref: String,
        version: String,
        needs: Vec<String>,
    },
    #[error("'{pack_ref}' changed while the rollback was being prepared; try again")]
    Changed { pack_ref: String },
    #[error("the rows of kept version {version} of '{pack_ref}' cannot be read: {reason}")]
    Corrupt {
        pack_ref: String,
        version: String,
        reason: String,
    },
    /// A component of the kept version belongs to another pack now.
    #[error(transparent)]
    Conflict(WriteError),
    #[error("cannot switch the environments of '{pack_ref}': {reason}")]
    Environments { pack_ref: String, reason: String },
    #[error(transparent)]
    Journal(#[from] JournalError),
}

fn kept_note(kept: &[String]) -> String {
    if kept.is_empty() {
        String::new()
    } else {
        format!(" (kept versions: {})", kept.join(", "))
    }
}

/// A refusal, or a failure of the server.
enum Stop {
    Refused(Refusal),
    Failed(RollbackError),
}

impl From<Refusal> for Stop {
    fn from(r: Refusal) -> Self {
        Stop::Refused(r)
    }
}

impl From<StoreError> for Stop {
    fn from(e: StoreError) -> Self {
        Stop::Failed(RollbackError::Store(e))
    }
}

impl From<JournalError> for Stop {
    fn from(e: JournalError) -> Self {
        Stop::Refused(Refusal::Journal(e))
    }
}

/// Rolls `request.pack_ref` back to a kept version. Refusals come back as a report
/// with `success == false`; `Err` is for malformed requests and server failures.
///
/// The work runs in a task of its own, counted as a critical section: a caller that
/// leaves must not stop it between the switch and the commit.
pub async fn rollback(
    state: &AppState,
    request: RollbackRequest,
    reporter: &Reporter,
) -> Result<RollbackReport, RollbackError> {
    if !crate::manifest::is_valid_pack_ref(&request.pack_ref) {
        return Err(RollbackError::InvalidRef(request.pack_ref));
    }
    if request
        .to_version
        .as_ref()
        .is_some_and(|v| v.len() > MAX_VERSION_LEN)
    {
        return Err(RollbackError::VersionTooLong);
    }
    let running = state.journal.enter_critical();
    let (state, reporter) = (state.clone(), reporter.clone());
    tokio::spawn(async move {
        let _running = running;
        let mut report = RollbackReport {
            pack_ref: request.pack_ref.clone(),
            ..RollbackReport::default()
        };
        match run(&state, &request, &reporter, &mut report).await {
            Ok(()) => {
                report.success = true;
                Ok(report)
            }
            Err(Stop::Refused(refusal)) => {
                reporter.error(Stage::Register, refusal.to_string());
                report.errors.push(refusal.to_string());
                report.success = false;
                Ok(report)
            }
            Err(Stop::Failed(e)) => Err(e),
        }
    })
    .await
    .map_err(RollbackError::TaskFailed)?
}

/// The kept version's rows, decoded.
struct Restorable {
    row: FullPackRow,
    components: Vec<ComponentSnapshot>,
    test_result: Option<TestSnapshot>,
    links: EnvLinks,
}

fn decode(kept: &KeptVersionRow) -> Result<Restorable, Refusal> {
    let corrupt = |reason: String| Refusal::Corrupt {
        pack_ref: kept.pack_ref.clone(),
        version: kept.version.clone(),
        reason,
    };
    let row: FullPackRow =
        serde_json::from_str(&kept.pack_row).map_err(|e| corrupt(format!("pack row: {e}")))?;
    let components: Vec<ComponentSnapshot> =
        serde_json::from_str(&kept.components).map_err(|e| corrupt(format!("components: {e}")))?;
    let test_result = match &kept.test_result {
        Some(text) => {
            Some(serde_json::from_str(text).map_err(|e| corrupt(format!("test result: {e}")))?)
        }
        None => None,
    };
    if row.pack_ref != kept.pack_ref {
        return Err(corrupt(format!("it is a row of '{}'", row.pack_ref)));
    }
    Ok(Restorable {
        row,
        components,
        test_result,
        links: env_links_of(kept),
    })
}

fn pick(
    pack_ref: &str,
    kept: &[KeptVersionRow],
    to_version: Option<&str>,
) -> Result<KeptVersionRow, Refusal> {
    let found = match to_version {
        None => kept.first(),
        Some(v) => kept.iter().find(|k| k.version == v),
    };
    match (found, to_version) {
        (Some(k), _) => Ok(k.clone()),
        (None, _) if kept.is_empty() => Err(Refusal::NothingKept {
            pack_ref: pack_ref.to_string(),
        }),
        (None, v) => Err(Refusal::UnknownVersion {
            pack_ref: pack_ref.to_string(),
            version: v.unwrap_or_default().to_string(),
            kept: kept.iter().map(|k| k.version.clone()).collect(),
        }),
    }
}

async fn run(
    state: &AppState,
    request: &RollbackRequest,
    reporter: &Reporter,
    report: &mut RollbackReport,
) -> Result<(), Stop> {
    let db = &state.db;
    let pack_ref = request.pack_ref.as_str();
    let kept = db.kept_versions(pack_ref).await?;
    // The pack's place, read first to take its lock (as registration does) before
    // anything is decided.
    let mut look = db.begin_packs_write(&[pack_ref]).await?;
    let current = look.pack_snapshot(pack_ref).await;
    look.rollback().await;
    let Some(current) = current? else {
        return Err(Refusal::NotInstalled {
            pack_ref: pack_ref.to_string(),
            kept: kept.iter().map(|k| k.version.clone()).collect(),
        }
        .into());
    };
    let target = PathBuf::from(&current.row.storage_path);
    let _guards = state.locks.lock_all([target.as_path()]).await;
    // The environments' lock before the database's: a build of this pack's
    // environments (Install) holds it and registers afterwards.
    let envs_root = crate::buildenvs::envs_root(target.parent().unwrap_or(Path::new("/")));
    let ref_dir = RefDir::new(&envs_root, pack_ref);
    let _env_lock = if ref_dir.dir.is_dir() {
        let deadline = tokio::time::Instant::now() + ENV_LOCK_WAIT;
        match state
            .locks
            .lock_across_processes(&ref_dir.dir, deadline)
            .await
        {
            Ok(guard) => Some(guard),
            Err(e) => {
                return Err(Refusal::Environments {
                    pack_ref: pack_ref.to_string(),
                    reason: e.to_string(),
                }
                .into());
            }
        }
    } else {
        None
    };

    // Everything checked again under the lock, before anything moves.
    let mut write = db.begin_packs_write(&[pack_ref]).await?;
    let checked = check(request, &mut write, &target, reporter).await;
    let (current, chosen, restorable) = match checked {
        Ok(checked) => checked,
        Err(stop) => {
            write.rollback().await;
            return Err(stop);
        }
    };
    report.from_version = current.row.version.clone();
    report.to_version = chosen.version.clone();
    report.pack_id = current.pack_id;

    let dependents = match refused_dependents(state, pack_ref, &chosen.version).await {
        Ok(d) => d,
        Err(e) => {
            write.rollback().await;
            return Err(e.into());
        }
    };
    if !dependents.is_empty() {
        report.dependents = dependents.iter().map(|(r, _)| r.clone()).collect();
        let needs: Vec<String> = dependents
            .iter()
            .map(|(r, req)| format!("{r} requires {req}"))
            .collect();
        if !request.force {
            write.rollback().await;
            return Err(Refusal::Dependents {
                pack_ref: pack_ref.to_string(),
                version: chosen.version.clone(),
                needs,
            }
            .into());
        }
        reporter.warn(
            Stage::Validate,
            format!("rolling back although {} (force)", needs.join(", ")),
        );
    }
    switch(
        state, request, reporter, write, &target, current, chosen, restorable,
    )
    .await
}

/// The installed pack, the kept version chosen and its decoded rows, once its kept
/// copy and builds are found intact. Runs inside `write` (the pack's lock held).
async fn check(
    request: &RollbackRequest,
    write: &mut PackWrite,
    target: &Path,
    reporter: &Reporter,
) -> Result<(PackSnapshot, KeptVersionRow, Restorable), Stop> {
    let pack_ref = request.pack_ref.as_str();
    let kept = write.kept_versions(pack_ref).await?;
    let Some(current) = write.pack_snapshot(pack_ref).await? else {
        return Err(Refusal::NotInstalled {
            pack_ref: pack_ref.to_string(),
            kept: kept.iter().map(|k| k.version.clone()).collect(),
        }
        .into());
    };
    if Path::new(&current.row.storage_path) != target {
        return Err(Refusal::Changed {
            pack_ref: pack_ref.to_string(),
        }
        .into());
    }
    let chosen = pick(pack_ref, &kept, request.to_version.as_deref())?;
    let restorable = decode(&chosen)?;
    let kept_dir = PathBuf::from(&chosen.files_path);
    let unreadable = |reason: String| Refusal::Unreadable {
        pack_ref: pack_ref.to_string(),
        version: chosen.version.clone(),
        path: kept_dir.clone(),
        reason,
    };
    // The rows name where the copy is; it must still be one of this pack's kept
    // directories, beside the pack.
    if kept_dir.parent() != Some(history_dir(target, pack_ref).as_path()) {
        return Err(unreadable(format!(
            "it is not under '{}'",
            history_dir(target, pack_ref).display()
        ))
        .into());
    }
    let Some(expected) = chosen.checksum.clone() else {
        return Err(unreadable("no checksum was recorded to verify it against".into()).into());
    };
    if current.row.checksum.as_deref() == Some(expected.as_str()) {
        return Err(Refusal::SameFiles {
            pack_ref: pack_ref.to_string(),
            version: chosen.version.clone(),
            checksum: expected,
        }
        .into());
    }
    reporter.info(
        Stage::Verify,
        format!("verifying the kept copy of {} {}", pack_ref, chosen.version),
    );
    let dir = kept_dir.clone();
    let actual = tokio::task::spawn_blocking(move || {
        if !std::fs::symlink_metadata(&dir).is_ok_and(|m| m.is_dir()) {
            return Err("it is missing".to_string());
        }
        checksum::directory_checksum(&dir)
            .map(|hex| checksum::checksum_prefixed(&hex))
            .map_err(|e| e.to_string())
    })
    .await
    .map_err(|e| Stop::Failed(RollbackError::TaskFailed(e)))?
    .map_err(unreadable)?;
    if actual != expected {
        return Err(Refusal::Modified {
            pack_ref: pack_ref.to_string(),
            version: chosen.version.clone(),
            path: kept_dir,
            expected,
            actual,
        }
        .into());
    }
    let envs_root = crate::buildenvs::envs_root(target.parent().unwrap_or(Path::new("/")));
    let ref_dir = RefDir::new(&envs_root, pack_ref);
    for (kind, build) in [
        ("python", &restorable.links.python),
        ("node", &restorable.links.node),
    ] {
        if let Some(build) = build {
            let dir = ref_dir.dir.join(build);
            if !dir.join(MARKER_FILE).is_file() {
                return Err(Refusal::EnvironmentGone {
                    pack_ref: pack_ref.to_string(),
                    version: chosen.version.clone(),
                    kind,
                    build: build.display().to_string(),
                }
                .into());
            }
        }
    }
    Ok((current, chosen, restorable))
}

/// Installed packs whose declared requirement `version` of `pack_ref` does not
/// satisfy, with the requirement. A version that is not semver satisfies nothing
/// but `*`.
async fn refused_dependents(
    state: &AppState,
    pack_ref: &str,
    version: &str,
) -> Result<Vec<(String, String)>, StoreError> {
    let installed = state.db.registered_packs().await?;
    let parsed = semver::Version::parse(version).ok();
    Ok(direct_dependents(&installed, pack_ref)
        .into_iter()
        .filter(|d| match &parsed {
            Some(v) => !satisfies(&d.requirement.req, v),
            None => d.requirement.req != semver::VersionReq::STAR,
        })
        .map(|d| (d.pack_ref, d.requirement.spec))
        .collect())
}

/// The switch itself: intents, environment links, files, rows, commit; then the
/// previous version kept and what was pruned deleted.
#[allow(clippy::too_many_arguments)]
async fn switch(
    state: &AppState,
    request: &RollbackRequest,
    reporter: &Reporter,
    mut write: PackWrite,
    target: &Path,
    current: PackSnapshot,
    chosen: KeptVersionRow,
    restorable: Restorable,
) -> Result<(), Stop> {
    let pack_ref = request.pack_ref.as_str();
    let keep_versions = state.config.history.keep_versions;
    let base = target.parent().unwrap_or(Path::new("/")).to_path_buf();
    let envs_root = crate::buildenvs::envs_root(&base);
    let token = chosen.checksum.clone().unwrap_or_default();
    let current_links = EnvSnapshot::take(&envs_root, pack_ref).links();
    let links_change = current_links != restorable.links;

    // The builds of both versions are spared by garbage collection from now on.
    let builds: Vec<String> = builds_of(&current_links)
        .chain(builds_of(&restorable.links))
        .collect();
    if !builds.is_empty() {
        let (root, r) = (envs_root.clone(), pack_ref.to_string());
        let extended = tokio::task::spawn_blocking(move || extend_kept_builds(&root, &r, builds))
            .await
            .map_err(|e| Stop::Failed(RollbackError::TaskFailed(e)))?;
        if let Err(e) = extended {
            write.rollback().await;
            return Err(Refusal::Environments {
                pack_ref: pack_ref.to_string(),
                reason: e.to_string(),
            }
            .into());
        }
    }

    // Intents, durable before anything moves.
    let env_intent = if links_change {
        let entry = EnvSwitchEntry {
            pack_ref: pack_ref.to_string(),
            envs_root: envs_root.clone(),
            checksum: token.clone(),
            previous: current_links.clone(),
            switched_to: None,
        };
        let (journal, db) = (Arc::clone(&state.journal), state.db.clone());
        match tokio::task::spawn_blocking(move || journal.begin_envs(&db, vec![entry]))
            .await
            .map_err(|e| Stop::Failed(RollbackError::TaskFailed(e)))?
        {
            Ok(intent) => Some(intent),
            Err(e) => {
                write.rollback().await;
                return Err(e.into());
            }
        }
    } else {
        None
    };
    let mut entry = SwapEntry::new(pack_ref, target, Path::new(&chosen.files_path), &token)
        .keeping((keep_versions > 0).then(|| keep_path(target, pack_ref)));
    entry.restores_kept = true;
    let journal = Arc::clone(&state.journal);
    let begun = {
        let entry = entry.clone();
        tokio::task::spawn_blocking(move || journal.begin(vec![entry]))
            .await
            .map_err(|e| Stop::Failed(RollbackError::TaskFailed(e)))?
    };
    let intent = match begun {
        Ok(intent) => intent,
        Err(e) => {
            write.rollback().await;
            if let Some(env_intent) = env_intent {
                env_intent.restore();
            }
            return Err(e.into());
        }
    };

    // From here on every failure before the commit puts everything back.
    let abandon = |intent: journal::Intent, env_intent: Option<journal::EnvIntent>| {
        let mut undone = true;
        for entry in intent.entries() {
            if let Err(e) = entry.undo() {
                undone = false;
                tracing::error!(pack = %entry.pack_ref, error = %e, "cannot undo a rollback's swap");
            }
        }
        if undone {
            intent.complete();
        }
        if let Some(env_intent) = env_intent {
            env_intent.restore();
        }
    };

    let mut env_intent = env_intent;
    if let Some(intent_envs) = env_intent.take() {
        reporter.info(Stage::Register, "switching the environment links back");
        let links = restorable.links.clone();
        let (root, r) = (envs_root.clone(), pack_ref.to_string());
        let mut intent_envs = intent_envs;
        let (intent_envs, switched) = tokio::task::spawn_blocking(move || {
            let switched = EnvSnapshot::from_links(&root, &r, &links)
                .try_restore()
                .map_err(|e| e.to_string())
                .and_then(|()| intent_envs.record_switched().map_err(|e| e.to_string()));
            (intent_envs, switched)
        })
        .await
        .map_err(|e| Stop::Failed(RollbackError::TaskFailed(e)))?;
        env_intent = Some(intent_envs);
        if let Err(reason) = switched {
            write.rollback().await;
            abandon(intent, env_intent);
            return Err(Refusal::Environments {
                pack_ref: pack_ref.to_string(),
                reason,
            }
            .into());
        }
    }
    crate::fault::pause("rollback: environments switched");

    reporter.info(
        Stage::Register,
        format!("putting back {} {}", pack_ref, chosen.version),
    );
    let swap = entry.clone();
    let swapped = tokio::task::spawn_blocking(move || swap.swap_in())
        .await
        .map_err(|e| Stop::Failed(RollbackError::TaskFailed(e)))?;
    if let Err(e) = swapped {
        write.rollback().await;
        abandon(intent, env_intent);
        return Err(e.into());
    }

    let now = crate::auth::unix_now() as i64 * 1000;
    let written = write_rows(
        &mut write,
        request,
        &current,
        &chosen,
        &restorable,
        &entry,
        &current_links,
        keep_versions,
        now,
    )
    .await;
    let remaining = match written {
        Ok(remaining) => remaining,
        Err(stop) => {
            write.rollback().await;
            abandon(intent, env_intent);
            return Err(stop);
        }
    };
    crate::fault::pause("rollback: rows written");
    if let Err(e) = write.commit().await {
        // As for registration: a lost connection during COMMIT leaves the outcome to
        // the rows.
        match state.db.pack_checksum(pack_ref).await {
            Ok(recorded) if recorded.as_deref() == Some(token.as_str()) => {
                tracing::warn!(error = %e, "commit reported an error but the rows were written");
            }
            Ok(_) => {
                abandon(intent, env_intent);
                return Err(e.into());
            }
            Err(_) => {
                tracing::error!(error = %e, "commit outcome unknown; the next start settles the rollback");
                return Err(e.into());
            }
        }
    }
    crate::fault::pause("rollback: committed");

    let after = AfterCommit::of(pack_ref, target, &envs_root, &remaining);
    let finished = tokio::task::spawn_blocking(move || {
        let mut finished = true;
        for entry in intent.entries() {
            if let Err(e) = entry.finish() {
                finished = false;
                tracing::warn!(pack = %entry.pack_ref, error = %e, "cannot finish a rollback's swap");
            }
        }
        if finished {
            intent.complete();
            after.run();
        }
    })
    .await;
    if let Err(e) = finished {
        tracing::error!("finishing a rollback panicked: {e}");
    }
    if let Some(env_intent) = env_intent {
        env_intent.committed();
    }
    reporter.info(
        Stage::Register,
        format!(
            "rolled {} back from {} to {}",
            pack_ref, current.row.version, chosen.version
        ),
    );
    Ok(())
}

/// The rows of the rollback, inside `write`: the kept version's rows back in place,
/// the installed version kept in its turn, the oldest beyond `keep_versions` pruned,
/// the history row and the events. Returns the kept versions left.
#[allow(clippy::too_many_arguments)]
async fn write_rows(
    write: &mut PackWrite,
    request: &RollbackRequest,
    current: &PackSnapshot,
    chosen: &KeptVersionRow,
    restorable: &Restorable,
    entry: &SwapEntry,
    current_links: &EnvLinks,
    keep_versions: usize,
    now: i64,
) -> Result<Vec<KeptVersionRow>, Stop> {
    let pack_ref = request.pack_ref.as_str();
    let mut row = restorable.row.clone();
    row.storage_path = current.row.storage_path.clone();
    let Some(pack_id) = write.restore_pack_row(&row, now).await? else {
        return Err(Refusal::Changed {
            pack_ref: pack_ref.to_string(),
        }
        .into());
    };
    let components = restorable
        .components
        .iter()
        .map(|c| {
            c.to_row().ok_or_else(|| Refusal::Corrupt {
                pack_ref: pack_ref.to_string(),
                version: chosen.version.clone(),
                reason: format!("unknown component kind '{}'", c.kind),
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    write
        .replace_components(pack_id, &components)
        .await
        .map_err(|e| match e {
            WriteError::Store(e) => Stop::Failed(RollbackError::Store(e)),
            refused => Stop::Refused(Refusal::Conflict(refused)),
        })?;
    write
        .restore_test_result(pack_id, restorable.test_result.as_ref())
        .await?;
    write.delete_kept_version(chosen.id).await?;
    if let Some(keep) = &entry.keep {
        let links = serde_json::to_string(current_links).unwrap_or_else(|_| "{}".into());
        write
            .insert_kept_version(current, &keep.display().to_string(), &links, now)
            .await?;
    }
    write.prune_kept_versions(pack_ref, keep_versions).await?;
    let remaining = write.kept_versions(pack_ref).await?;
    let history = HistoryRow {
        pack_ref: pack_ref.to_string(),
        action: HistoryAction::Rollback,
        from: HistoryVersion {
            version: Some(current.row.version.clone()),
            source: current.row.source.clone(),
            checksum: current.row.checksum.clone(),
        },
        to: HistoryVersion {
            version: Some(row.version.clone()),
            source: row.source.clone(),
            checksum: row.checksum.clone(),
        },
        actor: request.requested_by.clone(),
        succeeded: true,
        detail: None,
    };
    write.append_history(&history, now).await?;
    let runtime_names: Vec<String> = serde_json::from_str(&row.runtime_deps).unwrap_or_default();
    write
        .append_event(
            &PackEvent::Registered {
                pack_id,
                pack_ref: pack_ref.to_string(),
                version: row.version.clone(),
                runtime_names,
            },
            now,
        )
        .await?;
    write
        .append_event(
            &PackEvent::RolledBack {
                pack_id,
                pack_ref: pack_ref.to_string(),
                from_version: current.row.version.clone(),
                to_version: row.version.clone(),
            },
            now,
        )
        .await?;
    Ok(remaining)
}
