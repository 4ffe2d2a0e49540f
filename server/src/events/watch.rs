//! Following the event log from a cursor (WatchEvents and the REST event stream).
//!
//! A watcher reads stored events after its cursor in batches, then waits for new ones
//! (woken by commits of this process, polling for those of other processes sharing
//! the database). It never skips an event: ids become visible in increasing order,
//! and when retention deleted events it had not read yet the watch fails, naming the
//! oldest cursor kept, instead of going on past the hole.

use std::{sync::Arc, time::Duration};

use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch as signal};

use crate::{
    config::EventsSection,
    failure::{Failure, FailureKind},
    store::{Db, StoreError, outbox::OutboxEvent},
};

#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    #[error(
        "cursor {after} has expired: events after it were deleted by retention \
         (events.retain, events.retain_max_events); the oldest event kept is {oldest}. \
         Resume with after=0 (from the oldest kept) and reconcile, or with only_new"
    )]
    Expired { after: i64, oldest: i64 },
    #[error(
        "cursor {after} is ahead of the newest event ({newest}): it does not come from \
         this server's event log (was the database replaced?); resume with after=0"
    )]
    Ahead { after: u64, newest: i64 },
    #[error("{max} event streams are followed already (events.max_watchers); try again later")]
    Busy { max: u32 },
    #[error("cannot read the event outbox: {0}")]
    Store(#[from] StoreError),
}

impl Failure for WatchError {
    fn kind(&self) -> FailureKind {
        match self {
            WatchError::Expired { .. } | WatchError::Ahead { .. } => FailureKind::OutOfRange,
            WatchError::Busy { .. } | WatchError::Store(_) => FailureKind::Unavailable,
        }
    }
}

/// Where a watch starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// After this cursor; 0: from the oldest event kept.
    After(u64),
    /// After the newest event: only events committed from now on.
    Tip,
}

/// The event log of one database, as watchers read it. Cheap to clone.
#[derive(Clone)]
pub struct EventLog {
    db: Db,
    batch_size: u32,
    poll_interval: Duration,
    max_watchers: u32,
    watchers: Arc<Semaphore>,
}

impl EventLog {
    pub fn new(db: Db, section: &EventsSection) -> Self {
        Self {
            db,
            batch_size: section.batch_size,
            poll_interval: section.poll_interval,
            max_watchers: section.max_watchers,
            watchers: Arc::new(Semaphore::new(section.max_watchers as usize)),
        }
    }

    /// Starts a watch; fails at once when `start` is expired or not a cursor of this
    /// log, or when `events.max_watchers` watches run already.
    pub async fn watch(&self, start: Start) -> Result<Watcher, WatchError> {
        let permit = Arc::clone(&self.watchers)
            .try_acquire_owned()
            .map_err(|_| WatchError::Busy {
                max: self.max_watchers,
            })?;
        let commits = super::commits();
        let bounds = self.db.outbox_bounds().await?;
        let cursor = match start {
            Start::Tip => bounds.map_or(0, |(_, newest)| newest),
            Start::After(0) => 0,
            Start::After(after) => {
                let newest = bounds.map_or(0, |(_, newest)| newest);
                let cursor = i64::try_from(after)
                    .ok()
                    .filter(|c| *c <= newest)
                    .ok_or(WatchError::Ahead { after, newest })?;
                if let Some((oldest, _)) = bounds {
                    check_kept(cursor, oldest)?;
                }
                cursor
            }
        };
        Ok(Watcher {
            db: self.db.clone(),
            cursor,
            batch_size: self.batch_size,
            poll_interval: self.poll_interval,
            commits,
            _permit: permit,
        })
    }
}

/// Events after `cursor` may have been deleted when the cursor lies before the event
/// preceding the oldest kept: pruning deletes a prefix of the log, so the cursor
/// itself is gone, and so is anything between it and the oldest kept. (Ids are not
/// dense on PostgreSQL, so this may also refuse a cursor whose successors never
/// existed; it never lets a deletion pass unnoticed.)
fn check_kept(cursor: i64, oldest: i64) -> Result<(), WatchError> {
    if cursor > 0 && oldest > cursor + 1 {
        return Err(WatchError::Expired {
            after: cursor,
            oldest,
        });
    }
    Ok(())
}

/// One reader's position in the log. Holds one of `events.max_watchers` slots until
/// dropped; holds at most one batch of events in memory.
pub struct Watcher {
    db: Db,
    cursor: i64,
    batch_size: u32,
    poll_interval: Duration,
    commits: signal::Receiver<u64>,
    _permit: OwnedSemaphorePermit,
}

impl Watcher {
    /// The cursor the next events follow: the last one returned, or where the watch
    /// started.
    pub fn cursor(&self) -> i64 {
        self.cursor
    }

    /// The next batch of stored events, at most `limit` (and `events.batch_size`);
    /// empty once caught up.
    pub async fn stored(&mut self, limit: u32) -> Result<Vec<OutboxEvent>, WatchError> {
        let limit = limit.clamp(1, self.batch_size);
        let page = self.db.outbox_after(self.cursor, limit).await?;
        if let Some(oldest) = page.oldest {
            check_kept(self.cursor, oldest)?;
        }
        if let Some(last) = page.events.last() {
            self.cursor = last.id;
        }
        Ok(page.events)
    }

    /// The next batch of events, at most `limit`; waits until there is one.
    pub async fn next(&mut self, limit: u32) -> Result<Vec<OutboxEvent>, WatchError> {
        loop {
            // Marked seen before reading: a commit from now on ends the wait below.
            self.commits.borrow_and_update();
            let events = self.stored(limit).await?;
            if !events.is_empty() {
                return Ok(events);
            }
            tokio::select! {
                _ = self.commits.changed() => {}
                _ = tokio::time::sleep(self.poll_interval) => {}
            }
        }
    }
}
