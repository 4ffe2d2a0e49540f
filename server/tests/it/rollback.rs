//! History and RollbackPack end to end: an upgrade keeps the previous version (files,
//! rows, environment), a rollback puts it back exactly and without the network, a
//! second rollback returns, the keep bound holds, dependents refuse unless forced,
//! and `kill -9` in the middle of an upgrade or a rollback leaves a consistent state.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    time::Duration,
};

use attune_packs_client::{Event, pb};
use attune_packs_server::fault::PAUSE_ENV;
use futures::StreamExt;
use tonic::Code;

use crate::{
    common::{Backend, TestServer, on_both_backends, path_str},
    crash_loop::{Setup, assert_consistent, dir_checksum, rows},
    support::packs::write_tree,
};

/// Version `version` of `pack_ref`: an action, a script printing the version, a file
/// only this version has, and (with `python`) a Python environment whose inputs differ
/// per version, so that each version gets its own build.
fn files(pack_ref: &str, version: &str, python: bool, deps: &[&str]) -> Vec<(String, Vec<u8>)> {
    let mut yaml = format!("ref: {pack_ref}\nlabel: {pack_ref}\nversion: \"{version}\"\n");
    if python {
        yaml.push_str("python: \"3\"\n");
    }
    if !deps.is_empty() {
        yaml.push_str("dependencies:\n");
        for d in deps {
            yaml.push_str(&format!("  - \"{d}\"\n"));
        }
    }
    let mut files = vec![
        ("pack.yaml".to_string(), yaml.into_bytes()),
        (
            "actions/hello.yaml".into(),
            format!("ref: {pack_ref}.hello\nrunner_type: shell\nentry_point: hello.sh\n")
                .into_bytes(),
        ),
        (
            "actions/hello.sh".into(),
            format!("#!/bin/sh\necho \"{pack_ref} {version}\"\n").into_bytes(),
        ),
        (
            format!("only-in-{version}.txt"),
            format!("{version}\n").repeat(100).into_bytes(),
        ),
    ];
    // A second action only in 1.x: the components differ between versions.
    if version.starts_with("1.") {
        files.push((
            "actions/old.yaml".into(),
            format!("ref: {pack_ref}.old\nrunner_type: shell\nentry_point: hello.sh\n")
                .into_bytes(),
        ));
    }
    if python {
        files.push((
            "requirements.txt".into(),
            format!("# inputs of {version}, nothing from PyPI\n").into_bytes(),
        ));
    }
    files
}

/// Writes the version under `<root>/src/<ref>-<version>/<ref>` and returns that path.
fn source(root: &Path, pack_ref: &str, version: &str, python: bool, deps: &[&str]) -> PathBuf {
    let dir = root
        .join("src")
        .join(format!("{pack_ref}-{version}"))
        .join(pack_ref);
    write_tree(&dir, &files(pack_ref, version, python, deps));
    dir
}

