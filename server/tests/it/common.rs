//! Test harness: a real server on an ephemeral loopback port, on SQLite or PostgreSQL.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use attune_packs_client::Client;
use attune_packs_server::{
    config::{Config, Overrides, Secret},
    state::{self, AppState},
};
use tempfile::TempDir;
use tokio::{net::TcpListener, sync::oneshot, task::JoinHandle};

/// Environment variable with an admin URL of a PostgreSQL server for tests; each test
/// creates its own database there.
pub const PG_ENV: &str = "TEST_POSTGRES_URL";
pub const SECRET: &str = "integration-test-secret";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// Runs a test body on SQLite, and on PostgreSQL (reported as ignored when
/// `TEST_POSTGRES_URL` is not set, and failed under CI); `requires = [...]` adds
/// what both variants need.
macro_rules! on_both_backends {
    ($name:ident $(, requires = [$($req:ident),*])?) => {
        mod $name {
            register_test!(sqlite, requires = [$($($req),*)?]);
            async fn sqlite() {
                super::$name($crate::common::Backend::Sqlite).await
            }
            register_test!(postgres, requires = [Postgres $($(, $req)*)?]);
            async fn postgres() {
                super::$name($crate::common::Backend::Postgres).await
            }
        }
    };
}
pub(crate) use on_both_backends;

/// Environment variable with the URL of a RabbitMQ broker for the event tests
/// (`amqp://guest:guest@127.0.0.1:5672/%2f`).
pub const AMQP_ENV: &str = "TEST_AMQP_URL";

/// The broker of `TEST_AMQP_URL`; a test that calls this registers with
/// `requires = [RabbitMq]`.
pub fn amqp_url() -> String {
    std::env::var(AMQP_ENV).expect("TEST_AMQP_URL: the test must require RabbitMq")
}

/// A fresh, empty database on the PostgreSQL server named by `TEST_POSTGRES_URL`:
/// its URL and its name.
async fn fresh_postgres_database() -> (String, String) {
    use sqlx::Connection;
    let admin_url =
        std::env::var(PG_ENV).expect("TEST_POSTGRES_URL: the test must require Postgres");
    let mut admin = sqlx::PgConnection::connect(&admin_url)
        .await
        .expect("connect to TEST_POSTGRES_URL");
    let mut bytes = [0u8; 6];
    getrandom::fill(&mut bytes).unwrap();
    let name = format!("attune_packs_test_{}", hex::encode(bytes));
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut admin)
        .await
        .expect("create test database");
    let (base, query) = match admin_url.split_once('?') {
        Some((b, q)) => (b, format!("?{q}")),
        None => (admin_url.as_str(), String::new()),
    };
    let prefix = base.rsplit_once('/').map(|(p, _)| p).unwrap_or(base);
    (format!("{prefix}/{name}{query}"), name)
}

async fn drop_postgres_database(name: &str) {
    use sqlx::Connection;
    let admin_url = std::env::var(PG_ENV).expect("set when a database was created");
    if let Ok(mut admin) = sqlx::PgConnection::connect(&admin_url).await {
        let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
            .execute(&mut admin)
            .await;
    }
}

pub struct TestServer {
    pub addr: SocketAddr,
    pub state: AppState,
    /// Root of everything this server may touch: `<root>/data`, `<root>/packs`.
    pub root: TempDir,
    shutdown: Option<oneshot::Sender<()>>,
    handle: Option<JoinHandle<()>>,
    pg_database: Option<String>,
}

impl TestServer {
    pub async fn start(backend: Backend) -> TestServer {
        Self::start_with(backend, |_| {}).await
    }

