//! The Python environment of a pack: a virtualenv with `requirements.txt` installed.

use std::collections::HashSet;
use std::path::{Component, Path, PathBuf};

use super::discover::{self, Interpreter};
use super::error::{EnvError, InputsError, PackageTool};
use super::kind::{EnvKind, Installed};
use super::layout::{self, MARKER_SCHEMA, Marker};
use super::util::{self, InputsHasher};
use super::{BuildOptions, Ctx, EnvSettings, PythonEnv};
use crate::manifest::{Manifest, RuntimeRequirement};
use crate::packfs::{PackDir, ReadCap};
use crate::process::CommandSpec;
use crate::progress::Stage;

pub const KIND: &str = "python";
pub const REQUIREMENTS_FILE: &str = "requirements.txt";
/// `-r`/`-c` include depth limit (cycles are caught separately).
const MAX_INCLUDE_DEPTH: usize = 16;
/// Distributions `venv` installs by itself; not counted as installed packages.
const BOOTSTRAP_DISTS: &[&str] = &["pip", "setuptools", "wheel", "distribute"];

/// What the requirement files and pip settings contribute to the inputs hash.
#[derive(Debug)]
pub struct PythonInputs {
    pub requirements: Option<PathBuf>,
    pub digest: String,
}

/// Hashes `requirements.txt` and every file it includes with `-r`/`-c` (resolved
/// against the including file's directory, and required to stay inside the pack),
/// plus the pip settings. Files are read through the pack's directory descriptor
/// (no links, FIFOs or devices; at most `pack_files.max_other_bytes` each).
pub fn read_inputs(pack_dir: &Path, settings: &EnvSettings) -> Result<PythonInputs, InputsError> {
    let mut h = InputsHasher::new("attune-python-files-v1");
    let pack = PackDir::open(pack_dir).map_err(InputsError::OpenPack)?;
    let present = pack
        .kind(REQUIREMENTS_FILE)
        .map_err(|source| InputsError::Read {
            file: REQUIREMENTS_FILE.to_string(),
            source,
        })?
        .is_some();
    let requirements = present.then(|| pack_dir.join(REQUIREMENTS_FILE));
    if present {
        let mut seen = HashSet::new();
        let cap = settings.read_limits.other();
        hash_requirements(
            &pack,
            PathBuf::from(REQUIREMENTS_FILE),
            0,
            &mut seen,
            &mut h,
            cap,
        )?;
    } else {
        h.str("no requirements");
    }
    h.str("pip settings");
    h.str(settings.pip_index_url.as_deref().unwrap_or(""));
    for list in [
        &settings.pip_extra_index_urls,
        &settings.pip_find_links,
        &settings.pip_extra_args,
    ] {
        h.str(&list.len().to_string());
        for item in list {
            h.str(item);
        }
    }
    h.str(if settings.pip_offline {
        "offline"
    } else {
        "online"
    });
    Ok(PythonInputs {
        requirements,
        digest: h.finish(),
    })
}

/// `rel`: relative to the pack root, without `..`.
fn hash_requirements(
    pack: &PackDir,
    rel: PathBuf,
    depth: usize,
    seen: &mut HashSet<PathBuf>,
    h: &mut InputsHasher,
    cap: ReadCap,
) -> Result<(), InputsError> {
    let shown = rel.display().to_string();
    if depth > MAX_INCLUDE_DEPTH {
        return Err(InputsError::RequirementsTooDeep { file: shown });
    }
    if !seen.insert(rel.clone()) {
        return Ok(());
    }
    let text = pack
        .read_text(&rel, cap)
        .map_err(|source| InputsError::Read {
            file: shown.clone(),
            source,
        })?;
    h.str(&shown);
    h.str(&text);
    let base = rel.parent().unwrap_or(Path::new("")).to_path_buf();
    for (n, raw) in text.lines().enumerate() {
        let line = strip_comment(raw).trim();
        if let Some(target) = option_value(line, &["-e", "--editable"]) {
            if is_local_path(target) {
                return Err(InputsError::LocalEditable {
                    file: shown,
                    line: n + 1,
                    text: line.to_string(),
                });
            }
            continue;
        }
        if let Some(target) = option_value(line, &["-r", "--requirement", "-c", "--constraint"]) {
            let Some(include) = inside_pack(&base, target) else {
                return Err(InputsError::IncludeOutsidePack {
                    file: shown,
                    line: n + 1,
                    text: line.to_string(),
                });
            };
            hash_requirements(pack, include, depth + 1, seen, h, cap)?;
        }
    }
    Ok(())
}

