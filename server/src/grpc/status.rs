//! The one conversion from a stage's failure to a gRPC status. The REST gateway turns
//! that status into its envelope (`rest::ApiError`), so both doors agree on codes.

use tonic::{Code, Status};

use crate::failure::{Failure, FailureKind};

/// The status a call that failed with `failure` ends with; the message is the error's
/// display, which names what to change where the caller can change something.
pub fn status(failure: &dyn Failure) -> Status {
    Status::new(code(failure.kind()), failure.to_string())
}

fn code(kind: FailureKind) -> Code {
    match kind {
        FailureKind::InvalidRequest => Code::InvalidArgument,
        FailureKind::NotFound => Code::NotFound,
        FailureKind::Cancelled => Code::Cancelled,
        FailureKind::Unavailable => Code::Unavailable,
        FailureKind::Internal => Code::Internal,
        FailureKind::Unauthenticated => Code::Unauthenticated,
        FailureKind::PermissionDenied => Code::PermissionDenied,
        FailureKind::OutOfRange => Code::OutOfRange,
    }
}
