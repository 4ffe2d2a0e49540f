//! What a pack source string means.
//!
//! Precedence, first match wins (docs/download.md):
//! 1. `github:org/repo[@ref]` — git over https on the configured GitHub host.
//! 2. `file://…` — a local path (archive file or directory).
//! 3. `http://…`, `https://…` — an archive when the path ends in `.zip`, `.tar.gz`,
//!    `.tgz` or `.tar` (or looks like a codeload `/tar.gz/<ref>` / `/zip/<ref>` URL); git
//!    when it ends in `.git` or carries `@ref`; otherwise decided by probing the server
//!    (a git smart-HTTP server answers `info/refs`), see `fetch::http`.
//! 4. `ssh://…`, `git://…`, scp-like `user@host:path` — git.
//! 5. Written as a path (`/…`, `./…`, `../…`, or containing `/`) — a local path.
//! 6. Otherwise a registry ref, `name` or `name@<version or range>`.
//!
//! A bare word is therefore always a registry ref: a local directory named `core` never
//! shadows the registry pack `core` unless written as a path (`./core`).

use crate::{
    manifest::is_valid_pack_ref,
    registry::{SelectorError, VersionSelector},
};

#[derive(Debug, Clone, PartialEq)]
pub enum PackSource {
    Registry {
        pack_ref: String,
        selector: VersionSelector,
    },
    Git {
        url: String,
        reference: Option<String>,
    },
    /// A remote archive (the format is detected from the bytes).
    Archive { url: String },
    /// An http(s) URL that is neither obviously an archive nor obviously git.
    RemoteUnknown { url: String },
    /// A local path, absolute or relative to an allowed root; whether it is an archive
    /// or a directory is decided when it is opened.
    Local { path: String },
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum SourceError {
    #[error("empty pack source")]
    Empty,
    #[error("'{input}' is not a pack source: {reason}")]
    Invalid { input: String, reason: String },
    #[error(transparent)]
    Selector(#[from] SelectorError),
    /// `url` is already redacted: the refusal never repeats the secret.
    #[error("'{url}' carries {what}: {CREDENTIALS_REFUSED}")]
    Credentials { url: String, what: String },
}

/// Why a URL with credentials is refused, and where credentials belong instead.
pub const CREDENTIALS_REFUSED: &str = "credentials in URLs are not accepted; configure them in the server's git/registry credential settings (download.git.https_username and download.git.https_token for https git, download.git.ssh_key_path or download.git.use_ssh_agent for ssh, registry.indices[].headers for indices)";

/// Schemes whose URLs may name an account (`ssh://git@host/…`, scp-like
/// `git@host:org/repo`): for SSH a bare user name is how the account is chosen, not a
/// secret. A password is refused everywhere.
const SSH_SCHEMES: &[&str] = &["ssh", "git+ssh", "ssh+git"];

/// Refuses `raw` when it is a URL (any scheme, or git's scp-like form) carrying
/// credentials: a password anywhere, a user name outside SSH, or a query parameter
/// whose name says it is a token, key, password or signature. Anything that is not a
/// URL passes: it is a path or a registry ref and has no place for credentials.
pub fn check_no_credentials(raw: &str) -> Result<(), SourceError> {
    let s = raw.trim();
    let refuse = |what: String| {
        Err(SourceError::Credentials {
            url: redact_url(s),
            what,
        })
    };
    let Some(parts) = UrlParts::split(s) else {
        return Ok(());
    };
    if let Some(userinfo) = parts.userinfo {
        if userinfo.contains(':') {
            return refuse("a password".into());
        }
        let ssh = parts
            .scheme
            .is_none_or(|scheme| SSH_SCHEMES.contains(&scheme.to_ascii_lowercase().as_str()));
        if !ssh {
            return refuse("a user name (only ssh URLs may name an account)".into());
        }
    }
    if let Some(query) = parts.query {
        for pair in query.split('&') {
            let name = pair.split('=').next().unwrap_or_default();
            let name = percent_decode(name);
            if is_credential_parameter(&name) {
                let shown: String = name.chars().filter(|c| !c.is_control()).take(64).collect();
                return refuse(format!("a credential in its query string (`{shown}`)"));
            }
        }
    }
    Ok(())
}

/// The one form in which a source URL is stored (provenance, `packs.source`, locks)
/// or shown (progress, logs): no password, no user name except an SSH account, no
/// query string, no fragment. Strings that are not URLs come back unchanged.
pub fn redact_url(raw: &str) -> String {
    let Some(parts) = UrlParts::split(raw) else {
        return raw.to_string();
    };
    let ssh = parts
        .scheme
        .is_none_or(|scheme| SSH_SCHEMES.contains(&scheme.to_ascii_lowercase().as_str()));
    let account = match parts.userinfo {
        Some(userinfo) if ssh => {
            let user = userinfo.split(':').next().unwrap_or_default();
            (!user.is_empty()).then(|| format!("{user}@"))
        }
        _ => None,
    };
    let account = account.unwrap_or_default();
    match parts.scheme {
        Some(scheme) => format!("{scheme}://{account}{}{}", parts.host, parts.path),
        None => format!("{account}{}:{}", parts.host, parts.path),
    }
}

/// A URL cut at its delimiters, without normalising anything (so that redacting a
/// URL changes nothing but what it removes).
struct UrlParts<'a> {
    /// `None` for git's scp-like `[user@]host:path`.
    scheme: Option<&'a str>,
    userinfo: Option<&'a str>,
    host: &'a str,
    path: &'a str,
    query: Option<&'a str>,
}

impl<'a> UrlParts<'a> {
    fn split(s: &'a str) -> Option<Self> {
        if let Some((scheme, rest)) = s.split_once("://") {
            if scheme.is_empty()
                || !scheme
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
            {
                return None;
            }
            let (rest, _fragment) = rest.split_once('#').unwrap_or((rest, ""));
            let (rest, query) = match rest.split_once('?') {
                Some((r, q)) => (r, Some(q)),
                None => (rest, None),
            };
            let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
            let (userinfo, host) = match authority.rfind('@') {
                Some(at) => (Some(&authority[..at]), &authority[at + 1..]),
                None => (None, authority),
            };
            return Some(Self {
                scheme: Some(scheme),
                userinfo,
                host,
                path,
                query,
            });
        }
        // scp-like: `user@host:path` or `user:password@host:path`; the part before the
        // last '@' that precedes the first '/' is the user information.
        let head = &s[..s.find('/').unwrap_or(s.len())];
        let at = head.rfind('@')?;
        let (userinfo, after) = (&s[..at], &s[at + 1..]);
        let (host, path) = after.split_once(':')?;
        if userinfo.is_empty() || host.is_empty() || host.contains('/') {
            return None;
        }
        let (path, _fragment) = path.split_once('#').unwrap_or((path, ""));
        let (path, query) = match path.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (path, None),
        };
        Some(Self {
            scheme: None,
            userinfo: Some(userinfo),
            host,
            path,
            query,
        })
    }
}

