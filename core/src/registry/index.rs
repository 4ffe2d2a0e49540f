//! The registry index model: format "1.0" plus the backward-compatible
//! multi-version extension ("1.1", `releases[]`). See `docs/registry-index.md`.
//!
//! Parsing is tolerant by design:
//! * unknown keys are ignored at every level;
//! * missing optional fields take defaults;
//! * a malformed entry (or a malformed release of an entry) is skipped and recorded
//!   in [`PackIndex::warnings`] instead of failing the whole index;
//! * only a malformed top level (not an object, no `packs` array, an unknown
//!   format major version) is an error.
//!
//! A document whose `packs` is an object and which has `metadata` is the StackStorm
//! Exchange index, read by [`super::exchange`] into the same model.

use std::collections::HashSet;
use std::fmt;
use std::str::FromStr;

use semver::Version;
use serde::{Deserialize, Deserializer};
use serde_json::{Map, Value};

use super::version::{PackRequirement, RequirementError, VersionSelector};
use crate::checksum::{ChecksumError, Digest};
use crate::manifest::is_valid_pack_ref;

/// The index format major version this client understands.
pub const SUPPORTED_FORMAT_MAJOR: u64 = 1;
/// The newest format version this client knows about (1.1 = `releases[]`).
pub const NEWEST_KNOWN_FORMAT: &str = "1.1";

/// Which document format an index was read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IndexFormat {
    /// Attune's format (1.0 and the 1.1 `releases[]` extension): every source has a
    /// checksum.
    Attune,
    /// The StackStorm Exchange `index.json`: git repositories and versions, no
    /// checksums. Only usable from a registry configured with `trust: unverified`.
    StackStormExchange,
}

impl IndexFormat {
    /// The name used in messages and documentation.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Attune => "attune",
            Self::StackStormExchange => "stackstorm-exchange-v1",
        }
    }

    /// Whether the format carries checksums for every install source.
    pub fn has_checksums(self) -> bool {
        matches!(self, Self::Attune)
    }
}

impl fmt::Display for IndexFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A parsed registry index.
#[derive(Debug, Clone)]
pub struct PackIndex {
    /// The document format it was read from.
    pub format: IndexFormat,
    pub registry_name: String,
    pub registry_url: String,
    /// The `version` field of the index ("1.0", "1.1"); "1.0" when absent.
    pub format_version: String,
    /// ISO-8601 string as published; not interpreted.
    pub last_updated: String,
    /// Valid entries, in index order. Refs are unique (first occurrence wins).
    pub packs: Vec<PackEntry>,
    /// Entries or releases that were skipped, and other oddities.
    pub warnings: Vec<IndexWarning>,
}

/// Something in the index that was ignored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexWarning {
    /// Position in `packs[]`; `None` for a top-level remark, and for an entry of a
    /// format whose entries are keyed (the Exchange's), whose `reason` names the key.
    pub entry: Option<usize>,
    /// The entry's `ref`, when it could be read.
    pub pack_ref: Option<String>,
    /// `true` when the whole entry was dropped; `false` when only part of it
    /// (one release) was.
    pub entry_skipped: bool,
    pub reason: String,
}

impl fmt::Display for IndexWarning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.entry, &self.pack_ref) {
            (Some(i), Some(r)) => write!(f, "packs[{i}] ('{r}'): {}", self.reason),
            (Some(i), None) => write!(f, "packs[{i}]: {}", self.reason),
            (None, _) => f.write_str(&self.reason),
        }
    }
}

/// The index as a whole could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IndexError {
    #[error("not valid JSON: {0}")]
    Json(String),
    #[error("the top level is not a JSON object")]
    NotAnObject,
    #[error("there is no `packs` array at the top level")]
    NoPacks,
    #[error(
        "`packs` is an object but there is no `metadata` object: this is neither Attune's format \
         (a `packs` array) nor the StackStorm Exchange format (`metadata` and a `packs` object)"
    )]
    UnrecognisedShape,
    #[error(
        "the index lists {count} packs, more than the limit of {limit}; it is refused as a whole \
         (dropping some would hand their refs to lower-priority indices)"
    )]
    TooManyPacks { count: usize, limit: usize },
    #[error(
        "unsupported index format version '{0}' (this client understands 1.x, newest known {NEWEST_KNOWN_FORMAT})"
    )]
    UnsupportedFormat(String),
}

/// One pack of the index. The top-level fields describe the latest release
/// (what a format-1.0 client installs); [`releases`](Self::releases) is the
/// effective version set.
#[derive(Debug, Clone, PartialEq)]
pub struct PackEntry {
    pub pack_ref: String,
    pub label: String,
    pub description: String,
    pub use_case: Option<String>,
    /// The entry's own (top-level) version.
    pub version: Version,
    pub author: String,
    pub email: Option<String>,
    pub homepage: Option<String>,
    pub repository: Option<String>,
    pub license: String,
    pub keywords: Vec<String>,
    pub runtime_deps: Vec<String>,
    /// Sources of the top-level version.
    pub install_sources: Vec<InstallSource>,
    pub contents: PackContents,
    /// Dependencies of the top-level version.
    pub dependencies: Option<PackDependencies>,
    /// Open metadata object (`downloads`, `stars`, `category`, …), kept as is.
    pub meta: Map<String, Value>,
    /// The effective version set: the top-level version ∪ `releases[]`, unique by
    /// version, sorted highest first.
    pub releases: Vec<Release>,
}

/// One installable version of a pack.
#[derive(Debug, Clone, PartialEq)]
pub struct Release {
    pub version: Version,
    pub install_sources: Vec<InstallSource>,
    pub dependencies: Option<PackDependencies>,
    /// Yanked releases are only selected by an exact pin.
    pub yanked: bool,
}

