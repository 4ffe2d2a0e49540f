//! The gRPC door: `attune.packs.v1.PackService` over the stage functions.
//!
//! Each RPC validates and converts its request, runs the stage in a task with a
//! [`Reporter`], and streams the stage's progress followed by exactly one result.
//! When the caller goes away the output stream closes, the task drops the stage's
//! future (cancelling async work) and the reporter reads as cancelled (stopping
//! blocking work).

mod convert;
mod decode_status;
mod events;
mod lifecycle_read;
mod lifecycle_write;
pub mod status;

pub use decode_status::malformed_requests_are_invalid_arguments;
pub use events::STARTS_AFTER;

use std::{future::Future, pin::Pin, time::Instant};

use attune_packs_proto::v1::{
    self as pb, BuildEnvsEvent, DependenciesEvent, DownloadEvent, InstallEvent, RegisterBatchEvent,
    pack_service_server::PackService,
};
use futures::Stream;
use tokio::sync::mpsc;
use tonic::{Request, Response, Status, metadata::MetadataValue};
use tracing::{Instrument, Span};

use self::status::status;
use crate::{
    auth::{Authenticator, Principal},
    deps, grants, install,
    progress::{ProgressEvent, Reporter},
    shutdown::Stopping,
    state::AppState,
};

pub type EventStream<E> = Pin<Box<dyn Stream<Item = Result<E, Status>> + Send + 'static>>;

/// Request id metadata key, accepted from callers and echoed back.
const REQUEST_ID: &str = "x-request-id";

pub struct PackServiceImpl {
    state: AppState,
    /// Triggered at shutdown: every streaming call is cancelled.
    stopping: Stopping,
}

impl PackServiceImpl {
    pub fn new(state: AppState) -> Self {
        Self {
            state,
            stopping: Stopping::default(),
        }
    }

    /// What shutdown triggers and waits on for this service's calls.
    pub fn stopping(&self) -> &Stopping {
        &self.stopping
    }

    /// Who may do what, checked once for both doors: every RPC below starts here, the
    /// gRPC interceptor and the REST gateway having put the caller's [`Principal`] in
    /// the request. `rpc` is the method name `grants::RPC_GRANTS` is keyed by.
    fn allow<T>(&self, request: &Request<T>, rpc: &'static str) -> Result<(), Status> {
        let principal = request.extensions().get::<Principal>();
        grants::authorize(
            principal,
            rpc,
            self.state.config.auth.legacy_tokens_full_access,
        )
        .map_err(|e| {
            let subject = principal
                .map(|p| crate::auth::escape_for_log(&p.subject))
                .unwrap_or_default();
            tracing::info!(rpc, subject = %subject, reason = %e, "refused a call");
            status(&e)
        })
    }
}

/// Checks the bearer token of every PackService call and hands the caller, with its
/// grants, to the service, which checks them per RPC ([`PackServiceImpl::allow`]:
/// the interceptor does not see which method is called). Health and reflection are
/// separate services and stay open.
pub fn auth_interceptor(
    auth: Authenticator,
) -> impl FnMut(Request<()>) -> Result<Request<()>, Status> + Clone {
    move |mut request: Request<()>| {
        let header = match request.metadata().get("authorization") {
            None => None,
            Some(value) => Some(value.to_str().map_err(|_| {
                Status::unauthenticated("malformed authorization: not printable ASCII")
            })?),
        };
        match auth.verify_header(header) {
            Ok(principal) => {
                request.extensions_mut().insert(principal);
                Ok(request)
            }
            Err(e) => {
                tracing::info!(reason = %e, "rejected unauthenticated call");
                Err(Status::unauthenticated(e.to_string()))
            }
        }
    }
}

/// Who called and under which request id; the span every log line of the call joins.
struct Call {
    span: Span,
    request_id: String,
    started: Instant,
}

