//! The Node.js environment of a pack: `node_modules` installed by npm, outside the
//! pack.
//!
//! npm installs into the directory holding `package.json`, so the build copies the
//! npm inputs (`package.json`, `package-lock.json`/`npm-shrinkwrap.json`, `.npmrc`
//! and every local `file:` dependency) into `<build>/.src`, runs npm there, makes
//! `node_modules` self-contained and moves it to `<build>/node_modules`.
//!
//! Self-contained: npm links `file:` dependencies that lie inside the project as
//! symlinks whatever `--install-links` says (it only affects links leaving the
//! project), and a lockfile recording `"link": true` makes `npm ci` link them too.
//! Such symlinks would point into the staging copy, so each symlinked package is
//! replaced by a copy of its target (`--install-links` is still passed, for nested
//! cases it does handle).

use std::io;
use std::path::{Component, Path, PathBuf};

use super::discover::{self, NodeRuntime};
use super::error::{CopyError, EnvError, InputsError, PackageTool};
use super::kind::{EnvKind, Installed};
use super::layout::{self, MARKER_SCHEMA, Marker};
use super::util::{self, InputsHasher};
use super::{BuildOptions, Ctx, EnvSettings, NodeEnv};
use crate::manifest::{Manifest, RuntimeRequirement};
use crate::packfs::{EntryKind, PackDir, PackFsError, ReadCap};
use crate::process::CommandSpec;
use crate::progress::Stage;

pub const KIND: &str = "node";
pub const PACKAGE_JSON: &str = "package.json";
const LOCKFILES: &[&str] = &["package-lock.json", "npm-shrinkwrap.json"];
const NPMRC: &str = ".npmrc";
const DEP_SECTIONS: &[&str] = &["dependencies", "optionalDependencies", "devDependencies"];
const STAGING: &str = ".src";

/// The npm inputs of a pack: the files copied into the staging directory (relative
/// to the pack) and their digest, with the npm settings.
#[derive(Debug)]
pub struct NodeInputs {
    pub has_package_json: bool,
    pub has_lockfile: bool,
    /// Files and directories copied for the build, relative to the pack.
    pub copy: Vec<PathBuf>,
    pub digest: String,
}

/// Reads the npm inputs through the pack's directory descriptor (no links out, no
/// FIFOs or devices; at most `pack_files.max_other_bytes` per file).
pub fn read_inputs(pack_dir: &Path, settings: &EnvSettings) -> Result<NodeInputs, InputsError> {
    let mut h = InputsHasher::new("attune-node-files-v1");
    let mut copy = Vec::new();
    let pack = PackDir::open(pack_dir).map_err(InputsError::OpenPack)?;
    let cap = settings.read_limits.other();
    let unreadable = |name: &str| {
        let file = name.to_string();
        move |source| InputsError::Read { file, source }
    };
    let present = |name: &str| {
        pack.kind(name)
            .map(|kind| kind.is_some())
            .map_err(unreadable(name))
    };
    let has_package_json = present(PACKAGE_JSON)?;
    let mut has_lockfile = false;
    if has_package_json {
        let text = pack
            .read_text(PACKAGE_JSON, cap)
            .map_err(unreadable(PACKAGE_JSON))?;
        let json: serde_json::Value =
            serde_json::from_str(&text).map_err(InputsError::PackageJson)?;
        h.str(PACKAGE_JSON);
        h.str(&text);
        copy.push(PathBuf::from(PACKAGE_JSON));
        for &name in LOCKFILES.iter().chain([&NPMRC]) {
            if present(name)? {
                let bytes = pack.read(name, cap).map_err(unreadable(name))?;
                h.str(name);
                h.field(&bytes);
                copy.push(PathBuf::from(name));
                has_lockfile |= LOCKFILES.contains(&name);
            }
        }
        let mut local = local_dependencies(&json)?;
        local.sort();
        local.dedup();
        for rel in local {
            let kind = pack
                .kind(&rel)
                .map_err(|source| InputsError::ReadLocalDependency {
                    path: rel.clone(),
                    source,
                })?;
            let Some((kind, _)) = kind else {
                return Err(InputsError::LocalDependencyMissing { path: rel });
            };
            h.str("local dependency");
            h.field(rel.as_os_str().as_encoded_bytes());
            hash_tree(&pack, &rel, kind, Path::new(""), cap, &mut h).map_err(|e| {
                InputsError::LocalDependency {
                    path: rel.clone(),
                    source: e.relative_to(pack.path()),
                }
            })?;
            copy.push(rel);
        }
    } else {
        h.str("no package.json");
    }
    h.str("npm settings");
    h.str(settings.npm_registry.as_deref().unwrap_or(""));
    h.str(&settings.npm_extra_args.len().to_string());
    for arg in &settings.npm_extra_args {
        h.str(arg);
    }
    h.str(&format!(
        "offline={} ignore_scripts={}",
        settings.npm_offline, settings.npm_ignore_scripts
    ));
    Ok(NodeInputs {
        has_package_json,
        has_lockfile,
        copy,
        digest: h.finish(),
    })
}

