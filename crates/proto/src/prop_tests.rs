//! Property tests of framing and conversion on generated messages: frames round-trip and stop at
//! their end, an announced length is refused or bounded before any buffer is sized from it,
//! decoding mutated encodings never panics and re-encodes to a fixed point, and conversion of a
//! wire message either fails on a field that really is wrong or round-trips exactly.

use std::fmt::Debug;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures::AsyncRead;
use futures::executor::block_on;
use proptest::prelude::*;
use prost::Message;
use syncnode_types::{Block, BlockHeader};

use crate::frame::read_frame_bytes;
use crate::*;

/// The frame reader's growth step: the most it may commit ahead of the bytes a peer has sent.
const READ_CHUNK: usize = 64 * 1024;

/// A reader that records, for every read, the bytes already taken and the buffer offered.
struct Observed<'a> {
    data: &'a [u8],
    pos: usize,
    offers: Vec<(usize, usize)>,
}

impl AsyncRead for Observed<'_> {
    fn poll_read(mut self: Pin<&mut Self>, _: &mut Context<'_>, buf: &mut [u8]) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        this.offers.push((this.pos, buf.len()));
        let n = buf.len().min(this.data.len() - this.pos).min(1000);
        buf[..n].copy_from_slice(&this.data[this.pos..this.pos + n]);
        this.pos += n;
        Poll::Ready(Ok(n))
    }
}

/// Bytes of length `len` most of the time, of another length sometimes.
fn bytes_near(len: usize) -> impl Strategy<Value = Bytes> {
    prop_oneof![
        4 => proptest::collection::vec(any::<u8>(), len..=len),
        1 => proptest::collection::vec(any::<u8>(), 0..2 * len + 2),
    ]
    .prop_map(Bytes::from)
}

fn payload() -> impl Strategy<Value = Bytes> {
    proptest::collection::vec(any::<u8>(), 0..64).prop_map(Bytes::from)
}

fn pb_header() -> impl Strategy<Value = pb::BlockHeader> {
    (
        any::<u64>(),
        bytes_near(32),
        any::<u64>(),
        bytes_near(32),
        bytes_near(32),
    )
        .prop_map(
            |(height, parent_hash, timestamp_ms, payload_hash, proposer)| pb::BlockHeader {
                height,
                parent_hash,
                timestamp_ms,
                payload_hash,
                proposer,
            },
        )
}

fn pb_block() -> impl Strategy<Value = pb::Block> {
    (
        proptest::option::weighted(0.9, pb_header()),
        payload(),
        bytes_near(64),
    )
        .prop_map(|(header, payload, signature)| pb::Block {
            header,
            payload,
            signature,
        })
}

fn pb_status() -> impl Strategy<Value = pb::Status> {
    (
        bytes_near(32),
        any::<u64>(),
        bytes_near(32),
        any::<u64>(),
        bytes_near(32),
        any::<u64>(),
    )
        .prop_map(
            |(genesis_hash, head_height, head_hash, finalized_height, finalized_hash, earliest_height)| {
                pb::Status {
                    genesis_hash,
                    head_height,
                    head_hash,
                    finalized_height,
                    finalized_hash,
                    earliest_height,
                }
            },
        )
}

fn pb_range() -> impl Strategy<Value = pb::BlocksByRangeRequest> {
    let start = prop_oneof![any::<u64>(), (0u64..3000).prop_map(|d| u64::MAX - d)];
    let count = prop_oneof![0u64..1100, any::<u64>()];
    (start, count).prop_map(|(start_height, count)| pb::BlocksByRangeRequest { start_height, count })
}

fn pb_root() -> impl Strategy<Value = pb::BlocksByRootRequest> {
    proptest::collection::vec(bytes_near(32), 0..=MAX_ROOTS + 2)
        .prop_map(|hashes| pb::BlocksByRootRequest { hashes })
}

fn pb_response() -> impl Strategy<Value = pb::BlocksResponse> {
    (
        prop_oneof![4 => 0i32..5, 1 => any::<i32>()],
        proptest::collection::vec(pb_block(), 0..4),
        ".{0,20}",
    )
        .prop_map(|(code, blocks, error_message)| pb::BlocksResponse {
            code,
            blocks,
            error_message,
        })
}

