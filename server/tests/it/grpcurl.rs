//! grpcurl 1.8.6 (which speaks only the v1alpha reflection API) as an independent client.

use std::process::Command;

use crate::common::{Backend, TestServer, path_str, simple_pack, write_pack};

/// grpcurl; the tests that call it register with `requires = [Grpcurl]`.
fn grpcurl() -> Command {
    Command::new("grpcurl")
}

fn run(mut cmd: Command) -> (bool, String, String) {
    let out = cmd.output().expect("run grpcurl");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

register_test!(list_describe_and_stream_with_grpcurl, requires = [Grpcurl]);
async fn list_describe_and_stream_with_grpcurl() {
    let server = TestServer::start(Backend::Sqlite).await;
    let addr = server.addr.to_string();

    // list and describe need no token.
    let mut cmd = grpcurl();
    cmd.args(["-plaintext", &addr, "list"]);
    let (ok, out, err) = tokio::task::spawn_blocking(move || run(cmd)).await.unwrap();
    assert!(ok, "{err}");
    for service in [
        "attune.packs.v1.PackService",
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
    ] {
        assert!(
            out.lines().any(|l| l == service),
            "{service} missing from:\n{out}"
        );
    }

    let mut cmd = grpcurl();
    cmd.args([
        "-plaintext",
        &addr,
        "describe",
        "attune.packs.v1.PackService",
    ]);
    let (ok, out, err) = tokio::task::spawn_blocking(move || run(cmd)).await.unwrap();
    assert!(ok, "{err}");
    assert!(out.contains("rpc Dependencies ( .attune.packs.v1.DependenciesRequest ) returns ( stream .attune.packs.v1.DependenciesEvent )"), "{out}");

    let mut cmd = grpcurl();
    cmd.args([
        "-plaintext",
        &addr,
        "describe",
        "attune.packs.v1.DownloadRequest",
    ]);
    let (ok, out, err) = tokio::task::spawn_blocking(move || run(cmd)).await.unwrap();
    assert!(ok, "{err}");
    assert!(out.contains("optional bool verify_ssl"), "{out}");

    let mut cmd = grpcurl();
    cmd.args(["-plaintext", &addr, "grpc.health.v1.Health/Check"]);
    let (ok, out, err) = tokio::task::spawn_blocking(move || run(cmd)).await.unwrap();
    assert!(ok, "{err}");
    assert!(out.contains("SERVING"), "{out}");

    // A streaming call: progress, then the result, as JSON lines.
    let dir = server.packs_dir();
    let a = write_pack(&dir, "a", &simple_pack("alpha", "1.0.0", &["beta@^1"]));
    let b = write_pack(&dir, "b", &simple_pack("beta", "1.4.0", &[]));
    let body = serde_json::json!({ "pack_paths": [path_str(&a), path_str(&b)] }).to_string();
    let mut cmd = grpcurl();
    cmd.args([
        "-plaintext",
        "-H",
        &format!("authorization: Bearer {}", server.token()),
        "-d",
        &body,
        &addr,
        "attune.packs.v1.PackService/Dependencies",
    ]);
    let (ok, out, err) = tokio::task::spawn_blocking(move || run(cmd)).await.unwrap();
    assert!(ok, "{err}");
    let messages: Vec<serde_json::Value> = serde_json::Deserializer::from_str(&out)
        .into_iter()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(messages.len(), 3, "{out}");
    assert_eq!(messages[0]["progress"]["stage"], "STAGE_ANALYZE");
    assert_eq!(messages[1]["progress"]["done"], "2");
    let result = &messages[2]["result"];
    assert_eq!(result["dependencies"][0]["packRef"], "beta");
    assert_eq!(result["dependencies"][0]["providedByRequest"], "1.4.0");

    // Install, over reflection alone: both packs, dependency first.
    let base = server.root.path().canonicalize().unwrap().join("installed");
    let body = serde_json::json!({
        "packs": [path_str(&a), path_str(&b)],
        "packs_base_dir": path_str(&base),
    })
    .to_string();
    let mut cmd = grpcurl();
    cmd.args([
        "-plaintext",
        "-H",
        &format!("authorization: Bearer {}", server.token()),
        "-d",
        &body,
        &addr,
        "attune.packs.v1.PackService/Install",
    ]);
    let (ok, out, err) = tokio::task::spawn_blocking(move || run(cmd)).await.unwrap();
    assert!(ok, "{err}");
    let messages: Vec<serde_json::Value> = serde_json::Deserializer::from_str(&out)
        .into_iter()
        .collect::<Result<_, _>>()
        .unwrap();
    let result = &messages.last().unwrap()["result"];
    assert_eq!(result["success"], true, "{out}");
    assert_eq!(result["installed"][0]["packRef"], "beta");
    assert_eq!(result["installed"][1]["packRef"], "alpha");
    assert!(base.join("alpha/pack.yaml").exists());
    let body = serde_json::json!({ "pack_paths": [path_str(&a), path_str(&b)] }).to_string();

    // Without a token: Unauthenticated.
    let mut cmd = grpcurl();
    cmd.args([
        "-plaintext",
        "-d",
        &body,
        &addr,
        "attune.packs.v1.PackService/Dependencies",
    ]);
    let (ok, _out, err) = tokio::task::spawn_blocking(move || run(cmd)).await.unwrap();
    assert!(!ok);
    assert!(
        err.contains("Unauthenticated") && err.contains("missing authorization"),
        "{err}"
    );
    server.stop().await;
}
