//! The one failure vocabulary of the stages.
//!
//! Every capability has its own `thiserror` enum with structured variants and
//! `#[source]` chains. An error a door can answer with implements [`Failure`], which
//! says how the caller must react ([`FailureKind`]); the doors turn that into a gRPC
//! status (`grpc::status`) and, from the status, into the REST envelope, each in one
//! place. A failure of one pack inside a batch is not an error of the call: it is
//! reported in the result with the [`Stage`](crate::progress::Stage) it failed in.

/// How a caller must react to a failed call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// The request is malformed: the caller must change it.
    InvalidRequest,
    /// What the request names does not exist (a pack that is not installed).
    NotFound,
    /// The call was cancelled (the caller went away, or a deadline passed).
    Cancelled,
    /// Something the call needs (a registry, the database) cannot be reached now;
    /// the same call may succeed later.
    Unavailable,
    /// A fault on the server's side: not the caller's doing.
    Internal,
    /// The caller did not prove who it is (no token, a bad one, a malformed claim).
    Unauthenticated,
    /// The caller is known but lacks the grant the call needs.
    PermissionDenied,
    /// The request names a position outside what exists (an event cursor older than
    /// retention kept, or newer than the newest event): the caller must start again
    /// from a valid one.
    OutOfRange,
}

/// An error that ends a whole call.
pub trait Failure: std::error::Error {
    fn kind(&self) -> FailureKind;
}
