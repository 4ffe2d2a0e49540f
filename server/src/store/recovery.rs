//! What start-up recovery (`journal::recover`) asks the database.

use super::{Db, StoreError};

impl Db {
    /// The checksum recorded for `pack_ref`, if it is registered: the commit token of
    /// an interrupted swap.
    pub async fn pack_checksum(&self, pack_ref: &str) -> Result<Option<String>, StoreError> {
        const SQL: &str = "SELECT checksum FROM packs WHERE ref = $1";
        let row: Option<(Option<String>,)> = on_pool!(self, pool => sqlx::query_as(SQL)
            .bind(pack_ref)
            .fetch_optional(pool)
            .await?);
        Ok(row.and_then(|(c,)| c))
    }

    /// Where every registered pack is stored (their parents are the packs base
    /// directories in use).
    pub async fn storage_paths(&self) -> Result<Vec<String>, StoreError> {
        const SQL: &str = "SELECT DISTINCT storage_path FROM packs";
        let rows: Vec<(String,)> =
            on_pool!(self, pool => sqlx::query_as(SQL).fetch_all(pool).await?);
        Ok(rows.into_iter().map(|(p,)| p).collect())
    }
}

impl super::packs::PackWrite {
    /// The checksum recorded for `pack_ref`, read inside this write (its lock held).
    pub async fn recorded_checksum(
        &mut self,
        pack_ref: &str,
    ) -> Result<Option<String>, StoreError> {
        const SQL: &str = "SELECT checksum FROM packs WHERE ref = $1";
        let row: Option<(Option<String>,)> = on_tx!(self, tx => sqlx::query_as(SQL)
            .bind(pack_ref)
            .fetch_optional(&mut **tx)
            .await?);
        Ok(row.and_then(|(c,)| c))
    }
}
