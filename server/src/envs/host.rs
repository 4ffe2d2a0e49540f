//! The host's configuration of pip and npm, captured once when the BuildEnvs stage
//! is built and handed to every pip/npm run.
//!
//! pip and npm run sandboxed with a private `HOME` and a minimal environment, so they
//! cannot read the host's `pip.conf`, `.npmrc` or proxy variables themselves. On a
//! host whose index, proxy or CA bundle is configured (a private mirror, a corporate
//! proxy re-signing TLS) every build would then fail. [`HostConfig::capture`] reads
//! what pip and npm would read for the server's user — pip's configuration files in
//! pip's order and `PIP_*` variables, the user and global `.npmrc` and
//! `npm_config_*` variables, the standard proxy and CA-bundle variables — keeps the
//! settings that decide where and how packages are fetched ([`PIP_KEYS`],
//! [`NPM_KEYS`]), and passes them to the tools as environment variables, which win
//! over any file the tools read. Files they name (CA bundles, client certificates,
//! local wheel directories) become readable to the sandboxed child.
//!
//! Credentials found there (`https://user:token@mirror/simple`,
//! `//registry/:_authToken=…`) are registered with the scrubber at capture.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// `build.host_tool_config`: whether builds use the host's pip and npm configuration.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HostToolConfig {
    /// pip and npm see the host's index, proxy and certificate configuration.
    #[default]
    #[serde(alias = "honor")]
    Honour,
    /// Isolated builds: only the `build.*` settings (and, with
    /// `build.pass_proxy_env`, the proxy and CA-bundle variables).
    Ignore,
}

impl HostToolConfig {
    pub const SETTING: &'static str = "build.host_tool_config";

    pub fn as_str(self) -> &'static str {
        match self {
            HostToolConfig::Honour => "honour",
            HostToolConfig::Ignore => "ignore",
        }
    }
}

/// Where the host's configuration is read from: environment variables and `HOME`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostEnvironment {
    pub vars: BTreeMap<String, String>,
    pub home: Option<PathBuf>,
    /// Also read the system-wide files (`/etc/xdg/pip/pip.conf`, `/etc/pip.conf`,
    /// npm's global `npmrc`).
    pub system_files: bool,
}

impl HostEnvironment {
    /// The server process's environment, `HOME` and system files.
    pub fn from_process() -> Self {
        let vars: BTreeMap<String, String> = std::env::vars_os()
            .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
            .collect();
        let home = vars.get("HOME").map(PathBuf::from);
        Self {
            vars,
            home,
            system_files: true,
        }
    }

    /// Exactly `vars` and the files under `home` (and those the variables name);
    /// no system-wide file is read. For tests and embedders.
    pub fn new<K: Into<String>, V: Into<String>>(
        vars: impl IntoIterator<Item = (K, V)>,
        home: Option<PathBuf>,
    ) -> Self {
        Self {
            vars: vars
                .into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
            home,
            system_files: false,
        }
    }

    fn var(&self, name: &str) -> Option<&str> {
        self.vars
            .get(name)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    }
}

/// The pip settings (normalised long option names) taken from the host: where
/// packages come from and how pip reaches it. Other options are not taken (they
/// could move the install out of the virtualenv); `build.pip_extra_args` sets them.
pub const PIP_KEYS: &[&str] = &[
    "index-url",
    "extra-index-url",
    "trusted-host",
    "find-links",
    "no-index",
    "cert",
    "client-cert",
    "proxy",
    "timeout",
    "retries",
];

/// pip options whose value is a whitespace-separated list.
const PIP_LIST_KEYS: &[&str] = &["extra-index-url", "trusted-host", "find-links"];

/// The npm settings taken from the host, besides per-registry (`//host/:…`) and
/// per-scope (`@scope:registry`) keys.
pub const NPM_KEYS: &[&str] = &[
    "registry",
    "_auth",
    "_authtoken",
    "always-auth",
    "ca",
    "cafile",
    "cert",
    "key",
    "strict-ssl",
    "proxy",
    "https-proxy",
    "noproxy",
    "local-address",
    "fetch-timeout",
    "fetch-retries",
    "fetch-retry-factor",
    "fetch-retry-mintimeout",
    "fetch-retry-maxtimeout",
    "maxsockets",
];

