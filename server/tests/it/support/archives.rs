//! Test archives built in memory: tar, tar.gz and zip from a file list, with an
//! optional top-level directory (as GitHub's codeload archives have), and
//! hostile variants (symlinks, `../` and absolute paths) for extraction tests.
//!
//! Entries are `(path, content)` pairs; anything that is `AsRef<str>` and
//! `AsRef<[u8]>` works, so both `&[("pack.yaml", "ref: x")]` and the output of
//! [`super::packs::pack_files`] can be passed. Files whose name ends in `.sh` get
//! mode 0755, others 0644; parent directories get their own entries, like
//! `git archive` writes them. Timestamps are fixed, so the same input always
//! gives the same bytes (and checksum).

use std::collections::BTreeSet;
use std::io::{Cursor, Write};

use flate2::Compression;
use flate2::write::GzEncoder;
use tar::{EntryType, Header};
use zip::write::SimpleFileOptions;

/// 2024-01-01T00:00:00Z
const MTIME: u64 = 1_704_067_200;

fn file_mode(name: &str) -> u32 {
    if name.ends_with(".sh") { 0o755 } else { 0o644 }
}

/// `prefix/name`, or `name` without a prefix.
fn join(prefix: Option<&str>, name: &str) -> String {
    match prefix {
        Some(p) => format!("{}/{name}", p.trim_end_matches('/')),
        None => name.to_string(),
    }
}

/// Every directory above the given file paths (`a/`, `a/b/`), sorted, so that
/// parents come first.
fn parent_dirs<'a>(paths: impl Iterator<Item = &'a str>) -> BTreeSet<String> {
    let mut dirs = BTreeSet::new();
    for path in paths {
        let mut end = 0;
        while let Some(i) = path[end..].find('/') {
            end += i + 1;
            dirs.insert(path[..end].to_string());
        }
    }
    dirs
}

/// Full archive paths of `entries` under `prefix`.
fn full_paths<'a, N: AsRef<str>, D: AsRef<[u8]>>(
    prefix: Option<&str>,
    entries: &'a [(N, D)],
) -> Vec<(String, &'a [u8])> {
    entries
        .iter()
        .map(|(n, d)| (join(prefix, n.as_ref()), d.as_ref()))
        .collect()
}

// ---------------------------------------------------------------------------
// tar

/// A tar header with the fixed metadata of these archives.
fn tar_header(kind: EntryType, mode: u32, size: u64) -> Header {
    let mut header = Header::new_gnu();
    header.set_entry_type(kind);
    header.set_mode(mode);
    header.set_size(size);
    header.set_mtime(MTIME);
    header.set_uid(1000);
    header.set_gid(1000);
    header
}

/// An uncompressed tar of `entries` (with their parent directories).
pub fn tar<N: AsRef<str>, D: AsRef<[u8]>>(entries: &[(N, D)]) -> Vec<u8> {
    tar_in(None, entries)
}

/// Like [`tar`], with every path under the top-level directory `prefix`.
pub fn tar_in<N: AsRef<str>, D: AsRef<[u8]>>(prefix: Option<&str>, entries: &[(N, D)]) -> Vec<u8> {
    let files = full_paths(prefix, entries);
    let mut builder = tar::Builder::new(Vec::new());
    for dir in parent_dirs(files.iter().map(|(p, _)| p.as_str())) {
        let mut header = tar_header(EntryType::Directory, 0o755, 0);
        builder
            .append_data(&mut header, &dir, std::io::empty())
            .unwrap();
    }
    for (path, data) in &files {
        let mut header = tar_header(EntryType::Regular, file_mode(path), data.len() as u64);
        builder.append_data(&mut header, path, *data).unwrap();
    }
    builder.into_inner().unwrap()
}

/// A gzip-compressed tar of `entries`.
pub fn tar_gz<N: AsRef<str>, D: AsRef<[u8]>>(entries: &[(N, D)]) -> Vec<u8> {
    gzip(&tar(entries))
}

/// Like [`tar_gz`], under the top-level directory `prefix`.
pub fn tar_gz_in<N: AsRef<str>, D: AsRef<[u8]>>(
    prefix: Option<&str>,
    entries: &[(N, D)],
) -> Vec<u8> {
    gzip(&tar_in(prefix, entries))
}

/// gzip of `bytes` (e.g. of a hostile tar below).
pub fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = GzEncoder::new(Vec::new(), Compression::default());
    encoder.write_all(bytes).unwrap();
    encoder.finish().unwrap()
}