impl Call {
    fn start<T>(request: &Request<T>, method: &'static str) -> Self {
        let subject = request
            .extensions()
            .get::<Principal>()
            .map(|p| crate::auth::escape_for_log(&p.subject))
            .unwrap_or_default();
        let request_id = request
            .metadata()
            .get(REQUEST_ID)
            .and_then(|v| v.to_str().ok())
            .filter(|v| !v.is_empty() && v.len() <= 128)
            .map(str::to_string)
            .unwrap_or_else(new_request_id);
        let span = tracing::info_span!("rpc", method, request_id = %request_id, subject = %subject);
        span.in_scope(|| tracing::info!("call started"));
        Self {
            span,
            request_id,
            started: Instant::now(),
        }
    }

    /// Runs `stage` in its own task and streams its progress, then its result. At
    /// shutdown the stage is cancelled (its future dropped) and the caller gets
    /// UNAVAILABLE.
    fn stream<E, R, F, Fut>(
        self,
        stopping: &Stopping,
        stage: F,
        progress: fn(pb::Progress) -> E,
        result: fn(R) -> E,
    ) -> Response<EventStream<E>>
    where
        E: Send + 'static,
        R: Send + 'static,
        F: FnOnce(Reporter) -> Fut + Send + 'static,
        Fut: Future<Output = Result<R, Status>> + Send + 'static,
    {
        let (out, rx) = mpsc::channel::<Result<E, Status>>(64);
        let (reporter, mut events) = Reporter::channel("");
        let started = self.started;
        let running = stopping.call();
        let stopping = stopping.clone();
        let task = async move {
            let _running = running;
            // Boxed so that shutdown can drop it (and so clean up) before answering.
            let mut work = Box::pin(stage(reporter));
            let forward = |event: ProgressEvent| Ok(progress(convert::progress(event)));
            let outcome = loop {
                tokio::select! {
                    biased;
                    Some(event) = events.recv() => {
                        if out.send(forward(event)).await.is_err() {
                            tracing::info!("caller went away; call cancelled");
                            return;
                        }
                    }
                    outcome = &mut work => break outcome,
                    _ = out.closed() => {
                        tracing::info!("caller went away; call cancelled");
                        return;
                    }
                    _ = stopping.triggered() => {
                        tracing::info!("server shutting down; call cancelled");
                        drop(work);
                        let _ = out
                            .send(Err(Status::unavailable(
                                "the server is shutting down: the call was cancelled and its unfinished work undone",
                            )))
                            .await;
                        return;
                    }
                }
            };
            while let Ok(event) = events.try_recv() {
                if out.send(forward(event)).await.is_err() {
                    return;
                }
            }
            let elapsed_ms = started.elapsed().as_millis() as u64;
            match outcome {
                Ok(r) => {
                    tracing::info!(elapsed_ms, "call finished");
                    let _ = out.send(Ok(result(r))).await;
                }
                Err(status) => {
                    tracing::warn!(elapsed_ms, code = ?status.code(), message = status.message(), "call failed");
                    let _ = out.send(Err(status)).await;
                }
            }
        };
        tokio::spawn(task.instrument(self.span));
        let mut response = Response::new(
            Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx)) as EventStream<E>
        );
        if let Ok(value) = MetadataValue::try_from(self.request_id.as_str()) {
            response.metadata_mut().insert(REQUEST_ID, value);
        }
        response
    }
}

fn new_request_id() -> String {
    crate::paths::unique_suffix()
}

#[tonic::async_trait]
impl PackService for PackServiceImpl {
    type DownloadStream = EventStream<DownloadEvent>;
    type DependenciesStream = EventStream<DependenciesEvent>;
    type BuildEnvsStream = EventStream<BuildEnvsEvent>;
    type RegisterBatchStream = EventStream<RegisterBatchEvent>;
    type InstallStream = EventStream<InstallEvent>;
    type VerifyPacksStream = EventStream<pb::VerifyPacksEvent>;
    type RemovePacksStream = EventStream<pb::RemovePacksEvent>;
    type RollbackPackStream = EventStream<pb::RollbackPackEvent>;
    type WatchEventsStream = EventStream<pb::PackEvent>;

