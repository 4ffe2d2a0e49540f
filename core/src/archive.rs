//! Safe, streaming extraction of pack archives (zip, tar.gz, tar) and pack-root search.
//!
//! * The format is sniffed from the file's bytes ([`sniff_format`]), never its name.
//! * The archive is streamed from disk: a 256 KiB buffered reader; for tar.gz a helper
//!   thread inflates (flate2 + zlib-rs) while the calling thread writes files, so the two
//!   cores overlap like `tar xzf`'s separate gzip process does.
//! * Only regular files and directories are written while extracting. Devices, fifos,
//!   sparse files and unsafe paths are refused with an error naming the entry. Nothing
//!   is ever written outside `dest`: paths are validated component by component,
//!   parents are created by us (so they are real directories), and files are created
//!   with `create_new` (an existing path is never followed or overwritten).
//! * Links are never created on disk, so extraction never traverses one. A symbolic
//!   link entry (tar, or zip with the `S_IFLNK` mode) and a tar hard link entry are
//!   recorded with their target; an entry below a link entry is refused (an archive
//!   writing through its own link). A symbolic link with an absolute target or one
//!   whose `..` climbs above the archive root is refused at once; a hard link must name
//!   an earlier regular-file entry. Once the pack root is known
//!   ([`ExtractSummary::pack_root`]), each link below it is resolved lexically against
//!   the archive's entries, relative to the **pack root** (a link that leads elsewhere
//!   in the archive, outside the pack root, leaves the pack), following chains of links
//!   (at most [`MAX_LINK_HOPS`]), and written as a copy of the file or directory it
//!   resolves to: a stored pack holds no links. One that leaves the pack, points to
//!   nothing or loops (including a directory link to a directory containing it) is
//!   refused naming it. Copies count against the entry and byte limits like any entry.
//! * Limits ([`Limits`]) count the bytes actually written, never header sizes.
//! * Tar extension records (pax headers, GNU long names/links) are interpreted here, not
//!   by the tar crate (which would read them whole): each is refused above
//!   [`Limits::max_header_bytes`] by its declared size before it is read. Entry names
//!   with control characters are refused (the error escapes them).
//! * Extractions across the process pass one [`ExtractBudget`] (slots and reserved
//!   memory); the caller holds its [`ExtractPermit`] for the whole blocking extraction.
//! * Ownership, mtimes and setuid/setgid/sticky bits are not preserved; files are 0755
//!   if any execute bit was set in the archive, else 0644 (before the umask).
//! * While writing, the "attune-pack-file-v1" checksum is computed from the same
//!   buffers ([`crate::checksum::DirectoryHasher`]), see [`ExtractSummary::checksum`].
//! * No fsync: the caller decides the durability story (one fsync or rename per pack).
//!
//! **On error** `dest` may contain a partial extraction; the caller deletes `dest`.
//! Nothing is cleaned up here.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, mpsc};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::checksum::{ChecksumError, DirectoryHasher};
use crate::packfs::{LINKS_RULE, LinkProblem, MAX_LINK_HOPS};
use crate::progress::{Reporter, Stage};

const BUF_SIZE: usize = 256 * 1024;
/// Progress is reported every this many entries.
const PROGRESS_EVERY: u64 = 256;
/// Cancellation is checked at every entry and every this many bytes inside a file.
const CANCEL_CHECK_BYTES: u64 = 16 * 1024 * 1024;

/// Archive formats, detected from content.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArchiveFormat {
    Zip,
    TarGz,
    Tar,
}

/// Extraction limits. All sizes are uncompressed bytes actually written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Sum of all file sizes. Default 512 MiB.
    pub max_total_bytes: u64,
    /// Number of entries (files and directories). Default 20,000.
    pub max_entries: u64,
    /// Size of one file. Default 100 MiB.
    pub max_entry_bytes: u64,
    /// Size of one tar extension record read into memory: a pax extended header
    /// (local or global) or a GNU long name / long link entry. Default 64 KiB.
    pub max_header_bytes: u64,
    /// Sum of the lengths of all entry names (they are kept in memory to detect
    /// duplicates and to compute the checksum). Default 8 MiB.
    pub max_names_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_total_bytes: 512 * 1024 * 1024,
            max_entries: 20_000,
            max_entry_bytes: 100 * 1024 * 1024,
            max_header_bytes: 64 * 1024,
            max_names_bytes: 8 * 1024 * 1024,
        }
    }
}

/// Longest entry name accepted (Linux's `PATH_MAX`): a longer one could not be created.
const MAX_NAME_BYTES: usize = 4096;

/// Memory an extraction's buffers take besides what [`Limits`] bound: the file and
/// inflate readers, the inflated chunks in flight between the two threads (at most
/// ~12 of 256 KiB), the write buffer and the inflater's state.
const FIXED_MEMORY_BYTES: u64 = 4 * 1024 * 1024;
/// Bookkeeping per entry besides its name (map slot, string header, checksum track).
const MEMORY_PER_ENTRY: u64 = 64;

/// The most memory one extraction under `limits` can hold: fixed buffers, one of each
/// kind of tar extension record, and the names kept for duplicate detection (counted
/// twice for the map's slack).
pub fn memory_needed(limits: &Limits) -> u64 {
    FIXED_MEMORY_BYTES
        .saturating_add(limits.max_header_bytes.saturating_mul(3))
        .saturating_add(limits.max_names_bytes.saturating_mul(2))
        .saturating_add(limits.max_entries.saturating_mul(MEMORY_PER_ENTRY))
}

/// Process-wide admission for extractions: at most `concurrency` run at once, and the
/// memory each may hold ([`memory_needed`]) is reserved from a shared byte budget
/// before it starts. Waiting for admission holds nothing; a [`ExtractPermit`] gives
/// everything back when dropped, which happens when the blocking extraction ends,
/// whether it finished, failed or was cancelled.
#[derive(Debug, Clone)]
pub struct ExtractBudget {
    slots: Arc<Semaphore>,
    /// In KiB (tokio semaphores count in u32 per acquisition).
    memory_kib: Arc<Semaphore>,
    concurrency: usize,
    memory_bytes: u64,
}

/// Held while one extraction runs.
#[derive(Debug)]
pub struct ExtractPermit {
    _slot: OwnedSemaphorePermit,
    _memory: OwnedSemaphorePermit,
}

/// The budget cannot admit an extraction under the given limits, ever.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BudgetError {
    #[error(
        "download.extract_memory_bytes ({budget} bytes) is smaller than what one extraction \
         may need under the download limits ({needed} bytes: 4 MiB of buffers, 3 x \
         max_header_bytes, 2 x max_names_bytes, 64 bytes per entry)"
    )]
    TooSmall { needed: u64, budget: u64 },
    #[error("download.extract_concurrency must be at least 1")]
    NoSlots,
}

fn kib(bytes: u64) -> u64 {
    bytes.div_ceil(1024)
}

impl ExtractBudget {
    pub fn new(concurrency: usize, memory_bytes: u64) -> Self {
        let memory_kib = kib(memory_bytes).min(Semaphore::MAX_PERMITS as u64) as usize;
        Self {
            slots: Arc::new(Semaphore::new(concurrency.min(Semaphore::MAX_PERMITS))),
            memory_kib: Arc::new(Semaphore::new(memory_kib)),
            concurrency,
            memory_bytes,
        }
    }

    /// Whether an extraction under `limits` can ever be admitted.
    pub fn validate(&self, limits: &Limits) -> Result<(), BudgetError> {
        if self.concurrency == 0 {
            return Err(BudgetError::NoSlots);
        }
        let needed = memory_needed(limits);
        if needed > self.memory_bytes || kib(needed) > u64::from(u32::MAX) {
            return Err(BudgetError::TooSmall {
                needed,
                budget: self.memory_bytes,
            });
        }
        Ok(())
    }

    /// Waits for a slot and for [`memory_needed`]`(limits)` bytes of the budget.
    /// Dropping the future while it waits holds nothing.
    pub async fn admit(&self, limits: &Limits) -> Result<ExtractPermit, BudgetError> {
        self.validate(limits)?;
        let slot = Arc::clone(&self.slots)
            .acquire_owned()
            .await
            .map_err(|_| BudgetError::NoSlots)?;
        let needed = kib(memory_needed(limits)) as u32;
        let memory = Arc::clone(&self.memory_kib)
            .acquire_many_owned(needed)
            .await
            .map_err(|_| BudgetError::NoSlots)?;
        Ok(ExtractPermit {
            _slot: slot,
            _memory: memory,
        })
    }

    /// Like [`ExtractBudget::admit`] but without waiting: `None` if busy.
    pub fn try_admit(&self, limits: &Limits) -> Result<Option<ExtractPermit>, BudgetError> {
        self.validate(limits)?;
        let Ok(slot) = Arc::clone(&self.slots).try_acquire_owned() else {
            return Ok(None);
        };
        let needed = kib(memory_needed(limits)) as u32;
        let Ok(memory) = Arc::clone(&self.memory_kib).try_acquire_many_owned(needed) else {
            return Ok(None);
        };
        Ok(Some(ExtractPermit {
            _slot: slot,
            _memory: memory,
        }))
    }

    /// Extractions running now.
    pub fn running(&self) -> usize {
        self.concurrency - self.slots.available_permits()
    }

    /// Bytes of the memory budget reserved now.
    pub fn reserved_bytes(&self) -> u64 {
        let total = kib(self.memory_bytes).min(Semaphore::MAX_PERMITS as u64);
        (total - self.memory_kib.available_permits() as u64) * 1024
    }
}

/// What [`extract`] did.
#[derive(Debug, Clone)]
pub struct ExtractSummary {
    /// Entries extracted (files, directories, links and their copies; pax/global
    /// headers not counted).
    pub entries: u64,
    /// File bytes written.
    pub bytes: u64,
    /// Regular files written.
    pub files: u64,
    pub format: ArchiveFormat,
    /// Checksums streamed while writing; use [`ExtractSummary::checksum`].
    pub content: DirectoryHasher,
    limits: Limits,
    /// Every entry by its archive path.
    seen: HashMap<String, Kind>,
    /// Link entries by their archive path, not yet on disk.
    links: HashMap<String, ArchiveLink>,
    /// Whether links were written below the pack root (the streamed checksum misses
    /// them).
    links_placed: bool,
}

/// A link entry of the archive.
#[derive(Debug, Clone)]
struct ArchiveLink {
    /// A symbolic link's target text, or a hard link's (cleaned) archive path.
    target: String,
    hard: bool,
}

impl ArchiveLink {
    fn kind(&self) -> &'static str {
        if self.hard {
            "hard link"
        } else {
            "symbolic link"
        }
    }
}

impl ExtractSummary {
    /// The "attune-pack-file-v1" checksum (bare hex) of `pack_root`, a directory at or
    /// below `dest` (typically [`ExtractSummary::pack_root`]'s answer). Computed while
    /// extracting when possible, else by re-reading `pack_root` (see
    /// [`DirectoryHasher`]). Only valid while the extracted tree is unmodified.
    pub fn checksum(&self, dest: &Path, pack_root: &Path) -> Result<String, ChecksumError> {
        if self.links_placed {
            return crate::checksum::directory_checksum(pack_root);
        }
        self.content.checksum(dest, pack_root)
    }

    /// Finds the pack root in `dest` (see [`find_pack_root`]) and writes each link
    /// entry below it as a copy of the file or directory it resolves to (relative to
    /// the pack root); a link that leaves the pack root, points to nothing or loops is
    /// refused naming it (relative to the pack root). Links outside the pack root are
    /// not part of the pack and are left out, like the other entries there.
    pub fn pack_root(&mut self, dest: &Path) -> Result<PathBuf, ArchiveError> {
        let root = find_pack_root(dest)?;
        if self.links.is_empty() {
            return Ok(root);
        }
        let root_rel: String = root
            .strip_prefix(dest)
            .unwrap_or(Path::new(""))
            .to_string_lossy()
            .into_owned();
        let mut links: Vec<String> = self
            .links
            .keys()
            .filter(|link| is_below(&root_rel, link))
            .cloned()
            .collect();
        links.sort();
        let mut children: HashMap<&str, Vec<&str>> = HashMap::new();
        for path in self.seen.keys() {
            let (parent, name) = path.rsplit_once('/').unwrap_or(("", path));
            children.entry(parent).or_default().push(name);
        }
        for names in children.values_mut() {
            names.sort_unstable();
        }
        let mut placer = Placer {
            dest,
            root: &root_rel,
            seen: &self.seen,
            links: &self.links,
            children: &children,
            limits: self.limits,
            entries: self.entries,
            bytes: self.bytes,
            files: self.files,
        };
        for link in &links {
            placer.place(link, link, &mut Vec::new())?;
        }
        let (entries, bytes, files) = (placer.entries, placer.bytes, placer.files);
        self.entries = entries;
        self.bytes = bytes;
        self.files = files;
        self.links_placed = !links.is_empty();
        Ok(root)
    }
}

/// Whether the archive path `path` is `root` or below it (`""` is the archive root).
fn is_below(root: &str, path: &str) -> bool {
    root.is_empty()
        || path == root
        || (path.starts_with(root) && path.as_bytes().get(root.len()) == Some(&b'/'))
}

/// Writes link entries as copies of what they resolve to, reading only the regular
/// files extracted (never a copy, never a link: none exists on disk).
struct Placer<'a> {
    dest: &'a Path,
    /// The pack root's archive path.
    root: &'a str,
    seen: &'a HashMap<String, Kind>,
    links: &'a HashMap<String, ArchiveLink>,
    /// Entry names by their parent's archive path.
    children: &'a HashMap<&'a str, Vec<&'a str>>,
    limits: Limits,
    entries: u64,
    bytes: u64,
    files: u64,
}

