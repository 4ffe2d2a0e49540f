//! The StackStorm Exchange index as a registry, end to end: the real public index,
//! served on loopback with a few entries' `repo_url` pointing at git repositories on
//! loopback (smart HTTP); Download, RegisterBatch, Install and SearchPacks through a
//! registry configured `trust: unverified`, and the refusal without it.

use std::path::{Path, PathBuf};

use attune_packs_client::pb;
use attune_packs_server::{
    config::{Config, IndexEntryConfig},
    registry::RegistryTrust,
};
use serde_json::Value;
use sqlx::Row;

use crate::{
    common::{Backend, TestServer, on_both_backends, path_str},
    support::{
        git::{HttpGitServer, HttpOptions, git, net_shared},
        http::FileServer,
        packs::{pack_files, write_tree},
    },
};

const REAL_INDEX: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/stackstorm-exchange-index.json"
);

/// One Exchange pack whose repository is served on loopback.
struct ServedPack {
    pack_ref: String,
    version: String,
    /// The commit tagged `v<version>`.
    tagged: String,
    /// The later, untagged tip of `main`.
    tip: String,
    repo_url: String,
}

/// The real index with the entries of `refs` rewritten to repositories on loopback,
/// served over HTTP, plus those repositories.
struct Exchange {
    files: FileServer,
    _git: HttpGitServer,
    _repos: tempfile::TempDir,
    packs: Vec<ServedPack>,
}

impl Exchange {
    async fn start(refs: &[&str]) -> Exchange {
        let mut index: Value = serde_json::from_slice(&std::fs::read(REAL_INDEX).unwrap()).unwrap();
        let repos = tempfile::tempdir().unwrap();
        let smart = HttpGitServer::start(repos.path(), HttpOptions::default());
        let mut packs = Vec::new();
        for &pack_ref in refs {
            let entry = &mut index["packs"][pack_ref];
            let version = entry["version"].as_str().unwrap().to_string();
            let name = format!("stackstorm-{pack_ref}.git");
            let (tagged, tip) = tagged_repo(repos.path(), &name, pack_ref, &version);
            let repo_url = smart.url(&name);
            entry["repo_url"] = Value::String(repo_url.clone());
            packs.push(ServedPack {
                pack_ref: pack_ref.to_string(),
                version,
                tagged,
                tip,
                repo_url,
            });
        }
        let files = FileServer::start_http().await;
        files.put("exchange/index.json", serde_json::to_vec(&index).unwrap());
        Exchange {
            files,
            _git: smart,
            _repos: repos,
            packs,
        }
    }

    fn index_url(&self) -> String {
        self.files.url("exchange/index.json")
    }

    fn pack(&self, pack_ref: &str) -> &ServedPack {
        self.packs.iter().find(|p| p.pack_ref == pack_ref).unwrap()
    }

    fn configure(&self, trust: RegistryTrust) -> impl FnOnce(&mut Config) + use<> {
        let url = self.index_url();
        move |c: &mut Config| {
            c.download.allow_http = true;
            c.registry.allow_http = true;
            c.registry.indices = vec![IndexEntryConfig {
                url,
                name: Some("exchange".into()),
                priority: 1,
                enabled: true,
                headers: Default::default(),
                trust,
            }];
        }
    }
}

/// A bare repository `<base>/<name>`: the pack at `version` tagged `v<version>`, then a
/// later untagged commit on `main` that changes its script. Returns (tagged, tip).
fn tagged_repo(base: &Path, name: &str, pack_ref: &str, version: &str) -> (String, String) {
    let work = base.join(format!("{name}.work"));
    std::fs::create_dir_all(&work).unwrap();
    git(&work, &["init", "-q"]);
    write_tree(&work, &pack_files(pack_ref, version));
    git(&work, &["add", "-A"]);
    git(&work, &["commit", "-q", "-m", "release"]);
    git(&work, &["tag", &format!("v{version}")]);
    let tagged = git(&work, &["rev-parse", "HEAD"]);
    write_tree(
        &work,
        &[("actions/hello.sh", "#!/bin/sh\necho unreleased work\n")],
    );
    git(&work, &["commit", "-q", "-am", "after the release"]);
    let tip = git(&work, &["rev-parse", "HEAD"]);
    crate::support::git::publish_bare(base, &work, name);
    std::fs::remove_dir_all(&work).unwrap();
    (tagged, tip)
}

