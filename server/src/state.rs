//! What every door (gRPC, REST, CLI) hands to the stages: configuration, database,
//! path policy, authenticator. Cheap to clone.

use std::sync::Arc;

use crate::{
    auth::Authenticator,
    config::Config,
    download::{DownloadError, Downloader},
    paths::PathPolicy,
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
    /// Login's throttle and argon2 pool, one per process.
    pub login: Arc<LoginGate>,
}

impl AppState {
    pub fn new(config: Config, db: Db, auth: Authenticator) -> Result<Self, DownloadError> {
        let paths = PathPolicy::new(config.allowed_roots());
        crate::yaml_limits::install(config.yaml.limits());
        let downloader = Arc::new(Downloader::new(&config, paths.clone())?);
        let login = Arc::new(LoginGate::new(&config.login));
        Ok(Self {
            config: Arc::new(config),
            db,
            paths,
            auth,
            downloader,
            login,
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
}

/// Prepares everything a server needs: the data dir, the JWT secret, the database
/// (created and migrated).
pub async fn open(config: Config) -> Result<AppState, StartupError> {
    let data_dir = config.data_dir_absolute();
    std::fs::create_dir_all(&data_dir).map_err(|source| StartupError::DataDir {
        path: data_dir.display().to_string(),
        source,
    })?;
    let secret = crate::auth::load_or_create_secret(config.jwt_secret.as_ref(), &data_dir)?;
    let db =
        Db::connect_with_timeout(&config.database_url(), config.database_connect_timeout).await?;
    db.migrate().await?;
    Ok(AppState::new(config, db, Authenticator::new(&secret))?)
}
