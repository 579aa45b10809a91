//! The message vectors of `testdata/vectors/`: exact bytes both ways, frames, invalid blocks,
//! and property tests that arbitrary bytes never panic or over-allocate.

use bytes::Bytes;
use futures::executor::block_on;
use proptest::prelude::*;
use prost::Message;
use serde::Deserialize;
use syncnode_types::validity::{check_link, check_standalone};
use syncnode_types::{Block, ChainSpec, Hash};

use crate::convert::ResponseCode;
use crate::*;

fn spec() -> ChainSpec {
    ChainSpec::from_json(include_str!("../../../testdata/vectors/chain_spec.json")).expect("spec")
}

#[derive(Deserialize)]
struct BlockVector {
    height: u64,
    hash: Hash,
    block_protobuf: String,
}

fn vector_blocks() -> Vec<Block> {
    let raw: Vec<BlockVector> =
        serde_json::from_str(include_str!("../../../testdata/vectors/blocks.json")).expect("json");
    raw.into_iter()
        .map(|v| {
            let bytes = hex::decode(&v.block_protobuf).expect("hex");
            let block = Block::try_from(pb::Block::decode(&bytes[..]).expect("decodes")).expect("converts");
            assert_eq!((block.height(), block.hash()), (v.height, v.hash));
            assert_eq!(
                hex::encode(pb::Block::from(&block).encode_to_vec()),
                v.block_protobuf
            );
            block
        })
        .collect()
}

#[derive(Deserialize)]
struct MessageVector {
    protobuf: String,
    frame: String,
}

fn messages() -> serde_json::Map<String, serde_json::Value> {
    serde_json::from_str(include_str!("../../../testdata/vectors/messages.json")).expect("json")
}

fn message(name: &str) -> MessageVector {
    serde_json::from_value(messages()[name].clone()).expect("vector shape")
}

/// Encoding `msg` gives the vector's protobuf and frame bytes, and decoding them gives `msg` back.
fn assert_round_trip<M: Message + Default + PartialEq + std::fmt::Debug>(
    msg: &M,
    v: &MessageVector,
    max: usize,
) {
    assert_eq!(hex::encode(msg.encode_to_vec()), v.protobuf);
    assert_eq!(hex::encode(encode_frame(msg)), v.frame);
    let frame = hex::decode(&v.frame).expect("hex");
    let (decoded, used): (M, usize) = decode_frame(&frame, max).expect("frame decodes");
    assert_eq!((&decoded, used), (msg, frame.len()));
    let read: M = block_on(read_frame(&mut &frame[..], max)).expect("async frame decodes");
    assert_eq!(&read, msg);
}

#[test]
fn genesis_block_protobuf() {
    #[derive(Deserialize)]
    struct G {
        block_protobuf: String,
    }
    let g: G = serde_json::from_str(include_str!("../../../testdata/vectors/genesis.json")).expect("json");
    assert_eq!(
        hex::encode(pb::Block::from(&spec().genesis()).encode_to_vec()),
        g.block_protobuf
    );
}

#[test]
fn status_vector() {
    let blocks = vector_blocks();
    let status = Status {
        genesis_hash: spec().genesis_hash(),
        head_height: 5,
        head_hash: blocks[4].hash(),
        finalized_height: 3,
        finalized_hash: blocks[2].hash(),
        earliest_height: 0,
    };
    let v = message("status");
    assert_round_trip(&pb::Status::from(&status), &v, MAX_REQUEST_FRAME);
    let decoded = pb::Status::decode(&hex::decode(&v.protobuf).expect("hex")[..]).expect("decodes");
    assert_eq!(Status::try_from(&decoded), Ok(status));
}

#[test]
fn request_vectors() {
    let range = BlocksByRangeRequest::new(2, 3).expect("valid");
    assert_round_trip(
        &pb::BlocksByRangeRequest::from(&range),
        &message("blocks_by_range_request"),
        MAX_REQUEST_FRAME,
    );

    let blocks = vector_blocks();
    let roots = BlocksByRootRequest::new(vec![blocks[0].hash(), blocks[5 - 1].hash()]).expect("valid");
    let v = message("blocks_by_root_request");
    let pb_roots =
        pb::BlocksByRootRequest::decode(&hex::decode(&v.protobuf).expect("hex")[..]).expect("decodes");
    let typed = BlocksByRootRequest::try_from(&pb_roots).expect("converts");
    assert_eq!(typed.hashes[0], roots.hashes[0]);
    assert_round_trip(&pb::BlocksByRootRequest::from(&typed), &v, MAX_REQUEST_FRAME);
}

#[test]
fn response_vectors() {
    let blocks = vector_blocks();
    let ok = BlocksResponse::ok(blocks[1..4].to_vec());
    assert_round_trip(
        &pb::BlocksResponse::from(&ok),
        &message("blocks_by_range_response"),
        MAX_RESPONSE_FRAME,
    );
    let err = BlocksResponse::error(ResponseCode::InvalidRequest, "count must be 1..=1024");
    assert_round_trip(
        &pb::BlocksResponse::from(&err),
        &message("error_response"),
        MAX_RESPONSE_FRAME,
    );
    let decoded = pb::BlocksResponse::decode(
        &hex::decode(&message("blocks_by_range_response").protobuf).expect("hex")[..],
    )
    .expect("decodes");
    assert_eq!(BlocksResponse::try_from(decoded), Ok(ok.clone()));
    let field_total: usize = ok
        .blocks
        .iter()
        .map(crate::convert::encoded_block_field_len)
        .sum();
    assert_eq!(field_total, pb::BlocksResponse::from(&ok).encoded_len());
}

