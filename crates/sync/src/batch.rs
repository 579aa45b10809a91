//! A batch: a fixed range of heights fetched by range requests, for forward sync and backfill alike.
//!
//! A batch accumulates blocks from the bottom of its range up. A short answer leaves it part-filled
//! and the rest is asked for from `next_height()`. Each run of blocks remembers which peer supplied
//! it, so when data is contradicted the right peer is charged.

use std::collections::BTreeMap;

use syncnode_types::validity::check_link;
use syncnode_types::{Block, Height};

use crate::config::SyncConfig;
use crate::events::{ImportId, RequestId};
use crate::jitter::Jitter;

/// Where a batch is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BatchState {
    /// Needs (more) blocks; may be requested from `not_before_ms` on.
    Waiting { not_before_ms: u64 },
    /// A request for its missing part is out.
    InFlight { id: RequestId },
    /// Every block is here, waiting for the batches before it.
    Complete,
    /// Offered to the node for import; waiting for the result.
    Importing { id: ImportId },
}

/// Heights `start..=end`, the blocks downloaded so far, and who sent them.
#[derive(Debug, Clone)]
pub(crate) struct Batch<P> {
    pub start: Height,
    pub end: Height,
    /// Blocks at `start, start+1, ...`, chained by parent hash.
    pub blocks: Vec<Block>,
    /// Sum of [`Block::size_bytes`] of `blocks`.
    pub bytes: usize,
    /// Runs of `blocks`: (peer, how many consecutive blocks it supplied), bottom first.
    pub suppliers: Vec<(P, usize)>,
    pub state: BatchState,
    /// Failed attempts so far: drives the backoff and the growing timeout.
    pub failures: u32,
    /// Failed attempts per peer: a peer at `max_attempts_per_peer` is not asked again.
    pub peer_failures: BTreeMap<P, u32>,
}

impl<P: Clone + Ord> Batch<P> {
    pub(crate) fn new(start: Height, end: Height, now_ms: u64) -> Self {
        Batch {
            start,
            end,
            blocks: Vec::new(),
            bytes: 0,
            suppliers: Vec::new(),
            state: BatchState::Waiting {
                not_before_ms: now_ms,
            },
            failures: 0,
            peer_failures: BTreeMap::new(),
        }
    }

    /// First height not yet downloaded.
    pub(crate) fn next_height(&self) -> Height {
        self.start.saturating_add(self.blocks.len() as u64)
    }

    /// Blocks still missing.
    pub(crate) fn missing(&self) -> u64 {
        (self.end + 1).saturating_sub(self.next_height())
    }

    pub(crate) fn is_full(&self) -> bool {
        self.next_height() > self.end
    }

    /// Whether it waits for a request and its backoff is over.
    pub(crate) fn is_waiting_ready(&self, now_ms: u64) -> bool {
        matches!(self.state, BatchState::Waiting { not_before_ms } if not_before_ms <= now_ms)
    }

    /// The peer that supplied `blocks[index]`.
    pub(crate) fn supplier_of(&self, index: usize) -> Option<&P> {
        let mut seen = 0usize;
        for (peer, n) in &self.suppliers {
            seen += n;
            if index < seen {
                return Some(peer);
            }
        }
        None
    }

    /// Every peer that supplied part of the batch, without repeats.
    pub(crate) fn all_suppliers(&self) -> Vec<P> {
        let mut out: Vec<P> = self.suppliers.iter().map(|(p, _)| p.clone()).collect();
        out.sort();
        out.dedup();
        out
    }

    /// Appends blocks that continue the batch (the caller checked the link).
    pub(crate) fn append(&mut self, peer: &P, blocks: Vec<Block>) {
        if blocks.is_empty() {
            return;
        }
        self.bytes += blocks.iter().map(Block::size_bytes).sum::<usize>();
        match self.suppliers.last_mut() {
            Some((last, n)) if last == peer => *n += blocks.len(),
            _ => self.suppliers.push((peer.clone(), blocks.len())),
        }
        self.blocks.extend(blocks);
    }

    /// Drops every downloaded block (they are to be fetched again).
    pub(crate) fn clear(&mut self) {
        self.blocks.clear();
        self.suppliers.clear();
        self.bytes = 0;
    }

