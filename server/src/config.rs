//! Typed server configuration.
//!
//! Sources, later ones winning: built-in defaults, the YAML file (`--config` /
//! `ATTUNE_PACKS_CONFIG`), environment variables, command-line flags.
//!
//! Environment scheme (documented in docs/configuration.md): every key is
//! `ATTUNE_PACKS_` + the key path in upper case, nesting levels joined by `__`.
//! `listen` is `ATTUNE_PACKS_LISTEN`, `registry.cache_ttl` is
//! `ATTUNE_PACKS_REGISTRY__CACHE_TTL`. Values are read as YAML scalars or flow
//! collections, so `ATTUNE_PACKS_ALLOWED_ROOTS='[/srv/packs, /tmp]'` sets a list.
//! Unknown keys, from the file or the environment, are errors: a typo must not be
//! silently ignored.

use std::{
    fmt,
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use serde::Deserialize;
use serde_yaml::{Mapping, Value};

pub const ENV_PREFIX: &str = "ATTUNE_PACKS_";
/// The environment variable naming the config file; not itself a config key.
pub const ENV_CONFIG_FILE: &str = "ATTUNE_PACKS_CONFIG";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path} is not valid YAML: {source}")]
    Yaml {
        path: PathBuf,
        source: serde_yaml::Error,
    },
    #[error("config file {path} must hold a YAML mapping at the top level")]
    NotAMapping { path: PathBuf },
    #[error("environment variable {var}: {reason}")]
    Env { var: String, reason: String },
    #[error("invalid configuration: {0}")]
    Invalid(String),
    #[error(
        "--examples: {} has no index.json ({source}); run from the root of a checkout, or \
         pass the examples directory: --examples=DIR",
        dir.display()
    )]
    Examples {
        dir: PathBuf,
        source: std::io::Error,
    },
}

/// A secret string that never shows up in `Debug` output or logs.
#[derive(Clone, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret([REDACTED])")
    }
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Address of the gRPC (and REST) listener.
    pub listen: SocketAddr,
    /// Where the server keeps its state: the SQLite database, the generated JWT secret.
    pub data_dir: PathBuf,
    /// `sqlite://…` or `postgres://…`. Default: `sqlite://<data_dir>/attune-packs.db`.
    pub database_url: Option<Secret>,
    /// HS256 secret the main Attune API signs tokens with. Default: generated once
    /// into `<data_dir>/jwt-secret` (mode 0600).
    pub jwt_secret: Option<Secret>,
    /// Where `jwt_secret` was set, so that commands can say which secret they use.
    #[serde(skip)]
    pub jwt_secret_origin: Option<SettingOrigin>,
    /// Every path a request names must resolve (symlinks followed) inside one of these.
    /// Default: the data dir, `/tmp` and `/opt/attune/packs`.
    pub allowed_roots: Option<Vec<PathBuf>>,
    /// Where RegisterBatch stores packs when a request names no `packs_base_dir`.
    /// Default: `<data_dir>/packs`.
    pub packs_base_dir: Option<PathBuf>,
    pub log_format: LogFormat,
    /// Upper bound from the first SIGINT/SIGTERM to exit: calls in flight are cancelled
    /// at once; their cleanup and any registration critical section get this long.
    #[serde(with = "humantime_serde_compat")]
    pub shutdown_grace: Duration,
    pub registry: RegistrySection,
    pub download: DownloadSection,
    pub register: RegisterSection,
    pub build: BuildSection,
    pub yaml: YamlSection,
    pub login: LoginSection,
    /// How long opening a database connection may take at start before the server
    /// gives up, naming the host and the operating system's error.
    #[serde(with = "humantime_serde_compat")]
    pub database_connect_timeout: Duration,
    pub sandbox: SandboxSection,
    pub pack_files: PackFilesSection,
    pub auth: AuthSection,
    pub events: EventsSection,
    pub history: HistorySection,
}

/// `auth:` — who may do what with a valid token.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthSection {
    /// Tokens without a `grants` claim (issued before grants existed, or by the main
    /// Attune API) may call every RPC. True by default so that upgrading the server
    /// does not lock out every existing client at once; set it to false once every
    /// token in use has been reissued with grants.
    pub legacy_tokens_full_access: bool,
}

impl Default for AuthSection {
    fn default() -> Self {
        Self {
            legacy_tokens_full_access: true,
        }
    }
}

/// Upper bound of `history.keep_versions`: each kept version is a whole copy of a
/// pack's files and environments.
pub const MAX_KEEP_VERSIONS: usize = 100;

/// `history:` — previous versions kept for RollbackPack.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HistorySection {
    /// Previous versions of each pack kept (files, rows, environment builds) when a
    /// registration replaces it; the oldest beyond this are deleted. 0 keeps none.
    pub keep_versions: usize,
}

impl Default for HistorySection {
    fn default() -> Self {
        Self { keep_versions: 2 }
    }
}

/// Upper bound of `pack_files.max_depth`: walks recurse (or hold a descriptor) per
/// level.
const MAX_PACK_DEPTH: u64 = 1024;

/// `pack_files:` — how much of a pack file may be read into memory. Pack files are
/// opened through the pack's directory descriptor (see `packfs`); these caps stop a
/// huge (or endless) file from growing the server.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PackFilesSection {
    /// Largest pack.yaml, in bytes.
    pub max_manifest_bytes: u64,
    /// Largest component file (actions/*.yaml, sensors/*.yaml, ...), in bytes.
    pub max_component_bytes: u64,
    /// Largest other pack file read whole (requirements.txt, package.json, lock
    /// files, test result files), in bytes.
    pub max_other_bytes: u64,
    /// Sum of the file sizes of a pack copied by RegisterBatch or Install into its
    /// staging directory, in bytes.
    pub max_pack_bytes: u64,
    /// Files and directories of one pack walked (copy, checksum, one listing).
    pub max_entries: u64,
    /// Largest single file of a pack copied by RegisterBatch or Install, in bytes.
    pub max_file_bytes: u64,
    /// Directories nested below a pack root (every walk of a pack).
    pub max_depth: u64,
}

impl Default for PackFilesSection {
    fn default() -> Self {
        let limits = crate::packfs::PackReadLimits::default();
        Self {
            max_manifest_bytes: limits.manifest_bytes,
            max_component_bytes: limits.component_bytes,
            max_other_bytes: limits.other_bytes,
            max_pack_bytes: crate::packfs::DEFAULT_PACK_BYTES,
            max_entries: crate::packfs::DEFAULT_PACK_ENTRIES,
            max_file_bytes: crate::packfs::DEFAULT_FILE_BYTES,
            max_depth: crate::packfs::DEFAULT_DEPTH,
        }
    }
}

impl PackFilesSection {
    /// Bounds of every walk over a pack directory (installed process-wide at start).
    pub fn tree_limits(&self) -> crate::packfs::TreeLimits {
        crate::packfs::TreeLimits::from_pack_files(
            self.max_pack_bytes,
            self.max_entries,
            self.max_file_bytes,
            self.max_depth,
        )
    }

    pub fn limits(&self) -> crate::packfs::PackReadLimits {
        crate::packfs::PackReadLimits {
            manifest_bytes: self.max_manifest_bytes,
            component_bytes: self.max_component_bytes,
            other_bytes: self.max_other_bytes,
        }
    }
}

