//! Logging: `RUST_LOG` filters (default [`DEFAULT_FILTER`]), text or JSON lines on stderr.

use tracing_subscriber::{EnvFilter, fmt};

use crate::config::LogFormat;

/// The filter when `RUST_LOG` is unset: our own `info`, but the resolver (pubgrub logs
/// every decision at debug/info) only when something is wrong, so that one install
/// does not print dozens of solver lines.
pub const DEFAULT_FILTER: &str = "info,pubgrub=warn";

/// `RUST_LOG` when set and valid (it replaces the default entirely), else
/// [`DEFAULT_FILTER`].
pub fn filter(rust_log: Option<&str>) -> EnvFilter {
    rust_log
        .filter(|spec| !spec.trim().is_empty())
        .and_then(|spec| EnvFilter::try_new(spec).ok())
        .unwrap_or_else(|| EnvFilter::new(DEFAULT_FILTER))
}

pub fn init(format: LogFormat) {
    let filter = filter(std::env::var("RUST_LOG").ok().as_deref());
    let builder = fmt()
        .with_env_filter(filter)
        .with_writer(|| ScrubbingStderr);
    // A second init (tests) is harmless; ignore the error it returns.
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}

/// stderr, with registered secrets replaced (`sandbox::scrub`): a log line quoting pack
/// output or an error text never carries one. The formatter writes each event in one
/// call, so a secret is not split between writes.
struct ScrubbingStderr;

impl std::io::Write for ScrubbingStderr {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let text = String::from_utf8_lossy(buf);
        let clean = crate::sandbox::scrub(&text);
        std::io::stderr().write_all(clean.as_bytes())?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// What a subscriber with this `RUST_LOG` prints of a resolver run and our own line.
    fn logged(rust_log: Option<&str>) -> String {
        let out = Captured::default();
        let writer = out.clone();
        let subscriber = fmt()
            .with_env_filter(filter(rust_log))
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            tracing::debug!(target: "pubgrub::internal::core", "solver debug line");
            tracing::info!(target: "pubgrub::solver", "solver info line");
            tracing::warn!(target: "pubgrub::solver", "solver warning");
            tracing::info!(target: "attune_packs_server::install", "install info line");
            tracing::debug!(target: "attune_packs_server::install", "install debug line");
        });
        String::from_utf8(out.0.lock().unwrap().clone()).unwrap()
    }

    #[test]
    fn the_default_level_hides_the_resolvers_chatter_but_not_its_warnings() {
        let text = logged(None);
        assert!(!text.contains("solver debug line"), "{text}");
        assert!(!text.contains("solver info line"), "{text}");
        assert!(text.contains("solver warning"), "{text}");
        assert!(text.contains("install info line"), "{text}");
        assert!(!text.contains("install debug line"), "{text}");
    }

    #[test]
    fn rust_log_replaces_the_default() {
        let text = logged(Some("pubgrub=debug,attune_packs_server=debug"));
        assert!(text.contains("solver debug line"), "{text}");
        assert!(text.contains("install debug line"), "{text}");
    }
}