impl Placer<'_> {
    /// Puts at `at` the content of the entry `physical` (a file, a directory or a
    /// link, resolved first). `stack`: the directories being copied, so that a
    /// directory link back to one of them is a loop.
    fn place(
        &mut self,
        at: &str,
        physical: &str,
        stack: &mut Vec<String>,
    ) -> Result<(), ArchiveError> {
        if at.len() > MAX_NAME_BYTES {
            return Err(ArchiveError::UnsafePath {
                entry: format!("{}…", at.chars().take(100).collect::<String>()),
                reason: "a link copy would have a name longer than 4096 bytes",
            });
        }
        match self.seen.get(physical).copied() {
            Some(Kind::File) => self.copy_file(at, physical),
            Some(Kind::Dir) => {
                self.count_entry()?;
                let to = self.dest.join(at);
                fs::create_dir(&to).map_err(io_at(&to))?;
                stack.push(physical.to_string());
                let names = self.children.get(physical).cloned().unwrap_or_default();
                for name in names {
                    self.place(
                        &format!("{at}/{name}"),
                        &format!("{physical}/{name}"),
                        stack,
                    )?;
                }
                stack.pop();
                Ok(())
            }
            Some(Kind::Link) => {
                let (resolved, kind) = self.resolve(physical)?;
                if kind == Kind::Dir {
                    let parent = physical.rsplit_once('/').map_or("", |(p, _)| p);
                    if is_below(&resolved, parent)
                        || stack.iter().any(|dir| is_below(&resolved, dir))
                    {
                        return Err(self.refusal(physical, LinkProblem::Loop));
                    }
                }
                self.place(at, &resolved, stack)
            }
            None => Err(self.refusal(physical, LinkProblem::Dangling)),
        }
    }

    fn count_entry(&mut self) -> Result<(), ArchiveError> {
        self.entries += 1;
        if self.entries > self.limits.max_entries {
            return Err(ArchiveError::TooManyEntries {
                limit: self.limits.max_entries,
            });
        }
        Ok(())
    }

    /// Copies the extracted regular file `physical` to `at`, with its permissions.
    fn copy_file(&mut self, at: &str, physical: &str) -> Result<(), ArchiveError> {
        self.count_entry()?;
        let from = self.dest.join(physical);
        let to = self.dest.join(at);
        let mut opts = OpenOptions::new();
        opts.read(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.custom_flags(libc_o_nofollow());
        }
        let mut src = opts.open(&from).map_err(io_at(&from))?;
        let meta = src.metadata().map_err(io_at(&from))?;
        if !meta.is_file() {
            return Err(self.refusal(at, LinkProblem::Dangling));
        }
        if self.bytes.saturating_add(meta.len()) > self.limits.max_total_bytes {
            return Err(ArchiveError::TooLarge {
                limit: self.limits.max_total_bytes,
            });
        }
        let mut out = OpenOptions::new();
        out.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
            out.mode(meta.permissions().mode() & 0o777);
        }
        let mut out = out.open(&to).map_err(io_at(&to))?;
        let room = self.limits.max_total_bytes - self.bytes;
        let written =
            io::copy(&mut (&mut src).take(room.saturating_add(1)), &mut out).map_err(io_at(&to))?;
        if written > room {
            return Err(ArchiveError::TooLarge {
                limit: self.limits.max_total_bytes,
            });
        }
        self.bytes += written;
        self.files += 1;
        Ok(())
    }

    /// The link `link` (an archive path) refused, named relative to the pack root.
    fn refusal(&self, link: &str, problem: LinkProblem) -> ArchiveError {
        let shown = if self.root.is_empty() {
            link
        } else {
            link.strip_prefix(self.root)
                .and_then(|l| l.strip_prefix('/'))
                .unwrap_or(link)
        };
        let (kind, target) = self
            .links
            .get(link)
            .map_or(("symbolic link", String::new()), |l| {
                (l.kind(), l.target.clone())
            });
        ArchiveError::BadLink {
            entry: shown.to_string(),
            kind,
            target,
            problem,
        }
    }

    /// Resolves the link entry `link` lexically against the archive's entries:
    /// relative to its directory (a hard link: to the archive root), never above the
    /// pack root, following further links. Returns the archive path of the file or
    /// directory it leads to.
    fn resolve(&self, link: &str) -> Result<(String, Kind), ArchiveError> {
        let floor = if self.root.is_empty() {
            0
        } else {
            self.root.split('/').count()
        };
        let mut cur: Vec<&str> = link.split('/').collect();
        cur.pop();
        let mut todo: std::collections::VecDeque<&str> = std::collections::VecDeque::new();
        let mut hops = 0u32;
        let mut next: &str = link;
        loop {
            // Expand the link `next`.
            hops += 1;
            if hops > MAX_LINK_HOPS {
                return Err(self.refusal(link, LinkProblem::Loop));
            }
            let entry = &self.links[next];
            if entry.hard {
                if !is_below(self.root, &entry.target) {
                    return Err(self.refusal(link, LinkProblem::Escapes));
                }
                cur.clear();
            } else if entry.target.starts_with('/') {
                return Err(self.refusal(link, LinkProblem::Escapes));
            }
            for part in entry.target.split('/').rev() {
                todo.push_front(part);
            }
            let mut expanded = None;
            while let Some(part) = todo.pop_front() {
                match part {
                    "" | "." => continue,
                    ".." => {
                        if cur.len() <= floor {
                            return Err(self.refusal(link, LinkProblem::Escapes));
                        }
                        cur.pop();
                        continue;
                    }
                    name => cur.push(name),
                }
                let key = cur.join("/");
                match self.seen.get(&key) {
                    Some(Kind::Dir) => {}
                    Some(Kind::File) if todo.iter().all(|p| p.is_empty() || *p == ".") => {}
                    Some(Kind::File) | None => {
                        return Err(self.refusal(link, LinkProblem::Dangling));
                    }
                    Some(Kind::Link) => {
                        cur.pop();
                        expanded = Some(key);
                        break;
                    }
                }
            }
            match expanded {
                Some(key) => {
                    next = self
                        .links
                        .get_key_value(&key)
                        .map(|(k, _)| k.as_str())
                        .unwrap_or(link);
                }
                None => break,
            }
        }
        let key = cur.join("/");
        let kind = if key.is_empty() {
            Kind::Dir
        } else {
            self.seen.get(&key).copied().unwrap_or(Kind::Dir)
        };
        Ok((key, kind))
    }
}

/// `O_NOFOLLOW`: the extracted tree holds no links, and a copy must not start
/// following one.
#[cfg(unix)]
fn libc_o_nofollow() -> i32 {
    rustix::fs::OFlags::NOFOLLOW.bits() as i32
}

/// Errors from sniffing, extraction and pack-root search.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error("archive entry {entry:?} has an unsafe path: {reason}")]
    UnsafePath { entry: String, reason: &'static str },
    /// `entry` is named relative to the pack root once it is known (else as in the
    /// archive).
    #[error("archive entry {entry:?} is a {kind} to {target:?} that {problem}; {LINKS_RULE}")]
    BadLink {
        entry: String,
        kind: &'static str,
        target: String,
        problem: LinkProblem,
    },
    #[error(
        "archive entry {entry:?} is a {kind}; packs may contain only regular files and directories"
    )]
    SpecialFile { entry: String, kind: String },
    #[error(
        "archive entry {entry:?} appears twice, or clashes with a file of the same name ({reason})"
    )]
    Duplicate { entry: String, reason: &'static str },
    #[error("archive has more than {limit} entries")]
    TooManyEntries { limit: u64 },
    #[error("archive entry {entry:?} is larger than the {limit}-byte limit per file")]
    EntryTooLarge { entry: String, limit: u64 },
    #[error("archive expands to more than {limit} bytes")]
    TooLarge { limit: u64 },
    #[error(
        "archive entry {entry:?} is a {kind} of {size} bytes, more than the {limit}-byte \
         limit (setting download.max_header_bytes)"
    )]
    HeaderTooLarge {
        entry: String,
        kind: &'static str,
        size: u64,
        limit: u64,
    },
    #[error(
        "archive entry names add up to more than {limit} bytes \
         (setting download.max_names_bytes)"
    )]
    NamesTooLong { limit: u64 },
    #[error(
        "'{path}' is a {kind}, not a regular file; an archive source must be a regular file \
         (it was not read)"
    )]
    NotRegularFile { path: PathBuf, kind: &'static str },
    #[error(
        "'{path}' is {size} bytes, more than the {limit}-byte limit for an archive \
         (setting download.max_archive_bytes); it was not read"
    )]
    ArchiveTooLarge {
        path: PathBuf,
        size: u64,
        limit: u64,
    },
    #[error(
        "the zip's central directory declares {declared} bytes, more than the {limit} bytes \
         an archive within the entry limits needs (settings download.max_entries and \
         download.max_names_bytes); it was not read"
    )]
    CentralDirectoryTooLarge { declared: u64, limit: u64 },
    #[error("{path}: not a supported archive (zip, tar.gz or tar): {seen}")]
    UnknownFormat { path: PathBuf, seen: String },
    #[error("corrupt or unsupported archive: {detail}")]
    Corrupt { detail: String },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("extraction cancelled")]
    Cancelled,
    #[error("no pack.yaml found at the archive root, in pack/, or in a single top-level directory")]
    NoPackRoot,
    #[error("several directories contain a pack.yaml, cannot tell which is the pack: {}", .0.join(", "))]
    SeveralPackRoots(Vec<String>),
}

fn io_at(path: &Path) -> impl FnOnce(io::Error) -> ArchiveError + '_ {
    move |source| ArchiveError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn corrupt(e: impl std::fmt::Display) -> ArchiveError {
    ArchiveError::Corrupt {
        detail: e.to_string(),
    }
}

// ---------------------------------------------------------------------------
// Sniffing
// ---------------------------------------------------------------------------

/// Opens an archive named by path once, for everything that follows (sniffing,
/// extraction): without following a link at its last component, without blocking (a
/// FIFO swapped in after a check cannot wedge the thread), then `fstat`ed. Anything
/// but a regular file (FIFO, device, socket, directory, link) is refused, and so is a
/// file larger than `max_bytes` (`download.max_archive_bytes`), before a byte is read.
pub fn open_archive(path: &Path, max_bytes: u64) -> Result<File, ArchiveError> {
    use rustix::fs::{FileType, Mode, OFlags};
    let flags =
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NONBLOCK | OFlags::NOCTTY;
    let fd = match rustix::fs::open(path, flags, Mode::empty()) {
        Ok(fd) => fd,
        Err(rustix::io::Errno::LOOP) => {
            return Err(ArchiveError::NotRegularFile {
                path: path.to_path_buf(),
                kind: "symbolic link",
            });
        }
        Err(e) => return Err(io_at(path)(io::Error::from(e))),
    };
    let stat = rustix::fs::fstat(&fd).map_err(|e| io_at(path)(io::Error::from(e)))?;
    let kind = match FileType::from_raw_mode(stat.st_mode) {
        FileType::RegularFile => None,
        FileType::Directory => Some("directory"),
        FileType::Fifo => Some("fifo"),
        FileType::Socket => Some("socket"),
        FileType::CharacterDevice => Some("character device"),
        FileType::BlockDevice => Some("block device"),
        FileType::Symlink => Some("symbolic link"),
        FileType::Unknown => Some("special file"),
    };
    if let Some(kind) = kind {
        return Err(ArchiveError::NotRegularFile {
            path: path.to_path_buf(),
            kind,
        });
    }
    let size = u64::try_from(stat.st_size).unwrap_or(u64::MAX);
    if size > max_bytes {
        return Err(ArchiveError::ArchiveTooLarge {
            path: path.to_path_buf(),
            size,
            limit: max_bytes,
        });
    }
    Ok(File::from(fd))
}

/// Detects the archive format from the file's first bytes (not its name): zip local
/// header `PK\x03\x04` or empty-zip end record `PK\x05\x06`; gzip `1f 8b` (taken to be a
/// gzip-compressed tar); POSIX/GNU tar `ustar` magic at offset 257; or an old (v7) tar
/// header, accepted only if its header checksum verifies.
pub fn sniff_format(path: &Path) -> Result<ArchiveFormat, ArchiveError> {
    let mut f = File::open(path).map_err(io_at(path))?;
    sniff_file(&mut f, path)
}

/// [`sniff_format`] of an opened file (`path` for messages), read from its start and
/// left at its start.
fn sniff_file(f: &mut File, path: &Path) -> Result<ArchiveFormat, ArchiveError> {
    f.seek(io::SeekFrom::Start(0)).map_err(io_at(path))?;
    let mut head = [0u8; 512];
    let mut n = 0;
    while n < head.len() {
        match f.read(&mut head[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(io_at(path)(e)),
        }
    }
    f.seek(io::SeekFrom::Start(0)).map_err(io_at(path))?;
    sniff_bytes(&head[..n]).ok_or_else(|| ArchiveError::UnknownFormat {
        path: path.to_path_buf(),
        seen: describe_head(&head[..n]),
    })
}

fn sniff_bytes(b: &[u8]) -> Option<ArchiveFormat> {
    if b.starts_with(b"PK\x03\x04") || b.starts_with(b"PK\x05\x06") {
        return Some(ArchiveFormat::Zip);
    }
    if b.starts_with(&[0x1f, 0x8b]) {
        return Some(ArchiveFormat::TarGz);
    }
    if b.len() >= 512 {
        if &b[257..262] == b"ustar" {
            return Some(ArchiveFormat::Tar);
        }
        if v7_tar_header_ok(&b[..512]) {
            return Some(ArchiveFormat::Tar);
        }
    }
    None
}

/// An old-style tar header: non-empty NUL-terminated name, and the octal checksum
/// field equals the byte sum of the header with the checksum field read as spaces.
fn v7_tar_header_ok(h: &[u8]) -> bool {
    if h[0] == 0 || !h[..100].contains(&0) {
        return false;
    }
    let field = &h[148..156];
    let digits: Vec<u8> = field
        .iter()
        .copied()
        .skip_while(|c| *c == b' ')
        .take_while(|c| (b'0'..=b'7').contains(c))
        .collect();
    if digits.is_empty() {
        return false;
    }
    let Ok(want) = u32::from_str_radix(std::str::from_utf8(&digits).unwrap_or("x"), 8) else {
        return false;
    };
    let sum: u32 = h
        .iter()
        .enumerate()
        .map(|(i, &c)| {
            if (148..156).contains(&i) {
                32
            } else {
                c as u32
            }
        })
        .sum();
    sum == want
}

fn describe_head(b: &[u8]) -> String {
    if b.is_empty() {
        return "the file is empty".into();
    }
    let hexed: Vec<String> = b.iter().take(8).map(|c| format!("{c:02x}")).collect();
    let start = String::from_utf8_lossy(&b[..b.len().min(64)]).to_lowercase();
    let start = start.trim_start();
    let hint = if start.starts_with("<!doctype html") || start.starts_with("<html") {
        " (an HTML page: an error or login page instead of the archive?)"
    } else if start.starts_with('{') || start.starts_with('[') {
        " (looks like JSON)"
    } else if b.starts_with(b"BZh") {
        " (bzip2, not supported)"
    } else if b.starts_with(&[0xfd, b'7', b'z', b'X', b'Z']) {
        " (xz, not supported)"
    } else if b.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        " (zstd, not supported)"
    } else {
        ""
    };
    format!("first bytes {}{hint}", hexed.join(" "))
}

