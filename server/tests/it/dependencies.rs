use attune_packs_client::{Event, pb};
use futures::StreamExt;

use crate::common::{Backend, TestServer, on_both_backends, path_str, simple_pack, write_pack};

fn request(paths: &[&std::path::Path]) -> pb::DependenciesRequest {
    pb::DependenciesRequest {
        pack_paths: paths.iter().map(|p| path_str(p)).collect(),
        skip_validation: None,
    }
}

fn entry<'a>(r: &'a pb::DependenciesResult, by: &str, on: &str) -> &'a pb::Dependency {
    r.dependencies
        .iter()
        .find(|d| d.required_by == by && d.pack_ref == on)
        .unwrap_or_else(|| panic!("no dependency {by} -> {on} in {:#?}", r.dependencies))
}

/// Installed packs satisfy a dependency only at a matching version; packs of the same
/// request satisfy each other; every spelling of a requirement is understood.
async fn resolution_against_installed_and_request(backend: Backend) {
    let server = TestServer::start(backend).await;
    let db = &server.state.db;
    db.insert_pack_for_tests("core", "1.2.0", &[])
        .await
        .unwrap();
    db.insert_pack_for_tests("legacy", "0.9.0", &[])
        .await
        .unwrap();

    let dir = server.packs_dir();
    let web = write_pack(
        &dir,
        "web",
        &simple_pack(
            "web",
            "2.0.0",
            &["core@>=1.0", "legacy>=1.0", "util=1.1.0", "missing"],
        ),
    );
    let util = write_pack(&dir, "util", &simple_pack("util", "1.1.0", &["core^1.2"]));
    let mut client = server.client().await;
    let mut stream = client
        .dependencies_stream(request(&[&web, &util]))
        .await
        .unwrap();
    let mut progress = Vec::new();
    let mut result = None;
    while let Some(event) = stream.next().await {
        match event.unwrap() {
            Event::Progress(p) => progress.push(p),
            Event::Result(r) => result = Some(r),
        }
    }
    let r = result.expect("a result");

    // One progress event per pack analysed, with counters.
    assert_eq!(progress.len(), 2, "{progress:#?}");
    assert_eq!(progress[1].done, Some(2));
    assert_eq!(progress[1].total, Some(2));
    assert_eq!(progress[0].pack, "web");
    assert_eq!(progress[0].stage, pb::progress::Stage::Analyze as i32);

    let core = entry(&r, "web", "core");
    assert_eq!(core.version_spec, ">=1.0");
    assert!(core.already_installed);
    assert_eq!(core.installed_version.as_deref(), Some("1.2.0"));

    // Installed at a version that does not satisfy: missing, and says what is there.
    let legacy = entry(&r, "web", "legacy");
    assert!(!legacy.already_installed);
    assert_eq!(legacy.installed_version.as_deref(), Some("0.9.0"));

    // StackStorm `=` means exactly that version; the request provides it.
    let util_dep = entry(&r, "web", "util");
    assert_eq!(util_dep.version_spec, "=1.1.0");
    assert!(!util_dep.already_installed);
    assert_eq!(util_dep.provided_by_request.as_deref(), Some("1.1.0"));

    let missing = entry(&r, "web", "missing");
    assert_eq!(missing.version_spec, "*");
    assert!(entry(&r, "util", "core").already_installed);

    let mut missing_refs: Vec<_> = r
        .missing_dependencies
        .iter()
        .map(|d| d.pack_ref.as_str())
        .collect();
    missing_refs.sort();
    assert_eq!(missing_refs, ["legacy", "missing"]);
    assert!(r.errors.is_empty(), "{:#?}", r.errors);

    assert_eq!(r.analyzed_packs.len(), 2);
    assert_eq!(r.analyzed_packs[0].pack_ref, "web");
    assert_eq!(r.analyzed_packs[0].pack_path, path_str(&web));
    assert!(r.analyzed_packs[0].has_dependencies);
    assert_eq!(r.analyzed_packs[0].dependency_count, 4);
    server.stop().await;
}
on_both_backends!(resolution_against_installed_and_request);

