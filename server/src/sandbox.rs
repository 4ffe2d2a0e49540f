//! Confinement of pack code: pack tests and pip / npm / venv builds (everything
//! [`crate::process::run`] starts) run as an unprivileged user and, where the kernel
//! has Landlock, may only read the system and their own directories and write only
//! their own build or temporary directories.
//!
//! The sandbox is a property of the process, like the user it runs as and the kernel
//! it runs on: [`install`] decides it once at start (`state::open`) and every later
//! spawn uses it. Until it is installed (unit tests, tools) children run unconfined.
//!
//! Layers, each useful alone:
//!
//! * **User.** As root the server switches children to `sandbox.run_as_user`
//!   (created with `useradd --system` when missing and `sandbox.create_user` is on),
//!   with its primary group and no supplementary groups. Not root: children run as
//!   the server's user, which cannot switch; the other layers still apply.
//! * **Landlock.** A ruleset is built in the parent for every spawn (allocating after
//!   `fork` in a multi-threaded server is unsafe); the child only calls
//!   `prctl(PR_SET_NO_NEW_PRIVS)` and `landlock_restrict_self` before `exec`.
//!   Readable: system directories ([`SYSTEM_READ_PATHS`]), `sandbox.extra_read_paths`
//!   and what the caller names; writable: the private run directory and what the
//!   caller names; `/dev/null` is writable. Everything else (the data dir, other
//!   packs, `/root`, `/home`, the rest of `/tmp`) is denied.
//! * **Ownership.** Directories pack code must write (a build directory, the pip/npm
//!   caches) are handed to the runner with [`hand_over`] and taken back with
//!   [`reclaim`] before they are used, so nothing registered stays writable by it.
//!
//! Secret values known to the process are registered with [`register_secret`] and
//! replaced by `[REDACTED]` in progress events, log lines and results ([`scrub`]).

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use crate::config::SandboxSection;

/// Read (and execute) for everyone in the sandbox: what interpreters, compilers and
/// package managers need, nothing that holds the server's state.
pub const SYSTEM_READ_PATHS: &[&str] = &[
    "/usr",
    "/lib",
    "/lib32",
    "/lib64",
    "/libx32",
    "/bin",
    "/sbin",
    "/etc",
    "/proc",
    "/sys",
    "/dev",
    // Where /etc/resolv.conf points on systemd and resolvconf hosts.
    "/run/systemd/resolve",
    "/run/resolvconf",
];

/// Written to by nearly every tool.
const SYSTEM_WRITE_FILES: &[&str] = &["/dev/null"];

pub use attune_packs_core::secrets::{REDACTED, register_secret, scrub, scrub_string};

#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error(
        "sandbox.run_as_user `{user}` does not exist; create it with `useradd --system --no-create-home --shell /usr/sbin/nologin {user}` or set sandbox.create_user: true"
    )]
    NoSuchUser { user: String },
    #[error(
        "cannot create the sandbox user `{user}` (`useradd --system --no-create-home --shell /usr/sbin/nologin {user}` {status}); create it by hand or set sandbox.run_as_user"
    )]
    CreateUser { user: String, status: String },
    #[error("sandbox.run_as_user `{user}` is not a valid user name")]
    InvalidUser { user: String },
    #[error("sandbox.landlock is `required` but this kernel has no Landlock ({reason})")]
    LandlockRequired { reason: String },
    #[error("cannot build the Landlock ruleset: {source}")]
    Ruleset {
        #[source]
        source: io::Error,
    },
    #[error("cannot hand {path} to the sandbox user: {source}")]
    Chown {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// The user pack code runs as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunAs {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
}

/// What the process can do to confine its children.
#[derive(Debug, Clone)]
pub struct Sandbox {
    /// `None`: children keep the server's user (it is not root, or chose root).
    pub run_as: Option<RunAs>,
    /// The Landlock ABI in use; `None`: unavailable or switched off.
    pub landlock_abi: Option<u32>,
    /// Why Landlock is not in use, for the start-up log.
    pub landlock_note: Option<String>,
    pub extra_read_paths: Vec<PathBuf>,
    /// The server's own user and group: owner of everything taken back.
    pub server_uid: u32,
    pub server_gid: u32,
}

/// The paths one child may use beyond the system ones.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Access {
    /// Read and execute, recursively.
    pub read: Vec<PathBuf>,
    /// Read, write, create and remove, recursively.
    pub write: Vec<PathBuf>,
}

static CURRENT: RwLock<Option<Arc<Sandbox>>> = RwLock::new(None);
/// Serialises user creation: parallel starts (tests) would race `useradd`.
static USER_CREATION: Mutex<()> = Mutex::new(());

