//! Reading a pack through descriptors.
//!
//! A pack directory is a tree that its author controls and may change while the
//! server reads it. Reading it by path would follow a `pack.yaml` symlinked to
//! `/dev/zero` or to a secret outside the allowed roots, block forever on a FIFO, and
//! follow a subdirectory swapped for a symlink halfway through a copy. So the pack
//! root is opened once ([`PackDir::open`], after [`crate::paths::PathPolicy::confine`]
//! judged its path) and everything below it is opened relative to that descriptor:
//!
//! * with `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS)`
//!   where the kernel has it, otherwise by walking the components with
//!   `openat(O_NOFOLLOW)` from each directory's descriptor;
//! * files with `O_NONBLOCK` (a FIFO cannot block the open) and then `fstat`ed: only
//!   regular files are read; FIFOs, devices, sockets and links are refused, naming the
//!   path;
//! * read into memory under a cap ([`ReadCap`]) that names its setting.
//!
//! The policy on links lives in one place ([`LINKS_REFUSED`] and the resolve flags
//! below): a pack may not contain links at all today.

use std::ffi::OsString;
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStringExt;
use std::path::{Component, Path, PathBuf};
use std::sync::RwLock;
use std::sync::atomic::{AtomicU8, Ordering};

use rustix::fs::{AtFlags, FileType, Mode, OFlags, ResolveFlags};
use rustix::io::Errno;

/// Why a pack file could not be opened or read. Every variant names the path.
#[derive(Debug, thiserror::Error)]
pub enum PackFsError {
    #[error("'{path}' does not exist")]
    NotFound { path: PathBuf },
    #[error("'{path}' is a symbolic link or goes through one; {LINKS_REFUSED}")]
    Symlink { path: PathBuf },
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
            | PackFsError::Symlink { path }
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
            | PackFsError::Symlink { path }
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
            PackFsError::Symlink { .. } => {
                format!("is a symbolic link or goes through one; {LINKS_REFUSED}")
            }
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

/// Why links are refused, for messages. Allowing links that stay inside the pack
/// would mean dropping `RESOLVE_NO_SYMLINKS` (keeping `RESOLVE_BENEATH`) and
/// following links in the component walk while checking they stay beneath the root.
pub const LINKS_REFUSED: &str =
    "symbolic links are refused in a pack (a pack must not make the server read outside it)";

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
            EntryKind::Symlink => PackFsError::Symlink { path },
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

/// Links are refused at every component; `BENEATH` also stops `..` and absolute
/// paths from leaving the root.
const RESOLVE: ResolveFlags = ResolveFlags::BENEATH
    .union(ResolveFlags::NO_SYMLINKS)
    .union(ResolveFlags::NO_MAGICLINKS);

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

/// An opened pack directory (the root, or a directory below it). Everything opened
/// through it stays beneath it.
#[derive(Debug)]
pub struct PackDir {
    fd: OwnedFd,
    /// For messages only: never used to open anything.
    path: PathBuf,
    resolver: Resolver,
}

impl PackDir {
    /// Opens the directory `path` (already confined by the caller). Its last
    /// component must not be a link.
    pub fn open(path: &Path) -> Result<PackDir, PackFsError> {
        Self::open_with(path, Resolver::current())
    }

