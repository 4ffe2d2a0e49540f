//! `git::clone_pack` against real servers on loopback: `git daemon`, smart HTTP
//! (`git http-backend`), the local `file://` transport, a server that never
//! answers and ports where nothing listens.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use attune_packs_server::git::{
    Checkout, CloneOptions, DEFAULT_TOKEN_USERNAME, GitCredentials, GitError, clone_pack,
};
use attune_packs_server::progress::{Level, ProgressEvent, Reporter, Stage};
use git2::Oid;

use crate::support::git::*;

/// The standard fixture repository `pack.git`, served by `git daemon`.
struct Served {
    base: tempfile::TempDir,
    daemon: GitDaemon,
    commits: FixtureCommits,
}

fn served() -> Served {
    let base = tempfile::tempdir().unwrap();
    let commits = create_fixture_repo(base.path(), "pack.git");
    let daemon = GitDaemon::start(base.path());
    Served {
        base,
        daemon,
        commits,
    }
}

fn run(
    url: &str,
    reference: Option<&str>,
    creds: &GitCredentials,
    reporter: &Reporter,
    timeout: Duration,
) -> (tempfile::TempDir, PathBuf, Result<Checkout, GitError>) {
    let tmp = tempfile::tempdir().unwrap();
    let dest = dest_in(tmp.path());
    let opts = CloneOptions {
        url,
        reference,
        dest: &dest,
        credentials: creds,
        verify_ssl: true,
        timeout,
    };
    let result = clone_pack(&opts, reporter);
    (tmp, dest, result)
}

fn clone_ok(url: &str, reference: Option<&str>) -> (tempfile::TempDir, PathBuf, Checkout) {
    let (tmp, dest, r) = run(
        url,
        reference,
        &GitCredentials::default(),
        &Reporter::noop(),
        Duration::from_secs(60),
    );
    let checkout = r.unwrap_or_else(|e| panic!("clone {url} {reference:?}: {e}"));
    assert!(!dest.join(".git").exists(), ".git must be removed");
    assert!(dest.join("pack.yaml").is_file());
    (tmp, dest, checkout)
}

fn drain(rx: &mut tokio::sync::mpsc::UnboundedReceiver<ProgressEvent>) -> Vec<ProgressEvent> {
    let mut v = Vec::new();
    while let Ok(e) = rx.try_recv() {
        v.push(e);
    }
    v
}

register_test!(sync default_head_over_git_daemon_is_shallow);
fn default_head_over_git_daemon_is_shallow() {
    let _g = net_shared();
    let s = served();
    let (reporter, mut rx) = Reporter::channel("demo");
    let (_tmp, dest, r) = run(
        &s.daemon.url("pack.git"),
        None,
        &GitCredentials::default(),
        &reporter,
        Duration::from_secs(60),
    );
    let c = r.unwrap();
    assert_eq!(c.commit, s.commits.c2);
    assert_eq!(
        c.commit,
        git(&s.base.path().join("pack.git"), &["rev-parse", "HEAD"])
    );
    assert!(c.shallow);
    assert!(!dest.join(".git").exists());
    assert!(read(&dest, "pack.yaml").contains("version: 0.2.0"));
    assert_eq!(read(&dest, "README.md"), "# demo pack\n");
    assert!(read(&dest, "actions/hello.sh").contains("echo hello"));
    assert!(dest.join(".gitmodules").is_file());
    assert!(!dest.join("dev.txt").exists());
    // The submodule is not fetched: its directory is absent or empty.
    let sub = dest.join("vendor/sub");
    assert!(!sub.exists() || std::fs::read_dir(&sub).unwrap().next().is_none());

    let events = drain(&mut rx);
    assert!(events.iter().all(|e| e.subject == "demo"));
    let fetch_counts: Vec<_> = events
        .iter()
        .filter(|e| e.stage == Stage::Fetch && e.done.is_some())
        .collect();
    let last = fetch_counts.last().expect("a final fetch count");
    assert!(last.done.unwrap() > 0);
    assert_eq!(last.done, last.total);
    assert!(events.iter().any(|e| e.stage == Stage::Extract));
}

