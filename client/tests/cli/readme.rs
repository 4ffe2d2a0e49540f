//! The README's commands, read from README.md at test time and run as written against a
//! real server, so that the README cannot drift from what works; and the sample registry
//! of examples/ checked against its pack directories.

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use serde_json::Value;

use super::{CLI, free_port, server_binary};

/// Printed before each README block, to tell their outputs apart.
const MARKER: &str = "@@ readme block ";

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// The bodies of the README's ```sh blocks, in order.
fn sh_blocks(readme: &str) -> Vec<String> {
    let mut blocks = Vec::new();
    let mut current: Option<String> = None;
    for line in readme.lines() {
        if let Some(block) = current.as_mut() {
            if line.trim_end() == "```" {
                blocks.extend(current.take());
            } else {
                block.push_str(line);
                block.push('\n');
            }
        } else if line.trim_end() == "```sh" {
            current = Some(String::new());
        }
    }
    assert!(current.is_none(), "README.md: a ```sh block is not closed");
    blocks
}

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

/// A command with none of the caller's `ATTUNE_PACKS_*` settings: the README assumes
/// a fresh shell.
fn clean(mut command: Command) -> Command {
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("ATTUNE_PACKS_") {
            command.env_remove(name);
        }
    }
    command
}

fn cli_json(dir: &Path, args: &[&str]) -> Value {
    cli_json_with(clean(Command::new(CLI)), dir, args)
}

