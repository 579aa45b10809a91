//! Forward range sync as a chain direction: batches over `tip + 1 ..= target`, imported lowest
//! first, each import linked by hash to the one before.
//!
//! When the batch at `tip + 1` does not link to the head, its supplier is on another fork (or
//! lying): a *fork search* starts. The chain restarts at our finalized block, pinned to that peer,
//! and fetches its chain from there with the same batches; the store skips the blocks we share
//! and its fork choice decides (a longer chain becomes canonical, a shorter one is kept aside). A
//! first batch whose parent is not our finalized block conflicts with finality: that alone is
//! charged (`ProvenWrong`). A peer on another fork, longer or shorter, is charged nothing.

use std::collections::BTreeMap;

use syncnode_types::validity::check_link;
use syncnode_types::{Block, BlockHeader, Hash, Height};

use crate::chain::{BoundaryFault, Chain, ChainDirection, Effects, KeyOrder};
use syncnode_proto::peer_score::PeerAction;

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

/// A fork being fetched: from whom, from where, and where the store's head stays meanwhile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ForkSearch<P> {
    /// The peer whose batch did not link: every batch of the search is asked of it alone.
    pub peer: P,
    /// Our finalized height when the search started: the fork's first batch starts above it and
    /// its parent must be our block there (the store checks it).
    pub base: Height,
    /// The store's canonical head, which stays while the fork's blocks are stored aside. The
    /// search ends when an import passes it (the store switched) or when it cannot.
    pub store_head: ChainEnd,
    /// The peer's head (kept up to date by the engine): the search fetches no further.
    pub until: Height,
}

/// Forward sync's side of its chain: the two ends of the local chain, the target, a fork search.
#[derive(Debug, Clone)]
pub(crate) struct Forward<P> {
    /// The confirmed head: the last block the node reported imported (during a fork search, the
    /// last block of the fork stored so far).
    pub head: ChainEnd,
    /// The last block offered for import (pending or confirmed): the next import links to it.
    pub tip: ChainEnd,
    /// The sync target: the highest head a peer credibly claims, or our own head.
    pub target: Height,
    /// The finalized height the node started with (a checkpoint may set it above what the
    /// finality depth gives).
    finalized_floor: Height,
    finality_depth: u64,
    /// The fork being fetched, if any.
    pub fork: Option<ForkSearch<P>>,
    /// Peers whose fork was searched, with the height of the store's head then: not searched
    /// again while our head stays there (their batches go to others instead).
    searched: BTreeMap<P, Height>,
}

/// Most peers remembered in [`Forward::searched`].
const MAX_SEARCHED: usize = 64;

impl<P> Forward<P> {
    pub(crate) fn new(head: ChainEnd, finalized_floor: Height, finality_depth: u64) -> Self {
        Forward {
            head,
            tip: head,
            target: head.height,
            finalized_floor,
            finality_depth,
            fork: None,
            searched: BTreeMap::new(),
        }
    }

    /// Whether forward sync is behind its target.
    pub(crate) fn behind(&self) -> bool {
        self.target > self.head.height
    }

    /// Our finalized height, by the head the store holds.
    pub(crate) fn finalized(&self) -> Height {
        let head = self.fork.as_ref().map_or(self.head, |f| f.store_head);
        head.height
            .saturating_sub(self.finality_depth)
            .max(self.finalized_floor)
            .min(head.height)
    }

    /// Whether blocks that attach to the tip may be imported now from outside the batches
    /// (gossip, lookups): when no batch is pending (`idle`), or while no fork search runs (the
    /// importer keeps the order, and the batches are cut again above the new tip).
    pub(crate) fn takes_blocks_on_the_tip(&self, idle: bool) -> bool {
        idle || self.fork.is_none()
    }

    /// Whether `peer`'s fork was searched from our present head already.
    pub(crate) fn was_searched(&self, peer: &P) -> bool
    where
        P: Ord,
    {
        self.searched.get(peer) == Some(&self.head.height)
    }

    /// Whether the next batch is a fork search's first, whose parent only the store can check.
    fn at_fork_base(&self) -> bool {
        self.fork.as_ref().is_some_and(|f| self.tip.height == f.base)
    }
}

impl<P: Clone + Ord + std::fmt::Debug> ChainDirection<P> for Forward<P> {
    const ORDER: KeyOrder = KeyOrder::Ascending;

