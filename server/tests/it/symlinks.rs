//! Symbolic links inside packs, from every source: a relative link that stays inside
//! the pack (as StackStorm packs ship `tests/fixtures/full.yaml ->
//! ../../<pack>.yaml.example`) is stored as the file it points to, and the recorded
//! checksum is the source tree's; a link that leaves the pack or points to nothing
//! refuses the pack naming the link, leaving nothing behind. Git over a loopback
//! daemon, tar.gz and zip over loopback HTTP, local directories (Download and
//! RegisterBatch), and a link swapped in while a copy runs.

use std::{
    io::{Cursor, Write},
    os::unix::fs::symlink,
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
};

use attune_packs_client::pb;
use attune_packs_server::{checksum::directory_checksum, config::Config};
use sqlx::Row;

use crate::{
    common::{Backend, TestServer, on_both_backends, path_str},
    support::{
        git::{GitDaemon, git, net_shared},
        http::FileServer,
        packs::write_tree,
    },
};

const FIXTURE_LINK: &str = "tests/fixtures/full.yaml";
const EXAMPLE: &str = "api_url: https://example.com\n";

/// A valid pack named `name` with an example configuration file and an action.
fn pack_files(name: &str) -> Vec<(String, String)> {
    vec![
        (
            "pack.yaml".into(),
            format!("ref: {name}\nname: {name}\nversion: 1.0.0\ndescription: linked\n"),
        ),
        (format!("{name}.yaml.example"), EXAMPLE.into()),
        (
            "actions/uptime.yaml".into(),
            "name: uptime\nrunner_type: local-shell-cmd\nparameters:\n  cmd:\n    \
             type: string\n    default: uptime\n"
                .into(),
        ),
    ]
}

/// How the fixture link of a test pack points.
#[derive(Clone, Copy, Debug)]
enum Link {
    /// `../../<name>.yaml.example`, inside.
    Inside,
    /// `../../../outside.txt`, which exists next to the pack.
    Escaping,
    /// `../../missing.yaml`.
    Dangling,
}

impl Link {
    fn target(self, name: &str) -> String {
        match self {
            Link::Inside => format!("../../{name}.yaml.example"),
            Link::Escaping => "../../../outside.txt".into(),
            Link::Dangling => "../../missing.yaml".into(),
        }
    }

    fn refusal(self) -> &'static str {
        match self {
            Link::Inside => "",
            Link::Escaping => "leaves the pack",
            Link::Dangling => "points to nothing",
        }
    }
}

/// Writes the pack `name` under `parent` with its fixture link (and an outside file
/// the escaping link reaches); returns the pack directory.
fn write_linked_pack(parent: &Path, name: &str, link: Link) -> PathBuf {
    let dir = parent.join(name);
    write_tree(&dir, &pack_files(name));
    std::fs::write(parent.join("outside.txt"), "OUTSIDE-MARKER\n").unwrap();
    std::fs::create_dir_all(dir.join("tests/fixtures")).unwrap();
    symlink(link.target(name), dir.join(FIXTURE_LINK)).unwrap();
    dir
}

fn dest(server: &TestServer) -> PathBuf {
    server.root.path().canonicalize().unwrap().join("dest")
}

fn base(server: &TestServer) -> PathBuf {
    server.root.path().canonicalize().unwrap().join("base")
}

fn download_request(server: &TestServer, sources: &[&str]) -> pb::DownloadRequest {
    pb::DownloadRequest {
        packs: sources.iter().map(|s| s.to_string()).collect(),
        destination_dir: path_str(&dest(server)),
        force: Some(true),
        ..Default::default()
    }
}

fn register_request(server: &TestServer, pack: &Path) -> pb::RegisterBatchRequest {
    pb::RegisterBatchRequest {
        pack_paths: vec![path_str(pack)],
        packs_base_dir: Some(path_str(&base(server))),
        force: Some(true),
        skip_tests: Some(true),
        ..Default::default()
    }
}

fn allow_http(config: &mut Config) {
    config.download.allow_http = true;
}

/// The stored fixture is a regular file (not a link) holding the example's content.
fn assert_stored_as_file(pack: &Path) {
    let stored = pack.join(FIXTURE_LINK);
    let meta = std::fs::symlink_metadata(&stored).unwrap();
    assert!(meta.is_file(), "{} is not a regular file", stored.display());
    assert_eq!(std::fs::read_to_string(&stored).unwrap(), EXAMPLE);
    assert_no_links(pack);
}

fn assert_no_links(dir: &Path) {
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let kind = entry.file_type().unwrap();
        assert!(!kind.is_symlink(), "{} is a link", entry.path().display());
        if kind.is_dir() {
            assert_no_links(&entry.path());
        }
    }
}