/// Query parameter names that carry secrets in the wild: tokens, keys, passwords,
/// pre-signed URL signatures and credentials.
fn is_credential_parameter(name: &str) -> bool {
    let n: String = name
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .collect::<String>()
        .to_ascii_lowercase();
    const CONTAINS: &[&str] = &[
        "token",
        "passw",
        "secret",
        "apikey",
        "accesskey",
        "privatekey",
        "auth",
        "signature",
        "credential",
        "session",
    ];
    const EXACT: &[&str] = &["key", "sig", "pw", "pwd", "pass", "jwt", "bearer"];
    CONTAINS.iter().any(|c| n.contains(c)) || EXACT.contains(&n.as_str())
}

fn percent_decode(s: &str) -> String {
    url::form_urlencoded::parse(format!("{s}=").as_bytes())
        .next()
        .map(|(k, _)| k.into_owned())
        .unwrap_or_else(|| s.to_string())
}

const ARCHIVE_SUFFIXES: &[&str] = &[".zip", ".tar.gz", ".tgz", ".tar"];

impl PackSource {
    /// `ref_spec` applies to git sources that carry no `@ref` of their own.
    pub fn parse(
        raw: &str,
        ref_spec: Option<&str>,
        github_host: &str,
    ) -> Result<Self, SourceError> {
        let s = raw.trim();
        if s.is_empty() {
            return Err(SourceError::Empty);
        }
        check_no_credentials(s)?;
        let invalid = |reason: &str| SourceError::Invalid {
            input: s.to_string(),
            reason: reason.to_string(),
        };
        let with_ref = |url: String, own: Option<String>| PackSource::Git {
            url,
            reference: own.or_else(|| ref_spec.map(str::to_string)),
        };

        if let Some(rest) = s.strip_prefix("github:") {
            let (repo, own) = split_ref(rest);
            let parts: Vec<&str> = repo.split('/').collect();
            if parts.len() != 2 || parts.iter().any(|p| p.is_empty() || !is_repo_name(p)) {
                return Err(invalid("expected github:<org>/<repo>[@ref]"));
            }
            let repo = repo.trim_end_matches(".git");
            return Ok(with_ref(format!("https://{github_host}/{repo}.git"), own));
        }
        if let Some(path) = s.strip_prefix("file://") {
            if !path.starts_with('/') {
                return Err(invalid("file:// URLs must name an absolute path"));
            }
            return Ok(PackSource::Local {
                path: path.to_string(),
            });
        }
        let lower = s.to_ascii_lowercase();
        if lower.starts_with("http://") || lower.starts_with("https://") {
            let (url, own) = split_ref(s);
            let parsed = url::Url::parse(url).map_err(|e| invalid(&format!("bad URL: {e}")))?;
            if parsed.host_str().is_none_or(str::is_empty) {
                return Err(invalid("the URL has no host"));
            }
            if !parsed.username().is_empty() || parsed.password().is_some() {
                return Err(SourceError::Credentials {
                    url: redact_url(url),
                    what: "a user name".into(),
                });
            }
            let path = parsed.path().to_ascii_lowercase();
            if own.is_none() && is_archive_path(&path) {
                return Ok(PackSource::Archive {
                    url: url.to_string(),
                });
            }
            if own.is_some() || path.ends_with(".git") {
                return Ok(with_ref(url.to_string(), own));
            }
            return Ok(PackSource::RemoteUnknown {
                url: url.to_string(),
            });
        }
        if lower.starts_with("ssh://") || lower.starts_with("git://") || is_scp_like(s) {
            let (url, own) = split_ref(s);
            return Ok(with_ref(url.to_string(), own));
        }
        if lower.contains("://") {
            return Err(invalid("unsupported URL scheme"));
        }
        if s.starts_with('/') || s.starts_with("./") || s.starts_with("../") || s.contains('/') {
            return Ok(PackSource::Local {
                path: s.to_string(),
            });
        }
        let (name, version) = match s.split_once('@') {
            Some((name, version)) => (name, Some(version)),
            None => (s, None),
        };
        if !is_valid_pack_ref(name) {
            return Err(invalid(
                "not a URL or path, and not a registry ref (lowercase letters, digits, '-' and '_', starting with a letter)",
            ));
        }
        if version.is_some_and(|v| v.trim().is_empty()) {
            return Err(invalid("empty version after '@'"));
        }
        Ok(PackSource::Registry {
            pack_ref: name.to_string(),
            selector: VersionSelector::parse(version)?,
        })
    }

