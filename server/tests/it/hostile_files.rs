//! Hostile files in a pack: links out of it, endless files, FIFOs, devices, and a
//! directory swapped for a link while the pack is copied. Every read of a pack file
//! goes through the pack's directory descriptor; these tests drive the real server.

use std::{
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use attune_packs_client::pb;

use crate::common::{Backend, TestServer, on_both_backends, path_str, simple_pack, write_pack};

/// Resident memory of this process (the server runs in it), in bytes.
fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kb * 1024
}

fn mkfifo(path: &Path) {
    rustix::fs::mknodat(
        rustix::fs::CWD,
        path,
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o644),
        0,
    )
    .unwrap();
}

fn deps_request(paths: &[&Path]) -> pb::DependenciesRequest {
    pb::DependenciesRequest {
        pack_paths: paths.iter().map(|p| path_str(p)).collect(),
        skip_validation: None,
    }
}

fn register_request(server: &TestServer, paths: &[&Path]) -> pb::RegisterBatchRequest {
    pb::RegisterBatchRequest {
        pack_paths: paths.iter().map(|p| path_str(p)).collect(),
        packs_base_dir: Some(path_str(&base(server))),
        force: Some(true),
        skip_tests: Some(true),
        ..Default::default()
    }
}

fn download_request(server: &TestServer, pack: &Path) -> pb::DownloadRequest {
    pb::DownloadRequest {
        packs: vec![path_str(pack)],
        destination_dir: path_str(&dest(server)),
        force: Some(true),
        ..Default::default()
    }
}

fn base(server: &TestServer) -> PathBuf {
    server.root.path().canonicalize().unwrap().join("base")
}

fn dest(server: &TestServer) -> PathBuf {
    server.root.path().canonicalize().unwrap().join("dest")
}

/// The error Dependencies reported for `pack`.
fn deps_error(r: &pb::DependenciesResult, pack: &Path) -> String {
    r.errors
        .iter()
        .find(|e| e.pack_path == path_str(pack))
        .unwrap_or_else(|| panic!("no error for {}: {r:#?}", pack.display()))
        .error
        .clone()
}

/// Asserts that the three stages that read `pack` refuse it within `limit` each, with
/// an error containing every one of `needles`.
async fn assert_refused_by_every_stage(
    server: &TestServer,
    pack: &Path,
    limit: Duration,
    needles: &[&str],
) {
    let mut client = server.client().await;
    let check = |stage: &str, error: &str, took: Duration| {
        assert!(took < limit, "{stage} took {took:?}");
        for needle in needles {
            assert!(error.contains(needle), "{stage}: no {needle:?} in: {error}");
        }
    };

    let started = Instant::now();
    let r = client.dependencies(deps_request(&[pack])).await.unwrap();
    assert!(r.analyzed_packs.is_empty(), "{r:#?}");
    check("Dependencies", &deps_error(&r, pack), started.elapsed());

    let started = Instant::now();
    let r = client
        .register_batch(register_request(server, &[pack]))
        .await
        .unwrap();
    assert!(r.registered_packs.is_empty(), "{r:#?}");
    assert_eq!(r.failed_packs.len(), 1, "{r:#?}");
    check("RegisterBatch", &r.failed_packs[0].error, started.elapsed());

    let started = Instant::now();
    let r = client
        .download(download_request(server, pack))
        .await
        .unwrap();
    assert!(r.downloaded_packs.is_empty(), "{r:#?}");
    assert_eq!(r.failed_packs.len(), 1, "{r:#?}");
    check("Download", &r.failed_packs[0].error, started.elapsed());
}