/// `target` (as written in a requirement file in directory `base`) as a path relative
/// to the pack root; `None` when it is absolute or climbs out of the pack.
fn inside_pack(base: &Path, target: &str) -> Option<PathBuf> {
    let joined = base.join(target);
    let mut parts: Vec<&std::ffi::OsStr> = Vec::new();
    for component in joined.components() {
        match component {
            Component::Normal(name) => parts.push(name),
            Component::CurDir => {}
            Component::ParentDir => {
                parts.pop()?;
            }
            Component::RootDir | Component::Prefix(_) => return None,
        }
    }
    Some(parts.iter().collect())
}

fn strip_comment(line: &str) -> &str {
    // pip: `#` starts a comment at the beginning of a line or after whitespace.
    if line.starts_with('#') {
        return "";
    }
    match line.find(" #").or(line.find("\t#")) {
        Some(i) => &line[..i],
        None => line,
    }
}

/// The value of `-r x`, `-rx`, `--requirement x` or `--requirement=x`.
fn option_value<'a>(line: &'a str, names: &[&str]) -> Option<&'a str> {
    for name in names {
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        let value = if name.starts_with("--") {
            if let Some(v) = rest.strip_prefix('=') {
                v
            } else if rest.starts_with(char::is_whitespace) {
                rest
            } else {
                continue;
            }
        } else {
            rest.strip_prefix('=').unwrap_or(rest)
        };
        let value = value.trim();
        if !value.is_empty() {
            return Some(value);
        }
    }
    None
}

fn is_local_path(target: &str) -> bool {
    !target.contains("://")
        && !["git+", "hg+", "svn+", "bzr+"]
            .iter()
            .any(|p| target.starts_with(p))
}

/// The hash that names a build: the interpreter (path, version, file identity) and
/// the inputs digest.
pub fn inputs_hash(inputs: &PythonInputs, executable: &Path, version: &str) -> Option<String> {
    let identity = util::file_identity(executable)?;
    let mut h = InputsHasher::new("attune-python-env-v1");
    h.str(&MARKER_SCHEMA.to_string());
    h.field(executable.as_os_str().as_encoded_bytes());
    h.str(version);
    h.str(&identity);
    h.str(&inputs.digest);
    Some(h.finish())
}

/// A virtualenv with `requirements.txt` installed.
pub(crate) struct Virtualenv;

impl EnvKind for Virtualenv {
    const KIND: &'static str = KIND;
    const RUNTIME: &'static str = "python";
    type Inputs = PythonInputs;
    type Tools = Interpreter;
    type Env = PythonEnv;

    fn version_request(options: &BuildOptions) -> Option<&str> {
        options.python_version.as_deref()
    }

    fn requirement(manifest: &Manifest) -> Option<&RuntimeRequirement> {
        manifest.python.as_ref()
    }

    fn read_inputs(pack_dir: &Path, settings: &EnvSettings) -> Result<PythonInputs, EnvError> {
        Ok(read_inputs(pack_dir, settings)?)
    }

    fn marker_hash(inputs: &PythonInputs, marker: &Marker) -> Option<String> {
        inputs_hash(inputs, &marker.tool_path, &marker.tool_version)
    }

    fn env_present(ctx: &Ctx<'_>) -> bool {
        ctx.ref_dir.link(KIND).join("bin").join("python").exists()
    }

    async fn select_tools(
        ctx: &Ctx<'_>,
        _inputs: &PythonInputs,
        request: Option<&[u64]>,
    ) -> Result<Interpreter, EnvError> {
        let found = discover::python_interpreters().await;
        let interp = discover::select_python(
            &found,
            request,
            ctx.options.python_version.as_deref(),
            ctx.manifest.python.as_ref(),
        )?;
        Ok(interp.clone())
    }

    fn tool(interp: &Interpreter) -> (&Path, &str) {
        (&interp.executable, &interp.version_text)
    }

