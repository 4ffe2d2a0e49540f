//! `GET /api/v1/packs`, `GET /api/v1/packs/{ref}`, `POST /api/v1/packs/verify`: the
//! same ListPacks, GetPack and VerifyPacks calls as gRPC.
//!
//! The list answers Attune's list shape, `items` and `pagination`, inside the
//! `{"data": …}` envelope every other success of this gateway has, so that a client
//! reads every answer the same way.

use attune_packs_proto::v1::{self as pb, pack_service_server::PackService};
use axum::{
    Json,
    body::Bytes,
    extract::{Path, Query, State},
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
};
use serde_json::json;

use super::{ApiError, RestState, call};

/// A request to the service carrying the caller's verified identity, as `call`
/// builds it for the streaming endpoints.
fn authorized<T>(
    s: &RestState,
    headers: &HeaderMap,
    message: T,
) -> Result<tonic::Request<T>, ApiError> {
    let principal = super::authenticate(s, headers)?;
    Ok(super::authenticated(principal, headers, message))
}

/// A positive number in the query string, or a 400 naming the parameter.
fn number(name: &str, value: &str) -> Result<u32, ApiError> {
    value.trim().parse::<u32>().map_err(|_| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("query parameter `{name}` must be a whole number, got {value:?}"),
        )
    })
}

pub(super) async fn list_packs(
    State(s): State<RestState>,
    headers: HeaderMap,
    Query(params): Query<Vec<(String, String)>>,
) -> Result<Response, ApiError> {
    let mut message = pb::ListPacksRequest::default();
    for (name, value) in &params {
        match name.as_str() {
            "ref_prefix" => message.ref_prefix = value.clone(),
            // `q` as Attune's search, `keyword` as the gRPC field.
            "q" | "keyword" => message.keyword = value.clone(),
            "page" => message.page = Some(number(name, value)?),
            "page_size" => message.page_size = Some(number(name, value)?),
            "page_token" => message.page_token = value.clone(),
            _ => {}
        }
    }
    let request = authorized(&s, &headers, message)?;
    let listed = s.service.list_packs(request).await?.into_inner();
    let page_size = u64::from(listed.page_size.max(1));
    let total_pages = listed.total_items.div_ceil(page_size);
    Ok(Json(json!({
        "data": {
            "items": listed.packs,
            "pagination": {
                "page": listed.page,
                "page_size": listed.page_size,
                "total_items": listed.total_items,
                "total_pages": total_pages,
                "has_previous": listed.page > 1,
                "has_next": !listed.next_page_token.is_empty(),
                "next_page_token": listed.next_page_token,
            },
        }
    }))
    .into_response())
}

pub(super) async fn get_pack(
    State(s): State<RestState>,
    headers: HeaderMap,
    Path(pack_ref): Path<String>,
) -> Result<Response, ApiError> {
    let request = authorized(&s, &headers, pb::GetPackRequest { r#ref: pack_ref })?;
    let detail = s.service.get_pack(request).await?.into_inner();
    Ok(Json(json!({ "data": detail })).into_response())
}

pub(super) async fn verify_packs(
    State(s): State<RestState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    // An empty body verifies every installed pack, as `{}` does.
    let body = if body.iter().all(u8::is_ascii_whitespace) {
        Bytes::from_static(b"{}")
    } else {
        body
    };
    call(s, headers, body, &[], |svc, r| async move {
        svc.verify_packs(r).await
    })
    .await
}
