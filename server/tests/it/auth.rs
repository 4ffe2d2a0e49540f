use std::time::Duration;

use attune_packs_client::{Client, pb};
use attune_packs_server::{auth::Authenticator, config::Secret};
use tonic::Code;

use crate::common::{Backend, SECRET, TestServer, path_str, simple_pack, write_pack};

fn deps_request(path: &str) -> pb::DependenciesRequest {
    pb::DependenciesRequest {
        pack_paths: vec![path.to_string()],
        ..Default::default()
    }
}

async fn call_with_token(server: &TestServer, token: &str) -> tonic::Status {
    let pack = write_pack(
        &server.packs_dir(),
        "a",
        &simple_pack("alpha", "1.0.0", &[]),
    );
    let mut client = Client::connect(&server.url(), token).await.unwrap();
    let err = client
        .dependencies(deps_request(&path_str(&pack)))
        .await
        .unwrap_err();
    err.status().expect("a gRPC status").clone()
}

register_test!(tokens_that_are_missing_expired_or_foreign_are_refused_saying_why);
async fn tokens_that_are_missing_expired_or_foreign_are_refused_saying_why() {
    let server = TestServer::start(Backend::Sqlite).await;
    let ours = Authenticator::new(&Secret::new(SECRET));

    let expired = ours.issue_with_times("tester", 1_000, 2_000);
    let status = call_with_token(&server, &expired).await;
    assert_eq!(status.code(), Code::Unauthenticated);
    assert_eq!(status.message(), "token expired");

    let foreign =
        Authenticator::new(&Secret::new("another secret")).issue("eve", Duration::from_secs(60));
    let status = call_with_token(&server, &foreign).await;
    assert_eq!(status.code(), Code::Unauthenticated);
    assert!(
        status.message().contains("signature"),
        "{}",
        status.message()
    );

    let status = call_with_token(&server, "not-a-jwt").await;
    assert_eq!(status.code(), Code::Unauthenticated);
    assert!(
        status.message().contains("malformed"),
        "{}",
        status.message()
    );

    // No authorization metadata at all: a raw generated client without the interceptor.
    let mut raw = pb::pack_service_client::PackServiceClient::connect(server.url())
        .await
        .unwrap();
    let status = raw.dependencies(deps_request("/x")).await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    assert!(
        status.message().starts_with("missing authorization"),
        "{}",
        status.message()
    );

    // A valid token passes.
    let pack = write_pack(
        &server.packs_dir(),
        "ok",
        &simple_pack("okay", "1.0.0", &[]),
    );
    let mut client = server.client().await;
    let result = client
        .dependencies(deps_request(&path_str(&pack)))
        .await
        .unwrap();
    assert_eq!(result.analyzed_packs.len(), 1);
    server.stop().await;
}

register_test!(malformed_requests_are_invalid_argument);
async fn malformed_requests_are_invalid_argument() {
    let server = TestServer::start(Backend::Sqlite).await;
    let mut client = server.client().await;
    for status in [
        client
            .build_envs(pb::BuildEnvsRequest {
                pack_paths: vec!["".into()],
                ..Default::default()
            })
            .await
            .unwrap_err(),
        client
            .register_batch(pb::RegisterBatchRequest {
                pack_paths: vec!["".into()],
                ..Default::default()
            })
            .await
            .unwrap_err(),
    ] {
        // Every stage is implemented: a malformed request is refused, not unimplemented.
        let status = status.status().unwrap();
        assert_eq!(status.code(), Code::InvalidArgument);
        assert!(
            status.message().contains("pack_paths[0]"),
            "{}",
            status.message()
        );
    }

    let err = client
        .download(pb::DownloadRequest::default())
        .await
        .unwrap_err();
    let status = err.status().unwrap();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("packs"), "{}", status.message());

    let err = client
        .dependencies(pb::DependenciesRequest {
            pack_paths: vec!["/tmp/a".into(), "  ".into()],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.status().unwrap().code(), Code::InvalidArgument);
    assert!(err.status().unwrap().message().contains("pack_paths[1]"));
    server.stop().await;
}
