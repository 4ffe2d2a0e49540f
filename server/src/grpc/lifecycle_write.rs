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
    service: &PackServiceImpl,
    request: Request<pb::PackHistoryRequest>,
) -> Result<Response<pb::PackHistoryResponse>, Status> {
    let _call = super::Call::start(&request, "PackHistory");
    let request = request.into_inner();
    let history = crate::lifecycle::history::pack_history(
        &service.state.db,
        request.r#ref.trim(),
        request.limit,
    )
    .await
    .map_err(|e| super::status::status(&e))?;
    Ok(Response::new(history_response(history)))
}

pub(crate) fn history_response(
    history: crate::lifecycle::history::PackHistory,
) -> pb::PackHistoryResponse {
    pb::PackHistoryResponse {
        entries: history
            .entries
            .into_iter()
            .map(|h| pb::HistoryEntry {
                id: h.id,
                r#ref: h.pack_ref,
                action: h.action,
                from_version: h.from_version.unwrap_or_default(),
                from_source: h.from_source.unwrap_or_default(),
                from_checksum: h.from_checksum.unwrap_or_default(),
                to_version: h.to_version.unwrap_or_default(),
                to_source: h.to_source.unwrap_or_default(),
                to_checksum: h.to_checksum.unwrap_or_default(),
                actor: h.actor.unwrap_or_default(),
                at_ms: h.at,
                outcome: h.outcome,
                detail: h.detail.unwrap_or_default(),
            })
            .collect(),
        kept_versions: history
            .kept
            .into_iter()
            .map(|k| pb::KeptVersion {
                version: k.version,
                checksum: k.checksum.unwrap_or_default(),
                source: k.source.unwrap_or_default(),
                kept_at_ms: k.kept_at,
            })
            .collect(),
    }
}

pub(super) async fn rollback_pack(
    service: &PackServiceImpl,
    request: Request<pb::RollbackPackRequest>,
) -> Result<Response<EventStream<pb::RollbackPackEvent>>, Status> {
    use crate::lifecycle::rollback;
    let call = super::Call::start(&request, "RollbackPack");
    let subject = request
        .extensions()
        .get::<crate::auth::Principal>()
        .map(|p| p.subject.clone());
    let request = request.into_inner();
    let to_version = request.to_version.trim();
    let stage_request = rollback::RollbackRequest {
        pack_ref: request.r#ref.trim().to_string(),
        to_version: (!to_version.is_empty()).then(|| to_version.to_string()),
        force: request.force,
        requested_by: subject,
    };
    if !crate::manifest::is_valid_pack_ref(&stage_request.pack_ref) {
        return Err(super::status::status(&rollback::RollbackError::InvalidRef(
            stage_request.pack_ref,
        )));
    }
    let state = service.state.clone();
    Ok(call.stream(
        &service.stopping,
        move |reporter| async move {
            rollback::rollback(&state, stage_request, &reporter)
                .await
                .map(rollback_result)
                .map_err(|e| super::status::status(&e))
        },
        |p| pb::RollbackPackEvent {
            event: Some(pb::rollback_pack_event::Event::Progress(p)),
        },
        |r| pb::RollbackPackEvent {
            event: Some(pb::rollback_pack_event::Event::Result(r)),
        },
    ))
}

pub(crate) fn rollback_result(
    r: crate::lifecycle::rollback::RollbackReport,
) -> pb::RollbackPackResult {
    pb::RollbackPackResult {
        success: r.success,
        r#ref: r.pack_ref,
        from_version: r.from_version,
        to_version: r.to_version,
        pack_id: r.pack_id,
        errors: r.errors,
        dependents: r.dependents,
    }
}