impl PackEntry {
    /// The release that `selector` picks: the highest non-yanked matching version
    /// (for `Latest`, stable releases beat pre-releases); an exact pin may pick a
    /// yanked release.
    pub fn select(&self, selector: &VersionSelector) -> Option<&Release> {
        match selector {
            VersionSelector::Exact(v) => self.releases.iter().find(|r| &r.version == v),
            VersionSelector::Latest => self
                .releases
                .iter()
                .find(|r| !r.yanked && r.version.pre.is_empty())
                .or_else(|| self.releases.iter().find(|r| !r.yanked)),
            VersionSelector::Range(req) => self
                .releases
                .iter()
                .find(|r| !r.yanked && req.matches(&r.version)),
        }
    }

    /// The release for exactly `version`, yanked or not.
    pub fn release(&self, version: &Version) -> Option<&Release> {
        self.releases.iter().find(|r| &r.version == version)
    }

    /// Human-readable version list, highest first, yanked ones marked.
    pub fn available_versions(&self) -> Vec<String> {
        self.releases
            .iter()
            .map(|r| {
                if r.yanked {
                    format!("{} (yanked)", r.version)
                } else {
                    r.version.to_string()
                }
            })
            .collect()
    }

    /// Case-insensitive substring match on ref, label, description and keywords.
    /// An empty keyword matches everything.
    pub fn matches_keyword(&self, keyword: &str) -> bool {
        let k = keyword.trim().to_lowercase();
        if k.is_empty() {
            return true;
        }
        self.pack_ref.to_lowercase().contains(&k)
            || self.label.to_lowercase().contains(&k)
            || self.description.to_lowercase().contains(&k)
            || self.keywords.iter().any(|w| w.to_lowercase().contains(&k))
    }
}

/// Where and how to fetch one version of a pack.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InstallSource {
    /// `git clone <url>` then checkout `git_ref`; `checksum` is the
    /// attune-pack-file-v1 directory checksum. Always present in Attune's format;
    /// `None` only for formats without checksums (the StackStorm Exchange), whose
    /// checkouts are recorded as unverified.
    Git {
        url: String,
        git_ref: String,
        checksum: Option<Digest>,
    },
    /// Download `url`; `checksum` is the digest of the archive bytes.
    Archive { url: String, checksum: Digest },
}

impl InstallSource {
    pub fn url(&self) -> &str {
        match self {
            Self::Git { url, .. } | Self::Archive { url, .. } => url,
        }
    }
    /// The digest the download must match; `None` when the index gave none.
    pub fn checksum(&self) -> Option<&Digest> {
        match self {
            Self::Git { checksum, .. } => checksum.as_ref(),
            Self::Archive { checksum, .. } => Some(checksum),
        }
    }
    /// `"git"` or `"archive"`, as in the index.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Git { .. } => "git",
            Self::Archive { .. } => "archive",
        }
    }
}

/// `contents`: the components a pack ships (informational).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(default)]
pub struct PackContents {
    #[serde(deserialize_with = "null_as_default")]
    pub actions: Vec<ComponentSummary>,
    #[serde(deserialize_with = "null_as_default")]
    pub sensors: Vec<ComponentSummary>,
    #[serde(deserialize_with = "null_as_default")]
    pub triggers: Vec<ComponentSummary>,
    #[serde(deserialize_with = "null_as_default")]
    pub rules: Vec<ComponentSummary>,
    #[serde(deserialize_with = "null_as_default")]
    pub workflows: Vec<ComponentSummary>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
pub struct ComponentSummary {
    pub name: String,
    #[serde(default, deserialize_with = "null_as_default")]
    pub description: String,
}

/// `dependencies`: requirements of one version.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(default)]
pub struct PackDependencies {
    pub attune_version: Option<String>,
    pub python_version: Option<String>,
    pub nodejs_version: Option<String>,
    /// `"ref"` or `"ref@spec"` strings, validated with [`PackRequirement::parse`].
    #[serde(deserialize_with = "null_as_default")]
    pub packs: Vec<String>,
}

impl PackDependencies {
    /// The pack requirements, parsed. Entries of a loaded index always parse.
    pub fn pack_requirements(&self) -> Vec<PackRequirement> {
        self.packs
            .iter()
            .filter_map(|p| PackRequirement::parse(p).ok())
            .collect()
    }
}

pub(super) fn null_as_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct RawEntry {
    #[serde(rename = "ref")]
    pack_ref: Option<String>,
    label: Option<String>,
    description: Option<String>,
    use_case: Option<String>,
    version: Option<String>,
    author: Option<String>,
    email: Option<String>,
    homepage: Option<String>,
    repository: Option<String>,
    license: Option<String>,
    #[serde(deserialize_with = "null_as_default")]
    keywords: Vec<String>,
    #[serde(deserialize_with = "null_as_default")]
    runtime_deps: Vec<String>,
    install_sources: Option<Vec<Value>>,
    #[serde(deserialize_with = "null_as_default")]
    contents: PackContents,
    dependencies: Option<PackDependencies>,
    meta: Option<Value>,
    releases: Option<Vec<Value>>,
}

#[derive(Deserialize)]
struct RawRelease {
    version: Option<String>,
    install_sources: Option<Vec<Value>>,
    dependencies: Option<PackDependencies>,
    #[serde(default, deserialize_with = "null_as_default")]
    yanked: bool,
}

#[derive(Deserialize)]
struct RawGit {
    url: Option<String>,
    #[serde(rename = "ref")]
    git_ref: Option<String>,
    checksum: Option<String>,
}

#[derive(Deserialize)]
struct RawArchive {
    url: Option<String>,
    checksum: Option<String>,
}

impl PackIndex {
    /// Parses an index document from bytes.
    pub fn from_slice(bytes: &[u8]) -> Result<Self, IndexError> {
        let v: Value =
            serde_json::from_slice(bytes).map_err(|e| IndexError::Json(e.to_string()))?;
        Self::from_value(v)
    }

