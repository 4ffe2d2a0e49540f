//! Running a child process safely: its own process group, a timeout that kills the
//! whole group, output read while it runs, and nothing left behind.
//!
//! Used for pack tests and (later) virtualenv / npm builds. What [`run`] guarantees:
//!
//! * **Process group.** The child is the leader of a new process group
//!   (`process_group(0)`), so everything it starts (`sleep 1000 &`) can be signalled at
//!   once. On timeout or cancel the group gets `SIGTERM`, then `SIGKILL` after
//!   [`KILL_GRACE`]. When the child exits by itself, whatever it left running in its
//!   group is cleaned up the same way (TERM, grace, KILL), because a leftover
//!   background process would otherwise live on (and keep our pipes open). If the
//!   future returned by [`run`] is dropped early, the group is sent `SIGKILL`.
//!   Processes that leave the group on purpose (`setsid`, daemons) are out of reach;
//!   containing those needs cgroups.
//! * **Output.** stdout and stderr are read concurrently while the child runs, so a
//!   child printing megabytes never blocks on a full pipe. Each line (lossy UTF-8,
//!   trailing `\r` removed, lines longer than [`MAX_LINE_BYTES`] split) is passed to
//!   `on_line`; the last [`TAIL_BYTES`] of each stream are kept for error messages.
//!   stdin is `/dev/null`.
//! * **Errors.** A timeout is not an error: [`Finished::timed_out`] is set so the caller
//!   can report it. Failing to start the program is [`ProcessError::Spawn`]; a
//!   triggered cancel is [`ProcessError::Cancelled`] (after the group was killed).
//! * **Environment.** [`CommandSpec::env_clear`] starts from an empty environment plus
//!   `PATH` (the server's own `PATH`, which is not secret and is needed to find
//!   `python3`/`npm` the way the server does; `/usr/local/bin:/usr/bin:/bin` if unset),
//!   `HOME` and `TMPDIR` (a private run directory, below) and `LANG=C.UTF-8`;
//!   [`CommandSpec::env`] is applied on top and may override those. The environment
//!   is never logged or printed: [`CommandSpec`]'s `Debug` shows variable names only.
//! * **Private run directory.** Every run gets a fresh directory under the system
//!   temporary directory (mode 0700, owned by the user the child runs as), removed
//!   when the run ends; it is the default `HOME` and `TMPDIR`.
//! * **Confinement.** Once [`crate::sandbox::install`] ran, children run as the
//!   sandbox user (no supplementary groups) and, with Landlock, may read only the
//!   system directories and [`CommandSpec::access`]'s `read` paths and write only
//!   the run directory and its `write` paths. The Landlock ruleset is built before
//!   the fork; the child only enforces it.
//!
//! A note on PID reuse: the group is signalled by its id (the child's PID). After the
//! child is reaped that id stays reserved while any member of the group is alive; once
//! the group is empty `killpg` fails with `ESRCH` and no further signals are sent.

use std::ffi::OsString;
use std::fmt;
use std::future::Future;
use std::io;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::process::Command;
use tokio::time::Instant;

use crate::sandbox::{self, Access, Sandbox, SandboxError};

/// How much of the end of each stream [`Finished`] keeps.
pub const TAIL_BYTES: usize = 64 * 1024;
/// Longer lines are passed to `on_line` in pieces of at most this many bytes.
pub const MAX_LINE_BYTES: usize = 64 * 1024;
/// Time between `SIGTERM` and `SIGKILL` of the process group.
pub const KILL_GRACE: Duration = Duration::from_secs(2);
/// After `SIGKILL`, how long to wait for the pipes to close (a process outside the
/// group may still hold them) before giving up on the rest of the output.
const PIPE_GRACE: Duration = Duration::from_secs(1);
/// How often the group is checked for remaining members while it is being stopped.
const GROUP_POLL: Duration = Duration::from_millis(50);
/// How often [`poll_cancelled`] checks its condition.
pub const CANCEL_POLL: Duration = Duration::from_millis(100);
const DEFAULT_PATH: &str = "/usr/local/bin:/usr/bin:/bin";
const READ_CHUNK: usize = 16 * 1024;

/// What to run.
#[derive(Clone)]
pub struct CommandSpec {
    /// Looked up in `PATH` (the child's `PATH` when `env` sets one) unless it contains
    /// a `/`.
    pub program: OsString,
    pub args: Vec<OsString>,
    pub cwd: PathBuf,
    /// Applied after `env_clear`, in order; later entries win.
    pub env: Vec<(OsString, OsString)>,
    /// Start from an empty environment plus `PATH`, `HOME` and `LANG` (see the module
    /// documentation) instead of inheriting the server's environment.
    pub env_clear: bool,
    pub timeout: Duration,
    /// What the child may use beyond the system directories and its run directory,
    /// when the sandbox confines children.
    pub access: Access,
}

impl CommandSpec {
    /// A spec with no arguments, an empty environment (`env_clear: true`) and `timeout`.
    pub fn new(program: impl Into<OsString>, cwd: impl Into<PathBuf>, timeout: Duration) -> Self {
        Self {
            program: program.into(),
            args: Vec::new(),
            cwd: cwd.into(),
            env: Vec::new(),
            env_clear: true,
            timeout,
            access: Access::default(),
        }
    }

