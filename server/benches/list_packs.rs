//! ListPacks over 10,000 installed packs: first page p99 under 20 ms (SQLite).
//!
//! Run: `cargo bench -p attune-packs-server --bench list_packs` (also on PostgreSQL
//! when `TEST_POSTGRES_URL` names a server: a scratch database is created and dropped).
//! Rows are written through the store (5 components per pack, tags, a description);
//! each pack has its directory under the packs base directory, so the environment
//! checks of a page look at real paths. Every call is a real gRPC round trip on
//! loopback.

use std::time::{Duration, Instant};

use attune_packs_client::{Client, pb};
use attune_packs_server::{
    config::{Config, Overrides, Secret},
    state,
    store::packs::{ComponentRow, PackRow},
};

const PACKS: usize = 10_000;
const COMPONENTS: usize = 5;
const CALLS: usize = 500;
const WRITE_BATCH: usize = 500;

fn report(backend: &str, name: &str, mut ms: Vec<f64>) {
    ms.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let at = |q: f64| ms[((ms.len() as f64 * q).ceil() as usize).clamp(1, ms.len()) - 1];
    println!(
        "{backend:<8} {name:<26} median {:6.2} ms   p99 {:6.2} ms   max {:6.2} ms   ({} calls)",
        at(0.5),
        at(0.99),
        ms[ms.len() - 1],
        ms.len()
    );
}

async fn fresh_postgres(admin_url: &str) -> (String, String) {
    use sqlx::Connection;
    let mut admin = sqlx::PgConnection::connect(admin_url).await.unwrap();
    let name = format!("attune_packs_bench_{}", std::process::id());
    sqlx::query(&format!("DROP DATABASE IF EXISTS {name}"))
        .execute(&mut admin)
        .await
        .unwrap();
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

async fn run(backend: &str, database_url: Option<String>) {
    let root = tempfile::tempdir().unwrap();
    let root = root.path().canonicalize().unwrap();
    let mut config = Config::load(
        None,
        Vec::new(),
        &Overrides {
            data_dir: Some(root.join("data")),
            database_url,
            ..Default::default()
        },
    )
    .unwrap();
    config.jwt_secret = Some(Secret::new("bench"));
    config.allowed_roots = Some(vec![root.clone()]);
    let state = state::open(config).await.unwrap();
    let base = root.join("base");

    let started = Instant::now();
    let refs: Vec<String> = (0..PACKS).map(|i| format!("pack-{i:05}")).collect();
    for chunk in refs.chunks(WRITE_BATCH) {
        let names: Vec<&str> = chunk.iter().map(String::as_str).collect();
        let mut write = state.db.begin_packs_write(&names).await.unwrap();
        for pack_ref in chunk {
            let dir = base.join(pack_ref);
            std::fs::create_dir_all(&dir).unwrap();
            let tags = if pack_ref.ends_with('7') {
                r#"["monitoring","linux"]"#
            } else {
                r#"["linux"]"#
            };
            let row = PackRow {
                pack_ref: pack_ref.clone(),
                label: format!("Pack {pack_ref}"),
                description: Some(format!("Benchmark pack {pack_ref} with a few components")),
                version: "1.2.3".into(),
                conf_schema: "{}".into(),
                config: "{}".into(),
                meta: "{}".into(),
                tags: tags.into(),
                runtime_deps: "[]".into(),
                dependencies: "[]".into(),
                storage_path: dir.display().to_string(),
                source: Some(format!("https://git.example.test/org/{pack_ref}.git")),
                source_type: Some("git".into()),
                checksum: Some(format!("sha256:{}", "ab".repeat(32))),
                installed_by: Some("bench".into()),
                file_manifest: Some(r#"{"pack.yaml":"00"}"#.into()),
                ..Default::default()
            };
            let id = write.upsert_pack(&row, false, 1).await.unwrap();
            let kinds = ["action", "action", "sensor", "trigger", "rule"];
            let components: Vec<ComponentRow> = (0..COMPONENTS)
                .map(|c| ComponentRow {
                    kind: kinds[c % kinds.len()],
                    r#ref: format!("{pack_ref}.c{c}"),
                    label: None,
                    description: None,
                    file: format!("actions/c{c}.yaml"),
                    definition: "{}".into(),
                })
                .collect();
            write.replace_components(id, &components).await.unwrap();
        }
        write.commit().await.unwrap();
    }
    println!(
        "{backend:<8} {PACKS} packs with {COMPONENTS} components each written in {:.1} s",
        started.elapsed().as_secs_f64()
    );

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let serve_state = state.clone();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        attune_packs_server::server::run(listener, serve_state, async {
            let _ = stopped.await;
        })
        .await
        .unwrap();
    });
    let token = state.auth.issue("bench", Duration::from_secs(600));
    let mut client = Client::connect(&format!("http://{addr}"), &token)
        .await
        .unwrap();

    let middle = client
        .list_packs(pb::ListPacksRequest {
            page: Some(100),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(middle.packs.len(), 50);
    assert_eq!(middle.total_items, PACKS as u64);
    let cases = [
        ("first page", pb::ListPacksRequest::default()),
        (
            "first page, ref_prefix",
            pb::ListPacksRequest {
                ref_prefix: "pack-05".into(),
                ..Default::default()
            },
        ),
        (
            "first page, keyword (tag)",
            pb::ListPacksRequest {
                keyword: "MONITOR".into(),
                ..Default::default()
            },
        ),
        (
            "page 101 by token",
            pb::ListPacksRequest {
                page_token: middle.next_page_token.clone(),
                ..Default::default()
            },
        ),
        (
            "page 100 by number",
            pb::ListPacksRequest {
                page: Some(100),
                ..Default::default()
            },
        ),
    ];
    for (name, request) in cases {
        // Warm-up: connections, statement caches.
        for _ in 0..20 {
            client.list_packs(request.clone()).await.unwrap();
        }
        let mut ms = Vec::with_capacity(CALLS);
        for _ in 0..CALLS {
            let t = Instant::now();
            let page = client.list_packs(request.clone()).await.unwrap();
            ms.push(t.elapsed().as_secs_f64() * 1000.0);
            assert_eq!(page.packs.len(), 50);
            assert_eq!(page.packs[0].components.unwrap().actions, 2);
        }
        report(backend, name, ms);
    }
    let _ = stop.send(());
    server.await.unwrap();
    state.db.close().await;
}

#[tokio::main]
async fn main() {
    run("sqlite", None).await;
    match std::env::var("TEST_POSTGRES_URL") {
        Ok(admin) if !admin.is_empty() => {
            let (url, name) = fresh_postgres(&admin).await;
            run("postgres", Some(url)).await;
            use sqlx::Connection;
            let mut admin = sqlx::PgConnection::connect(&admin).await.unwrap();
            sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                .execute(&mut admin)
                .await
                .unwrap();
        }
        _ => println!("TEST_POSTGRES_URL not set: PostgreSQL not measured"),
    }
}
