//! How stages report progress: one small, cloneable [`Reporter`] over a channel.
//!
//! Stages know nothing about gRPC or HTTP. Each adapter (gRPC stream, server-sent
//! events, CLI) drains the receiver and translates events. The channel is unbounded so
//! blocking code (git, archive extraction in `spawn_blocking`) can report without an
//! async context; producers throttle high-frequency counters themselves.

use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};

/// The one vocabulary for where work is: progress events name it, and a pack that
/// fails inside a batch is reported with the stage it failed in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Stage {
    Resolve,
    Fetch,
    Extract,
    Verify,
    Place,
    Analyze,
    Build,
    Validate,
    Copy,
    Test,
    Register,
    /// Checking a set against its lock (Install); progress reports it as resolving.
    Lock,
}

impl Stage {
    /// The name a failed pack's stage has on the wire (`error_stage`, `stage`):
    /// coarser than progress, one name per step a user can act on.
    pub fn failure_name(self) -> &'static str {
        match self {
            Stage::Fetch | Stage::Extract | Stage::Verify | Stage::Place => "download",
            Stage::Resolve | Stage::Analyze => "resolve",
            Stage::Lock => "lock",
            Stage::Build => "build",
            Stage::Validate => "validation",
            Stage::Test => "testing",
            Stage::Copy => "file_copy",
            Stage::Register => "database",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Info,
    Warning,
    Error,
}

#[derive(Debug, Clone)]
pub struct ProgressEvent {
    pub stage: Stage,
    /// The pack the event is about: the source as given, or its ref once known.
    pub subject: String,
    pub message: String,
    pub done: Option<u64>,
    pub total: Option<u64>,
    pub level: Level,
}

#[derive(Clone, Default)]
pub struct Reporter {
    tx: Option<UnboundedSender<ProgressEvent>>,
    subject: String,
}

impl Reporter {
    /// A reporter that drops every event (benchmarks, local tools).
    pub fn noop() -> Self {
        Self::default()
    }

    pub fn channel(subject: &str) -> (Self, UnboundedReceiver<ProgressEvent>) {
        let (tx, rx) = unbounded_channel();
        let reporter = Self {
            tx: Some(tx),
            subject: subject.to_string(),
        };
        (reporter, rx)
    }

    /// The same channel, speaking about another pack.
    pub fn with_subject(&self, subject: &str) -> Self {
        Self {
            tx: self.tx.clone(),
            subject: subject.to_string(),
        }
    }

    pub fn emit(
        &self,
        stage: Stage,
        level: Level,
        message: impl Into<String>,
        done: Option<u64>,
        total: Option<u64>,
    ) {
        if let Some(tx) = &self.tx {
            // A closed receiver means the caller left; `is_cancelled` tells producers.
            let mut message = message.into();
            crate::secrets::scrub_string(&mut message);
            let _ = tx.send(ProgressEvent {
                stage,
                subject: self.subject.clone(),
                message,
                done,
                total,
                level,
            });
        }
    }

    pub fn info(&self, stage: Stage, message: impl Into<String>) {
        self.emit(stage, Level::Info, message, None, None)
    }

    pub fn warn(&self, stage: Stage, message: impl Into<String>) {
        self.emit(stage, Level::Warning, message, None, None)
    }

    pub fn error(&self, stage: Stage, message: impl Into<String>) {
        self.emit(stage, Level::Error, message, None, None)
    }

    pub fn count(&self, stage: Stage, message: impl Into<String>, done: u64, total: Option<u64>) {
        self.emit(stage, Level::Info, message, Some(done), total)
    }

    /// The receiver was dropped: the caller went away, so work should stop.
    pub fn is_cancelled(&self) -> bool {
        self.tx.as_ref().is_some_and(|tx| tx.is_closed())
    }

    /// Resolves when the reporter is cancelled (never, for a no-op reporter). For
    /// `select!` against work that may stall, such as a silent network peer.
    pub async fn cancelled(&self) {
        match &self.tx {
            Some(tx) => tx.closed().await,
            None => std::future::pending().await,
        }
    }

    /// A reporter for one unit of work (one pack) that forwards to this one and can
    /// be cancelled on its own (a per-pack timeout) without cancelling the others.
    /// It is also cancelled when this reporter is, and when the handle is dropped.
    /// Needs a Tokio runtime.
    pub fn child(&self, subject: &str) -> (Reporter, CancelHandle) {
        let (child, mut rx) = Reporter::channel(subject);
        let (cancel_tx, mut cancel_rx) = tokio::sync::oneshot::channel::<()>();
        let parent = self.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    event = rx.recv() => match event {
                        Some(event) => {
                            if let Some(tx) = &parent.tx {
                                let _ = tx.send(event);
                            }
                        }
                        None => break,
                    },
                    _ = parent.cancelled() => break,
                    _ = &mut cancel_rx => break,
                }
            }
            // Dropping `rx` here is what makes the child read as cancelled.
        });
        (child, CancelHandle { _cancel: cancel_tx })
    }
}

/// Cancels a [`Reporter::child`] when dropped.
pub struct CancelHandle {
    _cancel: tokio::sync::oneshot::Sender<()>,
}

/// `n` with its noun in the right number: "1 pack", "2 packs", "0 packs". Every count
/// in a progress or summary message goes through here, so none reads "1 dependencies".
pub fn count(n: impl TryInto<u64>, singular: &str, plural: &str) -> String {
    let n = n.try_into().unwrap_or(u64::MAX);
    if n == 1 {
        format!("1 {singular}")
    } else {
        format!("{n} {plural}")
    }
}

/// The noun (or any word) for `n` things: `singular` for exactly one.
pub fn noun<'a>(n: impl TryInto<u64>, singular: &'a str, plural: &'a str) -> &'a str {
    if n.try_into().ok() == Some(1) {
        singular
    } else {
        plural
    }
}

#[cfg(test)]
mod tests {
    use super::{count, noun};

    #[test]
    fn nouns_agree_with_their_count() {
        assert_eq!(noun(1usize, "pack", "packs"), "pack");
        assert_eq!(noun(3usize, "pack", "packs"), "packs");
        assert_eq!(noun(0usize, "it", "them"), "them");
    }

    #[test]
    fn counts_agree_with_their_noun() {
        assert_eq!(count(0u32, "pack", "packs"), "0 packs");
        assert_eq!(count(1usize, "pack", "packs"), "1 pack");
        assert_eq!(count(1u32, "pack", "packs"), "1 pack");
        assert_eq!(count(2u64, "dependency", "dependencies"), "2 dependencies");
        assert_eq!(count(1u64, "dependency", "dependencies"), "1 dependency");
    }
}