/// The sandbox children are confined by, once [`install`] ran.
pub fn current() -> Option<Arc<Sandbox>> {
    CURRENT.read().unwrap_or_else(|e| e.into_inner()).clone()
}

/// Decides the sandbox from `settings` and makes it the process's; logs which
/// protections are active.
pub fn install(settings: &SandboxSection) -> Result<Arc<Sandbox>, SandboxError> {
    let sandbox = Arc::new(Sandbox::from_settings(settings)?);
    match &sandbox.run_as {
        Some(user) => tracing::info!(
            user = %user.name, uid = user.uid, gid = user.gid,
            "pack code runs as an unprivileged user"
        ),
        None => tracing::warn!(
            uid = sandbox.server_uid,
            "pack code runs as the server's own user (no switch possible or configured)"
        ),
    }
    match (sandbox.landlock_abi, &sandbox.landlock_note) {
        (Some(abi), _) => tracing::info!(abi, "Landlock confines pack code's file access"),
        (None, note) => tracing::warn!(
            reason = note.as_deref().unwrap_or("unknown"),
            "Landlock unavailable: pack code's file access is limited by permissions only"
        ),
    }
    *CURRENT.write().unwrap_or_else(|e| e.into_inner()) = Some(sandbox.clone());
    Ok(sandbox)
}

impl Sandbox {
    pub fn from_settings(settings: &SandboxSection) -> Result<Self, SandboxError> {
        // SAFETY: getuid/getgid cannot fail and touch no memory.
        let (server_uid, server_gid) = unsafe { (libc::getuid(), libc::getgid()) };
        let run_as = if server_uid == 0 && settings.run_as_user != "root" {
            Some(resolve_user(&settings.run_as_user, settings.create_user)?)
        } else {
            if server_uid != 0 {
                tracing::debug!(
                    user = %settings.run_as_user,
                    "not root: sandbox.run_as_user does not apply"
                );
            }
            None
        };
        let (landlock_abi, landlock_note) = match settings.landlock {
            crate::config::LandlockMode::Off => (None, Some("sandbox.landlock is off".into())),
            mode => match landlock_abi() {
                Ok(abi) => (Some(abi), None),
                Err(e) if mode == crate::config::LandlockMode::Required => {
                    return Err(SandboxError::LandlockRequired {
                        reason: e.to_string(),
                    });
                }
                Err(e) => (None, Some(format!("kernel: {e}"))),
            },
        };
        Ok(Self {
            run_as,
            landlock_abi,
            landlock_note,
            extra_read_paths: settings.extra_read_paths.clone(),
            server_uid,
            server_gid,
        })
    }

    /// The uid children run as.
    pub fn child_uid(&self) -> u32 {
        self.run_as.as_ref().map_or(self.server_uid, |u| u.uid)
    }

    /// A Landlock ruleset for one child (`None` without Landlock). Built here, in the
    /// parent; the child only enforces it ([`enforce_in_child`]).
    pub fn ruleset(&self, access: &Access) -> Result<Option<OwnedFd>, SandboxError> {
        let Some(abi) = self.landlock_abi else {
            return Ok(None);
        };
        let handled = handled_access(abi);
        let ruleset = create_ruleset(handled).map_err(|source| SandboxError::Ruleset { source })?;
        let read = handled & READ_ACCESS;
        let system = SYSTEM_READ_PATHS.iter().map(PathBuf::from);
        for path in system
            .chain(self.extra_read_paths.iter().cloned())
            .chain(access.read.iter().cloned())
        {
            add_path_rule(&ruleset, &path, read)
                .map_err(|source| SandboxError::Ruleset { source })?;
        }
        for path in SYSTEM_WRITE_FILES
            .iter()
            .map(PathBuf::from)
            .chain(access.write.iter().cloned())
        {
            add_path_rule(&ruleset, &path, handled)
                .map_err(|source| SandboxError::Ruleset { source })?;
        }
        Ok(Some(ruleset))
    }
}

/// The first directory on the way to `dir` (itself included) that the sandbox user
/// cannot pass through, judged by its mode bits for others (that user is in no group
/// of ours and owns nothing there). Pack tests and builds under `dir` fail if there is
/// one.
pub fn unreachable_ancestor(sandbox: &Sandbox, dir: &Path) -> Option<PathBuf> {
    let user = sandbox.run_as.as_ref()?;
    let mut path = PathBuf::new();
    for part in dir.components() {
        path.push(part);
        let Ok(meta) = std::fs::metadata(&path) else {
            break;
        };
        let passable = if meta.uid() == user.uid {
            meta.mode() & 0o100 != 0
        } else if meta.gid() == user.gid {
            meta.mode() & 0o010 != 0
        } else {
            meta.mode() & 0o001 != 0
        };
        if !passable {
            return Some(path);
        }
    }
    None
}