    /// The `source_type` reported to callers.
    /// The kind as written; what is fetched may turn out otherwise (a remote URL that
    /// serves git, a local path that is an archive).
    pub fn kind(&self) -> SourceKind {
        match self {
            PackSource::Registry { .. } => SourceKind::Registry,
            PackSource::Git { .. } => SourceKind::Git,
            PackSource::Archive { .. } | PackSource::RemoteUnknown { .. } => SourceKind::Archive,
            PackSource::Local { .. } => SourceKind::LocalDirectory,
        }
    }
}

/// What kind of source a pack came from, as `source_type` names it on the wire, in
/// locks and in the pack's row: what a source turned out to be once fetched (a remote
/// URL may be a git repository, a local path an archive), not only how it was written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceKind {
    Registry,
    Git,
    Archive,
    LocalArchive,
    LocalDirectory,
    /// No fetchable source is known: the pack can only be kept as installed (Install).
    Installed,
    /// A name this server does not write (a hand-edited lock): passed on as given.
    Other(String),
}

impl SourceKind {
    pub fn from_name(name: &str) -> Self {
        match name {
            "registry" => SourceKind::Registry,
            "git" => SourceKind::Git,
            "archive" => SourceKind::Archive,
            "local_archive" => SourceKind::LocalArchive,
            "local_directory" => SourceKind::LocalDirectory,
            "installed" => SourceKind::Installed,
            other => SourceKind::Other(other.to_string()),
        }
    }