// ---------------------------------------------------------------------------
// Path validation
// ---------------------------------------------------------------------------

/// Validates an archive entry name and returns it normalised: `/`-joined components,
/// `.` and empty components dropped, and whether it named a directory (trailing `/`).
/// `Ok(None)` for the archive root itself (e.g. `./`).
fn clean_path(raw: &[u8]) -> Result<Option<(String, bool)>, ArchiveError> {
    let lossy = || String::from_utf8_lossy(raw).into_owned();
    let unsafe_path = |reason| ArchiveError::UnsafePath {
        entry: lossy(),
        reason,
    };
    let s = std::str::from_utf8(raw).map_err(|_| unsafe_path("name is not valid UTF-8"))?;
    if s.is_empty() {
        return Err(unsafe_path("empty name"));
    }
    if s.contains('\0') {
        return Err(unsafe_path("name contains a NUL byte"));
    }
    // Carriage returns, tabs, escape sequences and the like in file names forge lines
    // and terminal output wherever the names are shown.
    if s.chars().any(|c| c < ' ' || c == '\u{7f}') {
        return Err(unsafe_path("name contains a control character"));
    }
    if s.len() > MAX_NAME_BYTES {
        return Err(ArchiveError::UnsafePath {
            entry: format!("{}…", s.chars().take(100).collect::<String>()),
            reason: "name is longer than 4096 bytes",
        });
    }
    if s.starts_with('/') {
        return Err(unsafe_path("absolute path"));
    }
    if s.contains('\\') {
        return Err(unsafe_path(
            "contains a backslash (Windows path separator or prefix)",
        ));
    }
    let mut out = String::with_capacity(s.len());
    for (i, comp) in s.split('/').enumerate() {
        match comp {
            "" | "." => continue,
            ".." => return Err(unsafe_path("contains a '..' component")),
            c => {
                let b = c.as_bytes();
                if i == 0 && b.len() >= 2 && b[1] == b':' && b[0].is_ascii_alphabetic() {
                    return Err(unsafe_path("starts with a Windows drive letter"));
                }
                if !out.is_empty() {
                    out.push('/');
                }
                out.push_str(c);
            }
        }
    }
    if out.is_empty() {
        return Ok(None);
    }
    Ok(Some((out, s.ends_with('/'))))
}

// ---------------------------------------------------------------------------
// Extraction
// ---------------------------------------------------------------------------

/// Extracts `archive` (format sniffed from its bytes) into `dest`, an existing empty
/// directory created by the caller. Refuses absolute paths, `..`, Windows drive
/// letters/backslashes, links, devices/fifos, duplicate paths and entries beneath a
/// file, and anything beyond `limits`. Reports `Stage::Extract` progress every 256
/// entries and stops with [`ArchiveError::Cancelled`] when the reporter's receiver is
/// gone.
///
/// On error `dest` may hold a partial tree: the caller deletes it.
pub fn extract(
    archive: &Path,
    dest: &Path,
    limits: &Limits,
    reporter: &Reporter,
) -> Result<ExtractSummary, ArchiveError> {
    let file = File::open(archive).map_err(io_at(archive))?;
    extract_file(file, archive, dest, limits, reporter)
}

/// [`extract`] from an archive already opened (see [`open_archive`]); `archive` names
/// it in messages and is never opened.
pub fn extract_file(
    mut file: File,
    archive: &Path,
    dest: &Path,
    limits: &Limits,
    reporter: &Reporter,
) -> Result<ExtractSummary, ArchiveError> {
    let format = sniff_file(&mut file, archive)?;
    let mut sink = Sink::new(dest, limits, reporter, format);
    match format {
        ArchiveFormat::Zip => extract_zip(BufReader::with_capacity(BUF_SIZE, file), &mut sink)?,
        ArchiveFormat::Tar => extract_tar(BufReader::with_capacity(BUF_SIZE, file), &mut sink)?,
        ArchiveFormat::TarGz => {
            let cap = tar_stream_cap(limits);
            std::thread::scope(|s| {
                let (tx, rx) = mpsc::sync_channel::<io::Result<Vec<u8>>>(8);
                let (pool_tx, pool_rx) = mpsc::channel::<Vec<u8>>();
                s.spawn(move || inflate_thread(file, cap, tx, pool_rx));
                let reader = ChannelReader {
                    rx,
                    pool: pool_tx,
                    cur: Vec::new(),
                    pos: 0,
                };
                // `reader` (and with it the receiver) is dropped when this returns,
                // which stops the inflating thread if we stop early.
                extract_tar(reader, &mut sink)
            })?;
        }
    }
    sink.progress();
    Ok(sink.finish())
}

/// Upper bound for the decompressed tar stream: file data plus generous room for
/// headers and padding. Bounds the work (not the memory: extension records are capped
/// one by one) that skipping over refused or padding data may take.
fn tar_stream_cap(l: &Limits) -> u64 {
    l.max_total_bytes
        .saturating_add(l.max_entries.saturating_mul(4 * 1024))
        .saturating_add(1024 * 1024)
}

fn inflate_thread(
    file: File,
    cap: u64,
    tx: mpsc::SyncSender<io::Result<Vec<u8>>>,
    pool: mpsc::Receiver<Vec<u8>>,
) {
    let gz = flate2::read::MultiGzDecoder::new(BufReader::with_capacity(BUF_SIZE, file));
    let mut gz = gz.take(cap.saturating_add(1));
    let mut total = 0u64;
    loop {
        let mut buf = pool
            .try_recv()
            .unwrap_or_else(|_| Vec::with_capacity(BUF_SIZE));
        buf.resize(BUF_SIZE, 0);
        let mut filled = 0;
        while filled < buf.len() {
            match gz.read(&mut buf[filled..]) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    let _ = tx.send(Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("gzip: {e}"),
                    )));
                    return;
                }
            }
        }
        total += filled as u64;
        if total > cap {
            let _ = tx.send(Err(io::Error::other(TarStreamTooLarge)));
            return;
        }
        if filled == 0 {
            return; // EOF: dropping `tx` signals it.
        }
        buf.truncate(filled);
        if tx.send(Ok(buf)).is_err() {
            return;
        }
    }
}

#[derive(Debug)]
struct TarStreamTooLarge;
impl std::fmt::Display for TarStreamTooLarge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("decompressed tar stream exceeds the limits")
    }
}
impl std::error::Error for TarStreamTooLarge {}

/// Reads the chunks produced by the inflating thread.
struct ChannelReader {
    rx: mpsc::Receiver<io::Result<Vec<u8>>>,
    pool: mpsc::Sender<Vec<u8>>,
    cur: Vec<u8>,
    pos: usize,
}

impl Read for ChannelReader {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.cur.len() {
            match self.rx.recv() {
                Ok(Ok(next)) => {
                    let old = std::mem::replace(&mut self.cur, next);
                    let _ = self.pool.send(old);
                    self.pos = 0;
                }
                Ok(Err(e)) => return Err(e),
                Err(_) => return Ok(0),
            }
        }
        let n = out.len().min(self.cur.len() - self.pos);
        out[..n].copy_from_slice(&self.cur[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    File,
    Dir,
    /// Recorded, not created (see [`ExtractSummary::pack_root`]).
    Link,
}

/// The writing side shared by all formats: path bookkeeping, limits, progress.
struct Sink<'a> {
    dest: &'a Path,
    limits: &'a Limits,
    reporter: &'a Reporter,
    format: ArchiveFormat,
    seen: HashMap<String, Kind>,
    /// Bytes of the names in `seen`.
    name_bytes: u64,
    entries: u64,
    files: u64,
    bytes: u64,
    buf: Vec<u8>,
    hasher: DirectoryHasher,
    total_hint: Option<u64>,
    links: HashMap<String, ArchiveLink>,
}

impl<'a> Sink<'a> {
    fn new(
        dest: &'a Path,
        limits: &'a Limits,
        reporter: &'a Reporter,
        format: ArchiveFormat,
    ) -> Self {
        Self {
            dest,
            limits,
            reporter,
            format,
            seen: HashMap::new(),
            name_bytes: 0,
            entries: 0,
            files: 0,
            bytes: 0,
            buf: vec![0u8; BUF_SIZE],
            hasher: DirectoryHasher::new(),
            total_hint: None,
            links: HashMap::new(),
        }
    }

    fn finish(self) -> ExtractSummary {
        ExtractSummary {
            entries: self.entries,
            bytes: self.bytes,
            files: self.files,
            format: self.format,
            content: self.hasher,
            limits: *self.limits,
            seen: self.seen,
            links: self.links,
            links_placed: false,
        }
    }

    fn progress(&self) {
        self.reporter.count(
            Stage::Extract,
            format!(
                "{}, {} extracted",
                crate::progress::count(self.files, "file", "files"),
                crate::progress::count(self.bytes, "byte", "bytes")
            ),
            self.entries,
            self.total_hint,
        );
    }

    /// Counts an entry, checks cancellation and reports progress.
    fn next_entry(&mut self) -> Result<(), ArchiveError> {
        if self.reporter.is_cancelled() {
            return Err(ArchiveError::Cancelled);
        }
        self.entries += 1;
        if self.entries > self.limits.max_entries {
            return Err(ArchiveError::TooManyEntries {
                limit: self.limits.max_entries,
            });
        }
        if self.entries.is_multiple_of(PROGRESS_EVERY) {
            self.progress();
        }
        Ok(())
    }

    /// Records `path` (and its ancestors, creating missing ones) as `kind`.
    /// Returns whether the directory still needs creating (false if already there).
    fn claim(&mut self, path: &str, kind: Kind) -> Result<bool, ArchiveError> {
        // Ancestors must be directories (ours).
        let mut missing_from = None;
        for (i, _) in path.match_indices('/') {
            match self.seen.get(&path[..i]) {
                Some(Kind::File) => {
                    return Err(ArchiveError::Duplicate {
                        entry: path.to_string(),
                        reason: "a parent directory was extracted as a file",
                    });
                }
                Some(Kind::Link) => {
                    return Err(ArchiveError::Duplicate {
                        entry: path.to_string(),
                        reason: "a parent directory is a link entry; nothing is written through a link",
                    });
                }
                Some(Kind::Dir) => {}
                None => {
                    if missing_from.is_none() {
                        missing_from = Some(i);
                    }
                }
            }
        }
        if let Some(first) = missing_from {
            let parent = &path[..path.rfind('/').unwrap_or(0)];
            fs::create_dir_all(self.dest.join(parent)).map_err(io_at(&self.dest.join(parent)))?;
            for (i, _) in path.match_indices('/').filter(|(i, _)| *i >= first) {
                self.remember_name(i)?;
                self.seen.insert(path[..i].to_string(), Kind::Dir);
            }
        }
        match (self.seen.get(path), kind) {
            (None, _) => {
                self.remember_name(path.len())?;
                self.seen.insert(path.to_string(), kind);
                Ok(true)
            }
            (Some(Kind::Dir), Kind::Dir) => Ok(false),
            (Some(_), _) => Err(ArchiveError::Duplicate {
                entry: path.to_string(),
                reason: "duplicate path",
            }),
        }
    }

    /// Counts a name of `len` bytes about to be kept in `seen`.
    fn remember_name(&mut self, len: usize) -> Result<(), ArchiveError> {
        self.name_bytes += len as u64;
        if self.name_bytes > self.limits.max_names_bytes {
            return Err(ArchiveError::NamesTooLong {
                limit: self.limits.max_names_bytes,
            });
        }
        Ok(())
    }

    /// Records the link entry `path` (`name` as in the archive) to `target`: a
    /// symbolic link's text, or a hard link's archive path, which must be an earlier
    /// regular-file entry. Refused at once when it cannot stay in any pack root.
    fn link(
        &mut self,
        name: &str,
        path: &str,
        target: &[u8],
        hard: bool,
    ) -> Result<(), ArchiveError> {
        let unsafe_target = |reason| ArchiveError::UnsafePath {
            entry: name.to_string(),
            reason,
        };
        let text = std::str::from_utf8(target)
            .map_err(|_| unsafe_target("link target is not valid UTF-8"))?;
        if text.len() > MAX_NAME_BYTES {
            return Err(unsafe_target("link target is longer than 4096 bytes"));
        }
        if text.chars().any(|c| c < ' ' || c == '\u{7f}') {
            return Err(unsafe_target(
                "link target contains a control character or a NUL byte",
            ));
        }
        let kind = if hard { "hard link" } else { "symbolic link" };
        let refused = |problem| ArchiveError::BadLink {
            entry: name.to_string(),
            kind,
            target: text.to_string(),
            problem,
        };
        let stored = if hard {
            // An unsafe name (absolute, `..`) cannot be an entry of the archive.
            let cleaned = match clean_path(target) {
                Ok(Some((cleaned, _))) => cleaned,
                Ok(None) => return Err(refused(LinkProblem::Dangling)),
                Err(_) => return Err(refused(LinkProblem::Escapes)),
            };
            if self.seen.get(&cleaned) != Some(&Kind::File) {
                return Err(refused(LinkProblem::Dangling));
            }
            cleaned
        } else {
            if text.is_empty() {
                return Err(refused(LinkProblem::Dangling));
            }
            if text.starts_with('/') {
                return Err(refused(LinkProblem::Escapes));
            }
            // `..` above the archive root leaves every possible pack root.
            let mut depth = path.matches('/').count() as i64;
            for part in text.split('/') {
                match part {
                    "" | "." => {}
                    ".." => {
                        depth -= 1;
                        if depth < 0 {
                            return Err(refused(LinkProblem::Escapes));
                        }
                    }
                    _ => depth += 1,
                }
            }
            text.to_string()
        };
        self.claim(path, Kind::Link)?;
        self.remember_name(stored.len())?;
        self.links.insert(
            path.to_string(),
            ArchiveLink {
                target: stored,
                hard,
            },
        );
        Ok(())
    }

