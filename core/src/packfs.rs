//! Reading a pack through descriptors.
//!
//! A pack directory is a tree that its author controls and may change while the
//! server reads it. Reading it by path would follow a `pack.yaml` symlinked to
//! `/dev/zero` or to a secret outside the allowed roots, block forever on a FIFO, and
//! follow a subdirectory swapped for a symlink halfway through a copy. So the pack
//! root is opened once ([`PackDir::open`], after [`crate::paths::PathPolicy::confine`]
//! judged its path) and everything below it is opened relative to that descriptor:
//!
//! * every name is resolved beneath the pack root's descriptor, with
//!   `openat2(RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS)` where the kernel has it,
//!   otherwise by walking the components with `openat(O_NOFOLLOW)` and reading each
//!   link met with `readlinkat`;
//! * files with `O_NONBLOCK` (a FIFO cannot block the open) and then `fstat`ed: only
//!   regular files are read; FIFOs, devices and sockets are refused, naming the path;
//! * read into memory under a cap ([`ReadCap`]) that names its setting.
//!
//! # Links
//!
//! The policy on links lives here ([`LinkProblem`], [`LINKS_RULE`] and the resolver):
//! a symbolic link is followed when its target, resolved from the link's directory
//! and following further links, stays beneath the **pack root** (not merely beneath
//! the directory a [`PackDir`] was opened as). A link with an absolute target, one
//! whose `..` climbs above the root, one that points to nothing and one that takes
//! more than [`MAX_LINK_HOPS`] hops are refused, and the error names the link (the one
//! on the path that was asked for, relative to the root) and why. With `openat2` the
//! kernel enforces this (`EXDEV`: escapes, `ENOENT`: dangling, `ELOOP`: loop); a
//! failed resolution is then walked again in user space to find the link to blame.
//! Walks over a tree ([`PackDir::entries`] lists links as links) decide what to do
//! with a link entry: the copies and the checksum treat it as the file or directory
//! it resolves to, and refuse a directory link that leads back to a directory being
//! walked (a cycle) as a loop.

use std::ffi::OsString;
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStringExt;
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, RwLock};

use rustix::fs::{AtFlags, FileType, Mode, OFlags, ResolveFlags};
use rustix::io::Errno;

/// Why a pack file could not be opened or read. Every variant names the path.
#[derive(Debug, thiserror::Error)]
pub enum PackFsError {
    #[error("'{path}' does not exist")]
    NotFound { path: PathBuf },
    /// A symbolic link that cannot be followed; `path` is the link (on the path that
    /// was asked for), `target` its text.
    #[error("'{path}' is a symbolic link to '{}' that {problem}; {LINKS_RULE}", target.display())]
    Link {
        path: PathBuf,
        target: PathBuf,
        problem: LinkProblem,
    },
    #[error(
        "'{path}' is a {kind}; packs may contain only regular files and directories, so it is not read"
    )]
    Special { path: PathBuf, kind: &'static str },
    #[error("'{path}' is a directory, not a regular file")]
    IsADirectory { path: PathBuf },
    #[error("'{path}' is not a directory")]
    NotADirectory { path: PathBuf },
    #[error("'{path}' must be a relative path inside the pack (no '..', not absolute)")]
    NotInside { path: PathBuf },
    #[error(
        "'{path}' is larger than {limit} bytes, the limit for {what} (setting {setting}); \
         it was not read"
    )]
    TooLarge {
        path: PathBuf,
        limit: u64,
        what: &'static str,
        setting: &'static str,
    },
    #[error("'{path}' is not valid UTF-8 (invalid byte at offset {offset})")]
    NotUtf8 { path: PathBuf, offset: usize },
    /// A walk over the pack (copy, checksum, listing) crossed one of its
    /// [`TreeLimits`]; `path` is where it was crossed.
    #[error("'{path}': the pack has more than {limit} {what} (setting {setting}); it was refused")]
    OverLimit {
        path: PathBuf,
        limit: u64,
        what: &'static str,
        setting: &'static str,
    },
    #[error("cannot read '{path}': {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

impl PackFsError {
    /// The path the error is about.
    pub fn path(&self) -> &Path {
        match self {
            PackFsError::NotFound { path }
            | PackFsError::Link { path, .. }
            | PackFsError::Special { path, .. }
            | PackFsError::IsADirectory { path }
            | PackFsError::NotADirectory { path }
            | PackFsError::NotInside { path }
            | PackFsError::TooLarge { path, .. }
            | PackFsError::NotUtf8 { path, .. }
            | PackFsError::OverLimit { path, .. }
            | PackFsError::Io { path, .. } => path,
        }
    }

    /// The same error with its path shown relative to `root` (a pack root), for
    /// messages about a pack.
    pub fn relative_to(mut self, root: &Path) -> Self {
        let path = match &mut self {
            PackFsError::NotFound { path }
            | PackFsError::Link { path, .. }
            | PackFsError::Special { path, .. }
            | PackFsError::IsADirectory { path }
            | PackFsError::NotADirectory { path }
            | PackFsError::NotInside { path }
            | PackFsError::TooLarge { path, .. }
            | PackFsError::NotUtf8 { path, .. }
            | PackFsError::OverLimit { path, .. }
            | PackFsError::Io { path, .. } => path,
        };
        if let Ok(rel) = path.strip_prefix(root) {
            *path = if rel.as_os_str().is_empty() {
                PathBuf::from(".")
            } else {
                rel.to_path_buf()
            };
        }
        self
    }

    pub fn is_not_found(&self) -> bool {
        matches!(self, PackFsError::NotFound { .. })
    }

    /// The message without the path (for reports that name the file separately).
    pub fn reason(&self) -> String {
        match self {
            PackFsError::NotFound { .. } => "does not exist".into(),
            PackFsError::Link {
                target, problem, ..
            } => format!(
                "is a symbolic link to '{}' that {problem}; {LINKS_RULE}",
                target.display()
            ),
            PackFsError::Special { kind, .. } => format!(
                "is a {kind}; packs may contain only regular files and directories, so it is not read"
            ),
            PackFsError::IsADirectory { .. } => "is a directory, not a regular file".into(),
            PackFsError::NotADirectory { .. } => "is not a directory".into(),
            PackFsError::NotInside { .. } => {
                "must be a relative path inside the pack (no '..', not absolute)".into()
            }
            PackFsError::TooLarge {
                limit,
                what,
                setting,
                ..
            } => format!(
                "is larger than {limit} bytes, the limit for {what} (setting {setting}); it was not read"
            ),
            PackFsError::NotUtf8 { offset, .. } => {
                format!("is not valid UTF-8 (invalid byte at offset {offset})")
            }
            PackFsError::OverLimit {
                limit,
                what,
                setting,
                ..
            } => format!(
                "the pack has more than {limit} {what} here (setting {setting}); it was refused"
            ),
            PackFsError::Io { source, .. } => format!("cannot be read: {source}"),
        }
    }
}

/// The rule on links, for messages.
pub const LINKS_RULE: &str = "a link in a pack must point to a file or directory inside the pack";