register_test!(sync branch);
fn branch() {
    let _g = net_shared();
    let s = served();
    let (_t, dest, c) = clone_ok(&s.daemon.url("pack.git"), Some("dev"));
    assert_eq!(c.commit, s.commits.c4);
    assert!(c.shallow);
    assert_eq!(read(&dest, "dev.txt"), "two\n");
}

register_test!(sync lightweight_tag);
fn lightweight_tag() {
    let _g = net_shared();
    let s = served();
    let (_t, dest, c) = clone_ok(&s.daemon.url("pack.git"), Some("light"));
    assert_eq!(c.commit, s.commits.c1);
    assert!(c.shallow);
    assert!(read(&dest, "pack.yaml").contains("version: 0.1.0"));
    assert!(!dest.join("README.md").exists());
}

register_test!(sync annotated_tag_is_peeled_to_its_commit);
fn annotated_tag_is_peeled_to_its_commit() {
    let _g = net_shared();
    let s = served();
    let (_t, dest, c) = clone_ok(&s.daemon.url("pack.git"), Some("v1.0.0"));
    assert_eq!(c.commit, s.commits.c1);
    assert_ne!(c.commit, s.commits.annotated_tag_object);
    assert!(c.shallow);
    assert!(read(&dest, "pack.yaml").contains("version: 0.1.0"));
}

register_test!(sync full_ref_name_and_branch_before_tag);
fn full_ref_name_and_branch_before_tag() {
    let _g = net_shared();
    let s = served();
    let url = s.daemon.url("pack.git");
    // branch `both` → c2 wins over tag `both` → c1
    assert_eq!(clone_ok(&url, Some("both")).2.commit, s.commits.c2);
    assert_eq!(
        clone_ok(&url, Some("refs/tags/both")).2.commit,
        s.commits.c1
    );
}

register_test!(sync full_sha_of_a_tip_is_fetched_shallow);
fn full_sha_of_a_tip_is_fetched_shallow() {
    let _g = net_shared();
    let s = served();
    let (_t, dest, c) = clone_ok(&s.daemon.url("pack.git"), Some(&s.commits.c4));
    assert_eq!(c.commit, s.commits.c4);
    assert!(c.shallow);
    assert_eq!(read(&dest, "dev.txt"), "two\n");
}

register_test!(sync full_sha_not_advertised_falls_back_to_full_fetch);
fn full_sha_not_advertised_falls_back_to_full_fetch() {
    let _g = net_shared();
    let s = served();
    let (reporter, mut rx) = Reporter::channel("demo");
    let (_t, dest, r) = run(
        &s.daemon.url("pack.git"),
        Some(&s.commits.c3),
        &GitCredentials::default(),
        &reporter,
        Duration::from_secs(60),
    );
    let c = r.unwrap();
    assert_eq!(c.commit, s.commits.c3);
    assert!(!c.shallow);
    assert_eq!(read(&dest, "dev.txt"), "one\n");
    assert!(!dest.join(".git").exists());
    let events = drain(&mut rx);
    assert!(
        events.iter().any(|e| e.level == Level::Warning),
        "{events:?}"
    );
}

register_test!(sync full_sha_fetched_directly_when_server_allows_it);
fn full_sha_fetched_directly_when_server_allows_it() {
    let _g = net_shared();
    let s = served();
    let repo = s.base.path().join("pack.git");
    git(
        &repo,
        &["config", "uploadpack.allowReachableSHA1InWant", "true"],
    );
    let (_t, dest, c) = clone_ok(&s.daemon.url("pack.git"), Some(&s.commits.c3));
    assert_eq!(c.commit, s.commits.c3);
    assert!(c.shallow);
    assert_eq!(read(&dest, "dev.txt"), "one\n");
}

register_test!(sync short_sha_uses_full_fetch);
fn short_sha_uses_full_fetch() {
    let _g = net_shared();
    let s = served();
    let (_t, dest, c) = clone_ok(&s.daemon.url("pack.git"), Some(&s.commits.c3[..7]));
    assert_eq!(c.commit, s.commits.c3);
    assert!(!c.shallow);
    assert_eq!(read(&dest, "dev.txt"), "one\n");
    let upper = s.commits.c1[..10].to_ascii_uppercase();
    assert_eq!(
        clone_ok(&s.daemon.url("pack.git"), Some(&upper)).2.commit,
        s.commits.c1
    );
}

