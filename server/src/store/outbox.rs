//! The event outbox: events written in the transaction of the change they announce,
//! read in cursor (`id`) order by the relay and by WatchEvents, and pruned by age and
//! count.
//!
//! Readers follow `id > cursor`, which is only safe because ids become visible in
//! increasing order (see [`PackWrite::append_event`]) and because pruning deletes a
//! prefix of the log (`id <= bound`) and never the newest event: a reader can then
//! tell that events it did not see were deleted (its cursor lies before the oldest
//! kept one) rather than skip them.

use sqlx::{Postgres, Row, Transaction};

use crate::events::{PackEvent, new_event_id};

use super::{Db, StoreError, packs::PackWrite};

const INSERT_EVENT: &str = "INSERT INTO event_outbox (event_id, event_type, payload, created_at) \
    VALUES ($1, $2, $3, $4) RETURNING id";

/// Serializes the publishing of events across server processes sharing a PostgreSQL
/// database, so that they reach the broker in cursor order.
const RELAY_LEASE: &str = "SELECT pg_try_advisory_xact_lock(hashtext('attune-packs:event_relay'))";

/// Events after `$1`, at most `$2`, read in the same statement (one snapshot) as the
/// oldest event kept: a prune between two statements cannot hide a gap.
const AFTER: &str = "SELECT b.oldest, e.id, e.event_id, e.event_type, e.payload, e.created_at \
    FROM (SELECT MIN(id) AS oldest FROM event_outbox) b \
    LEFT JOIN (SELECT id, event_id, event_type, payload, created_at FROM event_outbox \
               WHERE id > $1 ORDER BY id LIMIT $2) e ON 1 = 1 \
    ORDER BY e.id";

const BOUNDS: &str = "SELECT MIN(id), MAX(id) FROM event_outbox";

const UNPUBLISHED: &str = "SELECT id, event_id, event_type, payload, created_at FROM event_outbox \
    WHERE published_at IS NULL ORDER BY id LIMIT $1";

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

/// One event as the outbox stores it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxEvent {
    /// The cursor.
    pub id: i64,
    pub event_id: String,
    pub event_type: String,
    /// The message body, JSON.
    pub payload: String,
    pub created_at_ms: i64,
}

/// Events after a cursor, and the oldest cursor kept when they were read.
#[derive(Debug, Clone, Default)]
pub struct OutboxPage {
    pub events: Vec<OutboxEvent>,
    /// `None`: the outbox is empty.
    pub oldest: Option<i64>,
}

/// What [`Db::prune_outbox`] may delete.
#[derive(Debug, Clone, Copy)]
pub struct Retention {
    /// Events created before this (ms since the epoch) may go.
    pub created_before_ms: i64,
    /// Events beyond the newest `max_events` may go.
    pub max_events: u64,
    /// Events not yet published may go too (no broker is configured, so none ever
    /// will be).
    pub unpublished_too: bool,
}

/// The right to publish the unpublished events read with it, in order. PostgreSQL:
/// an open transaction holding the relay lease; release it with
/// [`RelayLease::mark_published`] or [`RelayLease::release`], never by dropping it
/// (a dropped transaction keeps its lock until the pooled connection is next used).
pub enum RelayLease {
    Sqlite(sqlx::SqlitePool),
    Postgres(Transaction<'static, Postgres>),
}

fn row_event<R: Row>(row: &R, first: usize) -> Result<Option<OutboxEvent>, sqlx::Error>
where
    usize: sqlx::ColumnIndex<R>,
    i64: for<'r> sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    String: for<'r> sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    let Some(id) = row.try_get::<Option<i64>, _>(first)? else {
        return Ok(None);
    };
    Ok(Some(OutboxEvent {
        id,
        event_id: row.try_get(first + 1)?,
        event_type: row.try_get(first + 2)?,
        payload: row.try_get(first + 3)?,
        created_at_ms: row.try_get(first + 4)?,
    }))
}

impl Db {
    /// At most `limit` events after `cursor`, in cursor order, with the oldest kept.
    pub async fn outbox_after(&self, cursor: i64, limit: u32) -> Result<OutboxPage, StoreError> {
        let mut page = OutboxPage::default();
        on_pool!(self, pool => {
            let rows = sqlx::query(AFTER)
                .bind(cursor)
                .bind(i64::from(limit))
                .fetch_all(pool)
                .await?;
            for row in &rows {
                page.oldest = row.try_get::<Option<i64>, _>(0)?;
                if let Some(event) = row_event(row, 1)? {
                    page.events.push(event);
                }
            }
        });
        Ok(page)
    }

    /// The oldest and the newest cursor kept; `None` when the outbox is empty.
    pub async fn outbox_bounds(&self) -> Result<Option<(i64, i64)>, StoreError> {
        let (oldest, newest): (Option<i64>, Option<i64>) =
            on_pool!(self, pool => sqlx::query_as(BOUNDS).fetch_one(pool).await?);
        Ok(oldest.zip(newest))
    }

