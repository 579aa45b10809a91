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
//!
//! # Gossipsub's peer score
//! Gossipsub's own score is on ([`score_params`], [`score_thresholds`]), so a peer that sends
//! invalid messages loses its mesh place by gossipsub's rules too, not only by the node's
//! score book (which disconnects and bans). Its terms, for the one topic, with `S` the slot time
//! (at least 1 s, the shortest decay interval gossipsub allows):
//! - **P4, invalid messages** (every `Reject`: a block breaking rules 1–5, undecodable bytes),
//!   weight −100 on the squared count: one costs −100, two −400. The count decays to 1 % in an
//!   hour, so a flooder cannot come back clean by reconnecting (scores are retained an hour).
//! - **P2, first deliveries**, weight +1, capped at 20: a peer that brought us the last 20 new
//!   blocks first earns +20, decaying to 1 % over 100 slots. It cannot outweigh one invalid
//!   message.
//! - **P1, time in the mesh**, +0.01 a second up to +6 after 10 minutes: a small tiebreak.
//! - **P3/P3b, mesh delivery deficits: off.** The topic carries one message per slot from one
//!   proposer; most mesh peers deliver most blocks after someone else did, and with short slots
//!   a window of rare messages measures latency, not honesty. Charging deficits would prune
//!   honest peers; invalid deliveries and the node's own score catch the dishonest ones.
//! - **P6, IP colocation: off.** Devnets and tests put every node on one address; the number of
//!   peers is bounded by `max_peers` and connections per peer by the connection limits.
//! - **P7, behaviour** (IHAVE promises not kept, GRAFT during a backoff), −10 on the square of
//!   the count beyond 6, decaying to 1 % in 10 minutes: a few lapses under load are tolerated.
//! - **P5, application score: off**: the node's own score acts by disconnecting and banning.
//!
//! Positive terms are capped at +30 together. Thresholds: below −40 no IHAVE/IWANT gossip with
//! the peer, below −80 nothing published to it, below −350 everything it sends is dropped unread
//! (graylist). A peer with any negative score is pruned from the mesh at the next heartbeat and
//! its GRAFTs are refused. So one invalid message (−100, at most +26 of credit) costs a peer its
//! mesh place and our gossip; two get it graylisted.

use std::time::Duration;

use libp2p::gossipsub::{self, MessageId, PeerScoreParams, PeerScoreThresholds, TopicHash, TopicScoreParams};
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

/// The factor a counter is multiplied by at each `interval` so that it falls to 1 % in `span`.
fn decay_to_1_percent(span: Duration, interval: Duration) -> f64 {
    let ticks = (span.as_secs_f64() / interval.as_secs_f64()).max(1.0);
    0.01f64.powf(1.0 / ticks)
}

/// Gossipsub's peer score parameters for the blocks topic `topic` of a chain whose slot time is
/// `slot` (see the module's prose for what each term is and why).
pub fn score_params(topic: TopicHash, slot: Duration) -> PeerScoreParams {
    let interval = slot.max(Duration::from_secs(1));
    let blocks = TopicScoreParams {
        topic_weight: 1.0,
        time_in_mesh_weight: 0.01,
        time_in_mesh_quantum: Duration::from_secs(1),
        time_in_mesh_cap: 600.0,
        first_message_deliveries_weight: 1.0,
        first_message_deliveries_decay: decay_to_1_percent(slot.saturating_mul(100), interval),
        first_message_deliveries_cap: 20.0,
        mesh_message_deliveries_weight: 0.0,
        mesh_failure_penalty_weight: 0.0,
        invalid_message_deliveries_weight: -100.0,
        invalid_message_deliveries_decay: decay_to_1_percent(Duration::from_secs(3600), interval),
        ..TopicScoreParams::default()
    };
    PeerScoreParams {
        topics: [(topic, blocks)].into_iter().collect(),
        topic_score_cap: 30.0,
        app_specific_weight: 0.0,
        ip_colocation_factor_weight: 0.0,
        behaviour_penalty_weight: -10.0,
        behaviour_penalty_threshold: 6.0,
        behaviour_penalty_decay: decay_to_1_percent(Duration::from_secs(600), interval),
        decay_interval: interval,
        decay_to_zero: 0.01,
        retain_score: Duration::from_secs(3600),
        ..PeerScoreParams::default()
    }
}

/// Gossipsub's score thresholds (see the module's prose).
pub fn score_thresholds() -> PeerScoreThresholds {
    PeerScoreThresholds {
        gossip_threshold: -40.0,
        publish_threshold: -80.0,
        graylist_threshold: -350.0,
        accept_px_threshold: 20.0,
        opportunistic_graft_threshold: 3.0,
    }
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

    /// The parameters pass gossipsub's own checks for slots from 100 ms to a minute, and one
    /// invalid message outweighs the most credit a peer can earn while two graylist it.
    #[test]
    fn score_parameters_are_valid_and_one_invalid_message_outweighs_all_credit() {
        let topic = gossipsub::IdentTopic::new("/syncnode/test/blocks/1").hash();
        for slot_ms in [100, 1000, 12_000, 60_000] {
            let params = score_params(topic.clone(), Duration::from_millis(slot_ms));
            params.validate().expect("valid score parameters");
            let t = &params.topics[&topic];
            let credit = t.time_in_mesh_weight * t.time_in_mesh_cap
                + t.first_message_deliveries_weight * t.first_message_deliveries_cap;
            assert!(credit <= params.topic_score_cap);
            let invalid = |n: f64| t.invalid_message_deliveries_weight * n * n;
            let thresholds = score_thresholds();
            thresholds.validate().expect("valid thresholds");
            assert!(invalid(1.0) + credit < thresholds.gossip_threshold);
            assert!(invalid(2.0) + credit < thresholds.graylist_threshold);
            assert!(t.first_message_deliveries_decay > 0.0 && t.first_message_deliveries_decay < 1.0);
        }
    }

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
