//! RegisterBatch of 200 packs x 50 components with skip_tests, in packs per second
//! (target: at least 100 packs/s on SQLite).
//!
//! Run: `cargo bench -p attune-packs-server --bench register`
//! (set `TEST_POSTGRES_URL` to an admin URL to measure PostgreSQL too).
//! Each round registers the whole batch into a fresh database and a fresh packs base
//! directory: validation, copy, checksum, one transaction per pack.

use std::{path::Path, time::Instant};

use attune_packs_server::{
    paths::PathPolicy,
    progress::Reporter,
    register::{RegisterRequest, Registrar},
    store::Db,
};

const PACKS: usize = 200;
const ROUNDS: usize = 3;

/// 40 actions (sharing one script), 5 triggers, 5 rules: 50 components.
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

async fn fresh_postgres(admin: &str, n: usize) -> String {
    use sqlx::Connection;
    let mut conn = sqlx::PgConnection::connect(admin).await.unwrap();
    let name = format!("attune_packs_bench_{n}_{}", std::process::id());
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

async fn measure(
    name: &str,
    root: &Path,
    sources: &[String],
    database_url: impl AsyncFn(usize) -> String,
) {
    let mut rates = Vec::new();
    for round in 0..ROUNDS {
        let db = Db::connect(&database_url(round).await).await.unwrap();
        db.migrate().await.unwrap();
        // A fresh base per round; all are deleted at the end, because deleting between
        // rounds makes the next round pay for the filesystem's discards.
        let base = root.join(format!("base-{name}-{round}"));
        let policy = PathPolicy::new(vec![root.to_path_buf()]);
        let registrar = Registrar {
            db: &db,
            paths: &policy,
            default_base_dir: base.clone(),
            concurrency: 4,
            journal: std::sync::Arc::new(attune_packs_server::journal::Journal::new(
                &root.join(format!("data-{name}-{round}")),
            )),
        };
        let started = Instant::now();
        let report = registrar
            .register(
                RegisterRequest {
                    pack_paths: sources.to_vec(),
                    packs_base_dir: None,
                    skip_validation: false,
                    skip_tests: true,
                    force: false,
                    requested_by: None,
                },
                &Reporter::noop(),
            )
            .await
            .unwrap();
        let elapsed = started.elapsed();
        assert_eq!(
            report.registered.len(),
            PACKS,
            "{:?}",
            report.failed.first()
        );
        assert!(report.registered.iter().all(|p| p.components.total() == 50));
        rates.push(PACKS as f64 / elapsed.as_secs_f64());
        db.close().await;
    }
    rates.sort_by(|a, b| a.partial_cmp(b).unwrap());
    println!(
        "{name:<10} median {:6.0} packs/s   (rounds: {})",
        rates[rates.len() / 2],
        rates
            .iter()
            .map(|r| format!("{r:.0}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
}

#[tokio::main]
async fn main() {
    let root = tempfile::tempdir().unwrap();
    let root_path = root.path().canonicalize().unwrap();
    let sources: Vec<String> = (0..PACKS)
        .map(|i| {
            let dir = root_path.join("src").join(format!("bench{i}"));
            write_pack(&dir, i);
            dir.display().to_string()
        })
        .collect();
    println!("RegisterBatch: {PACKS} packs x 50 components, skip_tests");
    let sqlite_root = root_path.clone();
    measure("SQLite", &root_path, &sources, async |round| {
        format!(
            "sqlite://{}",
            sqlite_root.join(format!("bench-{round}.db")).display()
        )
    })
    .await;
    match std::env::var("TEST_POSTGRES_URL") {
        Ok(admin) if !admin.is_empty() => {
            measure("PostgreSQL", &root_path, &sources, async |round| {
                fresh_postgres(&admin, round).await
            })
            .await
        }
        _ => println!("PostgreSQL skipped: set TEST_POSTGRES_URL"),
    }
}
