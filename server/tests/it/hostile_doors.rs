//! Hostile callers at the doors: login floods and guessing, tokens that lie about
//! time or forge log lines, bytes that are not protobuf, REST errors axum answers by
//! itself, credentials in source URLs, and a database that is not there.

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use attune_packs_client::{Client, pb};
use attune_packs_server::{auth::unix_now, config::Config, store::Db};
use futures::StreamExt;
use serde_json::{Value, json};
use tonic::Code;

use crate::{
    common::{Backend, TestServer, on_both_backends, path_str, simple_pack, write_pack},
    support::{archives, http::FileServer, packs::pack_files},
};

/// Resident memory of this process (the server runs in it), in bytes.
fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .expect("VmRSS in /proc/self/status");
    let kib: u64 = line
        .split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .expect("VmRSS value");
    kib * 1024
}

struct LoginAnswer {
    status: u16,
    retry_after: Option<u64>,
    body: Value,
}

async fn login(http: &reqwest::Client, server: &str, body: String) -> LoginAnswer {
    try_login(http, server, body).await.unwrap()
}

/// `Err` when the connection broke: a server refusing a large body may answer and
/// close before the client has finished sending it.
async fn try_login(
    http: &reqwest::Client,
    server: &str,
    body: String,
) -> Result<LoginAnswer, reqwest::Error> {
    let response = http
        .post(format!("{server}/api/v1/auth/login"))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await?;
    let status = response.status().as_u16();
    let retry_after = response
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    let body = serde_json::from_slice(&response.bytes().await?).unwrap_or(Value::Null);
    Ok(LoginAnswer {
        status,
        retry_after,
        body,
    })
}

async fn json_of(response: reqwest::Response) -> Value {
    let bytes = response.bytes().await.unwrap();
    serde_json::from_slice(&bytes)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&bytes)))
}

fn credentials(email: &str, password: &str) -> String {
    json!({"email": email, "password": password}).to_string()
}

/// Every error answer of the gateway has the original API's envelope.
fn assert_envelope(body: &Value, status: u16) {
    let mut keys: Vec<&str> = body
        .as_object()
        .unwrap_or_else(|| panic!("not a JSON object: {body}"))
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort();
    assert_eq!(keys, ["error", "message", "status"], "{body}");
    assert_eq!(body["status"], status, "{body}");
    assert!(!body["message"].as_str().unwrap().is_empty(), "{body}");
}

