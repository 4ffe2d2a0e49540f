//! Memory of the test process, where the server under test runs too: the peak
//! resident set while an operation runs, to show that an attack stayed bounded.
//!
//! Tests of one binary run in parallel, so the figure includes whatever the other
//! tests allocated meanwhile; bounds are set well above the operation's own needs
//! and far below what the attacks cost without their limits (gigabytes).

use std::future::Future;

/// One `Vm…:` line of /proc/self/status, in bytes.
fn status_bytes(key: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status
        .lines()
        .find(|l| l.starts_with(key))
        .unwrap_or_else(|| panic!("{key} not in /proc/self/status"));
    let kib: u64 = line
        .trim_start_matches(key)
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .unwrap();
    kib * 1024
}

/// Current resident set size.
pub fn rss() -> u64 {
    status_bytes("VmRSS:")
}

/// Runs `operation` and returns its output with how far the process's peak resident
/// set rose above the resident set at the start. The kernel's peak mark (VmHWM) is
/// reset first, so a spike freed before the end is still seen.
pub async fn peak_growth<F: Future>(operation: F) -> (F::Output, u64) {
    std::fs::write("/proc/self/clear_refs", "5").expect("reset the peak RSS mark");
    let before = rss();
    let output = operation.await;
    let peak = status_bytes("VmHWM:");
    (output, peak.saturating_sub(before))
}

pub const MIB: u64 = 1024 * 1024;
