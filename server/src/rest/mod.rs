//! The REST/JSON door: the original Attune pack-installation API on the gRPC port.
//!
//! A thin translation onto the same `PackService` implementation (never a second
//! implementation of a stage): JSON bodies become protobuf requests, the streamed
//! events become one `{"data": …}` response, or server-sent events when the caller
//! asks for `text/event-stream`. Errors use the original API's shape
//! `{"error", "message", "status"}`; gRPC codes map to HTTP by google.rpc.Code.
//!
//! Who may do what is not decided here: a handler authenticates the caller
//! ([`authenticated`]) and hands the [`Principal`] to the service in the request, and
//! the service checks the grant the RPC needs, as it does for gRPC callers. A call
//! that reaches the service without a principal is refused there.

use std::{convert::Infallible, future::Future, pin::Pin, sync::Arc};

use attune_packs_proto::{Event, StreamEvent, v1 as pb, v1::pack_service_server::PackService};
use axum::{
    Extension, Json, Router,
    body::Bytes,
    extract::{DefaultBodyLimit, State},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{
        IntoResponse, Response,
        sse::{self, KeepAlive, Sse},
    },
    routing::{get, post},
};
use futures::{Stream, StreamExt};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use tonic::{Code, Status, transport::server::TcpConnectInfo};

mod inventory;

use crate::{
    auth::{AuthError, Authenticator, Principal},
    grpc::PackServiceImpl,
    store::Db,
    users::{self, LoginGate, UserError},
};

mod events;
mod remove;
mod rollback;

/// The OpenAPI description of this gateway.
const OPENAPI: &str = include_str!("openapi.json");

#[derive(Clone)]
pub struct RestState {
    pub service: Arc<PackServiceImpl>,
    pub auth: Authenticator,
    pub db: Db,
    pub login: Arc<LoginGate>,
    /// Largest login request body (`login.max_body_bytes`).
    pub login_max_body_bytes: usize,
}

pub fn router(state: RestState) -> Router {
    let login_limit = DefaultBodyLimit::max(state.login_max_body_bytes);
    Router::new()
        .route("/api/v1/packs/download", post(download))
        .route("/api/v1/packs/dependencies", post(dependencies))
        .route("/api/v1/packs/build-envs", post(build_envs))
        .route("/api/v1/packs/register-batch", post(register_batch))
        .route("/api/v1/packs/install", post(install))
        .route("/api/v1/packs", get(inventory::list_packs))
        .route("/api/v1/packs/verify", post(inventory::verify_packs))
        .route("/api/v1/packs/remove", post(remove::remove_packs))
        .route(
            "/api/v1/packs/{ref}",
            get(inventory::get_pack).delete(remove::delete_pack),
        )
        .route("/api/v1/packs/{ref}/history", get(rollback::history))
        .route("/api/v1/packs/{ref}/rollback", post(rollback::rollback))
        .route("/api/v1/events", get(events::events))
        .route("/api/v1/auth/login", post(login).layer(login_limit))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/api/v1/openapi.json", get(openapi))
        .with_state(state)
}

/// Errors axum answers by itself (405 with an empty body, 413 and other extractor
/// rejections as plain text) get the same JSON envelope as every other error, with
/// their status and headers (`Allow`) kept. A response filter around the whole router
/// (route layers run before axum adds `Allow`); gRPC answers pass untouched.
pub async fn json_errors(response: Response) -> Response {
    let status = response.status();
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            ["application/json", "text/event-stream", "application/grpc"]
                .iter()
                .any(|t| v.starts_with(t))
        });
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return response;
    }
    let (parts, body) = response.into_parts();
    let message = match status {
        StatusCode::METHOD_NOT_ALLOWED => {
            let allowed = parts
                .headers
                .get(header::ALLOW)
                .and_then(|v| v.to_str().ok())
                .filter(|v| !v.is_empty())
                .unwrap_or("another method");
            format!("method not allowed on this endpoint; use {allowed}")
        }
        StatusCode::PAYLOAD_TOO_LARGE => {
            "the request body is larger than this endpoint accepts".to_string()
        }
        _ => {
            // A short plain-text reason from axum; anything longer is not ours to show.
            let text = axum::body::to_bytes(body, 1024).await.unwrap_or_default();
            let text = String::from_utf8_lossy(&text).trim().to_string();
            if text.is_empty() {
                status.canonical_reason().unwrap_or("error").to_string()
            } else {
                text
            }
        }
    };
    let mut json = ApiError::new(status, message).into_response();
    for (name, value) in &parts.headers {
        if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
            json.headers_mut().insert(name.clone(), value.clone());
        }
    }
    if status == StatusCode::PAYLOAD_TOO_LARGE {
        // The rest of the body was never read, so an HTTP/1.1 connection cannot carry
        // another request: say so, or a client sends its next one into a closed socket
        // (hyper drops the header on HTTP/2, where it does not apply).
        json.headers_mut().insert(
            header::CONNECTION,
            header::HeaderValue::from_static("close"),
        );
    }
    json
}

