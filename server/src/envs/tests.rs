//! End-to-end tests with the real tools (python3 -m venv, pip, node, npm), hermetic:
//! requirements come from a directory of wheels made at test time (`--no-index`),
//! npm dependencies are local `file:` packages, and the index used by the timeout
//! test is a local socket that never answers.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use super::*;
use crate::progress::ProgressEvent;

/// Writes a minimal wheel (shared with the integration tests).
const WHEEL_SCRIPT: &str = include_str!("../../testdata/make_wheel.py");

fn make_wheel(dir: &Path, name: &str, version: &str, value: &str) {
    std::fs::create_dir_all(dir).unwrap();
    let status = Command::new("python3")
        .args(["-c", WHEEL_SCRIPT])
        .arg(dir)
        .args([name, version, value])
        .status()
        .unwrap();
    assert!(status.success());
}

struct Fixture {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    pack: PathBuf,
    envs: PathBuf,
    wheels: PathBuf,
    /// Shared by the fixture's builds, as the server's are.
    locks: PackLocks,
}

impl Fixture {
    fn new(pack_ref: &str, yaml_extra: &str) -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().to_path_buf();
        let pack = root.join("staging").join(pack_ref);
        std::fs::create_dir_all(&pack).unwrap();
        std::fs::write(
            pack.join("pack.yaml"),
            format!("ref: {pack_ref}\nversion: 1.0.0\n{yaml_extra}"),
        )
        .unwrap();
        let wheels = root.join("wheels");
        make_wheel(&wheels, "tinypkg", "1.0", "42");
        Self {
            envs: root.join("packs").join(".envs"),
            _tmp: tmp,
            root,
            pack,
            wheels,
            locks: PackLocks::default(),
        }
    }

    fn write(&self, rel: &str, text: &str) {
        let path = self.pack.join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }

    fn manifest(&self) -> Manifest {
        Manifest::load(&self.pack, None, &Default::default()).unwrap()
    }

    fn settings(&self) -> EnvSettings {
        EnvSettings {
            pip_offline: true,
            pip_find_links: vec![self.wheels.display().to_string()],
            npm_offline: true,
            ..EnvSettings::default()
        }
    }

    fn options(&self) -> BuildOptions {
        BuildOptions {
            timeout: Duration::from_secs(300),
            ..BuildOptions::new(&self.envs)
        }
    }

    async fn build(&self, options: &BuildOptions) -> PackEnvs {
        build_pack_envs(
            &self.pack,
            &self.manifest(),
            &self.settings(),
            options,
            &self.locks,
            &Reporter::noop(),
        )
        .await
    }

    fn link(&self, pack_ref: &str, kind: &str) -> PathBuf {
        self.envs.join(pack_ref).join(kind)
    }

    fn builds(&self, pack_ref: &str, kind: &str) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(self.envs.join(pack_ref))
            .map(|d| {
                d.flatten()
                    .filter_map(|e| e.file_name().into_string().ok())
                    .filter(|n| n.starts_with(&format!("{kind}-")))
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        names
    }
}

fn drain(rx: &mut tokio::sync::mpsc::UnboundedReceiver<ProgressEvent>) -> Vec<ProgressEvent> {
    let mut events = Vec::new();
    while let Ok(e) = rx.try_recv() {
        events.push(e);
    }
    events
}

/// Runs the environment's interpreter from an unrelated directory.
fn venv_python(venv: &Path, code: &str) -> std::process::Output {
    Command::new(venv.join("bin").join("python"))
        .args(["-c", code])
        .current_dir(std::env::temp_dir())
        .env_clear()
        .output()
        .unwrap()
}

