//! Exclusive access to pack directories, for every stage that changes one: Download
//! placing `<destination_dir>/<ref>`, RegisterBatch swapping `<packs_base_dir>/<ref>`,
//! BuildEnvs building and switching `<envs_root>/<ref>`.
//!
//! Within the process each directory has one async mutex, keyed by its canonical path
//! so that two spellings of one directory exclude each other, and waiters sleep
//! instead of polling. Across processes, environments also take `flock(2)` on
//! `<dir>/.lock`: nothing else would stop another server sharing the directory from
//! building into it. A registration needs no file lock, since the database's pack
//! write lock already covers other processes; a placement is a single rename.

use std::{
    collections::HashMap,
    fs::File,
    io,
    os::unix::{fs::OpenOptionsExt, io::AsRawFd},
    path::{Path, PathBuf},
    sync::{Arc, Mutex, Weak},
    time::Duration,
};

use tokio::{sync::OwnedMutexGuard, time::Instant};

/// The file inside a directory that [`PackLocks::lock_across_processes`] holds
/// `flock` on.
pub const LOCK_FILE: &str = ".lock";

/// How often a `flock` held by another process is tried again.
const FLOCK_RETRY: Duration = Duration::from_millis(25);

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("cannot create {}: {source}", dir.display())]
    CreateDir {
        dir: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot open {}: {source}", path.display())]
    OpenLockFile {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot lock {}: {source}", path.display())]
    Flock {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// Only environment builds wait under a deadline (theirs is the call's timeout).
    #[error("timed out waiting for another build of the same pack ({})", dir.display())]
    TimedOut { dir: PathBuf },
}

/// The locks of every pack directory of the process. Cheap to clone; clones share the
/// locks.
#[derive(Debug, Clone, Default)]
pub struct PackLocks {
    /// Weak, so that a directory nobody holds or waits for costs nothing.
    mutexes: Arc<Mutex<HashMap<PathBuf, Weak<tokio::sync::Mutex<()>>>>>,
}

/// Holds a directory until dropped.
#[must_use = "the directory is unlocked when the guard is dropped"]
pub struct DirGuard {
    _held: OwnedMutexGuard<()>,
    /// Closing the file releases its `flock`.
    _file: Option<File>,
}

impl PackLocks {
    /// Waits until no other task of this process holds `dir`.
    pub async fn lock(&self, dir: &Path) -> DirGuard {
        DirGuard {
            _held: self.mutex(canonical(dir)).lock_owned().await,
            _file: None,
        }
    }

    /// Every directory of `dirs`, taken in path order so that two callers locking
    /// overlapping sets cannot each hold what the other waits for.
    pub async fn lock_all<'a>(&self, dirs: impl IntoIterator<Item = &'a Path>) -> Vec<DirGuard> {
        let mut keys: Vec<PathBuf> = dirs.into_iter().map(canonical).collect();
        keys.sort();
        keys.dedup();
        let mutexes: Vec<_> = keys.into_iter().map(|key| self.mutex(key)).collect();
        let mut guards = Vec::with_capacity(mutexes.len());
        for mutex in mutexes {
            guards.push(DirGuard {
                _held: mutex.lock_owned().await,
                _file: None,
            });
        }
        guards
    }

    /// `dir` (created if missing) against this process and, through `flock` on
    /// `<dir>/.lock`, against other processes sharing it; waits at most until
    /// `deadline`.
    pub async fn lock_across_processes(
        &self,
        dir: &Path,
        deadline: Instant,
    ) -> Result<DirGuard, LockError> {
        std::fs::create_dir_all(dir).map_err(|source| LockError::CreateDir {
            dir: dir.to_path_buf(),
            source,
        })?;
        let timed_out = || LockError::TimedOut {
            dir: dir.to_path_buf(),
        };
        let held = tokio::time::timeout_at(deadline, self.mutex(canonical(dir)).lock_owned())
            .await
            .map_err(|_| timed_out())?;
        let path = dir.join(LOCK_FILE);
        // A link planted as the lock file would make us create or lock a file elsewhere.
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&path)
            .map_err(|source| LockError::OpenLockFile {
                path: path.clone(),
                source,
            })?;
        loop {
            // SAFETY: flock on a file descriptor we own; no memory is involved.
            let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
            if rc == 0 {
                break;
            }
            let source = io::Error::last_os_error();
            if source.raw_os_error() != Some(libc::EWOULDBLOCK) {
                return Err(LockError::Flock { path, source });
            }
            if Instant::now() >= deadline {
                return Err(timed_out());
            }
            tokio::time::sleep(FLOCK_RETRY).await;
        }
        Ok(DirGuard {
            _held: held,
            _file: Some(file),
        })
    }

    fn mutex(&self, key: PathBuf) -> Arc<tokio::sync::Mutex<()>> {
        let mut mutexes = self.mutexes.lock().unwrap_or_else(|e| e.into_inner());
        mutexes.retain(|_, weak| weak.strong_count() > 0);
        if let Some(mutex) = mutexes.get(&key).and_then(Weak::upgrade) {
            return mutex;
        }
        let mutex = Arc::new(tokio::sync::Mutex::new(()));
        mutexes.insert(key, Arc::downgrade(&mutex));
        mutex
    }
}

