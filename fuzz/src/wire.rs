//! Every message of `syncnode.proto` with its typed form, an independent list of the defects that
//! must make its conversion fail, and generators of near-valid wire messages and typed values.

use std::fmt::Debug;

use arbitrary::{Result, Unstructured};
use bytes::Bytes;
use prost::Message;
use syncnode_proto::convert::ResponseCode;
use syncnode_proto::{
    BlocksByRangeRequest, BlocksByRootRequest, BlocksResponse, ConvertError, MAX_RANGE_COUNT, MAX_ROOTS,
    Status, pb,
};
use syncnode_types::{Block, BlockHeader, Hash, LengthError, PublicKey, Signature};

/// A wire message and its typed form.
pub trait Wire: Message + Default + PartialEq + Debug + Clone {
    type Typed: PartialEq + Debug;
    /// The crate's conversion to the typed form.
    fn convert(&self) -> std::result::Result<Self::Typed, ConvertError>;
    /// The crate's conversion back to the wire.
    fn back(typed: &Self::Typed) -> Self;
    /// Every defect that forbids conversion, found without the crate's conversion code.
    fn defects(&self) -> Vec<ConvertError>;
    /// A wire message whose fields are often, but not always, of the right length.
    fn near_valid(u: &mut Unstructured<'_>) -> Result<Self>;
    /// A typed value, or `None` when the generated fields are refused by its constructor (which
    /// must then be a defect of the same fields on the wire).
    fn typed(u: &mut Unstructured<'_>) -> Result<Option<Self::Typed>>;
}

fn length(field: &'static str, what: &'static str, bytes: &[u8], expected: usize) -> Option<ConvertError> {
    (bytes.len() != expected).then_some(ConvertError::Length {
        field,
        source: LengthError {
            what,
            expected,
            got: bytes.len(),
        },
    })
}

/// Bytes of the right length most of the time, else of a length near it or arbitrary.
fn field(u: &mut Unstructured<'_>, len: usize) -> Result<Bytes> {
    let len = match u.int_in_range(0u8..=7)? {
        0 => 0,
        1 => len - 1,
        2 => len + 1,
        3 => u.int_in_range(0..=2 * len)?,
        _ => len,
    };
    Ok(Bytes::from(u.bytes(len)?.to_vec()))
}

fn header_defects(h: &pb::BlockHeader) -> Vec<ConvertError> {
    [
        length("header.parent_hash", "hash", &h.parent_hash, 32),
        length("header.payload_hash", "hash", &h.payload_hash, 32),
        length("header.proposer", "public key", &h.proposer, 32),
    ]
    .into_iter()
    .flatten()
    .collect()
}

fn block_defects(b: &pb::Block) -> Vec<ConvertError> {
    let mut out = match &b.header {
        None => vec![ConvertError::MissingHeader],
        Some(h) => header_defects(h),
    };
    out.extend(length("signature", "signature", &b.signature, 64));
    out
}

fn near_valid_header(u: &mut Unstructured<'_>) -> Result<pb::BlockHeader> {
    Ok(pb::BlockHeader {
        height: u.arbitrary()?,
        parent_hash: field(u, 32)?,
        timestamp_ms: u.arbitrary()?,
        payload_hash: field(u, 32)?,
        proposer: field(u, 32)?,
    })
}

fn near_valid_block(u: &mut Unstructured<'_>) -> Result<pb::Block> {
    Ok(pb::Block {
        header: if u.ratio(1u8, 8)? {
            None
        } else {
            Some(near_valid_header(u)?)
        },
        payload: Bytes::from(u.arbitrary::<Vec<u8>>()?),
        signature: field(u, 64)?,
    })
}

fn typed_block(u: &mut Unstructured<'_>) -> Result<Block> {
    Ok(Block {
        header: BlockHeader {
            height: u.arbitrary()?,
            parent_hash: Hash(u.arbitrary()?),
            timestamp_ms: u.arbitrary()?,
            payload_hash: Hash(u.arbitrary()?),
            proposer: PublicKey(u.arbitrary()?),
        },
        payload: Bytes::from(u.arbitrary::<Vec<u8>>()?),
        signature: Signature(u.arbitrary()?),
    })
}

impl Wire for pb::BlockHeader {
    type Typed = BlockHeader;
    fn convert(&self) -> std::result::Result<BlockHeader, ConvertError> {
        BlockHeader::try_from(self)
    }
    fn back(typed: &BlockHeader) -> Self {
        pb::BlockHeader::from(typed)
    }
    fn defects(&self) -> Vec<ConvertError> {
        header_defects(self)
    }
    fn near_valid(u: &mut Unstructured<'_>) -> Result<Self> {
        near_valid_header(u)
    }
    fn typed(u: &mut Unstructured<'_>) -> Result<Option<BlockHeader>> {
        Ok(Some(typed_block(u)?.header))
    }
}

impl Wire for pb::Block {
    type Typed = Block;
    fn convert(&self) -> std::result::Result<Block, ConvertError> {
        Block::try_from(self.clone())
    }
    fn back(typed: &Block) -> Self {
        pb::Block::from(typed)
    }
    fn defects(&self) -> Vec<ConvertError> {
        block_defects(self)
    }
    fn near_valid(u: &mut Unstructured<'_>) -> Result<Self> {
        near_valid_block(u)
    }
    fn typed(u: &mut Unstructured<'_>) -> Result<Option<Block>> {
        typed_block(u).map(Some)
    }
}

impl Wire for pb::Status {
    type Typed = Status;
    fn convert(&self) -> std::result::Result<Status, ConvertError> {
        Status::try_from(self)
    }
    fn back(typed: &Status) -> Self {
        pb::Status::from(typed)
    }
    fn defects(&self) -> Vec<ConvertError> {
        [
            length("status.genesis_hash", "hash", &self.genesis_hash, 32),
            length("status.head_hash", "hash", &self.head_hash, 32),
            length("status.finalized_hash", "hash", &self.finalized_hash, 32),
        ]
        .into_iter()
        .flatten()
        .collect()
    }
    fn near_valid(u: &mut Unstructured<'_>) -> Result<Self> {
        Ok(pb::Status {
            genesis_hash: field(u, 32)?,
            head_height: u.arbitrary()?,
            head_hash: field(u, 32)?,
            finalized_height: u.arbitrary()?,
            finalized_hash: field(u, 32)?,
            earliest_height: u.arbitrary()?,
        })
    }
    fn typed(u: &mut Unstructured<'_>) -> Result<Option<Status>> {
        Ok(Some(Status {
            genesis_hash: Hash(u.arbitrary()?),
            head_height: u.arbitrary()?,
            head_hash: Hash(u.arbitrary()?),
            finalized_height: u.arbitrary()?,
            finalized_hash: Hash(u.arbitrary()?),
            earliest_height: u.arbitrary()?,
        }))
    }
}

fn range_defects(start: u64, count: u64) -> Vec<ConvertError> {
    let mut out = Vec::new();
    if count == 0 || count > MAX_RANGE_COUNT {
        out.push(ConvertError::RangeCount(count));
    }
    if u128::from(start) + u128::from(count) > u128::from(u64::MAX) {
        out.push(ConvertError::RangeOverflow { start, count });
    }
    out
}

/// A count that is valid often, and at or just past its bounds often.
fn count(u: &mut Unstructured<'_>) -> Result<u64> {
    Ok(match u.int_in_range(0u8..=4)? {
        0 => u.arbitrary()?,
        1 => u.int_in_range(0..=2)?,
        2 => u.int_in_range(MAX_RANGE_COUNT - 1..=MAX_RANGE_COUNT + 1)?,
        _ => u.int_in_range(1..=MAX_RANGE_COUNT)?,
    })
}

/// A start height that is small often and near the top of u64 sometimes.
fn start(u: &mut Unstructured<'_>) -> Result<u64> {
    Ok(match u.int_in_range(0u8..=3)? {
        0 => u64::MAX - u.int_in_range(0..=2 * MAX_RANGE_COUNT)?,
        _ => u.arbitrary()?,
    })
}

impl Wire for pb::BlocksByRangeRequest {
    type Typed = BlocksByRangeRequest;
    fn convert(&self) -> std::result::Result<BlocksByRangeRequest, ConvertError> {
        BlocksByRangeRequest::try_from(self)
    }
    fn back(typed: &BlocksByRangeRequest) -> Self {
        pb::BlocksByRangeRequest::from(typed)
    }
    fn defects(&self) -> Vec<ConvertError> {
        range_defects(self.start_height, self.count)
    }
    fn near_valid(u: &mut Unstructured<'_>) -> Result<Self> {
        Ok(pb::BlocksByRangeRequest {
            start_height: start(u)?,
            count: count(u)?,
        })
    }
    fn typed(u: &mut Unstructured<'_>) -> Result<Option<BlocksByRangeRequest>> {
        let (start, count) = (start(u)?, count(u)?);
        let made = BlocksByRangeRequest::new(start, count);
        let defects = range_defects(start, count);
        match &made {
            Ok(r) => {
                assert!(
                    defects.is_empty(),
                    "new({start}, {count}) accepted despite {defects:?}"
                );
                assert_eq!(r.end_height(), start + count);
            }
            Err(e) => assert!(defects.contains(e), "new({start}, {count}) refused with {e:?}"),
        }
        Ok(made.ok())
    }
}

impl Wire for pb::BlocksByRootRequest {
    type Typed = BlocksByRootRequest;
    fn convert(&self) -> std::result::Result<BlocksByRootRequest, ConvertError> {
        BlocksByRootRequest::try_from(self)
    }
    fn back(typed: &BlocksByRootRequest) -> Self {
        pb::BlocksByRootRequest::from(typed)
    }
    fn defects(&self) -> Vec<ConvertError> {
        let mut out = Vec::new();
        if self.hashes.is_empty() || self.hashes.len() > MAX_ROOTS {
            out.push(ConvertError::RootCount(self.hashes.len()));
        }
        out.extend(
            self.hashes
                .iter()
                .filter_map(|h| length("hashes[]", "hash", h, 32)),
        );
        out
    }
    fn near_valid(u: &mut Unstructured<'_>) -> Result<Self> {
        let n = u.int_in_range(0..=MAX_ROOTS + 2)?;
        let hashes = (0..n).map(|_| field(u, 32)).collect::<Result<_>>()?;
        Ok(pb::BlocksByRootRequest { hashes })
    }
    fn typed(u: &mut Unstructured<'_>) -> Result<Option<BlocksByRootRequest>> {
        let n = u.int_in_range(0..=MAX_ROOTS + 2)?;
        let hashes: Vec<Hash> = (0..n).map(|_| u.arbitrary().map(Hash)).collect::<Result<_>>()?;
        let made = BlocksByRootRequest::new(hashes);
        let in_limits = (1..=MAX_ROOTS).contains(&n);
        assert_eq!(made.is_ok(), in_limits, "new() of {n} hashes gave {made:?}");
        if let Err(e) = &made {
            assert_eq!(e, &ConvertError::RootCount(n));
        }
        Ok(made.ok())
    }
}

const CODES: [ResponseCode; 5] = [
    ResponseCode::Ok,
    ResponseCode::InvalidRequest,
    ResponseCode::ServerError,
    ResponseCode::ResourceUnavailable,
    ResponseCode::RateLimited,
];

impl Wire for pb::BlocksResponse {
    type Typed = BlocksResponse;
    fn convert(&self) -> std::result::Result<BlocksResponse, ConvertError> {
        BlocksResponse::try_from(self.clone())
    }
    fn back(typed: &BlocksResponse) -> Self {
        pb::BlocksResponse::from(typed)
    }
    fn defects(&self) -> Vec<ConvertError> {
        let mut out = Vec::new();
        if !(0..CODES.len() as i32).contains(&self.code) {
            out.push(ConvertError::UnknownCode(self.code));
        }
        out.extend(self.blocks.iter().flat_map(block_defects));
        out
    }
    fn near_valid(u: &mut Unstructured<'_>) -> Result<Self> {
        let code = if u.ratio(1u8, 8)? {
            u.arbitrary()?
        } else {
            u.int_in_range(0..=4)?
        };
        let n = u.int_in_range(0..=4)?;
        let blocks = (0..n).map(|_| near_valid_block(u)).collect::<Result<_>>()?;
        Ok(pb::BlocksResponse {
            code,
            blocks,
            error_message: u.arbitrary()?,
        })
    }
    fn typed(u: &mut Unstructured<'_>) -> Result<Option<BlocksResponse>> {
        let code = *u.choose(&CODES)?;
        let n = u.int_in_range(0..=4)?;
        let blocks: Vec<Block> = (0..n).map(|_| typed_block(u)).collect::<Result<_>>()?;
        let response = BlocksResponse {
            code,
            blocks,
            error_message: u.arbitrary()?,
        };
        // What a responder adds up to keep its frame within the limit is the real encoded size.
        let fields: usize = response
            .blocks
            .iter()
            .map(syncnode_proto::convert::encoded_block_field_len)
            .sum();
        let ok = BlocksResponse::ok(response.blocks.clone());
        assert_eq!(fields, pb::BlocksResponse::from(&ok).encoded_len());
        Ok(Some(response))
    }
}
