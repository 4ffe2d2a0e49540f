//! `GET /api/v1/packs/{ref}/history` and `POST /api/v1/packs/{ref}/rollback`.

use attune_packs_proto::v1::{self as pb, pack_service_server::PackService};
use axum::{
    Json,
    body::Bytes,
    extract::{Path, Query, State},
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
};
use serde_json::{Value, json};

use super::{ApiError, RestState};

#[derive(serde::Deserialize)]
pub(super) struct HistoryQuery {
    limit: Option<u32>,
}

pub(super) async fn history(
    State(s): State<RestState>,
    Path(pack_ref): Path<String>,
    headers: HeaderMap,
    Query(query): Query<HistoryQuery>,
) -> Result<Response, ApiError> {
    let principal = super::authenticate(&s, &headers)?;
    let request = super::authenticated(
        principal,
        &headers,
        pb::PackHistoryRequest {
            r#ref: pack_ref,
            limit: query.limit,
        },
    );
    let history = s.service.pack_history(request).await?.into_inner();
    Ok(Json(json!({ "data": history })).into_response())
}

/// The body names the version and `force`; the path names the pack. An empty body
/// means the most recently kept version, unforced.
pub(super) async fn rollback(
    State(s): State<RestState>,
    Path(pack_ref): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    // Authentication before anything about the body is said.
    super::authenticate(&s, &headers)?;
    let bad = |m: String| ApiError::new(StatusCode::BAD_REQUEST, m);
    let mut value: Value = if body.iter().all(u8::is_ascii_whitespace) {
        json!({})
    } else {
        serde_json::from_slice(&body).map_err(|e| bad(format!("malformed JSON: {e}")))?
    };
    let Value::Object(map) = &mut value else {
        return Err(bad("the request body must be a JSON object".into()));
    };
    map.insert("ref".into(), Value::String(pack_ref));
    let body = Bytes::from(serde_json::to_vec(&value).unwrap_or_default());
    super::call(s, headers, body, &[], |svc, r| async move {
        svc.rollback_pack(r).await
    })
    .await
}
