//! Who may do what: the grants a token carries, checked on every RPC and every REST
//! endpoint, for minted tokens, login users and tokens issued before grants existed.

use std::{path::Path, process::Command, str::FromStr, time::Duration};

use attune_packs_client::pb::{self, pack_service_client::PackServiceClient};
use attune_packs_server::{
    auth::Authenticator,
    config::Secret,
    grants::{Grant, GrantSet},
    users,
};
use serde_json::{Value, json};
use tonic::{
    Code, Request, Status,
    codegen::http::uri::PathAndQuery,
    metadata::{Ascii, MetadataValue},
    service::{Interceptor, interceptor::InterceptedService},
    transport::Channel,
};

use crate::common::{Backend, TestServer, on_both_backends, path_str, simple_pack, write_pack};

const SERVER: &str = env!("CARGO_BIN_EXE_attune-packs-server");
const TTL: Duration = Duration::from_secs(600);

#[derive(Clone)]
struct Bearer(MetadataValue<Ascii>);

impl Interceptor for Bearer {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        request
            .metadata_mut()
            .insert("authorization", self.0.clone());
        Ok(request)
    }
}

type Raw = PackServiceClient<InterceptedService<Channel, Bearer>>;

/// The generated client (every RPC, including those the CLI client does not wrap yet)
/// with `token`.
async fn raw(server: &TestServer, token: &str) -> Raw {
    let channel = Channel::from_shared(server.url())
        .unwrap()
        .connect()
        .await
        .unwrap();
    PackServiceClient::with_interceptor(channel, Bearer(format!("Bearer {token}").parse().unwrap()))
}

fn token_with(server: &TestServer, grants: &[&str]) -> String {
    server
        .state
        .auth
        .issue_with_grants("reader", TTL, &GrantSet::parse(grants).unwrap())
}

/// A token without a `grants` claim, as every token was before grants existed.
fn legacy_token(server: &TestServer) -> String {
    server.state.auth.issue_with_raw_grants("old", TTL, None)
}

#[track_caller]
fn assert_denied<T: std::fmt::Debug>(result: Result<T, Status>, rpc: &str, grant: &str) {
    let status = result.expect_err(rpc);
    assert_eq!(
        status.code(),
        Code::PermissionDenied,
        "{rpc}: {}",
        status.message()
    );
    let message = status.message();
    assert!(
        message.contains(&format!("needs the grant `{grant}`"))
            && message.contains(&format!("token issue --grant {grant}")),
        "{rpc}: {message}"
    );
}

/// Allowed: the call went past the grant check and succeeded.
#[track_caller]
fn assert_allowed<T>(result: Result<T, Status>, rpc: &str) {
    if let Err(status) = result {
        panic!(
            "{rpc} failed for a caller with its grant: {:?} {}",
            status.code(),
            status.message()
        );
    }
}

/// Drains a stream the server accepted, so that an error inside it is seen too.
async fn drained<E>(
    result: Result<tonic::Response<tonic::Streaming<E>>, Status>,
) -> Result<(), Status> {
    let mut stream = result?.into_inner();
    while stream.message().await?.is_some() {}
    Ok(())
}

/// Installs `alpha` 1.0.0 with a full token: the state a read-only caller must not
/// change.
async fn install_alpha(server: &TestServer) -> std::path::PathBuf {
    let root = server.root.path().canonicalize().unwrap();
    let src = write_pack(
        &root.join("src"),
        "alpha",
        &simple_pack("alpha", "1.0.0", &[]),
    );
    let mut client = server.client().await;
    let r = client
        .register_batch(pb::RegisterBatchRequest {
            pack_paths: vec![path_str(&src)],
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(r.registered_packs.len(), 1, "{:#?}", r.failed_packs);
    src
}

/// What a refused call must not have changed: the registered packs, the event outbox
/// and the pack directory.
async fn snapshot(server: &TestServer) -> (Vec<(String, String)>, usize, Vec<String>) {
    let packs = server
        .state
        .db
        .registered_packs()
        .await
        .unwrap()
        .into_iter()
        .map(|p| (p.pack_ref, p.version))
        .collect();
    let events = outbox_len(server).await;
    let mut files: Vec<String> = walk(&server.state.config.packs_base_dir());
    files.sort();
    (packs, events, files)
}

async fn outbox_len(server: &TestServer) -> usize {
    use attune_packs_server::store::Db;
    const SQL: &str = "SELECT COUNT(*) FROM event_outbox";
    let n: i64 = match &server.state.db {
        Db::Sqlite(pool) => sqlx::query_scalar(SQL).fetch_one(pool).await.unwrap(),
        Db::Postgres(pool) => sqlx::query_scalar(SQL).fetch_one(pool).await.unwrap(),
    };
    n as usize
}

fn walk(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        out.push(path_str(&path));
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            out.extend(walk(&path));
        }
    }
    out
}

