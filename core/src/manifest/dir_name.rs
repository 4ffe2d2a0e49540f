//! The directory name a pack without `ref` is named after (StackStorm's rule), for each
//! way a pack arrives:
//!
//! * a directory given by path (RegisterBatch, BuildEnvs, Dependencies, a local
//!   Download): its last component, [`of_path`];
//! * a git repository: its name without `.git` and without a `stackstorm-` prefix, as
//!   `st2 pack install` names packs (`stackstorm-slack` → `slack`),
//!   [`of_git_repository`];
//! * an archive, or a tree with the pack below its top: the directory holding
//!   `pack.yaml` when it is not the top itself, [`inside`]; the top of an extraction
//!   is a staging directory whose name means nothing.
//!
//! Each returns the name as found; whether it is a valid ref is judged by the
//! manifest reader, which falls back to `name` when it is not.

use std::path::{Component, Path};

/// The last component of `path` (`None` for `/`, `..` or a name that is not UTF-8).
pub fn of_path(path: &Path) -> Option<&str> {
    match path.components().next_back()? {
        Component::Normal(name) => name.to_str(),
        _ => None,
    }
}

/// The pack name of a git repository URL: `https://host/owner/stackstorm-slack.git` and
/// `git@host:owner/stackstorm-slack` give `slack`; `file:///srv/packs/mine` gives `mine`.
pub fn of_git_repository(url: &str) -> Option<String> {
    let without_query = url.split(['?', '#']).next().unwrap_or_default();
    let trimmed = without_query.trim_end_matches('/');
    let last = trimmed.rsplit(['/', ':']).next()?;
    let name = last.strip_suffix(".git").unwrap_or(last);
    let name = name.strip_prefix("stackstorm-").unwrap_or(name);
    (!name.is_empty()).then(|| name.to_string())
}

/// The name of the directory holding the pack inside `top` (an extraction, a checkout,
/// a copy), when `pack_root` is below `top`. A pack in `<dir>/pack/` is named after
/// `<dir>`; a pack at the top, or in `top/pack/`, has no name of its own here (`None`).
pub fn inside(top: &Path, pack_root: &Path) -> Option<String> {
    let relative = pack_root.strip_prefix(top).ok()?;
    let mut parts: Vec<&str> = relative
        .components()
        .map(|c| match c {
            Component::Normal(name) => name.to_str(),
            _ => None,
        })
        .collect::<Option<_>>()?;
    if parts.last() == Some(&"pack") {
        parts.pop();
    }
    parts.last().map(|name| (*name).to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn directory_names() {
        assert_eq!(of_path(Path::new("/srv/packs/my_pack")), Some("my_pack"));
        assert_eq!(of_path(Path::new("/srv/packs/my_pack/")), Some("my_pack"));
        assert_eq!(of_path(Path::new("relative/dir")), Some("dir"));
        assert_eq!(of_path(Path::new("/")), None);
        assert_eq!(of_path(Path::new("a/..")), None);
    }

    #[test]
    fn git_repository_names() {
        for (url, name) in [
            (
                "https://github.com/StackStorm-Exchange/stackstorm-slack.git",
                "slack",
            ),
            (
                "https://github.com/StackStorm-Exchange/stackstorm-slack",
                "slack",
            ),
            ("https://example.com/org/my_pack/", "my_pack"),
            ("git@github.com:org/stackstorm-aws.git", "aws"),
            ("ssh://git@host:2222/org/pack-x.git", "pack-x"),
            ("file:///srv/git/mine.git", "mine"),
            ("https://example.com/org/repo.git?ref=v1", "repo"),
        ] {
            assert_eq!(of_git_repository(url).as_deref(), Some(name), "{url}");
        }
        assert_eq!(
            of_git_repository("https://example.com/"),
            Some("example.com".into())
        );
        assert_eq!(of_git_repository(""), None);
        assert_eq!(
            of_git_repository("https://example.com/org/stackstorm-"),
            None
        );
    }

    #[test]
    fn names_inside_a_tree() {
        let top = Path::new("/stage/tree");
        assert_eq!(inside(top, top), None);
        assert_eq!(inside(top, &top.join("pack")), None);
        assert_eq!(
            inside(top, &top.join("slack-1.2.0")).as_deref(),
            Some("slack-1.2.0")
        );
        assert_eq!(inside(top, &top.join("repo/pack")).as_deref(), Some("repo"));
        assert_eq!(inside(top, Path::new("/elsewhere/x")), None);
    }
}
