//! RegisterBatch of 200 packs x 50 components, in packs per second (target: at least
//! 100 packs/s), beside `cp -r` of the same packs in the same run.
//!
//! Run: `cargo bench -p attune-packs-server --bench register`
//!
//! Small-file work on a virtual disk swings by an order of magnitude between runs, so
//! every figure comes with its baseline: each round copies the source packs with
//! `cp -r` and then registers them, `sync` before each, and the medians and their
//! ratio are printed. This runs twice: on the disk (a directory under `/tmp`) and on
//! tmpfs (`/dev/shm`, where what is left is our own CPU and database cost).
//!
//! Registration goes through the real door: a server on a loopback port, the generated
//! client, the whole progress stream. Each round gets a fresh data dir (SQLite database)
//! and packs base directory on the filesystem measured; with `TEST_POSTGRES_URL` (an
//! admin URL) set, the disk is also measured with a fresh PostgreSQL database per round.
//!
//! Knobs (environment): `REGISTER_BENCH_ROUNDS` (default 5), `REGISTER_BENCH_PACKS`
//! (default 200), `REGISTER_BENCH_ONLY` (`disk`, `tmpfs` or `postgres`: one placement),
//! `REGISTER_BENCH_CONCURRENCY` (the server's `register.concurrency`; default: its default).
//! Under a profiler, `REGISTER_BENCH_ROUNDS=1 REGISTER_BENCH_ONLY=tmpfs` measures one
//! registration with little else.

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use attune_packs_client::{Client, pb};
use attune_packs_server::{
    config::{Config, Overrides, Secret},
    state,
};

/// 40 actions (sharing one script), 5 triggers, 5 rules: 50 components in 52 files.
fn write_pack(dir: &Path, i: usize) {
    let pack_ref = format!("bench{i}");
    let actions = dir.join("actions");
    std::fs::create_dir_all(&actions).unwrap();
    std::fs::create_dir_all(dir.join("triggers")).unwrap();
    std::fs::create_dir_all(dir.join("rules")).unwrap();
    std::fs::write(
        dir.join("pack.yaml"),
        format!("ref: {pack_ref}\nlabel: Bench {i}\nversion: 1.0.0\ndescription: benchmark pack\n"),
    )
    .unwrap();
    std::fs::write(actions.join("run.sh"), "#!/bin/sh\necho run\n").unwrap();
    for a in 0..40 {
        std::fs::write(
            actions.join(format!("a{a}.yaml")),
            format!(
                "ref: {pack_ref}.a{a}\nlabel: Action {a}\nrunner_type: shell\nentry_point: run.sh\n\
                 parameters:\n  message: {{type: string, required: true}}\n"
            ),
        )
        .unwrap();
    }
    for t in 0..5 {
        std::fs::write(
            dir.join(format!("triggers/t{t}.yaml")),
            format!("ref: {pack_ref}.t{t}\nlabel: Trigger {t}\n"),
        )
        .unwrap();
        std::fs::write(
            dir.join(format!("rules/r{t}.yaml")),
            format!("ref: {pack_ref}.r{t}\ntrigger_ref: {pack_ref}.t{t}\naction_ref: a{t}\n"),
        )
        .unwrap();
    }
}

fn env_number(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|n| *n > 0)
        .unwrap_or(default)
}

fn sync() {
    let status = Command::new("sync").status().expect("sync runs");
    assert!(status.success());
}

async fn fresh_postgres(admin: &str, name: &str) -> String {
    use sqlx::Connection;
    let mut conn = sqlx::PgConnection::connect(admin).await.unwrap();
    let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        .execute(&mut conn)
        .await;
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut conn)
        .await
        .unwrap();
    let prefix = admin.rsplit_once('/').unwrap().0;
    format!("{prefix}/{name}")
}

/// What one registration round did, as the caller saw it.
struct Registration {
    elapsed: Duration,
    progress_events: usize,
}

/// Registers `sources` through a server whose data (database, packs) lives in
/// `data_dir`; the server is started before and stopped after the timed call.
async fn register_over_rpc(
    root: &Path,
    data_dir: PathBuf,
    database_url: Option<String>,
    sources: &[String],
) -> Registration {
    let mut config = Config::load(
        None,
        Vec::new(),
        &Overrides {
            data_dir: Some(data_dir),
            ..Default::default()
        },
    )
    .unwrap();
    config.jwt_secret = Some(Secret::new("bench-secret-bench-secret-bench-secret"));
    config.allowed_roots = Some(vec![root.to_path_buf()]);
    config.database_url = database_url.map(Secret::new);
    if let Ok(Ok(concurrency)) = std::env::var("REGISTER_BENCH_CONCURRENCY").map(|v| v.parse()) {
        config.register.concurrency = concurrency;
    }
    let state = state::open(config).await.unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let token = state.auth.issue("bench", Duration::from_secs(600));
    let serve_state = state.clone();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        attune_packs_server::server::run(listener, serve_state, async {
            let _ = stopped.await;
        })
        .await
        .unwrap();
    });
    let mut client = Client::connect(&format!("http://{addr}"), &token)
        .await
        .unwrap();

    let started = Instant::now();
    let stream = client
        .register_batch_stream(pb::RegisterBatchRequest {
            pack_paths: sources.to_vec(),
            skip_tests: Some(true),
            ..Default::default()
        })
        .await
        .unwrap();
    let mut progress_events = 0;
    let result = attune_packs_client::finish(stream, |_| progress_events += 1)
        .await
        .unwrap();
    let elapsed = started.elapsed();

    assert_eq!(
        result.registered_packs.len(),
        sources.len(),
        "{:?}",
        result.failed_packs.first()
    );
    for pack in &result.registered_packs {
        let c = pack.components_registered.as_ref().unwrap();
        let total = c.actions + c.sensors + c.triggers + c.rules + c.workflows + c.policies;
        assert_eq!(total, 50, "{}", pack.pack_ref);
    }
    let _ = stop.send(());
    let _ = server.await;
    state.db.close().await;
    Registration {
        elapsed,
        progress_events,
    }
}

