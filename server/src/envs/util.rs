//! Small helpers shared by the Python and Node builders: hashing, file identity,
//! PATH lookups, version requests and running a tool with streamed output.

use std::ffi::OsString;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use semver::Version;
use sha2::{Digest as _, Sha256};
use tokio::time::Instant;

use super::error::{EnvError, ToolError};
use crate::process::{self, CommandSpec, Finished, ProcessError};
use crate::progress::{Reporter, Stage};

/// How many lines of a failed tool's output end up in the error.
pub const ERROR_TAIL_LINES: usize = 20;

/// SHA-256 over length-prefixed fields, so `("ab", "c")` and `("a", "bc")` differ.
pub struct InputsHasher(Sha256);

impl InputsHasher {
    pub fn new(domain: &str) -> Self {
        let mut h = Self(Sha256::new());
        h.field(domain.as_bytes());
        h
    }

    pub fn field(&mut self, bytes: &[u8]) {
        self.0.update((bytes.len() as u64).to_le_bytes());
        self.0.update(bytes);
    }

    pub fn str(&mut self, s: &str) {
        self.field(s.as_bytes());
    }

    pub fn finish(self) -> String {
        hex::encode(self.0.finalize())
    }
}

/// Size, modification time and inode of the file `path` resolves to: an interpreter
/// replaced or upgraded in place changes it.
pub fn file_identity(path: &Path) -> Option<String> {
    let meta = std::fs::metadata(path).ok()?;
    Some(format!(
        "{}:{}.{}:{}:{}",
        meta.len(),
        meta.mtime(),
        meta.mtime_nsec(),
        meta.ino(),
        meta.dev()
    ))
}

/// The directories of the server's `PATH`, in order.
pub fn path_dirs() -> Vec<PathBuf> {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default()
}

pub fn is_executable_file(path: &Path) -> bool {
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.mode() & 0o111 != 0)
}

/// The first executable `name` on `PATH` (not resolved). No process is started.
pub fn find_on_path(name: &str) -> Option<PathBuf> {
    path_dirs()
        .into_iter()
        .map(|d| d.join(name))
        .find(|p| is_executable_file(p))
}

/// A requested runtime version such as `3.11`, `3`, `3.11.7`, `python3.11`, `v20`:
/// its numeric components, which must equal the leading components of the version.
pub fn parse_version_request(request: &str) -> Result<Vec<u64>, EnvError> {
    let mut s = request.trim();
    for prefix in ["python", "Python", "node", "v", "V"] {
        s = s.strip_prefix(prefix).unwrap_or(s).trim_start();
    }
    let s = s.strip_suffix(".x").or(s.strip_suffix(".*")).unwrap_or(s);
    let parts: Result<Vec<u64>, _> = s.split('.').map(str::parse).collect();
    match parts {
        Ok(parts) if !parts.is_empty() && parts.len() <= 3 => Ok(parts),
        _ => Err(EnvError::InvalidVersionRequest {
            request: request.to_string(),
        }),
    }
}

pub fn request_matches(parts: &[u64], version: &Version) -> bool {
    let have = [version.major, version.minor, version.patch];
    parts.iter().zip(have).all(|(want, have)| *want == have)
}

/// Time left until `deadline`, or an error naming what could not start.
pub fn remaining(deadline: Instant, what: &str, timeout: Duration) -> Result<Duration, EnvError> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        Err(EnvError::TimeUsedUp {
            what: what.to_string(),
            timeout_secs: timeout.as_secs(),
        })
    } else {
        Ok(left)
    }
}

/// Runs one tool invocation: output lines stream to `reporter` as `Stage::Build`
/// info prefixed with `label`; anything but a clean exit is an error
/// `<what> failed (exit code 1): <headline>` followed by the last lines of output.
pub async fn run_tool(
    spec: &CommandSpec,
    what: &str,
    label: &str,
    reporter: &Reporter,
    total_timeout: Duration,
) -> Result<Finished, ToolError> {
    let result = process::run(
        spec,
        |_, line| {
            if !line.trim().is_empty() {
                reporter.info(Stage::Build, format!("{label}: {line}"));
            }
        },
        process::poll_cancelled(|| reporter.is_cancelled()),
    )
    .await;
    let what = what.to_string();
    let finished = match result {
        Ok(finished) => finished,
        Err(ProcessError::Cancelled { .. }) => return Err(ToolError::Cancelled { what }),
        Err(source) => return Err(ToolError::NotRun { what, source }),
    };
    if finished.success() {
        return Ok(finished);
    }
    let output_tail = output_tail(&finished);
    if finished.timed_out {
        return Err(ToolError::TimedOut {
            what,
            timeout_secs: total_timeout.as_secs(),
            output_tail,
        });
    }
    Err(ToolError::Failed {
        what,
        status: finished.describe_status(),
        headline: headline(&output_tail)
            .unwrap_or("no error output")
            .to_string(),
        label: label.to_string(),
        output_tail,
    })
}