    /// Parses an index document read from `index_url`: a relative install source URL
    /// (`hello-1.0.0.tar.gz`, `../dist/hello.tar.gz`) is resolved against it, so an
    /// index can be published beside its archives. From a `file://` index the resolved
    /// `file://` URLs are accepted when they stay inside the index's directory.
    pub fn from_slice_at(bytes: &[u8], index_url: &url::Url) -> Result<Self, IndexError> {
        let v: Value =
            serde_json::from_slice(bytes).map_err(|e| IndexError::Json(e.to_string()))?;
        Self::parse(v, Some(index_url))
    }

    /// Parses an already-decoded JSON document.
    pub fn from_value(v: Value) -> Result<Self, IndexError> {
        Self::parse(v, None)
    }

    fn parse(v: Value, base: Option<&url::Url>) -> Result<Self, IndexError> {
        let Value::Object(mut top) = v else {
            return Err(IndexError::NotAnObject);
        };
        if top.get("packs").is_some_and(Value::is_object) {
            if !top.get("metadata").is_some_and(Value::is_object) {
                return Err(IndexError::UnrecognisedShape);
            }
            return super::exchange::parse(top);
        }
        let mut warnings = Vec::new();
        let format_version = match top.get("version") {
            None | Some(Value::Null) => {
                warnings.push(IndexWarning {
                    entry: None,
                    pack_ref: None,
                    entry_skipped: false,
                    reason: "index has no `version` field; assuming format 1.0".into(),
                });
                "1.0".to_string()
            }
            Some(Value::String(s)) => {
                let major = s
                    .split('.')
                    .next()
                    .and_then(|m| m.trim().parse::<u64>().ok());
                if major != Some(SUPPORTED_FORMAT_MAJOR) {
                    return Err(IndexError::UnsupportedFormat(s.clone()));
                }
                s.clone()
            }
            Some(other) => return Err(IndexError::UnsupportedFormat(other.to_string())),
        };
        let Some(Value::Array(raw_packs)) = top.remove("packs") else {
            return Err(IndexError::NoPacks);
        };
        let text = |k: &str| {
            top.get(k)
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string()
        };

        let mut packs: Vec<PackEntry> = Vec::with_capacity(raw_packs.len());
        let mut seen: HashSet<String> = HashSet::new();
        for (i, raw) in raw_packs.into_iter().enumerate() {
            let pack_ref = raw.get("ref").and_then(Value::as_str).map(str::to_string);
            match parse_entry(raw, base) {
                Ok((entry, release_warnings)) => {
                    for reason in release_warnings {
                        warnings.push(IndexWarning {
                            entry: Some(i),
                            pack_ref: pack_ref.clone(),
                            entry_skipped: false,
                            reason,
                        });
                    }
                    if !seen.insert(entry.pack_ref.clone()) {
                        warnings.push(IndexWarning {
                            entry: Some(i),
                            pack_ref,
                            entry_skipped: true,
                            reason: "duplicate ref; the first entry with this ref is used".into(),
                        });
                        continue;
                    }
                    packs.push(entry);
                }
                Err(problem) => warnings.push(IndexWarning {
                    entry: Some(i),
                    pack_ref,
                    entry_skipped: true,
                    reason: problem.to_string(),
                }),
            }
        }
        Ok(Self {
            format: IndexFormat::Attune,
            registry_name: text("registry_name"),
            registry_url: text("registry_url"),
            format_version,
            last_updated: text("last_updated"),
            packs,
            warnings,
        })
    }

    /// The entry with exactly this ref (case-sensitive).
    pub fn get(&self, pack_ref: &str) -> Option<&PackEntry> {
        self.packs.iter().find(|p| p.pack_ref == pack_ref)
    }

    /// If an entry with this ref was present but dropped as malformed, why.
    pub fn skipped_entry(&self, pack_ref: &str) -> Option<&IndexWarning> {
        self.warnings
            .iter()
            .find(|w| w.entry_skipped && w.pack_ref.as_deref() == Some(pack_ref))
    }

    /// Entries matching `keyword` (see [`PackEntry::matches_keyword`]).
    pub fn search<'a>(&'a self, keyword: &'a str) -> impl Iterator<Item = &'a PackEntry> + 'a {
        self.packs
            .iter()
            .filter(move |p| p.matches_keyword(keyword))
    }
}

impl FromStr for PackIndex {
    type Err = IndexError;
    fn from_str(s: &str) -> Result<Self, IndexError> {
        Self::from_slice(s.as_bytes())
    }
}

