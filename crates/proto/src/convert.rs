//! Checked conversion between the wire messages of [`crate::pb`] and typed values.

use bytes::Bytes;
use syncnode_types::{Block, BlockHeader, Hash, Height, LengthError, PublicKey, Signature};

use crate::pb;
use crate::{MAX_RANGE_COUNT, MAX_ROOTS};

pub use crate::pb::ResponseCode;

/// A message that decoded as protobuf but does not make a valid typed value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConvertError {
    #[error("{field}: {source}")]
    Length {
        field: &'static str,
        source: LengthError,
    },
    #[error("block has no header")]
    MissingHeader,
    #[error("blocks_by_range count {0} is outside 1..={MAX_RANGE_COUNT}")]
    RangeCount(u64),
    #[error("blocks_by_range start {start} + count {count} overflows")]
    RangeOverflow { start: u64, count: u64 },
    #[error("blocks_by_root asks for {0} hashes, outside 1..={MAX_ROOTS}")]
    RootCount(usize),
    #[error("unknown response code {0}")]
    UnknownCode(i32),
}

fn fixed<T>(
    field: &'static str,
    bytes: &[u8],
    from: fn(&[u8]) -> Result<T, LengthError>,
) -> Result<T, ConvertError> {
    from(bytes).map_err(|source| ConvertError::Length { field, source })
}

impl From<&BlockHeader> for pb::BlockHeader {
    fn from(h: &BlockHeader) -> Self {
        pb::BlockHeader {
            height: h.height,
            parent_hash: Bytes::copy_from_slice(&h.parent_hash.0),
            timestamp_ms: h.timestamp_ms,
            payload_hash: Bytes::copy_from_slice(&h.payload_hash.0),
            proposer: Bytes::copy_from_slice(&h.proposer.0),
        }
    }
}

impl TryFrom<&pb::BlockHeader> for BlockHeader {
    type Error = ConvertError;
    fn try_from(h: &pb::BlockHeader) -> Result<Self, ConvertError> {
        Ok(BlockHeader {
            height: h.height,
            parent_hash: fixed("header.parent_hash", &h.parent_hash, Hash::from_slice)?,
            timestamp_ms: h.timestamp_ms,
            payload_hash: fixed("header.payload_hash", &h.payload_hash, Hash::from_slice)?,
            proposer: fixed("header.proposer", &h.proposer, PublicKey::from_slice)?,
        })
    }
}

impl From<&Block> for pb::Block {
    fn from(b: &Block) -> Self {
        pb::Block {
            header: Some(pb::BlockHeader::from(&b.header)),
            payload: b.payload.clone(),
            signature: Bytes::copy_from_slice(&b.signature.0),
        }
    }
}

impl TryFrom<pb::Block> for Block {
    type Error = ConvertError;
    fn try_from(b: pb::Block) -> Result<Self, ConvertError> {
        let header = b.header.as_ref().ok_or(ConvertError::MissingHeader)?;
        Ok(Block {
            header: BlockHeader::try_from(header)?,
            payload: b.payload,
            signature: fixed("signature", &b.signature, Signature::from_slice)?,
        })
    }
}

/// A node's view of its chain, exchanged on `/syncnode/status/1`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Status {
    pub genesis_hash: Hash,
    pub head_height: Height,
    pub head_hash: Hash,
    pub finalized_height: Height,
    pub finalized_hash: Hash,
    /// Lowest height from which the node serves an unbroken range up to its head.
    pub earliest_height: Height,
}

impl From<&Status> for pb::Status {
    fn from(s: &Status) -> Self {
        pb::Status {
            genesis_hash: Bytes::copy_from_slice(&s.genesis_hash.0),
            head_height: s.head_height,
            head_hash: Bytes::copy_from_slice(&s.head_hash.0),
            finalized_height: s.finalized_height,
            finalized_hash: Bytes::copy_from_slice(&s.finalized_hash.0),
            earliest_height: s.earliest_height,
        }
    }
}

impl TryFrom<&pb::Status> for Status {
    type Error = ConvertError;
    fn try_from(s: &pb::Status) -> Result<Self, ConvertError> {
        Ok(Status {
            genesis_hash: fixed("status.genesis_hash", &s.genesis_hash, Hash::from_slice)?,
            head_height: s.head_height,
            head_hash: fixed("status.head_hash", &s.head_hash, Hash::from_slice)?,
            finalized_height: s.finalized_height,
            finalized_hash: fixed("status.finalized_hash", &s.finalized_hash, Hash::from_slice)?,
            earliest_height: s.earliest_height,
        })
    }
}

