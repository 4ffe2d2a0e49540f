//! Index fetching, caching and fail-closed pack resolution.
//!
//! One [`RegistryClient`] is built at server start and shared (it is an `Arc`
//! inside), so its index cache serves every request.
//!
//! Resolution is **fail closed**: indices are consulted in priority order (a
//! request's extra index first) and the first index that lists a ref owns it.
//! If that index has no matching version, or a higher-priority index cannot be
//! fetched or parsed, resolution stops with an error instead of consulting
//! lower-priority indices (which would allow dependency confusion).
//!
//! Trust is per configured index: an index whose format carries no checksums (the
//! StackStorm Exchange's) is only used from an index configured with
//! [`RegistryTrust::Unverified`]; anywhere else it is refused like an invalid index.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::sync::{Arc, Mutex as StdMutex};
use std::time::Duration;

use reqwest::StatusCode;
use reqwest::header::{
    ACCEPT, ETAG, HeaderMap, HeaderName, HeaderValue, IF_MODIFIED_SINCE, IF_NONE_MATCH,
    LAST_MODIFIED, LOCATION,
};
use semver::Version;
use tokio::io::AsyncReadExt;
use tokio::sync::Mutex as AsyncMutex;
use tokio::time::Instant;
use url::Url;

use super::index::{IndexError, IndexFormat, InstallSource, PackDependencies, PackIndex};
use super::version::{SelectorError, VersionSelector};
use crate::{
    failure::{Failure, FailureKind},
    manifest::is_valid_pack_ref,
    source::redact_url,
};

/// Sent with every index request.
pub const USER_AGENT: &str = concat!("attune-packs/", env!("CARGO_PKG_VERSION"));

/// Request-supplied (extra) index URLs kept in the cache at most, beyond the
/// configured ones, so that callers cannot grow the cache without bound.
const MAX_EXTRA_CACHED: usize = 32;

/// Header names an index configuration may not set (case-insensitive): hop-by-hop,
/// proxy, forwarding and framing headers, plus the conditional-request headers
/// this client manages itself.
const FORBIDDEN_HEADERS: &[&str] = &[
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "te",
    "trailer",
    "upgrade",
    "forwarded",
    "via",
    "x-forwarded",
    "x-real-ip",
    "expect",
    "if-none-match",
    "if-modified-since",
    "if-match",
    "if-unmodified-since",
    "if-range",
];
const FORBIDDEN_HEADER_PREFIXES: &[&str] = &["proxy-", "x-forwarded-"];

/// What a configured index is trusted with.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RegistryTrust {
    /// Every install source must carry a checksum, and it is verified (Attune's
    /// format). An index in a format without checksums is refused.
    #[default]
    Verified,
    /// The index may be in a format without checksums (the StackStorm Exchange):
    /// its packs are installed from their git tags unverified, and recorded so.
    /// Checksums an index does carry are still verified.
    Unverified,
}

impl RegistryTrust {
    /// `"verified"` or `"unverified"`, as configured and as recorded in provenance.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Verified => "verified",
            Self::Unverified => "unverified",
        }
    }
}

impl fmt::Display for RegistryTrust {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One configured index.
#[derive(Clone)]
pub struct IndexConfig {
    pub url: String,
    pub name: Option<String>,
    /// Lower is consulted first. Ties keep configuration order.
    pub priority: u32,
    pub enabled: bool,
    /// Sent only to this index (e.g. `Authorization`). Values are never logged
    /// nor shown by `Debug`.
    pub headers: BTreeMap<String, String>,
    /// Whether an index format without checksums is accepted from this index.
    pub trust: RegistryTrust,
}

impl IndexConfig {
    /// An enabled index with priority 100 and no headers.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            name: None,
            priority: 100,
            enabled: true,
            headers: BTreeMap::new(),
            trust: RegistryTrust::Verified,
        }
    }
}

impl fmt::Debug for IndexConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let headers: BTreeMap<&str, &str> = self
            .headers
            .keys()
            .map(|k| (k.as_str(), "<redacted>"))
            .collect();
        f.debug_struct("IndexConfig")
            .field("url", &self.url)
            .field("name", &self.name)
            .field("priority", &self.priority)
            .field("enabled", &self.enabled)
            .field("headers", &headers)
            .field("trust", &self.trust)
            .finish()
    }
}

/// Registry settings. `Default` gives no indices, a 300 s cache TTL, a 30 s
/// timeout, https only and a 10 MiB index size limit.
#[derive(Clone)]
pub struct RegistryConfig {
    pub indices: Vec<IndexConfig>,
    /// How long a fetched index is used without asking the server again.
    pub cache_ttl: Duration,
    /// Total time for one index fetch (connect + response + body).
    pub timeout: Duration,
    /// Permit `http://` index URLs (configured and request-supplied).
    pub allow_http: bool,
    /// Largest index document accepted, in bytes.
    pub max_index_bytes: u64,
    /// Permit `file://` URLs as a request's extra index. Configured indices may
    /// always be `file://`; a request-supplied one would let any caller make the
    /// server read local files, so it is off by default.
    pub allow_file_registry_url: bool,
}

impl Default for RegistryConfig {
    fn default() -> Self {
        Self {
            indices: Vec::new(),
            cache_ttl: Duration::from_secs(300),
            timeout: Duration::from_secs(30),
            allow_http: false,
            max_index_bytes: 10 * 1024 * 1024,
            allow_file_registry_url: false,
        }
    }
}

impl fmt::Debug for RegistryConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RegistryConfig")
            .field("indices", &self.indices) // IndexConfig's Debug redacts header values
            .field("cache_ttl", &self.cache_ttl)
            .field("timeout", &self.timeout)
            .field("allow_http", &self.allow_http)
            .field("max_index_bytes", &self.max_index_bytes)
            .field("allow_file_registry_url", &self.allow_file_registry_url)
            .finish()
    }
}

/// A configured index as shown to users (no header values).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexInfo {
    pub name: Option<String>,
    pub url: String,
    pub priority: u32,
    pub enabled: bool,
    pub has_headers: bool,
    pub trust: RegistryTrust,
}

/// The outcome of resolving `ref[@selector]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Resolved {
    pub entry_ref: String,
    pub version: Version,
    /// In index order: the installer tries git first, then archive.
    pub install_sources: Vec<InstallSource>,
    /// `dependencies.packs` of the selected release (`"ref"` / `"ref@spec"`).
    pub dependencies: Vec<String>,
    /// The whole `dependencies` object of the selected release.
    pub requirements: Option<PackDependencies>,
    /// Only possible with an exact pin.
    pub yanked: bool,
    pub index_url: String,
    pub index_name: Option<String>,
    /// The trust of the index that resolved it.
    pub trust: RegistryTrust,
    /// The format of that index (whether its sources carry checksums).
    pub index_format: IndexFormat,
}

/// An index as loaded for one call.
#[derive(Debug, Clone)]
pub struct LoadedIndex {
    pub url: String,
    pub name: Option<String>,
    pub index: Arc<PackIndex>,
}

/// One search result (one per ref; the highest-priority index wins).
#[derive(Debug, Clone, PartialEq)]
pub struct SearchHit {
    pub pack_ref: String,
    pub label: String,
    pub description: String,
    /// What `latest` would install.
    pub version: Version,
    /// All versions, highest first, yanked ones marked.
    pub versions: Vec<String>,
    pub author: String,
    pub license: String,
    pub keywords: Vec<String>,
    pub index_url: String,
    pub index_name: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("pack '{pack_ref}' was not found in any registry index (searched: {})", list_or_none(.searched))]
    NotFound {
        pack_ref: String,
        searched: Vec<String>,
    },
    #[error("pack '{pack_ref}' cannot be looked up: {}", no_registry_fix(*.disabled))]
    NoRegistries {
        pack_ref: String,
        /// Configured indices, every one disabled.
        disabled: usize,
    },
    #[error(
        "pack '{pack_ref}' has no version matching '{selector}' in index {index} (available: {}); \
         lower-priority indices are not consulted for a pack this index provides",
        list_or_none(.available)
    )]
    VersionNotFound {
        pack_ref: String,
        selector: String,
        available: Vec<String>,
        index: String,
    },
    #[error(
        "registry index {url} is unreachable: {reason}; refusing to fall back to lower-priority indices"
    )]
    IndexUnavailable {
        url: String,
        #[source]
        reason: Unreachable,
    },
    #[error(
        "registry index {url} is invalid: {source}; refusing to fall back to lower-priority indices"
    )]
    InvalidIndex {
        url: String,
        #[source]
        source: IndexError,
    },
    #[error(
        "the entry for pack '{pack_ref}' in registry index {index} is malformed: {reason}; \
         refusing to fall back to lower-priority indices"
    )]
    InvalidEntry {
        pack_ref: String,
        index: String,
        reason: String,
    },
    #[error(
        "registry index {url} is larger than the limit of {limit} bytes; refusing to fall back to lower-priority indices"
    )]
    TooLarge { url: String, limit: u64 },
    #[error(
        "registry index {index} is in the {format} format, which carries no checksums; \
         refusing it because that registry is not marked unverified: set `trust: unverified` \
         on registry {registry} in the registries configuration (registry.indices[].trust) \
         to install its packs without checksum verification"
    )]
    UnverifiedIndexNotTrusted {
        index: String,
        /// The registry's name, else its URL, as the configuration has it.
        registry: String,
        format: IndexFormat,
    },
    #[error(
        "the request's registry_url {url} is in the {format} format, which carries no checksums; \
         only a configured registry with `trust: unverified` (registry.indices[].trust) may be \
         in that format"
    )]
    UnverifiedRequestIndex { url: String, format: IndexFormat },
    #[error("URL {url} is not allowed: {reason}")]
    Policy { url: String, reason: String },
    #[error("header '{name}' configured for index {index} is not allowed: {reason}")]
    InvalidHeader {
        index: String,
        name: String,
        reason: String,
    },
    #[error(
        "'{0}' is not a valid pack ref (expected lowercase letters, digits, '_' or '-', starting with a letter)"
    )]
    InvalidRef(String),
    #[error(transparent)]
    InvalidSelector(#[from] SelectorError),
    #[error("invalid registry configuration: {0}")]
    Config(&'static str),
    #[error(
        "invalid registry configuration: cannot build the HTTP client: {}",
        error_chain(.0)
    )]
    HttpClient(#[source] reqwest::Error),
}

