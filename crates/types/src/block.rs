//! Block headers, blocks, header bytes and block hashes (PROTOCOL.md section 1).

use bytes::Bytes;

use crate::hash::{Hash, PublicKey, Signature};
use crate::keys::SigningKey;

/// A block height. Genesis is 0.
pub type Height = u64;

/// Length of the header bytes that are hashed.
pub const HEADER_BYTES_LEN: usize = 112;

/// Largest payload a valid block may carry (rule 3).
pub const MAX_PAYLOAD_BYTES: usize = 1_048_576;

/// The signed part of a block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockHeader {
    pub height: Height,
    pub parent_hash: Hash,
    pub timestamp_ms: u64,
    pub payload_hash: Hash,
    pub proposer: PublicKey,
}

impl BlockHeader {
    /// The exact 112 header bytes: height BE, parent, timestamp BE, payload hash, proposer.
    pub fn to_bytes(&self) -> [u8; HEADER_BYTES_LEN] {
        let mut out = [0u8; HEADER_BYTES_LEN];
        out[0..8].copy_from_slice(&self.height.to_be_bytes());
        out[8..40].copy_from_slice(&self.parent_hash.0);
        out[40..48].copy_from_slice(&self.timestamp_ms.to_be_bytes());
        out[48..80].copy_from_slice(&self.payload_hash.0);
        out[80..112].copy_from_slice(&self.proposer.0);
        out
    }

    /// `BLAKE3(header bytes)`: the block hash.
    pub fn hash(&self) -> Hash {
        Hash::of(&self.to_bytes())
    }
}

/// A block: header, payload and the proposer's signature over the block hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Block {
    pub header: BlockHeader,
    pub payload: Bytes,
    pub signature: Signature,
}

impl Block {
    /// Builds and signs a block whose payload hash is computed from `payload`.
    pub fn new_signed(
        height: Height,
        parent_hash: Hash,
        timestamp_ms: u64,
        payload: Bytes,
        key: &SigningKey,
    ) -> Block {
        let header = BlockHeader {
            height,
            parent_hash,
            timestamp_ms,
            payload_hash: Hash::of(&payload),
            proposer: key.public_key(),
        };
        let signature = key.sign(&header.hash());
        Block {
            header,
            payload,
            signature,
        }
    }

    /// The block hash (hash of the header bytes).
    pub fn hash(&self) -> Hash {
        self.header.hash()
    }

    /// Height of the block.
    pub fn height(&self) -> Height {
        self.header.height
    }

    /// Bytes this block occupies in memory and roughly on the wire.
    pub fn size_bytes(&self) -> usize {
        self.payload.len() + HEADER_BYTES_LEN + Signature::LEN
    }

    /// This block with a payload that owns exactly its bytes. A decoded block's payload is a view
    /// into the buffer it was decoded from (a whole response frame, up to megabytes); whatever
    /// keeps a block for long keeps a compact one, or it keeps that whole buffer alive.
    pub fn compact(&self) -> Block {
        Block {
            header: self.header,
            payload: Bytes::copy_from_slice(&self.payload),
            signature: self.signature,
        }
    }
}
