//! A chain of batches: consecutive ranges of heights downloaded in parallel inside a bounded
//! window and imported strictly in order, each import linked to the one before.
//!
//! Every chain runs the same [batch machine](crate::batch); what differs by direction is supplied
//! by a [`ChainDirection`]: which batch imports first, where the next batch is cut, how a complete
//! batch must link to the chain's boundary, and what a contested answer proves. Forward sync
//! (`forward.rs`) and backfill (`backfill.rs`) are the two directions. A chain knows
//! nothing of peers or of the engine: it reports what the engine must do (charges, rewards,
//! imports to emit) in [`Effects`].

use std::collections::BTreeMap;

use syncnode_types::{Block, Height};

use crate::batch::{Batch, WrongState, check_range_shape};
use crate::config::SyncConfig;
use crate::events::{ImportId, RequestId};
use crate::jitter::Jitter;
use syncnode_proto::peer_score::PeerAction;

/// Which way keys run in import order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum KeyOrder {
    /// The lowest batch imports first (forward).
    Ascending,
    /// The highest batch imports first (backfill).
    Descending,
}

/// Why a complete batch does not link to its chain's boundary, and what that proves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct BoundaryFault {
    /// Whether the supplier of the top block (else of the bottom one) is blamed.
    pub blame_top: bool,
    /// The charge the blamed peer has earned, if the fault is proven.
    pub charge: Option<(PeerAction, &'static str)>,
    /// Whether the blamed peer is never asked for this batch again.
    pub exclude: bool,
    /// Whether the blamed peer's chain leaves ours below the boundary: the direction is told
    /// ([`ChainDirection::diverged`]) and may restart the chain.
    pub diverged: bool,
}

/// What differs between chains of batches.
pub(crate) trait ChainDirection<P> {
    /// Which batch imports first.
    const ORDER: KeyOrder;
    /// The range of the batch to cut after `last` (the last batch in import order, `None` when
    /// there is none), of at most `size` blocks; `None` when the chain's range is covered.
    fn next_range(&self, last: Option<(Height, Height)>, size: u64) -> Option<(Height, Height)>;
    /// Whether the batch over `start..=end` is the next to import.
    fn is_next(&self, start: Height, end: Height) -> bool;
    /// Whether complete blocks (ascending, non-empty) link to the boundary.
    fn check_boundary(&self, first: &Block, last: &Block) -> Result<(), BoundaryFault>;
    /// Whether a batch that does not link to the boundary proves anything yet: not while the
    /// boundary rests on blocks offered for import that the store may still refuse.
    fn boundary_settled(&self) -> bool;
    /// The boundary moves past blocks offered for import.
    fn offered(&mut self, first: &Block, last: &Block);
    /// Blocks offered before were imported.
    fn confirmed(&mut self, blocks: &[Block], effects: &mut Effects<P>);
    /// Imports not confirmed are forgotten: the boundary returns to the confirmed end.
    fn rolled_back(&mut self);
    /// `peer` sent a complete batch whose chain leaves ours below the boundary; returns whether
    /// the chain's batches are dropped (the direction moved its boundary).
    fn diverged(&mut self, peer: &P) -> bool;
    /// The one peer every batch must be asked of, if the direction says so.
    fn pinned(&self) -> Option<&P>;
}

/// What the engine must do after a chain handled an event.
#[derive(Debug)]
pub(crate) struct Effects<P> {
    /// Peers to charge.
    pub charges: Vec<(P, PeerAction, &'static str)>,
    /// Peers whose blocks imported.
    pub useful: Vec<P>,
    /// Imports to emit, in order: id, batch key, blocks.
    pub imports: Vec<(ImportId, Height, Vec<Block>)>,
    /// Imports to forget (rolled back): their results, if they come, are stale.
    pub forgotten: Vec<ImportId>,
    /// Blocks (and their bytes) accepted into the window, for the block-size estimate.
    pub accepted: (u64, u64),
    /// Blocks arrived or imported.
    pub progress: bool,
}

impl<P> Default for Effects<P> {
    fn default() -> Self {
        Effects {
            charges: Vec::new(),
            useful: Vec::new(),
            imports: Vec::new(),
            forgotten: Vec::new(),
            accepted: (0, 0),
            progress: false,
        }
    }
}

impl<P> Effects<P> {
    pub(crate) fn charge(&mut self, peer: P, action: PeerAction, reason: &'static str) {
        self.charges.push((peer, action, reason));
    }
}

/// What the engine lends a chain for one event.
pub(crate) struct Ctx<'a> {
    pub config: &'a SyncConfig,
    pub jitter: &'a mut Jitter,
    pub next_import: &'a mut u64,
}

