//! Pack registry: the index model and version selection (from `attune-packs-core`) and
//! the shared, caching, fail-closed [`RegistryClient`] ([`client`]).
//!
//! Index format and the multi-version extension: `docs/registry-index.md`.

pub mod client;

pub use attune_packs_core::registry::*;
pub use client::{
    IndexConfig, IndexInfo, LoadedIndex, RegistryClient, RegistryConfig, RegistryError,
    RegistryTrust, Resolved, SearchHit, Unreachable,
};
