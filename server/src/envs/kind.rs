//! The life cycle every kind of environment goes through, written once: read the
//! pack's inputs, reuse the current build when its inputs hash still holds, choose
//! the tools, build in a fresh directory, write the marker, switch the link, report.
//! A kind ([`EnvKind`]) supplies only the steps in which Python and Node.js differ.

use std::path::{Path, PathBuf};

use super::error::EnvError;
use super::layout::{self, MARKER_SCHEMA, Marker};
use super::util;
use super::{BuildOptions, Ctx, EnvSettings};
use crate::manifest::{Manifest, RuntimeRequirement, parse_lenient_version};
use crate::progress::Stage;

/// What a build leaves in its directory, as recorded in the marker and reported.
#[derive(Debug, Clone)]
pub(crate) struct Installed {
    /// The pack's dependencies (`requirements.txt`, `package.json`) were installed.
    pub deps_installed: bool,
    pub package_count: u32,
    /// As reported to the caller: `Python 3.11.7`, `v20.20.2`.
    pub version_text: String,
}

impl From<&Marker> for Installed {
    fn from(marker: &Marker) -> Self {
        Self {
            deps_installed: marker.deps_installed,
            package_count: marker.package_count,
            version_text: marker.version_text.clone(),
        }
    }
}

/// One kind of environment: the steps of [`ensure`] and [`detect`] that differ
/// between runtimes.
pub(crate) trait EnvKind {
    /// The name of the link and the prefix of the build directories (`python`,
    /// `node`).
    const KIND: &'static str;
    /// The runtime as reports and markers name it (`python`, `nodejs`).
    const RUNTIME: &'static str;
    /// What the pack's files and the settings contribute to the build.
    type Inputs: Send + Sync;
    /// The programs a build runs with, chosen for the request.
    type Tools: Send + Sync;
    /// What the caller gets.
    type Env;