/// `login:` — `/api/v1/auth/login`: the argon2 pool and the throttle of failures.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LoginSection {
    /// Password hashes verified at the same time; each holds the hash's argon2 memory
    /// (19 MiB with the default parameters) while it runs.
    pub hash_concurrency: usize,
    /// Logins allowed to wait for a hashing slot; more are answered 503 at once.
    pub max_waiting: usize,
    /// Longest password accepted (bytes); longer ones are refused before any work.
    pub max_password_bytes: usize,
    /// Largest login request body (bytes).
    pub max_body_bytes: usize,
    /// Failed attempts per email before each further one must wait.
    pub free_failures_per_email: u32,
    /// Failed attempts per client address before each further one must wait.
    pub free_failures_per_address: u32,
    /// The first wait; it doubles with each further failure, up to `max_delay`.
    #[serde(with = "humantime_serde_compat")]
    pub base_delay: Duration,
    #[serde(with = "humantime_serde_compat")]
    pub max_delay: Duration,
    /// Failures are forgotten after this long without another one.
    #[serde(with = "humantime_serde_compat")]
    pub failure_window: Duration,
    /// Emails and addresses tracked at once; the least recently seen is forgotten first.
    pub max_tracked: usize,
}

impl Default for LoginSection {
    fn default() -> Self {
        Self {
            hash_concurrency: 2,
            max_waiting: 64,
            max_password_bytes: 1024,
            max_body_bytes: 4096,
            free_failures_per_email: 3,
            free_failures_per_address: 20,
            base_delay: Duration::from_millis(250),
            max_delay: Duration::from_secs(60),
            failure_window: Duration::from_secs(15 * 60),
            max_tracked: 10_000,
        }
    }
}

/// `sandbox:` — how pack code (pack tests, pip/npm/venv builds) is confined.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SandboxSection {
    /// The user pack code runs as when the server runs as root (`root`: no switch).
    pub run_as_user: String,
    /// Create `run_as_user` with `useradd --system` at start when it does not exist.
    pub create_user: bool,
    /// `auto` (use Landlock when the kernel has it), `required` (refuse to start
    /// without it) or `off`.
    pub landlock: LandlockMode,
    /// Readable by pack code besides the system directories (interpreters installed
    /// outside `/usr`, for example).
    pub extra_read_paths: Vec<PathBuf>,
}

impl Default for SandboxSection {
    fn default() -> Self {
        Self {
            run_as_user: "attune-packs-runner".into(),
            create_user: true,
            landlock: LandlockMode::Auto,
            extra_read_paths: Vec::new(),
        }
    }
}

/// `yaml:` — limits on YAML read from packs (pack.yaml, component files), checked
/// before any value is built (see `crate::yaml_limits`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct YamlSection {
    pub max_document_bytes: u64,
    pub max_depth: u64,
    pub max_aliases: u64,
    pub max_nodes: u64,
    pub max_expanded_bytes: u64,
}

impl Default for YamlSection {
    fn default() -> Self {
        let d = crate::yaml_limits::YamlLimits::DEFAULT;
        Self {
            max_document_bytes: d.max_document_bytes,
            max_depth: d.max_depth,
            max_aliases: d.max_aliases,
            max_nodes: d.max_nodes,
            max_expanded_bytes: d.max_expanded_bytes,
        }
    }
}

impl YamlSection {
    pub fn limits(&self) -> crate::yaml_limits::YamlLimits {
        crate::yaml_limits::YamlLimits {
            max_document_bytes: self.max_document_bytes,
            max_depth: self.max_depth,
            max_aliases: self.max_aliases,
            max_nodes: self.max_nodes,
            max_expanded_bytes: self.max_expanded_bytes,
        }
    }
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum LandlockMode {
    #[default]
    Auto,
    Required,
    Off,
}

/// `build:` — BuildEnvs: concurrency, and pip/npm settings (nothing is hard-wired to a
/// public index; unset values leave the tools' own defaults).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BuildSection {
    /// Packs whose environments are built at the same time.
    pub concurrency: usize,
    pub pip_index_url: Option<Secret>,
    pub pip_extra_index_urls: Vec<Secret>,
    pub pip_find_links: Vec<String>,
    /// Install only from `pip_find_links` (`--no-index`).
    pub pip_offline: bool,
    pub pip_extra_args: Vec<String>,
    pub npm_registry: Option<Secret>,
    pub npm_offline: bool,
    pub npm_extra_args: Vec<String>,
    pub npm_ignore_scripts: bool,
    /// `honour` (default): pip and npm use the host's index, proxy and certificate
    /// configuration (pip.conf, `PIP_*`, `.npmrc`, `npm_config_*`, proxy and
    /// CA-bundle variables); `ignore`: isolated builds, only these `build.*`
    /// settings.
    pub host_tool_config: crate::envs::HostToolConfig,
    /// Isolated builds (`host_tool_config: ignore`): pass the server's proxy and
    /// CA-bundle variables to pip and npm anyway. Honoured builds always get them.
    pub pass_proxy_env: bool,
    /// Where the host's configuration is read from; `None`: this process's
    /// environment and `HOME`. Not a configuration key: set by embedders and tests.
    #[serde(skip)]
    pub host_environment: Option<crate::envs::HostEnvironment>,
}

impl Default for BuildSection {
    fn default() -> Self {
        Self {
            concurrency: 2,
            pip_index_url: None,
            pip_extra_index_urls: Vec::new(),
            pip_find_links: Vec::new(),
            pip_offline: false,
            pip_extra_args: Vec::new(),
            npm_registry: None,
            npm_offline: false,
            npm_extra_args: Vec::new(),
            npm_ignore_scripts: false,
            host_tool_config: crate::envs::HostToolConfig::default(),
            pass_proxy_env: false,
            host_environment: None,
        }
    }
}

impl BuildSection {
    pub fn env_settings(&self) -> crate::envs::EnvSettings {
        crate::envs::EnvSettings {
            pip_index_url: self.pip_index_url.as_ref().map(|s| s.expose().to_string()),
            pip_extra_index_urls: self
                .pip_extra_index_urls
                .iter()
                .map(|s| s.expose().to_string())
                .collect(),
            pip_find_links: self.pip_find_links.clone(),
            pip_offline: self.pip_offline,
            pip_extra_args: self.pip_extra_args.clone(),
            npm_registry: self.npm_registry.as_ref().map(|s| s.expose().to_string()),
            npm_offline: self.npm_offline,
            npm_extra_args: self.npm_extra_args.clone(),
            npm_ignore_scripts: self.npm_ignore_scripts,
            pass_proxy_env: self.pass_proxy_env,
            host_tool_config: self.host_tool_config,
            // Captured once by the BuildEnvs stage (`capture_host_config`).
            host: Default::default(),
            // From `pack_files`, set by the BuildEnvs stage from the path policy.
            read_limits: crate::packfs::PackReadLimits::default(),
        }
    }

    /// Reads the host's pip and npm configuration from `host_environment` (or this
    /// process's environment). Reads files: the BuildEnvs stage calls it once.
    pub fn capture_host_config(&self) -> crate::envs::HostConfig {
        let host = match &self.host_environment {
            Some(env) => crate::envs::HostConfig::capture(env),
            None => crate::envs::HostConfig::capture(&crate::envs::HostEnvironment::from_process()),
        };
        // Names and sources only: values may carry credentials.
        let named = |map: &std::collections::BTreeMap<String, crate::envs::HostValue>| {
            map.iter()
                .map(|(k, v)| format!("{k} ({})", v.source))
                .collect::<Vec<_>>()
        };
        tracing::info!(
            host_tool_config = self.host_tool_config.as_str(),
            pip = ?named(&host.pip),
            npm = ?named(&host.npm),
            variables = ?host.standard.keys().collect::<Vec<_>>(),
            "the host's pip and npm configuration"
        );
        host
    }
}