async fn read_only_tokens_read_and_are_refused_every_change(backend: Backend) {
    let server = TestServer::start(backend).await;
    let src = install_alpha(&server).await;
    let root = server.root.path().canonicalize().unwrap();
    let beta = write_pack(
        &root.join("src"),
        "beta",
        &simple_pack("beta", "1.0.0", &[]),
    );
    let installed = server.state.config.packs_base_dir().join("alpha");
    assert!(installed.join("pack.yaml").exists());
    let before = snapshot(&server).await;
    assert_eq!(before.0, [("alpha".to_string(), "1.0.0".to_string())]);

    let mut ro = raw(&server, &token_with(&server, &["packs:read"])).await;

    // Everything that only reads is allowed.
    assert_allowed(
        ro.list_packs(pb::ListPacksRequest::default()).await,
        "ListPacks",
    );
    assert_allowed(
        ro.get_pack(pb::GetPackRequest {
            r#ref: "alpha".into(),
        })
        .await,
        "GetPack",
    );
    assert_allowed(
        drained(
            ro.verify_packs(pb::VerifyPacksRequest {
                refs: vec!["alpha".into()],
            })
            .await,
        )
        .await,
        "VerifyPacks",
    );
    assert_allowed(
        ro.pack_history(pb::PackHistoryRequest {
            r#ref: "alpha".into(),
            ..Default::default()
        })
        .await,
        "PackHistory",
    );
    // A watch never ends: being let in (the stream opened) is the answer.
    assert_allowed(
        ro.watch_events(pb::WatchEventsRequest::default())
            .await
            .map(drop),
        "WatchEvents",
    );
    assert_allowed(
        ro.list_registries(pb::ListRegistriesRequest::default())
            .await,
        "ListRegistries",
    );
    assert_allowed(
        ro.search_packs(pb::SearchPacksRequest {
            keyword: "alpha".into(),
        })
        .await,
        "SearchPacks",
    );
    drained(
        ro.dependencies(pb::DependenciesRequest {
            pack_paths: vec![path_str(&src)],
            ..Default::default()
        })
        .await,
    )
    .await
    .expect("Dependencies with packs:read");

    // Every change is refused, one RPC at a time, before it does anything.
    let destination = root.join("downloads");
    assert_denied(
        ro.download(pb::DownloadRequest {
            packs: vec![path_str(&src)],
            destination_dir: path_str(&destination),
            ..Default::default()
        })
        .await,
        "Download",
        "packs:install",
    );
    assert!(!destination.exists(), "Download created its destination");
    assert_denied(
        ro.build_envs(pb::BuildEnvsRequest {
            pack_paths: vec![path_str(&installed)],
            force_rebuild: Some(true),
            ..Default::default()
        })
        .await,
        "BuildEnvs",
        "packs:install",
    );
    assert_denied(
        ro.register_batch(pb::RegisterBatchRequest {
            pack_paths: vec![path_str(&beta)],
            ..Default::default()
        })
        .await,
        "RegisterBatch",
        "packs:install",
    );
    assert_denied(
        ro.install(pb::InstallRequest {
            packs: vec![path_str(&beta)],
            ..Default::default()
        })
        .await,
        "Install",
        "packs:install",
    );
    assert_denied(
        ro.remove_packs(pb::RemovePacksRequest {
            refs: vec!["alpha".into()],
            force: true,
            ..Default::default()
        })
        .await,
        "RemovePacks",
        "packs:delete",
    );
    assert_denied(
        ro.rollback_pack(pb::RollbackPackRequest {
            r#ref: "alpha".into(),
            force: true,
            ..Default::default()
        })
        .await,
        "RollbackPack",
        "packs:delete",
    );
    assert_eq!(
        snapshot(&server).await,
        before,
        "a refused call changed something"
    );

    // The same calls over REST: every operation the OpenAPI document describes.
    let api = Rest::new(&server);
    let ro_token = token_with(&server, &["packs:read"]);
    for op in secured_operations() {
        let (status, body) = api.send(&op, &ro_token).await;
        if op.grant == "packs:read" {
            assert!(
                status != 403 && status != 401,
                "{} {}: {status} {body}",
                op.method,
                op.path
            );
        } else {
            assert_eq!(status, 403, "{} {}: {body}", op.method, op.path);
            assert_eq!(body["error"], "Forbidden", "{body}");
            assert_eq!(body["status"], 403, "{body}");
            let message = body["message"].as_str().unwrap();
            assert!(
                message.contains(&format!("needs the grant `{}`", op.grant))
                    && message.contains("the token has packs:read"),
                "{} {}: {message}",
                op.method,
                op.path
            );
        }
    }
    assert_eq!(
        snapshot(&server).await,
        before,
        "a refused request changed something"
    );
    server.stop().await;
}
on_both_backends!(read_only_tokens_read_and_are_refused_every_change);

