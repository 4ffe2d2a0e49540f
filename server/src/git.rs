//! Fetching pack sources from git repositories (libgit2 via `git2`).
//!
//! [`clone_pack`] resolves a reference (branch, tag or commit SHA) on a remote,
//! fetches as little as the transport allows (depth 1, one refspec), checks the
//! commit's tree out into a destination directory and removes `.git` again, so
//! the result is a plain pack directory.
//!
//! The API is blocking; call it from `tokio::task::spawn_blocking`.
//!
//! Network safety:
//! * HTTP redirects are never followed and no proxy is used (the caller applies
//!   its outbound URL policy to the URL it passes in).
//! * The deadline and the reporter's cancellation are checked in libgit2's
//!   progress callbacks, and libgit2's socket connect/read timeouts are lowered
//!   to the call's timeout while it runs, so a silent server cannot hang a
//!   worker thread forever.
//! * Secrets never appear in errors or progress: URLs are printed without
//!   userinfo, query or fragment, and configured tokens/passphrases are masked
//!   in any libgit2 message that is passed on.

use std::cell::{Cell, RefCell};
use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use git2::build::CheckoutBuilder;
use git2::{
    AutotagOption, CertificateCheckStatus, Cred, CredentialType, Direction, ErrorClass, ErrorCode,
    FetchOptions, Oid, Progress, RemoteCallbacks, RemoteRedirect, Repository,
};

use crate::progress::{Reporter, Stage};

/// Local ref that receives the single fetched ref or object.
const FETCHED_REF: &str = "refs/attune/fetched";
/// libgit2 calls the credentials callback again after each rejection; give up
/// after this many calls per connection.
const MAX_CREDENTIAL_CALLBACKS: u32 = 5;
/// At most one throttled progress event per this interval (10 per second).
const PROGRESS_INTERVAL: Duration = Duration::from_millis(100);
/// Username sent with a token when no username is configured (GitHub style;
/// GitLab and Gitea accept any username with a token).
pub const DEFAULT_TOKEN_USERNAME: &str = "x-access-token";

/// Credentials for private repositories. `Debug` never prints secrets.
#[derive(Clone, Default)]
pub struct GitCredentials {
    pub https_username: Option<String>,
    pub https_token: Option<String>,
    pub ssh_key_path: Option<PathBuf>,
    pub ssh_key_passphrase: Option<String>,
    pub use_ssh_agent: bool,
}

impl fmt::Debug for GitCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let redact = |o: &Option<String>| o.as_ref().map(|_| "<redacted>");
        f.debug_struct("GitCredentials")
            .field("https_username", &self.https_username)
            .field("https_token", &redact(&self.https_token))
            .field("ssh_key_path", &self.ssh_key_path)
            .field("ssh_key_passphrase", &redact(&self.ssh_key_passphrase))
            .field("use_ssh_agent", &self.use_ssh_agent)
            .finish()
    }
}

/// What to clone and where.
#[derive(Debug, Clone, Copy)]
pub struct CloneOptions<'a> {
    /// `https://`, `http://`, `ssh://`, scp-like `git@host:org/repo.git`,
    /// `git://` or `file://` (local transport: never shallow).
    pub url: &'a str,
    /// Branch, tag, full or abbreviated (>= 4 hex) commit SHA, or a full ref
    /// name (`refs/...`). `None` = the remote's HEAD.
    pub reference: Option<&'a str>,
    /// Must not exist or be an empty directory. The caller deletes it on error.
    pub dest: &'a Path,
    pub credentials: &'a GitCredentials,
    /// `false` accepts any TLS certificate and any SSH host key.
    pub verify_ssl: bool,
    /// Budget for the whole operation (network and checkout).
    pub timeout: Duration,
}

/// What was checked out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkout {
    /// 40-hex id of the checked-out commit (annotated tags are peeled).
    pub commit: String,
    /// Whether only a shallow (depth 1) history was fetched.
    pub shallow: bool,
}

/// Errors of [`clone_pack`]. No variant contains credentials; URLs are redacted.
#[derive(Debug, thiserror::Error)]
pub enum GitError {
    #[error("invalid git reference {reference:?}: {reason}")]
    InvalidReference {
        reference: String,
        reason: &'static str,
    },
    #[error("unsupported git URL '{url}': {reason}")]
    UnsupportedUrl { url: String, reason: &'static str },
    #[error(
        "git reference '{reference}' not found in {url} (looked up as branch refs/heads/{reference}, \
         tag refs/tags/{reference} and commit SHA)"
    )]
    ReferenceNotFound { reference: String, url: String },
    #[error("abbreviated commit SHA '{prefix}' is ambiguous in {url}")]
    AmbiguousCommit { prefix: String, url: String },
    #[error("git reference '{reference}' in {url} does not point to a commit")]
    NotACommit { reference: String, url: String },
    #[error("remote repository {url} is empty (no HEAD)")]
    EmptyRepository { url: String },
    #[error("authentication failed for {url}: {message}")]
    Auth { url: String, message: String },
    #[error("certificate or host key verification failed for {url}: {message}")]
    Certificate { url: String, message: String },
    #[error("network error fetching {url}: {message}")]
    Network { url: String, message: String },
    #[error("git operation timed out after {secs}s")]
    Timeout { secs: u64 },
    #[error("git operation cancelled")]
    Cancelled,
    #[error("destination {} exists and is not an empty directory", path.display())]
    DestinationNotEmpty { path: PathBuf },
    #[error("I/O error at {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("git error: {0}")]
    Git(String),
}

/// Transport class of a URL, as far as [`clone_pack`] cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Http,
    Https,
    Ssh,
    Git,
    File,
}

impl Transport {
    /// libgit2 cannot shallow-fetch over the local transport.
    pub fn supports_shallow(self) -> bool {
        self != Transport::File
    }
}

/// Classifies a URL, rejecting forms [`clone_pack`] does not support
/// (plain local paths, unknown schemes, option-like strings).
pub fn classify_url(url: &str) -> Result<Transport, GitError> {
    let unsupported = |reason| GitError::UnsupportedUrl {
        url: redact_url(url),
        reason,
    };
    if url.is_empty() {
        return Err(unsupported("empty URL"));
    }
    if url.starts_with('-') {
        return Err(unsupported("URL must not start with '-'"));
    }
    if url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(unsupported("URL contains whitespace or control characters"));
    }
    if let Some((scheme, rest)) = url.split_once("://") {
        if rest.is_empty() {
            return Err(unsupported("URL has no host or path"));
        }
        return match scheme.to_ascii_lowercase().as_str() {
            "https" => Ok(Transport::Https),
            "http" => Ok(Transport::Http),
            "ssh" | "git+ssh" | "ssh+git" => Ok(Transport::Ssh),
            "git" => Ok(Transport::Git),
            "file" => Ok(Transport::File),
            _ => Err(unsupported("scheme must be https, http, ssh, git or file")),
        };
    }
    // scp-like syntax: [user@]host:path, where the host part has no '/'.
    if let Some((host, path)) = url.split_once(':')
        && !host.is_empty()
        && !host.contains('/')
        && !path.is_empty()
    {
        return Ok(Transport::Ssh);
    }
    Err(unsupported(
        "not a URL; local paths are not supported (use file://)",
    ))
}

/// Returns the URL without userinfo, query and fragment, for messages.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        // scp-like: user@host:path has no password field; drop anything after
        // a '?' or '#' anyway.
        return url.split(['?', '#']).next().unwrap_or_default().to_string();
    };
    let rest = rest.split(['?', '#']).next().unwrap_or_default();
    let (authority, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    let host = match authority.rfind('@') {
        Some(i) => &authority[i + 1..],
        None => authority,
    };
    format!("{scheme}://{host}{path}")
}