    /// Lets the child read (and execute) beneath `path`.
    pub fn read_path(mut self, path: impl Into<PathBuf>) -> Self {
        self.access.read.push(path.into());
        self
    }

    /// Lets the child read and write beneath `path`.
    pub fn write_path(mut self, path: impl Into<PathBuf>) -> Self {
        self.access.write.push(path.into());
        self
    }

    pub fn arg(mut self, arg: impl Into<OsString>) -> Self {
        self.args.push(arg.into());
        self
    }

    pub fn env(mut self, key: impl Into<OsString>, value: impl Into<OsString>) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    /// The command line, for messages (`program arg arg`; no environment).
    pub fn display_command(&self) -> String {
        std::iter::once(&self.program)
            .chain(&self.args)
            .map(|a| a.to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// Shows variable names only: values may be secrets.
impl fmt::Debug for CommandSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let env_names: Vec<_> = self.env.iter().map(|(k, _)| k).collect();
        f.debug_struct("CommandSpec")
            .field("program", &self.program)
            .field("args", &self.args)
            .field("cwd", &self.cwd)
            .field("env (names only)", &env_names)
            .field("env_clear", &self.env_clear)
            .field("timeout", &self.timeout)
            .field("access", &self.access)
            .finish()
    }
}

/// Which output stream a line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Stream {
    Stdout,
    Stderr,
}

impl Stream {
    pub fn as_str(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }
}

/// A child that ran to the end (or was killed on timeout).
#[derive(Debug, Clone)]
pub struct Finished {
    pub status: ExitStatus,
    /// The last [`TAIL_BYTES`] of stdout (lossy UTF-8).
    pub stdout_tail: String,
    /// The last [`TAIL_BYTES`] of stderr (lossy UTF-8).
    pub stderr_tail: String,
    pub duration: Duration,
    /// The timeout expired and the process group was killed.
    pub timed_out: bool,
}

impl Finished {
    /// The exit code, `None` when the child was killed by a signal.
    pub fn code(&self) -> Option<i32> {
        self.status.code()
    }

    /// The signal that killed the child, if any.
    pub fn signal(&self) -> Option<i32> {
        std::os::unix::process::ExitStatusExt::signal(&self.status)
    }

    /// Exited with code 0 within the timeout.
    pub fn success(&self) -> bool {
        !self.timed_out && self.status.success()
    }