/// 2,000 failed logins from one address at concurrency 16 — distinct maximal emails,
/// 1 KiB passwords and every tenth body a 2 MB email — with per-address throttling
/// disabled so that the argon2 pool and the table bounds are what holds: memory stays
/// bounded, never more than `hash_concurrency` hashes run, the waiting queue overflows
/// into 503s, and the throttle table never passes `max_tracked`.
async fn failed_login_flood_stays_bounded(backend: Backend) {
    let server = TestServer::start_with(backend, |c: &mut Config| {
        c.login.free_failures_per_address = u32::MAX;
        c.login.max_tracked = 100;
        c.login.max_waiting = 8;
    })
    .await;
    let base = server.url();
    let http = reqwest::Client::new();
    // The server closes a connection whose oversized body it refused: those go on
    // connections of their own, so that no other request lands on a closed one.
    let unpooled = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let before = rss_bytes();
    let next = Arc::new(AtomicUsize::new(0));
    let statuses: Vec<Vec<u16>> = futures::stream::iter(0..16)
        .map(|_| {
            let (http, unpooled) = (http.clone(), unpooled.clone());
            let (base, next) = (base.clone(), Arc::clone(&next));
            async move {
                let mut seen = Vec::new();
                loop {
                    let i = next.fetch_add(1, Ordering::SeqCst);
                    if i >= 2_000 {
                        return seen;
                    }
                    let email = if i % 10 == 0 {
                        format!("{}@example.com", "x".repeat(2 * 1024 * 1024))
                    } else {
                        let local = format!("{i:06}{}", "u".repeat(254 - 6 - 12));
                        format!("{local}@example.com")
                    };
                    let body = credentials(&email, &"p".repeat(1024));
                    let client = if i % 10 == 0 { &unpooled } else { &http };
                    match try_login(client, &base, body).await {
                        Ok(answer) => seen.push(answer.status),
                        // Only an oversized body may be cut off mid-send.
                        Err(_) if i % 10 == 0 => seen.push(413),
                        Err(e) => panic!("login {i}: {e}"),
                    }
                }
            }
        })
        .buffer_unordered(16)
        .collect()
        .await;
    let statuses: Vec<u16> = statuses.into_iter().flatten().collect();
    let grown = rss_bytes().saturating_sub(before);

    assert_eq!(statuses.len(), 2_000);
    let count = |s: u16| statuses.iter().filter(|x| **x == s).count();
    assert_eq!(
        count(413),
        200,
        "every 2 MB email is refused by size (413, or the connection closed on it)"
    );
    assert_eq!(
        count(401) + count(503),
        1_800,
        "the rest fail or find the queue full: {:?}",
        statuses
            .iter()
            .filter(|s| ![401, 413, 503].contains(*s))
            .collect::<Vec<_>>()
    );
    let stats = server.state.login.hashes.stats();
    eprintln!(
        "login flood: RSS +{} MB; 401: {}, 413: {}, 503: {}; {stats:?}; tracked {}",
        grown / 1024 / 1024,
        count(401),
        count(413),
        count(503),
        server.state.login.throttle.tracked()
    );
    assert!(stats.peak_concurrent <= 2, "{stats:?}");
    assert_eq!(stats.verified, count(401) as u64, "{stats:?}");
    assert!(
        stats.memory_bytes <= 2 * 19 * 1024 * 1024 + 4096,
        "argon2 memory is the pool's: {stats:?}"
    );
    assert!(
        server.state.login.throttle.tracked() <= 100,
        "{}",
        server.state.login.throttle.tracked()
    );
    assert!(
        grown < 200 * 1024 * 1024,
        "RSS grew by {} MB",
        grown / 1024 / 1024
    );
    server.stop().await;
}
on_both_backends!(failed_login_flood_stays_bounded);

/// With the default settings the same flood from one address is refused by the
/// per-address throttle after its free failures: 429 with Retry-After, not hashed.
async fn one_address_is_throttled_across_emails(backend: Backend) {
    let server = TestServer::start(backend).await;
    let base = server.url();
    let http = reqwest::Client::new();
    let answers: Vec<LoginAnswer> = futures::stream::iter(0..2_000)
        .map(|i| {
            let (http, base) = (http.clone(), base.clone());
            async move {
                login(
                    &http,
                    &base,
                    credentials(&format!("u{i}@example.com"), "guess guess"),
                )
                .await
            }
        })
        .buffer_unordered(16)
        .collect()
        .await;
    let throttled: Vec<&LoginAnswer> = answers.iter().filter(|a| a.status == 429).collect();
    let failed = answers.iter().filter(|a| a.status == 401).count();
    let free = server.state.config.login.free_failures_per_address as usize;
    assert_eq!(throttled.len() + failed, 2_000);
    // After the free failures the waits double from 250 ms: a few more are admitted
    // while the flood lasts, never more than the doublings that fit in a minute.
    assert!(failed <= free + 8, "{failed} hashed");
    for answer in &throttled {
        assert!(answer.retry_after.is_some_and(|s| s >= 1));
        assert_envelope(&answer.body, 429);
    }
    assert_eq!(server.state.login.hashes.stats().verified, failed as u64);
    server.stop().await;
}
on_both_backends!(one_address_is_throttled_across_emails);

