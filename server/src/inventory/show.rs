//! GetPack: one installed pack in full.

use std::collections::HashMap;

use semver::Version;

use super::{InventoryError, ListedPack, list};
use crate::{
    dependency,
    manifest::is_valid_pack_ref,
    source::redact_url,
    store::{
        Db,
        inventory::{ComponentEntry, LastTestRow},
        versions::KeptVersionRow,
    },
};

/// Where the pack came from, as registration recorded it; URLs without credentials,
/// query string or fragment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Provenance {
    pub source: String,
    pub source_type: String,
    pub source_url: String,
    pub source_ref: String,
    pub registry_url: String,
    pub registry_trust: String,
    /// `<ref>@<version>` of the registry entry it was installed from.
    pub index_entry: String,
    pub git_commit: String,
    pub expected_checksum: String,
    pub actual_checksum: String,
    pub checksum_verified: bool,
}

/// A dependency, either way: `pack_ref` is the other pack.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DependencyLink {
    pub pack_ref: String,
    /// The requirement as declared (normalised, `*` when none).
    pub requirement: String,
    /// The installed version of the pack that must satisfy the requirement; empty
    /// when that pack is not installed.
    pub installed_version: String,
    pub satisfied: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct PackDetails {
    pub pack: ListedPack,
    pub storage_path: String,
    pub provenance: Provenance,
    pub components: Vec<ComponentEntry>,
    pub last_test: Option<LastTestRow>,
    /// What this pack declares it needs.
    pub depends_on: Vec<DependencyLink>,
    /// Installed packs that declare a dependency on this one.
    pub required_by: Vec<DependencyLink>,
    pub kept_versions: Vec<KeptVersionRow>,
}

/// Whether the installed `version` text satisfies `req`.
fn satisfied(req: &semver::VersionReq, version: &str) -> bool {
    Version::parse(version).is_ok_and(|v| dependency::satisfies(req, &v))
}

/// The installed pack `pack_ref`; [`InventoryError::NotInstalled`] when it is not.
pub async fn show(db: &Db, pack_ref: &str) -> Result<PackDetails, InventoryError> {
    if !is_valid_pack_ref(pack_ref) {
        return Err(InventoryError::InvalidRef {
            field: "ref",
            value: pack_ref.chars().take(80).collect(),
        });
    }
    let not_installed = || InventoryError::NotInstalled {
        pack_ref: pack_ref.to_string(),
    };
    let row = db
        .installed_pack(pack_ref)
        .await?
        .ok_or_else(not_installed)?;
    let pack_id = row.summary.id;
    let components = db.pack_components(pack_id).await?;
    let last_test = db.last_test(pack_id).await?;
    let kept_versions = db.kept_versions(pack_ref).await?;
    let installed = db.registered_packs().await?;

    let versions: HashMap<&str, &str> = installed
        .iter()
        .map(|p| (p.pack_ref.as_str(), p.version.as_str()))
        .collect();
    let declared: Vec<String> = serde_json::from_str(&row.dependencies).unwrap_or_default();
    let depends_on = dependency::recorded(&declared)
        .map(|d| {
            let installed_version = versions.get(d.pack_ref.as_str()).copied().unwrap_or("");
            DependencyLink {
                satisfied: satisfied(&d.req, installed_version),
                installed_version: installed_version.to_string(),
                requirement: d.spec,
                pack_ref: d.pack_ref,
            }
        })
        .collect();
    let required_by = dependency::direct_dependents(&installed, pack_ref)
        .into_iter()
        .map(|d| DependencyLink {
            satisfied: satisfied(&d.requirement.req, &row.summary.version),
            installed_version: row.summary.version.clone(),
            requirement: d.requirement.spec,
            pack_ref: d.pack_ref,
        })
        .collect();

    let redacted = |u: &Option<String>| u.as_deref().map(redact_url).unwrap_or_default();
    let index_entry = if row.registry_url.is_some() {
        format!("{}@{}", row.summary.pack_ref, row.summary.version)
    } else {
        String::new()
    };
    let provenance = Provenance {
        source: redacted(&row.summary.source),
        source_type: row.summary.source_type.clone().unwrap_or_default(),
        source_url: redacted(&row.source_url),
        source_ref: row.source_ref.clone().unwrap_or_default(),
        registry_url: redacted(&row.registry_url),
        registry_trust: row.registry_trust.clone().unwrap_or_default(),
        index_entry,
        git_commit: row.git_commit.clone().unwrap_or_default(),
        expected_checksum: row.expected_checksum.clone().unwrap_or_default(),
        actual_checksum: row.checksum.clone().unwrap_or_default(),
        checksum_verified: row.checksum_verified,
    };
    let counted: Vec<(String, i64)> = {
        let mut by_kind: HashMap<&str, i64> = HashMap::new();
        for c in &components {
            *by_kind.entry(c.kind.as_str()).or_default() += 1;
        }
        by_kind
            .into_iter()
            .map(|(k, n)| (k.to_string(), n))
            .collect()
    };
    let counts = list::component_counts(&counted);
    let storage_path = row.summary.storage_path.clone();
    let summary = row.summary;
    let pack = tokio::task::spawn_blocking(move || list::listed(summary, counts))
        .await
        .expect("reading environments panicked");
    Ok(PackDetails {
        pack,
        storage_path,
        provenance,
        components,
        last_test,
        depends_on,
        required_by,
        kept_versions,
    })
}
