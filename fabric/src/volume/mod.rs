//! The volume client: a LUN as a range of bytes, over its extents'
//! chunks. What a gateway uses as its block device.
//!
//! - [`layout`]: LUN offset → extent → row → chunk (pure).
//! - [`client`]: reads straight from data chunk holders (in parallel,
//!   hedged through the primary when a holder is slow, missing or
//!   corrupt), writes through the extent's primary, extents allocated on
//!   first write, flush.

pub mod client;
pub mod layout;

pub use client::{Volume, VolumeConfig, VolumeError};
pub use layout::Layout;
