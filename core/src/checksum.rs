//! Pack checksums.
//!
//! * [`directory_checksum`]: the Attune directory checksum "attune-pack-file-v1"
//!   (64 lowercase hex characters, no prefix) of a directory on disk.
//! * [`DirectoryHasher`]: the same checksum computed *while* an archive is being
//!   extracted, so that extraction normally does not have to read the files back.
//! * [`Digest`] / [`DigestWriter`]: strict `sha256:` / `sha512:` digest strings and a
//!   writer that hashes an archive while it streams to disk.
//!
//! # The "attune-pack-file-v1" scheme
//!
//! Regular files only (directories are not hashed, so empty directories do not count);
//! any device, fifo or socket anywhere is an error; entries named `.git` are skipped at
//! any depth below the root (directory or file). A symbolic link whose target stays
//! inside the directory (resolved from the link's place, following further links, see
//! [`crate::packfs`]) is hashed as the file it resolves to, at the link's path, or as
//! the directory it resolves to (its files hashed below the link's path). So a
//! directory with such links and a copy of it in which every link was replaced by what
//! it points to (which is how packs are stored) have the same checksum. A link that
//! leaves the directory, points to nothing or is a loop (including a directory link to
//! a directory that contains it) is an error naming it. Each file's path relative
//! to the root is its components joined with `/`, every component valid UTF-8.
//!
//! Files are hashed in **component-wise order** (compare the paths component by
//! component, each component bytewise; Rust's `Path` ordering). This is what Attune's
//! Rust verifier uses and we follow the verifier. Note that the Python index builder
//! (`build_index.py`) sorts whole path *strings*, which differs when a directory name is
//! a prefix of a sibling followed by a byte below `/`: component order puts `lib/a.py`
//! before `lib-old.py` (and `actions/x.yaml` before `actions.md`); Python string order
//! puts them the other way round. Registry checksums produced by that builder for such
//! repositories will not match ours (nor Attune's). See [`compare_paths`].
//!
//! For each file, in order, one SHA-256 stream receives: the 19 ASCII bytes
//! `attune-pack-file-v1`, the path's byte length (u64 big-endian), the path bytes, the
//! file's length (u64 big-endian, from metadata) and the raw content. If the number of
//! bytes read differs from the metadata length the checksum fails ("file changed while
//! hashing").

use std::cmp::Ordering;
use std::fmt;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc;

use sha2::{Digest as _, Sha256, Sha512};

use crate::packfs::{EntryKind, PackDir, PackFile, PackFsError};

/// Domain separator written before every file.
const FILE_TAG: &[u8; 19] = b"attune-pack-file-v1";
/// Read size used when hashing files.
const READ_BUF: usize = 256 * 1024;
/// Buffers in flight between the reading thread and the hashing thread.
const BUFFERS_IN_FLIGHT: usize = 8;

