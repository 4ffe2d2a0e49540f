//! The kill/restart/check loop of the crash tests, shared by the integration test
//! (`crash.rs`) and the bench (`benches/crash.rs`, which includes this file by path):
//! the shipped binary is started, given RegisterBatch, Install and Download calls,
//! killed with `kill -9` at random points, restarted, and checked: rows, files,
//! recorded checksums and environments agree, no version is lost, nothing is left.
#![allow(dead_code)]

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
    config::{Config, Secret},
    envs,
    journal::{JOURNAL_DIR, WorkName},
    store::Db,
};

/// The JWT secret every server of these tests runs with.
pub const SECRET: &str = "integration-test-secret";

pub fn path_str(p: &Path) -> String {
    p.to_str().unwrap().to_string()
}

fn write_tree(dir: &Path, files: &[(String, String)]) {
    use std::os::unix::fs::PermissionsExt;
    for (name, data) in files {
        let path = dir.join(name);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(&path, data).unwrap();
        if name.ends_with(".sh") {
            fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
        }
    }
}

pub const SERVER: &str = env!("CARGO_BIN_EXE_attune-packs-server");

/// Where one test's server keeps everything, and how it is started.
pub struct Setup {
    pub root: PathBuf,
    pub data: PathBuf,
    pub database_url: String,
    pub env: Vec<(String, String)>,
    pub log: PathBuf,
}