/// The pack every hostile archive carries next to its hostile entry, so that
/// the hostile entry is the only reason to refuse the archive.
const HOSTILE_PACK_YAML: &[u8] = b"ref: hostile\nlabel: hostile\nversion: \"1.0.0\"\n";

/// Uncompressed tar: `pack.yaml`, then a symlink `name -> target` (the target
/// may be absolute or contain `..`).
pub fn tar_with_symlink(name: &str, target: &str) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    append_pack_yaml(&mut builder);
    let mut header = tar_header(EntryType::Symlink, 0o777, 0);
    builder.append_link(&mut header, name, target).unwrap();
    builder.into_inner().unwrap()
}

/// Uncompressed tar: `pack.yaml`, then a hard link `name -> target`.
pub fn tar_with_hardlink(name: &str, target: &str) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    append_pack_yaml(&mut builder);
    let mut header = tar_header(EntryType::Link, 0o644, 0);
    builder.append_link(&mut header, name, target).unwrap();
    builder.into_inner().unwrap()
}

/// Uncompressed tar: `pack.yaml`, then a regular file whose header name is
/// `raw_path` byte for byte (the tar crate refuses `../evil` and `/abs` through
/// its normal API). `raw_path` must be shorter than 100 bytes.
pub fn tar_with_path_raw(raw_path: &str, data: &[u8]) -> Vec<u8> {
    let raw = raw_path.as_bytes();
    let mut header = tar_header(EntryType::Regular, 0o644, data.len() as u64);
    let name = &mut header.as_old_mut().name;
    assert!(raw.len() < name.len(), "raw tar path too long: {raw_path}");
    name.fill(0);
    name[..raw.len()].copy_from_slice(raw);
    header.set_cksum();
    let mut builder = tar::Builder::new(Vec::new());
    append_pack_yaml(&mut builder);
    builder.append(&header, data).unwrap();
    builder.into_inner().unwrap()
}

/// A gzip-compressed tar whose first member is a pax extended header declaring
/// `size` bytes (a multiple of 1 MiB) of repetitive content, then a pack. Built from
/// gzip members (one compressed MiB repeated; gzip readers concatenate members), so
/// the archive is a few hundred KiB however large the header claims to be.
pub fn tar_gz_with_huge_pax_header(size: u64) -> Vec<u8> {
    const MIB: u64 = 1024 * 1024;
    assert_eq!(size % MIB, 0, "size must be a multiple of 1 MiB");
    let mut header = tar_header(EntryType::XHeader, 0o644, size);
    header.set_path("PaxHeaders.0/pack.yaml").unwrap();
    header.set_cksum();
    let mut out = gzip(header.as_bytes());
    let one_mib = gzip(&vec![b'a'; MIB as usize]);
    for _ in 0..size / MIB {
        out.extend_from_slice(&one_mib);
    }
    let mut builder = tar::Builder::new(Vec::new());
    append_pack_yaml(&mut builder);
    out.extend_from_slice(&gzip(&builder.into_inner().unwrap()));
    out
}

fn append_pack_yaml(builder: &mut tar::Builder<Vec<u8>>) {
    let mut header = tar_header(EntryType::Regular, 0o644, HOSTILE_PACK_YAML.len() as u64);
    builder
        .append_data(&mut header, "pack.yaml", HOSTILE_PACK_YAML)
        .unwrap();
}

// ---------------------------------------------------------------------------
// zip

fn zip_options(mode: u32) -> SimpleFileOptions {
    let time = zip::DateTime::from_date_and_time(2024, 1, 1, 0, 0, 0).unwrap();
    SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated)
        .last_modified_time(time)
        .unix_permissions(mode)
}

type ZipWriter = zip::ZipWriter<Cursor<Vec<u8>>>;

fn zip_writer() -> ZipWriter {
    zip::ZipWriter::new(Cursor::new(Vec::new()))
}

fn zip_file(writer: &mut ZipWriter, name: &str, data: &[u8]) {
    writer
        .start_file(name, zip_options(file_mode(name)))
        .unwrap();
    writer.write_all(data).unwrap();
}

fn zip_finish(writer: ZipWriter) -> Vec<u8> {
    writer.finish().unwrap().into_inner()
}

/// A zip (deflate) of `entries` (with their parent directories).
pub fn zip<N: AsRef<str>, D: AsRef<[u8]>>(entries: &[(N, D)]) -> Vec<u8> {
    zip_in(None, entries)
}