/// Parses one entry. Returns the entry plus warnings about skipped releases.
fn parse_entry(
    raw: Value,
    base: Option<&url::Url>,
) -> Result<(PackEntry, Vec<String>), EntryProblem> {
    if !raw.is_object() {
        return Err(EntryProblem::EntryNotObject);
    }
    let e: RawEntry = serde_json::from_value(raw).map_err(EntryProblem::MalformedEntry)?;
    let pack_ref = e.pack_ref.ok_or(EntryProblem::Missing("ref"))?;
    if !is_valid_pack_ref(&pack_ref) {
        return Err(EntryProblem::InvalidRef(pack_ref));
    }
    let version = parse_version(e.version.as_deref())?;
    let install_sources = parse_sources(e.install_sources, base)?;
    check_dependencies(e.dependencies.as_ref())?;

    let mut releases = vec![Release {
        version: version.clone(),
        install_sources: install_sources.clone(),
        dependencies: e.dependencies.clone(),
        yanked: false,
    }];
    let mut release_warnings = Vec::new();
    for (j, raw) in e.releases.unwrap_or_default().into_iter().enumerate() {
        let rel = match parse_release(raw, base) {
            Ok(r) => r,
            Err(reason) => {
                release_warnings.push(format!("releases[{j}] skipped: {reason}"));
                continue;
            }
        };
        if let Some(existing) = releases.iter_mut().find(|r| r.version == rel.version) {
            if rel.version == version
                && existing.install_sources == rel.install_sources
                && existing
                    .dependencies
                    .as_ref()
                    .unwrap_or(&PackDependencies::default())
                    == rel
                        .dependencies
                        .as_ref()
                        .unwrap_or(&PackDependencies::default())
            {
                // The latest release repeated in `releases[]`: only `yanked` adds anything.
                existing.yanked |= rel.yanked;
            } else {
                release_warnings.push(format!(
                    "releases[{j}] skipped: version {} is listed more than once with different contents",
                    rel.version
                ));
            }
            continue;
        }
        releases.push(rel);
    }
    releases.sort_by(|a, b| b.version.cmp(&a.version));

    let meta = match e.meta {
        Some(Value::Object(m)) => m,
        _ => Map::new(),
    };
    Ok((
        PackEntry {
            label: e
                .label
                .filter(|l| !l.is_empty())
                .unwrap_or_else(|| pack_ref.clone()),
            pack_ref,
            description: e.description.unwrap_or_default(),
            use_case: e.use_case,
            version,
            author: e.author.unwrap_or_default(),
            email: e.email,
            homepage: e.homepage,
            repository: e.repository,
            license: e.license.unwrap_or_else(|| "NOASSERTION".into()),
            keywords: e.keywords,
            runtime_deps: e.runtime_deps,
            install_sources,
            contents: e.contents,
            dependencies: e.dependencies,
            meta,
            releases,
        },
        release_warnings,
    ))
}

fn parse_release(raw: Value, base: Option<&url::Url>) -> Result<Release, EntryProblem> {
    if !raw.is_object() {
        return Err(EntryProblem::NotObject);
    }
    let r: RawRelease = serde_json::from_value(raw).map_err(EntryProblem::Malformed)?;
    let version = parse_version(r.version.as_deref())?;
    let install_sources = parse_sources(r.install_sources, base)?;
    check_dependencies(r.dependencies.as_ref())?;
    Ok(Release {
        version,
        install_sources,
        dependencies: r.dependencies,
        yanked: r.yanked,
    })
}

pub(super) fn parse_version(v: Option<&str>) -> Result<Version, EntryProblem> {
    let v = v.ok_or(EntryProblem::Missing("version"))?;
    Version::parse(v).map_err(|source| EntryProblem::InvalidVersion {
        version: v.to_string(),
        source,
    })
}

pub(super) fn check_dependencies(d: Option<&PackDependencies>) -> Result<(), EntryProblem> {
    for p in d.map(|d| d.packs.as_slice()).unwrap_or_default() {
        PackRequirement::parse(p).map_err(EntryProblem::Dependency)?;
    }
    Ok(())
}

fn parse_sources(
    raw: Option<Vec<Value>>,
    base: Option<&url::Url>,
) -> Result<Vec<InstallSource>, EntryProblem> {
    let raw = raw.unwrap_or_default();
    if raw.is_empty() {
        return Err(EntryProblem::NoInstallSources);
    }
    raw.into_iter()
        .enumerate()
        .map(|(index, s)| {
            parse_source(s, base).map_err(|problem| EntryProblem::InstallSource {
                index,
                problem: Box::new(problem),
            })
        })
        .collect()
}

fn parse_source(raw: Value, base: Option<&url::Url>) -> Result<InstallSource, EntryProblem> {
    let kind = raw
        .get("type")
        .and_then(Value::as_str)
        .ok_or(EntryProblem::Missing("type"))?
        .to_string();
    match kind.as_str() {
        "git" => {
            let g: RawGit = serde_json::from_value(raw).map_err(EntryProblem::Malformed)?;
            let git_ref = g.git_ref.ok_or(EntryProblem::GitWithoutRef)?;
            if git_ref.is_empty()
                || git_ref.starts_with('-')
                || git_ref.chars().any(char::is_control)
            {
                return Err(EntryProblem::UnacceptableGitRef(git_ref));
            }
            Ok(InstallSource::Git {
                url: resolve_source_url(g.url, base)?,
                git_ref,
                checksum: Some(parse_checksum(g.checksum)?),
            })
        }
        "archive" => {
            let a: RawArchive = serde_json::from_value(raw).map_err(EntryProblem::Malformed)?;
            Ok(InstallSource::Archive {
                url: resolve_source_url(a.url, base)?,
                checksum: parse_checksum(a.checksum)?,
            })
        }
        other => Err(EntryProblem::UnknownSourceType(other.to_string())),
    }
}

fn parse_checksum(c: Option<String>) -> Result<Digest, EntryProblem> {
    Digest::parse(&c.ok_or(EntryProblem::Missing("checksum"))?).map_err(EntryProblem::Checksum)
}

