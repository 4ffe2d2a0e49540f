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
            // Only the signal test reads the log; others must not fill a pipe nobody drains.
            .stderr(if env.is_empty() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
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

register_test!(sync token_issue_signs_with_the_generated_secret);
fn token_issue_signs_with_the_generated_secret() {
    let root = tempfile::tempdir().unwrap();
    let data = root.path().join("data");
    let out = Command::new(SERVER)
        .args([
            "token",
            "issue",
            "--subject",
            "ops",
            "--ttl",
            "10m",
            "--data-dir",
        ])
        .arg(&data)
        .env_remove("ATTUNE_PACKS_JWT_SECRET")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    let token = stdout.lines().last().unwrap().to_string();
    // The secret was generated into the data dir, private, and signs the token.
    let secret = std::fs::read_to_string(data.join("jwt-secret")).unwrap();
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(data.join("jwt-secret"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let principal = Authenticator::new(&Secret::new(secret.trim()))
        .verify_token(&token)
        .unwrap();
    assert_eq!(principal.subject, "ops");

    // The CLI's tests (client/tests/cli.rs) use such a token against a server process.
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

register_test!(sync migrate_creates_the_schema_and_is_idempotent);
fn migrate_creates_the_schema_and_is_idempotent() {
    let root = tempfile::tempdir().unwrap();
    for _ in 0..2 {
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
        assert!(String::from_utf8_lossy(&out.stdout).contains("up to date"));
    }
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
    let again = add("admin@example.com", "another-password");
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("already exists"));
    let short = add("x@example.com", "short");
    assert!(String::from_utf8_lossy(&short.stderr).contains("at least 8"));

    let server = ServerProcess::start(&data, root.path());
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
