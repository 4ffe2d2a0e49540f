//! Pack dependency resolution with PubGrub.
//!
//! [`solve`] picks one version for every pack reachable from the user's
//! request and returns a [`Solution`] in dependency order. The whole run is
//! synchronous and in memory: prefetch the registry indices into a
//! [`Catalog`] first, then call [`solve`] (from `spawn_blocking` in async
//! code).
//!
//! Decisions:
//! - A synthetic package, shown as "the request" in conflict messages, has
//!   version 0.0.0 and depends on every requested [`Root`].
//! - Requirements become PubGrub ranges with [`range_on`] over the
//!   catalog's versions: a catalog version is in the range exactly when it
//!   satisfies the requirement. So pre-releases are chosen only when a
//!   requirement names one, as in Cargo.
//! - Version choice: an installed version (see [`Catalog::add_installed`])
//!   is kept if it satisfies every requirement. Otherwise the highest
//!   version in range wins.
//! - A requested pack that is not in the catalog gives
//!   [`SolveError::UnknownPack`] at once. A dependency on an unknown pack
//!   makes that pack version unusable, so PubGrub can fall back to another
//!   version. If no solution exists and the failure involves an unknown
//!   pack, the error is `UnknownPack`, not `Conflict`.
//! - Cycles are allowed while solving. PubGrub picks versions without
//!   looking for cycles. If the chosen versions form a cycle, including a
//!   pack that depends on itself, the result is [`SolveError::Cycle`] with
//!   the [`Cycle`] that [`Graph::dependency_order`] finds.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::sync::Arc;

use pubgrub::{
    DefaultStringReporter, Dependencies, DependencyProvider, DerivationTree, Derived, External,
    Map, PackageResolutionStatistics, PubGrubError, Ranges, ReportFormatter, Reporter, Term,
};
use semver::{Version, VersionReq};
use tracing::instrument;

use super::{Cycle, Graph, REQUEST, range_on};

const REQUEST_VERSION: Version = Version::new(0, 0, 0);

#[derive(Debug, Clone, Default)]
struct Release {
    dependencies: Vec<(Arc<str>, VersionReq)>,
    installed: bool,
}

/// Everything the registries offer: for each pack ref, the available
/// versions and each version's pack dependencies.
#[derive(Debug, Clone, Default)]
pub struct Catalog {
    packs: HashMap<Arc<str>, BTreeMap<Version, Release>>,
}

impl Catalog {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds an available version. Adding the same version again replaces
    /// its dependencies but keeps its installed flag.
    pub fn add(
        &mut self,
        pack_ref: &str,
        version: semver::Version,
        dependencies: Vec<(String, semver::VersionReq)>,
    ) {
        self.insert(pack_ref, version, dependencies, false);
    }

    /// Adds a version that is already installed. The solver keeps it when
    /// it satisfies every requirement. Otherwise it may pick another
    /// catalog version (an upgrade or a downgrade).
    pub fn add_installed(
        &mut self,
        pack_ref: &str,
        version: semver::Version,
        dependencies: Vec<(String, semver::VersionReq)>,
    ) {
        self.insert(pack_ref, version, dependencies, true);
    }

    /// Whether the catalog has at least one version of `pack_ref`.
    pub fn contains(&self, pack_ref: &str) -> bool {
        self.packs.contains_key(pack_ref)
    }

    fn insert(
        &mut self,
        pack_ref: &str,
        version: Version,
        dependencies: Vec<(String, VersionReq)>,
        installed: bool,
    ) {
        let dependencies = dependencies
            .into_iter()
            .map(|(name, req)| (Arc::from(name), req))
            .collect();
        let versions = match self.packs.get_mut(pack_ref) {
            Some(versions) => versions,
            None => self.packs.entry(Arc::from(pack_ref)).or_default(),
        };
        let release = versions.entry(version).or_default();
        release.dependencies = dependencies;
        release.installed |= installed;
    }
}

