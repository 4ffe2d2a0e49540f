//! Typed client for the attune-packs service.
//!
//! Every RPC is available two ways: as a stream of [`Event`]s (progress, then the
//! result), and as a plain `await` of the result that optionally calls back on each
//! progress event.
//!
//! ```no_run
//! # async fn demo() -> Result<(), attune_packs_client::ClientError> {
//! use attune_packs_client::{Client, pb};
//! let mut client = Client::connect("http://127.0.0.1:50051", "<token>").await?;
//! let result = client
//!     .dependencies(pb::DependenciesRequest {
//!         pack_paths: vec!["/tmp/packs/core".into()],
//!         ..Default::default()
//!     })
//!     .await?;
//! println!("{} missing", result.missing_dependencies.len());
//! # Ok(()) }
//! ```

use std::pin::Pin;

pub mod paths;

pub use attune_packs_proto::v1 as pb;
use futures::{Stream, StreamExt};
use pb::pack_service_client::PackServiceClient;
use tonic::{
    Request, Status,
    metadata::{Ascii, MetadataValue},
    service::{Interceptor, interceptor::InterceptedService},
    transport::{Channel, Endpoint},
};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("invalid server address '{address}': {reason}")]
    Address { address: String, reason: String },
    /// One line: the transport's own chain repeats itself ("transport error: transport
    /// error: tcp connect error: …") and names no fix.
    #[error(
        "cannot reach attune-packs at {address}: {reason} — is `attune-packs-server serve` running?"
    )]
    Connect { address: String, reason: String },
    #[error("token is not a valid header value")]
    Token,
    #[error("{}: {}", code_name(.0.code()), .0.message())]
    Status(#[from] Status),
    #[error("the server ended the stream without a result")]
    NoResult,
}

impl ClientError {
    /// The gRPC status, when the server answered with one.
    pub fn status(&self) -> Option<&Status> {
        match self {
            ClientError::Status(s) => Some(s),
            _ => None,
        }
    }
}

/// Why a connection failed, from the innermost cause: the operating system's error
/// when there is one (`connection refused`), else the deepest message.
fn connect_reason(error: &(dyn std::error::Error + 'static)) -> String {
    let mut innermost = error;
    let mut current = Some(error);
    while let Some(e) = current {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            return match io.kind() {
                std::io::ErrorKind::ConnectionRefused => "connection refused".into(),
                std::io::ErrorKind::TimedOut => "connection timed out".into(),
                _ => io.to_string(),
            };
        }
        innermost = e;
        current = e.source();
    }
    innermost.to_string()
}

fn code_name(code: tonic::Code) -> String {
    format!("{code:?}")
}

/// Adds `authorization: Bearer <token>` to every call.
#[derive(Clone)]
pub struct BearerAuth {
    header: MetadataValue<Ascii>,
}

impl Interceptor for BearerAuth {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        request
            .metadata_mut()
            .insert("authorization", self.header.clone());
        Ok(request)
    }
}

pub use attune_packs_proto::{Event, StreamEvent};

/// A streamed call: progress events, then the result.
pub type EventStream<R> = Pin<Box<dyn Stream<Item = Result<Event<R>, Status>> + Send>>;

/// Drains `stream`, calling `on_progress` for each progress event, and returns the
/// result.
pub async fn finish<R>(
    mut stream: EventStream<R>,
    mut on_progress: impl FnMut(&pb::Progress),
) -> Result<R, ClientError> {
    while let Some(event) = stream.next().await {
        match event? {
            Event::Progress(p) => on_progress(&p),
            Event::Result(r) => return Ok(r),
        }
    }
    Err(ClientError::NoResult)
}

#[derive(Clone)]
pub struct Client {
    inner: PackServiceClient<InterceptedService<Channel, BearerAuth>>,
}

fn events<E: StreamEvent>(stream: tonic::Streaming<E>) -> EventStream<E::Result> {
    Box::pin(stream.filter_map(|item| async move {
        match item {
            Ok(event) => event.into_event().map(Ok),
            Err(status) => Some(Err(status)),
        }
    }))
}

impl Client {
    /// Connects to `address` (e.g. `http://127.0.0.1:50051`) with a bearer token.
    pub async fn connect(address: &str, token: &str) -> Result<Self, ClientError> {
        let endpoint =
            Endpoint::from_shared(address.to_string()).map_err(|e| ClientError::Address {
                address: address.to_string(),
                reason: e.to_string(),
            })?;
        let channel = endpoint
            .connect()
            .await
            .map_err(|error| ClientError::Connect {
                address: address.to_string(),
                reason: connect_reason(&error),
            })?;
        Self::with_channel(channel, token)
    }

    /// Uses an existing channel (custom TLS, timeouts, lazily connected channels).
    pub fn with_channel(channel: Channel, token: &str) -> Result<Self, ClientError> {
        let header: MetadataValue<Ascii> = format!("Bearer {token}")
            .parse()
            .map_err(|_| ClientError::Token)?;
        let inner = PackServiceClient::with_interceptor(channel, BearerAuth { header })
            // Results of large batches are bigger than tonic's 4 MiB default.
            .max_decoding_message_size(256 * 1024 * 1024);
        Ok(Self { inner })
    }

    pub async fn download_stream(
        &mut self,
        request: pb::DownloadRequest,
    ) -> Result<EventStream<pb::DownloadResult>, ClientError> {
        Ok(events(self.inner.download(request).await?.into_inner()))
    }

    pub async fn download(
        &mut self,
        request: pb::DownloadRequest,
    ) -> Result<pb::DownloadResult, ClientError> {
        finish(self.download_stream(request).await?, |_| {}).await
    }