    fn build_hash(inputs: &PythonInputs, interp: &Interpreter) -> Result<String, EnvError> {
        inputs_hash(inputs, &interp.executable, &interp.version_text).ok_or_else(|| {
            EnvError::InterpreterGone {
                executable: interp.executable.clone(),
            }
        })
    }

    fn version_text(interp: &Interpreter) -> String {
        format!("Python {}", interp.version_text)
    }

    fn starting_message(interp: &Interpreter) -> Option<String> {
        Some(format!(
            "python: creating virtualenv with {} {} ({})",
            interp.command,
            interp.version_text,
            interp.executable.display()
        ))
    }

    /// `python -m venv`, then `pip install -r requirements.txt` when the pack has one.
    async fn install(
        ctx: &Ctx<'_>,
        interp: &Interpreter,
        inputs: &PythonInputs,
        build_dir: &Path,
    ) -> Result<Installed, EnvError> {
        let timeout = ctx.options.timeout;
        let venv_timeout = util::remaining(ctx.deadline, "python -m venv", timeout)?;
        // Pack code (setup.py, build hooks) runs as the sandbox user: it gets this one
        // directory to write, made and handed over by the server; `finish_build` takes
        // it back before it is used.
        util::prepare_build_dir(build_dir)?;
        let mut spec = CommandSpec::new(&interp.executable, &ctx.ref_dir.dir, venv_timeout)
            .arg("-m")
            .arg("venv")
            .arg(build_dir)
            .env("PYTHONNOUSERSITE", "1")
            .write_path(build_dir);
        if let Some(prefix) = util::install_prefix(&interp.executable) {
            spec = spec.read_path(prefix);
        }
        let interpreter_access = spec.access.clone();
        util::run_tool(&spec, "python -m venv", "venv", ctx.reporter, timeout).await?;
        let venv_python = build_dir.join("bin").join("python");

        let installed = if let Some(requirements) = &inputs.requirements {
            let pip_timeout = util::remaining(ctx.deadline, "pip install", timeout)?;
            let mut spec = pip_command(ctx, &venv_python, requirements, pip_timeout);
            spec.access
                .read
                .extend(interpreter_access.read.iter().cloned());
            spec.access
                .write
                .extend(interpreter_access.write.iter().cloned());
            ctx.reporter
                .info(Stage::Build, format!("python: {}", spec.display_command()));
            util::run_tool(&spec, "pip install", "pip", ctx.reporter, timeout)
                .await
                .map_err(|e| {
                    util::explain_fetch_failure(e, |problem| {
                        super::fetch_advice(ctx.settings, PackageTool::Pip, problem)
                    })
                })?;
            true
        } else {
            false
        };

        layout::reclaim(build_dir).await?;
        Ok(Installed {
            deps_installed: installed,
            package_count: count_distributions(build_dir),
            version_text: format!(
                "Python {}",
                venv_version(build_dir).unwrap_or_else(|| interp.version_text.clone())
            ),
        })
    }

    fn reused_message(marker: &Marker) -> String {
        format!(
            "python: environment is up to date ({}), reused",
            marker.version_text
        )
    }

    fn ready_message(marker: &Marker) -> String {
        format!(
            "python: virtualenv ready, {} installed",
            crate::progress::count(marker.package_count, "package", "packages")
        )
    }

    fn env(ctx: &Ctx<'_>, installed: Installed, reused: bool) -> PythonEnv {
        PythonEnv {
            virtualenv_path: ctx.ref_dir.link(KIND),
            requirements_installed: installed.deps_installed,
            package_count: installed.package_count,
            python_version: installed.version_text,
            reused,
        }
    }
}