/// Relative paths of `file:` dependencies; they must stay inside the pack.
fn local_dependencies(json: &serde_json::Value) -> Result<Vec<PathBuf>, InputsError> {
    let mut out = Vec::new();
    for section in DEP_SECTIONS {
        let Some(deps) = json.get(section).and_then(|d| d.as_object()) else {
            continue;
        };
        for (name, spec) in deps {
            let Some(target) = spec.as_str().and_then(|s| s.strip_prefix("file:")) else {
                continue;
            };
            let path = Path::new(target);
            let inside = !target.is_empty()
                && path
                    .components()
                    .all(|c| matches!(c, Component::Normal(_) | Component::CurDir))
                && path.components().any(|c| matches!(c, Component::Normal(_)));
            if !inside {
                return Err(InputsError::LocalDependencyOutside {
                    section: section.to_string(),
                    name: name.clone(),
                    target: target.to_string(),
                });
            }
            out.push(
                path.components()
                    .filter(|c| matches!(c, Component::Normal(_)))
                    .collect(),
            );
        }
    }
    Ok(out)
}

/// Names and contents of every file under `name` (of kind `kind`) in `dir`, sorted;
/// `node_modules` and `.git` skipped; symlinks by their target text (never followed);
/// FIFOs, sockets and devices refused. `rel` is the path hashed for `name`.
fn hash_tree(
    dir: &PackDir,
    name: &Path,
    kind: EntryKind,
    rel: &Path,
    cap: ReadCap,
    h: &mut InputsHasher,
) -> Result<(), PackFsError> {
    h.field(rel.as_os_str().as_encoded_bytes());
    match kind {
        EntryKind::Symlink => {
            h.str("symlink");
            let target = dir.read_link(name)?;
            h.field(target.as_os_str().as_encoded_bytes());
        }
        EntryKind::Dir => {
            h.str("dir");
            // `rel` has one component per level below the input: bounded like every
            // walk of a pack, so nesting cannot exhaust the stack or descriptors.
            let limits = crate::packfs::tree_limits();
            if rel.components().count() as u64 > limits.depth.value {
                return Err(limits.too_deep(dir.path().join(name)));
            }
            let sub = dir.open_dir(name)?;
            let mut entries = sub.entries()?;
            entries.sort_by(|a, b| a.name.cmp(&b.name));
            for entry in entries {
                if entry.name == "node_modules" || entry.name == ".git" {
                    continue;
                }
                let child = Path::new(&entry.name);
                hash_tree(&sub, child, entry.kind, &rel.join(child), cap, h)?;
            }
        }
        EntryKind::File => {
            h.str("file");
            h.field(&dir.read(name, cap)?);
        }
        other => return Err(other.refusal(dir.path().join(name))),
    }
    Ok(())
}