/// Why no registry was searched, and what to set.
fn no_registry_fix(disabled: usize) -> String {
    if disabled == 0 {
        "no registries are configured: set registry.indices or pass registry_url".into()
    } else {
        format!(
            "no registry is enabled ({disabled} in registry.indices, all with enabled: false): \
             enable one or pass registry_url"
        )
    }
}

impl Failure for RegistryError {
    fn kind(&self) -> FailureKind {
        match self {
            RegistryError::NotFound { .. }
            | RegistryError::NoRegistries { .. }
            | RegistryError::VersionNotFound { .. }
            | RegistryError::Policy { .. }
            | RegistryError::InvalidRef(_)
            | RegistryError::InvalidSelector(_)
            | RegistryError::UnverifiedRequestIndex { .. } => FailureKind::InvalidRequest,
            RegistryError::IndexUnavailable { .. }
            | RegistryError::UnverifiedIndexNotTrusted { .. }
            | RegistryError::InvalidIndex { .. }
            | RegistryError::InvalidEntry { .. }
            | RegistryError::TooLarge { .. } => FailureKind::Unavailable,
            RegistryError::InvalidHeader { .. }
            | RegistryError::Config(_)
            | RegistryError::HttpClient(_) => FailureKind::Internal,
        }
    }
}

/// Why an index could not be fetched.
#[derive(Debug, thiserror::Error)]
pub enum Unreachable {
    #[error("{}", error_chain(.0))]
    Request(#[source] reqwest::Error),
    #[error("the server answered 304 Not Modified to an unconditional request")]
    NotModifiedUnconditionally,
    #[error(
        "the server answered {status} redirecting to {location}; redirects are not followed, configure the final URL"
    )]
    Redirect {
        status: StatusCode,
        location: String,
    },
    #[error("the server answered {0}")]
    Status(StatusCode),
    #[error("reading the response failed: {}", error_chain(.0))]
    Body(#[source] reqwest::Error),
    #[error("not a local file path")]
    NotAFilePath,
    #[error("reading the file timed out")]
    FileTimedOut,
    #[error("{0}")]
    File(#[source] std::io::Error),
}

fn list_or_none(v: &[String]) -> String {
    if v.is_empty() {
        "none".to_string()
    } else {
        v.join(", ")
    }
}

/// Shared registry client. Clone it freely: all clones share one cache.
#[derive(Clone)]
pub struct RegistryClient {
    inner: Arc<Inner>,
}

struct Inner {
    /// Sorted by priority (stable); includes disabled ones for [`RegistryClient::indices`].
    indices: Vec<ConfiguredIndex>,
    cache_ttl: Duration,
    timeout: Duration,
    allow_http: bool,
    allow_file_registry_url: bool,
    max_index_bytes: u64,
    http: reqwest::Client,
    /// Same as `http` but accepting invalid certificates, for `verify_ssl = false`.
    http_insecure: reqwest::Client,
    cache: StdMutex<HashMap<CacheKey, CacheSlot>>,
}

struct ConfiguredIndex {
    url: Url,
    name: Option<String>,
    priority: u32,
    enabled: bool,
    headers: HeaderMap,
    trust: RegistryTrust,
}

/// Identity of a cached document: the URL, which credentials fetched it (a
/// configured index with headers may see a different document than anonymous
/// callers), and whether certificate checks were skipped (a document fetched
/// without verification is never served to a verifying caller).
#[derive(Clone, PartialEq, Eq, Hash)]
struct CacheKey {
    url: String,
    credentials_of: Option<usize>,
    insecure: bool,
}

struct CacheSlot {
    cell: Arc<AsyncMutex<Option<CachedIndex>>>,
    configured: bool,
}

struct CachedIndex {
    index: Arc<PackIndex>,
    fetched_at: Instant,
    etag: Option<HeaderValue>,
    last_modified: Option<HeaderValue>,
}

/// One index to consult for one call.
struct Target<'a> {
    url: Url,
    name: Option<String>,
    headers: Option<&'a HeaderMap>,
    /// Position in `Inner::indices` when this target sends that index's headers.
    credentials_of: Option<usize>,
    configured: bool,
    trust: RegistryTrust,
}

impl Target<'_> {
    fn label(&self) -> String {
        match &self.name {
            Some(n) => format!("'{n}' ({})", redact_url(self.url.as_str())),
            None => redact_url(self.url.as_str()),
        }
    }
    fn key(&self, insecure: bool) -> CacheKey {
        CacheKey {
            url: self.url.to_string(),
            credentials_of: self.credentials_of,
            insecure,
        }
    }
}

/// What an index server (or file) answered.
enum IndexResponse {
    NotModified,
    Body {
        bytes: Vec<u8>,
        etag: Option<HeaderValue>,
        last_modified: Option<HeaderValue>,
    },
}

impl RegistryClient {
    /// Validates every configured URL and header and builds the HTTP clients.
    pub fn new(config: RegistryConfig) -> Result<Self, RegistryError> {
        if config.max_index_bytes == 0 {
            return Err(RegistryError::Config("max_index_bytes must be positive"));
        }
        if config.timeout.is_zero() {
            return Err(RegistryError::Config("timeout must be positive"));
        }
        let mut indices = Vec::with_capacity(config.indices.len());
        for ic in &config.indices {
            let url = check_index_url(&ic.url, config.allow_http, true)?;
            let headers = build_headers(&url, &ic.headers)?;
            indices.push(ConfiguredIndex {
                url,
                name: ic.name.clone().filter(|n| !n.trim().is_empty()),
                priority: ic.priority,
                enabled: ic.enabled,
                headers,
                trust: ic.trust,
            });
        }
        indices.sort_by_key(|i| i.priority);
        Ok(Self {
            inner: Arc::new(Inner {
                indices,
                cache_ttl: config.cache_ttl,
                timeout: config.timeout,
                allow_http: config.allow_http,
                allow_file_registry_url: config.allow_file_registry_url,
                max_index_bytes: config.max_index_bytes,
                http: build_http(false, &config)?,
                http_insecure: build_http(true, &config)?,
                cache: StdMutex::new(HashMap::new()),
            }),
        })
    }

    /// The configured indices in consultation order (without header values).
    pub fn indices(&self) -> Vec<IndexInfo> {
        self.inner
            .indices
            .iter()
            .map(|i| IndexInfo {
                name: i.name.clone(),
                url: redact_url(i.url.as_str()),
                priority: i.priority,
                enabled: i.enabled,
                has_headers: !i.headers.is_empty(),
                trust: i.trust,
            })
            .collect()
    }

