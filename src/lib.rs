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
