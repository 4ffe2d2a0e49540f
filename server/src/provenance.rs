//! Where a downloaded pack came from, recorded beside it for later stages.
//!
//! Download writes `<destination_dir>/.<ref>.source.json` next to `<destination_dir>/<ref>`.
//! RegisterBatch reads it and trusts it only if the pack directory still has the
//! checksum recorded there (a pack edited after download has unknown provenance).

use std::{
    fs,
    io::{self, Write},
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

use crate::source::redact_url;

use crate::packfs::{PackDir, ReadCap};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Provenance {
    pub pack_ref: String,
    pub version: String,
    /// The source string as the caller gave it.
    pub source: String,
    /// registry | git | archive | local_directory | local_archive
    pub source_type: String,
    /// The URL or path actually fetched (for registry refs: the chosen install source).
    pub url: Option<String>,
    /// Git ref asked for, when any.
    pub reference: Option<String>,
    pub git_commit: Option<String>,
    /// `sha256:` + attune-pack-file-v1 checksum of the pack directory as placed.
    pub checksum: String,
    /// The index that resolved a registry ref.
    pub registry_url: Option<String>,
    /// For registry refs, the trust configured for that index: `verified`, or
    /// `unverified` (an index without checksums may have served it; then
    /// `checksum_verified` is false and `git_commit` is what was installed).
    /// Absent in sidecars written before the field existed.
    #[serde(default)]
    pub registry_trust: Option<String>,
    /// The index's checksum was compared and matched.
    pub checksum_verified: bool,
    /// The checksum the index promised (`sha256:…`; for an archive source, of the
    /// archive's bytes), when it gave one. Absent in sidecars written before the field
    /// existed.
    #[serde(default)]
    pub expected_checksum: Option<String>,
    /// Unix milliseconds.
    pub downloaded_at: i64,
}

/// The metadata path for the pack directory `pack_dir`.
pub fn path_for(pack_dir: &Path) -> Option<PathBuf> {
    let name = pack_dir.file_name()?.to_str()?;
    Some(pack_dir.with_file_name(format!(".{name}.source.json")))
}

impl Provenance {
    /// The record with every URL in its stored form: no userinfo (but an SSH account
    /// name), no query string, no fragment.
    pub fn redacted(&self) -> Self {
        let redact = |u: &Option<String>| u.as_deref().map(redact_url);
        Self {
            source: redact_url(&self.source),
            url: redact(&self.url),
            registry_url: redact(&self.registry_url),
            ..self.clone()
        }
    }
}

/// Writes atomically (temp file + rename), so a reader never sees half a file.
/// URLs are redacted first, so the file holds nothing secret and may stay readable
/// to others (0644).
pub fn write(pack_dir: &Path, provenance: &Provenance) -> io::Result<()> {
    let path = path_for(pack_dir)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "pack dir has no name"))?;
    let tmp = path.with_extension("json.tmp");
    let json = serde_json::to_vec_pretty(&provenance.redacted()).map_err(io::Error::other)?;
    let mut file = fs::File::create(&tmp)?;
    file.write_all(&json)?;
    drop(file);
    fs::rename(&tmp, &path)
}

/// The sidecar is written by the server and holds a few hundred bytes; anything much
/// larger was put there by someone else.
const MAX_SIDECAR_BYTES: u64 = 64 * 1024;

/// Reads the metadata of `pack_dir`; `None` when there is none or it is unreadable
/// (a link, a FIFO or device, larger than 64 KiB, not JSON).
pub fn read(pack_dir: &Path) -> Option<Provenance> {
    let path = path_for(pack_dir)?;
    let parent = PackDir::open(path.parent()?).ok()?;
    let cap = ReadCap {
        bytes: MAX_SIDECAR_BYTES,
        what: "a pack's source metadata",
        setting: "none: fixed, the server writes this file itself",
    };
    let text = parent.read(path.file_name()?, cap).ok()?;
    serde_json::from_slice(&text).ok()
}
