//! Download end to end: local directories and archives, archives over HTTP(S), git over
//! `git daemon` and smart HTTP, registry indices; placement, limits, hostile archives,
//! timeouts and cancellation. Loopback only.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use attune_packs_client::{Event, pb};
use attune_packs_server::{checksum::directory_checksum, config::Config};
use futures::StreamExt;
use tonic::Code;

use crate::{
    common::{Backend, TestServer, path_str},
    support::{
        archives,
        git::{GitDaemon, HttpGitServer, HttpOptions, create_repo, net_shared},
        http::FileServer,
        index::{IndexEntry, Release, index_json},
        packs::{pack_files, sha256_checksum, write_tree},
    },
};

fn request(server: &TestServer, packs: &[&str]) -> pb::DownloadRequest {
    pb::DownloadRequest {
        packs: packs.iter().map(|s| s.to_string()).collect(),
        destination_dir: path_str(&dest(server)),
        ..Default::default()
    }
}

/// Every progress event of a Download of `packs`, in order, and its result: collected
/// until the stream ends.
async fn download_with_progress(
    client: &mut attune_packs_client::Client,
    server: &TestServer,
    packs: &[&str],
) -> (Vec<pb::Progress>, pb::DownloadResult) {
    let mut stream = client
        .download_stream(request(server, packs))
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
    (progress, result.expect("the stream ends with a result"))
}

fn dest(server: &TestServer) -> PathBuf {
    server.root.path().canonicalize().unwrap().join("dest")
}

/// Entries of the destination directory (to prove nothing partial is left behind).
fn listing(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

fn assert_counts(r: &pb::DownloadResult) {
    assert_eq!(r.total_count, r.success_count + r.failure_count);
    assert_eq!(r.success_count as usize, r.downloaded_packs.len());
    assert_eq!(r.failure_count as usize, r.failed_packs.len());
}

fn failure<'a>(r: &'a pb::DownloadResult, source: &str) -> &'a str {
    &r.failed_packs
        .iter()
        .find(|f| f.source == source)
        .unwrap_or_else(|| panic!("{source} did not fail: {r:#?}"))
        .error
}

fn allow_http(config: &mut Config) {
    config.download.allow_http = true;
    config.registry.allow_http = true;
}

register_test!(local_directories_and_archives_are_placed_with_checksums_and_provenance);
async fn local_directories_and_archives_are_placed_with_checksums_and_provenance() {
    let server = TestServer::start(Backend::Sqlite).await;
    let root = server.root.path().canonicalize().unwrap();
    let files = pack_files("alpha", "1.0.0");
    write_tree(&root.join("src/alpha"), &files);
    std::fs::write(
        root.join("beta.tar.gz"),
        archives::tar_gz_in(Some("beta-main"), &pack_files("beta", "2.0.0")),
    )
    .unwrap();
    std::fs::write(
        root.join("gamma.zip"),
        archives::zip(&pack_files("gamma", "0.3.0")),
    )
    .unwrap();
    // A zip named like a tarball: the format comes from the bytes.
    std::fs::write(
        root.join("delta.tgz"),
        archives::zip_in(Some("pack"), &pack_files("delta", "1.1.0")),
    )
    .unwrap();
    let mut client = server.client().await;

    let sources = [
        path_str(&root.join("src/alpha")),
        format!("file://{}", path_str(&root.join("beta.tar.gz"))),
        path_str(&root.join("gamma.zip")),
        "src/../delta.tgz".to_string(), // relative to an allowed root
    ];
    let refs: Vec<&str> = sources.iter().map(String::as_str).collect();
    let (progress, r) = download_with_progress(&mut client, &server, &refs).await;
    assert_counts(&r);
    assert_eq!(r.failure_count, 0, "{:#?}", r.failed_packs);
    let by_ref = |pack_ref: &str| {
        r.downloaded_packs
            .iter()
            .find(|p| p.pack_ref == pack_ref)
            .unwrap()
    };
    let alpha = by_ref("alpha");
    assert_eq!(alpha.source_type, "local_directory");
    assert_eq!(alpha.pack_version, "1.0.0");
    assert_eq!(alpha.pack_path, path_str(&dest(&server).join("alpha")));
    assert_eq!(by_ref("beta").source_type, "local_archive");
    assert_eq!(by_ref("gamma").pack_version, "0.3.0");
    assert_eq!(by_ref("delta").pack_version, "1.1.0");
    for p in &r.downloaded_packs {
        let placed = Path::new(&p.pack_path);
        // The reported checksum is the directory checksum of what is on disk.
        assert_eq!(
            p.checksum.as_deref().unwrap(),
            format!("sha256:{}", directory_checksum(placed).unwrap()),
            "{}",
            p.pack_ref
        );
        assert!(placed.join("actions/hello.sh").is_file());
    }
    // Executable bits survive extraction.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(dest(&server).join("beta/actions/hello.sh"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o111, 0o111);
    // The same content, whatever the source format.
    assert_eq!(
        listing(&dest(&server)),
        [
            ".alpha.source.json",
            ".beta.source.json",
            ".delta.source.json",
            ".gamma.source.json",
            "alpha",
            "beta",
            "delta",
            "gamma"
        ]
    );
    let provenance: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dest(&server).join(".beta.source.json")).unwrap())
            .unwrap();
    assert_eq!(provenance["source_type"], "local_archive");
    assert_eq!(
        provenance["checksum"],
        by_ref("beta").checksum.clone().unwrap()
    );
    // Progress: a place event per pack with request-wide counters.
    let placed: Vec<_> = progress
        .iter()
        .filter(|p| p.stage == pb::progress::Stage::Place as i32 && p.done.is_some())
        .collect();
    assert_eq!(placed.len(), 4);
    assert!(placed.iter().all(|p| p.total == Some(4)));
    assert!(
        progress
            .iter()
            .any(|p| p.stage == pb::progress::Stage::Extract as i32)
    );
    server.stop().await;
}