pub struct Process {
    pub child: Child,
    pub addr: String,
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Process {
    pub fn kill9(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub async fn client(&self) -> Client {
        let token =
            Authenticator::new(&Secret::new(SECRET)).issue("crash", Duration::from_secs(3600));
        Client::connect(&self.url(), &token).await.unwrap()
    }

    /// Waits for the process to exit, at most `bound`; its exit status and how long it took.
    pub fn wait_exit(&mut self, bound: Duration) -> (std::process::ExitStatus, Duration) {
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
    /// Everything under `root`; the server's data in `<root>/data`.
    pub fn at(root: PathBuf, database_url: Option<String>, env: &[(&str, &str)]) -> Setup {
        let data = root.join("data");
        fs::create_dir_all(&data).unwrap();
        let database_url = database_url
            .unwrap_or_else(|| format!("sqlite://{}", data.join("attune-packs.db").display()));
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

    pub fn base(&self) -> PathBuf {
        self.data.join("packs")
    }

    pub fn downloads(&self) -> PathBuf {
        self.root.join("downloads")
    }

    pub fn start(&self) -> Process {
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

    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub async fn db(&self) -> Db {
        Db::connect(&self.database_url).await.unwrap()
    }
}

/// `(ref, version, checksum, storage_path)` of every registered pack.
pub async fn rows(db: &Db) -> Vec<(String, String, Option<String>, String)> {
    const SQL: &str = "SELECT ref, version, checksum, storage_path FROM packs ORDER BY ref";
    match db {
        Db::Sqlite(pool) => sqlx::query_as(SQL).fetch_all(pool).await.unwrap(),
        Db::Postgres(pool) => sqlx::query_as(SQL).fetch_all(pool).await.unwrap(),
    }
}

pub fn dir_checksum(dir: &Path) -> Option<String> {
    checksum::directory_checksum(dir)
        .ok()
        .map(|c| checksum::checksum_prefixed(&c))
}

/// The pack of Install's pair that has a Python environment.
pub const ENV_PACK: &str = "gamma";

/// Source directories of `pack_ref` in versions `1.0.<n>`: `<root>/src/<ref>-<n>/<ref>`.
pub fn source(root: &Path, pack_ref: &str, n: usize) -> PathBuf {
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
        // A Python environment whose inputs differ per version (pip finds the
        // requirement satisfied by the virtualenv's own pip, offline), so that an
        // environment of another version shows too.
        if pack_ref == ENV_PACK {
            files.push(("requirements.txt".into(), format!("pip>=1.0.{n}\n")));
        }
        write_tree(&dir, &files);
    }
    dir
}

/// Names of work directories (ours and older servers') and intents left anywhere.
pub fn leftovers(setup: &Setup) -> Vec<String> {
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
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with("intent.") || name.starts_with("envs.") {
                found.push(e.path().display().to_string());
            }
        }
    }
    found
}

/// Rows, files and checksums agree; every ref in `registered` still has a row; the
/// download destination holds a whole version; nothing is left behind. Returns the
/// registered version of each ref.
pub async fn assert_consistent(
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
        // The environments belong to these files: built from their inputs, nothing
        // abandoned beside them.
        let settings = Config::default().build.env_settings();
        if let Err(e) =
            envs::check_envs_match(&setup.base().join(".envs"), &pack_ref, &storage, &settings)
        {
            panic!("{context}: {e}");
        }
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
pub enum Work {
    Register,
    Install,
    Download,
}

/// Starts `work` of version `n` against `process`, forced, tests skipped.
pub async fn call(
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

pub fn random_below(bound: u64) -> u64 {
    let mut bytes = [0u8; 8];
    getrandom::fill(&mut bytes).unwrap();
    u64::from_le_bytes(bytes) % bound
}

/// What a kill loop saw.
#[derive(Debug, Default)]
pub struct LoopStats {
    pub kills: usize,
    /// Restarts that finished or undid a directory swap: the kill landed inside one.
    pub in_swap: usize,
    /// Restarts that kept or restored an Install's environment switch.
    pub env_settled: usize,
    /// Restarts that settled any intent (swap or environment).
    pub settled: usize,
    /// Restarts that removed work directories of the killed process.
    pub swept: usize,
    /// Start to listening after each kill (the recovery is in it).
    pub restart_times: Vec<Duration>,
    /// The slowest restart: its time and what it logged.
    pub slowest: (Duration, String),
}

impl LoopStats {
    /// `(median, p99)` of the restart times.
    pub fn restart_percentiles(&self) -> (Duration, Duration) {
        let mut times = self.restart_times.clone();
        times.sort();
        if times.is_empty() {
            return (Duration::ZERO, Duration::ZERO);
        }
        let at = |q: f64| times[((times.len() - 1) as f64 * q).round() as usize];
        (at(0.5), at(0.99))
    }
}

/// Seeds one version of everything, then `kills` rounds of: a call (RegisterBatch,
/// Install, Download in turn), `kill -9` at a random point of it, a restart, the
/// consistency check. Kills of an Install are spread over as long as the seed
/// Install took (it builds a Python environment), the others over 0–300 ms; a pause
/// between the steps of every swap (debug builds) widens the windows. Ends with
/// one more call of each kind, which must succeed, and returns the running server.
pub async fn kill_loop(setup: &Setup, kills: usize) -> (Process, LoopStats) {
    fs::create_dir_all(setup.downloads()).unwrap();
    let process = setup.start();
    let mut install_time = Duration::from_millis(300);
    for work in [Work::Register, Work::Install, Work::Download] {
        let started = Instant::now();
        assert!(
            call(&process, setup, work, 1).await.await.unwrap(),
            "seed {work:?}: {}",
            setup.log_text()
        );
        if matches!(work, Work::Install) {
            install_time += started.elapsed();
        }
    }
    let registered: BTreeSet<String> = ["alpha", "beta", "gamma"].map(String::from).into();
    let mut stats = LoopStats {
        kills,
        ..Default::default()
    };
    let mut process = Some(process);
    for kill in 0..kills {
        let work = [Work::Register, Work::Install, Work::Download][kill % 3];
        let running = process.take().unwrap_or_else(|| setup.start());
        let context = format!("kill {kill} ({work:?})");
        let window = match work {
            Work::Install => install_time,
            _ => Duration::from_millis(300),
        };
        let pending = call(&running, setup, work, kill + 2).await;
        tokio::time::sleep(Duration::from_millis(random_below(
            window.as_millis() as u64 + 1,
        )))
        .await;
        running.kill9();
        let _ = pending.await;
        let log_before = setup.log_text().len();
        // The restart settles what the kill interrupted before it listens.
        let started = Instant::now();
        process = Some(setup.start());
        let restart_time = started.elapsed();
        stats.restart_times.push(restart_time);
        let log = setup.log_text();
        let restart_log = log.get(log_before..).unwrap_or_default();
        if restart_time > stats.slowest.0 {
            stats.slowest = (
                restart_time,
                format!("kill {kill} ({work:?}):\n{restart_log}"),
            );
        }
        let swap = restart_log.contains("settled registrations a crash interrupted");
        let env = restart_log.contains("settled environment switches a crash interrupted");
        stats.in_swap += usize::from(swap);
        stats.env_settled += usize::from(env);
        stats.settled += usize::from(swap || env);
        stats.swept +=
            usize::from(restart_log.contains("removed work directories left by stopped processes"));
        assert_consistent(setup, &registered, true, &context).await;
    }
    let process = process.unwrap_or_else(|| setup.start());
    for work in [Work::Register, Work::Install, Work::Download] {
        assert!(
            call(&process, setup, work, kills + 100)
                .await
                .await
                .unwrap(),
            "after the kills: {work:?}: {}",
            setup.log_text()
        );
    }
    let versions = assert_consistent(setup, &registered, true, "after the kills").await;
    for pack_ref in ["alpha", "beta", "gamma"] {
        assert_eq!(versions[pack_ref], format!("1.0.{}", kills + 100));
    }
    (process, stats)
}
