//! The shipped server binary: serve, migrate, token issue, signals.

use std::{
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use attune_packs_server::{auth::Authenticator, config::Secret};

const SERVER: &str = env!("CARGO_BIN_EXE_attune-packs-server");

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A server process; killed on drop unless it was stopped.
pub struct ServerProcess {
    child: std::process::Child,
    pub addr: String,
}

impl ServerProcess {
    fn start(data_dir: &std::path::Path, roots: &std::path::Path) -> Self {
        Self::start_with(data_dir, roots, &[])
    }

    /// Starts `serve` with extra environment variables (database URL, secret).
    pub fn start_with(
        data_dir: &std::path::Path,
        roots: &std::path::Path,
        env: &[(&str, &str)],
    ) -> Self {
        // Only tests that read the log may fill a pipe nobody drains.
        Self::spawn(data_dir, roots, env, env.is_empty())
    }

    /// Starts `serve` with extra environment variables, its log piped for
    /// [`stop_and_read_log`].
    pub fn start_piped(
        data_dir: &std::path::Path,
        roots: &std::path::Path,
        env: &[(&str, &str)],
    ) -> Self {
        Self::spawn(data_dir, roots, env, true)
    }

    fn spawn(
        data_dir: &std::path::Path,
        roots: &std::path::Path,
        env: &[(&str, &str)],
        piped: bool,
    ) -> Self {
        let port = free_port();
        let addr = format!("127.0.0.1:{port}");
        let child = Command::new(SERVER)
            .args(["serve", "--listen", &addr, "--data-dir"])
            .arg(data_dir)
            .env(
                "ATTUNE_PACKS_ALLOWED_ROOTS",
                format!("[{}]", roots.display()),
            )
            .env_remove("ATTUNE_PACKS_JWT_SECRET")
            .env_remove("ATTUNE_PACKS_DATABASE_URL")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(if piped { Stdio::piped() } else { Stdio::null() })
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(&addr).is_err() {
            assert!(Instant::now() < deadline, "server did not start listening");
            std::thread::sleep(Duration::from_millis(50));
        }
        Self { child, addr }
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `token issue` run from `cwd` with `args` and `env` added; the secret and database
/// variables of the test's own environment removed.
fn token_issue(cwd: &std::path::Path, args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    Command::new(SERVER)
        .args(["token", "issue", "--subject", "ops", "--ttl", "10m"])
        .args(args)
        .current_dir(cwd)
        .env_remove("ATTUNE_PACKS_JWT_SECRET")
        .env_remove("ATTUNE_PACKS_DATA_DIR")
        .env_remove("ATTUNE_PACKS_CONFIG")
        .envs(env.iter().copied())
        .output()
        .unwrap()
}

/// The token on the last line of stdout, after checking the command succeeded.
fn token_of(out: &std::process::Output) -> String {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .last()
        .unwrap()
        .to_string()
}

/// The HTTP status of an authenticated REST read against `server`.
fn rest_status(server: &ServerProcess, token: &str) -> String {
    let out = Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-w", "%{http_code}"])
        .arg(format!("http://{}/api/v1/packs", server.addr))
        .args(["-H", &format!("authorization: Bearer {token}")])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

register_test!(sync token_issue_from_another_directory_signs_with_the_servers_secret);
fn token_issue_from_another_directory_signs_with_the_servers_secret() {
    let root = tempfile::tempdir().unwrap();
    let data = root.path().join("data");
    let server = ServerProcess::start(&data, root.path());
    let elsewhere = tempfile::tempdir().unwrap();
    let out = token_issue(
        elsewhere.path(),
        &["--data-dir", data.to_str().unwrap()],
        &[],
    );
    let token = token_of(&out);
    let secret_file = std::path::absolute(&data).unwrap().join("jwt-secret");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!(
            "signed with the secret from {}",
            secret_file.display()
        )),
        "{stderr}"
    );
    let secret = std::fs::read_to_string(&secret_file).unwrap();
    assert!(
        !stderr.contains(secret.trim()),
        "the secret itself is never shown"
    );
    // Nothing was created where the command ran.
    assert_eq!(std::fs::read_dir(elsewhere.path()).unwrap().count(), 0);
    let principal = Authenticator::new(&Secret::new(secret.trim()))
        .verify_token(&token)
        .unwrap();
    assert_eq!(principal.subject, "ops");
    assert_eq!(rest_status(&server, &token), "200");
    // The same through the environment, as `serve` reads it.
    let out = token_issue(
        elsewhere.path(),
        &[],
        &[("ATTUNE_PACKS_DATA_DIR", data.to_str().unwrap())],
    );
    assert_eq!(rest_status(&server, &token_of(&out)), "200");
}

register_test!(sync token_issue_names_a_configured_secret_and_the_server_accepts_its_tokens);
fn token_issue_names_a_configured_secret_and_the_server_accepts_its_tokens() {
    let root = tempfile::tempdir().unwrap();
    let data = root.path().join("data");
    let secret = [("ATTUNE_PACKS_JWT_SECRET", "a-shared-secret-for-this-test")];
    let server = ServerProcess::start_with(&data, root.path(), &secret);
    let elsewhere = tempfile::tempdir().unwrap();
    let out = token_issue(elsewhere.path(), &[], &secret);
    let token = token_of(&out);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("signed with the secret from environment variable ATTUNE_PACKS_JWT_SECRET"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("a-shared-secret-for-this-test"),
        "{stderr}"
    );
    assert_eq!(rest_status(&server, &token), "200");
    // From a config file, which it names.
    let config = elsewhere.path().join("server.yaml");
    std::fs::write(&config, "jwt_secret: a-shared-secret-for-this-test\n").unwrap();
    let out = token_issue(
        elsewhere.path(),
        &["--config", config.to_str().unwrap()],
        &[],
    );
    let token = token_of(&out);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("jwt_secret in config file {}", config.display())),
        "{stderr}"
    );
    assert_eq!(rest_status(&server, &token), "200");
}

