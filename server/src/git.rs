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
    #[error("cannot make libgit2 ignore the user's git configuration: {0}")]
    IgnoreUserConfig(#[source] git2::Error),
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

/// The URL as it may be shown or stored (see [`crate::source::redact_url`]).
pub fn redact_url(url: &str) -> String {
    crate::source::redact_url(url)
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

/// Sets up libgit2 for the server: what git does must depend on the server's
/// configuration only, not on the git configuration of the user it runs as (see
/// [`ignore_user_git_config`]).
///
/// # Safety
/// Changes libgit2 process globals without synchronization: call it once at
/// process start, before any other thread uses git2.
pub unsafe fn init() -> Result<(), GitError> {
    // SAFETY: forwarded to the caller (see above).
    unsafe { ignore_user_git_config() }
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
        unsafe { git2::opts::set_search_path(level, "") }.map_err(GitError::IgnoreUserConfig)?;
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

/// Why the credentials callback gives up (no secrets in it).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CredentialRefusal {
    #[error("too many authentication attempts")]
    TooManyAttempts,
    #[error("the server rejected the configured username/token")]
    TokenRejected,
    #[error("the server requires authentication and no https_token is configured")]
    NoToken,
    #[error("the server rejected the configured SSH key/agent identities")]
    SshIdentitiesRejected,
    #[error(
        "the server requires an SSH key and neither ssh_key_path nor use_ssh_agent is configured"
    )]
    NoSshIdentity,
    #[error("the server asked for an unsupported authentication method")]
    UnsupportedMethod,
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
    ) -> Result<CredentialChoice, CredentialRefusal> {
        self.calls += 1;
        if self.calls > MAX_CREDENTIAL_CALLBACKS {
            return Err(CredentialRefusal::TooManyAttempts);
        }
        let ssh_user = || username_from_url.unwrap_or("git").to_string();
        if allowed.contains(CredentialType::USER_PASS_PLAINTEXT) {
            if self.tried_userpass {
                return Err(CredentialRefusal::TokenRejected);
            }
            let Some(token) = creds.https_token.as_ref() else {
                return Err(CredentialRefusal::NoToken);
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
                CredentialRefusal::SshIdentitiesRejected
            } else {
                CredentialRefusal::NoSshIdentity
            });
        }
        Err(CredentialRefusal::UnsupportedMethod)
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
                Err(refusal) => {
                    let reason = refusal.to_string();
                    let error = git2::Error::from_str(&reason);
                    *self.abort.borrow_mut() = Some(Abort::Auth(reason));
                    Err(error)
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

#[tracing::instrument(name = "git_ls_remote", level = "debug", skip_all)]
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
        .collect::<Vec<_>>();
    tracing::debug!(refs = refs.len(), "remote refs listed");
    Ok(refs)
}

#[tracing::instrument(name = "git_fetch", level = "debug", skip_all, fields(refspecs = ?refspecs, depth = depth))]
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
    tracing::debug!(objects = stats.received_objects(), "fetched");
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
#[tracing::instrument(
    name = "git_clone",
    level = "debug",
    skip_all,
    fields(url = %redact_url(opts.url), reference = opts.reference.unwrap_or("HEAD"))
)]
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
    tracing::debug!(?plan, "reference planned");
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
    tracing::debug!(commit = %commit_hex, shallow, "checked out");
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

#[cfg(test)]
mod tests {
    //! Pure unit tests. Clones against real servers (git daemon, smart HTTP,
    //! file://) live in the integration tests: server/tests/it/git.rs.
    use super::*;

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
            "ssh://git@host:22/org/p.git"
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
            .unwrap_err()
            .to_string();
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
}
