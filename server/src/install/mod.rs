//! The Install stage: sources in, a registered set of packs out, all or nothing.
//!
//! 1. **Plan.** Non-registry sources (git, archives, local paths) are downloaded into
//!    a work directory first: only their `pack.yaml` says what they are and what they
//!    need. Registry refs, those packs' dependencies and the installed packs then go
//!    to the [`solver`] over every version the indices offer. Given a [`Lock`], the
//!    lock is the plan and nothing is solved.
//! 2. **Gate.** A plan that would change an installed pack (another version, other
//!    content) needs `force`. A dry run stops here and reports the plan.
//! 3. **Fetch** the registry packs of the plan (exact versions), **verify** that
//!    each pack's own `pack.yaml` agrees with the plan, **build** environments
//!    (keeping the previous builds), and **register** everything in one transaction
//!    in dependency order ([`crate::register::Registrar::register_all`]).
//! 4. On any failure the environments are switched back and nothing is registered;
//!    on success the replaced environments are deleted. The switches are journaled
//!    (`journal::EnvIntent`) before the first build, so a crash between them and the
//!    commit is settled against the rows by the next start.
//!
//! The work directory lives under the packs base directory (same filesystem as the
//! final places) and is removed when the call ends, whatever happens.
//!
//! What a requirement means and how a set is ordered are [`dependency`]'s rules, the
//! same the Dependencies stage follows.
//!
//! Modules: `resolve` (sources → plan), `catalog` (the registries as the solver sees
//! them), `plan` (actions, the force gate, checks of what was fetched), `lock`.

mod catalog;
mod lock;
mod plan;
mod resolve;

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    fmt, fs, io,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use semver::Version;

use crate::base_dir::{self, BaseDirError};
use crate::source::SourceKind;
use crate::{
    buildenvs::{self, BuildEnvsRequest},
    dependency::REQUEST,
    download::{DownloadRequest, DownloadedPack},
    envs::{EnvSnapshot, NodeEnv, PythonEnv},
    failure::{Failure, FailureKind},
    journal::EnvSwitchEntry,
    manifest::PackDependency,
    packtest::PackTestResult,
    progress::{Reporter, Stage},
    register::{ComponentCounts, RegisterError, RegisterRequest},
    state::AppState,
    store::{RegisteredSource, StoreError},
};

use self::{
    lock::lock_of,
    plan::{gate_changes, plan_from_lock, verify_fetched},
};

/// The lock format this server writes and reads.
pub const LOCK_VERSION: u32 = 1;

#[derive(Debug, Clone, Default)]
pub struct InstallRequest {
    pub packs: Vec<String>,
    pub registry_url: Option<String>,
    pub ref_spec: Option<String>,
    pub packs_base_dir: Option<String>,
    pub verify_ssl: bool,
    /// Per download and per environment build.
    pub timeout: Duration,
    pub python_version: Option<String>,
    pub nodejs_version: Option<String>,
    pub skip_deps: bool,
    pub skip_tests: bool,
    pub force: bool,
    /// Component problems fail a pack instead of dropping the component (see
    /// `RegisterRequest::strict`).
    pub strict: bool,
    pub dry_run: bool,
    pub lock: Option<Lock>,
    /// Who asked (the token's subject), recorded as `installed_by`.
    pub requested_by: Option<String>,
}

