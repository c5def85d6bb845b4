//! A chunkserver: one node's mass storage. Chunks on local disk with a
//! CRC32C per 4 KiB block, an LMDB index, crash-safe writes, a scrubber and
//! the extent primary's write journal; served over the fabric.
pub mod config;
pub mod gc;
pub mod journal;
pub mod meta;
pub mod node;
pub mod primary;
pub mod service;
pub mod store;