/// Bad packs are reported one by one with what is wrong; the good ones are analysed.
async fn bad_packs_do_not_stop_the_others(backend: Backend) {
    let server = TestServer::start(backend).await;
    let dir = server.packs_dir();
    let good = write_pack(&dir, "good", &simple_pack("good", "1.0.0", &[]));
    let broken = write_pack(
        &dir,
        "broken",
        "ref: Bad.Ref\nversion: one\ntags: nope\ndependencies: [\"core@>>1\"]\n",
    );
    let dup = write_pack(&dir, "dup", &simple_pack("good", "2.0.0", &[]));
    let empty = dir.join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let absent = dir.join("absent");

    let mut client = server.client().await;
    let mut req = request(&[&good, &broken, &dup, &empty, &absent]);
    req.pack_paths.push("/etc".into());
    let r = client.dependencies(req).await.unwrap();

    assert_eq!(r.analyzed_packs.len(), 1);
    assert_eq!(r.analyzed_packs[0].pack_ref, "good");
    let error_for = |p: &str| {
        r.errors
            .iter()
            .find(|e| e.pack_path == p)
            .unwrap_or_else(|| panic!("no error for {p}: {:#?}", r.errors))
            .error
            .clone()
    };
    // Every problem of the broken manifest, each with its key.
    let e = error_for(&path_str(&broken));
    for key in ["ref", "version", "tags", "dependencies[0]"] {
        assert!(
            e.contains(&format!(": {key}: ")),
            "no issue for `{key}` in: {e}"
        );
    }
    assert!(e.contains("pack.yaml"), "{e}");
    assert!(error_for(&path_str(&dup)).contains("also at"));
    assert!(error_for(&path_str(&empty)).contains("pack.yaml"));
    assert!(error_for(&path_str(&absent)).contains("does not exist"));
    assert!(error_for("/etc").contains("outside the allowed roots"));
    assert_eq!(r.errors.len(), 5, "{:#?}", r.errors);
    server.stop().await;
}
on_both_backends!(bad_packs_do_not_stop_the_others);

/// Cycles through the request (and through installed packs) and incompatible
/// requirements are reported, naming who requires what.
async fn cycles_and_conflicts(backend: Backend) {
    let server = TestServer::start(backend).await;
    // Installed `base` depends on `top`, which the request brings: a cycle through the DB.
    server
        .state
        .db
        .insert_pack_for_tests("base", "1.0.0", &["top@>=1"])
        .await
        .unwrap();
    let dir = server.packs_dir();
    let a = write_pack(&dir, "a", &simple_pack("aa", "1.0.0", &["bb"]));
    let b = write_pack(
        &dir,
        "b",
        &simple_pack("bb", "1.0.0", &["cc", "shared@>=2.0"]),
    );
    let c = write_pack(
        &dir,
        "c",
        &simple_pack("cc", "1.0.0", &["aa", "shared@<2.0"]),
    );
    let top = write_pack(&dir, "top", &simple_pack("top", "1.0.0", &["base"]));
    let mut client = server.client().await;
    let r = client
        .dependencies(request(&[&a, &b, &c, &top]))
        .await
        .unwrap();

    let cycles: Vec<_> = r
        .errors
        .iter()
        .filter(|e| e.error.starts_with("dependency cycle"))
        .collect();
    assert_eq!(cycles.len(), 2, "{:#?}", r.errors);
    assert!(
        cycles
            .iter()
            .any(|e| e.error == "dependency cycle: aa -> bb -> cc -> aa"
                && e.pack_path == path_str(&a)),
        "{cycles:#?}"
    );
    assert!(
        cycles
            .iter()
            .any(|e| e.error.contains("base -> top") || e.error.contains("top -> base")),
        "{cycles:#?}"
    );

    let conflict = r
        .errors
        .iter()
        .find(|e| e.error.starts_with("conflicting"))
        .expect("a conflict");
    assert!(conflict.error.contains("'shared'"), "{}", conflict.error);
    assert!(
        conflict.error.contains("'bb' requires >=2.0"),
        "{}",
        conflict.error
    );
    assert!(
        conflict.error.contains("'cc' requires <2.0"),
        "{}",
        conflict.error
    );
    server.stop().await;
}
on_both_backends!(cycles_and_conflicts);