/// Called between `fork` and `exec`: no allocation, raw system calls only.
///
/// # Safety
/// Only to be called in a `pre_exec` hook, with `ruleset` an open Landlock ruleset.
pub unsafe fn enforce_in_child(ruleset: libc::c_int) -> io::Result<()> {
    // SAFETY: plain system calls on integers.
    unsafe {
        // The kernel reads whole registers: pass full-width zeros.
        let (one, zero): (libc::c_ulong, libc::c_ulong) = (1, 0);
        if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, one, zero, zero, zero) != 0 {
            return Err(io::Error::last_os_error());
        }
        if libc::syscall(libc::SYS_landlock_restrict_self, ruleset, 0 as libc::c_uint) != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Makes `path` (recursively, links not followed) owned by the user pack code runs
/// as, so that it can build there. Nothing to do when there is no such user.
pub fn hand_over(path: &Path) -> Result<(), SandboxError> {
    let Some(sandbox) = current() else {
        return Ok(());
    };
    let Some(user) = &sandbox.run_as else {
        return Ok(());
    };
    chown_tree(path, user.uid, user.gid).map_err(|source| SandboxError::Chown {
        path: path.to_path_buf(),
        source,
    })
}

/// Like [`hand_over`], but only when `path` is not already the runner's (caches that
/// grow large are walked once).
pub fn hand_over_once(path: &Path) -> Result<(), SandboxError> {
    let Some(sandbox) = current() else {
        return Ok(());
    };
    let Some(user) = &sandbox.run_as else {
        return Ok(());
    };
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.uid() == user.uid => Ok(()),
        _ => hand_over(path),
    }
}

/// Takes `path` back (recursively, links not followed) for the server's user: what
/// pack code built there stays readable to it but is no longer writable by it.
pub fn reclaim(path: &Path) -> Result<(), SandboxError> {
    let Some(sandbox) = current() else {
        return Ok(());
    };
    if sandbox.run_as.is_none() {
        return Ok(());
    }
    chown_tree(path, sandbox.server_uid, sandbox.server_gid).map_err(|source| SandboxError::Chown {
        path: path.to_path_buf(),
        source,
    })
}

fn chown_tree(root: &Path, uid: u32, gid: u32) -> io::Result<()> {
    let mut stack = vec![root.to_path_buf()];
    while let Some(path) = stack.pop() {
        std::os::unix::fs::lchown(&path, Some(uid), Some(gid))?;
        let meta = std::fs::symlink_metadata(&path)?;
        if meta.is_dir() {
            for entry in std::fs::read_dir(&path)? {
                stack.push(entry?.path());
            }
        }
    }
    Ok(())
}

fn resolve_user(name: &str, create: bool) -> Result<RunAs, SandboxError> {
    let valid = !name.is_empty()
        && name.len() <= 32
        && !name.starts_with('-')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if !valid {
        return Err(SandboxError::InvalidUser {
            user: name.to_string(),
        });
    }
    if let Some(user) = lookup_user(name) {
        return Ok(user);
    }
    if !create {
        return Err(SandboxError::NoSuchUser {
            user: name.to_string(),
        });
    }
    let _serialised = USER_CREATION.lock().unwrap_or_else(|e| e.into_inner());
    // Another server process may hold the password file's lock: retry a little.
    let mut status = String::new();
    for attempt in 0..5 {
        if let Some(user) = lookup_user(name) {
            return Ok(user);
        }
        tracing::info!(
            user = name,
            "creating the sandbox user with useradd --system"
        );
        match std::process::Command::new("useradd")
            .args([
                "--system",
                "--no-create-home",
                "--home-dir",
                "/nonexistent",
                "--shell",
                "/usr/sbin/nologin",
                "--user-group",
                name,
            ])
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .stdin(std::process::Stdio::null())
            .output()
        {
            Ok(out) if out.status.success() => {}
            Ok(out) => {
                status = format!(
                    "failed, {}: {}",
                    out.status,
                    String::from_utf8_lossy(&out.stderr).trim()
                );
            }
            Err(e) => status = format!("could not run: {e}"),
        }
        if let Some(user) = lookup_user(name) {
            return Ok(user);
        }
        std::thread::sleep(std::time::Duration::from_millis(100 << attempt));
    }
    Err(SandboxError::CreateUser {
        user: name.to_string(),
        status,
    })
}