/// A source URL, resolved against the index's own URL when relative (without one,
/// a relative URL is invalid). `file://` is accepted only from a `file://` index and
/// only inside that index's directory: the operator who put the index there vouches
/// for that directory, and a request-supplied file index cannot reach further.
fn resolve_source_url(u: Option<String>, base: Option<&url::Url>) -> Result<String, EntryProblem> {
    let u = u.ok_or(EntryProblem::Missing("url"))?;
    let parsed = match (url::Url::parse(&u), base) {
        (Ok(parsed), _) => parsed,
        (Err(url::ParseError::RelativeUrlWithoutBase), Some(base)) => {
            base.join(&u).map_err(EntryProblem::InvalidUrl)?
        }
        (Err(e), _) => return Err(EntryProblem::InvalidUrl(e)),
    };
    if parsed.scheme() != "file" {
        return check_source_url(Some(parsed.into()));
    }
    let index_dir = base
        .filter(|b| b.scheme() == "file")
        .and_then(|b| b.join(".").ok())
        .ok_or_else(|| EntryProblem::UrlScheme("file".into()))?;
    if !parsed.path().starts_with(index_dir.path())
        || parsed.query().is_some()
        || parsed.host_str().is_some_and(|h| !h.is_empty())
    {
        return Err(EntryProblem::FileUrlOutsideIndex {
            url: parsed.into(),
            index_dir: index_dir.into(),
        });
    }
    Ok(parsed.into())
}

/// Structural checks only: the downloader applies the full outbound policy
/// (https-only for git, host approval, …) when it fetches.
pub(super) fn check_source_url(u: Option<String>) -> Result<String, EntryProblem> {
    let u = u.ok_or(EntryProblem::Missing("url"))?;
    let parsed = url::Url::parse(&u).map_err(EntryProblem::InvalidUrl)?;
    if !matches!(parsed.scheme(), "https" | "http") {
        return Err(EntryProblem::UrlScheme(parsed.scheme().to_string()));
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(EntryProblem::UrlCredentials);
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err(EntryProblem::UrlWithoutHost);
    }
    Ok(u)
}