    /// Records a failed attempt (blamed on `peer` if given) and waits a jittered backoff.
    pub(crate) fn fail(&mut self, peer: Option<&P>, now_ms: u64, config: &SyncConfig, jitter: &mut Jitter) {
        self.failures = self.failures.saturating_add(1);
        if let Some(peer) = peer {
            let n = self.peer_failures.entry(peer.clone()).or_insert(0);
            *n = n.saturating_add(1);
        }
        let delay = jitter.stretch(config.backoff_for(self.failures));
        self.state = BatchState::Waiting {
            not_before_ms: now_ms.saturating_add(delay),
        };
    }

    /// Forbids `peer` for the rest of this batch's life.
    pub(crate) fn exclude(&mut self, peer: &P, config: &SyncConfig) {
        self.peer_failures
            .insert(peer.clone(), config.max_attempts_per_peer);
    }
}

/// Checks the shape the protocol demands of a range response to `start, count`: at most `count`
/// blocks, at heights `start, start+1, ...`, each linking to the one before (rules 1–2 inside the
/// response). A response that breaks this is the responder's fault.
pub(crate) fn check_range_shape(start: Height, count: u64, blocks: &[Block]) -> Result<(), &'static str> {
    if blocks.len() as u64 > count {
        return Err("more blocks than requested");
    }
    for (i, block) in blocks.iter().enumerate() {
        if Some(block.height()) != start.checked_add(i as u64) {
            return Err("block at a height that was not requested");
        }
    }
    for pair in blocks.windows(2) {
        if check_link(&pair[1].header, &pair[0].header).is_err() {
            return Err("blocks of one response do not chain");
        }
    }
    Ok(())
}

/// What became of a (well-shaped, non-stale) range response offered to a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Absorbed<P> {
    /// The batch is gone or waits for another request: the response is dropped, nobody charged.
    Stale,
    /// No blocks.
    Empty,
    /// The response does not continue the part already held (another parent hash at `height`):
    /// one of the two suppliers is wrong, unknown which. Both parts were dropped.
    Contested {
        earlier: Option<P>,
        height: Height,
        held: syncnode_types::Hash,
        claimed: syncnode_types::Hash,
    },
    /// The first block names the held block as parent but breaks rule 1 or 2 against it.
    BadLink,
    /// `kept` of the `got` blocks (`got_bytes` bytes) were stored; the rest did not fit the window.
    Stored {
        kept: usize,
        got: usize,
        got_bytes: usize,
        full: bool,
    },
}

/// The bounds of one direction's window.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Window {
    /// Most bytes of blocks held.
    pub bytes: usize,
    /// Most batches.
    pub batches: usize,
}