/// `pip install -r requirements.txt` in the virtualenv, configured by `settings`
/// and, unless builds are isolated, the host's configuration captured in them
/// ([`super::host_environment`]), all passed as `PIP_*` variables. pip reads no
/// configuration file itself (`PIP_CONFIG_FILE=/dev/null`): the host's files were
/// read at capture, and the child's `HOME` is private. The environment is
/// otherwise the minimal one of `process`.
fn pip_command(
    ctx: &Ctx<'_>,
    venv_python: &Path,
    requirements: &Path,
    timeout: std::time::Duration,
) -> CommandSpec {
    let s = ctx.settings;
    let mut spec = CommandSpec::new(venv_python, ctx.pack_dir, timeout)
        .read_path(ctx.pack_dir)
        .write_path(ctx.home_dir())
        .write_path(ctx.ref_dir.root.join(".cache").join("pip"))
        .arg("-m")
        .arg("pip")
        .arg("install")
        .arg("--no-input")
        .arg("--progress-bar")
        .arg("off")
        .arg("-r")
        .arg(requirements);
    if s.pip_offline {
        spec = spec.arg("--no-index");
    }
    // Find-links entries with whitespace cannot go into the space-separated variable.
    let (spaced, plain): (Vec<&String>, Vec<&String>) = s
        .pip_find_links
        .iter()
        .partition(|l| l.contains(char::is_whitespace));
    for link in spaced {
        spec = spec.arg("--find-links").arg(link);
    }
    for arg in &s.pip_extra_args {
        spec = spec.arg(arg);
    }
    // Local wheel directories are read by pip, which runs sandboxed.
    for link in &s.pip_find_links {
        let local = link.strip_prefix("file://").unwrap_or(link);
        if local.starts_with('/') {
            spec = spec.read_path(local);
        }
    }
    // The host's settings first: the explicit ones below replace them.
    let (host_vars, host_paths) = super::host_environment(s, PackageTool::Pip);
    for path in host_paths {
        spec = spec.read_path(path);
    }
    for (k, v) in host_vars {
        spec = spec.env(k, v);
    }
    // URLs go through the environment: they may carry credentials, and the
    // environment is neither shown in `ps` nor printed (CommandSpec's Debug).
    if let Some(url) = &s.pip_index_url {
        spec = spec.env("PIP_INDEX_URL", url);
    }
    if !s.pip_extra_index_urls.is_empty() {
        spec = spec.env("PIP_EXTRA_INDEX_URL", s.pip_extra_index_urls.join(" "));
    }
    if !plain.is_empty() {
        let joined: Vec<&str> = plain.iter().map(|s| s.as_str()).collect();
        spec = spec.env("PIP_FIND_LINKS", joined.join(" "));
    }
    spec = spec
        .env("PIP_DISABLE_PIP_VERSION_CHECK", "1")
        .env("PIP_CONFIG_FILE", "/dev/null")
        .env("PIP_CACHE_DIR", ctx.ref_dir.root.join(".cache").join("pip"))
        .env("PYTHONNOUSERSITE", "1")
        .env("PYTHONUNBUFFERED", "1")
        .env("HOME", ctx.home_dir());
    spec
}

/// Distributions in the virtualenv's site-packages (`*.dist-info`, `*.egg-info`),
/// except those `venv` puts there itself (pip, setuptools, wheel).
pub fn count_distributions(venv: &Path) -> u32 {
    let mut count = 0;
    for lib in ["lib", "lib64"] {
        // lib64 is usually a symlink to lib: count each real directory once.
        if lib == "lib64" && std::fs::symlink_metadata(venv.join(lib)).is_ok_and(|m| m.is_symlink())
        {
            continue;
        }
        let Ok(pythons) = std::fs::read_dir(venv.join(lib)) else {
            continue;
        };
        for python in pythons.flatten() {
            let Ok(entries) = std::fs::read_dir(python.path().join("site-packages")) else {
                continue;
            };
            for entry in entries.flatten() {
                let name = entry.file_name();
                let Some(name) = name.to_str() else { continue };
                let Some(stem) = name
                    .strip_suffix(".dist-info")
                    .or(name.strip_suffix(".egg-info"))
                else {
                    continue;
                };
                let dist = stem
                    .split('-')
                    .next()
                    .unwrap_or(stem)
                    .to_ascii_lowercase()
                    .replace('_', "-");
                if !BOOTSTRAP_DISTS.contains(&dist.as_str()) {
                    count += 1;
                }
            }
        }
    }
    count
}