/// A pack the user asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Root {
    pub pack_ref: String,
    pub req: semver::VersionReq,
}

/// The result of a successful solve.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Solution {
    /// Dependency order: each pack comes after all of its dependencies.
    /// When several packs could come next, the lowest ref goes first.
    pub packs: Vec<SolvedPack>,
}

/// A pack and the version the solver chose for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SolvedPack {
    pub pack_ref: String,
    pub version: semver::Version,
    /// [`REQUEST`] first if the user asked for this pack, then the refs
    /// of the solved packs that depend on it, sorted.
    pub required_by: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SolveError {
    /// No set of versions satisfies every requirement. Holds the
    /// explanation from PubGrub's `DefaultStringReporter`, one line per
    /// step.
    #[error("dependency conflict:\n{0}")]
    Conflict(String),
    /// A pack that is needed is not in any registry.
    #[error("pack `{pack_ref}` was not found in any registry (required by {})", required_by.join(", "))]
    UnknownPack {
        pack_ref: String,
        required_by: Vec<String>,
    },
    /// `should_cancel` returned true.
    #[error("dependency resolution was cancelled")]
    Cancelled,
    /// The chosen versions form a dependency cycle.
    #[error(transparent)]
    Cycle(#[from] Cycle),
}

/// Picks a version for every pack reachable from `roots`. PubGrub checks
/// `should_cancel` before each step.
#[instrument(level = "debug", skip_all, fields(roots = roots.len()))]
pub fn solve(
    catalog: &Catalog,
    roots: &[Root],
    should_cancel: &dyn Fn() -> bool,
) -> Result<Solution, SolveError> {
    if let Some(root) = roots.iter().find(|r| !catalog.contains(&r.pack_ref)) {
        return Err(SolveError::UnknownPack {
            pack_ref: root.pack_ref.clone(),
            required_by: vec![REQUEST.to_string()],
        });
    }
    if roots.is_empty() {
        return Ok(Solution { packs: Vec::new() });
    }
    let provider = Provider {
        catalog,
        roots,
        should_cancel,
    };
    match pubgrub::resolve(&provider, Pkg::Request, REQUEST_VERSION) {
        Ok(selected) => {
            let chosen: BTreeMap<Arc<str>, Version> = selected
                .into_iter()
                .filter_map(|(pkg, version)| match pkg {
                    Pkg::Pack(name) => Some((name, version)),
                    Pkg::Request => None,
                })
                .collect();
            solution_of(catalog, roots, &chosen)
        }
        Err(PubGrubError::NoSolution(mut tree)) => {
            if let Some(err) = unknown_pack_error(catalog, &tree) {
                return Err(err);
            }
            tree.collapse_no_versions();
            Err(SolveError::Conflict(
                DefaultStringReporter::report_with_formatter(&tree, &PackReportFormatter),
            ))
        }
        // The provider only fails because of cancellation.
        Err(_) => Err(SolveError::Cancelled),
    }
}

// ---------------------------------------------------------------------------
// PubGrub provider
// ---------------------------------------------------------------------------

/// A PubGrub package: the synthetic request, or a pack ref.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Pkg {
    Request,
    Pack(Arc<str>),
}

impl fmt::Display for Pkg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Pkg::Request => f.write_str("the request"),
            Pkg::Pack(name) => f.write_str(name),
        }
    }
}

type VS = Ranges<Version>;

#[derive(Debug, thiserror::Error)]
enum ProviderError {
    #[error("cancelled")]
    Cancelled,
}

struct Provider<'a> {
    catalog: &'a Catalog,
    roots: &'a [Root],
    should_cancel: &'a dyn Fn() -> bool,
}

