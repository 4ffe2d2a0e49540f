//! Git fixtures for the integration tests: repositories served over loopback
//! (`git daemon`, smart HTTP through `git http-backend`), a server that never
//! answers, and a lock that keeps tests which shrink libgit2's process-wide
//! socket timeouts away from other clones.
//!
//! Every server is stopped on drop, so no `git daemon` or `git http-backend`
//! process outlives its test.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Runs `git` in `dir` with user/system config ignored; panics on failure
/// and returns trimmed stdout.
pub fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .args([
            "-c",
            "user.name=Fixture",
            "-c",
            "user.email=fixture@example.invalid",
        ])
        .args([
            "-c",
            "init.defaultBranch=main",
            "-c",
            "commit.gpgsign=false",
        ])
        .args(["-c", "tag.gpgsign=false"])
        // No background `git maintenance`/`gc --auto`: it detaches and would
        // outlive the test.
        .args(["-c", "gc.auto=0", "-c", "maintenance.auto=false"])
        .args(args)
        .current_dir(dir)
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_TERMINAL_PROMPT", "0")
        .env("GIT_AUTHOR_DATE", "2024-01-01T00:00:00Z")
        .env("GIT_COMMITTER_DATE", "2024-01-01T00:00:00Z")
        .output()
        .expect("run git");
    assert!(
        out.status.success(),
        "git {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn write(path: &Path, content: impl AsRef<[u8]>) {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).unwrap();
    }
    std::fs::write(path, content).unwrap();
}

/// Commit ids of the standard fixture.
#[derive(Debug, Clone)]
pub struct FixtureCommits {
    /// main~1: pack.yaml version 0.1.0 (tags `light`, annotated `v1.0.0`).
    pub c1: String,
    /// main tip: version 0.2.0, README.md, a submodule gitlink `vendor/sub`.
    pub c2: String,
    /// dev~1 (not the tip of any ref): dev.txt = "one".
    pub c3: String,
    /// dev tip: dev.txt = "two".
    pub c4: String,
    /// Object id of the annotated tag `v1.0.0` itself (not the commit).
    pub annotated_tag_object: String,
}

/// Creates the bare repository `<base>/<name>` with:
/// main: c1 → c2 (HEAD); dev: c2 → c3 → c4; lightweight tag `light` and
/// annotated tag `v1.0.0` on c1; branch `both` (c2) and tag `both` (c1).
pub fn create_fixture_repo(base: &Path, name: &str) -> FixtureCommits {
    let work = base.join(format!("{name}.work"));
    std::fs::create_dir_all(&work).unwrap();
    git(&work, &["init", "-q"]);
    write(
        &work.join("pack.yaml"),
        "ref: demo\nlabel: Demo\nversion: 0.1.0\n",
    );
    write(&work.join("actions/hello.sh"), "#!/bin/sh\necho hello\n");
    git(&work, &["add", "-A"]);
    git(&work, &["commit", "-q", "-m", "first"]);
    let c1 = git(&work, &["rev-parse", "HEAD"]);
    write(
        &work.join("pack.yaml"),
        "ref: demo\nlabel: Demo\nversion: 0.2.0\n",
    );
    write(&work.join("README.md"), "# demo pack\n");
    write(
        &work.join(".gitmodules"),
        "[submodule \"vendor/sub\"]\n\tpath = vendor/sub\n\turl = https://example.invalid/sub.git\n",
    );
    git(&work, &["add", "-A"]);
    git(
        &work,
        &[
            "update-index",
            "--add",
            "--cacheinfo",
            &format!("160000,{c1},vendor/sub"),
        ],
    );
    git(&work, &["commit", "-q", "-m", "second"]);
    let c2 = git(&work, &["rev-parse", "HEAD"]);
    git(&work, &["checkout", "-q", "-b", "dev"]);
    write(&work.join("dev.txt"), "one\n");
    git(&work, &["add", "-A"]);
    git(&work, &["commit", "-q", "-m", "dev one"]);
    let c3 = git(&work, &["rev-parse", "HEAD"]);
    write(&work.join("dev.txt"), "two\n");
    git(&work, &["commit", "-q", "-am", "dev two"]);
    let c4 = git(&work, &["rev-parse", "HEAD"]);
    git(&work, &["checkout", "-q", "main"]);
    git(&work, &["tag", "light", &c1]);
    git(&work, &["tag", "-a", "-m", "release 1.0.0", "v1.0.0", &c1]);
    git(&work, &["branch", "both", &c2]);
    git(&work, &["tag", "both", &c1]);
    let annotated_tag_object = git(&work, &["rev-parse", "v1.0.0"]);
    publish_bare(base, &work, name);
    std::fs::remove_dir_all(&work).unwrap();
    FixtureCommits {
        c1,
        c2,
        c3,
        c4,
        annotated_tag_object,
    }
}

