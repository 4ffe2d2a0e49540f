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
use tracing::Instrument;

use crate::{
    archive::{self, ArchiveError, BudgetError, Limits},
    checksum::{self, ChecksumError, Digest},
    config::{DownloadSection, RegistrySection},
    fetch::{self, FetchError, HttpFetcher},
    git::{self, GitCredentials, GitError},
    journal::{self, Journal, WorkKind},
    locks::PackLocks,
    manifest::{Manifest, ManifestError, dir_name},
    packfs::{PackDir, PackReadLimits, TreeLimit, TreeLimits},
    paths::{PathError, PathPolicy},
    progress::{Reporter, Stage},
    provenance::{self, Provenance},
    registry::{InstallSource, RegistryClient, RegistryError},
    source::{PackSource, SourceError, SourceKind, redact_url},
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

/// A pack of the request that was not downloaded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailedDownload {
    pub source: String,
    /// The [`PackDownloadError`], as the caller is told it.
    pub error: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DownloadReport {
    pub downloaded: Vec<DownloadedPack>,
    pub failed: Vec<FailedDownload>,
}

/// Why a whole Download call fails (a failed pack is not one: see [`PackDownloadError`]).
#[derive(Debug, thiserror::Error)]
pub enum DownloadError {
    #[error("verify_ssl=false is not allowed by this server")]
    InsecureTlsRefused,
    #[error("destination_dir: {0}")]
    Destination(#[source] PathError),
    #[error("destination_dir: cannot create '{}': {source}", path.display())]
    CreateDestination {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot set up downloads: registry configuration: {0}")]
    RegistrySetup(#[source] RegistryError),
    #[error("cannot set up downloads: {0}")]
    HttpSetup(#[source] FetchError),
    #[error("cannot set up downloads: {0}")]
    ExtractBudgetSetup(#[source] BudgetError),
}

impl Failure for DownloadError {
    fn kind(&self) -> FailureKind {
        match self {
            DownloadError::InsecureTlsRefused
            | DownloadError::Destination(_)
            | DownloadError::CreateDestination { .. } => FailureKind::InvalidRequest,
            DownloadError::RegistrySetup(_)
            | DownloadError::HttpSetup(_)
            | DownloadError::ExtractBudgetSetup(_) => FailureKind::Internal,
        }
    }
}

/// Why one pack of a request was not downloaded. Its text is the pack's `error` in
/// the report.
#[derive(Debug, thiserror::Error)]
pub enum PackDownloadError {
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error("cannot create a staging directory in '{}': {source}", destination.display())]
    Staging {
        destination: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error("the index entry has no install sources")]
    NoInstallSources,
    #[error("every install source failed: {}", joined(.failures))]
    EveryInstallSourceFailed { failures: Vec<InstallSourceFailure> },
    #[error(
        "refusing {url}: only https:// git URLs are allowed (the server's download.allow_http is off)"
    )]
    PlainHttpGit { url: String },
    #[error(transparent)]
    Git(#[from] GitError),
    #[error(transparent)]
    Fetch(#[from] FetchError),
    #[error(
        "checksum mismatch for {url}: the index says {expected}, the download is {}",
        actual.as_ref().map_or_else(|| "unknown".to_string(), |d| d.to_string())
    )]
    ArchiveChecksumMismatch {
        url: String,
        expected: Box<Digest>,
        actual: Option<Box<Digest>>,
    },
    #[error(
        "checksum mismatch for {url} at {git_ref}: the index says {expected}, the checkout is sha256:{actual}"
    )]
    CheckoutChecksumMismatch {
        url: String,
        git_ref: String,
        expected: Box<Digest>,
        /// Bare hex of the attune-pack-file-v1 checksum.
        actual: String,
    },
    #[error(transparent)]
    Archive(#[from] ArchiveError),
    #[error(transparent)]
    ExtractBudget(#[from] BudgetError),
    /// The directory an archive is extracted into could not be created.
    #[error("{0}")]
    CreateTree(#[source] std::io::Error),
    #[error(transparent)]
    Checksum(#[from] ChecksumError),
    #[error(transparent)]
    Path(#[from] PathError),
    #[error(
        "'{raw}' is not under any allowed root ({roots}); paths are read on the server; \
         set allowed_roots to add one"
    )]
    LocalNotFound { raw: String, roots: String },
    #[error(
        "'{}' is a {kind}, neither a directory nor an archive; it was not read",
        path.display()
    )]
    LocalNotAPack { path: PathBuf, kind: &'static str },
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    #[error("the downloaded pack is {downloaded} but the index entry is {indexed}; refusing it")]
    NotTheIndexedPack {
        downloaded: Box<PackIdentity>,
        indexed: Box<PackIdentity>,
    },
    #[error("pack '{pack_ref}' is also provided by '{other}' in this request")]
    ProvidedTwice { pack_ref: String, other: String },
    #[error(transparent)]
    Place(#[from] PlaceError),
    #[error("timed out after {secs} s")]
    TimedOut { secs: u64 },
    /// Blocking work panicked or was cancelled by the runtime.
    #[error("internal error: {0}")]
    Blocking(#[from] tokio::task::JoinError),
}

/// A pack's ref and version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackIdentity {
    pub pack_ref: String,
    pub version: semver::Version,
}

impl std::fmt::Display for PackIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.pack_ref, self.version)
    }
}

/// One install source of an index entry, and why it failed.
#[derive(Debug, thiserror::Error)]
#[error("{kind} {url}: {error}")]
pub struct InstallSourceFailure {
    /// `git` or `archive`.
    pub kind: &'static str,
    /// Redacted.
    pub url: String,
    #[source]
    pub error: PackDownloadError,
}

fn joined(failures: &[InstallSourceFailure]) -> String {
    failures
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
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

/// A pack tree in staging, before verification and placement.
struct FetchedPack {
    pack_root: PathBuf,
    kind: SourceKind,
    url: Option<String>,
    reference: Option<String>,
    git_commit: Option<String>,
    /// Computed while extracting, when the archive allowed it.
    checksum_hex: Option<String>,
    /// A registry checksum that was checked (archive bytes, before extraction).
    verified: bool,
    /// The checksum the index promised, when it gave one (and it matched).
    promised: Option<String>,
    /// What names the pack when its pack.yaml has no `ref` (see
    /// `manifest::dir_name`).
    dir_name: Option<String>,
}

type PackResult = Result<DownloadedPack, PackDownloadError>;

impl Downloader {
    pub fn new(
        settings: &DownloadSection,
        registry: &RegistrySection,
        paths: PathPolicy,
        locks: PackLocks,
    ) -> Result<Self, DownloadError> {
        let registry =
            RegistryClient::new(registry.client_config()).map_err(DownloadError::RegistrySetup)?;
        let http = HttpFetcher::new(settings.allow_http, settings.max_archive_bytes)
            .map_err(DownloadError::HttpSetup)?;
        let extract_budget = archive::ExtractBudget::new(
            settings.extract_concurrency,
            settings.extract_memory_bytes,
        );
        let limits = settings.extract_limits();
        extract_budget
            .validate(&limits)
            .map_err(DownloadError::ExtractBudgetSetup)?;
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
            return Err(DownloadError::InsecureTlsRefused);
        }
        let destination = self
            .paths
            .confine(&request.destination_dir)
            .map_err(DownloadError::Destination)?;
        fs::create_dir_all(&destination).map_err(|source| DownloadError::CreateDestination {
            path: destination.clone(),
            source,
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
                Err(error) => report.failed.push(FailedDownload {
                    source: source.clone(),
                    error: error.to_string(),
                }),
            }
        }
        Ok(report)
    }

    /// One pack under its timeout. On timeout the pack's reporter is cancelled, which
    /// stops its network and blocking work, and the work gets a short grace to unwind
    /// (and remove its staging directory).
    #[tracing::instrument(
        name = "download_pack",
        level = "debug",
        skip_all,
        fields(source = %redact_url(source), reference = request.ref_spec.as_deref())
    )]
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
        let outcome = tokio::select! {
            outcome = &mut work => outcome,
            _ = tokio::time::sleep_until(deadline.into()) => {
                drop(cancel);
                let _ = tokio::time::timeout(CANCEL_GRACE, work).await;
                Err(PackDownloadError::TimedOut { secs: request.timeout.as_secs() })
            }
        };
        if let Err(e) = &outcome {
            tracing::debug!(error = %e, "pack not downloaded");
        }
        outcome
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
            PackSource::parse(raw, request.ref_spec.as_deref(), &self.settings.github_host)?;
        tracing::debug!(kind = %source.kind(), "source parsed");
        // A local path or an unrecognised URL only says what it is once opened: the
        // kind is named after the fetch, as the result names it, never guessed here.
        let written = match &source {
            PackSource::Local { .. } => "local path (a directory or an archive)".to_string(),
            PackSource::RemoteUnknown { .. } => {
                "remote URL (an archive or a git repository)".to_string()
            }
            _ => format!("{} source", source.kind()),
        };
        reporter.info(Stage::Resolve, format!("{}: {written}", redact_url(raw)));
        let staging =
            Staging::create(destination).map_err(|source| PackDownloadError::Staging {
                destination: destination.to_path_buf(),
                source,
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
                    .await?;
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
                        &resolved.index_url,
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
        let source_type = match &source {
            PackSource::Registry { .. } => SourceKind::Registry,
            _ => fetched.kind.clone(),
        };
        reporter.info(Stage::Fetch, format!("fetched: {source_type} source"));

        // Identity and checksum.
        reporter.info(Stage::Verify, "reading pack.yaml");
        let pack_root = fetched.pack_root.clone();
        let known_checksum = fetched.checksum_hex.clone();
        let limits = *self.paths.read_limits();
        let named = fetched.dir_name.clone();
        let (manifest, checksum_hex) = staging
            .blocking(move || {
                let manifest = Manifest::load(&pack_root, named.as_deref(), &limits)?;
                let checksum = match known_checksum {
                    Some(c) => c,
                    None => checksum::directory_checksum(&pack_root)?,
                };
                tracing::debug!(pack_ref = %manifest.pack_ref, version = %manifest.version, "pack.yaml read");
                Ok::<_, PackDownloadError>((manifest, checksum))
            })
            .instrument(tracing::debug_span!("verify"))
            .await??;
        let verified = fetched.verified;
        if let Some(resolved) = &registry {
            if manifest.pack_ref != resolved.entry_ref || manifest.version != resolved.version {
                return Err(PackDownloadError::NotTheIndexedPack {
                    downloaded: Box::new(PackIdentity {
                        pack_ref: manifest.pack_ref,
                        version: manifest.version,
                    }),
                    indexed: Box::new(PackIdentity {
                        pack_ref: resolved.entry_ref.clone(),
                        version: resolved.version.clone(),
                    }),
                });
            }
            if !verified {
                reporter.warn(
                    Stage::Verify,
                    format!(
                        "{} {} is not verified: registry {} gives no checksum for it \
                         (trust: {}); installed from {} at {}",
                        resolved.entry_ref,
                        resolved.version,
                        redact_url(&resolved.index_url),
                        resolved.trust,
                        fetched.url.as_deref().unwrap_or("?"),
                        fetched.git_commit.as_deref().unwrap_or("?"),
                    ),
                );
            }
        }
        let checksum = checksum::checksum_prefixed(&checksum_hex);
        reporter.info(Stage::Verify, format!("checksum {checksum}"));

        // One destination per ref per request: the first source to claim it wins.
        {
            let mut claimed = claimed.lock().expect("claims lock");
            if let Some(other) = claimed.get(&manifest.pack_ref) {
                return Err(PackDownloadError::ProvidedTwice {
                    pack_ref: manifest.pack_ref.clone(),
                    other: other.clone(),
                });
            }
            claimed.insert(manifest.pack_ref.clone(), raw.to_string());
        }

        let target = destination.join(&manifest.pack_ref);
        let provenance = Provenance {
            pack_ref: manifest.pack_ref.clone(),
            version: manifest.version.to_string(),
            source: raw.to_string(),
            source_type: fetched.kind.as_str().to_string(),
            url: fetched.url.clone(),
            reference: fetched.reference.clone(),
            git_commit: fetched.git_commit.clone(),
            checksum: checksum.clone(),
            registry_url: registry.as_ref().map(|r| r.index_url.clone()),
            registry_trust: registry.as_ref().map(|r| r.trust.as_str().to_string()),
            checksum_verified: verified,
            expected_checksum: fetched.promised.clone(),
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
            .instrument(tracing::debug_span!("place", target = %target.display()))
            .await??;
        tracing::debug!(outcome = ?placed, "placed");
        reporter.info(Stage::Place, placed.describe(&target));

        Ok(DownloadedPack {
            source: raw.to_string(),
            source_type: source_type.to_string(),
            pack_path: target.display().to_string(),
            pack_ref: manifest.pack_ref,
            pack_version: manifest.version.to_string(),
            git_commit: fetched.git_commit,
            checksum,
        })
    }

    /// Tries an index entry's sources in order (git first, as listed by the index),
    /// each verified against its checksum when the index gives one (a git source of an
    /// index without checksums is taken as checked out, unverified); the first that
    /// succeeds wins.
    #[tracing::instrument(name = "fetch_install_sources", level = "debug", skip_all, fields(sources = sources.len()))]
    async fn fetch_registry_sources(
        &self,
        sources: &[InstallSource],
        index_url: &str,
        staging: &Staging,
        request: &DownloadRequest,
        reporter: &Reporter,
        deadline: Instant,
    ) -> Result<FetchedPack, PackDownloadError> {
        let mut failures = Vec::new();
        for (n, source) in sources.iter().enumerate() {
            let slot = staging.sub(&format!("source-{n}"));
            let outcome = match source {
                InstallSource::Git {
                    url,
                    git_ref,
                    checksum,
                } => {
                    match (
                        self.fetch_git(url, Some(git_ref), &slot, request, reporter, deadline)
                            .await,
                        checksum,
                    ) {
                        // The index gives no checksum (an unverified registry): the
                        // checkout is taken as is and recorded as unverified.
                        (Ok(fetched), None) => Ok(fetched),
                        (Ok(mut fetched), Some(expected)) => {
                            let root = fetched.pack_root.clone();
                            let actual = match slot
                                .blocking(move || checksum::directory_checksum(&root))
                                .await
                            {
                                Ok(computed) => computed.map_err(PackDownloadError::from),
                                Err(e) => Err(e.into()),
                            };
                            match actual {
                                Ok(actual)
                                    if expected.to_string()
                                        == checksum::checksum_prefixed(&actual) =>
                                {
                                    reporter.info(
                                        Stage::Verify,
                                        format!(
                                            "directory checksum matches the index ({expected})"
                                        ),
                                    );
                                    fetched.checksum_hex = Some(actual);
                                    fetched.verified = true;
                                    fetched.promised = Some(expected.to_string());
                                    Ok(fetched)
                                }
                                Ok(actual) => Err(PackDownloadError::CheckoutChecksumMismatch {
                                    url: url.clone(),
                                    git_ref: git_ref.clone(),
                                    expected: Box::new(*expected),
                                    actual,
                                }),
                                Err(e) => Err(e),
                            }
                        }
                        (Err(e), _) => Err(e),
                    }
                }
                InstallSource::Archive { url, checksum } => {
                    self.fetch_archive(url, Some((checksum, index_url)), &slot, request, reporter)
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
                    failures.push(InstallSourceFailure {
                        kind: source.kind(),
                        url: redact_url(source.url()),
                        error: e,
                    });
                }
            }
            if reporter.is_cancelled() {
                break;
            }
        }
        if failures.is_empty() {
            return Err(PackDownloadError::NoInstallSources);
        }
        Err(PackDownloadError::EveryInstallSourceFailed { failures })
    }

    /// (The clone's own span names the URL and the reference.)
    #[tracing::instrument(level = "debug", skip_all)]
    async fn fetch_git(
        &self,
        url: &str,
        reference: Option<&str>,
        staging: &Staging,
        request: &DownloadRequest,
        reporter: &Reporter,
        deadline: Instant,
    ) -> Result<FetchedPack, PackDownloadError> {
        if url.to_ascii_lowercase().starts_with("http://") && !self.settings.allow_http {
            return Err(PackDownloadError::PlainHttpGit {
                url: url.to_string(),
            });
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
            })
            .await??;
        let (checkout, tree) = checkout;
        reporter.info(Stage::Extract, format!("checked out {}", checkout.commit));
        // The checkout may hold links: a pack is stored without them, each link
        // inside the pack copied as what it points to (the others refuse the pack).
        let resolved = staging.path().join("resolved");
        let top = tree.clone();
        let (pack_root, found_root) = staging
            .blocking(move || {
                let root = archive::find_pack_root(&tree)?;
                let opened = PackDir::open(&root).map_err(FetchError::Read)?;
                let limits = crate::packfs::tree_limits();
                if !fetch::has_links(&opened, &limits)? {
                    return Ok::<_, PackDownloadError>((root.clone(), root));
                }
                fetch::copy_tree(&opened, &resolved, &limits, &Reporter::noop())?;
                Ok((resolved, root))
            })
            .await??;
        Ok(FetchedPack {
            dir_name: dir_name::inside(&top, &found_root)
                .or_else(|| dir_name::of_git_repository(url)),
            pack_root,
            kind: SourceKind::Git,
            url: Some(git::redact_url(url)),
            reference: reference.map(str::to_string),
            git_commit: Some(checkout.commit),
            checksum_hex: None,
            verified: false,
            promised: None,
        })
    }

    #[tracing::instrument(level = "debug", skip_all, fields(url = %redact_url(url)))]
    /// `indexed`: the checksum and the URL of the index that names this archive.
    async fn fetch_archive(
        &self,
        url: &str,
        indexed: Option<(&Digest, &str)>,
        staging: &Staging,
        request: &DownloadRequest,
        reporter: &Reporter,
    ) -> Result<FetchedPack, PackDownloadError> {
        let file = staging.path().join("archive");
        let expected = indexed.map(|(checksum, _)| checksum);
        // Only an index read from a local file names file:// archives, each inside
        // that index's directory (checked when the index was parsed, and again by
        // opening it beneath that directory).
        let digests = match url::Url::parse(url)
            .ok()
            .filter(|u| u.scheme() == "file")
            .and_then(|u| u.to_file_path().ok())
        {
            Some(local) => {
                let (index_dir, rel) = beside_file_index(url, &local, indexed)?;
                let (dest, limit) = (file.clone(), self.settings.max_archive_bytes);
                staging
                    .blocking(move || fetch::copy_archive_file(&index_dir, &rel, &dest, limit))
                    .await??
            }
            None => {
                self.http
                    .download(url, &file, request.verify_ssl, reporter)
                    .await?
            }
        };
        let verified = match expected {
            Some(expected) if digests.matches(expected) => {
                reporter.info(
                    Stage::Verify,
                    format!("archive checksum matches the index ({expected})"),
                );
                true
            }
            Some(expected) => {
                return Err(PackDownloadError::ArchiveChecksumMismatch {
                    url: url.to_string(),
                    expected: Box::new(*expected),
                    actual: digests.sha256.map(Box::new),
                });
            }
            None => false,
        };
        let opened = archive::open_archive(&file, self.settings.max_archive_bytes)?;
        let mut fetched = self.extract(opened, &file, staging, reporter).await?;
        fetched.kind = SourceKind::Archive;
        fetched.url = Some(url.to_string());
        fetched.verified = verified;
        fetched.promised = expected.filter(|_| verified).map(ToString::to_string);
        let _ = fs::remove_file(&file);
        Ok(fetched)
    }

    #[tracing::instrument(level = "debug", skip_all, fields(archive = %archive_file.display()))]
    async fn extract(
        &self,
        opened: fs::File,
        archive_file: &Path,
        staging: &Staging,
        reporter: &Reporter,
    ) -> Result<FetchedPack, PackDownloadError> {
        let tree = staging.path().join("tree");
        fs::create_dir(&tree).map_err(PackDownloadError::CreateTree)?;
        let limits = self.limits;
        let file = archive_file.to_path_buf();
        let extract_reporter = reporter.clone();
        let permit = match self.extract_budget.try_admit(&limits)? {
            Some(permit) => permit,
            None => {
                tracing::debug!("waiting for an extraction slot");
                reporter.info(
                    Stage::Extract,
                    format!(
                        "waiting for an extraction slot ({} running)",
                        self.extract_budget.running()
                    ),
                );
                self.extract_budget.admit(&limits).await?
            }
        };
        reporter.info(Stage::Extract, "extracting");
        let top = tree.clone();
        let (pack_root, checksum_hex) = staging
            .blocking(move || {
                // Released when the extraction stops, even after its caller left.
                let _permit = permit;
                let mut summary =
                    archive::extract_file(opened, &file, &tree, &limits, &extract_reporter)?;
                tracing::debug!(files = summary.files, "extracted");
                extract_reporter.count(
                    Stage::Extract,
                    "files extracted",
                    summary.files,
                    Some(summary.files),
                );
                // Links in the archive are written as copies of what they point to.
                let root = summary.pack_root(&tree)?;
                let checksum = summary.checksum(&tree, &root)?;
                Ok::<_, PackDownloadError>((root, checksum))
            })
            .await??;
        Ok(FetchedPack {
            dir_name: dir_name::inside(&top, &pack_root),
            pack_root,
            kind: SourceKind::LocalArchive,
            url: None,
            reference: None,
            git_commit: None,
            checksum_hex: Some(checksum_hex),
            verified: false,
            promised: None,
        })
    }

    /// A local directory or archive: absolute, or relative to an allowed root (the
    /// first root under which it exists).
    #[tracing::instrument(level = "debug", skip_all, fields(path = raw))]
    async fn fetch_local(
        &self,
        raw: &str,
        staging: &Staging,
        reporter: &Reporter,
    ) -> Result<FetchedPack, PackDownloadError> {
        let path = if Path::new(raw).is_absolute() {
            self.paths.confine(raw)?
        } else {
            let candidate = self
                .paths
                .roots()
                .iter()
                .map(|root| root.join(raw))
                .find(|candidate| candidate.exists())
                .ok_or_else(|| PackDownloadError::LocalNotFound {
                    raw: raw.to_string(),
                    roots: self.paths.roots_text(),
                })?;
            self.paths.confine(&candidate.display().to_string())?
        };
        // Opened once, without following a link or blocking on a FIFO swapped in
        // since `confine`; the extraction reads this descriptor, not the path.
        match archive::open_archive(&path, self.settings.max_archive_bytes) {
            Ok(file) => {
                self.paths.check_opened(&file, &path)?;
                let mut fetched = self.extract(file, &path, staging, reporter).await?;
                fetched.url = Some(path.display().to_string());
                return Ok(fetched);
            }
            Err(ArchiveError::NotRegularFile {
                kind: "directory", ..
            }) => {}
            Err(ArchiveError::NotRegularFile { path, kind }) => {
                return Err(PackDownloadError::LocalNotAPack { path, kind });
            }
            Err(e) => return Err(e.into()),
        }
        let tree = staging.path().join("tree");
        let copy_reporter = reporter.clone();
        let src = path.clone();
        let paths = self.paths.clone();
        let copy_limits = local_copy_limits(&self.settings);
        let top = tree.clone();
        let pack_root = staging
            .blocking(move || {
                let src = paths.open_confined(&src)?;
                fetch::copy_tree(&src, &tree, &copy_limits, &copy_reporter)?;
                Ok::<_, PackDownloadError>(archive::find_pack_root(&tree)?)
            })
            .await??;
        Ok(FetchedPack {
            dir_name: dir_name::inside(&top, &pack_root)
                .or_else(|| dir_name::of_path(&path).map(str::to_string)),
            pack_root,
            kind: SourceKind::LocalDirectory,
            url: Some(path.display().to_string()),
            reference: None,
            git_commit: None,
            checksum_hex: None,
            verified: false,
            promised: None,
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
#[derive(Debug)]
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

/// Why a fetched pack could not be placed at its destination.
#[derive(Debug, thiserror::Error)]
pub enum PlaceError {
    #[error("cannot place the pack at '{}': {source}", target.display())]
    Io {
        target: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("'{}' exists and is not a directory; refusing to replace it", target.display())]
    NotADirectory { target: PathBuf },
    #[error(
        "'{}' already exists with different content ({}); set force to replace it",
        target.display(),
        existing_version.as_ref().map_or_else(|| "unreadable pack".to_string(), |v| format!("version {v}"))
    )]
    Differs {
        target: PathBuf,
        /// `None`: its pack.yaml could not be read.
        existing_version: Option<semver::Version>,
    },
    #[error("pack placed, but its source metadata could not be written: {0}")]
    Provenance(#[source] std::io::Error),
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
) -> Result<Placed, PlaceError> {
    let describe = |source: std::io::Error| PlaceError::Io {
        target: target.to_path_buf(),
        source,
    };
    let outcome = match fs::symlink_metadata(target) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            fs::rename(pack_root, target).map_err(describe)?;
            Placed::New
        }
        Err(e) => return Err(describe(e)),
        Ok(meta) if meta.file_type().is_symlink() || !meta.is_dir() => {
            return Err(PlaceError::NotADirectory {
                target: target.to_path_buf(),
            });
        }
        Ok(_) => {
            let existing = checksum::directory_checksum(target).ok();
            if existing.as_deref() == Some(checksum_hex) {
                Placed::Unchanged
            } else if !force {
                return Err(PlaceError::Differs {
                    target: target.to_path_buf(),
                    existing_version: Manifest::load(target, dir_name::of_path(target), limits)
                        .ok()
                        .map(|m| m.version),
                });
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
    provenance::write(target, provenance).map_err(PlaceError::Provenance)?;
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

    /// Runs blocking work that keeps the staging directory alive until it finishes,
    /// inside the caller's span (so its log lines say which pack they are about).
    async fn blocking<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, tokio::task::JoinError> {
        let hold = self.clone();
        let span = tracing::Span::current();
        tokio::task::spawn_blocking(move || {
            let result = span.in_scope(work);
            drop(hold);
            result
        })
        .await
    }
}

/// The directory of the `file://` index that names the local archive `local`, and the
/// archive's path below it; anything else is refused (no request-supplied archive
/// URL is a `file://` one: local paths are sources of their own, confined to the
/// allowed roots).
fn beside_file_index(
    url: &str,
    local: &Path,
    indexed: Option<(&Digest, &str)>,
) -> Result<(PathBuf, PathBuf), fetch::FetchError> {
    let refused = || fetch::FetchError::Policy {
        url: url.to_string(),
        reason: "a file:// archive is read only from beside the file:// index that names it".into(),
    };
    let index_dir = indexed
        .and_then(|(_, index)| url::Url::parse(index).ok())
        .filter(|index| index.scheme() == "file")
        .and_then(|index| index.join(".").ok())
        .and_then(|dir| dir.to_file_path().ok())
        .ok_or_else(refused)?;
    let rel = local.strip_prefix(&index_dir).map_err(|_| refused())?;
    if rel
        .components()
        .any(|c| !matches!(c, std::path::Component::Normal(_)))
    {
        return Err(refused());
    }
    Ok((index_dir.clone(), rel.to_path_buf()))
}