impl Provider<'_> {
    fn versions(&self, name: &str) -> Option<&BTreeMap<Version, Release>> {
        self.catalog.packs.get(name)
    }

    /// Adds `name` with `req` to `constraints`, intersecting with an
    /// earlier requirement on the same pack.
    fn add_constraint(&self, constraints: &mut Vec<(Pkg, VS)>, name: Arc<str>, req: &VersionReq) {
        let range = range_on(
            req,
            self.versions(&name).into_iter().flat_map(BTreeMap::keys),
        );
        let pkg = Pkg::Pack(name);
        match constraints.iter_mut().find(|(p, _)| *p == pkg) {
            Some((_, existing)) => *existing = existing.intersection(&range),
            None => constraints.push((pkg, range)),
        }
    }
}

impl DependencyProvider for Provider<'_> {
    type P = Pkg;
    type V = Version;
    type VS = VS;
    type M = String;
    type Err = ProviderError;
    type Priority = (u32, Reverse<usize>);

    fn prioritize(
        &self,
        package: &Pkg,
        range: &VS,
        stats: &PackageResolutionStatistics,
    ) -> Self::Priority {
        let count = match package {
            Pkg::Request => 1,
            Pkg::Pack(name) => self
                .versions(name)
                .map(|vs| vs.keys().filter(|v| range.contains(v)).count())
                .unwrap_or(0),
        };
        if count == 0 {
            // Fail fast on packages with no candidates.
            return (u32::MAX, Reverse(0));
        }
        (stats.conflict_count(), Reverse(count))
    }

    fn choose_version(&self, package: &Pkg, range: &VS) -> Result<Option<Version>, ProviderError> {
        Ok(match package {
            Pkg::Request => range.contains(&REQUEST_VERSION).then_some(REQUEST_VERSION),
            Pkg::Pack(name) => self.versions(name).and_then(|versions| {
                let mut in_range = versions.iter().rev().filter(|(v, _)| range.contains(v));
                let highest = in_range.next()?;
                if highest.1.installed {
                    return Some(highest.0.clone());
                }
                let installed = in_range.find(|(_, release)| release.installed);
                Some(installed.unwrap_or(highest).0.clone())
            }),
        })
    }

    fn get_dependencies(
        &self,
        package: &Pkg,
        version: &Version,
    ) -> Result<Dependencies<Pkg, VS, String>, ProviderError> {
        let mut constraints = Vec::new();
        match package {
            Pkg::Request => {
                for root in self.roots {
                    self.add_constraint(
                        &mut constraints,
                        Arc::from(root.pack_ref.as_str()),
                        &root.req,
                    );
                }
            }
            Pkg::Pack(name) => {
                let Some(release) = self.versions(name).and_then(|vs| vs.get(version)) else {
                    return Ok(Dependencies::Unavailable(
                        "(not in the catalog)".to_string(),
                    ));
                };
                for (dep, req) in &release.dependencies {
                    self.add_constraint(&mut constraints, dep.clone(), req);
                }
            }
        }
        Ok(Dependencies::Available(constraints.into_iter().collect()))
    }

    fn should_cancel(&self) -> Result<(), ProviderError> {
        if (self.should_cancel)() {
            Err(ProviderError::Cancelled)
        } else {
            Ok(())
        }
    }
}

// ---------------------------------------------------------------------------
// Solution in dependency order
// ---------------------------------------------------------------------------

/// The chosen versions in dependency order, each with who requires it.
fn solution_of(
    catalog: &Catalog,
    roots: &[Root],
    chosen: &BTreeMap<Arc<str>, Version>,
) -> Result<Solution, SolveError> {
    let dependencies: BTreeMap<&str, Vec<&str>> = chosen
        .iter()
        .map(|(name, version)| {
            let release = &catalog.packs[name][version];
            let deps = release.dependencies.iter().map(|(d, _)| &**d).collect();
            (&**name, deps)
        })
        .collect();
    let graph = Graph::new(&dependencies);
    let requested: BTreeSet<&str> = roots.iter().map(|r| r.pack_ref.as_str()).collect();
    let packs = graph
        .dependency_order()?
        .into_iter()
        .map(|pack| {
            let name = graph.pack_ref(pack);
            let required_by = requested
                .contains(name)
                .then(|| REQUEST.to_string())
                .into_iter()
                .chain(
                    graph
                        .dependents(pack)
                        .iter()
                        .map(|user| graph.pack_ref(*user).to_string()),
                )
                .collect();
            SolvedPack {
                pack_ref: name.to_string(),
                version: chosen[name].clone(),
                required_by,
            }
        })
        .collect();
    Ok(Solution { packs })
}

