//! What a pack dependency means, for every stage that checks one.
//!
//! The Dependencies stage (`deps`) reports what a set of packs needs and what of that
//! is missing; Install resolves a set with the [`solver`] and checks what it fetched
//! against the plan. Both read requirements only through this module, so that a
//! requirement one of them accepts the other accepts too:
//!
//! - **Satisfaction** is `semver`'s rule ([`satisfies`]): a pre-release satisfies only
//!   a requirement that names a pre-release of the same `MAJOR.MINOR.PATCH`, as in
//!   Cargo.
//! - **Ranges**: [`range`] turns a requirement into an interval set of versions that
//!   keeps pre-release tags; [`range_on`] makes it exact on a known set of versions
//!   (the solver's catalog). Two requirements **conflict** ([`conflicting_pairs`])
//!   when their ranges do not meet.
//! - **Cycles**: [`Graph`] orders a set of packs after their dependencies, or names
//!   the [`Cycle`] that prevents it, and finds every cycle of a set.
//! - **Who asked**: a pack the caller asked for is required by [`REQUEST`].

mod graph;
pub mod solver;

pub use graph::{Cycle, Graph};

use pubgrub::Ranges;
use semver::{BuildMetadata, Comparator, Op, Prerelease, Version, VersionReq};

use crate::{manifest::PackDependency, store::RegisteredPackRow};

/// The name of the caller's request where a pack's dependents are listed
/// (`required_by`) and in failures that concern the request as a whole.
pub const REQUEST: &str = "request";

/// Whether `version` satisfies `req`.
pub fn satisfies(req: &VersionReq, version: &Version) -> bool {
    req.matches(version)
}

/// The requirement that exactly `version` satisfies (pre-release included).
pub fn exactly(version: &Version) -> VersionReq {
    VersionReq {
        comparators: vec![Comparator {
            op: Op::Exact,
            major: version.major,
            minor: Some(version.minor),
            patch: Some(version.patch),
            pre: version.pre.clone(),
        }],
    }
}

/// The dependencies a registered pack recorded, as pack.yaml declared them. An entry
/// that no longer parses (written by an older server) is left out: it cannot be
/// checked, and a pack whose requirements are unknown must not block the others.
pub fn recorded(entries: &[String]) -> impl Iterator<Item = PackDependency> + '_ {
    entries
        .iter()
        .filter_map(|entry| PackDependency::parse(entry).ok())
}

/// The pairs `(i, j)`, `i < j`, of `reqs` that no one version can satisfy: their
/// [`range`]s do not meet. Each range is computed once.
pub fn conflicting_pairs(reqs: &[&VersionReq]) -> Vec<(usize, usize)> {
    let ranges: Vec<Ranges<Version>> = reqs.iter().map(|r| range(r)).collect();
    let mut pairs = Vec::new();
    for (i, a) in ranges.iter().enumerate() {
        for (j, b) in ranges.iter().enumerate().skip(i + 1) {
            if a.intersection(b).is_empty() {
                pairs.push((i, j));
            }
        }
    }
    pairs
}

/// The versions `req` allows, as an interval set that keeps pre-release tags
/// (`>=1.2.0-beta` starts at `1.2.0-beta`). Pre-releases of other versions inside an
/// interval are in the set although `semver` does not match them; [`range_on`]
/// removes those a catalog has.
pub fn range(req: &VersionReq) -> Ranges<Version> {
    req.comparators
        .iter()
        .map(comparator_range)
        .try_fold(Ranges::full(), |acc, r| r.map(|r| acc.intersection(&r)))
        // An operator `semver` adds later: start from everything; `range_on` corrects it.
        .unwrap_or_else(Ranges::full)
}

/// [`range`], made exact on `known`: a known version is in the range exactly when it
/// [`satisfies`] `req`.
pub fn range_on<'v>(
    req: &VersionReq,
    known: impl IntoIterator<Item = &'v Version>,
) -> Ranges<Version> {
    let mut range = range(req);
    for version in known {
        match (range.contains(version), satisfies(req, version)) {
            (true, false) => {
                range = range.intersection(&Ranges::singleton(version.clone()).complement())
            }
            (false, true) => range = range.union(&Ranges::singleton(version.clone())),
            _ => {}
        }
    }
    range
}

