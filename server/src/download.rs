//! The Download stage: pack sources in, pack directories at `<destination_dir>/<ref>` out.
//!
//! Per pack: resolve the source (registry index, git, archive, local path), fetch it
//! into a staging directory inside `destination_dir` (same filesystem, so placement is
//! a rename), verify (index checksums, pack.yaml identity), then place it atomically.
//! Every pack of a request ends as exactly one success or one failure. Packs download
//! concurrently (bounded); each has its own timeout; a dropped call cancels all of them.
//! Nothing partial is left behind: staging directories are removed when the last
//! piece of work holding them (including a blocking extraction) lets go.

use crate::failure::{Failure, FailureKind};
use std::{
    collections::HashMap,
    fs,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use futures::StreamExt;

use crate::{
    archive::{self, Limits},
    checksum::{self, Digest},
    config::{DownloadSection, RegistrySection},
    fetch::{self, HttpFetcher},
    git::{self, GitCredentials},
    journal::{self, Journal, WorkKind},
    locks::PackLocks,
    manifest::Manifest,
    packfs::{PackReadLimits, TreeLimit, TreeLimits},
    paths::PathPolicy,
    progress::{Reporter, Stage},
    provenance::{self, Provenance},
    registry::{InstallSource, RegistryClient},
    source::{PackSource, redact_url},
};

/// After a pack's timeout, how long its work may take to notice and clean up.
const CANCEL_GRACE: Duration = Duration::from_secs(10);

#[derive(Debug, Clone)]
pub struct DownloadRequest {
    pub packs: Vec<String>,
    /// As the caller wrote it; confined by the stage.
    pub destination_dir: String,
    pub registry_url: Option<String>,
    pub ref_spec: Option<String>,
    pub timeout: Duration,
    pub verify_ssl: bool,
    /// Replace an existing, different `<destination_dir>/<ref>`.
    pub force: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DownloadedPack {
    pub source: String,
    pub source_type: String,
    pub pack_path: String,
    pub pack_ref: String,
    pub pack_version: String,
    pub git_commit: Option<String>,
    /// `sha256:` + the attune-pack-file-v1 directory checksum.
    pub checksum: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailedPack {
    pub source: String,
    pub error: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DownloadReport {
    pub downloaded: Vec<DownloadedPack>,
    pub failed: Vec<FailedPack>,
}

#[derive(Debug, thiserror::Error)]
pub enum DownloadError {
    /// The request as a whole cannot be served (INVALID_ARGUMENT).
    #[error("{0}")]
    InvalidRequest(String),
    #[error("cannot set up downloads: {0}")]
    Setup(String),
}

impl Failure for DownloadError {
    fn kind(&self) -> FailureKind {
        match self {
            DownloadError::InvalidRequest(_) => FailureKind::InvalidRequest,
            DownloadError::Setup(_) => FailureKind::Internal,
        }
    }
}

/// Shared by all requests: registry cache, HTTP clients, credentials, limits.
pub struct Downloader {
    /// `download:` as configured.
    settings: DownloadSection,
    registry: RegistryClient,
    http: HttpFetcher,
    credentials: GitCredentials,
    /// `settings`' extraction limits.
    limits: Limits,
    /// Shared by every extraction of the process (Download and Install).
    extract_budget: archive::ExtractBudget,
    paths: PathPolicy,
    /// Serialises placements of one destination directory, across requests.
    locks: PackLocks,
    /// Where destination directories are recorded, so that a start after a crash
    /// removes their staging leftovers.
    journal: Option<Arc<Journal>>,
}

/// What fetching produced, before verification and placement.
struct Fetched {
    pack_root: PathBuf,
    source_type: &'static str,
    url: Option<String>,
    reference: Option<String>,
    git_commit: Option<String>,
    /// Computed while extracting, when the archive allowed it.
    checksum_hex: Option<String>,
    /// A registry checksum that was checked (archive bytes, before extraction).
    verified: bool,
}

type PackResult = Result<DownloadedPack, String>;

impl Downloader {
    pub fn new(
        settings: &DownloadSection,
        registry: &RegistrySection,
        paths: PathPolicy,
        locks: PackLocks,
    ) -> Result<Self, DownloadError> {
        let registry = RegistryClient::new(registry.client_config())
            .map_err(|e| DownloadError::Setup(format!("registry configuration: {e}")))?;
        let http = HttpFetcher::new(settings.allow_http, settings.max_archive_bytes)
            .map_err(|e| DownloadError::Setup(e.to_string()))?;
        let extract_budget = archive::ExtractBudget::new(
            settings.extract_concurrency,
            settings.extract_memory_bytes,
        );
        let limits = settings.extract_limits();
        extract_budget
            .validate(&limits)
            .map_err(|e| DownloadError::Setup(e.to_string()))?;
        Ok(Self {
            settings: settings.clone(),
            registry,
            http,
            credentials: settings.git.credentials(),
            limits,
            extract_budget,
            paths,
            locks,
            journal: None,
        })
    }

    /// The process-wide admission for archive extractions.
    pub fn extract_budget(&self) -> &archive::ExtractBudget {
        &self.extract_budget
    }

    /// Records every destination directory in `journal` (see [`Journal::remember_dir`]).
    pub fn with_journal(mut self, journal: Arc<Journal>) -> Self {
        self.journal = Some(journal);
        self
    }

    pub fn registry(&self) -> &RegistryClient {
        &self.registry
    }

    pub async fn download(
        self: &Arc<Self>,
        request: DownloadRequest,
        reporter: &Reporter,
    ) -> Result<DownloadReport, DownloadError> {
        if !request.verify_ssl && !self.settings.allow_insecure_tls {
            return Err(DownloadError::InvalidRequest(
                "verify_ssl=false is not allowed by this server".into(),
            ));
        }
        let destination = self
            .paths
            .confine(&request.destination_dir)
            .map_err(|e| DownloadError::InvalidRequest(format!("destination_dir: {e}")))?;
        fs::create_dir_all(&destination).map_err(|e| {
            DownloadError::InvalidRequest(format!(
                "destination_dir: cannot create '{}': {e}",
                destination.display()
            ))
        })?;
        if let Some(journal) = &self.journal {
            journal.remember_dir(&destination);
        }
        let request = Arc::new(request);
        let claimed: Arc<Mutex<HashMap<String, String>>> = Arc::default();
        let total = request.packs.len() as u64;
        let done = Arc::new(std::sync::atomic::AtomicU64::new(0));

        let outcomes: Vec<(usize, PackResult)> =
            futures::stream::iter(request.packs.clone().into_iter().enumerate())
                .map(|(i, source)| {
                    let this = Arc::clone(self);
                    let request = Arc::clone(&request);
                    let destination = destination.clone();
                    let claimed = Arc::clone(&claimed);
                    let done = Arc::clone(&done);
                    let reporter = reporter.clone();
                    async move {
                        let outcome = this
                            .download_with_timeout(
                                &source,
                                &request,
                                &destination,
                                &claimed,
                                &reporter,
                            )
                            .await;
                        let n = done.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
                        let progress = reporter.with_subject(&redact_url(&source));
                        match &outcome {
                            Ok(p) => progress.count(
                                Stage::Place,
                                format!(
                                    "placed {} {} at {}",
                                    p.pack_ref, p.pack_version, p.pack_path
                                ),
                                n,
                                Some(total),
                            ),
                            Err(e) => progress.emit(
                                Stage::Place,
                                crate::progress::Level::Error,
                                format!("failed: {e}"),
                                Some(n),
                                Some(total),
                            ),
                        }
                        (i, outcome)
                    }
                })
                .buffer_unordered(self.settings.concurrency)
                .collect()
                .await;

        let mut outcomes = outcomes;
        outcomes.sort_by_key(|(i, _)| *i);
        let mut report = DownloadReport::default();
        for ((_, outcome), source) in outcomes.into_iter().zip(&request.packs) {
            match outcome {
                Ok(p) => report.downloaded.push(p),
                Err(error) => report.failed.push(FailedPack {
                    source: source.clone(),
                    error,
                }),
            }
        }
        Ok(report)
    }

    /// One pack under its timeout. On timeout the pack's reporter is cancelled, which
    /// stops its network and blocking work, and the work gets a short grace to unwind
    /// (and remove its staging directory).
    async fn download_with_timeout(
        &self,
        source: &str,
        request: &DownloadRequest,
        destination: &Path,
        claimed: &Mutex<HashMap<String, String>>,
        reporter: &Reporter,
    ) -> PackResult {
        let (child, cancel) = reporter.child(&redact_url(source));
        let deadline = Instant::now() + request.timeout;
        let work = self.download_one(source, request, destination, claimed, &child, deadline);
        tokio::pin!(work);
        tokio::select! {
            outcome = &mut work => outcome,
            _ = tokio::time::sleep_until(deadline.into()) => {
                drop(cancel);
                let _ = tokio::time::timeout(CANCEL_GRACE, work).await;
                Err(format!("timed out after {} s", request.timeout.as_secs()))
            }
        }
    }

    async fn download_one(
        &self,
        raw: &str,
        request: &DownloadRequest,
        destination: &Path,
        claimed: &Mutex<HashMap<String, String>>,
        reporter: &Reporter,
        deadline: Instant,
    ) -> PackResult {
        let source =
            PackSource::parse(raw, request.ref_spec.as_deref(), &self.settings.github_host)
                .map_err(|e| e.to_string())?;
        reporter.info(
            Stage::Resolve,
            format!("{}: {} source", redact_url(raw), source.kind()),
        );
        let staging = Staging::create(destination).map_err(|e| {
            format!(
                "cannot create a staging directory in '{}': {e}",
                destination.display()
            )
        })?;

        let (fetched, registry) = match &source {
            PackSource::Registry { pack_ref, selector } => {
                let resolved = self
                    .registry
                    .resolve(
                        pack_ref,
                        selector,
                        request.registry_url.as_deref(),
                        request.verify_ssl,
                    )
                    .await
                    .map_err(|e| e.to_string())?;
                reporter.info(
                    Stage::Resolve,
                    format!(
                        "{pack_ref}@{selector} is {} {} from {}",
                        resolved.entry_ref,
                        resolved.version,
                        redact_url(&resolved.index_url)
                    ),
                );
                if resolved.yanked {
                    reporter.warn(
                        Stage::Resolve,
                        format!("{} {} is yanked", resolved.entry_ref, resolved.version),
                    );
                }
                let fetched = self
                    .fetch_registry_sources(
                        &resolved.install_sources,
                        &staging,
                        request,
                        reporter,
                        deadline,
                    )
                    .await?;
                (fetched, Some(resolved))
            }
            PackSource::Git { url, reference } => (
                self.fetch_git(
                    url,
                    reference.as_deref(),
                    &staging,
                    request,
                    reporter,
                    deadline,
                )
                .await?,
                None,
            ),
            PackSource::Archive { url } => (
                self.fetch_archive(url, None, &staging, request, reporter)
                    .await?,
                None,
            ),
            PackSource::RemoteUnknown { url } => {
                let fetched = if self.http.is_git_remote(url, request.verify_ssl).await {
                    reporter.info(
                        Stage::Resolve,
                        format!("{} is a git repository", redact_url(url)),
                    );
                    self.fetch_git(
                        url,
                        request.ref_spec.as_deref(),
                        &staging,
                        request,
                        reporter,
                        deadline,
                    )
                    .await?
                } else {
                    self.fetch_archive(url, None, &staging, request, reporter)
                        .await?
                };
                (fetched, None)
            }
            PackSource::Local { path } => (self.fetch_local(path, &staging, reporter).await?, None),
        };

        // Identity and checksum.
        reporter.info(Stage::Verify, "reading pack.yaml");
        let pack_root = fetched.pack_root.clone();
        let known_checksum = fetched.checksum_hex.clone();
        let limits = *self.paths.read_limits();
        let (manifest, checksum_hex) = staging
            .blocking(move || {
                let manifest = Manifest::load(&pack_root, &limits).map_err(|e| e.to_string())?;
                let checksum = match known_checksum {
                    Some(c) => c,
                    None => checksum::directory_checksum(&pack_root).map_err(|e| e.to_string())?,
                };
                Ok::<_, String>((manifest, checksum))
            })
            .await??;
        let mut verified = fetched.verified;
        if let Some(resolved) = &registry {
            if manifest.pack_ref != resolved.entry_ref || manifest.version != resolved.version {
                return Err(format!(
                    "the downloaded pack is {} {} but the index entry is {} {}; refusing it",
                    manifest.pack_ref, manifest.version, resolved.entry_ref, resolved.version
                ));
            }
            verified |= fetched.source_type == "git";
        }
        let checksum = checksum::checksum_prefixed(&checksum_hex);
        reporter.info(Stage::Verify, format!("checksum {checksum}"));

        // One destination per ref per request: the first source to claim it wins.
        {
            let mut claimed = claimed.lock().expect("claims lock");
            if let Some(other) = claimed.get(&manifest.pack_ref) {
                return Err(format!(
                    "pack '{}' is also provided by '{other}' in this request",
                    manifest.pack_ref
                ));
            }
            claimed.insert(manifest.pack_ref.clone(), raw.to_string());
        }

        let target = destination.join(&manifest.pack_ref);
        let provenance = Provenance {
            pack_ref: manifest.pack_ref.clone(),
            version: manifest.version.to_string(),
            source: raw.to_string(),
            source_type: fetched.source_type.to_string(),
            url: fetched.url.clone(),
            reference: fetched.reference.clone(),
            git_commit: fetched.git_commit.clone(),
            checksum: checksum.clone(),
            registry_url: registry.as_ref().map(|r| r.index_url.clone()),
            checksum_verified: verified,
            downloaded_at: crate::auth::unix_now() as i64 * 1000,
        };
        let _placing = self.locks.lock(&target).await;
        let force = request.force;
        let pack_root = fetched.pack_root.clone();
        let place_target = target.clone();
        let place_checksum = checksum_hex.clone();
        let place_limits = *self.paths.read_limits();
        let placed = staging
            .blocking(move || {
                place(
                    &pack_root,
                    &place_target,
                    &place_checksum,
                    force,
                    &provenance,
                    &place_limits,
                )
            })
            .await??;
        reporter.info(Stage::Place, placed.describe(&target));

        Ok(DownloadedPack {
            source: raw.to_string(),
            source_type: match (&source, fetched.source_type) {
                (PackSource::Registry { .. }, _) => "registry".to_string(),
                (_, kind) => kind.to_string(),
            },
            pack_path: target.display().to_string(),
            pack_ref: manifest.pack_ref,
            pack_version: manifest.version.to_string(),
            git_commit: fetched.git_commit,
            checksum,
        })
    }

    /// Tries an index entry's sources in order (git first, as listed by the index),
    /// each verified against its checksum; the first that succeeds wins.
    async fn fetch_registry_sources(
        &self,
        sources: &[InstallSource],
        staging: &Staging,
        request: &DownloadRequest,
        reporter: &Reporter,
        deadline: Instant,
    ) -> Result<Fetched, String> {
        let mut errors = Vec::new();
        for (n, source) in sources.iter().enumerate() {
            let slot = staging.sub(&format!("source-{n}"));
            let outcome = match source {
                InstallSource::Git {
                    url,
                    git_ref,
                    checksum,
                } => {
                    match self
                        .fetch_git(url, Some(git_ref), &slot, request, reporter, deadline)
                        .await
                    {
                        Ok(mut fetched) => {
                            let root = fetched.pack_root.clone();
                            let actual = slot
                                .blocking(move || {
                                    checksum::directory_checksum(&root).map_err(|e| e.to_string())
                                })
                                .await
                                .and_then(|r| r);
                            match actual {
                                Ok(actual)
                                    if checksum.to_string()
                                        == checksum::checksum_prefixed(&actual) =>
                                {
                                    reporter.info(
                                        Stage::Verify,
                                        format!(
                                            "directory checksum matches the index ({checksum})"
                                        ),
                                    );
                                    fetched.checksum_hex = Some(actual);
                                    fetched.verified = true;
                                    Ok(fetched)
                                }
                                Ok(actual) => Err(format!(
                                    "checksum mismatch for {url} at {git_ref}: the index says {checksum}, the checkout is sha256:{actual}"
                                )),
                                Err(e) => Err(e),
                            }
                        }
                        Err(e) => Err(e),
                    }
                }
                InstallSource::Archive { url, checksum } => {
                    let expected =
                        Digest::parse(&checksum.to_string()).map_err(|e| e.to_string())?;
                    self.fetch_archive(url, Some(&expected), &slot, request, reporter)
                        .await
                }
            };
            match outcome {
                Ok(fetched) => {
                    // Keep only the winning slot's files until placement.
                    return Ok(fetched);
                }
                Err(e) => {
                    if n + 1 < sources.len() {
                        reporter.warn(
                            Stage::Fetch,
                            format!("{} source failed ({e}); trying the next one", source.kind()),
                        );
                    }
                    errors.push(format!(
                        "{} {}: {e}",
                        source.kind(),
                        redact_url(source.url())
                    ));
                }
            }
            if reporter.is_cancelled() {
                break;
            }
        }
        if errors.is_empty() {
            return Err("the index entry has no install sources".into());
        }
        Err(format!(
            "every install source failed: {}",
            errors.join("; ")
        ))
    }

    async fn fetch_git(
        &self,
        url: &str,
        reference: Option<&str>,
        staging: &Staging,
        request: &DownloadRequest,
        reporter: &Reporter,
        deadline: Instant,
    ) -> Result<Fetched, String> {
        if url.to_ascii_lowercase().starts_with("http://") && !self.settings.allow_http {
            return Err(format!(
                "refusing {url}: only https:// git URLs are allowed (the server's download.allow_http is off)"
            ));
        }
        let tree = staging.path().join("tree");
        let credentials = self.credentials.clone();
        let verify_ssl = request.verify_ssl;
        let timeout = deadline.saturating_duration_since(Instant::now());
        let git_reporter = reporter.clone();
        let (url_owned, reference_owned) = (url.to_string(), reference.map(str::to_string));
        let checkout = staging
            .blocking(move || {
                git::clone_pack(
                    &git::CloneOptions {
                        url: &url_owned,
                        reference: reference_owned.as_deref(),
                        dest: &tree,
                        credentials: &credentials,
                        verify_ssl,
                        timeout,
                    },
                    &git_reporter,
                )
                .map(|checkout| (checkout, tree))
                .map_err(|e| e.to_string())
            })
            .await??;
        let (checkout, tree) = checkout;
        reporter.info(Stage::Extract, format!("checked out {}", checkout.commit));
        let pack_root = staging
            .blocking(move || archive::find_pack_root(&tree).map_err(|e| e.to_string()))
            .await??;
        Ok(Fetched {
            pack_root,
            source_type: "git",
            url: Some(git::redact_url(url)),
            reference: reference.map(str::to_string),
            git_commit: Some(checkout.commit),
            checksum_hex: None,
            verified: false,
        })
    }

    async fn fetch_archive(
        &self,
        url: &str,
        expected: Option<&Digest>,
        staging: &Staging,
        request: &DownloadRequest,
        reporter: &Reporter,
    ) -> Result<Fetched, String> {
        let file = staging.path().join("archive");
        let digests = self
            .http
            .download(url, &file, request.verify_ssl, reporter)
            .await
            .map_err(|e| e.to_string())?;
        let verified = match expected {
            Some(expected) if digests.matches(expected) => {
                reporter.info(
                    Stage::Verify,
                    format!("archive checksum matches the index ({expected})"),
                );
                true
            }
            Some(expected) => {
                return Err(format!(
                    "checksum mismatch for {url}: the index says {expected}, the download is {}",
                    digests
                        .sha256
                        .as_ref()
                        .map_or_else(|| "unknown".to_string(), |d| d.to_string())
                ));
            }
            None => false,
        };
        let opened = archive::open_archive(&file, self.settings.max_archive_bytes)
            .map_err(|e| e.to_string())?;
        let mut fetched = self.extract(opened, &file, staging, reporter).await?;
        fetched.source_type = "archive";
        fetched.url = Some(url.to_string());
        fetched.verified = verified;
        let _ = fs::remove_file(&file);
        Ok(fetched)
    }

    async fn extract(
        &self,
        opened: fs::File,
        archive_file: &Path,
        staging: &Staging,
        reporter: &Reporter,
    ) -> Result<Fetched, String> {
        let tree = staging.path().join("tree");
        fs::create_dir(&tree).map_err(|e| e.to_string())?;
        let limits = self.limits;
        let file = archive_file.to_path_buf();
        let extract_reporter = reporter.clone();
        let permit = match self
            .extract_budget
            .try_admit(&limits)
            .map_err(|e| e.to_string())?
        {
            Some(permit) => permit,
            None => {
                reporter.info(
                    Stage::Extract,
                    format!(
                        "waiting for an extraction slot ({} running)",
                        self.extract_budget.running()
                    ),
                );
                self.extract_budget
                    .admit(&limits)
                    .await
                    .map_err(|e| e.to_string())?
            }
        };
        reporter.info(Stage::Extract, "extracting");
        let (pack_root, checksum_hex) = staging
            .blocking(move || {
                // Released when the extraction stops, even after its caller left.
                let _permit = permit;
                let summary =
                    archive::extract_file(opened, &file, &tree, &limits, &extract_reporter)
                        .map_err(|e| e.to_string())?;
                extract_reporter.count(
                    Stage::Extract,
                    "files extracted",
                    summary.files,
                    Some(summary.files),
                );
                let root = archive::find_pack_root(&tree).map_err(|e| e.to_string())?;
                let checksum = summary.checksum(&tree, &root).map_err(|e| e.to_string())?;
                Ok::<_, String>((root, checksum))
            })
            .await??;
        Ok(Fetched {
            pack_root,
            source_type: "local_archive",
            url: None,
            reference: None,
            git_commit: None,
            checksum_hex: Some(checksum_hex),
            verified: false,
        })
    }

    /// A local directory or archive: absolute, or relative to an allowed root (the
    /// first root under which it exists).
    async fn fetch_local(
        &self,
        raw: &str,
        staging: &Staging,
        reporter: &Reporter,
    ) -> Result<Fetched, String> {
        let path = if Path::new(raw).is_absolute() {
            self.paths.confine(raw).map_err(|e| e.to_string())?
        } else {
            self.paths
                .roots()
                .iter()
                .map(|root| root.join(raw))
                .find(|candidate| candidate.exists())
                .ok_or_else(|| format!("'{raw}' does not exist under any allowed root"))
                .and_then(|candidate| {
                    self.paths
                        .confine(&candidate.display().to_string())
                        .map_err(|e| e.to_string())
                })?
        };
        // Opened once, without following a link or blocking on a FIFO swapped in
        // since `confine`; the extraction reads this descriptor, not the path.
        match archive::open_archive(&path, self.settings.max_archive_bytes) {
            Ok(file) => {
                self.paths
                    .check_opened(&file, &path)
                    .map_err(|e| e.to_string())?;
                let mut fetched = self.extract(file, &path, staging, reporter).await?;
                fetched.url = Some(path.display().to_string());
                return Ok(fetched);
            }
            Err(archive::ArchiveError::NotRegularFile {
                kind: "directory", ..
            }) => {}
            Err(archive::ArchiveError::NotRegularFile { path, kind }) => {
                return Err(format!(
                    "'{}' is a {kind}, neither a directory nor an archive; it was not read",
                    path.display()
                ));
            }
            Err(e) => return Err(e.to_string()),
        }
        let tree = staging.path().join("tree");
        let copy_reporter = reporter.clone();
        let src = path.clone();
        let paths = self.paths.clone();
        let copy_limits = local_copy_limits(&self.settings);
        let pack_root = staging
            .blocking(move || {
                let src = paths.open_confined(&src).map_err(|e| e.to_string())?;
                fetch::copy_tree(&src, &tree, &copy_limits, &copy_reporter)
                    .map_err(|e| e.to_string())?;
                archive::find_pack_root(&tree).map_err(|e| e.to_string())
            })
            .await??;
        Ok(Fetched {
            pack_root,
            source_type: "local_directory",
            url: Some(path.display().to_string()),
            reference: None,
            git_commit: None,
            checksum_hex: None,
            verified: false,
        })
    }
}

/// A local directory is downloaded under the same bounds as an archive's extraction
/// (what lands in the destination is the same thing either way); how deep it may
/// nest is the pack-wide `pack_files.max_depth`.
fn local_copy_limits(settings: &DownloadSection) -> TreeLimits {
    TreeLimits {
        total_bytes: TreeLimit {
            value: settings.max_extracted_bytes,
            setting: "download.max_extracted_bytes",
        },
        entries: TreeLimit {
            value: settings.max_entries,
            setting: "download.max_entries",
        },
        file_bytes: TreeLimit {
            value: settings.max_entry_bytes,
            setting: "download.max_entry_bytes",
        },
        depth: crate::packfs::tree_limits().depth,
    }
}

/// What placement did.
enum Placed {
    New,
    Unchanged,
    Replaced,
}

impl Placed {
    fn describe(&self, target: &Path) -> String {
        match self {
            Placed::New => format!("placed at {}", target.display()),
            Placed::Unchanged => format!(
                "{} already holds this exact pack; kept it",
                target.display()
            ),
            Placed::Replaced => format!("replaced the different pack at {}", target.display()),
        }
    }
}

/// Moves `pack_root` to `target`. An existing `target` with the same checksum is kept
/// (the download is discarded); a different one is an error unless `force`, in which
/// case it is swapped out and removed only after the new one is in place.
fn place(
    pack_root: &Path,
    target: &Path,
    checksum_hex: &str,
    force: bool,
    provenance: &Provenance,
    limits: &PackReadLimits,
) -> Result<Placed, String> {
    let describe =
        |e: std::io::Error| format!("cannot place the pack at '{}': {e}", target.display());
    let outcome = match fs::symlink_metadata(target) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            fs::rename(pack_root, target).map_err(describe)?;
            Placed::New
        }
        Err(e) => return Err(describe(e)),
        Ok(meta) if meta.file_type().is_symlink() || !meta.is_dir() => {
            return Err(format!(
                "'{}' exists and is not a directory; refusing to replace it",
                target.display()
            ));
        }
        Ok(_) => {
            let existing = checksum::directory_checksum(target).ok();
            if existing.as_deref() == Some(checksum_hex) {
                Placed::Unchanged
            } else if !force {
                let version = Manifest::load(target, limits)
                    .map(|m| format!("version {}", m.version))
                    .unwrap_or_else(|_| "unreadable pack".into());
                return Err(format!(
                    "'{}' already exists with different content ({version}); set force to replace it",
                    target.display()
                ));
            } else {
                let backup = journal::work_path(
                    target.parent().unwrap_or(Path::new("/")),
                    WorkKind::Replaced,
                    Some(&provenance.pack_ref),
                );
                fs::rename(target, &backup).map_err(describe)?;
                crate::fault::pause("download: previous moved aside");
                if let Err(e) = fs::rename(pack_root, target) {
                    // Put the old pack back: a failed replace must leave what was there.
                    let _ = fs::rename(&backup, target);
                    return Err(describe(e));
                }
                let _ = fs::remove_dir_all(&backup);
                Placed::Replaced
            }
        }
    };
    provenance::write(target, provenance)
        .map_err(|e| format!("pack placed, but its source metadata could not be written: {e}"))?;
    Ok(outcome)
}

/// A staging directory inside the destination, removed when the last holder drops
/// it — including blocking tasks still running after their caller gave up.
#[derive(Clone)]
struct Staging(Arc<StagingDir>);

struct StagingDir {
    path: PathBuf,
    /// Only the root staging directory removes itself.
    owned: bool,
    _parent: Option<Staging>,
}

impl Drop for StagingDir {
    fn drop(&mut self) {
        if self.owned {
            let _ = fs::remove_dir_all(&self.path);
        }
    }
}

impl Staging {
    fn create(destination: &Path) -> std::io::Result<Staging> {
        let path = journal::work_path(destination, WorkKind::DownloadStaging, None);
        fs::create_dir(&path)?;
        Ok(Staging(Arc::new(StagingDir {
            path,
            owned: true,
            _parent: None,
        })))
    }

    /// A subdirectory that keeps this staging directory alive.
    fn sub(&self, name: &str) -> Staging {
        let path = self.0.path.join(name);
        let _ = fs::create_dir_all(&path);
        Staging(Arc::new(StagingDir {
            path,
            owned: false,
            _parent: Some(self.clone()),
        }))
    }

    fn path(&self) -> &Path {
        &self.0.path
    }

    /// Runs blocking work that keeps the staging directory alive until it finishes.
    async fn blocking<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, String> {
        let hold = self.clone();
        tokio::task::spawn_blocking(move || {
            let result = work();
            drop(hold);
            result
        })
        .await
        .map_err(|e| format!("internal error: {e}"))
    }
}