    /// `exit code 3`, `killed by signal 9`, ... for messages.
    pub fn describe_status(&self) -> String {
        match (self.code(), self.signal()) {
            (Some(code), _) => format!("exit code {code}"),
            (None, Some(sig)) => format!("killed by signal {sig}"),
            (None, None) => self.status.to_string(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    #[error("could not start `{program}`: {source}")]
    Spawn {
        program: String,
        #[source]
        source: io::Error,
    },
    #[error("waiting for `{program}` failed: {source}")]
    Wait {
        program: String,
        #[source]
        source: io::Error,
    },
    #[error("`{program}` was cancelled after {:.1}s", after.as_secs_f64())]
    Cancelled { program: String, after: Duration },
    #[error("cannot prepare the run directory for `{program}`: {source}")]
    RunDir {
        program: String,
        #[source]
        source: io::Error,
    },
    #[error("cannot confine `{program}`: {source}")]
    Sandbox {
        program: String,
        #[source]
        source: SandboxError,
    },
}

/// Resolves once `is_cancelled()` returns true, checking every [`CANCEL_POLL`].
///
/// For example `poll_cancelled(|| reporter.is_cancelled())` as the `cancel` argument of
/// [`run`]; `std::future::pending()` never cancels.
pub async fn poll_cancelled(is_cancelled: impl Fn() -> bool) {
    while !is_cancelled() {
        tokio::time::sleep(CANCEL_POLL).await;
    }
}

/// Runs `spec` to the end; see the module documentation.
///
/// `on_line` gets every output line as it arrives. `cancel` is any future that
/// resolves when the run should stop (a `CancellationToken::cancelled()`, or
/// [`poll_cancelled`]); the group is then stopped and [`ProcessError::Cancelled`]
/// returned.
pub async fn run(
    spec: &CommandSpec,
    on_line: impl FnMut(Stream, &str) + Send,
    cancel: impl Future<Output = ()> + Send,
) -> Result<Finished, ProcessError> {
    run_in(spec, sandbox::current().as_deref(), on_line, cancel).await
}

/// [`run`] under `sandbox` (`None`: unconfined).
async fn run_in(
    spec: &CommandSpec,
    sandbox: Option<&Sandbox>,
    mut on_line: impl FnMut(Stream, &str) + Send,
    cancel: impl Future<Output = ()> + Send,
) -> Result<Finished, ProcessError> {
    let program = spec.program.to_string_lossy().into_owned();
    // Pack code may have read a secret: what it prints never carries one further.
    let mut on_line = move |stream: Stream, line: &str| on_line(stream, &sandbox::scrub(line));
    if !spec.cwd.is_dir() {
        return Err(ProcessError::Spawn {
            program,
            source: io::Error::new(
                io::ErrorKind::NotFound,
                format!("working directory {} does not exist", spec.cwd.display()),
            ),
        });
    }

    let run_dir = RunDir::create(sandbox).map_err(|source| ProcessError::RunDir {
        program: program.clone(),
        source,
    })?;
    let mut cmd = Command::new(&spec.program);
    cmd.args(&spec.args)
        .current_dir(&spec.cwd)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .process_group(0);
    if spec.env_clear {
        cmd.env_clear();
        cmd.env(
            "PATH",
            std::env::var_os("PATH").unwrap_or_else(|| DEFAULT_PATH.into()),
        );
        cmd.env("HOME", &run_dir.path);
        cmd.env("TMPDIR", &run_dir.path);
        cmd.env("LANG", "C.UTF-8");
    }
    for (key, value) in &spec.env {
        cmd.env(key, value);
    }
    // Kept open until the child has been spawned: its copy is what it enforces.
    let mut ruleset = None;
    if let Some(sandbox) = sandbox {
        if let Some(user) = &sandbox.run_as {
            // As root, std also drops the supplementary groups when uid is set.
            cmd.uid(user.uid).gid(user.gid);
        }
        let mut access = spec.access.clone();
        access.write.push(run_dir.path.clone());
        ruleset = sandbox
            .ruleset(&access)
            .map_err(|source| ProcessError::Sandbox {
                program: program.clone(),
                source,
            })?;
        if let Some(fd) = &ruleset {
            let raw = std::os::fd::AsRawFd::as_raw_fd(fd);
            let hook = move || {
                // SAFETY: runs between fork and exec with `raw`, a ruleset that stays
                // open until the spawn returned.
                unsafe { sandbox::enforce_in_child(raw) }
            };
            // SAFETY: the hook only makes two system calls on an integer; it neither
            // allocates nor takes locks, as required between fork and exec.
            unsafe {
                cmd.pre_exec(hook);
            }
        }
    }

    let started = Instant::now();
    let spawned = cmd.spawn();
    drop(ruleset);
    let mut child = spawned.map_err(|source| ProcessError::Spawn {
        program: program.clone(),
        source: match source.kind() {
            io::ErrorKind::NotFound => io::Error::new(
                io::ErrorKind::NotFound,
                "program not found (not an existing file, nor found in PATH)",
            ),
            io::ErrorKind::PermissionDenied => match sandbox {
                Some(sandbox) => io::Error::new(
                    io::ErrorKind::PermissionDenied,
                    format!(
                        "{source} (pack code runs as uid {}{}: the program and its working directory must be accessible to it)",
                        sandbox.child_uid(),
                        if sandbox.landlock_abi.is_some() { " under Landlock" } else { "" }
                    ),
                ),
                None => source,
            },
            _ => source,
        },
    })?;
    // `id()` is `Some` until the child has been waited for.
    let pgid = child
        .id()
        .and_then(|id| i32::try_from(id).ok())
        .unwrap_or(0);
    let mut guard = GroupGuard::new(pgid);
    let mut stdout = child.stdout.take();
    let mut stderr = child.stderr.take();
    let mut out = Collector::new(Stream::Stdout);
    let mut err = Collector::new(Stream::Stderr);
    let mut out_buf = vec![0u8; READ_CHUNK];
    let mut err_buf = vec![0u8; READ_CHUNK];

    let deadline = started
        .checked_add(spec.timeout)
        .unwrap_or_else(|| started + Duration::from_secs(100 * 365 * 24 * 3600));
    let mut status: Option<ExitStatus> = None;
    let mut timed_out = false;
    let mut cancelled = false;
    // Stopping the group: when SIGTERM went out, when SIGKILL went out, and whether the
    // group is known to be empty.
    let mut term_sent: Option<Instant> = None;
    let mut kill_sent: Option<Instant> = None;
    let mut group_gone = false;
    let mut group_gone_at: Option<Instant> = None;
    let mut next_poll = started;
    let mut cancel = std::pin::pin!(cancel);

    loop {
        let stopping = term_sent.is_some() && kill_sent.is_none() && !group_gone;
        // When the group is gone (or was killed), the pipes should close at once; if
        // something outside the group holds them, stop reading after PIPE_GRACE.
        let group_done_at = if group_gone { group_gone_at } else { kill_sent };
        let pipes_open = stdout.is_some() || stderr.is_some();
        tokio::select! {
            read = read_some(&mut stdout, &mut out_buf), if stdout.is_some() => {
                match read {
                    Some(n) => out.push(&out_buf[..n], &mut on_line),
                    None => {
                        out.finish(&mut on_line);
                        stdout = None;
                    }
                }
            }
            read = read_some(&mut stderr, &mut err_buf), if stderr.is_some() => {
                match read {
                    Some(n) => err.push(&err_buf[..n], &mut on_line),
                    None => {
                        err.finish(&mut on_line);
                        stderr = None;
                    }
                }
            }
            waited = child.wait(), if status.is_none() => {
                match waited {
                    Ok(s) => status = Some(s),
                    Err(source) => {
                        // The guard kills the group on return.
                        return Err(ProcessError::Wait { program, source });
                    }
                }
                if term_sent.is_none() {
                    // Clean up whatever the child left running in its group.
                    if signal_group(pgid, libc::SIGTERM) {
                        term_sent = Some(Instant::now());
                        next_poll = Instant::now() + GROUP_POLL;
                    } else {
                        group_gone = true;
                    }
                }
            }
            _ = tokio::time::sleep_until(deadline), if status.is_none() && term_sent.is_none() => {
                timed_out = true;
                signal_group(pgid, libc::SIGTERM);
                term_sent = Some(Instant::now());
                next_poll = Instant::now() + GROUP_POLL;
            }
            _ = &mut cancel, if !cancelled && status.is_none() => {
                cancelled = true;
                if term_sent.is_none() {
                    signal_group(pgid, libc::SIGTERM);
                    term_sent = Some(Instant::now());
                    next_poll = Instant::now() + GROUP_POLL;
                }
            }
            _ = tokio::time::sleep_until(next_poll), if stopping => {
                let now = Instant::now();
                next_poll = now + GROUP_POLL;
                if status.is_some() && !signal_group(pgid, 0) {
                    group_gone = true;
                } else if term_sent.is_some_and(|t| now >= t + KILL_GRACE) {
                    signal_group(pgid, libc::SIGKILL);
                    kill_sent = Some(now);
                }
            }
            _ = tokio::time::sleep_until(group_done_at.unwrap_or(started) + PIPE_GRACE), if pipes_open && status.is_some() && group_done_at.is_some() => {
                // Something outside the group holds the pipes open: stop reading.
                if stdout.take().is_some() {
                    out.finish(&mut on_line);
                }
                if stderr.take().is_some() {
                    err.finish(&mut on_line);
                }
            }
        }
        if group_gone && group_gone_at.is_none() {
            group_gone_at = Some(Instant::now());
        }
        let group_done = group_gone || kill_sent.is_some();
        if status.is_some() && stdout.is_none() && stderr.is_none() && group_done {
            break;
        }
    }
    guard.armed = false;

    let duration = started.elapsed();
    if cancelled && !timed_out {
        return Err(ProcessError::Cancelled {
            program,
            after: duration,
        });
    }
    Ok(Finished {
        status: status.expect("loop ends only after the child was waited for"),
        stdout_tail: sandbox::scrub(&out.tail()).into_owned(),
        stderr_tail: sandbox::scrub(&err.tail()).into_owned(),
        duration,
        timed_out,
    })
}

/// A private, empty directory for one run (`HOME`, `TMPDIR`), owned by the user the
/// child runs as; removed with everything in it when dropped.
struct RunDir {
    path: PathBuf,
}

impl RunDir {
    fn create(sandbox: Option<&Sandbox>) -> io::Result<Self> {
        use std::os::unix::fs::DirBuilderExt;
        use std::sync::atomic::{AtomicU64, Ordering};
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let base = std::env::temp_dir();
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let mut last_err = None;
        for _ in 0..16 {
            let n = COUNTER.fetch_add(1, Ordering::Relaxed);
            let path = base.join(format!("attune-run-{}-{nanos:x}-{n}", std::process::id()));
            match std::fs::DirBuilder::new().mode(0o700).create(&path) {
                Ok(()) => {
                    let dir = Self { path };
                    if let Some(user) = sandbox.and_then(|s| s.run_as.as_ref()) {
                        std::os::unix::fs::chown(&dir.path, Some(user.uid), Some(user.gid))?;
                    }
                    return Ok(dir);
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => last_err = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last_err.unwrap_or_else(|| io::Error::other("no free name")))
    }
}

impl Drop for RunDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// Reads one chunk; `None` at end of file or on a read error (treated as the end).
async fn read_some<R: tokio::io::AsyncRead + Unpin>(
    reader: &mut Option<R>,
    buf: &mut [u8],
) -> Option<usize> {
    let reader = reader.as_mut()?;
    match reader.read(buf).await {
        Ok(0) | Err(_) => None,
        Ok(n) => Some(n),
    }
}

/// Sends `sig` to the process group `pgid` (0 only checks it); true while the group
/// exists.
fn signal_group(pgid: i32, sig: libc::c_int) -> bool {
    if pgid <= 0 {
        return false;
    }
    // SAFETY: `killpg` takes plain integers and has no memory-safety preconditions.
    let rc = unsafe { libc::killpg(pgid, sig) };
    rc == 0 || io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH)
}

/// Kills the process group if [`run`]'s future is dropped before it finished.
struct GroupGuard {
    pgid: i32,
    armed: bool,
    /// The group's record (see [`record_groups_in`]), removed with the guard.
    record: Option<std::path::PathBuf>,
}

static GROUP_RECORDS: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();

/// From now on, every process group [`run`] starts is recorded while it runs as an
/// empty file `<dir>/<owner>.<pgid>.<leader start time>`: a server killed with
/// `kill -9` cannot kill its groups, which would go on writing into work directories
/// the next start removes; that start kills them first
/// ([`crate::journal::kill_orphaned_groups`]). No fsync: a power cut kills them anyway.
pub fn record_groups_in(dir: std::path::PathBuf) {
    let _ = std::fs::create_dir_all(&dir);
    let _ = GROUP_RECORDS.set(dir);
}

fn record_group(pgid: i32) -> Option<std::path::PathBuf> {
    let dir = GROUP_RECORDS.get()?;
    let start = crate::journal::process_start(u32::try_from(pgid).ok()?)?;
    let path = dir.join(format!("{}.{pgid}.{start}", crate::journal::owner_marker()));
    std::fs::File::create(&path).ok().map(|_| path)
}

/// Process groups [`run`] started and has not finished with, for [`kill_all_groups`].
static LIVE_GROUPS: std::sync::Mutex<std::collections::BTreeSet<i32>> =
    std::sync::Mutex::new(std::collections::BTreeSet::new());

/// Kills every process group [`run`] started that it has not finished with: a server
/// exiting without unwinding (a forced shutdown) must not leave pack code running.
pub fn kill_all_groups() {
    let groups = LIVE_GROUPS.lock().unwrap_or_else(|e| e.into_inner());
    for pgid in groups.iter() {
        signal_group(*pgid, libc::SIGKILL);
    }
}

impl GroupGuard {
    fn new(pgid: i32) -> Self {
        if pgid > 0 {
            LIVE_GROUPS
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(pgid);
        }
        GroupGuard {
            pgid,
            armed: pgid > 0,
            record: (pgid > 0).then(|| record_group(pgid)).flatten(),
        }
    }
}

impl Drop for GroupGuard {
    fn drop(&mut self) {
        if self.armed {
            signal_group(self.pgid, libc::SIGKILL);
        }
        LIVE_GROUPS
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.pgid);
        if let Some(record) = &self.record {
            let _ = std::fs::remove_file(record);
        }
    }
}

/// Splits one stream into lines and keeps its tail.
struct Collector {
    stream: Stream,
    partial: Vec<u8>,
    tail: Vec<u8>,
}

impl Collector {
    fn new(stream: Stream) -> Self {
        Self {
            stream,
            partial: Vec::new(),
            tail: Vec::new(),
        }
    }

    fn push(&mut self, data: &[u8], on_line: &mut impl FnMut(Stream, &str)) {
        self.tail.extend_from_slice(data);
        if self.tail.len() > 2 * TAIL_BYTES {
            let cut = self.tail.len() - TAIL_BYTES;
            self.tail.drain(..cut);
        }

        let mut rest = data;
        while let Some(pos) = rest.iter().position(|&b| b == b'\n') {
            if self.partial.is_empty() {
                emit(self.stream, &rest[..pos], on_line);
            } else {
                self.partial.extend_from_slice(&rest[..pos]);
                let line = std::mem::take(&mut self.partial);
                emit(self.stream, &line, on_line);
            }
            rest = &rest[pos + 1..];
        }
        self.partial.extend_from_slice(rest);
        // Keep the unfinished line shorter than the limit: emit full pieces now.
        if self.partial.len() >= MAX_LINE_BYTES {
            let mut start = 0;
            while self.partial.len() - start >= MAX_LINE_BYTES {
                let end = char_floor(&self.partial, start + MAX_LINE_BYTES, start);
                on_line(
                    self.stream,
                    &String::from_utf8_lossy(&self.partial[start..end]),
                );
                start = end;
            }
            self.partial.drain(..start);
        }
    }

    fn finish(&mut self, on_line: &mut impl FnMut(Stream, &str)) {
        if !self.partial.is_empty() {
            let line = std::mem::take(&mut self.partial);
            emit(self.stream, &line, on_line);
        }
    }

    fn tail(&self) -> String {
        let start = self.tail.len().saturating_sub(TAIL_BYTES);
        let mut bytes = &self.tail[start..];
        // Do not start in the middle of a UTF-8 sequence.
        while let Some((&b, rest)) = bytes.split_first() {
            if b & 0xC0 != 0x80 {
                break;
            }
            bytes = rest;
        }
        String::from_utf8_lossy(bytes).into_owned()
    }
}

/// Emits one complete line, in pieces when it is too long.
fn emit(stream: Stream, line: &[u8], on_line: &mut impl FnMut(Stream, &str)) {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let mut start = 0;
    while line.len() - start > MAX_LINE_BYTES {
        let end = char_floor(line, start + MAX_LINE_BYTES, start);
        on_line(stream, &String::from_utf8_lossy(&line[start..end]));
        start = end;
    }
    on_line(stream, &String::from_utf8_lossy(&line[start..]));
}

/// Moves `end` back (at most 3 bytes, never to `min`) so it does not split a UTF-8
/// sequence.
fn char_floor(bytes: &[u8], end: usize, min: usize) -> usize {
    let mut cut = end;
    while cut > min + 1 && end - cut < 3 && bytes.get(cut).is_some_and(|b| b & 0xC0 == 0x80) {
        cut -= 1;
    }
    if bytes.get(cut).is_some_and(|b| b & 0xC0 == 0x80) {
        end
    } else {
        cut
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn sh(script: &str, timeout: Duration) -> CommandSpec {
        CommandSpec::new("/bin/sh", std::env::temp_dir(), timeout)
            .arg("-c")
            .arg(script)
    }

    async fn run_collect(
        spec: &CommandSpec,
    ) -> (Result<Finished, ProcessError>, Vec<(Stream, String)>) {
        let mut lines = Vec::new();
        let result = run(
            spec,
            |s, l| lines.push((s, l.to_string())),
            std::future::pending(),
        )
        .await;
        (result, lines)
    }

    fn pid_alive(pid: i32) -> bool {
        // A zombie waiting for its (re)parent to reap it counts as gone.
        match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            Ok(stat) => {
                let state = stat
                    .rsplit(')')
                    .next()
                    .and_then(|s| s.split_whitespace().next());
                state != Some("Z") && state != Some("X")
            }
            Err(_) => false,
        }
    }

    async fn wait_gone(pid: i32) -> bool {
        for _ in 0..50 {
            if !pid_alive(pid) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        false
    }

    #[tokio::test]
    async fn lines_from_both_streams_and_exit_code() {
        let spec = sh(
            "echo out1; echo err1 >&2; printf 'no newline'; exit 3",
            Duration::from_secs(10),
        );
        let (result, lines) = run_collect(&spec).await;
        let finished = result.unwrap();
        assert_eq!(finished.code(), Some(3));
        assert!(!finished.timed_out);
        assert!(!finished.success());
        assert!(lines.contains(&(Stream::Stdout, "out1".into())));
        assert!(lines.contains(&(Stream::Stderr, "err1".into())));
        assert!(lines.contains(&(Stream::Stdout, "no newline".into())));
        assert_eq!(finished.stdout_tail, "out1\nno newline");
        assert_eq!(finished.stderr_tail, "err1\n");
    }

    #[tokio::test]
    async fn spawn_failure_is_a_clear_error() {
        let spec = CommandSpec::new(
            "/definitely/not/here",
            std::env::temp_dir(),
            Duration::from_secs(5),
        );
        let (result, _) = run_collect(&spec).await;
        let err = result.unwrap_err();
        assert!(matches!(err, ProcessError::Spawn { .. }), "{err:?}");
        let message = err.to_string();
        assert!(message.contains("/definitely/not/here"), "{message}");
        assert!(message.contains("not found"), "{message}");

        let spec = CommandSpec::new("true", "/definitely/not/a/dir", Duration::from_secs(5));
        let message = run_collect(&spec).await.0.unwrap_err().to_string();
        assert!(message.contains("working directory"), "{message}");
    }

    #[tokio::test]
    async fn ten_megabytes_do_not_deadlock() {
        // 10 MiB on stdout and 1 MiB on stderr, with a single 1 MiB line in the middle.
        let script = "head -c 5242880 /dev/zero | tr '\\0' 'a' | fold -w 100; \
                      head -c 1048576 /dev/zero | tr '\\0' 'b'; echo; \
                      head -c 4194304 /dev/zero | tr '\\0' 'c' | fold -w 100; \
                      head -c 1048576 /dev/zero | tr '\\0' 'e' | fold -w 100 >&2";
        let spec = sh(script, Duration::from_secs(60));
        let mut out_bytes = 0usize;
        let mut longest = 0usize;
        let mut err_lines = 0usize;
        let finished = run(
            &spec,
            |s, l| match s {
                Stream::Stdout => {
                    out_bytes += l.len();
                    longest = longest.max(l.len());
                }
                Stream::Stderr => err_lines += 1,
            },
            std::future::pending(),
        )
        .await
        .unwrap();
        assert!(finished.success());
        assert!(!finished.timed_out);
        assert_eq!(out_bytes, 10 * 1024 * 1024);
        assert_eq!(longest, MAX_LINE_BYTES);
        assert_eq!(err_lines, 1024 * 1024 / 100 + 1);
        assert!(finished.stdout_tail.len() <= TAIL_BYTES);
        assert!(finished.stdout_tail.ends_with("cccc"));
    }

    #[tokio::test]
    async fn timeout_kills_the_whole_group() {
        let spec = sh(
            "sleep 1000 & echo $!; sleep 1000",
            Duration::from_millis(500),
        );
        let (result, lines) = run_collect(&spec).await;
        let finished = result.unwrap();
        assert!(finished.timed_out);
        assert!(finished.duration < Duration::from_secs(10));
        assert!(!finished.success());
        let pid: i32 = lines[0].1.trim().parse().unwrap();
        assert!(
            wait_gone(pid).await,
            "grandchild {pid} survived the timeout"
        );
    }

    #[tokio::test]
    async fn sigterm_ignoring_child_gets_sigkill() {
        let spec = sh(
            "trap '' TERM; echo started; while :; do sleep 0.1; done",
            Duration::from_millis(300),
        );
        let finished = run_collect(&spec).await.0.unwrap();
        assert!(finished.timed_out);
        assert_eq!(finished.signal(), Some(libc::SIGKILL));
        assert!(finished.duration >= KILL_GRACE);
    }

    #[tokio::test]
    async fn leftovers_are_killed_when_the_child_exits() {
        // The background process holds neither pipe, so only the group cleanup ends it.
        let spec = sh(
            "sleep 1000 >/dev/null 2>&1 & echo $!",
            Duration::from_secs(30),
        );
        let (result, lines) = run_collect(&spec).await;
        assert!(result.unwrap().success());
        let pid: i32 = lines[0].1.trim().parse().unwrap();
        assert!(wait_gone(pid).await, "background process {pid} survived");

        // Holding stdout open must not make `run` wait for it.
        let spec = sh("sleep 1000 & echo $!", Duration::from_secs(30));
        let started = std::time::Instant::now();
        let (result, lines) = run_collect(&spec).await;
        assert!(result.unwrap().success());
        assert!(started.elapsed() < Duration::from_secs(10));
        let pid: i32 = lines[0].1.trim().parse().unwrap();
        assert!(wait_gone(pid).await, "background process {pid} survived");
    }

    #[tokio::test]
    async fn dropping_the_future_kills_the_group() {
        let spec = sh("sleep 1000 & echo $!; sleep 1000", Duration::from_secs(600));
        let (tx, rx) = tokio::sync::oneshot::channel::<i32>();
        let mut tx = Some(tx);
        let task = tokio::spawn(async move {
            let _ = run(
                &spec,
                move |_, l| {
                    if let (Some(tx), Ok(pid)) = (tx.take(), l.trim().parse()) {
                        let _ = tx.send(pid);
                    }
                },
                std::future::pending(),
            )
            .await;
        });
        let pid = rx.await.unwrap();
        assert!(pid_alive(pid));
        task.abort();
        let _ = task.await;
        assert!(wait_gone(pid).await, "grandchild {pid} survived the drop");
    }

    #[tokio::test]
    async fn cancel_stops_the_group() {
        let spec = sh("sleep 1000 & echo $!; sleep 1000", Duration::from_secs(600));
        let flag = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut pid = 0;
        let setter = flag.clone();
        let result = run(
            &spec,
            |_, l| {
                pid = l.trim().parse().unwrap_or(0);
                setter.store(true, std::sync::atomic::Ordering::SeqCst);
            },
            poll_cancelled(|| flag.load(std::sync::atomic::Ordering::SeqCst)),
        )
        .await;
        assert!(
            matches!(result, Err(ProcessError::Cancelled { .. })),
            "{result:?}"
        );
        assert!(wait_gone(pid).await);
    }

    #[tokio::test]
    async fn env_is_cleared_and_overridable() {
        let spec = sh("env", Duration::from_secs(10))
            .env("FOO", "bar")
            .env("LANG", "C");
        let (result, lines) = run_collect(&spec).await;
        assert!(result.unwrap().success());
        let vars: Vec<&str> = lines.iter().map(|(_, l)| l.as_str()).collect();
        assert!(vars.contains(&"FOO=bar"));
        assert!(vars.contains(&"LANG=C"));
        assert!(vars.iter().any(|v| v.starts_with("PATH=")));
        assert!(vars.iter().any(|v| v.starts_with("HOME=")));
        assert!(!vars.iter().any(|v| v.starts_with("CARGO")), "{vars:?}");
        let debug = format!("{spec:?}");
        assert!(debug.contains("FOO") && !debug.contains("bar"), "{debug}");
    }

    async fn run_in_collect(
        spec: &CommandSpec,
        sandbox: &Sandbox,
    ) -> (Result<Finished, ProcessError>, Vec<String>) {
        let mut lines = Vec::new();
        let result = run_in(
            spec,
            Some(sandbox),
            |_, l| lines.push(l.to_string()),
            std::future::pending(),
        )
        .await;
        (result, lines)
    }

    fn test_sandbox(run_as: Option<sandbox::RunAs>, landlock_abi: Option<u32>) -> Sandbox {
        Sandbox {
            run_as,
            landlock_abi,
            landlock_note: None,
            extra_read_paths: Vec::new(),
            server_uid: 0,
            server_gid: 0,
        }
    }

    #[tokio::test]
    async fn run_dir_is_private_and_removed() {
        let spec = sh(
            "echo \"$HOME\"; echo \"$TMPDIR\"; stat -c %a \"$HOME\"; touch \"$HOME/x\"",
            Duration::from_secs(10),
        );
        let (result, lines) = run_collect(&spec).await;
        assert!(result.unwrap().success(), "{lines:?}");
        let home = &lines[0].1;
        assert!(home.contains("attune-run-"), "{home}");
        assert_eq!(&lines[1].1, home, "TMPDIR is HOME");
        assert_eq!(lines[2].1, "700");
        assert!(!Path::new(home).exists(), "{home} was left behind");
    }

    #[tokio::test]
    async fn landlock_allows_only_the_named_paths() {
        let Ok(abi) = sandbox::landlock_abi() else {
            eprintln!("notice: no Landlock on this kernel; confinement test skipped");
            return;
        };
        let readable = tempfile::tempdir().unwrap();
        let hidden = tempfile::tempdir().unwrap();
        let writable = tempfile::tempdir().unwrap();
        std::fs::write(readable.path().join("f"), "r").unwrap();
        std::fs::write(hidden.path().join("f"), "h").unwrap();
        let script = format!(
            "try() {{ if sh -c \"$2\" >/dev/null 2>&1; then echo \"$1 yes\"; else echo \"$1 no\"; fi; }}\n\
             try read-named 'cat {r}/f'\n\
             try read-other 'cat {h}/f'\n\
             try list-other 'ls {h}'\n\
             try write-named 'touch {w}/new'\n\
             try write-readonly 'touch {r}/new'\n\
             try write-home 'touch \"$HOME/new\"'\n\
             try write-tmp 'touch {tmp}/attune-landlock-probe-{pid}'\n",
            r = readable.path().display(),
            h = hidden.path().display(),
            w = writable.path().display(),
            tmp = std::env::temp_dir().display(),
            pid = std::process::id(),
        );
        let spec = sh(&script, Duration::from_secs(10))
            .read_path(readable.path())
            .write_path(writable.path());
        let (result, lines) = run_in_collect(&spec, &test_sandbox(None, Some(abi))).await;
        assert!(result.unwrap().success(), "{lines:?}");
        assert_eq!(
            lines,
            [
                "read-named yes",
                "read-other no",
                "list-other no",
                "write-named yes",
                "write-readonly no",
                "write-home yes",
                "write-tmp no",
            ]
        );
        assert!(writable.path().join("new").exists());
        assert!(!readable.path().join("new").exists());
    }

    #[tokio::test]
    async fn children_run_as_the_sandbox_user_without_groups() {
        // SAFETY: getuid cannot fail.
        if unsafe { libc::getuid() } != 0 {
            eprintln!("notice: not root; the user switch cannot be tested");
            return;
        }
        let nobody = sandbox::RunAs {
            name: "nobody".into(),
            uid: 65534,
            gid: 65534,
        };
        let spec = CommandSpec::new("/bin/sh", "/", Duration::from_secs(10))
            .arg("-c")
            .arg("id -u; id -G; stat -c %u \"$HOME\"; touch \"$HOME/x\" && echo home-writable");
        let (result, lines) = run_in_collect(&spec, &test_sandbox(Some(nobody), None)).await;
        assert!(result.unwrap().success(), "{lines:?}");
        assert_eq!(lines, ["65534", "65534", "65534", "home-writable"]);

        // A working directory the user cannot enter is a clear spawn error.
        let private = tempfile::tempdir().unwrap();
        std::fs::set_permissions(
            private.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o700),
        )
        .unwrap();
        let spec = CommandSpec::new("/bin/true", private.path(), Duration::from_secs(10));
        let nobody = sandbox::RunAs {
            name: "nobody".into(),
            uid: 65534,
            gid: 65534,
        };
        let err = run_in_collect(&spec, &test_sandbox(Some(nobody), None))
            .await
            .0
            .unwrap_err();
        let message = err.to_string();
        assert!(message.contains("uid 65534"), "{message}");
    }

    #[tokio::test]
    async fn output_and_tails_are_scrubbed() {
        sandbox::register_secret("process-test-secret-value-42");
        let spec = sh(
            "echo before process-test-secret-value-42 after; echo process-test-secret-value-42 >&2",
            Duration::from_secs(10),
        );
        let (result, lines) = run_collect(&spec).await;
        let finished = result.unwrap();
        // stdout and stderr are read concurrently: either line may arrive first.
        let stdout: Vec<&str> = lines
            .iter()
            .filter(|(s, _)| *s == Stream::Stdout)
            .map(|(_, l)| l.as_str())
            .collect();
        assert_eq!(stdout, ["before [REDACTED] after"]);
        assert!(lines.iter().all(|(_, l)| !l.contains("secret-value")));
        assert!(!finished.stdout_tail.contains("secret-value"));
        assert_eq!(finished.stderr_tail, "[REDACTED]\n");
    }

    #[test]
    fn long_lines_split_on_char_boundaries() {
        let mut c = Collector::new(Stream::Stdout);
        let mut got = Vec::new();
        let mut line = "x".repeat(MAX_LINE_BYTES - 1);
        line.push('é'); // straddles the limit
        line.push_str("\r\nnext\n");
        for chunk in line.as_bytes().chunks(1000) {
            c.push(chunk, &mut |_, l: &str| got.push(l.to_string()));
        }
        c.finish(&mut |_, l: &str| got.push(l.to_string()));
        assert_eq!(
            got.len(),
            3,
            "{:?}",
            got.iter().map(String::len).collect::<Vec<_>>()
        );
        assert_eq!(got[0].len(), MAX_LINE_BYTES - 1);
        assert_eq!(got[1], "é");
        assert_eq!(got[2], "next");
    }
}