/// Copies `src` to `dst` (a file, a symlink or a directory tree; symlinks are
/// copied as symlinks). `skip_deps` leaves out `node_modules` and `.git`.
fn copy_tree(src: &Path, dst: &Path, skip_deps: bool) -> io::Result<()> {
    let meta = std::fs::symlink_metadata(src)?;
    if meta.is_symlink() {
        std::os::unix::fs::symlink(std::fs::read_link(src)?, dst)
    } else if meta.is_dir() {
        std::fs::create_dir_all(dst)?;
        for entry in std::fs::read_dir(src)? {
            let entry = entry?;
            let name = entry.file_name();
            if skip_deps && (name == "node_modules" || name == ".git") {
                continue;
            }
            copy_tree(&entry.path(), &dst.join(&name), skip_deps)?;
        }
        Ok(())
    } else {
        std::fs::copy(src, dst).map(|_| ())
    }
}

/// Copies the npm input `name` of `dir` (a file, a link or a directory tree) to
/// `dst`, reading through the pack's descriptor: links are copied as links (never
/// followed), FIFOs and devices are refused, `node_modules` and `.git` are left out.
fn copy_input(dir: &PackDir, name: &Path, dst: &Path) -> Result<(), CopyError> {
    copy_input_at(dir, name, dst, 0)
}

/// [`copy_input`] of an entry `depth` levels below the input, under the pack walk
/// limits (`pack_files.max_depth`, `pack_files.max_file_bytes` by `fstat` and while
/// copying).
fn copy_input_at(dir: &PackDir, name: &Path, dst: &Path, depth: u64) -> Result<(), CopyError> {
    use std::os::unix::fs::PermissionsExt;
    let limits = crate::packfs::tree_limits();
    let write = |source: io::Error| CopyError::Write {
        path: dst.to_path_buf(),
        source,
    };
    let Some((kind, _)) = dir.kind(name)? else {
        return Err(CopyError::Missing {
            path: dir.path().join(name),
        });
    };
    match kind {
        EntryKind::Symlink => std::os::unix::fs::symlink(dir.read_link(name)?, dst).map_err(write),
        EntryKind::Dir => {
            if depth + 1 > limits.depth.value {
                return Err(limits.too_deep(dir.path().join(name)).into());
            }
            let sub = dir.open_dir(name)?;
            std::fs::create_dir_all(dst).map_err(write)?;
            for entry in sub.entries()? {
                if entry.name == "node_modules" || entry.name == ".git" {
                    continue;
                }
                copy_input_at(
                    &sub,
                    Path::new(&entry.name),
                    &dst.join(&entry.name),
                    depth + 1,
                )?;
            }
            Ok(())
        }
        EntryKind::File => {
            let opened = dir.open_file(name)?;
            let too_large = || CopyError::from(limits.file_too_large(dir.path().join(name)));
            if opened.len > limits.file_bytes.value {
                return Err(too_large());
            }
            let mut out = std::fs::File::create(dst).map_err(write)?;
            let cap = limits.file_bytes.value.saturating_add(1);
            if io::copy(&mut io::Read::take(&opened.file, cap), &mut out).map_err(write)? >= cap {
                return Err(too_large());
            }
            out.set_permissions(std::fs::Permissions::from_mode(opened.mode & 0o777))
                .map_err(write)
        }
        other => Err(other.refusal(dir.path().join(name)).into()),
    }
}

/// Replaces every symlinked package in `node_modules` (and nested `node_modules`)
/// by a copy of what it points to, which must lie inside `inside` (the build
/// directory): npm and lifecycle scripts ran sandboxed, and a link they left pointing
/// elsewhere would have the server copy files they could not read.
fn materialize_links(node_modules: &Path, inside: &Path) -> io::Result<()> {
    let Ok(entries) = std::fs::read_dir(node_modules) else {
        return Ok(());
    };
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name();
        if name.as_encoded_bytes().starts_with(b".") {
            continue; // .bin (relative links inside node_modules), .package-lock.json
        }
        let path = entry.path();
        let meta = std::fs::symlink_metadata(&path)?;
        if name.as_encoded_bytes().starts_with(b"@") && meta.is_dir() {
            for scoped in std::fs::read_dir(&path)? {
                materialize_package(&scoped?.path(), inside)?;
            }
        } else {
            materialize_package(&path, inside)?;
        }
    }
    Ok(())
}