    /// Resolves `pack_ref` to one release, fail closed (see the module docs).
    ///
    /// `extra_index` (a request's registry URL) is consulted first and gets no
    /// configured headers. `verify_ssl = false` skips certificate verification
    /// for this call's index fetches.
    #[tracing::instrument(
        name = "registry_resolve",
        level = "debug",
        skip_all,
        fields(pack_ref = pack_ref, selector = %req)
    )]
    pub async fn resolve(
        &self,
        pack_ref: &str,
        req: &VersionSelector,
        extra_index: Option<&str>,
        verify_ssl: bool,
    ) -> Result<Resolved, RegistryError> {
        if !is_valid_pack_ref(pack_ref) {
            return Err(RegistryError::InvalidRef(pack_ref.to_string()));
        }
        let targets = self.targets(extra_index)?;
        if targets.is_empty() {
            return Err(RegistryError::NoRegistries {
                pack_ref: pack_ref.to_string(),
                disabled: self.inner.indices.len(),
            });
        }
        let mut searched = Vec::with_capacity(targets.len());
        for t in &targets {
            searched.push(t.label());
            let index = self.load(t, verify_ssl).await?;
            if let Some(entry) = index.get(pack_ref) {
                let Some(rel) = entry.select(req) else {
                    return Err(RegistryError::VersionNotFound {
                        pack_ref: pack_ref.to_string(),
                        selector: req.to_string(),
                        available: entry.available_versions(),
                        index: t.label(),
                    });
                };
                if rel.yanked {
                    tracing::warn!(pack = pack_ref, version = %rel.version, index = %redact_url(t.url.as_str()),
                        "resolving a yanked release because it was pinned exactly");
                }
                tracing::debug!(pack = pack_ref, version = %rel.version, index = %redact_url(t.url.as_str()), "resolved");
                return Ok(Resolved {
                    entry_ref: entry.pack_ref.clone(),
                    version: rel.version.clone(),
                    install_sources: rel.install_sources.clone(),
                    dependencies: rel
                        .dependencies
                        .as_ref()
                        .map(|d| d.packs.clone())
                        .unwrap_or_default(),
                    requirements: rel.dependencies.clone(),
                    yanked: rel.yanked,
                    index_url: t.url.to_string(),
                    index_name: t.name.clone(),
                    trust: t.trust,
                    index_format: index.format,
                });
            }
            if let Some(w) = index.skipped_entry(pack_ref) {
                // The index claims this ref; a broken claim must not hand the ref
                // to a lower-priority index.
                return Err(RegistryError::InvalidEntry {
                    pack_ref: pack_ref.to_string(),
                    index: t.label(),
                    reason: w.reason.clone(),
                });
            }
        }
        Err(RegistryError::NotFound {
            pack_ref: pack_ref.to_string(),
            searched,
        })
    }

    /// Every index a call consults, in the order [`resolve`](Self::resolve) uses.
    /// Fail closed: an index that cannot be loaded fails the whole call, since it
    /// might have offered any pack.
    pub async fn load_all(
        &self,
        extra_index: Option<&str>,
        verify_ssl: bool,
    ) -> Result<Vec<LoadedIndex>, RegistryError> {
        let targets = self.targets(extra_index)?;
        let mut out = Vec::with_capacity(targets.len());
        for t in &targets {
            out.push(LoadedIndex {
                url: t.url.to_string(),
                name: t.name.clone(),
                index: self.load(t, verify_ssl).await?,
            });
        }
        Ok(out)
    }

    /// Searches every enabled configured index. One row per ref; the
    /// highest-priority index that lists a ref provides its row (even when that
    /// row does not match and a lower index's would). An index that cannot be
    /// loaded is skipped with a warning in the log; if every index fails, the
    /// last error is returned. An empty keyword lists everything. Sorted by ref.
    pub async fn search(&self, keyword: &str) -> Result<Vec<SearchHit>, RegistryError> {
        let targets = self.targets(None)?;
        let mut owned: HashSet<String> = HashSet::new();
        let mut hits = Vec::new();
        let mut last_err = None;
        let mut loaded_any = false;
        for t in &targets {
            let index = match self.load(t, true).await {
                Ok(i) => i,
                Err(e) => {
                    tracing::warn!(index = %redact_url(t.url.as_str()), error = %e, "skipping registry index in search");
                    last_err = Some(e);
                    continue;
                }
            };
            loaded_any = true;
            for entry in &index.packs {
                if !owned.insert(entry.pack_ref.clone()) || !entry.matches_keyword(keyword) {
                    continue;
                }
                let latest = entry.select(&VersionSelector::Latest);
                hits.push(SearchHit {
                    pack_ref: entry.pack_ref.clone(),
                    label: entry.label.clone(),
                    description: entry.description.clone(),
                    version: latest.map_or_else(|| entry.version.clone(), |r| r.version.clone()),
                    versions: entry.available_versions(),
                    author: entry.author.clone(),
                    license: entry.license.clone(),
                    keywords: entry.keywords.clone(),
                    index_url: t.url.to_string(),
                    index_name: t.name.clone(),
                });
            }
            for w in index.warnings.iter().filter(|w| w.entry_skipped) {
                if let Some(r) = &w.pack_ref {
                    owned.insert(r.clone());
                }
            }
        }
        match last_err {
            Some(e) if !loaded_any => Err(e),
            _ => {
                hits.sort_by(|a, b| a.pack_ref.cmp(&b.pack_ref));
                Ok(hits)
            }
        }
    }

    /// Drops every cached index (e.g. after the index configuration changed).
    pub fn clear_cache(&self) {
        self.inner
            .cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }

    /// The indices to consult for one call: the extra one first, then enabled
    /// configured ones by priority; a configured index identical to the extra
    /// one (same URL, no headers) is not consulted twice.
    fn targets(&self, extra_index: Option<&str>) -> Result<Vec<Target<'_>>, RegistryError> {
        let inner = &*self.inner;
        let mut out: Vec<Target<'_>> = Vec::new();
        if let Some(raw) = extra_index.map(str::trim).filter(|s| !s.is_empty()) {
            let url = check_index_url(raw, inner.allow_http, inner.allow_file_registry_url)?;
            // The operator's word on this exact URL (fetched the same way: no headers)
            // holds when a request names it.
            let trust = inner
                .indices
                .iter()
                .find(|ix| ix.enabled && ix.url == url && ix.headers.is_empty())
                .map_or(RegistryTrust::Verified, |ix| ix.trust);
            out.push(Target {
                url,
                name: None,
                headers: None,
                credentials_of: None,
                configured: false,
                trust,
            });
        }
        for (i, ix) in inner
            .indices
            .iter()
            .enumerate()
            .filter(|(_, ix)| ix.enabled)
        {
            let has_headers = !ix.headers.is_empty();
            let t = Target {
                url: ix.url.clone(),
                name: ix.name.clone(),
                headers: has_headers.then_some(&ix.headers),
                credentials_of: has_headers.then_some(i),
                configured: true,
                trust: ix.trust,
            };
            if out
                .iter()
                .any(|o| o.url == t.url && o.credentials_of == t.credentials_of)
            {
                continue;
            }
            out.push(t);
        }
        Ok(out)
    }

    fn slot(&self, key: CacheKey, configured: bool) -> Arc<AsyncMutex<Option<CachedIndex>>> {
        let mut map = self.inner.cache.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(s) = map.get_mut(&key) {
            s.configured |= configured;
            return s.cell.clone();
        }
        if !configured && map.values().filter(|s| !s.configured).count() >= MAX_EXTRA_CACHED {
            // Forget request-supplied indices nobody is using right now.
            map.retain(|_, s| s.configured || Arc::strong_count(&s.cell) > 1);
        }
        let cell = Arc::new(AsyncMutex::new(None));
        map.insert(
            key,
            CacheSlot {
                cell: cell.clone(),
                configured,
            },
        );
        cell
    }

    /// The parsed index for `t`, refused when its format carries no checksums and
    /// `t` is not trusted with that. Checked on every use, not when caching: one
    /// cached document may serve targets of different trust.
    async fn load(
        &self,
        t: &Target<'_>,
        verify_ssl: bool,
    ) -> Result<Arc<PackIndex>, RegistryError> {
        let index = self.load_cached(t, verify_ssl).await?;
        if index.format.has_checksums() || t.trust == RegistryTrust::Unverified {
            return Ok(index);
        }
        if !t.configured {
            return Err(RegistryError::UnverifiedRequestIndex {
                url: redact_url(t.url.as_str()),
                format: index.format,
            });
        }
        Err(RegistryError::UnverifiedIndexNotTrusted {
            index: t.label(),
            registry: t
                .name
                .as_ref()
                .map_or_else(|| redact_url(t.url.as_str()), |n| format!("'{n}'")),
            format: index.format,
        })
    }

    /// The parsed index for `t`, from the cache when fresh, else fetched
    /// (conditionally when a validator is known). Concurrent callers for the
    /// same index wait for one fetch instead of each fetching.
    async fn load_cached(
        &self,
        t: &Target<'_>,
        verify_ssl: bool,
    ) -> Result<Arc<PackIndex>, RegistryError> {
        let inner = &*self.inner;
        let insecure = !verify_ssl && t.url.scheme() == "https";
        let cell = self.slot(t.key(insecure), t.configured);
        let mut cached = cell.lock().await;
        if let Some(c) = cached.as_ref()
            && c.fetched_at.elapsed() < inner.cache_ttl
        {
            return Ok(c.index.clone());
        }
        let fetched = if t.url.scheme() == "file" {
            self.read_file(&t.url).await?
        } else {
            self.fetch_http(t, insecure, cached.as_ref()).await?
        };
        match fetched {
            IndexResponse::NotModified => {
                let Some(c) = cached.as_mut() else {
                    return Err(RegistryError::IndexUnavailable {
                        url: t.url.to_string(),
                        reason: Unreachable::NotModifiedUnconditionally,
                    });
                };
                tracing::debug!(index = %redact_url(t.url.as_str()), "registry index not modified");
                c.fetched_at = Instant::now();
                Ok(c.index.clone())
            }
            IndexResponse::Body {
                bytes,
                etag,
                last_modified,
            } => {
                let index = PackIndex::from_slice_at(&bytes, &t.url).map_err(|source| {
                    RegistryError::InvalidIndex {
                        url: t.url.to_string(),
                        source,
                    }
                })?;
                for w in &index.warnings {
                    tracing::warn!(index = %redact_url(t.url.as_str()), "registry index: {w}");
                }
                tracing::debug!(index = %redact_url(t.url.as_str()), packs = index.packs.len(), "registry index loaded");
                let index = Arc::new(index);
                *cached = Some(CachedIndex {
                    index: index.clone(),
                    fetched_at: Instant::now(),
                    etag,
                    last_modified,
                });
                Ok(index)
            }
        }
    }

    async fn fetch_http(
        &self,
        t: &Target<'_>,
        insecure: bool,
        cached: Option<&CachedIndex>,
    ) -> Result<IndexResponse, RegistryError> {
        let inner = &*self.inner;
        let url = t.url.to_string();
        let unavailable = |reason: Unreachable| RegistryError::IndexUnavailable {
            url: url.clone(),
            reason,
        };
        let client = if insecure {
            &inner.http_insecure
        } else {
            &inner.http
        };
        let mut req = client.get(t.url.clone()).header(ACCEPT, "application/json");
        if let Some(h) = t.headers {
            req = req.headers(h.clone());
        }
        if let Some(c) = cached {
            if let Some(etag) = &c.etag {
                req = req.header(IF_NONE_MATCH, etag.clone());
            }
            if let Some(lm) = &c.last_modified {
                req = req.header(IF_MODIFIED_SINCE, lm.clone());
            }
        }
        tracing::debug!(index = %redact_url(t.url.as_str()), conditional = cached.is_some(), "fetching registry index");
        let mut resp = req
            .send()
            .await
            .map_err(|e| unavailable(Unreachable::Request(e)))?;
        let status = resp.status();
        if status == StatusCode::NOT_MODIFIED {
            return Ok(IndexResponse::NotModified);
        }
        if status.is_redirection() {
            let location = resp
                .headers()
                .get(LOCATION)
                .and_then(|l| l.to_str().ok())
                .unwrap_or("?")
                .to_string();
            return Err(unavailable(Unreachable::Redirect { status, location }));
        }
        if !status.is_success() {
            return Err(unavailable(Unreachable::Status(status)));
        }
        let too_large = || RegistryError::TooLarge {
            url: url.clone(),
            limit: inner.max_index_bytes,
        };
        if resp
            .content_length()
            .is_some_and(|n| n > inner.max_index_bytes)
        {
            return Err(too_large());
        }
        let etag = resp.headers().get(ETAG).cloned();
        let last_modified = resp.headers().get(LAST_MODIFIED).cloned();
        let mut bytes = Vec::with_capacity(
            resp.content_length()
                .unwrap_or(64 * 1024)
                .min(inner.max_index_bytes) as usize,
        );
        while let Some(chunk) = resp
            .chunk()
            .await
            .map_err(|e| unavailable(Unreachable::Body(e)))?
        {
            if (bytes.len() + chunk.len()) as u64 > inner.max_index_bytes {
                return Err(too_large());
            }
            bytes.extend_from_slice(&chunk);
        }
        Ok(IndexResponse::Body {
            bytes,
            etag,
            last_modified,
        })
    }

    async fn read_file(&self, url: &Url) -> Result<IndexResponse, RegistryError> {
        let inner = &*self.inner;
        let unavailable = |reason: Unreachable| RegistryError::IndexUnavailable {
            url: url.to_string(),
            reason,
        };
        let path = url
            .to_file_path()
            .map_err(|()| unavailable(Unreachable::NotAFilePath))?;
        let limit = inner.max_index_bytes;
        let read = async {
            // Opened without blocking (a FIFO would otherwise hold a blocking thread
            // for good, timeout or not) and judged by `fstat` of what was opened, so
            // nothing can be swapped in between the check and the read.
            let file = tokio::fs::OpenOptions::new()
                .read(true)
                .custom_flags(libc_flags::NONBLOCK | libc_flags::NOCTTY)
                .open(&path)
                .await?;
            let meta = file.metadata().await?;
            if !meta.is_file() {
                return Err(std::io::Error::other("not a regular file"));
            }
            if meta.len() > limit {
                return Ok(None);
            }
            let mut bytes = Vec::with_capacity(meta.len() as usize);
            // Bounded even if the file grows after the metadata check.
            file.take(limit + 1).read_to_end(&mut bytes).await?;
            Ok((bytes.len() as u64 <= limit).then_some(bytes))
        };
        match tokio::time::timeout(inner.timeout, read).await {
            Err(_) => Err(unavailable(Unreachable::FileTimedOut)),
            Ok(Err(e)) => Err(unavailable(Unreachable::File(e))),
            Ok(Ok(None)) => Err(RegistryError::TooLarge {
                url: url.to_string(),
                limit,
            }),
            Ok(Ok(Some(bytes))) => Ok(IndexResponse::Body {
                bytes,
                etag: None,
                last_modified: None,
            }),
        }
    }
}