register_test!(sync ambiguous_short_sha);
fn ambiguous_short_sha() {
    let _g = net_shared();
    let s = served();
    // Two blobs whose ids share the first 4 hex digits, made reachable.
    let mut seen = std::collections::HashMap::new();
    let (a, b) = (0u32..)
        .find_map(|i| {
            let data = format!("collide {i}\n");
            let id = Oid::hash_object(git2::ObjectType::Blob, data.as_bytes()).unwrap();
            let prefix = id.to_string()[..4].to_string();
            seen.insert(prefix, data.clone()).map(|other| (other, data))
        })
        .unwrap();
    let prefix = Oid::hash_object(git2::ObjectType::Blob, a.as_bytes())
        .unwrap()
        .to_string()[..4]
        .to_string();
    let work = s.base.path().join("collide.work");
    git(
        s.base.path(),
        &[
            "clone",
            "-q",
            s.base.path().join("pack.git").to_str().unwrap(),
            "collide.work",
        ],
    );
    std::fs::write(work.join("a.txt"), &a).unwrap();
    std::fs::write(work.join("b.txt"), &b).unwrap();
    git(&work, &["add", "-A"]);
    git(&work, &["commit", "-q", "-m", "collide"]);
    git(&work, &["push", "-q", "origin", "HEAD:refs/heads/collide"]);
    let (_t, _d, r) = run(
        &s.daemon.url("pack.git"),
        Some(&prefix),
        &GitCredentials::default(),
        &Reporter::noop(),
        Duration::from_secs(60),
    );
    assert!(
        matches!(r, Err(GitError::AmbiguousCommit { .. })),
        "{prefix}: {r:?}"
    );
}

register_test!(sync unknown_reference_lists_lookups);
fn unknown_reference_lists_lookups() {
    let _g = net_shared();
    let s = served();
    for reference in ["nope", "deadbeef", &"d".repeat(40)] {
        let (_t, _d, r) = run(
            &s.daemon.url("pack.git"),
            Some(reference),
            &GitCredentials::default(),
            &Reporter::noop(),
            Duration::from_secs(60),
        );
        let err = r.unwrap_err();
        assert!(
            matches!(err, GitError::ReferenceNotFound { .. }),
            "{reference}: {err:?}"
        );
        let text = err.to_string();
        assert!(text.contains(&format!("refs/heads/{reference}")), "{text}");
        assert!(text.contains(&format!("refs/tags/{reference}")), "{text}");
        assert!(text.contains("commit"), "{text}");
    }
}

register_test!(sync invalid_references_fail_before_network);
fn invalid_references_fail_before_network() {
    let silent = SilentServer::start();
    let url = format!("git://127.0.0.1:{}/pack.git", silent.port);
    for reference in [
        "--upload-pack=x",
        "-b",
        "a b",
        "a\tb",
        "a..b",
        "a:b",
        "a\nb",
        "a\u{7}",
        "",
        "feat*",
        "HEAD@{1}",
        "v1^{}",
    ] {
        let start = Instant::now();
        let (_t, dest, r) = run(
            &url,
            Some(reference),
            &GitCredentials::default(),
            &Reporter::noop(),
            Duration::from_secs(30),
        );
        assert!(
            matches!(r, Err(GitError::InvalidReference { .. })),
            "{reference:?}: {r:?}"
        );
        assert!(start.elapsed() < Duration::from_secs(2));
        assert!(!dest.exists());
    }
}

register_test!(sync smart_http_clone_and_tag);
fn smart_http_clone_and_tag() {
    let _g = net_shared();
    let base = tempfile::tempdir().unwrap();
    let commits = create_fixture_repo(base.path(), "pack.git");
    let server = HttpGitServer::start(base.path(), HttpOptions::default());
    let (_t, dest, c) = clone_ok(&server.url("pack.git"), None);
    assert_eq!(c.commit, commits.c2);
    assert!(c.shallow);
    assert!(read(&dest, "pack.yaml").contains("0.2.0"));
    let (_t, _d, c) = clone_ok(&server.url("pack.git"), Some("v1.0.0"));
    assert_eq!(c.commit, commits.c1);
    let (_t, _d, c) = clone_ok(&server.url("pack.git"), Some(&commits.c3[..8]));
    assert_eq!(c.commit, commits.c3);
    assert!(!c.shallow);
}