/// `events:` — pack events: the outbox the relay publishes to RabbitMQ and
/// WatchEvents reads (see docs/lifecycle.md#events).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EventsSection {
    /// `amqp://user:password@host:port/vhost` of the broker events are published to.
    /// Unset (the default): no broker; events are kept in the outbox for WatchEvents.
    pub amqp_url: Option<Secret>,
    /// The topic exchange events are published to (declared durable; routing key =
    /// event type).
    pub exchange: String,
    /// The first wait after the broker could not be reached or refused a message; it
    /// doubles with each further failure, up to `retry_max`.
    #[serde(with = "humantime_serde_compat")]
    pub retry_initial: Duration,
    #[serde(with = "humantime_serde_compat")]
    pub retry_max: Duration,
    /// How long connecting to the broker, and waiting for its confirm of a batch, may
    /// take before the attempt counts as failed.
    #[serde(with = "humantime_serde_compat")]
    pub publish_timeout: Duration,
    /// Events committed by another server process sharing the database are noticed
    /// within this long (those of this process at once).
    #[serde(with = "humantime_serde_compat")]
    pub poll_interval: Duration,
    /// Events read from the outbox at once, by the relay and by each WatchEvents call.
    pub batch_size: u32,
    /// Events older than this are deleted once published (or at once, without a
    /// broker); the newest event is always kept.
    #[serde(with = "humantime_serde_compat")]
    pub retain: Duration,
    /// At most this many events are kept; older ones are deleted first, under the
    /// same rule as `retain`.
    pub retain_max_events: u64,
    /// WatchEvents calls (and REST event streams) followed at once; more are refused
    /// with UNAVAILABLE.
    pub max_watchers: u32,
}

impl Default for EventsSection {
    fn default() -> Self {
        Self {
            amqp_url: None,
            exchange: "attune.packs".into(),
            retry_initial: Duration::from_millis(500),
            retry_max: Duration::from_secs(30),
            publish_timeout: Duration::from_secs(10),
            poll_interval: Duration::from_secs(2),
            batch_size: 100,
            retain: Duration::from_secs(7 * 24 * 3600),
            retain_max_events: 100_000,
            max_watchers: 256,
        }
    }
}

/// Largest `events.batch_size`: a batch is held in memory per reader.
const MAX_EVENT_BATCH: u32 = 1000;

impl EventsSection {
    fn validate(&self) -> Result<(), ConfigError> {
        if let Some(url) = &self.amqp_url {
            crate::events::relay::BrokerAddress::parse(url.expose())
                .map_err(|e| ConfigError::Invalid(format!("events.amqp_url: {e}")))?;
        }
        crate::events::relay::check_exchange_name(&self.exchange)
            .map_err(|e| ConfigError::Invalid(format!("events.exchange: {e}")))?;
        for (key, value) in [
            ("retry_initial", self.retry_initial),
            ("retry_max", self.retry_max),
            ("publish_timeout", self.publish_timeout),
            ("poll_interval", self.poll_interval),
        ] {
            if value.is_zero() {
                return Err(ConfigError::Invalid(format!(
                    "events.{key} must be longer than zero"
                )));
            }
        }
        if self.retry_max < self.retry_initial {
            return Err(ConfigError::Invalid(
                "events.retry_max must be at least events.retry_initial".into(),
            ));
        }
        if !(1..=MAX_EVENT_BATCH).contains(&self.batch_size) {
            return Err(ConfigError::Invalid(format!(
                "events.batch_size must be between 1 and {MAX_EVENT_BATCH}"
            )));
        }
        if self.retain_max_events == 0 || self.max_watchers == 0 {
            return Err(ConfigError::Invalid(
                "events.retain_max_events and events.max_watchers must be at least 1".into(),
            ));
        }
        Ok(())
    }
}

/// `register:` — RegisterBatch.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RegisterSection {
    /// Packs of one batch prepared (copied, tested, hashed) at the same time.
    pub concurrency: usize,
}

impl Default for RegisterSection {
    fn default() -> Self {
        Self { concurrency: 4 }
    }
}

/// `registry:` — the pack indices searched for registry refs.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RegistrySection {
    pub indices: Vec<IndexEntryConfig>,
    #[serde(with = "humantime_serde_compat")]
    pub cache_ttl: Duration,
    #[serde(with = "humantime_serde_compat")]
    pub timeout: Duration,
    /// Permit `http://` index URLs (tests, closed networks).
    pub allow_http: bool,
    pub max_index_bytes: u64,
    /// Permit a request's `registry_url` to be a `file://` URL (lets callers make the
    /// server read local files: off by default).
    pub allow_file_registry_url: bool,
}

impl Default for RegistrySection {
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

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IndexEntryConfig {
    pub url: String,
    #[serde(default)]
    pub name: Option<String>,
    /// Lower is searched first.
    #[serde(default = "default_priority")]
    pub priority: u32,
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Sent only to this index (e.g. Authorization); never logged.
    #[serde(default)]
    pub headers: std::collections::BTreeMap<String, Secret>,
    /// `verified` (default): every install source must carry a checksum that is
    /// verified. `unverified`: the index may also be in a format without checksums
    /// (the StackStorm Exchange); its packs are installed unverified and recorded so.
    #[serde(default)]
    pub trust: crate::registry::RegistryTrust,
}

impl RegistrySection {
    /// The registry client's settings; header values are handed over in the clear
    /// (the client keeps them out of logs and `Debug`).
    pub fn client_config(&self) -> crate::registry::RegistryConfig {
        crate::registry::RegistryConfig {
            indices: self
                .indices
                .iter()
                .map(|i| crate::registry::IndexConfig {
                    url: i.url.clone(),
                    name: i.name.clone(),
                    priority: i.priority,
                    enabled: i.enabled,
                    headers: i
                        .headers
                        .iter()
                        .map(|(k, v)| (k.clone(), v.expose().to_string()))
                        .collect(),
                    trust: i.trust,
                })
                .collect(),
            cache_ttl: self.cache_ttl,
            timeout: self.timeout,
            allow_http: self.allow_http,
            max_index_bytes: self.max_index_bytes,
            allow_file_registry_url: self.allow_file_registry_url,
        }
    }
}

fn default_priority() -> u32 {
    100
}

fn default_true() -> bool {
    true
}

/// `download:` — fetching packs.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DownloadSection {
    /// Packs of one request fetched at the same time.
    pub concurrency: usize,
    /// Host the `github:org/repo` shorthand expands to.
    pub github_host: String,
    /// Permit plain-http archive and git URLs.
    pub allow_http: bool,
    /// Permit requests to set `verify_ssl: false`.
    pub allow_insecure_tls: bool,
    /// Largest archive download, in bytes.
    pub max_archive_bytes: u64,
    /// Extraction limits (uncompressed bytes written, entries, one file).
    pub max_extracted_bytes: u64,
    pub max_entries: u64,
    pub max_entry_bytes: u64,
    pub git: GitSection,
    /// Largest tar extension record (pax header, GNU long name/link) read into memory.
    pub max_header_bytes: u64,
    /// Sum of the entry names of one archive (kept in memory while extracting).
    pub max_names_bytes: u64,
    /// Archive extractions running at once, across all requests.
    pub extract_concurrency: usize,
    /// Memory reserved for running extractions, across all requests; each reserves
    /// what the limits above let it hold (`archive::memory_needed`).
    pub extract_memory_bytes: u64,
}

