//! The Dependencies stage: what packs need (other packs, Python, Node.js) and what of
//! that is missing.
//!
//! The whole request is analysed together: a pack in the same request can satisfy
//! another's dependency, cycles between packs are reported, and so are requirements on
//! one pack that no single version can satisfy. A pack that fails to parse is an entry
//! in `errors` and does not stop the others. What a requirement means, when two
//! conflict and what a cycle is are [`dependency`]'s rules, the same Install follows.

use std::{
    collections::{BTreeMap, HashMap},
    path::PathBuf,
};

use semver::{Version, VersionReq};
use tracing::instrument;

use crate::{
    dependency::{self, Cycle, Graph},
    failure::{Failure, FailureKind},
    manifest::{Manifest, ManifestError, PackDependency, RuntimeRequirement, dir_name},
    paths::{PathError, PathPolicy},
    progress::{self, Level, Reporter, Stage},
    runtimes::{self, Detected},
    store::{Db, RegisteredPackRow, StoreError},
};

#[derive(Debug, Clone, Default)]
pub struct DependenciesRequest {
    pub pack_paths: Vec<String>,
    /// Unmet runtime requirements are not reported as errors.
    pub skip_validation: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DependencyEntry {
    pub pack_ref: String,
    /// Normalised requirement text, `*` when the entry names no version.
    pub version_spec: String,
    pub required_by: String,
    /// A registered pack satisfies the requirement.
    pub already_installed: bool,
    /// The registered version of `pack_ref`, satisfying or not.
    pub installed_version: Option<String>,
    /// The version of a pack in this request that satisfies the requirement.
    pub provided_by_request: Option<String>,
}

impl DependencyEntry {
    pub fn is_missing(&self) -> bool {
        !self.already_installed && self.provided_by_request.is_none()
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuntimeNeed {
    /// The requirement as written, `*` when only a manifest file implies the runtime.
    pub version: String,
    /// Absolute path of `requirements.txt` / `package.json`, when the pack ships one.
    pub manifest_file: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuntimeNeeds {
    pub pack_ref: String,
    pub python: Option<RuntimeNeed>,
    pub nodejs: Option<RuntimeNeed>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AnalyzedPack {
    pub pack_ref: String,
    pub pack_path: String,
    pub has_dependencies: bool,
    pub dependency_count: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AnalysisError {
    pub pack_path: String,
    pub error: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DependencyReport {
    pub dependencies: Vec<DependencyEntry>,
    pub runtime_requirements: BTreeMap<String, RuntimeNeeds>,
    pub missing_dependencies: Vec<DependencyEntry>,
    pub analyzed_packs: Vec<AnalyzedPack>,
    pub errors: Vec<AnalysisError>,
}

#[derive(Debug, thiserror::Error)]
pub enum DepsError {
    #[error("cannot list installed packs: {0}")]
    Store(#[from] StoreError),
    #[error("analysis was cancelled")]
    Cancelled,
}

impl Failure for DepsError {
    fn kind(&self) -> FailureKind {
        match self {
            DepsError::Store(_) => FailureKind::Internal,
            DepsError::Cancelled => FailureKind::Cancelled,
        }
    }
}

/// Why a pack of the request cannot be analysed, or what it needs that cannot be had.
/// The report carries the message (`AnalysisError::error`) with the pack's path; a
/// problem borrows what it names, since it lives only until it is reported.
#[derive(Debug, thiserror::Error)]
enum AnalysisProblem<'a> {
    #[error(transparent)]
    Path(#[from] PathError),
    #[error("pack directory '{given}' does not exist")]
    NotADirectory { given: &'a str },
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    #[error("pack '{pack_ref}' is also at '{first}' in this request; only that one was analysed")]
    AlsoInRequest { pack_ref: &'a str, first: &'a str },
    #[error(
        "pack '{pack_ref}' needs {runtime}{} but {runtime} is not installed on the server",
        requirement.map(|r| format!(" {}", r.raw)).unwrap_or_default()
    )]
    RuntimeMissing {
        pack_ref: &'a str,
        runtime: &'static str,
        requirement: Option<&'a RuntimeRequirement>,
    },
    #[error(
        "pack '{pack_ref}' requires {runtime} {} but the server has {} ({})",
        requirement.raw, found.version, found.command
    )]
    RuntimeMismatch {
        pack_ref: &'a str,
        runtime: &'static str,
        requirement: &'a RuntimeRequirement,
        found: &'a Detected,
    },
    #[error(
        "conflicting requirements on pack '{target}': '{first_by}' requires {first} and \
         '{second_by}' requires {second}; no version satisfies both"
    )]
    Conflict {
        target: &'a str,
        first_by: &'a str,
        first: &'a str,
        second_by: &'a str,
        second: &'a str,
    },
    #[error(transparent)]
    Cycle(#[from] Cycle),
}

impl AnalysisError {
    fn new(pack_path: &str, problem: &AnalysisProblem) -> Self {
        Self {
            pack_path: pack_path.to_string(),
            error: problem.to_string(),
        }
    }
}

/// A pack of the request that parsed.
struct Parsed {
    given_path: String,
    dir: PathBuf,
    manifest: Manifest,
}

#[instrument(skip_all, fields(packs = request.pack_paths.len()))]
pub async fn analyze(
    db: &Db,
    paths: &PathPolicy,
    request: DependenciesRequest,
    reporter: &Reporter,
) -> Result<DependencyReport, DepsError> {
    let installed = db.registered_packs().await?;
    let host = runtimes::detected().await;
    let paths = paths.clone();
    let reporter = reporter.clone();
    // Reading and parsing a thousand pack.yaml files is blocking file I/O.
    tokio::task::spawn_blocking(move || {
        let (parsed, errors) = parse_all(&paths, &request.pack_paths, &reporter)?;
        Ok(build_report(
            parsed,
            errors,
            &installed,
            host,
            request.skip_validation,
        ))
    })
    .await
    .expect("dependency analysis panicked")
}

fn parse_all(
    paths: &PathPolicy,
    pack_paths: &[String],
    reporter: &Reporter,
) -> Result<(Vec<Parsed>, Vec<AnalysisError>), DepsError> {
    let total = pack_paths.len() as u64;
    let mut parsed: Vec<Parsed> = Vec::with_capacity(pack_paths.len());
    let mut errors = Vec::new();
    let mut seen: HashMap<String, String> = HashMap::new();
    for (i, given) in pack_paths.iter().enumerate() {
        if reporter.is_cancelled() {
            return Err(DepsError::Cancelled);
        }
        let progress = reporter.with_subject(given);
        let error = match read_pack(paths, given) {
            Ok((_, manifest)) if seen.contains_key(&manifest.pack_ref) => AnalysisError::new(
                given,
                &AnalysisProblem::AlsoInRequest {
                    pack_ref: &manifest.pack_ref,
                    first: &seen[&manifest.pack_ref],
                },
            ),
            Ok((dir, manifest)) => {
                progress.with_subject(&manifest.pack_ref).count(
                    Stage::Analyze,
                    format!(
                        "analysed {} {} ({})",
                        manifest.pack_ref,
                        manifest.version,
                        progress::count(manifest.dependencies.len(), "dependency", "dependencies")
                    ),
                    i as u64 + 1,
                    Some(total),
                );
                seen.insert(manifest.pack_ref.clone(), given.clone());
                parsed.push(Parsed {
                    given_path: given.clone(),
                    dir,
                    manifest,
                });
                continue;
            }
            Err(problem) => AnalysisError::new(given, &problem),
        };
        progress.emit(
            Stage::Analyze,
            Level::Error,
            error.error.clone(),
            Some(i as u64 + 1),
            Some(total),
        );
        errors.push(error);
    }
    Ok((parsed, errors))
}

/// One pack of the request: its confined directory and its parsed pack.yaml.
#[instrument(skip(paths), fields(pack_ref = tracing::field::Empty))]
fn read_pack<'a>(
    paths: &PathPolicy,
    given: &'a str,
) -> Result<(PathBuf, Manifest), AnalysisProblem<'a>> {
    let dir = paths.confine(given)?;
    if !dir.is_dir() {
        return Err(AnalysisProblem::NotADirectory { given });
    }
    let opened = paths.open_confined(&dir)?;
    let manifest = Manifest::read(&opened, dir_name::of_path(&dir), paths.read_limits())?;
    tracing::Span::current().record("pack_ref", manifest.pack_ref.as_str());
    Ok((dir, manifest))
}

fn build_report(
    parsed: Vec<Parsed>,
    mut errors: Vec<AnalysisError>,
    installed: &[RegisteredPackRow],
    host: &runtimes::Runtimes,
    skip_validation: bool,
) -> DependencyReport {
    let installed: HashMap<&str, &RegisteredPackRow> =
        installed.iter().map(|p| (p.pack_ref.as_str(), p)).collect();
    let in_request: HashMap<&str, &Manifest> = parsed
        .iter()
        .map(|p| (p.manifest.pack_ref.as_str(), &p.manifest))
        .collect();

    let mut report = DependencyReport::default();
    for pack in &parsed {
        let m = &pack.manifest;
        for dep in &m.dependencies {
            let entry = dependency_entry(dep, &m.pack_ref, &installed, &in_request);
            if entry.is_missing() {
                report.missing_dependencies.push(entry.clone());
            }
            report.dependencies.push(entry);
        }
        report.analyzed_packs.push(AnalyzedPack {
            pack_ref: m.pack_ref.clone(),
            pack_path: pack.given_path.clone(),
            has_dependencies: !m.dependencies.is_empty(),
            dependency_count: m.dependencies.len() as u32,
        });
        if let Some(needs) = runtime_needs(pack) {
            if !skip_validation {
                errors.extend(check_runtimes(pack, &needs, host));
            }
            report
                .runtime_requirements
                .insert(m.pack_ref.clone(), needs);
        }
    }
    errors.extend(conflicts(&parsed));
    errors.extend(cycles(&parsed, &installed));
    report.errors = errors;
    report
}

fn dependency_entry(
    dep: &PackDependency,
    required_by: &str,
    installed: &HashMap<&str, &RegisteredPackRow>,
    in_request: &HashMap<&str, &Manifest>,
) -> DependencyEntry {
    let installed_version = installed.get(dep.pack_ref.as_str()).map(|p| &p.version);
    let already_installed = installed_version
        .and_then(|v| Version::parse(v).ok())
        .is_some_and(|v| dependency::satisfies(&dep.req, &v));
    let provided_by_request = in_request
        .get(dep.pack_ref.as_str())
        .filter(|m| dependency::satisfies(&dep.req, &m.version))
        .map(|m| m.version.to_string());
    DependencyEntry {
        pack_ref: dep.pack_ref.clone(),
        version_spec: dep.spec.clone(),
        required_by: required_by.to_string(),
        already_installed,
        installed_version: installed_version.cloned(),
        provided_by_request,
    }
}

/// A pack needs a runtime when pack.yaml names a requirement for it, or when it ships
/// the runtime's dependency file (`requirements.txt`, `package.json`).
fn runtime_needs(pack: &Parsed) -> Option<RuntimeNeeds> {
    let need = |req: &Option<RuntimeRequirement>, file: &str| {
        let path = pack.dir.join(file);
        let manifest_file = path.is_file().then_some(path);
        match (req, manifest_file) {
            (None, None) => None,
            (req, manifest_file) => Some(RuntimeNeed {
                version: req
                    .as_ref()
                    .map_or_else(|| "*".to_string(), |r| r.raw.clone()),
                manifest_file,
            }),
        }
    };
    let python = need(&pack.manifest.python, crate::envs::PYTHON_MANIFEST);
    let nodejs = need(&pack.manifest.nodejs, crate::envs::NODE_MANIFEST);
    (python.is_some() || nodejs.is_some()).then(|| RuntimeNeeds {
        pack_ref: pack.manifest.pack_ref.clone(),
        python,
        nodejs,
    })
}

#[instrument(skip_all, fields(pack_ref = %pack.manifest.pack_ref))]
fn check_runtimes(
    pack: &Parsed,
    needs: &RuntimeNeeds,
    host: &runtimes::Runtimes,
) -> Vec<AnalysisError> {
    let check = |runtime: &'static str,
                 need: &Option<RuntimeNeed>,
                 req: &Option<RuntimeRequirement>,
                 found: &Option<Detected>| {
        need.as_ref()?;
        let pack_ref = pack.manifest.pack_ref.as_str();
        let problem = match (req, found) {
            (_, None) => AnalysisProblem::RuntimeMissing {
                pack_ref,
                runtime,
                requirement: req.as_ref(),
            },
            (Some(requirement), Some(found)) if !requirement.matches(&found.version) => {
                AnalysisProblem::RuntimeMismatch {
                    pack_ref,
                    runtime,
                    requirement,
                    found,
                }
            }
            _ => return None,
        };
        Some(AnalysisError::new(&pack.given_path, &problem))
    };
    [
        check("Python", &needs.python, &pack.manifest.python, &host.python),
        check("Node.js", &needs.nodejs, &pack.manifest.nodejs, &host.node),
    ]
    .into_iter()
    .flatten()
    .collect()
}

/// Requirements on one pack that no single version satisfies. Requirements are
/// grouped by their text first, so a thousand packs asking for the same range cost
/// one comparison, not half a million.
fn conflicts(parsed: &[Parsed]) -> Vec<AnalysisError> {
    // target ref -> distinct spec -> (first requirer, its path, the requirement)
    let mut by_target: BTreeMap<&str, Vec<(&str, &Parsed, &VersionReq)>> = BTreeMap::new();
    for pack in parsed {
        for dep in &pack.manifest.dependencies {
            let specs = by_target.entry(dep.pack_ref.as_str()).or_default();
            if !specs.iter().any(|(spec, _, _)| *spec == dep.spec) {
                specs.push((dep.spec.as_str(), pack, &dep.req));
            }
        }
    }
    let mut errors = Vec::new();
    for (target, specs) in by_target {
        let reqs: Vec<&VersionReq> = specs.iter().map(|(_, _, req)| *req).collect();
        for (i, j) in dependency::conflicting_pairs(&reqs) {
            let (first, first_by, _) = specs[i];
            let (second, second_by, _) = specs[j];
            let problem = AnalysisProblem::Conflict {
                target,
                first_by: &first_by.manifest.pack_ref,
                first,
                second_by: &second_by.manifest.pack_ref,
                second,
            };
            errors.push(AnalysisError::new(&second_by.given_path, &problem));
        }
    }
    errors
}

/// Dependency cycles that pass through at least one pack of the request, one per
/// strongly connected component, reported at its lowest ref of the request. Installed
/// packs take part with their recorded dependencies, unless the request carries a new
/// version of them.
fn cycles(parsed: &[Parsed], installed: &HashMap<&str, &RegisteredPackRow>) -> Vec<AnalysisError> {
    let recorded: Vec<(&str, Vec<PackDependency>)> = installed
        .iter()
        .map(|(name, pack)| (*name, dependency::recorded(&pack.dependencies).collect()))
        .collect();
    let mut packs: BTreeMap<&str, Vec<&str>> = recorded
        .iter()
        .map(|(name, deps)| (*name, deps.iter().map(|d| d.pack_ref.as_str()).collect()))
        .collect();
    let mut path_of: HashMap<&str, &str> = HashMap::new();
    for pack in parsed {
        let m = &pack.manifest;
        packs.insert(
            &m.pack_ref,
            m.dependencies.iter().map(|d| d.pack_ref.as_str()).collect(),
        );
        path_of.insert(&m.pack_ref, &pack.given_path);
    }
    let graph = Graph::new(&packs);
    graph
        .strongly_connected()
        .into_iter()
        .filter(|component| component.len() > 1)
        .filter_map(|component| {
            let first = *component
                .iter()
                .find(|p| path_of.contains_key(graph.pack_ref(**p)))?;
            let cycle = graph.cycle_through(&component, first);
            Some(AnalysisError::new(
                path_of[graph.pack_ref(first)],
                &AnalysisProblem::Cycle(cycle),
            ))
        })
        .collect()
}