    fn dir(&mut self, path: &str) -> Result<(), ArchiveError> {
        if self.claim(path, Kind::Dir)? {
            let p = self.dest.join(path);
            fs::create_dir(&p).map_err(io_at(&p))?;
        }
        Ok(())
    }

    /// Writes one regular file from `data`, hashing it on the way. `declared` is the
    /// header's size (used only for the checksum framing; the limits use real bytes).
    fn file(
        &mut self,
        path: &str,
        executable: bool,
        declared: u64,
        data: &mut dyn Read,
    ) -> Result<u64, ArchiveError> {
        if declared > self.limits.max_entry_bytes {
            return Err(ArchiveError::EntryTooLarge {
                entry: path.to_string(),
                limit: self.limits.max_entry_bytes,
            });
        }
        self.claim(path, Kind::File)?;
        let p = self.dest.join(path);
        let mut opts = OpenOptions::new();
        opts.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(if executable { 0o755 } else { 0o644 });
        }
        #[cfg(not(unix))]
        let _ = executable;
        let mut out = opts.open(&p).map_err(io_at(&p))?;
        self.hasher.begin_file(path, declared);
        let mut written = 0u64;
        let mut next_check = CANCEL_CHECK_BYTES;
        loop {
            let n = match data.read(&mut self.buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(read_error(e, self.limits)),
            };
            written += n as u64;
            if written > self.limits.max_entry_bytes {
                return Err(ArchiveError::EntryTooLarge {
                    entry: path.to_string(),
                    limit: self.limits.max_entry_bytes,
                });
            }
            if self.bytes + written > self.limits.max_total_bytes {
                return Err(ArchiveError::TooLarge {
                    limit: self.limits.max_total_bytes,
                });
            }
            let chunk = &self.buf[..n];
            self.hasher.update(chunk);
            out.write_all(chunk).map_err(io_at(&p))?;
            if written >= next_check {
                next_check += CANCEL_CHECK_BYTES;
                if self.reporter.is_cancelled() {
                    return Err(ArchiveError::Cancelled);
                }
            }
        }
        self.hasher.end_file(declared, written);
        self.bytes += written;
        self.files += 1;
        Ok(written)
    }
}

fn read_error(e: io::Error, limits: &Limits) -> ArchiveError {
    if e.get_ref().is_some_and(|i| i.is::<TarStreamTooLarge>()) {
        return ArchiveError::TooLarge {
            limit: limits.max_total_bytes,
        };
    }
    corrupt(e)
}

/// Extension records read for the next member of a tar archive.
#[derive(Default)]
struct TarExtensions {
    long_name: Option<Vec<u8>>,
    long_link: Option<Vec<u8>>,
    pax: Option<Vec<u8>>,
}

impl TarExtensions {
    fn is_empty(&self) -> bool {
        self.long_name.is_none() && self.long_link.is_none() && self.pax.is_none()
    }
}

/// Iterates the archive's raw members and interprets the extension records (pax
/// headers, GNU long names/links) here rather than in the tar crate, which reads
/// them into memory whole whatever size their header declares: each is refused
/// above `max_header_bytes` before a byte of it is read.
fn extract_tar<R: Read>(reader: R, sink: &mut Sink<'_>) -> Result<(), ArchiveError> {
    let mut ar = tar::Archive::new(reader);
    let limits = *sink.limits;
    let entries = ar.entries().map_err(|e| read_error(e, &limits))?.raw(true);
    let mut pending = TarExtensions::default();
    for entry in entries {
        let mut entry = entry.map_err(|e| read_error(e, &limits))?;
        let header = entry.header();
        let et = header.entry_type();
        if et.is_pax_global_extensions() {
            // e.g. GitHub's commit id comment: read (bounded) and ignored.
            read_extension(&mut entry, "pax global header", &limits)?;
            continue;
        }
        if et.is_pax_local_extensions() {
            let record = read_extension(&mut entry, "pax extended header", &limits)?;
            if pending.pax.replace(record).is_some() {
                return Err(corrupt("two pax headers describe the same member"));
            }
            continue;
        }
        if et.is_gnu_longname() {
            let mut name = read_extension(&mut entry, "GNU long name entry", &limits)?;
            if let Some(nul) = name.iter().position(|b| *b == 0) {
                name.truncate(nul);
            }
            if pending.long_name.replace(name).is_some() {
                return Err(corrupt("two long name entries describe the same member"));
            }
            continue;
        }
        if et.is_gnu_longlink() {
            let mut target = read_extension(&mut entry, "GNU long link entry", &limits)?;
            if let Some(nul) = target.iter().position(|b| *b == 0) {
                target.truncate(nul);
            }
            if pending.long_link.replace(target).is_some() {
                return Err(corrupt("two long link entries describe the same member"));
            }
            continue;
        }
        let ext = std::mem::take(&mut pending);
        let header_size = entry.size();
        let raw = member_name(&entry, &ext, header_size, &limits)?;
        sink.next_entry()?;
        let name = String::from_utf8_lossy(&raw).into_owned();
        let cleaned = clean_path(&raw)?;
        let header = entry.header();
        let kind = match et {
            tar::EntryType::Regular | tar::EntryType::Continuous => Kind::File,
            tar::EntryType::Directory => Kind::Dir,
            tar::EntryType::Symlink | tar::EntryType::Link => Kind::Link,
            other => {
                let kind = match other {
                    tar::EntryType::Char => "character device".to_string(),
                    tar::EntryType::Block => "block device".to_string(),
                    tar::EntryType::Fifo => "fifo".to_string(),
                    tar::EntryType::GNUSparse => "sparse file".to_string(),
                    o => format!("tar entry of type {:?}", o.as_byte() as char),
                };
                return Err(ArchiveError::SpecialFile { entry: name, kind });
            }
        };
        if ext.long_link.is_some() && kind != Kind::Link {
            return Err(corrupt(format!(
                "{name}: a link target describes a regular file"
            )));
        }
        let Some((path, _)) = cleaned else {
            if kind == Kind::Dir {
                continue; // "./"
            }
            return Err(ArchiveError::UnsafePath {
                entry: name,
                reason: "a file entry names the archive root",
            });
        };
        match kind {
            Kind::Dir => sink.dir(&path)?,
            Kind::Link => {
                let target = link_target(&entry, &ext)?;
                sink.link(&name, &path, &target, et == tar::EntryType::Link)?;
            }
            Kind::File => {
                let mode = header.mode().map_err(corrupt)?;
                let written = sink.file(&path, mode & 0o111 != 0, header_size, &mut entry)?;
                if written != header_size {
                    return Err(corrupt(format!("{name}: truncated entry")));
                }
            }
        }
    }
    if !pending.is_empty() {
        return Err(corrupt(
            "the archive ends with extension headers describing a member that is missing",
        ));
    }
    Ok(())
}

/// A link member's target: a pax `linkpath` record, else a GNU long link, else the
/// header's.
fn link_target<R: Read>(
    entry: &tar::Entry<'_, R>,
    ext: &TarExtensions,
) -> Result<Vec<u8>, ArchiveError> {
    if let Some(pax) = &ext.pax {
        for record in tar::PaxExtensions::new(pax) {
            let record = record.map_err(|e| corrupt(format!("pax header: {e}")))?;
            if record.key_bytes() == b"linkpath" {
                return Ok(record.value_bytes().to_vec());
            }
        }
    }
    if let Some(long) = &ext.long_link {
        return Ok(long.clone());
    }
    Ok(entry
        .header()
        .link_name_bytes()
        .map(|b| b.into_owned())
        .unwrap_or_default())
}

/// Reads an extension record's body after checking its declared size.
fn read_extension<R: Read>(
    entry: &mut tar::Entry<'_, R>,
    kind: &'static str,
    limits: &Limits,
) -> Result<Vec<u8>, ArchiveError> {
    let size = entry.size();
    if size > limits.max_header_bytes {
        return Err(ArchiveError::HeaderTooLarge {
            entry: String::from_utf8_lossy(&entry.path_bytes()).into_owned(),
            kind,
            size,
            limit: limits.max_header_bytes,
        });
    }
    let mut body = Vec::with_capacity(size as usize);
    entry
        .take(size)
        .read_to_end(&mut body)
        .map_err(|e| read_error(e, limits))?;
    if body.len() as u64 != size {
        return Err(corrupt(format!("{kind}: truncated")));
    }
    Ok(body)
}

/// The member's name: a pax `path` record, else a GNU long name, else the header's.
/// Pax records that would make this reader and other tar implementations see
/// different members are refused: a `size` that disagrees with the header (the
/// header's size is what positions the next member here) and pax sparse files.
fn member_name<R: Read>(
    entry: &tar::Entry<'_, R>,
    ext: &TarExtensions,
    header_size: u64,
    limits: &Limits,
) -> Result<Vec<u8>, ArchiveError> {
    let header_name = || String::from_utf8_lossy(&entry.path_bytes()).into_owned();
    let mut pax_path = None;
    if let Some(pax) = &ext.pax {
        for record in tar::PaxExtensions::new(pax) {
            let record = record.map_err(|e| corrupt(format!("pax header: {e}")))?;
            let key = record.key_bytes();
            if key == b"path" {
                pax_path = Some(record.value_bytes().to_vec());
            } else if key == b"size" {
                let size = record
                    .value()
                    .ok()
                    .and_then(|v| v.parse::<u64>().ok())
                    .ok_or_else(|| corrupt("pax header: size is not a number"))?;
                if size > limits.max_entry_bytes {
                    return Err(ArchiveError::EntryTooLarge {
                        entry: header_name(),
                        limit: limits.max_entry_bytes,
                    });
                }
                if size != header_size {
                    return Err(corrupt(format!(
                        "{}: the pax header gives size {size}, the tar header {header_size}",
                        header_name()
                    )));
                }
            } else if key.starts_with(b"GNU.sparse.") {
                return Err(ArchiveError::SpecialFile {
                    entry: header_name(),
                    kind: "sparse file".into(),
                });
            }
        }
    }
    Ok(match (pax_path, &ext.long_name) {
        (Some(pax), Some(long)) if pax != *long => {
            return Err(corrupt(format!(
                "{}: a pax path and a GNU long name disagree",
                String::from_utf8_lossy(&pax)
            )));
        }
        (Some(pax), _) => pax,
        (None, Some(long)) => long.clone(),
        (None, None) => entry.path_bytes().into_owned(),
    })
}

const S_IFMT: u32 = 0o170000;
const S_IFREG: u32 = 0o100000;
const S_IFDIR: u32 = 0o040000;
const S_IFLNK: u32 = 0o120000;

fn extract_zip<R: Read + Seek>(mut reader: R, sink: &mut Sink<'_>) -> Result<(), ArchiveError> {
    check_central_directory(&mut reader, sink.limits)?;
    let mut zip = zip::ZipArchive::new(reader).map_err(corrupt)?;
    let n = zip.len() as u64;
    if n > sink.limits.max_entries {
        return Err(ArchiveError::TooManyEntries {
            limit: sink.limits.max_entries,
        });
    }
    sink.total_hint = Some(n);
    for i in 0..zip.len() {
        sink.next_entry()?;
        let mut f = zip.by_index(i).map_err(corrupt)?;
        let raw = f.name_raw().to_vec();
        let name = f
            .name()
            .map(|c| c.into_owned())
            .unwrap_or_else(|_| String::from_utf8_lossy(&raw).into_owned());
        // Our own validation on the decoded name (zip's `enclosed_name` strips a
        // leading `/` and resolves `a/../b`, which we prefer to refuse outright), plus
        // `enclosed_name` itself as a second opinion.
        let cleaned = clean_path(name.as_bytes())?;
        if f.enclosed_name().is_none() {
            return Err(ArchiveError::UnsafePath {
                entry: name,
                reason: "escapes the extraction directory",
            });
        }
        let mode = f.unix_mode();
        let fmt = mode.map(|m| m & S_IFMT).unwrap_or(0);
        if f.is_symlink() || fmt == S_IFLNK {
            let Some((path, _)) = cleaned else {
                return Err(ArchiveError::UnsafePath {
                    entry: name,
                    reason: "a link entry names the archive root",
                });
            };
            // The entry's content is the target; read no more than a name can be.
            let mut target = Vec::new();
            (&mut f)
                .take(MAX_NAME_BYTES as u64 + 1)
                .read_to_end(&mut target)
                .map_err(corrupt)?;
            sink.link(&name, &path, &target, false)?;
            continue;
        }
        if fmt != 0 && fmt != S_IFREG && fmt != S_IFDIR {
            let kind = match fmt {
                0o020000 => "character device",
                0o060000 => "block device",
                0o010000 => "fifo",
                0o140000 => "socket",
                _ => "special file",
            };
            return Err(ArchiveError::SpecialFile {
                entry: name,
                kind: kind.into(),
            });
        }
        if f.encrypted() {
            return Err(corrupt(format!(
                "{name}: encrypted entries are not supported"
            )));
        }
        let is_dir = f.is_dir() || fmt == S_IFDIR;
        let Some((path, _)) = cleaned else {
            if is_dir {
                continue;
            }
            return Err(ArchiveError::UnsafePath {
                entry: name,
                reason: "a file entry names the archive root",
            });
        };
        if is_dir {
            sink.dir(&path)?;
        } else {
            let size = f.size();
            let exec = mode.is_some_and(|m| m & 0o111 != 0);
            let written = sink.file(&path, exec, size, &mut f)?;
            if written != size {
                return Err(corrupt(format!(
                    "{name}: {written} bytes inflated but the header says {size}"
                )));
            }
        }
    }
    Ok(())
}

/// Fixed part of a zip central directory entry (before its name, extra field and
/// comment).
const ZIP_CENTRAL_ENTRY_BYTES: u64 = 46;
/// Room per entry for its extra field and comment in the central directory bound: real
/// archives carry a few dozen bytes (timestamps, Unix ids, ZIP64 sizes).
const ZIP_CENTRAL_EXTRA_BYTES: u64 = 256;
const EOCD_SIG: &[u8; 4] = b"PK\x05\x06";
const EOCD_LEN: usize = 22;
const ZIP64_LOCATOR_SIG: &[u8; 4] = b"PK\x06\x07";
const ZIP64_LOCATOR_LEN: u64 = 20;
const ZIP64_EOCD_SIG: &[u8; 4] = b"PK\x06\x06";