/// Errors from checksum computation and digest parsing.
#[derive(Debug, thiserror::Error)]
pub enum ChecksumError {
    #[error("{path}: not a directory")]
    NotADirectory { path: PathBuf },
    #[error("{path}: {kind} files are not allowed in a pack (regular files and directories only)")]
    SpecialFile { path: PathBuf, kind: &'static str },
    #[error("{path}: file name is not valid UTF-8")]
    NonUtf8Path { path: PathBuf },
    #[error("{path}: file changed while hashing (expected {expected} bytes, read {actual})")]
    FileChanged {
        path: PathBuf,
        expected: u64,
        actual: u64,
    },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    Unreadable(PackFsError),
    #[error("invalid digest {input:?}: {reason}")]
    InvalidDigest { input: String, reason: String },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> ChecksumError + '_ {
    move |source| ChecksumError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// `"sha256:" + hex`, the form stored in provenance and registry indexes.
pub fn checksum_prefixed(hex: &str) -> String {
    format!("sha256:{hex}")
}

/// Component-wise ordering of `/`-joined relative paths (Rust `Path` ordering).
///
/// Equivalent to a bytewise comparison in which `/` sorts below every other byte
/// (components never contain `/` and are never empty). So `lib/x.py` < `lib-old.py`
/// here, whereas Python's `sorted()` on the strings gives the opposite order.
pub fn compare_paths(a: &str, b: &str) -> Ordering {
    let key = |c: u8| if c == b'/' { 0 } else { c };
    a.bytes().map(key).cmp(b.bytes().map(key))
}

fn hash_header(sha: &mut Sha256, path: &str, len: u64) {
    sha.update(FILE_TAG);
    sha.update((path.len() as u64).to_be_bytes());
    sha.update(path.as_bytes());
    sha.update(len.to_be_bytes());
}

fn hex_digest(sha: Sha256) -> String {
    hex::encode(sha.finalize())
}

// ---------------------------------------------------------------------------
// directory_checksum
// ---------------------------------------------------------------------------

/// The "attune-pack-file-v1" checksum of `dir` (64 lowercase hex characters).
///
/// See the module documentation for the exact definition. `dir` itself must not be a
/// link; a link inside it is hashed as what it resolves to, or is an error naming it
/// when it leaves `dir`, dangles or loops. A device, fifo or socket is an error naming
/// it; so is a file whose size changes while it is read.
///
/// Implementation: one walk (using `d_type`, no extra `stat` per entry), a sort with
/// [`compare_paths`], then a reading thread that opens files in order and reads them in
/// 256 KiB buffers while the calling thread hashes (SHA-NI when the CPU has it, detected
/// at run time by `sha2`). Buffers are recycled, so there is no per-file allocation of
/// content buffers.
pub fn directory_checksum(dir: &Path) -> Result<String, ChecksumError> {
    let (root, files, _) = collect(dir, LinkPolicy::Resolve)?;
    if files.len() <= SMALL_TREE_FILES {
        hash_files_sequentially(&root, &files, None)
    } else {
        hash_files_in_order(&root, &files, None)
    }
}

/// How a walk treats a symbolic link (or any entry that is neither a regular file nor
/// a directory).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkPolicy {
    /// As [`directory_checksum`]: a link inside the directory is hashed as what it
    /// resolves to; a link out, a device, fifo or socket is an error.
    Resolve,
    /// Nothing is followed: links and special files are listed in
    /// [`TreeDigest::irregular`] and left out of the checksum, names that are not
    /// UTF-8 too. For checking a stored pack, where none of them belongs (registration
    /// stores what links resolve to), so each is a finding rather than a failure.
    Report,
}

/// A directory's "attune-pack-file-v1" checksum with each file's own SHA-256,
/// computed in the same pass (each file is read once).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TreeDigest {
    /// 64 lowercase hex characters, as [`directory_checksum`].
    pub checksum: String,
    /// `(relative path, hex SHA-256 of the content)` of every regular file, in
    /// component order.
    pub files: Vec<(String, String)>,
    /// `(relative path, what it is)` of the entries [`LinkPolicy::Report`] left out.
    pub irregular: Vec<(String, &'static str)>,
}

/// [`directory_checksum`] and, from the same reads, the SHA-256 of every file.
pub fn directory_digest(dir: &Path, links: LinkPolicy) -> Result<TreeDigest, ChecksumError> {
    let (root, files, irregular) = collect(dir, links)?;
    let mut digests = Vec::with_capacity(files.len());
    let checksum = if files.len() <= SMALL_TREE_FILES {
        hash_files_sequentially(&root, &files, Some(&mut digests))?
    } else {
        hash_files_in_order(&root, &files, Some(&mut digests))?
    };
    Ok(TreeDigest {
        checksum,
        files: files
            .into_iter()
            .zip(digests.iter().map(hex::encode))
            .collect(),
        irregular,
    })
}

/// Opens `dir` and lists its files in component order (and, when `links` is
/// [`LinkPolicy::Report`], the entries left out).
#[allow(clippy::type_complexity)]
fn collect(
    dir: &Path,
    links: LinkPolicy,
) -> Result<(PackDir, Vec<String>, Vec<(String, &'static str)>), ChecksumError> {
    let root = PackDir::open(dir).map_err(refused)?;
    let mut files = Vec::new();
    let mut rel = String::new();
    let mut walk_state = Walk {
        limits: crate::packfs::tree_limits(),
        entries: 0,
        links,
        irregular: Vec::new(),
    };
    let mut ancestors = vec![root.identity().map_err(refused)?];
    walk_state.walk(&root, 0, &mut rel, &mut files, &mut ancestors)?;
    files.sort_unstable_by(|a, b| compare_paths(a, b));
    let mut irregular = walk_state.irregular;
    irregular.sort_unstable_by(|a, b| compare_paths(&a.0, &b.0));
    Ok((root, files, irregular))
}

/// The checksum's own error for what the pack's descriptor refused.
fn refused(e: PackFsError) -> ChecksumError {
    match e {
        PackFsError::Special { path, kind } => ChecksumError::SpecialFile { path, kind },
        PackFsError::NotADirectory { path } => ChecksumError::NotADirectory { path },
        other => ChecksumError::Unreadable(other),
    }
}

/// Below this many files, a reader thread and its buffers cost more than they save.
const SMALL_TREE_FILES: usize = 256;

/// Hashes the files one after the other on this thread with one reused buffer: the
/// fast path for typical packs (dozens of small files).
fn hash_files_sequentially(
    root: &PackDir,
    files: &[String],
    mut digests: Option<&mut Vec<[u8; 32]>>,
) -> Result<String, ChecksumError> {
    let mut sha = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    for rel in files {
        let mut own = digests.is_some().then(Sha256::new);
        let path = root.path().join(rel);
        let PackFile {
            file: mut f, len, ..
        } = root.open_file(rel).map_err(refused)?;
        hash_header(&mut sha, rel, len);
        let mut total = 0u64;
        loop {
            match f.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    sha.update(&buf[..n]);
                    if let Some(own) = &mut own {
                        own.update(&buf[..n]);
                    }
                    total += n as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(io_err(&path)(e)),
            }
        }
        if total != len {
            return Err(ChecksumError::FileChanged {
                path,
                expected: len,
                actual: total,
            });
        }
        if let (Some(digests), Some(own)) = (digests.as_deref_mut(), own) {
            digests.push(own.finalize().into());
        }
    }
    Ok(hex::encode(sha.finalize()))
}

/// Hashes the given `/`-joined relative paths under `root` in the given order.
fn hash_files_in_order(
    root: &PackDir,
    files: &[String],
    mut digests: Option<&mut Vec<[u8; 32]>>,
) -> Result<String, ChecksumError> {
    enum Msg {
        File(usize, u64),
        Data(Vec<u8>),
        Err(ChecksumError),
    }
    let (tx, rx) = mpsc::sync_channel::<Msg>(BUFFERS_IN_FLIGHT * 2);
    let (pool_tx, pool_rx) = mpsc::channel::<Vec<u8>>();
    for _ in 0..BUFFERS_IN_FLIGHT {
        let _ = pool_tx.send(vec![0u8; READ_BUF]);
    }
    let mut sha = Sha256::new();
    // The file being hashed on its own, when per-file digests are asked for.
    let mut own: Option<Sha256> = None;
    std::thread::scope(|s| {
        s.spawn(move || {
            let send_err = |e| {
                let _ = tx.send(Msg::Err(e));
            };
            let mut spare: Option<Vec<u8>> = None;
            for (i, rel) in files.iter().enumerate() {
                let path = root.path().join(rel);
                let (mut f, len) = match root.open_file(rel) {
                    Ok(opened) => (opened.file, opened.len),
                    Err(e) => return send_err(refused(e)),
                };
                if tx.send(Msg::File(i, len)).is_err() {
                    return;
                }
                let mut total = 0u64;
                loop {
                    let mut buf = match spare.take() {
                        Some(b) => b,
                        None => match pool_rx.recv() {
                            Ok(b) => b,
                            Err(_) => return,
                        },
                    };
                    buf.resize(READ_BUF, 0);
                    let mut filled = 0;
                    let mut eof = false;
                    while filled < buf.len() {
                        match f.read(&mut buf[filled..]) {
                            Ok(0) => {
                                eof = true;
                                break;
                            }
                            Ok(n) => filled += n,
                            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                            Err(e) => return send_err(io_err(&path)(e)),
                        }
                    }
                    total += filled as u64;
                    buf.truncate(filled);
                    if filled > 0 {
                        if tx.send(Msg::Data(buf)).is_err() {
                            return;
                        }
                    } else {
                        spare = Some(buf);
                    }
                    if eof {
                        break;
                    }
                }
                if total != len {
                    return send_err(ChecksumError::FileChanged {
                        path,
                        expected: len,
                        actual: total,
                    });
                }
            }
        });
        for msg in rx {
            match msg {
                Msg::File(i, len) => {
                    hash_header(&mut sha, &files[i], len);
                    if let Some(digests) = digests.as_deref_mut() {
                        if let Some(done) = own.take() {
                            digests.push(done.finalize().into());
                        }
                        own = Some(Sha256::new());
                    }
                }
                Msg::Data(buf) => {
                    sha.update(&buf);
                    if let Some(own) = &mut own {
                        own.update(&buf);
                    }
                    let _ = pool_tx.send(buf);
                }
                Msg::Err(e) => return Err(e),
            }
        }
        Ok(())
    })?;
    // `rx` was drained to the end: the reader finished without error.
    if let (Some(digests), Some(done)) = (digests, own) {
        digests.push(done.finalize().into());
    }
    Ok(hex_digest(sha))
}

/// The bounds of one checksum walk (`pack_files.max_entries`, `max_depth`), so that a
/// pack of a million empty files or ten thousand nested directories is refused
/// before it costs memory, descriptors or stack.
struct Walk {
    limits: crate::packfs::TreeLimits,
    entries: u64,
    links: LinkPolicy,
    /// What [`LinkPolicy::Report`] left out.
    irregular: Vec<(String, &'static str)>,
}

impl Walk {
    /// Collects the regular files below `dir` (at `depth` below the root), each
    /// directory opened beneath the root's descriptor (a directory swapped for a link
    /// out of the pack is refused, not followed). A link is collected as what it
    /// resolves to; `ancestors` are the directories being walked (device, inode), so
    /// that a directory link back to one of them is refused as a loop.
    fn walk(
        &mut self,
        dir: &PackDir,
        depth: u64,
        rel: &mut String,
        out: &mut Vec<String>,
        ancestors: &mut Vec<(u64, u64)>,
    ) -> Result<(), ChecksumError> {
        let listed = dir
            .entries_within(&self.limits, self.entries)
            .map_err(refused)?;
        self.entries += listed.len() as u64;
        for entry in listed {
            if entry.name == ".git" {
                continue;
            }
            let path = dir.path().join(&entry.name);
            let Some(name) = entry.name.to_str() else {
                if self.links == LinkPolicy::Report {
                    let lossy = entry.name.to_string_lossy();
                    let shown = if rel.is_empty() {
                        lossy.into_owned()
                    } else {
                        format!("{rel}/{lossy}")
                    };
                    self.irregular.push((shown, "file name that is not UTF-8"));
                    continue;
                }
                return Err(ChecksumError::NonUtf8Path { path });
            };
            let base = rel.len();
            if !rel.is_empty() {
                rel.push('/');
            }
            rel.push_str(name);
            let kind = match (entry.kind, self.links) {
                (EntryKind::File | EntryKind::Dir, _) => entry.kind,
                (other, LinkPolicy::Report) => {
                    self.irregular.push((rel.clone(), other.describe()));
                    rel.truncate(base);
                    continue;
                }
                (EntryKind::Symlink, LinkPolicy::Resolve) => {
                    dir.resolve_kind(name).map_err(refused)?.0
                }
                (other, LinkPolicy::Resolve) => other,
            };
            match kind {
                EntryKind::File => out.push(rel.clone()),
                EntryKind::Dir => {
                    if depth + 1 > self.limits.depth.value {
                        return Err(refused(self.limits.too_deep(path)));
                    }
                    let sub = dir.open_dir(name).map_err(refused)?;
                    let id = sub.identity().map_err(refused)?;
                    if ancestors.contains(&id) {
                        return Err(refused(dir.loop_at(name)));
                    }
                    ancestors.push(id);
                    self.walk(&sub, depth + 1, rel, out, ancestors)?;
                    ancestors.pop();
                }
                other => return Err(refused(other.refusal(path))),
            }
            rel.truncate(base);
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------
// DirectoryHasher: the checksum computed while extracting
// ---------------------------------------------------------------------------

/// Computes "attune-pack-file-v1" checksums while files are being written (one pass:
/// the content is hashed from the extraction buffer, never read back).
///
/// The framed scheme needs the files in sorted order and relative to the *pack root*,
/// while extraction sees them in archive order and the pack root is only known at the
/// end (it may be the archive root, `pack/`, `<top>/` or `<top>/pack/`). So the hasher
/// keeps one SHA-256 stream ("track") per candidate root and feeds every file to the
/// tracks it lies under (at most three per file). A track stays valid as long as its
/// files arrive in strictly increasing component order, which is the case for archives
/// written in sorted order and for almost all git-produced tarballs (git's tree order
/// only differs from ours for names like `lib/` vs `lib-old.py`). Once a `pack.yaml`
/// shows which root wins, the other tracks are dropped, so normally only one or two
/// streams are fed.
///
/// [`DirectoryHasher::checksum`] returns the streamed result when the track for the
/// requested root is valid, and otherwise falls back to [`directory_checksum`] on the
/// extracted tree (the page cache is warm then; re-reading 100 MB costs ~0.1–0.2 s,
/// versus seconds of disk writes). Either way the result equals `directory_checksum` of
/// the directory as extracted. Files modified after extraction are not seen by the
/// streamed result: call [`directory_checksum`] again in that case.
///
/// Protocol: [`begin_file`](Self::begin_file) with the path relative to the extraction
/// root and the size that will be written, any number of [`update`](Self::update)s,
/// then [`end_file`](Self::end_file) with the number of bytes actually written.
#[derive(Clone, Default)]
pub struct DirectoryHasher {
    tracks: Vec<Track>,
    /// Indices into `tracks` receiving the current file.
    current: Vec<usize>,
    /// A root `pack.yaml` was seen: only the root track matters from now on.
    root_decided: bool,
    /// `pack/pack.yaml` was seen: only the root and `pack/` tracks matter.
    pack_dir_decided: bool,
    files: u64,
}

#[derive(Clone)]
struct Track {
    /// `""`, `"top/"` or `"top/pack/"`.
    prefix: String,
    sha: Sha256,
    last: String,
    files: u64,
    valid: bool,
}

impl fmt::Debug for DirectoryHasher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let valid: Vec<&str> = self
            .tracks
            .iter()
            .filter(|t| t.valid)
            .map(|t| t.prefix.as_str())
            .collect();
        f.debug_struct("DirectoryHasher")
            .field("files", &self.files)
            .field("streamed_roots", &valid)
            .finish()
    }
}

impl DirectoryHasher {
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of files seen.
    pub fn files(&self) -> u64 {
        self.files
    }