/// `path` with its links resolved; a directory not created yet is named through its
/// parent, so that it has the same key before and after it exists.
fn canonical(path: &Path) -> PathBuf {
    if let Ok(resolved) = std::fs::canonicalize(path) {
        return resolved;
    }
    match (path.parent(), path.file_name()) {
        (Some(parent), Some(name)) => std::fs::canonicalize(parent)
            .map(|parent| parent.join(name))
            .unwrap_or_else(|_| path.to_path_buf()),
        _ => path.to_path_buf(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn two_spellings_of_one_directory_share_its_lock() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("pack");
        let locks = PackLocks::default();
        let held = locks.lock(&dir).await;
        let other_spelling = root.path().join(".").join("pack");
        let waiting = tokio::time::timeout(Duration::from_millis(50), locks.lock(&other_spelling));
        assert!(waiting.await.is_err(), "taken twice");
        std::fs::create_dir(&dir).unwrap();
        let waiting = tokio::time::timeout(Duration::from_millis(50), locks.lock(&dir));
        assert!(waiting.await.is_err(), "its key changed once it existed");
        drop(held);
        let _again = locks.lock(&other_spelling).await;
    }

    #[tokio::test]
    async fn overlapping_sets_are_taken_without_deadlock() {
        let root = tempfile::tempdir().unwrap();
        let (a, b) = (root.path().join("a"), root.path().join("b"));
        let locks = PackLocks::default();
        let mut tasks = Vec::new();
        for n in 0..8 {
            let (locks, a, b) = (locks.clone(), a.clone(), b.clone());
            tasks.push(tokio::spawn(async move {
                let dirs = if n % 2 == 0 { [&a, &b] } else { [&b, &a] };
                let _guards = locks.lock_all(dirs.map(PathBuf::as_path)).await;
                tokio::task::yield_now().await;
            }));
        }
        for task in tasks {
            tokio::time::timeout(Duration::from_secs(10), task)
                .await
                .expect("deadlocked")
                .unwrap();
        }
        let _twice = locks.lock_all([a.as_path(), a.as_path()]).await;
    }

    #[tokio::test]
    async fn a_file_lock_held_elsewhere_times_out_at_the_deadline() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("envs").join("demo");
        // Another process is simulated by another set of locks: its own open file
        // description of `.lock` conflicts the same way.
        let elsewhere = PackLocks::default();
        let held = elsewhere
            .lock_across_processes(&dir, Instant::now() + Duration::from_secs(5))
            .await
            .unwrap();
        assert!(dir.join(LOCK_FILE).is_file());
        let error = PackLocks::default()
            .lock_across_processes(&dir, Instant::now() + Duration::from_millis(100))
            .await
            .err()
            .expect("locked twice");
        assert_eq!(
            error.to_string(),
            format!(
                "timed out waiting for another build of the same pack ({})",
                dir.display()
            )
        );
        drop(held);
        let _after = PackLocks::default()
            .lock_across_processes(&dir, Instant::now() + Duration::from_secs(5))
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn a_link_planted_as_the_lock_file_is_not_followed() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("pack");
        std::fs::create_dir(&dir).unwrap();
        let outside = root.path().join("outside");
        std::os::unix::fs::symlink(&outside, dir.join(LOCK_FILE)).unwrap();
        let err = PackLocks::default()
            .lock_across_processes(&dir, Instant::now() + Duration::from_secs(5))
            .await
            .err()
            .expect("locked through a link");
        assert!(matches!(err, LockError::OpenLockFile { .. }), "{err}");
        assert!(!outside.exists(), "the link's target was created");
    }
}