/// The bounds of one chain's window.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Window {
    /// Most bytes of blocks held.
    pub bytes: usize,
    /// Most batches.
    pub batches: usize,
}

/// What became of a range response offered to a chain (the batch moved accordingly).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Answer {
    /// The batch is gone or waits for another request: dropped, nobody charged.
    Stale,
    /// The responder broke the protocol's shape or rule 1–2 against the blocks held.
    Invalid(&'static str),
    /// No blocks from `start` (the batch backs off).
    Empty { start: Height },
    /// It did not continue the part held (the batch backs off; nobody is charged).
    Contested,
    /// Blocks kept; `short` when the answer ended before the batch and nothing was cut for the
    /// window, at height `next`, after `got_bytes` bytes.
    Stored {
        short: bool,
        next: Height,
        got_bytes: usize,
    },
}

/// A chain of batches keyed by start height, at most `window.batches` of them.
#[derive(Debug, Clone)]
pub(crate) struct Chain<P, D> {
    batches: BTreeMap<Height, Batch<P>>,
    window: Window,
    direction: D,
    /// No import is offered before this (after a failed import).
    import_retry_at_ms: u64,
}

fn refused(error: WrongState) {
    tracing::debug!(%error, "batch event ignored");
}

impl<P: Clone + Ord, D: ChainDirection<P>> Chain<P, D> {
    pub(crate) fn new(direction: D, window: Window) -> Self {
        Chain {
            batches: BTreeMap::new(),
            window,
            direction,
            import_retry_at_ms: 0,
        }
    }

    pub(crate) fn direction(&self) -> &D {
        &self.direction
    }

    pub(crate) fn direction_mut(&mut self) -> &mut D {
        &mut self.direction
    }

    pub(crate) fn window(&self) -> Window {
        self.window
    }

    pub(crate) fn batches(&self) -> impl Iterator<Item = &Batch<P>> {
        self.batches.values()
    }

    pub(crate) fn batch(&self, key: Height) -> Option<&Batch<P>> {
        self.batches.get(&key)
    }

    pub(crate) fn batch_mut(&mut self, key: Height) -> Option<&mut Batch<P>> {
        self.batches.get_mut(&key)
    }

    pub(crate) fn len(&self) -> usize {
        self.batches.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.batches.is_empty()
    }

    pub(crate) fn buffered_bytes(&self) -> usize {
        self.batches.values().map(Batch::bytes).sum()
    }

    pub(crate) fn buffered_blocks(&self) -> usize {
        self.batches.values().map(|b| b.blocks().len()).sum()
    }

    /// Whether the batch keyed `a` imports after the one keyed `b`.
    fn later(a: Height, b: Height) -> bool {
        match D::ORDER {
            KeyOrder::Ascending => a > b,
            KeyOrder::Descending => a < b,
        }
    }

    /// Every key, first to import first.
    pub(crate) fn keys_in_order(&self) -> Vec<Height> {
        let mut keys: Vec<Height> = self.batches.keys().copied().collect();
        if D::ORDER == KeyOrder::Descending {
            keys.reverse();
        }
        keys
    }

    /// The first batch in import order that is still downloading or waiting to.
    pub(crate) fn first_open(&self) -> Option<Height> {
        self.keys_in_order()
            .into_iter()
            .find(|k| self.batches.get(k).is_some_and(Batch::is_open))
    }

