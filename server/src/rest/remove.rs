//! RemovePacks on the REST gateway: Attune's `DELETE /packs/{ref}` and a batch
//! `POST /api/v1/packs/remove`.
//!
//! `POST` answers like every stage endpoint: 200 with the result, whose `success` and
//! `errors` say whether anything was removed. `DELETE` is a resource operation and
//! answers as Attune's does: 200 with the result when the pack was removed (or would
//! be, for a dry run), 404 when it is not installed, 409 when installed packs depend
//! on it (the message names them and the fix), 500 when the removal failed and was
//! undone; errors in the usual envelope.

use attune_packs_proto::{Event, StreamEvent, v1 as pb, v1::pack_service_server::PackService};
use axum::{
    Json,
    body::Bytes,
    extract::{Path, Query, State, rejection::QueryRejection},
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
};
use futures::StreamExt;
use serde_json::json;

use super::{ApiError, RestState, call};

/// The options of `DELETE /api/v1/packs/{ref}`.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct DeleteOptions {
    #[serde(default)]
    cascade: bool,
    #[serde(default)]
    force: bool,
    #[serde(default)]
    dry_run: bool,
}

pub(super) async fn remove_packs(
    State(s): State<RestState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    call(s, headers, body, &["refs"], |svc, r| async move {
        svc.remove_packs(r).await
    })
    .await
}

pub(super) async fn delete_pack(
    State(s): State<RestState>,
    headers: HeaderMap,
    Path(pack_ref): Path<String>,
    options: Result<Query<DeleteOptions>, QueryRejection>,
) -> Result<Response, ApiError> {
    let principal = super::authenticate(&s, &headers)?;
    let Query(options) = options.map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("invalid query: {}", e.body_text()),
        )
    })?;
    let request = super::authenticated(
        principal,
        &headers,
        pb::RemovePacksRequest {
            refs: vec![pack_ref.clone()],
            cascade: options.cascade,
            force: options.force,
            dry_run: options.dry_run,
        },
    );
    let mut stream = s.service.remove_packs(request).await?.into_inner();
    let mut result = None;
    while let Some(item) = stream.next().await {
        if let Some(Event::Result(r)) = item?.into_event() {
            result = Some(r);
            break;
        }
    }
    let result = result.ok_or_else(|| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "the call ended without a result",
        )
    })?;
    if result.success {
        return Ok(Json(json!({ "data": result })).into_response());
    }
    Err(refusal(&result))
}

/// The error a refused or failed removal of one pack answers with.
fn refusal(result: &pb::RemovePacksResult) -> ApiError {
    let status_of = |reason: &str| match reason {
        "not_installed" => StatusCode::NOT_FOUND,
        "has_dependents" => StatusCode::CONFLICT,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    let status = result
        .errors
        .iter()
        .map(|e| status_of(&e.reason))
        .min_by_key(|s| match *s {
            StatusCode::NOT_FOUND => 0,
            StatusCode::CONFLICT => 1,
            _ => 2,
        })
        .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let message = result
        .errors
        .iter()
        .map(|e| e.message.as_str())
        .collect::<Vec<_>>()
        .join("; ");
    ApiError::new(status, message)
}
