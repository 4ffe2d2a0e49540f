//! Install end to end: a loopback HTTP registry serving real archives, the solver,
//! downloads, environments and one all-or-nothing registration, on SQLite and
//! PostgreSQL; dry runs, conflicts, locks, and the REST door.

use std::{collections::BTreeMap, path::Path};

use attune_packs_client::{Event, pb};
use attune_packs_server::config::{Config, IndexEntryConfig};
use futures::StreamExt;
use serde_json::{Value, json};
use tonic::Code;

use crate::{
    common::{Backend, TestServer, on_both_backends, path_str, simple_pack, write_pack},
    support::{
        archives,
        git::{HttpGitServer, HttpOptions, create_repo, net_shared},
        http::FileServer,
        index::{IndexEntry, Release, index_json},
        packs::{sha256_checksum, write_tree},
    },
};

/// A pack with dependencies, an action, and a script that prints its version (so
/// two versions differ in more than pack.yaml). `extra_yaml` is appended to
/// pack.yaml.
fn pack(pack_ref: &str, version: &str, deps: &[&str], extra_yaml: &str) -> Vec<(String, Vec<u8>)> {
    let mut yaml = format!(
        "ref: {pack_ref}\nlabel: {pack_ref}\ndescription: Test pack {pack_ref}\nversion: \"{version}\"\n"
    );
    if !deps.is_empty() {
        yaml.push_str("dependencies:\n");
        for d in deps {
            yaml.push_str(&format!("  - \"{d}\"\n"));
        }
    }
    yaml.push_str(extra_yaml);
    vec![
        ("pack.yaml".into(), yaml.into_bytes()),
        (
            "actions/hello.yaml".into(),
            format!("ref: {pack_ref}.hello\nrunner_type: shell\nentry_point: hello.sh\n")
                .into_bytes(),
        ),
        (
            "actions/hello.sh".into(),
            format!("#!/bin/sh\necho \"{pack_ref} {version}\"\n").into_bytes(),
        ),
    ]
}

/// One published version: its dependencies and its archive.
type Published = (Vec<String>, Vec<u8>);

/// A registry on a loopback HTTP server: every published version is a real
/// tar.gz, listed with its checksum and dependencies in `index.json`.
struct Registry {
    files: FileServer,
    /// ref -> version -> (dependencies, archive bytes)
    packs: BTreeMap<String, BTreeMap<String, Published>>,
}

impl Registry {
    async fn start() -> Registry {
        Registry {
            files: FileServer::start_http().await,
            packs: BTreeMap::new(),
        }
    }

    fn publish(&mut self, pack_ref: &str, version: &str, deps: &[&str], extra_yaml: &str) {
        self.publish_files(
            pack_ref,
            version,
            deps,
            pack(pack_ref, version, deps, extra_yaml),
        );
    }

    fn publish_files(
        &mut self,
        pack_ref: &str,
        version: &str,
        deps: &[&str],
        files: Vec<(String, Vec<u8>)>,
    ) {
        let archive = archives::tar_gz_in(Some(&format!("{pack_ref}-{version}")), &files);
        self.files
            .put(&format!("{pack_ref}-{version}.tar.gz"), archive.clone());
        self.packs.entry(pack_ref.to_string()).or_default().insert(
            version.to_string(),
            (deps.iter().map(|d| d.to_string()).collect(), archive),
        );
        self.write_index();
    }

    fn write_index(&self) {
        let entries: Vec<IndexEntry> = self
            .packs
            .iter()
            .map(|(pack_ref, versions)| {
                let mut ordered: Vec<(&String, &Published)> = versions.iter().collect();
                ordered.sort_by_key(|(v, _)| semver::Version::parse(v).unwrap());
                let (latest, (deps, archive)) = ordered.pop().unwrap();
                let url = |v: &str| self.files.url(&format!("{pack_ref}-{v}.tar.gz"));
                let mut entry = IndexEntry::new(pack_ref, latest)
                    .archive(&url(latest), &sha256_checksum(archive));
                for d in deps {
                    entry = entry.depends_on(d);
                }
                for (version, (deps, archive)) in ordered {
                    let mut release =
                        Release::new(version).archive(&url(version), &sha256_checksum(archive));
                    for d in deps {
                        release = release.depends_on(d);
                    }
                    entry = entry.release(release);
                }
                entry
            })
            .collect();
        self.files.put("index.json", index_json(&entries));
    }

