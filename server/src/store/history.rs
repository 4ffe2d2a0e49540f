//! Pack history: one row per install, upgrade, downgrade, replace, removal and rollback.

use super::{StoreError, packs::PackWrite};

/// What happened to a pack.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HistoryAction {
    Install,
    Upgrade,
    Downgrade,
    Replace,
    Remove,
    Rollback,
}

impl HistoryAction {
    pub fn as_str(self) -> &'static str {
        match self {
            HistoryAction::Install => "install",
            HistoryAction::Upgrade => "upgrade",
            HistoryAction::Downgrade => "downgrade",
            HistoryAction::Replace => "replace",
            HistoryAction::Remove => "remove",
            HistoryAction::Rollback => "rollback",
        }
    }
}

/// A version of a pack as a history row names it (`from_*` / `to_*`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HistoryVersion {
    pub version: Option<String>,
    pub source: Option<String>,
    pub checksum: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryRow {
    pub pack_ref: String,
    pub action: HistoryAction,
    pub from: HistoryVersion,
    pub to: HistoryVersion,
    pub actor: Option<String>,
    pub succeeded: bool,
    pub detail: Option<String>,
}

const INSERT_HISTORY: &str = "INSERT INTO pack_history (pack_ref, action, from_version, \
    from_source, from_checksum, to_version, to_source, to_checksum, actor, at, outcome, detail) \
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) RETURNING id";

macro_rules! bind_history {
    ($query:expr, $row:expr, $now:expr) => {
        $query
            .bind(&$row.pack_ref)
            .bind($row.action.as_str())
            .bind(&$row.from.version)
            .bind(&$row.from.source)
            .bind(&$row.from.checksum)
            .bind(&$row.to.version)
            .bind(&$row.to.source)
            .bind(&$row.to.checksum)
            .bind(&$row.actor)
            .bind($now)
            .bind(if $row.succeeded {
                "succeeded"
            } else {
                "failed"
            })
            .bind(&$row.detail)
    };
}

impl PackWrite {
    /// Records `row` inside this write (a succeeded change commits with its row).
    pub async fn append_history(
        &mut self,
        row: &HistoryRow,
        now_ms: i64,
    ) -> Result<i64, StoreError> {
        let id: i64 = on_tx!(self, tx => bind_history!(sqlx::query_scalar(INSERT_HISTORY), row, now_ms)
            .fetch_one(&mut **tx)
            .await?);
        Ok(id)
    }
}

impl super::Db {
    /// Records `row` on its own: for a failed change, whose write was rolled back.
    pub async fn append_history(&self, row: &HistoryRow, now_ms: i64) -> Result<i64, StoreError> {
        let id: i64 = on_pool!(self, pool => bind_history!(sqlx::query_scalar(INSERT_HISTORY), row, now_ms)
            .fetch_one(pool)
            .await?);
        Ok(id)
    }
}
