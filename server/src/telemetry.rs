//! Logging: `RUST_LOG` filters (default `info`), text or JSON lines on stderr.

use tracing_subscriber::{EnvFilter, fmt};

use crate::config::LogFormat;

pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
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
