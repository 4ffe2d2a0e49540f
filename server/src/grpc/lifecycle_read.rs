//! ListPacks, GetPack and VerifyPacks.

use attune_packs_proto::v1 as pb;
use tonic::{Request, Response, Status};

use super::{EventStream, PackServiceImpl};

pub(super) async fn list_packs(
    _service: &PackServiceImpl,
    _request: Request<pb::ListPacksRequest>,
) -> Result<Response<pb::ListPacksResponse>, Status> {
    Err(Status::unimplemented("ListPacks"))
}

pub(super) async fn get_pack(
    _service: &PackServiceImpl,
    _request: Request<pb::GetPackRequest>,
) -> Result<Response<pb::PackDetail>, Status> {
    Err(Status::unimplemented("GetPack"))
}

pub(super) async fn verify_packs(
    _service: &PackServiceImpl,
    _request: Request<pb::VerifyPacksRequest>,
) -> Result<Response<EventStream<pb::VerifyPacksEvent>>, Status> {
    Err(Status::unimplemented("VerifyPacks"))
}
