//! What every door (gRPC, REST, CLI) hands to the stages: configuration, database,
//! path policy, authenticator, and the stages themselves, each built once at start
//! from its configuration section. Cheap to clone.

use std::sync::Arc;

use crate::{
    auth::Authenticator,
    buildenvs::EnvBuilder,
    config::Config,
    download::{DownloadError, Downloader},
    journal::{Journal, JournalError},
    locks::PackLocks,
    paths::PathPolicy,
    register::Registrar,
    store::Db,
    users::LoginGate,
};

#[derive(Clone)]
pub struct AppState {
    pub config: Arc<Config>,
    pub db: Db,
    pub paths: PathPolicy,
    pub auth: Authenticator,
    /// Shared across requests: the registry cache and HTTP clients live here.
    pub downloader: Arc<Downloader>,
    pub env_builder: Arc<EnvBuilder>,
    pub registrar: Arc<Registrar>,
    /// The locks of pack directories, shared by the stages and the journal.
    pub locks: PackLocks,
    /// Login's throttle and argon2 pool, one per process.
    pub login: Arc<LoginGate>,
    /// Swap intents and the directories holding work directories (`<data_dir>/journal`).
    pub journal: Arc<Journal>,
    /// The event outbox as WatchEvents follows it.
    pub events: crate::events::watch::EventLog,
}

