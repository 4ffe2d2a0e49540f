//! Conversions between protobuf messages and stage types. Request checks that make a
//! whole request malformed (as opposed to one bad pack) answer INVALID_ARGUMENT here.

use attune_packs_proto::v1 as pb;
use tonic::Status;

use crate::{
    buildenvs, deps, download,
    envs::{NodeEnv, PythonEnv},
    install,
    packtest::PackTestResult,
    progress::{Level, ProgressEvent, Stage},
    register, source,
};

/// More paths than this in one request is a mistake, not a batch.
pub const MAX_PACKS_PER_REQUEST: usize = 10_000;

pub fn progress(event: ProgressEvent) -> pb::Progress {
    use pb::progress::{Level as L, Stage as S};
    let stage = match event.stage {
        Stage::Resolve | Stage::Lock => S::Resolve,
        Stage::Fetch => S::Fetch,
        Stage::Extract => S::Extract,
        Stage::Verify => S::Verify,
        Stage::Place => S::Place,
        Stage::Analyze => S::Analyze,
        Stage::Build => S::Build,
        Stage::Validate => S::Validate,
        Stage::Copy => S::Copy,
        Stage::Test => S::Test,
        Stage::Register => S::Register,
    };
    let level = match event.level {
        Level::Info => L::Info,
        Level::Warning => L::Warning,
        Level::Error => L::Error,
    };
    pb::Progress {
        stage: stage as i32,
        pack: event.subject,
        message: event.message,
        done: event.done,
        total: event.total,
        level: level as i32,
    }
}

/// A request's `timeout` in seconds (`default` when unset); zero is malformed.
fn timeout_secs(timeout: Option<u32>, default: u32) -> Result<std::time::Duration, Status> {
    match timeout.unwrap_or(default) {
        0 => Err(Status::invalid_argument(
            "timeout must be at least 1 second",
        )),
        secs => Ok(std::time::Duration::from_secs(secs.into())),
    }
}

/// An extra registry index, when given, must be something.
fn check_registry_url(url: Option<&str>) -> Result<(), Status> {
    match url {
        Some(u) if u.trim().is_empty() => Err(Status::invalid_argument("registry_url is empty")),
        Some(u) => check_credentials("registry_url", u),
        None => Ok(()),
    }
}

/// Credentials never enter the server through a request: refused here, before any
/// stage could store, log or echo them.
fn check_credentials(field: &str, value: &str) -> Result<(), Status> {
    source::check_no_credentials(value)
        .map_err(|e| Status::invalid_argument(format!("{field}: {e}")))
}

/// Sources to fetch (Download, Install): a call without one has nothing to do and is
/// surely a mistake.
fn check_source_list(field: &str, items: &[String]) -> Result<(), Status> {
    if items.is_empty() {
        return Err(Status::invalid_argument(format!(
            "{field} must name at least one pack"
        )));
    }
    check_pack_list(field, items)
}

/// Pack directories to analyse, build or register: an empty list is a valid request
/// with an empty answer, as the original API answered it.
fn check_pack_list(field: &str, items: &[String]) -> Result<(), Status> {
    if items.len() > MAX_PACKS_PER_REQUEST {
        return Err(Status::invalid_argument(format!(
            "{field} names {} packs; at most {MAX_PACKS_PER_REQUEST} are allowed per request",
            items.len()
        )));
    }
    if let Some(i) = items.iter().position(|p| p.trim().is_empty()) {
        return Err(Status::invalid_argument(format!("{field}[{i}] is empty")));
    }
    for (i, item) in items.iter().enumerate() {
        check_credentials(&format!("{field}[{i}]"), item)?;
    }
    Ok(())
}

pub fn dependencies_request(
    request: pb::DependenciesRequest,
) -> Result<deps::DependenciesRequest, Status> {
    check_pack_list("pack_paths", &request.pack_paths)?;
    Ok(deps::DependenciesRequest {
        pack_paths: request.pack_paths,
        skip_validation: request.skip_validation.unwrap_or(false),
    })
}

fn dependency(entry: deps::DependencyEntry) -> pb::Dependency {
    pb::Dependency {
        pack_ref: entry.pack_ref,
        version_spec: entry.version_spec,
        required_by: entry.required_by,
        already_installed: entry.already_installed,
        installed_version: entry.installed_version,
        provided_by_request: entry.provided_by_request,
    }
}

fn path_string(path: Option<std::path::PathBuf>) -> Option<String> {
    path.map(|p| p.display().to_string())
}