    /// The request's version (`python_version`, `nodejs_version`).
    fn version_request(options: &BuildOptions) -> Option<&str>;
    /// The pack's own requirement on the runtime.
    fn requirement(manifest: &Manifest) -> Option<&RuntimeRequirement>;
    fn read_inputs(pack_dir: &Path, settings: &EnvSettings) -> Result<Self::Inputs, EnvError>;
    /// The hash the marker's tool gives `inputs` now (`None`: that tool is gone or
    /// others that enter the hash are). Reads files only.
    fn marker_hash(inputs: &Self::Inputs, marker: &Marker) -> Option<String>;
    /// The marker's tool is still the one a build would find. Starts no process.
    fn tool_current(_marker: &Marker) -> bool {
        true
    }
    /// The current build's environment is there to be used.
    fn env_present(ctx: &Ctx<'_>) -> bool;
    /// The tools for the request, or why there are none.
    async fn select_tools(
        ctx: &Ctx<'_>,
        inputs: &Self::Inputs,
        request: Option<&[u64]>,
    ) -> Result<Self::Tools, EnvError>;
    /// The main tool's path and version, as the marker records them.
    fn tool(tools: &Self::Tools) -> (&Path, &str);
    /// The hash that names the build these tools make of `inputs`.
    fn build_hash(inputs: &Self::Inputs, tools: &Self::Tools) -> Result<String, EnvError>;
    /// The version reported for an environment that these tools would build.
    fn version_text(tools: &Self::Tools) -> String;
    /// Reported when a build starts.
    fn starting_message(_tools: &Self::Tools) -> Option<String> {
        None
    }
    /// Makes the environment in `build_dir` (which does not exist yet).
    async fn install(
        ctx: &Ctx<'_>,
        tools: &Self::Tools,
        inputs: &Self::Inputs,
        build_dir: &Path,
    ) -> Result<Installed, EnvError>;
    fn reused_message(marker: &Marker) -> String;
    fn ready_message(marker: &Marker) -> String;
    fn env(ctx: &Ctx<'_>, installed: Installed, reused: bool) -> Self::Env;
}

/// The current environment of kind `K`, when it was built from the same inputs with
/// a tool that still exists unchanged and still fits the request. Reads files only;
/// starts no process.
pub(crate) fn reusable<K: EnvKind>(
    ctx: &Ctx<'_>,
    inputs: &K::Inputs,
    request: Option<&[u64]>,
) -> Option<Marker> {
    let marker = ctx.ref_dir.current_marker(K::KIND)?;
    if marker.runtime != K::RUNTIME || !K::tool_current(&marker) {
        return None;
    }
    let version = parse_lenient_version(&marker.tool_version)?;
    if !request.is_none_or(|r| util::request_matches(r, &version))
        || !K::requirement(ctx.manifest).is_none_or(|r| r.matches(&version))
    {
        return None;
    }
    let hash = K::marker_hash(inputs, &marker)?;
    (hash == marker.inputs_hash && K::env_present(ctx)).then_some(marker)
}

fn parse_request<K: EnvKind>(ctx: &Ctx<'_>) -> Result<Option<Vec<u64>>, EnvError> {
    K::version_request(ctx.options)
        .map(util::parse_version_request)
        .transpose()
}

/// Builds (or reuses) the pack's environment of kind `K`. The caller holds the ref
/// lock.
#[tracing::instrument(name = "build_env", skip_all, fields(pack = %ctx.manifest.pack_ref, runtime = K::RUNTIME))]
pub(crate) async fn ensure<K: EnvKind>(ctx: &Ctx<'_>) -> Result<K::Env, EnvError> {
    let request = parse_request::<K>(ctx)?;
    let inputs = K::read_inputs(ctx.pack_dir, ctx.settings)?;
    if !ctx.options.force_rebuild
        && let Some(marker) = reusable::<K>(ctx, &inputs, request.as_deref())
    {
        ctx.reporter.info(Stage::Build, K::reused_message(&marker));
        return Ok(K::env(ctx, Installed::from(&marker), true));
    }
    let tools = K::select_tools(ctx, &inputs, request.as_deref()).await?;
    let hash = K::build_hash(&inputs, &tools)?;
    let build_dir = ctx.ref_dir.new_build_dir(K::KIND, &hash);
    if let Some(message) = K::starting_message(&tools) {
        ctx.reporter.info(Stage::Build, message);
    }
    let outcome = build::<K>(ctx, &tools, &inputs, hash, &build_dir).await;
    let marker = layout::finish_build(
        &ctx.ref_dir,
        K::KIND,
        build_dir,
        outcome,
        ctx.options.keep_previous,
    )
    .await?;
    ctx.reporter.info(Stage::Build, K::ready_message(&marker));
    Ok(K::env(ctx, Installed::from(&marker), false))
}

/// Installs into `build_dir` and writes the marker there, last: its presence says the
/// build is complete.
async fn build<K: EnvKind>(
    ctx: &Ctx<'_>,
    tools: &K::Tools,
    inputs: &K::Inputs,
    inputs_hash: String,
    build_dir: &Path,
) -> Result<Marker, EnvError> {
    let installed = K::install(ctx, tools, inputs, build_dir).await?;
    let (tool_path, tool_version) = K::tool(tools);
    let marker = Marker {
        schema: MARKER_SCHEMA,
        runtime: K::RUNTIME.to_string(),
        inputs_hash,
        tool_path: PathBuf::from(tool_path),
        tool_version: tool_version.to_string(),
        version_text: installed.version_text,
        deps_installed: installed.deps_installed,
        package_count: installed.package_count,
        built_at_unix: layout::unix_now(),
    };
    layout::write_marker(build_dir, &marker).map_err(EnvError::WriteMarker)?;
    Ok(marker)
}

/// Detect-only: the tools must be available for the request; the environment
/// reported is the existing one (`reused` = up to date) or, when there is none, where
/// it would be, with the version it would have.
#[tracing::instrument(name = "detect_env", skip_all, fields(pack = %ctx.manifest.pack_ref, runtime = K::RUNTIME))]
pub(crate) async fn detect<K: EnvKind>(ctx: &Ctx<'_>) -> Result<K::Env, EnvError> {
    let request = parse_request::<K>(ctx)?;
    let inputs = K::read_inputs(ctx.pack_dir, ctx.settings)?;
    if let Some(marker) = reusable::<K>(ctx, &inputs, request.as_deref()) {
        return Ok(K::env(ctx, Installed::from(&marker), true));
    }
    let tools = K::select_tools(ctx, &inputs, request.as_deref()).await?;
    let installed = match ctx.ref_dir.current_marker(K::KIND) {
        Some(marker) => Installed::from(&marker),
        None => Installed {
            deps_installed: false,
            package_count: 0,
            version_text: K::version_text(&tools),
        },
    };
    Ok(K::env(ctx, installed, false))
}