register_test!(progress_names_the_source_type_of_the_result);
/// Progress names the kind of source the result names: a local path is called a
/// directory or an archive only once it was opened, never guessed from how it is written.
async fn progress_names_the_source_type_of_the_result() {
    let server = TestServer::start(Backend::Sqlite).await;
    let root = server.root.path().canonicalize().unwrap();
    write_tree(&root.join("src/alpha"), &pack_files("alpha", "1.0.0"));
    std::fs::write(
        root.join("beta.tar.gz"),
        archives::tar_gz_in(Some("beta-main"), &pack_files("beta", "2.0.0")),
    )
    .unwrap();
    let sources = [
        path_str(&root.join("src/alpha")),
        path_str(&root.join("beta.tar.gz")),
    ];
    let refs: Vec<&str> = sources.iter().map(String::as_str).collect();
    let mut client = server.client().await;
    // Judged only once the stream has ended: every event is in, in order.
    let (progress, r) = download_with_progress(&mut client, &server, &refs).await;
    assert_eq!(r.failure_count, 0, "{:#?}", r.failed_packs);
    let kinds = [
        "local_directory",
        "local_archive",
        "archive",
        "git",
        "registry",
    ];
    for (source, expected) in [
        (&sources[0], "local_directory"),
        (&sources[1], "local_archive"),
    ] {
        let pack = r
            .downloaded_packs
            .iter()
            .find(|p| &p.source == source)
            .unwrap();
        assert_eq!(pack.source_type, expected);
        let lines: Vec<&str> = progress
            .iter()
            .filter(|p| p.message.contains(source.as_str()) || p.pack == *source)
            .map(|p| p.message.as_str())
            .collect();
        assert!(
            lines.contains(&format!("fetched: {expected} source").as_str()),
            "{source}: {lines:#?}"
        );
        for line in &lines {
            for kind in kinds.iter().filter(|k| **k != expected) {
                assert!(
                    !line.contains(&format!(" {kind} source")),
                    "{source} is {expected} but progress says {line:?}"
                );
            }
        }
    }
    server.stop().await;
}

register_test!(packs_without_ref_are_named_after_their_directory);
/// A pack.yaml without `ref` is named as StackStorm names it: after its directory (a
/// local directory, an archive's top directory, a git repository without its
/// `stackstorm-` prefix), else after `name`.
async fn packs_without_ref_are_named_after_their_directory() {
    let _net = net_shared();
    let no_ref = |name: &str| {
        vec![(
            "pack.yaml".to_string(),
            format!("name: {name}\ndescription: No ref\nversion: \"1.0.0\"\n"),
        )]
    };
    let server = TestServer::start(Backend::Sqlite).await;
    let root = server.root.path().canonicalize().unwrap();
    write_tree(&root.join("src/dirname_pack"), &no_ref("Other Name"));
    std::fs::write(
        root.join("top.tar.gz"),
        archives::tar_gz_in(Some("archived_pack"), &no_ref("Other Name")),
    )
    .unwrap();
    // No directory inside the archive: only `name` can name it.
    std::fs::write(
        root.join("flat.tar.gz"),
        archives::tar_gz_in(None, &no_ref("flat_by_name")),
    )
    .unwrap();
    let repos = tempfile::tempdir().unwrap();
    create_repo(
        repos.path(),
        "stackstorm-gitnamed.git",
        &no_ref("Other Name"),
        None,
    );
    let daemon = GitDaemon::start(repos.path());
    let mut client = server.client().await;
    let sources = [
        path_str(&root.join("src/dirname_pack")),
        path_str(&root.join("top.tar.gz")),
        path_str(&root.join("flat.tar.gz")),
        daemon.url("stackstorm-gitnamed.git"),
    ];
    let refs: Vec<&str> = sources.iter().map(String::as_str).collect();
    let r = client.download(request(&server, &refs)).await.unwrap();
    assert_eq!(r.failure_count, 0, "{:#?}", r.failed_packs);
    let mut placed: Vec<(&str, &str)> = r
        .downloaded_packs
        .iter()
        .map(|p| (p.source.as_str(), p.pack_ref.as_str()))
        .collect();
    placed.sort();
    let mut expected = vec![
        (sources[0].as_str(), "dirname_pack"),
        (sources[1].as_str(), "archived_pack"),
        (sources[2].as_str(), "flat_by_name"),
        (sources[3].as_str(), "gitnamed"),
    ];
    expected.sort();
    assert_eq!(placed, expected);
    let dirs: Vec<String> = listing(&dest(&server))
        .into_iter()
        .filter(|n| !n.starts_with('.'))
        .collect();
    assert_eq!(
        dirs,
        ["archived_pack", "dirname_pack", "flat_by_name", "gitnamed"]
    );
}

