//! The packs base directory of a request: the one the caller named, confined to the
//! allowed roots, or the server's default. One rule and one error for every stage.

use std::{
    io,
    path::{Path, PathBuf},
};

use crate::paths::{PathError, PathPolicy};

#[derive(Debug, thiserror::Error)]
pub enum BaseDirError {
    #[error("packs_base_dir: {0}")]
    Confine(#[source] PathError),
    #[error("packs_base_dir: cannot create '{}': {source}", path.display())]
    Create {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// `requested` confined by `paths`, or `default` when the caller named none.
pub fn resolve(
    paths: &PathPolicy,
    requested: Option<&str>,
    default: &Path,
) -> Result<PathBuf, BaseDirError> {
    match requested {
        Some(dir) => paths.confine(dir).map_err(BaseDirError::Confine),
        None => Ok(default.to_path_buf()),
    }
}

/// [`resolve`], created if missing: for the stages that write packs into it.
pub fn create(
    paths: &PathPolicy,
    requested: Option<&str>,
    default: &Path,
) -> Result<PathBuf, BaseDirError> {
    let base = resolve(paths, requested, default)?;
    std::fs::create_dir_all(&base).map_err(|source| BaseDirError::Create {
        path: base.clone(),
        source,
    })?;
    Ok(base)
}
