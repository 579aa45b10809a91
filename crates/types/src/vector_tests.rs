//! The block vectors of `testdata/vectors/blocks.json`, rebuilt from their fields and re-signed
//! with the dev keys (ed25519 signing is deterministic, so the signatures must match exactly).

use bytes::Bytes;
use proptest::prelude::*;
use serde::Deserialize;

use crate::validity::{check_link, check_not_future, check_standalone, verify_standalone_batch};
use crate::{Block, BlockError, ChainSpec, Hash, PublicKey, Signature, SigningKey};

#[derive(Deserialize)]
struct BlockVector {
    height: u64,
    parent_hash: Hash,
    timestamp_ms: u64,
    payload_hex: String,
    payload_hash: Hash,
    proposer: PublicKey,
    header_bytes: String,
    hash: Hash,
    signature: Signature,
}

fn spec() -> ChainSpec {
    ChainSpec::from_json(include_str!("../../../testdata/vectors/chain_spec.json")).expect("spec")
}

fn vectors() -> Vec<BlockVector> {
    serde_json::from_str(include_str!("../../../testdata/vectors/blocks.json")).expect("blocks")
}

/// Dev key index of the authority scheduled at `height` in the two-authority vector chain.
fn key_for(height: u64) -> SigningKey {
    SigningKey::dev((height % 2) as u32)
}

#[test]
fn blocks_match_vectors() {
    let spec = spec();
    let mut parent = spec.genesis();
    for v in vectors() {
        let payload = Bytes::from(hex::decode(&v.payload_hex).expect("hex"));
        assert_eq!(payload, Bytes::from(format!("block {}", v.height)));
        let block = Block::new_signed(
            v.height,
            v.parent_hash,
            v.timestamp_ms,
            payload,
            &key_for(v.height),
        );
        assert_eq!(block.header.payload_hash, v.payload_hash);
        assert_eq!(block.header.proposer, v.proposer);
        assert_eq!(hex::encode(block.header.to_bytes()), v.header_bytes);
        assert_eq!(block.hash(), v.hash);
        assert_eq!(block.signature, v.signature, "signature of block {}", v.height);
        assert_eq!(block.header.parent_hash, parent.hash());
        assert_eq!(block.header.timestamp_ms, spec.slot_timestamp_ms(v.height));
        check_standalone(&block, &spec).expect("valid standalone");
        check_link(&block.header, &parent.header).expect("links");
        parent = block;
    }
}

fn chain(n: u64) -> (ChainSpec, Vec<Block>) {
    let spec = spec();
    let mut blocks = vec![spec.genesis()];
    for h in 1..=n {
        let parent = blocks[blocks.len() - 1].hash();
        let payload = Bytes::from(format!("block {h}"));
        blocks.push(Block::new_signed(
            h,
            parent,
            spec.slot_timestamp_ms(h),
            payload,
            &key_for(h),
        ));
    }
    (spec, blocks)
}

#[test]
fn batch_verification_names_the_first_bad_block() {
    let (spec, blocks) = chain(40);
    verify_standalone_batch(&blocks, &spec).expect("honest batch");
    verify_standalone_batch(&[], &spec).expect("empty batch");

    let mut bad = blocks.clone();
    bad[17].signature.0[5] ^= 1;
    bad[30].signature.0[5] ^= 1;
    let err = verify_standalone_batch(&bad, &spec).expect_err("flipped bit");
    assert_eq!((err.index, err.error.rule()), (17, 5));

    let mut bad = blocks.clone();
    bad[9].payload = Bytes::from_static(b"other");
    let err = verify_standalone_batch(&bad, &spec).expect_err("payload");
    assert_eq!((err.index, err.error), (9, BlockError::PayloadHashMismatch));

    let mut bad = blocks.clone();
    bad[0].payload = Bytes::from_static(b"not genesis");
    assert_eq!(
        verify_standalone_batch(&bad, &spec)
            .expect_err("genesis")
            .error
            .rule(),
        0
    );
}

#[test]
fn rules_name_themselves() {
    let (spec, blocks) = chain(3);
    let (b2, b3) = (&blocks[2], &blocks[3]);

    let mut b = b3.clone();
    b.header.timestamp_ms = b2.header.timestamp_ms;
    assert_eq!(check_link(&b.header, &b2.header).expect_err("ts").rule(), 2);

    let wrong_key = SigningKey::dev(0);
    let b = Block::new_signed(
        3,
        b2.hash(),
        b3.header.timestamp_ms,
        b3.payload.clone(),
        &wrong_key,
    );
    assert_eq!(check_standalone(&b, &spec).expect_err("proposer").rule(), 4);

    let big = Block::new_signed(
        3,
        b2.hash(),
        b3.header.timestamp_ms,
        Bytes::from(vec![0u8; crate::MAX_PAYLOAD_BYTES + 1]),
        &key_for(3),
    );
    assert_eq!(check_standalone(&big, &spec).expect_err("too big").rule(), 3);
    assert_eq!(
        big.hash().to_hex(),
        "b13db3bc8241c64a90d45b24e355aa50acb0eb60267e5c54555d94e2e7a8acf1",
        "the oversized-payload vector of invalid_blocks.json"
    );

    let now = b3.header.timestamp_ms - 15_000;
    check_not_future(&b3.header, now).expect("15 s ahead is allowed");
    assert_eq!(
        check_not_future(&b3.header, now - 1).expect_err("future").rule(),
        6
    );
}

proptest! {
    #[test]
    fn any_single_bit_flip_in_a_signed_block_is_caught(byte in 0usize..(112 + 64 + 7), bit in 0u8..8) {
        let (spec, blocks) = chain(3);
        let mut b = blocks[3].clone();
        let mut header = b.header.to_bytes();
        let mut payload = b.payload.to_vec();
        match byte {
            0..112 => header[byte] ^= 1 << bit,
            112..176 => b.signature.0[byte - 112] ^= 1 << bit,
            _ => payload[byte - 176] ^= 1 << bit,
        }
        b.header.height = u64::from_be_bytes(header[0..8].try_into().expect("8"));
        b.header.parent_hash = Hash::from_slice(&header[8..40]).expect("32");
        b.header.timestamp_ms = u64::from_be_bytes(header[40..48].try_into().expect("8"));
        b.header.payload_hash = Hash::from_slice(&header[48..80]).expect("32");
        b.header.proposer = PublicKey::from_slice(&header[80..112]).expect("32");
        b.payload = Bytes::from(payload);
        let standalone = check_standalone(&b, &spec);
        let linked = check_link(&b.header, &blocks[2].header);
        prop_assert!(standalone.is_err() || linked.is_err());
    }
}