fn download_request(dest: &Path, packs: &[&str]) -> pb::DownloadRequest {
    pb::DownloadRequest {
        packs: packs.iter().map(|s| s.to_string()).collect(),
        destination_dir: path_str(dest),
        ..Default::default()
    }
}

fn failure<'a>(r: &'a pb::DownloadResult, source: &str) -> &'a str {
    &r.failed_packs
        .iter()
        .find(|f| f.source == source)
        .unwrap_or_else(|| panic!("{source} did not fail: {r:#?}"))
        .error
}

/// What the pack row records about where `pack_ref` came from:
/// (checksum_verified, registry_trust, git_commit, registry_url).
async fn row_provenance(
    server: &TestServer,
    pack_ref: &str,
) -> (bool, Option<String>, Option<String>, Option<String>) {
    use attune_packs_server::store::Db;
    const SQL: &str = "SELECT checksum_verified, registry_trust, git_commit, registry_url \
                       FROM packs WHERE ref = $1";
    match &server.state.db {
        Db::Sqlite(pool) => {
            let r = sqlx::query(SQL)
                .bind(pack_ref)
                .fetch_one(pool)
                .await
                .unwrap();
            (r.get(0), r.get(1), r.get(2), r.get(3))
        }
        Db::Postgres(pool) => {
            let r = sqlx::query(SQL)
                .bind(pack_ref)
                .fetch_one(pool)
                .await
                .unwrap();
            (r.get(0), r.get(1), r.get(2), r.get(3))
        }
    }
}

fn root(server: &TestServer) -> PathBuf {
    server.root.path().canonicalize().unwrap()
}