/// Entries of `dir` but the provenance records of placed packs (`.<ref>.source.json`):
/// nothing half-written may be left there.
fn listing(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| !(n.starts_with('.') && n.ends_with(".source.json")))
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

fn assert_refused(r: &pb::DownloadResult, source: &str, link: Link) {
    let failed = r
        .failed_packs
        .iter()
        .find(|f| f.source == source)
        .unwrap_or_else(|| panic!("{source} did not fail: {r:#?}"));
    assert!(
        failed.error.contains(&format!("'{FIXTURE_LINK}'"))
            || failed.error.contains(&format!("\"{FIXTURE_LINK}\"")),
        "the error does not name the link: {}",
        failed.error
    );
    assert!(failed.error.contains(link.refusal()), "{}", failed.error);
    assert!(!failed.error.contains("OUTSIDE-MARKER"), "{}", failed.error);
}

/// The bare repository `<repos>/<name>.git` with one commit of a linked pack; returns
/// the work tree it was made from (links and all).
fn linked_repo(repos: &Path, work: &Path, name: &str, link: Link) -> PathBuf {
    let dir = write_linked_pack(work, name, link);
    git(&dir, &["init", "-q"]);
    git(&dir, &["add", "-A"]);
    git(&dir, &["commit", "-q", "-m", "pack"]);
    crate::support::git::publish_bare(repos, &dir, &format!("{name}.git"));
    dir
}

register_test!(git_checkouts_store_inside_links_as_files_and_refuse_the_others);
async fn git_checkouts_store_inside_links_as_files_and_refuse_the_others() {
    let _net = net_shared();
    let repos = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let inside = linked_repo(repos.path(), work.path(), "ginside", Link::Inside);
    linked_repo(repos.path(), work.path(), "gescaping", Link::Escaping);
    linked_repo(repos.path(), work.path(), "gdangling", Link::Dangling);
    let daemon = GitDaemon::start(repos.path());
    let server = TestServer::start(Backend::Sqlite).await;
    let mut client = server.client().await;

    let url = daemon.url("ginside.git");
    let r = client
        .download(download_request(&server, &[&url]))
        .await
        .unwrap();
    assert_eq!(r.success_count, 1, "{:#?}", r.failed_packs);
    let p = &r.downloaded_packs[0];
    assert_stored_as_file(Path::new(&p.pack_path));
    // The source tree (its links followed; `.git` is skipped) has the same checksum.
    let source = format!("sha256:{}", directory_checksum(&inside).unwrap());
    assert_eq!(p.checksum.as_deref(), Some(source.as_str()));
    assert_eq!(
        source,
        format!(
            "sha256:{}",
            directory_checksum(Path::new(&p.pack_path)).unwrap()
        )
    );

    for (name, link) in [("gescaping", Link::Escaping), ("gdangling", Link::Dangling)] {
        let url = daemon.url(&format!("{name}.git"));
        let r = client
            .download(download_request(&server, &[&url]))
            .await
            .unwrap();
        assert_eq!(r.success_count, 0, "{name}: {:#?}", r.downloaded_packs);
        assert_refused(&r, &url, link);
        assert!(!listing(&dest(&server)).contains(&name.to_string()));
    }
    assert_eq!(listing(&dest(&server)), ["ginside"]);
    server.stop().await;
}

/// `entries` as a tar.gz under `top/`, links as symlink entries.
fn linked_tar_gz(top: &str, files: &[(String, String)], links: &[(&str, String)]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for (name, data) in files {
        let mut header = tar::Header::new_gnu();
        header.set_size(data.len() as u64);
        header.set_mode(0o644);
        header.set_entry_type(tar::EntryType::Regular);
        builder
            .append_data(&mut header, format!("{top}/{name}"), data.as_bytes())
            .unwrap();
    }
    for (name, target) in links {
        let mut header = tar::Header::new_gnu();
        header.set_size(0);
        header.set_mode(0o777);
        header.set_entry_type(tar::EntryType::Symlink);
        builder
            .append_link(&mut header, format!("{top}/{name}"), target)
            .unwrap();
    }
    let tar = builder.into_inner().unwrap();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&tar).unwrap();
    gz.finish().unwrap()
}