    /// Starts a server after `adjust` has changed its configuration.
    pub async fn start_with(backend: Backend, adjust: impl FnOnce(&mut Config)) -> TestServer {
        let root = tempfile::tempdir().unwrap();
        // tempfile makes it 0700: pack code (run as the sandbox user) could not reach
        // the packs below it. The server's own directories do the protecting.
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(root.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        let root_path = root.path().canonicalize().unwrap();
        let (database_url, pg_database) = match backend {
            Backend::Sqlite => (None, None),
            Backend::Postgres => {
                let (url, name) = fresh_postgres_database().await;
                (Some(url), Some(name))
            }
        };
        let mut config = Config::load(
            None,
            Vec::new(),
            &Overrides {
                data_dir: Some(root_path.join("data")),
                database_url,
                ..Default::default()
            },
        )
        .unwrap();
        config.jwt_secret = Some(Secret::new(SECRET));
        config.allowed_roots = Some(vec![root_path.clone()]);
        config.shutdown_grace = Duration::from_secs(5);
        std::fs::create_dir_all(root_path.join("packs")).unwrap();
        adjust(&mut config);
        let state = state::open(config).await.expect("open state");
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = oneshot::channel::<()>();
        let serve_state = state.clone();
        let handle = tokio::spawn(async move {
            attune_packs_server::server::run(listener, serve_state, async {
                let _ = rx.await;
            })
            .await
            .expect("server run");
        });
        TestServer {
            addr,
            state,
            root,
            shutdown: Some(tx),
            handle: Some(handle),
            pg_database,
        }
    }

    /// Stops this server and starts another on the same data dir and database (its
    /// configuration changed by `adjust`), as after a restart of the process.
    pub async fn restart_with(mut self, adjust: impl FnOnce(&mut Config)) -> TestServer {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(handle) = self.handle.take() {
            handle.await.unwrap();
        }
        self.state.db.close().await;
        let mut config = (*self.state.config).clone();
        adjust(&mut config);
        let state = state::open(config).await.expect("reopen state");
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = oneshot::channel::<()>();
        let serve_state = state.clone();
        let handle = tokio::spawn(async move {
            attune_packs_server::server::run(listener, serve_state, async {
                let _ = rx.await;
            })
            .await
            .expect("server run");
        });
        let root = std::mem::replace(&mut self.root, tempfile::tempdir().unwrap());
        TestServer {
            addr,
            state,
            root,
            shutdown: Some(tx),
            handle: Some(handle),
            pg_database: self.pg_database.take(),
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn packs_dir(&self) -> PathBuf {
        self.root.path().canonicalize().unwrap().join("packs")
    }

    pub fn token(&self) -> String {
        self.state.auth.issue("tester", Duration::from_secs(600))
    }

    pub async fn client(&self) -> Client {
        Client::connect(&self.url(), &self.token()).await.unwrap()
    }

    /// Stops the server and drops its PostgreSQL database (a test that panics before
    /// this leaves its database behind; names are random, so that is harmless).
    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(handle) = self.handle.take() {
            handle.await.unwrap();
        }
        self.state.db.close().await;
        if let Some(name) = self.pg_database.take() {
            drop_postgres_database(&name).await;
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

/// Writes `<dir>/<name>/pack.yaml` with `yaml` and returns the pack directory.
pub fn write_pack(dir: &Path, name: &str, yaml: &str) -> PathBuf {
    let pack = dir.join(name);
    std::fs::create_dir_all(&pack).unwrap();
    std::fs::write(pack.join("pack.yaml"), yaml).unwrap();
    pack
}

/// A minimal valid pack.yaml with the given dependencies.
pub fn simple_pack(pack_ref: &str, version: &str, deps: &[&str]) -> String {
    let mut yaml = format!("ref: {pack_ref}\nlabel: {pack_ref}\nversion: \"{version}\"\n");
    if !deps.is_empty() {
        yaml.push_str("dependencies:\n");
        for d in deps {
            yaml.push_str(&format!("  - \"{d}\"\n"));
        }
    }
    yaml
}

pub fn path_str(p: &Path) -> String {
    p.to_str().unwrap().to_string()
}