/// Everything needed to install the same set again, byte for byte.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Lock {
    /// Dependency order.
    pub packs: Vec<LockedPack>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockedPack {
    pub pack_ref: String,
    pub version: String,
    /// A source Download accepts (`ref@version` for registry packs, `url@commit` for
    /// git); `installed` packs have no fetchable source.
    pub source: String,
    pub source_type: SourceKind,
    pub registry_url: Option<String>,
    pub git_commit: Option<String>,
    /// `sha256:` + the directory checksum.
    pub checksum: String,
    pub dependencies: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Install,
    Upgrade,
    Downgrade,
    /// Same version, different content.
    Replace,
    /// Installed as needed; nothing to do.
    Keep,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Install => "install",
            Action::Upgrade => "upgrade",
            Action::Downgrade => "downgrade",
            Action::Replace => "replace",
            Action::Keep => "keep",
        }
    }

    fn changes_installed(self) -> bool {
        matches!(self, Action::Upgrade | Action::Downgrade | Action::Replace)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedPack {
    pub pack_ref: String,
    pub version: String,
    pub source: String,
    pub source_type: SourceKind,
    pub required_by: Vec<String>,
    pub reason: String,
    pub action: Action,
    pub installed_version: Option<String>,
    pub registry_url: Option<String>,
}

#[derive(Debug, Clone)]
pub struct InstalledPack {
    pub pack_ref: String,
    pub version: String,
    pub action: Action,
    pub storage_path: String,
    pub pack_id: i64,
    pub components: ComponentCounts,
    pub test_result: Option<PackTestResult>,
    pub python: Option<PythonEnv>,
    pub nodejs: Option<NodeEnv>,
    pub git_commit: Option<String>,
    pub checksum: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstallFailure {
    /// A ref, a source as given, or [`REQUEST`].
    pub pack: String,
    /// Where it failed; the wire names it with [`Stage::failure_name`].
    pub stage: Stage,
    pub error: String,
}

#[derive(Debug, Clone, Default)]
pub struct InstallReport {
    pub dry_run: bool,
    pub plan: Vec<PlannedPack>,
    pub installed: Vec<InstalledPack>,
    pub errors: Vec<InstallFailure>,
    /// Empty unless a real install succeeded.
    pub lock: Lock,
    pub duration: Duration,
}

impl InstallReport {
    pub fn success(&self) -> bool {
        self.errors.is_empty()
    }

    pub fn kept(&self) -> usize {
        self.plan
            .iter()
            .filter(|p| p.action == Action::Keep)
            .count()
    }
}

/// Why an install call fails as a whole (a pack that fails is an [`InstallFailure`]).
#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    #[error(transparent)]
    BaseDir(#[from] BaseDirError),
    #[error("packs_base_dir: cannot create a work directory in '{}': {source}", path.display())]
    CreateWorkDir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("give either `packs` or `lock`, not both")]
    PacksAndLock,
    #[error("`lock.packs` is empty")]
    EmptyLock,
    #[error("lock.packs[{index}].pack_ref: '{pack_ref}' is not a pack ref")]
    LockedRef { index: usize, pack_ref: String },
    #[error("lock.packs[{index}]: pack '{pack_ref}' is locked twice")]
    LockedTwice { index: usize, pack_ref: String },
    #[error("lock.packs[{index}].version: '{version}' is not a version")]
    LockedVersion { index: usize, version: String },
    #[error("lock.packs[{index}].checksum: '{checksum}' is not `sha256:<64 hex digits>`")]
    LockedChecksum { index: usize, checksum: String },
    #[error("lock.packs[{index}].source is empty")]
    LockedSourceEmpty { index: usize },
    #[error("cannot read registered packs: {0}")]
    Store(#[from] StoreError),
    #[error(transparent)]
    Register(#[from] RegisterError),
}

impl Failure for InstallError {
    fn kind(&self) -> FailureKind {
        match self {
            InstallError::Store(_) => FailureKind::Internal,
            InstallError::Register(e) => e.kind(),
            _ => FailureKind::InvalidRequest,
        }
    }
}

/// One pack of the set being installed.
#[derive(Debug, Clone)]
struct Member {
    pack_ref: String,
    version: Version,
    /// What to download (still `pending`) or what was downloaded.
    source: String,
    source_type: SourceKind,
    required_by: Vec<String>,
    registry_url: Option<String>,
    /// Already in the work directory.
    fetched: Option<DownloadedPack>,
    /// From a lock: the download must have exactly this checksum.
    locked_checksum: Option<String>,
    installed: Option<RegisteredSource>,
    action: Action,
}

impl Member {
    fn planned(&self) -> PlannedPack {
        let reason = if self.required_by.iter().any(|r| r == REQUEST) {
            "requested".to_string()
        } else if self.required_by.is_empty() {
            "locked".to_string()
        } else {
            format!("dependency of {}", self.required_by.join(", "))
        };
        PlannedPack {
            pack_ref: self.pack_ref.clone(),
            version: self.version.to_string(),
            source: self.source.clone(),
            source_type: self.source_type.clone(),
            required_by: self.required_by.clone(),
            reason,
            action: self.action,
            installed_version: self.installed.as_ref().map(|i| i.version.clone()),
            registry_url: self.registry_url.clone(),
        }
    }
}

/// Why a pack of the set cannot be installed as planned; the report carries the
/// message ([`InstallFailure::error`]).
#[derive(Debug, thiserror::Error)]
enum PackProblem {
    #[error("pack '{pack_ref}' is requested more than once")]
    RequestedTwice { pack_ref: String },
    #[error("pack '{pack_ref}' is requested both from a registry and as '{given}'")]
    RequestedTwoWays { pack_ref: String, given: String },
    #[error(
        "{pack_ref} {version} ({checksum}) has no source to fetch it from and is not installed \
         as locked"
    )]
    LockedNotFetchable {
        pack_ref: String,
        version: String,
        checksum: String,
    },
    #[error("'{given}' is {fetched_ref} {fetched_version}, but the plan has {pack_ref} {version}")]
    NotAsPlanned {
        given: String,
        fetched_ref: String,
        fetched_version: String,
        pack_ref: String,
        version: Version,
    },
    #[error("'{given}' now has checksum {actual}, the lock says {locked}; refusing it")]
    ChecksumChanged {
        given: String,
        actual: String,
        locked: String,
    },
    #[error(
        "{pack_ref} {version} requires {dependency}, but the plan has {} {planned}",
        dependency.pack_ref
    )]
    PlannedOtherVersion {
        pack_ref: String,
        version: Version,
        dependency: PackDependency,
        planned: Version,
    },
    #[error("{pack_ref} {version} requires {dependency}, which is not part of the plan")]
    NotPlanned {
        pack_ref: String,
        version: Version,
        dependency: PackDependency,
    },
    #[error("{pack_ref} {installed} is installed with different content; set force to replace it")]
    ContentDiffers { pack_ref: String, installed: String },
    #[error(
        "{pack_ref} {installed} is installed; this install needs {version} ({reason}); set force \
         to {} it",
        action.as_str()
    )]
    VersionDiffers {
        pack_ref: String,
        installed: String,
        version: Version,
        reason: String,
        action: Action,
    },
    #[error("internal error: {0}")]
    Panicked(#[source] tokio::task::JoinError),
}