fn cp_r(from: &Path, to: &Path) -> Duration {
    let started = Instant::now();
    let status = Command::new("cp")
        .arg("-r")
        .arg(from)
        .arg(to)
        .status()
        .expect("cp runs");
    assert!(status.success());
    started.elapsed()
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(|a, b| a.partial_cmp(b).unwrap());
    values[values.len() / 2]
}

fn list(values: &[f64]) -> String {
    values
        .iter()
        .map(|v| format!("{v:.0}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Alternates `cp -r` and RegisterBatch of the same packs under `root`.
async fn measure(label: &str, root: &Path, packs: usize, rounds: usize, postgres: Option<&str>) {
    let src = root.join("src");
    let sources: Vec<String> = (0..packs)
        .map(|i| {
            let dir = src.join(format!("bench{i}"));
            write_pack(&dir, i);
            dir.display().to_string()
        })
        .collect();
    let mut copy_rates = Vec::new();
    let mut register_rates = Vec::new();
    let mut events = 0;
    for round in 0..rounds {
        sync();
        let copied = cp_r(&src, &root.join(format!("cp-{round}")));
        copy_rates.push(packs as f64 / copied.as_secs_f64());

        let database_url = match postgres {
            Some(admin) => Some(
                fresh_postgres(
                    admin,
                    &format!("attune_packs_bench_{round}_{}", std::process::id()),
                )
                .await,
            ),
            None => None,
        };
        sync();
        // Rounds keep their directories until the end: deleting between rounds makes
        // the next round pay for the filesystem's discards.
        let registered = register_over_rpc(
            root,
            root.join(format!("data-{round}")),
            database_url,
            &sources,
        )
        .await;
        register_rates.push(packs as f64 / registered.elapsed.as_secs_f64());
        events = registered.progress_events;
    }
    let (copy, register) = (median(copy_rates.clone()), median(register_rates.clone()));
    println!("{label}");
    println!(
        "  cp -r          median {copy:6.0} packs/s  ({:5.2} s)   rounds: {}",
        packs as f64 / copy,
        list(&copy_rates)
    );
    println!(
        "  RegisterBatch  median {register:6.0} packs/s  ({:5.2} s)   rounds: {}",
        packs as f64 / register,
        list(&register_rates)
    );
    println!(
        "  RegisterBatch takes {:.1}x the time of cp -r; {events} progress events per call",
        copy / register
    );
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let packs = env_number("REGISTER_BENCH_PACKS", 200);
    let rounds = env_number("REGISTER_BENCH_ROUNDS", 5);
    let only = std::env::var("REGISTER_BENCH_ONLY").unwrap_or_default();
    let wanted = |name: &str| only.is_empty() || only == name;
    println!(
        "RegisterBatch over gRPC (loopback), {packs} packs x 50 components (52 files each), \
         skip_tests, register.concurrency {}; median of {rounds} rounds, each beside a `cp -r` \
         of the same packs",
        std::env::var("REGISTER_BENCH_CONCURRENCY").unwrap_or_else(|_| {
            attune_packs_server::config::RegisterSection::default()
                .concurrency
                .to_string()
        })
    );

    if wanted("disk") {
        let dir = tempfile::tempdir_in("/tmp").unwrap();
        let root = dir.path().canonicalize().unwrap();
        measure("disk (/tmp), SQLite", &root, packs, rounds, None).await;
    }
    if wanted("tmpfs") {
        let dir = tempfile::tempdir_in("/dev/shm").unwrap();
        let root = dir.path().canonicalize().unwrap();
        measure("tmpfs (/dev/shm), SQLite", &root, packs, rounds, None).await;
    }
    if wanted("postgres") {
        match std::env::var("TEST_POSTGRES_URL") {
            Ok(admin) if !admin.is_empty() => {
                let dir = tempfile::tempdir_in("/tmp").unwrap();
                let root = dir.path().canonicalize().unwrap();
                measure(
                    "disk (/tmp), PostgreSQL",
                    &root,
                    packs,
                    rounds,
                    Some(&admin),
                )
                .await;
            }
            _ => println!("PostgreSQL skipped: set TEST_POSTGRES_URL"),
        }
    }
}