/// Creates `<base>/<name>`: one commit (returned) with `pack.yaml` and
/// `size` bytes of incompressible data, for slow-transfer tests.
pub fn create_big_repo(base: &Path, name: &str, size: usize) -> String {
    let work = base.join(format!("{name}.work"));
    std::fs::create_dir_all(&work).unwrap();
    git(&work, &["init", "-q"]);
    write(&work.join("pack.yaml"), "ref: big\nversion: 1.0.0\n");
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let data: Vec<u8> = (0..size)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect();
    write(&work.join("data.bin"), data);
    git(&work, &["add", "-A"]);
    git(&work, &["commit", "-q", "-m", "big"]);
    let commit = git(&work, &["rev-parse", "HEAD"]);
    publish_bare(base, &work, name);
    std::fs::remove_dir_all(&work).unwrap();
    commit
}

/// Creates the bare repository `<base>/<name>` with one commit of `files` (see
/// `support::packs::pack_files`) on `main`, tagged `tag` if given; returns the
/// commit id.
pub fn create_repo<N: AsRef<str>, D: AsRef<[u8]>>(
    base: &Path,
    name: &str,
    files: &[(N, D)],
    tag: Option<&str>,
) -> String {
    let work = base.join(format!("{name}.work"));
    std::fs::create_dir_all(&work).unwrap();
    git(&work, &["init", "-q"]);
    super::packs::write_tree(&work, files);
    git(&work, &["add", "-A"]);
    git(&work, &["commit", "-q", "-m", "pack"]);
    if let Some(tag) = tag {
        git(&work, &["tag", tag]);
    }
    let commit = git(&work, &["rev-parse", "HEAD"]);
    publish_bare(base, &work, name);
    std::fs::remove_dir_all(&work).unwrap();
    commit
}

/// Publishes the working repository `work` as the bare repository `<base>/<name>`.
pub fn publish_bare(base: &Path, work: &Path, name: &str) {
    let bare = base.join(name);
    git(
        base,
        &[
            "clone",
            "-q",
            "--bare",
            work.to_str().unwrap(),
            bare.to_str().unwrap(),
        ],
    );
}