/// The standard proxy and CA-bundle variables.
pub const STANDARD_VARS: &[&str] = &[
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "NO_PROXY",
    "ALL_PROXY",
    "http_proxy",
    "https_proxy",
    "no_proxy",
    "all_proxy",
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
    "REQUESTS_CA_BUNDLE",
    "PIP_CERT",
    "NODE_EXTRA_CA_CERTS",
];

/// Standard variables that name files or directories the tools read.
const STANDARD_PATH_VARS: &[&str] = &[
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
    "REQUESTS_CA_BUNDLE",
    "PIP_CERT",
    "NODE_EXTRA_CA_CERTS",
];

/// One setting and where it was found (a file path or an environment variable).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostValue {
    pub value: String,
    pub source: String,
}

/// What the host configures for pip and npm, captured once.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostConfig {
    /// Merged pip settings, by option name ([`PIP_KEYS`]).
    pub pip: BTreeMap<String, HostValue>,
    /// Merged npm settings, by key as npm spells it.
    pub npm: BTreeMap<String, HostValue>,
    /// [`STANDARD_VARS`] set on the host.
    pub standard: BTreeMap<String, String>,
}

impl HostConfig {
    /// Reads the host's configuration (whatever `build.host_tool_config` says:
    /// isolated builds name what they ignored when they fail). Unreadable files are
    /// skipped, as pip and npm skip them. Credentials are registered with the
    /// scrubber.
    pub fn capture(env: &HostEnvironment) -> Self {
        let mut config = HostConfig::default();
        for name in STANDARD_VARS {
            if let Some(value) = env.var(name) {
                config.standard.insert(name.to_string(), value.to_string());
            }
        }
        config.pip = capture_pip(env);
        config.npm = capture_npm(env);
        config.register_secrets();
        config
    }

    fn register_secrets(&self) {
        for value in self.standard.values() {
            register_url_secrets(value);
        }
        for v in self.pip.values() {
            for word in v.value.split_whitespace() {
                register_url_secrets(word);
            }
        }
        for (key, v) in &self.npm {
            let bare = key.rsplit(':').next().unwrap_or(key);
            if matches!(
                bare.to_ascii_lowercase().as_str(),
                "_auth" | "_authtoken" | "_password" | "password" | "key"
            ) {
                crate::sandbox::register_secret(&v.value);
            } else {
                register_url_secrets(&v.value);
            }
        }
    }

    /// `PIP_*` variables for a pip run; the explicit `build.*` settings win.
    pub fn pip_env(&self, settings: &super::EnvSettings) -> Vec<(String, String)> {
        self.pip
            .iter()
            .filter(|(key, _)| match key.as_str() {
                "index-url" => settings.pip_index_url.is_none(),
                "extra-index-url" => settings.pip_extra_index_urls.is_empty(),
                "find-links" => settings.pip_find_links.is_empty(),
                _ => true,
            })
            .map(|(key, v)| (pip_var(key), v.value.clone()))
            .collect()
    }

    /// `npm_config_*` variables for an npm run; `build.npm_registry` wins.
    pub fn npm_env(&self, settings: &super::EnvSettings) -> Vec<(String, String)> {
        self.npm
            .iter()
            .filter(|(key, _)| !(key.as_str() == "registry" && settings.npm_registry.is_some()))
            .map(|(key, v)| (npm_var(key), v.value.clone()))
            .collect()
    }