/// Why an index entry, one of its releases or one of its install sources is skipped.
#[derive(Debug, thiserror::Error)]
pub enum EntryProblem {
    #[error("entry is not a JSON object")]
    EntryNotObject,
    #[error("not a JSON object")]
    NotObject,
    #[error("malformed entry: {0}")]
    MalformedEntry(#[source] serde_json::Error),
    #[error("malformed: {0}")]
    Malformed(#[source] serde_json::Error),
    #[error("missing `{0}`")]
    Missing(&'static str),
    #[error("ref '{0}' is invalid (expected ^[a-z][a-z0-9_-]+$, 2 to 64 characters)")]
    InvalidRef(String),
    #[error("version '{version}' is not a semantic version: {source}")]
    InvalidVersion {
        version: String,
        #[source]
        source: semver::Error,
    },
    #[error("dependencies.packs: {0}")]
    Dependency(#[source] RequirementError),
    #[error("no `install_sources`")]
    NoInstallSources,
    #[error("install_sources[{index}]: {problem}")]
    InstallSource {
        index: usize,
        #[source]
        problem: Box<EntryProblem>,
    },
    #[error("git source without `ref`")]
    GitWithoutRef,
    #[error("git ref '{0}' is not acceptable")]
    UnacceptableGitRef(String),
    #[error("unknown source type '{0}'")]
    UnknownSourceType(String),
    #[error("{0}")]
    Checksum(#[source] ChecksumError),
    #[error("url is invalid: {0}")]
    InvalidUrl(#[source] url::ParseError),
    #[error("url scheme '{0}' is not allowed")]
    UrlScheme(String),
    #[error("url must not contain credentials")]
    UrlCredentials,
    #[error("url has no host")]
    UrlWithoutHost,
    #[error(
        "url {url} is not inside the index's directory {index_dir}; a file:// index may \
         name only archives and repositories beside it"
    )]
    FileUrlOutsideIndex { url: String, index_dir: String },
    #[error("url {0}")]
    UrlCarriesCredentials(#[source] crate::source::SourceError),
    #[error("`{field}` is {len} bytes long, more than the limit of {limit}")]
    FieldTooLong {
        field: &'static str,
        len: usize,
        limit: usize,
    },
    #[error("`{field}` has {count} items, more than the limit of {limit}")]
    TooManyItems {
        field: &'static str,
        count: usize,
        limit: usize,
    },
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checksum::DigestAlgorithm;
    use serde_json::json;

    const FIXTURE: &str = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../server/testdata/attune-standard-index.json"
    );

    fn sha(c: char) -> String {
        format!("sha256:{}", c.to_string().repeat(64))
    }

    fn entry(r: &str, v: &str) -> Value {
        json!({
            "ref": r, "label": r, "description": format!("{r} pack"), "version": v,
            "author": "t", "license": "MIT", "keywords": [], "runtime_deps": [],
            "install_sources": [
                {"type": "git", "url": format!("https://example.com/{r}.git"), "ref": format!("v{v}"), "checksum": sha('a')},
                {"type": "archive", "url": format!("https://example.com/{r}-{v}.tar.gz"), "checksum": sha('b')}
            ],
            "contents": {"actions": [], "sensors": [], "triggers": [], "rules": [], "workflows": []}
        })
    }

    fn index(packs: Vec<Value>) -> Value {
        json!({"registry_name": "t", "registry_url": "https://example.com", "version": "1.0",
               "last_updated": "2026-01-01T00:00:00Z", "packs": packs})
    }

    #[test]
    fn loads_real_fixture() {
        let bytes = std::fs::read(FIXTURE).unwrap();
        let idx = PackIndex::from_slice(&bytes).unwrap();
        assert_eq!(idx.format, IndexFormat::Attune);
        assert_eq!(idx.packs.len(), 44);
        assert!(idx.warnings.is_empty(), "{:?}", idx.warnings);
        assert_eq!(idx.registry_name, "Attune Standard Pack Index");
        assert_eq!(idx.format_version, "1.0");

        let a = idx.get("activedirectory").unwrap();
        assert_eq!(a.version, Version::new(0, 1, 0));
        assert_eq!(a.releases.len(), 1);
        match &a.install_sources[0] {
            InstallSource::Git {
                url,
                git_ref,
                checksum,
            } => {
                let checksum = checksum.as_ref().unwrap();
                assert_eq!(url, "https://github.com/attune-packs/activedirectory.git");
                assert_eq!(git_ref, "0ca87f5d99b7e82c145a3d5c4ef5fb0b8228c5c2");
                assert_eq!(
                    checksum.to_string(),
                    "sha256:dd59734f1f73978cd6e6c9b2415db4f7aeaa0813180eb3dfbe2714d2247250d1"
                );
            }
            other => panic!("expected git, got {other:?}"),
        }
        match &a.install_sources[1] {
            InstallSource::Archive { url, checksum } => {
                assert_eq!(
                    url,
                    "https://codeload.github.com/attune-packs/activedirectory/tar.gz/0ca87f5d99b7e82c145a3d5c4ef5fb0b8228c5c2"
                );
                assert_eq!(
                    checksum.hex(),
                    "0d260c8b6c5fea4550bf0ae2ac23f8015502b6e053cb869614b58df29775698a"
                );
                assert_eq!(checksum.algorithm(), DigestAlgorithm::Sha256);
            }
            other => panic!("expected archive, got {other:?}"),
        }
        let ms = idx.get("msexchange").unwrap();
        assert_eq!(
            ms.dependencies.as_ref().unwrap().packs,
            vec!["core".to_string()]
        );
        let aws = idx.get("aws").unwrap();
        let rel = aws.select(&VersionSelector::Latest).unwrap();
        assert_eq!(rel.version, Version::new(1, 0, 0));
        assert_eq!(rel.install_sources.len(), 2);
        assert!(
            aws.select(&VersionSelector::parse(Some("^2")).unwrap())
                .is_none()
        );
        assert!(idx.get("nodejs_example").is_some());
        assert!(idx.get("AWS").is_none());
        assert!(
            idx.search("ACTIVE directory")
                .any(|p| p.pack_ref == "activedirectory")
        );
        assert!(!a.meta.is_empty());
    }

    #[test]
    fn unknown_keys_everywhere_are_ignored() {
        let mut e = entry("foo", "1.0.0");
        e["new_field"] = json!({"x": 1});
        e["install_sources"][0]["mirror_of"] = json!("y");
        e["install_sources"][1]["size"] = json!(123);
        e["contents"]["actions"] = json!([{"name": "a", "description": "d", "extra": true}]);
        e["contents"]["dashboards"] = json!([]);
        e["dependencies"] = json!({"packs": ["core@^1"], "rust_version": "1.95"});
        e["meta"] = json!({"stars": 3, "whatever": [1, 2]});
        let mut doc = index(vec![e]);
        doc["signature"] = json!("...");
        let idx = PackIndex::from_value(doc).unwrap();
        assert!(idx.warnings.is_empty(), "{:?}", idx.warnings);
        let p = idx.get("foo").unwrap();
        assert_eq!(p.contents.actions[0].name, "a");
        assert_eq!(p.meta["stars"], json!(3));
        assert_eq!(
            p.dependencies.as_ref().unwrap().pack_requirements()[0].pack_ref,
            "core"
        );
    }

    #[test]
    fn missing_optional_fields_default() {
        let doc = json!({"version": "1.0", "packs": [{
            "ref": "min", "version": "0.1.0",
            "install_sources": [{"type": "archive", "url": "https://e.com/a.tgz", "checksum": sha('c')}],
            "keywords": null
        }]});
        let idx = PackIndex::from_value(doc).unwrap();
        assert!(idx.warnings.is_empty(), "{:?}", idx.warnings);
        let p = idx.get("min").unwrap();
        assert_eq!(p.label, "min");
        assert!(p.keywords.is_empty());
        assert_eq!(p.contents, PackContents::default());
        assert_eq!(idx.registry_name, "");
    }

    #[test]
    fn bad_entries_are_skipped_with_warnings() {
        let mut bad_version = entry("badver", "1.0");
        bad_version["version"] = json!("one");
        let mut no_ref = entry("x", "1.0.0");
        no_ref.as_object_mut().unwrap().remove("ref");
        let mut unknown_type = entry("oci", "1.0.0");
        unknown_type["install_sources"][1]["type"] = json!("oci");
        let mut md5 = entry("md5", "1.0.0");
        md5["install_sources"][1]["checksum"] = json!("md5:d41d8cd98f00b204e9800998ecf8427e");
        let mut upper = entry("upper", "1.0.0");
        upper["install_sources"][0]["checksum"] = json!(format!("sha256:{}", "A".repeat(64)));
        let mut no_git_ref = entry("nogitref", "1.0.0");
        no_git_ref["install_sources"][0]
            .as_object_mut()
            .unwrap()
            .remove("ref");
        let mut bad_dep = entry("baddep", "1.0.0");
        bad_dep["dependencies"] = json!({"packs": ["core@not a version"]});
        let mut file_url = entry("fileurl", "1.0.0");
        file_url["install_sources"][1]["url"] = json!("file:///etc/passwd");
        let mut no_sources = entry("nosrc", "1.0.0");
        no_sources["install_sources"] = json!([]);
        let mut wrong_type = entry("wrongtype", "1.0.0");
        wrong_type["keywords"] = json!("a,b");
        let doc = index(vec![
            entry("good1", "1.0.0"),
            bad_version,
            no_ref,
            json!("not an object"),
            unknown_type,
            md5,
            upper,
            no_git_ref,
            bad_dep,
            file_url,
            no_sources,
            wrong_type,
            entry("Bad_Ref", "1.0.0"),
            entry("good2", "2.0.0"),
            entry("good1", "9.9.9"),
        ]);
        let idx = PackIndex::from_value(doc).unwrap();
        let refs: Vec<_> = idx.packs.iter().map(|p| p.pack_ref.as_str()).collect();
        assert_eq!(refs, ["good1", "good2"]);
        assert_eq!(idx.get("good1").unwrap().version, Version::new(1, 0, 0));
        assert_eq!(idx.warnings.len(), 13, "{:#?}", idx.warnings);
        let by_ref = |r: &str| idx.skipped_entry(r).unwrap().reason.clone();
        assert!(by_ref("badver").contains("semantic version"));
        assert!(by_ref("oci").contains("unknown source type 'oci'"));
        assert!(
            by_ref("md5").contains("md5 is not accepted"),
            "{}",
            by_ref("md5")
        );
        assert!(by_ref("upper").contains("lowercase"), "{}", by_ref("upper"));
        assert!(by_ref("nogitref").contains("without `ref`"));
        assert!(by_ref("baddep").contains("dependencies.packs"));
        assert!(by_ref("fileurl").contains("scheme 'file'"));
        assert!(by_ref("nosrc").contains("no `install_sources`"));
        assert!(by_ref("wrongtype").contains("malformed"));
        assert!(by_ref("Bad_Ref").contains("invalid"));
        assert!(by_ref("good1").contains("duplicate"));
        let w = &idx.warnings[1];
        assert_eq!(w.entry, Some(2));
        assert_eq!(w.pack_ref, None);
        assert!(w.to_string().starts_with("packs[2]: missing `ref`"));
    }

    #[test]
    fn top_level_errors() {
        assert_eq!(
            PackIndex::from_str("[]").unwrap_err(),
            IndexError::NotAnObject
        );
        assert_eq!(
            PackIndex::from_str("{\"version\":\"1.0\"}").unwrap_err(),
            IndexError::NoPacks
        );
        assert_eq!(
            PackIndex::from_str("{\"version\":\"1.0\",\"packs\":{}}").unwrap_err(),
            IndexError::UnrecognisedShape
        );
        assert!(matches!(
            PackIndex::from_str("{oops").unwrap_err(),
            IndexError::Json(_)
        ));
        assert_eq!(
            PackIndex::from_str("{\"version\":\"2.0\",\"packs\":[]}").unwrap_err(),
            IndexError::UnsupportedFormat("2.0".into())
        );
        assert!(PackIndex::from_str("{\"version\":\"x\",\"packs\":[]}").is_err());
        assert!(PackIndex::from_str("{\"version\":1,\"packs\":[]}").is_err());
        for ok in ["1.0", "1.1", "1.7"] {
            let idx =
                PackIndex::from_str(&format!("{{\"version\":\"{ok}\",\"packs\":[]}}")).unwrap();
            assert_eq!(idx.format_version, ok);
        }
        let idx = PackIndex::from_str("{\"packs\":[]}").unwrap();
        assert_eq!(idx.format_version, "1.0");
        assert_eq!(idx.warnings.len(), 1);
        assert_eq!(idx.warnings[0].entry, None);
    }

    #[test]
    fn checksums() {
        let s = sha('0');
        assert_eq!(Digest::parse(&s).unwrap().to_string(), s);
        let s512 = format!("sha512:{}", "f".repeat(128));
        assert_eq!(
            Digest::parse(&s512).unwrap().algorithm(),
            DigestAlgorithm::Sha512
        );
        for bad in [
            "abc".to_string(),
            format!("sha1:{}", "a".repeat(40)),
            format!("SHA256:{}", "a".repeat(64)),
            format!("sha256:{}", "a".repeat(63)),
            format!("sha256:{}", "g".repeat(64)),
            format!("sha256:{}", "A".repeat(64)),
            format!("sha512:{}", "a".repeat(64)),
        ] {
            assert!(Digest::parse(&bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn multi_version_extension() {
        let mut e = entry("multi", "2.1.0");
        e["dependencies"] = json!({"packs": ["core@^2"]});
        let src = |v: &str, c: char| json!([{"type": "archive", "url": format!("https://e.com/multi-{v}.tgz"), "checksum": sha(c)}]);
        e["releases"] = json!([
            {"version": "2.1.0", "install_sources": e["install_sources"].clone(),
             "dependencies": {"packs": ["core@^2"]}},
            {"version": "2.0.0", "install_sources": src("2.0.0", '1'), "yanked": true},
            {"version": "1.4.2", "install_sources": src("1.4.2", '2'), "dependencies": {"packs": ["core@^1"]}, "notes": "x"},
            {"version": "1.3.0", "install_sources": src("1.3.0", '3')},
            {"version": "3.0.0-rc.1", "install_sources": src("3.0.0-rc.1", '4')},
            {"version": "1.3.0", "install_sources": src("other", '5')},
            {"version": "nope", "install_sources": src("x", '6')},
            {"version": "1.0.0", "install_sources": [{"type": "archive", "url": "https://e.com/x", "checksum": "md5:00"}]}
        ]);
        let mut doc = index(vec![e]);
        doc["version"] = json!("1.1");
        let idx = PackIndex::from_value(doc).unwrap();
        let p = idx.get("multi").unwrap();
        assert_eq!(idx.warnings.len(), 3, "{:#?}", idx.warnings);
        assert!(idx.warnings.iter().all(|w| !w.entry_skipped));
        assert_eq!(
            p.available_versions(),
            ["3.0.0-rc.1", "2.1.0", "2.0.0 (yanked)", "1.4.2", "1.3.0"]
        );
        let pick = |s: Option<&str>| {
            p.select(&VersionSelector::parse(s).unwrap())
                .map(|r| r.version.to_string())
        };
        assert_eq!(pick(None).as_deref(), Some("2.1.0"));
        assert_eq!(pick(Some("^1")).as_deref(), Some("1.4.2"));
        assert_eq!(pick(Some("~1.3")).as_deref(), Some("1.3.0"));
        assert_eq!(pick(Some(">=1.0, <2.1")).as_deref(), Some("1.4.2")); // 2.0.0 is yanked
        assert_eq!(pick(Some("2.0.0")).as_deref(), Some("2.0.0")); // exact pin may pick yanked
        assert_eq!(pick(Some("^2.0")).as_deref(), Some("2.1.0"));
        assert_eq!(pick(Some(">=3.0.0-rc.0")).as_deref(), Some("3.0.0-rc.1"));
        assert_eq!(pick(Some("^4")), None);
        assert_eq!(pick(Some("1.0.0")), None);
        let r142 = p.release(&Version::new(1, 4, 2)).unwrap();
        assert_eq!(r142.dependencies.as_ref().unwrap().packs, ["core@^1"]);
        assert!(
            p.release(&Version::new(1, 3, 0))
                .unwrap()
                .dependencies
                .is_none()
        );

        // Only pre-releases and yanked ones: latest falls back to the pre-release.
        let mut e = entry("pre", "1.0.0-beta.2");
        e["releases"] =
            json!([{"version": "0.9.0", "install_sources": src("0.9.0", '7'), "yanked": true}]);
        let idx = PackIndex::from_value(index(vec![e])).unwrap();
        let p = idx.get("pre").unwrap();
        assert_eq!(
            p.select(&VersionSelector::Latest)
                .unwrap()
                .version
                .to_string(),
            "1.0.0-beta.2"
        );
    }

    #[test]
    fn yanking_the_latest_via_releases() {
        let mut e = entry("yy", "1.1.0");
        e["releases"] = json!([
            {"version": "1.1.0", "install_sources": e["install_sources"].clone(), "yanked": true},
            {"version": "1.0.0", "install_sources": [{"type": "archive", "url": "https://e.com/yy1", "checksum": sha('9')}]}
        ]);
        let idx = PackIndex::from_value(index(vec![e])).unwrap();
        assert!(idx.warnings.is_empty(), "{:?}", idx.warnings);
        let p = idx.get("yy").unwrap();
        assert_eq!(
            p.select(&VersionSelector::Latest).unwrap().version,
            Version::new(1, 0, 0)
        );
    }

    fn archive_entry(r: &str, url: &str) -> Value {
        json!({"ref": r, "version": "1.0.0",
               "install_sources": [{"type": "archive", "url": url, "checksum": sha('a')}]})
    }

    fn archive_url(idx: &PackIndex, r: &str) -> String {
        match &idx.get(r).unwrap().install_sources[0] {
            InstallSource::Archive { url, .. } => url.clone(),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn relative_source_urls_resolve_against_the_index_url() {
        let doc = index(vec![
            archive_entry("beside", "beside-1.0.0.tar.gz"),
            archive_entry("below", "dist/below-1.0.0.tar.gz"),
            archive_entry("absolute", "https://cdn.example.com/absolute.tar.gz"),
        ]);
        let bytes = serde_json::to_vec(&doc).unwrap();
        let https = url::Url::parse("https://packs.example.com/v1/index.json").unwrap();
        let idx = PackIndex::from_slice_at(&bytes, &https).unwrap();
        assert!(idx.warnings.is_empty(), "{:?}", idx.warnings);
        assert_eq!(
            archive_url(&idx, "beside"),
            "https://packs.example.com/v1/beside-1.0.0.tar.gz"
        );
        assert_eq!(
            archive_url(&idx, "below"),
            "https://packs.example.com/v1/dist/below-1.0.0.tar.gz"
        );
        assert_eq!(
            archive_url(&idx, "absolute"),
            "https://cdn.example.com/absolute.tar.gz"
        );
        // Without the index's URL a relative URL is as invalid as before.
        let idx = PackIndex::from_slice(&bytes).unwrap();
        assert!(idx.packs.iter().all(|p| p.pack_ref == "absolute"));
        assert!(
            idx.skipped_entry("beside")
                .unwrap()
                .reason
                .contains("url is invalid")
        );
    }

    #[test]
    fn a_file_index_may_name_files_only_inside_its_directory() {
        let doc = index(vec![
            archive_entry("beside", "dist/beside-1.0.0.tar.gz"),
            archive_entry("spelled", "file:///srv/examples/spelled.tar.gz"),
            archive_entry("parent", "../secret.tar.gz"),
            archive_entry("elsewhere", "file:///etc/passwd"),
        ]);
        let bytes = serde_json::to_vec(&doc).unwrap();
        let file = url::Url::parse("file:///srv/examples/index.json").unwrap();
        let idx = PackIndex::from_slice_at(&bytes, &file).unwrap();
        assert_eq!(
            archive_url(&idx, "beside"),
            "file:///srv/examples/dist/beside-1.0.0.tar.gz"
        );
        assert_eq!(
            archive_url(&idx, "spelled"),
            "file:///srv/examples/spelled.tar.gz"
        );
        for r in ["parent", "elsewhere"] {
            let reason = &idx.skipped_entry(r).unwrap().reason;
            assert!(
                reason.contains("not inside the index's directory file:///srv/examples/"),
                "{reason}"
            );
        }
        // An https index never hands out local files.
        let https = url::Url::parse("https://packs.example.com/index.json").unwrap();
        let idx = PackIndex::from_slice_at(&bytes, &https).unwrap();
        assert!(
            idx.skipped_entry("spelled")
                .unwrap()
                .reason
                .contains("scheme 'file' is not allowed")
        );
    }
}