/// A valid blocks-by-range request: `count` in 1..=1024 and no overflow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlocksByRangeRequest {
    pub start_height: Height,
    pub count: u64,
}

impl BlocksByRangeRequest {
    /// Checks the limits of PROTOCOL.md.
    pub fn new(start_height: Height, count: u64) -> Result<Self, ConvertError> {
        if count == 0 || count > MAX_RANGE_COUNT {
            return Err(ConvertError::RangeCount(count));
        }
        if start_height.checked_add(count).is_none() {
            return Err(ConvertError::RangeOverflow {
                start: start_height,
                count,
            });
        }
        Ok(BlocksByRangeRequest { start_height, count })
    }

    /// One past the last height asked for.
    pub fn end_height(&self) -> Height {
        self.start_height + self.count
    }
}

impl From<&BlocksByRangeRequest> for pb::BlocksByRangeRequest {
    fn from(r: &BlocksByRangeRequest) -> Self {
        pb::BlocksByRangeRequest {
            start_height: r.start_height,
            count: r.count,
        }
    }
}

impl TryFrom<&pb::BlocksByRangeRequest> for BlocksByRangeRequest {
    type Error = ConvertError;
    fn try_from(r: &pb::BlocksByRangeRequest) -> Result<Self, ConvertError> {
        BlocksByRangeRequest::new(r.start_height, r.count)
    }
}

/// A valid blocks-by-root request: 1..=128 hashes of 32 bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlocksByRootRequest {
    pub hashes: Vec<Hash>,
}

impl BlocksByRootRequest {
    /// Checks the limits of PROTOCOL.md.
    pub fn new(hashes: Vec<Hash>) -> Result<Self, ConvertError> {
        if hashes.is_empty() || hashes.len() > MAX_ROOTS {
            return Err(ConvertError::RootCount(hashes.len()));
        }
        Ok(BlocksByRootRequest { hashes })
    }
}

impl From<&BlocksByRootRequest> for pb::BlocksByRootRequest {
    fn from(r: &BlocksByRootRequest) -> Self {
        pb::BlocksByRootRequest {
            hashes: r.hashes.iter().map(|h| Bytes::copy_from_slice(&h.0)).collect(),
        }
    }
}

impl TryFrom<&pb::BlocksByRootRequest> for BlocksByRootRequest {
    type Error = ConvertError;
    fn try_from(r: &pb::BlocksByRootRequest) -> Result<Self, ConvertError> {
        if r.hashes.is_empty() || r.hashes.len() > MAX_ROOTS {
            return Err(ConvertError::RootCount(r.hashes.len()));
        }
        let hashes = r
            .hashes
            .iter()
            .map(|h| fixed("hashes[]", h, Hash::from_slice))
            .collect::<Result<_, _>>()?;
        Ok(BlocksByRootRequest { hashes })
    }
}

/// The response of blocks-by-range and blocks-by-root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlocksResponse {
    pub code: ResponseCode,
    pub blocks: Vec<Block>,
    pub error_message: String,
}

impl BlocksResponse {
    /// An `OK` response.
    pub fn ok(blocks: Vec<Block>) -> Self {
        BlocksResponse {
            code: ResponseCode::Ok,
            blocks,
            error_message: String::new(),
        }
    }

    /// An error response with no blocks.
    pub fn error(code: ResponseCode, message: impl Into<String>) -> Self {
        BlocksResponse {
            code,
            blocks: Vec::new(),
            error_message: message.into(),
        }
    }
}

impl From<&BlocksResponse> for pb::BlocksResponse {
    fn from(r: &BlocksResponse) -> Self {
        pb::BlocksResponse {
            code: r.code as i32,
            blocks: r.blocks.iter().map(pb::Block::from).collect(),
            error_message: r.error_message.clone(),
        }
    }
}

impl TryFrom<pb::BlocksResponse> for BlocksResponse {
    type Error = ConvertError;
    fn try_from(r: pb::BlocksResponse) -> Result<Self, ConvertError> {
        let code = ResponseCode::try_from(r.code).map_err(|_| ConvertError::UnknownCode(r.code))?;
        let blocks = r
            .blocks
            .into_iter()
            .map(Block::try_from)
            .collect::<Result<_, _>>()?;
        Ok(BlocksResponse {
            code,
            blocks,
            error_message: r.error_message,
        })
    }
}

/// Bytes that one block adds to an encoded `BlocksResponse` (field tag, length, message).
pub fn encoded_block_field_len(block: &Block) -> usize {
    use prost::Message;
    let len = pb::Block::from(block).encoded_len();
    1 + prost::length_delimiter_len(len) + len
}
