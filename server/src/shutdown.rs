//! Stopping the server within a bound: on the first signal every call in flight is
//! cancelled (its work cleans up as its future is dropped: staging directories are
//! removed, pack code is killed, swaps not yet committed are undone) and the server
//! waits, at most `shutdown_grace`, for calls and registration critical sections to
//! end. Whatever still runs then is abandoned; the next start settles it (`journal`).

use std::sync::{
    Arc,
    atomic::{AtomicUsize, Ordering},
};

use tokio::sync::{Notify, watch};

/// Shared by the server and every call it runs. Cheap to clone.
#[derive(Clone)]
pub struct Stopping {
    inner: Arc<Inner>,
}

struct Inner {
    requested: watch::Sender<bool>,
    calls: AtomicUsize,
    calls_done: Notify,
}

impl Default for Stopping {
    fn default() -> Self {
        Stopping {
            inner: Arc::new(Inner {
                requested: watch::channel(false).0,
                calls: AtomicUsize::new(0),
                calls_done: Notify::new(),
            }),
        }
    }
}

impl Stopping {
    /// Asks every call to stop.
    pub fn trigger(&self) {
        self.inner.requested.send_replace(true);
    }

    pub fn is_triggered(&self) -> bool {
        *self.inner.requested.borrow()
    }

    /// Resolves once [`trigger`](Self::trigger) was called.
    pub async fn triggered(&self) {
        let mut requested = self.inner.requested.subscribe();
        let _ = requested.wait_for(|stop| *stop).await;
    }

    /// Counts a call as running until the guard is dropped.
    pub fn call(&self) -> CallGuard {
        self.inner.calls.fetch_add(1, Ordering::SeqCst);
        CallGuard {
            stopping: self.clone(),
        }
    }

    pub fn running_calls(&self) -> usize {
        self.inner.calls.load(Ordering::SeqCst)
    }

    /// Resolves once no call is running.
    pub async fn calls_done(&self) {
        loop {
            let notified = self.inner.calls_done.notified();
            if self.running_calls() == 0 {
                return;
            }
            notified.await;
        }
    }
}

/// A running call; see [`Stopping::call`].
pub struct CallGuard {
    stopping: Stopping,
}

impl Drop for CallGuard {
    fn drop(&mut self) {
        if self.stopping.inner.calls.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.stopping.inner.calls_done.notify_waiters();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn calls_done_waits_for_the_last_guard() {
        let stopping = Stopping::default();
        let first = stopping.call();
        let second = stopping.call();
        assert!(!stopping.is_triggered());
        stopping.trigger();
        stopping.triggered().await;
        drop(first);
        let waiting = tokio::time::timeout(Duration::from_millis(50), stopping.calls_done()).await;
        assert!(waiting.is_err(), "one call still runs");
        drop(second);
        tokio::time::timeout(Duration::from_secs(1), stopping.calls_done())
            .await
            .expect("no call runs");
    }
}
