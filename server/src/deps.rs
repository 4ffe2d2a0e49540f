//! The Dependencies stage: what packs need (other packs, Python, Node.js) and what of
//! that is missing.
//!
//! The whole request is analysed together: a pack in the same request can satisfy
//! another's dependency, cycles between packs are reported, and so are requirements on
//! one pack that no single version can satisfy. A pack that fails to parse is an entry
//! in `errors` and does not stop the others.

use crate::failure::{Failure, FailureKind};
use std::{
    collections::{BTreeMap, HashMap, HashSet},
    path::PathBuf,
};

use semver::{Version, VersionReq};
use version_ranges::Ranges;

use crate::{
    manifest::{Manifest, PackDependency, RuntimeRequirement},
    paths::PathPolicy,
    progress::{Reporter, Stage},
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

/// A pack of the request that parsed.
struct Parsed {
    given_path: String,
    dir: PathBuf,
    manifest: Manifest,
}

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
        let outcome = paths
            .confine(given)
            .map_err(|e| e.to_string())
            .and_then(|dir| {
                if !dir.is_dir() {
                    return Err(format!("pack directory '{given}' does not exist"));
                }
                let opened = paths.open_confined(&dir).map_err(|e| e.to_string())?;
                Manifest::read(&opened, paths.read_limits())
                    .map(|manifest| (dir, manifest))
                    .map_err(|e| e.to_string())
            })
            .and_then(|(dir, manifest)| match seen.get(&manifest.pack_ref) {
                Some(first) => Err(format!(
                    "pack '{}' is also at '{first}' in this request; only that one was analysed",
                    manifest.pack_ref
                )),
                None => Ok((dir, manifest)),
            });
        match outcome {
            Ok((dir, manifest)) => {
                progress.with_subject(&manifest.pack_ref).count(
                    Stage::Analyze,
                    format!(
                        "analysed {} {} ({} dependencies)",
                        manifest.pack_ref,
                        manifest.version,
                        manifest.dependencies.len()
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
            }
            Err(error) => {
                progress.emit(
                    Stage::Analyze,
                    crate::progress::Level::Error,
                    error.clone(),
                    Some(i as u64 + 1),
                    Some(total),
                );
                errors.push(AnalysisError {
                    pack_path: given.clone(),
                    error,
                });
            }
        }
    }
    Ok((parsed, errors))
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
        .is_some_and(|v| dep.req.matches(&v));
    let provided_by_request = in_request
        .get(dep.pack_ref.as_str())
        .filter(|m| dep.req.matches(&m.version))
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

fn check_runtimes(
    pack: &Parsed,
    needs: &RuntimeNeeds,
    host: &runtimes::Runtimes,
) -> Vec<AnalysisError> {
    let mut errors = Vec::new();
    let mut check = |name: &str,
                     need: &Option<RuntimeNeed>,
                     req: &Option<RuntimeRequirement>,
                     found: &Option<Detected>| {
        if need.is_none() {
            return;
        }
        let problem = match (req, found) {
            (_, None) => Some(format!(
                "pack '{}' needs {name}{} but {name} is not installed on the server",
                pack.manifest.pack_ref,
                req.as_ref()
                    .map(|r| format!(" {}", r.raw))
                    .unwrap_or_default()
            )),
            (Some(req), Some(found)) if !req.matches(&found.version) => Some(format!(
                "pack '{}' requires {name} {} but the server has {} ({})",
                pack.manifest.pack_ref, req.raw, found.version, found.command
            )),
            _ => None,
        };
        if let Some(error) = problem {
            errors.push(AnalysisError {
                pack_path: pack.given_path.clone(),
                error,
            });
        }
    };
    check("Python", &needs.python, &pack.manifest.python, &host.python);
    check("Node.js", &needs.nodejs, &pack.manifest.nodejs, &host.node);
    errors
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
        let ranges: Vec<Ranges<Version>> = specs
            .iter()
            .map(|(_, _, req)| Ranges::from_req((*req).clone()))
            .collect();
        for i in 0..specs.len() {
            for j in i + 1..specs.len() {
                if ranges[i].intersection(&ranges[j]).is_empty() {
                    let (spec_a, pack_a, _) = specs[i];
                    let (spec_b, pack_b, _) = specs[j];
                    errors.push(AnalysisError {
                        pack_path: pack_b.given_path.clone(),
                        error: format!(
                            "conflicting requirements on pack '{target}': '{}' requires {spec_a} \
                             and '{}' requires {spec_b}; no version satisfies both",
                            pack_a.manifest.pack_ref, pack_b.manifest.pack_ref
                        ),
                    });
                }
            }
        }
    }
    errors
}

/// Dependency cycles that pass through at least one pack of the request. Installed
/// packs take part with their recorded dependencies, unless the request carries a
/// new version of them.
fn cycles(parsed: &[Parsed], installed: &HashMap<&str, &RegisteredPackRow>) -> Vec<AnalysisError> {
    let mut graph: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (name, pack) in installed {
        let deps = pack
            .dependencies
            .iter()
            .filter_map(|d| PackDependency::parse(d).ok())
            .map(|d| d.pack_ref)
            .collect();
        graph.insert(name.to_string(), deps);
    }
    let mut path_of: HashMap<&str, &str> = HashMap::new();
    for pack in parsed {
        let m = &pack.manifest;
        graph.insert(
            m.pack_ref.clone(),
            m.dependencies.iter().map(|d| d.pack_ref.clone()).collect(),
        );
        path_of.insert(&m.pack_ref, &pack.given_path);
    }
    strongly_connected(&graph)
        .into_iter()
        .filter(|scc| scc.len() > 1)
        .filter_map(|scc| {
            let first = scc.iter().find(|n| path_of.contains_key(n.as_str()))?;
            let cycle = cycle_through(&graph, &scc, first);
            Some(AnalysisError {
                pack_path: path_of[first.as_str()].to_string(),
                error: format!("dependency cycle: {}", cycle.join(" -> ")),
            })
        })
        .collect()
}

/// Tarjan's algorithm, iterative (a long dependency chain must not overflow the stack).
fn strongly_connected(graph: &BTreeMap<String, Vec<String>>) -> Vec<Vec<String>> {
    let names: Vec<&String> = graph.keys().collect();
    let index_of: HashMap<&str, usize> = names
        .iter()
        .enumerate()
        .map(|(i, n)| (n.as_str(), i))
        .collect();
    let edges: Vec<Vec<usize>> = names
        .iter()
        .map(|n| {
            graph[*n]
                .iter()
                .filter_map(|d| index_of.get(d.as_str()).copied())
                .collect()
        })
        .collect();
    let n = names.len();
    let mut index = vec![usize::MAX; n];
    let mut low = vec![0; n];
    let mut on_stack = vec![false; n];
    let mut stack = Vec::new();
    let mut next = 0;
    let mut out = Vec::new();
    for start in 0..n {
        if index[start] != usize::MAX {
            continue;
        }
        // (node, next edge to look at)
        let mut work = vec![(start, 0usize)];
        while let Some(&mut (v, ref mut edge)) = work.last_mut() {
            if *edge == 0 && index[v] == usize::MAX {
                index[v] = next;
                low[v] = next;
                next += 1;
                stack.push(v);
                on_stack[v] = true;
            }
            if let Some(&w) = edges[v].get(*edge) {
                *edge += 1;
                if index[w] == usize::MAX {
                    work.push((w, 0));
                } else if on_stack[w] {
                    low[v] = low[v].min(index[w]);
                }
                continue;
            }
            work.pop();
            if let Some(&(parent, _)) = work.last() {
                low[parent] = low[parent].min(low[v]);
            }
            if low[v] == index[v] {
                let mut scc = Vec::new();
                while let Some(w) = stack.pop() {
                    on_stack[w] = false;
                    scc.push(names[w].clone());
                    if w == v {
                        break;
                    }
                }
                scc.sort();
                out.push(scc);
            }
        }
    }
    out
}

/// A concrete cycle from `start` back to itself, staying inside `scc`.
fn cycle_through(
    graph: &BTreeMap<String, Vec<String>>,
    scc: &[String],
    start: &str,
) -> Vec<String> {
    let members: HashSet<&str> = scc.iter().map(String::as_str).collect();
    let mut parent: HashMap<&str, &str> = HashMap::new();
    let mut queue = std::collections::VecDeque::from([start]);
    while let Some(node) = queue.pop_front() {
        for next in graph.get(node).into_iter().flatten() {
            if next == start {
                let mut path = vec![start.to_string()];
                let mut at = node;
                let mut back = vec![node.to_string()];
                while at != start {
                    at = parent[at];
                    back.push(at.to_string());
                }
                back.pop();
                back.reverse();
                path.extend(back);
                path.push(start.to_string());
                return path;
            }
            if members.contains(next.as_str()) && !parent.contains_key(next.as_str()) {
                parent.insert(next, node);
                queue.push_back(next);
            }
        }
    }
    scc.to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn graph(edges: &[(&str, &[&str])]) -> BTreeMap<String, Vec<String>> {
        edges
            .iter()
            .map(|(n, ds)| (n.to_string(), ds.iter().map(|d| d.to_string()).collect()))
            .collect()
    }

    #[test]
    fn finds_cycles_and_a_path_through_them() {
        let g = graph(&[
            ("a", &["b"]),
            ("b", &["c"]),
            ("c", &["a", "d"]),
            ("d", &[]),
            ("e", &["e2"]),
            ("e2", &[]),
        ]);
        let sccs: Vec<_> = strongly_connected(&g)
            .into_iter()
            .filter(|s| s.len() > 1)
            .collect();
        assert_eq!(sccs, vec![vec!["a", "b", "c"]]);
        assert_eq!(cycle_through(&g, &sccs[0], "b"), vec!["b", "c", "a", "b"]);
    }

    #[test]
    fn long_chains_do_not_overflow() {
        let names: Vec<String> = (0..100_000).map(|i| format!("p{i}")).collect();
        let mut g = BTreeMap::new();
        for (i, n) in names.iter().enumerate() {
            let deps = names.get(i + 1).cloned().into_iter().collect();
            g.insert(n.clone(), deps);
        }
        assert!(strongly_connected(&g).iter().all(|s| s.len() == 1));
    }
}