/// A secured operation of the REST gateway, from the OpenAPI document it serves.
#[derive(Debug)]
struct Operation {
    method: String,
    path: String,
    grant: String,
    /// A body with every required field, each of the right type.
    body: Option<Value>,
}

/// Every operation that needs a token. Each must say which grant it needs
/// (`x-required-grant`): an endpoint added without one fails here.
fn secured_operations() -> Vec<Operation> {
    let spec: Value = serde_json::from_str(include_str!("../../src/rest/openapi.json")).unwrap();
    let mut out = Vec::new();
    for (path, item) in spec["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            if !["get", "post", "put", "patch", "delete"].contains(&method.as_str()) {
                continue;
            }
            let security = op.get("security").or(spec.get("security"));
            let open = security
                .and_then(Value::as_array)
                .is_none_or(|s| s.is_empty());
            if open {
                continue;
            }
            let grant = op["x-required-grant"].as_str().unwrap_or_else(|| {
                panic!("{method} {path} needs a token but names no x-required-grant")
            });
            assert!(Grant::from_str(grant).is_ok(), "{method} {path}: {grant}");
            let body = op
                .pointer("/requestBody/content/application~1json/schema")
                .map(|schema| example(&spec, schema));
            let query = required_query(&spec, op);
            out.push(Operation {
                method: method.to_uppercase(),
                path: if query.is_empty() {
                    path.clone()
                } else {
                    format!("{path}?{query}")
                },
                grant: grant.to_string(),
                body,
            });
        }
    }
    assert!(out.len() >= 5, "{out:?}");
    out
}

/// The operation's required query parameters, each with a plain value of its type.
fn required_query(spec: &Value, op: &Value) -> String {
    let mut pairs = Vec::new();
    for parameter in op["parameters"].as_array().into_iter().flatten() {
        let parameter = match parameter["$ref"].as_str() {
            Some(reference) => {
                let name = reference.trim_start_matches("#/components/parameters/");
                &spec["components"]["parameters"][name]
            }
            None => parameter,
        };
        if parameter["in"] != "query" || parameter["required"] != true {
            continue;
        }
        let value = match parameter["schema"]["type"].as_str() {
            Some("integer") | Some("number") => "1",
            Some("boolean") => "false",
            _ => "alpha",
        };
        pairs.push(format!("{}={value}", parameter["name"].as_str().unwrap()));
    }
    pairs.join("&")
}