    fn index_url(&self) -> String {
        self.files.url("index.json")
    }

    fn configure(&self) -> impl FnOnce(&mut Config) + use<> {
        let url = self.index_url();
        move |c: &mut Config| {
            c.download.allow_http = true;
            c.registry.allow_http = true;
            // Tests publish and re-resolve within seconds.
            c.registry.cache_ttl = std::time::Duration::ZERO;
            c.registry.indices = vec![IndexEntryConfig {
                url,
                name: Some("loopback".into()),
                priority: 1,
                enabled: true,
                headers: Default::default(),
                trust: Default::default(),
            }];
        }
    }
}

/// The chain top -> mid -> base, with older versions that must not be chosen.
fn chain_registry(registry: &mut Registry) {
    registry.publish("base", "1.0.0", &[], "");
    registry.publish("base", "2.0.0", &[], "");
    registry.publish("base", "2.1.0", &[], "");
    registry.publish("mid", "1.0.0", &["base@^1"], "");
    registry.publish("mid", "1.1.0", &["base@>=2.0"], "");
    registry.publish("mid", "2.0.0", &["base@^2"], "");
    registry.publish("top", "1.0.0", &["mid@~1.1"], "");
}

/// `(ref, version, kind)` rows, for comparing plans and locks at a glance.
fn triples<'a, T>(items: &'a [T], row: impl Fn(&'a T) -> [&'a str; 3]) -> Vec<[&'a str; 3]> {
    items.iter().map(row).collect()
}

fn request(server: &TestServer, packs: &[&str]) -> pb::InstallRequest {
    pb::InstallRequest {
        packs: packs.iter().map(|p| p.to_string()).collect(),
        packs_base_dir: Some(path_str(&server.packs_dir())),
        timeout: Some(60),
        ..Default::default()
    }
}

/// Runs Install, returning the progress events and the result.
async fn install(
    server: &TestServer,
    request: pb::InstallRequest,
) -> (Vec<pb::Progress>, pb::InstallResult) {
    let mut client = server.client().await;
    let mut stream = client.install_stream(request).await.unwrap();
    let mut progress = Vec::new();
    while let Some(event) = stream.next().await {
        match event.unwrap() {
            Event::Progress(p) => progress.push(p),
            Event::Result(r) => return (progress, r),
        }
    }
    panic!("no result");
}

async fn registered(server: &TestServer) -> BTreeMap<String, (i64, String)> {
    let rows: Vec<(i64, String, String)> = match &server.state.db {
        attune_packs_server::store::Db::Sqlite(pool) => {
            sqlx::query_as("SELECT id, ref, version FROM packs")
                .fetch_all(pool)
                .await
                .unwrap()
        }
        attune_packs_server::store::Db::Postgres(pool) => {
            sqlx::query_as("SELECT id, ref, version FROM packs")
                .fetch_all(pool)
                .await
                .unwrap()
        }
    };
    rows.into_iter().map(|(id, r, v)| (r, (id, v))).collect()
}

fn hidden_leftovers(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.') && n != ".envs" && n != ".history")
        .collect()
}

fn version_of_files(server: &TestServer, pack_ref: &str) -> String {
    std::fs::read_to_string(server.packs_dir().join(pack_ref).join("actions/hello.sh")).unwrap()
}

