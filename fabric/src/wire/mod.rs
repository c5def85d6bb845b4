//! The versioned wire format: frames (envelope + postcard message header +
//! raw payload), message kinds with their role table, and typed messages.
//! Sans-IO throughout.

pub mod chunk;
pub mod extent;
pub mod frame;
pub mod kinds;
pub mod messages;

pub use frame::{
    decode_frame_for_fuzz, flags, Frame, FrameCodec, FrameType, Inbound, Unsupported, WireError,
    ENVELOPE_BYTES, FRAME_BYTES_MAX, HEADER_BYTES_MAX, MAGIC, PAYLOAD_BYTES_MAX, WIRE_VERSION,
    WIRE_VERSION_MIN,
};
pub use kinds::{spec, Kind, KindSpec, RoleSet, KIND_TABLE};
pub use messages::{error_code, ErrorBody, Ping, PingRequest, PingResponse, Rpc};