/// A value of `schema` holding its required fields only, so that a request gets past
/// the JSON checks to the grant check.
fn example(spec: &Value, schema: &Value) -> Value {
    if let Some(reference) = schema["$ref"].as_str() {
        let name = reference.trim_start_matches("#/components/schemas/");
        return example(spec, &spec["components"]["schemas"][name]);
    }
    if let Some(first) = schema["allOf"].as_array().and_then(|a| a.first()) {
        return example(spec, first);
    }
    match schema["type"].as_str() {
        Some("object") | None => {
            let mut object = serde_json::Map::new();
            for name in schema["required"].as_array().into_iter().flatten() {
                let name = name.as_str().unwrap();
                object.insert(name.to_string(), example(spec, &schema["properties"][name]));
            }
            Value::Object(object)
        }
        Some("array") => json!([example(spec, &schema["items"])]),
        Some("string") => json!("/tmp/grants-test"),
        Some("integer") | Some("number") => json!(1),
        Some("boolean") => json!(false),
        Some(_) => Value::Null,
    }
}

struct Rest {
    http: reqwest::Client,
    base: String,
}

impl Rest {
    fn new(server: &TestServer) -> Self {
        Self {
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(60))
                .build()
                .unwrap(),
            base: server.url(),
        }
    }

    /// Sends `op` with `token`; path parameters name the installed pack `alpha`. Only
    /// the status and an error body are read: a stream (server-sent events) may not end.
    async fn send(&self, op: &Operation, token: &str) -> (u16, Value) {
        let mut path = op.path.clone();
        while let Some(start) = path.find('{') {
            let end = path[start..].find('}').unwrap() + start;
            path.replace_range(start..=end, "alpha");
        }
        let method = reqwest::Method::from_bytes(op.method.as_bytes()).unwrap();
        let mut request = self
            .http
            .request(method, format!("{}{path}", self.base))
            .header("authorization", format!("Bearer {token}"));
        if let Some(body) = &op.body {
            request = request
                .header("content-type", "application/json")
                .body(body.to_string());
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        if status < 400 {
            return (status, Value::Null);
        }
        let text = response.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }
}

/// Each method of `attune.packs.v1.PackService`, from the descriptor set the server
/// serves, with whether it streams its answer.
fn service_methods() -> Vec<(String, bool)> {
    use prost::Message;
    let set =
        prost_types::FileDescriptorSet::decode(attune_packs_proto::FILE_DESCRIPTOR_SET).unwrap();
    set.file
        .iter()
        .filter(|f| f.package() == "attune.packs.v1")
        .flat_map(|f| &f.service)
        .filter(|s| s.name() == "PackService")
        .flat_map(|s| &s.method)
        .map(|m| (m.name().to_string(), m.server_streaming()))
        .collect()
}

/// Calls `method` with an empty request message (valid for every request type).
async fn call_any(server: &TestServer, token: &str, method: &str, streaming: bool) -> Status {
    let channel = Channel::from_shared(server.url())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.unwrap();
    let path = PathAndQuery::from_str(&format!("/attune.packs.v1.PackService/{method}")).unwrap();
    let codec = tonic_prost::ProstCodec::<(), ()>::default();
    let mut request = Request::new(());
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    let result = if streaming {
        match grpc.server_streaming(request, path, codec).await {
            Ok(response) => {
                let mut stream = response.into_inner();
                loop {
                    match stream.message().await {
                        Ok(Some(_)) => continue,
                        Ok(None) => break Ok(()),
                        Err(status) => break Err(status),
                    }
                }
            }
            Err(status) => Err(status),
        }
    } else {
        grpc.unary(request, path, codec).await.map(drop)
    };
    result.expect_err(method)
}

register_test!(a_token_without_grants_is_refused_by_every_method_and_endpoint);
/// A token with an empty `grants` claim is refused by every method the service has
/// and by every secured endpoint: no RPC or endpoint skips the check.
async fn a_token_without_grants_is_refused_by_every_method_and_endpoint() {
    let server = TestServer::start(Backend::Sqlite).await;
    install_alpha(&server).await;
    let before = snapshot(&server).await;
    let nothing = token_with(&server, &[]);
    let methods = service_methods();
    assert!(methods.len() >= 14, "{methods:?}");
    for (method, streaming) in &methods {
        let status = call_any(&server, &nothing, method, *streaming).await;
        assert_eq!(
            status.code(),
            Code::PermissionDenied,
            "{method}: {}",
            status.message()
        );
        assert!(
            status.message().contains("the token has no grants"),
            "{method}: {}",
            status.message()
        );
    }
    let api = Rest::new(&server);
    for op in secured_operations() {
        let (status, body) = api.send(&op, &nothing).await;
        assert_eq!(status, 403, "{} {}: {body}", op.method, op.path);
        assert!(
            body["message"]
                .as_str()
                .unwrap()
                .contains(&format!("needs the grant `{}`", op.grant)),
            "{} {}: {body}; the OpenAPI document and the grants table disagree",
            op.method,
            op.path
        );
    }
    assert_eq!(snapshot(&server).await, before);
    server.stop().await;
}