/// The largest central directory an archive under `limits` needs: a fixed entry per
/// allowed entry, all names, and some extra bytes each.
fn central_directory_cap(limits: &Limits) -> u64 {
    limits
        .max_entries
        .saturating_mul(ZIP_CENTRAL_ENTRY_BYTES + ZIP_CENTRAL_EXTRA_BYTES)
        .saturating_add(limits.max_names_bytes)
}

/// The zip crate reads the whole central directory into memory before the first entry
/// can be judged. So the end-of-central-directory record (in the last 64 KiB + 22
/// bytes; its ZIP64 form when the classic one says so) is read here first, and an
/// archive whose directory declares more entries than `max_entries` or more bytes than
/// [`central_directory_cap`] is refused before the directory is read. Records that
/// cannot be found are left for the zip crate to report.
fn check_central_directory<R: Read + Seek>(
    reader: &mut R,
    limits: &Limits,
) -> Result<(), ArchiveError> {
    let io = |e: io::Error| corrupt(format!("cannot read the end of the zip: {e}"));
    let len = reader.seek(io::SeekFrom::End(0)).map_err(io)?;
    let tail_len = len.min(65_535 + EOCD_LEN as u64);
    let tail_start = len - tail_len;
    let mut tail = vec![0u8; tail_len as usize];
    reader.seek(io::SeekFrom::Start(tail_start)).map_err(io)?;
    reader.read_exact(&mut tail).map_err(io)?;
    reader.seek(io::SeekFrom::Start(0)).map_err(io)?;
    // The last record whose comment length reaches exactly to the end of the file.
    let Some(at) = (0..=tail.len().saturating_sub(EOCD_LEN)).rev().find(|&i| {
        &tail[i..i + 4] == EOCD_SIG
            && i + EOCD_LEN + u16::from_le_bytes([tail[i + 20], tail[i + 21]]) as usize
                == tail.len()
    }) else {
        return Ok(());
    };
    let eocd = &tail[at..at + EOCD_LEN];
    let mut entries = u64::from(u16::from_le_bytes([eocd[10], eocd[11]]));
    let mut size = u64::from(u32::from_le_bytes([eocd[12], eocd[13], eocd[14], eocd[15]]));
    let zip64 = entries == 0xFFFF || size == 0xFFFF_FFFF;
    let eocd_pos = tail_start + at as u64;
    if zip64 && eocd_pos >= ZIP64_LOCATOR_LEN {
        let mut locator = [0u8; ZIP64_LOCATOR_LEN as usize];
        reader
            .seek(io::SeekFrom::Start(eocd_pos - ZIP64_LOCATOR_LEN))
            .map_err(io)?;
        reader.read_exact(&mut locator).map_err(io)?;
        if &locator[..4] == ZIP64_LOCATOR_SIG {
            let record_at = u64::from_le_bytes(locator[8..16].try_into().expect("8 bytes"));
            let mut record = [0u8; 56];
            if record_at.saturating_add(56) <= len {
                reader.seek(io::SeekFrom::Start(record_at)).map_err(io)?;
                reader.read_exact(&mut record).map_err(io)?;
                if &record[..4] == ZIP64_EOCD_SIG {
                    entries = u64::from_le_bytes(record[32..40].try_into().expect("8 bytes"));
                    size = u64::from_le_bytes(record[40..48].try_into().expect("8 bytes"));
                }
            }
        }
        reader.seek(io::SeekFrom::Start(0)).map_err(io)?;
    }
    if entries > limits.max_entries {
        return Err(ArchiveError::TooManyEntries {
            limit: limits.max_entries,
        });
    }
    let cap = central_directory_cap(limits);
    if size > cap {
        return Err(ArchiveError::CentralDirectoryTooLarge {
            declared: size,
            limit: cap,
        });
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Pack root
// ---------------------------------------------------------------------------

/// Locates the pack root in an extracted archive, deterministically:
/// 1. `dir` if it has `pack.yaml`;
/// 2. else `dir/pack` if it has one;
/// 3. else the top-level directory `D` with `D/pack.yaml` or `D/pack/pack.yaml`
///    (GitHub tarballs: `repo-<sha>/pack.yaml`), if exactly one top-level directory has
///    one. Several → [`ArchiveError::SeveralPackRoots`] listing them (sorted).
///
/// `pack.yaml` must be a regular file (a symlink or directory named so does not count).
pub fn find_pack_root(dir: &Path) -> Result<PathBuf, ArchiveError> {
    let has =
        |d: &Path| fs::symlink_metadata(d.join("pack.yaml")).is_ok_and(|m| m.file_type().is_file());
    if has(dir) {
        return Ok(dir.to_path_buf());
    }
    let pack = dir.join("pack");
    if is_real_dir(&pack) && has(&pack) {
        return Ok(pack);
    }
    let mut found: Vec<(String, PathBuf)> = Vec::new();
    for entry in fs::read_dir(dir).map_err(io_at(dir))? {
        let entry = entry.map_err(io_at(dir))?;
        if !entry.file_type().map_err(io_at(&entry.path()))?.is_dir() {
            continue;
        }
        let d = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        if has(&d) {
            found.push((name, d));
        } else {
            let p = d.join("pack");
            if is_real_dir(&p) && has(&p) {
                found.push((format!("{name}/pack"), p));
            }
        }
    }
    found.sort();
    match found.len() {
        0 => Err(ArchiveError::NoPackRoot),
        1 => Ok(found.pop().map(|(_, p)| p).unwrap_or_default()),
        _ => Err(ArchiveError::SeveralPackRoots(
            found.into_iter().map(|(n, _)| n).collect(),
        )),
    }
}

fn is_real_dir(p: &Path) -> bool {
    fs::symlink_metadata(p).is_ok_and(|m| m.is_dir())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checksum::directory_checksum;
    use std::io::Cursor;

    struct Fx {
        _tmp: tempfile::TempDir,
        root: PathBuf,
        dest: PathBuf,
    }

    fn fx() -> Fx {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().to_path_buf();
        let dest = root.join("dest");
        fs::create_dir(&dest).unwrap();
        Fx {
            _tmp: tmp,
            root,
            dest,
        }
    }

    impl Fx {
        fn write(&self, name: &str, bytes: &[u8]) -> PathBuf {
            let p = self.root.join(name);
            fs::write(&p, bytes).unwrap();
            p
        }
        fn run(&self, archive: &Path, limits: &Limits) -> Result<ExtractSummary, ArchiveError> {
            extract(archive, &self.dest, limits, &Reporter::noop())
        }
        /// Everything under the temp root except the archives themselves and `dest`.
        fn outside(&self) -> Vec<String> {
            let mut v: Vec<String> = fs::read_dir(&self.root)
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .filter(|n| n != "dest" && !n.starts_with("in."))
                .collect();
            v.sort();
            v
        }
    }

    /// A raw tar header with an arbitrary (unchecked) name.
    fn raw_header(name: &str, et: tar::EntryType, size: u64, mode: u32) -> tar::Header {
        let mut h = tar::Header::new_ustar();
        {
            let b = h.as_old_mut();
            b.name = [0; 100];
            b.name[..name.len()].copy_from_slice(name.as_bytes());
        }
        h.set_entry_type(et);
        h.set_size(size);
        h.set_mode(mode);
        h.set_cksum();
        h
    }

    enum E<'a> {
        File(&'a str, &'a [u8], u32),
        Dir(&'a str),
        Link(&'a str, &'a str, tar::EntryType),
        Raw(Box<tar::Header>, &'a [u8]),
    }

    fn tar_bytes(entries: &[E<'_>]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for e in entries {
            match e {
                E::File(n, d, mode) => {
                    let h = raw_header(n, tar::EntryType::Regular, d.len() as u64, *mode);
                    b.append(&h, *d).unwrap();
                }
                E::Dir(n) => {
                    let h = raw_header(n, tar::EntryType::Directory, 0, 0o755);
                    b.append(&h, io::empty()).unwrap();
                }
                E::Link(n, target, et) => {
                    let mut h = raw_header(n, *et, 0, 0o777);
                    h.as_old_mut().linkname[..target.len()].copy_from_slice(target.as_bytes());
                    h.set_cksum();
                    b.append(&h, io::empty()).unwrap();
                }
                E::Raw(h, d) => b.append(h, *d).unwrap(),
            }
        }
        b.into_inner().unwrap()
    }

    fn gz(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    fn zip_bytes(f: impl FnOnce(&mut zip::ZipWriter<Cursor<Vec<u8>>>)) -> Vec<u8> {
        let mut w = zip::ZipWriter::new(Cursor::new(Vec::new()));
        f(&mut w);
        w.finish().unwrap().into_inner()
    }

    fn zopts(mode: u32) -> zip::write::SimpleFileOptions {
        zip::write::SimpleFileOptions::default().unix_permissions(mode)
    }

    #[cfg(unix)]
    fn mode_of(p: &Path) -> u32 {
        use std::os::unix::fs::PermissionsExt;
        fs::metadata(p).unwrap().permissions().mode() & 0o7777
    }

    fn sample_pack(prefix: &str) -> Vec<u8> {
        let p = |s: &str| format!("{prefix}{s}");
        let (a, b, c, d) = (
            p("actions/"),
            p("actions/run.sh"),
            p("actions/run.yaml"),
            p("pack.yaml"),
        );
        let mut v = Vec::new();
        if !prefix.is_empty() {
            v.push(E::Dir(prefix));
        }
        v.extend([
            E::Dir(&a),
            E::File(&b, b"#!/bin/sh\necho hi\n", 0o4755),
            E::File(&c, b"name: run\n", 0o644),
            E::File(&d, b"ref: sample\nversion: 1.0.0\n", 0o664),
        ]);
        tar_bytes(&v)
    }

    // ---- positive ----

    #[test]
    fn tar_gz_flat_pack() {
        let f = fx();
        let a = f.write("in.tar.gz", &gz(&sample_pack("")));
        assert_eq!(sniff_format(&a).unwrap(), ArchiveFormat::TarGz);
        let s = f.run(&a, &Limits::default()).unwrap();
        assert_eq!((s.entries, s.files), (4, 3));
        assert_eq!(s.bytes, 18 + 10 + 27);
        assert_eq!(
            fs::read(f.dest.join("actions/run.sh")).unwrap(),
            b"#!/bin/sh\necho hi\n"
        );
        #[cfg(unix)]
        {
            // Executable bit kept, setuid dropped; others 0644.
            assert_eq!(mode_of(&f.dest.join("actions/run.sh")) & 0o7111, 0o111);
            assert_eq!(mode_of(&f.dest.join("pack.yaml")) & 0o111, 0);
        }
        let root = find_pack_root(&f.dest).unwrap();
        assert_eq!(root, f.dest);
        let want = directory_checksum(&root).unwrap();
        assert_eq!(s.content.streamed("").as_deref(), Some(want.as_str()));
        assert_eq!(s.checksum(&f.dest, &root).unwrap(), want);
        assert!(f.outside().is_empty());
    }

    #[test]
    fn tgz_with_top_level_dir_and_pax_global_header() {
        let f = fx();
        let mut pax = tar::Header::new_ustar();
        pax.set_entry_type(tar::EntryType::XGlobalHeader);
        let comment = b"52 comment=0123456789012345678901234567890123456789\n";
        pax.set_size(comment.len() as u64);
        pax.set_path("pax_global_header").unwrap();
        pax.set_cksum();
        let mut b = tar_bytes(&[E::Raw(Box::new(pax), comment)]);
        b.truncate(b.len() - 1024); // drop the end-of-archive blocks
        b.extend(sample_pack("repo-0123abc/"));
        let a = f.write("in.tgz", &gz(&b));
        let s = f.run(&a, &Limits::default()).unwrap();
        assert_eq!(s.entries, 5);
        let root = find_pack_root(&f.dest).unwrap();
        assert_eq!(root, f.dest.join("repo-0123abc"));
        let want = directory_checksum(&root).unwrap();
        assert_eq!(
            s.content.streamed("repo-0123abc").as_deref(),
            Some(want.as_str())
        );
        assert_eq!(s.checksum(&f.dest, &root).unwrap(), want);
        assert!(!f.dest.join("pax_global_header").exists());
    }

    #[test]
    fn plain_tar_and_v7_tar() {
        let f = fx();
        let a = f.write("in.tar", &sample_pack("./"));
        assert_eq!(sniff_format(&a).unwrap(), ArchiveFormat::Tar);
        f.run(&a, &Limits::default()).unwrap();
        assert_eq!(find_pack_root(&f.dest).unwrap(), f.dest);

        // Old (v7) header: no ustar magic.
        let mut h = tar::Header::new_old();
        h.set_path("pack.yaml").unwrap();
        h.set_size(4);
        h.set_mode(0o644);
        h.set_entry_type(tar::EntryType::Regular);
        h.set_cksum();
        let bytes = tar_bytes(&[E::Raw(Box::new(h), b"x: 1")]);
        assert_ne!(&bytes[257..262], b"ustar");
        let g = fx();
        let a = g.write("in.v7", &bytes);
        assert_eq!(sniff_format(&a).unwrap(), ArchiveFormat::Tar);
        g.run(&a, &Limits::default()).unwrap();
        assert_eq!(fs::read(g.dest.join("pack.yaml")).unwrap(), b"x: 1");
    }

    #[test]
    fn zip_pack_keeps_exec_bit() {
        let f = fx();
        let z = zip_bytes(|w| {
            w.add_directory("mypack/", zopts(0o755)).unwrap();
            w.start_file("mypack/pack.yaml", zopts(0o644)).unwrap();
            w.write_all(b"ref: z\n").unwrap();
            w.start_file("mypack/actions/go.sh", zopts(0o755)).unwrap();
            w.write_all(&b"echo go\n".repeat(1000)).unwrap();
        });
        let a = f.write("in.zip", &z);
        let s = f.run(&a, &Limits::default()).unwrap();
        assert_eq!((s.entries, s.files), (3, 2));
        #[cfg(unix)]
        assert_eq!(mode_of(&f.dest.join("mypack/actions/go.sh")) & 0o111, 0o111);
        let root = find_pack_root(&f.dest).unwrap();
        assert_eq!(root, f.dest.join("mypack"));
        assert_eq!(
            s.checksum(&f.dest, &root).unwrap(),
            directory_checksum(&root).unwrap()
        );
    }

    #[test]
    fn sniffing_ignores_misleading_names() {
        let f = fx();
        let z = zip_bytes(|w| {
            w.start_file("pack.yaml", zopts(0o644)).unwrap();
            w.write_all(b"ref: z\n").unwrap();
        });
        let a = f.write("in.tar.gz", &z);
        assert_eq!(sniff_format(&a).unwrap(), ArchiveFormat::Zip);
        f.run(&a, &Limits::default()).unwrap();
        assert!(f.dest.join("pack.yaml").is_file());
        let t = f.write("in.zip", &gz(&sample_pack("")));
        assert_eq!(sniff_format(&t).unwrap(), ArchiveFormat::TarGz);
        let empty_zip = zip_bytes(|_| {});
        let e = f.write("in.empty", &empty_zip);
        assert_eq!(sniff_format(&e).unwrap(), ArchiveFormat::Zip);
    }

    #[test]
    fn unknown_and_corrupt() {
        let f = fx();
        let a = f.write("in.tar.gz", b"<!DOCTYPE html><html>login</html>");
        let e = sniff_format(&a).unwrap_err();
        assert!(matches!(e, ArchiveError::UnknownFormat { .. }));
        assert!(e.to_string().contains("HTML"), "{e}");
        let a = f.write("in.empty", b"");
        assert!(
            f.run(&a, &Limits::default())
                .unwrap_err()
                .to_string()
                .contains("empty")
        );

        let mut bad = gz(&sample_pack(""));
        bad.truncate(bad.len() / 2);
        let a = f.write("in.trunc", &bad);
        let e = f.run(&a, &Limits::default()).unwrap_err();
        assert!(matches!(e, ArchiveError::Corrupt { .. }), "{e:?}");
    }

    // ---- pack root ----

    #[test]
    fn pack_root_rules() {
        let t = tempfile::tempdir().unwrap();
        let d = t.path();
        let mk = |rel: &str| {
            let p = d.join(rel);
            fs::create_dir_all(p.parent().unwrap()).unwrap();
            fs::write(p, "ref: x\n").unwrap();
        };
        assert!(matches!(find_pack_root(d), Err(ArchiveError::NoPackRoot)));
        mk("b-repo/pack/pack.yaml");
        assert_eq!(find_pack_root(d).unwrap(), d.join("b-repo/pack"));
        mk("a-repo/pack.yaml");
        match find_pack_root(d) {
            Err(ArchiveError::SeveralPackRoots(v)) => assert_eq!(v, ["a-repo", "b-repo/pack"]),
            other => panic!("{other:?}"),
        }
        let e = find_pack_root(d).unwrap_err().to_string();
        assert!(e.contains("a-repo, b-repo/pack"), "{e}");
        mk("pack/pack.yaml");
        assert_eq!(find_pack_root(d).unwrap(), d.join("pack"));
        mk("pack.yaml");
        assert_eq!(find_pack_root(d).unwrap(), d);
        assert_eq!(
            ArchiveError::NoPackRoot.to_string(),
            "no pack.yaml found at the archive root, in pack/, or in a single top-level directory"
        );
    }

    // ---- hostile tar ----

    fn expect_tar_err(entries: &[E<'_>], check: impl Fn(&ArchiveError) -> bool) {
        let f = fx();
        let a = f.write("in.tar.gz", &gz(&tar_bytes(entries)));
        let e = f.run(&a, &Limits::default()).unwrap_err();
        assert!(check(&e), "unexpected error: {e:?}");
        assert!(
            f.outside().is_empty(),
            "wrote outside dest: {:?}",
            f.outside()
        );
        // And the plain-tar path behaves the same.
        let g = fx();
        let a = g.write("in.tar", &tar_bytes(entries));
        let e = g.run(&a, &Limits::default()).unwrap_err();
        assert!(check(&e), "unexpected error (tar): {e:?}");
        assert!(g.outside().is_empty());
    }

    #[test]
    fn tar_dotdot() {
        expect_tar_err(
            &[E::File("../evil", b"x", 0o644)],
            |e| matches!(e, ArchiveError::UnsafePath { entry, .. } if entry == "../evil"),
        );
        expect_tar_err(&[E::File("a/../../evil", b"x", 0o644)], |e| {
            matches!(e, ArchiveError::UnsafePath { .. })
        });
    }

    #[test]
    fn tar_absolute_and_windows() {
        let f = fx();
        let target = format!("{}/abs-evil", f.root.display());
        let a = f.write("in.tar", &tar_bytes(&[E::File(&target, b"x", 0o644)]));
        let e = f.run(&a, &Limits::default()).unwrap_err();
        assert!(
            matches!(
                e,
                ArchiveError::UnsafePath {
                    reason: "absolute path",
                    ..
                }
            ),
            "{e:?}"
        );
        assert!(!Path::new(&target).exists());
        expect_tar_err(&[E::File("/etc/x", b"x", 0o644)], |e| {
            matches!(e, ArchiveError::UnsafePath { .. })
        });
        expect_tar_err(&[E::File("C:/x", b"x", 0o644)], |e| {
            matches!(e, ArchiveError::UnsafePath { .. })
        });
        expect_tar_err(&[E::File("..\\evil", b"x", 0o644)], |e| {
            matches!(e, ArchiveError::UnsafePath { .. })
        });
    }

    #[test]
    fn tar_links_that_leave_the_archive_are_refused_while_extracting() {
        use tar::EntryType::{Link, Symlink};
        let bad = |entry: &str, problem: LinkProblem| {
            let entry = entry.to_string();
            move |e: &ArchiveError| {
                matches!(e, ArchiveError::BadLink { entry: got, problem: p, .. }
                    if *got == entry && *p == problem)
            }
        };
        expect_tar_err(
            &[E::Link("passwd", "/etc/passwd", Symlink)],
            bad("passwd", LinkProblem::Escapes),
        );
        // Symlink escape followed by a write through it.
        expect_tar_err(
            &[
                E::Link("esc", "..", Symlink),
                E::File("esc/evil", b"pwned", 0o644),
            ],
            bad("esc", LinkProblem::Escapes),
        );
        expect_tar_err(
            &[E::Link("a/b/esc", "../../../x", Symlink)],
            bad("a/b/esc", LinkProblem::Escapes),
        );
        // Nothing is written through a link entry, even one that stays inside.
        expect_tar_err(
            &[
                E::Dir("lib/"),
                E::Link("inner", "lib", Symlink),
                E::File("inner/evil", b"x", 0o644),
            ],
            |e| matches!(e, ArchiveError::Duplicate { entry, .. } if entry == "inner/evil"),
        );
        // A hard link must name an earlier regular file.
        expect_tar_err(
            &[E::Link("hard", "a", Link), E::File("a", b"x", 0o644)],
            bad("hard", LinkProblem::Dangling),
        );
        expect_tar_err(
            &[E::Dir("d/"), E::Link("hard", "d", Link)],
            bad("hard", LinkProblem::Dangling),
        );
        expect_tar_err(
            &[E::Link("hard", "../etc/passwd", Link)],
            bad("hard", LinkProblem::Escapes),
        );
    }

    /// Extracts `archive` (bytes) and places its links below the pack root.
    fn extract_pack(
        name: &str,
        bytes: &[u8],
    ) -> (Fx, Result<(ExtractSummary, PathBuf), ArchiveError>) {
        let f = fx();
        let a = f.write(name, bytes);
        let result = f.run(&a, &Limits::default()).and_then(|mut summary| {
            let root = summary.pack_root(&f.dest)?;
            Ok((summary, root))
        });
        assert!(
            f.outside().is_empty(),
            "wrote outside dest: {:?}",
            f.outside()
        );
        (f, result)
    }

    /// Every link kind that stays in the pack, as a tar: a file link from a
    /// subdirectory up to the root, a directory link, a chain, a hard link.
    fn linked_tar() -> Vec<u8> {
        use tar::EntryType::{Link, Symlink};
        tar_bytes(&[
            E::Dir("top/"),
            E::File("top/pack.yaml", b"ref: linked\n", 0o644),
            E::File("top/linked.yaml.example", b"full: true\n", 0o644),
            E::File("top/lib/run.sh", b"#!/bin/sh\n", 0o755),
            E::Link(
                "top/tests/fixtures/full.yaml",
                "../../linked.yaml.example",
                Symlink,
            ),
            E::Link("top/libdir", "lib", Symlink),
            E::Link("top/run.sh", "libdir/run.sh", Symlink),
            E::Link("top/hard.yaml", "top/linked.yaml.example", Link),
        ])
    }

    /// The same pack written without links.
    fn resolved_tree() -> tempfile::TempDir {
        let t = tempfile::tempdir().unwrap();
        let w = |rel: &str, b: &[u8]| {
            let p = t.path().join(rel);
            fs::create_dir_all(p.parent().unwrap()).unwrap();
            fs::write(p, b).unwrap();
        };
        w("pack.yaml", b"ref: linked\n");
        w("linked.yaml.example", b"full: true\n");
        w("lib/run.sh", b"#!/bin/sh\n");
        w("tests/fixtures/full.yaml", b"full: true\n");
        w("libdir/run.sh", b"#!/bin/sh\n");
        w("run.sh", b"#!/bin/sh\n");
        w("hard.yaml", b"full: true\n");
        t
    }

    #[cfg(unix)]
    fn assert_links_stored_as_files(root: &Path) {
        for (rel, content) in [
            ("tests/fixtures/full.yaml", "full: true\n"),
            ("libdir/run.sh", "#!/bin/sh\n"),
            ("run.sh", "#!/bin/sh\n"),
            ("hard.yaml", "full: true\n"),
        ] {
            let meta = fs::symlink_metadata(root.join(rel)).unwrap();
            assert!(meta.is_file(), "{rel} is not a regular file");
            assert_eq!(
                fs::read_to_string(root.join(rel)).unwrap(),
                content,
                "{rel}"
            );
        }
        assert!(fs::symlink_metadata(root.join("libdir")).unwrap().is_dir());
        assert_eq!(mode_of(&root.join("run.sh")) & 0o111, 0o111);
    }

    #[cfg(unix)]
    #[test]
    fn tar_links_inside_the_pack_are_stored_as_what_they_point_to() {
        for (name, bytes) in [("in.tar", linked_tar()), ("in.tar.gz", gz(&linked_tar()))] {
            let (f, result) = extract_pack(name, &bytes);
            let (summary, root) = result.unwrap();
            assert_eq!(root, f.dest.join("top"));
            assert_links_stored_as_files(&root);
            let expected = directory_checksum(resolved_tree().path()).unwrap();
            assert_eq!(summary.checksum(&f.dest, &root).unwrap(), expected);
            assert_eq!(directory_checksum(&root).unwrap(), expected);
        }
    }

    #[test]
    fn tar_links_leaving_the_pack_root_dangling_or_looping_are_refused_naming_them() {
        use tar::EntryType::{Link, Symlink};
        let pack = |extra: Vec<E<'static>>| {
            let mut entries = vec![
                E::File("top/README.md", b"not the pack\n", 0o644),
                E::File("top/pack/pack.yaml", b"ref: p\n", 0o644),
                E::File("top/pack/lib/a.py", b"a\n", 0o644),
            ];
            entries.extend(extra);
            tar_bytes(&entries)
        };
        for (extra, entry, problem) in [
            // Inside the archive, outside the pack root.
            (
                vec![E::Link("top/pack/readme", "../README.md", Symlink)],
                "readme",
                LinkProblem::Escapes,
            ),
            (
                vec![E::Link("top/pack/lib/readme", "../../README.md", Symlink)],
                "lib/readme",
                LinkProblem::Escapes,
            ),
            (
                vec![E::Link("top/pack/hard", "top/README.md", Link)],
                "hard",
                LinkProblem::Escapes,
            ),
            (
                vec![
                    E::Link("top/pack/a", "b", Symlink),
                    E::Link("top/pack/b", "../README.md", Symlink),
                ],
                "a",
                LinkProblem::Escapes,
            ),
            (
                vec![E::Link("top/pack/gone", "lib/missing.py", Symlink)],
                "gone",
                LinkProblem::Dangling,
            ),
            (
                vec![E::Link("top/pack/through", "lib/a.py/x", Symlink)],
                "through",
                LinkProblem::Dangling,
            ),
            (
                vec![
                    E::Link("top/pack/l1", "l2", Symlink),
                    E::Link("top/pack/l2", "l1", Symlink),
                ],
                "l1",
                LinkProblem::Loop,
            ),
            (
                vec![E::Link("top/pack/lib/up", "..", Symlink)],
                "lib/up",
                LinkProblem::Loop,
            ),
        ] {
            let (_f, result) = extract_pack("in.tar", &pack(extra));
            let err = result.unwrap_err();
            assert!(
                matches!(&err, ArchiveError::BadLink { entry: got, problem: p, .. }
                    if got == entry && *p == problem),
                "{entry}: {err}"
            );
            assert!(err.to_string().contains(&problem.to_string()), "{err}");
        }
        // A link outside the pack root is not part of the pack.
        let (f, result) = extract_pack(
            "in.tar",
            &pack(vec![E::Link("top/elsewhere", "/etc/passwd", Symlink)]),
        );
        assert!(
            result.is_err(),
            "an absolute target is refused while extracting"
        );
        drop(f);
        let (f, result) = extract_pack(
            "in.tar",
            &pack(vec![E::Link("top/elsewhere", "pack/lib", Symlink)]),
        );
        let (_, root) = result.unwrap();
        assert_eq!(root, f.dest.join("top/pack"));
        assert!(fs::symlink_metadata(f.dest.join("top/elsewhere")).is_err());
    }

    #[test]
    fn link_copies_count_against_the_limits() {
        use tar::EntryType::Symlink;
        let big = vec![b'x'; 600];
        let bytes = tar_bytes(&[
            E::File("pack.yaml", b"ref: p\n", 0o644),
            E::File("lib/big", &big, 0o644),
            E::Link("l1", "lib", Symlink),
            E::Link("l2", "lib", Symlink),
        ]);
        let f = fx();
        let a = f.write("in.tar", &bytes);
        let limits = Limits {
            max_total_bytes: 1500,
            ..Limits::default()
        };
        let mut summary = f.run(&a, &limits).unwrap();
        let err = summary.pack_root(&f.dest).unwrap_err();
        assert!(
            matches!(err, ArchiveError::TooLarge { limit: 1500 }),
            "{err}"
        );
    }

    #[test]
    fn tar_devices_and_fifos() {
        expect_tar_err(
            &[E::Raw(
                Box::new(raw_header("dev", tar::EntryType::Char, 0, 0o644)),
                b"",
            )],
            |e| matches!(e, ArchiveError::SpecialFile { kind, .. } if kind == "character device"),
        );
        expect_tar_err(
            &[E::Raw(
                Box::new(raw_header("blk", tar::EntryType::Block, 0, 0o644)),
                b"",
            )],
            |e| matches!(e, ArchiveError::SpecialFile { kind, .. } if kind == "block device"),
        );
        expect_tar_err(
            &[E::Raw(
                Box::new(raw_header("p", tar::EntryType::Fifo, 0, 0o644)),
                b"",
            )],
            |e| matches!(e, ArchiveError::SpecialFile { kind, .. } if kind == "fifo"),
        );
    }

    #[test]
    fn tar_duplicates_and_file_parents() {
        expect_tar_err(
            &[E::File("a", b"1", 0o644), E::File("a", b"2", 0o644)],
            |e| matches!(e, ArchiveError::Duplicate { .. }),
        );
        expect_tar_err(
            &[E::File("a", b"1", 0o644), E::File("a/b", b"2", 0o644)],
            |e| matches!(e, ArchiveError::Duplicate { .. }),
        );
        expect_tar_err(&[E::File("a", b"1", 0o644), E::Dir("a/")], |e| {
            matches!(e, ArchiveError::Duplicate { .. })
        });
        // A directory listed twice, or after its contents, is fine.
        let f = fx();
        let a = f.write(
            "in.tar",
            &tar_bytes(&[E::File("d/x", b"1", 0o644), E::Dir("d/"), E::Dir("d")]),
        );
        f.run(&a, &Limits::default()).unwrap();
    }

    #[test]
    fn tar_limits() {
        let big = vec![7u8; 2000];
        let f = fx();
        let a = f.write("in.tar.gz", &gz(&tar_bytes(&[E::File("big", &big, 0o644)])));
        let limits = Limits {
            max_entry_bytes: 1000,
            ..Limits::default()
        };
        let e = f.run(&a, &limits).unwrap_err();
        assert!(
            matches!(e, ArchiveError::EntryTooLarge { limit: 1000, .. }),
            "{e:?}"
        );

        let names: Vec<String> = (0..30).map(|i| format!("f{i}")).collect();
        let entries: Vec<E<'_>> = names.iter().map(|n| E::File(n, b"x", 0o644)).collect();
        let g = fx();
        let a = g.write("in.tar", &tar_bytes(&entries));
        let limits = Limits {
            max_entries: 10,
            ..Limits::default()
        };
        let e = g.run(&a, &limits).unwrap_err();
        assert!(
            matches!(e, ArchiveError::TooManyEntries { limit: 10 }),
            "{e:?}"
        );
        assert!(fs::read_dir(&g.dest).unwrap().count() <= 10);

        let h = fx();
        let a = h.write("in.tar", &tar_bytes(&entries));
        let limits = Limits {
            max_total_bytes: 5,
            ..Limits::default()
        };
        let e = h.run(&a, &limits).unwrap_err();
        assert!(matches!(e, ArchiveError::TooLarge { limit: 5 }), "{e:?}");
    }

    #[test]
    fn gzip_bomb() {
        // 200 MB of zeros in one entry compresses to ~200 KB.
        const SIZE: u64 = 200 * 1024 * 1024;
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        {
            let mut b = tar::Builder::new(&mut enc);
            let h = raw_header("zeros", tar::EntryType::Regular, SIZE, 0o644);
            b.append(&h, io::repeat(0).take(SIZE)).unwrap();
            b.finish().unwrap();
        }
        let bomb = enc.finish().unwrap();
        assert!(bomb.len() < 2 * 1024 * 1024, "{}", bomb.len());
        let f = fx();
        let a = f.write("in.bomb", &bomb);
        let limits = Limits {
            max_total_bytes: 10 * 1024 * 1024,
            max_entry_bytes: u64::MAX,
            ..Limits::default()
        };
        let e = f.run(&a, &limits).unwrap_err();
        assert!(matches!(e, ArchiveError::TooLarge { .. }), "{e:?}");
        let written = fs::metadata(f.dest.join("zeros"))
            .map(|m| m.len())
            .unwrap_or(0);
        assert!(written <= 10 * 1024 * 1024, "{written}");
        // With default limits the per-entry limit trips first.
        let e = f.run(&a, &Limits::default());
        assert!(
            matches!(e, Err(ArchiveError::EntryTooLarge { .. })),
            "{e:?}"
        );
    }

    // ---- hostile zip ----

    fn expect_zip_err(z: Vec<u8>, check: impl Fn(&ArchiveError) -> bool) {
        let f = fx();
        let a = f.write("in.zip", &z);
        let e = f.run(&a, &Limits::default()).unwrap_err();
        assert!(check(&e), "unexpected error: {e:?}");
        assert!(
            f.outside().is_empty(),
            "wrote outside dest: {:?}",
            f.outside()
        );
    }

    #[test]
    fn zip_slip() {
        let z = zip_bytes(|w| {
            w.start_file("../../evil.txt", zopts(0o644)).unwrap();
            w.write_all(b"pwned").unwrap();
        });
        expect_zip_err(
            z,
            |e| matches!(e, ArchiveError::UnsafePath { entry, .. } if entry == "../../evil.txt"),
        );
        let z = zip_bytes(|w| {
            w.start_file("/abs.txt", zopts(0o644)).unwrap();
            w.write_all(b"pwned").unwrap();
        });
        expect_zip_err(z, |e| matches!(e, ArchiveError::UnsafePath { .. }));
    }

    #[test]
    fn zip_symlink() {
        let z = zip_bytes(|w| {
            w.add_symlink("link", "/etc/passwd", zopts(0o777)).unwrap();
        });
        expect_zip_err(
            z,
            |e| matches!(e, ArchiveError::BadLink { entry, problem: LinkProblem::Escapes, .. } if entry == "link"),
        );
    }

    fn linked_zip(extra: impl FnOnce(&mut zip::ZipWriter<Cursor<Vec<u8>>>)) -> Vec<u8> {
        zip_bytes(|w| {
            for (name, content, mode) in [
                ("top/pack.yaml", &b"ref: linked\n"[..], 0o644),
                ("top/linked.yaml.example", b"full: true\n", 0o644),
                ("top/lib/run.sh", b"#!/bin/sh\n", 0o755),
                ("top/README.md", b"readme\n", 0o644),
            ] {
                w.start_file(name, zopts(mode)).unwrap();
                w.write_all(content).unwrap();
            }
            extra(w);
        })
    }

    #[cfg(unix)]
    #[test]
    fn zip_links_inside_the_pack_are_stored_as_what_they_point_to() {
        let z = linked_zip(|w| {
            let o = zopts(0o777);
            w.add_symlink(
                "top/tests/fixtures/full.yaml",
                "../../linked.yaml.example",
                o,
            )
            .unwrap();
            w.add_symlink("top/libdir", "lib", o).unwrap();
            w.add_symlink("top/run.sh", "libdir/run.sh", o).unwrap();
        });
        let (f, result) = extract_pack("in.zip", &z);
        let (summary, root) = result.unwrap();
        assert_eq!(root, f.dest.join("top"));
        for rel in ["tests/fixtures/full.yaml", "libdir/run.sh", "run.sh"] {
            assert!(
                fs::symlink_metadata(root.join(rel)).unwrap().is_file(),
                "{rel}"
            );
        }
        assert_eq!(
            fs::read_to_string(root.join("tests/fixtures/full.yaml")).unwrap(),
            "full: true\n"
        );
        assert_eq!(
            summary.checksum(&f.dest, &root).unwrap(),
            directory_checksum(&root).unwrap()
        );
    }

    #[test]
    fn zip_links_leaving_the_pack_dangling_or_looping_are_refused() {
        type Add = fn(&mut zip::ZipWriter<Cursor<Vec<u8>>>);
        let cases: [(Add, &str, LinkProblem); 4] = [
            (
                |w| {
                    w.add_symlink("top/readme", "../README.md", zopts(0o777))
                        .unwrap()
                },
                "readme",
                LinkProblem::Escapes,
            ),
            (
                |w| w.add_symlink("top/gone", "missing", zopts(0o777)).unwrap(),
                "gone",
                LinkProblem::Dangling,
            ),
            (
                |w| {
                    w.add_symlink("top/l1", "l2", zopts(0o777)).unwrap();
                    w.add_symlink("top/l2", "l1", zopts(0o777)).unwrap();
                },
                "l1",
                LinkProblem::Loop,
            ),
            (
                |w| w.add_symlink("top/out", "../../x", zopts(0o777)).unwrap(),
                "top/out",
                LinkProblem::Escapes,
            ),
        ];
        for (add, entry, problem) in cases {
            let (_f, result) = extract_pack("in.zip", &linked_zip(add));
            let err = result.unwrap_err();
            assert!(
                matches!(&err, ArchiveError::BadLink { entry: got, problem: p, .. }
                    if got == entry && *p == problem),
                "{entry}: {err}"
            );
        }
        // A link from the pack root to elsewhere in the archive leaves the pack.
        let z = zip_bytes(|w| {
            w.start_file("README.md", zopts(0o644)).unwrap();
            w.write_all(b"outside the pack\n").unwrap();
            w.start_file("pack/pack.yaml", zopts(0o644)).unwrap();
            w.write_all(b"ref: p\n").unwrap();
            w.add_symlink("pack/readme", "../README.md", zopts(0o777))
                .unwrap();
        });
        let (_f, result) = extract_pack("in.zip", &z);
        let err = result.unwrap_err();
        assert!(
            matches!(&err, ArchiveError::BadLink { entry, problem: LinkProblem::Escapes, .. } if entry == "readme"),
            "{err}"
        );
    }

    #[test]
    fn zip_limits() {
        let z = zip_bytes(|w| {
            w.start_file("big", zopts(0o644)).unwrap();
            w.write_all(&vec![0u8; 100_000]).unwrap();
        });
        let f = fx();
        let a = f.write("in.zip", &z);
        let limits = Limits {
            max_entry_bytes: 50_000,
            ..Limits::default()
        };
        assert!(matches!(
            f.run(&a, &limits),
            Err(ArchiveError::EntryTooLarge { limit: 50_000, .. })
        ));
        let z = zip_bytes(|w| {
            for i in 0..20 {
                w.start_file(format!("f{i}"), zopts(0o644)).unwrap();
            }
        });
        let g = fx();
        let a = g.write("in.zip", &z);
        let limits = Limits {
            max_entries: 5,
            ..Limits::default()
        };
        assert!(matches!(
            g.run(&a, &limits),
            Err(ArchiveError::TooManyEntries { limit: 5 })
        ));
    }

    // ---- progress and cancellation ----

    #[test]
    fn progress_and_cancel() {
        let names: Vec<String> = (0..600).map(|i| format!("d/f{i:04}")).collect();
        let entries: Vec<E<'_>> = names.iter().map(|n| E::File(n, b"x", 0o644)).collect();
        let tarball = gz(&tar_bytes(&entries));

        let f = fx();
        let a = f.write("in.tgz", &tarball);
        let (rep, mut rx) = Reporter::channel("p");
        let s = extract(&a, &f.dest, &Limits::default(), &rep).unwrap();
        assert_eq!(s.files, 600);
        let mut events = Vec::new();
        while let Ok(ev) = rx.try_recv() {
            events.push(ev);
        }
        assert!(events.len() >= 3, "{}", events.len());
        assert!(events.iter().all(|e| e.stage == Stage::Extract));
        assert_eq!(events.last().unwrap().done, Some(600));

        let g = fx();
        let a = g.write("in.tgz", &tarball);
        let (rep, rx) = Reporter::channel("p");
        drop(rx);
        let e = extract(&a, &g.dest, &Limits::default(), &rep).unwrap_err();
        assert!(matches!(e, ArchiveError::Cancelled));
    }

    #[test]
    fn clean_path_rules() {
        let ok = |s: &str| clean_path(s.as_bytes()).unwrap();
        assert_eq!(ok("./a/./b/"), Some(("a/b".to_string(), true)));
        assert_eq!(ok("a//b"), Some(("a/b".to_string(), false)));
        assert_eq!(ok("./"), None);
        assert_eq!(ok("dir:x/y"), Some(("dir:x/y".to_string(), false)));
        for bad in ["../x", "a/..", "/x", "c:x", "a\\b", ""] {
            assert!(clean_path(bad.as_bytes()).is_err(), "{bad}");
        }
        assert!(clean_path(b"\xff").is_err());
    }

    // ---- extension records, names, budget ----

    /// One pax record: `"<len> <key>=<value>\n"`, where `<len>` counts the whole record.
    fn pax_record(key: &str, value: &[u8]) -> Vec<u8> {
        let body = 1 + key.len() + 1 + value.len() + 1;
        let mut len = body + 1;
        while len != body + len.to_string().len() {
            len = body + len.to_string().len();
        }
        let mut r = format!("{len} {key}=").into_bytes();
        r.extend_from_slice(value);
        r.push(b'\n');
        r
    }

    fn pax_header(size: u64) -> tar::Header {
        raw_header("PaxHeaders/x", tar::EntryType::XHeader, size, 0o644)
    }

    /// A tar.gz whose first member is a pax header declaring `size` bytes, followed by
    /// those bytes: gzip members of one compressed MiB repeated, so a huge header costs
    /// a few hundred KiB of archive (as in the attack).
    fn huge_pax_tar_gz(size: u64) -> Vec<u8> {
        const MIB: u64 = 1024 * 1024;
        assert_eq!(size % MIB, 0);
        let mut out = gz(pax_header(size).as_bytes());
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        enc.write_all(&vec![b'a'; MIB as usize]).unwrap();
        let chunk = enc.finish().unwrap();
        for _ in 0..size / MIB {
            out.extend_from_slice(&chunk);
        }
        let rest = tar_bytes(&[E::File("pack.yaml", b"ref: x\n", 0o644)]);
        out.extend_from_slice(&gz(&rest));
        out
    }

    #[test]
    fn huge_pax_header_is_refused_before_it_is_read() {
        let size = 64 * 1024 * 1024;
        let bomb = huge_pax_tar_gz(size);
        assert!(bomb.len() < 200 * 1024, "{}", bomb.len());
        let f = fx();
        let a = f.write("in.tgz", &bomb);
        let started = std::time::Instant::now();
        let e = f.run(&a, &Limits::default()).unwrap_err();
        assert!(
            started.elapsed() < std::time::Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
        match &e {
            ArchiveError::HeaderTooLarge {
                entry,
                kind,
                size: got,
                limit,
            } => {
                assert_eq!(entry, "PaxHeaders/x");
                assert_eq!(*kind, "pax extended header");
                assert_eq!(*got, size);
                assert_eq!(*limit, 64 * 1024);
            }
            other => panic!("{other:?}"),
        }
        assert!(e.to_string().contains("download.max_header_bytes"), "{e}");
    }

    #[test]
    fn large_gnu_long_name_and_global_header_are_refused() {
        let limits = Limits {
            max_header_bytes: 1024,
            ..Limits::default()
        };
        let long = vec![b'a'; 2048];
        for (et, kind) in [
            (tar::EntryType::GNULongName, "GNU long name entry"),
            (tar::EntryType::GNULongLink, "GNU long link entry"),
            (tar::EntryType::XGlobalHeader, "pax global header"),
        ] {
            let h = raw_header("././@LongLink", et, long.len() as u64, 0o644);
            let t = tar_bytes(&[E::Raw(Box::new(h), &long), E::File("a", b"x", 0o644)]);
            let f = fx();
            let a = f.write("in.tar", &t);
            let e = f.run(&a, &limits).unwrap_err();
            assert!(
                matches!(&e, ArchiveError::HeaderTooLarge { kind: k, size: 2048, .. } if *k == kind),
                "{e:?}"
            );
        }
    }

    #[test]
    fn long_names_by_gnu_and_pax_records_are_extracted() {
        let deep = format!("{}/file.txt", ["d"; 80].join("/"));
        // The tar crate writes a GNU long name entry for names over 100 bytes.
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_size(2);
        h.set_mode(0o644);
        b.append_data(&mut h, &deep, &b"hi"[..]).unwrap();
        let f = fx();
        let a = f.write("in.tar", &b.into_inner().unwrap());
        f.run(&a, &Limits::default()).unwrap();
        assert_eq!(fs::read(f.dest.join(&deep)).unwrap(), b"hi");

        let record = [
            pax_record("path", deep.as_bytes()),
            pax_record("size", b"2"),
            pax_record("mtime", b"1704067200.5"),
        ]
        .concat();
        let t = tar_bytes(&[
            E::Raw(Box::new(pax_header(record.len() as u64)), &record),
            E::File("short-name", b"hi", 0o644),
        ]);
        let g = fx();
        let a = g.write("in.tgz", &gz(&t));
        let s = g.run(&a, &Limits::default()).unwrap();
        assert_eq!(s.files, 1);
        assert_eq!(fs::read(g.dest.join(&deep)).unwrap(), b"hi");
        assert!(!g.dest.join("short-name").exists());
    }

    #[test]
    fn pax_records_that_would_be_read_differently_are_refused() {
        let run = |record: Vec<u8>| {
            let t = tar_bytes(&[
                E::Raw(Box::new(pax_header(record.len() as u64)), &record),
                E::File("a", b"hi", 0o644),
            ]);
            let f = fx();
            let a = f.write("in.tar", &t);
            f.run(&a, &Limits::default()).unwrap_err()
        };
        let e = run(pax_record("size", b"1000"));
        assert!(
            matches!(&e, ArchiveError::Corrupt { detail } if detail.contains("pax header gives size 1000")),
            "{e:?}"
        );
        let e = run(pax_record("size", b"999999999999"));
        assert!(matches!(e, ArchiveError::EntryTooLarge { .. }), "{e:?}");
        let e = run(pax_record("GNU.sparse.major", b"1"));
        assert!(
            matches!(&e, ArchiveError::SpecialFile { kind, .. } if kind == "sparse file"),
            "{e:?}"
        );
        let e = run(pax_record("path", b"../evil"));
        assert!(matches!(e, ArchiveError::UnsafePath { .. }), "{e:?}");
        // A pax header with no member after it.
        let record = pax_record("path", b"x");
        let t = tar_bytes(&[E::Raw(Box::new(pax_header(record.len() as u64)), &record)]);
        let f = fx();
        let a = f.write("in.tar", &t);
        let e = f.run(&a, &Limits::default()).unwrap_err();
        assert!(matches!(e, ArchiveError::Corrupt { .. }), "{e:?}");
    }

    #[test]
    fn names_with_control_characters_are_refused_escaped() {
        for name in [
            "evil\rname",
            "tab\there",
            "esc\u{1b}[31mred",
            "del\u{7f}",
            "nl\nx",
        ] {
            let f = fx();
            let t = tar_bytes(&[
                E::File("pack.yaml", b"ref: x\n", 0o644),
                E::File(name, b"x", 0o644),
            ]);
            let a = f.write("in.tgz", &gz(&t));
            let e = f.run(&a, &Limits::default()).unwrap_err();
            match &e {
                ArchiveError::UnsafePath { entry, reason } => {
                    assert_eq!(entry, name);
                    assert_eq!(*reason, "name contains a control character");
                }
                other => panic!("{name:?}: {other:?}"),
            }
            let shown = e.to_string();
            assert!(!shown.chars().any(|c| c.is_control()), "{shown:?}");
            assert!(shown.contains(&format!("{name:?}")), "{shown}");
            assert!(!f.dest.join(name).exists());
        }
        let z = zip_bytes(|w| {
            w.start_file("a\u{1b}]0;title\u{7}", zopts(0o644)).unwrap();
            w.write_all(b"x").unwrap();
        });
        expect_zip_err(
            z,
            |e| matches!(e, ArchiveError::UnsafePath { reason, .. } if reason.contains("control")),
        );
    }

    #[test]
    fn names_are_bounded_in_length_and_in_total() {
        let long = format!("{}/f", vec!["a".repeat(200); 21].join("/"));
        assert!(long.len() > MAX_NAME_BYTES);
        let e = clean_path(long.as_bytes()).unwrap_err();
        assert!(
            matches!(&e, ArchiveError::UnsafePath { reason, entry } if reason.contains("4096") && entry.len() < 200),
            "{e:?}"
        );

        let names: Vec<String> = (0..50).map(|i| format!("dir/file-{i:04}")).collect();
        let entries: Vec<E<'_>> = names.iter().map(|n| E::File(n, b"x", 0o644)).collect();
        let f = fx();
        let a = f.write("in.tar", &tar_bytes(&entries));
        let limits = Limits {
            max_names_bytes: 200,
            ..Limits::default()
        };
        let e = f.run(&a, &limits).unwrap_err();
        assert!(
            matches!(e, ArchiveError::NamesTooLong { limit: 200 }),
            "{e:?}"
        );
        assert!(e.to_string().contains("download.max_names_bytes"));
    }

    #[test]
    fn budget_admits_up_to_its_slots_and_memory_and_releases_on_drop() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let limits = Limits::default();
        let per = memory_needed(&limits);
        rt.block_on(async {
            // Memory for two, slots for three: memory binds.
            let budget = ExtractBudget::new(3, per * 2 + per / 2);
            let one = budget.admit(&limits).await.unwrap();
            let two = budget.try_admit(&limits).unwrap().unwrap();
            assert_eq!(budget.running(), 2);
            assert!(budget.reserved_bytes() >= 2 * per);
            assert!(budget.try_admit(&limits).unwrap().is_none());
            // A waiter holds nothing; dropping it (a cancelled caller) changes nothing.
            let waiting =
                tokio::time::timeout(std::time::Duration::from_millis(50), budget.admit(&limits))
                    .await;
            assert!(waiting.is_err());
            assert_eq!(budget.running(), 2);
            drop(one);
            let three = budget.admit(&limits).await.unwrap();
            drop((two, three));
            assert_eq!(budget.running(), 0);
            assert_eq!(budget.reserved_bytes(), 0);

            // Slots for one: the second waits until the first is released from a
            // blocking thread.
            let budget = ExtractBudget::new(1, per * 4);
            let held = budget.admit(&limits).await.unwrap();
            let worker = tokio::task::spawn_blocking(move || {
                std::thread::sleep(std::time::Duration::from_millis(30));
                drop(held);
            });
            budget.admit(&limits).await.unwrap();
            worker.await.unwrap();
        });
        let budget = ExtractBudget::new(4, per - 1);
        assert_eq!(
            budget.validate(&limits),
            Err(BudgetError::TooSmall {
                needed: per,
                budget: per - 1
            })
        );
        assert_eq!(
            ExtractBudget::new(0, per).validate(&limits),
            Err(BudgetError::NoSlots)
        );
    }

    // ---- zip end records and opening archives ----

    /// An end-of-central-directory record declaring `entries` and `size` (0xFFFF /
    /// 0xFFFF_FFFF send readers to the ZIP64 record).
    fn eocd(entries: u16, size: u32, offset: u32) -> Vec<u8> {
        let mut r = b"PK\x05\x06".to_vec();
        r.extend_from_slice(&[0; 4]);
        r.extend_from_slice(&entries.to_le_bytes());
        r.extend_from_slice(&entries.to_le_bytes());
        r.extend_from_slice(&size.to_le_bytes());
        r.extend_from_slice(&offset.to_le_bytes());
        r.extend_from_slice(&0u16.to_le_bytes());
        r
    }

    /// A ZIP64 end record and locator declaring `entries` and `size`, then the
    /// classic record pointing to them.
    fn zip64_end(entries: u64, size: u64) -> Vec<u8> {
        let mut z = b"PK\x06\x06".to_vec();
        z.extend_from_slice(&44u64.to_le_bytes());
        z.extend_from_slice(&[45, 3, 45, 0]);
        z.extend_from_slice(&[0; 8]);
        z.extend_from_slice(&entries.to_le_bytes());
        z.extend_from_slice(&entries.to_le_bytes());
        z.extend_from_slice(&size.to_le_bytes());
        z.extend_from_slice(&0u64.to_le_bytes());
        z.extend_from_slice(b"PK\x06\x07");
        z.extend_from_slice(&[0; 4]);
        z.extend_from_slice(&0u64.to_le_bytes()); // the ZIP64 record is at offset 0
        z.extend_from_slice(&1u32.to_le_bytes());
        z.extend(eocd(0xFFFF, 0xFFFF_FFFF, 0xFFFF_FFFF));
        z
    }

    #[test]
    fn zip_end_records_are_judged_before_the_directory_is_read() {
        let limits = Limits::default();
        let cap = central_directory_cap(&limits);
        let check = |bytes: Vec<u8>| check_central_directory(&mut Cursor::new(bytes), &limits);
        // Declared, not present: nothing of it is read.
        assert!(matches!(
            check(eocd(10, u32::MAX - 1, 0)),
            Err(ArchiveError::CentralDirectoryTooLarge { declared, limit })
                if declared == u64::from(u32::MAX - 1) && limit == cap
        ));
        assert!(matches!(
            check(eocd(30_000, 100, 0)),
            Err(ArchiveError::TooManyEntries { limit: 20_000 })
        ));
        assert!(matches!(
            check(zip64_end(1 << 40, 100)),
            Err(ArchiveError::TooManyEntries { limit: 20_000 })
        ));
        assert!(matches!(
            check(zip64_end(10, 1 << 40)),
            Err(ArchiveError::CentralDirectoryTooLarge { declared, .. }) if declared == 1 << 40
        ));
        // A comment after the record is allowed for; sizes within the limits pass, and
        // so does anything without a record (the zip crate reports it).
        let mut commented = eocd(3, 200, 0);
        commented[20..22].copy_from_slice(&5u16.to_le_bytes());
        commented.extend_from_slice(b"hello");
        assert!(check(commented).is_ok());
        assert!(check(zip64_end(10, 4096)).is_ok());
        assert!(check(b"not a zip at all".to_vec()).is_ok());
        // A real archive passes and is extracted as before.
        let f = fx();
        let a = f.write("in.zip", &sample_zip());
        f.run(&a, &limits).unwrap();
    }

    fn sample_zip() -> Vec<u8> {
        zip_bytes(|w| {
            w.start_file("pack.yaml", zopts(0o644)).unwrap();
            w.write_all(b"ref: z\n").unwrap();
        })
    }

    #[test]
    fn open_archive_refuses_special_files_links_and_oversized_files_without_blocking() {
        let f = fx();
        let fifo = f.root.as_path().join("p.tgz");
        rustix::fs::mknodat(
            rustix::fs::CWD,
            &fifo,
            rustix::fs::FileType::Fifo,
            rustix::fs::Mode::from_raw_mode(0o644),
            0,
        )
        .unwrap();
        let started = std::time::Instant::now();
        assert!(matches!(
            open_archive(&fifo, 1 << 20),
            Err(ArchiveError::NotRegularFile { kind: "fifo", .. })
        ));
        assert!(started.elapsed() < std::time::Duration::from_secs(1));

        let link = f.root.as_path().join("zero.zip");
        std::os::unix::fs::symlink("/dev/zero", &link).unwrap();
        assert!(matches!(
            open_archive(&link, 1 << 20),
            Err(ArchiveError::NotRegularFile {
                kind: "symbolic link",
                ..
            })
        ));
        assert!(matches!(
            open_archive(Path::new("/dev/zero"), 1 << 20),
            Err(ArchiveError::NotRegularFile {
                kind: "character device",
                ..
            })
        ));
        assert!(matches!(
            open_archive(f.root.as_path(), 1 << 20),
            Err(ArchiveError::NotRegularFile {
                kind: "directory",
                ..
            })
        ));

        let zip = f.write("ok.zip", &sample_zip());
        let size = fs::metadata(&zip).unwrap().len();
        let err = open_archive(&zip, size - 1).unwrap_err();
        assert!(
            err.to_string().contains("download.max_archive_bytes"),
            "{err}"
        );
        // The descriptor is what gets extracted.
        let opened = open_archive(&zip, size).unwrap();
        fs::remove_file(&zip).unwrap();
        let s = extract_file(opened, &zip, &f.dest, &Limits::default(), &Reporter::noop()).unwrap();
        assert_eq!(s.files, 1);
    }
}