async fn an_unverified_exchange_registry_downloads_registers_installs_and_searches(
    backend: Backend,
) {
    let _net = net_shared();
    let exchange = Exchange::start(&["aws", "acos"]).await;
    let server =
        TestServer::start_with(backend, exchange.configure(RegistryTrust::Unverified)).await;
    let mut client = server.client().await;
    let aws = exchange.pack("aws");
    assert_ne!(aws.tagged, aws.tip);

    // Download: the tag v<version>, not the later tip of main.
    let dest = root(&server).join("dl");
    let r = client
        .download(download_request(&dest, &["aws"]))
        .await
        .unwrap();
    assert_eq!(r.success_count, 1, "{:#?}", r.failed_packs);
    let placed = &r.downloaded_packs[0];
    assert_eq!(placed.pack_ref, "aws");
    assert_eq!(placed.pack_version, aws.version);
    assert_eq!(placed.source_type, "registry");
    assert_eq!(placed.git_commit.as_deref(), Some(aws.tagged.as_str()));
    assert_eq!(
        std::fs::read_to_string(dest.join("aws/actions/hello.sh")).unwrap(),
        format!("#!/bin/sh\necho \"hello from aws {}\"\n", aws.version)
    );
    let sidecar: Value =
        serde_json::from_slice(&std::fs::read(dest.join(".aws.source.json")).unwrap()).unwrap();
    assert_eq!(sidecar["checksum_verified"], false, "{sidecar:#}");
    assert_eq!(sidecar["registry_trust"], "unverified", "{sidecar:#}");
    assert_eq!(sidecar["git_commit"], aws.tagged.as_str());
    assert_eq!(sidecar["reference"], format!("v{}", aws.version));
    assert_eq!(sidecar["url"], aws.repo_url.as_str());
    assert_eq!(sidecar["registry_url"], exchange.index_url().as_str());

    // An exact pin is the same version; any other version is not offered.
    let pinned = format!("aws@{}", aws.version);
    let r = client
        .download(download_request(
            &root(&server).join("pinned"),
            &[&pinned, "aws@1.2.3"],
        ))
        .await
        .unwrap();
    assert_eq!(r.success_count, 1, "{:#?}", r.failed_packs);
    assert_eq!(
        r.downloaded_packs[0].git_commit.as_deref(),
        Some(aws.tagged.as_str())
    );
    let missing = failure(&r, "aws@1.2.3");
    assert!(
        missing.contains(&format!("available: {}", aws.version)),
        "{missing}"
    );

    // RegisterBatch records the same on the pack row.
    let registered = client
        .register_batch(pb::RegisterBatchRequest {
            pack_paths: vec![path_str(&dest.join("aws"))],
            packs_base_dir: Some(path_str(&server.packs_dir())),
            skip_tests: Some(true),
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(
        registered.failed_packs.is_empty(),
        "{:#?}",
        registered.failed_packs
    );
    assert_eq!(
        row_provenance(&server, "aws").await,
        (
            false,
            Some("unverified".to_string()),
            Some(aws.tagged.clone()),
            Some(exchange.index_url())
        )
    );

    // Install sees one version per Exchange pack and installs the tag, unverified.
    let acos = exchange.pack("acos");
    let installed = client
        .install(pb::InstallRequest {
            packs: vec!["acos".into()],
            packs_base_dir: Some(path_str(&server.packs_dir())),
            skip_tests: Some(true),
            timeout: Some(60),
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(installed.success, "{:#?}", installed.errors);
    let plan: Vec<(&str, &str)> = installed
        .plan
        .iter()
        .map(|p| (p.pack_ref.as_str(), p.version.as_str()))
        .collect();
    assert_eq!(plan, [("acos", acos.version.as_str())]);
    assert_eq!(
        std::fs::read_to_string(server.packs_dir().join("acos/actions/hello.sh")).unwrap(),
        format!("#!/bin/sh\necho \"hello from acos {}\"\n", acos.version)
    );
    assert_eq!(
        row_provenance(&server, "acos").await,
        (
            false,
            Some("unverified".to_string()),
            Some(acos.tagged.clone()),
            Some(exchange.index_url())
        )
    );

    // SearchPacks finds Exchange entries by a keyword of the real index.
    let found = client.search_packs("route53").await.unwrap().packs;
    let refs: Vec<&str> = found.iter().map(|p| p.pack_ref.as_str()).collect();
    assert_eq!(refs, ["aws", "aws_boto3"], "{found:#?}");
    assert_eq!(found[0].version, aws.version);
    assert_eq!(found[0].versions, std::slice::from_ref(&aws.version));
    assert_eq!(found[0].index_name.as_deref(), Some("exchange"));
    assert_eq!(found[0].author, "StackStorm, Inc.");
    let all = client.search_packs("").await.unwrap().packs;
    assert_eq!(all.len(), 169);
    server.stop().await;
}
on_both_backends!(an_unverified_exchange_registry_downloads_registers_installs_and_searches);

register_test!(without_trust_unverified_an_exchange_registry_is_refused_naming_the_setting);
async fn without_trust_unverified_an_exchange_registry_is_refused_naming_the_setting() {
    let _net = net_shared();
    let exchange = Exchange::start(&["aws"]).await;
    let server =
        TestServer::start_with(Backend::Sqlite, exchange.configure(RegistryTrust::Verified)).await;
    let mut client = server.client().await;
    let dest = root(&server).join("dl");
    let r = client
        .download(download_request(&dest, &["aws"]))
        .await
        .unwrap();
    assert_eq!(r.success_count, 0);
    let error = failure(&r, "aws");
    assert!(
        error.contains(
            "set `trust: unverified` on registry 'exchange' in the registries configuration"
        ),
        "{error}"
    );
    assert!(!dest.join("aws").exists());

    // Nothing is installed either, and a search has no index to answer from.
    let installed = client
        .install(pb::InstallRequest {
            packs: vec!["aws".into()],
            packs_base_dir: Some(path_str(&server.packs_dir())),
            timeout: Some(60),
            ..Default::default()
        })
        .await;
    let refused = match installed {
        Ok(r) => {
            assert!(!r.success);
            format!("{:?}", r.errors)
        }
        Err(status) => status.to_string(),
    };
    assert!(refused.contains("trust: unverified"), "{refused}");
    assert!(!server.packs_dir().join("aws").exists());
    let search = client.search_packs("route53").await.unwrap_err();
    assert!(search.to_string().contains("trust: unverified"), "{search}");
    server.stop().await;
}