/// A failed install, before the report is assembled.
type Failures = Vec<InstallFailure>;

/// The report's entry for `pack` failing in `stage`: the error's message is what the
/// caller sees.
fn failure(pack: &str, stage: Stage, error: impl fmt::Display) -> InstallFailure {
    InstallFailure {
        pack: pack.to_string(),
        stage,
        error: error.to_string(),
    }
}

pub struct Installer<'a> {
    pub state: &'a AppState,
}

impl Installer<'_> {
    pub async fn install(
        &self,
        request: InstallRequest,
        reporter: &Reporter,
    ) -> Result<InstallReport, InstallError> {
        let started = Instant::now();
        let lock = validate(&request)?;
        let base = base_dir::create(
            &self.state.paths,
            request.packs_base_dir.as_deref(),
            &self.state.config.packs_base_dir(),
        )?;
        self.state.journal.remember_dir(&base);
        let work = WorkDir::create(&base).map_err(|source| InstallError::CreateWorkDir {
            path: base.clone(),
            source,
        })?;
        let registered: HashMap<String, RegisteredSource> = self
            .state
            .db
            .registered_sources()
            .await?
            .into_iter()
            .map(|r| (r.pack_ref.clone(), r))
            .collect();

        let mut report = InstallReport {
            dry_run: request.dry_run,
            ..Default::default()
        };
        let planned = match &lock {
            Some(lock) => plan_from_lock(lock, &registered),
            None => {
                self.plan_from_request(&request, &work, &registered, reporter)
                    .await
            }
        };
        let mut members = match planned {
            Ok(members) => members,
            Err(errors) => {
                report.errors = errors;
                report.duration = started.elapsed();
                return Ok(report);
            }
        };
        report.plan = members.iter().map(Member::planned).collect();
        let gate = gate_changes(&members, request.force);
        if !gate.is_empty() {
            report.errors = gate;
        }
        for p in &report.plan {
            reporter.with_subject(&p.pack_ref).info(
                Stage::Resolve,
                format!("plan: {} {} ({})", p.action.as_str(), p.version, p.reason),
            );
        }
        if request.dry_run || !report.errors.is_empty() {
            report.duration = started.elapsed();
            return Ok(report);
        }

        match self
            .apply(&request, &base, &work, &mut members, reporter)
            .await?
        {
            Ok(installed) => {
                report.installed = installed;
                report.lock = lock_of(&members);
            }
            Err(errors) => report.errors = errors,
        }
        report.duration = started.elapsed();
        Ok(report)
    }

    /// Everything after the plan: fetch, verify, build, register. `Err` lists the
    /// failures; then nothing was changed.
    async fn apply(
        &self,
        request: &InstallRequest,
        base: &Path,
        work: &WorkDir,
        members: &mut [Member],
        reporter: &Reporter,
    ) -> Result<Result<Vec<InstalledPack>, Failures>, InstallError> {
        // Fetch what the plan still needs.
        let pending: Vec<usize> = (0..members.len())
            .filter(|i| members[*i].action != Action::Keep && members[*i].fetched.is_none())
            .collect();
        if !pending.is_empty() {
            reporter.info(
                Stage::Fetch,
                format!(
                    "downloading {} of the plan",
                    crate::progress::count(pending.len(), "pack", "packs")
                ),
            );
            let downloaded = match self
                .fetch_pending(request, work, members, &pending, reporter)
                .await
            {
                Ok(d) => d,
                Err(errors) => return Ok(Err(errors)),
            };
            for (i, pack) in downloaded {
                members[i].fetched = Some(pack);
            }
        }

        // Each pack's own pack.yaml must agree with the plan.
        let errors = verify_fetched(
            members,
            request.skip_deps,
            self.state.paths.read_limits(),
            reporter,
        );
        if !errors.is_empty() {
            return Ok(Err(errors));
        }

        let to_register: Vec<usize> = (0..members.len())
            .filter(|i| members[*i].action != Action::Keep)
            .collect();
        if to_register.is_empty() {
            reporter.info(Stage::Register, "every pack is already installed");
            return Ok(Ok(Vec::new()));
        }
        let paths: Vec<String> = to_register
            .iter()
            .map(|i| {
                members[*i]
                    .fetched
                    .as_ref()
                    .expect("fetched above")
                    .pack_path
                    .clone()
            })
            .collect();

        // Environments: built beside the current ones, switched, and switched back
        // should anything fail.
        let envs_root = buildenvs::envs_root(base);
        let snapshots: Vec<EnvSnapshot> = to_register
            .iter()
            .map(|i| EnvSnapshot::take(&envs_root, &members[*i].pack_ref))
            .collect();
        // Journaled before the first build: a crash between a switch and the
        // registration's commit is settled by the next start against the rows.
        let entries: Vec<EnvSwitchEntry> = to_register
            .iter()
            .zip(&snapshots)
            .map(|(i, snapshot)| EnvSwitchEntry {
                pack_ref: members[*i].pack_ref.clone(),
                envs_root: envs_root.clone(),
                checksum: members[*i]
                    .fetched
                    .as_ref()
                    .expect("fetched above")
                    .checksum
                    .clone(),
                previous: snapshot.links(),
                switched_to: None,
            })
            .collect();
        let (journal, db) = (
            std::sync::Arc::clone(&self.state.journal),
            self.state.db.clone(),
        );
        let env_intent = match tokio::task::spawn_blocking(move || journal.begin_envs(&db, entries))
            .await
            .expect("journal write panicked")
        {
            Ok(intent) => intent,
            Err(e) => return Ok(Err(vec![failure(REQUEST, Stage::Build, e)])),
        };
        let built = self
            .state
            .env_builder
            .build(
                BuildEnvsRequest {
                    pack_paths: paths.clone(),
                    packs_base_dir: Some(base.display().to_string()),
                    python_version: request.python_version.clone(),
                    nodejs_version: request.nodejs_version.clone(),
                    skip_python: false,
                    skip_nodejs: false,
                    force_rebuild: false,
                    timeout: request.timeout,
                    detect_only: false,
                    keep_previous: true,
                },
                reporter,
            )
            .await;
        let built = match built {
            Ok(built) if built.failed.is_empty() => built,
            Ok(built) => {
                env_intent.restore();
                return Ok(Err(built
                    .failed
                    .into_iter()
                    .map(|f| {
                        failure(
                            &f.pack_ref,
                            Stage::Build,
                            format_args!("{}: {}", f.runtime, f.error),
                        )
                    })
                    .collect()));
            }
            Err(e) => {
                env_intent.restore();
                return Ok(Err(vec![failure(REQUEST, Stage::Build, e)]));
            }
        };
        let mut env_intent = env_intent;
        let (env_intent, recorded) = tokio::task::spawn_blocking(move || {
            let recorded = env_intent.record_switched();
            (env_intent, recorded)
        })
        .await
        .expect("journal write panicked");
        if let Err(e) = recorded {
            env_intent.restore();
            return Ok(Err(vec![failure(REQUEST, Stage::Build, e)]));
        }
        crate::fault::pause("install: environments switched");

        let registered = self
            .state
            .registrar
            .register_all(
                RegisterRequest {
                    pack_paths: paths,
                    packs_base_dir: Some(base.display().to_string()),
                    skip_validation: false,
                    skip_tests: request.skip_tests,
                    force: request.force,
                    strict: request.strict,
                    requested_by: request.requested_by.clone(),
                    env_links_before: to_register
                        .iter()
                        .zip(&snapshots)
                        .map(|(i, snapshot)| (members[*i].pack_ref.clone(), snapshot.links()))
                        .collect(),
                },
                reporter,
            )
            .await;
        let registered = match registered {
            Ok(Ok(registered)) => registered,
            Ok(Err(failed)) => {
                settle_envs(env_intent).await;
                return Ok(Err(failed
                    .into_iter()
                    .map(|f| failure(&f.pack_ref, f.stage(), &f.error))
                    .collect()));
            }
            Err(e) => {
                settle_envs(env_intent).await;
                return Err(e.into());
            }
        };
        env_intent.committed();

        let mut envs: HashMap<String, buildenvs::BuiltEnvironment> = built
            .built
            .into_iter()
            .map(|b| (b.pack_ref.clone(), b))
            .collect();
        let installed = registered
            .into_iter()
            .zip(&to_register)
            .map(|(r, i)| {
                let member = &members[*i];
                let fetched = member.fetched.as_ref().expect("fetched above");
                let env = envs.remove(&r.pack_ref);
                reporter.with_subject(&r.pack_ref).info(
                    Stage::Register,
                    format!("{} {} done", member.action.as_str(), r.pack_version),
                );
                InstalledPack {
                    pack_ref: r.pack_ref,
                    version: r.pack_version,
                    action: member.action,
                    storage_path: r.storage_path,
                    pack_id: r.pack_id,
                    components: r.components,
                    test_result: r.test_result,
                    python: env.as_ref().and_then(|e| e.python.clone()),
                    nodejs: env.and_then(|e| e.nodejs),
                    git_commit: fetched.git_commit.clone(),
                    checksum: fetched.checksum.clone(),
                }
            })
            .collect();
        Ok(Ok(installed))
    }

    /// Downloads the members at `pending`. Locked registry packs are fetched from
    /// the index the lock names (as the call's extra index unless it is configured,
    /// so that configured headers still apply).
    async fn fetch_pending(
        &self,
        request: &InstallRequest,
        work: &WorkDir,
        members: &[Member],
        pending: &[usize],
        reporter: &Reporter,
    ) -> Result<Vec<(usize, DownloadedPack)>, Failures> {
        let configured: HashSet<String> = self
            .state
            .downloader
            .registry()
            .indices()
            .into_iter()
            .map(|i| i.url)
            .collect();
        let mut groups: BTreeMap<Option<String>, Vec<usize>> = BTreeMap::new();
        for &i in pending {
            let extra = match (&request.lock, &members[i].registry_url) {
                (Some(_), Some(url)) if !configured.contains(url) => Some(url.clone()),
                _ => request.registry_url.clone(),
            };
            groups.entry(extra).or_default().push(i);
        }
        let mut out = Vec::with_capacity(pending.len());
        for (extra, indices) in groups {
            let group_request = InstallRequest {
                registry_url: extra,
                ..request.clone()
            };
            let sources = indices.iter().map(|i| members[*i].source.clone()).collect();
            let downloaded = self
                .download(&group_request, work, sources, reporter)
                .await?;
            out.extend(indices.into_iter().zip(downloaded));
        }
        Ok(out)
    }

    /// Downloads `sources` into the work directory; every one must succeed.
    async fn download(
        &self,
        request: &InstallRequest,
        work: &WorkDir,
        sources: Vec<String>,
        reporter: &Reporter,
    ) -> Result<Vec<DownloadedPack>, Failures> {
        let report = self
            .state
            .downloader
            .download(
                DownloadRequest {
                    packs: sources,
                    destination_dir: work.path().display().to_string(),
                    registry_url: request.registry_url.clone(),
                    ref_spec: request.ref_spec.clone(),
                    timeout: request.timeout,
                    verify_ssl: request.verify_ssl,
                    force: false,
                },
                reporter,
            )
            .await
            .map_err(|e| vec![failure(REQUEST, Stage::Fetch, e)])?;
        if !report.failed.is_empty() {
            return Err(report
                .failed
                .into_iter()
                .map(|f| failure(&f.source, Stage::Fetch, f.error))
                .collect());
        }
        Ok(report.downloaded)
    }
}

