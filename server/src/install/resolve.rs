//! From the request's sources to a plan: non-registry sources are fetched to read
//! their pack.yaml, then everything goes to the solver (or, with `skip_deps`, each
//! registry ref is resolved on its own).

use std::collections::{HashMap, HashSet};
use std::path::Path;

use semver::{Version, VersionReq};

use super::{
    Failures, InstallRequest, Installer, Member, REQUEST, WorkDir,
    catalog::{catalog_of, exact, parse_dependencies},
    failure,
    plan::{action_for, provided_member, registry_member},
};
use crate::{
    download::DownloadedPack,
    manifest::Manifest,
    progress::{Reporter, Stage},
    registry::VersionSelector,
    solver::{self, Root, SolveError},
    source::PackSource,
    store::RegisteredSource,
};

impl Installer<'_> {
    /// Downloads the non-registry sources, then solves (or, with `skip_deps`,
    /// resolves each registry ref on its own).
    pub(super) async fn plan_from_request(
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
                let manifest =
                    Manifest::load(Path::new(&pack.pack_path), self.state.paths.read_limits())
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
}