impl Default for DownloadSection {
    fn default() -> Self {
        Self {
            concurrency: 4,
            github_host: "github.com".into(),
            allow_http: false,
            allow_insecure_tls: true,
            max_archive_bytes: 256 * 1024 * 1024,
            max_extracted_bytes: 512 * 1024 * 1024,
            max_entries: 20_000,
            max_entry_bytes: 100 * 1024 * 1024,
            git: GitSection::default(),
            max_header_bytes: 64 * 1024,
            max_names_bytes: 8 * 1024 * 1024,
            extract_concurrency: 4,
            extract_memory_bytes: 128 * 1024 * 1024,
        }
    }
}

impl DownloadSection {
    /// The extraction limits of an archive, in the form `archive` takes.
    pub fn extract_limits(&self) -> crate::archive::Limits {
        crate::archive::Limits {
            max_total_bytes: self.max_extracted_bytes,
            max_entries: self.max_entries,
            max_entry_bytes: self.max_entry_bytes,
            max_header_bytes: self.max_header_bytes,
            max_names_bytes: self.max_names_bytes,
        }
    }
}

/// `download.git:` — credentials for private repositories.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GitSection {
    pub https_username: Option<String>,
    pub https_token: Option<Secret>,
    pub ssh_key_path: Option<PathBuf>,
    pub ssh_key_passphrase: Option<Secret>,
    pub use_ssh_agent: bool,
}

impl GitSection {
    /// The credentials libgit2 is given, secrets exposed (`GitCredentials` keeps them
    /// out of `Debug`).
    pub fn credentials(&self) -> crate::git::GitCredentials {
        crate::git::GitCredentials {
            https_username: self.https_username.clone(),
            https_token: self.https_token.as_ref().map(|s| s.expose().to_string()),
            ssh_key_path: self.ssh_key_path.clone(),
            ssh_key_passphrase: self
                .ssh_key_passphrase
                .as_ref()
                .map(|s| s.expose().to_string()),
            use_ssh_agent: self.use_ssh_agent,
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            pack_files: PackFilesSection::default(),
            listen: SocketAddr::from(([127, 0, 0, 1], 50051)),
            data_dir: PathBuf::from("./attune-packs-data"),
            database_url: None,
            jwt_secret: None,
            jwt_secret_origin: None,
            allowed_roots: None,
            packs_base_dir: None,
            log_format: LogFormat::Text,
            shutdown_grace: Duration::from_secs(30),
            registry: RegistrySection::default(),
            download: DownloadSection::default(),
            register: RegisterSection::default(),
            build: BuildSection::default(),
            yaml: YamlSection::default(),
            login: LoginSection::default(),
            database_connect_timeout: Duration::from_secs(5),
            sandbox: SandboxSection::default(),
            auth: AuthSection::default(),
            events: EventsSection::default(),
            history: HistorySection::default(),
        }
    }
}

/// Which source set a configuration key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SettingOrigin {
    /// The YAML file at this path.
    File(PathBuf),
    /// This environment variable.
    Env(String),
}

/// Values given on the command line; they win over everything else.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub listen: Option<SocketAddr>,
    pub data_dir: Option<PathBuf>,
    pub database_url: Option<String>,
}

impl Config {
    /// Loads defaults, then `file`, then `env` (pairs of name and value, normally
    /// `std::env::vars()`), then `overrides`.
    pub fn load(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
        overrides: &Overrides,
    ) -> Result<Self, ConfigError> {
        let mut tree = match file {
            Some(path) => read_file(path)?,
            None => Mapping::new(),
        };
        let mut secret_origin = file
            .filter(|_| tree.contains_key("jwt_secret"))
            .map(|path| SettingOrigin::File(absolute(path)));
        for (name, value) in env {
            let Some(key) = name.strip_prefix(ENV_PREFIX) else {
                continue;
            };
            if name == ENV_CONFIG_FILE || key.is_empty() || CLIENT_ENV.contains(&name.as_str()) {
                continue;
            }
            apply_env(&mut tree, &name, key, &value)?;
            if key.eq_ignore_ascii_case("jwt_secret") {
                secret_origin = Some(SettingOrigin::Env(name.clone()));
            }
        }
        let mut config: Config = serde_yaml::from_value(Value::Mapping(tree))
            .map_err(|e| ConfigError::Invalid(e.to_string()))?;
        if config.jwt_secret.is_some() {
            config.jwt_secret_origin = secret_origin;
        }
        if let Some(listen) = overrides.listen {
            config.listen = listen;
        }
        if let Some(dir) = &overrides.data_dir {
            config.data_dir = dir.clone();
        }
        if let Some(url) = &overrides.database_url {
            config.database_url = Some(Secret::new(url.clone()));
        }
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        if self.data_dir.as_os_str().is_empty() {
            return Err(ConfigError::Invalid("data_dir must not be empty".into()));
        }
        if self.download.concurrency == 0 {
            return Err(ConfigError::Invalid(
                "download.concurrency must be at least 1".into(),
            ));
        }
        if self.login.hash_concurrency == 0 || self.login.max_tracked == 0 {
            return Err(ConfigError::Invalid(
                "login.hash_concurrency and login.max_tracked must be at least 1".into(),
            ));
        }
        if self.history.keep_versions > MAX_KEEP_VERSIONS {
            return Err(ConfigError::Invalid(format!(
                "history.keep_versions must be at most {MAX_KEEP_VERSIONS}"
            )));
        }
        if self.database_connect_timeout.is_zero() {
            return Err(ConfigError::Invalid(
                "database_connect_timeout must be longer than zero".into(),
            ));
        }
        if let Some(bad) = self
            .sandbox
            .extra_read_paths
            .iter()
            .find(|p| !p.is_absolute())
        {
            return Err(ConfigError::Invalid(format!(
                "sandbox.extra_read_paths entries must be absolute paths: {}",
                bad.display()
            )));
        }
        for (key, value) in [
            ("max_manifest_bytes", self.pack_files.max_manifest_bytes),
            ("max_component_bytes", self.pack_files.max_component_bytes),
            ("max_other_bytes", self.pack_files.max_other_bytes),
        ] {
            if value == 0 {
                return Err(ConfigError::Invalid(format!(
                    "pack_files.{key} must be at least 1 byte"
                )));
            }
        }
        for (key, value) in [
            ("max_pack_bytes", self.pack_files.max_pack_bytes),
            ("max_entries", self.pack_files.max_entries),
            ("max_file_bytes", self.pack_files.max_file_bytes),
        ] {
            if value == 0 {
                return Err(ConfigError::Invalid(format!(
                    "pack_files.{key} must be at least 1"
                )));
            }
        }
        // The checksum walk recurses once per level.
        if !(1..=MAX_PACK_DEPTH).contains(&self.pack_files.max_depth) {
            return Err(ConfigError::Invalid(format!(
                "pack_files.max_depth must be between 1 and {MAX_PACK_DEPTH}"
            )));
        }
        self.events.validate()?;
        if let Some(roots) = &self.allowed_roots {
            if roots.is_empty() {
                return Err(ConfigError::Invalid(
                    "allowed_roots must name at least one directory".into(),
                ));
            }
            if let Some(bad) = roots.iter().find(|r| !r.is_absolute()) {
                return Err(ConfigError::Invalid(format!(
                    "allowed_roots entries must be absolute paths: {}",
                    bad.display()
                )));
            }
        }
        Ok(())
    }

    pub fn database_url(&self) -> String {
        match &self.database_url {
            Some(url) => url.expose().to_string(),
            None => format!(
                "sqlite://{}",
                self.data_dir.join("attune-packs.db").display()
            ),
        }
    }

