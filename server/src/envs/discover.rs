//! Which Python interpreters and which Node.js this host has.
//!
//! Candidates are found by scanning `PATH` (no process), deduplicated by resolved
//! path, and each distinct file is asked once per process what it is (the answer is
//! cached, so later requests start no process for discovery). Python is asked with a
//! short `-c` script rather than `--version`: one spawn gives the version, the real
//! executable behind a wrapper (pyenv shims, `/usr/bin/python3` symlinks) and whether
//! the `venv`/`ensurepip` modules exist (Debian splits them into `python3.X-venv`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::LazyLock;
use std::time::Duration;

use semver::Version;

use super::error::EnvError;
use super::util::{is_executable_file, path_dirs};
use crate::manifest::{RuntimeRequirement, parse_lenient_version};
use crate::process::{self, CommandSpec};

const PROBE_TIMEOUT: Duration = Duration::from_secs(15);

const PYTHON_PROBE: &str = "import sys, importlib.util as u\n\
print(sys.version.split()[0])\n\
print(sys.executable)\n\
print(int(all(u.find_spec(m) is not None for m in ('venv', 'ensurepip'))))\n";

/// A Python interpreter found on `PATH`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interpreter {
    /// The name it was found under (`python3.11`).
    pub command: String,
    /// Canonical path of the real interpreter (`sys.executable`, resolved).
    pub executable: PathBuf,
    pub version: Version,
    /// `3.11.7`, as the interpreter prints it.
    pub version_text: String,
    /// `venv` and `ensurepip` are importable.
    pub can_venv: bool,
}

impl Interpreter {
    fn describe(&self) -> String {
        format!(
            "{} {} ({}){}",
            self.command,
            self.version_text,
            self.executable.display(),
            if self.can_venv {
                ""
            } else {
                " without the venv/ensurepip modules"
            }
        )
    }
}

type ProbeCache<T> = LazyLock<tokio::sync::Mutex<HashMap<PathBuf, Option<T>>>>;
static PYTHON_PROBES: ProbeCache<Interpreter> = LazyLock::new(Default::default);
static NODE_PROBES: ProbeCache<NodeRuntime> = LazyLock::new(Default::default);

fn is_python_name(name: &str) -> bool {
    match name.strip_prefix("python3") {
        Some("") => true,
        Some(rest) => rest
            .strip_prefix('.')
            .is_some_and(|minor| !minor.is_empty() && minor.bytes().all(|b| b.is_ascii_digit())),
        None => false,
    }
}

/// `python3` and `python3.N` on `PATH`, in `PATH` order, one per resolved file.
fn python_candidates() -> Vec<(String, PathBuf)> {
    let mut seen = std::collections::HashSet::new();
    let mut out = Vec::new();
    for dir in path_dirs() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        let mut names: Vec<String> = entries
            .flatten()
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| is_python_name(n))
            .collect();
        names.sort();
        for name in names {
            let path = dir.join(&name);
            if !is_executable_file(&path) {
                continue;
            }
            let resolved = std::fs::canonicalize(&path).unwrap_or(path);
            if seen.insert(resolved.clone()) {
                out.push((name, resolved));
            }
        }
    }
    out
}

async fn probe_python(command: String, path: PathBuf) -> Option<Interpreter> {
    let spec = CommandSpec::new(&path, std::env::temp_dir(), PROBE_TIMEOUT)
        .arg("-I")
        .arg("-c")
        .arg(PYTHON_PROBE);
    let finished = process::run(&spec, |_, _| {}, std::future::pending())
        .await
        .ok()?;
    if !finished.success() {
        return None;
    }
    let mut lines = finished.stdout_tail.lines();
    let version_text = lines.next()?.trim().to_string();
    let executable = PathBuf::from(lines.next()?.trim());
    let can_venv = lines.next()?.trim() == "1";
    let version = parse_lenient_version(&version_text)?;
    if executable.as_os_str().is_empty() {
        return None;
    }
    let executable = std::fs::canonicalize(&executable).unwrap_or(executable);
    Some(Interpreter {
        command,
        executable,
        version,
        version_text,
        can_venv,
    })
}

/// Every working Python 3 interpreter on `PATH`, deduplicated by real executable.
pub async fn python_interpreters() -> Vec<Interpreter> {
    let candidates = python_candidates();
    let mut cache = PYTHON_PROBES.lock().await;
    let mut tasks = tokio::task::JoinSet::new();
    for (name, path) in &candidates {
        if !cache.contains_key(path) {
            let (name, path) = (name.clone(), path.clone());
            tasks.spawn(async move { (path.clone(), probe_python(name, path).await) });
        }
    }
    while let Some(joined) = tasks.join_next().await {
        if let Ok((path, probe)) = joined {
            cache.insert(path, probe);
        }
    }
    let mut seen = std::collections::HashSet::new();
    candidates
        .iter()
        .filter_map(|(_, path)| cache.get(path).cloned().flatten())
        .filter(|i| seen.insert(i.executable.clone()))
        .collect()
}

