//! RemovePacks end to end on SQLite and PostgreSQL: refusal naming the dependents,
//! cascade in reverse dependency order, force, dry run, unknown refs, the history row
//! and the `pack.deleted` outbox row of the same transaction, the REST doors, and
//! `kill -9` in the middle of a removal.

use std::{
    collections::BTreeSet,
    fs,
    path::{Path, PathBuf},
    time::Duration,
};

use attune_packs_client::{Client, pb};
use attune_packs_server::{fault::PAUSE_ENV, journal::REMOVAL_INTENT_PREFIX, store::Db};
use serde_json::Value;

use crate::{
    common::{Backend, TestServer, on_both_backends, path_str},
    crash_loop::{self, Process, Setup, Work},
    support::packs::write_tree,
};

/// A pack with one action, declaring `deps`; with `python`, a `requirements.txt` that
/// the virtualenv's own pip satisfies offline, so that Install builds an environment.
fn pack_source(root: &Path, pack_ref: &str, deps: &[&str], python: bool) -> PathBuf {
    let dir = root.join("src").join(pack_ref);
    let mut yaml = format!("ref: {pack_ref}\nlabel: {pack_ref}\nversion: \"1.0.0\"\n");
    if !deps.is_empty() {
        yaml.push_str("dependencies:\n");
        for d in deps {
            yaml.push_str(&format!("  - \"{d}\"\n"));
        }
    }
    let mut files = vec![
        ("pack.yaml".to_string(), yaml),
        (
            "actions/run.yaml".to_string(),
            format!("ref: {pack_ref}.run\nrunner_type: shell\nentry_point: run.sh\n"),
        ),
        ("actions/run.sh".to_string(), "echo run\n".to_string()),
    ];
    if python {
        files.push(("requirements.txt".to_string(), "pip>=1.0\n".to_string()));
    }
    write_tree(&dir, &files);
    dir
}

async fn register(client: &mut Client, packs: &[&Path]) {
    let result = client
        .register_batch(pb::RegisterBatchRequest {
            pack_paths: packs.iter().map(|p| path_str(p)).collect(),
            skip_tests: Some(true),
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(result.failed_packs.is_empty(), "{:?}", result.failed_packs);
}

async fn remove(
    client: &mut Client,
    refs: &[&str],
    cascade: bool,
    force: bool,
    dry_run: bool,
) -> pb::RemovePacksResult {
    client
        .remove_packs(pb::RemovePacksRequest {
            refs: refs.iter().map(|r| r.to_string()).collect(),
            cascade,
            force,
            dry_run,
        })
        .await
        .unwrap()
}

async fn scalar(db: &Db, sql: &str) -> i64 {
    match db {
        Db::Sqlite(pool) => sqlx::query_scalar(sql).fetch_one(pool).await.unwrap(),
        Db::Postgres(pool) => sqlx::query_scalar(sql).fetch_one(pool).await.unwrap(),
    }
}

async fn strings(db: &Db, sql: &str) -> Vec<String> {
    match db {
        Db::Sqlite(pool) => sqlx::query_scalar(sql).fetch_all(pool).await.unwrap(),
        Db::Postgres(pool) => sqlx::query_scalar(sql).fetch_all(pool).await.unwrap(),
    }
}

/// Everything a removal changes, to compare before and after a call that must not
/// change anything.
#[derive(Debug, PartialEq, Eq)]
struct Snapshot {
    packs: Vec<String>,
    components: i64,
    history: i64,
    events: i64,
    files: Vec<String>,
}

/// Every path under `dir` (relative), links not followed.
fn tree(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let path = e.path();
            out.push(path.strip_prefix(dir).unwrap().display().to_string());
            if e.file_type().unwrap().is_dir() {
                stack.push(path);
            }
        }
    }
    out.sort();
    out
}

async fn snapshot(server: &TestServer) -> Snapshot {
    let db = &server.state.db;
    Snapshot {
        packs: strings(db, "SELECT ref FROM packs ORDER BY ref").await,
        components: scalar(db, "SELECT COUNT(*) FROM components").await,
        history: scalar(db, "SELECT COUNT(*) FROM pack_history").await,
        events: scalar(db, "SELECT COUNT(*) FROM event_outbox").await,
        files: tree(&server.state.config.packs_base_dir()),
    }
}

