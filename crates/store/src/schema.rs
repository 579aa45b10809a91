//! The on-disk layout: columns, keys and value encodings. One owner for every byte the store writes.

use bytes::Bytes;
use prost::Message;
use syncnode_proto::pb;
use syncnode_types::{Block, Hash, Height};

use crate::StoreError;

/// Column of blocks: block hash (32 bytes) → protobuf `Block`. Holds canonical and side blocks.
pub const COL_BLOCKS: u8 = 0;
/// Column of the canonical chain: segment of 64 heights (8 bytes BE) → the canonical hashes of
/// those heights (see `canon.rs`; layout version 3). One value per 64 heights: per-height keys
/// made the database's per-key work (index chunks, B-tree nodes) the largest cost of an import.
pub const COL_CANON: u8 = 1;
/// Column of metadata: pointer name → value.
pub const COL_META: u8 = 2;
/// Number of columns.
pub const NUM_COLUMNS: u8 = 3;

/// Size a parity-db log reaches before it is applied to the tables; what the log holds stays in
/// memory until then, at about three times its size (index chunks of every written key).
pub const LOG_SIZE_BYTES: u64 = 8 * 1024 * 1024;
/// Logged-but-unapplied bytes before parity-db stops taking commits from its queue. Since the
/// canonical index went to segments, imports are fast enough to keep this queue and the commit
/// queue full while syncing, so both are held at their bounds: halving them (from 16 and 8 MiB)
/// took the peak RSS of a 1,000,000 × 256 B sync from ~140 to ~128 MiB at the same speed.
pub const LOG_QUEUE_BYTES: i64 = 8 * 1024 * 1024;
/// Commit bytes waiting to be logged before `commit` blocks.
pub const COMMIT_QUEUE_BYTES: usize = 4 * 1024 * 1024;

/// The parity-db options of a store at `path`: block keys are hashes, so that column is uniform;
/// the canonical index's segment numbers are hashed by parity-db. Write buffers are bounded by
/// the constants above, and table pages written through parity-db's memory maps are dropped from
/// the process once synced, so the node's resident memory does not grow with the chain.
pub fn db_options(path: &std::path::Path) -> parity_db::Options {
    let mut options = parity_db::Options::with_columns(path, NUM_COLUMNS);
    options.columns[COL_BLOCKS as usize].uniform = true;
    options.min_log_size_bytes = LOG_SIZE_BYTES;
    options.max_log_queue_bytes = LOG_QUEUE_BYTES;
    options.max_commit_queue_bytes = COMMIT_QUEUE_BYTES;
    options.release_synced_pages = true;
    options
}

/// One write of a commit: column, key, value (`None` deletes).
pub type Change = (u8, Vec<u8>, Option<Vec<u8>>);

/// Version of this layout, stored under [`META_SCHEMA`].
pub const SCHEMA_VERSION: u32 = 3;

pub const META_SCHEMA: &[u8] = b"schema";
pub const META_GENESIS: &[u8] = b"genesis";
/// The chain spec JSON, so offline tools need only the data directory.
pub const META_SPEC: &[u8] = b"chain_spec";
pub const META_HEAD: &[u8] = b"head";
pub const META_FINALIZED: &[u8] = b"finalized";
pub const META_ANCHOR: &[u8] = b"anchor";
pub const META_LOW: &[u8] = b"backfill_low";
pub const META_FLOOR: &[u8] = b"history_floor";
pub const META_CURSOR_PREFIX: &[u8] = b"cursor/";

/// A pointer: a height and the hash of the canonical block there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pointer {
    pub height: Height,
    pub hash: Hash,
}

impl Pointer {
    /// 8 bytes BE height then 32 bytes hash.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(40);
        out.extend_from_slice(&self.height.to_be_bytes());
        out.extend_from_slice(&self.hash.0);
        out
    }

    /// Decodes [`Pointer::encode`]'s bytes.
    pub fn decode(name: &'static [u8], bytes: &[u8]) -> Result<Self, StoreError> {
        let corrupt = || StoreError::Corrupt(format!("pointer {} is not 40 bytes", show(name)));
        if bytes.len() != 40 {
            return Err(corrupt());
        }
        let height = u64::from_be_bytes(bytes[0..8].try_into().map_err(|_| corrupt())?);
        let hash = Hash::from_slice(&bytes[8..40]).map_err(|_| corrupt())?;
        Ok(Pointer { height, hash })
    }

    /// The pointer at `block`.
    pub fn at(block: &Block) -> Self {
        Pointer {
            height: block.height(),
            hash: block.hash(),
        }
    }
}

/// Encodes a block as stored (its protobuf bytes).
pub fn encode_block(block: &Block) -> Vec<u8> {
    pb::Block::from(block).encode_to_vec()
}

/// Decodes a stored block, checking that it is the block stored under `hash`.
pub fn decode_block(hash: &Hash, bytes: Vec<u8>) -> Result<Block, StoreError> {
    let msg = pb::Block::decode(Bytes::from(bytes))
        .map_err(|e| StoreError::Corrupt(format!("block {hash} does not decode: {e}")))?;
    let block =
        Block::try_from(msg).map_err(|e| StoreError::Corrupt(format!("block {hash} is malformed: {e}")))?;
    if block.hash() != *hash {
        return Err(StoreError::Corrupt(format!(
            "block stored under {hash} hashes to {}",
            block.hash()
        )));
    }
    Ok(block)
}

/// A u64 value (8 bytes BE).
pub fn decode_u64(name: &str, bytes: &[u8]) -> Result<u64, StoreError> {
    let array: [u8; 8] = bytes
        .try_into()
        .map_err(|_| StoreError::Corrupt(format!("{name} is not 8 bytes")))?;
    Ok(u64::from_be_bytes(array))
}

/// Printable name of a metadata key.
pub fn show(key: &[u8]) -> String {
    String::from_utf8_lossy(key).into_owned()
}