impl AppState {
    pub fn new(config: Config, db: Db, auth: Authenticator) -> Result<Self, DownloadError> {
        let paths =
            PathPolicy::new(config.allowed_roots()).with_read_limits(config.pack_files.limits());
        crate::yaml_limits::install(config.yaml.limits());
        crate::packfs::install_tree_limits(config.pack_files.tree_limits());
        let locks = PackLocks::default();
        let journal = Arc::new(Journal::new(&config.data_dir_absolute(), locks.clone()));
        let downloader = Downloader::new(
            &config.download,
            &config.registry,
            paths.clone(),
            locks.clone(),
        )?
        .with_journal(Arc::clone(&journal));
        let env_builder = EnvBuilder::new(
            &config.build,
            config.packs_base_dir(),
            paths.clone(),
            locks.clone(),
        );
        let registrar = Registrar::new(
            &config.register,
            config.packs_base_dir(),
            db.clone(),
            paths.clone(),
            Arc::clone(&journal),
            locks.clone(),
        )
        .with_keep_versions(config.history.keep_versions);
        let login = Arc::new(LoginGate::new(&config.login));
        let events = crate::events::watch::EventLog::new(db.clone(), &config.events);
        Ok(Self {
            config: Arc::new(config),
            db,
            paths,
            auth,
            downloader: Arc::new(downloader),
            env_builder: Arc::new(env_builder),
            registrar: Arc::new(registrar),
            locks,
            login,
            journal,
            events,
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error("cannot create data dir {path}: {source}")]
    DataDir {
        path: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Secret(#[from] crate::auth::SecretError),
    #[error("cannot open database: {0}")]
    Store(#[from] crate::store::StoreError),
    #[error(transparent)]
    Download(#[from] DownloadError),
    #[error("cannot set up the sandbox for pack code: {0}")]
    Sandbox(#[from] crate::sandbox::SandboxError),
    #[error("cannot make {path} private (mode {mode:o}): {source}")]
    Private {
        path: String,
        mode: u32,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot recover from an earlier crash: {0}")]
    Recovery(#[from] JournalError),
}

/// Prepares everything a server needs: the data dir, the JWT secret, the database
/// (created and migrated), and settles what a crash of an earlier process left: its
/// interrupted registrations finished or undone, its work directories removed.
pub async fn open(config: Config) -> Result<AppState, StartupError> {
    let data_dir = config.data_dir_absolute();
    std::fs::create_dir_all(&data_dir).map_err(|source| StartupError::DataDir {
        path: data_dir.display().to_string(),
        source,
    })?;
    // Pack code may pass through the data dir to packs stored below it, but may not
    // list it; the secret and the database inside are the server's alone.
    narrow_mode(&data_dir, 0o711)?;
    let secret = crate::auth::resolve_secret(&config, crate::auth::MissingSecret::Generate)?.secret;
    narrow_mode(&data_dir.join(crate::auth::SECRET_FILE), 0o600)?;
    register_secrets(&config, &secret);
    let sandbox = crate::sandbox::install(&config.sandbox)?;
    if let Some(blocked) = crate::sandbox::unreachable_ancestor(&sandbox, &config.packs_base_dir())
    {
        tracing::warn!(
            packs_base_dir = %config.packs_base_dir().display(),
            blocked = %blocked.display(),
            "the sandbox user cannot pass through this directory: pack tests and builds \
             there will fail; make it traversable (chmod o+x)"
        );
    }
    let db =
        Db::connect_with_timeout(&config.database_url(), config.database_connect_timeout).await?;
    for (version, description) in db.migrate().await?.applied {
        tracing::info!(version, %description, "applied a database migration");
    }
    let state = AppState::new(config, db, Authenticator::new(&secret))?;
    let scanned = [state.config.packs_base_dir(), data_dir];
    crate::journal::recover(&state.journal, &state.db, &scanned).await?;
    crate::process::record_groups_in(state.journal.groups_dir());
    Ok(state)
}

/// Sets `path`'s permission bits to at most `mode` when the server owns it (a missing
/// path is left alone; someone else's is logged, since it cannot be changed).
fn narrow_mode(path: &std::path::Path, mode: u32) -> Result<(), StartupError> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let meta = match std::fs::metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(StartupError::Private {
                path: path.display().to_string(),
                mode,
                source,
            });
        }
    };
    let current = meta.mode() & 0o7777;
    if current & !mode == 0 {
        return Ok(());
    }
    // A shared directory (`/tmp` as data dir) must not be closed for everyone else.
    if meta.is_dir() && current & 0o1002 != 0 {
        tracing::warn!(
            path = %path.display(),
            mode = format!("{current:o}"),
            "the data dir is a shared directory: pack code may list it; use a dedicated one"
        );
        return Ok(());
    }
    // SAFETY: geteuid cannot fail and touches no memory.
    if meta.uid() != unsafe { libc::geteuid() } {
        tracing::warn!(
            path = %path.display(),
            mode = format!("{current:o}"),
            "not owned by the server: its mode cannot be narrowed"
        );
        return Ok(());
    }
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(current & mode)).map_err(
        |source| StartupError::Private {
            path: path.display().to_string(),
            mode,
            source,
        },
    )
}

/// Every secret value the configuration holds, so that `sandbox::scrub` removes it
/// from progress events, results and logs.
fn register_secrets(config: &Config, jwt_secret: &crate::config::Secret) {
    use crate::sandbox::register_secret;
    register_secret(jwt_secret.expose());
    if let Some(password) = url_password(&config.database_url()) {
        register_secret(password);
    }
    if let Some(broker) = config
        .events
        .amqp_url
        .as_ref()
        .and_then(|url| crate::events::relay::BrokerAddress::parse(url.expose()).ok())
        && !broker.password().is_empty()
    {
        register_secret(broker.password());
    }
    let git = &config.download.git;
    for secret in [&git.https_token, &git.ssh_key_passphrase]
        .into_iter()
        .flatten()
    {
        register_secret(secret.expose());
    }
    for index in &config.registry.indices {
        for value in index.headers.values() {
            register_secret(value.expose());
        }
    }
}

/// The password of a `scheme://user:password@host` URL.
fn url_password(url: &str) -> Option<&str> {
    let rest = url.split_once("://")?.1;
    let authority = rest.split(['/', '?', '#']).next()?;
    let userinfo = authority.rsplit_once('@')?.0;
    userinfo.split_once(':').map(|(_, password)| password)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_are_narrowed_but_shared_directories_are_left_alone() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let mode =
            |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o7777;
        let data = dir.path().join("data");
        std::fs::create_dir(&data).unwrap();
        std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755)).unwrap();
        narrow_mode(&data, 0o711).unwrap();
        assert_eq!(mode(&data), 0o711);
        let file = data.join("secret");
        std::fs::write(&file, "x").unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        narrow_mode(&file, 0o600).unwrap();
        assert_eq!(mode(&file), 0o600);
        let shared = dir.path().join("shared");
        std::fs::create_dir(&shared).unwrap();
        std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o1777)).unwrap();
        narrow_mode(&shared, 0o711).unwrap();
        assert_eq!(mode(&shared), 0o1777);
        narrow_mode(&dir.path().join("missing"), 0o711).unwrap();
    }

    #[test]
    fn url_passwords() {
        assert_eq!(url_password("postgres://u:pw-1@h:5432/db"), Some("pw-1"));
        assert_eq!(url_password("postgres://u@h/db"), None);
        assert_eq!(url_password("sqlite:///x/y.db"), None);
        assert_eq!(url_password("postgres://h/db?x=a@b"), None);
    }
}
