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
//!    in dependency order ([`Registrar::register_all`]).
//! 4. On any failure the environments are switched back and nothing is registered;
//!    on success the replaced environments are deleted.
//!
//! The work directory lives under the packs base directory (same filesystem as the
//! final places) and is removed when the call ends, whatever happens.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    fs,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use semver::{Version, VersionReq};

use crate::{
    buildenvs::{self, BuildEnvsRequest, EnvBuilder},
    download::{DownloadRequest, DownloadedPack},
    envs::{EnvSnapshot, NodeEnv, PythonEnv},
    git,
    manifest::{Manifest, PackDependency},
    packtest::PackTestResult,
    progress::{Reporter, Stage},
    provenance,
    register::{ComponentCounts, RegisterRequest, Registrar},
    registry::{LoadedIndex, PackRequirement, VersionSelector},
    solver::{self, Catalog, Root, SolveError},
    source::PackSource,
    state::AppState,
    store::{RegisteredSource, StoreError},
};

/// The lock format this server writes and reads.
pub const LOCK_VERSION: u32 = 1;

/// `required_by` entry for packs the caller asked for.
pub const REQUEST: &str = solver::REQUEST;

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

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LockedPack {
    pub pack_ref: String,
    pub version: String,
    /// A source Download accepts (`ref@version` for registry packs, `url@commit` for
    /// git); `installed` packs have no fetchable source.
    pub source: String,
    pub source_type: String,
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
    pub source_type: String,
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
    /// download | resolve | build | validation | testing | file_copy | database | lock
    pub stage: String,
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

#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    /// The request as a whole is malformed (INVALID_ARGUMENT).
    #[error("{0}")]
    InvalidRequest(String),
    #[error("cannot read registered packs: {0}")]
    Store(#[from] StoreError),
}

/// One pack of the set being installed.
#[derive(Debug, Clone)]
struct Member {
    pack_ref: String,
    version: Version,
    /// What to download (still `pending`) or what was downloaded.
    source: String,
    source_type: String,
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

/// A failed install, before the report is assembled.
type Failures = Vec<InstallFailure>;

fn failure(pack: &str, stage: &str, error: impl Into<String>) -> InstallFailure {
    InstallFailure {
        pack: pack.to_string(),
        stage: stage.to_string(),
        error: error.into(),
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
        let base = match &request.packs_base_dir {
            Some(dir) => self
                .state
                .paths
                .confine(dir)
                .map_err(|e| InstallError::InvalidRequest(format!("packs_base_dir: {e}")))?,
            None => self.state.config.packs_base_dir(),
        };
        fs::create_dir_all(&base).map_err(|e| {
            InstallError::InvalidRequest(format!(
                "packs_base_dir: cannot create '{}': {e}",
                base.display()
            ))
        })?;
        let work = WorkDir::create(&base).map_err(|e| {
            InstallError::InvalidRequest(format!(
                "packs_base_dir: cannot create a work directory in '{}': {e}",
                base.display()
            ))
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

    /// Downloads the non-registry sources, then solves (or, with `skip_deps`,
    /// resolves each registry ref on its own).
    async fn plan_from_request(
        &self,
        request: &InstallRequest,
        work: &WorkDir,
        registered: &HashMap<String, RegisteredSource>,
        reporter: &Reporter,
    ) -> Result<Vec<Member>, Failures> {
        let github_host = &self.state.config.download.github_host;
        let mut roots: Vec<(String, VersionSelector)> = Vec::new();
        let mut to_fetch = Vec::new();
        for raw in &request.packs {
            match PackSource::parse(raw, request.ref_spec.as_deref(), github_host) {
                Ok(PackSource::Registry { pack_ref, selector }) => {
                    if roots.iter().any(|(r, _)| *r == pack_ref) {
                        return Err(vec![failure(
                            raw,
                            "resolve",
                            format!("pack '{pack_ref}' is requested more than once"),
                        )]);
                    }
                    roots.push((pack_ref, selector));
                }
                Ok(_) => to_fetch.push(raw.clone()),
                Err(e) => return Err(vec![failure(raw, "download", e.to_string())]),
            }
        }

        // Sources that only say what they are once fetched.
        let mut provided: Vec<(DownloadedPack, Manifest)> = Vec::new();
        if !to_fetch.is_empty() {
            reporter.info(
                Stage::Fetch,
                format!("downloading {} requested source(s)", to_fetch.len()),
            );
            for pack in self.download(request, work, to_fetch, reporter).await? {
                let manifest = Manifest::load(Path::new(&pack.pack_path))
                    .map_err(|e| vec![failure(&pack.source, "download", e.to_string())])?;
                if roots.iter().any(|(r, _)| *r == manifest.pack_ref) {
                    return Err(vec![failure(
                        &pack.source,
                        "resolve",
                        format!(
                            "pack '{}' is requested both from a registry and as '{}'",
                            manifest.pack_ref, pack.source
                        ),
                    )]);
                }
                provided.push((pack, manifest));
            }
        }

        let mut members = if request.skip_deps {
            self.resolve_roots_only(request, &roots, provided, reporter)
                .await?
        } else {
            self.solve(request, &roots, provided, registered, reporter)
                .await?
        };
        for member in &mut members {
            member.installed = registered.get(&member.pack_ref).cloned();
            member.action = action_for(member);
        }
        Ok(members)
    }

    async fn resolve_roots_only(
        &self,
        request: &InstallRequest,
        roots: &[(String, VersionSelector)],
        provided: Vec<(DownloadedPack, Manifest)>,
        reporter: &Reporter,
    ) -> Result<Vec<Member>, Failures> {
        let mut members = Vec::new();
        let mut errors = Vec::new();
        for (pack_ref, selector) in roots {
            match self
                .state
                .downloader
                .registry()
                .resolve(
                    pack_ref,
                    selector,
                    request.registry_url.as_deref(),
                    request.verify_ssl,
                )
                .await
            {
                Ok(resolved) => members.push(registry_member(
                    pack_ref,
                    resolved.version,
                    vec![REQUEST.to_string()],
                    Some(resolved.index_url),
                )),
                Err(e) => errors.push(failure(pack_ref, "resolve", e.to_string())),
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        for (pack, manifest) in provided {
            members.push(provided_member(pack, &manifest, vec![REQUEST.to_string()]));
        }
        reporter.warn(
            Stage::Resolve,
            "skip_deps: dependencies are not resolved or installed",
        );
        Ok(members)
    }

    async fn solve(
        &self,
        request: &InstallRequest,
        roots: &[(String, VersionSelector)],
        provided: Vec<(DownloadedPack, Manifest)>,
        registered: &HashMap<String, RegisteredSource>,
        reporter: &Reporter,
    ) -> Result<Vec<Member>, Failures> {
        let needs_registry = !roots.is_empty()
            || provided
                .iter()
                .any(|(_, manifest)| !manifest.dependencies.is_empty());
        let indices = if needs_registry {
            reporter.info(Stage::Resolve, "loading registry indices");
            self.state
                .downloader
                .registry()
                .load_all(request.registry_url.as_deref(), request.verify_ssl)
                .await
                .map_err(|e| vec![failure(REQUEST, "resolve", e.to_string())])?
        } else {
            Vec::new()
        };
        let pinned: HashMap<&str, &Version> = roots
            .iter()
            .filter_map(|(r, s)| match s {
                VersionSelector::Exact(v) => Some((r.as_str(), v)),
                _ => None,
            })
            .collect();
        let provided_refs: HashSet<&str> =
            provided.iter().map(|(_, m)| m.pack_ref.as_str()).collect();
        let (mut catalog, origins, warnings) = catalog_of(&indices, &pinned, &provided_refs);
        for w in warnings {
            reporter.warn(Stage::Resolve, w);
        }
        for installed in registered.values() {
            if provided_refs.contains(installed.pack_ref.as_str()) {
                continue;
            }
            let Ok(version) = Version::parse(&installed.version) else {
                continue;
            };
            catalog.add_installed(
                &installed.pack_ref,
                version,
                parse_dependencies(&installed.dependency_list()),
            );
        }
        let mut solver_roots = Vec::new();
        for (_, manifest) in &provided {
            catalog.add(
                &manifest.pack_ref,
                manifest.version.clone(),
                manifest
                    .dependencies
                    .iter()
                    .map(|d| (d.pack_ref.clone(), d.req.clone()))
                    .collect(),
            );
            solver_roots.push(Root {
                pack_ref: manifest.pack_ref.clone(),
                req: exact(&manifest.version),
            });
        }
        for (pack_ref, selector) in roots {
            solver_roots.push(Root {
                pack_ref: pack_ref.clone(),
                req: match selector {
                    VersionSelector::Latest => VersionReq::STAR,
                    VersionSelector::Exact(v) => exact(v),
                    VersionSelector::Range(r) => r.clone(),
                },
            });
        }

        reporter.info(
            Stage::Resolve,
            format!("resolving {} requested pack(s)", solver_roots.len()),
        );
        let cancel = reporter.clone();
        let plan = tokio::task::spawn_blocking(move || {
            solver::solve(&catalog, &solver_roots, &|| cancel.is_cancelled())
        })
        .await
        .map_err(|e| vec![failure(REQUEST, "resolve", format!("internal error: {e}"))])?
        .map_err(|e| {
            let pack = match &e {
                SolveError::UnknownPack { pack_ref, .. } => pack_ref.clone(),
                _ => REQUEST.to_string(),
            };
            vec![failure(&pack, "resolve", e.to_string())]
        })?;

        let mut provided: HashMap<String, (DownloadedPack, Manifest)> = provided
            .into_iter()
            .map(|(p, m)| (m.pack_ref.clone(), (p, m)))
            .collect();
        let mut members = Vec::with_capacity(plan.packs.len());
        for planned in plan.packs {
            if let Some((pack, manifest)) = provided.remove(&planned.pack_ref) {
                members.push(provided_member(pack, &manifest, planned.required_by));
                continue;
            }
            let registry_url = origins.get(&planned.pack_ref).cloned();
            let mut member = registry_member(
                &planned.pack_ref,
                planned.version,
                planned.required_by,
                registry_url,
            );
            if member.registry_url.is_none() {
                // Only installed, in no index: the solver can only have kept it.
                member.source_type = "installed".to_string();
            }
            members.push(member);
        }
        Ok(members)
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
                format!("downloading {} pack(s) of the plan", pending.len()),
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
        let errors = verify_fetched(members, request.skip_deps, reporter);
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
        let restore = |snapshots: &[EnvSnapshot]| {
            for s in snapshots {
                s.restore();
            }
        };
        let settings = self.state.config.build.env_settings();
        let builder = EnvBuilder {
            paths: &self.state.paths,
            settings: &settings,
            default_base_dir: base.to_path_buf(),
            concurrency: self.state.config.build.concurrency,
        };
        let built = builder
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
                restore(&snapshots);
                return Ok(Err(built
                    .failed
                    .into_iter()
                    .map(|f| failure(&f.pack_ref, "build", format!("{}: {}", f.runtime, f.error)))
                    .collect()));
            }
            Err(e) => {
                restore(&snapshots);
                return Ok(Err(vec![failure(REQUEST, "build", e.to_string())]));
            }
        };

        let registrar = Registrar {
            db: &self.state.db,
            paths: &self.state.paths,
            default_base_dir: base.to_path_buf(),
            concurrency: self.state.config.register.concurrency,
        };
        let registered = registrar
            .register_all(
                RegisterRequest {
                    pack_paths: paths,
                    packs_base_dir: Some(base.display().to_string()),
                    skip_validation: false,
                    skip_tests: request.skip_tests,
                    force: request.force,
                    requested_by: request.requested_by.clone(),
                },
                reporter,
            )
            .await;
        let registered = match registered {
            Ok(Ok(registered)) => registered,
            Ok(Err(failed)) => {
                restore(&snapshots);
                return Ok(Err(failed
                    .into_iter()
                    .map(|f| failure(&f.pack_ref, f.error_stage.as_str(), f.error))
                    .collect()));
            }
            Err(e) => {
                restore(&snapshots);
                return Err(match e {
                    crate::register::RegisterError::InvalidRequest(m) => {
                        InstallError::InvalidRequest(m)
                    }
                    crate::register::RegisterError::Store(e) => InstallError::Store(e),
                });
            }
        };
        for s in &snapshots {
            s.commit();
        }

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
            .map_err(|e| vec![failure(REQUEST, "download", e.to_string())])?;
        if !report.failed.is_empty() {
            return Err(report
                .failed
                .into_iter()
                .map(|f| failure(&f.source, "download", f.error))
                .collect());
        }
        Ok(report.downloaded)
    }
}

/// Checks the request as a whole and returns its lock, if any.
fn validate(request: &InstallRequest) -> Result<Option<Lock>, InstallError> {
    let invalid = |m: String| Err(InstallError::InvalidRequest(m));
    match (&request.lock, request.packs.is_empty()) {
        (Some(_), false) => {
            return invalid("give either `packs` or `lock`, not both".into());
        }
        (None, true) => return invalid("`packs` must name at least one pack".into()),
        _ => {}
    }
    if request.packs.iter().any(|p| p.trim().is_empty()) {
        return invalid("`packs` contains an empty source".into());
    }
    if request.timeout.is_zero() {
        return invalid("`timeout` must be at least 1 second".into());
    }
    let Some(lock) = &request.lock else {
        return Ok(None);
    };
    if lock.packs.is_empty() {
        return invalid("`lock.packs` is empty".into());
    }
    let mut seen = HashSet::new();
    for (i, p) in lock.packs.iter().enumerate() {
        let at = format!("lock.packs[{i}]");
        if !crate::manifest::is_valid_pack_ref(&p.pack_ref) {
            return invalid(format!("{at}.pack_ref: '{}' is not a pack ref", p.pack_ref));
        }
        if !seen.insert(p.pack_ref.as_str()) {
            return invalid(format!("{at}: pack '{}' is locked twice", p.pack_ref));
        }
        if Version::parse(&p.version).is_err() {
            return invalid(format!("{at}.version: '{}' is not a version", p.version));
        }
        if crate::checksum::Digest::parse(&p.checksum).is_err() {
            return invalid(format!(
                "{at}.checksum: '{}' is not `sha256:<64 hex digits>`",
                p.checksum
            ));
        }
        if p.source.trim().is_empty() {
            return invalid(format!("{at}.source is empty"));
        }
    }
    Ok(Some(lock.clone()))
}

/// The locked set, in the lock's order. Packs installed with exactly the locked
/// version and checksum are kept; the rest are fetched from their locked sources.
fn plan_from_lock(
    lock: &Lock,
    registered: &HashMap<String, RegisteredSource>,
) -> Result<Vec<Member>, Failures> {
    let mut required_by: HashMap<&str, Vec<String>> = HashMap::new();
    for p in &lock.packs {
        for dep in &p.dependencies {
            required_by
                .entry(dep.as_str())
                .or_default()
                .push(p.pack_ref.clone());
        }
    }
    let mut errors = Vec::new();
    let mut members = Vec::new();
    for p in &lock.packs {
        let installed = registered.get(&p.pack_ref).cloned();
        let same = installed
            .as_ref()
            .is_some_and(|i| i.version == p.version && i.checksum.as_deref() == Some(&p.checksum));
        if p.source_type == "installed" && !same {
            errors.push(failure(
                &p.pack_ref,
                "lock",
                format!(
                    "{} {} ({}) has no source to fetch it from and is not installed as locked",
                    p.pack_ref, p.version, p.checksum
                ),
            ));
            continue;
        }
        let mut by = required_by.remove(p.pack_ref.as_str()).unwrap_or_default();
        by.sort();
        let mut member = Member {
            pack_ref: p.pack_ref.clone(),
            version: Version::parse(&p.version).expect("validated"),
            source: p.source.clone(),
            source_type: p.source_type.clone(),
            required_by: by,
            registry_url: p.registry_url.clone(),
            fetched: None,
            locked_checksum: Some(p.checksum.clone()),
            installed,
            action: Action::Install,
        };
        member.action = if same {
            Action::Keep
        } else {
            action_for(&member)
        };
        members.push(member);
    }
    if errors.is_empty() {
        Ok(members)
    } else {
        Err(errors)
    }
}

/// The catalog the solver sees: for each ref, the versions of the first index (in
/// consultation order) that lists it, yanked ones only when pinned. Refs the
/// request provides itself are left out. Returns the catalog, which index owns
/// each ref, and warnings about entries that cannot be used.
pub fn catalog_of(
    indices: &[LoadedIndex],
    pinned: &HashMap<&str, &Version>,
    provided: &HashSet<&str>,
) -> (Catalog, HashMap<String, String>, Vec<String>) {
    let mut catalog = Catalog::new();
    let mut owner: HashMap<String, String> = HashMap::new();
    let mut warnings = Vec::new();
    let mut parsed: HashMap<&str, Option<(String, VersionReq)>> = HashMap::new();
    for loaded in indices {
        for entry in &loaded.index.packs {
            if owner.contains_key(&entry.pack_ref) || provided.contains(entry.pack_ref.as_str()) {
                continue;
            }
            owner.insert(entry.pack_ref.clone(), loaded.url.clone());
            for release in &entry.releases {
                if release.yanked && pinned.get(entry.pack_ref.as_str()) != Some(&&release.version)
                {
                    continue;
                }
                let deps = release
                    .dependencies
                    .as_ref()
                    .map(|d| d.packs.as_slice())
                    .unwrap_or_default();
                let mut dependencies = Vec::with_capacity(deps.len());
                let mut unreadable = None;
                for raw in deps {
                    match parsed
                        .entry(raw.as_str())
                        .or_insert_with(|| index_dependency(raw))
                    {
                        Some(dep) => dependencies.push(dep.clone()),
                        None => unreadable = Some(raw),
                    }
                }
                if let Some(raw) = unreadable {
                    // Installing it without knowing what it needs would be a guess.
                    warnings.push(format!(
                        "{} {} in {}: unreadable dependency '{raw}'; this version is not considered",
                        entry.pack_ref, release.version, loaded.url
                    ));
                    continue;
                }
                catalog.add(&entry.pack_ref, release.version.clone(), dependencies);
            }
        }
        for w in loaded.index.warnings.iter().filter(|w| w.entry_skipped) {
            if let Some(r) = &w.pack_ref
                && !owner.contains_key(r)
            {
                // A broken entry still claims its ref: a lower index must not serve it.
                owner.insert(r.clone(), loaded.url.clone());
                warnings.push(format!("{}: {w}", loaded.url));
            }
        }
    }
    (catalog, owner, warnings)
}

/// One `dependencies.packs` entry of an index, read as pack.yaml reads it; the
/// index format's `ref@latest` means any version.
fn index_dependency(raw: &str) -> Option<(String, VersionReq)> {
    if let Ok(dep) = PackDependency::parse(raw) {
        return Some((dep.pack_ref, dep.req));
    }
    match PackRequirement::parse(raw).ok()? {
        PackRequirement {
            pack_ref,
            selector: VersionSelector::Latest,
        } => Some((pack_ref, VersionReq::STAR)),
        _ => None,
    }
}

fn parse_dependencies(raw: &[String]) -> Vec<(String, VersionReq)> {
    raw.iter()
        .filter_map(|d| PackDependency::parse(d).ok())
        .map(|d| (d.pack_ref, d.req))
        .collect()
}

fn exact(v: &Version) -> VersionReq {
    VersionReq {
        comparators: vec![semver::Comparator {
            op: semver::Op::Exact,
            major: v.major,
            minor: Some(v.minor),
            patch: Some(v.patch),
            pre: v.pre.clone(),
        }],
    }
}

fn registry_member(
    pack_ref: &str,
    version: Version,
    required_by: Vec<String>,
    registry_url: Option<String>,
) -> Member {
    Member {
        pack_ref: pack_ref.to_string(),
        source: format!("{pack_ref}@{version}"),
        version,
        source_type: "registry".to_string(),
        required_by,
        registry_url,
        fetched: None,
        locked_checksum: None,
        installed: None,
        action: Action::Install,
    }
}

fn provided_member(pack: DownloadedPack, manifest: &Manifest, required_by: Vec<String>) -> Member {
    Member {
        pack_ref: manifest.pack_ref.clone(),
        version: manifest.version.clone(),
        source: pack.source.clone(),
        source_type: pack.source_type.clone(),
        required_by,
        registry_url: None,
        fetched: Some(pack),
        locked_checksum: None,
        installed: None,
        action: Action::Install,
    }
}

/// What installing `member` does to what is installed.
fn action_for(member: &Member) -> Action {
    let Some(installed) = &member.installed else {
        return Action::Install;
    };
    let Ok(installed_version) = Version::parse(&installed.version) else {
        return Action::Replace;
    };
    match installed_version.cmp(&member.version) {
        std::cmp::Ordering::Less => Action::Upgrade,
        std::cmp::Ordering::Greater => Action::Downgrade,
        std::cmp::Ordering::Equal => {
            let checksum = member
                .fetched
                .as_ref()
                .map(|f| f.checksum.as_str())
                .or(member.locked_checksum.as_deref());
            match checksum {
                // The registry's copy of an installed version: keep what is there.
                None => Action::Keep,
                Some(c) if installed.checksum.as_deref() == Some(c) => Action::Keep,
                Some(_) => Action::Replace,
            }
        }
    }
}

/// Changing an installed pack needs `force`; one error per pack that would change.
fn gate_changes(members: &[Member], force: bool) -> Failures {
    if force {
        return Vec::new();
    }
    members
        .iter()
        .filter(|m| m.action.changes_installed())
        .map(|m| {
            let installed = m.installed.as_ref().map_or("?", |i| i.version.as_str());
            let what = match m.action {
                Action::Replace => format!(
                    "{} {} is installed with different content",
                    m.pack_ref, installed
                ),
                _ => format!(
                    "{} {} is installed; this install needs {} ({})",
                    m.pack_ref,
                    installed,
                    m.version,
                    m.planned().reason
                ),
            };
            failure(
                &m.pack_ref,
                "resolve",
                format!("{what}; set force to {} it", m.action.as_str()),
            )
        })
        .collect()
}

/// After fetching: identity, locked checksums, and the dependencies each pack's own
/// `pack.yaml` declares, against the versions of the set (or installed ones).
fn verify_fetched(members: &[Member], skip_deps: bool, reporter: &Reporter) -> Failures {
    let versions: BTreeMap<&str, &Version> = members
        .iter()
        .map(|m| (m.pack_ref.as_str(), &m.version))
        .collect();
    let mut errors = Vec::new();
    for m in members.iter().filter(|m| m.action != Action::Keep) {
        let Some(fetched) = &m.fetched else { continue };
        if fetched.pack_ref != m.pack_ref || fetched.pack_version != m.version.to_string() {
            errors.push(failure(
                &m.pack_ref,
                "download",
                format!(
                    "'{}' is {} {}, but the plan has {} {}",
                    m.source, fetched.pack_ref, fetched.pack_version, m.pack_ref, m.version
                ),
            ));
            continue;
        }
        if let Some(locked) = &m.locked_checksum
            && *locked != fetched.checksum
        {
            errors.push(failure(
                &m.pack_ref,
                "lock",
                format!(
                    "'{}' now has checksum {}, the lock says {locked}; refusing it",
                    m.source, fetched.checksum
                ),
            ));
            continue;
        }
        let manifest = match Manifest::load(Path::new(&fetched.pack_path)) {
            Ok(m) => m,
            Err(e) => {
                errors.push(failure(&m.pack_ref, "download", e.to_string()));
                continue;
            }
        };
        for dep in &manifest.dependencies {
            let version = versions.get(dep.pack_ref.as_str()).copied();
            let problem = match version {
                Some(v) if dep.matches(v) => continue,
                Some(v) => format!(
                    "{} {} requires {dep}, but the plan has {} {v}",
                    m.pack_ref, m.version, dep.pack_ref
                ),
                None => format!(
                    "{} {} requires {dep}, which is not part of the plan",
                    m.pack_ref, m.version
                ),
            };
            if skip_deps {
                reporter.warn(Stage::Resolve, format!("{problem} (skip_deps)"));
            } else {
                errors.push(failure(&m.pack_ref, "resolve", problem));
            }
        }
    }
    errors
}

/// The lock of an installed set. Packs the install kept are described by what
/// registration recorded about them.
fn lock_of(members: &[Member]) -> Lock {
    let dependencies: HashMap<&str, Vec<String>> = {
        let mut deps: HashMap<&str, Vec<String>> = HashMap::new();
        for m in members {
            for by in m.required_by.iter().filter(|r| *r != REQUEST) {
                deps.entry(by.as_str())
                    .or_default()
                    .push(m.pack_ref.clone());
            }
        }
        deps
    };
    let packs = members
        .iter()
        .map(|m| {
            let mut deps = dependencies
                .get(m.pack_ref.as_str())
                .cloned()
                .unwrap_or_default();
            deps.sort();
            match &m.fetched {
                Some(fetched) if m.action != Action::Keep => locked_from_download(m, fetched, deps),
                _ => locked_from_registered(m, deps),
            }
        })
        .collect();
    Lock { packs }
}

fn locked_from_download(m: &Member, fetched: &DownloadedPack, deps: Vec<String>) -> LockedPack {
    let origin = provenance::read(Path::new(&fetched.pack_path));
    let registry_url = origin
        .as_ref()
        .and_then(|o| o.registry_url.clone())
        .or_else(|| m.registry_url.clone());
    let (source, source_type) = if registry_url.is_some() || m.source_type == "registry" {
        (format!("{}@{}", m.pack_ref, m.version), "registry".into())
    } else {
        match (
            &fetched.git_commit,
            origin.as_ref().and_then(|o| o.url.clone()),
        ) {
            (Some(commit), Some(url)) => {
                (format!("{}@{commit}", git::redact_url(&url)), "git".into())
            }
            (_, Some(url)) => (url, fetched.source_type.clone()),
            (_, None) => (fetched.source.clone(), fetched.source_type.clone()),
        }
    };
    LockedPack {
        pack_ref: m.pack_ref.clone(),
        version: m.version.to_string(),
        source,
        source_type,
        registry_url,
        git_commit: fetched.git_commit.clone(),
        checksum: fetched.checksum.clone(),
        dependencies: deps,
    }
}

fn locked_from_registered(m: &Member, deps: Vec<String>) -> LockedPack {
    let installed = m.installed.as_ref();
    let field = |f: fn(&RegisteredSource) -> Option<String>| installed.and_then(f);
    let registry_url = field(|i| i.registry_url.clone());
    let git_commit = field(|i| i.git_commit.clone());
    let url = field(|i| i.source_url.clone());
    let source_type = field(|i| i.source_type.clone()).unwrap_or_default();
    let (source, source_type) = if registry_url.is_some() {
        (
            format!("{}@{}", m.pack_ref, m.version),
            "registry".to_string(),
        )
    } else {
        match (&git_commit, url) {
            (Some(commit), Some(url)) => {
                (format!("{}@{commit}", git::redact_url(&url)), "git".into())
            }
            (_, Some(url)) => (url, source_type),
            // Registered from a directory without provenance: it can only be kept.
            (_, None) => (format!("{}@{}", m.pack_ref, m.version), "installed".into()),
        }
    };
    LockedPack {
        pack_ref: m.pack_ref.clone(),
        version: m.version.to_string(),
        source,
        source_type,
        registry_url,
        git_commit,
        checksum: field(|i| i.checksum.clone()).unwrap_or_default(),
        dependencies: deps,
    }
}

/// `<packs_base_dir>/.attune-install-<id>`, removed on drop.
struct WorkDir(PathBuf);

impl WorkDir {
    fn create(base: &Path) -> std::io::Result<Self> {
        let path = base.join(format!(".attune-install-{}", crate::paths::unique_suffix()));
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

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::registry::PackIndex;

    fn loaded(url: &str, json: &str) -> LoadedIndex {
        LoadedIndex {
            url: url.to_string(),
            name: None,
            index: Arc::new(PackIndex::from_slice(json.as_bytes()).unwrap()),
        }
    }

    fn roots(refs: &[&str]) -> Vec<Root> {
        refs.iter()
            .map(|r| Root {
                pack_ref: r.to_string(),
                req: VersionReq::STAR,
            })
            .collect()
    }

    /// The public Attune Standard Pack Index: every pack resolves once `core` is
    /// installed (it ships with Attune and is in no index; `msexchange` needs it).
    #[test]
    fn the_standard_index_resolves() {
        let text = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/testdata/attune-standard-index.json"
        ))
        .unwrap();
        let index = loaded("https://index.example", &text);
        let refs: Vec<String> = index
            .index
            .packs
            .iter()
            .map(|p| p.pack_ref.clone())
            .collect();
        let (mut catalog, owners, warnings) =
            catalog_of(&[index], &HashMap::new(), &HashSet::new());
        assert!(warnings.is_empty(), "{warnings:?}");
        assert_eq!(owners.len(), refs.len());
        let wanted: Vec<&str> = refs.iter().map(String::as_str).collect();
        let missing = solver::solve(&catalog, &roots(&wanted), &|| false).unwrap_err();
        assert!(
            matches!(&missing, SolveError::UnknownPack { pack_ref, .. } if pack_ref == "core"),
            "{missing}"
        );
        catalog.add_installed("core", Version::new(1, 0, 0), Vec::new());
        let plan = solver::solve(&catalog, &roots(&wanted), &|| false).unwrap();
        assert_eq!(plan.packs.len(), refs.len() + 1);
        let core = plan.packs.iter().find(|p| p.pack_ref == "core").unwrap();
        assert_eq!(core.required_by, ["msexchange"]);
    }

    fn entry(r: &str, v: &str, deps: &[&str], releases: &str) -> String {
        format!(
            r#"{{"ref": "{r}", "version": "{v}", "dependencies": {{"packs": {deps:?}}},
               "install_sources": [{{"type": "archive", "url": "https://x.example/{r}.tgz",
               "checksum": "sha256:{zeros}"}}]{releases}}}"#,
            zeros = "0".repeat(64)
        )
    }

    fn document(entries: &[String]) -> String {
        format!(
            r#"{{"registry_name": "t", "version": "1.1", "packs": [{}]}}"#,
            entries.join(",")
        )
    }

    /// Priority decides which index owns a ref (all its versions, none of a lower
    /// index's); `@latest` means any version.
    #[test]
    fn catalog_follows_index_priority() {
        let first = loaded(
            "https://first.example",
            &document(&[
                entry("app", "2.0.0", &["lib@latest"], ""),
                entry(
                    "odd",
                    "1.0.0",
                    &["lib@^1"],
                    r#", "releases": [{"version": "2.0.0", "install_sources": [{"type": "archive",
                        "url": "https://x.example/odd2.tgz", "checksum": "sha256:0000000000000000000000000000000000000000000000000000000000000000"}],
                        "dependencies": {"packs": ["lib@^2"]}}]"#,
                ),
            ]),
        );
        let second = loaded(
            "https://second.example",
            &document(&[
                entry("app", "9.0.0", &[], ""),
                entry("lib", "1.4.0", &[], ""),
            ]),
        );
        let (catalog, owners, warnings) =
            catalog_of(&[first, second], &HashMap::new(), &HashSet::new());
        assert_eq!(owners["app"], "https://first.example");
        assert_eq!(owners["lib"], "https://second.example");
        let plan = solver::solve(&catalog, &roots(&["app", "odd"]), &|| false).unwrap();
        let chosen: Vec<(String, String)> = plan
            .packs
            .iter()
            .map(|p| (p.pack_ref.clone(), p.version.to_string()))
            .collect();
        assert_eq!(
            chosen,
            [
                ("lib".to_string(), "1.4.0".to_string()),
                ("app".to_string(), "2.0.0".to_string()),
                ("odd".to_string(), "1.0.0".to_string()),
            ]
        );
        assert!(warnings.is_empty(), "{warnings:?}");
        // odd 2.0.0 needs lib 2, which the index that owns lib does not have.
        assert!(index_dependency("lib@latest").is_some_and(|(_, r)| r == VersionReq::STAR));
        assert_eq!(
            index_dependency("lib@1.2.0").unwrap().1.to_string(),
            "^1.2.0"
        );
    }
}
