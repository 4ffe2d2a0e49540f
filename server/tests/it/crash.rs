//! Crash consistency with the shipped binary: `kill -9` at random points of
//! RegisterBatch, Install and Download, then a restart must leave rows, files and
//! recorded checksums agreeing, no version lost and no work directory behind; a
//! PostgreSQL row lock holding a registration between its swap and its commit; SIGTERM
//! stopping within its bound and cleaning up.

use std::{
    collections::BTreeSet,
    fs,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use attune_packs_client::pb;
use attune_packs_server::fault::PAUSE_ENV;
use sqlx::Connection;

use crate::{
    common::{Backend, TestServer, on_both_backends},
    crash_loop::*,
    support::packs::write_tree,
};

impl Setup {
    /// `server` only provides (and later drops) a fresh PostgreSQL database.
    fn new(server: &TestServer, backend: Backend, env: &[(&str, &str)]) -> Setup {
        let root = server.root.path().canonicalize().unwrap().join("crash");
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
        Setup::at(root, database_url, env)
    }
}

/// 36 `kill -9`s per backend, spread over RegisterBatch, Install and Download (see
/// [`kill_loop`]); after every restart rows, files, checksums and environments agree.
async fn kill_nine_at_random_points_never_loses_or_mixes_a_version(backend: Backend) {
    const KILLS: usize = 36;
    let server = TestServer::start(backend).await;
    let setup = Setup::new(&server, backend, &[(PAUSE_ENV, "30")]);
    let (process, stats) = kill_loop(&setup, KILLS).await;
    eprintln!(
        "{backend:?}: {KILLS} kills; {} landed inside a directory swap, {} inside an \
         environment switch; restarts removed work directories {} times",
        stats.in_swap, stats.env_settled, stats.swept
    );
    // The kills did land inside swaps and switches: the restarts had work to settle.
    assert!(
        stats.in_swap >= 2 && stats.env_settled >= 1,
        "too few restarts settled anything ({stats:?}):\n{}",
        setup.log_text()
    );
    drop(process);
    server.stop().await;
}
on_both_backends!(kill_nine_at_random_points_never_loses_or_mixes_a_version);

/// Opens a connection holding `FOR UPDATE` on the pack's row.
async fn lock_row(url: &str, pack_ref: &str) -> sqlx::PgConnection {
    let mut conn = sqlx::PgConnection::connect(url).await.unwrap();
    sqlx::query("BEGIN").execute(&mut conn).await.unwrap();
    sqlx::query("SELECT id FROM packs WHERE ref = $1 FOR UPDATE")
        .bind(pack_ref)
        .execute(&mut conn)
        .await
        .unwrap();
    conn
}

/// Waits until `<target>/pack.yaml` holds `version`: the swap is done and the
/// transaction waits on the row lock.
fn wait_for_version(target: &Path, version: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if fs::read_to_string(target.join("pack.yaml")).is_ok_and(|t| t.contains(version)) {
            return;
        }
        assert!(Instant::now() < deadline, "the swap did not happen");
        std::thread::sleep(Duration::from_millis(10));
    }
}

register_test!(
    killed_while_a_row_lock_holds_the_commit_restarts_on_the_old_version,
    requires = [Postgres]
);
/// The reproduction of the report: files of v2 swapped in, the transaction blocked by a
/// row lock, `kill -9`. The restart puts v1's files back, matching v1's rows.
async fn killed_while_a_row_lock_holds_the_commit_restarts_on_the_old_version() {
    let server = TestServer::start(Backend::Postgres).await;
    let setup = Setup::new(&server, Backend::Postgres, &[]);
    let process = setup.start();
    assert!(
        call(&process, &setup, Work::Register, 1)
            .await
            .await
            .unwrap()
    );
    let v1 = dir_checksum(&source(&setup.root, "alpha", 1));
    let registered = BTreeSet::from(["alpha".to_string()]);

    let lock = lock_row(&setup.database_url, "alpha").await;
    let pending = call(&process, &setup, Work::Register, 2).await;
    wait_for_version(&setup.base().join("alpha"), "1.0.2");
    process.kill9();
    let _ = pending.await;
    lock.close().await.unwrap();

    let process = setup.start();
    let versions = assert_consistent(&setup, &registered, false, "after the kill").await;
    assert_eq!(versions["alpha"], "1.0.1");
    assert_eq!(dir_checksum(&setup.base().join("alpha")), v1);
    assert!(
        setup
            .log_text()
            .contains("settled registrations a crash interrupted")
    );

    // Registering v2 again works.
    assert!(
        call(&process, &setup, Work::Register, 2)
            .await
            .await
            .unwrap()
    );
    let versions = assert_consistent(&setup, &registered, false, "re-registered").await;
    assert_eq!(versions["alpha"], "1.0.2");
    drop(process);
    server.stop().await;
}

