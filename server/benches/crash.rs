//! Crash consistency at scale: the crash test's kill/restart/check loop
//! (`tests/it/crash_loop.rs`, shared) with many more kills, then the start time with
//! many leftovers to settle.
//!
//! Run: `cargo bench -p attune-packs-server --bench crash` (SQLite; PostgreSQL too
//! when `TEST_POSTGRES_URL` is set). `ATTUNE_BENCH_CRASH_KILLS` sets the kills per
//! backend (default 200). The fault pauses that widen the swap windows exist in
//! debug builds only: `cargo bench --profile dev -p attune-packs-server --bench crash`
//! lands many more kills inside swaps than the release build.
//!
//! Reported per backend: kills, how many landed inside a directory swap and inside
//! an environment switch (the restart settled one), how many restarts settled any
//! intent, and the time from start to listening after a kill (median, p99). Then,
//! on SQLite: the start time of an empty data dir, and with 1,000 work directories
//! of a dead process and 100 swap intents plus 100 environment intents to settle.

#[path = "../tests/it/crash_loop.rs"]
mod crash_loop;

use std::{
    fs,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use attune_packs_server::{
    envs::EnvLinks,
    fault::PAUSE_ENV,
    journal::{EnvSwitchEntry, JOURNAL_DIR, SwapEntry},
};
use crash_loop::{Setup, kill_loop, leftovers};
use sqlx::Connection;

const KILLS_ENV: &str = "ATTUNE_BENCH_CRASH_KILLS";
const PG_ENV: &str = "TEST_POSTGRES_URL";
/// A process that is not running: another boot's marker.
const DEAD_OWNER: &str = "00000000-999999-1";
const LEFTOVER_DIRS: usize = 1_000;
const INTENTS: usize = 100;

fn main() {
    let kills: usize = std::env::var(KILLS_ENV)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let root = tempfile::Builder::new()
            .prefix("attune-crash-bench")
            .tempdir()
            .unwrap();
        // The sandbox user must reach the packs.
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(root.path(), fs::Permissions::from_mode(0o755)).unwrap();
        let root = root.path().canonicalize().unwrap();

        let setup = Setup::at(root.join("sqlite"), None, &[(PAUSE_ENV, "30")]);
        report("SQLite", &setup, kills).await;
        if let Ok(admin) = std::env::var(PG_ENV) {
            let (url, name) = fresh_postgres_database(&admin).await;
            let setup = Setup::at(root.join("postgres"), Some(url), &[(PAUSE_ENV, "30")]);
            report("PostgreSQL", &setup, kills).await;
            drop_postgres_database(&admin, &name).await;
        } else {
            println!("{PG_ENV} is not set: PostgreSQL skipped");
        }

        start_with_leftovers(&root.join("leftovers")).await;
    });
}

async fn report(backend: &str, setup: &Setup, kills: usize) {
    let started = Instant::now();
    let (process, stats) = kill_loop(setup, kills).await;
    drop(process);
    let (median, p99) = stats.restart_percentiles();
    println!(
        "{backend}: {} kills in {:.0?}; {} inside a directory swap, {} inside an \
         environment switch, {} restarts settled an intent; start to listening after a \
         kill: median {median:.0?}, p99 {p99:.0?}",
        stats.kills,
        started.elapsed(),
        stats.in_swap,
        stats.env_settled,
        stats.settled,
    );
    if p99 > Duration::from_secs(2) {
        println!(
            "{backend}: the slowest restart took {:.0?}; {}",
            stats.slowest.0, stats.slowest.1
        );
    }
}

/// A pack directory with `files` files naming `version`.
fn pack(dir: &Path, version: &str, files: usize) {
    fs::create_dir_all(dir).unwrap();
    fs::write(dir.join("pack.yaml"), format!("version: \"{version}\"\n")).unwrap();
    for i in 0..files {
        fs::write(dir.join(format!("f{i}.txt")), format!("{version} {i}\n")).unwrap();
    }
}