fn comparator_range(c: &Comparator) -> Option<Ranges<Version>> {
    let v = |major: u64, minor: u64, patch: u64| Version::new(major, minor, patch);
    let lower = Version {
        major: c.major,
        minor: c.minor.unwrap_or(0),
        patch: c.patch.unwrap_or(0),
        pre: if c.minor.is_some() && c.patch.is_some() {
            c.pre.clone()
        } else {
            Prerelease::EMPTY
        },
        build: BuildMetadata::EMPTY,
    };
    // Exclusive upper bound of the block the comparator names: `1` ->
    // <2.0.0, `1.2` -> <1.3.0.
    let block_end = match c.minor {
        None => v(c.major.saturating_add(1), 0, 0),
        Some(minor) => v(c.major, minor.saturating_add(1), 0),
    };
    let exact_version = c.minor.is_some() && c.patch.is_some();
    Some(match c.op {
        Op::Exact | Op::Wildcard if exact_version => Ranges::singleton(lower),
        Op::Exact | Op::Wildcard => Ranges::between(lower, block_end),
        Op::Greater if exact_version => Ranges::strictly_higher_than(lower),
        Op::Greater => Ranges::higher_than(block_end),
        Op::GreaterEq => Ranges::higher_than(lower),
        Op::Less => Ranges::strictly_lower_than(lower),
        Op::LessEq if exact_version => Ranges::lower_than(lower),
        Op::LessEq => Ranges::strictly_lower_than(block_end),
        Op::Tilde => Ranges::between(lower, block_end),
        Op::Caret => {
            let upper = match (c.major, c.minor, c.patch) {
                (0, Some(0), Some(patch)) => v(0, 0, patch.saturating_add(1)),
                (0, Some(minor), _) => v(0, minor.saturating_add(1), 0),
                (0, None, _) => v(1, 0, 0),
                (major, _, _) => v(major.saturating_add(1), 0, 0),
            };
            Ranges::between(lower, upper)
        }
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(s: &str) -> VersionReq {
        VersionReq::parse(s).unwrap()
    }

    #[test]
    fn ranges_match_semver() {
        let versions: Vec<Version> = [
            "0.0.3", "0.0.4", "0.1.0", "0.1.7", "0.2.0", "1.0.0", "1.2.0", "1.2.3", "1.2.9",
            "1.3.0", "2.0.0",
        ]
        .iter()
        .map(|s| Version::parse(s).unwrap())
        .collect();
        for text in [
            "^0.0.3",
            "^0.0",
            "^0.1.2",
            "^0",
            "^1.2.3",
            "~1.2.3",
            "~1.2",
            "~1",
            "=1.2",
            "=1",
            "1.*",
            "1.2.*",
            ">1.2",
            ">1",
            ">1.2.3",
            "<=1.2",
            "<=1",
            "<=1.2.3",
            "<1.2.3",
            ">=0.1, <1.2.9",
        ] {
            let parsed = req(text);
            let range = range(&parsed);
            for v in &versions {
                assert_eq!(range.contains(v), satisfies(&parsed, v), "{text} vs {v}");
            }
        }
    }

    #[test]
    fn range_on_is_exact_on_known_versions() {
        let known: Vec<Version> = ["1.0.0", "1.2.0-beta.1", "1.2.0", "2.0.0-alpha"]
            .iter()
            .map(|s| Version::parse(s).unwrap())
            .collect();
        for text in ["^1", ">=1.0.0", "^1.2.0-beta", "^2.0.0-alpha", "<2"] {
            let parsed = req(text);
            let range = range_on(&parsed, &known);
            for v in &known {
                assert_eq!(range.contains(v), satisfies(&parsed, v), "{text} vs {v}");
            }
        }
    }

    #[test]
    fn conflicting_requirements() {
        let reqs = [">=2.0", "<2.0", "^1", "*", "=1.2.3", "^2"].map(req);
        let refs: Vec<&VersionReq> = reqs.iter().collect();
        assert_eq!(
            conflicting_pairs(&refs),
            [(0, 1), (0, 2), (0, 4), (1, 5), (2, 5), (4, 5)]
        );
    }

    #[test]
    fn exactly_one_version() {
        let beta = Version::parse("1.2.0-beta.1").unwrap();
        let pin = exactly(&beta);
        assert!(satisfies(&pin, &beta));
        assert!(!satisfies(&pin, &Version::new(1, 2, 0)));
    }

    #[test]
    fn recorded_dependencies_skip_what_no_longer_parses() {
        let entries = ["core@>=1.0".to_string(), "Not A Ref!".to_string()];
        let refs: Vec<String> = recorded(&entries).map(|d| d.pack_ref).collect();
        assert_eq!(refs, ["core"]);
    }
}

/// An installed pack that declares a dependency on another.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dependent {
    pub pack_ref: String,
    pub version: String,
    /// The requirement as declared, parsed.
    pub requirement: PackDependency,
}

/// The installed packs (of `installed`) that declare a dependency on `pack_ref`, in
/// ref order.
pub fn direct_dependents(installed: &[RegisteredPackRow], pack_ref: &str) -> Vec<Dependent> {
    let mut found: Vec<Dependent> = installed
        .iter()
        .filter(|p| p.pack_ref != pack_ref)
        .flat_map(|p| {
            recorded(&p.dependencies)
                .filter(|d| d.pack_ref == pack_ref)
                .map(|requirement| Dependent {
                    pack_ref: p.pack_ref.clone(),
                    version: p.version.clone(),
                    requirement,
                })
        })
        .collect();
    found.sort_by(|a, b| a.pack_ref.cmp(&b.pack_ref));
    found
}
