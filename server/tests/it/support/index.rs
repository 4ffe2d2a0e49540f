//! Registry index documents (docs/registry-index.md) for download tests.
//!
//! ```ignore
//! let json = index_json(&[IndexEntry::new("slack", "2.1.0")
//!     .git(&repo_url, &commit, &tree_checksum)
//!     .archive(&server.url("slack-2.1.0.tar.gz"), &sha256_checksum(&bytes))
//!     .release(Release::new("1.0.0").archive(&old_url, &old_sum).yanked())]);
//! ```

use serde_json::{Map, Value, json};

/// An install source, in index order.
#[derive(Debug, Clone)]
pub enum Source {
    Git {
        url: String,
        reference: String,
        checksum: String,
    },
    Archive {
        url: String,
        checksum: String,
    },
}

impl Source {
    fn to_json(&self) -> Value {
        match self {
            Source::Git {
                url,
                reference,
                checksum,
            } => json!({"type": "git", "url": url, "ref": reference, "checksum": checksum}),
            Source::Archive { url, checksum } => {
                json!({"type": "archive", "url": url, "checksum": checksum})
            }
        }
    }
}

fn sources_json(sources: &[Source]) -> Value {
    Value::Array(sources.iter().map(Source::to_json).collect())
}

fn dependencies_json(packs: &[String]) -> Value {
    json!({ "packs": packs })
}

/// An older (or repeated) version of an entry: the format 1.1 `releases[]`.
#[derive(Debug, Clone)]
pub struct Release {
    version: String,
    sources: Vec<Source>,
    dependencies: Vec<String>,
    yanked: bool,
}

impl Release {
    pub fn new(version: &str) -> Self {
        Release {
            version: version.to_string(),
            sources: Vec::new(),
            dependencies: Vec::new(),
            yanked: false,
        }
    }

    pub fn git(mut self, url: &str, reference: &str, checksum: &str) -> Self {
        self.sources.push(git_source(url, reference, checksum));
        self
    }

    pub fn archive(mut self, url: &str, checksum: &str) -> Self {
        self.sources.push(archive_source(url, checksum));
        self
    }

    /// A pack dependency, `ref` or `ref@spec`.
    pub fn depends_on(mut self, dependency: &str) -> Self {
        self.dependencies.push(dependency.to_string());
        self
    }

    pub fn yanked(mut self) -> Self {
        self.yanked = true;
        self
    }

    fn to_json(&self) -> Value {
        let mut release = json!({
            "version": self.version,
            "install_sources": sources_json(&self.sources),
        });
        if !self.dependencies.is_empty() {
            release["dependencies"] = dependencies_json(&self.dependencies);
        }
        if self.yanked {
            release["yanked"] = Value::Bool(true);
        }
        release
    }
}

/// One pack entry; `version`, sources and dependencies describe its latest
/// release.
#[derive(Debug, Clone)]
pub struct IndexEntry {
    pack_ref: String,
    version: String,
    sources: Vec<Source>,
    dependencies: Vec<String>,
    releases: Vec<Release>,
    extra: Map<String, Value>,
}

impl IndexEntry {
    pub fn new(pack_ref: &str, version: &str) -> Self {
        IndexEntry {
            pack_ref: pack_ref.to_string(),
            version: version.to_string(),
            sources: Vec::new(),
            dependencies: Vec::new(),
            releases: Vec::new(),
            extra: Map::new(),
        }
    }

    /// A git source: `checksum` is the directory checksum of the checked-out
    /// tree (`attune_packs_server::checksum::directory_checksum`).
    pub fn git(mut self, url: &str, reference: &str, checksum: &str) -> Self {
        self.sources.push(git_source(url, reference, checksum));
        self
    }

    /// An archive source: `checksum` is the digest of the archive bytes
    /// (`support::packs::sha256_checksum`).
    pub fn archive(mut self, url: &str, checksum: &str) -> Self {
        self.sources.push(archive_source(url, checksum));
        self
    }

    /// A pack dependency of the latest release, `ref` or `ref@spec`.
    pub fn depends_on(mut self, dependency: &str) -> Self {
        self.dependencies.push(dependency.to_string());
        self
    }

    pub fn release(mut self, release: Release) -> Self {
        self.releases.push(release);
        self
    }

    /// Any other entry field (`label`, `description`, `keywords`, `meta`, or a
    /// key the client must ignore); replaces a generated one of the same name.
    pub fn field(mut self, key: &str, value: Value) -> Self {
        self.extra.insert(key.to_string(), value);
        self
    }

    fn to_json(&self) -> Value {
        let mut entry = json!({
            "ref": self.pack_ref,
            "label": self.pack_ref,
            "version": self.version,
            "install_sources": sources_json(&self.sources),
        });
        if !self.dependencies.is_empty() {
            entry["dependencies"] = dependencies_json(&self.dependencies);
        }
        if !self.releases.is_empty() {
            entry["releases"] = Value::Array(self.releases.iter().map(Release::to_json).collect());
        }
        for (key, value) in &self.extra {
            entry[key] = value.clone();
        }
        entry
    }
}

fn git_source(url: &str, reference: &str, checksum: &str) -> Source {
    Source::Git {
        url: url.to_string(),
        reference: reference.to_string(),
        checksum: checksum.to_string(),
    }
}

fn archive_source(url: &str, checksum: &str) -> Source {
    Source::Archive {
        url: url.to_string(),
        checksum: checksum.to_string(),
    }
}

/// The index document: format "1.0", or "1.1" when an entry has `releases`
/// (the format doc asks publishers to say so; clients accept both).
pub fn index_json(entries: &[IndexEntry]) -> String {
    let uses_releases = entries.iter().any(|e| !e.releases.is_empty());
    let document = json!({
        "registry_name": "Test Index",
        "registry_url": "https://index.example.invalid",
        "version": if uses_releases { "1.1" } else { "1.0" },
        "last_updated": "2024-01-01T00:00:00Z",
        "packs": entries.iter().map(IndexEntry::to_json).collect::<Vec<_>>(),
    });
    serde_json::to_string_pretty(&document).unwrap()
}

mod smoke {
    use attune_packs_server::registry::index::PackIndex;

    use super::*;

    register_test!(sync the_registry_parser_accepts_generated_indices);
    fn the_registry_parser_accepts_generated_indices() {
        let sum = format!("sha256:{}", "a".repeat(64));
        let entry = IndexEntry::new("demo", "2.0.0")
            .git("https://git.example.invalid/demo.git", "v2.0.0", &sum)
            .archive("https://files.example.invalid/demo-2.0.0.tar.gz", &sum)
            .depends_on("core@^1")
            .field("description", json!("a demo"));
        let plain =
            PackIndex::from_slice(index_json(std::slice::from_ref(&entry)).as_bytes()).unwrap();
        assert!(plain.warnings.is_empty(), "{:?}", plain.warnings);
        assert_eq!(plain.format_version, "1.0");
        assert_eq!(plain.packs.len(), 1);

        let with_releases = entry.release(
            Release::new("1.0.0")
                .archive("https://files.example.invalid/demo-1.0.0.tar.gz", &sum)
                .yanked(),
        );
        let index = PackIndex::from_slice(index_json(&[with_releases]).as_bytes()).unwrap();
        assert!(index.warnings.is_empty(), "{:?}", index.warnings);
        assert_eq!(index.format_version, "1.1");
        assert_eq!(index.packs[0].available_versions().len(), 2);
    }
}