fn materialize_package(path: &Path, inside: &Path) -> io::Result<()> {
    if std::fs::symlink_metadata(path)?.is_symlink() {
        let target = std::fs::canonicalize(path)?;
        if !target.starts_with(inside) {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!(
                    "{} links to {}, outside the build directory",
                    path.display(),
                    target.display()
                ),
            ));
        }
        std::fs::remove_file(path)?;
        copy_tree(&target, path, false)?;
    }
    materialize_links(&path.join("node_modules"), inside)
}

/// Installed packages: every package directory under `node_modules`, nested ones
/// included (transitive dependencies count, as for Python).
pub fn count_packages(node_modules: &Path) -> u32 {
    let mut count = 0;
    let Ok(entries) = std::fs::read_dir(node_modules) else {
        return 0;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        if name.as_encoded_bytes().starts_with(b".") {
            continue;
        }
        let path = entry.path();
        let dirs: Vec<PathBuf> = if name.as_encoded_bytes().starts_with(b"@") {
            std::fs::read_dir(&path)
                .map(|d| d.flatten().map(|e| e.path()).collect())
                .unwrap_or_default()
        } else {
            vec![path]
        };
        for dir in dirs {
            if dir.join(PACKAGE_JSON).is_file() {
                count += 1;
                count += count_packages(&dir.join("node_modules"));
            }
        }
    }
    count
}

/// The build's name: node (path, version, identity), npm (path, identity) and the
/// inputs digest.
pub fn inputs_hash(
    inputs: &NodeInputs,
    node: &Path,
    node_version: &str,
    npm: Option<&Path>,
) -> Option<String> {
    let mut h = InputsHasher::new("attune-node-env-v1");
    h.str(&MARKER_SCHEMA.to_string());
    h.field(node.as_os_str().as_encoded_bytes());
    h.str(node_version);
    h.str(&util::file_identity(node)?);
    if inputs.has_package_json {
        let npm = npm?;
        h.field(npm.as_os_str().as_encoded_bytes());
        h.str(&util::file_identity(npm)?);
    }
    h.str(&inputs.digest);
    Some(h.finish())
}

/// `npm` on `PATH`, resolved (its real file changes when npm is upgraded).
fn npm_on_path() -> Option<PathBuf> {
    let path = util::find_on_path("npm")?;
    Some(std::fs::canonicalize(&path).unwrap_or(path))
}

/// `node` for this request: on `PATH`, answering `--version`, matching the request
/// (`nodejs_version` `20` ⇒ major 20) and the pack's requirement.
async fn select_node(ctx: &Ctx<'_>, request: Option<&[u64]>) -> Result<NodeRuntime, EnvError> {
    let node = discover::node_runtime().await.ok_or(EnvError::NoNode)?;
    if let Some(r) = request
        && !util::request_matches(r, &node.version)
    {
        return Err(EnvError::NodeVersionUnavailable {
            requested: ctx.options.nodejs_version.clone().unwrap_or_default(),
            found: node.version_text,
            executable: node.executable,
        });
    }
    if let Some(req) = &ctx.manifest.nodejs
        && !req.matches(&node.version)
    {
        return Err(EnvError::NodeRequirementUnmet {
            requirement: req.to_string(),
            found: node.version_text,
            executable: node.executable,
        });
    }
    Ok(node)
}

/// The programs a Node.js build runs: `node`, and `npm` when it is on `PATH`.
pub(crate) struct NodeTools {
    node: NodeRuntime,
    npm: Option<PathBuf>,
}

/// `node_modules` installed by npm.
pub(crate) struct NodeModules;

impl EnvKind for NodeModules {
    const KIND: &'static str = KIND;
    const RUNTIME: &'static str = "nodejs";
    type Inputs = NodeInputs;
    type Tools = NodeTools;
    type Env = NodeEnv;

    fn version_request(options: &BuildOptions) -> Option<&str> {
        options.nodejs_version.as_deref()
    }

    fn requirement(manifest: &Manifest) -> Option<&RuntimeRequirement> {
        manifest.nodejs.as_ref()
    }

    fn read_inputs(pack_dir: &Path, settings: &EnvSettings) -> Result<NodeInputs, EnvError> {
        Ok(read_inputs(pack_dir, settings)?)
    }