fn lookup_user(name: &str) -> Option<RunAs> {
    let c_name = CString::new(name).ok()?;
    let mut buf = vec![0u8; 16 * 1024];
    // SAFETY: `passwd` is plain data; getpwnam_r fills it with pointers into `buf`,
    // which outlives every use below.
    unsafe {
        let mut pwd: libc::passwd = std::mem::zeroed();
        let mut result: *mut libc::passwd = std::ptr::null_mut();
        let rc = libc::getpwnam_r(
            c_name.as_ptr(),
            &mut pwd,
            buf.as_mut_ptr().cast(),
            buf.len(),
            &mut result,
        );
        if rc != 0 || result.is_null() {
            return None;
        }
        Some(RunAs {
            name: name.to_string(),
            uid: pwd.pw_uid,
            gid: pwd.pw_gid,
        })
    }
}

// Landlock, raw: the uapi of <linux/landlock.h>.
const ACCESS_FS_EXECUTE: u64 = 1 << 0;
const ACCESS_FS_WRITE_FILE: u64 = 1 << 1;
const ACCESS_FS_READ_FILE: u64 = 1 << 2;
const ACCESS_FS_READ_DIR: u64 = 1 << 3;
const ACCESS_FS_REFER: u64 = 1 << 13;
const ACCESS_FS_TRUNCATE: u64 = 1 << 14;
const ACCESS_FS_IOCTL_DEV: u64 = 1 << 15;
const READ_ACCESS: u64 = ACCESS_FS_EXECUTE | ACCESS_FS_READ_FILE | ACCESS_FS_READ_DIR;
/// Rights that apply to a file (the rest only to directories).
const FILE_ACCESS: u64 = ACCESS_FS_EXECUTE
    | ACCESS_FS_WRITE_FILE
    | ACCESS_FS_READ_FILE
    | ACCESS_FS_TRUNCATE
    | ACCESS_FS_IOCTL_DEV;
const CREATE_RULESET_VERSION: u32 = 1 << 0;
const RULE_PATH_BENEATH: libc::c_int = 1;

#[repr(C)]
struct RulesetAttr {
    handled_access_fs: u64,
}

#[repr(C, packed)]
struct PathBeneathAttr {
    allowed_access: u64,
    parent_fd: i32,
}

/// The filesystem rights a ruleset of `abi` handles (every one it knows).
fn handled_access(abi: u32) -> u64 {
    let mut access = (1u64 << 13) - 1;
    if abi >= 2 {
        access |= ACCESS_FS_REFER;
    }
    if abi >= 3 {
        access |= ACCESS_FS_TRUNCATE;
    }
    if abi >= 5 {
        access |= ACCESS_FS_IOCTL_DEV;
    }
    access
}

/// The kernel's Landlock ABI version.
pub fn landlock_abi() -> io::Result<u32> {
    // SAFETY: the version query takes no pointer.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<RulesetAttr>(),
            0usize,
            CREATE_RULESET_VERSION,
        )
    };
    if rc < 0 {
        let err = io::Error::last_os_error();
        return Err(match err.raw_os_error() {
            Some(libc::ENOSYS) => io::Error::new(err.kind(), "Landlock is not built into it"),
            Some(libc::EOPNOTSUPP) => io::Error::new(err.kind(), "Landlock is disabled at boot"),
            _ => err,
        });
    }
    Ok(rc as u32)
}

fn create_ruleset(handled: u64) -> io::Result<OwnedFd> {
    let attr = RulesetAttr {
        handled_access_fs: handled,
    };
    // SAFETY: `attr` is a valid, initialised struct of the size passed.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            &attr as *const RulesetAttr,
            std::mem::size_of::<RulesetAttr>(),
            0u32,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel returned a new file descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as libc::c_int) })
}

