//! RegisterBatch end to end on SQLite and PostgreSQL: components in Attune and
//! StackStorm formats, validation, tests, storage swaps, provenance, and racing
//! registrations (also across two server processes sharing PostgreSQL).

use std::path::{Path, PathBuf};

use attune_packs_client::pb;
use sqlx::Row;

use crate::{
    common::{Backend, TestServer, on_both_backends, path_str},
    support::packs::write_tree,
};

/// An Attune-format pack: 2 actions, 1 sensor (declaring 1 trigger), 1 trigger file,
/// 1 rule, 1 workflow, 1 policy, and a `testing` block whose script reports `passed`
/// of 2 tests.
fn attune_pack(pack_ref: &str, version: &str, passed: u32) -> Vec<(String, String)> {
    let failed = 2 - passed;
    vec![
        (
            "pack.yaml".into(),
            format!(
                "ref: {pack_ref}\nlabel: Alpha\nversion: \"{version}\"\ndescription: test\n\
                 testing:\n  enabled: true\n  runners:\n    shell:\n      type: script\n      entry_point: tests/run.sh\n"
            ),
        ),
        (
            "tests/run.sh".into(),
            format!(
                "echo 'Total Tests: 2'\necho 'Passed: {passed}'\necho 'Failed: {failed}'\nexit {failed}\n"
            ),
        ),
        (
            "actions/echo.yaml".into(),
            format!("ref: {pack_ref}.echo\nrunner_type: shell\nentry_point: echo.sh\n"),
        ),
        ("actions/echo.sh".into(), "echo hi\n".into()),
        (
            "actions/deploy.yaml".into(),
            format!("ref: {pack_ref}.deploy\nrunner_type: python\nentry_point: deploy.py\n"),
        ),
        ("actions/deploy.py".into(), "print('deploy')\n".into()),
        (
            "sensors/watch.yaml".into(),
            format!(
                "ref: {pack_ref}.watch\nrunner_type: python\nentry_point: watch.py\ntrigger_types: [{pack_ref}.changed]\n"
            ),
        ),
        ("sensors/watch.py".into(), "pass\n".into()),
        (
            "triggers/changed.yaml".into(),
            format!("ref: {pack_ref}.changed\nlabel: Changed\n"),
        ),
        (
            "rules/on_change.yaml".into(),
            format!(
                "ref: {pack_ref}.on_change\ntrigger_ref: {pack_ref}.changed\naction_ref: echo\n"
            ),
        ),
        (
            "workflows/flow.yaml".into(),
            format!(
                "ref: {pack_ref}.flow\nversion: \"1.0.0\"\ntasks:\n  - name: one\n    action: {pack_ref}.echo\n"
            ),
        ),
        (
            "policies/limit.yaml".into(),
            format!(
                "ref: {pack_ref}.limit\naction_ref: echo\nconcurrency: {{limit: 2, method: enqueue}}\n"
            ),
        ),
    ]
}

/// A StackStorm Exchange pack, unchanged: names not refs, an orquesta workflow under
/// actions/workflows, trigger types declared in a sensor, a rule on a core timer.
fn stackstorm_pack() -> Vec<(String, String)> {
    vec![
        ("pack.yaml".into(), "ref: stx\nname: stx\ndescription: exchange pack\nversion: 1.0.2\nkeywords: [x]\npython_versions: [\"3\"]\nauthor: someone\n".into()),
        ("actions/get.yaml".into(), "name: get\nrunner_type: python-script\nentry_point: get.py\nenabled: true\n".into()),
        ("actions/get.py".into(), "print(1)\n".into()),
        ("actions/flow.yaml".into(), "name: flow\nrunner_type: orquesta\nentry_point: workflows/flow.yaml\n".into()),
        ("actions/workflows/flow.yaml".into(), "version: 1.0\ntasks:\n  one:\n    action: stx.get\n".into()),
        (
            "sensors/poll.yaml".into(),
            "class_name: PollSensor\nentry_point: poll.py\ntrigger_types:\n  - name: item_new\n    payload_schema: {type: object}\n  - name: item_gone\n".into(),
        ),
        ("sensors/poll.py".into(), "pass\n".into()),
        (
            "rules/tick.yaml".into(),
            "name: tick\npack: stx\ntrigger:\n  type: core.st2.IntervalTimer\n  parameters: {unit: seconds, delta: 30}\ncriteria: {}\naction:\n  ref: stx.get\n".into(),
        ),
        (
            "policies/conc.yaml".into(),
            "name: get.concurrency\nresource_ref: stx.get\npolicy_type: action.concurrency\nparameters: {threshold: 1}\n".into(),
        ),
    ]
}

