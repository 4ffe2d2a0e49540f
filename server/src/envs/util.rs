//! Small helpers shared by the Python and Node builders: hashing, file identity,
//! PATH lookups, version requests and running a tool with streamed output.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use semver::Version;
use sha2::{Digest as _, Sha256};
use tokio::time::Instant;

use super::error::{EnvError, FetchAdvice, FetchFailure, FetchProblem, ToolError};
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

/// What pip's or npm's output says kept it from fetching packages, when it says so.
/// TLS problems are looked for first: pip retries and reports a certificate failure
/// as a missing distribution in its last line.
pub fn classify_fetch_failure(tail: &str) -> Option<FetchProblem> {
    const SIGNS: &[(FetchProblem, &[&str])] = &[
        (
            FetchProblem::Certificate,
            &[
                "CERTIFICATE_VERIFY_FAILED",
                "certificate verify failed",
                "SSLError",
                "SSLCertVerificationError",
                "[SSL",
                "UNABLE_TO_GET_ISSUER_CERT",
                "UNABLE_TO_VERIFY_LEAF_SIGNATURE",
                "SELF_SIGNED_CERT_IN_CHAIN",
                "DEPTH_ZERO_SELF_SIGNED_CERT",
                "CERT_HAS_EXPIRED",
                "ERR_TLS_CERT_ALTNAME_INVALID",
                "unable to get local issuer certificate",
                "self-signed certificate",
                "self signed certificate",
            ],
        ),
        (
            FetchProblem::Proxy,
            &[
                "ProxyError",
                "Cannot connect to proxy",
                "Tunnel connection failed",
                "Proxy Authentication Required",
                "ERR_PROXY",
            ],
        ),
        (
            FetchProblem::NameResolution,
            &[
                "Name or service not known",
                "Temporary failure in name resolution",
                "No address associated with hostname",
                "nodename nor servname",
                "ENOTFOUND",
                "EAI_AGAIN",
                "getaddrinfo",
            ],
        ),
        (
            FetchProblem::Refused,
            &["Connection refused", "ECONNREFUSED"],
        ),
        (
            FetchProblem::Unreachable,
            &[
                "ETIMEDOUT",
                "ENETUNREACH",
                "EHOSTUNREACH",
                "ECONNRESET",
                "Network is unreachable",
                "No route to host",
                "ConnectTimeoutError",
                "ReadTimeoutError",
                "NewConnectionError",
                "timed out",
            ],
        ),
        (
            FetchProblem::NotOnIndex,
            &[
                "No matching distribution found",
                "Could not find a version that satisfies",
                "npm error code E404",
                "npm ERR! code E404",
                "npm error 404",
            ],
        ),
    ];
    SIGNS
        .iter()
        .find(|(_, signs)| signs.iter().any(|sign| tail.contains(sign)))
        .map(|(problem, _)| *problem)
}

/// A failed pip or npm run whose output shows that it could not fetch becomes
/// [`ToolError::Fetch`], with the advice `advice` gives for the problem (`None`:
/// the failure stays as it is).
pub fn explain_fetch_failure(
    error: ToolError,
    advice: impl FnOnce(FetchProblem) -> Option<FetchAdvice>,
) -> ToolError {
    let ToolError::Failed {
        what,
        status,
        headline,
        label,
        output_tail,
    } = error
    else {
        return error;
    };
    let explained =
        classify_fetch_failure(&output_tail).and_then(|problem| Some((problem, advice(problem)?)));
    match explained {
        Some((problem, advice)) => ToolError::Fetch(Box::new(FetchFailure {
            what,
            status,
            headline,
            label,
            output_tail,
            problem,
            advice,
        })),
        None => ToolError::Failed {
            what,
            status,
            headline,
            label,
            output_tail,
        },
    }
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
    fn fetch_failures_are_classified_from_the_tools_output() {
        let pip_tls = "WARNING: Retrying (Retry(total=4, connect=None, read=None, redirect=None, status=None)) after connection broken by 'SSLError(SSLCertVerificationError(1, '[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed: self-signed certificate (_ssl.c:1006)'))': /simple/tinypkg/\nERROR: Could not find a version that satisfies the requirement tinypkg (from versions: none)\nERROR: No matching distribution found for tinypkg";
        assert_eq!(
            classify_fetch_failure(pip_tls),
            Some(FetchProblem::Certificate),
            "the TLS failure, not the missing distribution it turns into"
        );
        let npm_tls = "npm error code SELF_SIGNED_CERT_IN_CHAIN\nnpm error errno SELF_SIGNED_CERT_IN_CHAIN\nnpm error request to https://registry.npmjs.org/x failed, reason: self-signed certificate in certificate chain";
        assert_eq!(
            classify_fetch_failure(npm_tls),
            Some(FetchProblem::Certificate)
        );
        assert_eq!(
            classify_fetch_failure("npm error code UNABLE_TO_GET_ISSUER_CERT_LOCALLY"),
            Some(FetchProblem::Certificate)
        );
        assert_eq!(
            classify_fetch_failure(
                "WARNING: Retrying ... 'ProxyError('Cannot connect to proxy.', OSError('Tunnel connection failed: 403 Forbidden'))'"
            ),
            Some(FetchProblem::Proxy)
        );
        assert_eq!(
            classify_fetch_failure(
                "Failed to establish a new connection: [Errno -2] Name or service not known"
            ),
            Some(FetchProblem::NameResolution)
        );
        assert_eq!(
            classify_fetch_failure(
                "npm error code ENOTFOUND\nnpm error network request to https://nowhere.invalid/x failed"
            ),
            Some(FetchProblem::NameResolution)
        );
        assert_eq!(
            classify_fetch_failure(
                "NewConnectionError('<pip._vendor.urllib3.connection.HTTPSConnection>: Failed to establish a new connection: [Errno 111] Connection refused')"
            ),
            Some(FetchProblem::Refused)
        );
        assert_eq!(
            classify_fetch_failure("npm error code ETIMEDOUT"),
            Some(FetchProblem::Unreachable)
        );
        assert_eq!(
            classify_fetch_failure("ERROR: No matching distribution found for nosuchpkg==9.9"),
            Some(FetchProblem::NotOnIndex)
        );
        assert_eq!(
            classify_fetch_failure(
                "error: subprocess-exited-with-error\n  × python setup.py egg_info did not run successfully."
            ),
            None,
            "a failing setup.py is not a fetch problem"
        );
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
