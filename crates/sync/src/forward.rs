//! Forward range sync as a chain direction: batches over `tip + 1 ..= target`, imported lowest
//! first, each import linked by hash to the one before; a contested hash is a *claim* settled when
//! its height imports.

use std::collections::BTreeMap;

use syncnode_types::validity::check_link;
use syncnode_types::{Block, BlockHeader, Hash, Height};

use crate::chain::{BoundaryFault, Chain, ChainDirection, Effects, KeyOrder};
use syncnode_proto::peer_score::PeerAction;

/// Most peers' claims remembered for one height, and most heights with claims.
const MAX_CLAIMS_PER_HEIGHT: usize = 16;
const MAX_CLAIM_HEIGHTS: usize = 4096;

/// A block the chain ends at: height, hash and, when we saw it, its header (for rule 2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ChainEnd {
    pub height: Height,
    pub hash: Hash,
    pub header: Option<BlockHeader>,
}

impl ChainEnd {
    pub(crate) fn of(block: &Block) -> Self {
        ChainEnd {
            height: block.height(),
            hash: block.hash(),
            header: Some(block.header),
        }
    }

    /// An end known by height and hash only (the store's word).
    pub(crate) fn at(height: Height, hash: Hash) -> Self {
        ChainEnd {
            height,
            hash,
            header: None,
        }
    }
}

/// Forward sync's side of its chain: the two ends of the local chain, the target, and the claims.
#[derive(Debug, Clone)]
pub(crate) struct Forward<P> {
    /// The confirmed head: the last block the node reported imported.
    pub head: ChainEnd,
    /// The last block offered for import (pending or confirmed): the next import links to it.
    pub tip: ChainEnd,
    /// The sync target: the highest head a peer credibly claims, or our own head.
    pub target: Height,
    /// Hashes peers vouched for at heights not yet imported, settled when those heights import:
    /// whoever vouched for a different hash than the one that imports is proven wrong.
    claims: BTreeMap<Height, Vec<(P, Hash)>>,
}

impl<P> Forward<P> {
    pub(crate) fn new(head: ChainEnd) -> Self {
        Forward {
            head,
            tip: head,
            target: head.height,
            claims: BTreeMap::new(),
        }
    }

    /// Whether forward sync is behind its target.
    pub(crate) fn behind(&self) -> bool {
        self.target > self.head.height
    }
}

impl<P: Clone + Ord> ChainDirection<P> for Forward<P> {
    const ORDER: KeyOrder = KeyOrder::Ascending;

    fn next_range(&self, last: Option<(Height, Height)>, size: u64) -> Option<(Height, Height)> {
        let next = last.map_or(self.tip.height, |(_, end)| end).saturating_add(1);
        (next <= self.target).then(|| (next, next.saturating_add(size.max(1) - 1).min(self.target)))
    }

    fn is_next(&self, start: Height, _end: Height) -> bool {
        start == self.tip.height.saturating_add(1)
    }

    fn check_boundary(&self, first: &Block, _last: &Block) -> Result<(), BoundaryFault> {
        if first.header.parent_hash != self.tip.hash {
            // The tip is chained by hash to our head; whether it or this batch is wrong is
            // settled when the tip's height imports. Meanwhile this batch is fetched again.
            return Err(BoundaryFault {
                blame_top: false,
                charge: None,
                claim: Some((self.tip.height, first.header.parent_hash)),
                exclude: false,
            });
        }
        if let Some(parent) = self.tip.header
            && check_link(&first.header, &parent).is_err()
        {
            return Err(BoundaryFault {
                blame_top: false,
                charge: Some((PeerAction::InvalidData, "breaks rule 2 against its parent")),
                claim: None,
                exclude: false,
            });
        }
        Ok(())
    }

    fn offered(&mut self, _first: &Block, last: &Block) {
        self.tip = ChainEnd::of(last);
    }

    fn confirmed(&mut self, blocks: &[Block], effects: &mut Effects<P>) {
        if let Some(last) = blocks.last() {
            self.head = ChainEnd::of(last);
        }
        self.settle_claims(blocks, effects);
    }

    fn rolled_back(&mut self) {
        self.tip = self.head;
    }

    /// Remembers that `peer` vouched for `hash` at `height`, to be settled when `height` imports
    /// (at once when it already has).
    fn claim(&mut self, peer: &P, height: Height, hash: Hash, effects: &mut Effects<P>) {
        let head = self.head;
        if height < head.height {
            return;
        }
        if height == head.height {
            if hash != head.hash {
                effects.charge(
                    peer.clone(),
                    PeerAction::ProvenWrong,
                    "contradicted by the imported chain",
                );
            }
            return;
        }
        let claims = self.claims.entry(height).or_default();
        if claims.len() < MAX_CLAIMS_PER_HEIGHT && !claims.iter().any(|(p, h)| p == peer && *h == hash) {
            claims.push((peer.clone(), hash));
        }
        while self.claims.len() > MAX_CLAIM_HEIGHTS {
            self.claims.pop_last();
        }
    }
}