register_test!(existing_packs_are_reused_refused_or_replaced);
async fn existing_packs_are_reused_refused_or_replaced() {
    let server = TestServer::start(Backend::Sqlite).await;
    let root = server.root.path().canonicalize().unwrap();
    write_tree(&root.join("v1/alpha"), &pack_files("alpha", "1.0.0"));
    write_tree(&root.join("v2/alpha"), &pack_files("alpha", "2.0.0"));
    let (v1, v2) = (
        path_str(&root.join("v1/alpha")),
        path_str(&root.join("v2/alpha")),
    );
    let mut client = server.client().await;

    let first = client.download(request(&server, &[&v1])).await.unwrap();
    assert_eq!(first.success_count, 1);
    // Same content again: reused, success.
    let again = client.download(request(&server, &[&v1])).await.unwrap();
    assert_eq!(again.success_count, 1);
    assert_eq!(
        again.downloaded_packs[0].checksum,
        first.downloaded_packs[0].checksum
    );
    // Different content: refused, old one intact.
    let refused = client.download(request(&server, &[&v2])).await.unwrap();
    assert_counts(&refused);
    let error = failure(&refused, &v2);
    assert!(
        error.contains("already exists with different content (version 1.0.0)")
            && error.contains("force"),
        "{error}"
    );
    assert_eq!(
        format!(
            "sha256:{}",
            directory_checksum(&dest(&server).join("alpha")).unwrap()
        ),
        first.downloaded_packs[0].checksum.clone().unwrap()
    );
    // force replaces.
    let mut forced = request(&server, &[&v2]);
    forced.force = Some(true);
    let replaced = client.download(forced).await.unwrap();
    assert_eq!(replaced.success_count, 1, "{:#?}", replaced.failed_packs);
    assert_eq!(replaced.downloaded_packs[0].pack_version, "2.0.0");
    assert!(
        std::fs::read_to_string(dest(&server).join("alpha/pack.yaml"))
            .unwrap()
            .contains("2.0.0")
    );
    // Two sources for one ref in one request: one wins, the other says why.
    let mut both = request(&server, &[&v1, &v2]);
    let fresh = server.root.path().canonicalize().unwrap().join("fresh");
    both.destination_dir = path_str(&fresh);
    let both = client.download(both).await.unwrap();
    assert_counts(&both);
    assert_eq!(both.failure_count, 1, "{:#?}", both.failed_packs);
    assert!(
        both.failed_packs[0].error.contains("also provided by"),
        "{:#?}",
        both.failed_packs
    );
    assert_eq!(listing(&fresh), [".alpha.source.json", "alpha"]);
    assert_eq!(listing(&dest(&server)), [".alpha.source.json", "alpha"]);
    server.stop().await;
}

