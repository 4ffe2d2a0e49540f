//! BuildEnvs: a pack's Python virtualenv and Node.js `node_modules`, built outside
//! the pack so they keep working after the pack is copied to its final place.
//!
//! # When a pack gets an environment
//!
//! * **Python** when `pack.yaml` names a Python requirement (`python`,
//!   `python_versions`, `dependencies.python_version`) or the pack ships
//!   `requirements.txt`; a pack with a requirement but no `requirements.txt` gets an
//!   empty virtualenv (`requirements_installed: false`).
//! * **Node.js** when the pack ships `package.json` or names a `nodejs` requirement;
//!   without `package.json` the environment is an empty `node_modules`.
//!
//! # Where environments live
//!
//! Under `envs_root` (the server passes `<packs_base_dir>/.envs`), keyed by pack ref,
//! never inside the pack (see [`layout`] for the tree):
//!
//! * `<envs_root>/<ref>/python` — virtualenv; workers run
//!   `<envs_root>/<ref>/python/bin/python`;
//! * `<envs_root>/<ref>/node/node_modules` — workers set `NODE_PATH` to it.
//!
//! Both are relative symlinks to versioned directories (`python-<hash>-<id>`), each
//! built at its final path (virtualenvs hard-code their path) beside the current one.
//! A successful build writes a marker (`.attune-env.json`) and then replaces the
//! symlink atomically (new link renamed over the old); older builds are then deleted.
//! A failed build is deleted and the symlink keeps pointing at the previous,
//! working environment. Moving the pack therefore never breaks its environments;
//! moving `envs_root` does (rebuild with `force_rebuild`). Processes still running
//! from a build that was just replaced may lose files they have not opened yet.
//!
//! # Reuse
//!
//! The build's inputs are hashed: the interpreter (resolved path, version, file
//! size/mtime/inode), `requirements.txt` and the files it includes with `-r`/`-c`
//! (or `package.json`, the lockfile, `.npmrc` and the contents of local `file:`
//! dependencies; plus the resolved `npm` file), and the settings that change
//! results. When the current build's marker has the same hash, and its interpreter
//! still satisfies the request, it is reused (`reused: true`) without starting any
//! process: the check reads a few small files and a marker, well under a
//! millisecond for typical packs. `force_rebuild` skips the check. Not tracked:
//! plain local paths inside `requirements.txt` (`./src`), packages on an index
//! changing under an unpinned requirement, the npm registry's content — use
//! `force_rebuild`. An existing environment is kept as long as its interpreter fits,
//! even if a newer one has been installed since.
//!
//! # Choosing the interpreter
//!
//! Candidates are `python3` and `python3.N` on `PATH`. With `python_version` set
//! (`"3.11"`), the interpreter's version must match it component by component
//! (3.11.x) and the pack's requirement must hold too; without it, the highest
//! version satisfying the pack's requirement (or any Python 3) is used. The original
//! API's default of `"3.11"` is deliberately not applied: it would make every host
//! without 3.11 fail. No match is a failure that lists what was found. Node:
//! the first `node` on `PATH`; `nodejs_version` `"20"` requires major 20.
//!
//! # Tools
//!
//! Every pip/npm/python run goes through [`crate::process::run`] with its minimal
//! environment and the remaining time of `timeout` (one deadline for the whole
//! call, lock waits included); a timeout kills the process tree. Output lines
//! stream as `Stage::Build` info prefixed `venv:`, `pip:` or `npm:`. pip and npm
//! are configured by [`EnvSettings`] and, unless builds are isolated
//! ([`HostToolConfig::Ignore`]), by the host's pip/npm configuration captured once
//! when the stage is built ([`HostConfig`]); explicit settings win.
//! Everything reaches them as environment variables (URLs may carry credentials;
//! the environment is neither shown in `ps` nor printed): pip reads no file itself
//! (`PIP_CONFIG_FILE=/dev/null`), `HOME` is `<envs_root>/.home` so no user
//! `.npmrc`/`pip.conf` is read (a pack's own `.npmrc` is an input and is used),
//! caches live in `<envs_root>/.cache/{pip,npm}`. A run that cannot fetch
//! ([`ToolError::Fetch`]) names the settings that decide where it fetches from.
//! npm runs with `--no-audit --no-fund --install-links --omit=dev`; dev
//! dependencies are not needed to run actions (`npm_extra_args:
//! ["--include=dev"]` brings them back).
//!
//! `npm_ignore_scripts` defaults to `false` (lifecycle scripts run): many packages
//! need them (native addons, platform binaries), and they are no more trusted or
//! less trusted than the pack's own code, which workers execute anyway; they run
//! under the timeout, in their own process group, with the minimal environment.
//!
//! # Concurrency
//!
//! Builds of different packs may run concurrently (the caller decides). Builds of
//! the same ref are serialised here, through the caller's [`PackLocks`]: an
//! in-process async lock per `<envs_root>/<ref>` plus `flock` on
//! `<envs_root>/<ref>/.lock` for other processes. The Python and
//! Node.js environments of one pack are built concurrently.

