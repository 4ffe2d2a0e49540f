//! BuildEnvs with the host's pip configuration: a private index over HTTPS with a
//! self-signed certificate, named (with credentials) by the host's `pip.conf`
//! together with the CA bundle that trusts it. Honoured by default; isolated builds
//! do not see it and say which setting would.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use attune_packs_client::pb;
use attune_packs_server::envs::{HostEnvironment, HostToolConfig};
use sha2::{Digest, Sha256};

use crate::{
    common::{Backend, TestServer, path_str},
    support::{http::FileServer, packs::write_tree},
};

const PACKAGE: &str = "attune_host_probe";
/// pip's canonical name of [`PACKAGE`], as the simple index spells its page.
const PROJECT: &str = "attune-host-probe";
const INDEX_USER: &str = "probe";
const INDEX_TOKEN: &str = "host-index-token-7c41d2";

/// A wheel of [`PACKAGE`] 1.0.0 whose module sets `VALUE = 7`.
fn build_wheel(dir: &Path) -> (String, Vec<u8>) {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/testdata/make_wheel.py");
    let status = Command::new("python3")
        .arg(script)
        .arg(dir)
        .args([PACKAGE, "1.0.0", "7"])
        .status()
        .unwrap();
    assert!(status.success());
    let name = format!("{PACKAGE}-1.0.0-py3-none-any.whl");
    let bytes = std::fs::read(dir.join(&name)).unwrap();
    (name, bytes)
}

/// A PEP 503 simple index holding the wheel, every path behind basic auth.
async fn private_index(wheel_name: &str, wheel: Vec<u8>) -> FileServer {
    let server = FileServer::start_https().await;
    let digest = hex::encode(Sha256::digest(&wheel));
    let wheel_path = format!("packages/{wheel_name}");
    let html = |body: String| {
        format!("<!DOCTYPE html>\n<html><body>\n{body}\n</body></html>\n").into_bytes()
    };
    let text_html = || vec![("Content-Type".to_string(), "text/html".to_string())];
    server.put_with_headers(
        "simple/",
        html(format!("<a href=\"/simple/{PROJECT}/\">{PROJECT}</a>")),
        text_html(),
    );
    server.put_with_headers(
        &format!("simple/{PROJECT}/"),
        html(format!(
            "<a href=\"/{wheel_path}#sha256={digest}\">{wheel_name}</a>"
        )),
        text_html(),
    );
    server.put(&wheel_path, wheel);
    for path in ["simple/", &format!("simple/{PROJECT}/"), &wheel_path] {
        server.require_basic_auth(path, INDEX_USER, INDEX_TOKEN);
    }
    server
}

register_test!(
    builds_use_the_hosts_pip_index_and_ca_bundle_unless_isolated,
    requires = [PythonVenv]
);
async fn builds_use_the_hosts_pip_index_and_ca_bundle_unless_isolated() {
    let scratch = tempfile::tempdir().unwrap();
    let (wheel_name, wheel) = build_wheel(scratch.path());
    let index = private_index(&wheel_name, wheel).await;
    let cert = index.cert().unwrap();

    // The host: a user pip.conf under its HOME naming the index (with credentials)
    // and a CA bundle outside every directory the sandbox may read by default.
    let host = tempfile::tempdir().unwrap();
    // pip runs as the sandbox user: the CA bundle must be reachable for it.
    std::fs::set_permissions(host.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let ca_bundle = host.path().join("corp-ca.pem");
    std::fs::write(&ca_bundle, &cert.pem).unwrap();
    let home = host.path().join("home");
    let index_url = format!(
        "https://{INDEX_USER}:{INDEX_TOKEN}@{}/simple/",
        index.addr()
    );
    write_tree(
        &home,
        &[(
            ".config/pip/pip.conf",
            &format!(
                "[global]\nindex-url = {index_url}\ncert = {}\ntimeout = 20\n",
                ca_bundle.display()
            ),
        )],
    );
    let host_env = HostEnvironment::new(Vec::<(String, String)>::new(), Some(home.clone()));

    let pack_yaml = "ref: hostcfg\nversion: 1.0.0\npython: \"3\"\n";
    let requirements = format!("{PROJECT}==1.0.0\n");
    let files = [
        ("pack.yaml", pack_yaml),
        ("requirements.txt", requirements.as_str()),
    ];

    // Default: the host's configuration is honoured.
    let server = TestServer::start_with(Backend::Sqlite, |c| {
        c.build.host_environment = Some(host_env.clone());
    })
    .await;
    assert_eq!(
        server.state.config.build.host_tool_config,
        HostToolConfig::Honour
    );
    let root = server.root.path().canonicalize().unwrap();
    let pack = root.join("src/hostcfg");
    write_tree(&pack, &files);
    let mut client = server.client().await;
    let r = client
        .build_envs(pb::BuildEnvsRequest {
            pack_paths: vec![path_str(&pack)],
            packs_base_dir: Some(path_str(&root.join("base"))),
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(
        r.failed_environments.is_empty(),
        "{:#?}",
        r.failed_environments
    );
    let py = r.built_environments[0]
        .environments
        .clone()
        .unwrap()
        .python
        .unwrap();
    assert!(py.requirements_installed);
    assert_eq!(
        crate::build_envs::import_value(&py.virtualenv_path, PACKAGE),
        "7"
    );
    let wheel_path = format!("/packages/{wheel_name}");
    assert_eq!(index.hits(&wheel_path), 1, "the wheel came from the index");
    assert!(
        !format!("{r:?}").contains(INDEX_TOKEN),
        "the index token never shows"
    );
    server.stop().await;

    // Isolated: pip does not see the host's index and the failure says which
    // setting makes it, without the credentials.
    let server = TestServer::start_with(Backend::Sqlite, |c| {
        c.build.host_environment = Some(host_env.clone());
        c.build.host_tool_config = HostToolConfig::Ignore;
    })
    .await;
    let root = server.root.path().canonicalize().unwrap();
    let pack = root.join("src/hostcfg");
    write_tree(&pack, &files);
    let mut client = server.client().await;
    let r = client
        .build_envs(pb::BuildEnvsRequest {
            pack_paths: vec![path_str(&pack)],
            packs_base_dir: Some(path_str(&root.join("base"))),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(r.failed_environments.len(), 1, "{r:#?}");
    let error = &r.failed_environments[0].error;
    for expected in [
        "`build.host_tool_config: ignore`",
        "`build.host_tool_config: honour`",
        "`build.pip_index_url`",
        "--- last lines of pip output ---",
    ] {
        assert!(error.contains(expected), "{expected:?} in {error}");
    }
    assert!(
        error.contains(&format!("https://****@{}/simple/", index.addr())),
        "the ignored host index is named, redacted: {error}"
    );
    assert!(!error.contains(INDEX_TOKEN), "{error}");
    assert_eq!(
        index.hits(&wheel_path),
        1,
        "isolated pip never asked the index"
    );
    server.stop().await;
}