    pub fn as_str(&self) -> &str {
        match self {
            SourceKind::Registry => "registry",
            SourceKind::Git => "git",
            SourceKind::Archive => "archive",
            SourceKind::LocalArchive => "local_archive",
            SourceKind::LocalDirectory => "local_directory",
            SourceKind::Installed => "installed",
            SourceKind::Other(name) => name,
        }
    }
}

impl std::fmt::Display for SourceKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `https://host/org/repo.git@v1` → (url, Some("v1")). Only an `@` after the last `/`
/// (or the scp `:`) counts, so `git@host:org/repo` keeps its user.
fn split_ref(s: &str) -> (&str, Option<String>) {
    let tail_start = s.rfind(['/', ':']).map_or(0, |i| i + 1);
    match s[tail_start..].rfind('@') {
        Some(at) if at > 0 => {
            let at = tail_start + at;
            let reference = &s[at + 1..];
            if reference.is_empty() {
                (s, None)
            } else {
                (&s[..at], Some(reference.to_string()))
            }
        }
        _ => (s, None),
    }
}

fn is_archive_path(path: &str) -> bool {
    ARCHIVE_SUFFIXES.iter().any(|sfx| path.ends_with(sfx))
        || path.contains("/tar.gz/")
        || path.contains("/zip/")
        || path.contains("/legacy.tar.gz/")
        || path.contains("/legacy.zip/")
}

/// `user@host:path` (git's scp syntax), not a Windows drive or a URL.
fn is_scp_like(s: &str) -> bool {
    let Some((user_host, path)) = s.split_once(':') else {
        return false;
    };
    let Some((user, host)) = user_host.split_once('@') else {
        return false;
    };
    !user.is_empty()
        && !host.is_empty()
        && !path.is_empty()
        && !path.starts_with("//")
        && !user_host.contains('/')
}

