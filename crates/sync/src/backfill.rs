//! Backfill as a chain direction: history below a trusted checkpoint, fetched downward from the
//! lowest stored block L to the floor (or genesis), imported highest first, chained by parent hash.
//!
//! A block below L is accepted only if its hash is the parent hash of the block above it, so the
//! whole backfilled history hangs off L by hashes: a batch whose top block's hash is not the hash
//! we wait for is proven wrong at once (nothing else could be right), and a contested answer proves
//! nothing until then. Backfill has its own window, sends requests only while forward sync is not
//! behind, and once it reaches the floor it is done for good: [`crate::Action::BackfillComplete`]
//! is emitted once and no more work is ever scheduled.

use syncnode_types::{Block, Hash, Height};

use crate::chain::{BoundaryFault, ChainDirection, Effects, KeyOrder};
use crate::events::BackfillStart;
use syncnode_proto::peer_score::PeerAction;

/// Backfill's side of its chain: the floor and the lowest block, offered and confirmed.
#[derive(Debug, Clone)]
pub(crate) struct Backfill {
    /// Lowest height to fetch (1 when backfilling to genesis, which is never fetched).
    floor: Height,
    /// When backfilling to genesis, block 1's parent must be this.
    genesis_hash: Hash,
    /// Whether the floor is genesis.
    to_genesis: bool,
    /// Lowest block offered for import, and its parent hash: the next batch must end below it.
    pending_lowest: Height,
    pending_parent: Hash,
    /// Lowest block the node confirmed stored.
    confirmed_lowest: Height,
    confirmed_parent: Hash,
    /// Terminal: the floor is reached.
    done: bool,
}

impl Backfill {
    pub(crate) fn new(start: BackfillStart, genesis_hash: Hash) -> Self {
        Backfill {
            floor: start.floor_height.max(1),
            genesis_hash,
            to_genesis: start.floor_height == 0,
            pending_lowest: start.lowest_height,
            pending_parent: start.lowest_parent_hash,
            confirmed_lowest: start.lowest_height,
            confirmed_parent: start.lowest_parent_hash,
            done: false,
        }
    }

    pub(crate) fn done(&self) -> bool {
        self.done
    }

    pub(crate) fn confirmed_lowest(&self) -> Height {
        self.confirmed_lowest
    }

    /// Marks backfill done when the confirmed history reaches the floor; returns whether it just
    /// became done (the caller emits the terminal action once and drops the batches).
    pub(crate) fn finish_if_done(&mut self) -> bool {
        if self.done || self.confirmed_lowest > self.floor {
            return false;
        }
        if self.to_genesis && self.confirmed_lowest == 1 && self.confirmed_parent != self.genesis_hash {
            tracing::error!(
                "backfilled history does not end at our genesis: the checkpoint is on another chain"
            );
        }
        self.done = true;
        tracing::info!(lowest = self.confirmed_lowest, "backfill complete");
        true
    }
}

impl<P: Clone> ChainDirection<P> for Backfill {
    const ORDER: KeyOrder = KeyOrder::Descending;

    fn next_range(&self, last: Option<(Height, Height)>, size: u64) -> Option<(Height, Height)> {
        let top = last.map_or(self.pending_lowest, |(start, _)| start);
        if self.done || top <= self.floor {
            return None;
        }
        let end = top - 1;
        Some((end.saturating_sub(size.max(1) - 1).max(self.floor), end))
    }

    fn is_next(&self, _start: Height, end: Height) -> bool {
        end.saturating_add(1) == self.pending_lowest
    }

    fn check_boundary(&self, _first: &Block, last: &Block) -> Result<(), BoundaryFault> {
        if last.hash() != self.pending_parent {
            return Err(BoundaryFault {
                blame_top: true,
                charge: Some((
                    PeerAction::ProvenWrong,
                    "backfill blocks do not chain to the stored history",
                )),
                exclude: true,
                diverged: false,
            });
        }
        Ok(())
    }

    /// Always: offered blocks hang by hash off the stored history, so the boundary they leave
    /// is as sure as what is stored.
    fn boundary_settled(&self) -> bool {
        true
    }

    fn offered(&mut self, first: &Block, _last: &Block) {
        self.pending_lowest = first.height();
        self.pending_parent = first.header.parent_hash;
    }

    fn confirmed(&mut self, blocks: &[Block], _effects: &mut Effects<P>) {
        if let Some(first) = blocks.first() {
            self.confirmed_lowest = first.height();
            self.confirmed_parent = first.header.parent_hash;
        }
    }

    fn rolled_back(&mut self) {
        self.pending_lowest = self.confirmed_lowest;
        self.pending_parent = self.confirmed_parent;
    }

    /// Settled at the boundary: a batch's top must hash to what we wait for.
    fn diverged(&mut self, _peer: &P) -> bool {
        false
    }

    fn pinned(&self) -> Option<&P> {
        None
    }
}