/// Links followed to resolve one name, at most (Linux's `MAXSYMLINKS`, what
/// `openat2` allows too); one more is a loop.
pub const MAX_LINK_HOPS: u32 = 40;

/// Why a symbolic link of a pack is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkProblem {
    /// Absolute target, `..` above the pack root, or a chain that does either.
    Escapes,
    /// Resolves to nothing (or through a file as if it were a directory).
    Dangling,
    /// More than [`MAX_LINK_HOPS`] links, or a directory link back to a directory
    /// that contains it.
    Loop,
}

impl std::fmt::Display for LinkProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            LinkProblem::Escapes => "leaves the pack",
            LinkProblem::Dangling => "points to nothing",
            LinkProblem::Loop => "is a loop",
        })
    }
}

/// How many bytes a read into memory may take, and the setting that says so.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadCap {
    pub bytes: u64,
    /// What is being read, for the message ("pack.yaml").
    pub what: &'static str,
    /// The configuration key of the limit, for the message.
    pub setting: &'static str,
}

/// The caps of the `pack_files` settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PackReadLimits {
    pub manifest_bytes: u64,
    pub component_bytes: u64,
    pub other_bytes: u64,
}

pub const DEFAULT_MANIFEST_BYTES: u64 = 1024 * 1024;
pub const DEFAULT_COMPONENT_BYTES: u64 = 1024 * 1024;
pub const DEFAULT_OTHER_BYTES: u64 = 16 * 1024 * 1024;

impl Default for PackReadLimits {
    fn default() -> Self {
        Self {
            manifest_bytes: DEFAULT_MANIFEST_BYTES,
            component_bytes: DEFAULT_COMPONENT_BYTES,
            other_bytes: DEFAULT_OTHER_BYTES,
        }
    }
}

impl PackReadLimits {
    pub fn manifest(&self) -> ReadCap {
        ReadCap {
            bytes: self.manifest_bytes,
            what: "pack.yaml",
            setting: "pack_files.max_manifest_bytes",
        }
    }

    pub fn component(&self) -> ReadCap {
        ReadCap {
            bytes: self.component_bytes,
            what: "a component file",
            setting: "pack_files.max_component_bytes",
        }
    }

    /// requirements.txt, package.json, lock files, test results, metadata.
    pub fn other(&self) -> ReadCap {
        ReadCap {
            bytes: self.other_bytes,
            what: "a pack file read into memory",
            setting: "pack_files.max_other_bytes",
        }
    }
}

/// One bound of a walk over a pack tree and the setting that sets it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TreeLimit {
    pub value: u64,
    pub setting: &'static str,
}

/// Bounds on walking a pack directory: copies (Download of a local directory,
/// RegisterBatch's and Install's staged copy), the directory checksum and listings.
/// A walk that crosses one stops there, so a pack of a million empty files or ten
/// thousand nested directories costs at most these bounds in memory, descriptors
/// and time, and a sparse file is refused by its `fstat` size before a byte is
/// written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TreeLimits {
    /// Sum of the sizes of the files copied.
    pub total_bytes: TreeLimit,
    /// Files and directories of one walk (and of one directory listing).
    pub entries: TreeLimit,
    /// Size of one file copied.
    pub file_bytes: TreeLimit,
    /// Directories nested below the pack root.
    pub depth: TreeLimit,
}

pub const DEFAULT_PACK_BYTES: u64 = 512 * 1024 * 1024;
pub const DEFAULT_PACK_ENTRIES: u64 = 20_000;
pub const DEFAULT_FILE_BYTES: u64 = 100 * 1024 * 1024;
pub const DEFAULT_DEPTH: u64 = 64;

impl TreeLimits {
    /// The `pack_files` defaults.
    pub const DEFAULT: TreeLimits = TreeLimits::from_pack_files(
        DEFAULT_PACK_BYTES,
        DEFAULT_PACK_ENTRIES,
        DEFAULT_FILE_BYTES,
        DEFAULT_DEPTH,
    );

    /// The limits the `pack_files` settings give (registration copies, checksums,
    /// listings).
    pub const fn from_pack_files(
        total_bytes: u64,
        entries: u64,
        file_bytes: u64,
        depth: u64,
    ) -> TreeLimits {
        TreeLimits {
            total_bytes: TreeLimit {
                value: total_bytes,
                setting: "pack_files.max_pack_bytes",
            },
            entries: TreeLimit {
                value: entries,
                setting: "pack_files.max_entries",
            },
            file_bytes: TreeLimit {
                value: file_bytes,
                setting: "pack_files.max_file_bytes",
            },
            depth: TreeLimit {
                value: depth,
                setting: "pack_files.max_depth",
            },
        }
    }

    /// The entry limit as a [`PackFsError::OverLimit`] at `path`.
    pub fn too_many_entries(&self, path: PathBuf) -> PackFsError {
        PackFsError::OverLimit {
            path,
            limit: self.entries.value,
            what: "entries (files and directories)",
            setting: self.entries.setting,
        }
    }

    /// The depth limit as a [`PackFsError::OverLimit`] at `path`.
    pub fn too_deep(&self, path: PathBuf) -> PackFsError {
        PackFsError::OverLimit {
            path,
            limit: self.depth.value,
            what: "levels of nested directories",
            setting: self.depth.setting,
        }
    }

    /// The total-size limit as a [`PackFsError::OverLimit`] at `path`.
    pub fn too_many_bytes(&self, path: PathBuf) -> PackFsError {
        PackFsError::OverLimit {
            path,
            limit: self.total_bytes.value,
            what: "bytes in its files",
            setting: self.total_bytes.setting,
        }
    }

    /// The one-file limit as a [`PackFsError::TooLarge`] for `path`.
    pub fn file_too_large(&self, path: PathBuf) -> PackFsError {
        PackFsError::TooLarge {
            path,
            limit: self.file_bytes.value,
            what: "one file of a pack",
            setting: self.file_bytes.setting,
        }
    }
}

static TREE_LIMITS: RwLock<TreeLimits> = RwLock::new(TreeLimits::DEFAULT);

/// Sets the limits of pack walks for the whole process (called once at startup with
/// the configured `pack_files` values).
pub fn install_tree_limits(limits: TreeLimits) {
    *TREE_LIMITS.write().unwrap_or_else(|e| e.into_inner()) = limits;
}

/// The `pack_files` walk limits in force in this process.
pub fn tree_limits() -> TreeLimits {
    *TREE_LIMITS.read().unwrap_or_else(|e| e.into_inner())
}

/// What an entry is, judged without following links.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryKind {
    File,
    Dir,
    Symlink,
    Fifo,
    Socket,
    CharDevice,
    BlockDevice,
    Unknown,
}

impl EntryKind {
    fn of(file_type: FileType) -> Self {
        match file_type {
            FileType::RegularFile => EntryKind::File,
            FileType::Directory => EntryKind::Dir,
            FileType::Symlink => EntryKind::Symlink,
            FileType::Fifo => EntryKind::Fifo,
            FileType::Socket => EntryKind::Socket,
            FileType::CharacterDevice => EntryKind::CharDevice,
            FileType::BlockDevice => EntryKind::BlockDevice,
            FileType::Unknown => EntryKind::Unknown,
        }
    }