/// pack.yaml a link to /dev/zero: refused by every stage in a moment, and the server's
/// memory does not grow (it grew past 6 GB when the link was followed).
async fn pack_yaml_linked_to_dev_zero(backend: Backend) {
    let server = TestServer::start(backend).await;
    let pack = server.packs_dir().join("zero");
    std::fs::create_dir_all(pack.join("actions")).unwrap();
    std::os::unix::fs::symlink("/dev/zero", pack.join("pack.yaml")).unwrap();

    let before = rss_bytes();
    let refused = assert_refused_by_every_stage(
        &server,
        &pack,
        Duration::from_secs(5),
        &["pack.yaml", "symbolic link"],
    );
    tokio::time::timeout(Duration::from_secs(30), refused)
        .await
        .expect("reading pack.yaml never ended");
    let grown = rss_bytes().saturating_sub(before);
    assert!(
        grown < 100 * 1024 * 1024,
        "the server grew by {grown} bytes"
    );
    server.stop().await;
}
on_both_backends!(pack_yaml_linked_to_dev_zero);

/// pack.yaml a FIFO: refused within a second by every stage, and 50 such calls at once
/// leave the server answering a normal call promptly.
async fn pack_yaml_is_a_fifo(backend: Backend) {
    let server = TestServer::start(backend).await;
    let pack = server.packs_dir().join("fifo");
    std::fs::create_dir_all(&pack).unwrap();
    mkfifo(&pack.join("pack.yaml"));
    let refused = assert_refused_by_every_stage(
        &server,
        &pack,
        Duration::from_secs(1),
        &["pack.yaml", "fifo"],
    );
    tokio::time::timeout(Duration::from_secs(30), refused)
        .await
        .expect("a call on a FIFO pack.yaml never answered");

    let started = Instant::now();
    let calls: Vec<_> = (0..50)
        .map(|i| {
            let url = server.url();
            let token = server.token();
            let pack = pack.clone();
            let register = register_request(&server, &[&pack]);
            let download = download_request(&server, &pack);
            tokio::spawn(async move {
                let mut client = attune_packs_client::Client::connect(&url, &token)
                    .await
                    .unwrap();
                match i % 3 {
                    0 => {
                        let r = client.dependencies(deps_request(&[&pack])).await.unwrap();
                        assert!(deps_error(&r, &pack).contains("fifo"));
                    }
                    1 => {
                        let r = client.register_batch(register).await.unwrap();
                        assert!(r.failed_packs[0].error.contains("fifo"), "{r:#?}");
                    }
                    _ => {
                        let r = client.download(download).await.unwrap();
                        assert!(r.failed_packs[0].error.contains("fifo"), "{r:#?}");
                    }
                }
            })
        })
        .collect();
    for call in calls {
        tokio::time::timeout(Duration::from_secs(30), call)
            .await
            .expect("a call on a FIFO pack.yaml never answered")
            .unwrap();
    }
    assert!(started.elapsed() < Duration::from_secs(30));

    let good = write_pack(
        &server.packs_dir(),
        "good",
        &simple_pack("good", "1.0.0", &[]),
    );
    let started = Instant::now();
    let r = server
        .client()
        .await
        .dependencies(deps_request(&[&good]))
        .await
        .unwrap();
    assert_eq!(r.analyzed_packs.len(), 1, "{r:#?}");
    assert!(started.elapsed() < Duration::from_secs(2));
    server.stop().await;
}
on_both_backends!(pack_yaml_is_a_fifo);

/// pack.yaml a link to a 0600 YAML file outside the allowed roots: refused, and none of
/// its values comes back in any answer.
async fn pack_yaml_linked_outside_the_roots(backend: Backend) {
    use std::os::unix::fs::PermissionsExt;
    let server = TestServer::start(backend).await;
    let outside = tempfile::tempdir().unwrap();
    let secret = outside.path().join("secret.yaml");
    std::fs::write(
        &secret,
        "ref: leakedsecretref\nversion: \"6.6.6\"\ndependencies: [\"leakedsecretdep\"]\n",
    )
    .unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
    let pack = server.packs_dir().join("linked");
    std::fs::create_dir_all(&pack).unwrap();
    std::os::unix::fs::symlink(&secret, pack.join("pack.yaml")).unwrap();

    let mut client = server.client().await;
    let deps = client.dependencies(deps_request(&[&pack])).await.unwrap();
    let register = client
        .register_batch(register_request(&server, &[&pack]))
        .await
        .unwrap();
    let download = client
        .download(download_request(&server, &pack))
        .await
        .unwrap();
    assert!(deps_error(&deps, &pack).contains("symbolic link"));
    assert!(register.registered_packs.is_empty());
    assert!(download.downloaded_packs.is_empty());
    for answer in [
        format!("{deps:?}"),
        format!("{register:?}"),
        format!("{download:?}"),
    ] {
        for value in ["leakedsecretref", "leakedsecretdep", "6.6.6"] {
            assert!(!answer.contains(value), "{value} leaked: {answer}");
        }
    }
    server.stop().await;
}
on_both_backends!(pack_yaml_linked_outside_the_roots);

