//! The generated gRPC types of `proto/cleanroom/v1/cleanroom.proto` (package `cleanroom.v1`):
//! prost messages, the tonic client ([`clean_room_service_client`]) and server
//! ([`clean_room_service_server`]), and the encoded file descriptor set served by reflection.
#![allow(missing_docs, clippy::all, clippy::pedantic)]

tonic::include_proto!("cleanroom.v1");

/// The encoded `FileDescriptorSet` of the cleanroom protos (with their imports), as registered
/// with server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/cleanroom_descriptor.bin"));

/// The fully qualified name of the service, as used by health checks and reflection.
pub const SERVICE_NAME: &str = "cleanroom.v1.CleanRoomService";