    /// The standard variables, as set on the host.
    pub fn standard_env(&self) -> Vec<(String, String)> {
        self.standard
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    /// Files named by the standard variables (CA bundles and directories).
    pub fn standard_read_paths(&self) -> Vec<PathBuf> {
        STANDARD_PATH_VARS
            .iter()
            .filter_map(|k| self.standard.get(*k))
            .filter_map(|v| absolute_path(v))
            .collect()
    }

    /// Files the pip settings name: CA bundle, client certificate, local
    /// find-links directories.
    pub fn pip_read_paths(&self) -> Vec<PathBuf> {
        let mut out = Vec::new();
        for key in ["cert", "client-cert"] {
            if let Some(path) = self.pip.get(key).and_then(|v| absolute_path(&v.value)) {
                out.push(path);
            }
        }
        if let Some(links) = self.pip.get("find-links") {
            for link in links.value.split_whitespace() {
                let local = link.strip_prefix("file://").unwrap_or(link);
                out.extend(absolute_path(local));
            }
        }
        out
    }

    /// Files the npm settings name (`cafile`, `certfile`, `keyfile`, per registry
    /// too).
    pub fn npm_read_paths(&self) -> Vec<PathBuf> {
        self.npm
            .iter()
            .filter(|(key, _)| {
                let bare = key.rsplit(':').next().unwrap_or(key);
                matches!(bare, "cafile" | "certfile" | "keyfile")
            })
            .filter_map(|(_, v)| absolute_path(&v.value))
            .collect()
    }

    /// The index pip would use from the host's configuration.
    pub fn pip_index(&self) -> Option<&HostValue> {
        self.pip.get("index-url")
    }

    /// The registry npm would use from the host's configuration.
    pub fn npm_registry(&self) -> Option<&HostValue> {
        self.npm.get("registry")
    }
}

fn absolute_path(value: &str) -> Option<PathBuf> {
    let value = value.trim();
    value.starts_with('/').then(|| PathBuf::from(value))
}

/// `PIP_INDEX_URL` for `index-url`.
fn pip_var(key: &str) -> String {
    format!("PIP_{}", key.to_ascii_uppercase().replace('-', "_"))
}

/// `npm_config_https_proxy` for `https-proxy`; per-registry and per-scope keys stay
/// as they are (npm does not normalise `npm_config_//host/:_authToken`).
fn npm_var(key: &str) -> String {
    if key.starts_with("//") || key.starts_with('@') {
        format!("npm_config_{key}")
    } else {
        format!("npm_config_{}", key.replace('-', "_"))
    }
}

/// pip's name for an option: lower case, `_` as `-`, no leading `--`;
/// `default-timeout` is `timeout`.
fn normalise_pip_key(key: &str) -> String {
    let key = key
        .trim()
        .trim_start_matches("--")
        .to_ascii_lowercase()
        .replace('_', "-");
    if key == "default-timeout" {
        "timeout".to_string()
    } else {
        key
    }
}

/// pip's configuration files, lowest precedence first, as pip loads them: the
/// global ones (`$XDG_CONFIG_DIRS/pip/pip.conf`, `/etc/pip.conf`), the user's
/// (`~/.pip/pip.conf`, `$XDG_CONFIG_HOME/pip/pip.conf`, skipped when
/// `PIP_CONFIG_FILE` names an existing file), then `PIP_CONFIG_FILE`. `None`:
/// `PIP_CONFIG_FILE` is `/dev/null`, which makes pip read no file at all.
fn pip_config_files(env: &HostEnvironment) -> Option<Vec<PathBuf>> {
    let env_file = env.var("PIP_CONFIG_FILE").map(PathBuf::from);
    if env_file.as_deref() == Some(Path::new("/dev/null")) {
        return None;
    }
    let mut files = Vec::new();
    if env.system_files {
        let dirs = env.var("XDG_CONFIG_DIRS").unwrap_or("/etc/xdg");
        files.extend(
            dirs.split(':')
                .filter(|d| !d.is_empty())
                .map(|d| Path::new(d).join("pip").join("pip.conf")),
        );
        files.push(PathBuf::from("/etc/pip.conf"));
    }
    if !env_file.as_deref().is_some_and(Path::is_file)
        && let Some(home) = &env.home
    {
        files.push(home.join(".pip").join("pip.conf"));
        let config_home = env
            .var("XDG_CONFIG_HOME")
            .map(PathBuf::from)
            .unwrap_or_else(|| home.join(".config"));
        files.push(config_home.join("pip").join("pip.conf"));
    }
    files.extend(env_file);
    Some(files)
}

/// Host configuration files are small; a larger one is not a configuration file.
const MAX_CONFIG_BYTES: u64 = 1 << 20;

fn read_config_file(path: &Path) -> Option<String> {
    use std::io::Read as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    // Opened without blocking (a FIFO named by a config variable must not hang the
    // start) and judged by `fstat` of what was opened.
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags((rustix::fs::OFlags::NONBLOCK | rustix::fs::OFlags::NOCTTY).bits() as i32)
        .open(path)
        .ok()?;
    if !file.metadata().ok()?.is_file() {
        return None;
    }
    let mut text = String::new();
    file.take(MAX_CONFIG_BYTES).read_to_string(&mut text).ok()?;
    Some(text)
}

fn capture_pip(env: &HostEnvironment) -> BTreeMap<String, HostValue> {
    let mut merged = BTreeMap::new();
    for file in pip_config_files(env).unwrap_or_default() {
        let Some(text) = read_config_file(&file) else {
            continue;
        };
        let sections = parse_pip_conf(&text);
        // pip applies `[global]`, then the command's own section.
        for section in ["global", "install"] {
            for (key, value) in sections.get(section).into_iter().flatten() {
                let key = normalise_pip_key(key);
                if PIP_KEYS.contains(&key.as_str()) {
                    let value = if PIP_LIST_KEYS.contains(&key.as_str()) {
                        value.split_whitespace().collect::<Vec<_>>().join(" ")
                    } else {
                        value.trim().to_string()
                    };
                    merged.insert(
                        key,
                        HostValue {
                            value,
                            source: file.display().to_string(),
                        },
                    );
                }
            }
        }
    }
    for (name, value) in &env.vars {
        let Some(key) = name.strip_prefix("PIP_") else {
            continue;
        };
        let key = normalise_pip_key(key);
        if PIP_KEYS.contains(&key.as_str()) && !value.is_empty() {
            merged.insert(
                key,
                HostValue {
                    value: value.clone(),
                    source: name.clone(),
                },
            );
        }
    }
    merged
}

/// pip.conf (configparser syntax): `[section]`, `key = value` or `key: value`,
/// indented lines continue the previous value, `#`/`;` start comment lines.
pub(crate) fn parse_pip_conf(text: &str) -> BTreeMap<String, Vec<(String, String)>> {
    let mut sections: BTreeMap<String, Vec<(String, String)>> = BTreeMap::new();
    let mut section: Option<String> = None;
    for raw in text.lines() {
        let trimmed = raw.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') || trimmed.starts_with(';') {
            continue;
        }
        if raw.starts_with(char::is_whitespace) {
            if let Some(entries) = section.as_ref().and_then(|s| sections.get_mut(s))
                && let Some((_, value)) = entries.last_mut()
            {
                value.push('\n');
                value.push_str(trimmed);
            }
            continue;
        }
        if let Some(name) = trimmed.strip_prefix('[').and_then(|r| r.strip_suffix(']')) {
            let name = name.trim().to_string();
            sections.entry(name.clone()).or_default();
            section = Some(name);
            continue;
        }
        let Some(section) = &section else {
            continue;
        };
        let split = trimmed.find(['=', ':']);
        let Some(at) = split else {
            continue;
        };
        let (key, value) = (trimmed[..at].trim(), trimmed[at + 1..].trim());
        let entries = sections.entry(section.clone()).or_default();
        // A key given twice in one file: the last one counts.
        entries.retain(|(k, _)| k != key);
        entries.push((key.to_string(), value.to_string()));
    }
    sections
}

