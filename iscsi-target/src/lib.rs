//! weft's iSCSI target: the iSCSI protocol (RFC 7143) and a SCSI direct-access
//! device server (SPC-4 / SBC-3) over a [`backend::BlockDevice`].
//!
//! The protocol cores (`pdu`, `login`, `session`, `scsi`) do no I/O; the
//! `server` module is the thin tokio driver around them.

pub mod backend;
pub mod config;
pub mod gateway;
pub mod limits;
pub mod login;
pub mod pdu;
pub mod scsi;
pub mod server;
pub mod session;
