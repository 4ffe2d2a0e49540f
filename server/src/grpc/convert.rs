//! Conversions between protobuf messages and stage types. Request checks that make a
//! whole request malformed (as opposed to one bad pack) answer INVALID_ARGUMENT here.

use attune_packs_proto::v1 as pb;
use tonic::Status;

use crate::{
    deps,
    progress::{Level, ProgressEvent, Stage},
};

/// More paths than this in one request is a mistake, not a batch.
pub const MAX_PACKS_PER_REQUEST: usize = 10_000;

pub fn progress(event: ProgressEvent) -> pb::Progress {
    use pb::progress::{Level as L, Stage as S};
    let stage = match event.stage {
        Stage::Resolve => S::Resolve,
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

fn check_pack_list(field: &str, items: &[String]) -> Result<(), Status> {
    if items.is_empty() {
        return Err(Status::invalid_argument(format!(
            "{field} must name at least one pack"
        )));
    }
    if items.len() > MAX_PACKS_PER_REQUEST {
        return Err(Status::invalid_argument(format!(
            "{field} names {} packs; at most {MAX_PACKS_PER_REQUEST} are allowed per request",
            items.len()
        )));
    }
    if let Some(i) = items.iter().position(|p| p.trim().is_empty()) {
        return Err(Status::invalid_argument(format!("{field}[{i}] is empty")));
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