async fn two_level_chain_installs_in_dependency_order(backend: Backend) {
    let _net = net_shared();
    let mut registry = Registry::start().await;
    chain_registry(&mut registry);
    let server = TestServer::start_with(backend, registry.configure()).await;

    let (progress, r) = install(&server, request(&server, &["top"])).await;
    assert!(r.success, "{:#?}", r.errors);
    let plan = triples(&r.plan, |p| [&p.pack_ref, &p.version, &p.action]);
    // Highest versions that fit: mid ~1.1 excludes 2.0.0; base >=2.0 picks 2.1.0.
    assert_eq!(
        plan,
        [
            ["base", "2.1.0", "install"],
            ["mid", "1.1.0", "install"],
            ["top", "1.0.0", "install"]
        ]
    );
    assert_eq!(r.plan[0].required_by, ["mid"]);
    assert_eq!(r.plan[0].reason, "dependency of mid");
    assert_eq!(r.plan[2].required_by, ["request"]);
    assert_eq!(r.plan[0].source, "base@2.1.0");
    assert_eq!(
        r.plan[0].registry_url.as_deref(),
        Some(registry.index_url().as_str())
    );

    // Registered in dependency order: in the result, in the database ids, in progress.
    let installed: Vec<&str> = r.installed.iter().map(|p| p.pack_ref.as_str()).collect();
    assert_eq!(installed, ["base", "mid", "top"]);
    let rows = registered(&server).await;
    assert_eq!(rows["base"].1, "2.1.0");
    assert_eq!(rows["mid"].1, "1.1.0");
    assert!(rows["base"].0 < rows["mid"].0 && rows["mid"].0 < rows["top"].0);
    let writes: Vec<&str> = progress
        .iter()
        .filter(|p| p.message == "writing to the database")
        .map(|p| p.pack.as_str())
        .collect();
    assert_eq!(writes, ["base", "mid", "top"]);
    assert_eq!(r.installed[1].components_registered.unwrap().actions, 1);
    assert!(version_of_files(&server, "mid").contains("mid 1.1.0"));

    // What the registry promised is shown with what was installed (GetPack), and the
    // list has the three packs from the registry.
    let mut client = server.client().await;
    let base = client.get_pack("base").await.unwrap();
    let provenance = base.provenance.unwrap();
    assert_eq!(provenance.index_entry, "base@2.1.0");
    assert_eq!(provenance.registry_url, registry.index_url());
    assert!(provenance.checksum_verified);
    assert_eq!(
        provenance.expected_checksum,
        sha256_checksum(&registry.packs["base"]["2.1.0"].1)
    );
    assert_eq!(provenance.actual_checksum, r.installed[0].checksum);
    assert_eq!(base.required_by[0].r#ref, "mid");
    let listed = client
        .list_packs(pb::ListPacksRequest::default())
        .await
        .unwrap();
    let refs: Vec<&str> = listed.packs.iter().map(|p| p.r#ref.as_str()).collect();
    assert_eq!(refs, ["base", "mid", "top"]);
    assert!(hidden_leftovers(&server.packs_dir()).is_empty());

    // The lock pins every version with its checksum, in dependency order.
    let lock = r.lock.clone().expect("a lock");
    assert_eq!(lock.lock_version, 1);
    let locked = triples(&lock.packs, |p| [&p.pack_ref, &p.version, &p.source_type]);
    assert_eq!(
        locked,
        [
            ["base", "2.1.0", "registry"],
            ["mid", "1.1.0", "registry"],
            ["top", "1.0.0", "registry"]
        ]
    );
    assert_eq!(lock.packs[1].dependencies, ["base"]);
    assert_eq!(lock.packs[0].checksum, r.installed[0].checksum);
    assert!(lock.packs[0].checksum.starts_with("sha256:"));

    // Installing again changes nothing: every pack is kept.
    let (_, again) = install(&server, request(&server, &["top"])).await;
    assert!(again.success, "{:#?}", again.errors);
    assert!(again.plan.iter().all(|p| p.action == "keep"));
    assert!(again.installed.is_empty());
    assert_eq!(registered(&server).await, rows);
    server.stop().await;
}
on_both_backends!(two_level_chain_installs_in_dependency_order);

register_test!(dry_run_plans_explains_conflicts_and_changes_nothing);
async fn dry_run_plans_explains_conflicts_and_changes_nothing() {
    let _net = net_shared();
    let mut registry = Registry::start().await;
    chain_registry(&mut registry);
    let server = TestServer::start_with(Backend::Sqlite, registry.configure()).await;
    // A local pack that needs the chain: downloaded to learn its needs, then dropped.
    let app = server.root.path().canonicalize().unwrap().join("src/app");
    write_tree(&app, &pack("app", "0.1.0", &["top"], ""));

    let mut dry = request(&server, &[&path_str(&app), "base@2.0.0"]);
    dry.dry_run = Some(true);
    let (_, r) = install(&server, dry.clone()).await;
    assert!(r.success && r.dry_run, "{:#?}", r.errors);
    let plan = triples(&r.plan, |p| [&p.pack_ref, &p.version, &p.source_type]);
    assert_eq!(
        plan,
        [
            ["base", "2.0.0", "registry"],
            ["mid", "1.1.0", "registry"],
            ["top", "1.0.0", "registry"],
            ["app", "0.1.0", "local_directory"],
        ]
    );
    assert_eq!(r.plan[0].required_by, ["request", "mid"]);
    assert_eq!(r.plan[0].reason, "requested");
    assert_eq!(r.plan[2].reason, "dependency of app");
    assert_eq!(r.plan[3].source, path_str(&app));
    assert!(r.lock.is_none() && r.installed.is_empty());
    assert!(registered(&server).await.is_empty());
    let packs_dir: Vec<_> = std::fs::read_dir(server.packs_dir()).unwrap().collect();
    assert!(packs_dir.is_empty(), "{packs_dir:?}");

    // The same plan over REST, as the original API's JSON.
    let response = reqwest::Client::new()
        .post(format!("{}/api/v1/packs/install", server.url()))
        .bearer_auth(server.token())
        .header("Content-Type", "application/json")
        .body(
            json!({
                "packs": [path_str(&app), "base@2.0.0"],
                "packs_base_dir": path_str(&server.packs_dir()),
                "dry_run": true,
            })
            .to_string(),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body: Value = serde_json::from_str(&response.text().await.unwrap()).unwrap();
    assert_eq!(body["data"]["plan"][1]["pack_ref"], "mid");
    assert_eq!(body["data"]["plan"][1]["reason"], "dependency of top");
    assert_eq!(body["data"]["lock"], Value::Null);

    // skip_deps plans only what was asked for.
    let mut alone = request(&server, &["top"]);
    alone.dry_run = Some(true);
    alone.skip_deps = Some(true);
    let (_, r) = install(&server, alone).await;
    assert!(r.success, "{:#?}", r.errors);
    let plan = triples(&r.plan, |p| [&p.pack_ref, &p.version, &p.action]);
    assert_eq!(plan, [["top", "1.0.0", "install"]]);

    // A conflict is explained in terms of the packs and requirements involved.
    let mut conflict = request(&server, &["top", "base@<2"]);
    conflict.dry_run = Some(true);
    let (_, r) = install(&server, conflict).await;
    assert!(!r.success);
    let error = &r.errors[0];
    assert_eq!(error.stage, "resolve");
    for needle in ["top", "mid", "base", ">=2"] {
        assert!(
            error.error.contains(needle),
            "{needle} not in {}",
            error.error
        );
    }
    // An unknown dependency names who needs it.
    registry.publish("needy", "1.0.0", &["ghost"], "");
    let mut unknown = request(&server, &["needy"]);
    unknown.dry_run = Some(true);
    let (_, r) = install(&server, unknown).await;
    assert_eq!(r.errors[0].pack, "ghost");
    assert!(r.errors[0].error.contains("needy"), "{}", r.errors[0].error);

    // Malformed requests are INVALID_ARGUMENT, over gRPC and as HTTP 400.
    let mut client = server.client().await;
    let empty = client.install(request(&server, &[])).await.unwrap_err();
    assert_eq!(empty.status().unwrap().code(), Code::InvalidArgument);
    let mut both = request(&server, &["top"]);
    both.lock = Some(pb::InstallLock {
        lock_version: 1,
        packs: vec![],
    });
    let both = client.install(both).await.unwrap_err();
    assert_eq!(both.status().unwrap().code(), Code::InvalidArgument);
    let mut outside = request(&server, &["top"]);
    outside.packs_base_dir = Some("/etc/attune".into());
    let outside = client.install(outside).await.unwrap_err();
    assert!(
        outside
            .status()
            .unwrap()
            .message()
            .contains("packs_base_dir")
    );
    let bad_lock = reqwest::Client::new()
        .post(format!("{}/api/v1/packs/install", server.url()))
        .bearer_auth(server.token())
        .header("Content-Type", "application/json")
        .body(
            json!({"lock": {"lock_version": 1, "packs": [{"pack_ref": "x y", "version": "1"}]}})
                .to_string(),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(bad_lock.status(), 400);
    server.stop().await;
}

/// A local pack that fails validation with `strict`: its rule names a trigger that
/// exists nowhere (by default the rule would only be left out).
fn invalid_pack(dir: &Path, pack_ref: &str, deps: &[&str]) {
    let mut files = pack(pack_ref, "1.0.0", deps, "");
    files.push((
        "rules/bad.yaml".into(),
        format!(
            "ref: {pack_ref}.bad\ntrigger_ref: {pack_ref}.nope\naction_ref: {pack_ref}.hello\n"
        )
        .into_bytes(),
    ));
    write_tree(dir, &files);
}

/// A local pack whose tests fail (which `force` overrides).
fn failing_tests_pack(dir: &Path, pack_ref: &str, deps: &[&str]) {
    let mut files = pack(
        pack_ref,
        "1.0.0",
        deps,
        "testing:\n  enabled: true\n  runners:\n    shell:\n      type: script\n      entry_point: tests/run.sh\n",
    );
    files.push((
        "tests/run.sh".into(),
        b"echo 'Total Tests: 1'\necho 'Passed: 0'\necho 'Failed: 1'\nexit 1\n".to_vec(),
    ));
    write_tree(dir, &files);
}

async fn a_failing_member_installs_nothing(backend: Backend) {
    let _net = net_shared();
    let mut registry = Registry::start().await;
    chain_registry(&mut registry);
    let server = TestServer::start_with(backend, registry.configure()).await;
    let (_, first) = install(&server, request(&server, &["base@2.0.0"])).await;
    assert!(first.success, "{:#?}", first.errors);
    let before = registered(&server).await;
    let unchanged = |server: &TestServer| {
        assert!(version_of_files(server, "base").contains("base 2.0.0"));
        for gone in ["mid", "top", "broken", "flaky", "tripwire"] {
            assert!(
                !server.packs_dir().join(gone).exists(),
                "{gone} was left behind"
            );
        }
        assert!(hidden_leftovers(&server.packs_dir()).is_empty());
    };

    // Changing an installed pack needs force, and says so before doing anything.
    let (_, r) = install(&server, request(&server, &["base@2.1.0", "top"])).await;
    assert!(!r.success);
    assert_eq!(r.errors[0].pack, "base");
    assert!(
        r.errors[0].error.contains("2.0.0") && r.errors[0].error.contains("force"),
        "{}",
        r.errors[0].error
    );
    let base_plan = r.plan.iter().find(|p| p.pack_ref == "base").unwrap();
    assert_eq!(base_plan.action, "upgrade");
    assert_eq!(base_plan.installed_version.as_deref(), Some("2.0.0"));
    assert_eq!(registered(&server).await, before);

    // Forced, with one invalid member: base keeps 2.0.0, mid and top are not
    // registered, and none of their files are left behind.
    let root = server.root.path().canonicalize().unwrap();
    let broken = root.join("src/broken");
    invalid_pack(&broken, "broken", &["mid"]);
    let mut forced = request(&server, &["base@2.1.0", "top", &path_str(&broken)]);
    forced.force = Some(true);
    forced.strict = Some(true);
    let (_, r) = install(&server, forced).await;
    assert!(!r.success);
    assert_eq!(r.errors.len(), 1, "{:#?}", r.errors);
    assert_eq!(
        (r.errors[0].pack.as_str(), r.errors[0].stage.as_str()),
        ("broken", "validation")
    );
    assert!(
        r.errors[0].error.contains("broken.nope"),
        "{}",
        r.errors[0].error
    );
    assert!(r.installed.is_empty() && r.lock.is_none());
    assert_eq!(registered(&server).await, before);
    unchanged(&server);

    // Failing tests without force: the members already copied and tested are
    // dropped, nothing changes.
    let flaky = root.join("src/flaky");
    failing_tests_pack(&flaky, "flaky", &["mid"]);
    let (_, r) = install(&server, request(&server, &["top", &path_str(&flaky)])).await;
    assert!(!r.success);
    let failed = r.errors.iter().find(|e| e.pack == "flaky").unwrap();
    assert_eq!(failed.stage, "testing", "{:#?}", r.errors);
    assert_eq!(registered(&server).await, before);
    unchanged(&server);

    // The database refuses the last pack of the transaction, after base, mid and top
    // were written and their directories swapped in: everything is rolled back and
    // put back.
    tripwire(&server).await;
    let wired = root.join("src/tripwire");
    write_tree(&wired, &pack("tripwire", "1.0.0", &["top"], ""));
    let mut forced = request(&server, &["base@2.1.0", &path_str(&wired)]);
    forced.force = Some(true);
    let (progress, r) = install(&server, forced).await;
    assert!(!r.success);
    assert_eq!(r.errors.len(), 1, "{:#?}", r.errors);
    assert_eq!(
        (r.errors[0].pack.as_str(), r.errors[0].stage.as_str()),
        ("tripwire", "database")
    );
    assert!(
        r.errors[0].error.contains("tripwire refused"),
        "{}",
        r.errors[0].error
    );
    let writes: Vec<&str> = progress
        .iter()
        .filter(|p| p.message == "writing to the database")
        .map(|p| p.pack.as_str())
        .collect();
    assert_eq!(writes, ["base", "mid", "top", "tripwire"]);
    assert_eq!(registered(&server).await, before);
    unchanged(&server);
    assert!(!server.packs_dir().join("tripwire").exists());

    // Without strict the broken member installs: its stale rule is left out, with a
    // warning, and the rest of the pack is registered.
    let (progress, r) = install(&server, request(&server, &[&path_str(&broken)])).await;
    assert!(r.success, "{:#?}", r.errors);
    let installed = r.installed.iter().find(|p| p.pack_ref == "broken").unwrap();
    let counts = installed.components_registered.unwrap();
    assert_eq!((counts.actions, counts.rules), (1, 0));
    assert!(
        progress.iter().any(|p| p.pack == "broken"
            && p.message.contains("rules/bad.yaml")
            && p.message.contains("rule broken.bad is not registered")),
        "{progress:#?}"
    );
    server.stop().await;
}
on_both_backends!(a_failing_member_installs_nothing);

/// Makes the database refuse to insert a pack named `tripwire`.
async fn tripwire(server: &TestServer) {
    use attune_packs_server::store::Db;
    match &server.state.db {
        Db::Sqlite(pool) => {
            sqlx::query(
                "CREATE TRIGGER tripwire BEFORE INSERT ON packs WHEN NEW.ref = 'tripwire' \
                 BEGIN SELECT RAISE(ABORT, 'tripwire refused'); END",
            )
            .execute(pool)
            .await
            .unwrap();
        }
        Db::Postgres(pool) => {
            sqlx::query(
                "CREATE FUNCTION refuse_tripwire() RETURNS trigger AS $$ \
                 BEGIN RAISE EXCEPTION 'tripwire refused'; END $$ LANGUAGE plpgsql",
            )
            .execute(pool)
            .await
            .unwrap();
            sqlx::query(
                "CREATE TRIGGER tripwire BEFORE INSERT ON packs FOR EACH ROW \
                 WHEN (NEW.ref = 'tripwire') EXECUTE FUNCTION refuse_tripwire()",
            )
            .execute(pool)
            .await
            .unwrap();
        }
    }
}

register_test!(failed_install_puts_environments_back);
async fn failed_install_puts_environments_back() {
    let _net = net_shared();
    let mut registry = Registry::start().await;
    // A Python pack whose 1.1.0 needs a new virtualenv (its requirements changed).
    registry.publish("snake", "1.0.0", &[], "python: \"3\"\n");
    let mut files = pack("snake", "1.1.0", &[], "python: \"3\"\n");
    files.push((
        "requirements.txt".into(),
        b"# nothing from PyPI yet\n".to_vec(),
    ));
    registry.publish_files("snake", "1.1.0", &[], files);
    let server = TestServer::start_with(Backend::Sqlite, registry.configure()).await;
    let (_, first) = install(&server, request(&server, &["snake@1.0.0"])).await;
    assert!(first.success, "{:#?}", first.errors);
    let env = first.installed[0]
        .environments
        .as_ref()
        .and_then(|e| e.python.as_ref())
        .expect("a virtualenv");
    let link = Path::new(&env.virtualenv_path).to_path_buf();
    let target = std::fs::read_link(&link).unwrap();
    assert!(link.join("bin/python").exists());

    // The upgrade builds a new environment, then registration fails on another
    // member: the old environment is current again and the new one is gone.
    let broken = server
        .root
        .path()
        .canonicalize()
        .unwrap()
        .join("src/broken");
    invalid_pack(&broken, "broken", &[]);
    let mut upgrade = request(&server, &["snake@1.1.0", &path_str(&broken)]);
    upgrade.force = Some(true);
    upgrade.strict = Some(true);
    let (progress, r) = install(&server, upgrade).await;
    assert!(!r.success);
    assert_eq!(r.errors[0].stage, "validation", "{:#?}", r.errors);
    assert!(
        progress
            .iter()
            .any(|p| p.pack == "snake" && p.message.contains("virtualenv ready")),
        "no new virtualenv was built"
    );
    assert_eq!(std::fs::read_link(&link).unwrap(), target);
    assert!(link.join("bin/python").exists());
    let builds: Vec<_> = std::fs::read_dir(link.parent().unwrap())
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("python-"))
        .collect();
    assert_eq!(builds.len(), 1, "{builds:?}");
    assert_eq!(registered(&server).await["snake"].1, "1.0.0");
    assert!(version_of_files(&server, "snake").contains("snake 1.0.0"));

    // Without the bad member the upgrade goes through; the old build stays only as
    // the kept previous version's (history.keep_versions).
    let mut upgrade = request(&server, &["snake@1.1.0"]);
    upgrade.force = Some(true);
    let (_, r) = install(&server, upgrade).await;
    assert!(r.success, "{:#?}", r.errors);
    assert_eq!(r.installed[0].action, "upgrade");
    assert_ne!(std::fs::read_link(&link).unwrap(), target);
    let kept = std::fs::read_to_string(link.parent().unwrap().join(".kept")).unwrap();
    assert!(kept.contains(target.to_str().unwrap()), "{kept}");
    assert!(link.parent().unwrap().join(&target).exists());
    server.stop().await;
}

register_test!(an_install_is_reproduced_from_its_lock);
async fn an_install_is_reproduced_from_its_lock() {
    let _net = net_shared();
    let mut registry = Registry::start().await;
    chain_registry(&mut registry);
    // The root comes from git, over smart HTTP: the lock pins its commit.
    let repos = tempfile::tempdir().unwrap();
    let commit = create_repo(
        repos.path(),
        "app.git",
        &pack("app", "0.1.0", &["top"], ""),
        None,
    );
    let smart = HttpGitServer::start(repos.path(), HttpOptions::default());
    let app_url = smart.url("app.git");

    let first = TestServer::start_with(Backend::Sqlite, registry.configure()).await;
    let (_, r) = install(&first, request(&first, &[&app_url])).await;
    assert!(r.success, "{:#?}", r.errors);
    let lock = r.lock.expect("a lock");
    let app = lock.packs.iter().find(|p| p.pack_ref == "app").unwrap();
    assert_eq!(app.source_type, "git");
    assert_eq!(app.git_commit.as_deref(), Some(commit.as_str()));
    assert_eq!(app.source, format!("{app_url}@{commit}"));
    assert_eq!(app.dependencies, ["top"]);
    first.stop().await;

    // Meanwhile the registry moved on: a fresh resolve would pick base 2.2.0.
    registry.publish("base", "2.2.0", &[], "");
    let second = TestServer::start_with(Backend::Sqlite, registry.configure()).await;
    let mut again = request(&second, &[]);
    again.lock = Some(lock.clone());
    let (_, r) = install(&second, again.clone()).await;
    assert!(r.success, "{:#?}", r.errors);
    let versions: Vec<(String, String)> = r
        .installed
        .iter()
        .map(|p| (p.pack_ref.clone(), p.version.clone()))
        .collect();
    let locked: Vec<(String, String)> = lock
        .packs
        .iter()
        .map(|p| (p.pack_ref.clone(), p.version.clone()))
        .collect();
    assert_eq!(versions, locked);
    assert_eq!(registered(&second).await["base"].1, "2.1.0");
    assert_eq!(r.lock.as_ref().unwrap().packs, lock.packs);

    // A locked pack whose bytes changed under the same version is refused, and
    // nothing of the set is installed.
    let mut tampered_registry = registry;
    tampered_registry.publish("mid", "1.1.0", &["base@>=2.0"], "# changed\n");
    let third = TestServer::start_with(Backend::Sqlite, tampered_registry.configure()).await;
    let mut from_lock = request(&third, &[]);
    from_lock.lock = Some(lock.clone());
    let (_, r) = install(&third, from_lock).await;
    assert!(!r.success);
    let e = r.errors.iter().find(|e| e.pack == "mid").unwrap();
    assert_eq!(e.stage, "lock");
    assert!(e.error.contains(&lock.packs[1].checksum), "{}", e.error);
    assert!(registered(&third).await.is_empty());
    third.stop().await;
    second.stop().await;
}

register_test!(a_dependency_with_no_registry_configured_names_the_fix);
/// A registry ref (here a dependency of a local pack) with no registry configured:
/// the error says none is, and how to add one, instead of "not found".
async fn a_dependency_with_no_registry_configured_names_the_fix() {
    let server = TestServer::start(Backend::Sqlite).await;
    let root = server.root.path().canonicalize().unwrap();
    let pack = write_pack(
        &root.join("src"),
        "needy",
        &simple_pack("needy", "1.0.0", &["slack"]),
    );
    let mut r = request(&server, &[&path_str(&pack)]);
    r.dry_run = Some(true);
    let (_, r) = install(&server, r).await;
    assert!(!r.success);
    assert_eq!(r.errors[0].pack, "slack", "{:#?}", r.errors);
    assert!(
        r.errors[0]
            .error
            .contains("no registries are configured: set registry.indices or pass registry_url"),
        "{}",
        r.errors[0].error
    );
}