    /// "fifo", "character device", ... for messages.
    pub fn describe(self) -> &'static str {
        match self {
            EntryKind::File => "regular file",
            EntryKind::Dir => "directory",
            EntryKind::Symlink => "symbolic link",
            EntryKind::Fifo => "fifo",
            EntryKind::Socket => "socket",
            EntryKind::CharDevice => "character device",
            EntryKind::BlockDevice => "block device",
            EntryKind::Unknown => "special file",
        }
    }

    /// The refusal of an entry that is neither a regular file nor a directory.
    pub fn refusal(self, path: PathBuf) -> PackFsError {
        match self {
            EntryKind::Dir => PackFsError::IsADirectory { path },
            other => PackFsError::Special {
                path,
                kind: other.describe(),
            },
        }
    }
}

/// One entry of a directory listing.
#[derive(Debug, Clone)]
pub struct DirEntry {
    pub name: OsString,
    pub kind: EntryKind,
    /// Size in bytes as listed (0 for anything but regular files).
    pub len: u64,
}

/// A regular file of the pack, opened and checked.
#[derive(Debug)]
pub struct PackFile {
    pub file: File,
    /// Size from `fstat` of the opened file.
    pub len: u64,
    /// Permission bits (`0o7777`) from `fstat`.
    pub mode: u32,
}

/// How names below the root are resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Resolver {
    /// One `openat2` call confined by the kernel.
    Openat2,
    /// Component by component with `openat(O_NOFOLLOW)` (kernels before 5.6, or
    /// sandboxes that filter `openat2`).
    Walk,
}

const RESOLVER_UNKNOWN: u8 = 0;
const RESOLVER_OPENAT2: u8 = 1;
const RESOLVER_WALK: u8 = 2;
/// Learnt on the first `openat2` call of the process.
static RESOLVER: AtomicU8 = AtomicU8::new(RESOLVER_UNKNOWN);

/// `BENEATH` keeps every step of the resolution, links included, beneath the root
/// (`..` above it and absolute targets fail with `EXDEV`); links are followed
/// otherwise, `/proc`-style magic links never.
const RESOLVE: ResolveFlags = ResolveFlags::BENEATH.union(ResolveFlags::NO_MAGICLINKS);

const DIR_FLAGS: OFlags = OFlags::RDONLY
    .union(OFlags::DIRECTORY)
    .union(OFlags::NOFOLLOW)
    .union(OFlags::CLOEXEC)
    .union(OFlags::NONBLOCK);
/// `NONBLOCK`: opening a FIFO for reading would otherwise wait for a writer.
/// `NOCTTY`: a terminal device must not become our controlling terminal.
const FILE_FLAGS: OFlags = OFlags::RDONLY
    .union(OFlags::NOFOLLOW)
    .union(OFlags::CLOEXEC)
    .union(OFlags::NONBLOCK)
    .union(OFlags::NOCTTY);
/// A handle that only names what it resolves to (for `fstat`): opening it reads
/// nothing and cannot block.
const PATH_FLAGS: OFlags = OFlags::PATH.union(OFlags::NOFOLLOW).union(OFlags::CLOEXEC);

/// An opened pack directory (the root, or a directory below it). Everything opened
/// through it is resolved beneath the pack root it was opened from.
#[derive(Debug)]
pub struct PackDir {
    fd: OwnedFd,
    /// The pack root, which every name is resolved beneath.
    root: Arc<OwnedFd>,
    /// The root's path, for messages only.
    root_path: PathBuf,
    /// This directory relative to the root, as it was asked for (it may go through
    /// links inside the pack).
    prefix: PathBuf,
    /// For messages only: never used to open anything.
    path: PathBuf,
    resolver: Resolver,
}

/// A name being resolved by the walk: from the path asked for, or from a link's
/// target.
struct Step {
    name: OsString,
    asked: bool,
}

impl PackDir {
    /// Opens the directory `path` (already confined by the caller) as a pack root.
    /// Its last component must not be a link.
    pub fn open(path: &Path) -> Result<PackDir, PackFsError> {
        Self::open_with(path, Resolver::current())
    }

    fn open_with(path: &Path, resolver: Resolver) -> Result<PackDir, PackFsError> {
        match rustix::fs::open(path, DIR_FLAGS, Mode::empty()) {
            Ok(fd) => {
                let root = rustix::io::fcntl_dupfd_cloexec(&fd, 0)
                    .map_err(|e| io_error(path.to_path_buf(), e))?;
                Ok(PackDir {
                    fd,
                    root: Arc::new(root),
                    root_path: path.to_path_buf(),
                    prefix: PathBuf::new(),
                    path: path.to_path_buf(),
                    resolver,
                })
            }
            // The root is named by path: a link there is not the pack's to resolve.
            Err(Errno::LOOP) => Err(PackFsError::Special {
                path: path.to_path_buf(),
                kind: "symbolic link",
            }),
            Err(errno) => Err(classify_open_error(errno, path, || {
                rustix::fs::statat(rustix::fs::CWD, path, AtFlags::SYMLINK_NOFOLLOW)
            })),
        }
    }

    /// The path this directory was opened as (for messages).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The path of the pack root this directory was opened from (for messages).
    pub fn root_path(&self) -> &Path {
        &self.root_path
    }

    /// Where the opened directory is now, as the kernel names it; `None` without
    /// `/proc`.
    pub fn real_path(&self) -> Option<PathBuf> {
        std::fs::read_link(format!("/proc/self/fd/{}", self.fd.as_raw_fd())).ok()
    }

    /// The device and inode of the opened directory: two directories reached by
    /// different names (through links) are the same when these are.
    pub fn identity(&self) -> Result<(u64, u64), PackFsError> {
        let stat = rustix::fs::fstat(&self.fd).map_err(|e| io_error(self.path.clone(), e))?;
        Ok((stat.st_dev as u64, stat.st_ino as u64))
    }

    /// Opens the directory `rel` below this one, following links inside the pack.
    pub fn open_dir(&self, rel: impl AsRef<Path>) -> Result<PackDir, PackFsError> {
        let rel = rel.as_ref();
        let path = self.path.join(rel);
        let fd = self.open_beneath(rel, DIR_FLAGS)?;
        Ok(PackDir {
            fd,
            root: self.root.clone(),
            root_path: self.root_path.clone(),
            prefix: self.prefix.join(rel),
            path,
            resolver: self.resolver,
        })
    }

    /// Opens the regular file `rel` below this directory, following links inside the
    /// pack; anything else (FIFO, device, socket, directory) is refused without
    /// blocking.
    pub fn open_file(&self, rel: impl AsRef<Path>) -> Result<PackFile, PackFsError> {
        let rel = rel.as_ref();
        let fd = self.open_beneath(rel, FILE_FLAGS)?;
        let stat = rustix::fs::fstat(&fd).map_err(|e| io_error(self.path.join(rel), e))?;
        let kind = EntryKind::of(FileType::from_raw_mode(stat.st_mode));
        if kind != EntryKind::File {
            return Err(kind.refusal(self.path.join(rel)));
        }
        Ok(PackFile {
            file: File::from(fd),
            len: u64::try_from(stat.st_size).unwrap_or(0),
            mode: stat.st_mode & 0o7777,
        })
    }