/// After a failed registration: the environments go back to the previous builds
/// unless the rows say the registration committed after all (a connection lost
/// during COMMIT). If the rows cannot be read, the intent stays for the next start.
async fn settle_envs(intent: crate::journal::EnvIntent) {
    if let Err(e) = intent.settle().await {
        tracing::error!("cannot settle the environments of a failed install: {e}");
    }
}

/// Checks the request as a whole and returns its lock, if any.
fn validate(request: &InstallRequest) -> Result<Option<Lock>, InstallError> {
    // The door (`grpc::convert`) has checked `packs` and `timeout`.
    if request.lock.is_some() && !request.packs.is_empty() {
        return Err(InstallError::PacksAndLock);
    }
    let Some(lock) = &request.lock else {
        return Ok(None);
    };
    if lock.packs.is_empty() {
        return Err(InstallError::EmptyLock);
    }
    let mut seen = HashSet::new();
    for (index, p) in lock.packs.iter().enumerate() {
        if !crate::manifest::is_valid_pack_ref(&p.pack_ref) {
            return Err(InstallError::LockedRef {
                index,
                pack_ref: p.pack_ref.clone(),
            });
        }
        if !seen.insert(p.pack_ref.as_str()) {
            return Err(InstallError::LockedTwice {
                index,
                pack_ref: p.pack_ref.clone(),
            });
        }
        if Version::parse(&p.version).is_err() {
            return Err(InstallError::LockedVersion {
                index,
                version: p.version.clone(),
            });
        }
        if crate::checksum::Digest::parse(&p.checksum).is_err() {
            return Err(InstallError::LockedChecksum {
                index,
                checksum: p.checksum.clone(),
            });
        }
        if p.source.trim().is_empty() {
            return Err(InstallError::LockedSourceEmpty { index });
        }
    }
    Ok(Some(lock.clone()))
}

/// `<packs_base_dir>/.attune-install.<owner>.<id>`, removed on drop (or, after a crash,
/// at the next start).
struct WorkDir(PathBuf);

impl WorkDir {
    fn create(base: &Path) -> std::io::Result<Self> {
        let path = crate::journal::work_path(base, crate::journal::WorkKind::InstallWork, None);
        fs::create_dir(&path)?;
        Ok(Self(path))
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}