/// The same as a zip, links as entries with the `S_IFLNK` mode.
fn linked_zip(top: &str, files: &[(String, String)], links: &[(&str, String)]) -> Vec<u8> {
    let mut w = zip::ZipWriter::new(Cursor::new(Vec::new()));
    let options = zip::write::SimpleFileOptions::default().unix_permissions(0o644);
    for (name, data) in files {
        w.start_file(format!("{top}/{name}"), options).unwrap();
        w.write_all(data.as_bytes()).unwrap();
    }
    for (name, target) in links {
        w.add_symlink(format!("{top}/{name}"), target, options)
            .unwrap();
    }
    w.finish().unwrap().into_inner()
}

register_test!(archives_store_inside_links_as_files_and_refuse_the_others);
async fn archives_store_inside_links_as_files_and_refuse_the_others() {
    let _net = net_shared();
    let files = FileServer::start_http().await;
    let server = TestServer::start_with(Backend::Sqlite, allow_http).await;
    let mut client = server.client().await;
    type Build = fn(&str, &[(String, String)], &[(&str, String)]) -> Vec<u8>;
    let formats: [(&str, Build); 2] = [("tar.gz", linked_tar_gz), ("zip", linked_zip)];
    let mut placed = Vec::new();
    for (ext, build) in formats {
        let name = format!("a{}", ext.replace('.', ""));
        let mut pack = pack_files(&name);
        // The archive's top directory holds a file outside the pack root (`pack/`).
        let top_files: Vec<(String, String)> = pack
            .drain(..)
            .map(|(n, d)| (format!("pack/{n}"), d))
            .chain([("outside.txt".to_string(), "OUTSIDE-MARKER\n".to_string())])
            .collect();
        for link in [Link::Inside, Link::Escaping, Link::Dangling] {
            let target = match link {
                // From pack/tests/fixtures: `../../../outside.txt` is in the archive,
                // outside the pack root.
                Link::Escaping => "../../../outside.txt".to_string(),
                other => other.target(&name),
            };
            let bytes = build(
                "top",
                &top_files,
                &[(&format!("pack/{FIXTURE_LINK}"), target)],
            );
            let path = format!("/{name}-{link:?}.{ext}");
            files.put(&path, bytes);
            let url = files.url(&path);
            let r = client
                .download(download_request(&server, &[&url]))
                .await
                .unwrap();
            match link {
                Link::Inside => {
                    assert_eq!(r.success_count, 1, "{ext}: {:#?}", r.failed_packs);
                    let p = &r.downloaded_packs[0];
                    let stored = Path::new(&p.pack_path);
                    assert_stored_as_file(stored);
                    assert!(!stored.join("outside.txt").exists());
                    placed.push(name.clone());
                    // A tree written with the link has the recorded checksum.
                    let tree = tempfile::tempdir().unwrap();
                    let source = write_linked_pack(tree.path(), &name, Link::Inside);
                    assert_eq!(
                        p.checksum.clone().unwrap(),
                        format!("sha256:{}", directory_checksum(&source).unwrap()),
                        "{ext}"
                    );
                }
                refused => {
                    assert_refused(&r, &url, refused);
                    assert_eq!(listing(&dest(&server)), placed, "{ext} {refused:?}");
                }
            }
        }
    }
    server.stop().await;
}

async fn recorded_checksum(server: &TestServer, pack_ref: &str) -> String {
    use attune_packs_server::store::Db;
    let sql = "SELECT checksum FROM packs WHERE ref = $1";
    match &server.state.db {
        Db::Sqlite(pool) => sqlx::query(sql)
            .bind(pack_ref)
            .fetch_one(pool)
            .await
            .unwrap()
            .get(0),
        Db::Postgres(pool) => sqlx::query(sql)
            .bind(pack_ref)
            .fetch_one(pool)
            .await
            .unwrap()
            .get(0),
    }
}