/// No removal intent in the journal, no moved-aside directory anywhere.
fn assert_nothing_left(data: &Path, base: &Path) {
    let journal = data.join("journal");
    let intents: Vec<String> = fs::read_dir(&journal)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(REMOVAL_INTENT_PREFIX))
        .collect();
    assert!(intents.is_empty(), "{intents:?}");
    for dir in [base.to_path_buf(), base.join(".envs")] {
        let left: Vec<String> = fs::read_dir(&dir)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with(".attune"))
            .collect();
        assert!(left.is_empty(), "{}: {left:?}", dir.display());
    }
}

/// base ← lib ← app (app depends on lib, lib on base), and an unrelated pack; base
/// has a Python environment (built by Install).
async fn install_chain(server: &TestServer, client: &mut Client) {
    let root = server.root.path().canonicalize().unwrap();
    let base = pack_source(&root, "base", &[], true);
    let installed = client
        .install(pb::InstallRequest {
            packs: vec![path_str(&base)],
            skip_tests: Some(true),
            timeout: Some(120),
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(installed.success, "{installed:?}");
    let lib = pack_source(&root, "lib", &["base@>=1.0"], false);
    let app = pack_source(&root, "app", &["lib"], false);
    let other = pack_source(&root, "other", &[], false);
    register(client, &[&lib, &app, &other]).await;
}

async fn refused_then_cascaded_in_reverse_dependency_order(backend: Backend) {
    let server = TestServer::start(backend).await;
    let mut client = server.client().await;
    install_chain(&server, &mut client).await;
    let base_dir = server.state.config.packs_base_dir();
    let envs = base_dir.join(".envs").join("base");
    assert!(
        envs.join("python").exists(),
        "Install built base's environment"
    );
    let before = snapshot(&server).await;

    // Refused: the error names the dependent and the fix; nothing changed.
    let refused = remove(&mut client, &["base"], false, false, false).await;
    assert!(!refused.success);
    assert!(refused.removed.is_empty());
    assert_eq!(refused.errors.len(), 1);
    let error = &refused.errors[0];
    assert_eq!(
        (error.r#ref.as_str(), error.reason.as_str()),
        ("base", "has_dependents")
    );
    assert_eq!(error.dependents, ["lib"]);
    assert!(
        error.message.contains("'lib'") || error.message.contains("lib"),
        "{}",
        error.message
    );
    assert!(error.message.contains("cascade"), "{}", error.message);
    // One dependent: singular words.
    assert!(
        error
            .message
            .contains("is required by installed pack lib: remove it too"),
        "{}",
        error.message
    );
    assert_eq!(snapshot(&server).await, before);

    // An unknown ref refuses the whole request.
    let unknown = remove(&mut client, &["other", "nope"], false, false, false).await;
    assert!(!unknown.success);
    assert_eq!(unknown.errors.len(), 1);
    assert_eq!(unknown.errors[0].message, "pack 'nope' is not installed");
    assert_eq!(unknown.errors[0].reason, "not_installed");
    assert_eq!(snapshot(&server).await, before);

    // Malformed requests are INVALID_ARGUMENT.
    for refs in [vec![], vec!["Not A Ref".to_string()]] {
        let err = client
            .remove_packs(pb::RemovePacksRequest {
                refs,
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(
            err.status().unwrap().code(),
            tonic::Code::InvalidArgument,
            "{err}"
        );
    }

    // Dry run: exactly what would go, nothing changed.
    let dry = remove(&mut client, &["base"], true, false, true).await;
    assert!(dry.success && dry.dry_run, "{dry:?}");
    let order: Vec<&str> = dry.removed.iter().map(|p| p.r#ref.as_str()).collect();
    assert_eq!(order, ["app", "lib", "base"]);
    assert_eq!(
        dry.removed.iter().map(|p| p.dependent).collect::<Vec<_>>(),
        [true, true, false]
    );
    let base_entry = &dry.removed[2];
    assert_eq!(base_entry.storage_path, path_str(&base_dir.join("base")));
    assert_eq!(base_entry.environments, [path_str(&envs.join("python"))]);
    assert_eq!(snapshot(&server).await, before);

    // Cascade: dependents first; rows, components, files and environments all gone.
    let ids: Vec<i64> = dry.removed.iter().map(|p| p.pack_id).collect();
    let removed = remove(&mut client, &["base"], true, false, false).await;
    assert!(removed.success, "{removed:?}");
    let order: Vec<&str> = removed.removed.iter().map(|p| p.r#ref.as_str()).collect();
    assert_eq!(order, ["app", "lib", "base"]);
    let db = &server.state.db;
    assert_eq!(
        strings(db, "SELECT ref FROM packs ORDER BY ref").await,
        ["other"]
    );
    for id in &ids {
        let left = scalar(
            db,
            &format!("SELECT COUNT(*) FROM components WHERE pack_id = {id}"),
        )
        .await;
        assert_eq!(left, 0, "components of pack {id}");
    }
    assert_eq!(scalar(db, "SELECT COUNT(*) FROM components").await, 1);
    for pack in ["app", "lib", "base"] {
        assert!(!base_dir.join(pack).exists(), "{pack}'s files");
    }
    assert!(base_dir.join("other").join("pack.yaml").exists());
    assert!(!envs.exists(), "base's environments");
    assert_nothing_left(&server.state.config.data_dir_absolute(), &base_dir);

    // One succeeded history row and one pack.deleted event per pack, in order.
    let history = strings(
        db,
        "SELECT pack_ref || ' ' || action || ' ' || outcome || ' ' || from_version || ' ' || \
         COALESCE(actor, '-') || ' ' || COALESCE(to_version, '-') FROM pack_history \
         WHERE action = 'remove' ORDER BY id",
    )
    .await;
    assert_eq!(
        history,
        [
            "app remove succeeded 1.0.0 tester -",
            "lib remove succeeded 1.0.0 tester -",
            "base remove succeeded 1.0.0 tester -",
        ]
    );
    let events = strings(
        db,
        "SELECT payload FROM event_outbox WHERE event_type = 'pack.deleted' ORDER BY id",
    )
    .await;
    let events: Vec<Value> = events
        .iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    assert_eq!(events.len(), 3);
    for ((event, pack), id) in events.iter().zip(["app", "lib", "base"]).zip(&ids) {
        assert_eq!(event["pack_ref"], pack);
        assert_eq!(event["pack_id"], *id);
    }

    // Removing it again: not installed.
    let again = remove(&mut client, &["base"], false, false, false).await;
    assert_eq!(again.errors[0].reason, "not_installed");
    server.stop().await;
}
on_both_backends!(refused_then_cascaded_in_reverse_dependency_order);

async fn force_removes_and_leaves_the_dependent(backend: Backend) {
    let server = TestServer::start(backend).await;
    let mut client = server.client().await;
    let root = server.root.path().canonicalize().unwrap();
    let base = pack_source(&root, "base", &[], false);
    let lib = pack_source(&root, "lib", &["base"], false);
    register(&mut client, &[&base, &lib]).await;
    let forced = remove(&mut client, &["base"], false, true, false).await;
    assert!(forced.success, "{forced:?}");
    assert_eq!(forced.removed.len(), 1);
    assert_eq!(forced.removed[0].left_dependents, ["lib"]);
    let db = &server.state.db;
    assert_eq!(strings(db, "SELECT ref FROM packs").await, ["lib"]);
    let detail = strings(
        db,
        "SELECT detail FROM pack_history WHERE action = 'remove'",
    )
    .await;
    assert_eq!(detail.len(), 1);
    assert_eq!(detail[0], "forced: installed pack lib depends on it");
    let base_dir = server.state.config.packs_base_dir();
    assert!(!base_dir.join("base").exists());
    assert!(base_dir.join("lib").exists());
    server.stop().await;
}
on_both_backends!(force_removes_and_leaves_the_dependent);

async fn rest_delete_answers_like_attune(backend: Backend) {
    let server = TestServer::start(backend).await;
    let mut client = server.client().await;
    let root = server.root.path().canonicalize().unwrap();
    let base = pack_source(&root, "base", &[], false);
    let lib = pack_source(&root, "lib", &["base"], false);
    register(&mut client, &[&base, &lib]).await;
    let http = reqwest::Client::new();
    let token = server.token();
    let delete = |path: &str, auth: bool| {
        let mut request = http.delete(format!("{}{path}", server.url()));
        if auth {
            request = request.bearer_auth(&token);
        }
        async move {
            let response = request.send().await.unwrap();
            let status = response.status().as_u16();
            let body: Value = serde_json::from_str(&response.text().await.unwrap()).unwrap();
            (status, body)
        }
    };

    let (status, body) = delete("/api/v1/packs/base", false).await;
    assert_eq!(status, 401, "{body}");
    let (status, body) = delete("/api/v1/packs/base", true).await;
    assert_eq!(status, 409, "{body}");
    assert!(body["message"].as_str().unwrap().contains("lib"), "{body}");
    let (status, body) = delete("/api/v1/packs/nope", true).await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(body["message"], "pack 'nope' is not installed");
    let (status, body) = delete("/api/v1/packs/Not%20A%20Ref", true).await;
    assert_eq!(status, 400, "{body}");
    let (status, body) = delete("/api/v1/packs/lib?dry_run=maybe", true).await;
    assert_eq!(status, 400, "{body}");
    let (status, body) = delete("/api/v1/packs/base?cascade=true&dry_run=true", true).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"]["dry_run"], true);
    assert_eq!(body["data"]["removed"][0]["ref"], "lib");
    assert!(server.state.config.packs_base_dir().join("lib").exists());
    let (status, body) = delete("/api/v1/packs/lib", true).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"]["success"], true);
    assert_eq!(body["data"]["removed"][0]["ref"], "lib");

    // The batch endpoint answers with the result, refused or not.
    let post = |body: &str| {
        http.post(format!("{}/api/v1/packs/remove", server.url()))
            .bearer_auth(&token)
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
    };
    let response = post(r#"{"refs": ["base", "nope"]}"#).await.unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let body: Value = serde_json::from_str(&response.text().await.unwrap()).unwrap();
    assert_eq!(body["data"]["success"], false);
    assert_eq!(body["data"]["errors"][0]["reason"], "not_installed");
    let response = post(r#"{"refs": []}"#).await.unwrap();
    assert_eq!(response.status().as_u16(), 400);
    let response = post(r#"{"refs": ["base"]}"#).await.unwrap();
    let body: Value = serde_json::from_str(&response.text().await.unwrap()).unwrap();
    assert_eq!(body["data"]["success"], true, "{body}");
    let db = &server.state.db;
    assert!(strings(db, "SELECT ref FROM packs").await.is_empty());
    server.stop().await;
}
on_both_backends!(rest_delete_answers_like_attune);

/// `(ref)` of every registered pack, from the crash setup's database.
async fn refs_in(setup: &Setup) -> BTreeSet<String> {
    let db = setup.db().await;
    let rows = crash_loop::rows(&db).await;
    db.close().await;
    rows.into_iter().map(|(r, ..)| r).collect()
}

/// Registers alpha and installs beta and gamma (gamma with a Python environment).
async fn seed(process: &Process, setup: &Setup, n: usize) {
    for work in [Work::Register, Work::Install] {
        assert!(
            crash_loop::call(process, setup, work, n)
                .await
                .await
                .unwrap(),
            "seed {work:?}: {}",
            setup.log_text()
        );
    }
}

/// `kill -9` at random points of a removal of three packs (one with an environment),
/// with pauses between its steps: after every restart, all three are installed with
/// files, rows and environments agreeing, or all three are gone with everything
/// theirs; nothing is left aside and no intent remains.
async fn kill_nine_during_a_removal_settles_all_or_nothing(backend: Backend) {
    const KILLS: usize = 8;
    let server = TestServer::start(backend).await;
    let root = server.root.path().canonicalize().unwrap().join("crash");
    let database_url = match backend {
        Backend::Sqlite => None,
        Backend::Postgres => Some(
            server
                .state
                .config
                .database_url
                .as_ref()
                .unwrap()
                .expose()
                .to_string(),
        ),
    };
    let setup = Setup::at(root, database_url, &[(PAUSE_ENV, "80")]);
    let all: BTreeSet<String> = ["alpha", "beta", "gamma"].map(String::from).into();
    let mut process = setup.start();
    let mut n = 1;
    seed(&process, &setup, n).await;
    let (mut settled, mut kept, mut gone) = (0, 0, 0);
    for kill in 0..KILLS {
        let mut client = process.client().await;
        let pending = tokio::spawn(async move {
            client
                .remove_packs(pb::RemovePacksRequest {
                    refs: vec!["alpha".into(), "beta".into(), "gamma".into()],
                    ..Default::default()
                })
                .await
        });
        // The removal's pauses span about 700 ms.
        tokio::time::sleep(Duration::from_millis(crash_loop::random_below(900))).await;
        process.kill9();
        let _ = pending.await;
        let log_before = setup.log_text().len();
        process = setup.start();
        let log = setup.log_text();
        settled += usize::from(
            log.get(log_before..)
                .unwrap_or_default()
                .contains("settled removals a crash interrupted"),
        );
        let context = format!("kill {kill}");
        let installed = refs_in(&setup).await;
        assert!(
            installed == all || installed.is_empty(),
            "{context}: a removal of three packs left {installed:?}"
        );
        crash_loop::assert_consistent(&setup, &installed, false, &context).await;
        assert_nothing_left(&setup.data, &setup.base());
        if installed.is_empty() {
            gone += 1;
            for pack in &all {
                assert!(
                    !setup.base().join(pack).exists(),
                    "{context}: {pack}'s files"
                );
                assert!(
                    !setup.base().join(".envs").join(pack).exists(),
                    "{context}: {pack}'s environments"
                );
            }
            n += 1;
            seed(&process, &setup, n).await;
        } else {
            kept += 1;
        }
    }
    eprintln!(
        "{backend:?}: {KILLS} kills; {kept} kept, {gone} removed, {settled} settled at restart"
    );
    assert!(
        settled >= 1,
        "no kill landed inside a removal:\n{}",
        setup.log_text()
    );
    // Afterwards a removal runs to its end.
    let mut client = process.client().await;
    let done = client
        .remove_packs(pb::RemovePacksRequest {
            refs: vec!["alpha".into(), "beta".into(), "gamma".into()],
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(done.success, "{done:?}");
    assert!(refs_in(&setup).await.is_empty());
    assert_nothing_left(&setup.data, &setup.base());
    drop(process);
    server.stop().await;
}
on_both_backends!(kill_nine_during_a_removal_settles_all_or_nothing);

/// Makes the database refuse a removal's history row inside its transaction, so that
/// the write fails after the packs were moved aside.
async fn refuse_removal_rows(db: &Db) {
    match db {
        Db::Sqlite(pool) => {
            sqlx::query(
                "CREATE TRIGGER refuse_removal BEFORE INSERT ON pack_history \
                 WHEN NEW.action = 'remove' AND NEW.outcome = 'succeeded' \
                 BEGIN SELECT RAISE(ABORT, 'injected failure'); END",
            )
            .execute(pool)
            .await
            .unwrap();
        }
        Db::Postgres(pool) => {
            sqlx::query(
                "CREATE FUNCTION refuse_removal() RETURNS trigger LANGUAGE plpgsql AS $$ \
                 BEGIN IF NEW.action = 'remove' AND NEW.outcome = 'succeeded' THEN \
                 RAISE EXCEPTION 'injected failure'; END IF; RETURN NEW; END $$",
            )
            .execute(pool)
            .await
            .unwrap();
            sqlx::query(
                "CREATE TRIGGER refuse_removal BEFORE INSERT ON pack_history \
                 FOR EACH ROW EXECUTE FUNCTION refuse_removal()",
            )
            .execute(pool)
            .await
            .unwrap();
        }
    }
}

/// A removal whose transaction fails after the packs were moved aside puts every file
/// and environment back, keeps every row, announces nothing, and records a failed
/// history row per pack.
async fn a_failed_write_puts_everything_back_and_records_the_failure(backend: Backend) {
    let server = TestServer::start(backend).await;
    let mut client = server.client().await;
    install_chain(&server, &mut client).await;
    let base_dir = server.state.config.packs_base_dir();
    let envs = base_dir.join(".envs").join("base");
    let before = snapshot(&server).await;
    let env_tree = tree(&envs);
    assert!(!env_tree.is_empty());
    refuse_removal_rows(&server.state.db).await;

    let failed = remove(&mut client, &["base"], true, false, false).await;
    assert!(!failed.success, "{failed:?}");
    assert!(failed.removed.is_empty());
    assert_eq!(failed.errors.len(), 1);
    assert_eq!(failed.errors[0].reason, "failed");
    assert!(
        failed.errors[0].message.contains("nothing was removed")
            && failed.errors[0].message.contains("injected failure"),
        "{}",
        failed.errors[0].message
    );
    let after = snapshot(&server).await;
    assert_eq!(after.packs, before.packs);
    assert_eq!(after.components, before.components);
    assert_eq!(
        after.events, before.events,
        "a failed removal announces nothing"
    );
    assert_eq!(after.files, before.files);
    assert_eq!(tree(&envs), env_tree);
    assert!(envs.join("python").join("bin").join("python").exists());
    assert_nothing_left(&server.state.config.data_dir_absolute(), &base_dir);
    let history = strings(
        &server.state.db,
        "SELECT pack_ref || ' ' || outcome FROM pack_history WHERE action = 'remove' ORDER BY id",
    )
    .await;
    assert_eq!(history, ["app failed", "lib failed", "base failed"]);
    server.stop().await;
}
on_both_backends!(a_failed_write_puts_everything_back_and_records_the_failure);

/// The versions kept for a pack's rollback go with it: rows and directories; its
/// history stays.
async fn kept_versions_go_with_the_pack(backend: Backend) {
    let server = TestServer::start(backend).await;
    let mut client = server.client().await;
    let root = server.root.path().canonicalize().unwrap();
    let base = pack_source(&root, "base", &[], false);
    register(&mut client, &[&base]).await;
    // A kept version as rollback leaves one: a row naming a copy of the files.
    let kept = root.join("kept").join("base-0.9.0");
    write_tree(&kept, &[("pack.yaml", "ref: base\nversion: \"0.9.0\"\n")]);
    let insert = "INSERT INTO pack_versions (pack_ref, version, files_path, pack_row, components, \
                  kept_at) VALUES ('base', '0.9.0', $1, '{}', '[]', 0)";
    match &server.state.db {
        Db::Sqlite(pool) => {
            sqlx::query(insert)
                .bind(path_str(&kept))
                .execute(pool)
                .await
                .unwrap();
        }
        Db::Postgres(pool) => {
            sqlx::query(insert)
                .bind(path_str(&kept))
                .execute(pool)
                .await
                .unwrap();
        }
    }
    let dry = remove(&mut client, &["base"], false, false, true).await;
    assert_eq!(dry.removed[0].kept_versions, ["0.9.0"]);
    assert!(kept.exists());
    let removed = remove(&mut client, &["base"], false, false, false).await;
    assert!(removed.success, "{removed:?}");
    assert!(!kept.exists(), "the kept version's files");
    let db = &server.state.db;
    assert_eq!(scalar(db, "SELECT COUNT(*) FROM pack_versions").await, 0);
    let history = strings(
        db,
        "SELECT action FROM pack_history WHERE pack_ref = 'base' ORDER BY id",
    )
    .await;
    assert_eq!(history.last().map(String::as_str), Some("remove"));
    server.stop().await;
}
on_both_backends!(kept_versions_go_with_the_pack);

/// Removal asides a dead server left without an intent here (another server sharing
/// the packs directory): the rows decide at start. A registered pack whose directory
/// is missing gets it back; an aside of a pack without a row is deleted.
async fn a_start_settles_removal_asides_without_an_intent(backend: Backend) {
    let server = TestServer::start(backend).await;
    let root = server.root.path().canonicalize().unwrap().join("crash");
    let database_url = match backend {
        Backend::Sqlite => None,
        Backend::Postgres => Some(
            server
                .state
                .config
                .database_url
                .as_ref()
                .unwrap()
                .expose()
                .to_string(),
        ),
    };
    let setup = Setup::at(root, database_url, &[]);
    let process = setup.start();
    seed(&process, &setup, 1).await;
    drop(process);
    let boot = attune_packs_server::journal::owner_marker()
        .split('-')
        .next()
        .unwrap()
        .to_string();
    let dead = format!("{boot}-999999999-1");
    let base = setup.base();
    // alpha: moved aside, row kept (the removal never committed).
    let alpha_aside = base.join(format!(".attune-removed.{dead}.aa.alpha"));
    fs::rename(base.join("alpha"), &alpha_aside).unwrap();
    // gamma: files and environments aside, row gone (the removal committed).
    let gamma_aside = base.join(format!(".attune-removed.{dead}.bb.gamma"));
    let gamma_envs_aside = base
        .join(".envs")
        .join(format!(".attune-removed.{dead}.cc.gamma"));
    fs::rename(base.join("gamma"), &gamma_aside).unwrap();
    fs::rename(base.join(".envs").join("gamma"), &gamma_envs_aside).unwrap();
    let db = setup.db().await;
    match &db {
        Db::Sqlite(pool) => {
            sqlx::query("DELETE FROM packs WHERE ref = 'gamma'")
                .execute(pool)
                .await
                .unwrap();
        }
        Db::Postgres(pool) => {
            sqlx::query("DELETE FROM packs WHERE ref = 'gamma'")
                .execute(pool)
                .await
                .unwrap();
        }
    }
    db.close().await;

    let process = setup.start();
    let expected: BTreeSet<String> = ["alpha", "beta"].map(String::from).into();
    assert_eq!(refs_in(&setup).await, expected);
    crash_loop::assert_consistent(&setup, &expected, false, "restarted").await;
    assert_nothing_left(&setup.data, &base);
    assert!(base.join("alpha").join("pack.yaml").exists());
    assert!(!gamma_aside.exists() && !gamma_envs_aside.exists());
    drop(process);
    server.stop().await;
}
on_both_backends!(a_start_settles_removal_asides_without_an_intent);
