//! YAML bombs in pack.yaml and component files — nested aliases, 100k-deep nesting,
//! oversized files — through Dependencies and RegisterBatch: each refused quickly,
//! per pack, with an error naming the file, the limit and its setting, while the
//! server's memory stays bounded.

use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use attune_packs_client::{Client, pb};

use crate::{
    common::{Backend, TestServer, on_both_backends, path_str, simple_pack},
    support::{
        memory::{MIB, peak_growth},
        packs::write_tree,
    },
};

/// Nested aliases shaped like the reproduced attack: a wide anchored base of 5,000
/// scalars and five levels that each repeat the level below ten times. About 30 KB
/// that serde would expand to 5 * 10^8 nodes (tens of gigabytes).
fn alias_bomb() -> String {
    let mut yaml = String::from("bomb:\n  l0: &l0 [");
    yaml.push_str(&vec!["lol"; 5_000].join(", "));
    yaml.push_str("]\n");
    for level in 1..=5 {
        let refs = vec![format!("*l{}", level - 1); 10].join(", ");
        yaml.push_str(&format!("  l{level}: &l{level} [{refs}]\n"));
    }
    yaml
}

const DEPTH: usize = 100_000;

fn deep_nesting() -> String {
    format!("{}{}\n", "[".repeat(DEPTH), "]".repeat(DEPTH))
}

fn action_header(pack_ref: &str, name: &str) -> String {
    format!("ref: {pack_ref}.{name}\nrunner_type: shell\nentry_point: run.sh\n")
}

/// A pack whose pack.yaml is `pack_yaml`, with `components` added.
fn write_pack(dir: &Path, pack_yaml: &str, components: &[(&str, String)]) -> PathBuf {
    let mut files: Vec<(&str, &[u8])> = vec![
        ("pack.yaml", pack_yaml.as_bytes()),
        ("actions/run.sh", b"echo hi\n"),
    ];
    files.extend(components.iter().map(|(n, c)| (*n, c.as_bytes())));
    write_tree(dir, &files);
    dir.to_path_buf()
}

struct Packs {
    /// pack.yaml is an alias bomb.
    laughs: PathBuf,
    /// pack.yaml nests 100,000 levels deep.
    deep: PathBuf,
    /// A component is an alias bomb.
    comp_laughs: PathBuf,
    /// A component nests 100,000 levels deep.
    comp_deep: PathBuf,
    /// A component is over 1 MiB.
    comp_huge: PathBuf,
    /// A component just under 1 MiB, all of it nesting (~520,000 levels).
    comp_mib: PathBuf,
    /// pack.yaml is over 1 MiB.
    huge: PathBuf,
}

fn hostile_packs(root: &Path) -> Packs {
    let valid = |r: &str| simple_pack(r, "1.0.0", &[]);
    let huge = format!(
        "{}description: \"{}\"\n",
        action_header("comp_huge", "huge"),
        "x".repeat(MIB as usize + 1)
    );
    Packs {
        laughs: write_pack(
            &root.join("laughs"),
            &format!("{}{}", valid("laughs"), alias_bomb()),
            &[],
        ),
        deep: write_pack(
            &root.join("deep"),
            &format!("{}nested: {}", valid("deep"), deep_nesting()),
            &[],
        ),
        comp_laughs: write_pack(
            &root.join("comp_laughs"),
            &valid("comp_laughs"),
            &[(
                "actions/bomb.yaml",
                format!("{}{}", action_header("comp_laughs", "bomb"), alias_bomb()),
            )],
        ),
        comp_deep: write_pack(
            &root.join("comp_deep"),
            &valid("comp_deep"),
            &[(
                "actions/deep.yaml",
                format!(
                    "{}parameters: {}",
                    action_header("comp_deep", "deep"),
                    deep_nesting()
                ),
            )],
        ),
        comp_huge: write_pack(
            &root.join("comp_huge"),
            &valid("comp_huge"),
            &[("actions/huge.yaml", huge)],
        ),
        comp_mib: write_pack(
            &root.join("comp_mib"),
            &valid("comp_mib"),
            &[(
                "actions/mib.yaml",
                format!(
                    "{}parameters: {}{}\n",
                    action_header("comp_mib", "mib"),
                    "[".repeat(520_000),
                    "]".repeat(520_000)
                ),
            )],
        ),
        huge: write_pack(
            &root.join("huge"),
            &format!(
                "{}description: \"{}\"\n",
                valid("huge"),
                "x".repeat(MIB as usize)
            ),
            &[],
        ),
    }
}

