//! The event outbox: events written in the transaction of the change they announce.

use crate::events::{PackEvent, new_event_id};

use super::{StoreError, packs::PackWrite};

const INSERT_EVENT: &str = "INSERT INTO event_outbox (event_id, event_type, payload, created_at) \
    VALUES ($1, $2, $3, $4) RETURNING id";

impl PackWrite {
    /// Appends `event` to the outbox inside this write; it exists once the write
    /// commits and never if it rolls back. Returns its cursor.
    ///
    /// On PostgreSQL, ids are drawn from a sequence before commit, so two writers could
    /// commit ids out of order and a reader following `id > cursor` would skip the later
    /// committer's smaller id. A transaction-scoped advisory lock taken before the insert
    /// makes event-writing transactions commit in id order. SQLite writers are
    /// serialized by `BEGIN IMMEDIATE` already.
    pub async fn append_event(
        &mut self,
        event: &PackEvent,
        now_ms: i64,
    ) -> Result<i64, StoreError> {
        if let PackWrite::Postgres(tx) = self {
            sqlx::query("SELECT pg_advisory_xact_lock(hashtext('attune-packs:event_outbox'))")
                .execute(&mut **tx)
                .await?;
        }
        let id: i64 = on_tx!(self, tx => sqlx::query_scalar(INSERT_EVENT)
            .bind(new_event_id())
            .bind(event.event_type())
            .bind(event.payload())
            .bind(now_ms)
            .fetch_one(&mut **tx)
            .await?);
        Ok(id)
    }
}