    fn marker_hash(inputs: &NodeInputs, marker: &Marker) -> Option<String> {
        let npm = npm_on_path();
        inputs_hash(
            inputs,
            &marker.tool_path,
            &marker.tool_version,
            npm.as_deref(),
        )
    }

    /// Only the first `node` on `PATH` is ever used.
    fn tool_current(marker: &Marker) -> bool {
        Some(&marker.tool_path) == discover::node_on_path().as_ref()
    }

    fn env_present(ctx: &Ctx<'_>) -> bool {
        ctx.ref_dir.link(KIND).join("node_modules").is_dir()
    }

    async fn select_tools(
        ctx: &Ctx<'_>,
        inputs: &NodeInputs,
        request: Option<&[u64]>,
    ) -> Result<NodeTools, EnvError> {
        let node = select_node(ctx, request).await?;
        let npm = npm_on_path();
        if inputs.has_package_json && npm.is_none() {
            return Err(EnvError::NoNpm);
        }
        Ok(NodeTools { node, npm })
    }

    fn tool(tools: &NodeTools) -> (&Path, &str) {
        (&tools.node.executable, &tools.node.version_text)
    }

    fn build_hash(inputs: &NodeInputs, tools: &NodeTools) -> Result<String, EnvError> {
        inputs_hash(
            inputs,
            &tools.node.executable,
            &tools.node.version_text,
            tools.npm.as_deref(),
        )
        .ok_or(EnvError::NodeOrNpmGone)
    }

    fn version_text(tools: &NodeTools) -> String {
        tools.node.version_text.clone()
    }

    /// `npm ci` (with a lockfile) or `npm install` in a staging copy of the npm inputs,
    /// then `node_modules` made self-contained and moved into the build; without
    /// `package.json`, an empty `node_modules`.
    async fn install(
        ctx: &Ctx<'_>,
        tools: &NodeTools,
        inputs: &NodeInputs,
        build_dir: &Path,
    ) -> Result<Installed, EnvError> {
        let node_modules = build_dir.join("node_modules");
        util::create_dir_all(build_dir)?;
        let installed = match tools.npm.as_deref() {
            Some(npm) if inputs.has_package_json => {
                let staging = build_dir.join(STAGING);
                let (pack_dir, copy, dst) = (
                    ctx.pack_dir.to_path_buf(),
                    inputs.copy.clone(),
                    staging.clone(),
                );
                tokio::task::spawn_blocking(move || -> Result<(), CopyError> {
                    let pack = PackDir::open(&pack_dir)?;
                    for rel in copy {
                        let to = dst.join(&rel);
                        if let Some(parent) = to.parent() {
                            std::fs::create_dir_all(parent).map_err(|source| {
                                CopyError::CreateDir {
                                    path: parent.to_path_buf(),
                                    source,
                                }
                            })?;
                        }
                        copy_input(&pack, &rel, &to)?;
                    }
                    Ok(())
                })
                .await
                .map_err(CopyError::from)
                .and_then(|r| r)
                .map_err(EnvError::CopyInputs)?;

                let verb = if inputs.has_lockfile { "ci" } else { "install" };
                let what = format!("npm {verb}");
                let timeout = util::remaining(ctx.deadline, &what, ctx.options.timeout)?;
                // npm and the packages' lifecycle scripts run as the sandbox user: the
                // build directory is theirs until `finish_build` takes it back.
                util::prepare_build_dir(build_dir)?;
                let mut spec = npm_command(ctx, npm, verb, &staging, timeout).write_path(build_dir);
                for tool in [Some(npm), Some(tools.node.executable.as_path())]
                    .into_iter()
                    .flatten()
                {
                    if let Some(prefix) = util::install_prefix(tool) {
                        spec = spec.read_path(prefix);
                    }
                }
                ctx.reporter
                    .info(Stage::Build, format!("nodejs: {}", spec.display_command()));
                let ran =
                    util::run_tool(&spec, &what, "npm", ctx.reporter, ctx.options.timeout).await;
                layout::reclaim(build_dir).await?;
                ran.map_err(|e| {
                    util::explain_fetch_failure(e, |problem| {
                        super::fetch_advice(ctx.settings, PackageTool::Npm, problem)
                    })
                })?;

                let (from, to) = (staging.join("node_modules"), node_modules.clone());
                let inside =
                    std::fs::canonicalize(build_dir).map_err(|source| EnvError::Canonicalize {
                        path: build_dir.to_path_buf(),
                        source,
                    })?;
                tokio::task::spawn_blocking(move || -> io::Result<()> {
                    if from.is_dir() {
                        materialize_links(&from, &inside)?;
                        std::fs::rename(&from, &to)?;
                    } else {
                        std::fs::create_dir_all(&to)?;
                    }
                    std::fs::remove_dir_all(&staging)
                })
                .await
                .map_err(io::Error::other)
                .and_then(|r| r)
                .map_err(EnvError::FinishNodeModules)?;
                true
            }
            _ => {
                util::create_dir_all(&node_modules)?;
                false
            }
        };
        Ok(Installed {
            deps_installed: installed,
            package_count: count_packages(&node_modules),
            version_text: tools.node.version_text.clone(),
        })
    }

