//! BuildEnvs of an unchanged pack (reuse): target under 50 ms.
//!
//! Run: `cargo bench -p attune-packs-server --bench build_envs`.
//! Builds a virtualenv once (requirements from a local wheel, `--no-index`), then times
//! repeated BuildEnvs calls through the stage and through a real gRPC round trip.

use std::{process::Command, time::Instant};

use attune_packs_client::{Client, pb};
use attune_packs_server::{
    buildenvs::BuildEnvsRequest,
    config::{Config, Overrides, Secret},
    progress::Reporter,
    state,
};

const ROUNDS: usize = 20;

fn summary(name: &str, mut ms: Vec<f64>) {
    ms.sort_by(|a, b| a.partial_cmp(b).unwrap());
    println!(
        "{name:<26} median {:7.2} ms   min {:7.2} ms   max {:7.2} ms   ({} rounds)",
        ms[ms.len() / 2],
        ms[0],
        ms[ms.len() - 1],
        ms.len()
    );
}

#[tokio::main]
async fn main() {
    let root = tempfile::tempdir().unwrap();
    // Pack code runs as the sandbox user, which must reach the packs below this root.
    std::fs::set_permissions(
        root.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let root = root.path().canonicalize().unwrap();
    let wheels = root.join("wheels");
    std::fs::create_dir_all(&wheels).unwrap();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/testdata/make_wheel.py");
    assert!(
        Command::new("python3")
            .arg(script)
            .arg(&wheels)
            .args(["tinypkg", "1.0", "1"])
            .status()
            .unwrap()
            .success()
    );
    let pack = root.join("pack");
    std::fs::create_dir_all(&pack).unwrap();
    std::fs::write(
        pack.join("pack.yaml"),
        "ref: bench\nversion: 1.0.0\npython: \"3\"\n",
    )
    .unwrap();
    std::fs::write(pack.join("requirements.txt"), "tinypkg==1.0\n").unwrap();

    let mut config = Config::load(
        None,
        Vec::new(),
        &Overrides {
            data_dir: Some(root.join("data")),
            ..Default::default()
        },
    )
    .unwrap();
    config.jwt_secret = Some(Secret::new("bench"));
    config.allowed_roots = Some(vec![root.clone()]);
    config.build.pip_find_links = vec![wheels.display().to_string()];
    config.build.pip_offline = true;
    config.build.concurrency = 2;
    config.packs_base_dir = Some(root.join("base"));
    let state = state::open(config).await.unwrap();
    let builder = &state.env_builder;
    let request = BuildEnvsRequest {
        pack_paths: vec![pack.display().to_string()],
        packs_base_dir: None,
        python_version: None,
        nodejs_version: None,
        skip_python: false,
        skip_nodejs: false,
        force_rebuild: false,
        timeout: std::time::Duration::from_secs(600),
        detect_only: false,
        keep_previous: false,
    };
    let t = Instant::now();
    let first = builder
        .build(request.clone(), &Reporter::noop())
        .await
        .unwrap();
    assert!(first.failed.is_empty(), "{:?}", first.failed);
    println!(
        "first build (venv + pip install): {:.0} ms",
        t.elapsed().as_secs_f64() * 1000.0
    );

    let mut stage = Vec::new();
    for _ in 0..ROUNDS {
        let t = Instant::now();
        let r = builder
            .build(request.clone(), &Reporter::noop())
            .await
            .unwrap();
        stage.push(t.elapsed().as_secs_f64() * 1000.0);
        assert!(r.built[0].python.as_ref().unwrap().reused);
    }

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let token = state
        .auth
        .issue("bench", std::time::Duration::from_secs(600));
    tokio::spawn(attune_packs_server::server::run(
        listener,
        state.clone(),
        std::future::pending(),
    ));
    let mut client = Client::connect(&format!("http://{addr}"), &token)
        .await
        .unwrap();
    let mut rpc = Vec::new();
    for _ in 0..ROUNDS {
        let t = Instant::now();
        let r = client
            .build_envs(pb::BuildEnvsRequest {
                pack_paths: vec![pack.display().to_string()],
                packs_base_dir: Some(root.join("base").display().to_string()),
                ..Default::default()
            })
            .await
            .unwrap();
        rpc.push(t.elapsed().as_secs_f64() * 1000.0);
        assert!(
            r.built_environments[0]
                .environments
                .clone()
                .unwrap()
                .python
                .unwrap()
                .reused
        );
    }
    println!("BuildEnvs of an unchanged pack (reuse)");
    summary("stage", stage);
    summary("RPC round trip", rpc);
}