/// A frame decodes to its message under exactly its own length limit and no smaller, and two
/// frames back to back are read one at a time, the reader stopping at each frame's end.
fn frames_round_trip<M: Message + Default + PartialEq + Debug>(msg: &M) -> Result<(), TestCaseError> {
    let frame = encode_frame(msg);
    let len = msg.encoded_len();
    let (back, used) = decode_frame::<M>(&frame, len).map_err(|e| TestCaseError::fail(e.to_string()))?;
    prop_assert_eq!((&back, used), (msg, frame.len()));
    if len > 0 {
        let smaller = decode_frame::<M>(&frame, len - 1);
        prop_assert!(
            matches!(smaller, Err(FrameError::TooLarge { .. })),
            "{:?}",
            smaller.err()
        );
    }
    let twice = [&frame[..], &frame[..]].concat();
    let mut reader = &twice[..];
    for _ in 0..2 {
        let body =
            block_on(read_frame_bytes(&mut reader, len)).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let decoded = body.map(M::decode).transpose().ok().flatten();
        prop_assert_eq!(decoded.as_ref(), Some(msg));
    }
    prop_assert!(matches!(block_on(read_frame_bytes(&mut reader, len)), Ok(None)));
    Ok(())
}

/// Decoding `bytes` gives an error or a message whose encoding is a fixed point.
fn decodes_to_fixed_point<M: Message + Default + PartialEq + Debug>(
    bytes: &[u8],
) -> Result<(), TestCaseError> {
    if let Ok(msg) = M::decode(bytes) {
        let encoded = msg.encode_to_vec();
        prop_assert_eq!(encoded.len(), msg.encoded_len());
        let again = M::decode(&encoded[..]).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(&again, &msg);
        prop_assert_eq!(again.encode_to_vec(), encoded);
    }
    Ok(())
}

/// The encoding of `msg` with a few bytes overwritten and the tail cut at `cut`.
fn mutated<M: Message>(msg: &M, edits: &[(usize, u8)], cut: usize) -> Vec<u8> {
    let mut bytes = msg.encode_to_vec();
    if !bytes.is_empty() {
        for &(at, byte) in edits {
            let i = at % bytes.len();
            bytes[i] = byte;
        }
        bytes.truncate(bytes.len() - cut % bytes.len());
    }
    bytes
}

fn header_ok(h: &pb::BlockHeader) -> bool {
    [&h.parent_hash, &h.payload_hash, &h.proposer]
        .iter()
        .all(|b| b.len() == 32)
}

fn block_ok(b: &pb::Block) -> bool {
    b.header.as_ref().is_some_and(header_ok) && b.signature.len() == 64
}

/// The error names a field whose length really is wrong, with its real length.
fn truthful(e: &ConvertError, field_len: impl Fn(&str) -> Vec<usize>) -> bool {
    match e {
        ConvertError::Length { field, source } => {
            source.got != source.expected && field_len(field).contains(&source.got)
        }
        _ => true,
    }
}

fn header_field(h: &pb::BlockHeader, field: &str) -> Vec<usize> {
    match field {
        "header.parent_hash" => vec![h.parent_hash.len()],
        "header.payload_hash" => vec![h.payload_hash.len()],
        "header.proposer" => vec![h.proposer.len()],
        _ => vec![],
    }
}

fn block_field(b: &pb::Block, field: &str) -> Vec<usize> {
    match (field, &b.header) {
        ("signature", _) => vec![b.signature.len()],
        (_, Some(h)) => header_field(h, field),
        (_, None) => vec![],
    }
}