fn assert_mentions(error: &str, needles: &[&str]) {
    for needle in needles {
        assert!(error.contains(needle), "{needle:?} not in {error}");
    }
}

/// Dependencies reads only pack.yaml: the alias bomb and the deep nesting are refused
/// per pack.
async fn dependencies(client: &mut Client, packs: &Packs) {
    let request = pb::DependenciesRequest {
        pack_paths: vec![
            path_str(&packs.laughs),
            path_str(&packs.deep),
            path_str(&packs.huge),
        ],
        skip_validation: None,
    };
    let started = Instant::now();
    let r = client.dependencies(request).await.unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    let error = |pack: &Path| {
        r.errors
            .iter()
            .find(|e| e.pack_path == path_str(pack))
            .unwrap_or_else(|| panic!("no error for {}: {r:#?}", pack.display()))
            .error
            .clone()
    };
    assert_mentions(
        &error(&packs.laughs),
        &["laughs/pack.yaml", "100000 nodes", "yaml.max_nodes"],
    );
    assert_mentions(
        &error(&packs.deep),
        &["deep/pack.yaml", "line 4", "64 levels", "yaml.max_depth"],
    );
    assert_mentions(&error(&packs.huge), &["huge/pack.yaml", "1048576 bytes"]);
}

/// RegisterBatch reads pack.yaml and every component: all six packs fail, naming the
/// file and the setting; nothing is registered.
async fn register_batch(client: &mut Client, server: &TestServer, packs: &Packs) {
    let base = server.root.path().canonicalize().unwrap().join("base");
    let all = [
        &packs.laughs,
        &packs.deep,
        &packs.comp_laughs,
        &packs.comp_deep,
        &packs.comp_huge,
        &packs.comp_mib,
    ];
    let request = pb::RegisterBatchRequest {
        pack_paths: all.iter().map(|p| path_str(p)).collect(),
        packs_base_dir: Some(path_str(&base)),
        skip_tests: Some(true),
        ..Default::default()
    };
    let started = Instant::now();
    let r = client.register_batch(request).await.unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert!(r.registered_packs.is_empty(), "{:#?}", r.registered_packs);
    let error = |pack: &Path| {
        r.failed_packs
            .iter()
            .find(|f| f.pack_path == path_str(pack))
            .unwrap_or_else(|| panic!("{} did not fail: {r:#?}", pack.display()))
            .error
            .clone()
    };
    assert_mentions(
        &error(&packs.laughs),
        &["laughs/pack.yaml", "yaml.max_nodes"],
    );
    assert_mentions(&error(&packs.deep), &["deep/pack.yaml", "yaml.max_depth"]);
    assert_mentions(
        &error(&packs.comp_laughs),
        &["actions/bomb.yaml", "100000 nodes", "yaml.max_nodes"],
    );
    assert_mentions(
        &error(&packs.comp_deep),
        &["actions/deep.yaml", "line 4", "yaml.max_depth"],
    );
    // Component files were already capped at 1 MiB when read.
    assert_mentions(
        &error(&packs.comp_huge),
        &["actions/huge.yaml", "1048576 bytes"],
    );
    assert_mentions(
        &error(&packs.comp_mib),
        &["actions/mib.yaml", "line 4", "yaml.max_depth"],
    );
    assert!(!base.exists() || std::fs::read_dir(&base).unwrap().next().is_none());
}

async fn yaml_bombs_are_refused_quickly_with_bounded_memory(backend: Backend) {
    let server = TestServer::start(backend).await;
    let root = server.root.path().canonicalize().unwrap();
    let packs = hostile_packs(&root);
    let mut client = server.client().await;
    let ((), growth) = peak_growth(async {
        dependencies(&mut client, &packs).await;
        register_batch(&mut client, &server, &packs).await;
    })
    .await;
    assert!(growth < 100 * MIB, "peak RSS grew by {} MiB", growth / MIB);
    server.stop().await;
}
on_both_backends!(yaml_bombs_are_refused_quickly_with_bounded_memory);
