//! Block gossip (PROTOCOL.md §4): the gossipsub configuration and the message id.
//!
//! The message id is BLAKE3 of the published bytes. It covers the signature and the payload on
//! purpose: the block hash covers neither, so with the block hash as id a copy with a forged
//! signature, seen first, would make gossipsub drop the real block as a duplicate (gossipsub
//! remembers every id it has seen, valid or not). Two encodings of one block are two messages;
//! the node deduplicates blocks by hash itself.
//!
//! Messages are validated by the node: gossipsub runs with `validate_messages()`, a received
//! block is handed to the node, and it is forwarded only when the node reports `Accept`.

use std::time::Duration;

use libp2p::gossipsub::{self, MessageId};
use prost::Message as _;
use syncnode_proto::pb;
use syncnode_types::{Block, Hash, MAX_PAYLOAD_BYTES};

use crate::error::NetworkError;

/// Largest gossip message: a block with the largest valid payload, plus room for the header,
/// signature and gossipsub's envelope.
pub const MAX_GOSSIP_MESSAGE: usize = MAX_PAYLOAD_BYTES + 16 * 1024;

/// What the node says about a gossiped block after checking it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GossipAcceptance {
    /// Valid: forward it to the mesh.
    Accept,
    /// Invalid: drop it and penalise the sender in gossipsub.
    Reject,
    /// Not forwarded, not penalised (e.g. already known, or parent unknown).
    Ignore,
}

impl From<GossipAcceptance> for gossipsub::MessageAcceptance {
    fn from(a: GossipAcceptance) -> Self {
        match a {
            GossipAcceptance::Accept => gossipsub::MessageAcceptance::Accept,
            GossipAcceptance::Reject => gossipsub::MessageAcceptance::Reject,
            GossipAcceptance::Ignore => gossipsub::MessageAcceptance::Ignore,
        }
    }
}

/// The gossip message id of `data`, the bytes as published: BLAKE3 of them (32 bytes).
pub fn message_id(data: &[u8]) -> MessageId {
    MessageId::new(&Hash::of(data).0)
}

/// The message id a block gets when this node publishes it.
pub fn block_message_id(block: &Block) -> MessageId {
    message_id(&encode_block(block))
}

/// Decodes a gossiped block completely.
pub fn decode_block(data: &[u8]) -> Option<Block> {
    let msg = pb::Block::decode(data).ok()?;
    Block::try_from(msg).ok()
}

/// Encodes a block for gossip.
pub fn encode_block(block: &Block) -> Vec<u8> {
    pb::Block::from(block).encode_to_vec()
}

/// The gossipsub configuration of syncnode.
pub fn config(heartbeat: Duration) -> Result<gossipsub::Config, NetworkError> {
    gossipsub::ConfigBuilder::default()
        .heartbeat_interval(heartbeat)
        .validation_mode(gossipsub::ValidationMode::Strict)
        .validate_messages()
        .max_transmit_size(MAX_GOSSIP_MESSAGE)
        .message_id_fn(|msg: &gossipsub::Message| message_id(&msg.data))
        .build()
        .map_err(|e| NetworkError::Behaviour(format!("gossipsub config: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use syncnode_types::SigningKey;

    /// The vector `gossip_block` of `testdata/vectors/messages.json` (PROTOCOL.md §4).
    #[test]
    fn message_id_matches_the_vector() {
        let vectors: serde_json::Value =
            serde_json::from_str(include_str!("../../../testdata/vectors/messages.json"))
                .expect("messages.json");
        let v = &vectors["gossip_block"];
        let bytes = hex::decode(v["protobuf"].as_str().expect("protobuf")).expect("hex");
        let id = hex::decode(v["message_id"].as_str().expect("message_id")).expect("hex");
        assert_eq!(message_id(&bytes).0, id);
        let block = decode_block(&bytes).expect("block 1 decodes");
        assert_eq!(block.header.height, 1);
        assert_eq!(
            block_message_id(&block).0,
            id,
            "re-encoding gives the published bytes"
        );
    }

    /// A copy of a block with another signature (same header, same block hash) has another
    /// id, so it cannot make gossipsub drop the real block as a duplicate.
    #[test]
    fn a_forged_copy_has_another_id() {
        let block = Block::new_signed(
            1,
            Hash::ZERO,
            5,
            bytes::Bytes::from_static(b"hi"),
            &SigningKey::dev(0),
        );
        let mut forged = block.clone();
        forged.signature = Block::new_signed(
            1,
            Hash::ZERO,
            5,
            bytes::Bytes::from_static(b"hi"),
            &SigningKey::dev(1),
        )
        .signature;
        assert_eq!(forged.hash(), block.hash());
        assert_ne!(block_message_id(&forged), block_message_id(&block));
        assert_eq!(decode_block(&encode_block(&block)), Some(block));
        assert_eq!(decode_block(&[0xff, 0xff, 0x01]), None);
    }
}