register_test!(hostile_and_broken_archives_fail_without_leaving_anything);
async fn hostile_and_broken_archives_fail_without_leaving_anything() {
    let server =
        TestServer::start_with(Backend::Sqlite, |c| c.download.max_entry_bytes = 64 * 1024).await;
    let root = server.root.path().canonicalize().unwrap();
    let mut evil_files = pack_files("evil", "1.0.0");
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "slip.zip",
            archives::zip_with_path("../../escaped.txt", b"x"),
            "unsafe path",
        ),
        (
            "abs.tar",
            archives::tar_with_path_raw("/etc/evil", b"x"),
            "unsafe path",
        ),
        (
            "dotdot.tar.gz",
            archives::gzip(&archives::tar_with_path_raw("pack/../../escaped", b"x")),
            "unsafe path",
        ),
        (
            "link.tar.gz",
            archives::gzip(&archives::tar_with_symlink("actions", "/etc")),
            "leaves the pack",
        ),
        (
            "zlink.zip",
            archives::zip_with_symlink("config.yaml", "/etc/passwd"),
            "leaves the pack",
        ),
        (
            "hard.tar",
            archives::tar_with_hardlink("pack.yaml", "/etc/passwd"),
            "leaves the pack",
        ),
        (
            "big.tar.gz",
            {
                evil_files.push(("big.bin".into(), vec![0u8; 200 * 1024]));
                archives::tar_gz(&evil_files)
            },
            "limit",
        ),
        (
            "garbage.zip",
            b"<html>not an archive</html>".to_vec(),
            "not a supported archive",
        ),
        (
            "nopack.tar.gz",
            archives::tar_gz(&[("README.md", b"hi")]),
            "no pack.yaml",
        ),
        (
            "two.tar.gz",
            {
                let mut two: Vec<(String, Vec<u8>)> = pack_files("one", "1.0.0")
                    .into_iter()
                    .map(|(n, d)| (format!("a/{n}"), d))
                    .collect();
                two.extend(
                    pack_files("two", "1.0.0")
                        .into_iter()
                        .map(|(n, d)| (format!("b/{n}"), d)),
                );
                archives::tar_gz(&two)
            },
            "a, b",
        ),
    ];
    let mut sources = Vec::new();
    for (name, bytes, _) in &cases {
        std::fs::write(root.join(name), bytes).unwrap();
        sources.push(path_str(&root.join(name)));
    }
    let refs: Vec<&str> = sources.iter().map(String::as_str).collect();
    let mut client = server.client().await;
    let r = client.download(request(&server, &refs)).await.unwrap();
    assert_counts(&r);
    assert_eq!(r.success_count, 0, "{:#?}", r.downloaded_packs);
    for ((name, _, expected), source) in cases.iter().zip(&sources) {
        let error = failure(&r, source);
        assert!(error.to_lowercase().contains(expected), "{name}: {error}");
    }
    assert!(
        listing(&dest(&server)).is_empty(),
        "{:?}",
        listing(&dest(&server))
    );
    assert!(
        !root.join("escaped.txt").exists() && !server.root.path().join("../escaped.txt").exists()
    );

    // A local directory with a symlink in it is refused too (it could point anywhere).
    let linked = root.join("linked");
    write_tree(&linked, &pack_files("linked", "1.0.0"));
    std::os::unix::fs::symlink("/etc/passwd", linked.join("actions/passwd")).unwrap();
    let r = client
        .download(request(&server, &[&path_str(&linked)]))
        .await
        .unwrap();
    let error = failure(&r, &path_str(&linked));
    assert!(
        error.contains("symbolic link") && error.contains("actions/passwd"),
        "{error}"
    );
    assert!(
        listing(&dest(&server)).is_empty(),
        "{:?}",
        listing(&dest(&server))
    );
    server.stop().await;
}

register_test!(archives_over_http_and_https);
async fn archives_over_http_and_https() {
    let http = FileServer::start_http().await;
    let https = FileServer::start_https().await;
    let tgz = archives::tar_gz_in(Some("alpha-1.0.0"), &pack_files("alpha", "1.0.0"));
    let zip = archives::zip(&pack_files("beta", "1.0.0"));
    http.put("alpha-1.0.0.tgz", tgz.clone());
    http.put("downloads/beta", zip.clone());
    http.redirect("latest/alpha.tar.gz", &http.url("alpha-1.0.0.tgz"));
    https.put(
        "gamma.tar.gz",
        archives::tar_gz(&pack_files("gamma", "1.0.0")),
    );
    http.put("huge.tar.gz", vec![7u8; 3 * 1024 * 1024]);

    let server = TestServer::start_with(Backend::Sqlite, |c| {
        allow_http(c);
        c.download.max_archive_bytes = 1024 * 1024;
    })
    .await;
    let mut client = server.client().await;
    let alpha = http.url("latest/alpha.tar.gz");
    let beta = http.url("downloads/beta"); // no suffix: probed (not git), then sniffed
    let gamma = https.url("gamma.tar.gz");
    let missing = http.url("missing.zip");
    let huge = http.url("huge.tar.gz");
    let r = client
        .download(request(&server, &[&alpha, &beta, &gamma, &missing, &huge]))
        .await
        .unwrap();
    assert_counts(&r);
    let ok: Vec<&str> = r
        .downloaded_packs
        .iter()
        .map(|p| p.pack_ref.as_str())
        .collect();
    assert_eq!(ok, ["alpha", "beta"], "{:#?}", r.failed_packs);
    assert_eq!(r.downloaded_packs[0].source_type, "archive");
    // The self-signed certificate is refused while verify_ssl is on (the default).
    let error = failure(&r, &gamma);
    assert!(error.to_lowercase().contains("certificate"), "{error}");
    assert!(failure(&r, &missing).contains("404"));
    assert!(
        failure(&r, &huge).contains("limit"),
        "{}",
        failure(&r, &huge)
    );

    // verify_ssl=false, allowed by default.
    let mut insecure = request(&server, &[&gamma]);
    insecure.verify_ssl = Some(false);
    let r = client.download(insecure).await.unwrap();
    assert_eq!(r.success_count, 1, "{:#?}", r.failed_packs);
    server.stop().await;

    // A server that forbids it answers INVALID_ARGUMENT; one without allow_http refuses http.
    let strict =
        TestServer::start_with(Backend::Sqlite, |c| c.download.allow_insecure_tls = false).await;
    let mut client = strict.client().await;
    let mut insecure = request(&strict, &[&gamma]);
    insecure.verify_ssl = Some(false);
    let status = client.download(insecure).await.unwrap_err();
    assert_eq!(status.status().unwrap().code(), Code::InvalidArgument);
    let r = client.download(request(&strict, &[&alpha])).await.unwrap();
    assert!(
        failure(&r, &alpha).contains("https"),
        "{}",
        failure(&r, &alpha)
    );
    strict.stop().await;
}