fn unknown_pack_error(
    catalog: &Catalog,
    tree: &DerivationTree<Pkg, VS, String>,
) -> Option<SolveError> {
    let unknown = tree
        .packages()
        .into_iter()
        .filter_map(|p| match p {
            Pkg::Pack(name) if !catalog.contains(name) => Some(name.clone()),
            _ => None,
        })
        .min()?;
    let mut required_by = BTreeSet::new();
    collect_dependents(tree, &unknown, &mut required_by);
    Some(SolveError::UnknownPack {
        pack_ref: unknown.to_string(),
        required_by: required_by.into_iter().collect(),
    })
}

fn collect_dependents(
    tree: &DerivationTree<Pkg, VS, String>,
    target: &str,
    out: &mut BTreeSet<String>,
) {
    match tree {
        DerivationTree::External(External::FromDependencyOf(p, _, Pkg::Pack(dep), _))
            if &**dep == target =>
        {
            out.insert(match p {
                Pkg::Request => REQUEST.to_string(),
                Pkg::Pack(name) => name.to_string(),
            });
        }
        DerivationTree::External(_) => {}
        DerivationTree::Derived(derived) => {
            collect_dependents(&derived.cause1, target, out);
            collect_dependents(&derived.cause2, target, out);
        }
    }
}

// ---------------------------------------------------------------------------
// Conflict reporting
// ---------------------------------------------------------------------------

/// `DefaultStringReportFormatter` wording, except that the request shows
/// as "the request" with no version.
struct PackReportFormatter;

type Ext = External<Pkg, VS, String>;
type Terms = Map<Pkg, Term<VS>>;

impl ReportFormatter<Pkg, VS, String> for PackReportFormatter {
    type Output = String;

    fn format_external(&self, external: &Ext) -> String {
        match external {
            External::NotRoot(Pkg::Request, _) => "we are solving the request".to_string(),
            External::FromDependencyOf(Pkg::Request, _, dep, set) if *set == Ranges::full() => {
                format!("the request depends on {dep}")
            }
            External::FromDependencyOf(Pkg::Request, _, dep, set) => {
                format!("the request depends on {dep} {set}")
            }
            other => other.to_string(),
        }
    }

    fn format_terms(&self, terms: &Terms) -> String {
        let terms: Vec<_> = terms.iter().collect();
        match terms.as_slice() {
            [] => "version solving failed".to_string(),
            [(Pkg::Request, Term::Positive(_))] => "the request cannot be satisfied".to_string(),
            [(package, Term::Positive(range))] => format!("{package} {range} is forbidden"),
            [(package, Term::Negative(range))] => format!("{package} {range} is mandatory"),
            [(p1, Term::Positive(r1)), (p2, Term::Negative(r2))]
            | [(p2, Term::Negative(r2)), (p1, Term::Positive(r1))] => self.format_external(
                &External::FromDependencyOf((*p1).clone(), r1.clone(), (*p2).clone(), r2.clone()),
            ),
            slice => {
                let mut parts: Vec<String> = slice
                    .iter()
                    .map(|(p, t)| match p {
                        Pkg::Request => p.to_string(),
                        Pkg::Pack(_) => format!("{p} {t}"),
                    })
                    .collect();
                parts.sort();
                let last = parts.pop().unwrap_or_default();
                if parts.is_empty() {
                    format!("{last} is incompatible")
                } else {
                    format!("{} and {last} are incompatible", parts.join(", "))
                }
            }
        }
    }