fn is_repo_name(s: &str) -> bool {
    s.chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn source_kinds_keep_their_wire_names() {
        for name in [
            "registry",
            "git",
            "archive",
            "local_archive",
            "local_directory",
            "installed",
            "hand-written",
            "",
        ] {
            assert_eq!(SourceKind::from_name(name).as_str(), name);
        }
        assert_eq!(SourceKind::from_name("installed"), SourceKind::Installed);
    }

    fn parse(s: &str) -> PackSource {
        PackSource::parse(s, None, "github.com").unwrap()
    }

    #[test]
    fn registry_refs() {
        assert_eq!(
            parse("core"),
            PackSource::Registry {
                pack_ref: "core".into(),
                selector: VersionSelector::Latest
            }
        );
        assert_eq!(
            parse("core@1.2.0"),
            PackSource::Registry {
                pack_ref: "core".into(),
                selector: VersionSelector::Exact("1.2.0".parse().unwrap())
            }
        );
        assert!(matches!(
            parse("core@^1.2"),
            PackSource::Registry {
                selector: VersionSelector::Range(_),
                ..
            }
        ));
        assert_eq!(
            parse("core@latest"),
            PackSource::Registry {
                pack_ref: "core".into(),
                selector: VersionSelector::Latest
            }
        );
        for bad in ["Core", "core@", "co re", "c"] {
            assert!(PackSource::parse(bad, None, "github.com").is_err(), "{bad}");
        }
    }

    #[test]
    fn git_forms_and_ref_spec() {
        let git = |url: &str, r: Option<&str>| PackSource::Git {
            url: url.into(),
            reference: r.map(Into::into),
        };
        assert_eq!(
            parse("github:attune-io/pack-aws@v1.0.0"),
            git("https://github.com/attune-io/pack-aws.git", Some("v1.0.0"))
        );
        assert_eq!(
            PackSource::parse("github:org/repo", Some("main"), "git.example").unwrap(),
            git("https://git.example/org/repo.git", Some("main"))
        );
        assert_eq!(
            PackSource::parse("https://h/org/repo.git@v2", Some("main"), "x").unwrap(),
            git("https://h/org/repo.git", Some("v2"))
        );
        assert_eq!(
            parse("git@github.com:org/repo.git"),
            git("git@github.com:org/repo.git", None)
        );
        assert_eq!(
            parse("git@github.com:org/repo.git@abc123"),
            git("git@github.com:org/repo.git", Some("abc123"))
        );
        assert_eq!(
            parse("git://127.0.0.1:9418/r"),
            git("git://127.0.0.1:9418/r", None)
        );
        assert_eq!(parse("ssh://git@h/r.git"), git("ssh://git@h/r.git", None));
    }

    #[test]
    fn archives_and_unknown_remotes() {
        assert_eq!(
            parse("https://example.com/p-1.0.tar.gz"),
            PackSource::Archive {
                url: "https://example.com/p-1.0.tar.gz".into()
            }
        );
        assert!(matches!(
            parse("http://h/p.ZIP"),
            PackSource::Archive { .. }
        ));
        assert!(matches!(
            parse("https://codeload.github.com/o/r/tar.gz/0123abcd"),
            PackSource::Archive { .. }
        ));
        // ref_spec does not turn an archive into git.
        assert!(matches!(
            PackSource::parse("https://h/p.tgz", Some("main"), "x").unwrap(),
            PackSource::Archive { .. }
        ));
        assert!(matches!(
            parse("https://h/org/repo"),
            PackSource::RemoteUnknown { .. }
        ));
        assert!(PackSource::parse("https://user:pw@h/p.zip", None, "x").is_err());
        assert!(PackSource::parse("ftp://h/p.zip", None, "x").is_err());
    }

    #[test]
    fn credentials_are_refused_in_every_scheme_without_being_repeated() {
        for url in [
            "git://user:pw@127.0.0.1/x",
            "git://user@127.0.0.1/x",
            "https://u:p@example.com/p.tar.gz",
            "https://tok@example.com/org/repo.git",
            "http://u:p@h/org/repo",
            "ssh://git:pw@host/org/repo.git",
            "git+https://u:pw@host/org/repo.git",
            "user:pw@host:org/repo.git",
            "https://example.com/p.tar.gz?token=pw",
            "https://example.com/p.zip?X-Amz-Signature=pw&X-Amz-Credential=pw",
            "https://h/org/repo.git?private_token=pw",
            "file:///tmp/p.zip?access_token=pw",
            "https://h/p.tgz?api-key=pw",
            "https://h/p.tgz?%74oken=pw",
        ] {
            let err = PackSource::parse(url, None, "github.com").unwrap_err();
            let text = err.to_string();
            assert!(
                matches!(err, SourceError::Credentials { .. }),
                "{url}: {text}"
            );
            assert!(
                text.contains("credentials in URLs are not accepted"),
                "{text}"
            );
            assert!(text.contains("download.git.https_token"), "{text}");
            assert!(!text.contains("pw"), "{url} leaked into: {text}");
        }
    }

    #[test]
    fn ssh_accounts_and_harmless_queries_pass() {
        for ok in [
            "ssh://git@host/org/repo.git",
            "git@github.com:org/repo.git",
            "git@github.com:org/repo.git@v1",
            "https://example.com/p.tar.gz?raw=true",
            "https://example.com/p.tar.gz?keyword=x&monkey=1",
            "core@1.2.0",
            "./packs/a@b",
        ] {
            assert_eq!(check_no_credentials(ok), Ok(()), "{ok}");
        }
    }

    #[test]
    fn stored_urls_carry_no_userinfo_query_or_fragment() {
        for (raw, stored) in [
            (
                "https://u:p@h/org/p.git?private_token=x#f",
                "https://h/org/p.git",
            ),
            ("https://tok@host", "https://host"),
            ("https://h/p.tar.gz?raw=true", "https://h/p.tar.gz"),
            ("ssh://git:pw@host:22/r.git", "ssh://git@host:22/r.git"),
            ("ssh://git@host:22/r.git", "ssh://git@host:22/r.git"),
            ("git://u:p@127.0.0.1:9418/r", "git://127.0.0.1:9418/r"),
            ("user:pw@host:org/repo.git", "user@host:org/repo.git"),
            ("git@host:org/r.git@v1", "git@host:org/r.git@v1"),
            ("/tmp/pack", "/tmp/pack"),
            ("core@^1.2", "core@^1.2"),
        ] {
            assert_eq!(redact_url(raw), stored, "{raw}");
        }
    }

    #[test]
    fn local_paths() {
        for p in ["/tmp/pack", "./pack", "../pack", "packs/core"] {
            assert_eq!(parse(p), PackSource::Local { path: p.into() });
        }
        assert_eq!(
            parse("file:///tmp/p.zip"),
            PackSource::Local {
                path: "/tmp/p.zip".into()
            }
        );
        assert!(PackSource::parse("file://relative", None, "x").is_err());
    }
}
