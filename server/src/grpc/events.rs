//! WatchEvents.

use attune_packs_proto::v1 as pb;
use tonic::{Request, Response, Status};

use super::{EventStream, PackServiceImpl};

pub(super) async fn watch_events(
    _service: &PackServiceImpl,
    _request: Request<pb::WatchEventsRequest>,
) -> Result<Response<EventStream<pb::PackEvent>>, Status> {
    Err(Status::unimplemented("WatchEvents"))
}