fn import_value(venv: &Path) -> String {
    let out = venv_python(venv, "import tinypkg; print(tinypkg.VALUE)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn node_require(node_modules: &Path, module: &str) -> String {
    let out = Command::new("node")
        .args(["-e", &format!("console.log(require('{module}').value)")])
        .current_dir(std::env::temp_dir())
        .env("NODE_PATH", node_modules)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// PIDs of processes whose command line mentions `needle`.
fn processes_mentioning(needle: &str) -> Vec<u32> {
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if pid == std::process::id() {
            continue;
        }
        if let Ok(cmdline) = std::fs::read(entry.path().join("cmdline"))
            && String::from_utf8_lossy(&cmdline).contains(needle)
        {
            pids.push(pid);
        }
    }
    pids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_build_reuse_rebuild_failure_and_move() {
    let fx = Fixture::new("pyenvpack", "python: \">=3.8\"\n");
    fx.write("requirements.txt", "tinypkg==1.0\n");

    // Build: pip output streams as progress.
    let (reporter, mut rx) = Reporter::channel("pyenvpack");
    let envs = build_pack_envs(
        &fx.pack,
        &fx.manifest(),
        &fx.settings(),
        &fx.options(),
        &fx.locks,
        &reporter,
    )
    .await;
    assert!(envs.failures.is_empty(), "{:?}", envs.failures);
    assert!(envs.nodejs.is_none());
    let py = envs.python.unwrap();
    assert_eq!(py.virtualenv_path, fx.link("pyenvpack", "python"));
    assert!(py.requirements_installed && !py.reused);
    assert_eq!(py.package_count, 1);
    assert!(py.python_version.starts_with("Python 3."), "{py:?}");
    assert_eq!(import_value(&py.virtualenv_path), "42");
    let events = drain(&mut rx);
    assert!(
        events.iter().any(|e| e.stage == Stage::Build
            && e.level == crate::progress::Level::Info
            && e.message.starts_with("pip: ")
            && e.message.contains("tinypkg")),
        "{:?}",
        events.iter().map(|e| &e.message).collect::<Vec<_>>()
    );
    let first = fx.builds("pyenvpack", "python");
    assert_eq!(first.len(), 1);
    assert!(first[0].starts_with("python-"));

    // Reuse: nothing runs.
    let started = Instant::now();
    let envs = fx.build(&fx.options()).await;
    let reuse_time = started.elapsed();
    println!("python reuse took {reuse_time:?}");
    let again = envs.python.unwrap();
    assert!(again.reused, "{again:?}");
    assert_eq!(again.package_count, 1);
    assert_eq!(again.python_version, py.python_version);
    assert!(reuse_time < Duration::from_millis(50), "{reuse_time:?}");

    // force_rebuild: a new build replaces the old one, which is deleted.
    let forced = BuildOptions {
        force_rebuild: true,
        ..fx.options()
    };
    let envs = fx.build(&forced).await;
    assert!(envs.failures.is_empty(), "{:?}", envs.failures);
    assert!(!envs.python.unwrap().reused);
    let second = fx.builds("pyenvpack", "python");
    assert_eq!(second.len(), 1);
    assert_ne!(second, first);
    assert_eq!(
        fx.link("pyenvpack", "python").read_link().unwrap(),
        PathBuf::from(&second[0])
    );
    assert_eq!(import_value(&fx.link("pyenvpack", "python")), "42");

    // A failing rebuild leaves the previous environment in place and working.
    fx.write("requirements.txt", "tinypkg==1.0\nnosuchpkg==9.9\n");
    let envs = fx.build(&fx.options()).await;
    assert!(envs.python.is_none());
    assert_eq!(envs.failures.len(), 1);
    let failure = &envs.failures[0];
    assert_eq!(failure.runtime, "python");
    let error = failure.error.to_string();
    assert!(
        error.starts_with("pip install failed (exit code 1): ERROR:"),
        "{error}"
    );
    assert!(error.contains("nosuchpkg==9.9"), "{error}");
    assert!(error.lines().count() <= 23, "{error}");
    assert_eq!(fx.builds("pyenvpack", "python"), second);
    assert_eq!(import_value(&fx.link("pyenvpack", "python")), "42");

    // Changed inputs (a new wheel version) rebuild.
    make_wheel(&fx.wheels, "tinypkg", "2.0", "43");
    fx.write("requirements.txt", "tinypkg==2.0\n");
    let envs = fx.build(&fx.options()).await;
    assert!(envs.failures.is_empty(), "{:?}", envs.failures);
    assert!(!envs.python.unwrap().reused);
    assert_eq!(import_value(&fx.link("pyenvpack", "python")), "43");

    // The environment survives moving the pack (RegisterBatch copies it away)...
    let moved = fx.root.join("packs").join("pyenvpack");
    std::fs::rename(&fx.pack, &moved).unwrap();
    assert_eq!(import_value(&fx.link("pyenvpack", "python")), "43");
    // ...and the moved pack, with the same inputs, reuses it.
    let envs = build_pack_envs(
        &moved,
        &Manifest::load(&moved, None, &Default::default()).unwrap(),
        &fx.settings(),
        &fx.options(),
        &fx.locks,
        &Reporter::noop(),
    )
    .await;
    assert!(envs.python.unwrap().reused);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_build_with_file_dependency_lockfile_and_move() {
    let fx = Fixture::new("nodepack", "");
    fx.write(
        "package.json",
        r#"{"name": "nodepack", "version": "1.0.0", "private": true,
            "dependencies": {"localdep": "file:./lib/localdep"}}"#,
    );
    fx.write(
        "lib/localdep/package.json",
        r#"{"name": "localdep", "version": "1.0.0", "main": "index.js"}"#,
    );
    fx.write(
        "lib/localdep/index.js",
        "module.exports = { value: 'v1' };\n",
    );

    let envs = fx.build(&fx.options()).await;
    assert!(envs.failures.is_empty(), "{:?}", envs.failures);
    assert!(envs.python.is_none());
    let js = envs.nodejs.unwrap();
    assert_eq!(
        js.node_modules_path,
        fx.link("nodepack", "node").join("node_modules")
    );
    assert!(js.dependencies_installed && !js.reused);
    assert_eq!(js.package_count, 1);
    assert!(js.nodejs_version.starts_with('v'), "{js:?}");
    // The file: dependency was copied, not linked.
    let dep = js.node_modules_path.join("localdep");
    assert!(!dep.symlink_metadata().unwrap().is_symlink());
    assert_eq!(node_require(&js.node_modules_path, "localdep"), "v1");
    assert!(
        !fx.pack.join("node_modules").exists(),
        "the pack stays clean"
    );

    // Reuse.
    let started = Instant::now();
    let envs = fx.build(&fx.options()).await;
    let reuse_time = started.elapsed();
    println!("node reuse took {reuse_time:?}");
    assert!(envs.nodejs.unwrap().reused);
    assert!(reuse_time < Duration::from_millis(50), "{reuse_time:?}");

    // A change inside the local dependency is an input change.
    fx.write(
        "lib/localdep/index.js",
        "module.exports = { value: 'v2' };\n",
    );
    // With a lockfile, `npm ci` is used; its `link: true` entries still end up copied.
    let lock = Command::new("npm")
        .args([
            "install",
            "--package-lock-only",
            "--no-audit",
            "--no-fund",
            "--offline",
        ])
        .current_dir(&fx.pack)
        .env("HOME", fx.root.join("npmhome"))
        .output()
        .unwrap();
    assert!(
        lock.status.success(),
        "{}",
        String::from_utf8_lossy(&lock.stderr)
    );
    let (reporter, mut rx) = Reporter::channel("nodepack");
    let envs = build_pack_envs(
        &fx.pack,
        &fx.manifest(),
        &fx.settings(),
        &fx.options(),
        &fx.locks,
        &reporter,
    )
    .await;
    assert!(envs.failures.is_empty(), "{:?}", envs.failures);
    assert!(!envs.nodejs.unwrap().reused);
    let events = drain(&mut rx);
    assert!(
        events.iter().any(|e| e.message.contains(" ci ")),
        "{:?}",
        events.iter().map(|e| &e.message).collect::<Vec<_>>()
    );
    assert_eq!(fx.builds("nodepack", "node").len(), 1);

    let moved = fx.root.join("packs").join("nodepack");
    std::fs::rename(&fx.pack, &moved).unwrap();
    let node_modules = fx.link("nodepack", "node").join("node_modules");
    assert_eq!(node_require(&node_modules, "localdep"), "v2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeout_kills_the_tree_and_keeps_nothing() {
    let fx = Fixture::new("slowpack", "");
    fx.write("requirements.txt", "tinypkg==1.0\n");
    // An index that accepts connections and never answers.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    let settings = EnvSettings {
        pip_index_url: Some(format!("http://127.0.0.1:{port}/simple")),
        pip_extra_args: vec!["--timeout".into(), "1000".into()],
        ..EnvSettings::default()
    };
    let timeout = Duration::from_secs(20);
    let options = BuildOptions {
        timeout,
        ..fx.options()
    };
    let started = Instant::now();
    let envs = build_pack_envs(
        &fx.pack,
        &fx.manifest(),
        &settings,
        &options,
        &fx.locks,
        &Reporter::noop(),
    )
    .await;
    let took = started.elapsed();
    println!("timed-out build returned after {took:?}");
    server.abort();
    assert!(envs.python.is_none());
    assert_eq!(envs.failures.len(), 1, "{:?}", envs.failures);
    assert_eq!(envs.failures[0].runtime, "python");
    assert!(
        envs.failures[0].error.to_string().contains("timed out"),
        "{}",
        envs.failures[0].error
    );
    assert!(
        took >= timeout && took < timeout + Duration::from_secs(8),
        "{took:?}"
    );
    let envs_root = fx.envs.display().to_string();
    assert!(
        processes_mentioning(&envs_root).is_empty(),
        "processes left behind"
    );
    assert!(fx.builds("slowpack", "python").is_empty());
    assert!(!fx.link("slowpack", "python").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn detect_only_builds_nothing() {
    let fx = Fixture::new("detectpack", "python: \"3\"\n");
    fx.write("requirements.txt", "tinypkg==1.0\n");
    fx.write(
        "package.json",
        r#"{"name": "detectpack", "version": "1.0.0"}"#,
    );
    let options = BuildOptions {
        detect_only: true,
        ..fx.options()
    };
    let envs = fx.build(&options).await;
    assert!(envs.failures.is_empty(), "{:?}", envs.failures);
    let py = envs.python.unwrap();
    assert!(!py.reused && !py.requirements_installed && py.package_count == 0);
    assert!(py.python_version.starts_with("Python 3."), "{py:?}");
    let js = envs.nodejs.unwrap();
    assert!(!js.reused && !js.dependencies_installed);
    assert!(js.nodejs_version.starts_with('v'));
    assert!(
        !fx.envs.exists(),
        "detect_only created {}",
        fx.envs.display()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unavailable_versions_say_what_was_found() {
    let fx = Fixture::new("versionpack", "");
    fx.write("requirements.txt", "tinypkg==1.0\n");
    fx.write(
        "package.json",
        r#"{"name": "versionpack", "version": "1.0.0"}"#,
    );
    let options = BuildOptions {
        python_version: Some("3.99".into()),
        nodejs_version: Some("99".into()),
        ..fx.options()
    };
    let envs = fx.build(&options).await;
    assert!(envs.python.is_none() && envs.nodejs.is_none());
    let py = envs
        .failures
        .iter()
        .find(|f| f.runtime == "python")
        .unwrap();
    let py = py.error.to_string();
    println!("{py}");
    assert!(py.contains("python_version `3.99`"), "{py}");
    assert!(py.contains("found: python3"), "{py}");
    let js = envs
        .failures
        .iter()
        .find(|f| f.runtime == "nodejs")
        .unwrap();
    let js = js.error.to_string();
    assert!(js.contains("found node v"), "{js}");
    assert!(fx.builds("versionpack", "python").is_empty());
    assert!(fx.builds("versionpack", "node").is_empty());

    // Same answers in detect-only mode.
    let envs = fx
        .build(&BuildOptions {
            detect_only: true,
            ..options
        })
        .await;
    assert_eq!(envs.failures.len(), 2, "{:?}", envs.failures);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skip_flags_and_packs_without_runtimes() {
    let fx = Fixture::new("skippack", "");
    fx.write("requirements.txt", "tinypkg==1.0\n");
    fx.write(
        "package.json",
        r#"{"name": "skippack", "version": "1.0.0"}"#,
    );

    let both = BuildOptions {
        skip_python: true,
        skip_nodejs: true,
        ..fx.options()
    };
    let envs = fx.build(&both).await;
    assert!(envs.python.is_none() && envs.nodejs.is_none() && envs.failures.is_empty());
    assert!(!fx.envs.exists());

    let no_python = BuildOptions {
        skip_python: true,
        ..fx.options()
    };
    let envs = fx.build(&no_python).await;
    assert!(envs.failures.is_empty(), "{:?}", envs.failures);
    assert!(envs.python.is_none());
    let js = envs.nodejs.unwrap();
    assert!(js.dependencies_installed);
    assert_eq!(js.package_count, 0);
    assert!(!fx.link("skippack", "python").exists());

    // A pack with neither runtime gets nothing.
    let plain = Fixture::new("plainpack", "");
    let envs = plain.build(&plain.options()).await;
    assert!(envs.python.is_none() && envs.nodejs.is_none() && envs.failures.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_builds_of_one_ref_are_serialised() {
    let fx = Fixture::new("twicepack", "nodejs: \">=12\"\n");
    fx.write(
        "package.json",
        r#"{"name": "twicepack", "version": "1.0.0", "dependencies": {"d": "file:d"}}"#,
    );
    fx.write("d/package.json", r#"{"name": "d", "version": "1.0.0"}"#);
    fx.write("d/index.js", "module.exports = { value: 1 };\n");
    let options = fx.options();
    let (a, b) = tokio::join!(fx.build(&options), fx.build(&options));
    for envs in [&a, &b] {
        assert!(envs.failures.is_empty(), "{:?}", envs.failures);
    }
    let reused = [&a, &b]
        .iter()
        .filter(|e| e.nodejs.as_ref().unwrap().reused)
        .count();
    assert_eq!(reused, 1, "one built, the other waited and reused");
    assert_eq!(fx.builds("twicepack", "node").len(), 1);
    let index = fx.link("twicepack", "node").join("node_modules/d/index.js");
    assert!(index.is_file());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_requirement_alone_gets_an_empty_virtualenv() {
    let fx = Fixture::new("barepack", "python_versions: [\"3\"]\n");
    let envs = fx.build(&fx.options()).await;
    assert!(envs.failures.is_empty(), "{:?}", envs.failures);
    let py = envs.python.unwrap();
    assert!(!py.requirements_installed && !py.reused);
    assert_eq!(py.package_count, 0);
    let out = venv_python(&py.virtualenv_path, "import sys; print(sys.prefix)");
    assert!(out.status.success());
    let prefix = String::from_utf8_lossy(&out.stdout).trim().to_string();
    // The prefix is the stable link, not the versioned directory.
    assert!(prefix.ends_with("/barepack/python"), "{prefix}");
}

/// `<root>/<ref>` with builds `python-…-old` and `python-…-new`, the link on `current`.
fn two_builds(root: &Path, current: &str) -> (PathBuf, PathBuf) {
    let dir = root.join("demo");
    let (old, new) = (
        dir.join("python-00000000000000aa-old"),
        dir.join("python-00000000000000bb-new"),
    );
    for build in [&old, &new] {
        std::fs::create_dir_all(build).unwrap();
    }
    std::os::unix::fs::symlink(current, dir.join("python")).unwrap();
    (old, new)
}

fn links(python: Option<&str>) -> EnvLinks {
    EnvLinks {
        python: python.map(PathBuf::from),
        node: None,
    }
}

/// An interrupted switch settled both ways, twice each (a crash during the
/// settlement is settled again by the next start).
#[tokio::test]
async fn an_interrupted_switch_is_restored_or_kept_idempotently() {
    for committed in [false, true] {
        let root = tempfile::tempdir().unwrap();
        let (old, new) = two_builds(root.path(), "python-00000000000000bb-new");
        let previous = links(Some("python-00000000000000aa-old"));
        let switched = links(Some("python-00000000000000bb-new"));
        for _ in 0..2 {
            settle_switch(
                &PackLocks::default(),
                root.path(),
                "demo",
                &previous,
                Some(&switched),
                committed,
            )
            .await
            .unwrap();
        }
        let now = std::fs::read_link(root.path().join("demo/python")).unwrap();
        let (kept, gone) = if committed {
            (&new, &old)
        } else {
            (&old, &new)
        };
        assert_eq!(now, kept.file_name().unwrap(), "committed {committed}");
        assert!(kept.is_dir() && !gone.exists(), "committed {committed}");
    }
}

/// A pack that had no environment before: undone, the link is removed with the build.
#[tokio::test]
async fn an_interrupted_first_switch_is_undone_to_no_environment() {
    let root = tempfile::tempdir().unwrap();
    let (old, new) = two_builds(root.path(), "python-00000000000000bb-new");
    std::fs::remove_dir_all(&old).unwrap();
    settle_switch(
        &PackLocks::default(),
        root.path(),
        "demo",
        &links(None),
        None,
        false,
    )
    .await
    .unwrap();
    assert!(std::fs::symlink_metadata(root.path().join("demo/python")).is_err());
    assert!(!new.exists());
}

/// Links someone switched again after the interrupted install are not taken back.
#[tokio::test]
async fn links_switched_again_since_are_left_alone() {
    let root = tempfile::tempdir().unwrap();
    let (old, new) = two_builds(root.path(), "python-00000000000000bb-new");
    let third = root.path().join("demo/python-00000000000000cc-third");
    std::fs::create_dir_all(&third).unwrap();
    std::fs::remove_file(root.path().join("demo/python")).unwrap();
    std::os::unix::fs::symlink(third.file_name().unwrap(), root.path().join("demo/python"))
        .unwrap();
    settle_switch(
        &PackLocks::default(),
        root.path(),
        "demo",
        &links(Some("python-00000000000000aa-old")),
        Some(&links(Some("python-00000000000000bb-new"))),
        false,
    )
    .await
    .unwrap();
    let now = std::fs::read_link(root.path().join("demo/python")).unwrap();
    assert_eq!(now, third.file_name().unwrap());
    assert!(old.exists() && new.exists() && third.exists());
}

/// A recorded previous build that is gone is an error, not a dangling link.
#[tokio::test]
async fn a_vanished_previous_build_is_reported_and_the_link_kept() {
    let root = tempfile::tempdir().unwrap();
    let (old, _new) = two_builds(root.path(), "python-00000000000000bb-new");
    std::fs::remove_dir_all(&old).unwrap();
    let error = settle_switch(
        &PackLocks::default(),
        root.path(),
        "demo",
        &links(Some("python-00000000000000aa-old")),
        None,
        false,
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(error.contains("is gone"), "{error}");
    let now = std::fs::read_link(root.path().join("demo/python")).unwrap();
    assert_eq!(now, Path::new("python-00000000000000bb-new"));
}