    /// What `rel` resolves to, following links inside the pack (a link that cannot
    /// be followed is an error naming it), and its size for a regular file.
    pub fn resolve_kind(&self, rel: impl AsRef<Path>) -> Result<(EntryKind, u64), PackFsError> {
        let rel = rel.as_ref();
        let fd = self.open_beneath(rel, PATH_FLAGS)?;
        let stat = rustix::fs::fstat(&fd).map_err(|e| io_error(self.path.join(rel), e))?;
        let kind = EntryKind::of(FileType::from_raw_mode(stat.st_mode));
        let len = if kind == EntryKind::File {
            u64::try_from(stat.st_size).unwrap_or(0)
        } else {
            0
        };
        Ok((kind, len))
    }

    /// Reads the regular file `rel` whole, refusing it if it holds more than
    /// `cap.bytes` (at most `cap.bytes + 1` bytes are read, whatever the file claims).
    pub fn read(&self, rel: impl AsRef<Path>, cap: ReadCap) -> Result<Vec<u8>, PackFsError> {
        let rel = rel.as_ref();
        let opened = self.open_file(rel)?;
        let too_large = || PackFsError::TooLarge {
            path: self.path.join(rel),
            limit: cap.bytes,
            what: cap.what,
            setting: cap.setting,
        };
        if opened.len > cap.bytes {
            return Err(too_large());
        }
        let mut buf = Vec::with_capacity(opened.len.min(cap.bytes) as usize + 1);
        opened
            .file
            .take(cap.bytes.saturating_add(1))
            .read_to_end(&mut buf)
            .map_err(|source| PackFsError::Io {
                path: self.path.join(rel),
                source,
            })?;
        if buf.len() as u64 > cap.bytes {
            return Err(too_large());
        }
        Ok(buf)
    }

    /// [`read`](Self::read) as UTF-8 text; a leading byte-order mark is dropped.
    pub fn read_text(&self, rel: impl AsRef<Path>, cap: ReadCap) -> Result<String, PackFsError> {
        let rel = rel.as_ref();
        let bytes = self.read(rel, cap)?;
        let mut text = String::from_utf8(bytes).map_err(|e| PackFsError::NotUtf8 {
            path: self.path.join(rel),
            offset: e.utf8_error().valid_up_to(),
        })?;
        if text.starts_with('\u{feff}') {
            text.remove(0);
        }
        Ok(text)
    }

    /// What `rel` is, without following a link at its last component (directories
    /// on the way are followed through links inside the pack); `None` when it does
    /// not exist (or a directory on the way does not). A link on the way that cannot
    /// be followed is an error naming it.
    pub fn kind(&self, rel: impl AsRef<Path>) -> Result<Option<(EntryKind, u64)>, PackFsError> {
        let rel = rel.as_ref();
        let parts = components(rel).ok_or_else(|| PackFsError::NotInside {
            path: self.path.join(rel),
        })?;
        let Some((last, dirs)) = parts.split_last() else {
            return Ok(Some((EntryKind::Dir, 0)));
        };
        let parent: Option<OwnedFd> = if dirs.is_empty() {
            None
        } else {
            match self.open_beneath(&dirs.iter().collect::<PathBuf>(), DIR_FLAGS) {
                Ok(fd) => Some(fd),
                Err(PackFsError::NotFound { .. } | PackFsError::NotADirectory { .. }) => {
                    return Ok(None);
                }
                Err(e) => return Err(e),
            }
        };
        let dir = parent.as_ref().map_or(self.fd.as_fd(), |fd| fd.as_fd());
        match rustix::fs::statat(dir, last.as_os_str(), AtFlags::SYMLINK_NOFOLLOW) {
            Ok(stat) => Ok(Some((
                EntryKind::of(FileType::from_raw_mode(stat.st_mode)),
                u64::try_from(stat.st_size).unwrap_or(0),
            ))),
            Err(Errno::NOENT | Errno::NOTDIR) => Ok(None),
            Err(e) => Err(io_error(self.path.join(rel), e)),
        }
    }

    /// The entries of this directory (without `.` and `..`), in the order the file
    /// system gives them, each judged by `fstatat(AT_SYMLINK_NOFOLLOW)` on this
    /// directory's descriptor (a link is listed as a link). An entry removed while
    /// listing is left out. A directory with more entries than the process's
    /// `pack_files.max_entries` is refused after reading one more than that.
    pub fn entries(&self) -> Result<Vec<DirEntry>, PackFsError> {
        let limits = tree_limits();
        self.entries_within(&limits, 0)
    }

    /// [`entries`](Self::entries) for a walk that has already counted `counted`
    /// entries: refused as soon as `counted` plus this listing would exceed
    /// `limits.entries`, before the surplus entries are looked at.
    pub fn entries_within(
        &self,
        limits: &TreeLimits,
        counted: u64,
    ) -> Result<Vec<DirEntry>, PackFsError> {
        let listing_error = |e: Errno| io_error(self.path.clone(), e);
        let dir = rustix::fs::Dir::read_from(&self.fd).map_err(listing_error)?;
        let mut out = Vec::new();
        for entry in dir {
            let entry = entry.map_err(listing_error)?;
            let name = entry.file_name().to_bytes();
            if name == b"." || name == b".." {
                continue;
            }
            if counted.saturating_add(out.len() as u64) >= limits.entries.value {
                return Err(limits.too_many_entries(self.path.clone()));
            }
            let name = OsString::from_vec(name.to_vec());
            match rustix::fs::statat(&self.fd, name.as_os_str(), AtFlags::SYMLINK_NOFOLLOW) {
                Ok(stat) => {
                    let kind = EntryKind::of(FileType::from_raw_mode(stat.st_mode));
                    let len = if kind == EntryKind::File {
                        u64::try_from(stat.st_size).unwrap_or(0)
                    } else {
                        0
                    };
                    out.push(DirEntry { name, kind, len });
                }
                Err(Errno::NOENT) => {}
                Err(e) => return Err(io_error(self.path.join(&name), e)),
            }
        }
        Ok(out)
    }

    /// The target text of the link `rel` (read, never followed).
    pub fn read_link(&self, rel: impl AsRef<Path>) -> Result<PathBuf, PackFsError> {
        let rel = rel.as_ref();
        let parts = components(rel).ok_or_else(|| PackFsError::NotInside {
            path: self.path.join(rel),
        })?;
        let Some((last, dirs)) = parts.split_last() else {
            return Err(PackFsError::NotInside {
                path: self.path.join(rel),
            });
        };
        let parent: Option<OwnedFd> = if dirs.is_empty() {
            None
        } else {
            Some(self.open_beneath(&dirs.iter().collect::<PathBuf>(), DIR_FLAGS)?)
        };
        let dir = parent.as_ref().map_or(self.fd.as_fd(), |fd| fd.as_fd());
        rustix::fs::readlinkat(dir, last.as_os_str(), Vec::new())
            .map(|target| PathBuf::from(OsString::from_vec(target.into_bytes())))
            .map_err(|e| io_error(self.path.join(rel), e))
    }

