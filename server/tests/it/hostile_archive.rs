//! Archives that attack memory through tar extension records, alone and many at once,
//! and entry names with control characters: each refused per pack with an error
//! naming the entry, memory bounded, nothing placed.

use std::{path::PathBuf, time::Duration, time::Instant};

use attune_packs_client::pb;

use crate::{
    common::{Backend, TestServer, path_str},
    support::{
        archives,
        memory::{MIB, peak_growth},
    },
};

fn dest(server: &TestServer) -> PathBuf {
    server.root.path().canonicalize().unwrap().join("dest")
}

fn request(server: &TestServer, packs: &[String]) -> pb::DownloadRequest {
    pb::DownloadRequest {
        packs: packs.to_vec(),
        destination_dir: path_str(&dest(server)),
        ..Default::default()
    }
}

fn placed(server: &TestServer) -> Vec<String> {
    std::fs::read_dir(dest(server))
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

const HUGE_HEADER: u64 = 480 * MIB;

fn assert_header_refused(r: &pb::DownloadResult, packs: usize) {
    assert_eq!(r.success_count, 0, "{:#?}", r.downloaded_packs);
    assert_eq!(r.failed_packs.len(), packs);
    for failed in &r.failed_packs {
        let error = &failed.error;
        for needle in [
            "\"PaxHeaders.0/pack.yaml\"",
            "pax extended header",
            &format!("{HUGE_HEADER} bytes"),
            "download.max_header_bytes",
        ] {
            assert!(error.contains(needle), "{needle} not in {error}");
        }
    }
}

register_test!(huge_pax_header_is_refused_before_it_is_read);
/// A 480 MiB pax header in a ~500 KB tar.gz used to be read into memory whole.
async fn huge_pax_header_is_refused_before_it_is_read() {
    let server = TestServer::start(Backend::Sqlite).await;
    let root = server.root.path().canonicalize().unwrap();
    let bomb = archives::tar_gz_with_huge_pax_header(HUGE_HEADER);
    assert!(bomb.len() < 600 * 1024, "{}", bomb.len());
    let source = root.join("bomb.tar.gz");
    std::fs::write(&source, &bomb).unwrap();
    let mut client = server.client().await;
    let started = Instant::now();
    let (r, growth) = peak_growth(client.download(request(&server, &[path_str(&source)]))).await;
    let elapsed = started.elapsed();
    assert_header_refused(&r.unwrap(), 1);
    assert!(elapsed < Duration::from_secs(10), "{elapsed:?}");
    assert!(growth < 100 * MIB, "peak RSS grew by {} MiB", growth / MIB);
    assert!(placed(&server).is_empty(), "{:?}", placed(&server));
    server.stop().await;
}

register_test!(concurrent_hostile_downloads_share_one_budget);
/// Three requests of four such archives at once: extractions are admitted through one
/// process-wide budget (here two at a time), memory stays bounded, and every slot is
/// given back.
async fn concurrent_hostile_downloads_share_one_budget() {
    let server =
        TestServer::start_with(Backend::Sqlite, |c| c.download.extract_concurrency = 2).await;
    let root = server.root.path().canonicalize().unwrap();
    let bomb = archives::tar_gz_with_huge_pax_header(HUGE_HEADER);
    let batches: Vec<Vec<String>> = (0..3)
        .map(|request| {
            (0..4)
                .map(|pack| {
                    let path = root.join(format!("bomb-{request}-{pack}.tar.gz"));
                    std::fs::write(&path, &bomb).unwrap();
                    path_str(&path)
                })
                .collect()
        })
        .collect();

    let budget = server.state.downloader.extract_budget().clone();
    let watching = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let watcher = {
        let (budget, watching) = (budget.clone(), watching.clone());
        std::thread::spawn(move || {
            let mut most = 0;
            while watching.load(std::sync::atomic::Ordering::Relaxed) {
                most = most.max(budget.running());
                std::thread::sleep(Duration::from_micros(200));
            }
            most
        })
    };
    let mut clients = Vec::new();
    for _ in &batches {
        clients.push(server.client().await);
    }
    let calls = clients
        .iter_mut()
        .zip(&batches)
        .map(|(client, packs)| client.download(request(&server, packs)));
    let (results, growth) = peak_growth(futures::future::join_all(calls)).await;
    watching.store(false, std::sync::atomic::Ordering::Relaxed);
    let most_running = watcher.join().unwrap();

    for r in results {
        assert_header_refused(&r.unwrap(), 4);
    }
    assert!(most_running <= 2, "{most_running} extractions ran at once");
    assert!(growth < 200 * MIB, "peak RSS grew by {} MiB", growth / MIB);
    assert_eq!(budget.running(), 0);
    assert_eq!(budget.reserved_bytes(), 0);
    assert!(placed(&server).is_empty(), "{:?}", placed(&server));
    server.stop().await;
}

register_test!(names_with_control_characters_are_refused_naming_the_entry);
/// `\r`, `\t` and ESC in entry names (tar, tar.gz, zip) are refused; the error shows
/// the name with its control characters escaped and carries none itself.
async fn names_with_control_characters_are_refused_naming_the_entry() {
    let server = TestServer::start(Backend::Sqlite).await;
    let root = server.root.path().canonicalize().unwrap();
    let names = ["fake\rline.txt", "tab\tname.txt", "esc\u{1b}[2Jclear.txt"];
    let mut cases = Vec::new();
    for (i, name) in names.iter().enumerate() {
        let tar = archives::tar_with_path_raw(name, b"x");
        for (ext, bytes) in [
            ("tar", tar.clone()),
            ("tar.gz", archives::gzip(&tar)),
            ("zip", archives::zip_with_path(name, b"x")),
        ] {
            let path = root.join(format!("names-{i}.{ext}"));
            std::fs::write(&path, bytes).unwrap();
            cases.push((path_str(&path), *name));
        }
    }
    let sources: Vec<String> = cases.iter().map(|(s, _)| s.clone()).collect();
    let mut client = server.client().await;
    let r = client.download(request(&server, &sources)).await.unwrap();
    assert_eq!(r.success_count, 0, "{:#?}", r.downloaded_packs);
    for (source, name) in &cases {
        let error = &r
            .failed_packs
            .iter()
            .find(|f| &f.source == source)
            .unwrap_or_else(|| panic!("{source} did not fail"))
            .error;
        let escaped = format!("{name:?}");
        assert!(
            error.contains(&escaped) && error.contains("control character"),
            "{source}: {error}"
        );
        assert!(!error.chars().any(char::is_control), "{error:?}");
    }
    assert!(placed(&server).is_empty(), "{:?}", placed(&server));
    server.stop().await;
}
