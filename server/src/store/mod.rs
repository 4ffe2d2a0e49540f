//! Persistence: SQLite (embedded default) or PostgreSQL, behind one [`Db`] type.
//!
//! Queries are plain SQL with `$N` placeholders, which both sqlx drivers accept, so
//! a method has one SQL text and one body, run on either pool by [`on_pool!`] (or on
//! either transaction by [`on_tx!`]). Migrations live in
//! `migrations/sqlite` and `migrations/postgres` (same versions, dialect-specific DDL)
//! and are embedded into the binary.

/// Runs `$body` on whichever pool `$db` holds, bound to `$pool`: the SQL text is the
/// same on both backends, only the driver types differ.
macro_rules! on_pool {
    ($db:expr, $pool:ident => $body:expr) => {
        match $db {
            $crate::store::Db::Sqlite($pool) => $body,
            $crate::store::Db::Postgres($pool) => $body,
        }
    };
}

/// Runs `$body` on whichever transaction the [`packs::PackWrite`] `$write` holds,
/// bound to `$tx`.
macro_rules! on_tx {
    ($write:expr, $tx:ident => $body:expr) => {
        match $write {
            $crate::store::packs::PackWrite::Sqlite($tx) => $body,
            $crate::store::packs::PackWrite::Postgres($tx) => $body,
        }
    };
}

pub mod history;
pub mod inventory;
pub mod outbox;
pub mod packs;
mod recovery;
pub mod remove;
pub mod versions;

use std::{str::FromStr, time::Duration};

use sqlx::{
    ConnectOptions, Connection, PgPool, SqlitePool,
    migrate::Migrator,
    postgres::{PgConnectOptions, PgPoolOptions},
    sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous},
};

static SQLITE_MIGRATIONS: Migrator = sqlx::migrate!("../migrations/sqlite");
static POSTGRES_MIGRATIONS: Migrator = sqlx::migrate!("../migrations/postgres");

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("unsupported database URL (expected sqlite:// or postgres://)")]
    UnsupportedUrl,
    #[error("cannot create database directory {path}: {source}")]
    CreateDir {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot make the database file {path} private (mode 0600): {source}")]
    PrivateFile {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("database error: {0}")]
    Sqlx(#[from] sqlx::Error),
    /// `target` is `host:port` (or the socket directory): never the URL, which may
    /// hold a password.
    #[error("cannot connect to PostgreSQL at {target}: {source}")]
    Connect {
        target: String,
        #[source]
        source: sqlx::Error,
    },
    #[error(
        "cannot connect to PostgreSQL at {target}: no answer within {} s (database_connect_timeout)",
        timeout.as_secs_f32()
    )]
    ConnectTimeout { target: String, timeout: Duration },
    #[error(transparent)]
    CreateDatabase(Box<CreateDatabaseError>),
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
}

/// What [`Db::migrate`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MigrationReport {
    /// Version and description of each migration this call applied, oldest first.
    pub applied: Vec<(i64, String)>,
    /// Migrations the database had before.
    pub already_applied: usize,
}

impl std::fmt::Display for MigrationReport {
    /// One line per migration applied, or that there was nothing to do.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.applied.is_empty() {
            return write!(
                f,
                "up to date: {} migrations already applied",
                self.already_applied
            );
        }
        for (i, (version, description)) in self.applied.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "applied migration {version} {description}")?;
        }
        Ok(())
    }
}

/// A PostgreSQL database that does not exist and could not be created, with the
/// command that creates it.
#[derive(Debug, thiserror::Error)]
#[error(
    "PostgreSQL database '{database}' does not exist at {target} and could not be created \
     ({reason}); create it with `{createdb}`"
)]
pub struct CreateDatabaseError {
    pub database: String,
    pub target: String,
    pub reason: String,
    pub createdb: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// A pool on one of the two backends. Cheap to clone.
#[derive(Debug, Clone)]
pub enum Db {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

/// A registered pack's row, as far as dependency analysis needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegisteredPackRow {
    pub pack_ref: String,
    pub version: String,
    /// Declared dependencies, as written in pack.yaml.
    pub dependencies: Vec<String>,
}

/// Where a registered pack came from, as registration recorded it.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct RegisteredSource {
    #[sqlx(rename = "ref")]
    pub pack_ref: String,
    pub version: String,
    /// JSON list of the declared dependencies.
    pub dependencies: String,
    pub source: Option<String>,
    pub source_type: Option<String>,
    pub source_url: Option<String>,
    pub registry_url: Option<String>,
    pub git_commit: Option<String>,
    pub checksum: Option<String>,
}

impl RegisteredSource {
    pub fn dependency_list(&self) -> Vec<String> {
        serde_json::from_str(&self.dependencies).unwrap_or_default()
    }
}