    /// The batches waiting for a request, first to import first, each with whether its backoff
    /// is over (before that, only a peer that has not failed it may be asked).
    pub(crate) fn waiting(&self, now_ms: u64) -> Vec<(Height, bool)> {
        self.keys_in_order()
            .into_iter()
            .filter_map(|k| {
                let batch = self.batches.get(&k)?;
                batch.is_waiting().then(|| (k, batch.is_ready(now_ms)))
            })
            .collect()
    }

    /// When its backoffs end: each waiting batch's, and the imports' after a failed import. All of
    /// them, not their minimum: the caller drops the past ones (the imports' retry time stays in
    /// the past once it is over, and a minimum would hide every batch's backoff behind it).
    pub(crate) fn wakeups(&self) -> impl Iterator<Item = u64> + '_ {
        let import_retry = self
            .batches
            .values()
            .any(Batch::is_complete)
            .then_some(self.import_retry_at_ms);
        self.batches
            .values()
            .filter_map(Batch::ready_at)
            .chain(import_retry)
    }

    /// Cuts batches of at most `size` blocks after the last one while the window has room.
    pub(crate) fn fill(&mut self, now_ms: u64, size: u64) {
        while self.batches.len() < self.window.batches {
            let last = self
                .keys_in_order()
                .last()
                .and_then(|k| self.batches.get(k))
                .map(|b| (b.start(), b.end()));
            let Some((start, end)) = self.direction.next_range(last, size) else {
                break;
            };
            self.batches.insert(start, Batch::new(start, end, now_ms));
        }
    }

    /// The first batch in import order that is not importing.
    pub(crate) fn first_not_importing(&self) -> Option<Height> {
        self.keys_in_order()
            .into_iter()
            .find(|k| self.batches.get(k).is_some_and(|b| !b.is_importing()))
    }

    /// Every batch not importing that reaches above `end` now ends there (or at what it holds).
    pub(crate) fn shrink_open_to(&mut self, end: Height) {
        for batch in self.batches.values_mut() {
            if batch.end() > end
                && !batch.is_importing()
                && let Err(error) = batch.shrunk(end)
            {
                refused(error);
            }
        }
    }

    /// Drops every batch not importing that `drop` selects.
    pub(crate) fn drop_open(&mut self, drop: impl Fn(&Batch<P>) -> bool) {
        self.batches.retain(|_, b| b.is_importing() || !drop(b));
    }

    /// Drops every batch; returns the imports that are forgotten with them.
    pub(crate) fn clear(&mut self) -> Vec<ImportId> {
        let forgotten = self.batches.values().filter_map(Batch::import_id).collect();
        self.batches.clear();
        forgotten
    }

    /// Request `id` for the batch keyed `key` was sent.
    pub(crate) fn download_started(&mut self, key: Height, id: RequestId, now_ms: u64) {
        if let Some(batch) = self.batches.get_mut(&key)
            && let Err(error) = batch.download_started(id, now_ms)
        {
            refused(error);
        }
    }

    /// Request `id` for the batch keyed `key` went to a peer that has not failed it, before its
    /// backoff ended.
    pub(crate) fn download_started_elsewhere(&mut self, key: Height, id: RequestId) {
        if let Some(batch) = self.batches.get_mut(&key)
            && let Err(error) = batch.download_started_elsewhere(id)
        {
            refused(error);
        }
    }

    /// Request `id` for the batch keyed `key` ended without usable data, by `peer`'s fault if given.
    pub(crate) fn download_failed(
        &mut self,
        ctx: &mut Ctx,
        key: Height,
        id: RequestId,
        peer: Option<&P>,
        now_ms: u64,
    ) {
        if let Some(batch) = self.batches.get_mut(&key)
            && batch.is_downloading()
        {
            // Another request's failure (the batch moved on) is refused, and that is fine.
            let _ = batch.download_failed(id, peer, now_ms, ctx.config, ctx.jitter);
        }
    }
}

mod answer;
mod import;

pub(crate) use answer::Response;