    async fn list_packs(
        &self,
        request: Request<pb::ListPacksRequest>,
    ) -> Result<Response<pb::ListPacksResponse>, Status> {
        self.allow(&request, "ListPacks")?;
        lifecycle_read::list_packs(self, request).await
    }

    async fn get_pack(
        &self,
        request: Request<pb::GetPackRequest>,
    ) -> Result<Response<pb::PackDetail>, Status> {
        self.allow(&request, "GetPack")?;
        lifecycle_read::get_pack(self, request).await
    }

    async fn verify_packs(
        &self,
        request: Request<pb::VerifyPacksRequest>,
    ) -> Result<Response<Self::VerifyPacksStream>, Status> {
        self.allow(&request, "VerifyPacks")?;
        lifecycle_read::verify_packs(self, request).await
    }

    async fn remove_packs(
        &self,
        request: Request<pb::RemovePacksRequest>,
    ) -> Result<Response<Self::RemovePacksStream>, Status> {
        self.allow(&request, "RemovePacks")?;
        lifecycle_write::remove_packs(self, request).await
    }

    async fn pack_history(
        &self,
        request: Request<pb::PackHistoryRequest>,
    ) -> Result<Response<pb::PackHistoryResponse>, Status> {
        self.allow(&request, "PackHistory")?;
        lifecycle_write::pack_history(self, request).await
    }

    async fn rollback_pack(
        &self,
        request: Request<pb::RollbackPackRequest>,
    ) -> Result<Response<Self::RollbackPackStream>, Status> {
        self.allow(&request, "RollbackPack")?;
        lifecycle_write::rollback_pack(self, request).await
    }

    async fn watch_events(
        &self,
        request: Request<pb::WatchEventsRequest>,
    ) -> Result<Response<Self::WatchEventsStream>, Status> {
        self.allow(&request, "WatchEvents")?;
        events::watch_events(self, request).await
    }

    async fn install(
        &self,
        request: Request<pb::InstallRequest>,
    ) -> Result<Response<Self::InstallStream>, Status> {
        self.allow(&request, "Install")?;
        let call = Call::start(&request, "Install");
        let subject = request
            .extensions()
            .get::<Principal>()
            .map(|p| p.subject.clone());
        let stage_request = convert::install_request(request.into_inner(), subject)?;
        let state = self.state.clone();
        Ok(call.stream(
            &self.stopping,
            move |reporter| async move {
                install::Installer { state: &state }
                    .install(stage_request, &reporter)
                    .await
                    .map(convert::install_result)
                    .map_err(|e| status(&e))
            },
            |p| InstallEvent {
                event: Some(pb::install_event::Event::Progress(p)),
            },
            |r| InstallEvent {
                event: Some(pb::install_event::Event::Result(r)),
            },
        ))
    }

    async fn download(
        &self,
        request: Request<pb::DownloadRequest>,
    ) -> Result<Response<Self::DownloadStream>, Status> {
        self.allow(&request, "Download")?;
        let call = Call::start(&request, "Download");
        let stage_request = convert::download_request(request.into_inner())?;
        let downloader = self.state.downloader.clone();
        Ok(call.stream(
            &self.stopping,
            move |reporter| async move {
                downloader
                    .download(stage_request, &reporter)
                    .await
                    .map(convert::download_result)
                    .map_err(|e| status(&e))
            },
            |p| DownloadEvent {
                event: Some(pb::download_event::Event::Progress(p)),
            },
            |r| DownloadEvent {
                event: Some(pb::download_event::Event::Result(r)),
            },
        ))
    }