fn wait_for_port(port: u16, child: &mut Option<&mut Child>) -> bool {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(15) {
        if let Some(c) = child.as_mut()
            && c.try_wait().ok().flatten().is_some()
        {
            return false;
        }
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `git --exec-path`: where `git-daemon` and `git-http-backend` live.
pub fn git_exec_path() -> PathBuf {
    static PATH: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    PATH.get_or_init(|| PathBuf::from(git(Path::new("/"), &["--exec-path"])))
        .clone()
}

/// `git daemon` serving every repository under `base_path` on loopback.
/// Killed on drop.
pub struct GitDaemon {
    child: Child,
    pub port: u16,
}

impl GitDaemon {
    pub fn start(base_path: &Path) -> GitDaemon {
        for _ in 0..5 {
            let port = free_port();
            // Run git-daemon itself, not the `git` wrapper: killing the
            // wrapper would leave the daemon running. Its own process group
            // lets drop kill the per-connection children with it.
            let mut child = Command::new(git_exec_path().join("git-daemon"))
                .process_group(0)
                .arg("--reuseaddr")
                .arg("--export-all")
                .arg(format!("--base-path={}", base_path.display()))
                .arg("--listen=127.0.0.1")
                .arg(format!("--port={port}"))
                .arg("--enable=upload-pack")
                .arg("--informative-errors")
                .env("GIT_CONFIG_GLOBAL", "/dev/null")
                .env("GIT_CONFIG_NOSYSTEM", "1")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("spawn git daemon");
            if wait_for_port(port, &mut Some(&mut child)) {
                return GitDaemon { child, port };
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!("git daemon did not come up");
    }

    /// `git://127.0.0.1:<port>/<name>`
    pub fn url(&self, name: &str) -> String {
        format!("git://127.0.0.1:{}/{name}", self.port)
    }
}

impl Drop for GitDaemon {
    fn drop(&mut self) {
        let pgid = self.child.id() as libc::pid_t;
        // SAFETY: plain kill(2) on the process group this daemon leads.
        unsafe { libc::kill(-pgid, libc::SIGKILL) };
        let _ = self.child.wait();
    }
}

/// Options of [`HttpGitServer`].
#[derive(Debug, Clone, Default)]
pub struct HttpOptions {
    /// Require `Authorization: Basic base64(user:password)`, else 401.
    pub basic_auth: Option<(String, String)>,
    /// Send POST (upload-pack) response bodies in 4 KiB pieces with this
    /// pause between them.
    pub throttle: Option<Duration>,
}

/// Git smart HTTP on loopback: a minimal HTTP/1.1 server (one thread per
/// connection, `Connection: close`) running `git http-backend` as CGI
/// with `GIT_PROJECT_ROOT=<root>` and `GIT_HTTP_EXPORT_ALL=1`.
pub struct HttpGitServer {
    pub port: u16,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl HttpGitServer {
    pub fn start(root: &Path, options: HttpOptions) -> HttpGitServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let stop = Arc::new(AtomicBool::new(false));
        let root = root.to_path_buf();
        let stop2 = stop.clone();
        let thread = std::thread::spawn(move || {
            for stream in listener.incoming() {
                if stop2.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(stream) = stream else { continue };
                let root = root.clone();
                let options = options.clone();
                let stop3 = stop2.clone();
                std::thread::spawn(move || {
                    let _ = serve_cgi(stream, &root, &options, &stop3);
                });
            }
        });
        HttpGitServer {
            port,
            stop,
            thread: Some(thread),
        }
    }

    /// `http://127.0.0.1:<port>/<name>`
    pub fn url(&self, name: &str) -> String {
        format!("http://127.0.0.1:{}/{name}", self.port)
    }
}

impl Drop for HttpGitServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

pub fn base64(input: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in input.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(T[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn serve_cgi(
    stream: TcpStream,
    root: &Path,
    options: &HttpOptions,
    stop: &AtomicBool,
) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut out = stream;
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let mut parts = line.split_whitespace();
    let method = parts.next().unwrap_or("").to_string();
    let target = parts.next().unwrap_or("/").to_string();
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h)? == 0 || h.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
        }
    }
    let header = |name: &str| {
        headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    };
    let mut remote_user = None;
    if let Some((user, pass)) = &options.basic_auth {
        let expected = format!("Basic {}", base64(format!("{user}:{pass}").as_bytes()));
        if header("authorization").as_deref() != Some(expected.as_str()) {
            out.write_all(
                b"HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Basic realm=\"git\"\r\n\
                  Content-Length: 0\r\nConnection: close\r\n\r\n",
            )?;
            return Ok(());
        }
        remote_user = Some(user.clone());
    }
    let mut body = Vec::new();
    if header("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        loop {
            let mut size_line = String::new();
            reader.read_line(&mut size_line)?;
            let size_hex = size_line.trim().split(';').next().unwrap_or("0");
            let size = usize::from_str_radix(size_hex, 16).unwrap_or(0);
            let mut chunk = vec![0; size + 2];
            reader.read_exact(&mut chunk)?;
            if size == 0 {
                break;
            }
            body.extend_from_slice(&chunk[..size]);
        }
    } else if let Some(len) = header("content-length").and_then(|v| v.parse::<usize>().ok()) {
        body.resize(len, 0);
        reader.read_exact(&mut body)?;
    }
    let (path, query) = target.split_once('?').unwrap_or((&target, ""));
    let mut cmd = Command::new(git_exec_path().join("git-http-backend"));
    cmd.env("GIT_PROJECT_ROOT", root)
        .env("GIT_HTTP_EXPORT_ALL", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("REQUEST_METHOD", &method)
        .env("PATH_INFO", path)
        .env("QUERY_STRING", query)
        .env("CONTENT_LENGTH", body.len().to_string())
        .env("REMOTE_ADDR", "127.0.0.1")
        .env("SERVER_PROTOCOL", "HTTP/1.1")
        .env("GATEWAY_INTERFACE", "CGI/1.1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    for (h, var) in [
        ("content-type", "CONTENT_TYPE"),
        ("content-encoding", "HTTP_CONTENT_ENCODING"),
        ("git-protocol", "GIT_PROTOCOL"),
    ] {
        if let Some(v) = header(h) {
            cmd.env(var, v);
        }
    }
    if let Some(u) = remote_user {
        cmd.env("REMOTE_USER", u);
    }
    let mut child = cmd.spawn()?;
    let mut stdin = child.stdin.take().unwrap();
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(&body);
    });
    let mut cgi = Vec::new();
    child.stdout.take().unwrap().read_to_end(&mut cgi)?;
    let _ = writer.join();
    let _ = child.wait();
    let split = cgi
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| (i, i + 4))
        .or_else(|| {
            cgi.windows(2)
                .position(|w| w == b"\n\n")
                .map(|i| (i, i + 2))
        })
        .unwrap_or((cgi.len(), cgi.len()));
    let head = String::from_utf8_lossy(&cgi[..split.0]).to_string();
    let payload = &cgi[split.1..];
    let mut status = "200 OK".to_string();
    let mut response = Vec::new();
    for h in head.lines().filter(|l| !l.trim().is_empty()) {
        match h.split_once(':') {
            Some((k, v)) if k.eq_ignore_ascii_case("status") => status = v.trim().to_string(),
            _ => response.extend_from_slice(format!("{h}\r\n").as_bytes()),
        }
    }
    let mut msg = format!("HTTP/1.1 {status}\r\n").into_bytes();
    msg.extend_from_slice(&response);
    msg.extend_from_slice(
        format!(
            "Content-Length: {}\r\nConnection: close\r\n\r\n",
            payload.len()
        )
        .as_bytes(),
    );
    out.write_all(&msg)?;
    match options.throttle {
        Some(pause) if method == "POST" => {
            for piece in payload.chunks(4096) {
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                out.write_all(piece)?;
                out.flush()?;
                std::thread::sleep(pause);
            }
        }
        _ => out.write_all(payload)?,
    }
    let _ = out.shutdown(Shutdown::Write);
    Ok(())
}