/// The last [`ERROR_TAIL_LINES`] non-empty lines of stderr (stdout when stderr is
/// empty).
pub fn output_tail(finished: &Finished) -> String {
    let text = if finished.stderr_tail.trim().is_empty() {
        &finished.stdout_tail
    } else {
        &finished.stderr_tail
    };
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(ERROR_TAIL_LINES)..].join("\n")
}

/// The line that best says what went wrong: pip's last `ERROR:` line, npm's first
/// meaningful `npm error` line, else the last line.
fn headline(tail: &str) -> Option<&str> {
    let lines: Vec<&str> = tail.lines().map(str::trim).collect();
    if let Some(line) = lines.iter().rev().find(|l| l.starts_with("ERROR:")) {
        return Some(line);
    }
    let npm_noise = [
        "npm error code",
        "npm error errno",
        "npm error syscall",
        "npm error path",
        "npm error A complete log",
        "npm error Log files",
    ];
    if let Some(line) = lines.iter().find(|l| {
        (l.starts_with("npm error") || l.starts_with("npm ERR!"))
            && !npm_noise.iter().any(|n| l.starts_with(n))
            && l.len() > "npm error ".len()
    }) {
        return Some(line);
    }
    lines.iter().rev().find(|l| !l.is_empty()).copied()
}

/// Environment variables passed to pip/npm from the server's environment when the
/// settings allow it (proxies and certificate bundles).
pub const PASSTHROUGH_ENV: &[&str] = &[
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "NO_PROXY",
    "ALL_PROXY",
    "http_proxy",
    "https_proxy",
    "no_proxy",
    "all_proxy",
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
    "REQUESTS_CA_BUNDLE",
    "PIP_CERT",
    "NODE_EXTRA_CA_CERTS",
];

pub fn passthrough_env() -> Vec<(OsString, OsString)> {
    PASSTHROUGH_ENV
        .iter()
        .filter_map(|k| std::env::var_os(k).map(|v| (OsString::from(k), v)))
        .collect()
}

/// Creates `build_dir` (when missing) and hands it to the sandbox user, who builds
/// there.
pub fn prepare_build_dir(build_dir: &Path) -> Result<(), EnvError> {
    create_dir_all(build_dir)?;
    Ok(crate::sandbox::hand_over(build_dir)?)
}

/// `create_dir_all`, its error naming the directory.
pub fn create_dir_all(dir: &Path) -> Result<(), EnvError> {
    std::fs::create_dir_all(dir).map_err(|source| EnvError::CreateDir {
        path: dir.to_path_buf(),
        source,
    })
}

/// The installation prefix of a tool given by path (`/opt/node` for
/// `/opt/node/bin/npm`), links resolved: sandboxed children must read it.
pub fn install_prefix(tool: &Path) -> Option<PathBuf> {
    let real = std::fs::canonicalize(tool).ok()?;
    let prefix = real.parent()?.parent()?;
    (prefix != Path::new("/")).then(|| prefix.to_path_buf())
}

/// Removes a directory tree off the async threads; errors are ignored (the next
/// successful build's garbage collection retries).
pub async fn remove_tree(path: PathBuf) {
    let _ = tokio::task::spawn_blocking(move || std::fs::remove_dir_all(path)).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_requests() {
        let v = Version::new(3, 11, 7);
        assert!(request_matches(&parse_version_request("3.11").unwrap(), &v));
        assert!(request_matches(&parse_version_request("3").unwrap(), &v));
        assert!(request_matches(
            &parse_version_request("python3.11").unwrap(),
            &v
        ));
        assert!(request_matches(
            &parse_version_request("3.11.7").unwrap(),
            &v
        ));
        assert!(!request_matches(&parse_version_request("3.1").unwrap(), &v));
        assert!(!request_matches(
            &parse_version_request("3.11.6").unwrap(),
            &v
        ));
        assert!(request_matches(
            &parse_version_request("v20").unwrap(),
            &Version::new(20, 1, 0)
        ));
        assert!(parse_version_request("latest").is_err());
        assert!(parse_version_request("").is_err());
    }

    #[test]
    fn headlines() {
        let pip = "Looking in links: /x\nERROR: Could not find a version that satisfies the requirement nosuchpkg==9.9 (from versions: none)\nERROR: No matching distribution found for nosuchpkg==9.9";
        assert_eq!(
            headline(pip),
            Some("ERROR: No matching distribution found for nosuchpkg==9.9")
        );
        let npm = "npm error code E404\nnpm error 404 Not Found - GET http://x/nosuch\nnpm error A complete log of this run can be found in: /x.log";
        assert_eq!(
            headline(npm),
            Some("npm error 404 Not Found - GET http://x/nosuch")
        );
    }
}
