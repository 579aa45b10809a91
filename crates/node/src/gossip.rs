//! Judging a gossiped block: what gossipsub is told (Accept, Reject or Ignore), whether the
//! sender is charged in the node's own score, and whether the sync engine sees the block.
//!
//! Gossipsub charges `Reject` to the peer that delivered the message (its own score, see
//! `syncnode_network::gossip`), and the node charges `InvalidData` with it; `Ignore` costs the
//! sender nothing and the message is not forwarded. So `Reject` is kept for what no honest
//! forwarder passes on: a forwarder has checked the block against the same chain spec (the
//! topic names the genesis), so a block that breaks rules 1–5 was made or passed on by a peer
//! that did not check it. Everything an honest peer may forward is `Ignore` at worst:
//!
//! | the block | verdict | charged | to the engine |
//! |---|---|---|---|
//! | already stored or accepted by gossip | Ignore | no | no |
//! | timestamp beyond rule 6 (more than 15 s ahead of our clock) | Ignore | no | no |
//! | at or below our finalized height, not ours | Ignore | no | no |
//! | more than `max_ahead` above our head | Ignore | no | no |
//! | too many blocks being checked already | Ignore | no | no |
//! | breaks rule 3, 4 or 5 (payload, proposer, signature) | Reject | yes | no |
//! | parent known, breaks rule 1 or 2 | Reject | yes | no |
//! | parent unknown (we may be behind) | Ignore | no | yes: a lookup |
//! | parent known, rules 1–5 hold | Accept | no | yes |
//!
//! The cheap checks (known, clock, finality, distance, load) come first, on the event loop,
//! so a flood of far-ahead or future blocks costs no signature check; rules 3–5 and the
//! store lookups run on a blocking thread, at most [`MAX_IN_FLIGHT`] at once. A block from
//! another chain on our topic breaks rule 4 when that chain has other authorities (Reject);
//! with the same authorities its parent is unknown (Ignore, and the engine's lookup drops
//! it once it goes below our tip, or, if it is higher than our head, searches its sender's
//! fork, which conflicts with our finalized block), or known and breaks rule 1–2 (Reject).

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use syncnode_network::GossipAcceptance;
use syncnode_types::validity::{check_link, check_not_future};
use syncnode_types::{Block, BlockHeader, Hash, Height};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Most gossiped blocks being checked off the loop at once; beyond it blocks are ignored.
pub const MAX_IN_FLIGHT: usize = 64;

/// The node's answer about one gossiped block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Judgement {
    /// Valid and attached to a block we hold: forward it, hand it to the engine.
    Accept,
    /// Not forwarded, not charged; `lookup`: hand it to the engine to look up its parent.
    Ignore { why: &'static str, lookup: bool },
    /// Breaks a rule no honest forwarder lets through: not forwarded, sender charged.
    Reject { why: String },
}

impl Judgement {
    /// What gossipsub is told.
    pub fn acceptance(&self) -> GossipAcceptance {
        match self {
            Judgement::Accept => GossipAcceptance::Accept,
            Judgement::Ignore { .. } => GossipAcceptance::Ignore,
            Judgement::Reject { .. } => GossipAcceptance::Reject,
        }
    }

    /// Whether the engine sees the block.
    pub fn to_engine(&self) -> bool {
        matches!(self, Judgement::Accept | Judgement::Ignore { lookup: true, .. })
    }

    fn ignore(why: &'static str) -> Self {
        Judgement::Ignore { why, lookup: false }
    }
}

/// What the loop knows when a gossiped block arrives.
#[derive(Debug, Clone, Copy)]
pub struct LocalView {
    pub now_ms: u64,
    pub head_height: Height,
    pub finalized_height: Height,
}

/// Headers of blocks recently accepted by gossip (bounded): they count as known, and as parents
/// of the blocks that follow them before the importer has stored them.
#[derive(Default)]
pub struct RecentHeaders {
    order: VecDeque<Hash>,
    headers: HashMap<Hash, BlockHeader>,
}

impl RecentHeaders {
    /// How many headers are remembered.
    pub const CAPACITY: usize = 4096;

    /// Remembers `header`, forgetting the oldest beyond the capacity.
    pub fn insert(&mut self, header: BlockHeader) {
        let hash = header.hash();
        if self.headers.insert(hash, header).is_none() {
            self.order.push_back(hash);
            if self.order.len() > Self::CAPACITY
                && let Some(old) = self.order.pop_front()
            {
                self.headers.remove(&old);
            }
        }
    }

    /// Whether a block with this hash was accepted recently.
    pub fn contains(&self, hash: &Hash) -> bool {
        self.headers.contains_key(hash)
    }

    /// The header of a recently accepted block.
    pub fn get(&self, hash: &Hash) -> Option<&BlockHeader> {
        self.headers.get(hash)
    }
}

/// The loop's side of gossip checking: what was accepted, and the bound on work in flight.
pub struct GossipGate {
    /// Blocks further than this above our head are ignored (the engine's lookup depth).
    pub max_ahead: u64,
    pub recent: RecentHeaders,
    permits: Arc<Semaphore>,
}

impl GossipGate {
    pub fn new(max_ahead: u64) -> Self {
        GossipGate {
            max_ahead,
            recent: RecentHeaders::default(),
            permits: Arc::new(Semaphore::new(MAX_IN_FLIGHT)),
        }
    }

