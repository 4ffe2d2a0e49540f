//! Pack code (a pack's tests, a requirement's setup.py) tries to reach the server's
//! secret, database, data dir, other packs and environment, and to write outside its
//! own directories. It must run as the sandbox user and fail at every attempt, the
//! secret must appear in no progress event and no result, and the pack's outcome must
//! be reported as usual.

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use attune_packs_client::{finish, pb};

use crate::{
    common::{Backend, TestServer, on_both_backends, path_str, write_pack},
    support::packs::write_tree,
};

/// The attempts both kinds of pack code make, by name, and what each tries.
fn attempts(data: &Path, other: &Path, tag: &str) -> Vec<(&'static str, String)> {
    let d = data.display();
    let o = other.display();
    vec![
        ("read-secret", format!("cat {d}/jwt-secret")),
        ("read-db", format!("cat {d}/attune-packs.db")),
        ("list-data-dir", format!("ls {d}")),
        ("read-other-pack", format!("cat {o}/secret.txt")),
        ("list-other-pack", format!("ls {o}")),
        ("write-other-pack", format!("touch {o}/planted")),
        ("write-data-dir", format!("touch {d}/planted")),
        ("write-tmp", format!("touch /tmp/attune-confinement-{tag}")),
        (
            "read-server-environ",
            format!("cat /proc/{}/environ", std::process::id()),
        ),
        ("list-root-home", "ls /root".to_string()),
    ]
}

/// A shell script that makes every attempt and prints `UID <uid>` and one
/// `PROBE <name> allowed|denied` line each, then what a thief would print (the secret
/// file, the environment): none of that may come back.
fn probe_script(attempts: &[(&str, String)], data: &Path) -> String {
    let mut script = String::from("#!/bin/sh\necho \"UID $(id -u)\"\n");
    for (name, command) in attempts {
        script.push_str(&format!(
            "if {command} >/dev/null 2>&1; then echo 'PROBE {name} allowed'; else echo 'PROBE {name} denied'; fi\n"
        ));
    }
    script.push_str(
        "if touch ./planted 2>/dev/null; then echo 'PROBE write-own-pack allowed'; else echo 'PROBE write-own-pack denied'; fi\n\
         if touch \"$HOME/ok\" && touch \"$TMPDIR/ok\"; then echo 'PROBE write-own-home allowed'; else echo 'PROBE write-own-home denied'; fi\n",
    );
    script.push_str(&format!("cat {}/jwt-secret 2>&1\nenv\n", data.display()));
    script
}

/// Denied by the user switch and the data dir's modes alone, Landlock or not.
const DENIED_BY_PERMISSIONS: &[&str] = &[
    "read-secret",
    "read-db",
    "list-data-dir",
    "write-other-pack",
    "write-data-dir",
    "read-server-environ",
    "list-root-home",
];

fn landlock_available() -> bool {
    let available =
        attune_packs_server::sandbox::current().is_some_and(|s| s.landlock_abi.is_some());
    if !available {
        eprintln!(
            "notice: this kernel has no Landlock: reads of other packs and writes to /tmp \
             are not asserted (the user switch is)"
        );
    }
    available
}

fn runner_uid() -> Option<u32> {
    let sandbox = attune_packs_server::sandbox::current().expect("installed by state::open");
    sandbox.run_as.as_ref().map(|u| u.uid)
}

/// `PROBE <name> allowed|denied` lines from the events, by name.
fn probes(lines: &[String]) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for line in lines {
        if let Some(rest) = line.split("PROBE ").nth(1) {
            let mut words = rest.split_whitespace();
            if let (Some(name), Some(verdict)) = (words.next(), words.next()) {
                out.insert(name.to_string(), verdict.to_string());
            }
        }
    }
    out
}

fn reported_uid(lines: &[String]) -> Option<u32> {
    lines
        .iter()
        .find_map(|l| l.split("UID ").nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|uid| uid.parse().ok())
}

fn assert_confined(verdicts: &BTreeMap<String, String>, names: &[(&str, String)], tag: &str) {
    let landlock = landlock_available();
    for (name, _) in names {
        let verdict = verdicts
            .get(*name)
            .unwrap_or_else(|| panic!("no verdict for {name}: {verdicts:?}"));
        if landlock || DENIED_BY_PERMISSIONS.contains(name) {
            assert_eq!(verdict, "denied", "{name}: {verdicts:?}");
        }
    }
    assert_eq!(
        verdicts.get("write-own-home").map(String::as_str),
        Some("allowed")
    );
    let planted = PathBuf::from(format!("/tmp/attune-confinement-{tag}"));
    assert!(!planted.exists() || !landlock);
    let _ = std::fs::remove_file(planted);
}