/// Rejects reference names that could be taken as options, refspec syntax or
/// revision expressions. Runs before any network traffic.
pub fn validate_reference(reference: &str) -> Result<(), GitError> {
    let invalid = |reason| GitError::InvalidReference {
        reference: reference.chars().filter(|c| !c.is_control()).collect(),
        reason,
    };
    if reference.is_empty() {
        return Err(invalid("empty reference"));
    }
    if reference.starts_with('-') {
        return Err(invalid("must not start with '-'"));
    }
    if reference.chars().any(char::is_control) {
        return Err(invalid("must not contain control characters"));
    }
    if reference.chars().any(char::is_whitespace) {
        return Err(invalid("must not contain whitespace"));
    }
    if reference.contains("..") {
        return Err(invalid("must not contain '..'"));
    }
    if reference.contains(':') {
        return Err(invalid("must not contain ':'"));
    }
    if reference.contains(['*', '?', '[', '\\', '^', '~']) || reference.contains("@{") {
        return Err(invalid("must not contain *, ?, [, \\, ^, ~ or @{"));
    }
    let full = if reference.starts_with("refs/") {
        reference.to_string()
    } else {
        format!("refs/heads/{reference}")
    };
    if !git2::Reference::is_valid_name(&full) {
        return Err(invalid("not a valid git reference name"));
    }
    Ok(())
}

