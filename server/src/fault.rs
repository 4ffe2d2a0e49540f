//! Fault injection for the crash tests: pauses at named points of critical sections so
//! that a test's `kill -9` lands inside them. Only debug builds (the test build) read
//! `ATTUNE_TEST_FAULT_PAUSE_MS`; release builds compile [`pause`] to nothing.

/// The environment variable the crash tests set (milliseconds per pause point).
pub const PAUSE_ENV: &str = "ATTUNE_TEST_FAULT_PAUSE_MS";

#[cfg(debug_assertions)]
fn pause_for() -> Option<std::time::Duration> {
    static PAUSE: std::sync::OnceLock<Option<std::time::Duration>> = std::sync::OnceLock::new();
    *PAUSE.get_or_init(|| {
        std::env::var(PAUSE_ENV)
            .ok()
            .and_then(|v| v.parse::<u64>().ok())
            .filter(|ms| *ms > 0)
            .map(std::time::Duration::from_millis)
    })
}

/// Sleeps the configured pause (blocking: the points are inside blocking file work and
/// between database statements; a test build only).
#[cfg(debug_assertions)]
pub fn pause(point: &str) {
    if let Some(pause) = pause_for() {
        tracing::debug!(point, "fault injection pause");
        std::thread::sleep(pause);
    }
}

#[cfg(not(debug_assertions))]
#[inline(always)]
pub fn pause(_point: &str) {}