register_test!(tokens_without_the_claim_have_full_access_only_while_the_setting_says_so);
async fn tokens_without_the_claim_have_full_access_only_while_the_setting_says_so() {
    // Default: on, so that an upgrade does not lock out every existing client.
    let server = TestServer::start(Backend::Sqlite).await;
    assert!(server.state.config.auth.legacy_tokens_full_access);
    let legacy = legacy_token(&server);
    let root = server.root.path().canonicalize().unwrap();
    let alpha = write_pack(
        &root.join("src"),
        "alpha",
        &simple_pack("alpha", "1.0.0", &[]),
    );
    let mut old = raw(&server, &legacy).await;
    drained(
        old.register_batch(pb::RegisterBatchRequest {
            pack_paths: vec![path_str(&alpha)],
            ..Default::default()
        })
        .await,
    )
    .await
    .expect("a legacy token may register while the setting is on");
    assert_eq!(
        server.state.db.registered_version("alpha").await.unwrap(),
        Some("1.0.0".into())
    );
    server.stop().await;

    let server = TestServer::start_with(Backend::Sqlite, |c| {
        c.auth.legacy_tokens_full_access = false;
    })
    .await;
    let root = server.root.path().canonicalize().unwrap();
    let alpha = write_pack(
        &root.join("src"),
        "alpha",
        &simple_pack("alpha", "1.0.0", &[]),
    );
    let legacy = legacy_token(&server);
    let mut old = raw(&server, &legacy).await;
    for result in [
        old.list_registries(pb::ListRegistriesRequest::default())
            .await
            .map(drop),
        old.register_batch(pb::RegisterBatchRequest {
            pack_paths: vec![path_str(&alpha)],
            ..Default::default()
        })
        .await
        .map(drop),
    ] {
        let status = result.unwrap_err();
        assert_eq!(
            status.code(),
            Code::PermissionDenied,
            "{}",
            status.message()
        );
        assert!(
            status.message().contains("auth.legacy_tokens_full_access")
                && status.message().contains("no `grants` claim"),
            "{}",
            status.message()
        );
    }
    assert_eq!(
        server.state.db.registered_version("alpha").await.unwrap(),
        None
    );
    // Over REST too.
    let (status, body) = Rest::new(&server)
        .send(
            &Operation {
                method: "POST".into(),
                path: "/api/v1/packs/dependencies".into(),
                grant: "packs:read".into(),
                body: Some(json!({ "pack_paths": [path_str(&alpha)] })),
            },
            &legacy,
        )
        .await;
    assert_eq!(status, 403, "{body}");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("auth.legacy_tokens_full_access")
    );
    // Tokens with grants are not affected.
    let mut current = raw(&server, &server.token()).await;
    assert_allowed(
        drained(
            current
                .register_batch(pb::RegisterBatchRequest {
                    pack_paths: vec![path_str(&alpha)],
                    ..Default::default()
                })
                .await,
        )
        .await,
        "RegisterBatch",
    );
    assert_eq!(
        server.state.db.registered_version("alpha").await.unwrap(),
        Some("1.0.0".into())
    );
    server.stop().await;
}

