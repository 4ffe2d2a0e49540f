//! Serving: one listener for gRPC (PackService, health, reflection v1 and v1alpha) and
//! the REST gateway (HTTP/1.1 and h2), with graceful, bounded shutdown.

use std::future::Future;

use attune_packs_proto::{FILE_DESCRIPTOR_SET, v1::pack_service_server::PackServiceServer};
use std::sync::Arc;
use tokio::net::TcpListener;

use tonic::{
    service::{Routes, interceptor::InterceptedService},
    transport::{Server, server::TcpIncoming},
};

use crate::{
    grpc::{PackServiceImpl, auth_interceptor, malformed_requests_are_invalid_arguments},
    rest::{self, RestState},
    state::AppState,
};

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot build reflection service: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    #[error("transport error: {0}")]
    Transport(#[from] tonic::transport::Error),
}

/// Serves on `listener` until `shutdown` resolves, then stops accepting, cancels the
/// calls in flight and returns once they and every registration critical section have
/// ended, or when `config.shutdown_grace` is over, whichever comes first.
pub async fn run(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let grace = state.config.shutdown_grace;
    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_serving::<PackServiceServer<PackServiceImpl>>()
        .await;

    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    // grpcurl 1.8.6 and other older clients speak only v1alpha.
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()?;

    let service = Arc::new(PackServiceImpl::new(state.clone()));
    let stopping = service.stopping().clone();
    // Publishes (and prunes) the event outbox until shutdown is triggered.
    let relay = crate::events::relay::spawn(
        state.db.clone(),
        crate::events::relay::RelaySettings::from_config(&state.config.events),
        stopping.clone(),
    );
    let packs = InterceptedService::new(
        PackServiceServer::from_arc(service.clone()),
        auth_interceptor(state.auth.clone()),
    );
    let mut grpc = Routes::builder();
    grpc.add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(packs);
    // The REST gateway shares the port: gRPC paths are `/package.Service/Method`, REST
    // paths are `/api/v1/…`, so plain path routing separates them.
    let app = grpc
        .routes()
        .into_axum_router()
        .merge(rest::router(RestState {
            service,
            auth: state.auth.clone(),
            db: state.db.clone(),
            login: state.login.clone(),
            login_max_body_bytes: state.config.login.max_body_bytes,
        }))
        .fallback(rest::fallback);
    // Response filters see what the router answered in full (axum adds `Allow` to a
    // 405 only after route layers ran), so they wrap it from outside.
    let app = axum::Router::new()
        .fallback_service(app)
        .layer(axum::middleware::map_response(rest::json_errors))
        .layer(axum::middleware::map_response(
            malformed_requests_are_invalid_arguments,
        ));

    let (signalled_tx, signalled_rx) = tokio::sync::oneshot::channel::<()>();
    let stop_calls = stopping.clone();
    let signal = async move {
        shutdown.await;
        tracing::info!(
            running_calls = stop_calls.running_calls(),
            "shutting down: no new connections; cancelling running calls"
        );
        stop_calls.trigger();
        health
            .set_not_serving::<PackServiceServer<PackServiceImpl>>()
            .await;
        let _ = signalled_tx.send(());
    };

    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "listening");
    }
    let serve = Server::builder()
        .accept_http1(true)
        .add_routes(Routes::from(app))
        // Small streamed messages must not wait for delayed ACKs (Nagle: ~40 ms each).
        .serve_with_incoming_shutdown(TcpIncoming::from(listener).with_nodelay(Some(true)), signal);
    let grace_over = async move {
        if signalled_rx.await.is_ok() {
            tokio::time::sleep(grace).await;
        } else {
            std::future::pending::<()>().await;
        }
    };
    // Cancelled calls clean up as they unwind; a registration between its swap and
    // its commit runs to its end. Both are waited for, within the grace period.
    let relay_abort = relay.abort_handle();
    let finished = async {
        serve.await?;
        stopping.calls_done().await;
        state.journal.critical_sections_done().await;
        // A batch in flight ends within events.publish_timeout; unconfirmed events
        // stay unpublished and go out after the next start.
        let _ = relay.await;
        Ok::<_, ServeError>(())
    };
    tokio::select! {
        result = finished => result?,
        _ = grace_over => tracing::warn!(
            grace_secs = grace.as_secs(),
            running_calls = stopping.running_calls(),
            "grace period over; abandoning work still running (the next start settles it)"
        ),
    }
    relay_abort.abort();
    state.db.close().await;
    Ok(())
}

/// Resolves `first` on the first SIGINT or SIGTERM; on the second, kills the pack code
/// still running and exits the process at once (what was interrupted is settled by the
/// next start). Fails only if the signal handlers cannot be installed.
pub fn on_signals(first: tokio::sync::oneshot::Sender<()>) -> std::io::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    tokio::spawn(async move {
        let mut first = Some(first);
        loop {
            tokio::select! {
                _ = term.recv() => {},
                _ = interrupt.recv() => {},
            }
            match first.take() {
                Some(first) => {
                    let _ = first.send(());
                }
                None => {
                    tracing::warn!("second signal: exiting now");
                    crate::process::kill_all_groups();
                    std::process::exit(130);
                }
            }
        }
    });
    Ok(())
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}