/// Asserts that the secret (and its scrubbed stand-in, which would mean it surfaced)
/// appears nowhere in `texts`.
fn assert_secret_absent(secret: &str, texts: &[String]) {
    assert!(secret.len() >= 32, "a generated secret");
    for text in texts {
        assert!(!text.contains(secret), "the secret leaked: {text}");
        assert!(
            !text.contains("[REDACTED]"),
            "the secret reached pack code's output: {text}"
        );
    }
}

async fn pack_tests_cannot_reach_secrets(backend: Backend) {
    // No configured secret: the server generates `<data_dir>/jwt-secret`.
    let server = TestServer::start_with(backend, |c| c.jwt_secret = None).await;
    let data = server.state.config.data_dir_absolute();
    let secret = std::fs::read_to_string(data.join("jwt-secret")).unwrap();
    let secret = secret.trim().to_string();
    let root = server.root.path().canonicalize().unwrap();
    let base = server.state.config.packs_base_dir();
    let tag = format!("{}-{backend:?}", std::process::id());
    let mut client = server.client().await;

    let other_src = write_pack(
        &root.join("src"),
        "other",
        &crate::common::simple_pack("other", "1.0.0", &[]),
    );
    std::fs::write(other_src.join("secret.txt"), "other pack's data\n").unwrap();
    let r = client
        .register_batch(pb::RegisterBatchRequest {
            pack_paths: vec![path_str(&other_src)],
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(r.failed_packs.is_empty(), "{:#?}", r.failed_packs);
    let other = base.join("other");
    assert!(other.join("secret.txt").is_file());

    let attempts = attempts(&data, &other, &tag);
    let mut script = probe_script(&attempts, &data);
    script.push_str("echo 'Total Tests: 1'\necho 'Passed: 1'\n");
    let spy = root.join("src/spy");
    write_tree(
        &spy,
        &[
            (
                "pack.yaml",
                "ref: spy\nversion: 1.0.0\ntesting:\n  runners:\n    probe:\n      type: script\n      entry_point: probe.sh\n"
                    .as_bytes(),
            ),
            ("probe.sh", script.as_bytes()),
        ],
    );

    let mut lines = Vec::new();
    let result = finish(
        client
            .register_batch_stream(pb::RegisterBatchRequest {
                pack_paths: vec![path_str(&spy)],
                ..Default::default()
            })
            .await
            .unwrap(),
        |p| lines.push(p.message.clone()),
    )
    .await
    .unwrap();

    // Reported as usual: registered, its one test passed.
    assert!(result.failed_packs.is_empty(), "{:#?}", result.failed_packs);
    let tests = result.registered_packs[0]
        .test_result
        .clone()
        .expect("tests ran");
    assert_eq!(
        (tests.status.as_str(), tests.total_tests, tests.passed),
        ("passed", 1, 1)
    );

    let uid = reported_uid(&lines).unwrap_or_else(|| panic!("no UID line: {lines:#?}"));
    // SAFETY: getuid cannot fail.
    if unsafe { libc::getuid() } == 0 {
        assert_ne!(uid, 0, "pack code ran as root");
        assert_eq!(Some(uid), runner_uid());
    }
    let verdicts = probes(&lines);
    assert_confined(&verdicts, &attempts, &tag);
    assert_eq!(
        verdicts.get("write-own-pack").map(String::as_str),
        Some("denied")
    );
    assert!(!base.join("spy/planted").exists());
    assert!(!other.join("planted").exists() && !data.join("planted").exists());
    // The environment pack code saw names none of the server's settings.
    assert!(
        !lines.iter().any(|l| l.contains("ATTUNE_PACKS_")
            || l.contains("DATABASE_URL")
            || l.contains("CARGO_")),
        "{lines:#?}"
    );

    let mut texts = lines.clone();
    texts.push(format!("{result:?}"));
    assert_secret_absent(&secret, &texts);

    // The data dir stays closed; its secret and database are the server's alone.
    let mode = |p: &Path| std::fs::metadata(p).unwrap().mode() & 0o777;
    assert_eq!(mode(&data), 0o711);
    assert_eq!(mode(&data.join("jwt-secret")), 0o600);
    if backend == Backend::Sqlite {
        assert_eq!(mode(&data.join("attune-packs.db")), 0o600);
    }
    server.stop().await;
}
on_both_backends!(pack_tests_cannot_reach_secrets);

register_test!(build_code_cannot_reach_secrets_and_builds_are_taken_back);
/// A requirement's setup.py runs as the sandbox user during BuildEnvs, under the same
/// confinement; a plain environment built by that user ends up owned by the server.
async fn build_code_cannot_reach_secrets_and_builds_are_taken_back() {
    let server = TestServer::start_with(Backend::Sqlite, |c| {
        c.jwt_secret = None;
        c.build.pip_offline = true;
        // setup.py runs with the virtualenv's own setuptools, no index needed.
        c.build.pip_extra_args = vec!["--no-build-isolation".into()];
    })
    .await;
    let data = server.state.config.data_dir_absolute();
    let secret = std::fs::read_to_string(data.join("jwt-secret")).unwrap();
    let secret = secret.trim().to_string();
    let root = server.root.path().canonicalize().unwrap();
    let base: PathBuf = root.join("base");
    let other = root.join("src/other");
    std::fs::create_dir_all(&other).unwrap();
    std::fs::write(other.join("secret.txt"), "other pack's data\n").unwrap();
    let tag = format!("{}-build", std::process::id());

    let attempts = attempts(&data, &other, &tag);
    let mut setup = String::from(
        "import os, subprocess, sys\nprint('UID', os.getuid(), flush=True)\n\
         def probe(name, command):\n    ok = subprocess.run(command, shell=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode == 0\n    print('PROBE', name, 'allowed' if ok else 'denied', flush=True)\n",
    );
    for (name, command) in &attempts {
        setup.push_str(&format!("probe({name:?}, {command:?})\n"));
    }
    setup.push_str(
        "probe('write-own-home', 'touch \"$HOME/ok\" && touch \"$TMPDIR/ok\"')\n\
         print(os.popen('env').read(), flush=True)\n\
         sys.exit('probes done')\n",
    );
    let hooked = root.join("src/hooked");
    write_tree(
        &hooked,
        &[
            (
                "pack.yaml",
                b"ref: hooked\nversion: 1.0.0\npython: \"3\"\n".as_slice(),
            ),
            ("requirements.txt", b"./hook\n".as_slice()),
            ("hook/setup.py", setup.as_bytes()),
        ],
    );
    let plain = root.join("src/plainpy");
    write_tree(
        &plain,
        &[(
            "pack.yaml",
            b"ref: plainpy\nversion: 1.0.0\npython: \"3\"\n".as_slice(),
        )],
    );

    let mut client = server.client().await;
    let mut lines = Vec::new();
    let result = finish(
        client
            .build_envs_stream(pb::BuildEnvsRequest {
                pack_paths: vec![path_str(&hooked), path_str(&plain)],
                packs_base_dir: Some(path_str(&base)),
                ..Default::default()
            })
            .await
            .unwrap(),
        |p| lines.push(p.message.clone()),
    )
    .await
    .unwrap();

    // The failing setup.py is an ordinary build failure of that pack.
    assert_eq!(
        result.failed_environments.len(),
        1,
        "{:#?}",
        result.failed_environments
    );
    let failure = format!("{:?}", result.failed_environments[0]);
    assert!(
        failure.contains("hooked") && failure.contains("pip install"),
        "{failure}"
    );

    let uid = reported_uid(&lines).unwrap_or_else(|| panic!("no UID line: {lines:#?}"));
    // SAFETY: getuid cannot fail.
    if unsafe { libc::getuid() } == 0 {
        assert_ne!(uid, 0, "build code ran as root");
        assert_eq!(Some(uid), runner_uid());
    }
    let verdicts = probes(&lines);
    assert_confined(&verdicts, &attempts, &tag);
    assert!(
        !lines
            .iter()
            .any(|l| l.contains("ATTUNE_PACKS_") || l.contains("CARGO_")),
        "{lines:#?}"
    );
    let mut texts = lines.clone();
    texts.push(format!("{result:?}"));
    assert_secret_absent(&secret, &texts);

    // The plain environment was built by the sandbox user and taken back.
    let venv = base.join(".envs/plainpy/python");
    assert!(venv.join("bin/python").exists(), "{:#?}", result);
    let server_uid = std::fs::metadata(&data).unwrap().uid();
    let mut stack = vec![std::fs::canonicalize(&venv).unwrap()];
    while let Some(path) = stack.pop() {
        let meta = std::fs::symlink_metadata(&path).unwrap();
        assert_eq!(meta.uid(), server_uid, "{} not taken back", path.display());
        if meta.is_dir() {
            stack.extend(std::fs::read_dir(&path).unwrap().map(|e| e.unwrap().path()));
        }
    }
    server.stop().await;
}

register_test!(npm_lifecycle_scripts_cannot_reach_secrets);
/// An npm lifecycle script (a dependency's `postinstall`) runs as the sandbox user,
/// confined like the rest; the build still succeeds and is taken back.
async fn npm_lifecycle_scripts_cannot_reach_secrets() {
    let server = TestServer::start_with(Backend::Sqlite, |c| {
        c.jwt_secret = None;
        c.build.npm_offline = true;
        // npm hides lifecycle output unless asked.
        c.build.npm_extra_args = vec!["--foreground-scripts".into()];
    })
    .await;
    let data = server.state.config.data_dir_absolute();
    let secret = std::fs::read_to_string(data.join("jwt-secret")).unwrap();
    let secret = secret.trim().to_string();
    let root = server.root.path().canonicalize().unwrap();
    let base = root.join("base");
    let other = root.join("src/other");
    std::fs::create_dir_all(&other).unwrap();
    std::fs::write(other.join("secret.txt"), "other pack's data\n").unwrap();
    let tag = format!("{}-npm", std::process::id());
    let attempts = attempts(&data, &other, &tag);
    let script = probe_script(&attempts, &data);

    let pack = root.join("src/nodespy");
    write_tree(
        &pack,
        &[
            ("pack.yaml", b"ref: nodespy\nversion: 1.0.0\n".as_slice()),
            (
                "package.json",
                br#"{"name": "nodespy", "version": "1.0.0", "dependencies": {"dep": "file:./vendor/dep"}}"#
                    .as_slice(),
            ),
            (
                "vendor/dep/package.json",
                br#"{"name": "dep", "version": "1.0.0", "scripts": {"postinstall": "sh probe.sh"}}"#
                    .as_slice(),
            ),
            ("vendor/dep/probe.sh", script.as_bytes()),
        ],
    );
    let mut client = server.client().await;
    let mut lines = Vec::new();
    let result = finish(
        client
            .build_envs_stream(pb::BuildEnvsRequest {
                pack_paths: vec![path_str(&pack)],
                packs_base_dir: Some(path_str(&base)),
                ..Default::default()
            })
            .await
            .unwrap(),
        |p| lines.push(p.message.clone()),
    )
    .await
    .unwrap();
    assert!(
        result.failed_environments.is_empty(),
        "{:#?}\n{lines:#?}",
        result.failed_environments
    );

    let uid = reported_uid(&lines).unwrap_or_else(|| panic!("no UID line: {lines:#?}"));
    // SAFETY: getuid cannot fail.
    if unsafe { libc::getuid() } == 0 {
        assert_ne!(uid, 0, "the lifecycle script ran as root");
        assert_eq!(Some(uid), runner_uid());
    }
    let verdicts = probes(&lines);
    assert_confined(&verdicts, &attempts, &tag);
    let mut texts = lines.clone();
    texts.push(format!("{result:?}"));
    assert_secret_absent(&secret, &texts);

    let modules = std::fs::canonicalize(base.join(".envs/nodespy/node")).unwrap();
    assert!(modules.join("node_modules/dep/package.json").is_file());
    let server_uid = std::fs::metadata(&data).unwrap().uid();
    let mut stack = vec![modules];
    while let Some(path) = stack.pop() {
        let meta = std::fs::symlink_metadata(&path).unwrap();
        assert_eq!(meta.uid(), server_uid, "{} not taken back", path.display());
        if meta.is_dir() {
            stack.extend(std::fs::read_dir(&path).unwrap().map(|e| e.unwrap().path()));
        }
    }
    server.stop().await;
}