fn is_hex(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Makes libgit2 ignore the system, global and XDG git configuration of the
/// server's user (for example `url.<base>.insteadOf` rewrites or
/// `http.sslVerify`), so only the options of [`clone_pack`] apply.
///
/// # Safety
/// Changes libgit2 process globals without synchronization: call it once at
/// startup, before any other thread uses git2.
pub unsafe fn ignore_user_git_config() -> Result<(), GitError> {
    use git2::ConfigLevel;
    for level in [
        ConfigLevel::ProgramData,
        ConfigLevel::System,
        ConfigLevel::XDG,
        ConfigLevel::Global,
    ] {
        // SAFETY: forwarded to the caller (see above).
        unsafe { git2::opts::set_search_path(level, "") }
            .map_err(|e| GitError::Git(e.message().to_string()))?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Credentials (pure decision logic, unit-tested without libgit2 transports)

/// Which credential to hand to libgit2 next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CredentialChoice {
    UserPass {
        username: String,
        password: String,
    },
    Username(String),
    SshKey {
        username: String,
        private_key: PathBuf,
        passphrase: Option<String>,
    },
    SshAgent {
        username: String,
    },
}

/// State of the credentials callback for one connection.
#[derive(Debug, Default)]
pub struct CredentialState {
    calls: u32,
    tried_userpass: bool,
    tried_key: bool,
    tried_agent: bool,
}

impl CredentialState {
    /// Decides the next credential for libgit2's `allowed` types, or returns
    /// the reason to give up (no secrets in it).
    pub fn next(
        &mut self,
        creds: &GitCredentials,
        username_from_url: Option<&str>,
        allowed: CredentialType,
    ) -> Result<CredentialChoice, String> {
        self.calls += 1;
        if self.calls > MAX_CREDENTIAL_CALLBACKS {
            return Err("too many authentication attempts".into());
        }
        let ssh_user = || username_from_url.unwrap_or("git").to_string();
        if allowed.contains(CredentialType::USER_PASS_PLAINTEXT) {
            if self.tried_userpass {
                return Err("the server rejected the configured username/token".into());
            }
            let Some(token) = creds.https_token.as_ref() else {
                return Err(
                    "the server requires authentication and no https_token is configured".into(),
                );
            };
            self.tried_userpass = true;
            let username = creds
                .https_username
                .clone()
                .or_else(|| username_from_url.map(str::to_string))
                .unwrap_or_else(|| DEFAULT_TOKEN_USERNAME.to_string());
            return Ok(CredentialChoice::UserPass {
                username,
                password: token.clone(),
            });
        }
        if allowed.contains(CredentialType::USERNAME) {
            return Ok(CredentialChoice::Username(ssh_user()));
        }
        if allowed.contains(CredentialType::SSH_KEY) {
            if let Some(key) = &creds.ssh_key_path
                && !self.tried_key
            {
                self.tried_key = true;
                return Ok(CredentialChoice::SshKey {
                    username: ssh_user(),
                    private_key: key.clone(),
                    passphrase: creds.ssh_key_passphrase.clone(),
                });
            }
            if creds.use_ssh_agent && !self.tried_agent {
                self.tried_agent = true;
                return Ok(CredentialChoice::SshAgent {
                    username: ssh_user(),
                });
            }
            return Err(if self.tried_key || self.tried_agent {
                "the server rejected the configured SSH key/agent identities".into()
            } else {
                "the server requires an SSH key and neither ssh_key_path nor use_ssh_agent is configured"
                    .into()
            });
        }
        Err("the server asked for an unsupported authentication method".into())
    }
}

impl CredentialChoice {
    fn into_cred(self) -> Result<Cred, git2::Error> {
        match self {
            CredentialChoice::UserPass { username, password } => {
                Cred::userpass_plaintext(&username, &password)
            }
            CredentialChoice::Username(u) => Cred::username(&u),
            CredentialChoice::SshKey {
                username,
                private_key,
                passphrase,
            } => Cred::ssh_key(&username, None, &private_key, passphrase.as_deref()),
            CredentialChoice::SshAgent { username } => Cred::ssh_key_from_agent(&username),
        }
    }
}

// ---------------------------------------------------------------------------
// libgit2's process-wide socket timeouts

/// libgit2's socket timeouts are process-wide globals, copied into each
/// socket stream when it is created. While clones run, they are set to the
/// smallest timeout among the active calls (so no call can block on a socket
/// longer than its own budget; a concurrent short-budget call can only make
/// another call's per-read inactivity limit shorter, never its overall budget),
/// and restored when the last call ends.
struct SocketTimeouts {
    active: Vec<i32>,
    saved: Option<(i32, i32)>,
}

static SOCKET_TIMEOUTS: Mutex<SocketTimeouts> = Mutex::new(SocketTimeouts {
    active: Vec::new(),
    saved: None,
});

struct SocketTimeoutGuard {
    ms: i32,
}

fn apply_socket_timeouts(connect_ms: i32, io_ms: i32) {
    // SAFETY: libgit2 stores plain ints; our writes are serialized by the
    // SOCKET_TIMEOUTS mutex, and libgit2 reads them only when a socket stream
    // is created. This is the documented way to configure them (git2 marks it
    // unsafe because of the unsynchronized global).
    unsafe {
        let _ = git2::opts::set_server_connect_timeout_in_milliseconds(connect_ms);
        let _ = git2::opts::set_server_timeout_in_milliseconds(io_ms);
    }
}

impl SocketTimeoutGuard {
    fn new(timeout: Duration) -> Self {
        let ms = timeout.as_millis().clamp(1, i32::MAX as u128) as i32;
        let mut st = SOCKET_TIMEOUTS.lock().unwrap_or_else(|e| e.into_inner());
        if st.active.is_empty() {
            // SAFETY: see apply_socket_timeouts.
            let saved = unsafe {
                (
                    git2::opts::get_server_connect_timeout_in_milliseconds().unwrap_or(0),
                    git2::opts::get_server_timeout_in_milliseconds().unwrap_or(0),
                )
            };
            st.saved = Some(saved);
        }
        st.active.push(ms);
        let min = st.active.iter().copied().min().unwrap_or(ms);
        apply_socket_timeouts(min, min);
        SocketTimeoutGuard { ms }
    }
}

impl Drop for SocketTimeoutGuard {
    fn drop(&mut self) {
        let mut st = SOCKET_TIMEOUTS.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(i) = st.active.iter().position(|&m| m == self.ms) {
            st.active.swap_remove(i);
        }
        match st.active.iter().copied().min() {
            Some(min) => apply_socket_timeouts(min, min),
            None => {
                let (c, t) = st.saved.take().unwrap_or((0, 0));
                apply_socket_timeouts(c, t);
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Per-call control: deadline, cancellation, progress, error mapping

#[derive(Debug, Clone, PartialEq, Eq)]
enum Abort {
    Timeout,
    Cancelled,
    Auth(String),
}

struct Control<'a> {
    opts: &'a CloneOptions<'a>,
    reporter: &'a Reporter,
    deadline: Instant,
    url: String,
    secrets: Vec<String>,
    abort: RefCell<Option<Abort>>,
    last_event: Cell<Option<Instant>>,
}

impl<'a> Control<'a> {
    fn new(opts: &'a CloneOptions<'a>, reporter: &'a Reporter) -> Self {
        let c = opts.credentials;
        let mut secrets: Vec<String> = [&c.https_token, &c.ssh_key_passphrase]
            .into_iter()
            .flatten()
            .filter(|s| !s.is_empty())
            .cloned()
            .collect();
        // Userinfo of the URL itself may hold a token.
        if let Some((_, rest)) = opts.url.split_once("://") {
            let authority = rest.split('/').next().unwrap_or_default();
            if let Some(i) = authority.rfind('@') {
                let userinfo = &authority[..i];
                secrets.push(userinfo.to_string());
                secrets.extend(userinfo.split(':').map(str::to_string));
            }
        }
        secrets.retain(|s| s.len() >= 3);
        secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
        Control {
            opts,
            reporter,
            deadline: Instant::now() + opts.timeout,
            url: redact_url(opts.url),
            secrets,
            abort: RefCell::new(None),
            last_event: Cell::new(None),
        }
    }

    fn timeout_error(&self) -> GitError {
        GitError::Timeout {
            secs: self.opts.timeout.as_secs_f64().ceil() as u64,
        }
    }

    /// Should a running transfer stop? Records the reason.
    fn should_abort(&self) -> bool {
        if self.abort.borrow().is_some() {
            return true;
        }
        let reason = if self.reporter.is_cancelled() {
            Abort::Cancelled
        } else if Instant::now() >= self.deadline {
            Abort::Timeout
        } else {
            return false;
        };
        *self.abort.borrow_mut() = Some(reason);
        true
    }

    /// Checkpoint between steps.
    fn check(&self) -> Result<(), GitError> {
        if self.should_abort() {
            Err(self.abort_error().unwrap_or(GitError::Cancelled))
        } else {
            Ok(())
        }
    }

    fn abort_error(&self) -> Option<GitError> {
        match self.abort.borrow().clone()? {
            Abort::Timeout => Some(self.timeout_error()),
            Abort::Cancelled => Some(GitError::Cancelled),
            Abort::Auth(message) => Some(GitError::Auth {
                url: self.url.clone(),
                message,
            }),
        }
    }

    fn sanitize(&self, message: &str) -> String {
        let mut m = message.replace(self.opts.url, &self.url);
        for s in &self.secrets {
            m = m.replace(s.as_str(), "***");
        }
        m.trim().to_string()
    }

    /// Throttled progress: at most one event per [`PROGRESS_INTERVAL`].
    fn throttled(&self, f: impl FnOnce()) {
        let now = Instant::now();
        if self
            .last_event
            .get()
            .is_none_or(|t| now.duration_since(t) >= PROGRESS_INTERVAL)
        {
            self.last_event.set(Some(now));
            f();
        }
    }

    fn map_err(&self, e: git2::Error) -> GitError {
        if let Some(err) = self.abort_error() {
            return err;
        }
        let message = self.sanitize(e.message());
        let url = self.url.clone();
        match e.code() {
            ErrorCode::Auth => return GitError::Auth { url, message },
            ErrorCode::Certificate => return GitError::Certificate { url, message },
            ErrorCode::Timeout => return self.timeout_error(),
            _ => {}
        }
        if Instant::now() >= self.deadline {
            return self.timeout_error();
        }
        match e.class() {
            ErrorClass::Net | ErrorClass::Http | ErrorClass::Ssh | ErrorClass::Os => {
                GitError::Network { url, message }
            }
            ErrorClass::Ssl => {
                if message.contains("certificate") {
                    GitError::Certificate { url, message }
                } else {
                    GitError::Network { url, message }
                }
            }
            _ => GitError::Git(message),
        }
    }

    fn callbacks(&self) -> RemoteCallbacks<'_> {
        let mut cb = RemoteCallbacks::new();
        let mut state = CredentialState::default();
        cb.credentials(move |_url, username_from_url, allowed| {
            if self.should_abort() {
                return Err(git2::Error::from_str("aborted"));
            }
            match state.next(self.opts.credentials, username_from_url, allowed) {
                Ok(choice) => choice.into_cred().map_err(|e| {
                    // e.g. unreadable key file: report without secrets.
                    let msg = format!("could not load credentials: {}", self.sanitize(e.message()));
                    *self.abort.borrow_mut() = Some(Abort::Auth(msg.clone()));
                    git2::Error::from_str(&msg)
                }),
                Err(reason) => {
                    *self.abort.borrow_mut() = Some(Abort::Auth(reason.clone()));
                    Err(git2::Error::from_str(&reason))
                }
            }
        });
        if !self.opts.verify_ssl {
            cb.certificate_check(|_cert, _host| Ok(CertificateCheckStatus::CertificateOk));
        } else {
            cb.certificate_check(|_cert, _host| Ok(CertificateCheckStatus::CertificatePassthrough));
        }
        cb.sideband_progress(|_data| !self.should_abort());
        cb.transfer_progress(|p: Progress<'_>| {
            if self.should_abort() {
                return false;
            }
            self.throttled(|| {
                self.reporter.count(
                    Stage::Fetch,
                    "objects received",
                    p.received_objects() as u64,
                    Some(p.total_objects() as u64),
                )
            });
            true
        });
        cb
    }

    fn fetch_options(&self, depth: i32, tags: AutotagOption) -> FetchOptions<'_> {
        let mut fo = FetchOptions::new();
        fo.remote_callbacks(self.callbacks())
            .depth(depth)
            .download_tags(tags)
            .follow_redirects(RemoteRedirect::None)
            .update_fetchhead(false);
        fo
    }
}

// ---------------------------------------------------------------------------
// The clone itself

/// An advertised remote ref.
#[derive(Debug, Clone)]
struct RemoteRef {
    name: String,
    oid: Oid,
    symref_target: Option<String>,
}

/// How the requested reference will be fetched.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Plan {
    /// Fetch exactly this advertised ref.
    Ref(String),
    /// Fetch a full commit id directly (needs server support), else fall back.
    Oid(Oid),
    /// Abbreviated SHA: needs the full history.
    Prefix(String),
    NotFound,
}

fn plan(reference: Option<&str>, refs: &[RemoteRef]) -> Plan {
    let find = |name: &str| refs.iter().find(|r| r.name == name);
    let Some(r) = reference else {
        let head = find("HEAD");
        return match head.and_then(|h| h.symref_target.as_deref()).and_then(find) {
            Some(target) => Plan::Ref(target.name.clone()),
            None if head.is_some() => Plan::Ref("HEAD".into()),
            None => Plan::NotFound,
        };
    };
    if r.starts_with("refs/") {
        return match find(r) {
            Some(_) => Plan::Ref(r.to_string()),
            None => Plan::NotFound,
        };
    }
    for candidate in [format!("refs/heads/{r}"), format!("refs/tags/{r}")] {
        if find(&candidate).is_some() {
            return Plan::Ref(candidate);
        }
    }
    if is_hex(r) && r.len() >= 4 {
        if r.len() == 40 {
            let Ok(oid) = Oid::from_str(r) else {
                return Plan::NotFound;
            };
            // A SHA that is the tip of an advertised ref (or the commit an
            // annotated tag peels to) can be fetched shallowly by that name.
            let mut tips: Vec<&RemoteRef> = refs.iter().filter(|x| x.oid == oid).collect();
            tips.sort_by_key(|x| {
                (
                    !x.name.starts_with("refs/heads/"),
                    !x.name.starts_with("refs/tags/"),
                )
            });
            if let Some(tip) = tips.first() {
                let name = tip.name.trim_end_matches("^{}");
                return Plan::Ref(name.to_string());
            }
            return Plan::Oid(oid);
        }
        if r.len() < 40 {
            return Plan::Prefix(r.to_ascii_lowercase());
        }
    }
    Plan::NotFound
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> GitError + '_ {
    move |source| GitError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn prepare_dest(dest: &Path) -> Result<(), GitError> {
    match fs::symlink_metadata(dest) {
        Ok(meta) => {
            let empty = meta.is_dir() && fs::read_dir(dest).map_err(io_err(dest))?.next().is_none();
            if !empty {
                return Err(GitError::DestinationNotEmpty {
                    path: dest.to_path_buf(),
                });
            }
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            fs::create_dir_all(dest).map_err(io_err(dest))
        }
        Err(e) => Err(io_err(dest)(e)),
    }
}

fn init_repo(dest: &Path, ctl: &Control<'_>) -> Result<Repository, GitError> {
    let git_dir = dest.join(".git");
    if git_dir.exists() {
        fs::remove_dir_all(&git_dir).map_err(io_err(&git_dir))?;
    }
    let repo = Repository::init(dest).map_err(|e| ctl.map_err(e))?;
    // Repository-local settings override user/system config that could change
    // the checkout or the transport.
    let mut cfg = repo.config().map_err(|e| ctl.map_err(e))?;
    for (k, v) in [
        ("core.autocrlf", "false"),
        ("http.followRedirects", "false"),
    ] {
        cfg.set_str(k, v).map_err(|e| ctl.map_err(e))?;
    }
    Ok(repo)
}

fn list_remote(repo: &Repository, ctl: &Control<'_>) -> Result<Vec<RemoteRef>, GitError> {
    let mut remote = repo
        .remote_anonymous(ctl.opts.url)
        .map_err(|e| ctl.map_err(e))?;
    let conn = remote
        .connect_auth(Direction::Fetch, Some(ctl.callbacks()), None)
        .map_err(|e| ctl.map_err(e))?;
    let refs = conn
        .list()
        .map_err(|e| ctl.map_err(e))?
        .iter()
        .map(|h| RemoteRef {
            name: h.name().to_string(),
            oid: h.oid(),
            symref_target: h.symref_target().map(str::to_string),
        })
        .collect();
    Ok(refs)
}

fn fetch(
    repo: &Repository,
    ctl: &Control<'_>,
    refspecs: &[&str],
    depth: i32,
    tags: AutotagOption,
) -> Result<(), GitError> {
    let mut remote = repo
        .remote_anonymous(ctl.opts.url)
        .map_err(|e| ctl.map_err(e))?;
    let mut fo = ctl.fetch_options(depth, tags);
    remote
        .fetch(refspecs, Some(&mut fo), None)
        .map_err(|e| ctl.map_err(e))?;
    let stats = remote.stats();
    ctl.reporter.count(
        Stage::Fetch,
        "objects received",
        stats.received_objects() as u64,
        Some(stats.total_objects() as u64),
    );
    Ok(())
}

/// Full fetch of all branches and tags (into a fresh repository), used when
/// a commit cannot be fetched directly.
fn fetch_everything(dest: &Path, ctl: &Control<'_>) -> Result<Repository, GitError> {
    let repo = init_repo(dest, ctl)?;
    fetch(
        &repo,
        ctl,
        &[
            "+refs/heads/*:refs/remotes/origin/*",
            "+refs/tags/*:refs/tags/*",
        ],
        0,
        AutotagOption::All,
    )?;
    Ok(repo)
}

/// Clones `opts.url` at `opts.reference` into `opts.dest` without `.git`.
///
/// Resolution order for a reference `r`: branch `refs/heads/r`, tag
/// `refs/tags/r` (annotated tags peeled), then commit SHA (full, or
/// abbreviated with >= 4 hex digits). A `refs/...` name is looked up as is.
/// Branches, tags and tip commits are fetched with depth 1 where the
/// transport allows; other full SHAs are first requested directly (servers
/// with `uploadpack.allowReachableSHA1InWant`/`allowAnySHA1InWant`), and
/// otherwise, like abbreviated SHAs, resolved after a full fetch of all
/// branches and tags.
pub fn clone_pack(opts: &CloneOptions<'_>, reporter: &Reporter) -> Result<Checkout, GitError> {
    let transport = classify_url(opts.url)?;
    if let Some(r) = opts.reference {
        validate_reference(r)?;
    }
    let ctl = Control::new(opts, reporter);
    ctl.check()?;
    prepare_dest(opts.dest)?;
    let _socket_timeouts = SocketTimeoutGuard::new(opts.timeout);

    let shown_ref = opts.reference.unwrap_or("HEAD");
    reporter.info(
        Stage::Resolve,
        format!("resolving '{shown_ref}' at {}", ctl.url),
    );
    let mut repo = init_repo(opts.dest, &ctl)?;
    let refs = list_remote(&repo, &ctl)?;
    ctl.check()?;
    let not_found = || GitError::ReferenceNotFound {
        reference: shown_ref.to_string(),
        url: ctl.url.clone(),
    };
    let plan = plan(opts.reference, &refs);
    let shallow_depth = if transport.supports_shallow() { 1 } else { 0 };

    let commit_id = match plan {
        Plan::NotFound if opts.reference.is_none() => {
            return Err(GitError::EmptyRepository {
                url: ctl.url.clone(),
            });
        }
        Plan::NotFound => return Err(not_found()),
        Plan::Ref(name) => {
            reporter.info(Stage::Fetch, format!("fetching {name}"));
            let spec = format!("+{name}:{FETCHED_REF}");
            fetch(&repo, &ctl, &[&spec], shallow_depth, AutotagOption::None)?;
            let commit = repo
                .find_reference(FETCHED_REF)
                .and_then(|r| r.peel_to_commit())
                .map_err(|_| GitError::NotACommit {
                    reference: shown_ref.to_string(),
                    url: ctl.url.clone(),
                })?;
            commit.id()
        }
        Plan::Oid(oid) => {
            let mut direct = Err(None);
            if transport.supports_shallow() {
                reporter.info(Stage::Fetch, format!("fetching commit {oid}"));
                let spec = format!("+{oid}:{FETCHED_REF}");
                direct = fetch(&repo, &ctl, &[&spec], 1, AutotagOption::None).map_err(Some);
            }
            match direct {
                Ok(()) => oid,
                Err(Some(
                    e @ (GitError::Auth { .. }
                    | GitError::Certificate { .. }
                    | GitError::Timeout { .. }
                    | GitError::Cancelled),
                )) => return Err(e),
                Err(refused) => {
                    if let Some(e) = refused {
                        reporter.warn(
                            Stage::Fetch,
                            format!(
                                "server refused to send commit {oid} directly ({e}); \
                                 fetching all branches and tags"
                            ),
                        );
                    }
                    drop(repo);
                    repo = fetch_everything(opts.dest, &ctl)?;
                    oid
                }
            }
        }
        Plan::Prefix(prefix) => {
            reporter.info(
                Stage::Fetch,
                format!("abbreviated commit '{prefix}': fetching all branches and tags"),
            );
            drop(repo);
            repo = fetch_everything(opts.dest, &ctl)?;
            match repo.find_object_by_prefix(&prefix, None) {
                Ok(obj) => obj.id(),
                Err(e) if e.code() == ErrorCode::Ambiguous => {
                    return Err(GitError::AmbiguousCommit {
                        prefix,
                        url: ctl.url.clone(),
                    });
                }
                Err(_) => return Err(not_found()),
            }
        }
    };
    ctl.check()?;

    let object = repo.find_object(commit_id, None).map_err(|_| not_found())?;
    let commit = object.peel_to_commit().map_err(|_| GitError::NotACommit {
        reference: shown_ref.to_string(),
        url: ctl.url.clone(),
    })?;
    let shallow = repo.is_shallow();
    let commit_hex = commit.id().to_string();

    reporter.info(Stage::Extract, format!("checking out {commit_hex}"));
    {
        let mut co = CheckoutBuilder::new();
        co.force();
        co.progress(|_path, done, total| {
            ctl.throttled(|| {
                reporter.count(
                    Stage::Extract,
                    "files checked out",
                    done as u64,
                    Some(total as u64),
                )
            })
        });
        repo.checkout_tree(commit.as_object(), Some(&mut co))
            .map_err(|e| ctl.map_err(e))?;
    }
    drop(commit);
    drop(object);
    drop(repo);
    ctl.check()?;

    let git_dir = opts.dest.join(".git");
    fs::remove_dir_all(&git_dir).map_err(io_err(&git_dir))?;
    reporter.info(
        Stage::Extract,
        format!(
            "checked out {commit_hex}{}",
            if shallow { " (shallow)" } else { "" }
        ),
    );
    Ok(Checkout {
        commit: commit_hex,
        shallow,
    })
}

/// Test fixtures: git repositories served over loopback (`git daemon`, smart
/// HTTP through `git http-backend`) and a server that never answers.
/// Reusable from other test modules as `crate::git::testutil`.
#[cfg(test)]
pub mod testutil {
    use std::io::{BufRead, BufReader, Read, Write};
    use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
    use std::path::{Path, PathBuf};
    use std::process::{Child, Command, Stdio};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
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
        std::fs::remove_dir_all(&work).unwrap();
        commit
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
                // wrapper would leave the daemon running.
                let mut child = Command::new(git_exec_path().join("git-daemon"))
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
            let _ = self.child.kill();
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
}

#[cfg(test)]
mod tests {
    use super::testutil::*;
    use super::*;
    use crate::progress::{Level, ProgressEvent};
    use std::sync::RwLock;

    /// Tests that lower libgit2's process-wide socket timeouts to a few
    /// seconds run alone (write lock); the others share (read lock).
    static NET: RwLock<()> = RwLock::new(());

    fn shared() -> std::sync::RwLockReadGuard<'static, ()> {
        NET.read().unwrap_or_else(|e| e.into_inner())
    }

    fn exclusive() -> std::sync::RwLockWriteGuard<'static, ()> {
        NET.write().unwrap_or_else(|e| e.into_inner())
    }

    struct Served {
        base: tempfile::TempDir,
        daemon: GitDaemon,
        commits: FixtureCommits,
    }

    fn served() -> Served {
        let base = tempfile::tempdir().unwrap();
        let commits = create_fixture_repo(base.path(), "pack.git");
        let daemon = GitDaemon::start(base.path());
        Served {
            base,
            daemon,
            commits,
        }
    }

    fn run(
        url: &str,
        reference: Option<&str>,
        creds: &GitCredentials,
        reporter: &Reporter,
        timeout: Duration,
    ) -> (tempfile::TempDir, PathBuf, Result<Checkout, GitError>) {
        let tmp = tempfile::tempdir().unwrap();
        let dest = dest_in(tmp.path());
        let opts = CloneOptions {
            url,
            reference,
            dest: &dest,
            credentials: creds,
            verify_ssl: true,
            timeout,
        };
        let result = clone_pack(&opts, reporter);
        (tmp, dest, result)
    }

    fn clone_ok(url: &str, reference: Option<&str>) -> (tempfile::TempDir, PathBuf, Checkout) {
        let (tmp, dest, r) = run(
            url,
            reference,
            &GitCredentials::default(),
            &Reporter::noop(),
            Duration::from_secs(60),
        );
        let checkout = r.unwrap_or_else(|e| panic!("clone {url} {reference:?}: {e}"));
        assert!(!dest.join(".git").exists(), ".git must be removed");
        assert!(dest.join("pack.yaml").is_file());
        (tmp, dest, checkout)
    }

    fn drain(rx: &mut tokio::sync::mpsc::UnboundedReceiver<ProgressEvent>) -> Vec<ProgressEvent> {
        let mut v = Vec::new();
        while let Ok(e) = rx.try_recv() {
            v.push(e);
        }
        v
    }

    #[test]
    fn default_head_over_git_daemon_is_shallow() {
        let _g = shared();
        let s = served();
        let (reporter, mut rx) = Reporter::channel("demo");
        let (_tmp, dest, r) = run(
            &s.daemon.url("pack.git"),
            None,
            &GitCredentials::default(),
            &reporter,
            Duration::from_secs(60),
        );
        let c = r.unwrap();
        assert_eq!(c.commit, s.commits.c2);
        assert_eq!(
            c.commit,
            git(&s.base.path().join("pack.git"), &["rev-parse", "HEAD"])
        );
        assert!(c.shallow);
        assert!(!dest.join(".git").exists());
        assert!(read(&dest, "pack.yaml").contains("version: 0.2.0"));
        assert_eq!(read(&dest, "README.md"), "# demo pack\n");
        assert!(read(&dest, "actions/hello.sh").contains("echo hello"));
        assert!(dest.join(".gitmodules").is_file());
        assert!(!dest.join("dev.txt").exists());
        // The submodule is not fetched: its directory is absent or empty.
        let sub = dest.join("vendor/sub");
        assert!(!sub.exists() || std::fs::read_dir(&sub).unwrap().next().is_none());

        let events = drain(&mut rx);
        assert!(events.iter().all(|e| e.subject == "demo"));
        let fetch_counts: Vec<_> = events
            .iter()
            .filter(|e| e.stage == Stage::Fetch && e.done.is_some())
            .collect();
        let last = fetch_counts.last().expect("a final fetch count");
        assert!(last.done.unwrap() > 0);
        assert_eq!(last.done, last.total);
        assert!(events.iter().any(|e| e.stage == Stage::Extract));
    }

    #[test]
    fn branch() {
        let _g = shared();
        let s = served();
        let (_t, dest, c) = clone_ok(&s.daemon.url("pack.git"), Some("dev"));
        assert_eq!(c.commit, s.commits.c4);
        assert!(c.shallow);
        assert_eq!(read(&dest, "dev.txt"), "two\n");
    }

    #[test]
    fn lightweight_tag() {
        let _g = shared();
        let s = served();
        let (_t, dest, c) = clone_ok(&s.daemon.url("pack.git"), Some("light"));
        assert_eq!(c.commit, s.commits.c1);
        assert!(c.shallow);
        assert!(read(&dest, "pack.yaml").contains("version: 0.1.0"));
        assert!(!dest.join("README.md").exists());
    }

    #[test]
    fn annotated_tag_is_peeled_to_its_commit() {
        let _g = shared();
        let s = served();
        let (_t, dest, c) = clone_ok(&s.daemon.url("pack.git"), Some("v1.0.0"));
        assert_eq!(c.commit, s.commits.c1);
        assert_ne!(c.commit, s.commits.annotated_tag_object);
        assert!(c.shallow);
        assert!(read(&dest, "pack.yaml").contains("version: 0.1.0"));
    }

    #[test]
    fn full_ref_name_and_branch_before_tag() {
        let _g = shared();
        let s = served();
        let url = s.daemon.url("pack.git");
        // branch `both` → c2 wins over tag `both` → c1
        assert_eq!(clone_ok(&url, Some("both")).2.commit, s.commits.c2);
        assert_eq!(
            clone_ok(&url, Some("refs/tags/both")).2.commit,
            s.commits.c1
        );
    }

    #[test]
    fn full_sha_of_a_tip_is_fetched_shallow() {
        let _g = shared();
        let s = served();
        let (_t, dest, c) = clone_ok(&s.daemon.url("pack.git"), Some(&s.commits.c4));
        assert_eq!(c.commit, s.commits.c4);
        assert!(c.shallow);
        assert_eq!(read(&dest, "dev.txt"), "two\n");
    }

    #[test]
    fn full_sha_not_advertised_falls_back_to_full_fetch() {
        let _g = shared();
        let s = served();
        let (reporter, mut rx) = Reporter::channel("demo");
        let (_t, dest, r) = run(
            &s.daemon.url("pack.git"),
            Some(&s.commits.c3),
            &GitCredentials::default(),
            &reporter,
            Duration::from_secs(60),
        );
        let c = r.unwrap();
        assert_eq!(c.commit, s.commits.c3);
        assert!(!c.shallow);
        assert_eq!(read(&dest, "dev.txt"), "one\n");
        assert!(!dest.join(".git").exists());
        let events = drain(&mut rx);
        assert!(
            events.iter().any(|e| e.level == Level::Warning),
            "{events:?}"
        );
    }

    #[test]
    fn full_sha_fetched_directly_when_server_allows_it() {
        let _g = shared();
        let s = served();
        let repo = s.base.path().join("pack.git");
        git(
            &repo,
            &["config", "uploadpack.allowReachableSHA1InWant", "true"],
        );
        let (_t, dest, c) = clone_ok(&s.daemon.url("pack.git"), Some(&s.commits.c3));
        assert_eq!(c.commit, s.commits.c3);
        assert!(c.shallow);
        assert_eq!(read(&dest, "dev.txt"), "one\n");
    }

    #[test]
    fn short_sha_uses_full_fetch() {
        let _g = shared();
        let s = served();
        let (_t, dest, c) = clone_ok(&s.daemon.url("pack.git"), Some(&s.commits.c3[..7]));
        assert_eq!(c.commit, s.commits.c3);
        assert!(!c.shallow);
        assert_eq!(read(&dest, "dev.txt"), "one\n");
        let upper = s.commits.c1[..10].to_ascii_uppercase();
        assert_eq!(
            clone_ok(&s.daemon.url("pack.git"), Some(&upper)).2.commit,
            s.commits.c1
        );
    }

    #[test]
    fn ambiguous_short_sha() {
        let _g = shared();
        let s = served();
        // Two blobs whose ids share the first 4 hex digits, made reachable.
        let mut seen = std::collections::HashMap::new();
        let (a, b) = (0u32..)
            .find_map(|i| {
                let data = format!("collide {i}\n");
                let id = Oid::hash_object(git2::ObjectType::Blob, data.as_bytes()).unwrap();
                let prefix = id.to_string()[..4].to_string();
                seen.insert(prefix, data.clone()).map(|other| (other, data))
            })
            .unwrap();
        let prefix = Oid::hash_object(git2::ObjectType::Blob, a.as_bytes())
            .unwrap()
            .to_string()[..4]
            .to_string();
        let work = s.base.path().join("collide.work");
        git(
            s.base.path(),
            &[
                "clone",
                "-q",
                s.base.path().join("pack.git").to_str().unwrap(),
                "collide.work",
            ],
        );
        std::fs::write(work.join("a.txt"), &a).unwrap();
        std::fs::write(work.join("b.txt"), &b).unwrap();
        git(&work, &["add", "-A"]);
        git(&work, &["commit", "-q", "-m", "collide"]);
        git(&work, &["push", "-q", "origin", "HEAD:refs/heads/collide"]);
        let (_t, _d, r) = run(
            &s.daemon.url("pack.git"),
            Some(&prefix),
            &GitCredentials::default(),
            &Reporter::noop(),
            Duration::from_secs(60),
        );
        assert!(
            matches!(r, Err(GitError::AmbiguousCommit { .. })),
            "{prefix}: {r:?}"
        );
    }

    #[test]
    fn unknown_reference_lists_lookups() {
        let _g = shared();
        let s = served();
        for reference in ["nope", "deadbeef", &"d".repeat(40)] {
            let (_t, _d, r) = run(
                &s.daemon.url("pack.git"),
                Some(reference),
                &GitCredentials::default(),
                &Reporter::noop(),
                Duration::from_secs(60),
            );
            let err = r.unwrap_err();
            assert!(
                matches!(err, GitError::ReferenceNotFound { .. }),
                "{reference}: {err:?}"
            );
            let text = err.to_string();
            assert!(text.contains(&format!("refs/heads/{reference}")), "{text}");
            assert!(text.contains(&format!("refs/tags/{reference}")), "{text}");
            assert!(text.contains("commit"), "{text}");
        }
    }

    #[test]
    fn invalid_references_fail_before_network() {
        let silent = SilentServer::start();
        let url = format!("git://127.0.0.1:{}/pack.git", silent.port);
        for reference in [
            "--upload-pack=x",
            "-b",
            "a b",
            "a\tb",
            "a..b",
            "a:b",
            "a\nb",
            "a\u{7}",
            "",
            "feat*",
            "HEAD@{1}",
            "v1^{}",
        ] {
            let start = Instant::now();
            let (_t, dest, r) = run(
                &url,
                Some(reference),
                &GitCredentials::default(),
                &Reporter::noop(),
                Duration::from_secs(30),
            );
            assert!(
                matches!(r, Err(GitError::InvalidReference { .. })),
                "{reference:?}: {r:?}"
            );
            assert!(start.elapsed() < Duration::from_secs(2));
            assert!(!dest.exists());
        }
    }

    #[test]
    fn smart_http_clone_and_tag() {
        let _g = shared();
        let base = tempfile::tempdir().unwrap();
        let commits = create_fixture_repo(base.path(), "pack.git");
        let server = HttpGitServer::start(base.path(), HttpOptions::default());
        let (_t, dest, c) = clone_ok(&server.url("pack.git"), None);
        assert_eq!(c.commit, commits.c2);
        assert!(c.shallow);
        assert!(read(&dest, "pack.yaml").contains("0.2.0"));
        let (_t, _d, c) = clone_ok(&server.url("pack.git"), Some("v1.0.0"));
        assert_eq!(c.commit, commits.c1);
        let (_t, _d, c) = clone_ok(&server.url("pack.git"), Some(&commits.c3[..8]));
        assert_eq!(c.commit, commits.c3);
        assert!(!c.shallow);
    }

    #[test]
    fn smart_http_basic_auth() {
        let _g = shared();
        let base = tempfile::tempdir().unwrap();
        let commits = create_fixture_repo(base.path(), "pack.git");
        let token = "s3cr3t-t0ken-value";
        let server = HttpGitServer::start(
            base.path(),
            HttpOptions {
                basic_auth: Some((DEFAULT_TOKEN_USERNAME.into(), token.into())),
                throttle: None,
            },
        );
        let url = server.url("pack.git");
        let reporter = Reporter::noop();
        let long = Duration::from_secs(60);

        let good = GitCredentials {
            https_token: Some(token.into()),
            ..Default::default()
        };
        let (_t, dest, r) = run(&url, Some("dev"), &good, &reporter, long);
        assert_eq!(r.unwrap().commit, commits.c4);
        assert!(!dest.join(".git").exists());

        let (_t, _d, r) = run(&url, None, &GitCredentials::default(), &reporter, long);
        assert!(matches!(r, Err(GitError::Auth { .. })), "{r:?}");

        let wrong = GitCredentials {
            https_token: Some("wrong-token-value".into()),
            ..Default::default()
        };
        let (_t, _d, r) = run(&url, None, &wrong, &reporter, long);
        let err = r.unwrap_err();
        assert!(matches!(err, GitError::Auth { .. }), "{err:?}");
        assert!(!err.to_string().contains("wrong-token-value"));
        assert!(!format!("{err:?}").contains("wrong-token-value"));

        // Token in the URL userinfo: works, and is never printed.
        let with_userinfo = url.replace(
            "http://",
            &format!("http://{DEFAULT_TOKEN_USERNAME}:{token}@"),
        );
        let (_t, _d, r) = run(
            &with_userinfo,
            None,
            &GitCredentials::default(),
            &reporter,
            long,
        );
        assert_eq!(r.unwrap().commit, commits.c2);
        let bad_userinfo = url.replace("http://", "http://someone:urlsecret99@");
        let (_t, _d, r) = run(
            &bad_userinfo,
            None,
            &GitCredentials::default(),
            &reporter,
            long,
        );
        let err = r.unwrap_err();
        assert!(matches!(err, GitError::Auth { .. }), "{err:?}");
        assert!(!format!("{err} {err:?}").contains("urlsecret99"), "{err}");
    }

    #[test]
    fn silent_server_times_out() {
        let _g = exclusive();
        let silent = SilentServer::start();
        for url in [
            format!("git://127.0.0.1:{}/pack.git", silent.port),
            format!("http://127.0.0.1:{}/pack.git", silent.port),
            format!("ssh://git@127.0.0.1:{}/pack.git", silent.port),
        ] {
            let start = Instant::now();
            let (_t, _d, r) = run(
                &url,
                None,
                &GitCredentials::default(),
                &Reporter::noop(),
                Duration::from_secs(2),
            );
            let elapsed = start.elapsed();
            assert!(
                matches!(r, Err(GitError::Timeout { secs: 2 })),
                "{url}: {r:?}"
            );
            assert!(elapsed < Duration::from_secs(10), "{elapsed:?}");
        }
    }

    #[test]
    fn already_cancelled_reporter() {
        let _g = shared();
        let s = served();
        let (reporter, rx) = Reporter::channel("demo");
        drop(rx);
        let (_t, dest, r) = run(
            &s.daemon.url("pack.git"),
            None,
            &GitCredentials::default(),
            &reporter,
            Duration::from_secs(60),
        );
        assert!(matches!(r, Err(GitError::Cancelled)), "{r:?}");
        assert!(!dest.join("pack.yaml").exists());
    }

    fn slow_server() -> (tempfile::TempDir, HttpGitServer) {
        let base = tempfile::tempdir().unwrap();
        create_big_repo(base.path(), "big.git", 600 * 1024);
        let server = HttpGitServer::start(
            base.path(),
            HttpOptions {
                basic_auth: None,
                throttle: Some(Duration::from_millis(25)),
            },
        );
        (base, server)
    }

    #[test]
    fn cancelled_during_transfer() {
        let _g = shared();
        let (_base, server) = slow_server();
        let (reporter, mut rx) = Reporter::channel("big");
        // Drop the receiver as soon as the first object count arrives.
        let watcher = std::thread::spawn(move || {
            while let Some(e) = rx.blocking_recv() {
                if e.stage == Stage::Fetch && e.done.is_some() {
                    break;
                }
            }
        });
        let start = Instant::now();
        let (_t, _d, r) = run(
            &server.url("big.git"),
            None,
            &GitCredentials::default(),
            &reporter,
            Duration::from_secs(120),
        );
        watcher.join().unwrap();
        assert!(matches!(r, Err(GitError::Cancelled)), "{r:?}");
        assert!(start.elapsed() < Duration::from_secs(60));
    }

    #[test]
    fn deadline_during_transfer() {
        let _g = exclusive();
        let (_base, server) = slow_server();
        let (reporter, mut rx) = Reporter::channel("big");
        let start = Instant::now();
        let (_t, _d, r) = run(
            &server.url("big.git"),
            None,
            &GitCredentials::default(),
            &reporter,
            Duration::from_millis(2500),
        );
        assert!(matches!(r, Err(GitError::Timeout { secs: 3 })), "{r:?}");
        assert!(start.elapsed() < Duration::from_secs(10));
        // Progress was throttled: at most ~10 counts per second.
        let counts = drain(&mut rx)
            .into_iter()
            .filter(|e| e.stage == Stage::Fetch && e.done.is_some())
            .count();
        assert!((1..=40).contains(&counts), "{counts}");
    }

    #[test]
    fn https_to_nothing_is_a_network_error() {
        let _g = shared();
        let port = closed_port();
        for verify_ssl in [true, false] {
            let tmp = tempfile::tempdir().unwrap();
            let dest = dest_in(tmp.path());
            let url = format!("https://user:topsecret@127.0.0.1:{port}/org/pack.git?x=1");
            let opts = CloneOptions {
                url: &url,
                reference: Some("main"),
                dest: &dest,
                credentials: &GitCredentials::default(),
                verify_ssl,
                timeout: Duration::from_secs(30),
            };
            let err = clone_pack(&opts, &Reporter::noop()).unwrap_err();
            assert!(matches!(err, GitError::Network { .. }), "{err:?}");
            let text = format!("{err} {err:?}");
            assert!(!text.contains("topsecret"), "{text}");
            assert!(
                text.contains(&format!("https://127.0.0.1:{port}/org/pack.git")),
                "{text}"
            );
        }
    }

    #[test]
    fn ssh_to_nothing_is_a_network_error() {
        let _g = shared();
        let port = closed_port();
        let creds = GitCredentials {
            ssh_key_path: Some("/nonexistent/id_ed25519".into()),
            ssh_key_passphrase: Some("sshpass-secret".into()),
            ..Default::default()
        };
        let url = format!("ssh://git@127.0.0.1:{port}/org/pack.git");
        let (_t, _d, r) = run(
            &url,
            None,
            &creds,
            &Reporter::noop(),
            Duration::from_secs(30),
        );
        let err = r.unwrap_err();
        assert!(matches!(err, GitError::Network { .. }), "{err:?}");
        assert!(!format!("{err:?}").contains("sshpass-secret"));
    }

    #[test]
    fn destination_must_be_empty() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(tmp.path().join("x"), "x").unwrap();
        let opts = CloneOptions {
            url: "git://127.0.0.1:1/pack.git",
            reference: None,
            dest: tmp.path(),
            credentials: &GitCredentials::default(),
            verify_ssl: true,
            timeout: Duration::from_secs(5),
        };
        let err = clone_pack(&opts, &Reporter::noop()).unwrap_err();
        assert!(
            matches!(err, GitError::DestinationNotEmpty { .. }),
            "{err:?}"
        );
    }

    #[test]
    fn existing_empty_destination_and_file_transport() {
        let _g = shared();
        let base = tempfile::tempdir().unwrap();
        let commits = create_fixture_repo(base.path(), "pack.git");
        let url = format!("file://{}", base.path().join("pack.git").display());
        let tmp = tempfile::tempdir().unwrap();
        for (reference, expected) in [(None, &commits.c2), (Some("v1.0.0"), &commits.c1)] {
            let dest = tmp.path().join(format!("d{}", reference.is_some()));
            std::fs::create_dir(&dest).unwrap();
            let opts = CloneOptions {
                url: &url,
                reference,
                dest: &dest,
                credentials: &GitCredentials::default(),
                verify_ssl: true,
                timeout: Duration::from_secs(60),
            };
            let c = clone_pack(&opts, &Reporter::noop()).unwrap();
            assert_eq!(&c.commit, expected);
            assert!(!c.shallow);
            assert!(!dest.join(".git").exists());
        }
        // Short SHA over the local transport (no shallow attempt at all).
        let dest = tmp.path().join("short");
        let opts = CloneOptions {
            url: &url,
            reference: Some(&commits.c3[..6]),
            dest: &dest,
            credentials: &GitCredentials::default(),
            verify_ssl: true,
            timeout: Duration::from_secs(60),
        };
        assert_eq!(
            clone_pack(&opts, &Reporter::noop()).unwrap().commit,
            commits.c3
        );
    }

    #[test]
    fn empty_repository() {
        let _g = shared();
        let base = tempfile::tempdir().unwrap();
        git(base.path(), &["init", "-q", "--bare", "empty.git"]);
        let daemon = GitDaemon::start(base.path());
        let (_t, _d, r) = run(
            &daemon.url("empty.git"),
            None,
            &GitCredentials::default(),
            &Reporter::noop(),
            Duration::from_secs(30),
        );
        assert!(matches!(r, Err(GitError::EmptyRepository { .. })), "{r:?}");
        let (_t, _d, r) = run(
            &daemon.url("missing.git"),
            None,
            &GitCredentials::default(),
            &Reporter::noop(),
            Duration::from_secs(30),
        );
        assert!(r.is_err(), "{r:?}");
    }

    // ---- pure unit tests -------------------------------------------------

    #[test]
    fn url_classification() {
        use Transport::*;
        for (url, t) in [
            ("https://github.com/org/pack.git", Https),
            ("HTTP://host/x", Http),
            ("ssh://git@host:2222/org/pack.git", Ssh),
            ("git@github.com:org/pack.git", Ssh),
            ("host:org/pack.git", Ssh),
            ("git://host/pack.git", Git),
            ("file:///srv/pack.git", File),
        ] {
            assert_eq!(classify_url(url).unwrap(), t, "{url}");
        }
        for url in [
            "",
            "/srv/pack.git",
            "./pack",
            "ftp://host/x",
            "-uhttps://x",
            "https://",
            "https://host/a b",
            "ext::sh -c touch% /tmp/pwned",
        ] {
            assert!(
                matches!(classify_url(url), Err(GitError::UnsupportedUrl { .. })),
                "{url}"
            );
        }
    }

    #[test]
    fn url_redaction() {
        assert_eq!(
            redact_url("https://user:tok@github.com/org/p.git?private_token=x#f"),
            "https://github.com/org/p.git"
        );
        assert_eq!(redact_url("https://tok@host"), "https://host");
        assert_eq!(
            redact_url("ssh://git@host:22/org/p.git"),
            "ssh://host:22/org/p.git"
        );
        assert_eq!(redact_url("git@host:org/p.git"), "git@host:org/p.git");
        assert_eq!(redact_url("git://host/p.git"), "git://host/p.git");
    }

    #[test]
    fn reference_validation() {
        for ok in [
            "main",
            "v1.0.0",
            "feature/x",
            "refs/tags/v1",
            "abc1234",
            "release-1_2",
        ] {
            validate_reference(ok).unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
        for bad in [
            "-x", "a..b", "a:b", "a b", "x\u{0}", "a.lock", "a/", "/a", "a//b",
        ] {
            assert!(
                matches!(
                    validate_reference(bad),
                    Err(GitError::InvalidReference { .. })
                ),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn credential_callback_https_token() {
        let creds = GitCredentials {
            https_token: Some("tok".into()),
            ..Default::default()
        };
        let mut st = CredentialState::default();
        assert_eq!(
            st.next(&creds, None, CredentialType::USER_PASS_PLAINTEXT),
            Ok(CredentialChoice::UserPass {
                username: DEFAULT_TOKEN_USERNAME.into(),
                password: "tok".into()
            })
        );
        // Rejected once: give up instead of looping.
        let err = st
            .next(&creds, None, CredentialType::USER_PASS_PLAINTEXT)
            .unwrap_err();
        assert!(!err.contains("tok\""), "{err}");

        let named = GitCredentials {
            https_username: Some("alice".into()),
            https_token: Some("tok".into()),
            ..Default::default()
        };
        assert_eq!(
            CredentialState::default().next(
                &named,
                Some("bob"),
                CredentialType::USER_PASS_PLAINTEXT
            ),
            Ok(CredentialChoice::UserPass {
                username: "alice".into(),
                password: "tok".into()
            })
        );
        let url_user = GitCredentials {
            https_token: Some("tok".into()),
            ..Default::default()
        };
        assert!(matches!(
            CredentialState::default().next(&url_user, Some("bob"), CredentialType::USER_PASS_PLAINTEXT),
            Ok(CredentialChoice::UserPass { username, .. }) if username == "bob"
        ));
        assert!(
            CredentialState::default()
                .next(
                    &GitCredentials::default(),
                    None,
                    CredentialType::USER_PASS_PLAINTEXT
                )
                .is_err()
        );
    }

    #[test]
    fn credential_callback_ssh() {
        let creds = GitCredentials {
            ssh_key_path: Some("/keys/id_ed25519".into()),
            ssh_key_passphrase: Some("pw".into()),
            use_ssh_agent: true,
            ..Default::default()
        };
        let mut st = CredentialState::default();
        assert_eq!(
            st.next(&creds, None, CredentialType::USERNAME),
            Ok(CredentialChoice::Username("git".into()))
        );
        assert_eq!(
            st.next(&creds, Some("deploy"), CredentialType::SSH_KEY),
            Ok(CredentialChoice::SshKey {
                username: "deploy".into(),
                private_key: "/keys/id_ed25519".into(),
                passphrase: Some("pw".into())
            })
        );
        assert_eq!(
            st.next(&creds, Some("deploy"), CredentialType::SSH_KEY),
            Ok(CredentialChoice::SshAgent {
                username: "deploy".into()
            })
        );
        assert!(
            st.next(&creds, Some("deploy"), CredentialType::SSH_KEY)
                .is_err()
        );

        let agent_only = GitCredentials {
            use_ssh_agent: true,
            ..Default::default()
        };
        let mut st = CredentialState::default();
        assert!(matches!(
            st.next(&agent_only, Some("git"), CredentialType::SSH_KEY),
            Ok(CredentialChoice::SshAgent { .. })
        ));
        assert!(
            st.next(&agent_only, Some("git"), CredentialType::SSH_KEY)
                .is_err()
        );
        assert!(
            CredentialState::default()
                .next(
                    &GitCredentials::default(),
                    Some("git"),
                    CredentialType::SSH_KEY
                )
                .is_err()
        );
        // Bounded even if libgit2 keeps asking for usernames.
        let mut st = CredentialState::default();
        let n = (0..20)
            .take_while(|_| st.next(&creds, None, CredentialType::USERNAME).is_ok())
            .count();
        assert_eq!(n as u32, MAX_CREDENTIAL_CALLBACKS);
    }

    #[test]
    fn credentials_debug_is_redacted() {
        let creds = GitCredentials {
            https_username: Some("alice".into()),
            https_token: Some("tok-123".into()),
            ssh_key_passphrase: Some("pass-456".into()),
            ..Default::default()
        };
        let text = format!("{creds:?}");
        assert!(
            !text.contains("tok-123") && !text.contains("pass-456"),
            "{text}"
        );
        assert!(text.contains("alice"));
    }

    #[test]
    fn base64_helper() {
        assert_eq!(base64(b"user:pass"), "dXNlcjpwYXNz");
        assert_eq!(base64(b"a"), "YQ==");
        assert_eq!(base64(b"ab"), "YWI=");
    }
}