    /// The refusal of the directory link `rel` (below this directory) that leads back
    /// to a directory containing it, for walks that find such a cycle.
    pub fn loop_at(&self, rel: impl AsRef<Path>) -> PackFsError {
        let rel = rel.as_ref();
        PackFsError::Link {
            path: self.path.join(rel),
            target: self.read_link(rel).unwrap_or_default(),
            problem: LinkProblem::Loop,
        }
    }

    /// Opens `rel` (below this directory) beneath the pack root. `flags` always
    /// carry `O_NOFOLLOW`, which the walk needs; `openat2` follows a link at the
    /// last component too (only `BENEATH` it).
    fn open_beneath(&self, rel: &Path, flags: OFlags) -> Result<OwnedFd, PackFsError> {
        let parts = components(rel).ok_or_else(|| PackFsError::NotInside {
            path: self.path.join(rel),
        })?;
        if parts.is_empty() {
            return Err(PackFsError::NotInside {
                path: self.path.join(rel),
            });
        }
        if self.resolver == Resolver::Openat2 {
            let mut full = self.prefix.clone();
            full.extend(&parts);
            let followed = flags.difference(OFlags::NOFOLLOW);
            match rustix::fs::openat2(&*self.root, &full, followed, Mode::empty(), RESOLVE) {
                Ok(fd) => {
                    note_openat2_works();
                    return Ok(fd);
                }
                Err(Errno::NOSYS | Errno::PERM) if !Resolver::openat2_known_to_work() => {
                    RESOLVER.store(RESOLVER_WALK, Ordering::Relaxed);
                }
                // A link that escapes, dangles or loops, or simply a missing name:
                // the walk finds which, and names the link to blame.
                Err(Errno::XDEV | Errno::LOOP | Errno::NOENT | Errno::NOTDIR) => {}
                Err(errno) => {
                    let path = self.path.join(rel);
                    return Err(classify_open_error(errno, &path, || {
                        rustix::fs::statat(&*self.root, &full, AtFlags::SYMLINK_NOFOLLOW)
                    }));
                }
            }
        }
        self.walk(&parts, flags)
    }

    /// Resolves `self.prefix` then `parts` from the root one component at a time,
    /// each opened with `O_NOFOLLOW` relative to the directory opened before it. A
    /// link met is read (`readlinkat`) and its target's components are resolved in
    /// its place: an absolute target or a `..` above the root escapes, a missing
    /// name dangles, more than [`MAX_LINK_HOPS`] links loop. Errors caused by a link
    /// name the link met on the path asked for (a chain is blamed on its first link).
    fn walk(&self, parts: &[&Path], flags: OFlags) -> Result<OwnedFd, PackFsError> {
        let mut todo: std::collections::VecDeque<Step> = self
            .prefix
            .components()
            .filter_map(|c| match c {
                Component::Normal(name) => Some(name.to_os_string()),
                _ => None,
            })
            .chain(parts.iter().map(|p| p.as_os_str().to_os_string()))
            .map(|name| Step { name, asked: true })
            .collect();
        // Directories opened below the root, innermost last.
        let mut stack: Vec<OwnedFd> = Vec::new();
        // The asked-for components consumed, for messages.
        let mut so_far = PathBuf::new();
        // The link being expanded (on the asked-for path) and its target.
        let mut blame: Option<(PathBuf, PathBuf)> = None;
        let mut hops = 0u32;
        let link_error = |blame: &Option<(PathBuf, PathBuf)>, problem| {
            let (link, target) = blame.clone().unwrap_or_default();
            PackFsError::Link {
                path: self.root_path.join(link),
                target,
                problem,
            }
        };
        while let Some(step) = todo.pop_front() {
            if step.asked {
                so_far.push(&step.name);
                blame = None;
            }
            if step.name == "." {
                continue;
            }
            if step.name == ".." {
                if stack.pop().is_none() {
                    return Err(link_error(&blame, LinkProblem::Escapes));
                }
                continue;
            }
            let last = todo.is_empty();
            let dir = stack.last().map_or(self.root.as_fd(), |fd| fd.as_fd());
            let step_flags = if last { flags } else { DIR_FLAGS };
            let opened = rustix::fs::openat(dir, step.name.as_os_str(), step_flags, Mode::empty());
            // An `O_PATH | O_NOFOLLOW` open of a link opens the link itself.
            let opened_link = match &opened {
                Ok(fd) if step_flags.contains(OFlags::PATH) => rustix::fs::fstat(fd)
                    .is_ok_and(|st| FileType::from_raw_mode(st.st_mode) == FileType::Symlink),
                _ => false,
            };
            let errno = match opened {
                Ok(fd) if !opened_link => {
                    stack.push(fd);
                    continue;
                }
                Ok(_) => Errno::LOOP,
                // `O_NOFOLLOW` met a link (or `O_DIRECTORY` a non-directory).
                Err(errno @ (Errno::LOOP | Errno::NOTDIR | Errno::MLINK)) => errno,
                Err(errno) => {
                    return Err(self.step_error(errno, dir, &step, &so_far, &blame));
                }
            };
            let target = match rustix::fs::readlinkat(dir, step.name.as_os_str(), Vec::new()) {
                Ok(target) => PathBuf::from(OsString::from_vec(target.into_bytes())),
                Err(_) => return Err(self.step_error(errno, dir, &step, &so_far, &blame)),
            };
            if step.asked {
                blame = Some((so_far.clone(), target.clone()));
            }
            hops += 1;
            if hops > MAX_LINK_HOPS {
                return Err(link_error(&blame, LinkProblem::Loop));
            }
            if target.as_os_str().is_empty() {
                return Err(link_error(&blame, LinkProblem::Dangling));
            }
            if target.is_absolute() {
                return Err(link_error(&blame, LinkProblem::Escapes));
            }
            for component in target.components().rev() {
                let name = match component {
                    Component::Normal(name) => name.to_os_string(),
                    Component::ParentDir => OsString::from(".."),
                    Component::CurDir => OsString::from("."),
                    Component::RootDir | Component::Prefix(_) => {
                        return Err(link_error(&blame, LinkProblem::Escapes));
                    }
                };
                todo.push_front(Step { name, asked: false });
            }
        }
        match stack.pop() {
            Some(fd) => Ok(fd),
            // The name resolved to the root itself.
            None => rustix::io::fcntl_dupfd_cloexec(&*self.root, 0)
                .map_err(|e| io_error(self.root_path.clone(), e)),
        }
    }

    /// The error of a walk step that failed on something other than a link: a
    /// missing name while expanding a link means the link dangles.
    fn step_error(
        &self,
        errno: Errno,
        dir: std::os::fd::BorrowedFd<'_>,
        step: &Step,
        so_far: &Path,
        blame: &Option<(PathBuf, PathBuf)>,
    ) -> PackFsError {
        if let Some((link, target)) = blame
            && matches!(errno, Errno::NOENT | Errno::NOTDIR)
        {
            return PackFsError::Link {
                path: self.root_path.join(link),
                target: target.clone(),
                problem: LinkProblem::Dangling,
            };
        }
        classify_open_error(errno, &self.root_path.join(so_far), || {
            rustix::fs::statat(dir, step.name.as_os_str(), AtFlags::SYMLINK_NOFOLLOW)
        })
    }