    fn open_with(path: &Path, resolver: Resolver) -> Result<PackDir, PackFsError> {
        match rustix::fs::open(path, DIR_FLAGS, Mode::empty()) {
            Ok(fd) => Ok(PackDir {
                fd,
                path: path.to_path_buf(),
                resolver,
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

    /// Where the opened directory is now, as the kernel names it; `None` without
    /// `/proc`.
    pub fn real_path(&self) -> Option<PathBuf> {
        std::fs::read_link(format!("/proc/self/fd/{}", self.fd.as_raw_fd())).ok()
    }

    /// Opens the directory `rel` below this one.
    pub fn open_dir(&self, rel: impl AsRef<Path>) -> Result<PackDir, PackFsError> {
        let rel = rel.as_ref();
        let path = self.path.join(rel);
        let fd = self.open_beneath(rel, DIR_FLAGS)?;
        Ok(PackDir {
            fd,
            path,
            resolver: self.resolver,
        })
    }

    /// Opens the regular file `rel` below this directory; anything else (FIFO,
    /// device, socket, directory, link) is refused without blocking.
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

    /// What `rel` is, without following links; `None` when it does not exist (or a
    /// directory on the way does not). A link on the way is reported as the link it
    /// is, with the path up to it.
    pub fn kind(&self, rel: impl AsRef<Path>) -> Result<Option<(EntryKind, u64)>, PackFsError> {
        let rel = rel.as_ref();
        let parts = components(rel).ok_or_else(|| PackFsError::NotInside {
            path: self.path.join(rel),
        })?;
        let Some((last, dirs)) = parts.split_last() else {
            return Ok(Some((EntryKind::Dir, 0)));
        };
        let mut so_far = PathBuf::new();
        let mut owned: Option<OwnedFd> = None;
        for part in dirs {
            so_far.push(part);
            let dir = owned.as_ref().map_or(self.fd.as_fd(), |fd| fd.as_fd());
            match rustix::fs::statat(dir, part.as_os_str(), AtFlags::SYMLINK_NOFOLLOW) {
                Ok(stat) => match EntryKind::of(FileType::from_raw_mode(stat.st_mode)) {
                    EntryKind::Dir => {}
                    EntryKind::Symlink => {
                        return Err(PackFsError::Symlink {
                            path: self.path.join(&so_far),
                        });
                    }
                    _ => return Ok(None),
                },
                Err(Errno::NOENT | Errno::NOTDIR) => return Ok(None),
                Err(e) => return Err(io_error(self.path.join(&so_far), e)),
            }
            let next =
                rustix::fs::openat(dir, part.as_os_str(), DIR_FLAGS, Mode::empty()).map_err(|e| {
                    classify_open_error(e, &self.path.join(&so_far), || Err(Errno::NOENT))
                });
            match next {
                Ok(fd) => owned = Some(fd),
                Err(PackFsError::NotFound { .. } | PackFsError::NotADirectory { .. }) => {
                    return Ok(None);
                }
                Err(e) => return Err(e),
            }
        }
        let dir = owned.as_ref().map_or(self.fd.as_fd(), |fd| fd.as_fd());
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
    /// directory's descriptor. An entry removed while listing is left out. A directory
    /// with more entries than the process's `pack_files.max_entries` is refused after
    /// reading one more than that.
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
            let joined: PathBuf = parts.iter().collect();
            match rustix::fs::openat2(&self.fd, &joined, flags, Mode::empty(), RESOLVE) {
                Ok(fd) => {
                    note_openat2_works();
                    return Ok(fd);
                }
                Err(Errno::NOSYS | Errno::PERM) if !Resolver::openat2_known_to_work() => {
                    RESOLVER.store(RESOLVER_WALK, Ordering::Relaxed);
                }
                Err(errno) => {
                    let path = self.path.join(rel);
                    return Err(classify_open_error(errno, &path, || {
                        rustix::fs::statat(&self.fd, &joined, AtFlags::SYMLINK_NOFOLLOW)
                    }));
                }
            }
        }
        self.walk(&parts, flags)
    }

    /// Opens `parts` one component at a time, each relative to the directory opened
    /// before it, never following a link.
    fn walk(&self, parts: &[&Path], flags: OFlags) -> Result<OwnedFd, PackFsError> {
        let mut so_far = PathBuf::new();
        let mut current: Option<OwnedFd> = None;
        for (i, part) in parts.iter().enumerate() {
            so_far.push(part);
            let last = i + 1 == parts.len();
            let dir = current.as_ref().map_or(self.fd.as_fd(), |fd| fd.as_fd());
            let step_flags = if last { flags } else { DIR_FLAGS };
            match rustix::fs::openat(dir, part.as_os_str(), step_flags, Mode::empty()) {
                Ok(fd) => current = Some(fd),
                Err(errno) => {
                    return Err(classify_open_error(errno, &self.path.join(&so_far), || {
                        rustix::fs::statat(dir, part.as_os_str(), AtFlags::SYMLINK_NOFOLLOW)
                    }));
                }
            }
        }
        Ok(current.expect("parts is not empty"))
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
        // ELOOP: O_NOFOLLOW met a link, or RESOLVE_NO_SYMLINKS did on the way.
        // EXDEV: RESOLVE_BENEATH refused a way out.
        Errno::LOOP | Errno::XDEV => PackFsError::Symlink { path },
        Errno::NOTDIR => match lstat() {
            Ok(stat) => match EntryKind::of(FileType::from_raw_mode(stat.st_mode)) {
                EntryKind::Symlink => PackFsError::Symlink { path },
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
            for name in [
                "link.yaml",
                "zero.yaml",
                "outdir/secret.yaml",
                "inner/a.yaml",
            ] {
                let err = dir.read(name, cap).unwrap_err();
                assert!(
                    matches!(err, PackFsError::Symlink { .. }),
                    "{resolver:?} {name}: {err}"
                );
                // The walk names the link it met; openat2 names the whole path.
                let first = name.split('/').next().unwrap();
                assert!(err.to_string().contains(first), "{err}");
            }
            for name in ["outdir", "inner"] {
                let err = dir.open_dir(name).unwrap_err();
                assert!(matches!(err, PackFsError::Symlink { .. }), "{name}: {err}");
            }
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
        assert!(matches!(&err, PackFsError::Symlink { path } if path.ends_with("outdir")));
    }

    #[test]
    fn the_root_itself_must_not_be_a_link_or_a_file() {
        let (pack, outside) = hostile_pack();
        let err = PackDir::open(&pack.path().join("outdir")).unwrap_err();
        assert!(matches!(err, PackFsError::Symlink { .. }), "{err}");
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
                matches!(err, PackFsError::Symlink { .. }),
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
}