register_test!(a_malformed_grants_claim_is_unauthenticated_naming_the_problem);
async fn a_malformed_grants_claim_is_unauthenticated_naming_the_problem() {
    let server = TestServer::start(Backend::Sqlite).await;
    let api = Rest::new(&server);
    let dependencies = Operation {
        method: "POST".into(),
        path: "/api/v1/packs/dependencies".into(),
        grant: "packs:read".into(),
        body: Some(json!({ "pack_paths": ["/tmp/x"] })),
    };
    for (claim, expected) in [
        (json!("packs:read"), "must be a list of grant names"),
        (
            json!({ "packs": ["read"] }),
            "must be a list of grant names",
        ),
        (json!(["packs:read", 1]), "holds 1"),
        (json!(["packs:read", "packs:*"]), "unknown grant `packs:*`"),
    ] {
        let token = server
            .state
            .auth
            .issue_with_raw_grants("x", TTL, Some(claim.clone()));
        let status = raw(&server, &token)
            .await
            .list_registries(pb::ListRegistriesRequest::default())
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::Unauthenticated, "{claim}");
        assert!(
            status.message().contains(expected),
            "{claim}: {}",
            status.message()
        );
        let (status, body) = api.send(&dependencies, &token).await;
        assert_eq!(status, 401, "{claim}: {body}");
        assert!(
            body["message"].as_str().unwrap().contains(expected),
            "{claim}: {body}"
        );
    }
    server.stop().await;
}

