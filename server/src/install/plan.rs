//! The plan's packs: what each does to what is installed, whether that needs
//! `force`, and whether what was fetched agrees with the plan.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use semver::Version;
use tracing::instrument;

use super::{Action, Failures, Lock, Member, PackProblem, SourceKind, failure};
use crate::{
    dependency,
    download::DownloadedPack,
    manifest::{Manifest, dir_name},
    packfs::PackReadLimits,
    progress::{Reporter, Stage},
    store::RegisteredSource,
};

/// The locked set, in the lock's order. Packs installed with exactly the locked
/// version and checksum are kept; the rest are fetched from their locked sources.
pub(super) fn plan_from_lock(
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
        if p.source_type == SourceKind::Installed && !same {
            errors.push(failure(
                &p.pack_ref,
                Stage::Lock,
                PackProblem::LockedNotFetchable {
                    pack_ref: p.pack_ref.clone(),
                    version: p.version.clone(),
                    checksum: p.checksum.clone(),
                },
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

pub(super) fn registry_member(
    pack_ref: &str,
    version: Version,
    required_by: Vec<String>,
    registry_url: Option<String>,
) -> Member {
    Member {
        pack_ref: pack_ref.to_string(),
        source: format!("{pack_ref}@{version}"),
        version,
        source_type: SourceKind::Registry,
        required_by,
        registry_url,
        fetched: None,
        locked_checksum: None,
        installed: None,
        action: Action::Install,
    }
}

pub(super) fn provided_member(
    pack: DownloadedPack,
    manifest: &Manifest,
    required_by: Vec<String>,
) -> Member {
    Member {
        pack_ref: manifest.pack_ref.clone(),
        version: manifest.version.clone(),
        source: pack.source.clone(),
        source_type: SourceKind::from_name(&pack.source_type),
        required_by,
        registry_url: None,
        fetched: Some(pack),
        locked_checksum: None,
        installed: None,
        action: Action::Install,
    }
}

/// What installing `member` does to what is installed.
pub(super) fn action_for(member: &Member) -> Action {
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
pub(super) fn gate_changes(members: &[Member], force: bool) -> Failures {
    if force {
        return Vec::new();
    }
    members
        .iter()
        .filter(|m| m.action.changes_installed())
        .map(|m| {
            let installed = m
                .installed
                .as_ref()
                .map_or("?", |i| i.version.as_str())
                .to_string();
            let problem = match m.action {
                Action::Replace => PackProblem::ContentDiffers {
                    pack_ref: m.pack_ref.clone(),
                    installed,
                },
                action => PackProblem::VersionDiffers {
                    pack_ref: m.pack_ref.clone(),
                    installed,
                    version: m.version.clone(),
                    reason: m.planned().reason,
                    action,
                },
            };
            failure(&m.pack_ref, Stage::Resolve, problem)
        })
        .collect()
}

/// After fetching: identity, locked checksums, and the dependencies each pack's own
/// `pack.yaml` declares, against the versions of the set (or installed ones).
pub(super) fn verify_fetched(
    members: &[Member],
    skip_deps: bool,
    limits: &PackReadLimits,
    reporter: &Reporter,
) -> Failures {
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
                Stage::Fetch,
                PackProblem::NotAsPlanned {
                    given: m.source.clone(),
                    fetched_ref: fetched.pack_ref.clone(),
                    fetched_version: fetched.pack_version.clone(),
                    pack_ref: m.pack_ref.clone(),
                    version: m.version.clone(),
                },
            ));
            continue;
        }
        if let Some(locked) = &m.locked_checksum
            && *locked != fetched.checksum
        {
            errors.push(failure(
                &m.pack_ref,
                Stage::Lock,
                PackProblem::ChecksumChanged {
                    given: m.source.clone(),
                    actual: fetched.checksum.clone(),
                    locked: locked.clone(),
                },
            ));
            continue;
        }
        let path = Path::new(&fetched.pack_path);
        let manifest = match Manifest::load(path, dir_name::of_path(path), limits) {
            Ok(m) => m,
            Err(e) => {
                errors.push(failure(&m.pack_ref, Stage::Fetch, e));
                continue;
            }
        };
        for problem in unmet_dependencies(m, &manifest, &versions) {
            if skip_deps {
                reporter.warn(Stage::Resolve, format!("{problem} (skip_deps)"));
            } else {
                errors.push(failure(&m.pack_ref, Stage::Resolve, problem));
            }
        }
    }
    errors
}

/// The dependencies `member`'s own pack.yaml declares that the plan's versions (`planned`)
/// do not satisfy.
#[instrument(skip_all, fields(pack_ref = %member.pack_ref))]
fn unmet_dependencies(
    member: &Member,
    manifest: &Manifest,
    planned: &BTreeMap<&str, &Version>,
) -> Vec<PackProblem> {
    manifest
        .dependencies
        .iter()
        .filter_map(|dep| match planned.get(dep.pack_ref.as_str()) {
            Some(v) if dependency::satisfies(&dep.req, v) => None,
            Some(v) => Some(PackProblem::PlannedOtherVersion {
                pack_ref: member.pack_ref.clone(),
                version: member.version.clone(),
                dependency: dep.clone(),
                planned: (*v).clone(),
            }),
            None => Some(PackProblem::NotPlanned {
                pack_ref: member.pack_ref.clone(),
                version: member.version.clone(),
                dependency: dep.clone(),
            }),
        })
        .collect()
}