register_test!(sync smart_http_basic_auth);
fn smart_http_basic_auth() {
    let _g = net_shared();
    let base = tempfile::tempdir().unwrap();
    let commits = create_fixture_repo(base.path(), "pack.git");
    let token = "s3cr3t-t0ken-value";
    let server = HttpGitServer::start(
        base.path(),
        HttpOptions {
            basic_auth: Some((DEFAULT_TOKEN_USERNAME.into(), token.into())),
            throttle: None,
        },
    );
    let url = server.url("pack.git");
    let reporter = Reporter::noop();
    let long = Duration::from_secs(60);

    let good = GitCredentials {
        https_token: Some(token.into()),
        ..Default::default()
    };
    let (_t, dest, r) = run(&url, Some("dev"), &good, &reporter, long);
    assert_eq!(r.unwrap().commit, commits.c4);
    assert!(!dest.join(".git").exists());

    let (_t, _d, r) = run(&url, None, &GitCredentials::default(), &reporter, long);
    assert!(matches!(r, Err(GitError::Auth { .. })), "{r:?}");

    let wrong = GitCredentials {
        https_token: Some("wrong-token-value".into()),
        ..Default::default()
    };
    let (_t, _d, r) = run(&url, None, &wrong, &reporter, long);
    let err = r.unwrap_err();
    assert!(matches!(err, GitError::Auth { .. }), "{err:?}");
    assert!(!err.to_string().contains("wrong-token-value"));
    assert!(!format!("{err:?}").contains("wrong-token-value"));

    // Token in the URL userinfo: works, and is never printed.
    let with_userinfo = url.replace(
        "http://",
        &format!("http://{DEFAULT_TOKEN_USERNAME}:{token}@"),
    );
    let (_t, _d, r) = run(
        &with_userinfo,
        None,
        &GitCredentials::default(),
        &reporter,
        long,
    );
    assert_eq!(r.unwrap().commit, commits.c2);
    let bad_userinfo = url.replace("http://", "http://someone:urlsecret99@");
    let (_t, _d, r) = run(
        &bad_userinfo,
        None,
        &GitCredentials::default(),
        &reporter,
        long,
    );
    let err = r.unwrap_err();
    assert!(matches!(err, GitError::Auth { .. }), "{err:?}");
    assert!(!format!("{err} {err:?}").contains("urlsecret99"), "{err}");
}

register_test!(sync silent_server_times_out);
fn silent_server_times_out() {
    let _g = net_exclusive();
    let silent = SilentServer::start();
    for url in [
        format!("git://127.0.0.1:{}/pack.git", silent.port),
        format!("http://127.0.0.1:{}/pack.git", silent.port),
        format!("ssh://git@127.0.0.1:{}/pack.git", silent.port),
    ] {
        let start = Instant::now();
        let (_t, _d, r) = run(
            &url,
            None,
            &GitCredentials::default(),
            &Reporter::noop(),
            Duration::from_secs(2),
        );
        let elapsed = start.elapsed();
        assert!(
            matches!(r, Err(GitError::Timeout { secs: 2 })),
            "{url}: {r:?}"
        );
        assert!(elapsed < Duration::from_secs(10), "{elapsed:?}");
    }
}

register_test!(sync already_cancelled_reporter);
fn already_cancelled_reporter() {
    let _g = net_shared();
    let s = served();
    let (reporter, rx) = Reporter::channel("demo");
    drop(rx);
    let (_t, dest, r) = run(
        &s.daemon.url("pack.git"),
        None,
        &GitCredentials::default(),
        &reporter,
        Duration::from_secs(60),
    );
    assert!(matches!(r, Err(GitError::Cancelled)), "{r:?}");
    assert!(!dest.join("pack.yaml").exists());
}