    /// The first `limit` unpublished events and the lease to publish them; `None` when
    /// another process holds the lease (PostgreSQL).
    pub async fn claim_unpublished(
        &self,
        limit: u32,
    ) -> Result<Option<(RelayLease, Vec<OutboxEvent>)>, StoreError> {
        let (lease, rows) = match self {
            // Not in a transaction: a SQLite write transaction held while the broker
            // answers would stall every registration. Two processes sharing one SQLite
            // file may then both publish an event: a duplicate, which at-least-once
            // delivery allows.
            Db::Sqlite(pool) => {
                let rows = sqlx::query(UNPUBLISHED)
                    .bind(i64::from(limit))
                    .fetch_all(pool)
                    .await?;
                (RelayLease::Sqlite(pool.clone()), rows_events(&rows)?)
            }
            Db::Postgres(pool) => {
                let mut tx = pool.begin().await?;
                let leased: bool = match sqlx::query_scalar(RELAY_LEASE).fetch_one(&mut *tx).await {
                    Ok(leased) => leased,
                    Err(e) => {
                        let _ = tx.rollback().await;
                        return Err(e.into());
                    }
                };
                if !leased {
                    let _ = tx.rollback().await;
                    return Ok(None);
                }
                let rows = match sqlx::query(UNPUBLISHED)
                    .bind(i64::from(limit))
                    .fetch_all(&mut *tx)
                    .await
                {
                    Ok(rows) => rows,
                    Err(e) => {
                        let _ = tx.rollback().await;
                        return Err(e.into());
                    }
                };
                let events = rows_events(&rows);
                let lease = RelayLease::Postgres(tx);
                match events {
                    Ok(events) => (lease, events),
                    Err(e) => {
                        lease.release().await;
                        return Err(e);
                    }
                }
            }
        };
        Ok(Some((lease, rows)))
    }

    /// Deletes what `retention` allows: a prefix of the log, never the newest event,
    /// and never an unpublished one unless `retention.unpublished_too`. Returns how
    /// many events were deleted.
    pub async fn prune_outbox(&self, retention: Retention) -> Result<u64, StoreError> {
        const OVER_CAP: &str = "SELECT id FROM event_outbox ORDER BY id DESC LIMIT 1 OFFSET $1";
        const TOO_OLD: &str = "SELECT MAX(id) FROM event_outbox WHERE created_at < $1";
        const FIRST_UNPUBLISHED: &str =
            "SELECT MIN(id) FROM event_outbox WHERE published_at IS NULL";
        const DELETE: &str = "DELETE FROM event_outbox WHERE id <= $1";
        let Some((_, newest)) = self.outbox_bounds().await? else {
            return Ok(0);
        };
        let offset = i64::try_from(retention.max_events.saturating_sub(1)).unwrap_or(i64::MAX);
        let over_cap: Option<i64> = on_pool!(self, pool => sqlx::query_scalar(OVER_CAP)
            .bind(offset)
            .fetch_optional(pool)
            .await?);
        // The row at offset `max_events - 1` is the oldest one kept by the cap.
        let over_cap = over_cap.map(|kept| kept - 1);
        let too_old: Option<i64> = on_pool!(self, pool => sqlx::query_scalar(TOO_OLD)
            .bind(retention.created_before_ms)
            .fetch_one(pool)
            .await?);
        let Some(mut bound) = over_cap.max(too_old) else {
            return Ok(0);
        };
        bound = bound.min(newest - 1);
        if !retention.unpublished_too {
            let first: Option<i64> = on_pool!(self, pool => sqlx::query_scalar(FIRST_UNPUBLISHED)
                .fetch_one(pool)
                .await?);
            if let Some(first) = first {
                bound = bound.min(first - 1);
            }
        }
        let deleted = on_pool!(self, pool => sqlx::query(DELETE)
            .bind(bound)
            .execute(pool)
            .await?
            .rows_affected());
        Ok(deleted)
    }
}

fn rows_events<R: Row>(rows: &[R]) -> Result<Vec<OutboxEvent>, StoreError>
where
    usize: sqlx::ColumnIndex<R>,
    i64: for<'r> sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    String: for<'r> sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    let mut events = Vec::with_capacity(rows.len());
    for row in rows {
        if let Some(event) = row_event(row, 0)? {
            events.push(event);
        }
    }
    Ok(events)
}

/// `UPDATE … WHERE id IN ($2, $3, …)` for `ids` events.
fn mark_sql(ids: usize) -> String {
    let mut sql = String::from("UPDATE event_outbox SET published_at = $1 WHERE id IN (");
    for i in 0..ids {
        if i > 0 {
            sql.push_str(", ");
        }
        sql.push_str(&format!("${}", i + 2));
    }
    sql.push(')');
    sql
}

impl RelayLease {
    /// Records `ids` as published (confirmed by the broker) and releases the lease.
    pub async fn mark_published(self, ids: &[i64], now_ms: i64) -> Result<(), StoreError> {
        if ids.is_empty() {
            self.release().await;
            return Ok(());
        }
        let sql = mark_sql(ids.len());
        match self {
            RelayLease::Sqlite(pool) => {
                let mut query = sqlx::query(&sql).bind(now_ms);
                for id in ids {
                    query = query.bind(*id);
                }
                query.execute(&pool).await?;
            }
            RelayLease::Postgres(mut tx) => {
                let mut query = sqlx::query(&sql).bind(now_ms);
                for id in ids {
                    query = query.bind(*id);
                }
                if let Err(e) = query.execute(&mut *tx).await {
                    let _ = tx.rollback().await;
                    return Err(e.into());
                }
                tx.commit().await?;
            }
        }
        Ok(())
    }

    /// Gives the lease up without recording anything.
    pub async fn release(self) {
        if let RelayLease::Postgres(tx) = self {
            let _ = tx.rollback().await;
        }
    }
}
