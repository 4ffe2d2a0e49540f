//! RemovePacks, PackHistory and RollbackPack.

use attune_packs_proto::v1 as pb;
use tonic::{Request, Response, Status};

use super::{EventStream, PackServiceImpl};

pub(super) async fn remove_packs(
    _service: &PackServiceImpl,
    _request: Request<pb::RemovePacksRequest>,
) -> Result<Response<EventStream<pb::RemovePacksEvent>>, Status> {
    Err(Status::unimplemented("RemovePacks"))
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