/// 200 parallel guesses at an email already throttled: every one is refused with 429
/// and Retry-After, none is hashed — the same treatment 200 sequential guesses get.
/// The right password is no exception while the wait lasts.
async fn parallel_guesses_on_a_throttled_email_are_not_hashed(backend: Backend) {
    let server = TestServer::start_with(backend, |c: &mut Config| {
        c.login.base_delay = Duration::from_secs(60);
    })
    .await;
    attune_packs_server::users::add_user(&server.state.db, "victim@example.com", "right password")
        .await
        .unwrap();
    let base = server.url();
    let http = reqwest::Client::new();
    let free = server.state.config.login.free_failures_per_email;
    for _ in 0..free {
        let answer = login(
            &http,
            &base,
            credentials("victim@example.com", "guess guess"),
        )
        .await;
        assert_eq!(answer.status, 401, "{}", answer.body);
    }
    let hashed_before = server.state.login.hashes.stats().verified;
    let started = Instant::now();
    let answers: Vec<LoginAnswer> = futures::future::join_all((0..200).map(|i| {
        let (http, base) = (http.clone(), base.clone());
        async move {
            let email = if i % 2 == 0 {
                "victim@example.com"
            } else {
                "  VICTIM@example.com"
            };
            login(&http, &base, credentials(email, &format!("guess {i}"))).await
        }
    }))
    .await;
    let elapsed = started.elapsed();
    for answer in &answers {
        assert_eq!(answer.status, 429, "{}", answer.body);
        assert_envelope(&answer.body, 429);
        let retry = answer.retry_after.expect("Retry-After");
        assert!((1..=60).contains(&retry), "{retry}");
        assert!(
            answer.body["message"]
                .as_str()
                .unwrap()
                .contains("retry in")
        );
    }
    assert_eq!(
        server.state.login.hashes.stats().verified,
        hashed_before,
        "no guess was hashed"
    );
    assert!(elapsed < Duration::from_secs(20), "{elapsed:?}");
    let right = login(
        &http,
        &base,
        credentials("victim@example.com", "right password"),
    )
    .await;
    assert_eq!(right.status, 429);
    server.stop().await;
}
on_both_backends!(parallel_guesses_on_a_throttled_email_are_not_hashed);

register_test!(over_long_login_input_is_refused_before_any_work);
/// Over-long emails and passwords are 400 before any lookup, hash or table entry; an
/// over-long body is 413 in the JSON envelope.
async fn over_long_login_input_is_refused_before_any_work() {
    let server = TestServer::start(Backend::Sqlite).await;
    let base = server.url();
    let http = reqwest::Client::new();
    let long_email = format!("{}@example.com", "a".repeat(250));
    let answer = login(&http, &base, credentials(&long_email, "guess guess")).await;
    assert_eq!(answer.status, 400);
    assert_envelope(&answer.body, 400);
    assert!(
        answer.body["message"]
            .as_str()
            .unwrap()
            .contains("at most 254"),
        "{}",
        answer.body
    );
    let answer = login(
        &http,
        &base,
        credentials("a@example.com", &"p".repeat(1025)),
    )
    .await;
    assert_eq!(answer.status, 400);
    assert!(
        answer.body["message"]
            .as_str()
            .unwrap()
            .contains("login.max_password_bytes"),
        "{}",
        answer.body
    );
    let answer = login(
        &http,
        &base,
        credentials(&"a".repeat(64 * 1024), "guess guess"),
    )
    .await;
    assert_eq!(answer.status, 413);
    assert_envelope(&answer.body, 413);
    let stats = server.state.login.hashes.stats();
    assert_eq!(stats.verified, 0);
    assert_eq!(server.state.login.throttle.tracked(), 0);
    server.stop().await;
}

fn status_of<T: std::fmt::Debug>(
    result: Result<T, attune_packs_client::ClientError>,
) -> tonic::Status {
    result
        .expect_err("the call must fail")
        .status()
        .expect("a gRPC status")
        .clone()
}

