//! RPC errors, and their one mapping to and from the wire's `ErrorBody`.

use std::net::SocketAddr;

use crate::identity::NodeId;
use crate::wire::messages::ERROR_DETAIL_BYTES_MAX;
use crate::wire::{error_code, ErrorBody, Kind, WireError, WIRE_VERSION};

/// Why a call (or a handler) failed.
#[derive(Debug, thiserror::Error)]
pub enum RpcError {
    // --- local: reaching the peer ---
    #[error("connect to {node} at {addr}: {reason}")]
    Connect {
        node: NodeId,
        addr: SocketAddr,
        reason: String,
    },
    #[error("{node} at {addr} unreachable (backing off {retry_in_ms} ms more): {last_error}")]
    Unreachable {
        node: NodeId,
        addr: SocketAddr,
        retry_in_ms: u64,
        last_error: String,
    },
    #[error("connection closed: {0}")]
    ConnectionClosed(String),
    #[error("deadline exceeded")]
    DeadlineExceeded,
    #[error("message encoding: {0}")]
    Codec(String),
    #[error("wire: {0}")]
    Wire(#[from] WireError),

    // --- reported by the peer (or returned by a handler, to be sent) ---
    #[error("peer does not support message kind {kind}")]
    UnsupportedKind { kind: Kind },
    #[error("peer does not support wire version {version} (it reads up to {max_supported})")]
    UnsupportedVersion { version: u8, max_supported: u8 },
    #[error("forbidden: {0}")]
    Forbidden(String),
    #[error("peer overloaded")]
    Overloaded,
    #[error("bad request: {0}")]
    BadRequest(String),
    #[error("peer serves no handler for {kind}")]
    NoHandler { kind: Kind },
    #[error("application error {code}: {detail}")]
    Application { code: u32, detail: String },
    #[error("peer internal error: {0}")]
    Internal(String),
    #[error("peer error code {code}: {detail}")]
    Remote { code: u16, detail: String },
}

impl RpcError {
    /// Whether the request surely reached no handler: the peer could not
    /// be reached, or refused the request whole. For every other error a
    /// write may have been applied, or not (a deadline that passed, a
    /// connection lost after the send): a caller that must know which
    /// can rule it out only for these.
    pub fn never_handled(&self) -> bool {
        matches!(
            self,
            RpcError::Connect { .. }
                | RpcError::Unreachable { .. }
                | RpcError::UnsupportedKind { .. }
                | RpcError::UnsupportedVersion { .. }
                | RpcError::Forbidden(_)
                | RpcError::Overloaded
                | RpcError::BadRequest(_)
                | RpcError::NoHandler { .. }
        )
    }

    /// The error response a server sends for this error, for a request of
    /// `kind`.
    pub fn to_body(&self, kind: Kind) -> ErrorBody {
        let (code, app_code) = match self {
            RpcError::UnsupportedKind { kind } => (error_code::UNSUPPORTED_KIND, kind.0 as u32),
            RpcError::UnsupportedVersion { .. } => {
                (error_code::UNSUPPORTED_VERSION, WIRE_VERSION as u32)
            }
            RpcError::Forbidden(_) => (error_code::FORBIDDEN, 0),
            RpcError::DeadlineExceeded => (error_code::DEADLINE_EXCEEDED, 0),
            RpcError::Overloaded => (error_code::OVERLOADED, 0),
            RpcError::BadRequest(_) | RpcError::Codec(_) => (error_code::BAD_REQUEST, 0),
            RpcError::NoHandler { .. } => (error_code::NO_HANDLER, kind.0 as u32),
            RpcError::Application { code, .. } => (error_code::APPLICATION, *code),
            RpcError::Remote { code, .. } => (*code, 0),
            // A handler that failed calling a third node: that is an
            // internal error of this one, as far as our caller is concerned.
            RpcError::Connect { .. }
            | RpcError::Unreachable { .. }
            | RpcError::ConnectionClosed(_)
            | RpcError::Wire(_)
            | RpcError::Internal(_) => (error_code::INTERNAL, 0),
        };
        let detail = match self {
            RpcError::Application { detail, .. }
            | RpcError::Remote { detail, .. }
            | RpcError::Forbidden(detail)
            | RpcError::BadRequest(detail)
            | RpcError::Codec(detail)
            | RpcError::Internal(detail) => detail.clone(),
            other => other.to_string(),
        };
        ErrorBody {
            code,
            app_code,
            detail: truncate(detail, ERROR_DETAIL_BYTES_MAX),
        }
    }

    /// The error a caller sees for an error response.
    pub fn from_body(body: ErrorBody, kind: Kind) -> RpcError {
        match body.code {
            error_code::UNSUPPORTED_KIND => RpcError::UnsupportedKind { kind },
            error_code::UNSUPPORTED_VERSION => RpcError::UnsupportedVersion {
                version: WIRE_VERSION,
                max_supported: u8::try_from(body.app_code).unwrap_or(u8::MAX),
            },
            error_code::FORBIDDEN => RpcError::Forbidden(body.detail),
            error_code::DEADLINE_EXCEEDED => RpcError::DeadlineExceeded,
            error_code::OVERLOADED => RpcError::Overloaded,
            error_code::BAD_REQUEST => RpcError::BadRequest(body.detail),
            error_code::NO_HANDLER => RpcError::NoHandler { kind },
            error_code::APPLICATION => RpcError::Application {
                code: body.app_code,
                detail: body.detail,
            },
            error_code::INTERNAL => RpcError::Internal(body.detail),
            code => RpcError::Remote {
                code,
                detail: body.detail,
            },
        }
    }
}

fn truncate(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut cut = max;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_round_trip() {
        let k = Kind::METADATA_WRITE;
        let cases = [
            RpcError::UnsupportedKind { kind: k },
            RpcError::Forbidden("gateway may not send MetadataWrite".into()),
            RpcError::DeadlineExceeded,
            RpcError::Overloaded,
            RpcError::BadRequest("x".into()),
            RpcError::NoHandler { kind: k },
            RpcError::Application {
                code: 42,
                detail: "no such LUN".into(),
            },
            RpcError::Internal("boom".into()),
        ];
        for e in cases {
            let back = RpcError::from_body(e.to_body(k), k);
            assert_eq!(
                std::mem::discriminant(&back),
                std::mem::discriminant(&e),
                "{e:?} -> {back:?}"
            );
        }
        let unknown = RpcError::from_body(
            ErrorBody {
                code: 999,
                app_code: 0,
                detail: "new".into(),
            },
            k,
        );
        assert!(matches!(unknown, RpcError::Remote { code: 999, .. }));
        assert_eq!(truncate("é".repeat(600), 1023).len(), 1022);
    }
}
