//! Pack events: what the rest of Attune hears about installed packs.
//!
//! An event is appended to the outbox (`event_outbox`) in the same database
//! transaction as the change it announces ([`crate::store::packs::PackWrite::append_event`]),
//! so an event exists exactly when its change committed: a rolled-back registration
//! announces nothing, and a committed one is never lost.

use serde::Serialize;

/// One event, as its message body is published (JSON) under its [`PackEvent::event_type`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum PackEvent {
    /// `pack.registered`: a pack was installed, upgraded, replaced or rolled back.
    Registered {
        pack_id: i64,
        pack_ref: String,
        version: String,
        runtime_names: Vec<String>,
    },
    /// `pack.deleted`: a pack was removed.
    Deleted { pack_id: i64, pack_ref: String },
    /// `pack.rolled_back`: a pack went back to a kept version.
    RolledBack {
        pack_id: i64,
        pack_ref: String,
        from_version: String,
        to_version: String,
    },
}

impl PackEvent {
    /// The routing key it is published under, and the `event_type` WatchEvents shows.
    pub fn event_type(&self) -> &'static str {
        match self {
            PackEvent::Registered { .. } => "pack.registered",
            PackEvent::Deleted { .. } => "pack.deleted",
            PackEvent::RolledBack { .. } => "pack.rolled_back",
        }
    }

    /// The message body.
    pub fn payload(&self) -> String {
        serde_json::to_string(self).expect("an event serializes")
    }
}

/// A new event id: 128 random bits, hex, stable across redeliveries of the event.
pub fn new_event_id() -> String {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).expect("the OS random generator is available");
    hex::encode(bytes)
}

pub mod relay;
pub mod watch;

use std::sync::LazyLock;

use tokio::sync::watch as signal;

/// Bumped after every committed pack write (whether or not it appended an event), so
/// that the relay and WatchEvents readers of this process look at the outbox at once
/// instead of at their next poll. One per process: every server in it shares the
/// signal, and a reader woken for another server's database just finds nothing new.
static COMMITTED: LazyLock<signal::Sender<u64>> = LazyLock::new(|| signal::channel(0).0);

/// Says that a write which may have appended events has committed.
pub fn outbox_committed() {
    COMMITTED.send_modify(|n| *n = n.wrapping_add(1));
}

/// A receiver that wakes after each [`outbox_committed`]; mark it seen
/// (`borrow_and_update`) before reading the outbox, so that no commit is missed.
pub fn commits() -> signal::Receiver<u64> {
    COMMITTED.subscribe()
}