/// An error in the original API's shape.
pub struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
        }
    }

    fn body(&self) -> Value {
        json!({
            "error": self.status.canonical_reason().unwrap_or("Error"),
            "message": self.message,
            "status": self.status.as_u16(),
        })
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, Json(self.body())).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

impl From<AuthError> for ApiError {
    fn from(e: AuthError) -> Self {
        ApiError::new(StatusCode::UNAUTHORIZED, e.to_string())
    }
}

/// google.rpc.Code → HTTP, as grpc-gateway maps it.
pub fn http_status(code: Code) -> StatusCode {
    match code {
        Code::Ok => StatusCode::OK,
        Code::Cancelled => StatusCode::from_u16(499).expect("499 is a valid status"),
        Code::InvalidArgument | Code::FailedPrecondition | Code::OutOfRange => {
            StatusCode::BAD_REQUEST
        }
        Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
        Code::NotFound => StatusCode::NOT_FOUND,
        Code::AlreadyExists | Code::Aborted => StatusCode::CONFLICT,
        Code::PermissionDenied => StatusCode::FORBIDDEN,
        Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        Code::Unimplemented => StatusCode::NOT_IMPLEMENTED,
        Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        Code::Unknown | Code::Internal | Code::DataLoss => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

impl From<Status> for ApiError {
    fn from(s: Status) -> Self {
        ApiError::new(http_status(s.code()), s.message())
    }
}

/// Parses a JSON body into a request message: malformed JSON, a non-object, a missing
/// required field or a wrong type is a 400 that names the field.
fn parse_body<T: DeserializeOwned>(body: &Bytes, required: &[&str]) -> Result<T, ApiError> {
    let bad = |m: String| ApiError::new(StatusCode::BAD_REQUEST, m);
    let value: Value =
        serde_json::from_slice(body).map_err(|e| bad(format!("malformed JSON: {e}")))?;
    let Value::Object(map) = &value else {
        return Err(bad("the request body must be a JSON object".into()));
    };
    if let Some(missing) = required
        .iter()
        .find(|f| map.get(**f).is_none_or(Value::is_null))
    {
        return Err(bad(format!("missing required field `{missing}`")));
    }
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        bad(format!("invalid value for `{path}`: {}", e.into_inner()))
    })
}

fn wants_sse(headers: &HeaderMap) -> bool {
    headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("text/event-stream"))
}

/// The caller the `Authorization` header proves, or a 401 saying what is wrong.
pub fn authenticate(state: &RestState, headers: &HeaderMap) -> Result<Principal, ApiError> {
    let header = match headers.get(header::AUTHORIZATION) {
        None => None,
        Some(v) => Some(
            v.to_str()
                .map_err(|_| ApiError::from(AuthError::Malformed("not printable ASCII".into())))?,
        ),
    };
    Ok(state.auth.verify_header(header)?)
}

/// A service request on behalf of `principal`, whose grants the service checks, with
/// the caller's request id when it sent one.
pub fn authenticated<T>(
    principal: Principal,
    headers: &HeaderMap,
    message: T,
) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.extensions_mut().insert(principal);
    if let Some(id) = headers.get("x-request-id").and_then(|v| v.to_str().ok())
        && let Ok(value) = id.parse()
    {
        request.metadata_mut().insert("x-request-id", value);
    }
    request
}

type EventStream<E> = Pin<Box<dyn Stream<Item = Result<E, Status>> + Send>>;

/// Authenticates, parses, calls the service, and answers JSON or server-sent events.
async fn call<Req, E, F, Fut>(
    state: RestState,
    headers: HeaderMap,
    body: Bytes,
    required: &[&str],
    rpc: F,
) -> Result<Response, ApiError>
where
    Req: DeserializeOwned,
    E: StreamEvent,
    E::Result: serde::Serialize,
    F: FnOnce(Arc<PackServiceImpl>, tonic::Request<Req>) -> Fut,
    Fut: Future<Output = Result<tonic::Response<EventStream<E>>, Status>>,
{
    let principal = authenticate(&state, &headers)?;
    let message: Req = parse_body(&body, required)?;
    let request = authenticated(principal, &headers, message);
    let stream = rpc(state.service.clone(), request).await?.into_inner();

    if wants_sse(&headers) {
        return Ok(sse_response(stream).into_response());
    }
    let mut stream = stream;
    while let Some(item) = stream.next().await {
        if let Some(Event::Result(result)) = item?.into_event() {
            return Ok(Json(json!({ "data": result })).into_response());
        }
    }
    Err(ApiError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "the call ended without a result",
    ))
}