/// Accepts TCP connections and never sends a byte. Closes them on drop.
pub struct SilentServer {
    pub port: u16,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl SilentServer {
    pub fn start() -> SilentServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut held = Vec::new();
            for stream in listener.incoming() {
                if stop2.load(Ordering::SeqCst) {
                    break;
                }
                if let Ok(s) = stream {
                    held.push(s);
                }
            }
        });
        SilentServer {
            port,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for SilentServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A port on loopback where nothing listens (bound, then released).
pub fn closed_port() -> u16 {
    free_port()
}

/// Reads a file of a checkout as a string.
pub fn read(dir: &Path, rel: &str) -> String {
    std::fs::read_to_string(dir.join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// Returns `<tmp>/dest`, a path that does not exist yet.
pub fn dest_in(tmp: &Path) -> PathBuf {
    tmp.join("dest")
}

/// Serializes tests against libgit2's process-wide socket timeouts: while a
/// clone runs, they are lowered to the shortest timeout among running clones.
/// A test that clones with a budget of a few seconds (to provoke a timeout)
/// takes [`net_exclusive`] so that it cannot cut other clones short; every
/// other test that clones over the network takes [`net_shared`].
static NET: RwLock<()> = RwLock::new(());

/// Held by a test while it clones; see [`net_shared`].
///
/// A wrapper rather than the bare std guard, because async tests hold it across
/// `.await`, which is safe here: every test runs on its own thread (and its own
/// runtime), and a task holding the shared side never waits for the exclusive
/// side, so an awaiting holder cannot block the thread that would release it.
/// Take it once per test: std's lock may block a second read while a writer
/// waits.
pub struct NetShared(RwLockReadGuard<'static, ()>);

/// Held by a test with a deliberately short clone timeout; see [`net_exclusive`].
pub struct NetExclusive(RwLockWriteGuard<'static, ()>);

/// Lock for an ordinary network clone (many may run at once).
pub fn net_shared() -> NetShared {
    NetShared(NET.read().unwrap_or_else(|e| e.into_inner()))
}

/// Lock for a clone with a deliberately short timeout (runs alone).
pub fn net_exclusive() -> NetExclusive {
    NetExclusive(NET.write().unwrap_or_else(|e| e.into_inner()))
}

register_test!(sync base64_helper);
fn base64_helper() {
    assert_eq!(base64(b"user:pass"), "dXNlcjpwYXNz");
    assert_eq!(base64(b"a"), "YQ==");
    assert_eq!(base64(b"ab"), "YWI=");
}
