//! Local tools for pack authors and registry maintainers; they need no server.
//!
//! They reuse the server's own implementations (checksum, archive extraction, pack.yaml
//! and component reading, the index model), so what they compute is exactly what the
//! service will verify.

use std::{
    fs,
    io::Write,
    path::{Path, PathBuf},
};

use anyhow::{Context, bail, ensure};
use attune_packs_core::{
    archive::{self, Limits},
    checksum::{self, DigestWriter},
    components::{self, ComponentKind},
    manifest::{Manifest, dir_name},
    packfs::{PackDir, PackReadLimits},
    progress::Reporter,
    registry::PackIndex,
};
use serde_json::{Map, Value, json};

/// What `checksum` reports for a directory or an archive.
pub struct Checksums {
    pub kind: &'static str,
    /// Directory: the pack-file checksum; archive: the digest of its bytes.
    pub checksum: String,
    /// Archive only: the pack-file checksum of the pack inside it.
    pub pack_checksum: Option<String>,
}

/// A pack directory, or a pack archive unpacked into a temporary directory.
struct PackSource {
    root: PathBuf,
    /// What names the pack when its pack.yaml has no `ref`.
    dir_name: Option<String>,
    archive_sha256: Option<String>,
    _unpacked: Option<tempfile::TempDir>,
}

fn open_pack(path: &Path) -> anyhow::Result<PackSource> {
    let meta = fs::metadata(path).with_context(|| format!("cannot read {}", path.display()))?;
    if meta.is_dir() {
        let root = archive::find_pack_root(path)?;
        // `.` and `..` have a name only once resolved.
        let top = fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
        let dir_name =
            dir_name::inside(path, &root).or_else(|| dir_name::of_path(&top).map(str::to_string));
        return Ok(PackSource {
            dir_name,
            root,
            archive_sha256: None,
            _unpacked: None,
        });
    }
    let mut hasher = DigestWriter::new(std::io::sink());
    std::io::copy(&mut fs::File::open(path)?, &mut hasher)?;
    let (_, digests) = hasher.finish();
    let sha256 = digests
        .sha256
        .context("sha256 was not computed")?
        .to_string();
    let dir = tempfile::tempdir()?;
    let mut extracted = archive::extract(path, dir.path(), &Limits::default(), &Reporter::noop())?;
    let root = extracted.pack_root(dir.path())?;
    Ok(PackSource {
        dir_name: dir_name::inside(dir.path(), &root),
        root,
        archive_sha256: Some(sha256),
        _unpacked: Some(dir),
    })
}

/// Any directory (not only a pack) has a pack-file checksum; an archive must hold a pack.
pub fn checksum(path: &Path) -> anyhow::Result<Checksums> {
    if fs::metadata(path)
        .with_context(|| format!("cannot read {}", path.display()))?
        .is_dir()
    {
        return Ok(Checksums {
            kind: "directory",
            checksum: checksum::checksum_prefixed(&checksum::directory_checksum(path)?),
            pack_checksum: None,
        });
    }
    let pack = open_pack(path)?;
    let dir_sum = checksum::checksum_prefixed(&checksum::directory_checksum(&pack.root)?);
    Ok(match pack.archive_sha256 {
        Some(bytes) => Checksums {
            kind: "archive",
            checksum: bytes,
            pack_checksum: Some(dir_sum),
        },
        None => Checksums {
            kind: "directory",
            checksum: dir_sum,
            pack_checksum: None,
        },
    })
}

/// Install sources for an index entry.
#[derive(Default)]
pub struct Sources {
    pub git_url: Option<String>,
    pub git_ref: Option<String>,
    pub archive_url: Option<String>,
}

/// An index entry (format 1.0) for the pack at `path` (a directory or an archive).
pub fn index_entry(path: &Path, sources: &Sources) -> anyhow::Result<Value> {
    let pack = open_pack(path)?;
    let limits = PackReadLimits::default();
    let opened = PackDir::open(&pack.root)?;
    let m = Manifest::read(&opened, pack.dir_name.as_deref(), &limits)?;
    let dir_sum = checksum::checksum_prefixed(&checksum::directory_checksum(&pack.root)?);
    let mut install = Vec::new();
    if let Some(url) = &sources.git_url {
        let git_ref = sources
            .git_ref
            .as_deref()
            .context("--git-url needs --git-ref (the commit or tag the checksum describes)")?;
        install.push(json!({"type": "git", "url": url, "ref": git_ref, "checksum": dir_sum}));
    }
    if let Some(url) = &sources.archive_url {
        let Some(bytes) = &pack.archive_sha256 else {
            bail!(
                "an archive source's checksum is that of the archive's bytes: pass the archive file as PATH"
            );
        };
        install.push(json!({"type": "archive", "url": url, "checksum": bytes}));
    }
    ensure!(
        !install.is_empty(),
        "give at least one install source (--git-url/--git-ref or --archive-url)"
    );

    let loaded = components::load(&opened, &m.pack_ref, limits.component());
    let names = |kind: ComponentKind| -> Vec<Value> {
        let mut list: Vec<Value> = loaded
            .of_kind(kind)
            .map(|c| json!({"name": c.name, "description": c.description.clone().or(c.label.clone()).unwrap_or_default()}))
            .collect();
        list.sort_by(|a, b| a["name"].as_str().cmp(&b["name"].as_str()));
        list
    };
    let mut dependencies = json!({
        "packs": m.dependencies.iter().map(|d| d.raw.clone()).collect::<Vec<_>>(),
    });
    if let Some(p) = &m.python {
        dependencies["python_version"] = json!(p.raw);
    }
    if let Some(n) = &m.nodejs {
        dependencies["nodejs_version"] = json!(n.raw);
    }
    let mut entry = json!({
        "ref": m.pack_ref,
        "label": m.label,
        "description": m.description.clone().unwrap_or_default(),
        "version": m.version.to_string(),
        "author": m.author.clone().unwrap_or_else(|| "unknown".into()),
        "license": m.license.clone().unwrap_or_else(|| "NOASSERTION".into()),
        "keywords": m.tags,
        "runtime_deps": m.runtime_deps,
        "install_sources": install,
        "contents": {
            "actions": names(ComponentKind::Action),
            "sensors": names(ComponentKind::Sensor),
            "triggers": names(ComponentKind::Trigger),
            "rules": names(ComponentKind::Rule),
            "workflows": names(ComponentKind::Workflow),
        },
        "dependencies": dependencies,
    });
    for (key, value) in [("email", &m.email), ("homepage", &m.homepage)] {
        if let Some(v) = value {
            entry[key] = json!(v);
        }
    }
    Ok(entry)
}

