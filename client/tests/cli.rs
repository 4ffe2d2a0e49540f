//! The `attune-packs` CLI against a real `attune-packs-server` process.

#[macro_use]
extern crate attune_packs_test_harness;

use std::{
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    time::{Duration, Instant},
};

// Under cli/ so that cargo does not take it for a test binary of its own.
#[path = "cli/readme.rs"]
mod readme;

const CLI: &str = env!("CARGO_BIN_EXE_attune-packs");

/// The server binary, built next to ours by `cargo test --workspace` (the server
/// crate's integration tests need it).
fn server_binary() -> PathBuf {
    let bin = Path::new(CLI).with_file_name("attune-packs-server");
    assert!(
        bin.exists(),
        "{} is not built: run the tests with `cargo test --workspace`",
        bin.display()
    );
    bin
}

/// A loopback port nobody listens on right now.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Server {
    child: std::process::Child,
    url: String,
    token: String,
    root: tempfile::TempDir,
}

impl Server {
    fn start() -> Self {
        Self::start_with_env(&[])
    }

    /// A server with extra `ATTUNE_PACKS_*` settings in its environment.
    fn start_with_env(env: &[(&str, String)]) -> Self {
        let root = tempfile::tempdir().unwrap();
        let data = root.path().join("data");
        let port = free_port();
        let addr = format!("127.0.0.1:{port}");
        let child = Command::new(server_binary())
            .args(["serve", "--listen", &addr, "--data-dir"])
            .arg(&data)
            .env(
                "ATTUNE_PACKS_ALLOWED_ROOTS",
                format!("[{}]", root.path().canonicalize().unwrap().display()),
            )
            .env_remove("ATTUNE_PACKS_JWT_SECRET")
            .env_remove("ATTUNE_PACKS_DATABASE_URL")
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(&addr).is_err() {
            assert!(Instant::now() < deadline, "server did not start listening");
            std::thread::sleep(Duration::from_millis(50));
        }
        // A token from the server's own command, signed with the secret the server
        // generated into its data dir on first start.
        let out = Command::new(server_binary())
            .args(["token", "issue", "--subject", "cli-test", "--data-dir"])
            .arg(&data)
            .env_remove("ATTUNE_PACKS_JWT_SECRET")
            .output()
            .unwrap();
        assert!(out.status.success());
        let token = String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .last()
            .unwrap()
            .to_string();
        Self {
            child,
            url: format!("http://{addr}"),
            token,
            root,
        }
    }

    fn pack(&self, dir: &str, yaml: &str) -> String {
        let pack = self.root.path().canonicalize().unwrap().join(dir);
        std::fs::create_dir_all(&pack).unwrap();
        std::fs::write(pack.join("pack.yaml"), yaml).unwrap();
        pack.to_str().unwrap().to_string()
    }