register_test!(git_sources_by_branch_tag_and_commit);
async fn git_sources_by_branch_tag_and_commit() {
    let _net = net_shared();
    let repos = tempfile::tempdir().unwrap();
    let v1 = create_repo(
        repos.path(),
        "alpha.git",
        &pack_files("alpha", "1.0.0"),
        Some("v1.0.0"),
    );
    // A second commit on main.
    let work = repos.path().join("alpha.work2");
    crate::support::git::git(
        repos.path(),
        &[
            "clone",
            "-q",
            path_str(&repos.path().join("alpha.git")).as_str(),
            path_str(&work).as_str(),
        ],
    );
    std::fs::write(work.join("pack.yaml"), "ref: alpha\nversion: \"1.1.0\"\n").unwrap();
    crate::support::git::git(&work, &["commit", "-qam", "1.1"]);
    crate::support::git::git(&work, &["push", "-q", "origin", "HEAD:main"]);
    let v11 = crate::support::git::git(&work, &["rev-parse", "HEAD"]);
    let daemon = GitDaemon::start(repos.path());
    let smart = HttpGitServer::start(
        repos.path(),
        HttpOptions {
            basic_auth: Some(("bot".into(), "s3cret-token".into())),
            ..Default::default()
        },
    );

    let server = TestServer::start_with(Backend::Sqlite, |c| {
        allow_http(c);
        c.download.git.https_username = Some("bot".into());
        c.download.git.https_token = Some(attune_packs_server::config::Secret::new("s3cret-token"));
    })
    .await;
    let mut client = server.client().await;
    let url = daemon.url("alpha.git");
    let head = client.download(request(&server, &[&url])).await.unwrap();
    assert_eq!(head.success_count, 1, "{:#?}", head.failed_packs);
    let p = &head.downloaded_packs[0];
    assert_eq!(
        (p.source_type.as_str(), p.pack_version.as_str()),
        ("git", "1.1.0")
    );
    assert_eq!(p.git_commit.as_deref(), Some(v11.as_str()));
    assert!(!Path::new(&p.pack_path).join(".git").exists());

    // A tag via ref_spec, into a fresh destination; a commit via @sha over smart HTTP
    // with credentials from the server's configuration.
    let mut by_tag = request(&server, &[&url]);
    by_tag.ref_spec = Some("v1.0.0".into());
    by_tag.destination_dir = path_str(&server.root.path().canonicalize().unwrap().join("tagged"));
    let tagged = client.download(by_tag).await.unwrap();
    assert_eq!(
        tagged.downloaded_packs[0].git_commit.as_deref(),
        Some(v1.as_str()),
        "{:#?}",
        tagged.failed_packs
    );
    assert_eq!(tagged.downloaded_packs[0].pack_version, "1.0.0");

    let by_sha = format!("{}@{}", smart.url("alpha.git"), &v1[..10]);
    let mut req = request(&server, &[&by_sha]);
    req.destination_dir = path_str(&server.root.path().canonicalize().unwrap().join("by-sha"));
    let r = client.download(req).await.unwrap();
    assert_eq!(r.success_count, 1, "{:#?}", r.failed_packs);
    assert_eq!(
        r.downloaded_packs[0].git_commit.as_deref(),
        Some(v1.as_str())
    );

    let unknown = format!("{url}@no-such-branch");
    let r = client
        .download(request(&server, &[&unknown]))
        .await
        .unwrap();
    assert!(
        failure(&r, &unknown).contains("no-such-branch"),
        "{}",
        failure(&r, &unknown)
    );
    server.stop().await;
}

