//! What RegisterBatch's throughput work must not break: the component owner check
//! (exact `(kind, ref)` probes, several statements for a large pack) and the batch
//! parsed on several threads (results and failures still in request order).

use std::path::Path;

use attune_packs_client::pb;
use attune_packs_server::store::packs::{ComponentRow, PackRow, WriteError};

use crate::common::{Backend, TestServer, on_both_backends, path_str};

fn pack_row(pack_ref: &str) -> PackRow {
    PackRow {
        pack_ref: pack_ref.into(),
        label: pack_ref.into(),
        version: "1.0.0".into(),
        conf_schema: "{}".into(),
        config: "{}".into(),
        meta: "{}".into(),
        tags: "[]".into(),
        runtime_deps: "[]".into(),
        dependencies: "[]".into(),
        storage_path: format!("/nonexistent/{pack_ref}"),
        ..Default::default()
    }
}

fn action(r: &str) -> ComponentRow {
    ComponentRow {
        kind: "action",
        r#ref: r.into(),
        label: None,
        description: None,
        file: "actions/x.yaml".into(),
        definition: "{}".into(),
    }
}

/// Writes `pack_ref` with `components` in one transaction, as registration does.
async fn write(
    server: &TestServer,
    pack_ref: &str,
    components: &[ComponentRow],
) -> Result<i64, WriteError> {
    let mut write = server
        .state
        .db
        .begin_packs_write(&[pack_ref])
        .await
        .unwrap();
    let id = write.upsert_pack(&pack_row(pack_ref), false, 1).await?;
    write.replace_components(id, components).await?;
    write.commit().await.unwrap();
    Ok(id)
}

/// A component already held by another pack is a conflict naming its owner, on both
/// backends, wherever it sits in a pack too large for one lookup statement, and
/// whatever characters (`_`, `%`: LIKE wildcards) the refs hold.
async fn component_of_another_pack_is_a_conflict_naming_its_owner(backend: Backend) {
    let server = TestServer::start(backend).await;
    write(&server, "first_pack", &[action("my_pack.run")])
        .await
        .unwrap();

    // 120 components: the taken one is in the third statement's share.
    let mut mine: Vec<ComponentRow> = (0..120).map(|i| action(&format!("my_pack.a{i}"))).collect();
    mine[110] = action("my_pack.run");
    let error = write(&server, "my_pack", &mine).await.unwrap_err();
    match &error {
        WriteError::ComponentConflict {
            kind,
            component,
            owner,
        } => {
            assert_eq!(
                (kind.as_str(), component.as_str(), owner.as_str()),
                ("action", "my_pack.run", "first_pack")
            );
        }
        other => panic!("expected a component conflict, got {other:?}"),
    }
    assert_eq!(
        error.to_string(),
        "action 'my_pack.run' belongs to pack 'first_pack'; it is not overwritten"
    );
    // Nothing of the refused pack was written.
    assert_eq!(
        server.state.db.registered_version("my_pack").await.unwrap(),
        None
    );

    // The same ref as another kind is no conflict; re-writing one's own is none either.
    let rule = ComponentRow {
        kind: "rule",
        ..action("my_pack.run")
    };
    let id = write(&server, "my_pack", std::slice::from_ref(&rule))
        .await
        .unwrap();
    let mut again = server
        .state
        .db
        .begin_packs_write(&["my_pack"])
        .await
        .unwrap();
    again.replace_components(id, &[rule]).await.unwrap();
    again.commit().await.unwrap();
    server.stop().await;
}
on_both_backends!(component_of_another_pack_is_a_conflict_naming_its_owner);

fn write_pack(dir: &Path, pack_ref: &str, actions: usize) {
    std::fs::create_dir_all(dir.join("actions")).unwrap();
    std::fs::write(
        dir.join("pack.yaml"),
        format!("ref: {pack_ref}\nlabel: L\nversion: 1.0.0\n"),
    )
    .unwrap();
    std::fs::write(dir.join("actions/run.sh"), "echo\n").unwrap();
    for a in 0..actions {
        std::fs::write(
            dir.join(format!("actions/a{a}.yaml")),
            format!("ref: {pack_ref}.a{a}\nrunner_type: shell\nentry_point: run.sh\n"),
        )
        .unwrap();
    }
}

/// A batch larger than the number of CPUs, with a duplicate, a missing directory and
/// an invalid pack among valid ones: every valid pack registers with its own counts,
/// and each failure is reported for the path that caused it, the duplicate being
/// the second occurrence in request order.
async fn batch_parsed_in_parallel_keeps_request_order(backend: Backend) {
    let server = TestServer::start(backend).await;
    let src = server.root.path().canonicalize().unwrap().join("src");
    let mut paths = Vec::new();
    for i in 0..24 {
        let dir = src.join(format!("p{i}"));
        write_pack(&dir, &format!("p{i}"), i % 5 + 1);
        paths.push(path_str(&dir));
    }
    let duplicate = src.join("again");
    write_pack(&duplicate, "p7", 1);
    paths.insert(12, path_str(&duplicate));
    let missing = src.join("missing");
    paths.insert(3, path_str(&missing));
    let invalid = src.join("invalid");
    write_pack(&invalid, "invalid", 1);
    std::fs::remove_file(invalid.join("actions/run.sh")).unwrap();
    paths.push(path_str(&invalid));

    let mut client = server.client().await;
    let result = client
        .register_batch(pb::RegisterBatchRequest {
            pack_paths: paths,
            skip_tests: Some(true),
            ..Default::default()
        })
        .await
        .unwrap();

    let mut registered: Vec<(String, u32)> = result
        .registered_packs
        .iter()
        .map(|p| {
            (
                p.pack_ref.clone(),
                p.components_registered.as_ref().unwrap().actions,
            )
        })
        .collect();
    registered.sort();
    let mut expected: Vec<(String, u32)> = (0..24)
        .map(|i| (format!("p{i}"), (i % 5 + 1) as u32))
        .collect();
    expected.sort();
    assert_eq!(registered, expected);

    let failed: Vec<(&str, &str)> = result
        .failed_packs
        .iter()
        .map(|f| (f.pack_path.as_str(), f.error.as_str()))
        .collect();
    assert_eq!(failed.len(), 3, "{failed:?}");
    let error_for = |path: &Path| {
        let path = path_str(path);
        failed
            .iter()
            .find(|(p, _)| *p == path)
            .unwrap_or_else(|| panic!("no failure for {path}: {failed:?}"))
            .1
    };
    assert!(error_for(&missing).contains("does not exist"));
    assert!(
        error_for(&duplicate).contains(&format!(
            "pack 'p7' is also at '{}' in this batch",
            path_str(&src.join("p7"))
        )),
        "{failed:?}"
    );
    assert!(error_for(&invalid).contains("entry_point 'run.sh' does not exist"));
    server.stop().await;
}
on_both_backends!(batch_parsed_in_parallel_keeps_request_order);