/// The interpreter for a build: it matches `request` (`python_version` of the
/// request: its components must equal the version's, `3.11` ⇒ any 3.11.x) when set,
/// and the pack's requirement when there is one; the highest such version wins, ties
/// going to the first on `PATH`. Interpreters without `venv` are never chosen.
pub fn select_python<'a>(
    found: &'a [Interpreter],
    request: Option<&[u64]>,
    request_text: Option<&str>,
    requirement: Option<&RuntimeRequirement>,
) -> Result<&'a Interpreter, EnvError> {
    let fits = |i: &Interpreter| {
        request.is_none_or(|r| super::util::request_matches(r, &i.version))
            && requirement.is_none_or(|r| r.matches(&i.version))
    };
    let mut best: Option<&Interpreter> = None;
    for i in found.iter().filter(|i| i.can_venv && fits(i)) {
        if best.is_none_or(|b| i.version > b.version) {
            best = Some(i);
        }
    }
    if let Some(best) = best {
        return Ok(best);
    }
    let mut wanted = Vec::new();
    if let Some(r) = request_text {
        wanted.push(format!("python_version `{r}`"));
    }
    if let Some(r) = requirement {
        wanted.push(format!("the pack's requirement `{r}`"));
    }
    let wanted = if wanted.is_empty() {
        "any Python 3".to_string()
    } else {
        wanted.join(" and ")
    };
    if found.is_empty() {
        return Err(EnvError::NoPython { wanted });
    }
    Err(EnvError::NoMatchingPython {
        wanted,
        found: found.iter().map(Interpreter::describe).collect(),
    })
}

/// `node` on `PATH`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeRuntime {
    /// Canonical path of the `node` binary.
    pub executable: PathBuf,
    pub version: Version,
    /// `v20.20.2`.
    pub version_text: String,
}

/// The first `node` on `PATH`, resolved (no process started).
pub fn node_on_path() -> Option<PathBuf> {
    let path = super::util::find_on_path("node")?;
    Some(std::fs::canonicalize(&path).unwrap_or(path))
}

/// `node` on `PATH` and its version (`node --version`, once per binary).
pub async fn node_runtime() -> Option<NodeRuntime> {
    let path = node_on_path()?;
    let mut cache = NODE_PROBES.lock().await;
    if let Some(probe) = cache.get(&path) {
        return probe.clone();
    }
    let probe = probe_node(&path).await;
    cache.insert(path, probe.clone());
    probe
}

async fn probe_node(path: &Path) -> Option<NodeRuntime> {
    let spec = CommandSpec::new(path, std::env::temp_dir(), PROBE_TIMEOUT).arg("--version");
    let finished = process::run(&spec, |_, _| {}, std::future::pending())
        .await
        .ok()?;
    if !finished.success() {
        return None;
    }
    let version_text = finished.stdout_tail.trim().to_string();
    Some(NodeRuntime {
        executable: path.to_path_buf(),
        version: parse_lenient_version(&version_text)?,
        version_text,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn interp(command: &str, v: &str, can_venv: bool) -> Interpreter {
        Interpreter {
            command: command.into(),
            executable: PathBuf::from(format!("/opt/{command}-{v}")),
            version: parse_lenient_version(v).unwrap(),
            version_text: v.into(),
            can_venv,
        }
    }

    #[test]
    fn names() {
        assert!(is_python_name("python3"));
        assert!(is_python_name("python3.11"));
        assert!(!is_python_name("python3.11-config"));
        assert!(!is_python_name("python3-config"));
        assert!(!is_python_name("python3."));
        assert!(!is_python_name("python"));
    }

    #[test]
    fn selection() {
        let found = vec![
            interp("python3", "3.11.7", true),
            interp("python3.12", "3.12.1", true),
            interp("python3.13", "3.13.0", false),
        ];
        assert_eq!(
            select_python(&found, None, None, None)
                .unwrap()
                .version_text,
            "3.12.1"
        );
        let req = RuntimeRequirement::parse("<3.12").unwrap();
        assert_eq!(
            select_python(&found, None, None, Some(&req))
                .unwrap()
                .version_text,
            "3.11.7"
        );
        assert_eq!(
            select_python(&found, Some(&[3, 11]), Some("3.11"), None)
                .unwrap()
                .version_text,
            "3.11.7"
        );
        let err = select_python(&found, Some(&[3, 13]), Some("3.13"), None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("python_version `3.13`"), "{err}");
        assert!(err.contains("without the venv"), "{err}");
        assert!(err.contains("3.11.7") && err.contains("3.12.1"), "{err}");
        let err = select_python(&[], None, None, None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("no working python3"), "{err}");
    }
}
