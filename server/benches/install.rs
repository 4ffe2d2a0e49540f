//! Install's dry run: 500 requested packs with 3 dependencies each, resolved over
//! an index of 5,000 entries (target: under 1 s).
//!
//! Run: `cargo bench -p attune-packs-server --bench install`.
//!
//! The index (a `file://` registry, format 1.1) lists p0..p4999, each at 1.0.0,
//! 1.1.0 and 2.0.0; every version depends on 3 higher-numbered refs with `^1` or
//! `>=1.0`. The request names 500 of them as registry refs. Reported: the median of
//! (a) the whole stage with the index already cached, (b) the same as an RPC over a
//! loopback socket with its progress stream, (c) the first call, which also reads
//! and parses the 5,000-entry index.

use std::time::{Duration, Instant};

use attune_packs_client::{Client, pb};
use attune_packs_server::{
    config::{Config, IndexEntryConfig, Overrides, Secret},
    install::{InstallRequest, Installer},
    progress::Reporter,
    state,
};
use serde_json::json;

const PACKS: usize = 5_000;
const ROOTS: usize = 500;
const ROUNDS: usize = 9;

fn index_document() -> String {
    let versions = ["2.0.0", "1.1.0", "1.0.0"];
    let packs: Vec<_> = (0..PACKS)
        .map(|i| {
            let deps = |vi: usize| -> Vec<String> {
                (0..3u64)
                    .filter_map(|k| {
                        let span = (PACKS - i - 1) as u64;
                        if span == 0 {
                            return None;
                        }
                        let h = (i as u64 * 2_654_435_761 + k * 40_503 + vi as u64 * 97)
                            .wrapping_mul(0x9E37_79B9_7F4A_7C15);
                        let target = i + 1 + (h % span.min(200)) as usize;
                        let req = if (h >> 32).is_multiple_of(3) {
                            ">=1.0"
                        } else {
                            "^1"
                        };
                        Some(format!("p{target}@{req}"))
                    })
                    .collect()
            };
            let source = |v: &str| {
                json!([{
                    "type": "archive",
                    "url": format!("https://packs.example.invalid/p{i}-{v}.tar.gz"),
                    "checksum": format!("sha256:{:064x}", i),
                }])
            };
            json!({
                "ref": format!("p{i}"),
                "label": format!("Pack {i}"),
                "description": "benchmark pack",
                "version": versions[0],
                "install_sources": source(versions[0]),
                "dependencies": {"packs": deps(0)},
                "releases": versions[1..].iter().enumerate().map(|(n, v)| json!({
                    "version": v,
                    "install_sources": source(v),
                    "dependencies": {"packs": deps(n + 1)},
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    serde_json::to_string(&json!({
        "registry_name": "bench",
        "version": "1.1",
        "packs": packs,
    }))
    .unwrap()
}

fn median(mut times: Vec<Duration>) -> String {
    times.sort();
    format!(
        "median {:.0} ms (min {:.0}, max {:.0})",
        times[times.len() / 2].as_secs_f64() * 1e3,
        times[0].as_secs_f64() * 1e3,
        times[times.len() - 1].as_secs_f64() * 1e3
    )
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let dir = tempfile::tempdir().unwrap();
    // Pack code runs as the sandbox user, which must reach the packs below this root.
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let root = dir.path().canonicalize().unwrap();
    let index = root.join("index.json");
    std::fs::write(&index, index_document()).unwrap();
    let mut config = Config::load(
        None,
        Vec::new(),
        &Overrides {
            data_dir: Some(root.join("data")),
            ..Default::default()
        },
    )
    .unwrap();
    config.jwt_secret = Some(Secret::new("bench-secret-bench-secret-bench-secret"));
    config.allowed_roots = Some(vec![root.clone()]);
    config.registry.indices = vec![IndexEntryConfig {
        url: format!("file://{}", index.display()),
        name: Some("bench".into()),
        priority: 1,
        enabled: true,
        headers: Default::default(),
        trust: Default::default(),
    }];
    let state = state::open(config).await.unwrap();
    let packs: Vec<String> = (0..ROOTS)
        .map(|r| {
            if r % 2 == 0 {
                format!("p{}@^1", r * 7)
            } else {
                format!("p{}", r * 7)
            }
        })
        .collect();
    let request = InstallRequest {
        packs: packs.clone(),
        verify_ssl: true,
        timeout: Duration::from_secs(60),
        dry_run: true,
        ..Default::default()
    };

    // (c) first call: reads and parses the index too.
    let start = Instant::now();
    let report = Installer { state: &state }
        .install(request.clone(), &Reporter::noop())
        .await
        .unwrap();
    let cold = start.elapsed();
    assert!(report.success(), "{:?}", report.errors);
    let planned = report.plan.len();

    // (a) the stage, index cached.
    let mut stage = Vec::new();
    for _ in 0..ROUNDS {
        let start = Instant::now();
        let report = Installer { state: &state }
            .install(request.clone(), &Reporter::noop())
            .await
            .unwrap();
        stage.push(start.elapsed());
        assert_eq!(report.plan.len(), planned);
    }

    // (b) the RPC over a loopback socket.
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
    let mut rpc = Vec::new();
    for _ in 0..ROUNDS {
        let start = Instant::now();
        let result = client
            .install(pb::InstallRequest {
                packs: packs.clone(),
                dry_run: Some(true),
                ..Default::default()
            })
            .await
            .unwrap();
        rpc.push(start.elapsed());
        assert!(result.success);
        assert_eq!(result.plan.len(), planned);
    }
    let _ = stop.send(());
    let _ = server.await;

    println!(
        "install dry run: {ROOTS} requested packs x 3 dependencies over {PACKS} index entries \
         ({} versions); plan: {planned} packs",
        PACKS * 3
    );
    println!("  stage (index cached): {}", median(stage));
    println!("  RPC over loopback:    {}", median(rpc));
    println!(
        "  first call (reads and parses the index): {:.0} ms",
        cold.as_secs_f64() * 1e3
    );
}
