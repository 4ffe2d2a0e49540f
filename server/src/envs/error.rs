//! What can go wrong while building, reusing or checking a pack's environments.
//!
//! The texts are what callers of BuildEnvs read (the failure of a runtime is a string
//! on the wire) and what the tests match; they are kept word for word.

use std::io;
use std::path::PathBuf;

use crate::packfs::PackFsError;
use crate::process::ProcessError;
use crate::sandbox::SandboxError;

use super::host::HostToolConfig;

/// The failure of one runtime's environment (or of every runtime of a pack, when
/// the pack itself cannot be handled).
#[derive(Debug, thiserror::Error)]
pub enum EnvError {
    #[error("invalid pack ref `{pack_ref}`")]
    InvalidPackRef { pack_ref: String },
    #[error("cannot resolve paths: {0}")]
    ResolvePaths(#[source] io::Error),
    #[error("cannot create {}: {source}", .path.display())]
    CreateDir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot resolve {}: {source}", .path.display())]
    Canonicalize {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// Waiting for or taking the ref's build lock.
    #[error("{0}")]
    Lock(#[source] crate::locks::LockError),
    #[error(transparent)]
    Sandbox(#[from] SandboxError),
    /// A blocking step died (panicked or was cancelled) before it could answer.
    #[error("{0}")]
    Task(#[from] tokio::task::JoinError),
    /// Switching the links back to the builds an interrupted install replaced.
    #[error("{0}")]
    Restore(#[source] io::Error),
    #[error("cannot switch to the new {kind} environment: {source}")]
    Switch {
        kind: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("cannot write the environment marker: {0}")]
    WriteMarker(#[source] io::Error),
    #[error("invalid version request `{request}` (expected a version such as `3.11`)")]
    InvalidVersionRequest { request: String },
    #[error("{what} not started: the build timeout of {}s was used up", .timeout_secs)]
    TimeUsedUp { what: String, timeout_secs: u64 },
    #[error(transparent)]
    Tool(#[from] ToolError),
    #[error(transparent)]
    Inputs(#[from] InputsError),

    #[error("no Python interpreter for {wanted}: no working python3 or python3.N found on PATH")]
    NoPython { wanted: String },
    #[error("no Python interpreter with venv support matches {wanted}; found: {}", .found.join(", "))]
    NoMatchingPython { wanted: String, found: Vec<String> },
    #[error("interpreter {} disappeared", .executable.display())]
    InterpreterGone { executable: PathBuf },

    #[error("Node.js not available: no working `node` found on PATH")]
    NoNode,
    #[error("Node.js {requested} is not available: found node {found} ({})", .executable.display())]
    NodeVersionUnavailable {
        requested: String,
        found: String,
        executable: PathBuf,
    },
    #[error("the pack requires Node.js `{requirement}`; found node {found} ({})", .executable.display())]
    NodeRequirementUnmet {
        requirement: String,
        found: String,
        executable: PathBuf,
    },
    #[error("npm not available: no `npm` found on PATH")]
    NoNpm,
    #[error("node or npm disappeared during the build")]
    NodeOrNpmGone,
    #[error("cannot copy the npm inputs: {0}")]
    CopyInputs(#[source] CopyError),
    #[error("cannot finish node_modules: {0}")]
    FinishNodeModules(#[source] io::Error),
}

/// A pip, npm or `python -m venv` run that did not end cleanly.
#[derive(Debug, thiserror::Error)]
pub enum ToolError {
    #[error("{what} cancelled")]
    Cancelled { what: String },
    #[error("{what} could not run: {source}")]
    NotRun {
        what: String,
        #[source]
        source: ProcessError,
    },
    /// `output_tail`: the last lines of its output, empty when it printed nothing.
    #[error(
        "{what} timed out (build timeout {timeout_secs}s); its process tree was killed{}",
        lines_after(.output_tail)
    )]
    TimedOut {
        what: String,
        timeout_secs: u64,
        output_tail: String,
    },
    /// `status`: `exit code 1`, `killed by signal 9`; `headline`: the line that best
    /// says what went wrong; `label`: `pip`, `npm`, `venv`.
    #[error("{what} failed ({status}): {headline}{}", output_section(.label, .output_tail))]
    Failed {
        what: String,
        status: String,
        headline: String,
        label: String,
        output_tail: String,
    },
    /// pip or npm failed, and its output shows that it could not fetch packages.
    #[error(transparent)]
    Fetch(Box<FetchFailure>),
}

/// A pip or npm run that could not fetch packages (TLS, proxy, DNS, connection, a
/// package missing from the index): `advice` names the settings that decide where
/// and how it fetches.
#[derive(Debug, thiserror::Error)]
#[error(
    "{what} failed ({status}): {headline}\n{problem}; {advice}{}",
    output_section(.label, .output_tail)
)]
pub struct FetchFailure {
    pub what: String,
    pub status: String,
    pub headline: String,
    pub label: String,
    pub output_tail: String,
    pub problem: FetchProblem,
    pub advice: FetchAdvice,
}

/// Why pip or npm could not fetch, as its output says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FetchProblem {
    /// `CERTIFICATE_VERIFY_FAILED`, `SELF_SIGNED_CERT_IN_CHAIN`, ...
    Certificate,
    /// `ProxyError`, a failed proxy tunnel.
    Proxy,
    /// `Name or service not known`, `ENOTFOUND`, `EAI_AGAIN`.
    NameResolution,
    /// `Connection refused`, `ECONNREFUSED`.
    Refused,
    /// `ETIMEDOUT`, `Network is unreachable`, read and connect time-outs.
    Unreachable,
    /// The index answered but has no such package (`No matching distribution`,
    /// `E404`): only reported when the index may be the wrong one.
    NotOnIndex,
}

impl std::fmt::Display for FetchProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            FetchProblem::Certificate => {
                "the index's TLS certificate could not be verified (no CA bundle that trusts it)"
            }
            FetchProblem::Proxy => "the connection through the proxy failed",
            FetchProblem::NameResolution => "the index's host name could not be resolved",
            FetchProblem::Refused => "the index refused the connection",
            FetchProblem::Unreachable => "the index could not be reached in time",
            FetchProblem::NotOnIndex => "the package is not on the index that was used",
        })
    }
}

/// pip or npm, for [`FetchAdvice`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PackageTool {
    Pip,
    Npm,
}

impl PackageTool {
    fn name(self) -> &'static str {
        match self {
            PackageTool::Pip => "pip",
            PackageTool::Npm => "npm",
        }
    }