register_test!(registry_refs_resolve_verify_and_fail_closed);
async fn registry_refs_resolve_verify_and_fail_closed() {
    let _net = net_shared();
    let files = FileServer::start_http().await;
    let alpha_1 = archives::tar_gz_in(Some("alpha"), &pack_files("alpha", "1.0.0"));
    let alpha_09 = archives::zip(&pack_files("alpha", "0.9.0"));
    let liar = archives::tar_gz(&pack_files("core", "1.0.0"));
    let omega = archives::tar_gz(&pack_files("omega", "1.0.0"));
    files.put("omega-1.0.0.tar.gz", omega.clone());
    files.put("alpha-1.0.0.tar.gz", alpha_1.clone());
    files.put("alpha-0.9.0.zip", alpha_09.clone());
    files.put("liar.tar.gz", liar.clone());
    files.put(
        "tampered.tar.gz",
        archives::tar_gz(&pack_files("tampered", "1.0.0")),
    );
    // Git source verified by its directory checksum.
    let repos = tempfile::tempdir().unwrap();
    let commit = create_repo(
        repos.path(),
        "gitpack.git",
        &pack_files("gitpack", "3.0.0"),
        None,
    );
    let tree = tempfile::tempdir().unwrap();
    write_tree(tree.path(), &pack_files("gitpack", "3.0.0"));
    let tree_sum = format!("sha256:{}", directory_checksum(tree.path()).unwrap());
    let smart = HttpGitServer::start(repos.path(), HttpOptions::default());

    let primary = index_json(&[
        IndexEntry::new("alpha", "1.0.0")
            .archive(&files.url("alpha-1.0.0.tar.gz"), &sha256_checksum(&alpha_1))
            .release(
                Release::new("0.9.0")
                    .archive(&files.url("alpha-0.9.0.zip"), &sha256_checksum(&alpha_09)),
            ),
        IndexEntry::new("liar", "1.0.0")
            .archive(&files.url("liar.tar.gz"), &sha256_checksum(&liar)),
        IndexEntry::new("tampered", "1.0.0").archive(
            &files.url("tampered.tar.gz"),
            &sha256_checksum(b"something else"),
        ),
        IndexEntry::new("gitpack", "3.0.0").git(&smart.url("gitpack.git"), &commit, &tree_sum),
    ]);
    let secondary = index_json(&[IndexEntry::new("omega", "1.0.0")
        .archive(&files.url("omega-1.0.0.tar.gz"), &sha256_checksum(&omega))]);
    files.put("primary/index.json", primary);
    files.put("secondary/index.json", secondary);
    files.require_bearer("secondary/index.json", "index-token");
    let (primary_url, secondary_url) = (
        files.url("primary/index.json"),
        files.url("secondary/index.json"),
    );

    let server = TestServer::start_with(Backend::Sqlite, |c| {
        allow_http(c);
        c.registry.indices = vec![
            attune_packs_server::config::IndexEntryConfig {
                url: primary_url.clone(),
                name: Some("primary".into()),
                priority: 1,
                enabled: true,
                headers: Default::default(),
                trust: Default::default(),
            },
            attune_packs_server::config::IndexEntryConfig {
                url: secondary_url.clone(),
                name: Some("secondary".into()),
                priority: 2,
                enabled: true,
                headers: [(
                    "Authorization".to_string(),
                    attune_packs_server::config::Secret::new("Bearer index-token"),
                )]
                .into(),
                trust: Default::default(),
            },
        ];
    })
    .await;
    let mut client = server.client().await;

    // ListRegistries shows the indices in order, never header values; SearchPacks gives
    // one row per ref with every version offered.
    let registries = client.list_registries().await.unwrap().registries;
    let shown: Vec<(Option<&str>, u32, bool)> = registries
        .iter()
        .map(|r| (r.name.as_deref(), r.priority, r.has_headers))
        .collect();
    assert_eq!(
        shown,
        [(Some("primary"), 1, false), (Some("secondary"), 2, true)]
    );
    assert!(!format!("{registries:?}").contains("index-token"));
    let found = client.search_packs("ALPHA").await.unwrap().packs;
    assert_eq!(found.len(), 1, "{found:#?}");
    assert_eq!(found[0].versions, ["1.0.0", "0.9.0"]);
    assert_eq!(found[0].index_name.as_deref(), Some("primary"));
    let all: Vec<String> = client
        .search_packs("")
        .await
        .unwrap()
        .packs
        .into_iter()
        .map(|p| p.pack_ref)
        .collect();
    assert_eq!(all, ["alpha", "gitpack", "liar", "omega", "tampered"]);

    let r = client
        .download(request(
            &server,
            &["alpha", "gitpack", "omega", "liar", "tampered", "nosuch"],
        ))
        .await
        .unwrap();
    assert_counts(&r);
    let ok: Vec<(&str, &str)> = r
        .downloaded_packs
        .iter()
        .map(|p| (p.pack_ref.as_str(), p.pack_version.as_str()))
        .collect();
    assert_eq!(
        ok,
        [("alpha", "1.0.0"), ("gitpack", "3.0.0"), ("omega", "1.0.0")],
        "{:#?}",
        r.failed_packs
    );
    assert!(
        r.downloaded_packs
            .iter()
            .all(|p| p.source_type == "registry")
    );
    assert_eq!(
        r.downloaded_packs[1].git_commit.as_deref(),
        Some(commit.as_str())
    );
    assert_eq!(
        r.downloaded_packs[1].checksum.as_deref(),
        Some(tree_sum.as_str())
    );
    assert!(
        failure(&r, "liar").contains("refusing"),
        "{}",
        failure(&r, "liar")
    );
    assert!(
        failure(&r, "tampered").contains("checksum mismatch"),
        "{}",
        failure(&r, "tampered")
    );
    assert!(
        failure(&r, "nosuch").contains("not found"),
        "{}",
        failure(&r, "nosuch")
    );
    // The index's header went to the secondary index only.
    assert!(
        files
            .last_request_headers("primary/index.json")
            .unwrap()
            .get("authorization")
            .is_none()
    );
    let provenance: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dest(&server).join(".gitpack.source.json")).unwrap())
            .unwrap();
    assert_eq!(provenance["checksum_verified"], true);
    assert_eq!(provenance["registry_url"], primary_url.as_str());

    // A range picks the highest matching release; an exact version that does not exist fails.
    let mut older = request(&server, &["alpha@^0.9", "omega@2.0.0"]);
    older.destination_dir = path_str(&server.root.path().canonicalize().unwrap().join("older"));
    let r = client.download(older).await.unwrap();
    assert_eq!(
        r.downloaded_packs[0].pack_version, "0.9.0",
        "{:#?}",
        r.failed_packs
    );
    assert!(
        failure(&r, "omega@2.0.0").contains("1.0.0"),
        "{}",
        failure(&r, "omega@2.0.0")
    );

    // Fail closed: the primary index breaks, so omega (in the secondary) is not served
    // from a lower-priority index either.
    files.fail("primary/index.json", 500);
    attune_packs_server::registry::RegistryClient::clear_cache(server.state.downloader.registry());
    let mut closed = request(&server, &["omega"]);
    closed.destination_dir = path_str(&server.root.path().canonicalize().unwrap().join("closed"));
    let r = client.download(closed).await.unwrap();
    assert!(
        failure(&r, "omega").contains("500"),
        "{}",
        failure(&r, "omega")
    );

    // A request's registry_url is searched first.
    let extra = index_json(&[IndexEntry::new("omega", "1.0.0")
        .archive(&files.url("alpha-1.0.0.tar.gz"), &sha256_checksum(&alpha_1))]);
    files.put("extra/index.json", extra);
    let mut with_extra = request(&server, &["omega"]);
    with_extra.registry_url = Some(files.url("extra/index.json"));
    with_extra.destination_dir =
        path_str(&server.root.path().canonicalize().unwrap().join("extra"));
    let r = client.download(with_extra).await.unwrap();
    // The archive holds alpha, not omega: identity is checked for every index.
    assert!(failure(&r, "omega").contains("refusing"), "{:#?}", r);
    server.stop().await;
}

