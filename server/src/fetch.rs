//! Getting bytes onto the disk: archives over HTTP(S) and local directory copies.
//! Git lives in [`crate::git`], extraction in [`crate::archive`].

use std::{
    ffi::OsString,
    fs,
    io::{self, BufWriter, Read, Write},
    path::{Path, PathBuf},
    rc::Rc,
    time::{Duration, Instant},
};

use futures::StreamExt;

use crate::{
    checksum::{DigestWriter, Digests},
    packfs::{EntryKind, PackDir, PackFile, PackFsError, TreeLimits},
    progress::{Reporter, Stage},
    source::redact_url,
};

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("refusing {url}: {reason}")]
    Policy { url: String, reason: String },
    #[error("cannot download {url}: {message}")]
    Network { url: String, message: String },
    /// The HTTP client could not be built (at server start).
    #[error("cannot download : {0}")]
    Client(#[source] reqwest::Error),
    #[error("{url} answered HTTP {status}")]
    Status { url: String, status: u16 },
    #[error("{url} is larger than the {limit}-byte download limit")]
    TooLarge { url: String, limit: u64 },
    #[error("download cancelled")]
    Cancelled,
    #[error("cannot write {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("'{path}' is a {kind}; packs may contain only regular files and directories")]
    SpecialFile { path: String, kind: &'static str },
    #[error(transparent)]
    Read(PackFsError),
}

/// HTTP(S) downloads. Two clients, built once: one verifying certificates, one not
/// (used only when a request sets `verify_ssl: false` and the server allows it).
#[derive(Clone)]
pub struct HttpFetcher {
    verifying: reqwest::Client,
    insecure: reqwest::Client,
    allow_http: bool,
    max_bytes: u64,
}

const PROGRESS_INTERVAL: Duration = Duration::from_millis(200);

impl HttpFetcher {
    pub fn new(allow_http: bool, max_bytes: u64) -> Result<Self, FetchError> {
        let build = |verify: bool| {
            reqwest::Client::builder()
                .user_agent(concat!("attune-packs/", env!("CARGO_PKG_VERSION")))
                .connect_timeout(Duration::from_secs(10))
                .read_timeout(Duration::from_secs(60))
                .redirect(redirect_policy(allow_http))
                // Proxies from the environment would route pack downloads through
                // hosts nobody configured for this service.
                .no_proxy()
                .danger_accept_invalid_certs(!verify)
                .build()
                .map_err(FetchError::Client)
        };
        Ok(Self {
            verifying: build(true)?,
            insecure: build(false)?,
            allow_http,
            max_bytes,
        })
    }

    fn client(&self, verify_ssl: bool) -> &reqwest::Client {
        if verify_ssl {
            &self.verifying
        } else {
            &self.insecure
        }
    }

    fn check_scheme(&self, url: &str) -> Result<(), FetchError> {
        let lower = url.to_ascii_lowercase();
        if lower.starts_with("https://") || (self.allow_http && lower.starts_with("http://")) {
            Ok(())
        } else {
            Err(FetchError::Policy {
                url: redact_url(url),
                reason:
                    "only https:// downloads are allowed (the server's download.allow_http is off)"
                        .into(),
            })
        }
    }

    /// Whether `url` is a git repository served over smart HTTP: such servers answer
    /// `info/refs?service=git-upload-pack` with a git advertisement.
    pub async fn is_git_remote(&self, url: &str, verify_ssl: bool) -> bool {
        if self.check_scheme(url).is_err() {
            return false;
        }
        let probe = format!(
            "{}/info/refs?service=git-upload-pack",
            url.trim_end_matches('/')
        );
        let response = self
            .client(verify_ssl)
            .get(&probe)
            .timeout(Duration::from_secs(15))
            .send()
            .await;
        response.is_ok_and(|r| {
            r.status().is_success()
                && r.headers()
                    .get(reqwest::header::CONTENT_TYPE)
                    .and_then(|v| v.to_str().ok())
                    .is_some_and(|v| v.starts_with("application/x-git-upload-pack-advertisement"))
        })
    }

    /// Streams `url` into `dest` (created), hashing while writing. Reports bytes
    /// received of the total (when the server says it). Stops when the reporter is
    /// cancelled.
    #[tracing::instrument(name = "http_download", level = "debug", skip_all, fields(url = %redact_url(url)))]
    pub async fn download(
        &self,
        url: &str,
        dest: &Path,
        verify_ssl: bool,
        reporter: &Reporter,
    ) -> Result<Digests, FetchError> {
        self.check_scheme(url)?;
        let network = |e: reqwest::Error| FetchError::Network {
            url: redact_url(url),
            message: describe_reqwest_error(&e),
        };
        let response = tokio::select! {
            r = self.client(verify_ssl).get(url).send() => r.map_err(network)?,
            _ = reporter.cancelled() => return Err(FetchError::Cancelled),
        };
        let status = response.status();
        if !status.is_success() {
            return Err(FetchError::Status {
                url: redact_url(url),
                status: status.as_u16(),
            });
        }
        let total = response.content_length();
        tracing::debug!(
            status = status.as_u16(),
            length = total,
            "response received"
        );
        if total.is_some_and(|t| t > self.max_bytes) {
            return Err(FetchError::TooLarge {
                url: redact_url(url),
                limit: self.max_bytes,
            });
        }

        // The network side stays async; hashing and writing happen on a blocking
        // thread fed through a small channel, so a slow disk never stalls the runtime.
        let (tx, rx) = std::sync::mpsc::sync_channel::<bytes::Bytes>(16);
        let path = dest.to_path_buf();
        let writer = tokio::task::spawn_blocking(move || write_hashed(&path, rx));

        let mut body = response.bytes_stream();
        let mut received: u64 = 0;
        let mut last_report = Instant::now();
        reporter.count(
            Stage::Fetch,
            format!("downloading {}", redact_url(url)),
            0,
            total,
        );
        let outcome: Result<(), FetchError> = loop {
            let chunk = tokio::select! {
                chunk = body.next() => chunk,
                _ = reporter.cancelled() => break Err(FetchError::Cancelled),
            };
            let Some(chunk) = chunk else { break Ok(()) };
            let chunk = match chunk {
                Ok(c) => c,
                Err(e) => break Err(network(e)),
            };
            received += chunk.len() as u64;
            if received > self.max_bytes {
                break Err(FetchError::TooLarge {
                    url: redact_url(url),
                    limit: self.max_bytes,
                });
            }
            if tx.send(chunk).is_err() {
                // The writer stopped: its own error is reported below.
                break Ok(());
            }
            if last_report.elapsed() >= PROGRESS_INTERVAL {
                last_report = Instant::now();
                reporter.count(Stage::Fetch, "bytes received", received, total);
            }
        };
        drop(tx);
        let written = writer.await.expect("archive writer panicked");
        outcome?;
        let digests = written.map_err(|source| FetchError::Io {
            path: dest.to_path_buf(),
            source,
        })?;
        tracing::debug!(bytes = received, "downloaded");
        reporter.count(
            Stage::Fetch,
            "bytes received",
            received,
            total.or(Some(received)),
        );
        Ok(digests)
    }
}

/// Copies the archive `rel`, below the directory `index_dir` of a `file://` index,
/// into `dest`, hashing it on the way; refused beyond `max_bytes` like a download.
/// Opened beneath `index_dir` (links inside it are followed, none out of it), without
/// blocking (a FIFO would hold the thread for good), and judged by `fstat` of what was
/// opened.
pub fn copy_archive_file(
    index_dir: &Path,
    rel: &Path,
    dest: &Path,
    max_bytes: u64,
) -> Result<Digests, FetchError> {
    let io_at = |path: &Path| {
        let path = path.to_path_buf();
        move |source: io::Error| FetchError::Io { path, source }
    };
    let refused = |e: PackFsError| match e {
        PackFsError::Special { kind, .. } => FetchError::SpecialFile {
            path: rel.display().to_string(),
            kind,
        },
        other => FetchError::Read(other.relative_to(index_dir)),
    };
    // The index's own directory may be reached through links (the operator chose
    // it); nothing below it may lead out.
    let index_dir = &fs::canonicalize(index_dir).map_err(|e| FetchError::Network {
        url: format!("file://{}", index_dir.display()),
        message: format!("cannot open the index's directory: {e}"),
    })?;
    let input = PackDir::open(index_dir)
        .and_then(|dir| dir.open_file(rel))
        .map_err(refused)?;
    let too_large = || FetchError::TooLarge {
        url: format!("file://{}", index_dir.join(rel).display()),
        limit: max_bytes,
    };
    if input.len > max_bytes {
        return Err(too_large());
    }
    let mut writer =
        DigestWriter::new(BufWriter::new(fs::File::create(dest).map_err(io_at(dest))?));
    // Bounded even if the file grows after the check.
    let copied = io::copy(&mut input.file.take(max_bytes + 1), &mut writer).map_err(io_at(dest))?;
    if copied > max_bytes {
        return Err(too_large());
    }
    let (mut out, digests) = writer.finish();
    out.flush().map_err(io_at(dest))?;
    Ok(digests)
}

fn write_hashed(
    path: &Path,
    chunks: std::sync::mpsc::Receiver<bytes::Bytes>,
) -> io::Result<Digests> {
    let file = fs::File::create(path)?;
    let mut out = DigestWriter::new(BufWriter::with_capacity(256 * 1024, file));
    for chunk in chunks {
        out.write_all(&chunk)?;
    }
    let (mut inner, digests) = out.finish();
    inner.flush()?;
    Ok(digests)
}

/// Up to 5 redirects (archive hosts commonly redirect to storage), never from https
/// down to http, never to another scheme.
fn redirect_policy(allow_http: bool) -> reqwest::redirect::Policy {
    reqwest::redirect::Policy::custom(move |attempt| {
        if attempt.previous().len() >= 5 {
            return attempt.error("too many redirects");
        }
        let scheme = attempt.url().scheme().to_string();
        let from_https = attempt
            .previous()
            .last()
            .is_some_and(|u| u.scheme() == "https");
        match scheme.as_str() {
            "https" => attempt.follow(),
            "http" if allow_http && !from_https => attempt.follow(),
            _ => attempt.error(format!("redirect to a {scheme} URL refused")),
        }
    })
}

/// reqwest's Display stops at the outermost layer ("error sending request"); the
/// useful part (certificate, connection refused) is in the source chain.
fn describe_reqwest_error(e: &reqwest::Error) -> String {
    let mut message = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        message.push_str(": ");
        message.push_str(&s.to_string());
        source = s.source();
    }
    if e.is_timeout() {
        message.push_str(" (timed out)");
    }
    // reqwest names the URL it failed on, query string and all.
    match e.url() {
        Some(url) => message.replace(url.as_str(), &redact_url(url.as_str())),
        None => message,
    }
}