/// Component files that are a FIFO, a character device and a link out of the pack are
/// refused, each naming the file; the load does not block.
async fn hostile_component_files(backend: Backend) {
    let server = TestServer::start(backend).await;
    let pack = write_pack(
        &server.packs_dir(),
        "comp",
        &simple_pack("comp", "1.0.0", &[]),
    );
    let actions = pack.join("actions");
    std::fs::create_dir_all(&actions).unwrap();
    std::fs::write(actions.join("ok.yaml"), "ref: comp.ok\nrunner_type: noop\n").unwrap();
    mkfifo(&actions.join("fifo.yaml"));
    std::os::unix::fs::symlink("/etc/passwd", actions.join("link.yaml")).unwrap();
    // A character device needs CAP_MKNOD (the test runs as root in CI).
    let device = rustix::fs::mknodat(
        rustix::fs::CWD,
        actions.join("zero.yaml"),
        rustix::fs::FileType::CharacterDevice,
        rustix::fs::Mode::from_raw_mode(0o644),
        rustix::fs::makedev(1, 5),
    )
    .is_ok();

    let started = Instant::now();
    let mut client = server.client().await;
    let r = client
        .register_batch(register_request(&server, &[&pack]))
        .await
        .unwrap();
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(r.registered_packs.is_empty(), "{r:#?}");
    let error = &r.failed_packs[0].error;
    assert!(
        error.contains("actions/fifo.yaml") && error.contains("is a fifo"),
        "{error}"
    );
    assert!(
        error.contains("actions/link.yaml") && error.contains("symbolic link"),
        "{error}"
    );
    if device {
        assert!(
            error.contains("actions/zero.yaml") && error.contains("is a character device"),
            "{error}"
        );
    }
    assert!(!error.contains("root:x:0"), "{error}");
    server.stop().await;
}
on_both_backends!(hostile_component_files);

/// Every file below `dir` whose content holds `needle`.
fn files_containing(dir: &Path, needle: &[u8]) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return found;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let kind = entry.file_type().unwrap();
        if kind.is_dir() {
            found.extend(files_containing(&path, needle));
        } else if kind.is_file()
            && std::fs::read(&path)
                .unwrap()
                .windows(needle.len())
                .any(|w| w == needle)
        {
            found.push(path);
        }
    }
    found
}

/// Whatever a copy stored: no file from outside, and `sub`, when there, is the real
/// directory.
fn assert_only_pack_content(stored: &Path) {
    let leaked = files_containing(stored, MARKER);
    assert!(leaked.is_empty(), "outside content stored: {leaked:?}");
    let sub = stored.join("sub");
    if let Ok(meta) = std::fs::symlink_metadata(&sub) {
        assert!(meta.is_dir(), "{} is not a directory", sub.display());
        assert!(sub.join("real.txt").is_file());
    }
}

const MARKER: &[u8] = b"OUTSIDE-MARKER-7f3a";