mod discover;
mod error;
mod host;
mod kind;
mod layout;
mod node;
mod python;
mod util;

#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::locks::PackLocks;
use crate::manifest::{Manifest, is_valid_pack_ref};
use crate::progress::{Reporter, Stage};
use kind::EnvKind;
use node::NodeModules;
use python::Virtualenv;

pub use error::{
    CopyError, EnvError, EnvMismatch, FetchAdvice, FetchFailure, FetchProblem, IndexOrigin,
    InputsError, PackageTool, ToolError,
};
pub use host::{HostConfig, HostEnvironment, HostToolConfig, HostValue, redact_url};
pub use layout::{EnvLinks, EnvSnapshot, KEPT_FILE, MARKER_FILE, Marker, RefDir};

/// Default for [`BuildOptions::timeout`].
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(600);

/// pip and npm configuration (server settings). Nothing defaults to a public index
/// here: unset values leave the tool's own default (PyPI, registry.npmjs.org).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EnvSettings {
    /// `PIP_INDEX_URL`.
    pub pip_index_url: Option<String>,
    /// `PIP_EXTRA_INDEX_URL`.
    pub pip_extra_index_urls: Vec<String>,
    /// `PIP_FIND_LINKS` (directories or URLs).
    pub pip_find_links: Vec<String>,
    /// `--no-index`: only `pip_find_links`.
    pub pip_offline: bool,
    /// Appended to `pip install`.
    pub pip_extra_args: Vec<String>,
    /// `npm_config_registry`.
    pub npm_registry: Option<String>,
    /// `--offline`: only the npm cache.
    pub npm_offline: bool,
    /// Appended to `npm ci` / `npm install`.
    pub npm_extra_args: Vec<String>,
    /// `--ignore-scripts` (default false: lifecycle scripts run; see the module docs).
    pub npm_ignore_scripts: bool,
    /// Isolated builds ([`HostToolConfig::Ignore`]): pass the server's proxy and
    /// CA-bundle variables (`HTTPS_PROXY`, `NO_PROXY`, `SSL_CERT_FILE`,
    /// `REQUESTS_CA_BUNDLE`, `NODE_EXTRA_CA_CERTS`, ...) to pip and npm anyway. When
    /// the host's configuration is honoured they always pass. Not part of the
    /// inputs hash.
    pub pass_proxy_env: bool,
    /// Whether pip and npm see the host's configuration (`host`). Not part of the
    /// inputs hash.
    pub host_tool_config: HostToolConfig,
    /// The host's pip/npm configuration, captured once by the stage
    /// ([`HostConfig::capture`]); empty by default.
    pub host: Arc<HostConfig>,
    /// Caps on the pack files read into memory (requirements, package.json, lock
    /// files). Not part of the inputs hash.
    pub read_limits: crate::packfs::PackReadLimits,
}