/// Like [`zip`], with every path under the top-level directory `prefix`.
pub fn zip_in<N: AsRef<str>, D: AsRef<[u8]>>(prefix: Option<&str>, entries: &[(N, D)]) -> Vec<u8> {
    let files = full_paths(prefix, entries);
    let mut writer = zip_writer();
    for dir in parent_dirs(files.iter().map(|(p, _)| p.as_str())) {
        writer.add_directory(dir, zip_options(0o755)).unwrap();
    }
    for (path, data) in &files {
        zip_file(&mut writer, path, data);
    }
    zip_finish(writer)
}

/// A zip: `pack.yaml`, then a file stored under `raw_name` exactly
/// (`../evil`, `/abs`, `a\..\..\b`).
pub fn zip_with_path(raw_name: &str, data: &[u8]) -> Vec<u8> {
    let mut writer = zip_writer();
    zip_file(&mut writer, "pack.yaml", HOSTILE_PACK_YAML);
    zip_file(&mut writer, raw_name, data);
    zip_finish(writer)
}

/// A zip: `pack.yaml`, then a symlink `name -> target` (unix mode bits).
pub fn zip_with_symlink(name: &str, target: &str) -> Vec<u8> {
    let mut writer = zip_writer();
    zip_file(&mut writer, "pack.yaml", HOSTILE_PACK_YAML);
    writer
        .add_symlink(name, target, zip_options(0o777))
        .unwrap();
    zip_finish(writer)
}

mod smoke {
    use std::io::Read;

    use super::*;

    fn tar_paths(bytes: &[u8]) -> Vec<(String, EntryType)> {
        let mut archive = tar::Archive::new(bytes);
        archive
            .entries()
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                let path = String::from_utf8(e.path_bytes().to_vec()).unwrap();
                (path, e.header().entry_type())
            })
            .collect()
    }

    register_test!(sync tar_gz_with_prefix_is_deterministic);
    fn tar_gz_with_prefix_is_deterministic() {
        let entries = [("pack.yaml", "ref: a\n"), ("actions/run.sh", "#!/bin/sh\n")];
        let bytes = tar_gz_in(Some("a-1.0.0"), &entries);
        assert_eq!(bytes, tar_gz_in(Some("a-1.0.0"), &entries));
        let mut tar_bytes = Vec::new();
        flate2::read::GzDecoder::new(bytes.as_slice())
            .read_to_end(&mut tar_bytes)
            .unwrap();
        let paths: Vec<String> = tar_paths(&tar_bytes).into_iter().map(|(p, _)| p).collect();
        assert_eq!(
            paths,
            [
                "a-1.0.0/",
                "a-1.0.0/actions/",
                "a-1.0.0/pack.yaml",
                "a-1.0.0/actions/run.sh"
            ]
        );
    }

    register_test!(sync hostile_tars_keep_their_raw_paths);
    fn hostile_tars_keep_their_raw_paths() {
        let paths = tar_paths(&tar_with_path_raw("../evil", b"x"));
        assert_eq!(paths[1].0, "../evil");
        let paths = tar_paths(&tar_with_path_raw("/abs/evil", b"x"));
        assert_eq!(paths[1].0, "/abs/evil");
        let mut archive = tar::Archive::new(std::io::Cursor::new(tar_with_symlink("link", "/etc")));
        let entry = archive.entries().unwrap().nth(1).unwrap().unwrap();
        assert_eq!(entry.header().entry_type(), EntryType::Symlink);
        assert_eq!(entry.link_name().unwrap().unwrap().to_str(), Some("/etc"));
    }

    register_test!(sync zips_list_their_entries);
    fn zips_list_their_entries() {
        let bytes = zip_in(Some("p"), &[("pack.yaml", "ref: p\n")]);
        let mut archive = zip::ZipArchive::new(Cursor::new(bytes)).unwrap();
        assert_eq!(archive.len(), 2);
        let mut content = String::new();
        archive
            .by_name("p/pack.yaml")
            .unwrap()
            .read_to_string(&mut content)
            .unwrap();
        assert_eq!(content, "ref: p\n");

        let archive = zip::ZipArchive::new(Cursor::new(zip_with_path("../evil", b"x"))).unwrap();
        assert!(
            archive
                .file_names()
                .any(|n| n.is_ok_and(|n| n == "../evil"))
        );
        let mut archive = zip::ZipArchive::new(Cursor::new(zip_with_symlink("l", "../x"))).unwrap();
        assert!(archive.by_name("l").unwrap().is_symlink());
    }
}