    pub async fn dependencies_stream(
        &mut self,
        request: pb::DependenciesRequest,
    ) -> Result<EventStream<pb::DependenciesResult>, ClientError> {
        Ok(events(self.inner.dependencies(request).await?.into_inner()))
    }

    pub async fn dependencies(
        &mut self,
        request: pb::DependenciesRequest,
    ) -> Result<pb::DependenciesResult, ClientError> {
        finish(self.dependencies_stream(request).await?, |_| {}).await
    }

    pub async fn build_envs_stream(
        &mut self,
        request: pb::BuildEnvsRequest,
    ) -> Result<EventStream<pb::BuildEnvsResult>, ClientError> {
        Ok(events(self.inner.build_envs(request).await?.into_inner()))
    }

    pub async fn build_envs(
        &mut self,
        request: pb::BuildEnvsRequest,
    ) -> Result<pb::BuildEnvsResult, ClientError> {
        finish(self.build_envs_stream(request).await?, |_| {}).await
    }

    pub async fn list_registries(&mut self) -> Result<pb::ListRegistriesResponse, ClientError> {
        Ok(self
            .inner
            .list_registries(pb::ListRegistriesRequest {})
            .await?
            .into_inner())
    }

    pub async fn search_packs(
        &mut self,
        keyword: &str,
    ) -> Result<pb::SearchPacksResponse, ClientError> {
        Ok(self
            .inner
            .search_packs(pb::SearchPacksRequest {
                keyword: keyword.to_string(),
            })
            .await?
            .into_inner())
    }

    pub async fn register_batch_stream(
        &mut self,
        request: pb::RegisterBatchRequest,
    ) -> Result<EventStream<pb::RegisterBatchResult>, ClientError> {
        Ok(events(
            self.inner.register_batch(request).await?.into_inner(),
        ))
    }

    pub async fn register_batch(
        &mut self,
        request: pb::RegisterBatchRequest,
    ) -> Result<pb::RegisterBatchResult, ClientError> {
        finish(self.register_batch_stream(request).await?, |_| {}).await
    }

    /// The whole pipeline: download, resolve, build, register (all or nothing).
    pub async fn install_stream(
        &mut self,
        request: pb::InstallRequest,
    ) -> Result<EventStream<pb::InstallResult>, ClientError> {
        Ok(events(self.inner.install(request).await?.into_inner()))
    }

    pub async fn install(
        &mut self,
        request: pb::InstallRequest,
    ) -> Result<pb::InstallResult, ClientError> {
        finish(self.install_stream(request).await?, |_| {}).await
    }

    /// Removes installed packs: files, rows, environments; all or nothing.
    pub async fn remove_packs_stream(
        &mut self,
        request: pb::RemovePacksRequest,
    ) -> Result<EventStream<pb::RemovePacksResult>, ClientError> {
        Ok(events(self.inner.remove_packs(request).await?.into_inner()))
    }

    pub async fn remove_packs(
        &mut self,
        request: pb::RemovePacksRequest,
    ) -> Result<pb::RemovePacksResult, ClientError> {
        finish(self.remove_packs_stream(request).await?, |_| {}).await
    }

    /// Pack events from `request.after` (0: the oldest kept), then live unless
    /// `stored_only`. Resume with the last `cursor` seen to miss nothing.
    pub async fn watch_events(
        &mut self,
        request: pb::WatchEventsRequest,
    ) -> Result<Pin<Box<dyn Stream<Item = Result<pb::PackEvent, Status>> + Send>>, ClientError>
    {
        Ok(Box::pin(
            self.inner.watch_events(request).await?.into_inner(),
        ))
    }

    /// A pack's history, newest first, and its kept versions.
    pub async fn pack_history(
        &mut self,
        request: pb::PackHistoryRequest,
    ) -> Result<pb::PackHistoryResponse, ClientError> {
        Ok(self.inner.pack_history(request).await?.into_inner())
    }

    /// Puts a kept version of a pack back: files, rows and environment links.
    pub async fn rollback_pack_stream(
        &mut self,
        request: pb::RollbackPackRequest,
    ) -> Result<EventStream<pb::RollbackPackResult>, ClientError> {
        Ok(events(
            self.inner.rollback_pack(request).await?.into_inner(),
        ))
    }

    pub async fn rollback_pack(
        &mut self,
        request: pb::RollbackPackRequest,
    ) -> Result<pb::RollbackPackResult, ClientError> {
        finish(self.rollback_pack_stream(request).await?, |_| {}).await
    }

    /// A page of installed packs.
    pub async fn list_packs(
        &mut self,
        request: pb::ListPacksRequest,
    ) -> Result<pb::ListPacksResponse, ClientError> {
        Ok(self.inner.list_packs(request).await?.into_inner())
    }

    /// One installed pack in full; `NOT_FOUND` when it is not installed.
    pub async fn get_pack(&mut self, pack_ref: &str) -> Result<pb::PackDetail, ClientError> {
        Ok(self
            .inner
            .get_pack(pb::GetPackRequest {
                r#ref: pack_ref.to_string(),
            })
            .await?
            .into_inner())
    }

    /// Checks installed packs' files against what registration recorded.
    pub async fn verify_packs_stream(
        &mut self,
        request: pb::VerifyPacksRequest,
    ) -> Result<EventStream<pb::VerifyPacksResult>, ClientError> {
        Ok(events(self.inner.verify_packs(request).await?.into_inner()))
    }

    pub async fn verify_packs(
        &mut self,
        request: pb::VerifyPacksRequest,
    ) -> Result<pb::VerifyPacksResult, ClientError> {
        finish(self.verify_packs_stream(request).await?, |_| {}).await
    }
}