/// How long opening the first connection may take when no setting says otherwise.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Creates the SQLite file (when missing) with mode 0600 and narrows an existing one
/// and its `-wal`/`-shm` companions to 0600: SQLite gives the companions the database
/// file's mode, and pack code must not read any of them.
fn private_sqlite_files(db: &std::path::Path) -> std::io::Result<()> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    if db.as_os_str().is_empty() || db.as_os_str() == ":memory:" {
        return Ok(());
    }
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(db)?;
    for suffix in ["", "-wal", "-shm", "-journal"] {
        let mut name = db.as_os_str().to_owned();
        name.push(suffix);
        match std::fs::set_permissions(&name, std::fs::Permissions::from_mode(0o600)) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            other => other?,
        }
    }
    Ok(())
}

/// One connection opened and closed, failing within `timeout`.
async fn probe_postgres(
    options: &PgConnectOptions,
    target: &str,
    timeout: Duration,
) -> Result<(), StoreError> {
    match tokio::time::timeout(timeout, options.connect()).await {
        Err(_) => Err(StoreError::ConnectTimeout {
            target: target.to_string(),
            timeout,
        }),
        Ok(Err(source)) => Err(StoreError::Connect {
            target: target.to_string(),
            source,
        }),
        Ok(Ok(probe)) => {
            let _ = probe.close().await;
            Ok(())
        }
    }
}

/// SQLSTATE of "database does not exist" (invalid_catalog_name).
const MISSING_DATABASE: &str = "3D000";
/// SQLSTATE of "database already exists" (duplicate_database).
const DUPLICATE_DATABASE: &str = "42P04";

fn sqlstate(error: &sqlx::Error) -> Option<String> {
    error
        .as_database_error()
        .and_then(|e| e.code())
        .map(|code| code.into_owned())
}

fn is_missing_database(error: &sqlx::Error) -> bool {
    sqlstate(error).as_deref() == Some(MISSING_DATABASE)
}

/// The database `options` names, created through a maintenance database on the same
/// server with the same credentials. Another process creating it first is success.
async fn create_postgres_database(
    options: &PgConnectOptions,
    target: &str,
    timeout: Duration,
) -> Result<(), StoreError> {
    // Without a database in the URL, PostgreSQL takes the user name.
    let database = options
        .get_database()
        .unwrap_or(options.get_username())
        .to_string();
    let maintenance = if database == "postgres" {
        "template1"
    } else {
        "postgres"
    };
    let failed = |reason: String| {
        StoreError::CreateDatabase(Box::new(CreateDatabaseError {
            database: database.clone(),
            target: target.to_string(),
            reason,
            createdb: createdb_command(options, &database),
        }))
    };
    let mut conn = match tokio::time::timeout(
        timeout,
        options.clone().database(maintenance).connect(),
    )
    .await
    {
        Err(_) => {
            return Err(failed(format!(
                "the maintenance database '{maintenance}' did not answer within {} s",
                timeout.as_secs_f32()
            )));
        }
        Ok(Err(e)) => return Err(failed(database_error_text(&e))),
        Ok(Ok(conn)) => conn,
    };
    let quoted = format!("\"{}\"", database.replace('"', "\"\""));
    let created = sqlx::query(&format!("CREATE DATABASE {quoted}"))
        .execute(&mut conn)
        .await;
    let _ = conn.close().await;
    match created {
        Ok(_) => {
            tracing::info!(database = %database, at = target, "created the PostgreSQL database");
            Ok(())
        }
        Err(e) if sqlstate(&e).as_deref() == Some(DUPLICATE_DATABASE) => Ok(()),
        Err(e) => Err(failed(database_error_text(&e))),
    }
}

/// The server's message alone for a database error (sqlx's own text adds nothing).
fn database_error_text(error: &sqlx::Error) -> String {
    match error.as_database_error() {
        Some(e) => e.message().to_string(),
        None => error.to_string(),
    }
}

/// The `createdb` invocation that creates `database` as the user of `options`.
fn createdb_command(options: &PgConnectOptions, database: &str) -> String {
    format!(
        "createdb -h {} -p {} -U {} {}",
        shell_word(options.get_host()),
        options.get_port(),
        shell_word(options.get_username()),
        shell_word(database)
    )
}

/// `word` as one shell word: as is when it is plain, else single-quoted.
pub(crate) fn shell_word(word: &str) -> String {
    let plain = !word.is_empty()
        && word
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_-./:@".contains(c));
    if plain {
        word.to_string()
    } else {
        format!("'{}'", word.replace('\'', "'\\''"))
    }
}