/// `command` (the CLI) with `--json` and `args`, run in `dir`: its parsed output.
fn cli_json_with(mut command: Command, dir: &Path, args: &[&str]) -> Value {
    let out = command
        .arg("--json")
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "attune-packs {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

register_test!(sync examples_match_the_index);
/// Every pack of examples/packs is in examples/index.json, with the entry
/// `attune-packs index entry` makes of its archive today (so the archive's checksum
/// and contents are current), and the archive holds exactly the pack directory.
fn examples_match_the_index() {
    let examples = repo_root().join("examples");
    let index: Value =
        serde_json::from_slice(&std::fs::read(examples.join("index.json")).unwrap()).unwrap();
    let entries = index["packs"].as_array().unwrap();
    let listed: BTreeSet<&str> = entries.iter().map(|e| e["ref"].as_str().unwrap()).collect();
    let dirs: BTreeSet<String> = std::fs::read_dir(examples.join("packs"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        listed,
        dirs.iter().map(String::as_str).collect(),
        "examples/index.json lists other packs than examples/packs holds: run \
         `python3 examples/build-index.py`"
    );
    for entry in entries {
        let pack_ref = entry["ref"].as_str().unwrap();
        let url = entry["install_sources"][0]["url"].as_str().unwrap();
        let archive = examples.join(url);
        let archive = archive.to_str().unwrap();
        let fresh = cli_json(
            &examples,
            &["index", "entry", archive, "--archive-url", url],
        );
        assert_eq!(
            &fresh, entry,
            "examples/index.json's entry for {pack_ref} is stale: run \
             `python3 examples/build-index.py`"
        );
        let dir = examples.join("packs").join(pack_ref);
        let of_dir = cli_json(&examples, &["checksum", dir.to_str().unwrap()]);
        let of_archive = cli_json(&examples, &["checksum", archive]);
        assert_eq!(
            of_dir["checksum"], of_archive["pack_checksum"],
            "{url} does not hold examples/packs/{pack_ref} as it is: run \
             `python3 examples/build-index.py`"
        );
    }
}

register_test!(sync readme_commands_run_verbatim, requires = [Grpcurl, CurlAndJq, PythonVenv]);
/// Runs every ```sh block of README.md with bash (`set -euo pipefail`), from a
/// directory holding a copy of examples/, against a server started as the README's
/// first block starts it. Substitutions, each because the test cannot do as a reader:
/// - the server listens on a free port (`--listen`), so `localhost:50051` becomes that
///   port and `ATTUNE_PACKS_SERVER` points the CLI at it;
/// - `cargo run -q -p attune-packs-server --` and `cargo run -q -p
///   attune-packs-client --` become the binaries this test was built with (cargo
///   would rebuild or block on the build lock), and so does `attune-packs` at the start
///   of a line (the README puts it on PATH with `cargo install`);
/// - the data dir is the default, `./attune-packs-data`, inside the temporary
///   directory, so the checkout stays clean.
///
/// Skipped blocks: `cargo test --workspace` (this test is part of it), `cargo install`
/// (it would install into the user's ~/.cargo/bin) and `cargo bench` (minutes of
/// measurements, no behaviour).
fn readme_commands_run_verbatim() {
    let readme = std::fs::read_to_string(repo_root().join("README.md")).unwrap();
    let blocks = sh_blocks(&readme);
    let serve = blocks.first().expect("README.md has no ```sh block").trim();
    let serve_args = serve
        .strip_prefix("cargo run -p attune-packs-server -- ")
        .unwrap_or_else(|| panic!("README's first block starts the server: {serve}"))
        .split_whitespace()
        .collect::<Vec<_>>();
    let runnable: Vec<&String> = blocks[1..]
        .iter()
        .filter(|b| {
            !["cargo test", "cargo install", "cargo bench"]
                .iter()
                .any(|skip| b.trim_start().starts_with(skip))
        })
        .collect();
    assert!(
        runnable.len() >= 3,
        "README.md: {} runnable blocks",
        runnable.len()
    );

    let work = tempfile::tempdir().unwrap();
    let dir = work.path().canonicalize().unwrap();
    copy_tree(&repo_root().join("examples"), &dir.join("examples"));
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let log = dir.join("server.log");
    let server = clean(Command::new(server_binary()))
        .args(&serve_args)
        .args(["--listen", &addr])
        .current_dir(&dir)
        .stdout(Stdio::from(std::fs::File::create(&log).unwrap()))
        .stderr(Stdio::from(
            std::fs::File::create(dir.join("server.err")).unwrap(),
        ))
        .spawn()
        .unwrap();
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _server = Kill(server);
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(&addr).is_err() {
        assert!(
            Instant::now() < deadline,
            "server did not start listening: {}",
            std::fs::read_to_string(dir.join("server.err")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    // One shell for all blocks, as a reader runs them one after another: what a block
    // exports (ATTUNE_PACKS_TOKEN) is still set in the next one. A marker before each
    // block names the one that failed.
    let server_bin = server_binary();
    let mut script = String::from("set -euo pipefail\nexec 2>&1\n");
    for (n, block) in runnable.iter().enumerate() {
        let body = block
            .replace(
                "cargo run -q -p attune-packs-server --",
                server_bin.to_str().unwrap(),
            )
            .replace(
                "cargo run -q -p attune-packs-client --",
                &format!("{CLI} --server http://{addr}"),
            )
            .replace("localhost:50051", &format!("localhost:{port}"))
            .lines()
            .map(|line| match line.strip_prefix("attune-packs ") {
                Some(rest) => format!("{CLI} {rest}"),
                None => line.to_string(),
            })
            .collect::<Vec<_>>()
            .join("\n");
        assert!(
            !body.contains("cargo "),
            "a README block runs cargo in a way this test does not know: {block}"
        );
        script.push_str(&format!("echo '{MARKER}{n}'\n{body}\n"));
    }
    let out = clean(Command::new("bash"))
        .args(["-c", &script])
        .current_dir(&dir)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let outputs: Vec<&str> = text.split(MARKER).skip(1).collect();
    let failed_at = outputs.len().saturating_sub(1);
    let server_log = || std::fs::read_to_string(dir.join("server.err")).unwrap_or_default();
    assert!(
        out.status.success(),
        "README block failed ({}):\n{}\n--- output ---\n{}\n--- server ---\n{}",
        out.status,
        runnable[failed_at],
        outputs.last().copied().unwrap_or_default(),
        server_log()
    );
    for (n, output) in outputs.iter().enumerate() {
        assert!(
            !output.to_lowercase().contains("error:"),
            "README block printed an error:\n{}\n--- output ---\n{output}",
            runnable[n]
        );
    }
    let all = outputs.join("\n");
    // Short, stable phrases: the counts matter, not the wording around them.
    for (what, expected) in [
        (
            "deps: welcome's dependency met by hello in the request",
            "in request 1.0.0",
        ),
        (
            "download: the registry's archive verified",
            "archive checksum matches the index",
        ),
        (
            "register --strict: the pack's tests",
            "pack tests passed: 2 passed",
        ),
        ("install --dry-run: the plan", "dry run: 3 pack"),
        ("install --write-lock", "installed 2 pack"),
        ("install --lock", "installed 0 pack"),
        ("registries", "examples"),
        ("list", "3 of 3 installed packs"),
        ("verify", "3 ok, 0 not ok"),
        ("index update", "entry replaced in my-index.json"),
        ("REST dependencies", "\"already_installed\": true"),
        ("SSE", "event: result"),
    ] {
        assert!(
            all.contains(expected),
            "README output lacks {what} ({expected:?}):\n{all}"
        );
    }
    // The sample packs are meant to register without a single complaint.
    assert!(!all.contains("warning:"), "a README command warned:\n{all}");
    assert!(dir.join("packs.lock.json").is_file());

    let installed = cli_json_at(&dir, &addr, &["list", "--all"]);
    let refs: BTreeSet<&str> = installed["packs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["ref"].as_str().unwrap())
        .collect();
    assert_eq!(refs, BTreeSet::from(["hello", "hello_node", "welcome"]));
}

/// The CLI with a token of the server in `dir` (the README's data dir).
fn cli_json_at(dir: &Path, addr: &str, args: &[&str]) -> Value {
    let token = clean(Command::new(server_binary()))
        .args(["token", "issue", "--subject", "readme-test"])
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(token.status.success());
    let token = String::from_utf8(token.stdout).unwrap();
    let mut cli = clean(Command::new(CLI));
    cli.args(["--server", &format!("http://{addr}")])
        .env("ATTUNE_PACKS_TOKEN", token.lines().last().unwrap());
    cli_json_with(cli, dir, args)
}
