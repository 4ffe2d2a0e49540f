//! WatchEvents: the event log from a cursor, then live.

use attune_packs_proto::v1 as pb;
use tokio::sync::mpsc;
use tonic::{Request, Response, Status, metadata::MetadataValue};
use tracing::Instrument;

use super::{Call, EventStream, PackServiceImpl, REQUEST_ID, status::status};
use crate::{
    events::watch::{Start, WatchError},
    store::outbox::OutboxEvent,
};

/// Response metadata: the cursor the stream starts after (with `only_new`, the newest
/// event's), so that a caller knows where it stands before any event arrives.
pub const STARTS_AFTER: &str = "x-events-after";

/// Events queued towards a slow caller; with one batch in the reader, what a call
/// holds in memory.
const QUEUED: usize = 64;

pub(super) async fn watch_events(
    service: &PackServiceImpl,
    request: Request<pb::WatchEventsRequest>,
) -> Result<Response<EventStream<pb::PackEvent>>, Status> {
    let call = Call::start(&request, "WatchEvents");
    let request = request.into_inner();
    let start = if request.only_new {
        Start::Tip
    } else {
        Start::After(request.after)
    };
    let mut watcher = service
        .state
        .events
        .watch(start)
        .instrument(call.span.clone())
        .await
        .map_err(|e| {
            call.span
                .in_scope(|| tracing::info!(error = %e, "watch refused"));
            status(&e)
        })?;
    let starts_after = watcher.cursor();
    let follow = !request.stored_only;
    // 0: no limit.
    let mut left = (request.limit > 0).then_some(request.limit);
    let (out, rx) = mpsc::channel::<Result<pb::PackEvent, Status>>(QUEUED);
    let running = service.stopping.call();
    let stopping = service.stopping.clone();
    let task = async move {
        let _running = running;
        loop {
            let limit = left.unwrap_or(u32::MAX);
            let read = async {
                if follow {
                    watcher.next(limit).await
                } else {
                    watcher.stored(limit).await
                }
            };
            let batch: Result<Vec<OutboxEvent>, WatchError> = tokio::select! {
                biased;
                _ = stopping.triggered() => {
                    tracing::info!("server shutting down; watch ended");
                    let _ = out
                        .send(Err(Status::unavailable(
                            "the server is shutting down: resume the watch from your last cursor",
                        )))
                        .await;
                    return;
                }
                _ = out.closed() => {
                    tracing::info!("caller went away; watch ended");
                    return;
                }
                batch = read => batch,
            };
            let batch = match batch {
                Ok(batch) => batch,
                Err(e) => {
                    tracing::warn!(error = %e, "watch failed");
                    let _ = out.send(Err(status(&e))).await;
                    return;
                }
            };
            if batch.is_empty() {
                // Only a stored-only read ends empty: caught up.
                tracing::info!(
                    through = watcher.cursor(),
                    "stored events sent; watch ended"
                );
                return;
            }
            let sent = batch.len() as u32;
            for event in batch {
                // A caller that stops reading must not hold shutdown up.
                tokio::select! {
                    sent = out.send(Ok(pack_event(event))) => if sent.is_err() {
                        tracing::info!("caller went away; watch ended");
                        return;
                    },
                    _ = stopping.triggered() => {
                        tracing::info!("server shutting down; watch ended");
                        return;
                    }
                }
            }
            if let Some(n) = &mut left {
                *n = n.saturating_sub(sent);
                if *n == 0 {
                    tracing::info!(through = watcher.cursor(), "limit reached; watch ended");
                    return;
                }
            }
        }
    };
    tokio::spawn(task.instrument(call.span.clone()));
    let mut response = Response::new(
        Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx)) as EventStream<pb::PackEvent>
    );
    if let Ok(value) = MetadataValue::try_from(call.request_id.as_str()) {
        response.metadata_mut().insert(REQUEST_ID, value);
    }
    if let Ok(value) = MetadataValue::try_from(starts_after.to_string()) {
        response.metadata_mut().insert(STARTS_AFTER, value);
    }
    Ok(response)
}

fn pack_event(event: OutboxEvent) -> pb::PackEvent {
    pb::PackEvent {
        cursor: u64::try_from(event.id).unwrap_or_default(),
        event_id: event.event_id,
        event_type: event.event_type,
        payload_json: event.payload,
        created_at_ms: event.created_at_ms,
    }
}