/// A pack whose test runs `sleep <marker>`: the marker finds the process in /proc.
fn sleeping_pack(root: &Path, marker: &str) -> PathBuf {
    let dir = root.join("src").join("sleepy");
    write_tree(
        &dir,
        &[
            (
                "pack.yaml".to_string(),
                "ref: sleepy\nlabel: sleepy\nversion: \"1.0.0\"\ntesting:\n  enabled: true\n  runners:\n    shell:\n      type: script\n      entry_point: tests/run.sh\n"
                    .to_string(),
            ),
            ("tests/run.sh".to_string(), format!("sleep {marker}\n")),
        ],
    );
    dir
}

fn processes_running(marker: &str) -> Vec<i32> {
    let mut pids = Vec::new();
    for e in fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let cmdline = fs::read(e.path().join("cmdline")).unwrap_or_default();
        if String::from_utf8_lossy(&cmdline).contains(marker) {
            pids.push(pid);
        }
    }
    pids
}

register_test!(sigterm_cancels_running_calls_and_exits_within_the_grace_period);
/// SIGTERM while a pack's tests run: the call is cancelled with UNAVAILABLE, its
/// test processes are killed, its staged copy removed, and the server exits well within
/// `shutdown_grace`.
async fn sigterm_cancels_running_calls_and_exits_within_the_grace_period() {
    let server = TestServer::start(Backend::Sqlite).await;
    let setup = Setup::new(
        &server,
        Backend::Sqlite,
        &[("ATTUNE_PACKS_SHUTDOWN_GRACE", "20s")],
    );
    let marker = format!("3600.{}", random_below(1_000_000_000));
    let pack = sleeping_pack(&setup.root, &marker);
    let mut process = setup.start();
    let mut client = process.client().await;
    let stream = client
        .register_batch_stream(pb::RegisterBatchRequest {
            pack_paths: vec![path_str(&pack)],
            ..Default::default()
        })
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while processes_running(&marker).is_empty() {
        assert!(Instant::now() < deadline, "the pack's test did not start");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let staged = leftovers(&setup);
    assert_eq!(staged.len(), 1, "the staged copy exists: {staged:?}");

    // SAFETY: plain kill(2) on our own child.
    assert_eq!(unsafe { libc::kill(process.pid(), libc::SIGTERM) }, 0);
    let outcome = attune_packs_client::finish(stream, |_| {}).await;
    let status = match outcome {
        Err(attune_packs_client::ClientError::Status(status)) => status,
        Err(other) => panic!("expected UNAVAILABLE, got {other}"),
        Ok(_) => panic!("expected UNAVAILABLE, got a result"),
    };
    assert_eq!(status.code(), tonic::Code::Unavailable);
    assert!(
        status.message().contains("shutting down"),
        "{}",
        status.message()
    );
    let (exit, took) = process.wait_exit(Duration::from_secs(20));
    assert!(exit.success(), "{exit}");
    assert!(took < Duration::from_secs(10), "took {took:?}");
    assert!(
        processes_running(&marker).is_empty(),
        "the pack's test outlived the server"
    );
    let left = leftovers(&setup);
    assert!(left.is_empty(), "left behind: {left:#?}");
    let db = setup.db().await;
    assert!(
        rows(&db).await.is_empty(),
        "a cancelled registration left rows"
    );
    db.close().await;
    drop(process);
    server.stop().await;
}

register_test!(
    a_stuck_commit_holds_shutdown_only_until_the_deadline_or_a_second_signal,
    requires = [Postgres]
);
/// A registration stuck between its swap and its commit (a row lock) is waited for, but
/// only until `shutdown_grace`; a second SIGTERM exits at once. Either way the next start
/// settles the swap.
async fn a_stuck_commit_holds_shutdown_only_until_the_deadline_or_a_second_signal() {
    let server = TestServer::start(Backend::Postgres).await;
    let setup = Setup::new(
        &server,
        Backend::Postgres,
        &[("ATTUNE_PACKS_SHUTDOWN_GRACE", "3s")],
    );
    let registered = BTreeSet::from(["alpha".to_string()]);
    let process = setup.start();
    assert!(
        call(&process, &setup, Work::Register, 1)
            .await
            .await
            .unwrap()
    );
    drop(process);

    for (round, second_signal) in [(2usize, false), (3, true)] {
        let mut process = setup.start();
        let lock = lock_row(&setup.database_url, "alpha").await;
        let pending = call(&process, &setup, Work::Register, round).await;
        wait_for_version(&setup.base().join("alpha"), &format!("1.0.{round}"));
        // SAFETY: plain kill(2) on our own child.
        assert_eq!(unsafe { libc::kill(process.pid(), libc::SIGTERM) }, 0);
        if second_signal {
            tokio::time::sleep(Duration::from_millis(300)).await;
            assert!(
                process.child.try_wait().unwrap().is_none(),
                "waits for the commit"
            );
            assert_eq!(unsafe { libc::kill(process.pid(), libc::SIGTERM) }, 0);
            let (exit, took) = process.wait_exit(Duration::from_secs(10));
            assert_eq!(exit.code(), Some(130), "{exit}");
            assert!(took < Duration::from_secs(2), "took {took:?}");
        } else {
            let (exit, took) = process.wait_exit(Duration::from_secs(15));
            assert!(exit.success(), "{exit}");
            assert!(
                took >= Duration::from_millis(2500) && took < Duration::from_secs(8),
                "took {took:?} for a 3 s grace"
            );
        }
        let _ = pending.await;
        lock.close().await.unwrap();
        let process = setup.start();
        let versions =
            assert_consistent(&setup, &registered, false, &format!("round {round}")).await;
        assert_eq!(versions["alpha"], "1.0.1");
        drop(process);
    }
    server.stop().await;
}

/// Copies a directory tree (regular files only), for crafting broken states.
fn copy_dir(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for e in fs::read_dir(from).unwrap().flatten() {
        let dest = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &dest);
        } else {
            fs::copy(e.path(), dest).unwrap();
        }
    }
}

