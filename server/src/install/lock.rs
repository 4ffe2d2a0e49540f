//! The lock of an installed set: enough to fetch every pack again, byte for byte.

use std::{collections::HashMap, path::Path};

use super::{Action, Lock, LockedPack, Member, SourceKind};
use crate::{
    dependency::REQUEST, download::DownloadedPack, provenance, source, store::RegisteredSource,
};

/// The lock of an installed set. Packs the install kept are described by what
/// registration recorded about them.
pub(super) fn lock_of(members: &[Member]) -> Lock {
    let dependencies: HashMap<&str, Vec<String>> = {
        let mut deps: HashMap<&str, Vec<String>> = HashMap::new();
        for m in members {
            for by in m.required_by.iter().filter(|r| *r != REQUEST) {
                deps.entry(by.as_str())
                    .or_default()
                    .push(m.pack_ref.clone());
            }
        }
        deps
    };
    let packs = members
        .iter()
        .map(|m| {
            let mut deps = dependencies
                .get(m.pack_ref.as_str())
                .cloned()
                .unwrap_or_default();
            deps.sort();
            match &m.fetched {
                Some(fetched) if m.action != Action::Keep => locked_from_download(m, fetched, deps),
                _ => locked_from_registered(m, deps),
            }
        })
        .collect();
    Lock { packs }
}

fn locked_from_download(m: &Member, fetched: &DownloadedPack, deps: Vec<String>) -> LockedPack {
    let origin = provenance::read(Path::new(&fetched.pack_path));
    let registry_url = origin
        .as_ref()
        .and_then(|o| o.registry_url.clone())
        .or_else(|| m.registry_url.clone())
        .map(|u| source::redact_url(&u));
    let (source, source_type) = locked_source(
        m,
        registry_url.is_some() || m.source_type == SourceKind::Registry,
        fetched.git_commit.as_deref(),
        origin.and_then(|o| o.url),
        SourceKind::from_name(&fetched.source_type),
    )
    .unwrap_or_else(|| {
        (
            source::redact_url(&fetched.source),
            SourceKind::from_name(&fetched.source_type),
        )
    });
    LockedPack {
        pack_ref: m.pack_ref.clone(),
        version: m.version.to_string(),
        source,
        source_type,
        registry_url,
        git_commit: fetched.git_commit.clone(),
        checksum: fetched.checksum.clone(),
        dependencies: deps,
    }
}

fn locked_from_registered(m: &Member, deps: Vec<String>) -> LockedPack {
    let installed = m.installed.as_ref();
    let field = |f: fn(&RegisteredSource) -> Option<String>| installed.and_then(f);
    let registry_url = field(|i| i.registry_url.clone());
    let git_commit = field(|i| i.git_commit.clone());
    let (source, source_type) = locked_source(
        m,
        registry_url.is_some(),
        git_commit.as_deref(),
        field(|i| i.source_url.clone()),
        SourceKind::from_name(&field(|i| i.source_type.clone()).unwrap_or_default()),
    )
    // Registered from a directory without provenance: it can only be kept.
    .unwrap_or_else(|| {
        (
            format!("{}@{}", m.pack_ref, m.version),
            SourceKind::Installed,
        )
    });
    LockedPack {
        pack_ref: m.pack_ref.clone(),
        version: m.version.to_string(),
        source,
        source_type,
        registry_url,
        git_commit,
        checksum: field(|i| i.checksum.clone()).unwrap_or_default(),
        dependencies: deps,
    }
}

/// `(source, source_type)` to fetch the pack again: `ref@version` from a registry,
/// `url@commit` for git (credentials redacted), else the URL or path it came from;
/// `None` when nothing fetchable is known.
fn locked_source(
    m: &Member,
    from_registry: bool,
    git_commit: Option<&str>,
    url: Option<String>,
    source_type: SourceKind,
) -> Option<(String, SourceKind)> {
    if from_registry {
        return Some((
            format!("{}@{}", m.pack_ref, m.version),
            SourceKind::Registry,
        ));
    }
    match (git_commit, url) {
        (Some(commit), Some(url)) => Some((
            format!("{}@{commit}", source::redact_url(&url)),
            SourceKind::Git,
        )),
        (_, Some(url)) => Some((source::redact_url(&url), source_type)),
        (_, None) => None,
    }
}