    fn track(&mut self, prefix: &str) -> Option<usize> {
        if let Some(i) = self.tracks.iter().position(|t| t.prefix == prefix) {
            return self.tracks[i].valid.then_some(i);
        }
        if (self.root_decided && !prefix.is_empty())
            || (self.pack_dir_decided && !prefix.is_empty() && prefix != "pack/")
        {
            return None;
        }
        self.tracks.push(Track {
            prefix: prefix.to_string(),
            sha: Sha256::new(),
            last: String::new(),
            files: 0,
            valid: true,
        });
        Some(self.tracks.len() - 1)
    }

    /// Starts a regular file at `rel` (relative to the extraction root, `/`-separated,
    /// no `.`/`..`/empty components) that will have `size` bytes.
    pub fn begin_file(&mut self, rel: &str, size: u64) {
        self.files += 1;
        self.current.clear();
        if rel == "pack.yaml" && !self.root_decided {
            self.root_decided = true;
            self.tracks.retain(|t| t.prefix.is_empty());
        } else if rel == "pack/pack.yaml" && !self.root_decided && !self.pack_dir_decided {
            self.pack_dir_decided = true;
            self.tracks
                .retain(|t| t.prefix.is_empty() || t.prefix == "pack/");
        }
        let mut candidates: [Option<usize>; 3] = [None; 3];
        candidates[0] = self.track("");
        if let Some(slash) = rel.find('/') {
            candidates[1] = self.track(&rel[..=slash]);
            let rest = &rel[slash + 1..];
            if rest.starts_with("pack/") {
                candidates[2] = self.track(&rel[..slash + 6]);
            }
        }
        for i in candidates.into_iter().flatten() {
            let t = &mut self.tracks[i];
            let sub = &rel[t.prefix.len()..];
            if sub.split('/').any(|c| c == ".git") {
                continue;
            }
            if t.files > 0 && compare_paths(&t.last, sub) != Ordering::Less {
                // Out of order (or duplicate): this root falls back to re-reading.
                t.valid = false;
                continue;
            }
            t.last.clear();
            t.last.push_str(sub);
            t.files += 1;
            hash_header(&mut t.sha, sub, size);
            self.current.push(i);
        }
    }

