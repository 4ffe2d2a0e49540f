//! Pack registry: the index model ([`index`]), version selection ([`version`])
//! and the shared, caching, fail-closed [`RegistryClient`] ([`client`]).
//!
//! Index format and the multi-version extension: `docs/registry-index.md`.

pub mod client;
pub mod index;
pub mod version;

pub use client::{
    IndexConfig, IndexInfo, LoadedIndex, RegistryClient, RegistryConfig, RegistryError, Resolved,
    SearchHit, Unreachable,
};
pub use index::{
    ComponentSummary, IndexError, IndexWarning, InstallSource, PackContents, PackDependencies,
    PackEntry, PackIndex, Release,
};
pub use version::{PackRequirement, SelectorError, VersionSelector};