/// A thread swaps `pack/sub` between the real directory and a link to a directory
/// outside the roots while Download (local directory) and RegisterBatch copy the pack,
/// 100 times each: a copy either fails naming the swapped directory or stores the
/// real one; outside content never reaches a stored pack.
async fn directory_swapped_for_a_link_during_copies(backend: Backend) {
    let server = TestServer::start(backend).await;
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(outside.path().join("marker.txt"), MARKER).unwrap();
    let pack = write_pack(
        &server.packs_dir(),
        "racy",
        &simple_pack("racy", "1.0.0", &[]),
    );
    let sub = pack.join("sub");
    std::fs::create_dir(&sub).unwrap();
    std::fs::write(sub.join("real.txt"), "real\n").unwrap();
    for i in 0..20 {
        std::fs::write(pack.join(format!("file{i}.txt")), "x".repeat(4096)).unwrap();
    }

    let stop = Arc::new(AtomicBool::new(false));
    let swaps = Arc::new(AtomicUsize::new(0));
    let swapper = {
        let (stop, swaps, sub) = (stop.clone(), swaps.clone(), sub.clone());
        let target = outside.path().to_path_buf();
        let parked = pack.join("sub.real");
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                std::fs::rename(&sub, &parked).unwrap();
                std::os::unix::fs::symlink(&target, &sub).unwrap();
                std::thread::yield_now();
                std::fs::remove_file(&sub).unwrap();
                std::fs::rename(&parked, &sub).unwrap();
                swaps.fetch_add(1, Ordering::Relaxed);
                std::thread::yield_now();
            }
        })
    };

    let mut client = server.client().await;
    let (mut copied, mut refused) = (0, 0);
    for _ in 0..100 {
        let r = client
            .download(download_request(&server, &pack))
            .await
            .unwrap();
        match r.failed_packs.first() {
            Some(failed) => {
                assert!(
                    failed.error.contains("sub"),
                    "unclear error: {}",
                    failed.error
                );
                refused += 1;
            }
            None => copied += 1,
        }
        assert_only_pack_content(&dest(&server).join("racy"));

        let r = client
            .register_batch(register_request(&server, &[&pack]))
            .await
            .unwrap();
        match r.failed_packs.first() {
            Some(failed) => {
                assert!(
                    failed.error.contains("sub"),
                    "unclear error: {}",
                    failed.error
                );
                refused += 1;
            }
            None => copied += 1,
        }
        assert_only_pack_content(&base(&server).join("racy"));
    }
    stop.store(true, Ordering::Relaxed);
    swapper.join().unwrap();
    assert!(swaps.load(Ordering::Relaxed) > 0);
    eprintln!("swap race: {copied} copies stored, {refused} refused");
    // Nothing from outside in any stored file, on disk or anywhere under the roots.
    assert!(files_containing(&dest(&server), MARKER).is_empty());
    assert!(files_containing(&base(&server), MARKER).is_empty());
    server.stop().await;
}
on_both_backends!(directory_swapped_for_a_link_during_copies);

/// A pack.yaml over `pack_files.max_manifest_bytes` (here a sparse 4 GiB file) is
/// refused at once, naming the limit and its setting; only the cap is ever read.
async fn oversized_pack_yaml_names_its_setting(backend: Backend) {
    let server = TestServer::start_with(backend, |config| {
        config.pack_files.max_manifest_bytes = 64 * 1024;
    })
    .await;
    let pack = server.packs_dir().join("huge");
    std::fs::create_dir_all(&pack).unwrap();
    let file = std::fs::File::create(pack.join("pack.yaml")).unwrap();
    file.set_len(4 << 30).unwrap();
    let before = rss_bytes();
    let started = Instant::now();
    let mut client = server.client().await;
    let deps = client.dependencies(deps_request(&[&pack])).await.unwrap();
    let register = client
        .register_batch(register_request(&server, &[&pack]))
        .await
        .unwrap();
    assert!(started.elapsed() < Duration::from_secs(5));
    for error in [
        deps_error(&deps, &pack),
        register.failed_packs[0].error.clone(),
    ] {
        assert!(
            error.contains("65536 bytes") && error.contains("pack_files.max_manifest_bytes"),
            "{error}"
        );
    }
    let grown = rss_bytes().saturating_sub(before);
    assert!(
        grown < 100 * 1024 * 1024,
        "the server grew by {grown} bytes"
    );
    server.stop().await;
}
on_both_backends!(oversized_pack_yaml_names_its_setting);
