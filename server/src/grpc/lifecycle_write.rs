//! RemovePacks, PackHistory and RollbackPack.

use attune_packs_proto::v1 as pb;
use tonic::{Request, Response, Status};

use super::{Call, EventStream, PackServiceImpl, status::status};
use crate::{
    auth::Principal,
    lifecycle::remove::{RemoveReport, RemoveRequest, Remover},
};

pub(super) async fn remove_packs(
    service: &PackServiceImpl,
    request: Request<pb::RemovePacksRequest>,
) -> Result<Response<EventStream<pb::RemovePacksEvent>>, Status> {
    let call = Call::start(&request, "RemovePacks");
    let requested_by = request
        .extensions()
        .get::<Principal>()
        .map(|p| p.subject.clone());
    let message = request.into_inner();
    let stage_request = RemoveRequest {
        refs: message.refs,
        cascade: message.cascade,
        force: message.force,
        dry_run: message.dry_run,
        requested_by,
    };
    // Malformed requests fail before the stream starts: INVALID_ARGUMENT, not an event.
    crate::lifecycle::remove::checked_refs(&stage_request.refs).map_err(|e| status(&e))?;
    let state = &service.state;
    let remover = Remover::new(
        state.db.clone(),
        std::sync::Arc::clone(&state.journal),
        state.locks.clone(),
    );
    Ok(call.stream(
        &service.stopping,
        move |reporter| async move {
            remover
                .remove(stage_request, &reporter)
                .await
                .map(remove_result)
                .map_err(|e| status(&e))
        },
        |p| pb::RemovePacksEvent {
            event: Some(pb::remove_packs_event::Event::Progress(p)),
        },
        |r| pb::RemovePacksEvent {
            event: Some(pb::remove_packs_event::Event::Result(r)),
        },
    ))
}

fn remove_result(report: RemoveReport) -> pb::RemovePacksResult {
    let path = |p: &std::path::Path| p.display().to_string();
    pb::RemovePacksResult {
        success: report.success(),
        dry_run: report.dry_run,
        removed: report
            .removed
            .iter()
            .map(|r| pb::RemovedPack {
                r#ref: r.pack_ref.clone(),
                version: r.version.clone(),
                pack_id: r.pack_id,
                storage_path: path(&r.storage_path),
                dependent: r.dependent,
                environments: r.environments.iter().map(|e| path(e)).collect(),
                kept_versions: r.kept_versions.clone(),
                left_dependents: r.left_dependents.clone(),
            })
            .collect(),
        errors: report
            .refused
            .iter()
            .map(|e| pb::RemovalError {
                r#ref: e.pack_ref().to_string(),
                message: e.to_string(),
                dependents: e.dependents().to_vec(),
                reason: e.reason().to_string(),
            })
            .collect(),
    }
}

pub(super) async fn pack_history(
    _service: &PackServiceImpl,
    _request: Request<pb::PackHistoryRequest>,
) -> Result<Response<pb::PackHistoryResponse>, Status> {
    Err(Status::unimplemented("PackHistory"))
}

pub(super) async fn rollback_pack(
    _service: &PackServiceImpl,
    _request: Request<pb::RollbackPackRequest>,
) -> Result<Response<EventStream<pb::RollbackPackEvent>>, Status> {
    Err(Status::unimplemented("RollbackPack"))
}
