//! Crash consistency with the shipped binary: `kill -9` at random points of
//! RegisterBatch, Install and Download, then a restart must leave rows, files and
//! recorded checksums agreeing, no version lost and no work directory behind; a
//! PostgreSQL row lock holding a registration between its swap and its commit; SIGTERM
//! stopping within its bound and cleaning up.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use attune_packs_client::{Client, pb};
use attune_packs_server::{
    auth::Authenticator,
    checksum,
    config::Secret,
    fault::PAUSE_ENV,
    journal::{JOURNAL_DIR, WorkName},
    store::Db,
};
use sqlx::Connection;

use crate::{
    common::{Backend, SECRET, TestServer, on_both_backends, path_str},
    support::packs::write_tree,
};

const SERVER: &str = env!("CARGO_BIN_EXE_attune-packs-server");

/// Where one test's server keeps everything, and how it is started.
struct Setup {
    root: PathBuf,
    data: PathBuf,
    database_url: String,
    env: Vec<(String, String)>,
    log: PathBuf,
}

struct Process {
    child: Child,
    addr: String,
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Process {
    fn kill9(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    async fn client(&self) -> Client {
        let token =
            Authenticator::new(&Secret::new(SECRET)).issue("crash", Duration::from_secs(3600));
        Client::connect(&self.url(), &token).await.unwrap()
    }

    /// Waits for the process to exit, at most `bound`; its exit status and how long it took.
    fn wait_exit(&mut self, bound: Duration) -> (std::process::ExitStatus, Duration) {
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return (status, started.elapsed());
            }
            assert!(
                started.elapsed() < bound,
                "the server did not exit within {bound:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Setup {
    /// `server` only provides (and later drops) a fresh PostgreSQL database.
    fn new(server: &TestServer, backend: Backend, env: &[(&str, &str)]) -> Setup {
        let root = server.root.path().canonicalize().unwrap().join("crash");
        let data = root.join("data");
        fs::create_dir_all(&data).unwrap();
        let database_url = match backend {
            Backend::Sqlite => format!("sqlite://{}", data.join("attune-packs.db").display()),
            Backend::Postgres => server
                .state
                .config
                .database_url
                .as_ref()
                .expect("a PostgreSQL test server has a URL")
                .expose()
                .to_string(),
        };
        Setup {
            log: root.join("server.log"),
            root,
            data,
            database_url,
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    fn base(&self) -> PathBuf {
        self.data.join("packs")
    }

    fn downloads(&self) -> PathBuf {
        self.root.join("downloads")
    }

    fn start(&self) -> Process {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let addr = format!("127.0.0.1:{port}");
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = Command::new(SERVER)
            .args(["serve", "--listen", &addr, "--data-dir"])
            .arg(&self.data)
            .env(
                "ATTUNE_PACKS_ALLOWED_ROOTS",
                format!("[{}]", self.root.display()),
            )
            .env("ATTUNE_PACKS_JWT_SECRET", SECRET)
            .env("ATTUNE_PACKS_DATABASE_URL", &self.database_url)
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()
            .unwrap();
        let mut process = Process { child, addr };
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(&process.addr).is_err() {
            if let Some(status) = process.child.try_wait().unwrap() {
                panic!("the server exited ({status}): {}", self.log_text());
            }
            assert!(Instant::now() < deadline, "the server did not listen");
            std::thread::sleep(Duration::from_millis(20));
        }
        process
    }

    fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    async fn db(&self) -> Db {
        Db::connect(&self.database_url).await.unwrap()
    }
}

/// `(ref, version, checksum, storage_path)` of every registered pack.
async fn rows(db: &Db) -> Vec<(String, String, Option<String>, String)> {
    const SQL: &str = "SELECT ref, version, checksum, storage_path FROM packs ORDER BY ref";
    match db {
        Db::Sqlite(pool) => sqlx::query_as(SQL).fetch_all(pool).await.unwrap(),
        Db::Postgres(pool) => sqlx::query_as(SQL).fetch_all(pool).await.unwrap(),
    }
}

fn dir_checksum(dir: &Path) -> Option<String> {
    checksum::directory_checksum(dir)
        .ok()
        .map(|c| checksum::checksum_prefixed(&c))
}

/// Source directories of `pack_ref` in versions `1.0.<n>`: `<root>/src/<ref>-<n>/<ref>`.
fn source(root: &Path, pack_ref: &str, n: usize) -> PathBuf {
    let dir = root
        .join("src")
        .join(format!("{pack_ref}-{n}"))
        .join(pack_ref);
    if !dir.exists() {
        let mut files = vec![(
            "pack.yaml".to_string(),
            format!("ref: {pack_ref}\nlabel: {pack_ref}\nversion: \"1.0.{n}\"\n"),
        )];
        for a in 0..4 {
            files.push((
                format!("actions/a{a}.yaml"),
                format!("ref: {pack_ref}.a{a}\nrunner_type: shell\nentry_point: a{a}.sh\n"),
            ));
            files.push((format!("actions/a{a}.sh"), format!("echo {n} {a}\n")));
        }
        // Content that differs per version beyond pack.yaml, so mixed trees show.
        files.push(("data.txt".into(), format!("{n}\n").repeat(2000)));
        write_tree(&dir, &files);
    }
    dir
}

/// Names of work directories (ours and older servers') and intents left anywhere.
fn leftovers(setup: &Setup) -> Vec<String> {
    let mut found = Vec::new();
    for dir in [setup.base(), setup.downloads(), setup.data.clone()] {
        let Ok(entries) = fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if WorkName::parse_any(&name).is_some() || name.starts_with(".attune") {
                found.push(e.path().display().to_string());
            }
        }
    }
    if let Ok(entries) = fs::read_dir(setup.data.join(JOURNAL_DIR)) {
        for e in entries.flatten() {
            if e.file_name().to_string_lossy().starts_with("intent.") {
                found.push(e.path().display().to_string());
            }
        }
    }
    found
}

/// Rows, files and checksums agree; every ref in `registered` still has a row; the
/// download destination holds a whole version; nothing is left behind. Returns the
/// registered version of each ref.
async fn assert_consistent(
    setup: &Setup,
    registered: &BTreeSet<String>,
    downloaded: bool,
    context: &str,
) -> BTreeMap<String, String> {
    let db = setup.db().await;
    let rows = rows(&db).await;
    db.close().await;
    let mut versions = BTreeMap::new();
    for (pack_ref, version, recorded, storage) in rows {
        let storage = PathBuf::from(storage);
        let on_disk = dir_checksum(&storage);
        assert_eq!(
            on_disk,
            recorded,
            "{context}: files of '{pack_ref}' at {} do not match its row (version {version})",
            storage.display()
        );
        let manifest = fs::read_to_string(storage.join("pack.yaml")).unwrap();
        assert!(
            manifest.contains(&format!("\"{version}\"")),
            "{context}: row {version}, pack.yaml {manifest}"
        );
        versions.insert(pack_ref, version);
    }
    for pack_ref in registered {
        assert!(
            versions.contains_key(pack_ref),
            "{context}: '{pack_ref}' was registered and is gone"
        );
    }
    if downloaded {
        let placed = setup.downloads().join("alpha");
        let version = fs::read_to_string(placed.join("pack.yaml")).unwrap_or_else(|e| {
            panic!("{context}: the downloaded pack is gone: {e}");
        });
        let n: usize = version
            .split("1.0.")
            .nth(1)
            .and_then(|v| v.trim().trim_end_matches('"').parse().ok())
            .unwrap();
        assert_eq!(
            dir_checksum(&placed),
            dir_checksum(&source(&setup.root, "alpha", n)),
            "{context}: the downloaded pack is not a whole version"
        );
    }
    let left = leftovers(setup);
    assert!(left.is_empty(), "{context}: left behind: {left:#?}");
    versions
}

#[derive(Debug, Clone, Copy)]
enum Work {
    Register,
    Install,
    Download,
}

/// Starts `work` of version `n` against `process`, forced, tests skipped.
async fn call(
    process: &Process,
    setup: &Setup,
    work: Work,
    n: usize,
) -> tokio::task::JoinHandle<bool> {
    let mut client = process.client().await;
    let root = setup.root.clone();
    let downloads = path_str(&setup.downloads());
    tokio::spawn(async move {
        match work {
            Work::Register => client
                .register_batch(pb::RegisterBatchRequest {
                    pack_paths: vec![path_str(&source(&root, "alpha", n))],
                    force: Some(true),
                    skip_tests: Some(true),
                    ..Default::default()
                })
                .await
                .is_ok_and(|r| r.failed_packs.is_empty()),
            Work::Install => client
                .install(pb::InstallRequest {
                    packs: vec![
                        path_str(&source(&root, "beta", n)),
                        path_str(&source(&root, "gamma", n)),
                    ],
                    force: Some(true),
                    skip_tests: Some(true),
                    timeout: Some(60),
                    ..Default::default()
                })
                .await
                .is_ok_and(|r| r.success),
            Work::Download => client
                .download(pb::DownloadRequest {
                    packs: vec![path_str(&source(&root, "alpha", n))],
                    destination_dir: downloads,
                    force: Some(true),
                    timeout: Some(60),
                    ..Default::default()
                })
                .await
                .is_ok_and(|r| r.failed_packs.is_empty()),
        }
    })
}

fn random_below(bound: u64) -> u64 {
    let mut bytes = [0u8; 8];
    getrandom::fill(&mut bytes).unwrap();
    u64::from_le_bytes(bytes) % bound
}

/// 36 `kill -9`s per backend, spread over RegisterBatch, Install and Download, each
/// 0–300 ms into the call; a pause between the steps of every swap (test builds only)
/// makes many of them land between a rename and the commit.
async fn kill_nine_at_random_points_never_loses_or_mixes_a_version(backend: Backend) {
    const KILLS: usize = 36;
    let server = TestServer::start(backend).await;
    let setup = Setup::new(&server, backend, &[(PAUSE_ENV, "30")]);
    fs::create_dir_all(setup.downloads()).unwrap();
    let process = setup.start();
    for work in [Work::Register, Work::Install, Work::Download] {
        assert!(
            call(&process, &setup, work, 1).await.await.unwrap(),
            "seed {work:?}"
        );
    }
    let registered: BTreeSet<String> = ["alpha", "beta", "gamma"].map(String::from).into();
    let downloaded = true;
    let mut process = Some(process);

    for kill in 0..KILLS {
        let work = [Work::Register, Work::Install, Work::Download][kill % 3];
        let running = process.take().unwrap_or_else(|| setup.start());
        let context = format!("kill {kill} ({work:?})");
        let pending = call(&running, &setup, work, kill + 2).await;
        tokio::time::sleep(Duration::from_millis(random_below(300))).await;
        running.kill9();
        let _ = pending.await;
        // The restart settles what the kill interrupted before it listens.
        process = Some(setup.start());
        assert_consistent(&setup, &registered, downloaded, &context).await;
    }

    // Registering, installing and downloading again all work.
    let process = process.unwrap();
    for work in [Work::Register, Work::Install, Work::Download] {
        assert!(
            call(&process, &setup, work, 100).await.await.unwrap(),
            "after the kills: {work:?}"
        );
    }
    let versions = assert_consistent(&setup, &registered, true, "after the kills").await;
    for pack_ref in ["alpha", "beta", "gamma"] {
        assert_eq!(versions[pack_ref], "1.0.100");
    }
    // The kills did land inside swaps: the restarts had registrations to settle.
    let log = setup.log_text();
    let settled = log
        .matches("settled registrations a crash interrupted")
        .count();
    let installs = log
        .lines()
        .filter(|l| l.contains("settled registrations") && l.contains("beta"))
        .count();
    let put_back = log.matches("put back or settled pack directories").count();
    let swept = log
        .matches("removed work directories left by stopped processes")
        .count();
    eprintln!(
        "{backend:?}: {KILLS} kills; restarts settled {settled} swaps ({installs} of Install), \
         put back {put_back} Download backups, removed work directories {swept} times"
    );
    assert!(
        settled >= 2,
        "only {settled} restarts settled a swap:\n{log}"
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

/// The reproduction of the report: files of v2 swapped in, the transaction blocked by a
/// row lock, `kill -9`. The restart puts v1's files back, matching v1's rows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_while_a_row_lock_holds_the_commit_restarts_on_the_old_version() {
    if !crate::common::postgres_available() {
        return;
    }
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

/// SIGTERM while a pack's tests run: the call is cancelled with UNAVAILABLE, its
/// test processes are killed, its staged copy removed, and the server exits well within
/// `shutdown_grace`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
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

/// A registration stuck between its swap and its commit (a row lock) is waited for, but
/// only until `shutdown_grace`; a second SIGTERM exits at once. Either way the next start
/// settles the swap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stuck_commit_holds_shutdown_only_until_the_deadline_or_a_second_signal() {
    if !crate::common::postgres_available() {
        return;
    }
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

/// Two servers share a PostgreSQL database and a packs directory. One is killed between
/// its swap and its commit; the other registers the same pack before the first comes
/// back: it settles the dead server's swap first (the rows say it never committed), so
/// its own registration ends consistent, and the first server's restart has nothing
/// left to undo.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_server_settles_the_swap_a_killed_one_left_in_a_shared_directory() {
    if !crate::common::postgres_available() {
        return;
    }
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
        .filter(|n| n != "alpha")
        .collect();
    assert!(in_shared.is_empty(), "{in_shared:?}");
    drop(other);

    let restarted = first.start();
    let versions = assert_consistent(&first, &registered, false, "first restarted").await;
    assert_eq!(versions["alpha"], "1.0.3");
    drop(restarted);
    server.stop().await;
}