fn write(dir: &Path, files: &[(String, String)]) -> PathBuf {
    let files: Vec<(&str, &[u8])> = files
        .iter()
        .map(|(n, c)| (n.as_str(), c.as_bytes()))
        .collect();
    write_tree(dir, &files);
    dir.to_path_buf()
}

fn base(server: &TestServer) -> PathBuf {
    server.root.path().canonicalize().unwrap().join("base")
}

fn request(server: &TestServer, paths: &[&Path]) -> pb::RegisterBatchRequest {
    pb::RegisterBatchRequest {
        pack_paths: paths.iter().map(|p| path_str(p)).collect(),
        packs_base_dir: Some(path_str(&base(server))),
        ..Default::default()
    }
}

async fn db_row(server: &TestServer, sql: &str, bind: &str) -> Vec<(String, String)> {
    use attune_packs_server::store::Db;
    match &server.state.db {
        Db::Sqlite(pool) => sqlx::query(sql)
            .bind(bind)
            .fetch_all(pool)
            .await
            .unwrap()
            .into_iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect(),
        Db::Postgres(pool) => sqlx::query(sql)
            .bind(bind)
            .fetch_all(pool)
            .await
            .unwrap()
            .into_iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect(),
    }
}

async fn components_in_db(server: &TestServer, pack_ref: &str) -> Vec<(String, String)> {
    let mut rows = db_row(
        server,
        "SELECT c.kind, c.ref FROM components c JOIN packs p ON p.id = c.pack_id WHERE p.ref = $1 ORDER BY c.kind, c.ref",
        pack_ref,
    )
    .await;
    rows.sort();
    rows
}

fn counts(p: &pb::RegisteredPack) -> [u32; 6] {
    let c = p.components_registered.unwrap();
    [
        c.actions,
        c.sensors,
        c.triggers,
        c.rules,
        c.workflows,
        c.policies,
    ]
}