async fn login(server: &TestServer, email: &str, password: &str) -> String {
    let response = reqwest::Client::new()
        .post(format!("{}/api/v1/auth/login", server.url()))
        .header("content-type", "application/json")
        .body(json!({ "email": email, "password": password }).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let body: Value = serde_json::from_str(&response.text().await.unwrap()).unwrap();
    body["data"]["access_token"].as_str().unwrap().to_string()
}

async fn login_users_get_the_grants_stored_with_them(backend: Backend) {
    let server = TestServer::start(backend).await;
    let db = &server.state.db;
    let read_only = GrantSet::parse(&["packs:read"]).unwrap();
    users::add_user_with_grants(db, "Reader@Example.com", "reader-password", &read_only)
        .await
        .unwrap();
    users::add_user(db, "admin@example.com", "admin-password")
        .await
        .unwrap();
    // A user row written before grants existed gets the column's default: all four.
    let hash = users::hash_password("older-password").unwrap();
    assert!(db.create_user("older@example.com", &hash).await.unwrap());

    let verify = |token: &str| server.state.auth.verify_token(token).unwrap();
    let reader = login(&server, "reader@example.com", "reader-password").await;
    assert_eq!(verify(&reader).grants, Some(read_only));
    assert_eq!(verify(&reader).subject, "reader@example.com");
    let admin = login(&server, "admin@example.com", "admin-password").await;
    assert_eq!(verify(&admin).grants, Some(GrantSet::all()));
    let older = login(&server, "older@example.com", "older-password").await;
    assert_eq!(verify(&older).grants, Some(GrantSet::all()));

    // The reader's token reads and is refused a change, on both doors.
    let root = server.root.path().canonicalize().unwrap();
    let alpha = write_pack(
        &root.join("src"),
        "alpha",
        &simple_pack("alpha", "1.0.0", &[]),
    );
    let mut client = raw(&server, &reader).await;
    assert_allowed(
        client
            .list_registries(pb::ListRegistriesRequest::default())
            .await,
        "ListRegistries",
    );
    assert_denied(
        client
            .register_batch(pb::RegisterBatchRequest {
                pack_paths: vec![path_str(&alpha)],
                ..Default::default()
            })
            .await,
        "RegisterBatch",
        "packs:install",
    );
    let (status, body) = Rest::new(&server)
        .send(
            &Operation {
                method: "POST".into(),
                path: "/api/v1/packs/register-batch".into(),
                grant: "packs:install".into(),
                body: Some(json!({ "pack_paths": [path_str(&alpha)] })),
            },
            &reader,
        )
        .await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(db.registered_version("alpha").await.unwrap(), None);
    // The admin's is not.
    drained(
        raw(&server, &admin)
            .await
            .register_batch(pb::RegisterBatchRequest {
                pack_paths: vec![path_str(&alpha)],
                ..Default::default()
            })
            .await,
    )
    .await
    .unwrap();
    assert_eq!(
        db.registered_version("alpha").await.unwrap(),
        Some("1.0.0".into())
    );
    server.stop().await;
}
on_both_backends!(login_users_get_the_grants_stored_with_them);

fn run(args: &[&str], data: &Path) -> std::process::Output {
    Command::new(SERVER)
        .args(args)
        .arg("--data-dir")
        .arg(data)
        .env_remove("ATTUNE_PACKS_JWT_SECRET")
        .env_remove("ATTUNE_PACKS_DATABASE_URL")
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap()
}

register_test!(sync token_issue_mints_the_grants_it_is_given_and_refuses_unknown_ones);
fn token_issue_mints_the_grants_it_is_given_and_refuses_unknown_ones() {
    let root = tempfile::tempdir().unwrap();
    let data = root.path().join("data");
    // The secret a first `serve` would have generated (only `serve` makes one).
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join("jwt-secret"), "a-secret-of-this-test\n").unwrap();
    let issue = |grants: &[&str]| {
        let mut args = vec!["token", "issue", "--subject", "ops"];
        for g in grants {
            args.extend(["--grant", g]);
        }
        run(&args, &data)
    };
    let verify = |out: &std::process::Output| {
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let secret = std::fs::read_to_string(data.join("jwt-secret")).unwrap();
        let token = String::from_utf8_lossy(&out.stdout)
            .lines()
            .last()
            .unwrap()
            .to_string();
        Authenticator::new(&Secret::new(secret.trim()))
            .verify_token(&token)
            .unwrap()
    };

    let out = issue(&["packs:read"]);
    assert_eq!(
        verify(&out).grants,
        Some(GrantSet::parse(&["packs:read"]).unwrap())
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("with grants packs:read"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = issue(&["packs:delete", "packs:read", "packs:delete"]);
    assert_eq!(
        verify(&out).grants,
        Some(GrantSet::parse(&["packs:read", "packs:delete"]).unwrap())
    );
    // Without --grant: every grant, as tokens had before, and it says so.
    let out = issue(&[]);
    assert_eq!(verify(&out).grants, Some(GrantSet::all()));
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("packs:read, packs:install, packs:delete, packs:configure")
    );

    let out = issue(&["packs:read", "packs:write"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("unknown grant `packs:write`") && stderr.contains("packs:install"),
        "{stderr}"
    );
    assert!(out.stdout.is_empty(), "no token for an unknown grant");
}

register_test!(sync user_add_stores_the_grants_it_is_given_and_refuses_unknown_ones);
fn user_add_stores_the_grants_it_is_given_and_refuses_unknown_ones() {
    use std::io::Write;
    let root = tempfile::tempdir().unwrap();
    let data = root.path().join("data");
    let add = |email: &str, grants: &[&str]| {
        let mut command = Command::new(SERVER);
        command.args(["user", "add", "--email", email]);
        for g in grants {
            command.args(["--grant", g]);
        }
        let mut child = command
            .arg("--data-dir")
            .arg(&data)
            .env_remove("ATTUNE_PACKS_DATABASE_URL")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(b"a-good-password\n")
            .unwrap();
        child.wait_with_output().unwrap()
    };
    let out = add("ro@example.com", &["packs:read"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("with grants packs:read"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let out = add("bad@example.com", &["packs:root"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown grant `packs:root`"));

    // `user grants` replaces them; it needs a user and at least one grant.
    let grants = |email: &str, grants: &[&str]| {
        let mut args = vec!["user", "grants", "--email", email];
        for g in grants {
            args.extend(["--grant", g]);
        }
        run(&args, &data)
    };
    let out = grants("RO@example.com", &["packs:delete", "packs:read"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout)
            .contains("ro@example.com now has grants packs:read, packs:delete")
    );
    let out = grants("nobody@example.com", &["packs:read"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no user with email 'nobody@example.com'")
    );
    let out = grants("ro@example.com", &[]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--grant"));

    // The stored grants are what login mints (the REST login in a real server process
    // is covered by login_users_get_the_grants_stored_with_them).
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let db = attune_packs_server::store::Db::connect(&format!(
            "sqlite://{}",
            data.join("attune-packs.db").display()
        ))
        .await
        .unwrap();
        let (_, grants) = db.login_record("ro@example.com").await.unwrap().unwrap();
        assert_eq!(grants, r#"["packs:read","packs:delete"]"#);
        assert!(db.login_record("bad@example.com").await.unwrap().is_none());
        db.close().await;
    });
}
