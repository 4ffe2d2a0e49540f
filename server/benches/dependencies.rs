//! Dependencies over 1,000 packs with 5 dependencies each (target: under 200 ms of
//! server time).
//!
//! Run: `cargo bench -p attune-packs-server --bench dependencies`.
//! Reports the median and spread of (a) the stage alone, (b) the whole RPC over a real
//! loopback socket, as the generated client sees it. Half of the dependencies point at
//! packs of the same request, half at packs registered in the database (SQLite).

use std::{path::Path, time::Instant};

use attune_packs_client::{Client, pb};
use attune_packs_server::{
    config::{Config, Overrides, Secret},
    deps::{self, DependenciesRequest},
    progress::Reporter,
    state,
};

const PACKS: usize = 1_000;
const DEPS: usize = 5;
const INSTALLED: usize = 200;
const ROUNDS: usize = 15;

fn write_packs(dir: &Path) -> Vec<String> {
    (0..PACKS)
        .map(|i| {
            let pack = dir.join(format!("pack{i}"));
            std::fs::create_dir_all(&pack).unwrap();
            let mut yaml = format!(
                "ref: pack{i}\nlabel: Pack {i}\ndescription: benchmark pack\nversion: 1.{}.0\n\
                 tags: [bench]\ndependencies:\n",
                i % 10
            );
            for d in 0..DEPS {
                if d % 2 == 0 {
                    // A pack of the request (a DAG: only lower numbers, so no cycles).
                    let target = (i * 7 + d * 13) % PACKS.max(1);
                    if target < i {
                        yaml.push_str(&format!("  - pack{target}@>=1.0\n"));
                        continue;
                    }
                }
                yaml.push_str(&format!(
                    "  - installed{}@^2.{}\n",
                    (i + d) % INSTALLED,
                    d % 3
                ));
            }
            std::fs::write(pack.join("pack.yaml"), yaml).unwrap();
            pack.to_str().unwrap().to_string()
        })
        .collect()
}

fn summary(name: &str, mut ms: Vec<f64>) {
    ms.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let median = ms[ms.len() / 2];
    println!(
        "{name:<28} median {median:7.1} ms   min {:7.1} ms   max {:7.1} ms   ({} rounds)",
        ms[0],
        ms[ms.len() - 1],
        ms.len()
    );
}

#[tokio::main]
async fn main() {
    let root = tempfile::tempdir().unwrap();
    let root_path = root.path().canonicalize().unwrap();
    let packs_dir = root_path.join("packs");
    let paths = write_packs(&packs_dir);

    let mut config = Config::load(
        None,
        Vec::new(),
        &Overrides {
            data_dir: Some(root_path.join("data")),
            ..Default::default()
        },
    )
    .unwrap();
    config.jwt_secret = Some(Secret::new("bench"));
    config.allowed_roots = Some(vec![root_path.clone()]);
    let state = state::open(config).await.unwrap();
    for i in 0..INSTALLED {
        state
            .db
            .insert_pack_for_tests(&format!("installed{i}"), "2.1.0", &["core@>=1"])
            .await
            .unwrap();
    }
    let request = DependenciesRequest {
        pack_paths: paths.clone(),
        skip_validation: false,
    };

    // Warm-up: page cache, runtime detection (once per process by design).
    let report = deps::analyze(&state.db, &state.paths, request.clone(), &Reporter::noop())
        .await
        .unwrap();
    assert_eq!(report.analyzed_packs.len(), PACKS);
    assert_eq!(report.dependencies.len(), PACKS * DEPS);
    assert!(report.errors.is_empty(), "{:?}", &report.errors[..1]);

    let mut stage_ms = Vec::new();
    for _ in 0..ROUNDS {
        let (reporter, mut rx) = Reporter::channel("");
        let drain = tokio::spawn(async move { while rx.recv().await.is_some() {} });
        let t = Instant::now();
        deps::analyze(&state.db, &state.paths, request.clone(), &reporter)
            .await
            .unwrap();
        stage_ms.push(t.elapsed().as_secs_f64() * 1000.0);
        drop(reporter);
        drain.await.unwrap();
    }

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let token = state
        .auth
        .issue("bench", std::time::Duration::from_secs(3600));
    let server_state = state.clone();
    tokio::spawn(attune_packs_server::server::run(
        listener,
        server_state,
        std::future::pending(),
    ));
    let mut client = Client::connect(&format!("http://{addr}"), &token)
        .await
        .unwrap();
    let rpc_request = pb::DependenciesRequest {
        pack_paths: paths,
        skip_validation: None,
    };
    let mut rpc_ms = Vec::new();
    for _ in 0..ROUNDS {
        let t = Instant::now();
        let mut progress = 0;
        let stream = client
            .dependencies_stream(rpc_request.clone())
            .await
            .unwrap();
        let result = attune_packs_client::finish(stream, |_| progress += 1)
            .await
            .unwrap();
        rpc_ms.push(t.elapsed().as_secs_f64() * 1000.0);
        assert_eq!(progress, PACKS);
        assert_eq!(result.dependencies.len(), PACKS * DEPS);
    }

    println!(
        "Dependencies: {PACKS} packs x {DEPS} dependencies, {INSTALLED} installed packs (SQLite)"
    );
    summary("stage (server time)", stage_ms);
    summary("RPC incl. 1,000 progress", rpc_ms);
}