/// Allows `access` beneath `path` (for a file: its file rights only). A path that does
/// not exist is skipped: there is nothing to allow.
fn add_path_rule(ruleset: &OwnedFd, path: &Path, access: u64) -> io::Result<()> {
    let file = match std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_PATH | libc::O_CLOEXEC)
        .open(path)
    {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io::Error::new(e.kind(), format!("{}: {e}", path.display()))),
    };
    let is_dir = file.metadata().map(|m| m.is_dir()).unwrap_or(false);
    let attr = PathBeneathAttr {
        allowed_access: if is_dir { access } else { access & FILE_ACCESS },
        parent_fd: file.as_raw_fd(),
    };
    // SAFETY: `attr` is a valid struct; both descriptors are open for the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_landlock_add_rule,
            ruleset.as_raw_fd(),
            RULE_PATH_BENEATH,
            &attr as *const PathBeneathAttr,
            0u32,
        )
    };
    if rc != 0 {
        let e = io::Error::last_os_error();
        return Err(io::Error::new(e.kind(), format!("{}: {e}", path.display())));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_events_are_scrubbed() {
        register_secret("reporter-test-secret-0123456789");
        let (reporter, mut rx) = crate::progress::Reporter::channel("p");
        reporter.info(
            crate::progress::Stage::Test,
            "[t] reporter-test-secret-0123456789",
        );
        assert_eq!(rx.try_recv().unwrap().message, "[t] [REDACTED]");
    }

    #[test]
    fn unreachable_directories_are_found() {
        let dir = tempfile::tempdir().unwrap();
        let closed = dir.path().join("closed");
        let open = dir.path().join("open");
        for (d, mode) in [(&closed, 0o700), (&open, 0o755)] {
            std::fs::create_dir(d).unwrap();
            std::fs::set_permissions(d, std::os::unix::fs::PermissionsExt::from_mode(mode))
                .unwrap();
        }
        std::fs::set_permissions(
            dir.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .unwrap();
        let sandbox = Sandbox {
            run_as: Some(RunAs {
                name: "nobody".into(),
                uid: 65534,
                gid: 65534,
            }),
            landlock_abi: None,
            landlock_note: None,
            extra_read_paths: Vec::new(),
            server_uid: 0,
            server_gid: 0,
        };
        assert_eq!(
            unreachable_ancestor(&sandbox, &closed.join("packs")),
            Some(closed.clone())
        );
        assert_eq!(unreachable_ancestor(&sandbox, &open.join("packs")), None);
        let own = Sandbox {
            run_as: None,
            ..sandbox
        };
        assert_eq!(unreachable_ancestor(&own, &closed), None);
    }

    #[test]
    fn handled_rights_follow_the_abi() {
        assert_eq!(handled_access(1), 0x1fff);
        assert_eq!(handled_access(2), 0x3fff);
        assert_eq!(handled_access(3), 0x7fff);
        assert_eq!(handled_access(4), 0x7fff);
        assert_eq!(handled_access(5), 0xffff);
        assert_eq!(READ_ACCESS & !handled_access(1), 0);
    }

    #[test]
    fn invalid_user_names_are_refused_before_any_command() {
        for bad in ["", "-rf", "a b", "x;id", &"n".repeat(40)] {
            let err = resolve_user(bad, true).unwrap_err();
            assert!(
                matches!(err, SandboxError::InvalidUser { .. }),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn a_missing_user_is_created_as_a_system_user() {
        // SAFETY: getuid cannot fail.
        if unsafe { libc::getuid() } != 0 || lookup_user("root").is_none() {
            eprintln!("notice: not root; user creation is not tested");
            return;
        }
        let name = format!("atp-test-{}", std::process::id());
        let user = resolve_user(&name, true).unwrap();
        let again = resolve_user(&name, true).unwrap();
        let _ = std::process::Command::new("userdel").arg(&name).status();
        assert_eq!(user, again, "an existing user is found, not created twice");
        assert_ne!(user.uid, 0);
        assert_ne!(user.gid, 0);
    }

    #[test]
    fn missing_user_without_creation_names_the_command() {
        let err = resolve_user("attune-no-such-user-x", false).unwrap_err();
        let message = err.to_string();
        assert!(message.contains("useradd --system"), "{message}");
        assert!(message.contains("sandbox.create_user"), "{message}");
    }

    #[test]
    fn rules_for_missing_paths_are_skipped_and_files_get_file_rights() {
        let Ok(abi) = landlock_abi() else {
            eprintln!("notice: no Landlock on this kernel; ruleset test skipped");
            return;
        };
        let sandbox = Sandbox {
            run_as: None,
            landlock_abi: Some(abi),
            landlock_note: None,
            extra_read_paths: vec![PathBuf::from("/definitely/not/here")],
            server_uid: 0,
            server_gid: 0,
        };
        let access = Access {
            read: vec![PathBuf::from("/etc/hostname")],
            write: vec![std::env::temp_dir()],
        };
        assert!(sandbox.ruleset(&access).unwrap().is_some());
        let off = Sandbox {
            landlock_abi: None,
            ..sandbox
        };
        assert!(off.ruleset(&access).unwrap().is_none());
    }
}