    /// Content of the current file.
    pub fn update(&mut self, data: &[u8]) {
        for &i in &self.current {
            self.tracks[i].sha.update(data);
        }
    }

    /// Ends the current file; `written` is the number of bytes actually written. If it
    /// differs from the size given to `begin_file`, the affected roots fall back to
    /// re-reading.
    pub fn end_file(&mut self, declared: u64, written: u64) {
        if declared != written {
            for &i in &self.current {
                self.tracks[i].valid = false;
            }
        }
        self.current.clear();
    }

    /// The streamed checksum for files under `rel_root` ("" for the extraction root),
    /// if it could be streamed.
    pub fn streamed(&self, rel_root: &str) -> Option<String> {
        let prefix = if rel_root.is_empty() {
            String::new()
        } else {
            format!("{}/", rel_root.trim_end_matches('/'))
        };
        let t = self.tracks.iter().find(|t| t.prefix == prefix)?;
        t.valid.then(|| hex_digest(t.sha.clone()))
    }

    /// The checksum of `pack_root`, a directory at or below `extraction_root` (the
    /// directory the hashed files were extracted into). Uses the streamed result when
    /// available, else [`directory_checksum`] of `pack_root`.
    pub fn checksum(
        &self,
        extraction_root: &Path,
        pack_root: &Path,
    ) -> Result<String, ChecksumError> {
        let rel = pack_root.strip_prefix(extraction_root).ok().and_then(|r| {
            let parts: Option<Vec<&str>> = r.components().map(|c| c.as_os_str().to_str()).collect();
            parts.map(|p| p.join("/"))
        });
        if let Some(rel) = rel
            && let Some(hex) = self.streamed(&rel)
        {
            return Ok(hex);
        }
        directory_checksum(pack_root)
    }
}

// ---------------------------------------------------------------------------
// Digest strings and DigestWriter
// ---------------------------------------------------------------------------

/// The algorithms accepted in digest strings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DigestAlgorithm {
    Sha256,
    Sha512,
}

/// A strict digest string: `sha256:<64 lowercase hex>` or `sha512:<128 lowercase hex>`.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub enum Digest {
    Sha256([u8; 32]),
    Sha512([u8; 64]),
}

impl Digest {
    /// Parses `sha256:<64 lowercase hex>` or `sha512:<128 lowercase hex>`. Anything else
    /// (other algorithms such as md5/sha1, uppercase, missing prefix, wrong length) is
    /// rejected with a message saying why.
    pub fn parse(s: &str) -> Result<Digest, ChecksumError> {
        let bad = |reason: String| ChecksumError::InvalidDigest {
            input: s.to_string(),
            reason,
        };
        let Some((algo, hex_part)) = s.split_once(':') else {
            return Err(bad(
                "expected \"sha256:<hex>\" or \"sha512:<hex>\" (no algorithm prefix)".into(),
            ));
        };
        let want = match algo {
            "sha256" => 64,
            "sha512" => 128,
            "md5" | "sha1" | "MD5" | "SHA1" => {
                return Err(bad(format!(
                    "{algo} is not accepted: it is broken for integrity checking; use sha256 or sha512"
                )));
            }
            "SHA256" | "SHA512" | "Sha256" | "Sha512" => {
                return Err(bad("the algorithm name must be lowercase".into()));
            }
            other => {
                return Err(bad(format!(
                    "unsupported algorithm {other:?} (only sha256 and sha512)"
                )));
            }
        };
        if hex_part.len() != want {
            return Err(bad(format!(
                "{algo} needs {want} hex characters, got {}",
                hex_part.len()
            )));
        }
        if let Some(c) = hex_part
            .chars()
            .find(|c| !matches!(c, '0'..='9' | 'a'..='f'))
        {
            let reason = if c.is_ascii_hexdigit() {
                "hex digits must be lowercase".to_string()
            } else {
                format!("{c:?} is not a hex digit")
            };
            return Err(bad(reason));
        }
        Ok(if want == 64 {
            let mut b = [0u8; 32];
            hex::decode_to_slice(hex_part, &mut b).map_err(|e| bad(e.to_string()))?;
            Digest::Sha256(b)
        } else {
            let mut b = [0u8; 64];
            hex::decode_to_slice(hex_part, &mut b).map_err(|e| bad(e.to_string()))?;
            Digest::Sha512(b)
        })
    }