    fn next_range(&self, last: Option<(Height, Height)>, size: u64) -> Option<(Height, Height)> {
        let next = last.map_or(self.tip.height, |(_, end)| end).saturating_add(1);
        let end = self
            .fork
            .as_ref()
            .map_or(self.target, |f| f.until.min(self.target));
        (next <= end).then(|| (next, next.saturating_add(size.max(1) - 1).min(end)))
    }

    fn is_next(&self, start: Height, _end: Height) -> bool {
        start == self.tip.height.saturating_add(1)
    }

    fn check_boundary(&self, first: &Block, _last: &Block) -> Result<(), BoundaryFault> {
        if self.at_fork_base() {
            // Its parent should be our finalized block, which we know by height only.
            return Ok(());
        }
        if first.header.parent_hash != self.tip.hash {
            // Our tip is chained by hash to our head: the supplier is on another fork, search it
            // (unless a search is on already: then its peer changed its chain; start over).
            // Imports still pending are forgotten; the store's word on them comes back with the
            // search's imports.
            return Err(BoundaryFault {
                blame_top: false,
                charge: None,
                exclude: false,
                diverged: true,
            });
        }
        if let Some(parent) = self.tip.header
            && check_link(&first.header, &parent).is_err()
        {
            return Err(BoundaryFault {
                blame_top: false,
                charge: Some((PeerAction::InvalidData, "breaks rule 2 against its parent")),
                exclude: false,
                diverged: false,
            });
        }
        Ok(())
    }

    /// The tip is settled when it is the head, every block offered confirmed. An offered block
    /// that links to our head may still break a rule only the store checks (its timestamp
    /// against its parent's, when the parent's header is not at hand); until the store took it,
    /// a batch that does not link to it proves nothing.
    fn boundary_settled(&self) -> bool {
        self.tip == self.head
    }

    fn offered(&mut self, _first: &Block, last: &Block) {
        self.tip = ChainEnd::of(last);
    }

    fn confirmed(&mut self, blocks: &[Block], _effects: &mut Effects<P>) {
        if let Some(last) = blocks.last() {
            self.head = ChainEnd::of(last);
        }
    }

    fn rolled_back(&mut self) {
        self.tip = self.head;
    }

    /// `peer`'s batch at the head did not link: a fork search from our finalized block, pinned
    /// to it, replaces whatever the chain was doing, unless that peer's fork was searched from
    /// this head already. A search under way is given up (its peer changed its chain) and the
    /// chain restarts from the store's head.
    fn diverged(&mut self, peer: &P) -> bool {
        match self.fork.take() {
            Some(search) => {
                tracing::debug!(
                    base = search.base,
                    "fork search given up: its peer changed its chain"
                );
                self.head = search.store_head;
            }
            None if self.was_searched(peer) => return false,
            None => {
                self.searched.insert(peer.clone(), self.head.height);
                while self.searched.len() > MAX_SEARCHED {
                    self.searched.pop_first();
                }
                let base = self.finalized();
                tracing::info!(
                    base,
                    head = self.head.height,
                    ?peer,
                    "fork search: a peer's chain does not link to our head"
                );
                self.fork = Some(ForkSearch {
                    peer: peer.clone(),
                    base,
                    store_head: self.head,
                    until: self.target,
                });
                // The base is known by height alone; `at_fork_base` lets its hash unchecked.
                self.head = ChainEnd::at(base, Hash::ZERO);
            }
        }
        self.tip = self.head;
        true
    }

    fn pinned(&self) -> Option<&P> {
        self.fork.as_ref().map(|f| &f.peer)
    }
}

impl<P: Clone + Ord> Forward<P> {
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

impl<P: Clone + Ord + std::fmt::Debug> Chain<P, Forward<P>> {
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

    /// Forgets every batch and any fork search and restarts from `end` (the store's word);
    /// returns the imports forgotten with the batches.
    pub(crate) fn reset(&mut self, end: ChainEnd) -> Vec<crate::events::ImportId> {
        let forgotten = self.clear();
        let forward = self.direction_mut();
        forward.fork = None;
        forward.head = end;
        forward.tip = end;
        forgotten
    }

    /// A fork search whose import passed the store's head (the store switched to the fork) is
    /// over: what follows is plain forward sync. Returns whether one ended so.
    pub(crate) fn fork_adopted(&mut self) -> bool {
        let forward = self.direction_mut();
        if forward
            .fork
            .as_ref()
            .is_some_and(|f| forward.head.height > f.store_head.height)
        {
            let search = forward.fork.take();
            tracing::info!(
                head = forward.head.height,
                from = search.map_or(0, |f| f.store_head.height),
                "fork search over: the store switched to the longer fork"
            );
            return true;
        }
        false
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
