//! What happens to installed packs after installation: removal, history, rollback.

pub mod history;
pub mod remove;
pub mod rollback;