/// The virtualenv's Python version from its `pyvenv.cfg` (`version = 3.11.7`, or
/// `version_info = 3.12.1.final.0`).
fn venv_version(venv: &Path) -> Option<String> {
    // Written by the sandboxed build: only a regular file is read, never a link.
    let path = venv.join("pyvenv.cfg");
    if !std::fs::symlink_metadata(&path).ok()?.is_file() {
        return None;
    }
    let cfg = std::fs::read_to_string(path).ok()?;
    let value = |key: &str| {
        cfg.lines().find_map(|l| {
            let (k, v) = l.split_once('=')?;
            (k.trim() == key).then(|| v.trim().to_string())
        })
    };
    if let Some(v) = value("version") {
        return Some(v);
    }
    let info = value("version_info")?;
    Some(info.split('.').take(3).collect::<Vec<_>>().join("."))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options() {
        assert_eq!(option_value("-r base.txt", &["-r"]), Some("base.txt"));
        assert_eq!(option_value("-rbase.txt", &["-r"]), Some("base.txt"));
        assert_eq!(
            option_value("--requirement=base.txt", &["--requirement"]),
            Some("base.txt")
        );
        assert_eq!(option_value("--requirementx", &["--requirement"]), None);
        assert_eq!(option_value("requests", &["-r"]), None);
        assert_eq!(strip_comment("foo==1 # pinned"), "foo==1");
        assert_eq!(strip_comment("# all"), "");
        assert!(is_local_path("./src"));
        assert!(!is_local_path("git+https://x/y#egg=z"));
    }

    #[test]
    fn includes_are_hashed_and_local_editables_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let settings = EnvSettings::default();
        std::fs::write(dir.path().join("requirements.txt"), "-r base.txt\nfoo\n").unwrap();
        std::fs::write(dir.path().join("base.txt"), "bar==1\n").unwrap();
        let a = read_inputs(dir.path(), &settings).unwrap().digest;
        std::fs::write(dir.path().join("base.txt"), "bar==2\n").unwrap();
        let b = read_inputs(dir.path(), &settings).unwrap().digest;
        assert_ne!(a, b);
        let offline = EnvSettings {
            pip_offline: true,
            ..EnvSettings::default()
        };
        assert_ne!(b, read_inputs(dir.path(), &offline).unwrap().digest);

        std::fs::write(dir.path().join("requirements.txt"), "-e ./src\n").unwrap();
        let err = read_inputs(dir.path(), &settings).unwrap_err().to_string();
        assert!(err.contains("editable"), "{err}");
        std::fs::write(dir.path().join("requirements.txt"), "-r missing.txt\n").unwrap();
        let err = read_inputs(dir.path(), &settings).unwrap_err().to_string();
        assert!(err.contains("missing.txt"), "{err}");
    }

    #[test]
    fn requirement_files_are_read_only_inside_the_pack() {
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("secret.txt"), "secret==1\n").unwrap();
        let dir = tempfile::tempdir().unwrap();
        let settings = EnvSettings::default();
        let requirements = dir.path().join("requirements.txt");

        for line in [
            format!("-r {}", outside.path().join("secret.txt").display()),
            "-r ../secret.txt".to_string(),
        ] {
            std::fs::write(&requirements, format!("{line}\n")).unwrap();
            let err = read_inputs(dir.path(), &settings).unwrap_err().to_string();
            assert!(err.contains("outside the pack"), "{err}");
        }

        std::os::unix::fs::symlink(
            outside.path().join("secret.txt"),
            dir.path().join("inc.txt"),
        )
        .unwrap();
        std::fs::write(&requirements, "-r inc.txt\n").unwrap();
        let err = read_inputs(dir.path(), &settings).unwrap_err().to_string();
        assert!(
            err.contains("inc.txt") && err.contains("symbolic link"),
            "{err}"
        );

        std::fs::remove_file(&requirements).unwrap();
        std::os::unix::fs::symlink("/dev/zero", &requirements).unwrap();
        let err = read_inputs(dir.path(), &settings).unwrap_err().to_string();
        assert!(
            err.contains("requirements.txt") && err.contains("symbolic link"),
            "{err}"
        );

        std::fs::remove_file(&requirements).unwrap();
        std::fs::write(&requirements, "x".repeat(200)).unwrap();
        let small = EnvSettings {
            read_limits: crate::packfs::PackReadLimits {
                other_bytes: 100,
                ..Default::default()
            },
            ..EnvSettings::default()
        };
        let err = read_inputs(dir.path(), &small).unwrap_err().to_string();
        assert!(err.contains("pack_files.max_other_bytes"), "{err}");
    }
}