/// Open flags for local index files, as `OpenOptions::custom_flags` takes them.
mod libc_flags {
    pub const NONBLOCK: i32 = rustix::fs::OFlags::NONBLOCK.bits() as i32;
    pub const NOCTTY: i32 = rustix::fs::OFlags::NOCTTY.bits() as i32;
}

impl fmt::Debug for RegistryClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RegistryClient")
            .field("indices", &self.indices())
            .field("cache_ttl", &self.inner.cache_ttl)
            .finish_non_exhaustive()
    }
}

/// `url` with any userinfo removed, for messages.
fn redacted(url: &Url) -> String {
    let mut u = url.clone();
    let _ = u.set_username("");
    let _ = u.set_password(None);
    u.to_string()
}

/// The outbound policy for index URLs: `https://` (or `http://` with
/// `allow_http`), or `file://` when `allow_file`; a host is required for http(s);
/// no userinfo (credentials belong in headers); no fragment.
fn check_index_url(raw: &str, allow_http: bool, allow_file: bool) -> Result<Url, RegistryError> {
    let url = Url::parse(raw).map_err(|e| RegistryError::Policy {
        // Do not echo something that may hold credentials.
        url: if raw.contains('@') {
            "<unparsable URL>".into()
        } else {
            raw.to_string()
        },
        reason: format!("not a valid absolute URL ({e})"),
    })?;
    let refuse = |reason: &str| RegistryError::Policy {
        url: redacted(&url),
        reason: reason.to_string(),
    };
    if !url.username().is_empty() || url.password().is_some() {
        return Err(refuse(
            "URLs must not contain credentials; configure a header (e.g. Authorization) for the index instead",
        ));
    }
    if url.fragment().is_some() {
        return Err(refuse("URLs must not contain a fragment"));
    }
    match url.scheme() {
        "https" => {}
        "http" if allow_http => {}
        "http" => {
            return Err(refuse(
                "plain http is not allowed (use https, or set allow_http for trusted networks)",
            ));
        }
        "file" if allow_file => {
            if url.to_file_path().is_err() {
                return Err(refuse("file URL does not name a local path"));
            }
            return Ok(url);
        }
        "file" => {
            return Err(refuse(
                "file:// URLs are only allowed for configured indices, not in requests",
            ));
        }
        other => {
            return Err(refuse(&format!(
                "scheme '{other}' is not supported (use https)"
            )));
        }
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(refuse("URL has no host"));
    }
    Ok(url)
}

fn build_headers(
    url: &Url,
    headers: &BTreeMap<String, String>,
) -> Result<HeaderMap, RegistryError> {
    let mut map = HeaderMap::new();
    for (k, v) in headers {
        let bad = |reason: &str| RegistryError::InvalidHeader {
            index: url.to_string(),
            name: k.clone(),
            reason: reason.to_string(),
        };
        let name = HeaderName::from_bytes(k.trim().as_bytes())
            .map_err(|_| bad("not a valid HTTP header name"))?;
        let lower = name.as_str(); // HeaderName is lowercase
        if FORBIDDEN_HEADERS.contains(&lower)
            || FORBIDDEN_HEADER_PREFIXES
                .iter()
                .any(|p| lower.starts_with(p))
        {
            return Err(bad(
                "hop-by-hop, proxy, forwarding, framing and conditional headers cannot be configured",
            ));
        }
        // The value is never echoed in errors.
        let mut value = HeaderValue::from_str(v).map_err(|_| {
            bad("the value contains characters not allowed in an HTTP header (e.g. a newline)")
        })?;
        value.set_sensitive(true);
        if map.insert(name, value).is_some() {
            return Err(bad(
                "configured more than once (header names are case-insensitive)",
            ));
        }
    }
    Ok(map)
}