    async fn dependencies(
        &self,
        request: Request<pb::DependenciesRequest>,
    ) -> Result<Response<Self::DependenciesStream>, Status> {
        self.allow(&request, "Dependencies")?;
        let call = Call::start(&request, "Dependencies");
        let stage_request = convert::dependencies_request(request.into_inner())?;
        let state = self.state.clone();
        Ok(call.stream(
            &self.stopping,
            move |reporter| async move {
                deps::analyze(&state.db, &state.paths, stage_request, &reporter)
                    .await
                    .map(convert::dependencies_result)
                    .map_err(|e| status(&e))
            },
            |p| DependenciesEvent {
                event: Some(pb::dependencies_event::Event::Progress(p)),
            },
            |r| DependenciesEvent {
                event: Some(pb::dependencies_event::Event::Result(r)),
            },
        ))
    }

    async fn build_envs(
        &self,
        request: Request<pb::BuildEnvsRequest>,
    ) -> Result<Response<Self::BuildEnvsStream>, Status> {
        self.allow(&request, "BuildEnvs")?;
        let call = Call::start(&request, "BuildEnvs");
        let stage_request = convert::build_envs_request(request.into_inner())?;
        let builder = self.state.env_builder.clone();
        Ok(call.stream(
            &self.stopping,
            move |reporter| async move {
                builder
                    .build(stage_request, &reporter)
                    .await
                    .map(convert::build_envs_result)
                    .map_err(|e| status(&e))
            },
            |p| BuildEnvsEvent {
                event: Some(pb::build_envs_event::Event::Progress(p)),
            },
            |r| BuildEnvsEvent {
                event: Some(pb::build_envs_event::Event::Result(r)),
            },
        ))
    }

    async fn list_registries(
        &self,
        request: Request<pb::ListRegistriesRequest>,
    ) -> Result<Response<pb::ListRegistriesResponse>, Status> {
        self.allow(&request, "ListRegistries")?;
        let _call = Call::start(&request, "ListRegistries");
        let registries = self
            .state
            .downloader
            .registry()
            .indices()
            .into_iter()
            .map(|i| pb::Registry {
                name: i.name,
                url: i.url,
                priority: i.priority,
                enabled: i.enabled,
                has_headers: i.has_headers,
            })
            .collect();
        Ok(Response::new(pb::ListRegistriesResponse { registries }))
    }

    async fn search_packs(
        &self,
        request: Request<pb::SearchPacksRequest>,
    ) -> Result<Response<pb::SearchPacksResponse>, Status> {
        self.allow(&request, "SearchPacks")?;
        let call = Call::start(&request, "SearchPacks");
        let keyword = request.into_inner().keyword;
        let hits = self
            .state
            .downloader
            .registry()
            .search(keyword.trim())
            .instrument(call.span.clone())
            .await
            .map_err(|e| status(&e))?;
        let packs = hits
            .into_iter()
            .map(|h| pb::PackSummary {
                pack_ref: h.pack_ref,
                label: h.label,
                description: h.description,
                version: h.version.to_string(),
                versions: h.versions,
                author: h.author,
                license: h.license,
                keywords: h.keywords,
                index_url: h.index_url,
                index_name: h.index_name,
            })
            .collect();
        Ok(Response::new(pb::SearchPacksResponse { packs }))
    }

    async fn register_batch(
        &self,
        request: Request<pb::RegisterBatchRequest>,
    ) -> Result<Response<Self::RegisterBatchStream>, Status> {
        self.allow(&request, "RegisterBatch")?;
        let call = Call::start(&request, "RegisterBatch");
        let subject = request
            .extensions()
            .get::<Principal>()
            .map(|p| p.subject.clone());
        let stage_request = convert::register_request(request.into_inner(), subject)?;
        let registrar = self.state.registrar.clone();
        Ok(call.stream(
            &self.stopping,
            move |reporter| async move {
                registrar
                    .register(stage_request, &reporter)
                    .await
                    .map(convert::register_result)
                    .map_err(|e| status(&e))
            },
            |p| RegisterBatchEvent {
                event: Some(pb::register_batch_event::Event::Progress(p)),
            },
            |r| RegisterBatchEvent {
                event: Some(pb::register_batch_event::Event::Result(r)),
            },
        ))
    }
}