    #[cfg(test)]
    fn open_walking(path: &Path) -> Result<PackDir, PackFsError> {
        Self::open_with(path, Resolver::Walk)
    }

    #[cfg(test)]
    fn resolver(&self) -> Resolver {
        self.resolver
    }
}

impl Resolver {
    fn current() -> Resolver {
        match RESOLVER.load(Ordering::Relaxed) {
            RESOLVER_WALK => Resolver::Walk,
            _ => Resolver::Openat2,
        }
    }

    /// Once one `openat2` call succeeded, an `EPERM` is a real answer, not a
    /// sandbox filtering the system call.
    fn openat2_known_to_work() -> bool {
        RESOLVER.load(Ordering::Relaxed) == RESOLVER_OPENAT2
    }
}

/// Records that `openat2` works, so that a later `EPERM` is taken at its word.
fn note_openat2_works() {
    let _ = RESOLVER.compare_exchange(
        RESOLVER_UNKNOWN,
        RESOLVER_OPENAT2,
        Ordering::Relaxed,
        Ordering::Relaxed,
    );
}

/// The normal components of `rel`; `None` if it is absolute or has `..`.
fn components(rel: &Path) -> Option<Vec<&Path>> {
    let mut parts = Vec::new();
    for component in rel.components() {
        match component {
            Component::Normal(name) => parts.push(Path::new(name)),
            Component::CurDir => {}
            Component::ParentDir | Component::RootDir | Component::Prefix(_) => return None,
        }
    }
    Some(parts)
}

/// Turns a failed open into the error that names what was there. `lstat` looks at
/// the entry (without following it) to tell a link from a FIFO from a missing file.
fn classify_open_error(
    errno: Errno,
    path: &Path,
    lstat: impl FnOnce() -> rustix::io::Result<rustix::fs::Stat>,
) -> PackFsError {
    let path = path.to_path_buf();
    match errno {
        Errno::NOENT => PackFsError::NotFound { path },
        Errno::NOTDIR => match lstat() {
            Ok(stat) => match EntryKind::of(FileType::from_raw_mode(stat.st_mode)) {
                EntryKind::Dir => PackFsError::NotADirectory { path },
                EntryKind::File => PackFsError::NotADirectory { path },
                other => other.refusal(path),
            },
            // A component on the way is not a directory.
            Err(_) => PackFsError::NotFound { path },
        },
        Errno::ISDIR => PackFsError::IsADirectory { path },
        // A device node's driver may refuse the open itself (ENXIO for a FIFO
        // without writer is not possible for readers, but devices vary).
        Errno::NXIO | Errno::NODEV => match lstat() {
            Ok(stat) => EntryKind::of(FileType::from_raw_mode(stat.st_mode)).refusal(path),
            Err(_) => io_error(path, errno),
        },
        other => io_error(path, other),
    }
}