    /// The setting that names its index.
    pub fn index_setting(self) -> &'static str {
        match self {
            PackageTool::Pip => "build.pip_index_url",
            PackageTool::Npm => "build.npm_registry",
        }
    }
}

/// Where the index a run used came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IndexOrigin {
    /// `build.pip_index_url` / `build.npm_registry`.
    Setting,
    /// The host's configuration: the file or variable that set it.
    Host { source: String },
    /// The tool's own default (PyPI, registry.npmjs.org).
    ToolDefault,
}

/// The settings to look at when pip or npm cannot fetch: what the run used and what
/// changes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchAdvice {
    pub tool: PackageTool,
    pub mode: HostToolConfig,
    /// The index the run used, credentials redacted.
    pub index: Option<String>,
    pub origin: IndexOrigin,
    /// Isolated builds: the index the host configures (redacted) and where, which
    /// this run did not use.
    pub ignored_host_index: Option<(String, String)>,
    pub pass_proxy_env: bool,
}

impl std::fmt::Display for FetchAdvice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let tool = self.tool.name();
        let index_setting = self.tool.index_setting();
        let setting = HostToolConfig::SETTING;
        write!(f, "{tool} used ")?;
        match (&self.index, &self.origin) {
            (Some(url), IndexOrigin::Setting) => write!(f, "the index {url} (`{index_setting}`)")?,
            (Some(url), IndexOrigin::Host { source }) => {
                write!(f, "the index {url} (host configuration: {source})")?
            }
            _ => write!(f, "its default index")?,
        }
        match self.mode {
            HostToolConfig::Honour => write!(
                f,
                " with the host's {tool} configuration (`{setting}: honour`). Check the \
                 host's index, proxy and CA-bundle settings, set `{index_setting}`, or set \
                 `{setting}: ignore` to build without the host's configuration."
            ),
            HostToolConfig::Ignore => {
                write!(
                    f,
                    " without the host's {tool} configuration (`{setting}: ignore`)"
                )?;
                if let Some((url, source)) = &self.ignored_host_index {
                    write!(f, "; the host configures the index {url} ({source})")?;
                }
                write!(
                    f,
                    ". Set `{setting}: honour` to use the host's configuration, or set \
                     `{index_setting}`"
                )?;
                if !self.pass_proxy_env {
                    write!(
                        f,
                        " and `build.pass_proxy_env: true` (proxy and CA-bundle variables)"
                    )?;
                }
                f.write_str(".")
            }
        }
    }
}