async fn registers_attune_and_stackstorm_packs_with_real_counts(backend: Backend) {
    let server = TestServer::start(backend).await;
    let root = server.root.path().canonicalize().unwrap();
    let alpha_src = write(&root.join("src/alpha"), &attune_pack("alpha", "1.0.0", 2));
    let stx = write(&root.join("src/stx"), &stackstorm_pack());
    // Alpha arrives through Download, so it has provenance.
    let mut client = server.client().await;
    let downloaded = client
        .download(pb::DownloadRequest {
            packs: vec![path_str(&alpha_src)],
            destination_dir: path_str(&root.join("dl")),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        downloaded.success_count, 1,
        "{:#?}",
        downloaded.failed_packs
    );
    let alpha = root.join("dl/alpha");

    let r = client
        .register_batch(request(&server, &[&alpha, &stx]))
        .await
        .unwrap();
    assert!(r.failed_packs.is_empty(), "{:#?}", r.failed_packs);
    let summary = r.summary.unwrap();
    assert_eq!(
        (
            summary.total_packs,
            summary.success_count,
            summary.failure_count
        ),
        (2, 2, 0)
    );
    let a = &r.registered_packs[0];
    assert_eq!(a.pack_ref, "alpha");
    assert_eq!(counts(a), [2, 1, 1, 1, 1, 1]);
    assert_eq!(a.storage_path, path_str(&base(&server).join("alpha")));
    assert!(base(&server).join("alpha/actions/echo.sh").is_file());
    let tests = a.test_result.clone().expect("tests ran");
    assert_eq!(
        (tests.status.as_str(), tests.total_tests, tests.passed),
        ("passed", 2, 2)
    );
    assert!(a.validation_results.clone().unwrap().valid);

    let s = &r.registered_packs[1];
    assert_eq!(s.pack_ref, "stx");
    // 2 actions, 1 sensor, 2 trigger types from the sensor, 1 rule, 1 workflow, 1 policy.
    assert_eq!(counts(s), [2, 1, 2, 1, 1, 1]);
    let warnings = s.validation_results.clone().unwrap().warnings;
    assert!(
        warnings
            .iter()
            .any(|w| w.file == "rules/tick.yaml" && w.message.contains("'core'")),
        "{warnings:#?}"
    );
    assert_eq!(summary.total_components, 7 + 8);

    // The database agrees, with qualified refs and provenance from Download.
    let rows = components_in_db(&server, "stx").await;
    assert!(
        rows.contains(&("trigger".into(), "stx.item_new".into())),
        "{rows:#?}"
    );
    assert!(rows.contains(&("rule".into(), "stx.tick".into())));
    assert!(rows.contains(&("action".into(), "stx.flow".into())));
    let provenance = db_row(
        &server,
        "SELECT source_type, checksum FROM packs WHERE ref = $1",
        "alpha",
    )
    .await;
    assert_eq!(provenance[0].0, "local_directory");
    let attribution = db_row(
        &server,
        "SELECT installed_by, storage_path FROM packs WHERE ref = $1",
        "alpha",
    )
    .await;
    assert_eq!(
        attribution[0],
        ("tester".to_string(), path_str(&base(&server).join("alpha")))
    );
    assert_eq!(
        provenance[0].1,
        downloaded.downloaded_packs[0].checksum.clone().unwrap()
    );
    let tests_stored = db_row(&server, "SELECT status, pack_version FROM pack_test_results t JOIN packs p ON p.id = t.pack_id WHERE p.ref = $1", "alpha").await;
    assert_eq!(tests_stored, [("passed".to_string(), "1.0.0".to_string())]);
    server.stop().await;
}
on_both_backends!(registers_attune_and_stackstorm_packs_with_real_counts);

async fn failed_re_registration_leaves_the_old_version_intact(backend: Backend) {
    let server = TestServer::start(backend).await;
    let root = server.root.path().canonicalize().unwrap();
    let v1 = write(&root.join("v1/alpha"), &attune_pack("alpha", "1.0.0", 2));
    let mut client = server.client().await;
    let r = client
        .register_batch(request(&server, &[&v1]))
        .await
        .unwrap();
    assert_eq!(r.registered_packs.len(), 1, "{:#?}", r.failed_packs);
    let id = r.registered_packs[0].pack_id;
    let stored = base(&server).join("alpha");
    let before = components_in_db(&server, "alpha").await;

    // Same ref without force: refused, saying to use force.
    let r = client
        .register_batch(request(&server, &[&v1]))
        .await
        .unwrap();
    let f = &r.failed_packs[0];
    assert_eq!(f.error_stage, "validation");
    assert!(
        f.error.contains("already registered") && f.error.contains("force"),
        "{}",
        f.error
    );

    // A different v2 without force: refused the same way, files untouched.
    let v2 = write(&root.join("v2/alpha"), &attune_pack("alpha", "2.0.0", 2));
    let r = client
        .register_batch(request(&server, &[&v2]))
        .await
        .unwrap();
    assert_eq!(r.failed_packs[0].error_stage, "validation");
    assert!(
        std::fs::read_to_string(stored.join("pack.yaml"))
            .unwrap()
            .contains("1.0.0")
    );

    // Failing tests block a registration (force would override them, so the gate is
    // shown on a new ref): nothing stored, no rows.
    let gamma = write(&root.join("g/gamma"), &attune_pack("gamma", "1.0.0", 1));
    let r = client
        .register_batch(request(&server, &[&gamma]))
        .await
        .unwrap();
    let f = &r.failed_packs[0];
    assert_eq!(f.error_stage, "testing");
    assert!(f.error.contains("1 of 2 passed"), "{}", f.error);
    assert!(!base(&server).join("gamma").exists());
    assert!(
        db_row(
            &server,
            "SELECT ref, version FROM packs WHERE ref = $1",
            "gamma"
        )
        .await
        .is_empty()
    );

    // force replaces: same id, components that disappeared are removed.
    let mut v3_files = attune_pack("alpha", "3.0.0", 2);
    v3_files.retain(|(n, _)| n != "policies/limit.yaml");
    let v3 = write(&root.join("v3/alpha"), &v3_files);
    let mut forced = request(&server, &[&v3]);
    forced.force = Some(true);
    let r = client.register_batch(forced).await.unwrap();
    assert_eq!(r.registered_packs.len(), 1, "{:#?}", r.failed_packs);
    assert_eq!(r.registered_packs[0].pack_id, id);
    let after = components_in_db(&server, "alpha").await;
    assert_eq!(after.len(), before.len() - 1);
    assert!(!after.iter().any(|(k, _)| k == "policy"));
    assert!(
        std::fs::read_to_string(stored.join("pack.yaml"))
            .unwrap()
            .contains("3.0.0")
    );
    assert!(!stored.join("policies/limit.yaml").exists());
    // No staging or backup directories are left in the base dir; the replaced
    // version is kept for rollback under `.history`.
    let mut names: Vec<String> = std::fs::read_dir(base(&server))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, [".history", "alpha"]);
    server.stop().await;
}
on_both_backends!(failed_re_registration_leaves_the_old_version_intact);