register_test!(sync token_issue_without_a_secret_fails_naming_the_fix_and_creates_nothing);
fn token_issue_without_a_secret_fails_naming_the_fix_and_creates_nothing() {
    let root = tempfile::tempdir().unwrap();
    let data = root.path().join("data");
    let out = token_issue(root.path(), &["--data-dir", data.to_str().unwrap()], &[]);
    assert!(!out.status.success());
    assert!(
        out.stdout.is_empty(),
        "no token without the server's secret"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.trim_end().lines().count(), 1, "one line: {stderr}");
    for fix in [
        "attune-packs-server serve",
        "ATTUNE_PACKS_JWT_SECRET",
        "--data-dir",
        "jwt-secret",
    ] {
        assert!(stderr.contains(fix), "{fix} not named: {stderr}");
    }
    assert!(!data.exists(), "no data dir created");
    // Nor, without --data-dir, the default one in the working directory.
    let out = token_issue(root.path(), &[], &[]);
    assert!(!out.status.success());
    assert!(!root.path().join("attune-packs-data").exists());
}

register_test!(sync sigterm_stops_the_server_cleanly);
fn sigterm_stops_the_server_cleanly() {
    let root = tempfile::tempdir().unwrap();
    let data = root.path().join("data");
    let mut server = ServerProcess::start(&data, root.path());
    // The embedded default: a migrated SQLite file in the data dir.
    assert!(data.join("attune-packs.db").exists());
    let pid = server.child.id() as i32;
    let status = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(20);
    let exit = loop {
        if let Some(exit) = server.child.try_wait().unwrap() {
            break exit;
        }
        assert!(
            Instant::now() < deadline,
            "server did not stop after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(exit.success(), "exit status {exit:?}");
    let mut stderr = String::new();
    use std::io::Read;
    server
        .child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert!(stderr.contains("shutting down"), "{stderr}");
    // The secret is never logged.
    let secret = std::fs::read_to_string(data.join("jwt-secret")).unwrap();
    assert!(!stderr.contains(secret.trim()));
}

/// The migrations shipped for SQLite, e.g. `0001_init.sql`.
fn shipped_migrations() -> Vec<String> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../migrations/sqlite");
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".sql"))
        .collect();
    names.sort();
    names
}