/// Copies the opened pack directory `src` into `dst` (which must not exist). Only
/// regular files and directories are written: a symbolic link that stays inside the
/// pack is copied as the file or directory it resolves to (the copy holds no links);
/// one that leaves the pack, points to nothing or is a loop (a directory link back to
/// a directory being copied, too) is an error naming it, and so is a special file.
/// `.git` is skipped.
///
/// The walk goes by descriptor: every name is resolved beneath the pack root's
/// descriptor (see [`PackDir`]) and each file is checked after it is opened, so a
/// directory swapped for a link out of the pack while the copy runs is refused, never
/// followed. Set-user-ID, set-group-ID and sticky bits are not copied.
///
/// `limits` bound the copy: entries are counted as they are listed, a directory
/// nested deeper than `limits.depth` is refused before it is opened, and a file is
/// refused by its `fstat` size before a byte of it is written (a sparse 100 GiB file
/// costs nothing); bytes are counted while copying too, so a file that grows while
/// it is copied stops at the cap. What a link resolves to counts again, like any
/// entry. Directories still to be copied are remembered by
/// name under their parent's descriptor, so the descriptors held at once are bounded
/// by the depth, not by how many directories a listing holds. On error `dst` may
/// hold a partial copy: the caller deletes it.
pub fn copy_tree(
    src: &PackDir,
    dst: &Path,
    limits: &TreeLimits,
    reporter: &Reporter,
) -> Result<u64, FetchError> {
    let io_err = |path: &Path| {
        let path = path.to_path_buf();
        move |source: io::Error| FetchError::Io { path, source }
    };
    let refused = |e: PackFsError| -> FetchError {
        let shown = e
            .path()
            .strip_prefix(src.path())
            .unwrap_or(e.path())
            .display()
            .to_string();
        match e {
            PackFsError::Special { kind, .. } => FetchError::SpecialFile { path: shown, kind },
            other => FetchError::Read(other.relative_to(src.path())),
        }
    };
    /// A directory still to copy: its name under an opened parent (`None`: the root).
    struct Pending {
        parent: Option<Rc<PackDir>>,
        name: OsString,
        to: PathBuf,
        depth: u64,
        /// The directories above it (device, inode), for links leading back.
        ancestors: Rc<Vec<(u64, u64)>>,
    }
    fs::create_dir(dst).map_err(io_err(dst))?;
    let mut files = 0u64;
    let mut entries = 0u64;
    let mut bytes = 0u64;
    let mut root_done = false;
    let mut stack: Vec<Pending> = Vec::new();
    loop {
        if reporter.is_cancelled() {
            return Err(FetchError::Cancelled);
        }
        // The root is listed first, through the caller's descriptor.
        let (opened, to, depth, ancestors) = if !root_done {
            root_done = true;
            let root = vec![src.identity().map_err(refused)?];
            (None, dst.to_path_buf(), 0, Rc::new(root))
        } else {
            let Some(next) = stack.pop() else { break };
            let parent = next.parent.as_deref().unwrap_or(src);
            let sub = parent.open_dir(&next.name).map_err(refused)?;
            let id = sub.identity().map_err(refused)?;
            if next.ancestors.contains(&id) {
                return Err(refused(parent.loop_at(&next.name)));
            }
            let mut ancestors = (*next.ancestors).clone();
            ancestors.push(id);
            fs::create_dir(&next.to).map_err(io_err(&next.to))?;
            (Some(Rc::new(sub)), next.to, next.depth, Rc::new(ancestors))
        };
        let from_dir: &PackDir = opened.as_deref().unwrap_or(src);
        let mut listed = from_dir.entries_within(limits, entries).map_err(refused)?;
        entries += listed.len() as u64;
        listed.sort_by(|a, b| a.name.cmp(&b.name));
        let mut subdirs = Vec::new();
        for entry in listed {
            if entry.name == ".git" {
                continue;
            }
            let target = to.join(&entry.name);
            let kind = match entry.kind {
                EntryKind::Symlink => from_dir.resolve_kind(&entry.name).map_err(refused)?.0,
                other => other,
            };
            match kind {
                EntryKind::Dir => {
                    if depth + 1 > limits.depth.value {
                        return Err(refused(limits.too_deep(from_dir.path().join(&entry.name))));
                    }
                    subdirs.push(Pending {
                        parent: opened.clone(),
                        name: entry.name,
                        to: target,
                        depth: depth + 1,
                        ancestors: ancestors.clone(),
                    });
                }
                EntryKind::File => {
                    let path = from_dir.path().join(&entry.name);
                    let mut file = from_dir.open_file(&entry.name).map_err(refused)?;
                    if file.len > limits.file_bytes.value {
                        return Err(refused(limits.file_too_large(path)));
                    }
                    let room = limits.total_bytes.value.saturating_sub(bytes);
                    if file.len > room {
                        return Err(refused(limits.too_many_bytes(path)));
                    }
                    let cap = room.min(limits.file_bytes.value);
                    let written = copy_file(&mut file, &target, cap).map_err(io_err(&target))?;
                    if written > cap {
                        return Err(refused(if written > limits.file_bytes.value {
                            limits.file_too_large(path)
                        } else {
                            limits.too_many_bytes(path)
                        }));
                    }
                    bytes += written;
                    files += 1;
                }
                other => {
                    return Err(refused(other.refusal(from_dir.path().join(&entry.name))));
                }
            }
        }
        // Reversed so that directories are copied in name order.
        stack.extend(subdirs.into_iter().rev());
    }
    reporter.count(Stage::Fetch, "files copied", files, Some(files));
    Ok(files)
}

