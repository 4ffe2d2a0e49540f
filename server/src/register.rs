//! The RegisterBatch stage: validate packs, run their tests, store their files under
//! `<packs_base_dir>/<ref>` and record them and their components in the database.
//!
//! Per pack, all or nothing: the pack is copied beside its final place and tested
//! there; then, holding the pack's write lock (see `store::packs`), the old directory
//! is swapped out, the rows are written in one transaction, and only after the commit
//! is the old directory deleted. Any failure puts the old directory back, so a failed
//! re-registration leaves the previous version's files and rows as they were.

use crate::base_dir::{self, BaseDirError};
use crate::failure::{Failure, FailureKind};
use std::{
    collections::{HashMap, HashSet},
    fs,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use futures::StreamExt;

use tracing::instrument;

use crate::lifecycle::history::AfterCommit;
use crate::{
    checksum::{self, ChecksumError},
    components::{self, ComponentKind, Issue, LoadedPack, Strictness},
    config::RegisterSection,
    events::PackEvent,
    fetch::{self, FetchError},
    journal::{self, Intent, Journal, JournalError, SwapEntry, WorkKind},
    locks::PackLocks,
    manifest::{Manifest, ManifestError, dir_name},
    packtest::{self, PackTestResult, TestRunOptions, TestStatus},
    paths::{PathError, PathPolicy},
    progress::{self, Level, Reporter, Stage},
    provenance,
    store::{
        Db, StoreError,
        history::{HistoryRow, HistoryVersion},
        packs::{ComponentRow, PackRow, PackWrite, TestRow, WriteError},
    },
};

#[derive(Debug, Clone)]
pub struct RegisterRequest {
    pub pack_paths: Vec<String>,
    /// As the caller wrote it; `None` means the server's default.
    pub packs_base_dir: Option<String>,
    pub skip_validation: bool,
    pub skip_tests: bool,
    /// Replace an already registered pack, and register despite failing tests.
    pub force: bool,
    /// Component problems (unresolved references, unknown runners) fail the pack
    /// instead of dropping the component with a warning (StackStorm's
    /// `--register-fail-on-failure`).
    pub strict: bool,
    /// Who asked (the token's subject), recorded as `installed_by`.
    pub requested_by: Option<String>,
    /// Per ref, where its environment links pointed before this request switched them
    /// (Install builds before registering); a kept previous version records these.
    /// Refs not named: the links as they are at commit.
    pub env_links_before: HashMap<String, crate::envs::EnvLinks>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ComponentCounts {
    pub actions: u32,
    pub sensors: u32,
    pub triggers: u32,
    pub rules: u32,
    pub workflows: u32,
    pub policies: u32,
    pub aliases: u32,
}

impl ComponentCounts {
    fn of(loaded: &LoadedPack) -> Self {
        Self {
            actions: loaded.count(ComponentKind::Action),
            sensors: loaded.count(ComponentKind::Sensor),
            triggers: loaded.count(ComponentKind::Trigger),
            rules: loaded.count(ComponentKind::Rule),
            workflows: loaded.count(ComponentKind::Workflow),
            policies: loaded.count(ComponentKind::Policy),
            aliases: loaded.count(ComponentKind::Alias),
        }
    }

    pub fn total(&self) -> u32 {
        self.actions
            + self.sensors
            + self.triggers
            + self.rules
            + self.workflows
            + self.policies
            + self.aliases
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidationIssue {
    pub file: String,
    pub message: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Validation {
    pub errors: Vec<ValidationIssue>,
    pub warnings: Vec<ValidationIssue>,
}

#[derive(Debug, Clone)]
pub struct RegisteredPack {
    pub pack_ref: String,
    pub pack_id: i64,
    pub pack_version: String,
    pub storage_path: String,
    pub components: ComponentCounts,
    pub test_result: Option<PackTestResult>,
    pub validation: Validation,
}

/// Why one pack of a batch was not registered. The stage it failed in follows from
/// the variant ([`RegisterPackError::stage`]).
#[derive(Debug, thiserror::Error)]
pub enum RegisterPackError {
    #[error("pack directory '{given}' does not exist")]
    NoDirectory { given: String },
    /// The pack's path is refused, or its directory cannot be opened for reading.
    #[error(transparent)]
    Path(PathError),
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    #[error("pack '{pack_ref}' is also at '{first}' in this batch")]
    Duplicate { pack_ref: String, first: String },
    #[error("{} validation error(s): {}", errors.len(), joined(errors))]
    Invalid { errors: Vec<Issue> },
    #[error("cancelled")]
    Cancelled,
    /// What the rows refuse: already registered, or a component of another pack.
    #[error(transparent)]
    Refused(WriteError),
    #[error("{0}; use force to register anyway")]
    TestsFailed(TestShortfall),
    /// The pack's directory cannot be opened again to copy it.
    #[error(transparent)]
    CopySource(PathError),
    #[error(transparent)]
    Copy(#[from] FetchError),
    #[error(transparent)]
    Checksum(#[from] ChecksumError),
    /// The swap intent cannot be written, or the swap itself failed (and was undone).
    #[error(transparent)]
    Swap(#[from] JournalError),
    #[error("cannot settle the swap a stopped server left on '{}': {source}", target.display())]
    StaleSwap {
        target: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot settle the swap a stopped server left on '{}': {source}", target.display())]
    StaleSwapRecord {
        target: PathBuf,
        #[source]
        source: StoreError,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot record the environment builds kept for '{pack_ref}': {source}")]
    KeptBuilds {
        pack_ref: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the registration task failed: {0}")]
    TaskFailed(#[source] tokio::task::JoinError),
}

impl RegisterPackError {
    /// The stage the pack failed in.
    pub fn stage(&self) -> Stage {
        use RegisterPackError as E;
        match self {
            E::NoDirectory { .. }
            | E::Path(_)
            | E::Manifest(_)
            | E::Duplicate { .. }
            | E::Invalid { .. }
            | E::Cancelled => Stage::Validate,
            E::Refused(WriteError::Store(_)) => Stage::Register,
            E::Refused(_) => Stage::Validate,
            E::TestsFailed(_) => Stage::Test,
            E::CopySource(_)
            | E::Copy(_)
            | E::Checksum(_)
            | E::Swap(_)
            | E::StaleSwap { .. }
            | E::StaleSwapRecord { .. } => Stage::Copy,
            E::Store(_) | E::TaskFailed(_) | E::KeptBuilds { .. } => Stage::Register,
        }
    }
}

impl From<WriteError> for RegisterPackError {
    fn from(e: WriteError) -> Self {
        match e {
            WriteError::Store(e) => RegisterPackError::Store(e),
            refused => RegisterPackError::Refused(refused),
        }
    }
}

fn joined(issues: &[Issue]) -> String {
    issues
        .iter()
        .map(Issue::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

/// Pack tests that did not pass: `tests failed: 1 of 2 passed (pass rate 0.50,
/// required 1.00)`.
#[derive(Debug, Clone, PartialEq)]
pub struct TestShortfall {
    pub status: TestStatus,
    pub passed: u32,
    pub total: u32,
    pub pass_rate: f64,
    pub required: f64,
}

impl TestShortfall {
    fn of(result: &PackTestResult) -> Self {
        Self {
            status: result.status,
            passed: result.passed,
            total: result.total_tests,
            pass_rate: result.pass_rate,
            required: result.min_pass_rate,
        }
    }
}

impl std::fmt::Display for TestShortfall {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "tests {}: {} of {} passed (pass rate {:.2}, required {:.2})",
            self.status.as_str(),
            self.passed,
            self.total,
            self.pass_rate,
            self.required
        )
    }
}

/// A pack of a batch that was not registered.
#[derive(Debug)]
pub struct FailedRegistration {
    pub pack_ref: String,
    pub pack_path: String,
    pub error: RegisterPackError,
}

impl FailedRegistration {
    /// The stage the pack failed in.
    pub fn stage(&self) -> Stage {
        self.error.stage()
    }
}

#[derive(Debug, Default)]
pub struct RegisterReport {
    pub registered: Vec<RegisteredPack>,
    pub failed: Vec<FailedRegistration>,
    pub duration: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum RegisterError {
    #[error(transparent)]
    BaseDir(#[from] BaseDirError),
    #[error("cannot read registered packs: {0}")]
    Store(#[from] StoreError),
}

impl Failure for RegisterError {
    fn kind(&self) -> FailureKind {
        match self {
            RegisterError::BaseDir(_) => FailureKind::InvalidRequest,
            RegisterError::Store(_) => FailureKind::Internal,
        }
    }
}

/// A pack's registration, or why it failed.
type PackOutcome = Result<RegisteredPack, RegisterPackError>;

/// A pack made ready to switch in, or why it could not be.
type Preparation = Result<Prepared, RegisterPackError>;

/// The critical section failed: nothing changed; `index` is the pack that failed.
#[derive(Debug)]
struct CommitFailed {
    index: usize,
    error: RegisterPackError,
}

impl CommitFailed {
    fn first(error: impl Into<RegisterPackError>) -> Self {
        CommitFailed {
            index: 0,
            error: error.into(),
        }
    }
}

/// One pack of the batch after parsing, before storage.
struct Candidate {
    given_path: String,
    dir: PathBuf,
    manifest: Manifest,
    loaded: LoadedPack,
}

pub struct Registrar {
    db: Db,
    paths: PathPolicy,
    default_base_dir: PathBuf,
    /// `register.concurrency`: packs prepared (copied, tested, hashed) at the same time.
    concurrency: usize,
    /// Where swap intents are written (the data dir's journal).
    journal: std::sync::Arc<Journal>,
    /// Storage directories being switched, across requests.
    locks: PackLocks,
    /// `history.keep_versions`: previous versions kept when a pack is replaced.
    keep_versions: usize,
}

impl Registrar {
    /// Packs go under `default_base_dir` when a request names no `packs_base_dir`.
    pub fn new(
        settings: &RegisterSection,
        default_base_dir: PathBuf,
        db: Db,
        paths: PathPolicy,
        journal: std::sync::Arc<Journal>,
        locks: PackLocks,
    ) -> Self {
        Self {
            db,
            paths,
            default_base_dir,
            concurrency: settings.concurrency,
            journal,
            locks,
            keep_versions: crate::config::HistorySection::default().keep_versions,
        }
    }

    /// Keeps this many previous versions of a replaced pack (`history.keep_versions`).
    pub fn with_keep_versions(mut self, keep_versions: usize) -> Self {
        self.keep_versions = keep_versions;
        self
    }

    /// Records a registration that failed once its pack was known (tests, copy,
    /// commit): its rows were rolled back, so the row is written on its own.
    async fn record_failure(
        &self,
        pack_ref: &str,
        version: &str,
        request: &RegisterRequest,
        error: &RegisterPackError,
    ) {
        if matches!(error.stage(), Stage::Validate) {
            return;
        }
        let from = self.db.registered_version(pack_ref).await.ok().flatten();
        let row = HistoryRow {
            pack_ref: pack_ref.to_string(),
            action: crate::lifecycle::history::action_for(from.as_deref(), version),
            from: HistoryVersion {
                version: from,
                ..HistoryVersion::default()
            },
            to: HistoryVersion {
                version: Some(version.to_string()),
                ..HistoryVersion::default()
            },
            actor: request.requested_by.clone(),
            succeeded: false,
            detail: Some(error.to_string()),
        };
        let now = crate::auth::unix_now() as i64 * 1000;
        if let Err(e) = self.db.append_history(&row, now).await {
            tracing::warn!(pack = %pack_ref, "cannot record the failed registration: {e}");
        }
    }

    pub async fn register(
        &self,
        request: RegisterRequest,
        reporter: &Reporter,
    ) -> Result<RegisterReport, RegisterError> {
        let started = Instant::now();
        let base = self.base_dir(&request)?;
        let mut report = RegisterReport::default();
        let total = request.pack_paths.len() as u64;
        let (candidates, failures) = self.parse(&request, reporter).await?;
        report.failed.extend(failures);

        // Packs are prepared (copied, tested, hashed) concurrently; each one's files
        // and rows are then switched under its own lock, so ordering between packs
        // does not matter for correctness.
        let done = std::sync::atomic::AtomicU64::new(report.failed.len() as u64);
        let outcomes: Vec<(String, String, PackOutcome)> = futures::stream::iter(candidates)
            .map(|candidate| {
                let progress = reporter.with_subject(&candidate.manifest.pack_ref);
                let given = candidate.given_path.clone();
                let pack_ref = candidate.manifest.pack_ref.clone();
                let base = &base;
                let request = &request;
                let done = &done;
                async move {
                    let outcome = if progress.is_cancelled() {
                        Err(RegisterPackError::Cancelled)
                    } else {
                        self.register_one(candidate, base, request, &progress).await
                    };
                    let n = done.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
                    match &outcome {
                        Ok(registered) => progress.count(
                            Stage::Register,
                            format!(
                                "registered {} {} ({}) at {}",
                                registered.pack_ref,
                                registered.pack_version,
                                progress::count(
                                    registered.components.total(),
                                    "component",
                                    "components"
                                ),
                                registered.storage_path
                            ),
                            n,
                            Some(total),
                        ),
                        Err(error) => progress.emit(
                            Stage::Register,
                            Level::Error,
                            format!("{} failed: {error}", error.stage().failure_name()),
                            Some(n),
                            Some(total),
                        ),
                    }
                    (pack_ref, given, outcome)
                }
            })
            .buffered(self.concurrency.max(1))
            .collect()
            .await;
        for (pack_ref, pack_path, outcome) in outcomes {
            match outcome {
                Ok(registered) => report.registered.push(registered),
                Err(error) => report.failed.push(FailedRegistration {
                    pack_ref,
                    pack_path,
                    error,
                }),
            }
        }
        report.duration = started.elapsed();
        Ok(report)
    }

    async fn register_one(
        &self,
        candidate: Candidate,
        base: &Path,
        request: &RegisterRequest,
        reporter: &Reporter,
    ) -> PackOutcome {
        let (pack_ref, version) = (
            candidate.manifest.pack_ref.clone(),
            candidate.manifest.version.to_string(),
        );
        let outcome = match self.prepare(candidate, base, request, reporter).await {
            Ok(prepared) => self
                .commit(vec![prepared], request, reporter)
                .await
                .map(|mut registered| registered.remove(0))
                .map_err(|failed| failed.error),
            Err(e) => Err(e),
        };
        if let Err(error) = &outcome {
            self.record_failure(&pack_ref, &version, request, error)
                .await;
        }
        outcome
    }

    /// Registers every pack of `request` or none of them, in the order given
    /// (Install passes dependency order). Everything is validated, copied and
    /// tested first; then one database transaction writes all packs while their
    /// files are swapped in, and any failure rolls back the transaction and puts
    /// every previous directory back.
    ///
    /// `Ok(Err(failures))` names the packs that failed; nothing was changed.
    pub async fn register_all(
        &self,
        request: RegisterRequest,
        reporter: &Reporter,
    ) -> Result<Result<Vec<RegisteredPack>, Vec<FailedRegistration>>, RegisterError> {
        let base = self.base_dir(&request)?;
        let (candidates, failures) = self.parse(&request, reporter).await?;
        if !failures.is_empty() {
            return Ok(Err(failures));
        }
        let outcomes: Vec<(BatchMember, Preparation)> = futures::stream::iter(candidates)
            .map(|candidate| {
                let progress = reporter.with_subject(&candidate.manifest.pack_ref);
                let ids = BatchMember {
                    pack_ref: candidate.manifest.pack_ref.clone(),
                    version: candidate.manifest.version.to_string(),
                    given: candidate.given_path.clone(),
                };
                let (base, request) = (&base, &request);
                async move {
                    let outcome = if progress.is_cancelled() {
                        Err(RegisterPackError::Cancelled)
                    } else {
                        self.prepare(candidate, base, request, &progress).await
                    };
                    if let Err(error) = &outcome {
                        progress.error(
                            Stage::Register,
                            format!("{} failed: {error}", error.stage().failure_name()),
                        );
                    }
                    (ids, outcome)
                }
            })
            .buffered(self.concurrency.max(1))
            .collect()
            .await;
        let mut prepared = Vec::with_capacity(outcomes.len());
        let mut ids = Vec::with_capacity(outcomes.len());
        let mut failed = Vec::new();
        for (id, outcome) in outcomes {
            match outcome {
                Ok(p) => prepared.push(p),
                Err(error) => failed.push(FailedRegistration {
                    pack_ref: id.pack_ref.clone(),
                    pack_path: id.given.clone(),
                    error,
                }),
            }
            ids.push(id);
        }
        if !failed.is_empty() {
            for f in &failed {
                if let Some(id) = ids.iter().find(|id| id.pack_ref == f.pack_ref) {
                    self.record_failure(&id.pack_ref, &id.version, &request, &f.error)
                        .await;
                }
            }
            return Ok(Err(failed));
        }
        match self.commit(prepared, &request, reporter).await {
            Ok(registered) => Ok(Ok(registered)),
            Err(CommitFailed { index, error }) => {
                self.record_failure(&ids[index].pack_ref, &ids[index].version, &request, &error)
                    .await;
                Ok(Err(vec![FailedRegistration {
                    pack_ref: ids[index].pack_ref.clone(),
                    pack_path: ids[index].given.clone(),
                    error,
                }]))
            }
        }
    }

    fn base_dir(&self, request: &RegisterRequest) -> Result<PathBuf, RegisterError> {
        let base = base_dir::create(
            &self.paths,
            request.packs_base_dir.as_deref(),
            &self.default_base_dir,
        )?;
        self.journal.remember_dir(&base);
        Ok(base)
    }

    /// Reads and validates every pack of the batch (references between packs of the
    /// batch resolve).
    async fn parse(
        &self,
        request: &RegisterRequest,
        reporter: &Reporter,
    ) -> Result<(Vec<Candidate>, Vec<FailedRegistration>), RegisterError> {
        let installed: HashSet<String> = self
            .db
            .registered_packs()
            .await?
            .into_iter()
            .map(|p| p.pack_ref)
            .collect();
        let registered_components = self.db.component_refs().await?;
        let paths = self.paths.clone();
        let pack_paths = request.pack_paths.clone();
        let skip_validation = request.skip_validation;
        let strictness = if request.strict {
            Strictness::Strict
        } else {
            Strictness::Lenient
        };
        let parse_reporter = reporter.clone();
        Ok(tokio::task::spawn_blocking(move || {
            parse_batch(
                &paths,
                &pack_paths,
                skip_validation,
                strictness,
                &installed,
                &registered_components,
                &parse_reporter,
            )
        })
        .await
        .expect("pack validation panicked"))
    }

    /// Everything before the database: refusal of what the database would refuse,
    /// a staged copy beside the final place, tests against exactly those files,
    /// the checksum and the rows to write.
    #[instrument(skip_all, fields(pack = %candidate.manifest.pack_ref))]
    async fn prepare(
        &self,
        candidate: Candidate,
        base: &Path,
        request: &RegisterRequest,
        reporter: &Reporter,
    ) -> Preparation {
        let Candidate {
            dir,
            manifest,
            loaded,
            ..
        } = candidate;
        let pack_ref = manifest.pack_ref.clone();
        let target = base.join(&pack_ref);
        let in_place = dir == target;

        // Refuse early what the database would refuse anyway, before copying files.
        if !request.force
            && let Ok(Some(version)) = self.db.registered_version(&pack_ref).await
        {
            return Err(RegisterPackError::Refused(WriteError::AlreadyRegistered {
                pack_ref,
                version,
            }));
        }

        let staged = if in_place {
            None
        } else {
            Some(self.stage_copy(&dir, base, &pack_ref, reporter).await?)
        };
        let work_dir = staged.as_ref().map_or(dir.clone(), |s| s.0.clone());

        let test_result = if request.skip_tests {
            None
        } else {
            run_tests(&work_dir, base, &manifest, request.force, reporter).await?
        };

        // Provenance from Download, trusted only if the pack is unchanged since.
        let checksum_dir = work_dir.clone();
        let source_dir = dir.clone();
        // One read of the files gives the checksum and the per-file manifest that
        // VerifyPacks compares against later.
        let (digest, provenance) = tokio::task::spawn_blocking(move || {
            let digest = checksum::directory_digest(&checksum_dir, checksum::LinkPolicy::Resolve)?;
            let provenance = provenance::read(&source_dir)
                .filter(|p| p.checksum == checksum::checksum_prefixed(&digest.checksum));
            Ok::<_, ChecksumError>((digest, provenance))
        })
        .await
        .expect("checksum panicked")?;

        let mut row = pack_row(
            &manifest,
            &target,
            &digest.checksum,
            provenance.as_ref(),
            request.requested_by.clone(),
        );
        row.file_manifest = file_manifest(&digest);
        if row.file_manifest.is_none() {
            reporter.warn(
                Stage::Register,
                format!(
                    "the list of {} files is larger than {} MiB: no per-file manifest is \
                     recorded, so verify can only compare the whole checksum",
                    digest.files.len(),
                    MAX_FILE_MANIFEST_BYTES / (1024 * 1024)
                ),
            );
        }
        let mut validation = Validation::default();
        validation
            .warnings
            .extend(manifest.warnings.iter().map(|w| ValidationIssue {
                file: "pack.yaml".into(),
                message: format!("{}: {}", w.key, w.message),
            }));
        validation
            .warnings
            .extend(loaded.warnings.iter().map(|w| ValidationIssue {
                file: w.file.clone(),
                message: w.message.clone(),
            }));
        Ok(Prepared {
            components: component_rows(&loaded),
            counts: ComponentCounts::of(&loaded),
            pack_version: manifest.version.to_string(),
            runtime_names: manifest.runtime_deps.clone(),
            pack_ref,
            target,
            staged,
            row,
            test_result,
            validation,
            reporter: reporter.clone(),
        })
    }

    /// Copies the pack at `dir` beside its final place under `base` (same filesystem:
    /// the swap is a rename).
    #[instrument(skip_all, fields(pack = %pack_ref))]
    async fn stage_copy(
        &self,
        dir: &Path,
        base: &Path,
        pack_ref: &str,
        reporter: &Reporter,
    ) -> Result<StagedDir, RegisterPackError> {
        reporter.info(
            Stage::Copy,
            format!("copying {} to {}", dir.display(), base.display()),
        );
        let staging = journal::work_path(base, WorkKind::Staged, Some(pack_ref));
        let (src, dst, copy_reporter) = (dir.to_path_buf(), staging.clone(), reporter.clone());
        let paths = self.paths.clone();
        // Opened again rather than kept from parsing: a batch of thousands of packs
        // must not hold a descriptor per pack.
        let copied = tokio::task::spawn_blocking(move || {
            let opened = paths
                .open_confined(&src)
                .map_err(RegisterPackError::CopySource)?;
            let limits = crate::packfs::tree_limits();
            fetch::copy_tree(&opened, &dst, &limits, &copy_reporter)?;
            Ok::<_, RegisterPackError>(())
        })
        .await
        .expect("copy panicked");
        if let Err(e) = copied {
            let _ = fs::remove_dir_all(&staging);
            return Err(e);
        }
        Ok(StagedDir(staging))
    }

    /// The critical section: files and rows of every prepared pack change together,
    /// in the order given. On failure nothing changed and the error names the index
    /// of the pack that failed.
    ///
    /// It runs in a task of its own: a caller that leaves (or a server that shuts
    /// down) must not stop it between the swap and the commit. Should the process die
    /// inside it anyway, the journal intent written first lets the next start finish
    /// or undo the swap (see `journal`).
    async fn commit(
        &self,
        prepared: Vec<Prepared>,
        request: &RegisterRequest,
        reporter: &Reporter,
    ) -> Result<Vec<RegisteredPack>, CommitFailed> {
        // Counted before the task is spawned: a caller dropped right after the spawn
        // must find it running (an abandoned Install waits for it before settling
        // its environments by the rows).
        let running = self.journal.enter_critical();
        let critical = Critical {
            running,
            db: self.db.clone(),
            journal: std::sync::Arc::clone(&self.journal),
            locks: self.locks.clone(),
            prepared,
            force: request.force,
            keep_versions: self.keep_versions,
            env_links_before: request.env_links_before.clone(),
            reporter: reporter.clone(),
        };
        tokio::spawn(critical.run())
            .await
            .unwrap_or_else(|e| Err(CommitFailed::first(RegisterPackError::TaskFailed(e))))
    }
}

/// Everything the critical section of a registration owns.
struct Critical {
    running: journal::CriticalSection,
    db: Db,
    journal: std::sync::Arc<Journal>,
    locks: PackLocks,
    prepared: Vec<Prepared>,
    force: bool,
    keep_versions: usize,
    env_links_before: HashMap<String, crate::envs::EnvLinks>,
    reporter: Reporter,
}

impl Critical {
    #[instrument(name = "commit", skip_all, fields(packs = ?pack_refs(&self.prepared)))]
    async fn run(self) -> Result<Vec<RegisteredPack>, CommitFailed> {
        let Critical {
            running: _running,
            db,
            journal,
            locks,
            prepared,
            force,
            keep_versions,
            env_links_before,
            reporter,
        } = self;
        // The intent is written before any lock is taken, so that its fsync does not
        // serialize registrations; nothing moves until it is on disk.
        let entries: Vec<Option<SwapEntry>> = prepared
            .iter()
            .map(|p| {
                p.staged.as_ref().map(|staged| {
                    SwapEntry::new(
                        &p.pack_ref,
                        &p.target,
                        &staged.0,
                        p.row.checksum.as_deref().unwrap_or_default(),
                    )
                    .keeping(
                        (keep_versions > 0)
                            .then(|| crate::lifecycle::history::keep_path(&p.target, &p.pack_ref)),
                    )
                })
            })
            .collect();
        let journaled: Vec<SwapEntry> = entries.iter().flatten().cloned().collect();
        let intent = if journaled.is_empty() {
            None
        } else {
            let journal = std::sync::Arc::clone(&journal);
            let written = tokio::task::spawn_blocking(move || journal.begin(journaled))
                .await
                .expect("journal write panicked");
            Some(written.map_err(CommitFailed::first)?)
        };
        // Puts back every previous directory (any state of the swap undoes).
        let abandon = |intent: Option<Intent>| {
            if let Some(intent) = intent {
                let mut undone = true;
                for entry in intent.entries().iter().rev() {
                    if let Err(e) = entry.undo() {
                        undone = false;
                        tracing::error!(pack = %entry.pack_ref, error = %e, "cannot undo a swap");
                    }
                }
                if undone {
                    intent.complete();
                }
            }
        };

        // The database's pack locks cover other processes; these cover this one's
        // concurrent requests before they reach it.
        let guards = locks
            .lock_all(prepared.iter().map(|p| p.target.as_path()))
            .await;
        if prepared.len() > 1 {
            reporter.info(
                Stage::Register,
                format!(
                    "writing {} in one transaction",
                    progress::count(prepared.len(), "pack", "packs")
                ),
            );
        }
        let refs: Vec<&str> = prepared.iter().map(|p| p.pack_ref.as_str()).collect();
        let mut write = match db.begin_packs_write(&refs).await {
            Ok(write) => write,
            Err(e) => {
                abandon(intent);
                return Err(CommitFailed::first(e));
            }
        };
        let now = crate::auth::unix_now() as i64 * 1000;
        let mut ids = Vec::with_capacity(prepared.len());
        let mut after_commit = Vec::new();
        for (index, (p, entry)) in prepared.iter().zip(&entries).enumerate() {
            p.reporter.info(Stage::Register, "writing to the database");
            let keeping = Keeping {
                versions: keep_versions,
                env_links_before: env_links_before.get(&p.pack_ref),
            };
            match write_pack(&mut write, p, entry.as_ref(), force, &keeping, now).await {
                Ok((id, after)) => {
                    ids.push(id);
                    after_commit.extend(after);
                }
                Err(error) => {
                    write.rollback().await;
                    abandon(intent);
                    return Err(CommitFailed { index, error });
                }
            }
        }
        crate::fault::pause("commit: rows written");
        if let Err(e) = write.commit().await {
            // A lost connection during COMMIT leaves its outcome unknown here; the
            // rows say which way to settle the swap.
            let committed = match prepared.first() {
                Some(p) => db
                    .pack_checksum(&p.pack_ref)
                    .await
                    .ok()
                    .map(|c| c == p.row.checksum),
                None => Some(false),
            };
            match committed {
                Some(false) => {
                    abandon(intent);
                    return Err(CommitFailed::first(e));
                }
                // Unknown: the intent stays for the next start's recovery.
                None => {
                    tracing::error!(error = %e, "commit outcome unknown; the next start settles the swap");
                    return Err(CommitFailed::first(e));
                }
                Some(true) => {
                    tracing::warn!(error = %e, "commit reported an error but the rows were written");
                }
            }
        }
        crate::fault::pause("commit: committed");
        if let Some(intent) = intent {
            let mut finished = true;
            for entry in intent.entries() {
                if let Err(e) = entry.finish() {
                    finished = false;
                    tracing::warn!(pack = %entry.pack_ref, error = %e, "cannot delete a previous directory");
                }
            }
            if finished {
                intent.complete();
                // Only once every swap finished: an unfinished one still has a kept
                // directory to put in place or take from.
                tokio::task::spawn_blocking(move || after_commit.iter().for_each(AfterCommit::run))
                    .await
                    .expect("kept version clean-up panicked");
            }
        } else {
            tokio::task::spawn_blocking(move || after_commit.iter().for_each(AfterCommit::run))
                .await
                .expect("kept version clean-up panicked");
        }
        drop(guards);
        Ok(prepared
            .into_iter()
            .zip(ids)
            .map(|(p, pack_id)| RegisteredPack {
                pack_ref: p.pack_ref,
                pack_id,
                pack_version: p.pack_version,
                storage_path: p.target.display().to_string(),
                components: p.counts,
                test_result: p.test_result,
                validation: p.validation,
            })
            .collect())
    }
}

fn pack_refs(prepared: &[Prepared]) -> Vec<&str> {
    prepared.iter().map(|p| p.pack_ref.as_str()).collect()
}

/// One pack's part of the critical section, inside the write `write`: a swap a
/// stopped server left on its target is settled, its files are swapped in (`entry`,
/// when it was staged) and its rows written. On failure the caller rolls back and
/// undoes every swap.
#[instrument(skip_all, fields(pack = %p.pack_ref))]
async fn write_pack(
    write: &mut PackWrite,
    p: &Prepared,
    entry: Option<&SwapEntry>,
    force: bool,
    keeping: &Keeping<'_>,
    now: i64,
) -> Result<(i64, Option<AfterCommit>), RegisterPackError> {
    // The rows being replaced, before anything overwrites them: the history row
    // names them and a kept version snapshots them.
    let old = write.pack_snapshot(&p.pack_ref).await?;
    if let Some(entry) = entry {
        let stale = journal::stale_backups(&entry.target, &entry.pack_ref);
        if !stale.is_empty() {
            let recorded = write
                .recorded_checksum(&p.pack_ref)
                .await
                .map_err(|source| RegisterPackError::StaleSwapRecord {
                    target: entry.target.clone(),
                    source,
                })?;
            journal::settle_stale(&entry.target, &stale, recorded.as_deref()).map_err(
                |source| RegisterPackError::StaleSwap {
                    target: entry.target.clone(),
                    source,
                },
            )?;
        }
        entry.swap_in()?;
    }
    let pack_id = write.upsert_pack(&p.row, force, now).await?;
    write.replace_components(pack_id, &p.components).await?;
    if let Some(result) = &p.test_result {
        write
            .insert_test_result(pack_id, &test_row(result), now)
            .await?;
    }
    let event = PackEvent::Registered {
        pack_id,
        pack_ref: p.pack_ref.clone(),
        version: p.pack_version.clone(),
        runtime_names: p.runtime_names.clone(),
    };
    write
        .append_event(&event, now)
        .await
        .map_err(|e| RegisterPackError::Refused(WriteError::Store(e)))?;
    let history = HistoryRow {
        pack_ref: p.pack_ref.clone(),
        action: crate::lifecycle::history::action_for(
            old.as_ref().map(|o| o.row.version.as_str()),
            &p.pack_version,
        ),
        from: old
            .as_ref()
            .map_or_else(HistoryVersion::default, |o| HistoryVersion {
                version: Some(o.row.version.clone()),
                source: o.row.source.clone(),
                checksum: o.row.checksum.clone(),
            }),
        to: HistoryVersion {
            version: Some(p.pack_version.clone()),
            source: p.row.source.clone(),
            checksum: p.row.checksum.clone(),
        },
        actor: p.row.installed_by.clone(),
        succeeded: true,
        detail: None,
    };
    write.append_history(&history, now).await?;
    let after = keep_previous(write, p, entry, old.as_ref(), keeping, now).await?;
    Ok((pack_id, after))
}

/// What registration needs to keep previous versions.
struct Keeping<'a> {
    /// `history.keep_versions`.
    versions: usize,
    /// Where the pack's environment links pointed before this request switched them.
    env_links_before: Option<&'a crate::envs::EnvLinks>,
}

/// Records the replaced version (`old`, whose files the swap moved to `previous`) as
/// kept, when its files are there to keep, and then prunes the oldest kept versions
/// beyond `history.keep_versions` (so a lowered setting, 0 included, takes effect at
/// the ref's next replacement). The environment builds the kept versions name are added
/// to the ref's kept-builds file before the commit; what is left to do after it is
/// returned.
async fn keep_previous(
    write: &mut PackWrite,
    p: &Prepared,
    entry: Option<&SwapEntry>,
    old: Option<&crate::store::versions::PackSnapshot>,
    keeping: &Keeping<'_>,
    now: i64,
) -> Result<Option<AfterCommit>, RegisterPackError> {
    let envs_root = crate::buildenvs::envs_root(p.target.parent().unwrap_or(Path::new("/")));
    // A first install replaces nothing: no kept version changes.
    let Some(old) = old else {
        return Ok(None);
    };
    // An empty previous directory stands for "there were no files": nothing to keep.
    if let Some(entry) = entry
        && let Some(keep) = &entry.keep
        && fs::read_dir(&entry.previous).is_ok_and(|mut e| e.next().is_some())
    {
        let links = keeping
            .env_links_before
            .cloned()
            .unwrap_or_else(|| crate::envs::EnvSnapshot::take(&envs_root, &p.pack_ref).links());
        write
            .insert_kept_version(old, &keep.display().to_string(), &json(&links), now)
            .await?;
    }
    write
        .prune_kept_versions(&p.pack_ref, keeping.versions)
        .await?;
    let remaining = write.kept_versions(&p.pack_ref).await?;
    let after = AfterCommit::of(&p.pack_ref, &p.target, &envs_root, &remaining);
    if !after.kept_builds.is_empty() {
        let (root, pack_ref, builds) = (
            envs_root.clone(),
            p.pack_ref.clone(),
            after.kept_builds.clone(),
        );
        tokio::task::spawn_blocking(move || {
            crate::lifecycle::history::extend_kept_builds(&root, &pack_ref, builds)
        })
        .await
        .expect("kept builds write panicked")
        .map_err(|source| RegisterPackError::KeptBuilds {
            pack_ref: p.pack_ref.clone(),
            source,
        })?;
    }
    Ok(Some(after))
}

/// Identifies a pack of a batch in failure reports.
struct BatchMember {
    pack_ref: String,
    version: String,
    given: String,
}

/// A pack ready to be switched in: staged files, tests passed, rows computed.
struct Prepared {
    pack_ref: String,
    pack_version: String,
    /// `runtime_deps` as declared: the `runtime_names` of `pack.registered`.
    runtime_names: Vec<String>,
    target: PathBuf,
    /// `None` when the pack already is at its final place.
    staged: Option<StagedDir>,
    row: PackRow,
    components: Vec<ComponentRow>,
    counts: ComponentCounts,
    test_result: Option<PackTestResult>,
    validation: Validation,
    reporter: Reporter,
}

/// A staged copy; removed on drop (a no-op once it was renamed into place).
struct StagedDir(PathBuf);

impl Drop for StagedDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn parse_batch(
    paths: &PathPolicy,
    pack_paths: &[String],
    skip_validation: bool,
    strictness: Strictness,
    installed: &HashSet<String>,
    registered_components: &HashSet<(String, String)>,
    reporter: &Reporter,
) -> (Vec<Candidate>, Vec<FailedRegistration>) {
    let mut candidates: Vec<Candidate> = Vec::new();
    let mut failed = Vec::new();
    let fail = |failed: &mut Vec<FailedRegistration>,
                pack_ref: &str,
                given: &str,
                error: RegisterPackError| {
        reporter.with_subject(given).emit(
            Stage::Validate,
            Level::Error,
            error.to_string(),
            None,
            None,
        );
        failed.push(FailedRegistration {
            pack_ref: pack_ref.to_string(),
            pack_path: given.to_string(),
            error,
        });
    };
    // Reading and parsing is most of the CPU cost of a batch and each pack's is
    // independent of the others: it runs on every CPU. Duplicates are judged afterwards,
    // in the order given.
    let read: Vec<Result<(PathBuf, Manifest, LoadedPack), RegisterPackError>> =
        map_on_cpus(pack_paths, |given| read_pack(paths, given, reporter));
    let mut seen: HashMap<String, String> = HashMap::new();
    for (given, read) in pack_paths.iter().zip(read) {
        let (dir, manifest, loaded) = match read {
            Ok(read) => read,
            Err(error) => {
                fail(&mut failed, "unknown", given, error);
                continue;
            }
        };
        if let Some(first) = seen.get(&manifest.pack_ref) {
            let error = RegisterPackError::Duplicate {
                pack_ref: manifest.pack_ref.clone(),
                first: first.clone(),
            };
            fail(&mut failed, &manifest.pack_ref, given, error);
            continue;
        }
        seen.insert(manifest.pack_ref.clone(), given.clone());
        candidates.push(Candidate {
            given_path: given.clone(),
            dir,
            manifest,
            loaded,
        });
    }

    // References resolve against the whole batch plus what is registered.
    let batch_refs: HashSet<String> = candidates
        .iter()
        .map(|c| c.manifest.pack_ref.clone())
        .collect();
    let batch_components: HashSet<(String, String)> = candidates
        .iter()
        .flat_map(|c| {
            c.loaded
                .components
                .iter()
                .map(|x| (x.kind.as_str().to_string(), x.r#ref.clone()))
        })
        .collect();
    // A pack that cannot be opened again for validation fails with that error.
    let mut unopened: Vec<Option<PathError>> = std::iter::repeat_with(|| None)
        .take(candidates.len())
        .collect();
    if !skip_validation {
        let pack_exists = |r: &str| batch_refs.contains(r) || installed.contains(r);
        let component_exists = |kind: ComponentKind, r: &str| {
            let key = (kind.as_str().to_string(), r.to_string());
            batch_components.contains(&key) || registered_components.contains(&key)
        };
        let checked = std::mem::take(&mut candidates)
            .into_iter()
            .map(std::sync::Mutex::new)
            .collect::<Vec<_>>();
        unopened = map_on_cpus(&checked, |candidate| {
            let mut candidate = candidate.lock().expect("one thread per candidate");
            let candidate = &mut *candidate;
            let _span =
                tracing::info_span!("validate", pack = %candidate.manifest.pack_ref).entered();
            let opened = match paths.open_confined(&candidate.dir) {
                Ok(opened) => opened,
                Err(e) => return Some(e),
            };
            components::validate_with(
                &mut candidate.loaded,
                &opened,
                &candidate.manifest.pack_ref,
                &pack_exists,
                &component_exists,
                strictness,
            );
            None
        });
        candidates = checked
            .into_iter()
            .map(|c| c.into_inner().expect("one thread per candidate"))
            .collect();
    }
    let mut kept = Vec::new();
    for (candidate, unopened) in candidates.into_iter().zip(unopened) {
        if let Some(error) = unopened {
            fail(
                &mut failed,
                &candidate.manifest.pack_ref,
                &candidate.given_path,
                RegisterPackError::Path(error),
            );
            continue;
        }
        let progress = reporter.with_subject(&candidate.manifest.pack_ref);
        for w in &candidate.loaded.warnings {
            progress.warn(Stage::Validate, w.to_string());
        }
        if candidate.loaded.has_errors() && !skip_validation {
            let error = RegisterPackError::Invalid {
                errors: candidate.loaded.errors.clone(),
            };
            fail(
                &mut failed,
                &candidate.manifest.pack_ref,
                &candidate.given_path,
                error,
            );
            continue;
        }
        kept.push(candidate);
    }
    (kept, failed)
}

/// Reads the pack at `given`: its manifest and components, not yet validated. Each
/// pack is opened by descriptor for its reads and closed again: a batch may hold
/// thousands of packs.
#[instrument(skip(paths, reporter), fields(pack = tracing::field::Empty))]
fn read_pack(
    paths: &PathPolicy,
    given: &str,
    reporter: &Reporter,
) -> Result<(PathBuf, Manifest, LoadedPack), RegisterPackError> {
    let dir = match paths.confine(given) {
        Ok(dir) if dir.is_dir() => dir,
        Ok(_) => {
            return Err(RegisterPackError::NoDirectory {
                given: given.to_string(),
            });
        }
        Err(e) => return Err(RegisterPackError::Path(e)),
    };
    let opened = paths.open_confined(&dir).map_err(RegisterPackError::Path)?;
    let manifest = Manifest::read(&opened, dir_name::of_path(&dir), paths.read_limits())?;
    tracing::Span::current().record("pack", manifest.pack_ref.as_str());
    reporter
        .with_subject(&manifest.pack_ref)
        .info(Stage::Validate, "reading components");
    let loaded = components::load(&opened, &manifest.pack_ref, paths.read_limits().component());
    Ok((dir, manifest, loaded))
}

/// `work` applied to every item, on up to one thread per CPU (each thread takes the
/// next item not yet taken), the results in the order of `items`.
fn map_on_cpus<T: Sync, R: Send>(items: &[T], work: impl Fn(&T) -> R + Sync) -> Vec<R> {
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(items.len());
    if threads <= 1 {
        return items.iter().map(work).collect();
    }
    let next = std::sync::atomic::AtomicUsize::new(0);
    let mut done: Vec<(usize, R)> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                scope.spawn(|| {
                    let mut done = Vec::new();
                    loop {
                        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let Some(item) = items.get(i) else {
                            return done;
                        };
                        done.push((i, work(item)));
                    }
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|w| w.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
            .collect()
    });
    done.sort_unstable_by_key(|(i, _)| *i);
    done.into_iter().map(|(_, r)| r).collect()
}

/// Runs the pack's tests against `work_dir`, exactly the files that will be stored.
/// Tests that do not pass fail the pack, unless `force`.
#[instrument(skip_all, fields(pack = %manifest.pack_ref))]
async fn run_tests(
    work_dir: &Path,
    base: &Path,
    manifest: &Manifest,
    force: bool,
    reporter: &Reporter,
) -> Result<Option<PackTestResult>, RegisterPackError> {
    match &manifest.testing {
        // A testing block without runners has nothing to run (the manifest warns).
        Some(testing) if testing.enabled && !testing.runners.is_empty() => {
            reporter.info(Stage::Test, "running pack tests");
            let options = TestRunOptions {
                python: test_python(base, &manifest.pack_ref),
                ..TestRunOptions::default()
            };
            let result = packtest::run_pack_tests(
                work_dir,
                &manifest.pack_ref,
                &manifest.version.to_string(),
                testing,
                &options,
                reporter,
            )
            .await;
            if !result.passed() {
                let shortfall = TestShortfall::of(&result);
                if !force {
                    return Err(RegisterPackError::TestsFailed(shortfall));
                }
                reporter.warn(
                    Stage::Test,
                    format!("{shortfall}; registering anyway (force)"),
                );
            }
            Ok(Some(result))
        }
        _ => Ok(None),
    }
}

/// The pack's virtualenv interpreter when BuildEnvs made one, else python3.
fn test_python(base: &Path, pack_ref: &str) -> PathBuf {
    crate::envs::python_interpreter(&crate::buildenvs::envs_root(base), pack_ref)
        .unwrap_or_else(|| PathBuf::from("python3"))
}

fn json(value: &impl serde::Serialize) -> String {
    serde_json::to_string(value).unwrap_or_else(|_| "null".into())
}

fn pack_row(
    manifest: &Manifest,
    target: &Path,
    checksum_hex: &str,
    provenance: Option<&provenance::Provenance>,
    installed_by: Option<String>,
) -> PackRow {
    let dependencies: Vec<String> = manifest
        .dependencies
        .iter()
        .map(|d| d.raw.clone())
        .collect();
    // A sidecar is caller-writable: the row gets the stored (redacted) form whatever
    // the file says.
    let provenance = provenance.map(provenance::Provenance::redacted);
    let provenance = provenance.as_ref();
    PackRow {
        pack_ref: manifest.pack_ref.clone(),
        label: manifest.label.clone(),
        description: manifest.description.clone(),
        version: manifest.version.to_string(),
        conf_schema: json(&manifest.conf_schema),
        config: json(&manifest.config),
        meta: json(&manifest.meta),
        tags: json(&manifest.tags),
        runtime_deps: json(&manifest.runtime_deps),
        dependencies: json(&dependencies),
        storage_path: target.display().to_string(),
        source: provenance.map(|p| p.source.clone()),
        source_type: Some(
            provenance.map_or("local_directory".to_string(), |p| p.source_type.clone()),
        ),
        source_url: provenance.and_then(|p| p.url.clone()),
        source_ref: provenance.and_then(|p| p.reference.clone()),
        registry_url: provenance.and_then(|p| p.registry_url.clone()),
        git_commit: provenance.and_then(|p| p.git_commit.clone()),
        checksum: Some(checksum::checksum_prefixed(checksum_hex)),
        checksum_verified: provenance.is_some_and(|p| p.checksum_verified),
        registry_trust: provenance.and_then(|p| p.registry_trust.clone()),
        installed_by,
        file_manifest: None,
        expected_checksum: provenance.and_then(|p| p.expected_checksum.clone()),
    }
}

/// The stored per-file manifest is bounded: a pack of 20,000 files with long paths
/// stays well below it (about 2 MiB for 100-byte paths), a hostile one cannot make the
/// row arbitrarily large.
const MAX_FILE_MANIFEST_BYTES: usize = 16 * 1024 * 1024;

/// `{"<path>": "<hex sha256>", …}`, or `None` when larger than
/// [`MAX_FILE_MANIFEST_BYTES`].
fn file_manifest(digest: &checksum::TreeDigest) -> Option<String> {
    let map: serde_json::Map<String, serde_json::Value> = digest
        .files
        .iter()
        .map(|(path, hex)| (path.clone(), serde_json::Value::String(hex.clone())))
        .collect();
    let text = serde_json::to_string(&map).ok()?;
    (text.len() <= MAX_FILE_MANIFEST_BYTES).then_some(text)
}

fn component_rows(loaded: &LoadedPack) -> Vec<ComponentRow> {
    loaded
        .components
        .iter()
        .map(|c| ComponentRow {
            kind: c.kind.as_str(),
            r#ref: c.r#ref.clone(),
            label: c.label.clone(),
            description: c.description.clone(),
            file: c.file.clone(),
            definition: json(&c.definition),
        })
        .collect()
}

fn test_row(result: &PackTestResult) -> TestRow {
    TestRow {
        pack_version: result.pack_version.clone(),
        status: result.status.as_str().to_string(),
        total_tests: result.total_tests.into(),
        passed: result.passed.into(),
        failed: result.failed.into(),
        skipped: result.skipped.into(),
        pass_rate: result.pass_rate.clamp(0.0, 1.0),
        duration_ms: result.duration_ms as i64,
        result: result.to_json().to_string(),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    /// Each failure names the stage a user acts on, as `error_stage` did before
    /// stages were one vocabulary.
    #[test]
    fn failures_name_their_stage() {
        let shortfall = TestShortfall {
            status: TestStatus::Failed,
            passed: 1,
            total: 2,
            pass_rate: 0.5,
            required: 1.0,
        };
        let tests = RegisterPackError::TestsFailed(shortfall);
        assert_eq!(
            tests.to_string(),
            "tests failed: 1 of 2 passed (pass rate 0.50, required 1.00); use force to register anyway"
        );
        let already = RegisterPackError::from(WriteError::AlreadyRegistered {
            pack_ref: "demo".into(),
            version: "1.0.0".into(),
        });
        let invalid = RegisterPackError::Invalid {
            errors: vec![Issue {
                file: "actions/a.yaml".into(),
                message: "bad".into(),
            }],
        };
        assert_eq!(
            invalid.to_string(),
            "1 validation error(s): actions/a.yaml: bad"
        );
        let stale = RegisterPackError::StaleSwap {
            target: PathBuf::from("/packs/demo"),
            source: std::io::Error::other("denied"),
        };
        let lost = RegisterPackError::Store(StoreError::UnsupportedUrl);
        let names: Vec<&str> = [&tests, &already, &invalid, &stale, &lost]
            .iter()
            .map(|e| e.stage().failure_name())
            .collect();
        assert_eq!(
            names,
            [
                "testing",
                "validation",
                "validation",
                "file_copy",
                "database"
            ]
        );
    }

    #[test]
    fn map_on_cpus_keeps_the_order_of_its_items() {
        let items: Vec<u64> = (0..1000).collect();
        let threads = Mutex::new(HashSet::new());
        let squares = map_on_cpus(&items, |n| {
            threads.lock().unwrap().insert(std::thread::current().id());
            n * n
        });
        assert_eq!(squares, items.iter().map(|n| n * n).collect::<Vec<_>>());
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        assert!(threads.into_inner().unwrap().len() <= cpus);
        assert!(map_on_cpus(&[] as &[u64], |n| *n).is_empty());
    }
}