    fn reused_message(marker: &Marker) -> String {
        format!(
            "nodejs: environment is up to date (node {}), reused",
            marker.version_text
        )
    }

    fn ready_message(marker: &Marker) -> String {
        format!(
            "nodejs: node_modules ready, {} installed",
            crate::progress::count(marker.package_count, "package", "packages")
        )
    }

    fn env(ctx: &Ctx<'_>, installed: Installed, reused: bool) -> NodeEnv {
        NodeEnv {
            node_modules_path: ctx.ref_dir.link(KIND).join("node_modules"),
            dependencies_installed: installed.deps_installed,
            package_count: installed.package_count,
            nodejs_version: installed.version_text,
            reused,
        }
    }
}

/// `npm ci|install`, configured by `settings` and, unless builds are isolated, the
/// host's configuration captured in them (as `npm_config_*` variables, which win
/// over the pack's own `.npmrc`); no user configuration file (HOME is ours), the
/// cache under the envs root, dev dependencies omitted.
fn npm_command(
    ctx: &Ctx<'_>,
    npm: &Path,
    verb: &str,
    staging: &Path,
    timeout: std::time::Duration,
) -> CommandSpec {
    let s = ctx.settings;
    let home = ctx.home_dir();
    let mut spec = CommandSpec::new(npm, staging, timeout)
        .write_path(&home)
        .write_path(ctx.ref_dir.root.join(".cache").join("npm"))
        .arg(verb)
        .arg("--no-audit")
        .arg("--no-fund")
        .arg("--install-links")
        .arg("--omit=dev")
        .arg("--cache")
        .arg(ctx.ref_dir.root.join(".cache").join("npm"));
    if s.npm_ignore_scripts {
        spec = spec.arg("--ignore-scripts");
    }
    if s.npm_offline {
        spec = spec.arg("--offline");
    }
    for arg in &s.npm_extra_args {
        spec = spec.arg(arg);
    }
    // The host's settings first: `npm_registry` below replaces its registry.
    let (host_vars, host_paths) = super::host_environment(s, PackageTool::Npm);
    for path in host_paths {
        spec = spec.read_path(path);
    }
    for (k, v) in host_vars {
        spec = spec.env(k, v);
    }
    if let Some(registry) = &s.npm_registry {
        // Through the environment: a registry URL may carry credentials.
        spec = spec.env("npm_config_registry", registry);
    }
    spec = spec
        .env("npm_config_userconfig", home.join(".npmrc"))
        .env("npm_config_update_notifier", "false")
        .env("npm_config_progress", "false")
        .env("NO_UPDATE_NOTIFIER", "1")
        .env("NO_COLOR", "1")
        .env("HOME", home);
    spec
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_left_by_the_build_must_stay_inside_it() {
        let dir = tempfile::tempdir().unwrap();
        let build = dir.path().join("build");
        let outside = dir.path().join("outside");
        std::fs::create_dir_all(build.join("staging/vendor/dep")).unwrap();
        std::fs::write(build.join("staging/vendor/dep/index.js"), "ok").unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::write(outside.join("secret"), "s").unwrap();
        let modules = build.join("staging/node_modules");
        std::fs::create_dir_all(&modules).unwrap();
        std::os::unix::fs::symlink(build.join("staging/vendor/dep"), modules.join("dep")).unwrap();
        let inside = std::fs::canonicalize(&build).unwrap();
        materialize_links(&modules, &inside).unwrap();
        assert!(
            !std::fs::symlink_metadata(modules.join("dep"))
                .unwrap()
                .is_symlink()
        );
        assert!(modules.join("dep/index.js").is_file());

        // A lifecycle script swapped a package for a link to the server's files.
        std::os::unix::fs::symlink(&outside, modules.join("evil")).unwrap();
        let err = materialize_links(&modules, &inside).unwrap_err();
        assert!(
            err.to_string().contains("outside the build directory"),
            "{err}"
        );
        assert!(!modules.join("evil/secret").exists() || modules.join("evil").is_symlink());
        assert!(
            std::fs::symlink_metadata(modules.join("evil"))
                .unwrap()
                .is_symlink()
        );
    }

    #[test]
    fn local_dependencies_must_stay_inside() {
        let ok = serde_json::json!({"dependencies": {"a": "file:./a", "b": "^1"},
                                    "devDependencies": {"c": "file:libs/c"}});
        assert_eq!(
            local_dependencies(&ok).unwrap(),
            vec![PathBuf::from("a"), PathBuf::from("libs/c")]
        );
        for bad in ["file:../x", "file:/abs", "file:", "file:."] {
            let json = serde_json::json!({"dependencies": {"x": bad}});
            let err = local_dependencies(&json).unwrap_err().to_string();
            assert!(err.contains("inside the pack"), "{bad}: {err}");
        }
    }

    #[test]
    fn npm_inputs_are_read_without_following_links_or_blocking() {
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("secret"), "secret\n").unwrap();
        let dir = tempfile::tempdir().unwrap();
        let pack = dir.path();
        let settings = EnvSettings::default();
        std::fs::write(
            pack.join(PACKAGE_JSON),
            r#"{"dependencies": {"lib": "file:lib"}}"#,
        )
        .unwrap();
        std::fs::create_dir_all(pack.join("lib")).unwrap();
        std::fs::write(pack.join("lib/index.js"), "module.exports = 1;\n").unwrap();
        // A link inside a local dependency is hashed by its text, never followed.
        std::os::unix::fs::symlink(outside.path().join("secret"), pack.join("lib/link")).unwrap();
        let first = read_inputs(pack, &settings).unwrap();
        std::fs::write(outside.path().join("secret"), "changed\n").unwrap();
        assert_eq!(read_inputs(pack, &settings).unwrap().digest, first.digest);

        // A FIFO in a local dependency is refused at once, naming it.
        rustix::fs::mknodat(
            rustix::fs::CWD,
            pack.join("lib/pipe"),
            rustix::fs::FileType::Fifo,
            rustix::fs::Mode::from_raw_mode(0o644),
            0,
        )
        .unwrap();
        let err = read_inputs(pack, &settings).unwrap_err().to_string();
        assert!(err.contains("pipe") && err.contains("fifo"), "{err}");
        std::fs::remove_file(pack.join("lib/pipe")).unwrap();

        // A lock file linked out of the pack is refused.
        std::os::unix::fs::symlink("/dev/zero", pack.join("package-lock.json")).unwrap();
        let err = read_inputs(pack, &settings).unwrap_err().to_string();
        assert!(
            err.contains("package-lock.json") && err.contains("symbolic link"),
            "{err}"
        );
        std::fs::remove_file(pack.join("package-lock.json")).unwrap();

        // package.json over the cap is refused, naming the setting.
        let small = EnvSettings {
            read_limits: crate::packfs::PackReadLimits {
                other_bytes: 8,
                ..Default::default()
            },
            ..EnvSettings::default()
        };
        let err = read_inputs(pack, &small).unwrap_err().to_string();
        assert!(err.contains("pack_files.max_other_bytes"), "{err}");
    }
}