    /// [`database_url`](Self::database_url) as it may be shown: user, host and database
    /// name, without password or query (which may hold one).
    pub fn database_url_shown(&self) -> String {
        let Some(url) = &self.database_url else {
            // The default, with the data dir absolute: shown to someone in another
            // directory.
            return format!(
                "sqlite://{}",
                self.data_dir_absolute().join("attune-packs.db").display()
            );
        };
        let url = url.expose().to_string();
        let Some((scheme, rest)) = url.split_once("://") else {
            return url;
        };
        let rest = rest.split(['?', '#']).next().unwrap_or_default();
        let (authority, path) = rest.find('/').map_or((rest, ""), |i| rest.split_at(i));
        match authority.rsplit_once('@') {
            Some((userinfo, host)) => match userinfo.split(':').next().unwrap_or_default() {
                "" => format!("{scheme}://{host}{path}"),
                user => format!("{scheme}://{user}@{host}{path}"),
            },
            None => format!("{scheme}://{authority}{path}"),
        }
    }

    /// The data dir as an absolute path (relative paths are taken from the cwd).
    pub fn data_dir_absolute(&self) -> PathBuf {
        absolute(&self.data_dir)
    }

    pub fn allowed_roots(&self) -> Vec<PathBuf> {
        match &self.allowed_roots {
            Some(roots) => roots.clone(),
            None => vec![
                self.data_dir_absolute(),
                PathBuf::from("/tmp"),
                PathBuf::from("/opt/attune/packs"),
            ],
        }
    }

    /// Serves the sample packs of a checkout (`serve --examples`): `dir` becomes an
    /// allowed root and `dir/index.json` a registry named `examples`, read before
    /// the configured ones.
    pub fn serve_examples(&mut self, dir: &Path) -> Result<(), ConfigError> {
        let index = dir.join(EXAMPLES_INDEX);
        let canonical = |path: &Path| {
            path.canonicalize().map_err(|source| ConfigError::Examples {
                dir: absolute(dir),
                source,
            })
        };
        let index = canonical(&index)?;
        let dir = canonical(dir)?;
        let url = url::Url::from_file_path(&index).map_err(|()| ConfigError::Examples {
            dir: dir.clone(),
            source: std::io::Error::other("not a path a file:// URL can name"),
        })?;
        let mut roots = self.allowed_roots();
        roots.push(dir);
        self.allowed_roots = Some(roots);
        self.registry.indices.insert(
            0,
            IndexEntryConfig {
                url: url.into(),
                name: Some("examples".into()),
                priority: 0,
                enabled: true,
                headers: Default::default(),
                trust: Default::default(),
            },
        );
        Ok(())
    }

    pub fn packs_base_dir(&self) -> PathBuf {
        match &self.packs_base_dir {
            Some(dir) => absolute(dir),
            None => self.data_dir_absolute().join("packs"),
        }
    }
}

/// The CLI's own variables, which share the prefix: a shell that exported them for
/// `attune-packs` must still be able to run `attune-packs-server token issue`.
const CLIENT_ENV: [&str; 2] = ["ATTUNE_PACKS_TOKEN", "ATTUNE_PACKS_SERVER"];

/// The sample registry's file inside the examples directory.
pub const EXAMPLES_INDEX: &str = "index.json";

fn absolute(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf())
}