    pub fn algorithm(&self) -> DigestAlgorithm {
        match self {
            Digest::Sha256(_) => DigestAlgorithm::Sha256,
            Digest::Sha512(_) => DigestAlgorithm::Sha512,
        }
    }

    pub fn bytes(&self) -> &[u8] {
        match self {
            Digest::Sha256(b) => b,
            Digest::Sha512(b) => b,
        }
    }

    /// Lowercase hex without the prefix.
    pub fn hex(&self) -> String {
        hex::encode(self.bytes())
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let algo = match self {
            Digest::Sha256(_) => "sha256",
            Digest::Sha512(_) => "sha512",
        };
        write!(f, "{algo}:{}", self.hex())
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Digest({self})")
    }
}

impl std::str::FromStr for Digest {
    type Err = ChecksumError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Digest::parse(s)
    }
}

/// What a [`DigestWriter`] computed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Digests {
    /// Bytes that went through the writer (accepted by the inner writer).
    pub bytes: u64,
    pub sha256: Option<Digest>,
    pub sha512: Option<Digest>,
}

impl Digests {
    /// Whether the computed digest of `expected`'s algorithm equals `expected`
    /// (`false` if that algorithm was not computed).
    pub fn matches(&self, expected: &Digest) -> bool {
        let got = match expected.algorithm() {
            DigestAlgorithm::Sha256 => self.sha256.as_ref(),
            DigestAlgorithm::Sha512 => self.sha512.as_ref(),
        };
        got == Some(expected)
    }
}

/// A writer that hashes everything written through it (only the bytes the inner
/// writer accepted), e.g. an archive streaming from the network to disk, so that the
/// archive digest needs no second pass.
pub struct DigestWriter<W: Write> {
    inner: W,
    sha256: Option<Sha256>,
    sha512: Option<Sha512>,
    bytes: u64,
}

impl<W: Write> DigestWriter<W> {
    /// Computes both SHA-256 and SHA-512.
    pub fn new(inner: W) -> Self {
        Self::with_algorithms(inner, &[DigestAlgorithm::Sha256, DigestAlgorithm::Sha512])
    }

    /// Computes only the given algorithms.
    pub fn with_algorithms(inner: W, algorithms: &[DigestAlgorithm]) -> Self {
        Self {
            inner,
            sha256: algorithms
                .contains(&DigestAlgorithm::Sha256)
                .then(Sha256::new),
            sha512: algorithms
                .contains(&DigestAlgorithm::Sha512)
                .then(Sha512::new),
            bytes: 0,
        }
    }

    /// Computes only what is needed to check `expected`.
    pub fn for_digest(inner: W, expected: &Digest) -> Self {
        Self::with_algorithms(inner, &[expected.algorithm()])
    }

    pub fn get_ref(&self) -> &W {
        &self.inner
    }

    pub fn bytes_written(&self) -> u64 {
        self.bytes
    }

    /// Returns the inner writer (not flushed; flush first if it buffers) and the digests.
    pub fn finish(self) -> (W, Digests) {
        let sha256 = self.sha256.map(|h| Digest::Sha256(h.finalize().into()));
        let sha512 = self.sha512.map(|h| Digest::Sha512(h.finalize().into()));
        (
            self.inner,
            Digests {
                bytes: self.bytes,
                sha256,
                sha512,
            },
        )
    }
}

