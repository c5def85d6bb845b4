//! Typed message headers. A message header is postcard-encoded into a
//! frame's header bytes; bulk data rides beside it as the raw payload.
//!
//! postcard is not self-describing: adding a field changes the encoding. So
//! a header struct changes only together with a wire-version bump (or a new
//! kind), and the old decoding stays for as long as the old version is read.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::frame::{flags, Frame};
use super::kinds::{Kind, KIND_TABLE};

/// A request/response pair bound to a kind: what handlers register and
/// callers call.
pub trait Rpc {
    const KIND: Kind;
    type Request: Serialize + DeserializeOwned + Send + Sync + 'static;
    type Response: Serialize + DeserializeOwned + Send + Sync + 'static;
}

/// Longest `detail` text in an error response, in bytes; longer is cut.
pub const ERROR_DETAIL_BYTES_MAX: usize = 1024;

/// Codes of [`ErrorBody`]. A code this build does not know (from a newer
/// peer) is still reported, as `RpcError::Remote`.
pub mod error_code {
    /// The receiver does not know this message kind.
    pub const UNSUPPORTED_KIND: u16 = 1;
    /// The receiver does not read this wire version.
    pub const UNSUPPORTED_VERSION: u16 = 2;
    /// The sender's role may not send this kind.
    pub const FORBIDDEN: u16 = 3;
    /// The deadline passed before the handler finished.
    pub const DEADLINE_EXCEEDED: u16 = 4;
    /// The receiver is shedding load.
    pub const OVERLOADED: u16 = 5;
    /// The request was malformed (header did not decode, no deadline, ...).
    pub const BAD_REQUEST: u16 = 6;
    /// The kind is known but this node does not serve it (e.g. a gateway
    /// asked for chunk data).
    pub const NO_HANDLER: u16 = 7;
    /// The handler failed with an application-level error (`app_code`).
    pub const APPLICATION: u16 = 8;
    /// Anything else that went wrong on the receiver.
    pub const INTERNAL: u16 = 9;
}

/// The header of a response with `flags::ERROR` set.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub code: u16,
    /// For `APPLICATION`: the handler's own code. Otherwise 0, except for
    /// `UNSUPPORTED_VERSION`, where it is the newest version the receiver
    /// reads, and `UNSUPPORTED_KIND`, where it is the kind.
    pub app_code: u32,
    /// Human-readable, for logs.
    pub detail: String,
}

/// Ping: a probe of liveness and round-trip time. Every server answers it.
pub struct Ping;

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PingRequest {
    /// Send the request's payload back as the response payload.
    pub echo: bool,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PingResponse {}

impl Rpc for Ping {
    const KIND: Kind = Kind::PING;
    type Request = PingRequest;
    type Response = PingResponse;
}

/// Decodes `frame`'s header as whatever message its kind carries, ignoring
/// the result: the fuzz target's way to reach every header decoder.
pub(crate) fn decode_any_header_for_fuzz(frame: &Frame) {
    if frame.flags & flags::ERROR != 0 {
        let _ = postcard::from_bytes::<ErrorBody>(&frame.header);
        return;
    }
    if frame.kind == Kind::PING {
        let _ = postcard::from_bytes::<PingRequest>(&frame.header);
        let _ = postcard::from_bytes::<PingResponse>(&frame.header);
    }
    if frame.kind == Kind::GOSSIP {
        let _ = postcard::from_bytes::<crate::gossip::message::Envelope>(&frame.header);
    }
    super::chunk::decode_headers_for_fuzz(frame.kind, &frame.header);
    crate::metadata::rpc::decode_headers_for_fuzz(frame.kind, &frame.header);
    super::extent::decode_headers_for_fuzz(frame.kind, &frame.header);
    // Kinds added to the table add their decoders here.
    let _ = KIND_TABLE;
}