impl<P: Clone + Ord> Forward<P> {
    /// Charges every peer whose claim is contradicted by `blocks`, which just imported.
    fn settle_claims(&mut self, blocks: &[Block], effects: &mut Effects<P>) {
        let (Some(first), Some(last)) = (blocks.first(), blocks.last()) else {
            return;
        };
        let mut wrong: Vec<P> = Vec::new();
        let settled: Vec<Height> = self.claims.range(..=last.height()).map(|(h, _)| *h).collect();
        for height in settled {
            let Some(claims) = self.claims.remove(&height) else {
                continue;
            };
            let Some(block) = height
                .checked_sub(first.height())
                .and_then(|i| blocks.get(i as usize))
            else {
                continue;
            };
            let hash = block.hash();
            wrong.extend(claims.into_iter().filter(|(_, h)| *h != hash).map(|(p, _)| p));
        }
        wrong.sort();
        wrong.dedup();
        for peer in wrong {
            effects.charge(
                peer,
                PeerAction::ProvenWrong,
                "contradicted by the imported chain",
            );
        }
    }

    /// A chain of blocks (gossip, lookups) offered for import outside the batches.
    pub(crate) fn chain_offered(&mut self, last: ChainEnd) {
        self.tip = last;
    }

    /// Such a chain imported.
    pub(crate) fn chain_imported(&mut self, last: ChainEnd) -> bool {
        if last.height > self.head.height {
            self.head = last;
            return true;
        }
        false
    }
}

impl<P: Clone + Ord> Chain<P, Forward<P>> {
    /// Drops batches that no longer fit (above the target, or not continuing the tip) and cuts
    /// batches of `size` blocks up to the target while the window has room.
    pub(crate) fn follow_target(&mut self, now_ms: u64, size: u64) {
        let (tip, target) = (self.direction().tip.height, self.direction().target);
        if self
            .first_not_importing()
            .is_some_and(|k| k != tip.saturating_add(1))
        {
            // The tip moved under the batches (a rollback or a reset): start over from it.
            self.drop_open(|_| true);
        }
        self.drop_open(|b| b.start() > target);
        // A batch reaching above a target that dropped ends at the target (or at what it holds):
        // no peer may be able to serve its old end.
        self.shrink_open_to(target);
        self.fill(now_ms, size);
    }

    /// Forgets every batch and claim and restarts from `end` (the store's word); returns the
    /// imports forgotten with the batches.
    pub(crate) fn reset(&mut self, end: ChainEnd) -> Vec<crate::events::ImportId> {
        let forgotten = self.clear();
        let forward = self.direction_mut();
        forward.claims.clear();
        forward.head = end;
        forward.tip = end;
        forgotten
    }
}

/// Blocks per new batch: `max_blocks`, or fewer when blocks are large, so that one batch holds
/// about its share of the window (`window_bytes / window_batches`). A 512-block batch of 64 KiB
/// blocks is 32 MiB: half the window in one request, so one or two requests are in flight, and
/// one import holding all of it; and a batch larger than the whole window could never complete.
pub(crate) fn batch_blocks(
    max_blocks: u64,
    window_bytes: usize,
    window_batches: usize,
    avg_block_bytes: u64,
) -> u64 {
    let share = (window_bytes / window_batches.max(1)) as u64;
    match share.checked_div(avg_block_bytes) {
        Some(fit) => fit.min(max_blocks).max(1),
        None => max_blocks.max(1),
    }
}

#[cfg(test)]
mod tests {
    use super::batch_blocks;

    #[test]
    fn batches_of_large_blocks_are_cut_to_their_share_of_the_window() {
        const MIB: usize = 1024 * 1024;
        // Small blocks: the configured size.
        assert_eq!(batch_blocks(512, 64 * MIB, 16, 1024), 512);
        // 64 KiB blocks: 4 MiB per batch.
        assert_eq!(batch_blocks(512, 64 * MIB, 16, 65_536), 64);
        // The largest blocks (1 MiB): 4 per batch; never fewer than one.
        assert_eq!(batch_blocks(512, 64 * MIB, 16, MIB as u64 + 200), 3);
        assert_eq!(batch_blocks(512, MIB, 16, MIB as u64), 1);
        assert_eq!(batch_blocks(0, 64 * MIB, 0, 10), 1);
        assert_eq!(batch_blocks(512, 64 * MIB, 16, 0), 512);
    }
}
