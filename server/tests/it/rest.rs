//! The REST gateway on the gRPC port: the original API's JSON, errors, login, SSE, health.

use std::time::{Duration, Instant};

use attune_packs_client::pb;
use serde_json::{Value, json};

use crate::common::{Backend, TestServer, path_str, simple_pack, write_pack};

fn keys(v: &Value) -> Vec<&str> {
    let mut k: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
    k.sort();
    k
}

struct Api {
    http: reqwest::Client,
    base: String,
    token: String,
}

impl Api {
    fn new(server: &TestServer) -> Self {
        Self {
            http: reqwest::Client::new(),
            base: server.url(),
            token: server.token(),
        }
    }

    async fn post(&self, path: &str, body: &str, token: Option<&str>) -> (u16, Value) {
        let mut request = self
            .http
            .post(format!("{}{path}", self.base))
            .header("content-type", "application/json")
            .body(body.to_string());
        if let Some(token) = token {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        (
            status,
            serde_json::from_str(&response.text().await.unwrap()).unwrap_or(Value::Null),
        )
    }

    async fn call(&self, path: &str, body: Value) -> (u16, Value) {
        self.post(path, &body.to_string(), Some(&self.token)).await
    }
}

register_test!(empty_pack_paths_get_an_empty_answer);
/// `{"pack_paths": []}` is a request with nothing to do, answered with an empty result
/// (200 with empty data over REST, an empty result over gRPC), not refused.
async fn empty_pack_paths_get_an_empty_answer() {
    let server = TestServer::start(Backend::Sqlite).await;
    let api = Api::new(&server);
    let empty = json!({"pack_paths": []});

    let (status, body) = api.call("/api/v1/packs/dependencies", empty.clone()).await;
    assert_eq!(status, 200, "{body}");
    for list in [
        "analyzed_packs",
        "dependencies",
        "missing_dependencies",
        "errors",
    ] {
        assert_eq!(body["data"][list], json!([]), "{list}: {body}");
    }

    let (status, body) = api.call("/api/v1/packs/build-envs", empty.clone()).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"]["built_environments"], json!([]), "{body}");
    assert_eq!(body["data"]["failed_environments"], json!([]), "{body}");
    assert_eq!(body["data"]["summary"]["total_packs"], 0, "{body}");

    let (status, body) = api.call("/api/v1/packs/register-batch", empty).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"]["registered_packs"], json!([]), "{body}");
    assert_eq!(body["data"]["failed_packs"], json!([]), "{body}");
    assert_eq!(body["data"]["summary"]["total_packs"], 0, "{body}");

    let mut client = server.client().await;
    let deps = client
        .dependencies(pb::DependenciesRequest::default())
        .await
        .unwrap();
    assert!(deps.analyzed_packs.is_empty() && deps.errors.is_empty());
    let envs = client
        .build_envs(pb::BuildEnvsRequest::default())
        .await
        .unwrap();
    assert!(envs.built_environments.is_empty() && envs.failed_environments.is_empty());
    let registered = client
        .register_batch(pb::RegisterBatchRequest::default())
        .await
        .unwrap();
    assert!(registered.registered_packs.is_empty() && registered.failed_packs.is_empty());

    // A list of sources to fetch still has to name one.
    let (status, body) = api
        .call(
            "/api/v1/packs/download",
            json!({"packs": [], "destination_dir": path_str(&server.packs_dir())}),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["message"].as_str().unwrap().contains("packs"),
        "{body}"
    );
    server.stop().await;
}

register_test!(the_four_stages_answer_the_original_json);
async fn the_four_stages_answer_the_original_json() {
    let server = TestServer::start(Backend::Sqlite).await;
    let api = Api::new(&server);
    let root = server.root.path().canonicalize().unwrap();
    let src = write_pack(
        &root.join("src"),
        "web",
        &simple_pack("web", "1.0.0", &["core@>=1"]),
    );

    let (status, body) = api
        .call(
            "/api/v1/packs/download",
            json!({"packs": [path_str(&src)], "destination_dir": path_str(&root.join("dl"))}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let data = &body["data"];
    assert_eq!(
        keys(data),
        [
            "downloaded_packs",
            "failed_packs",
            "failure_count",
            "success_count",
            "total_count"
        ]
    );
    let pack = &data["downloaded_packs"][0];
    assert_eq!(
        keys(pack),
        [
            "checksum",
            "git_commit",
            "pack_path",
            "pack_ref",
            "pack_version",
            "source",
            "source_type"
        ]
    );
    assert_eq!(pack["git_commit"], Value::Null);
    assert_eq!(data["total_count"], 1);
    let placed = pack["pack_path"].as_str().unwrap().to_string();

    let (status, body) = api
        .call(
            "/api/v1/packs/dependencies",
            json!({"pack_paths": [placed]}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let data = &body["data"];
    assert_eq!(
        keys(data),
        [
            "analyzed_packs",
            "dependencies",
            "errors",
            "missing_dependencies",
            "runtime_requirements"
        ]
    );
    let dep = &data["dependencies"][0];
    for key in [
        "pack_ref",
        "version_spec",
        "required_by",
        "already_installed",
    ] {
        assert!(dep.get(key).is_some(), "{key} missing in {dep}");
    }
    assert_eq!(data["missing_dependencies"][0]["pack_ref"], "core");

    let base = path_str(&root.join("base"));
    let (status, body) = api
        .call(
            "/api/v1/packs/build-envs",
            json!({"pack_paths": [placed], "packs_base_dir": base}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let data = &body["data"];
    assert_eq!(
        keys(data),
        ["built_environments", "failed_environments", "summary"]
    );
    assert_eq!(
        keys(&data["summary"]),
        [
            "failure_count",
            "nodejs_envs_built",
            "python_envs_built",
            "success_count",
            "total_duration_ms",
            "total_packs"
        ]
    );
    assert_eq!(
        data["built_environments"][0]["environments"],
        json!({"python": null, "nodejs": null})
    );

    let (status, body) = api
        .call(
            "/api/v1/packs/register-batch",
            json!({"pack_paths": [placed], "packs_base_dir": base, "skip_tests": true}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let data = &body["data"];
    assert_eq!(keys(data), ["failed_packs", "registered_packs", "summary"]);
    let registered = &data["registered_packs"][0];
    assert_eq!(
        keys(registered),
        [
            "components_registered",
            "pack_id",
            "pack_ref",
            "pack_version",
            "storage_path",
            "test_result",
            "validation_results"
        ]
    );
    assert!(
        registered["pack_id"].is_i64(),
        "pack_id is a JSON number: {registered}"
    );
    assert_eq!(registered["test_result"], Value::Null);
    assert_eq!(
        keys(&registered["components_registered"]),
        [
            "actions",
            "aliases",
            "policies",
            "rules",
            "sensors",
            "triggers",
            "workflows"
        ]
    );
    assert_eq!(
        keys(&data["summary"]),
        [
            "duration_ms",
            "failure_count",
            "success_count",
            "total_components",
            "total_packs"
        ]
    );
    server.stop().await;
}

register_test!(errors_have_the_original_shape_and_name_what_is_wrong);
async fn errors_have_the_original_shape_and_name_what_is_wrong() {
    let server = TestServer::start(Backend::Sqlite).await;
    let api = Api::new(&server);
    let check = |(status, body): (u16, Value), want: u16, needle: &str| {
        assert_eq!(status, want, "{body}");
        assert_eq!(keys(&body), ["error", "message", "status"], "{body}");
        assert_eq!(body["status"], want);
        assert!(
            body["message"].as_str().unwrap().contains(needle),
            "{needle} not in {body}"
        );
    };
    let deps = "/api/v1/packs/dependencies";
    check(
        api.post(deps, "{not json", Some(&api.token)).await,
        400,
        "malformed JSON",
    );
    check(
        api.post(deps, "[]", Some(&api.token)).await,
        400,
        "JSON object",
    );
    check(
        api.post(deps, "{}", Some(&api.token)).await,
        400,
        "`pack_paths`",
    );
    check(
        api.post(deps, r#"{"pack_paths": "x"}"#, Some(&api.token))
            .await,
        400,
        "`pack_paths`",
    );
    check(
        api.post(
            deps,
            r#"{"pack_paths": ["/a"], "skip_validation": "yes"}"#,
            Some(&api.token),
        )
        .await,
        400,
        "`skip_validation`",
    );
    check(
        api.post(
            "/api/v1/packs/download",
            r#"{"packs": ["core"]}"#,
            Some(&api.token),
        )
        .await,
        400,
        "`destination_dir`",
    );
    // A request the service refuses (INVALID_ARGUMENT) is a 400 too.
    check(
        api.post(
            "/api/v1/packs/download",
            r#"{"packs": ["core"], "destination_dir": "/etc/x"}"#,
            Some(&api.token),
        )
        .await,
        400,
        "outside the allowed roots",
    );
    check(
        api.post(deps, r#"{"pack_paths": ["/a"]}"#, None).await,
        401,
        "missing authorization",
    );
    check(
        api.post(deps, r#"{"pack_paths": ["/a"]}"#, Some("garbage"))
            .await,
        401,
        "malformed",
    );
    let expired = server.state.auth.issue_with_times("x", 1, 2);
    check(
        api.post(deps, r#"{"pack_paths": ["/a"]}"#, Some(&expired))
            .await,
        401,
        "expired",
    );
    let (status, body) = api.post("/api/v1/nothing-here", "{}", None).await;
    assert_eq!((status, body["status"].clone()), (404, json!(404)));

    // The gateway speaks HTTP/1.1 and h2 (prior knowledge, as gRPC clients do).
    let h2 = std::process::Command::new("curl")
        .args(["-s", "--http2-prior-knowledge", "-w", " %{http_version}"])
        .arg(format!("{}/healthz", server.url()))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&h2.stdout), r#"{"status":"ok"} 2"#);
    let health = reqwest::get(format!("{}/healthz", server.url()))
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    let ready: Value = reqwest::get(format!("{}/readyz", server.url()))
        .await
        .unwrap()
        .text()
        .await
        .map(|t| serde_json::from_str::<Value>(&t).unwrap())
        .unwrap();
    assert_eq!(ready["status"], "ready");
    let spec: Value = reqwest::get(format!("{}/api/v1/openapi.json", server.url()))
        .await
        .unwrap()
        .text()
        .await
        .map(|t| serde_json::from_str::<Value>(&t).unwrap())
        .unwrap();
    assert!(spec["openapi"].as_str().unwrap().starts_with("3."));
    server.stop().await;
}

register_test!(progress_as_server_sent_events);
async fn progress_as_server_sent_events() {
    let server = TestServer::start(Backend::Sqlite).await;
    let dir = server.packs_dir();
    let a = write_pack(&dir, "a", &simple_pack("alpha", "1.0.0", &[]));
    let b = write_pack(&dir, "b", &simple_pack("beta", "1.0.0", &["alpha"]));
    let response = reqwest::Client::new()
        .post(format!("{}/api/v1/packs/dependencies", server.url()))
        .header("authorization", format!("Bearer {}", server.token()))
        .header("accept", "text/event-stream")
        .body(json!({"pack_paths": [path_str(&a), path_str(&b)]}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    let text = response.text().await.unwrap();
    let events: Vec<(&str, Value)> = text
        .split("\n\n")
        .filter(|block| !block.trim().is_empty() && !block.starts_with(':'))
        .map(|block| {
            let name = block
                .lines()
                .find_map(|l| l.strip_prefix("event: "))
                .unwrap();
            let data = block
                .lines()
                .find_map(|l| l.strip_prefix("data: "))
                .unwrap();
            (name, serde_json::from_str(data).unwrap())
        })
        .collect();
    let names: Vec<&str> = events.iter().map(|(n, _)| *n).collect();
    assert_eq!(names, ["progress", "progress", "result"], "{text}");
    assert_eq!(events[0].1["stage"], "analyze");
    assert_eq!(events[0].1["level"], "info");
    assert_eq!(events[1].1["done"], 2);
    assert_eq!(
        events[2].1["data"]["dependencies"][0]["provided_by_request"],
        "1.0.0"
    );
    server.stop().await;
}

register_test!(login_issues_tokens_both_doors_accept);
async fn login_issues_tokens_both_doors_accept() {
    // A wait long enough that a loaded machine still sends the next attempt within it.
    const WAIT: Duration = Duration::from_secs(2);
    let server = TestServer::start_with(Backend::Sqlite, |c| c.login.base_delay = WAIT).await;
    attune_packs_server::users::add_user(
        &server.state.db,
        "Ops@Example.com",
        "correct horse battery",
    )
    .await
    .unwrap();
    let api = Api::new(&server);
    let login =
        |email: &str, password: &str| json!({"email": email, "password": password}).to_string();

    let (status, body) = api
        .post(
            "/api/v1/auth/login",
            &login("ops@example.com", "correct horse battery"),
            None,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        keys(&body["data"]),
        ["access_token", "expires_in", "token_type"]
    );
    assert_eq!(body["data"]["token_type"], "Bearer");
    let token = body["data"]["access_token"].as_str().unwrap().to_string();
    // The gRPC side accepts it.
    let pack = write_pack(&server.packs_dir(), "p", &simple_pack("pp", "1.0.0", &[]));
    let mut client = attune_packs_client::Client::connect(&server.url(), &token)
        .await
        .unwrap();
    let r = client
        .dependencies(pb::DependenciesRequest {
            pack_paths: vec![path_str(&pack)],
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(r.analyzed_packs.len(), 1);

    // Unknown user and wrong password: the same answer, after comparable work.
    let t = Instant::now();
    let wrong = api
        .post(
            "/api/v1/auth/login",
            &login("ops@example.com", "nope nope nope"),
            None,
        )
        .await;
    let wrong_time = t.elapsed();
    let t = Instant::now();
    let unknown = api
        .post(
            "/api/v1/auth/login",
            &login("nobody@example.com", "nope nope nope"),
            None,
        )
        .await;
    let unknown_time = t.elapsed();
    assert_eq!(wrong.0, 401);
    assert_eq!(wrong, unknown);
    assert!(
        unknown_time * 3 > wrong_time,
        "unknown {unknown_time:?} vs wrong {wrong_time:?}"
    );
    let (status, body) = api
        .post("/api/v1/auth/login", r#"{"email": "x@y"}"#, None)
        .await;
    assert_eq!(status, 400);
    assert!(body["message"].as_str().unwrap().contains("`password`"));

    // After the free failures for one email, the next attempt must wait: it is
    // refused (429) rather than checked.
    for _ in 0..3 {
        let (status, _) = api
            .post(
                "/api/v1/auth/login",
                &login("victim@example.com", "guess guess"),
                None,
            )
            .await;
        assert_eq!(status, 401);
    }
    let (status, body) = api
        .post(
            "/api/v1/auth/login",
            &login("victim@example.com", "guess guess"),
            None,
        )
        .await;
    assert_eq!(status, 429, "{body}");
    assert!(body["message"].as_str().unwrap().contains("retry in"));
    tokio::time::sleep(WAIT + Duration::from_millis(200)).await;
    let (status, _) = api
        .post(
            "/api/v1/auth/login",
            &login("victim@example.com", "guess guess"),
            None,
        )
        .await;
    assert_eq!(status, 401, "admitted again once the wait is over");
    server.stop().await;
}

register_test!(
    the_workflow_script_runs_with_curl_and_jq,
    requires = [CurlAndJq]
);
/// The original API's "Complete Workflow Example" and "Testing Quick Start" as a curl + jq script
/// (`tests/rest/workflow.sh`), against the real server; only the host and the pack source
/// differ, and the token comes from the login endpoint.
async fn the_workflow_script_runs_with_curl_and_jq() {
    let server = TestServer::start(Backend::Sqlite).await;
    attune_packs_server::users::add_user(&server.state.db, "test@attune.local", "TestPass123!")
        .await
        .unwrap();
    let root = server.root.path().canonicalize().unwrap();
    let source = write_pack(&root.join("src"), "aws", &simple_pack("aws", "1.0.0", &[]));
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/rest/workflow.sh");
    let envs = [
        ("API", server.url()),
        ("EMAIL", "test@attune.local".to_string()),
        ("PASSWORD", "TestPass123!".to_string()),
        ("PACK_SOURCE", path_str(&source)),
        ("DEST", path_str(&root.join("dl"))),
        ("BASE", path_str(&root.join("base"))),
    ];
    let output = tokio::process::Command::new("bash")
        .arg(script)
        .envs(envs)
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stdout}\n{stderr}");
    assert_eq!(stdout.lines().last(), Some("OK"), "{stdout}");
    server.stop().await;
}

register_test!(
    live_responses_match_the_openapi_document,
    requires = [Schemathesis]
);
/// schemathesis (PyPI) fuzzes every operation of the live server from its own OpenAPI
/// document: no 5xx, every response matching its schema, content types and headers as
/// declared. Excluded: "schema-valid data is accepted", because valid-looking paths
/// (relative, or outside the allowed roots) are rightly refused with a 400.
async fn live_responses_match_the_openapi_document() {
    let server = TestServer::start(Backend::Sqlite).await;
    let output = tokio::process::Command::new("st")
        .args(["run", &format!("{}/api/v1/openapi.json", server.url())])
        .args([
            "--header",
            &format!("Authorization: Bearer {}", server.token()),
        ])
        .args([
            "--checks",
            "all",
            "--exclude-checks",
            "positive_data_acceptance",
        ])
        .args(["--max-examples", "25", "--seed", "20261123"])
        .env("NO_COLOR", "1")
        // schemathesis keeps a cache in its working directory: not in the source tree.
        .current_dir(server.root.path())
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    server.stop().await;
}