pub fn dependencies_result(report: deps::DependencyReport) -> pb::DependenciesResult {
    pb::DependenciesResult {
        dependencies: report.dependencies.into_iter().map(dependency).collect(),
        runtime_requirements: report
            .runtime_requirements
            .into_iter()
            .map(|(pack_ref, needs)| {
                let value = pb::RuntimeRequirements {
                    pack_ref: needs.pack_ref,
                    python: needs.python.map(|n| pb::PythonRequirement {
                        version: n.version,
                        requirements_file: path_string(n.manifest_file),
                    }),
                    nodejs: needs.nodejs.map(|n| pb::NodejsRequirement {
                        version: n.version,
                        package_file: path_string(n.manifest_file),
                    }),
                };
                (pack_ref, value)
            })
            .collect(),
        missing_dependencies: report
            .missing_dependencies
            .into_iter()
            .map(dependency)
            .collect(),
        analyzed_packs: report
            .analyzed_packs
            .into_iter()
            .map(|p| pb::AnalyzedPack {
                pack_ref: p.pack_ref,
                pack_path: p.pack_path,
                has_dependencies: p.has_dependencies,
                dependency_count: p.dependency_count,
            })
            .collect(),
        errors: report
            .errors
            .into_iter()
            .map(|e| pb::DependencyError {
                pack_path: e.pack_path,
                error: e.error,
            })
            .collect(),
    }
}

/// Seconds a pack may take when the request names no timeout.
pub const DEFAULT_DOWNLOAD_TIMEOUT_SECS: u32 = 300;

pub fn download_request(request: pb::DownloadRequest) -> Result<download::DownloadRequest, Status> {
    check_source_list("packs", &request.packs)?;
    if request.destination_dir.trim().is_empty() {
        return Err(Status::invalid_argument("destination_dir is required"));
    }
    let timeout = timeout_secs(request.timeout, DEFAULT_DOWNLOAD_TIMEOUT_SECS)?;
    check_registry_url(request.registry_url.as_deref())?;
    Ok(download::DownloadRequest {
        packs: request.packs,
        destination_dir: request.destination_dir,
        registry_url: request.registry_url,
        ref_spec: request.ref_spec.filter(|r| !r.trim().is_empty()),
        timeout,
        verify_ssl: request.verify_ssl.unwrap_or(true),
        force: request.force.unwrap_or(false),
    })
}

pub fn download_result(report: download::DownloadReport) -> pb::DownloadResult {
    let success_count = report.downloaded.len() as u32;
    let failure_count = report.failed.len() as u32;
    pb::DownloadResult {
        downloaded_packs: report
            .downloaded
            .into_iter()
            .map(|p| pb::DownloadedPack {
                source: p.source,
                source_type: p.source_type,
                pack_path: p.pack_path,
                pack_ref: p.pack_ref,
                pack_version: p.pack_version,
                git_commit: p.git_commit,
                checksum: Some(p.checksum),
            })
            .collect(),
        failed_packs: report
            .failed
            .into_iter()
            .map(|f| pb::FailedPack {
                source: f.source,
                error: f.error,
            })
            .collect(),
        total_count: success_count + failure_count,
        success_count,
        failure_count,
    }
}

pub fn register_request(
    request: pb::RegisterBatchRequest,
    requested_by: Option<String>,
) -> Result<register::RegisterRequest, Status> {
    check_pack_list("pack_paths", &request.pack_paths)?;
    Ok(register::RegisterRequest {
        pack_paths: request.pack_paths,
        packs_base_dir: request.packs_base_dir.filter(|d| !d.trim().is_empty()),
        skip_validation: request.skip_validation.unwrap_or(false),
        skip_tests: request.skip_tests.unwrap_or(false),
        force: request.force.unwrap_or(false),
        strict: request.strict.unwrap_or(false),
        requested_by,
        env_links_before: Default::default(),
    })
}

fn issues(list: Vec<register::ValidationIssue>) -> Vec<pb::ValidationIssue> {
    list.into_iter()
        .map(|i| pb::ValidationIssue {
            file: i.file,
            message: i.message,
        })
        .collect()
}