#[derive(Debug, Clone)]
pub struct BuildOptions {
    /// Where environments live (the server uses `<packs_base_dir>/.envs`).
    pub envs_root: PathBuf,
    /// `"3.11"`: the interpreter's version must match; `None`: the highest one that
    /// satisfies the pack.
    pub python_version: Option<String>,
    /// `"20"`: node's major version must be 20.
    pub nodejs_version: Option<String>,
    pub skip_python: bool,
    pub skip_nodejs: bool,
    pub force_rebuild: bool,
    /// For the whole call (both runtimes run concurrently under it).
    pub timeout: Duration,
    /// Report runtime availability and existing environments; build nothing, create
    /// nothing.
    pub detect_only: bool,
    /// Keep the replaced builds after a switch, so that the caller can go back to
    /// them ([`EnvSnapshot`]); Install uses this to stay all or nothing.
    pub keep_previous: bool,
}

impl BuildOptions {
    pub fn new(envs_root: impl Into<PathBuf>) -> Self {
        Self {
            envs_root: envs_root.into(),
            python_version: None,
            nodejs_version: None,
            skip_python: false,
            skip_nodejs: false,
            force_rebuild: false,
            timeout: DEFAULT_TIMEOUT,
            detect_only: false,
            keep_previous: false,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PythonEnv {
    /// `<envs_root>/<ref>/python` (stable across rebuilds).
    pub virtualenv_path: PathBuf,
    /// `requirements.txt` was installed into it.
    pub requirements_installed: bool,
    /// Distributions in site-packages (`*.dist-info`/`*.egg-info`, dependencies
    /// included), minus pip, setuptools and wheel.
    pub package_count: u32,
    /// The environment's own version, `Python 3.11.7` (detect-only without an
    /// environment: the interpreter that would be used).
    pub python_version: String,
    /// An up-to-date environment existed and nothing was built.
    pub reused: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeEnv {
    /// `<envs_root>/<ref>/node/node_modules` (the `NODE_PATH` for workers).
    pub node_modules_path: PathBuf,
    pub dependencies_installed: bool,
    /// Package directories under `node_modules`, nested ones included.
    pub package_count: u32,
    /// `v20.20.2`.
    pub nodejs_version: String,
    pub reused: bool,
}

#[derive(Debug, Clone)]
pub struct EnvFailure {
    /// `"python"` or `"nodejs"`.
    pub runtime: &'static str,
    /// Shared: a failure of the whole pack is the failure of each runtime it wanted.
    pub error: Arc<EnvError>,
}

#[derive(Debug, Clone, Default)]
pub struct PackEnvs {
    pub python: Option<PythonEnv>,
    pub nodejs: Option<NodeEnv>,
    pub failures: Vec<EnvFailure>,
    pub duration: Duration,
}

/// Everything one build needs, shared by the Python and Node builders.
pub(crate) struct Ctx<'a> {
    pub pack_dir: &'a Path,
    pub manifest: &'a Manifest,
    pub settings: &'a EnvSettings,
    pub options: &'a BuildOptions,
    pub reporter: &'a Reporter,
    pub ref_dir: layout::RefDir,
    pub deadline: Instant,
}

impl Ctx<'_> {
    /// `HOME` for pip and npm: empty, ours, so no user configuration is read.
    fn home_dir(&self) -> PathBuf {
        self.ref_dir.root.join(".home")
    }
}

/// The variables and readable paths a pip or npm run gets from the host's
/// configuration: everything captured for the tool when it is honoured; in isolated
/// builds only the proxy and CA-bundle variables, and only with `pass_proxy_env`.
/// Explicit `build.*` settings win over the host's.
pub(crate) fn host_environment(
    settings: &EnvSettings,
    tool: PackageTool,
) -> (Vec<(String, String)>, Vec<PathBuf>) {
    let host = &settings.host;
    match settings.host_tool_config {
        HostToolConfig::Honour => {
            let mut vars = host.standard_env();
            let mut paths = host.standard_read_paths();
            match tool {
                PackageTool::Pip => {
                    vars.extend(host.pip_env(settings));
                    paths.extend(host.pip_read_paths());
                }
                PackageTool::Npm => {
                    vars.extend(host.npm_env(settings));
                    paths.extend(host.npm_read_paths());
                }
            }
            (vars, paths)
        }
        HostToolConfig::Ignore if settings.pass_proxy_env => {
            (host.standard_env(), host.standard_read_paths())
        }
        HostToolConfig::Ignore => (Vec::new(), Vec::new()),
    }
}

/// The settings to name when a pip or npm run could not fetch (`None`: a missing
/// package on an index nobody configured is the pack's problem, not the settings').
pub(crate) fn fetch_advice(
    settings: &EnvSettings,
    tool: PackageTool,
    problem: FetchProblem,
) -> Option<FetchAdvice> {
    let (explicit, host_index, offline) = match tool {
        PackageTool::Pip => (
            settings.pip_index_url.as_deref(),
            settings.host.pip_index(),
            settings.pip_offline,
        ),
        PackageTool::Npm => (
            settings.npm_registry.as_deref(),
            settings.host.npm_registry(),
            settings.npm_offline,
        ),
    };
    let mode = settings.host_tool_config;
    let (index, origin) = match (explicit, host_index) {
        (Some(url), _) => (Some(redact_url(url)), IndexOrigin::Setting),
        (None, Some(v)) if mode == HostToolConfig::Honour => (
            Some(redact_url(&v.value)),
            IndexOrigin::Host {
                source: v.source.clone(),
            },
        ),
        _ => (None, IndexOrigin::ToolDefault),
    };
    let ignored_host_index = match (mode, explicit, host_index) {
        (HostToolConfig::Ignore, None, Some(v)) => Some((redact_url(&v.value), v.source.clone())),
        _ => None,
    };
    if problem == FetchProblem::NotOnIndex
        && (offline
            || !(matches!(origin, IndexOrigin::Host { .. }) || ignored_host_index.is_some()))
    {
        return None;
    }
    Some(FetchAdvice {
        tool,
        mode,
        index,
        origin,
        ignored_host_index,
        pass_proxy_env: settings.pass_proxy_env,
    })
}

/// The file whose presence means a pack needs a Python environment.
pub const PYTHON_MANIFEST: &str = python::REQUIREMENTS_FILE;
/// The file whose presence means a pack needs Node modules.
pub const NODE_MANIFEST: &str = node::PACKAGE_JSON;

/// The interpreter of the pack's virtualenv, if BuildEnvs made one.
pub fn python_interpreter(envs_root: &Path, pack_ref: &str) -> Option<PathBuf> {
    let python = layout::RefDir::new(envs_root, pack_ref)
        .link(python::KIND)
        .join("bin")
        .join("python");
    python.exists().then_some(python)
}

/// How long settling an interrupted switch waits for the ref's build lock (another
/// server sharing the directory may be building it).
const SETTLE_LOCK_WAIT: Duration = Duration::from_secs(10);

/// Settles environment switches that a transaction made and did not see through
/// (the process died, or its caller left): `committed`, the registration they were
/// made for committed and the current builds stay (the ones they replaced are
/// deleted); otherwise the links go back to `previous` and every build made since is
/// deleted. `switched_to` (when known) is where the transaction pointed them: links
/// found pointing anywhere else have been switched again since, by someone else, and
/// are left alone. Idempotent.
pub async fn settle_switch(
    locks: &PackLocks,
    envs_root: &Path,
    pack_ref: &str,
    previous: &EnvLinks,
    switched_to: Option<&EnvLinks>,
    committed: bool,
) -> Result<(), EnvError> {
    if !is_valid_pack_ref(pack_ref) {
        return Err(EnvError::InvalidPackRef {
            pack_ref: pack_ref.to_string(),
        });
    }
    let ref_dir = layout::RefDir::new(envs_root, pack_ref);
    if !ref_dir.dir.is_dir() {
        return Ok(());
    }
    let _lock = locks
        .lock_across_processes(&ref_dir.dir, Instant::now() + SETTLE_LOCK_WAIT)
        .await
        .map_err(EnvError::Lock)?;
    let snapshot = EnvSnapshot::from_links(envs_root, pack_ref, previous);
    let (previous, switched_to) = (previous.clone(), switched_to.cloned());
    let pack_ref = pack_ref.to_string();
    tokio::task::spawn_blocking(move || {
        if committed {
            snapshot.commit();
            return Ok(());
        }
        let current = snapshot.current();
        if let Some(switched_to) = switched_to
            && current != switched_to
            && current != previous
        {
            tracing::warn!(
                pack = %pack_ref,
                ?current,
                "environment links were switched again after an interrupted install; leaving them"
            );
            return Ok(());
        }
        snapshot.try_restore().map_err(EnvError::Restore)
    })
    .await?
}

/// Checks that the pack's environments belong to its files: every link's build has
/// a marker whose inputs hash is the one the files at `pack_dir` give now, a pack
/// with `requirements.txt` has a Python environment, and no other build of a kind
/// lies beside the current one (nothing abandoned). The crash tests call this after
/// every restart; the error says what does not match.
pub fn check_envs_match(
    envs_root: &Path,
    pack_ref: &str,
    pack_dir: &Path,
    settings: &EnvSettings,
) -> Result<(), EnvMismatch> {
    let ref_dir = layout::RefDir::new(envs_root, pack_ref);
    let linked = |kind: &str| std::fs::symlink_metadata(ref_dir.link(kind)).is_ok();
    let complete_build = |kind: &'static str| {
        ref_dir
            .current_marker(kind)
            .ok_or_else(|| EnvMismatch::NoCompleteBuild {
                pack_ref: pack_ref.to_string(),
                kind,
            })
    };
    if linked(python::KIND) {
        let marker = complete_build(python::KIND)?;
        let inputs = python::read_inputs(pack_dir, settings)?;
        let hash = Virtualenv::marker_hash(&inputs, &marker);
        if hash.as_deref() != Some(marker.inputs_hash.as_str()) {
            return Err(EnvMismatch::PythonInputs {
                pack_ref: pack_ref.to_string(),
                built: marker.inputs_hash,
                now: hash,
            });
        }
    } else if pack_dir.join(python::REQUIREMENTS_FILE).is_file() {
        return Err(EnvMismatch::NoPythonEnv {
            pack_ref: pack_ref.to_string(),
            file: python::REQUIREMENTS_FILE,
        });
    }
    if linked(node::KIND) {
        let marker = complete_build(node::KIND)?;
        let inputs = node::read_inputs(pack_dir, settings)?;
        let hash = NodeModules::marker_hash(&inputs, &marker);
        if hash.as_deref() != Some(marker.inputs_hash.as_str()) {
            return Err(EnvMismatch::NodeInputs {
                pack_ref: pack_ref.to_string(),
            });
        }
    }
    let current = EnvSnapshot::take(envs_root, pack_ref).links();
    let kept = ref_dir.kept_builds();
    let keep: Vec<&std::ffi::OsStr> = [&current.python, &current.node]
        .into_iter()
        .flatten()
        .filter_map(|t| t.file_name())
        .collect();
    let stray: Vec<String> = std::fs::read_dir(&ref_dir.dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name())
        .filter(|name| {
            let text = name.to_string_lossy();
            (text.starts_with("python-")
                || text.starts_with("node-")
                || text.contains(".tmp-link-"))
                && !keep.contains(&name.as_os_str())
                && !kept.contains(text.as_ref())
        })
        .map(|name| name.to_string_lossy().into_owned())
        .collect();
    if !stray.is_empty() {
        return Err(EnvMismatch::StrayBuilds {
            pack_ref: pack_ref.to_string(),
            stray,
        });
    }
    Ok(())
}

/// Whether the pack needs a Python environment (ignoring `skip_python`).
pub fn needs_python(pack_dir: &Path, manifest: &Manifest) -> bool {
    manifest.python.is_some() || pack_dir.join(python::REQUIREMENTS_FILE).is_file()
}

/// Whether the pack needs a Node.js environment (ignoring `skip_nodejs`).
pub fn needs_nodejs(pack_dir: &Path, manifest: &Manifest) -> bool {
    manifest.nodejs.is_some() || pack_dir.join(node::PACKAGE_JSON).is_file()
}

/// Builds (or reuses, or with `detect_only` inspects) the pack's environments. Never
/// fails as a whole: each runtime's problem is an [`EnvFailure`].
#[tracing::instrument(skip_all, fields(pack = %manifest.pack_ref))]
pub async fn build_pack_envs(
    pack_dir: &Path,
    manifest: &Manifest,
    settings: &EnvSettings,
    options: &BuildOptions,
    locks: &PackLocks,
    reporter: &Reporter,
) -> PackEnvs {
    let started = Instant::now();
    let deadline = started + options.timeout;
    let mut out = PackEnvs::default();
    let want_python = !options.skip_python && needs_python(pack_dir, manifest);
    let want_node = !options.skip_nodejs && needs_nodejs(pack_dir, manifest);
    if !want_python && !want_node {
        out.duration = started.elapsed();
        return out;
    }
    let fail_all = |out: &mut PackEnvs, error: EnvError| {
        let error = Arc::new(error);
        for (wanted, runtime) in [
            (want_python, Virtualenv::RUNTIME),
            (want_node, NodeModules::RUNTIME),
        ] {
            if wanted {
                out.failures.push(EnvFailure {
                    runtime,
                    error: error.clone(),
                });
            }
        }
    };
    if !is_valid_pack_ref(&manifest.pack_ref) {
        fail_all(
            &mut out,
            EnvError::InvalidPackRef {
                pack_ref: manifest.pack_ref.clone(),
            },
        );
        out.duration = started.elapsed();
        return out;
    }
    // Virtualenvs record absolute paths, and tools run in other directories.
    let (envs_root, pack_dir) = match (
        std::path::absolute(&options.envs_root),
        std::path::absolute(pack_dir),
    ) {
        (Ok(a), Ok(b)) => (a, b),
        (Err(e), _) | (_, Err(e)) => {
            fail_all(&mut out, EnvError::ResolvePaths(e));
            out.duration = started.elapsed();
            return out;
        }
    };
    let ctx = Ctx {
        pack_dir: &pack_dir,
        manifest,
        settings,
        options,
        reporter,
        ref_dir: layout::RefDir::new(&envs_root, &manifest.pack_ref),
        deadline,
    };

    if options.detect_only {
        let (py, js) = tokio::join!(
            when(want_python, kind::detect::<Virtualenv>(&ctx)),
            when(want_node, kind::detect::<NodeModules>(&ctx)),
        );
        collect(&mut out, py, js);
        out.duration = started.elapsed();
        return out;
    }

    let _lock = match locks
        .lock_across_processes(&ctx.ref_dir.dir, deadline)
        .await
    {
        Ok(lock) => lock,
        Err(e) => {
            fail_all(&mut out, EnvError::Lock(e));
            out.duration = started.elapsed();
            return out;
        }
    };
    // HOME and the caches are written by pip/npm, which run as the sandbox user.
    let cache = ctx.ref_dir.root.join(".cache");
    for dir in [ctx.home_dir(), cache.join("pip"), cache.join("npm")] {
        let ready =
            util::create_dir_all(&dir).and_then(|()| Ok(crate::sandbox::hand_over_once(&dir)?));
        if let Err(e) = ready {
            fail_all(&mut out, e);
            out.duration = started.elapsed();
            return out;
        }
    }
    let (py, js) = tokio::join!(
        when(want_python, kind::ensure::<Virtualenv>(&ctx)),
        when(want_node, kind::ensure::<NodeModules>(&ctx)),
    );
    collect(&mut out, py, js);
    for failure in &out.failures {
        reporter.error(
            Stage::Build,
            format!("{}: {}", failure.runtime, failure.error),
        );
    }
    out.duration = started.elapsed();
    out
}

/// `step`'s outcome when the runtime is wanted; otherwise `step` is not started.
async fn when<T>(wanted: bool, step: impl Future<Output = T>) -> Option<T> {
    if wanted { Some(step.await) } else { None }
}

fn collect(
    out: &mut PackEnvs,
    py: Option<Result<PythonEnv, EnvError>>,
    js: Option<Result<NodeEnv, EnvError>>,
) {
    match py {
        Some(Ok(env)) => out.python = Some(env),
        Some(Err(error)) => out.failures.push(EnvFailure {
            runtime: Virtualenv::RUNTIME,
            error: Arc::new(error),
        }),
        None => {}
    }
    match js {
        Some(Ok(env)) => out.nodejs = Some(env),
        Some(Err(error)) => out.failures.push(EnvFailure {
            runtime: NodeModules::RUNTIME,
            error: Arc::new(error),
        }),
        None => {}
    }
}