/// npm's user and global configuration files, lowest precedence first.
fn npm_config_files(env: &HostEnvironment) -> Vec<PathBuf> {
    let lookup = |name: &str| {
        env.vars
            .iter()
            .find(|(k, v)| k.eq_ignore_ascii_case(name) && !v.is_empty())
            .map(|(_, v)| PathBuf::from(v))
    };
    let mut files = Vec::new();
    let global = lookup("npm_config_globalconfig").or_else(|| {
        if !env.system_files {
            return None;
        }
        let prefix = lookup("npm_config_prefix").or_else(|| {
            let node = super::util::find_on_path("node")?;
            let real = std::fs::canonicalize(node).ok()?;
            Some(real.parent()?.parent()?.to_path_buf())
        })?;
        Some(prefix.join("etc").join("npmrc"))
    });
    files.extend(global);
    let user = lookup("npm_config_userconfig").or_else(|| Some(env.home.as_ref()?.join(".npmrc")));
    files.extend(user);
    files
}

fn npm_key_taken(key: &str) -> bool {
    key.starts_with("//") || (key.starts_with('@') && key.ends_with(":registry")) || {
        NPM_KEYS.contains(&key.to_ascii_lowercase().as_str())
    }
}

fn capture_npm(env: &HostEnvironment) -> BTreeMap<String, HostValue> {
    let mut merged = BTreeMap::new();
    for file in npm_config_files(env) {
        let Some(text) = read_config_file(&file) else {
            continue;
        };
        for (key, value) in parse_npmrc(&text, &env.vars) {
            if npm_key_taken(&key) {
                merged.insert(
                    key,
                    HostValue {
                        value,
                        source: file.display().to_string(),
                    },
                );
            }
        }
    }
    for (name, value) in &env.vars {
        const PREFIX: &str = "npm_config_";
        let Some(raw) = name
            .get(..PREFIX.len())
            .filter(|p| p.eq_ignore_ascii_case(PREFIX))
            .and_then(|_| name.get(PREFIX.len()..))
            .filter(|raw| !raw.is_empty() && !value.is_empty())
        else {
            continue;
        };
        let key = if raw.starts_with("//") {
            raw.to_string()
        } else {
            let mut key = String::new();
            for (i, c) in raw.chars().enumerate() {
                key.push(if c == '_' && i > 0 { '-' } else { c });
            }
            key.to_ascii_lowercase()
        };
        if npm_key_taken(&key) {
            merged.insert(
                key,
                HostValue {
                    value: value.clone(),
                    source: name.clone(),
                },
            );
        }
    }
    merged
}

