//! BuildEnvs over gRPC with the real tools, hermetic: requirements come from a local
//! directory of wheels (`--no-index --find-links`), Node dependencies are `file:` packages.

use std::{path::Path, process::Command};

use attune_packs_client::pb;

use crate::{
    common::{Backend, TestServer, path_str},
    support::packs::write_tree,
};

fn make_wheel(dir: &Path, name: &str, version: &str, value: &str) {
    std::fs::create_dir_all(dir).unwrap();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/testdata/make_wheel.py");
    let status = Command::new("python3")
        .arg(script)
        .arg(dir)
        .args([name, version, value])
        .status()
        .unwrap();
    assert!(status.success());
}

/// `<package>.VALUE` as the virtualenv's interpreter prints it.
pub(crate) fn import_value(venv: &str, package: &str) -> String {
    let out = Command::new(Path::new(venv).join("bin/python"))
        .args(["-c", &format!("import {package}; print({package}.VALUE)")])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

register_test!(environments_are_built_reused_and_survive_registration);
async fn environments_are_built_reused_and_survive_registration() {
    let wheels = tempfile::tempdir().unwrap();
    // pip runs as the sandbox user: the wheel directory must be readable to it.
    std::fs::set_permissions(
        wheels.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    make_wheel(wheels.path(), "tinypkg", "1.0", "42");
    let wheel_dir = path_str(wheels.path());
    let server = TestServer::start_with(Backend::Sqlite, |c| {
        c.build.pip_find_links = vec![wheel_dir.clone()];
        c.build.pip_offline = true;
    })
    .await;
    let root = server.root.path().canonicalize().unwrap();
    let base = root.join("base");
    let pack = root.join("src/pyp");
    write_tree(
        &pack,
        &[
            (
                "pack.yaml",
                "ref: pyp\nversion: 1.0.0\npython: \"3\"\ntesting:\n  runners:\n    unit:\n      type: unittest\n      entry_point: tests/test_tiny.py\n",
            ),
            ("requirements.txt", "tinypkg==1.0\n"),
            (
                "tests/test_tiny.py",
                "import unittest\nimport tinypkg\n\nclass T(unittest.TestCase):\n    def test_value(self):\n        self.assertEqual(tinypkg.VALUE, 42)\n",
            ),
        ],
    );
    let node_pack = root.join("src/nodep");
    write_tree(
        &node_pack,
        &[
            ("pack.yaml", "ref: nodep\nversion: 1.0.0\n"),
            (
                "package.json",
                r#"{"name": "nodep", "version": "1.0.0", "dependencies": {"dep": "file:./vendor/dep"}}"#,
            ),
            (
                "vendor/dep/package.json",
                r#"{"name": "dep", "version": "1.0.0", "main": "index.js"}"#,
            ),
            ("vendor/dep/index.js", "module.exports = 'from dep';\n"),
        ],
    );
    let request = |paths: &[&Path]| pb::BuildEnvsRequest {
        pack_paths: paths.iter().map(|p| path_str(p)).collect(),
        packs_base_dir: Some(path_str(&base)),
        ..Default::default()
    };
    let mut client = server.client().await;

    let r = client
        .build_envs(request(&[&pack, &node_pack]))
        .await
        .unwrap();
    assert!(
        r.failed_environments.is_empty(),
        "{:#?}",
        r.failed_environments
    );
    let summary = r.summary.unwrap();
    assert_eq!(
        (
            summary.total_packs,
            summary.success_count,
            summary.python_envs_built,
            summary.nodejs_envs_built
        ),
        (2, 2, 1, 1)
    );
    let py = r.built_environments[0]
        .environments
        .clone()
        .unwrap()
        .python
        .unwrap();
    assert!(!py.reused && py.requirements_installed);
    assert_eq!(py.package_count, 1);
    assert!(
        py.python_version.starts_with("Python 3."),
        "{}",
        py.python_version
    );
    assert_eq!(py.virtualenv_path, path_str(&base.join(".envs/pyp/python")));
    assert_eq!(import_value(&py.virtualenv_path, "tinypkg"), "42");
    let node = r.built_environments[1]
        .environments
        .clone()
        .unwrap()
        .nodejs
        .unwrap();
    assert!(node.dependencies_installed && node.package_count >= 1);
    let required = Command::new("node")
        .args(["-e", "console.log(require('dep'))"])
        .env("NODE_PATH", &node.node_modules_path)
        .current_dir(&root)
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&required.stdout).trim(), "from dep");

    // Nothing changed: reused, quickly.
    let r = client.build_envs(request(&[&pack])).await.unwrap();
    let py = r.built_environments[0]
        .environments
        .clone()
        .unwrap()
        .python
        .unwrap();
    assert!(py.reused);
    assert!(
        r.built_environments[0].duration_ms < 1000,
        "{}",
        r.built_environments[0].duration_ms
    );

    // A requirement that cannot be installed: reported, named; the previous env works.
    std::fs::write(
        pack.join("requirements.txt"),
        "tinypkg==1.0\nnosuchpkg==9.9\n",
    )
    .unwrap();
    let r = client.build_envs(request(&[&pack])).await.unwrap();
    assert_eq!(r.failed_environments.len(), 1, "{r:#?}");
    let failure = &r.failed_environments[0];
    assert_eq!(
        (failure.pack_ref.as_str(), failure.runtime.as_str()),
        ("pyp", "python")
    );
    assert!(failure.error.contains("nosuchpkg"), "{}", failure.error);
    assert_eq!(r.summary.unwrap().failure_count, 1);
    assert_eq!(import_value(&py.virtualenv_path, "tinypkg"), "42");
    std::fs::write(pack.join("requirements.txt"), "tinypkg==1.0\n").unwrap();

    // detect_only builds nothing; an interpreter that is not there is a failure naming
    // what was found.
    let mut detect = request(&[&pack]);
    detect.detect_only = Some(true);
    detect.python_version = Some("3.99".into());
    let r = client.build_envs(detect).await.unwrap();
    assert!(
        r.failed_environments[0].error.contains("found"),
        "{:#?}",
        r.failed_environments
    );

    // Register the pack under the same base: its unittest suite runs with the pack's
    // virtualenv (tinypkg is installed nowhere else) and the env still works afterwards.
    let registered = client
        .register_batch(pb::RegisterBatchRequest {
            pack_paths: vec![path_str(&pack)],
            packs_base_dir: Some(path_str(&base)),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        registered.registered_packs.len(),
        1,
        "{:#?}",
        registered.failed_packs
    );
    let tests = registered.registered_packs[0].test_result.clone().unwrap();
    assert_eq!((tests.status.as_str(), tests.passed), ("passed", 1));
    std::fs::remove_dir_all(&pack).unwrap();
    assert_eq!(import_value(&py.virtualenv_path, "tinypkg"), "42");
    let r = client
        .build_envs(request(&[&base.join("pyp")]))
        .await
        .unwrap();
    assert!(
        r.built_environments[0]
            .environments
            .clone()
            .unwrap()
            .python
            .unwrap()
            .reused,
        "{r:#?}"
    );
    server.stop().await;
}