/// Offers a response for request `id` to the batch keyed `key`, keeping within `window.bytes`.
///
/// To make room, blocks of batches that import *later* are dropped first (forward: higher keys;
/// backfill: lower keys), so the batch the import waits for always progresses. Whatever still does
/// not fit is left for the next request, like a short answer, and the batch is split at what it
/// holds ([`split_at_held`]): a batch cut for smaller blocks than the chain now has could otherwise
/// outgrow the window and never complete.
#[allow(clippy::too_many_arguments)]
pub(crate) fn absorb<P: Clone + Ord>(
    batches: &mut BTreeMap<Height, Batch<P>>,
    key: Height,
    id: RequestId,
    start: Height,
    peer: &P,
    blocks: Vec<Block>,
    window: Window,
    later_is_higher: bool,
    now_ms: u64,
) -> Absorbed<P> {
    let window_bytes = window.bytes;
    let Some(batch) = batches.get_mut(&key) else {
        return Absorbed::Stale;
    };
    if batch.state != (BatchState::InFlight { id }) || batch.next_height() != start {
        return Absorbed::Stale;
    }
    let mut blocks = blocks;
    // The batch may have shrunk (the target dropped) since the request was sent.
    blocks.truncate(usize::try_from(batch.missing()).unwrap_or(usize::MAX));
    let Some(first) = blocks.first() else {
        return Absorbed::Empty;
    };
    if let Some(last) = batch.blocks.last() {
        if first.header.parent_hash != last.hash() {
            let result = Absorbed::Contested {
                earlier: batch.supplier_of(batch.blocks.len() - 1).cloned(),
                height: last.height(),
                held: last.hash(),
                claimed: first.header.parent_hash,
            };
            batch.clear();
            return result;
        }
        if check_link(&first.header, &last.header).is_err() {
            return Absorbed::BadLink;
        }
    }
    let got = blocks.len();
    let got_bytes: usize = blocks.iter().map(Block::size_bytes).sum();
    let mut used: usize = batches.values().map(|b| b.bytes).sum();
    while used.saturating_add(got_bytes) > window_bytes {
        let victim = batches
            .iter()
            .filter(|(k, b)| {
                let later = if later_is_higher { **k > key } else { **k < key };
                later && !b.blocks.is_empty() && !matches!(b.state, BatchState::Importing { .. })
            })
            .map(|(k, _)| *k)
            .reduce(|a, b| if later_is_higher { a.max(b) } else { a.min(b) });
        let Some(victim) = victim.and_then(|k| batches.get_mut(&k)) else {
            break;
        };
        used = used.saturating_sub(victim.bytes);
        victim.clear();
        // An eviction makes any request out for it stale; it will be asked for again.
        victim.state = BatchState::Waiting {
            not_before_ms: now_ms,
        };
    }
    let room = window_bytes.saturating_sub(used);
    let mut kept = 0usize;
    let mut kept_bytes = 0usize;
    for block in &blocks {
        let size = block.size_bytes();
        if kept_bytes + size > room {
            break;
        }
        kept_bytes += size;
        kept += 1;
    }
    let Some(batch) = batches.get_mut(&key) else {
        return Absorbed::Stale;
    };
    let offered = blocks.len();
    blocks.truncate(kept);
    batch.append(peer, blocks);
    if kept < offered {
        split_at_held(batches, key, window.batches, later_is_higher, now_ms);
    }
    let full = batches.get(&key).is_some_and(Batch::is_full);
    Absorbed::Stored {
        kept,
        got,
        got_bytes,
        full,
    }
}

/// Splits the batch keyed `key` after the blocks it holds: they become a batch of their own, full,
/// and the rest of its range a new waiting batch. Used when the window could not take the rest,
/// which for the batch the import waits for means it never could: its blocks alone fill the
/// window. The held part imports (forward) or makes way for the part above it (backfill, where the
/// held part is evicted if the window needs its room, and fetched again). Either way the batch the
/// import waits for shrinks to what fits, down to one block, which a window always holds.
///
/// At `max_batches`, the batch furthest from import, later than `key`, is dropped to make room (it
/// is cut again later); when there is none the split is not made, and the batches before `key`,
/// which then hold the window, import first.
pub(crate) fn split_at_held<P: Clone + Ord>(
    batches: &mut BTreeMap<Height, Batch<P>>,
    key: Height,
    max_batches: usize,
    later_is_higher: bool,
    now_ms: u64,
) {
    let Some(batch) = batches.get(&key) else {
        return;
    };
    if batch.blocks.is_empty() || batch.is_full() || matches!(batch.state, BatchState::Importing { .. }) {
        return;
    }
    let (held_end, end) = (batch.next_height() - 1, batch.end);
    let rest = held_end + 1;
    let later = |k: Height| if later_is_higher { k > key } else { k < key };
    // At the limit, the furthest batch in import order gives way, counting the new one (forward:
    // it is the furthest when `key` was the last batch, and giving way is just shrinking `key`).
    let victim = if batches.len() >= max_batches {
        let furthest = batches
            .iter()
            .filter(|(k, b)| later(**k) && !matches!(b.state, BatchState::Importing { .. }))
            .map(|(k, _)| *k)
            .chain(later(rest).then_some(rest))
            .reduce(|a, b| if later_is_higher { a.max(b) } else { a.min(b) });
        match furthest {
            Some(victim) => Some(victim),
            None => return,
        }
    } else {
        None
    };
    if let Some(batch) = batches.get_mut(&key) {
        batch.end = held_end;
    }
    if victim != Some(rest) {
        if let Some(victim) = victim {
            batches.remove(&victim);
        }
        batches.insert(rest, Batch::new(rest, end, now_ms));
    }
}