register_test!(tokens_with_future_nbf_or_hostile_subjects_are_refused);
/// A token not valid yet is refused on both doors; so is one whose subject could
/// forge log lines or is absurdly long.
async fn tokens_with_future_nbf_or_hostile_subjects_are_refused() {
    let server = TestServer::start(Backend::Sqlite).await;
    let auth = &server.state.auth;
    let pack = write_pack(&server.packs_dir(), "p", &simple_pack("pp", "1.0.0", &[]));
    let request = || pb::DependenciesRequest {
        pack_paths: vec![path_str(&pack)],
        ..Default::default()
    };
    let cases = [
        (
            auth.issue_not_before("alice", unix_now() + 3600, Duration::from_secs(600)),
            "not valid yet",
        ),
        (
            auth.issue(
                "alice\nINFO rpc{subject=admin}: forged",
                Duration::from_secs(600),
            ),
            "control characters",
        ),
        (
            auth.issue("\u{1b}[2J\u{1b}[31mroot", Duration::from_secs(600)),
            "control characters",
        ),
        (
            auth.issue(&"s".repeat(10_000), Duration::from_secs(600)),
            "at most 256",
        ),
    ];
    let http = reqwest::Client::new();
    for (token, reason) in &cases {
        let mut client = Client::connect(&server.url(), token).await.unwrap();
        let status = status_of(client.dependencies(request()).await);
        assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
        assert!(status.message().contains(reason), "{status:?}");
        let response = http
            .post(format!("{}/api/v1/packs/dependencies", server.url()))
            .bearer_auth(token)
            .header("content-type", "application/json")
            .body(json!({"pack_paths": [path_str(&pack)]}).to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 401);
        let body: Value = json_of(response).await;
        assert_envelope(&body, 401);
        assert!(body["message"].as_str().unwrap().contains(reason), "{body}");
    }
    let past = auth.issue_not_before("alice", unix_now() - 5, Duration::from_secs(600));
    let mut client = Client::connect(&server.url(), &past).await.unwrap();
    assert!(client.dependencies(request()).await.is_ok());
    server.stop().await;
}

/// A raw gRPC call over HTTP/2: `message` framed as one length-prefixed message.
async fn raw_grpc(server: &TestServer, path: &str, message: &[u8]) -> (String, String) {
    let http = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let mut body = vec![0u8];
    body.extend_from_slice(&(message.len() as u32).to_be_bytes());
    body.extend_from_slice(message);
    let response = http
        .post(format!("{}{path}", server.url()))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("authorization", format!("Bearer {}", server.token()))
        .body(body)
        .send()
        .await
        .unwrap();
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string()
    };
    (header("grpc-status"), header("grpc-message"))
}