    fn explain_both_external(
        &self,
        external1: &Ext,
        external2: &Ext,
        current_terms: &Terms,
    ) -> String {
        format!(
            "Because {} and {}, {}.",
            self.format_external(external1),
            self.format_external(external2),
            self.format_terms(current_terms)
        )
    }

    fn explain_both_ref(
        &self,
        ref_id1: usize,
        derived1: &Derived<Pkg, VS, String>,
        ref_id2: usize,
        derived2: &Derived<Pkg, VS, String>,
        current_terms: &Terms,
    ) -> String {
        format!(
            "Because {} ({ref_id1}) and {} ({ref_id2}), {}.",
            self.format_terms(&derived1.terms),
            self.format_terms(&derived2.terms),
            self.format_terms(current_terms)
        )
    }

    fn explain_ref_and_external(
        &self,
        ref_id: usize,
        derived: &Derived<Pkg, VS, String>,
        external: &Ext,
        current_terms: &Terms,
    ) -> String {
        format!(
            "Because {} ({ref_id}) and {}, {}.",
            self.format_terms(&derived.terms),
            self.format_external(external),
            self.format_terms(current_terms)
        )
    }

    fn and_explain_external(&self, external: &Ext, current_terms: &Terms) -> String {
        format!(
            "And because {}, {}.",
            self.format_external(external),
            self.format_terms(current_terms)
        )
    }

    fn and_explain_ref(
        &self,
        ref_id: usize,
        derived: &Derived<Pkg, VS, String>,
        current_terms: &Terms,
    ) -> String {
        format!(
            "And because {} ({ref_id}), {}.",
            self.format_terms(&derived.terms),
            self.format_terms(current_terms)
        )
    }

    fn and_explain_prior_and_external(
        &self,
        prior_external: &Ext,
        external: &Ext,
        current_terms: &Terms,
    ) -> String {
        format!(
            "And because {} and {}, {}.",
            self.format_external(prior_external),
            self.format_external(external),
            self.format_terms(current_terms)
        )
    }
}