/// What a killed server leaves at worst: 1,000 work directories, 100 registrations
/// between swap and commit (no rows: each is undone), 100 Installs whose environment
/// links were switched (each switched back, the new build deleted).
fn leave_leftovers(setup: &Setup) {
    let base = setup.base();
    let journal = setup.data.join(JOURNAL_DIR);
    fs::create_dir_all(&journal).unwrap();
    for i in 0..LEFTOVER_DIRS {
        pack(
            &base.join(format!(".attune-staging.{DEAD_OWNER}.{i:012x}")),
            "0",
            5,
        );
    }
    for i in 0..INTENTS {
        let pack_ref = format!("left{i}");
        let target = base.join(&pack_ref);
        let staged = base.join(format!(".attune-stage.{DEAD_OWNER}.{i:012x}.{pack_ref}"));
        let mut entry = SwapEntry::new(&pack_ref, &target, &staged, "sha256:00");
        entry.previous = base.join(format!(".attune-previous.{DEAD_OWNER}.{i:012x}.{pack_ref}"));
        // Swapped, not committed: new files in place, old ones aside.
        pack(&target, "2", 5);
        pack(&entry.previous, "1", 5);
        let intent = serde_json::json!({"format": 1, "owner": DEAD_OWNER, "entries": [entry]});
        fs::write(
            journal.join(format!("intent.{DEAD_OWNER}.{i:012x}.json")),
            intent.to_string(),
        )
        .unwrap();

        let envs_root = base.join(".envs");
        let ref_dir = envs_root.join(&pack_ref);
        let (old, new) = ("python-00000000000000aa-old", "python-00000000000000bb-new");
        for build in [old, new] {
            fs::create_dir_all(ref_dir.join(build)).unwrap();
        }
        std::os::unix::fs::symlink(new, ref_dir.join("python")).unwrap();
        let env_entry = EnvSwitchEntry {
            pack_ref: pack_ref.clone(),
            envs_root,
            checksum: "sha256:00".into(),
            previous: EnvLinks {
                python: Some(PathBuf::from(old)),
                node: None,
            },
            switched_to: Some(EnvLinks {
                python: Some(PathBuf::from(new)),
                node: None,
            }),
        };
        let intent = serde_json::json!({"format": 1, "owner": DEAD_OWNER, "entries": [env_entry]});
        fs::write(
            journal.join(format!("envs.{DEAD_OWNER}.{i:012x}.json")),
            intent.to_string(),
        )
        .unwrap();
    }
}

/// Start to listening: once on an empty data dir, once with the leftovers; checks that
/// all of them were settled.
async fn start_with_leftovers(root: &Path) {
    let setup = Setup::at(root.to_path_buf(), None, &[]);
    let started = Instant::now();
    let process = setup.start();
    let empty = started.elapsed();
    drop(process);
    // Warm: the database exists and is migrated; only the recovery differs.
    let started = Instant::now();
    let process = setup.start();
    let clean = started.elapsed();
    drop(process);

    leave_leftovers(&setup);
    let started = Instant::now();
    let process = setup.start();
    let loaded = started.elapsed();
    drop(process);
    let left = leftovers(&setup);
    assert!(left.is_empty(), "left behind: {left:#?}");
    for i in 0..INTENTS {
        let target = setup.base().join(format!("left{i}"));
        let version = fs::read_to_string(target.join("pack.yaml")).unwrap();
        assert_eq!(version, "version: \"1\"\n", "left{i} was not undone");
        let link = fs::read_link(setup.base().join(format!(".envs/left{i}/python"))).unwrap();
        assert_eq!(link, Path::new("python-00000000000000aa-old"));
    }
    println!(
        "start to listening (SQLite): first start {empty:.0?}, restart with nothing to \
         settle {clean:.0?}, with {LEFTOVER_DIRS} leftover work directories + {INTENTS} \
         swap intents + {INTENTS} environment intents {loaded:.0?} ({:.0?} more)",
        loaded.saturating_sub(clean)
    );
}

async fn fresh_postgres_database(admin_url: &str) -> (String, String) {
    let mut admin = sqlx::PgConnection::connect(admin_url).await.unwrap();
    let mut bytes = [0u8; 6];
    getrandom::fill(&mut bytes).unwrap();
    let name = format!("attune_packs_bench_{}", hex::encode(bytes));
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut admin)
        .await
        .unwrap();
    let (base, query) = match admin_url.split_once('?') {
        Some((b, q)) => (b, format!("?{q}")),
        None => (admin_url, String::new()),
    };
    let prefix = base.rsplit_once('/').map(|(p, _)| p).unwrap_or(base);
    (format!("{prefix}/{name}{query}"), name)
}

async fn drop_postgres_database(admin_url: &str, name: &str) {
    let mut admin = sqlx::PgConnection::connect(admin_url).await.unwrap();
    let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        .execute(&mut admin)
        .await;
}
