//! From the request's sources to a plan: non-registry sources are fetched to read
//! their pack.yaml, then everything goes to the solver (or, with `skip_deps`, each
//! registry ref is resolved on its own).

use std::collections::{HashMap, HashSet};
use std::path::Path;

use semver::{Version, VersionReq};
use tracing::instrument;

use super::{
    Failures, InstallRequest, Installer, Member, PackProblem, SourceKind, WorkDir,
    catalog::{catalog_of, recorded_dependencies},
    failure,
    plan::{action_for, provided_member, registry_member},
};
use crate::{
    dependency::{
        REQUEST, exactly,
        solver::{self, Root, SolveError},
    },
    download::DownloadedPack,
    manifest::{Manifest, dir_name},
    progress::{Reporter, Stage},
    registry::{RegistryError, VersionSelector},
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
                            Stage::Resolve,
                            PackProblem::RequestedTwice { pack_ref },
                        )]);
                    }
                    roots.push((pack_ref, selector));
                }
                Ok(_) => to_fetch.push(raw.clone()),
                Err(e) => return Err(vec![failure(raw, Stage::Fetch, e)]),
            }
        }

        // Sources that only say what they are once fetched.
        let mut provided: Vec<(DownloadedPack, Manifest)> = Vec::new();
        if !to_fetch.is_empty() {
            reporter.info(
                Stage::Fetch,
                format!(
                    "downloading {}",
                    crate::progress::count(to_fetch.len(), "requested source", "requested sources")
                ),
            );
            for pack in self.download(request, work, to_fetch, reporter).await? {
                let path = Path::new(&pack.pack_path);
                let manifest = Manifest::load(
                    path,
                    dir_name::of_path(path),
                    self.state.paths.read_limits(),
                )
                .map_err(|e| vec![failure(&pack.source, Stage::Fetch, e)])?;
                if roots.iter().any(|(r, _)| *r == manifest.pack_ref) {
                    return Err(vec![failure(
                        &pack.source,
                        Stage::Resolve,
                        PackProblem::RequestedTwoWays {
                            pack_ref: manifest.pack_ref.clone(),
                            given: pack.source.clone(),
                        },
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
            match self.resolve_root(request, pack_ref, selector).await {
                Ok(member) => members.push(member),
                Err(e) => errors.push(e),
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

    /// One registry ref on its own: the version its selector picks.
    #[instrument(skip_all, fields(pack_ref = %pack_ref, selector = ?selector))]
    async fn resolve_root(
        &self,
        request: &InstallRequest,
        pack_ref: &str,
        selector: &VersionSelector,
    ) -> Result<Member, super::InstallFailure> {
        let resolved = self
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
            .map_err(|e| failure(pack_ref, Stage::Resolve, e))?;
        Ok(registry_member(
            pack_ref,
            resolved.version,
            vec![REQUEST.to_string()],
            Some(resolved.index_url),
        ))
    }

    #[instrument(skip_all, fields(roots = roots.len(), provided = provided.len()))]
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
                .map_err(|e| vec![failure(REQUEST, Stage::Resolve, e)])?
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
        let no_registry = indices.is_empty();
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
                recorded_dependencies(&installed.dependency_list()),
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
                req: exactly(&manifest.version),
            });
        }
        for (pack_ref, selector) in roots {
            solver_roots.push(Root {
                pack_ref: pack_ref.clone(),
                req: match selector {
                    VersionSelector::Latest => VersionReq::STAR,
                    VersionSelector::Exact(v) => exactly(v),
                    VersionSelector::Range(r) => r.clone(),
                },
            });
        }

        reporter.info(
            Stage::Resolve,
            format!(
                "resolving {}",
                crate::progress::count(solver_roots.len(), "requested pack", "requested packs")
            ),
        );
        let cancel = reporter.clone();
        let solution = tokio::task::spawn_blocking(move || {
            solver::solve(&catalog, &solver_roots, &|| cancel.is_cancelled())
        })
        .await
        .map_err(|e| vec![failure(REQUEST, Stage::Resolve, PackProblem::Panicked(e))])?
        .map_err(|e| match &e {
            // Not found because nothing was searched: say so, and how to add a registry.
            SolveError::UnknownPack { pack_ref, .. } if no_registry => {
                let none = RegistryError::NoRegistries {
                    pack_ref: pack_ref.clone(),
                    disabled: self.state.downloader.registry().indices().len(),
                };
                vec![failure(pack_ref, Stage::Resolve, none)]
            }
            SolveError::UnknownPack { pack_ref, .. } => {
                vec![failure(pack_ref, Stage::Resolve, &e)]
            }
            _ => vec![failure(REQUEST, Stage::Resolve, &e)],
        })?;

        let mut provided: HashMap<String, (DownloadedPack, Manifest)> = provided
            .into_iter()
            .map(|(p, m)| (m.pack_ref.clone(), (p, m)))
            .collect();
        let mut members = Vec::with_capacity(solution.packs.len());
        for solved in solution.packs {
            if let Some((pack, manifest)) = provided.remove(&solved.pack_ref) {
                members.push(provided_member(pack, &manifest, solved.required_by));
                continue;
            }
            let registry_url = origins.get(&solved.pack_ref).cloned();
            let mut member = registry_member(
                &solved.pack_ref,
                solved.version,
                solved.required_by,
                registry_url,
            );
            if member.registry_url.is_none() {
                // Only installed, in no index: the solver can only have kept it.
                member.source_type = SourceKind::Installed;
            }
            members.push(member);
        }
        Ok(members)
    }
}