fn lines_after(tail: &str) -> String {
    if tail.is_empty() {
        String::new()
    } else {
        format!("\n{tail}")
    }
}

fn output_section(label: &str, tail: &str) -> String {
    if tail.is_empty() {
        String::new()
    } else {
        format!("\n--- last lines of {label} output ---\n{tail}")
    }
}

/// A pack file that decides an environment (`requirements.txt` and its includes,
/// `package.json`, lock files, local `file:` dependencies) cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum InputsError {
    #[error(transparent)]
    OpenPack(PackFsError),
    /// `file`: as the pack names it (`requirements.txt`, `sub/base.txt`).
    #[error("{file}: {}", .source.reason())]
    Read {
        file: String,
        #[source]
        source: PackFsError,
    },
    #[error("{file}: requirement files nested too deeply")]
    RequirementsTooDeep { file: String },
    #[error(
        "{file}:{line}: editable install of a local path (`{text}`) would point into the \
         pack directory, which moves when the pack is registered; use a regular \
         requirement instead"
    )]
    LocalEditable {
        file: String,
        line: usize,
        text: String,
    },
    #[error(
        "{file}:{line}: `{text}` names a file outside the pack; requirement files must \
         include only files of the pack"
    )]
    IncludeOutsidePack {
        file: String,
        line: usize,
        text: String,
    },
    #[error("package.json is not valid JSON: {0}")]
    PackageJson(#[source] serde_json::Error),
    #[error(
        "package.json: {section}.{name} is `file:{target}`, which is not a path inside \
         the pack; local dependencies must live in the pack"
    )]
    LocalDependencyOutside {
        section: String,
        name: String,
        target: String,
    },
    #[error("cannot read {}: {}", .path.display(), .source.reason())]
    ReadLocalDependency {
        path: PathBuf,
        #[source]
        source: PackFsError,
    },
    #[error("package.json: local dependency `file:{}` does not exist", .path.display())]
    LocalDependencyMissing { path: PathBuf },
    /// `source` names its path relative to the pack.
    #[error("package.json: local dependency `file:{}`: {source}", .path.display())]
    LocalDependency {
        path: PathBuf,
        #[source]
        source: PackFsError,
    },
}

/// Copying the npm inputs out of the pack into the build's staging directory.
#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    #[error(transparent)]
    Read(#[from] PackFsError),
    #[error("{} does not exist", .path.display())]
    Missing { path: PathBuf },
    #[error("cannot write {}: {source}", .path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot create {}: {source}", .path.display())]
    CreateDir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{0}")]
    Task(#[from] tokio::task::JoinError),
}

/// [`check_envs_match`](super::check_envs_match): the environments do not belong to
/// the pack's files.
#[derive(Debug, thiserror::Error)]
pub enum EnvMismatch {
    #[error("'{pack_ref}': the {kind} link has no complete build")]
    NoCompleteBuild {
        pack_ref: String,
        kind: &'static str,
    },
    #[error(
        "'{pack_ref}': the python environment was built from other inputs than the \
         pack's files ({built} != {now:?})"
    )]
    PythonInputs {
        pack_ref: String,
        built: String,
        now: Option<String>,
    },
    #[error("'{pack_ref}': the node environment was built from other inputs than the pack's files")]
    NodeInputs { pack_ref: String },
    #[error("'{pack_ref}': has {file} and no python environment")]
    NoPythonEnv {
        pack_ref: String,
        file: &'static str,
    },
    #[error("'{pack_ref}': builds left beside the current ones: {stray:?}")]
    StrayBuilds {
        pack_ref: String,
        stray: Vec<String>,
    },
    #[error(transparent)]
    Inputs(#[from] InputsError),
}