/// Every file under `dir` (relative path -> bytes), links as their targets.
fn tree(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, Vec<u8>>) {
        for entry in std::fs::read_dir(dir).unwrap().flatten() {
            let path = entry.path();
            let rel = path.strip_prefix(root).unwrap().display().to_string();
            let kind = entry.file_type().unwrap();
            if kind.is_dir() {
                out.insert(format!("{rel}/"), Vec::new());
                walk(root, &path, out);
            } else if kind.is_symlink() {
                let target = std::fs::read_link(&path).unwrap();
                out.insert(rel, target.display().to_string().into_bytes());
            } else {
                out.insert(rel, std::fs::read(&path).unwrap());
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

/// The rows a rollback must restore: `(version, checksum, source, installed_by)` and
/// the components `(kind, ref, file)`.
type PackRows = (
    (String, Option<String>, Option<String>, Option<String>),
    Vec<(String, String, String)>,
);

async fn pack_rows(server: &TestServer, pack_ref: &str) -> PackRows {
    use attune_packs_server::store::Db;
    const PACK: &str = "SELECT version, checksum, source, installed_by FROM packs WHERE ref = $1";
    const COMPONENTS: &str = "SELECT c.kind, c.ref, c.file FROM components c \
        JOIN packs p ON p.id = c.pack_id WHERE p.ref = $1 ORDER BY c.kind, c.ref";
    match &server.state.db {
        Db::Sqlite(pool) => (
            sqlx::query_as(PACK)
                .bind(pack_ref)
                .fetch_one(pool)
                .await
                .unwrap(),
            sqlx::query_as(COMPONENTS)
                .bind(pack_ref)
                .fetch_all(pool)
                .await
                .unwrap(),
        ),
        Db::Postgres(pool) => (
            sqlx::query_as(PACK)
                .bind(pack_ref)
                .fetch_one(pool)
                .await
                .unwrap(),
            sqlx::query_as(COMPONENTS)
                .bind(pack_ref)
                .fetch_all(pool)
                .await
                .unwrap(),
        ),
    }
}

async fn event_types(server: &TestServer) -> Vec<String> {
    use attune_packs_server::store::Db;
    const SQL: &str = "SELECT event_type FROM event_outbox ORDER BY id";
    let rows: Vec<(String,)> = match &server.state.db {
        Db::Sqlite(pool) => sqlx::query_as(SQL).fetch_all(pool).await.unwrap(),
        Db::Postgres(pool) => sqlx::query_as(SQL).fetch_all(pool).await.unwrap(),
    };
    rows.into_iter().map(|(t,)| t).collect()
}

fn install_request(server: &TestServer, path: &Path, force: bool) -> pb::InstallRequest {
    pb::InstallRequest {
        packs: vec![path_str(path)],
        packs_base_dir: Some(path_str(&server.packs_dir())),
        timeout: Some(120),
        force: Some(force),
        ..Default::default()
    }
}

async fn install(server: &TestServer, path: &Path, force: bool) -> pb::InstallResult {
    let r = server
        .client()
        .await
        .install(install_request(server, path, force))
        .await
        .unwrap();
    assert!(r.success, "{:#?}", r.errors);
    r
}

async fn register(server: &TestServer, path: &Path) -> pb::RegisterBatchResult {
    let r = server
        .client()
        .await
        .register_batch(pb::RegisterBatchRequest {
            pack_paths: vec![path_str(path)],
            packs_base_dir: Some(path_str(&server.packs_dir())),
            force: Some(true),
            skip_tests: Some(true),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(r.failed_packs.len(), 0, "{:#?}", r.failed_packs);
    r
}

/// Rolls back, returning the progress and the result.
async fn rollback(
    server: &TestServer,
    pack_ref: &str,
    to: &str,
    force: bool,
) -> (Vec<pb::Progress>, pb::RollbackPackResult) {
    let mut client = server.client().await;
    let mut stream = client
        .rollback_pack_stream(pb::RollbackPackRequest {
            r#ref: pack_ref.into(),
            to_version: to.into(),
            force,
        })
        .await
        .unwrap();
    let mut progress = Vec::new();
    while let Some(event) = stream.next().await {
        match event.unwrap() {
            Event::Progress(p) => progress.push(p),
            Event::Result(r) => return (progress, r),
        }
    }
    panic!("no result");
}

async fn history(server: &TestServer, pack_ref: &str) -> pb::PackHistoryResponse {
    server
        .client()
        .await
        .pack_history(pb::PackHistoryRequest {
            r#ref: pack_ref.into(),
            limit: None,
        })
        .await
        .unwrap()
}

fn steps(h: &pb::PackHistoryResponse) -> Vec<(String, String, String, String)> {
    h.entries
        .iter()
        .map(|e| {
            (
                e.action.clone(),
                e.from_version.clone(),
                e.to_version.clone(),
                e.outcome.clone(),
            )
        })
        .collect()
}

fn owned(rows: &[(&str, &str, &str, &str)]) -> Vec<(String, String, String, String)> {
    rows.iter()
        .map(|(a, b, c, d)| (a.to_string(), b.to_string(), c.to_string(), d.to_string()))
        .collect()
}

fn kept_dirs(server: &TestServer, pack_ref: &str) -> Vec<PathBuf> {
    std::fs::read_dir(server.packs_dir().join(".history").join(pack_ref))
        .map(|entries| entries.flatten().map(|e| e.path()).collect())
        .unwrap_or_default()
}

/// Install 1.0.0 (with a virtualenv), upgrade to 2.0.0, take the sources away, roll
/// back: files byte for byte, rows and the environment link are 1.0.0's again; the
/// history shows every step; a second rollback returns to 2.0.0.
async fn upgrade_then_rollback_restores_files_rows_and_environment(backend: Backend) {
    let server = TestServer::start(backend).await;
    let root = server.root.path().canonicalize().unwrap();
    let v1 = source(&root, "snake", "1.0.0", true, &[]);
    let v2 = source(&root, "snake", "2.0.0", true, &[]);
    let target = server.packs_dir().join("snake");
    let link = server.packs_dir().join(".envs/snake/python");

    install(&server, &v1, false).await;
    let files_1 = tree(&target);
    let rows_1 = pack_rows(&server, "snake").await;
    let build_1 = std::fs::read_link(&link).unwrap();
    assert!(link.join("bin/python").exists());

    let upgraded = install(&server, &v2, true).await;
    assert_eq!(upgraded.installed[0].action, "upgrade");
    let files_2 = tree(&target);
    let rows_2 = pack_rows(&server, "snake").await;
    let build_2 = std::fs::read_link(&link).unwrap();
    assert_ne!(files_1, files_2);
    assert_ne!(rows_1, rows_2);
    assert_ne!(build_1, build_2, "2.0.0 has its own virtualenv");
    // The previous version is kept: its files and its build.
    assert_eq!(kept_dirs(&server, "snake").len(), 1);
    assert!(
        link.parent()
            .unwrap()
            .join(&build_1)
            .join("bin/python")
            .exists()
    );

    // Nothing to fetch from: a rollback that needed the network would fail.
    std::fs::remove_dir_all(root.join("src")).unwrap();
    let (progress, r) = rollback(&server, "snake", "", false).await;
    assert!(r.success, "{:#?}", r.errors);
    assert_eq!(
        (r.from_version.as_str(), r.to_version.as_str()),
        ("2.0.0", "1.0.0")
    );
    assert!(
        progress
            .iter()
            .all(|p| p.stage != pb::progress::Stage::Fetch as i32),
        "a rollback fetched: {progress:#?}"
    );
    assert_eq!(
        tree(&target),
        files_1,
        "the files are 1.0.0's, byte for byte"
    );
    assert_eq!(pack_rows(&server, "snake").await, rows_1);
    assert_eq!(std::fs::read_link(&link).unwrap(), build_1);
    assert!(link.join("bin/python").exists());

    let h = history(&server, "snake").await;
    assert_eq!(
        steps(&h),
        owned(&[
            ("rollback", "2.0.0", "1.0.0", "succeeded"),
            ("upgrade", "1.0.0", "2.0.0", "succeeded"),
            ("install", "", "1.0.0", "succeeded"),
        ])
    );
    assert!(h.entries.iter().all(|e| e.actor == "tester"), "{h:#?}");
    assert_eq!(
        h.kept_versions
            .iter()
            .map(|k| k.version.as_str())
            .collect::<Vec<_>>(),
        ["2.0.0"]
    );

    // And back again: the rollback is undone by another.
    let (_, r) = rollback(&server, "snake", "2.0.0", false).await;
    assert!(r.success, "{:#?}", r.errors);
    assert_eq!(tree(&target), files_2);
    assert_eq!(pack_rows(&server, "snake").await, rows_2);
    assert_eq!(std::fs::read_link(&link).unwrap(), build_2);
    assert_eq!(kept_dirs(&server, "snake").len(), 1);
    let events = event_types(&server).await;
    assert_eq!(
        events,
        [
            "pack.registered",
            "pack.registered",
            "pack.registered",
            "pack.rolled_back",
            "pack.registered",
            "pack.rolled_back"
        ]
    );
    server.stop().await;
}
on_both_backends!(upgrade_then_rollback_restores_files_rows_and_environment);

/// Four versions with `history.keep_versions` 2: two kept, the oldest directory gone;
/// what cannot be rolled back is refused with the kept versions named; a dependent
/// that needs the newer version refuses the rollback unless forced; a kept copy edited
/// since is refused.
async fn the_keep_bound_refusals_and_dependents(backend: Backend) {
    let server = TestServer::start(backend).await;
    let root = server.root.path().canonicalize().unwrap();
    for v in ["1.0.0", "2.0.0", "3.0.0", "4.0.0"] {
        register(&server, &source(&root, "keeper", v, false, &[])).await;
    }
    let h = history(&server, "keeper").await;
    let kept: Vec<&str> = h.kept_versions.iter().map(|k| k.version.as_str()).collect();
    assert_eq!(kept, ["3.0.0", "2.0.0"]);
    let dirs = kept_dirs(&server, "keeper");
    assert_eq!(dirs.len(), 2, "{dirs:?}");
    let kept_files: Vec<String> = dirs
        .iter()
        .map(|d| std::fs::read_to_string(d.join("pack.yaml")).unwrap())
        .collect();
    assert!(
        kept_files.iter().all(|y| !y.contains("1.0.0")),
        "{kept_files:?}"
    );
    assert_eq!(steps(&h)[0].0, "upgrade");
    assert_eq!(h.entries.len(), 4);

    // Not kept, not installed, malformed.
    let (_, r) = rollback(&server, "keeper", "1.0.0", false).await;
    assert!(!r.success);
    assert!(
        r.errors[0].contains("no kept version 1.0.0") && r.errors[0].contains("3.0.0, 2.0.0"),
        "{:?}",
        r.errors
    );
    let (_, r) = rollback(&server, "ghost", "", false).await;
    assert!(
        !r.success && r.errors[0].contains("not installed"),
        "{:?}",
        r.errors
    );
    let bad = server
        .client()
        .await
        .rollback_pack(pb::RollbackPackRequest {
            r#ref: "Not A Ref!".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(bad.status().unwrap().code(), Code::InvalidArgument);
    assert!(history(&server, "ghost").await.entries.is_empty());

    // A dependent needs 4.x: refused, nothing changed; forced, done.
    register(
        &server,
        &source(&root, "app", "1.0.0", false, &["keeper@>=4.0.0"]),
    )
    .await;
    let before = pack_rows(&server, "keeper").await;
    let (_, r) = rollback(&server, "keeper", "", false).await;
    assert!(!r.success);
    assert_eq!(r.dependents, ["app"]);
    assert!(
        r.errors[0].contains("app requires >=4.0.0"),
        "{:?}",
        r.errors
    );
    assert!(
        r.errors[0].starts_with("an installed pack needs a version of 'keeper'"),
        "{:?}",
        r.errors
    );
    assert_eq!(pack_rows(&server, "keeper").await, before);
    let (_, r) = rollback(&server, "keeper", "", true).await;
    assert!(r.success, "{:#?}", r.errors);
    assert_eq!(pack_rows(&server, "keeper").await.0.0, "3.0.0");

    // A kept copy edited since it was kept is not trusted.
    let h = history(&server, "keeper").await;
    let kept: Vec<&str> = h.kept_versions.iter().map(|k| k.version.as_str()).collect();
    assert_eq!(kept, ["4.0.0", "2.0.0"]);
    for dir in kept_dirs(&server, "keeper") {
        if std::fs::read_to_string(dir.join("pack.yaml"))
            .unwrap()
            .contains("2.0.0")
        {
            std::fs::write(dir.join("planted.txt"), "edited").unwrap();
        }
    }
    let before = tree(&server.packs_dir().join("keeper"));
    let (_, r) = rollback(&server, "keeper", "2.0.0", true).await;
    assert!(!r.success);
    assert!(
        r.errors[0].contains("was changed since it was kept"),
        "{:?}",
        r.errors
    );
    assert_eq!(tree(&server.packs_dir().join("keeper")), before);
    assert_eq!(pack_rows(&server, "keeper").await.0.0, "3.0.0");
    server.stop().await;
}
on_both_backends!(the_keep_bound_refusals_and_dependents);

/// A registration that fails once its pack is known (here: its tests) is a `failed`
/// history row; a refusal before any work (already registered, without force) is none.
async fn a_failed_registration_is_recorded_as_failed(backend: Backend) {
    let server = TestServer::start(backend).await;
    let root = server.root.path().canonicalize().unwrap();
    let failing = source(&root, "tested", "1.0.0", false, &[]);
    let mut yaml = std::fs::read_to_string(failing.join("pack.yaml")).unwrap();
    yaml.push_str(
        "testing:\n  enabled: true\n  runners:\n    shell:\n      type: script\n      entry_point: tests/run.sh\n",
    );
    std::fs::write(failing.join("pack.yaml"), yaml).unwrap();
    write_tree(
        &failing,
        &[(
            "tests/run.sh",
            "echo 'Total Tests: 1'\necho 'Passed: 0'\necho 'Failed: 1'\nexit 1\n",
        )],
    );
    let request = |force: bool| pb::RegisterBatchRequest {
        pack_paths: vec![path_str(&failing)],
        packs_base_dir: Some(path_str(&server.packs_dir())),
        force: Some(force),
        ..Default::default()
    };
    let r = server
        .client()
        .await
        .register_batch(request(false))
        .await
        .unwrap();
    assert_eq!(r.failed_packs.len(), 1, "{r:#?}");
    let h = history(&server, "tested").await;
    assert_eq!(steps(&h), owned(&[("install", "", "1.0.0", "failed")]));
    assert!(h.entries[0].detail.contains("tests failed"), "{h:#?}");
    assert!(!server.packs_dir().join("tested").exists());

    // Forced, it registers; then an unforced attempt is refused before any work.
    let r = server
        .client()
        .await
        .register_batch(request(true))
        .await
        .unwrap();
    assert_eq!(r.failed_packs.len(), 0, "{r:#?}");
    let r = server
        .client()
        .await
        .register_batch(request(false))
        .await
        .unwrap();
    assert_eq!(r.failed_packs.len(), 1, "{r:#?}");
    let h = history(&server, "tested").await;
    assert_eq!(
        steps(&h),
        owned(&[
            ("install", "", "1.0.0", "succeeded"),
            ("install", "", "1.0.0", "failed"),
        ])
    );
    server.stop().await;
}
on_both_backends!(a_failed_registration_is_recorded_as_failed);

async fn register_on(
    process: &crate::crash_loop::Process,
    base: &Path,
    path: &Path,
) -> tokio::task::JoinHandle<bool> {
    let mut client = process.client().await;
    let request = pb::RegisterBatchRequest {
        pack_paths: vec![path_str(path)],
        packs_base_dir: Some(path_str(base)),
        force: Some(true),
        skip_tests: Some(true),
        ..Default::default()
    };
    tokio::spawn(async move {
        client
            .register_batch(request)
            .await
            .is_ok_and(|r| r.failed_packs.is_empty())
    })
}

async fn rollback_on(process: &crate::crash_loop::Process) -> tokio::task::JoinHandle<bool> {
    let mut client = process.client().await;
    tokio::spawn(async move {
        client
            .rollback_pack(pb::RollbackPackRequest {
                r#ref: "crashy".into(),
                ..Default::default()
            })
            .await
            .is_ok_and(|r| r.success)
    })
}

/// Kept versions' files match their rows; with `exact`, every kept directory on disk
/// is a row's (a crash may leave a pruned one for the ref's next change to delete).
async fn assert_kept_versions_whole(setup: &Setup, context: &str, exact: bool) {
    let db = setup.db().await;
    let kept = db.kept_versions("crashy").await.unwrap();
    db.close().await;
    assert!(!kept.is_empty(), "{context}: nothing kept");
    for k in &kept {
        assert_eq!(
            dir_checksum(Path::new(&k.files_path)),
            k.checksum,
            "{context}: kept {} at {}",
            k.version,
            k.files_path
        );
    }
    if exact {
        let on_disk: Vec<String> = std::fs::read_dir(setup.base().join(".history/crashy"))
            .unwrap()
            .flatten()
            .map(|e| e.path().display().to_string())
            .collect();
        for dir in &on_disk {
            assert!(
                kept.iter().any(|k| &k.files_path == dir),
                "{context}: {dir} is kept by no row"
            );
        }
    }
}

/// `kill -9` at points spread over a forced upgrade and over a rollback (the fault
/// pauses stretch their critical sections): after each restart rows, files and kept
/// versions agree, and the pack still rolls back.
async fn kill_nine_during_upgrade_and_rollback_leaves_a_consistent_state(backend: Backend) {
    let server = TestServer::start(backend).await;
    let database_url = match backend {
        Backend::Sqlite => None,
        Backend::Postgres => Some(
            server
                .state
                .config
                .database_url
                .as_ref()
                .expect("a PostgreSQL test server has a URL")
                .expose()
                .to_string(),
        ),
    };
    let root = server.root.path().canonicalize().unwrap().join("crash");
    let setup = Setup::at(root, database_url, &[(PAUSE_ENV, "250")]);
    let mut process = setup.start();
    let base = setup.base();
    let v1 = source(&setup.root, "crashy", "1.0.0", false, &[]);
    let v2 = source(&setup.root, "crashy", "2.0.0", false, &[]);
    assert!(register_on(&process, &base, &v1).await.await.unwrap());
    assert!(register_on(&process, &base, &v2).await.await.unwrap());
    let mut changed = 0;
    for (round, delay_ms) in [50u64, 300, 550, 800, 1050, 1300, 1550, 1800]
        .into_iter()
        .enumerate()
    {
        for rolling_back in [false, true] {
            let context =
                format!("round {round}, rollback {rolling_back}, kill after {delay_ms} ms");
            let db = setup.db().await;
            let installed = rows(&db).await[0].1.clone();
            db.close().await;
            let call = if rolling_back {
                rollback_on(&process).await
            } else {
                let next = if installed == "1.0.0" { &v2 } else { &v1 };
                register_on(&process, &base, next).await
            };
            tokio::time::sleep(Duration::from_millis(delay_ms)).await;
            process.kill9();
            let _ = call.await;
            process = setup.start();
            let versions = assert_consistent(
                &setup,
                &["crashy".to_string()].into_iter().collect(),
                false,
                &context,
            )
            .await;
            if versions["crashy"] != installed {
                changed += 1;
            }
            assert_kept_versions_whole(&setup, &context, false).await;
        }
    }
    // The kills landed on both sides of commits.
    assert!(
        (2..16).contains(&changed),
        "{changed} of 16 calls changed the version"
    );
    // After all that the pack still rolls back, and what a crash left is cleaned up.
    assert!(rollback_on(&process).await.await.unwrap());
    assert_kept_versions_whole(&setup, "after the last rollback", true).await;
    assert_consistent(
        &setup,
        &["crashy".to_string()].into_iter().collect(),
        false,
        "after the last rollback",
    )
    .await;
    drop(process);
    server.stop().await;
}
on_both_backends!(kill_nine_during_upgrade_and_rollback_leaves_a_consistent_state);

/// The REST door: history as `{"data": …}`, rollback as JSON and as server-sent
/// events, malformed input a 400 naming the problem, no token a 401.
async fn rest_history_and_rollback(backend: Backend) {
    let server = TestServer::start(backend).await;
    let root = server.root.path().canonicalize().unwrap();
    register(&server, &source(&root, "door", "1.0.0", false, &[])).await;
    register(&server, &source(&root, "door", "2.0.0", false, &[])).await;
    let http = reqwest::Client::new();
    let url = |path: &str| format!("{}{path}", server.url());
    let auth = format!("Bearer {}", server.token());

    let response = http
        .get(url("/api/v1/packs/door/history?limit=1"))
        .header("authorization", &auth)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body: serde_json::Value = serde_json::from_str(&response.text().await.unwrap()).unwrap();
    let entries = body["data"]["entries"].as_array().unwrap();
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0]["action"], "upgrade");
    assert_eq!(body["data"]["kept_versions"][0]["version"], "1.0.0");

    for (path, expected) in [
        (
            "/api/v1/packs/door/history?limit=0",
            "limit must be between 1 and 1000",
        ),
        (
            "/api/v1/packs/door/history?limit=5000",
            "limit must be between 1 and 1000",
        ),
        ("/api/v1/packs/Not-A-Ref/history", "not a valid pack ref"),
    ] {
        let response = http
            .get(url(path))
            .header("authorization", &auth)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 400, "{path}");
        let body: serde_json::Value =
            serde_json::from_str(&response.text().await.unwrap()).unwrap();
        assert!(
            body["message"].as_str().unwrap().contains(expected),
            "{path}: {body}"
        );
    }
    let response = http
        .get(url("/api/v1/packs/door/history"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    let response = http
        .post(url("/api/v1/packs/door/rollback"))
        .body("[]")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401, "authentication comes first");

    for (body, expected) in [
        ("[]", "must be a JSON object"),
        ("{", "malformed JSON"),
        (r#"{"force": "yes"}"#, "force"),
    ] {
        let response = http
            .post(url("/api/v1/packs/door/rollback"))
            .header("authorization", &auth)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 400, "{body}");
        let answer: serde_json::Value =
            serde_json::from_str(&response.text().await.unwrap()).unwrap();
        assert!(
            answer["message"].as_str().unwrap().contains(expected),
            "{body}: {answer}"
        );
    }

    // An empty body: the most recent kept version, as JSON.
    let response = http
        .post(url("/api/v1/packs/door/rollback"))
        .header("authorization", &auth)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body: serde_json::Value = serde_json::from_str(&response.text().await.unwrap()).unwrap();
    assert_eq!(body["data"]["success"], true, "{body}");
    assert_eq!(body["data"]["to_version"], "1.0.0");

    // Back to 2.0.0 as server-sent events: progress, then one result.
    let response = http
        .post(url("/api/v1/packs/door/rollback"))
        .header("authorization", &auth)
        .header("accept", "text/event-stream")
        .header("content-type", "application/json")
        .body(r#"{"to_version": "2.0.0"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let text = response.text().await.unwrap();
    assert!(text.contains("event: progress"), "{text}");
    let result = text
        .split("\n\n")
        .find(|block| block.contains("event: result"))
        .expect("a result event");
    let data: serde_json::Value = serde_json::from_str(
        result
            .lines()
            .find_map(|l| l.strip_prefix("data: "))
            .unwrap(),
    )
    .unwrap();
    assert_eq!(data["data"]["success"], true, "{data}");
    assert_eq!(data["data"]["to_version"], "2.0.0");

    // A refusal is a 200 with success false and the reason.
    let response = http
        .post(url("/api/v1/packs/door/rollback"))
        .header("authorization", &auth)
        .header("content-type", "application/json")
        .body(r#"{"to_version": "9.9.9"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body: serde_json::Value = serde_json::from_str(&response.text().await.unwrap()).unwrap();
    assert_eq!(body["data"]["success"], false);
    assert!(
        body["data"]["errors"][0]
            .as_str()
            .unwrap()
            .contains("no kept version 9.9.9; kept versions: 1.0.0"),
        "{body}"
    );
    server.stop().await;
}
on_both_backends!(rest_history_and_rollback);

/// `kill -9` during rollbacks that switch environment links too: after every restart
/// the links point at builds made from the files in place (`check_envs_match`, inside
/// `assert_consistent`), and nothing kept was lost.
async fn kill_nine_during_a_rollback_with_environments(backend: Backend) {
    let server = TestServer::start(backend).await;
    let database_url = match backend {
        Backend::Sqlite => None,
        Backend::Postgres => Some(
            server
                .state
                .config
                .database_url
                .as_ref()
                .expect("a PostgreSQL test server has a URL")
                .expose()
                .to_string(),
        ),
    };
    let root = server.root.path().canonicalize().unwrap().join("crash");
    let setup = Setup::at(root, database_url, &[(PAUSE_ENV, "250")]);
    let mut process = setup.start();
    let base = setup.base();
    for version in ["1.0.0", "2.0.0"] {
        let path = source(&setup.root, "crashy", version, true, &[]);
        let r = process
            .client()
            .await
            .install(pb::InstallRequest {
                packs: vec![path_str(&path)],
                packs_base_dir: Some(path_str(&base)),
                timeout: Some(120),
                force: Some(true),
                ..Default::default()
            })
            .await
            .unwrap();
        assert!(r.success, "{:#?}", r.errors);
    }
    let link = base.join(".envs/crashy/python");
    let mut changed = 0;
    for delay_ms in [100u64, 400, 700, 1000, 1300] {
        let context = format!("rollback killed after {delay_ms} ms");
        let before = std::fs::read_link(&link).unwrap();
        let call = rollback_on(&process).await;
        tokio::time::sleep(Duration::from_millis(delay_ms)).await;
        process.kill9();
        let _ = call.await;
        process = setup.start();
        assert_consistent(
            &setup,
            &["crashy".to_string()].into_iter().collect(),
            false,
            &context,
        )
        .await;
        assert_kept_versions_whole(&setup, &context, false).await;
        if std::fs::read_link(&link).unwrap() != before {
            changed += 1;
        }
        assert!(link.join("bin/python").exists(), "{context}");
    }
    assert!(
        (1..5).contains(&changed),
        "{changed} of 5 rollbacks switched"
    );
    assert!(rollback_on(&process).await.await.unwrap());
    assert_consistent(
        &setup,
        &["crashy".to_string()].into_iter().collect(),
        false,
        "after the last rollback",
    )
    .await;
    drop(process);
    server.stop().await;
}
on_both_backends!(kill_nine_during_a_rollback_with_environments);
