//! Packs and archives that attack disk, memory, descriptors and threads by their
//! size and shape: a sparse 100 GiB file, too many entries, nesting ten thousand
//! levels deep, a local archive source that is a FIFO, a device or over the byte
//! cap, and a zip whose central directory is far larger than any pack needs. Each
//! is refused per pack, quickly, naming the limit and its setting, with nothing
//! written out and nothing left behind.

use std::{
    fs,
    os::fd::OwnedFd,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use attune_packs_client::pb;
use rustix::fs::{CWD, FileType, Mode, OFlags};

use crate::{
    common::{Backend, TestServer, on_both_backends, path_str, simple_pack, write_pack},
    support::memory::{MIB, peak_growth},
};

fn base(server: &TestServer) -> PathBuf {
    server.root.path().canonicalize().unwrap().join("base")
}

fn dest(server: &TestServer) -> PathBuf {
    server.root.path().canonicalize().unwrap().join("dest")
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

fn download_request(server: &TestServer, source: &Path) -> pb::DownloadRequest {
    pb::DownloadRequest {
        packs: vec![path_str(source)],
        destination_dir: path_str(&dest(server)),
        force: Some(true),
        ..Default::default()
    }
}

/// Everything below `dir` (names relative to it), or nothing when it does not exist.
fn leftovers(dir: &Path) -> Vec<String> {
    fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// Bytes the file system holding `dir` has free.
fn free_bytes(dir: &Path) -> u64 {
    let st = rustix::fs::statvfs(dir).unwrap();
    st.f_bavail * st.f_frsize
}

/// RegisterBatch of `pack` fails alone within `within`, with an error holding every
/// needle, and leaves nothing in the packs base directory and no rows.
async fn assert_register_refused(
    server: &TestServer,
    pack: &Path,
    within: Duration,
    needles: &[&str],
) {
    let mut client = server.client().await;
    let started = Instant::now();
    let r = client
        .register_batch(register_request(server, pack))
        .await
        .unwrap();
    let took = started.elapsed();
    assert!(took < within, "RegisterBatch took {took:?}");
    assert!(r.registered_packs.is_empty(), "{r:#?}");
    assert_eq!(r.failed_packs.len(), 1, "{r:#?}");
    let error = &r.failed_packs[0].error;
    for needle in needles {
        assert!(
            error.contains(needle),
            "RegisterBatch: no {needle:?} in: {error}"
        );
    }
    assert_eq!(leftovers(&base(server)), Vec::<String>::new());
    let name = pack.file_name().unwrap().to_str().unwrap();
    assert_eq!(
        server.state.db.registered_version(name).await.unwrap(),
        None
    );
}

/// Download of `source` fails alone within `within`, with an error holding every
/// needle, and places nothing (no staging directory left either).
async fn assert_download_refused(
    server: &TestServer,
    source: &Path,
    within: Duration,
    needles: &[&str],
) {
    let mut client = server.client().await;
    let started = Instant::now();
    let r = client
        .download(download_request(server, source))
        .await
        .unwrap();
    let took = started.elapsed();
    assert!(took < within, "Download took {took:?}");
    assert!(r.downloaded_packs.is_empty(), "{r:#?}");
    assert_eq!(r.failed_packs.len(), 1, "{r:#?}");
    let error = &r.failed_packs[0].error;
    for needle in needles {
        assert!(
            error.contains(needle),
            "Download: no {needle:?} in: {error}"
        );
    }
    assert_eq!(leftovers(&dest(server)), Vec::<String>::new());
}

/// A sparse 100 GiB file in a local pack was written out in full by both copies.
/// Now its `fstat` size refuses it before a byte is written: both calls answer in
/// seconds and the disk does not fill.
async fn sparse_huge_file_is_refused_before_it_is_copied(backend: Backend) {
    let server = TestServer::start(backend).await;
    let pack = write_pack(
        &server.packs_dir(),
        "sparse",
        &simple_pack("sparse", "1.0.0", &[]),
    );
    fs::create_dir(pack.join("data")).unwrap();
    fs::File::create(pack.join("data/huge.bin"))
        .unwrap()
        .set_len(100 * 1024 * MIB)
        .unwrap();
    let free_before = free_bytes(server.root.path());

    assert_register_refused(
        &server,
        &pack,
        Duration::from_secs(10),
        &["data/huge.bin", "104857600", "pack_files.max_file_bytes"],
    )
    .await;
    assert_download_refused(
        &server,
        &pack,
        Duration::from_secs(10),
        &["data/huge.bin", "104857600", "download.max_entry_bytes"],
    )
    .await;

    // Other tests write meanwhile; the copies would have written gigabytes.
    let used = free_before.saturating_sub(free_bytes(server.root.path()));
    assert!(used < 200 * MIB, "free space fell by {used} bytes");
    server.stop().await;
}
on_both_backends!(sparse_huge_file_is_refused_before_it_is_copied);

/// 20,001 empty files: one more than `pack_files.max_entries` and
/// `download.max_entries` allow. The listing stops at the limit.
async fn too_many_entries_are_refused(backend: Backend) {
    let server = TestServer::start(backend).await;
    let pack = write_pack(
        &server.packs_dir(),
        "many",
        &simple_pack("many", "1.0.0", &[]),
    );
    let data = pack.join("data");
    fs::create_dir(&data).unwrap();
    for i in 0..20_001 {
        fs::File::create(data.join(format!("f{i:05}"))).unwrap();
    }

    let (_, grown) = peak_growth(async {
        assert_register_refused(
            &server,
            &pack,
            Duration::from_secs(30),
            &["more than 20000 entries", "pack_files.max_entries"],
        )
        .await;
        assert_download_refused(
            &server,
            &pack,
            Duration::from_secs(30),
            &["more than 20000 entries", "download.max_entries"],
        )
        .await;
    })
    .await;
    assert!(grown < 100 * MIB, "the server grew by {grown} bytes");
    server.stop().await;
}
on_both_backends!(too_many_entries_are_refused);

/// Creates `levels` directories named `d`, each inside the previous, below `top`
/// (by descriptor: the path is far longer than `PATH_MAX`).
fn nest(top: &Path, levels: usize) {
    let dir_flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let mut fd: OwnedFd = rustix::fs::open(top, dir_flags, Mode::empty()).unwrap();
    for _ in 0..levels {
        rustix::fs::mkdirat(&fd, "d", Mode::from_raw_mode(0o755)).unwrap();
        fd = rustix::fs::openat(&fd, "d", dir_flags, Mode::empty()).unwrap();
    }
}

/// Removes a chain made by [`nest`] without recursion (a recursive removal would
/// hold a descriptor per level): the grandchild is moved up, the emptied child
/// removed, until the chain is gone.
fn unnest(top: &Path) {
    let dir_flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let fd = rustix::fs::open(top, dir_flags, Mode::empty()).unwrap();
    loop {
        let Ok(child) = rustix::fs::openat(&fd, "d", dir_flags, Mode::empty()) else {
            return;
        };
        if rustix::fs::renameat(&child, "d", &fd, "up").is_err() {
            drop(child);
            rustix::fs::unlinkat(&fd, "d", rustix::fs::AtFlags::REMOVEDIR).unwrap();
            return;
        }
        drop(child);
        rustix::fs::unlinkat(&fd, "d", rustix::fs::AtFlags::REMOVEDIR).unwrap();
        rustix::fs::renameat(&fd, "up", &fd, "d").unwrap();
    }
}

/// Directories nested 10,000 deep: refused at `pack_files.max_depth` (64) by both
/// copies within seconds, without opening a descriptor per level or recursing.
async fn deep_nesting_is_refused_quickly(backend: Backend) {
    let server = TestServer::start(backend).await;
    let pack = write_pack(
        &server.packs_dir(),
        "deep",
        &simple_pack("deep", "1.0.0", &[]),
    );
    nest(&pack, 10_000);

    assert_register_refused(
        &server,
        &pack,
        Duration::from_secs(10),
        &[
            "more than 64 levels of nested directories",
            "pack_files.max_depth",
        ],
    )
    .await;
    assert_download_refused(
        &server,
        &pack,
        Duration::from_secs(10),
        &[
            "more than 64 levels of nested directories",
            "pack_files.max_depth",
        ],
    )
    .await;
    unnest(&pack);
    server.stop().await;
}
on_both_backends!(deep_nesting_is_refused_quickly);

register_test!(a_fifo_or_device_as_a_local_archive_is_refused_at_once);
/// A local archive source that is a FIFO (its open used to wait for a writer) or a
/// character device (read for ever): refused within a second, naming what it is.
async fn a_fifo_or_device_as_a_local_archive_is_refused_at_once() {
    let server = TestServer::start(Backend::Sqlite).await;
    let fifo = server.packs_dir().join("pack.tar.gz");
    rustix::fs::mknodat(CWD, &fifo, FileType::Fifo, Mode::from_raw_mode(0o644), 0).unwrap();
    // The same device as /dev/zero, inside the allowed roots.
    let zero = server.packs_dir().join("zero.zip");
    rustix::fs::mknodat(
        CWD,
        &zero,
        FileType::CharacterDevice,
        Mode::from_raw_mode(0o644),
        rustix::fs::makedev(1, 5),
    )
    .unwrap();

    for (source, kind) in [(&fifo, "fifo"), (&zero, "character device")] {
        let shown = path_str(source);
        let needles = [shown.as_str(), kind, "was not read"];
        let refused = assert_download_refused(&server, source, Duration::from_secs(1), &needles);
        tokio::time::timeout(Duration::from_secs(10), refused)
            .await
            .expect("a download of a special file never answered");
    }
    server.stop().await;
}

register_test!(a_local_archive_over_the_byte_cap_is_refused_before_it_is_read);
/// A local archive larger than `download.max_archive_bytes` (sparse: it costs
/// nothing to make) is refused by its size before it is read.
async fn a_local_archive_over_the_byte_cap_is_refused_before_it_is_read() {
    let server = TestServer::start(Backend::Sqlite).await;
    let archive = server.packs_dir().join("big.tar.gz");
    let file = fs::File::create(&archive).unwrap();
    std::io::Write::write_all(&mut &file, &[0x1f, 0x8b, 8, 0]).unwrap();
    file.set_len(300 * MIB).unwrap();

    assert_download_refused(
        &server,
        &archive,
        Duration::from_secs(2),
        &["314572800 bytes", "268435456", "download.max_archive_bytes"],
    )
    .await;
    server.stop().await;
}

/// A zip of `entries` empty files whose central directory entries each carry a
/// 65,535-byte comment: a ~64 KiB central directory entry per file.
fn zip_with_huge_central_directory(entries: u32) -> Vec<u8> {
    let comment = vec![b'c'; 65_535];
    let mut out = Vec::new();
    let mut central = Vec::new();
    for i in 0..entries {
        let name = format!("f{i:05}");
        let offset = out.len() as u32;
        out.extend_from_slice(b"PK\x03\x04");
        out.extend_from_slice(&20u16.to_le_bytes()); // version needed
        out.extend_from_slice(&[0; 2 + 2 + 2 + 2 + 4 + 4 + 4]); // flags .. sizes
        out.extend_from_slice(&(name.len() as u16).to_le_bytes());
        out.extend_from_slice(&0u16.to_le_bytes()); // extra length
        out.extend_from_slice(name.as_bytes());

        central.extend_from_slice(b"PK\x01\x02");
        central.extend_from_slice(&0x031eu16.to_le_bytes()); // made by: Unix
        central.extend_from_slice(&20u16.to_le_bytes());
        central.extend_from_slice(&[0; 2 + 2 + 2 + 2 + 4 + 4 + 4]);
        central.extend_from_slice(&(name.len() as u16).to_le_bytes());
        central.extend_from_slice(&0u16.to_le_bytes()); // extra length
        central.extend_from_slice(&(comment.len() as u16).to_le_bytes());
        central.extend_from_slice(&[0; 2 + 2]); // disk, internal attributes
        central.extend_from_slice(&(0o100644u32 << 16).to_le_bytes());
        central.extend_from_slice(&offset.to_le_bytes());
        central.extend_from_slice(name.as_bytes());
        central.extend_from_slice(&comment);
    }
    let central_offset = out.len() as u32;
    let central_len = central.len() as u32;
    out.extend_from_slice(&central);
    out.extend_from_slice(b"PK\x05\x06");
    out.extend_from_slice(&[0; 4]); // disk numbers
    out.extend_from_slice(&(entries as u16).to_le_bytes());
    out.extend_from_slice(&(entries as u16).to_le_bytes());
    out.extend_from_slice(&central_len.to_le_bytes());
    out.extend_from_slice(&central_offset.to_le_bytes());
    out.extend_from_slice(&0u16.to_le_bytes());
    out
}

register_test!(a_zip_declaring_a_huge_central_directory_is_refused_before_it_is_read);
/// The zip crate reads the whole central directory into memory before any entry
/// can be judged; a 94 MiB one of 1,500 entries is refused from its end record,
/// before it is read, and the server's memory stays where it was.
async fn a_zip_declaring_a_huge_central_directory_is_refused_before_it_is_read() {
    let server = TestServer::start(Backend::Sqlite).await;
    let archive = server.packs_dir().join("comments.zip");
    fs::write(&archive, zip_with_huge_central_directory(1_500)).unwrap();

    let (_, grown) = peak_growth(assert_download_refused(
        &server,
        &archive,
        Duration::from_secs(5),
        &[
            "central directory declares",
            "bytes",
            "download.max_entries",
        ],
    ))
    .await;
    assert!(grown < 48 * MIB, "the server grew by {grown} bytes");
    server.stop().await;
}
