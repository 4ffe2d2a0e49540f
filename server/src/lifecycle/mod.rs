//! The lifecycle of installed packs: removal, history and rollback.

pub mod remove;