register_test!(sync migrate_reports_what_it_applied_and_then_that_it_is_up_to_date);
fn migrate_reports_what_it_applied_and_then_that_it_is_up_to_date() {
    let root = tempfile::tempdir().unwrap();
    let migrate = || {
        let out = Command::new(SERVER)
            .args(["migrate", "--data-dir"])
            .arg(root.path())
            .env_remove("ATTUNE_PACKS_DATABASE_URL")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let shipped = shipped_migrations();
    let first = migrate();
    assert!(!first.contains("up to date"), "{first}");
    // One line per migration: version and description.
    for name in &shipped {
        let (version, description) = name.trim_end_matches(".sql").split_once('_').unwrap();
        let line = format!(
            "applied migration {} {}",
            version.parse::<i64>().unwrap(),
            description.replace('_', " ")
        );
        assert!(first.contains(&line), "{line} missing: {first}");
    }
    let second = migrate();
    assert!(
        second.contains(&format!(
            "up to date: {} migrations already applied",
            shipped.len()
        )),
        "{second}"
    );
    assert!(!second.contains("applied migration"), "{second}");
    assert!(root.path().join("attune-packs.db").exists());
}

register_test!(sync user_add_reads_the_password_from_stdin_and_login_accepts_it);
fn user_add_reads_the_password_from_stdin_and_login_accepts_it() {
    use std::io::Write;
    let root = tempfile::tempdir().unwrap();
    let data = root.path().join("data");
    let add = |email: &str, password: &str| {
        let mut child = Command::new(SERVER)
            .args(["user", "add", "--email", email, "--data-dir"])
            .arg(&data)
            .env_remove("ATTUNE_PACKS_DATABASE_URL")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(format!("{password}\n").as_bytes())
            .unwrap();
        child.wait_with_output().unwrap()
    };
    let out = add("Admin@Example.com", "s3cret-passw0rd");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("user admin@example.com added"));
    // It says which database it wrote to, that it was new, and that no server has made
    // a secret there yet.
    let stderr = String::from_utf8_lossy(&out.stderr);
    let data_abs = std::path::absolute(&data).unwrap();
    for expected in [
        format!(
            "database sqlite://{}",
            data_abs.join("attune-packs.db").display()
        ),
        "the database was new".to_string(),
        format!(
            "no JWT secret yet: `attune-packs-server serve` generates {}",
            data_abs.join("jwt-secret").display()
        ),
    ] {
        assert!(stderr.contains(&expected), "{expected:?} missing: {stderr}");
    }
    assert!(
        !data.join("jwt-secret").exists(),
        "only serve makes a secret"
    );
    let again = add("admin@example.com", "another-password");
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("already exists"));
    let short = add("x@example.com", "short");
    assert!(String::from_utf8_lossy(&short.stderr).contains("at least 8"));

    let server = ServerProcess::start(&data, root.path());
    let out = add("second@example.com", "another-password");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!(
            "login tokens are signed with the secret from {}",
            data_abs.join("jwt-secret").display()
        )) && !stderr.contains("the database was new"),
        "{stderr}"
    );
    let login = |password: &str| {
        Command::new("curl")
            .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "-X", "POST"])
            .arg(format!("http://{}/api/v1/auth/login", server.addr))
            .args(["-H", "content-type: application/json", "-d"])
            .arg(format!(
                r#"{{"email":"admin@example.com","password":"{password}"}}"#
            ))
            .output()
            .unwrap()
    };
    assert_eq!(
        String::from_utf8_lossy(&login("s3cret-passw0rd").stdout),
        "200"
    );
    assert_eq!(
        String::from_utf8_lossy(&login("wrong-password").stdout),
        "401"
    );
}

/// Stops `server` with SIGTERM and returns what it logged.
fn stop_and_read_log(mut server: ServerProcess) -> String {
    let pid = server.child.id() as i32;
    // SAFETY: kill takes plain integers.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let _ = server.child.wait();
    let mut log = String::new();
    use std::io::Read;
    if let Some(mut stderr) = server.child.stderr.take() {
        stderr.read_to_string(&mut log).unwrap();
    }
    log
}

register_test!(sync serve_announces_where_it_listens_what_it_uses_and_how_to_get_a_token);
fn serve_announces_where_it_listens_what_it_uses_and_how_to_get_a_token() {
    let root = tempfile::tempdir().unwrap();
    let data = root.path().join("data");
    let server = ServerProcess::start(&data, root.path());
    let addr = server.addr.clone();
    let log = stop_and_read_log(server);
    let data = std::path::absolute(&data).unwrap();
    for expected in [
        format!("listening on {addr}"),
        "gRPC and REST/JSON share this port".to_string(),
        format!("REST at http://{addr}/api/v1"),
        format!("attune-packs --server http://{addr}"),
        format!("data dir: {}", data.display()),
        format!(
            "database: sqlite://{}",
            data.join("attune-packs.db").display()
        ),
        "allowed roots (request paths are read on this server".to_string(),
        root.path().display().to_string(),
        "registries: none configured".to_string(),
        "registry.indices".to_string(),
        format!(
            "tokens are signed with the secret from {}",
            data.join("jwt-secret").display()
        ),
        format!(
            "`attune-packs-server token issue --subject me --data-dir {}`",
            data.display()
        ),
    ] {
        assert!(log.contains(&expected), "{expected:?} missing from:\n{log}");
    }
    // Once.
    assert_eq!(log.matches("listening on").count(), 1, "{log}");
}

register_test!(sync the_banner_lists_configured_registries_and_no_database_password);
fn the_banner_lists_configured_registries_and_no_database_password() {
    let root = tempfile::tempdir().unwrap();
    let data = root.path().join("data");
    let index = root.path().join("index.json");
    std::fs::write(
        &index,
        r#"{"registry_name": "t", "registry_url": "", "version": "1.0", "last_updated": "x", "packs": []}"#,
    )
    .unwrap();
    let config = root.path().join("server.yaml");
    std::fs::write(
        &config,
        format!(
            "registry:\n  indices:\n    - url: file://{}\n      name: local\n      priority: 5\n",
            index.display()
        ),
    )
    .unwrap();
    let config = config.to_str().unwrap().to_string();
    let server =
        ServerProcess::start_piped(&data, root.path(), &[("ATTUNE_PACKS_CONFIG", &config)]);
    let log = stop_and_read_log(server);
    assert!(
        log.contains(&format!(
            "registries: local file://{} (priority 5)",
            index.display()
        )),
        "{log}"
    );
    assert!(!log.contains("none configured"), "{log}");
}