fn io_error(path: PathBuf, errno: Errno) -> PackFsError {
    PackFsError::Io {
        path,
        source: io::Error::from(errno),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{PermissionsExt, symlink};
    use std::time::{Duration, Instant};

    fn mkfifo(path: &Path) {
        rustix::fs::mknodat(
            rustix::fs::CWD,
            path,
            FileType::Fifo,
            Mode::from_raw_mode(0o644),
            0,
        )
        .unwrap();
    }

    /// A pack with a file, a subdirectory, and every kind of thing that must be refused.
    fn hostile_pack() -> (tempfile::TempDir, tempfile::TempDir) {
        let pack = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let root = pack.path();
        std::fs::write(root.join("pack.yaml"), "ref: ok\n").unwrap();
        std::fs::create_dir(root.join("actions")).unwrap();
        std::fs::write(root.join("actions/a.yaml"), "name: a\n").unwrap();
        std::fs::write(outside.path().join("secret.yaml"), "ref: secret\n").unwrap();
        symlink(outside.path().join("secret.yaml"), root.join("link.yaml")).unwrap();
        symlink("/dev/zero", root.join("zero.yaml")).unwrap();
        symlink(outside.path(), root.join("outdir")).unwrap();
        symlink("actions", root.join("inner")).unwrap();
        mkfifo(&root.join("fifo.yaml"));
        let socket = std::os::unix::net::UnixListener::bind(root.join("sock")).unwrap();
        std::mem::forget(socket);
        (pack, outside)
    }

    fn both(path: &Path) -> Vec<PackDir> {
        let kernel = PackDir::open(path).unwrap();
        let walking = PackDir::open_walking(path).unwrap();
        assert_eq!(walking.resolver(), Resolver::Walk);
        vec![kernel, walking]
    }

    #[test]
    fn reads_regular_files_and_refuses_everything_else_on_both_resolvers() {
        let (pack, _outside) = hostile_pack();
        let cap = PackReadLimits::default().manifest();
        for dir in both(pack.path()) {
            let resolver = dir.resolver();
            assert_eq!(dir.read_text("pack.yaml", cap).unwrap(), "ref: ok\n");
            assert_eq!(
                dir.read_text("actions/a.yaml", cap).unwrap(),
                "name: a\n",
                "{resolver:?}"
            );
            assert_eq!(
                dir.open_dir("actions")
                    .unwrap()
                    .read_text("a.yaml", cap)
                    .unwrap(),
                "name: a\n"
            );
            for name in ["link.yaml", "zero.yaml", "outdir/secret.yaml"] {
                let err = dir.read(name, cap).unwrap_err();
                assert!(
                    matches!(
                        err,
                        PackFsError::Link {
                            problem: LinkProblem::Escapes,
                            ..
                        }
                    ),
                    "{resolver:?} {name}: {err}"
                );
                // The error names the link met, not the whole path.
                let first = name.split('/').next().unwrap();
                assert!(
                    matches!(&err, PackFsError::Link { path, .. } if path.ends_with(first)),
                    "{err}"
                );
                assert!(err.to_string().contains("leaves the pack"), "{err}");
            }
            // A link that stays inside is followed.
            assert_eq!(dir.read_text("inner/a.yaml", cap).unwrap(), "name: a\n");
            assert_eq!(
                dir.open_dir("inner")
                    .unwrap()
                    .read_text("a.yaml", cap)
                    .unwrap(),
                "name: a\n"
            );
            let err = dir.open_dir("outdir").unwrap_err();
            assert!(matches!(err, PackFsError::Link { .. }), "{err}");
            let started = Instant::now();
            let err = dir.read("fifo.yaml", cap).unwrap_err();
            assert!(started.elapsed() < Duration::from_secs(1));
            assert!(
                matches!(err, PackFsError::Special { kind: "fifo", .. }),
                "{resolver:?}: {err}"
            );
            assert!(err.to_string().contains("fifo.yaml"), "{err}");
            let err = dir.read("sock", cap).unwrap_err();
            assert!(
                matches!(
                    err,
                    PackFsError::Special { kind: "socket", .. } | PackFsError::Io { .. }
                ),
                "{resolver:?}: {err}"
            );
            let err = dir.read("actions", cap).unwrap_err();
            assert!(matches!(err, PackFsError::IsADirectory { .. }), "{err}");
            let err = dir.open_dir("fifo.yaml").unwrap_err();
            assert!(matches!(err, PackFsError::Special { .. }), "{err}");
            let err = dir.open_dir("pack.yaml").unwrap_err();
            assert!(matches!(err, PackFsError::NotADirectory { .. }), "{err}");
            for name in ["../x", "/etc/passwd", "actions/../../x"] {
                let err = dir.read(name, cap).unwrap_err();
                assert!(
                    matches!(err, PackFsError::NotInside { .. }),
                    "{name}: {err}"
                );
            }
            let err = dir.read("missing.yaml", cap).unwrap_err();
            assert!(err.is_not_found(), "{err}");
            let err = dir.read("pack.yaml/x", cap).unwrap_err();
            assert!(
                matches!(
                    err,
                    PackFsError::NotFound { .. } | PackFsError::NotADirectory { .. }
                ),
                "{err}"
            );
        }
    }

    #[test]
    fn a_device_node_is_refused_without_reading_it() {
        let pack = tempfile::tempdir().unwrap();
        // Creating a device node needs CAP_MKNOD; without it, this check is moot.
        let made = rustix::fs::mknodat(
            rustix::fs::CWD,
            pack.path().join("zero"),
            FileType::CharacterDevice,
            Mode::from_raw_mode(0o644),
            rustix::fs::makedev(1, 5),
        );
        if made.is_err() {
            return;
        }
        for dir in both(pack.path()) {
            let err = dir
                .read("zero", PackReadLimits::default().other())
                .unwrap_err();
            assert!(
                matches!(
                    err,
                    PackFsError::Special {
                        kind: "character device",
                        ..
                    }
                ),
                "{err}"
            );
        }
    }

    #[test]
    fn reads_under_the_cap_and_names_the_setting_when_over() {
        let pack = tempfile::tempdir().unwrap();
        std::fs::write(pack.path().join("big"), vec![b'x'; 101]).unwrap();
        std::fs::write(pack.path().join("exact"), vec![b'x'; 100]).unwrap();
        let cap = ReadCap {
            bytes: 100,
            what: "pack.yaml",
            setting: "pack_files.max_manifest_bytes",
        };
        for dir in both(pack.path()) {
            assert_eq!(dir.read("exact", cap).unwrap().len(), 100);
            let err = dir.read("big", cap).unwrap_err();
            let text = err.to_string();
            assert!(matches!(err, PackFsError::TooLarge { limit: 100, .. }));
            assert!(text.contains("pack_files.max_manifest_bytes"), "{text}");
            assert!(text.contains("100 bytes"), "{text}");
        }
    }

    #[test]
    fn a_file_growing_past_its_stat_size_is_still_cut_at_the_cap() {
        // /proc files report size 0 and then produce bytes: the cap holds anyway.
        let dir = PackDir::open(&Path::new("/proc").join(std::process::id().to_string())).unwrap();
        let cap = ReadCap {
            bytes: 16,
            what: "test",
            setting: "test.cap",
        };
        let err = dir.read("status", cap).unwrap_err();
        assert!(matches!(err, PackFsError::TooLarge { .. }), "{err}");
    }

    #[test]
    fn lists_entries_with_their_kinds() {
        let (pack, _outside) = hostile_pack();
        let dir = PackDir::open(pack.path()).unwrap();
        let mut entries = dir.entries().unwrap();
        entries.sort_by(|a, b| a.name.cmp(&b.name));
        let kinds: Vec<(String, EntryKind)> = entries
            .iter()
            .map(|e| (e.name.to_string_lossy().into_owned(), e.kind))
            .collect();
        assert_eq!(
            kinds,
            vec![
                ("actions".into(), EntryKind::Dir),
                ("fifo.yaml".into(), EntryKind::Fifo),
                ("inner".into(), EntryKind::Symlink),
                ("link.yaml".into(), EntryKind::Symlink),
                ("outdir".into(), EntryKind::Symlink),
                ("pack.yaml".into(), EntryKind::File),
                ("sock".into(), EntryKind::Socket),
                ("zero.yaml".into(), EntryKind::Symlink),
            ]
        );
        assert_eq!(entries[5].len, 8);
        // Listing twice gives the same answer (each listing has its own position).
        assert_eq!(dir.entries().unwrap().len(), 8);
    }

    #[test]
    fn kind_names_the_first_link_on_the_way() {
        let (pack, _outside) = hostile_pack();
        let dir = PackDir::open(pack.path()).unwrap();
        assert_eq!(
            dir.kind("actions/a.yaml").unwrap(),
            Some((EntryKind::File, 8))
        );
        assert_eq!(dir.kind("actions/none.yaml").unwrap(), None);
        assert_eq!(dir.kind("pack.yaml/x").unwrap(), None);
        assert_eq!(
            dir.kind("zero.yaml").unwrap().unwrap().0,
            EntryKind::Symlink
        );
        let err = dir.kind("outdir/secret.yaml").unwrap_err();
        assert!(matches!(&err, PackFsError::Link { path, .. } if path.ends_with("outdir")));
        // An inside link on the way is followed; the last component is not.
        assert_eq!(
            dir.kind("inner/a.yaml").unwrap(),
            Some((EntryKind::File, 8))
        );
        assert_eq!(dir.kind("inner").unwrap().unwrap().0, EntryKind::Symlink);
    }

    #[test]
    fn the_root_itself_must_not_be_a_link_or_a_file() {
        let (pack, outside) = hostile_pack();
        let err = PackDir::open(&pack.path().join("outdir")).unwrap_err();
        assert!(
            matches!(
                err,
                PackFsError::Special {
                    kind: "symbolic link",
                    ..
                }
            ),
            "{err}"
        );
        let err = PackDir::open(&pack.path().join("pack.yaml")).unwrap_err();
        assert!(matches!(err, PackFsError::NotADirectory { .. }), "{err}");
        let err = PackDir::open(&pack.path().join("missing")).unwrap_err();
        assert!(err.is_not_found());
        let started = Instant::now();
        let err = PackDir::open(&pack.path().join("fifo.yaml")).unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(1));
        assert!(matches!(err, PackFsError::Special { .. }), "{err}");
        drop(outside);
    }

    #[test]
    fn a_directory_swapped_for_a_link_after_open_is_not_followed() {
        let (pack, outside) = hostile_pack();
        for dir in both(pack.path()) {
            let resolver = dir.resolver();
            std::fs::rename(pack.path().join("actions"), pack.path().join("real")).unwrap();
            symlink(outside.path(), pack.path().join("actions")).unwrap();
            let err = dir
                .read("actions/secret.yaml", PackReadLimits::default().other())
                .unwrap_err();
            assert!(
                matches!(
                    &err,
                    PackFsError::Link { path, problem: LinkProblem::Escapes, .. }
                        if path.ends_with("actions")
                ),
                "{resolver:?}: {err}"
            );
            std::fs::remove_file(pack.path().join("actions")).unwrap();
            std::fs::rename(pack.path().join("real"), pack.path().join("actions")).unwrap();
        }
    }

    #[test]
    fn open_file_reports_length_and_permission_bits() {
        let pack = tempfile::tempdir().unwrap();
        let script = pack.path().join("run.sh");
        std::fs::write(&script, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o4755)).unwrap();
        let opened = PackDir::open(pack.path())
            .unwrap()
            .open_file("run.sh")
            .unwrap();
        assert_eq!(opened.len, 10);
        assert_eq!(opened.mode, 0o4755);
    }

    /// A pack with links of every kind: inside (file, directory, chain, from a
    /// subdirectory up to the root), escaping (absolute, `..`, chain), dangling, loops.
    fn linked_pack() -> (tempfile::TempDir, tempfile::TempDir) {
        let pack = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let root = pack.path();
        std::fs::write(outside.path().join("secret"), "SECRET\n").unwrap();
        std::fs::write(root.join("pack.yaml"), "ref: linked\n").unwrap();
        std::fs::write(root.join("linked.yaml.example"), "full\n").unwrap();
        std::fs::create_dir_all(root.join("tests/fixtures")).unwrap();
        symlink(
            "../../linked.yaml.example",
            root.join("tests/fixtures/full.yaml"),
        )
        .unwrap();
        std::fs::create_dir(root.join("lib")).unwrap();
        std::fs::write(root.join("lib/util.py"), "x = 1\n").unwrap();
        symlink("lib", root.join("libdir")).unwrap();
        symlink("chain2", root.join("chain1")).unwrap();
        symlink("./tests/fixtures/full.yaml", root.join("chain2")).unwrap();
        symlink(outside.path().join("secret"), root.join("absolute")).unwrap();
        let up = format!(
            "../{}/secret",
            outside.path().file_name().unwrap().to_str().unwrap()
        );
        symlink(&up, root.join("dotdot")).unwrap();
        symlink("absolute", root.join("via_absolute")).unwrap();
        symlink("lib/../../x", root.join("climbs")).unwrap();
        symlink("missing.yaml", root.join("dangling")).unwrap();
        symlink("pack.yaml/x", root.join("through_file")).unwrap();
        symlink("loop2", root.join("loop1")).unwrap();
        symlink("loop1", root.join("loop2")).unwrap();
        symlink("selfish", root.join("selfish")).unwrap();
        // `..` from lib/ is the root: inside.
        symlink("../pack.yaml", root.join("lib/up.yaml")).unwrap();
        symlink("../../x", root.join("lib/out.yaml")).unwrap();
        (pack, outside)
    }

    #[track_caller]
    fn assert_link(err: &PackFsError, link: &str, problem: LinkProblem) {
        match err {
            PackFsError::Link {
                path, problem: p, ..
            } => {
                assert!(path.ends_with(link), "{err} should name {link}");
                assert_eq!(*p, problem, "{err}");
            }
            other => panic!("expected a link error naming {link}, got {other:?}"),
        }
        let words = problem.to_string();
        assert!(err.to_string().contains(&words), "{err}");
        assert!(err.reason().contains(&words), "{}", err.reason());
        assert!(err.to_string().contains(link), "{err}");
    }

    #[test]
    fn links_inside_the_pack_are_followed_on_both_resolvers() {
        let (pack, _outside) = linked_pack();
        let cap = PackReadLimits::default().other();
        for dir in both(pack.path()) {
            let resolver = dir.resolver();
            assert_eq!(
                dir.read_text("tests/fixtures/full.yaml", cap).unwrap(),
                "full\n",
                "{resolver:?}"
            );
            assert_eq!(dir.read_text("chain1", cap).unwrap(), "full\n");
            assert_eq!(dir.read_text("libdir/util.py", cap).unwrap(), "x = 1\n");
            assert_eq!(dir.read_text("lib/up.yaml", cap).unwrap(), "ref: linked\n");
            // From a subdirectory, a link may climb above it as long as it stays
            // beneath the pack root.
            let lib = dir.open_dir("libdir").unwrap();
            assert_eq!(lib.read_text("up.yaml", cap).unwrap(), "ref: linked\n");
            let fixtures = dir.open_dir("tests/fixtures").unwrap();
            assert_eq!(fixtures.read_text("full.yaml", cap).unwrap(), "full\n");
            assert_eq!(
                dir.resolve_kind("tests/fixtures/full.yaml").unwrap(),
                (EntryKind::File, 5)
            );
            assert_eq!(dir.resolve_kind("libdir").unwrap().0, EntryKind::Dir);
            let opened = dir.open_file("chain1").unwrap();
            assert_eq!(opened.len, 5);
            assert_eq!(
                dir.open_dir("libdir").unwrap().identity().unwrap(),
                dir.open_dir("lib").unwrap().identity().unwrap()
            );
        }
    }

    #[test]
    fn escaping_dangling_and_looping_links_are_refused_naming_the_link_on_both_resolvers() {
        let (pack, _outside) = linked_pack();
        let cap = PackReadLimits::default().other();
        for dir in both(pack.path()) {
            for (name, link, problem) in [
                ("absolute", "absolute", LinkProblem::Escapes),
                ("dotdot", "dotdot", LinkProblem::Escapes),
                ("via_absolute", "via_absolute", LinkProblem::Escapes),
                ("climbs", "climbs", LinkProblem::Escapes),
                ("lib/out.yaml", "lib/out.yaml", LinkProblem::Escapes),
                ("libdir/out.yaml", "libdir/out.yaml", LinkProblem::Escapes),
                ("dangling", "dangling", LinkProblem::Dangling),
                ("through_file", "through_file", LinkProblem::Dangling),
                ("loop1", "loop1", LinkProblem::Loop),
                ("selfish", "selfish", LinkProblem::Loop),
            ] {
                let err = dir.read(name, cap).unwrap_err();
                assert_link(&err, link, problem);
                let err = dir.resolve_kind(name).unwrap_err();
                assert_link(&err, link, problem);
            }
            // Seen from a subdirectory, the link is still named from the root.
            let lib = dir.open_dir("lib").unwrap();
            assert_link(
                &lib.read("out.yaml", cap).unwrap_err(),
                "lib/out.yaml",
                LinkProblem::Escapes,
            );
            assert_link(
                &dir.open_dir("dotdot").unwrap_err(),
                "dotdot",
                LinkProblem::Escapes,
            );
            assert!(
                !format!("{:?}", dir.read("dotdot", cap)).contains("SECRET"),
                "outside content read"
            );
            // A name that is simply missing is not a link problem.
            assert!(dir.read("lib/none.yaml", cap).unwrap_err().is_not_found());
            assert!(
                dir.read("libdir/none.yaml", cap)
                    .unwrap_err()
                    .is_not_found()
            );
            // The message names the link relative to the pack root.
            let err = dir
                .read("dotdot", cap)
                .unwrap_err()
                .relative_to(pack.path());
            assert!(
                err.to_string()
                    .starts_with("'dotdot' is a symbolic link to '../")
            );
        }
    }
}
