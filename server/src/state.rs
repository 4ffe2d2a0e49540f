//! What every door (gRPC, REST, CLI) hands to the stages: configuration, database,
//! path policy, authenticator. Cheap to clone.

use std::sync::Arc;

use crate::{
    auth::Authenticator,
    config::Config,
    download::{DownloadError, Downloader},
    journal::{Journal, JournalError},
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
    /// Swap intents and the directories holding work directories (`<data_dir>/journal`).
    pub journal: Arc<Journal>,
}

impl AppState {
    pub fn new(config: Config, db: Db, auth: Authenticator) -> Result<Self, DownloadError> {
        let paths = PathPolicy::new(config.allowed_roots());
        let journal = Arc::new(Journal::new(&config.data_dir_absolute()));
        let downloader =
            Arc::new(Downloader::new(&config, paths.clone())?.with_journal(Arc::clone(&journal)));
        Ok(Self {
            config: Arc::new(config),
            db,
            paths,
            auth,
            downloader,
            journal,
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
    let secret = crate::auth::load_or_create_secret(config.jwt_secret.as_ref(), &data_dir)?;
    let db = Db::connect(&config.database_url()).await?;
    db.migrate().await?;
    let state = AppState::new(config, db, Authenticator::new(&secret))?;
    let scanned = [state.config.packs_base_dir(), data_dir];
    crate::journal::recover(&state.journal, &state.db, &scanned).await?;
    Ok(state)
}