register_test!(sync a_taken_port_is_one_line_naming_the_fix);
fn a_taken_port_is_one_line_naming_the_fix() {
    let root = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(&root.path().join("a"), root.path());
    let out = Command::new(SERVER)
        .args(["serve", "--listen", &server.addr, "--data-dir"])
        .arg(root.path().join("b"))
        .env_remove("ATTUNE_PACKS_DATABASE_URL")
        .env_remove("ATTUNE_PACKS_JWT_SECRET")
        .env("RUST_LOG", "off")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains(&format!("cannot listen on {}", server.addr))
            && stderr.contains("already in use")
            && stderr.contains("--listen"),
        "{stderr}"
    );
}

/// `TEST_POSTGRES_URL` with its database replaced by `database` and, when given, its
/// user by `user`.
fn postgres_url_for(admin_url: &str, user: Option<&str>, database: &str) -> String {
    let (base, query) = match admin_url.split_once('?') {
        Some((b, q)) => (b, format!("?{q}")),
        None => (admin_url, String::new()),
    };
    let prefix = base.rsplit_once('/').map_or(base, |(p, _)| p);
    let prefix = match user {
        Some(user) => {
            let (scheme, rest) = prefix.split_once("://").unwrap();
            let host = rest.rsplit_once('@').map_or(rest, |(_, h)| h);
            format!("{scheme}://{user}@{host}")
        }
        None => prefix.to_string(),
    };
    format!("{prefix}/{database}{query}")
}

fn random_name(prefix: &str) -> String {
    let mut bytes = [0u8; 6];
    getrandom::fill(&mut bytes).unwrap();
    format!("{prefix}_{}", hex::encode(bytes))
}

/// Runs SQL statements as the admin of `TEST_POSTGRES_URL`, ignoring failures
/// (clean-up).
fn postgres_admin(admin_url: &str, statements: &[String]) {
    use sqlx::Connection;
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        let mut admin = sqlx::PgConnection::connect(admin_url).await.unwrap();
        for sql in statements {
            let _ = sqlx::query(sql).execute(&mut admin).await;
        }
    });
}

fn migrate_postgres(url: &str, data: &std::path::Path) -> std::process::Output {
    Command::new(SERVER)
        .args(["migrate", "--data-dir"])
        .arg(data)
        .args(["--database-url", url])
        .env("RUST_LOG", "off")
        .output()
        .unwrap()
}

register_test!(sync a_missing_postgres_database_is_created, requires = [Postgres]);
fn a_missing_postgres_database_is_created() {
    let admin_url = std::env::var(crate::common::PG_ENV).unwrap();
    // Upper case and a dash: the name must be quoted to keep them.
    let name = random_name("Attune-Packs-New");
    let url = postgres_url_for(&admin_url, None, &name);
    let root = tempfile::tempdir().unwrap();
    let out = migrate_postgres(&url, root.path());
    postgres_admin(
        &admin_url,
        &[format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)")],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("applied migration 1 init"), "{stdout}");
    assert!(!stdout.contains("up to date"), "{stdout}");
}

register_test!(sync a_postgres_database_that_cannot_be_created_names_the_createdb_command, requires = [Postgres]);
fn a_postgres_database_that_cannot_be_created_names_the_createdb_command() {
    let admin_url = std::env::var(crate::common::PG_ENV).unwrap();
    // A role that may log in but not create databases.
    let role = random_name("attune_packs_nocreate");
    postgres_admin(
        &admin_url,
        &[format!(
            "CREATE ROLE {role} LOGIN PASSWORD 'pw-of-the-test' NOCREATEDB"
        )],
    );
    let name = random_name("attune_packs_absent");
    let url = postgres_url_for(&admin_url, Some(&format!("{role}:pw-of-the-test")), &name);
    let root = tempfile::tempdir().unwrap();
    let out = migrate_postgres(&url, root.path());
    postgres_admin(
        &admin_url,
        &[
            format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"),
            format!("DROP ROLE IF EXISTS {role}"),
        ],
    );
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("PostgreSQL database '{name}' does not exist")),
        "{stderr}"
    );
    assert!(
        stderr.contains("createdb -h ") && stderr.contains(&format!("-U {role} {name}`")),
        "{stderr}"
    );
    assert!(!stderr.contains("pw-of-the-test"), "{stderr}");
}