impl Db {
    /// Connects to `url`, creating a SQLite file and its directory, or a PostgreSQL
    /// database, when missing.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        Self::connect_with_timeout(url, DEFAULT_CONNECT_TIMEOUT).await
    }

    /// Connects to `url`; a PostgreSQL server that refuses or does not answer fails
    /// within `timeout`, naming its host and port and the operating system's error.
    pub async fn connect_with_timeout(url: &str, timeout: Duration) -> Result<Self, StoreError> {
        if url.starts_with("sqlite:") {
            let options = SqliteConnectOptions::from_str(url)?
                .create_if_missing(true)
                .journal_mode(SqliteJournalMode::Wal)
                .synchronous(SqliteSynchronous::Normal)
                .busy_timeout(Duration::from_secs(10))
                .foreign_keys(true);
            if let Some(parent) = options.get_filename().parent()
                && !parent.as_os_str().is_empty()
            {
                std::fs::create_dir_all(parent).map_err(|source| StoreError::CreateDir {
                    path: parent.display().to_string(),
                    source,
                })?;
            }
            private_sqlite_files(options.get_filename()).map_err(|source| {
                StoreError::PrivateFile {
                    path: options.get_filename().display().to_string(),
                    source,
                }
            })?;
            let pool = SqlitePoolOptions::new()
                .max_connections(8)
                .connect_with(options)
                .await?;
            Ok(Db::Sqlite(pool))
        } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            let options = PgConnectOptions::from_str(url)?;
            let target = format!("{}:{}", options.get_host(), options.get_port());
            // One direct connection first: the pool would retry a refused port until
            // its acquire timeout and then report only that it timed out.
            match probe_postgres(&options, &target, timeout).await {
                Err(StoreError::Connect { source, .. }) if is_missing_database(&source) => {
                    create_postgres_database(&options, &target, timeout).await?;
                    probe_postgres(&options, &target, timeout).await?;
                }
                other => other?,
            }
            let pool = PgPoolOptions::new()
                .max_connections(16)
                .acquire_timeout(Duration::from_secs(10))
                .connect_with(options)
                .await?;
            Ok(Db::Postgres(pool))
        } else {
            Err(StoreError::UnsupportedUrl)
        }
    }

    pub fn backend(&self) -> Backend {
        match self {
            Db::Sqlite(_) => Backend::Sqlite,
            Db::Postgres(_) => Backend::Postgres,
        }
    }

    /// Applies the migrations the database lacks and says which those were.
    pub async fn migrate(&self) -> Result<MigrationReport, StoreError> {
        use sqlx::migrate::Migrate;
        // Read without creating the migrations table: creating it again would only add
        // a PostgreSQL notice to every start.
        let (migrator, before) = match self {
            Db::Sqlite(pool) => {
                let exists: bool = sqlx::query_scalar(
                    "SELECT EXISTS (SELECT 1 FROM sqlite_master \
                     WHERE type = 'table' AND name = '_sqlx_migrations')",
                )
                .fetch_one(pool)
                .await?;
                let before = if exists {
                    pool.acquire().await?.list_applied_migrations().await?
                } else {
                    Vec::new()
                };
                SQLITE_MIGRATIONS.run(pool).await?;
                (&SQLITE_MIGRATIONS, before)
            }
            Db::Postgres(pool) => {
                let exists: bool =
                    sqlx::query_scalar("SELECT to_regclass('_sqlx_migrations') IS NOT NULL")
                        .fetch_one(pool)
                        .await?;
                let before = if exists {
                    pool.acquire().await?.list_applied_migrations().await?
                } else {
                    Vec::new()
                };
                POSTGRES_MIGRATIONS.run(pool).await?;
                (&POSTGRES_MIGRATIONS, before)
            }
        };
        let before: std::collections::HashSet<i64> = before.iter().map(|m| m.version).collect();
        let mut report = MigrationReport::default();
        for migration in migrator
            .iter()
            .filter(|m| !m.migration_type.is_down_migration())
        {
            if before.contains(&migration.version) {
                report.already_applied += 1;
            } else {
                report
                    .applied
                    .push((migration.version, migration.description.to_string()));
            }
        }
        Ok(report)
    }

    /// Cheap round trip, for readiness checks.
    pub async fn ping(&self) -> Result<(), StoreError> {
        on_pool!(self, pool => sqlx::query("SELECT 1").execute(pool).await.map(|_| ())?);
        Ok(())
    }

    pub async fn close(&self) {
        on_pool!(self, pool => pool.close().await)
    }

    /// Every registered pack with its version and declared dependencies.
    pub async fn registered_packs(&self) -> Result<Vec<RegisteredPackRow>, StoreError> {
        const SQL: &str = "SELECT ref, version, dependencies FROM packs ORDER BY ref";
        let rows: Vec<(String, String, String)> =
            on_pool!(self, pool => sqlx::query_as(SQL).fetch_all(pool).await?);
        Ok(rows
            .into_iter()
            .map(|(pack_ref, version, deps)| RegisteredPackRow {
                pack_ref,
                version,
                // Written by us as a JSON list; an unreadable value means "none recorded".
                dependencies: serde_json::from_str(&deps).unwrap_or_default(),
            })
            .collect())
    }

    /// Every registered pack with its version, dependencies and provenance.
    pub async fn registered_sources(&self) -> Result<Vec<RegisteredSource>, StoreError> {
        const SQL: &str = "SELECT ref, version, dependencies, source, source_type, source_url, \
                           registry_url, git_commit, checksum FROM packs ORDER BY ref";
        Ok(on_pool!(self, pool => sqlx::query_as(SQL).fetch_all(pool).await?))
    }

    /// The registered version of `pack_ref`, if it is registered.
    pub async fn registered_version(&self, pack_ref: &str) -> Result<Option<String>, StoreError> {
        const SQL: &str = "SELECT version FROM packs WHERE ref = $1";
        Ok(on_pool!(self, pool => sqlx::query_scalar(SQL)
            .bind(pack_ref)
            .fetch_optional(pool)
            .await?))
    }

    /// Adds a user (for REST login); `false` when the email is already taken.
    pub async fn create_user(&self, email: &str, password_hash: &str) -> Result<bool, StoreError> {
        const SQL: &str = "INSERT INTO users (email, password_hash, created_at) VALUES ($1, $2, $3) \
                           ON CONFLICT (email) DO NOTHING";
        let now = crate::auth::unix_now() as i64 * 1000;
        let rows = on_pool!(self, pool => sqlx::query(SQL)
            .bind(email)
            .bind(password_hash)
            .bind(now)
            .execute(pool)
            .await?
            .rows_affected());
        Ok(rows == 1)
    }

    /// Adds a user with `grants` (the JSON array `users.grants` holds); `false` when
    /// the email is already taken.
    pub async fn create_user_with_grants(
        &self,
        email: &str,
        password_hash: &str,
        grants: &str,
    ) -> Result<bool, StoreError> {
        const SQL: &str = "INSERT INTO users (email, password_hash, created_at, grants) \
                           VALUES ($1, $2, $3, $4) ON CONFLICT (email) DO NOTHING";
        let now = crate::auth::unix_now() as i64 * 1000;
        let rows = on_pool!(self, pool => sqlx::query(SQL)
            .bind(email)
            .bind(password_hash)
            .bind(now)
            .bind(grants)
            .execute(pool)
            .await?
            .rows_affected());
        Ok(rows == 1)
    }

    /// Replaces the grants (JSON array) of `email`; `false` when there is no such user.
    pub async fn set_user_grants(&self, email: &str, grants: &str) -> Result<bool, StoreError> {
        const SQL: &str = "UPDATE users SET grants = $1 WHERE email = $2";
        let rows = on_pool!(self, pool => sqlx::query(SQL)
            .bind(grants)
            .bind(email)
            .execute(pool)
            .await?
            .rows_affected());
        Ok(rows == 1)
    }

    /// The stored password hash and grants (JSON array) of `email`, if such a user
    /// exists.
    pub async fn login_record(&self, email: &str) -> Result<Option<(String, String)>, StoreError> {
        const SQL: &str = "SELECT password_hash, grants FROM users WHERE email = $1";
        Ok(on_pool!(self, pool => sqlx::query_as(SQL)
            .bind(email)
            .fetch_optional(pool)
            .await?))
    }

    /// The stored password hash of `email`, if such a user exists.
    pub async fn password_hash(&self, email: &str) -> Result<Option<String>, StoreError> {
        const SQL: &str = "SELECT password_hash FROM users WHERE email = $1";
        Ok(on_pool!(self, pool => sqlx::query_scalar(SQL)
            .bind(email)
            .fetch_optional(pool)
            .await?))
    }

    /// Inserts a minimal pack row. Used by tests and benchmarks to set up "installed"
    /// state until registration owns this table.
    #[doc(hidden)]
    pub async fn insert_pack_for_tests(
        &self,
        pack_ref: &str,
        version: &str,
        dependencies: &[&str],
    ) -> Result<i64, StoreError> {
        const SQL: &str = "INSERT INTO packs (ref, label, version, dependencies, storage_path, \
                           installed_at, updated_at) VALUES ($1, $1, $2, $3, $4, $5, $5) RETURNING id";
        let deps = serde_json::to_string(dependencies).expect("strings serialize");
        let path = format!("/nonexistent/{pack_ref}");
        let now = crate::auth::unix_now() as i64 * 1000;
        Ok(on_pool!(self, pool => sqlx::query_scalar(SQL)
            .bind(pack_ref)
            .bind(version)
            .bind(&deps)
            .bind(&path)
            .bind(now)
            .fetch_one(pool)
            .await?))
    }
}
