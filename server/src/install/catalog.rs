//! The solver's view of the registries: every version of every pack, by index
//! priority, with dependencies read as pack.yaml reads them.

use std::collections::{HashMap, HashSet};

use semver::{Version, VersionReq};

use crate::{
    dependency::{self, solver::Catalog},
    manifest::PackDependency,
    registry::{LoadedIndex, PackRequirement, VersionSelector},
};

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

/// The dependencies a registered pack recorded, as the solver takes them.
pub(super) fn recorded_dependencies(raw: &[String]) -> Vec<(String, VersionReq)> {
    dependency::recorded(raw)
        .map(|d| (d.pack_ref, d.req))
        .collect()
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::{
        dependency::solver::{self, Root, SolveError},
        registry::PackIndex,
    };

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