register_test!(malformed_protobuf_is_invalid_argument);
/// Bytes that are not the request message answer INVALID_ARGUMENT naming the decode
/// problem, on PackService and health alike; valid calls are unchanged.
async fn malformed_protobuf_is_invalid_argument() {
    let server = TestServer::start(Backend::Sqlite).await;
    let garbage = [0xff_u8; 7];
    for path in [
        "/attune.packs.v1.PackService/Dependencies",
        "/attune.packs.v1.PackService/Download",
        "/grpc.health.v1.Health/Check",
    ] {
        let (status, message) = raw_grpc(&server, path, &garbage).await;
        assert_eq!(status, "3", "{path}: {status} {message}");
        assert!(message.contains("decode"), "{path}: {message}");
    }
    // A field of the wrong wire type.
    let (status, message) = raw_grpc(
        &server,
        "/attune.packs.v1.PackService/Dependencies",
        &[0x0d, 1, 2, 3, 4],
    )
    .await;
    assert_eq!(status, "3", "{message}");
    // Still fine: an empty (all-default) message decodes and is judged by the service.
    let (status, message) = raw_grpc(&server, "/attune.packs.v1.PackService/Download", &[]).await;
    assert_eq!(status, "3", "{message}");
    assert!(message.contains("packs"), "{message}");
    let mut client = server.client().await;
    let pack = write_pack(&server.packs_dir(), "p", &simple_pack("pp", "1.0.0", &[]));
    let ok = client
        .dependencies(pb::DependenciesRequest {
            pack_paths: vec![path_str(&pack)],
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(ok.analyzed_packs.len(), 1);
    server.stop().await;
}

register_test!(rest_errors_axum_answers_itself_use_the_json_envelope);
/// 413 and 405 come in the gateway's JSON envelope with the right status (and
/// `Allow`); unknown API paths are a JSON 404.
async fn rest_errors_axum_answers_itself_use_the_json_envelope() {
    let server = TestServer::start(Backend::Sqlite).await;
    let http = reqwest::Client::new();
    let big = format!(r#"{{"pack_paths": ["{}"]}}"#, "a".repeat(3 * 1024 * 1024));
    let response = http
        .post(format!("{}/api/v1/packs/dependencies", server.url()))
        .bearer_auth(server.token())
        .header("content-type", "application/json")
        .body(big)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 413);
    // The unread rest of the body makes the connection unusable: the client must not
    // send the next request on it.
    assert_eq!(response.headers()["connection"], "close");
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/json")
    );
    assert_envelope(&json_of(response).await, 413);

    let response = http
        .get(format!("{}/api/v1/packs/download", server.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 405);
    assert_eq!(response.headers()["allow"], "POST");
    let body: Value = json_of(response).await;
    assert_envelope(&body, 405);
    assert!(body["message"].as_str().unwrap().contains("POST"), "{body}");

    let response = http
        .delete(format!("{}/api/v1/auth/login", server.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 405);
    assert_envelope(&json_of(response).await, 405);

    let response = http
        .get(format!("{}/api/v1/no-such-thing", server.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 404);
    assert_envelope(&json_of(response).await, 404);
    server.stop().await;
}

const SECRET_WORD: &str = "hunter2pw";

register_test!(credentials_in_source_urls_are_refused);
/// Credentials in any source URL are refused before anything is fetched, on every
/// RPC that takes sources and on REST, and the refusal never repeats the secret.
async fn credentials_in_source_urls_are_refused() {
    let server = TestServer::start_with(Backend::Sqlite, |c: &mut Config| {
        c.download.allow_http = true;
    })
    .await;
    let mut client = server.client().await;
    let dest = path_str(&server.root.path().canonicalize().unwrap().join("dl"));
    let sources = [
        format!("git://user:{SECRET_WORD}@127.0.0.1/x"),
        format!("git://{SECRET_WORD}@127.0.0.1/x"),
        format!("https://u:{SECRET_WORD}@127.0.0.1/p.tar.gz"),
        format!("https://127.0.0.1/p.tar.gz?token={SECRET_WORD}"),
        format!("ssh://git:{SECRET_WORD}@127.0.0.1/org/repo.git"),
        format!("git:{SECRET_WORD}@127.0.0.1:org/repo.git"),
    ];
    let check = |status: tonic::Status| {
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        assert!(
            status
                .message()
                .contains("credentials in URLs are not accepted"),
            "{status:?}"
        );
        assert!(status.message().contains("download.git."), "{status:?}");
        assert!(!status.message().contains(SECRET_WORD), "{status:?}");
    };
    for source in &sources {
        check(status_of(
            client
                .download(pb::DownloadRequest {
                    packs: vec![source.clone()],
                    destination_dir: dest.clone(),
                    ..Default::default()
                })
                .await,
        ));
        check(status_of(
            client
                .install(pb::InstallRequest {
                    packs: vec![source.clone()],
                    ..Default::default()
                })
                .await,
        ));
        check(status_of(
            client
                .dependencies(pb::DependenciesRequest {
                    pack_paths: vec![source.clone()],
                    ..Default::default()
                })
                .await,
        ));
    }
    let registry = format!("https://reader:{SECRET_WORD}@127.0.0.1/index.json");
    check(status_of(
        client
            .download(pb::DownloadRequest {
                packs: vec!["core".into()],
                destination_dir: dest.clone(),
                registry_url: Some(registry.clone()),
                ..Default::default()
            })
            .await,
    ));
    check(status_of(
        client
            .install(pb::InstallRequest {
                packs: vec!["core".into()],
                registry_url: Some(registry),
                ..Default::default()
            })
            .await,
    ));
    let response = reqwest::Client::new()
        .post(format!("{}/api/v1/packs/download", server.url()))
        .bearer_auth(server.token())
        .header("content-type", "application/json")
        .body(json!({"packs": [sources[0]], "destination_dir": dest}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 400);
    let body: Value = json_of(response).await;
    assert!(!body.to_string().contains(SECRET_WORD), "{body}");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("credentials in URLs")
    );
    // Nothing was created for any of them.
    assert!(
        !std::path::Path::new(&dest).exists() || std::fs::read_dir(&dest).unwrap().count() == 0
    );
    server.stop().await;
}

/// A source with a harmless query string is fetched, but what is stored — the
/// provenance sidecar, `packs.source` and `packs.source_url` — carries no query.
async fn stored_sources_carry_no_query_or_userinfo(backend: Backend) {
    let files = FileServer::start_http().await;
    files.put(
        "quiet-1.0.0.tar.gz",
        archives::tar_gz(&pack_files("quiet", "1.0.0")),
    );
    let source = format!("{}?download=1&mirror=eu", files.url("quiet-1.0.0.tar.gz"));
    let server = TestServer::start_with(backend, |c: &mut Config| {
        c.download.allow_http = true;
    })
    .await;
    let mut client = server.client().await;
    let dest = server.root.path().canonicalize().unwrap().join("dl");
    let stream = client
        .download_stream(pb::DownloadRequest {
            packs: vec![source.clone()],
            destination_dir: path_str(&dest),
            ..Default::default()
        })
        .await
        .unwrap();
    let mut shown = Vec::new();
    let result = attune_packs_client::finish(stream, |p| {
        shown.push(format!("{} {}", p.pack, p.message));
    })
    .await
    .unwrap();
    assert_eq!(result.success_count, 1, "{result:?}");
    assert!(shown.len() >= 3, "{shown:#?}");
    for line in &shown {
        assert!(
            !line.contains("download=1"),
            "progress shows the query: {line}"
        );
    }
    let sidecar = std::fs::read_to_string(dest.join(".quiet.source.json")).unwrap();
    assert!(!sidecar.contains("download=1"), "{sidecar}");
    assert!(!sidecar.contains('?'), "{sidecar}");
    let recorded: Value = serde_json::from_str(&sidecar).unwrap();
    assert_eq!(recorded["source"], files.url("quiet-1.0.0.tar.gz"));
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dest.join(".quiet.source.json"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(
            mode & 0o077,
            mode & 0o044,
            "readable to others, nothing more"
        );
    }

    let registered = client
        .register_batch(pb::RegisterBatchRequest {
            pack_paths: vec![path_str(&dest.join("quiet"))],
            packs_base_dir: Some(path_str(&server.packs_dir())),
            skip_tests: Some(true),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(registered.registered_packs.len(), 1, "{registered:?}");
    let rows = server.state.db.registered_sources().await.unwrap();
    let row = rows.iter().find(|r| r.pack_ref == "quiet").unwrap();
    for stored in [&row.source, &row.source_url].into_iter().flatten() {
        assert!(!stored.contains('?'), "{stored}");
    }
    assert_eq!(
        row.source.as_deref(),
        Some(files.url("quiet-1.0.0.tar.gz").as_str())
    );
    server.stop().await;
}
on_both_backends!(stored_sources_carry_no_query_or_userinfo);

register_test!(a_closed_database_port_fails_fast_and_names_where);
/// A PostgreSQL URL whose port is closed fails at once, naming host and port and the
/// operating system's error, and never the password.
async fn a_closed_database_port_fails_fast_and_names_where() {
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let url = format!("postgres://attune:{SECRET_WORD}@127.0.0.1:{port}/attune");
    let started = Instant::now();
    let err = Db::connect_with_timeout(&url, Duration::from_secs(5))
        .await
        .unwrap_err();
    let elapsed = started.elapsed();
    let text = err.to_string();
    assert!(elapsed < Duration::from_secs(1), "{elapsed:?}: {text}");
    assert!(text.contains(&format!("127.0.0.1:{port}")), "{text}");
    assert!(text.to_lowercase().contains("refused"), "{text}");
    assert!(!text.contains(SECRET_WORD), "{text}");
    assert!(!format!("{err:?}").contains(SECRET_WORD), "{err:?}");

    // A host that never answers is cut at the connect timeout, also named.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent_port = silent.local_addr().unwrap().port();
    let url = format!("postgres://attune:{SECRET_WORD}@127.0.0.1:{silent_port}/attune");
    let started = Instant::now();
    let err = Db::connect_with_timeout(&url, Duration::from_millis(500))
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(started.elapsed() < Duration::from_secs(3), "{text}");
    assert!(text.contains(&format!("127.0.0.1:{silent_port}")), "{text}");
    assert!(text.contains("database_connect_timeout"), "{text}");
    assert!(!text.contains(SECRET_WORD), "{text}");
}

const SERVER_BIN: &str = env!("CARGO_BIN_EXE_attune-packs-server");

/// The shipped server, logging (uncoloured text) into a file.
struct LoggedServer {
    child: std::process::Child,
    addr: String,
    log: std::path::PathBuf,
}

impl LoggedServer {
    fn start(root: &std::path::Path, secret: &str) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let addr = format!("127.0.0.1:{port}");
        let log = root.join("server.log");
        let child = std::process::Command::new(SERVER_BIN)
            .args(["serve", "--listen", &addr, "--data-dir"])
            .arg(root.join("data"))
            .env(
                "ATTUNE_PACKS_ALLOWED_ROOTS",
                format!("[{}]", root.display()),
            )
            .env("ATTUNE_PACKS_JWT_SECRET", secret)
            .env_remove("ATTUNE_PACKS_DATABASE_URL")
            .env("NO_COLOR", "1")
            .env("RUST_LOG", "info")
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(&addr).is_err() {
            assert!(Instant::now() < deadline, "server did not start listening");
            std::thread::sleep(Duration::from_millis(50));
        }
        Self { child, addr, log }
    }

    fn stop(mut self) -> String {
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
        std::fs::read_to_string(&self.log).unwrap()
    }
}

impl Drop for LoggedServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

register_test!(forged_subjects_never_reach_the_log);
/// Tokens whose subject carries a newline or escape sequences are refused on both
/// doors, and the log of the real binary holds no forged line and no escape byte.
async fn forged_subjects_never_reach_the_log() {
    let root = tempfile::tempdir().unwrap();
    let root_path = root.path().canonicalize().unwrap();
    let secret = "log-forging-test-secret";
    let server = LoggedServer::start(&root_path, secret);
    let auth = attune_packs_server::auth::Authenticator::new(
        &attune_packs_server::config::Secret::new(secret),
    );
    let pack = write_pack(&root_path, "p", &simple_pack("pp", "1.0.0", &[]));
    let forged = "FORGED-LINE INFO rpc{subject=admin}: call started";
    let url = format!("http://{}", server.addr);
    for subject in [
        format!("eve\n{forged}"),
        format!("eve\r\n{forged}"),
        format!("\u{1b}[2K\u{1b}[1G{forged}"),
    ] {
        let token = auth.issue(&subject, Duration::from_secs(600));
        let mut client = Client::connect(&url, &token).await.unwrap();
        let status = status_of(
            client
                .dependencies(pb::DependenciesRequest {
                    pack_paths: vec![path_str(&pack)],
                    ..Default::default()
                })
                .await,
        );
        assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
        let response = reqwest::Client::new()
            .post(format!("{url}/api/v1/packs/dependencies"))
            .bearer_auth(&token)
            .header("content-type", "application/json")
            .body(json!({"pack_paths": [path_str(&pack)]}).to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 401);
    }
    // A well-formed subject is logged as it is.
    let token = auth.issue("ops@example.com", Duration::from_secs(600));
    let mut client = Client::connect(&url, &token).await.unwrap();
    client
        .dependencies(pb::DependenciesRequest {
            pack_paths: vec![path_str(&pack)],
            ..Default::default()
        })
        .await
        .unwrap();
    let log = server.stop();
    assert!(log.contains("subject=ops@example.com"), "{log}");
    assert!(log.contains("rejected unauthenticated call"), "{log}");
    assert!(!log.contains('\u{1b}'), "escape bytes in the log:\n{log}");
    assert!(!log.contains('\r'), "carriage return in the log:\n{log}");
    for line in log.lines() {
        assert!(!line.starts_with("FORGED-LINE"), "forged line: {line}");
        assert!(
            !line.contains("FORGED-LINE"),
            "subject text reached the log: {line}"
        );
    }
}

register_test!(sync the_server_binary_names_an_unreachable_database_without_its_password);
/// The shipped binary started against a closed PostgreSQL port exits at once, naming
/// host and port and the OS error, never the password.
fn the_server_binary_names_an_unreachable_database_without_its_password() {
    let root = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let started = Instant::now();
    let out = std::process::Command::new(SERVER_BIN)
        .args(["migrate", "--data-dir"])
        .arg(root.path().join("data"))
        .args([
            "--database-url",
            &format!("postgres://attune:{SECRET_WORD}@127.0.0.1:{port}/attune"),
        ])
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(started.elapsed() < Duration::from_secs(3), "{stderr}");
    assert!(stderr.contains(&format!("127.0.0.1:{port}")), "{stderr}");
    assert!(stderr.to_lowercase().contains("refused"), "{stderr}");
    assert!(!stderr.contains(SECRET_WORD), "{stderr}");
}

register_test!(install_locks_carry_no_query);
/// Install of an archive URL with a harmless query: the lock it returns, and the row it
/// writes, name the URL without the query.
async fn install_locks_carry_no_query() {
    let files = FileServer::start_http().await;
    files.put(
        "calm-1.0.0.tar.gz",
        archives::tar_gz(&pack_files("calm", "1.0.0")),
    );
    let source = format!("{}?download=1", files.url("calm-1.0.0.tar.gz"));
    let server = TestServer::start_with(Backend::Sqlite, |c: &mut Config| {
        c.download.allow_http = true;
    })
    .await;
    let mut client = server.client().await;
    let result = client
        .install(pb::InstallRequest {
            packs: vec![source],
            packs_base_dir: Some(path_str(&server.packs_dir())),
            skip_tests: Some(true),
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(result.success, "{result:#?}");
    let lock = result.lock.expect("a lock");
    assert_eq!(lock.packs.len(), 1, "{lock:#?}");
    assert_eq!(lock.packs[0].source, files.url("calm-1.0.0.tar.gz"));
    let rows = server.state.db.registered_sources().await.unwrap();
    let row = rows.iter().find(|r| r.pack_ref == "calm").unwrap();
    for stored in [&row.source, &row.source_url].into_iter().flatten() {
        assert!(!stored.contains('?'), "{stored}");
    }
    server.stop().await;
}
