//! Secret values the process holds (configured tokens, passwords), and [`scrub`], which
//! removes them from any text that leaves the process: progress events, log lines,
//! results and the output of pack code.

use std::{borrow::Cow, sync::RwLock};

/// Replaces a registered secret in texts.
pub const REDACTED: &str = "[REDACTED]";
/// Shorter values are not scrubbed: they would match ordinary text.
const MIN_SECRET_LEN: usize = 8;

static SECRETS: RwLock<Vec<String>> = RwLock::new(Vec::new());

/// Adds `value` to the texts [`scrub`] removes (values shorter than 8 bytes are
/// ignored).
pub fn register_secret(value: &str) {
    let value = value.trim();
    if value.len() < MIN_SECRET_LEN {
        return;
    }
    let mut secrets = SECRETS.write().unwrap_or_else(|e| e.into_inner());
    if !secrets.iter().any(|s| s == value) {
        secrets.push(value.to_string());
    }
}

/// `text` with every registered secret replaced by [`REDACTED`].
pub fn scrub(text: &str) -> Cow<'_, str> {
    let secrets = SECRETS.read().unwrap_or_else(|e| e.into_inner());
    let mut out = Cow::Borrowed(text);
    for secret in secrets.iter() {
        if out.contains(secret.as_str()) {
            out = Cow::Owned(out.replace(secret.as_str(), REDACTED));
        }
    }
    out
}

/// [`scrub`] in place.
pub fn scrub_string(text: &mut String) {
    if let Cow::Owned(clean) = scrub(text) {
        *text = clean;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scrub_replaces_registered_secrets_only() {
        register_secret("short");
        register_secret("  scrub-test-secret-0123456789  ");
        assert_eq!(scrub("nothing here"), "nothing here");
        assert!(matches!(scrub("nothing here"), Cow::Borrowed(_)));
        assert_eq!(
            scrub("a scrub-test-secret-0123456789 b scrub-test-secret-0123456789"),
            "a [REDACTED] b [REDACTED]"
        );
        assert_eq!(scrub("short stays"), "short stays", "too short to scrub");
        let mut s = String::from("x=scrub-test-secret-0123456789");
        scrub_string(&mut s);
        assert_eq!(s, "x=[REDACTED]");
    }
}
