//! The on-disk layout: columns, keys and value encodings. One owner for every byte the store writes.

use bytes::Bytes;
use prost::Message;
use syncnode_proto::pb;
use syncnode_types::{Block, Hash, Height};

use crate::StoreError;
use crate::payloads::PayloadRef;

/// Column of blocks: block hash (32 bytes) → the block: a kind byte, then the protobuf `Block`
/// ([`BLOCK_INLINE`]), or a payload reference and the `Block` without its payload
/// ([`BLOCK_EXTERNAL`], payloads of at least [`crate::payloads::EXTERNAL_PAYLOAD_MIN`] bytes,
/// see `payloads.rs`). Holds canonical and side blocks.
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

/// Version of this layout, stored under [`META_SCHEMA`]. 3: canonical index in segments;
/// 4: block values start with a kind byte, large payloads in payload files.
pub const SCHEMA_VERSION: u32 = 4;

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
/// The committed end of the payload files ([`crate::payloads::Tail`]).
pub const META_PAYLOAD_TAIL: &[u8] = b"payload_tail";
/// Prefix of the per-file counts of stored blocks whose payload is in that file (u32 BE file
/// number; value u64 BE; absent when zero).
pub const META_PAYLOAD_LIVE_PREFIX: &[u8] = b"payload_live/";

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

/// First byte of a block value whose protobuf `Block` follows in full.
pub const BLOCK_INLINE: u8 = 0;
/// First byte of a block value whose payload lies in a payload file: a [`PayloadRef`] follows,
/// then the protobuf `Block` with an empty payload.
pub const BLOCK_EXTERNAL: u8 = 1;

/// Encodes a block as stored with its payload inline: [`BLOCK_INLINE`], then its protobuf bytes.
pub fn encode_block(block: &Block) -> Vec<u8> {
    let msg = pb::Block::from(block);
    let mut out = Vec::with_capacity(1 + msg.encoded_len());
    out.push(BLOCK_INLINE);
    msg.encode_raw(&mut out);
    out
}

/// Encodes a block whose payload was written to a payload file at `payload`.
pub fn encode_external_block(block: &Block, payload: &PayloadRef) -> Vec<u8> {
    let mut msg = pb::Block::from(block);
    msg.payload = Bytes::new();
    let mut out = Vec::with_capacity(1 + PayloadRef::LEN + msg.encoded_len());
    out.push(BLOCK_EXTERNAL);
    payload.encode_into(&mut out);
    msg.encode_raw(&mut out);
    out
}

/// A decoded block value: the block, or the block without its payload and where that lies.
pub enum StoredBlock {
    Inline(Block),
    External { shell: Block, payload: PayloadRef },
}

/// Decodes a stored block value, checking that its header is that of the block stored under
/// `hash`.
pub fn decode_block(hash: &Hash, bytes: Vec<u8>) -> Result<StoredBlock, StoreError> {
    let corrupt = |what: &str| StoreError::Corrupt(format!("block {hash} {what}"));
    let bytes = Bytes::from(bytes);
    let (payload, body) = match bytes.first() {
        Some(&BLOCK_INLINE) => (None, bytes.slice(1..)),
        Some(&BLOCK_EXTERNAL) => {
            let r =
                PayloadRef::decode(&bytes[1..]).ok_or_else(|| corrupt("has a short payload reference"))?;
            (Some(r), bytes.slice(1 + PayloadRef::LEN..))
        }
        _ => return Err(corrupt("has an unknown value kind")),
    };
    let msg = pb::Block::decode(body).map_err(|e| corrupt(&format!("does not decode: {e}")))?;
    let block = Block::try_from(msg).map_err(|e| corrupt(&format!("is malformed: {e}")))?;
    if block.hash() != *hash {
        return Err(corrupt(&format!("hashes to {}", block.hash())));
    }
    Ok(match payload {
        None => StoredBlock::Inline(block),
        Some(payload) => StoredBlock::External {
            shell: block,
            payload,
        },
    })
}

/// The payload reference of a stored block value, if its payload is in a payload file.
pub fn external_payload(bytes: &[u8]) -> Option<PayloadRef> {
    match bytes.split_first() {
        Some((&BLOCK_EXTERNAL, rest)) => PayloadRef::decode(rest),
        _ => None,
    }
}

/// The metadata key of payload file `file`'s reference count.
pub fn payload_live_key(file: u32) -> Vec<u8> {
    let mut key = META_PAYLOAD_LIVE_PREFIX.to_vec();
    key.extend_from_slice(&file.to_be_bytes());
    key
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
