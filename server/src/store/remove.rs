//! Removing packs: what a removal reads about the packs it takes out, and the deletes
//! of its transaction. Components and test results go with the pack's row (foreign
//! keys with `ON DELETE CASCADE`); kept versions are deleted by ref; history rows stay.

use super::{Db, RegisteredPackRow, StoreError, packs::PackWrite};

/// A pack as a removal needs it: what to delete, and what its history row records.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct RemovableRow {
    #[sqlx(rename = "id")]
    pub pack_id: i64,
    #[sqlx(rename = "ref")]
    pub pack_ref: String,
    pub version: String,
    pub source: Option<String>,
    pub checksum: Option<String>,
    pub storage_path: String,
}

/// One version kept for rollback: its version and where its files are.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct KeptFiles {
    pub pack_ref: String,
    pub version: String,
    pub files_path: String,
}

const INSTALLED: &str = "SELECT ref, version, dependencies FROM packs ORDER BY ref";
const REMOVABLE: &str =
    "SELECT id, ref, version, source, checksum, storage_path FROM packs WHERE ref = $1";
const KEPT: &str =
    "SELECT pack_ref, version, files_path FROM pack_versions WHERE pack_ref = $1 ORDER BY id";
const DELETE_PACK: &str = "DELETE FROM packs WHERE id = $1 AND ref = $2";
const DELETE_KEPT: &str = "DELETE FROM pack_versions WHERE pack_ref = $1";
const PACK_ID_EXISTS: &str = "SELECT id FROM packs WHERE id = $1";
const STORAGE_PATH: &str = "SELECT storage_path FROM packs WHERE ref = $1";
const KEPT_IN_USE: &str = "SELECT id FROM pack_versions WHERE files_path = $1 LIMIT 1";

fn installed_rows(rows: Vec<(String, String, String)>) -> Vec<RegisteredPackRow> {
    rows.into_iter()
        .map(|(pack_ref, version, deps)| RegisteredPackRow {
            pack_ref,
            version,
            // Written by us as a JSON list; an unreadable value means "none recorded".
            dependencies: serde_json::from_str(&deps).unwrap_or_default(),
        })
        .collect()
}

impl Db {
    /// The row of `pack_ref`, if it is installed (for a dry run: no lock taken).
    pub async fn removable(&self, pack_ref: &str) -> Result<Option<RemovableRow>, StoreError> {
        Ok(on_pool!(self, pool => sqlx::query_as(REMOVABLE)
            .bind(pack_ref)
            .fetch_optional(pool)
            .await?))
    }

    /// The versions of `pack_ref` kept for rollback, oldest first.
    pub async fn kept_files(&self, pack_ref: &str) -> Result<Vec<KeptFiles>, StoreError> {
        Ok(on_pool!(self, pool => sqlx::query_as(KEPT)
            .bind(pack_ref)
            .fetch_all(pool)
            .await?))
    }

    /// Whether a kept version's row still names `files_path`.
    pub async fn kept_files_in_use(&self, files_path: &str) -> Result<bool, StoreError> {
        let row: Option<i64> = on_pool!(self, pool => sqlx::query_scalar(KEPT_IN_USE)
            .bind(files_path)
            .fetch_optional(pool)
            .await?);
        Ok(row.is_some())
    }
}

impl PackWrite {
    /// Every installed pack with its declared dependencies, read inside this write.
    pub async fn installed_packs(&mut self) -> Result<Vec<RegisteredPackRow>, StoreError> {
        let rows: Vec<(String, String, String)> =
            on_tx!(self, tx => sqlx::query_as(INSTALLED).fetch_all(&mut **tx).await?);
        Ok(installed_rows(rows))
    }

    /// The row of `pack_ref`, read inside this write.
    pub async fn removable(&mut self, pack_ref: &str) -> Result<Option<RemovableRow>, StoreError> {
        Ok(on_tx!(self, tx => sqlx::query_as(REMOVABLE)
            .bind(pack_ref)
            .fetch_optional(&mut **tx)
            .await?))
    }

    /// The versions of `pack_ref` kept for rollback, read inside this write.
    pub async fn kept_files(&mut self, pack_ref: &str) -> Result<Vec<KeptFiles>, StoreError> {
        Ok(on_tx!(self, tx => sqlx::query_as(KEPT)
            .bind(pack_ref)
            .fetch_all(&mut **tx)
            .await?))
    }

    /// Deletes the pack's row (its components and test results cascade) and its kept
    /// versions' rows. `false` when no row has that id and ref any more.
    pub async fn delete_pack(&mut self, pack_id: i64, pack_ref: &str) -> Result<bool, StoreError> {
        let deleted = on_tx!(self, tx => sqlx::query(DELETE_PACK)
            .bind(pack_id)
            .bind(pack_ref)
            .execute(&mut **tx)
            .await?
            .rows_affected());
        on_tx!(self, tx => sqlx::query(DELETE_KEPT)
            .bind(pack_ref)
            .execute(&mut **tx)
            .await
            .map(|_| ())?);
        Ok(deleted == 1)
    }

    /// Whether a row has `pack_id`: a removal's commit token (ids are never reused).
    pub async fn pack_id_exists(&mut self, pack_id: i64) -> Result<bool, StoreError> {
        let row: Option<i64> = on_tx!(self, tx => sqlx::query_scalar(PACK_ID_EXISTS)
            .bind(pack_id)
            .fetch_optional(&mut **tx)
            .await?);
        Ok(row.is_some())
    }

    /// Where `pack_ref` is stored, if it is registered, read inside this write.
    pub async fn pack_storage_path(
        &mut self,
        pack_ref: &str,
    ) -> Result<Option<String>, StoreError> {
        Ok(on_tx!(self, tx => sqlx::query_scalar(STORAGE_PATH)
            .bind(pack_ref)
            .fetch_optional(&mut **tx)
            .await?))
    }
}

impl Db {
    /// Whether a row has `pack_id` (outside any write): after a failed COMMIT, whether
    /// it went through.
    pub async fn pack_id_exists(&self, pack_id: i64) -> Result<bool, StoreError> {
        let row: Option<i64> = on_pool!(self, pool => sqlx::query_scalar(PACK_ID_EXISTS)
            .bind(pack_id)
            .fetch_optional(pool)
            .await?);
        Ok(row.is_some())
    }
}