proptest! {
    #[test]
    fn frames_of_every_message_round_trip(
        status in pb_status(),
        range in pb_range(),
        root in pb_root(),
        response in pb_response(),
        block in pb_block(),
        header in pb_header(),
    ) {
        frames_round_trip(&status)?;
        frames_round_trip(&range)?;
        frames_round_trip(&root)?;
        frames_round_trip(&response)?;
        frames_round_trip(&block)?;
        frames_round_trip(&header)?;
    }

    #[test]
    fn announced_length_is_refused_or_bounded_before_allocation(
        len in prop_oneof![any::<u64>(), 0u64..200_000, Just(MAX_REQUEST_FRAME as u64 + 1)],
        max in prop_oneof![Just(MAX_REQUEST_FRAME), Just(MAX_RESPONSE_FRAME), 0usize..200_000],
        sent in proptest::collection::vec(any::<u8>(), 0..3000),
    ) {
        let mut stream = Vec::new();
        prost::encoding::encode_varint(len, &mut stream);
        let prefix = stream.len();
        stream.extend_from_slice(&sent);
        let mut reader = Observed { data: &stream, pos: 0, offers: Vec::new() };
        let result = block_on(read_frame_bytes(&mut reader, max));
        for &(pos, offer) in &reader.offers {
            if pos < prefix {
                prop_assert_eq!(offer, 1, "the prefix is read a byte at a time");
            } else {
                prop_assert!(len <= max as u64, "a body read after an over-limit length");
                prop_assert!(offer <= READ_CHUNK, "a buffer of {} bytes", offer);
                prop_assert!((pos - prefix + offer) as u64 <= len, "a buffer past the frame");
            }
        }
        match result {
            Err(FrameError::TooLarge { .. }) => prop_assert!(len > max as u64),
            Ok(Some(body)) => {
                prop_assert!(len <= sent.len() as u64);
                prop_assert_eq!(&body[..], &sent[..len as usize]);
                prop_assert_eq!(reader.pos, prefix + len as usize, "read past the frame");
            }
            Err(FrameError::Truncated { got, expected }) => {
                prop_assert!(len <= max as u64 && len > sent.len() as u64);
                prop_assert_eq!((got, expected as u64), (sent.len(), len));
            }
            other => prop_assert!(false, "unexpected {:?}", other),
        }
    }

    #[test]
    fn decoding_mutated_encodings_never_panics(
        response in pb_response(),
        status in pb_status(),
        root in pb_root(),
        edits in proptest::collection::vec((any::<usize>(), any::<u8>()), 0..4),
        cut in any::<usize>(),
    ) {
        let inputs = [mutated(&response, &edits, cut), mutated(&status, &edits, cut), mutated(&root, &edits, cut)];
        for bytes in inputs {
            decodes_to_fixed_point::<pb::Status>(&bytes)?;
            decodes_to_fixed_point::<pb::BlocksByRangeRequest>(&bytes)?;
            decodes_to_fixed_point::<pb::BlocksByRootRequest>(&bytes)?;
            decodes_to_fixed_point::<pb::BlocksResponse>(&bytes)?;
            decodes_to_fixed_point::<pb::Block>(&bytes)?;
            decodes_to_fixed_point::<pb::BlockHeader>(&bytes)?;
        }
    }

    #[test]
    fn conversion_errors_truthfully_or_round_trips(
        header in pb_header(),
        block in pb_block(),
        status in pb_status(),
        range in pb_range(),
        root in pb_root(),
        response in pb_response(),
    ) {
        match BlockHeader::try_from(&header) {
            Ok(t) => prop_assert!(header_ok(&header) && pb::BlockHeader::from(&t) == header),
            Err(e) => prop_assert!(!header_ok(&header) && truthful(&e, |f| header_field(&header, f)), "{}", e),
        }
        match Block::try_from(block.clone()) {
            Ok(t) => prop_assert!(block_ok(&block) && pb::Block::from(&t) == block),
            Err(e) => prop_assert!(!block_ok(&block) && truthful(&e, |f| block_field(&block, f)), "{}", e),
        }
        let hashes = [&status.genesis_hash, &status.head_hash, &status.finalized_hash];
        let status_ok = hashes.iter().all(|b| b.len() == 32);
        match Status::try_from(&status) {
            Ok(t) => prop_assert!(status_ok && pb::Status::from(&t) == status),
            Err(e) => prop_assert!(!status_ok && matches!(e, ConvertError::Length { .. }), "{}", e),
        }
        let range_ok = (1..=MAX_RANGE_COUNT).contains(&range.count)
            && range.start_height.checked_add(range.count).is_some();
        match BlocksByRangeRequest::try_from(&range) {
            Ok(t) => {
                prop_assert!(range_ok && pb::BlocksByRangeRequest::from(&t) == range);
                prop_assert_eq!(t.end_height() - t.start_height, t.count);
            }
            Err(e) => {
                let named = matches!(e, ConvertError::RangeCount(_) | ConvertError::RangeOverflow { .. });
                prop_assert!(!range_ok && named, "{}", e);
            }
        }
        let root_count_ok = (1..=MAX_ROOTS).contains(&root.hashes.len());
        let root_ok = root_count_ok && root.hashes.iter().all(|h| h.len() == 32);
        let root_lens = |_: &str| root.hashes.iter().map(|h| h.len()).collect();
        match BlocksByRootRequest::try_from(&root) {
            Ok(t) => prop_assert!(root_ok && pb::BlocksByRootRequest::from(&t) == root),
            Err(ConvertError::RootCount(n)) => prop_assert!(!root_count_ok && n == root.hashes.len()),
            Err(e) => prop_assert!(root_count_ok && !root_ok && truthful(&e, root_lens), "{}", e),
        }
        let code_ok = (0..5).contains(&response.code);
        let response_ok = code_ok && response.blocks.iter().all(block_ok);
        let block_lens = |f: &str| response.blocks.iter().flat_map(|b| block_field(b, f)).collect();
        match BlocksResponse::try_from(response.clone()) {
            Ok(t) => prop_assert!(response_ok && pb::BlocksResponse::from(&t) == response),
            Err(ConvertError::UnknownCode(c)) => prop_assert!(c == response.code && !code_ok),
            Err(e) => prop_assert!(!response_ok && truthful(&e, block_lens), "{}", e),
        }
    }
}