/// A local directory with an inside link is downloaded and registered with the link
/// stored as a file and the source's checksum; escaping and dangling links refuse
/// the pack in both, naming the link, and leave nothing behind.
async fn local_directories_and_registration(backend: Backend) {
    let server = TestServer::start(backend).await;
    let packs = server.packs_dir();
    let mut client = server.client().await;

    let inside = write_linked_pack(&packs, "linside", Link::Inside);
    let source = format!("sha256:{}", directory_checksum(&inside).unwrap());
    let r = client
        .download(download_request(&server, &[&path_str(&inside)]))
        .await
        .unwrap();
    assert_eq!(r.success_count, 1, "{:#?}", r.failed_packs);
    assert_stored_as_file(Path::new(&r.downloaded_packs[0].pack_path));
    assert_eq!(
        r.downloaded_packs[0].checksum.as_deref(),
        Some(source.as_str())
    );
    // The source keeps its link.
    assert!(
        std::fs::symlink_metadata(inside.join(FIXTURE_LINK))
            .unwrap()
            .is_symlink()
    );

    let r = client
        .register_batch(register_request(&server, &inside))
        .await
        .unwrap();
    assert_eq!(r.registered_packs.len(), 1, "{:#?}", r.failed_packs);
    let stored = PathBuf::from(&r.registered_packs[0].storage_path);
    assert_stored_as_file(&stored);
    assert_eq!(recorded_checksum(&server, "linside").await, source);

    for (name, link) in [("lescaping", Link::Escaping), ("ldangling", Link::Dangling)] {
        let pack = write_linked_pack(&packs, name, link);
        let r = client
            .download(download_request(&server, &[&path_str(&pack)]))
            .await
            .unwrap();
        assert_refused(&r, &path_str(&pack), link);
        let r = client
            .register_batch(register_request(&server, &pack))
            .await
            .unwrap();
        assert!(r.registered_packs.is_empty(), "{r:#?}");
        let failed = &r.failed_packs[0];
        assert_eq!(failed.error_stage, "file_copy", "{failed:#?}");
        assert!(
            failed.error.contains(&format!("'{FIXTURE_LINK}'"))
                && failed.error.contains(link.refusal()),
            "{}",
            failed.error
        );
    }
    assert_eq!(listing(&dest(&server)), ["linside"]);
    assert_eq!(listing(&base(&server)), ["linside"]);
    server.stop().await;
}
on_both_backends!(local_directories_and_registration);

register_test!(a_link_target_swapped_during_a_copy_never_reads_outside_the_pack);
/// A thread swaps `pack/shared` between the real directory and a link out of the pack
/// while Download and RegisterBatch copy a pack whose `lib` is an inside link to
/// `shared`: a copy either fails naming a link or stores the real content; outside
/// content never reaches a stored pack.
async fn a_link_target_swapped_during_a_copy_never_reads_outside_the_pack() {
    let server = TestServer::start(Backend::Sqlite).await;
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(outside.path().join("real.txt"), "OUTSIDE-MARKER\n").unwrap();
    let pack = write_linked_pack(&server.packs_dir(), "racylink", Link::Inside);
    let shared = pack.join("shared");
    std::fs::create_dir(&shared).unwrap();
    std::fs::write(shared.join("real.txt"), "real\n").unwrap();
    symlink("shared", pack.join("lib")).unwrap();
    for i in 0..20 {
        std::fs::write(pack.join(format!("file{i}.txt")), "x".repeat(4096)).unwrap();
    }

    let stop = Arc::new(AtomicBool::new(false));
    let swaps = Arc::new(AtomicUsize::new(0));
    let swapper = {
        let (stop, swaps, shared) = (stop.clone(), swaps.clone(), shared.clone());
        let target = outside.path().to_path_buf();
        let parked = pack.join("shared.real");
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                std::fs::rename(&shared, &parked).unwrap();
                symlink(&target, &shared).unwrap();
                std::thread::yield_now();
                std::fs::remove_file(&shared).unwrap();
                std::fs::rename(&parked, &shared).unwrap();
                swaps.fetch_add(1, Ordering::Relaxed);
                std::thread::yield_now();
            }
        })
    };

    let mut client = server.client().await;
    let (mut copied, mut refused) = (0, 0);
    for _ in 0..50 {
        let r = client
            .download(download_request(&server, &[&path_str(&pack)]))
            .await
            .unwrap();
        match r.failed_packs.first() {
            Some(failed) => {
                assert!(!failed.error.contains("OUTSIDE-MARKER"), "{}", failed.error);
                refused += 1;
            }
            None => copied += 1,
        }
        let r = client
            .register_batch(register_request(&server, &pack))
            .await
            .unwrap();
        match r.failed_packs.first() {
            Some(_) => refused += 1,
            None => copied += 1,
        }
        for stored in [
            dest(&server).join("racylink"),
            base(&server).join("racylink"),
        ] {
            assert_no_outside_content(&stored);
        }
    }
    stop.store(true, Ordering::Relaxed);
    swapper.join().unwrap();
    assert!(swaps.load(Ordering::Relaxed) > 0);
    assert!(copied + refused == 100);
    server.stop().await;
}

fn assert_no_outside_content(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let kind = entry.file_type().unwrap();
        assert!(!kind.is_symlink(), "{} is a link", entry.path().display());
        if kind.is_dir() {
            assert_no_outside_content(&entry.path());
        } else {
            let content = std::fs::read(entry.path()).unwrap();
            assert!(
                !content
                    .windows(b"OUTSIDE-MARKER".len())
                    .any(|w| w == b"OUTSIDE-MARKER"),
                "outside content stored in {}",
                entry.path().display()
            );
        }
    }
}