fn slow_server() -> (tempfile::TempDir, HttpGitServer) {
    let base = tempfile::tempdir().unwrap();
    create_big_repo(base.path(), "big.git", 600 * 1024);
    let server = HttpGitServer::start(
        base.path(),
        HttpOptions {
            basic_auth: None,
            throttle: Some(Duration::from_millis(25)),
        },
    );
    (base, server)
}

register_test!(sync cancelled_during_transfer);
fn cancelled_during_transfer() {
    let _g = net_shared();
    let (_base, server) = slow_server();
    let (reporter, mut rx) = Reporter::channel("big");
    // Drop the receiver as soon as the first object count arrives.
    let watcher = std::thread::spawn(move || {
        while let Some(e) = rx.blocking_recv() {
            if e.stage == Stage::Fetch && e.done.is_some() {
                break;
            }
        }
    });
    let start = Instant::now();
    let (_t, _d, r) = run(
        &server.url("big.git"),
        None,
        &GitCredentials::default(),
        &reporter,
        Duration::from_secs(120),
    );
    watcher.join().unwrap();
    assert!(matches!(r, Err(GitError::Cancelled)), "{r:?}");
    assert!(start.elapsed() < Duration::from_secs(60));
}

register_test!(sync deadline_during_transfer);
fn deadline_during_transfer() {
    let _g = net_exclusive();
    let (_base, server) = slow_server();
    let (reporter, mut rx) = Reporter::channel("big");
    let start = Instant::now();
    let (_t, _d, r) = run(
        &server.url("big.git"),
        None,
        &GitCredentials::default(),
        &reporter,
        Duration::from_millis(2500),
    );
    assert!(matches!(r, Err(GitError::Timeout { secs: 3 })), "{r:?}");
    assert!(start.elapsed() < Duration::from_secs(10));
    // Progress was throttled: at most ~10 counts per second.
    let counts = drain(&mut rx)
        .into_iter()
        .filter(|e| e.stage == Stage::Fetch && e.done.is_some())
        .count();
    assert!((1..=40).contains(&counts), "{counts}");
}

register_test!(sync https_to_nothing_is_a_network_error);
fn https_to_nothing_is_a_network_error() {
    let _g = net_shared();
    let port = closed_port();
    for verify_ssl in [true, false] {
        let tmp = tempfile::tempdir().unwrap();
        let dest = dest_in(tmp.path());
        let url = format!("https://user:topsecret@127.0.0.1:{port}/org/pack.git?x=1");
        let opts = CloneOptions {
            url: &url,
            reference: Some("main"),
            dest: &dest,
            credentials: &GitCredentials::default(),
            verify_ssl,
            timeout: Duration::from_secs(30),
        };
        let err = clone_pack(&opts, &Reporter::noop()).unwrap_err();
        assert!(matches!(err, GitError::Network { .. }), "{err:?}");
        let text = format!("{err} {err:?}");
        assert!(!text.contains("topsecret"), "{text}");
        assert!(
            text.contains(&format!("https://127.0.0.1:{port}/org/pack.git")),
            "{text}"
        );
    }
}

register_test!(sync ssh_to_nothing_is_a_network_error);
fn ssh_to_nothing_is_a_network_error() {
    let _g = net_shared();
    let port = closed_port();
    let creds = GitCredentials {
        ssh_key_path: Some("/nonexistent/id_ed25519".into()),
        ssh_key_passphrase: Some("sshpass-secret".into()),
        ..Default::default()
    };
    let url = format!("ssh://git@127.0.0.1:{port}/org/pack.git");
    let (_t, _d, r) = run(
        &url,
        None,
        &creds,
        &Reporter::noop(),
        Duration::from_secs(30),
    );
    let err = r.unwrap_err();
    assert!(matches!(err, GitError::Network { .. }), "{err:?}");
    assert!(!format!("{err:?}").contains("sshpass-secret"));
}