pub fn register_result(report: register::RegisterReport) -> pb::RegisterBatchResult {
    let success_count = report.registered.len() as u32;
    let failure_count = report.failed.len() as u32;
    let total_components = report.registered.iter().map(|p| p.components.total()).sum();
    pb::RegisterBatchResult {
        registered_packs: report
            .registered
            .into_iter()
            .map(|p| pb::RegisteredPack {
                pack_ref: p.pack_ref,
                pack_id: p.pack_id,
                pack_version: p.pack_version,
                storage_path: p.storage_path,
                components_registered: Some(component_counts(p.components)),
                test_result: p.test_result.map(test_result),
                validation_results: Some(pb::ValidationResults {
                    valid: p.validation.errors.is_empty(),
                    errors: issues(p.validation.errors),
                    warnings: issues(p.validation.warnings),
                }),
            })
            .collect(),
        failed_packs: report
            .failed
            .into_iter()
            .map(|f| pb::FailedRegistration {
                pack_ref: f.pack_ref,
                pack_path: f.pack_path,
                error_stage: f.error.stage().failure_name().to_string(),
                error: f.error.to_string(),
            })
            .collect(),
        summary: Some(pb::RegisterBatchSummary {
            total_packs: success_count + failure_count,
            success_count,
            failure_count,
            total_components,
            duration_ms: report.duration.as_millis() as u64,
        }),
    }
}

/// Seconds a pack's environments may take when the request names no timeout.
pub const DEFAULT_BUILD_TIMEOUT_SECS: u32 = 600;

pub fn build_envs_request(
    request: pb::BuildEnvsRequest,
) -> Result<buildenvs::BuildEnvsRequest, Status> {
    check_pack_list("pack_paths", &request.pack_paths)?;
    let timeout = timeout_secs(request.timeout, DEFAULT_BUILD_TIMEOUT_SECS)?;
    let nonempty = |v: Option<String>| v.filter(|s| !s.trim().is_empty());
    Ok(buildenvs::BuildEnvsRequest {
        pack_paths: request.pack_paths,
        packs_base_dir: nonempty(request.packs_base_dir),
        python_version: nonempty(request.python_version),
        nodejs_version: nonempty(request.nodejs_version),
        skip_python: request.skip_python.unwrap_or(false),
        skip_nodejs: request.skip_nodejs.unwrap_or(false),
        force_rebuild: request.force_rebuild.unwrap_or(false),
        timeout,
        detect_only: request.detect_only.unwrap_or(false),
        keep_previous: false,
    })
}

pub fn build_envs_result(report: buildenvs::BuildEnvsReport) -> pb::BuildEnvsResult {
    let python_envs_built = report.built.iter().filter(|b| b.python.is_some()).count() as u32;
    let nodejs_envs_built = report.built.iter().filter(|b| b.nodejs.is_some()).count() as u32;
    pb::BuildEnvsResult {
        summary: Some(pb::BuildEnvsSummary {
            total_packs: report.total_packs,
            success_count: report.total_packs - report.failed_packs,
            failure_count: report.failed_packs,
            python_envs_built,
            nodejs_envs_built,
            total_duration_ms: report.duration.as_millis() as u64,
        }),
        built_environments: report
            .built
            .into_iter()
            .map(|b| pb::BuiltEnvironment {
                pack_ref: b.pack_ref,
                pack_path: b.pack_path,
                environments: Some(environments(b.python, b.nodejs)),
                duration_ms: b.duration.as_millis() as u64,
            })
            .collect(),
        failed_environments: report
            .failed
            .into_iter()
            .map(|f| pb::FailedEnvironment {
                pack_ref: f.pack_ref,
                pack_path: f.pack_path,
                runtime: f.runtime,
                error: f.error,
            })
            .collect(),
    }
}

fn component_counts(c: register::ComponentCounts) -> pb::ComponentCounts {
    pb::ComponentCounts {
        actions: c.actions,
        sensors: c.sensors,
        triggers: c.triggers,
        rules: c.rules,
        workflows: c.workflows,
        policies: c.policies,
        aliases: c.aliases,
    }
}

fn test_result(t: PackTestResult) -> pb::TestResult {
    pb::TestResult {
        status: t.status.as_str().to_string(),
        total_tests: t.total_tests,
        passed: t.passed,
        failed: t.failed,
        skipped: t.skipped,
        pass_rate: t.pass_rate,
        duration_ms: t.duration_ms,
    }
}

fn environments(python: Option<PythonEnv>, nodejs: Option<NodeEnv>) -> pb::Environments {
    pb::Environments {
        python: python.map(|p| pb::PythonEnvironment {
            virtualenv_path: p.virtualenv_path.display().to_string(),
            requirements_installed: p.requirements_installed,
            package_count: p.package_count,
            python_version: p.python_version,
            reused: p.reused,
        }),
        nodejs: nodejs.map(|n| pb::NodejsEnvironment {
            node_modules_path: n.node_modules_path.display().to_string(),
            dependencies_installed: n.dependencies_installed,
            package_count: n.package_count,
            nodejs_version: n.nodejs_version,
            reused: n.reused,
        }),
    }
}

