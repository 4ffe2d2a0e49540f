//! Generated types of the `attune.packs.v1` gRPC API, shared by the server and the client.
//!
//! Nothing but generated code lives here: the contract itself is
//! `proto/attune/packs/v1/packs.proto`.

pub mod v1 {
    tonic::include_proto!("attune.packs.v1");
}

/// Encoded `FileDescriptorSet` of the API (imports included), for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/attune_packs_descriptor.bin"));

/// One event of a streamed call, seen generically: progress, or the final result.
#[derive(Debug, Clone, PartialEq)]
pub enum Event<R> {
    Progress(v1::Progress),
    Result(R),
}

/// The per-RPC event messages (`DownloadEvent`, …), each a oneof of progress and result.
pub trait StreamEvent: Send + 'static {
    type Result: Send + 'static;
    fn into_event(self) -> Option<Event<Self::Result>>;
}

macro_rules! stream_event {
    ($event:ident, $module:ident, $result:ident) => {
        impl StreamEvent for v1::$event {
            type Result = v1::$result;
            fn into_event(self) -> Option<Event<v1::$result>> {
                match self.event? {
                    v1::$module::Event::Progress(p) => Some(Event::Progress(p)),
                    v1::$module::Event::Result(r) => Some(Event::Result(r)),
                }
            }
        }
    };
}

stream_event!(DownloadEvent, download_event, DownloadResult);
stream_event!(DependenciesEvent, dependencies_event, DependenciesResult);
stream_event!(BuildEnvsEvent, build_envs_event, BuildEnvsResult);
stream_event!(
    RegisterBatchEvent,
    register_batch_event,
    RegisterBatchResult
);
stream_event!(InstallEvent, install_event, InstallResult);
stream_event!(RemovePacksEvent, remove_packs_event, RemovePacksResult);
stream_event!(RollbackPackEvent, rollback_pack_event, RollbackPackResult);
stream_event!(VerifyPacksEvent, verify_packs_event, VerifyPacksResult);