/// Whether the tree below the opened directory holds a symbolic link (`.git`
/// skipped), looked for within `limits`.
pub fn has_links(src: &PackDir, limits: &TreeLimits) -> Result<bool, FetchError> {
    let refused = |e: PackFsError| FetchError::Read(e.relative_to(src.path()));
    let mut entries = 0u64;
    let mut todo: Vec<(PathBuf, u64)> = vec![(PathBuf::new(), 0)];
    while let Some((rel, depth)) = todo.pop() {
        let opened;
        let dir = if rel.as_os_str().is_empty() {
            src
        } else {
            opened = src.open_dir(&rel).map_err(refused)?;
            &opened
        };
        let listed = dir.entries_within(limits, entries).map_err(refused)?;
        entries += listed.len() as u64;
        for entry in listed {
            match entry.kind {
                EntryKind::Symlink => return Ok(true),
                EntryKind::Dir if entry.name != ".git" => {
                    if depth + 1 > limits.depth.value {
                        return Err(refused(limits.too_deep(dir.path().join(&entry.name))));
                    }
                    todo.push((rel.join(&entry.name), depth + 1));
                }
                _ => {}
            }
        }
    }
    Ok(false)
}

/// Writes at most `cap + 1` bytes of the opened file to the new file `target` with
/// its permission bits (less set-ID and sticky bits: a copy made by the server must
/// not become a set-ID program owned by the server's user). Returns the bytes
/// written: more than `cap` means the file grew past it while being copied.
fn copy_file(opened: &mut PackFile, target: &Path, cap: u64) -> io::Result<u64> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let mode = opened.mode & 0o777;
    let mut out = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(target)?;
    let written = io::copy(&mut (&opened.file).take(cap.saturating_add(1)), &mut out)?;
    // The mode given at creation is reduced by the umask; the copy keeps the
    // pack's own bits (scripts stay executable).
    out.set_permissions(fs::Permissions::from_mode(mode))?;
    Ok(written)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn mode(path: &Path) -> u32 {
        fs::metadata(path).unwrap().permissions().mode() & 0o7777
    }

    #[test]
    fn copies_files_and_directories_keeping_permission_bits_but_not_set_id_bits() {
        let src = tempfile::tempdir().unwrap();
        let out = tempfile::tempdir().unwrap();
        fs::create_dir_all(src.path().join("actions/lib")).unwrap();
        fs::create_dir_all(src.path().join(".git")).unwrap();
        fs::write(src.path().join(".git/config"), "x").unwrap();
        fs::write(src.path().join("pack.yaml"), "ref: p\n").unwrap();
        let script = src.path().join("actions/run.sh");
        fs::write(&script, "#!/bin/sh\n").unwrap();
        fs::set_permissions(&script, fs::Permissions::from_mode(0o4755)).unwrap();
        fs::write(src.path().join("actions/lib/x.py"), "pass\n").unwrap();

        let dst = out.path().join("copy");
        let opened = PackDir::open(src.path()).unwrap();
        let files = copy_tree(&opened, &dst, &TreeLimits::DEFAULT, &Reporter::noop()).unwrap();
        assert_eq!(files, 3);
        assert_eq!(fs::read(dst.join("actions/lib/x.py")).unwrap(), b"pass\n");
        assert_eq!(mode(&dst.join("actions/run.sh")), 0o755);
        assert!(!dst.join(".git").exists());
    }

    #[test]
    fn links_and_fifos_anywhere_are_refused_naming_them() {
        let outside = tempfile::tempdir().unwrap();
        let secret = outside.path().join("secret");
        fs::write(&secret, "s").unwrap();
        // Copies a pack whose only file is `sub/<name>`, made by `make`.
        let copy_with = |name: &str, make: &dyn Fn(&Path)| {
            let src = tempfile::tempdir().unwrap();
            fs::create_dir(src.path().join("sub")).unwrap();
            make(&src.path().join("sub").join(name));
            let out = tempfile::tempdir().unwrap();
            let opened = PackDir::open(src.path()).unwrap();
            copy_tree(
                &opened,
                &out.path().join("copy"),
                &TreeLimits::DEFAULT,
                &Reporter::noop(),
            )
            .unwrap_err()
        };
        let err = copy_with("link", &|path| {
            std::os::unix::fs::symlink(&secret, path).unwrap()
        });
        assert!(
            matches!(&err, FetchError::Read(PackFsError::Link { path, .. }) if path == Path::new("sub/link")),
            "{err}"
        );
        assert!(err.to_string().contains("leaves the pack"), "{err}");
        let err = copy_with("pipe", &|path| {
            rustix::fs::mknodat(
                rustix::fs::CWD,
                path,
                rustix::fs::FileType::Fifo,
                rustix::fs::Mode::from_raw_mode(0o644),
                0,
            )
            .unwrap()
        });
        assert!(
            matches!(&err, FetchError::SpecialFile { path, kind } if path == "sub/pipe" && *kind == "fifo"),
            "{err}"
        );
    }

    #[test]
    fn links_inside_the_pack_are_copied_as_what_they_point_to() {
        use std::os::unix::fs::symlink;
        let src = tempfile::tempdir().unwrap();
        let root = src.path();
        fs::create_dir_all(root.join("tests/fixtures")).unwrap();
        fs::create_dir_all(root.join("lib")).unwrap();
        fs::write(root.join("p.yaml.example"), "full\n").unwrap();
        let script = root.join("lib/run.sh");
        fs::write(&script, "#!/bin/sh\n").unwrap();
        fs::set_permissions(&script, fs::Permissions::from_mode(0o750)).unwrap();
        symlink(
            "../../p.yaml.example",
            root.join("tests/fixtures/full.yaml"),
        )
        .unwrap();
        symlink("lib", root.join("libdir")).unwrap();
        symlink("libdir/run.sh", root.join("run.sh")).unwrap();
        let (result, out) = copy_with(root, &TreeLimits::DEFAULT);
        assert_eq!(result.unwrap(), 5);
        let copy = out.path().join("copy");
        for (path, content) in [
            ("tests/fixtures/full.yaml", "full\n"),
            ("libdir/run.sh", "#!/bin/sh\n"),
            ("run.sh", "#!/bin/sh\n"),
        ] {
            let meta = fs::symlink_metadata(copy.join(path)).unwrap();
            assert!(meta.is_file(), "{path} is not a regular file");
            assert_eq!(fs::read_to_string(copy.join(path)).unwrap(), content);
        }
        assert!(fs::symlink_metadata(copy.join("libdir")).unwrap().is_dir());
        assert_eq!(mode(&copy.join("run.sh")), 0o750);
        assert_eq!(
            crate::checksum::directory_checksum(root).unwrap(),
            crate::checksum::directory_checksum(&copy).unwrap()
        );
        // What a directory link copies counts against the limits again.
        let (result, _out) = copy_with(root, &limits(1 << 20, 8, 1 << 20, 8));
        let err = result.unwrap_err().to_string();
        assert!(err.contains("more than 8 entries"), "{err}");
    }

    #[test]
    fn dangling_and_looping_links_are_refused_naming_them() {
        use std::os::unix::fs::symlink;
        for (name, target, problem) in [
            ("lib/gone", "../missing", "points to nothing"),
            ("lib/up", "..", "is a loop"),
            ("lib/me", "me", "is a loop"),
            ("lib/out", "../../x", "leaves the pack"),
        ] {
            let src = tempfile::tempdir().unwrap();
            fs::create_dir(src.path().join("lib")).unwrap();
            fs::write(src.path().join("lib/a"), "a").unwrap();
            symlink(target, src.path().join(name)).unwrap();
            let (result, _out) = copy_with(src.path(), &TreeLimits::DEFAULT);
            let err = result.unwrap_err().to_string();
            assert!(err.contains(&format!("'{name}'")), "{err}");
            assert!(err.contains(problem), "{err}");
        }
    }

    fn limits(total: u64, entries: u64, file: u64, depth: u64) -> TreeLimits {
        TreeLimits::from_pack_files(total, entries, file, depth)
    }

    fn copy_with(src: &Path, limits: &TreeLimits) -> (Result<u64, FetchError>, tempfile::TempDir) {
        let out = tempfile::tempdir().unwrap();
        let opened = PackDir::open(src).unwrap();
        let result = copy_tree(&opened, &out.path().join("copy"), limits, &Reporter::noop());
        (result, out)
    }

    /// Bytes the files below `dir` take on disk.
    fn disk_usage(dir: &Path) -> u64 {
        use std::os::unix::fs::MetadataExt;
        let mut total = 0;
        for entry in fs::read_dir(dir).unwrap().flatten() {
            let meta = entry.metadata().unwrap();
            total += if meta.is_dir() {
                disk_usage(&entry.path())
            } else {
                meta.blocks() * 512
            };
        }
        total
    }

    #[test]
    fn a_sparse_file_over_the_file_cap_is_refused_before_a_byte_is_written() {
        let src = tempfile::tempdir().unwrap();
        fs::write(src.path().join("a"), "x").unwrap();
        fs::File::create(src.path().join("huge"))
            .unwrap()
            .set_len(1 << 40)
            .unwrap();
        let (result, out) = copy_with(src.path(), &limits(u64::MAX, 100, 1 << 20, 8));
        let err = result.unwrap_err().to_string();
        for needle in ["'huge'", "1048576 bytes", "pack_files.max_file_bytes"] {
            assert!(err.contains(needle), "{needle} not in {err}");
        }
        assert!(disk_usage(out.path()) < 64 * 1024);
    }

    #[test]
    fn the_total_is_counted_across_files() {
        let src = tempfile::tempdir().unwrap();
        for name in ["a", "b", "c"] {
            fs::write(src.path().join(name), vec![b'x'; 400]).unwrap();
        }
        let (result, _out) = copy_with(src.path(), &limits(1000, 100, 1000, 8));
        let err = result.unwrap_err().to_string();
        assert!(err.contains("'c'"), "{err}");
        assert!(err.contains("more than 1000 bytes in its files"), "{err}");
        assert!(err.contains("pack_files.max_pack_bytes"), "{err}");
        let (result, _out) = copy_with(src.path(), &limits(1200, 100, 400, 8));
        assert_eq!(result.unwrap(), 3);
    }

    #[test]
    fn entries_are_counted_across_directories_and_listings_stop_at_the_limit() {
        let src = tempfile::tempdir().unwrap();
        for dir in ["a", "b"] {
            fs::create_dir(src.path().join(dir)).unwrap();
            for i in 0..5 {
                fs::write(src.path().join(dir).join(i.to_string()), "").unwrap();
            }
        }
        // 2 directories + 10 files.
        let (result, _out) = copy_with(src.path(), &limits(1 << 20, 11, 1 << 20, 8));
        let err = result.unwrap_err().to_string();
        assert!(err.contains("more than 11 entries"), "{err}");
        assert!(err.contains("pack_files.max_entries"), "{err}");
        let (result, _out) = copy_with(src.path(), &limits(1 << 20, 12, 1 << 20, 8));
        assert_eq!(result.unwrap(), 10);
    }

    #[test]
    fn nesting_deeper_than_the_limit_is_refused() {
        let src = tempfile::tempdir().unwrap();
        let mut deep = src.path().to_path_buf();
        for _ in 0..5 {
            deep.push("d");
        }
        fs::create_dir_all(&deep).unwrap();
        for i in 0..300 {
            fs::create_dir(src.path().join(format!("w{i:03}"))).unwrap();
        }
        let (result, _out) = copy_with(src.path(), &limits(1 << 20, 1000, 1 << 20, 4));
        let err = result.unwrap_err().to_string();
        assert!(err.contains("'d/d/d/d/d'"), "{err}");
        assert!(err.contains("more than 4 levels"), "{err}");
        assert!(err.contains("pack_files.max_depth"), "{err}");

        let (result, _out) = copy_with(src.path(), &limits(1 << 20, 1000, 1 << 20, 5));
        assert_eq!(result.unwrap(), 0);
        assert!(_out.path().join("copy/w299").is_dir());
    }

    /// A file that is larger than `fstat` said when it was judged (it grew since) is
    /// still cut at the cap: at most the cap + 1 byte is written.
    #[test]
    fn a_file_grown_past_its_fstat_size_is_cut_at_the_cap() {
        let dir = tempfile::tempdir().unwrap();
        let grown = dir.path().join("grown");
        fs::write(&grown, vec![b'x'; 10_000]).unwrap();
        let mut opened = PackFile {
            file: fs::File::open(&grown).unwrap(),
            len: 10,
            mode: 0o644,
        };
        let target = dir.path().join("copy");
        assert_eq!(copy_file(&mut opened, &target, 100).unwrap(), 101);
        assert_eq!(fs::metadata(&target).unwrap().len(), 101);
    }
}