/// `.npmrc` (ini): `key=value`, `#`/`;` comments, quoted values, `${VAR}`
/// replaced from the environment as npm does. Keys inside `[sections]` are not
/// settings npm uses and are skipped; `key[]=` arrays keep their last value.
pub(crate) fn parse_npmrc(text: &str, vars: &BTreeMap<String, String>) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut in_section = false;
    for raw in text.lines() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if line.starts_with('[') && line.ends_with(']') {
            in_section = true;
            continue;
        }
        if in_section {
            continue;
        }
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        let key = key.trim().trim_end_matches("[]");
        let mut value = value.trim();
        if value.len() >= 2
            && ((value.starts_with('"') && value.ends_with('"'))
                || (value.starts_with('\'') && value.ends_with('\'')))
        {
            value = &value[1..value.len() - 1];
        }
        out.push((substitute(key, vars), substitute(value, vars)));
    }
    out
}

/// npm's `${VAR}` (and `${VAR?}`) substitution; an unset variable becomes empty.
fn substitute(text: &str, vars: &BTreeMap<String, String>) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        let Some(len) = rest[start + 2..].find('}') else {
            break;
        };
        out.push_str(&rest[..start]);
        let name = rest[start + 2..start + 2 + len].trim_end_matches('?');
        out.push_str(vars.get(name).map(String::as_str).unwrap_or(""));
        rest = &rest[start + 2 + len + 1..];
    }
    out.push_str(rest);
    out
}

/// The userinfo of `scheme://user:password@host/...` (`None` without one).
fn userinfo(url: &str) -> Option<(usize, usize)> {
    let start = url.find("://")? + 3;
    let end = start
        + url[start..]
            .find(['/', '?', '#'])
            .unwrap_or(url.len() - start);
    let at = url[start..end].rfind('@')?;
    Some((start, start + at))
}