    fn cli(&self, token: &str, args: &[&str]) -> Output {
        Command::new(CLI)
            .args(["--server", &self.url])
            .args(args)
            .env("ATTUNE_PACKS_TOKEN", token)
            .output()
            .unwrap()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

register_test!(sync deps_prints_json_tables_and_progress_and_exits_by_outcome);
fn deps_prints_json_tables_and_progress_and_exits_by_outcome() {
    let server = Server::start();
    let pack = server.pack(
        "pk",
        "ref: pk\nversion: 1.0.0\ndependencies: [\"core@>=1\"]\n",
    );
    let base = server.pack("base", "ref: base\nversion: 2.0.0\n");

    let out = server.cli(&server.token, &["--json", "deps", &pack]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    // Exit 1: a dependency is missing.
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{stderr}");
    let json: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(json["missing_dependencies"][0]["pack_ref"], "core");
    assert_eq!(json["missing_dependencies"][0]["version_spec"], ">=1");
    assert_eq!(json["analyzed_packs"][0]["pack_path"], pack.as_str());
    assert!(
        stderr.contains("[analyze] pk: analysed pk 1.0.0 (1 dependency)"),
        "{stderr}"
    );

    let out = server.cli(&server.token, &["-q", "deps", &pack]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout
            .lines()
            .any(|l| l.split_whitespace().collect::<Vec<_>>() == ["pk", "core", ">=1", "MISSING"]),
        "{stdout}"
    );
    assert!(out.stderr.is_empty(), "quiet means no progress");

    // Nothing missing: exit 0; one pack, no dependencies.
    let out = server.cli(&server.token, &["-q", "deps", &base]);
    assert_eq!(out.status.code(), Some(0));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(
            "1 pack analysed, 0 dependencies, 0 missing, 0 errors: ready to build and register"
        ),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );

    // A wrong token is refused with the server's reason; exit 2.
    let out = server.cli("garbage", &["deps", &pack]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("Unauthenticated") && stderr.contains("malformed"),
        "{stderr}"
    );
}

register_test!(sync download_register_and_build_envs_from_the_command_line);
fn download_register_and_build_envs_from_the_command_line() {
    let server = Server::start();
    let src = server.pack("src/gamma", "ref: gamma\nversion: 1.2.3\n");
    let root = server.root.path().canonicalize().unwrap();
    let dest = root.join("dest").display().to_string();
    let base = root.join("base").display().to_string();

    let out = server.cli(&server.token, &["-q", "download", "-d", &dest, &src]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    assert!(
        stdout.contains("1 of 1 pack downloaded, 0 failed"),
        "{stdout}"
    );
    let placed = format!("{dest}/gamma");
    assert!(
        stdout.lines().any(|l| l.starts_with("gamma")
            && l.contains("local_directory")
            && l.contains(&placed)),
        "{stdout}"
    );

    // A pack without runtimes needs no environment: ready, nothing built.
    let out = server.cli(
        &server.token,
        &["-q", "build-envs", "--packs-base-dir", &base, &placed],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    assert!(
        stdout.contains("none needed") && stdout.contains("1 of 1 pack ready"),
        "{stdout}"
    );

    let out = server.cli(
        &server.token,
        &[
            "--json",
            "-q",
            "register",
            "--packs-base-dir",
            &base,
            &placed,
        ],
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["registered_packs"][0]["pack_ref"], "gamma");
    assert_eq!(
        json["registered_packs"][0]["storage_path"],
        format!("{base}/gamma")
    );
    assert_eq!(json["summary"]["success_count"], 1);

    // Registering again without --force fails, and says to use force; exit 1.
    let out = server.cli(
        &server.token,
        &["-q", "register", "--packs-base-dir", &base, &placed],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains("failed (validation)") && stdout.contains("force"),
        "{stdout}"
    );
}

register_test!(sync register_strict_fails_where_the_default_leaves_a_component_out);
/// A stale reference fails the pack with `--strict`; by default only that component is
/// left out, with a warning, and the alias counter shows.
fn register_strict_fails_where_the_default_leaves_a_component_out() {
    let server = Server::start();
    let src = server.pack(
        "src/stale",
        "ref: stale\nname: stale\nversion: 1.0.0\ndescription: d\nauthor: a\n",
    );
    write_files(
        Path::new(&src),
        &[
            (
                "actions/hello.yaml",
                "name: hello\nrunner_type: local-shell-cmd\n",
            ),
            (
                "aliases/hi.yaml",
                "name: hi\naction_ref: stale.hello\nformats: [\"hi\"]\n",
            ),
            (
                "rules/old.yaml",
                "name: old\ntrigger: {type: stale.gone}\naction: {ref: stale.hello}\n",
            ),
        ],
    );
    let base = server
        .root
        .path()
        .canonicalize()
        .unwrap()
        .join("base")
        .display()
        .to_string();
    let register = |extra: &[&str]| {
        let mut args = vec!["-q", "register", "--packs-base-dir", base.as_str()];
        args.extend_from_slice(extra);
        args.push(src.as_str());
        server.cli(&server.token, &args)
    };

    let out = register(&["--strict"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains("failed (validation)")
            && stdout.contains("rules/old.yaml: trigger.type: trigger 'stale.gone' is not defined"),
        "{stdout}"
    );

    let out = register(&[]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    assert!(stdout.contains("1a 0s 0t 0r 0w 0p 1al"), "{stdout}");
    assert!(
        stdout.contains("warning: stale: rules/old.yaml: trigger.type:")
            && stdout.contains("rule stale.old is not registered"),
        "{stdout}"
    );
}

register_test!(sync yaml_output_and_a_progress_bar_on_a_terminal);
fn yaml_output_and_a_progress_bar_on_a_terminal() {
    let server = Server::start();
    let pack = server.pack("tty/delta", "ref: delta\nversion: 2.0.0\n");

    let out = server.cli(&server.token, &["--yaml", "-q", "deps", &pack]);
    assert_eq!(out.status.code(), Some(0));
    let yaml = String::from_utf8_lossy(&out.stdout);
    assert!(
        yaml.contains("analyzed_packs:") && yaml.contains("pack_ref: delta"),
        "{yaml}"
    );

    // In a pseudo-terminal (util-linux `script`), progress is a bar drawn with escape
    // sequences instead of plain lines; the table still follows.
    if Command::new("script").arg("--version").output().is_err() {
        assert!(
            std::env::var("CI").is_err(),
            "`script` (util-linux) must exist in CI"
        );
        eprintln!("notice: `script` not found; skipping the terminal part");
        return;
    }
    let command = format!("{CLI} --server {} deps {pack}", server.url);
    let out = Command::new("script")
        .args(["-qec", &command, "/dev/null"])
        .env("ATTUNE_PACKS_TOKEN", &server.token)
        .env("TERM", "xterm")
        .output()
        .unwrap();
    let screen = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{screen}");
    assert!(
        screen.contains("\u{1b}["),
        "no terminal drawing in {screen:?}"
    );
    assert!(
        !screen.contains("- [analyze]"),
        "plain progress lines on a terminal: {screen}"
    );
    assert!(screen.contains("ready to build and register"), "{screen}");
}

/// Runs the CLI for a local tool (no server, no token).
fn local(args: &[&str]) -> Output {
    Command::new(CLI)
        .args(args)
        .env_remove("ATTUNE_PACKS_TOKEN")
        .output()
        .unwrap()
}

fn write_files(dir: &Path, files: &[(&str, &str)]) {
    for (name, content) in files {
        let path = dir.join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, content).unwrap();
    }
}

register_test!(sync checksum_and_index_tools_work_without_a_server);
fn checksum_and_index_tools_work_without_a_server() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();

    // The published test vector of the attune-pack-file-v1 checksum.
    write_files(&root.join("vector"), &[("nested/file.txt", "fixture\n")]);
    let out = local(&["checksum", root.join("vector").to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "sha256:e9837162383488cb9b187ea585ce8963634d7d04f75abeb0c43d5456de0d6b13"
    );

    // An archive: the digest of its bytes, and the checksum of the pack inside.
    write_files(
        &root.join("src/omega"),
        &[
            (
                "pack.yaml",
                "ref: omega\nversion: 1.4.0\ndescription: Omega pack\ntags: [x]\ndependencies: [\"core@>=1\"]\n",
            ),
            (
                "actions/ping.yaml",
                "ref: omega.ping\ndescription: Ping\nrunner_type: shell\nentry_point: ping.sh\n",
            ),
            ("actions/ping.sh", "echo pong\n"),
        ],
    );
    let archive = root.join("omega-1.4.0.tar.gz");
    let status = Command::new("tar")
        .arg("czf")
        .arg(&archive)
        .arg("-C")
        .arg(root.join("src"))
        .arg("omega")
        .status()
        .unwrap();
    assert!(status.success());
    let sha = Command::new("sha256sum").arg(&archive).output().unwrap();
    let bytes_sum = format!(
        "sha256:{}",
        String::from_utf8_lossy(&sha.stdout)
            .split_whitespace()
            .next()
            .unwrap()
    );
    let dir_sum =
        String::from_utf8(local(&["checksum", root.join("src/omega").to_str().unwrap()]).stdout)
            .unwrap();
    let out = local(&["--json", "checksum", archive.to_str().unwrap()]);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["kind"], "archive");
    assert_eq!(json["checksum"], bytes_sum.as_str());
    assert_eq!(json["pack_checksum"], dir_sum.trim());

    // index entry from the archive.
    let url = "https://packs.example/omega-1.4.0.tar.gz";
    let out = local(&[
        "index",
        "entry",
        archive.to_str().unwrap(),
        "--archive-url",
        url,
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let entry: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (entry["ref"].as_str(), entry["version"].as_str()),
        (Some("omega"), Some("1.4.0"))
    );
    assert_eq!(entry["install_sources"][0]["checksum"], bytes_sum.as_str());
    assert_eq!(entry["contents"]["actions"][0]["name"], "ping");
    assert_eq!(entry["dependencies"]["packs"][0], "core@>=1");
    let out = local(&[
        "index",
        "entry",
        root.join("src/omega").to_str().unwrap(),
        "--archive-url",
        url,
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("archive file as PATH"));

    // index update: add, refuse a duplicate, replace with --update.
    let index = root.join("index.json");
    std::fs::write(&index, r#"{"registry_name": "t", "registry_url": "https://t", "version": "1.0", "last_updated": "x", "packs": []}"#).unwrap();
    let update = |extra: &[&str]| {
        let mut args = vec![
            "index",
            "update",
            "--index",
            index.to_str().unwrap(),
            archive.to_str().unwrap(),
            "--archive-url",
            url,
        ];
        args.extend_from_slice(extra);
        local(&args)
    };
    assert!(update(&[]).status.success());
    let again = update(&[]);
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("--update"),
        "{again:?}"
    );
    let replaced = update(&["--update"]);
    assert!(String::from_utf8_lossy(&replaced.stdout).contains("replaced"));
    let written: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&index).unwrap()).unwrap();
    assert_eq!(written["packs"].as_array().unwrap().len(), 1);

    // index merge keeps the highest version of each ref.
    let other = root.join("other.json");
    let mut older = written.clone();
    older["packs"][0]["version"] = "1.0.0".into();
    let mut extra_entry = written["packs"][0].clone();
    extra_entry["ref"] = "zeta".into();
    older["packs"].as_array_mut().unwrap().push(extra_entry);
    std::fs::write(&other, older.to_string()).unwrap();
    let merged = root.join("merged.json");
    let out = local(&[
        "index",
        "merge",
        "--output",
        merged.to_str().unwrap(),
        other.to_str().unwrap(),
        index.to_str().unwrap(),
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("packs loaded: 3")
            && stdout.contains("unique packs: 2")
            && stdout.contains("duplicates resolved: 1"),
        "{stdout}"
    );
    let merged_index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&merged).unwrap()).unwrap();
    assert_eq!(merged_index["packs"][0]["version"], "1.4.0");
    let refused = local(&[
        "index",
        "merge",
        "--output",
        merged.to_str().unwrap(),
        index.to_str().unwrap(),
    ]);
    assert!(String::from_utf8_lossy(&refused.stderr).contains("--force"));
}

register_test!(sync install_plans_installs_and_reproduces_from_a_lock);
fn install_plans_installs_and_reproduces_from_a_lock() {
    let server = Server::start();
    let lib = server.pack("src/lib", "ref: libpack\nversion: 1.0.0\n");
    let app = server.pack(
        "src/app",
        "ref: apppack\nversion: 0.3.0\ndependencies:\n  - libpack@^1\n",
    );
    let root = server.root.path().canonicalize().unwrap();
    let base = root.join("base").display().to_string();
    let lock = root.join("packs.lock.json");
    let lock_arg = lock.display().to_string();

    // A dry run prints the plan in dependency order and changes nothing.
    let out = server.cli(
        &server.token,
        &[
            "-q",
            "install",
            "--dry-run",
            "--packs-base-dir",
            &base,
            &app,
            &lib,
        ],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    let lib_line = stdout
        .lines()
        .position(|l| l.starts_with("libpack"))
        .unwrap();
    let app_line = stdout
        .lines()
        .position(|l| l.starts_with("apppack"))
        .unwrap();
    assert!(lib_line < app_line, "{stdout}");
    assert!(stdout.contains("nothing was changed"), "{stdout}");
    assert!(!Path::new(&base).join("apppack").exists());

    let out = server.cli(
        &server.token,
        &[
            "--json",
            "-q",
            "install",
            "--packs-base-dir",
            &base,
            "--write-lock",
            &lock_arg,
            &app,
            &lib,
        ],
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["success"], true);
    assert_eq!(json["installed"][0]["pack_ref"], "libpack");
    assert_eq!(json["installed"][1]["pack_ref"], "apppack");
    assert!(Path::new(&base).join("apppack/pack.yaml").exists());
    let written: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&lock).unwrap()).unwrap();
    assert_eq!(written, json["lock"]);

    // From the lock: the same set, already installed, so every pack is kept.
    let out = server.cli(
        &server.token,
        &[
            "-q",
            "install",
            "--packs-base-dir",
            &base,
            "--lock",
            &lock_arg,
        ],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    assert!(stdout.contains("kept 2"), "{stdout}");

    // A dependency no registry has: exit 1, and the reason.
    let lost = server.pack(
        "src/lost",
        "ref: lost\nversion: 1.0.0\ndependencies: [ghost]\n",
    );
    let out = server.cli(
        &server.token,
        &["-q", "install", "--packs-base-dir", &base, &lost],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains("failed (resolve)") && stdout.contains("ghost"),
        "{stdout}"
    );
}

register_test!(sync search_and_registries_show_the_configured_indices);
fn search_and_registries_show_the_configured_indices() {
    let indices = tempfile::tempdir().unwrap();
    let index = indices.path().join("index.json");
    std::fs::write(
        &index,
        serde_json::json!({
            "registry_name": "local",
            "version": "1.0",
            "packs": [
                {"ref": "slack", "label": "Slack", "description": "Post messages to Slack",
                 "version": "2.1.0", "keywords": ["chat"],
                 "install_sources": [{"type": "archive", "url": "https://example.invalid/slack.tar.gz",
                                      "checksum": format!("sha256:{}", "0".repeat(64))}]},
                {"ref": "aws", "label": "AWS", "description": "Amazon Web Services",
                 "version": "1.0.0",
                 "install_sources": [{"type": "archive", "url": "https://example.invalid/aws.tar.gz",
                                      "checksum": format!("sha256:{}", "1".repeat(64))}]}
            ]
        })
        .to_string(),
    )
    .unwrap();
    let url = format!("file://{}", index.display());
    let server = Server::start_with_env(&[(
        "ATTUNE_PACKS_REGISTRY__INDICES",
        format!("[{{url: \"{url}\", name: local, priority: 1}}]"),
    )]);

    let out = server.cli(&server.token, &["registries"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    assert!(
        stdout.contains(&url) && stdout.contains("local"),
        "{stdout}"
    );

    let out = server.cli(&server.token, &["search", "chat"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    assert!(
        stdout.contains("slack") && stdout.contains("2.1.0"),
        "{stdout}"
    );
    assert!(!stdout.contains("aws"), "{stdout}");

    let out = server.cli(&server.token, &["--json", "search"]);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let refs: Vec<&str> = json["packs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["pack_ref"].as_str().unwrap())
        .collect();
    assert_eq!(refs, ["aws", "slack"]);
}

register_test!(sync remove_refuses_with_dependents_and_cascades_from_the_command_line);
fn remove_refuses_with_dependents_and_cascades_from_the_command_line() {
    let server = Server::start();
    let base = server.pack("src/base", "ref: base\nversion: 1.0.0\n");
    let lib = server.pack(
        "src/lib",
        "ref: lib\nversion: 1.0.0\ndependencies: [\"base\"]\n",
    );
    let out = server.cli(
        &server.token,
        &["-q", "register", "--skip-tests", &base, &lib],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Refused: exit 1, the dependent and the fix named.
    let out = server.cli(&server.token, &["-q", "remove", "base"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains("refused (has_dependents): base:") && stdout.contains("--cascade"),
        "{stdout}"
    );
    assert!(stdout.contains("nothing was removed"), "{stdout}");

    let out = server.cli(
        &server.token,
        &["-q", "--json", "remove", "--cascade", "--dry-run", "base"],
    );
    assert!(out.status.success());
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["dry_run"], true);
    assert_eq!(json["removed"][0]["ref"], "lib");
    assert_eq!(json["removed"][0]["dependent"], true);
    assert_eq!(json["removed"][1]["ref"], "base");

    let out = server.cli(&server.token, &["remove", "--cascade", "base"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("2 packs removed"), "{stdout}");
    assert!(stderr.contains("removed lib 1.0.0"), "{stderr}");
    let table: Vec<&str> = stdout.lines().collect();
    assert!(table[0].starts_with("PACK"), "{stdout}");
    assert!(
        table[2].starts_with("lib") && table[3].starts_with("base"),
        "{stdout}"
    );

    // Gone: removing again says so.
    let out = server.cli(&server.token, &["-q", "remove", "lib"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("pack 'lib' is not installed"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

register_test!(sync events_lists_the_log_and_follows_it_from_a_cursor);
fn events_lists_the_log_and_follows_it_from_a_cursor() {
    let server = Server::start();
    let register = |name: &str| {
        let pack = server.pack(name, &format!("ref: {name}\nversion: 1.0.0\n"));
        let out = server.cli(&server.token, &["-q", "register", &pack]);
        assert!(out.status.success(), "{out:?}");
    };
    register("ev_one");
    register("ev_two");

    // Stored events, one JSON object per line, then the command ends.
    let out = server.cli(&server.token, &["--json", "events"]);
    assert!(out.status.success(), "{out:?}");
    let lines: Vec<serde_json::Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert_eq!(lines[0]["event_type"], "pack.registered");
    assert_eq!(lines[0]["payload"]["pack_ref"], "ev_one");
    assert_eq!(lines[1]["payload"]["pack_ref"], "ev_two");
    let first = lines[0]["cursor"].as_u64().unwrap();

    // From a cursor, as a table.
    let out = server.cli(&server.token, &["events", "--after", &first.to_string()]);
    assert!(out.status.success(), "{out:?}");
    let table = String::from_utf8(out.stdout).unwrap();
    assert_eq!(table.lines().count(), 1, "{table}");
    assert!(
        table.contains("pack.registered") && table.contains("ev_two"),
        "{table}"
    );

    // --follow stays and prints what is committed later (from the last cursor seen,
    // so whenever the watch starts, the new event follows it).
    let last = lines[1]["cursor"].as_u64().unwrap().to_string();
    let mut follow = Command::new(CLI)
        .args([
            "--server",
            &server.url,
            "--json",
            "events",
            "--follow",
            "--after",
            &last,
        ])
        .env("ATTUNE_PACKS_TOKEN", &server.token)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    register("ev_three");
    let mut reader = std::io::BufReader::new(follow.stdout.take().unwrap());
    let mut line = String::new();
    std::io::BufRead::read_line(&mut reader, &mut line).unwrap();
    let _ = follow.kill();
    let _ = follow.wait();
    let event: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(event["payload"]["pack_ref"], "ev_three", "{line}");

    // A cursor ahead of the log is refused with a message, exit 2.
    let out = server.cli(&server.token, &["events", "--after", "99999"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("ahead"),
        "{out:?}"
    );
}

register_test!(sync history_and_rollback_from_the_command_line);
fn history_and_rollback_from_the_command_line() {
    let server = Server::start();
    let v1 = server.pack("v1/kite", "ref: kite\nversion: 1.0.0\n");
    let v2 = server.pack("v2/kite", "ref: kite\nversion: 2.0.0\n");
    for path in [&v1, &v2] {
        let out = server.cli(&server.token, &["-q", "register", "--force", path]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    let out = server.cli(&server.token, &["history", "kite"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    let upgrade = stdout
        .lines()
        .find(|l| l.contains("upgrade"))
        .unwrap_or_else(|| panic!("{stdout}"));
    assert!(upgrade.contains("1.0.0") && upgrade.contains("2.0.0") && upgrade.contains("cli-test"));
    assert!(stdout.contains("kept for rollback:"), "{stdout}");

    let out = server.cli(&server.token, &["-q", "rollback", "kite"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(
        stdout.contains("kite rolled back from 2.0.0 to 1.0.0"),
        "{stdout}"
    );

    // A refusal exits 1 and names the kept versions.
    let out = server.cli(&server.token, &["-q", "rollback", "kite", "--to", "9.9.9"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("kept versions: 2.0.0"), "{stdout}");

    let out = server.cli(
        &server.token,
        &["--json", "history", "kite", "--limit", "2"],
    );
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let actions: Vec<&str> = json["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(actions, ["rollback", "upgrade"]);
    assert_eq!(json["kept_versions"][0]["version"], "2.0.0");
}

register_test!(sync list_show_and_verify_installed_packs);
fn list_show_and_verify_installed_packs() {
    let server = Server::start();
    let root = server.root.path().canonicalize().unwrap();
    let base = root.join("base").display().to_string();
    let core = server.pack(
        "src/core",
        "ref: core\nversion: 1.0.0\ndescription: Core things\n",
    );
    let web = server.pack(
        "src/web",
        "ref: web\nversion: 2.0.0\ndependencies: [\"core@^1\"]\n",
    );
    std::fs::write(Path::new(&web).join("notes.txt"), "notes\n").unwrap();
    let out = server.cli(
        &server.token,
        &["-q", "register", "--packs-base-dir", &base, &core, &web],
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );

    let out = server.cli(&server.token, &["list"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    let rows: Vec<Vec<&str>> = stdout
        .lines()
        .skip(2)
        .take(2)
        .map(|l| l.split_whitespace().take(3).collect())
        .collect();
    assert_eq!(
        rows,
        [
            ["core", "1.0.0", "local_directory"],
            ["web", "2.0.0", "local_directory"]
        ]
    );
    assert!(stdout.contains("2 of 2 installed packs"), "{stdout}");

    // One per page, every page.
    let out = server.cli(
        &server.token,
        &["--json", "list", "--page-size", "1", "--all"],
    );
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["packs"].as_array().unwrap().len(), 2);
    assert_eq!(json["total_items"], 2);
    let out = server.cli(
        &server.token,
        &["--json", "list", "--keyword", "CORE THINGS"],
    );
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["packs"][0]["ref"], "core");
    assert_eq!(json["packs"].as_array().unwrap().len(), 1);

    let out = server.cli(&server.token, &["show", "core"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    assert!(stdout.starts_with("core 1.0.0"), "{stdout}");
    assert!(stdout.contains("web ^1 (1.0.0) ok"), "{stdout}");
    let out = server.cli(&server.token, &["show", "nothere"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("NotFound"));

    let out = server.cli(&server.token, &["-q", "verify"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    std::fs::write(Path::new(&base).join("web/notes.txt"), "changed\n").unwrap();
    let out = server.cli(&server.token, &["-q", "verify"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("modified      web"), "{stdout}");
    assert!(stdout.contains("  M notes.txt"), "{stdout}");
    assert!(stdout.contains("1 ok, 1 not ok"), "{stdout}");
    let out = server.cli(&server.token, &["-q", "--json", "verify", "core"]);
    assert_eq!(out.status.code(), Some(0));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["packs"][0]["status"], "ok");
}

register_test!(sync index_update_on_a_missing_file_creates_a_new_index);
fn index_update_on_a_missing_file_creates_a_new_index() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    write_files(
        &root.join("alpha"),
        &[("pack.yaml", "ref: alpha\nversion: 1.2.0\n")],
    );
    let index = root.join("new.json");
    let out = local(&[
        "index",
        "update",
        "--index",
        index.to_str().unwrap(),
        root.join("alpha").to_str().unwrap(),
        "--git-url",
        "https://git.example/alpha.git",
        "--git-ref",
        "v1.2.0",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("added to a new index"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let written: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&index).unwrap()).unwrap();
    assert_eq!(written["registry_name"], "new");
    assert_eq!(written["packs"][0]["ref"], "alpha");
    assert_eq!(written["packs"][0]["version"], "1.2.0");
    // A directory that does not exist is still an error, naming the file.
    let out = local(&[
        "index",
        "update",
        "--index",
        root.join("missing/new.json").to_str().unwrap(),
        root.join("alpha").to_str().unwrap(),
        "--git-url",
        "https://git.example/alpha.git",
        "--git-ref",
        "v1.2.0",
    ]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("missing/new.json"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

register_test!(sync an_unreachable_server_is_one_line_naming_the_fix);
fn an_unreachable_server_is_one_line_naming_the_fix() {
    // A port nobody listens on: bound, then released.
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let out = Command::new(CLI)
        .args(["--server", &url, "--token", "any", "registries"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        stderr.trim_end(),
        format!(
            "error: cannot reach attune-packs at {url}: connection refused — is \
             `attune-packs-server serve` running?"
        ),
    );
}

fn main() -> std::process::ExitCode {
    attune_packs_test_harness::main()
}