/// Progress as SSE `progress` events, then one `result` (or `error`) event.
fn sse_response<E>(
    stream: EventStream<E>,
) -> Sse<impl Stream<Item = Result<sse::Event, Infallible>>>
where
    E: StreamEvent,
    E::Result: serde::Serialize,
{
    let events = stream.filter_map(|item| async move {
        let event = match item {
            Ok(e) => match e.into_event()? {
                Event::Progress(p) => sse::Event::default()
                    .event("progress")
                    .json_data(progress_json(&p)),
                Event::Result(r) => sse::Event::default()
                    .event("result")
                    .json_data(json!({ "data": r })),
            },
            Err(status) => sse::Event::default()
                .event("error")
                .json_data(ApiError::from(status).body()),
        };
        Some(Ok(event.unwrap_or_else(|e| {
            sse::Event::default().event("error").data(e.to_string())
        })))
    });
    Sse::new(events).keep_alive(KeepAlive::default())
}

/// Progress with names instead of protobuf enum numbers.
fn progress_json(p: &pb::Progress) -> Value {
    let stage = pb::progress::Stage::try_from(p.stage)
        .map(|s| s.as_str_name().trim_start_matches("STAGE_").to_lowercase())
        .unwrap_or_default();
    let level = pb::progress::Level::try_from(p.level)
        .map(|l| l.as_str_name().trim_start_matches("LEVEL_").to_lowercase())
        .unwrap_or_default();
    json!({
        "stage": stage,
        "pack": p.pack,
        "message": p.message,
        "done": p.done,
        "total": p.total,
        "level": level,
    })
}

async fn download(
    State(s): State<RestState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    call(
        s,
        headers,
        body,
        &["packs", "destination_dir"],
        |svc, r| async move { svc.download(r).await },
    )
    .await
}

async fn dependencies(
    State(s): State<RestState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    call(s, headers, body, &["pack_paths"], |svc, r| async move {
        svc.dependencies(r).await
    })
    .await
}

async fn build_envs(
    State(s): State<RestState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    call(s, headers, body, &["pack_paths"], |svc, r| async move {
        svc.build_envs(r).await
    })
    .await
}

async fn register_batch(
    State(s): State<RestState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    call(s, headers, body, &["pack_paths"], |svc, r| async move {
        svc.register_batch(r).await
    })
    .await
}

async fn install(
    State(s): State<RestState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    call(s, headers, body, &[], |svc, r| async move {
        svc.install(r).await
    })
    .await
}

#[derive(serde::Deserialize)]
struct LoginRequest {
    email: String,
    password: String,
}

async fn login(
    State(s): State<RestState>,
    connection: Option<Extension<TcpConnectInfo>>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let request: LoginRequest = parse_body(&body, &["email", "password"])?;
    let address = connection
        .and_then(|Extension(c)| c.remote_addr())
        .map(|a| a.ip());
    match s
        .login
        .login(&s.db, &s.auth, &request.email, &request.password, address)
        .await
    {
        Ok((token, ttl)) => Ok(Json(json!({
            "data": {
                "access_token": token,
                "token_type": "Bearer",
                "expires_in": ttl.as_secs(),
            }
        }))
        .into_response()),
        Err(UserError::InvalidCredentials) => Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "invalid email or password",
        )),
        Err(e @ (UserError::EmailTooLong { .. } | UserError::PasswordTooLong { .. })) => {
            Err(ApiError::new(StatusCode::BAD_REQUEST, e.to_string()))
        }
        Err(e @ UserError::Throttled { retry_after }) => {
            let mut response =
                ApiError::new(StatusCode::TOO_MANY_REQUESTS, e.to_string()).into_response();
            response.headers_mut().insert(
                header::RETRY_AFTER,
                users::secs_rounded_up(retry_after).into(),
            );
            Ok(response)
        }
        Err(e @ UserError::Busy) => {
            let mut response =
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string()).into_response();
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            Ok(response)
        }
        Err(e) => {
            tracing::error!(error = %e, "login failed");
            Err(ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "login is unavailable",
            ))
        }
    }
}

async fn healthz() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

async fn readyz(State(s): State<RestState>) -> Response {
    match s.db.ping().await {
        Ok(()) => Json(json!({ "status": "ready" })).into_response(),
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "status": "unavailable", "reason": format!("database: {e}") })),
        )
            .into_response(),
    }
}

async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI).into_response()
}

/// Unknown paths: a JSON 404 for HTTP callers, UNIMPLEMENTED for gRPC ones.
pub async fn fallback(headers: HeaderMap) -> Response {
    let grpc = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/grpc"));
    if grpc {
        return Status::unimplemented("no such gRPC method").into_http();
    }
    ApiError::new(StatusCode::NOT_FOUND, "no such endpoint").into_response()
}
