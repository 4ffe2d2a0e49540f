//! The registry index format ([`index`]) and version selection ([`version`]).
//!
//! Index format and the multi-version extension: `docs/registry-index.md`.

pub mod index;
pub mod version;

pub use index::{
    ComponentSummary, EntryProblem, IndexError, IndexWarning, InstallSource, PackContents,
    PackDependencies, PackEntry, PackIndex, Release,
};
pub use version::{PackRequirement, RequirementError, SelectorError, VersionSelector};