impl<W: Write> Write for DigestWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        let done = &buf[..n];
        if let Some(h) = &mut self.sha256 {
            h.update(done);
        }
        if let Some(h) = &mut self.sha512 {
            h.update(done);
        }
        self.bytes += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    fn write(root: &Path, rel: &str, content: &[u8]) {
        let p = root.join(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, content).unwrap();
    }

    #[test]
    fn sequential_and_threaded_hashing_agree() {
        let dir = tempfile::tempdir().unwrap();
        let mut files = Vec::new();
        for i in 0..40 {
            let rel = format!("d{}/f{i}.txt", i % 3);
            std::fs::create_dir_all(dir.path().join(format!("d{}", i % 3))).unwrap();
            std::fs::write(dir.path().join(&rel), vec![i as u8; i * 7919]).unwrap();
            files.push(rel);
        }
        files.sort_unstable_by(|a, b| compare_paths(a, b));
        let root = PackDir::open(dir.path()).unwrap();
        let threaded = hash_files_in_order(&root, &files, None).unwrap();
        assert_eq!(
            hash_files_sequentially(&root, &files, None).unwrap(),
            threaded
        );
        assert_eq!(directory_checksum(dir.path()).unwrap(), threaded);
        // Per-file digests from both paths agree with hashing each file alone.
        let (mut seq, mut thr) = (Vec::new(), Vec::new());
        hash_files_sequentially(&root, &files, Some(&mut seq)).unwrap();
        hash_files_in_order(&root, &files, Some(&mut thr)).unwrap();
        assert_eq!(seq, thr);
        for (rel, digest) in files.iter().zip(&seq) {
            let content = std::fs::read(dir.path().join(rel)).unwrap();
            assert_eq!(
                digest.as_slice(),
                Sha256::digest(&content).as_slice(),
                "{rel}"
            );
        }
    }

    #[test]
    fn test_vector() {
        let d = tempfile::tempdir().unwrap();
        write(d.path(), "nested/file.txt", b"fixture\n");
        assert_eq!(
            directory_checksum(d.path()).unwrap(),
            "e9837162383488cb9b187ea585ce8963634d7d04f75abeb0c43d5456de0d6b13"
        );
    }

    #[test]
    fn git_is_ignored_and_empty_dirs_do_not_count() {
        let d = tempfile::tempdir().unwrap();
        write(d.path(), "pack.yaml", b"ref: x\n");
        let before = directory_checksum(d.path()).unwrap();
        write(d.path(), ".git/HEAD", b"ref: refs/heads/main\n");
        write(d.path(), "sub/.git", b"gitdir: ../x\n");
        fs::create_dir_all(d.path().join("empty/deeper")).unwrap();
        assert_eq!(directory_checksum(d.path()).unwrap(), before);
        write(d.path(), ".git/HEAD", b"changed\n");
        assert_eq!(directory_checksum(d.path()).unwrap(), before);
    }

    #[test]
    fn framing_distinguishes_boundaries() {
        let a = tempfile::tempdir().unwrap();
        write(a.path(), "a", b"bc");
        write(a.path(), "d", b"");
        let b = tempfile::tempdir().unwrap();
        write(b.path(), "a", b"b");
        write(b.path(), "cd", b"");
        assert_ne!(
            directory_checksum(a.path()).unwrap(),
            directory_checksum(b.path()).unwrap()
        );
    }

    #[cfg(unix)]
    #[test]
    fn a_link_leaving_the_pack_is_an_error_naming_it() {
        use crate::packfs::LinkProblem;
        let d = tempfile::tempdir().unwrap();
        write(d.path(), "pack.yaml", b"x");
        std::os::unix::fs::symlink("/etc/passwd", d.path().join("sub-link")).unwrap();
        let e = directory_checksum(d.path()).unwrap_err();
        assert!(
            matches!(
                &e,
                ChecksumError::Unreadable(PackFsError::Link {
                    path,
                    problem: LinkProblem::Escapes,
                    ..
                }) if path.ends_with("sub-link")
            ),
            "{e}"
        );
        assert!(e.to_string().contains("sub-link"), "{e}");
        assert!(e.to_string().contains("leaves the pack"), "{e}");
        fs::remove_file(d.path().join("sub-link")).unwrap();
        std::os::unix::fs::symlink("../outside", d.path().join("up")).unwrap();
        let e = directory_checksum(d.path()).unwrap_err();
        assert!(e.to_string().contains("up' is a symbolic link"), "{e}");
        fs::remove_file(d.path().join("up")).unwrap();
        std::os::unix::fs::symlink("nothing.yaml", d.path().join("dangling")).unwrap();
        let e = directory_checksum(d.path()).unwrap_err();
        assert!(e.to_string().contains("dangling"), "{e}");
        assert!(e.to_string().contains("points to nothing"), "{e}");
        // The root itself being a symlink is refused.
        let l = tempfile::tempdir().unwrap();
        let link = l.path().join("root");
        std::os::unix::fs::symlink(a_dir(&d), &link).unwrap();
        assert!(matches!(
            directory_checksum(&link),
            Err(ChecksumError::SpecialFile {
                kind: "symbolic link",
                ..
            })
        ));
    }

    #[cfg(unix)]
    #[test]
    fn a_link_inside_the_pack_is_hashed_as_what_it_points_to() {
        use std::os::unix::fs::symlink;
        let linked = tempfile::tempdir().unwrap();
        let d = linked.path();
        write(d, "pack.yaml", b"ref: x\n");
        write(d, "x.yaml.example", b"full: true\n");
        write(d, "lib/a.py", b"a = 1\n");
        write(d, "lib/sub/b.py", b"b = 2\n");
        fs::create_dir_all(d.join("tests/fixtures")).unwrap();
        symlink("../../x.yaml.example", d.join("tests/fixtures/full.yaml")).unwrap();
        symlink("lib", d.join("lib2")).unwrap();
        let copy = tempfile::tempdir().unwrap();
        let c = copy.path();
        write(c, "pack.yaml", b"ref: x\n");
        write(c, "x.yaml.example", b"full: true\n");
        write(c, "lib/a.py", b"a = 1\n");
        write(c, "lib/sub/b.py", b"b = 2\n");
        write(c, "tests/fixtures/full.yaml", b"full: true\n");
        write(c, "lib2/a.py", b"a = 1\n");
        write(c, "lib2/sub/b.py", b"b = 2\n");
        assert_eq!(
            directory_checksum(d).unwrap(),
            directory_checksum(c).unwrap()
        );
        // The link is hashed by its path, not its target's: without it the sum differs.
        fs::remove_file(d.join("tests/fixtures/full.yaml")).unwrap();
        assert_ne!(
            directory_checksum(d).unwrap(),
            directory_checksum(c).unwrap()
        );
    }

    #[cfg(unix)]
    #[test]
    fn a_directory_link_to_its_own_ancestor_is_a_loop() {
        let d = tempfile::tempdir().unwrap();
        write(d.path(), "pack.yaml", b"x");
        write(d.path(), "lib/a.py", b"a");
        std::os::unix::fs::symlink("..", d.path().join("lib/up")).unwrap();
        let e = directory_checksum(d.path()).unwrap_err();
        assert!(e.to_string().contains("lib/up"), "{e}");
        assert!(e.to_string().contains("is a loop"), "{e}");
        fs::remove_file(d.path().join("lib/up")).unwrap();
        // Two directories linking to each other.
        write(d.path(), "b/b.txt", b"b");
        std::os::unix::fs::symlink("../b", d.path().join("lib/to_b")).unwrap();
        std::os::unix::fs::symlink("../lib", d.path().join("b/to_lib")).unwrap();
        let e = directory_checksum(d.path()).unwrap_err();
        assert!(e.to_string().contains("is a loop"), "{e}");
    }

    fn a_dir(d: &tempfile::TempDir) -> PathBuf {
        d.path().to_path_buf()
    }

    #[cfg(unix)]
    #[test]
    fn fifo_is_an_error() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("pipe");
        let st = std::process::Command::new("mkfifo").arg(&p).status();
        if !matches!(st, Ok(s) if s.success()) {
            return; // mkfifo unavailable
        }
        assert!(matches!(
            directory_checksum(d.path()),
            Err(ChecksumError::SpecialFile { kind: "fifo", .. })
        ));
    }

    #[test]
    fn component_order_not_string_order() {
        assert_eq!(compare_paths("lib/a.py", "lib-old.py"), Ordering::Less);
        assert_eq!(compare_paths("lib", "lib/a"), Ordering::Less);
        assert_eq!(compare_paths("a/b", "a/b/c"), Ordering::Less);
        assert_eq!(compare_paths("ab", "a/b"), Ordering::Greater);
        // Matches Rust's Path ordering.
        let mut v = vec![
            "lib-old.py",
            "lib/x.py",
            "actions.md",
            "actions/a.yaml",
            "a b",
        ];
        let mut w = v.clone();
        v.sort_by(|a, b| compare_paths(a, b));
        w.sort_by(|a, b| Path::new(a).cmp(Path::new(b)));
        assert_eq!(v, w);

        // And the checksum uses that order: hash manually in component order.
        let d = tempfile::tempdir().unwrap();
        write(d.path(), "lib-old.py", b"old");
        write(d.path(), "lib/x.py", b"x");
        let mut sha = Sha256::new();
        for (p, c) in [("lib/x.py", &b"x"[..]), ("lib-old.py", &b"old"[..])] {
            hash_header(&mut sha, p, c.len() as u64);
            sha.update(c);
        }
        assert_eq!(directory_checksum(d.path()).unwrap(), hex_digest(sha));
    }

    #[test]
    fn empty_dir_and_large_file() {
        let d = tempfile::tempdir().unwrap();
        assert_eq!(
            directory_checksum(d.path()).unwrap(),
            hex_digest(Sha256::new())
        );
        // Multi-buffer file.
        let big: Vec<u8> = (0..(READ_BUF * 3 + 17)).map(|i| (i % 251) as u8).collect();
        write(d.path(), "big.bin", &big);
        write(d.path(), "z", b"");
        let mut sha = Sha256::new();
        hash_header(&mut sha, "big.bin", big.len() as u64);
        sha.update(&big);
        hash_header(&mut sha, "z", 0);
        assert_eq!(directory_checksum(d.path()).unwrap(), hex_digest(sha));
    }

    #[test]
    fn streaming_hasher_matches_directory_checksum() {
        let d = tempfile::tempdir().unwrap();
        // A GitHub-style tarball layout, in git order (actions.md before actions/).
        let files: &[(&str, &[u8])] = &[
            ("repo-abc/.git/config", b"x"),
            ("repo-abc/README.md", b"readme"),
            ("repo-abc/actions.md", b"docs"),
            ("repo-abc/actions/a.yaml", b"a"),
            ("repo-abc/pack.yaml", b"ref: p\n"),
            ("repo-abc/zz/empty", b""),
        ];
        let mut h = DirectoryHasher::new();
        for (rel, c) in files {
            write(d.path(), rel, c);
            h.begin_file(rel, c.len() as u64);
            h.update(c);
            h.end_file(c.len() as u64, c.len() as u64);
        }
        let root = d.path().join("repo-abc");
        let want = directory_checksum(&root).unwrap();
        // Out of order for component order: the track was invalidated, fallback used.
        assert_eq!(h.streamed("repo-abc"), None);
        assert_eq!(h.checksum(d.path(), &root).unwrap(), want);

        // Sorted order: streamed, no re-read, same result.
        let mut sorted: Vec<_> = files.to_vec();
        sorted.sort_by(|a, b| compare_paths(a.0, b.0));
        let mut h = DirectoryHasher::new();
        for (rel, c) in &sorted {
            h.begin_file(rel, c.len() as u64);
            h.update(&c[..c.len() / 2]);
            h.update(&c[c.len() / 2..]);
            h.end_file(c.len() as u64, c.len() as u64);
        }
        assert_eq!(h.streamed("repo-abc").as_deref(), Some(want.as_str()));
        assert_eq!(
            h.streamed("").unwrap(),
            directory_checksum(d.path()).unwrap()
        );
        assert_eq!(h.checksum(d.path(), &root).unwrap(), want);
    }

    #[test]
    fn streaming_hasher_pack_subdir() {
        let d = tempfile::tempdir().unwrap();
        let files: &[(&str, &[u8])] = &[
            ("top/README", b"r"),
            ("top/pack/actions/x.sh", b"#!/bin/sh\n"),
            ("top/pack/pack.yaml", b"ref: p\n"),
        ];
        let mut h = DirectoryHasher::new();
        for (rel, c) in files {
            write(d.path(), rel, c);
            h.begin_file(rel, c.len() as u64);
            h.update(c);
            h.end_file(c.len() as u64, c.len() as u64);
        }
        let root = d.path().join("top/pack");
        let want = directory_checksum(&root).unwrap();
        assert_eq!(h.streamed("top/pack").as_deref(), Some(want.as_str()));
        // Size mismatch invalidates.
        let mut h2 = h.clone();
        h2.begin_file("top/pack/zz", 5);
        h2.update(b"abc");
        h2.end_file(5, 3);
        assert_eq!(h2.streamed("top/pack"), None);
    }

    #[test]
    fn digest_parsing() {
        let hex64 = "ab".repeat(32);
        let d = Digest::parse(&format!("sha256:{hex64}")).unwrap();
        assert_eq!(d.to_string(), format!("sha256:{hex64}"));
        let hex128 = "0f".repeat(64);
        let d = Digest::parse(&format!("sha512:{hex128}")).unwrap();
        assert_eq!(d.algorithm(), DigestAlgorithm::Sha512);
        assert_eq!(d.to_string(), format!("sha512:{hex128}"));

        let e = Digest::parse(&format!("md5:{}", "a".repeat(32))).unwrap_err();
        assert!(e.to_string().contains("md5 is not accepted"), "{e}");
        let e = Digest::parse(&format!("sha1:{}", "a".repeat(40))).unwrap_err();
        assert!(e.to_string().contains("sha1 is not accepted"), "{e}");
        let e = Digest::parse(&format!("sha256:{}", "AB".repeat(32))).unwrap_err();
        assert!(e.to_string().contains("lowercase"), "{e}");
        assert!(Digest::parse(&format!("SHA256:{hex64}")).is_err());
        assert!(Digest::parse(&hex64).is_err());
        assert!(Digest::parse(&format!("sha256:{}", &hex64[..62])).is_err());
        assert!(Digest::parse(&format!("sha256:{}", "g".repeat(64))).is_err());
        assert!(Digest::parse(&format!("sha512:{hex64}")).is_err());
    }

    #[test]
    fn digest_writer() {
        let data = b"hello world";
        let mut w = DigestWriter::new(Vec::new());
        w.write_all(&data[..5]).unwrap();
        w.write_all(&data[5..]).unwrap();
        let (out, d) = w.finish();
        assert_eq!(out, data);
        assert_eq!(d.bytes, 11);
        let s256 = Digest::parse(
            "sha256:b94d27b9934d3e08a52e52d7da7dabfac484efe37a5380ee9088f7ace2efcde9",
        )
        .unwrap();
        assert!(d.matches(&s256));
        assert_eq!(d.sha256, Some(s256));
        assert_eq!(d.sha512.unwrap().hex(), hex::encode(Sha512::digest(data)));
        let w = DigestWriter::for_digest(io::sink(), &s256);
        let (_, d) = w.finish();
        assert!(d.sha512.is_none());
        assert!(!d.matches(&s256));
    }

    #[test]
    fn prefixed() {
        assert_eq!(checksum_prefixed("ab"), "sha256:ab");
    }

    #[test]
    fn the_digest_is_the_checksum_plus_every_file() {
        for count in [3, SMALL_TREE_FILES + 5] {
            let d = tempfile::tempdir().unwrap();
            for i in 0..count {
                write(
                    d.path(),
                    &format!("sub/f{i}.txt"),
                    format!("content {i}").as_bytes(),
                );
            }
            write(d.path(), "pack.yaml", b"ref: x\n");
            let digest = directory_digest(d.path(), LinkPolicy::Resolve).unwrap();
            assert_eq!(digest.checksum, directory_checksum(d.path()).unwrap());
            assert_eq!(digest.files.len(), count + 1);
            let (path, hex) = digest
                .files
                .iter()
                .find(|(p, _)| p == "sub/f1.txt")
                .unwrap();
            assert_eq!(path, "sub/f1.txt");
            assert_eq!(*hex, hex::encode(Sha256::digest(b"content 1")));
            assert!(digest.irregular.is_empty());
        }
    }

    #[cfg(unix)]
    #[test]
    fn report_lists_links_and_follows_none() {
        let outside = tempfile::tempdir().unwrap();
        write(outside.path(), "secret", b"secret");
        let d = tempfile::tempdir().unwrap();
        write(d.path(), "pack.yaml", b"ref: x\n");
        write(d.path(), "lib/a.py", b"a");
        std::os::unix::fs::symlink(outside.path().join("secret"), d.path().join("lib/out"))
            .unwrap();
        std::os::unix::fs::symlink("lib", d.path().join("lib2")).unwrap();
        assert!(directory_digest(d.path(), LinkPolicy::Resolve).is_err());
        let digest = directory_digest(d.path(), LinkPolicy::Report).unwrap();
        let paths: Vec<&str> = digest.files.iter().map(|(p, _)| p.as_str()).collect();
        assert_eq!(paths, ["lib/a.py", "pack.yaml"]);
        assert_eq!(
            digest.irregular,
            [
                ("lib/out".to_string(), "symbolic link"),
                ("lib2".to_string(), "symbolic link")
            ]
        );
        // The checksum covers the regular files only.
        let plain = tempfile::tempdir().unwrap();
        write(plain.path(), "pack.yaml", b"ref: x\n");
        write(plain.path(), "lib/a.py", b"a");
        assert_eq!(digest.checksum, directory_checksum(plain.path()).unwrap());
    }

    #[test]
    fn the_walk_is_bounded_by_entries_and_depth() {
        let dir = tempfile::tempdir().unwrap();
        let mut deep = dir.path().to_path_buf();
        for _ in 0..(crate::packfs::DEFAULT_DEPTH + 1) {
            deep.push("d");
        }
        fs::create_dir_all(&deep).unwrap();
        let err = directory_checksum(dir.path()).unwrap_err().to_string();
        assert!(err.contains("levels of nested directories"), "{err}");
        assert!(err.contains("pack_files.max_depth"), "{err}");

        let wide = tempfile::tempdir().unwrap();
        for i in 0..=crate::packfs::DEFAULT_PACK_ENTRIES {
            fs::File::create(wide.path().join(i.to_string())).unwrap();
        }
        let err = directory_checksum(wide.path()).unwrap_err().to_string();
        assert!(err.contains("more than 20000 entries"), "{err}");
        assert!(err.contains("pack_files.max_entries"), "{err}");
    }
}