register_test!(runtime_requirements_are_checked_against_this_host);
async fn runtime_requirements_are_checked_against_this_host() {
    let server = TestServer::start(Backend::Sqlite).await;
    let dir = server.packs_dir();
    let ok = write_pack(&dir, "ok", "ref: okpy\nversion: 1.0.0\npython: \"3\"\n");
    std::fs::write(ok.join("requirements.txt"), "requests\n").unwrap();
    let too_new = write_pack(
        &dir,
        "new",
        "ref: newpy\nversion: 1.0.0\npython: \">=99.0\"\nnodejs: \">=999\"\n",
    );
    let only_file = write_pack(&dir, "file", "ref: filejs\nversion: 1.0.0\n");
    std::fs::write(only_file.join("package.json"), "{}").unwrap();

    let mut client = server.client().await;
    let r = client
        .dependencies(request(&[&ok, &too_new, &only_file]))
        .await
        .unwrap();
    let okpy = &r.runtime_requirements["okpy"];
    let py = okpy.python.as_ref().unwrap();
    assert_eq!(py.version, "3");
    assert_eq!(
        py.requirements_file.as_deref(),
        Some(path_str(&ok.join("requirements.txt")).as_str())
    );
    assert!(okpy.nodejs.is_none());
    let filejs = &r.runtime_requirements["filejs"];
    assert_eq!(filejs.nodejs.as_ref().unwrap().version, "*");
    assert_eq!(
        filejs.nodejs.as_ref().unwrap().package_file.as_deref(),
        Some(path_str(&only_file.join("package.json")).as_str())
    );
    assert!(filejs.python.is_none());

    let errors: Vec<_> = r.errors.iter().map(|e| e.error.as_str()).collect();
    assert_eq!(errors.len(), 2, "{errors:#?}");
    assert!(
        errors
            .iter()
            .any(|e| e.contains("'newpy' requires Python >=99.0 but the server has")),
        "{errors:#?}"
    );
    assert!(
        errors
            .iter()
            .any(|e| e.contains("'newpy'") && e.contains("Node.js")),
        "{errors:#?}"
    );

    // skip_validation: requirements still reported, unmet ones not errors.
    let mut req = request(&[&ok, &too_new]);
    req.skip_validation = Some(true);
    let r = client.dependencies(req).await.unwrap();
    assert!(r.errors.is_empty(), "{:#?}", r.errors);
    assert_eq!(
        r.runtime_requirements["newpy"]
            .python
            .as_ref()
            .unwrap()
            .version,
        ">=99.0"
    );
    server.stop().await;
}

register_test!(a_dropped_stream_does_not_break_the_server);
async fn a_dropped_stream_does_not_break_the_server() {
    let server = TestServer::start(Backend::Sqlite).await;
    let dir = server.packs_dir();
    let paths: Vec<_> = (0..200)
        .map(|i| {
            write_pack(
                &dir,
                &format!("p{i}"),
                &simple_pack(&format!("p{i}"), "1.0.0", &[]),
            )
        })
        .collect();
    let refs: Vec<&std::path::Path> = paths.iter().map(|p| p.as_path()).collect();
    let mut client = server.client().await;
    let mut stream = client.dependencies_stream(request(&refs)).await.unwrap();
    let _first = stream.next().await;
    drop(stream);
    let r = client.dependencies(request(&refs[..3])).await.unwrap();
    assert_eq!(r.analyzed_packs.len(), 3);
    server.stop().await;
}