fn read_index(path: &Path) -> anyhow::Result<Map<String, Value>> {
    let text = fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    match serde_json::from_slice(&text)
        .with_context(|| format!("{} is not JSON", path.display()))?
    {
        Value::Object(map) if map.get("packs").is_some_and(Value::is_array) => Ok(map),
        _ => bail!(
            "{} is not a registry index (no `packs` array)",
            path.display()
        ),
    }
}

/// Writes JSON through a temporary file and a rename, after checking that the service
/// would load it.
fn write_index(path: &Path, index: &Value) -> anyhow::Result<()> {
    let bytes = serde_json::to_vec_pretty(index)?;
    PackIndex::from_slice(&bytes).context("the resulting index would not load")?;
    let tmp = path.with_extension("json.tmp");
    fs::File::create(&tmp)
        .and_then(|mut file| file.write_all(&bytes))
        .and_then(|()| fs::rename(&tmp, path))
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

fn pack_ref_of(entry: &Value) -> Option<&str> {
    entry.get("ref").and_then(Value::as_str)
}

/// What [`index_update`] did to the index file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IndexUpdate {
    /// The file did not exist: a new index holding the entry.
    Created,
    Added,
    Replaced,
}

/// Adds the entry for `path` to the index file (a new index when the file does not
/// exist), or replaces it with `update`.
pub fn index_update(
    index: &Path,
    path: &Path,
    sources: &Sources,
    update: bool,
) -> anyhow::Result<IndexUpdate> {
    let entry = index_entry(path, sources)?;
    let created = !fs::exists(index).with_context(|| format!("cannot read {}", index.display()))?;
    let mut map = if created {
        new_index(index)
    } else {
        read_index(index)?
    };
    let packs = map
        .get_mut("packs")
        .and_then(Value::as_array_mut)
        .expect("checked by read_index");
    let pack_ref = pack_ref_of(&entry).expect("entries have refs").to_string();
    let replaced = match packs.iter_mut().find(|p| pack_ref_of(p) == Some(&pack_ref)) {
        Some(existing) if update => {
            *existing = entry;
            true
        }
        Some(_) => bail!(
            "'{pack_ref}' is already in {}; pass --update to replace it",
            index.display()
        ),
        None => {
            packs.push(entry);
            false
        }
    };
    map.insert("last_updated".into(), json!(now_rfc3339()));
    write_index(index, &Value::Object(map))?;
    Ok(match (created, replaced) {
        (true, _) => IndexUpdate::Created,
        (false, true) => IndexUpdate::Replaced,
        (false, false) => IndexUpdate::Added,
    })
}

/// An index with no packs, named after its file.
fn new_index(path: &Path) -> Map<String, Value> {
    let name = path
        .file_stem()
        .map_or_else(|| "index".into(), |s| s.to_string_lossy().into_owned());
    let mut map = Map::new();
    map.insert("registry_name".into(), json!(name));
    map.insert("registry_url".into(), json!(""));
    map.insert("version".into(), json!("1.0"));
    map.insert("packs".into(), json!([]));
    map
}

pub struct MergeStats {
    pub inputs: usize,
    pub loaded: usize,
    pub unique: usize,
    pub duplicates: usize,
}

/// Merges indices, keeping for each ref the entry with the highest semver version
/// (the first one wins a tie).
pub fn index_merge(output: &Path, inputs: &[PathBuf], force: bool) -> anyhow::Result<MergeStats> {
    ensure!(!inputs.is_empty(), "name at least one input index");
    if output.exists() && !force {
        bail!("{} exists; pass --force to overwrite it", output.display());
    }
    let mut merged: Vec<Value> = Vec::new();
    let mut loaded = 0;
    for input in inputs {
        let map = read_index(input)?;
        for entry in map["packs"].as_array().expect("checked by read_index") {
            loaded += 1;
            let Some(pack_ref) = pack_ref_of(entry) else {
                continue;
            };
            let version = |e: &Value| {
                e.get("version")
                    .and_then(Value::as_str)
                    .and_then(|v| semver::Version::parse(v).ok())
            };
            match merged.iter_mut().find(|e| pack_ref_of(e) == Some(pack_ref)) {
                Some(existing) => {
                    if version(entry) > version(existing) {
                        *existing = entry.clone();
                    }
                }
                None => merged.push(entry.clone()),
            }
        }
    }
    merged.sort_by(|a, b| pack_ref_of(a).cmp(&pack_ref_of(b)));
    let unique = merged.len();
    let index = json!({
        "registry_name": "Merged index",
        "registry_url": "",
        "version": "1.0",
        "last_updated": now_rfc3339(),
        "packs": merged,
    });
    write_index(output, &index)?;
    Ok(MergeStats {
        inputs: inputs.len(),
        loaded,
        unique,
        duplicates: loaded - unique,
    })
}

fn now_rfc3339() -> String {
    humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string()
}