fn read_file(path: &Path) -> Result<Mapping, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    if text.trim().is_empty() {
        return Ok(Mapping::new());
    }
    match serde_yaml::from_str::<Value>(&text) {
        Ok(Value::Mapping(map)) => Ok(map),
        Ok(Value::Null) => Ok(Mapping::new()),
        Ok(_) => Err(ConfigError::NotAMapping {
            path: path.to_path_buf(),
        }),
        Err(source) => Err(ConfigError::Yaml {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// Sets `key` (`SECTION__KEY`) in the tree, creating intermediate mappings.
fn apply_env(tree: &mut Mapping, var: &str, key: &str, raw: &str) -> Result<(), ConfigError> {
    let path: Vec<String> = key.split("__").map(|p| p.to_ascii_lowercase()).collect();
    if path.iter().any(|p| p.is_empty()) {
        return Err(ConfigError::Env {
            var: var.to_string(),
            reason: "empty key segment (use single `__` between levels)".into(),
        });
    }
    let value = parse_env_value(raw);
    let mut node = tree;
    for (i, part) in path.iter().enumerate() {
        let k = Value::String(part.clone());
        if i + 1 == path.len() {
            node.insert(k, value);
            return Ok(());
        }
        let entry = node
            .entry(k)
            .or_insert_with(|| Value::Mapping(Mapping::new()));
        node = match entry {
            Value::Mapping(m) => m,
            _ => {
                return Err(ConfigError::Env {
                    var: var.to_string(),
                    reason: format!("`{part}` is not a section"),
                });
            }
        };
    }
    Ok(())
}

/// Environment values are YAML, except that a value which would not parse (or would
/// parse as a mapping, which is never meant) stays a plain string. Secrets such as
/// `abc: def` therefore survive.
fn parse_env_value(raw: &str) -> Value {
    match serde_yaml::from_str::<Value>(raw) {
        Ok(Value::Mapping(_)) | Ok(Value::Tagged(_)) | Err(_) => Value::String(raw.to_string()),
        Ok(Value::Null) if !raw.trim().is_empty() && raw.trim() != "~" && raw.trim() != "null" => {
            Value::String(raw.to_string())
        }
        Ok(v) => v,
    }
}

/// Durations in config are written as humantime strings (`30s`, `5m`) or seconds.
mod humantime_serde_compat {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, de::Error};

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Secs(u64),
        Text(String),
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        match Raw::deserialize(d)? {
            Raw::Secs(s) => Ok(Duration::from_secs(s)),
            Raw::Text(t) => humantime::parse_duration(&t).map_err(D::Error::custom),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whether `path` (`registry.cache_ttl`, `download.git.https_token`) names a
    /// setting: a YAML file setting it to null is refused for its value at most, never
    /// as an unknown key.
    fn is_setting(path: &str) -> bool {
        let mut value = Value::Null;
        for key in path.rsplit('.') {
            let mut map = Mapping::new();
            map.insert(Value::String(key.to_string()), value);
            value = Value::Mapping(map);
        }
        match serde_yaml::from_value::<Config>(value) {
            Ok(_) => true,
            Err(e) => !e.to_string().contains("unknown field"),
        }
    }

    const SECTIONS: &[&str] = &[
        "registry",
        "download",
        "register",
        "build",
        "yaml",
        "login",
        "sandbox",
        "pack_files",
        "auth",
        "events",
        "history",
    ];

    /// Every setting the documentation names is spelled as the configuration reads it:
    /// dotted names anywhere in docs/, the top-level keys and the keys of each section
    /// in docs/configuration.md's tables.
    #[test]
    fn the_documentation_names_settings_as_they_are_spelled() {
        let docs = [
            (
                "configuration.md",
                include_str!("../../docs/configuration.md"),
            ),
            (
                "registry-index.md",
                include_str!("../../docs/registry-index.md"),
            ),
            ("security.md", include_str!("../../docs/security.md")),
            ("install.md", include_str!("../../docs/install.md")),
            ("download.md", include_str!("../../docs/download.md")),
            ("build-envs.md", include_str!("../../docs/build-envs.md")),
            ("register.md", include_str!("../../docs/register.md")),
            ("lifecycle.md", include_str!("../../docs/lifecycle.md")),
            ("rest.md", include_str!("../../docs/rest.md")),
            ("pack-yaml.md", include_str!("../../docs/pack-yaml.md")),
            (
                "ARCHITECTURE.md",
                include_str!("../../docs/ARCHITECTURE.md"),
            ),
        ];
        let mut named = Vec::new();
        for (doc, text) in docs {
            for word in text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '.')) {
                let word = word.trim_matches('.');
                let mut parts = word.split('.');
                let section = parts.next().unwrap_or_default();
                let rest: Vec<&str> = parts.collect();
                // File and host names (`sandbox.rs`, `registry.npmjs.org`) are not settings.
                let is_file = rest.last().is_some_and(|ext| {
                    ["rs", "md", "yaml", "json", "toml", "sh", "org", "com", "io"].contains(ext)
                });
                if SECTIONS.contains(&section)
                    && !rest.is_empty()
                    && !is_file
                    && rest.iter().all(|p| {
                        !p.is_empty() && p.chars().all(|c| c.is_ascii_lowercase() || c == '_')
                    })
                {
                    named.push((doc, word.to_string()));
                }
            }
        }
        let configuration = docs[0].1;
        for line in configuration.lines().filter(|l| l.starts_with("| `")) {
            let cells: Vec<&str> = line.split('|').map(str::trim).collect();
            let first = cells[1].trim_matches('`');
            if SECTIONS.contains(&first) {
                // `key` (default), `key`, ... : a key is a code span followed by its
                // default in parentheses, a comma or the end of the cell.
                let spans: Vec<&str> = cells[2].split('`').collect();
                for (i, span) in spans.iter().enumerate().skip(1).step_by(2) {
                    let after = spans.get(i + 1).copied().unwrap_or_default();
                    let key = span.split(':').next().unwrap_or_default();
                    let before = spans[i - 1];
                    let listed = before.is_empty()
                        || before.ends_with(", ")
                        || before.ends_with("; ")
                        || before.ends_with(") and ")
                        || before.ends_with("), ");
                    if listed
                        && key.chars().all(|c| c.is_ascii_lowercase() || c == '_')
                        && (after.starts_with(" (")
                            || after.starts_with(',')
                            || after.is_empty()
                            || after.starts_with(" and"))
                    {
                        named.push(("configuration.md", format!("{first}.{key}")));
                    }
                }
            } else if !first.contains('.') && !first.contains(' ') && cells.len() > 3 {
                named.push(("configuration.md", first.to_string()));
            }
        }
        assert!(named.len() > 100, "too few settings found: {named:?}");
        assert!(
            named
                .iter()
                .any(|(_, n)| n == "registry.allow_file_registry_url")
        );
        assert!(named.iter().any(|(_, n)| n == "login.max_tracked"));
        let wrong: Vec<String> = named
            .iter()
            .filter(|(_, name)| !is_setting(name))
            .map(|(doc, name)| format!("{doc}: {name}"))
            .collect();
        assert!(wrong.is_empty(), "settings that do not exist: {wrong:#?}");
        assert!(!is_setting("registry.allow_file_extra_index"));
    }

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn legacy_tokens_keep_full_access_until_the_setting_is_turned_off() {
        let c = Config::load(None, env(&[]), &Overrides::default()).unwrap();
        assert!(c.auth.legacy_tokens_full_access);
        let c = Config::load(
            None,
            env(&[("ATTUNE_PACKS_AUTH__LEGACY_TOKENS_FULL_ACCESS", "false")]),
            &Overrides::default(),
        )
        .unwrap();
        assert!(!c.auth.legacy_tokens_full_access);
        let err = Config::load(
            None,
            env(&[("ATTUNE_PACKS_AUTH__LEGACY_TOKENS", "false")]),
            &Overrides::default(),
        )
        .unwrap_err();
        assert!(err.to_string().contains("legacy_tokens"), "{err}");
    }

    #[test]
    fn defaults_use_sqlite_in_data_dir() {
        let c = Config::load(None, env(&[]), &Overrides::default()).unwrap();
        assert_eq!(c.listen.to_string(), "127.0.0.1:50051");
        assert!(c.database_url().starts_with("sqlite://"));
        assert!(
            c.database_url()
                .ends_with("attune-packs-data/attune-packs.db")
        );
        let roots = c.allowed_roots();
        assert!(roots.contains(&PathBuf::from("/tmp")));
        assert!(roots.contains(&PathBuf::from("/opt/attune/packs")));
        assert!(roots[0].is_absolute());
    }

    #[test]
    fn precedence_is_file_then_env_then_flags() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.yaml");
        std::fs::write(
            &file,
            "listen: 127.0.0.1:1000\ndata_dir: /var/a\nshutdown_grace: 5s\n",
        )
        .unwrap();
        let c = Config::load(
            Some(&file),
            env(&[
                ("ATTUNE_PACKS_LISTEN", "127.0.0.1:2000"),
                ("ATTUNE_PACKS_ALLOWED_ROOTS", "[/srv/packs, /tmp]"),
                ("ATTUNE_PACKS_JWT_SECRET", "s3cret: with colon"),
                ("ATTUNE_PACKS_CONFIG", "/ignored"),
                ("UNRELATED", "x"),
            ]),
            &Overrides {
                data_dir: Some("/var/b".into()),
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(c.listen.port(), 2000);
        assert_eq!(c.data_dir, PathBuf::from("/var/b"));
        assert_eq!(c.shutdown_grace, Duration::from_secs(5));
        assert_eq!(
            c.allowed_roots(),
            vec![PathBuf::from("/srv/packs"), PathBuf::from("/tmp")]
        );
        assert_eq!(c.jwt_secret.unwrap().expose(), "s3cret: with colon");
    }

    #[test]
    fn unknown_keys_are_errors_wherever_they_come_from() {
        let err = Config::load(
            None,
            env(&[("ATTUNE_PACKS_LISTN", "x")]),
            &Overrides::default(),
        )
        .unwrap_err();
        assert!(err.to_string().contains("listn"), "{err}");
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.yaml");
        std::fs::write(&file, "data_dri: /x\n").unwrap();
        let err = Config::load(Some(&file), env(&[]), &Overrides::default()).unwrap_err();
        assert!(err.to_string().contains("data_dri"), "{err}");
    }

    #[test]
    fn host_tool_config_is_honoured_by_default_and_set_from_file_or_env() {
        use crate::envs::HostToolConfig;
        let c = Config::load(None, env(&[]), &Overrides::default()).unwrap();
        assert_eq!(c.build.host_tool_config, HostToolConfig::Honour);
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.yaml");
        std::fs::write(&file, "build:\n  host_tool_config: ignore\n").unwrap();
        let c = Config::load(Some(&file), env(&[]), &Overrides::default()).unwrap();
        assert_eq!(c.build.host_tool_config, HostToolConfig::Ignore);
        let c = Config::load(
            Some(&file),
            env(&[("ATTUNE_PACKS_BUILD__HOST_TOOL_CONFIG", "honour")]),
            &Overrides::default(),
        )
        .unwrap();
        assert_eq!(c.build.host_tool_config, HostToolConfig::Honour);
        let err = Config::load(
            None,
            env(&[("ATTUNE_PACKS_BUILD__HOST_TOOL_CONFIG", "sometimes")]),
            &Overrides::default(),
        )
        .unwrap_err();
        assert!(err.to_string().contains("sometimes"), "{err}");
        assert!(
            Config::load(
                None,
                env(&[("ATTUNE_PACKS_BUILD__HOST_ENVIRONMENT", "x")]),
                &Overrides::default(),
            )
            .is_err(),
            "where the host configuration is read from is no configuration key"
        );
    }

    #[test]
    fn nested_keys_come_from_double_underscores() {
        let c = Config::load(
            None,
            env(&[
                ("ATTUNE_PACKS_REGISTRY__CACHE_TTL", "90s"),
                ("ATTUNE_PACKS_DOWNLOAD__CONCURRENCY", "2"),
                ("ATTUNE_PACKS_DOWNLOAD__GIT__HTTPS_TOKEN", "tok"),
                (
                    "ATTUNE_PACKS_REGISTRY__INDICES",
                    "[{url: 'https://r.example/index.json', priority: 1}]",
                ),
            ]),
            &Overrides::default(),
        )
        .unwrap();
        assert_eq!(c.registry.cache_ttl, Duration::from_secs(90));
        assert_eq!(c.download.concurrency, 2);
        assert_eq!(c.download.git.https_token.unwrap().expose(), "tok");
        assert_eq!(c.registry.indices[0].priority, 1);
        assert!(c.registry.indices[0].enabled);
        assert_eq!(
            c.registry.indices[0].trust,
            crate::registry::RegistryTrust::Verified
        );
    }

    #[test]
    fn registry_trust_is_per_index() {
        let c = Config::load(
            None,
            env(&[(
                "ATTUNE_PACKS_REGISTRY__INDICES",
                "[{url: 'https://a.example/index.json', trust: unverified}, \
                  {url: 'https://b.example/index.json', trust: verified}]",
            )]),
            &Overrides::default(),
        )
        .unwrap();
        let trust: Vec<_> = c.registry.indices.iter().map(|i| i.trust).collect();
        use crate::registry::RegistryTrust::{Unverified, Verified};
        assert_eq!(trust, [Unverified, Verified]);
        assert_eq!(c.registry.client_config().indices[0].trust, Unverified);
        let err = Config::load(
            None,
            env(&[(
                "ATTUNE_PACKS_REGISTRY__INDICES",
                "[{url: 'https://a.example/index.json', trust: none}]",
            )]),
            &Overrides::default(),
        )
        .unwrap_err();
        assert!(err.to_string().contains("unverified"), "{err}");
    }

    #[test]
    fn secrets_are_redacted_in_debug() {
        let c = Config::load(
            None,
            env(&[("ATTUNE_PACKS_JWT_SECRET", "topsecret")]),
            &Overrides::default(),
        )
        .unwrap();
        assert!(!format!("{c:?}").contains("topsecret"));
    }

    #[test]
    fn login_and_database_connect_settings() {
        let c = Config::load(None, env(&[]), &Overrides::default()).unwrap();
        assert_eq!(c.login.hash_concurrency, 2);
        assert_eq!(c.login.max_tracked, 10_000);
        assert_eq!(c.database_connect_timeout, Duration::from_secs(5));
        let c = Config::load(
            None,
            env(&[
                ("ATTUNE_PACKS_LOGIN__HASH_CONCURRENCY", "4"),
                ("ATTUNE_PACKS_LOGIN__MAX_DELAY", "2m"),
                ("ATTUNE_PACKS_DATABASE_CONNECT_TIMEOUT", "2s"),
            ]),
            &Overrides::default(),
        )
        .unwrap();
        assert_eq!(c.login.hash_concurrency, 4);
        assert_eq!(c.login.max_delay, Duration::from_secs(120));
        assert_eq!(c.database_connect_timeout, Duration::from_secs(2));
        let err = Config::load(
            None,
            env(&[("ATTUNE_PACKS_LOGIN__HASH_CONCURRENCY", "0")]),
            &Overrides::default(),
        )
        .unwrap_err();
        assert!(err.to_string().contains("login.hash_concurrency"), "{err}");
        let err = Config::load(
            None,
            env(&[("ATTUNE_PACKS_LOGIN__HASH_CONCURENCY", "3")]),
            &Overrides::default(),
        )
        .unwrap_err();
        assert!(err.to_string().contains("hash_concurency"), "{err}");
    }

    #[test]
    fn pack_walk_limits_come_from_the_pack_files_section() {
        let c = Config::load(None, env(&[]), &Overrides::default()).unwrap();
        assert_eq!(
            c.pack_files.tree_limits(),
            crate::packfs::TreeLimits::DEFAULT
        );
        let c = Config::load(
            None,
            env(&[
                ("ATTUNE_PACKS_PACK_FILES__MAX_PACK_BYTES", "1000"),
                ("ATTUNE_PACKS_PACK_FILES__MAX_ENTRIES", "10"),
                ("ATTUNE_PACKS_PACK_FILES__MAX_FILE_BYTES", "100"),
                ("ATTUNE_PACKS_PACK_FILES__MAX_DEPTH", "3"),
            ]),
            &Overrides::default(),
        )
        .unwrap();
        assert_eq!(
            c.pack_files.tree_limits(),
            crate::packfs::TreeLimits::from_pack_files(1000, 10, 100, 3)
        );
        for (key, value, needle) in [
            (
                "ATTUNE_PACKS_PACK_FILES__MAX_ENTRIES",
                "0",
                "pack_files.max_entries",
            ),
            (
                "ATTUNE_PACKS_PACK_FILES__MAX_DEPTH",
                "0",
                "pack_files.max_depth",
            ),
            (
                "ATTUNE_PACKS_PACK_FILES__MAX_DEPTH",
                "5000",
                "pack_files.max_depth",
            ),
        ] {
            let err = Config::load(None, env(&[(key, value)]), &Overrides::default()).unwrap_err();
            assert!(err.to_string().contains(needle), "{err}");
        }
    }

    #[test]
    fn pack_file_caps_come_from_the_pack_files_section() {
        let c = Config::load(None, env(&[]), &Overrides::default()).unwrap();
        assert_eq!(
            c.pack_files.limits(),
            crate::packfs::PackReadLimits::default()
        );
        let c = Config::load(
            None,
            env(&[("ATTUNE_PACKS_PACK_FILES__MAX_MANIFEST_BYTES", "4096")]),
            &Overrides::default(),
        )
        .unwrap();
        assert_eq!(c.pack_files.limits().manifest_bytes, 4096);
        let err = Config::load(
            None,
            env(&[("ATTUNE_PACKS_PACK_FILES__MAX_OTHER_BYTES", "0")]),
            &Overrides::default(),
        )
        .unwrap_err();
        assert!(
            err.to_string().contains("pack_files.max_other_bytes"),
            "{err}"
        );
    }

    #[test]
    fn relative_allowed_roots_are_rejected() {
        let err = Config::load(
            None,
            env(&[("ATTUNE_PACKS_ALLOWED_ROOTS", "[relative/dir]")]),
            &Overrides::default(),
        )
        .unwrap_err();
        assert!(err.to_string().contains("absolute"), "{err}");
    }

    #[test]
    fn yaml_and_extraction_limits_are_settings() {
        let c = Config::load(None, env(&[]), &Overrides::default()).unwrap();
        assert_eq!(c.yaml.limits(), crate::yaml_limits::YamlLimits::DEFAULT);
        assert_eq!(c.download.max_header_bytes, 64 * 1024);
        assert_eq!(c.download.extract_concurrency, 4);
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.yaml");
        std::fs::write(
            &file,
            "yaml:\n  max_depth: 10\n  max_aliases: 5\ndownload:\n  max_header_bytes: 1024\n",
        )
        .unwrap();
        let c = Config::load(
            Some(&file),
            env(&[
                ("ATTUNE_PACKS_YAML__MAX_NODES", "500"),
                ("ATTUNE_PACKS_YAML__MAX_DOCUMENT_BYTES", "2048"),
                ("ATTUNE_PACKS_YAML__MAX_EXPANDED_BYTES", "4096"),
                ("ATTUNE_PACKS_DOWNLOAD__MAX_NAMES_BYTES", "65536"),
                ("ATTUNE_PACKS_DOWNLOAD__EXTRACT_CONCURRENCY", "1"),
                ("ATTUNE_PACKS_DOWNLOAD__EXTRACT_MEMORY_BYTES", "33554432"),
            ]),
            &Overrides::default(),
        )
        .unwrap();
        assert_eq!(
            c.yaml.limits(),
            crate::yaml_limits::YamlLimits {
                max_document_bytes: 2048,
                max_depth: 10,
                max_aliases: 5,
                max_nodes: 500,
                max_expanded_bytes: 4096,
            }
        );
        assert_eq!(c.download.max_header_bytes, 1024);
        assert_eq!(c.download.max_names_bytes, 65536);
        assert_eq!(c.download.extract_concurrency, 1);
        assert_eq!(c.download.extract_memory_bytes, 32 * 1024 * 1024);
        let err = Config::load(
            None,
            env(&[("ATTUNE_PACKS_YAML__MAX_DEPTHS", "3")]),
            &Overrides::default(),
        )
        .unwrap_err();
        assert!(err.to_string().contains("max_depths"), "{err}");
    }

    #[test]
    fn sandbox_settings_from_file_and_environment() {
        let c = Config::load(None, env(&[]), &Overrides::default()).unwrap();
        assert_eq!(c.sandbox.run_as_user, "attune-packs-runner");
        assert!(c.sandbox.create_user);
        assert_eq!(c.sandbox.landlock, LandlockMode::Auto);
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.yaml");
        std::fs::write(
            &file,
            "sandbox:\n  run_as_user: packrunner\n  create_user: false\n  landlock: required\n  extra_read_paths: [/opt/python]\n",
        )
        .unwrap();
        let c = Config::load(
            Some(&file),
            env(&[("ATTUNE_PACKS_SANDBOX__LANDLOCK", "off")]),
            &Overrides::default(),
        )
        .unwrap();
        assert_eq!(c.sandbox.run_as_user, "packrunner");
        assert!(!c.sandbox.create_user);
        assert_eq!(c.sandbox.landlock, LandlockMode::Off);
        assert_eq!(c.sandbox.extra_read_paths, [PathBuf::from("/opt/python")]);
        let err = Config::load(
            None,
            env(&[("ATTUNE_PACKS_SANDBOX__EXTRA_READ_PATHS", "[opt/python]")]),
            &Overrides::default(),
        )
        .unwrap_err();
        assert!(
            err.to_string().contains("sandbox.extra_read_paths"),
            "{err}"
        );
        let err = Config::load(
            None,
            env(&[("ATTUNE_PACKS_SANDBOX__LANDLOCK", "sometimes")]),
            &Overrides::default(),
        )
        .unwrap_err();
        assert!(err.to_string().contains("sometimes"), "{err}");
    }

    #[test]
    fn events_settings_are_checked_and_the_broker_password_stays_out_of_debug() {
        let c = Config::load(None, env(&[]), &Overrides::default()).unwrap();
        assert!(c.events.amqp_url.is_none());
        assert_eq!(c.events.exchange, "attune.packs");
        assert_eq!(c.events.batch_size, 100);
        let c = Config::load(
            None,
            env(&[
                (
                    "ATTUNE_PACKS_EVENTS__AMQP_URL",
                    "amqp://guest:hunter2@127.0.0.1:5672/%2f",
                ),
                ("ATTUNE_PACKS_EVENTS__EXCHANGE", "attune.events"),
                ("ATTUNE_PACKS_EVENTS__RETRY_MAX", "1m"),
                ("ATTUNE_PACKS_EVENTS__RETAIN", "1d"),
            ]),
            &Overrides::default(),
        )
        .unwrap();
        assert_eq!(
            c.events.amqp_url.as_ref().unwrap().expose(),
            "amqp://guest:hunter2@127.0.0.1:5672/%2f"
        );
        assert_eq!(c.events.exchange, "attune.events");
        assert_eq!(c.events.retry_max, Duration::from_secs(60));
        assert_eq!(c.events.retain, Duration::from_secs(86_400));
        assert!(!format!("{c:?}").contains("hunter2"));
        for (key, value, needle) in [
            (
                "ATTUNE_PACKS_EVENTS__AMQP_URL",
                "amqps://u:hunter2@h/",
                "events.amqp_url",
            ),
            (
                "ATTUNE_PACKS_EVENTS__AMQP_URL",
                "not a url hunter2",
                "events.amqp_url",
            ),
            (
                "ATTUNE_PACKS_EVENTS__EXCHANGE",
                "amq.topic",
                "events.exchange",
            ),
            ("ATTUNE_PACKS_EVENTS__BATCH_SIZE", "0", "events.batch_size"),
            (
                "ATTUNE_PACKS_EVENTS__RETRY_INITIAL",
                "2m",
                "events.retry_max",
            ),
            (
                "ATTUNE_PACKS_EVENTS__POLL_INTERVAL",
                "0s",
                "events.poll_interval",
            ),
            (
                "ATTUNE_PACKS_EVENTS__MAX_WATCHERS",
                "0",
                "events.max_watchers",
            ),
        ] {
            let err = Config::load(None, env(&[(key, value)]), &Overrides::default()).unwrap_err();
            assert!(err.to_string().contains(needle), "{key}={value}: {err}");
            assert!(!err.to_string().contains("hunter2"), "{err}");
        }
    }

    #[test]
    fn examples_become_a_registry_and_an_allowed_root() {
        let dir = tempfile::tempdir().unwrap();
        let examples = dir.path().canonicalize().unwrap();
        std::fs::write(examples.join("index.json"), "{}").unwrap();
        let mut c = Config::load(None, env(&[]), &Overrides::default()).unwrap();
        c.serve_examples(&examples).unwrap();
        assert_eq!(c.allowed_roots().last(), Some(&examples));
        assert!(c.allowed_roots().contains(&PathBuf::from("/tmp")));
        let first = &c.registry.indices[0];
        assert_eq!(first.name.as_deref(), Some("examples"));
        assert_eq!(
            first.url,
            format!("file://{}/index.json", examples.display())
        );

        let empty = tempfile::tempdir().unwrap();
        let err = c.serve_examples(empty.path()).unwrap_err().to_string();
        assert!(err.contains("has no index.json"), "{err}");
        assert!(err.contains("--examples=DIR"), "{err}");
    }

    #[test]
    fn the_clients_variables_are_not_settings() {
        let c = Config::load(
            None,
            env(&[
                ("ATTUNE_PACKS_TOKEN", "eyJ"),
                ("ATTUNE_PACKS_SERVER", "http://127.0.0.1:50051"),
            ]),
            &Overrides::default(),
        )
        .unwrap();
        assert_eq!(
            c.listen,
            Config::load(None, env(&[]), &Overrides::default())
                .unwrap()
                .listen
        );
    }

    #[test]
    fn the_database_url_is_shown_without_password_or_query() {
        let shown = |url: &str| {
            Config::load(
                None,
                env(&[("ATTUNE_PACKS_DATABASE_URL", url)]),
                &Overrides::default(),
            )
            .unwrap()
            .database_url_shown()
        };
        assert_eq!(
            shown("postgres://attune:hunter2@db.example:5433/packs?password=hunter2"),
            "postgres://attune@db.example:5433/packs"
        );
        assert_eq!(shown("postgres://:hunter2@db/x"), "postgres://db/x");
        assert_eq!(shown("postgres://db.example"), "postgres://db.example");
        assert_eq!(shown("sqlite:///var/lib/a.db"), "sqlite:///var/lib/a.db");
    }
}