    /// The cheap checks, in order; `Err` is the judgement when one decides. `Ok` holds the
    /// permit under which the expensive checks may run.
    pub fn precheck(&self, block: &Block, view: LocalView) -> Result<OwnedSemaphorePermit, Judgement> {
        let height = block.height();
        if self.recent.contains(&block.hash()) {
            return Err(Judgement::ignore("already known"));
        }
        if check_not_future(&block.header, view.now_ms).is_err() {
            return Err(Judgement::ignore("timestamp beyond rule 6"));
        }
        if height <= view.finalized_height {
            return Err(Judgement::ignore("at or below the finalized height"));
        }
        if height > view.head_height.saturating_add(self.max_ahead) {
            return Err(Judgement::ignore("too far above the head"));
        }
        self.permits
            .clone()
            .try_acquire_owned()
            .map_err(|_| Judgement::ignore("too many gossiped blocks in checking"))
    }

    /// The last step, once rules 3–5 held: rules 1–2 against the parent if we know it (from
    /// the store, `stored_parent`, or accepted by gossip and not yet stored).
    pub fn finish(&self, block: &Block, stored_parent: Option<BlockHeader>) -> Judgement {
        let parent = stored_parent.or_else(|| self.recent.get(&block.header.parent_hash).copied());
        match parent {
            None => Judgement::Ignore {
                why: "parent unknown",
                lookup: true,
            },
            Some(parent) => match check_link(&block.header, &parent) {
                Ok(()) => Judgement::Accept,
                Err(e) => Judgement::Reject {
                    why: format!("invalid: {e}"),
                },
            },
        }
    }
}

/// The checks that need the store or a signature check (run on a blocking thread): `Err` is
/// the judgement when one decides, `Ok` the parent's header if the store holds it.
pub fn check_with_store(
    block: &Block,
    spec: &syncnode_types::ChainSpec,
    store: &syncnode_store::BlockStore,
) -> Result<Option<BlockHeader>, Judgement> {
    if store.contains(&block.hash()).unwrap_or(false) {
        return Err(Judgement::ignore("already known"));
    }
    syncnode_types::validity::check_standalone(block, spec).map_err(|e| Judgement::Reject {
        why: format!("invalid: {e}"),
    })?;
    // A store error reads as "parent unknown": the block is ignored, nobody is charged.
    Ok(store
        .block(&block.header.parent_hash)
        .ok()
        .flatten()
        .map(|parent| parent.header))
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use syncnode_types::SigningKey;

    const NOW: u64 = 1_000_000;

    fn view() -> LocalView {
        LocalView {
            now_ms: NOW,
            head_height: 10,
            finalized_height: 4,
        }
    }

    fn block(height: Height, parent: &BlockHeader, timestamp_ms: u64) -> Block {
        Block::new_signed(
            height,
            parent.hash(),
            timestamp_ms,
            Bytes::from_static(b"x"),
            &SigningKey::dev(0),
        )
    }

    /// Our head: height 10 (its own parent does not matter here).
    fn head() -> BlockHeader {
        let genesis = Block::new_signed(0, Hash::ZERO, 0, Bytes::new(), &SigningKey::dev(0));
        block(10, &genesis.header, 900_000).header
    }

    #[test]
    fn a_block_beyond_rule_6_is_ignored_not_rejected() {
        let gate = GossipGate::new(64);
        let early = block(11, &head(), NOW + 15_001);
        let judged = gate.precheck(&early, view()).expect_err("decided by the clock");
        assert_eq!(judged.acceptance(), GossipAcceptance::Ignore);
        assert!(!judged.to_engine());
        let on_time = block(11, &head(), NOW + 15_000);
        assert!(
            gate.precheck(&on_time, view()).is_ok(),
            "15 s ahead is still allowed"
        );
    }

    #[test]
    fn far_ahead_finalized_and_known_blocks_are_ignored() {
        let mut gate = GossipGate::new(64);
        let far = block(75, &head(), NOW);
        assert_eq!(
            gate.precheck(&far, view()).expect_err("too far").acceptance(),
            GossipAcceptance::Ignore
        );
        assert!(gate.precheck(&block(74, &head(), NOW), view()).is_ok());
        let old = block(4, &head(), NOW);
        assert_eq!(
            gate.precheck(&old, view()).expect_err("finalized").acceptance(),
            GossipAcceptance::Ignore
        );
        let next = block(11, &head(), NOW);
        gate.recent.insert(next.header);
        assert_eq!(
            gate.precheck(&next, view()).expect_err("known"),
            Judgement::ignore("already known")
        );
    }

    #[test]
    fn the_parent_decides_between_accept_reject_and_a_lookup() {
        let mut gate = GossipGate::new(64);
        let parent = head();
        let child = block(11, &parent, NOW);
        assert_eq!(gate.finish(&child, Some(parent)), Judgement::Accept);
        let unknown = gate.finish(&child, None);
        assert_eq!(unknown.acceptance(), GossipAcceptance::Ignore);
        assert!(unknown.to_engine(), "an unknown parent is looked up");
        let stale = block(11, &parent, parent.timestamp_ms);
        assert_eq!(
            gate.finish(&stale, Some(parent)).acceptance(),
            GossipAcceptance::Reject
        );
        // A parent accepted by gossip and not yet stored counts as known.
        gate.recent.insert(child.header);
        let grandchild = block(12, &child.header, NOW + 1);
        assert_eq!(gate.finish(&grandchild, None), Judgement::Accept);
    }

    #[test]
    fn checks_in_flight_are_bounded() {
        let gate = GossipGate::new(64);
        let b = block(11, &head(), NOW);
        let permits: Vec<_> = (0..MAX_IN_FLIGHT)
            .map(|_| gate.precheck(&b, view()).expect("room"))
            .collect();
        assert_eq!(
            gate.precheck(&b, view()).expect_err("full").acceptance(),
            GossipAcceptance::Ignore
        );
        drop(permits);
        assert!(gate.precheck(&b, view()).is_ok());
    }
}
