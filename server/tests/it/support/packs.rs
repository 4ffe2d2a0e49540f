//! Pack file sets for download tests: a small valid pack as an in-memory file
//! list (for archives, git repositories and directories) and a writer for it.

use std::path::Path;

use sha2::{Digest, Sha256};

/// A small valid pack: `pack.yaml` (ref, label, description, version), an
/// action `actions/hello.yaml` and its script `actions/hello.sh`. The script
/// prints the ref and version, so two versions differ in more than pack.yaml.
pub fn pack_files(pack_ref: &str, version: &str) -> Vec<(String, Vec<u8>)> {
    let files = [
        (
            "pack.yaml",
            format!(
                "ref: {pack_ref}\nlabel: {pack_ref}\ndescription: Test pack {pack_ref}\n\
                 version: \"{version}\"\n"
            ),
        ),
        (
            "actions/hello.yaml",
            format!(
                "ref: {pack_ref}.hello\nlabel: Hello\ndescription: Say hello\n\
                 runner_type: shell\nentry_point: hello.sh\n"
            ),
        ),
        (
            "actions/hello.sh",
            format!("#!/bin/sh\necho \"hello from {pack_ref} {version}\"\n"),
        ),
    ];
    files
        .into_iter()
        .map(|(name, content)| (name.to_string(), content.into_bytes()))
        .collect()
}

/// Writes `files` under `dir` (creating parents); `.sh` files are made
/// executable, as in the archives of `support::archives`.
pub fn write_tree<N: AsRef<str>, D: AsRef<[u8]>>(dir: &Path, files: &[(N, D)]) {
    use std::os::unix::fs::PermissionsExt;
    for (name, data) in files {
        let path = dir.join(name.as_ref());
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, data).unwrap();
        if name.as_ref().ends_with(".sh") {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
    }
}

/// `sha256:<hex>` of `bytes`: the checksum of an archive source in an index.
pub fn sha256_checksum(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}