register_test!(timeouts_and_dropped_calls_leave_nothing_behind);
async fn timeouts_and_dropped_calls_leave_nothing_behind() {
    let files = FileServer::start_http().await;
    files.put(
        "slow.tar.gz",
        archives::tar_gz(&pack_files("slow", "1.0.0")),
    );
    files.set_delay("slow.tar.gz", Duration::from_secs(60));
    let server = TestServer::start_with(Backend::Sqlite, allow_http).await;
    let mut client = server.client().await;
    let slow = files.url("slow.tar.gz");

    let mut req = request(&server, &[&slow]);
    req.timeout = Some(1);
    let started = std::time::Instant::now();
    let r = client.download(req).await.unwrap();
    assert!(started.elapsed() < Duration::from_secs(20));
    assert!(
        failure(&r, &slow).contains("timed out after 1 s"),
        "{}",
        failure(&r, &slow)
    );
    assert!(
        listing(&dest(&server)).is_empty(),
        "{:?}",
        listing(&dest(&server))
    );

    // A dropped stream cancels the download and removes its staging directory.
    let mut stream = client
        .download_stream(request(&server, &[&slow]))
        .await
        .unwrap();
    let _first = stream.next().await;
    drop(stream);
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while !listing(&dest(&server)).is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "left behind: {:?}",
            listing(&dest(&server))
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Request-level mistakes are INVALID_ARGUMENT.
    let mut outside = request(&server, &["core"]);
    outside.destination_dir = "/etc/attune".into();
    let err = client.download(outside).await.unwrap_err();
    assert_eq!(err.status().unwrap().code(), Code::InvalidArgument);
    assert!(err.status().unwrap().message().contains("destination_dir"));
    let mut zero = request(&server, &["core"]);
    zero.timeout = Some(0);
    assert_eq!(
        client
            .download(zero)
            .await
            .unwrap_err()
            .status()
            .unwrap()
            .code(),
        Code::InvalidArgument
    );
    let bad = client
        .download(request(&server, &["Not A Source!", "ftp://x/y.zip"]))
        .await
        .unwrap();
    assert_counts(&bad);
    assert!(failure(&bad, "Not A Source!").contains("not a pack source"));
    assert!(failure(&bad, "ftp://x/y.zip").contains("unsupported URL scheme"));
    server.stop().await;
}