/// Seconds per download and per environment build of an Install.
pub const DEFAULT_INSTALL_TIMEOUT_SECS: u32 = 300;

pub fn install_request(
    request: pb::InstallRequest,
    requested_by: Option<String>,
) -> Result<install::InstallRequest, Status> {
    if request.lock.is_none() || !request.packs.is_empty() {
        check_source_list("packs", &request.packs)?;
    }
    let timeout = timeout_secs(request.timeout, DEFAULT_INSTALL_TIMEOUT_SECS)?;
    check_registry_url(request.registry_url.as_deref())?;
    for (i, locked) in request.lock.iter().flat_map(|l| &l.packs).enumerate() {
        check_credentials(&format!("lock.packs[{i}].source"), &locked.source)?;
        if let Some(url) = &locked.registry_url {
            check_credentials(&format!("lock.packs[{i}].registry_url"), url)?;
        }
    }
    let nonempty = |v: Option<String>| v.filter(|s| !s.trim().is_empty());
    Ok(install::InstallRequest {
        packs: request.packs,
        registry_url: request.registry_url,
        ref_spec: nonempty(request.ref_spec),
        packs_base_dir: nonempty(request.packs_base_dir),
        verify_ssl: request.verify_ssl.unwrap_or(true),
        timeout,
        python_version: nonempty(request.python_version),
        nodejs_version: nonempty(request.nodejs_version),
        skip_deps: request.skip_deps.unwrap_or(false),
        skip_tests: request.skip_tests.unwrap_or(false),
        force: request.force.unwrap_or(false),
        strict: request.strict.unwrap_or(false),
        dry_run: request.dry_run.unwrap_or(false),
        lock: request.lock.map(|lock| install::Lock {
            packs: lock
                .packs
                .into_iter()
                .map(|p| install::LockedPack {
                    pack_ref: p.pack_ref,
                    version: p.version,
                    source: p.source,
                    source_type: source::SourceKind::from_name(&p.source_type),
                    registry_url: p.registry_url,
                    git_commit: p.git_commit,
                    checksum: p.checksum,
                    dependencies: p.dependencies,
                })
                .collect(),
        }),
        requested_by,
    })
}

pub fn install_result(report: install::InstallReport) -> pb::InstallResult {
    let success = report.success();
    let summary = pb::InstallSummary {
        planned: report.plan.len() as u32,
        installed: report.installed.len() as u32,
        kept: report.kept() as u32,
        duration_ms: report.duration.as_millis() as u64,
    };
    pb::InstallResult {
        success,
        dry_run: report.dry_run,
        plan: report
            .plan
            .into_iter()
            .map(|p| pb::PlannedPack {
                pack_ref: p.pack_ref,
                version: p.version,
                source: p.source,
                source_type: p.source_type.as_str().to_string(),
                required_by: p.required_by,
                reason: p.reason,
                action: p.action.as_str().to_string(),
                installed_version: p.installed_version,
                registry_url: p.registry_url,
            })
            .collect(),
        installed: report
            .installed
            .into_iter()
            .map(|p| pb::InstalledPack {
                pack_ref: p.pack_ref,
                version: p.version,
                action: p.action.as_str().to_string(),
                storage_path: p.storage_path,
                pack_id: p.pack_id,
                components_registered: Some(component_counts(p.components)),
                test_result: p.test_result.map(test_result),
                environments: Some(environments(p.python, p.nodejs)),
                git_commit: p.git_commit,
                checksum: p.checksum,
            })
            .collect(),
        errors: report
            .errors
            .into_iter()
            .map(|e| pb::InstallError {
                pack: e.pack,
                stage: e.stage.failure_name().to_string(),
                error: e.error,
            })
            .collect(),
        lock: (!report.lock.packs.is_empty()).then(|| pb::InstallLock {
            lock_version: install::LOCK_VERSION,
            packs: report
                .lock
                .packs
                .into_iter()
                .map(|p| pb::LockedPack {
                    pack_ref: p.pack_ref,
                    version: p.version,
                    source: p.source,
                    source_type: p.source_type.as_str().to_string(),
                    registry_url: p.registry_url,
                    git_commit: p.git_commit,
                    checksum: p.checksum,
                    dependencies: p.dependencies,
                })
                .collect(),
        }),
        summary: Some(summary),
    }
}
