//! What every door (gRPC, REST, CLI) hands to the stages: configuration, database,
//! path policy, authenticator. Cheap to clone.

use std::sync::Arc;

use crate::{
    auth::Authenticator,
    config::Config,
    download::{DownloadError, Downloader},
    paths::PathPolicy,
    store::Db,
};

#[derive(Clone)]
pub struct AppState {
    pub config: Arc<Config>,
    pub db: Db,
    pub paths: PathPolicy,
    pub auth: Authenticator,
    /// Shared across requests: the registry cache and HTTP clients live here.
    pub downloader: Arc<Downloader>,
}

impl AppState {
    pub fn new(config: Config, db: Db, auth: Authenticator) -> Result<Self, DownloadError> {
        let paths =
            PathPolicy::new(config.allowed_roots()).with_read_limits(config.pack_files.limits());
        let downloader = Arc::new(Downloader::new(&config, paths.clone())?);
        Ok(Self {
            config: Arc::new(config),
            db,
            paths,
            auth,
            downloader,
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
    let db = Db::connect(&config.database_url()).await?;
    db.migrate().await?;
    Ok(AppState::new(config, db, Authenticator::new(&secret))?)
}