register_test!(a_file_index_serves_archives_beside_it);
/// A `file://` index names its archives relative to itself (as examples/index.json
/// does); they are read from beside it, verified, and never from outside its directory,
/// by a `../` name or through a link.
async fn a_file_index_serves_archives_beside_it() {
    let registry = tempfile::tempdir().unwrap();
    let dir = registry.path().canonicalize().unwrap();
    let beside = archives::tar_gz_in(Some("beside"), &pack_files("beside", "1.0.0"));
    let outside = archives::tar_gz(&pack_files("outside", "1.0.0"));
    std::fs::create_dir_all(dir.join("index/dist")).unwrap();
    std::fs::write(dir.join("index/dist/beside-1.0.0.tar.gz"), &beside).unwrap();
    std::fs::write(dir.join("outside-1.0.0.tar.gz"), &outside).unwrap();
    // A name beside the index that is a link out of its directory: the checksum
    // matches what it leads to, so only opening beneath the directory stops it.
    let linked = archives::tar_gz(&pack_files("linked", "1.0.0"));
    std::fs::write(dir.join("linked-1.0.0.tar.gz"), &linked).unwrap();
    std::os::unix::fs::symlink(
        "../../linked-1.0.0.tar.gz",
        dir.join("index/dist/linked-1.0.0.tar.gz"),
    )
    .unwrap();
    std::fs::write(
        dir.join("index/index.json"),
        index_json(&[
            IndexEntry::new("beside", "1.0.0")
                .archive("dist/beside-1.0.0.tar.gz", &sha256_checksum(&beside)),
            IndexEntry::new("outside", "1.0.0")
                .archive("../outside-1.0.0.tar.gz", &sha256_checksum(&outside)),
            IndexEntry::new("linked", "1.0.0")
                .archive("dist/linked-1.0.0.tar.gz", &sha256_checksum(&linked)),
        ]),
    )
    .unwrap();
    let index_url = format!("file://{}", path_str(&dir.join("index/index.json")));
    let server = TestServer::start_with(Backend::Sqlite, |c| {
        c.registry.indices = vec![attune_packs_server::config::IndexEntryConfig {
            url: index_url.clone(),
            name: Some("local".into()),
            priority: 1,
            enabled: true,
            headers: Default::default(),
            trust: Default::default(),
        }];
    })
    .await;
    let mut client = server.client().await;
    let r = client
        .download(request(&server, &["beside", "outside", "linked"]))
        .await
        .unwrap();
    assert_counts(&r);
    assert_eq!(r.downloaded_packs.len(), 1, "{:#?}", r.failed_packs);
    assert_eq!(r.downloaded_packs[0].pack_ref, "beside");
    assert_eq!(r.downloaded_packs[0].source_type, "registry");
    assert!(dest(&server).join("beside/pack.yaml").is_file());
    let provenance: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dest(&server).join(".beside.source.json")).unwrap())
            .unwrap();
    assert_eq!(provenance["checksum_verified"], true);
    assert_eq!(
        provenance["url"],
        format!(
            "file://{}",
            path_str(&dir.join("index/dist/beside-1.0.0.tar.gz"))
        )
    );
    let why = failure(&r, "outside");
    assert!(why.contains("not inside the index's directory"), "{why}");
    let why = failure(&r, "linked");
    assert!(why.contains("symbolic link"), "{why}");
    assert!(!dest(&server).join("linked").exists());
}

register_test!(errors_name_the_allowed_roots_and_the_missing_registry);
/// A local path under no allowed root, and a registry ref with no registry: each
/// error names the fix (the roots and where paths are read; how to add a registry).
async fn errors_name_the_allowed_roots_and_the_missing_registry() {
    let server = TestServer::start(Backend::Sqlite).await;
    let mut client = server.client().await;
    let r = client
        .download(request(&server, &["./my-pack", "slack"]))
        .await
        .unwrap();
    let roots = server
        .state
        .config
        .allowed_roots()
        .iter()
        .map(|r| r.display().to_string())
        .collect::<Vec<_>>()
        .join(", ");
    let missing = failure(&r, "./my-pack");
    assert!(
        missing.contains(&format!(
            "'./my-pack' is not under any allowed root ({roots})"
        )) && missing.contains("paths are read on the server")
            && missing.contains("set allowed_roots"),
        "{missing}"
    );
    let unknown = failure(&r, "slack");
    assert!(
        unknown.contains("no registries are configured: set registry.indices or pass registry_url"),
        "{unknown}"
    );
}