#[test]
fn invalid_block_vectors_fail_with_their_rule() {
    #[derive(Deserialize)]
    struct Invalid {
        rule: u8,
        why: String,
        block_protobuf: Option<String>,
        hash: Hash,
    }
    let spec = spec();
    let parent = vector_blocks()[1].clone();
    assert_eq!(parent.height(), 2);
    let invalid: Vec<Invalid> =
        serde_json::from_str(include_str!("../../../testdata/vectors/invalid_blocks.json")).expect("json");
    let mut checked = 0;
    for v in invalid {
        let Some(hex_bytes) = v.block_protobuf else {
            continue;
        };
        let block =
            Block::try_from(pb::Block::decode(&hex::decode(hex_bytes).expect("hex")[..]).expect("decodes"))
                .expect("converts");
        assert_eq!(block.hash(), v.hash, "{}", v.why);
        let err = check_standalone(&block, &spec)
            .and_then(|()| check_link(&block.header, &parent.header))
            .expect_err(&v.why);
        assert_eq!(err.rule(), v.rule, "{}: {err}", v.why);
        checked += 1;
    }
    assert_eq!(checked, 7);
}

#[test]
fn limits_are_enforced() {
    assert_eq!(BlocksByRangeRequest::new(0, 0), Err(ConvertError::RangeCount(0)));
    assert_eq!(
        BlocksByRangeRequest::new(0, 1025),
        Err(ConvertError::RangeCount(1025))
    );
    assert!(BlocksByRangeRequest::new(u64::MAX, 2).is_err());
    assert!(BlocksByRangeRequest::new(7, 1024).is_ok());
    assert_eq!(BlocksByRootRequest::new(vec![]), Err(ConvertError::RootCount(0)));
    assert_eq!(
        BlocksByRootRequest::new(vec![Hash::ZERO; 129]),
        Err(ConvertError::RootCount(129))
    );
    let short = pb::BlocksByRootRequest {
        hashes: vec![Bytes::from_static(&[1, 2, 3])],
    };
    assert!(matches!(
        BlocksByRootRequest::try_from(&short),
        Err(ConvertError::Length { .. })
    ));
    let no_header = pb::Block {
        header: None,
        payload: Bytes::new(),
        signature: Bytes::new(),
    };
    assert_eq!(Block::try_from(no_header), Err(ConvertError::MissingHeader));
    assert!(matches!(
        BlocksResponse::try_from(pb::BlocksResponse {
            code: 99,
            blocks: vec![],
            error_message: String::new()
        }),
        Err(ConvertError::UnknownCode(99))
    ));

    // A length one over the limit is refused from the prefix alone, before any body byte exists.
    let mut prefix = Vec::new();
    prost::encode_length_delimiter(MAX_REQUEST_FRAME + 1, &mut prefix).expect("fits");
    let err =
        block_on(read_frame::<pb::Status, _>(&mut &prefix[..], MAX_REQUEST_FRAME)).expect_err("too large");
    assert!(matches!(err, FrameError::TooLarge { .. }), "{err}");
    // An endless varint is refused after ten bytes.
    let endless = [0x80u8; 16];
    assert!(matches!(
        decode_frame::<pb::Status>(&endless, usize::MAX),
        Err(FrameError::BadLength)
    ));
    // A frame cut short is an error, not a hang or a panic.
    let frame = encode_frame(&pb::BlocksByRangeRequest {
        start_height: 1,
        count: 2,
    });
    let cut = &frame[..frame.len() - 1];
    assert!(matches!(
        block_on(read_frame::<pb::BlocksByRangeRequest, _>(
            &mut &cut[..],
            MAX_REQUEST_FRAME
        )),
        Err(FrameError::Truncated { .. })
    ));
    // Writing a message over the limit is refused.
    let big = pb::BlocksResponse {
        code: 0,
        blocks: vec![],
        error_message: "x".repeat(100),
    };
    let mut out = Vec::new();
    assert!(block_on(write_frame(&mut futures::io::Cursor::new(&mut out), &big, 50)).is_err());
}

proptest! {
    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..4096)) {
        let _ = decode_frame::<pb::BlocksResponse>(&bytes, MAX_RESPONSE_FRAME).map(|(m, _)| BlocksResponse::try_from(m));
        let _ = decode_frame::<pb::Status>(&bytes, MAX_REQUEST_FRAME).map(|(m, _)| Status::try_from(&m));
        let _ = block_on(read_frame::<pb::BlocksByRootRequest, _>(&mut &bytes[..], MAX_REQUEST_FRAME))
            .map(|m| BlocksByRootRequest::try_from(&m));
        if let Ok(m) = pb::Block::decode(&bytes[..]) { let _ = Block::try_from(m); }
        if let Ok(m) = pb::BlocksByRangeRequest::decode(&bytes[..]) { let _ = BlocksByRangeRequest::try_from(&m); }
    }

    #[test]
    fn truncated_frames_are_errors(cut in 0usize..2000) {
        let blocks = vector_blocks();
        let frame = encode_frame(&pb::BlocksResponse::from(&BlocksResponse::ok(blocks)));
        let cut = cut % frame.len();
        let r = block_on(read_frame::<pb::BlocksResponse, _>(&mut &frame[..cut], MAX_RESPONSE_FRAME));
        prop_assert!(r.is_err());
    }
}
