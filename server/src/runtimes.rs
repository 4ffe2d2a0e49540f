//! Which Python and Node.js this host has, detected once per process.
//!
//! Spawning interpreters per request would cost tens of milliseconds each, so the
//! answer is cached for the life of the process (installing a new interpreter
//! under a running server is rare and a restart picks it up).

use std::time::Duration;

use semver::Version;
use tokio::{process::Command, sync::OnceCell};

use crate::manifest::parse_lenient_version;

/// A detected tool: the command that answered and its version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Detected {
    pub command: String,
    pub version: Version,
    /// The tool's own text, e.g. "Python 3.11.7" or "v20.20.2".
    pub raw: String,
}

#[derive(Debug, Clone, Default)]
pub struct Runtimes {
    pub python: Option<Detected>,
    pub node: Option<Detected>,
}

static RUNTIMES: OnceCell<Runtimes> = OnceCell::const_new();

/// The host's runtimes, probed on first use.
pub async fn detected() -> &'static Runtimes {
    RUNTIMES
        .get_or_init(|| async {
            let (python, node) =
                tokio::join!(probe(&["python3", "python"]), probe(&["node", "nodejs"]));
            tracing::debug!(?python, ?node, "detected runtimes");
            Runtimes { python, node }
        })
        .await
}

/// First command of `candidates` whose `--version` answers with a version.
async fn probe(candidates: &[&str]) -> Option<Detected> {
    for command in candidates {
        let run = Command::new(command)
            .arg("--version")
            .kill_on_drop(true)
            .output();
        let Ok(Ok(output)) = tokio::time::timeout(Duration::from_secs(10), run).await else {
            continue;
        };
        if !output.status.success() {
            continue;
        }
        // Python 2 printed its version on stderr.
        let text = if output.stdout.is_empty() {
            String::from_utf8_lossy(&output.stderr).trim().to_string()
        } else {
            String::from_utf8_lossy(&output.stdout).trim().to_string()
        };
        if let Some(version) = parse_lenient_version(&text) {
            return Some(Detected {
                command: command.to_string(),
                version,
                raw: text,
            });
        }
    }
    None
}