register_test!(sync existing_empty_destination_and_file_transport);
fn existing_empty_destination_and_file_transport() {
    let _g = net_shared();
    let base = tempfile::tempdir().unwrap();
    let commits = create_fixture_repo(base.path(), "pack.git");
    let url = format!("file://{}", base.path().join("pack.git").display());
    let tmp = tempfile::tempdir().unwrap();
    for (reference, expected) in [(None, &commits.c2), (Some("v1.0.0"), &commits.c1)] {
        let dest = tmp.path().join(format!("d{}", reference.is_some()));
        std::fs::create_dir(&dest).unwrap();
        let opts = CloneOptions {
            url: &url,
            reference,
            dest: &dest,
            credentials: &GitCredentials::default(),
            verify_ssl: true,
            timeout: Duration::from_secs(60),
        };
        let c = clone_pack(&opts, &Reporter::noop()).unwrap();
        assert_eq!(&c.commit, expected);
        assert!(!c.shallow);
        assert!(!dest.join(".git").exists());
    }
    // Short SHA over the local transport (no shallow attempt at all).
    let dest = tmp.path().join("short");
    let opts = CloneOptions {
        url: &url,
        reference: Some(&commits.c3[..6]),
        dest: &dest,
        credentials: &GitCredentials::default(),
        verify_ssl: true,
        timeout: Duration::from_secs(60),
    };
    assert_eq!(
        clone_pack(&opts, &Reporter::noop()).unwrap().commit,
        commits.c3
    );
}

register_test!(sync empty_repository);
fn empty_repository() {
    let _g = net_shared();
    let base = tempfile::tempdir().unwrap();
    git(base.path(), &["init", "-q", "--bare", "empty.git"]);
    let daemon = GitDaemon::start(base.path());
    let (_t, _d, r) = run(
        &daemon.url("empty.git"),
        None,
        &GitCredentials::default(),
        &Reporter::noop(),
        Duration::from_secs(30),
    );
    assert!(matches!(r, Err(GitError::EmptyRepository { .. })), "{r:?}");
    let (_t, _d, r) = run(
        &daemon.url("missing.git"),
        None,
        &GitCredentials::default(),
        &Reporter::noop(),
        Duration::from_secs(30),
    );
    assert!(r.is_err(), "{r:?}");
}

register_test!(the_server_users_git_config_has_no_effect_on_a_download);
/// The server runs git with its own options only: the git configuration of the user
/// it runs as (here a `~/.gitconfig` and an XDG one that send the pack's URL to
/// another repository) has no effect on a Download. The shipped binary is started,
/// since libgit2 reads `HOME` once per process.
async fn the_server_users_git_config_has_no_effect_on_a_download() {
    use attune_packs_client::pb;

    use crate::{common::path_str, crash_loop::Setup, support::packs::pack_files};

    let repos = tempfile::tempdir().unwrap();
    let genuine = create_repo(
        repos.path(),
        "pack.git",
        &pack_files("alpha", "1.0.0"),
        None,
    );
    create_repo(
        repos.path(),
        "impostor.git",
        &pack_files("alpha", "6.6.6"),
        None,
    );
    let daemon = GitDaemon::start(repos.path());

    let home = tempfile::tempdir().unwrap();
    let rewrite = format!(
        "[url \"{}\"]\n\tinsteadOf = {}\n",
        daemon.url("impostor.git"),
        daemon.url("pack.git")
    );
    std::fs::write(home.path().join(".gitconfig"), &rewrite).unwrap();
    let xdg = home.path().join(".config");
    std::fs::create_dir_all(xdg.join("git")).unwrap();
    std::fs::write(xdg.join("git/config"), &rewrite).unwrap();

    let root = tempfile::tempdir().unwrap();
    let setup = Setup::at(
        root.path().canonicalize().unwrap(),
        None,
        &[
            ("HOME", &path_str(home.path())),
            ("XDG_CONFIG_HOME", &path_str(&xdg)),
        ],
    );
    let server = setup.start();
    let mut client = server.client().await;
    let r = client
        .download(pb::DownloadRequest {
            packs: vec![daemon.url("pack.git")],
            destination_dir: path_str(&setup.downloads()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(r.success_count, 1, "{:#?}", r.failed_packs);
    let p = &r.downloaded_packs[0];
    assert_eq!(
        (p.pack_version.as_str(), p.git_commit.as_deref()),
        ("1.0.0", Some(genuine.as_str())),
        "the download followed the user's url.insteadOf"
    );
}
