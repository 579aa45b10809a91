//! The bytes on syncnode's wire (PROTOCOL.md sections 2–4).
//!
//! - [`pb`]: the prost messages of `proto/syncnode.proto`, generated at build time by protox and
//!   prost-build (no system `protoc`). Encoders write fields in tag order and omit proto3 defaults,
//!   which is exactly the encoding of the test vectors.
//! - [`convert`]: checked conversion between [`pb`] messages and `syncnode_types`. A field of the
//!   wrong length is a [`ConvertError`], never a panic; a request outside its limits (range `count`
//!   1..=1024, 1..=128 roots) is refused when it is turned into its typed form.
//! - [`frame`]: one message per frame, an unsigned LEB128 length then that many protobuf bytes.
//!   The length is checked against the frame limit (65,536 bytes for a request, 16,777,216 for a
//!   response) before any buffer is sized from it, and the buffer grows only as bytes arrive, so a
//!   peer that announces a large frame and then trickles costs no more memory than it sent.
//!
//! Invariants: nothing in this crate panics on input from outside, and nothing allocates more than
//! the limit of the frame it reads.

#![forbid(unsafe_code)]

pub mod convert;
pub mod frame;
pub mod peer_score;

/// Generated protobuf messages, package `syncnode.v1`.
#[allow(clippy::all, missing_docs)]
pub mod pb {
    include!(concat!(env!("OUT_DIR"), "/syncnode.v1.rs"));
}

pub use convert::{BlocksByRangeRequest, BlocksByRootRequest, BlocksResponse, ConvertError, Status};
pub use frame::{FrameError, decode_frame, encode_frame, read_frame, write_frame};

use std::time::Duration;

/// Identify protocol version.
pub const IDENTIFY_PROTOCOL_VERSION: &str = "/syncnode/1.0.0";
/// Kademlia protocol name.
pub const KAD_PROTOCOL: &str = "/syncnode/kad/1.0.0";
/// Status exchange protocol id.
pub const STATUS_PROTOCOL: &str = "/syncnode/status/1";
/// Blocks-by-range protocol id.
pub const BLOCKS_BY_RANGE_PROTOCOL: &str = "/syncnode/blocks_by_range/1";
/// Blocks-by-root protocol id.
pub const BLOCKS_BY_ROOT_PROTOCOL: &str = "/syncnode/blocks_by_root/1";

/// Largest request frame (length prefix excluded).
pub const MAX_REQUEST_FRAME: usize = 65_536;
/// Largest response frame (length prefix excluded).
pub const MAX_RESPONSE_FRAME: usize = 16_777_216;
/// Largest `count` of a blocks-by-range request.
pub const MAX_RANGE_COUNT: u64 = 1024;
/// Largest number of hashes in a blocks-by-root request.
pub const MAX_ROOTS: usize = 128;
/// A responder answers within this time; a requester may give up after it.
pub const RESPONSE_DEADLINE: Duration = Duration::from_secs(10);
/// Status is re-exchanged at least this often while connected.
pub const STATUS_INTERVAL: Duration = Duration::from_secs(30);

/// The gossipsub topic of a chain: `/syncnode/{genesis_hash_hex}/blocks/1`.
pub fn gossip_topic(genesis_hash: &syncnode_types::Hash) -> String {
    format!("/syncnode/{genesis_hash}/blocks/1")
}

#[cfg(test)]
mod prop_tests;
#[cfg(test)]
mod vector_tests;
