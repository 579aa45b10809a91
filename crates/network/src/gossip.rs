//! Block gossip (PROTOCOL.md §4): the gossipsub configuration and the message id.
//!
//! The message id of a block is its hash: BLAKE3 of the 112 header bytes. To compute it the
//! message is decoded as a `Block` with only its header field (prost skips the payload without
//! copying it). Data that does not decode gets the id `"x" ‖ BLAKE3(data)` (33 bytes, so it can
//! never equal a block hash) and is rejected when it reaches validation.
//!
//! Messages are validated by the node: gossipsub runs with `validate_messages()`, a received
//! block is handed to the node, and it is forwarded only when the node reports `Accept`.

use std::time::Duration;

use libp2p::gossipsub::{self, MessageId};
use prost::Message as _;
use syncnode_proto::pb;
use syncnode_types::{Block, BlockHeader, Hash, MAX_PAYLOAD_BYTES};

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

/// A `Block` message with only the header decoded.
#[derive(Clone, PartialEq, prost::Message)]
struct HeaderOnly {
    #[prost(message, optional, tag = "1")]
    header: Option<pb::BlockHeader>,
}

/// The block hash of an encoded block, if its header decodes.
pub fn block_hash_of(data: &[u8]) -> Option<Hash> {
    let msg = HeaderOnly::decode(data).ok()?;
    let header = BlockHeader::try_from(msg.header.as_ref()?).ok()?;
    Some(header.hash())
}

/// The gossip message id of `data`.
pub fn message_id(data: &[u8]) -> MessageId {
    match block_hash_of(data) {
        Some(hash) => MessageId::new(&hash.0),
        None => {
            let mut id = Vec::with_capacity(33);
            id.push(b'x');
            id.extend_from_slice(&Hash::of(data).0);
            MessageId::new(&id)
        }
    }
}

/// The message id a block gets: its hash.
pub fn block_message_id(block: &Block) -> MessageId {
    MessageId::new(&block.hash().0)
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

    #[test]
    fn message_id_is_the_block_hash() {
        let block = Block::new_signed(
            1,
            Hash::ZERO,
            5,
            bytes::Bytes::from_static(b"hi"),
            &SigningKey::dev(0),
        );
        let data = encode_block(&block);
        assert_eq!(message_id(&data), block_message_id(&block));
        assert_eq!(decode_block(&data), Some(block));
        let junk = message_id(&[0xff, 0xff, 0x01]);
        assert_eq!(junk.0.len(), 33);
        assert_eq!(decode_block(&[0xff, 0xff, 0x01]), None);
    }
}