// ---------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    fn ver(s: &str) -> Version {
        Version::parse(s).unwrap()
    }

    fn deps(list: &[(&str, &str)]) -> Vec<(String, VersionReq)> {
        list.iter()
            .map(|(n, r)| (n.to_string(), VersionReq::parse(r).unwrap()))
            .collect()
    }

    fn root(name: &str, req: &str) -> Root {
        Root {
            pack_ref: name.to_string(),
            req: VersionReq::parse(req).unwrap(),
        }
    }

    fn never() -> bool {
        false
    }

    fn summary(plan: &Solution) -> Vec<String> {
        plan.packs
            .iter()
            .map(|p| format!("{}@{}", p.pack_ref, p.version))
            .collect()
    }

    #[test]
    fn two_level_chain_in_dependency_order() {
        let mut c = Catalog::new();
        c.add("app", ver("1.0.0"), deps(&[("lib", "^1")]));
        c.add("lib", ver("1.0.0"), deps(&[("base", "^2")]));
        c.add("base", ver("2.1.0"), vec![]);
        let plan = solve(&c, &[root("app", "*")], &never).unwrap();
        assert_eq!(summary(&plan), ["base@2.1.0", "lib@1.0.0", "app@1.0.0"]);
        assert_eq!(plan.packs[0].required_by, ["lib"]);
        assert_eq!(plan.packs[1].required_by, ["app"]);
        assert_eq!(plan.packs[2].required_by, [REQUEST]);
    }

    #[test]
    fn diamond_picks_common_version() {
        let mut c = Catalog::new();
        c.add(
            "top",
            ver("1.0.0"),
            deps(&[("left", "^1"), ("right", "^1")]),
        );
        c.add("left", ver("1.0.0"), deps(&[("core", ">=1.1, <2.0")]));
        c.add("right", ver("1.0.0"), deps(&[("core", "~1.1")]));
        for v in ["1.0.0", "1.1.0", "1.1.5", "1.2.0", "2.0.0"] {
            c.add("core", ver(v), vec![]);
        }
        let plan = solve(&c, &[root("top", "^1"), root("left", "*")], &never).unwrap();
        assert_eq!(
            summary(&plan),
            ["core@1.1.5", "left@1.0.0", "right@1.0.0", "top@1.0.0"]
        );
        assert_eq!(plan.packs[0].required_by, ["left", "right"]);
        assert_eq!(plan.packs[1].required_by, [REQUEST, "top"]);
    }

    #[test]
    fn highest_version_wins_unless_installed() {
        let mut c = Catalog::new();
        for v in ["1.0.0", "1.4.2", "1.10.0", "2.0.0"] {
            c.add("core", ver(v), vec![]);
        }
        let plan = solve(&c, &[root("core", "^1")], &never).unwrap();
        assert_eq!(summary(&plan), ["core@1.10.0"]);

        c.add_installed("core", ver("1.4.2"), vec![]);
        let plan = solve(&c, &[root("core", "^1")], &never).unwrap();
        assert_eq!(summary(&plan), ["core@1.4.2"]);
        // The installed version no longer fits: move off it.
        let plan = solve(&c, &[root("core", ">=2")], &never).unwrap();
        assert_eq!(summary(&plan), ["core@2.0.0"]);
    }

    #[test]
    fn backtracks_to_compatible_version() {
        let mut c = Catalog::new();
        c.add("web", ver("1.0.0"), deps(&[("core", "^1")]));
        c.add("web", ver("2.0.0"), deps(&[("core", "^2")]));
        c.add("api", ver("1.0.0"), deps(&[("core", "^1")]));
        c.add("core", ver("1.3.0"), vec![]);
        c.add("core", ver("2.0.0"), vec![]);
        let plan = solve(&c, &[root("web", "*"), root("api", "*")], &never).unwrap();
        assert_eq!(summary(&plan), ["core@1.3.0", "api@1.0.0", "web@1.0.0"]);
    }

    #[test]
    fn conflict_names_packs_and_requirements() {
        let mut c = Catalog::new();
        c.add("web", ver("2.0.0"), deps(&[("core", "^2")]));
        c.add("api", ver("1.0.0"), deps(&[("core", "^1")]));
        c.add("core", ver("1.0.0"), vec![]);
        c.add("core", ver("2.0.0"), vec![]);
        let err = solve(&c, &[root("web", "^2"), root("api", "^1")], &never).unwrap_err();
        let SolveError::Conflict(msg) = err else {
            panic!("expected conflict, got {err:?}");
        };
        for needle in [
            "depends on core >=2.0.0, <3.0.0",
            "api 1.0.0 depends on core >=1.0.0, <2.0.0",
            "api 1.0.0 and web >=2.0.0, <3.0.0 are incompatible",
            "the request depends on",
            "the request cannot be satisfied",
        ] {
            assert!(msg.contains(needle), "missing {needle:?} in:\n{msg}");
        }
        assert!(!msg.contains("0.0.0"), "request version leaked:\n{msg}");
    }

    #[test]
    fn unsatisfiable_root_is_a_conflict() {
        let mut c = Catalog::new();
        c.add("web", ver("1.0.0"), vec![]);
        let err = solve(&c, &[root("web", "^3")], &never).unwrap_err();
        let SolveError::Conflict(msg) = err else {
            panic!("expected conflict, got {err:?}");
        };
        assert!(msg.contains("web >=3.0.0, <4.0.0"), "{msg}");
    }

    #[test]
    fn unknown_packs() {
        let mut c = Catalog::new();
        c.add("web", ver("1.0.0"), deps(&[("ghost", "^1")]));
        let err = solve(&c, &[root("nope", "*")], &never).unwrap_err();
        assert_eq!(
            err,
            SolveError::UnknownPack {
                pack_ref: "nope".into(),
                required_by: vec![REQUEST.into()]
            }
        );
        let err = solve(&c, &[root("web", "*")], &never).unwrap_err();
        assert_eq!(
            err,
            SolveError::UnknownPack {
                pack_ref: "ghost".into(),
                required_by: vec!["web".into()]
            }
        );
        // An older version without the unknown dependency still works.
        c.add("web", ver("0.9.0"), vec![]);
        let plan = solve(&c, &[root("web", "*")], &never).unwrap();
        assert_eq!(summary(&plan), ["web@0.9.0"]);
    }

    #[test]
    fn cycles_are_reported_with_path() {
        let mut c = Catalog::new();
        c.add("app", ver("1.0.0"), deps(&[("b", "^1")]));
        c.add("b", ver("1.0.0"), deps(&[("c", "^1")]));
        c.add("c", ver("1.0.0"), deps(&[("d", "^1")]));
        c.add("d", ver("1.0.0"), deps(&[("b", "^1")]));
        let err = solve(&c, &[root("app", "*")], &never).unwrap_err();
        assert_eq!(
            err,
            SolveError::Cycle(Cycle(vec!["b".into(), "c".into(), "d".into(), "b".into()]))
        );
        assert_eq!(err.to_string(), "dependency cycle: b -> c -> d -> b");

        let mut c = Catalog::new();
        c.add("selfish", ver("1.0.0"), deps(&[("selfish", "^1")]));
        let err = solve(&c, &[root("selfish", "*")], &never).unwrap_err();
        assert_eq!(
            err,
            SolveError::Cycle(Cycle(vec!["selfish".into(), "selfish".into()]))
        );
    }

    #[test]
    fn prereleases_only_when_named() {
        let mut c = Catalog::new();
        for v in ["1.0.0", "1.1.0", "1.2.0-beta.1", "2.0.0-alpha"] {
            c.add("core", ver(v), vec![]);
        }
        let pick = |req: &str| summary(&solve(&c, &[root("core", req)], &never).unwrap());
        assert_eq!(pick("^1"), ["core@1.1.0"]);
        assert_eq!(pick("*"), ["core@1.1.0"]);
        assert_eq!(pick(">=1.0.0"), ["core@1.1.0"]);
        assert_eq!(pick("^1.2.0-beta"), ["core@1.2.0-beta.1"]);
        assert_eq!(pick("=1.2.0-beta.1"), ["core@1.2.0-beta.1"]);
        assert_eq!(pick("^2.0.0-alpha"), ["core@2.0.0-alpha"]);
        assert!(matches!(
            solve(&c, &[root("core", "^2")], &never),
            Err(SolveError::Conflict(_))
        ));

        // A dependency edge without a pre-release tag never selects one.
        c.add("app", ver("1.0.0"), deps(&[("core", ">=1.1.0")]));
        assert_eq!(
            summary(&solve(&c, &[root("app", "*")], &never).unwrap()),
            ["core@1.1.0", "app@1.0.0"]
        );
    }

    #[test]
    fn cancellation() {
        let mut c = Catalog::new();
        c.add("a", ver("1.0.0"), vec![]);
        let err = solve(&c, &[root("a", "*")], &|| true).unwrap_err();
        assert_eq!(err, SolveError::Cancelled);

        let calls = Cell::new(0);
        let plan = solve(&c, &[root("a", "*")], &|| {
            calls.set(calls.get() + 1);
            false
        })
        .unwrap();
        assert_eq!(summary(&plan), ["a@1.0.0"]);
        assert!(calls.get() > 0);
    }

    #[test]
    fn empty_request_gives_empty_plan() {
        let plan = solve(&Catalog::new(), &[], &never).unwrap();
        assert!(plan.packs.is_empty());
    }
}
