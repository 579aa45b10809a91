//! A chain's answers: range responses taken into the window.

use syncnode_types::validity::check_link;
use syncnode_types::{Block, Height};

use super::{Answer, Chain, ChainDirection, Ctx, Effects, check_range_shape, refused};
use crate::batch::Batch;
use crate::events::RequestId;

/// A range response: request `id` for blocks `start..start + count`, from `peer`.
pub(crate) struct Response<'a, P> {
    pub id: RequestId,
    pub key: Height,
    pub start: Height,
    pub count: u64,
    pub peer: &'a P,
    pub blocks: Vec<Block>,
}

impl<P: Clone + Ord, D: ChainDirection<P>> Chain<P, D> {
    /// Offers a response to the batch it was for, keeping within the window's bytes.
    ///
    /// To make room, blocks of batches that import *later* are dropped first, so the batch the
    /// import waits for always progresses. Whatever still does not fit is left for the next
    /// request, like a short answer, and the batch is split at what it holds
    /// ([`Chain::split_at_held`]): a batch cut for smaller blocks than the chain now has could
    /// otherwise outgrow the window and never complete.
    pub(crate) fn answer(
        &mut self,
        ctx: &mut Ctx,
        response: Response<'_, P>,
        now_ms: u64,
        effects: &mut Effects<P>,
    ) -> Answer {
        let Response {
            id,
            key,
            start,
            count,
            peer,
            mut blocks,
        } = response;
        if let Err(reason) = check_range_shape(start, count, &blocks) {
            self.download_failed(ctx, key, id, Some(peer), now_ms);
            return Answer::Invalid(reason);
        }
        let Some(batch) = self.batches.get_mut(&key).filter(|b| b.awaits(id, start)) else {
            return Answer::Stale;
        };
        // The batch may have shrunk (a lower target, a split) since the request was sent.
        blocks.truncate(usize::try_from(batch.missing()).unwrap_or(usize::MAX));
        let Some(first) = blocks.first() else {
            self.download_failed(ctx, key, id, Some(peer), now_ms);
            return Answer::Empty { start };
        };
        if let Some(held) = batch.blocks().last() {
            if first.header.parent_hash != held.hash() {
                // Two suppliers on different forks (or one that changed its chain): neither is
                // proven wrong by that alone. The batch is fetched again.
                if let Err(error) = batch.contested(id, peer, now_ms, ctx.config, ctx.jitter) {
                    refused(error);
                }
                return Answer::Contested;
            }
            if check_link(&first.header, &held.header).is_err() {
                self.download_failed(ctx, key, id, Some(peer), now_ms);
                return Answer::Invalid("breaks rule 1-2 against the blocks before");
            }
        }
        let got = blocks.len();
        let got_bytes: usize = blocks.iter().map(Block::size_bytes).sum();
        let room = self.make_room(key, got_bytes, now_ms);
        let mut kept_bytes = 0usize;
        let kept = blocks
            .iter()
            .take_while(|b| {
                kept_bytes += b.size_bytes();
                kept_bytes <= room
            })
            .count();
        blocks.truncate(kept);
        let kept_bytes: usize = blocks.iter().map(Block::size_bytes).sum();
        let delay = if kept == 0 {
            ctx.config.retry_min_delay_ms
        } else {
            0
        };
        let Some(batch) = self.batches.get_mut(&key) else {
            return Answer::Stale;
        };
        if let Err(error) = batch.answered(id, peer, blocks, now_ms, delay) {
            refused(error);
            return Answer::Stale;
        }
        effects.accepted = (kept as u64, kept_bytes as u64);
        effects.progress |= kept > 0;
        if kept < got {
            self.split_at_held(key, now_ms);
        }
        let full = self.batches.get(&key).is_some_and(Batch::is_full);
        Answer::Stored {
            short: kept == got && !full,
            next: start.saturating_add(kept as u64),
            got_bytes,
        }
    }

    /// Empties batches that import after `key`, furthest first, until `wanted` more bytes fit
    /// the window or none is left; returns the room there is.
    fn make_room(&mut self, key: Height, wanted: usize, now_ms: u64) -> usize {
        let mut used = self.buffered_bytes();
        while used.saturating_add(wanted) > self.window.bytes {
            let victim = self
                .keys_in_order()
                .into_iter()
                .rev()
                .filter(|k| Self::later(*k, key))
                .find(|k| {
                    self.batches
                        .get(k)
                        .is_some_and(|b| !b.blocks().is_empty() && !b.is_importing())
                });
            let Some(victim) = victim.and_then(|k| self.batches.get_mut(&k)) else {
                break;
            };
            used = used.saturating_sub(victim.bytes());
            if let Err(error) = victim.evicted(now_ms) {
                refused(error);
            }
        }
        self.window.bytes.saturating_sub(used)
    }

    /// Splits the batch keyed `key` after the blocks it holds: they become a batch of their own,
    /// full, and the rest of its range a new waiting batch. Used when the window could not take
    /// the rest, which for the batch the import waits for means it never could: its blocks alone
    /// fill the window. The held part imports (forward) or makes way for the part before it
    /// (backfill, where the held part is evicted if the window needs its room, and fetched again).
    /// Either way the batch the import waits for shrinks to what fits, down to one block, which a
    /// window always holds.
    ///
    /// At the window's batch limit, the batch furthest from import, later than `key`, is dropped
    /// to make room (it is cut again later); when there is none the split is not made, and the
    /// batches before `key`, which then hold the window, import first.
    pub(crate) fn split_at_held(&mut self, key: Height, now_ms: u64) {
        let Some(batch) = self.batches.get(&key) else {
            return;
        };
        if batch.blocks().is_empty() || batch.is_full() || batch.is_importing() {
            return;
        }
        let (held_end, end) = (batch.next_height() - 1, batch.end());
        let rest = held_end + 1;
        // At the limit, the furthest batch in import order gives way, counting the new one
        // (forward: it is the furthest when `key` was the last batch, and giving way is just
        // shrinking `key`).
        let victim = if self.batches.len() >= self.window.batches {
            let furthest = self
                .batches
                .iter()
                .filter(|(k, b)| Self::later(**k, key) && !b.is_importing())
                .map(|(k, _)| *k)
                .chain(Self::later(rest, key).then_some(rest))
                .reduce(|a, b| if Self::later(a, b) { a } else { b });
            match furthest {
                Some(victim) => Some(victim),
                None => return,
            }
        } else {
            None
        };
        if let Some(batch) = self.batches.get_mut(&key)
            && let Err(error) = batch.shrunk(held_end)
        {
            refused(error);
            return;
        }
        if victim != Some(rest) {
            if let Some(victim) = victim {
                self.batches.remove(&victim);
            }
            self.batches.insert(rest, Batch::new(rest, end, now_ms));
        }
    }
}