async fn invalid_packs_are_not_registered(backend: Backend) {
    let server = TestServer::start(backend).await;
    let root = server.root.path().canonicalize().unwrap();
    let mut broken = attune_pack("broken", "1.0.0", 2);
    broken.push((
        "rules/bad.yaml".into(),
        "ref: broken.bad\ntrigger_ref: broken.nope\naction_ref: broken.missing\n".into(),
    ));
    broken.push((
        "actions/stolen.yaml".into(),
        "ref: alpha.stolen\nrunner_type: shell\nentry_point: echo.sh\n".into(),
    ));
    let broken = write(&root.join("broken"), &broken);
    let mut client = server.client().await;
    // Strict: the unresolved references of rules/bad.yaml are errors as well.
    let mut strict = request(&server, &[&broken, Path::new("/etc")]);
    strict.strict = Some(true);
    let r = client.register_batch(strict).await.unwrap();
    assert_eq!(r.registered_packs.len(), 0);
    let f = r
        .failed_packs
        .iter()
        .find(|f| f.pack_ref == "broken")
        .unwrap();
    assert_eq!(f.error_stage, "validation");
    for needle in [
        "rules/bad.yaml",
        "broken.nope",
        "broken.missing",
        "actions/stolen.yaml",
    ] {
        assert!(f.error.contains(needle), "{needle} not in {}", f.error);
    }
    let outside = r
        .failed_packs
        .iter()
        .find(|f| f.pack_path == "/etc")
        .unwrap();
    assert!(outside.error.contains("outside the allowed roots"));
    assert!(!base(&server).join("broken").exists());

    // By default the rule is only left out, but the stolen ref is a pack error.
    let r = client
        .register_batch(request(&server, &[&broken]))
        .await
        .unwrap();
    let f = &r.failed_packs[0];
    assert_eq!(f.error_stage, "validation");
    assert!(f.error.contains("actions/stolen.yaml"), "{}", f.error);
    assert!(!f.error.contains("broken.nope"), "{}", f.error);
    assert!(!base(&server).join("broken").exists());

    // Without the stolen ref the pack registers, without the rule, saying so.
    std::fs::remove_file(broken.join("actions/stolen.yaml")).unwrap();
    let r = client
        .register_batch(request(&server, &[&broken]))
        .await
        .unwrap();
    assert_eq!(r.registered_packs.len(), 1, "{:#?}", r.failed_packs);
    let p = &r.registered_packs[0];
    assert_eq!(counts(p), [2, 1, 1, 1, 1, 1]);
    let v = p.validation_results.clone().unwrap();
    assert!(v.valid && v.errors.is_empty(), "{v:#?}");
    assert!(
        v.warnings.iter().any(|w| w.file == "rules/bad.yaml"
            && w.message
                .contains("trigger 'broken.nope' is not defined in this pack")
            && w.message.contains("rule broken.bad is not registered")),
        "{v:#?}"
    );
    let rows = components_in_db(&server, "broken").await;
    assert!(rows.contains(&("rule".into(), "broken.on_change".into())));
    assert!(!rows.iter().any(|(_, r)| r == "broken.bad"), "{rows:#?}");
    let mut forced = request(&server, &[&broken]);
    forced.force = Some(true);
    forced.strict = Some(true);
    let r = client.register_batch(forced).await.unwrap();
    assert!(
        r.failed_packs[0]
            .error
            .contains("rules/bad.yaml: trigger_ref: trigger 'broken.nope'"),
        "{:#?}",
        r.failed_packs
    );

    // skip_validation registers what can be read, without running the reference checks.
    let mut lax = request(&server, &[&broken]);
    lax.skip_validation = Some(true);
    lax.skip_tests = Some(true);
    lax.force = Some(true);
    let r = client.register_batch(lax).await.unwrap();
    assert_eq!(r.registered_packs.len(), 1, "{:#?}", r.failed_packs);
    assert!(r.registered_packs[0].test_result.is_none());

    // A testing block without runners runs nothing: registered, no test result.
    let quiet = write(
        &root.join("quiet"),
        &[(
            "pack.yaml".into(),
            "ref: quiet\nversion: 1.0.0\ntesting:\n  enabled: true\n".into(),
        )],
    );
    let r = client
        .register_batch(request(&server, &[&quiet]))
        .await
        .unwrap();
    assert_eq!(r.registered_packs.len(), 1, "{:#?}", r.failed_packs);
    assert!(r.registered_packs[0].test_result.is_none());
    server.stop().await;
}
on_both_backends!(invalid_packs_are_not_registered);