/// Registers the credentials a URL carries (the password, or a user name standing
/// alone as a token, raw and percent-decoded).
fn register_url_secrets(url: &str) {
    let Some((start, end)) = userinfo(url) else {
        return;
    };
    let info = &url[start..end];
    let secret = match info.split_once(':') {
        Some((_, password)) => password,
        None => info,
    };
    crate::sandbox::register_secret(info);
    crate::sandbox::register_secret(secret);
    if let Some(decoded) = percent_decode(secret) {
        crate::sandbox::register_secret(&decoded);
    }
}

/// `%XX` escapes decoded (`None` when there are none or the result is not UTF-8).
fn percent_decode(text: &str) -> Option<String> {
    if !text.contains('%') {
        return None;
    }
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let (Some(hi), Some(lo)) = (hex(bytes[i + 1]), hex(bytes[i + 2]))
        {
            out.push((hi * 16 + lo) as u8);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// `url` with its credentials replaced by `****`, for messages.
pub fn redact_url(url: &str) -> String {
    match userinfo(url) {
        Some((start, end)) => format!("{}****{}", &url[..start], &url[end..]),
        None => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(path: &Path, text: &str) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }

    #[test]
    fn pip_files_merge_in_pips_order_and_variables_win() {
        let home = tempfile::tempdir().unwrap();
        let h = home.path();
        write(
            &h.join(".pip/pip.conf"),
            "[global]\nindex-url = https://legacy/simple\ntimeout = 5\n",
        );
        write(
            &h.join(".config/pip/pip.conf"),
            "[global]\nindex-url = https://user/simple\nextra-index-url =\n    https://a/simple\n    https://b/simple\ntarget = /nope\n[install]\ntrusted-host = a b\n",
        );
        let env = HostEnvironment::new([("PIP_DEFAULT_TIMEOUT", "60")], Some(h.to_path_buf()));
        let config = HostConfig::capture(&env);
        assert_eq!(config.pip["index-url"].value, "https://user/simple");
        assert_eq!(
            config.pip["extra-index-url"].value,
            "https://a/simple https://b/simple"
        );
        assert_eq!(config.pip["trusted-host"].value, "a b");
        assert_eq!(config.pip["timeout"].value, "60");
        assert_eq!(config.pip["timeout"].source, "PIP_DEFAULT_TIMEOUT");
        assert!(
            !config.pip.contains_key("target"),
            "install location not taken"
        );

        // An existing PIP_CONFIG_FILE replaces the user's files and wins over them.
        let env_file = h.join("env.conf");
        write(&env_file, "[global]\ncert = /etc/ssl/x.pem\n");
        let env = HostEnvironment::new(
            [("PIP_CONFIG_FILE", env_file.to_str().unwrap())],
            Some(h.to_path_buf()),
        );
        let config = HostConfig::capture(&env);
        assert_eq!(config.pip.len(), 1, "{:?}", config.pip);
        assert_eq!(
            config.pip_read_paths(),
            vec![PathBuf::from("/etc/ssl/x.pem")]
        );

        // /dev/null: pip reads no file.
        let env = HostEnvironment::new([("PIP_CONFIG_FILE", "/dev/null")], Some(h.to_path_buf()));
        assert!(HostConfig::capture(&env).pip.is_empty());
    }

    #[test]
    fn a_fifo_in_place_of_a_config_file_is_skipped_without_blocking() {
        let home = tempfile::tempdir().unwrap();
        for name in [".npmrc", "pip.fifo"] {
            rustix::fs::mknodat(
                rustix::fs::CWD,
                home.path().join(name),
                rustix::fs::FileType::Fifo,
                rustix::fs::Mode::from_raw_mode(0o644),
                0,
            )
            .unwrap();
        }
        let fifo = home.path().join("pip.fifo");
        let env = HostEnvironment::new(
            [("PIP_CONFIG_FILE", fifo.to_str().unwrap())],
            Some(home.path().to_path_buf()),
        );
        let config = HostConfig::capture(&env);
        assert!(config.pip.is_empty(), "{:?}", config.pip);
        assert!(config.npm.is_empty(), "{:?}", config.npm);
    }

    #[test]
    fn explicit_settings_win_over_the_host() {
        let env = HostEnvironment::new(
            [
                ("PIP_INDEX_URL", "https://host/simple"),
                ("PIP_RETRIES", "1"),
                ("npm_config_registry", "https://host-npm/"),
            ],
            None,
        );
        let config = HostConfig::capture(&env);
        let settings = crate::envs::EnvSettings {
            pip_index_url: Some("https://mine/simple".into()),
            npm_registry: Some("https://mine-npm/".into()),
            ..Default::default()
        };
        assert_eq!(
            config.pip_env(&settings),
            vec![("PIP_RETRIES".to_string(), "1".to_string())]
        );
        assert!(config.npm_env(&settings).is_empty());
        assert_eq!(
            config.pip_env(&Default::default()).len(),
            2,
            "without settings the host's index is used"
        );
    }

    #[test]
    fn npmrc_user_file_and_variables() {
        let home = tempfile::tempdir().unwrap();
        write(
            &home.path().join(".npmrc"),
            "registry=https://mirror.example/npm/\n//mirror.example/npm/:_authToken=${NPM_TOKEN}\n@corp:registry=https://corp/\ncafile=\"/etc/corp-ca.pem\"\nprefix=/nope\n",
        );
        let env = HostEnvironment::new(
            [
                ("NPM_TOKEN", "npm-host-token-0123456789"),
                ("NPM_CONFIG_HTTPS_PROXY", "http://proxy:3128"),
            ],
            Some(home.path().to_path_buf()),
        );
        let config = HostConfig::capture(&env);
        let vars: BTreeMap<String, String> =
            config.npm_env(&Default::default()).into_iter().collect();
        assert_eq!(
            vars["npm_config_//mirror.example/npm/:_authToken"],
            "npm-host-token-0123456789"
        );
        assert_eq!(vars["npm_config_registry"], "https://mirror.example/npm/");
        assert_eq!(vars["npm_config_@corp:registry"], "https://corp/");
        assert_eq!(vars["npm_config_https_proxy"], "http://proxy:3128");
        assert!(!vars.contains_key("npm_config_prefix"));
        assert_eq!(
            config.npm_read_paths(),
            vec![PathBuf::from("/etc/corp-ca.pem")]
        );
        assert_eq!(
            crate::sandbox::scrub("token npm-host-token-0123456789 here"),
            "token [REDACTED] here"
        );
    }

    #[test]
    fn isolated_builds_get_only_the_proxy_variables_and_only_when_asked() {
        use crate::envs::{EnvSettings, PackageTool, host_environment};
        let env = HostEnvironment::new(
            [
                ("HTTPS_PROXY", "http://proxy:3128"),
                ("PIP_INDEX_URL", "https://host/simple"),
                ("SSL_CERT_FILE", "/etc/corp/ca.pem"),
            ],
            None,
        );
        let mut settings = EnvSettings {
            host: std::sync::Arc::new(HostConfig::capture(&env)),
            ..Default::default()
        };
        let (vars, paths) = host_environment(&settings, PackageTool::Pip);
        let vars: BTreeMap<String, String> = vars.into_iter().collect();
        assert_eq!(vars["PIP_INDEX_URL"], "https://host/simple");
        assert_eq!(vars["HTTPS_PROXY"], "http://proxy:3128");
        assert_eq!(paths, vec![PathBuf::from("/etc/corp/ca.pem")]);
        let (vars, _) = host_environment(&settings, PackageTool::Npm);
        assert!(!vars.iter().any(|(k, _)| k.starts_with("PIP_")), "{vars:?}");

        settings.host_tool_config = HostToolConfig::Ignore;
        assert_eq!(
            host_environment(&settings, PackageTool::Pip),
            (Vec::new(), Vec::new())
        );
        settings.pass_proxy_env = true;
        let (vars, paths) = host_environment(&settings, PackageTool::Pip);
        let names: Vec<&str> = vars.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(names, ["HTTPS_PROXY", "SSL_CERT_FILE"]);
        assert_eq!(paths, vec![PathBuf::from("/etc/corp/ca.pem")]);
    }

    #[test]
    fn fetch_failures_name_the_settings_to_look_at() {
        use crate::envs::{
            EnvSettings, FetchFailure, FetchProblem, PackageTool, ToolError, fetch_advice,
        };
        let url = "https://ci:advice-test-token-0123@mirror.example/simple/";
        let env = HostEnvironment::new([("PIP_INDEX_URL", url)], None);
        let mut settings = EnvSettings {
            host: std::sync::Arc::new(HostConfig::capture(&env)),
            ..Default::default()
        };
        let advice =
            fetch_advice(&settings, PackageTool::Pip, FetchProblem::Certificate).expect("advice");
        let error = ToolError::Fetch(Box::new(FetchFailure {
            what: "pip install".into(),
            status: "exit code 1".into(),
            headline: "ERROR: No matching distribution found for tinypkg".into(),
            label: "pip".into(),
            output_tail: "[SSL: CERTIFICATE_VERIFY_FAILED]\nERROR: No matching distribution found for tinypkg".into(),
            problem: FetchProblem::Certificate,
            advice,
        }));
        let text = error.to_string();
        for expected in [
            "TLS certificate",
            "https://****@mirror.example/simple/ (host configuration: PIP_INDEX_URL)",
            "`build.host_tool_config: ignore`",
            "`build.pip_index_url`",
            "--- last lines of pip output ---\n[SSL: CERTIFICATE_VERIFY_FAILED]",
        ] {
            assert!(text.contains(expected), "{expected:?} in {text}");
        }
        assert!(!text.contains("advice-test-token"), "{text}");
        assert!(!text.contains("  "), "{text}");

        settings.host_tool_config = HostToolConfig::Ignore;
        let text = fetch_advice(&settings, PackageTool::Pip, FetchProblem::NotOnIndex)
            .expect("an ignored host index explains a missing package")
            .to_string();
        for expected in [
            "its default index",
            "`build.host_tool_config: ignore`",
            "the host configures the index https://****@mirror.example/simple/",
            "`build.host_tool_config: honour`",
            "`build.pass_proxy_env: true`",
        ] {
            assert!(text.contains(expected), "{expected:?} in {text}");
        }
        assert!(!text.contains("  "), "{text}");
        let npm = fetch_advice(&settings, PackageTool::Npm, FetchProblem::Proxy)
            .expect("advice")
            .to_string();
        assert!(npm.contains("`build.npm_registry`"), "{npm}");
        assert_eq!(
            fetch_advice(
                &EnvSettings::default(),
                PackageTool::Pip,
                FetchProblem::NotOnIndex
            ),
            None,
            "a package missing from the default index is the pack's problem"
        );
    }

    #[test]
    fn credentialed_index_urls_are_scrubbed_and_redacted() {
        let url = "https://builder:s3cr3t-index-token-42@mirror.example/simple/";
        let env = HostEnvironment::new([("PIP_EXTRA_INDEX_URL", url)], None);
        let config = HostConfig::capture(&env);
        assert_eq!(
            config.pip["extra-index-url"].value, url,
            "pip gets it whole"
        );
        let line = format!("Looking in indexes: {url}");
        let scrubbed = crate::sandbox::scrub(&line);
        assert!(!scrubbed.contains("s3cr3t-index-token-42"), "{scrubbed}");
        assert_eq!(
            redact_url(url),
            "https://****@mirror.example/simple/",
            "messages show no credentials"
        );
        assert_eq!(redact_url("https://mirror/simple"), "https://mirror/simple");
        assert_eq!(
            redact_url("https://mirror/simple?a=b@c"),
            "https://mirror/simple?a=b@c"
        );
    }
}