fn build_http(insecure: bool, config: &RegistryConfig) -> Result<reqwest::Client, RegistryError> {
    reqwest::Client::builder()
        .user_agent(USER_AGENT)
        // Redirects are refused:
        // * configured headers (Authorization, X-Api-Key, …) would follow the
        //   redirect; reqwest strips only a few well-known ones across origins;
        // * the URL policy (https only, no credentials) was checked on the
        //   configured URL, and a redirect could downgrade to http:// or point at
        //   an internal address;
        // * the configured URL is the identity of the index that owns a ref in
        //   fail-closed resolution; a redirect would silently change it.
        .redirect(reqwest::redirect::Policy::none())
        // Index traffic goes direct; environment proxies are not consulted.
        .no_proxy()
        .https_only(!config.allow_http)
        .timeout(config.timeout)
        .connect_timeout(config.timeout.min(Duration::from_secs(10)))
        .tls_danger_accept_invalid_certs(insecure)
        .build()
        .map_err(RegistryError::HttpClient)
}

/// An error and its sources, e.g. "error sending request: connection refused".
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let m = c.to_string();
        if !s.contains(&m) {
            s.push_str(": ");
            s.push_str(&m);
        }
        cur = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::extract::State;
    use axum::http::HeaderMap as AxHeaderMap;
    use axum::response::{IntoResponse, Response};
    use serde_json::{Value, json};
    use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering};
    use tokio::io::AsyncWriteExt;

    fn sha(c: char) -> String {
        format!("sha256:{}", c.to_string().repeat(64))
    }

    fn entry(r: &str, v: &str) -> Value {
        json!({
            "ref": r, "label": format!("{r} label"), "description": format!("The {r} pack"), "version": v,
            "author": "t", "license": "MIT", "keywords": ["kw-".to_string() + r], "runtime_deps": [],
            "install_sources": [
                {"type": "git", "url": format!("https://example.com/{r}.git"), "ref": format!("v{v}"), "checksum": sha('a')},
                {"type": "archive", "url": format!("https://example.com/{r}-{v}.tar.gz"), "checksum": sha('b')}
            ],
            "contents": {"actions": [], "sensors": [], "triggers": [], "rules": [], "workflows": []}
        })
    }

    fn index_doc(packs: Vec<Value>) -> String {
        json!({"registry_name": "t", "registry_url": "https://example.com", "version": "1.1",
               "last_updated": "2026-01-01T00:00:00Z", "packs": packs})
        .to_string()
    }

    struct ServerState {
        status: AtomicU16,
        body: StdMutex<String>,
        etag: StdMutex<Option<String>>,
        last_modified: StdMutex<Option<String>>,
        hits: AtomicUsize,
        not_modified: AtomicUsize,
        requests: StdMutex<Vec<AxHeaderMap>>,
    }

    struct TestServer {
        base: String,
        state: Arc<ServerState>,
    }

    impl TestServer {
        fn url(&self) -> String {
            format!("{}/index.json", self.base)
        }
        fn hits(&self) -> usize {
            self.state.hits.load(Ordering::SeqCst)
        }
        fn last_request(&self) -> AxHeaderMap {
            self.state.requests.lock().unwrap().last().unwrap().clone()
        }
        fn set_status(&self, s: u16) {
            self.state.status.store(s, Ordering::SeqCst);
        }
    }

    async fn handler(State(s): State<Arc<ServerState>>, headers: AxHeaderMap) -> Response {
        s.hits.fetch_add(1, Ordering::SeqCst);
        s.requests.lock().unwrap().push(headers.clone());
        let etag = s.etag.lock().unwrap().clone();
        if let (Some(e), Some(inm)) = (&etag, headers.get("if-none-match"))
            && inm.as_bytes() == e.as_bytes()
        {
            s.not_modified.fetch_add(1, Ordering::SeqCst);
            return (axum::http::StatusCode::NOT_MODIFIED, [("etag", e.clone())]).into_response();
        }
        let last_modified = s.last_modified.lock().unwrap().clone();
        if let (Some(lm), Some(ims)) = (&last_modified, headers.get("if-modified-since"))
            && ims.as_bytes() == lm.as_bytes()
        {
            s.not_modified.fetch_add(1, Ordering::SeqCst);
            return axum::http::StatusCode::NOT_MODIFIED.into_response();
        }
        let status = axum::http::StatusCode::from_u16(s.status.load(Ordering::SeqCst)).unwrap();
        let body = s.body.lock().unwrap().clone();
        let mut resp = (status, body).into_response();
        if let Some(e) = etag {
            resp.headers_mut().insert("etag", e.parse().unwrap());
        }
        if let Some(lm) = last_modified {
            resp.headers_mut()
                .insert("last-modified", lm.parse().unwrap());
        }
        resp
    }

    async fn serve(body: String) -> TestServer {
        let state = Arc::new(ServerState {
            status: AtomicU16::new(200),
            body: StdMutex::new(body),
            etag: StdMutex::new(None),
            last_modified: StdMutex::new(None),
            hits: AtomicUsize::new(0),
            not_modified: AtomicUsize::new(0),
            requests: StdMutex::new(Vec::new()),
        });
        let app = axum::Router::new()
            .route("/index.json", axum::routing::get(handler))
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        TestServer {
            base: format!("http://{addr}"),
            state,
        }
    }

    fn cfg(indices: Vec<IndexConfig>) -> RegistryConfig {
        RegistryConfig {
            indices,
            allow_http: true,
            timeout: Duration::from_secs(10),
            ..RegistryConfig::default()
        }
    }

    fn idx(url: String, priority: u32) -> IndexConfig {
        IndexConfig {
            priority,
            ..IndexConfig::new(url)
        }
    }

    fn sel(s: &str) -> VersionSelector {
        VersionSelector::parse(Some(s)).unwrap()
    }

    #[tokio::test]
    async fn priority_order_and_disabled() {
        let a = serve(index_doc(vec![
            entry("foo", "1.0.0"),
            entry("only_a", "1.0.0"),
        ]))
        .await;
        let b = serve(index_doc(vec![entry("foo", "2.0.0")])).await;
        let c = serve(index_doc(vec![entry("foo", "3.0.0")])).await;
        let mut disabled = idx(c.url(), 1);
        disabled.enabled = false;
        let mut named_b = idx(b.url(), 5);
        named_b.name = Some("B".into());
        let client = RegistryClient::new(cfg(vec![idx(a.url(), 10), named_b, disabled])).unwrap();
        let r = client
            .resolve("foo", &VersionSelector::Latest, None, true)
            .await
            .unwrap();
        assert_eq!(r.version, Version::new(2, 0, 0));
        assert_eq!(r.index_url, b.url());
        assert_eq!(r.index_name.as_deref(), Some("B"));
        assert_eq!(r.entry_ref, "foo");
        assert_eq!(r.install_sources.len(), 2);
        assert_eq!(c.hits(), 0);
        let r = client
            .resolve("only_a", &VersionSelector::Latest, None, true)
            .await
            .unwrap();
        assert_eq!(r.index_url, a.url());
        let infos = client.indices();
        assert_eq!(
            infos.iter().map(|i| i.priority).collect::<Vec<_>>(),
            [1, 5, 10]
        );
        assert!(!infos[0].enabled);
    }

    #[tokio::test]
    async fn extra_index_is_first_and_gets_no_headers() {
        let a = serve(index_doc(vec![entry("foo", "1.0.0")])).await;
        let extra = serve(index_doc(vec![entry("foo", "9.0.0")])).await;
        let mut ia = idx(a.url(), 1);
        ia.headers
            .insert("Authorization".into(), "Bearer s3cret".into());
        let client = RegistryClient::new(cfg(vec![ia])).unwrap();
        let r = client
            .resolve("foo", &VersionSelector::Latest, Some(&extra.url()), true)
            .await
            .unwrap();
        assert_eq!(r.version, Version::new(9, 0, 0));
        assert_eq!(r.index_url, extra.url());
        assert_eq!(a.hits(), 0);
        assert!(extra.last_request().get("authorization").is_none());
        // Not in the extra index: the configured one is next.
        let r = client
            .resolve("foo", &sel("^1"), Some(&extra.url()), true)
            .await
            .unwrap_err();
        assert!(matches!(r, RegistryError::VersionNotFound { .. }), "{r}");
    }

    #[tokio::test]
    async fn headers_only_go_to_their_own_index() {
        let a = serve(index_doc(vec![])).await;
        let b = serve(index_doc(vec![entry("foo", "1.0.0")])).await;
        let mut ia = idx(a.url(), 1);
        ia.headers
            .insert("Authorization".into(), "Bearer s3cret".into());
        ia.headers.insert("X-Api-Key".into(), "k".into());
        let client = RegistryClient::new(cfg(vec![ia, idx(b.url(), 2)])).unwrap();
        client
            .resolve("foo", &VersionSelector::Latest, None, true)
            .await
            .unwrap();
        let ha = a.last_request();
        assert_eq!(ha.get("authorization").unwrap(), "Bearer s3cret");
        assert_eq!(ha.get("x-api-key").unwrap(), "k");
        assert_eq!(ha.get("user-agent").unwrap(), USER_AGENT);
        let hb = b.last_request();
        assert!(hb.get("authorization").is_none());
        assert!(hb.get("x-api-key").is_none());
        // Never shown by Debug or indices().
        let dbg = format!(
            "{:?} {client:?}",
            cfg(vec![{
                let mut i = IndexConfig::new("https://x.example/i.json");
                i.headers
                    .insert("Authorization".into(), "Bearer s3cret".into());
                i
            }])
        );
        assert!(!dbg.contains("s3cret"), "{dbg}");
        assert!(dbg.contains("Authorization"));
        assert!(client.indices()[0].has_headers);
        assert!(!client.indices()[1].has_headers);
    }

    #[tokio::test]
    async fn fail_closed_when_higher_index_errors() {
        let broken = serve(index_doc(vec![])).await;
        broken.set_status(500);
        let good = serve(index_doc(vec![entry("foo", "1.0.0")])).await;
        let client =
            RegistryClient::new(cfg(vec![idx(broken.url(), 1), idx(good.url(), 2)])).unwrap();
        let err = client
            .resolve("foo", &VersionSelector::Latest, None, true)
            .await
            .unwrap_err();
        assert!(
            matches!(err, RegistryError::IndexUnavailable { .. }),
            "{err}"
        );
        let msg = err.to_string();
        assert!(
            msg.contains("500") && msg.contains("refusing to fall back"),
            "{msg}"
        );
        assert_eq!(good.hits(), 0);

        // Garbage instead of JSON.
        broken.set_status(200);
        *broken.state.body.lock().unwrap() = "<html>oops</html>".into();
        let err = client
            .resolve("foo", &VersionSelector::Latest, None, true)
            .await
            .unwrap_err();
        assert!(matches!(err, RegistryError::InvalidIndex { .. }), "{err}");
        assert!(err.to_string().contains("refusing to fall back"));
        // Valid JSON, wrong shape.
        *broken.state.body.lock().unwrap() = "{\"packs\": 3}".into();
        let err = client
            .resolve("foo", &VersionSelector::Latest, None, true)
            .await
            .unwrap_err();
        assert!(matches!(err, RegistryError::InvalidIndex { .. }), "{err}");
        // A malformed entry for the ref also owns it.
        let mut bad = entry("foo", "5.0.0");
        bad["install_sources"][0]["checksum"] = json!("md5:abc");
        *broken.state.body.lock().unwrap() = index_doc(vec![bad]);
        let err = client
            .resolve("foo", &VersionSelector::Latest, None, true)
            .await
            .unwrap_err();
        assert!(matches!(err, RegistryError::InvalidEntry { .. }), "{err}");
        assert_eq!(good.hits(), 0);
        // Once the higher index is healthy and lacks the ref, the lower one answers.
        *broken.state.body.lock().unwrap() = index_doc(vec![]);
        client.clear_cache(); // the document with the malformed entry was cached
        let r = client
            .resolve("foo", &VersionSelector::Latest, None, true)
            .await
            .unwrap();
        assert_eq!(r.index_url, good.url());
    }

    #[tokio::test]
    async fn unreachable_and_redirect_fail_closed() {
        // A port nothing listens on.
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let dead = format!("http://{}/index.json", l.local_addr().unwrap());
        drop(l);
        let good = serve(index_doc(vec![entry("foo", "1.0.0")])).await;
        let client = RegistryClient::new(cfg(vec![idx(dead, 1), idx(good.url(), 2)])).unwrap();
        let err = client
            .resolve("foo", &VersionSelector::Latest, None, true)
            .await
            .unwrap_err();
        assert!(
            matches!(err, RegistryError::IndexUnavailable { .. }),
            "{err}"
        );

        let redirect = serve(String::new()).await;
        redirect.set_status(302);
        let client =
            RegistryClient::new(cfg(vec![idx(redirect.url(), 1), idx(good.url(), 2)])).unwrap();
        let err = client
            .resolve("foo", &VersionSelector::Latest, None, true)
            .await
            .unwrap_err();
        assert!(
            err.to_string().contains("redirects are not followed"),
            "{err}"
        );
        assert_eq!(good.hits(), 0);
    }

    #[tokio::test]
    async fn higher_index_without_matching_version_does_not_fall_through() {
        let a = serve(index_doc(vec![entry("foo", "1.0.0")])).await;
        let b = serve(index_doc(vec![entry("foo", "2.0.0")])).await;
        let client = RegistryClient::new(cfg(vec![idx(a.url(), 1), idx(b.url(), 2)])).unwrap();
        for s in ["^2", "2.0.0"] {
            let err = client
                .resolve("foo", &sel(s), None, true)
                .await
                .unwrap_err();
            match &err {
                RegistryError::VersionNotFound {
                    available, index, ..
                } => {
                    assert_eq!(available, &["1.0.0"]);
                    assert_eq!(index, &a.url());
                }
                other => panic!("{other}"),
            }
            assert!(err.to_string().contains("available: 1.0.0"), "{err}");
        }
        assert_eq!(b.hits(), 0);
    }

    #[tokio::test]
    async fn not_found_lists_searched_indices() {
        let a = serve(index_doc(vec![])).await;
        let b = serve(index_doc(vec![])).await;
        let client = RegistryClient::new(cfg(vec![idx(a.url(), 1), idx(b.url(), 2)])).unwrap();
        let err = client
            .resolve("nope", &VersionSelector::Latest, None, true)
            .await
            .unwrap_err();
        match &err {
            RegistryError::NotFound { searched, .. } => assert_eq!(searched, &[a.url(), b.url()]),
            other => panic!("{other}"),
        }
        let err = client
            .resolve("../etc", &VersionSelector::Latest, None, true)
            .await
            .unwrap_err();
        assert!(matches!(err, RegistryError::InvalidRef(_)));
        // Nothing to search: the error says so, and how to add a registry.
        let empty = RegistryClient::new(cfg(vec![])).unwrap();
        let err = empty
            .resolve("xx", &VersionSelector::Latest, None, true)
            .await
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "pack 'xx' cannot be looked up: no registries are configured: set \
             registry.indices or pass registry_url"
        );
        let mut off = idx(a.url(), 1);
        off.enabled = false;
        let disabled = RegistryClient::new(cfg(vec![off])).unwrap();
        let err = disabled
            .resolve("xx", &VersionSelector::Latest, None, true)
            .await
            .unwrap_err();
        assert!(
            err.to_string().contains(
                "no registry is enabled (1 in registry.indices, all with enabled: false)"
            ),
            "{err}"
        );
    }

    #[tokio::test]
    async fn cache_ttl_and_conditional_requests() {
        let s = serve(index_doc(vec![entry("foo", "1.0.0")])).await;
        *s.state.etag.lock().unwrap() = Some("\"v1\"".into());
        let mut c = cfg(vec![idx(s.url(), 1)]);
        c.cache_ttl = Duration::from_millis(1000);
        let client = RegistryClient::new(c).unwrap();
        let other_handle = client.clone(); // clones share the cache
        client
            .resolve("foo", &VersionSelector::Latest, None, true)
            .await
            .unwrap();
        assert_eq!(s.hits(), 1);
        assert!(s.last_request().get("if-none-match").is_none());
        other_handle
            .resolve("foo", &VersionSelector::Latest, None, true)
            .await
            .unwrap();
        client.search("foo").await.unwrap();
        assert_eq!(s.hits(), 1, "fresh cache must not hit the server");

        tokio::time::sleep(Duration::from_millis(1200)).await;
        let r = client
            .resolve("foo", &VersionSelector::Latest, None, true)
            .await
            .unwrap();
        assert_eq!(r.version, Version::new(1, 0, 0));
        assert_eq!(s.hits(), 2);
        assert_eq!(s.state.not_modified.load(Ordering::SeqCst), 1);
        assert_eq!(s.last_request().get("if-none-match").unwrap(), "\"v1\"");
        // 304 refreshed fetched_at: fresh again.
        client
            .resolve("foo", &VersionSelector::Latest, None, true)
            .await
            .unwrap();
        assert_eq!(s.hits(), 2);

        // Content changes with a new ETag: after expiry the new document is used.
        *s.state.body.lock().unwrap() = index_doc(vec![entry("foo", "1.1.0")]);
        *s.state.etag.lock().unwrap() = Some("\"v2\"".into());
        tokio::time::sleep(Duration::from_millis(1200)).await;
        let r = client
            .resolve("foo", &VersionSelector::Latest, None, true)
            .await
            .unwrap();
        assert_eq!(r.version, Version::new(1, 1, 0));
        assert_eq!(s.hits(), 3);
        assert_eq!(s.state.not_modified.load(Ordering::SeqCst), 1);

        client.clear_cache();
        client
            .resolve("foo", &VersionSelector::Latest, None, true)
            .await
            .unwrap();
        assert_eq!(s.hits(), 4);
        assert!(s.last_request().get("if-none-match").is_none());
    }

    #[tokio::test]
    async fn last_modified_revalidation() {
        let s = serve(index_doc(vec![entry("foo", "1.0.0")])).await;
        let lm = "Wed, 21 Oct 2026 07:28:00 GMT";
        *s.state.last_modified.lock().unwrap() = Some(lm.into());
        let client = RegistryClient::new(RegistryConfig {
            cache_ttl: Duration::ZERO, // always revalidate
            ..cfg(vec![idx(s.url(), 1)])
        })
        .unwrap();
        for _ in 0..3 {
            let r = client
                .resolve("foo", &VersionSelector::Latest, None, true)
                .await
                .unwrap();
            assert_eq!(r.version, Version::new(1, 0, 0));
        }
        assert_eq!(s.hits(), 3);
        assert_eq!(s.state.not_modified.load(Ordering::SeqCst), 2);
        assert_eq!(s.last_request().get("if-modified-since").unwrap(), lm);
        assert!(s.last_request().get("if-none-match").is_none());
    }

    #[tokio::test]
    async fn concurrent_requests_do_not_stampede() {
        let s = serve(index_doc(vec![entry("foo", "1.0.0")])).await;
        let client = RegistryClient::new(cfg(vec![idx(s.url(), 1)])).unwrap();
        let mut tasks = Vec::new();
        for _ in 0..16 {
            let c = client.clone();
            tasks.push(tokio::spawn(async move {
                c.resolve("foo", &VersionSelector::Latest, None, true).await
            }));
        }
        for t in tasks {
            t.await.unwrap().unwrap();
        }
        assert_eq!(s.hits(), 1);
    }

    #[tokio::test]
    async fn url_policy() {
        let err = RegistryClient::new(RegistryConfig {
            indices: vec![IndexConfig::new("http://127.0.0.1:1/index.json")],
            ..RegistryConfig::default()
        })
        .unwrap_err();
        assert!(matches!(err, RegistryError::Policy { .. }), "{err}");
        assert!(err.to_string().contains("plain http"));

        let client = RegistryClient::new(RegistryConfig::default()).unwrap();
        let err = client
            .resolve(
                "xx",
                &VersionSelector::Latest,
                Some("http://127.0.0.1:1/i.json"),
                true,
            )
            .await
            .unwrap_err();
        assert!(matches!(err, RegistryError::Policy { .. }), "{err}");

        for bad in [
            "https://user:hunter2@example.com/index.json",
            "ftp://example.com/index.json",
            "https://example.com/index.json#frag",
            "not a url",
            "file:///tmp/index.json",
        ] {
            let err = client
                .resolve("xx", &VersionSelector::Latest, Some(bad), true)
                .await
                .unwrap_err();
            assert!(matches!(err, RegistryError::Policy { .. }), "{bad}: {err}");
            assert!(!err.to_string().contains("hunter2"), "{err}");
        }
        let err = RegistryClient::new(RegistryConfig {
            indices: vec![IndexConfig::new("https://u:hunter2@example.com/i.json")],
            ..RegistryConfig::default()
        })
        .unwrap_err();
        assert!(err.to_string().contains("credentials") && !err.to_string().contains("hunter2"));
    }

    #[tokio::test]
    async fn header_validation() {
        for (name, value) in [
            ("Host", "x"),
            ("Proxy-Authorization", "x"),
            ("X-Forwarded-For", "1.2.3.4"),
            ("x-forwarded", "1"),
            ("Connection", "close"),
            ("Transfer-Encoding", "chunked"),
            ("If-None-Match", "x"),
            ("bad name", "x"),
            ("Authorization", "Bearer a\r\nX-Evil: 1"),
        ] {
            let mut i = IndexConfig::new("https://example.com/i.json");
            i.headers.insert(name.into(), value.into());
            let err = RegistryClient::new(RegistryConfig {
                indices: vec![i],
                ..RegistryConfig::default()
            })
            .unwrap_err();
            assert!(
                matches!(err, RegistryError::InvalidHeader { .. }),
                "{name}: {err}"
            );
            assert!(!err.to_string().contains("X-Evil"), "{err}");
        }
        let mut i = IndexConfig::new("https://example.com/i.json");
        i.headers.insert("Authorization".into(), "a".into());
        i.headers.insert("authorization".into(), "b".into());
        assert!(
            RegistryClient::new(RegistryConfig {
                indices: vec![i],
                ..RegistryConfig::default()
            })
            .is_err()
        );
    }

    #[tokio::test]
    async fn file_indices() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("index.json");
        std::fs::write(&path, index_doc(vec![entry("foo", "1.2.3")])).unwrap();
        let url = Url::from_file_path(&path).unwrap().to_string();
        let client = RegistryClient::new(RegistryConfig {
            indices: vec![IndexConfig::new(url.clone())],
            ..RegistryConfig::default()
        })
        .unwrap();
        let r = client
            .resolve("foo", &VersionSelector::Latest, None, true)
            .await
            .unwrap();
        assert_eq!(r.version, Version::new(1, 2, 3));
        assert_eq!(r.index_url, url);

        // Size-limited too.
        let client = RegistryClient::new(RegistryConfig {
            indices: vec![IndexConfig::new(url.clone())],
            max_index_bytes: 100,
            ..RegistryConfig::default()
        })
        .unwrap();
        let err = client
            .resolve("foo", &VersionSelector::Latest, None, true)
            .await
            .unwrap_err();
        assert!(
            matches!(err, RegistryError::TooLarge { limit: 100, .. }),
            "{err}"
        );

        // A missing file is an unreachable index.
        let missing = Url::from_file_path(dir.path().join("nope.json"))
            .unwrap()
            .to_string();
        let client = RegistryClient::new(RegistryConfig {
            indices: vec![IndexConfig::new(missing)],
            ..RegistryConfig::default()
        })
        .unwrap();
        let err = client
            .resolve("foo", &VersionSelector::Latest, None, true)
            .await
            .unwrap_err();
        assert!(
            matches!(err, RegistryError::IndexUnavailable { .. }),
            "{err}"
        );

        // A request-supplied file:// index only when explicitly allowed.
        let client = RegistryClient::new(RegistryConfig {
            allow_file_registry_url: true,
            ..RegistryConfig::default()
        })
        .unwrap();
        let r = client
            .resolve("foo", &VersionSelector::Latest, Some(&url), true)
            .await
            .unwrap();
        assert_eq!(r.version, Version::new(1, 2, 3));
    }

    #[tokio::test]
    async fn real_fixture_over_http() {
        let fixture = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/testdata/attune-standard-index.json"
        );
        let s = serve(std::fs::read_to_string(fixture).unwrap()).await;
        let client = RegistryClient::new(cfg(vec![idx(s.url(), 1)])).unwrap();
        let r = client
            .resolve("ansible", &VersionSelector::Latest, None, true)
            .await
            .unwrap();
        assert_eq!(r.version.to_string(), "0.1.1");
        assert_eq!(r.install_sources[0].kind(), "git");
        assert_eq!(r.install_sources[1].kind(), "archive");
        assert!(
            r.install_sources[1]
                .url()
                .starts_with("https://codeload.github.com/attune-packs/ansible/tar.gz/")
        );
        let r = client
            .resolve("msexchange", &sel("^0.1"), None, true)
            .await
            .unwrap();
        assert_eq!(r.dependencies, ["core"]);
        let hits = client.search("kubernetes").await.unwrap();
        assert!(hits.iter().any(|h| h.pack_ref == "kubernetes"));
        assert_eq!(client.search("").await.unwrap().len(), 44);
    }

    #[tokio::test]
    async fn size_limit_content_length() {
        let s = serve(index_doc(vec![entry("foo", "1.0.0")])).await;
        let client = RegistryClient::new(RegistryConfig {
            max_index_bytes: 64,
            ..cfg(vec![idx(s.url(), 1)])
        })
        .unwrap();
        let err = client
            .resolve("foo", &VersionSelector::Latest, None, true)
            .await
            .unwrap_err();
        assert!(
            matches!(err, RegistryError::TooLarge { limit: 64, .. }),
            "{err}"
        );
    }

    #[tokio::test]
    async fn size_limit_streamed_without_content_length() {
        // A raw HTTP/1.1 server sending a chunked body (no Content-Length).
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut sock, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut buf = [0u8; 4096];
                    let _ = sock.read(&mut buf).await;
                    let _ = sock
                        .write_all(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n")
                        .await;
                    let chunk = format!("400\r\n{}\r\n", " ".repeat(0x400));
                    for _ in 0..64 {
                        if sock.write_all(chunk.as_bytes()).await.is_err() {
                            return;
                        }
                    }
                    let _ = sock.write_all(b"0\r\n\r\n").await;
                });
            }
        });
        let client = RegistryClient::new(RegistryConfig {
            max_index_bytes: 10_000,
            ..cfg(vec![idx(format!("http://{addr}/index.json"), 1)])
        })
        .unwrap();
        let err = client
            .resolve("foo", &VersionSelector::Latest, None, true)
            .await
            .unwrap_err();
        assert!(
            matches!(err, RegistryError::TooLarge { limit: 10_000, .. }),
            "{err}"
        );
    }

    #[tokio::test]
    async fn ranges_pick_highest_release() {
        let mut e = entry("foo", "2.1.0");
        let src = |v: &str| json!([{"type": "archive", "url": format!("https://e.com/foo-{v}.tgz"), "checksum": sha('c')}]);
        e["releases"] = json!([
            {"version": "1.2.0", "install_sources": src("1.2.0")},
            {"version": "1.9.3", "install_sources": src("1.9.3"), "dependencies": {"packs": ["core@^1"]}},
            {"version": "1.10.0", "install_sources": src("1.10.0"), "yanked": true},
            {"version": "2.0.5", "install_sources": src("2.0.5")}
        ]);
        let s = serve(index_doc(vec![e])).await;
        let client = RegistryClient::new(cfg(vec![idx(s.url(), 1)])).unwrap();
        let v = |r: Resolved| r.version.to_string();
        let res = |q: &'static str| {
            let client = client.clone();
            async move { client.resolve("foo", &sel(q), None, true).await }
        };
        assert_eq!(v(res("^1").await.unwrap()), "1.9.3");
        let r = res("~1.9").await.unwrap();
        assert_eq!(r.dependencies, ["core@^1"]);
        assert_eq!(r.install_sources[0].url(), "https://e.com/foo-1.9.3.tgz");
        assert_eq!(v(res(">=1.0, <2").await.unwrap()), "1.9.3");
        assert_eq!(v(res("1.x").await.unwrap()), "1.9.3");
        assert_eq!(v(res("2.0.x").await.unwrap()), "2.0.5");
        assert_eq!(v(res("*").await.unwrap()), "2.1.0");
        let r = res("1.10.0").await.unwrap();
        assert!(r.yanked);
        assert_eq!(
            v(client
                .resolve("foo", &VersionSelector::Latest, None, true)
                .await
                .unwrap()),
            "2.1.0"
        );
        let err = res("^3").await.unwrap_err();
        assert!(
            err.to_string()
                .contains("2.1.0, 2.0.5, 1.10.0 (yanked), 1.9.3, 1.2.0"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn search_dedupes_by_ref_with_priority() {
        let a = serve(index_doc(vec![
            entry("foo", "1.0.0"),
            entry("bar", "1.0.0"),
        ]))
        .await;
        let b = serve(index_doc(vec![
            entry("foo", "2.0.0"),
            entry("baz", "1.0.0"),
            entry("foobar", "0.1.0"),
        ]))
        .await;
        let broken = serve(String::new()).await;
        broken.set_status(503);
        let client = RegistryClient::new(cfg(vec![
            idx(b.url(), 20),
            idx(a.url(), 10),
            idx(broken.url(), 30),
        ]))
        .unwrap();
        let hits = client.search("FOO").await.unwrap();
        let rows: Vec<_> = hits
            .iter()
            .map(|h| (h.pack_ref.as_str(), h.version.to_string()))
            .collect();
        assert_eq!(
            rows,
            [
                ("foo", "1.0.0".to_string()),
                ("foobar", "0.1.0".to_string())
            ]
        );
        assert_eq!(hits[0].index_url, a.url());
        // keywords, label and description match too
        assert_eq!(client.search("kw-baz").await.unwrap()[0].pack_ref, "baz");
        assert_eq!(client.search("BAR LABEL").await.unwrap()[0].pack_ref, "bar");
        assert_eq!(client.search("the baz").await.unwrap()[0].pack_ref, "baz");
        assert_eq!(client.search("").await.unwrap().len(), 4);

        // Every index failing is an error.
        let only_broken = RegistryClient::new(cfg(vec![idx(broken.url(), 1)])).unwrap();
        assert!(only_broken.search("x").await.is_err());
    }

    fn exchange_doc() -> String {
        json!({
            "metadata": {"generated_ts": 1_770_315_167, "hash": "x"},
            "packs": {
                "foo": {"name": "foo", "version": "1.2.3", "author": "a",
                        "description": "Foo things", "keywords": ["widgets"],
                        "repo_url": "https://github.com/StackStorm-Exchange/stackstorm-foo"},
                "Only A": {"ref": "only_a", "name": "Only A", "version": "0.1.0",
                           "repo_url": "https://github.com/StackStorm-Exchange/stackstorm-only_a"}
            }
        })
        .to_string()
    }

    #[tokio::test]
    async fn an_exchange_index_needs_an_unverified_registry() {
        let exchange = serve(exchange_doc()).await;
        let lower = serve(index_doc(vec![entry("foo", "1.2.3")])).await;
        let mut named = idx(exchange.url(), 1);
        named.name = Some("exchange".into());
        let client = RegistryClient::new(cfg(vec![named.clone(), idx(lower.url(), 2)])).unwrap();
        let err = client
            .resolve("foo", &VersionSelector::Latest, None, true)
            .await
            .unwrap_err();
        assert!(
            matches!(err, RegistryError::UnverifiedIndexNotTrusted { .. }),
            "{err}"
        );
        assert_eq!(err.kind(), FailureKind::Unavailable);
        let text = err.to_string();
        assert!(
            text.contains(
                "set `trust: unverified` on registry 'exchange' in the registries configuration"
            ),
            "{text}"
        );
        assert!(text.contains("stackstorm-exchange-v1"), "{text}");
        // Fail closed: the lower index listing the same ref is not consulted instead.
        assert_eq!(lower.hits(), 0);
        // Search skips it, as it skips an unreachable index.
        let hits = client.search("").await.unwrap();
        assert_eq!(hits.len(), 1, "{hits:?}");
        assert_eq!(hits[0].index_url, lower.url());
        assert!(client.load_all(None, true).await.is_err());
        // Unnamed: the message names the URL.
        let unnamed = RegistryClient::new(cfg(vec![idx(exchange.url(), 1)])).unwrap();
        let text = unnamed
            .resolve("foo", &VersionSelector::Latest, None, true)
            .await
            .unwrap_err()
            .to_string();
        assert!(
            text.contains(&format!("on registry {} in the registries", exchange.url())),
            "{text}"
        );

        // Marked unverified: one version per pack, its repository at tag v<version>.
        named.trust = RegistryTrust::Unverified;
        let trusted = RegistryClient::new(cfg(vec![named, idx(lower.url(), 2)])).unwrap();
        let r = trusted
            .resolve("foo", &VersionSelector::Latest, None, true)
            .await
            .unwrap();
        assert_eq!(r.version, Version::new(1, 2, 3));
        assert_eq!(r.trust, RegistryTrust::Unverified);
        assert_eq!(r.index_format, IndexFormat::StackStormExchange);
        assert_eq!(
            r.install_sources,
            [InstallSource::Git {
                url: "https://github.com/StackStorm-Exchange/stackstorm-foo".into(),
                git_ref: "v1.2.3".into(),
                checksum: None,
            }]
        );
        let err = trusted
            .resolve("foo", &sel("1.0.0"), None, true)
            .await
            .unwrap_err();
        assert!(
            matches!(err, RegistryError::VersionNotFound { .. }),
            "{err}"
        );
        let hits = trusted.search("WIDGET").await.unwrap();
        assert_eq!(hits.len(), 1, "{hits:?}");
        assert_eq!(hits[0].pack_ref, "foo");
        assert_eq!(hits[0].index_url, exchange.url());
        assert_eq!(hits[0].versions, ["1.2.3"]);
        let only_a = trusted
            .resolve("only_a", &VersionSelector::Latest, None, true)
            .await
            .unwrap();
        assert_eq!(only_a.version, Version::new(0, 1, 0));
        assert_eq!(trusted.indices()[0].trust, RegistryTrust::Unverified);

        // A request's own registry_url in that format is refused, unless the operator
        // configured that very URL as unverified.
        let other = serve(exchange_doc()).await;
        let err = trusted
            .resolve("foo", &VersionSelector::Latest, Some(&other.url()), true)
            .await
            .unwrap_err();
        assert!(
            matches!(err, RegistryError::UnverifiedRequestIndex { .. }),
            "{err}"
        );
        assert_eq!(err.kind(), FailureKind::InvalidRequest);
        let r = trusted
            .resolve("foo", &VersionSelector::Latest, Some(&exchange.url()), true)
            .await
            .unwrap();
        assert_eq!(r.trust, RegistryTrust::Unverified);
    }

    #[tokio::test]
    async fn an_attune_index_under_unverified_trust_keeps_its_checksums() {
        let a = serve(index_doc(vec![entry("foo", "1.0.0")])).await;
        let mut ia = idx(a.url(), 1);
        ia.trust = RegistryTrust::Unverified;
        let client = RegistryClient::new(cfg(vec![ia])).unwrap();
        let r = client
            .resolve("foo", &VersionSelector::Latest, None, true)
            .await
            .unwrap();
        assert_eq!(r.trust, RegistryTrust::Unverified);
        assert_eq!(r.index_format, IndexFormat::Attune);
        assert!(r.install_sources.iter().all(|s| s.checksum().is_some()));
    }
}