/// The state the report found after kills of a server that kept no journal — files of
/// v2, rows of v1, v1's files in `.alpha.previous-<hex>` — is repaired at start.
async fn a_start_repairs_what_a_server_without_a_journal_left(backend: Backend) {
    let server = TestServer::start(backend).await;
    let setup = Setup::new(&server, backend, &[]);
    let process = setup.start();
    assert!(
        call(&process, &setup, Work::Register, 1)
            .await
            .await
            .unwrap()
    );
    drop(process);
    let target = setup.base().join("alpha");
    fs::rename(&target, setup.base().join(".alpha.previous-0123456789ab")).unwrap();
    copy_dir(&source(&setup.root, "alpha", 2), &target);
    fs::create_dir_all(setup.base().join(".alpha.staging-0123456789ab")).unwrap();

    let process = setup.start();
    let registered = BTreeSet::from(["alpha".to_string()]);
    let versions = assert_consistent(&setup, &registered, false, "repaired").await;
    assert_eq!(versions["alpha"], "1.0.1");
    assert!(
        call(&process, &setup, Work::Register, 2)
            .await
            .await
            .unwrap()
    );
    assert_eq!(
        assert_consistent(&setup, &registered, false, "re-registered").await["alpha"],
        "1.0.2"
    );
    drop(process);
    server.stop().await;
}
on_both_backends!(a_start_repairs_what_a_server_without_a_journal_left);

register_test!(
    a_second_server_settles_the_swap_a_killed_one_left_in_a_shared_directory,
    requires = [Postgres]
);
/// Two servers share a PostgreSQL database and a packs directory. One is killed between
/// its swap and its commit; the other registers the same pack before the first comes
/// back: it settles the dead server's swap first (the rows say it never committed), so
/// its own registration ends consistent, and the first server's restart has nothing
/// left to undo.
async fn a_second_server_settles_the_swap_a_killed_one_left_in_a_shared_directory() {
    let server = TestServer::start(Backend::Postgres).await;
    let first = Setup::new(&server, Backend::Postgres, &[]);
    let mut second = Setup::new(&server, Backend::Postgres, &[]);
    second.data = first.root.join("data-second");
    second.log = first.root.join("second.log");
    // Both store packs in the first one's packs directory.
    let shared = path_str(&first.base());
    for setup in [&first, &second] {
        fs::create_dir_all(&setup.data).unwrap();
    }
    let env = ("ATTUNE_PACKS_PACKS_BASE_DIR".to_string(), shared);
    second.env.push(env.clone());
    let registered = BTreeSet::from(["alpha".to_string()]);

    let killed = first.start();
    // Running before the kill: its own start-up sweep cannot be what settles it.
    let other = second.start();
    assert!(
        call(&killed, &first, Work::Register, 1)
            .await
            .await
            .unwrap()
    );
    let lock = lock_row(&first.database_url, "alpha").await;
    let pending = call(&killed, &first, Work::Register, 2).await;
    wait_for_version(&first.base().join("alpha"), "1.0.2");
    killed.kill9();
    let _ = pending.await;
    lock.close().await.unwrap();

    assert!(
        call(&other, &second, Work::Register, 3)
            .await
            .await
            .unwrap()
    );
    // The killed server's intent waits for its restart; nothing else is left.
    let versions = assert_consistent(&second, &registered, false, "second server").await;
    assert_eq!(versions["alpha"], "1.0.3");
    let in_shared: Vec<_> = fs::read_dir(first.base())
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        // Kept previous versions live in `.history` (RollbackPack).
        .filter(|n| n != "alpha" && n != ".history")
        .collect();
    assert!(in_shared.is_empty(), "{in_shared:?}");
    drop(other);

    let restarted = first.start();
    let versions = assert_consistent(&first, &registered, false, "first restarted").await;
    assert_eq!(versions["alpha"], "1.0.3");
    drop(restarted);
    server.stop().await;
}