/// Racing registrations of one ref (force) end with one version whose files and rows
/// agree.
async fn racing_registrations_agree(backend: Backend) {
    let server = TestServer::start(backend).await;
    let root = server.root.path().canonicalize().unwrap();
    let versions: Vec<PathBuf> = (1..=4)
        .map(|v| {
            let mut files = attune_pack("race", &format!("{v}.0.0"), 2);
            // Different component sets per version, so rows betray a mix-up.
            files.push((
                format!("actions/only_v{v}.yaml"),
                format!("ref: race.only_v{v}\nrunner_type: shell\nentry_point: echo.sh\n"),
            ));
            write(&root.join(format!("v{v}/race")), &files)
        })
        .collect();
    let mut calls = Vec::new();
    for v in &versions {
        let mut client = server.client().await;
        let mut req = request(&server, &[v]);
        req.force = Some(true);
        req.skip_tests = Some(true);
        calls.push(tokio::spawn(async move {
            client.register_batch(req).await.unwrap()
        }));
    }
    for call in calls {
        let r = call.await.unwrap();
        assert_eq!(r.registered_packs.len(), 1, "{:#?}", r.failed_packs);
    }
    assert_consistent(&server, "race").await;
    server.stop().await;
}
on_both_backends!(racing_registrations_agree);

/// The registered version, the files under the base dir and the component rows tell
/// the same story.
async fn assert_consistent(server: &TestServer, pack_ref: &str) {
    let version = db_row(
        server,
        "SELECT ref, version FROM packs WHERE ref = $1",
        pack_ref,
    )
    .await[0]
        .1
        .clone();
    let on_disk = std::fs::read_to_string(base(server).join(pack_ref).join("pack.yaml")).unwrap();
    assert!(
        on_disk.contains(&format!("\"{version}\"")),
        "db {version}, disk {on_disk}"
    );
    let major = version.split('.').next().unwrap();
    let rows = components_in_db(server, pack_ref).await;
    let only: Vec<&(String, String)> = rows.iter().filter(|(_, r)| r.contains(".only_v")).collect();
    assert_eq!(only.len(), 1, "{rows:#?}");
    assert_eq!(only[0].1, format!("{pack_ref}.only_v{major}"));
}

register_test!(
    two_processes_racing_on_postgres_agree,
    requires = [Postgres]
);
/// Two server processes sharing one PostgreSQL database and one packs base dir.
async fn two_processes_racing_on_postgres_agree() {
    // The in-process server is only used for its fresh database and its helpers.
    let server = TestServer::start(Backend::Postgres).await;
    let url = match &server.state.config.database_url {
        Some(url) => url.expose().to_string(),
        None => unreachable!("a PostgreSQL test server has a URL"),
    };
    let root = server.root.path().canonicalize().unwrap();
    let mut processes = Vec::new();
    for i in 0..2 {
        processes.push(crate::binaries::ServerProcess::start_with(
            &root.join(format!("data{i}")),
            &root,
            &[
                ("ATTUNE_PACKS_DATABASE_URL", url.as_str()),
                ("ATTUNE_PACKS_JWT_SECRET", crate::common::SECRET),
            ],
        ));
    }
    let versions: Vec<PathBuf> = (1..=6)
        .map(|v| {
            let mut files = attune_pack("race", &format!("{v}.0.0"), 2);
            files.push((
                format!("actions/only_v{v}.yaml"),
                format!("ref: race.only_v{v}\nrunner_type: shell\nentry_point: echo.sh\n"),
            ));
            write(&root.join(format!("v{v}/race")), &files)
        })
        .collect();
    let token = server.token();
    let mut calls = Vec::new();
    for (i, v) in versions.iter().enumerate() {
        let url = format!("http://{}", processes[i % 2].addr);
        let token = token.clone();
        let mut req = request(&server, &[v]);
        req.force = Some(true);
        req.skip_tests = Some(true);
        calls.push(tokio::spawn(async move {
            let mut client = attune_packs_client::Client::connect(&url, &token)
                .await
                .unwrap();
            client.register_batch(req).await.unwrap()
        }));
    }
    for call in calls {
        let r = call.await.unwrap();
        assert_eq!(r.registered_packs.len(), 1, "{:#?}", r.failed_packs);
    }
    assert_consistent(&server, "race").await;
    drop(processes);
    server.stop().await;
}
