//! What happens to installed packs after installation: history, rollback.

pub mod history;
pub mod rollback;
