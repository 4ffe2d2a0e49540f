//! What is installed: [`list`] pages through the installed packs, [`show`] gives one
//! pack in full, [`verify`] checks installed packs' files against what registration
//! recorded (like `rpm -V`).
//!
//! Read-only: nothing here changes a row or a file.

pub mod list;
pub mod show;
pub mod verify;

use std::path::{Path, PathBuf};

use crate::{
    envs::{Marker, RefDir},
    failure::{Failure, FailureKind},
    store::StoreError,
};

pub use list::{ComponentCounts, ListRequest, ListedPack, PackList};
pub use show::{DependencyLink, PackDetails, Provenance};
pub use verify::{VerifiedPack, VerifyReport, VerifyStatus};

/// Why an inventory call failed as a whole.
#[derive(Debug, thiserror::Error)]
pub enum InventoryError {
    #[error("page_size {requested} is more than {max}, the largest page; ask for at most {max}")]
    PageSizeTooLarge { requested: u32, max: u32 },
    #[error("page_size must be at least 1 (or unset for {default})")]
    PageSizeZero { default: u32 },
    #[error("page is 1-based: the first page is page 1")]
    PageZero,
    #[error(
        "page_token is not a token of a previous ListPacks answer with the same ref_prefix \
         and keyword ({reason}); start again without page_token"
    )]
    BadPageToken { reason: &'static str },
    #[error("{field} is {len} characters long; at most {max} are accepted")]
    FilterTooLong {
        field: &'static str,
        len: usize,
        max: usize,
    },
    #[error("pack '{pack_ref}' is not installed")]
    NotInstalled { pack_ref: String },
    #[error(
        "{field}: '{value}' is not a pack ref (2 to 64 characters: lowercase letters, \
         digits, '_' and '-', starting with a letter)"
    )]
    InvalidRef { field: &'static str, value: String },
    #[error("{count} refs in one request; at most {max}")]
    TooManyRefs { count: usize, max: usize },
    #[error("the installed packs cannot be read: {0}")]
    Store(#[from] StoreError),
}

impl Failure for InventoryError {
    fn kind(&self) -> FailureKind {
        match self {
            InventoryError::PageSizeTooLarge { .. }
            | InventoryError::PageSizeZero { .. }
            | InventoryError::PageZero
            | InventoryError::BadPageToken { .. }
            | InventoryError::FilterTooLong { .. }
            | InventoryError::InvalidRef { .. }
            | InventoryError::TooManyRefs { .. } => FailureKind::InvalidRequest,
            InventoryError::NotInstalled { .. } => FailureKind::NotFound,
            InventoryError::Store(StoreError::Sqlx(
                sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Io(_),
            )) => FailureKind::Unavailable,
            InventoryError::Store(_) => FailureKind::Internal,
        }
    }
}

/// The runtimes a pack can have an environment for: the link name under
/// `.envs/<ref>/` and the file whose presence in the pack means it needs one.
const RUNTIMES: [(&str, &str); 2] = [
    ("python", crate::envs::PYTHON_MANIFEST),
    ("node", crate::envs::NODE_MANIFEST),
];

/// One of a pack's environments as found on disk.
#[derive(Debug, Clone, PartialEq)]
pub struct EnvironmentState {
    /// `python` or `node`.
    pub runtime: &'static str,
    /// The stable path workers use: `<packs_base_dir>/.envs/<ref>/<runtime>`.
    pub path: PathBuf,
    /// The marker of the build the link points at: present when the environment is
    /// complete (`ready`), absent when it is `missing`.
    pub marker: Option<Marker>,
}

impl EnvironmentState {
    pub fn status(&self) -> &'static str {
        if self.marker.is_some() {
            "ready"
        } else {
            "missing"
        }
    }
}

/// The environments of the pack stored at `storage_path`: a runtime is listed when
/// its environment link exists or when the pack needs it (has `requirements.txt` /
/// `package.json`). Environments live beside the packs, under
/// `<parent of storage_path>/.envs/<ref>/`.
pub fn environments(storage_path: &Path, pack_ref: &str) -> Vec<EnvironmentState> {
    let Some(base) = storage_path.parent() else {
        return Vec::new();
    };
    let ref_dir = RefDir::new(&crate::buildenvs::envs_root(base), pack_ref);
    RUNTIMES
        .iter()
        .filter_map(|(runtime, needs)| {
            let path = ref_dir.link(runtime);
            let linked = std::fs::symlink_metadata(&path).is_ok();
            let needed = storage_path.join(needs).is_file();
            (linked || needed).then(|| EnvironmentState {
                runtime,
                marker: ref_dir.current_marker(runtime),
                path,
            })
        })
        .collect()
}
