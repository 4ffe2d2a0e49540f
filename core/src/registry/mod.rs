//! The registry index formats ([`index`]: Attune's; [`exchange`]: the StackStorm
//! Exchange's, read into the same model) and version selection ([`version`]).
//!
//! Index formats and the multi-version extension: `docs/registry-index.md`.

pub mod exchange;
pub mod index;
pub mod version;

pub use index::{
    ComponentSummary, EntryProblem, IndexError, IndexFormat, IndexWarning, InstallSource,
    PackContents, PackDependencies, PackEntry, PackIndex, Release,
};
pub use version::{PackRequirement, RequirementError, SelectorError, VersionSelector};
